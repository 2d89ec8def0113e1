//! Scenarios: a workload, a fault schedule and checkers composed under one name, run for one
//! strategy against a real Redis behind two proxies (commands, subscriber).
//!
//! Every scenario has two phases, as Jepsen's tests do: faults while the workload runs, then
//! heal, recovery and final reads (one more read of every id, by a fresh worker, after
//! everything is healed). Safety (lost) and liveness (latency, cleanup) are judged apart.
//! One seed drives the workload's timing; the same seed reproduces the same schedule.
//!
//! Each scenario declares the verdict it expects per strategy. The baselines are known to
//! break in some: such an expectation is a canary, and a canary that passes means the
//! harness lost its teeth. The catalogue itself (which scenarios exist) is the suite's, in the
//! `scenarios/` crate; this module is the machinery that runs and judges one.
//!
//! Beyond loss, every feedback run is judged on liveness ([`crate::checker::liveness`]) with
//! [`Bounds`] derived from the configuration the implementation runs with: after the heal
//! the workload sends recovery probes (fresh waits answered once the recovery bound has
//! passed), and a few waits nobody answers probe timeout accuracy. Scenarios with the
//! fallback off give the implementation a poll interval beyond every deadline, so only its
//! wake-up path can deliver in time: the polling fallback cannot hide a broken one there.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::checker::{self, Bounds, CleanupLimits, Validity, Verdict};
use crate::history::{Event, History, Kind, Op, Reading};
use crate::infra::{admin, Persistence, Provider, RedisNode, RedisSpec};
use crate::nemesis::{Fault, Nemesis};
use crate::reference::stream::FollowEnd;
use crate::reference::{Config, FeedbackStrategy, ImplStats, Mutation, PublishOutcome, StreamStrategy, WaitOutcome};
use crate::strategy::{BuiltIn, Design, Expectations, Strategy};
use crate::toxiproxy::server::ServerOptions;
use crate::toxiproxy::FaultProxy;

/// Longest wait for the server to reflect closed connections and released subscriptions
/// before a reading is taken anyway, in ms.
const QUIESCE_WAIT_MS: u64 = 3_000;
/// Pause between such readings, in ms.
const QUIESCE_POLL_MS: u64 = 20;

/// How long a churn wait waits before timing out, in ms (a third of it before half are
/// cancelled).
const CHURN_WAIT_MS: u64 = 600;
/// How long each window churn wait waits, in ms: long enough that its SUBSCRIBE is sent,
/// short enough that its UNSUBSCRIBE follows while the next one's SUBSCRIBE is due.
pub const WINDOW_CHURN_WAIT_MS: u64 = 60;
/// Between two window churn waits' starts, in ms: with a 150 ms round trip on the subscriber,
/// every SUBSCRIBE/UNSUBSCRIBE the hub sends finds the next change already queued.
pub const WINDOW_CHURN_GAP_MS: u64 = 20;

/// The expectation of an implementation that declared none: whatever it gets is a finding.
pub const NO_EXPECTATION: &str = "no expectation declared: this verdict is a finding, not a mismatch";

/// Poll interval when a scenario switches the fallback off, in ms: beyond every deadline of
/// a run, so only the wake-up path can deliver in time.
pub const FALLBACK_OFF_POLL_MS: u64 = 60_000;
/// Connecting to Redis through a proxy may take this long in a scenario, in ms: faster than
/// the reference's default, because fault windows are seconds.
const CONNECT_TIMEOUT_MS: u64 = 1_000;
/// A notification-woken waiter has its response within this long of the ack, in ms
/// (generous: a busy 2-core CI machine must not flip a verdict; the teeth come from the
/// regimes, not from a tight number).
pub const WAKE_BOUND_MS: f64 = 100.0;
/// Added to the wake bound of an implementation run over the process protocol, in ms: its
/// answers cross a pipe and a JSON encoding before the harness records them, which on a busy
/// 2-core machine took a notified wait 5.5 ms past the in-process bound (the reference served
/// over the protocol, default suite, seed 11, beside two Python implementations).
pub const PROTOCOL_WAKE_SLACK_MS: f64 = 20.0;
/// Added to the timeout slack of an implementation run over the process protocol, in ms.
/// Waits that time out together end together: a program answers them one line at a time,
/// each after its read at the deadline, on whatever share of a core it gets. The corrected
/// Python design (40 waits of 1500 ms ending at once in publisher-outage) overran by 28-57 ms
/// at p50 and up to 115 ms beside `stress-ng --cpu 2`, and by up to 192 ms with a cargo build
/// beside that too, none of it the harness's (which records an answer as it arrives). 150 ms
/// over 100 keeps the check's teeth: a deadline summed from poll intervals overruns by one
/// read per poll (fifteen reads at 1500 ms: 750 ms through a 50 ms latency fault).
pub const PROTOCOL_TIMEOUT_SLACK_MS: f64 = 150.0;
/// Slack over a poll interval for the fallback bound, in ms.
pub const FALLBACK_SLACK_MS: f64 = 150.0;
/// Slack over health-check interval + timeout for noticing a dead subscriber, in ms.
pub const DETECTION_SLACK_MS: f64 = 300.0;
/// Slack over the configuration's reconnect and breaker times for recovery, in ms.
pub const RECOVERY_SLACK_MS: f64 = 500.0;
/// A timed-out wait may end this long after its timeout, in ms, or 5 % of it if more.
pub const TIMEOUT_SLACK_MS: f64 = 100.0;
/// Recovery probes after each heal; they run one after another, so a half-open breaker's
/// single probe is not refused company.
pub const RECOVERY_PROBES: usize = 3;
/// How long a recovery probe waits, in ms.
pub const PROBE_WAIT_MS: u64 = 1_000;
/// How long a probe's respond waits for the probe's subscription at the server, in ms.
pub const PROBE_SUBSCRIBE_WAIT_MS: u64 = 500;
/// Live waits end this long after heal + the recovery bound, in ms: a margin so that a
/// response late in the window is never cut off by a deadline on a busy machine.
pub const WAIT_MARGIN_MS: u64 = 1_000;
/// Waits nobody answers, per feedback run, for the timeout-accuracy check.
pub const TIMEOUT_PROBES: usize = 2;
/// In the race scenarios, responses come this long after the lever is pulled, in ms (plus a
/// seeded draw of up to [`RACE_JITTER_MS`]).
pub const RACE_RESPOND_AFTER_MS: u64 = 50;
pub const RACE_JITTER_MS: u64 = 20;
/// A cancelled twin (see [`Scenario::twins`]) leaves this long before its id's response, in
/// ms: long enough for its release (an UNSUBSCRIBE, a poller entry) to have happened when the
/// response comes, short enough that the response lands before a poll could hide a lost wake-up.
pub const TWIN_CANCEL_LEAD_MS: u64 = 40;
/// How often the reconnect sampler reads the implementation's counter, in ms.
const SAMPLE_EVERY_MS: u64 = 10;

/// Where a feedback scenario puts its responses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Race {
    /// Waiters start after the lever is pulled (upstream latency on the subscriber keeps
    /// their SUBSCRIBE in flight), and responses come between their first storage read and
    /// the confirmation.
    SubscribeWindow,
    /// Waiters are subscribed; the lever drops the subscriber and slows its resubscribe, and
    /// responses are published during the resubscribe.
    Resubscribe,
    /// Waiters start after the lever is pulled (latency L on the command connection alone),
    /// and responses are sent [`READ_RACE_LATENCIES`] x L after: each is stored just after
    /// the server served the waiter's read that follows its confirmed SUBSCRIBE, and its hint
    /// arrives while that read's reply is still on its way. The read missed it; only what
    /// the waiter noted before the read (a hint came since) sends it back to storage.
    ReadInFlight,
}

/// [`Race::ReadInFlight`]: responses are sent this many command latencies after the waiters
/// start. The latency fault delays what the server sends (Toxiproxy's downstream): a
/// waiter's first read takes L, its SUBSCRIBE next to nothing (the subscriber is not
/// slowed), and its read after it reaches the server at once and has its reply at 2 L. A
/// response sent at 1.5 L is stored after that read was served, and its hint (not slowed)
/// arrives while the read's reply is still on its way.
pub const READ_RACE_LATENCIES: f64 = 1.5;

/// The shape of a streaming scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamShape {
    /// Chunks spread over before, during and after the faults; a late joiner after the heal.
    Spread,
    /// The tail, the final chunk included, is published during the subscriber outage and
    /// nothing after the heal: only a resync (or a poll) can finish the consumers.
    TailInOutage,
    /// A late joiner starts while the lever keeps its SUBSCRIBE in flight, and the final
    /// chunk is appended in between: its catch-up read must come after the confirmation.
    CatchupRace,
    /// Every chunk during the faults is appended twice, as a retried append whose first
    /// reply was lost does: consumers must hand each over once.
    DuplicateAppends,
    /// The late joiner, connected before the faults and idle since, joins once the stream has
    /// finished and the recovery bound after the heal has passed: its command connection
    /// died with a restart nobody has sent a command through since, so its first read is
    /// the one that finds out. With the fallback off, only that read can deliver.
    JoinIdleAfterRecovery,
}

