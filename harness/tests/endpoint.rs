//! The reference's Sentinel endpoint against real processes (no Docker): a primary, its
//! replica and a `redis-sentinel`. A Sentinel URL resolves to the primary, its address map
//! applies, a server that is not a primary is refused, and after a failover (`SENTINEL
//! FAILOVER`) the command connection follows the new primary by itself.

use std::time::Duration;

use harness::infra::{ProcessRedis, RedisSpec};
use harness::reference::endpoint::{resolve, Conn};
use harness::reference::Config;

/// A `redis-sentinel` on a free port monitoring `127.0.0.1:primary_port` as `hc` (quorum 1),
/// killed when dropped.
struct Sentinel {
    child: tokio::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Sentinel {
    async fn start(primary_port: u16) -> Sentinel {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let conf = dir.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {}\nsentinel monitor hc 127.0.0.1 {primary_port} 1\nsentinel down-after-milliseconds hc 1000\nsentinel failover-timeout hc 3000\n",
                dir.path().display()
            ),
        )
        .unwrap();
        let child = tokio::process::Command::new("redis-sentinel")
            .arg(&conf)
            .current_dir(dir.path())
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-sentinel (Debian: apt-get install redis-sentinel)");
        let s = Sentinel { child, port, _dir: dir };
        let url = format!("redis://127.0.0.1:{port}/");
        let up = harness::poll_until(Duration::from_secs(10), Duration::from_millis(50), || async {
            let c = redis::Client::open(url.as_str()).ok()?;
            let mut c = c.get_multiplexed_async_connection().await.ok()?;
            redis::cmd("PING").query_async::<String>(&mut c).await.ok()
        })
        .await;
        assert!(up.is_some(), "redis-sentinel did not answer on {port}");
        s
    }

    async fn cmd(&self, args: &[&str]) -> redis::RedisResult<redis::Value> {
        let c = redis::Client::open(format!("redis://127.0.0.1:{}/", self.port)).unwrap();
        let mut c = c.get_multiplexed_async_connection().await.unwrap();
        redis::cmd("SENTINEL").arg(args).query_async(&mut c).await
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// A primary, its replica, and a Sentinel monitoring the primary.
async fn primary_replica_sentinel() -> (ProcessRedis, ProcessRedis, Sentinel) {
    let primary = ProcessRedis::start(RedisSpec::default()).await.unwrap();
    let replica =
        ProcessRedis::start(RedisSpec::default().config("replicaof", &format!("127.0.0.1 {}", primary.port())))
            .await
            .unwrap();
    let s = Sentinel::start(primary.port()).await;
    (primary, replica, s)
}

fn cfg() -> Config {
    Config { connect_timeout_ms: 500, command_timeout_ms: 500, ..Config::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_url_resolves_to_the_primary_and_its_map_applies() {
    let (primary, replica, s) = primary_replica_sentinel().await;
    let url = format!("redis+sentinel://127.0.0.1:1,127.0.0.1:{}/hc", s.port);
    // The first Sentinel does not answer; the second names the primary.
    assert_eq!(resolve(&url, &cfg()).await.unwrap(), format!("redis://127.0.0.1:{}/", primary.port()));
    // A map that sends the announced primary to the replica: ROLE there says slave, refused.
    let mapped = format!("{url}?map=127.0.0.1:{}=127.0.0.1:{}", primary.port(), replica.port());
    let err = resolve(&mapped, &cfg()).await.unwrap_err().to_string();
    assert!(err.contains("not a primary"), "{err}");
    // A plain URL is itself.
    assert_eq!(resolve("redis://127.0.0.1:9/", &cfg()).await.unwrap(), "redis://127.0.0.1:9/");
    let err = resolve("redis+sentinel://127.0.0.1:1/hc", &cfg()).await.unwrap_err().to_string();
    assert!(err.contains("no primary for \"hc\""), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_connection_follows_a_failover_by_itself() {
    let (primary, replica, s) = primary_replica_sentinel().await;
    let url = format!("redis+sentinel://127.0.0.1:{}/hc", s.port);
    let conn = Conn::connect(&url, &cfg()).await.unwrap();
    assert_eq!(conn.target(), format!("redis://127.0.0.1:{}/", primary.port()));
    // The Sentinel must know the replica, with its link up, before it can promote it: until
    // then FAILOVER answers NOGOODSLAVE.
    let started = harness::poll_until(Duration::from_secs(20), Duration::from_millis(200), || async {
        s.cmd(&["failover", "hc"]).await.ok()
    })
    .await;
    assert!(started.is_some(), "the Sentinel never accepted FAILOVER");
    // Keep writing: the demoted primary answers READONLY (or drops the connection), and the
    // connection moves to the server the Sentinel names now.
    let new_target = format!("redis://127.0.0.1:{}/", replica.port());
    let moved = harness::poll_until(Duration::from_secs(20), Duration::from_millis(100), || {
        let mut c = conn.clone();
        let want = new_target.clone();
        async move {
            let ok: redis::RedisResult<()> = redis::cmd("SET").arg("hc:endpoint:k").arg(1).query_async(&mut c).await;
            (ok.is_ok() && c.target() == want).then_some(())
        }
    })
    .await;
    assert!(moved.is_some(), "still writing to {} after the failover", conn.target());
}

/// What says the primary may have moved, on real servers: a write refused by a replica
/// (`READONLY`) does, and so does a refused connection; a plain command error on the primary
/// (`WRONGTYPE`) does not, or every bad command would send the endpoint re-resolving.
#[tokio::test]
async fn a_replicas_refusal_says_moved_and_a_command_error_does_not() {
    use harness::infra::RedisNode;
    use harness::reference::endpoint::moved;
    let primary = ProcessRedis::start(RedisSpec::default()).await.unwrap();
    let replica =
        ProcessRedis::start(RedisSpec::default().config("replicaof", &format!("127.0.0.1 {}", primary.port())))
            .await
            .unwrap();
    let client = |url: String| async move {
        redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap()
    };
    let mut r = client(replica.url()).await;
    let refused =
        redis::cmd("SET").arg("k").arg("v").query_async::<()>(&mut r).await.expect_err("a replica took a write");
    assert_eq!(refused.code(), Some("READONLY"), "{refused}");
    assert!(moved(&refused), "READONLY: {refused}");
    let mut p = client(primary.url()).await;
    let _: () = redis::cmd("SET").arg("s").arg("v").query_async(&mut p).await.unwrap();
    let wrong = redis::cmd("HGETALL").arg("s").query_async::<()>(&mut p).await.expect_err("HGETALL on a string");
    assert!(!moved(&wrong), "WRONGTYPE: {wrong}");
    let gone = redis::Client::open(format!("redis://127.0.0.1:{}/", free_port()))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect_err("nothing listens there");
    assert!(moved(&gone), "a refused connection: {gone}");
}
