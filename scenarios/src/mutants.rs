//! The mutation kill matrix: every catalogued [`Mutation`] of the reference is run through the
//! scenario suite (hybrid only), and through a small property search when the suite misses
//! it. A mutant is *killed* when some check finds it invalid; one that survives means the
//! harness would let that bug be merged (`hybrid-chaos mutants` exits 1).
//!
//! Running is [`crate::kill_matrix`]'s; this module turns outcomes into the matrix and renders `mutants.md` / `mutants.json`, as
//! pure functions.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use harness::checker::Validity;
use harness::reference::Mutation;
use harness::scenario::Outcome;
use serde::Serialize;

/// Property-search cases per surviving mutant (the bar: killed by the quick suite or
/// by a 40-case search).
pub const PROPERTY_CASES: u32 = 40;

/// One check that found a mutant invalid, with its first evidence line.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Kill {
    /// `suite` or `property`.
    pub by: &'static str,
    /// The scenario (suite) or `generated case` (property).
    pub scenario: String,
    pub check: String,
    pub evidence: String,
}

/// A mutant and what killed it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Row {
    pub mutant: String,
    pub about: String,
    pub killed: bool,
    pub kills: Vec<Kill>,
    /// Scenario runs that ended on an infrastructure error, with the error.
    pub errors: Vec<String>,
}

/// The kills in a mutant's suite outcomes: every invalid check of every scenario in which
/// the reference is expected to be valid (where a configuration is expected to lose, such as
/// persistence none, a loss says nothing about the mutant).
pub fn suite_kills(outcomes: &[Outcome]) -> Vec<Kill> {
    let mut kills = Vec::new();
    for o in outcomes.iter().filter(|o| o.expected_verdict == Validity::Valid) {
        for c in o.checks.iter().filter(|c| c.validity == Validity::Invalid) {
            kills.push(Kill {
                by: "suite",
                scenario: o.scenario.clone(),
                check: c.checker.to_string(),
                evidence: c.evidence.first().cloned().unwrap_or_default(),
            });
        }
    }
    kills
}

/// The kills in a property search's failure text (`check: evidence` lines).
pub fn property_kills(reason: &str) -> Vec<Kill> {
    reason
        .lines()
        .filter_map(|l| l.split_once(": "))
        .map(|(check, evidence)| Kill {
            by: "property",
            scenario: "generated case".into(),
            check: check.to_string(),
            evidence: evidence.to_string(),
        })
        .collect()
}

pub fn row(m: Mutation, kills: Vec<Kill>, errors: Vec<String>) -> Row {
    Row { mutant: m.name().into(), about: m.about().into(), killed: !kills.is_empty(), kills, errors }
}

/// The checks that appear in any kill, in a stable order (columns of the matrix).
fn columns(rows: &[Row]) -> Vec<String> {
    let set: BTreeSet<&str> = rows.iter().flat_map(|r| r.kills.iter().map(|k| k.check.as_str())).collect();
    set.into_iter().map(str::to_string).collect()
}

/// `mutants.json`: a summary, then one entry per mutant.
pub fn json(rows: &[Row], seed: u64, quick: bool) -> serde_json::Value {
    let survivors: Vec<&str> = rows.iter().filter(|r| !r.killed).map(|r| r.mutant.as_str()).collect();
    serde_json::json!({
        "summary": {
            "mutants": rows.len(),
            "killed": rows.len() - survivors.len(),
            "survivors": survivors,
            "seed": seed,
            "quick": quick,
        },
        "mutants": rows,
    })
}

