//! `hybrid-chaos run` / `list` end to end: report files and fields, exit codes, bad input,
//! reproducibility of verdicts from a seed. (Interrupts: `interrupt.rs`.)

use std::path::Path;

mod cli_support;
#[path = "../../harness/tests/support/mod.rs"]
mod support;

use cli_support::{assert_bad_input, cli as run};

/// The one run directory under `out` (each test runs once into its own `--out`).
fn run_dir(out: &Path) -> std::path::PathBuf {
    let dirs: Vec<_> =
        std::fs::read_dir(out).unwrap().map(|e| e.unwrap().path()).filter(|p| p.is_dir() && !p.is_symlink()).collect();
    assert_eq!(dirs.len(), 1, "one run directory expected in {}: {dirs:?}", out.display());
    dirs[0].clone()
}

fn verdicts(dir: &Path) -> Vec<(String, String, String)> {
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run_dir(dir).join("report.json")).unwrap()).unwrap();
    report["scenarios"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["scenario"].as_str().unwrap().into(),
                r["strategy"].as_str().unwrap().into(),
                r["verdict"].as_str().unwrap().into(),
            )
        })
        .collect()
}

#[test]
fn a_run_writes_the_report_with_its_fixed_fields() {
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().to_str().unwrap();
    let (code, stdout, stderr) =
        run(&["run", "--quick", "--scenario", "clean", "--strategy", "hybrid", "--seed", "5", "--out", dir], &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("1 pairs: 1 valid, 0 invalid, 0 unknown; 0 lost; every verdict as expected"), "{stdout}");
    assert!(stdout.contains("report.html (also report.md"), "{stdout}");
    // A run of a subset (here one scenario, one strategy) is a reproduce run: it leaves
    // `latest` to the last full run.
    assert!(!out.path().join("latest").exists(), "a one-scenario run moved latest");
    let latest = run_dir(out.path());
    for f in ["report.json", "report.md", "report.html", "history.jsonl"] {
        assert!(latest.join(f).is_file(), "{f} missing");
    }
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(latest.join("report.json")).unwrap()).unwrap();
    for k in ["run_id", "seed", "started_at", "redis_version", "toxiproxy", "scenarios"] {
        assert!(report.get(k).is_some(), "report.json lacks {k}");
    }
    assert_eq!(report["seed"], 5);
    assert_eq!(report["toxiproxy"], "embedded");
    let row = &report["scenarios"][0];
    for k in [
        "scenario",
        "strategy",
        "verdict",
        "expected_verdict",
        "attempted",
        "acknowledged",
        "delivered",
        "lost",
        "duplicated",
        "notified",
        "rescued_by_polling",
        "latency_ms",
        "recovery_ms",
        "redis_commands_per_message",
        "leaks",
    ] {
        assert!(row.get(k).is_some(), "row lacks {k}: {row}");
    }
    for k in ["p50", "p90", "p99", "max"] {
        assert!(row["latency_ms"].get(k).is_some());
    }
    for k in ["subscriptions", "connections", "keys_without_ttl", "waiters"] {
        assert_eq!(row["leaks"][k], 0, "leak {k} in a clean run: {row}");
    }
    assert_eq!((row["verdict"].as_str(), row["lost"].as_u64()), (Some("valid"), Some(0)));
    let html = std::fs::read_to_string(latest.join("report.html")).unwrap();
    assert!(html.contains("<svg"), "no chart in report.html");
    assert!(!html.contains("src=") && !html.contains("<link"), "report.html loads something from elsewhere");
}

#[test]
fn the_same_seed_gives_the_same_verdicts() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for d in [&a, &b] {
        let (code, _, stderr) = run(
            &[
                "run",
                "--quick",
                "--scenario",
                "resume-from-checkpoint",
                "--seed",
                "11",
                "--out",
                d.path().to_str().unwrap(),
            ],
            &[],
        );
        assert_eq!(code, 0, "{stderr}");
    }
    let (va, vb) = (verdicts(a.path()), verdicts(b.path()));
    assert_eq!(va.len(), 3);
    assert_eq!(va, vb);
    assert!(va.iter().any(|(_, s, v)| s == "pubsub-only" && v == "invalid"), "the canary was not caught: {va:?}");
    // Every file a real run writes reads back through compare's checks (each history line
    // is an event again), and the same verdicts are no safety regression.
    let (da, db) = (run_dir(a.path()), run_dir(b.path()));
    let (code, out, stderr) = run(&["compare", da.to_str().unwrap(), db.to_str().unwrap()], &[]);
    assert_eq!(code, 0, "{out}{stderr}");
    assert!(out.contains("no safety regression") && out.contains("3 pairs in both runs"), "{out}");
}

#[test]
fn bad_input_is_one_line_and_exit_2() {
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    assert_bad_input(&[
        (&["run", "--scenario", "nope"], &[], "valid: clean, latency"),
        (&["run", "--strategy", "carrier-pigeon"], &[], "valid: hybrid, pubsub-only, polling-only"),
        (&["run", "--strategy", "hybrid-durable"], &[], "runs on the sentinel topology (--topology sentinel)"),
        (&["run", "--scenario", "clean", "--out", file.to_str().unwrap()], &[], "cannot write to"),
        (
            &["run", "--quick", "--scenario", "clean", "--out", out.path().to_str().unwrap()],
            &[("HYBRID_CHAOS_REDIS_SERVER", "/nonexistent/redis-server")],
            "apt-get install redis-server",
        ),
    ]);
}

