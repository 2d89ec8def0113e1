//! Failover on replicated Redis: which acknowledged responses a failover takes back.
//!
//! The scenarios of the `sentinel` topology. The reference hybrid responds every
//! [`WRITE_INTERVAL_MS`] through a Sentinel URL (`reference::endpoint`): it finds the primary
//! by asking the Sentinels, and its command connection and subscriber move by themselves when
//! the primary does. A fault hits one host (the primary, a replica or a Sentinel), is healed,
//! the topology converges, and a fresh worker, resolving through the Sentinels as well,
//! resumes every id. The history goes through the same `lost` and `resume` checkers as the
//! standalone suite: an acknowledged response the resumer cannot find is lost.
//!
//! Each scenario runs twice: as deployed today (`hybrid`: asynchronous replication), and with
//! the durability option (`hybrid-durable`: `WAIT 1` after every store,
//! `min-replicas-to-write 1` on the servers). [`loss`] is a pure function of what was
//! acknowledged and what the resumer found, tested on both outcomes.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::checker::{self, Validity, Verdict};
use crate::history::{History, Kind, Op};
use crate::infra::sentinel::{Host, SentinelSpec, SentinelTopology};
use crate::reference::feedback::Hybrid;
use crate::reference::{Config, Durability, FeedbackStrategy};
use crate::scenario::{recorder, respond_recorded, spawn_wait, Outcome};
use crate::strategy::{BuiltIn, Expectations};

/// One response every this many ms.
pub const WRITE_INTERVAL_MS: u64 = 20;
/// Writing before the fault, during it ...
const BEFORE_MS: u64 = 1_000;
const FAULT_MS: u64 = 6_000;
/// ... and after the topology converged following the heal (recovery), in ms.
const AFTER_MS: u64 = 2_000;
/// How long the topology may take to converge after the heal, in ms, and how often it is
/// checked meanwhile.
const CONVERGE_TIMEOUT_MS: u64 = 30_000;
const CONVERGE_POLL_MS: u64 = 500;
/// How long the resumer waits for each id, in ms (storage is read first: a stored response
/// comes at once, a lost one times out).
const RESUME_WAIT_MS: u64 = 1_000;
/// The durability option: replicas to wait for, and for how long, in ms.
const DURABLE_WAIT: Durability = Durability { replicas: 1, timeout_ms: 500 };

/// What happens to the target host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailoverFault {
    /// Cut from the backbone (Sentinels and replicas); clients still reach a server.
    Partition,
    /// SIGSTOP for the whole window (`docker pause`).
    Pause,
    /// SIGKILL, started again at the heal.
    Kill,
    /// Clients cut off a server while the Sentinels and the replica still see it.
    ClientCut,
}

impl FailoverFault {
    pub fn name(self) -> &'static str {
        match self {
            FailoverFault::Partition => "partition",
            FailoverFault::Pause => "pause",
            FailoverFault::Kill => "kill",
            FailoverFault::ClientCut => "client-cut",
        }
    }
}

/// Which host the fault hits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    /// The primary at start.
    Primary,
    /// The replica.
    Replica,
    /// One Sentinel of three (the quorum is two).
    Sentinel,
}

impl Target {
    fn host(self) -> Host {
        match self {
            Target::Primary => Host::Server(0),
            Target::Replica => Host::Server(1),
            Target::Sentinel => Host::Sentinel(0),
        }
    }
}

/// One scenario of the sentinel topology.
#[derive(Clone, Debug)]
pub struct FailoverScenario {
    pub name: &'static str,
    pub about: &'static str,
    pub fault: FailoverFault,
    pub target: Target,
    /// Expected verdict per strategy, with why: the cause of an expected loss, or what the
    /// expectation rests on.
    pub expected: Expectations,
}

/// Why the durable hybrid is expected valid: measured, not proven.
const DURABLE_MEASURED: &str = "measured, not proven: WAIT 1 acknowledges a response only once the replica holds it, and min-replicas-to-write 1 makes a primary cut from its replica refuse writes; WAIT does not make Redis strongly consistent";

