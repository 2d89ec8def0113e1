//! Feedback request/response with resume: the hybrid reference (seed `000_*`, fixed).
//!
//! What changed from the seed, and why:
//! - The wait loop runs to a **deadline**. The seed adds up poll intervals (`elapsed +=
//!   poll_interval`), so time spent in storage reads, slow networks or early wake-ups is not
//!   counted and a 30 s wait can run far longer.
//! - **Subscribe, then read storage again.** The seed reads, then starts a listener thread; a
//!   response written between the two is only seen at the next poll.
//! - **One subscriber connection per process** ([`super::hub::Hub`]) instead of a thread and a
//!   connection per waiter that is never unsubscribed or closed. Channels are released when
//!   the last waiter leaves, on success, timeout or cancellation (guards release on drop).
//! - **Batched polling.** Idle waiters do not poll one by one: one task checks all pending
//!   response keys with one `EXISTS k1 k2 ...` per tick (per `poll_batch_keys_max` keys), and
//!   only when some exist finds which and wakes those waiters. Redis load while idle does not
//!   grow per waiter.
//!
//! [`Hybrid::payload_variant`] is a design variant run beside it (`hybrid-payload`): the hint
//! carries the committed response, and a waiter woken by it uses it without reading storage
//! again. One round trip less per wake; safe only because the hint is published after the
//! commit (a variant that published first would hand out values storage never got).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::endpoint::Conn;
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;

use super::hub::{ChannelState, Control, Hub};
use super::metrics as m;
use super::publisher::{PublishOutcome, Publisher};
use super::{
    command_connection, Config, FeedbackStrategy, Fields, ImplStats, Mutation, Result, Via, WaitOutcome, WaiterCount,
};

/// The hint published after a response is stored (the seed publishes the same word).
pub const NOTIFY_MESSAGE: &str = "completed";

/// Reads a response hash; an empty hash is "no response yet".
pub(crate) async fn read_response(conn: &Conn, key: &str) -> Result<Option<Fields>> {
    let fields: Fields = conn.read(redis::cmd("HGETALL").arg(key)).await?;
    Ok((!fields.is_empty()).then_some(fields))
}

/// The commit pipeline for a response: HSET every field, then EXPIRE (applied atomically).
pub(crate) fn store_response(config: &Config, id: &str, fields: &Fields) -> redis::Pipeline {
    let key = config.keys.feedback_response(id);
    let mut pipe = redis::pipe();
    pipe.hset_multiple(&key, &fields.iter().collect::<Vec<_>>()).ignore();
    if !config.mutated(Mutation::NoTtl) {
        pipe.expire(&key, config.response_ttl_s as i64).ignore();
    }
    pipe
}

struct Pending {
    refs: usize,
    /// The waiters' channel state: a poll hit is announced where notifications are.
    wake: Arc<ChannelState>,
}

/// The batched storage poller: the pending response keys and the task that checks them.
struct Poller {
    pending: Mutex<HashMap<Arc<str>, Pending>>,
}

/// A waiter's registration with the poller; releases it on drop (a cancelled wait too).
struct PollGuard {
    poller: Arc<Poller>,
    key: Arc<str>,
    /// Off only for the poller-leak mutation, which releases on the way out of the wait
    /// alone, as code that cleans up at the end of a function instead of in `Drop` does.
    release_on_drop: bool,
    released: bool,
    /// On only for the poller-drops-shared-entry mutation: leaving removes the key outright.
    drop_shared: bool,
}

impl Poller {
    fn register(self: &Arc<Self>, key: Arc<str>, wake: &Arc<ChannelState>) -> PollGuard {
        let mut pending = self.pending.lock().expect("poller lock");
        let entry = pending.entry(key.clone()).or_insert_with(|| Pending { refs: 0, wake: wake.clone() });
        entry.refs += 1;
        PollGuard { poller: self.clone(), key, release_on_drop: true, released: false, drop_shared: false }
    }

    fn len(&self) -> usize {
        self.pending.lock().expect("poller lock").len()
    }

    /// One tick: `EXISTS` over all pending keys in batches; only if some exist, find which
    /// (one pipelined `EXISTS` each, rare: it means a notification was missed) and wake them.
    async fn tick(&self, conn: &Conn, batch_max: usize) -> Result<()> {
        let keys: Vec<Arc<str>> = self.pending.lock().expect("poller lock").keys().cloned().collect();
        for batch in keys.chunks(batch_max.max(1)) {
            let names: Vec<&str> = batch.iter().map(|k| &**k).collect();
            let present: u64 = conn.read(redis::cmd("EXISTS").arg(&names)).await?;
            if present == 0 {
                continue;
            }
            let mut pipe = redis::pipe();
            for k in &names {
                pipe.exists(*k);
            }
            let each: Vec<bool> = conn.read_pipe(&pipe).await?;
            let pending = self.pending.lock().expect("poller lock");
            for (k, _) in batch.iter().zip(each).filter(|(_, e)| *e) {
                if let Some(p) = pending.get(k) {
                    p.wake.bump_polls();
                }
            }
        }
        Ok(())
    }
}

