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

/// The fixture's strategies are built-ins.
fn strategy_of(name: &str) -> harness::strategy::Strategy {
    harness::strategy::BuiltIn::parse(name).expect("a built-in strategy in the fixture").into()
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
            let mut r = row(&judge(&sc, &strategy_of(&strategy), History { events }, None));
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
        quick: true,
        provider: "process".into(),
        topology: "standalone".into(),
        summary: Summary::of(&scenarios),
        // Fixed figures: the probe's numbers are the machine's, the rendering is what is pinned.
        proxy_overhead: Some(harness::overhead::ProxyOverhead {
            samples: 4_000,
            direct_ms: harness::overhead::Quantiles { p50: 0.08, p99: 0.2 },
            proxied_ms: harness::overhead::Quantiles { p50: 0.11, p99: 0.26 },
            added_ms: harness::overhead::Quantiles { p50: 0.03, p99: 0.06 },
        }),
        scenarios,
        implementations: BTreeMap::new(),
        failover: vec![],
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

/// `report.html` leads with the verdict, says in words what its colours say, shows "no data"
/// as such, puts every chart on a labelled axis, and gives each finding its reproduce command.
#[test]
fn the_html_report_leads_with_the_verdict() {
    let mut r = report();
    let page = harness::report::html(&r);
    let banner = page.find("class=\"banner ok\">Every verdict as expected").expect("a verdict banner");
    assert!(banner < page.find("<h2>Verdicts</h2>").unwrap(), "the banner comes first");
    assert!(page.contains("invalid, as expected, "), "canaries are named as expected in the matrix");
    assert!(page.contains("<h2>Glossary</h2>") && page.contains("<code>rescued</code>"));
    assert_eq!(page.matches("<svg").count(), 3, "loss, p50 and p99 charts");
    for unit in ["lost, count", "p50, ms (log scale)", "p99, ms (log scale)"] {
        assert!(page.contains(unit), "an axis lacks its unit: {unit}");
    }
    // Nothing obtained is no data, not a 0 ms bar.
    let empty = r.scenarios.iter().position(|x| x.delivered == 0).expect("the fixture has a row that obtained nothing");
    assert!(page.contains("no data"), "a row with nothing obtained must say no data");
    assert!(r.scenarios[empty].findings.iter().any(|f| f.starts_with("lost")));
    assert!(page.contains("reproduce: <code>hybrid-chaos run --scenario"), "findings come with their command");
    // A mismatch says MISMATCH in the banner and in its matrix cell, not by colour alone.
    r.scenarios[0].verdict = harness::checker::Validity::Invalid;
    r.summary = Summary::of(&r.scenarios);
    let page = harness::report::html(&r);
    assert!(page.contains("class=\"banner mismatch\">1 MISMATCH(ES)"), "{}", &page[..600]);
    assert!(page.contains("<td class=\"mismatch\">MISMATCH: invalid (expected valid)"));
}

/// A sentinel run's report: the loss table in the markdown, a lost acknowledged response
/// standing out in the HTML, and no latency charts of empty bars.
#[test]
fn a_sentinel_report_carries_the_loss_table() {
    use harness::failover::{FailoverFault, FailoverRun, Loss, Target};
    let run = |scenario, replication, acknowledged, lost| FailoverRun {
        scenario,
        fault: FailoverFault::Partition,
        target: Target::Primary,
        replication,
        loss: Loss {
            acknowledged,
            lost,
            lost_from_ms: (lost > 0).then_some(176),
            lost_to_ms: (lost > 0).then_some(16_223),
            lost_sample: vec![],
        },
        acknowledged_after_heal: 100,
        unacknowledged: 6,
        refused: 36,
        failure_reasons: vec!["stored_unreplicated".into()],
        failover_ms: Some(3_011),
        converged: true,
        converged_after_heal_ms: Some(15_614),
    };
    let r = Report {
        run_id: "fixture-sentinel".into(),
        seed: 0,
        started_at: "[redacted]".into(),
        redis_version: "[redacted]".into(),
        toxiproxy: "none".into(),
        quick: false,
        provider: "container".into(),
        topology: "sentinel".into(),
        summary: Summary::of(&[]),
        proxy_overhead: None,
        scenarios: vec![],
        implementations: BTreeMap::new(),
        failover: vec![run("failover-partition", "async", 1_216, 798), run("failover-partition", "durable", 161, 0)],
    };
    insta::assert_snapshot!(markdown(&r));
    let page = harness::report::html(&r);
    assert!(page.contains("<h2>Failover on replicated Redis</h2>"));
    assert!(page.contains("<tr class=\"mismatch\"><td>failover-partition</td><td>async</td><td>1216</td><td>798</td>"));
    assert!(page.contains("<tr class=\"ok\"><td>failover-partition</td><td>durable</td>"));
    assert!(!page.contains("Latency p50"), "no latency charts on a sentinel run");
}
