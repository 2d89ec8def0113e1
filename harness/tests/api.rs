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
    let upstream = support::echo_server().await;
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

/// What the proxy cannot honour is refused with 400 naming the field, on create and on
/// update, and the toxic already installed stays as it was. Before these checks latency
/// 2^63 and 2^64-1 were applied as 0, a jitter or size_variation of 2^64-1 panicked the link
/// and a rate of 2^64-1 was taken.
#[tokio::test]
async fn attributes_the_proxy_cannot_honour_are_refused_naming_the_field() {
    use harness::toxiproxy::model::{ATTRIBUTE_MAX, DELAY_MS_MAX, DELAY_US_MAX};
    let s = server().await;
    call(&s, "POST", "/proxies", Some(json!({"name": "p", "upstream": "127.0.0.1:1"}))).await;
    let refused = [
        ("latency", json!({"latency": 1u64 << 63}), "latency"),
        ("latency", json!({"latency": u64::MAX}), "latency"),
        ("latency", json!({"latency": DELAY_MS_MAX + 1}), "latency"),
        ("latency", json!({"jitter": u64::MAX}), "jitter"),
        ("latency", json!({"latency": DELAY_MS_MAX, "jitter": 1}), "jitter"),
        ("slicer", json!({"average_size": 8, "size_variation": u64::MAX}), "size_variation"),
        ("slicer", json!({"average_size": ATTRIBUTE_MAX + 1}), "average_size"),
        ("slicer", json!({"delay": DELAY_US_MAX + 1}), "delay"),
        ("bandwidth", json!({"rate": u64::MAX}), "rate"),
        ("slow_close", json!({"delay": u64::MAX}), "delay"),
        ("timeout", json!({"timeout": DELAY_MS_MAX + 1}), "timeout"),
        ("reset_peer", json!({"timeout": u64::MAX}), "timeout"),
        ("limit_data", json!({"bytes": u64::MAX}), "bytes"),
    ];
    for (ty, attrs, field) in &refused {
        let body = json!({"name": "t", "type": ty, "attributes": attrs});
        let (st, v) = call(&s, "POST", "/proxies/p/toxics", Some(body)).await;
        assert_eq!((st, is_error(&v, 400, &format!("{field:?}"))), (400, true), "{ty} {attrs}: {v}");
    }
    let (_, listed) = call(&s, "GET", "/proxies/p/toxics", None).await;
    assert_eq!(listed, json!([]), "a refused toxic was installed");
    // The largest values are taken, and shown back as given.
    for (ty, attrs) in [
        ("latency", json!({"latency": DELAY_MS_MAX - 5, "jitter": 5})),
        ("slicer", json!({"average_size": ATTRIBUTE_MAX, "size_variation": ATTRIBUTE_MAX, "delay": DELAY_US_MAX})),
        ("bandwidth", json!({"rate": ATTRIBUTE_MAX})),
        ("limit_data", json!({"bytes": ATTRIBUTE_MAX})),
    ] {
        let (st, v) = call(&s, "POST", "/proxies/p/toxics", Some(json!({"type": ty, "attributes": attrs}))).await;
        assert_eq!(st, 200, "{ty} {attrs}: {v}");
        for (k, want) in attrs.as_object().unwrap() {
            assert_eq!(&v["attributes"][k], want, "{ty}: {v}");
        }
    }
    // An update is checked the same way and leaves the toxic as it was.
    let (st, v) =
        call(&s, "PATCH", "/proxies/p/toxics/latency_downstream", Some(json!({"attributes": {"jitter": 6}}))).await;
    assert_eq!((st, is_error(&v, 400, "\"jitter\"")), (400, true), "{v}");
    let (_, v) = call(&s, "GET", "/proxies/p/toxics/latency_downstream", None).await;
    assert_eq!(v["attributes"], json!({"latency": DELAY_MS_MAX - 5, "jitter": 5}));
}

