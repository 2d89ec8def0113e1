//! The reference implementation against a real `redis-server`, with faults through the proxy
//! where the point is the network. Where a test must show *which* mechanism delivered a
//! response (Pub/Sub, the poll fallback, the resync after a reconnect), the other mechanisms
//! are configured too slow to have done it (e.g. a 60 s poll interval), so the `via` it
//! reports is evidence, not luck.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use harness::reference::baselines::{PollingOnly, PubSubOnly};
use harness::reference::fanout::{Event, FanoutConsumer, FanoutPublisher, Tick};
use harness::reference::feedback::Hybrid;
use harness::reference::hub::{Control, Hub};
use harness::reference::stream::{Chunk, FollowEnd, StreamConsumer, StreamProducer};
use harness::reference::{response_fields, Config, FeedbackStrategy, ImplStats, PublishOutcome, Via, WaitOutcome};
use harness::toxiproxy::{Stream, Toxic, ToxicKind};
use support::{await_numsub, Rig};

fn config(rig: &Rig) -> Config {
    use harness::infra::RedisNode;
    Config::default().with_prefix(rig.redis.key_prefix())
}

/// Polling so slow it cannot be what delivered anything within a test.
fn no_polling(c: Config) -> Config {
    Config { poll_interval_ms: 60_000, ..c }
}

fn fields(id: &str) -> harness::reference::Fields {
    response_fields(id, serde_json::json!({"comment": "ship it"}).as_object().unwrap())
}

/// Starts `s.wait(id, secs)` as a task.
fn spawn_wait<S: FeedbackStrategy + 'static>(
    s: &Arc<S>,
    id: &'static str,
    secs: u64,
) -> tokio::task::JoinHandle<harness::reference::Result<WaitOutcome>> {
    let s = s.clone();
    tokio::spawn(async move { s.wait(id, Duration::from_secs(secs)).await })
}

async fn settled(s: &dyn FeedbackStrategy) -> bool {
    harness::poll_until(Duration::from_secs(5), Duration::from_millis(10), || async {
        let st = s.stats();
        (st == ImplStats { reconnects: st.reconnects, ..ImplStats::default() }).then_some(())
    })
    .await
    .is_some()
}

#[tokio::test]
async fn respond_then_wait_returns_at_once() {
    let rig = Rig::new().await;
    let h = Hybrid::connect(&rig.redis_url(), &rig.redis_url(), config(&rig)).await.unwrap();
    assert_eq!(h.respond("r1", &fields("r1")).await, PublishOutcome::Unheard, "nobody listened, nobody was notified");
    let got = h.wait("r1", Duration::from_secs(5)).await.unwrap();
    let WaitOutcome::Obtained { fields: f, via } = got else { panic!("{got:?}") };
    assert_eq!(via, Via::Immediate, "the resume case must not need Pub/Sub");
    assert_eq!(f["comment"], "ship it");
    assert_eq!(f["feedback_id"], "r1");
    assert_eq!(h.hub().channel_count(), 0, "the resume case subscribed to something");
    h.shutdown().await;
}

#[tokio::test]
async fn wait_then_respond_wakes_by_notification() {
    let rig = Rig::new().await;
    let cfg = no_polling(config(&rig));
    let channel = cfg.keys.feedback_channel("w1");
    let h = Arc::new(Hybrid::connect(&rig.redis_url(), &rig.redis_url(), cfg).await.unwrap());
    let waiter = spawn_wait(&h, "w1", 30);
    assert!(await_numsub(&rig.redis_url(), &channel, 1).await);
    let t = Instant::now();
    assert_eq!(h.respond("w1", &fields("w1")).await, PublishOutcome::Notified { subscribers: 1 });
    let got = waiter.await.unwrap().unwrap();
    assert!(matches!(got, WaitOutcome::Obtained { via: Via::Notified, .. }), "{got:?}");
    assert!(t.elapsed() < Duration::from_secs(30), "woken only by the deadline");
    assert!(await_numsub(&rig.redis_url(), &channel, 0).await, "channel still subscribed after success");
    assert!(settled(h.as_ref()).await, "{:?}", h.stats());
    h.shutdown().await;
}

