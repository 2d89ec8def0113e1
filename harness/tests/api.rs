//! The embedded server's REST API, byte for byte over raw HTTP: Toxiproxy's status codes and
//! JSON shapes for success and for every kind of bad request; and a stock Toxiproxy client
//! (`toxiproxy_rust`, used as any user would) driving it.

mod support;

use harness::toxiproxy::server::{EmbeddedToxiproxy, ServerOptions};
use serde_json::{json, Value};
use support::http;

const UA: &str = "hybrid-chaos-tests";

async fn server() -> EmbeddedToxiproxy {
    EmbeddedToxiproxy::start(([127, 0, 0, 1], 0).into(), ServerOptions::default()).await.unwrap()
}

async fn call(s: &EmbeddedToxiproxy, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let text = body.map(|b| b.to_string());
    let (status, raw) = http(&s.url(), method, path, text.as_deref(), UA).await;
    (status, if raw.is_empty() { Value::Null } else { serde_json::from_str(&raw).unwrap_or(Value::String(raw)) })
}

fn is_error(v: &Value, status: u16, text: &str) -> bool {
    v["status"] == status && v["error"].as_str().is_some_and(|e| e.contains(text))
}

#[tokio::test]
async fn proxy_lifecycle_codes_and_shapes() {
    let s = server().await;
    let (st, v) = call(&s, "GET", "/version", None).await;
    assert_eq!(st, 200);
    assert!(v["version"].as_str().is_some_and(|x| x.starts_with("2.")), "{v}");
    assert_eq!(v.as_object().map(|o| o.len()), Some(1), "exactly {{\"version\": ...}}, as Toxiproxy 2.12: {v}");

    let (st, created) =
        call(&s, "POST", "/proxies", Some(json!({"name": "p", "listen": "127.0.0.1:0", "upstream": "127.0.0.1:1"})))
            .await;
    assert_eq!(st, 201, "{created}");
    assert_eq!(created["enabled"], true);
    assert_eq!(created["toxics"], json!([]));
    let listen = created["listen"].as_str().unwrap();
    assert!(!listen.ends_with(":0"), "port 0 must be replaced by the real port: {listen}");

    let (st, v) = call(&s, "POST", "/proxies", Some(json!({"name": "p", "upstream": "127.0.0.1:1"}))).await;
    assert_eq!((st, is_error(&v, 409, "proxy already exists")), (409, true), "{v}");

    let (st, all) = call(&s, "GET", "/proxies", None).await;
    assert_eq!(st, 200);
    assert_eq!(all["p"]["listen"], listen);

    let (st, v) = call(&s, "PATCH", "/proxies/p", Some(json!({"enabled": false}))).await;
    assert_eq!((st, v["enabled"].clone()), (200, json!(false)));
    let (st, v) = call(&s, "POST", "/proxies/p", Some(json!({"enabled": true}))).await;
    assert_eq!((st, v["enabled"].clone(), v["listen"].clone()), (200, json!(true), json!(listen)));

    let (st, _) = call(&s, "DELETE", "/proxies/p", None).await;
    assert_eq!(st, 204);
    let (st, v) = call(&s, "GET", "/proxies/p", None).await;
    assert_eq!((st, is_error(&v, 404, "proxy not found")), (404, true), "{v}");
    let (st, v) = call(&s, "DELETE", "/proxies/p", None).await;
    assert_eq!((st, is_error(&v, 404, "proxy not found")), (404, true), "{v}");
}

