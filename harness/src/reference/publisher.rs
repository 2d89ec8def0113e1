//! The robust publisher: the storage write is the commit point, the notification a hint.
//!
//! Each operation is retried with exponential backoff on connection errors only (a command
//! error such as `WRONGTYPE` will not get better). A circuit breaker stops hammering a Redis
//! that keeps failing: after `breaker_failures_max` consecutive failures it opens for
//! `breaker_reset_ms`, then lets one probe through (half-open). The outcome says exactly what
//! happened, so a caller can tell "stored but nobody was told" (waiters will find it by
//! polling) from "not stored" (nobody will ever find it). Zero subscribers is counted, not
//! an error: with the hybrid pattern it is the normal resume case.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::endpoint::Conn;

use super::metrics as m;
use super::{is_transient, Config};

/// What a publish achieved.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum PublishOutcome {
    /// Stored and published; `subscribers` (at least one) received the hint.
    Notified { subscribers: u64 },
    /// Stored and published, but no subscriber was listening: normal when nobody waits (the
    /// resume case), and nobody was notified.
    Unheard,
    /// Stored; no notification by design (polling-only).
    Stored,
    /// Stored, but the notification failed: waiters will find it by polling.
    StoredNotNotified { reason: String },
    /// Not stored (or, for pub/sub-only, not published): nobody will find it. The write may
    /// or may not have reached the server (a connection that failed mid-command).
    Failed { reason: String },
    /// The server refused the write (out of memory, wrong type, no permission...): certainly
    /// not applied.
    Refused { reason: String },
    /// Stored on the primary, but fewer than the wanted replicas confirmed it within the
    /// durability timeout ([`super::Durability`]): not acknowledged, and not announced, since
    /// a failover may still lose it.
    StoredUnreplicated { replicas: u64, wanted: u32 },
}

impl PublishOutcome {
    /// A successful PUBLISH that reached `subscribers` clients.
    pub fn published(subscribers: u64) -> PublishOutcome {
        match subscribers {
            0 => PublishOutcome::Unheard,
            n => PublishOutcome::Notified { subscribers: n },
        }
    }

    /// Whether the data reached its source of truth (storage, or the channel for pub/sub-only).
    pub fn committed(&self) -> bool {
        !matches!(self, PublishOutcome::Failed { .. } | PublishOutcome::Refused { .. })
    }

    pub fn status(&self) -> &'static str {
        match self {
            PublishOutcome::Notified { .. } => "notified",
            PublishOutcome::Unheard => "unheard",
            PublishOutcome::Stored => "stored",
            PublishOutcome::StoredNotNotified { .. } => "stored_not_notified",
            PublishOutcome::Failed { .. } => "failed",
            PublishOutcome::Refused { .. } => "refused",
            PublishOutcome::StoredUnreplicated { .. } => "stored_unreplicated",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// One probe is in flight; everyone else is refused until it reports.
    HalfOpen,
}

/// A consecutive-failure circuit breaker.
pub struct Breaker {
    state: Mutex<BreakerState>,
    failures_max: u32,
    reset: Duration,
    /// The breaker-never-closes mutation: a successful probe opens it again.
    never_closes: bool,
}

impl Breaker {
    pub fn new(failures_max: u32, reset: Duration) -> Breaker {
        Breaker {
            state: Mutex::new(BreakerState::Closed { failures: 0 }),
            failures_max: failures_max.max(1),
            reset,
            never_closes: false,
        }
    }

    /// Whether a call may go ahead now. An open breaker past its reset time turns half-open
    /// and admits exactly this one caller as the probe.
    pub fn allow(&self) -> bool {
        let mut s = self.state.lock().expect("breaker lock");
        match *s {
            BreakerState::Closed { .. } => true,
            BreakerState::Open { until } if Instant::now() >= until => {
                *s = BreakerState::HalfOpen;
                true
            }
            BreakerState::Open { .. } | BreakerState::HalfOpen => false,
        }
    }

    pub fn success(&self) {
        let mut s = self.state.lock().expect("breaker lock");
        *s = match *s {
            BreakerState::HalfOpen if self.never_closes => BreakerState::Open { until: Instant::now() + self.reset },
            _ => BreakerState::Closed { failures: 0 },
        };
    }

