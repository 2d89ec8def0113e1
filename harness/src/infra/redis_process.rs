//! A `redis-server` child process the harness owns: same port and data dir across restarts.
//!
//! Readiness is a bounded loop of raw `PING`s (redis-rs `tests/support` does the same): a
//! `-LOADING` reply means the server is reading its dataset and counts as "not yet", an exit
//! of the child ends the wait at once, and every failure carries the tail of the server log.
//! The data dir is a temp dir removed on drop; the process is killed on drop and, through
//! [`super::process::spawn_owned`], when the harness itself dies.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::process::{find_executable, free_port, is_alive, port_is_free, signal, spawn_owned};
use super::{new_run_id, Error, Readiness, RedisNode, RedisSpec, Restart, Result};

/// One readiness probe may take this long before it counts as "no answer", in ms.
const PROBE_TIMEOUT_MS: u64 = 250;
/// Pause between readiness probes and exit polls, in ms.
const POLL_INTERVAL_MS: u64 = 10;
/// Start attempts on a randomly chosen port that another process took first.
const PORT_RACE_ATTEMPTS_MAX: u32 = 3;
/// Lines of the server log quoted in errors.
const LOG_TAIL_LINES: usize = 25;
/// Config directives the harness sets itself; an override would break its control.
const RESERVED_DIRECTIVES: &[&str] = &["port", "bind", "dir", "logfile", "daemonize", "pidfile", "unixsocket"];

pub struct ProcessRedis {
    spec: RedisSpec,
    binary: PathBuf,
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    frozen: bool,
    prefix: String,
}

impl std::fmt::Debug for ProcessRedis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessRedis").field("port", &self.port).field("pid", &self.pid()).finish()
    }
}

