//! The embedded Toxiproxy-compatible server: proxy registry, listeners and the REST API.
//!
//! [`EmbeddedToxiproxy::start`] runs it inside the calling process (tests, the harness);
//! `hybrid-chaos toxiproxy --listen ADDR` runs it standalone. Everything it owns (API server,
//! listeners, open connections) hangs off one cancellation token, so dropping the handle
//! closes every port it opened.
//!
//! Safety rule of this project: faults are only ever aimed at this machine. Unless
//! `allow_remote_upstream` is set, a proxy's upstream must resolve to loopback; the check runs
//! at creation and again on every connection.
//! Likewise, unless `allow_remote_listen` is set, a proxy listens on loopback only (checked at
//! create, populate, update and again when it binds): a proxy on `0.0.0.0` would expose its
//! loopback upstream to every network the machine is on. An IPv4-mapped address
//! (`::ffff:127.0.0.1`) is the IPv4 address it maps, so it counts as loopback.

mod api;
mod link;
mod timer;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::net::TcpListener;
use tokio::sync::{watch, Mutex};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::link::{ActiveToxic, LinkCtx, RemovedTimeout, ToxicList, ToxicSet, REMOVED_TIMEOUTS_KEPT};
use crate::toxiproxy::model::ToxicKind;
use crate::toxiproxy::model::{ProxyJson, Toxic};

/// The Toxiproxy version this server imitates, reported by `GET /version`.
pub const TOXIPROXY_COMPAT_VERSION: &str = "2.12.0";
/// How long a disable waits for its open connections to finish closing, in milliseconds.
const CONNECTIONS_CLOSE_WAIT_MS: u64 = 2_000;
/// Pause before a listener tries `accept` again after it failed for want of a resource (the
/// descriptor limit): the pending connection stays in the backlog and the listener readable,
/// so retrying at once spins a core at 100 % and logs nothing useful.
const ACCEPT_RETRY_MS: u64 = 20;
/// While descriptors stay exhausted, at most one progress line per this many milliseconds.
const FD_BURST_LOG_INTERVAL_MS: u64 = 10_000;
/// A burst of such failures is over once none came for this many milliseconds.
const FD_BURST_QUIET_MS: u64 = 1_000;

/// Server options. Defaults: loopback-only upstreams and listen addresses, a random seed.
#[derive(Clone, Debug, Default)]
pub struct ServerOptions {
    /// Permit upstreams that resolve to non-loopback addresses. Off by default: this harness
    /// must never aim a fault at a host it does not own.
    pub allow_remote_upstream: bool,
    /// Permit proxies listening on non-loopback addresses (`0.0.0.0:P`, `[::]:P`). Off by
    /// default: such a proxy exposes its upstream to every network the machine is on.
    pub allow_remote_listen: bool,
    /// Seed for every random choice the proxy makes (toxicity rolls, jitter, slice sizes);
    /// `None` draws one.
    pub seed: Option<u64>,
}

/// An API error: Toxiproxy's message text and HTTP status.
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into() }
    }
    fn proxy_not_found() -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "proxy not found")
    }
    fn toxic_not_found() -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "toxic not found")
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// A proxy's configuration as given by a client (create, populate, update).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ProxyConfig {
    pub name: String,
    pub listen: String,
    pub upstream: String,
    pub enabled: bool,
}

struct Running {
    cancel: CancellationToken,
    listener: JoinHandle<()>,
    connections: TaskTracker,
}

struct ProxyEntry {
    config: ProxyConfig,
    toxics: Vec<ActiveToxic>,
    /// See [`ToxicSet::removed_timeouts`].
    removed_timeouts: std::collections::VecDeque<RemovedTimeout>,
    removals: u64,
    toxics_tx: watch::Sender<ToxicList>,
    running: Option<Running>,
}

impl ProxyEntry {
    fn to_json(&self) -> ProxyJson {
        ProxyJson {
            name: self.config.name.clone(),
            listen: self.config.listen.clone(),
            upstream: self.config.upstream.clone(),
            enabled: self.config.enabled,
            toxics: self.toxics.iter().map(|t| t.toxic.to_json()).collect(),
        }
    }

