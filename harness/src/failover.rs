//! Failover on replicated Redis: which acknowledged responses a failover takes back.
//!
//! The reference hybrid responds every [`WRITE_INTERVAL_MS`] to whichever server the
//! Sentinels name as primary (re-asked every [`RESOLVE_INTERVAL_MS`] and after an error: its
//! publisher moves to the new primary). A fault hits the primary (a partition from the
//! Sentinels and replicas, a pause, or a kill), is healed, the topology converges, and every
//! acknowledged response is looked up on the primary that won. One missing is an
//! acknowledged response lost: the loss the standalone suite cannot see.
//!
//! Run twice: as deployed today (asynchronous replication), and with the durability option
//! (`WAIT 1` after every store, `min-replicas-to-write 1` on the servers). [`loss`] is a pure
//! function of what was acknowledged and what storage holds, tested on both outcomes.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::infra::sentinel::{SentinelSpec, SentinelTopology};
use crate::reference::feedback::Hybrid;
use crate::reference::{response_fields, Config, Durability, FeedbackStrategy, PublishOutcome};

/// One response every this many ms.
pub const WRITE_INTERVAL_MS: u64 = 20;
/// The responder asks the Sentinels for the primary this often, in ms.
pub const RESOLVE_INTERVAL_MS: u64 = 250;
/// Writing before the fault, during it, and after the heal, in ms.
const BEFORE_MS: u64 = 1_000;
const FAULT_MS: u64 = 6_000;
const AFTER_MS: u64 = 4_000;
/// How long the topology may take to converge after the heal, in ms, and how often it is
/// checked meanwhile.
const CONVERGE_TIMEOUT_MS: u64 = 30_000;
const CONVERGE_POLL_MS: u64 = 500;
/// The durability option: replicas to wait for, and for how long, in ms.
const DURABLE_WAIT: Durability = Durability { replicas: 1, timeout_ms: 500 };

/// What happens to the primary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailoverFault {
    /// Cut from the Sentinels and replicas; clients still reach it.
    Partition,
    /// SIGSTOP for the whole window (`docker pause`).
    Pause,
    /// SIGKILL, started again at the heal.
    Kill,
    /// Clients cut off the primary while the Sentinels and the replica still see it: no
    /// failover, so no loss, but no writes either until the heal.
    ClientCut,
}

impl FailoverFault {
    pub const ALL: [FailoverFault; 4] =
        [FailoverFault::Partition, FailoverFault::ClientCut, FailoverFault::Pause, FailoverFault::Kill];

    pub fn name(self) -> &'static str {
        match self {
            FailoverFault::Partition => "partition",
            FailoverFault::Pause => "pause",
            FailoverFault::Kill => "kill",
            FailoverFault::ClientCut => "client-cut",
        }
    }

    pub fn parse(s: &str) -> Option<FailoverFault> {
        FailoverFault::ALL.into_iter().find(|f| f.name() == s)
    }
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

