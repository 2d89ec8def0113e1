//! Redis under the harness's control, behind a provider interface.
//!
//! - [`RedisNode`]: what scenarios may do to a Redis (address, key prefix, restart, crash,
//!   stop/start for an outage window, freeze/thaw, flush). Providers implement it:
//!   [`ProcessRedis`] (a `redis-server` child process, owned) and [`ExternalRedis`] (a server
//!   given by URL, borrowed: read and written under a unique key prefix, never disturbed).
//!   [`ContainerRedis`] (a container started through testcontainers, owned) is the third.
//! - [`admin`]: read-only inspection any node supports (`INFO`, `CLIENT LIST`,
//!   `PUBSUB NUMSUB`), used by checkers to compare against a baseline.
//! - [`process`]: child processes that die with the harness, even on SIGKILL.
//! - [`sweep_own`]: the last resort of an interrupted run: whatever this process still owns
//!   (descendants, labelled containers and networks), removed.

pub mod admin;
pub mod container;
mod external;
pub mod process;
mod redis_process;
pub mod sentinel;

pub use container::ContainerRedis;
pub use external::ExternalRedis;
pub use redis_process::ProcessRedis;

use std::path::PathBuf;

/// Errors of the infrastructure layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("`{binary}` was not found: install it with `apt-get install redis-server` (Debian) or set HYBRID_CHAOS_REDIS_SERVER to its path")]
    RedisServerMissing { binary: String },
    #[error("port 127.0.0.1:{port} is already in use")]
    PortInUse { port: u16 },
    #[error("redis-server on port {port} exited during start-up ({status}); log tail:\n{log_tail}")]
    Exited { port: u16, status: String, log_tail: String },
    #[error("redis-server on port {port} not ready after {waited_ms} ms ({loading_polls} LOADING replies seen); log tail:\n{log_tail}")]
    NotReady { port: u16, waited_ms: u64, loading_polls: u32, log_tail: String },
    #[error("redis-server on port {port} did not exit within {waited_ms} ms after {what}")]
    ShutdownTimeout { port: u16, waited_ms: u64, what: &'static str },
    #[error("refusing to {op} the Redis at {url}: the harness did not start it; only a server it owns may be restarted, crashed, stopped, frozen or flushed")]
    NotOwned { op: &'static str, url: String },
    #[error("the Redis on port {port} is {state}; cannot {op}")]
    WrongState { port: u16, state: &'static str, op: &'static str },
    #[error("invalid redis config override {name:?}: {reason}")]
    BadConfig { name: String, reason: String },
    #[error("invalid Redis URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("Redis command failed: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("Docker does not answer ({reason}); the container provider needs a running Docker engine (or use --provider process)")]
    DockerUnavailable { reason: String },
    #[error("the Redis image {image} is not present and is never pulled: build it with `bash -c 'source ci/lib.sh && hc_ensure_redis_image'` (./ci/test and ./ci/chaos do), or set HYBRID_CHAOS_REDIS_IMAGE to an image you have (e.g. redis:7)")]
    ImageMissing { image: String },
    #[error("Docker failed: {what}: {reason}")]
    Docker { what: String, reason: String },
}

impl Error {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let what = what.into();
        move |source| Error::Io { what, source }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// Durability of a managed server's data across restarts and crashes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Persistence {
    /// Nothing is written to disk: every restart starts empty.
    #[default]
    None,
    /// RDB snapshots (`save 60 1`); a graceful shutdown saves, a crash loses what came after
    /// the last snapshot.
    Rdb,
    /// Append-only file fsynced every second: a crash may lose up to about a second.
    AofEverysec,
    /// Append-only file fsynced on every write: a crash loses nothing acknowledged.
    AofAlways,
}

impl Persistence {
    pub(crate) fn config_lines(self) -> &'static [&'static str] {
        match self {
            Persistence::None => &["save \"\"", "appendonly no"],
            Persistence::Rdb => &["save 60 1", "appendonly no"],
            Persistence::AofEverysec => &["save \"\"", "appendonly yes", "appendfsync everysec"],
            Persistence::AofAlways => &["save \"\"", "appendonly yes", "appendfsync always"],
        }
    }
}

/// How to start a managed `redis-server`. Defaults: `redis-server` from PATH (or
/// `HYBRID_CHAOS_REDIS_SERVER`), a free loopback port, no persistence, 10 s readiness and
/// shutdown limits, data under the system temp dir.
#[derive(Clone, Debug)]
pub struct RedisSpec {
    pub binary: PathBuf,
    /// `None` picks a free port.
    pub port: Option<u16>,
    pub persistence: Persistence,
    /// Extra config directives, e.g. `("client-output-buffer-limit", "pubsub 1mb 256kb 10")`.
    pub config: Vec<(String, String)>,
    pub ready_timeout_ms: u64,
    pub shutdown_timeout_ms: u64,
    /// Parent of the per-server temporary data dir; `None` is the system temp dir.
    pub data_parent: Option<PathBuf>,
}

