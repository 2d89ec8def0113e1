//! Managed `redis-server` control against the real binary: persistence across crash and
//! graceful restart, LOADING during restart, freeze/thaw, outage windows, inspection, and the
//! refusal to disturb a Redis the harness did not start.

mod support;

use std::time::Duration;

use harness::infra::{admin, Error, ExternalRedis, Persistence, ProcessRedis, RedisNode, RedisSpec, Restart};
use redis::AsyncCommands;
use support::{conn, ping};

async fn set_keys(url: &str, prefix: &str, n: usize) {
    let mut c = conn(url, Some(10_000)).await;
    let mut pipe = redis::pipe();
    for i in 0..n {
        pipe.set(format!("{prefix}k{i}"), i).ignore();
    }
    let _: () = pipe.query_async(&mut c).await.unwrap();
}

async fn dbsize(url: &str) -> u64 {
    let mut c = conn(url, Some(10_000)).await;
    redis::cmd("DBSIZE").query_async(&mut c).await.unwrap()
}

#[tokio::test]
async fn aof_always_keeps_acknowledged_writes_across_a_crash() {
    let mut r = ProcessRedis::start(RedisSpec::default().persistence(Persistence::AofAlways)).await.unwrap();
    let (port, pid) = (r.port(), r.pid().unwrap());
    set_keys(&r.url(), r.key_prefix(), 100).await;
    r.restart(Restart::Crash).await.unwrap();
    assert_eq!(r.port(), port, "restart must keep the address");
    assert_ne!(r.pid().unwrap(), pid, "a crash restart must be a new process");
    assert_eq!(dbsize(&r.url()).await, 100);
}

#[tokio::test]
async fn no_persistence_loses_everything_on_a_crash() {
    let mut r = ProcessRedis::start(RedisSpec::default().persistence(Persistence::None)).await.unwrap();
    set_keys(&r.url(), r.key_prefix(), 100).await;
    assert_eq!(dbsize(&r.url()).await, 100);
    r.restart(Restart::Crash).await.unwrap();
    assert_eq!(dbsize(&r.url()).await, 0);
}

#[tokio::test]
async fn rdb_survives_a_graceful_restart() {
    let mut r = ProcessRedis::start(RedisSpec::default().persistence(Persistence::Rdb)).await.unwrap();
    set_keys(&r.url(), r.key_prefix(), 50).await;
    r.restart(Restart::Graceful).await.unwrap();
    assert_eq!(dbsize(&r.url()).await, 50);
}

#[tokio::test]
async fn readiness_waits_out_loading() {
    // key-load-delay (us per key) stretches loading to ~2 s; a small events interval makes the
    // server answer -LOADING meanwhile instead of staying silent.
    let spec = RedisSpec::default()
        .persistence(Persistence::Rdb)
        .config("key-load-delay", "1000")
        .config("loading-process-events-interval-bytes", "1024");
    let mut r = ProcessRedis::start(spec).await.unwrap();
    set_keys(&r.url(), r.key_prefix(), 2_000).await;
    let ready = r.restart(Restart::Graceful).await.unwrap();
    assert!(ready.loading_polls > 0, "readiness never saw LOADING: {ready:?}");
    assert_eq!(dbsize(&r.url()).await, 2_000, "readiness returned before the dataset was loaded");
}

#[tokio::test]
async fn freeze_makes_clients_time_out_and_thaw_recovers() {
    let mut r = ProcessRedis::start(RedisSpec::default()).await.unwrap();
    let mut c = conn(&r.url(), Some(300)).await;
    ping(&mut c).await.unwrap();
    r.freeze().await.unwrap();
    let err = ping(&mut c).await.expect_err("a frozen server answered");
    assert!(err.is_timeout(), "expected a timeout, got {err}");
    r.thaw().await.unwrap();
    let answered = harness::poll_until(Duration::from_secs(5), Duration::from_millis(20), || async {
        let mut fresh = conn(&r.url(), Some(300)).await;
        ping(&mut fresh).await.ok()
    })
    .await;
    assert_eq!(answered.as_deref(), Some("PONG"));
}

#[tokio::test]
async fn an_outage_window_refuses_then_serves_on_the_same_port() {
    let mut r = ProcessRedis::start(RedisSpec::default()).await.unwrap();
    let addr = r.addr();
    r.stop(Restart::Crash).await.unwrap();
    assert!(tokio::net::TcpStream::connect(&addr).await.is_err(), "a stopped server accepted a connection");
    assert!(matches!(r.freeze().await, Err(Error::WrongState { .. })));
    r.start().await.unwrap();
    assert_eq!(r.addr(), addr);
    let mut c = conn(&r.url(), Some(2_000)).await;
    assert_eq!(ping(&mut c).await.unwrap(), "PONG");
}

#[tokio::test]
async fn inspection_sees_subscriptions_and_clients() {
    let r = ProcessRedis::start(RedisSpec::default()).await.unwrap();
    let channel = format!("{}ch", r.key_prefix());
    let before = admin::clients_under_test(&r.url()).await.unwrap().len();
    let mut sub = redis::Client::open(r.url()).unwrap().get_async_pubsub().await.unwrap();
    sub.subscribe(&channel).await.unwrap();
    assert_eq!(admin::pubsub_numsub(&r.url(), &[&channel]).await.unwrap(), vec![(channel.clone(), 1)]);
    assert_eq!(admin::clients_under_test(&r.url()).await.unwrap().len(), before + 1);
    drop(sub);
    let gone = harness::poll_until(Duration::from_secs(5), Duration::from_millis(20), || async {
        let n = admin::pubsub_numsub(&r.url(), &[&channel]).await.unwrap()[0].1;
        (n == 0).then_some(())
    })
    .await;
    assert!(gone.is_some(), "subscription still counted after the subscriber dropped");
    let info = admin::info(&r.url(), Some("memory")).await.unwrap();
    assert!(info.get("used_memory").and_then(|v| v.parse::<u64>().ok()).is_some_and(|m| m > 0));
}

#[tokio::test]
async fn a_borrowed_redis_is_used_but_never_disturbed() {
    let owner = ProcessRedis::start(RedisSpec::default()).await.unwrap();
    let mut lent = ExternalRedis::connect(&owner.url()).await.unwrap();
    let other = ExternalRedis::connect(&owner.url()).await.unwrap();
    assert!(!lent.owned());
    assert_ne!(lent.key_prefix(), other.key_prefix(), "two runs must not share a key prefix");
    let mut c = conn(&lent.url(), Some(2_000)).await;
    let key = format!("{}k", lent.key_prefix());
    let _: () = c.set(&key, 1).await.unwrap();
    let pid = owner.pid().unwrap();
    for (op, result) in [
        ("restart", lent.restart(Restart::Graceful).await.err()),
        ("crash", lent.restart(Restart::Crash).await.err()),
        ("stop", lent.stop(Restart::Crash).await.err()),
        ("freeze", lent.freeze().await.err()),
        ("flush", lent.flush().await.err()),
    ] {
        match result {
            Some(Error::NotOwned { op: said, .. }) => assert_eq!(said, op),
            other => panic!("{op} on a borrowed Redis was not refused: {other:?}"),
        }
    }
    assert_eq!(owner.pid(), Some(pid));
    let v: i64 = c.get(&key).await.unwrap();
    assert_eq!(v, 1, "the borrowed server lost data");
}

#[tokio::test]
async fn a_bad_redis_url_is_a_clear_error() {
    let err = ExternalRedis::connect("http://nope").await.unwrap_err();
    assert!(matches!(err, Error::BadUrl { .. }), "{err}");
}
