//! A state-machine test (proptest-state-machine) of the hybrid's waiter registry and
//! subscription reference counts against a model: any interleaving of wait, respond,
//! timeout, cancel and reconnect leaves the waiters, the wanted channels, the poller's
//! pending set and the subscriptions the server reports (`PUBSUB NUMSUB`) equal to what the
//! model says: one subscription per id with a live waiter, none otherwise.
//!
//! Runs on a real `redis-server`; a reconnect is a real one (`CLIENT KILL TYPE pubsub`).
//! Budget: `PROPTEST_CASES` (default 64). The same machine run against the never-unsubscribe
//! mutation must fail: the test of the test.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use harness::infra::{admin, ProcessRedis, RedisNode, RedisSpec};
use harness::reference::feedback::Hybrid;
use harness::reference::{response_fields, Config, FeedbackStrategy, Mutation, WaitOutcome};
use proptest::prelude::*;
use proptest::test_runner::{Config as PtConfig, FileFailurePersistence, TestError, TestRunner};
use proptest_state_machine::{ReferenceStateMachine, StateMachineTest};

/// Ids the transitions pick from: few, so waiters share channels.
const IDS: usize = 3;
/// Transitions per case.
const TRANSITIONS_MAX: usize = 24;
/// Cases when `PROPTEST_CASES` is not set.
const CASES_DEFAULT: u32 = 64;
/// How long a "timeout" wait waits, in ms.
const SHORT_WAIT_MS: u64 = 30;
/// Longest wait for the implementation and the server to reflect a transition, in ms.
const SETTLE_MS: u64 = 3_000;

#[derive(Clone, Debug, Default)]
struct Model {
    /// Live waiters: waiter number -> id.
    waiters: BTreeMap<u32, usize>,
    responded: BTreeSet<usize>,
    next: u32,
}

impl Model {
    fn ids_waited(&self) -> BTreeSet<usize> {
        self.waiters.values().copied().collect()
    }
}

#[derive(Clone, Debug)]
enum Transition {
    /// A worker starts waiting for the id (no deadline within the case).
    Wait(usize),
    Respond(usize),
    /// A wait with a short deadline, run to its end.
    Timeout(usize),
    /// Waiter number n gives up (its future is dropped).
    Cancel(u32),
    /// The server drops the subscriber connection.
    Reconnect,
}

struct RegistryModel;

impl ReferenceStateMachine for RegistryModel {
    type State = Model;
    type Transition = Transition;

    fn init_state() -> BoxedStrategy<Model> {
        Just(Model::default()).boxed()
    }

    fn transitions(state: &Model) -> BoxedStrategy<Transition> {
        let id = 0..IDS;
        let basic = prop_oneof![
            4 => id.clone().prop_map(Transition::Wait),
            2 => id.clone().prop_map(Transition::Respond),
            1 => id.prop_map(Transition::Timeout),
            1 => Just(Transition::Reconnect),
        ];
        if state.waiters.is_empty() {
            return basic.boxed();
        }
        let live: Vec<u32> = state.waiters.keys().copied().collect();
        prop_oneof![4 => basic, 1 => proptest::sample::select(live).prop_map(Transition::Cancel)].boxed()
    }

    fn preconditions(state: &Model, t: &Transition) -> bool {
        match t {
            Transition::Cancel(n) => state.waiters.contains_key(n),
            _ => true,
        }
    }

    fn apply(mut state: Model, t: &Transition) -> Model {
        match t {
            Transition::Wait(id) => {
                if !state.responded.contains(id) {
                    state.waiters.insert(state.next, *id);
                }
                state.next += 1;
            }
            Transition::Respond(id) => {
                state.responded.insert(*id);
                state.waiters.retain(|_, w| w != id);
            }
            Transition::Cancel(n) => {
                state.waiters.remove(n);
            }
            Transition::Timeout(_) | Transition::Reconnect => {}
        }
        state
    }
}

/// What every case shares: the runtime and the server. Set by the test before the runner
/// starts and taken back after, so the server is stopped by the test, not left to exit.
struct Ctx {
    rt: tokio::runtime::Runtime,
    redis: ProcessRedis,
    mutation: Option<Mutation>,
}

thread_local! {
    static CTX: RefCell<Option<Ctx>> = const { RefCell::new(None) };
}

fn with_ctx<T>(f: impl FnOnce(&Ctx) -> T) -> T {
    CTX.with(|c| f(c.borrow().as_ref().expect("context set by the test")))
}

