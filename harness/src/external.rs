//! Implementations the harness did not write: any program that speaks the JSON-lines process
//! protocol of `harness/PROTOCOL.md` on its stdin and stdout (Maelstrom's idea), judged by
//! the same scenarios and checkers as the built-in strategies.
//!
//! - [`ExternalSpec`] / [`describe`]: `--implementation NAME=COMMAND`, described by the
//!   program itself (`hello`: its design and which built-in's expectations it holds itself
//!   to, if any).
//! - [`Worker`]: one process = one worker, behind [`FeedbackStrategy`]. Requests carry a
//!   number (`req`); answers come in any order. A dropped wait sends `cancel`. A program that
//!   crashes, prints a line that is not the protocol, or does not answer in time is not an
//!   error of the run: each is a *problem*, which the scenario records in the history and the
//!   `protocol` checker reports as invalid, with the evidence and the stderr file.
//! - [`serve`]: the Rust reference over the same protocol (`hybrid-chaos serve-impl`), which
//!   proves the protocol loses nothing: same verdicts over the protocol as in-process.
//!
//! A program's whole process tree is ended with its worker ([`tree`]: a subreaper and a
//! mark in the environment), so nothing it forked outlives the run, a grandchild in a session
//! of its own included; a program must also exit when its stdin closes (the harness died).
//! A protocol line is at most [`PROTOCOL_LINE_MAX_BYTES`]: a longer one is not buffered, it
//! is a problem and the program is treated as ended.

use std::collections::HashMap;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot};

use crate::reference::stream::{Chunk, FollowEnd};
use crate::reference::{
    Config, Error, FeedbackStrategy, Fields, ImplStats, PublishOutcome, Result, StreamStrategy, Via, WaitOutcome,
};

/// An answer may come this long after the operation's own timeout (or, for one without a
/// timeout, after it was sent), in ms, before the program is reported hung.
pub const ANSWER_GRACE_MS: u64 = 10_000;
/// `hello` and `init` must be answered within this many ms (a Python interpreter starting on
/// a busy machine included).
pub const START_TIMEOUT_MS: u64 = 15_000;
/// After `shutdown`, the program has this long to exit before its process group is killed,
/// in ms.
pub const EXIT_WAIT_MS: u64 = 2_000;
/// The stats the harness keeps are refreshed this often, in ms (`stats` is asked in the
/// background: the harness's own reads of them are synchronous).
pub const STATS_EVERY_MS: u64 = 20;
/// The longest protocol line read from a program, in bytes (its newline not counted). A longer
/// line, or an unterminated one that grows past it, is not buffered further: it is a problem
/// and the program is treated as ended (a 1 GB line once made the harness 989 MB RSS).
pub const PROTOCOL_LINE_MAX_BYTES: usize = 1024 * 1024;
/// Problems kept per worker (the count of the rest is appended).
const PROBLEMS_MAX: usize = 20;
/// Longest protocol line quoted in a problem, in characters.
const QUOTE_CHARS_MAX: usize = 160;

/// What a program says of itself in answer to `hello`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Its own name for itself (shown in the report beside the harness's name for it).
    #[serde(default)]
    pub name: String,
    /// Woken by Pub/Sub notifications.
    #[serde(default)]
    pub notifies: bool,
    /// Polls storage.
    #[serde(default)]
    pub polls: bool,
    /// Speaks `stream_publish` and `follow`: runs the streaming scenarios too.
    #[serde(default)]
    pub streams: bool,
    /// The built-in strategy whose expected verdicts it holds itself to (`hybrid`,
    /// `pubsub-only`, `polling-only`); absent: none, its verdicts are findings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect: Option<String>,
}

/// An implementation registered with `--implementation NAME=COMMAND`.
#[derive(Clone, Debug)]
pub struct ExternalSpec {
    /// The harness's name for it: its rows in the report.
    pub name: String,
    /// Run through `sh -c`.
    pub command: String,
    /// Where each worker's stderr goes (`NAME.stderr`, appended).
    pub log_dir: PathBuf,
    pub hello: Hello,
    /// How long past an operation's own timeout an answer may come, in ms
    /// ([`ANSWER_GRACE_MS`], or `HC_ANSWER_GRACE_MS` from the environment).
    pub answer_grace_ms: u64,
}

impl ExternalSpec {
    pub fn stderr_path(&self) -> PathBuf {
        self.log_dir.join(format!("{}.stderr", self.name))
    }
}

/// Parses `NAME=COMMAND` (whether the name clashes with a built-in strategy is
/// [`crate::strategy::parse_implementation`]'s to say).
pub fn parse_arg(arg: &str) -> std::result::Result<(String, String), String> {
    let (name, command) =
        arg.split_once('=').ok_or_else(|| format!("--implementation {arg:?}: expected NAME=COMMAND"))?;
    let valid = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !valid {
        return Err(format!("--implementation {arg:?}: NAME must be letters, digits, - or _"));
    }
    if command.trim().is_empty() {
        return Err(format!("--implementation {name}: the command is empty"));
    }
    Ok((name.to_string(), command.to_string()))
}

