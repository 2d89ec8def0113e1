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
    /// From the heal until every response acknowledged before it was obtained (catch-up);
    /// `null` without a fault window, or when nothing was still pending at the heal.
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
    /// Whether the run used the quick budget (reproduce commands need it).
    #[serde(default)]
    pub quick: bool,
    /// Where the servers ran (`process` or `container`) and in what shape (`standalone`).
    pub provider: String,
    pub topology: String,
    /// What a machine reads first: counts and whether any verdict differs from its
    /// expectation.
    pub summary: Summary,
    /// What the fault proxy itself adds to a round trip, sampled during this run under the
    /// same load (PING direct vs through a proxy with no toxic); absent if it could not be.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_overhead: Option<crate::overhead::ProxyOverhead>,
    pub scenarios: Vec<Row>,
    /// The programs run over the process protocol (`--implementation`), name to command,
    /// so a row's reproduce command names them too. Empty: none.
    #[serde(skip_serializing_if = "BTreeMap::is_empty", default)]
    pub implementations: BTreeMap<String, String>,
    /// The sentinel topology's loss table: per scenario and replication, what was
    /// acknowledged and what a failover took back. Empty on a standalone run.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failover: Vec<crate::failover::FailoverRun>,
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
    /// The one line a run prints: counts, loss, and whether every verdict was as expected.
    pub fn line(&self) -> String {
        format!(
            "{} pairs: {} valid, {} invalid, {} unknown; {} lost; {}",
            self.pairs,
            self.valid,
            self.invalid,
            self.unknown,
            self.lost,
            if self.mismatch {
                format!("{} MISMATCH(ES)", self.mismatches)
            } else {
                "every verdict as expected".into()
            }
        )
    }
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
    let recovery_ms = catch_up_ms(h);
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
        "seed {} | redis {} ({} {}) | toxiproxy {} | started {}\n",
        r.seed, r.redis_version, r.topology, r.provider, r.toxiproxy, r.started_at
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
    if let Some(line) = proxy_line(r) {
        let _ = writeln!(out, "{line}\n");
    }
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
    if !r.failover.is_empty() {
        let _ = writeln!(out, "{}", crate::failover::markdown(&r.failover));
    }
    let _ = writeln!(out, "## Glossary\n");
    for (k, d) in GLOSSARY {
        let _ = writeln!(out, "- **{k}**: {d}");
    }
    out
}

/// One sentence on the proxy's own share of the latencies, when it was measured.
fn proxy_line(r: &Report) -> Option<String> {
    let o = r.proxy_overhead.as_ref()?;
    Some(format!(
        "The fault proxy itself adds p50 {:.3} ms, p99 {:.3} ms per crossing (PING direct p50 {:.3} / p99 {:.3} ms, through the proxy {:.3} / {:.3} ms; {} pairs sampled during this run). The latencies below include it once per crossing.",
        o.added_ms.p50, o.added_ms.p99, o.direct_ms.p50, o.direct_ms.p99, o.proxied_ms.p50, o.proxied_ms.p99, o.samples
    ))
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
        latency_cell(x, x.latency_ms.p50),
        latency_cell(x, x.latency_ms.p99),
        x.recovery_ms.map(|m| format!("{m:.1}")).unwrap_or_else(|| "-".into()),
        format!("{:.1}", x.redis_commands_per_message),
        format!("{}/{}/{}/{}", l.subscriptions, l.connections, l.keys_without_ttl, l.waiters),
    ]
}

/// From the heal until every response acknowledged before it was obtained (by its first
/// reader), in ms: how long the implementation took to catch up. `None` without a fault
/// window (an apply with no faults is none), or when nothing acknowledged was still pending
/// at the heal.
fn catch_up_ms(h: &History) -> Option<f64> {
    let faulted =
        h.events.iter().any(|e| matches!(&e.op, Op::Nemesis { action, faults } if action == "apply" && faults != "[]"));
    let heal = h.events.iter().find(|e| matches!(&e.op, Op::Nemesis { action, .. } if action == "heal"))?.time_us;
    if !faulted {
        return None;
    }
    let mut acked_before: BTreeMap<&str, u64> = BTreeMap::new();
    for op in h.operations() {
        if let (Op::Respond { token, .. }, Some(c)) = (&op.invoke.op, op.completion) {
            if op.invoke.kind == Kind::Invoke && c.kind == Kind::Ok && c.time_us < heal {
                acked_before.insert(token, c.time_us);
            }
        }
    }
    let mut first_obtained: BTreeMap<&str, u64> = BTreeMap::new();
    for e in &h.events {
        if let (Kind::Ok, Op::Wait { token: Some(t), .. }) = (&e.kind, &e.op) {
            first_obtained.entry(t).or_insert(e.time_us);
        }
    }
    acked_before
        .keys()
        .filter_map(|t| first_obtained.get(t))
        .filter(|at| **at > heal)
        .max()
        .map(|at| ((*at - heal) as f64 / 100.0).round() / 10.0)
}

