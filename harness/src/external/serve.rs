//! The harness's side turned round: a built-in strategy served over the process protocol
//! (`hybrid-chaos serve-impl --strategy hybrid`). Run through `--implementation`, it must give
//! the verdicts the same strategy gives in-process: the proof that the protocol loses
//! nothing on the way. Also a working example of the protocol for whoever writes their own.
//!
//! Requests are handled concurrently (a wait does not hold up a respond); answers are written
//! as they complete, one line each. stdin closing means the harness is gone: shut down, exit.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

use super::Init;
use crate::reference::stream::{Chunk, FollowEnd};
use crate::reference::{FeedbackStrategy, Fields, ImplStats, PublishOutcome, StreamStrategy, WaitOutcome};
use crate::strategy::BuiltIn;
use serde::Deserialize as _;

/// A string field of a request; absent: empty.
fn text(v: &Value, k: &str) -> String {
    v.get(k).and_then(Value::as_str).unwrap_or("").to_string()
}

/// A number field of a request; absent: 0.
fn num(v: &Value, k: &str) -> u64 {
    v.get(k).and_then(Value::as_u64).unwrap_or(0)
}

type Running = Arc<Mutex<HashMap<u64, tokio::task::AbortHandle>>>;

/// Runs a cancellable request (`wait`, `follow`) in its own task, known by `req` to `cancel`
/// until it answers. The map is locked across the spawn, so a task that ends at once still
/// finds itself there to remove.
fn spawn_cancellable(
    running: &Running,
    tx: &mpsc::UnboundedSender<String>,
    req: u64,
    answer: impl std::future::Future<Output = String> + Send + 'static,
) {
    let mut map = running.lock().expect("running lock");
    let (running2, tx) = (running.clone(), tx.clone());
    let task = tokio::spawn(async move {
        let line = answer.await;
        running2.lock().expect("running lock").remove(&req);
        let _ = tx.send(line);
    });
    map.insert(req, task.abort_handle());
}

fn ok(req: u64, value: Value) -> String {
    json!({ "req": req, "outcome": "ok", "value": value }).to_string()
}

fn outcome(req: u64, outcome: &str, error: impl Into<String>) -> String {
    json!({ "req": req, "outcome": outcome, "error": error.into() }).to_string()
}

/// How a publish outcome goes over the wire: `ok` when acknowledged, `fail` when certainly
/// not stored, `info` when unknown.
pub fn respond_answer(req: u64, o: PublishOutcome) -> String {
    match o {
        PublishOutcome::Notified { subscribers } => {
            ok(req, json!({ "status": "notified", "subscribers": subscribers }))
        }
        PublishOutcome::Unheard => ok(req, json!({ "status": "unheard" })),
        PublishOutcome::Stored => ok(req, json!({ "status": "stored" })),
        PublishOutcome::StoredNotNotified { reason } => {
            ok(req, json!({ "status": "stored_not_notified", "reason": reason }))
        }
        PublishOutcome::Refused { reason } => outcome(req, "fail", reason),
        PublishOutcome::Failed { reason } => outcome(req, "info", reason),
        o @ PublishOutcome::StoredUnreplicated { .. } => outcome(req, "info", o.status()),
    }
}

fn wait_answer(req: u64, r: crate::reference::Result<WaitOutcome>) -> String {
    match r {
        Ok(WaitOutcome::Obtained { fields, via }) => ok(req, json!({ "fields": fields, "via": via.name() })),
        Ok(WaitOutcome::TimedOut) => json!({ "req": req, "outcome": "timeout" }).to_string(),
        Ok(WaitOutcome::Shutdown) => outcome(req, "info", "shutdown"),
        Err(e) => outcome(req, "info", e.to_string()),
    }
}

/// What `init` connected: the strategy for the workload it named.
#[derive(Clone)]
enum Serving {
    Feedback(Arc<dyn FeedbackStrategy>),
    Stream(Arc<dyn StreamStrategy>),
}

impl Serving {
    fn stats(&self) -> ImplStats {
        match self {
            Serving::Feedback(s) => s.stats(),
            Serving::Stream(s) => s.stats(),
        }
    }

    async fn shutdown(&self) {
        match self {
            Serving::Feedback(s) => s.shutdown().await,
            Serving::Stream(s) => s.shutdown().await,
        }
    }
}

fn follow_answer(req: u64, r: crate::reference::Result<FollowEnd>) -> String {
    match r {
        Ok(FollowEnd::Finished { delivered, list_reads }) => {
            ok(req, json!({ "delivered": delivered, "list_reads": list_reads }))
        }
        Ok(FollowEnd::TimedOut { .. }) => json!({ "req": req, "outcome": "timeout" }).to_string(),
        Err(e) => outcome(req, "info", e.to_string()),
    }
}

