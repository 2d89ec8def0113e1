//! The recorded history of a run: every operation as invoke / ok / fail / info events with a
//! monotonic timestamp (Jepsen's model), saved as JSON lines.
//!
//! `info` means the outcome is unknown (a timeout on a write that may have happened): a
//! checker must treat such an operation as possibly applied, never as certainly not.
//! Checkers ([`crate::checker`]) are pure functions of a `History`; nothing here talks to
//! Redis.

use std::io::{BufRead, Write};

use serde::{Deserialize, Serialize};

/// What happened to an operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Invoke,
    Ok,
    Fail,
    Info,
}

/// The operations a workload performs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "f", rename_all = "snake_case")]
pub enum Op {
    /// Deliver the response `token` for `id`. Ok: acknowledged (stored, or published for
    /// pub/sub-only).
    Respond { id: String, token: String },
    /// Wait for `id`. Ok: obtained `token` (set on ok), `via` how it came.
    Wait {
        id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        via: Option<String>,
        /// A worker resuming from a checkpoint (it did not wait while the response came).
        #[serde(default)]
        resume: bool,
        /// The timeout the wait was given, in ms (on the invoke), so the timeout-accuracy
        /// check can judge when it ended.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_ms: Option<u64>,
    },
    /// Append chunk `index` to stream `task`. Ok: acknowledged.
    Produce { task: String, index: u64, last: bool },
    /// A consumer of `task` handed chunk `index` to the application; `via` is what prompted
    /// the read that found it (`notified`, `polled`, `resync`, `immediate`...).
    Deliver {
        task: String,
        consumer: u32,
        index: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        via: Option<String>,
    },
    /// A consumer of `task` finished (ok: saw the final chunk; fail: timed out).
    Follow { task: String, consumer: u32, from: u64 },
    /// Resource readings; `phase` is `baseline` (before the workload) or `final` (after the
    /// run quiesced).
    Observe { phase: String, reading: Reading },
    /// The nemesis opened (`apply`) or closed (`heal`) the fault window.
    Nemesis { action: String, faults: String },
    /// A fan-out tick with sequence `seq` was published (seed `004_*`).
    Tick { seq: u64 },
    /// A fan-out control signal (`RESET`, `SHUTDOWN`) was published on the control channel.
    Control { signal: String },
    /// The fan-out worker took tick `seq` from its queue, or a RESET marker.
    Take { seq: u64, reset: bool },
    /// The fan-out consumer's counters after it stopped.
    FanoutCounters { counters: FanoutCounters },
    /// The implementation's own count of subscriber reconnections went up to `count`
    /// (sampled from what it exposes; it knows nothing of faults). The detection check reads
    /// when a dead subscriber was noticed from these.
    Reconnected { count: u64 },
    /// An implementation the harness did not write broke the process protocol: it crashed,
    /// printed a line that is not the protocol, or did not answer in time (see
    /// `crate::external`).
    Problem { what: String },
}

/// What a fan-out consumer counted (see `reference::fanout::FanoutStats`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FanoutCounters {
    pub received: u64,
    pub enqueued: u64,
    pub dropped_overflow: u64,
    pub dropped_lagged: u64,
    pub stale_skipped: u64,
    pub malformed: u64,
    /// RESET signals handled; each is queued for the worker like a message.
    pub resets: u64,
}

/// What cleanup checks compare between the baseline and the end of a run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reading {
    /// Subscriptions on the run's channels (`PUBSUB NUMSUB` summed).
    pub subscriptions: u64,
    /// Client connections at the server, the harness's own inspection connections excluded.
    pub connections: u64,
    /// Keys under the run's prefix without a TTL.
    pub keys_without_ttl: u64,
    /// Waiters still registered in the implementation's maps.
    pub waiters: u64,
    /// `INFO memory` `used_memory`, in bytes.
    pub used_memory_bytes: u64,
    /// `INFO stats` `total_commands_processed`.
    #[serde(default)]
    pub commands_processed: u64,
    /// Subscriber reconnections the implementation made so far.
    #[serde(default)]
    pub reconnects: u64,
    /// Ids in the implementation's storage poller's pending set (a cancelled wait must not
    /// leave one behind).
    #[serde(default)]
    pub pending_polls: u64,
}

