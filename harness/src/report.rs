//! Run reports: `report.json` (field names fixed: other tools read them), `report.md` and a
//! self-contained `report.html` with SVG charts, all built from scenario outcomes, which are
//! built from histories. Pure functions: the same outcomes give the same bytes, so the
//! formats are snapshot-tested.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::checker::Validity;
use crate::history::{History, Kind, Op, Reading};
use crate::scenario::Outcome;

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct LatencyMs {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Leaks {
    pub subscriptions: i64,
    pub connections: i64,
    pub keys_without_ttl: i64,
    pub waiters: i64,
}

/// Evidence lines quoted per finding in a row; `history.jsonl` has everything.
const FINDING_EXAMPLES_MAX: usize = 2;

/// One row of `report.json`: a (scenario, strategy) pair.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Row {
    pub scenario: String,
    pub strategy: String,
    pub verdict: Validity,
    pub expected_verdict: Validity,
    pub attempted: u64,
    pub acknowledged: u64,
    pub delivered: u64,
    pub lost: u64,
    /// The ids of the lost responses (feedback runs), all of them.
    pub lost_ids: Vec<String>,
    pub duplicated: u64,
    pub notified: u64,
    pub rescued_by_polling: u64,
    pub latency_ms: LatencyMs,
    /// From the heal to the first response obtained after it; `null` without a fault window
    /// or without an obtain after it.
    pub recovery_ms: Option<f64>,
    pub redis_commands_per_message: f64,
    pub leaks: Leaks,
    /// Non-valid checks with their evidence (not among the fixed fields; extra for humans).
    pub findings: Vec<String>,
    /// Why a non-valid verdict is expected here, e.g. loss caused by the configuration.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub expectation: String,
    /// The bounds the liveness checks judged by, derived from the implementation's
    /// configuration (absent when the run was judged without them).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bounds: Option<crate::checker::Bounds>,
    /// The deliberately broken variant the run used (`hybrid-chaos mutants`), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mutant: Option<String>,
    /// The timings actually drawn and met, so a mismatch can be replayed and read exactly.
    pub timeline: Timeline,
}

/// When things happened in a run, in ms since it started (monotonic clock).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Timeline {
    /// Each fault window: `[applied, healed]` (healed `null` if never).
    pub faults_ms: Vec<(f64, Option<f64>)>,
    /// When each id's first respond was sent.
    pub responds_ms: BTreeMap<String, f64>,
}

fn timeline(h: &History) -> Timeline {
    let ms = |us: u64| (us as f64 / 100.0).round() / 10.0;
    let mut t = Timeline::default();
    for e in &h.events {
        match (&e.kind, &e.op) {
            (_, Op::Nemesis { action, .. }) if action == "apply" => t.faults_ms.push((ms(e.time_us), None)),
            (_, Op::Nemesis { .. }) => {
                if let Some(open) = t.faults_ms.iter_mut().rev().find(|(_, healed)| healed.is_none()) {
                    open.1 = Some(ms(e.time_us));
                }
            }
            (Kind::Invoke, Op::Respond { id, .. }) => {
                t.responds_ms.entry(id.clone()).or_insert(ms(e.time_us));
            }
            _ => {}
        }
    }
    t
}

/// `report.json`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    pub run_id: String,
    pub seed: u64,
    pub started_at: String,
    pub redis_version: String,
    pub toxiproxy: String,
    /// What a machine reads first: counts and whether any verdict differs from its
    /// expectation.
    pub summary: Summary,
    pub scenarios: Vec<Row>,
}

/// The run at a glance.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Summary {
    /// (scenario, strategy) pairs run.
    pub pairs: usize,
    /// Pairs whose verdict differs from the expected one.
    pub mismatches: usize,
    pub mismatch: bool,
    pub valid: usize,
    pub invalid: usize,
    pub unknown: usize,
    /// Acknowledged responses (or chunks) lost, summed over the rows.
    pub lost: u64,
}

impl Summary {
    pub fn of(rows: &[Row]) -> Summary {
        let count = |v: Validity| rows.iter().filter(|r| r.verdict == v).count();
        let mismatches = rows.iter().filter(|r| r.verdict != r.expected_verdict).count();
        Summary {
            pairs: rows.len(),
            mismatches,
            mismatch: mismatches > 0,
            valid: count(Validity::Valid),
            invalid: count(Validity::Invalid),
            unknown: count(Validity::Unknown),
            lost: rows.iter().map(|r| r.lost).sum(),
        }
    }
}