/// An attribute the toxic does not have is refused, named, on create and on update (a typo
/// such as `latencyy` used to be ignored: the toxic then did nothing).
#[tokio::test]
async fn unknown_attributes_are_refused_naming_them() {
    let s = server().await;
    call(&s, "POST", "/proxies", Some(json!({"name": "p", "upstream": "127.0.0.1:1"}))).await;
    for (ty, attrs, name) in [
        ("latency", json!({"latencyy": 100}), "latencyy"),
        ("latency", json!({"latency": 100, "rate": 1}), "rate"),
        ("noop", json!({"anything": 0}), "anything"),
        ("timeout", json!({"timeout": 1, "delay": 1}), "delay"),
    ] {
        let (st, v) = call(&s, "POST", "/proxies/p/toxics", Some(json!({"type": ty, "attributes": attrs}))).await;
        assert_eq!((st, is_error(&v, 400, &format!("unknown attribute {name:?}"))), (400, true), "{ty}: {v}");
    }
    call(&s, "POST", "/proxies/p/toxics", Some(json!({"type": "latency", "attributes": {"latency": 5}}))).await;
    let (st, v) =
        call(&s, "PATCH", "/proxies/p/toxics/latency_downstream", Some(json!({"attributes": {"latencyy": 9}}))).await;
    assert_eq!((st, is_error(&v, 400, "unknown attribute \"latencyy\"")), (400, true), "{v}");
}

/// A proxy listening beyond loopback would expose its upstream (a loopback Redis) to every
/// network the machine is on: refused at create, populate and update unless the server
/// allows it. `enabled: false`, so that not even a server without the check binds anything.
#[tokio::test]
async fn non_loopback_listen_addresses_are_refused_by_default() {
    let s = server().await;
    for listen in ["0.0.0.0:0", "[::]:0", "192.0.2.1:0"] {
        let body = json!({"name": "far", "listen": listen, "upstream": "127.0.0.1:1", "enabled": false});
        let (st, v) = call(&s, "POST", "/proxies", Some(body.clone())).await;
        assert_eq!((st, is_error(&v, 400, "not loopback")), (400, true), "{listen}: {v}");
        assert!(is_error(&v, 400, "--allow-remote-listen"), "the error names the way out: {v}");
        let (st, v) = call(&s, "POST", "/populate", Some(json!([body]))).await;
        assert_eq!((st, is_error(&v, 400, "not loopback")), (400, true), "populate {listen}: {v}");
    }
    call(&s, "POST", "/proxies", Some(json!({"name": "p", "upstream": "127.0.0.1:1", "enabled": false}))).await;
    let (st, v) = call(&s, "PATCH", "/proxies/p", Some(json!({"listen": "0.0.0.0:0"}))).await;
    assert_eq!((st, is_error(&v, 400, "not loopback")), (400, true), "update: {v}");
    let (_, all) = call(&s, "GET", "/proxies", None).await;
    assert_eq!(all.as_object().map(|o| o.keys().cloned().collect::<Vec<_>>()), Some(vec!["p".to_string()]));
    assert_eq!(all["p"]["listen"], "127.0.0.1:0", "a refused update changed the proxy: {all}");
}

/// With `allow_remote_listen` the check is off (the proxy is created disabled: nothing binds).
#[tokio::test]
async fn remote_listen_addresses_are_allowed_by_the_option() {
    let options = ServerOptions { allow_remote_listen: true, ..Default::default() };
    let s = EmbeddedToxiproxy::start(([127, 0, 0, 1], 0).into(), options).await.unwrap();
    let body = json!({"name": "far", "listen": "0.0.0.0:0", "upstream": "127.0.0.1:1", "enabled": false});
    let (st, v) = call(&s, "POST", "/proxies", Some(body)).await;
    assert_eq!((st, v["listen"].clone()), (201, json!("0.0.0.0:0")), "{v}");
}

