//! Redis in a Docker container, started through testcontainers: the provider for what one
//! local process cannot stand for (replicas, Sentinels, faults between hosts), and a second
//! way to run the standalone suite.
//!
//! - The image is `HYBRID_CHAOS_REDIS_IMAGE`, default `hybrid-chaos/redis:local`, which
//!   `ci/lib.sh` builds from the installed `redis-server` (no registry is reachable here).
//!   It is never pulled: a missing image is a one-line error saying how to build it.
//! - The server listens on a fixed host port on 127.0.0.1, chosen at start and kept across
//!   restarts, so a proxy in front of it keeps its upstream.
//! - Every container carries the labels [`OWNER_LABEL`] (this process: pid and start time)
//!   and [`RUN_LABEL`]. testcontainers removes a container when its handle drops (the binary
//!   turns SIGINT/SIGTERM into drops); what a SIGKILLed run left behind is removed by the
//!   next start here ([`reap_orphans`]), by label only, never anything else.

use std::time::Duration;

use testcontainers::bollard;
use testcontainers::core::{ContainerPort, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};
use tokio::time::Instant;

use super::process::free_port;
use super::redis_process::{await_pong, flush_all};
use super::{new_run_id, Error, Readiness, RedisNode, RedisSpec, Restart, Result};

/// The image, unless `HYBRID_CHAOS_REDIS_IMAGE` names another.
pub const DEFAULT_IMAGE: &str = "hybrid-chaos/redis:local";
/// Label naming the harness process that owns a container: `<pid>:<start time in ticks>`.
pub const OWNER_LABEL: &str = "org.hybrid-chaos.owner";
/// Label naming the run (`HC_RUN_TAG` when a `ci/` script set it).
pub const RUN_LABEL: &str = "org.hybrid-chaos.run";
/// Redis's port inside the container.
const REDIS_PORT: u16 = 6379;
/// Pause between readiness probes, in ms.
const POLL_INTERVAL_MS: u64 = 10;
/// A graceful stop waits this long for Redis to save and exit before Docker kills it, in s.
const STOP_GRACE_S: i32 = 10;

/// The image name to use.
pub fn image() -> String {
    std::env::var("HYBRID_CHAOS_REDIS_IMAGE").ok().filter(|s| !s.is_empty()).unwrap_or_else(|| DEFAULT_IMAGE.into())
}

/// This process's identity as the owner label writes it.
fn owner() -> String {
    format!("{}:{}", std::process::id(), start_ticks(std::process::id()).unwrap_or(0))
}

/// A process's start time in clock ticks since boot (`/proc/PID/stat` field 22): with the
/// pid, an identity a reused pid does not repeat.
fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; fields after its closing ')' are plain.
    stat.rsplit_once(')')?.1.split_whitespace().nth(19)?.parse().ok()
}

/// Whether the owner a label names is still running.
fn owner_alive(label: &str) -> bool {
    let Some((pid, ticks)) = label.split_once(':') else { return false };
    match (pid.parse::<u32>(), ticks.parse::<u64>()) {
        (Ok(pid), Ok(ticks)) => start_ticks(pid) == Some(ticks),
        _ => false,
    }
}

/// The labels every container and network the harness creates carries.
pub(crate) fn owner_labels() -> std::collections::HashMap<String, String> {
    std::collections::HashMap::from([(OWNER_LABEL.to_string(), owner()), (RUN_LABEL.to_string(), run_label())])
}

fn run_label() -> String {
    std::env::var("HC_RUN_TAG").ok().filter(|s| !s.is_empty()).unwrap_or_else(|| format!("pid-{}", std::process::id()))
}

/// The Docker client [`docker`] returns (bollard's, through testcontainers).
pub type Docker = bollard::Docker;

/// A Docker client, or the error that says Docker does not answer.
pub async fn docker() -> Result<bollard::Docker> {
    let unavailable = |reason: String| Error::DockerUnavailable { reason };
    let d = bollard::Docker::connect_with_defaults().map_err(|e| unavailable(e.to_string()))?;
    d.ping().await.map_err(|e| unavailable(e.to_string()))?;
    Ok(d)
}