/// One run of one fault under one configuration.
#[derive(Clone, Debug, Serialize)]
pub struct FailoverRun {
    pub fault: FailoverFault,
    /// `async` (as deployed) or `durable` (WAIT 1 + min-replicas-to-write 1).
    pub replication: &'static str,
    #[serde(flatten)]
    pub loss: Loss,
    /// Responses stored but not confirmed by a replica (durable only): not acknowledged.
    pub unreplicated: usize,
    /// Responses refused or failed: not acknowledged.
    pub failed: usize,
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

/// Runs `fault` on a fresh topology, with or without the durability option.
pub async fn run(fault: FailoverFault, durable: bool) -> anyhow::Result<FailoverRun> {
    let mut spec = SentinelSpec::default();
    if durable {
        spec.config = vec![("min-replicas-to-write".into(), "1".into()), ("min-replicas-max-lag".into(), "2".into())];
    }
    let topo = SentinelTopology::start(spec).await?;
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
    let started = Instant::now();
    let fault_at = started + Duration::from_millis(BEFORE_MS);
    let heal_at = fault_at + Duration::from_millis(FAULT_MS);
    let end_at = heal_at + Duration::from_millis(AFTER_MS);
    let ms_after_fault = |t: Instant| t.duration_since(started).as_millis() as i64 - BEFORE_MS as i64;

    let mut acked: Vec<(String, i64)> = Vec::new();
    let (mut unreplicated, mut failed) = (0, 0);
    let mut failure_reasons: Vec<String> = Vec::new();
    let mut current: Option<(usize, Hybrid)> = None;
    let mut resolved_at: Option<Instant> = None;
    let mut failover_ms = None;
    let (mut faulted, mut healed) = (false, false);
    let mut converged_after_heal_ms: Option<u64> = None;
    let mut converge_checked: Option<Instant> = None;
    let mut n = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(WRITE_INTERVAL_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while Instant::now() < end_at {
        tick.tick().await;
        let now = Instant::now();
        if !faulted && now >= fault_at {
            apply(&topo, fault).await?;
            faulted = true;
        }
        if faulted && !healed && now >= heal_at {
            heal(&topo, fault).await?;
            healed = true;
        }
        if healed
            && converged_after_heal_ms.is_none()
            && converge_checked.is_none_or(|t| now.duration_since(t) >= Duration::from_millis(CONVERGE_POLL_MS))
        {
            converge_checked = Some(now);
            if topo.converged().await.is_some() {
                converged_after_heal_ms = Some(now.duration_since(heal_at).as_millis() as u64);
            }
        }
        if resolved_at.is_none_or(|t| now.duration_since(t) >= Duration::from_millis(RESOLVE_INTERVAL_MS)) {
            resolved_at = Some(now);
            if let Some(p) = topo.primary().await {
                if faulted && p != 0 && failover_ms.is_none() {
                    failover_ms = Some(ms_after_fault(Instant::now()).max(0) as u64);
                }
                if current.as_ref().map(|(i, _)| *i) != Some(p) {
                    if let Some((_, old)) = current.take() {
                        old.shutdown().await;
                    }
                    let url = topo.url(p);
                    current = Hybrid::connect(&url, &url, config.clone()).await.ok().map(|h| (p, h));
                }
            }
        }
        let Some((_, h)) = current.as_ref() else {
            failed += 1;
            continue;
        };
        let id = format!("r{n}");
        n += 1;
        match h.respond(&id, &response_fields(&id, &serde_json::Map::new())).await {
            PublishOutcome::Notified { .. } | PublishOutcome::Unheard | PublishOutcome::Stored => {
                acked.push((id, ms_after_fault(Instant::now())))
            }
            PublishOutcome::StoredUnreplicated { .. } => unreplicated += 1,
            other => {
                failed += 1;
                let reason = match &other {
                    PublishOutcome::Failed { reason } | PublishOutcome::Refused { reason } => reason.clone(),
                    o => o.status().to_string(),
                };
                // Keep the kind of failure, not the id in it.
                let reason: String = reason.chars().take(80).collect();
                if failure_reasons.len() < 5 && !failure_reasons.contains(&reason) {
                    failure_reasons.push(reason);
                }
                // Ask the Sentinels again at the next write.
                resolved_at = None;
            }
        }
    }
    if let Some((_, h)) = current.take() {
        h.shutdown().await;
    }
    let winner =
        crate::poll_until(Duration::from_millis(CONVERGE_TIMEOUT_MS), Duration::from_millis(200), || topo.converged())
            .await;
    if winner.is_some() && converged_after_heal_ms.is_none() {
        converged_after_heal_ms = Some(heal_at.elapsed().as_millis() as u64);
    }
    let primary = match winner {
        Some(p) => p,
        None => topo.primary().await.ok_or_else(|| anyhow::anyhow!("no primary after the heal"))?,
    };
    let stored = stored_ids(&topo.url(primary), &config, &acked).await?;
    Ok(FailoverRun {
        fault,
        replication: if durable { "durable" } else { "async" },
        loss: loss(&acked, &stored),
        unreplicated,
        failed,
        failure_reasons,
        failover_ms,
        converged: winner.is_some(),
        converged_after_heal_ms,
    })
}

async fn apply(topo: &SentinelTopology, fault: FailoverFault) -> anyhow::Result<()> {
    match fault {
        FailoverFault::Partition => topo.partition(0).await?,
        FailoverFault::Pause => topo.pause(0).await?,
        FailoverFault::Kill => topo.kill(0).await?,
        FailoverFault::ClientCut => topo.cut_clients(0).await?,
    }
    Ok(())
}

async fn heal(topo: &SentinelTopology, fault: FailoverFault) -> anyhow::Result<()> {
    match fault {
        FailoverFault::Partition => topo.heal(0).await?,
        FailoverFault::Pause => topo.unpause(0).await?,
        FailoverFault::Kill => topo.restart_killed(0).await?,
        FailoverFault::ClientCut => topo.restore_clients(0).await?,
    }
    Ok(())
}

/// Which of the acknowledged ids the server at `url` holds a response for.
async fn stored_ids(url: &str, config: &Config, acked: &[(String, i64)]) -> anyhow::Result<BTreeSet<String>> {
    let mut c = redis::Client::open(url)?.get_multiplexed_async_connection().await?;
    let mut out = BTreeSet::new();
    for chunk in acked.chunks(500) {
        let mut pipe = redis::pipe();
        for (id, _) in chunk {
            pipe.exists(config.keys.feedback_response(id));
        }
        let present: Vec<bool> = pipe.query_async(&mut c).await?;
        out.extend(chunk.iter().zip(present).filter(|(_, p)| *p).map(|((id, _), _)| id.clone()));
    }
    Ok(out)
}

/// The loss table, as `failover.md` shows it.
pub fn markdown(runs: &[FailoverRun]) -> String {
    let mut md = String::from("# Failover on replicated Redis (Sentinel, 1 replica)\n\nA response every 20 ms to the primary the Sentinels name; the fault hits the primary 1 s in and is healed 6 s later. Lost: acknowledged, then missing from the primary that won. The window: when the lost ones were acknowledged, in ms after the fault began.\n\n| fault | replication | acknowledged | lost | lost window ms | not replicated | failed | failover after ms | converged after heal ms |\n|---|---|---|---|---|---|---|---|---|\n");
    for r in runs {
        let window = match (r.loss.lost_from_ms, r.loss.lost_to_ms) {
            (Some(a), Some(b)) => format!("{a} .. {b}"),
            _ => "-".into(),
        };
        md.push_str(&format!(
            "| {} | {} | {} | **{}** | {} | {} | {} | {} | {} |\n",
            r.fault.name(),
            r.replication,
            r.loss.acknowledged,
            r.loss.lost,
            window,
            r.unreplicated,
            r.failed,
            r.failover_ms.map_or("none".into(), |m| m.to_string()),
            match (r.converged, r.converged_after_heal_ms) {
                (true, Some(ms)) => ms.to_string(),
                _ => "NOT CONVERGED".to_string(),
            },
        ));
    }
    for r in runs.iter().filter(|r| !r.failure_reasons.is_empty()) {
        md.push_str(&format!(
            "\n- {} / {} failed with: {}",
            r.fault.name(),
            r.replication,
            r.failure_reasons.join("; ")
        ));
    }
    md.push_str("\n\n`async`: as deployed, asynchronous replication. `durable`: the reference's durability option (`WAIT 1 500` after every store: acknowledged only once a replica holds it) with `min-replicas-to-write 1` and `min-replicas-max-lag 2` on the servers. WAIT does not make Redis strongly consistent; these are the losses measured, not a bound.\n");
    md
}

#[cfg(test)]
mod tests {
    use super::*;

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
