//! One proxied TCP connection: two pumps (upstream, downstream) applying the live toxic list.
//!
//! Each pump waits until its source is readable and only then reads, into a per-thread
//! scratch buffer, copying out exactly what arrived: an idle connection holds no read buffer.
//! (Each used to hold two 32 KiB buffers for its whole life; glibc keeps the pages such
//! buffers touched, so a standalone proxy's RSS climbed 13 -> 125 MB over 8 rounds of 2,000
//! connections and never came back.) It then shapes them through the toxics of its stream into segments with
//! absolute due times computed from the chunk's arrival, and writes segments as they fall due
//! while it keeps reading. So a latency toxic delays each chunk by the latency from when it
//! arrived, as Toxiproxy does, instead of adding up the delays of chunks queued behind each
//! other. Toxics are watched, so adding, updating or removing one changes connections that
//! are already open (Toxiproxy re-links its chains the same way). The queue of due segments is
//! bounded: past it the pump stops reading and TCP backpressure reaches the sender. With no
//! toxic on a stream the pump is a plain copy loop (no queue, no timers), which is what keeps
//! the proxy's own overhead small.
//!
//! Semantics follow Toxiproxy 2.12 toxic by toxic, with one deliberate difference in how a
//! direction ends. Toxiproxy closes the whole destination socket when a direction ends, so a
//! client that half-closes can lose the reply already on its way back. Here the ending
//! direction sends FIN (after its slow_close) and the other one keeps flowing until it ends
//! too: the reply arrives, and the close the client then sees is still held by slow_close.
//! Due times are kept by a timerfd ([`PreciseTimer`]), not tokio's 1 ms wheel, so a latency
//! toxic adds what it is asked for.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;

use super::timer::PreciseTimer;
use crate::toxiproxy::model::{Stream, Toxic, ToxicKind};

/// Most bytes one read takes, in bytes: the size of the per-thread scratch buffer (one per
/// runtime worker thread, not per connection).
const READ_CHUNK_BYTES: usize = 32 * 1024;
/// Bytes shaped but not yet written, per pump, under a bandwidth toxic. Past this the pump
/// stops reading and TCP backpressure reaches the sender: a bandwidth toxic must make the
/// *server* see a slow reader (e.g. so Redis's client-output-buffer-limit can fire), not an
/// endless proxy buffer.
const QUEUED_BYTES_MAX: usize = 256 * 1024;
/// Bytes held in the delay line, per pump, when no bandwidth toxic paces it: a latency toxic
/// must hold all the data that arrives during its latency, or it refills once per latency
/// period and throttles a continuous stream (256 KiB under a 100 ms latency: 2.6 MB/s, and
/// 1.2 MB took 250-365 ms). 32 MiB is Toxiproxy's own bound: its latency toxic buffers 1024
/// chunks of up to 32 KiB.
const DELAY_LINE_BYTES_MAX: usize = 32 * 1024 * 1024;
/// Segments held in the delay line, per pump, whatever their size: bounds the bookkeeping of
/// a stream of tiny chunks (or slicer pieces) the same way.
const DELAY_LINE_SEGMENTS_MAX: usize = 64 * 1024;
/// Removed timeout toxics a proxy remembers, so that a link that did not look while one was
/// added and removed still closes (see [`ToxicSet::removed_timeouts`]). API calls are rare;
/// past this many removals between two looks, the oldest are forgotten.
pub(crate) const REMOVED_TIMEOUTS_KEPT: usize = 64;
/// The farthest a due time is ever set, in seconds from the time it is computed from (30
/// years, tokio's own "far future"): a sum of accepted delays that would overflow `Instant`
/// is held this long instead of panicking.
const FAR_FUTURE_S: u64 = 30 * 365 * 24 * 3_600;
/// Largest piece a bandwidth toxic writes at once: 100 ms worth of data at its rate, as
/// Toxiproxy paces it.
const BANDWIDTH_SLICE_MS: u64 = 100;
/// Least pause between two slicer pieces, in microseconds, even with `delay` 0. Without it
/// the pieces are written back to back and the kernel merges them in the receiver's socket
/// buffer (2 reads for 50 one-byte slices); Toxiproxy hands each piece to its writer
/// goroutine through a channel and a zero timer, a pause of this order.
const SLICE_GAP_MIN_US: u64 = 50;

