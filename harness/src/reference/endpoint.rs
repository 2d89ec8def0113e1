//! Where the reference's connections go: one server (`redis://HOST:PORT/`), or whichever
//! server a set of Sentinels names as primary
//! (`redis+sentinel://S1:P1,S2:P2/MASTER?map=FROM=TO,...`).
//!
//! A Sentinel URL is asked again at every (re)connect, as Redis's client guidelines ask: the
//! first Sentinel that answers names the primary, and the server is asked `ROLE` before it is
//! used, because a Sentinel that has not yet noticed a failover still names the old one.
//! `map` rewrites the addresses Sentinels announce into the ones this client reaches (what
//! other clients call a NAT map): in the harness, each server's fault proxy.
//!
//! [`Conn`] is the command connection on top of it: a `ConnectionManager` to the current
//! primary, replaced when a command fails in a way that says the primary moved (`READONLY`
//! from a demoted server, or a dead connection), or when the Sentinels, asked every
//! health-check interval, name another server. Every pipeline runs on one connection, so a
//! store and the `WAIT` that follows it in the same pipeline count the same writes.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::{Cmd, Pipeline, RedisFuture, Value};

use super::{Config, Error, Result};

/// Retries of a read whose connection turned out dead ([`Conn::read`]), each after
/// [`READ_RETRY_DELAY_MS`] ...
pub const READ_RETRIES_MAX: u32 = 2;
/// ... in ms: the reconnect the failed read set off is under way by then.
pub const READ_RETRY_DELAY_MS: u64 = 10;

/// The scheme of a Sentinel URL.
pub const SENTINEL_SCHEME: &str = "redis+sentinel://";

/// A parsed Sentinel URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SentinelUrl {
    /// `HOST:PORT` of each Sentinel, asked in this order.
    pub sentinels: Vec<String>,
    /// The name the Sentinels monitor the primary under.
    pub master: String,
    /// Announced `HOST:PORT` to the `HOST:PORT` this client connects to.
    pub map: BTreeMap<String, String>,
}

impl SentinelUrl {
    /// Parses `redis+sentinel://S1:P1[,S2:P2...]/MASTER[?map=FROM=TO[,FROM=TO...]]`;
    /// `None` when `url` is not of that scheme, an error when it is but is malformed.
    pub fn parse(url: &str) -> Option<std::result::Result<SentinelUrl, String>> {
        let rest = url.strip_prefix(SENTINEL_SCHEME)?;
        Some((|| {
            let (hosts, path) = rest.split_once('/').ok_or("no /MASTER after the Sentinels")?;
            let (master, query) = path.split_once('?').unwrap_or((path, ""));
            let sentinels: Vec<String> = hosts.split(',').filter(|h| !h.is_empty()).map(String::from).collect();
            if sentinels.is_empty() || sentinels.iter().any(|h| !h.contains(':')) {
                return Err(format!("Sentinels must be HOST:PORT[,HOST:PORT...], got {hosts:?}"));
            }
            if master.is_empty() {
                return Err("no master name after the /".into());
            }
            let mut map = BTreeMap::new();
            for param in query.split('&').filter(|p| !p.is_empty()) {
                let pairs = param.strip_prefix("map=").ok_or_else(|| format!("unknown parameter {param:?}"))?;
                for pair in pairs.split(',').filter(|p| !p.is_empty()) {
                    let (from, to) =
                        pair.split_once('=').ok_or_else(|| format!("map entry {pair:?} is not FROM=TO"))?;
                    map.insert(from.to_string(), to.to_string());
                }
            }
            Ok(SentinelUrl { sentinels, master: master.to_string(), map })
        })())
    }

    /// The URL again, as [`SentinelUrl::parse`] reads it.
    pub fn to_url(&self) -> String {
        let map: Vec<String> = self.map.iter().map(|(f, t)| format!("{f}={t}")).collect();
        let query = if map.is_empty() { String::new() } else { format!("?map={}", map.join(",")) };
        format!("{SENTINEL_SCHEME}{}/{}{query}", self.sentinels.join(","), self.master)
    }
}

fn bad_url(url: &str, reason: impl Into<String>) -> Error {
    let source = redis::RedisError::from((redis::ErrorKind::InvalidClientConfig, "bad Sentinel URL", reason.into()));
    Error::BadUrl { url: url.to_string(), source }
}

fn unresolved(url: &str, reason: String) -> Error {
    let source = redis::RedisError::from(std::io::Error::new(std::io::ErrorKind::NotConnected, reason));
    Error::Connect { url: url.to_string(), source }
}

async fn ask(addr: &str, cmd: &Cmd, limit: Duration) -> std::result::Result<Value, String> {
    let config =
        redis::AsyncConnectionConfig::new().set_connection_timeout(Some(limit)).set_response_timeout(Some(limit));
    let client = redis::Client::open(format!("redis://{addr}/")).map_err(|e| e.to_string())?;
    let mut c = client.get_multiplexed_async_connection_with_config(&config).await.map_err(|e| e.to_string())?;
    cmd.query_async(&mut c).await.map_err(|e| e.to_string())
}

