//! Generated cases: a small workload and a fault schedule, run on a real Redis behind the two
//! proxies and judged by the same checkers as the scenarios, liveness included: the bounds
//! come from the case's configuration ([`CaseRig::bounds`]), a reconnect sampler feeds the
//! detection check, and a fresh probe after the last heal feeds the recovery check. Property tests (the
//! `hybrid-chaos-scenarios` crate) generate and shrink [`Case`]s; this module only runs one.
//!
//! A case is plain data (serialisable), so a failing one can be stored, printed and replayed
//! as it is, and a future simulator can hand its failing cases to the same runner.
//!
//! Timing: everything is relative to the case's start, in ms. Fault steps never overlap: a
//! step due while the one before still holds starts right after its heal, so each step is a
//! clean window the latency checker can reason about. Start times are absolute, so removing
//! a step while shrinking does not move the others. Waits for answered requests last until every step healed plus
//! [`RECOVERY_MS`]; the same Redis and proxies serve every case of a search ([`CaseRig`]),
//! each case under its own key prefix.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::checker::{self, Bounds, LatencyBound, Validity, Verdict};
use crate::history::{History, Kind, Op, Reading};
use crate::infra::{admin, Persistence, RedisSpec};
use crate::nemesis::{Fault, Target};
use crate::reference::{Config, Mutation};
use crate::scenario::{self, Rig};
use crate::strategy::Strategy;

/// After the last step healed, answered waits keep waiting this long, in ms: a reconnect
/// (backoff at most [`RECONNECT_MS_MAX`]), a health check and a poll tick fit in it, so a
/// wait that still times out is evidence, not impatience.
pub const RECOVERY_MS: u64 = 1_500;
/// Timeout of a wait for a request nobody answers, in ms.
pub const UNANSWERED_WAIT_MS: u64 = 300;
/// Poll interval of the strategies in cases, in ms.
pub const POLL_INTERVAL_MS: u64 = 200;
/// Reconnect backoff cap in cases, in ms.
pub const RECONNECT_MS_MAX: u64 = 200;
/// The id of the recovery probe (a fresh wait answered once the recovery bound has passed
/// after the last heal); request ids are `r0`, `r1`, ...
pub const PROBE_ID: &str = "probe";
/// Longest wait for a cleanup reading to settle, in ms.
pub const SETTLE_WAIT_MS: u64 = 1_000;
/// The wake-latency bound: a waiter woken by the notification has its response within this
/// many ms of the respond (a quarter of a poll interval: a waiter that had to wait for a
/// poll tick usually breaks it) ...
pub const WAKE_BOUND_MS: f64 = 50.0;
/// ... plus this many times the delay of an overlapping latency fault (two hops: the hint
/// and the read) ...
pub const WAKE_LATENCY_FACTOR: f64 = 2.0;
/// ... and no bound within this many ms after a disruptive fault healed.
pub const WAKE_RECOVERY_MS: f64 = 1_000.0;

/// The bound cases are judged by.
pub fn wake_bound() -> LatencyBound {
    LatencyBound { base_ms: WAKE_BOUND_MS, latency_factor: WAKE_LATENCY_FACTOR, recovery_ms: WAKE_RECOVERY_MS }
}

/// One step of a fault schedule: at `at_ms` after the start (or when the step before healed,
/// if later), inject `fault`, hold it `duration_ms`, heal.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub at_ms: u64,
    pub fault: Fault,
    pub duration_ms: u64,
}

/// One request of the feedback workload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// When a live worker starts waiting, in ms after the case start.
    pub wait_at_ms: u64,
    /// When the response is written, in ms after the case start; `None`: never (the wait
    /// times out after [`UNANSWERED_WAIT_MS`]).
    pub respond_at_ms: Option<u64>,
    /// The worker gives up (drops the waiting future) this many ms after it started.
    pub cancel_after_ms: Option<u64>,
}

