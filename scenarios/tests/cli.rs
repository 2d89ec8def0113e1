//! The hand-poking command line against a real `redis-server`, with the seeds' key schema
//! (empty prefix): what a service using that schema would see.

mod cli_support;
#[path = "../../harness/tests/support/mod.rs"]
mod support;

use std::process::{Command, Stdio};

use cli_support::BIN;
use harness::infra::{ProcessRedis, RedisNode, RedisSpec};
use redis::AsyncCommands;
use support::{await_numsub, conn};

fn cli(args: &[&str]) -> (i32, String, String) {
    cli_support::cli(args, &[])
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

#[tokio::test]
async fn stream_publish_refuses_a_hole_and_anything_after_the_final_chunk() {
    let r = ProcessRedis::start(RedisSpec::default()).await.unwrap();
    let url = r.url();
    let publish = |index: &str, last: bool| {
        let mut args = vec!["stream", "publish", "--redis", &url, "t", index, "text"];
        if last {
            args.push("--final");
        }
        cli(&args)
    };
    let (code, _, err) = publish("1", false);
    assert_eq!(code, 2, "index 1 on an empty stream leaves a hole: {err}");
    assert!(err.contains("the next index is 0"), "{err}");
    assert_eq!(publish("0", false).0, 0);
    assert_eq!(publish("0", false).0, 0, "a retry of the last chunk is allowed (consumers drop the duplicate)");
    assert_eq!(publish("1", true).0, 0);
    let (code, _, err) = publish("2", false);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("already ended with its final chunk 1"), "{err}");
}

