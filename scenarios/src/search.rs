//! Drives proptest's runner over generated [`Case`]s on one [`CaseRig`] and reports what it
//! found: the shrunk case, why it failed, how many cases ran, how long it took, and the seed
//! that replays the search.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use harness::case::{Case, CaseRig};
use harness::reference::Mutation;
use proptest::test_runner::{Config, FileFailurePersistence, RngSeed, TestCaseError, TestError, TestRunner};

use crate::gen::{self, Workload};

/// proptest's own default number of cases: the budget the canaries must find a
/// counterexample within, whatever `PROPTEST_CASES` says for the property itself.
pub const DEFAULT_CASES: u32 = 256;

/// Shrink runs allowed after the first failure, unless `PROPTEST_MAX_SHRINK_ITERS` says
/// otherwise. Each is a real run of a second or two; the schedule shrinks first, so this is
/// enough to strip the steps a failure does not need.
pub const SHRINK_RUNS_MAX: u32 = 24;

/// What to search.
#[derive(Clone, Debug)]
pub struct Search {
    /// `hybrid`, `pubsub-only` or `polling-only`.
    pub strategy: &'static str,
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
    /// The proptest RNG seed.
    pub seed: u64,
}

/// The counterexample a search found, shrunk.
#[derive(Clone, Debug)]
pub struct Found {
    pub case: Case,
    /// The failing checks, with their evidence.
    pub reason: String,
}

/// What a search did.
#[derive(Clone, Debug)]
pub struct SearchReport {
    pub strategy: &'static str,
    pub mutation: Option<Mutation>,
    pub seed: u64,
    /// Case runs in all (generated, replayed and shrink runs).
    pub runs: u64,
    /// The run that first failed (1-based), if any.
    pub first_failure_run: Option<u64>,
    pub elapsed: Duration,
    pub found: Option<Found>,
}

impl Search {
    /// A search of `strategy` with `PROPTEST_CASES` cases (default `default_cases`), the
    /// seed from `PROPTEST_RNG_SEED` or a fresh one.
    pub fn new(strategy: &'static str, workload: Workload, default_cases: u32) -> Search {
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
        }
    }

    /// Runs the search on its own Redis and proxies (started here, stopped at the end).
    pub fn run(&self) -> anyhow::Result<SearchReport> {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
        let rig = Mutex::new(Some(rt.block_on(CaseRig::start(self.seed))?));
        let config = Config {
            cases: self.cases,
            max_shrink_iters: self.shrink_runs_max,
            rng_seed: RngSeed::Fixed(self.seed),
            failure_persistence: Some(Box::new(match self.regressions {
                Some(path) => FileFailurePersistence::Direct(path),
                None => FileFailurePersistence::Off,
            })),
            // Cases never reject; a panic is a harness bug and should fail loudly.
            ..Config::default()
        };
        let mut runner = TestRunner::new(config);
        let (runs, first_failure) = (AtomicU64::new(0), AtomicU64::new(0));
        let started = Instant::now();
        let result = runner.run(&gen::case(self.workload), |case| {
            let n = runs.fetch_add(1, Ordering::Relaxed) + 1;
            let mut guard = rig.lock().expect("rig lock");
            let rig = guard.as_mut().expect("rig present during the search");
            let outcome = rt
                .block_on(rig.run(&case, self.strategy, self.mutation))
                .map_err(|e| TestCaseError::fail(format!("infrastructure: {e:#}")))?;
            let failing: Vec<_> = outcome
                .failures()
                .into_iter()
                .filter(|v| self.checks.is_none_or(|names| names.contains(&v.checker)))
                .collect();
            if failing.is_empty() {
                return Ok(());
            }
            let _ = first_failure.compare_exchange(0, n, Ordering::Relaxed, Ordering::Relaxed);
            Err(TestCaseError::fail(harness::case::describe(&failing)))
        });
        let elapsed = started.elapsed();
        if let Some(rig) = rig.lock().expect("rig lock").take() {
            rt.block_on(rig.stop());
        }
        let found = match result {
            Ok(()) => None,
            Err(TestError::Fail(reason, case)) => Some(Found { case, reason: reason.message().to_string() }),
            Err(TestError::Abort(reason)) => anyhow::bail!("the search aborted: {}", reason.message()),
        };
        let first = first_failure.load(Ordering::Relaxed);
        Ok(SearchReport {
            strategy: self.strategy,
            mutation: self.mutation,
            seed: self.seed,
            runs: runs.load(Ordering::Relaxed),
            first_failure_run: (first > 0).then_some(first),
            elapsed,
            found,
        })
    }
}

impl fmt::Display for SearchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.mutation {
            Some(m) => format!("{} with mutation {}", self.strategy, m.name()),
            None => self.strategy.to_string(),
        };
        write!(f, "search of {what}: {} runs in {:.1} s", self.runs, self.elapsed.as_secs_f64())?;
        if let Some(n) = self.first_failure_run {
            write!(f, ", first failure at run {n}")?;
        }
        writeln!(f)?;
        match &self.found {
            None => writeln!(f, "no counterexample")?,
            Some(found) => {
                writeln!(f, "counterexample, shrunk:\n{}", found.case)?;
                writeln!(f, "failed checks:\n{}", found.reason)?;
            }
        }
        match self.mutation {
            Some(m) => write!(f, "replay: PROPTEST_RNG_SEED={} HC_MUTATION={} (same test)", self.seed, m.name()),
            None => write!(f, "replay: PROPTEST_RNG_SEED={} (same test)", self.seed),
        }
    }
}