/// Starts `command` once and asks it `hello`: a command that does not start or does not
/// speak the protocol is refused before any scenario runs, with what it printed.
pub async fn describe(name: &str, command: &str, log_dir: &Path) -> anyhow::Result<ExternalSpec> {
    let answer_grace_ms =
        std::env::var("HC_ANSWER_GRACE_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(ANSWER_GRACE_MS);
    let spec = ExternalSpec {
        name: name.into(),
        command: command.into(),
        log_dir: log_dir.into(),
        hello: Hello::default(),
        answer_grace_ms,
    };
    let proc = Process::spawn(&spec)?;
    let answer = proc.request("hello", json!({}), Duration::from_millis(START_TIMEOUT_MS)).await;
    let problems = proc.problems();
    proc.close().await;
    let stderr = stderr_tail(&spec.stderr_path());
    let value = match answer {
        Answer::Ok(v) => v,
        other => anyhow::bail!(
            "--implementation {name}: `{command}` did not answer hello: {}{}{}",
            other.describe(),
            if problems.is_empty() { String::new() } else { format!("; {}", problems.join("; ")) },
            if stderr.is_empty() { String::new() } else { format!("; its stderr ends: {stderr}") }
        ),
    };
    let hello: Hello = serde_json::from_value(value.clone()).map_err(|e| {
        anyhow::anyhow!(
            "--implementation {name}: its hello answer {value} is not {{name, notifies, polls, expect}}: {e}"
        )
    })?;
    if !hello.notifies && !hello.polls {
        anyhow::bail!("--implementation {name}: its hello says it neither notifies nor polls");
    }
    Ok(ExternalSpec { hello, ..spec })
}

/// The last line of a stderr file, for a problem's evidence.
fn stderr_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines().rev().find(|l| !l.trim().is_empty()).map(|l| quote(l.trim())).unwrap_or_default()
}

fn quote(s: &str) -> String {
    if s.chars().count() > QUOTE_CHARS_MAX {
        format!("{}...", s.chars().take(QUOTE_CHARS_MAX).collect::<String>())
    } else {
        s.to_string()
    }
}

/// What came back for one request.
#[derive(Clone, Debug, PartialEq)]
pub enum Answer {
    Ok(Value),
    Timeout,
    Fail(String),
    Info(String),
    /// The program ended before answering.
    Exited(String),
    /// No answer within the grace period.
    Hung(u64),
}

impl Answer {
    fn describe(&self) -> String {
        match self {
            Answer::Ok(v) => format!("ok {v}"),
            Answer::Timeout => "timeout".into(),
            Answer::Fail(e) => format!("fail: {e}"),
            Answer::Info(e) => format!("info: {e}"),
            Answer::Exited(how) => format!("it exited ({how})"),
            Answer::Hung(ms) => format!("no answer within {ms} ms"),
        }
    }
}

/// What [`read_line_bounded`] read.
#[derive(Debug, PartialEq, Eq)]
enum Line {
    /// A whole line is in the buffer, its newline removed.
    Complete,
    /// The stream ended (a last line without a newline is [`Line::Complete`] first).
    Eof,
    /// The line passed the limit: the buffer holds its first `max` bytes at most, and the
    /// rest is left unread.
    TooLong,
}

/// Reads one line into `buf` (cleared first), holding at most `max` bytes of it: unlike
/// `lines()`, a line without an end cannot grow the buffer without bound.
async fn read_line_bounded<R: AsyncBufRead + Unpin>(r: &mut R, buf: &mut Vec<u8>, max: usize) -> std::io::Result<Line> {
    buf.clear();
    loop {
        let available = r.fill_buf().await?;
        if available.is_empty() {
            return Ok(if buf.is_empty() { Line::Eof } else { Line::Complete });
        }
        let (take, done) = match available.iter().position(|b| *b == b'\n') {
            Some(i) => (i, true),
            None => (available.len(), false),
        };
        if buf.len() + take > max {
            let room = max - buf.len();
            buf.extend_from_slice(&available[..room]);
            r.consume(room);
            return Ok(Line::TooLong);
        }
        buf.extend_from_slice(&available[..take]);
        r.consume(if done { take + 1 } else { take });
        if done {
            return Ok(Line::Complete);
        }
    }
}

/// One line from the program: an answer to request `req`.
#[derive(Debug, Deserialize)]
struct Wire {
    req: u64,
    outcome: String,
    #[serde(default)]
    value: Value,
    #[serde(default)]
    error: Option<String>,
}

fn answer_of(w: Wire) -> std::result::Result<Answer, String> {
    let error = || w.error.clone().unwrap_or_else(|| "(no error given)".into());
    Ok(match w.outcome.as_str() {
        "ok" => Answer::Ok(w.value.clone()),
        "timeout" => Answer::Timeout,
        "fail" => Answer::Fail(error()),
        "info" => Answer::Info(error()),
        other => return Err(format!("unknown outcome {other:?} (expected ok, timeout, fail or info)")),
    })
}

/// Lines a `follow` produces before its answer: one per chunk handed over.
#[derive(Debug, Deserialize)]
struct ChunkEvent {
    req: u64,
    index: u64,
    #[serde(default)]
    content: String,
    #[serde(default, rename = "final")]
    last: bool,
    #[serde(default)]
    via: Option<String>,
}

