//! `hybrid-chaos case`: one stored case of the property search (its JSON, as a search prints
//! it) replayed on one rig, as often as asked, for a strategy and optionally a mutant: how a
//! counterexample is read again, and how flaky it is.

use std::process::ExitCode;

use harness::strategy::{BuiltIn, Strategy};

/// `hybrid-chaos case`: one stored case, run `runs` times on one rig.
pub async fn replay_case(
    file: &std::path::Path,
    strategy: &str,
    mutant: Option<&str>,
    runs: u32,
    seed: u64,
) -> anyhow::Result<ExitCode> {
    let text = if file == std::path::Path::new("-") {
        std::io::read_to_string(std::io::stdin()).map_err(|e| anyhow::anyhow!("cannot read standard input: {e}"))?
    } else {
        std::fs::read_to_string(file).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?
    };
    let case: harness::case::Case =
        serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: not a case: {e}", file.display()))?;
    let mutation = match mutant {
        None => None,
        Some(name) => Some(harness::reference::Mutation::parse(name).ok_or_else(|| {
            let valid: Vec<&str> = harness::reference::Mutation::ALL.iter().map(|m| m.name()).collect();
            anyhow::anyhow!("unknown mutant {name:?}; valid: {}", valid.join(", "))
        })?),
    };
    let strategy = match BuiltIn::parse(strategy) {
        Some(b) if BuiltIn::SUITE.contains(&b) => Strategy::from(b),
        _ => anyhow::bail!("unknown strategy {strategy:?}; valid: {}", BuiltIn::names(&BuiltIn::SUITE)),
    };
    crate::suite::preflight()?;
    println!("{case}");
    let mut rig = harness::case::CaseRig::start(seed).await?;
    let mut invalid = 0;
    let mut result = Ok(());
    for n in 1..=runs {
        match rig.run(&case, &strategy, mutation).await {
            Ok(out) => {
                let failing = out.failures();
                if failing.is_empty() {
                    println!("run {n}: valid");
                } else {
                    invalid += 1;
                    println!("run {n}: INVALID\n{}", harness::case::describe(&failing));
                }
            }
            Err(e) => {
                result = Err(e.context(format!("run {n} of the case")));
                break;
            }
        }
    }
    rig.stop().await;
    result?;
    println!("{invalid} of {runs} runs invalid");
    Ok(if invalid == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
