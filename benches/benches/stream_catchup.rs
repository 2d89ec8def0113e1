//! `stream_catchup`: chunk streaming (seed `003_*`) against a real `redis-server` through the
//! fault proxy, per stream strategy.
//!
//! - **live chunk**: a follower is subscribed and waiting; time from `publish` of a final
//!   chunk until the follower has delivered it (hybrid, pub/sub-only, polling-only).
//! - **late joiner**: [`LATE_CHUNKS`] chunks are already stored; time for a new follower to
//!   deliver all of them from index 0 (hybrid, polling-only). Pub/sub-only cannot catch up
//!   (nothing is stored): the bench checks, and reports, how many it delivered (none).

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion, SamplingMode};
use harness::infra::{admin, RedisNode};
use harness::reference::baselines::{PollingOnlyStream, PubSubOnlyStream};
use harness::reference::stream::{Chunk, FollowEnd, HybridStream};
use harness::reference::{Config, StreamStrategy};
use hybrid_chaos_benches::{quantiles_us, record, BenchRig};

/// Interleaved live samples per strategy.
const LIVE_SAMPLES: usize = 200;
/// Polling-only live samples (each costs up to a poll interval).
const POLLING_SAMPLES: usize = 16;
/// Chunks stored before the late joiner starts.
const LATE_CHUNKS: u64 = 1_000;
/// Late-joiner runs per strategy in the interleaved run.
const LATE_SAMPLES: usize = 10;
/// How long pub/sub-only gets to catch up before it is declared unable to, in ms.
const PUBSUB_CATCHUP_MS: u64 = 500;

struct Rig {
    hybrid: Arc<dyn StreamStrategy>,
    pubsub_only: Arc<dyn StreamStrategy>,
    polling: Arc<dyn StreamStrategy>,
    url: String,
    cfg: Config,
    next: u64,
}

impl Rig {
    fn task(&mut self) -> String {
        self.next += 1;
        format!("t{}", self.next)
    }

    /// A follower waiting on a fresh task, then one final chunk published: publish to delivered.
    async fn live(&mut self, s: Arc<dyn StreamStrategy>, subscribes: bool) -> Duration {
        let task = self.task();
        let follower = tokio::spawn({
            let (s, task) = (s.clone(), task.clone());
            async move { s.follow(&task, 0, Duration::from_secs(30), &mut |_, _| {}).await }
        });
        if subscribes {
            let ch = self.cfg.keys.stream_channel(&task);
            let url = self.url.clone();
            let ok = harness::poll_until(Duration::from_secs(10), Duration::from_micros(200), || async {
                let n = admin::pubsub_numsub(&url, &[&ch]).await.ok()?;
                (n[0].1 == 1).then_some(())
            })
            .await;
            assert!(ok.is_some(), "follower never subscribed");
        } else {
            // Polling-only: respond at a random point of the poll interval.
            let lead = rand::random_range(0..self.cfg.poll_interval_ms);
            tokio::time::sleep(Duration::from_millis(lead)).await;
        }
        let t = Instant::now();
        assert!(s.publish(&task, &Chunk::last(0, "x")).await.committed());
        let end = follower.await.unwrap().unwrap();
        let took = t.elapsed();
        assert!(matches!(end, FollowEnd::Finished { delivered: 1, .. }), "{end:?}");
        took
    }

