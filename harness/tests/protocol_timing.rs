//! What the harness records of an implementation behind the process protocol is the
//! program's own timing: no request of the harness's own is counted into an operation.
//!
//! A real program (Python) over real pipes; no Redis is needed, since the program answers
//! from memory.

use std::time::{Duration, Instant};

use harness::external::{describe, Worker, ANSWER_GRACE_MS};
use harness::reference::{Config, FeedbackStrategy, WaitOutcome};

/// Answers hello, init and shutdown; answers every wait "timeout" at once; never answers
/// `stats`, as a program busy with other requests would not for a while.
const STATS_NEVER_ANSWERED: &str = r#"
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m["op"] == "hello":
        v = {"name": "silent-stats", "notifies": True, "polls": True}
    elif m["op"] in ("init", "shutdown"):
        v = {}
    elif m["op"] == "wait":
        print(json.dumps({"req": m["req"], "outcome": "timeout"}), flush=True)
        continue
    else:
        continue
    print(json.dumps({"req": m["req"], "outcome": "ok", "value": v}), flush=True)
"#;

/// A wait returns when its answer arrives. It used to be followed by a `stats` round trip
/// before it returned, so its recorded duration held the program's whole queue of stats
/// requests (40 waits ending together in a Python program: 100 ms past their timeouts, the
/// publisher-outage / fixed mismatch of issue 24). Here stats are never answered: with the
/// round trip every wait lasted the answer grace (10 s); without it, a wait takes its answer's
/// crossing. Half the grace tells the two apart on any machine.
#[tokio::test]
async fn a_wait_is_not_followed_by_a_stats_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let stub = dir.path().join("stub.py");
    std::fs::write(&stub, STATS_NEVER_ANSWERED).unwrap();
    let spec = describe("silent-stats", &format!("python3 {}", stub.display()), dir.path()).await.unwrap();
    let url = "redis://127.0.0.1:1/";
    let worker = Worker::start(&spec, "feedback", url, url, &Config::default()).await.unwrap();
    for i in 0..3 {
        let t = Instant::now();
        let got = worker.wait(&format!("id-{i}"), Duration::from_millis(50)).await.unwrap();
        let took = t.elapsed();
        assert!(matches!(got, WaitOutcome::TimedOut), "wait {i}: {got:?}");
        assert!(
            took < Duration::from_millis(ANSWER_GRACE_MS / 2),
            "wait {i} returned after {took:?}: it waited for a stats answer"
        );
    }
    worker.shutdown().await;
}

/// The examples' protocol module (`examples/python/hc_protocol.py`) serving a program whose
/// threads are slow to start: every `Thread.start` returns 20 ms late, as it does when a
/// Python program shares a busy machine (each start waits for the new thread to run). The
/// waits answer `timeout` at their deadline and touch no Redis.
const SLOW_THREAD_START: &str = r#"
import sys, threading, time
sys.path.insert(0, sys.argv[1])
import hc_protocol

start = threading.Thread.start
def slow_start(self):
    start(self)
    time.sleep(0.02)
threading.Thread.start = slow_start

class Deadline:
    def __init__(self, init): pass
    def wait(self, i, timeout, cancelled):
        cancelled.wait(timeout)
        return None
    def respond(self, i, fields): return {"status": "stored"}
    def stats(self): return {"waiters": 0, "channels": 0, "pending_polls": 0, "reconnects": 0}
    def close(self): pass

hc_protocol.serve(Deadline, {"name": "slow-start", "notifies": False, "polls": True})
"#;

/// The harness times a wait from when it sent the request; a program that reads its requests
/// only between thread starts counts its deadlines from later than that. The example module
/// did (the publisher-outage / fixed mismatch of issue 24, 40 waits sent together ending
/// 90-260 ms past their timeouts beside `stress-ng --cpu 2`): here the 40th of 40 waits was
/// read about 800 ms after it was sent, and ended that late. Taken in by a thread of its own,
/// every wait ends within the check's slack of its timeout however slowly its thread starts.
#[tokio::test]
async fn a_wait_is_timed_from_its_arrival_not_from_its_thread_start() {
    const WAITS: usize = 40;
    const TIMEOUT_MS: u64 = 1_500;
    let dir = tempfile::tempdir().unwrap();
    let stub = dir.path().join("slow_start.py");
    std::fs::write(&stub, SLOW_THREAD_START).unwrap();
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/python");
    let command = format!("python3 {} {}", stub.display(), examples.display());
    let spec = describe("slow-start", &command, dir.path()).await.unwrap();
    let url = "redis://127.0.0.1:1/";
    let worker = Worker::start(&spec, "feedback", url, url, &Config::default()).await.unwrap();
    let sent = Instant::now();
    let waits = (0..WAITS).map(|i| {
        let worker = &worker;
        async move {
            let got = worker.wait(&format!("id-{i}"), Duration::from_millis(TIMEOUT_MS)).await.unwrap();
            assert!(matches!(got, WaitOutcome::TimedOut), "wait {i}: {got:?}");
            sent.elapsed()
        }
    });
    let took = futures_util::future::join_all(waits).await;
    worker.shutdown().await;
    let latest = took.iter().max().unwrap();
    let over_ms = latest.as_secs_f64() * 1000.0 - TIMEOUT_MS as f64;
    assert!(
        over_ms < harness::scenario::TIMEOUT_SLACK_MS * 4.0,
        "the latest of {WAITS} waits ended {over_ms:.0} ms past its timeout: its deadline was counted from its thread's start"
    );
}
