//! A short end-to-end exercise of the foundation (`hybrid-chaos smoke`), a first check that a
//! machine can run the harness at all. It starts a real `redis-server` (AOF always), puts a fault proxy in front of
//! it, injects a latency toxic and a crash, and reports what it measured. Every step is a
//! check: a step whose effect is not observed fails the smoke run.

use std::time::{Duration, Instant};

use redis::AsyncCommands;
use serde::Serialize;

use crate::infra::{admin, Persistence, ProcessRedis, RedisNode, RedisSpec, Restart};
use crate::toxiproxy::server::ServerOptions;
use crate::toxiproxy::{FaultProxy, Stream, Toxic, ToxicKind};

/// Latency injected by the smoke run, in milliseconds.
const SMOKE_LATENCY_MS: u64 = 50;
/// Response limit for the smoke run's client, in milliseconds.
const CLIENT_TIMEOUT_MS: u64 = 5_000;

#[derive(Debug, Serialize)]
pub struct SmokeReport {
    pub redis_version: String,
    pub toxiproxy: &'static str,
    pub ping_direct_us: u64,
    pub ping_proxied_us: u64,
    pub ping_with_latency_ms: u64,
    pub injected_latency_ms: u64,
    pub crash_restart_ready_ms: u64,
    pub key_survived_crash: bool,
}

async fn client(url: &str) -> anyhow::Result<redis::aio::MultiplexedConnection> {
    let limit = Some(Duration::from_millis(CLIENT_TIMEOUT_MS));
    let config = redis::AsyncConnectionConfig::new().set_connection_timeout(limit).set_response_timeout(limit);
    Ok(redis::Client::open(url)?.get_multiplexed_async_connection_with_config(&config).await?)
}

async fn timed_ping(conn: &mut redis::aio::MultiplexedConnection) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let pong: String = redis::cmd("PING").query_async(conn).await?;
    anyhow::ensure!(pong == "PONG", "PING answered {pong:?}");
    Ok(t.elapsed())
}

pub async fn run() -> anyhow::Result<SmokeReport> {
    let mut redis = ProcessRedis::start(RedisSpec::default().persistence(Persistence::AofAlways)).await?;
    let faults = FaultProxy::from_env(ServerOptions::default()).await?;
    let tp = faults.client();
    let proxy = tp.create_proxy(&format!("smoke-{}", redis.port()), "127.0.0.1:0", &redis.addr()).await?;
    let proxied_url = format!("redis://{}/", proxy.listen);

    let mut direct = client(&redis.url()).await?;
    let mut proxied = client(&proxied_url).await?;
    let ping_direct = timed_ping(&mut direct).await?;
    let ping_proxied = timed_ping(&mut proxied).await?;

    let toxic = Toxic::new(ToxicKind::Latency { latency_ms: SMOKE_LATENCY_MS, jitter_ms: 0 }, Stream::Downstream);
    tp.add_toxic(&proxy.name, &toxic).await?;
    let with_latency = timed_ping(&mut proxied).await?;
    tp.remove_toxic(&proxy.name, &toxic.name).await?;
    anyhow::ensure!(
        with_latency >= Duration::from_millis(SMOKE_LATENCY_MS),
        "latency toxic of {SMOKE_LATENCY_MS} ms had no effect: PING took {with_latency:?}"
    );

    let key = format!("{}smoke", redis.key_prefix());
    let _: () = proxied.set(&key, "survives").await?;
    let ready = redis.restart(Restart::Crash).await?;
    let mut after = client(&redis.url()).await?;
    let value: Option<String> = after.get(&key).await?;
    let info = admin::info(&redis.url(), Some("server")).await?;
    tp.delete_proxy(&proxy.name).await?;
    anyhow::ensure!(
        value.as_deref() == Some("survives"),
        "a write acknowledged under AOF always was lost by a crash: {value:?}"
    );

    Ok(SmokeReport {
        redis_version: info.get("redis_version").cloned().unwrap_or_default(),
        toxiproxy: faults.kind(),
        ping_direct_us: ping_direct.as_micros() as u64,
        ping_proxied_us: ping_proxied.as_micros() as u64,
        ping_with_latency_ms: with_latency.as_millis() as u64,
        injected_latency_ms: SMOKE_LATENCY_MS,
        crash_restart_ready_ms: ready.ready_ms,
        key_survived_crash: value.as_deref() == Some("survives"),
    })
}
