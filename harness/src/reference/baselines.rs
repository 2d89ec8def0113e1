//! The designs the hybrid replaces, behind the same [`FeedbackStrategy`] interface, so every
//! scenario can show what each one loses or how slow it is.
//!
//! - [`PubSubOnly`]: the payload travels only in the Pub/Sub message; nothing is stored. A
//!   message published while nobody listens (resume after a checkpoint, a reconnect gap, a
//!   restart) is gone. Expected to lose.
//! - [`PollingOnly`]: storage and a fixed poll interval, no Pub/Sub. Never loses what was
//!   stored, but every wake-up waits for the next tick. Expected to be slow.
//!
//! Both use the same connection plumbing as the hybrid (one command connection, one
//! subscriber [`Hub`] for pub/sub-only), so the comparison isolates the design, not the
//! client code.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::endpoint::Conn;
use tokio::sync::broadcast::error::RecvError;
use tokio::time::{sleep_until, Instant};

use super::feedback::{read_response, store_response};
use super::hub::Hub;
use super::publisher::{PublishOutcome, Publisher};
use super::stream::{Chunk, FollowEnd};
use super::{
    command_connection, Config, Error, FeedbackStrategy, Fields, ImplStats, Result, StreamStrategy, Via, WaitOutcome,
    WaiterCount,
};

/// Messages a pub/sub-only waiter buffers; one response per id is expected.
const PUBSUB_WAITER_MESSAGES_MAX: usize = 4;

/// Pub/Sub alone: fire and forget.
pub struct PubSubOnly {
    config: Config,
    hub: Hub,
    publisher: Publisher,
    waiters: AtomicUsize,
}

impl PubSubOnly {
    pub async fn connect(command_url: &str, subscriber_url: &str, config: Config) -> Result<PubSubOnly> {
        let conn = command_connection(command_url, &config).await?;
        let hub = Hub::start(subscriber_url, config.clone(), "pubsub-only");
        let publisher = Publisher::new(conn, config.clone(), "pubsub-only");
        Ok(PubSubOnly { config, hub, publisher, waiters: AtomicUsize::new(0) })
    }
}

#[async_trait::async_trait]
impl FeedbackStrategy for PubSubOnly {
    fn name(&self) -> &'static str {
        "pubsub-only"
    }

    async fn respond(&self, id: &str, fields: &Fields) -> PublishOutcome {
        let channel = self.config.keys.feedback_channel(id);
        let message = serde_json::to_string(fields).expect("string map serialises");
        self.publisher.commit(None, Some((&channel, &message))).await
    }

    async fn wait(&self, id: &str, timeout: Duration) -> Result<WaitOutcome> {
        let deadline = Instant::now() + timeout;
        let _count = WaiterCount::new(&self.waiters);
        let mut sub = self.hub.subscribe(&self.config.keys.feedback_channel(id), PUBSUB_WAITER_MESSAGES_MAX);
        sub.wait_subscribed(deadline.saturating_duration_since(Instant::now())).await;
        let mut messages = sub.messages.take().expect("asked for messages");
        loop {
            tokio::select! {
                _ = sleep_until(deadline) => return Ok(WaitOutcome::TimedOut),
                m = messages.recv() => match m {
                    Ok(payload) => {
                        let fields: Fields = serde_json::from_str(&payload).map_err(|e| Error::Payload(e.to_string()))?;
                        return Ok(WaitOutcome::Obtained { fields, via: Via::Notified });
                    }
                    Err(RecvError::Lagged(_)) => continue,
                    Err(RecvError::Closed) => {
                        sleep_until(deadline).await;
                        return Ok(WaitOutcome::TimedOut);
                    }
                },
            }
        }
    }

    fn stats(&self) -> ImplStats {
        ImplStats {
            waiters: self.waiters.load(Ordering::Relaxed),
            channels: self.hub.channel_count(),
            pending_polls: 0,
            reconnects: self.hub.reconnects(),
        }
    }

    async fn shutdown(&self) {
        self.hub.shutdown().await;
    }
}

