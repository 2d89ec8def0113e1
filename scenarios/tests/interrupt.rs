//! An interrupt ends every kind of run: the real binary on a real run, signalled once its
//! infrastructure is up (found by polling its process tree or Docker, never a fixed sleep),
//! must exit within [`EXIT_WITHIN_S`] with 130 for SIGINT and 143 for SIGTERM, say so in one
//! stderr line, and leave no process, container or network of that run, every one removed by
//! its own handle (the binary's last-resort sweep found nothing). SIGKILL leaves only what
//! the next start reaps: containers and networks by owner label, while redis-servers die by
//! their death signal.
//!
//! The container and Sentinel cases need Docker: without it they say so on stderr and pass,
//! unless `HC_DOCKER=1` (set by `./ci/test` when Docker answers), where Docker failing is a
//! failure.

mod cli_support;
#[path = "../../harness/tests/support/mod.rs"]
mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use harness::infra::container::{self, Holdings};
use harness::infra::process::{descendants, is_alive};

use cli_support::BIN;
use support::docker_or_skip;

/// The bound `main.rs` documents as `INTERRUPT_EXIT_S`: signal to exit, in s.
const EXIT_WITHIN_S: u64 = 10;
/// How long a run may take to bring its infrastructure up (a Sentinel topology converging on
/// a busy two-core machine), in s.
const START_WITHIN_S: u64 = 120;
/// How long a killed process may take to be gone once the harness has exited, in s.
const GONE_WITHIN_S: u64 = 5;
const POLL_MS: u64 = 50;

/// Every test owns every descendant of this process (it is their subreaper): one at a time
/// when the runner puts several tests in one process.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A run of the binary under test, its stderr in a file (a pipe nobody drains would block a
/// long run), its output directory and Docker run label its own.
struct Run {
    child: Child,
    tag: String,
    dir: tempfile::TempDir,
}

impl Run {
    fn start(args: &[&str]) -> Run {
        // Orphans (a process whose parent, the harness, died) are re-parented here, so
        // "nothing of the run is left" is "no live descendant of this test".
        // SAFETY: prctl on this process only.
        assert_eq!(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) }, 0);
        let dir = tempfile::tempdir().unwrap();
        let tag = format!("interrupt-{}-{:08x}", std::process::id(), rand::random::<u32>());
        let stderr = std::fs::File::create(dir.path().join("stderr")).unwrap();
        let child = Command::new(BIN)
            .args(args)
            .arg("--out")
            .arg(dir.path().join("out"))
            .env("HC_RUN_TAG", &tag)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        Run { child, tag, dir }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default()
    }

    /// Waits until `ready` holds (the run's infrastructure is up), failing with the run's
    /// stderr if it ends first or takes longer than [`START_WITHIN_S`].
    async fn wait_until<F, Fut>(&mut self, what: &str, mut ready: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + Duration::from_secs(START_WITHIN_S);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("the run ended ({status}) before {what}; stderr:\n{}", self.stderr());
            }
            if ready().await {
                return;
            }
            if Instant::now() >= deadline {
                self.child.kill().unwrap();
                panic!("no {what} within {START_WITHIN_S} s; stderr:\n{}", self.stderr());
            }
            tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
        }
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) on our own child.
        assert_eq!(unsafe { libc::kill(self.child.id() as libc::pid_t, signal) }, 0);
    }

    /// The exit code and how long after `from` it came; the run is SIGKILLed and the test
    /// fails if it is still alive [`EXIT_WITHIN_S`] later.
    async fn exit_within_bound(&mut self, from: Instant) -> (i32, Duration) {
        let deadline = from + Duration::from_secs(EXIT_WITHIN_S);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status.code().unwrap_or(-1), from.elapsed());
            }
            if Instant::now() >= deadline {
                self.child.kill().unwrap();
                self.child.wait().unwrap();
                panic!("still running {EXIT_WITHIN_S} s after the signal; stderr:\n{}", self.stderr());
            }
            tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
        }
    }
}

/// The live processes below this test: the run's leftovers once it has exited.
fn live_descendants() -> Vec<String> {
    descendants(std::process::id())
        .into_iter()
        .filter(|&p| is_alive(p))
        .map(|p| format!("{p} {}", std::fs::read_to_string(format!("/proc/{p}/cmdline")).unwrap_or_default()))
        .collect()
}

