//! Replicated Redis in containers: a primary, replicas and three Sentinels, with faults
//! between hosts.
//!
//! Two networks, both created here with a subnet (Docker keeps a container's address on
//! reconnect only on such a network):
//! - the **backbone** carries replication and Sentinel traffic; a partition disconnects a
//!   server from it, so Sentinels and replicas lose it while clients still reach it;
//! - the **front** is where the harness (on the host, which is on every bridge network)
//!   reaches each server; cutting it partitions clients from a server while Sentinels
//!   still see it.
//!
//! Sentinels announce backbone addresses; [`SentinelTopology::primary`] maps the answer to
//! the same server's front address. Every container and network carries the owner and run
//! labels of [`super::container`], and is removed on drop.

use std::net::Ipv4Addr;
use std::time::Duration;

use testcontainers::bollard;
use testcontainers::bollard::models::{
    EndpointIpamConfig, EndpointSettings, Ipam, IpamConfig, NetworkConnectRequest, NetworkCreateRequest,
    NetworkDisconnectRequest,
};
use testcontainers::core::WaitFor;
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};

use super::container::{docker, image, owner_labels, reap_orphans_once, require_image};
use super::{Error, Persistence, Result};

/// The name Sentinels monitor the primary under.
pub const MASTER_NAME: &str = "hc";
const SENTINELS: usize = 3;
const QUORUM: usize = 2;
const REDIS_PORT: u16 = 6379;
const SENTINEL_PORT: u16 = 26379;
/// Readiness of the whole topology (replicas online, Sentinels aware of each other), in ms.
const READY_TIMEOUT_MS: u64 = 30_000;
/// Subnets are drawn from 172.24.0.0/13 (172.24-31.x.0/24); a draw that overlaps an
/// existing network is retried this many times.
const SUBNET_ATTEMPTS_MAX: u32 = 20;

/// The shape of a replicated deployment.
#[derive(Clone, Debug)]
pub struct SentinelSpec {
    pub replicas: usize,
    pub persistence: Persistence,
    /// Extra directives for every server, e.g. `min-replicas-to-write 1`.
    pub config: Vec<(String, String)>,
    /// Sentinel's `down-after-milliseconds`: how long a silent primary is tolerated.
    pub down_after_ms: u64,
    pub failover_timeout_ms: u64,
}

impl Default for SentinelSpec {
    fn default() -> Self {
        SentinelSpec {
            replicas: 1,
            persistence: Persistence::None,
            config: Vec::new(),
            down_after_ms: 1_000,
            failover_timeout_ms: 3_000,
        }
    }
}

struct Net {
    name: String,
}

/// One container of a topology, for a fault: a Redis server or a Sentinel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Host {
    Server(usize),
    Sentinel(usize),
}

impl From<usize> for Host {
    fn from(server: usize) -> Host {
        Host::Server(server)
    }
}

/// One container of the topology.
pub struct Node {
    pub name: String,
    container: ContainerAsync<GenericImage>,
    pub backbone_ip: Ipv4Addr,
    /// `None` for Sentinels, which are only on the backbone.
    pub front_ip: Option<Ipv4Addr>,
}

impl Node {
    pub fn id(&self) -> &str {
        self.container.id()
    }
}

/// A running primary + replicas + Sentinels. Dropping it removes every container, then the
/// networks.
pub struct SentinelTopology {
    docker: bollard::Docker,
    backbone: Net,
    front: Net,
    /// `servers[0]` is the primary at start.
    pub servers: Vec<Node>,
    pub sentinels: Vec<Node>,
}

fn docker_err(what: impl Into<String>) -> impl FnOnce(bollard::errors::Error) -> Error {
    let what = what.into();
    move |e| Error::Docker { what, reason: e.to_string() }
}

async fn create_net(d: &bollard::Docker, name: &str) -> Result<Net> {
    let mut last = String::new();
    for _ in 0..SUBNET_ATTEMPTS_MAX {
        let subnet = format!("172.{}.{}.0/24", 24 + rand::random::<u8>() % 8, rand::random::<u8>());
        let req = NetworkCreateRequest {
            name: name.to_string(),
            driver: Some("bridge".into()),
            ipam: Some(Ipam {
                config: Some(vec![IpamConfig { subnet: Some(subnet), ..Default::default() }]),
                ..Default::default()
            }),
            labels: Some(owner_labels()),
            ..Default::default()
        };
        match d.create_network(req).await {
            Ok(_) => return Ok(Net { name: name.to_string() }),
            Err(e) => last = e.to_string(),
        }
    }
    Err(Error::Docker { what: format!("creating network {name}"), reason: last })
}