/// A toxic as installed on a proxy, with an id that changes when it is re-created so per
/// connection state (toxicity roll, arm time, byte count) starts fresh.
#[derive(Clone, Debug)]
pub(crate) struct ActiveToxic {
    pub uid: u64,
    pub toxic: Toxic,
}

/// What a proxy publishes to its links: the live toxics, and the timeout toxics removed
/// lately. A link that was busy (or not scheduled) while a timeout toxic was added and removed
/// again only sees the list after both, without it; Toxiproxy closes such a link when the
/// toxic goes (its TestTimeoutToxicClosesConnectionOnRemove), so the link must learn it.
#[derive(Debug, Default)]
pub(crate) struct ToxicSet {
    pub toxics: Vec<ActiveToxic>,
    /// The last [`REMOVED_TIMEOUTS_KEPT`] removed timeout toxics, oldest first.
    pub removed_timeouts: VecDeque<RemovedTimeout>,
    /// How many timeout toxics were ever removed: the `seq` of the newest.
    pub removals: u64,
}

#[derive(Clone, Debug)]
pub(crate) struct RemovedTimeout {
    pub seq: u64,
    pub uid: u64,
    pub stream: Stream,
    pub toxicity: f32,
}

pub(crate) type ToxicList = Arc<ToxicSet>;

/// How one direction (pump) ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// The direction is finished and its destination got FIN: the source closed its side, or
    /// a limit_data toxic let its last byte through. The other direction keeps flowing, so a
    /// client that half-closes still gets the reply that is on its way back.
    Finished,
    /// The connection must close now, both directions (a timeout or reset_peer toxic fired,
    /// the proxy was disabled, an I/O error).
    Closed,
}

pub(crate) struct LinkCtx {
    pub upstream: String,
    pub toxics: watch::Receiver<ToxicList>,
    pub cancel: CancellationToken,
    pub rng: StdRng,
    pub allow_remote_upstream: bool,
    /// Where descriptor exhaustion of this proxy is counted and logged.
    pub fd_burst: Arc<super::FdBurst>,
}

/// Serves one accepted client connection until both directions have finished, a toxic ends
/// it, or the proxy is disabled/deleted (`cancel`).
pub(crate) async fn serve(mut client: TcpStream, mut ctx: LinkCtx) {
    let mut upstream = match connect_upstream(&ctx).await {
        Ok(s) => s,
        Err(e) if super::FdBurst::counts(&e) => {
            ctx.fd_burst.failed("upstream connect", &e);
            return;
        }
        Err(e) => {
            tracing::debug!(upstream = %ctx.upstream, error = %e, "upstream connect failed; closing client");
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    // Toxiproxy sets SO_LINGER 0 on both sockets when the connection starts under a
    // reset_peer toxic (either stream, whatever its toxicity), and only then: such a
    // connection ends with RST however it ends, while one that was open before the toxic was
    // added ends with FIN when the toxic fires.
    let abortive = ctx.toxics.borrow().toxics.iter().any(|t| matches!(t.toxic.kind, ToxicKind::ResetPeer { .. }));
    if abortive {
        for s in [&client, &upstream] {
            let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
        }
    }
    {
        let (cr, cw) = client.split();
        let (ur, uw) = upstream.split();
        let up_rng = StdRng::from_rng(&mut ctx.rng);
        let down_rng = StdRng::from_rng(&mut ctx.rng);
        let up = pump(cr, uw, Stream::Upstream, ctx.toxics.clone(), up_rng);
        let down = pump(ur, cw, Stream::Downstream, ctx.toxics.clone(), down_rng);
        tokio::pin!(up, down);
        let (mut up_done, mut down_done) = (false, false);
        while !(up_done && down_done) {
            let end = tokio::select! {
                e = &mut up, if !up_done => { up_done = true; e }
                e = &mut down, if !down_done => { down_done = true; e }
                _ = ctx.cancel.cancelled() => End::Closed,
            };
            if end == End::Closed {
                break;
            }
        }
    }
    // Dropping the streams closes both sockets: FIN, or RST where linger 0 was set.
}

async fn connect_upstream(ctx: &LinkCtx) -> std::io::Result<TcpStream> {
    let addrs: Vec<_> = tokio::net::lookup_host(&ctx.upstream).await?.collect();
    // Checked again per connection because a name can resolve elsewhere later.
    if !ctx.allow_remote_upstream && addrs.iter().any(|a| !super::is_loopback(a.ip())) {
        return Err(std::io::Error::other("upstream resolves to a non-loopback address"));
    }
    TcpStream::connect(&addrs[..]).await
}

struct Chunk {
    data: Bytes,
    at: Instant,
}

thread_local! {
    /// The read buffer of every pump that runs on this thread. Borrowed only between a
    /// readiness event and the synchronous `try_read` that follows, never across an await.
    static READ_SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; READ_CHUNK_BYTES]);
}

