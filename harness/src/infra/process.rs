//! Child processes that die with the harness.
//!
//! Each child is started with `PR_SET_PDEATHSIG = SIGKILL`, so the kernel kills it when the
//! harness dies, even by SIGKILL, when no `Drop` runs. The death signal is tied to the
//! *thread* that forked the child, not the process: a child forked from a tokio blocking
//! thread or a test thread would be killed when that thread exits. So every fork happens on
//! one dedicated thread that lives as long as the process.

use std::io;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

fn spawner() -> &'static Mutex<mpsc::Sender<SpawnRequest>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("hybrid-chaos-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("spawn the process-spawner thread");
        Mutex::new(tx)
    })
}

/// Spawns `cmd` so that it is SIGKILLed when this process dies.
pub fn spawn_owned(mut cmd: Command) -> io::Result<Child> {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs in the forked child before exec and only calls
    // async-signal-safe functions (prctl, getppid).
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl; then no signal would come.
            if libc::getppid() != parent {
                return Err(io::Error::other("parent exited before the child was set up"));
            }
            Ok(())
        });
    }
    let (tx, rx) = mpsc::channel();
    spawner().lock().expect("spawner lock").send((cmd, tx)).map_err(|_| io::Error::other("spawner thread is gone"))?;
    rx.recv().map_err(|_| io::Error::other("spawner thread is gone"))?
}

/// Sends `signal` to `pid`.
pub fn signal(pid: u32, signal: libc::c_int) -> io::Result<()> {
    // SAFETY: kill(2) with a pid we own; no memory is shared.
    if unsafe { libc::kill(pid as libc::pid_t, signal) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// SIGKILLs every live descendant of this process (children, their children, ...): the
/// last resort of an interrupted run, for what its handles did not end (an implementation's
/// process group survives this process otherwise; a `redis-server` would only die with it,
/// by its death signal). Returns how many were killed. A descendant that has left the tree
/// (a daemon re-parented away) is out of its reach.
pub fn kill_descendants() -> usize {
    descendants(std::process::id())
        .into_iter()
        .filter(|&pid| is_alive(pid) && signal(pid, libc::SIGKILL).is_ok())
        .count()
}

/// Every process below `pid` in the process tree (zombies included), found through
/// `/proc`, parents before their children.
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut parent_of = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(child) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
            // Field 4 is the parent; split after the last ')' as in `is_alive`.
            let ppid = std::fs::read_to_string(format!("/proc/{child}/stat")).ok().and_then(|stat| {
                stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
            });
            if let Some(ppid) = ppid {
                parent_of.push((child, ppid));
            }
        }
    }
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let p = tree[i];
        tree.extend(parent_of.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    tree.split_off(1)
}

/// Whether `pid` is a live process (a zombie counts as dead: it no longer runs or listens).
pub fn is_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // Field 3 is the state; the command name before it is in parentheses and may hold
        // spaces, so split after the last ')'.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|s| s != "Z" && s != "X"),
        Err(_) => false,
    }
}

/// A currently free loopback port. Another process may take it before it is used; callers
/// that bind it later retry on "address in use".
pub fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port())
}

/// Whether `port` on 127.0.0.1 can be bound right now.
pub fn port_is_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// Finds an executable: a path is taken as is, a bare name is looked up on `PATH`.
pub fn find_executable(name: &std::path::Path) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let runnable = |p: &std::path::Path| p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if name.components().count() > 1 {
        return runnable(name).then(|| name.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|p| runnable(p))
}