fn observed<'a>(h: &'a History, phase: &str) -> Option<&'a Reading> {
    h.events.iter().find_map(|e| match &e.op {
        Op::Observe { phase: p, reading } if p == phase => Some(reading),
        _ => None,
    })
}

/// Builds a row from an outcome and its history.
pub fn row(o: &Outcome) -> Row {
    let h = &o.history;
    let ops = h.operations();
    let (mut attempted, mut acked_tokens, mut obtained) = (0u64, Vec::new(), std::collections::BTreeSet::new());
    for op in &ops {
        match (&op.invoke.op, op.completion) {
            (Op::Respond { token, .. }, c) if op.invoke.kind == Kind::Invoke => {
                attempted += 1;
                if c.is_some_and(|c| c.kind == Kind::Ok) {
                    acked_tokens.push(token.clone());
                }
            }
            (Op::Wait { .. }, Some(c)) => {
                if let Op::Wait { token: Some(t), .. } = &c.op {
                    obtained.insert(t.clone());
                }
            }
            _ => {}
        }
    }
    let mut lost = acked_tokens.iter().filter(|t| !obtained.contains(*t)).count() as u64;
    let lost_ids: Vec<String> = ops
        .iter()
        .filter_map(|op| match (&op.invoke.op, op.completion) {
            (Op::Respond { id, token }, Some(c)) if op.invoke.kind == Kind::Invoke && c.kind == Kind::Ok => {
                (!obtained.contains(token)).then(|| id.clone())
            }
            _ => None,
        })
        .collect();
    let mut acknowledged = acked_tokens.len() as u64;
    let mut delivered = obtained.len() as u64;
    let mut duplicated = 0;
    let stream = stream_counts(h);
    if stream.attempted > 0 {
        (attempted, acknowledged, delivered, duplicated, lost) =
            (stream.attempted, stream.acknowledged, stream.delivered, stream.duplicated, stream.lost);
    }
    let check = |name: &str| o.checks.iter().find(|c| c.checker == name);
    let lat = check("latency").map(|c| c.stats.clone()).unwrap_or_default();
    let f = |k: &str| lat.get(k).and_then(|v| v.as_f64()).unwrap_or(0.0);
    let heal =
        h.events.iter().find(|e| matches!(&e.op, Op::Nemesis { action, .. } if action == "heal")).map(|e| e.time_us);
    let recovery_ms = heal.and_then(|t| {
        h.events
            .iter()
            .filter(|e| e.time_us >= t && e.kind == Kind::Ok && matches!(&e.op, Op::Wait { token: Some(_), .. }))
            .map(|e| (e.time_us - t) as f64 / 1000.0)
            .next()
    });
    let (base, end) =
        (observed(h, "baseline").cloned().unwrap_or_default(), observed(h, "final").cloned().unwrap_or_default());
    let d = |a: u64, b: u64| b as i64 - a as i64;
    let commands = end.commands_processed.saturating_sub(base.commands_processed) as f64;
    Row {
        scenario: o.scenario.clone(),
        strategy: o.strategy.clone(),
        verdict: o.verdict,
        expected_verdict: o.expected_verdict,
        attempted,
        acknowledged,
        delivered,
        lost,
        lost_ids,
        duplicated,
        notified: f("notified") as u64,
        rescued_by_polling: f("rescued_by_polling") as u64,
        latency_ms: LatencyMs { p50: f("p50_ms"), p90: f("p90_ms"), p99: f("p99_ms"), max: f("max_ms") },
        recovery_ms,
        redis_commands_per_message: if attempted > 0 {
            (commands / attempted as f64 * 10.0).round() / 10.0
        } else {
            0.0
        },
        leaks: Leaks {
            subscriptions: d(base.subscriptions, end.subscriptions),
            connections: d(base.connections, end.connections),
            keys_without_ttl: end.keys_without_ttl as i64,
            waiters: end.waiters as i64,
        },
        expectation: o.expectation.clone(),
        bounds: o.bounds,
        mutant: o.mutation.map(|m| m.name().to_string()),
        timeline: timeline(h),
        findings: o
            .checks
            .iter()
            .filter(|c| c.validity != Validity::Valid)
            .map(|c| {
                let shown: Vec<&str> = c.evidence.iter().take(FINDING_EXAMPLES_MAX).map(String::as_str).collect();
                let more = c.evidence.len().saturating_sub(FINDING_EXAMPLES_MAX);
                let tail = if more > 0 { format!(" (+{more} more)") } else { String::new() };
                format!("{} {}: {}{tail}", c.checker, v(c.validity), shown.join("; "))
            })
            .collect(),
    }
}

