//! hybrid-chaos: a resilience harness for the Redis "storage is the truth, Pub/Sub is only a
//! wake-up hint, polling is the fallback" notification pattern.
//!
//! Everything the project runs (the `hybrid-chaos` binary, scenario suites, property tests and
//! benches) imports this one library; none of them re-implements infrastructure or faults.
//!
//! # Layout
//!
//! - [`infra`]: the real things under test's feet. A `redis-server` process the harness owns
//!   (start, graceful restart, crash, freeze/thaw on the same address and data dir) or a Redis
//!   it was only lent by URL (read and written under a per-run key prefix, never disturbed).
//!   Both, and the container and Sentinel providers, sit behind the [`infra::RedisNode`]
//!   provider trait, so callers never name the provider they run on.
//! - [`toxiproxy`]: network faults. [`toxiproxy::server`] is an embedded server speaking the
//!   Toxiproxy 2.x REST API (runs in-process or as `hybrid-chaos toxiproxy`);
//!   [`toxiproxy::client`] is the only path the harness uses to inject faults, so pointing
//!   `TOXIPROXY_URL` at a real Toxiproxy switches every fault over unchanged.
//!   [`toxiproxy::model`] holds the JSON shapes and typed toxics both sides share.
//! - [`strategy`]: which implementation a run judges, as a value: a built-in
//!   ([`strategy::BuiltIn`]) or an external program ([`external`]), the set a run may judge
//!   ([`strategy::Strategies`]) and the verdict a scenario expects of each
//!   ([`strategy::Expectations`]). No process-global registry: a run is given its set.
//! - [`external`]: an implementation written outside the project, driven over the line
//!   protocol (`PROTOCOL.md`); [`external::serve`] serves the built-ins over the same protocol.
//! - [`reference`]: the implementation under test. The hybrid pattern (feedback with resume,
//!   chunk streaming, fan-out, robust subscriber and publisher) and the pub/sub-only and
//!   polling-only baselines behind one [`reference::FeedbackStrategy`] interface. It knows
//!   nothing of faults or checkers, so an engineer can swap in another implementation.
//! - [`history`]: the recorded run, Jepsen style (invoke / ok / fail / info with monotonic
//!   timestamps), saved as JSON lines.
//! - [`checker`]: pure functions of a history (lost, resume, duplicated, order, cleanup,
//!   latency, and in [`checker::liveness`] wakeup, fallback, recovery, rescues, timeouts,
//!   detection, delivery, exercised), each a verdict (valid / invalid / unknown) with its
//!   evidence.
//! - [`nemesis`]: faults through the infra provider and the Toxiproxy client, aimed at the
//!   command connection, the subscriber connection, or both.
//! - [`scenario`]: the runner: workload + faults + checkers composed for one scenario and
//!   [`strategy::Strategy`], with the verdict each strategy is expected to get (canaries for the
//!   baselines) and the liveness bounds derived from the configuration. The catalogue of
//!   scenarios is the suite's (`scenarios/`).
//! - [`report`]: `report.json` (fixed field names), `report.md`, a self-contained
//!   `report.html`, and `history.jsonl`, built from outcomes by pure functions.
//! - [`overhead`]: the fault proxy's own p50/p99, sampled during a run beside the scenarios,
//!   so a report says how much of a latency is the proxy's.
//! - [`compare`]: two runs' `report.json` compared (verdict, loss and latency changes), for
//!   validating a design change against a baseline run.
//! - [`case`]: one generated case (workload + fault schedule) run and judged; the property
//!   tests and `hybrid-chaos case` drive it.
//! - [`failover`]: the Sentinel failover scenarios (a primary lost, a replica promoted).
//! - [`smoke`]: a short end-to-end exercise of the foundation (`hybrid-chaos smoke`).
//!
//! Workload, fault and checker stay apart: the workload drives a [`strategy::Strategy`] and
//! records a history, [`nemesis`] only injects, and the checkers read the history alone.

pub mod case;
pub mod checker;
pub mod compare;
pub mod external;
pub mod failover;
pub mod history;
pub mod infra;
pub mod nemesis;
pub mod overhead;
pub mod reference;
pub mod report;
pub mod scenario;
pub mod smoke;
pub mod strategy;
pub mod toxiproxy;

/// Quantile `q` in [0, 1] of `samples` (sorted in place), nearest rank: a value that was
/// measured, never an interpolation. The benches and the proxy probe share it.
pub fn quantile(samples: &mut [std::time::Duration], q: f64) -> std::time::Duration {
    samples.sort_unstable();
    let rank = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len());
    samples[rank - 1]
}

/// Bounded polling of a condition: the one readiness-loop shape used across the harness.
///
/// Calls `probe` every `interval` until it returns `Some`, or gives up after `deadline`.
/// Never an unbounded loop: every wait in the harness has a named limit.
pub async fn poll_until<T, F, Fut>(
    deadline: std::time::Duration,
    interval: std::time::Duration,
    mut probe: F,
) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(v) = probe().await {
            return Some(v);
        }
        if tokio::time::Instant::now() >= end {
            return None;
        }
        tokio::time::sleep(interval).await;
    }
}
