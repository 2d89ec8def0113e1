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

use self::link::{ActiveToxic, LinkCtx, ToxicList};
use crate::toxiproxy::model::{ProxyJson, Toxic};

/// The Toxiproxy version this server imitates, reported by `GET /version`.
pub const TOXIPROXY_COMPAT_VERSION: &str = "2.12.0";
/// How long a disable waits for its open connections to finish closing, in milliseconds.
const CONNECTIONS_CLOSE_WAIT_MS: u64 = 2_000;

/// Server options. Defaults: loopback-only upstreams, a random seed.
#[derive(Clone, Debug, Default)]
pub struct ServerOptions {
    /// Permit upstreams that resolve to non-loopback addresses. Off by default: this harness
    /// must never aim a fault at a host it does not own.
    pub allow_remote_upstream: bool,
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
        self.toxics_tx.send_replace(Arc::new(self.toxics.clone()));
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
        if let Some(bad) = addrs.iter().find(|a| !a.ip().is_loopback()) {
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
        let listener = listen(&entry.config.listen).await?;
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
        let listener_task = {
            let cancel = cancel.clone();
            let connections = connections.clone();
            tokio::spawn(async move {
                let mut rng = StdRng::seed_from_u64(conn_seed);
                loop {
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        accepted = listener.accept() => {
                            let Ok((sock, _)) = accepted else { continue };
                            let ctx = LinkCtx {
                                upstream: upstream.clone(),
                                toxics: toxics_rx.clone(),
                                cancel: cancel.child_token(),
                                rng: StdRng::from_rng(&mut rng),
                                allow_remote_upstream,
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
        let (toxics_tx, _) = watch::channel(Arc::new(Vec::new()));
        let mut entry = ProxyEntry { config, toxics: Vec::new(), toxics_tx, running: None };
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
            if let Err(e) = self.check_upstream(&config.upstream).await {
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
            entry.toxics.clear();
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
        let before = entry.toxics.len();
        entry.toxics.retain(|t| t.toxic.name != name);
        if entry.toxics.len() == before {
            return Err(ApiError::toxic_not_found());
        }
        entry.publish_toxics();
        Ok(())
    }
}

/// Opens a proxy's listener. Errors read as Go's `net.Listen` writes them, with the address
/// resolved (`listen tcp 127.0.0.1:6379: bind: address already in use`), because Toxiproxy
/// clients and users match on that text.
async fn listen(addr: &str) -> ApiResult<TcpListener> {
    let failed = |text: String| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, text);
    let (host, _) = addr.rsplit_once(':').unwrap_or((addr, ""));
    let resolved = tokio::net::lookup_host(addr)
        .await
        .map_err(|e| failed(format!("listen tcp: lookup {host}: {}", go_errno_text(&e))))?
        .next()
        .ok_or_else(|| failed(format!("listen tcp: lookup {host}: no such host")))?;
    TcpListener::bind(resolved).await.map_err(|e| failed(format!("listen tcp {resolved}: bind: {}", go_errno_text(&e))))
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