#[tokio::test]
async fn toxic_lifecycle_codes_and_shapes() {
    let s = server().await;
    call(&s, "POST", "/proxies", Some(json!({"name": "p", "upstream": "127.0.0.1:1"}))).await;
    let (st, t) =
        call(&s, "POST", "/proxies/p/toxics", Some(json!({"type": "latency", "attributes": {"latency": 10}}))).await;
    assert_eq!(st, 200, "{t}");
    assert_eq!(
        t,
        json!({"name": "latency_downstream", "type": "latency", "stream": "downstream", "toxicity": 1, "attributes": {"latency": 10, "jitter": 0}})
    );

    let (st, v) = call(&s, "POST", "/proxies/p/toxics", Some(json!({"type": "latency"}))).await;
    assert_eq!((st, is_error(&v, 409, "toxic already exists")), (409, true), "{v}");
    let (st, v) = call(&s, "POST", "/proxies/p/toxics", Some(json!({"type": "rot13"}))).await;
    assert_eq!((st, is_error(&v, 400, "invalid toxic type")), (400, true), "{v}");
    let (st, v) = call(&s, "POST", "/proxies/p/toxics", Some(json!({"type": "timeout", "stream": "sideways"}))).await;
    assert_eq!((st, is_error(&v, 400, "stream was invalid")), (400, true), "{v}");
    let (st, v) = call(&s, "POST", "/proxies/nope/toxics", Some(json!({"type": "timeout"}))).await;
    assert_eq!((st, is_error(&v, 404, "proxy not found")), (404, true), "{v}");

    let (st, v) = call(&s, "POST", "/proxies/p/toxics", Some(json!({"name": "rp", "type": "reset_peer", "stream": "upstream", "toxicity": 0.5, "attributes": {"timeout": 5}}))).await;
    assert_eq!((st, v["toxicity"].clone(), v["attributes"]["timeout"].clone()), (200, json!(0.5), json!(5)), "{v}");
    let (st, v) = call(&s, "PATCH", "/proxies/p/toxics/rp", Some(json!({"attributes": {"timeout": 9}}))).await;
    assert_eq!((st, v["attributes"]["timeout"].clone(), v["stream"].clone()), (200, json!(9), json!("upstream")));
    let (st, v) = call(&s, "GET", "/proxies/p/toxics/rp", None).await;
    assert_eq!((st, v["attributes"]["timeout"].clone()), (200, json!(9)));
    let (st, v) = call(&s, "GET", "/proxies/p/toxics", None).await;
    assert_eq!((st, v.as_array().map(Vec::len)), (200, Some(2)));

    let (st, _) = call(&s, "DELETE", "/proxies/p/toxics/rp", None).await;
    assert_eq!(st, 204);
    let (st, v) = call(&s, "DELETE", "/proxies/p/toxics/rp", None).await;
    assert_eq!((st, is_error(&v, 404, "toxic not found")), (404, true), "{v}");

    call(&s, "PATCH", "/proxies/p", Some(json!({"enabled": false}))).await;
    let (st, _) = call(&s, "POST", "/reset", None).await;
    assert_eq!(st, 204);
    let (_, p) = call(&s, "GET", "/proxies/p", None).await;
    assert_eq!(
        (p["enabled"].clone(), p["toxics"].clone()),
        (json!(true), json!([])),
        "reset must enable and clear: {p}"
    );
}

#[tokio::test]
async fn malformed_requests_get_400_with_a_json_error() {
    let s = server().await;
    let (st, raw) = http(&s.url(), "POST", "/proxies", Some("{not json"), UA).await;
    let v: Value = serde_json::from_str(&raw).expect("error body is JSON");
    assert_eq!((st, is_error(&v, 400, "bad request body")), (400, true), "{v}");
    let (st, v) = call(&s, "POST", "/proxies", Some(json!({"name": "p"}))).await;
    assert_eq!((st, is_error(&v, 400, "missing required field: upstream")), (400, true), "{v}");
    let (st, v) =
        call(&s, "POST", "/proxies", Some(json!({"name": "p", "upstream": "127.0.0.1:1", "enabled": "yes"}))).await;
    assert_eq!((st, is_error(&v, 400, "enabled must be a boolean")), (400, true), "{v}");
    call(&s, "POST", "/proxies", Some(json!({"name": "p", "upstream": "127.0.0.1:1"}))).await;
    let (st, raw) = http(&s.url(), "POST", "/proxies/p/toxics", Some("[1,"), UA).await;
    assert_eq!(st, 400, "{raw}");
    let (st, v) =
        call(&s, "POST", "/proxies/p/toxics", Some(json!({"type": "latency", "attributes": {"latency": "slow"}})))
            .await;
    assert_eq!((st, is_error(&v, 400, "non-negative integer")), (400, true), "{v}");
    let (st, v) = call(&s, "POST", "/populate", Some(json!({"name": "not-an-array"}))).await;
    assert_eq!((st, is_error(&v, 400, "array")), (400, true), "{v}");
    let (st, raw) = http(&s.url(), "GET", "/no/such/route", None, UA).await;
    assert_eq!((st, raw.as_str()), (404, "404 page not found\n"), "gorilla/mux's answer");
}