/// How many live descendants' command lines contain `needle`.
fn running(needle: &str) -> usize {
    live_descendants().iter().filter(|p| p.contains(needle)).count()
}

/// A standalone run's scenarios are under way: a redis-server of a (scenario, strategy)
/// pair beside the proxy-overhead probe's own.
fn pairs_under_way() -> bool {
    running("redis-server") >= 2
}

/// Polls until no descendant is alive (a SIGKILLed process takes a moment to go), then reaps
/// the zombies re-parented here; returns what is still alive after [`GONE_WITHIN_S`].
async fn leftover_processes() -> Vec<String> {
    let gone = harness::poll_until(Duration::from_secs(GONE_WITHIN_S), Duration::from_millis(POLL_MS), || async {
        live_descendants().is_empty().then_some(())
    })
    .await;
    // SAFETY: waitpid on our own (re-parented) children; WNOHANG never blocks.
    while unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) } > 0 {}
    if gone.is_some() {
        vec![]
    } else {
        live_descendants()
    }
}

async fn holdings(d: &container::Docker, tag: &str) -> Holdings {
    container::holdings(d, tag).await.unwrap()
}

/// Who may remove what an interrupted run holds.
#[derive(Clone, Copy, PartialEq)]
enum Removal {
    /// Every part by its own handle: the binary's last-resort sweep must find nothing.
    ByHandles,
    /// Also the sweep: a container whose start was in flight when the run was dropped has no
    /// handle yet (Docker creates it all the same), and only the label finds it.
    SweepMayFindStarts,
}

/// Signals the run, then asserts the exit (code, bound, one stderr line saying so, and, by
/// `removal`, what the sweep may have found) and that no process of the run is left.
async fn interrupt_and_check(run: &mut Run, signal: libc::c_int, removal: Removal) {
    let (name, expected) = match signal {
        libc::SIGINT => ("SIGINT", 130),
        libc::SIGTERM => ("SIGTERM", 143),
        _ => unreachable!("only SIGINT and SIGTERM are interrupts"),
    };
    let sent = Instant::now();
    run.signal(signal);
    let (code, took) = run.exit_within_bound(sent).await;
    let stderr = run.stderr();
    eprintln!("{name}: exit {code} {:.1} s after the signal", took.as_secs_f64());
    assert_eq!(code, expected, "{name} must exit {expected}; stderr:\n{stderr}");
    let said: Vec<&str> = stderr.lines().filter(|l| l.contains("interrupted")).collect();
    assert_eq!(said.len(), 1, "one line must say the run was interrupted; stderr:\n{stderr}");
    assert!(said[0].starts_with(&format!("hybrid-chaos: interrupted by {name}")), "{}", said[0]);
    if removal == Removal::ByHandles {
        assert!(!said[0].contains("final sweep"), "a handle left its part to the last-resort sweep: {}", said[0]);
    }
    assert!(!stderr.contains("panicked"), "stderr:\n{stderr}");
    let left = leftover_processes().await;
    assert!(left.is_empty(), "processes of the run left after {name}: {left:?}");
    let out = run.dir.path().join("out");
    let empty: Vec<_> = std::fs::read_dir(&out)
        .map(|d| d.flatten().map(|e| e.path()).filter(|p| p.read_dir().is_ok_and(|mut d| d.next().is_none())).collect())
        .unwrap_or_default();
    assert!(empty.is_empty(), "an interrupted run left an empty run directory: {empty:?}");
}

async fn standalone_process_run(signal: libc::c_int) {
    let _serial = SERIAL.lock().await;
    let mut run = Run::start(&["run", "--quick"]);
    run.wait_until("a pair's redis-server", || async { pairs_under_way() }).await;
    interrupt_and_check(&mut run, signal, Removal::ByHandles).await;
}

#[tokio::test]
async fn sigint_ends_a_standalone_process_run() {
    standalone_process_run(libc::SIGINT).await;
}

#[tokio::test]
async fn sigterm_ends_a_standalone_process_run() {
    standalone_process_run(libc::SIGTERM).await;
}