#[tokio::test]
async fn a_timeout_unsubscribes_and_empties_the_maps() {
    let rig = Rig::new().await;
    let cfg = config(&rig);
    let channel = cfg.keys.feedback_channel("t1");
    let h = Hybrid::connect(&rig.redis_url(), &rig.redis_url(), cfg).await.unwrap();
    let t = Instant::now();
    assert_eq!(h.wait("t1", Duration::from_millis(300)).await.unwrap(), WaitOutcome::TimedOut);
    assert!(t.elapsed() >= Duration::from_millis(300));
    assert!(await_numsub(&rig.redis_url(), &channel, 0).await);
    assert!(settled(&h).await, "{:?}", h.stats());
    h.shutdown().await;
}

#[tokio::test]
async fn a_dropped_waiting_future_leaves_nothing_behind() {
    let rig = Rig::new().await;
    let cfg = config(&rig);
    let channel = cfg.keys.feedback_channel("d1");
    let h = Arc::new(Hybrid::connect(&rig.redis_url(), &rig.redis_url(), cfg).await.unwrap());
    let waiter = spawn_wait(&h, "d1", 60);
    assert!(await_numsub(&rig.redis_url(), &channel, 1).await);
    assert_eq!(h.stats().waiters, 1);
    waiter.abort();
    assert!(waiter.await.unwrap_err().is_cancelled());
    assert!(await_numsub(&rig.redis_url(), &channel, 0).await, "cancelled waiter left its subscription");
    assert!(settled(h.as_ref()).await, "{:?}", h.stats());
    h.shutdown().await;
}

#[tokio::test]
async fn two_concurrent_resumers_both_get_the_response() {
    let rig = Rig::new().await;
    let cfg = no_polling(config(&rig));
    let channel = cfg.keys.feedback_channel("c1");
    let h = Arc::new(Hybrid::connect(&rig.redis_url(), &rig.redis_url(), cfg).await.unwrap());
    // Before the response (both subscribe the same channel) and after it (both resume).
    let early: Vec<_> = (0..2).map(|_| spawn_wait(&h, "c1", 30)).collect();
    let both = harness::poll_until(Duration::from_secs(5), Duration::from_millis(5), || async {
        (h.stats().waiters == 2).then_some(())
    })
    .await;
    assert!(both.is_some());
    assert!(await_numsub(&rig.redis_url(), &channel, 1).await, "two waiters must share one subscription");
    h.respond("c1", &fields("c1")).await;
    for w in early {
        assert!(matches!(w.await.unwrap().unwrap(), WaitOutcome::Obtained { .. }));
    }
    let (a, b) = tokio::join!(h.wait("c1", Duration::from_secs(5)), h.wait("c1", Duration::from_secs(5)));
    assert!(matches!(a.unwrap(), WaitOutcome::Obtained { via: Via::Immediate, .. }));
    assert!(matches!(b.unwrap(), WaitOutcome::Obtained { via: Via::Immediate, .. }));
    assert!(settled(h.as_ref()).await);
    h.shutdown().await;
}

#[tokio::test]
async fn a_response_published_while_the_subscriber_is_cut_off_is_still_returned() {
    let rig = Rig::new().await;
    let (sub_url, sub_proxy) = rig.extra_proxy("sub").await;
    let cfg = no_polling(config(&rig));
    let channel = cfg.keys.feedback_channel("o1");
    let h = Arc::new(Hybrid::connect(&rig.redis_url(), &sub_url, cfg).await.unwrap());
    let t = Instant::now();
    let waiter = spawn_wait(&h, "o1", 60);
    assert!(await_numsub(&rig.redis_url(), &channel, 1).await);
    rig.tp().set_enabled(&sub_proxy, false).await.unwrap();
    assert!(await_numsub(&rig.redis_url(), &channel, 0).await, "the cut subscriber is still subscribed");
    // Published to nobody: only storage has it now.
    assert_eq!(h.respond("o1", &fields("o1")).await, PublishOutcome::Unheard);
    rig.tp().set_enabled(&sub_proxy, true).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(30), waiter)
        .await
        .expect("not recovered well before the deadline")
        .unwrap()
        .unwrap();
    assert!(matches!(got, WaitOutcome::Obtained { via: Via::Resync, .. }), "{got:?}");
    assert!(t.elapsed() < Duration::from_secs(30));
    assert!(h.stats().reconnects >= 1);
    h.shutdown().await;
}