/// One scenario of the catalogue.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub name: &'static str,
    pub about: &'static str,
    pub persistence: Persistence,
    /// Faults applied together when the fault window opens; all healed when it closes.
    pub faults: Vec<Fault>,
    /// Further fault windows, one per entry, each opening a recovery bound after the previous
    /// heal (so every fallback must have come back): a poll task that ended on the first
    /// fault's failed read is needed again here. The ids are dealt out over all windows.
    pub then_faults: Vec<Vec<Fault>>,
    /// Faults applied after every response was acknowledged, before the heal (e.g. a crash
    /// that must find the writes already made).
    pub late_faults: Vec<Fault>,
    /// Live waiters wait through the window; without them every response is published to
    /// nobody and found later by resumers (seed `000_*` scenario B).
    pub live_waiters: bool,
    /// Final readers per id (2: two workers resume the same checkpoint).
    pub resumers: usize,
    /// Extra waits on ids nobody answers, half timing out and half cancelled, before the
    /// workload: what they leave behind is the cleanup check's business.
    pub churn_waits: usize,
    /// At most this many short waits on ids nobody answers, started one after another through
    /// the fault window ([`WINDOW_CHURN_GAP_MS`] apart, each timing out after [`WINDOW_CHURN_WAIT_MS`]), so
    /// the subscriber keeps sending SUBSCRIBE and UNSUBSCRIBE while the workload's hints arrive.
    pub window_churn: usize,
    /// Every live wait has a twin: a second wait on the same id in the same worker, started
    /// with it. The twins of even ids are cancelled [`TWIN_CANCEL_LEAD_MS`] before their
    /// response, so what the two share (a subscription, a poller entry, a wake-up) must
    /// survive one of them leaving; the twins of odd ids wait on, so one hint must wake both.
    pub twins: bool,
    /// Filler bytes added to every response (large messages for pub/sub-only).
    pub payload_bytes: usize,
    /// Redis config directives for the run's server.
    pub redis_config: &'static [(&'static str, &'static str)],
    /// A chunk-streaming workload (seed `003_*`) instead of feedback.
    pub stream: bool,
    pub stream_shape: StreamShape,
    /// The polling fallback is on (the budget's poll interval) or off
    /// ([`FALLBACK_OFF_POLL_MS`]): with it off, only the wake-up path delivers in time.
    pub fallback: bool,
    /// A race scenario: responses placed in a window where wake-ups get lost.
    pub race: Option<Race>,
    /// The fan-out workload (seed `004_*`) instead of feedback.
    pub fanout: bool,
    /// Built-in strategies this scenario applies to; empty: all.
    pub applies_to: &'static [BuiltIn],
    /// Expected verdict per built-in strategy (valid unless set), and why.
    pub expected: Expectations,
}

impl Scenario {
    /// Whether `strategy` runs in this scenario. A built-in runs where it applies (and on a
    /// standalone Redis); a variant where the strategy it is held to does, in feedback
    /// scenarios (streams already carry data in their messages). An implementation the
    /// harness did not write runs where the hybrid does, streams only if it says it speaks
    /// them, never the fan-out (not in the protocol).
    pub fn applies(&self, strategy: &Strategy) -> bool {
        let applies_to = |b: BuiltIn| self.applies_to.is_empty() || self.applies_to.contains(&b);
        match strategy {
            Strategy::BuiltIn(b) if !b.standalone() => false,
            Strategy::BuiltIn(b) if b.held_to() != *b => !self.stream && !self.fanout && applies_to(b.held_to()),
            Strategy::BuiltIn(b) => applies_to(*b),
            Strategy::External(_) => {
                (!self.stream || strategy.streams()) && !self.fanout && applies_to(BuiltIn::Hybrid)
            }
        }
    }

    /// The verdict `strategy` is expected to get here, and why (see [`Strategy::held_to`]).
    pub fn expectation(&self, strategy: &Strategy) -> Option<(Validity, &'static str)> {
        strategy.held_to().map(|b| self.expected.of(b))
    }

    /// A feedback scenario with live waiters, no fault and no persistence; the builder
    /// methods below change what differs.
    pub fn new(name: &'static str, about: &'static str) -> Scenario {
        Scenario {
            name,
            about,
            persistence: Persistence::None,
            faults: vec![],
            then_faults: vec![],
            late_faults: vec![],
            live_waiters: true,
            resumers: 1,
            churn_waits: 0,
            window_churn: 0,
            twins: false,
            payload_bytes: 0,
            redis_config: &[],
            stream: false,
            stream_shape: StreamShape::Spread,
            fallback: true,
            race: None,
            fanout: false,
            applies_to: &[],
            expected: Expectations::default(),
        }
    }
    pub fn persistence(mut self, p: Persistence) -> Self {
        self.persistence = p;
        self
    }
    pub fn faults(mut self, f: Vec<Fault>) -> Self {
        self.faults = f;
        self
    }
    /// One more fault window after the ones before it (see [`Scenario::then_faults`]).
    pub fn then(mut self, f: Vec<Fault>) -> Self {
        self.then_faults.push(f);
        self
    }
    pub fn late_faults(mut self, f: Vec<Fault>) -> Self {
        self.late_faults = f;
        self
    }
    /// Nobody waits while responses are published; final readers resume afterwards.
    pub fn resume_only(mut self, resumers: usize) -> Self {
        self.live_waiters = false;
        self.resumers = resumers;
        self
    }
    pub fn churn(mut self, waits: usize) -> Self {
        self.churn_waits = waits;
        self
    }
    pub fn window_churn(mut self, waits: usize) -> Self {
        self.window_churn = waits;
        self
    }
    pub fn twins(mut self) -> Self {
        self.twins = true;
        self
    }
    pub fn payload(mut self, bytes: usize) -> Self {
        self.payload_bytes = bytes;
        self
    }
    pub fn redis_config(mut self, c: &'static [(&'static str, &'static str)]) -> Self {
        self.redis_config = c;
        self
    }
    pub fn stream(mut self) -> Self {
        self.stream = true;
        self
    }
    pub fn fanout(mut self, applies_to: &'static [BuiltIn]) -> Self {
        self.fanout = true;
        self.applies_to = applies_to;
        self
    }
    /// `strategy` is expected to get `verdict` here, because `why` (every other: valid).
    pub fn expect(mut self, strategy: BuiltIn, verdict: Validity, why: &'static str) -> Self {
        self.expected.set(strategy, verdict, why);
        self
    }
    /// Only these strategies run it (and the variants held to them).
    pub fn applies_to(mut self, strategies: &'static [BuiltIn]) -> Self {
        self.applies_to = strategies;
        self
    }
    pub fn stream_shape(mut self, shape: StreamShape) -> Self {
        self.stream = true;
        self.stream_shape = shape;
        self
    }
    /// The poll interval goes beyond every deadline: only the wake-up path delivers in time.
    pub fn fallback_off(mut self) -> Self {
        self.fallback = false;
        self
    }
    pub fn race(mut self, race: Race) -> Self {
        self.race = Some(race);
        self.fallback = false;
        self
    }
}

/// Workload size and timing. `quick` shrinks everything for CI.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    pub ids: usize,
    /// How long the fault window stays open, in ms.
    pub fault_window_ms: u64,
    /// Poll interval of the strategies, in ms (when the scenario keeps the fallback on).
    pub poll_interval_ms: u64,
    /// The subscriber's health check: a `PING` every this many ms ...
    pub health_check_interval_ms: u64,
    /// ... answered within this many ms.
    pub health_check_timeout_ms: u64,
    /// Reconnect backoff cap, in ms.
    pub reconnect_delay_ms_max: u64,
    /// How long the publisher's circuit breaker stays open, in ms.
    pub breaker_reset_ms: u64,
    /// One command (a SUBSCRIBE among them) may take this long, in ms.
    pub command_timeout_ms: u64,
    /// **Test-only.** A deliberately broken variant of the reference to run instead of the
    /// reference as written (`hybrid-chaos mutants`); `None` everywhere else.
    pub mutation: Option<Mutation>,
    /// Where each run's Redis runs (a process by default).
    pub provider: Provider,
}

impl Budget {
    pub fn new(quick: bool) -> Budget {
        if quick {
            Budget {
                ids: 8,
                fault_window_ms: 1_200,
                poll_interval_ms: 100,
                health_check_interval_ms: 200,
                health_check_timeout_ms: 300,
                reconnect_delay_ms_max: 300,
                breaker_reset_ms: 500,
                command_timeout_ms: 500,
                mutation: None,
                provider: Provider::Process,
            }
        } else {
            // The seed's 0.5 s poll interval.
            Budget {
                ids: 40,
                fault_window_ms: 2_500,
                poll_interval_ms: 500,
                health_check_interval_ms: 250,
                health_check_timeout_ms: 500,
                reconnect_delay_ms_max: 500,
                breaker_reset_ms: 1_000,
                command_timeout_ms: 1_000,
                mutation: None,
                provider: Provider::Process,
            }
        }
    }

    pub fn with_mutation(mut self, m: Option<Mutation>) -> Budget {
        self.mutation = m;
        self
    }

    pub fn with_provider(mut self, p: Provider) -> Budget {
        self.provider = p;
        self
    }

    /// The configuration a scenario's strategies run with (and are judged by): this budget's
    /// timings, the poll interval pushed out of reach when the scenario turns the fallback
    /// off. The only place a scenario's timing is chosen; the rig adds the key prefix.
    pub fn config(&self, fallback: bool) -> Config {
        Config {
            poll_interval_ms: if fallback { self.poll_interval_ms } else { FALLBACK_OFF_POLL_MS },
            health_check_interval_ms: self.health_check_interval_ms,
            health_check_timeout_ms: self.health_check_timeout_ms,
            reconnect_delay_ms_max: self.reconnect_delay_ms_max,
            breaker_reset_ms: self.breaker_reset_ms,
            command_timeout_ms: self.command_timeout_ms,
            connect_timeout_ms: CONNECT_TIMEOUT_MS,
            mutation: self.mutation,
            ..Config::default()
        }
    }
}

