//! The Toxiproxy 2.x REST API over the proxy registry.
//!
//! Follows Toxiproxy 2.12 byte for byte where clients can see it: 201 for a created proxy and
//! for populate, 200 for a created toxic, 204 for deletes and reset; errors as Go's
//! `http.Error` writes them (`{"error": ..., "status": N}` plus a newline, Content-Type
//! text/plain, `X-Content-Type-Options: nosniff`); populate's body with `"proxies": null`
//! when it made none; `404 page not found` for unknown routes; the version line exactly.
//! Bodies are parsed by hand from bytes rather than through axum's `Json` extractor so a
//! malformed body gets Toxiproxy's error shape instead of axum's rejection.
//!
//! Deliberately stricter than Toxiproxy: negative or non-integer attributes, a toxicity
//! outside [0, 1], a wrongly typed field and a non-loopback upstream are refused with 400
//! where Toxiproxy would accept them (or fail later). So are, each with a message naming the
//! field in quotes:
//! - an attribute the proxy cannot honour: a size or rate above
//!   [`ATTRIBUTE_MAX`](crate::toxiproxy::model::ATTRIBUTE_MAX) (2^63-1), a delay above
//!   [`DELAY_MS_MAX`](crate::toxiproxy::model::DELAY_MS_MAX) (365 days; latency + jitter
//!   together), a slicer delay above [`DELAY_US_MAX`](crate::toxiproxy::model::DELAY_US_MAX).
//!   Toxiproxy wraps or overflows there; this proxy applied latency 2^63 as 0 and panicked
//!   on jitter 2^64-1. On create, on update (the installed toxic stays as it was).
//! - an attribute the toxic does not have (`unknown attribute "latencyy"`): Toxiproxy
//!   ignores it, and the toxic silently does nothing.
//! - a proxy `listen` address that is not loopback (`0.0.0.0`, `[::]`), unless the server
//!   runs with `--allow-remote-listen`: it would expose a loopback upstream to every network
//!   the machine is on. On create, populate and update.
//! - a proxy or toxic name longer than 255 bytes: it could be created, but not addressed
//!   again (414 on its URL).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use super::{ApiError, ApiResult, ProxyConfig, Registry, TOXIPROXY_COMPAT_VERSION};
use crate::toxiproxy::model::{ErrorJson, ModelError, Toxic, ToxicJson};

type Reg = State<Arc<Registry>>;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorJson { error: self.message, status: self.status.as_u16() };
        let json = serde_json::to_string(&body).expect("an error serialises");
        go_http_error(self.status, json)
    }
}

/// A response as Go's `http.Error` writes it: the text and a newline, as text/plain.
fn go_http_error(status: StatusCode, text: String) -> Response {
    let headers = [(header::CONTENT_TYPE, "text/plain; charset=utf-8"), (header::X_CONTENT_TYPE_OPTIONS, "nosniff")];
    (status, headers, text + "\n").into_response()
}

impl From<ModelError> for ApiError {
    fn from(e: ModelError) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, e.to_string())
    }
}

pub(crate) fn router(registry: Arc<Registry>) -> Router {
    Router::new()
        .route("/version", get(version))
        .route("/reset", post(reset))
        .route("/populate", post(populate))
        .route("/proxies", get(proxy_index).post(proxy_create))
        .route("/proxies/{proxy}", get(proxy_show).post(proxy_update).patch(proxy_update).delete(proxy_delete))
        .route("/proxies/{proxy}/toxics", get(toxic_index).post(toxic_create))
        .route(
            "/proxies/{proxy}/toxics/{toxic}",
            get(toxic_show).post(toxic_update).patch(toxic_update).delete(toxic_delete),
        )
        // gorilla/mux's answer to a route it does not know.
        .fallback(|| async { go_http_error(StatusCode::NOT_FOUND, "404 page not found".into()) })
        .layer(middleware::from_fn(stop_browsers))
        .layer(middleware::from_fn(request_id))
        .with_state(registry)
}

/// Every response carries `X-Toxiproxy-Request-Id` (Toxiproxy 2.12), unique per request, so
/// a client can tie its log lines to the server's.
async fn request_id(req: Request, next: Next) -> Response {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let started = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    // Time-ordered and unique within the process: the start time, then a counter.
    let id = format!("{:012x}{n:08x}", (started as u64) >> 16);
    let mut res = next.run(req).await;
    if let Ok(v) = header::HeaderValue::from_str(&id) {
        res.headers_mut().insert("x-toxiproxy-request-id", v);
    }
    res
}

/// Toxiproxy refuses browser user agents so that no web page can drive the proxy through a
/// cross-site request.
async fn stop_browsers(req: Request, next: Next) -> Response {
    let browser = req
        .headers()
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ua| ua.starts_with("Mozilla/"));
    if browser {
        return go_http_error(StatusCode::FORBIDDEN, "User agent not allowed".into());
    }
    next.run(req).await
}

fn parse_body(body: &Bytes) -> ApiResult<Value> {
    serde_json::from_slice(body).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("bad request body: {e}")))
}

fn bad_field(msg: &str) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, format!("bad request body: {msg}"))
}

fn opt_string(obj: &serde_json::Map<String, Value>, key: &str) -> ApiResult<Option<String>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(bad_field(&format!("{key} must be a string"))),
    }
}

fn opt_bool(obj: &serde_json::Map<String, Value>, key: &str) -> ApiResult<Option<bool>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(bad_field(&format!("{key} must be a boolean"))),
    }
}

