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
//! harness lost its teeth.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::checker::{self, CleanupLimits, Validity, Verdict};
use crate::history::{Event, History, Kind, Op, Reading};
use crate::infra::{admin, Persistence, ProcessRedis, RedisNode, RedisSpec};
use crate::nemesis::{Fault, Nemesis, Target};
use crate::reference::baselines::{PollingOnly, PollingOnlyStream, PubSubOnly, PubSubOnlyStream};
use crate::reference::feedback::Hybrid;
use crate::reference::stream::{FollowEnd, HybridStream};
use crate::reference::{Config, FeedbackStrategy, PublishOutcome, StreamStrategy, WaitOutcome};
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

/// The strategies every scenario runs.
pub const STRATEGIES: [&str; 3] = ["hybrid", "pubsub-only", "polling-only"];

/// One scenario of the catalogue.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub name: &'static str,
    pub about: &'static str,
    pub persistence: Persistence,
    /// Faults applied together when the fault window opens; all healed when it closes.
    pub faults: Vec<Fault>,
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
    /// Filler bytes added to every response (large messages for pub/sub-only).
    pub payload_bytes: usize,
    /// Redis config directives for the run's server.
    pub redis_config: &'static [(&'static str, &'static str)],
    /// A chunk-streaming workload (seed `003_*`) instead of feedback.
    pub stream: bool,
    /// The fan-out workload (seed `004_*`) instead of feedback.
    pub fanout: bool,
    /// Strategies this scenario applies to; empty: all.
    pub applies_to: &'static [&'static str],
    /// Expected verdict per strategy, in [`STRATEGIES`] order.
    pub expected: [Validity; 3],
    /// Why a non-valid expectation holds.
    pub why: &'static str,
}

impl Scenario {
    /// Whether `strategy` runs in this scenario.
    pub fn applies(&self, strategy: &str) -> bool {
        self.applies_to.is_empty() || self.applies_to.contains(&strategy)
    }

    /// A feedback scenario with live waiters, no fault and no persistence; the builder
    /// methods below change what differs.
    fn new(name: &'static str, about: &'static str, expected: [Validity; 3]) -> Scenario {
        Scenario {
            name,
            about,
            persistence: Persistence::None,
            faults: vec![],
            late_faults: vec![],
            live_waiters: true,
            resumers: 1,
            churn_waits: 0,
            payload_bytes: 0,
            redis_config: &[],
            stream: false,
            fanout: false,
            applies_to: &[],
            expected,
            why: "",
        }
    }
    fn persistence(mut self, p: Persistence) -> Self {
        self.persistence = p;
        self
    }
    fn faults(mut self, f: Vec<Fault>) -> Self {
        self.faults = f;
        self
    }
    fn late_faults(mut self, f: Vec<Fault>) -> Self {
        self.late_faults = f;
        self
    }
    /// Nobody waits while responses are published; final readers resume afterwards.
    fn resume_only(mut self, resumers: usize) -> Self {
        self.live_waiters = false;
        self.resumers = resumers;
        self
    }
    fn churn(mut self, waits: usize) -> Self {
        self.churn_waits = waits;
        self
    }
    fn payload(mut self, bytes: usize) -> Self {
        self.payload_bytes = bytes;
        self
    }
    fn redis_config(mut self, c: &'static [(&'static str, &'static str)]) -> Self {
        self.redis_config = c;
        self
    }
    fn stream(mut self) -> Self {
        self.stream = true;
        self
    }
    fn fanout(mut self, applies_to: &'static [&'static str]) -> Self {
        self.fanout = true;
        self.applies_to = applies_to;
        self
    }
    fn why(mut self, why: &'static str) -> Self {
        self.why = why;
        self
    }
}

