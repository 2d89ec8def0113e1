//! Liveness and recovery checks: pure functions of a history and the [`Bounds`] the
//! implementation's configuration implies.
//!
//! Loss alone is a weak invariant for the hybrid: its polling fallback rescues almost every
//! broken wake-up path, so a hybrid whose Pub/Sub side is dead still loses nothing. These
//! checks judge *how* and *when* a response was obtained:
//!
//! - [`wakeup`]: outside disruptive faults, every live waiter has its response within the
//!   clean wake bound (plus an allowance for latency faults); a wait that times out although
//!   its response was acknowledged in time is a missed response, not patience.
//! - [`fallback`]: while Pub/Sub is dead and storage answers, a response is obtained within
//!   one poll interval plus slack.
//! - [`recovery`]: after every heal, once the recovery bound has passed, fresh responses are
//!   woken by notification again (not rescued by polling), and publishes are acknowledged as
//!   `notified` again (a breaker that never closes shows here); responses acknowledged
//!   during a disruptive fault are obtained by heal + recovery bound.
//! - [`rescues`]: outside every fault window, nothing is rescued by polling: a rescue there
//!   means a wake-up was missed.
//! - [`timeouts`]: a wait with timeout T that times out ends in `[T, T + max(slack, 5 %)]`
//!   (plus the delay of an overlapping latency fault); it never ends early.
//! - [`detection`]: a subscriber that a fault killed or silenced is noticed (the
//!   implementation's own reconnect counter goes up) within the detection bound.
//! - [`exercised`]: a history in which nothing was acknowledged or obtained tested nothing:
//!   unknown, never valid.
//!
//! Each sample's regime is decided from the nemesis events alone: a window is *delay* when
//! every fault only adds latency, *pub/sub dead* when every fault hits only the subscriber
//! connection (storage still answers), *disruptive* otherwise.

use super::{acked_at, feedback_ops, obtained_token, verdict, Verdict};
use crate::history::{History, Kind, Op};
use crate::nemesis::{Fault, Target};

/// A poll that has a response within this many ms of its ack beat a hint still in flight
/// (the poll tick fell between the store and the hint's arrival): not evidence that a
/// wake-up was missed ([`rescues`], [`recovery`]). Small beside any poll interval, so a
/// waiter that truly waited for a poll tick almost never lands inside it. Seen: the Python
/// fixed design on a loaded machine, a poll 0.5 ms after the ack, called "a wake-up was
/// missed" and failing the main job.
pub const POLL_WON_RACE_MS: f64 = 10.0;

/// The bounds the checks judge by, in ms. Built from the implementation's configuration by
/// the runner (`scenario::bounds`), recorded in the report.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Bounds {
    /// A waiter woken by notification has its response within this long of the ack.
    pub wake_ms: f64,
    /// ... plus this many times the delay (latency + jitter) of an overlapping latency fault
    /// (two hops: the hint and the read).
    pub latency_factor: f64,
    /// The storage poll interval; `None` when the fallback is off for the run (its poll
    /// interval is beyond every deadline, so only the wake-up path can deliver in time).
    pub poll_interval_ms: Option<f64>,
    /// Added to the poll interval for the poller's and the waiter's reads and scheduling.
    pub fallback_slack_ms: f64,
    /// A dead or silenced subscriber is noticed within this long of the fault.
    pub detection_ms: f64,
    /// After a heal, the notification path works again within this long.
    pub recovery_ms: f64,
    /// A timed-out wait ends by `T + max(timeout_slack_ms, timeout_slack_ratio * T)`.
    pub timeout_slack_ms: f64,
    pub timeout_slack_ratio: f64,
    /// Whether the design is woken by notifications (hybrid, pub/sub-only) ...
    pub notifies: bool,
    /// ... and whether it polls storage (hybrid, polling-only).
    pub polls: bool,
}

