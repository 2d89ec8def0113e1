//! proptest strategies for [`Case`]s: fault steps drawn from the whole nemesis catalogue,
//! aimed at the command connection, the subscriber connection or both, and small workloads
//! with second waits on the same id (twins), some of them cancelled.
//!
//! Times are multiples of 50 ms from small ranges, so a shrink takes a few halvings rather
//! than dozens (each shrink step is a real run of a second or two). Within a case the
//! schedule comes first, so proptest shrinks it before the workload: the question a failure
//! answers first is "which faults are needed".

use harness::case::{Case, Request, Step, Twin};
use harness::nemesis::{Fault, Target};
use proptest::prelude::*;

/// Time granularity of generated cases, in ms.
pub const SLOT_MS: u64 = 50;
/// Most fault steps in one schedule.
pub const STEPS_MAX: usize = 3;
/// Most requests in one workload.
pub const REQUESTS_MAX: usize = 6;
/// Most chunks in the case's stream.
pub const CHUNKS_MAX: u64 = 6;
/// Most second waits on an id already waited on, in one case.
pub const TWINS_MAX: usize = 3;

/// Which workloads to generate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// Waits and responses in any order, some never answered, some cancelled, plus a
    /// stream: everything the hybrid claims to survive.
    Free,
    /// Every waiter subscribed before any response, all answered: whatever is lost, a fault
    /// lost it (the resume case cannot).
    WaitersFirst,
}

pub fn target() -> impl Strategy<Value = Target> {
    prop_oneof![Just(Target::Commands), Just(Target::Subscriber), Just(Target::Both)]
}

/// Any fault of the catalogue. Latency first and weighted up: it is the mildest, so shrinking
/// moves towards it, and the only one the wake-latency bound does not excuse.
pub fn fault() -> impl Strategy<Value = Fault> {
    prop_oneof![
        4 => (target(), 1..=8u64, 0..=3u64).prop_map(|(target, l, j)| Fault::Latency {
            target,
            latency_ms: l * 10,
            jitter_ms: j * 5
        }),
        1 => target().prop_map(|target| Fault::Blackhole { target }),
        1 => target().prop_map(|target| Fault::ResetPeer { target }),
        1 => target().prop_map(|target| Fault::ProxyDown { target }),
        1 => Just(Fault::CrashRestart),
        1 => Just(Fault::GracefulRestart),
        1 => Just(Fault::RedisDown),
        1 => Just(Fault::Freeze),
        1 => (target(), 1..=16u64).prop_map(|(target, r)| Fault::Bandwidth { target, rate_kb_s: r }),
        1 => (target(), 1..=16u64, 1..=5u64).prop_map(|(target, size, d)| Fault::Slicer {
            target,
            average_size: size,
            delay_us: d * 100
        }),
        // A SUBSCRIBE held in flight: the window between a waiter's first read and its
        // confirmed subscription, and cancellations inside it.
        1 => (target(), 1..=6u64).prop_map(|(target, l)| Fault::LatencyUpstream { target, latency_ms: l * 25 }),
        1 => Just(Fault::DropSubscribers),
        1 => Just(Fault::StoreRefused),
        1 => Just(Fault::PublishLost),
    ]
}

pub fn step() -> impl Strategy<Value = Step> {
    (0..=20u64, fault(), 1..=8u64).prop_map(|(at, fault, d)| Step {
        at_ms: at * SLOT_MS,
        fault,
        duration_ms: d * SLOT_MS,
    })
}

pub fn request(workload: Workload) -> BoxedStrategy<Request> {
    match workload {
        Workload::Free => {
            (0..=20u64, proptest::option::weighted(0.85, 0..=20u64), proptest::option::weighted(0.1, 1..=6u64))
                .prop_map(|(w, r, c)| Request {
                    wait_at_ms: w * SLOT_MS,
                    respond_at_ms: r.map(|r| r * SLOT_MS),
                    cancel_after_ms: c.map(|c| c * SLOT_MS),
                })
                .boxed()
        }
        // Responses from 300 ms on: every waiter has subscribed by then.
        Workload::WaitersFirst => (0..=16u64)
            .prop_map(|r| Request { wait_at_ms: 0, respond_at_ms: Some(300 + r * SLOT_MS), cancel_after_ms: None })
            .boxed(),
    }
}

/// A second wait on request `of` (taken modulo the requests there are), cancelled now and
/// then: one of two waits on an id leaving must not take the other's wake-up with it.
pub fn twin() -> impl Strategy<Value = Twin> {
    (0..REQUESTS_MAX, 0..=20u64, proptest::option::weighted(0.5, 1..=6u64)).prop_map(|(of, w, c)| Twin {
        of,
        wait_at_ms: w * SLOT_MS,
        cancel_after_ms: c.map(|c| c * SLOT_MS),
    })
}

pub fn case(workload: Workload) -> impl Strategy<Value = Case> {
    let (chunks, twins) = match workload {
        Workload::Free => ((0..=CHUNKS_MAX).boxed(), proptest::collection::vec(twin(), 0..=TWINS_MAX).boxed()),
        Workload::WaitersFirst => (Just(0).boxed(), Just(Vec::new()).boxed()),
    };
    (
        proptest::collection::vec(step(), 0..=STEPS_MAX),
        proptest::collection::vec(request(workload), 1..=REQUESTS_MAX),
        twins,
        chunks,
    )
        .prop_map(|(schedule, requests, twins, chunks)| {
            // Each twin names a request that exists, however the requests were shrunk.
            let twins = twins.into_iter().map(|t| Twin { of: t.of % requests.len(), ..t }).collect();
            Case { schedule, requests, twins, chunks }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

    #[test]
    fn generated_cases_stay_within_their_limits() {
        let mut runner = TestRunner::deterministic();
        for workload in [Workload::Free, Workload::WaitersFirst] {
            let strategy = case(workload);
            for _ in 0..500 {
                let c = strategy.new_tree(&mut runner).unwrap().current();
                assert!(c.schedule.len() <= STEPS_MAX && c.requests.len() <= REQUESTS_MAX && c.chunks <= CHUNKS_MAX);
                assert!(!c.requests.is_empty());
                for s in &c.schedule {
                    assert!(s.at_ms % SLOT_MS == 0 && s.duration_ms % SLOT_MS == 0 && s.duration_ms > 0, "{s:?}");
                }
                assert!(c.twins.len() <= TWINS_MAX && c.twins.iter().all(|t| t.of < c.requests.len()), "{c:?}");
                if workload == Workload::WaitersFirst {
                    assert!(c.requests.iter().all(|r| r.wait_at_ms == 0 && r.respond_at_ms.is_some_and(|t| t >= 300)));
                    assert_eq!(c.chunks, 0);
                    assert!(c.twins.is_empty());
                }
            }
        }
    }

    #[test]
    fn every_kind_of_fault_is_generated() {
        let mut runner = TestRunner::deterministic();
        let mut kinds = std::collections::BTreeSet::new();
        for _ in 0..2_000 {
            let f = fault().new_tree(&mut runner).unwrap().current();
            kinds.insert(serde_json::to_value(&f).unwrap()["fault"].as_str().unwrap().to_string());
        }
        // Every fault the nemesis knows (the enum's variants, counted by hand: a new one must
        // be added to the generator too).
        assert_eq!(kinds.len(), 14, "{kinds:?}");
    }
}
