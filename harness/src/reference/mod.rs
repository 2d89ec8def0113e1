//! The implementation under test: the hybrid notification pattern and the designs it
//! replaces, behind one interface. Knows nothing of faults or checkers.
//!
//! The pattern: **storage is the source of truth, Pub/Sub only wakes waiters, polling is the
//! fallback.** A responder writes the response hash (the commit point), then publishes a
//! hint. A waiter reads storage first (the resume case), subscribes, reads again, then
//! sleeps until a hint, a poll tick or its deadline, and each time asks storage.
//!
//! # Layout
//!
//! - [`keys`]: the key/channel schema (the seeds' schema by default, optional prefix).
//! - [`endpoint`]: one server, or the primary a set of Sentinels names, followed across a
//!   failover.
//! - [`hub`]: the robust subscriber. One Pub/Sub connection per process for every waiter,
//!   reference-counted channels, `PING` health checks, reconnect with backoff and full
//!   jitter, resubscribe and wake every waiter to re-read storage, a control channel.
//! - [`publisher`]: the robust publisher. Storage write as the commit point, retries with
//!   backoff, a circuit breaker, an explicit [`PublishOutcome`].
//! - [`feedback`]: request/response with resume ([`feedback::Hybrid`]), with batched polling
//!   of all pending ids per tick.
//! - [`baselines`]: pub/sub-only and polling-only, the designs the hybrid replaces.
//! - [`stream`]: chunk streaming into a list plus publish, with late joiners.
//! - [`fanout`]: the market-data consumer of seed `004_*` (bounded queue, stale skip,
//!   RESET/SHUTDOWN).
//! - [`metrics`]: counters and gauges through the `metrics` facade, with a Prometheus text
//!   exposition the harness can read.
//!
//! Engineers who change the design change this tree, or plug their own behind
//! [`FeedbackStrategy`].

pub mod baselines;
pub mod endpoint;
pub mod fanout;
pub mod feedback;
pub mod hub;
pub mod keys;
pub mod metrics;
pub mod publisher;
pub mod stream;

use std::collections::BTreeMap;
use std::time::Duration;

use rand::Rng;

pub use keys::Keys;
pub use publisher::PublishOutcome;

/// Errors of the reference implementation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("connecting to Redis timed out after {0} ms")]
    ConnectTimeout(u64),
    #[error("{url:?} is not a Redis URL (expected redis://HOST:PORT/ or redis://HOST:PORT/DB): {source}")]
    BadUrl { url: String, source: redis::RedisError },
    #[error("connecting to Redis at {url}: {source}")]
    Connect { url: String, source: redis::RedisError },
    #[error("invalid payload: {0}")]
    Payload(String),
    #[error("the stream broke: {0}")]
    Stream(String),
}

