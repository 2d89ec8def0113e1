//! The kill-matrix driver (`hybrid-chaos mutants`): every chosen [`Mutation`] of the
//! reference through the hybrid's scenarios, then, for a mutant the suite missed, a property
//! search whose counterexample counts only if the reference passes it. The matrix itself
//! (kills, `mutants.md`, `mutants.json`) is [`crate::mutants`]'s, as pure functions.

use std::path::PathBuf;
use std::process::ExitCode;

use harness::reference::Mutation;
use harness::scenario::Budget;
use harness::strategy::{BuiltIn, Strategy};

/// `hybrid-chaos mutants`: each mutation through the hybrid's scenarios, then, for the ones
/// the suite missed, a property search; the kill matrix next to the reports.
pub async fn run_mutants(
    names: Vec<String>,
    quick: bool,
    seed: Option<u64>,
    out: PathBuf,
    jobs: usize,
    property: bool,
) -> anyhow::Result<ExitCode> {
    let mut chosen = Vec::new();
    for n in &names {
        let valid: Vec<&str> = Mutation::ALL.iter().map(|m| m.name()).collect();
        chosen.push(
            Mutation::parse(n).ok_or_else(|| anyhow::anyhow!("unknown mutant {n:?}; valid: {}", valid.join(", ")))?,
        );
    }
    if chosen.is_empty() {
        chosen = Mutation::ALL.to_vec();
    }
    crate::suite::preflight()?;
    let seed = seed.unwrap_or_else(rand::random);
    let mut run_dir = crate::run_dir::RunDir::create(&out, "mutants-", seed)?;
    let dir = run_dir.path.clone();
    let catalogue = crate::catalogue();
    let mut rows = Vec::new();
    let hybrid = Strategy::from(BuiltIn::Hybrid);
    for m in chosen {
        let budget = Budget::new(quick).with_mutation(Some(m));
        // Only where the reference is expected valid: a configuration that loses (persistence
        // none) says nothing about a mutant.
        let pairs: Vec<_> = catalogue
            .iter()
            .filter(|sc| sc.applies(&hybrid) && sc.expected.of(BuiltIn::Hybrid).0 == harness::checker::Validity::Valid)
            .map(|sc| (sc, hybrid.clone()))
            .collect();
        let label = format!("{} :: ", m.name());
        let results = crate::suite::run_pairs(pairs, seed, budget, quick, jobs, &label).await;
        let mut errors = Vec::new();
        let outcomes: Vec<_> =
            results.into_iter().filter_map(|r| r.map_err(|e| errors.push(format!("{e:#}"))).ok()).collect();
        let mut kills = crate::mutants::suite_kills(&outcomes);
        if kills.is_empty() && property {
            eprintln!(
                "{}: not killed by the suite; property search, {} cases",
                m.name(),
                crate::mutants::PROPERTY_CASES
            );
            let mut search =
                crate::Search::new(BuiltIn::Hybrid, crate::gen::Workload::Free, crate::mutants::PROPERTY_CASES);
            search.cases = crate::mutants::PROPERTY_CASES;
            search.seed = seed >> 1;
            search.mutation = Some(m);
            search.shrink_runs_max = 0;
            let report = tokio::task::spawn_blocking(move || search.run()).await??;
            if let Some(found) = &report.found {
                // A kill only if the reference passes the same case: a case that fails for
                // both (load, a flaw of the design itself) says nothing about the mutant.
                let mut rig = harness::case::CaseRig::start(seed).await?;
                let reference = rig.run(&found.case, &hybrid, None).await;
                rig.stop().await;
                match reference {
                    Ok(r) if r.failures().is_empty() => kills = crate::mutants::property_kills(&found.reason),
                    Ok(r) => errors.push(format!(
                        "the property search's counterexample fails for the reference too, so it is not a kill: {}",
                        harness::case::describe(&r.failures())
                    )),
                    Err(e) => errors.push(format!("re-running the counterexample on the reference: {e:#}")),
                }
            }
        }
        eprintln!(
            "{}: {}",
            m.name(),
            match kills.first() {
                Some(k) => format!("killed ({} / {}: {})", k.scenario, k.check, k.evidence),
                None => "SURVIVED".into(),
            }
        );
        rows.push(crate::mutants::row(m, kills, errors));
    }
    run_dir.keep();
    crate::suite::write_file(&dir.join("mutants.md"), &crate::mutants::markdown(&rows, seed, quick))?;
    crate::suite::write_file(
        &dir.join("mutants.json"),
        &(serde_json::to_string_pretty(&crate::mutants::json(&rows, seed, quick))? + "\n"),
    )?;
    print!("{}", crate::mutants::markdown(&rows, seed, quick));
    eprintln!("kill matrix: {}", dir.join("mutants.md").display());
    Ok(if rows.iter().all(|r| r.killed) { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
