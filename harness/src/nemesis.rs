//! Nemeses: the faults a scenario injects, through the infra provider (restart, crash,
//! freeze, outage) and the Toxiproxy client (latency, blackhole, reset, proxy down,
//! bandwidth, slicer). Never through the proxy's internals: a real Toxiproxy behind
//! `TOXIPROXY_URL` takes the same faults.
//!
//! The implementation under test reaches Redis through two proxies, one for its command
//! connection and one for its subscriber connection, so a fault can hit either alone: the
//! asymmetric cases (Pub/Sub dead while storage works, and the reverse) exist.

use serde::{Deserialize, Serialize};

use crate::infra::{RedisNode, Restart};
use crate::toxiproxy::{Stream, Toxic, ToxicKind, ToxiproxyClient};

/// Which connection a network fault hits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    Commands,
    Subscriber,
    Both,
}

/// One fault. Network faults stay until [`Nemesis::heal`]; server faults are healed by it
/// too (thaw, start again).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "fault", rename_all = "snake_case")]
pub enum Fault {
    /// SHUTDOWN, then start again at once.
    GracefulRestart,
    /// SIGKILL, then start again at once (what survives depends on persistence).
    CrashRestart,
    /// SIGKILL; started again by `heal`: Redis unreachable for a while.
    RedisDown,
    /// SIGSTOP until `heal`: connections open, nothing answers.
    Freeze,
    Latency {
        target: Target,
        latency_ms: u64,
        jitter_ms: u64,
    },
    /// Latency on what the client sends (Toxiproxy's upstream stream): a SUBSCRIBE stays in
    /// flight this long before the server sees it. The lever of the race scenarios: it holds
    /// a window open between a waiter's first storage read and its confirmed subscription.
    LatencyUpstream {
        target: Target,
        latency_ms: u64,
    },
    /// Every Pub/Sub client of the server is disconnected (`CLIENT KILL TYPE pubsub`), as a
    /// server-side timeout or a failover would; a one-off, nothing to heal.
    DropSubscribers,
    /// Data silently dropped (Toxiproxy `timeout` 0): a stale, half-open connection.
    Blackhole {
        target: Target,
    },
    /// Connections reset (RST), new ones too, until healed.
    ResetPeer {
        target: Target,
    },
    /// The proxy refuses and cuts connections until healed.
    ProxyDown {
        target: Target,
    },
    Bandwidth {
        target: Target,
        rate_kb_s: u64,
    },
    Slicer {
        target: Target,
        average_size: u64,
        delay_us: u64,
    },
}

/// Errors injecting or healing a fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Infra(#[from] crate::infra::Error),
    #[error(transparent)]
    Toxiproxy(#[from] crate::toxiproxy::client::Error),
    #[error("{what} at {url}: {reason}")]
    Redis { what: &'static str, url: String, reason: String },
}

/// Injects faults into one Redis and its two proxies.
pub struct Nemesis {
    tp: ToxiproxyClient,
    commands_proxy: String,
    subscriber_proxy: String,
    redis_down: bool,
    frozen: bool,
}

impl Nemesis {
    pub fn new(tp: ToxiproxyClient, commands_proxy: &str, subscriber_proxy: &str) -> Nemesis {
        Nemesis {
            tp,
            commands_proxy: commands_proxy.into(),
            subscriber_proxy: subscriber_proxy.into(),
            redis_down: false,
            frozen: false,
        }
    }

    fn proxies(&self, t: Target) -> Vec<&str> {
        match t {
            Target::Commands => vec![&self.commands_proxy],
            Target::Subscriber => vec![&self.subscriber_proxy],
            Target::Both => vec![&self.commands_proxy, &self.subscriber_proxy],
        }
    }

    async fn toxic(&self, t: Target, kind: ToxicKind, stream: Stream) -> Result<(), Error> {
        for p in self.proxies(t) {
            self.tp.add_toxic(p, &Toxic::new(kind.clone(), stream)).await?;
        }
        Ok(())
    }

    pub async fn apply(&mut self, fault: &Fault, redis: &mut dyn RedisNode) -> Result<(), Error> {
        match fault {
            Fault::GracefulRestart => drop(redis.restart(Restart::Graceful).await?),
            Fault::CrashRestart => drop(redis.restart(Restart::Crash).await?),
            Fault::RedisDown => {
                redis.stop(Restart::Crash).await?;
                self.redis_down = true;
            }
            Fault::Freeze => {
                redis.freeze().await?;
                self.frozen = true;
            }
            Fault::Latency { target, latency_ms, jitter_ms } => {
                let kind = ToxicKind::Latency { latency_ms: *latency_ms, jitter_ms: *jitter_ms };
                self.toxic(*target, kind, Stream::Downstream).await?
            }
            Fault::LatencyUpstream { target, latency_ms } => {
                let kind = ToxicKind::Latency { latency_ms: *latency_ms, jitter_ms: 0 };
                self.toxic(*target, kind, Stream::Upstream).await?
            }
            Fault::DropSubscribers => {
                // Only a server the harness owns is disturbed.
                if !redis.owned() {
                    return Err(crate::infra::Error::NotOwned { op: "CLIENT KILL", url: redis.url() }.into());
                }
                let url = redis.url();
                let failed =
                    |reason: String| Error::Redis { what: "CLIENT KILL TYPE pubsub", url: url.clone(), reason };
                let mut c = crate::infra::admin::connect(&url).await.map_err(|e| failed(e.to_string()))?;
                let _: i64 = redis::cmd("CLIENT")
                    .arg("KILL")
                    .arg("TYPE")
                    .arg("pubsub")
                    .query_async(&mut c)
                    .await
                    .map_err(|e| failed(e.to_string()))?;
            }
            Fault::Blackhole { target } => {
                self.toxic(*target, ToxicKind::Timeout { timeout_ms: 0 }, Stream::Downstream).await?
            }
            Fault::ResetPeer { target } => {
                self.toxic(*target, ToxicKind::ResetPeer { timeout_ms: 0 }, Stream::Downstream).await?
            }
            Fault::ProxyDown { target } => {
                for p in self.proxies(*target) {
                    self.tp.set_enabled(p, false).await?;
                }
            }
            Fault::Bandwidth { target, rate_kb_s } => {
                self.toxic(*target, ToxicKind::Bandwidth { rate_kb_s: *rate_kb_s }, Stream::Downstream).await?
            }
            Fault::Slicer { target, average_size, delay_us } => {
                let kind = ToxicKind::Slicer {
                    average_size: *average_size,
                    size_variation: average_size / 2,
                    delay_us: *delay_us,
                };
                self.toxic(*target, kind, Stream::Downstream).await?
            }
        }
        Ok(())
    }

    /// Removes every network fault and brings the server back (thawed, running).
    pub async fn heal(&mut self, redis: &mut dyn RedisNode) -> Result<(), Error> {
        for p in [self.commands_proxy.clone(), self.subscriber_proxy.clone()] {
            self.tp.set_enabled(&p, true).await?;
            self.tp.clear_toxics(&p).await?;
        }
        if self.frozen {
            redis.thaw().await?;
            self.frozen = false;
        }
        if self.redis_down {
            redis.start().await?;
            self.redis_down = false;
        }
        Ok(())
    }
}
