//! The liveness checks' teeth, end to end: a deliberately broken hybrid run through the one
//! scenario built to expose it must be found invalid by the check named, on real Redis. (The
//! whole kill matrix is `hybrid-chaos mutants`, nightly; these are the cheap corners of it
//! that guard each new check inside `./ci/test`.) Each also runs the reference as written
//! through the same scenario and seed, which must pass: a check that fails both has no teeth,
//! it is merely broken.

use harness::checker::Validity;
use harness::reference::Mutation;
use harness::scenario::{run, Budget};
use harness::strategy::BuiltIn;
use scenarios::catalogue;

/// Runs `scenario` for the hybrid with `m` and without it: the mutant must fail `check`, the
/// reference must pass.
async fn killed_by(m: Mutation, scenario: &str, check: &str) {
    killed_in(m, BuiltIn::Hybrid, scenario, check).await
}

/// [`killed_by`] for a strategy of the hybrid's family (a design variant).
async fn killed_in(m: Mutation, strategy: BuiltIn, scenario: &str, check: &str) {
    let strategy = strategy.into();
    let sc = catalogue().into_iter().find(|s| s.name == scenario).expect("scenario exists");
    let reference = run(&sc, &strategy, 7, Budget::new(true)).await.unwrap();
    let failing: Vec<_> = reference.checks.iter().filter(|c| c.validity != Validity::Valid).collect();
    assert_eq!(reference.verdict, Validity::Valid, "the reference fails {scenario}: {failing:#?}");
    let mutant = run(&sc, &strategy, 7, Budget::new(true).with_mutation(Some(m))).await.unwrap();
    let verdict = mutant.checks.iter().find(|c| c.checker == check).unwrap_or_else(|| panic!("no {check} check"));
    assert_eq!(verdict.validity, Validity::Invalid, "{} survived {scenario} / {check}: {:#?}", m.name(), mutant.checks);
}

#[tokio::test]
async fn a_hub_that_never_resubscribes_fails_recovery() {
    killed_by(Mutation::NoResubscribe, "subscriber-blackhole", "recovery").await;
}

#[tokio::test]
async fn a_waiter_that_skips_the_reread_fails_the_subscribe_race() {
    killed_by(Mutation::NoRereadAfterSubscribe, "subscribe-race", "wakeup").await;
}

#[tokio::test]
async fn a_resync_that_wakes_nobody_fails_the_resubscribe_race() {
    killed_by(Mutation::ResyncWakesNobody, "resubscribe-race", "recovery").await;
}

#[tokio::test]
async fn a_summed_deadline_fails_timeouts_under_latency() {
    killed_by(Mutation::SummedDeadline, "latency", "timeouts").await;
}

#[tokio::test]
async fn a_slow_poll_fails_the_fallback_bound() {
    killed_by(Mutation::SlowPoll, "subscriber-blackhole", "fallback").await;
}

#[tokio::test]
async fn a_health_check_without_timeout_fails_detection() {
    killed_by(Mutation::HealthCheckNoTimeout, "subscriber-blackhole-hints-only", "detection").await;
}

#[tokio::test]
async fn a_breaker_that_never_closes_fails_recovery() {
    killed_by(Mutation::BreakerNeverCloses, "publisher-outage", "recovery").await;
}

#[tokio::test]
async fn publishing_before_storing_is_a_rescue_without_a_fault() {
    killed_by(Mutation::PublishBeforeStore, "clean", "rescues").await;
}

#[tokio::test]
async fn a_stream_consumer_ignoring_resync_stalls_on_the_tail() {
    killed_by(Mutation::StreamIgnoresResync, "stream-tail-in-outage", "delivery").await;
}

#[tokio::test]
async fn a_payload_hint_published_before_the_store_is_a_phantom_read() {
    killed_in(Mutation::PublishBeforeStore, BuiltIn::HybridPayload, "store-refused", "phantom").await;
}

#[tokio::test]
async fn a_fanout_consumer_dropping_reset_on_a_full_queue_fails_the_fanout_check() {
    killed_by(Mutation::FanoutDropsResetWhenFull, "fanout-overflow", "fanout").await;
}

#[tokio::test]
async fn a_hub_that_dispatches_hints_between_round_trips_fails_the_wake_bound() {
    killed_by(Mutation::DispatchBehindCommands, "hint-behind-commands", "wakeup").await;
}

#[tokio::test]
async fn a_hub_that_unsubscribes_a_shared_channel_fails_recovery() {
    killed_by(Mutation::UnsubscribeShared, "same-id-waits", "recovery").await;
}

#[tokio::test]
async fn a_hint_that_wakes_one_of_two_waiters_fails_recovery() {
    killed_by(Mutation::WakeOneWaiter, "same-id-waits", "recovery").await;
}

#[tokio::test]
async fn a_poll_task_that_ends_at_its_first_failed_read_fails_the_fallback_after_a_second_fault() {
    killed_by(Mutation::PollerStopsOnError, "outage-then-publish-lost", "fallback").await;
}

#[tokio::test]
async fn a_waiter_that_removes_a_shared_poller_entry_fails_the_fallback() {
    killed_by(Mutation::PollerDropsSharedEntry, "publish-lost-same-id", "fallback").await;
}

#[tokio::test]
async fn a_hub_that_subscribes_control_on_its_first_connection_only_fails_the_fanout_check() {
    killed_by(Mutation::ControlOnFirstConnectionOnly, "fanout-control-after-reconnect", "fanout").await;
}

#[tokio::test]
async fn a_hub_that_forgets_a_subscribe_in_flight_fails_cleanup_by_the_servers_count() {
    // Waits cancelled every 20 ms while a 150 ms upstream latency holds each SUBSCRIBE in
    // flight: the server's PUBSUB NUMSUB, not the hub's map, shows what was left.
    killed_by(Mutation::ForgetInFlightSubscribe, "hint-behind-commands", "cleanup").await;
}

#[tokio::test]
async fn a_read_not_retried_on_a_connection_dead_since_a_restart_fails_delivery_to_an_idle_joiner() {
    killed_by(Mutation::NoReadRetry, "stream-idle-joiner-after-restart", "delivery").await;
}

#[tokio::test]
async fn a_waiter_noting_what_it_saw_after_its_read_misses_a_hint_that_came_during_it() {
    killed_by(Mutation::SnapshotAfterRead, "hint-during-read", "wakeup").await;
}
