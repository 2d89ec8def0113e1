//! Comparing two runs: what an engineer validating a design change does (the suite on main,
//! the suite on the branch, then `hybrid-chaos compare main-run branch-run`).
//!
//! Pure functions of two runs' reports. Each file is read through [`read_report`] and
//! [`read_history`], which check every field compare uses and refuse the whole file, naming
//! the file, the line and the field, on the first one missing, of the wrong type or out of
//! range: a damaged baseline must not read as "no safety regression". Fields compare does
//! not use are ignored, so reports written by older and newer versions still compare. Latency is
//! judged on the raw samples each run keeps in `history.jsonl`: a change is reported only
//! when a Mann-Whitney U test (two-sided) puts the two sides apart at p < [`P_VALUE_MAX`],
//! with at least [`SAMPLES_MIN`] samples each, and the median moved by at least
//! [`LATENCY_CHANGE_RATIO_MIN`] and [`LATENCY_CHANGE_MS_MIN`], so run-to-run noise is not
//! mistaken for a change (a dozen samples per row are too few for "outside the other side's
//! spread" to see even a halved median). Without samples, no latency change is claimed. B is *worse on safety* when a verdict got
//! worse (valid -> invalid or unknown) or more was lost: `compare` exits 1 then.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A file compare refused: where, and what is wrong there.
#[derive(Debug, thiserror::Error)]
#[error("{}{}: {what}", path.display(), line.map(|l| format!(": line {l}")).unwrap_or_default())]
pub struct ReadError {
    pub path: PathBuf,
    /// 1-based; `None` when the file could not be read at all.
    pub line: Option<usize>,
    pub what: String,
}

/// A verdict as `report.json` spells it; any other spelling is refused, not ranked.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum RowVerdict {
    Valid,
    Unknown,
    Invalid,
}

impl RowVerdict {
    pub fn as_str(self) -> &'static str {
        match self {
            RowVerdict::Valid => "valid",
            RowVerdict::Unknown => "unknown",
            RowVerdict::Invalid => "invalid",
        }
    }
}

/// A row's latency quantiles, in ms.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
pub struct RowLatency {
    pub p50: f64,
    pub p99: f64,
}

/// One (scenario, strategy) row of `report.json`: the fields compare uses.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct Row {
    pub scenario: String,
    pub strategy: String,
    pub verdict: RowVerdict,
    pub lost: u64,
    pub delivered: u64,
    pub latency_ms: RowLatency,
}

/// `report.json` as compare reads it.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct Report {
    pub run_id: String,
    pub scenarios: Vec<Row>,
}

/// A `serde_path_to_error` failure as "field `a.b[2].c`: `message`" (the message alone at the
/// document's root).
fn field_error<E>(e: &serde_path_to_error::Error<E>, message: String) -> String {
    let path = e.path().to_string();
    if path == "." {
        message
    } else {
        format!("field `{path}`: {message}")
    }
}

/// serde_json's message without the "at line L column C" it ends with ([`ReadError`] gives
/// the line).
fn json_message(e: &serde_json::Error) -> String {
    let m = e.to_string();
    m.strip_suffix(&format!(" at line {} column {}", e.line(), e.column())).map(str::to_string).unwrap_or(m)
}

/// Parses `report.json` text; `path` is only for the error. Every row's fields are checked,
/// and a (scenario, strategy) pair given twice is refused (one would hide the other).
pub fn parse_report(path: &Path, text: &str) -> Result<Report, ReadError> {
    let mut de = serde_json::Deserializer::from_str(text);
    let report: Report = serde_path_to_error::deserialize(&mut de).map_err(|e| ReadError {
        path: path.into(),
        line: Some(e.inner().line()),
        what: field_error(&e, json_message(e.inner())),
    })?;
    de.end().map_err(|e| ReadError { path: path.into(), line: Some(e.line()), what: json_message(&e) })?;
    let mut seen = BTreeMap::new();
    for (i, r) in report.scenarios.iter().enumerate() {
        if let Some(first) = seen.insert((r.scenario.as_str(), r.strategy.as_str()), i) {
            return Err(ReadError {
                path: path.into(),
                line: None,
                what: format!(
                    "field `scenarios[{i}]`: {} / {} is also scenarios[{first}] (a report holds each pair once)",
                    r.scenario, r.strategy
                ),
            });
        }
    }
    Ok(report)
}