struct Shared {
    pending: Mutex<HashMap<u64, oneshot::Sender<Answer>>>,
    /// Requests (follows) whose chunk events go to a channel until their answer.
    events: Mutex<HashMap<u64, mpsc::UnboundedSender<ChunkEvent>>>,
    problems: Mutex<Vec<String>>,
    /// Set when the program's stdout closed: how it ended.
    exited: Mutex<Option<String>>,
    /// Its stdout closed before `shutdown` was sent: it died, it was not asked to. Taken when
    /// it happens, since `shutting_down` is set later by the worker's own shutdown.
    died_unasked: std::sync::atomic::AtomicBool,
    /// The last `stats` answer kept, with its request number.
    stats: Mutex<(u64, ImplStats)>,
    /// The next request number (every request sent has a smaller one).
    next: AtomicU64,
    /// `shutdown` was sent: the program ending now is what was asked.
    shutting_down: std::sync::atomic::AtomicBool,
}

impl Shared {
    fn problem(&self, p: String) {
        let mut ps = self.problems.lock().expect("problems lock");
        if ps.len() < PROBLEMS_MAX {
            ps.push(p);
        } else if ps.len() == PROBLEMS_MAX {
            ps.push("(further problems not kept)".into());
        }
    }
}

/// A running program: its stdin writer, the reader that routes answers, its process group.
struct Process {
    name: String,
    child: Mutex<Option<tokio::process::Child>>,
    /// How it ended, once [`Process::close`] saw it end.
    status: Mutex<Option<String>>,
    pgid: i32,
    /// Its [`tree::MARK_VAR`]: what finds every process it started.
    mark: String,
    /// Its tree was ended ([`Process::close`]); `Drop` has nothing left to do.
    ended: std::sync::atomic::AtomicBool,
    /// Lines to its stdin; taken (dropped) to close stdin.
    tx: Mutex<Option<mpsc::UnboundedSender<String>>>,
    shared: Arc<Shared>,
    stderr: PathBuf,
}