/// The catalogue, in run order.
pub fn catalogue() -> Vec<Scenario> {
    use Validity::{Invalid, Valid};
    let all_valid = [Valid, Valid, Valid];
    let pubsub_breaks = [Valid, Invalid, Valid];
    let sub_gap = Fault::ProxyDown { target: Target::Subscriber };
    vec![
        Scenario::new("clean", "no fault: every design delivers", all_valid),
        Scenario::new("latency", "50 ms +- 20 ms on both connections", all_valid).faults(vec![Fault::Latency {
            target: Target::Both,
            latency_ms: 50,
            jitter_ms: 20,
        }]),
        Scenario::new(
            "subscriber-blackhole",
            "the subscriber connection goes silent (half-open) while storage works",
            pubsub_breaks,
        )
        .faults(vec![Fault::Blackhole { target: Target::Subscriber }])
        .why("pub/sub-only: hints sent into a dead subscription are gone"),
        Scenario::new(
            "crash-restart-aof",
            "SIGKILL + restart (AOF always) while the subscriber is cut off",
            pubsub_breaks,
        )
        .persistence(Persistence::AofAlways)
        .faults(vec![Fault::CrashRestart, sub_gap.clone()])
        .why("pub/sub-only: messages published during the reconnect gap are lost"),
        // Nobody waits live, so nothing is delivered before the crash wipes the writes: the
        // loss is the configuration's, deterministically.
        Scenario::new(
            "crash-restart-no-persistence",
            "responses acknowledged, then SIGKILL + restart with persistence none, then resume",
            [Invalid, Invalid, Invalid],
        )
        .late_faults(vec![Fault::CrashRestart])
        .resume_only(1)
        .why("persistence none: acknowledged writes vanish in the crash (caused by the configuration)"),
        Scenario::new(
            "resume-from-checkpoint",
            "respond while no worker listens, then a new worker resumes (seed 000 scenario B)",
            pubsub_breaks,
        )
        .resume_only(1)
        .why("pub/sub-only: a message published while nobody listens is lost"),
        Scenario::new(
            "two-workers-resume",
            "respond while nobody listens, then two workers resume the same checkpoint",
            pubsub_breaks,
        )
        .resume_only(2)
        .why("pub/sub-only: nothing to resume from"),
        Scenario::new(
            "graceful-restart",
            "SHUTDOWN + restart (AOF everysec) under load while the subscriber reconnects",
            pubsub_breaks,
        )
        .persistence(Persistence::AofEverysec)
        .faults(vec![Fault::GracefulRestart, sub_gap])
        .why("pub/sub-only: messages published during the reconnect gap are lost"),
        Scenario::new(
            "reset-peer-subscriber",
            "the subscriber connection is reset (RST), and every reconnect too, for a while",
            pubsub_breaks,
        )
        .faults(vec![Fault::ResetPeer { target: Target::Subscriber }])
        .why("pub/sub-only: no subscription survives the resets, so every hint is lost"),
        Scenario::new(
            "redis-unreachable",
            "Redis killed for the whole window (responses fail), then started again",
            all_valid,
        )
        .faults(vec![Fault::RedisDown]),
        Scenario::new(
            "publisher-outage",
            "the command connection refused for the window: retries, then the circuit breaker",
            all_valid,
        )
        .faults(vec![Fault::ProxyDown { target: Target::Commands }]),
        Scenario::new(
            "waiter-churn-cleanup",
            "1,000 waits that time out or are cancelled, then the usual workload",
            all_valid,
        )
        .churn(1_000),
        Scenario::new(
            "slow-subscriber-cut-off",
            "a slow subscriber (16 KB/s) is disconnected by client-output-buffer-limit pubsub 8kb",
            pubsub_breaks,
        )
        .faults(vec![Fault::Bandwidth { target: Target::Subscriber, rate_kb_s: 16 }])
        .payload(32 * 1024)
        .redis_config(&[("client-output-buffer-limit", "pubsub 8kb 8kb 0")])
        .why("pub/sub-only: its payload-carrying messages overflow the buffer limit and the server cuts it off"),
        Scenario::new(
            "stream-late-joiner-reconnect",
            "a stream with its subscriber reset mid-way, and a consumer joining late from index 0",
            pubsub_breaks,
        )
        .faults(vec![Fault::ResetPeer { target: Target::Subscriber }])
        .stream()
        .why(
            "pub/sub-only streaming: chunks published during the reset gap, and before the late joiner came, are gone",
        ),
        // Fan-out is Pub/Sub by nature (seed 004 stores no history): one implementation.
        Scenario::new(
            "fanout-overflow",
            "a burst to a 64-deep fan-out queue behind a slow worker, a stale tick, RESET, SHUTDOWN",
            all_valid,
        )
        .fanout(&["hybrid"]),
    ]
}