/// The `redis://` URL of the server `url` names now: `url` itself for a plain URL; for a
/// Sentinel URL, the primary the first answering Sentinel names, mapped, once `ROLE` there
/// confirms it is a primary.
pub async fn resolve(url: &str, config: &Config) -> Result<String> {
    let Some(parsed) = SentinelUrl::parse(url) else {
        return Ok(url.to_string());
    };
    let s = parsed.map_err(|reason| bad_url(url, reason))?;
    let limit = Duration::from_millis(config.connect_timeout_ms);
    let mut tried = Vec::new();
    for sentinel in &s.sentinels {
        let cmd = redis::cmd("SENTINEL").arg("get-master-addr-by-name").arg(&s.master).to_owned();
        let (host, port) = match ask(sentinel, &cmd, limit).await {
            Ok(Value::Array(v)) if v.len() == 2 => {
                let text = |v: &Value| match v {
                    Value::BulkString(b) => String::from_utf8_lossy(b).to_string(),
                    other => format!("{other:?}"),
                };
                (text(&v[0]), text(&v[1]))
            }
            Ok(other) => {
                tried.push(format!("{sentinel}: {other:?}"));
                continue;
            }
            Err(e) => {
                tried.push(format!("{sentinel}: {e}"));
                continue;
            }
        };
        let announced = format!("{host}:{port}");
        let addr = s.map.get(&announced).cloned().unwrap_or(announced.clone());
        // A Sentinel that missed the failover names a demoted server: ask it.
        match ask(&addr, &redis::cmd("ROLE"), limit).await {
            Ok(Value::Array(role)) if matches!(role.first(), Some(Value::BulkString(r)) if r == b"master") => {
                return Ok(format!("redis://{addr}/"));
            }
            Ok(_) => tried.push(format!("{sentinel} names {announced}, which is not a primary")),
            Err(e) => tried.push(format!("{sentinel} names {announced} ({addr}): {e}")),
        }
    }
    Err(unresolved(url, format!("no primary for {:?}: {}", s.master, tried.join("; "))))
}

/// Whether `e` says the primary may have moved: a demoted server refuses writes with
/// `READONLY`, a primary cut from its replicas refuses them with `NOREPLICAS` (under
/// `min-replicas-to-write`; the Sentinels may have promoted one meanwhile), and a dead or
/// unreachable server fails the connection.
pub fn moved(e: &redis::RedisError) -> bool {
    matches!(e.code(), Some("READONLY" | "NOREPLICAS" | "EXECABORT")) || super::is_transient(e)
}

struct ConnState {
    /// The `redis://` URL the manager is connected to.
    target: String,
    manager: ConnectionManager,
    /// A re-resolve is under way (only one at a time).
    resolving: bool,
}

/// The command connection: a reconnecting `ConnectionManager` to the server the URL names,
/// replaced when the primary moves (see the module documentation). Clones share it.
#[derive(Clone)]
pub struct Conn {
    url: Arc<str>,
    config: Arc<Config>,
    state: Arc<Mutex<ConnState>>,
}

async fn manager(target: &str, config: &Config) -> Result<ConnectionManager> {
    let client = redis::Client::open(target).map_err(|source| Error::BadUrl { url: target.to_string(), source })?;
    let mgr = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_millis(config.connect_timeout_ms)))
        .set_response_timeout(Some(Duration::from_millis(config.command_timeout_ms)))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_millis(config.reconnect_delay_ms_max));
    let connect = client.get_connection_manager_with_config(mgr);
    match tokio::time::timeout(Duration::from_millis(config.connect_timeout_ms * 3), connect).await {
        Ok(r) => r.map_err(|source| Error::Connect { url: target.to_string(), source }),
        Err(_) => Err(Error::ConnectTimeout(config.connect_timeout_ms * 3)),
    }
}

impl Conn {
    /// Resolves `url` and connects, with bounded connect and response times.
    pub async fn connect(url: &str, config: &Config) -> Result<Conn> {
        let target = resolve(url, config).await?;
        let manager = manager(&target, config).await?;
        let state = ConnState { target, manager, resolving: false };
        let conn = Conn { url: url.into(), config: Arc::new(config.clone()), state: Arc::new(Mutex::new(state)) };
        if url.starts_with(SENTINEL_SCHEME) {
            // Asked again every health-check interval, not only after an error: a primary cut
            // from its Sentinels but not from this client answers every write, and without
            // this the client stays on it until its demotion (seen: 15 s after the heal).
            let (weak, url, config) = (Arc::downgrade(&conn.state), conn.url.clone(), conn.config.clone());
            tokio::spawn(async move {
                let every = Duration::from_millis(config.health_check_interval_ms.max(1));
                loop {
                    tokio::time::sleep(every).await;
                    let Some(state) = weak.upgrade() else { return };
                    Conn { url: url.clone(), config: config.clone(), state }.re_resolve();
                }
            });
        }
        Ok(conn)
    }