/// `mutants.md`: the verdict first, then mutant x check with the number of scenarios that
/// killed it there, then the first evidence line of each mutant.
pub fn markdown(rows: &[Row], seed: u64, quick: bool) -> String {
    let mut out = String::new();
    let killed = rows.iter().filter(|r| r.killed).count();
    let _ = writeln!(out, "# Mutation kill matrix\n");
    let _ = writeln!(
        out,
        "**{killed} of {} mutants killed**{}. Seed {seed}, {} budget. A cell counts the scenarios (or `P`: the property search) in which that check found the mutant invalid.\n",
        rows.len(),
        if killed == rows.len() { "" } else { " — SURVIVORS below: the harness would let these bugs through" },
        if quick { "quick" } else { "default" }
    );
    let cols = columns(rows);
    let _ = writeln!(out, "| mutant | killed | {} |", cols.join(" | "));
    let _ = writeln!(out, "|---|---|{}", "---|".repeat(cols.len()));
    for r in rows {
        let cells: Vec<String> = cols
            .iter()
            .map(|c| {
                let suite = r.kills.iter().filter(|k| &k.check == c && k.by == "suite").count();
                let prop = r.kills.iter().any(|k| &k.check == c && k.by == "property");
                match (suite, prop) {
                    (0, false) => String::new(),
                    (n, false) => n.to_string(),
                    (0, true) => "P".into(),
                    (n, true) => format!("{n}+P"),
                }
            })
            .collect();
        let _ = writeln!(out, "| {} | {} | {} |", r.mutant, if r.killed { "yes" } else { "**NO**" }, cells.join(" | "));
    }
    let _ = writeln!(out, "\n## First evidence\n");
    for r in rows {
        match r.kills.first() {
            Some(k) => {
                let _ = writeln!(
                    out,
                    "- **{}** ({}): {} / {}: {}",
                    r.mutant,
                    r.about,
                    k.scenario,
                    k.check,
                    k.evidence.replace('|', "\\|")
                );
            }
            None => {
                let _ = writeln!(out, "- **{}** ({}): SURVIVED", r.mutant, r.about);
            }
        }
        for e in &r.errors {
            let _ = writeln!(out, "  - infrastructure error: {e}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kill(check: &str, by: &'static str) -> Kill {
        Kill { by, scenario: "clean".into(), check: check.into(), evidence: "r0: rescued | polled".into() }
    }

    #[test]
    fn the_matrix_names_survivors_and_the_checks_that_killed() {
        let rows = vec![
            row(Mutation::PublishBeforeStore, vec![kill("rescues", "suite"), kill("rescues", "property")], vec![]),
            row(Mutation::SlowPoll, vec![], vec!["boom".into()]),
        ];
        let md = markdown(&rows, 7, true);
        assert!(md.contains("**1 of 2 mutants killed** — SURVIVORS"), "{md}");
        assert!(md.contains("| publish-before-store | yes | 1+P |"), "{md}");
        assert!(md.contains("| slow-poll | **NO** |  |"), "{md}");
        assert!(md.contains("slow-poll** (the poll interval is 20x too long): SURVIVED"), "{md}");
        assert!(md.contains("rescued \\| polled"), "a pipe in evidence must not break the table: {md}");
        let j = json(&rows, 7, true);
        assert_eq!(j["summary"]["survivors"], serde_json::json!(["slow-poll"]));
        assert_eq!(j["summary"]["killed"], 1);
    }

    fn outcome(scenario: &str, expected: Validity, check: &'static str, validity: Validity) -> Outcome {
        let v = harness::checker::Verdict {
            checker: check,
            validity,
            evidence: vec!["evidence".into()],
            stats: serde_json::Value::Null,
        };
        Outcome {
            scenario: scenario.into(),
            strategy: "hybrid".into(),
            verdict: validity,
            expected_verdict: expected,
            expectation: String::new(),
            checks: vec![v],
            bounds: None,
            mutation: Some(Mutation::SlowPoll),
            history: Default::default(),
        }
    }

    #[test]
    fn only_scenarios_the_reference_passes_can_kill() {
        let outcomes = vec![
            // Persistence none loses for the reference too: says nothing about the mutant.
            outcome("crash-restart-no-persistence", Validity::Invalid, "lost", Validity::Invalid),
            outcome("clean", Validity::Valid, "cleanup", Validity::Valid),
        ];
        assert!(suite_kills(&outcomes).is_empty());
        let outcomes = vec![outcome("subscriber-blackhole", Validity::Valid, "fallback", Validity::Invalid)];
        let kills = suite_kills(&outcomes);
        assert_eq!((kills[0].scenario.as_str(), kills[0].check.as_str()), ("subscriber-blackhole", "fallback"));
    }

    #[test]
    fn property_failures_become_kills_per_check() {
        let k = property_kills("latency: r0: obtained 154.4 ms after the respond (bound 150 ms)\ncleanup: 1 keys");
        assert_eq!(k.len(), 2);
        assert_eq!((k[0].check.as_str(), k[0].by), ("latency", "property"));
        assert!(k[0].evidence.starts_with("r0: obtained"));
    }
}