impl Process {
    fn spawn(spec: &ExternalSpec) -> anyhow::Result<Process> {
        std::fs::create_dir_all(&spec.log_dir)
            .map_err(|e| anyhow::anyhow!("cannot write to {}: {e}", spec.log_dir.display()))?;
        let stderr_path = spec.stderr_path();
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&stderr_path)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", stderr_path.display()))?;
        tree::prepare();
        let mark = tree::new_mark();
        let mut cmd = std::process::Command::new("sh");
        cmd.env(tree::MARK_VAR, &mark);
        cmd.arg("-c").arg(&spec.command).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(stderr);
        // Its own process group, so everything it starts can be killed with it; and the
        // shell dies with the harness (the program itself sees its stdin close).
        cmd.process_group(0);
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = tokio::process::Command::from(cmd).kill_on_drop(true).spawn().map_err(|e| {
            anyhow::anyhow!("--implementation {}: cannot start `sh -c {}`: {e}", spec.name, spec.command)
        })?;
        let pgid = child.id().map(|p| p as i32).unwrap_or(0);
        let mut stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let shared = Arc::new(Shared {
            pending: Mutex::new(HashMap::new()),
            events: Mutex::new(HashMap::new()),
            problems: Mutex::new(Vec::new()),
            exited: Mutex::new(None),
            died_unasked: std::sync::atomic::AtomicBool::new(false),
            stats: Mutex::new((0, ImplStats::default())),
            next: AtomicU64::new(1),
            shutting_down: std::sync::atomic::AtomicBool::new(false),
        });
        let (tx, mut rx) = mpsc::unbounded_channel::<String>();
        tokio::spawn(async move {
            while let Some(line) = rx.recv().await {
                if stdin.write_all(line.as_bytes()).await.is_err() || stdin.write_all(b"\n").await.is_err() {
                    break;
                }
                let _ = stdin.flush().await;
            }
            // Dropping stdin closes it: the program's signal to exit.
        });
        let reader_shared = shared.clone();
        tokio::spawn(async move {
            let mut stdout = BufReader::new(stdout);
            let mut buf = Vec::new();
            let mut n = 0u64;
            let mut ended = "its stdout closed".to_string();
            loop {
                let line = match read_line_bounded(&mut stdout, &mut buf, PROTOCOL_LINE_MAX_BYTES).await {
                    Ok(Line::Complete) => match std::str::from_utf8(&buf) {
                        Ok(l) => l.to_string(),
                        Err(e) => {
                            n += 1;
                            reader_shared.problem(format!("stdout line {n} is not UTF-8 ({e})"));
                            continue;
                        }
                    },
                    Ok(Line::Eof) => break,
                    Ok(Line::TooLong) => {
                        n += 1;
                        // Dropping stdout below: the program's next write fails (EPIPE).
                        ended = format!(
                            "its stdout line {n} passed the protocol's limit of {PROTOCOL_LINE_MAX_BYTES} bytes"
                        );
                        reader_shared.problem(format!(
                            "stdout line {n} is longer than PROTOCOL_LINE_MAX_BYTES ({PROTOCOL_LINE_MAX_BYTES} \
                             bytes), starting {:?}: not read further, the program is treated as ended",
                            quote(&String::from_utf8_lossy(&buf[..buf.len().min(QUOTE_CHARS_MAX * 4)]))
                        ));
                        break;
                    }
                    Err(e) => {
                        reader_shared.problem(format!("reading its stdout failed: {e}"));
                        break;
                    }
                };
                n += 1;
                if line.trim().is_empty() {
                    continue;
                }
                if line.contains("\"event\"") {
                    match serde_json::from_str::<ChunkEvent>(&line) {
                        Ok(ev) => {
                            let to = reader_shared.events.lock().expect("events lock").get(&ev.req).cloned();
                            match to {
                                Some(tx) => {
                                    let _ = tx.send(ev);
                                }
                                None if ev.req >= reader_shared.next.load(Ordering::Relaxed) => reader_shared
                                    .problem(format!("stdout line {n} is a chunk for request {}, never sent", ev.req)),
                                None => {}
                            }
                        }
                        Err(e) => reader_shared
                            .problem(format!("stdout line {n} is not a chunk event ({e}): {:?}", quote(&line))),
                    }
                    continue;
                }
                let parsed = serde_json::from_str::<Wire>(&line).map_err(|e| e.to_string()).and_then(|w| {
                    let req = w.req;
                    answer_of(w).map(|a| (req, a))
                });
                match parsed {
                    Ok((req, a)) => {
                        let waiter = reader_shared.pending.lock().expect("pending lock").remove(&req);
                        match waiter {
                            Some(w) => {
                                let _ = w.send(a);
                            }
                            // An answer to a cancelled or given-up request is allowed; one
                            // to a request never sent is not.
                            None if req >= reader_shared.next.load(Ordering::Relaxed) => reader_shared
                                .problem(format!("stdout line {n} answers request {req}, which was never sent")),
                            None => {}
                        }
                    }
                    Err(e) => reader_shared
                        .problem(format!("stdout line {n} is not a protocol answer ({e}): {:?}", quote(&line))),
                }
            }
            drop(stdout);
            reader_shared.died_unasked.store(!reader_shared.shutting_down.load(Ordering::Relaxed), Ordering::Relaxed);
            *reader_shared.exited.lock().expect("exit lock") = Some(ended.clone());
            for (_, w) in reader_shared.pending.lock().expect("pending lock").drain() {
                let _ = w.send(Answer::Exited(ended.clone()));
            }
            reader_shared.events.lock().expect("events lock").clear();
        });
        Ok(Process {
            name: spec.name.clone(),
            child: Mutex::new(Some(child)),
            status: Mutex::new(None),
            pgid,
            mark,
            ended: std::sync::atomic::AtomicBool::new(false),
            tx: Mutex::new(Some(tx)),
            shared,
            stderr: stderr_path,
        })
    }

    /// Sends `op` with `fields` and waits up to `limit` for the answer. A request to a
    /// program that has ended is answered `Exited` at once.
    async fn request(&self, op: &str, fields: Value, limit: Duration) -> Answer {
        let (req, rx) = self.send(op, fields);
        self.answer(req, rx, limit).await
    }

    fn send(&self, op: &str, fields: Value) -> (u64, oneshot::Receiver<Answer>) {
        self.send_with(op, fields, None)
    }

    /// [`Process::send`], routing the request's chunk events to `events` until its answer
    /// (registered before the line is written, so none is missed).
    fn send_with(
        &self,
        op: &str,
        fields: Value,
        events: Option<mpsc::UnboundedSender<ChunkEvent>>,
    ) -> (u64, oneshot::Receiver<Answer>) {
        let req = self.shared.next.fetch_add(1, Ordering::Relaxed);
        if let Some(tx) = events {
            self.shared.events.lock().expect("events lock").insert(req, tx);
        }
        let (tx, rx) = oneshot::channel();
        let exited = self.shared.exited.lock().expect("exit lock").clone();
        match exited {
            Some(how) => {
                let _ = tx.send(Answer::Exited(how));
            }
            None => {
                self.shared.pending.lock().expect("pending lock").insert(req, tx);
            }
        }
        let mut msg = json!({ "req": req, "op": op });
        if let (Value::Object(m), Value::Object(f)) = (&mut msg, fields) {
            m.extend(f);
        }
        self.write(msg.to_string());
        (req, rx)
    }

    fn write(&self, line: String) {
        if let Some(tx) = self.tx.lock().expect("stdin lock").as_ref() {
            let _ = tx.send(line);
        }
    }

    async fn answer(&self, req: u64, rx: oneshot::Receiver<Answer>, limit: Duration) -> Answer {
        match tokio::time::timeout(limit, rx).await {
            Ok(Ok(a)) => a,
            Ok(Err(_)) => Answer::Exited(self.exit_status()),
            Err(_) => {
                self.shared.pending.lock().expect("pending lock").remove(&req);
                Answer::Hung(limit.as_millis() as u64)
            }
        }
    }

    /// How the program ended, if it has (`exit status 1`, `killed by signal 9`).
    fn exit_status(&self) -> String {
        if let Some(st) = self.status.lock().expect("status lock").clone() {
            return st;
        }
        let mut guard = self.child.lock().expect("child lock");
        match guard.as_mut().map(|c| c.try_wait()) {
            Some(Ok(Some(st))) => st.to_string(),
            _ => "exit status not known yet".into(),
        }
    }

    fn problems(&self) -> Vec<String> {
        self.shared.problems.lock().expect("problems lock").clone()
    }

    /// Asks `stats` and keeps the answer unless a later request's answer is kept already
    /// (the background refresh and the one after each wait race).
    async fn refresh_stats(&self) {
        let (req, rx) = self.send("stats", json!({}));
        if let Answer::Ok(v) = self.answer(req, rx, Duration::from_millis(ANSWER_GRACE_MS)).await {
            // Absent counts are 0; a malformed answer keeps the last good one.
            let Ok(stats) = serde_json::from_value::<ImplStats>(v) else { return };
            let mut kept = self.shared.stats.lock().expect("stats lock");
            if req > kept.0 {
                *kept = (req, stats);
            }
        }
    }

    /// Closes stdin, gives the program [`EXIT_WAIT_MS`] to exit, then ends its whole tree
    /// ([`tree::end`]: whatever it left running, in any session, is ended and reaped).
    async fn close(&self) {
        // Dropping the sender ends the writer, which drops stdin.
        drop(self.tx.lock().expect("stdin lock").take());
        let child = self.child.lock().expect("child lock").take();
        // Kept (not dropped, which kills it) until the tree is ended: its children are found
        // by their parent while it lives.
        let mut _unfinished = None;
        if let Some(mut child) = child {
            match tokio::time::timeout(Duration::from_millis(EXIT_WAIT_MS), child.wait()).await {
                Ok(Ok(st)) => *self.status.lock().expect("status lock") = Some(st.to_string()),
                _ => {
                    tracing::warn!(program = %self.name, "did not exit after shutdown; ending its process tree");
                    *self.status.lock().expect("status lock") =
                        Some(format!("did not exit within {EXIT_WAIT_MS} ms of shutdown; killed"));
                    _unfinished = Some(child);
                }
            }
        }
        if self.pgid > 0 {
            tree::end(self.pgid, &self.mark).await;
        }
        self.ended.store(true, Ordering::Relaxed);
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.pgid > 0 && !self.ended.load(Ordering::Relaxed) {
            tree::end_now(self.pgid, &self.mark);
        }
    }
}