/// A second wait on the id of request `of`, in the same worker: two live waits share a
/// subscription, a poller entry and a wake-up, and one leaving (its own cancel, or its
/// request's) must not take the other's with it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Twin {
    /// Index into [`Case::requests`].
    pub of: usize,
    /// When it starts waiting, in ms after the case start.
    pub wait_at_ms: u64,
    /// It gives up this many ms after it started.
    pub cancel_after_ms: Option<u64>,
}

/// A workload and a fault schedule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Case {
    pub schedule: Vec<Step>,
    pub requests: Vec<Request>,
    /// Second waits on requests' ids (cases stored before twins existed have none).
    #[serde(default)]
    pub twins: Vec<Twin>,
    /// Chunks of one stream produced across the case (0: no stream), followed from the start
    /// by one consumer and from index 0 by a late joiner after the last step.
    pub chunks: u64,
}

impl Case {
    /// The steps in the order they run, each with its planned start, in ms after the start.
    pub fn timeline(&self) -> Vec<(u64, &Step)> {
        let mut steps: Vec<&Step> = self.schedule.iter().collect();
        steps.sort_by_key(|s| s.at_ms);
        let mut free_at = 0;
        steps
            .into_iter()
            .map(|s| {
                let start = s.at_ms.max(free_at);
                free_at = start + s.duration_ms;
                (start, s)
            })
            .collect()
    }

    /// When the last step is planned to heal, in ms after the start.
    pub fn schedule_ms(&self) -> u64 {
        self.timeline().last().map_or(0, |(start, s)| start + s.duration_ms)
    }

    /// When the workload's last planned action happens, in ms after the start.
    pub fn workload_ms(&self) -> u64 {
        let requests = self.requests.iter().map(|r| r.wait_at_ms.max(r.respond_at_ms.unwrap_or(0)));
        requests.chain(self.twins.iter().map(|t| t.wait_at_ms)).max().unwrap_or(0)
    }

    /// When answered waits give up, in ms after the start.
    pub fn deadline_ms(&self) -> u64 {
        self.schedule_ms().max(self.workload_ms()) + RECOVERY_MS
    }
}

fn target(t: Target) -> &'static str {
    match t {
        Target::Commands => "commands",
        Target::Subscriber => "subscriber",
        Target::Both => "both",
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at {} ms: ", self.at_ms)?;
        match &self.fault {
            Fault::GracefulRestart => write!(f, "graceful restart")?,
            Fault::CrashRestart => write!(f, "crash + restart")?,
            Fault::RedisDown => write!(f, "redis down")?,
            Fault::Freeze => write!(f, "redis frozen")?,
            Fault::Latency { target: t, latency_ms, jitter_ms } => {
                write!(f, "latency {latency_ms}+-{jitter_ms} ms on {}", target(*t))?
            }
            Fault::LatencyUpstream { target: t, latency_ms } => {
                write!(f, "upstream latency {latency_ms} ms on {}", target(*t))?
            }
            Fault::DropSubscribers => write!(f, "subscribers dropped")?,
            Fault::StoreRefused => write!(f, "writes refused (out of memory)")?,
            Fault::Blackhole { target: t } => write!(f, "blackhole on {}", target(*t))?,
            Fault::ResetPeer { target: t } => write!(f, "reset_peer on {}", target(*t))?,
            Fault::ProxyDown { target: t } => write!(f, "proxy down on {}", target(*t))?,
            Fault::Bandwidth { target: t, rate_kb_s } => write!(f, "bandwidth {rate_kb_s} KB/s on {}", target(*t))?,
            Fault::Slicer { target: t, average_size, delay_us } => {
                write!(f, "slicer {average_size} B / {delay_us} us on {}", target(*t))?
            }
            Fault::PublishLost => write!(f, "the responder's PUBLISH lost")?,
        }
        write!(f, ", for {} ms", self.duration_ms)
    }
}

