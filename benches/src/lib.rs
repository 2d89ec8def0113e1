//! Shared set-up for the criterion benches: a real `redis-server` with the fault proxy in
//! front of it, and side-by-side (interleaved) sampling so ratios are measured in one run
//! under the same machine noise. Results go to `reports/out/bench/`.

use std::time::{Duration, Instant};

use harness::infra::{ProcessRedis, RedisNode, RedisSpec};
use harness::toxiproxy::server::ServerOptions;
use harness::toxiproxy::FaultProxy;

/// A Redis and a proxy in front of it, kept alive for a bench's duration.
pub struct BenchRig {
    pub redis: ProcessRedis,
    pub faults: FaultProxy,
    pub proxied_url: String,
    pub proxy_name: String,
}

impl BenchRig {
    pub async fn start() -> BenchRig {
        let redis = ProcessRedis::start(RedisSpec::default())
            .await
            .expect("start redis-server (is it installed? run ./ci/test once)");
        let faults =
            FaultProxy::from_env(ServerOptions { seed: Some(1), ..Default::default() }).await.expect("fault proxy");
        let proxy = faults
            .client()
            .create_proxy(&format!("bench-{}", redis.port()), "127.0.0.1:0", &redis.addr())
            .await
            .expect("proxy");
        BenchRig { proxied_url: format!("redis://{}/", proxy.listen), proxy_name: proxy.name, redis, faults }
    }
}

/// A multiplexed connection with generous limits (benches measure, they do not time out).
pub async fn connect(url: &str) -> redis::aio::MultiplexedConnection {
    let limit = Some(Duration::from_secs(10));
    let config = redis::AsyncConnectionConfig::new().set_connection_timeout(limit).set_response_timeout(limit);
    redis::Client::open(url).unwrap().get_multiplexed_async_connection_with_config(&config).await.expect("connect")
}

pub async fn ping(c: &mut redis::aio::MultiplexedConnection) -> Duration {
    let t = Instant::now();
    let _: String = redis::cmd("PING").query_async(c).await.expect("PING");
    t.elapsed()
}

pub use harness::quantile;

/// Writes `value` as pretty JSON to `reports/out/bench/<name>.json` at the workspace root.
pub fn write_result(name: &str, value: &serde_json::Value) -> std::io::Result<std::path::PathBuf> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../reports/out/bench");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_string_pretty(value)? + "\n")?;
    Ok(path)
}

/// Quantiles in microseconds, as the summaries print and store them.
pub fn quantiles_us(samples: &mut [Duration]) -> serde_json::Value {
    let us = |d: Duration| (d.as_secs_f64() * 1e7).round() / 10.0;
    serde_json::json!({
        "samples": samples.len(),
        "p50": us(quantile(samples, 0.5)),
        "p90": us(quantile(samples, 0.9)),
        "p99": us(quantile(samples, 0.99)),
        "max": us(quantile(samples, 1.0)),
    })
}

/// A global allocator that counts live heap bytes, for memory-per-item figures measured
/// in the bench process itself (no RSS noise from the allocator's caching).
pub struct CountingAlloc;

static LIVE_BYTES: std::sync::atomic::AtomicIsize = std::sync::atomic::AtomicIsize::new(0);

impl CountingAlloc {
    /// Heap bytes currently allocated through this allocator.
    pub fn live_bytes() -> isize {
        LIVE_BYTES.load(std::sync::atomic::Ordering::Relaxed)
    }
}