/// The scenarios of `--topology sentinel`.
pub fn catalogue() -> Vec<FailoverScenario> {
    use Validity::{Invalid, Valid};
    // Per scenario: what the hybrid as deployed is expected to get, and why; the durable
    // hybrid is held to no loss everywhere.
    let sc = |name, about, fault, target, (verdict, why): (Validity, &'static str)| {
        let mut expected = Expectations::default();
        expected.set(BuiltIn::Hybrid, verdict, why);
        expected.set(BuiltIn::HybridDurable, Valid, DURABLE_MEASURED);
        FailoverScenario { name, about, fault, target, expected }
    };
    vec![
        sc(
            "failover-partition",
            "the primary is cut from the Sentinels and the replica, not from clients: the replica is promoted while the old primary goes on acknowledging",
            FailoverFault::Partition,
            Target::Primary,
            (Invalid, "caused by the configuration: asynchronous replication; the old primary acknowledges writes until its demotion after the heal discards them"),
        ),
        sc(
            "failover-kill",
            "the primary is SIGKILLed and started again (empty) at the heal; the replica is promoted meanwhile",
            FailoverFault::Kill,
            Target::Primary,
            (Valid, "measured: a write acknowledged in the instant before the kill and not yet replicated would be lost; none was in our runs"),
        ),
        sc(
            "failover-pause",
            "the primary is paused for the window: the replica is promoted, the old primary wakes up and is demoted",
            FailoverFault::Pause,
            Target::Primary,
            (Valid, "a paused primary acknowledges nothing"),
        ),
        sc(
            "client-cut",
            "clients lose the primary while the Sentinels and the replica still see it: no failover, writes fail until the heal",
            FailoverFault::ClientCut,
            Target::Primary,
            (Valid, "no failover: nothing acknowledged is taken back"),
        ),
        sc(
            "replica-partition",
            "the replica is cut off: the durable hybrid's writes are refused or left unreplicated, never acknowledged",
            FailoverFault::Partition,
            Target::Replica,
            (Valid, "the primary keeps every write"),
        ),
        sc(
            "sentinel-kill",
            "one Sentinel of three is SIGKILLed: the quorum stands, nothing fails over",
            FailoverFault::Kill,
            Target::Sentinel,
            (Valid, "no failover: nothing acknowledged is taken back"),
        ),
    ]
}

/// Acknowledged responses against what storage holds at the end.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Loss {
    pub acknowledged: usize,
    pub lost: usize,
    /// When the lost ones were acknowledged, in ms after the fault began: the window the
    /// loss covers.
    pub lost_from_ms: Option<i64>,
    pub lost_to_ms: Option<i64>,
    /// Up to 10 lost ids, for the report.
    pub lost_sample: Vec<String>,
}

/// The loss: every acknowledged `(id, ms after the fault began)` whose id `stored` lacks.
pub fn loss(acknowledged: &[(String, i64)], stored: &BTreeSet<String>) -> Loss {
    let lost: Vec<&(String, i64)> = acknowledged.iter().filter(|(id, _)| !stored.contains(id)).collect();
    Loss {
        acknowledged: acknowledged.len(),
        lost: lost.len(),
        lost_from_ms: lost.iter().map(|(_, t)| *t).min(),
        lost_to_ms: lost.iter().map(|(_, t)| *t).max(),
        lost_sample: lost.iter().take(10).map(|(id, _)| id.clone()).collect(),
    }
}

/// One run of one scenario under one configuration: the loss table's row.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FailoverRun {
    pub scenario: &'static str,
    pub fault: FailoverFault,
    pub target: Target,
    /// `async` (as deployed) or `durable` (WAIT 1 + min-replicas-to-write 1).
    pub replication: &'static str,
    #[serde(flatten)]
    pub loss: Loss,
    /// Responses acknowledged after the heal: the responder found the primary again.
    pub acknowledged_after_heal: usize,
    /// Responses stored but not confirmed by a replica, or whose outcome is unknown: not
    /// acknowledged.
    pub unacknowledged: usize,
    /// Responses refused: certainly not stored.
    pub refused: usize,
    /// The distinct reasons of the first failures (at most 5), for the report.
    pub failure_reasons: Vec<String>,
    /// When the Sentinels first named another primary, in ms after the fault began.
    pub failover_ms: Option<u64>,
    /// Whether the topology converged (one primary, replicas linked) before the check.
    pub converged: bool,
    /// When it converged, in ms after the heal: the old primary demoted and linked to the
    /// new one (sampled every [`CONVERGE_POLL_MS`]).
    pub converged_after_heal_ms: Option<u64>,
}