/// Storage with a fixed poll interval, no Pub/Sub.
pub struct PollingOnly {
    config: Config,
    conn: Conn,
    publisher: Publisher,
    waiters: AtomicUsize,
}

impl PollingOnly {
    pub async fn connect(command_url: &str, config: Config) -> Result<PollingOnly> {
        let conn = command_connection(command_url, &config).await?;
        let publisher = Publisher::new(conn.clone(), config.clone(), "polling-only");
        Ok(PollingOnly { config, conn, publisher, waiters: AtomicUsize::new(0) })
    }
}

#[async_trait::async_trait]
impl FeedbackStrategy for PollingOnly {
    fn name(&self) -> &'static str {
        "polling-only"
    }

    async fn respond(&self, id: &str, fields: &Fields) -> PublishOutcome {
        self.publisher.commit(Some(store_response(&self.config, id, fields)), None).await
    }

    async fn wait(&self, id: &str, timeout: Duration) -> Result<WaitOutcome> {
        let deadline = Instant::now() + timeout;
        let _count = WaiterCount::new(&self.waiters);
        let key = self.config.keys.feedback_response(id);
        let interval = Duration::from_millis(self.config.poll_interval_ms);
        let mut via = Via::Immediate;
        loop {
            match read_response(&self.conn, &key).await {
                Ok(Some(fields)) => return Ok(WaitOutcome::Obtained { fields, via }),
                Ok(None) => {}
                Err(e) if e.is_transient() => {}
                Err(e) => return Err(e),
            }
            if Instant::now() >= deadline {
                return Ok(WaitOutcome::TimedOut);
            }
            sleep_until(deadline.min(Instant::now() + interval)).await;
            via = Via::Polled;
        }
    }

    fn stats(&self) -> ImplStats {
        ImplStats { waiters: self.waiters.load(Ordering::Relaxed), ..ImplStats::default() }
    }

    async fn shutdown(&self) {}
}

/// Streaming over Pub/Sub alone (the seed's `003_*` consumer): chunks are published, nothing
/// is stored; a consumer hands over what it hears, in the order it hears it.
pub struct PubSubOnlyStream {
    config: Config,
    hub: Hub,
    publisher: Publisher,
}

impl PubSubOnlyStream {
    pub async fn connect(command_url: &str, subscriber_url: &str, config: Config) -> Result<PubSubOnlyStream> {
        let conn = command_connection(command_url, &config).await?;
        let hub = Hub::start(subscriber_url, config.clone(), "pubsub-only-stream");
        Ok(PubSubOnlyStream { publisher: Publisher::new(conn, config.clone(), "pubsub-only-stream"), config, hub })
    }
}

/// Live chunks a pub/sub-only consumer buffers.
const STREAM_MESSAGES_MAX: usize = 1024;

