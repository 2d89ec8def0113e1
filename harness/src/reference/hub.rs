//! The robust subscriber: one Pub/Sub connection per process serving every waiter.
//!
//! Waiters [`Hub::subscribe`] to a channel and get a [`Subscription`]; channels are
//! reference-counted, so the channel is unsubscribed when its last subscription is dropped
//! (on success, on timeout, and when a waiting future is cancelled). One background task owns
//! the connection. It batches pending SUBSCRIBE/UNSUBSCRIBE changes into one command each,
//! checks the connection's health with `PING` (a half-open or blackholed connection never
//! reports an error by itself), reconnects with exponential backoff and full jitter,
//! resubscribes every channel, and then wakes every waiter to re-read storage: whatever was
//! published while the connection was down is in storage, not in Pub/Sub.
//!
//! Wake-ups go through a [`ChannelState`] per channel: counters plus a `Notify`. A waiter takes
//! a snapshot of the counters *before* it reads storage and sleeps only while they still
//! equal it, so a message that arrives between the read and the sleep still wakes it (a bare
//! `Notify::notify_waiters` in that gap would be lost).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{broadcast, mpsc, watch, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::metrics as m;
use super::{backoff_delay, Config};

/// A snapshot of a channel's wake-up counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Signal {
    /// Messages received on the channel.
    pub messages: u64,
    /// Times the subscriber (re)subscribed and asked every waiter to re-read storage.
    pub resyncs: u64,
    /// Times a storage poller found something for this channel's waiters.
    pub polls: u64,
    /// Whether the channel is confirmed subscribed on the live connection.
    pub subscribed: bool,
}

/// The wake-up state shared by every waiter on one channel (and by a storage poller that
/// wakes them): counters to compare and one `Notify` to sleep on. Deliberately small (a
/// `watch` channel costs ~0.5 KiB with its eight internal notifiers), because a process may
/// hold tens of thousands of these.
#[derive(Debug, Default)]
pub struct ChannelState {
    messages: AtomicU64,
    resyncs: AtomicU64,
    polls: AtomicU64,
    subscribed: AtomicBool,
    notify: Notify,
}

impl ChannelState {
    pub fn snapshot(&self) -> Signal {
        Signal {
            messages: self.messages.load(Ordering::Acquire),
            resyncs: self.resyncs.load(Ordering::Acquire),
            polls: self.polls.load(Ordering::Acquire),
            subscribed: self.subscribed.load(Ordering::Acquire),
        }
    }

    /// Records that a storage poller found something for this channel, and wakes waiters.
    pub fn bump_polls(&self) {
        self.polls.fetch_add(1, Ordering::AcqRel);
        self.notify.notify_waiters();
    }

    fn bump_messages(&self, wake_one: bool) {
        self.messages.fetch_add(1, Ordering::AcqRel);
        if wake_one {
            self.notify.notify_one();
        } else {
            self.notify.notify_waiters();
        }
    }

    fn set(&self, subscribed: bool, resync: bool) {
        self.subscribed.store(subscribed, Ordering::Release);
        if resync {
            self.resyncs.fetch_add(1, Ordering::AcqRel);
        }
        self.notify.notify_waiters();
    }

    /// Resolves with the new snapshot once it differs from `seen`. Interest is registered
    /// before comparing, so a change between a caller's storage read and this call is never
    /// missed (the lost-wake-up race of a bare `notify_waiters`).
    pub async fn changed(&self, seen: Signal) -> Signal {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let now = self.snapshot();
            if now != seen {
                return now;
            }
            notified.await;
        }
    }
}

/// A control signal on the control channel (seed `004_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    /// Forget per-stream state (e.g. the last sequence seen) and accept fresh data.
    Reset,
    /// Stop consuming.
    Shutdown,
}

impl Control {
    /// Accepts `RESET` / `SHUTDOWN` as plain text or `{"type": "reset"}` JSON, any case.
    pub fn parse(payload: &str) -> Option<Control> {
        let word = serde_json::from_str::<serde_json::Value>(payload)
            .ok()
            .and_then(|v| v.get("type").or_else(|| v.get("signal")).and_then(|t| t.as_str()).map(str::to_string))
            .unwrap_or_else(|| payload.trim().to_string());
        match word.to_ascii_lowercase().as_str() {
            "reset" => Some(Control::Reset),
            "shutdown" => Some(Control::Shutdown),
            _ => None,
        }
    }
}

