//! An implementation's whole process tree ends with its worker, a grandchild that called
//! `setsid` (and so left the process group the harness kills) included.
//!
//! Why this mechanism:
//! - a cgroup v2 per worker would be exact, but it needs a writable, delegated cgroup2 mount,
//!   which many machines (this one: cgroup v1, read-only `/sys/fs/cgroup`) and containers do
//!   not give; a process group or a session is what the program itself can leave; a
//!   `PR_SET_PDEATHSIG` in the grandchild is the user's program, not ours to set.
//! - So the harness makes itself a child subreaper (`PR_SET_CHILD_SUBREAPER`) the first time
//!   it starts an implementation: a process whose parent ends is re-parented to the harness,
//!   not to init, so it stays the harness's to find by parent pid and to reap (no zombies);
//! - and every implementation is started with [`MARK_VAR`]` = <harness pid>:<harness start
//!   time>:<worker number>` in its environment, which everything it starts inherits: a
//!   double-forked daemon is found by its mark wherever it was re-parented.
//! - At a worker's end [`end`] takes a snapshot before killing (every process carrying the
//!   worker's mark, the members of its process group, and all their descendants by parent
//!   pid), sends SIGTERM, gives them [`TERM_GRACE_MS`], SIGKILLs what is left (again until a
//!   scan finds none alive: a fork during the grace is caught) and reaps what was
//!   re-parented to the harness. The shell itself is the tokio `Child`'s to reap.
//! - A SIGKILLed harness runs nothing: its shell dies by `PR_SET_PDEATHSIG`, the rest is
//!   re-parented to init. The next harness to start an implementation ([`prepare`]) kills
//!   every process whose mark names a harness no longer alive (pid and start time, so a
//!   reused pid is not taken for its owner).
//!
//! Limit: a program that clears its environment *and* leaves its parent's tree before the
//! worker ends (so it is neither marked nor a descendant) is not found.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The environment variable that marks an implementation's processes.
pub const MARK_VAR: &str = "HC_IMPLEMENTATION_TREE";
/// After SIGTERM, the tree has this long to exit before SIGKILL, in ms.
pub const TERM_GRACE_MS: u64 = 500;
/// How long to wait for the killed processes to be reaped, in ms.
const REAP_WAIT_MS: u64 = 2_000;
/// How often the tree is looked at while waiting, in ms.
const POLL_MS: u64 = 10;
/// SIGKILL rounds at most (a scan after each; a process forking in a loop is caught in the
/// next).
const KILL_ROUNDS_MAX: usize = 20;

/// One process as `/proc/PID/stat` describes it.
#[derive(Clone, Copy, Debug)]
struct Stat {
    ppid: i32,
    pgrp: i32,
    session: i32,
    zombie: bool,
    start: u64,
}

fn stat(pid: i32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold anything: fields after the last ')'.
    let f: Vec<&str> = text.rsplit_once(')')?.1.split_whitespace().collect();
    Some(Stat {
        zombie: matches!(f.first(), Some(&"Z") | Some(&"X")),
        ppid: f.get(1)?.parse().ok()?,
        pgrp: f.get(2)?.parse().ok()?,
        session: f.get(3)?.parse().ok()?,
        // Field 22 of stat(5), the 20th after the name.
        start: f.get(19)?.parse().ok()?,
    })
}

fn all() -> HashMap<i32, Stat> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return HashMap::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| Some((pid, stat(pid)?)))
        .collect()
}

/// The value of [`MARK_VAR`] in `pid`'s environment (as it was started), if any.
fn mark_of(pid: i32) -> Option<String> {
    let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    let prefix = format!("{MARK_VAR}=");
    env.split(|b| *b == 0)
        .find_map(|kv| kv.strip_prefix(prefix.as_bytes()))
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// `<pid>:<start time>` of this harness process.
fn owner() -> &'static str {
    static OWNER: OnceLock<String> = OnceLock::new();
    OWNER.get_or_init(|| {
        let pid = std::process::id() as i32;
        format!("{pid}:{}", stat(pid).map(|s| s.start).unwrap_or(0))
    })
}

/// A fresh mark for one worker's processes.
pub(super) fn new_mark() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!("{}:{}", owner(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Once per harness process, before its first implementation starts: become the subreaper
/// and kill what a SIGKILLed harness left.
pub(super) fn prepare() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        // SAFETY: prctl on this process only.
        if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
            tracing::warn!(
                "cannot become a child subreaper ({}): an implementation's orphans go to init; \
                 those carrying its mark are still ended",
                std::io::Error::last_os_error()
            );
        }
        let left = leftovers();
        if !left.is_empty() {
            tracing::warn!(count = left.len(), "ending processes of implementations whose harness was killed");
            for pid in left {
                signal(pid, libc::SIGKILL);
            }
        }
    });
}