/// `::ffff:127.0.0.1` is 127.0.0.1 (an IPv4-mapped address): loopback, as listen address and
/// as upstream, and traffic flows through it.
#[tokio::test]
async fn ipv4_mapped_loopback_counts_as_loopback() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = server().await;
    let echo_port = spawn_echo_server().await.port();
    let body =
        json!({"name": "m", "listen": "[::ffff:127.0.0.1]:0", "upstream": format!("[::ffff:127.0.0.1]:{echo_port}")});
    let (st, v) = call(&s, "POST", "/proxies", Some(body)).await;
    assert_eq!(st, 201, "{v}");
    let listen = v["listen"].as_str().unwrap().to_string();
    let mut c = tokio::net::TcpStream::connect(&listen).await.unwrap();
    c.write_all(b"mapped").await.unwrap();
    let mut back = [0u8; 6];
    tokio::time::timeout(std::time::Duration::from_secs(5), c.read_exact(&mut back)).await.unwrap().unwrap();
    assert_eq!(&back, b"mapped");
}

/// Names are at most 255 bytes (UTF-8), proxies and toxics alike: a longer one could be
/// created but its URL was too long to delete it (414).
#[tokio::test]
async fn names_longer_than_255_bytes_are_refused() {
    use harness::toxiproxy::model::NAME_LEN_MAX_BYTES;
    assert_eq!(NAME_LEN_MAX_BYTES, 255);
    let s = server().await;
    // 128 two-byte characters: 128 characters, 256 bytes.
    for long in ["a".repeat(256), "é".repeat(128), "x".repeat(66_000)] {
        let (st, v) = call(&s, "POST", "/proxies", Some(json!({"name": long, "upstream": "127.0.0.1:1"}))).await;
        assert_eq!((st, is_error(&v, 400, "at most 255 bytes")), (400, true), "{} bytes: {v}", long.len());
        let (st, v) = call(&s, "POST", "/populate", Some(json!([{"name": long, "upstream": "127.0.0.1:1"}]))).await;
        assert_eq!((st, is_error(&v, 400, "at most 255 bytes")), (400, true), "populate {} bytes: {v}", long.len());
    }
    let longest = "a".repeat(255);
    let (st, v) = call(&s, "POST", "/proxies", Some(json!({"name": longest, "upstream": "127.0.0.1:1"}))).await;
    assert_eq!(st, 201, "{v}");
    let (st, v) =
        call(&s, "POST", &format!("/proxies/{longest}/toxics"), Some(json!({"name": "t".repeat(256), "type": "noop"})))
            .await;
    assert_eq!((st, is_error(&v, 400, "at most 255 bytes")), (400, true), "toxic name: {v}");
    let toxic = "t".repeat(255);
    let (st, _) =
        call(&s, "POST", &format!("/proxies/{longest}/toxics"), Some(json!({"name": toxic, "type": "noop"}))).await;
    assert_eq!(st, 200);
    let (st, _) = call(&s, "DELETE", &format!("/proxies/{longest}/toxics/{toxic}"), None).await;
    assert_eq!(st, 204);
    let (st, _) = call(&s, "DELETE", &format!("/proxies/{longest}"), None).await;
    assert_eq!(st, 204);
}

/// A loopback echo server on its own thread (blocking sockets), so that its allocations and
/// its scheduling are not the proxy's.
async fn spawn_echo_server() -> std::net::SocketAddr {
    let ln = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = ln.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in ln.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let mut w = conn.try_clone().unwrap();
                let _ = std::io::copy(&mut conn, &mut w);
            });
        }
    });
    addr
}

mod live_heap {
    //! Live heap bytes allocated by the current thread: a counting allocator for
    //! [`super::idle_connections_hold_no_read_buffers`], which runs the proxy on one thread.
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    thread_local! {
        static LIVE_BYTES: Cell<i64> = const { Cell::new(0) };
    }

