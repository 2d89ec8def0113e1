//! Checkers: pure functions of a recorded [`History`], each returning a [`Verdict`] (valid,
//! invalid or unknown) with the evidence.
//!
//! Safety (what was lost, duplicated, reordered) is judged apart from liveness (how fast,
//! whether resources came back). `Unknown` is an answer, not a failure to answer: a checker
//! says it when the history cannot decide (nobody ever asked for an id, an observation is
//! missing), and the run reports it instead of guessing.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::history::{Event, History, Kind, Op, Reading};

pub mod liveness;
pub use liveness::{delivery, detection, exercised, fallback, recovery, rescues, timeouts, wakeup, Bounds};

/// The outcome of one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Validity {
    Valid,
    Invalid,
    Unknown,
}

impl Validity {
    /// Invalid beats unknown beats valid: the combined verdict of several checks.
    pub fn and(self, other: Validity) -> Validity {
        match (self, other) {
            (Validity::Invalid, _) | (_, Validity::Invalid) => Validity::Invalid,
            (Validity::Unknown, _) | (_, Validity::Unknown) => Validity::Unknown,
            _ => Validity::Valid,
        }
    }
}

/// A checker's verdict with its evidence (at most [`EVIDENCE_ITEMS_MAX`] lines) and, where it
/// measures something, the figures.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Verdict {
    pub checker: &'static str,
    pub validity: Validity,
    pub evidence: Vec<String>,
    #[serde(skip_serializing_if = "serde_json::Value::is_null")]
    pub stats: serde_json::Value,
}

/// Evidence lines kept per verdict; the count of the rest is appended.
pub const EVIDENCE_ITEMS_MAX: usize = 20;

pub(crate) fn verdict(checker: &'static str, invalid: Vec<String>, unknown: Vec<String>) -> Verdict {
    let validity = if !invalid.is_empty() {
        Validity::Invalid
    } else if !unknown.is_empty() {
        Validity::Unknown
    } else {
        Validity::Valid
    };
    let mut evidence: Vec<String> = invalid.into_iter().chain(unknown).collect();
    if evidence.len() > EVIDENCE_ITEMS_MAX {
        let more = evidence.len() - EVIDENCE_ITEMS_MAX;
        evidence.truncate(EVIDENCE_ITEMS_MAX);
        evidence.push(format!("... and {more} more"));
    }
    Verdict { checker, validity, evidence, stats: serde_json::Value::Null }
}

/// A completed respond or wait, flattened for the feedback checkers.
pub(crate) struct FeedbackOp<'a> {
    pub(crate) invoke_us: u64,
    pub(crate) end: Option<&'a Event>,
}

pub(crate) struct Responses<'a> {
    /// id -> (respond op, token)
    pub(crate) responds: BTreeMap<&'a str, Vec<(FeedbackOp<'a>, &'a str)>>,
    /// id -> wait ops (resume flag on the invoke)
    pub(crate) waits: BTreeMap<&'a str, Vec<(FeedbackOp<'a>, bool)>>,
}

pub(crate) fn feedback_ops(h: &History) -> Responses<'_> {
    let mut r = Responses { responds: BTreeMap::new(), waits: BTreeMap::new() };
    for op in h.operations() {
        let fo = FeedbackOp { invoke_us: op.invoke.time_us, end: op.completion };
        match &op.invoke.op {
            Op::Respond { id, token } => r.responds.entry(id.as_str()).or_default().push((fo, token.as_str())),
            Op::Wait { id, resume, .. } => r.waits.entry(id.as_str()).or_default().push((fo, *resume)),
            _ => {}
        }
    }
    r
}

pub(crate) fn obtained_token(e: &Event) -> Option<&str> {
    match (&e.kind, &e.op) {
        (Kind::Ok, Op::Wait { token, .. }) => token.as_deref(),
        _ => None,
    }
}

pub(crate) fn acked_at(op: &FeedbackOp<'_>) -> Option<u64> {
    op.end.filter(|e| e.kind == Kind::Ok).map(|e| e.time_us)
}

/// **lost**: an acknowledged response that no waiter or resumer obtained although one asked
/// after it was acknowledged. Also invalid: a waiter obtaining a token nobody responded (on
/// any id, answered or not), a response with no token, or a token before its respond began;
/// and a response reported failed that was delivered anyway (the failure report lied).
pub fn lost(h: &History) -> Verdict {
    let ops = feedback_ops(h);
    let (mut invalid, mut unknown) = (Vec::new(), Vec::new());
    for (id, responds) in &ops.responds {
        let waits = ops.waits.get(id).map(Vec::as_slice).unwrap_or(&[]);
        let tokens: Vec<&str> = waits.iter().filter_map(|(w, _)| w.end.and_then(obtained_token)).collect();
        for (r, token) in responds {
            let delivered = tokens.contains(token);
            match r.end.map(|e| e.kind) {
                Some(Kind::Ok) if !delivered => {
                    let ack = acked_at(r).expect("ok has a time");
                    let asked_after = waits.iter().any(|(w, _)| w.end.is_some_and(|e| e.time_us >= ack));
                    if asked_after {
                        invalid.push(format!("{id}: response {token} acknowledged at {ack} us, never obtained"));
                    } else {
                        unknown.push(format!("{id}: response {token} acknowledged, but nobody asked afterwards"));
                    }
                }
                Some(Kind::Fail) if delivered => {
                    invalid.push(format!("{id}: response {token} reported failed, yet a waiter obtained it"))
                }
                _ => {}
            }
        }
    }
    // Every value obtained, on every id (answered or not), must be one somebody responded,
    // and obtained no earlier than that respond began: an implementation that answers at once
    // with an empty or foreign value is judged here, not mistaken for a broken machine. Its
    // made-up answers lead the evidence: they say more than the losses they cause.
    let lost_lines = std::mem::take(&mut invalid);
    for (id, waits) in &ops.waits {
        let responds = ops.responds.get(id).map(Vec::as_slice).unwrap_or(&[]);
        for end in waits.iter().filter_map(|(w, _)| w.end).filter(|e| e.kind == Kind::Ok) {
            let at = end.time_us;
            match obtained_token(end) {
                None => invalid.push(format!(
                    "{id}: a waiter obtained a response with no token at {at} us: nothing anybody responded"
                )),
                Some(t) => match responds.iter().find(|(_, rt)| *rt == t) {
                    None => invalid.push(format!("{id}: a waiter obtained {t}, which nobody responded")),
                    Some((r, _)) if at < r.invoke_us => invalid.push(format!(
                        "{id}: a waiter obtained {t} at {at} us, before its respond began at {} us",
                        r.invoke_us
                    )),
                    Some(_) => {}
                },
            }
        }
    }
    invalid.extend(lost_lines);
    verdict("lost", invalid, unknown)
}