impl Bounds {
    /// How long a live waiter may take outside faults: the wake bound for designs that are
    /// notified, a poll interval plus slack for polling alone.
    fn clean_ms(&self) -> f64 {
        match (self.notifies, self.poll_interval_ms) {
            (true, _) => self.wake_ms,
            (false, Some(p)) => p + self.fallback_slack_ms,
            (false, None) => f64::INFINITY,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum WindowKind {
    /// Only latency faults: the allowance grows by their delay.
    Delay,
    /// Only the subscriber connection is cut, silenced or throttled: storage still answers.
    PubSubDead,
    /// Anything else (restarts, outages, the command connection cut).
    Disruptive,
}

/// A fault window read from the nemesis events, in microseconds.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Window {
    pub(crate) from_us: u64,
    pub(crate) to_us: u64,
    kind: WindowKind,
    /// Largest one-way delay of the window's latency faults, in ms.
    delay_ms: f64,
    /// Whether a fault of the window kills or silences the subscriber connection.
    kills_subscriber: bool,
}

fn classify(f: &Fault) -> (WindowKind, f64, bool) {
    let sub_only = |t: &Target| *t == Target::Subscriber;
    let hits_sub = |t: &Target| *t != Target::Commands;
    match f {
        Fault::Latency { latency_ms, jitter_ms, .. } => (WindowKind::Delay, (latency_ms + jitter_ms) as f64, false),
        // On the subscriber alone: a SUBSCRIBE waits behind the one in flight (the hub sends
        // one at a time), two upstream trips, the factor's two hops. On both connections the
        // read after the confirmation crosses it too: three trips, counted as 1.5 delays.
        // (Found by the property search: a follower's first chunk 301.6 ms after its start
        // under 100 ms upstream on both, 300 allowed.)
        Fault::LatencyUpstream { target, latency_ms } => {
            let trips = if *target == Target::Both { 1.5 } else { 1.0 };
            (WindowKind::Delay, *latency_ms as f64 * trips, false)
        }
        Fault::Blackhole { target } | Fault::ResetPeer { target } | Fault::ProxyDown { target } => {
            let kind = if sub_only(target) { WindowKind::PubSubDead } else { WindowKind::Disruptive };
            (kind, 0.0, hits_sub(target))
        }
        Fault::Bandwidth { target, .. } | Fault::Slicer { target, .. } => {
            (if sub_only(target) { WindowKind::PubSubDead } else { WindowKind::Disruptive }, 0.0, false)
        }
        Fault::DropSubscribers => (WindowKind::PubSubDead, 0.0, true),
        Fault::GracefulRestart | Fault::CrashRestart | Fault::RedisDown | Fault::Freeze => {
            (WindowKind::Disruptive, 0.0, true)
        }
        // Storage refuses writes; the subscriber is untouched.
        Fault::StoreRefused => (WindowKind::Disruptive, 0.0, false),
        // No hint is sent while storage works and the subscriber is healthy: what a dead
        // subscriber leaves too, for a waiter (only a poll finds the response).
        Fault::PublishLost => (WindowKind::PubSubDead, 0.0, false),
    }
}

/// The fault windows of a history: each `apply` up to the next `heal` (or the end). A
/// description that does not parse is disruptive: never excuse less than we know.
pub(crate) fn windows(h: &History) -> Vec<Window> {
    let mut out: Vec<Window> = Vec::new();
    let mut open: Option<Window> = None;
    for e in &h.events {
        let Op::Nemesis { action, faults } = &e.op else { continue };
        if action == "apply" {
            let parsed: Option<Vec<Fault>> = serde_json::from_str(faults).ok();
            let mut w = Window {
                from_us: e.time_us,
                to_us: u64::MAX,
                kind: WindowKind::Delay,
                delay_ms: 0.0,
                kills_subscriber: false,
            };
            match parsed.filter(|p| !p.is_empty()) {
                None => w.kind = WindowKind::Disruptive,
                Some(faults) => {
                    for f in &faults {
                        let (kind, delay, kills) = classify(f);
                        w.delay_ms = w.delay_ms.max(delay);
                        w.kills_subscriber |= kills;
                        w.kind = match (w.kind, kind) {
                            (WindowKind::Disruptive, _) | (_, WindowKind::Disruptive) => WindowKind::Disruptive,
                            (WindowKind::PubSubDead, _) | (_, WindowKind::PubSubDead) => WindowKind::PubSubDead,
                            _ => WindowKind::Delay,
                        };
                    }
                }
            }
            if let Some(prev) = open.replace(w) {
                out.push(Window { to_us: e.time_us, ..prev });
            }
        } else if let Some(w) = open.take() {
            out.push(Window { to_us: e.time_us, ..w });
        }
    }
    out.extend(open);
    out
}

/// Heal times, in microseconds.
fn heals(h: &History) -> Vec<u64> {
    h.events
        .iter()
        .filter_map(|e| match &e.op {
            Op::Nemesis { action, .. } if action == "heal" => Some(e.time_us),
            _ => None,
        })
        .collect()
}

/// Which rule a sample is judged by.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Regime {
    /// No fault near it.
    Clean,
    /// Inside a latency-only window.
    Delay,
    /// Acknowledged while Pub/Sub was dead and storage answered.
    Fallback,
    /// Near a disruptive fault: due by heal + recovery bound.
    Recovery,
}

/// A live waiter's wait for one acknowledged response.
struct Sample<'a> {
    id: &'a str,
    /// When the waiter could first have had it: max(ack, wait invoke), in microseconds.
    start_us: u64,
    ack_us: u64,
    respond_invoke_us: u64,
    /// When the wait ended, and whether it obtained the response (`via` if so).
    end_us: u64,
    obtained: Option<&'a str>,
}

fn samples(h: &History) -> Vec<Sample<'_>> {
    let ops = feedback_ops(h);
    let mut out = Vec::new();
    for (id, responds) in &ops.responds {
        for (r, token) in responds {
            let Some(ack) = acked_at(r) else { continue };
            for (w, resume) in ops.waits.get(id).map(Vec::as_slice).unwrap_or(&[]) {
                let Some(end) = w.end else { continue };
                // Only waits that were waiting when the respond began: a wait that began later is
                // a resume (judged by `lost` and `resume`), one that began while the respond
                // was in flight could go either way.
                if *resume || w.invoke_us > r.invoke_us {
                    continue;
                }
                if end.time_us < ack {
                    // Ended before the response existed (an earlier timeout): says nothing.
                    continue;
                }
                let obtained = match (end.kind, obtained_token(end)) {
                    (Kind::Ok, Some(t)) if t == *token => Some(match &end.op {
                        Op::Wait { via: Some(v), .. } => v.as_str(),
                        _ => "unknown",
                    }),
                    // Another response to the same id, or cancelled/unknown: not this sample.
                    (Kind::Ok, _) | (Kind::Info, _) | (Kind::Invoke, _) => continue,
                    (Kind::Fail, _) => None,
                };
                out.push(Sample {
                    id,
                    start_us: ack.max(w.invoke_us),
                    ack_us: ack,
                    respond_invoke_us: r.invoke_us,
                    end_us: end.time_us,
                    obtained,
                });
            }
        }
    }
    out
}

/// The regime of a sample starting at `start_us` and when it is due (absolute, in us).
fn due(b: &Bounds, windows: &[Window], start_us: u64) -> (Regime, u64) {
    let ms = |v: f64| (v * 1000.0) as u64;
    let recovery = ms(b.recovery_ms);
    let clean = b.clean_ms();
    // A fault that starts within the clean allowance may have eaten the hint in flight.
    let reach = start_us.saturating_add(ms(clean.min(1e9)));
    let mut regime = Regime::Clean;
    let mut due_us = start_us.saturating_add(ms(clean.min(1e9)));
    let mut delay = 0.0f64;
    for w in windows {
        let extended = match w.kind {
            WindowKind::Delay => w.to_us,
            _ => w.to_us.saturating_add(recovery),
        };
        if start_us > extended || reach < w.from_us {
            continue;
        }
        match w.kind {
            WindowKind::Delay => {
                delay = delay.max(w.delay_ms);
                if regime == Regime::Clean {
                    regime = Regime::Delay;
                }
            }
            WindowKind::PubSubDead if b.polls && b.poll_interval_ms.is_some() && start_us <= w.to_us => {
                let p = b.poll_interval_ms.unwrap_or_default();
                if regime != Regime::Recovery {
                    regime = Regime::Fallback;
                    due_us = due_us.max(start_us + ms(p + b.fallback_slack_ms));
                }
            }
            // Disruptive, or Pub/Sub dead with no fallback, or the tail after such a heal:
            // due once the recovery bound after the heal has passed.
            _ => {
                regime = Regime::Recovery;
                due_us = due_us.max(w.to_us.saturating_add(recovery).saturating_add(ms(clean.min(1e9))));
            }
        }
    }
    let extra = ms(b.latency_factor * delay);
    (regime, due_us.saturating_add(extra))
}

