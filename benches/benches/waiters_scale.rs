//! `waiters_scale`: many concurrent hybrid waiters in one process against a real
//! `redis-server`. For each waiter count it reports, measured side by side in one run:
//! Redis connections the implementation opened (target: at most 2), Redis commands per second
//! while every waiter is idle (target: independent of the count), and heap bytes per waiter
//! (target: under 2 KiB, counted by a counting allocator, not RSS). A criterion group then
//! times one full respond-to-wake with 0 and with 10,000 idle waiters around it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion};
use harness::infra::{admin, RedisNode};
use harness::reference::feedback::Hybrid;
use harness::reference::{response_fields, Config, FeedbackStrategy};
use hybrid_chaos_benches::{record, BenchRig, CountingAlloc};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

const COUNTS: [usize; 3] = [100, 1_000, 10_000];
/// Window over which idle Redis commands are counted, in ms.
const IDLE_WINDOW_MS: u64 = 3_000;
const TARGET_BYTES_PER_WAITER: f64 = 2048.0;
/// Pause after the last confirmation before measuring, in ms.
const SETTLE_MS: u64 = 500;

async fn commands_processed(url: &str) -> u64 {
    admin::info(url, Some("stats")).await.unwrap()["total_commands_processed"].parse().unwrap()
}

/// Starts `n` idle waiters and returns their handles once all are registered and subscribed.
async fn spawn_waiters(h: &Arc<Hybrid>, n: usize, tag: &str) -> Vec<tokio::task::JoinHandle<()>> {
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let h = h.clone();
            let id = format!("{tag}-{i}");
            tokio::spawn(async move {
                let _ = h.wait(&id, Duration::from_secs(600)).await;
            })
        })
        .collect();
    // Settled: every waiter registered with the poller and every channel confirmed, so the
    // one re-read each waiter does on confirmation is over before anything is measured.
    let all = harness::poll_until(Duration::from_secs(120), Duration::from_millis(20), || async {
        let s = h.stats();
        (s.pending_polls >= n && s.channels >= n && h.hub().subscribed_count() >= n).then_some(())
    })
    .await;
    assert!(all.is_some(), "only {:?} of {n} waiters registered", h.stats());
    tokio::time::sleep(Duration::from_millis(SETTLE_MS)).await;
    handles
}

async fn release(h: &Arc<Hybrid>, handles: Vec<tokio::task::JoinHandle<()>>) {
    for w in &handles {
        w.abort();
    }
    for w in handles {
        let _ = w.await;
    }
    let clean = harness::poll_until(Duration::from_secs(30), Duration::from_millis(20), || async {
        let s = h.stats();
        (s.waiters == 0 && s.channels == 0 && s.pending_polls == 0).then_some(())
    })
    .await;
    assert!(clean.is_some(), "waiters not cleaned up: {:?}", h.stats());
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let rig = rt.block_on(BenchRig::start());
    let url = rig.redis.url();
    let cfg = Config::default().with_prefix(rig.redis.key_prefix());

    let rows = rt.block_on(async {
        let baseline_clients = admin::clients_under_test(&url).await.unwrap().len();
        let h = Arc::new(Hybrid::connect(&url, &url, cfg.clone()).await.unwrap());
        let mut rows = Vec::new();
        for n in COUNTS {
            let before = CountingAlloc::live_bytes();
            let handles = spawn_waiters(&h, n, &format!("s{n}")).await;
            let bytes_per_waiter = (CountingAlloc::live_bytes() - before) as f64 / n as f64;
            let connections = admin::clients_under_test(&url).await.unwrap().len() - baseline_clients;
            let c0 = commands_processed(&url).await;
            let t = Instant::now();
            tokio::time::sleep(Duration::from_millis(IDLE_WINDOW_MS)).await;
            let c1 = commands_processed(&url).await;
            // Each INFO costs the admin connection three commands (HELLO-less connect:
            // CLIENT SETNAME, INFO, and the one being counted); subtract ours.
            let idle = (c1 - c0).saturating_sub(2) as f64 / t.elapsed().as_secs_f64();
            println!("waiters_scale n={n:>6}: connections {connections}, idle commands/s {idle:.1}, heap bytes per waiter {bytes_per_waiter:.0}");
            rows.push(serde_json::json!({
                "waiters": n,
                "connections": connections,
                "idle_commands_per_s": idle,
                "bytes_per_waiter": bytes_per_waiter,
            }));
            release(&h, handles).await;
        }
        h.shutdown().await;
        rows
    });
    let max_bytes = rows.iter().map(|r| r["bytes_per_waiter"].as_f64().unwrap()).fold(0.0, f64::max);
    let max_conns = rows.iter().map(|r| r["connections"].as_u64().unwrap()).max().unwrap();
    let idle: Vec<f64> = rows.iter().map(|r| r["idle_commands_per_s"].as_f64().unwrap()).collect();
    println!(
        "waiters_scale: connections max {max_conns} (target <= 2), idle commands/s {idle:?} at {COUNTS:?} waiters, bytes/waiter max {max_bytes:.0} (target < {TARGET_BYTES_PER_WAITER})"
    );
    record(
        "waiters_scale",
        &serde_json::json!({ "bench": "waiters_scale", "rows": rows, "idle_window_ms": IDLE_WINDOW_MS }),
    );

    let mut g = c.benchmark_group("waiters_scale");
    g.sample_size(20).measurement_time(Duration::from_secs(3));
    for idle in [0usize, 10_000] {
        let h = Arc::new(rt.block_on(Hybrid::connect(&url, &url, cfg.clone())).unwrap());
        let handles = rt.block_on(spawn_waiters(&h, idle, "idle"));
        let mut next = 0u64;
        g.bench_function(format!("respond_to_wake_with_{idle}_idle"), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        next += 1;
                        // Unique across the groups: an id answered in an earlier group would
                        // return at once from storage and never register.
                        let id = format!("live-{idle}-{next}");
                        // Counted before the spawn: the waiter may register at once.
                        let base = h.stats().pending_polls;
                        let w = tokio::spawn({
                            let (h, id) = (h.clone(), id.clone());
                            async move { h.wait(&id, Duration::from_secs(30)).await }
                        });
                        while h.stats().pending_polls <= base {
                            assert!(!w.is_finished(), "the waiter for {id} returned before registering");
                            tokio::time::sleep(Duration::from_micros(100)).await;
                        }
                        let t = Instant::now();
                        h.respond(&id, &response_fields(&id, &serde_json::Map::new())).await;
                        w.await.unwrap().unwrap();
                        total += t.elapsed();
                    }
                    total
                })
            })
        });
        rt.block_on(async {
            release(&h, handles).await;
            h.shutdown().await;
        });
    }
    g.finish();
    drop(rig);
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
