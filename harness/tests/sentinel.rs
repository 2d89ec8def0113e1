//! Replicated Redis in containers (a primary, a replica, three Sentinels): a partition of the
//! primary makes asynchronous replication lose acknowledged responses, which the `lost`
//! checker calls invalid, and the durability option (WAIT 1 + min-replicas-to-write 1) loses
//! none. The reference finds the primary through the Sentinels by itself and writes to the
//! new one after the heal. Needs Docker: without it the test says so on stderr and passes,
//! unless `HC_DOCKER=1` (set by `./ci/test` when Docker answers).

use harness::checker::Validity;
use harness::failover::{catalogue, run};
use harness::strategy::BuiltIn;

fn docker_expected() -> bool {
    std::env::var("HC_DOCKER").as_deref() == Ok("1")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_primary_loses_acknowledged_responses_unless_writes_wait_for_a_replica() {
    if let Err(e) = harness::infra::container::docker().await {
        assert!(!docker_expected(), "HC_DOCKER=1 but {e}");
        eprintln!("SKIP a_partitioned_primary_loses_acknowledged_responses_unless_writes_wait_for_a_replica: {e}");
        return;
    }
    let sc = catalogue().into_iter().find(|s| s.name == "failover-partition").expect("in the catalogue");
    let (row, outcome) = run(&sc, BuiltIn::Hybrid).await.unwrap();
    assert!(row.converged, "{row:?}");
    assert!(row.failover_ms.is_some(), "the Sentinels never failed over: {row:?}");
    assert!(row.loss.lost > 0, "the harness saw no loss on asynchronous replication: {row:?}");
    let lost = outcome.checks.iter().find(|c| c.checker == "lost").expect("the lost checker ran");
    assert_eq!(lost.validity, Validity::Invalid, "{lost:?}");
    assert_eq!(outcome.verdict, outcome.expected_verdict);
    assert!(row.acknowledged_after_heal > 0, "the responder never found the new primary: {row:?}");
    // With one replica, what WAIT 1 confirmed is on the server that gets promoted.
    let (row, outcome) = run(&sc, BuiltIn::HybridDurable).await.unwrap();
    assert!(row.converged, "{row:?}");
    assert!(row.loss.acknowledged > 0, "nothing was acknowledged: {row:?}");
    assert_eq!(row.loss.lost, 0, "{row:?}");
    assert_eq!(outcome.verdict, Validity::Valid, "{:?}", outcome.checks);
    assert!(row.acknowledged_after_heal > 0, "the responder never found the new primary: {row:?}");
}