/// Reads a proxy definition (create or populate). `listen` defaults to a free loopback port.
fn proxy_config(v: &Value) -> ApiResult<ProxyConfig> {
    let obj = v.as_object().ok_or_else(|| bad_field("expected a JSON object"))?;
    let missing = |f: &str| ApiError::new(StatusCode::BAD_REQUEST, format!("missing required field: {f}"));
    let name = opt_string(obj, "name")?.filter(|s| !s.is_empty()).ok_or_else(|| missing("name"))?;
    crate::toxiproxy::model::check_name("proxy", &name)?;
    let upstream = opt_string(obj, "upstream")?.filter(|s| !s.is_empty()).ok_or_else(|| missing("upstream"))?;
    let listen = opt_string(obj, "listen")?.filter(|s| !s.is_empty()).unwrap_or_else(|| "127.0.0.1:0".into());
    let enabled = opt_bool(obj, "enabled")?.unwrap_or(true);
    Ok(ProxyConfig { name, listen, upstream, enabled })
}

async fn version() -> Response {
    // Exactly Toxiproxy 2.12's bytes: clients compare the whole object, some the text.
    let body = format!("{{\"version\": \"{TOXIPROXY_COMPAT_VERSION}\"}}\n");
    ([(header::CONTENT_TYPE, "application/json;charset=utf-8")], body).into_response()
}

async fn reset(State(reg): Reg) -> ApiResult<StatusCode> {
    reg.reset().await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn populate(State(reg): Reg, body: Bytes) -> Response {
    // Toxiproxy checks every entry before it changes anything; an entry's error names it
    // ("missing required field: name at proxy 2").
    let configs = parse_body(&body).and_then(|v| match v {
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                proxy_config(item).map_err(|mut e| {
                    if e.message.starts_with("missing required field") {
                        e.message = format!("{} at proxy {}", e.message, i + 1);
                    }
                    e
                })
            })
            .collect::<ApiResult<Vec<_>>>(),
        _ => Err(bad_field("expected a JSON array of proxies")),
    });
    let (proxies, error) = match configs {
        Ok(c) => reg.populate(c).await,
        Err(e) => (Vec::new(), Some(e)),
    };
    // Go marshals an empty slice of proxies as null, with or without an error.
    let proxies = if proxies.is_empty() { Value::Null } else { json!(proxies) };
    match error {
        None => (StatusCode::CREATED, Json(json!({ "proxies": proxies }))).into_response(),
        Some(e) => {
            let body = json!({ "error": e.message, "status": e.status.as_u16(), "proxies": proxies });
            (e.status, Json(body)).into_response()
        }
    }
}

async fn proxy_index(State(reg): Reg) -> Response {
    Json(reg.list().await).into_response()
}

async fn proxy_create(State(reg): Reg, body: Bytes) -> ApiResult<Response> {
    let config = proxy_config(&parse_body(&body)?)?;
    let proxy = reg.add(config).await?;
    Ok((StatusCode::CREATED, Json(proxy)).into_response())
}

async fn proxy_show(State(reg): Reg, Path(proxy): Path<String>) -> ApiResult<Response> {
    Ok(Json(reg.get(&proxy).await?).into_response())
}

async fn proxy_update(State(reg): Reg, Path(proxy): Path<String>, body: Bytes) -> ApiResult<Response> {
    let v = parse_body(&body)?;
    let obj = v.as_object().ok_or_else(|| bad_field("expected a JSON object"))?;
    let listen = opt_string(obj, "listen")?;
    let upstream = opt_string(obj, "upstream")?;
    let enabled = opt_bool(obj, "enabled")?;
    Ok(Json(reg.update(&proxy, listen, upstream, enabled).await?).into_response())
}

async fn proxy_delete(State(reg): Reg, Path(proxy): Path<String>) -> ApiResult<StatusCode> {
    reg.remove(&proxy).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn toxic_index(State(reg): Reg, Path(proxy): Path<String>) -> ApiResult<Json<Vec<ToxicJson>>> {
    Ok(Json(reg.toxics(&proxy).await?.iter().map(Toxic::to_json).collect()))
}

async fn toxic_create(State(reg): Reg, Path(proxy): Path<String>, body: Bytes) -> ApiResult<Json<ToxicJson>> {
    // Toxiproxy answers 404 for an unknown proxy before it looks at the body.
    reg.get(&proxy).await?;
    let toxic = Toxic::from_request(&parse_body(&body)?)?;
    Ok(Json(reg.add_toxic(&proxy, toxic).await?.to_json()))
}

async fn toxic_show(State(reg): Reg, Path((proxy, toxic)): Path<(String, String)>) -> ApiResult<Json<ToxicJson>> {
    let toxics = reg.toxics(&proxy).await?;
    let found = toxics.iter().find(|t| t.name == toxic).ok_or_else(ApiError::toxic_not_found)?;
    Ok(Json(found.to_json()))
}

async fn toxic_update(
    State(reg): Reg,
    Path((proxy, toxic)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Json<ToxicJson>> {
    let v = parse_body(&body)?;
    let updated = reg.update_toxic(&proxy, &toxic, |current| Ok(current.updated(&v)?)).await?;
    Ok(Json(updated.to_json()))
}

async fn toxic_delete(State(reg): Reg, Path((proxy, toxic)): Path<(String, String)>) -> ApiResult<StatusCode> {
    reg.remove_toxic(&proxy, &toxic).await?;
    Ok(StatusCode::NO_CONTENT)
}