/// Runs `scenario` for `strategy` (one of [`BuiltIn::SENTINEL`]) on a fresh topology.
pub async fn run(scenario: &FailoverScenario, strategy: BuiltIn) -> anyhow::Result<(FailoverRun, Outcome)> {
    anyhow::ensure!(
        BuiltIn::SENTINEL.contains(&strategy),
        "unknown strategy {:?} for the sentinel topology; valid: {}",
        strategy.name(),
        BuiltIn::names(&BuiltIn::SENTINEL)
    );
    let durable = strategy == BuiltIn::HybridDurable;
    let mut spec = SentinelSpec::default();
    if durable {
        spec.config = vec![("min-replicas-to-write".into(), "1".into()), ("min-replicas-max-lag".into(), "2".into())];
    }
    let topo = SentinelTopology::start(spec).await?;
    let url = topo.sentinel_client_url();
    let prefix = format!("hc:failover:{}:", crate::infra::new_run_id());
    let config = Config {
        durability: durable.then_some(DURABLE_WAIT),
        connect_timeout_ms: 500,
        command_timeout_ms: 1_000,
        publish_attempts_max: 1,
        // The quick budget's breaker: with the default 5 s, a breaker opened during the
        // fault outlasts the 4 s after the heal and hides whether writes recover.
        breaker_reset_ms: 500,
        ..Config::default().with_prefix(&prefix)
    };
    let host = scenario.target.host();
    let rec = recorder();
    let responder = Hybrid::connect(&url, &url, config.clone()).await?;
    let started = Instant::now();
    let fault_at = started + Duration::from_millis(BEFORE_MS);
    let heal_at = fault_at + Duration::from_millis(FAULT_MS);
    // The harness watches the topology beside the writes, only to report it (the responder
    // finds the primary by itself): when another server was named primary, and when the
    // topology converged after the heal. The watcher runs inside this future, not as a
    // spawned task: a task holding the topology outlived an interrupted run, and its drop,
    // reached only when the runtime shut down, waited forever on a Docker call that a
    // shutting-down runtime no longer drives (the Sentinel run alive hours after Ctrl-C).
    let watched = Mutex::new(Watched::default());
    let watching = watch(&topo, &watched, fault_at, heal_at);
    let writing = async {
        let mut faulted = false;
        let mut ids = Vec::new();
        let mut tick = tokio::time::interval(Duration::from_millis(WRITE_INTERVAL_MS));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            let now = Instant::now();
            if !faulted && now >= fault_at {
                record_nemesis(&rec, "apply", scenario);
                act(&topo, scenario.fault, host, false).await?;
                faulted = true;
            }
            if faulted && now >= heal_at && !watched.lock().expect("watch lock").healed {
                act(&topo, scenario.fault, host, true).await?;
                record_nemesis(&rec, "heal", scenario);
                watched.lock().expect("watch lock").healed = true;
            }
            // Writing goes on after the heal until the topology has converged and had time to
            // take writes again (or the convergence timeout passes): recovery is part of it.
            let converged = watched.lock().expect("watch lock").converged_after_heal_ms;
            let after_heal = now.saturating_duration_since(heal_at);
            let recovered = converged.is_some_and(|c| after_heal >= Duration::from_millis(c + AFTER_MS));
            if now >= heal_at && (recovered || after_heal >= Duration::from_millis(CONVERGE_TIMEOUT_MS)) {
                return Ok::<_, anyhow::Error>(ids);
            }
            let id = format!("r{}", ids.len());
            respond_recorded(&responder, &rec, &id, format!("t-{id}"), 0).await;
            ids.push(id);
        }
    };
    let ids = {
        tokio::pin!(watching, writing);
        let mut watching_done = false;
        loop {
            tokio::select! {
                ids = &mut writing => break ids?,
                () = &mut watching, if !watching_done => watching_done = true,
            }
        }
    };
    responder.shutdown().await;
    let Watched { failover_ms, converged_after_heal_ms, .. } = *watched.lock().expect("watch lock");
    let winner = match converged_after_heal_ms {
        Some(_) => topo.converged().await,
        None => None,
    };
    // A worker resuming from its checkpoint, on the primary the Sentinels name now.
    let resumer: Arc<dyn FeedbackStrategy> = Arc::new(Hybrid::connect(&url, &url, config.clone()).await?);
    let waits: Vec<_> =
        ids.iter().map(|id| spawn_wait(&resumer, &rec, id, Duration::from_millis(RESUME_WAIT_MS), true)).collect();
    for w in waits {
        w.join().await?;
    }
    resumer.shutdown().await;
    drop(topo);
    let heal_us = (heal_at - started).as_micros() as u64;
    let history = Arc::try_unwrap(rec).map_err(|_| anyhow::anyhow!("recorder still shared"))?.into_history();
    let fault_at_us = BEFORE_MS * 1_000;
    let row = FailoverRun {
        scenario: scenario.name,
        fault: scenario.fault,
        target: scenario.target,
        replication: if durable { "durable" } else { "async" },
        loss: loss_of(&history, fault_at_us),
        acknowledged_after_heal: history
            .events
            .iter()
            .filter(|e| e.kind == Kind::Ok && matches!(e.op, Op::Respond { .. }))
            .filter(|e| e.time_us >= heal_us)
            .count(),
        unacknowledged: count(&history, Kind::Info),
        refused: count(&history, Kind::Fail),
        failure_reasons: failure_reasons(&history),
        failover_ms,
        converged: winner.is_some(),
        converged_after_heal_ms,
    };
    let mut checks = vec![checker::lost(&history), checker::resume(&history)];
    checks.push(converged_check(&row));
    let verdict = checks.iter().fold(Validity::Valid, |acc, c| acc.and(c.validity));
    let outcome = Outcome {
        scenario: scenario.name.into(),
        strategy: strategy.name().into(),
        verdict,
        expected_verdict: scenario.expected.of(strategy).0,
        expectation: scenario.expected.of(strategy).1.into(),
        checks,
        bounds: None,
        mutation: None,
        history,
    };
    Ok((row, outcome))
}

