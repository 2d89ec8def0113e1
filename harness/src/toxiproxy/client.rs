//! The harness's only way to inject network faults: a Toxiproxy client.
//!
//! Built on `toxiproxy_rust` (blocking, so every call runs in `spawn_blocking`) for what it
//! does: version, populate, reset, enable/disable, clearing toxics. Its enable/disable ignore
//! HTTP status codes, so each is verified by reading the proxy back. What it lacks goes
//! through the same REST API with the same blocking HTTP stack: creating a toxic (its
//! `with_*` helpers panic on a transport error, ignore a 4xx, cannot name a toxic and have no
//! `reset_peer`; a fault silently not injected would make a chaos run lie), updating a toxic,
//! deleting one toxic, reading one proxy with typed errors.
//!
//! Nothing here knows whether the server is the embedded one or a real Toxiproxy:
//! [`FaultProxy::from_env`] picks by `TOXIPROXY_URL`.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::model::{ErrorJson, ProxyJson, Toxic, ToxicJson};
use super::server::{EmbeddedToxiproxy, ServerOptions};

/// Per-request HTTP timeout, in milliseconds. A stuck API call must not hang a scenario.
const HTTP_TIMEOUT_MS: u64 = 10_000;
/// User-Agent sent on REST calls (a browser one would be refused with 403).
const USER_AGENT: &str = concat!("hybrid-chaos/", env!("CARGO_PKG_VERSION"));

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid Toxiproxy URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("Toxiproxy at {url} is unreachable: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("Toxiproxy answered {status} to {method} {path}: {message}")]
    Api { status: u16, method: &'static str, path: String, message: String },
    #[error("Toxiproxy client error: {0}")]
    Client(String),
    #[error("could not start the embedded Toxiproxy server: {0}")]
    Embedded(std::io::Error),
}

impl Error {
    /// The HTTP status, when the server answered with an error.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// A Toxiproxy REST client. Cheap to clone.
#[derive(Clone)]
pub struct ToxiproxyClient {
    url: String,
    tp: toxiproxy_rust::client::Client,
    http: reqwest::blocking::Client,
}

impl std::fmt::Debug for ToxiproxyClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToxiproxyClient").field("url", &self.url).finish()
    }
}