    fn publish_toxics(&self) {
        self.toxics_tx.send_replace(Arc::new(ToxicSet {
            toxics: self.toxics.clone(),
            removed_timeouts: self.removed_timeouts.clone(),
            removals: self.removals,
        }));
    }

    /// Removes the toxics `gone` picks, remembering the timeout toxics among them; returns
    /// how many went.
    fn remove_toxics(&mut self, gone: impl Fn(&Toxic) -> bool) -> usize {
        let before = self.toxics.len();
        let mut kept = Vec::with_capacity(before);
        for t in std::mem::take(&mut self.toxics) {
            if !gone(&t.toxic) {
                kept.push(t);
                continue;
            }
            if matches!(t.toxic.kind, ToxicKind::Timeout { .. }) {
                self.removals += 1;
                if self.removed_timeouts.len() == REMOVED_TIMEOUTS_KEPT {
                    self.removed_timeouts.pop_front();
                }
                self.removed_timeouts.push_back(RemovedTimeout {
                    seq: self.removals,
                    uid: t.uid,
                    stream: t.toxic.stream,
                    toxicity: t.toxic.toxicity,
                });
            }
        }
        self.toxics = kept;
        before - self.toxics.len()
    }
}

/// All proxies of one server. Every mutation goes through one async mutex: API calls are
/// rare and must be atomic with respect to each other (create vs. populate, disable vs. a
/// toxic update), which matters more than their throughput.
pub(crate) struct Registry {
    proxies: Mutex<BTreeMap<String, ProxyEntry>>,
    options: ServerOptions,
    root: CancellationToken,
    next_uid: AtomicU64,
    rng: std::sync::Mutex<StdRng>,
}

impl Registry {
    fn new(options: ServerOptions, root: CancellationToken) -> Registry {
        let seed = options.seed.unwrap_or_else(rand::random);
        Registry {
            proxies: Mutex::new(BTreeMap::new()),
            options,
            root,
            next_uid: AtomicU64::new(1),
            rng: std::sync::Mutex::new(StdRng::seed_from_u64(seed)),
        }
    }

    /// Refuses a listen address that resolves beyond loopback, unless allowed. One that does
    /// not resolve is left to [`listen`], which reports it in Go's words when it binds.
    async fn check_listen(&self, listen: &str) -> ApiResult<()> {
        if self.options.allow_remote_listen {
            return Ok(());
        }
        let Ok(addrs) = tokio::net::lookup_host(listen).await else { return Ok(()) };
        for a in addrs {
            check_listen_addr(listen, a)?;
        }
        Ok(())
    }

