//! Shared helpers for the harness's integration tests: a real `redis-server`, a fault proxy in
//! front of it (embedded, or a real Toxiproxy when `TOXIPROXY_URL` is set), bounded clients
//! and a minimal raw HTTP client for exercising the REST API byte for byte.
#![allow(dead_code)] // each test binary uses a different subset

use std::time::Duration;

use harness::infra::{ProcessRedis, RedisNode, RedisSpec};
use harness::toxiproxy::model::ProxyJson;
use harness::toxiproxy::server::ServerOptions;
use harness::toxiproxy::{FaultProxy, ToxiproxyClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A Redis with a fault proxy in front of it.
pub struct Rig {
    pub redis: ProcessRedis,
    pub faults: FaultProxy,
    pub proxy: ProxyJson,
}

impl Rig {
    pub async fn new() -> Rig {
        Rig::with_spec(RedisSpec::default()).await
    }

    pub async fn with_spec(spec: RedisSpec) -> Rig {
        let redis = ProcessRedis::start(spec).await.expect("start redis-server");
        let faults =
            FaultProxy::from_env(ServerOptions { seed: Some(7), ..Default::default() }).await.expect("fault proxy");
        // Unique beyond the port: against a shared proxy (TOXIPROXY_URL) proxies of earlier
        // tests stay, and a port can come round again.
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let name = format!("redis-{}-{}-{nanos:x}", redis.port(), std::process::id());
        let proxy = faults.client().create_proxy(&name, "127.0.0.1:0", &redis.addr()).await.expect("create proxy");
        Rig { redis, faults, proxy }
    }

    /// Another proxy in front of the same Redis (e.g. one for the subscriber connection and
    /// one for commands, so faults can hit either alone). Returns its URL and name.
    pub async fn extra_proxy(&self, suffix: &str) -> (String, String) {
        let name = format!("{}-{suffix}", self.proxy.name);
        let p = self.tp().create_proxy(&name, "127.0.0.1:0", &self.redis.addr()).await.expect("create proxy");
        (format!("redis://{}/", p.listen), name)
    }

    pub fn tp(&self) -> &ToxiproxyClient {
        self.faults.client()
    }

    pub fn name(&self) -> &str {
        &self.proxy.name
    }

    pub fn proxied_addr(&self) -> &str {
        &self.proxy.listen
    }

    /// Direct (unproxied) URL of the server.
    pub fn redis_url(&self) -> String {
        self.redis.url()
    }

    pub fn proxied_url(&self) -> String {
        format!("redis://{}/", self.proxy.listen)
    }
}

/// A multiplexed connection with a bounded connect time and the given response limit
/// (`None`: wait forever, for tests that prove something hangs).
pub async fn conn(url: &str, response_timeout_ms: Option<u64>) -> redis::aio::MultiplexedConnection {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(response_timeout_ms.map(Duration::from_millis));
    redis::Client::open(url).unwrap().get_multiplexed_async_connection_with_config(&config).await.expect("connect")
}

pub async fn ping(c: &mut redis::aio::MultiplexedConnection) -> redis::RedisResult<String> {
    redis::cmd("PING").query_async(c).await
}

/// Reads from `s` until EOF or an error, at most `limit` long. Returns the bytes and how the
/// stream ended (`None` for a clean EOF).
pub async fn read_to_end(s: &mut TcpStream, limit: Duration) -> (Vec<u8>, Option<std::io::ErrorKind>) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let read_all = async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) => return None,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) => return Some(e.kind()),
            }
        }
    };
    let end = tokio::time::timeout(limit, read_all).await.expect("stream did not end within the limit");
    (out, end)
}

/// One HTTP/1.1 request over a fresh connection; returns (status, body).
pub async fn http(base: &str, method: &str, path: &str, body: Option<&str>, user_agent: &str) -> (u16, String) {
    let (status, _, body) = http_with_head(base, method, path, body, user_agent).await;
    (status, body)
}

/// [`http`], with the response's head (status line and headers) as well.
pub async fn http_with_head(
    base: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
    user_agent: &str,
) -> (u16, String, String) {
    let hostport = base.trim_start_matches("http://");
    let mut s = TcpStream::connect(hostport).await.expect("connect to API");
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {hostport}\r\nUser-Agent: {user_agent}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let (raw, _) = read_to_end(&mut s, Duration::from_secs(10)).await;
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, rest) = text.split_once("\r\n\r\n").expect("HTTP response has a head");
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("status code");
    (status, head.to_string(), rest.to_string())
}

/// Waits (bounded) until `channel` has exactly `n` subscribers at the server.
pub async fn await_numsub(url: &str, channel: &str, n: u64) -> bool {
    harness::poll_until(Duration::from_secs(10), Duration::from_millis(10), || async {
        let got = harness::infra::admin::pubsub_numsub(url, &[channel]).await.ok()?;
        (got[0].1 == n).then_some(())
    })
    .await
    .is_some()
}

/// A loopback echo server on the current tokio runtime: every connection gets back what it
/// sends, until it closes. Returns its address.
pub async fn echo_server() -> String {
    let ln = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = ln.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = ln.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = conn.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// Docker, or `None` where it does not answer: the test says it is skipped, on stderr, and
/// passes, unless `HC_DOCKER=1` (set by `./ci/test` when Docker answers) said it must run,
/// where Docker failing is a failure.
pub async fn docker_or_skip(test: &str) -> Option<harness::infra::container::Docker> {
    match harness::infra::container::docker().await {
        Ok(d) => Some(d),
        Err(e) if std::env::var("HC_DOCKER").as_deref() == Ok("1") => panic!("HC_DOCKER=1 but {e}"),
        Err(e) => {
            eprintln!("SKIP {test}: {e}");
            None
        }
    }
}