/// One worker: one process of a registered implementation, behind [`FeedbackStrategy`].
pub struct Worker {
    name: &'static str,
    grace: Duration,
    proc: Arc<Process>,
    stats_task: tokio::task::JoinHandle<()>,
}

/// What `init` tells a program: the workload (`feedback` or `stream`), where Redis is and
/// the timing it is judged by. The one map of [`Config`] onto the wire: the harness writes
/// it and `serve-impl` reads it through this struct, and both conversions name every field
/// of `Config`, so a field added there does not compile until it is put on the wire or said
/// to be the implementation's own.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Init {
    pub workload: String,
    pub redis_url: String,
    pub subscriber_url: String,
    pub prefix: String,
    pub poll_interval_ms: u64,
    pub health_check_interval_ms: u64,
    pub health_check_timeout_ms: u64,
    pub reconnect_delay_ms_max: u64,
    pub breaker_reset_ms: u64,
    pub command_timeout_ms: u64,
    pub connect_timeout_ms: u64,
    pub response_ttl_s: u64,
    pub stream_ttl_s: u64,
}

impl Default for Init {
    /// Absent fields keep the reference's defaults.
    fn default() -> Init {
        Init::new("feedback", "", "", &Config::default())
    }
}

impl Init {
    pub fn new(workload: &str, command_url: &str, subscriber_url: &str, cfg: &Config) -> Init {
        let Config {
            keys,
            poll_interval_ms,
            health_check_interval_ms,
            health_check_timeout_ms,
            reconnect_delay_ms_max,
            breaker_reset_ms,
            command_timeout_ms,
            connect_timeout_ms,
            response_ttl_s,
            stream_ttl_s,
            // The implementation's own: how it batches, backs off, retries, queues and
            // breaks its circuit is its design, not a bound the checks are derived from.
            poll_batch_keys_max: _,
            reconnect_delay_ms_min: _,
            subscribe_wait_ms_max: _,
            publish_attempts_max: _,
            publish_backoff_ms: _,
            breaker_failures_max: _,
            queue_len_max: _,
            // The sentinel topology's (an external program runs standalone only) and the
            // reference's own broken variants: neither is asked of a program.
            durability: _,
            mutation: _,
        } = cfg;
        Init {
            workload: workload.to_string(),
            redis_url: command_url.to_string(),
            subscriber_url: subscriber_url.to_string(),
            prefix: keys.prefix().to_string(),
            poll_interval_ms: *poll_interval_ms,
            health_check_interval_ms: *health_check_interval_ms,
            health_check_timeout_ms: *health_check_timeout_ms,
            reconnect_delay_ms_max: *reconnect_delay_ms_max,
            breaker_reset_ms: *breaker_reset_ms,
            command_timeout_ms: *command_timeout_ms,
            connect_timeout_ms: *connect_timeout_ms,
            response_ttl_s: *response_ttl_s,
            stream_ttl_s: *stream_ttl_s,
        }
    }

