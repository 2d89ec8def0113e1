//! Comparing two runs: what an engineer validating a design change does (the suite on main,
//! the suite on the branch, then `hybrid-chaos compare main-run branch-run`).
//!
//! Pure functions of two `report.json` documents, read as JSON values so that reports
//! written by older versions still compare (only the fixed row fields are used). A latency
//! change is reported only when one side's p50 lies beyond the other side's p99 (outside its
//! spread) and moved by at least [`LATENCY_CHANGE_MS_MIN`] and [`LATENCY_CHANGE_RATIO_MIN`], so
//! run-to-run noise is not mistaken for a change. B is *worse on safety* when a verdict got
//! worse (valid -> invalid or unknown) or more was lost: `compare` exits 1 then.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

/// One (scenario, strategy) pair present in both runs.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PairDiff {
    pub scenario: String,
    pub strategy: String,
    pub verdict_a: String,
    pub verdict_b: String,
    pub lost_a: u64,
    pub lost_b: u64,
    /// `[p50, p99]` of each side, in ms; `None` where nothing was measured.
    pub latency_a: Option<(f64, f64)>,
    pub latency_b: Option<(f64, f64)>,
    /// `slower`, `faster` or empty: only when one side's p50 leaves the other's spread.
    pub latency_change: &'static str,
    /// Worse on safety: the verdict got worse or more was lost.
    pub worse: bool,
    /// Better on safety: the verdict got better or less was lost.
    pub better: bool,
}

/// Two runs compared.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Comparison {
    pub run_a: String,
    pub run_b: String,
    pub pairs: Vec<PairDiff>,
    /// Pairs only one side ran.
    pub only_a: Vec<String>,
    pub only_b: Vec<String>,
}

impl Comparison {
    pub fn worse_on_safety(&self) -> bool {
        self.pairs.iter().any(|p| p.worse)
    }

    fn changed(&self) -> impl Iterator<Item = &PairDiff> {
        self.pairs.iter().filter(|p| p.worse || p.better || !p.latency_change.is_empty())
    }
}

/// A p50 change smaller than this, in ms, is never reported: loopback runs jitter by about a
/// millisecond between runs of the same commit.
pub const LATENCY_CHANGE_MS_MIN: f64 = 5.0;
/// ... nor one smaller than this fraction of the baseline's p50.
pub const LATENCY_CHANGE_RATIO_MIN: f64 = 0.25;

fn material(a50: f64, b50: f64) -> bool {
    (b50 - a50).abs() >= LATENCY_CHANGE_MS_MIN.max(LATENCY_CHANGE_RATIO_MIN * a50)
}

/// Rank of a verdict: higher is worse.
fn rank(v: &str) -> u8 {
    match v {
        "valid" => 0,
        "unknown" => 1,
        _ => 2,
    }
}

fn latency(row: &serde_json::Value) -> Option<(f64, f64)> {
    let l = row.get("latency_ms")?;
    let (p50, p99) = (l.get("p50")?.as_f64()?, l.get("p99")?.as_f64()?);
    // Rows where nothing was obtained report zeros: no data, not a fast result.
    let delivered = row.get("delivered").and_then(|d| d.as_u64()).unwrap_or(0);
    (delivered > 0 && p99 > 0.0).then_some((p50, p99))
}

fn rows(report: &serde_json::Value) -> BTreeMap<(String, String), &serde_json::Value> {
    let mut out = BTreeMap::new();
    for r in report.get("scenarios").and_then(|s| s.as_array()).map(Vec::as_slice).unwrap_or(&[]) {
        let key = |k: &str| r.get(k).and_then(|v| v.as_str()).unwrap_or("").to_string();
        out.insert((key("scenario"), key("strategy")), r);
    }
    out
}

/// Compares run A (the baseline) with run B (the change).
pub fn compare(a: &serde_json::Value, b: &serde_json::Value) -> Comparison {
    compare_rows(a, b, rows(a), rows(b))
}

/// Compares strategy `sa` of run A with strategy `sb` of run B, scenario by scenario (a
/// design variant against the design it varies, in one run or two).
pub fn compare_strategies(a: &serde_json::Value, b: &serde_json::Value, sa: &str, sb: &str) -> Comparison {
    let label = format!("{sa} -> {sb}");
    compare_rows(a, b, strategy_rows(a, sa, &label), strategy_rows(b, sb, &label))
}

/// The rows of strategy `s`, keyed by (scenario, `label`).
fn strategy_rows<'a>(
    r: &'a serde_json::Value,
    s: &str,
    label: &str,
) -> BTreeMap<(String, String), &'a serde_json::Value> {
    rows(r).into_iter().filter(|((_, st), _)| st == s).map(|((sc, _), v)| ((sc, label.to_string()), v)).collect()
}