/// The bounds a run of `scenario` for a strategy of design `d` with configuration `cfg` is
/// judged by (see [`crate::checker::liveness`]): each derived from the configuration, so a
/// design change that moves a timing moves its bound with it.
pub fn bounds(cfg: &Config, scenario: &Scenario, d: Design) -> Bounds {
    // The subscriber notices a dead connection at its next health check, or when a SUBSCRIBE
    // in flight times out: the hub's loop waits for that reply before its next check.
    let detection = ((cfg.health_check_interval_ms + cfg.health_check_timeout_ms).max(cfg.command_timeout_ms)) as f64;
    // After a heal: an undetected dead connection is noticed (interval + timeout), the
    // backoff runs out (its cap), or the breaker's reset passes and one probe goes through.
    let hub = (cfg.health_check_interval_ms + cfg.health_check_timeout_ms) as f64 + cfg.reconnect_delay_ms_max as f64;
    let breaker = (cfg.breaker_reset_ms + cfg.publish_backoff_ms * u64::from(cfg.publish_attempts_max)) as f64;
    Bounds {
        wake_ms: WAKE_BOUND_MS,
        latency_factor: 2.0,
        poll_interval_ms: scenario.fallback.then_some(cfg.poll_interval_ms as f64),
        fallback_slack_ms: FALLBACK_SLACK_MS,
        detection_ms: detection + DETECTION_SLACK_MS,
        recovery_ms: hub.max(breaker) + RECOVERY_SLACK_MS,
        timeout_slack_ms: TIMEOUT_SLACK_MS,
        timeout_slack_ratio: 0.05,
        notifies: d.notifies,
        polls: d.polls,
    }
}

/// Records events with a monotonic timestamp.
pub(crate) struct Recorder {
    start: Instant,
    events: Mutex<Vec<Event>>,
    next_process: AtomicU32,
}

impl Recorder {
    pub(crate) fn process(&self) -> u32 {
        self.next_process.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn record(&self, process: u32, kind: Kind, op: Op, note: Option<String>) {
        let time_us = self.start.elapsed().as_micros() as u64;
        self.events.lock().expect("recorder lock").push(Event { time_us, process, kind, op, note });
    }

    pub(crate) fn into_history(self) -> History {
        let mut events = self.events.into_inner().expect("recorder lock");
        events.sort_by_key(|e| e.time_us);
        History { events }
    }
}

/// What one (scenario, strategy) run produced.
#[derive(Clone, Debug, Serialize)]
pub struct Outcome {
    pub scenario: String,
    pub strategy: String,
    pub verdict: Validity,
    pub expected_verdict: Validity,
    /// Why a non-valid verdict is expected (e.g. loss caused by the configuration).
    pub expectation: String,
    pub checks: Vec<Verdict>,
    /// The bounds the liveness checks used (feedback runs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bounds: Option<Bounds>,
    /// The mutation the run used, if any (`hybrid-chaos mutants`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mutation: Option<Mutation>,
    #[serde(skip)]
    pub history: History,
}

async fn observe(url: &str, prefix: &str, channels: &[String], waiters: u64) -> anyhow::Result<Reading> {
    let refs: Vec<&str> = channels.iter().map(String::as_str).collect();
    let subscriptions = admin::pubsub_numsub(url, &refs).await?.iter().map(|(_, n)| n).sum();
    let connections = admin::clients_under_test(url).await?.len() as u64;
    let mut c = admin::connect(url).await?;
    let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{prefix}*")).query_async(&mut c).await?;
    let mut keys_without_ttl = 0;
    for k in keys {
        let ttl: i64 = redis::cmd("TTL").arg(&k).query_async(&mut c).await?;
        if ttl == -1 {
            keys_without_ttl += 1;
        }
    }
    let info = admin::info(url, None).await?;
    let num = |k: &str| info.get(k).and_then(|v| v.parse().ok()).unwrap_or(0);
    let (used_memory_bytes, commands_processed) = (num("used_memory"), num("total_commands_processed"));
    Ok(Reading {
        subscriptions,
        connections,
        keys_without_ttl,
        waiters,
        used_memory_bytes,
        commands_processed,
        reconnects: 0,
        pending_polls: 0,
    })
}

pub(crate) fn wait_op(id: &str, outcome: Option<&WaitOutcome>, resume: bool) -> (Kind, Op, Option<String>) {
    match outcome {
        Some(WaitOutcome::Obtained { fields, via }) => (
            Kind::Ok,
            Op::Wait {
                id: id.into(),
                token: fields.get("token").cloned(),
                via: Some(via.name()),
                resume,
                timeout_ms: None,
            },
            None,
        ),
        Some(WaitOutcome::TimedOut) => (
            Kind::Fail,
            Op::Wait { id: id.into(), token: None, via: None, resume, timeout_ms: None },
            Some("timed out".into()),
        ),
        Some(WaitOutcome::Shutdown) => (
            Kind::Info,
            Op::Wait { id: id.into(), token: None, via: None, resume, timeout_ms: None },
            Some("shutdown".into()),
        ),
        None => (
            Kind::Info,
            Op::Wait { id: id.into(), token: None, via: None, resume, timeout_ms: None },
            Some("error".into()),
        ),
    }
}

/// One run's infrastructure: its own Redis, the fault proxy, two proxies in front of it.
pub(crate) struct Rig {
    pub(crate) redis: Box<dyn RedisNode>,
    faults: FaultProxy,
    tp: crate::toxiproxy::ToxiproxyClient,
    cmd_proxy: String,
    sub_proxy: String,
    pub(crate) cmd_url: String,
    pub(crate) sub_url: String,
    /// Prefix of the keys the readings count (the run's, or one case's).
    pub(crate) prefix: String,
    pub(crate) cfg: Config,
    /// Longest wait for a reading to settle, in ms.
    pub(crate) quiesce_wait_ms: u64,
}

impl Rig {
    async fn start(scenario: &Scenario, seed: u64, budget: Budget) -> anyhow::Result<Rig> {
        let mut spec = RedisSpec::default().persistence(scenario.persistence);
        for (name, value) in scenario.redis_config {
            spec = spec.config(name, value);
        }
        Rig::start_with(scenario.name, spec, seed, budget.config(scenario.fallback), budget.provider).await
    }

    /// A Redis from `spec`, a fault proxy seeded with `seed`, and the two proxies; the
    /// strategies run with `cfg` under the Redis's key prefix.
    pub(crate) async fn start_with(
        name: &str,
        spec: RedisSpec,
        seed: u64,
        cfg: Config,
        provider: Provider,
    ) -> anyhow::Result<Rig> {
        let redis = provider.start(spec).await?;
        let faults = FaultProxy::from_env(ServerOptions { seed: Some(seed), ..Default::default() }).await?;
        let tp = faults.client().clone();
        let port = redis.addr().rsplit_once(':').map(|(_, p)| p.to_string()).unwrap_or_default();
        let base = format!("{name}-{port}");
        let cmd = tp.create_proxy(&format!("{base}-cmd"), "127.0.0.1:0", &redis.addr()).await?;
        let sub = tp.create_proxy(&format!("{base}-sub"), "127.0.0.1:0", &redis.addr()).await?;
        let prefix = redis.key_prefix().to_string();
        let cfg = cfg.with_prefix(&prefix);
        Ok(Rig {
            cmd_url: format!("redis://{}/", cmd.listen),
            sub_url: format!("redis://{}/", sub.listen),
            cmd_proxy: cmd.name,
            sub_proxy: sub.name,
            redis,
            faults,
            tp,
            prefix,
            cfg,
            quiesce_wait_ms: QUIESCE_WAIT_MS,
        })
    }

    pub(crate) fn nemesis(&self) -> Nemesis {
        Nemesis::new(self.tp.clone(), &self.cmd_proxy, &self.sub_proxy)
    }

    pub(crate) async fn observe(
        &self,
        rec: &Recorder,
        phase: &str,
        channels: &[String],
        waiters: u64,
        reconnects: u64,
    ) -> anyhow::Result<Reading> {
        let st = ImplStats { waiters: waiters as usize, ..ImplStats::default() };
        self.observe_when(rec, phase, channels, || st, reconnects, |_| true).await
    }

    /// Reads until `settled` holds or `quiesce_wait_ms` passes, and records the last reading
    /// either way: one that never settles is the evidence of a leak. (A fixed sleep here
    /// would either hide slow cleanup or make the check flaky.)
    pub(crate) async fn observe_when(
        &self,
        rec: &Recorder,
        phase: &str,
        channels: &[String],
        stats: impl Fn() -> ImplStats,
        reconnects: u64,
        settled: impl Fn(&Reading) -> bool,
    ) -> anyhow::Result<Reading> {
        let deadline = Instant::now() + Duration::from_millis(self.quiesce_wait_ms);
        loop {
            let st = stats();
            let mut reading = observe(&self.redis.url(), &self.prefix, channels, st.waiters as u64).await?;
            reading.reconnects = reconnects;
            reading.pending_polls = st.pending_polls as u64;
            if settled(&reading) || Instant::now() >= deadline {
                rec.record(
                    rec.process(),
                    Kind::Ok,
                    Op::Observe { phase: phase.into(), reading: reading.clone() },
                    None,
                );
                return Ok(reading);
            }
            tokio::time::sleep(Duration::from_millis(QUIESCE_POLL_MS)).await;
        }
    }

    /// Phase 2: a fresh `worker` reads every id of `ids` once more (`resume`: as a worker
    /// resuming from its checkpoint), then shuts down; the `final` reading follows.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn final_reads<'a>(
        &self,
        rec: &Arc<Recorder>,
        worker: Arc<dyn FeedbackStrategy>,
        ids: impl Iterator<Item = &'a str>,
        timeout: Duration,
        resume: bool,
        channels: &[String],
        base: &Reading,
    ) -> anyhow::Result<()> {
        let finals: Vec<RecordedWait> = ids.map(|id| spawn_wait(&worker, rec, id, timeout, resume)).collect();
        for f in finals {
            f.join().await?;
        }
        let left = worker.fresh_stats().await;
        worker.shutdown().await;
        record_problems(rec, worker.problems());
        drop(worker);
        // The server notices closed connections asynchronously: read until it has (bounded).
        let closed = |r: &Reading| r.connections <= base.connections;
        self.observe_when(rec, "final", channels, || left, 0, closed).await?;
        Ok(())
    }

