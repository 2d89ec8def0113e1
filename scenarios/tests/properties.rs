//! The property: under any generated workload and fault schedule, the hybrid passes every
//! check a scenario would judge it by: it loses no acknowledged response, duplicates and
//! reorders no chunk, lets every resuming worker find every response, meets the wake,
//! fallback, recovery, detection, timeout and delivery bounds its configuration implies,
//! rescues nothing by polling away from faults, and leaves subscriptions, waiters,
//! connections and TTL-less keys back at baseline.
//!
//! Budget: `PROPTEST_CASES` (default 16 here; `./ci/test` sets its own, the nightly job
//! 5,000), over `HC_SEARCH_LANES` lanes side by side. Seeds of failing cases are kept in `regressions/hybrid.txt` (commit them) and
//! replayed before new cases. `HC_MUTATION=never-unsubscribe|no-ttl|publish-before-store`
//! runs the same property (with at least 256 cases) against a deliberately broken hybrid,
//! which must fail.

use harness::reference::Mutation;
use scenarios::gen::Workload;
use scenarios::Search;

/// Cases when `PROPTEST_CASES` is not set.
const CASES_DEFAULT: u32 = 16;

#[test]
fn hybrid_survives_generated_fault_schedules() {
    let mut search = Search::new(harness::strategy::BuiltIn::Hybrid, Workload::Free, CASES_DEFAULT);
    match std::env::var("HC_MUTATION") {
        Ok(name) => {
            let valid: Vec<&str> = Mutation::ALL.iter().map(|m| m.name()).collect();
            let m = Mutation::parse(&name)
                .unwrap_or_else(|| panic!("HC_MUTATION={name:?} is not a mutation; valid: {}", valid.join(", ")));
            // A mutant's failures are not regressions of the design: nothing is persisted.
            // The budget is at least proptest's default: a mutant must be found, and the
            // search stops at the first failure anyway.
            search.mutation = Some(m);
            search.cases = search.cases.max(scenarios::search::DEFAULT_CASES);
        }
        Err(_) => search.regressions = Some(concat!(env!("CARGO_MANIFEST_DIR"), "/regressions/hybrid.txt")),
    }
    let report = search.run().expect("the search could not run");
    eprintln!("{report}");
    assert!(report.found.is_none(), "the hybrid broke an invariant:\n{report}");
}

/// The regression file round trip, with a mutant that fails on its first case: the failing
/// seed is written, and a search with no new cases at all replays it and fails again.
#[test]
fn failing_seeds_are_persisted_and_replayed_first() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path: &'static str = Box::leak(dir.path().join("hybrid.txt").to_string_lossy().into_owned().into_boxed_str());
    let mut search = Search::new(harness::strategy::BuiltIn::Hybrid, Workload::Free, 4);
    search.mutation = Some(Mutation::NoTtl);
    search.regressions = Some(path);
    search.shrink_runs_max = 0;
    // One lane: with more, every lane's failure is persisted and the replay's first may be
    // another lane's (lanes share the file; only lane 0 replays it).
    search.lanes = 1;
    let first = search.run().expect("the search could not run");
    assert!(first.found.is_some(), "the no-ttl mutant passed:\n{first}");
    let persisted = std::fs::read_to_string(path).expect("the failing seed was not persisted");
    assert!(persisted.lines().any(|l| l.starts_with("cc ")), "no seed line in:\n{persisted}");

    // A different seed and no new cases: only the persisted seed can run, and it fails.
    search.cases = 0;
    search.seed ^= 0x5eed;
    let replay = search.run().expect("the replay could not run");
    assert_eq!(replay.first_failure_run, Some(1), "the persisted seed did not replay first:\n{replay}");
    assert_eq!(replay.found.as_ref().map(|f| &f.case), first.found.as_ref().map(|f| &f.case), "{replay}");
}