/// **protocol**: an implementation driven over the process protocol kept to it: it did not
/// crash, every line it printed was an answer, and every answer came in time. Each problem
/// is a finding with its evidence (and the program's stderr file).
pub fn protocol(h: &History) -> Verdict {
    let problems: Vec<String> = h
        .events
        .iter()
        .filter_map(|e| match &e.op {
            Op::Problem { what } => Some(format!("at {} us: {what}", e.time_us)),
            _ => None,
        })
        .collect();
    verdict("protocol", problems, Vec::new())
}

/// **phantom**: every value a live waiter obtained is in storage afterwards: a later read of
/// the same id (a resumer, or the final reads, which read storage first) finds it. A value
/// handed out that storage never got (a hint carrying a payload published before a write
/// that then failed) is a phantom read. For designs that store; unknown when no later read
/// of an obtained id happened.
pub fn phantom(h: &History) -> Verdict {
    let ops = feedback_ops(h);
    let (mut invalid, mut judged) = (Vec::new(), 0u64);
    for (id, waits) in &ops.waits {
        let responded_after = |t: u64| ops.responds.get(id).is_some_and(|rs| rs.iter().any(|(r, _)| r.invoke_us > t));
        for (w, resume) in waits {
            let Some(end) = w.end else { continue };
            let Some(token) = obtained_token(end).filter(|_| !*resume) else { continue };
            let later: Vec<&Event> = waits
                .iter()
                .filter(|(x, _)| x.invoke_us > end.time_us)
                .filter_map(|(x, _)| x.end)
                .filter(|e| e.kind != Kind::Info)
                .collect();
            // Nobody read it again, or a later response replaced it: nothing to compare.
            if later.is_empty() || responded_after(end.time_us) {
                continue;
            }
            judged += 1;
            if !later.iter().any(|e| obtained_token(e) == Some(token)) {
                let found: Vec<&str> = later.iter().map(|e| obtained_token(e).unwrap_or("nothing")).collect();
                invalid.push(format!(
                    "{id}: a waiter obtained {token} at {} us, but storage had {} when read again: a phantom read",
                    end.time_us,
                    found.join(", ")
                ));
            }
        }
    }
    let mut v = verdict("phantom", invalid, Vec::new());
    v.stats = serde_json::json!({ "judged": judged });
    v
}

/// **resume**: a worker resuming after a checkpoint finds every response acknowledged before
/// it started; a resumer that comes back empty-handed is invalid.
pub fn resume(h: &History) -> Verdict {
    let ops = feedback_ops(h);
    let mut invalid = Vec::new();
    let mut resumers = 0;
    for (id, waits) in &ops.waits {
        let acked: Vec<(u64, &str)> = ops
            .responds
            .get(id)
            .map(|rs| rs.iter().filter_map(|(r, t)| acked_at(r).map(|a| (a, *t))).collect())
            .unwrap_or_default();
        for (w, is_resume) in waits.iter().filter(|(_, r)| *r) {
            resumers += 1;
            let _ = is_resume;
            let Some(first_ack) = acked.iter().filter(|(a, _)| *a <= w.invoke_us).map(|(a, _)| *a).min() else {
                continue;
            };
            match w.end {
                Some(e) if obtained_token(e).is_some() => {}
                Some(e) => invalid.push(format!(
                    "{id}: resumed at {} us after the response was acknowledged at {first_ack} us, ended {:?}",
                    w.invoke_us, e.kind
                )),
                None => invalid.push(format!("{id}: resumed at {} us and never returned", w.invoke_us)),
            }
        }
    }
    let mut v = verdict("resume", invalid, Vec::new());
    if resumers == 0 {
        v.validity = Validity::Unknown;
        v.evidence.push("no resume in the history".into());
    }
    v
}

/// **duplicated**: a consumer handed the same chunk to the application more than once.
pub fn duplicated(h: &History) -> Verdict {
    let mut seen: HashMap<(&str, u32, u64), u32> = HashMap::new();
    for e in &h.events {
        if let (Kind::Ok, Op::Deliver { task, consumer, index, .. }) = (&e.kind, &e.op) {
            *seen.entry((task.as_str(), *consumer, *index)).or_default() += 1;
        }
    }
    let mut invalid: Vec<String> = seen
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|((t, c, i), n)| format!("{t}: consumer {c} got chunk {i} {n} times"))
        .collect();
    invalid.sort();
    verdict("duplicated", invalid, Vec::new())
}