impl fmt::Display for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "fault schedule ({} steps):", self.schedule.len())?;
        for (i, s) in self.schedule.iter().enumerate() {
            writeln!(f, "  {}. {s}", i + 1)?;
        }
        writeln!(f, "requests ({}):", self.requests.len())?;
        for (i, r) in self.requests.iter().enumerate() {
            write!(f, "  r{i}: wait at {} ms", r.wait_at_ms)?;
            match r.respond_at_ms {
                Some(t) => write!(f, ", respond at {t} ms")?,
                None => write!(f, ", never answered")?,
            }
            if let Some(c) = r.cancel_after_ms {
                write!(f, ", cancelled after {c} ms")?;
            }
            writeln!(f)?;
        }
        for (i, t) in self.twins.iter().enumerate() {
            write!(f, "  twin {i}: a second wait on r{} at {} ms", t.of, t.wait_at_ms)?;
            if let Some(c) = t.cancel_after_ms {
                write!(f, ", cancelled after {c} ms")?;
            }
            writeln!(f)?;
        }
        write!(f, "stream: {} chunks", self.chunks)
    }
}

/// What one case produced: the history and every checker's verdict.
#[derive(Clone, Debug)]
pub struct CaseOutcome {
    pub checks: Vec<Verdict>,
    pub history: History,
}

impl CaseOutcome {
    /// The checks that found the case invalid, the search's own tighter wake-latency bound
    /// aside (reported, as the scenarios report latency; see [`CaseOutcome::failures_of`]).
    pub fn failures(&self) -> Vec<&Verdict> {
        self.checks.iter().filter(|c| c.validity == Validity::Invalid && c.checker != "latency").collect()
    }

    /// The checks named in `names` that found the case invalid, `latency` included if named:
    /// a search aimed at one flaw (the polling-only canary: it waits for a poll tick) asks
    /// for the tight bound by name.
    pub fn failures_of(&self, names: &[&str]) -> Vec<&Verdict> {
        self.checks.iter().filter(|c| c.validity == Validity::Invalid && names.contains(&c.checker)).collect()
    }
}

