//! Implementations the harness did not write, over the process protocol (PROTOCOL.md), end to
//! end through `hybrid-chaos run --implementation`: the Rust reference served over the
//! protocol gets the verdicts it gets in-process, feedback and streams; a program that crashes, prints garbage or
//! never answers is a `protocol` finding, the run goes on, and no process of it is left (a
//! grandchild in its own session included); a
//! command that cannot describe itself is refused before anything runs.

use std::collections::BTreeMap;
use std::path::Path;

mod cli_support;

use cli_support::{assert_bad_input, cli, BIN};

fn rows(out: &Path) -> Vec<serde_json::Value> {
    let dirs: Vec<_> =
        std::fs::read_dir(out).unwrap().map(|e| e.unwrap().path()).filter(|p| p.is_dir() && !p.is_symlink()).collect();
    assert_eq!(dirs.len(), 1, "one run directory expected: {dirs:?}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dirs[0].join("report.json")).unwrap()).unwrap();
    report["scenarios"].as_array().unwrap().clone()
}

/// Pids of processes whose environment holds `HC_TEST_MARK=mark`.
fn marked(mark: &str) -> Vec<u32> {
    let needle = format!("HC_TEST_MARK={mark}");
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            env.split(|b| *b == 0).any(|kv| kv == needle.as_bytes())
        })
        .filter(|pid| {
            // Zombies hold nothing; they are reaped by whoever waits.
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            !stat.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z')
        })
        .collect()
}

