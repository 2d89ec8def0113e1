//! Chunk streaming with late joiners (seed `003_*`, made loss-free).
//!
//! The producer appends each chunk, with its sequence index, to the list
//! `stream:{task}:chunks` (with a TTL), then publishes it on `stream:{task}`. The list is the
//! source of truth; the message only saves a round trip. A consumer starting at index N
//! subscribes *first*, then reads the list from N, then follows live messages. It orders and
//! de-duplicates by index and re-reads the list whenever it sees a gap, lags, reconnects or a
//! poll interval passes without news, so late joiners and reconnecting consumers see every
//! chunk exactly once, in order, through the final chunk. The seed instead subscribed and
//! followed messages only, losing whatever was published before or between subscriptions.

use std::time::Duration;

use super::endpoint::Conn;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast::error::RecvError;
use tokio::time::{sleep_until, Instant};

use super::hub::Hub;
use super::publisher::{PublishOutcome, Publisher};
use super::{command_connection, Config, Error, Mutation, Result, Via};

/// Live messages a consumer buffers before it lags and falls back to re-reading the list.
const CONSUMER_MESSAGES_MAX: usize = 1024;

/// One chunk, as stored in the list and published (seed `003_*` fields).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chunk {
    pub chunk_index: u64,
    /// `content`, or `final` for the last chunk.
    pub chunk_type: String,
    pub content: String,
}

impl Chunk {
    pub fn content(index: u64, content: impl Into<String>) -> Chunk {
        Chunk { chunk_index: index, chunk_type: "content".into(), content: content.into() }
    }

    pub fn last(index: u64, content: impl Into<String>) -> Chunk {
        Chunk { chunk_index: index, chunk_type: "final".into(), content: content.into() }
    }

    pub fn is_final(&self) -> bool {
        self.chunk_type == "final"
    }
}

/// Appends and announces chunks.
///
/// The caller must not move on to chunk `i + 1` while chunk `i` is not acknowledged
/// ([`PublishOutcome::Failed`]): consumers deliver in order and cannot pass a hole, so every
/// later chunk would be stuck behind it. Retry the same chunk instead; a retried append that
/// had landed after all leaves a duplicate, which consumers drop by index. (Found by the
/// property tests: an append failed under `reset_peer`, the next ones succeeded, and every
/// consumer stalled until its deadline.)
pub struct StreamProducer {
    config: Config,
    conn: Conn,
    publisher: Publisher,
}

impl StreamProducer {
    pub async fn connect(url: &str, config: Config) -> Result<StreamProducer> {
        let conn = command_connection(url, &config).await?;
        let publisher = Publisher::new(conn.clone(), config.clone(), "stream-producer");
        Ok(StreamProducer { config, conn, publisher })
    }

    /// [`StreamProducer::publish`] for a producer that keeps no state between calls (a CLI, a
    /// restarted worker): first reads the last stored chunk, and refuses an index that would
    /// leave a hole (more than one past it) or come after the final chunk. A retry of the last
    /// index (or any earlier one) is allowed: consumers drop the duplicate.
    pub async fn publish_in_order(&self, task: &str, chunk: &Chunk) -> Result<PublishOutcome> {
        let key = self.config.keys.stream_chunks(task);
        let mut c = self.conn.clone();
        let last: Option<String> = redis::cmd("LINDEX").arg(&key).arg(-1).query_async(&mut c).await?;
        let last: Option<Chunk> = match last {
            Some(raw) => {
                Some(serde_json::from_str(&raw).map_err(|e| Error::Payload(format!("bad chunk in {key}: {e}")))?)
            }
            None => None,
        };
        let next = last.as_ref().map_or(0, |l| l.chunk_index + 1);
        if last.as_ref().is_some_and(Chunk::is_final) && chunk.chunk_index >= next {
            return Err(Error::Stream(format!("{task} already ended with its final chunk {}", next - 1)));
        }
        if chunk.chunk_index > next {
            return Err(Error::Stream(format!(
                "chunk {} of {task} would leave a hole: the next index is {next} (consumers deliver in order and cannot pass a missing chunk)",
                chunk.chunk_index
            )));
        }
        Ok(self.publish(task, chunk).await)
    }