fn compare_rows<'a>(
    a: &serde_json::Value,
    b: &serde_json::Value,
    ra: BTreeMap<(String, String), &'a serde_json::Value>,
    rb: BTreeMap<(String, String), &'a serde_json::Value>,
) -> Comparison {
    let id = |r: &serde_json::Value| r.get("run_id").and_then(|v| v.as_str()).unwrap_or("?").to_string();
    let mut pairs = Vec::new();
    for (key, x) in &ra {
        let Some(y) = rb.get(key) else { continue };
        let verdict =
            |r: &serde_json::Value| r.get("verdict").and_then(|v| v.as_str()).unwrap_or("unknown").to_string();
        let lost = |r: &serde_json::Value| r.get("lost").and_then(|v| v.as_u64()).unwrap_or(0);
        let (va, vb) = (verdict(x), verdict(y));
        let (la, lb) = (latency(x), latency(y));
        let latency_change = match (la, lb) {
            (Some((a50, a99)), Some((b50, _))) if b50 > a99 && material(a50, b50) => "slower",
            (Some((a50, _)), Some((b50, b99))) if a50 > b99 && material(a50, b50) => "faster",
            _ => "",
        };
        pairs.push(PairDiff {
            scenario: key.0.clone(),
            strategy: key.1.clone(),
            worse: rank(&vb) > rank(&va) || lost(y) > lost(x),
            better: rank(&vb) < rank(&va) || lost(y) < lost(x),
            verdict_a: va,
            verdict_b: vb,
            lost_a: lost(x),
            lost_b: lost(y),
            latency_a: la,
            latency_b: lb,
            latency_change,
        });
    }
    let only = |m: &BTreeMap<(String, String), &serde_json::Value>,
                other: &BTreeMap<(String, String), &serde_json::Value>| {
        m.keys().filter(|k| !other.contains_key(*k)).map(|(s, t)| format!("{s} / {t}")).collect()
    };
    Comparison { run_a: id(a), run_b: id(b), only_a: only(&ra, &rb), only_b: only(&rb, &ra), pairs }
}

/// The cells every rendering shows for a changed pair, after the change word: scenario,
/// strategy, verdicts, losses, and each side's latency.
fn cells(p: &PairDiff) -> [String; 6] {
    [
        p.scenario.clone(),
        p.strategy.clone(),
        format!("{} -> {}", p.verdict_a, p.verdict_b),
        format!("{} -> {}", p.lost_a, p.lost_b),
        lat(p.latency_a),
        lat(p.latency_b),
    ]
}

fn lat(l: Option<(f64, f64)>) -> String {
    match l {
        Some((p50, p99)) => format!("{p50:.1} / {p99:.1}"),
        None => "no data".into(),
    }
}