/// Workload size and timing. `quick` shrinks everything for CI.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    pub ids: usize,
    /// How long the fault window stays open, in ms.
    pub fault_window_ms: u64,
    /// Poll interval of the strategies, in ms.
    pub poll_interval_ms: u64,
    /// How long after the heal a live waiter keeps waiting, in ms: enough for a reconnect
    /// (backoff at most 500 ms here) and a poll tick, so a waiter that still times out is
    /// evidence, not impatience.
    pub recovery_ms: u64,
}

impl Budget {
    pub fn new(quick: bool) -> Budget {
        if quick {
            Budget { ids: 8, fault_window_ms: 1_000, poll_interval_ms: 100, recovery_ms: 1_000 }
        } else {
            // The seed's 0.5 s poll interval.
            Budget { ids: 40, fault_window_ms: 2_500, poll_interval_ms: 500, recovery_ms: 2_000 }
        }
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
    #[serde(skip)]
    pub history: History,
}

pub(crate) async fn connect(
    strategy: &str,
    cmd_url: &str,
    sub_url: &str,
    cfg: Config,
) -> anyhow::Result<Arc<dyn FeedbackStrategy>> {
    Ok(match strategy {
        "hybrid" => Arc::new(Hybrid::connect(cmd_url, sub_url, cfg).await?),
        "pubsub-only" => Arc::new(PubSubOnly::connect(cmd_url, sub_url, cfg).await?),
        "polling-only" => Arc::new(PollingOnly::connect(cmd_url, cfg).await?),
        other => anyhow::bail!("unknown strategy {other:?}; valid: {}", STRATEGIES.join(", ")),
    })
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
    })
}

pub(crate) fn wait_op(id: &str, outcome: Option<&WaitOutcome>, resume: bool) -> (Kind, Op, Option<String>) {
    match outcome {
        Some(WaitOutcome::Obtained { fields, via }) => (
            Kind::Ok,
            Op::Wait {
                id: id.into(),
                token: fields.get("token").cloned(),
                via: Some(format!("{via:?}").to_lowercase()),
                resume,
            },
            None,
        ),
        Some(WaitOutcome::TimedOut) => {
            (Kind::Fail, Op::Wait { id: id.into(), token: None, via: None, resume }, Some("timed out".into()))
        }
        Some(WaitOutcome::Shutdown) => {
            (Kind::Info, Op::Wait { id: id.into(), token: None, via: None, resume }, Some("shutdown".into()))
        }
        None => (Kind::Info, Op::Wait { id: id.into(), token: None, via: None, resume }, Some("error".into())),
    }
}