    pub(crate) async fn teardown(self) {
        for p in [&self.cmd_proxy, &self.sub_proxy] {
            let _ = self.tp.delete_proxy(p).await;
        }
        drop(self.faults);
        drop(self.redis);
    }
}

/// Puts an implementation's protocol problems into the history, for the `protocol` checker.
pub(crate) fn record_problems(rec: &Recorder, problems: Vec<String>) {
    for what in problems {
        rec.record(rec.process(), Kind::Info, Op::Problem { what }, None);
    }
}

pub(crate) fn recorder() -> Arc<Recorder> {
    Arc::new(Recorder { start: Instant::now(), events: Mutex::new(Vec::new()), next_process: AtomicU32::new(0) })
}

pub async fn run(scenario: &Scenario, strategy: &Strategy, seed: u64, budget: Budget) -> anyhow::Result<Outcome> {
    let ran = if scenario.stream {
        run_stream(scenario, strategy, seed, budget).await
    } else if scenario.fanout {
        run_fanout(scenario, strategy, seed, budget).await
    } else {
        run_feedback(scenario, strategy, seed, budget).await
    };
    match ran {
        // A program the harness did not write that stops a run (it never starts its
        // waiters, its init fails) is a finding about the program; the run goes on.
        Err(e) if strategy.is_external() => Ok(stopped(scenario, strategy, &e)),
        r => r,
    }
}

/// The outcome of a run an external implementation stopped: invalid, with the reason as the
/// `protocol` check's evidence.
fn stopped(scenario: &Scenario, strategy: &Strategy, e: &anyhow::Error) -> Outcome {
    let history = History {
        events: vec![Event {
            time_us: 0,
            process: 0,
            kind: Kind::Info,
            op: Op::Problem { what: format!("the scenario could not go on: {e:#}") },
            note: None,
        }],
    };
    judge(scenario, strategy, history, None)
}

async fn run_feedback(scenario: &Scenario, strategy: &Strategy, seed: u64, budget: Budget) -> anyhow::Result<Outcome> {
    let mut rig = Rig::start(scenario, seed, budget).await?;
    let (cmd_url, sub_url, cfg) = (rig.cmd_url.clone(), rig.sub_url.clone(), rig.cfg.clone());
    let d = strategy.design();
    let mut b = bounds(&cfg, scenario, d);
    if strategy.is_external() {
        // Over the process protocol, the wait's answer crosses a pipe and JSON before the
        // harness records it, and waits that end together are answered one by one.
        b.wake_ms += PROTOCOL_WAKE_SLACK_MS;
        b.timeout_slack_ms += PROTOCOL_TIMEOUT_SLACK_MS;
    }
    let ids: Vec<String> = (0..budget.ids).map(|i| format!("{}-{i}", scenario.name)).collect();
    let unanswered: Vec<String> = (0..TIMEOUT_PROBES).map(|i| format!("{}-unanswered-{i}", scenario.name)).collect();
    let probes: Vec<String> = (0..RECOVERY_PROBES).map(|i| format!("{}-probe-{i}", scenario.name)).collect();
    let standing: Vec<String> = (0..RECOVERY_PROBES).map(|i| format!("{}-standing-{i}", scenario.name)).collect();
    // Every channel the run may subscribe: the workload's ids, the probes and the churn ids.
    let channels: Vec<String> = ids
        .iter()
        .chain(&unanswered)
        .chain(&probes)
        .chain(&standing)
        .cloned()
        .chain((0..scenario.churn_waits).map(|i| format!("{}-churn-{i}", scenario.name)))
        .chain((0..scenario.window_churn).map(|i| format!("{}-wchurn-{i}", scenario.name)))
        .chain((1..=scenario.then_faults.len()).map(|k| format!("{}-probe-w{k}", scenario.name)))
        .map(|id| cfg.keys.feedback_channel(&id))
        .collect();
    let rec = recorder();
    let mut rng = StdRng::seed_from_u64(seed);
    let window = Duration::from_millis(budget.fault_window_ms);
    let recovery = Duration::from_millis(b.recovery_ms as u64);

    let base = rig.observe(&rec, "baseline", &channels, 0, 0).await?;
    let s = strategy.connect_feedback(&cmd_url, &sub_url, &cfg).await?;
    let sampler = spawn_reconnect_sampler(&rec, &s);

    // Churn: waits that time out or are cancelled, to see whether they leave anything behind.
    let mut churn = Vec::new();
    for i in 0..scenario.churn_waits {
        let id = format!("{}-churn-{i}", scenario.name);
        let wait = spawn_churn_wait(&s, &rec, &id, Duration::from_millis(CHURN_WAIT_MS));
        churn.push((wait, i % 2 == 1));
    }
    if !churn.is_empty() {
        tokio::time::sleep(Duration::from_millis(CHURN_WAIT_MS / 3)).await;
        for (wait, cancel) in churn {
            if cancel {
                wait.cancel(&rec).await;
            } else {
                wait.join().await?;
            }
        }
    }

    // Phase 1: live waiters (if any), then the fault window with responses in it. Waits last
    // until heal + the recovery bound + a margin, planned from absolute times: a response
    // late in the window is never cut off by a deadline on a busy machine.
    let settle = Duration::from_millis(300);
    // Planned: the window opens after the waiters settled; the actual opening is taken when
    // the fault is applied (`window_start` below).
    let planned_start = Instant::now() + if scenario.live_waiters { settle } else { Duration::ZERO };
    // Fault windows: the first, then each of `then_faults` a recovery bound after the
    // previous heal. `span` runs from the first opening to the last heal.
    let rounds: Vec<&Vec<Fault>> = std::iter::once(&scenario.faults).chain(&scenario.then_faults).collect();
    // Between windows: the recovery bound, then one fresh probe (the recovery check judges
    // every heal), which takes at most its subscription wait plus its own wait.
    let round_every = window + recovery + Duration::from_millis(PROBE_SUBSCRIBE_WAIT_MS + PROBE_WAIT_MS);
    let span = round_every * (rounds.len() as u32 - 1) + window;
    let wait_until = planned_start + span + recovery + Duration::from_millis(WAIT_MARGIN_MS);
    let waiters_first =
        scenario.live_waiters && !matches!(scenario.race, Some(Race::SubscribeWindow | Race::ReadInFlight));
    // With twins, each id's wait is followed by its twin (see `Scenario::twins`).
    let per_id = if scenario.twins { 2 } else { 1 };
    let spawn_waiters = |rec: &Arc<Recorder>| -> Vec<RecordedWait> {
        let left = wait_until.saturating_duration_since(Instant::now());
        ids.iter()
            .flat_map(|id| std::iter::repeat_n(id, per_id))
            .map(|id| spawn_wait(&s, rec, id, left, false))
            .collect()
    };
    // Standing probes wait through the fault and are answered after recovery: a subscriber
    // that comes back without its old channels shows here (fresh probes subscribe anew).
    let standing_until = wait_until + Duration::from_millis(PROBE_WAIT_MS * RECOVERY_PROBES as u64 * 2);
    let standing_waits: Vec<RecordedWait> = standing
        .iter()
        .map(|id| spawn_wait(&s, &rec, id, standing_until.saturating_duration_since(Instant::now()), false))
        .collect();
    // Waits nobody answers, ending inside the fault window: what their timeouts are worth.
    // Subscribed before the fault, so no SUBSCRIBE is in flight when it hits (a SUBSCRIBE's
    // own timeout would notice a dead subscriber and hide a health check that never does).
    let until_in_window = planned_start + window * 4 / 5;
    let timeout_probes: Vec<RecordedWait> = unanswered
        .iter()
        .map(|id| spawn_wait(&s, &rec, id, until_in_window.saturating_duration_since(Instant::now()), false))
        .collect();
    let mut waiters = Vec::new();
    if waiters_first {
        waiters = spawn_waiters(&rec);
        // Started means registered, or already ended: a wait that returned at once is the
        // implementation's answer (the checks judge it), not a machine that failed to start.
        let started = || {
            let ended = [&waiters, &standing_waits, &timeout_probes]
                .iter()
                .flat_map(|w| w.iter())
                .filter(|w| w.is_finished())
                .count();
            s.stats().waiters + ended
        };
        let all = crate::poll_until(Duration::from_secs(10), Duration::from_millis(10), || async {
            (started() >= ids.len() * per_id + standing.len() + unanswered.len()).then_some(())
        })
        .await;
        if all.is_none() {
            // An implementation that crashed or hung says why here.
            let problems = s.problems();
            anyhow::bail!(
                "waiters did not start within 10 s{}",
                if problems.is_empty() { String::new() } else { format!(": {}", problems.join("; ")) }
            );
        }
        // Let subscriptions settle so the fault, not start-up, is what the run measures.
        tokio::time::sleep_until(planned_start.into()).await;
    }
    if matches!(scenario.race, Some(Race::SubscribeWindow | Race::ReadInFlight)) && d.notifies {
        // The race is between a waiter's first read and its SUBSCRIBE on a live subscriber:
        // the subscriber must be connected before the lever is pulled, or its own handshake
        // is what the lever delays.
        warm_up(&s, &rec, &rig.redis.url(), &cfg, &format!("{}-warmup", scenario.name)).await?;
    }
    let mut nemesis = rig.nemesis();
    // Spread over the windows (id i in window i mod windows), or, in a race, right after the
    // lever is pulled.
    let offsets: Vec<Duration> = (0..ids.len())
        .map(|i| match scenario.race {
            None => {
                round_every * (i % rounds.len()) as u32
                    + Duration::from_millis(rng.random_range(100..budget.fault_window_ms.max(200) - 50))
            }
            Some(Race::ReadInFlight) => {
                let l = commands_latency_ms(&scenario.faults) as f64;
                Duration::from_millis((READ_RACE_LATENCIES * l) as u64 + rng.random_range(0..=RACE_JITTER_MS))
            }
            Some(_) => Duration::from_millis(RACE_RESPOND_AFTER_MS + rng.random_range(0..=RACE_JITTER_MS)),
        })
        .collect();
    let window_start = Instant::now();
    let described = serde_json::to_string(&scenario.faults).expect("faults serialise");
    rec.record(rec.process(), Kind::Ok, Op::Nemesis { action: "apply".into(), faults: described }, None);
    for f in &scenario.faults {
        nemesis.apply(f, &mut *rig.redis).await?;
    }
    if scenario.live_waiters && !waiters_first {
        // The SUBSCRIBE race: waiters start with the lever pulled, responses follow at once.
        waiters = spawn_waiters(&rec);
    }
    let window_churn = (scenario.window_churn > 0).then(|| {
        let (s, rec, name, n) = (s.clone(), rec.clone(), scenario.name, scenario.window_churn);
        // Until the last response is due, at most `n` of them.
        let until = window_start + span;
        tokio::spawn(async move {
            let mut running = Vec::new();
            for i in (0..n).take_while(|_| Instant::now() < until) {
                let id = format!("{name}-wchurn-{i}");
                running.push(spawn_churn_wait(&s, &rec, &id, Duration::from_millis(WINDOW_CHURN_WAIT_MS)));
                tokio::time::sleep(Duration::from_millis(WINDOW_CHURN_GAP_MS)).await;
            }
            for w in running {
                w.join().await?;
            }
            anyhow::Ok(())
        })
    });
    // The twins of even ids leave shortly before their response (cancelled as a worker that
    // gives up drops its wait); the others stay in `waiters`.
    let mut leaving = Vec::new();
    if scenario.twins {
        let mut all = std::mem::take(&mut waiters).into_iter();
        for (i, offset) in offsets.iter().enumerate() {
            let (Some(first), Some(twin)) = (all.next(), all.next()) else { break };
            waiters.push(first);
            if i % 2 == 1 {
                waiters.push(twin);
                continue;
            }
            let at = window_start + offset.saturating_sub(Duration::from_millis(TWIN_CANCEL_LEAD_MS));
            let rec = rec.clone();
            leaving.push(tokio::spawn(async move {
                tokio::time::sleep_until(at.into()).await;
                twin.cancel(&rec).await;
            }));
        }
    }
    // Responders, by window: each window heals once its responses are acknowledged.
    let mut responders: Vec<Vec<tokio::task::JoinHandle<()>>> = rounds.iter().map(|_| Vec::new()).collect();
    let payload_bytes = scenario.payload_bytes;
    let responder = Responder::new(&nemesis, &rig.redis.url(), &cfg);
    for (i, (id, offset)) in ids.iter().zip(&offsets).enumerate() {
        let (s, rec, id, offset, responder) = (s.clone(), rec.clone(), id.clone(), *offset, responder.clone());
        responders[i % rounds.len()].push(tokio::spawn(async move {
            tokio::time::sleep_until((window_start + offset).into()).await;
            responder.respond(&*s, &rec, &id, format!("{id}-{seed}"), payload_bytes).await;
        }));
    }
    let mut leaving = Some(leaving);
    let mut window_churn = window_churn;
    let mut last_heal = Instant::now();
    for (k, (faults, round)) in rounds.iter().zip(responders).enumerate() {
        let opens = window_start + round_every * k as u32;
        if k > 0 {
            // The previous heal is judged like the last: a fresh probe once its recovery
            // bound has passed, before this window opens.
            tokio::time::sleep_until((last_heal + recovery).into()).await;
            let id = format!("{}-probe-w{k}", scenario.name);
            fresh_probe(&s, &rec, &rig.redis.url(), &cfg, d.notifies, &id, seed).await?;
            tokio::time::sleep_until(opens.into()).await;
            let described = serde_json::to_string(faults).expect("faults serialise");
            rec.record(rec.process(), Kind::Ok, Op::Nemesis { action: "apply".into(), faults: described }, None);
            for f in faults.iter() {
                nemesis.apply(f, &mut *rig.redis).await?;
            }
        }
        let last = k + 1 == rounds.len();
        // The twins' cancels are spread over every window: joined with the last one's.
        for r in round.into_iter().chain(if last { leaving.take().unwrap_or_default() } else { Vec::new() }) {
            r.await?;
        }
        if last {
            for f in &scenario.late_faults {
                nemesis.apply(f, &mut *rig.redis).await?;
            }
            if let Some(churn) = window_churn.take() {
                churn.await??;
            }
        }
        tokio::time::sleep_until((opens + window).into()).await;
        nemesis.heal(&mut *rig.redis).await?;
        rec.record(rec.process(), Kind::Ok, Op::Nemesis { action: "heal".into(), faults: String::new() }, None);
        last_heal = Instant::now();
    }
    let healed_at = last_heal;

    // Recovery probes: once the recovery bound has passed, the standing waits are answered,
    // then fresh waits, each as soon as it is subscribed: all must be woken by notification
    // again (the recovery check). One after another, so a half-open breaker's single probe
    // is not refused company.
    tokio::time::sleep_until((healed_at + recovery).into()).await;
    for (id, wait) in standing.iter().zip(&standing_waits) {
        respond_recorded(&*s, &rec, id, format!("{id}-{seed}"), 0).await;
        // Bounded: one not woken in time is evidence for the checks, joined with the rest.
        crate::poll_until(Duration::from_millis(PROBE_WAIT_MS), Duration::from_millis(5), || async {
            wait.is_finished().then_some(())
        })
        .await;
    }
    for id in &probes {
        fresh_probe(&s, &rec, &rig.redis.url(), &cfg, d.notifies, id, seed).await?;
    }
    for w in waiters.into_iter().chain(timeout_probes).chain(standing_waits) {
        w.join().await?;
    }
    sampler.abort();
    let _ = sampler.await;
    // Settled, the first worker still running: its subscriptions, waiter maps and poller
    // must be back to baseline now (after shutdown the server would drop them anyway and
    // hide a leak).
    let reconnects = s.stats().reconnects;
    let back = |r: &Reading| r.subscriptions <= base.subscriptions && r.waiters == 0 && r.pending_polls == 0;
    rig.observe_when(&rec, "settled", &channels, || s.stats(), reconnects, back).await?;
    s.shutdown().await;
    record_problems(&rec, s.problems());
    drop(s);

    // Phase 2: final reads by a fresh worker after everything healed.
    let resume = !scenario.live_waiters;
    let worker = strategy.connect_feedback(&cmd_url, &sub_url, &cfg).await?;
    let final_timeout = Duration::from_millis(budget.poll_interval_ms * 2 + 500);
    let finals = ids
        .iter()
        .flat_map(|id| std::iter::repeat_n(id.as_str(), scenario.resumers.max(1)))
        .chain(probes.iter().chain(&standing).map(String::as_str));
    rig.final_reads(&rec, worker, finals, final_timeout, resume, &channels, &base).await?;
    rig.teardown().await;

    finish(rec, scenario, strategy, Some(b), budget.mutation)
}