/// What the harness saw of the topology during a run.
#[derive(Clone, Copy, Debug, Default)]
struct Watched {
    healed: bool,
    failover_ms: Option<u64>,
    converged_after_heal_ms: Option<u64>,
}

/// Every [`CONVERGE_POLL_MS`] after the fault: whether the Sentinels name another primary,
/// and, once healed, whether the topology converged. Ends when it has.
async fn watch(topo: &SentinelTopology, w: &Mutex<Watched>, fault_at: Instant, heal_at: Instant) {
    tokio::time::sleep_until(fault_at.into()).await;
    loop {
        tokio::time::sleep(Duration::from_millis(CONVERGE_POLL_MS)).await;
        let now = Instant::now();
        let (healed, failed_over) = {
            let w = w.lock().expect("watch lock");
            (w.healed, w.failover_ms.is_some())
        };
        if !failed_over && topo.primary().await.is_some_and(|p| p != 0) {
            w.lock().expect("watch lock").failover_ms = Some(now.duration_since(fault_at).as_millis() as u64);
        }
        if healed && topo.converged().await.is_some() {
            w.lock().expect("watch lock").converged_after_heal_ms =
                Some(now.duration_since(heal_at).as_millis() as u64);
            return;
        }
    }
}

fn record_nemesis(rec: &crate::scenario::Recorder, action: &str, sc: &FailoverScenario) {
    let faults = format!("{} {:?}", sc.fault.name(), sc.target).to_lowercase();
    rec.record(rec.process(), Kind::Ok, Op::Nemesis { action: action.into(), faults }, None);
}