    async fn check_upstream(&self, upstream: &str) -> ApiResult<()> {
        if self.options.allow_remote_upstream {
            return Ok(());
        }
        let addrs: Vec<SocketAddr> = match tokio::net::lookup_host(upstream).await {
            Ok(a) => a.collect(),
            Err(e) => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("upstream {upstream:?} does not resolve ({e}); only loopback upstreams are allowed"),
                ))
            }
        };
        if let Some(bad) = addrs.iter().find(|a| !is_loopback(a.ip())) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!(
                    "upstream {upstream:?} resolves to {bad}, which is not loopback; \
                     start the server with --allow-remote-upstream to permit it"
                ),
            ));
        }
        Ok(())
    }

    async fn start(&self, entry: &mut ProxyEntry) -> ApiResult<()> {
        if entry.running.is_some() {
            return Ok(());
        }
        let listener = listen(&entry.config.listen, self.options.allow_remote_listen).await?;
        if let Ok(actual) = listener.local_addr() {
            // Port 0 picks a free port; show the real one from now on, as Toxiproxy does.
            entry.config.listen = actual.to_string();
        }
        let cancel = self.root.child_token();
        let connections = TaskTracker::new();
        let upstream = entry.config.upstream.clone();
        let toxics_rx = entry.toxics_tx.subscribe();
        let allow_remote_upstream = self.options.allow_remote_upstream;
        let conn_seed: u64 = rand::Rng::random(&mut *self.rng.lock().expect("rng lock"));
        let fd_burst = Arc::new(FdBurst::new(&entry.config.name));
        let listener_task = {
            let cancel = cancel.clone();
            let connections = connections.clone();
            tokio::spawn(async move {
                let mut rng = StdRng::seed_from_u64(conn_seed);
                loop {
                    let quiet_at = fd_burst.quiet_at();
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = tokio::time::sleep_until(quiet_at.unwrap_or_else(tokio::time::Instant::now)),
                            if quiet_at.is_some() => fd_burst.end_if_quiet(),
                        accepted = listener.accept() => {
                            let sock = match accepted {
                                Ok((sock, _)) => sock,
                                // That one connection's trouble: the next accept is unaffected.
                                Err(e) if matches!(
                                    e.kind(),
                                    std::io::ErrorKind::ConnectionAborted
                                        | std::io::ErrorKind::ConnectionReset
                                        | std::io::ErrorKind::Interrupted
                                ) => continue,
                                Err(e) => {
                                    fd_burst.failed("accept", &e);
                                    tokio::select! {
                                        _ = cancel.cancelled() => break,
                                        _ = tokio::time::sleep(Duration::from_millis(ACCEPT_RETRY_MS)) => continue,
                                    }
                                }
                            };
                            let ctx = LinkCtx {
                                upstream: upstream.clone(),
                                toxics: toxics_rx.clone(),
                                cancel: cancel.child_token(),
                                rng: StdRng::from_rng(&mut rng),
                                allow_remote_upstream,
                                fd_burst: Arc::clone(&fd_burst),
                            };
                            connections.spawn(link::serve(sock, ctx));
                        }
                    }
                }
                // The listener drops here: new connections are refused from now on.
            })
        };
        entry.running = Some(Running { cancel, listener: listener_task, connections });
        Ok(())
    }

    /// Closes the listener and every open connection, and waits (bounded) until they are
    /// closed, so a client that sees the API answer also sees the refusal.
    async fn stop(entry: &mut ProxyEntry) {
        if let Some(run) = entry.running.take() {
            run.cancel.cancel();
            let _ = run.listener.await;
            run.connections.close();
            let _ =
                tokio::time::timeout(Duration::from_millis(CONNECTIONS_CLOSE_WAIT_MS), run.connections.wait()).await;
        }
    }

    async fn add(&self, config: ProxyConfig) -> ApiResult<ProxyJson> {
        self.check_upstream(&config.upstream).await?;
        self.check_listen(&config.listen).await?;
        let mut proxies = self.proxies.lock().await;
        if proxies.contains_key(&config.name) {
            return Err(ApiError::new(StatusCode::CONFLICT, "proxy already exists"));
        }
        let json = self.insert_locked(&mut proxies, config).await?;
        Ok(json)
    }

    async fn insert_locked(
        &self,
        proxies: &mut BTreeMap<String, ProxyEntry>,
        config: ProxyConfig,
    ) -> ApiResult<ProxyJson> {
        let (toxics_tx, _) = watch::channel(Arc::new(ToxicSet::default()));
        let mut entry = ProxyEntry {
            config,
            toxics: Vec::new(),
            removed_timeouts: Default::default(),
            removals: 0,
            toxics_tx,
            running: None,
        };
        if entry.config.enabled {
            self.start(&mut entry).await?;
        }
        let json = entry.to_json();
        proxies.insert(entry.config.name.clone(), entry);
        Ok(json)
    }

    async fn populate(&self, configs: Vec<ProxyConfig>) -> (Vec<ProxyJson>, Option<ApiError>) {
        // Every entry is checked before any is applied, as Toxiproxy does.
        for config in &configs {
            let checked = match self.check_upstream(&config.upstream).await {
                Ok(()) => self.check_listen(&config.listen).await,
                Err(e) => Err(e),
            };
            if let Err(e) = checked {
                return (Vec::new(), Some(e));
            }
        }
        let mut out = Vec::new();
        for config in configs {
            let mut proxies = self.proxies.lock().await;
            if let Some(existing) = proxies.get_mut(&config.name) {
                if existing.config.upstream == config.upstream
                    && same_listen(&existing.config.listen, &config.listen).await
                {
                    // Same proxy: leave it (and its open connections) alone, as Toxiproxy does.
                    if let Err(e) = self.set_enabled(existing, config.enabled).await {
                        return (out, Some(e));
                    }
                    out.push(existing.to_json());
                    continue;
                }
                let mut old = proxies.remove(&config.name).expect("present");
                Self::stop(&mut old).await;
            }
            match self.insert_locked(&mut proxies, config).await {
                Ok(json) => out.push(json),
                Err(e) => return (out, Some(e)),
            }
        }
        (out, None)
    }

    async fn set_enabled(&self, entry: &mut ProxyEntry, enabled: bool) -> ApiResult<()> {
        entry.config.enabled = enabled;
        if enabled {
            self.start(entry).await
        } else {
            Self::stop(entry).await;
            Ok(())
        }
    }

    async fn list(&self) -> BTreeMap<String, ProxyJson> {
        self.proxies.lock().await.iter().map(|(k, v)| (k.clone(), v.to_json())).collect()
    }

    async fn get(&self, name: &str) -> ApiResult<ProxyJson> {
        self.proxies.lock().await.get(name).map(ProxyEntry::to_json).ok_or_else(ApiError::proxy_not_found)
    }

    async fn update(
        &self,
        name: &str,
        listen: Option<String>,
        upstream: Option<String>,
        enabled: Option<bool>,
    ) -> ApiResult<ProxyJson> {
        if let Some(u) = &upstream {
            self.check_upstream(u).await?;
        }
        if let Some(l) = &listen {
            self.check_listen(l).await?;
        }
        let mut proxies = self.proxies.lock().await;
        let entry = proxies.get_mut(name).ok_or_else(ApiError::proxy_not_found)?;
        let moved = listen.as_ref().is_some_and(|l| *l != entry.config.listen)
            || upstream.as_ref().is_some_and(|u| *u != entry.config.upstream);
        if moved {
            // A new address or upstream means new connections: restart, as Toxiproxy does.
            Self::stop(entry).await;
            if let Some(l) = listen {
                entry.config.listen = l;
            }
            if let Some(u) = upstream {
                entry.config.upstream = u;
            }
        }
        let enabled = enabled.unwrap_or(entry.config.enabled);
        self.set_enabled(entry, enabled).await?;
        Ok(entry.to_json())
    }

    async fn remove(&self, name: &str) -> ApiResult<()> {
        let mut entry = self.proxies.lock().await.remove(name).ok_or_else(ApiError::proxy_not_found)?;
        Self::stop(&mut entry).await;
        Ok(())
    }

    async fn reset(&self) -> ApiResult<()> {
        let mut proxies = self.proxies.lock().await;
        for entry in proxies.values_mut() {
            self.set_enabled(entry, true).await?;
            entry.remove_toxics(|_| true);
            entry.publish_toxics();
        }
        Ok(())
    }

    async fn toxics(&self, proxy: &str) -> ApiResult<Vec<Toxic>> {
        let proxies = self.proxies.lock().await;
        let entry = proxies.get(proxy).ok_or_else(ApiError::proxy_not_found)?;
        Ok(entry.toxics.iter().map(|t| t.toxic.clone()).collect())
    }

    async fn add_toxic(&self, proxy: &str, toxic: Toxic) -> ApiResult<Toxic> {
        let mut proxies = self.proxies.lock().await;
        let entry = proxies.get_mut(proxy).ok_or_else(ApiError::proxy_not_found)?;
        if entry.toxics.iter().any(|t| t.toxic.name == toxic.name) {
            return Err(ApiError::new(StatusCode::CONFLICT, "toxic already exists"));
        }
        let uid = self.next_uid.fetch_add(1, Ordering::Relaxed);
        entry.toxics.push(ActiveToxic { uid, toxic: toxic.clone() });
        entry.publish_toxics();
        Ok(toxic)
    }

    async fn update_toxic(
        &self,
        proxy: &str,
        name: &str,
        update: impl FnOnce(&Toxic) -> ApiResult<Toxic>,
    ) -> ApiResult<Toxic> {
        let mut proxies = self.proxies.lock().await;
        let entry = proxies.get_mut(proxy).ok_or_else(ApiError::proxy_not_found)?;
        let slot = entry.toxics.iter_mut().find(|t| t.toxic.name == name).ok_or_else(ApiError::toxic_not_found)?;
        let next = update(&slot.toxic)?;
        if next.toxicity != slot.toxic.toxicity {
            // A new toxicity is rolled again on every connection.
            slot.uid = self.next_uid.fetch_add(1, Ordering::Relaxed);
        }
        slot.toxic = next.clone();
        entry.publish_toxics();
        Ok(next)
    }

    async fn remove_toxic(&self, proxy: &str, name: &str) -> ApiResult<()> {
        let mut proxies = self.proxies.lock().await;
        let entry = proxies.get_mut(proxy).ok_or_else(ApiError::proxy_not_found)?;
        if entry.remove_toxics(|t| t.name == name) == 0 {
            return Err(ApiError::toxic_not_found());
        }
        entry.publish_toxics();
        Ok(())
    }
}