/// The latency the faults put on the command connection, in ms (0: none).
fn commands_latency_ms(faults: &[Fault]) -> u64 {
    faults
        .iter()
        .filter_map(|f| match f {
            Fault::Latency {
                target: crate::nemesis::Target::Commands | crate::nemesis::Target::Both,
                latency_ms,
                ..
            } => Some(*latency_ms),
            _ => None,
        })
        .max()
        .unwrap_or(0)
}

/// Holds a wait on a throw-away id until the server shows its subscription (at most 10 s),
/// then cancels it: the implementation's subscriber is connected.
async fn warm_up(
    s: &Arc<dyn FeedbackStrategy>,
    rec: &Arc<Recorder>,
    url: &str,
    cfg: &Config,
    id: &str,
) -> anyhow::Result<()> {
    let channel = cfg.keys.feedback_channel(id);
    let wait = spawn_wait(s, rec, id, Duration::from_secs(10), false);
    let up = crate::poll_until(Duration::from_secs(10), Duration::from_millis(5), || async {
        let n = admin::pubsub_numsub(url, &[&channel]).await.ok()?;
        n.first().is_some_and(|(_, n)| *n > 0).then_some(())
    })
    .await;
    wait.cancel(rec).await;
    anyhow::ensure!(up.is_some(), "the subscriber never subscribed {channel} within 10 s");
    Ok(())
}

/// Records the implementation's reconnect counter whenever it goes up, read every
/// [`SAMPLE_EVERY_MS`] from what the implementation exposes (it knows nothing of faults).
pub(crate) fn spawn_reconnect_sampler(
    rec: &Arc<Recorder>,
    s: &Arc<dyn FeedbackStrategy>,
) -> tokio::task::JoinHandle<()> {
    let rec = rec.clone();
    let s = s.clone();
    let reconnects = move || s.stats().reconnects;
    tokio::spawn(async move {
        let p = rec.process();
        let mut last = reconnects();
        loop {
            tokio::time::sleep(Duration::from_millis(SAMPLE_EVERY_MS)).await;
            let now = reconnects();
            if now > last {
                rec.record(p, Kind::Ok, Op::Reconnected { count: now }, None);
                last = now;
            }
        }
    })
}