#[tokio::test]
async fn a_blackholed_subscriber_is_detected_by_the_health_check() {
    let rig = Rig::new().await;
    let (sub_url, sub_proxy) = rig.extra_proxy("sub").await;
    let cfg = Config { health_check_interval_ms: 100, health_check_timeout_ms: 200, ..config(&rig) };
    let hub = Hub::start(&sub_url, cfg, "test");
    assert!(harness::poll_until(Duration::from_secs(5), Duration::from_millis(10), || async {
        hub.is_connected().then_some(())
    })
    .await
    .is_some());
    // timeout=0: the connection stays open and silent, as a half-open one is.
    rig.tp()
        .add_toxic(&sub_proxy, &Toxic::new(ToxicKind::Timeout { timeout_ms: 0 }, Stream::Downstream))
        .await
        .unwrap();
    let found = harness::poll_until(Duration::from_secs(5), Duration::from_millis(10), || async {
        (hub.reconnects() >= 1).then_some(())
    })
    .await;
    assert!(found.is_some(), "a silent subscriber connection was never replaced");
    hub.shutdown().await;
}

#[tokio::test]
async fn the_poll_fallback_finds_what_no_notification_announced() {
    let rig = Rig::new().await;
    let (sub_url, sub_proxy) = rig.extra_proxy("sub").await;
    // The subscriber never gets anything: polling alone must deliver.
    rig.tp()
        .add_toxic(&sub_proxy, &Toxic::new(ToxicKind::Timeout { timeout_ms: 0 }, Stream::Downstream))
        .await
        .unwrap();
    let cfg = Config { poll_interval_ms: 100, subscribe_wait_ms_max: 100, ..config(&rig) };
    let h = Arc::new(Hybrid::connect(&rig.redis_url(), &sub_url, cfg).await.unwrap());
    let waiter = spawn_wait(&h, "p1", 30);
    assert!(harness::poll_until(Duration::from_secs(5), Duration::from_millis(10), || async {
        (h.stats().pending_polls == 1).then_some(())
    })
    .await
    .is_some());
    h.respond("p1", &fields("p1")).await;
    let got = waiter.await.unwrap().unwrap();
    assert!(matches!(got, WaitOutcome::Obtained { via: Via::Polled, .. }), "{got:?}");
    h.shutdown().await;
}

#[tokio::test]
async fn shutdown_on_the_control_channel_ends_waits() {
    let rig = Rig::new().await;
    let cfg = config(&rig);
    let h = Arc::new(Hybrid::connect(&rig.redis_url(), &rig.redis_url(), cfg.clone()).await.unwrap());
    let waiter = spawn_wait(&h, "s1", 30);
    assert!(await_numsub(&rig.redis_url(), &cfg.keys.feedback_channel("s1"), 1).await);
    let hub_publisher = FanoutPublisher::connect(&rig.redis_url(), cfg).await.unwrap();
    assert!(hub_publisher.control(Control::Shutdown).await.committed());
    assert_eq!(waiter.await.unwrap().unwrap(), WaitOutcome::Shutdown);
    h.shutdown().await;
}

