//! The suite: the scenario catalogue ([`catalogue`]), the `hybrid-chaos` command line
//! (`src/bin/hybrid-chaos/`: argument parsing and dispatch only; the work is in
//! [`suite`], [`kill_matrix`] and [`replay`]), the mutation kill matrix ([`mutants`]) and cargo-mutants' measure of
//! it ([`generated`]), and property tests over fault
//! schedules: proptest generates a workload and a schedule of
//! faults from the nemesis catalogue ([`gen`]), each case runs on a real `redis-server`
//! behind the fault proxy ([`harness::case`]), and a failing case shrinks to the smallest
//! schedule that still breaks an invariant ([`search`]).
//!
//! Regressions (the seeds of failing cases) are committed under `regressions/` and replayed
//! before any new case. The budget is `PROPTEST_CASES`: small in `./ci/test`, large at
//! night. One seed (`PROPTEST_RNG_SEED`) reproduces a search.

pub mod catalogue;
pub mod gen;
pub mod generated;
pub mod kill_matrix;
pub mod mutants;
pub mod replay;
pub mod run_dir;
pub mod search;
pub mod suite;

pub use catalogue::catalogue;

pub use search::{Found, Search, SearchReport};