static CASE: AtomicU64 = AtomicU64::new(0);

struct Sut {
    hybrid: Arc<Hybrid>,
    config: Config,
    url: String,
    waiters: BTreeMap<u32, (usize, tokio::task::JoinHandle<harness::reference::Result<WaitOutcome>>)>,
}

fn id_name(id: usize) -> String {
    format!("id{id}")
}

impl Sut {
    /// Waits (bounded) until implementation and server agree with the model, and asserts.
    async fn assert_matches(&self, model: &Model) {
        let expected_ids = model.ids_waited();
        let channels: Vec<String> = (0..IDS).map(|i| self.config.keys.feedback_channel(&id_name(i))).collect();
        let refs: Vec<&str> = channels.iter().map(String::as_str).collect();
        let observe = || async {
            let st = self.hybrid.stats();
            let numsub = admin::pubsub_numsub(&self.url, &refs).await.expect("PUBSUB NUMSUB");
            let subscribed: BTreeSet<usize> = (0..IDS).filter(|i| numsub[*i].1 > 0).collect();
            let over: Vec<u64> = numsub.iter().map(|(_, n)| *n).filter(|n| *n > 1).collect();
            (st.waiters, st.channels, st.pending_polls, subscribed, over)
        };
        let want = (model.waiters.len(), expected_ids.len(), expected_ids.len(), expected_ids.clone(), vec![]);
        let settled = harness::poll_until(Duration::from_millis(SETTLE_MS), Duration::from_millis(10), || async {
            (observe().await == want).then_some(())
        })
        .await;
        if settled.is_none() {
            let got = observe().await;
            panic!(
                "after {SETTLE_MS} ms: (waiters, channels, pending polls, subscribed ids, duplicate subscriptions) \
                 = {got:?}, the model says {want:?}"
            );
        }
    }
}

struct RegistryTest;

impl StateMachineTest for RegistryTest {
    type SystemUnderTest = Sut;
    type Reference = RegistryModel;

    fn init_test(_: &Model) -> Sut {
        with_ctx(|ctx| {
            let url = ctx.redis.url();
            let prefix = format!("{}sm{}:", ctx.redis.key_prefix(), CASE.fetch_add(1, Ordering::Relaxed));
            // Polling slow enough that a response is found by the hint, fast enough for cases.
            let config = Config {
                poll_interval_ms: 100,
                health_check_interval_ms: 200,
                health_check_timeout_ms: 500,
                reconnect_delay_ms_max: 100,
                mutation: ctx.mutation,
                ..Config::default().with_prefix(&prefix)
            };
            let hybrid = ctx.rt.block_on(Hybrid::connect(&url, &url, config.clone())).expect("connect");
            Sut { hybrid: Arc::new(hybrid), config, url, waiters: BTreeMap::new() }
        })
    }

    fn apply(mut sut: Sut, model: &Model, t: Transition) -> Sut {
        with_ctx(|ctx| {
            ctx.rt.block_on(async {
                match t {
                    Transition::Wait(id) => {
                        let h = sut.hybrid.clone();
                        let task = tokio::spawn(async move { h.wait(&id_name(id), Duration::from_secs(600)).await });
                        if model.responded.contains(&id) {
                            let got = task.await.expect("join").expect("wait");
                            assert!(matches!(got, WaitOutcome::Obtained { .. }), "answered id {id}: {got:?}");
                        } else {
                            sut.waiters.insert(model.next - 1, (id, task));
                        }
                    }
                    Transition::Respond(id) => {
                        let fields = response_fields(&id_name(id), &serde_json::Map::new());
                        let out = sut.hybrid.respond(&id_name(id), &fields).await;
                        assert!(out.committed(), "respond {id}: {out:?}");
                        let done: Vec<u32> =
                            sut.waiters.iter().filter(|(_, (i, _))| *i == id).map(|(n, _)| *n).collect();
                        for n in done {
                            let (_, task) = sut.waiters.remove(&n).expect("listed above");
                            let got = tokio::time::timeout(Duration::from_millis(SETTLE_MS), task)
                                .await
                                .unwrap_or_else(|_| panic!("waiter {n} on id {id} not woken within {SETTLE_MS} ms"))
                                .expect("join")
                                .expect("wait");
                            assert!(matches!(got, WaitOutcome::Obtained { .. }), "waiter {n}: {got:?}");
                        }
                    }
                    Transition::Timeout(id) => {
                        let got =
                            sut.hybrid.wait(&id_name(id), Duration::from_millis(SHORT_WAIT_MS)).await.expect("wait");
                        let answered = model.responded.contains(&id);
                        assert_eq!(
                            matches!(got, WaitOutcome::Obtained { .. }),
                            answered,
                            "short wait on {id}: {got:?}"
                        );
                    }
                    Transition::Cancel(n) => {
                        let (_, task) = sut.waiters.remove(&n).expect("precondition: live waiter");
                        task.abort();
                        let _ = task.await;
                    }
                    Transition::Reconnect => {
                        let before = sut.hybrid.hub().reconnects();
                        let mut c = admin::connect(&sut.url).await.expect("admin connection");
                        let _: u64 = redis::cmd("CLIENT")
                            .arg("KILL")
                            .arg("TYPE")
                            .arg("pubsub")
                            .query_async(&mut c)
                            .await
                            .expect("CLIENT KILL");
                        let h = sut.hybrid.clone();
                        let again =
                            harness::poll_until(Duration::from_millis(SETTLE_MS), Duration::from_millis(10), || {
                                let h = h.clone();
                                async move { (h.hub().reconnects() > before && h.hub().is_connected()).then_some(()) }
                            })
                            .await;
                        assert!(again.is_some(), "the hub did not reconnect within {SETTLE_MS} ms");
                    }
                }
            });
        });
        sut
    }

