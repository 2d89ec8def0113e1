//! `report.md` and `report.json` built from a recorded history (`fixtures/histories/`),
//! judged by the same checkers as a live run, with every timing redacted, so a change of
//! format or of a verdict shows up in review as a snapshot diff.

use std::collections::BTreeMap;

use harness::history::{Event, History};
use harness::report::{markdown, row, LatencyMs, Report, Summary, Timeline};
use harness::scenario::judge;
use scenarios::catalogue;

const FIXTURE: &str = include_str!("../../fixtures/histories/quick-seed3.jsonl");

/// Replaces every "<digits> us" (event times inside evidence) with "<t> us".
fn redact_times(s: &str) -> String {
    let mut out = String::new();
    let mut digits = String::new();
    for (i, c) in s.char_indices() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        if !digits.is_empty() {
            out.push_str(if s[i..].starts_with(" us") { "<t>" } else { &digits });
            digits.clear();
        }
        out.push(c);
    }
    out.push_str(&digits);
    out
}

fn report() -> Report {
    let mut runs: Vec<((String, String), Vec<Event>)> = Vec::new();
    let mut index: BTreeMap<(String, String), usize> = BTreeMap::new();
    for line in FIXTURE.lines().filter(|l| !l.trim().is_empty()) {
        let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
        let key = (v["scenario"].as_str().unwrap().to_string(), v["strategy"].as_str().unwrap().to_string());
        let obj = v.as_object_mut().unwrap();
        obj.remove("scenario");
        obj.remove("strategy");
        let event: Event = serde_json::from_value(v).unwrap();
        let i = *index.entry(key.clone()).or_insert_with(|| {
            runs.push((key, Vec::new()));
            runs.len() - 1
        });
        runs[i].1.push(event);
    }
    let scenarios: Vec<_> = runs
        .into_iter()
        .map(|((scenario, strategy), events)| {
            let sc = catalogue().into_iter().find(|s| s.name == scenario).expect("fixture scenario is catalogued");
            let mut r = row(&judge(&sc, &strategy, History { events }, None));
            r.latency_ms = LatencyMs::default();
            r.recovery_ms = None;
            r.redis_commands_per_message = 0.0;
            r.timeline = Timeline::default();
            r.findings = r.findings.iter().map(|f| redact_times(f)).collect();
            r
        })
        .collect();
    Report {
        run_id: "fixture-quick-seed3".into(),
        seed: 3,
        started_at: "[redacted]".into(),
        redis_version: "[redacted]".into(),
        toxiproxy: "embedded".into(),
        summary: Summary::of(&scenarios),
        scenarios,
    }
}

#[test]
fn report_md() {
    insta::assert_snapshot!(markdown(&report()));
}

#[test]
fn report_json() {
    insta::assert_json_snapshot!(report());
}

#[test]
fn the_fixture_still_catches_the_canaries() {
    let r = report();
    assert!(r.scenarios.iter().all(|x| x.verdict == x.expected_verdict), "{:#?}", r.scenarios);
    assert!(r.scenarios.iter().any(|x| x.strategy == "pubsub-only" && x.lost > 0));
}

#[test]
fn redaction_only_touches_microsecond_times() {
    assert_eq!(redact_times("id-12: acked at 846079 us, 3 waiters"), "id-12: acked at <t> us, 3 waiters");
}