impl Error {
    /// Worth retrying: the connection or the network failed, not the command.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Redis(e) => is_transient(e),
            Error::ConnectTimeout(_) => true,
            Error::Connect { source, .. } => is_transient(source),
            _ => false,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// Connection-level failures (worth a retry) as opposed to command errors (not).
pub fn is_transient(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_timeout()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
}

/// Tuning of every reference component. Defaults follow the seeds where they say something
/// (0.5 s poll interval, 1024-deep consumer queue) and otherwise what a production service
/// would use; every limit has its unit in its name.
#[derive(Clone, Debug)]
pub struct Config {
    pub keys: Keys,
    /// Storage fallback period while waiting, in ms (seed `000_*`: 0.5 s).
    pub poll_interval_ms: u64,
    /// Most response keys checked by one batched `EXISTS` per poll tick.
    pub poll_batch_keys_max: usize,
    /// Lifetime of a response hash, in seconds.
    pub response_ttl_s: u64,
    /// Lifetime of a stream's chunk list, in seconds (seed `003_*`: one hour).
    pub stream_ttl_s: u64,
    /// `PING` on the subscriber connection every this many ms ...
    pub health_check_interval_ms: u64,
    /// ... which must answer within this many ms, or the connection is replaced.
    pub health_check_timeout_ms: u64,
    /// Reconnect backoff: full jitter over `[0, min(max, min * 2^attempt)]`, in ms.
    pub reconnect_delay_ms_min: u64,
    pub reconnect_delay_ms_max: u64,
    /// Connecting (TCP + handshake) may take this long, in ms.
    pub connect_timeout_ms: u64,
    /// One command may take this long, in ms.
    pub command_timeout_ms: u64,
    /// A waiter waits at most this long, in ms, for its channel's SUBSCRIBE to be confirmed
    /// before reading storage the second time; polling covers anything later.
    pub subscribe_wait_ms_max: u64,
    /// Publisher: attempts per write (first try included) on connection errors.
    pub publish_attempts_max: u32,
    /// Publisher: backoff between attempts starts here and doubles, in ms.
    pub publish_backoff_ms: u64,
    /// Circuit breaker: consecutive failures that open it ...
    pub breaker_failures_max: u32,
    /// ... and how long it stays open before one probe is let through, in ms.
    pub breaker_reset_ms: u64,
    /// Fan-out consumer queue depth (seed `004_*`: 1024).
    pub queue_len_max: usize,
    /// Replicated deployments: acknowledge a response only once this many replicas hold it
    /// (`WAIT`). `None`: acknowledged when the primary has it, which a failover can undo.
    pub durability: Option<Durability>,
    /// **Test-only.** A deliberately broken variant of the hybrid, which the property tests
    /// must catch (the harness's own teeth). `None` in every real use.
    pub mutation: Option<Mutation>,
}

/// Deliberately broken variants of the reference, switched on through [`Config::mutation`]
/// by the teeth tests and `hybrid-chaos mutants`, which prove the harness catches each one.
/// Every one is a change of a few lines that a reviewer could miss and that turns the hybrid
/// into a slow polling design, lets a wake-up slip, or leaks: most come from the seeds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mutation {
    /// The hub never sends UNSUBSCRIBE when a channel's last waiter leaves (the seed's
    /// listener thread per waiter): subscriptions pile up at the server.
    NeverUnsubscribe,
    /// Responses are stored without a TTL: keys pile up forever.
    NoTtl,
    /// The hint is published before the response is stored: a waiter woken by it reads
    /// nothing and sleeps until the next poll tick.
    PublishBeforeStore,
    /// After a reconnect the hub subscribes only the control channel, never the waiters'
    /// channels again: every later hint is lost, polling carries everything.
    NoResubscribe,
    /// A waiter does not read storage again once its SUBSCRIBE is confirmed: a response
    /// stored in between is only found by a poll.
    NoRereadAfterSubscribe,
    /// After a reconnect the hub resubscribes but wakes no waiter to re-read storage: what
    /// was published during the gap waits for a poll.
    ResyncWakesNobody,
    /// The wait deadline is the sum of poll intervals slept (seed `000`), not a clock: time
    /// spent in reads is not counted, so a slow connection stretches every timeout.
    SummedDeadline,
    /// The poll interval is twenty times the configured one.
    SlowPoll,
    /// The stream consumer ignores the hub's resync: chunks published during a subscriber
    /// outage wait for a poll.
    StreamIgnoresResync,
    /// The health check's PING has no timeout: a blackholed subscriber is never noticed.
    HealthCheckNoTimeout,
    /// The circuit breaker re-opens after a successful half-open probe: once opened, it
    /// never closes again.
    BreakerNeverCloses,
    /// A waiter's entry in the batched poller is removed only when the wait returns, not
    /// when the waiting future is dropped (cancelled): entries pile up.
    PollerLeakOnCancel,
    /// The stream consumer's catch-up read starts one past its cursor: a late joiner never
    /// sees the chunk it starts at.
    StreamCatchupOffByOne,
    /// The fan-out consumer drops RESET on a full queue (the seed's `put_nowait`): the
    /// worker sees sequences go backwards with no reset.
    FanoutDropsResetWhenFull,
    /// A failed store is ignored and the publish goes ahead: the write is acknowledged
    /// although it never happened.
    SwallowStoreErrors,
    /// The stream consumer reads the list before its SUBSCRIBE is confirmed: a chunk
    /// appended in between is only found by a poll.
    StreamReadBeforeSubscribe,
    /// The stream consumer's duplicate filter is off by one: a chunk a retried append stored
    /// twice is handed over twice.
    StreamDuplicateFilterOffByOne,
    /// The hub dispatches a hint only between its own command round trips (one task that
    /// reads the connection or sends SUBSCRIBE/UNSUBSCRIBE/PING, never both): under waiter
    /// churn on a slow link, hints wait behind replies.
    DispatchBehindCommands,
    /// Dropping a subscription unsubscribes its channel even while another waiter on the same
    /// id holds it (a reference count that never looks at the count): the other waiter's hint
    /// is lost.
    UnsubscribeShared,
    /// A hint wakes one of the waiters on its channel (`notify_one` for `notify_waiters`):
    /// two waits on one id, and one sleeps through the hint.
    WakeOneWaiter,
    /// The poll task ends on its first failed tick (an `?` where a retry belongs): after the
    /// first outage of storage, nothing polls again, and a response whose hint is lost is
    /// found only at its waiter's deadline.
    PollerStopsOnError,
    /// A waiter leaving the poller removes its key outright instead of dropping its reference
    /// (no count kept): the other wait on the same id is no longer polled for.
    PollerDropsSharedEntry,
    /// The control channel is subscribed on the subscriber's first connection only (set up
    /// once at start, like the waiters' channels are not): after a reconnect, RESET and
    /// SHUTDOWN go nowhere.
    ControlOnFirstConnectionOnly,
    /// A channel dropped while its SUBSCRIBE was in flight is not counted as subscribed when
    /// the reply comes (only channels still wanted are): the hub believes it never was, so it
    /// never unsubscribes it, and the server keeps a subscription nobody knows about.
    ForgetInFlightSubscribe,
    /// A read whose connection died with a restarted server is not retried: a worker idle
    /// across the restart fails its first read and leaves it to the next poll (a late
    /// stream joiner's catch-up, found by the property search).
    NoReadRetry,
    /// The waiter notes what it has seen after its storage read, not before: a hint that
    /// lands while the read is in flight is taken as already seen, and the waiter sleeps on.
    SnapshotAfterRead,
}