impl PollGuard {
    /// Releases the registration now (the wait returned).
    fn release(mut self) {
        self.remove();
        self.released = true;
    }

    fn remove(&self) {
        let mut pending = self.poller.pending.lock().expect("poller lock");
        if let Some(p) = pending.get_mut(&self.key) {
            p.refs -= 1;
            if p.refs == 0 || self.drop_shared {
                pending.remove(&self.key);
            }
        }
    }
}

impl Drop for PollGuard {
    fn drop(&mut self) {
        if !self.released && self.release_on_drop {
            self.remove();
        }
    }
}

/// The hybrid feedback strategy.
pub struct Hybrid {
    /// `hybrid`, or `hybrid-payload` for the variant whose hint carries the response.
    label: &'static str,
    /// The hint carries the response (JSON of its fields): a woken waiter needs no read.
    payload_hint: bool,
    config: Config,
    conn: Conn,
    hub: Hub,
    publisher: Publisher,
    poller: Arc<Poller>,
    waiters: AtomicUsize,
    cancel: CancellationToken,
    poll_task: Mutex<Option<JoinHandle<()>>>,
}

impl Hybrid {
    /// Connects the command connection to `command_url` and the subscriber to
    /// `subscriber_url` (they differ when each goes through its own proxy).
    pub async fn connect(command_url: &str, subscriber_url: &str, config: Config) -> Result<Hybrid> {
        let conn = command_connection(command_url, &config).await?;
        let hub = Hub::start(subscriber_url, config.clone(), "hybrid");
        let poller = Arc::new(Poller { pending: Mutex::new(HashMap::new()) });
        let cancel = CancellationToken::new();
        let task = {
            let (poller, conn, cancel) = (poller.clone(), conn.clone(), cancel.clone());
            let slow = if config.mutated(Mutation::SlowPoll) { 20 } else { 1 };
            let interval = Duration::from_millis(config.poll_interval_ms * slow);
            let batch_max = config.poll_batch_keys_max;
            let stop_on_error = config.mutated(Mutation::PollerStopsOnError);
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = tokio::time::sleep(interval) => {}
                    }
                    if let Err(e) = poller.tick(&conn, batch_max).await {
                        // Storage unreachable: waiters keep waiting; the next tick tries again.
                        tracing::debug!(error = %e, "poll tick failed");
                        if stop_on_error {
                            break;
                        }
                    }
                }
            })
        };
        let publisher = Publisher::new(conn.clone(), config.clone(), "hybrid");
        Ok(Hybrid {
            label: "hybrid",
            payload_hint: false,
            config,
            conn,
            hub,
            publisher,
            poller,
            waiters: AtomicUsize::new(0),
            cancel,
            poll_task: Mutex::new(Some(task)),
        })
    }

    /// The `hybrid-payload` design variant over the same connections and configuration: the
    /// hint carries the committed response, and a waiter woken by it returns it without a
    /// second storage read.
    pub async fn payload_variant(command_url: &str, subscriber_url: &str, config: Config) -> Result<Hybrid> {
        let mut h = Hybrid::connect(command_url, subscriber_url, config).await?;
        h.label = "hybrid-payload";
        h.payload_hint = true;
        Ok(h)
    }

    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    pub fn publisher(&self) -> &Publisher {
        &self.publisher
    }

    /// Reads the response to `id` once, without waiting.
    pub async fn read(&self, id: &str) -> Result<Option<Fields>> {
        read_response(&self.conn, &self.config.keys.feedback_response(id)).await
    }

    async fn wait_inner(&self, id: &str, timeout: Duration) -> Result<WaitOutcome> {
        let deadline = Instant::now() + timeout;
        let _count = WaiterCount::new(&self.waiters);
        let key: Arc<str> = Arc::from(self.config.keys.feedback_response(id));
        let obtained = |fields, via: Via| {
            metrics::counter!(m::OBTAINED, "impl" => "hybrid", "via" => format!("{via:?}").to_lowercase()).increment(1);
            Ok(WaitOutcome::Obtained { fields, via })
        };
        // 1. Storage first: the resume case returns without touching Pub/Sub. Storage out of
        //    reach for now is no reason to give up the wait: the loop below reads again.
        match Box::pin(read_response(&self.conn, &key)).await {
            Ok(Some(f)) => return obtained(f, Via::Immediate),
            Ok(None) => {}
            Err(e) if e.is_transient() => {}
            Err(e) => return Err(e),
        }
        // 2. Subscribe, and only then read again: a response written between the first read
        //    and the subscription has had its notification already, so only storage has it.
        // The payload variant receives the hints' payloads; one response per id is expected.
        let capacity = if self.payload_hint { 4 } else { 0 };
        let mut sub = self.hub.subscribe(&self.config.keys.feedback_channel(id), capacity);
        let mut hints = sub.messages.take();
        let cap = Duration::from_millis(self.config.subscribe_wait_ms_max)
            .min(deadline.saturating_duration_since(Instant::now()));
        sub.wait_subscribed(cap).await;
        let mut control = self.hub.control();
        let mut poll = self.poller.register(key.clone(), &sub.state);
        poll.release_on_drop = !self.config.mutated(Mutation::PollerLeakOnCancel);
        poll.drop_shared = self.config.mutated(Mutation::PollerDropsSharedEntry);
        // The summed-deadline mutation counts poll intervals slept (seed `000`) instead of
        // reading the clock: reads and early wake-ups are not counted.
        let summed = self.config.mutated(Mutation::SummedDeadline);
        let poll_every = Duration::from_millis(self.config.poll_interval_ms.max(1));
        let mut slept = Duration::ZERO;
        let mut via = Via::AfterSubscribe;
        let mut control_open = true;
        let mut skip_read = self.config.mutated(Mutation::NoRereadAfterSubscribe);
        let outcome = async {
            loop {
                // Noted before the read: a hint that lands while the read is in flight shows
                // as a change below, and sends the waiter back to storage.
                let mut seen = sub.state.snapshot();
                if !std::mem::take(&mut skip_read) {
                    // Boxed: the read is the largest state of this future, and idle waiters
                    // (the many) should not carry its space while they sleep.
                    match Box::pin(read_response(&self.conn, &key)).await {
                        Ok(Some(f)) => return obtained(f, via),
                        Ok(None) => {}
                        // Storage unreachable for now: keep waiting, the poller retries.
                        Err(e) if e.is_transient() => {}
                        Err(e) => return Err(e),
                    }
                }
                if self.config.mutated(Mutation::SnapshotAfterRead) {
                    seen = sub.state.snapshot();
                }
                let over = if summed { slept >= timeout } else { Instant::now() >= deadline };
                if over {
                    return Ok(WaitOutcome::TimedOut);
                }
                let nap_until = if summed { Instant::now() + poll_every.min(timeout - slept) } else { deadline };
                // 3. Sleep until a hint, a poll hit, a resync, or the deadline; storage decides.
                // Biased, hints first: when a hint and the wake it causes are both ready, the
                // payload variant takes the payload rather than a second read.
                tokio::select! {
                    biased;
                    // The payload variant: a hint that carries the response is the response
                    // (published only after the commit). Anything else (a bare hint, a lag)
                    // falls through to the storage read.
                    m = async { hints.as_mut().expect("guarded").recv().await }, if hints.is_some() => {
                        via = Via::Notified;
                        match m {
                            Ok(payload) => {
                                if let Ok(fields) = serde_json::from_str::<Fields>(&payload) {
                                    return obtained(fields, Via::Notified);
                                }
                            }
                            Err(tokio::sync::broadcast::error::RecvError::Closed) => hints = None,
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        }
                    }
                    now = sub.state.changed(seen) => {
                        via = if now.resyncs > seen.resyncs {
                            Via::Resync
                        } else if now.messages > seen.messages {
                            Via::Notified
                        } else {
                            Via::Polled
                        };
                    }
                    c = control.recv(), if control_open => match c {
                        Ok(Control::Shutdown) => return Ok(WaitOutcome::Shutdown),
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => control_open = false,
                        _ => {}
                    },
                    _ = sleep_until(nap_until) => via = if summed { Via::Polled } else { Via::Deadline },
                }
                if summed {
                    slept += poll_every;
                }
            }
        }
        .await;
        poll.release();
        outcome
    }
}