/// Removes the containers and networks of harness processes that are gone (a SIGKILLed
/// run), found by [`OWNER_LABEL`] only. Returns how many were removed.
pub async fn reap_orphans(d: &bollard::Docker) -> Result<usize> {
    let (containers, networks) = remove_labelled(d, |owner| !owner_alive(owner)).await?;
    Ok(containers + networks)
}

/// Removes every container and network this process owns (its [`OWNER_LABEL`]) that is
/// still there: what an interrupted run's handles did not get to remove. Returns
/// (containers, networks) removed.
pub async fn remove_own(d: &bollard::Docker) -> Result<(usize, usize)> {
    let me = owner();
    remove_labelled(d, |owner| owner == me).await
}

/// Removes the containers (running or not, with their volumes), then the networks, whose
/// [`OWNER_LABEL`] satisfies `doomed`; nothing without that label is looked at.
async fn remove_labelled(d: &bollard::Docker, doomed: impl Fn(&str) -> bool) -> Result<(usize, usize)> {
    use bollard::query_parameters::{ListContainersOptionsBuilder, ListNetworksOptions, RemoveContainerOptionsBuilder};
    let failed =
        |what: &str, e: bollard::errors::Error| Error::Docker { what: what.to_string(), reason: e.to_string() };
    let filter = std::collections::HashMap::from([("label".to_string(), vec![OWNER_LABEL.to_string()])]);
    let listed = d
        .list_containers(Some(ListContainersOptionsBuilder::new().all(true).filters(&filter).build()))
        .await
        .map_err(|e| failed("listing containers", e))?;
    let mut containers = 0;
    for c in listed {
        let label = c.labels.as_ref().and_then(|l| l.get(OWNER_LABEL)).cloned().unwrap_or_default();
        if !doomed(&label) {
            continue;
        }
        if let Some(id) = c.id {
            let opts = RemoveContainerOptionsBuilder::new().force(true).v(true).build();
            if d.remove_container(&id, Some(opts)).await.is_ok() {
                containers += 1;
            }
        }
    }
    // Networks after the containers: a network with a container attached cannot go.
    let listed = d
        .list_networks(Some(ListNetworksOptions { filters: Some(filter) }))
        .await
        .map_err(|e| failed("listing networks", e))?;
    let mut networks = 0;
    for n in listed {
        let label = n.labels.as_ref().and_then(|l| l.get(OWNER_LABEL)).cloned().unwrap_or_default();
        if doomed(&label) {
            if let Some(name) = n.name {
                if d.remove_network(&name).await.is_ok() {
                    networks += 1;
                }
            }
        }
    }
    Ok((containers, networks))
}

/// What carries a run's [`RUN_LABEL`] right now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Holdings {
    pub running: usize,
    /// Exited or dead containers: a killed host, a stopped server.
    pub exited: usize,
    /// Containers in any other state: created and not yet started, paused, being removed.
    pub other: usize,
    pub networks: usize,
}

impl Holdings {
    pub fn containers(&self) -> usize {
        self.running + self.exited + self.other
    }
}

/// The containers and networks labelled with run `run` (`HC_RUN_TAG`): what a live run
/// holds, or what a dead one left behind.
pub async fn holdings(d: &bollard::Docker, run: &str) -> Result<Holdings> {
    use bollard::models::ContainerSummaryStateEnum as State;
    use bollard::query_parameters::{ListContainersOptionsBuilder, ListNetworksOptions};
    let failed =
        |what: &str, e: bollard::errors::Error| Error::Docker { what: what.to_string(), reason: e.to_string() };
    let filter = std::collections::HashMap::from([("label".to_string(), vec![format!("{RUN_LABEL}={run}")])]);
    let containers = d
        .list_containers(Some(ListContainersOptionsBuilder::new().all(true).filters(&filter).build()))
        .await
        .map_err(|e| failed("listing containers", e))?;
    let count = |states: &[State]| containers.iter().filter(|c| c.state.is_some_and(|s| states.contains(&s))).count();
    let (running, exited) = (count(&[State::RUNNING]), count(&[State::EXITED, State::DEAD]));
    let networks = d
        .list_networks(Some(ListNetworksOptions { filters: Some(filter) }))
        .await
        .map_err(|e| failed("listing networks", e))?
        .len();
    Ok(Holdings { running, exited, other: containers.len() - running - exited, networks })
}