/// What one read gave.
enum Read {
    /// End of stream.
    Eof,
    /// Data to shape (or, on a plain copy, the part the destination did not take at once).
    Data(Bytes),
    /// A plain copy: all of it was written straight from the scratch buffer.
    Passed,
    /// Readiness was spurious.
    Nothing,
}

/// Reads what is there into the scratch buffer. With `pass_through` (no toxic, nothing
/// queued) it is written on at once from there and only what the destination does not take
/// is copied out; otherwise exactly what arrived is copied out.
fn read_now(src: &ReadHalf<'_>, dst: &WriteHalf<'_>, pass_through: bool) -> std::io::Result<Read> {
    READ_SCRATCH.with_borrow_mut(|buf| {
        let n = match src.try_read(buf) {
            Ok(0) => return Ok(Read::Eof),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(Read::Nothing),
            Err(e) => return Err(e),
        };
        let written = if pass_through {
            match dst.try_write(&buf[..n]) {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
                Err(e) => return Err(e),
            }
        } else {
            0
        };
        Ok(if written == n { Read::Passed } else { Read::Data(Bytes::copy_from_slice(&buf[written..n])) })
    })
}

/// Segments shaped but not yet written, with their total size kept as they come and go.
#[derive(Default)]
struct DelayLine {
    segs: VecDeque<Segment>,
    bytes: usize,
}

impl DelayLine {
    fn extend(&mut self, segs: Vec<Segment>) {
        self.bytes += segs.iter().map(|s| s.data.len()).sum::<usize>();
        self.segs.extend(segs);
    }
    fn is_empty(&self) -> bool {
        self.segs.is_empty()
    }
}

/// `at + d`, or [`FAR_FUTURE_S`] from `at` where the sum would overflow.
fn later(at: Instant, d: Duration) -> Instant {
    at.checked_add(d).unwrap_or_else(|| at + Duration::from_secs(FAR_FUTURE_S))
}

