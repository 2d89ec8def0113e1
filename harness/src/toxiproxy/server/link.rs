//! One proxied TCP connection: two pumps (upstream, downstream) applying the live toxic list.
//!
//! Each pump reads chunks, shapes them through the toxics of its stream into segments with
//! absolute due times computed from the chunk's arrival, and writes segments as they fall due
//! while it keeps reading. So a latency toxic delays each chunk by the latency from when it
//! arrived, as Toxiproxy does, instead of adding up the delays of chunks queued behind each
//! other. Toxics are watched, so adding, updating or removing one changes connections that
//! are already open (Toxiproxy re-links its chains the same way). The queue of due segments is
//! bounded: past it the pump stops reading and TCP backpressure reaches the sender. With no
//! toxic on a stream the pump is a plain copy loop (no queue, no timers), which is what keeps
//! the proxy's own overhead small.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;

use crate::toxiproxy::model::{Stream, Toxic, ToxicKind};

/// Read buffer per pump, in bytes.
const READ_CHUNK_BYTES: usize = 32 * 1024;
/// Bytes shaped but not yet written, per pump. Past this the pump stops reading and TCP
/// backpressure reaches the sender: a bandwidth toxic must make the *server* see a slow
/// reader (e.g. so Redis's client-output-buffer-limit can fire), not an endless proxy buffer.
const QUEUED_BYTES_MAX: usize = 256 * 1024;
/// Largest piece a bandwidth toxic writes at once: 100 ms worth of data at its rate, as
/// Toxiproxy paces it.
const BANDWIDTH_SLICE_MS: u64 = 100;

/// A toxic as installed on a proxy, with an id that changes when it is re-created so per
/// connection state (toxicity roll, arm time, byte count) starts fresh.
#[derive(Clone, Debug)]
pub(crate) struct ActiveToxic {
    pub uid: u64,
    pub toxic: Toxic,
}

pub(crate) type ToxicList = Arc<Vec<ActiveToxic>>;

/// How a connection (or one of its pumps) ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// The source closed its side.
    Eof,
    /// The proxy closed it (a toxic, a disable, an I/O error).
    Closed,
    /// A reset_peer toxic fired: close with SO_LINGER 0 so peers see RST.
    Reset,
}

pub(crate) struct LinkCtx {
    pub upstream: String,
    pub toxics: watch::Receiver<ToxicList>,
    pub cancel: CancellationToken,
    pub rng: StdRng,
    pub allow_remote_upstream: bool,
}