#[tokio::test]
async fn pubsub_only_loses_the_resume_case_and_polling_only_does_not() {
    let rig = Rig::new().await;
    let ps = PubSubOnly::connect(&rig.redis_url(), &rig.redis_url(), config(&rig)).await.unwrap();
    ps.respond("b1", &fields("b1")).await;
    assert_eq!(
        ps.wait("b1", Duration::from_millis(300)).await.unwrap(),
        WaitOutcome::TimedOut,
        "pub/sub-only found a message published before it listened"
    );
    let po = PollingOnly::connect(&rig.redis_url(), Config { poll_interval_ms: 50, ..config(&rig) }).await.unwrap();
    po.respond("b2", &fields("b2")).await;
    assert!(matches!(
        po.wait("b2", Duration::from_secs(5)).await.unwrap(),
        WaitOutcome::Obtained { via: Via::Immediate, .. }
    ));
    ps.shutdown().await;
}

#[tokio::test]
async fn pubsub_only_delivers_the_payload_live() {
    let rig = Rig::new().await;
    let cfg = config(&rig);
    let channel = cfg.keys.feedback_channel("b3");
    let ps = Arc::new(PubSubOnly::connect(&rig.redis_url(), &rig.redis_url(), cfg).await.unwrap());
    let waiter = spawn_wait(&ps, "b3", 30);
    assert!(await_numsub(&rig.redis_url(), &channel, 1).await);
    assert_eq!(ps.respond("b3", &fields("b3")).await, PublishOutcome::Notified { subscribers: 1 });
    let WaitOutcome::Obtained { fields: f, .. } = waiter.await.unwrap().unwrap() else { panic!() };
    assert_eq!(f["comment"], "ship it");
    ps.shutdown().await;
}

#[tokio::test]
async fn polling_only_waits_for_its_tick() {
    let rig = Rig::new().await;
    let po = Arc::new(
        PollingOnly::connect(&rig.redis_url(), Config { poll_interval_ms: 100, ..config(&rig) }).await.unwrap(),
    );
    let waiter = spawn_wait(&po, "b4", 10);
    assert!(harness::poll_until(Duration::from_secs(5), Duration::from_millis(5), || async {
        (po.stats().waiters == 1).then_some(())
    })
    .await
    .is_some());
    assert_eq!(po.respond("b4", &fields("b4")).await, PublishOutcome::Stored);
    assert!(matches!(waiter.await.unwrap().unwrap(), WaitOutcome::Obtained { via: Via::Polled, .. }));
}

#[tokio::test]
async fn the_breaker_opens_during_an_outage_and_closes_after() {
    let rig = Rig::new().await;
    let cfg = Config {
        breaker_failures_max: 2,
        breaker_reset_ms: 300,
        publish_attempts_max: 2,
        command_timeout_ms: 300,
        connect_timeout_ms: 300,
        ..config(&rig)
    };
    let h = Hybrid::connect(&rig.proxied_url(), &rig.redis_url(), cfg).await.unwrap();
    assert!(matches!(h.respond("k0", &fields("k0")).await, PublishOutcome::Unheard));
    rig.tp().set_enabled(rig.name(), false).await.unwrap();
    let mut outcomes = Vec::new();
    for i in 0..4 {
        outcomes.push(h.respond(&format!("k{}", i + 1), &fields("k")).await);
    }
    assert!(outcomes.iter().all(|o| matches!(o, PublishOutcome::Failed { .. })), "{outcomes:?}");
    let PublishOutcome::Failed { reason } = &outcomes[3] else { unreachable!() };
    assert!(reason.contains("circuit open"), "the breaker did not open after 2 failures: {outcomes:?}");
    rig.tp().set_enabled(rig.name(), true).await.unwrap();
    let closed = harness::poll_until(Duration::from_secs(10), Duration::from_millis(100), || async {
        matches!(h.respond("k9", &fields("k9")).await, PublishOutcome::Unheard).then_some(())
    })
    .await;
    assert!(closed.is_some(), "the breaker never closed again; last state {:?}", h.publisher().breaker().state());
    h.shutdown().await;
}

