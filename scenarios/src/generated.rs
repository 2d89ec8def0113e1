//! The independent measure: what cargo-mutants made of the reference (`./ci/mutants
//! --generated`). The catalogue in [`crate::mutants`] holds bugs the project chose; these are
//! bugs it did not choose (a body replaced by a default, an operator swapped, a match arm
//! deleted, ...), so the share caught says how far a green run can be trusted for an
//! uncatalogued bug.
//!
//! Pure: [`summarise`] reads cargo-mutants' `outcomes.json` and judges every miss against
//! [`KNOWN_GAPS`], the reviewed list of misses left as they are, each with its reason. A miss
//! not listed there is *unexplained*, and fails the run: kill it with a check, or list it with
//! why. Mutants shown equivalent to the original are excluded before the run instead, in
//! `.cargo/mutants.toml` (`exclude_re`, each with its reason).

use std::fmt::Write as _;

use serde::Serialize;

/// A miss left as it is, with the reason. `mutant` is the mutant's name without its
/// `:line:column` (see [`key`]), so an edit elsewhere in the file does not unlist it.
#[derive(Clone, Copy, Debug)]
pub struct Gap {
    pub mutant: &'static str,
    pub why: &'static str,
}

/// Misses of the reference left as they are, each with its reason.
pub const KNOWN_GAPS: &[Gap] = &[
    Gap {
        mutant: "harness/src/reference/baselines.rs: replace <impl StreamStrategy for PubSubOnlyStream>::stats -> ImplStats with Default::default()",
        why: "the pub/sub-only stream baseline's own counters: every scenario that exercises them expects the baseline invalid already (it loses chunks), and cleanup is read from the server, not from these",
    },
    Gap {
        mutant: "harness/src/reference/fanout.rs: replace - with + in enqueue",
        why: "the queue-depth gauge exported for operators (metrics), which no check reads; the queue's behaviour itself is judged by the fanout check",
    },
    Gap {
        mutant: "harness/src/reference/feedback.rs: replace <impl FeedbackStrategy for Hybrid>::name -> &'static str with \"\"",
        why: "nothing in a run reads a strategy's name() (reports are labelled by the strategy asked for): dead API, to go with the strategy seam (issue 19)",
    },
];

/// What cargo-mutants found for one mutant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// A test failed: the harness noticed.
    Caught,
    /// Every test passed: the harness let the bug through.
    Missed,
    /// The tests ran past the timeout (the bug hung a scenario): noticed, but by a clock.
    Timeout,
    /// The mutant did not build: says nothing about the tests.
    Unviable,
}

/// One mutant.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Mutant {
    /// cargo-mutants' name, with its line and column (`file:line:col: what`).
    pub name: String,
    pub outcome: Outcome,
    /// For a miss: the reason from [`KNOWN_GAPS`], or `None` when it is unexplained.
    pub gap: Option<&'static str>,
}

/// The run's figures.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Summary {
    pub cargo_mutants_version: String,
    /// Mutants tested in this run (one shard of them, when sharded).
    pub tested: usize,
    pub caught: usize,
    pub missed: usize,
    pub timeout: usize,
    pub unviable: usize,
    /// Caught (timeouts not included) over the viable ones, in percent; `None` when none
    /// was viable.
    pub caught_pct: Option<f64>,
    pub mutants: Vec<Mutant>,
}

impl Summary {
    /// The misses no gap explains: each is a finding.
    pub fn unexplained(&self) -> impl Iterator<Item = &Mutant> {
        self.mutants.iter().filter(|m| m.outcome == Outcome::Missed && m.gap.is_none())
    }
}

/// A mutant's name without its position: `harness/src/reference/hub.rs:120:9: replace x with
/// y` becomes `harness/src/reference/hub.rs: replace x with y`.
pub fn key(name: &str) -> String {
    let mut parts = name.splitn(4, ':');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(file), Some(line), Some(col), Some(rest))
            if line.chars().all(|c| c.is_ascii_digit()) && col.chars().all(|c| c.is_ascii_digit()) =>
        {
            format!("{file}:{rest}")
        }
        _ => name.to_string(),
    }
}

/// Reads cargo-mutants' `outcomes.json` (its baseline entry, if any, is not a mutant) and
/// judges the misses against `gaps`.
pub fn summarise(outcomes_json: &str, gaps: &[Gap]) -> anyhow::Result<Summary> {
    let v: serde_json::Value =
        serde_json::from_str(outcomes_json).map_err(|e| anyhow::anyhow!("outcomes.json is not JSON: {e}"))?;
    let list = v["outcomes"].as_array().ok_or_else(|| anyhow::anyhow!("outcomes.json has no `outcomes` list"))?;
    let mut mutants = Vec::new();
    for o in list {
        let Some(m) = o["scenario"].get("Mutant") else { continue };
        let name = m["name"].as_str().ok_or_else(|| anyhow::anyhow!("a mutant without a name in outcomes.json"))?;
        let outcome = match o["summary"].as_str() {
            Some("CaughtMutant") => Outcome::Caught,
            Some("MissedMutant") => Outcome::Missed,
            Some("Timeout") => Outcome::Timeout,
            Some("Unviable") => Outcome::Unviable,
            other => anyhow::bail!("mutant {name}: outcome {other:?} is not one cargo-mutants gives a mutant"),
        };
        let k = key(name);
        let gap = (outcome == Outcome::Missed).then(|| gaps.iter().find(|g| g.mutant == k).map(|g| g.why)).flatten();
        mutants.push(Mutant { name: name.to_string(), outcome, gap });
    }
    let count = |o: Outcome| mutants.iter().filter(|m| m.outcome == o).count();
    let (caught, missed, timeout, unviable) =
        (count(Outcome::Caught), count(Outcome::Missed), count(Outcome::Timeout), count(Outcome::Unviable));
    let viable = caught + missed + timeout;
    Ok(Summary {
        cargo_mutants_version: v["cargo_mutants_version"].as_str().unwrap_or("unknown").to_string(),
        tested: mutants.len(),
        caught,
        missed,
        timeout,
        unviable,
        caught_pct: (viable > 0).then(|| 100.0 * caught as f64 / viable as f64),
        mutants,
    })
}