/// Failures for want of a resource (the descriptor limit, above all) of one proxy, logged once
/// per burst: a warning when the first one happens, a progress line at most every
/// [`FD_BURST_LOG_INTERVAL_MS`] while it lasts, and one with the count once
/// [`FD_BURST_QUIET_MS`] passed without a failure (the listener's timer logs it, so it comes
/// even if no client arrives). Near the limit, successes and failures alternate as
/// connections close: a burst ending at the first success flapped, a line or two per
/// connection. Before any of this, at `ulimit -n 256` 479 of 600 clients were accepted and
/// closed with nothing logged, and a failing accept was retried at once, spinning.
pub(crate) struct FdBurst {
    proxy: String,
    burst: std::sync::Mutex<Option<Burst>>,
}

struct Burst {
    started: std::time::Instant,
    last_failure: std::time::Instant,
    failures: u64,
    logged: std::time::Instant,
}

impl FdBurst {
    fn new(proxy: &str) -> FdBurst {
        FdBurst { proxy: proxy.to_string(), burst: std::sync::Mutex::new(None) }
    }

    /// Whether an upstream connect failed for want of a resource (the only connect errors
    /// counted here: a refused upstream is the upstream's business).
    pub(crate) fn counts(e: &std::io::Error) -> bool {
        matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM))
    }

    pub(crate) fn failed(&self, what: &str, e: &std::io::Error) {
        let now = std::time::Instant::now();
        let mut burst = self.burst.lock().expect("fd burst lock");
        match burst.as_mut() {
            None => {
                let hint = if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) {
                    "the process is at its file descriptor limit (RLIMIT_NOFILE, `ulimit -n`); "
                } else {
                    ""
                };
                tracing::warn!(
                    proxy = %self.proxy,
                    "{what} failed: {e}; {hint}clients are closed unserved until it recovers (logged once per burst)"
                );
                *burst = Some(Burst { started: now, last_failure: now, failures: 1, logged: now });
            }
            Some(b) => {
                b.failures += 1;
                b.last_failure = now;
                if now.duration_since(b.logged) >= Duration::from_millis(FD_BURST_LOG_INTERVAL_MS) {
                    b.logged = now;
                    tracing::warn!(
                        proxy = %self.proxy,
                        "still failing: {} failed accepts or upstream connects in {} ms ({what}: {e})",
                        b.failures,
                        now.duration_since(b.started).as_millis()
                    );
                }
            }
        }
    }

    /// When the current burst, if any, is over unless another failure comes first.
    fn quiet_at(&self) -> Option<tokio::time::Instant> {
        let burst = self.burst.lock().expect("fd burst lock");
        burst.as_ref().map(|b| (b.last_failure + Duration::from_millis(FD_BURST_QUIET_MS)).into())
    }

    /// Ends the burst, with its count, if no failure came for [`FD_BURST_QUIET_MS`].
    fn end_if_quiet(&self) {
        let mut burst = self.burst.lock().expect("fd burst lock");
        let quiet =
            burst.as_ref().is_some_and(|b| b.last_failure.elapsed() >= Duration::from_millis(FD_BURST_QUIET_MS));
        if let Some(b) = burst.take_if(|_| quiet) {
            tracing::warn!(
                proxy = %self.proxy,
                "burst over: {} accepts or upstream connects failed over {} ms, none in the last {FD_BURST_QUIET_MS} ms",
                b.failures,
                b.last_failure.duration_since(b.started).as_millis()
            );
        }
    }
}