impl Mutation {
    pub const ALL: [Mutation; 26] = [
        Mutation::NeverUnsubscribe,
        Mutation::NoTtl,
        Mutation::PublishBeforeStore,
        Mutation::NoResubscribe,
        Mutation::NoRereadAfterSubscribe,
        Mutation::ResyncWakesNobody,
        Mutation::SummedDeadline,
        Mutation::SlowPoll,
        Mutation::StreamIgnoresResync,
        Mutation::HealthCheckNoTimeout,
        Mutation::BreakerNeverCloses,
        Mutation::PollerLeakOnCancel,
        Mutation::StreamCatchupOffByOne,
        Mutation::FanoutDropsResetWhenFull,
        Mutation::SwallowStoreErrors,
        Mutation::StreamReadBeforeSubscribe,
        Mutation::StreamDuplicateFilterOffByOne,
        Mutation::DispatchBehindCommands,
        Mutation::UnsubscribeShared,
        Mutation::WakeOneWaiter,
        Mutation::PollerStopsOnError,
        Mutation::PollerDropsSharedEntry,
        Mutation::ControlOnFirstConnectionOnly,
        Mutation::ForgetInFlightSubscribe,
        Mutation::NoReadRetry,
        Mutation::SnapshotAfterRead,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Mutation::NeverUnsubscribe => "never-unsubscribe",
            Mutation::NoTtl => "no-ttl",
            Mutation::PublishBeforeStore => "publish-before-store",
            Mutation::NoResubscribe => "no-resubscribe",
            Mutation::NoRereadAfterSubscribe => "no-reread-after-subscribe",
            Mutation::ResyncWakesNobody => "resync-wakes-nobody",
            Mutation::SummedDeadline => "summed-deadline",
            Mutation::SlowPoll => "slow-poll",
            Mutation::StreamIgnoresResync => "stream-ignores-resync",
            Mutation::HealthCheckNoTimeout => "health-check-no-timeout",
            Mutation::BreakerNeverCloses => "breaker-never-closes",
            Mutation::PollerLeakOnCancel => "poller-leak-on-cancel",
            Mutation::StreamCatchupOffByOne => "stream-catchup-off-by-one",
            Mutation::FanoutDropsResetWhenFull => "fanout-drops-reset-when-full",
            Mutation::SwallowStoreErrors => "swallow-store-errors",
            Mutation::StreamReadBeforeSubscribe => "stream-read-before-subscribe",
            Mutation::StreamDuplicateFilterOffByOne => "stream-duplicate-filter-off-by-one",
            Mutation::DispatchBehindCommands => "dispatch-behind-commands",
            Mutation::UnsubscribeShared => "unsubscribe-shared",
            Mutation::WakeOneWaiter => "wake-one-waiter",
            Mutation::PollerStopsOnError => "poller-stops-on-error",
            Mutation::PollerDropsSharedEntry => "poller-drops-shared-entry",
            Mutation::ControlOnFirstConnectionOnly => "control-on-first-connection-only",
            Mutation::ForgetInFlightSubscribe => "forget-in-flight-subscribe",
            Mutation::NoReadRetry => "no-read-retry",
            Mutation::SnapshotAfterRead => "snapshot-after-read",
        }
    }

    /// One line: what the bug is.
    pub fn about(self) -> &'static str {
        match self {
            Mutation::NeverUnsubscribe => "the hub never unsubscribes a channel its last waiter left",
            Mutation::NoTtl => "responses stored without a TTL",
            Mutation::PublishBeforeStore => "the hint is published before the response is stored",
            Mutation::NoResubscribe => "after a reconnect the waiters' channels are never resubscribed",
            Mutation::NoRereadAfterSubscribe => "no storage read after the SUBSCRIBE is confirmed",
            Mutation::ResyncWakesNobody => "the resync after a reconnect wakes no waiter",
            Mutation::SummedDeadline => "the deadline sums poll intervals instead of reading a clock",
            Mutation::SlowPoll => "the poll interval is 20x too long",
            Mutation::StreamIgnoresResync => "the stream consumer ignores resync",
            Mutation::HealthCheckNoTimeout => "the health-check PING never times out",
            Mutation::BreakerNeverCloses => "the circuit breaker never closes after an outage",
            Mutation::PollerLeakOnCancel => "a cancelled wait leaves its poller entry behind",
            Mutation::StreamCatchupOffByOne => "the stream catch-up read starts one past the cursor",
            Mutation::FanoutDropsResetWhenFull => "the fan-out consumer drops RESET on a full queue",
            Mutation::SwallowStoreErrors => "a failed store is acknowledged anyway",
            Mutation::StreamReadBeforeSubscribe => "the stream catch-up read runs before the SUBSCRIBE is confirmed",
            Mutation::StreamDuplicateFilterOffByOne => "the stream duplicate filter is off by one",
            Mutation::DispatchBehindCommands => {
                "hints are dispatched only between SUBSCRIBE/UNSUBSCRIBE/PING round trips"
            }
            Mutation::UnsubscribeShared => "a channel is unsubscribed when any of its waiters leaves, not the last",
            Mutation::WakeOneWaiter => "a hint wakes one waiter on its channel, not all",
            Mutation::PollerStopsOnError => "the poll task ends at its first failed read",
            Mutation::PollerDropsSharedEntry => "a waiter leaving the poller removes its id for every waiter on it",
            Mutation::ControlOnFirstConnectionOnly => "the control channel is subscribed on the first connection only",
            Mutation::ForgetInFlightSubscribe => {
                "a channel dropped while its SUBSCRIBE is in flight stays subscribed at the server"
            }
            Mutation::NoReadRetry => "a read on a connection that died with a restarted server is not retried",
            Mutation::SnapshotAfterRead => "the waiter notes what it has seen after its read, not before",
        }
    }

    /// Parses [`Mutation::name`].
    pub fn parse(name: &str) -> Option<Mutation> {
        Mutation::ALL.into_iter().find(|m| m.name() == name)
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            keys: Keys::default(),
            poll_interval_ms: 500,
            poll_batch_keys_max: 16_384,
            response_ttl_s: 24 * 3600,
            stream_ttl_s: 3600,
            health_check_interval_ms: 1_000,
            health_check_timeout_ms: 1_000,
            reconnect_delay_ms_min: 50,
            reconnect_delay_ms_max: 5_000,
            connect_timeout_ms: 2_000,
            command_timeout_ms: 2_000,
            subscribe_wait_ms_max: 1_000,
            publish_attempts_max: 3,
            publish_backoff_ms: 50,
            breaker_failures_max: 5,
            breaker_reset_ms: 5_000,
            queue_len_max: 1024,
            durability: None,
            mutation: None,
        }
    }
}