    /// Stores [`LATE_CHUNKS`] chunks through `producer`, then times a follower from index 0.
    async fn late(
        &mut self,
        producer: &Arc<dyn StreamStrategy>,
        s: Arc<dyn StreamStrategy>,
        limit: Duration,
    ) -> (Duration, u64) {
        let task = self.task();
        for i in 0..LATE_CHUNKS {
            let c = if i + 1 == LATE_CHUNKS { Chunk::last(i, "x") } else { Chunk::content(i, "x") };
            assert!(producer.publish(&task, &c).await.committed());
        }
        let t = Instant::now();
        let end = s.follow(&task, 0, limit, &mut |_, _| {}).await.unwrap();
        let took = t.elapsed();
        match end {
            FollowEnd::Finished { delivered, .. } | FollowEnd::TimedOut { delivered, .. } => (took, delivered),
        }
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let bench_rig = rt.block_on(BenchRig::start());
    let via = bench_rig.proxied_url.clone();
    let cfg = Config::default().with_prefix(bench_rig.redis.key_prefix());
    let mut rig = rt.block_on(async {
        Rig {
            hybrid: Arc::new(HybridStream::connect(&via, &via, cfg.clone()).await.unwrap()),
            pubsub_only: Arc::new(PubSubOnlyStream::connect(&via, &via, cfg.clone()).await.unwrap()),
            polling: Arc::new(PollingOnlyStream::connect(&via, cfg.clone()).await.unwrap()),
            url: bench_rig.redis.url(),
            cfg: cfg.clone(),
            next: 0,
        }
    });

    let mut g = c.benchmark_group("stream_catchup");
    g.sample_size(20).measurement_time(Duration::from_secs(3));
    for name in ["pubsub_only", "hybrid"] {
        g.bench_function(format!("live_chunk/{name}"), |b| {
            b.iter_custom(|n| {
                rt.block_on(async {
                    let s = if name == "hybrid" { rig.hybrid.clone() } else { rig.pubsub_only.clone() };
                    let mut total = Duration::ZERO;
                    for _ in 0..n {
                        total += rig.live(s.clone(), true).await;
                    }
                    total
                })
            })
        });
    }
    g.sampling_mode(SamplingMode::Flat).sample_size(10).measurement_time(Duration::from_secs(2));
    let hybrid = rig.hybrid.clone();
    g.bench_function(format!("late_joiner_{LATE_CHUNKS}/hybrid"), |b| {
        b.iter_custom(|n| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..n {
                    total += rig.late(&hybrid, hybrid.clone(), Duration::from_secs(30)).await.0;
                }
                total
            })
        })
    });
    g.finish();

    // Interleaved, under the same noise.
    let (mut h, mut o, mut p, mut lh, mut lp, pubsub_delivered) = rt.block_on(async {
        let (mut h, mut o, mut p, mut lh, mut lp) = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..LIVE_SAMPLES {
            h.push(rig.live(rig.hybrid.clone(), true).await);
            o.push(rig.live(rig.pubsub_only.clone(), true).await);
        }
        for _ in 0..POLLING_SAMPLES {
            p.push(rig.live(rig.polling.clone(), false).await);
        }
        let hybrid = rig.hybrid.clone();
        for _ in 0..LATE_SAMPLES {
            lh.push(rig.late(&hybrid, hybrid.clone(), Duration::from_secs(30)).await.0);
            lp.push(rig.late(&hybrid, rig.polling.clone(), Duration::from_secs(30)).await.0);
        }
        let limit = Duration::from_millis(PUBSUB_CATCHUP_MS);
        let (_, delivered) = rig.late(&hybrid, rig.pubsub_only.clone(), limit).await;
        (h, o, p, lh, lp, delivered)
    });
    let (hq, oq, pq) = (quantiles_us(&mut h), quantiles_us(&mut o), quantiles_us(&mut p));
    let (lhq, lpq) = (quantiles_us(&mut lh), quantiles_us(&mut lp));
    let p50 = |q: &serde_json::Value| q["p50"].as_f64().unwrap();
    println!("stream_catchup live chunk: pubsub-only {oq}");
    println!("stream_catchup live chunk: hybrid      {hq}");
    println!("stream_catchup live chunk: polling-only {pq}");
    println!(
        "stream_catchup live chunk: hybrid / pubsub-only p50 = {:.2}x; polling-only / pubsub-only p50 = {:.0}x",
        p50(&hq) / p50(&oq),
        p50(&pq) / p50(&oq)
    );
    println!("stream_catchup late joiner ({LATE_CHUNKS} chunks): hybrid {lhq}; polling-only {lpq}; pub/sub-only delivered {pubsub_delivered} of {LATE_CHUNKS} in {PUBSUB_CATCHUP_MS} ms");
    let result = serde_json::json!({
        "bench": "stream_catchup",
        "unit": "us",
        "through": "fault proxy",
        "live_chunk": { "hybrid": hq, "pubsub_only": oq, "polling_only": pq },
        "late_joiner": {
            "chunks": LATE_CHUNKS,
            "hybrid": lhq,
            "polling_only": lpq,
            "pubsub_only_delivered": pubsub_delivered,
            "pubsub_only_limit_ms": PUBSUB_CATCHUP_MS,
        },
    });
    record("stream_catchup", &result);
    rt.block_on(async {
        rig.hybrid.shutdown().await;
        rig.pubsub_only.shutdown().await;
        rig.polling.shutdown().await;
    });
    drop(bench_rig);
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
