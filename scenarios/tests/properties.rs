//! The property: under any generated workload and fault schedule, the hybrid loses no
//! acknowledged response, duplicates and reorders no chunk, lets every resuming worker find
//! every response, meets the wake-latency bound outside disruptive faults, and leaves
//! subscriptions, waiters, connections and TTL-less keys back at baseline.
//!
//! Budget: `PROPTEST_CASES` (default 16 here; `./ci/test` sets its own, the nightly job
//! 1,000). Seeds of failing cases are kept in `regressions/hybrid.txt` (commit them) and
//! replayed before new cases. `HC_MUTATION=never-unsubscribe|no-ttl|publish-before-store`
//! runs the same property against a deliberately broken hybrid, which must fail.

use harness::reference::Mutation;
use scenarios::gen::Workload;
use scenarios::Search;

/// Cases when `PROPTEST_CASES` is not set.
const CASES_DEFAULT: u32 = 16;

#[test]
fn hybrid_survives_generated_fault_schedules() {
    let mut search = Search::new("hybrid", Workload::Free, CASES_DEFAULT);
    match std::env::var("HC_MUTATION") {
        Ok(name) => {
            let valid: Vec<&str> = Mutation::ALL.iter().map(|m| m.name()).collect();
            let m = Mutation::parse(&name)
                .unwrap_or_else(|| panic!("HC_MUTATION={name:?} is not a mutation; valid: {}", valid.join(", ")));
            // A mutant's failures are not regressions of the design: nothing is persisted.
            search.mutation = Some(m);
        }
        Err(_) => search.regressions = Some(concat!(env!("CARGO_MANIFEST_DIR"), "/regressions/hybrid.txt")),
    }
    let report = search.run().expect("the search could not run");
    eprintln!("{report}");
    assert!(report.found.is_none(), "the hybrid broke an invariant:\n{report}");
}