impl Sample<'_> {
    /// Obtained by a poll (or the read at the deadline) later than a poll that merely beat
    /// the hint would have been ([`POLL_WON_RACE_MS`]).
    fn rescued(&self) -> Option<&str> {
        let raced = self.end_us.saturating_sub(self.start_us) <= (POLL_WON_RACE_MS * 1000.0) as u64;
        match self.obtained {
            Some("polled") if raced => None,
            Some(via @ ("polled" | "deadline")) => Some(via),
            _ => None,
        }
    }
}

fn late_line(s: &Sample<'_>, due_us: u64, what: &str) -> String {
    let ms = |us: u64| us as f64 / 1000.0;
    match s.obtained {
        Some(via) => format!(
            "{}: obtained ({via}) {:.1} ms after the ack at {:.1} ms; {what} allows {:.1} ms",
            s.id,
            ms(s.end_us - s.start_us),
            ms(s.ack_us),
            ms(due_us - s.start_us)
        ),
        None => format!(
            "{}: timed out at {:.1} ms, {:.1} ms after its response was acknowledged at {:.1} ms; {what} allows {:.1} ms",
            s.id,
            ms(s.end_us),
            ms(s.end_us - s.start_us),
            ms(s.ack_us),
            ms(due_us - s.start_us)
        ),
    }
}

fn judge_regime(h: &History, b: &Bounds, checker: &'static str, regimes: &[Regime], what: &str) -> Verdict {
    let ws = windows(h);
    let (mut invalid, mut judged) = (Vec::new(), 0u64);
    for s in samples(h) {
        let (regime, due_us) = due(b, &ws, s.start_us);
        if !regimes.contains(&regime) {
            continue;
        }
        judged += 1;
        if s.end_us > due_us || (s.obtained.is_none() && s.end_us >= due_us) {
            invalid.push(late_line(&s, due_us, what));
        }
    }
    let mut v = verdict(checker, invalid, Vec::new());
    v.stats = serde_json::json!({ "judged": judged });
    v
}

/// **wakeup**: outside disruptive faults, every live waiter has its response within the
/// clean bound ([`Bounds::wake_ms`] for notified designs, a poll interval for polling alone),
/// plus [`Bounds::latency_factor`] times the delay of an overlapping latency fault. A wait
/// that timed out instead is a missed response.
pub fn wakeup(h: &History, b: &Bounds) -> Verdict {
    judge_regime(h, b, "wakeup", &[Regime::Clean, Regime::Delay], "the wake bound")
}

/// **fallback**: a response acknowledged while Pub/Sub was dead and storage answered is
/// obtained within one poll interval + [`Bounds::fallback_slack_ms`]. Only for designs that
/// poll, with the fallback on.
pub fn fallback(h: &History, b: &Bounds) -> Verdict {
    judge_regime(h, b, "fallback", &[Regime::Fallback], "the fallback bound (poll interval + slack)")
}

/// **recovery**: after every heal, once [`Bounds::recovery_ms`] has passed, responses are
/// acknowledged as `notified` again (designs that notify) and waiters are woken by
/// notification within the wake bound, not rescued by polling ("recovered to polling only");
/// responses acknowledged during a disruptive fault are obtained by heal + recovery bound.
/// Unknown when no response was tried after some heal's recovery bound.
pub fn recovery(h: &History, b: &Bounds) -> Verdict {
    let mut v = judge_regime(h, b, "recovery", &[Regime::Recovery], "heal + the recovery bound");
    let mut invalid: Vec<String> = std::mem::take(&mut v.evidence);
    let mut unknown = Vec::new();
    let ws = windows(h);
    let recovery_us = (b.recovery_ms * 1000.0) as u64;
    let ops = feedback_ops(h);
    let all = samples(h);
    let heals = heals(h);
    for heal in &heals {
        let from = heal + recovery_us;
        let next_apply = ws.iter().map(|w| w.from_us).filter(|t| *t > *heal).min().unwrap_or(u64::MAX);
        let mut tried = 0;
        for (id, responds) in &ops.responds {
            for (r, _) in responds {
                if r.invoke_us < from || r.invoke_us >= next_apply {
                    continue;
                }
                tried += 1;
                match r.end {
                    Some(e) if e.kind == Kind::Ok => {
                        let note = e.note.as_deref().unwrap_or("");
                        if b.notifies && note != "notified" {
                            invalid.push(format!(
                                "{id}: responded {:.0} ms after the heal, acknowledged as {note:?}, not notified",
                                (r.invoke_us - heal) as f64 / 1000.0
                            ));
                        }
                    }
                    Some(e) => invalid.push(format!(
                        "{id}: respond {:.0} ms after the heal failed: {}",
                        (r.invoke_us - heal) as f64 / 1000.0,
                        e.note.as_deref().unwrap_or("no reason")
                    )),
                    None => {}
                }
            }
        }
        if b.notifies {
            for s in all.iter().filter(|s| s.respond_invoke_us >= from && s.respond_invoke_us < next_apply) {
                match s.obtained {
                    // Woken by the hint, or found by the re-read right after a fresh
                    // SUBSCRIBE was confirmed on the live connection: the wake-up path works.
                    Some("notified" | "after_subscribe") => {}
                    // A poll that beat the hint in flight says nothing of the hint.
                    Some("polled") if s.rescued().is_none() => {}
                    Some(via) => invalid.push(format!(
                        "{}: {via}, not notified, {:.0} ms after the heal: recovered to polling only",
                        s.id,
                        (s.end_us - heal) as f64 / 1000.0
                    )),
                    None => invalid.push(format!(
                        "{}: timed out although answered {:.0} ms after the heal: no recovery",
                        s.id,
                        (s.respond_invoke_us - heal) as f64 / 1000.0
                    )),
                }
            }
        }
        if tried == 0 {
            unknown.push(format!(
                "no response was tried after the heal at {:.0} ms + the recovery bound",
                *heal as f64 / 1000.0
            ));
        }
    }
    let stats = v.stats.clone();
    let mut v = verdict("recovery", invalid, unknown);
    v.stats = stats;
    v.stats["heals"] = heals.len().into();
    v
}