    /// RPUSH + EXPIRE (atomic, the commit point), then PUBLISH. A retried RPUSH whose first
    /// reply was lost can store a chunk twice; consumers de-duplicate by index.
    pub async fn publish(&self, task: &str, chunk: &Chunk) -> PublishOutcome {
        let json = serde_json::to_string(chunk).expect("chunk serialises");
        let key = self.config.keys.stream_chunks(task);
        let mut store = redis::pipe();
        store.rpush(&key, &json).ignore().expire(&key, self.config.stream_ttl_s as i64).ignore();
        let channel = self.config.keys.stream_channel(task);
        self.publisher.commit(Some(store), Some((&channel, &json))).await
    }
}

/// How a follow ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FollowEnd {
    /// The final chunk was delivered.
    Finished { delivered: u64, list_reads: u64 },
    /// The deadline passed first.
    TimedOut { delivered: u64, list_reads: u64 },
}

/// Follows streams: one command connection and a shared subscriber [`Hub`].
pub struct StreamConsumer {
    config: Config,
    conn: Conn,
    hub: Hub,
}

impl StreamConsumer {
    pub async fn connect(command_url: &str, subscriber_url: &str, config: Config) -> Result<StreamConsumer> {
        let conn = command_connection(command_url, &config).await?;
        let hub = Hub::start(subscriber_url, config.clone(), "stream-consumer");
        Ok(StreamConsumer { config, conn, hub })
    }

    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// Delivers every chunk of `task` from index `from` to `on_chunk`, in order, exactly once,
    /// until the final chunk or `timeout`.
    pub async fn follow(
        &self,
        task: &str,
        from: u64,
        timeout: Duration,
        mut on_chunk: impl FnMut(&Chunk, Via),
    ) -> Result<FollowEnd> {
        let deadline = Instant::now() + timeout;
        let key = self.config.keys.stream_chunks(task);
        let mut sub = self.hub.subscribe(&self.config.keys.stream_channel(task), CONSUMER_MESSAGES_MAX);
        let cap = Duration::from_millis(self.config.subscribe_wait_ms_max).min(timeout);
        // Subscribed first, read second: a chunk appended in between is in the list.
        if !self.config.mutated(Mutation::StreamReadBeforeSubscribe) {
            sub.wait_subscribed(cap).await;
        }
        let mut messages = sub.messages.take().expect("asked for messages");
        let mut cursor = Cursor {
            next_index: from,
            list_pos: from,
            delivered: 0,
            finished: false,
            dup_filter_off_by_one: self.config.mutated(Mutation::StreamDuplicateFilterOffByOne),
        };
        let catchup_skew = u64::from(self.config.mutated(Mutation::StreamCatchupOffByOne));
        let ignore_resync = self.config.mutated(Mutation::StreamIgnoresResync);
        let mut list_reads = 0u64;
        let poll = Duration::from_millis(self.config.poll_interval_ms);
        // What prompted the next list read: the first read, a poll, a resync, or a message
        // that showed a gap (a notification).
        let mut reread = Some(Via::Immediate);
        let mut messages_open = true;
        let mut seen = sub.state.snapshot();
        let mut seen_resyncs = seen.resyncs;
        loop {
            if let Some(via) = reread.take() {
                match self.read_list(&key, cursor.list_pos + catchup_skew).await {
                    Ok(chunks) => {
                        list_reads += 1;
                        for c in chunks {
                            cursor.offer(&c, via, &mut on_chunk);
                        }
                    }
                    Err(e) if e.is_transient() => {}
                    Err(e) => return Err(e),
                }
            }
            if cursor.finished {
                return Ok(FollowEnd::Finished { delivered: cursor.delivered, list_reads });
            }
            if Instant::now() >= deadline {
                return Ok(FollowEnd::TimedOut { delivered: cursor.delivered, list_reads });
            }
            tokio::select! {
                _ = sleep_until(deadline.min(Instant::now() + poll)) => {
                    // The last read at the deadline is not a poll: nothing woke the consumer.
                    reread = Some(if Instant::now() >= deadline { Via::Deadline } else { Via::Polled });
                }
                // A resubscribe after a reconnect: what was published meanwhile is only in the list.
                now = sub.state.changed(seen) => {
                    seen = now;
                    if now.resyncs != seen_resyncs && !ignore_resync {
                        seen_resyncs = now.resyncs;
                        reread = Some(Via::Resync);
                    }
                }
                m = messages.recv(), if messages_open => match m {
                    Ok(payload) => match serde_json::from_str::<Chunk>(&payload) {
                        Ok(c) if c.chunk_index == cursor.next_index => cursor.offer(&c, Via::Notified, &mut on_chunk),
                        // Already delivered (the duplicate filter decides).
                        Ok(c) if c.chunk_index < cursor.next_index => cursor.offer(&c, Via::Notified, &mut on_chunk),
                        // A gap: something was missed; the list has it.
                        Ok(_) => reread = Some(Via::Notified),
                        Err(e) => return Err(Error::Payload(format!("bad chunk on {task}: {e}"))),
                    },
                    Err(RecvError::Lagged(_)) => reread = Some(Via::Notified),
                    Err(RecvError::Closed) => {
                        messages_open = false;
                        reread = Some(Via::Polled);
                    }
                },
            }
        }
    }

