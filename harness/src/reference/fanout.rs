//! Fan-out consumer of seed `004_*` (market data from a hub to strategy workers).
//!
//! Messages carry a sequence number. The consumer skips stale ones (sequence not above the
//! last seen), puts the rest into a bounded queue (`queue_len_max`, default 1024) and counts
//! what a full queue drops instead of growing without bound behind a slow worker. RESET on
//! the control channel forgets the last sequence (a producer restarted and counts from 0
//! again) and, unlike data, is never dropped for a full queue; SHUTDOWN stops the consumer. Fan-out is pure Pub/Sub by nature (the seed stores no
//! history), so what is published while a consumer is away is not recovered: this is the
//! one component where loss is reported, not prevented.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::hub::{Control, Hub};
use super::metrics as m;
use super::publisher::{PublishOutcome, Publisher};
use super::{command_connection, Config, Result};

/// How long a control signal may wait for room in a full queue, in ms.
const CONTROL_ENQUEUE_WAIT_MS: u64 = 5_000;
/// Live messages buffered between the subscriber and this consumer's filter.
const SUBSCRIPTION_MESSAGES_MAX: usize = 1024;

/// One fan-out message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Tick {
    pub seq: u64,
    pub payload: serde_json::Value,
}

/// What the worker receives.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    Tick(Tick),
    Reset,
}

/// Counters of one consumer.
#[derive(Debug, Default)]
pub struct FanoutStats {
    pub received: AtomicU64,
    pub enqueued: AtomicU64,
    pub dropped_overflow: AtomicU64,
    pub dropped_lagged: AtomicU64,
    pub stale_skipped: AtomicU64,
    pub malformed: AtomicU64,
    pub resets: AtomicU64,
}

/// A running consumer: read events from `events`; it stops on SHUTDOWN or [`stop`](Self::stop).
pub struct FanoutConsumer {
    pub events: mpsc::Receiver<Event>,
    pub stats: Arc<FanoutStats>,
    task: JoinHandle<()>,
}

impl FanoutConsumer {
    pub fn start(hub: &Hub, channel: &str, queue_len_max: usize) -> FanoutConsumer {
        let (tx, events) = mpsc::channel(queue_len_max.max(1));
        let stats = Arc::new(FanoutStats::default());
        let mut sub = hub.subscribe(channel, SUBSCRIPTION_MESSAGES_MAX);
        let mut control = hub.control();
        let st = stats.clone();
        let drop_reset_when_full = hub.mutated(super::Mutation::FanoutDropsResetWhenFull);
        let task = tokio::spawn(async move {
            let mut messages = sub.messages.take().expect("asked for messages");
            let mut last_seq: Option<u64> = None;
            loop {
                tokio::select! {
                    m = messages.recv() => match m {
                        Ok(raw) => {
                            st.received.fetch_add(1, Ordering::Relaxed);
                            let Ok(tick) = serde_json::from_str::<Tick>(&raw) else {
                                st.malformed.fetch_add(1, Ordering::Relaxed);
                                continue;
                            };
                            if last_seq.is_some_and(|l| tick.seq <= l) {
                                st.stale_skipped.fetch_add(1, Ordering::Relaxed);
                                continue;
                            }
                            last_seq = Some(tick.seq);
                            enqueue(&tx, &st, Event::Tick(tick));
                        }
                        Err(RecvError::Lagged(n)) => { st.dropped_lagged.fetch_add(n, Ordering::Relaxed); }
                        Err(RecvError::Closed) => break,
                    },
                    c = control.recv() => match c {
                        Ok(Control::Reset) => {
                            last_seq = None;
                            st.resets.fetch_add(1, Ordering::Relaxed);
                            // A dropped RESET would leave the worker seeing sequences go
                            // backwards with no explanation (the seed's put_nowait does
                            // drop it; the fanout-overflow scenario caught that). Wait for
                            // room instead, bounded; data meanwhile lags and is counted.
                            if drop_reset_when_full {
                                enqueue(&tx, &st, Event::Reset);
                                continue;
                            }
                            let room = Duration::from_millis(CONTROL_ENQUEUE_WAIT_MS);
                            match tokio::time::timeout(room, tx.send(Event::Reset)).await {
                                Ok(Ok(())) => { st.enqueued.fetch_add(1, Ordering::Relaxed); }
                                Ok(Err(_)) => break,
                                Err(_) => { st.dropped_overflow.fetch_add(1, Ordering::Relaxed); }
                            }
                        }
                        Ok(Control::Shutdown) | Err(RecvError::Closed) => break,
                        Err(RecvError::Lagged(_)) => {}
                    },
                }
            }
            drop(sub);
        });
        FanoutConsumer { events, stats, task }
    }

    /// Stops the consumer and releases its subscription.
    pub async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }

    /// Whether the consumer has stopped (SHUTDOWN received).
    pub fn is_stopped(&self) -> bool {
        self.task.is_finished()
    }
}

fn enqueue(tx: &mpsc::Sender<Event>, st: &FanoutStats, e: Event) {
    match tx.try_send(e) {
        Ok(()) => {
            st.enqueued.fetch_add(1, Ordering::Relaxed);
        }
        Err(mpsc::error::TrySendError::Full(_)) => {
            st.dropped_overflow.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(m::BUFFER_DROPPED, "impl" => "fanout").increment(1);
        }
        Err(mpsc::error::TrySendError::Closed(_)) => {}
    }
    metrics::gauge!(m::BUFFER_SIZE, "impl" => "fanout").set((tx.max_capacity() - tx.capacity()) as f64);
}

/// Publishes ticks and control signals (the data hub's side).
pub struct FanoutPublisher {
    config: Config,
    publisher: Publisher,
}

impl FanoutPublisher {
    pub async fn connect(url: &str, config: Config) -> Result<FanoutPublisher> {
        let conn = command_connection(url, &config).await?;
        Ok(FanoutPublisher { publisher: Publisher::new(conn, config.clone(), "fanout"), config })
    }

    pub async fn publish(&self, channel: &str, tick: &Tick) -> PublishOutcome {
        let json = serde_json::to_string(tick).expect("tick serialises");
        self.publisher.commit(None, Some((channel, &json))).await
    }

    pub async fn control(&self, signal: Control) -> PublishOutcome {
        let word = match signal {
            Control::Reset => "RESET",
            Control::Shutdown => "SHUTDOWN",
        };
        self.publisher.commit(None, Some((&self.config.keys.control_channel(), word))).await
    }
}