/// Copies `src` to `dst` through the live toxics of `stream` until the direction finishes
/// (then `dst` gets FIN) or the connection must close.
async fn pump(
    src: ReadHalf<'_>,
    mut dst: WriteHalf<'_>,
    stream: Stream,
    mut toxics: watch::Receiver<ToxicList>,
    rng: StdRng,
) -> End {
    let mut shaper = Shaper { stream, states: HashMap::new(), bandwidth_next: Instant::now(), rng };
    let (mut active, mut removals_seen) = {
        let set = toxics.borrow_and_update();
        (shaper.refresh(&set.toxics), set.removals)
    };
    let mut blackhole = is_blackhole(&active);
    // Segments shaped but not yet due; reading goes on meanwhile, so delays are pipelined.
    let mut queue = DelayLine::default();
    // When a reset_peer toxic fires. Once its first chunk arrived it fires even if the toxic
    // is removed meanwhile, as in Toxiproxy, where removal waits for the running toxic.
    let mut reset_at: Option<Instant> = None;
    let mut src_done = false;
    let mut limit_reached = false;
    let mut timer: Option<PreciseTimer> = None;
    loop {
        if queue.is_empty() && (src_done || limit_reached) {
            if let Some(ms) = slow_close_ms(&active) {
                timer.get_or_insert_with(PreciseTimer::new).sleep(Duration::from_millis(ms)).await;
            }
            let _ = dst.shutdown().await;
            return End::Finished;
        }
        let deadline = [reset_at, shaper.timeout_deadline(&active)].into_iter().flatten().min();
        let next_write = queue.segs.front().map(|s| s.not_before);
        let bytes_max = if has_bandwidth(&active) { QUEUED_BYTES_MAX } else { DELAY_LINE_BYTES_MAX };
        let can_read =
            !src_done && !limit_reached && queue.bytes < bytes_max && queue.segs.len() < DELAY_LINE_SEGMENTS_MAX;
        if next_write.is_some() && timer.is_none() {
            timer = Some(PreciseTimer::new());
        }
        tokio::select! {
            biased;
            _ = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => return End::Closed,
            changed = toxics.changed() => {
                if changed.is_err() {
                    return End::Closed;
                }
                let set = Arc::clone(&toxics.borrow_and_update());
                // A timeout toxic added and removed since the last look, never seen here:
                // it held this link (if its toxicity roll says it applied), so it closes it.
                let missed_timeout = set
                    .removed_timeouts
                    .iter()
                    .filter(|r| r.seq > removals_seen && r.stream == stream && !shaper.states.contains_key(&r.uid))
                    .fold(false, |hit, r| shaper.rng.random::<f32>() < r.toxicity || hit);
                removals_seen = set.removals;
                active = shaper.refresh(&set.toxics);
                let now_blackhole = is_blackhole(&active);
                if missed_timeout || (blackhole && !now_blackhole) {
                    // Data was dropped while the timeout toxic held the connection: the byte
                    // stream is broken, so the connection closes when the toxic goes.
                    return End::Closed;
                }
                blackhole = now_blackhole;
            }
            _ = wait_for(&mut timer, next_write), if next_write.is_some() => {
                if write_due(&mut queue, &mut dst).await.is_err() {
                    return End::Closed;
                }
            }
            ready = src.readable(), if can_read => {
                if ready.is_err() {
                    return End::Closed;
                }
                let pass_through = active.is_empty() && queue.is_empty();
                match read_now(&src, &dst, pass_through) {
                    Ok(Read::Eof) => src_done = true,
                    Err(_) => return End::Closed,
                    Ok(Read::Passed | Read::Nothing) => {}
                    Ok(Read::Data(data)) => {
                        if reset_at.is_none() {
                            if let Some(ms) = reset_peer_ms(&active) {
                                // Toxiproxy's reset_peer takes the first chunk it sees, drops it,
                                // waits its timeout and closes: idle connections never see it.
                                reset_at = Some(later(Instant::now(), Duration::from_millis(ms)));
                            }
                        }
                        if reset_at.is_some() {
                            continue;
                        }
                        if blackhole {
                            // A timeout toxic restarts its timer on every chunk it swallows.
                            shaper.rearm_timeouts(&active);
                            continue;
                        }
                        if pass_through {
                            // No toxic on this stream: plain copy, no queueing or timers.
                            if dst.write_all(&data).await.is_err() {
                                return End::Closed;
                            }
                            continue;
                        }
                        let (segs, limit) = shaper.shape(Chunk { data, at: Instant::now() }, &active);
                        queue.extend(segs);
                        limit_reached |= limit;
                        if write_due(&mut queue, &mut dst).await.is_err() {
                            return End::Closed;
                        }
                    }
                }
            }
        }
    }
}

async fn wait_for(timer: &mut Option<PreciseTimer>, at: Option<Instant>) {
    if let (Some(t), Some(at)) = (timer.as_mut(), at) {
        t.sleep_until(at).await
    }
}

/// Writes every queued segment that is due now, in order. A segment marked `apart` (a slicer
/// piece) is held at least [`SLICE_GAP_MIN_US`] after the one before it, so it reaches the
/// receiver as its own read instead of merging with it in the socket buffer.
async fn write_due<W: AsyncWrite + Unpin>(queue: &mut DelayLine, dst: &mut W) -> std::io::Result<()> {
    while queue.segs.front().is_some_and(|s| s.not_before <= Instant::now()) {
        let seg = queue.segs.pop_front().expect("front checked");
        queue.bytes -= seg.data.len();
        dst.write_all(&seg.data).await?;
        if let Some(next) = queue.segs.front_mut().filter(|n| n.apart) {
            next.not_before = next.not_before.max(Instant::now() + Duration::from_micros(SLICE_GAP_MIN_US));
        }
    }
    Ok(())
}

fn has_bandwidth(active: &[ActiveToxic]) -> bool {
    active.iter().any(|t| matches!(t.toxic.kind, ToxicKind::Bandwidth { rate_kb_s } if rate_kb_s > 0))
}

fn is_blackhole(active: &[ActiveToxic]) -> bool {
    active.iter().any(|t| matches!(t.toxic.kind, ToxicKind::Timeout { .. }))
}

/// The attribute `pick` reads from each active toxic that has it.
fn attrs<'a>(
    active: &'a [ActiveToxic],
    pick: impl Fn(&ToxicKind) -> Option<u64> + 'a,
) -> impl Iterator<Item = u64> + 'a {
    active.iter().filter_map(move |t| pick(&t.toxic.kind))
}

