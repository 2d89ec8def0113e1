//! The scenario catalogue: every scenario the suite runs, by name, with the verdict each
//! strategy is expected to get. A scenario is a composition of a workload shape, faults and
//! the checkers (`harness::scenario` runs and judges it); this file only says which exist.
//!
//! Expectations that a baseline breaks are canaries: if one passes, the harness lost its
//! teeth. The race and stream-shape scenarios switch the polling fallback off, so the hybrid's
//! wake-up path is judged on its own there.

use harness::checker::Validity;
use harness::infra::Persistence;
use harness::nemesis::{Fault, Target};
use harness::scenario::{Race, Scenario, StreamShape};
use harness::strategy::BuiltIn;

/// Why every design loses in `crash-restart-no-persistence`.
const LOST_IN_CRASH: &str = "persistence none: acknowledged writes vanish in the crash (caused by the configuration)";

/// The catalogue, in run order. A strategy not named in a scenario's `expect` is expected
/// valid there.
pub fn catalogue() -> Vec<Scenario> {
    use BuiltIn::{Hybrid, PollingOnly, PubSubOnly};
    use Validity::Invalid;
    let sub_gap = Fault::ProxyDown { target: Target::Subscriber };
    vec![
        Scenario::new("clean", "no fault: every design delivers"),
        Scenario::new("latency", "50 ms +- 20 ms on both connections").faults(vec![Fault::Latency {
            target: Target::Both,
            latency_ms: 50,
            jitter_ms: 20,
        }]),
        Scenario::new(
            "subscriber-blackhole",
            "the subscriber connection goes silent (half-open) while storage works",
        )
        .faults(vec![Fault::Blackhole { target: Target::Subscriber }])
        .expect(PubSubOnly, Invalid, "pub/sub-only: hints sent into a dead subscription are gone"),
        // The same silence with nothing else going on: no poll ends a wait and no subscription
        // changes while it lasts, so only the health check can notice the dead connection (a
        // SUBSCRIBE or UNSUBSCRIBE timing out would notice it too, and did, in the scenario above).
        Scenario::new(
            "subscriber-blackhole-hints-only",
            "the subscriber connection goes silent while no subscription changes; hints only",
        )
        .faults(vec![Fault::Blackhole { target: Target::Subscriber }])
        .fallback_off()
        .applies_to(&[Hybrid, PubSubOnly])
        .expect(PubSubOnly, Invalid, "pub/sub-only: hints sent into a dead subscription are gone"),
        Scenario::new(
            "crash-restart-aof",
            "SIGKILL + restart (AOF always) while the subscriber is cut off",
        )
        .persistence(Persistence::AofAlways)
        .faults(vec![Fault::CrashRestart, sub_gap.clone()])
        .expect(PubSubOnly, Invalid, "pub/sub-only: messages published during the reconnect gap are lost"),
        // Nobody waits live, so nothing is delivered before the crash wipes the writes: the
        // loss is the configuration's, deterministically.
        Scenario::new(
            "crash-restart-no-persistence",
            "responses acknowledged, then SIGKILL + restart with persistence none, then resume",
        )
        .late_faults(vec![Fault::CrashRestart])
        .resume_only(1)
        .expect(Hybrid, Invalid, LOST_IN_CRASH)
        .expect(PubSubOnly, Invalid, LOST_IN_CRASH)
        .expect(PollingOnly, Invalid, LOST_IN_CRASH),
        Scenario::new(
            "resume-from-checkpoint",
            "respond while no worker listens, then a new worker resumes",
        )
        .resume_only(1)
        .expect(PubSubOnly, Invalid, "pub/sub-only: a message published while nobody listens is lost"),
        Scenario::new(
            "two-workers-resume",
            "respond while nobody listens, then two workers resume the same checkpoint",
        )
        .resume_only(2)
        .expect(PubSubOnly, Invalid, "pub/sub-only: nothing to resume from"),
        Scenario::new(
            "graceful-restart",
            "SHUTDOWN + restart (AOF everysec) under load while the subscriber reconnects",
        )
        .persistence(Persistence::AofEverysec)
        .faults(vec![Fault::GracefulRestart, sub_gap])
        .expect(PubSubOnly, Invalid, "pub/sub-only: messages published during the reconnect gap are lost"),
        Scenario::new(
            "reset-peer-subscriber",
            "the subscriber connection is reset (RST), and every reconnect too, for a while",
        )
        .faults(vec![Fault::ResetPeer { target: Target::Subscriber }])
        .expect(PubSubOnly, Invalid, "pub/sub-only: no subscription survives the resets, so every hint is lost"),
        Scenario::new(
            "redis-unreachable",
            "Redis killed for the whole window (responses fail), then started again",
        )
        .faults(vec![Fault::RedisDown]),
        Scenario::new(
            "publisher-outage",
            "the command connection refused for the window: retries, then the circuit breaker",
        )
        .faults(vec![Fault::ProxyDown { target: Target::Commands }]),
        Scenario::new(
            "waiter-churn-cleanup",
            "1,000 waits that time out or are cancelled, then the usual workload",
        )
        .churn(1_000),
        Scenario::new(
            "slow-subscriber-cut-off",
            "a slow subscriber (16 KB/s) is disconnected by client-output-buffer-limit pubsub 8kb",
        )
        .faults(vec![Fault::Bandwidth { target: Target::Subscriber, rate_kb_s: 16 }])
        .payload(32 * 1024)
        .redis_config(&[("client-output-buffer-limit", "pubsub 8kb 8kb 0")])
        .expect(PubSubOnly, Invalid, "pub/sub-only: its payload-carrying messages overflow the buffer limit and the server cuts it off"),
        Scenario::new(
            "stream-late-joiner-reconnect",
            "a stream with its subscriber reset mid-way, and a consumer joining late from index 0",
        )
        .faults(vec![Fault::ResetPeer { target: Target::Subscriber }])
        .stream()
        .expect(PubSubOnly, Invalid, "pub/sub-only streaming: chunks published during the reset gap, and before the late joiner came, are gone"),
        // Fan-out is Pub/Sub by nature (seed 004 stores no history): one implementation.
        Scenario::new(
            "fanout-overflow",
            "a burst to a 64-deep fan-out queue behind a slow worker, a stale tick, RESET, SHUTDOWN",
        )
        .fanout(&[Hybrid]),
        // Control after a reconnect: every subscriber dropped after the burst, so RESET and
        // SHUTDOWN reach the consumer on its second connection.
        Scenario::new(
            "fanout-control-after-reconnect",
            "the fan-out workload with every subscriber dropped after the burst: RESET and SHUTDOWN after the reconnect",
        )
        .faults(vec![Fault::DropSubscribers])
        .fanout(&[Hybrid]),
        Scenario::new(
            "store-refused",
            "Redis out of memory (maxmemory, noeviction) for the window: writes refused, PUBLISH still works",
        )
        .faults(vec![Fault::StoreRefused]),
        // Races: each response lands exactly in a window where a wake-up gets lost, with the
        // fallback off, so a broken wake-up path cannot hide behind a poll.
        Scenario::new(
            "subscribe-race",
            "responses stored while each waiter's SUBSCRIBE is held in flight (150 ms upstream on the subscriber)",
        )
        .faults(vec![Fault::LatencyUpstream { target: Target::Subscriber, latency_ms: 150 }])
        .race(Race::SubscribeWindow)
        .applies_to(&[Hybrid, PubSubOnly])
        .expect(PubSubOnly, Invalid, "pub/sub-only: a response published before the subscription lands is gone"),
        Scenario::new(
            "hint-during-read",
            "responses whose hints arrive while the waiter's read after SUBSCRIBE is in flight (100 ms on the command connection)",
        )
        .faults(vec![Fault::Latency { target: Target::Commands, latency_ms: 100, jitter_ms: 0 }])
        .race(Race::ReadInFlight)
        .applies_to(&[Hybrid, PubSubOnly]),
        Scenario::new(
            "resubscribe-race",
            "the subscriber is dropped and its resubscribe held in flight while responses are published",
        )
        .faults(vec![Fault::LatencyUpstream { target: Target::Subscriber, latency_ms: 150 }, Fault::DropSubscribers])
        .race(Race::Resubscribe)
        .applies_to(&[Hybrid, PubSubOnly])
        .expect(PubSubOnly, Invalid, "pub/sub-only: responses published during the resubscribe are gone"),
        Scenario::new(
            "hint-behind-commands",
            "hints arrive while the subscriber's SUBSCRIBE/UNSUBSCRIBE round trips are slow (150 ms upstream) under waiter churn",
        )
        .faults(vec![Fault::LatencyUpstream { target: Target::Subscriber, latency_ms: 150 }])
        .window_churn(500)
        .fallback_off()
        .applies_to(&[Hybrid, PubSubOnly]),
        // Two waits on every id in one worker: what they share (the channel's subscription,
        // its wake-up, the poller's entry) must outlive either of them.
        Scenario::new(
            "same-id-waits",
            "two waits on every id in one worker, one of each even pair cancelled just before the response; hints only",
        )
        .twins()
        .fallback_off()
        .applies_to(&[Hybrid, PubSubOnly]),
        Scenario::new(
            "same-id-waits-blackhole",
            "two waits on every id, one of each even pair cancelled just before the response, while the subscriber is silent",
        )
        .faults(vec![Fault::Blackhole { target: Target::Subscriber }])
        .twins()
        .expect(PubSubOnly, Invalid, "pub/sub-only: hints sent into a dead subscription are gone"),
        // Hints lost while nothing looks wrong: the responder stores, then its PUBLISH never
        // goes out (it died between its two commands). The subscriber stays healthy, so no
        // health check, reconnect or resync stands in for the poller: polling storage alone
        // must find these, for every wait on an id, the one left when its twin leaves too.
        Scenario::new(
            "publish-lost",
            "the responder stores but its PUBLISH is lost for the window (it died in between); the subscriber is healthy",
        )
        .faults(vec![Fault::PublishLost])
        .expect(PubSubOnly, Invalid, "pub/sub-only: no hint ever comes for those responses"),
        Scenario::new(
            "publish-lost-same-id",
            "two waits on every id, one of each even pair cancelled just before the response, while the responder's PUBLISH is lost",
        )
        .faults(vec![Fault::PublishLost])
        .twins()
        .expect(PubSubOnly, Invalid, "pub/sub-only: no hint ever comes for those responses"),
        // Fault after fault: every poll fails while the command connection is refused; after
        // the heal, hints are lost, so the poller must have outlived the first fault.
        Scenario::new(
            "outage-then-publish-lost",
            "the command connection refused for a window, healed, then the responder's PUBLISH lost for a second window",
        )
        .faults(vec![Fault::ProxyDown { target: Target::Commands }])
        .then(vec![Fault::PublishLost])
        .expect(PubSubOnly, Invalid, "pub/sub-only: no hint ever comes for the second window's responses"),
        Scenario::new(
            "stream-tail-in-outage",
            "a stream's tail, final chunk included, published while the subscriber is cut off; nothing after",
        )
        .faults(vec![Fault::ProxyDown { target: Target::Subscriber }])
        .stream_shape(StreamShape::TailInOutage)
        .fallback_off()
        .applies_to(&[Hybrid, PubSubOnly])
        .expect(PubSubOnly, Invalid, "pub/sub-only streaming: the tail was published while nobody could hear it"),
        Scenario::new(
            "stream-catchup-race",
            "a late joiner's SUBSCRIBE held in flight while the final chunk is appended",
        )
        .faults(vec![Fault::LatencyUpstream { target: Target::Subscriber, latency_ms: 150 }])
        .stream_shape(StreamShape::CatchupRace)
        .fallback_off()
        .applies_to(&[Hybrid, PubSubOnly])
        .expect(PubSubOnly, Invalid, "pub/sub-only streaming: a late joiner never sees what came before it"),
        Scenario::new(
            "stream-idle-joiner-after-restart",
            "a stream through a SHUTDOWN + restart; a late joiner, idle since before it, joins after recovery",
        )
        .persistence(Persistence::AofAlways)
        .faults(vec![Fault::GracefulRestart])
        .stream_shape(StreamShape::JoinIdleAfterRecovery)
        .fallback_off()
        .applies_to(&[Hybrid, PubSubOnly])
        .expect(PubSubOnly, Invalid, "pub/sub-only streaming: a late joiner never sees what came before it"),
        Scenario::new(
            "stream-duplicate-appends",
            "chunks appended twice (retried appends) while the subscriber is reset and resyncs",
        )
        .faults(vec![Fault::ResetPeer { target: Target::Subscriber }])
        .stream_shape(StreamShape::DuplicateAppends)
        .expect(PubSubOnly, Invalid, "pub/sub-only streaming: chunks published during the reset gap are gone"),
    ]
}
