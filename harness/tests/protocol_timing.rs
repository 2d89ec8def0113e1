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
    harness::external::register(spec.clone());
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