/// A run whose topology never converged cannot say what the winner holds.
fn converged_check(r: &FailoverRun) -> Verdict {
    let unknown = if r.converged {
        vec![]
    } else {
        vec![format!("no single primary with its replicas linked within {CONVERGE_TIMEOUT_MS} ms of the heal")]
    };
    let mut v = checker::verdict("converged", vec![], unknown);
    v.stats = serde_json::json!({ "failover_ms": r.failover_ms, "converged_after_heal_ms": r.converged_after_heal_ms });
    v
}

fn count(h: &History, kind: Kind) -> usize {
    h.events.iter().filter(|e| e.kind == kind && matches!(e.op, Op::Respond { .. })).count()
}

/// The distinct reasons responses failed (at most 5), without the ids in them.
fn failure_reasons(h: &History) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for e in h.events.iter().filter(|e| matches!(e.op, Op::Respond { .. }) && matches!(e.kind, Kind::Fail | Kind::Info))
    {
        let reason: String = e.note.clone().unwrap_or_default().chars().take(80).collect();
        if out.len() < 5 && !out.contains(&reason) {
            out.push(reason);
        }
    }
    out
}

/// The loss table's figures from a history: every acknowledged response (with when, in ms
/// after `fault_at_us`) against the ids whose token a later wait obtained.
pub fn loss_of(h: &History, fault_at_us: u64) -> Loss {
    let ms = |t: u64| (t as i64 - fault_at_us as i64) / 1_000;
    let acked: Vec<(String, i64)> = h
        .events
        .iter()
        .filter(|e| e.kind == Kind::Ok)
        .filter_map(|e| match &e.op {
            Op::Respond { id, .. } => Some((id.clone(), ms(e.time_us))),
            _ => None,
        })
        .collect();
    let found: BTreeSet<String> = h
        .events
        .iter()
        .filter(|e| e.kind == Kind::Ok)
        .filter_map(|e| match &e.op {
            Op::Wait { id, token: Some(_), .. } => Some(id.clone()),
            _ => None,
        })
        .collect();
    loss(&acked, &found)
}

/// Applies `fault` to `host`, or heals it: each fault and its undoing side by side.
async fn act(topo: &SentinelTopology, fault: FailoverFault, host: Host, heal: bool) -> anyhow::Result<()> {
    match (fault, host, heal) {
        (FailoverFault::Partition, h, false) => topo.partition(h).await?,
        (FailoverFault::Partition, h, true) => topo.heal(h).await?,
        (FailoverFault::Pause, h, false) => topo.pause(h).await?,
        (FailoverFault::Pause, h, true) => topo.unpause(h).await?,
        (FailoverFault::Kill, h, false) => topo.kill(h).await?,
        (FailoverFault::Kill, h, true) => topo.restart_killed(h).await?,
        (FailoverFault::ClientCut, Host::Server(i), false) => topo.cut_clients(i).await?,
        (FailoverFault::ClientCut, Host::Server(i), true) => topo.restore_clients(i).await?,
        (FailoverFault::ClientCut, h, _) => anyhow::bail!("a client cut needs a server, not {h:?}"),
    }
    Ok(())
}