// SAFETY: delegates every call to the system allocator unchanged; only counts sizes.
unsafe impl std::alloc::GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        let p = unsafe { std::alloc::System.alloc(layout) };
        if !p.is_null() {
            LIVE_BYTES.fetch_add(layout.size() as isize, std::sync::atomic::Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        unsafe { std::alloc::System.dealloc(ptr, layout) };
        LIVE_BYTES.fetch_sub(layout.size() as isize, std::sync::atomic::Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { std::alloc::System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE_BYTES.fetch_add(new_size as isize - layout.size() as isize, std::sync::atomic::Ordering::Relaxed);
        }
        p
    }
}

/// The proxy's targets (issue 11), judged on one phase of a `proxy_overhead` result
/// (`quiet` or `loaded`): (target, bound, unit, value, limit, met). A missing figure is
/// `None`, never a pass.
type ProxyTargetRow = (&'static str, &'static str, &'static str, Option<f64>, Option<f64>, Option<bool>);

fn proxy_phase_targets(phase: &serde_json::Value) -> Vec<ProxyTargetRow> {
    let q = |path: &[&str], key: &str| -> Option<f64> {
        let mut v = phase;
        for p in path {
            v = v.get(*p)?;
        }
        v.get(key)?.as_f64()
    };
    let mut rows = Vec::new();
    for (label50, label99, run) in [
        ("PING p50, 1 client: proxied / direct", "PING p99, 1 client: proxied", "ping_one_client"),
        ("PING p50, 200 connections: proxied / direct", "PING p99, 200 connections: proxied", "ping_200_connections"),
    ] {
        let ratio = q(&[run, "proxied"], "p50").zip(q(&[run, "direct"], "p50")).map(|(p, d)| p / d);
        rows.push((label50, "<= 1.3x", "x", ratio, Some(1.3), ratio.map(|r| r <= 1.3)));
        if run == "ping_one_client" {
            // Not the target: the floor any forwarder has on this machine, so a
            // missed 1.3x can be told apart from a slow proxy.
            let vs = q(&[run, "proxied"], "p50").zip(q(&[run, "control"], "p50")).map(|(p, c)| p / c);
            rows.push((
                "PING p50, 1 client: proxied / control forwarder",
                "<= 1.1x",
                "x",
                vs,
                Some(1.1),
                vs.map(|r| r <= 1.1),
            ));
        }
        let p99 = q(&[run, "proxied"], "p99");
        let limit = q(&[run, "direct"], "p99").map(|d| 2.0 * d + 200.0);
        let met = p99.zip(limit).map(|(p, l)| p <= l);
        rows.push((label99, "<= 2x direct p99 + 200 us", "us", p99, limit, met));
    }
    let thr = q(&["pipelined_set"], "ratio");
    rows.push(("pipelined SET throughput: proxied / direct", ">= 0.8", "x", thr, Some(0.8), thr.map(|r| r >= 0.8)));
    let requested = q(&["latency_toxic"], "requested_ms");
    let over = |k: &str| Some(q(&["latency_toxic"], k)? - requested?);
    let (o50, o99) = (over("added_p50_ms"), over("added_p99_ms"));
    rows.push((
        "5 ms latency toxic: added p50 - requested",
        "within [-0.1, +0.3] ms",
        "ms",
        o50,
        Some(0.3),
        o50.map(|o| (-0.1..=0.3).contains(&o)),
    ));
    rows.push(("5 ms latency toxic: added p99 - requested", "<= +1 ms", "ms", o99, Some(1.0), o99.map(|o| o <= 1.0)));
    rows
}

/// Every proxy target with its quiet verdict (the one that counts) and the loaded figure
/// beside it, as `proxy_overhead.json` stores them.
pub fn proxy_targets(result: &serde_json::Value) -> serde_json::Value {
    let quiet = proxy_phase_targets(&result["quiet"]);
    let loaded = proxy_phase_targets(&result["loaded"]);
    let rows = quiet
        .into_iter()
        .zip(loaded)
        .map(|((what, bound, unit, qv, ql, qm), (_, _, _, lv, ll, lm))| {
            serde_json::json!({
                "target": what, "bound": bound, "unit": unit,
                "quiet": qv, "quiet_limit": ql, "quiet_met": qm,
                "loaded": lv, "loaded_limit": ll, "loaded_met": lm,
            })
        })
        .collect();
    serde_json::Value::Array(rows)
}

/// The benches whose results the summary gathers, in report order.
pub const BENCHES: [&str; 4] = ["notify_latency", "stream_catchup", "waiters_scale", "proxy_overhead"];

fn bench_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../reports/out/bench")
}

/// `p50` of `v[key]`, when present.
fn p50(v: &serde_json::Value, key: &str) -> Option<f64> {
    v.get(key)?.get("p50")?.as_f64()
}

/// `p99` of `v[key]`, when present.
fn p99(v: &serde_json::Value, key: &str) -> Option<f64> {
    v.get(key)?.get("p99")?.as_f64()
}

/// One target of the design: what is measured, against which baseline, the bound, the
/// measured value, and whether it is met.
fn target_row(
    md: &mut String,
    json: &mut Vec<serde_json::Value>,
    what: &str,
    against: &str,
    bound: &str,
    value: Option<f64>,
    met: Option<bool>,
) {
    let shown = value.map_or("not measured".to_string(), |v| format!("{v:.2}"));
    let verdict = match met {
        Some(true) => "met",
        Some(false) => "**NOT MET**",
        None => "not measured",
    };
    md.push_str(&format!("| {what} | {against} | {bound} | {shown} | {verdict} |\n"));
    json.push(serde_json::json!({ "target": what, "baseline": against, "bound": bound, "value": value, "met": met }));
}

/// The targets the benches exist for, each against the baseline it is defined on.
fn targets(load: &dyn Fn(&str) -> Option<serde_json::Value>) -> (String, serde_json::Value) {
    let mut md =
        String::from("\n## Targets\n\n| target | baseline | bound | measured | verdict |\n|---|---|---|---|---|\n");
    let mut rows = Vec::new();
    let notify = load("notify_latency");
    let clean = notify.as_ref().and_then(|v| v["conditions"].get("clean").cloned());
    let ratio = |q: fn(&serde_json::Value, &str) -> Option<f64>| {
        clean.as_ref().and_then(|c| Some(q(c, "hybrid")? / q(c, "raw_pubsub")?))
    };
    let (r50, r99) = (ratio(p50), ratio(p99));
    target_row(
        &mut md,
        &mut rows,
        "hybrid notify latency p50, clean",
        "raw Pub/Sub",
        "<= 1.5x",
        r50,
        r50.map(|r| r <= 1.5),
    );
    target_row(&mut md, &mut rows, "hybrid notify latency p99, clean", "raw Pub/Sub", "reported", r99, None);
    let scale = load("waiters_scale");
    let col = |k: &str| -> Vec<f64> {
        scale
            .as_ref()
            .and_then(|v| v["rows"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|r| r[k].as_f64())
            .collect()
    };
    let max = |v: &[f64]| v.iter().copied().fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))));
    let min = |v: &[f64]| v.iter().copied().fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.min(x))));
    let conns = max(&col("connections"));
    target_row(
        &mut md,
        &mut rows,
        "Redis connections at 100 / 1,000 / 10,000 waiters",
        "absolute",
        "<= 2",
        conns,
        conns.map(|c| c <= 2.0),
    );
    let idle = col("idle_commands_per_s");
    let spread = max(&idle).zip(min(&idle)).map(|(a, b)| a / b.max(1e-9));
    target_row(
        &mut md,
        &mut rows,
        "idle commands/s, most over fewest waiters",
        "itself at 100 waiters",
        "<= 1.5x (independent of the count)",
        spread,
        spread.map(|x| x <= 1.5),
    );
    let heap = max(&col("bytes_per_waiter"));
    target_row(&mut md, &mut rows, "heap bytes per waiter", "absolute", "< 2,048", heap, heap.map(|h| h < 2048.0));
    let proxy = load("proxy_overhead").map(|v| proxy_targets(&v)).unwrap_or_default();
    let proxy_rows = proxy.as_array().cloned().unwrap_or_default();
    if proxy_rows.is_empty() {
        target_row(&mut md, &mut rows, "proxy: PING p50, 1 client", "direct", "<= 1.3x", None, None);
    }
    for t in proxy_rows {
        let what = format!("proxy, quiet: {}", t["target"].as_str().unwrap_or(""));
        let bound = t["bound"].as_str().unwrap_or("");
        target_row(&mut md, &mut rows, &what, "direct", bound, t["quiet"].as_f64(), t["quiet_met"].as_bool());
    }
    (md, serde_json::Value::Array(rows))
}

