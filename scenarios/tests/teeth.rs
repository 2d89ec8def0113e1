//! The harness's own teeth: searches that must find a counterexample within proptest's
//! default budget ([`DEFAULT_CASES`]), against designs known to be broken. A search that
//! finds nothing here means the generators or checkers went blind.
//!
//! - pub/sub-only, with every waiter subscribed before any response (so only a fault can lose
//!   one): must lose a response, shrunk to at most two fault steps;
//! - polling-only: must break the wake-latency bound (it waits for a poll tick);
//! - the hybrid with each deliberately broken variant ([`Mutation`]): never unsubscribing and
//!   storing without a TTL fail on cleanup; publishing before storing fails the wake
//!   bound (a waiter woken before the write reads nothing and sleeps until a
//!   poll tick).
//!
//! Each prints the shrunk case, the failing checks, the runs and time the search took, and
//! the seed that replays it.

use harness::reference::Mutation;
use harness::strategy::BuiltIn;
use scenarios::gen::Workload;
use scenarios::search::DEFAULT_CASES;
use scenarios::{Search, SearchReport};

/// Shrink runs per teeth search.
const TEETH_SHRINK_RUNS_MAX: u32 = 16;

fn search(
    strategy: BuiltIn,
    mutation: Option<Mutation>,
    workload: Workload,
    checks: Option<&'static [&'static str]>,
) -> SearchReport {
    let mut s = Search::new(strategy, workload, DEFAULT_CASES);
    s.checks = checks;
    // The budget is proptest's default, whatever PROPTEST_CASES says for the property.
    s.cases = DEFAULT_CASES;
    // Schedules come first in the shrink order and hold at most 3 steps: 16 shrink runs
    // strip the unneeded ones (each run of a lossy case lasts until its deadline).
    if std::env::var_os("PROPTEST_MAX_SHRINK_ITERS").is_none() {
        s.shrink_runs_max = TEETH_SHRINK_RUNS_MAX;
    }
    s.mutation = mutation;
    let report = s.run().expect("the search could not run");
    eprintln!("{report}");
    report
}

/// Asserts the search found a counterexample failing `checker`, with at most `steps_max`
/// fault steps left after shrinking.
fn assert_found(report: &SearchReport, checker: &str, steps_max: usize) {
    let found = report.found.as_ref().unwrap_or_else(|| panic!("no counterexample found:\n{report}"));
    assert!(
        found.reason.lines().any(|l| l.starts_with(&format!("{checker}:"))),
        "the counterexample fails, but not on {checker}:\n{report}"
    );
    assert!(!found.reason.contains("infrastructure:"), "the harness itself failed:\n{report}");
    assert!(
        found.case.schedule.len() <= steps_max,
        "shrunk to {} fault steps, more than {steps_max}:\n{report}",
        found.case.schedule.len()
    );
}

#[test]
fn pubsub_only_loses_responses_to_a_fault_shrunk_to_two_steps() {
    // Only loss of live waiters: pub/sub-only fails every resume anyway, faults or not.
    let report = search(BuiltIn::PubSubOnly, None, Workload::WaitersFirst, Some(&["lost"]));
    assert_found(&report, "lost", 2);
    let found = report.found.as_ref().expect("checked above");
    assert!(!found.case.schedule.is_empty(), "waiters came first, so a fault must be needed:\n{report}");
}

#[test]
fn polling_only_breaks_the_wake_latency_bound() {
    let report = search(BuiltIn::PollingOnly, None, Workload::WaitersFirst, Some(&["latency"]));
    assert_found(&report, "latency", 2);
}

#[test]
fn hybrid_never_unsubscribing_fails_on_cleanup() {
    let report = search(BuiltIn::Hybrid, Some(Mutation::NeverUnsubscribe), Workload::Free, Some(&["cleanup"]));
    assert_found(&report, "cleanup", usize::MAX);
    assert!(report.found.as_ref().is_some_and(|f| f.reason.contains("subscriptions")), "{report}");
}

#[test]
fn hybrid_storing_without_ttl_fails_on_cleanup() {
    let report = search(BuiltIn::Hybrid, Some(Mutation::NoTtl), Workload::Free, Some(&["cleanup"]));
    assert_found(&report, "cleanup", usize::MAX);
    assert!(report.found.as_ref().is_some_and(|f| f.reason.contains("without a TTL")), "{report}");
}

#[test]
fn hybrid_publishing_before_storing_fails_the_wake_bound() {
    let report = search(BuiltIn::Hybrid, Some(Mutation::PublishBeforeStore), Workload::WaitersFirst, Some(&["wakeup"]));
    assert_found(&report, "wakeup", usize::MAX);
}
