//! Replicated Redis in containers (a primary, a replica, three Sentinels): a partition of the
//! primary makes asynchronous replication lose acknowledged responses, and the durability
//! option (WAIT 1 + min-replicas-to-write 1) loses none. Needs Docker: without it the test
//! says so on stderr and passes, unless `HC_DOCKER=1` (set by `./ci/test` when Docker
//! answers).

use harness::failover::{run, FailoverFault};

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
    let as_deployed = run(FailoverFault::Partition, false).await.unwrap();
    assert!(as_deployed.converged, "{as_deployed:?}");
    assert!(as_deployed.failover_ms.is_some(), "the Sentinels never failed over: {as_deployed:?}");
    assert!(as_deployed.loss.lost > 0, "the harness saw no loss on asynchronous replication: {as_deployed:?}");
    // With one replica, what WAIT 1 confirmed is on the server that gets promoted.
    let durable = run(FailoverFault::Partition, true).await.unwrap();
    assert!(durable.converged, "{durable:?}");
    assert!(durable.loss.acknowledged > 0, "nothing was acknowledged: {durable:?}");
    assert_eq!(durable.loss.lost, 0, "{durable:?}");
}
