//! The hand-poking command line against a real `redis-server`, with the seeds' key schema
//! (empty prefix): what a service using that schema would see.

mod support;

use std::process::{Command, Stdio};

use harness::infra::{ProcessRedis, RedisNode, RedisSpec};
use redis::AsyncCommands;
use support::{await_numsub, conn, BIN};

fn cli(args: &[&str]) -> (i32, String, String) {
    support::cli(args, &[])
}

#[tokio::test]
async fn feedback_wait_and_respond_speak_the_seed_schema() {
    let r = ProcessRedis::start(RedisSpec::default()).await.unwrap();
    let url = r.url();
    let waiter = Command::new(BIN)
        .args(["feedback", "wait", "--redis", &url, "deploy_abc123", "--timeout", "20s"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        await_numsub(&url, "feedback:deploy_abc123", 1).await,
        "the waiting CLI never subscribed to feedback:deploy_abc123"
    );
    let (code, out, err) =
        cli(&["feedback", "respond", "--redis", &url, "deploy_abc123", r#"{"approved": false, "comment": "not yet"}"#]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"notified\""), "{out}");
    let waited = waiter.wait_with_output().unwrap();
    assert_eq!(waited.status.code(), Some(0));
    let got: serde_json::Value = serde_json::from_slice(&waited.stdout).unwrap();
    assert_eq!((got["approved"].as_str(), got["comment"].as_str()), (Some("false"), Some("not yet")));
    // The stored hash is the seed's: a service reading feedback:response:{id} finds its fields.
    let mut c = conn(&url, Some(2_000)).await;
    let stored: std::collections::HashMap<String, String> = c.hgetall("feedback:response:deploy_abc123").await.unwrap();
    for field in ["feedback_id", "response_type", "approved", "responded_at", "comment"] {
        assert!(stored.contains_key(field), "{field} missing from {stored:?}");
    }
    let ttl: i64 = c.ttl("feedback:response:deploy_abc123").await.unwrap();
    assert!(ttl > 0, "the response has no TTL");
}

#[tokio::test]
async fn a_wait_that_times_out_exits_3() {
    let r = ProcessRedis::start(RedisSpec::default()).await.unwrap();
    let (code, out, err) = cli(&["feedback", "wait", "--redis", &r.url(), "nobody", "--timeout", "200ms"]);
    assert_eq!(code, 3, "{out} {err}");
    assert!(out.is_empty());
    assert!(err.contains("no response for nobody"), "{err}");
}

#[tokio::test]
async fn stream_publish_and_follow_round_trip() {
    let r = ProcessRedis::start(RedisSpec::default()).await.unwrap();
    let url = r.url();
    for (i, text, last) in [("0", "Hello", false), ("1", ", ", false), ("2", "world", true)] {
        let mut args = vec!["stream", "publish", "--redis", &url, "t1", i, text];
        if last {
            args.push("--final");
        }
        let (code, _, err) = cli(&args);
        assert_eq!(code, 0, "{err}");
    }
    let (code, out, err) = cli(&["stream", "follow", "--redis", &url, "t1", "--from", "1", "--timeout", "10s"]);
    assert_eq!(code, 0, "{err}");
    let chunks: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(chunks.len(), 2);
    assert_eq!((chunks[0]["content"].as_str(), chunks[1]["chunk_type"].as_str()), (Some(", "), Some("final")));
}

#[test]
fn bad_payloads_are_refused_with_exit_2() {
    let (code, _, err) = cli(&["feedback", "respond", "--redis", "redis://127.0.0.1:1/", "x", "[1, 2]"]);
    assert_eq!(code, 2);
    assert!(err.contains("JSON object"), "{err}");
}