/// **order**: each consumer's deliveries run `from, from+1, ...` with no gap or reordering,
/// and a consumer that finished, or gave up after the final chunk was acknowledged, got every
/// acknowledged chunk through the final one (a consumer stuck behind a gap times out: that
/// is loss, not patience).
pub fn order(h: &History) -> Verdict {
    let mut invalid = Vec::new();
    let mut last_acked: HashMap<&str, u64> = HashMap::new();
    let mut final_index: HashMap<&str, u64> = HashMap::new();
    let mut final_acked_at: HashMap<&str, u64> = HashMap::new();
    for op in h.operations() {
        if let (Op::Produce { task, index, last }, Some(end)) = (&op.invoke.op, op.completion) {
            if end.kind == Kind::Ok {
                let e = last_acked.entry(task.as_str()).or_default();
                *e = (*e).max(*index);
                if *last {
                    final_index.insert(task.as_str(), *index);
                    final_acked_at.insert(task.as_str(), end.time_us);
                }
            }
        }
    }
    let mut next: HashMap<(&str, u32), u64> = HashMap::new();
    for op in h.operations() {
        match (&op.invoke.op, op.completion) {
            (Op::Follow { task, consumer, from }, _) if op.invoke.kind == Kind::Invoke => {
                next.insert((task.as_str(), *consumer), *from);
            }
            _ => {}
        }
    }
    let mut delivered_to: HashMap<(&str, u32), u64> = HashMap::new();
    for e in &h.events {
        match (&e.kind, &e.op) {
            (Kind::Ok, Op::Deliver { task, consumer, index, .. }) => {
                let key = (task.as_str(), *consumer);
                let expect = next.entry(key).or_insert(*index);
                if *index != *expect {
                    invalid.push(format!("{task}: consumer {consumer} got chunk {index}, expected {expect}"));
                }
                *expect = index + 1;
                delivered_to.insert(key, *index);
            }
            (Kind::Ok | Kind::Fail, Op::Follow { task, consumer, from }) => {
                let settled = e.kind == Kind::Ok || final_acked_at.get(task.as_str()).is_some_and(|t| e.time_us >= *t);
                if !settled {
                    continue;
                }
                let upto = final_index.get(task.as_str()).or_else(|| last_acked.get(task.as_str())).copied();
                let got = delivered_to.get(&(task.as_str(), *consumer)).copied();
                if let Some(upto) = upto {
                    if upto >= *from && got != Some(upto) {
                        invalid.push(format!(
                            "{task}: consumer {consumer} finished at {got:?}, chunks through {upto} were acknowledged"
                        ));
                    }
                }
            }
            _ => {}
        }
    }
    verdict("order", invalid, Vec::new())
}

/// **fanout**: a bounded consumer behind a slow worker accounts for every message it
/// received (enqueued, dropped on overflow or lag, skipped as stale, malformed: nothing
/// vanishes silently), its worker takes every enqueued message, in increasing sequence
/// between resets, and every RESET published reached the consumer (one that never did leaves
/// the restarted producer's fresh sequences to be skipped as stale). A run in which nothing
/// overflowed is `unknown`: it tested nothing.
pub fn fanout(h: &History) -> Verdict {
    let counters = h.events.iter().rev().find_map(|e| match &e.op {
        Op::FanoutCounters { counters } => Some(counters.clone()),
        _ => None,
    });
    let Some(c) = counters else {
        return verdict("fanout", Vec::new(), vec!["no fan-out counters in the history".into()]);
    };
    let mut invalid = Vec::new();
    // RESET markers are queued (or dropped) like messages, so they count on both sides.
    let accounted = c.enqueued + c.dropped_overflow + c.dropped_lagged + c.stale_skipped + c.malformed;
    if accounted != c.received + c.resets {
        invalid.push(format!("received {} (+{} resets) but accounted for {accounted}: {c:?}", c.received, c.resets));
    }
    let published_resets = h
        .events
        .iter()
        .filter(|e| e.kind == Kind::Ok && matches!(&e.op, Op::Control { signal } if signal == "RESET"))
        .count() as u64;
    if c.resets < published_resets {
        invalid.push(format!("{published_resets} RESET published, {} reached the consumer", c.resets));
    }
    let takes: Vec<(u64, bool)> = h
        .events
        .iter()
        .filter_map(|e| match (&e.kind, &e.op) {
            (Kind::Ok, Op::Take { seq, reset }) => Some((*seq, *reset)),
            _ => None,
        })
        .collect();
    if takes.len() as u64 != c.enqueued {
        invalid.push(format!("{} enqueued, {} taken by the worker", c.enqueued, takes.len()));
    }
    let mut last: Option<u64> = None;
    for (seq, reset) in takes {
        if reset {
            last = None;
            continue;
        }
        if last.is_some_and(|l| seq <= l) {
            invalid.push(format!("tick {seq} taken after {}", last.unwrap_or_default()));
        }
        last = Some(seq);
    }
    let unknown = if c.dropped_overflow == 0 && invalid.is_empty() {
        vec!["nothing overflowed: the slow consumer was not slow enough to test the bound".to_string()]
    } else {
        Vec::new()
    };
    let mut v = verdict("fanout", invalid, unknown);
    v.stats = serde_json::to_value(&c).expect("counters serialise");
    v
}