#[tokio::test]
async fn a_refused_publish_is_stored_but_not_notified() {
    let rig = Rig::new().await;
    // A user that may write hashes but not PUBLISH: the command fails after the commit point.
    let mut admin_conn = support::conn(&rig.redis_url(), Some(2_000)).await;
    let _: () = redis::cmd("ACL")
        .arg(&["SETUSER", "nopub", "on", ">pw", "~*", "&*", "+@all", "-publish"][..])
        .query_async(&mut admin_conn)
        .await
        .unwrap();
    let url = rig.redis_url().replace("redis://", "redis://nopub:pw@");
    let h = Hybrid::connect(&url, &rig.redis_url(), config(&rig)).await.unwrap();
    let out = h.respond("n1", &fields("n1")).await;
    assert!(matches!(out, PublishOutcome::StoredNotNotified { .. }), "{out:?}");
    assert!(h.read("n1").await.unwrap().is_some(), "the commit point was not reached");
    h.shutdown().await;
}

/// Out of memory, Redis refuses the write but would still run a PUBLISH: the hint must not go
/// out, or a hint that carries the response hands out a value storage never got (the
/// one-round-trip commit used to send its PUBLISH after an EXEC that had aborted).
#[tokio::test]
async fn a_refused_write_sends_no_hint() {
    let rig = Rig::new().await;
    let cfg = config(&rig);
    let h = Arc::new(Hybrid::payload_variant(&rig.redis_url(), &rig.redis_url(), cfg.clone()).await.unwrap());
    let waiter = spawn_wait(&h, "oom1", 2);
    assert!(await_numsub(&rig.redis_url(), &cfg.keys.feedback_channel("oom1"), 1).await);
    let mut admin_conn = support::conn(&rig.redis_url(), Some(2_000)).await;
    for (k, v) in [("maxmemory-policy", "noeviction"), ("maxmemory", "1")] {
        let _: () = redis::cmd("CONFIG").arg("SET").arg(k).arg(v).query_async(&mut admin_conn).await.unwrap();
    }
    let out = h.respond("oom1", &fields("oom1")).await;
    assert!(matches!(&out, PublishOutcome::Refused { reason } if reason.contains("OOM")), "{out:?}");
    assert_eq!(waiter.await.unwrap().unwrap(), WaitOutcome::TimedOut, "a hint went out for a refused write");
    h.shutdown().await;
}

#[tokio::test]
async fn a_late_joiner_reads_the_stream_from_its_index() {
    let rig = Rig::new().await;
    let cfg = config(&rig);
    let producer = StreamProducer::connect(&rig.redis_url(), cfg.clone()).await.unwrap();
    for i in 0..50 {
        let c = if i == 49 { Chunk::last(i, format!("c{i}")) } else { Chunk::content(i, format!("c{i}")) };
        assert!(producer.publish("t1", &c).await.committed());
    }
    let consumer = StreamConsumer::connect(&rig.redis_url(), &rig.redis_url(), cfg).await.unwrap();
    for from in [0u64, 10] {
        let mut got = Vec::new();
        let end = consumer.follow("t1", from, Duration::from_secs(10), |c, _| got.push(c.chunk_index)).await.unwrap();
        assert!(matches!(end, FollowEnd::Finished { .. }), "{end:?}");
        assert_eq!(got, (from..50).collect::<Vec<_>>());
    }
    consumer.shutdown().await;
}