    /// Runs a read-only command, retried up to [`READ_RETRIES_MAX`] times when the
    /// connection fails under it. A connection that died with a restarted server is only
    /// found dead by the next command sent on it: a worker idle across a restart would
    /// otherwise fail its first wait (`broken pipe`) or leave its first read to the next
    /// poll. A read can be sent twice without harm; writes are never retried here (the
    /// publisher decides that, knowing what a duplicate costs).
    pub async fn read<T: redis::FromRedisValue>(&self, cmd: &Cmd) -> redis::RedisResult<T> {
        self.retrying(|mut c| async move { cmd.query_async(&mut c).await }).await
    }

    /// [`Conn::read`] for a pipeline of reads.
    pub async fn read_pipe<T: redis::FromRedisValue>(&self, pipe: &Pipeline) -> redis::RedisResult<T> {
        self.retrying(|mut c| async move { pipe.query_async(&mut c).await }).await
    }

    async fn retrying<T, F: std::future::Future<Output = redis::RedisResult<T>>>(
        &self,
        mut send: impl FnMut(Conn) -> F,
    ) -> redis::RedisResult<T> {
        let retries_max = if self.config.mutated(super::Mutation::NoReadRetry) { 0 } else { READ_RETRIES_MAX };
        let mut retries = 0;
        loop {
            match send(self.clone()).await {
                Err(e) if retries < retries_max && super::is_transient(&e) => {
                    retries += 1;
                    tokio::time::sleep(Duration::from_millis(READ_RETRY_DELAY_MS)).await;
                }
                r => return r,
            }
        }
    }

    /// The `redis://` URL of the server commands go to now.
    pub fn target(&self) -> String {
        self.state.lock().expect("conn lock").target.clone()
    }

    fn current(&self) -> ConnectionManager {
        self.state.lock().expect("conn lock").manager.clone()
    }

    /// After an error that says the primary may have moved, asks the Sentinels again in the
    /// background and switches if they name another server. A plain URL never moves.
    fn on_error(&self, e: &redis::RedisError) {
        if moved(e) {
            self.re_resolve();
        }
    }

    /// Asks the Sentinels in the background (one ask at a time) and switches if they name
    /// another server than the current one. A plain URL never moves.
    fn re_resolve(&self) {
        if !self.url.starts_with(SENTINEL_SCHEME) {
            return;
        }
        {
            let mut st = self.state.lock().expect("conn lock");
            if st.resolving {
                return;
            }
            st.resolving = true;
        }
        let this = self.clone();
        tokio::spawn(async move {
            let switched = async {
                let target = resolve(&this.url, &this.config).await.ok()?;
                if target == this.target() {
                    return None;
                }
                let m = manager(&target, &this.config).await.ok()?;
                Some((target, m))
            }
            .await;
            let mut st = this.state.lock().expect("conn lock");
            if let Some((target, m)) = switched {
                tracing::info!(from = %st.target, to = %target, "the primary moved; commands follow it");
                st.target = target;
                st.manager = m;
            }
            st.resolving = false;
        });
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let mut m = self.current();
            let r = m.req_packed_command(cmd).await;
            if let Err(e) = &r {
                self.on_error(e);
            }
            r
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let mut m = self.current();
            let r = m.req_packed_commands(pipeline, offset, count).await;
            match &r {
                Err(e) => self.on_error(e),
                // A pipeline's READONLY comes back inside its values.
                Ok(values) => {
                    if let Some(Value::ServerError(e)) = values.iter().find(|v| matches!(v, Value::ServerError(_))) {
                        let e: redis::RedisError = e.clone().into();
                        self.on_error(&e);
                    }
                }
            }
            r
        })
    }

    /// URLs here name no database: always 0.
    fn get_db(&self) -> i64 {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinel_urls_parse_and_print_back() {
        assert!(SentinelUrl::parse("redis://127.0.0.1:6379/").is_none(), "a plain URL is not a Sentinel URL");
        let url = "redis+sentinel://10.0.0.2:26379,10.0.0.3:26379/hc?map=10.0.0.5:6379=127.0.0.1:4000";
        let s = SentinelUrl::parse(url).unwrap().unwrap();
        assert_eq!(s.sentinels, ["10.0.0.2:26379", "10.0.0.3:26379"]);
        assert_eq!(s.master, "hc");
        assert_eq!(s.map.get("10.0.0.5:6379").map(String::as_str), Some("127.0.0.1:4000"));
        assert_eq!(s.to_url(), url);
    }

    #[test]
    fn malformed_sentinel_urls_say_what_is_wrong() {
        for (url, says) in [
            ("redis+sentinel://10.0.0.2:26379", "no /MASTER"),
            ("redis+sentinel:///hc", "HOST:PORT"),
            ("redis+sentinel://10.0.0.2/hc", "HOST:PORT"),
            ("redis+sentinel://10.0.0.2:1/", "no master name"),
            ("redis+sentinel://10.0.0.2:1/hc?map=a", "not FROM=TO"),
            ("redis+sentinel://10.0.0.2:1/hc?x=1", "unknown parameter"),
        ] {
            let err = SentinelUrl::parse(url).expect("the scheme matches").expect_err(url);
            assert!(err.contains(says), "{url}: {err}");
        }
    }
}