    pub fn failure(&self) {
        let mut s = self.state.lock().expect("breaker lock");
        *s = match *s {
            BreakerState::Closed { failures } if failures + 1 < self.failures_max => {
                BreakerState::Closed { failures: failures + 1 }
            }
            _ => BreakerState::Open { until: Instant::now() + self.reset },
        };
    }

    pub fn state(&self) -> BreakerState {
        *self.state.lock().expect("breaker lock")
    }

    /// 0 closed, 1 half-open, 2 open (the gauge's encoding).
    pub fn gauge_value(&self) -> f64 {
        match self.state() {
            BreakerState::Closed { .. } => 0.0,
            BreakerState::HalfOpen => 1.0,
            BreakerState::Open { .. } => 2.0,
        }
    }
}

/// Marks an error the server answered with (the command was refused, not lost in transit).
const REFUSED: &str = "refused by the server: ";

/// The outcome of a write that did not happen: refused (certain) or failed (unknown).
fn not_stored(reason: String) -> PublishOutcome {
    match reason.strip_prefix(REFUSED) {
        Some(r) => PublishOutcome::Refused { reason: r.to_string() },
        None => PublishOutcome::Failed { reason },
    }
}

/// Storage writes and notifications over the process's command connection.
pub struct Publisher {
    conn: Conn,
    config: Config,
    breaker: Breaker,
    label: &'static str,
}

impl Publisher {
    pub fn new(conn: Conn, config: Config, label: &'static str) -> Publisher {
        let mut breaker = Breaker::new(config.breaker_failures_max, Duration::from_millis(config.breaker_reset_ms));
        breaker.never_closes = config.mutated(super::Mutation::BreakerNeverCloses);
        Publisher { conn, config, breaker, label }
    }

    pub fn breaker(&self) -> &Breaker {
        &self.breaker
    }

    /// Runs `cmd` with retries on connection errors, through the breaker. An error that
    /// starts with [`REFUSED`] is the server's refusal: certainly not applied.
    async fn run<T: redis::FromRedisValue>(&self, what: &str, cmd: &redis::Pipeline) -> Result<T, String> {
        if !self.breaker.allow() {
            self.report_breaker();
            return Err(format!("{what}: circuit open"));
        }
        let mut last = String::new();
        for attempt in 0..self.config.publish_attempts_max.max(1) {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(self.config.publish_backoff_ms << (attempt - 1).min(10)))
                    .await;
            }
            let mut conn = self.conn.clone();
            match cmd.query_async::<T>(&mut conn).await {
                Ok(v) => {
                    self.breaker.success();
                    self.report_breaker();
                    return Ok(v);
                }
                Err(e) if is_transient(&e) => last = e.to_string(),
                Err(e) => {
                    // The server refused the command: Redis is up and answering, which is
                    // what the breaker guards (and what ends a half-open probe).
                    self.breaker.success();
                    return Err(format!("{REFUSED}{what}: {e}"));
                }
            }
        }
        self.breaker.failure();
        self.report_breaker();
        Err(format!("{what}: {last}"))
    }

    fn report_breaker(&self) {
        metrics::gauge!(m::CIRCUIT_STATE, "impl" => self.label).set(self.breaker.gauge_value());
    }

    /// Writes `store` atomically (the commit point), then publishes `message` on `channel`
    /// if given.
    pub async fn commit(&self, store: Option<redis::Pipeline>, notify: Option<(&str, &str)>) -> PublishOutcome {
        let started = Instant::now();
        let outcome = self.commit_inner(store, notify).await;
        metrics::histogram!(m::PUBLISH_DURATION, "impl" => self.label).record(started.elapsed().as_secs_f64());
        metrics::counter!(m::PUBLISHED, "impl" => self.label, "status" => outcome.status()).increment(1);
        outcome
    }

    async fn commit_inner(&self, store: Option<redis::Pipeline>, notify: Option<(&str, &str)>) -> PublishOutcome {
        // With durability the hint must wait for the replicas, so no one-trip commit.
        if let (Some(store), Some((channel, message)), None) = (&store, notify, self.config.durability) {
            if let Some(outcome) = self.commit_one_trip(store, channel, message).await {
                return outcome;
            }
        }
        let stored = store.is_some();
        if let Some(mut pipe) = store {
            let written = match self.config.durability {
                None => {
                    pipe.atomic();
                    self.run::<()>("store", &pipe).await
                }
                // The store and its WAIT in one pipeline: both run on the same connection, so
                // WAIT counts the replicas holding this write (after a switch to a new primary
                // in between, it would count another connection's writes and say yes).
                // Any error, the server's too, fails the whole pipeline: never acknowledged.
                Some(d) => {
                    let mut both = redis::pipe();
                    both.cmd("MULTI").ignore();
                    for c in pipe.cmd_iter() {
                        both.add_command(c.clone()).ignore();
                    }
                    both.cmd("EXEC").ignore();
                    both.cmd("WAIT").arg(d.replicas).arg(d.timeout_ms);
                    match self.run::<(u64,)>("store", &both).await {
                        Ok((replicas,)) if replicas < u64::from(d.replicas) => {
                            return PublishOutcome::StoredUnreplicated { replicas, wanted: d.replicas };
                        }
                        r => r.map(|_| ()),
                    }
                }
            };
            if let Err(reason) = written {
                // The swallow-store-errors mutation logs and carries on to the publish.
                if !self.config.mutated(super::Mutation::SwallowStoreErrors) {
                    return not_stored(reason);
                }
            }
        }
        let Some((channel, message)) = notify else {
            return PublishOutcome::Stored;
        };
        let mut pipe = redis::pipe();
        pipe.publish(channel, message);
        match self.run::<(u64,)>("publish", &pipe).await {
            Ok((subscribers,)) => PublishOutcome::published(subscribers),
            Err(reason) if stored => PublishOutcome::StoredNotNotified { reason },
            Err(reason) => not_stored(reason),
        }
    }
}

