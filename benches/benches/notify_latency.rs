//! `notify_latency`: respond-to-wake against a real `redis-server` through the fault proxy,
//! per strategy (hybrid, pub/sub-only, polling-only) and raw Pub/Sub delivery (PUBLISH to
//! message received, the floor), under three network conditions: clean, 5 ms latency, and
//! 5 ms +- 4 ms jitter (Toxiproxy latency toxics on every connection's downstream).
//!
//! Each strategy sample starts a waiter, waits until it is really waiting, then times
//! `respond` until the waiter returns. Per condition, a criterion group, then an interleaved
//! run (hybrid, raw, pub/sub-only, hybrid, ...) under the same noise gives the quantiles and
//! the ratios the summary reports. Target: hybrid p50 within 1.5x of raw Pub/Sub p50.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion, SamplingMode};
use futures_util::StreamExt;
use harness::infra::{admin, RedisNode};
use harness::reference::baselines::{PollingOnly, PubSubOnly};
use harness::reference::feedback::Hybrid;
use harness::reference::{response_fields, Config, FeedbackStrategy, WaitOutcome};
use harness::toxiproxy::{Stream, Toxic, ToxicKind};
use hybrid_chaos_benches::{quantiles_us, record, BenchRig};
use rand::{Rng, SeedableRng};

/// Interleaved samples per fast strategy and condition.
const SAMPLES: usize = 200;
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

/// The network conditions, as (name, latency ms, jitter ms).
const CONDITIONS: [(&str, u64, u64); 3] = [("clean", 0, 0), ("latency_5ms", 5, 0), ("jitter_5ms_4ms", 5, 4)];

/// Every strategy under test plus the raw floor, connected through the proxy.
struct Subjects {
    hybrid: Arc<dyn FeedbackStrategy>,
    pubsub_only: Arc<dyn FeedbackStrategy>,
    polling: Arc<dyn FeedbackStrategy>,
    raw: Raw,
    url: String,
    cfg: Config,
    next_id: u64,
    rng: rand::rngs::StdRng,
}

impl Subjects {
    fn id(&mut self) -> String {
        self.next_id += 1;
        format!("n{}", self.next_id)
    }

    /// One sample of a strategy that subscribes (hybrid, pub/sub-only).
    async fn subscribed_sample(&mut self, s: Arc<dyn FeedbackStrategy>) -> Duration {
        let id = self.id();
        let ch = self.cfg.keys.feedback_channel(&id);
        sample(s, id, subscribed(self.url.clone(), ch), Duration::ZERO).await
    }