/// Whether the row measured any latency: nothing obtained is no data, not 0 ms.
fn has_latency(x: &Row) -> bool {
    x.delivered > 0 && x.latency_ms.p99 > 0.0
}

fn latency_cell(x: &Row, ms: f64) -> String {
    if has_latency(x) {
        format!("{ms:.1}")
    } else {
        "no data".into()
    }
}

/// The command that reruns one row exactly.
pub fn reproduce(r: &Report, x: &Row) -> String {
    let mut c = format!("hybrid-chaos run --scenario {} --strategy {} --seed {}", x.scenario, x.strategy, r.seed);
    if r.quick {
        c.push_str(" --quick");
    }
    if let Some(m) = &x.mutant {
        c.push_str(&format!(" --mutant {m}"));
    }
    if r.provider != "process" && !r.provider.is_empty() {
        c.push_str(&format!(" --provider {}", r.provider));
    }
    if let Some(command) = r.implementations.get(&x.strategy) {
        c.push_str(&crate::strategy::implementation_arg(&x.strategy, command));
    }
    c
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

/// What each column means, for the glossary of `report.html` and `report.md`.
pub const GLOSSARY: [(&str, &str); 9] = [
    ("acked", "responses (or chunks) the implementation acknowledged: stored, or published for pub/sub-only"),
    ("delivered", "acknowledged responses some waiter or resumer obtained (distinct chunks per consumer for streams)"),
    ("lost", "acknowledged, and never obtained by anyone who asked afterwards: the safety failure"),
    ("notified", "live waiters woken by a Pub/Sub notification"),
    ("rescued", "live waiters that got their response another way: a poll tick, the re-read after a reconnect, after subscribing, or the read at their deadline"),
    ("p50 / p99 ms", "respond-to-obtain latency of live waiters; no data when nothing was obtained"),
    ("recovery ms", "from the heal until every response acknowledged before it was obtained; - when there was no fault or nothing was pending"),
    ("cmds/msg", "Redis commands processed per response attempted, churn waits included"),
    ("leaks", "subscriptions, connections, TTL-less keys and waiters left over, baseline subtracted"),
];

const STYLE: &str = "body{font-family:sans-serif;margin:2em;max-width:80em}table{border-collapse:collapse;margin:.5em 0}\
td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}td:first-child,th:first-child{text-align:left}\
.ok{background:#e3f4e3}.canary{background:#eee}.mismatch{background:#f8c9c9;font-weight:bold}.unknown{background:#fde9b8}\
.banner{padding:.6em 1em;font-size:1.3em;border:2px solid}.banner.ok{border-color:#3a3}.banner.mismatch{border-color:#c33}\
.nodata{color:#777;font-style:italic}code{background:#f4f4f4;padding:1px 3px}svg text{font-family:sans-serif}\
.note{border-left:4px solid #69c;padding:.3em .8em;background:#f3f7fb}";

/// The matrix cell of one row: what text says, the colour repeats.
fn matrix_cell(x: &Row) -> (&'static str, String) {
    let lost = if x.lost > 0 { format!(", {} lost", x.lost) } else { String::new() };
    if x.verdict != x.expected_verdict {
        ("mismatch", format!("MISMATCH: {} (expected {}){lost}", v(x.verdict), v(x.expected_verdict)))
    } else if x.verdict == Validity::Valid {
        ("ok", format!("valid{lost}"))
    } else if x.expectation == crate::scenario::NO_EXPECTATION {
        ("canary", format!("{}: a finding{lost}", v(x.verdict)))
    } else if x.verdict == Validity::Unknown {
        ("unknown", format!("unknown, as expected{lost}"))
    } else {
        ("canary", format!("{}, as expected{lost}", v(x.verdict)))
    }
}

/// Horizontal bars on one shared, labelled axis: `(label, value)`; `None` is drawn as the
/// words "no data", never as a zero-length bar.
fn svg_bars(title: &str, unit: &str, items: &[(String, Option<f64>)], log: bool) -> String {
    let (label_w, plot_w, bar_h, gap) = (330.0, 420.0, 12.0, 4.0);
    let max = items.iter().filter_map(|(_, v)| *v).fold(0.0_f64, f64::max);
    // Log axes start at 0.1 ms: loopback latencies span four decades.
    let (lo, hi) = if log { (0.1f64, max.max(1.0) * 1.5) } else { (0.0, max.max(1.0)) };
    let x_of = |v: f64| {
        if log {
            (v.max(lo).log10() - lo.log10()) / (hi.log10() - lo.log10()) * plot_w
        } else {
            v / hi * plot_w
        }
    };
    let height = items.len() as f64 * (bar_h + gap) + 50.0;
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{height}" role="img" aria-label="{}">"#,
        label_w + plot_w + 60.0,
        esc(title)
    );
    let mut y = 10.0;
    for (label, val) in items {
        let _ = write!(s, r#"<text x="0" y="{}" font-size="11">{}</text>"#, y + 10.0, esc(label));
        match val {
            Some(v) => {
                let w = x_of(*v).max(1.0);
                let _ = write!(
                    s,
                    r##"<rect x="{label_w}" y="{y}" width="{w:.1}" height="{bar_h}" fill="#4c78a8"/><text x="{:.1}" y="{}" font-size="10">{}</text>"##,
                    label_w + w + 4.0,
                    y + 10.0,
                    if *v >= 10.0 || v.fract() == 0.0 {
                        format!("{v:.0}")
                    } else if *v < 0.1 {
                        // Sub-0.1 ms figures (the proxy's own share) keep two significant digits.
                        format!("{v:.3}")
                    } else {
                        format!("{v:.1}")
                    }
                );
            }
            None => {
                let _ = write!(
                    s,
                    r##"<text x="{}" y="{}" font-size="10" fill="#777" font-style="italic">no data</text>"##,
                    label_w + 2.0,
                    y + 10.0
                );
            }
        }
        y += bar_h + gap;
    }
    // The shared axis: a line, ticks and the unit.
    let _ = write!(s, r##"<line x1="{label_w}" y1="{y}" x2="{}" y2="{y}" stroke="#333"/>"##, label_w + plot_w);
    let ticks: Vec<f64> = if log {
        (-1..=5).map(|e| 10f64.powi(e)).filter(|t| *t <= hi).collect()
    } else {
        let step = (hi / 5.0).ceil().max(1.0);
        (0..=5).map(|i| i as f64 * step).filter(|t| *t <= hi).collect()
    };
    for t in ticks {
        let x = label_w + x_of(t);
        let _ = write!(
            s,
            r##"<line x1="{x:.1}" y1="{y}" x2="{x:.1}" y2="{}" stroke="#333"/><text x="{x:.1}" y="{}" font-size="10" text-anchor="middle">{}</text>"##,
            y + 4.0,
            y + 15.0,
            if t < 1.0 { format!("{t}") } else { format!("{t:.0}") }
        );
    }
    let _ = write!(s, r#"<text x="{}" y="{}" font-size="11">{}</text></svg>"#, label_w, y + 30.0, esc(unit));
    s
}

/// Where a strategy is slower than another in the same scenario (p50 at least 1.5x and 5 ms
/// more), with the reason where the design explains it.
pub fn slower(r: &Report) -> Vec<String> {
    let mut out = Vec::new();
    for (name, rows) in groups(r) {
        for a in rows.iter().filter(|x| has_latency(x)) {
            for b in rows.iter().filter(|x| has_latency(x) && x.strategy != a.strategy) {
                let (pa, pb) = (a.latency_ms.p50, b.latency_ms.p50);
                if pa >= 1.5 * pb && pa - pb >= 5.0 {
                    let why = match (a.strategy.as_str(), b.strategy.as_str()) {
                        ("hybrid", "pubsub-only") => ": the hybrid reads storage after the wake, one more round trip",
                        (_, "polling-only") => ": it waited for the fault to end where polling went on",
                        ("polling-only", _) => ": polling waits for the next tick",
                        _ => "",
                    };
                    out.push(format!(
                        "{name}: {} p50 {pa:.1} ms is {:.1}x {} ({pb:.1} ms){why}",
                        a.strategy,
                        pa / pb,
                        b.strategy
                    ));
                }
            }
        }
    }
    out
}

/// `report.html`: one self-contained file (no network). The verdict first (mismatches,
/// counts, a scenario x strategy matrix where text and colour say the same), then loss and
/// latency on shared labelled axes, where a strategy is slower, a glossary, and per scenario
/// its table with findings, reasons and reproduce commands.
pub fn html(r: &Report) -> String {
    let mut out = format!("<!doctype html><html><head><meta charset=\"utf-8\"><title>hybrid-chaos report {}</title><style>{STYLE}</style></head><body>", esc(&r.run_id));
    let sum = &r.summary;
    let _ = write!(
        out,
        "<h1>hybrid-chaos run {}</h1><p>seed {} | {} budget | redis {} ({} {}) | toxiproxy {} | started {}</p>",
        esc(&r.run_id),
        r.seed,
        if r.quick { "quick" } else { "default" },
        esc(&r.redis_version),
        esc(&r.topology),
        esc(&r.provider),
        esc(&r.toxiproxy),
        esc(&r.started_at)
    );
    if let Some(m) = r.scenarios.iter().find_map(|x| x.mutant.as_deref()) {
        let _ = write!(
            out,
            "<p class=\"banner unknown\">These rows ran the deliberately broken variant <code>{}</code>: an invalid verdict is the harness catching it.</p>",
            esc(m)
        );
    }
    let (class, headline) = if sum.mismatch {
        ("mismatch", format!("{} MISMATCH(ES): a verdict differs from what was expected", sum.mismatches))
    } else {
        ("ok", "Every verdict as expected".to_string())
    };
    let _ = write!(
        out,
        "<p class=\"banner {class}\">{headline}. {} pairs: {} valid, {} invalid, {} unknown; {} acknowledged responses lost in all (canaries and configurations expected to lose included).</p>",
        sum.pairs, sum.valid, sum.invalid, sum.unknown, sum.lost
    );
    // The matrix.
    let mut strategies: Vec<&str> = Vec::new();
    for x in &r.scenarios {
        if !strategies.contains(&x.strategy.as_str()) {
            strategies.push(&x.strategy);
        }
    }
    let head: String = strategies.iter().map(|s| format!("<th>{}</th>", esc(s))).collect();
    let _ = write!(out, "<h2>Verdicts</h2><table><tr><th>scenario</th>{head}</tr>");
    for (name, rows) in groups(r) {
        let _ = write!(out, "<tr><td><a href=\"#{0}\">{0}</a></td>", esc(name));
        for st in &strategies {
            match rows.iter().find(|x| x.strategy == *st) {
                Some(x) => {
                    let (class, text) = matrix_cell(x);
                    let _ = write!(out, "<td class=\"{class}\">{}</td>", esc(&text));
                }
                None => out.push_str("<td class=\"nodata\">not run</td>"),
            }
        }
        out.push_str("</tr>");
    }
    out.push_str("</table><p>Green: valid. Grey: a verdict other than valid that was expected (a canary, or a configuration that loses), or a finding of an implementation that declared no expectations. Red: MISMATCH.</p>");
    // Loss and latency on shared axes.
    let label = |x: &Row| format!("{} / {}", x.scenario, x.strategy);
    let lost: Vec<(String, Option<f64>)> =
        r.scenarios.iter().filter(|x| x.acknowledged > 0).map(|x| (label(x), Some(x.lost as f64))).collect();
    let _ = write!(
        out,
        "<h2>Loss</h2>{}",
        svg_bars("acknowledged responses lost", "acknowledged responses (or chunks) lost, count", &lost, false)
    );
    if let Some(line) = proxy_line(r) {
        let _ = write!(out, "<p class=\"note\">{}</p>", esc(&line));
    }
    // The sentinel topology's runs write, then resume: no live waiter, no latency, so no
    // charts of empty bars.
    let charts: &[(&str, usize)] = if r.topology == "sentinel" { &[] } else { &[("p50", 0usize), ("p99", 1)] };
    for &(q, pick) in charts {
        let mut items: Vec<(String, Option<f64>)> = r
            .scenarios
            .iter()
            .map(|x| (label(x), has_latency(x).then_some(if pick == 0 { x.latency_ms.p50 } else { x.latency_ms.p99 })))
            .collect();
        if let Some(o) = &r.proxy_overhead {
            // Beside the strategies, on the same axis: the proxy's own share.
            let added = if pick == 0 { o.added_ms.p50 } else { o.added_ms.p99 };
            items.insert(0, ("the fault proxy itself (one crossing)".to_string(), Some(added.max(0.001))));
        }
        let _ = write!(
            out,
            "<h2>Latency {q}</h2>{}",
            svg_bars(
                &format!("respond-to-obtain latency {q}"),
                &format!("respond-to-obtain latency {q}, ms (log scale)"),
                &items,
                true
            )
        );
    }
    let slow = slower(r);
    if !slow.is_empty() {
        let items: String = slow.iter().map(|l| format!("<li>{}</li>", esc(l))).collect();
        let _ = write!(out, "<h2>Where a strategy is slower</h2><ul>{items}</ul>");
    }
    if !r.failover.is_empty() {
        out.push_str(&failover_html(&r.failover));
    }
    let gl: String =
        GLOSSARY.iter().map(|(k, d)| format!("<dt><code>{}</code></dt><dd>{}</dd>", esc(k), esc(d))).collect();
    let _ = write!(out, "<h2>Glossary</h2><dl>{gl}</dl>");
    // Per scenario: the table, then each row's reason, findings and reproduce command.
    for (name, rows) in groups(r) {
        let head: String = COLUMNS.iter().map(|c| format!("<th>{}</th>", esc(c))).collect();
        let _ = write!(out, "<h2 id=\"{0}\">{0}</h2><table><tr>{head}</tr>", esc(name));
        for x in &rows {
            let (class, _) = matrix_cell(x);
            let mut c = cells(x);
            if x.verdict != x.expected_verdict {
                c[1] = format!("{} MISMATCH", c[1]);
            }
            let tds: String = c
                .iter()
                .map(|c| {
                    if c == "no data" {
                        "<td class=\"nodata\">no data</td>".to_string()
                    } else {
                        format!("<td>{}</td>", esc(c))
                    }
                })
                .collect();
            let _ = write!(out, "<tr class=\"{class}\">{tds}</tr>");
        }
        out.push_str("</table><ul>");
        for x in &rows {
            let mut notes = Vec::new();
            if !x.expectation.is_empty() {
                notes.push(format!("expected {}: {}", v(x.expected_verdict), esc(&x.expectation)));
            }
            notes.extend(x.findings.iter().map(|f| esc(f)));
            if x.verdict != x.expected_verdict || !x.findings.is_empty() {
                notes.push(format!("reproduce: <code>{}</code>", esc(&reproduce(r, x))));
            }
            if !notes.is_empty() {
                let _ = write!(out, "<li><strong>{}</strong>: {}</li>", esc(&x.strategy), notes.join("<br>"));
            }
        }
        out.push_str("</ul>");
    }
    out.push_str("</body></html>\n");
    out
}

/// The loss table of a sentinel run: a lost acknowledged response stands out.
fn failover_html(runs: &[crate::failover::FailoverRun]) -> String {
    let mut out = String::from("<h2>Failover on replicated Redis</h2><p class=\"note\">Acknowledged responses a failover took back: acknowledged, then not found by a worker resuming on the primary that won. <code>async</code>: as deployed; <code>durable</code>: WAIT 1 after every store with min-replicas-to-write 1. Measured, not a bound.</p><table><tr><th>scenario</th><th>replication</th><th>acknowledged</th><th>lost</th><th>lost window, ms after the fault</th><th>not acknowledged</th><th>refused</th><th>failover after ms</th><th>converged after heal ms</th></tr>");
    for f in runs {
        let class = if f.loss.lost > 0 { "mismatch" } else { "ok" };
        let window = match (f.loss.lost_from_ms, f.loss.lost_to_ms) {
            (Some(a), Some(b)) => format!("{a} .. {b}"),
            _ => "-".into(),
        };
        let cells = [
            f.scenario.to_string(),
            f.replication.to_string(),
            f.loss.acknowledged.to_string(),
            f.loss.lost.to_string(),
            window,
            f.unacknowledged.to_string(),
            f.refused.to_string(),
            f.failover_ms.map_or("none".into(), |m| m.to_string()),
            f.converged_after_heal_ms.filter(|_| f.converged).map_or("NOT CONVERGED".into(), |m| m.to_string()),
        ];
        let tds: String = cells.iter().map(|c| format!("<td>{}</td>", esc(c))).collect();
        let _ = write!(out, "<tr class=\"{class}\">{tds}</tr>");
    }
    out.push_str("</table>");
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