/// Serves one accepted client connection until either side closes, a toxic ends it, or the
/// proxy is disabled/deleted (`cancel`).
pub(crate) async fn serve(mut client: TcpStream, mut ctx: LinkCtx) {
    let mut upstream = match connect_upstream(&ctx).await {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(upstream = %ctx.upstream, error = %e, "upstream connect failed; closing client");
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let end = {
        let (cr, cw) = client.split();
        let (ur, uw) = upstream.split();
        let up_rng = StdRng::from_rng(&mut ctx.rng);
        let down_rng = StdRng::from_rng(&mut ctx.rng);
        let up = pump(cr, uw, Stream::Upstream, ctx.toxics.clone(), up_rng);
        let down = pump(ur, cw, Stream::Downstream, ctx.toxics.clone(), down_rng);
        tokio::select! {
            e = up => e,
            e = down => e,
            _ = ctx.cancel.cancelled() => End::Closed,
        }
    };
    if end == End::Reset {
        // With linger 0, close() sends RST instead of FIN: the peer sees ECONNRESET.
        for s in [&client, &upstream] {
            let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
        }
    }
}

async fn connect_upstream(ctx: &LinkCtx) -> std::io::Result<TcpStream> {
    let addrs: Vec<_> = tokio::net::lookup_host(&ctx.upstream).await?.collect();
    // Checked again per connection because a name can resolve elsewhere later.
    if !ctx.allow_remote_upstream && addrs.iter().any(|a| !a.ip().is_loopback()) {
        return Err(std::io::Error::other("upstream resolves to a non-loopback address"));
    }
    TcpStream::connect(&addrs[..]).await
}

struct Chunk {
    data: Bytes,
    at: Instant,
}

async fn pump<R, W>(mut src: R, mut dst: W, stream: Stream, mut toxics: watch::Receiver<ToxicList>, rng: StdRng) -> End
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut shaper = Shaper { stream, states: HashMap::new(), bandwidth_next: Instant::now(), rng };
    let mut active = shaper.refresh(&toxics.borrow_and_update());
    let mut blackhole = is_blackhole(&active);
    let mut deadline = shaper.next_deadline(&active);
    // Segments shaped but not yet due; reading goes on meanwhile, so delays are pipelined.
    let mut queue: VecDeque<Segment> = VecDeque::new();
    let mut src_done = false;
    let mut close_when_drained = false;
    let mut buf = BytesMut::with_capacity(READ_CHUNK_BYTES);
    loop {
        if queue.is_empty() && (src_done || close_when_drained) {
            if close_when_drained {
                return End::Closed;
            }
            if let Some(ms) = slow_close_ms(&active) {
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            return End::Eof;
        }
        let next_write = queue.front().map(|s| s.not_before);
        let queued_bytes: usize = queue.iter().map(|s| s.data.len()).sum();
        let can_read = !src_done && !close_when_drained && queued_bytes < QUEUED_BYTES_MAX;
        tokio::select! {
            biased;
            _ = sleep_until(deadline.map_or_else(Instant::now, |d| d.0)), if deadline.is_some() => {
                return deadline.map_or(End::Closed, |d| d.1);
            }
            changed = toxics.changed() => {
                if changed.is_err() {
                    return End::Closed;
                }
                active = shaper.refresh(&toxics.borrow_and_update());
                let now_blackhole = is_blackhole(&active);
                if blackhole && !now_blackhole {
                    // Data was dropped while the timeout toxic held the connection: the byte
                    // stream is broken, so the connection closes when the toxic goes.
                    return End::Closed;
                }
                blackhole = now_blackhole;
                deadline = shaper.next_deadline(&active);
            }
            _ = sleep_until(next_write.unwrap_or_else(Instant::now)), if next_write.is_some() => {
                if write_due(&mut queue, &mut dst).await.is_err() {
                    return End::Closed;
                }
            }
            read = src.read_buf(&mut buf), if can_read => {
                match read {
                    Ok(0) => src_done = true,
                    Err(_) => return End::Closed,
                    Ok(_) => {
                        let data = buf.split().freeze();
                        buf.reserve(READ_CHUNK_BYTES);
                        if blackhole {
                            continue;
                        }
                        if active.is_empty() && queue.is_empty() {
                            // No toxic on this stream: plain copy, no queueing or timers.
                            if dst.write_all(&data).await.is_err() {
                                return End::Closed;
                            }
                            continue;
                        }
                        let (segs, close_after) = shaper.shape(Chunk { data, at: Instant::now() }, &active);
                        queue.extend(segs);
                        close_when_drained |= close_after;
                        if write_due(&mut queue, &mut dst).await.is_err() {
                            return End::Closed;
                        }
                    }
                }
            }
        }
    }
}

/// Writes every queued segment that is due now, in order.
async fn write_due<W: AsyncWrite + Unpin>(queue: &mut VecDeque<Segment>, dst: &mut W) -> std::io::Result<()> {
    while queue.front().is_some_and(|s| s.not_before <= Instant::now()) {
        let seg = queue.pop_front().expect("front checked");
        dst.write_all(&seg.data).await?;
    }
    Ok(())
}

fn is_blackhole(active: &[ActiveToxic]) -> bool {
    active.iter().any(|t| matches!(t.toxic.kind, ToxicKind::Timeout { .. }))
}

fn slow_close_ms(active: &[ActiveToxic]) -> Option<u64> {
    active
        .iter()
        .filter_map(|t| match t.toxic.kind {
            ToxicKind::SlowClose { delay_ms } => Some(delay_ms),
            _ => None,
        })
        .max()
}

/// Per connection-direction state of one toxic.
struct ToxicState {
    /// Toxicity roll: does this toxic apply to this connection at all?
    applies: bool,
    armed_at: Instant,
    /// limit_data: bytes let through since the toxic was armed.
    passed_bytes: u64,
}

struct Shaper {
    stream: Stream,
    states: HashMap<u64, ToxicState>,
    /// bandwidth: when the link is free to send the next byte.
    bandwidth_next: Instant,
    rng: StdRng,
}

struct Segment {
    data: Bytes,
    not_before: Instant,
}

impl Shaper {
    /// Updates per-toxic state from the live list and returns the toxics that apply here, in
    /// installation order.
    fn refresh(&mut self, list: &[ActiveToxic]) -> Vec<ActiveToxic> {
        let now = Instant::now();
        self.states.retain(|uid, _| list.iter().any(|t| t.uid == *uid));
        let mut active = Vec::new();
        for t in list.iter().filter(|t| t.toxic.stream == self.stream) {
            let rng = &mut self.rng;
            let st = self.states.entry(t.uid).or_insert_with(|| ToxicState {
                applies: rng.random::<f32>() < t.toxic.toxicity,
                armed_at: now,
                passed_bytes: 0,
            });
            if st.applies {
                active.push(t.clone());
            }
        }
        active
    }

    /// Splits and schedules one chunk through the data-shaping toxics. Returns the segments
    /// and whether the connection must close after writing them (limit_data reached).
    fn shape(&mut self, chunk: Chunk, active: &[ActiveToxic]) -> (Vec<Segment>, bool) {
        let mut segs = vec![Segment { data: chunk.data, not_before: chunk.at }];
        let mut close_after = false;
        for t in active {
            match t.toxic.kind {
                ToxicKind::Latency { latency_ms, jitter_ms } => {
                    let jitter =
                        if jitter_ms > 0 { self.rng.random_range(-(jitter_ms as i64)..=jitter_ms as i64) } else { 0 };
                    let delay_ms = (latency_ms as i64 + jitter).max(0) as u64;
                    let due = chunk.at + Duration::from_millis(delay_ms);
                    for s in &mut segs {
                        s.not_before = s.not_before.max(due);
                    }
                }
                ToxicKind::Bandwidth { rate_kb_s } if rate_kb_s > 0 => {
                    // rate_kb_s KB/s is rate_kb_s bytes per millisecond.
                    let slice = (rate_kb_s * BANDWIDTH_SLICE_MS) as usize;
                    let mut out = Vec::new();
                    for s in segs {
                        for piece in split_every(s.data, slice) {
                            let start = self.bandwidth_next.max(s.not_before);
                            let cost = Duration::from_nanos(piece.len() as u64 * 1_000_000 / rate_kb_s);
                            self.bandwidth_next = start + cost;
                            out.push(Segment { data: piece, not_before: self.bandwidth_next });
                        }
                    }
                    segs = out;
                }
                ToxicKind::Slicer { average_size, size_variation, delay_us } if average_size > 0 => {
                    let mut out = Vec::new();
                    for s in segs {
                        let mut rest = s.data;
                        let mut at = s.not_before;
                        while !rest.is_empty() {
                            let var = size_variation.min(average_size - 1) as i64;
                            let size = (average_size as i64 + self.rng.random_range(-var..=var)).max(1) as usize;
                            let piece = rest.split_to(size.min(rest.len()));
                            out.push(Segment { data: piece, not_before: at });
                            at += Duration::from_micros(delay_us);
                        }
                    }
                    segs = out;
                }
                ToxicKind::LimitData { bytes } => {
                    let st = self.states.get_mut(&t.uid).expect("refresh made state for every active toxic");
                    let mut kept = Vec::new();
                    for mut s in segs {
                        let room = bytes.saturating_sub(st.passed_bytes) as usize;
                        if room == 0 {
                            break;
                        }
                        if s.data.len() > room {
                            s.data.truncate(room);
                        }
                        st.passed_bytes += s.data.len() as u64;
                        kept.push(s);
                    }
                    segs = kept;
                    if st.passed_bytes >= bytes {
                        close_after = true;
                    }
                }
                _ => {}
            }
        }
        (segs, close_after)
    }

    /// The earliest moment a timer toxic (timeout > 0, reset_peer) ends the connection.
    fn next_deadline(&self, active: &[ActiveToxic]) -> Option<(Instant, End)> {
        active
            .iter()
            .filter_map(|t| {
                let armed = self.states.get(&t.uid)?.armed_at;
                match t.toxic.kind {
                    ToxicKind::ResetPeer { timeout_ms } => {
                        Some((armed + Duration::from_millis(timeout_ms), End::Reset))
                    }
                    ToxicKind::Timeout { timeout_ms } if timeout_ms > 0 => {
                        Some((armed + Duration::from_millis(timeout_ms), End::Closed))
                    }
                    _ => None,
                }
            })
            .min_by_key(|(at, _)| *at)
    }
}

fn split_every(mut data: Bytes, size: usize) -> Vec<Bytes> {
    let mut out = Vec::new();
    while data.len() > size {
        out.push(data.split_to(size));
    }
    if !data.is_empty() {
        out.push(data);
    }
    out
}
