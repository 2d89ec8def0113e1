//! `proxy_overhead`: PING round trips to a real `redis-server`, direct vs through the embedded
//! fault proxy with no toxics. Criterion measures each; then an interleaved run (direct,
//! proxied, direct, ...) gives p50/p99 of both under the same noise and prints the ratio.
//! Target: proxied p50 within 1.3x of direct.

use std::time::Duration;

use criterion::{criterion_group, Criterion};
use harness::infra::RedisNode;
use hybrid_chaos_benches::{connect, ping, quantile, record, BenchRig};

/// PING pairs in the interleaved ratio run.
const INTERLEAVED_PAIRS: usize = 5_000;
/// Target from the issue: proxied p50 / direct p50.
const TARGET_P50_RATIO: f64 = 1.3;

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let rig = rt.block_on(BenchRig::start());
    let mut direct = rt.block_on(connect(&rig.redis.url()));
    let mut proxied = rt.block_on(connect(&rig.proxied_url));

    let mut g = c.benchmark_group("proxy_overhead");
    for (name, conn) in [("direct", &mut direct), ("proxied", &mut proxied)] {
        g.bench_function(name, |b| b.iter_custom(|iters| rt.block_on(async { sum_pings(conn, iters).await })));
    }
    g.finish();

    let (mut d, mut p) = rt.block_on(async {
        let (mut d, mut p) = (Vec::with_capacity(INTERLEAVED_PAIRS), Vec::with_capacity(INTERLEAVED_PAIRS));
        for _ in 0..INTERLEAVED_PAIRS {
            d.push(ping(&mut direct).await);
            p.push(ping(&mut proxied).await);
        }
        (d, p)
    });
    let us = |x: Duration| x.as_secs_f64() * 1e6;
    let (d50, p50) = (quantile(&mut d, 0.5), quantile(&mut p, 0.5));
    let (d99, p99) = (quantile(&mut d, 0.99), quantile(&mut p, 0.99));
    let ratio = us(p50) / us(d50);
    println!(
        "proxy_overhead interleaved ({INTERLEAVED_PAIRS} pairs): direct p50 {:.1} us p99 {:.1} us | proxied p50 {:.1} us p99 {:.1} us | p50 ratio {ratio:.2}x (target <= {TARGET_P50_RATIO}x: {})",
        us(d50), us(d99), us(p50), us(p99), if ratio <= TARGET_P50_RATIO { "met" } else { "NOT met" }
    );
    let result = serde_json::json!({
        "bench": "proxy_overhead",
        "pairs": INTERLEAVED_PAIRS,
        "direct_us": { "p50": us(d50), "p99": us(d99) },
        "proxied_us": { "p50": us(p50), "p99": us(p99) },
        "p50_ratio": ratio,
        "target_p50_ratio": TARGET_P50_RATIO,
    });
    record("proxy_overhead", &result);
    drop((direct, proxied));
    drop(rig);
}

async fn sum_pings(c: &mut redis::aio::MultiplexedConnection, n: u64) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..n {
        total += ping(c).await;
    }
    total
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