/// `compare.md`: the verdict first (worse on safety or not), then every changed pair.
pub fn markdown(c: &Comparison) -> String {
    let mut out = String::new();
    let worse = c.pairs.iter().filter(|p| p.worse).count();
    let _ = writeln!(out, "# Compare {} (A) with {} (B)\n", c.run_a, c.run_b);
    let _ = writeln!(
        out,
        "**{}**: {} pairs in both runs, {worse} worse on safety, {} better, {} slower, {} faster (latency counts only outside the other run's p50..p99 spread).\n",
        if worse > 0 { "B IS WORSE ON SAFETY" } else { "no safety regression" },
        c.pairs.len(),
        c.pairs.iter().filter(|p| p.better).count(),
        c.pairs.iter().filter(|p| p.latency_change == "slower").count(),
        c.pairs.iter().filter(|p| p.latency_change == "faster").count(),
    );
    if c.changed().next().is_none() {
        let _ = writeln!(out, "No change.");
    } else {
        let _ = writeln!(
            out,
            "| scenario | strategy | change | verdict A -> B | lost A -> B | p50 / p99 ms A | p50 / p99 ms B |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|---|");
        for p in c.changed() {
            let mut what = Vec::new();
            if p.worse {
                what.push("WORSE");
            }
            if p.better {
                what.push("better");
            }
            if !p.latency_change.is_empty() {
                what.push(p.latency_change);
            }
            let [scenario, strategy, verdicts, lost, la, lb] = cells(p);
            let what = what.join(", ");
            let _ = writeln!(out, "| {scenario} | {strategy} | {what} | {verdicts} | {lost} | {la} | {lb} |");
        }
    }
    for (label, list) in [("Only in A", &c.only_a), ("Only in B", &c.only_b)] {
        if !list.is_empty() {
            let _ = writeln!(out, "\n{label}: {}", list.join(", "));
        }
    }
    out
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// `compare.html`: the same content as `compare.md`, self-contained; a changed row says in
/// words what its colour says.
pub fn html(c: &Comparison) -> String {
    let mut rows = String::new();
    for p in c.changed() {
        let (class, word) = if p.worse {
            ("worse", "WORSE")
        } else if p.better {
            ("better", "better")
        } else {
            ("latency", p.latency_change)
        };
        let extra = if p.worse && !p.latency_change.is_empty() { p.latency_change } else { "" };
        let [scenario, strategy, verdicts, lost, la, lb] = cells(p).map(|c| esc(&c));
        let _ = write!(
            rows,
            "<tr class=\"{class}\"><td>{scenario}</td><td>{strategy}</td><td><strong>{word}</strong> {extra}</td><td>{verdicts}</td><td>{lost}</td><td>{la}</td><td>{lb}</td></tr>"
        );
    }
    let md = markdown(c);
    let summary = md.lines().find(|l| l.starts_with("**")).unwrap_or("").replace("**", "");
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>compare {a} / {b}</title><style>\
body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px}}\
.worse{{background:#fdd}}.better{{background:#dfd}}.latency{{background:#ffe}}</style></head><body>\
<h1>Compare {a} (A) with {b} (B)</h1><p><strong>{summary}</strong></p>\
<table><tr><th>scenario</th><th>strategy</th><th>change</th><th>verdict A &rarr; B</th><th>lost A &rarr; B</th><th>p50 / p99 ms A</th><th>p50 / p99 ms B</th></tr>{rows}</table>\
</body></html>\n",
        a = esc(&c.run_a),
        b = esc(&c.run_b),
        summary = esc(&summary),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn report(id: &str, rows: serde_json::Value) -> serde_json::Value {
        json!({ "run_id": id, "scenarios": rows })
    }

    fn row(scenario: &str, verdict: &str, lost: u64, p50: f64, p99: f64) -> serde_json::Value {
        json!({ "scenario": scenario, "strategy": "hybrid", "verdict": verdict, "lost": lost, "delivered": 8,
                "latency_ms": { "p50": p50, "p90": p99, "p99": p99, "max": p99 } })
    }

    #[test]
    fn the_same_run_twice_is_no_change() {
        let a = report("a", json!([row("clean", "valid", 0, 1.0, 2.0), row("latency", "valid", 0, 140.0, 180.0)]));
        let b = report("b", json!([row("clean", "valid", 0, 1.3, 2.5), row("latency", "valid", 0, 150.0, 175.0)]));
        // Sub-millisecond moves outside the spread are noise, not a change.
        let c = compare(
            &report("a", json!([row("x", "valid", 0, 1.5, 4.1)])),
            &report("b", json!([row("x", "valid", 0, 0.3, 1.0)])),
        );
        assert!(c.changed().next().is_none(), "{c:?}");
        let c = compare(&a, &b);
        assert!(!c.worse_on_safety());
        assert!(markdown(&c).contains("No change."), "{}", markdown(&c));
    }

    #[test]
    fn a_regression_is_worse_on_safety_and_a_slowdown_is_named() {
        let a = report("a", json!([row("clean", "valid", 0, 1.0, 2.0), row("blackhole", "valid", 0, 5.0, 9.0)]));
        let b = report(
            "b",
            json!([
                row("clean", "valid", 0, 30.0, 90.0),
                row("blackhole", "invalid", 3, 5.0, 9.0),
                row("new", "valid", 0, 1.0, 1.0)
            ]),
        );
        let c = compare(&a, &b);
        assert!(c.worse_on_safety());
        let md = markdown(&c);
        assert!(md.contains("B IS WORSE ON SAFETY"), "{md}");
        assert!(md.contains("| blackhole | hybrid | WORSE | valid -> invalid | 0 -> 3 |"), "{md}");
        assert!(md.contains("| clean | hybrid | slower |"), "{md}");
        assert!(md.contains("Only in B: new / hybrid"), "{md}");
        let h = html(&c);
        assert!(
            h.contains("<tr class=\"worse\">") && h.contains("<strong>WORSE</strong>"),
            "colour and text agree: {h}"
        );
    }

    #[test]
    fn a_variant_is_compared_with_the_design_it_varies() {
        let mut fast = row("clean", "valid", 0, 0.5, 0.9);
        fast["strategy"] = json!("hybrid-payload");
        let run = report("r", json!([row("clean", "valid", 0, 10.0, 12.0), fast]));
        let c = compare_strategies(&run, &run, "hybrid", "hybrid-payload");
        assert_eq!(c.pairs.len(), 1);
        assert_eq!((c.pairs[0].strategy.as_str(), c.pairs[0].latency_change), ("hybrid -> hybrid-payload", "faster"));
    }

    #[test]
    fn rows_with_nothing_delivered_have_no_latency() {
        let mut r = row("blackhole", "invalid", 8, 0.0, 0.0);
        r["delivered"] = json!(0);
        assert_eq!(latency(&r), None);
        assert_eq!(lat(None), "no data");
    }
}
