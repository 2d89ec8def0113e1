//! Drives proptest's runner over generated [`Case`]s and reports what it found: the shrunk
//! case, why it failed, how many cases ran, how long it took, and the seed that replays it.
//!
//! Side by side: a case spends most of its time waiting on timers and faults, not on the
//! CPU, so the search runs [`Search::lanes`] proptest runners at once, each on its own
//! [`CaseRig`] (its own Redis and proxies), each with a seed derived from the search's and an
//! equal share of the cases. A lane is a whole proptest run: it replays, shrinks and persists
//! as one runner does. The first lane to fail stops the others from starting new cases; the
//! failure of the lowest lane that failed is the one reported, with the lane's own seed,
//! which replays it alone (`HC_SEARCH_LANES=1`).

use std::any::Any;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use harness::case::{Case, CaseRig};
use harness::reference::Mutation;
use harness::strategy::{BuiltIn, Strategy};
use proptest::test_runner::{
    Config, FailurePersistence, FileFailurePersistence, PersistedSeed, RngSeed, TestCaseError, TestError, TestRunner,
};

use crate::gen::{self, Workload};

/// proptest's own default number of cases: the budget the canaries must find a
/// counterexample within, whatever `PROPTEST_CASES` says for the property itself.
pub const DEFAULT_CASES: u32 = 256;

/// Shrink runs allowed after the first failure, unless `PROPTEST_MAX_SHRINK_ITERS` says
/// otherwise. Each is a real run of a second or two; the schedule shrinks first, so this is
/// enough to strip the steps a failure does not need.
pub const SHRINK_RUNS_MAX: u32 = 24;

/// Lanes (cases side by side, each on its own Redis) unless `HC_SEARCH_LANES` says
/// otherwise. Measured on 2 cores (debug build, 150 cases of seed 33): 1 lane 36 cases per
/// minute, 8 lanes 224, 10 lanes 289, with no false finding; a case mostly waits.
pub const LANES_DEFAULT: usize = 10;

/// What to search.
#[derive(Clone, Debug)]
pub struct Search {
    /// One of [`BuiltIn::SUITE`].
    pub strategy: BuiltIn,
    /// A deliberately broken variant of the hybrid.
    pub mutation: Option<Mutation>,
    pub workload: Workload,
    /// Cases to generate (not counting shrink runs and replayed regressions).
    pub cases: u32,
    pub shrink_runs_max: u32,
    /// The checkers the property consists of (`None`: all). A canary aimed at one flaw
    /// names it, so a design's other known flaws do not answer for it.
    pub checks: Option<&'static [&'static str]>,
    /// Where failing seeds are stored and replayed from first (`None`: nowhere).
    pub regressions: Option<&'static str>,
    /// The proptest RNG seed (lane 0's; the others' are derived from it, [`lane_seed`]).
    pub seed: u64,
    /// Runners side by side, each on its own Redis (at least 1).
    pub lanes: usize,
}

/// The seed of lane `lane` of a search seeded `seed`: lane 0 is the search's own, so a
/// one-lane search is the plain proptest run of that seed.
pub fn lane_seed(seed: u64, lane: usize) -> u64 {
    match lane {
        0 => seed,
        // splitmix64's increment, so lanes of nearby search seeds do not collide; halved like
        // a fresh seed (`Search::new`), so it reads back through PROPTEST_RNG_SEED.
        _ => seed.wrapping_add((lane as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)) >> 1,
    }
}

/// The counterexample a search found, shrunk.
#[derive(Clone, Debug)]
pub struct Found {
    pub case: Case,
    /// The failing checks, with their evidence.
    pub reason: String,
}

/// Lane `lane`'s share of `cases` over `lanes` lanes: equal, the first lanes taking the
/// remainder.
pub fn lane_cases(cases: u32, lanes: usize, lane: usize) -> u32 {
    let lanes = lanes.max(1) as u32;
    cases / lanes + u32::from((lane as u32) < cases % lanes)
}

/// What a search did.
#[derive(Clone, Debug)]
pub struct SearchReport {
    pub strategy: BuiltIn,
    pub mutation: Option<Mutation>,
    pub seed: u64,
    /// Case runs in all (generated, replayed and shrink runs).
    pub runs: u64,
    /// The run that first failed (1-based), if any.
    pub first_failure_run: Option<u64>,
    pub elapsed: Duration,
    pub found: Option<Found>,
    /// Lanes the search ran, and the one whose failure is reported (with its seed).
    pub lanes: usize,
    pub found_in: Option<(usize, u64)>,
}

impl Search {
    /// A search of `strategy` with `PROPTEST_CASES` cases (default `default_cases`), the
    /// seed from `PROPTEST_RNG_SEED` or a fresh one.
    pub fn new(strategy: BuiltIn, workload: Workload, default_cases: u32) -> Search {
        let env_u32 = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u32>().ok());
        let seed = std::env::var("PROPTEST_RNG_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| rand::random::<u64>() >> 1);
        Search {
            strategy,
            mutation: None,
            workload,
            checks: None,
            cases: env_u32("PROPTEST_CASES").unwrap_or(default_cases),
            shrink_runs_max: env_u32("PROPTEST_MAX_SHRINK_ITERS").unwrap_or(SHRINK_RUNS_MAX),
            regressions: None,
            seed,
            lanes: std::env::var("HC_SEARCH_LANES")
                .ok()
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(LANES_DEFAULT)
                .max(1),
        }
    }