impl Default for RedisSpec {
    fn default() -> Self {
        RedisSpec {
            binary: std::env::var_os("HYBRID_CHAOS_REDIS_SERVER")
                .map(PathBuf::from)
                .unwrap_or_else(|| "redis-server".into()),
            port: None,
            persistence: Persistence::None,
            config: Vec::new(),
            ready_timeout_ms: 10_000,
            shutdown_timeout_ms: 10_000,
            data_parent: None,
        }
    }
}

impl RedisSpec {
    pub fn persistence(mut self, p: Persistence) -> Self {
        self.persistence = p;
        self
    }

    pub fn config(mut self, name: &str, value: &str) -> Self {
        self.config.push((name.to_string(), value.to_string()));
        self
    }
}

/// How a restart takes the server down.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Restart {
    /// `SHUTDOWN` (saving where the persistence mode saves), then start.
    Graceful,
    /// SIGKILL, then start: whatever was not on disk is gone.
    Crash,
}

/// What a (re)start observed while waiting for the server to answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Readiness {
    /// Milliseconds from spawn until `PING` answered `PONG`.
    pub ready_ms: u64,
    /// `PING`s answered with `LOADING` (the server was reading its dataset from disk).
    pub loading_polls: u32,
}

/// Where a Redis the harness owns runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Provider {
    /// A `redis-server` child process: fast, no Docker needed. The default.
    #[default]
    Process,
    /// A container started through testcontainers ([`ContainerRedis`]).
    Container,
}

impl Provider {
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Process => "process",
            Provider::Container => "container",
        }
    }

    pub fn parse(s: &str) -> Option<Provider> {
        match s {
            "process" => Some(Provider::Process),
            "container" => Some(Provider::Container),
            _ => None,
        }
    }

    /// Starts a server from `spec` with this provider.
    pub async fn start(self, spec: RedisSpec) -> Result<Box<dyn RedisNode>> {
        Ok(match self {
            Provider::Process => Box::new(ProcessRedis::start(spec).await?),
            Provider::Container => Box::new(ContainerRedis::start(spec).await?),
        })
    }
}

/// What the harness may do to a Redis, whoever provides it.
#[async_trait::async_trait]
pub trait RedisNode: Send + Sync {
    /// `host:port` clients (or a proxy's upstream) connect to.
    fn addr(&self) -> String;
    /// `redis://host:port/` for direct (unproxied) connections.
    fn url(&self) -> String {
        format!("redis://{}/", self.addr())
    }
    /// Every key the harness writes starts with this, so runs never collide.
    fn key_prefix(&self) -> &str;
    /// Whether the harness started this server (and so may disturb it).
    fn owned(&self) -> bool;
    async fn restart(&mut self, how: Restart) -> Result<Readiness>;
    /// Takes the server down until [`RedisNode::start`]: an outage window.
    async fn stop(&mut self, how: Restart) -> Result<()>;
    async fn start(&mut self) -> Result<Readiness>;
    /// SIGSTOP: the port stays open but nothing answers (a half-open server).
    async fn freeze(&mut self) -> Result<()>;
    async fn thaw(&mut self) -> Result<()>;
    async fn flush(&mut self) -> Result<()>;
}

/// A run id: unique across runs and machines in practice (time + randomness).
pub fn new_run_id() -> String {
    let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
    format!("{ms:x}-{:08x}", rand::random::<u32>())
}

/// What [`sweep_own`] found still running and removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Swept {
    pub processes: usize,
    pub containers: usize,
    pub networks: usize,
}

impl Swept {
    pub fn is_empty(&self) -> bool {
        *self == Swept::default()
    }
}

impl std::fmt::Display for Swept {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} processes, {} containers, {} networks", self.processes, self.containers, self.networks)
    }
}

/// Ends everything this process still owns: its descendant processes, then the containers
/// and networks carrying its owner label. For the end of a run, above all an interrupted one,
/// once its handles have had their chance: what is found here is what a handle failed to
/// remove (a task that outlived its run, a drop the runtime's shutdown cut short). Docker not
/// answering counts as nothing to remove. Callers bound it in time.
pub async fn sweep_own() -> Swept {
    let processes = process::kill_descendants();
    let (containers, networks) = match container::docker().await {
        Ok(d) => container::remove_own(&d).await.unwrap_or_default(),
        Err(_) => (0, 0),
    };
    Swept { processes, containers, networks }
}