impl ToxiproxyClient {
    /// `url` is `http://host:port` (what `TOXIPROXY_URL` holds).
    pub fn new(url: &str) -> Result<ToxiproxyClient> {
        let bad = |reason: &str| Error::BadUrl { url: url.to_string(), reason: reason.to_string() };
        let hostport =
            url.trim_end_matches('/').strip_prefix("http://").ok_or_else(|| bad("must start with http://"))?;
        if hostport.is_empty() || hostport.contains('/') {
            return Err(bad("expected http://host:port"));
        }
        // toxiproxy_rust unwraps the address resolution; resolve first so a bad URL is an
        // error here instead of a panic there.
        let addr: SocketAddr = hostport
            .to_socket_addrs()
            .map_err(|e| bad(&e.to_string()))?
            .next()
            .ok_or_else(|| bad("resolves to no address"))?;
        // reqwest's blocking client owns a runtime of its own; building or dropping it inside
        // an async context panics, so it is built on a plain thread.
        let http = std::thread::spawn(|| {
            reqwest::blocking::Client::builder()
                .timeout(Duration::from_millis(HTTP_TIMEOUT_MS))
                .user_agent(USER_AGENT)
                .build()
        })
        .join()
        .map_err(|_| Error::Client("building the HTTP client panicked".into()))?
        .map_err(|e| Error::Client(e.to_string()))?;
        let tp = std::thread::spawn(move || toxiproxy_rust::client::Client::new(addr))
            .join()
            .map_err(|_| Error::Client("building the toxiproxy_rust client panicked".into()))?;
        Ok(ToxiproxyClient { url: format!("http://{hostport}"), tp, http })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Runs blocking client code off the async runtime; a panic inside the client becomes an
    /// error, not a crash of the scenario.
    async fn blocking<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(ToxiproxyClient) -> Result<T> + Send + 'static,
    {
        let me = self.clone();
        match tokio::task::spawn_blocking(move || f(me)).await {
            Ok(r) => r,
            Err(e) if e.is_panic() => {
                Err(Error::Client(format!("client panicked: {:?}", panic_message(e.into_panic()))))
            }
            Err(e) => Err(Error::Client(e.to_string())),
        }
    }

    fn request(&self, method: &'static str, path: &str, body: Option<&Value>) -> Result<(u16, String)> {
        let url = format!("{}{}", self.url, path);
        let m = reqwest::Method::from_bytes(method.as_bytes()).expect("static method names are valid");
        let mut req = self.http.request(m, &url);
        if let Some(b) = body {
            req = req.header("Content-Type", "application/json").body(b.to_string());
        }
        let resp = req.send().map_err(|e| Error::Unreachable { url: self.url.clone(), reason: e.to_string() })?;
        let status = resp.status().as_u16();
        let text = resp.text().map_err(|e| Error::Unreachable { url: self.url.clone(), reason: e.to_string() })?;
        if status >= 400 {
            let message = serde_json::from_str::<ErrorJson>(&text).map(|e| e.error).unwrap_or(text);
            return Err(Error::Api { status, method, path: path.to_string(), message });
        }
        Ok((status, text))
    }

    fn request_json<T: DeserializeOwned>(&self, method: &'static str, path: &str, body: Option<&Value>) -> Result<T> {
        let (_, text) = self.request(method, path, body)?;
        serde_json::from_str(&text)
            .map_err(|e| Error::Client(format!("{method} {path}: unexpected answer {text:?}: {e}")))
    }

    /// Server version string (the raw body, as `toxiproxy_rust` returns it).
    pub async fn version(&self) -> Result<String> {
        self.blocking(|c| c.tp.version().map_err(|e| c.unreachable(e))).await
    }

    fn unreachable(&self, reason: String) -> Error {
        Error::Unreachable { url: self.url.clone(), reason }
    }

    /// Creates or replaces proxies (`POST /populate`), returning them as the server shows them
    /// (with real listen addresses where port 0 was asked for).
    pub async fn populate(&self, proxies: Vec<(String, String, String)>) -> Result<Vec<ProxyJson>> {
        let names: Vec<String> = proxies.iter().map(|p| p.0.clone()).collect();
        self.blocking(move |c| {
            let packs = proxies
                .into_iter()
                .map(|(name, listen, upstream)| toxiproxy_rust::proxy::ProxyPack::new(name, listen, upstream))
                .collect();
            c.tp.populate(packs).map_err(|e| c.unreachable(e))?;
            Ok(())
        })
        .await?;
        // toxiproxy_rust drops populate's error body; read each proxy back so a refused one
        // is an error with the server's reason rather than a missing entry.
        let mut out = Vec::new();
        for name in names {
            out.push(self.proxy(&name).await?);
        }
        Ok(out)
    }

    /// One proxy, with its toxics.
    pub async fn proxy(&self, name: &str) -> Result<ProxyJson> {
        let path = format!("/proxies/{name}");
        self.blocking(move |c| c.request_json("GET", &path, None)).await
    }

    /// Creates a proxy (`POST /proxies`); 409 if the name is taken.
    pub async fn create_proxy(&self, name: &str, listen: &str, upstream: &str) -> Result<ProxyJson> {
        let body = serde_json::json!({ "name": name, "listen": listen, "upstream": upstream, "enabled": true });
        self.blocking(move |c| c.request_json("POST", "/proxies", Some(&body))).await
    }

    pub async fn delete_proxy(&self, name: &str) -> Result<()> {
        let path = format!("/proxies/{name}");
        self.blocking(move |c| c.request("DELETE", &path, None).map(|_| ())).await
    }

    /// Enables or disables a proxy. Disabled: its listener is closed (connections refused) and
    /// its open connections are cut.
    pub async fn set_enabled(&self, name: &str, enabled: bool) -> Result<()> {
        let owned = name.to_string();
        self.blocking(move |c| {
            let proxy = c.tp.find_proxy(&owned).map_err(|e| c.unreachable(e))?;
            let r = if enabled { proxy.enable() } else { proxy.disable() };
            r.map_err(|e| c.unreachable(e))
        })
        .await?;
        let now = self.proxy(name).await?;
        if now.enabled != enabled {
            return Err(Error::Client(format!("proxy {name} did not become enabled={enabled}")));
        }
        Ok(())
    }

    /// Re-enables every proxy and removes every toxic.
    pub async fn reset(&self) -> Result<()> {
        self.blocking(|c| c.tp.reset().map_err(|e| c.unreachable(e))).await
    }

    /// Adds a toxic (`POST /proxies/{proxy}/toxics`).
    pub async fn add_toxic(&self, proxy: &str, toxic: &Toxic) -> Result<ToxicJson> {
        let path = format!("/proxies/{proxy}/toxics");
        let body = serde_json::to_value(toxic.to_json()).expect("toxic JSON serialises");
        self.blocking(move |c| c.request_json("POST", &path, Some(&body))).await
    }

    /// Updates a toxic in place: `attributes` merge, `toxicity` replaces.
    pub async fn update_toxic(&self, proxy: &str, name: &str, update: Value) -> Result<ToxicJson> {
        let path = format!("/proxies/{proxy}/toxics/{name}");
        self.blocking(move |c| c.request_json("PATCH", &path, Some(&update))).await
    }

    pub async fn remove_toxic(&self, proxy: &str, name: &str) -> Result<()> {
        let path = format!("/proxies/{proxy}/toxics/{name}");
        self.blocking(move |c| c.request("DELETE", &path, None).map(|_| ())).await
    }

    /// Removes every toxic of one proxy.
    pub async fn clear_toxics(&self, proxy: &str) -> Result<()> {
        let owned = proxy.to_string();
        self.blocking(move |c| {
            let p = c.tp.find_proxy(&owned).map_err(|e| c.unreachable(e))?;
            p.delete_all_toxics().map_err(|e| c.unreachable(e))
        })
        .await?;
        let left = self.proxy(proxy).await?.toxics.len();
        if left != 0 {
            return Err(Error::Client(format!("{left} toxics remain on {proxy} after clearing")));
        }
        Ok(())
    }
}

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".into())
}

