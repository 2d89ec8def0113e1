//! One proxied TCP connection: two pumps (upstream, downstream) applying the live toxic list.
//!
//! Each pump is a reader that timestamps chunks and a writer that shapes and writes them. The
//! writer computes absolute deadlines from a chunk's arrival time, so a latency toxic delays
//! each chunk by the latency from when it arrived, as Toxiproxy does, instead of adding up
//! delays of chunks queued behind each other. Toxics are watched, so adding, updating or
//! removing one changes connections that are already open (Toxiproxy re-links its chains the
//! same way). A bounded queue between reader and writer gives real TCP backpressure when a
//! bandwidth toxic or a slow peer holds the writer.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;

use crate::toxiproxy::model::{Stream, Toxic, ToxicKind};

/// Read buffer per pump, in bytes.
const READ_CHUNK_BYTES: usize = 32 * 1024;
/// Chunks read but not yet written, per pump. Past this the reader stops reading and TCP
/// backpressure reaches the sender.
const CHUNKS_IN_FLIGHT_MAX: usize = 64;
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

async fn pump<R, W>(mut src: R, mut dst: W, stream: Stream, toxics: watch::Receiver<ToxicList>, rng: StdRng) -> End
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (tx, rx) = mpsc::channel::<Chunk>(CHUNKS_IN_FLIGHT_MAX);
    let reader = async move {
        let mut buf = BytesMut::with_capacity(READ_CHUNK_BYTES);
        loop {
            buf.reserve(READ_CHUNK_BYTES);
            match src.read_buf(&mut buf).await {
                Ok(0) => return End::Eof,
                Ok(_) => {
                    let chunk = Chunk { data: buf.split().freeze(), at: Instant::now() };
                    if tx.send(chunk).await.is_err() {
                        return End::Closed;
                    }
                }
                Err(_) => return End::Closed,
            }
        }
    };
    let writer = write_loop(rx, &mut dst, stream, toxics, rng);
    tokio::pin!(reader, writer);
    let mut reader_done = false;
    loop {
        tokio::select! {
            e = &mut reader, if !reader_done => {
                // On EOF the writer still drains what was read (and honours slow_close); it
                // finishes when the queue closes. Anything else ends the connection now.
                if e != End::Eof {
                    return e;
                }
                reader_done = true;
            }
            e = &mut writer => return e,
        }
    }
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
                    let jitter = if jitter_ms > 0 { self.rng.random_range(-(jitter_ms as i64)..=jitter_ms as i64) } else { 0 };
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
                    ToxicKind::ResetPeer { timeout_ms } => Some((armed + Duration::from_millis(timeout_ms), End::Reset)),
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

async fn write_loop<W: AsyncWrite + Unpin>(
    mut rx: mpsc::Receiver<Chunk>,
    dst: &mut W,
    stream: Stream,
    mut toxics: watch::Receiver<ToxicList>,
    rng: StdRng,
) -> End {
    let mut shaper = Shaper { stream, states: HashMap::new(), bandwidth_next: Instant::now(), rng };
    let mut blackholed = false;
    loop {
        let list = toxics.borrow_and_update().clone();
        let active = shaper.refresh(&list);
        let blackhole = active.iter().any(|t| matches!(t.toxic.kind, ToxicKind::Timeout { .. }));
        if blackholed && !blackhole {
            // Data was dropped while the timeout toxic held the connection: the byte stream
            // is broken, so the connection closes when the toxic goes.
            return End::Closed;
        }
        blackholed = blackhole;
        let deadline = shaper.next_deadline(&active);
        let wake_at = deadline.map(|(at, _)| at).unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            biased;
            _ = sleep_until(wake_at), if deadline.is_some() => {
                return deadline.map(|(_, e)| e).unwrap_or(End::Closed);
            }
            changed = toxics.changed() => {
                if changed.is_err() {
                    return End::Closed;
                }
            }
            chunk = rx.recv() => match chunk {
                None => {
                    let delay_ms = active.iter().filter_map(|t| match t.toxic.kind {
                        ToxicKind::SlowClose { delay_ms } => Some(delay_ms),
                        _ => None,
                    }).max();
                    if let Some(ms) = delay_ms {
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                    }
                    return End::Eof;
                }
                Some(_) if blackhole => {}
                Some(chunk) => {
                    let (segs, close_after) = shaper.shape(chunk, &active);
                    for seg in segs {
                        sleep_until(seg.not_before).await;
                        if dst.write_all(&seg.data).await.is_err() {
                            return End::Closed;
                        }
                    }
                    if close_after {
                        return End::Closed;
                    }
                }
            }
        }
    }
}