/// One line per verdict with its first pieces of evidence.
pub fn describe(verdicts: &[&Verdict]) -> String {
    verdicts
        .iter()
        .map(|v| format!("{}: {}", v.checker, v.evidence.iter().take(3).cloned().collect::<Vec<_>>().join("; ")))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Judges a case's history by a scenario's checks ([`scenario::feedback_checks`] with
/// `bounds`, the stream's when it produced chunks, resume), with the latency report judged
/// by the search's own tighter bound ([`wake_bound`]: it decides only when asked for by
/// name, [`CaseOutcome::failures_of`]). Pure.
pub fn judge(history: History, bounds: &Bounds) -> CaseOutcome {
    let mut checks = scenario::feedback_checks(&history, Some(bounds));
    checks.retain(|c| c.checker != "latency");
    checks.push(checker::latency(&history, Some(&wake_bound())));
    checks.push(checker::resume(&history));
    if history.events.iter().any(|e| matches!(e.op, Op::Produce { .. })) {
        checks.extend(scenario::stream_checks(&history, Some(bounds)).into_iter().filter(|c| c.checker != "cleanup"));
    }
    // A problem the strategy reported (a built-in one has no protocol to break) is a finding.
    if history.events.iter().any(|e| matches!(e.op, Op::Problem { .. })) {
        checks.push(checker::protocol(&history));
    }
    CaseOutcome { checks, history }
}

/// What a case's strategies run with: a fault window of a generated case is a second or
/// less, so every detection and recovery is faster than a scenario's. The only place a
/// case's timing is chosen.
fn case_config() -> Config {
    Config {
        poll_interval_ms: POLL_INTERVAL_MS,
        health_check_interval_ms: 200,
        health_check_timeout_ms: 200,
        reconnect_delay_ms_max: RECONNECT_MS_MAX,
        command_timeout_ms: 500,
        connect_timeout_ms: 500,
        breaker_reset_ms: 500,
        response_ttl_s: 600,
        ..Config::default()
    }
}

/// A Redis (AOF always: a crash must not take acknowledged writes) and two proxies, reused
/// by every case of a search. Cases never share keys: each runs under its own prefix.
pub struct CaseRig {
    rig: Rig,
    base_prefix: String,
    base_cfg: Config,
    cases: u64,
}

impl CaseRig {
    pub async fn start(seed: u64) -> anyhow::Result<CaseRig> {
        let spec = RedisSpec::default().persistence(Persistence::AofAlways);
        let mut rig = Rig::start_with("case", spec, seed, case_config(), crate::infra::Provider::Process).await?;
        rig.quiesce_wait_ms = SETTLE_WAIT_MS;
        let base_cfg = rig.cfg.clone();
        Ok(CaseRig { base_prefix: rig.prefix.clone(), rig, base_cfg, cases: 0 })
    }

    /// Runs `case` for `strategy`, the hybrid optionally with a deliberately broken variant,
    /// and judges it.
    pub async fn run(
        &mut self,
        case: &Case,
        strategy: &Strategy,
        mutation: Option<Mutation>,
    ) -> anyhow::Result<CaseOutcome> {
        anyhow::ensure!(
            case.twins.iter().all(|t| t.of < case.requests.len()),
            "a twin names a request the case does not have ({} requests): {:?}",
            case.requests.len(),
            case.twins
        );
        self.cases += 1;
        self.rig.prefix = format!("{}c{}:", self.base_prefix, self.cases);
        self.rig.cfg = Config { mutation, ..self.base_cfg.clone() }.with_prefix(&self.rig.prefix);
        // Start clean: every fault healed, the previous case's clients gone.
        self.rig.nemesis().heal(&mut *self.rig.redis).await?;
        let url = self.rig.redis.url();
        let gone = crate::poll_until(Duration::from_secs(5), Duration::from_millis(10), || async {
            admin::clients_under_test(&url).await.ok().filter(|c| c.is_empty())
        })
        .await;
        anyhow::ensure!(gone.is_some(), "the previous case's clients did not disconnect within 5 s");
        let bounds = self.bounds(strategy);
        let history = run_case(&mut self.rig, case, strategy, &bounds).await?;
        Ok(judge(history, &bounds))
    }

    /// The liveness bounds a case of `strategy` is judged by: a scenario's, derived from
    /// the case's configuration (fallback on).
    pub fn bounds(&self, strategy: &Strategy) -> Bounds {
        let sc = scenario::Scenario::new("case", "a generated case");
        scenario::bounds(&self.base_cfg, &sc, strategy.design())
    }

    pub async fn stop(self) {
        self.rig.teardown().await;
    }
}

async fn run_case(rig: &mut Rig, case: &Case, strategy: &Strategy, bounds: &Bounds) -> anyhow::Result<History> {
    let cfg = rig.cfg.clone();
    let ids: Vec<String> = (0..case.requests.len()).map(|i| format!("r{i}")).collect();
    let task = "s".to_string();
    let mut channels: Vec<String> = ids.iter().map(|id| cfg.keys.feedback_channel(id)).collect();
    channels.push(cfg.keys.feedback_channel(PROBE_ID));
    channels.push(cfg.keys.stream_channel(&task));
    let rec = scenario::recorder();
    let base = rig.observe(&rec, "baseline", &channels, 0, 0).await?;
    let s = strategy.connect_feedback(&rig.cmd_url, &rig.sub_url, &cfg).await?;
    // The detection check reads the implementation's own reconnect counter.
    let sampler = scenario::spawn_reconnect_sampler(&rec, &s);
    // Created before the workload: a PublishLost step tells the responders through it.
    let mut nemesis = rig.nemesis();
    let responder = scenario::Responder::new(&nemesis, &rig.redis.url(), &cfg);
    let stream = match case.chunks {
        0 => None,
        _ => Some(strategy.connect_stream(&rig.cmd_url, &rig.sub_url, &cfg).await?),
    };
    let start = Instant::now();
    let at = move |ms: u64| tokio::time::Instant::from_std(start + Duration::from_millis(ms));
    let deadline_ms = case.deadline_ms();

    // The workload: one task per wait (a request's or a twin's: wait, maybe cancel) and per
    // response.
    let mut tasks = Vec::new();
    let waits = case.requests.iter().zip(&ids).map(|(r, id)| (id, r.wait_at_ms, r.cancel_after_ms, r));
    let twins = case.twins.iter().map(|t| (&ids[t.of], t.wait_at_ms, t.cancel_after_ms, &case.requests[t.of]));
    for (id, wait_at_ms, cancel_after_ms, req) in waits.chain(twins) {
        let (s, rec, id) = (s.clone(), rec.clone(), id.clone());
        let timeout = match req.respond_at_ms {
            Some(_) => deadline_ms.saturating_sub(wait_at_ms),
            None => UNANSWERED_WAIT_MS,
        };
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(at(wait_at_ms)).await;
            let wait = scenario::spawn_wait(&s, &rec, &id, Duration::from_millis(timeout), false);
            match cancel_after_ms {
                Some(c) => {
                    tokio::time::sleep(Duration::from_millis(c)).await;
                    wait.cancel(&rec).await;
                    Ok(())
                }
                None => wait.join().await,
            }
        }));
    }
    for (req, id) in case.requests.iter().zip(&ids) {
        if let Some(t) = req.respond_at_ms {
            // The case's prefix makes every token unique across the cases of a search.
            let (s, rec, id, prefix, responder) =
                (s.clone(), rec.clone(), id.clone(), rig.prefix.clone(), responder.clone());
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep_until(at(t)).await;
                responder.respond(&*s, &rec, &id, format!("{id}@{prefix}"), 0).await;
                Ok(())
            }));
        }
    }
    // The stream: chunks spread over the workload, one consumer from the start.
    let (mut first, mut producer) = (None, None);
    if let Some(st) = &stream {
        first = Some(scenario::spawn_follower(st, &rec, &task, 0, 0, Duration::from_millis(deadline_ms)));
        let (st, rec, task, chunks) = (st.clone(), rec.clone(), task.clone(), case.chunks);
        let spread_ms = case.schedule_ms().max(case.workload_ms()).max(1);
        producer = Some(tokio::spawn(async move {
            for i in 0..chunks {
                tokio::time::sleep_until(at(spread_ms * i / chunks)).await;
                // A producer must not leave a hole: consumers deliver in order and cannot
                // pass one, so every later chunk would be stuck behind it (the property found
                // exactly that: an append failed under reset_peer, the next ones succeeded,
                // every consumer stalled). It retries the chunk instead; a duplicate that a
                // retried append may add is dropped by the consumers (same index).
                while !scenario::produce_recorded(&*st, &rec, &task, i, i + 1 == chunks).await {
                    if start.elapsed() >= Duration::from_millis(deadline_ms) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS / 2)).await;
                }
            }
        }));
    }

    // The fault schedule, step after step.
    let mut last_heal = None;
    for (start_ms, step) in case.timeline() {
        tokio::time::sleep_until(at(start_ms)).await;
        let described = serde_json::to_string(&[&step.fault]).expect("faults serialise");
        rec.record(rec.process(), Kind::Ok, Op::Nemesis { action: "apply".into(), faults: described }, None);
        nemesis.apply(&step.fault, &mut *rig.redis).await?;
        tokio::time::sleep(Duration::from_millis(step.duration_ms)).await;
        nemesis.heal(&mut *rig.redis).await?;
        rec.record(rec.process(), Kind::Ok, Op::Nemesis { action: "heal".into(), faults: String::new() }, None);
        last_heal = Some(Instant::now());
    }
    // The recovery probe: once the recovery bound has passed after the last heal, a fresh
    // wait must be woken by its hint again (the recovery check), whatever the schedule did.
    let probe = match last_heal {
        Some(healed) => {
            tokio::time::sleep_until((healed + Duration::from_millis(bounds.recovery_ms as u64)).into()).await;
            let url = rig.redis.url();
            scenario::fresh_probe(&s, &rec, &url, &cfg, bounds.notifies, PROBE_ID, 0).await?;
            Some(PROBE_ID)
        }
        None => None,
    };
    for t in tasks {
        t.await??;
    }
    if let Some(p) = producer {
        p.await?;
    }
    let late = stream.as_ref().map(|st| {
        let left = deadline_ms.saturating_sub(start.elapsed().as_millis() as u64).max(RECOVERY_MS);
        scenario::spawn_follower(st, &rec, &task, 1, 0, Duration::from_millis(left))
    });
    for f in first.into_iter().chain(late) {
        f.await?;
    }

    // Settled while the worker still runs (after shutdown the server would drop its
    // subscriptions anyway and hide a leak).
    sampler.abort();
    let _ = sampler.await;
    let reconnects = s.stats().reconnects;
    let back = |r: &Reading| r.subscriptions <= base.subscriptions && r.waiters == 0 && r.pending_polls == 0;
    rig.observe_when(&rec, "settled", &channels, || s.stats(), reconnects, back).await?;
    s.shutdown().await;
    scenario::record_problems(&rec, s.problems());
    drop(s);
    if let Some(st) = stream {
        st.shutdown().await;
    }

    // A worker resuming from its checkpoint after everything healed asks for every answered
    // request once more.
    let worker = strategy.connect_feedback(&rig.cmd_url, &rig.sub_url, &cfg).await?;
    let resume_timeout = Duration::from_millis(POLL_INTERVAL_MS * 2 + 500);
    let answered = case.requests.iter().zip(&ids).filter(|(r, _)| r.respond_at_ms.is_some()).map(|(_, id)| id.as_str());
    let answered = answered.chain(probe);
    rig.final_reads(&rec, worker, answered, resume_timeout, true, &channels, &base).await?;
    let rec = Arc::try_unwrap(rec).map_err(|_| anyhow::anyhow!("recorder still shared"))?;
    Ok(rec.into_history())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn latency_step(at_ms: u64, duration_ms: u64) -> Step {
        let fault = Fault::Latency { target: Target::Commands, latency_ms: 10, jitter_ms: 0 };
        Step { at_ms, fault, duration_ms }
    }

    fn request(wait_at_ms: u64, respond_at_ms: Option<u64>) -> Request {
        Request { wait_at_ms, respond_at_ms, cancel_after_ms: None }
    }

    #[test]
    fn steps_never_overlap_and_keep_their_absolute_times() {
        let case = Case {
            schedule: vec![latency_step(100, 300), latency_step(0, 50), latency_step(200, 100)],
            requests: vec![request(0, Some(700))],
            twins: vec![Twin { of: 0, wait_at_ms: 900, cancel_after_ms: None }],
            chunks: 0,
        };
        let starts: Vec<(u64, u64)> = case.timeline().iter().map(|(s, st)| (*s, st.at_ms)).collect();
        // Sorted by planned time; the step due at 200 ms waits for the one holding until 400.
        assert_eq!(starts, vec![(0, 0), (100, 100), (400, 200)]);
        assert_eq!(case.schedule_ms(), 500);
        // A twin's wait is part of the workload.
        assert_eq!(case.workload_ms(), 900);
        assert_eq!(case.deadline_ms(), 900 + RECOVERY_MS);
        // Removing a step (as shrinking does) does not move the others.
        let shrunk = Case { schedule: vec![latency_step(200, 100)], ..case.clone() };
        assert_eq!(shrunk.timeline()[0].0, 200);
    }

    #[test]
    fn a_case_prints_every_step_and_request() {
        let case = Case {
            schedule: vec![Step { at_ms: 750, fault: Fault::RedisDown, duration_ms: 350 }],
            requests: vec![request(0, Some(1_000)), Request { cancel_after_ms: Some(50), ..request(100, None) }],
            twins: vec![Twin { of: 1, wait_at_ms: 150, cancel_after_ms: Some(100) }],
            chunks: 3,
        };
        let text = case.to_string();
        for part in [
            "1. at 750 ms: redis down, for 350 ms",
            "r0: wait at 0 ms, respond at 1000 ms",
            "r1: wait at 100 ms, never answered, cancelled after 50 ms",
            "twin 0: a second wait on r1 at 150 ms, cancelled after 100 ms",
            "stream: 3 chunks",
        ] {
            assert!(text.contains(part), "{part:?} missing from:\n{text}");
        }
        // Plain data: a case survives a JSON round trip, to be stored and replayed.
        let back: Case = serde_json::from_str(&serde_json::to_string(&case).unwrap()).unwrap();
        assert_eq!(back, case);
    }
}