#[derive(Default)]
struct StreamCounts {
    attempted: u64,
    acknowledged: u64,
    /// Distinct (consumer, chunk) deliveries.
    delivered: u64,
    /// Deliveries beyond the first of the same (consumer, chunk).
    duplicated: u64,
    /// Acknowledged chunks at or after a consumer's start that it never got.
    lost: u64,
}

fn stream_counts(h: &History) -> StreamCounts {
    let mut c = StreamCounts::default();
    let mut acked = std::collections::BTreeSet::new();
    let mut starts = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for op in h.operations() {
        match (&op.invoke.op, op.invoke.kind) {
            (Op::Produce { index, .. }, Kind::Invoke) => {
                c.attempted += 1;
                if op.completion.is_some_and(|e| e.kind == Kind::Ok) {
                    c.acknowledged += 1;
                    acked.insert(*index);
                }
            }
            (Op::Follow { consumer, from, .. }, Kind::Invoke) => starts.push((*consumer, *from)),
            (Op::Deliver { consumer, index, .. }, Kind::Ok) => {
                if seen.insert((*consumer, *index)) {
                    c.delivered += 1;
                } else {
                    c.duplicated += 1;
                }
            }
            _ => {}
        }
    }
    for (consumer, from) in starts {
        c.lost += acked.iter().filter(|i| **i >= from && !seen.contains(&(consumer, **i))).count() as u64;
    }
    c
}

fn v(x: Validity) -> &'static str {
    match x {
        Validity::Valid => "valid",
        Validity::Invalid => "invalid",
        Validity::Unknown => "unknown",
    }
}

/// `report.md`: a summary line per verdict, then a table per scenario, a row per strategy.
pub fn markdown(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# hybrid-chaos run {}\n", r.run_id);
    let _ = writeln!(
        out,
        "seed {} | redis {} | toxiproxy {} | started {}\n",
        r.seed, r.redis_version, r.toxiproxy, r.started_at
    );
    let mut counts: BTreeMap<&str, (u32, u32)> = BTreeMap::new();
    for row in &r.scenarios {
        let e = counts.entry(v(row.verdict)).or_default();
        e.0 += 1;
        if row.verdict == row.expected_verdict {
            e.1 += 1;
        }
    }
    for (verdict, (n, as_expected)) in &counts {
        let _ = writeln!(out, "- **{verdict}**: {n} ({as_expected} as expected)");
    }
    let mismatches = r.scenarios.iter().filter(|x| x.verdict != x.expected_verdict).count();
    let _ = writeln!(out, "- **mismatches**: {mismatches}\n");
    for (name, rows) in groups(r) {
        let _ = writeln!(out, "## {name}\n");
        let _ = writeln!(out, "| {} |", COLUMNS.join(" | "));
        let _ = writeln!(out, "|{}", "---|".repeat(COLUMNS.len()));
        for x in &rows {
            let mut c = cells(x);
            if x.verdict != x.expected_verdict {
                c[1].push_str(" MISMATCH");
            }
            let _ = writeln!(out, "| {} |", c.join(" | "));
        }
        let expectations: Vec<String> = rows
            .iter()
            .filter(|x| !x.expectation.is_empty())
            .map(|x| format!("- {} is expected {}: {}", x.strategy, v(x.expected_verdict), x.expectation))
            .collect();
        if !expectations.is_empty() {
            let _ = writeln!(out, "\n{}", expectations.join("\n"));
        }
        let findings: Vec<String> =
            rows.iter().flat_map(|x| x.findings.iter().map(move |f| format!("- {}: {f}", x.strategy))).collect();
        if !findings.is_empty() {
            let _ = writeln!(out, "\n{}", findings.join("\n"));
        }
        let _ = writeln!(out);
    }
    out
}

/// The per-strategy table columns, shared by `report.md` and `report.html`.
const COLUMNS: [&str; 13] = [
    "strategy",
    "verdict",
    "expected",
    "acked",
    "delivered",
    "lost",
    "notified",
    "rescued",
    "p50 ms",
    "p99 ms",
    "recovery ms",
    "cmds/msg",
    "leaks (subs/conns/no-ttl/waiters)",
];

/// One row's cells, in [`COLUMNS`] order.
fn cells(x: &Row) -> Vec<String> {
    let l = &x.leaks;
    vec![
        x.strategy.clone(),
        v(x.verdict).into(),
        v(x.expected_verdict).into(),
        x.acknowledged.to_string(),
        x.delivered.to_string(),
        x.lost.to_string(),
        x.notified.to_string(),
        x.rescued_by_polling.to_string(),
        format!("{:.1}", x.latency_ms.p50),
        format!("{:.1}", x.latency_ms.p99),
        x.recovery_ms.map(|m| format!("{m:.1}")).unwrap_or_else(|| "-".into()),
        format!("{:.1}", x.redis_commands_per_message),
        format!("{}/{}/{}/{}", l.subscriptions, l.connections, l.keys_without_ttl, l.waiters),
    ]
}