#[tokio::test]
async fn a_respond_nobody_hears_says_so() {
    let r = ProcessRedis::start(RedisSpec::default()).await.unwrap();
    let (code, out, err) = cli(&["feedback", "respond", "--redis", &r.url(), "nobody_waits", "{}"]);
    assert_eq!(code, 0, "stored all the same: {err}");
    assert!(out.contains(r#""outcome":"unheard""#) && !out.contains("notified"), "{out}");
}

#[test]
fn connection_errors_name_the_address_and_each_cause_once() {
    let port = harness::infra::process::free_port().unwrap();
    let url = format!("redis://127.0.0.1:{port}/");
    let (code, _, stderr) = cli(&["feedback", "wait", "--redis", &url, "x", "--timeout", "1s"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains(&url), "the address is missing: {stderr}");
    assert_eq!(stderr.matches("refused").count(), 1, "a cause repeated: {stderr}");
    let (code, _, stderr) = cli(&["feedback", "wait", "--redis", "localhost:6379", "x"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("\"localhost:6379\" is not a Redis URL (expected redis://"), "{stderr}");
    assert_eq!(stderr.matches("did not parse").count(), 1, "a cause repeated: {stderr}");
}

#[tokio::test]
async fn the_standalone_server_populates_from_a_file_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("populate.json");
    std::fs::write(&config, r#"[{"name": "from_file", "listen": "127.0.0.1:0", "upstream": "127.0.0.1:6379"}]"#)
        .unwrap();
    let port = harness::infra::process::free_port().unwrap();
    let mut child = KillOnDrop(
        std::process::Command::new(env!("CARGO_BIN_EXE_hybrid-chaos"))
            .args(["toxiproxy", "--listen", &format!("127.0.0.1:{port}"), "--config"])
            .arg(&config)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let url = format!("http://127.0.0.1:{port}");
    let listed =
        harness::poll_until(std::time::Duration::from_secs(10), std::time::Duration::from_millis(20), || async {
            let up = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok();
            if !up {
                return None;
            }
            // The API answers before the file is loaded: wait for the proxy itself.
            let (st, body) = support::http(&url, "GET", "/proxies", None, "hybrid-chaos-tests").await;
            let v: serde_json::Value = serde_json::from_str(&body).unwrap_or(serde_json::Value::Null);
            (st == 200 && v.get("from_file").is_some()).then_some(v)
        })
        .await
        .expect("standalone server did not come up with the proxy from its config file");
    assert_eq!(listed["from_file"]["upstream"], "127.0.0.1:6379");
    harness::infra::process::signal(child.0.id(), libc::SIGTERM).unwrap();
    let status = child.0.wait().unwrap();
    assert!(status.success(), "SIGTERM should stop it cleanly: {status}");
}

/// Kills the child if the test fails before it is waited for.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The standalone server's own API on a non-loopback address would let every network this
/// machine is on create proxies: refused in one line, exit 2, naming the flag that allows it.
#[test]
fn the_standalone_api_refuses_a_non_loopback_listen_address() {
    cli_support::assert_bad_input(&[
        (&["toxiproxy", "--listen", "0.0.0.0:0"], &[], "--allow-remote-listen"),
        (&["toxiproxy", "--listen", "[::]:0"], &[], "not a loopback address"),
    ]);
}

/// At the descriptor limit the standalone proxy says so, once per burst, and does not spin:
/// a child with `ulimit -n 64` gets 150 clients at once through one proxy (each proxied
/// connection is two descriptors), holds them, then they all close and a new one is proxied;
/// the burst is declared over (with its count) once a second passes without a failure.
/// Before, nothing was logged (clients were closed unserved) and a failing accept was retried
/// at once, a core at 100 %.
#[tokio::test]
async fn at_the_fd_limit_the_proxy_logs_once_per_burst_and_does_not_spin() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const CLIENTS: usize = 150;
    const HOLD_MS: u64 = 1_500;
    let upstream = support::echo_server().await;
    let port = harness::infra::process::free_port().unwrap();
    let script = format!("ulimit -n 64 && exec \"$0\" toxiproxy --listen 127.0.0.1:{port}");
    let mut child = KillOnDrop(
        std::process::Command::new("sh")
            .args(["-c", &script, env!("CARGO_BIN_EXE_hybrid-chaos")])
            .env("HYBRID_CHAOS_LOG", "warn")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // Its stderr, as it comes, so the test can wait for a line.
    let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let reader = {
        let (stderr, pipe) = (stderr.clone(), child.0.stderr.take().unwrap());
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut s = stderr.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        })
    };
    let url = format!("http://127.0.0.1:{port}");
    harness::poll_until(std::time::Duration::from_secs(10), std::time::Duration::from_millis(20), || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()
    })
    .await
    .expect("the standalone proxy did not come up");
    let tp = harness::toxiproxy::ToxiproxyClient::new(&url).unwrap();
    let proxy = tp.create_proxy("fd", "127.0.0.1:0", &upstream).await.unwrap();
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        if let Ok(c) = tokio::net::TcpStream::connect(&proxy.listen).await {
            clients.push(c);
        }
    }
    let cpu_before = cpu_ms(child.0.id());
    tokio::time::sleep(std::time::Duration::from_millis(HOLD_MS)).await;
    let cpu_held = cpu_ms(child.0.id()) - cpu_before;
    drop(clients);
    // Descriptors free again: a new client is proxied, which ends the burst.
    let echoed = harness::poll_until(std::time::Duration::from_secs(10), std::time::Duration::from_millis(50), || {
        let listen = proxy.listen.clone();
        async move {
            let mut c = tokio::net::TcpStream::connect(&listen).await.ok()?;
            c.write_all(b"ping").await.ok()?;
            let mut back = [0u8; 4];
            tokio::time::timeout(std::time::Duration::from_millis(500), c.read_exact(&mut back)).await.ok()?.ok()?;
            (&back == b"ping").then_some(())
        }
    })
    .await;
    let over = harness::poll_until(std::time::Duration::from_secs(10), std::time::Duration::from_millis(50), || {
        let said = stderr.lock().unwrap().contains("burst over");
        async move { said.then_some(()) }
    })
    .await;
    harness::infra::process::signal(child.0.id(), libc::SIGTERM).unwrap();
    let _ = child.0.wait();
    reader.join().unwrap();
    let out = stderr.lock().unwrap().clone();
    assert!(echoed.is_some(), "no connection proxied once the clients closed: {out}");
    assert!(over.is_some(), "the end of the burst was not logged: {out}");
    let warnings: Vec<&str> = out.lines().filter(|l| l.contains("WARN")).collect();
    assert!(out.contains("file descriptor limit"), "nothing said about the descriptor limit: {out}");
    assert!(warnings.len() <= 3, "more than one burst's lines: {warnings:#?}");
    // A spinning accept burns the whole hold; retrying every 20 ms, a few ms.
    assert!(cpu_held < HOLD_MS / 3, "{cpu_held} ms of CPU in {HOLD_MS} ms at the fd limit: it spins");
}

/// The user + system CPU time a process used so far, in milliseconds.
fn cpu_ms(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which is in parentheses): utime and stime are 14 and 15.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<u64> = rest.split_whitespace().map(|x| x.parse().unwrap_or(0)).collect();
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    (f[11] + f[12]) * 1_000 / ticks
}