    /// Runs the search, lane by lane on Redis servers and proxies started here and stopped
    /// at the end.
    pub fn run(&self) -> anyhow::Result<SearchReport> {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
        let lanes = self.lanes.max(1);
        let stop_all =
            |rigs: Vec<CaseRig>| rt.block_on(futures_util::future::join_all(rigs.into_iter().map(CaseRig::stop)));
        let rigs = rt.block_on(futures_util::future::join_all(
            (0..lanes).map(|lane| CaseRig::start(lane_seed(self.seed, lane))),
        ));
        let mut started = Vec::new();
        let mut failed = None;
        for r in rigs {
            match r {
                Ok(rig) => started.push(rig),
                Err(e) => failed = failed.or(Some(e)),
            }
        }
        if let Some(e) = failed {
            // Nothing is left behind: the rigs that did start are stopped.
            stop_all(started);
            return Err(e.context(format!("starting the search's {lanes} lanes")));
        }
        let shared = Shared { runs: AtomicU64::new(0), first_failure: AtomicU64::new(0), stop: AtomicBool::new(false) };
        let file_lock = Arc::new(Mutex::new(()));
        let begun = Instant::now();
        let results: Vec<(usize, u64, Result<(), TestError<Case>>, CaseRig)> = std::thread::scope(|scope| {
            let handles: Vec<_> = started
                .into_iter()
                .enumerate()
                .map(|(lane, rig)| {
                    let (shared, rt, file_lock) = (&shared, &rt, file_lock.clone());
                    let cases = lane_cases(self.cases, lanes, lane);
                    let seed = lane_seed(self.seed, lane);
                    scope.spawn(move || {
                        let (result, rig) = self.lane(rt, rig, lane, seed, cases, shared, file_lock);
                        (lane, seed, result, rig)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("a search lane panicked")).collect()
        });
        let elapsed = begun.elapsed();
        let (outcomes, rigs): (Vec<_>, Vec<_>) =
            results.into_iter().map(|(lane, seed, result, rig)| ((lane, seed, result), rig)).unzip();
        stop_all(rigs);
        let mut found = None;
        for (lane, seed, result) in outcomes {
            match result {
                Ok(()) => {}
                Err(TestError::Fail(reason, case)) if found.is_none() => {
                    found = Some((Found { case, reason: reason.message().to_string() }, lane, seed))
                }
                Err(TestError::Fail(..)) => {}
                Err(TestError::Abort(reason)) => {
                    anyhow::bail!("the search aborted in lane {lane}: {}", reason.message())
                }
            }
        }
        let first = shared.first_failure.load(Ordering::Relaxed);
        Ok(SearchReport {
            strategy: self.strategy,
            mutation: self.mutation,
            seed: self.seed,
            runs: shared.runs.load(Ordering::Relaxed),
            first_failure_run: (first > 0).then_some(first),
            elapsed,
            lanes,
            found_in: found.as_ref().map(|(_, lane, seed)| (*lane, *seed)),
            found: found.map(|(f, _, _)| f),
        })
    }

    /// One lane: a proptest run of `cases` cases seeded `seed` on `rig`. Lane 0 replays the
    /// persisted failures first; every lane persists its own.
    #[allow(clippy::too_many_arguments)]
    fn lane(
        &self,
        rt: &tokio::runtime::Runtime,
        rig: CaseRig,
        lane: usize,
        seed: u64,
        cases: u32,
        shared: &Shared,
        file_lock: Arc<Mutex<()>>,
    ) -> (Result<(), TestError<Case>>, CaseRig) {
        let config = Config {
            cases,
            max_shrink_iters: self.shrink_runs_max,
            rng_seed: RngSeed::Fixed(seed),
            failure_persistence: Some(match self.regressions {
                Some(path) => Box::new(Persistence {
                    file: FileFailurePersistence::Direct(path),
                    replay: lane == 0,
                    lock: file_lock,
                }),
                None => Box::new(FileFailurePersistence::Off),
            }),
            // Cases never reject; a panic is a harness bug and should fail loudly.
            ..Config::default()
        };
        let mut runner = TestRunner::new(config);
        // proptest's test is `Fn`: the rig and the lane's own flag sit behind cells.
        let rig = Mutex::new(rig);
        let failed_here = AtomicBool::new(false);
        let result = runner.run(&gen::case(self.workload), |case| {
            // Another lane found a failure: no new cases here (this lane's own shrinking goes on).
            if shared.stop.load(Ordering::Relaxed) && !failed_here.load(Ordering::Relaxed) {
                return Ok(());
            }
            let n = shared.runs.fetch_add(1, Ordering::Relaxed) + 1;
            let mut rig = rig.lock().expect("rig lock");
            let outcome = rt
                .block_on(rig.run(&case, &Strategy::from(self.strategy), self.mutation))
                .map_err(|e| TestCaseError::fail(format!("infrastructure: {e:#}")))?;
            let failing = match self.checks {
                Some(names) => outcome.failures_of(names),
                None => outcome.failures(),
            };
            if failing.is_empty() {
                return Ok(());
            }
            failed_here.store(true, Ordering::Relaxed);
            shared.stop.store(true, Ordering::Relaxed);
            let _ = shared.first_failure.compare_exchange(0, n, Ordering::Relaxed, Ordering::Relaxed);
            Err(TestCaseError::fail(harness::case::describe(&failing)))
        });
        (result, rig.into_inner().expect("rig lock"))
    }
}

/// What the lanes of one search share.
struct Shared {
    /// Case runs in all lanes (generated, replayed and shrink runs).
    runs: AtomicU64,
    /// The run that first failed (1-based; 0: none yet).
    first_failure: AtomicU64,
    /// Set at the first failure: the other lanes start no new cases.
    stop: AtomicBool,
}

/// The regression file, shared by the lanes: only lane 0 replays it (each lane replaying
/// every seed would run each one once per lane), every lane appends its failures, one at a
/// time.
#[derive(Debug, Clone)]
struct Persistence {
    file: FileFailurePersistence,
    replay: bool,
    lock: Arc<Mutex<()>>,
}

impl FailurePersistence for Persistence {
    fn load_persisted_failures2(&self, source_file: Option<&'static str>) -> Vec<PersistedSeed> {
        if self.replay {
            self.file.load_persisted_failures2(source_file)
        } else {
            Vec::new()
        }
    }

    fn save_persisted_failure2(
        &mut self,
        source_file: Option<&'static str>,
        seed: PersistedSeed,
        shrunken_value: &dyn fmt::Debug,
    ) {
        let _one_at_a_time = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.file.save_persisted_failure2(source_file, seed, shrunken_value);
    }

    fn box_clone(&self) -> Box<dyn FailurePersistence> {
        Box::new(self.clone())
    }

    fn eq(&self, other: &dyn FailurePersistence) -> bool {
        other.as_any().downcast_ref::<Persistence>().is_some_and(|o| o.replay == self.replay && o.file == self.file)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl fmt::Display for SearchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.mutation {
            Some(m) => format!("{} with mutation {}", self.strategy.name(), m.name()),
            None => self.strategy.name().to_string(),
        };
        let per_minute = self.runs as f64 * 60.0 / self.elapsed.as_secs_f64().max(1e-3);
        write!(
            f,
            "search of {what}: {} runs in {:.1} s on {} lanes ({per_minute:.0} per minute)",
            self.runs,
            self.elapsed.as_secs_f64(),
            self.lanes
        )?;
        if let Some(n) = self.first_failure_run {
            write!(f, ", first failure at run {n}")?;
        }
        writeln!(f)?;
        match &self.found {
            None => writeln!(f, "no counterexample")?,
            Some(found) => {
                writeln!(f, "counterexample, shrunk:\n{}", found.case)?;
                writeln!(f, "failed checks:\n{}", found.reason)?;
                let json = serde_json::to_string(&found.case).map_err(|_| fmt::Error)?;
                writeln!(
                    f,
                    "the case as JSON (run it again: hybrid-chaos case FILE --strategy {}):\n{json}",
                    self.strategy.name()
                )?;
            }
        }
        // The lane's own seed replays its failure alone; the search's seed with as many
        // lanes replays the whole search.
        let (lane, seed) = self.found_in.unwrap_or((0, self.seed));
        let mutation = self.mutation.map(|m| format!(" HC_MUTATION={}", m.name())).unwrap_or_default();
        if self.found_in.is_some() {
            write!(
                f,
                "found in lane {lane}; replay it: PROPTEST_RNG_SEED={seed} HC_SEARCH_LANES=1{mutation} (same test); "
            )?;
        }
        write!(
            f,
            "replay the search: PROPTEST_RNG_SEED={} HC_SEARCH_LANES={}{mutation} (same test)",
            self.seed, self.lanes
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lanes_share_the_cases_and_have_seeds_of_their_own() {
        for (cases, lanes) in [(0, 10), (4, 10), (12, 10), (300, 10), (7, 1), (5, 3)] {
            let shares: Vec<u32> = (0..lanes).map(|l| lane_cases(cases, lanes, l)).collect();
            assert_eq!(shares.iter().sum::<u32>(), cases, "{cases} over {lanes}: {shares:?}");
            assert!(shares.windows(2).all(|w| w[0] >= w[1] && w[0] - w[1] <= 1), "{shares:?}");
        }
        // Lane 0 is the search's own seed: one lane is the plain proptest run.
        assert_eq!(lane_seed(11, 0), 11);
        let seeds: std::collections::BTreeSet<u64> = (0..64).map(|l| lane_seed(11, l)).collect();
        assert_eq!(seeds.len(), 64, "lane seeds collide");
        // Every lane's seed reads back through PROPTEST_RNG_SEED (below 2^63, as fresh seeds are).
        assert!((1..64).all(|l| lane_seed(u64::MAX, l) < 1 << 63));
    }
}