/// Rebuilds `summary.json` and `summary.md` in `reports/out/bench/` from every bench
/// result there: p50s and ratios against pub/sub-only (the design the hybrid replaces),
/// plus the figures of the benches without a pub/sub-only side. Benches not run yet are
/// listed as missing. Returns the Markdown file's path.
pub fn write_summary() -> std::io::Result<std::path::PathBuf> {
    write_summary_in(&bench_dir())
}

/// [`write_summary`] for the results in `dir`.
pub fn write_summary_in(dir: &std::path::Path) -> std::io::Result<std::path::PathBuf> {
    let load = |name: &str| -> Option<serde_json::Value> {
        serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{name}.json"))).ok()?).ok()
    };
    let mut md = String::from("# Bench summary\n\nTables: ratios are p50 against pub/sub-only (the design the hybrid replaces), measured side by side in one run; below 1 is faster; p99 follows each. Targets are each against the baseline they are defined on (named in the table). Absolute times depend on the machine; compare ratios.\n");
    let mut json = serde_json::json!({ "baseline": "pubsub-only", "missing": [] });
    let (target_md, target_json) = targets(&load);
    md.push_str(&target_md);
    json["targets"] = target_json;
    let ratio_row = |md: &mut String,
                     label: &str,
                     base: (f64, Option<f64>),
                     cols: &[(&str, Option<f64>, Option<f64>)]|
     -> serde_json::Value {
        let mut r = serde_json::Map::new();
        let tail = |p99: Option<f64>| p99.map_or(String::new(), |p| format!(", p99 {p:.1}"));
        md.push_str(&format!("| {label} | {:.1}{} |", base.0, tail(base.1)));
        for (name, v, v99) in cols {
            match v {
                Some(v) => {
                    md.push_str(&format!(" {v:.1} ({:.2}x){} |", v / base.0, tail(*v99)));
                    r.insert(name.to_string(), serde_json::json!({ "p50_us": v, "p99_us": v99, "ratio": v / base.0 }));
                }
                None => md.push_str(" n/a |"),
            }
        }
        md.push('\n');
        serde_json::Value::Object(r)
    };
    for name in BENCHES {
        let Some(v) = load(name) else {
            json["missing"].as_array_mut().expect("array").push(name.into());
            continue;
        };
        match name {
            "notify_latency" => {
                md.push_str("\n## notify_latency (respond to wake, through the proxy, us)\n\n| condition | pub/sub-only p50 | hybrid p50 (ratio) | polling-only p50 (ratio) | raw Pub/Sub p50 (ratio) |\n|---|---|---|---|---|\n");
                let mut out = serde_json::Map::new();
                // Mildest condition first: clean, then by added delay.
                let mut conditions: Vec<(&String, &serde_json::Value)> =
                    v["conditions"].as_object().into_iter().flatten().collect();
                conditions.sort_by_key(|(_, c)| (c["latency_ms"].as_u64(), c["jitter_ms"].as_u64()));
                for (cond, c) in conditions {
                    let Some(base) = p50(c, "pubsub_only") else { continue };
                    let cols = [
                        ("hybrid", p50(c, "hybrid"), p99(c, "hybrid")),
                        ("polling_only", p50(c, "polling_only"), p99(c, "polling_only")),
                        ("raw_pubsub", p50(c, "raw_pubsub"), p99(c, "raw_pubsub")),
                    ];
                    let mut r = ratio_row(&mut md, cond, (base, p99(c, "pubsub_only")), &cols);
                    r["pubsub_only_p50_us"] = base.into();
                    out.insert(cond.clone(), r);
                }
                json["notify_latency"] = out.into();
            }
            "stream_catchup" => {
                md.push_str("\n## stream_catchup (us)\n\n| measure | pub/sub-only p50 | hybrid p50 (ratio) | polling-only p50 (ratio) |\n|---|---|---|---|\n");
                let live = &v["live_chunk"];
                let mut out = serde_json::Map::new();
                if let Some(base) = p50(live, "pubsub_only") {
                    let cols = [
                        ("hybrid", p50(live, "hybrid"), p99(live, "hybrid")),
                        ("polling_only", p50(live, "polling_only"), p99(live, "polling_only")),
                    ];
                    let mut r =
                        ratio_row(&mut md, "live chunk: publish to delivered", (base, p99(live, "pubsub_only")), &cols);
                    r["pubsub_only_p50_us"] = base.into();
                    out.insert("live_chunk".into(), r);
                }
                let late = &v["late_joiner"];
                let chunks = late["chunks"].as_u64().unwrap_or(0);
                md.push_str(&format!(
                    "| late joiner: {chunks} stored chunks from index 0 | delivered {} of {chunks} | {} | {} |\n",
                    late["pubsub_only_delivered"],
                    p50(late, "hybrid").map_or("n/a".into(), |x| format!("{x:.1}")),
                    p50(late, "polling_only").map_or("n/a".into(), |x| format!("{x:.1}")),
                ));
                out.insert("late_joiner".into(), late.clone());
                json["stream_catchup"] = out.into();
            }
            "waiters_scale" => {
                md.push_str("\n## waiters_scale (hybrid)\n\n| waiters | Redis connections | idle commands/s | heap bytes per waiter |\n|---|---|---|---|\n");
                for r in v["rows"].as_array().into_iter().flatten() {
                    md.push_str(&format!(
                        "| {} | {} | {:.1} | {:.0} |\n",
                        r["waiters"],
                        r["connections"],
                        r["idle_commands_per_s"].as_f64().unwrap_or(0.0),
                        r["bytes_per_waiter"].as_f64().unwrap_or(0.0)
                    ));
                }
                json["waiters_scale"] = v["rows"].clone();
            }
            _ => {
                md.push_str(&proxy_section(&v));
                json["proxy_overhead"] = proxy_targets(&v);
            }
        }
    }
    let missing = json["missing"].as_array().map_or(0, Vec::len);
    if missing > 0 {
        md.push_str(&format!("\nNot run yet: {}.\n", json["missing"]));
    }
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("summary.json"), serde_json::to_string_pretty(&json)? + "\n")?;
    let path = dir.join("summary.md");
    std::fs::write(&path, md)?;
    Ok(path)
}