/// Rows grouped by scenario, scenarios in the order they ran.
fn groups(r: &Report) -> Vec<(&str, Vec<&Row>)> {
    let mut out: Vec<(&str, Vec<&Row>)> = Vec::new();
    for x in &r.scenarios {
        match out.iter_mut().find(|(n, _)| *n == x.scenario) {
            Some((_, rows)) => rows.push(x),
            None => out.push((&x.scenario, vec![x])),
        }
    }
    out
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// Bar chart of p50/p90/p99 per strategy for one scenario, as inline SVG (log-free, scaled
/// to the largest bar).
fn svg_latency(rows: &[&Row]) -> String {
    let (w, bar, gap, h) = (560.0, 14.0, 6.0, 20.0);
    let max = rows.iter().map(|r| r.latency_ms.p99).fold(0.0_f64, f64::max).max(0.001);
    let height = rows.len() as f64 * (3.0 * bar + gap + h) + 20.0;
    let mut s = format!(r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{height}" role="img">"#);
    let mut y = 10.0;
    for r in rows {
        let _ = write!(s, r#"<text x="0" y="{}" font-size="12">{}</text>"#, y + 12.0, esc(&r.strategy));
        y += h;
        for (label, val, color) in [
            ("p50", r.latency_ms.p50, "#4c78a8"),
            ("p90", r.latency_ms.p90, "#f58518"),
            ("p99", r.latency_ms.p99, "#e45756"),
        ] {
            let len = (val / max * (w - 200.0)).max(1.0);
            let _ = write!(
                s,
                r#"<rect x="40" y="{y}" width="{len:.1}" height="{bar}" fill="{color}"/><text x="0" y="{}" font-size="11">{label}</text><text x="{:.1}" y="{}" font-size="11">{val:.1} ms</text>"#,
                y + 11.0,
                45.0 + len,
                y + 11.0
            );
            y += bar;
        }
        y += gap;
    }
    s.push_str("</svg>");
    s
}

/// `report.html`: one self-contained file (no network): the markdown tables as HTML plus a
/// latency chart per scenario.
pub fn html(r: &Report) -> String {
    let mut out = String::from(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>hybrid-chaos report</title><style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}td:first-child{text-align:left}.bad{background:#fdd}</style></head><body>",
    );
    let _ = write!(
        out,
        "<h1>hybrid-chaos run {}</h1><p>seed {} | redis {} | toxiproxy {} | started {}</p>",
        esc(&r.run_id),
        r.seed,
        esc(&r.redis_version),
        esc(&r.toxiproxy),
        esc(&r.started_at)
    );
    for (name, rows) in groups(r) {
        let head: String = COLUMNS.iter().map(|c| format!("<th>{}</th>", esc(c))).collect();
        let _ = write!(out, "<h2>{}</h2><table><tr>{head}</tr>", esc(name));
        for x in &rows {
            let class = if x.verdict == x.expected_verdict { "" } else { " class=\"bad\"" };
            let tds: String = cells(x).iter().map(|c| format!("<td>{}</td>", esc(c))).collect();
            let _ = write!(out, "<tr{class}>{tds}</tr>");
        }
        out.push_str("</table>");
        out.push_str(&svg_latency(&rows));
    }
    out.push_str("</body></html>\n");
    out
}

/// Writes `report.json`, `report.md`, `report.html` and `history.jsonl` (every event, tagged
/// with its scenario and strategy) into `dir`, creating it.
pub fn write_dir(dir: &std::path::Path, report: &Report, outcomes: &[Outcome]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("report.json"), serde_json::to_string_pretty(report)? + "\n")?;
    std::fs::write(dir.join("report.md"), markdown(report))?;
    std::fs::write(dir.join("report.html"), html(report))?;
    let mut hist = std::io::BufWriter::new(std::fs::File::create(dir.join("history.jsonl"))?);
    for o in outcomes {
        for e in &o.history.events {
            let mut line = serde_json::to_value(e)?;
            line["scenario"] = o.scenario.clone().into();
            line["strategy"] = o.strategy.clone().into();
            serde_json::to_writer(&mut hist, &line)?;
            std::io::Write::write_all(&mut hist, b"\n")?;
        }
    }
    std::io::Write::flush(&mut hist)
}