impl ProcessRedis {
    /// Starts a server and waits until it answers `PING`. On any error nothing is left
    /// behind: no process, no data dir.
    pub async fn start(spec: RedisSpec) -> Result<ProcessRedis> {
        let binary = find_executable(&spec.binary)
            .ok_or_else(|| Error::RedisServerMissing { binary: spec.binary.display().to_string() })?;
        validate_overrides(&spec.config)?;
        if let Some(port) = spec.port {
            if !port_is_free(port) {
                return Err(Error::PortInUse { port });
            }
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            let port = match spec.port {
                Some(p) => p,
                None => free_port().map_err(Error::io("finding a free port"))?,
            };
            let mut builder = tempfile::Builder::new();
            // The server runs in its data dir. A run tag in the dir's name (HC_RUN_TAG, set by
            // the ci/ scripts) lets a leak check find exactly this run's servers through
            // /proc/PID/cwd: redis-server overwrites its own argv and environment when it sets
            // its process title, so neither can carry the tag.
            let prefix = match std::env::var("HC_RUN_TAG") {
                Ok(tag) if !tag.is_empty() && tag.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') => {
                    format!("hybrid-chaos-redis-{tag}-")
                }
                _ => "hybrid-chaos-redis-".to_string(),
            };
            builder.prefix(&prefix);
            let dir = match &spec.data_parent {
                Some(parent) => builder.tempdir_in(parent),
                None => builder.tempdir(),
            }
            .map_err(Error::io("creating the Redis data dir"))?;
            let mut node = ProcessRedis {
                spec: spec.clone(),
                binary: binary.clone(),
                port,
                dir,
                child: None,
                frozen: false,
                prefix: format!("hc:{}:", new_run_id()),
            };
            node.write_config()?;
            match node.launch().await {
                Ok(_) => return Ok(node),
                Err(Error::Exited { log_tail, .. }) if log_tail.contains("Address already in use") => {
                    if spec.port.is_some() {
                        return Err(Error::PortInUse { port });
                    }
                    if attempt >= PORT_RACE_ATTEMPTS_MAX {
                        return Err(Error::PortInUse { port });
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The running server's pid, if it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn data_dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    /// The last lines of the server log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
    }

    fn write_config(&self) -> Result<()> {
        let dir = self.dir.path();
        let mut conf = format!(
            "port {}\nbind 127.0.0.1\ndaemonize no\ndir \"{}\"\nlogfile \"{}\"\n",
            self.port,
            dir.display(),
            self.log_path().display()
        );
        for line in self.spec.persistence.config_lines() {
            conf.push_str(line);
            conf.push('\n');
        }
        for (name, value) in &self.spec.config {
            conf.push_str(&format!("{name} {value}\n"));
        }
        std::fs::write(dir.join("redis.conf"), conf).map_err(Error::io("writing redis.conf"))
    }

    async fn launch(&mut self) -> Result<Readiness> {
        let mut cmd = Command::new(&self.binary);
        cmd.arg(self.dir.path().join("redis.conf")).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        let child = spawn_owned(cmd).map_err(Error::io(format!("spawning {}", self.binary.display())))?;
        self.child = Some(child);
        self.frozen = false;
        match self.wait_ready().await {
            Ok(r) => Ok(r),
            Err(e) => {
                self.kill_now();
                Err(e)
            }
        }
    }

    async fn wait_ready(&mut self) -> Result<Readiness> {
        let (port, limit_ms) = (self.port, self.spec.ready_timeout_ms);
        match await_pong(port, limit_ms, || self.exit_error()).await? {
            Ok(r) => Ok(r),
            Err(loading_polls) => {
                Err(Error::NotReady { port, waited_ms: limit_ms, loading_polls, log_tail: self.log_tail() })
            }
        }
    }

    /// The start-up error if the child has exited, with the log tail and its stderr.
    fn exit_error(&mut self) -> Option<Error> {
        let status = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())?;
        let mut log_tail = self.log_tail();
        // Config errors go to stderr before the log file is opened.
        if let Some(stderr) = self.child.as_mut().and_then(|c| c.stderr.take()) {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut std::io::BufReader::new(stderr), &mut s);
            log_tail.push_str(&s);
        }
        self.child = None;
        Some(Error::Exited { port: self.port, status: status.to_string(), log_tail })
    }

    fn kill_now(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.frozen = false;
    }

    async fn take_down(&mut self, how: Restart) -> Result<()> {
        let Some(pid) = self.pid() else {
            return Err(Error::WrongState { port: self.port, state: "stopped", op: "stop it" });
        };
        if self.frozen {
            // A stopped process cannot serve SHUTDOWN; let it run long enough to obey.
            let _ = signal(pid, libc::SIGCONT);
            self.frozen = false;
        }
        let what = match how {
            Restart::Graceful => {
                // The server closes the connection instead of replying when SHUTDOWN works.
                let _ = raw_command(self.port, "SHUTDOWN").await;
                "SHUTDOWN"
            }
            Restart::Crash => {
                signal(pid, libc::SIGKILL).map_err(Error::io("sending SIGKILL to redis-server"))?;
                "SIGKILL"
            }
        };
        let deadline = Instant::now() + Duration::from_millis(self.spec.shutdown_timeout_ms);
        loop {
            let exited =
                self.child.as_mut().map(|c| c.try_wait()).transpose().map_err(Error::io("waiting for redis-server"))?;
            if exited.flatten().is_some() || !is_alive(pid) {
                // Reap it: a zombie left here outlives the harness where PID 1 does not reap.
                if let Some(mut child) = self.child.take() {
                    let _ = child.wait();
                }
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.kill_now();
                return Err(Error::ShutdownTimeout { port: self.port, waited_ms: self.spec.shutdown_timeout_ms, what });
            }
            tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
        }
    }

    fn running_pid(&self, op: &'static str) -> Result<u32> {
        self.pid().ok_or(Error::WrongState { port: self.port, state: "stopped", op })
    }
}

#[async_trait::async_trait]
impl RedisNode for ProcessRedis {
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
        self.launch().await
    }