#[tokio::test]
async fn a_consumer_reset_mid_stream_sees_every_chunk_once_in_order() {
    let rig = Rig::new().await;
    let (sub_url, sub_proxy) = rig.extra_proxy("sub").await;
    let cfg = no_polling(config(&rig));
    let channel = cfg.keys.stream_channel("t2");
    let producer = StreamProducer::connect(&rig.redis_url(), cfg.clone()).await.unwrap();
    let consumer = Arc::new(StreamConsumer::connect(&rig.redis_url(), &sub_url, cfg).await.unwrap());
    let follower = tokio::spawn({
        let consumer = consumer.clone();
        async move {
            let mut got = Vec::new();
            let end = consumer.follow("t2", 0, Duration::from_secs(60), |c, _| got.push(c.chunk_index)).await;
            (end, got)
        }
    });
    assert!(await_numsub(&rig.redis_url(), &channel, 1).await);
    for i in 0..20 {
        producer.publish("t2", &Chunk::content(i, "x")).await;
    }
    let reset = Toxic::new(ToxicKind::ResetPeer { timeout_ms: 0 }, Stream::Downstream);
    rig.tp().add_toxic(&sub_proxy, &reset).await.unwrap();
    assert!(await_numsub(&rig.redis_url(), &channel, 0).await, "the reset did not cut the subscriber");
    for i in 20..40 {
        producer.publish("t2", &Chunk::content(i, "x")).await;
    }
    rig.tp().remove_toxic(&sub_proxy, &reset.name).await.unwrap();
    assert!(await_numsub(&rig.redis_url(), &channel, 1).await, "the consumer never resubscribed");
    for i in 40..50 {
        let c = if i == 49 { Chunk::last(i, "x") } else { Chunk::content(i, "x") };
        producer.publish("t2", &c).await;
    }
    let (end, got) =
        tokio::time::timeout(Duration::from_secs(30), follower).await.expect("follow did not finish").unwrap();
    assert!(matches!(end.unwrap(), FollowEnd::Finished { delivered: 50, .. }));
    assert_eq!(got, (0..50).collect::<Vec<_>>());
    assert!(consumer.hub().reconnects() >= 1);
    consumer.shutdown().await;
}

#[tokio::test]
async fn fanout_bounds_its_queue_skips_stale_and_honours_control() {
    let rig = Rig::new().await;
    let cfg = config(&rig);
    let channel = cfg.keys.market_channel("ES", "1m");
    let hub = Hub::start(&rig.redis_url(), cfg.clone(), "fanout-test");
    let mut consumer = FanoutConsumer::start(&hub, &channel, 10);
    assert!(await_numsub(&rig.redis_url(), &channel, 1).await);
    let publisher = FanoutPublisher::connect(&rig.redis_url(), cfg).await.unwrap();
    for seq in 1..=100 {
        publisher.publish(&channel, &Tick { seq, payload: serde_json::json!({"close": seq}) }).await;
    }
    publisher.publish(&channel, &Tick { seq: 50, payload: serde_json::Value::Null }).await;
    let all_in = harness::poll_until(Duration::from_secs(10), Duration::from_millis(10), || async {
        (consumer.stats.received.load(std::sync::atomic::Ordering::Relaxed) == 101).then_some(())
    })
    .await;
    assert!(all_in.is_some());
    let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        (load(&consumer.stats.enqueued), load(&consumer.stats.dropped_overflow), load(&consumer.stats.stale_skipped)),
        (10, 90, 1)
    );
    for _ in 0..10 {
        assert!(matches!(consumer.events.recv().await, Some(Event::Tick(_))));
    }
    publisher.control(Control::Reset).await;
    assert_eq!(consumer.events.recv().await, Some(Event::Reset));
    publisher.publish(&channel, &Tick { seq: 1, payload: serde_json::Value::Null }).await;
    assert!(
        matches!(consumer.events.recv().await, Some(Event::Tick(Tick { seq: 1, .. }))),
        "after RESET an old sequence is fresh again"
    );
    publisher.control(Control::Shutdown).await;
    assert_eq!(consumer.events.recv().await, None, "SHUTDOWN must stop the consumer");
    assert!(consumer.is_stopped());
    assert!(await_numsub(&rig.redis_url(), &channel, 0).await, "a stopped consumer kept its subscription");
    hub.shutdown().await;
}

#[tokio::test]
async fn metrics_are_exposed_in_prometheus_text() {
    let handle = harness::reference::metrics::prometheus().expect("the first recorder in this process");
    let rig = Rig::new().await;
    let h = Hybrid::connect(&rig.redis_url(), &rig.redis_url(), config(&rig)).await.unwrap();
    // Nobody waits yet: the publish is stored and unheard (the resume case).
    h.respond("m1", &fields("m1")).await;
    h.wait("m1", Duration::from_secs(5)).await.unwrap();
    let text = handle.render();
    for needle in [
        "hybrid_chaos_published_total{impl=\"hybrid\",status=\"unheard\"} 1",
        "hybrid_chaos_obtained_total",
        "hybrid_chaos_publish_duration_seconds",
        "hybrid_chaos_circuit_state",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
    }
    h.shutdown().await;
}