/// Reads and checks `path` (a run's `report.json`).
pub fn read_report(path: &Path) -> Result<Report, ReadError> {
    let text = std::fs::read_to_string(path).map_err(|e| ReadError {
        path: path.into(),
        line: None,
        what: format!("cannot read it (a run directory holds report.json): {e}"),
    })?;
    parse_report(path, &text)
}

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
    /// `slower`, `faster` or empty: see the module's rule.
    pub latency_change: &'static str,
    /// The rank test's two-sided p-value, when both sides had enough samples.
    pub p_value: Option<f64>,
    /// Latency samples on each side.
    pub samples: (usize, usize),
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

/// A median change smaller than this, in ms, is never reported ...
pub const LATENCY_CHANGE_MS_MIN: f64 = 0.2;
/// ... nor one smaller than this fraction of the baseline's median.
pub const LATENCY_CHANGE_RATIO_MIN: f64 = 0.2;
/// Samples each side needs before a latency change is judged.
pub const SAMPLES_MIN: usize = 8;
/// The largest two-sided p-value reported as a change.
pub const P_VALUE_MAX: f64 = 0.01;

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// Two-sided p-value of the Mann-Whitney U test (normal approximation with tie correction,
/// fine from about eight samples a side).
pub fn mann_whitney_p(a: &[f64], b: &[f64]) -> f64 {
    let (n1, n2) = (a.len() as f64, b.len() as f64);
    let mut all: Vec<(f64, bool)> = a.iter().map(|x| (*x, true)).chain(b.iter().map(|x| (*x, false))).collect();
    all.sort_by(|x, y| x.0.total_cmp(&y.0));
    let (mut rank_a, mut ties, mut i) = (0.0, 0.0, 0);
    while i < all.len() {
        let mut j = i;
        while j + 1 < all.len() && all[j + 1].0 == all[i].0 {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        let t = (j - i + 1) as f64;
        ties += t * t * t - t;
        rank_a += all[i..=j].iter().filter(|(_, is_a)| *is_a).count() as f64 * avg;
        i = j + 1;
    }
    let u = rank_a - n1 * (n1 + 1.0) / 2.0;
    let n = n1 + n2;
    let var = n1 * n2 / 12.0 * ((n + 1.0) - ties / (n * (n - 1.0)));
    if var <= 0.0 {
        return 1.0;
    }
    let z = ((u - n1 * n2 / 2.0).abs() - 0.5).max(0.0) / var.sqrt();
    (2.0 * (1.0 - phi(z))).clamp(0.0, 1.0)
}

/// The standard normal CDF (Abramowitz and Stegun 26.2.17, error below 1e-7).
fn phi(z: f64) -> f64 {
    let t = 1.0 / (1.0 + 0.231_641_9 * z.abs());
    let d = 0.398_942_3 * (-z * z / 2.0).exp();
    let p = d * t * (0.319_381_5 + t * (-0.356_563_8 + t * (1.781_478 + t * (-1.821_256 + t * 1.330_274))));
    if z >= 0.0 {
        1.0 - p
    } else {
        p
    }
}

/// Latency samples per (scenario, strategy), in ms, from a run's `history.jsonl` (each line an
/// event tagged with its scenario and strategy); `path` is only for the error. Every line
/// must be UTF-8 and one event: a truncated, mistyped or foreign line refuses the file,
/// since a sample dropped from one side can hide a slowdown.
pub fn parse_history(path: &Path, bytes: &[u8]) -> Result<Samples, ReadError> {
    let mut runs: BTreeMap<(String, String), crate::history::History> = BTreeMap::new();
    // The writer ends every line with a newline: the piece after the last one is empty.
    let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    if body.is_empty() {
        return Ok(Samples::new());
    }
    for (i, raw) in body.split(|b| *b == b'\n').enumerate() {
        let bad = |what: String| ReadError { path: path.into(), line: Some(i + 1), what };
        let line = std::str::from_utf8(raw).map_err(|e| bad(format!("not UTF-8: {e}")))?;
        let mut v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| bad(format!("not a JSON event: {}", json_message(&e))))?;
        let obj = v.as_object_mut().ok_or_else(|| bad("not a JSON object".into()))?;
        let mut tag = |k: &str| match obj.remove(k) {
            Some(serde_json::Value::String(s)) => Ok(s),
            Some(other) => Err(bad(format!("field `{k}`: expected a string, found {other}"))),
            None => Err(bad(format!("missing field `{k}`"))),
        };
        let id = (tag("scenario")?, tag("strategy")?);
        let e: crate::history::Event =
            serde_path_to_error::deserialize(v).map_err(|e| bad(field_error(&e, e.inner().to_string())))?;
        runs.entry(id).or_default().push(e);
    }
    Ok(runs.into_iter().map(|(k, h)| (k, crate::checker::latency_samples_ms(&h))).collect())
}