    async fn stop(&mut self, how: Restart) -> Result<()> {
        self.take_down(how).await
    }

    async fn start(&mut self) -> Result<Readiness> {
        if self.child.is_some() {
            return Err(Error::WrongState { port: self.port, state: "running", op: "start it" });
        }
        // Same port as before: clients and proxies keep their address.
        if !port_is_free(self.port) {
            return Err(Error::PortInUse { port: self.port });
        }
        self.launch().await
    }

    async fn freeze(&mut self) -> Result<()> {
        let pid = self.running_pid("freeze it")?;
        signal(pid, libc::SIGSTOP).map_err(Error::io("sending SIGSTOP to redis-server"))?;
        self.frozen = true;
        Ok(())
    }

    async fn thaw(&mut self) -> Result<()> {
        let pid = self.running_pid("thaw it")?;
        signal(pid, libc::SIGCONT).map_err(Error::io("sending SIGCONT to redis-server"))?;
        self.frozen = false;
        Ok(())
    }

    async fn flush(&mut self) -> Result<()> {
        flush_all(self.port).await
    }
}

impl Drop for ProcessRedis {
    fn drop(&mut self) {
        // SIGKILL works on a frozen (SIGSTOPped) process too.
        self.kill_now();
    }
}

fn validate_overrides(config: &[(String, String)]) -> Result<()> {
    for (name, value) in config {
        let bad = |reason: &str| Error::BadConfig { name: name.clone(), reason: reason.to_string() };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') {
            return Err(bad("a directive name is lowercase letters, digits and '-'"));
        }
        if RESERVED_DIRECTIVES.contains(&name.as_str()) {
            return Err(bad("the harness sets this directive itself"));
        }
        if value.contains(['\n', '\r']) {
            return Err(bad("the value must be one line"));
        }
    }
    Ok(())
}

/// Polls `PING` on 127.0.0.1:`port` until `PONG`, for at most `limit_ms`, whoever provides
/// the server. A `-LOADING` reply counts as "not yet"; `exited` is asked before each probe
/// and ends the wait with its error. `Ok(Err(loading polls))` when the limit passed.
pub(crate) async fn await_pong(
    port: u16,
    limit_ms: u64,
    mut exited: impl FnMut() -> Option<Error>,
) -> Result<std::result::Result<Readiness, u32>> {
    let started = Instant::now();
    let deadline = started + Duration::from_millis(limit_ms);
    let mut loading_polls = 0;
    loop {
        if let Some(e) = exited() {
            return Err(e);
        }
        match raw_command(port, "PING").await {
            Ok(reply) if reply.starts_with("+PONG") => {
                return Ok(Ok(Readiness { ready_ms: started.elapsed().as_millis() as u64, loading_polls }));
            }
            Ok(reply) if reply.starts_with("-LOADING") => loading_polls += 1,
            _ => {}
        }
        if Instant::now() >= deadline {
            return Ok(Err(loading_polls));
        }
        tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
    }
}

/// `FLUSHALL` on the server at 127.0.0.1:`port`, whoever provides it.
pub(crate) async fn flush_all(port: u16) -> Result<()> {
    let reply = raw_command(port, "FLUSHALL").await.map_err(Error::io("FLUSHALL"))?;
    if !reply.starts_with("+OK") {
        return Err(Error::Io { what: "FLUSHALL".into(), source: std::io::Error::other(reply) });
    }
    Ok(())
}

/// Sends one inline command and returns the first reply line (`+PONG`, `-LOADING ...`).
pub(crate) async fn raw_command(port: u16, command: &str) -> std::io::Result<String> {
    let probe = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
        stream.write_all(format!("{command}\r\n").as_bytes()).await?;
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line).await?;
        Ok(line)
    };
    tokio::time::timeout(Duration::from_millis(PROBE_TIMEOUT_MS), probe)
        .await
        .unwrap_or_else(|_| Err(std::io::Error::from(std::io::ErrorKind::TimedOut)))
}