/// The longest slow_close delay, in ms.
fn slow_close_ms(active: &[ActiveToxic]) -> Option<u64> {
    attrs(active, |k| if let ToxicKind::SlowClose { delay_ms } = *k { Some(delay_ms) } else { None }).max()
}

/// The shortest reset_peer timeout, in ms.
fn reset_peer_ms(active: &[ActiveToxic]) -> Option<u64> {
    attrs(active, |k| if let ToxicKind::ResetPeer { timeout_ms } = *k { Some(timeout_ms) } else { None }).min()
}

/// One latency draw as Toxiproxy makes it: whole milliseconds, `latency + U[-jitter, jitter)`,
/// never below zero.
pub(crate) fn latency_draw_ms(latency_ms: u64, jitter_ms: u64, rng: &mut impl Rng) -> u64 {
    // In i64 after a clamp, so no value wraps (latency 2^63 used to be applied as 0); the
    // API refuses anything past DELAY_MS_MAX before it gets here.
    let jitter_ms = jitter_ms.min(i64::MAX as u64) as i64;
    let jitter = if jitter_ms > 0 { rng.random_range(-jitter_ms..jitter_ms) } else { 0 };
    (i128::from(latency_ms) + i128::from(jitter)).clamp(0, i128::from(u64::MAX)) as u64
}