/// `WAIT numreplicas timeout` after every store: the write counts as acknowledged only when
/// `replicas` replicas confirmed it within `timeout_ms`. WAIT does not make Redis strongly
/// consistent (a failover can still promote a replica that missed it when more replicas
/// exist than were waited for); it narrows the window in which an acknowledged write can
/// be lost, and the failover scenarios measure by how much.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Durability {
    pub replicas: u32,
    /// WAIT's own timeout, in ms. WAIT runs under [`Config::command_timeout_ms`], which must
    /// be longer: otherwise the connection gives up first and the write's outcome is unknown
    /// (`failed`) instead of `stored_unreplicated`.
    pub timeout_ms: u64,
}

impl Config {
    pub fn with_prefix(mut self, prefix: &str) -> Config {
        self.keys = Keys::new(prefix);
        self
    }

    /// Whether the deliberately broken variant `m` is switched on.
    pub(crate) fn mutated(&self, m: Mutation) -> bool {
        self.mutation == Some(m)
    }
}

/// Exponential backoff with full jitter: a uniform draw in `[0, min(max, min * 2^attempt)]`.
/// Full jitter spreads reconnecting clients apart so a restarted Redis is not hit by all of
/// them in the same millisecond.
pub fn backoff_delay(attempt: u32, min_ms: u64, max_ms: u64) -> Duration {
    let cap = min_ms.saturating_mul(1u64 << attempt.min(20)).min(max_ms).max(1);
    Duration::from_millis(rand::rng().random_range(0..=cap))
}