/// **rescues**: for designs that are notified and poll (the hybrid), no live waiter outside
/// every fault window (and its recovery bound) obtains its response by polling or at its
/// deadline: the notification path must have woken it.
pub fn rescues(h: &History, b: &Bounds) -> Verdict {
    let ws = windows(h);
    let mut invalid = Vec::new();
    let mut judged = 0u64;
    for s in samples(h) {
        let (regime, _) = due(b, &ws, s.start_us);
        if regime != Regime::Clean {
            continue;
        }
        judged += 1;
        if let Some(via) = s.rescued() {
            invalid.push(format!(
                "{}: rescued ({via}) {:.1} ms after the ack at {:.1} ms with no fault near: a wake-up was missed",
                s.id,
                (s.end_us - s.start_us) as f64 / 1000.0,
                s.ack_us as f64 / 1000.0
            ));
        }
    }
    let mut v = verdict("rescues", invalid, Vec::new());
    v.stats = serde_json::json!({ "judged": judged });
    v
}

/// **timeouts**: a wait given a timeout T that timed out lasted at least T and at most
/// `T + max(timeout_slack_ms, timeout_slack_ratio * T)`, plus `latency_factor` times the
/// delay of an overlapping latency fault (the read at the deadline crosses it). Waits that
/// overlap a disruptive fault are not judged (the read at the deadline may wait for a
/// command timeout).
pub fn timeouts(h: &History, b: &Bounds) -> Verdict {
    let ws = windows(h);
    let mut invalid = Vec::new();
    let mut judged = 0u64;
    for op in h.operations() {
        let (Op::Wait { id, timeout_ms: Some(t), .. }, Some(end)) = (&op.invoke.op, op.completion) else { continue };
        if end.kind != Kind::Fail {
            continue;
        }
        let (from, to) = (op.invoke.time_us, end.time_us);
        let overlapping = ws.iter().filter(|w| w.from_us <= to && from <= w.to_us);
        let mut delay = 0.0f64;
        let mut disrupted = false;
        for w in overlapping {
            match w.kind {
                WindowKind::Delay => delay = delay.max(w.delay_ms),
                WindowKind::PubSubDead => {}
                WindowKind::Disruptive => disrupted = true,
            }
        }
        let took_ms = (to - from) as f64 / 1000.0;
        let t = *t as f64;
        if took_ms < t {
            judged += 1;
            invalid.push(format!("{id}: timed out after {took_ms:.1} ms, before its timeout of {t:.0} ms"));
            continue;
        }
        if disrupted {
            continue;
        }
        judged += 1;
        let limit = t + b.timeout_slack_ms.max(b.timeout_slack_ratio * t) + b.latency_factor * delay;
        if took_ms > limit {
            invalid.push(format!(
                "{id}: timed out after {took_ms:.1} ms with a timeout of {t:.0} ms (limit {limit:.1} ms)"
            ));
        }
    }
    let mut v = verdict("timeouts", invalid, Vec::new());
    v.stats = serde_json::json!({ "judged": judged });
    v
}

/// **detection**: in every window whose faults kill or silence the subscriber connection
/// and that lasts longer than [`Bounds::detection_ms`], the implementation's reconnect
/// counter goes up within `detection_ms` of the fault. Reconnects the heal forces come
/// after the window and do not count.
pub fn detection(h: &History, b: &Bounds) -> Verdict {
    let detection_us = (b.detection_ms * 1000.0) as u64;
    let reconnects: Vec<u64> =
        h.events.iter().filter_map(|e| matches!(e.op, Op::Reconnected { .. }).then_some(e.time_us)).collect();
    let mut invalid = Vec::new();
    let mut judged = 0u64;
    for w in windows(h).iter().filter(|w| w.kills_subscriber) {
        if w.to_us.saturating_sub(w.from_us) <= detection_us {
            continue;
        }
        judged += 1;
        let first = reconnects.iter().find(|t| **t >= w.from_us && **t <= w.to_us);
        match first {
            Some(t) if t - w.from_us <= detection_us => {}
            Some(t) => invalid.push(format!(
                "the subscriber was replaced {:.0} ms after the fault at {:.0} ms (bound {:.0} ms)",
                (t - w.from_us) as f64 / 1000.0,
                w.from_us as f64 / 1000.0,
                b.detection_ms
            )),
            None => invalid.push(format!(
                "the subscriber killed or silenced at {:.0} ms was never replaced during the {:.0} ms fault (bound {:.0} ms)",
                w.from_us as f64 / 1000.0,
                (w.to_us - w.from_us) as f64 / 1000.0,
                b.detection_ms
            )),
        }
    }
    let mut v = verdict("detection", invalid, Vec::new());
    v.stats = serde_json::json!({ "judged": judged });
    v
}