    pub struct Counting;

    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            let _ = LIVE_BYTES.try_with(|c| c.set(c.get() + layout.size() as i64));
            // SAFETY: forwarded as is to the system allocator.
            unsafe { System.alloc(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            let _ = LIVE_BYTES.try_with(|c| c.set(c.get() - layout.size() as i64));
            // SAFETY: `ptr` came from `alloc` above with this layout.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    pub fn live_bytes() -> i64 {
        LIVE_BYTES.with(Cell::get)
    }
}

#[global_allocator]
static ALLOCATOR: live_heap::Counting = live_heap::Counting;

/// An idle proxied connection holds no read buffer. Each used to hold two 32 KiB buffers from
/// its first byte to its close; glibc keeps the pages such buffers touched after they are
/// freed, so a standalone proxy's RSS climbed round after round of connections (13 -> 125 MB
/// over 8 rounds of 2,000). The bound, 8 KiB a connection, is both sockets' state and the
/// task, far below one buffer. The `proxy_memory` bench measures the RSS itself.
#[test]
fn idle_connections_hold_no_read_buffers() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const CONNECTIONS: usize = 200;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let s = server().await;
        let echo = spawn_echo_server().await;
        let body = json!({"name": "idle", "upstream": echo.to_string()});
        let (_, v) = call(&s, "POST", "/proxies", Some(body)).await;
        let listen = v["listen"].as_str().unwrap().to_string();
        // Warm up: the first connection allocates what every later one shares.
        let mut warm = tokio::net::TcpStream::connect(&listen).await.unwrap();
        let mut byte = [0u8; 1];
        warm.write_all(b"w").await.unwrap();
        warm.read_exact(&mut byte).await.unwrap();
        let before = live_heap::live_bytes();
        let mut open = Vec::new();
        for _ in 0..CONNECTIONS {
            let mut c = tokio::net::TcpStream::connect(&listen).await.unwrap();
            // A round trip: both pumps have started and read once.
            c.write_all(b"x").await.unwrap();
            c.read_exact(&mut byte).await.unwrap();
            open.push(c);
        }
        let per_connection = (live_heap::live_bytes() - before) / CONNECTIONS as i64;
        assert!(per_connection < 8 * 1024, "an idle proxied connection holds {per_connection} bytes of heap");
        drop(open);
    });
}

/// Counts panics anywhere in this process (a link task's panic is caught by tokio and only
/// shows as a closed connection).
fn count_panics() -> &'static std::sync::atomic::AtomicUsize {
    static PANICS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            default(info);
        }));
    });
    &PANICS
}

/// An attribute value: mostly the edges of every integer width and of the proxy's limits,
/// some small ones that make traffic visible, and now and then something that is not a
/// non-negative integer at all.
fn attribute_value() -> impl proptest::strategy::Strategy<Value = Value> {
    use harness::toxiproxy::model::{DELAY_MS_MAX, DELAY_US_MAX};
    use proptest::prelude::*;
    prop_oneof![
        4 => prop_oneof![
            Just(0u64), Just(1), Just(DELAY_MS_MAX), Just(DELAY_MS_MAX + 1), Just(DELAY_US_MAX),
            Just(DELAY_US_MAX + 1), Just(1 << 31), Just(1 << 32), Just(1 << 53), Just(1 << 62),
            Just(i64::MAX as u64), Just(1 << 63), Just(u64::MAX), any::<u64>(),
        ].prop_map(Value::from),
        3 => (0u64..3_000).prop_map(Value::from),
        1 => prop_oneof![Just(json!(-1)), Just(json!(1.5)), Just(json!(1e30)), Just(json!("5"))],
    ]
}

/// (type, stream, attributes): each of the type's attributes present or not, and now and then
/// one it does not have.
fn toxic_request() -> impl proptest::strategy::Strategy<Value = (&'static str, &'static str, Value)> {
    use proptest::prelude::*;
    let types: [(&str, &[&str]); 8] = [
        ("latency", &["latency", "jitter"]),
        ("bandwidth", &["rate"]),
        ("slow_close", &["delay"]),
        ("timeout", &["timeout"]),
        ("reset_peer", &["timeout"]),
        ("slicer", &["average_size", "size_variation", "delay"]),
        ("limit_data", &["bytes"]),
        ("noop", &[]),
    ];
    (0..types.len(), prop::bool::ANY, prop::collection::vec(proptest::option::of(attribute_value()), 3), 0..10u8)
        .prop_map(move |(i, upstream, values, typo)| {
            let (ty, names) = types[i];
            let mut attrs = serde_json::Map::new();
            for (name, v) in names.iter().zip(values) {
                if let Some(v) = v {
                    attrs.insert(name.to_string(), v);
                }
            }
            if typo == 0 {
                attrs.insert("latencyy".into(), json!(1));
            }
            (ty, if upstream { "upstream" } else { "downstream" }, Value::Object(attrs))
        })
}