#[test]
fn compare_reports_a_regression_and_exits_1_and_no_change_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, verdict: &str, lost: u64| {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        let report = serde_json::json!({ "run_id": name, "scenarios": [
            { "scenario": "subscriber-blackhole", "strategy": "hybrid", "verdict": verdict, "lost": lost,
              "delivered": 8, "latency_ms": { "p50": 20.0, "p90": 40.0, "p99": 60.0, "max": 70.0 } }
        ]});
        std::fs::write(d.join("report.json"), report.to_string()).unwrap();
        d
    };
    let (main, same, branch) = (write("main", "valid", 0), write("same", "valid", 0), write("branch", "invalid", 3));
    let (code, out, err) = run(&["compare", main.to_str().unwrap(), same.to_str().unwrap()], &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("No change."), "{out}");
    let (code, out, err) = run(&["compare", main.to_str().unwrap(), branch.to_str().unwrap()], &[]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("B IS WORSE ON SAFETY") && out.contains("valid -> invalid | 0 -> 3"), "{out}");
    assert!(branch.join("compare.md").exists() && branch.join("compare.html").exists());
    assert_bad_input(&[(&["compare", "/nonexistent-a", "/nonexistent-b"], &[], "a run directory holds report.json")]);
    // Damaged input is exit 2 naming the file, the line and the field; it used to compare
    // as "no safety regression", exit 0, hiding the valid -> invalid change.
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::write(empty.join("report.json"), "{}").unwrap();
    let cut = write("cut", "valid", 0);
    std::fs::write(cut.join("history.jsonl"), "{\"f\":\"wait\",\"id\":\"a\"\n").unwrap();
    let (empty_s, cut_s, branch_s) =
        (empty.to_str().unwrap(), cut.to_str().unwrap(), branch.to_str().unwrap().to_string());
    let empty_report = format!("{empty_s}/report.json: line 1: missing field `run_id`");
    let cut_history = format!("{cut_s}/history.jsonl: line 1: not a JSON event");
    assert_bad_input(&[
        (&["compare", empty_s, &branch_s], &[], &empty_report),
        (&["compare", cut_s, &branch_s], &[], &cut_history),
    ]);
    // A B that cannot be written to: the error names the file.
    std::fs::remove_file(branch.join("compare.md")).unwrap();
    std::fs::create_dir(branch.join("compare.md")).unwrap();
    let unwritable = format!("cannot write {branch_s}/compare.md");
    assert_bad_input(&[(&["compare", main.to_str().unwrap(), &branch_s], &[], &unwritable)]);
}

/// Logs written to a pipe or a file carry no colour codes (they used to: escape sequences in
/// CI logs and in the files users redirected stderr to).
#[test]
fn logs_carry_no_colour_codes_when_stderr_is_not_a_terminal() {
    let out = tempfile::tempdir().unwrap();
    let (code, _, stderr) = run(
        &["run", "--quick", "--scenario", "clean", "--strategy", "hybrid", "--out", out.path().to_str().unwrap()],
        &[("HYBRID_CHAOS_LOG", "debug")],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("DEBUG"), "no log lines to judge: {stderr}");
    assert!(!stderr.contains('\x1b'), "colour codes in a piped stderr: {:?}", &stderr[..stderr.len().min(400)]);
}

/// A run whose Redis never starts fails naming it, exit 2, and leaves no empty run directory
/// behind (it used to).
#[test]
fn a_run_whose_redis_never_starts_leaves_no_run_directory() {
    let out = tempfile::tempdir().unwrap();
    let (code, _, stderr) = run(
        &["run", "--quick", "--scenario", "clean", "--strategy", "hybrid", "--out", out.path().to_str().unwrap()],
        &[("HYBRID_CHAOS_REDIS_SERVER", "/bin/false")],
    );
    assert_eq!(code, 2, "{stderr}");
    let left: Vec<_> = std::fs::read_dir(out.path()).unwrap().map(|e| e.unwrap().path()).collect();
    assert!(left.is_empty(), "a run that never started left {left:?}");
}

/// An implementation that answers every wait at once with an empty response is judged:
/// invalid rows with the evidence, a report, exit 1. It used to stop every scenario with
/// `waiters did not start within 10 s` and exit 2, as if the machine were broken.
#[test]
fn an_implementation_that_answers_nonsense_at_once_is_judged_not_an_infrastructure_failure() {
    let out = tempfile::tempdir().unwrap();
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/implementations/answers_at_once.py");
    let spec = format!("bad=python3 {fixture}");
    let (code, stdout, stderr) = run(
        &["run", "--quick", "--scenario", "clean", "--strategy", "bad", "--implementation", &spec, "--seed", "1"]
            .into_iter()
            .chain(["--out", out.path().to_str().unwrap()])
            .collect::<Vec<_>>(),
        &[],
    );
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    assert_eq!(verdicts(out.path()), vec![("clean".into(), "bad".into(), "invalid".into())]);
    let md = std::fs::read_to_string(run_dir(out.path()).join("report.md")).unwrap();
    assert!(md.contains("bad: lost invalid"), "{md}");
    let json = std::fs::read_to_string(run_dir(out.path()).join("report.json")).unwrap();
    assert!(json.contains("with no token"), "the empty answers are not in the evidence: {json}");
}