#[tokio::test]
async fn populate_creates_keeps_and_replaces() {
    let s = server().await;
    let first = json!([{"name": "a", "listen": "127.0.0.1:0", "upstream": "127.0.0.1:1"}, {"name": "b", "upstream": "127.0.0.1:2"}]);
    let (st, v) = call(&s, "POST", "/populate", Some(first)).await;
    assert_eq!(st, 201, "{v}");
    assert_eq!(v["proxies"].as_array().map(Vec::len), Some(2));
    let a_listen = v["proxies"][0]["listen"].as_str().unwrap().to_string();
    // Same listen and upstream: kept as is. New upstream: replaced.
    let again =
        json!([{"name": "a", "listen": a_listen, "upstream": "127.0.0.1:1"}, {"name": "b", "upstream": "127.0.0.1:3"}]);
    let (st, v) = call(&s, "POST", "/populate", Some(again)).await;
    assert_eq!(st, 201, "{v}");
    assert_eq!(v["proxies"][0]["listen"], json!(a_listen));
    assert_eq!(v["proxies"][1]["upstream"], json!("127.0.0.1:3"));
    let (st, v) = call(&s, "POST", "/populate", Some(json!([{"name": "c"}]))).await;
    assert_eq!((st, is_error(&v, 400, "missing required field")), (400, true), "{v}");
}

/// Populate checks every entry before it applies any; an error names the entry and the body
/// carries `"proxies": null` (Go's empty slice), as Toxiproxy's own tests expect.
#[tokio::test]
async fn populate_errors_name_the_entry_and_apply_nothing() {
    let s = server().await;
    let bad = json!([{"name": "a", "upstream": "127.0.0.1:1"}, {"upstream": "127.0.0.1:2"}]);
    let (st, v) = call(&s, "POST", "/populate", Some(bad)).await;
    assert_eq!(st, 400);
    assert_eq!(v, json!({"error": "missing required field: name at proxy 2", "status": 400, "proxies": null}));
    let (_, all) = call(&s, "GET", "/proxies", None).await;
    assert_eq!(all, json!({}), "a refused populate created proxies");
    let (st, v) = call(&s, "POST", "/populate", Some(json!([]))).await;
    assert_eq!((st, v), (201, json!({"proxies": null})));
}

/// Populating a proxy that exists with the same upstream and the same listen address, even
/// spelt `localhost:P` where the proxy reports `127.0.0.1:P`, keeps it and its connections.
#[tokio::test]
async fn populating_the_same_localhost_proxy_keeps_its_connections() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = server().await;
    let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = echo.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = echo.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = conn.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let entry = json!([{"name": "a", "listen": format!("localhost:{port}"), "upstream": upstream}]);
    let (st, v) = call(&s, "POST", "/populate", Some(entry.clone())).await;
    assert_eq!(st, 201, "{v}");
    assert_eq!(v["proxies"][0]["listen"], json!(format!("127.0.0.1:{port}")));
    let mut c = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut byte = [0u8; 1];
    c.write_all(b"a").await.unwrap();
    c.read_exact(&mut byte).await.unwrap();
    let (st, v) = call(&s, "POST", "/populate", Some(entry)).await;
    assert_eq!(st, 201, "{v}");
    c.write_all(b"b").await.unwrap();
    let echoed = tokio::time::timeout(std::time::Duration::from_secs(5), c.read_exact(&mut byte)).await;
    assert!(matches!(echoed, Ok(Ok(_))) && byte == *b"b", "the connection was cut: the proxy was replaced");
}