/// `generated.md`: the figures, then every miss with its disposition, then the timeouts.
pub fn markdown(s: &Summary) -> String {
    let mut out = String::from("# Generated mutants (cargo-mutants over harness/src/reference/)\n\n");
    let pct = s.caught_pct.map_or("-".to_string(), |p| format!("{p:.1} %"));
    let _ = writeln!(
        out,
        "cargo-mutants {}: {} tested, **{} caught**, {} missed, {} timeout, {} unviable; caught of viable: **{pct}**.\n",
        s.cargo_mutants_version, s.tested, s.caught, s.missed, s.timeout, s.unviable
    );
    let misses: Vec<_> = s.mutants.iter().filter(|m| m.outcome == Outcome::Missed).collect();
    if misses.is_empty() {
        out.push_str("No mutant was missed.\n");
    } else {
        out.push_str("## Missed\n\n| mutant | disposition |\n|---|---|\n");
        for m in misses {
            let why = m.gap.map_or("**unexplained**: kill it with a check, or list it as a gap with why".into(), |w| {
                format!("known gap: {w}")
            });
            let _ = writeln!(out, "| `{}` | {why} |", m.name.replace('|', "\\|"));
        }
    }
    let timeouts: Vec<_> = s.mutants.iter().filter(|m| m.outcome == Outcome::Timeout).collect();
    if !timeouts.is_empty() {
        out.push_str("\n## Timed out (a scenario hung: noticed by the clock, not by a check)\n\n");
        for m in timeouts {
            let _ = writeln!(out, "- `{}`", m.name);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(name: &str, summary: &str) -> serde_json::Value {
        serde_json::json!({ "scenario": { "Mutant": { "name": name, "file": "f.rs" } }, "summary": summary })
    }

    fn outcomes(list: Vec<serde_json::Value>) -> String {
        let mut all = vec![serde_json::json!({ "scenario": "Baseline", "summary": "Success" })];
        all.extend(list);
        serde_json::json!({ "outcomes": all, "cargo_mutants_version": "27.1.0" }).to_string()
    }

    #[test]
    fn the_position_is_not_part_of_the_key() {
        assert_eq!(
            key("harness/src/reference/hub.rs:120:9: replace a with b"),
            "harness/src/reference/hub.rs: replace a with b"
        );
        assert_eq!(key("no position here"), "no position here");
    }

    #[test]
    fn counts_and_share_leave_out_the_baseline_and_the_unviable() {
        let json = outcomes(vec![
            outcome("a.rs:1:1: one", "CaughtMutant"),
            outcome("a.rs:2:1: two", "CaughtMutant"),
            outcome("a.rs:3:1: three", "CaughtMutant"),
            outcome("a.rs:4:1: four", "Timeout"),
            outcome("a.rs:5:1: five", "Unviable"),
        ]);
        let s = summarise(&json, &[]).unwrap();
        assert_eq!((s.tested, s.caught, s.missed, s.timeout, s.unviable), (5, 3, 0, 1, 1));
        assert_eq!(s.caught_pct, Some(75.0));
        assert_eq!(s.unexplained().count(), 0);
    }

    #[test]
    fn a_miss_is_unexplained_unless_a_gap_names_it_wherever_it_moved() {
        let json = outcomes(vec![
            outcome("a.rs:10:5: listed", "MissedMutant"),
            outcome("a.rs:11:5: not listed", "MissedMutant"),
        ]);
        let gaps = [Gap { mutant: "a.rs: listed", why: "a log line only" }];
        let s = summarise(&json, &gaps).unwrap();
        let unexplained: Vec<_> = s.unexplained().map(|m| m.name.as_str()).collect();
        assert_eq!(unexplained, ["a.rs:11:5: not listed"]);
        assert_eq!(s.caught_pct, Some(0.0));
        let md = markdown(&s);
        assert!(md.contains("known gap: a log line only"), "{md}");
        assert!(md.contains("| `a.rs:11:5: not listed` | **unexplained**"), "{md}");
    }

    #[test]
    fn a_file_that_is_not_cargo_mutants_output_is_an_error() {
        assert!(summarise("not json", &[]).is_err());
        assert!(summarise("{}", &[]).is_err());
        let odd = outcomes(vec![outcome("a.rs:1:1: x", "Failure")]);
        assert!(summarise(&odd, &[]).unwrap_err().to_string().contains("Failure"));
    }
}