/// [`reap_orphans`] on the first call in this process only: what dead runs left cannot
/// change while this one runs, and a suite starts a container per row.
pub(crate) async fn reap_orphans_once(d: &bollard::Docker) -> Result<()> {
    static REAPED: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    REAPED.get_or_try_init(|| async { reap_orphans(d).await.map(drop) }).await.map(drop)
}

/// Fails with a one-line error naming the image and how to build it when it is missing.
pub async fn require_image(d: &bollard::Docker, image: &str) -> Result<()> {
    match d.inspect_image(image).await {
        Ok(_) => Ok(()),
        Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => {
            Err(Error::ImageMissing { image: image.to_string() })
        }
        Err(e) => Err(Error::Docker { what: format!("inspecting image {image}"), reason: e.to_string() }),
    }
}

/// A Redis in a container the harness started (and so may restart, crash, pause or flush).
pub struct ContainerRedis {
    container: ContainerAsync<GenericImage>,
    docker: bollard::Docker,
    port: u16,
    spec: RedisSpec,
    prefix: String,
    frozen: bool,
    stopped: bool,
}

impl std::fmt::Debug for ContainerRedis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContainerRedis").field("id", &self.container.id()).field("port", &self.port).finish()
    }
}

impl ContainerRedis {
    /// Starts a container from [`image`] with `spec`'s persistence and config, on a free
    /// loopback port, and waits until it answers `PING`. First removes what dead runs left.
    pub async fn start(spec: RedisSpec) -> Result<ContainerRedis> {
        Self::start_image(spec, &image()).await
    }

    /// [`ContainerRedis::start`] from the given image.
    pub async fn start_image(spec: RedisSpec, image: &str) -> Result<ContainerRedis> {
        let docker = docker().await?;
        reap_orphans_once(&docker).await?;
        require_image(&docker, image).await?;
        let port = match spec.port {
            Some(p) => p,
            None => free_port().map_err(Error::io("choosing a free port"))?,
        };
        let (name, tag) = image.rsplit_once(':').unwrap_or((image, "latest"));
        let mut args: Vec<String> = ["--port", "6379", "--bind", "0.0.0.0", "--protected-mode", "no", "--dir", "/data"]
            .map(String::from)
            .into();
        for line in spec.persistence.config_lines() {
            let (k, v) = line.split_once(' ').unwrap_or((line, ""));
            args.push(format!("--{k}"));
            args.push(v.trim_matches('"').to_string());
        }
        for (k, v) in &spec.config {
            args.push(format!("--{k}"));
            args.extend(v.split_whitespace().map(String::from));
        }
        let request = GenericImage::new(name, tag)
            .with_wait_for(WaitFor::Nothing)
            .with_mapped_port(port, ContainerPort::Tcp(REDIS_PORT))
            // Published on loopback only: nothing outside this machine reaches it.
            .with_host_config_modifier(|hc| {
                if let Some(bindings) = hc.port_bindings.as_mut() {
                    for b in bindings.values_mut().flatten().flatten() {
                        b.host_ip = Some("127.0.0.1".into());
                    }
                }
            })
            .with_label(OWNER_LABEL, owner())
            .with_label(RUN_LABEL, run_label())
            .with_cmd(args);
        let container = request
            .start()
            .await
            .map_err(|e| Error::Docker { what: format!("starting a container from {image}"), reason: e.to_string() })?;
        let prefix = format!("hc:{}:", new_run_id());
        let mut node = ContainerRedis { container, docker, port, spec, prefix, frozen: false, stopped: false };
        node.wait_ready().await?;
        Ok(node)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn id(&self) -> &str {
        self.container.id()
    }

    async fn log_tail(&self) -> String {
        let out = self.container.stdout_to_vec().await.unwrap_or_default();
        let text = String::from_utf8_lossy(&out);
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(25)..].join("\n")
    }