    fn check_invariants(sut: &Sut, model: &Model) {
        with_ctx(|ctx| ctx.rt.block_on(sut.assert_matches(model)));
    }

    fn teardown(sut: Sut, _: Model) {
        with_ctx(|ctx| {
            ctx.rt.block_on(async {
                for (_, (_, t)) in sut.waiters {
                    t.abort();
                }
                sut.hybrid.shutdown().await;
            })
        });
    }
}

/// Runs the state machine with `mutation`, returning the failure message if a case failed.
fn run_machine(
    mutation: Option<Mutation>,
    cases: u32,
    shrink_iters_max: u32,
    regressions: Option<&'static str>,
) -> Option<String> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let redis = rt.block_on(ProcessRedis::start(RedisSpec::default())).expect("redis-server");
    CTX.with(|c| *c.borrow_mut() = Some(Ctx { rt, redis, mutation }));
    let config = PtConfig {
        cases,
        max_shrink_iters: shrink_iters_max,
        failure_persistence: Some(Box::new(match regressions {
            Some(p) => FileFailurePersistence::Direct(p),
            None => FileFailurePersistence::Off,
        })),
        ..PtConfig::default()
    };
    let mut runner = TestRunner::new(config.clone());
    let started = std::time::Instant::now();
    let result = runner.run(&RegistryModel::sequential_strategy(1..TRANSITIONS_MAX), |(state, transitions, seen)| {
        RegistryTest::test_sequential(config.clone(), state, transitions, seen);
        Ok(())
    });
    eprintln!("state machine ({mutation:?}): {cases} cases budget, {:.1} s", started.elapsed().as_secs_f64());
    let ctx = CTX.with(|c| c.borrow_mut().take()).expect("context");
    drop(ctx.redis);
    drop(ctx.rt);
    match result {
        Ok(()) => None,
        Err(TestError::Fail(reason, (_, transitions, _))) => {
            Some(format!("{}\nshrunk transitions: {transitions:?}", reason.message()))
        }
        Err(TestError::Abort(reason)) => panic!("the state machine aborted: {}", reason.message()),
    }
}

#[test]
fn waiter_registry_matches_the_model() {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(CASES_DEFAULT);
    let regressions = concat!(env!("CARGO_MANIFEST_DIR"), "/regressions/registry_model.txt");
    if let Some(failure) = run_machine(None, cases, u32::MAX, Some(regressions)) {
        panic!("the registry diverged from the model:\n{failure}");
    }
}

#[test]
fn never_unsubscribe_diverges_from_the_model() {
    // Each failing run waits out the settle bound: a few shrink steps show the point.
    let failure = run_machine(Some(Mutation::NeverUnsubscribe), 64, 16, None)
        .expect("the state machine did not catch a hub that never unsubscribes");
    eprintln!("caught, as it must be:\n{failure}");
    assert!(failure.contains("the model says"), "{failure}");
}
