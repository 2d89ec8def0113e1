//! Shared set-up for the criterion benches: a real `redis-server` with the fault proxy in
//! front of it, and side-by-side (interleaved) sampling so ratios are measured in one run
//! under the same machine noise. Results go to `reports/out/bench/`.

use std::time::{Duration, Instant};

use harness::infra::{ProcessRedis, RedisNode, RedisSpec};
use harness::toxiproxy::server::ServerOptions;
use harness::toxiproxy::FaultProxy;

/// A Redis and a proxy in front of it, kept alive for a bench's duration.
pub struct BenchRig {
    pub redis: ProcessRedis,
    pub faults: FaultProxy,
    pub proxied_url: String,
    pub proxy_name: String,
}

impl BenchRig {
    pub async fn start() -> BenchRig {
        let redis = ProcessRedis::start(RedisSpec::default())
            .await
            .expect("start redis-server (is it installed? run ./ci/test once)");
        let faults =
            FaultProxy::from_env(ServerOptions { seed: Some(1), ..Default::default() }).await.expect("fault proxy");
        let proxy = faults
            .client()
            .create_proxy(&format!("bench-{}", redis.port()), "127.0.0.1:0", &redis.addr())
            .await
            .expect("proxy");
        BenchRig { proxied_url: format!("redis://{}/", proxy.listen), proxy_name: proxy.name, redis, faults }
    }
}

/// A multiplexed connection with generous limits (benches measure, they do not time out).
pub async fn connect(url: &str) -> redis::aio::MultiplexedConnection {
    let limit = Some(Duration::from_secs(10));
    let config = redis::AsyncConnectionConfig::new().set_connection_timeout(limit).set_response_timeout(limit);
    redis::Client::open(url).unwrap().get_multiplexed_async_connection_with_config(&config).await.expect("connect")
}

pub async fn ping(c: &mut redis::aio::MultiplexedConnection) -> Duration {
    let t = Instant::now();
    let _: String = redis::cmd("PING").query_async(c).await.expect("PING");
    t.elapsed()
}

/// Quantile `q` in [0, 1] of `samples` (sorted in place), nearest rank.
pub fn quantile(samples: &mut [Duration], q: f64) -> Duration {
    samples.sort_unstable();
    let rank = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len());
    samples[rank - 1]
}

/// Writes `value` as pretty JSON to `reports/out/bench/<name>.json` at the workspace root.
pub fn write_result(name: &str, value: &serde_json::Value) -> std::io::Result<std::path::PathBuf> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../reports/out/bench");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_string_pretty(value)? + "\n")?;
    Ok(path)
}

/// Quantiles in microseconds, as the summaries print and store them.
pub fn quantiles_us(samples: &mut [Duration]) -> serde_json::Value {
    let us = |d: Duration| (d.as_secs_f64() * 1e7).round() / 10.0;
    serde_json::json!({
        "samples": samples.len(),
        "p50": us(quantile(samples, 0.5)),
        "p90": us(quantile(samples, 0.9)),
        "p99": us(quantile(samples, 0.99)),
        "max": us(quantile(samples, 1.0)),
    })
}

/// A global allocator that counts live heap bytes, for memory-per-item figures measured
/// in the bench process itself (no RSS noise from the allocator's caching).
pub struct CountingAlloc;

static LIVE_BYTES: std::sync::atomic::AtomicIsize = std::sync::atomic::AtomicIsize::new(0);

impl CountingAlloc {
    /// Heap bytes currently allocated through this allocator.
    pub fn live_bytes() -> isize {
        LIVE_BYTES.load(std::sync::atomic::Ordering::Relaxed)
    }
}

// SAFETY: delegates every call to the system allocator unchanged; only counts sizes.
unsafe impl std::alloc::GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        let p = unsafe { std::alloc::System.alloc(layout) };
        if !p.is_null() {
            LIVE_BYTES.fetch_add(layout.size() as isize, std::sync::atomic::Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        unsafe { std::alloc::System.dealloc(ptr, layout) };
        LIVE_BYTES.fetch_sub(layout.size() as isize, std::sync::atomic::Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { std::alloc::System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE_BYTES.fetch_add(new_size as isize - layout.size() as isize, std::sync::atomic::Ordering::Relaxed);
        }
        p
    }
}