/// One event of the history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Microseconds since the run started (monotonic clock).
    pub time_us: u64,
    /// The logical process (actor) that performed the operation; an invoke and its
    /// completion share it.
    pub process: u32,
    #[serde(rename = "type")]
    pub kind: Kind,
    #[serde(flatten)]
    pub op: Op,
    /// Free text: the reason of a fail or info.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// A whole history, in recording order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct History {
    pub events: Vec<Event>,
}

/// An invoke paired with its completion (`None` while still open at the end of the run).
#[derive(Clone, Debug)]
pub struct Completed<'a> {
    pub invoke: &'a Event,
    pub completion: Option<&'a Event>,
}

impl History {
    pub fn push(&mut self, e: Event) {
        self.events.push(e);
    }

    /// Pairs each invoke with the next completion of the same process.
    pub fn operations(&self) -> Vec<Completed<'_>> {
        let mut open: std::collections::HashMap<u32, usize> = std::collections::HashMap::new();
        let mut out: Vec<Completed<'_>> = Vec::new();
        for e in &self.events {
            match e.kind {
                Kind::Invoke => {
                    open.insert(e.process, out.len());
                    out.push(Completed { invoke: e, completion: None });
                }
                _ => match open.remove(&e.process) {
                    Some(i) => out[i].completion = Some(e),
                    // A completion without an invoke (deliveries, observations) stands alone.
                    None => out.push(Completed { invoke: e, completion: Some(e) }),
                },
            }
        }
        out
    }

    /// Writes the history as JSON lines.
    pub fn write_jsonl(&self, mut w: impl Write) -> std::io::Result<()> {
        for e in &self.events {
            serde_json::to_writer(&mut w, e)?;
            w.write_all(b"\n")?;
        }
        Ok(())
    }

    /// Reads JSON lines; blank lines are skipped. An error names the line.
    pub fn read_jsonl(r: impl BufRead) -> Result<History, String> {
        let mut events = Vec::new();
        for (n, line) in r.lines().enumerate() {
            let line = line.map_err(|e| format!("line {}: {e}", n + 1))?;
            if line.trim().is_empty() {
                continue;
            }
            events.push(serde_json::from_str(&line).map_err(|e| format!("line {}: {e}", n + 1))?);
        }
        Ok(History { events })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(time_us: u64, process: u32, kind: Kind, op: Op) -> Event {
        Event { time_us, process, kind, op, note: None }
    }

    #[test]
    fn jsonl_round_trips() {
        let mut h = History::default();
        h.push(ev(1, 0, Kind::Invoke, Op::Respond { id: "a".into(), token: "t".into() }));
        h.push(ev(2, 0, Kind::Ok, Op::Respond { id: "a".into(), token: "t".into() }));
        h.push(ev(3, 1, Kind::Ok, Op::Deliver { task: "s".into(), consumer: 1, index: 0, via: None }));
        let mut buf = Vec::new();
        h.write_jsonl(&mut buf).unwrap();
        let text = String::from_utf8(buf.clone()).unwrap();
        assert!(text.lines().next().unwrap().contains(r#""type":"invoke""#), "{text}");
        assert_eq!(History::read_jsonl(&buf[..]).unwrap(), h);
        assert!(History::read_jsonl(&b"{not json}\n"[..]).unwrap_err().starts_with("line 1"));
    }

    #[test]
    fn operations_pair_invokes_with_completions() {
        let mut h = History::default();
        h.push(ev(1, 0, Kind::Invoke, Op::Respond { id: "a".into(), token: "t".into() }));
        h.push(ev(2, 1, Kind::Invoke, Op::Respond { id: "b".into(), token: "u".into() }));
        h.push(ev(3, 0, Kind::Fail, Op::Respond { id: "a".into(), token: "t".into() }));
        let ops = h.operations();
        assert_eq!(ops.len(), 2);
        assert_eq!(ops[0].completion.map(|c| c.kind), Some(Kind::Fail));
        assert!(ops[1].completion.is_none(), "b is still open");
    }
}