/// Live processes whose mark names a harness that is no longer alive.
fn leftovers() -> Vec<i32> {
    let procs = all();
    procs
        .iter()
        .filter(|(_, s)| !s.zombie)
        .filter_map(|(pid, _)| {
            let mark = mark_of(*pid)?;
            let mut parts = mark.split(':');
            let owner_pid: i32 = parts.next()?.parse().ok()?;
            let owner_start: u64 = parts.next()?.parse().ok()?;
            let alive = procs.get(&owner_pid).is_some_and(|s| s.start == owner_start && !s.zombie);
            (!alive).then_some(*pid)
        })
        .collect()
}

fn signal(pid: i32, sig: libc::c_int) {
    // SAFETY: kill(2); a pid already gone is ESRCH, nothing to do.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// The worker's processes now: those carrying `mark`, the members of process group `pgid`,
/// their descendants, and zombies re-parented to the harness from their process groups or
/// sessions (a double fork's middle process). Never the harness itself.
fn snapshot(pgid: i32, mark: &str) -> BTreeSet<i32> {
    let me = std::process::id() as i32;
    let procs = all();
    let mine = procs.get(&me).copied();
    let mut found: BTreeSet<i32> = procs
        .iter()
        .filter(|(pid, s)| **pid != me && ((pgid > 0 && s.pgrp == pgid) || mark_of(**pid).as_deref() == Some(mark)))
        .map(|(pid, _)| *pid)
        .collect();
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    for (pid, s) in &procs {
        children.entry(s.ppid).or_default().push(*pid);
    }
    let mut todo: Vec<i32> = found.iter().copied().collect();
    while let Some(p) = todo.pop() {
        for c in children.get(&p).into_iter().flatten() {
            if *c != me && found.insert(*c) {
                todo.push(*c);
            }
        }
    }
    let groups: BTreeSet<(i32, i32)> = found.iter().filter_map(|p| procs.get(p)).map(|s| (s.pgrp, s.session)).collect();
    let (my_pgrp, my_session) = mine.map(|s| (s.pgrp, s.session)).unwrap_or((0, 0));
    for (pid, s) in &procs {
        let related =
            groups.iter().any(|(g, sid)| (*g == s.pgrp && *g != my_pgrp) || (*sid == s.session && *sid != my_session));
        if s.zombie && s.ppid == me && related {
            found.insert(*pid);
        }
    }
    found
}

fn alive(pid: i32) -> bool {
    stat(pid).is_some_and(|s| !s.zombie)
}

/// Reaps the processes of `pids` re-parented to the harness, for up to [`REAP_WAIT_MS`];
/// `except` (the shell) is the tokio `Child`'s to reap.
fn reap(pids: &BTreeSet<i32>, except: i32) {
    let me = std::process::id() as i32;
    let mut left: Vec<i32> = pids.iter().copied().filter(|p| *p != except).collect();
    let deadline = Instant::now() + Duration::from_millis(REAP_WAIT_MS);
    while !left.is_empty() && Instant::now() < deadline {
        left.retain(|pid| {
            // SAFETY: waitpid on one pid, WNOHANG: never blocks, touches no other child.
            let r = unsafe { libc::waitpid(*pid, std::ptr::null_mut(), libc::WNOHANG) };
            if r == *pid {
                return false;
            }
            // Not (or not yet) ours: its parent reaps it, or it is re-parented here when that
            // parent ends; gone from /proc or alive under someone else is done.
            match stat(*pid) {
                None => false,
                Some(s) => s.zombie || s.ppid == me,
            }
        });
        if !left.is_empty() {
            std::thread::sleep(Duration::from_millis(POLL_MS));
        }
    }
}

fn kill_all(pgid: i32, mark: &str, seen: &mut BTreeSet<i32>) {
    for _ in 0..KILL_ROUNDS_MAX {
        let now = snapshot(pgid, mark);
        let live: Vec<i32> = now.iter().copied().filter(|p| alive(*p)).collect();
        seen.extend(now);
        if live.is_empty() {
            return;
        }
        for p in live {
            signal(p, libc::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(POLL_MS));
    }
}

/// Ends the worker's tree: SIGTERM, [`TERM_GRACE_MS`], SIGKILL, reap. `shell` is the
/// program's own pid (its process group's id), `mark` its [`MARK_VAR`].
pub(super) async fn end(shell: i32, mark: &str) {
    let mut seen = snapshot(shell, mark);
    if seen.iter().any(|p| alive(*p)) {
        for p in &seen {
            signal(*p, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_millis(TERM_GRACE_MS);
        while Instant::now() < deadline && snapshot(shell, mark).iter().any(|p| alive(*p)) {
            tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
        }
    }
    let mark = mark.to_string();
    // The kill rounds and the reaping sleep between looks: off the runtime's threads.
    let _ = tokio::task::spawn_blocking(move || {
        kill_all(shell, &mark, &mut seen);
        reap(&seen, shell);
    })
    .await;
}

/// [`end`] without the grace, for a worker dropped without `shutdown`: SIGKILL now; the
/// reaping goes on in a thread of its own.
pub(super) fn end_now(shell: i32, mark: &str) {
    let mut seen = BTreeSet::new();
    kill_all(shell, mark, &mut seen);
    let _ = std::thread::Builder::new().name("hc-reap".into()).spawn(move || reap(&seen, shell));
}