impl Publisher {
    /// The common case in one round trip: `MULTI; <store>; PUBLISH; EXEC`. The hint is part of
    /// the transaction, so it goes out only if the write committed, and after it. (It used to
    /// follow EXEC in the same pipeline: when Redis refused the transaction, out of memory
    /// for instance, EXEC aborted and the PUBLISH still ran. For a bare hint that is a
    /// spurious wake-up; for a hint that carries the response it hands out a value storage
    /// never got. The store-refused scenario found it as phantom reads of `hybrid-payload`.)
    /// Any error, or a breaker that is not closed, returns `None` and the caller takes the
    /// step-by-step path, which retries and tells "stored" from "not stored" exactly.
    async fn commit_one_trip(&self, store: &redis::Pipeline, channel: &str, message: &str) -> Option<PublishOutcome> {
        if !matches!(self.breaker.state(), BreakerState::Closed { .. }) {
            return None;
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        for c in store.cmd_iter() {
            pipe.add_command(c.clone()).ignore();
        }
        pipe.publish(channel, message);
        let mut conn = self.conn.clone();
        let (subscribers,): (u64,) = pipe.query_async(&mut conn).await.ok()?;
        self.breaker.success();
        self.report_breaker();
        Some(PublishOutcome::published(subscribers))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breaker_opens_after_the_threshold_and_probes_once() {
        let b = Breaker::new(3, Duration::from_millis(0));
        for _ in 0..2 {
            b.failure();
            assert!(matches!(b.state(), BreakerState::Closed { .. }));
        }
        b.failure();
        assert!(matches!(b.state(), BreakerState::Open { .. }));
        // Reset time 0: the next caller is the probe; a second is refused while it runs.
        assert!(b.allow());
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(!b.allow());
        b.failure();
        assert!(matches!(b.state(), BreakerState::Open { .. }));
        assert!(b.allow());
        b.success();
        assert_eq!(b.state(), BreakerState::Closed { failures: 0 });
    }

    #[test]
    fn an_open_breaker_refuses_until_its_reset_time() {
        let b = Breaker::new(1, Duration::from_secs(60));
        b.failure();
        assert!(!b.allow());
        assert_eq!(b.gauge_value(), 2.0);
    }

    #[test]
    fn a_success_clears_the_failure_count() {
        let b = Breaker::new(2, Duration::from_secs(60));
        b.failure();
        b.success();
        b.failure();
        assert!(b.allow(), "failures must be consecutive to open the breaker");
    }
}