struct Entry {
    refs: usize,
    state: Arc<ChannelState>,
    /// Message payloads, for consumers that use them (streams, fan-out, pub/sub-only).
    messages: Option<broadcast::Sender<Arc<str>>>,
}

struct Inner {
    config: Config,
    url: String,
    label: &'static str,
    /// Wanted channels. Names are `Arc<str>` shared with subscriptions, the kick queue and the
    /// task's confirmed set: one allocation per channel, not four.
    channels: Mutex<HashMap<Arc<str>, Entry>>,
    /// Channels whose wanted state changed; the task syncs just those.
    kick: mpsc::UnboundedSender<Arc<str>>,
    connected: watch::Sender<bool>,
    control: broadcast::Sender<Control>,
    reconnects: AtomicU64,
    cancel: CancellationToken,
}

impl Inner {
    fn kick(&self, channel: &Arc<str>) {
        let _ = self.kick.send(channel.clone());
    }

    fn mark_all(&self, subscribed: bool, resync: bool) {
        let channels = self.channels.lock().expect("hub lock");
        // The resync-wakes-nobody mutation marks the channels subscribed without waking
        // anyone: whatever was published during the gap waits for a poll.
        let quiet = resync && self.config.mutated(super::Mutation::ResyncWakesNobody);
        for e in channels.values() {
            if quiet {
                e.state.subscribed.store(subscribed, Ordering::Release);
            } else {
                e.state.set(subscribed, resync);
            }
        }
    }
}

/// The per-process subscriber. Cheap to clone; [`Hub::shutdown`], or dropping the last
/// clone, stops it.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
    owner: Arc<Owner>,
}

