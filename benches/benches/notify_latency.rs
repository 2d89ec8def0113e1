//! `notify_latency`: respond-to-wake against a real `redis-server`, for the hybrid, raw
//! Pub/Sub delivery (PUBLISH to message received, the floor) and polling-only (shows its
//! poll interval). Each hybrid and polling-only sample starts a waiter, waits until it is
//! really waiting, then times `respond` until the waiter returns. An interleaved run after
//! the criterion groups gives quantiles under the same noise and the ratio to the floor.
//! Target: hybrid p50 within 1.5x of raw Pub/Sub p50.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion, SamplingMode};
use futures_util::StreamExt;
use harness::infra::{admin, RedisNode};
use harness::reference::baselines::{PollingOnly, PubSubOnly};
use harness::reference::feedback::Hybrid;
use harness::reference::{response_fields, Config, FeedbackStrategy, WaitOutcome};
use hybrid_chaos_benches::{quantiles_us, write_result, BenchRig};
use rand::{Rng, SeedableRng};

/// Interleaved samples of hybrid and raw Pub/Sub.
const SAMPLES: usize = 300;
/// Polling-only samples (each costs up to a poll interval).
const POLLING_SAMPLES: usize = 16;
const TARGET_P50_RATIO: f64 = 1.5;

struct Raw {
    publisher: redis::aio::MultiplexedConnection,
    messages: redis::aio::PubSubStream,
    channel: String,
}

impl Raw {
    async fn sample(&mut self) -> Duration {
        let t = Instant::now();
        let _: u64 = redis::cmd("PUBLISH").arg(&self.channel).arg("x").query_async(&mut self.publisher).await.unwrap();
        self.messages.next().await.expect("message");
        t.elapsed()
    }
}

/// One respond-to-wake sample. `ready` tells when the waiter is really waiting.
async fn sample(
    s: Arc<dyn FeedbackStrategy>,
    id: String,
    ready: impl std::future::Future<Output = ()>,
    lead: Duration,
) -> Duration {
    let waiter = tokio::spawn({
        let (s, id) = (s.clone(), id.clone());
        async move { s.wait(&id, Duration::from_secs(30)).await }
    });
    ready.await;
    tokio::time::sleep(lead).await;
    let fields = response_fields(&id, &serde_json::Map::new());
    let t = Instant::now();
    s.respond(&id, &fields).await;
    let got = waiter.await.unwrap().unwrap();
    let took = t.elapsed();
    assert!(matches!(got, WaitOutcome::Obtained { .. }), "{got:?}");
    took
}

async fn subscribed(url: String, channel: String) {
    let ok = harness::poll_until(Duration::from_secs(10), Duration::from_micros(200), || async {
        let n = admin::pubsub_numsub(&url, &[&channel]).await.ok()?;
        (n[0].1 == 1).then_some(())
    })
    .await;
    assert!(ok.is_some(), "waiter never subscribed");
}