/// With the durability option a response counts as acknowledged only once a replica holds
/// it: with one replica attached the outcome is a normal one; with the replica gone, WAIT
/// times out and the outcome says `stored_unreplicated`, never `notified` or `unheard`.
#[tokio::test]
async fn durability_acknowledges_only_what_a_replica_confirmed() {
    use harness::infra::{ProcessRedis, RedisNode, RedisSpec};
    use harness::reference::Durability;
    let primary = ProcessRedis::start(RedisSpec::default()).await.unwrap();
    let (host, port) = primary.addr().rsplit_once(':').map(|(h, p)| (h.to_string(), p.to_string())).unwrap();
    let replica =
        ProcessRedis::start(RedisSpec::default().config("replicaof", &format!("{host} {port}"))).await.unwrap();
    // Wait (bounded) until the replica is online: during its initial sync it acks nothing.
    let attached = harness::poll_until(Duration::from_secs(10), Duration::from_millis(50), || async {
        let info = harness::infra::admin::info(&primary.url(), Some("replication")).await.ok()?;
        info.get("slave0").is_some_and(|s| s.contains("state=online")).then_some(())
    })
    .await;
    assert!(attached.is_some(), "the replica never attached");
    // Generous: a replica starved of CPU on a busy CI machine acks late, and a WAIT that
    // times out says "unreplicated" (seen once at 300 ms beside the whole suite).
    let config = Config {
        durability: Some(Durability { replicas: 1, timeout_ms: 2_000 }),
        // WAIT runs under the command timeout: it must outlast WAIT's own.
        command_timeout_ms: 5_000,
        ..Config::default().with_prefix(primary.key_prefix())
    };
    let h = Hybrid::connect(&primary.url(), &primary.url(), config).await.unwrap();
    let first = h.respond("dur-1", &response_fields("dur-1", &serde_json::Map::new())).await;
    assert!(matches!(first, PublishOutcome::Unheard | PublishOutcome::Notified { .. }), "{first:?}");
    drop(replica);
    let t = Instant::now();
    let second = h.respond("dur-2", &response_fields("dur-2", &serde_json::Map::new())).await;
    assert_eq!(second, PublishOutcome::StoredUnreplicated { replicas: 0, wanted: 1 });
    assert!(t.elapsed() >= Duration::from_millis(2_000), "WAIT gave up before its timeout: {:?}", t.elapsed());
    h.shutdown().await;
}

/// A command error is not a network failure: a response key that turns out to hold something
/// other than a hash (WRONGTYPE) ends the wait with the error when the hint wakes it, where
/// retrying it as if storage were unreachable would sit out the whole timeout and report "no
/// response". (The wait's first read happens before the key is written, so it is the read
/// after the hint that meets the error.)
#[tokio::test]
async fn a_wait_woken_to_a_key_of_the_wrong_type_fails_at_once_instead_of_retrying() {
    let rig = Rig::new().await;
    let cfg = config(&rig);
    let (key, channel) = (cfg.keys.feedback_response("junk"), cfg.keys.feedback_channel("junk"));
    let h = Arc::new(Hybrid::connect(&rig.redis_url(), &rig.redis_url(), no_polling(cfg)).await.unwrap());
    let wait = spawn_wait(&h, "junk", 20);
    assert!(await_numsub(&rig.redis_url(), &channel, 1).await, "the waiter never subscribed");
    let mut c = support::conn(&rig.redis_url(), Some(2_000)).await;
    let started = Instant::now();
    let _: () = redis::cmd("SET").arg(&key).arg("not a hash").query_async(&mut c).await.unwrap();
    let _: i64 = redis::cmd("PUBLISH").arg(&channel).arg("1").query_async(&mut c).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(30), wait).await.expect("the wait outlived its 20 s timeout");
    let err = got.unwrap().expect_err("a wrong-type key was treated as no response yet");
    assert!(err.to_string().contains("WRONGTYPE"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10), "the command error was retried for {:?}", started.elapsed());
    h.shutdown().await;
}