/// **delivery**: the streaming counterpart of [`wakeup`], [`fallback`] and [`recovery`]:
/// every chunk acknowledged while a consumer followed (or before it joined, from its start
/// index on) reaches that consumer by the same regime's due time, counted from the later of
/// the ack and the consumer's start. A consumer that only finds chunks at its own deadline,
/// or never, fails.
pub fn delivery(h: &History, b: &Bounds) -> Verdict {
    use std::collections::HashMap;
    let ws = windows(h);
    // task -> index -> first ack (us)
    let mut acked: HashMap<&str, HashMap<u64, u64>> = HashMap::new();
    for op in h.operations() {
        if let (Op::Produce { task, index, .. }, Some(end)) = (&op.invoke.op, op.completion) {
            if end.kind == Kind::Ok && op.invoke.kind == Kind::Invoke {
                let e = acked.entry(task.as_str()).or_default().entry(*index).or_insert(end.time_us);
                *e = (*e).min(end.time_us);
            }
        }
    }
    // (task, consumer) -> index -> first delivery (us)
    let mut delivered: HashMap<(&str, u32), HashMap<u64, u64>> = HashMap::new();
    for e in &h.events {
        if let (Kind::Ok, Op::Deliver { task, consumer, index, .. }) = (&e.kind, &e.op) {
            delivered.entry((task.as_str(), *consumer)).or_default().entry(*index).or_insert(e.time_us);
        }
    }
    let (mut invalid, mut judged) = (Vec::new(), 0u64);
    for op in h.operations() {
        let (Op::Follow { task, consumer, from }, Some(end)) = (&op.invoke.op, op.completion) else { continue };
        if op.invoke.kind != Kind::Invoke {
            continue;
        }
        let got = delivered.get(&(task.as_str(), *consumer));
        let mut idx: Vec<(&u64, &u64)> = acked.get(task.as_str()).map(|m| m.iter().collect()).unwrap_or_default();
        idx.sort();
        for (index, ack) in idx.into_iter().filter(|(i, _)| **i >= *from) {
            let start = (*ack).max(op.invoke.time_us);
            if start > end.time_us {
                continue;
            }
            let (_, due_us) = due(b, &ws, start);
            let at = got.and_then(|g| g.get(index)).copied();
            judged += 1;
            match at {
                Some(t) if t <= due_us => {}
                Some(t) => invalid.push(format!(
                    "{task}: consumer {consumer} got chunk {index} {:.1} ms after it could have (acknowledged at {:.1} ms); allowed {:.1} ms",
                    (t - start) as f64 / 1000.0,
                    *ack as f64 / 1000.0,
                    (due_us - start) as f64 / 1000.0
                )),
                None if end.time_us >= due_us => invalid.push(format!(
                    "{task}: consumer {consumer} never got chunk {index} (acknowledged at {:.1} ms), and followed until {:.1} ms",
                    *ack as f64 / 1000.0,
                    end.time_us as f64 / 1000.0
                )),
                None => {}
            }
        }
    }
    let mut v = verdict("delivery", invalid, Vec::new());
    v.stats = serde_json::json!({ "judged": judged });
    v
}