    async fn read_list(&self, key: &str, from: u64) -> Result<Vec<Chunk>> {
        let raw: Vec<String> = self.conn.read(redis::cmd("LRANGE").arg(key).arg(from as i64).arg(-1)).await?;
        raw.iter()
            .map(|r| serde_json::from_str(r).map_err(|e| Error::Payload(format!("bad chunk in {key}: {e}"))))
            .collect()
    }

    pub async fn shutdown(&self) {
        self.hub.shutdown().await;
    }
}

/// Ordering and de-duplication state of one follow.
struct Cursor {
    /// The next chunk index to deliver.
    next_index: u64,
    /// Where the next list read starts. A chunk's list position is at least its index (a
    /// retried RPUSH can only add duplicates before it), so `next_index` is a safe start.
    list_pos: u64,
    delivered: u64,
    finished: bool,
    /// The duplicate-filter mutation also accepts the chunk just delivered.
    dup_filter_off_by_one: bool,
}

impl Cursor {
    fn offer(&mut self, c: &Chunk, via: Via, on_chunk: &mut impl FnMut(&Chunk, Via)) {
        let again = self.dup_filter_off_by_one && c.chunk_index + 1 == self.next_index;
        if self.finished || (c.chunk_index != self.next_index && !again) {
            return;
        }
        on_chunk(c, via);
        self.delivered += 1;
        self.next_index = c.chunk_index + 1;
        self.list_pos = self.list_pos.max(self.next_index);
        self.finished = c.is_final();
    }
}

/// The hybrid streaming strategy: [`StreamProducer`] and [`StreamConsumer`] together.
pub struct HybridStream {
    producer: StreamProducer,
    consumer: StreamConsumer,
}

impl HybridStream {
    pub async fn connect(command_url: &str, subscriber_url: &str, config: Config) -> Result<HybridStream> {
        let producer = StreamProducer::connect(command_url, config.clone()).await?;
        let consumer = StreamConsumer::connect(command_url, subscriber_url, config).await?;
        Ok(HybridStream { producer, consumer })
    }
}

#[async_trait::async_trait]
impl super::StreamStrategy for HybridStream {
    fn name(&self) -> &'static str {
        "hybrid"
    }

    async fn publish(&self, task: &str, chunk: &Chunk) -> PublishOutcome {
        self.producer.publish(task, chunk).await
    }

    async fn follow(
        &self,
        task: &str,
        from: u64,
        timeout: Duration,
        on_chunk: &mut (dyn for<'c> FnMut(&'c Chunk, Via) + Send),
    ) -> Result<FollowEnd> {
        self.consumer.follow(task, from, timeout, |c: &Chunk, via| on_chunk(c, via)).await
    }

    fn stats(&self) -> super::ImplStats {
        let hub = self.consumer.hub();
        super::ImplStats { channels: hub.channel_count(), reconnects: hub.reconnects(), ..Default::default() }
    }

    async fn shutdown(&self) {
        self.consumer.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_delivers_in_order_once_and_stops_at_final() {
        let mut got = Vec::new();
        let mut cur =
            Cursor { next_index: 0, list_pos: 0, delivered: 0, finished: false, dup_filter_off_by_one: false };
        let chunks = [
            Chunk::content(0, "a"),
            Chunk::content(0, "a"),
            Chunk::content(2, "c"),
            Chunk::content(1, "b"),
            Chunk::last(2, "c"),
            Chunk::content(3, "x"),
        ];
        for c in &chunks {
            cur.offer(c, Via::Notified, &mut |c: &Chunk, _| got.push(c.chunk_index));
        }
        assert_eq!(got, vec![0, 1, 2]);
        assert!(cur.finished);
        assert_eq!(cur.list_pos, 3);
    }
}
