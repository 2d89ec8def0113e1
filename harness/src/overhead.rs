//! The fault proxy's own share of a run's latencies.
//!
//! Every latency the reports show crosses the fault proxy at least once, so a reader must
//! know what the proxy adds on its own. [`ProxyProbe`] samples it during the run itself,
//! under the same machine load as the scenarios: PING pairs on a Redis of its own, one direct
//! and one through a proxy with no toxic (same kind of proxy as the rows: embedded, or the
//! one `TOXIPROXY_URL` names), in alternating order, every [`PROBE_INTERVAL_MS`].

use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::infra::{ProcessRedis, RedisNode, RedisSpec};
use crate::toxiproxy::server::ServerOptions;
use crate::toxiproxy::FaultProxy;

/// One PING pair every this many milliseconds: about 1 % of a core for two round trips.
pub const PROBE_INTERVAL_MS: u64 = 20;
/// Each PING's limit, in milliseconds: past it the pair is dropped, not counted as a latency.
const PING_LIMIT_MS: u64 = 2_000;

/// p50 and p99 in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Quantiles {
    pub p50: f64,
    pub p99: f64,
}

/// What `report.json` records under `proxy_overhead`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProxyOverhead {
    /// PING pairs sampled.
    pub samples: usize,
    pub direct_ms: Quantiles,
    pub proxied_ms: Quantiles,
    /// Proxied minus direct, quantile by quantile: what one crossing of the proxy adds.
    pub added_ms: Quantiles,
}

impl ProxyOverhead {
    /// Quantiles of paired samples (direct, proxied); `None` without samples.
    pub fn of(pairs: &[(Duration, Duration)]) -> Option<ProxyOverhead> {
        if pairs.is_empty() {
            return None;
        }
        let q = |mut v: Vec<Duration>| {
            let ms = |d: Duration| d.as_secs_f64() * 1e3;
            Quantiles { p50: ms(crate::quantile(&mut v, 0.5)), p99: ms(crate::quantile(&mut v, 0.99)) }
        };
        let direct = q(pairs.iter().map(|p| p.0).collect());
        let proxied = q(pairs.iter().map(|p| p.1).collect());
        let added = Quantiles { p50: proxied.p50 - direct.p50, p99: proxied.p99 - direct.p99 };
        Some(ProxyOverhead { samples: pairs.len(), direct_ms: direct, proxied_ms: proxied, added_ms: added })
    }
}

/// A running sampler; [`ProxyProbe::finish`] stops it and returns the figures.
pub struct ProxyProbe {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Vec<(Duration, Duration)>>,
    // Kept alive for the sampler; dropped (server stopped, proxy closed) after it ends.
    redis: ProcessRedis,
    faults: FaultProxy,
    proxy: String,
}

impl ProxyProbe {
    /// Starts a Redis and a proxy of its own and begins sampling.
    pub async fn start() -> anyhow::Result<ProxyProbe> {
        let redis = ProcessRedis::start(RedisSpec::default()).await?;
        let faults = FaultProxy::from_env(ServerOptions { seed: Some(0), ..Default::default() }).await?;
        let proxy = format!("overhead-probe-{}", redis.port());
        let listen = faults.client().create_proxy(&proxy, "127.0.0.1:0", &redis.addr()).await?.listen;
        let direct = connect(&redis.url()).await?;
        let proxied = connect(&format!("redis://{listen}/")).await?;
        let stop = CancellationToken::new();
        let task = tokio::spawn(sample(direct, proxied, stop.clone()));
        Ok(ProxyProbe { stop, task, redis, faults, proxy })
    }

    /// Stops sampling; `None` if no pair completed.
    pub async fn finish(self) -> Option<ProxyOverhead> {
        self.stop.cancel();
        let pairs = self.task.await.unwrap_or_default();
        // An external Toxiproxy outlives the run: leave nothing behind on it.
        let _ = self.faults.client().delete_proxy(&self.proxy).await;
        drop(self.redis);
        ProxyOverhead::of(&pairs)
    }
}

async fn connect(url: &str) -> anyhow::Result<redis::aio::MultiplexedConnection> {
    let limit = Some(Duration::from_millis(PING_LIMIT_MS));
    let config = redis::AsyncConnectionConfig::new().set_connection_timeout(limit).set_response_timeout(limit);
    Ok(redis::Client::open(url)?.get_multiplexed_async_connection_with_config(&config).await?)
}

async fn ping(c: &mut redis::aio::MultiplexedConnection) -> Option<Duration> {
    let t = Instant::now();
    let pong: redis::RedisResult<String> = redis::cmd("PING").query_async(c).await;
    pong.ok().map(|_| t.elapsed())
}

async fn sample(
    mut direct: redis::aio::MultiplexedConnection,
    mut proxied: redis::aio::MultiplexedConnection,
    stop: CancellationToken,
) -> Vec<(Duration, Duration)> {
    let mut pairs = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(PROBE_INTERVAL_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return pairs,
            _ = tick.tick() => {}
        }
        // Alternate which goes first so neither side always runs on a warmer cache.
        let (d, p) = if pairs.len() % 2 == 0 {
            let d = ping(&mut direct).await;
            (d, ping(&mut proxied).await)
        } else {
            let p = ping(&mut proxied).await;
            (ping(&mut direct).await, p)
        };
        if let (Some(d), Some(p)) = (d, p) {
            pairs.push((d, p));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_paired_and_the_difference_is_what_the_proxy_adds() {
        assert_eq!(ProxyOverhead::of(&[]), None);
        let ms = |x: u64| Duration::from_micros(x * 100);
        // Direct 0.1..=10.0 ms, proxied 0.3 ms more each.
        let pairs: Vec<_> = (1..=100).map(|i| (ms(i), ms(i) + Duration::from_micros(300))).collect();
        let o = ProxyOverhead::of(&pairs).unwrap();
        assert_eq!(o.samples, 100);
        assert!((o.direct_ms.p50 - 5.0).abs() < 1e-9 && (o.direct_ms.p99 - 9.9).abs() < 1e-9, "{o:?}");
        assert!((o.added_ms.p50 - 0.3).abs() < 1e-9 && (o.added_ms.p99 - 0.3).abs() < 1e-9, "{o:?}");
    }
}