    async fn wait_ready(&mut self) -> Result<Readiness> {
        let (port, limit_ms) = (self.port, self.spec.ready_timeout_ms);
        match await_pong(port, limit_ms, || None).await? {
            Ok(r) => Ok(r),
            Err(loading_polls) => {
                Err(Error::NotReady { port, waited_ms: limit_ms, loading_polls, log_tail: self.log_tail().await })
            }
        }
    }

    fn docker_failed(&self, what: &str) -> impl FnOnce(testcontainers::TestcontainersError) -> Error + '_ {
        let what = format!("{what} container {}", self.container.id());
        move |e| Error::Docker { what, reason: e.to_string() }
    }

    async fn take_down(&mut self, how: Restart) -> Result<()> {
        if self.stopped {
            return Err(Error::WrongState { port: self.port, state: "stopped", op: "stop it" });
        }
        if self.frozen {
            self.container.unpause().await.map_err(self.docker_failed("unpausing"))?;
            self.frozen = false;
        }
        match how {
            // SIGTERM: Redis saves where its persistence saves, then exits.
            Restart::Graceful => {
                self.container.stop_with_timeout(Some(STOP_GRACE_S)).await.map_err(self.docker_failed("stopping"))?
            }
            Restart::Crash => {
                let opts = bollard::query_parameters::KillContainerOptionsBuilder::new().signal("SIGKILL").build();
                self.docker.kill_container(self.container.id(), Some(opts)).await.map_err(|e| Error::Docker {
                    what: format!("killing container {}", self.container.id()),
                    reason: e.to_string(),
                })?;
                // Docker reports the kill before the container is down: wait for it.
                let deadline = Instant::now() + Duration::from_millis(self.spec.shutdown_timeout_ms);
                while self.container.is_running().await.unwrap_or(false) {
                    if Instant::now() >= deadline {
                        return Err(Error::ShutdownTimeout {
                            port: self.port,
                            waited_ms: self.spec.shutdown_timeout_ms,
                            what: "SIGKILL",
                        });
                    }
                    tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
                }
            }
        }
        self.stopped = true;
        Ok(())
    }
}

#[async_trait::async_trait]
impl RedisNode for ContainerRedis {
    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn key_prefix(&self) -> &str {
        &self.prefix
    }

    fn owned(&self) -> bool {
        true
    }

    async fn restart(&mut self, how: Restart) -> Result<Readiness> {
        self.take_down(how).await?;
        self.start().await
    }

    async fn stop(&mut self, how: Restart) -> Result<()> {
        self.take_down(how).await
    }

    async fn start(&mut self) -> Result<Readiness> {
        if !self.stopped {
            return Err(Error::WrongState { port: self.port, state: "running", op: "start it" });
        }
        // The same container: same data (what its persistence kept), same host port.
        self.container.start().await.map_err(self.docker_failed("starting"))?;
        self.stopped = false;
        self.wait_ready().await
    }

    async fn freeze(&mut self) -> Result<()> {
        self.container.pause().await.map_err(self.docker_failed("pausing"))?;
        self.frozen = true;
        Ok(())
    }

    async fn thaw(&mut self) -> Result<()> {
        self.container.unpause().await.map_err(self.docker_failed("unpausing"))?;
        self.frozen = false;
        Ok(())
    }

    async fn flush(&mut self) -> Result<()> {
        flush_all(self.port).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_are_pid_and_start_time_and_a_dead_one_is_told_apart() {
        let me = owner();
        assert!(owner_alive(&me), "{me}");
        assert!(!owner_alive("999999999:1"), "no such pid");
        let (pid, _) = me.split_once(':').unwrap();
        assert!(!owner_alive(&format!("{pid}:1")), "same pid, another start time: a reused pid");
        assert!(!owner_alive("garbage"));
    }
}