/// **exercised**: something was acknowledged and something obtained or delivered. A row in
/// which nothing was is `unknown`: it tested nothing.
pub fn exercised(h: &History) -> Verdict {
    let mut acked = 0u64;
    let mut got = 0u64;
    for op in h.operations() {
        let Some(end) = op.completion else { continue };
        match (&op.invoke.op, end.kind) {
            (Op::Respond { .. } | Op::Produce { .. } | Op::Tick { .. }, Kind::Ok) if op.invoke.kind == Kind::Invoke => {
                acked += 1
            }
            (Op::Wait { .. }, Kind::Ok) if obtained_token(end).is_some() => got += 1,
            (Op::Deliver { .. } | Op::Take { .. }, Kind::Ok) => got += 1,
            _ => {}
        }
    }
    let unknown = if acked == 0 || got == 0 {
        vec![format!("nothing was exercised: {acked} acknowledged, {got} obtained or delivered")]
    } else {
        Vec::new()
    };
    let mut v = verdict("exercised", Vec::new(), unknown);
    v.stats = serde_json::json!({ "acknowledged": acked, "obtained": got });
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::Validity;
    use crate::history::Event;

    /// Events at explicit times (ms), for windows and samples.
    #[derive(Default)]
    struct H {
        h: History,
        next_process: u32,
    }

    impl H {
        fn at(&mut self, ms: f64, process: u32, kind: Kind, op: Op, note: Option<&str>) {
            let time_us = (ms * 1000.0) as u64;
            self.h.push(Event { time_us, process, kind, op, note: note.map(str::to_string) });
        }
        fn p(&mut self) -> u32 {
            self.next_process += 1;
            self.next_process
        }
        fn nemesis(&mut self, ms: f64, action: &str, faults: &[Fault]) -> &mut Self {
            let faults = if action == "apply" { serde_json::to_string(faults).unwrap() } else { String::new() };
            self.at(ms, 0, Kind::Ok, Op::Nemesis { action: action.into(), faults }, None);
            self
        }
        /// A wait invoked at `from` with timeout `timeout_ms`, ended at `to` with `via`
        /// (None: timed out), answered by a respond invoked at `respond` and acked 1 ms
        /// later with `note`.
        fn sample(
            &mut self,
            id: &str,
            from: f64,
            respond: Option<(f64, &str)>,
            to: f64,
            via: Option<&str>,
        ) -> &mut Self {
            let (w, r) = (self.p(), self.p());
            let wait = |token: Option<&str>, via: Option<&str>, timeout_ms| Op::Wait {
                id: id.into(),
                token: token.map(str::to_string),
                via: via.map(str::to_string),
                resume: false,
                timeout_ms,
            };
            self.at(from, w, Kind::Invoke, wait(None, None, Some(((to - from) as u64).max(1))), None);
            if let Some((t, note)) = respond {
                let op = Op::Respond { id: id.into(), token: format!("{id}-t") };
                self.at(t, r, Kind::Invoke, op.clone(), None);
                let kind = if note.starts_with("fail") { Kind::Fail } else { Kind::Ok };
                self.at(t + 1.0, r, kind, op, Some(note));
            }
            match via {
                Some(v) => {
                    let token = format!("{id}-t");
                    self.at(to, w, Kind::Ok, wait(Some(&token), Some(v), None), None)
                }
                None => self.at(to, w, Kind::Fail, wait(None, None, None), Some("timed out")),
            }
            self.h.events.sort_by_key(|e| e.time_us);
            self
        }
        fn reconnected(&mut self, ms: f64, count: u64) -> &mut Self {
            self.at(ms, 0, Kind::Ok, Op::Reconnected { count }, None);
            self.h.events.sort_by_key(|e| e.time_us);
            self
        }
    }

    fn hybrid() -> Bounds {
        Bounds {
            wake_ms: 50.0,
            latency_factor: 2.0,
            poll_interval_ms: Some(100.0),
            fallback_slack_ms: 100.0,
            detection_ms: 500.0,
            recovery_ms: 1_000.0,
            timeout_slack_ms: 100.0,
            timeout_slack_ratio: 0.05,
            notifies: true,
            polls: true,
        }
    }

    const BLACKHOLE_SUB: Fault = Fault::Blackhole { target: Target::Subscriber };

    #[test]
    fn wakeup_passes_prompt_waiters_and_fails_slow_or_missed_ones() {
        let mut ok = H::default();
        ok.sample("a", 0.0, Some((100.0, "notified")), 110.0, Some("notified"));
        assert_eq!(wakeup(&ok.h, &hybrid()).validity, Validity::Valid);
        let mut slow = H::default();
        slow.sample("a", 0.0, Some((100.0, "notified")), 300.0, Some("polled"));
        let v = wakeup(&slow.h, &hybrid());
        assert_eq!(v.validity, Validity::Invalid, "{v:?}");
        assert!(v.evidence[0].contains("allows 50.0 ms"), "{v:?}");
        // The premature timeout a later reader would have hidden.
        let mut missed = H::default();
        missed.sample("a", 0.0, Some((100.0, "notified")), 900.0, None);
        let v = wakeup(&missed.h, &hybrid());
        assert_eq!(v.validity, Validity::Invalid, "{v:?}");
        assert!(v.evidence[0].contains("timed out"), "{v:?}");
        // Latency allows 2 x (50 + 20) more.
        let mut lat = H::default();
        lat.nemesis(0.0, "apply", &[Fault::Latency { target: Target::Both, latency_ms: 50, jitter_ms: 20 }]);
        lat.sample("a", 10.0, Some((100.0, "notified")), 280.0, Some("notified")).nemesis(1_000.0, "heal", &[]);
        assert_eq!(wakeup(&lat.h, &hybrid()).validity, Validity::Valid, "{:?}", wakeup(&lat.h, &hybrid()));
        lat.sample("b", 10.0, Some((100.0, "notified")), 400.0, Some("notified"));
        assert_eq!(wakeup(&lat.h, &hybrid()).validity, Validity::Invalid);
        // Upstream latency: 2 x 100 on the subscriber alone, 2 x 150 on both connections.
        for (target, allowed_ms) in [(Target::Subscriber, 250.0), (Target::Both, 350.0)] {
            let mut up = H::default();
            up.nemesis(0.0, "apply", &[Fault::LatencyUpstream { target, latency_ms: 100 }]);
            up.sample("a", 10.0, Some((100.0, "notified")), 101.0 + allowed_ms - 1.0, Some("notified"));
            up.nemesis(2_000.0, "heal", &[]);
            assert_eq!(
                wakeup(&up.h, &hybrid()).validity,
                Validity::Valid,
                "{target:?}: {:?}",
                wakeup(&up.h, &hybrid())
            );
            up.sample("b", 10.0, Some((100.0, "notified")), 101.0 + allowed_ms + 1.0, Some("notified"));
            assert_eq!(wakeup(&up.h, &hybrid()).validity, Validity::Invalid, "{target:?}");
        }
    }

    #[test]
    fn fallback_bounds_the_rescue_while_pubsub_is_dead() {
        let mut ok = H::default();
        ok.nemesis(0.0, "apply", &[BLACKHOLE_SUB]);
        ok.sample("a", -0.0, Some((300.0, "notified")), 480.0, Some("polled")).nemesis(2_000.0, "heal", &[]);
        assert_eq!(fallback(&ok.h, &hybrid()).validity, Validity::Valid, "{:?}", fallback(&ok.h, &hybrid()));
        assert_eq!(wakeup(&ok.h, &hybrid()).validity, Validity::Valid, "not wakeup's business");
        // A poll interval 20 times too long: found only after the heal's resync.
        let mut slow = H::default();
        slow.nemesis(0.0, "apply", &[BLACKHOLE_SUB]);
        slow.sample("a", 0.0, Some((300.0, "notified")), 2_100.0, Some("resync")).nemesis(2_000.0, "heal", &[]);
        let v = fallback(&slow.h, &hybrid());
        assert_eq!(v.validity, Validity::Invalid, "{v:?}");
        // With the fallback off, the same sample is recovery's: due by heal + 1 s + 50 ms.
        let off = Bounds { poll_interval_ms: None, ..hybrid() };
        assert_eq!(fallback(&slow.h, &off).stats["judged"], 0);
        assert_eq!(recovery(&slow.h, &off).validity, Validity::Unknown, "no probe after the heal");
    }

    #[test]
    fn a_lost_publish_is_the_pollers_to_find_in_every_window() {
        // The subscriber is healthy, no hint comes: found by a poll within the bound, valid;
        // found at the deadline, invalid. In a second window after a heal, the same.
        let lost = || {
            let mut h = H::default();
            h.nemesis(0.0, "apply", &[Fault::PublishLost]).nemesis(1_000.0, "heal", &[]);
            h.nemesis(3_000.0, "apply", &[Fault::PublishLost]).nemesis(4_000.0, "heal", &[]);
            h
        };
        let mut ok = lost();
        ok.sample("a", 0.0, Some((300.0, "stored; PUBLISH lost")), 450.0, Some("polled"));
        ok.sample("b", 2_900.0, Some((3_300.0, "stored; PUBLISH lost")), 3_450.0, Some("polled"));
        assert_eq!(fallback(&ok.h, &hybrid()).validity, Validity::Valid, "{:?}", fallback(&ok.h, &hybrid()));
        let mut second = lost();
        second.sample("a", 0.0, Some((300.0, "stored; PUBLISH lost")), 450.0, Some("polled"));
        second.sample("b", 2_900.0, Some((3_300.0, "stored; PUBLISH lost")), 6_000.0, Some("deadline"));
        let v = fallback(&second.h, &hybrid());
        assert_eq!(v.validity, Validity::Invalid, "{v:?}");
        assert!(v.evidence[0].starts_with("b: obtained (deadline)"), "{v:?}");
    }

    #[test]
    fn recovery_demands_notifications_again_after_the_heal() {
        let healed = || {
            let mut h = H::default();
            h.nemesis(0.0, "apply", &[BLACKHOLE_SUB]).nemesis(1_000.0, "heal", &[]);
            h
        };
        let mut ok = healed();
        ok.sample("probe", 2_100.0, Some((2_200.0, "notified")), 2_210.0, Some("notified"));
        assert_eq!(recovery(&ok.h, &hybrid()).validity, Validity::Valid, "{:?}", recovery(&ok.h, &hybrid()));
        let mut polling = healed();
        polling.sample("probe", 2_100.0, Some((2_200.0, "notified")), 2_290.0, Some("polled"));
        let v = recovery(&polling.h, &hybrid());
        assert_eq!(v.validity, Validity::Invalid);
        assert!(v.evidence.iter().any(|e| e.contains("recovered to polling only")), "{v:?}");
        // A poll that beat the hint in flight (0.5 ms after the ack) is not polling only.
        let mut raced = healed();
        raced.sample("probe", 2_100.0, Some((2_200.0, "notified")), 2_201.5, Some("polled"));
        assert_eq!(recovery(&raced.h, &hybrid()).validity, Validity::Valid, "{:?}", recovery(&raced.h, &hybrid()));
        // A breaker that never closes: the respond after the heal is refused.
        let mut breaker = healed();
        breaker.sample("probe", 2_100.0, Some((2_200.0, "fail: store: circuit open")), 3_000.0, None);
        let v = recovery(&breaker.h, &hybrid());
        assert_eq!(v.validity, Validity::Invalid);
        assert!(v.evidence.iter().any(|e| e.contains("circuit open")), "{v:?}");
        // Acknowledged but not notified (stored_not_notified) after the bound.
        let mut quiet = healed();
        quiet.sample("probe", 2_100.0, Some((2_200.0, "stored_not_notified")), 2_250.0, Some("polled"));
        assert_eq!(recovery(&quiet.h, &hybrid()).validity, Validity::Invalid);
        // Polling-only claims no notifications: a polled probe is its normal.
        let poller = Bounds { notifies: false, ..hybrid() };
        let mut p = healed();
        p.sample("probe", 2_100.0, Some((2_200.0, "stored")), 2_290.0, Some("polled"));
        assert_eq!(recovery(&p.h, &poller).validity, Validity::Valid, "{:?}", recovery(&p.h, &poller));
        // A heal with nothing tried after it proves nothing.
        assert_eq!(recovery(&healed().h, &hybrid()).validity, Validity::Unknown);
        // Acknowledged during a crash, obtained long after heal + recovery bound.
        let mut late = H::default();
        late.nemesis(0.0, "apply", &[Fault::CrashRestart]);
        late.sample("a", 0.0, Some((100.0, "notified")), 4_000.0, Some("polled")).nemesis(1_000.0, "heal", &[]);
        late.sample("probe", 2_100.0, Some((2_200.0, "notified")), 2_210.0, Some("notified"));
        let v = recovery(&late.h, &hybrid());
        assert_eq!(v.validity, Validity::Invalid, "{v:?}");
        assert!(v.evidence[0].starts_with("a: obtained (polled)"), "{v:?}");
    }

    #[test]
    fn rescues_are_findings_only_away_from_faults() {
        let mut clean = H::default();
        clean.sample("a", 0.0, Some((100.0, "notified")), 140.0, Some("polled"));
        let v = rescues(&clean.h, &hybrid());
        assert_eq!(v.validity, Validity::Invalid, "{v:?}");
        assert!(v.evidence[0].contains("a wake-up was missed"), "{v:?}");
        let mut deadline = H::default();
        deadline.sample("a", 0.0, Some((100.0, "notified")), 140.0, Some("deadline"));
        assert_eq!(rescues(&deadline.h, &hybrid()).validity, Validity::Invalid);
        let mut in_fault = H::default();
        in_fault.nemesis(0.0, "apply", &[BLACKHOLE_SUB]);
        in_fault.sample("a", 0.0, Some((100.0, "notified")), 140.0, Some("polled")).nemesis(500.0, "heal", &[]);
        assert_eq!(rescues(&in_fault.h, &hybrid()).validity, Validity::Valid);
        let mut notified = H::default();
        notified.sample("a", 0.0, Some((100.0, "notified")), 101.5, Some("notified"));
        notified.sample("b", 0.0, Some((100.0, "notified")), 101.5, Some("after_subscribe"));
        assert_eq!(rescues(&notified.h, &hybrid()).validity, Validity::Valid);
        // A poll 0.5 ms after the ack beat the hint in flight; 30 ms after, it waited for a tick.
        let mut raced = H::default();
        raced.sample("a", 0.0, Some((100.0, "notified")), 101.5, Some("polled"));
        assert_eq!(rescues(&raced.h, &hybrid()).validity, Validity::Valid, "{:?}", rescues(&raced.h, &hybrid()));
        raced.sample("b", 0.0, Some((100.0, "notified")), 131.0, Some("polled"));
        let v = rescues(&raced.h, &hybrid());
        assert_eq!(v.validity, Validity::Invalid, "{v:?}");
        assert!(v.evidence.len() == 1 && v.evidence[0].starts_with("b: rescued (polled)"), "{v:?}");
    }

    #[test]
    fn timeouts_must_end_on_time_never_early() {
        let mut ok = H::default();
        ok.sample("a", 0.0, None, 1_030.0, None);
        // The sample builder records timeout = to - from; shrink it to 1,000 ms.
        if let Op::Wait { timeout_ms, .. } = &mut ok.h.events[0].op {
            *timeout_ms = Some(1_000);
        }
        assert_eq!(timeouts(&ok.h, &hybrid()).validity, Validity::Valid, "{:?}", timeouts(&ok.h, &hybrid()));
        let mut long = ok.h.clone();
        long.events[1].time_us = 1_400_000;
        let v = timeouts(&long, &hybrid());
        assert_eq!(v.validity, Validity::Invalid, "summed poll intervals run long: {v:?}");
        let mut early = ok.h.clone();
        early.events[1].time_us = 600_000;
        assert_eq!(timeouts(&early, &hybrid()).validity, Validity::Invalid, "ended early");
        // Under 50 + 20 ms latency the read at the deadline may take 140 ms more.
        let mut lat = H::default();
        lat.nemesis(0.0, "apply", &[Fault::Latency { target: Target::Commands, latency_ms: 50, jitter_ms: 20 }]);
        lat.sample("a", 10.0, None, 1_200.0, None).nemesis(2_000.0, "heal", &[]);
        if let Some(Op::Wait { timeout_ms, .. }) =
            lat.h.events.iter_mut().map(|e| &mut e.op).find(|o| matches!(o, Op::Wait { .. }))
        {
            *timeout_ms = Some(1_000);
        }
        assert_eq!(timeouts(&lat.h, &hybrid()).validity, Validity::Valid, "{:?}", timeouts(&lat.h, &hybrid()));
    }

    #[test]
    fn detection_needs_a_reconnect_within_the_bound() {
        let mut ok = H::default();
        ok.nemesis(0.0, "apply", &[BLACKHOLE_SUB]).reconnected(450.0, 1).nemesis(2_000.0, "heal", &[]);
        assert_eq!(detection(&ok.h, &hybrid()).validity, Validity::Valid);
        let mut never = H::default();
        // Only the reconnect the heal forces: never detected during the fault.
        never.nemesis(0.0, "apply", &[BLACKHOLE_SUB]).nemesis(2_000.0, "heal", &[]).reconnected(2_010.0, 1);
        let v = detection(&never.h, &hybrid());
        assert_eq!(v.validity, Validity::Invalid, "{v:?}");
        let mut slow = H::default();
        slow.nemesis(0.0, "apply", &[BLACKHOLE_SUB]).reconnected(1_200.0, 1).nemesis(2_000.0, "heal", &[]);
        assert_eq!(detection(&slow.h, &hybrid()).validity, Validity::Invalid);
        // Latency does not kill the subscriber: nothing to detect.
        let mut lat = H::default();
        lat.nemesis(0.0, "apply", &[Fault::Latency { target: Target::Both, latency_ms: 50, jitter_ms: 0 }]);
        lat.nemesis(2_000.0, "heal", &[]);
        assert_eq!(detection(&lat.h, &hybrid()).stats["judged"], 0);
    }

    fn produce(h: &mut H, ms: f64, index: u64) {
        let p = h.p();
        let op = Op::Produce { task: "s".into(), index, last: false };
        h.at(ms, p, Kind::Invoke, op.clone(), None);
        h.at(ms + 1.0, p, Kind::Ok, op, Some("notified"));
    }

    fn deliver(h: &mut H, ms: f64, index: u64, via: &str) {
        let op = Op::Deliver { task: "s".into(), consumer: 0, index, via: Some(via.into()) };
        h.at(ms, 1_000_000, Kind::Ok, op, None);
    }

    fn follow(h: &mut H, from_ms: f64, to_ms: f64) {
        let op = Op::Follow { task: "s".into(), consumer: 0, from: 0 };
        h.at(from_ms, 500, Kind::Invoke, op.clone(), None);
        h.at(to_ms, 500, Kind::Ok, op, None);
    }

    #[test]
    fn delivery_bounds_each_chunk_like_a_waiter() {
        let mut ok = H::default();
        follow(&mut ok, 0.0, 5_000.0);
        produce(&mut ok, 100.0, 0);
        deliver(&mut ok, 103.0, 0, "notified");
        ok.nemesis(200.0, "apply", &[Fault::ProxyDown { target: Target::Subscriber }]);
        produce(&mut ok, 300.0, 1);
        ok.nemesis(1_000.0, "heal", &[]);
        deliver(&mut ok, 1_200.0, 1, "resync");
        ok.h.events.sort_by_key(|e| e.time_us);
        let off = Bounds { poll_interval_ms: None, ..hybrid() };
        assert_eq!(delivery(&ok.h, &off).validity, Validity::Valid, "{:?}", delivery(&ok.h, &off));
        // The consumer that ignores resync: found the tail only at its deadline.
        let mut stalled = ok.h.clone();
        let last = stalled.events.iter_mut().rev().find(|e| matches!(e.op, Op::Deliver { index: 1, .. })).unwrap();
        last.time_us = 4_990_000;
        stalled.events.sort_by_key(|e| e.time_us);
        let v = delivery(&stalled, &off);
        assert_eq!(v.validity, Validity::Invalid, "{v:?}");
        assert!(v.evidence[0].contains("chunk 1"), "{v:?}");
        // Never delivered although it followed long enough.
        let mut lost = H::default();
        follow(&mut lost, 0.0, 5_000.0);
        produce(&mut lost, 100.0, 0);
        assert_eq!(delivery(&lost.h, &hybrid()).validity, Validity::Invalid);
    }

    #[test]
    fn nothing_exercised_is_unknown() {
        assert_eq!(exercised(&History::default()).validity, Validity::Unknown);
        let mut failed = H::default();
        failed.sample("a", 0.0, Some((100.0, "fail: store: connection refused")), 900.0, None);
        assert_eq!(exercised(&failed.h).validity, Validity::Unknown);
        let mut ok = H::default();
        ok.sample("a", 0.0, Some((100.0, "notified")), 110.0, Some("notified"));
        assert_eq!(exercised(&ok.h).validity, Validity::Valid);
    }
}