#[async_trait::async_trait]
impl StreamStrategy for PubSubOnlyStream {
    fn name(&self) -> &'static str {
        "pubsub-only"
    }

    async fn publish(&self, task: &str, chunk: &Chunk) -> PublishOutcome {
        let json = serde_json::to_string(chunk).expect("chunk serialises");
        self.publisher.commit(None, Some((&self.config.keys.stream_channel(task), &json))).await
    }

    async fn follow(
        &self,
        task: &str,
        _from: u64,
        timeout: Duration,
        on_chunk: &mut (dyn for<'c> FnMut(&'c Chunk, Via) + Send),
    ) -> Result<FollowEnd> {
        let deadline = Instant::now() + timeout;
        let mut sub = self.hub.subscribe(&self.config.keys.stream_channel(task), STREAM_MESSAGES_MAX);
        sub.wait_subscribed(timeout).await;
        let mut messages = sub.messages.take().expect("asked for messages");
        let mut delivered = 0;
        loop {
            tokio::select! {
                _ = sleep_until(deadline) => return Ok(FollowEnd::TimedOut { delivered, list_reads: 0 }),
                m = messages.recv() => match m {
                    Ok(raw) => {
                        let chunk: Chunk = serde_json::from_str(&raw).map_err(|e| Error::Payload(e.to_string()))?;
                        on_chunk(&chunk, Via::Notified);
                        delivered += 1;
                        if chunk.is_final() {
                            return Ok(FollowEnd::Finished { delivered, list_reads: 0 });
                        }
                    }
                    Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => {
                        sleep_until(deadline).await;
                        return Ok(FollowEnd::TimedOut { delivered, list_reads: 0 });
                    }
                },
            }
        }
    }

    fn stats(&self) -> ImplStats {
        ImplStats { channels: self.hub.channel_count(), reconnects: self.hub.reconnects(), ..ImplStats::default() }
    }

    async fn shutdown(&self) {
        self.hub.shutdown().await;
    }
}

/// Streaming by polling the chunk list at a fixed interval, no Pub/Sub.
pub struct PollingOnlyStream {
    config: Config,
    conn: Conn,
    publisher: Publisher,
}

impl PollingOnlyStream {
    pub async fn connect(command_url: &str, config: Config) -> Result<PollingOnlyStream> {
        let conn = command_connection(command_url, &config).await?;
        Ok(PollingOnlyStream {
            publisher: Publisher::new(conn.clone(), config.clone(), "polling-only-stream"),
            conn,
            config,
        })
    }
}

#[async_trait::async_trait]
impl StreamStrategy for PollingOnlyStream {
    fn name(&self) -> &'static str {
        "polling-only"
    }

    async fn publish(&self, task: &str, chunk: &Chunk) -> PublishOutcome {
        let json = serde_json::to_string(chunk).expect("chunk serialises");
        let key = self.config.keys.stream_chunks(task);
        let mut store = redis::pipe();
        store.rpush(&key, &json).ignore().expire(&key, self.config.stream_ttl_s as i64).ignore();
        self.publisher.commit(Some(store), None).await
    }

    async fn follow(
        &self,
        task: &str,
        from: u64,
        timeout: Duration,
        on_chunk: &mut (dyn for<'c> FnMut(&'c Chunk, Via) + Send),
    ) -> Result<FollowEnd> {
        let deadline = Instant::now() + timeout;
        let key = self.config.keys.stream_chunks(task);
        let interval = Duration::from_millis(self.config.poll_interval_ms);
        let (mut pos, mut delivered, mut list_reads) = (from, 0, 0);
        // Chunks are handed over by index, once: a retried append can store one twice.
        let mut next_index = from;
        let mut via = Via::Immediate;
        loop {
            let read: redis::RedisResult<Vec<String>> =
                self.conn.read(redis::cmd("LRANGE").arg(&key).arg(pos as i64).arg(-1)).await;
            match read {
                Ok(raw) => {
                    list_reads += 1;
                    for r in raw {
                        pos += 1;
                        let chunk: Chunk = serde_json::from_str(&r).map_err(|e| Error::Payload(e.to_string()))?;
                        if chunk.chunk_index != next_index {
                            continue;
                        }
                        next_index += 1;
                        on_chunk(&chunk, via);
                        delivered += 1;
                        if chunk.is_final() {
                            return Ok(FollowEnd::Finished { delivered, list_reads });
                        }
                    }
                }
                Err(e) if super::is_transient(&e) => {}
                Err(e) => return Err(e.into()),
            }
            if Instant::now() >= deadline {
                return Ok(FollowEnd::TimedOut { delivered, list_reads });
            }
            sleep_until(deadline.min(Instant::now() + interval)).await;
            via = Via::Polled;
        }
    }

    fn stats(&self) -> ImplStats {
        ImplStats::default()
    }

    async fn shutdown(&self) {}
}