/// A taken port is refused in Go's words, with the address resolved, status 500.
#[tokio::test]
async fn a_taken_port_is_refused_in_gos_words() {
    let s = server().await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let body = json!({"name": "p", "listen": format!("localhost:{port}"), "upstream": "127.0.0.1:1"});
    let (st, v) = call(&s, "POST", "/proxies", Some(body)).await;
    let text = format!("listen tcp 127.0.0.1:{port}: bind: address already in use");
    assert_eq!((st, v), (500, json!({"error": text, "status": 500})));
}

/// Errors are written as Go's `http.Error` writes them; `/version` is Toxiproxy's exact line.
#[tokio::test]
async fn bodies_and_content_types_are_toxiproxys_bytes() {
    let s = server().await;
    let (st, head, body) = support::http_with_head(&s.url(), "GET", "/proxies/nope", None, UA).await;
    assert_eq!((st, body.as_str()), (404, "{\"error\":\"proxy not found\",\"status\":404}\n"));
    let head = head.to_ascii_lowercase();
    assert!(head.contains("content-type: text/plain; charset=utf-8"), "{head}");
    assert!(head.contains("x-content-type-options: nosniff"), "{head}");
    let (st, head, body) = support::http_with_head(&s.url(), "GET", "/version", None, UA).await;
    assert_eq!((st, body.as_str()), (200, "{\"version\": \"2.12.0\"}\n"));
    assert!(head.to_ascii_lowercase().contains("content-type: application/json;charset=utf-8"), "{head}");
}

#[tokio::test]
async fn browsers_are_refused() {
    let s = server().await;
    let (st, raw) = http(&s.url(), "GET", "/proxies", None, "Mozilla/5.0 (X11; Linux x86_64)").await;
    assert_eq!((st, raw.as_str()), (403, "User agent not allowed\n"));
}

#[tokio::test]
async fn non_loopback_upstreams_are_refused_by_default() {
    let s = server().await;
    // TEST-NET-1 (RFC 5737): refused at the API, before any connection is attempted.
    let (st, v) = call(&s, "POST", "/proxies", Some(json!({"name": "far", "upstream": "192.0.2.1:6379"}))).await;
    assert_eq!((st, is_error(&v, 400, "not loopback")), (400, true), "{v}");
}

#[tokio::test]
async fn a_stock_toxiproxy_client_drives_it() {
    let s = server().await;
    let url = s.url();
    let upstream = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let up = upstream.local_addr().unwrap().to_string();
    let seen = tokio::task::spawn_blocking(move || {
        use toxiproxy_rust::{client::Client, proxy::ProxyPack};
        let c = Client::new(url.trim_start_matches("http://"));
        assert!(c.is_running());
        assert!(c.version().unwrap().contains("2."));
        let made = c.populate(vec![ProxyPack::new("tp".into(), "127.0.0.1:0".into(), up)]).unwrap();
        assert_eq!(made.len(), 1);
        let p = c.find_and_reset_proxy("tp").unwrap();
        p.with_latency("downstream".into(), 40, 5, 1.0).with_limit_data("upstream".into(), 100, 1.0);
        let names: Vec<String> = p.toxics().unwrap().into_iter().map(|t| t.name).collect();
        p.disable().unwrap();
        let disabled = !c.find_proxy("tp").unwrap().proxy_pack.enabled;
        p.enable().unwrap();
        p.delete_all_toxics().unwrap();
        let left = p.toxics().unwrap().len();
        c.reset().unwrap();
        (names, disabled, left, c.all().unwrap().len())
    })
    .await
    .unwrap();
    assert_eq!(seen, (vec!["latency_downstream".to_string(), "limit_data_upstream".to_string()], true, 0, 1));
}

/// Every response carries `X-Toxiproxy-Request-Id` (Toxiproxy 2.12), a different one per
/// request, errors included.
#[tokio::test]
async fn every_response_carries_its_own_request_id() {
    let s = server().await;
    let mut ids = Vec::new();
    for path in ["/version", "/version", "/proxies/nope"] {
        let (_, head, _) = support::http_with_head(&s.url(), "GET", path, None, UA).await;
        let id = head
            .lines()
            .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("x-toxiproxy-request-id")))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_else(|| panic!("no request id on {path}: {head}"));
        assert!(!id.is_empty());
        ids.push(id);
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3, "request ids repeat: {ids:?}");
}
