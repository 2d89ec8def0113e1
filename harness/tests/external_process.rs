//! An external implementation's processes and output are the harness's to bound: its whole
//! process tree ends with its worker (a grandchild in a session of its own and a
//! double-forked daemon included, and no zombie is left), and a protocol line longer than
//! `PROTOCOL_LINE_MAX_BYTES` is a problem that the harness does not buffer.
//! No Redis: these programs never connect to the URLs they are given.

use std::path::{Path, PathBuf};
use std::time::Duration;

use harness::external::{ExternalSpec, Hello, Worker, PROTOCOL_LINE_MAX_BYTES};
use harness::infra::process::is_alive;
use harness::reference::{Config, FeedbackStrategy};

/// Answers hello, init, stats and shutdown. At init it starts `setsid sleep 600` (its own
/// session; stdout inherited, as `setsid sleep 600 &` in a shell would) and a double-forked
/// daemon (re-parented at once), writing their pids to `PIDS`. At a wait: `crash` exits 3,
/// `long` prints 2 MiB without a newline and then keeps printing (until its stdout closes),
/// anything else never answers.
const STUB: &str = r#"
import json, os, sys, time
mode, pids = sys.argv[1], sys.argv[2]
def spawn_children():
    out = []
    pid = os.fork()
    if pid == 0:
        os.setsid()
        os.execvp("sleep", ["sleep", "600"])
    out.append(pid)
    r, w = os.pipe()
    mid = os.fork()
    if mid == 0:
        os.setsid()
        if os.fork() == 0:
            os.write(w, str(os.getpid()).encode())
            os.close(w)
            fd = os.open(os.devnull, os.O_RDWR)
            for i in (0, 1, 2):
                os.dup2(fd, i)
            os.execvp("sleep", ["sleep", "600"])
        os._exit(0)
    os.close(w)
    out.append(int(os.read(r, 32)))
    os.waitpid(mid, 0)
    with open(pids + ".tmp", "w") as f:
        f.write(" ".join(map(str, out)))
    os.rename(pids + ".tmp", pids)
def answer(m, v):
    print(json.dumps({"req": m["req"], "outcome": "ok", "value": v}), flush=True)
for line in sys.stdin:
    m = json.loads(line)
    op = m["op"]
    if op == "hello":
        answer(m, {"name": "stub", "notifies": True, "polls": True})
    elif op == "init":
        spawn_children()
        answer(m, {})
    elif op == "stats":
        answer(m, {"waiters": 0, "channels": 0, "pending_polls": 0, "reconnects": 0})
    elif op == "shutdown":
        answer(m, {})
        break
    elif op == "wait" and mode == "crash":
        sys.exit(3)
    elif op == "wait" and mode == "long":
        sys.stdout.write("x" * (2 * 1024 * 1024))
        chunk = "y" * (1024 * 1024)
        while True:
            sys.stdout.write(chunk)
"#;

fn spec(dir: &Path, mode: &str) -> (ExternalSpec, PathBuf) {
    let stub = dir.join("stub.py");
    std::fs::write(&stub, STUB).unwrap();
    let pids = dir.join(format!("{mode}.pids"));
    let spec = ExternalSpec {
        name: format!("stub-{mode}"),
        command: format!("exec python3 {} {mode} {}", stub.display(), pids.display()),
        log_dir: dir.into(),
        hello: Hello { notifies: true, polls: true, ..Hello::default() },
        answer_grace_ms: 1_000,
    };
    (spec, pids)
}

async fn start(spec: &ExternalSpec) -> Worker {
    Worker::start(spec, "feedback", "redis://127.0.0.1:1/", "redis://127.0.0.1:1/", &Config::default()).await.unwrap()
}

fn grandchildren(pids: &Path) -> Vec<u32> {
    let text = std::fs::read_to_string(pids).expect("the stub wrote its children's pids at init");
    text.split_whitespace().map(|p| p.parse().unwrap()).collect()
}

/// Waits up to 5 s for every pid to be gone (a zombie counts as gone).
async fn all_gone(pids: &[u32]) -> Vec<u32> {
    let _ = harness::poll_until(Duration::from_secs(5), Duration::from_millis(10), || async {
        pids.iter().all(|p| !is_alive(*p)).then_some(())
    })
    .await;
    pids.iter().copied().filter(|p| is_alive(*p)).collect()
}

/// Zombie children of this process (what a subreaper that does not reap would pile up).
fn zombie_children() -> Vec<u32> {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let f: Vec<&str> = stat.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
            f.first() == Some(&"Z") && f.get(1) == Some(&me.as_str())
        })
        .collect()
}

async fn ends_its_tree(mode: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (spec, pids) = spec(dir.path(), mode);
    let worker = start(&spec).await;
    let kids = grandchildren(&pids);
    assert_eq!(kids.len(), 2);
    assert!(kids.iter().all(|p| is_alive(*p)), "{kids:?}");
    match mode {
        "crash" => {
            // The program ends on its own: its children are orphans now.
            assert!(worker.wait("w", Duration::from_millis(200)).await.is_err());
            worker.shutdown().await;
        }
        "drop" => drop(worker),
        _ => worker.shutdown().await,
    }
    assert_eq!(all_gone(&kids).await, Vec::<u32>::new(), "{mode}: processes of the implementation outlived it");
    let zombies = harness::poll_until(Duration::from_secs(5), Duration::from_millis(10), || async {
        zombie_children().is_empty().then_some(())
    })
    .await;
    assert!(zombies.is_some(), "{mode}: zombies left: {:?}", zombie_children());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shut_down_worker_ends_its_whole_tree_a_setsid_grandchild_included() {
    ends_its_tree("shutdown").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_that_crashed_leaves_no_grandchild_once_its_worker_ends() {
    ends_its_tree("crash").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_worker_ends_its_whole_tree() {
    ends_its_tree("drop").await;
}

/// Peak resident set of this process, in kB.
fn vm_hwm_kb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_over_long_line_is_a_protocol_problem_and_is_not_buffered() {
    let dir = tempfile::tempdir().unwrap();
    let (spec, pids) = spec(dir.path(), "long");
    let before = vm_hwm_kb();
    let worker = start(&spec).await;
    let err = worker.wait("w", Duration::from_millis(200)).await.unwrap_err().to_string();
    let limit = PROTOCOL_LINE_MAX_BYTES.to_string();
    assert!(err.contains(&limit), "the wait's error names the limit: {err}");
    let problems = worker.problems().join("\n");
    assert!(problems.contains("PROTOCOL_LINE_MAX_BYTES") && problems.contains(&limit), "{problems}");
    assert!(problems.contains("ended before shutdown"), "the program is treated as ended: {problems}");
    // The program kept printing (1 MiB at a time, until its stdout closed): none of it stays.
    let grown_kb = vm_hwm_kb().saturating_sub(before);
    assert!(grown_kb < 32 * 1024, "the harness's peak RSS grew by {grown_kb} kB");
    worker.shutdown().await;
    assert_eq!(all_gone(&grandchildren(&pids)).await, Vec::<u32>::new());
}