/// Serves `strategy` on stdin/stdout until `shutdown` or until stdin closes.
pub async fn serve(strategy: BuiltIn) -> anyhow::Result<()> {
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let writer = tokio::spawn(async move {
        let mut out = tokio::io::stdout();
        while let Some(line) = rx.recv().await {
            if out.write_all(line.as_bytes()).await.is_err() || out.write_all(b"\n").await.is_err() {
                break;
            }
            let _ = out.flush().await;
        }
    });
    let mut implementation: Option<Serving> = None;
    let running: Running = Arc::default();
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = match serde_json::from_str(&line) {
            Ok(v) => v,
            Err(e) => {
                eprintln!("serve-impl: not JSON ({e}): {line}");
                continue;
            }
        };
        let req = num(&v, "req");
        let op = v.get("op").and_then(Value::as_str).unwrap_or("");
        let s = implementation.clone();
        match (op, s) {
            ("hello", _) => {
                let d = strategy.design();
                let (name, expect, streams) = (strategy.name(), strategy.held_to().name(), strategy.streams());
                let _ = tx.send(ok(
                    req,
                    json!({ "name": name, "notifies": d.notifies, "polls": d.polls, "expect": expect, "streams": streams }),
                ));
            }
            ("init", _) => {
                let init = match Init::deserialize(&v) {
                    Ok(init) => init,
                    Err(e) => {
                        let _ = tx.send(outcome(req, "fail", format!("init: {e}")));
                        continue;
                    }
                };
                let cfg = init.config();
                let cmd = init.redis_url.as_str();
                let sub = if init.subscriber_url.is_empty() { cmd } else { init.subscriber_url.as_str() };
                let connected = match init.workload.as_str() {
                    "stream" => strategy.connect_stream(cmd, sub, cfg).await.map(Serving::Stream),
                    _ => strategy.connect_feedback(cmd, sub, cfg).await.map(Serving::Feedback),
                };
                match connected {
                    Ok(s) => {
                        implementation = Some(s);
                        let _ = tx.send(ok(req, json!({})));
                    }
                    Err(e) => {
                        let _ = tx.send(outcome(req, "fail", format!("{e:#}")));
                    }
                }
            }
            ("stats", Some(s)) => {
                let _ = tx.send(ok(req, serde_json::to_value(s.stats()).unwrap_or_default()));
            }
            ("wait", Some(Serving::Feedback(s))) => {
                let (id, timeout) = (text(&v, "id"), Duration::from_millis(num(&v, "timeout_ms")));
                spawn_cancellable(&running, &tx, req, async move { wait_answer(req, s.wait(&id, timeout).await) });
            }
            ("respond", Some(Serving::Feedback(s))) => {
                let id = text(&v, "id");
                let fields: Fields =
                    v.get("fields").cloned().and_then(|f| serde_json::from_value(f).ok()).unwrap_or_default();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let _ = tx.send(respond_answer(req, s.respond(&id, &fields).await));
                });
            }
            ("stream_publish", Some(Serving::Stream(s))) => {
                let task = text(&v, "task");
                let last = v.get("final").and_then(Value::as_bool).unwrap_or(false);
                let chunk = Chunk {
                    chunk_index: num(&v, "index"),
                    chunk_type: if last { "final" } else { "content" }.into(),
                    content: text(&v, "content"),
                };
                let tx = tx.clone();
                tokio::spawn(async move {
                    let _ = tx.send(respond_answer(req, s.publish(&task, &chunk).await));
                });
            }
            ("follow", Some(Serving::Stream(s))) => {
                let (task, from) = (text(&v, "task"), num(&v, "from"));
                let timeout = Duration::from_millis(num(&v, "timeout_ms"));
                let events = tx.clone();
                spawn_cancellable(&running, &tx, req, async move {
                    let mut on_chunk = |c: &Chunk, via: crate::reference::Via| {
                        let _ = events.send(
                            json!({
                                "req": req,
                                "event": "chunk",
                                "index": c.chunk_index,
                                "content": c.content,
                                "final": c.chunk_type == "final",
                                "via": via.name(),
                            })
                            .to_string(),
                        );
                    };
                    follow_answer(req, s.follow(&task, from, timeout, &mut on_chunk).await)
                });
            }
            ("cancel", _) => {
                // Dropping the waiting future is the cancellation the reference supports.
                let target = num(&v, "target");
                if let Some(h) = running.lock().expect("running lock").remove(&target) {
                    h.abort();
                    let _ = tx.send(outcome(target, "info", "cancelled"));
                }
                let _ = tx.send(ok(req, json!({})));
            }
            ("shutdown", s) => {
                implementation = None;
                if let Some(s) = s {
                    s.shutdown().await;
                }
                let _ = tx.send(ok(req, json!({})));
                break;
            }
            (other, None) if ["wait", "respond", "stats", "stream_publish", "follow"].contains(&other) => {
                let _ = tx.send(outcome(req, "fail", "init first"));
            }
            (other @ ("wait" | "respond" | "stream_publish" | "follow"), Some(_)) => {
                let _ = tx.send(outcome(req, "fail", format!("{other} is not part of the workload init named")));
            }
            (other, _) => {
                let _ = tx.send(outcome(req, "fail", format!("unknown op {other:?}")));
            }
        }
    }
    if let Some(s) = implementation.take() {
        s.shutdown().await;
    }
    drop(tx);
    let _ = writer.await;
    Ok(())
}