    /// The reference's configuration for this `init`: what crossed the wire, the rest the
    /// defaults.
    pub fn config(&self) -> Config {
        let d = Config::default();
        Config {
            keys: crate::reference::Keys::new(&self.prefix),
            poll_interval_ms: self.poll_interval_ms,
            health_check_interval_ms: self.health_check_interval_ms,
            health_check_timeout_ms: self.health_check_timeout_ms,
            reconnect_delay_ms_max: self.reconnect_delay_ms_max,
            breaker_reset_ms: self.breaker_reset_ms,
            command_timeout_ms: self.command_timeout_ms,
            connect_timeout_ms: self.connect_timeout_ms,
            response_ttl_s: self.response_ttl_s,
            stream_ttl_s: self.stream_ttl_s,
            poll_batch_keys_max: d.poll_batch_keys_max,
            reconnect_delay_ms_min: d.reconnect_delay_ms_min,
            subscribe_wait_ms_max: d.subscribe_wait_ms_max,
            publish_attempts_max: d.publish_attempts_max,
            publish_backoff_ms: d.publish_backoff_ms,
            breaker_failures_max: d.breaker_failures_max,
            queue_len_max: d.queue_len_max,
            durability: None,
            mutation: None,
        }
    }

    /// The `init` request's fields, as a JSON object.
    pub fn fields(&self) -> Value {
        serde_json::to_value(self).expect("a struct of strings and numbers serializes")
    }
}

impl Worker {
    /// Starts a fresh process of `spec` and sends `init` for `workload` (`feedback`, `stream`).
    pub async fn start(
        spec: &ExternalSpec,
        workload: &str,
        command_url: &str,
        subscriber_url: &str,
        cfg: &Config,
    ) -> anyhow::Result<Worker> {
        let proc = Arc::new(Process::spawn(spec)?);
        let answer = proc
            .request(
                "init",
                Init::new(workload, command_url, subscriber_url, cfg).fields(),
                Duration::from_millis(START_TIMEOUT_MS),
            )
            .await;
        if !matches!(answer, Answer::Ok(_)) {
            let problems = proc.problems();
            proc.close().await;
            anyhow::bail!(
                "{}: init was answered {}{}; its stderr: {}",
                spec.name,
                answer.describe(),
                if problems.is_empty() { String::new() } else { format!(" ({})", problems.join("; ")) },
                spec.stderr_path().display()
            );
        }
        let stats_task = tokio::spawn({
            let proc = Arc::downgrade(&proc);
            async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(STATS_EVERY_MS)).await;
                    let Some(p) = proc.upgrade() else { return };
                    if p.shared.exited.lock().expect("exit lock").is_some() {
                        return;
                    }
                    p.refresh_stats().await;
                }
            }
        });
        Ok(Worker {
            name: Box::leak(spec.name.clone().into_boxed_str()),
            grace: Duration::from_millis(spec.answer_grace_ms),
            proc,
            stats_task,
        })
    }

    /// The problems seen so far, each naming the stderr file.
    pub fn problems(&self) -> Vec<String> {
        let mut ps = self.proc.problems();
        let died = self.proc.shared.died_unasked.load(Ordering::Relaxed);
        if let Some(how) = self.proc.shared.exited.lock().expect("exit lock").clone().filter(|_| died) {
            let status = self.proc.exit_status();
            ps.push(format!("the program ended before shutdown ({how}; {status})"));
        }
        if !ps.is_empty() {
            let tail = stderr_tail(&self.proc.stderr);
            ps.push(format!(
                "its stderr: {}{}",
                self.proc.stderr.display(),
                if tail.is_empty() { String::new() } else { format!(", ending: {tail}") }
            ));
        }
        ps
    }

    fn note(&self, op: &str, a: &Answer) {
        if let Answer::Hung(ms) = a {
            self.proc.shared.problem(format!("no answer to {op} within {ms} ms"));
        }
    }
}

/// A `respond` or `stream_publish` answer as the publisher's outcome: `ok` acknowledged,
/// `fail` certainly not stored, anything else unknown.
fn publish_outcome(a: Answer) -> PublishOutcome {
    match a {
        Answer::Ok(v) => match v.get("status").and_then(Value::as_str) {
            Some("notified") => {
                PublishOutcome::Notified { subscribers: v.get("subscribers").and_then(Value::as_u64).unwrap_or(1) }
            }
            Some("unheard") => PublishOutcome::Unheard,
            Some("stored_not_notified") => PublishOutcome::StoredNotNotified { reason: "said the program".into() },
            _ => PublishOutcome::Stored,
        },
        Answer::Fail(reason) => PublishOutcome::Refused { reason },
        other => PublishOutcome::Failed { reason: other.describe() },
    }
}

/// Sends `cancel` for a wait whose future is dropped before its answer came.
struct CancelOnDrop<'a> {
    proc: &'a Process,
    req: u64,
    armed: bool,
}

impl Drop for CancelOnDrop<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.proc.shared.pending.lock().expect("pending lock").remove(&self.req);
            self.proc.shared.events.lock().expect("events lock").remove(&self.req);
            // Fire and forget: an answer to the cancel, or to the wait, is dropped.
            let (cancel, _) = self.proc.send("cancel", json!({ "target": self.req }));
            self.proc.shared.pending.lock().expect("pending lock").remove(&cancel);
        }
    }
}

fn external_error(what: String) -> Error {
    Error::Stream(what)
}

