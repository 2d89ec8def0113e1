//! No orphans and clear errors: a `redis-server` dies with its owner (drop, panic, SIGKILL of
//! the harness process), and bad input (missing binary, taken port, bad config) is a clear
//! error that leaves no process and no data dir behind. `./ci/test` additionally checks that
//! no `redis-server` outlives the whole test run.

mod cli_support;
#[path = "../../harness/tests/support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use harness::infra::process::is_alive;
use harness::infra::{Error, ProcessRedis, RedisSpec};

use cli_support::BIN;

async fn wait_dead(pid: u32) -> bool {
    harness::poll_until(Duration::from_secs(5), Duration::from_millis(10), || async { (!is_alive(pid)).then_some(()) })
        .await
        .is_some()
}

fn empty_dir(path: &std::path::Path) -> bool {
    std::fs::read_dir(path).unwrap().next().is_none()
}

#[tokio::test]
async fn drop_kills_the_server() {
    let r = ProcessRedis::start(RedisSpec::default()).await.unwrap();
    let pid = r.pid().unwrap();
    let dir = r.data_dir().to_path_buf();
    assert!(is_alive(pid));
    drop(r);
    assert!(wait_dead(pid).await, "redis-server {pid} outlived its handle");
    assert!(!dir.exists(), "data dir {} left behind", dir.display());
}

#[tokio::test]
async fn a_panicking_owner_leaves_no_server() {
    let (tx, rx) = std::sync::mpsc::channel();
    let task = tokio::spawn(async move {
        let r = ProcessRedis::start(RedisSpec::default()).await.unwrap();
        tx.send(r.pid().unwrap()).unwrap();
        panic!("deliberate panic while owning redis-server");
    });
    assert!(task.await.unwrap_err().is_panic());
    let pid = rx.recv().unwrap();
    assert!(wait_dead(pid).await, "redis-server {pid} survived its owner's panic");
}

/// A test that fails by panicking while it owns a server; `./ci/test` then verifies that no
/// `redis-server` is left once the run is over.
#[tokio::test]
#[should_panic(expected = "deliberate")]
async fn a_test_that_panics_on_purpose() {
    let _r = ProcessRedis::start(RedisSpec::default()).await.unwrap();
    panic!("deliberate panic in a test that owns redis-server");
}

#[tokio::test]
async fn a_sigkilled_harness_takes_its_server_with_it() {
    // Become the subreaper so the orphaned server is re-parented here and can be reaped below
    // instead of lingering as a zombie under PID 1.
    // SAFETY: prctl on this process only.
    assert_eq!(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) }, 0);
    let mut harness =
        Command::new(BIN).args(["redis", "--print-pid"]).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    let mut line = String::new();
    BufReader::new(harness.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let pid: u32 =
        line.split_whitespace().find_map(|f| f.strip_prefix("pid=")).and_then(|p| p.parse().ok()).expect("pid line");
    assert!(is_alive(pid));
    harness.kill().unwrap(); // SIGKILL: no Drop, no signal handler runs.
    harness.wait().unwrap();
    assert!(wait_dead(pid).await, "redis-server {pid} outlived the SIGKILLed harness");
    // SAFETY: waitpid on a pid that is (now) our child; WNOHANG never blocks.
    let reaped = harness::poll_until(Duration::from_secs(5), Duration::from_millis(10), || async {
        (unsafe { libc::waitpid(pid as libc::pid_t, std::ptr::null_mut(), libc::WNOHANG) } == pid as libc::pid_t)
            .then_some(())
    })
    .await;
    assert!(reaped.is_some(), "redis-server {pid} was not re-parented to the subreaper");
}

#[tokio::test]
async fn a_missing_redis_server_names_the_package() {
    let parent = tempfile::tempdir().unwrap();
    let spec = RedisSpec {
        binary: "/nonexistent/redis-server".into(),
        data_parent: Some(parent.path().into()),
        ..Default::default()
    };
    let err = ProcessRedis::start(spec).await.unwrap_err();
    assert!(matches!(err, Error::RedisServerMissing { .. }), "{err}");
    assert!(err.to_string().contains("apt-get install redis-server"), "no install hint in: {err}");
    assert!(empty_dir(parent.path()));
}

#[tokio::test]
async fn a_taken_port_is_refused_and_leaves_nothing() {
    let parent = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let spec = RedisSpec { port: Some(port), data_parent: Some(parent.path().into()), ..Default::default() };
    let err = ProcessRedis::start(spec).await.unwrap_err();
    assert!(matches!(err, Error::PortInUse { port: p } if p == port), "{err}");
    assert!(empty_dir(parent.path()));
}

#[tokio::test]
async fn a_bad_config_directive_is_reported_with_the_log() {
    let parent = tempfile::tempdir().unwrap();
    let reserved = RedisSpec::default().config("port", "1");
    assert!(matches!(ProcessRedis::start(reserved).await, Err(Error::BadConfig { .. })));
    let spec =
        RedisSpec { data_parent: Some(parent.path().into()), ..RedisSpec::default().config("no-such-directive", "1") };
    let err = ProcessRedis::start(spec).await.unwrap_err();
    assert!(matches!(err, Error::Exited { .. }), "{err}");
    assert!(err.to_string().contains("no-such-directive"), "the server's complaint is missing: {err}");
    assert!(empty_dir(parent.path()));
}

#[test]
fn cli_bad_input_is_one_line_and_exit_2() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    cli_support::assert_bad_input(&[
        (&["redis", "--port", &port], &[], "already in use"),
        (&["redis"], &[("HYBRID_CHAOS_REDIS_SERVER", "/nonexistent/redis-server")], "apt-get install redis-server"),
        (&["toxiproxy", "--listen", &format!("127.0.0.1:{port}")], &[], "cannot listen"),
    ]);
}