/// Reads and checks `path` (a run's `history.jsonl`); `Ok(None)` when there is none (a run
/// without it gets no latency judgement, and the caller says so).
pub fn read_history(path: &Path) -> Result<Option<Samples>, ReadError> {
    match std::fs::read(path) {
        Ok(bytes) => parse_history(path, &bytes).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ReadError { path: path.into(), line: None, what: format!("cannot read it: {e}") }),
    }
}

/// Samples of both sides, keyed as the rows are.
pub type Samples = BTreeMap<(String, String), Vec<f64>>;

/// `slower`, `faster` or empty, with the p-value when judged.
fn latency_change(a: Option<&Vec<f64>>, b: Option<&Vec<f64>>) -> (&'static str, Option<f64>) {
    let (Some(a), Some(b)) = (a, b) else { return ("", None) };
    if a.len() < SAMPLES_MIN || b.len() < SAMPLES_MIN {
        return ("", None);
    }
    let p = mann_whitney_p(a, b);
    let (ma, mb) = (median(a), median(b));
    let material = (mb - ma).abs() >= LATENCY_CHANGE_MS_MIN.max(LATENCY_CHANGE_RATIO_MIN * ma);
    let change = match (p < P_VALUE_MAX && material, mb > ma) {
        (true, true) => "slower",
        (true, false) => "faster",
        _ => "",
    };
    (change, Some(p))
}

fn latency(row: &Row) -> Option<(f64, f64)> {
    let RowLatency { p50, p99 } = row.latency_ms;
    // Rows where nothing was obtained report zeros: no data, not a fast result.
    (row.delivered > 0 && p99 > 0.0).then_some((p50, p99))
}

fn rows(report: &Report) -> BTreeMap<(String, String), &Row> {
    report.scenarios.iter().map(|r| ((r.scenario.clone(), r.strategy.clone()), r)).collect()
}

/// Compares run A (the baseline) with run B (the change); `sa` and `sb` are their latency
/// samples ([`read_history`]; empty: no latency judgement).
pub fn compare(a: &Report, b: &Report, sa: &Samples, sb: &Samples) -> Comparison {
    compare_rows(a, b, rows(a), rows(b), sa, sb, None)
}

