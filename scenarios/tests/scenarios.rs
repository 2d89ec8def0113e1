//! Scenario runs against real Redis through the proxies: each (scenario, strategy) gets the
//! verdict the catalogue expects, including the canaries (baselines that must break).

use harness::checker::Validity;
use harness::scenario::{run, Budget};
use harness::strategy::{BuiltIn, Strategy};
use scenarios::catalogue;

async fn check(name: &str) {
    let scenario = catalogue().into_iter().find(|s| s.name == name).expect("scenario exists");
    for strategy in BuiltIn::SUITE.map(Strategy::from).into_iter().filter(|s| scenario.applies(s)) {
        let out = run(&scenario, &strategy, 7, Budget::new(true)).await.unwrap();
        let evidence: Vec<_> = out.checks.iter().filter(|c| c.validity != Validity::Valid).collect();
        assert_eq!(out.verdict, out.expected_verdict, "{name}/{strategy}: {evidence:#?}");
    }
}

#[tokio::test]
async fn clean() {
    check("clean").await;
}

#[tokio::test]
async fn subscriber_blackhole() {
    check("subscriber-blackhole").await;
    // The stale (half-open) subscription must be detected, not just outlived by polling.
    assert!(
        settled_reconnects("subscriber-blackhole", BuiltIn::Hybrid).await > 0,
        "the blackholed subscriber was never replaced"
    );
}

/// Subscriber reconnections the implementation reported while the run settled.
async fn settled_reconnects(name: &str, strategy: BuiltIn) -> u64 {
    let scenario = catalogue().into_iter().find(|s| s.name == name).unwrap();
    let out = run(&scenario, &strategy.into(), 7, Budget::new(true)).await.unwrap();
    out.history
        .events
        .iter()
        .find_map(|e| match &e.op {
            harness::history::Op::Observe { phase, reading } if phase == "settled" => Some(reading.reconnects),
            _ => None,
        })
        .expect("a settled reading")
}

#[tokio::test]
async fn crash_restart_aof() {
    check("crash-restart-aof").await;
}

#[tokio::test]
async fn crash_restart_no_persistence() {
    check("crash-restart-no-persistence").await;
}

#[tokio::test]
async fn resume_from_checkpoint() {
    check("resume-from-checkpoint").await;
}

#[tokio::test]
async fn latency() {
    check("latency").await;
}

#[tokio::test]
async fn two_workers_resume() {
    check("two-workers-resume").await;
}

#[tokio::test]
async fn graceful_restart() {
    check("graceful-restart").await;
}

#[tokio::test]
async fn reset_peer_subscriber() {
    check("reset-peer-subscriber").await;
}

#[test]
fn every_catalogued_scenario_has_a_test_here() {
    let source = include_str!("scenarios.rs");
    for s in catalogue() {
        assert!(source.contains(&format!("check(\"{}\")", s.name)), "scenario {} is never run by the tests", s.name);
    }
}

#[tokio::test]
async fn redis_unreachable() {
    check("redis-unreachable").await;
}

#[tokio::test]
async fn publisher_outage() {
    check("publisher-outage").await;
}

#[tokio::test]
async fn waiter_churn_cleanup() {
    check("waiter-churn-cleanup").await;
}

#[tokio::test]
async fn slow_subscriber_cut_off() {
    check("slow-subscriber-cut-off").await;
    // The mechanism, not just the verdict: the server cut pub/sub-only's subscriber off.
    assert!(
        settled_reconnects("slow-subscriber-cut-off", BuiltIn::PubSubOnly).await > 0,
        "the subscriber was never cut off"
    );
}

#[tokio::test]
async fn stream_late_joiner_reconnect() {
    check("stream-late-joiner-reconnect").await;
}

#[tokio::test]
async fn fanout_overflow() {
    check("fanout-overflow").await;
}

#[tokio::test]
async fn subscribe_race() {
    check("subscribe-race").await;
}

#[tokio::test]
async fn resubscribe_race() {
    check("resubscribe-race").await;
}

#[tokio::test]
async fn hint_behind_commands() {
    check("hint-behind-commands").await;
}

#[tokio::test]
async fn subscriber_blackhole_hints_only() {
    check("subscriber-blackhole-hints-only").await;
}

#[tokio::test]
async fn same_id_waits() {
    check("same-id-waits").await;
}

#[tokio::test]
async fn same_id_waits_blackhole() {
    check("same-id-waits-blackhole").await;
}

#[tokio::test]
async fn fanout_control_after_reconnect() {
    check("fanout-control-after-reconnect").await;
}

#[tokio::test]
async fn publish_lost() {
    check("publish-lost").await;
}

#[tokio::test]
async fn publish_lost_same_id() {
    check("publish-lost-same-id").await;
}

#[tokio::test]
async fn outage_then_publish_lost() {
    check("outage-then-publish-lost").await;
}

#[tokio::test]
async fn stream_tail_in_outage() {
    check("stream-tail-in-outage").await;
}

#[tokio::test]
async fn stream_catchup_race() {
    check("stream-catchup-race").await;
}

#[tokio::test]
async fn stream_duplicate_appends() {
    check("stream-duplicate-appends").await;
}

#[tokio::test]
async fn store_refused() {
    check("store-refused").await;
}

#[tokio::test]
async fn stream_idle_joiner_after_restart() {
    check("stream-idle-joiner-after-restart").await;
}

#[tokio::test]
async fn hint_during_read() {
    check("hint-during-read").await;
}