#[async_trait::async_trait]
impl FeedbackStrategy for Worker {
    fn name(&self) -> &'static str {
        self.name
    }

    async fn respond(&self, id: &str, fields: &Fields) -> PublishOutcome {
        let a = self.proc.request("respond", json!({ "id": id, "fields": fields }), self.grace).await;
        self.note("respond", &a);
        publish_outcome(a)
    }

    async fn wait(&self, id: &str, timeout: Duration) -> Result<WaitOutcome> {
        let fields = json!({ "id": id, "timeout_ms": timeout.as_millis() as u64 });
        let (req, rx) = self.proc.send("wait", fields);
        let mut guard = CancelOnDrop { proc: &self.proc, req, armed: true };
        let a = self.proc.answer(req, rx, timeout + self.grace).await;
        guard.armed = false;
        self.note("wait", &a);
        // The answer is returned as it arrives, and recorded then: a stats round trip here
        // would count the program's queue of stats requests into every wait's duration (40
        // waits ending together in a Python program took 100 ms past their timeouts that
        // way, all of it the harness's). A reading taken once right after waits end asks
        // for fresh counts itself (`fresh_stats`); the others poll while the background
        // refresh catches up.
        match a {
            Answer::Ok(v) => {
                let fields: Fields = serde_json::from_value(v.get("fields").cloned().unwrap_or(Value::Null))
                    .map_err(|e| external_error(format!("wait answered ok without fields {{...}}: {e}")))?;
                let via =
                    v.get("via").cloned().and_then(|x| serde_json::from_value::<Via>(x).ok()).unwrap_or(Via::Polled);
                Ok(WaitOutcome::Obtained { fields, via })
            }
            Answer::Timeout => Ok(WaitOutcome::TimedOut),
            other => Err(external_error(other.describe())),
        }
    }

    fn stats(&self) -> ImplStats {
        self.proc.shared.stats.lock().expect("stats lock").1
    }

    async fn fresh_stats(&self) -> ImplStats {
        if self.proc.shared.exited.lock().expect("exit lock").is_none() {
            self.proc.refresh_stats().await;
        }
        FeedbackStrategy::stats(self)
    }

    fn problems(&self) -> Vec<String> {
        Worker::problems(self)
    }

    async fn shutdown(&self) {
        self.stats_task.abort();
        self.proc.shared.shutting_down.store(true, Ordering::Relaxed);
        let a = self.proc.request("shutdown", json!({}), Duration::from_millis(EXIT_WAIT_MS)).await;
        if !matches!(a, Answer::Ok(_) | Answer::Exited(_)) {
            self.note("shutdown", &a);
        }
        self.proc.close().await;
    }
}

#[async_trait::async_trait]
impl StreamStrategy for Worker {
    fn name(&self) -> &'static str {
        self.name
    }

    async fn publish(&self, task: &str, chunk: &Chunk) -> PublishOutcome {
        let fields = json!({
            "task": task,
            "index": chunk.chunk_index,
            "content": chunk.content,
            "final": chunk.chunk_type == "final",
        });
        let a = self.proc.request("stream_publish", fields, self.grace).await;
        self.note("stream_publish", &a);
        publish_outcome(a)
    }

    async fn follow(
        &self,
        task: &str,
        from: u64,
        timeout: Duration,
        on_chunk: &mut (dyn for<'c> FnMut(&'c Chunk, Via) + Send),
    ) -> Result<FollowEnd> {
        let (etx, mut erx) = mpsc::unbounded_channel();
        let fields = json!({ "task": task, "from": from, "timeout_ms": timeout.as_millis() as u64 });
        let (req, rx) = self.proc.send_with("follow", fields, Some(etx));
        let mut guard = CancelOnDrop { proc: &self.proc, req, armed: true };
        let mut delivered = 0u64;
        let mut hand_over = |ev: ChunkEvent| {
            let chunk = Chunk {
                chunk_index: ev.index,
                chunk_type: if ev.last { "final" } else { "content" }.into(),
                content: ev.content,
            };
            let via = ev.via.and_then(|v| serde_json::from_value::<Via>(Value::String(v)).ok()).unwrap_or(Via::Polled);
            on_chunk(&chunk, via);
            delivered += 1;
        };
        let answer = self.proc.answer(req, rx, timeout + self.grace);
        tokio::pin!(answer);
        let a = loop {
            tokio::select! {
                Some(ev) = erx.recv() => hand_over(ev),
                a = &mut answer => break a,
            }
        };
        // The reader routes a follow's chunk lines before its answer: what is queued came
        // first.
        while let Ok(ev) = erx.try_recv() {
            hand_over(ev);
        }
        guard.armed = false;
        self.proc.shared.events.lock().expect("events lock").remove(&req);
        self.note("follow", &a);
        let list_reads = |v: &Value| v.get("list_reads").and_then(Value::as_u64).unwrap_or(0);
        match a {
            Answer::Ok(v) => Ok(FollowEnd::Finished { delivered, list_reads: list_reads(&v) }),
            Answer::Timeout => Ok(FollowEnd::TimedOut { delivered, list_reads: 0 }),
            other => Err(external_error(other.describe())),
        }
    }

    fn stats(&self) -> ImplStats {
        FeedbackStrategy::stats(self)
    }

    fn problems(&self) -> Vec<String> {
        Worker::problems(self)
    }

    async fn shutdown(&self) {
        FeedbackStrategy::shutdown(self).await
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stats_task.abort();
    }
}