async fn ip_on(d: &bollard::Docker, id: &str, net: &str) -> Result<Ipv4Addr> {
    let info = d
        .inspect_container(id, None::<bollard::query_parameters::InspectContainerOptions>)
        .await
        .map_err(docker_err(format!("inspecting container {id}")))?;
    info.network_settings
        .and_then(|s| s.networks)
        .and_then(|n| n.get(net).cloned())
        .and_then(|e| e.ip_address)
        .and_then(|ip| ip.parse().ok())
        .ok_or_else(|| Error::Docker { what: format!("reading the address of {id} on {net}"), reason: "none".into() })
}

async fn query(url: &str, cmd: &redis::Cmd) -> Result<redis::Value> {
    let limit = Some(Duration::from_millis(500));
    let config = redis::AsyncConnectionConfig::new().set_connection_timeout(limit).set_response_timeout(limit);
    let client = redis::Client::open(url)?;
    let mut c = client.get_multiplexed_async_connection_with_config(&config).await?;
    Ok(cmd.query_async(&mut c).await?)
}

impl SentinelTopology {
    /// Starts the networks, the servers (the first the primary, the others its replicas) and
    /// three Sentinels, and waits until the replicas are online and every Sentinel sees the
    /// others. On error everything started so far is removed.
    pub async fn start(spec: SentinelSpec) -> Result<SentinelTopology> {
        let d = docker().await?;
        reap_orphans_once(&d).await?;
        let image = image();
        require_image(&d, &image).await?;
        let tag = format!("hc-{}-{:06x}", std::process::id(), rand::random::<u32>() & 0xff_ffff);
        let backbone = create_net(&d, &format!("{tag}-backbone")).await?;
        let front = match create_net(&d, &format!("{tag}-front")).await {
            Ok(n) => n,
            Err(e) => {
                let _ = d.remove_network(&backbone.name).await;
                return Err(e);
            }
        };
        let mut topo = SentinelTopology { docker: d, backbone, front, servers: Vec::new(), sentinels: Vec::new() };
        topo.populate(&spec, &image).await?;
        Ok(topo)
    }

    async fn populate(&mut self, spec: &SentinelSpec, image: &str) -> Result<()> {
        let (name, tag) = image.rsplit_once(':').unwrap_or((image, "latest"));
        let mut primary_ip = None;
        for i in 0..=spec.replicas {
            let mut args: Vec<String> =
                ["--port", "6379", "--protected-mode", "no", "--dir", "/data"].map(String::from).into();
            for line in spec.persistence.config_lines() {
                let (k, v) = line.split_once(' ').unwrap_or((line, ""));
                args.extend([format!("--{k}"), v.trim_matches('"').to_string()]);
            }
            for (k, v) in &spec.config {
                args.push(format!("--{k}"));
                args.extend(v.split_whitespace().map(String::from));
            }
            if let Some(ip) = primary_ip {
                args.extend(["--replicaof".to_string(), format!("{ip}"), REDIS_PORT.to_string()]);
            }
            let node = self.run_node(name, tag, &format!("server-{i}"), args, true).await?;
            primary_ip.get_or_insert(node.backbone_ip);
            self.servers.push(node);
        }
        let primary = primary_ip.expect("at least the primary");
        for i in 0..SENTINELS {
            let args: Vec<String> = [
                "/etc/sentinel/sentinel.conf".to_string(),
                "--sentinel".into(),
                "--port".into(),
                SENTINEL_PORT.to_string(),
                "--sentinel".into(),
                "monitor".into(),
                MASTER_NAME.into(),
                primary.to_string(),
                REDIS_PORT.to_string(),
                QUORUM.to_string(),
                "--sentinel".into(),
                "down-after-milliseconds".into(),
                MASTER_NAME.into(),
                spec.down_after_ms.to_string(),
                "--sentinel".into(),
                "failover-timeout".into(),
                MASTER_NAME.into(),
                spec.failover_timeout_ms.to_string(),
            ]
            .into();
            let node = self.run_node(name, tag, &format!("sentinel-{i}"), args, false).await?;
            self.sentinels.push(node);
        }
        self.wait_ready(spec.replicas).await
    }