/// The loss table, as `failover.md` and the report show it.
pub fn markdown(runs: &[FailoverRun]) -> String {
    let mut md = format!("## Failover on replicated Redis (Sentinel, 1 replica)\n\nA response every {WRITE_INTERVAL_MS} ms to the primary the Sentinels name; the fault hits its target {BEFORE_MS} ms in and is healed {FAULT_MS} ms later. Lost: acknowledged, then not found by a worker resuming on the primary that won. The window: when the lost ones were acknowledged, in ms after the fault began.\n\n| scenario | replication | acknowledged | lost | lost window ms | not acknowledged | refused | failover after ms | converged after heal ms |\n|---|---|---|---|---|---|---|---|---|\n");
    for r in runs {
        let window = match (r.loss.lost_from_ms, r.loss.lost_to_ms) {
            (Some(a), Some(b)) => format!("{a} .. {b}"),
            _ => "-".into(),
        };
        md.push_str(&format!(
            "| {} | {} | {} | **{}** | {} | {} | {} | {} | {} |\n",
            r.scenario,
            r.replication,
            r.loss.acknowledged,
            r.loss.lost,
            window,
            r.unacknowledged,
            r.refused,
            r.failover_ms.map_or("none".into(), |m| m.to_string()),
            match (r.converged, r.converged_after_heal_ms) {
                (true, Some(ms)) => ms.to_string(),
                _ => "NOT CONVERGED".to_string(),
            },
        ));
    }
    for r in runs.iter().filter(|r| !r.failure_reasons.is_empty()) {
        md.push_str(&format!("\n- {} / {}: {}", r.scenario, r.replication, r.failure_reasons.join("; ")));
    }
    md.push_str("\n\n`async`: as deployed, asynchronous replication (strategy `hybrid`). `durable`: the reference's durability option (strategy `hybrid-durable`: `WAIT 1 500` after every store, acknowledged only once a replica holds it) with `min-replicas-to-write 1` and `min-replicas-max-lag 2` on the servers. WAIT does not make Redis strongly consistent; these are the losses measured, not a bound.\n");
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loss_is_read_from_the_history_acknowledged_against_found() {
        use crate::history::Event;
        let ev = |time_us, kind, op| Event { time_us, process: 0, kind, op, note: None };
        let respond = |id: &str| Op::Respond { id: id.into(), token: format!("t-{id}") };
        let wait = |id: &str, token: Option<&str>| Op::Wait {
            id: id.into(),
            token: token.map(String::from),
            via: None,
            resume: true,
            timeout_ms: None,
        };
        let h = History {
            events: vec![
                ev(500_000, Kind::Ok, respond("a")),
                ev(1_500_000, Kind::Ok, respond("b")),
                ev(1_600_000, Kind::Info, respond("c")),
                ev(9_000_000, Kind::Ok, wait("a", Some("t-a"))),
                ev(9_000_000, Kind::Fail, wait("b", None)),
                ev(9_000_000, Kind::Fail, wait("c", None)),
            ],
        };
        let l = loss_of(&h, 1_000_000);
        assert_eq!((l.acknowledged, l.lost), (2, 1), "c was never acknowledged: not a loss");
        assert_eq!(l.lost_sample, ["b"]);
        assert_eq!((l.lost_from_ms, l.lost_to_ms), (Some(500), Some(500)));
        assert_eq!(checker::lost(&h).validity, Validity::Invalid, "the same history fails the lost checker");
    }

    #[test]
    fn the_catalogue_expects_loss_only_where_the_configuration_causes_it() {
        for sc in catalogue() {
            let durable = sc.expected.of(BuiltIn::HybridDurable).0;
            assert_eq!(durable, Validity::Valid, "{}: the durable hybrid is held to no loss", sc.name);
            let (verdict, why) = sc.expected.of(BuiltIn::Hybrid);
            if verdict != Validity::Valid {
                assert!(why.starts_with("caused by the configuration"), "{}", sc.name);
            }
        }
    }

    #[test]
    fn loss_counts_acknowledged_ids_storage_lacks_and_the_window_they_cover() {
        let acked: Vec<(String, i64)> = (0..6).map(|i| (format!("r{i}"), i * 100 - 200)).collect();
        let all: BTreeSet<String> = acked.iter().map(|(id, _)| id.clone()).collect();
        assert_eq!(loss(&acked, &all), Loss { acknowledged: 6, ..Loss::default() }, "nothing missing: no loss");
        let kept: BTreeSet<String> = ["r0", "r1", "r5"].iter().map(|s| s.to_string()).collect();
        let l = loss(&acked, &kept);
        assert_eq!((l.acknowledged, l.lost), (6, 3));
        assert_eq!((l.lost_from_ms, l.lost_to_ms), (Some(0), Some(200)));
        assert_eq!(l.lost_sample, ["r2", "r3", "r4"]);
        // Ids storage holds but nobody acknowledged are not a loss (nor a gain).
        let extra: BTreeSet<String> = all.iter().cloned().chain(["unacked".to_string()]).collect();
        assert_eq!(loss(&acked, &extra).lost, 0);
    }
}