/// Property: whatever attributes a toxic is created with, through the REST API on a live
/// link (a proxy in front of a loopback echo server, data flowing both ways), the answer is
/// 200 or a 400 that names a field; nothing panics; the API keeps answering; with the toxic
/// removed, a new connection is proxied as before; and an accepted latency of a second or more
/// is honoured (no reply within 200 ms). Before the checks, jitter or size_variation 2^64-1
/// panicked the link, rate 2^62 aborted the process, latency 2^63 was applied as 0.
#[test]
fn no_accepted_toxic_panics_a_live_link() {
    use proptest::test_runner::{Config, TestCaseError, TestRunner};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::time::{timeout, Duration};
    let panics = count_panics();
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(48);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (s, listen) = rt.block_on(async {
        let s = server().await;
        let echo = spawn_echo_server().await;
        let (_, v) = call(&s, "POST", "/proxies", Some(json!({"name": "p", "upstream": echo.to_string()}))).await;
        let listen = v["listen"].as_str().unwrap().to_string();
        (s, listen)
    });
    let payload: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
    let config = Config { cases, failure_persistence: None, ..Config::default() };
    let mut runner = TestRunner::new(config);
    let outcome = runner.run(&toxic_request(), |(ty, stream, attrs)| {
        rt.block_on(async {
            let fail = |m: String| TestCaseError::fail(m);
            // An open connection, so the toxic lands on a live link, and a new one after it.
            let mut old = tokio::net::TcpStream::connect(&listen).await.unwrap();
            let body = json!({"name": "t", "type": ty, "stream": stream, "attributes": attrs});
            let (st, v) = call(&s, "POST", "/proxies/p/toxics", Some(body)).await;
            match st {
                200 => {}
                400 => {
                    let named = attrs.as_object().unwrap().keys().any(|k| is_error(&v, 400, &format!("{k:?}")));
                    if !named {
                        return Err(fail(format!("a 400 that names no field: {v}")));
                    }
                }
                _ => return Err(fail(format!("answered {st}: {v}"))),
            }
            let mut new = tokio::net::TcpStream::connect(&listen).await.unwrap();
            let mut first_reply = None;
            for c in [&mut old, &mut new] {
                let started = std::time::Instant::now();
                let _ = timeout(Duration::from_millis(200), c.write_all(&payload)).await;
                let mut buf = [0u8; 4096];
                if let Ok(Ok(n)) = timeout(Duration::from_millis(200), c.read(&mut buf)).await {
                    if n > 0 && first_reply.is_none() {
                        first_reply = Some(started.elapsed());
                    }
                }
            }
            if st == 200 && ty == "latency" {
                let at = |k: &str| v["attributes"][k].as_u64().unwrap();
                if at("latency").saturating_sub(at("jitter")) >= 1_000 {
                    if let Some(took) = first_reply {
                        return Err(fail(format!("latency {} ms accepted, reply after {took:?}", at("latency"))));
                    }
                }
            }
            let (st, v) = call(&s, "GET", "/proxies/p", None).await;
            if st != 200 {
                return Err(fail(format!("the API stopped answering: {st} {v}")));
            }
            if !v["toxics"].as_array().unwrap().is_empty() {
                call(&s, "DELETE", "/proxies/p/toxics/t", None).await;
            }
            drop((old, new));
            let mut after = tokio::net::TcpStream::connect(&listen).await.unwrap();
            after.write_all(b"still").await.unwrap();
            let mut back = [0u8; 5];
            match timeout(Duration::from_secs(5), after.read_exact(&mut back)).await {
                Ok(Ok(_)) if &back == b"still" => {}
                other => return Err(fail(format!("not proxied after the toxic was removed: {other:?}"))),
            }
            let n = panics.load(std::sync::atomic::Ordering::SeqCst);
            if n > 0 {
                return Err(fail(format!("{n} panics (see stderr)")));
            }
            Ok(())
        })
    });
    if let Err(e) = outcome {
        panic!("{e}");
    }
}