    async fn run_node(&self, name: &str, tag: &str, role: &str, args: Vec<String>, front: bool) -> Result<Node> {
        let mut req = GenericImage::new(name, tag)
            .with_wait_for(WaitFor::Nothing)
            .with_network(self.backbone.name.clone())
            .with_cmd(args);
        for (k, v) in owner_labels() {
            req = req.with_label(k, v);
        }
        let container = req
            .start()
            .await
            .map_err(|e| Error::Docker { what: format!("starting {role} from {name}:{tag}"), reason: e.to_string() })?;
        let id = container.id().to_string();
        let backbone_ip = ip_on(&self.docker, &id, &self.backbone.name).await?;
        let front_ip = if front {
            let req = NetworkConnectRequest { container: id.clone(), endpoint_config: None };
            self.docker
                .connect_network(&self.front.name, req)
                .await
                .map_err(docker_err(format!("connecting {role}")))?;
            Some(ip_on(&self.docker, &id, &self.front.name).await?)
        } else {
            None
        };
        Ok(Node { name: role.to_string(), container, backbone_ip, front_ip })
    }

    /// `redis://FRONT_IP:6379/` of a server: how the harness reaches it.
    pub fn url(&self, server: usize) -> String {
        let ip = self.servers[server].front_ip.expect("servers are on the front network");
        format!("redis://{ip}:{REDIS_PORT}/")
    }

    fn sentinel_url(&self, i: usize) -> String {
        format!("redis://{}:{SENTINEL_PORT}/", self.sentinels[i].backbone_ip)
    }

    async fn wait_ready(&self, replicas: usize) -> Result<()> {
        let ready = crate::poll_until(Duration::from_millis(READY_TIMEOUT_MS), Duration::from_millis(100), || async {
            let info = crate::infra::admin::info(&self.url(0), Some("replication")).await.ok()?;
            let online =
                (0..replicas).all(|i| info.get(&format!("slave{i}")).is_some_and(|s| s.contains("state=online")));
            if !online {
                return None;
            }
            for i in 0..self.sentinels.len() {
                let cmd = redis::cmd("SENTINEL").arg("sentinels").arg(MASTER_NAME).to_owned();
                match query(&self.sentinel_url(i), &cmd).await.ok()? {
                    redis::Value::Array(others) if others.len() == SENTINELS - 1 => {}
                    _ => return None,
                }
            }
            Some(())
        })
        .await;
        ready.ok_or(Error::Docker {
            what: "waiting for the replicas and Sentinels".into(),
            reason: format!("not ready within {READY_TIMEOUT_MS} ms"),
        })
    }

    /// The server the Sentinels name as primary (the first that answers), by index.
    pub async fn primary(&self) -> Option<usize> {
        for i in 0..self.sentinels.len() {
            let cmd = redis::cmd("SENTINEL").arg("get-master-addr-by-name").arg(MASTER_NAME).to_owned();
            if let Ok(redis::Value::Array(v)) = query(&self.sentinel_url(i), &cmd).await {
                let ip = match v.first() {
                    Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(b).to_string(),
                    _ => continue,
                };
                if let Some(s) = self.servers.iter().position(|n| n.backbone_ip.to_string() == ip) {
                    return Some(s);
                }
            }
        }
        None
    }

    fn node(&self, h: Host) -> &Node {
        match h {
            Host::Server(i) => &self.servers[i],
            Host::Sentinel(i) => &self.sentinels[i],
        }
    }

    /// Cuts a host off the backbone: a server loses the Sentinels and replicas while
    /// clients still reach it; a Sentinel loses everything.
    pub async fn partition(&self, h: impl Into<Host>) -> Result<()> {
        self.detach(&self.backbone.name, h.into()).await
    }

    /// Reconnects a partitioned host at its old backbone address.
    pub async fn heal(&self, h: impl Into<Host>) -> Result<()> {
        let h = h.into();
        self.attach(&self.backbone.name, h, self.node(h).backbone_ip).await
    }

    /// Cuts a server off the front network: clients lose it while the Sentinels and the
    /// replicas still see it (the asymmetric cut the other way round from [`Self::partition`]).
    pub async fn cut_clients(&self, server: usize) -> Result<()> {
        self.detach(&self.front.name, Host::Server(server)).await
    }

    /// Reconnects a server to the front network at its old address.
    pub async fn restore_clients(&self, server: usize) -> Result<()> {
        let ip = self.servers[server].front_ip.expect("servers are on the front network");
        self.attach(&self.front.name, Host::Server(server), ip).await
    }