/// One run's infrastructure: its own Redis, the fault proxy, two proxies in front of it.
pub(crate) struct Rig {
    pub(crate) redis: ProcessRedis,
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
        Rig::start_with(scenario.name, spec, seed, budget.poll_interval_ms).await
    }

    /// A Redis from `spec`, a fault proxy seeded with `seed`, and the two proxies.
    pub(crate) async fn start_with(
        name: &str,
        spec: RedisSpec,
        seed: u64,
        poll_interval_ms: u64,
    ) -> anyhow::Result<Rig> {
        let redis = ProcessRedis::start(spec).await?;
        let faults = FaultProxy::from_env(ServerOptions { seed: Some(seed), ..Default::default() }).await?;
        let tp = faults.client().clone();
        let base = format!("{name}-{}", redis.port());
        let cmd = tp.create_proxy(&format!("{base}-cmd"), "127.0.0.1:0", &redis.addr()).await?;
        let sub = tp.create_proxy(&format!("{base}-sub"), "127.0.0.1:0", &redis.addr()).await?;
        let prefix = redis.key_prefix().to_string();
        // Faster health checks and reconnects than the defaults: fault windows are seconds.
        let cfg = Config {
            poll_interval_ms,
            health_check_interval_ms: 250,
            health_check_timeout_ms: 500,
            reconnect_delay_ms_max: 500,
            command_timeout_ms: 1_000,
            connect_timeout_ms: 1_000,
            ..Config::default().with_prefix(&prefix)
        };
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
        self.observe_when(rec, phase, channels, || waiters, reconnects, |_| true).await
    }

    /// Reads until `settled` holds or `quiesce_wait_ms` passes, and records the last reading
    /// either way: one that never settles is the evidence of a leak. (A fixed sleep here
    /// would either hide slow cleanup or make the check flaky.)
    pub(crate) async fn observe_when(
        &self,
        rec: &Recorder,
        phase: &str,
        channels: &[String],
        waiters: impl Fn() -> u64,
        reconnects: u64,
        settled: impl Fn(&Reading) -> bool,
    ) -> anyhow::Result<Reading> {
        let deadline = Instant::now() + Duration::from_millis(self.quiesce_wait_ms);
        loop {
            let mut reading = observe(&self.redis.url(), &self.prefix, channels, waiters()).await?;
            reading.reconnects = reconnects;
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
        let left = worker.stats().waiters as u64;
        worker.shutdown().await;
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

pub(crate) fn recorder() -> Arc<Recorder> {
    Arc::new(Recorder { start: Instant::now(), events: Mutex::new(Vec::new()), next_process: AtomicU32::new(0) })
}

pub async fn run(scenario: &Scenario, strategy: &str, seed: u64, budget: Budget) -> anyhow::Result<Outcome> {
    if scenario.stream {
        return run_stream(scenario, strategy, seed, budget).await;
    }
    if scenario.fanout {
        return run_fanout(scenario, strategy, seed, budget).await;
    }
    let mut rig = Rig::start(scenario, seed, budget).await?;
    let (cmd_url, sub_url, cfg) = (rig.cmd_url.clone(), rig.sub_url.clone(), rig.cfg.clone());
    let ids: Vec<String> = (0..budget.ids).map(|i| format!("{}-{i}", scenario.name)).collect();
    // Every channel the run may subscribe: the workload's ids and the churn ids.
    let channels: Vec<String> = ids
        .iter()
        .cloned()
        .chain((0..scenario.churn_waits).map(|i| format!("{}-churn-{i}", scenario.name)))
        .map(|id| cfg.keys.feedback_channel(&id))
        .collect();
    let rec = recorder();
    let mut rng = StdRng::seed_from_u64(seed);
    let window = Duration::from_millis(budget.fault_window_ms);
    // Waits outlast the window and the recovery after it.
    let wait_timeout = window + Duration::from_millis(budget.recovery_ms + 300);

    let base = rig.observe(&rec, "baseline", &channels, 0, 0).await?;
    let s = connect(strategy, &cmd_url, &sub_url, cfg.clone()).await?;

    // Churn: waits that time out or are cancelled, to see whether they leave anything behind.
    let mut churn = Vec::new();
    for i in 0..scenario.churn_waits {
        let id = format!("{}-churn-{i}", scenario.name);
        let wait = spawn_wait(&s, &rec, &id, Duration::from_millis(CHURN_WAIT_MS), false);
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

    // Phase 1: live waiters (if any), then the fault window with responses spread across it.
    let mut waiters = Vec::new();
    if scenario.live_waiters {
        for id in &ids {
            waiters.push(spawn_wait(&s, &rec, id, wait_timeout, false));
        }
        let all = crate::poll_until(Duration::from_secs(10), Duration::from_millis(10), || async {
            let n = s.stats().waiters;
            (n >= ids.len()).then_some(())
        })
        .await;
        anyhow::ensure!(all.is_some(), "waiters did not start");
        // Let subscriptions settle so the fault, not start-up, is what the run measures.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let mut nemesis = rig.nemesis();
    let offsets: Vec<Duration> =
        ids.iter().map(|_| Duration::from_millis(rng.random_range(100..budget.fault_window_ms.max(200)))).collect();
    let window_start = Instant::now();
    let described = serde_json::to_string(&scenario.faults).expect("faults serialise");
    rec.record(rec.process(), Kind::Ok, Op::Nemesis { action: "apply".into(), faults: described }, None);
    for f in &scenario.faults {
        nemesis.apply(f, &mut rig.redis).await?;
    }
    let mut responders = Vec::new();
    let payload_bytes = scenario.payload_bytes;
    for (id, offset) in ids.iter().zip(offsets) {
        let (s, rec, id) = (s.clone(), rec.clone(), id.clone());
        responders.push(tokio::spawn(async move {
            tokio::time::sleep_until((window_start + offset).into()).await;
            respond_recorded(&*s, &rec, &id, format!("{id}-{seed}"), payload_bytes).await;
        }));
    }
    for r in responders {
        r.await?;
    }
    for f in &scenario.late_faults {
        nemesis.apply(f, &mut rig.redis).await?;
    }
    tokio::time::sleep_until((window_start + window).into()).await;
    nemesis.heal(&mut rig.redis).await?;
    rec.record(rec.process(), Kind::Ok, Op::Nemesis { action: "heal".into(), faults: String::new() }, None);
    for w in waiters {
        w.join().await?;
    }
    // Settled, the first worker still running: its subscriptions and waiter maps must be
    // back to baseline now (after shutdown the server would drop them anyway and hide a
    // leak).
    let reconnects = s.stats().reconnects;
    let back = |r: &Reading| r.subscriptions <= base.subscriptions && r.waiters == 0;
    rig.observe_when(&rec, "settled", &channels, || s.stats().waiters as u64, reconnects, back).await?;
    s.shutdown().await;
    drop(s);

    // Phase 2: final reads by a fresh worker after everything healed.
    let resume = !scenario.live_waiters;
    let worker = connect(strategy, &cmd_url, &sub_url, cfg.clone()).await?;
    let final_timeout = Duration::from_millis(budget.poll_interval_ms * 2 + 500);
    let finals = ids.iter().flat_map(|id| std::iter::repeat_n(id.as_str(), scenario.resumers.max(1)));
    rig.final_reads(&rec, worker, finals, final_timeout, resume, &channels, &base).await?;
    rig.teardown().await;

    finish(rec, scenario, strategy)
}

pub(crate) async fn connect_stream(
    strategy: &str,
    cmd_url: &str,
    sub_url: &str,
    cfg: Config,
) -> anyhow::Result<Arc<dyn StreamStrategy>> {
    Ok(match strategy {
        "hybrid" => Arc::new(HybridStream::connect(cmd_url, sub_url, cfg).await?),
        "pubsub-only" => Arc::new(PubSubOnlyStream::connect(cmd_url, sub_url, cfg).await?),
        "polling-only" => Arc::new(PollingOnlyStream::connect(cmd_url, cfg).await?),
        other => anyhow::bail!("unknown strategy {other:?}; valid: {}", STRATEGIES.join(", ")),
    })
}

/// The streaming workload: one producer across three fault windows (before, during, after
/// the faults), a consumer following from the start, and a late joiner starting from index
/// 0 after the heal.
async fn run_stream(scenario: &Scenario, strategy: &str, seed: u64, budget: Budget) -> anyhow::Result<Outcome> {
    let mut rig = Rig::start(scenario, seed, budget).await?;
    let task = format!("{}-task", scenario.name);
    let channels = vec![rig.cfg.keys.stream_channel(&task)];
    let rec = recorder();
    let base = rig.observe(&rec, "baseline", &channels, 0, 0).await?;
    let s = connect_stream(strategy, &rig.cmd_url, &rig.sub_url, rig.cfg.clone()).await?;
    let chunks = (budget.ids * 2) as u64;
    let window = Duration::from_millis(budget.fault_window_ms);
    let follow_timeout = window * 3 + Duration::from_millis(budget.recovery_ms + 300);
    let follower = |consumer: u32, from: u64| spawn_follower(&s, &rec, &task, consumer, from, follow_timeout);
    let first = follower(0, 0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut nemesis = rig.nemesis();
    let (mut applied, mut healed, mut late) = (false, false, None);
    let step = window * 3 / chunks as u32;
    let start = Instant::now();
    for i in 0..chunks {
        let third = start.elapsed().as_millis() / window.as_millis().max(1);
        if third >= 1 && !applied {
            applied = true;
            let described = serde_json::to_string(&scenario.faults).expect("faults serialise");
            rec.record(rec.process(), Kind::Ok, Op::Nemesis { action: "apply".into(), faults: described }, None);
            for f in &scenario.faults {
                nemesis.apply(f, &mut rig.redis).await?;
            }
        }
        if third >= 2 && applied && !healed {
            healed = true;
            nemesis.heal(&mut rig.redis).await?;
            rec.record(rec.process(), Kind::Ok, Op::Nemesis { action: "heal".into(), faults: String::new() }, None);
            late = Some(follower(1, 0));
        }
        produce_recorded(&*s, &rec, &task, i, i + 1 == chunks).await;
        tokio::time::sleep(step).await;
    }
    if !healed {
        nemesis.heal(&mut rig.redis).await?;
    }
    first.await?;
    if let Some(l) = late {
        l.await?;
    }
    let back = |r: &Reading| r.subscriptions <= base.subscriptions;
    rig.observe_when(&rec, "settled", &channels, || 0, s.stats().reconnects, back).await?;
    s.shutdown().await;
    drop(s);
    let closed = |r: &Reading| r.connections <= base.connections;
    rig.observe_when(&rec, "final", &channels, || 0, 0, closed).await?;
    rig.teardown().await;
    finish(rec, scenario, strategy)
}

/// A recorded wait running in its own task.
pub(crate) struct RecordedWait {
    process: u32,
    id: String,
    resume: bool,
    task: tokio::task::JoinHandle<()>,
}

impl RecordedWait {
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
        let op = Op::Wait { id: self.id, token: None, via: None, resume: self.resume };
        rec.record(self.process, Kind::Info, op, Some("cancelled".into()));
    }
}

/// Starts a wait for `id`, recording its invoke now and its end when it comes.
pub(crate) fn spawn_wait(
    s: &Arc<dyn FeedbackStrategy>,
    rec: &Arc<Recorder>,
    id: &str,
    timeout: Duration,
    resume: bool,
) -> RecordedWait {
    let (s, rec2, id2) = (s.clone(), rec.clone(), id.to_string());
    let process = rec.process();
    rec.record(process, Kind::Invoke, Op::Wait { id: id.into(), token: None, via: None, resume }, None);
    let task = tokio::spawn(async move {
        let got = s.wait(&id2, timeout).await;
        let (kind, op, note) = wait_op(&id2, got.as_ref().ok(), resume);
        rec2.record(process, kind, op, note);
    });
    RecordedWait { process, id: id.into(), resume, task }
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
    let p = rec.process();
    let op = Op::Respond { id: id.into(), token: token.clone() };
    rec.record(p, Kind::Invoke, op.clone(), None);
    let mut fields = crate::reference::response_fields(id, &serde_json::Map::new());
    fields.insert("token".into(), token);
    if payload_bytes > 0 {
        fields.insert("padding".into(), "x".repeat(payload_bytes));
    }
    let (kind, note) = match s.respond(id, &fields).await {
        PublishOutcome::Failed { reason } if reason.contains("circuit open") => (Kind::Fail, Some(reason)),
        PublishOutcome::Failed { reason } => (Kind::Info, Some(reason)),
        other => (Kind::Ok, Some(other.status().to_string())),
    };
    rec.record(p, kind, op, note);
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
        let mut on_chunk = |c: &crate::reference::stream::Chunk| {
            let d = Op::Deliver { task: task.clone(), consumer, index: c.chunk_index };
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
    let (kind, note) = match s.publish(task, &chunk).await {
        PublishOutcome::Failed { reason } => (Kind::Info, Some(reason)),
        other => (Kind::Ok, Some(other.status().to_string())),
    };
    rec.record(p, kind, op, note);
    kind == Kind::Ok
}

/// Deliveries are recorded under their follower's process number plus this, so they do not
/// pair with the follower's invoke (a delivery is an ok without an invoke of its own).
const DELIVERY_PROCESS_OFFSET: u32 = 1_000_000;

/// Fan-out queue depth in the fan-out scenario: small, so a slow worker overflows it.
const FANOUT_QUEUE_MAX: usize = 64;
/// Time the slow fan-out worker spends per message, in microseconds.
const FANOUT_WORK_US: u64 = 2_000;

/// The fan-out workload (seed `004_*`): a burst of ticks to a bounded consumer whose worker
/// is slow, a stale tick, a RESET with fresh low sequences, then SHUTDOWN.
async fn run_fanout(scenario: &Scenario, strategy: &str, seed: u64, budget: Budget) -> anyhow::Result<Outcome> {
    use crate::history::FanoutCounters;
    use crate::reference::fanout::{Event as FanoutEvent, FanoutConsumer, FanoutPublisher};
    use crate::reference::hub::{Control, Hub};
    let rig = Rig::start(scenario, seed, budget).await?;
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
    let worker = {
        let rec = rec.clone();
        tokio::spawn(async move {
            let p = rec.process();
            while let Some(e) = events.recv().await {
                let op = match e {
                    FanoutEvent::Tick(t) => Op::Take { seq: t.seq, reset: false },
                    FanoutEvent::Reset => Op::Take { seq: 0, reset: true },
                };
                rec.record(p, Kind::Ok, op, None);
                tokio::time::sleep(Duration::from_micros(FANOUT_WORK_US)).await;
            }
        })
    };
    let ticks = (budget.ids * 50) as u64;
    for seq in 1..=ticks {
        publish_tick(&publisher, &channel, &rec, seq).await;
    }
    publish_tick(&publisher, &channel, &rec, ticks / 2).await; // stale
    publisher.control(Control::Reset).await;
    for seq in 1..=10 {
        publish_tick(&publisher, &channel, &rec, seq).await;
    }
    let expected = ticks + 11;
    let all_in = crate::poll_until(Duration::from_secs(20), Duration::from_millis(10), || async {
        (consumer.stats.received.load(std::sync::atomic::Ordering::Relaxed) >= expected).then_some(())
    })
    .await;
    anyhow::ensure!(all_in.is_some(), "the fan-out consumer did not receive the burst");
    publisher.control(Control::Shutdown).await;
    worker.await?;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    let st = &consumer.stats;
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
    consumer.stop().await;
    // The stopped consumer released its channel: nothing of the run is subscribed now.
    let back = |r: &Reading| r.subscriptions <= base.subscriptions;
    rig.observe_when(&rec, "settled", &channels, || 0, hub.reconnects(), back).await?;
    hub.shutdown().await;
    drop(publisher);
    let closed = |r: &Reading| r.connections <= base.connections;
    rig.observe_when(&rec, "final", &channels, || 0, 0, closed).await?;
    rig.teardown().await;
    finish(rec, scenario, strategy)
}

async fn publish_tick(publisher: &crate::reference::fanout::FanoutPublisher, channel: &str, rec: &Recorder, seq: u64) {
    let p = rec.process();
    rec.record(p, Kind::Invoke, Op::Tick { seq }, None);
    let tick = crate::reference::fanout::Tick { seq, payload: serde_json::json!({ "close": seq }) };
    let out = publisher.publish(channel, &tick).await;
    rec.record(p, if out.committed() { Kind::Ok } else { Kind::Info }, Op::Tick { seq }, None);
}

/// Closes the recording (every task holding the recorder has ended) and judges it.
fn finish(rec: Arc<Recorder>, scenario: &Scenario, strategy: &str) -> anyhow::Result<Outcome> {
    let history = Arc::try_unwrap(rec).map_err(|_| anyhow::anyhow!("recorder still shared"))?.into_history();
    Ok(judge(scenario, strategy, history))
}

/// Runs the checkers over a history and compares with the scenario's expectation. Pure:
/// recorded histories (`fixtures/`) are judged the same way as live ones.
pub fn judge(scenario: &Scenario, strategy: &str, history: History) -> Outcome {
    let mut checks = if scenario.fanout {
        vec![checker::fanout(&history), checker::cleanup(&history, CleanupLimits::default())]
    } else if scenario.stream {
        vec![
            checker::duplicated(&history),
            checker::order(&history),
            checker::cleanup(&history, CleanupLimits::default()),
        ]
    } else {
        vec![
            checker::lost(&history),
            checker::cleanup(&history, CleanupLimits::default()),
            checker::latency(&history, None),
        ]
    };
    if !scenario.live_waiters && !scenario.stream && !scenario.fanout {
        checks.push(checker::resume(&history));
    }
    // Latency has no bound here: it is reported, not judged.
    let verdict = checks.iter().filter(|c| c.checker != "latency").fold(Validity::Valid, |acc, c| acc.and(c.validity));
    let idx = STRATEGIES.iter().position(|s| *s == strategy);
    Outcome {
        scenario: scenario.name.into(),
        strategy: strategy.into(),
        verdict,
        expected_verdict: idx.map_or(Validity::Unknown, |i| scenario.expected[i]),
        expectation: match idx.map(|i| scenario.expected[i]) {
            Some(Validity::Valid) | None => String::new(),
            Some(_) => scenario.why.to_string(),
        },
        checks,
        history,
    }
}