/// Opens a proxy's listener. Errors read as Go's `net.Listen` writes them, with the address
/// resolved (`listen tcp 127.0.0.1:6379: bind: address already in use`), because Toxiproxy
/// clients and users match on that text.
async fn listen(addr: &str, allow_remote_listen: bool) -> ApiResult<TcpListener> {
    let failed = |text: String| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, text);
    let (host, _) = addr.rsplit_once(':').unwrap_or((addr, ""));
    let resolved = tokio::net::lookup_host(addr)
        .await
        .map_err(|e| failed(format!("listen tcp: lookup {host}: {}", go_errno_text(&e))))?
        .next()
        .ok_or_else(|| failed(format!("listen tcp: lookup {host}: no such host")))?;
    if !allow_remote_listen {
        // Again at bind time: a name can resolve elsewhere than when it was checked.
        check_listen_addr(addr, resolved)?;
    }
    TcpListener::bind(resolved).await.map_err(|e| failed(format!("listen tcp {resolved}: bind: {}", go_errno_text(&e))))
}

/// Whether `ip` is a loopback address, an IPv4-mapped one (`::ffff:127.0.0.1`) included:
/// std's `Ipv6Addr::is_loopback` is true for `::1` only.
pub fn is_loopback(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => v4.is_loopback(),
        std::net::IpAddr::V6(v6) => v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
    }
}