/// A worker idle across a Redis restart: its command connection died with the server, and
/// nothing has used it since, so the first command after the restart is the one that finds
/// out. A wait for a response already stored, and a late joiner of a stream whose chunks are
/// in the list, must each have it at once (a reconnect, not an error and not a poll
/// interval later). The property search found the stream half: a late joiner after a
/// crash + restart got chunk 0 a poll interval late, in every run.
#[tokio::test]
async fn a_worker_idle_across_a_restart_reads_at_once_on_its_first_command() {
    use harness::infra::{Persistence, RedisNode, RedisSpec, Restart};
    let mut rig = Rig::with_spec(RedisSpec::default().persistence(Persistence::AofAlways)).await;
    // Polling slow enough that a read a poll interval late cannot pass.
    let cfg = Config { poll_interval_ms: 2_000, ..config(&rig) };
    let h = Hybrid::connect(&rig.redis_url(), &rig.redis_url(), cfg.clone()).await.unwrap();
    let producer = StreamProducer::connect(&rig.redis_url(), cfg.clone()).await.unwrap();
    let consumer = StreamConsumer::connect(&rig.redis_url(), &rig.redis_url(), cfg.clone()).await.unwrap();
    h.respond("idle", &fields("idle")).await;
    assert!(producer.publish("t", &Chunk::last(0, "only")).await.committed());
    // Both connections are used once, then left idle while the server restarts.
    assert!(matches!(h.read("idle").await, Ok(Some(_))));
    rig.redis.restart(Restart::Graceful).await.unwrap();

    // Which read delivered is the evidence: with a 2 s poll interval, a read that failed
    // and left the rest to the poller shows as polled (or a timeout), not as the first read.
    let got = h.wait("idle", Duration::from_secs(10)).await;
    assert!(matches!(got, Ok(WaitOutcome::Obtained { via: Via::Immediate, .. })), "{got:?}");
    let mut vias = Vec::new();
    let end = consumer.follow("t", 0, Duration::from_secs(10), |c, via| vias.push((c.chunk_index, via))).await;
    assert!(matches!(end, Ok(FollowEnd::Finished { delivered: 1, .. })), "{end:?}");
    assert_eq!(vias, [(0, Via::Immediate)], "chunk 0 came by another read than the first");
    h.shutdown().await;
    consumer.shutdown().await;
}

/// A wait that starts while Redis is down is a wait: with the server gone for all of it, it
/// times out at its deadline (its first read failing is no reason to give up at once, the
/// reads after it go on), and the next wait, with the server back, has the response.
#[tokio::test]
async fn a_wait_begun_while_redis_is_down_times_out_rather_than_failing() {
    use harness::infra::{Persistence, RedisNode, RedisSpec, Restart};
    let mut rig = Rig::with_spec(RedisSpec::default().persistence(Persistence::AofAlways)).await;
    let cfg = Config { poll_interval_ms: 100, ..config(&rig) };
    let h = Hybrid::connect(&rig.redis_url(), &rig.redis_url(), cfg).await.unwrap();
    h.respond("down", &fields("down")).await;
    rig.redis.stop(Restart::Crash).await.unwrap();
    let got = h.wait("down", Duration::from_millis(1_500)).await;
    assert!(matches!(got, Ok(WaitOutcome::TimedOut)), "{got:?}");
    rig.redis.start().await.unwrap();
    let got = h.wait("down", Duration::from_secs(10)).await;
    assert!(matches!(got, Ok(WaitOutcome::Obtained { .. })), "{got:?}");
    h.shutdown().await;
}