#[test]
fn the_reference_over_the_protocol_gets_the_verdicts_it_gets_in_process() {
    let out = tempfile::tempdir().unwrap();
    let served = format!("rust={BIN} serve-impl --strategy hybrid");
    // Two pairs at a time: this test runs beside the rest of the suite, and a busy machine
    // is the bounds' business, not the protocol's.
    let mut args =
        vec!["run", "--quick", "--seed", "7", "--jobs", "2", "--strategy", "hybrid", "--implementation", &served];
    let scenarios =
        ["clean", "subscriber-blackhole", "resume-from-checkpoint", "waiter-churn-cleanup", "subscribe-race"];
    for s in &scenarios {
        args.extend(["--scenario", s]);
    }
    args.extend(["--out", out.path().to_str().unwrap()]);
    let (code, stdout, stderr) = cli(&args, &[]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let mut by: BTreeMap<(String, String), String> = BTreeMap::new();
    for r in rows(out.path()) {
        by.insert(
            (r["scenario"].as_str().unwrap().into(), r["strategy"].as_str().unwrap().into()),
            r["verdict"].as_str().unwrap().into(),
        );
    }
    for s in scenarios {
        let in_process = &by[&(s.to_string(), "hybrid".to_string())];
        let over = &by[&(s.to_string(), "rust".to_string())];
        assert_eq!(over, in_process, "{s}: over the protocol {over}, in-process {in_process}");
        assert_eq!(over, "valid", "{s}");
    }
}

/// Answers what it must to get started, then never answers a wait or a respond (or, given
/// `crash`, exits with status 3 at the first wait). At init it starts `setsid sleep 600`: a
/// grandchild in a session of its own, out of reach of its process group.
const STUB: &str = r#"
import json, subprocess, sys
crash = sys.argv[1:] == ["crash"]
for line in sys.stdin:
    m = json.loads(line)
    if m["op"] == "init":
        subprocess.Popen(["setsid", "sleep", "600"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    if m["op"] == "wait" and crash:
        print("crashing on purpose", file=sys.stderr)
        sys.exit(3)
    if m["op"] == "hello":
        v = {"name": "hangs", "notifies": True, "polls": True}
    elif m["op"] in ("init", "shutdown"):
        v = {}
    elif m["op"] == "stats":
        v = {"waiters": 0, "channels": 0, "pending_polls": 0, "reconnects": 0}
    else:
        continue  # wait and respond: never answered
    print(json.dumps({"req": m["req"], "outcome": "ok", "value": v}), flush=True)
"#;

#[test]
fn crash_garbage_and_hang_are_findings_the_run_goes_on_and_no_process_is_left() {
    let (out, stub, mark) = stub_setup();
    let served = format!("HC_TEST_MARK={mark} {BIN} serve-impl --strategy hybrid");
    let crash = format!("crash=HC_TEST_MARK={mark} python3 {} crash", stub.display());
    // The reference with a line of garbage after its 3rd (GNU sed -u: unbuffered both ways;
    // awk and head would hold the answers back).
    let garbage = format!("garbage={served} | sed -u '3a this is not json'");
    let hang = format!("hang=HC_TEST_MARK={mark} python3 {}", stub.display());
    let (_, stdout, stderr) = cli(
        &[
            "run",
            "--quick",
            "--seed",
            "3",
            "--scenario",
            "clean",
            "--strategy",
            "hybrid",
            "--implementation",
            &crash,
            "--implementation",
            &garbage,
            "--implementation",
            &hang,
            "--out",
            out.path().to_str().unwrap(),
        ],
        &[("HC_ANSWER_GRACE_MS", "1000")],
    );
    assert!(stdout.contains("4 pairs"), "the run did not finish every pair: {stdout}\n{stderr}");
    let rows = rows(out.path());
    let finding = |name: &str| -> String {
        let r = rows.iter().find(|r| r["strategy"] == name).unwrap_or_else(|| panic!("no row for {name}"));
        assert_eq!(r["verdict"], "invalid", "{name}: {r}");
        r["findings"].as_array().unwrap().iter().map(|f| f.as_str().unwrap().to_string()).collect::<Vec<_>>().join("\n")
    };
    // garbage is the reference, which declares the hybrid's expectations: its invalid verdict
    // is a mismatch. The stub declares none: its verdicts are findings only.
    assert!(stdout.contains("1 MISMATCH(ES)"), "{stdout}");
    let crash = finding("crash");
    assert!(crash.contains("protocol invalid") && crash.contains("ended before shutdown"), "{crash}");
    assert!(crash.contains("exit status: 3"), "the finding gives the exit status: {crash}");
    assert!(
        crash.contains("crash.stderr") && crash.contains("crashing on purpose"),
        "stderr named and quoted: {crash}"
    );
    let garbage = finding("garbage");
    assert!(garbage.contains("line 4 is not a protocol answer") && garbage.contains("this is not json"), "{garbage}");
    let hang = finding("hang");
    assert!(hang.contains("protocol invalid") && hang.contains("could not go on"), "{hang}");
    for name in ["crash", "hang"] {
        let r = rows.iter().find(|r| r["strategy"] == name).unwrap();
        assert_eq!(r["expected_verdict"], r["verdict"], "{name}: no expectation declared, so not a mismatch");
    }
    let dir = std::fs::read_dir(out.path()).unwrap().map(|e| e.unwrap().path()).find(|p| p.is_dir()).unwrap();
    let page = std::fs::read_to_string(dir.join("report.html")).unwrap();
    assert!(page.contains("invalid: a finding"), "the matrix calls an undeclared verdict a finding");
    let hybrid = rows.iter().find(|r| r["strategy"] == "hybrid").unwrap();
    assert_eq!(hybrid["verdict"], "valid", "the built-in beside them is unaffected: {hybrid}");
    assert_eq!(marked(&mark), Vec::<u32>::new(), "processes of the implementations outlived the run");
}

/// A scratch directory holding [`STUB`], its path, and a fresh `HC_TEST_MARK` value.
fn stub_setup() -> (tempfile::TempDir, std::path::PathBuf, String) {
    let out = tempfile::tempdir().unwrap();
    let stub = out.path().join("stub.py");
    std::fs::write(&stub, STUB).unwrap();
    (out, stub, format!("{}-{}", std::process::id(), rand_suffix()))
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 % 1_000_000_007
}

#[test]
fn a_command_that_cannot_describe_itself_is_refused_before_anything_runs() {
    let out = tempfile::tempdir().unwrap();
    let o = out.path().to_str().unwrap();
    assert_bad_input(&[
        (&["run", "--quick", "--implementation", "noequals", "--out", o], &[], "expected NAME=COMMAND"),
        (&["run", "--quick", "--implementation", "hybrid=true", "--out", o], &[], "the name of a built-in strategy"),
        (&["run", "--quick", "--implementation", "x=echo hello", "--out", o], &[], "did not answer hello"),
        (&["run", "--quick", "--implementation", "x=exit 3", "--out", o], &[], "did not answer hello: it exited"),
        (&["run", "--quick", "--implementation", "x=/nonexistent/program", "--out", o], &[], "not found"),
    ]);
    let left: Vec<_> = std::fs::read_dir(out.path()).unwrap().collect();
    assert!(left.is_empty(), "a refused run left its directory behind: {left:?}");
}

/// The command line of `pid`, for a message.
fn cmdline(pid: u32) -> String {
    String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default()).replace('\0', " ")
}

#[test]
fn what_a_sigkilled_harness_left_of_an_implementation_is_ended_by_the_next_start() {
    let (out, stub, mark) = stub_setup();
    let hang = format!("hang=HC_TEST_MARK={mark} python3 {}", stub.display());
    let o = out.path().join("runs");
    let mut run = std::process::Command::new(BIN)
        .args(["run", "--quick", "--seed", "3", "--scenario", "clean", "--strategy", "hang"])
        .args(["--implementation", &hang, "--out", o.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // The stub's setsid grandchild: its `sleep 600` started once a worker sent init.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let sleeper = loop {
        if let Some(p) = marked(&mark).into_iter().find(|p| cmdline(*p).starts_with("sleep")) {
            break p;
        }
        assert!(std::time::Instant::now() < deadline, "no worker started within 60 s");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    run.kill().unwrap(); // SIGKILL: nothing of the harness runs.
    run.wait().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(
        marked(&mark).contains(&sleeper),
        "the grandchild outlives a SIGKILLed harness (nothing of it runs): what this test is about"
    );
    // The next harness to start an implementation (here one that is refused at once).
    let (code, _, stderr) = cli(&["run", "--quick", "--implementation", "x=exit 3", "--out", o.to_str().unwrap()], &[]);
    assert_eq!(code, 2, "{stderr}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !marked(&mark).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let left: Vec<_> = marked(&mark).into_iter().map(|p| format!("{p}: {}", cmdline(p))).collect();
    assert_eq!(left, Vec::<String>::new(), "the next start did not end what the killed harness left");
}