/// Compares strategy `sa` of run A with strategy `sb` of run B, scenario by scenario (a
/// design variant against the design it varies, in one run or two).
pub fn compare_strategies(
    a: &Report,
    b: &Report,
    samples_a: &Samples,
    samples_b: &Samples,
    sa: &str,
    sb: &str,
) -> Comparison {
    let label = format!("{sa} -> {sb}");
    let strategies = Some((sa, sb));
    compare_rows(a, b, strategy_rows(a, sa, &label), strategy_rows(b, sb, &label), samples_a, samples_b, strategies)
}

/// The rows of strategy `s`, keyed by (scenario, `label`).
fn strategy_rows<'a>(r: &'a Report, s: &str, label: &str) -> BTreeMap<(String, String), &'a Row> {
    rows(r).into_iter().filter(|((_, st), _)| st == s).map(|((sc, _), v)| ((sc, label.to_string()), v)).collect()
}

fn compare_rows<'a>(
    a: &Report,
    b: &Report,
    ra: BTreeMap<(String, String), &'a Row>,
    rb: BTreeMap<(String, String), &'a Row>,
    samples_a: &Samples,
    samples_b: &Samples,
    strategies: Option<(&str, &str)>,
) -> Comparison {
    let mut pairs = Vec::new();
    for (key, x) in &ra {
        let Some(y) = rb.get(key) else { continue };
        let (va, vb) = (x.verdict, y.verdict);
        let (la, lb) = (latency(x), latency(y));
        // Rows keyed by a strategy pair take their samples under each side's own strategy.
        let (ka, kb) = match strategies {
            Some((sa, sb)) => ((key.0.clone(), sa.to_string()), (key.0.clone(), sb.to_string())),
            None => (key.clone(), key.clone()),
        };
        let (xa, xb) = (samples_a.get(&ka), samples_b.get(&kb));
        let (latency_change, p_value) = latency_change(xa, xb);
        let samples = (xa.map_or(0, Vec::len), xb.map_or(0, Vec::len));
        // Worse on safety: a verdict got worse, or a row that was valid now loses. A design
        // that already loses (a canary, persistence none) losing one more is run-to-run noise
        // in how much a broken design breaks: shown, not counted.
        // Verdicts order valid < unknown < invalid: later is worse.
        let was_valid = va == RowVerdict::Valid;
        pairs.push(PairDiff {
            scenario: key.0.clone(),
            strategy: key.1.clone(),
            worse: vb > va || (was_valid && y.lost > x.lost),
            better: vb < va || (was_valid && y.lost < x.lost),
            verdict_a: va.as_str().into(),
            verdict_b: vb.as_str().into(),
            lost_a: x.lost,
            lost_b: y.lost,
            latency_a: la,
            latency_b: lb,
            latency_change,
            p_value,
            samples,
        });
    }
    let only = |m: &BTreeMap<(String, String), &Row>, other: &BTreeMap<(String, String), &Row>| {
        m.keys().filter(|k| !other.contains_key(*k)).map(|(s, t)| format!("{s} / {t}")).collect()
    };
    Comparison {
        run_a: a.run_id.clone(),
        run_b: b.run_id.clone(),
        only_a: only(&ra, &rb),
        only_b: only(&rb, &ra),
        pairs,
    }
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

fn p_cell(p: &PairDiff) -> String {
    match p.p_value {
        Some(v) => format!("{v:.4} ({} / {})", p.samples.0, p.samples.1),
        None => format!("- ({} / {})", p.samples.0, p.samples.1),
    }
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
        "**{}**: {} pairs in both runs, {worse} worse on safety, {} better, {} slower, {} faster (a latency change needs a rank test at p < 0.01 on at least 8 samples a side and a median moved 20 %).\n",
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
            "| scenario | strategy | change | verdict A -> B | lost A -> B | p50 / p99 ms A | p50 / p99 ms B | p (samples) |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|---|---|");
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
            let _ = writeln!(
                out,
                "| {scenario} | {strategy} | {what} | {verdicts} | {lost} | {la} | {lb} | {} |",
                p_cell(p)
            );
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
            "<tr class=\"{class}\"><td>{scenario}</td><td>{strategy}</td><td><strong>{word}</strong> {extra}</td><td>{verdicts}</td><td>{lost}</td><td>{la}</td><td>{lb}</td><td>{}</td></tr>",
            esc(&p_cell(p))
        );
    }
    let md = markdown(c);
    let summary = md.lines().find(|l| l.starts_with("**")).unwrap_or("").replace("**", "");
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>compare {a} / {b}</title><style>\
body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px}}\
.worse{{background:#fdd}}.better{{background:#dfd}}.latency{{background:#ffe}}</style></head><body>\
<h1>Compare {a} (A) with {b} (B)</h1><p><strong>{summary}</strong></p>\
<table><tr><th>scenario</th><th>strategy</th><th>change</th><th>verdict A &rarr; B</th><th>lost A &rarr; B</th><th>p50 / p99 ms A</th><th>p50 / p99 ms B</th><th>p (samples)</th></tr>{rows}</table>\
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

    fn report(id: &str, rows: serde_json::Value) -> Report {
        serde_json::from_value(json!({ "run_id": id, "scenarios": rows })).unwrap()
    }

    fn row(scenario: &str, verdict: &str, lost: u64, p50: f64, p99: f64) -> serde_json::Value {
        json!({ "scenario": scenario, "strategy": "hybrid", "verdict": verdict, "lost": lost, "delivered": 8,
                "latency_ms": { "p50": p50, "p90": p99, "p99": p99, "max": p99 } })
    }

    /// `n` samples around `center`, spread by `width` (deterministic).
    fn around(center: f64, width: f64, n: usize) -> Vec<f64> {
        (0..n).map(|i| center + width * ((i * 7 % n) as f64 / n as f64 - 0.5)).collect()
    }

    fn samples(entries: &[(&str, &str, Vec<f64>)]) -> Samples {
        entries.iter().map(|(sc, st, v)| ((sc.to_string(), st.to_string()), v.clone())).collect()
    }

    #[test]
    fn the_same_run_twice_is_no_change() {
        let a = report("a", json!([row("clean", "valid", 0, 1.0, 2.0), row("latency", "valid", 0, 140.0, 180.0)]));
        let b = report("b", json!([row("clean", "valid", 0, 1.3, 2.5), row("latency", "valid", 0, 150.0, 175.0)]));
        let (sa, sb) = (
            samples(&[("clean", "hybrid", around(1.0, 0.8, 14)), ("latency", "hybrid", around(140.0, 80.0, 14))]),
            samples(&[("clean", "hybrid", around(1.1, 0.8, 14)), ("latency", "hybrid", around(150.0, 80.0, 14))]),
        );
        let c = compare(&a, &b, &sa, &sb);
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
        let sa = samples(&[("clean", "hybrid", around(1.0, 0.5, 12))]);
        let sb = samples(&[("clean", "hybrid", around(30.0, 40.0, 12))]);
        let c = compare(&a, &b, &sa, &sb);
        assert!(c.worse_on_safety());
        let md = markdown(&c);
        assert!(md.contains("B IS WORSE ON SAFETY"), "{md}");
        assert!(md.contains("| blackhole | hybrid | WORSE | valid -> invalid | 0 -> 3 |"), "{md}");
        let header = md.lines().find(|l| l.starts_with("| scenario")).unwrap();
        let first = md.lines().find(|l| l.starts_with("| blackhole")).unwrap();
        assert_eq!(header.matches('|').count(), first.matches('|').count(), "header and rows have the same columns");
        assert!(md.contains("| clean | hybrid | slower |"), "{md}");
        assert!(md.contains("Only in B: new / hybrid"), "{md}");
        let h = html(&c);
        assert!(
            h.contains("<tr class=\"worse\">") && h.contains("<strong>WORSE</strong>"),
            "colour and text agree: {h}"
        );
        // Too few samples: no latency judgement at all.
        let few = compare(
            &a,
            &b,
            &samples(&[("clean", "hybrid", vec![1.0; 4])]),
            &samples(&[("clean", "hybrid", vec![30.0; 4])]),
        );
        assert_eq!(few.pairs.iter().find(|p| p.scenario == "clean").unwrap().latency_change, "");
    }

    #[test]
    fn a_canary_losing_one_more_is_not_a_regression() {
        let a = report("a", json!([row("blackhole", "invalid", 8, 1.0, 2.0)]));
        let b = report("b", json!([row("blackhole", "invalid", 9, 1.0, 2.0)]));
        let c = compare(&a, &b, &Samples::new(), &Samples::new());
        assert!(!c.worse_on_safety(), "{c:?}");
    }

    #[test]
    fn a_variant_is_compared_with_the_design_it_varies() {
        let mut fast = row("latency", "valid", 0, 50.0, 190.0);
        fast["strategy"] = json!("hybrid-payload");
        let run = report("r", json!([row("latency", "valid", 0, 95.0, 250.0), fast]));
        // Wide, overlapping spreads (50 +- 20 ms jitter), medians a round trip apart.
        let s = samples(&[
            ("latency", "hybrid", around(95.0, 60.0, 14)),
            ("latency", "hybrid-payload", around(50.0, 60.0, 14)),
        ]);
        let c = compare_strategies(&run, &run, &s, &s, "hybrid", "hybrid-payload");
        assert_eq!(c.pairs.len(), 1);
        assert_eq!((c.pairs[0].strategy.as_str(), c.pairs[0].latency_change), ("hybrid -> hybrid-payload", "faster"));
    }

    #[test]
    fn the_rank_test_separates_shifted_samples_and_not_equal_ones() {
        let a = around(10.0, 4.0, 12);
        assert!(mann_whitney_p(&a, &a) > 0.9);
        assert!(mann_whitney_p(&a, &around(30.0, 4.0, 12)) < 0.001);
        assert!((phi(0.0) - 0.5).abs() < 1e-6 && (phi(1.96) - 0.975).abs() < 1e-3);
    }

    #[test]
    fn samples_come_from_the_history_lines() {
        let lines = [
            r#"{"f":"wait","id":"a","resume":false,"process":1,"type":"invoke","time_us":0,"scenario":"clean","strategy":"hybrid"}"#,
            r#"{"f":"respond","id":"a","token":"t","process":2,"type":"invoke","time_us":1000,"scenario":"clean","strategy":"hybrid"}"#,
            r#"{"f":"respond","id":"a","token":"t","process":2,"type":"ok","time_us":1500,"scenario":"clean","strategy":"hybrid"}"#,
            r#"{"f":"wait","id":"a","token":"t","via":"notified","resume":false,"process":1,"type":"ok","time_us":3000,"scenario":"clean","strategy":"hybrid"}"#,
        ];
        let s = parse_history(Path::new("h"), lines.join("\n").as_bytes()).unwrap();
        assert_eq!(s[&("clean".to_string(), "hybrid".to_string())], vec![2.0]);
    }

    #[test]
    fn rows_with_nothing_delivered_have_no_latency() {
        let mut r = row("blackhole", "invalid", 8, 0.0, 0.0);
        r["delivered"] = json!(0);
        assert_eq!(latency(&serde_json::from_value(r).unwrap()), None);
        assert_eq!(lat(None), "no data");
    }

    /// Every way a report can be damaged is refused, naming the file, the line and the field:
    /// each of these used to compare as "no safety regression" (a baseline of `{}` hid a valid
    /// -> invalid change; `lost: -5` read as 0; `"Invalid"` ranked as worse by default).
    #[test]
    fn a_damaged_report_is_refused_naming_the_line_and_the_field() {
        let good = json!({ "run_id": "r", "scenarios": [row("clean", "valid", 0, 1.0, 2.0)] });
        let with = |f: &dyn Fn(&mut serde_json::Value)| {
            let mut v = good.clone();
            f(&mut v);
            serde_json::to_string_pretty(&v).unwrap()
        };
        let cases: Vec<(String, &str)> = vec![
            ("{}".into(), "missing field `run_id`"),
            ("[1,2,3]".into(), "invalid type"),
            (r#"{"run_id": "r", "scenarios": "oops"}"#.into(), "field `scenarios`"),
            (with(&|v| v["scenarios"][0]["lost"] = json!(-5)), "field `scenarios[0].lost`"),
            (with(&|v| v["scenarios"][0]["verdict"] = json!("Invalid")), "unknown variant `Invalid`"),
            (
                with(&|v| v["scenarios"][0].as_object_mut().unwrap().remove("delivered").map(drop).unwrap()),
                "missing field `delivered`",
            ),
            (with(&|v| v["scenarios"][0]["latency_ms"]["p99"] = json!("fast")), "field `scenarios[0].latency_ms.p99`"),
            (
                with(&|v| {
                    let r = v["scenarios"][0].clone();
                    v["scenarios"].as_array_mut().unwrap().push(r)
                }),
                "is also scenarios[0]",
            ),
            (format!("{} trailing", good), "trailing characters"),
        ];
        for (text, want) in cases {
            let e = parse_report(Path::new("/runs/a/report.json"), &text).unwrap_err().to_string();
            assert!(e.starts_with("/runs/a/report.json"), "names the file: {e}");
            assert!(e.contains(want), "{want:?} not in {e:?} for {text}");
        }
        // The line is the one the bad field is on.
        let text = with(&|v| v["scenarios"][0]["lost"] = json!(-5));
        let line = text.lines().position(|l| l.contains("\"lost\"")).unwrap() + 1;
        let e = parse_report(Path::new("r.json"), &text).unwrap_err();
        assert_eq!(e.line, Some(line), "{e}");
        assert_eq!(parse_report(Path::new("r.json"), &good.to_string()).unwrap().scenarios.len(), 1);
    }

    /// A history with one bad line is refused with that line's number: a truncated line, a
    /// wrong type, a line that is not UTF-8 or not an event used to be skipped, and a run
    /// slowed by 50 ms then read "No change.".
    #[test]
    fn a_damaged_history_is_refused_naming_the_line() {
        let ok = r#"{"f":"wait","id":"a","resume":false,"process":1,"type":"invoke","time_us":0,"scenario":"clean","strategy":"hybrid"}"#;
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (format!("{ok}\n{}", &ok[..40]).into_bytes(), "line 2: not a JSON event"),
            (
                format!("{ok}\n{}\n", ok.replace("\"time_us\":0", "\"time_us\":\"0\"")).into_bytes(),
                "line 2: field `time_us`",
            ),
            ([ok.as_bytes(), b"\n\xff\xfe\n"].concat(), "line 2: not UTF-8"),
            (format!("{ok}\n\n{ok}\n").into_bytes(), "line 2: not a JSON event"),
            (
                format!("{}\n", ok.replace(",\"scenario\":\"clean\"", "")).into_bytes(),
                "line 1: missing field `scenario`",
            ),
            (
                format!("{}\n", ok.replace("\"strategy\":\"hybrid\"", "\"strategy\":7")).into_bytes(),
                "line 1: field `strategy`: expected a string",
            ),
            (b"[1]\n".to_vec(), "line 1: not a JSON object"),
        ];
        for (bytes, want) in cases {
            let e = parse_history(Path::new("/runs/b/history.jsonl"), &bytes).unwrap_err().to_string();
            assert!(e.starts_with("/runs/b/history.jsonl: "), "names the file: {e}");
            assert!(e.contains(want), "{want:?} not in {e:?}");
        }
        assert!(parse_history(Path::new("h"), format!("{ok}\n{ok}\n").as_bytes()).is_ok());
        assert!(parse_history(Path::new("h"), b"").unwrap().is_empty());
    }
}