/// Toxiproxy's slicer cut of `len` bytes: the range is halved (plus a uniform shift in
/// `[-variation, variation)`) until a piece is within `variation` of `average`, so pieces
/// fall in about `(average / 2, average + variation]` with no bias at either end. Returns
/// the piece lengths, in order.
pub(crate) fn slice_lengths(len: usize, average: usize, variation: usize, rng: &mut impl Rng) -> Vec<usize> {
    fn cut(len: usize, average: usize, variation: usize, rng: &mut impl Rng, out: &mut Vec<usize>) {
        // Saturating: both may be up to 2^63-1. Past this test `variation < len`, so the
        // shift's range below is never empty (2^64-1 used to panic "cannot sample empty range").
        if len <= average.saturating_add(variation) || len < 2 {
            out.push(len);
            return;
        }
        let shift = if variation > 0 { rng.random_range(-(variation as i64)..variation as i64) } else { 0 };
        // Clamped inside the range so both halves are non-empty and the recursion ends.
        let mid = (len as i64 / 2 + shift).clamp(1, len as i64 - 1) as usize;
        cut(mid, average, variation, rng, out);
        cut(len - mid, average, variation, rng, out);
    }
    let mut out = Vec::new();
    if len > 0 {
        cut(len, average.max(1), variation, rng, &mut out);
    }
    out
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
    /// A slicer piece: written on its own, not merged with the piece before it.
    apart: bool,
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

    /// Splits and schedules one chunk through the data-shaping toxics, in installation order
    /// (Toxiproxy's chain). Returns the segments and whether a limit_data toxic let its last
    /// byte through (the direction then finishes once they are written).
    fn shape(&mut self, chunk: Chunk, active: &[ActiveToxic]) -> (Vec<Segment>, bool) {
        let mut segs = vec![Segment { data: chunk.data, not_before: chunk.at, apart: false }];
        let mut limit_reached = false;
        for t in active {
            match t.toxic.kind {
                ToxicKind::Latency { latency_ms, jitter_ms } => {
                    // Counted from when the data reached this toxic, so two latency toxics
                    // add up, as chained Toxiproxy toxics do.
                    let delay = Duration::from_millis(latency_draw_ms(latency_ms, jitter_ms, &mut self.rng));
                    for s in &mut segs {
                        s.not_before = later(s.not_before, delay);
                    }
                }
                ToxicKind::Bandwidth { rate_kb_s } if rate_kb_s > 0 => {
                    // rate_kb_s KB/s is rate_kb_s bytes per millisecond. Saturating: a rate
                    // past what any link carries is no limit (2^62 used to wrap to a slice
                    // of 0 bytes, and split_every then allocated until the process aborted).
                    let slice = usize::try_from(rate_kb_s.saturating_mul(BANDWIDTH_SLICE_MS)).unwrap_or(usize::MAX);
                    let mut out = Vec::new();
                    for s in segs {
                        for piece in split_every(s.data, slice) {
                            let start = self.bandwidth_next.max(s.not_before);
                            let cost_ns = piece.len() as u128 * 1_000_000 / u128::from(rate_kb_s);
                            let cost = Duration::from_nanos(u64::try_from(cost_ns).unwrap_or(u64::MAX));
                            self.bandwidth_next = later(start, cost);
                            out.push(Segment { data: piece, not_before: self.bandwidth_next, apart: s.apart });
                        }
                    }
                    segs = out;
                }
                ToxicKind::Slicer { average_size, size_variation, delay_us } => {
                    let mut out = Vec::new();
                    for s in segs {
                        let lens =
                            slice_lengths(s.data.len(), average_size as usize, size_variation as usize, &mut self.rng);
                        let mut rest = s.data;
                        let mut at = s.not_before;
                        for len in lens {
                            out.push(Segment { data: rest.split_to(len), not_before: at, apart: true });
                            at = later(at, Duration::from_micros(delay_us));
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
                    limit_reached |= st.passed_bytes >= bytes;
                }
                _ => {}
            }
        }
        (segs, limit_reached)
    }

    /// When a timeout toxic with a value closes the connection: its timeout after it was
    /// installed or after the last chunk it swallowed, whichever is later.
    fn timeout_deadline(&self, active: &[ActiveToxic]) -> Option<Instant> {
        active
            .iter()
            .filter_map(|t| match t.toxic.kind {
                ToxicKind::Timeout { timeout_ms } if timeout_ms > 0 => {
                    Some(later(self.states.get(&t.uid)?.armed_at, Duration::from_millis(timeout_ms)))
                }
                _ => None,
            })
            .min()
    }

    /// Toxiproxy's timeout toxic waits for its timeout afresh after every chunk it drops.
    fn rearm_timeouts(&mut self, active: &[ActiveToxic]) {
        let now = Instant::now();
        for t in active.iter().filter(|t| matches!(t.toxic.kind, ToxicKind::Timeout { .. })) {
            if let Some(st) = self.states.get_mut(&t.uid) {
                st.armed_at = now;
            }
        }
    }
}

fn split_every(mut data: Bytes, size: usize) -> Vec<Bytes> {
    // A size of 0 would never end.
    let size = size.max(1);
    let mut out = Vec::new();
    while data.len() > size {
        out.push(data.split_to(size));
    }
    if !data.is_empty() {
        out.push(data);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_is_drawn_as_toxiproxy_draws_it() {
        // Go: latency + rand.Int63n(2 * jitter) - jitter, whole milliseconds: [L - J, L + J).
        let mut rng = StdRng::seed_from_u64(1);
        let draws: Vec<u64> = (0..20_000).map(|_| latency_draw_ms(10, 3, &mut rng)).collect();
        assert_eq!(*draws.iter().min().unwrap(), 7);
        assert_eq!(*draws.iter().max().unwrap(), 12, "L + J itself is never drawn");
        let mean = draws.iter().sum::<u64>() as f64 / draws.len() as f64;
        assert!((9.3..9.7).contains(&mean), "mean {mean}: the draw is uniform over [L - J, L + J)");
        assert!((0..100).all(|_| latency_draw_ms(10, 0, &mut rng) == 10));
        assert!((0..1_000).map(|_| latency_draw_ms(2, 5, &mut rng)).all(|d| d <= 6), "clamped at 0, never wraps");
    }

    #[test]
    fn slicer_halves_recursively_like_toxiproxy() {
        // No variation: pure halving. 1000 -> 500 -> 250 -> 125 -> 62 + 63, all in (50, 100].
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(slice_lengths(1000, 100, 0, &mut rng), [62, 63].repeat(8));
        // With variation: every piece in (0, average + variation], none lost, and pieces are
        // not a fixed average +- variation draw (they fall in about (average/2, average+var]).
        for seed in 0..200 {
            let mut rng = StdRng::seed_from_u64(seed);
            let pieces = slice_lengths(4_000, 10, 5, &mut rng);
            assert_eq!(pieces.iter().sum::<usize>(), 4_000);
            assert!(pieces.iter().all(|&p| (1..=15).contains(&p)), "{pieces:?}");
            let mean = 4_000.0 / pieces.len() as f64;
            assert!((5.0..=15.0).contains(&mean), "mean piece {mean}");
        }
        assert_eq!(slice_lengths(50, 1, 0, &mut rng), vec![1; 50]);
        assert_eq!(slice_lengths(7, 10, 5, &mut rng), vec![7], "short data is one piece");
        assert!(slice_lengths(0, 10, 5, &mut rng).is_empty());
    }
}