fn check_listen_addr(listen: &str, resolved: SocketAddr) -> ApiResult<()> {
    if is_loopback(resolved.ip()) {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::BAD_REQUEST,
        format!(
            "listen {listen:?} ({resolved}) is not loopback: it would expose the upstream to every network \
             this machine is on; start the server with --allow-remote-listen to permit it"
        ),
    ))
}

/// An OS error as Go's `syscall.Errno` prints it: the C library's text, lower-cased, without
/// Rust's " (os error N)".
fn go_errno_text(e: &std::io::Error) -> String {
    let text = e.to_string();
    let text = text.split(" (os error").next().unwrap_or(&text);
    let mut chars = text.chars();
    chars.next().map(|c| c.to_lowercase().chain(chars).collect()).unwrap_or_default()
}

/// Whether two listen addresses name the same socket: equal text, or `localhost:P` against
/// the `127.0.0.1:P` a started proxy reports.
async fn same_listen(current: &str, requested: &str) -> bool {
    if current == requested {
        return true;
    }
    let Ok(current) = current.parse::<SocketAddr>() else { return false };
    match tokio::net::lookup_host(requested).await {
        Ok(mut addrs) => addrs.any(|a| a == current),
        Err(_) => false,
    }
}

/// A running embedded server. Dropping it closes the API port, every proxy listener and
/// every proxied connection.
pub struct EmbeddedToxiproxy {
    addr: SocketAddr,
    root: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl EmbeddedToxiproxy {
    /// Starts the REST API on `listen` (port 0 picks a free one). Must be called inside a
    /// tokio runtime; the server runs on it.
    pub async fn start(listen: SocketAddr, options: ServerOptions) -> std::io::Result<EmbeddedToxiproxy> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let root = CancellationToken::new();
        let registry = Arc::new(Registry::new(options, root.clone()));
        let app = api::router(registry);
        let shutdown = root.clone();
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await;
            if let Err(e) = served {
                tracing::error!(error = %e, "toxiproxy API server failed");
            }
        });
        Ok(EmbeddedToxiproxy { addr, root, task: Some(task) })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, what `TOXIPROXY_URL` would hold for a real one.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops everything and waits for the API task to end.
    pub async fn shutdown(mut self) {
        self.root.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// Runs until `stop` resolves (the standalone `hybrid-chaos toxiproxy` command).
    pub async fn run_until(self, stop: impl std::future::Future<Output = ()>) {
        stop.await;
        self.shutdown().await;
    }
}

impl Drop for EmbeddedToxiproxy {
    fn drop(&mut self) {
        self.root.cancel();
    }
}