/// `generated-mutants` over cargo-mutants' own output format: an unexplained miss is exit 1
/// with the miss in generated.md; all caught is exit 0; a directory without outcomes.json is a
/// clear error (exit 2), with nothing written.
#[test]
fn generated_mutants_fails_on_a_miss_and_names_a_missing_outcomes_file() {
    let dir = tempfile::tempdir().unwrap();
    let write = |outcomes: serde_json::Value| {
        let doc = serde_json::json!({ "outcomes": outcomes, "cargo_mutants_version": "27.1.0" });
        std::fs::write(dir.path().join("outcomes.json"), doc.to_string()).unwrap();
    };
    let mutant = |name: &str, summary: &str| serde_json::json!({ "scenario": { "Mutant": { "name": name } }, "summary": summary });
    let d = dir.path().to_str().unwrap();
    write(serde_json::json!([mutant("harness/src/reference/hub.rs:9:5: replace f with ()", "MissedMutant")]));
    let (code, out, err) = cli(&["generated-mutants", d, "--out", d]);
    assert_eq!(code, 1, "{out} {err}");
    let md = std::fs::read_to_string(dir.path().join("generated.md")).unwrap();
    assert!(md.contains("hub.rs:9:5: replace f with ()` | **unexplained**"), "{md}");
    write(serde_json::json!([mutant("harness/src/reference/hub.rs:9:5: replace f with ()", "CaughtMutant")]));
    let (code, out, err) = cli(&["generated-mutants", d, "--out", d]);
    assert_eq!(code, 0, "{out} {err}");
    assert!(out.contains("caught of viable: **100.0 %**"), "{out}");
    let empty = tempfile::tempdir().unwrap();
    let e = empty.path().to_str().unwrap();
    let (code, _, err) = cli(&["generated-mutants", e, "--out", e]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("outcomes.json"), "{err}");
    assert_eq!(std::fs::read_dir(empty.path()).unwrap().count(), 0, "something was written beside the missing file");
}

/// `hybrid-chaos case` replays a stored case: a clean one runs valid every time (exit 0), a
/// mutant that fails it says which check (exit 1), and a file that is not a case, a twin of
/// a request the case lacks, or an unknown strategy or mutant is a clear error (exit 2).
#[test]
fn a_stored_case_replays_and_bad_cases_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_string_lossy().into_owned()
    };
    let clean = path(
        "clean.json",
        r#"{"schedule":[],"requests":[{"wait_at_ms":0,"respond_at_ms":100,"cancel_after_ms":null}],"chunks":0}"#,
    );
    let (code, out, err) = cli(&["case", &clean, "--runs", "2"]);
    assert_eq!(code, 0, "{out} {err}");
    assert!(out.contains("0 of 2 runs invalid"), "{out}");
    let (code, out, err) = cli(&["case", &clean, "--mutant", "no-ttl"]);
    assert_eq!(code, 1, "{out} {err}");
    assert!(out.contains("run 1: INVALID") && out.contains("cleanup:"), "{out}");
    let bad_twin = path(
        "twin.json",
        r#"{"schedule":[],"requests":[{"wait_at_ms":0,"respond_at_ms":100,"cancel_after_ms":null}],"twins":[{"of":3,"wait_at_ms":0,"cancel_after_ms":null}],"chunks":0}"#,
    );
    let not_a_case = path("junk.json", r#"{"schedule": 5}"#);
    cli_support::assert_bad_input(&[
        (&["case", &not_a_case], &[], "junk.json: not a case"),
        (&["case", &bad_twin], &[], "a twin names a request the case does not have"),
        (&["case", &clean, "--strategy", "nope"], &[], "unknown strategy \"nope\""),
        (&["case", &clean, "--mutant", "nope"], &[], "unknown mutant \"nope\""),
        (&["case", "/nonexistent/case.json"], &[], "cannot read /nonexistent/case.json"),
    ]);
}