/// Limits the cleanup check allows.
#[derive(Clone, Copy, Debug)]
pub struct CleanupLimits {
    /// Growth of `used_memory` from baseline to the end, in bytes.
    pub memory_growth_bytes_max: u64,
}

impl Default for CleanupLimits {
    fn default() -> Self {
        CleanupLimits { memory_growth_bytes_max: 8 * 1024 * 1024 }
    }
}

/// **cleanup**: after the run quiesced, subscriptions and connections are back to baseline,
/// no key of the run lacks a TTL, no waiter is registered and no id is left in the storage
/// poller's pending set, memory growth is bounded.
/// Subscriptions and waiters are taken from the `settled` reading when there is one (made
/// while the implementation still runs: after it shuts down, the server drops its
/// subscriptions anyway and would hide a leak).
pub fn cleanup(h: &History, limits: CleanupLimits) -> Verdict {
    let reading = |phase: &str| -> Option<&Reading> {
        h.events.iter().rev().find_map(|e| match &e.op {
            Op::Observe { phase: p, reading } if p == phase => Some(reading),
            _ => None,
        })
    };
    let (Some(base), Some(end)) = (reading("baseline"), reading("final")) else {
        return verdict("cleanup", Vec::new(), vec!["no baseline and final observation in the history".into()]);
    };
    let live = reading("settled").unwrap_or(end);
    let mut invalid = Vec::new();
    if live.subscriptions > base.subscriptions {
        invalid.push(format!("subscriptions {} -> {}", base.subscriptions, live.subscriptions));
    }
    if end.connections > base.connections {
        invalid.push(format!("connections {} -> {}", base.connections, end.connections));
    }
    if end.keys_without_ttl > 0 {
        invalid.push(format!("{} keys without a TTL", end.keys_without_ttl));
    }
    if live.waiters.max(end.waiters) > 0 {
        invalid.push(format!("{} waiters still registered", live.waiters.max(end.waiters)));
    }
    if live.pending_polls.max(end.pending_polls) > 0 {
        invalid.push(format!("{} ids still in the poller's pending set", live.pending_polls.max(end.pending_polls)));
    }
    let growth = end.used_memory_bytes.saturating_sub(base.used_memory_bytes);
    if growth > limits.memory_growth_bytes_max {
        invalid.push(format!("used_memory grew by {growth} bytes (limit {})", limits.memory_growth_bytes_max));
    }
    let mut v = verdict("cleanup", invalid, Vec::new());
    v.stats = serde_json::json!({ "baseline": base, "final": end });
    v
}

/// Respond-to-obtain latency of waiters that were already waiting when the response came
/// (resumers excluded: they measure the checkpoint gap, not the notification path).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct LatencyStats {
    pub samples: u64,
    /// Obtained after a Pub/Sub notification.
    pub notified: u64,
    /// Obtained by a storage read not prompted by a notification (poll, resync, re-read).
    pub rescued_by_polling: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// Respond-to-obtain latencies of live waiters, in ms, in history order: the samples
/// [`latency`] summarises (resumers, and waits begun after the respond, excluded).
pub fn latency_samples_ms(h: &History) -> Vec<f64> {
    let ops = feedback_ops(h);
    let mut out = Vec::new();
    for (id, responds) in &ops.responds {
        for (r, token) in responds {
            for (w, is_resume) in ops.waits.get(id).map(Vec::as_slice).unwrap_or(&[]) {
                let Some(end) = w.end.filter(|e| obtained_token(e) == Some(*token)) else { continue };
                if !*is_resume && w.invoke_us <= r.invoke_us {
                    out.push(end.time_us.saturating_sub(r.invoke_us) as f64 / 1000.0);
                }
            }
        }
    }
    out
}

/// Largest latency the histogram resolves, in microseconds (one hour); longer ones count as
/// this.
const LATENCY_US_MAX: u64 = 3_600_000_000;

/// The wake-latency bound a run must meet, with what faults excuse. A notification-woken
/// waiter should have its response within `base_ms`; a latency fault adds `latency_factor`
/// times its delay (latency + jitter) per hop it may sit on; every other fault (restarts,
/// outages, resets, blackholes...) excuses samples that overlap it or the `recovery_ms` after
/// its heal, since reconnecting is allowed to take a poll interval.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LatencyBound {
    pub base_ms: f64,
    pub latency_factor: f64,
    pub recovery_ms: f64,
}

/// A fault window read from the history's nemesis events, in microseconds.
struct FaultWindow {
    from_us: u64,
    to_us: u64,
    /// `Some(delay_ms)` when every fault of the window only delays (latency toxics).
    delay_ms: Option<f64>,
}

/// The fault windows of a history: each `apply` up to the next `heal` (or the end).
fn fault_windows(h: &History) -> Vec<FaultWindow> {
    let mut windows: Vec<FaultWindow> = Vec::new();
    let mut open: Option<(u64, Option<f64>)> = None;
    for e in &h.events {
        let Op::Nemesis { action, faults } = &e.op else { continue };
        match action.as_str() {
            "apply" => {
                // Unparseable descriptions count as disruptive: never excuse less than we know.
                let parsed: Vec<crate::nemesis::Fault> = serde_json::from_str(faults).unwrap_or_default();
                let delay = parsed
                    .iter()
                    .map(|f| match f {
                        crate::nemesis::Fault::Latency { latency_ms, jitter_ms, .. } => {
                            Some((latency_ms + jitter_ms) as f64)
                        }
                        _ => None,
                    })
                    .try_fold(0.0f64, |acc, d| d.map(|d| acc.max(d)))
                    .filter(|_| !parsed.is_empty());
                open = Some((e.time_us, delay));
            }
            _ => {
                if let Some((from_us, delay_ms)) = open.take() {
                    windows.push(FaultWindow { from_us, to_us: e.time_us, delay_ms });
                }
            }
        }
    }
    if let Some((from_us, delay_ms)) = open {
        windows.push(FaultWindow { from_us, to_us: u64::MAX, delay_ms });
    }
    windows
}