#[async_trait::async_trait]
impl FeedbackStrategy for Hybrid {
    fn name(&self) -> &'static str {
        self.label
    }

    async fn respond(&self, id: &str, fields: &Fields) -> PublishOutcome {
        let channel = self.config.keys.feedback_channel(id);
        let store = store_response(&self.config, id, fields);
        let payload;
        let message = if self.payload_hint {
            payload = serde_json::to_string(fields).expect("string map serialises");
            payload.as_str()
        } else {
            NOTIFY_MESSAGE
        };
        if self.config.mutated(Mutation::PublishBeforeStore) {
            self.publisher.commit(None, Some((&channel, message))).await;
            return self.publisher.commit(Some(store), None).await;
        }
        self.publisher.commit(Some(store), Some((&channel, message))).await
    }

    async fn wait(&self, id: &str, timeout: Duration) -> Result<WaitOutcome> {
        self.wait_inner(id, timeout).await
    }

    fn stats(&self) -> ImplStats {
        ImplStats {
            waiters: self.waiters.load(Ordering::Relaxed),
            channels: self.hub.channel_count(),
            pending_polls: self.poller.len(),
            reconnects: self.hub.reconnects(),
        }
    }

    async fn shutdown(&self) {
        self.cancel.cancel();
        let task = self.poll_task.lock().expect("poll task lock").take();
        if let Some(t) = task {
            let _ = t.await;
        }
        self.hub.shutdown().await;
    }
}

impl Drop for Hybrid {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}