    async fn detach(&self, net: &str, h: Host) -> Result<()> {
        let n = self.node(h);
        let req = NetworkDisconnectRequest { container: n.id().to_string(), force: Some(true) };
        self.docker
            .disconnect_network(net, req)
            .await
            .map_err(docker_err(format!("disconnecting {} from {net}", n.name)))
    }

    /// Reconnects at `ip`: the address peers and Sentinels know it by.
    async fn attach(&self, net: &str, h: Host, ip: Ipv4Addr) -> Result<()> {
        let n = self.node(h);
        let endpoint = EndpointSettings {
            ipam_config: Some(EndpointIpamConfig { ipv4_address: Some(ip.to_string()), ..Default::default() }),
            ..Default::default()
        };
        let req = NetworkConnectRequest { container: n.id().to_string(), endpoint_config: Some(endpoint) };
        self.docker.connect_network(net, req).await.map_err(docker_err(format!("reconnecting {} to {net}", n.name)))
    }

    pub async fn pause(&self, h: impl Into<Host>) -> Result<()> {
        let n = self.node(h.into());
        n.container
            .pause()
            .await
            .map_err(|e| Error::Docker { what: format!("pausing {}", n.name), reason: e.to_string() })
    }

    pub async fn unpause(&self, h: impl Into<Host>) -> Result<()> {
        let n = self.node(h.into());
        n.container
            .unpause()
            .await
            .map_err(|e| Error::Docker { what: format!("unpausing {}", n.name), reason: e.to_string() })
    }

    /// SIGKILL, as a crashed host.
    pub async fn kill(&self, h: impl Into<Host>) -> Result<()> {
        let n = self.node(h.into());
        let opts = bollard::query_parameters::KillContainerOptionsBuilder::new().signal("SIGKILL").build();
        self.docker.kill_container(n.id(), Some(opts)).await.map_err(docker_err(format!("killing {}", n.name)))
    }

    /// Starts a killed host again; it keeps its addresses (a Sentinel also keeps its
    /// rewritten config file, so it rejoins knowing the current primary).
    pub async fn restart_killed(&self, h: impl Into<Host>) -> Result<()> {
        let n = self.node(h.into());
        n.container
            .start()
            .await
            .map_err(|e| Error::Docker { what: format!("starting {}", n.name), reason: e.to_string() })
    }

    /// A Sentinel URL for the reference (see `reference::endpoint`): every Sentinel, and a
    /// map from the backbone addresses Sentinels announce to the front addresses clients
    /// reach.
    pub fn sentinel_client_url(&self) -> String {
        crate::reference::endpoint::SentinelUrl {
            sentinels: self.sentinels.iter().map(|n| format!("{}:{SENTINEL_PORT}", n.backbone_ip)).collect(),
            master: MASTER_NAME.into(),
            map: self
                .servers
                .iter()
                .filter_map(|n| {
                    n.front_ip.map(|f| (format!("{}:{REDIS_PORT}", n.backbone_ip), format!("{f}:{REDIS_PORT}")))
                })
                .collect(),
        }
        .to_url()
    }

    /// Whether every server agrees on one primary and every replica's link to it is up:
    /// the topology has converged after a fault.
    pub async fn converged(&self) -> Option<usize> {
        let primary = self.primary().await?;
        for i in 0..self.servers.len() {
            let info = crate::infra::admin::info(&self.url(i), Some("replication")).await.ok()?;
            let role = info.get("role")?.as_str();
            let ok = if i == primary {
                role == "master"
            } else {
                role == "slave"
                    && info.get("master_link_status").map(String::as_str) == Some("up")
                    && info.get("master_host").map(String::as_str)
                        == Some(&self.servers[primary].backbone_ip.to_string())
            };
            if !ok {
                return None;
            }
        }
        Some(primary)
    }
}

impl Drop for SentinelTopology {
    fn drop(&mut self) {
        // Containers first (their handles remove them as they drop), then the networks.
        self.sentinels.clear();
        self.servers.clear();
        let nets = [self.backbone.name.clone(), self.front.name.clone()];
        // Drop cannot await: remove the networks on a thread with a runtime and a client of
        // its own (a client is bound to the runtime that made it).
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            rt.block_on(async {
                let Ok(d) = bollard::Docker::connect_with_defaults() else { return };
                for n in nets {
                    let _ = d.remove_network(&n).await;
                }
            });
        })
        .join();
    }
}