/// The streaming workload: one producer across three fault windows (before, during, after
/// the faults), a consumer following from the start, and a late joiner starting from index
/// 0 after the heal.
async fn run_stream(scenario: &Scenario, strategy: &Strategy, seed: u64, budget: Budget) -> anyhow::Result<Outcome> {
    let mut rig = Rig::start(scenario, seed, budget).await?;
    let task = format!("{}-task", scenario.name);
    let channels = vec![rig.cfg.keys.stream_channel(&task)];
    let rec = recorder();
    let base = rig.observe(&rec, "baseline", &channels, 0, 0).await?;
    let s = strategy.connect_stream(&rig.cmd_url, &rig.sub_url, &rig.cfg).await?;
    // The late joiner is another process (a new client), with a subscriber of its own that is
    // connected before any fault but has never subscribed this stream.
    let joiner = strategy.connect_stream(&rig.cmd_url, &rig.sub_url, &rig.cfg).await?;
    let b = bounds(&rig.cfg, scenario, strategy.design());
    let chunks = (budget.ids * 2) as u64;
    let window = Duration::from_millis(budget.fault_window_ms);
    let shape = scenario.stream_shape;
    // Chunks [0, a) before the faults, [a, z) during, [z, chunks) after the heal.
    let (a, z) = match shape {
        StreamShape::Spread | StreamShape::DuplicateAppends | StreamShape::JoinIdleAfterRecovery => {
            (chunks / 3, chunks * 2 / 3)
        }
        StreamShape::TailInOutage => (chunks / 3, chunks),
        StreamShape::CatchupRace => (chunks - 1, chunks),
    };
    let end = Instant::now()
        + window * 3
        + Duration::from_millis(b.recovery_ms as u64 + WAIT_MARGIN_MS + budget.poll_interval_ms);
    let follower = |s: &Arc<dyn StreamStrategy>, consumer: u32, from: u64| {
        let left = end.saturating_duration_since(Instant::now());
        spawn_follower(s, &rec, &task, consumer, from, left)
    };
    let first = follower(&s, 0, 0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut nemesis = rig.nemesis();
    let mut late = None;
    let mut healed_at = Instant::now();
    for (phase, (lo, hi)) in [(0, a), (a, z), (z, chunks)].into_iter().enumerate() {
        let phase_start = Instant::now();
        if phase == 1 {
            let described = serde_json::to_string(&scenario.faults).expect("faults serialise");
            rec.record(rec.process(), Kind::Ok, Op::Nemesis { action: "apply".into(), faults: described }, None);
            for f in &scenario.faults {
                nemesis.apply(f, &mut *rig.redis).await?;
            }
            if shape == StreamShape::CatchupRace {
                // The late joiner starts with its SUBSCRIBE held in flight; the final chunk
                // is appended before it lands.
                late = Some(follower(&joiner, 1, 0));
            }
        }
        if phase == 2 {
            nemesis.heal(&mut *rig.redis).await?;
            rec.record(rec.process(), Kind::Ok, Op::Nemesis { action: "heal".into(), faults: String::new() }, None);
            healed_at = Instant::now();
            if late.is_none() && shape != StreamShape::JoinIdleAfterRecovery {
                late = Some(follower(&joiner, 1, 0));
            }
        }
        let n = (hi - lo).max(1) as u32;
        for i in lo..hi {
            let at = match shape {
                StreamShape::CatchupRace if phase == 1 => Duration::from_millis(RACE_RESPOND_AFTER_MS),
                _ => window * (i - lo) as u32 / n,
            };
            tokio::time::sleep_until((phase_start + at).into()).await;
            let last = i + 1 == chunks;
            produce_until_acked(&*s, &rec, &task, i, last, end).await;
            if shape == StreamShape::DuplicateAppends && phase == 1 {
                // A retried append whose first reply was lost: the same chunk stored again.
                produce_until_acked(&*s, &rec, &task, i, last, end).await;
            }
        }
        if phase == 1 {
            tokio::time::sleep_until((phase_start + window).into()).await;
        }
    }
    if shape == StreamShape::JoinIdleAfterRecovery {
        // Every chunk is in the list and every connection has recovered: a clean join.
        tokio::time::sleep_until((healed_at + Duration::from_millis(b.recovery_ms as u64)).into()).await;
        late = Some(follower(&joiner, 1, 0));
    }
    first.await?;
    if let Some(l) = late {
        l.await?;
    }
    let back = |r: &Reading| r.subscriptions <= base.subscriptions;
    rig.observe_when(&rec, "settled", &channels, ImplStats::default, s.stats().reconnects, back).await?;
    s.shutdown().await;
    joiner.shutdown().await;
    record_problems(&rec, s.problems().into_iter().chain(joiner.problems()).collect());
    drop((s, joiner));
    let closed = |r: &Reading| r.connections <= base.connections;
    rig.observe_when(&rec, "final", &channels, ImplStats::default, 0, closed).await?;
    rig.teardown().await;
    finish(rec, scenario, strategy, Some(b), budget.mutation)
}

/// Appends chunk `index` until it is acknowledged (or `end` passes). A producer must not
/// leave a hole: consumers deliver in order and cannot pass one (see `StreamProducer`).
async fn produce_until_acked(s: &dyn StreamStrategy, rec: &Recorder, task: &str, index: u64, last: bool, end: Instant) {
    while !produce_recorded(s, rec, task, index, last).await && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A recorded wait running in its own task.
pub(crate) struct RecordedWait {
    process: u32,
    id: String,
    resume: bool,
    task: tokio::task::JoinHandle<()>,
}

impl RecordedWait {
    pub(crate) fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    pub(crate) async fn join(self) -> anyhow::Result<()> {
        Ok(self.task.await?)
    }

    /// Drops the waiting future (as a worker that gives up does); recorded as `info`
    /// "cancelled" unless it had already ended.
    pub(crate) async fn cancel(self, rec: &Recorder) {
        if self.task.is_finished() {
            let _ = self.task.await;
            return;
        }
        self.task.abort();
        let _ = self.task.await;
        let op = Op::Wait { id: self.id, token: None, via: None, resume: self.resume, timeout_ms: None };
        rec.record(self.process, Kind::Info, op, Some("cancelled".into()));
    }
}

/// Starts a wait for `id`, recording its invoke (with its timeout, for the timeout-accuracy
/// check) now and its end when it comes.
pub(crate) fn spawn_wait(
    s: &Arc<dyn FeedbackStrategy>,
    rec: &Arc<Recorder>,
    id: &str,
    timeout: Duration,
    resume: bool,
) -> RecordedWait {
    spawn_wait_inner(s, rec, id, timeout, resume, true)
}

/// A churn wait: load for the cleanup check, recorded without its timeout. A thousand of them
/// expire in the same instant, so when they end measures the machine's scheduler under a
/// thundering herd (seen: 100 ms late beside `stress-ng`), not the deadline logic; the
/// timeout probes measure that.
fn spawn_churn_wait(s: &Arc<dyn FeedbackStrategy>, rec: &Arc<Recorder>, id: &str, timeout: Duration) -> RecordedWait {
    spawn_wait_inner(s, rec, id, timeout, false, false)
}

fn spawn_wait_inner(
    s: &Arc<dyn FeedbackStrategy>,
    rec: &Arc<Recorder>,
    id: &str,
    timeout: Duration,
    resume: bool,
    judge_timeout: bool,
) -> RecordedWait {
    let (s, rec2, id2) = (s.clone(), rec.clone(), id.to_string());
    let process = rec.process();
    let timeout_ms = judge_timeout.then_some(timeout.as_millis() as u64);
    rec.record(process, Kind::Invoke, Op::Wait { id: id.into(), token: None, via: None, resume, timeout_ms }, None);
    let task = tokio::spawn(async move {
        let got = s.wait(&id2, timeout).await;
        let (kind, op, note) = wait_op(&id2, got.as_ref().ok(), resume);
        rec2.record(process, kind, op, note);
    });
    RecordedWait { process, id: id.into(), resume, task }
}

/// Records a respond's invoke and builds its fields: the seed's, the token, and
/// `payload_bytes` of filler. Returns the process, the op (for its completion) and the fields.
fn respond_invoked(
    rec: &Recorder,
    id: &str,
    token: String,
    payload_bytes: usize,
) -> (u32, Op, crate::reference::Fields) {
    let p = rec.process();
    let op = Op::Respond { id: id.into(), token: token.clone() };
    rec.record(p, Kind::Invoke, op.clone(), None);
    let mut fields = crate::reference::response_fields(id, &serde_json::Map::new());
    fields.insert("token".into(), token);
    if payload_bytes > 0 {
        fields.insert("padding".into(), "x".repeat(payload_bytes));
    }
    (p, op, fields)
}

/// Responds `token` to `id` (plus `payload_bytes` of filler), recorded. A failure refused by
/// the circuit breaker certainly did not write (`fail`); any other may have (`info`).
pub(crate) async fn respond_recorded(
    s: &dyn FeedbackStrategy,
    rec: &Recorder,
    id: &str,
    token: String,
    payload_bytes: usize,
) {
    let (p, op, fields) = respond_invoked(rec, id, token, payload_bytes);
    let (kind, note) = publish_record(s.respond(id, &fields).await, true);
    rec.record(p, kind, op, note);
}

/// A recovery probe: a fresh wait, answered as soon as its subscription is at the server
/// (designs that notify), then joined.
pub(crate) async fn fresh_probe(
    s: &Arc<dyn FeedbackStrategy>,
    rec: &Arc<Recorder>,
    redis_url: &str,
    cfg: &Config,
    notifies: bool,
    id: &str,
    seed: u64,
) -> anyhow::Result<()> {
    let wait = spawn_wait(s, rec, id, Duration::from_millis(PROBE_WAIT_MS), false);
    if notifies {
        let channel = cfg.keys.feedback_channel(id);
        crate::poll_until(Duration::from_millis(PROBE_SUBSCRIBE_WAIT_MS), Duration::from_millis(5), || async {
            let n = admin::pubsub_numsub(redis_url, &[&channel]).await.ok()?;
            (n.first().is_some_and(|(_, n)| *n > 0)).then_some(())
        })
        .await;
    }
    respond_recorded(&**s, rec, id, format!("{id}-{seed}"), 0).await;
    wait.join().await
}

/// The workload's responder: through the strategy, or, while a [`Fault::PublishLost`] holds,
/// stored with no PUBLISH ([`store_unpublished`]).
#[derive(Clone)]
pub(crate) struct Responder {
    publish_lost: Arc<std::sync::atomic::AtomicBool>,
    redis_url: String,
    cfg: Config,
}

impl Responder {
    pub(crate) fn new(nemesis: &Nemesis, redis_url: &str, cfg: &Config) -> Responder {
        Responder { publish_lost: nemesis.publish_lost(), redis_url: redis_url.to_string(), cfg: cfg.clone() }
    }

    pub(crate) async fn respond(
        &self,
        s: &dyn FeedbackStrategy,
        rec: &Recorder,
        id: &str,
        token: String,
        payload_bytes: usize,
    ) {
        if self.publish_lost.load(Ordering::SeqCst) {
            store_unpublished(&self.redis_url, &self.cfg, rec, id, token, payload_bytes).await;
        } else {
            respond_recorded(s, rec, id, token, payload_bytes).await;
        }
    }
}

/// A response written the way a responder that died before its PUBLISH leaves it
/// ([`Fault::PublishLost`]): stored under the protocol's schema on a connection of its own,
/// straight to Redis, with no hint. Recorded as a respond like any other, so the checks
/// expect the value to be found.
async fn store_unpublished(
    redis_url: &str,
    cfg: &Config,
    rec: &Recorder,
    id: &str,
    token: String,
    payload_bytes: usize,
) {
    let (p, op, fields) = respond_invoked(rec, id, token, payload_bytes);
    let stored = async {
        let client = redis::Client::open(redis_url)?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        crate::reference::feedback::store_response(cfg, id, &fields).query_async::<()>(&mut conn).await
    };
    let (kind, note) = match stored.await {
        Ok(()) => (Kind::Ok, Some("stored; PUBLISH lost".to_string())),
        Err(e) => (Kind::Info, Some(format!("store without publish failed: {e}"))),
    };
    rec.record(p, kind, op, note);
}

/// How a publish outcome goes into the history: `ok` when acknowledged; `fail` when
/// certainly not applied (a refusal by the server, or, if `breaker_refusal_fails`, by the
/// circuit breaker); `info` when it may or may not have been (a failure mid-command, or
/// stored but not replicated, which a failover may undo).
fn publish_record(outcome: PublishOutcome, breaker_refusal_fails: bool) -> (Kind, Option<String>) {
    match outcome {
        PublishOutcome::Failed { reason } if breaker_refusal_fails && reason.contains("circuit open") => {
            (Kind::Fail, Some(reason))
        }
        PublishOutcome::Refused { reason } => (Kind::Fail, Some(format!("refused: {reason}"))),
        PublishOutcome::Failed { reason } => (Kind::Info, Some(reason)),
        o @ PublishOutcome::StoredUnreplicated { .. } => (Kind::Info, Some(o.status().to_string())),
        other => (Kind::Ok, Some(other.status().to_string())),
    }
}

/// Follows stream `task` from `from` in its own task, recording every delivery.
pub(crate) fn spawn_follower(
    s: &Arc<dyn StreamStrategy>,
    rec: &Arc<Recorder>,
    task: &str,
    consumer: u32,
    from: u64,
    timeout: Duration,
) -> tokio::task::JoinHandle<()> {
    let (s, rec, task) = (s.clone(), rec.clone(), task.to_string());
    tokio::spawn(async move {
        let p = rec.process();
        let op = Op::Follow { task: task.clone(), consumer, from };
        rec.record(p, Kind::Invoke, op.clone(), None);
        let deliveries = rec.clone();
        let mut on_chunk = |c: &crate::reference::stream::Chunk, via: crate::reference::Via| {
            let d = Op::Deliver { task: task.clone(), consumer, index: c.chunk_index, via: Some(via.name()) };
            deliveries.record(p + DELIVERY_PROCESS_OFFSET, Kind::Ok, d, None);
        };
        let (kind, note) = match s.follow(&task, from, timeout, &mut on_chunk).await {
            Ok(FollowEnd::Finished { .. }) => (Kind::Ok, None),
            Ok(FollowEnd::TimedOut { .. }) => (Kind::Fail, Some("timed out".to_string())),
            Err(e) => (Kind::Info, Some(e.to_string())),
        };
        rec.record(p, kind, op, note);
    })
}

/// Publishes chunk `index` of `task` (`last`: the final one), recorded. Returns whether it
/// was acknowledged.
pub(crate) async fn produce_recorded(
    s: &dyn StreamStrategy,
    rec: &Recorder,
    task: &str,
    index: u64,
    last: bool,
) -> bool {
    let chunk = if last {
        crate::reference::stream::Chunk::last(index, format!("c{index}"))
    } else {
        crate::reference::stream::Chunk::content(index, format!("c{index}"))
    };
    let p = rec.process();
    let op = Op::Produce { task: task.into(), index, last };
    rec.record(p, Kind::Invoke, op.clone(), None);
    let (kind, note) = publish_record(s.publish(task, &chunk).await, false);
    rec.record(p, kind, op, note);
    kind == Kind::Ok
}

/// Deliveries are recorded under their follower's process number plus this, so they do not
/// pair with the follower's invoke (a delivery is an ok without an invoke of its own).
const DELIVERY_PROCESS_OFFSET: u32 = 1_000_000;

/// Fan-out queue depth in the fan-out scenario: small, so a slow worker overflows it.
const FANOUT_QUEUE_MAX: usize = 64;
/// Time the slow fan-out worker spends per message, in microseconds (64 messages take 1.3 s).
/// The worker takes nothing until the consumer has counted RESET (see `run_fanout`), so the
/// queue is full when RESET arrives on every run; this pace only keeps it overflowing after.
const FANOUT_WORK_US: u64 = 20_000;
/// How long the fan-out workload waits for RESET to reach the consumer, and then for SHUTDOWN
/// to stop it, in ms. Past that the run goes on, and what the consumer made of a lost signal
/// (sequences going backwards, a consumer still running) is the checks' evidence.
const FANOUT_CONTROL_WAIT_MS: u64 = 5_000;

/// The fan-out workload (seed `004_*`): a burst of ticks to a bounded consumer whose worker
/// is slow, a stale tick, a RESET with fresh low sequences, then SHUTDOWN.
async fn run_fanout(scenario: &Scenario, strategy: &Strategy, seed: u64, budget: Budget) -> anyhow::Result<Outcome> {
    use crate::history::FanoutCounters;
    use crate::reference::fanout::{Event as FanoutEvent, FanoutConsumer, FanoutPublisher};
    use crate::reference::hub::{Control, Hub};
    let mut rig = Rig::start(scenario, seed, budget).await?;
    let channel = rig.cfg.keys.market_channel("ES", "1m");
    let channels = vec![channel.clone()];
    let rec = recorder();
    let base = rig.observe(&rec, "baseline", &channels, 0, 0).await?;
    let hub = Hub::start(&rig.sub_url, rig.cfg.clone(), "fanout");
    let mut consumer = FanoutConsumer::start(&hub, &channel, FANOUT_QUEUE_MAX);
    let publisher = FanoutPublisher::connect(&rig.cmd_url, rig.cfg.clone()).await?;
    let subscribed = crate::poll_until(Duration::from_secs(10), Duration::from_millis(10), || async {
        let n = admin::pubsub_numsub(&rig.redis.url(), &[&channel]).await.ok()?;
        (n[0].1 == 1).then_some(())
    })
    .await;
    anyhow::ensure!(subscribed.is_some(), "the fan-out consumer never subscribed");
    let mut events = std::mem::replace(&mut consumer.events, tokio::sync::mpsc::channel(1).1);
    let taken = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    let worker = {
        let (rec, taken, stats) = (rec.clone(), taken.clone(), consumer.stats.clone());
        tokio::spawn(async move {
            let p = rec.process();
            // The worker starts only once the consumer has counted RESET: the burst has
            // filled the queue by then, so RESET meets a full queue on every run. Pacing
            // alone left a slot free now and then (the worker took one in the few ms between
            // the last tick and RESET), and a consumer dropping RESET when full then passed.
            let reset_seen = || async { (stats.resets.load(std::sync::atomic::Ordering::Relaxed) >= 1).then_some(()) };
            let _ =
                crate::poll_until(Duration::from_millis(FANOUT_CONTROL_WAIT_MS), Duration::from_millis(5), reset_seen)
                    .await;
            while let Some(e) = events.recv().await {
                let op = match e {
                    FanoutEvent::Tick(t) => Op::Take { seq: t.seq, reset: false },
                    FanoutEvent::Reset => Op::Take { seq: 0, reset: true },
                };
                rec.record(p, Kind::Ok, op, None);
                taken.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_micros(FANOUT_WORK_US)).await;
            }
        })
    };
    let ticks = (budget.ids * 50) as u64;
    for seq in 1..=ticks {
        publish_tick(&publisher, &channel, &rec, seq).await;
    }
    publish_tick(&publisher, &channel, &rec, ticks / 2).await; // stale
                                                               // RESET goes out once the consumer has taken in the whole burst (bounded: 20 s), so it
                                                               // cannot overtake ticks still in the subscription buffer and find the queue not yet full.
    let burst_in = crate::poll_until(Duration::from_secs(20), Duration::from_millis(5), || async {
        (load(&consumer.stats.received) > ticks).then_some(())
    })
    .await;
    anyhow::ensure!(burst_in.is_some(), "the fan-out consumer did not receive the burst");
    // With faults: applied now (e.g. every subscriber dropped), and healed once the hub has
    // reconnected and resubscribed the data channel (bounded: 10 s), so the control signals
    // below go to a consumer on its second connection.
    if !scenario.faults.is_empty() {
        let mut nemesis = rig.nemesis();
        let described = serde_json::to_string(&scenario.faults).expect("faults serialise");
        rec.record(rec.process(), Kind::Ok, Op::Nemesis { action: "apply".into(), faults: described }, None);
        for f in &scenario.faults {
            nemesis.apply(f, &mut *rig.redis).await?;
        }
        crate::poll_until(Duration::from_secs(10), Duration::from_millis(10), || async {
            let n = admin::pubsub_numsub(&rig.redis.url(), &[&channel]).await.ok()?;
            (hub.reconnects() >= 1 && n[0].1 == 1).then_some(())
        })
        .await;
        nemesis.heal(&mut *rig.redis).await?;
        rec.record(rec.process(), Kind::Ok, Op::Nemesis { action: "heal".into(), faults: String::new() }, None);
    }
    control_recorded(&publisher, &rec, Control::Reset).await;
    // The fresh low sequences go out once the worker has drained the queue: RESET reached
    // the consumer while the queue was full, so one that dropped it (or never got it) now
    // hands the worker sequences that go backwards with no reset between (bounded: 30 s).
    let drained = crate::poll_until(Duration::from_secs(30), Duration::from_millis(10), || async {
        let st = &consumer.stats;
        (load(&taken) >= load(&st.enqueued)).then_some(())
    })
    .await;
    anyhow::ensure!(drained.is_some(), "the fan-out worker did not drain its queue within 30 s");
    for seq in 1..=10 {
        publish_tick(&publisher, &channel, &rec, seq).await;
    }
    let expected = ticks + 11;
    let all_in = crate::poll_until(Duration::from_secs(20), Duration::from_millis(10), || async {
        (consumer.stats.received.load(std::sync::atomic::Ordering::Relaxed) >= expected).then_some(())
    })
    .await;
    anyhow::ensure!(all_in.is_some(), "the fan-out consumer did not receive the burst");
    control_recorded(&publisher, &rec, Control::Shutdown).await;
    let stopped =
        crate::poll_until(Duration::from_millis(FANOUT_CONTROL_WAIT_MS), Duration::from_millis(10), || async {
            consumer.is_stopped().then_some(())
        })
        .await;
    let stats = consumer.stats.clone();
    // A consumer still running is stopped here, so its worker's queue closes.
    let running = if stopped.is_none() {
        let what = format!("the fan-out consumer was still running {FANOUT_CONTROL_WAIT_MS} ms after SHUTDOWN");
        rec.record(rec.process(), Kind::Info, Op::Problem { what }, None);
        consumer.stop().await;
        None
    } else {
        Some(consumer)
    };
    worker.await?;
    let st = &stats;
    let counters = FanoutCounters {
        received: load(&st.received),
        enqueued: load(&st.enqueued),
        dropped_overflow: load(&st.dropped_overflow),
        dropped_lagged: load(&st.dropped_lagged),
        stale_skipped: load(&st.stale_skipped),
        malformed: load(&st.malformed),
        resets: load(&st.resets),
    };
    rec.record(rec.process(), Kind::Ok, Op::FanoutCounters { counters }, None);
    if let Some(consumer) = running {
        consumer.stop().await;
    }
    // The stopped consumer released its channel: nothing of the run is subscribed now.
    let back = |r: &Reading| r.subscriptions <= base.subscriptions;
    rig.observe_when(&rec, "settled", &channels, ImplStats::default, hub.reconnects(), back).await?;
    hub.shutdown().await;
    drop(publisher);
    let closed = |r: &Reading| r.connections <= base.connections;
    rig.observe_when(&rec, "final", &channels, ImplStats::default, 0, closed).await?;
    rig.teardown().await;
    finish(rec, scenario, strategy, None, budget.mutation)
}

/// Publishes a control signal, recorded as `control` (ok once acknowledged).
async fn control_recorded(
    publisher: &crate::reference::fanout::FanoutPublisher,
    rec: &Recorder,
    signal: crate::reference::hub::Control,
) {
    let p = rec.process();
    let word = match signal {
        crate::reference::hub::Control::Reset => "RESET",
        crate::reference::hub::Control::Shutdown => "SHUTDOWN",
    };
    let op = Op::Control { signal: word.into() };
    rec.record(p, Kind::Invoke, op.clone(), None);
    let out = publisher.control(signal).await;
    rec.record(p, if out.committed() { Kind::Ok } else { Kind::Info }, op, None);
}

async fn publish_tick(publisher: &crate::reference::fanout::FanoutPublisher, channel: &str, rec: &Recorder, seq: u64) {
    let p = rec.process();
    rec.record(p, Kind::Invoke, Op::Tick { seq }, None);
    let tick = crate::reference::fanout::Tick { seq, payload: serde_json::json!({ "close": seq }) };
    let out = publisher.publish(channel, &tick).await;
    rec.record(p, if out.committed() { Kind::Ok } else { Kind::Info }, Op::Tick { seq }, None);
}

/// Closes the recording (every task holding the recorder has ended) and judges it.
fn finish(
    rec: Arc<Recorder>,
    scenario: &Scenario,
    strategy: &Strategy,
    bounds: Option<Bounds>,
    mutation: Option<Mutation>,
) -> anyhow::Result<Outcome> {
    let history = Arc::try_unwrap(rec).map_err(|_| anyhow::anyhow!("recorder still shared"))?.into_history();
    let mut out = judge(scenario, strategy, history, bounds.as_ref());
    out.mutation = mutation;
    Ok(out)
}

/// Runs the checkers over a history and compares with the scenario's expectation. Pure, and
/// of its arguments alone: recorded histories (`fixtures/`) are judged the same way as live
/// ones. `bounds` (from [`bounds`]) switches on the liveness checks of feedback runs; which
/// apply depends on what the strategy's design claims ([`Bounds::notifies`],
/// [`Bounds::polls`]). The strategy says whether it ran over the process protocol and whose
/// expectations it is held to.
pub fn judge(scenario: &Scenario, strategy: &Strategy, history: History, bounds: Option<&Bounds>) -> Outcome {
    let mut checks = if scenario.fanout {
        vec![checker::fanout(&history), checker::cleanup(&history, CleanupLimits::default())]
    } else if scenario.stream {
        stream_checks(&history, bounds)
    } else {
        feedback_checks(&history, bounds)
    };
    checks.push(checker::exercised(&history));
    let external = strategy.is_external();
    // A built-in strategy has no protocol to break, so it reports no problem; one that does
    // is a finding all the same (cargo-mutants' `problems` returning one went unnoticed).
    let reported = history.events.iter().any(|e| matches!(e.op, Op::Problem { .. }));
    if external || reported {
        checks.push(checker::protocol(&history));
    }
    if !scenario.live_waiters && !scenario.stream && !scenario.fanout {
        checks.push(checker::resume(&history));
    }
    // Latency quantiles are reported, not judged: the bounds are the wakeup, fallback and
    // recovery checks'.
    let verdict = checks.iter().filter(|c| c.checker != "latency").fold(Validity::Valid, |acc, c| acc.and(c.validity));
    // An implementation with no declared expectation: what it gets is a finding.
    let (expected_verdict, expectation) = match scenario.expectation(strategy) {
        None => (verdict, NO_EXPECTATION.to_string()),
        Some((Validity::Valid, _)) => (Validity::Valid, String::new()),
        Some((v, why)) => (v, why.to_string()),
    };
    Outcome {
        scenario: scenario.name.into(),
        strategy: strategy.name().into(),
        verdict,
        expected_verdict,
        expectation,
        checks,
        bounds: bounds.copied(),
        mutation: None,
        history,
    }
}

/// The checks of a chunk stream: nothing duplicated or out of order, nothing left behind,
/// and (with `bounds`) every chunk delivered in time.
pub fn stream_checks(history: &History, bounds: Option<&Bounds>) -> Vec<Verdict> {
    let mut c = vec![
        checker::duplicated(history),
        checker::order(history),
        checker::cleanup(history, CleanupLimits::default()),
    ];
    if let Some(b) = bounds {
        c.push(checker::delivery(history, b));
    }
    c
}

/// The checks of a feedback workload: nothing lost or left behind, latency reported, and
/// (with `bounds`) the liveness checks the design's claims call for. Shared with the
/// generated cases (`crate::case`), so a case is judged as a scenario is.
pub fn feedback_checks(history: &History, bounds: Option<&Bounds>) -> Vec<Verdict> {
    let mut c = vec![
        checker::lost(history),
        checker::cleanup(history, CleanupLimits::default()),
        checker::latency(history, None),
    ];
    if let Some(b) = bounds {
        c.push(checker::wakeup(history, b));
        c.push(checker::recovery(history, b));
        c.push(checker::timeouts(history, b));
        if b.polls && b.poll_interval_ms.is_some() {
            c.push(checker::fallback(history, b));
        }
        if b.notifies {
            c.push(checker::detection(history, b));
        }
        if b.notifies && b.polls {
            c.push(checker::rescues(history, b));
        }
        // Designs that store: every value handed out must be in storage (pub/sub-only
        // stores nothing, so a later read finds nothing by design).
        if b.polls {
            c.push(checker::phantom(history));
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A built-in strategy that reports a problem is judged for it, like an external one; one
    /// that reports none gets no protocol check at all.
    #[test]
    fn a_problem_a_built_in_strategy_reports_is_a_finding() {
        let sc = Scenario::new("clean", "no fault");
        let hybrid = Strategy::from(BuiltIn::Hybrid);
        let problem =
            Event { time_us: 5, process: 1, kind: Kind::Info, op: Op::Problem { what: "xyzzy".into() }, note: None };
        let out = judge(&sc, &hybrid, History { events: vec![problem] }, None);
        let protocol = out.checks.iter().find(|c| c.checker == "protocol").expect("a protocol check");
        assert_eq!(protocol.validity, Validity::Invalid);
        assert!(protocol.evidence[0].contains("xyzzy"), "{:?}", protocol.evidence);
        assert_eq!(out.verdict, Validity::Invalid);
        let quiet = judge(&sc, &hybrid, History { events: vec![] }, None);
        assert!(quiet.checks.iter().all(|c| c.checker != "protocol"));
    }
}