/// The proxy_overhead section: each target, quiet and loaded side by side, then the raw
/// figures that explain them (the control forwarder's PING beside the proxy's).
fn proxy_section(v: &serde_json::Value) -> String {
    let fmt = |x: Option<f64>, unit: &str| x.map_or("n/a".into(), |x| format!("{x:.2} {unit}"));
    let verdict = |m: Option<bool>| match m {
        Some(true) => "met",
        Some(false) => "**NOT MET**",
        None => "n/a",
    };
    let targets = proxy_targets(v);
    let mut md = String::from("\n## proxy_overhead (direct vs proxied, interleaved)\n\n| target | bound | quiet | limit | verdict | loaded | limit | within |\n|---|---|---|---|---|---|---|---|\n");
    for t in targets.as_array().into_iter().flatten() {
        let unit = t["unit"].as_str().unwrap_or("");
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
            t["target"].as_str().unwrap_or(""),
            t["bound"].as_str().unwrap_or(""),
            fmt(t["quiet"].as_f64(), unit),
            fmt(t["quiet_limit"].as_f64(), unit),
            verdict(t["quiet_met"].as_bool()),
            fmt(t["loaded"].as_f64(), unit),
            fmt(t["loaded_limit"].as_f64(), unit),
            match t["loaded_met"].as_bool() {
                Some(true) => "yes",
                Some(false) => "no",
                None => "n/a",
            },
        ));
    }
    if let Some(why) = v["loaded"]["skipped"].as_str() {
        md.push_str(&format!("\nLoaded run skipped: {why}.\n"));
    } else if let Some(load) = v["loaded"]["load"].as_str() {
        md.push_str(&format!("\nLoaded: beside `{load}`.\n"));
    }
    md.push_str("\nPING p50 / p99 (us), one client: direct, the proxy, and the control forwarder (a blocking thread per direction: the floor of any extra hop).\n\n| run | direct | proxy | control |\n|---|---|---|---|\n");
    for phase in ["quiet", "loaded"] {
        let one = &v[phase]["ping_one_client"];
        let cell = |k: &str| match (p50(one, k), p99(one, k)) {
            (Some(a), Some(b)) => format!("{a:.1} / {b:.1}"),
            _ => "n/a".into(),
        };
        md.push_str(&format!("| {phase} | {} | {} | {} |\n", cell("direct"), cell("proxied"), cell("control")));
    }
    md
}