/// Held only by `Hub` clones (the task and subscriptions hold `Inner`), so the task stops
/// when the last `Hub` goes, even without an explicit shutdown.
struct Owner {
    cancel: CancellationToken,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Owner {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// A reference to one subscribed channel. Dropping it releases the reference.
pub struct Subscription {
    inner: Arc<Inner>,
    channel: Arc<str>,
    pub state: Arc<ChannelState>,
    pub messages: Option<broadcast::Receiver<Arc<str>>>,
    connected: watch::Receiver<bool>,
}

impl Hub {
    /// Starts the subscriber task on `url` (the subscriber connection may go through a
    /// different proxy than the command connection). `label` names it in metrics.
    pub fn start(url: &str, config: Config, label: &'static str) -> Hub {
        let (kick, kick_rx) = mpsc::unbounded_channel();
        let (connected, _) = watch::channel(false);
        let (control, _) = broadcast::channel(16);
        let inner = Arc::new(Inner {
            config,
            url: url.to_string(),
            label,
            channels: Mutex::new(HashMap::new()),
            kick,
            connected,
            control,
            reconnects: AtomicU64::new(0),
            cancel: CancellationToken::new(),
        });
        let task = tokio::spawn(run(inner.clone(), kick_rx));
        let owner = Owner { cancel: inner.cancel.clone(), task: Mutex::new(Some(task)) };
        Hub { inner, owner: Arc::new(owner) }
    }

    /// Adds a reference to `channel`, subscribing it if it is the first. With
    /// `messages_capacity > 0` the subscription also receives message payloads (a bounded
    /// broadcast: a consumer that falls further behind sees `Lagged` and must re-read).
    pub fn subscribe(&self, channel: &str, messages_capacity: usize) -> Subscription {
        let mut channels = self.inner.channels.lock().expect("hub lock");
        let first = !channels.contains_key(channel);
        if first {
            let entry = Entry { refs: 0, state: Arc::new(ChannelState::default()), messages: None };
            channels.insert(Arc::from(channel), entry);
        }
        let name = channels.get_key_value(channel).expect("inserted above").0.clone();
        let entry = channels.get_mut(channel).expect("inserted above");
        entry.refs += 1;
        if messages_capacity > 0 && entry.messages.is_none() {
            entry.messages = Some(broadcast::channel(messages_capacity).0);
        }
        let sub = Subscription {
            inner: self.inner.clone(),
            channel: name.clone(),
            state: entry.state.clone(),
            messages: (messages_capacity > 0).then(|| entry.messages.as_ref().expect("created above").subscribe()),
            connected: self.inner.connected.subscribe(),
        };
        let count = channels.len();
        drop(channels);
        if first {
            metrics::gauge!(m::ACTIVE_SUBSCRIPTIONS, "impl" => self.inner.label).set(count as f64);
            self.inner.kick(&name);
        }
        sub
    }

    /// Control signals (RESET, SHUTDOWN) from the control channel.
    pub fn control(&self) -> broadcast::Receiver<Control> {
        self.inner.control.subscribe()
    }

    /// Channels currently wanted (each with at least one subscription).
    pub fn channel_count(&self) -> usize {
        self.inner.channels.lock().expect("hub lock").len()
    }

    /// Channels confirmed subscribed on the live connection (O(channels): for checks and
    /// benches, not hot paths).
    pub fn subscribed_count(&self) -> usize {
        self.inner.channels.lock().expect("hub lock").values().filter(|e| e.state.snapshot().subscribed).count()
    }

    pub fn reconnects(&self) -> u64 {
        self.inner.reconnects.load(Ordering::Relaxed)
    }

    /// Whether the deliberately broken variant `m` is switched on (for components built on
    /// the hub).
    pub(crate) fn mutated(&self, m: super::Mutation) -> bool {
        self.inner.config.mutated(m)
    }

    pub fn is_connected(&self) -> bool {
        *self.inner.connected.borrow()
    }

    /// Stops the task and closes the connection.
    pub async fn shutdown(&self) {
        self.owner.cancel.cancel();
        let task = self.owner.task.lock().expect("hub task lock").take();
        if let Some(t) = task {
            let _ = t.await;
        }
    }
}

impl Subscription {
    /// Waits until the channel is confirmed subscribed, at most `limit`. Returns at once
    /// while the subscriber is disconnected: waiting would only delay the storage read that
    /// polling relies on. Returns whether the subscription is confirmed.
    pub async fn wait_subscribed(&mut self, limit: Duration) -> bool {
        let wait = async {
            loop {
                let seen = self.state.snapshot();
                if seen.subscribed {
                    return true;
                }
                if !*self.connected.borrow_and_update() {
                    return false;
                }
                tokio::select! {
                    _ = self.state.changed(seen) => {}
                    r = self.connected.changed() => if r.is_err() { return false },
                }
            }
        };
        tokio::time::timeout(limit, wait).await.unwrap_or(false)
    }

    pub fn channel(&self) -> &str {
        &self.channel
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut channels = self.inner.channels.lock().expect("hub lock");
        let last = match channels.get_mut(&*self.channel) {
            Some(e) => {
                e.refs -= 1;
                e.refs == 0 || self.inner.config.mutated(super::Mutation::UnsubscribeShared)
            }
            None => false,
        };
        if last {
            channels.remove(&*self.channel);
            let count = channels.len();
            drop(channels);
            metrics::gauge!(m::ACTIVE_SUBSCRIPTIONS, "impl" => self.inner.label).set(count as f64);
            self.inner.kick(&self.channel);
        }
    }
}

enum Ended {
    Shutdown,
    Lost(&'static str),
}

async fn run(inner: Arc<Inner>, mut kick_rx: mpsc::UnboundedReceiver<Arc<str>>) {
    let mut attempt: u32 = 0;
    loop {
        match session(&inner, &mut kick_rx, &mut attempt).await {
            Ended::Shutdown => break,
            Ended::Lost(reason) => {
                inner.connected.send_replace(false);
                inner.mark_all(false, false);
                inner.reconnects.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(m::RECONNECTIONS, "impl" => inner.label, "reason" => reason).increment(1);
                tracing::debug!(reason, attempt, "subscriber connection lost; reconnecting");
                let delay =
                    backoff_delay(attempt, inner.config.reconnect_delay_ms_min, inner.config.reconnect_delay_ms_max);
                attempt = attempt.saturating_add(1);
                tokio::select! {
                    _ = inner.cancel.cancelled() => break,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
    inner.connected.send_replace(false);
    inner.mark_all(false, false);
}

async fn session(inner: &Arc<Inner>, kick_rx: &mut mpsc::UnboundedReceiver<Arc<str>>, attempt: &mut u32) -> Ended {
    let cfg = &inner.config;
    let connect_limit = Duration::from_millis(cfg.connect_timeout_ms);
    let command_limit = Duration::from_millis(cfg.command_timeout_ms);
    // A Sentinel URL is asked again at every connect: after a failover this is where the
    // subscriber moves to the new primary (Sentinel disconnects a demoted server's clients).
    let target = tokio::select! {
        _ = inner.cancel.cancelled() => return Ended::Shutdown,
        r = super::endpoint::resolve(&inner.url, cfg) => match r {
            Ok(t) => t,
            Err(_) => return Ended::Lost("no primary"),
        },
    };
    let client = match redis::Client::open(target.as_str()) {
        Ok(c) => c,
        Err(_) => return Ended::Lost("bad url"),
    };
    let pubsub = tokio::select! {
        _ = inner.cancel.cancelled() => return Ended::Shutdown,
        r = tokio::time::timeout(connect_limit, client.get_async_pubsub()) => match r {
            Ok(Ok(p)) => p,
            Ok(Err(_)) => return Ended::Lost("connect failed"),
            Err(_) => return Ended::Lost("connect timeout"),
        },
    };
    let (mut sink, mut stream) = pubsub.split();
    let mut ping_sink = sink.clone();
    let control = cfg.keys.control_channel();
    // Messages are dispatched as they arrive, beside the commands below, never behind them:
    // a SUBSCRIBE, UNSUBSCRIBE or PING waits a full round trip for its reply, and a hint that
    // arrived meanwhile used to wait with it. Under waiter churn the loop went from one
    // round trip to the next, and behind a 50 +- 20 ms latency a hint waited 150-320 ms for
    // its turn (the latency scenario beside `stress-ng --cpu 2`; hint-behind-commands
    // squeezes it on purpose).
    // The dispatch-behind-commands mutation: a round trip holds the gate, and a message
    // waits for it, as when one loop both reads and sends.
    let behind = cfg.mutated(super::Mutation::DispatchBehindCommands);
    let gate = tokio::sync::Mutex::new(());
    let hold = || async {
        if behind {
            Some(gate.lock().await)
        } else {
            None
        }
    };
    let reader = async {
        while let Some(msg) = stream.next().await {
            let _held = hold().await;
            dispatch(inner, &control, &msg);
        }
    };
    // The control-on-first-connection-only mutation subscribes the control channel once.
    let control_once =
        cfg.mutated(super::Mutation::ControlOnFirstConnectionOnly) && inner.reconnects.load(Ordering::Relaxed) > 0;
    let commands = async {
        if !control_once && !matches!(tokio::time::timeout(command_limit, sink.subscribe(&control)).await, Ok(Ok(()))) {
            return Ended::Lost("subscribe failed");
        }
        let mut confirmed: HashSet<Arc<str>> = HashSet::new();
        // A fresh connection syncs everything; changes queued while down are covered by it.
        while kick_rx.try_recv().is_ok() {}
        // The no-resubscribe mutation forgets every channel wanted before the reconnect.
        let forget =
            inner.config.mutated(super::Mutation::NoResubscribe) && inner.reconnects.load(Ordering::Relaxed) > 0;
        if !forget && sync(inner, &mut sink, &mut confirmed, None).await.is_err() {
            return Ended::Lost("subscribe failed");
        }
        *attempt = 0;
        inner.connected.send_replace(true);
        // Whatever was published while no subscription was live is only in storage now.
        inner.mark_all(true, true);
        loop {
            let Some(first) = kick_rx.recv().await else { return Ended::Shutdown };
            let mut changed = HashSet::from([first]);
            while let Ok(name) = kick_rx.try_recv() {
                changed.insert(name);
            }
            let _held = hold().await;
            if sync(inner, &mut sink, &mut confirmed, Some(changed)).await.is_err() {
                return Ended::Lost("subscribe failed");
            }
        }
    };
    // The health check's PING goes out on its own clone of the sink, pipelined beside the
    // subscription changes: in line with them, every PING held the next SUBSCRIBE back a full
    // round trip (a 150 ms upstream latency and a PING every 250 ms kept the loop busy 60 % of
    // the time, and a burst of waiters was confirmed 750 ms late: subscribe-race beside
    // `stress-ng --cpu 2`). Only started once the connection is synced, as before.
    let health = async {
        if inner.connected.subscribe().wait_for(|up| *up).await.is_err() {
            return Ended::Shutdown;
        }
        let mut health = tokio::time::interval(Duration::from_millis(cfg.health_check_interval_ms));
        health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        health.tick().await;
        loop {
            health.tick().await;
            let _held = hold().await;
            let limit = Duration::from_millis(cfg.health_check_timeout_ms);
            let healthy = if cfg.mutated(super::Mutation::HealthCheckNoTimeout) {
                ping_sink.ping::<redis::Value>().await.is_ok()
            } else {
                matches!(tokio::time::timeout(limit, ping_sink.ping::<redis::Value>()).await, Ok(Ok(_)))
            };
            if !healthy {
                return Ended::Lost("health check failed");
            }
        }
    };
    tokio::select! {
        _ = inner.cancel.cancelled() => Ended::Shutdown,
        () = reader => Ended::Lost("connection closed"),
        ended = commands => ended,
        ended = health => ended,
    }
}

/// Brings the connection's subscriptions in line with the wanted channels (all of them, or
/// just the `changed` ones, so a registration costs O(1) even with 10,000 channels wanted),
/// with one SUBSCRIBE and one UNSUBSCRIBE for all changes, and marks confirmed channels.
async fn sync(
    inner: &Inner,
    sink: &mut redis::aio::PubSubSink,
    confirmed: &mut HashSet<Arc<str>>,
    changed: Option<HashSet<Arc<str>>>,
) -> Result<(), ()> {
    let limit = Duration::from_millis(inner.config.command_timeout_ms);
    let full = changed.is_none();
    let (to_sub, to_unsub, already) = {
        let channels = inner.channels.lock().expect("hub lock");
        let candidates: HashSet<Arc<str>> = match changed {
            Some(names) => names,
            None => channels.keys().chain(confirmed.iter()).cloned().collect(),
        };
        let (mut to_sub, mut to_unsub, mut already) = (Vec::new(), Vec::new(), Vec::new());
        for name in candidates {
            match (channels.contains_key(&name), confirmed.contains(&name)) {
                (true, false) => to_sub.push(name),
                (false, true) => to_unsub.push(name),
                // Dropped and re-added between two syncs: never unsubscribed at the server,
                // but its new entry starts unconfirmed.
                (true, true) => already.push(name),
                (false, false) => {}
            }
        }
        (to_sub, to_unsub, already)
    };
    if !to_unsub.is_empty() {
        // The never-unsubscribe mutation forgets the channel but leaves it subscribed.
        let leak = inner.config.mutated(super::Mutation::NeverUnsubscribe);
        let names: Vec<&str> = to_unsub.iter().map(|n| &**n).collect();
        if !leak && !matches!(tokio::time::timeout(limit, sink.unsubscribe(&names)).await, Ok(Ok(()))) {
            return Err(());
        }
        for c in &to_unsub {
            confirmed.remove(c);
        }
    }
    if !to_sub.is_empty() {
        let names: Vec<&str> = to_sub.iter().map(|n| &**n).collect();
        if !matches!(tokio::time::timeout(limit, sink.subscribe(&names)).await, Ok(Ok(()))) {
            return Err(());
        }
        if inner.config.mutated(super::Mutation::ForgetInFlightSubscribe) {
            let channels = inner.channels.lock().expect("hub lock");
            confirmed.extend(to_sub.iter().filter(|c| channels.contains_key(*c)).cloned());
        } else {
            // Every channel the server now holds, wanted or not: one dropped while its
            // SUBSCRIBE was in flight is unsubscribed by the sync its drop queued.
            confirmed.extend(to_sub.iter().cloned());
        }
    }
    // A full sync after a reconnect under the resync-wakes-nobody mutation marks channels
    // without waking their waiters (mark_all does the same for the resync itself).
    let quiet = full && inner.config.mutated(super::Mutation::ResyncWakesNobody);
    let channels = inner.channels.lock().expect("hub lock");
    for name in to_sub.iter().chain(already.iter()) {
        if let Some(e) = channels.get(name) {
            if quiet {
                e.state.subscribed.store(true, Ordering::Release);
            } else if !e.state.snapshot().subscribed {
                e.state.set(true, false);
            }
        }
    }
    Ok(())
}

fn dispatch(inner: &Inner, control: &str, msg: &redis::Msg) {
    let channel = msg.get_channel_name();
    let payload: String = msg.get_payload().unwrap_or_default();
    metrics::counter!(m::RECEIVED, "impl" => inner.label).increment(1);
    if channel == control {
        if let Some(signal) = Control::parse(&payload) {
            let _ = inner.control.send(signal);
        }
        return;
    }
    let channels = inner.channels.lock().expect("hub lock");
    if let Some(e) = channels.get(channel) {
        e.state.bump_messages(inner.config.mutated(super::Mutation::WakeOneWaiter));
        if let Some(tx) = &e.messages {
            let _ = tx.send(Arc::from(payload));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_signals_parse_in_both_shapes() {
        assert_eq!(Control::parse("RESET"), Some(Control::Reset));
        assert_eq!(Control::parse(" shutdown\n"), Some(Control::Shutdown));
        assert_eq!(Control::parse(r#"{"type": "RESET", "symbol": "ES"}"#), Some(Control::Reset));
        assert_eq!(Control::parse(r#"{"signal": "shutdown"}"#), Some(Control::Shutdown));
        assert_eq!(Control::parse("completed"), None);
    }
}
