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
    /// The server is out of memory (`maxmemory` 1 byte, `noeviction`) until healed: every
    /// write is refused with OOM while reads and PUBLISH still work. A design that publishes
    /// before it stores hands out values storage never got.
    StoreRefused,
    /// Data silently dropped (Toxiproxy `timeout` 0): a stale, half-open connection.
    Blackhole {
        target: Target,
    },
    /// Toxiproxy `reset_peer` (timeout 0) on what the server sends, until healed: each
    /// connection ends at its next reply or message, which is dropped. Connections opened
    /// under the fault end with RST; ones open before it with FIN (Toxiproxy sets SO_LINGER 0
    /// at connect). An idle connection is untouched until something is sent to it: the
    /// subscriber meets the fault at its next health-check reply or published message.
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
    /// The responder stores each response but its PUBLISH never goes out, until healed: a
    /// responder process that dies between its two commands, as the seeds' responders (HSET,
    /// then PUBLISH, not one transaction) can. Nothing in Redis or the network changes, so the
    /// subscriber stays healthy and its health check sees nothing: only a poll of storage
    /// finds these responses. Applied by the workload (see [`Nemesis::publish_lost`]).
    PublishLost,
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
    /// `maxmemory` and `maxmemory-policy` to restore after [`Fault::StoreRefused`].
    memory_before: Option<(String, String)>,
    /// Set while [`Fault::PublishLost`] is applied; the workload's responders read it.
    publish_lost: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Nemesis {
    pub fn new(tp: ToxiproxyClient, commands_proxy: &str, subscriber_proxy: &str) -> Nemesis {
        Nemesis {
            tp,
            commands_proxy: commands_proxy.into(),
            subscriber_proxy: subscriber_proxy.into(),
            redis_down: false,
            frozen: false,
            memory_before: None,
            publish_lost: Default::default(),
        }
    }

    /// The flag [`Fault::PublishLost`] sets: a responder that sees it stores without publishing.
    pub fn publish_lost(&self) -> std::sync::Arc<std::sync::atomic::AtomicBool> {
        self.publish_lost.clone()
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
            Fault::StoreRefused => {
                let before = (config_get(redis, "maxmemory").await?, config_get(redis, "maxmemory-policy").await?);
                config_set(redis, "maxmemory-policy", "noeviction").await?;
                config_set(redis, "maxmemory", "1").await?;
                self.memory_before.get_or_insert(before);
            }
            Fault::DropSubscribers => {
                let kill = redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("pubsub").to_owned();
                let _: i64 = admin_query(redis, "CLIENT KILL TYPE pubsub", &kill).await?;
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
            Fault::PublishLost => self.publish_lost.store(true, std::sync::atomic::Ordering::SeqCst),
        }
        Ok(())
    }

    /// Removes every network fault and brings the server back (thawed, running).
    pub async fn heal(&mut self, redis: &mut dyn RedisNode) -> Result<(), Error> {
        self.publish_lost.store(false, std::sync::atomic::Ordering::SeqCst);
        for p in [self.commands_proxy.clone(), self.subscriber_proxy.clone()] {
            self.tp.set_enabled(&p, true).await?;
            self.tp.clear_toxics(&p).await?;
        }
        if self.frozen {
            redis.thaw().await?;
            self.frozen = false;
        }
        if let Some((max, policy)) = self.memory_before.take() {
            config_set(redis, "maxmemory", &max).await?;
            config_set(redis, "maxmemory-policy", &policy).await?;
        }
        if self.redis_down {
            redis.start().await?;
            self.redis_down = false;
        }
        Ok(())
    }
}

/// Runs an administrative command on a server the harness owns (never on a borrowed one);
/// an error names the command and the server.
async fn admin_query<T: redis::FromRedisValue>(
    redis: &dyn RedisNode,
    what: &'static str,
    cmd: &redis::Cmd,
) -> Result<T, Error> {
    let url = redis.url();
    if !redis.owned() {
        return Err(crate::infra::Error::NotOwned { op: what, url }.into());
    }
    let failed = |reason: String| Error::Redis { what, url: url.clone(), reason };
    let mut c = crate::infra::admin::connect(&url).await.map_err(|e| failed(e.to_string()))?;
    cmd.query_async(&mut c).await.map_err(|e| failed(e.to_string()))
}

async fn config_get(redis: &dyn RedisNode, name: &'static str) -> Result<String, Error> {
    let pair: Vec<String> = admin_query(redis, "CONFIG GET", redis::cmd("CONFIG").arg("GET").arg(name)).await?;
    pair.get(1).cloned().ok_or_else(|| Error::Redis {
        what: "CONFIG GET",
        url: redis.url(),
        reason: format!("{name} not in the reply"),
    })
}

async fn config_set(redis: &dyn RedisNode, name: &'static str, value: &str) -> Result<(), Error> {
    admin_query(redis, "CONFIG SET", redis::cmd("CONFIG").arg("SET").arg(name).arg(value)).await
}