async fn waiting(s: Arc<dyn FeedbackStrategy>) {
    while s.stats().waiters == 0 {
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let rig = rt.block_on(BenchRig::start());
    let url = rig.redis.url();
    let cfg = Config::default().with_prefix(rig.redis.key_prefix());
    let poll_interval = Duration::from_millis(cfg.poll_interval_ms);
    let hybrid: Arc<dyn FeedbackStrategy> = Arc::new(rt.block_on(Hybrid::connect(&url, &url, cfg.clone())).unwrap());
    let polling: Arc<dyn FeedbackStrategy> = Arc::new(rt.block_on(PollingOnly::connect(&url, cfg.clone())).unwrap());
    // Same plumbing as the hybrid (hub, publisher) minus the storage write and read: the
    // difference to the hybrid is what storage-as-truth costs.
    let pubsub_only: Arc<dyn FeedbackStrategy> =
        Arc::new(rt.block_on(PubSubOnly::connect(&url, &url, cfg.clone())).unwrap());
    let mut raw = rt.block_on(async {
        let channel = format!("{}raw", rig.redis.key_prefix());
        let mut ps = redis::Client::open(url.as_str()).unwrap().get_async_pubsub().await.unwrap();
        ps.subscribe(&channel).await.unwrap();
        Raw { publisher: hybrid_chaos_benches::connect(&url).await, messages: ps.into_on_message(), channel }
    });
    let mut next_id = 0u64;
    let mut id = || {
        next_id += 1;
        format!("n{next_id}")
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);

    let mut g = c.benchmark_group("notify_latency");
    g.sample_size(20).measurement_time(Duration::from_secs(3));
    g.bench_function("raw_pubsub", |b| {
        b.iter_custom(|n| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..n {
                    total += raw.sample().await;
                }
                total
            })
        })
    });
    g.bench_function("hybrid", |b| {
        b.iter_custom(|n| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..n {
                    let id = id();
                    let ch = cfg.keys.feedback_channel(&id);
                    total += sample(hybrid.clone(), id, subscribed(url.clone(), ch), Duration::ZERO).await;
                }
                total
            })
        })
    });
    g.sampling_mode(SamplingMode::Flat).sample_size(10).measurement_time(Duration::from_secs(1));
    g.bench_function("polling_only", |b| {
        b.iter_custom(|n| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..n {
                    let lead = Duration::from_millis(rng.random_range(0..poll_interval.as_millis() as u64));
                    total += sample(polling.clone(), id(), waiting(polling.clone()), lead).await;
                }
                total
            })
        })
    });
    g.finish();

    // Interleaved: hybrid, raw, hybrid, raw ... under the same noise.
    let (mut h, mut r, mut p, mut o) = rt.block_on(async {
        let (mut h, mut r, mut p, mut o) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..SAMPLES {
            let hid = id();
            let ch = cfg.keys.feedback_channel(&hid);
            h.push(sample(hybrid.clone(), hid, subscribed(url.clone(), ch), Duration::ZERO).await);
            r.push(raw.sample().await);
            let oid = id();
            let ch = cfg.keys.feedback_channel(&oid);
            o.push(sample(pubsub_only.clone(), oid, subscribed(url.clone(), ch), Duration::ZERO).await);
        }
        for _ in 0..POLLING_SAMPLES {
            let lead = Duration::from_millis(rng.random_range(0..poll_interval.as_millis() as u64));
            p.push(sample(polling.clone(), id(), waiting(polling.clone()), lead).await);
        }
        (h, r, p, o)
    });
    let (hq, rq, pq, oq) = (quantiles_us(&mut h), quantiles_us(&mut r), quantiles_us(&mut p), quantiles_us(&mut o));
    let over_pubsub_only = hq["p50"].as_f64().unwrap() / oq["p50"].as_f64().unwrap();
    let ratio = hq["p50"].as_f64().unwrap() / rq["p50"].as_f64().unwrap();
    let polling_ratio = pq["p50"].as_f64().unwrap() / rq["p50"].as_f64().unwrap();
    println!("notify_latency interleaved: raw pub/sub {rq}");
    println!("notify_latency interleaved: pubsub-only {oq}");
    println!("notify_latency interleaved: hybrid      {hq}");
    println!("notify_latency interleaved: polling-only {pq} (poll interval {} ms)", poll_interval.as_millis());
    println!(
        "notify_latency: hybrid p50 / raw p50 = {ratio:.2}x (target <= {TARGET_P50_RATIO}x: {}); hybrid / pubsub-only p50 = {over_pubsub_only:.2}x; polling-only p50 / raw p50 = {polling_ratio:.0}x",
        if ratio <= TARGET_P50_RATIO { "met" } else { "NOT met" }
    );
    let result = serde_json::json!({
        "bench": "notify_latency",
        "unit": "us",
        "raw_pubsub": rq, "hybrid": hq, "polling_only": pq, "pubsub_only": oq,
        "hybrid_over_pubsub_only_p50": over_pubsub_only,
        "poll_interval_ms": poll_interval.as_millis() as u64,
        "hybrid_over_raw_p50": ratio,
        "polling_only_over_raw_p50": polling_ratio,
        "target_hybrid_over_raw_p50": TARGET_P50_RATIO,
    });
    if let Ok(path) = write_result("notify_latency", &result) {
        println!("written to {}", path.display());
    }
    rt.block_on(async {
        hybrid.shutdown().await;
        polling.shutdown().await;
        pubsub_only.shutdown().await;
    });
    drop(rig);
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