    /// One polling-only sample, its respond at a random point of the poll interval.
    async fn polling_sample(&mut self) -> Duration {
        let lead = Duration::from_millis(self.rng.random_range(0..self.cfg.poll_interval_ms));
        let id = self.id();
        sample(self.polling.clone(), id, waiting(self.polling.clone()), lead).await
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let rig = rt.block_on(BenchRig::start());
    // Strategies and the raw floor go through the proxy; the admin checks go direct.
    let url = rig.redis.url();
    let via = rig.proxied_url.clone();
    let cfg = Config::default().with_prefix(rig.redis.key_prefix());
    let mut subj = rt.block_on(async {
        let channel = format!("{}raw", rig.redis.key_prefix());
        let mut ps = redis::Client::open(via.as_str()).unwrap().get_async_pubsub().await.unwrap();
        ps.subscribe(&channel).await.unwrap();
        Subjects {
            hybrid: Arc::new(Hybrid::connect(&via, &via, cfg.clone()).await.unwrap()),
            // Same plumbing as the hybrid (hub, publisher) minus the storage write and read.
            pubsub_only: Arc::new(PubSubOnly::connect(&via, &via, cfg.clone()).await.unwrap()),
            polling: Arc::new(PollingOnly::connect(&via, cfg.clone()).await.unwrap()),
            raw: Raw { publisher: hybrid_chaos_benches::connect(&via).await, messages: ps.into_on_message(), channel },
            url: url.clone(),
            cfg: cfg.clone(),
            next_id: 0,
            rng: rand::rngs::StdRng::seed_from_u64(42),
        }
    });
    let tp = rig.faults.client().clone();
    let mut results = serde_json::Map::new();
    for (condition, latency_ms, jitter_ms) in CONDITIONS {
        rt.block_on(async {
            tp.clear_toxics(&rig.proxy_name).await.unwrap();
            if latency_ms > 0 {
                let kind = ToxicKind::Latency { latency_ms, jitter_ms };
                tp.add_toxic(&rig.proxy_name, &Toxic::new(kind, Stream::Downstream)).await.unwrap();
            }
        });
        let mut g = c.benchmark_group(format!("notify_latency/{condition}"));
        g.sample_size(20).measurement_time(Duration::from_secs(3));
        g.bench_function("raw_pubsub", |b| {
            b.iter_custom(|n| {
                rt.block_on(async {
                    let mut total = Duration::ZERO;
                    for _ in 0..n {
                        total += subj.raw.sample().await;
                    }
                    total
                })
            })
        });
        for name in ["pubsub_only", "hybrid"] {
            g.bench_function(name, |b| {
                b.iter_custom(|n| {
                    rt.block_on(async {
                        let s = if name == "hybrid" { subj.hybrid.clone() } else { subj.pubsub_only.clone() };
                        let mut total = Duration::ZERO;
                        for _ in 0..n {
                            total += subj.subscribed_sample(s.clone()).await;
                        }
                        total
                    })
                })
            });
        }
        g.sampling_mode(SamplingMode::Flat).sample_size(10).measurement_time(Duration::from_secs(1));
        g.bench_function("polling_only", |b| {
            b.iter_custom(|n| {
                rt.block_on(async {
                    let mut total = Duration::ZERO;
                    for _ in 0..n {
                        total += subj.polling_sample().await;
                    }
                    total
                })
            })
        });
        g.finish();

        // Interleaved: hybrid, raw, pub/sub-only, hybrid, ... under the same noise.
        let (mut h, mut r, mut o, mut p) = rt.block_on(async {
            let (mut h, mut r, mut o, mut p) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for _ in 0..SAMPLES {
                h.push(subj.subscribed_sample(subj.hybrid.clone()).await);
                r.push(subj.raw.sample().await);
                o.push(subj.subscribed_sample(subj.pubsub_only.clone()).await);
            }
            for _ in 0..POLLING_SAMPLES {
                p.push(subj.polling_sample().await);
            }
            (h, r, o, p)
        });
        let (hq, rq, oq, pq) = (quantiles_us(&mut h), quantiles_us(&mut r), quantiles_us(&mut o), quantiles_us(&mut p));
        let p50 = |q: &serde_json::Value| q["p50"].as_f64().unwrap();
        let ratio = p50(&hq) / p50(&rq);
        println!("notify_latency/{condition} interleaved: raw pub/sub  {rq}");
        println!("notify_latency/{condition} interleaved: pubsub-only  {oq}");
        println!("notify_latency/{condition} interleaved: hybrid       {hq}");
        println!(
            "notify_latency/{condition} interleaved: polling-only {pq} (poll interval {} ms)",
            cfg.poll_interval_ms
        );
        println!(
            "notify_latency/{condition}: hybrid / pubsub-only p50 = {:.2}x; hybrid / raw p50 = {ratio:.2}x (target <= {TARGET_P50_RATIO}x: {}); polling-only / pubsub-only p50 = {:.0}x",
            p50(&hq) / p50(&oq),
            if ratio <= TARGET_P50_RATIO { "met" } else { "NOT met" },
            p50(&pq) / p50(&oq),
        );
        results.insert(
            condition.to_string(),
            serde_json::json!({
                "latency_ms": latency_ms, "jitter_ms": jitter_ms,
                "raw_pubsub": rq, "pubsub_only": oq, "hybrid": hq, "polling_only": pq,
                "hybrid_over_raw_p50": ratio,
            }),
        );
    }
    rt.block_on(tp.clear_toxics(&rig.proxy_name)).unwrap();
    let result = serde_json::json!({
        "bench": "notify_latency",
        "unit": "us",
        "through": "fault proxy",
        "poll_interval_ms": cfg.poll_interval_ms,
        "target_hybrid_over_raw_p50": TARGET_P50_RATIO,
        "conditions": results,
    });
    record("notify_latency", &result);
    rt.block_on(async {
        subj.hybrid.shutdown().await;
        subj.polling.shutdown().await;
        subj.pubsub_only.shutdown().await;
    });
    drop(rig);
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