/// Writes a bench's result and rebuilds the summary, saying where (or why not) on stdout.
pub fn record(name: &str, value: &serde_json::Value) {
    match write_result(name, value).and_then(|_| write_summary()) {
        Ok(path) => println!("{name}: result written; summary at {}", path.display()),
        Err(e) => eprintln!("{name}: could not write the bench result or summary: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_gives_ratios_against_pubsub_only_and_names_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let q = |p50: f64| serde_json::json!({ "p50": p50, "samples": 10 });
        let notify = serde_json::json!({ "bench": "notify_latency", "conditions": {
            "latency_5ms": { "latency_ms": 5, "jitter_ms": 0, "pubsub_only": q(100.0), "hybrid": q(200.0), "polling_only": q(5000.0), "raw_pubsub": q(90.0) },
            "clean": { "latency_ms": 0, "jitter_ms": 0, "pubsub_only": q(10.0), "hybrid": q(15.0), "polling_only": q(2500.0), "raw_pubsub": q(8.0) },
        }});
        std::fs::write(dir.path().join("notify_latency.json"), notify.to_string()).unwrap();
        let md = std::fs::read_to_string(write_summary_in(dir.path()).unwrap()).unwrap();
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("summary.json")).unwrap()).unwrap();
        assert_eq!(json["notify_latency"]["clean"]["hybrid"]["ratio"], 1.5);
        assert_eq!(json["notify_latency"]["latency_5ms"]["polling_only"]["ratio"], 50.0);
        assert!(md.contains("| clean | 10.0 | 15.0 (1.50x) |"), "{md}");
        // The targets name their own baseline: the hybrid against raw Pub/Sub, 15 / 8.
        assert!(
            md.contains("| hybrid notify latency p50, clean | raw Pub/Sub | <= 1.5x | 1.88 | **NOT MET** |"),
            "{md}"
        );
        assert!(md.contains("| proxy: PING p50, 1 client | direct | <= 1.3x | not measured | not measured |"), "{md}");
        assert_eq!(json["targets"][0]["met"], false);
        assert!(md.find("| clean").unwrap() < md.find("| latency_5ms").unwrap(), "clean first:\n{md}");
        assert_eq!(json["missing"], serde_json::json!(["stream_catchup", "waiters_scale", "proxy_overhead"]));
    }

    /// A result that misses every proxy target must fail every one; a missing figure is not
    /// a pass; the loaded run is shown but not judged.
    #[test]
    fn proxy_targets_fail_when_missed_and_pass_when_met() {
        let q = |p50: f64, p99: f64| serde_json::json!({ "p50": p50, "p99": p99 });
        let phase = |proxied: (f64, f64), ratio: f64, added: (f64, f64)| {
            serde_json::json!({
                "ping_one_client": { "direct": q(50.0, 100.0), "proxied": q(proxied.0, proxied.1) },
                "ping_200_connections": { "direct": q(50.0, 100.0), "proxied": q(proxied.0, proxied.1) },
                "pipelined_set": { "ratio": ratio },
                "latency_toxic": { "requested_ms": 5, "added_p50_ms": added.0, "added_p99_ms": added.1 },
            })
        };
        let with_control = |mut p: serde_json::Value, control_p50: f64| {
            p["ping_one_client"]["control"] = q(control_p50, 100.0);
            p
        };
        let good = with_control(phase((60.0, 390.0), 0.9, (5.1, 5.8)), 58.0);
        let bad = with_control(phase((70.0, 410.0), 0.7, (5.5, 6.2)), 50.0);
        let verdicts = |r: &serde_json::Value| -> Vec<Option<bool>> {
            r.as_array().unwrap().iter().map(|t| t["quiet_met"].as_bool()).collect()
        };
        let met = proxy_targets(&serde_json::json!({ "quiet": good, "loaded": bad }));
        assert_eq!(verdicts(&met), vec![Some(true); 8], "{met:#}");
        assert_eq!(met[2]["quiet_limit"], 400.0, "2 x 100 us + 200 us");
        assert_eq!(met[2]["loaded_met"], false);
        let missed = proxy_targets(&serde_json::json!({ "quiet": bad.clone(), "loaded": { "skipped": "no" } }));
        assert_eq!(verdicts(&missed), vec![Some(false); 8], "{missed:#}");
        let undershoot = phase((60.0, 390.0), 0.9, (4.8, 5.8));
        let under = proxy_targets(&serde_json::json!({ "quiet": undershoot }));
        assert_eq!(under[6]["quiet_met"], false, "a toxic that adds less than asked fails too");
        let none = proxy_targets(&serde_json::json!({}));
        assert!(verdicts(&none).iter().all(Option::is_none));

        let dir = tempfile::tempdir().unwrap();
        let result =
            serde_json::json!({ "quiet": good, "loaded": { "skipped": "stress-ng not started" }, "targets": met });
        std::fs::write(dir.path().join("proxy_overhead.json"), result.to_string()).unwrap();
        let md = std::fs::read_to_string(write_summary_in(dir.path()).unwrap()).unwrap();
        assert!(
            md.contains(
                "| proxy, quiet: PING p99, 1 client: proxied | direct | <= 2x direct p99 + 200 us | 390.00 | met |"
            ),
            "{md}"
        );
        assert!(md.contains("Loaded run skipped: stress-ng not started."), "{md}");
    }
}