/// The bound for a sample spanning `[from_us, to_us]`, or `None` when a fault excuses it.
fn bound_for(b: &LatencyBound, windows: &[FaultWindow], from_us: u64, to_us: u64) -> Option<f64> {
    let recovery_us = (b.recovery_ms * 1000.0) as u64;
    let mut allowance = 0.0f64;
    for w in windows {
        if from_us > w.to_us.saturating_add(recovery_us) || to_us < w.from_us {
            continue;
        }
        match w.delay_ms {
            Some(d) => allowance = allowance.max(b.latency_factor * d),
            None => return None,
        }
    }
    Some(b.base_ms + allowance)
}

/// **latency**: quantiles of respond-to-obtain, split into notified vs rescued by polling.
/// Invalid only when a `bound` is given and a sample outside every excusing fault exceeds
/// it.
pub fn latency(h: &History, bound: Option<&LatencyBound>) -> Verdict {
    let ops = feedback_ops(h);
    let windows = fault_windows(h);
    let mut excused = 0u64;
    let mut hist =
        hdrhistogram::Histogram::<u64>::new_with_bounds(1, LATENCY_US_MAX, 3).expect("static bounds are valid");
    let mut stats = LatencyStats::default();
    let mut invalid = Vec::new();
    for (id, responds) in &ops.responds {
        for (r, token) in responds {
            for (w, is_resume) in ops.waits.get(id).map(Vec::as_slice).unwrap_or(&[]) {
                let Some(end) = w.end.filter(|e| obtained_token(e) == Some(*token)) else { continue };
                if *is_resume || w.invoke_us > r.invoke_us {
                    continue;
                }
                let us = end.time_us.saturating_sub(r.invoke_us);
                hist.saturating_record(us.clamp(1, LATENCY_US_MAX));
                stats.samples += 1;
                match &end.op {
                    Op::Wait { via: Some(v), .. } if v == "notified" => stats.notified += 1,
                    _ => stats.rescued_by_polling += 1,
                }
                if let Some(b) = bound {
                    match bound_for(b, &windows, r.invoke_us, end.time_us) {
                        Some(limit) if us as f64 / 1000.0 > limit => invalid.push(format!(
                            "{id}: obtained {:.1} ms after the respond (bound {limit:.0} ms)",
                            us as f64 / 1000.0
                        )),
                        Some(_) => {}
                        None => excused += 1,
                    }
                }
            }
        }
    }
    if stats.samples > 0 {
        let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
        (stats.p50_ms, stats.p90_ms, stats.p99_ms, stats.max_ms) =
            (ms(0.5), ms(0.9), ms(0.99), hist.max() as f64 / 1000.0);
    }
    let mut v = verdict("latency", invalid, Vec::new());
    v.stats = serde_json::to_value(&stats).expect("stats serialise");
    if bound.is_some() {
        v.stats["excused_by_faults"] = excused.into();
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny history builder: each call appends one event at the next microsecond.
    #[derive(Default)]
    struct B {
        h: History,
        t: u64,
    }

    impl B {
        fn at(mut self, t: u64) -> Self {
            self.t = t;
            self
        }
        fn e(mut self, process: u32, kind: Kind, op: Op) -> Self {
            self.t += 1;
            self.h.push(Event { time_us: self.t, process, kind, op, note: None });
            self
        }
        fn respond(self, p: u32, kind: Kind, id: &str, token: &str) -> Self {
            let op = || Op::Respond { id: id.into(), token: token.into() };
            self.e(p, Kind::Invoke, op()).e(p, kind, op())
        }
        fn wait(self, p: u32, id: &str, resume: bool, got: Option<(&str, &str)>) -> Self {
            let inv = Op::Wait { id: id.into(), token: None, via: None, resume, timeout_ms: None };
            let (kind, done) = match got {
                Some((t, via)) => (
                    Kind::Ok,
                    Op::Wait { id: id.into(), token: Some(t.into()), via: Some(via.into()), resume, timeout_ms: None },
                ),
                None => (Kind::Fail, inv.clone()),
            };
            self.e(p, Kind::Invoke, inv).e(p, kind, done)
        }
        fn wait_open(self, p: u32, id: &str) -> Self {
            self.e(p, Kind::Invoke, Op::Wait { id: id.into(), token: None, via: None, resume: false, timeout_ms: None })
        }
        fn wait_done(self, p: u32, id: &str, got: Option<(&str, &str)>) -> Self {
            match got {
                Some((t, via)) => self.e(
                    p,
                    Kind::Ok,
                    Op::Wait {
                        id: id.into(),
                        token: Some(t.into()),
                        via: Some(via.into()),
                        resume: false,
                        timeout_ms: None,
                    },
                ),
                None => self.e(
                    p,
                    Kind::Fail,
                    Op::Wait { id: id.into(), token: None, via: None, resume: false, timeout_ms: None },
                ),
            }
        }
        fn deliver(self, consumer: u32, index: u64) -> Self {
            self.e(100 + consumer, Kind::Ok, Op::Deliver { task: "s".into(), consumer, index, via: None })
        }
        fn produce(self, index: u64, last: bool) -> Self {
            let op = || Op::Produce { task: "s".into(), index, last };
            self.e(0, Kind::Invoke, op()).e(0, Kind::Ok, op())
        }
        fn follow(self, consumer: u32, from: u64, kind: Kind) -> Self {
            let op = || Op::Follow { task: "s".into(), consumer, from };
            self.e(200 + consumer, kind, op())
        }
        fn observe(self, phase: &str, reading: Reading) -> Self {
            self.e(999, Kind::Ok, Op::Observe { phase: phase.into(), reading })
        }
    }

    #[test]
    fn lost_passes_when_every_ack_is_obtained() {
        let h = B::default().respond(0, Kind::Ok, "a", "t1").wait(1, "a", true, Some(("t1", "immediate"))).h;
        assert_eq!(lost(&h).validity, Validity::Valid);
    }

    #[test]
    fn lost_fails_when_an_ack_is_never_obtained() {
        let h = B::default().respond(0, Kind::Ok, "a", "t1").wait(1, "a", true, None).h;
        let v = lost(&h);
        assert_eq!(v.validity, Validity::Invalid, "{v:?}");
        assert!(v.evidence[0].contains("never obtained"));
    }

    #[test]
    fn lost_is_unknown_when_nobody_asked_after_the_ack() {
        let h = B::default().wait(1, "a", false, None).respond(0, Kind::Ok, "a", "t1").h;
        assert_eq!(lost(&h).validity, Validity::Unknown);
    }

    #[test]
    fn lost_does_not_blame_an_unknown_or_failed_respond() {
        let h =
            B::default().respond(0, Kind::Info, "a", "t1").respond(0, Kind::Fail, "b", "t2").wait(1, "a", true, None).h;
        assert_eq!(lost(&h).validity, Validity::Valid);
    }

    #[test]
    fn lost_catches_a_lying_failure_and_a_phantom_token() {
        let h = B::default().respond(0, Kind::Fail, "a", "t1").wait(1, "a", true, Some(("t1", "immediate"))).h;
        assert_eq!(lost(&h).validity, Validity::Invalid);
        let h = B::default().respond(0, Kind::Ok, "a", "t1").wait(1, "a", true, Some(("zz", "immediate"))).h;
        let v = lost(&h);
        assert_eq!(v.validity, Validity::Invalid);
        assert!(v.evidence.iter().any(|e| e.contains("nobody responded")), "{v:?}");
    }

    #[test]
    fn lost_judges_what_an_implementation_made_up() {
        let empty = |h: B, id: &str| {
            h.e(1, Kind::Invoke, Op::Wait { id: id.into(), token: None, via: None, resume: false, timeout_ms: None }).e(
                1,
                Kind::Ok,
                Op::Wait { id: id.into(), token: None, via: Some("immediate".into()), resume: false, timeout_ms: None },
            )
        };
        // An empty answer on an id that was answered, and on one nobody answers.
        let v = lost(
            &empty(B::default().respond(0, Kind::Ok, "a", "t1").wait(2, "a", true, Some(("t1", "immediate"))), "a").h,
        );
        assert_eq!(v.validity, Validity::Invalid, "{v:?}");
        assert!(v.evidence[0].contains("no token"), "{v:?}");
        let v = lost(&empty(B::default(), "unanswered").h);
        assert_eq!(v.validity, Validity::Invalid, "{v:?}");
        // Another id's token on an id nobody answers.
        let h = B::default().respond(0, Kind::Ok, "a", "t1").wait(1, "u", false, Some(("t1", "immediate"))).h;
        let v = lost(&h);
        assert!(v.evidence.iter().any(|e| e.starts_with("u: ") && e.contains("nobody responded")), "{v:?}");
        // The right token, before its respond began (the answer came from nowhere).
        let h = B::default()
            .wait(1, "a", false, Some(("t1", "immediate")))
            .respond(0, Kind::Ok, "a", "t1")
            .wait(2, "a", true, Some(("t1", "immediate")))
            .h;
        let v = lost(&h);
        assert_eq!(v.validity, Validity::Invalid, "{v:?}");
        assert!(v.evidence[0].contains("before its respond began"), "{v:?}");
    }

    #[test]
    fn phantom_flags_a_value_storage_never_got() {
        // Obtained by a live waiter, found again by the final read: stored.
        let ok = B::default()
            .wait_open(1, "a")
            .respond(0, Kind::Ok, "a", "t1")
            .wait_done(1, "a", Some(("t1", "notified")))
            .wait(2, "a", true, Some(("t1", "immediate")))
            .h;
        assert_eq!(phantom(&ok).validity, Validity::Valid);
        assert_eq!(phantom(&ok).stats["judged"], 1);
        // The hint's payload was handed out, the write was refused: storage has nothing.
        let bad = B::default()
            .wait_open(1, "a")
            .respond(0, Kind::Fail, "a", "t1")
            .wait_done(1, "a", Some(("t1", "notified")))
            .wait(2, "a", true, None)
            .h;
        let v = phantom(&bad);
        assert_eq!(v.validity, Validity::Invalid, "{v:?}");
        assert!(v.evidence[0].contains("storage had nothing"), "{v:?}");
        // Nobody read it again: nothing to judge.
        let unread = B::default()
            .wait_open(1, "a")
            .respond(0, Kind::Ok, "a", "t1")
            .wait_done(1, "a", Some(("t1", "notified")))
            .h;
        assert_eq!(phantom(&unread).stats["judged"], 0);
    }

    #[test]
    fn resume_checks_only_what_was_acknowledged_before_it() {
        let ok = B::default().respond(0, Kind::Ok, "a", "t1").wait(1, "a", true, Some(("t1", "immediate"))).h;
        assert_eq!(resume(&ok).validity, Validity::Valid);
        let bad = B::default().respond(0, Kind::Ok, "a", "t1").wait(1, "a", true, None).h;
        assert_eq!(resume(&bad).validity, Validity::Invalid);
        // Resumed before the response existed: an empty-handed resume is fine.
        let early = B::default().wait(1, "a", true, None).respond(0, Kind::Ok, "a", "t1").h;
        assert_eq!(resume(&early).validity, Validity::Valid);
        let none = B::default().respond(0, Kind::Ok, "a", "t1").h;
        assert_eq!(resume(&none).validity, Validity::Unknown);
    }

    #[test]
    fn duplicated_flags_a_chunk_handed_over_twice() {
        let ok = B::default().deliver(1, 0).deliver(1, 1).deliver(2, 0).h;
        assert_eq!(duplicated(&ok).validity, Validity::Valid);
        let bad = B::default().deliver(1, 0).deliver(1, 1).deliver(1, 1).h;
        let v = duplicated(&bad);
        assert_eq!(v.validity, Validity::Invalid);
        assert!(v.evidence[0].contains("chunk 1 2 times"), "{v:?}");
    }

    #[test]
    fn order_flags_gaps_reordering_and_a_short_finish() {
        let base = || B::default().produce(0, false).produce(1, false).produce(2, true);
        let ok = base().follow(1, 0, Kind::Invoke).deliver(1, 0).deliver(1, 1).deliver(1, 2).follow(1, 0, Kind::Ok).h;
        assert_eq!(order(&ok).validity, Validity::Valid, "{:?}", order(&ok));
        let late_joiner = base().follow(1, 1, Kind::Invoke).deliver(1, 1).deliver(1, 2).follow(1, 1, Kind::Ok).h;
        assert_eq!(order(&late_joiner).validity, Validity::Valid);
        let gap = base().follow(1, 0, Kind::Invoke).deliver(1, 0).deliver(1, 2).follow(1, 0, Kind::Ok).h;
        assert_eq!(order(&gap).validity, Validity::Invalid);
        let stuck = base().follow(1, 0, Kind::Invoke).deliver(1, 0).follow(1, 0, Kind::Fail).h;
        assert_eq!(
            order(&stuck).validity,
            Validity::Invalid,
            "a consumer that timed out after the final ack lost chunks"
        );
        let gave_up_early =
            B::default().produce(0, false).follow(1, 0, Kind::Invoke).follow(1, 0, Kind::Fail).produce(1, true).h;
        assert_eq!(order(&gave_up_early).validity, Validity::Valid, "a timeout before the stream ended says nothing");
        let reordered = base().follow(1, 0, Kind::Invoke).deliver(1, 1).deliver(1, 0).h;
        assert_eq!(order(&reordered).validity, Validity::Invalid);
        let short = base().follow(1, 0, Kind::Invoke).deliver(1, 0).deliver(1, 1).follow(1, 0, Kind::Ok).h;
        let v = order(&short);
        assert_eq!(v.validity, Validity::Invalid);
        assert!(v.evidence.iter().any(|e| e.contains("finished at Some(1)")), "{v:?}");
    }

    #[test]
    fn cleanup_compares_final_to_baseline() {
        let base = Reading { connections: 2, used_memory_bytes: 1_000_000, ..Reading::default() };
        let ok = B::default()
            .observe("baseline", base.clone())
            .observe("final", Reading { used_memory_bytes: 1_500_000, ..base.clone() })
            .h;
        assert_eq!(cleanup(&ok, CleanupLimits::default()).validity, Validity::Valid);
        let leaky = Reading {
            subscriptions: 3,
            connections: 5,
            keys_without_ttl: 1,
            waiters: 2,
            used_memory_bytes: 100_000_000,
            commands_processed: 0,
            reconnects: 0,
            pending_polls: 4,
        };
        let bad = B::default().observe("baseline", base.clone()).observe("final", leaky).h;
        let v = cleanup(&bad, CleanupLimits::default());
        assert_eq!(v.validity, Validity::Invalid);
        assert_eq!(v.evidence.len(), 6, "every leak is named: {v:?}");
        assert!(v.evidence.iter().any(|e| e.contains("4 ids still in the poller")), "{v:?}");
        let settled_leak = B::default()
            .observe("baseline", base.clone())
            .observe("settled", Reading { subscriptions: 7, waiters: 1, ..base.clone() })
            .observe("final", base.clone())
            .h;
        let v = cleanup(&settled_leak, CleanupLimits::default());
        assert_eq!(v.validity, Validity::Invalid, "a leak seen while running is hidden by the final reading: {v:?}");
        assert_eq!(v.evidence.len(), 2, "{v:?}");
        let missing = B::default().observe("baseline", base).h;
        assert_eq!(cleanup(&missing, CleanupLimits::default()).validity, Validity::Unknown);
    }

    #[test]
    fn latency_splits_notified_from_rescued_and_applies_a_bound() {
        let h = B::default()
            .wait_open(1, "a")
            .wait_open(2, "b")
            .at(1_000)
            .respond(0, Kind::Ok, "a", "t1")
            .respond(0, Kind::Ok, "b", "t2")
            .at(3_000)
            .wait_done(1, "a", Some(("t1", "notified")))
            .at(500_000)
            .wait_done(2, "b", Some(("t2", "polled")))
            .wait(3, "a", true, Some(("t1", "immediate")))
            .h;
        let v = latency(&h, None);
        assert_eq!(v.validity, Validity::Valid);
        assert_eq!(
            (v.stats["samples"].as_u64(), v.stats["notified"].as_u64(), v.stats["rescued_by_polling"].as_u64()),
            (Some(2), Some(1), Some(1))
        );
        assert!(v.stats["max_ms"].as_f64().unwrap() > 490.0, "{v:?}");
        let b = LatencyBound { base_ms: 100.0, latency_factor: 2.0, recovery_ms: 50.0 };
        let bounded = latency(&h, Some(&b));
        assert_eq!(bounded.validity, Validity::Invalid);
        assert_eq!(bounded.evidence.len(), 1, "only the polled one breaks 100 ms: {bounded:?}");
    }

    fn nemesis(b: B, action: &str, faults: &str) -> B {
        b.e(9, Kind::Ok, Op::Nemesis { action: action.into(), faults: faults.into() })
    }

    /// A waiter rescued 300 ms after the respond, inside a fault window of `faults`.
    fn slow_sample_under(faults: &str) -> History {
        let b = B::default().wait_open(1, "a").at(1_000);
        let b = nemesis(b, "apply", faults).respond(0, Kind::Ok, "a", "t1").at(301_000);
        let b = b.wait_done(1, "a", Some(("t1", "polled")));
        nemesis(b, "heal", "").h
    }

    #[test]
    fn latency_bound_is_excused_by_disruptive_faults_only() {
        let b = LatencyBound { base_ms: 50.0, latency_factor: 2.0, recovery_ms: 100.0 };
        let down = slow_sample_under(r#"[{"fault":"redis_down"}]"#);
        assert_eq!(latency(&down, Some(&b)).validity, Validity::Valid);
        assert_eq!(latency(&down, Some(&b)).stats["excused_by_faults"], 1);
        // 20 + 10 ms of delay allows 50 + 2 * 30 = 110 ms, not 300.
        let slow = slow_sample_under(r#"[{"fault":"latency","target":"commands","latency_ms":20,"jitter_ms":10}]"#);
        let v = latency(&slow, Some(&b));
        assert_eq!(v.validity, Validity::Invalid, "{v:?}");
        assert!(v.evidence[0].contains("bound 110 ms"), "{v:?}");
        let heavy = slow_sample_under(r#"[{"fault":"latency","target":"both","latency_ms":150,"jitter_ms":0}]"#);
        assert_eq!(latency(&heavy, Some(&b)).validity, Validity::Valid);
        // A description the checker cannot read excuses, as an unknown fault must.
        assert_eq!(latency(&slow_sample_under("garbage"), Some(&b)).validity, Validity::Valid);
    }

    fn fanout_history(c: crate::history::FanoutCounters, takes: &[(u64, bool)]) -> History {
        let mut b = B::default();
        for (seq, reset) in takes {
            b = b.e(7, Kind::Ok, Op::Take { seq: *seq, reset: *reset });
        }
        b.e(8, Kind::Ok, Op::FanoutCounters { counters: c }).h
    }

    #[test]
    fn fanout_accounts_for_every_message() {
        use crate::history::FanoutCounters;
        let c = FanoutCounters {
            received: 5,
            resets: 1,
            enqueued: 3,
            dropped_overflow: 2,
            stale_skipped: 1,
            ..Default::default()
        };
        let ok = fanout_history(c.clone(), &[(1, false), (2, false), (0, true), (1, false)]);
        assert_eq!(fanout(&ok).validity, Validity::Invalid, "4 takes for 3 enqueued");
        let ok = fanout_history(c.clone(), &[(1, false), (0, true), (1, false)]);
        assert_eq!(fanout(&ok).validity, Validity::Valid, "{:?}", fanout(&ok));
        let vanished = FanoutCounters { received: 7, ..c.clone() };
        assert_eq!(fanout(&fanout_history(vanished, &[(1, false), (0, true), (1, false)])).validity, Validity::Invalid);
        let reordered = fanout_history(c.clone(), &[(2, false), (1, false), (3, false)]);
        assert_eq!(fanout(&reordered).validity, Validity::Invalid);
        // A RESET published that the consumer never counted.
        let mut lost_reset = fanout_history(c.clone(), &[(1, false), (0, true), (1, false)]);
        lost_reset.events.insert(
            0,
            Event { time_us: 1, process: 9, kind: Kind::Ok, op: Op::Control { signal: "RESET".into() }, note: None },
        );
        assert_eq!(fanout(&lost_reset).validity, Validity::Valid, "one published, one counted");
        lost_reset.events.insert(
            0,
            Event { time_us: 2, process: 9, kind: Kind::Ok, op: Op::Control { signal: "RESET".into() }, note: None },
        );
        let v = fanout(&lost_reset);
        assert_eq!(v.validity, Validity::Invalid, "{v:?}");
        assert!(v.evidence[0].contains("2 RESET published, 1 reached"), "{v:?}");
        let idle = FanoutCounters { received: 2, enqueued: 2, ..Default::default() };
        assert_eq!(fanout(&fanout_history(idle, &[(1, false), (2, false)])).validity, Validity::Unknown);
        assert_eq!(fanout(&History::default()).validity, Validity::Unknown);
    }

    #[test]
    fn validity_combines_worst_first() {
        assert_eq!(Validity::Valid.and(Validity::Unknown), Validity::Unknown);
        assert_eq!(Validity::Unknown.and(Validity::Invalid), Validity::Invalid);
        assert_eq!(Validity::Valid.and(Validity::Valid), Validity::Valid);
    }
}