pub mod serve;
mod tree;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn implementation_arguments_are_checked_and_quoted_back() {
        assert_eq!(
            parse_arg("mine=python3 x.py --a=b").unwrap(),
            ("mine".to_string(), "python3 x.py --a=b".to_string())
        );
        assert!(parse_arg("mine").unwrap_err().contains("NAME=COMMAND"));
        assert!(parse_arg("a b=x").unwrap_err().contains("letters"));
        assert!(parse_arg("mine= ").unwrap_err().contains("empty"));
    }

    #[test]
    fn init_carries_the_configuration_the_reference_is_judged_by() {
        let cfg = Config {
            poll_interval_ms: 123,
            command_timeout_ms: 456,
            stream_ttl_s: 789,
            ..Config::default().with_prefix("p:")
        };
        let wire = Init::new("feedback", "redis://a/", "redis://b/", &cfg).fields();
        let init: Init = serde_json::from_value(wire.clone()).unwrap();
        let back = init.config();
        assert_eq!(back.keys.prefix(), "p:");
        assert_eq!((back.poll_interval_ms, back.command_timeout_ms, back.stream_ttl_s), (123, 456, 789));
        assert_eq!(back.health_check_interval_ms, cfg.health_check_interval_ms);
        // The field names are the protocol's (PROTOCOL.md): a rename is a protocol change.
        let keys: Vec<&str> = wire.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "breaker_reset_ms",
                "command_timeout_ms",
                "connect_timeout_ms",
                "health_check_interval_ms",
                "health_check_timeout_ms",
                "poll_interval_ms",
                "prefix",
                "reconnect_delay_ms_max",
                "redis_url",
                "response_ttl_s",
                "stream_ttl_s",
                "subscriber_url",
                "workload"
            ]
        );
    }

    #[test]
    fn an_init_keeps_the_defaults_for_what_it_omits_and_refuses_a_wrong_type() {
        let init: Init = serde_json::from_value(json!({"op": "init", "req": 2, "poll_interval_ms": 7})).unwrap();
        assert_eq!(init.workload, "feedback");
        let cfg = init.config();
        assert_eq!(cfg.poll_interval_ms, 7);
        assert_eq!(cfg.command_timeout_ms, Config::default().command_timeout_ms);
        let err = serde_json::from_value::<Init>(json!({"poll_interval_ms": "soon"})).unwrap_err();
        assert!(err.to_string().contains("invalid type"), "{err}");
    }

    #[tokio::test]
    async fn protocol_lines_are_bounded_and_an_endless_one_is_not_buffered() {
        let max = 16;
        let read_all = |input: &'static [u8]| async move {
            // A 3-byte buffer: lines arrive split across reads.
            let mut r = tokio::io::BufReader::with_capacity(3, input);
            let (mut buf, mut out) = (Vec::new(), Vec::new());
            loop {
                let l = read_line_bounded(&mut r, &mut buf, max).await.unwrap();
                out.push((String::from_utf8(buf.clone()).unwrap(), l));
                if out.last().unwrap().1 != Line::Complete {
                    return out;
                }
            }
        };
        let c = |s: &str| (s.to_string(), Line::Complete);
        assert_eq!(
            read_all(b"a\n\n0123456789abcdef\nlast").await,
            vec![c("a"), c(""), c("0123456789abcdef"), c("last"), (String::new(), Line::Eof)],
            "up to the limit exactly is a line"
        );
        assert_eq!(
            read_all(b"ok\n0123456789abcdefg\nnext\n").await,
            vec![c("ok"), ("0123456789abcdef".to_string(), Line::TooLong)],
            "one byte over is too long, and no more is read"
        );
        // A line that never ends: answered TooLong at once with the buffer at the limit
        // (`lines()` here would read forever and grow without bound).
        let mut endless = tokio::io::BufReader::new(tokio::io::repeat(b'x'));
        let mut buf = Vec::new();
        let limit = PROTOCOL_LINE_MAX_BYTES;
        let got = tokio::time::timeout(Duration::from_secs(10), read_line_bounded(&mut endless, &mut buf, limit))
            .await
            .expect("an endless line ends the read")
            .unwrap();
        assert_eq!(got, Line::TooLong);
        assert_eq!(buf.len(), limit);
        assert!(buf.capacity() <= 2 * limit, "held {} bytes for a {limit}-byte limit", buf.capacity());
    }

    #[test]
    fn answers_map_to_outcomes_and_anything_else_is_a_problem() {
        let w = |s: &str| answer_of(serde_json::from_str::<Wire>(s).unwrap());
        assert_eq!(w(r#"{"req":1,"outcome":"ok","value":{"a":1}}"#), Ok(Answer::Ok(json!({"a":1}))));
        assert_eq!(w(r#"{"req":1,"outcome":"timeout"}"#), Ok(Answer::Timeout));
        assert_eq!(w(r#"{"req":1,"outcome":"fail","error":"no"}"#), Ok(Answer::Fail("no".into())));
        assert_eq!(w(r#"{"req":1,"outcome":"info"}"#), Ok(Answer::Info("(no error given)".into())));
        assert!(w(r#"{"req":1,"outcome":"maybe"}"#).unwrap_err().contains("unknown outcome"));
        assert!(serde_json::from_str::<Wire>(r#"{"outcome":"ok"}"#).is_err(), "no req: not an answer");
    }
}