/// Where faults go: the embedded server (started here) or a real Toxiproxy at a URL.
pub enum FaultProxy {
    Embedded { server: EmbeddedToxiproxy, client: ToxiproxyClient },
    External { client: ToxiproxyClient },
}

impl FaultProxy {
    /// `TOXIPROXY_URL` set: use that server (and check it answers). Otherwise start the
    /// embedded one on a free loopback port.
    pub async fn from_env(options: ServerOptions) -> Result<FaultProxy> {
        match std::env::var("TOXIPROXY_URL") {
            Ok(url) if !url.is_empty() => FaultProxy::external(&url).await,
            _ => FaultProxy::embedded(options).await,
        }
    }

    pub async fn external(url: &str) -> Result<FaultProxy> {
        let client = ToxiproxyClient::new(url)?;
        client.version().await?;
        Ok(FaultProxy::External { client })
    }

    pub async fn embedded(options: ServerOptions) -> Result<FaultProxy> {
        let server = EmbeddedToxiproxy::start(([127, 0, 0, 1], 0).into(), options).await.map_err(Error::Embedded)?;
        let client = ToxiproxyClient::new(&server.url())?;
        Ok(FaultProxy::Embedded { server, client })
    }

    pub fn client(&self) -> &ToxiproxyClient {
        match self {
            FaultProxy::Embedded { client, .. } | FaultProxy::External { client } => client,
        }
    }

    /// `embedded` or `external`, as reports name it.
    pub fn kind(&self) -> &'static str {
        match self {
            FaultProxy::Embedded { .. } => "embedded",
            FaultProxy::External { .. } => "external",
        }
    }
}