/// The command connection: one per process, reconnecting by itself (redis-rs
/// `ConnectionManager`), with bounded connect and response times, following the primary when
/// `url` is a Sentinel URL ([`endpoint`]).
pub async fn command_connection(url: &str, config: &Config) -> Result<endpoint::Conn> {
    endpoint::Conn::connect(url, config).await
}

/// Counts a live waiter for [`ImplStats::waiters`]; decrements on drop, so a cancelled
/// waiting future is uncounted too.
pub(crate) struct WaiterCount<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> WaiterCount<'a> {
    pub(crate) fn new(n: &'a std::sync::atomic::AtomicUsize) -> Self {
        n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        WaiterCount(n)
    }
}

impl Drop for WaiterCount<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A response as stored: the hash's fields.
pub type Fields = BTreeMap<String, String>;

/// How a waiter came to read the response it returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    /// Already in storage at the first read (the resume case).
    Immediate,
    /// Found right after subscribing (landed between the first read and the subscription).
    AfterSubscribe,
    /// Woken by a Pub/Sub notification.
    Notified,
    /// Found by the storage fallback (a poll tick), no notification arrived.
    Polled,
    /// Found by the re-read every waiter does after the subscriber reconnected.
    Resync,
    /// Found by the last read at the waiter's own deadline: nothing woke it in time.
    Deadline,
}

impl Via {
    /// Its name in histories and on the process protocol (`after_subscribe`, `notified`...).
    pub fn name(self) -> String {
        serde_json::to_value(self).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
    }
}

/// Result of a wait.
#[derive(Clone, Debug, PartialEq)]
pub enum WaitOutcome {
    Obtained {
        fields: Fields,
        via: Via,
    },
    TimedOut,
    /// A SHUTDOWN control signal ended the wait.
    Shutdown,
}