async fn implementation_run(signal: libc::c_int) {
    let _serial = SERIAL.lock().await;
    let implementation = format!("mine={BIN} serve-impl --strategy hybrid");
    let mut run = Run::start(&["run", "--quick", "--implementation", &implementation, "--strategy", "mine"]);
    // Past `describe` (its own short-lived process): a worker serving a scenario's Redis.
    run.wait_until("an implementation worker beside a redis-server", || async {
        running("serve-impl") > 0 && pairs_under_way()
    })
    .await;
    interrupt_and_check(&mut run, signal, Removal::ByHandles).await;
}

#[tokio::test]
async fn sigint_ends_a_run_with_an_implementation() {
    implementation_run(libc::SIGINT).await;
}

#[tokio::test]
async fn sigterm_ends_a_run_with_an_implementation() {
    implementation_run(libc::SIGTERM).await;
}

#[tokio::test]
async fn sigterm_ends_the_kill_matrix() {
    let _serial = SERIAL.lock().await;
    let mut run = Run::start(&["mutants", "--quick"]);
    run.wait_until("a scenario's redis-server", || async { running("redis-server") > 0 }).await;
    interrupt_and_check(&mut run, libc::SIGTERM, Removal::ByHandles).await;
}

async fn container_run(test: &str, signal: libc::c_int) {
    let Some(d) = docker_or_skip(test).await else { return };
    let _serial = SERIAL.lock().await;
    let mut run = Run::start(&["run", "--quick", "--provider", "container"]);
    let tag = run.tag.clone();
    run.wait_until("a running container", || async { holdings(&d, &tag).await.running > 0 }).await;
    interrupt_and_check(&mut run, signal, Removal::SweepMayFindStarts).await;
    assert_eq!(holdings(&d, &tag).await, Holdings::default(), "containers or networks left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_ends_a_container_run() {
    container_run("sigint_ends_a_container_run", libc::SIGINT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_a_container_run() {
    container_run("sigterm_ends_a_container_run", libc::SIGTERM).await;
}

/// A Sentinel run in its fault window: the primary SIGKILLed (one of its five containers
/// exited), the topology watcher and the responder at work. The reported hang happened here.
async fn sentinel_run_in_its_fault(d: &container::Docker) -> Run {
    let mut run = Run::start(&["run", "--topology", "sentinel", "--scenario", "failover-kill", "--strategy", "hybrid"]);
    let tag = run.tag.clone();
    run.wait_until("the primary killed", || async {
        let h = holdings(d, &tag).await;
        h.containers() == 5 && h.exited == 1
    })
    .await;
    run
}

async fn sentinel_run(test: &str, signal: libc::c_int) {
    let Some(d) = docker_or_skip(test).await else { return };
    let _serial = SERIAL.lock().await;
    let mut run = sentinel_run_in_its_fault(&d).await;
    interrupt_and_check(&mut run, signal, Removal::ByHandles).await;
    assert_eq!(holdings(&d, &run.tag).await, Holdings::default(), "containers or networks left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_ends_a_sentinel_run() {
    sentinel_run("sigint_ends_a_sentinel_run", libc::SIGINT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_a_sentinel_run() {
    sentinel_run("sigterm_ends_a_sentinel_run", libc::SIGTERM).await;
}

#[tokio::test]
async fn a_sigkilled_process_run_leaves_no_redis_server() {
    let _serial = SERIAL.lock().await;
    let mut run = Run::start(&["run", "--quick"]);
    run.wait_until("a pair's redis-server", || async { pairs_under_way() }).await;
    run.signal(libc::SIGKILL);
    run.child.wait().unwrap();
    let left = leftover_processes().await;
    assert!(left.is_empty(), "processes left after SIGKILL (their death signal should end them): {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_sentinel_run_leaves_only_what_the_next_start_reaps() {
    let Some(d) = docker_or_skip("a_sigkilled_sentinel_run_leaves_only_what_the_next_start_reaps").await else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let mut run = sentinel_run_in_its_fault(&d).await;
    run.signal(libc::SIGKILL);
    run.child.wait().unwrap();
    // No handler ran: the containers and networks are still there, labelled with an owner
    // that is gone ...
    let left = holdings(&d, &run.tag).await;
    assert_eq!((left.containers(), left.networks), (5, 2), "{left:?}");
    assert!(leftover_processes().await.is_empty(), "a Sentinel run starts no local process");
    // ... which is exactly what the next start removes, by that label.
    container::reap_orphans(&d).await.unwrap();
    assert_eq!(holdings(&d, &run.tag).await, Holdings::default(), "the next start did not reap them");
}