/// What a waiting implementation holds right now, for cleanup checks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct ImplStats {
    /// Waiters registered in the implementation's maps.
    pub waiters: usize,
    /// Channels the implementation wants subscribed.
    pub channels: usize,
    /// Ids in the batched poller's pending set.
    pub pending_polls: usize,
    /// Subscriber reconnections so far.
    pub reconnects: u64,
}

/// The feedback request/response interface every strategy implements; scenarios run each
/// strategy through it and compare.
#[async_trait::async_trait]
pub trait FeedbackStrategy: Send + Sync {
    /// `hybrid`, `pubsub-only` or `polling-only`.
    fn name(&self) -> &'static str;
    /// Delivers the response for `id`.
    async fn respond(&self, id: &str, fields: &Fields) -> PublishOutcome;
    /// Waits for the response to `id` until `timeout` has passed.
    async fn wait(&self, id: &str, timeout: Duration) -> Result<WaitOutcome>;
    fn stats(&self) -> ImplStats;
    /// The counts as of now, including every wait that has returned: for a reading taken
    /// once, right after waits end. In-process strategies' [`FeedbackStrategy::stats`] is
    /// already that; one behind a process protocol asks its program.
    async fn fresh_stats(&self) -> ImplStats {
        self.stats()
    }
    /// Protocol problems of an implementation the harness did not write (a crash, a line
    /// that is not the protocol, no answer in time); the built-in ones have none.
    fn problems(&self) -> Vec<String> {
        Vec::new()
    }
    /// Stops background tasks and closes connections.
    async fn shutdown(&self);
}

/// The chunk-streaming interface every strategy implements (seed `003_*`).
#[async_trait::async_trait]
pub trait StreamStrategy: Send + Sync {
    fn name(&self) -> &'static str;
    /// Makes chunk `chunk.chunk_index` of `task` available to consumers.
    async fn publish(&self, task: &str, chunk: &stream::Chunk) -> PublishOutcome;
    /// Hands every chunk of `task` from `from` to `on_chunk`, with what prompted the read that
    /// found it, until the final one or `timeout`.
    async fn follow(
        &self,
        task: &str,
        from: u64,
        timeout: Duration,
        on_chunk: &mut (dyn for<'c> FnMut(&'c stream::Chunk, Via) + Send),
    ) -> Result<stream::FollowEnd>;
    fn stats(&self) -> ImplStats;
    /// Protocol problems of an implementation the harness did not write (see
    /// [`FeedbackStrategy::problems`]).
    fn problems(&self) -> Vec<String> {
        Vec::new()
    }
    async fn shutdown(&self);
}

/// The standard response fields of seed `000_*` around a payload: `feedback_id`,
/// `response_type` (default `approval`), `approved` (default `true`), `responded_at` (now,
/// RFC 3339), then the payload's own fields (non-string values as JSON text).
pub fn response_fields(id: &str, payload: &serde_json::Map<String, serde_json::Value>) -> Fields {
    let mut f = Fields::new();
    f.insert("feedback_id".into(), id.to_string());
    f.insert("response_type".into(), "approval".into());
    f.insert("approved".into(), "true".into());
    f.insert("responded_at".into(), humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string());
    for (k, v) in payload {
        let text = match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        f.insert(k.clone(), text);
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_bounded_by_the_cap() {
        for attempt in 0..40 {
            let d = backoff_delay(attempt, 50, 5_000);
            assert!(d <= Duration::from_millis(5_000), "{attempt}: {d:?}");
        }
        assert!(backoff_delay(0, 50, 5_000) <= Duration::from_millis(50));
    }

    #[test]
    fn response_fields_follow_the_seed_schema() {
        let payload = serde_json::json!({"approved": false, "comment": "ship it", "n": 3});
        let f = response_fields("deploy_abc123", payload.as_object().unwrap());
        assert_eq!(f["feedback_id"], "deploy_abc123");
        assert_eq!(f["response_type"], "approval");
        assert_eq!(f["approved"], "false");
        assert_eq!(f["comment"], "ship it");
        assert_eq!(f["n"], "3");
        assert!(f["responded_at"].ends_with('Z'));
    }
}
