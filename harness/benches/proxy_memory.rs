//! Does the fault proxy's memory come back after connections close? Prints a standalone
//! proxy's RSS after each of [`ROUNDS`] rounds of [`CONNECTIONS`] concurrent connections (each
//! a round trip of [`PAYLOAD_BYTES`], all open at once, then all closed), and the ratio of the
//! last round to the first. Two proxies run side by side, round for round, so both figures
//! come from the same machine under the same load: one with no toxic (the plain copy path),
//! one with a 1 ms latency toxic downstream (the delay line). Measures, asserts nothing.
//!
//! Each proxy runs in a child process (this binary again, with [`CHILD_ENV`] set), as
//! `hybrid-chaos toxiproxy` runs standalone: its RSS is its own, not the load generator's.
//! Before the per-thread read buffer, RSS went 13.4 -> 125 MB over 8 rounds and never came
//! back (two 32 KiB buffers per connection for its whole life; glibc keeps the pages).
//!
//! Run: `cargo bench -p hybrid-chaos --bench proxy_memory`.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use harness::toxiproxy::server::{EmbeddedToxiproxy, ServerOptions};
use harness::toxiproxy::{Stream, Toxic, ToxicKind, ToxiproxyClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

// The tests' helpers: the same echo server upstream.
#[path = "../tests/support/mod.rs"]
mod support;

const ROUNDS: usize = 8;
const CONNECTIONS: usize = 2_000;
/// Bytes each client sends and reads back: enough to fill a read buffer's pages.
const PAYLOAD_BYTES: usize = 16 * 1024;
/// Connects in flight at once, below the listeners' backlog (1,024), so no SYN is dropped
/// and retried a second later.
const CONNECTS_IN_FLIGHT_MAX: usize = 256;
/// How long a round waits for the proxy's descriptors to come back to their baseline, in ms.
const SETTLE_WAIT_MS: u64 = 10_000;
const CHILD_ENV: &str = "PROXY_MEMORY_CHILD";

fn main() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return child();
    }
    raise_fd_limit();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(parent());
}

/// The proxy: the embedded server on a runtime like the standalone command's; prints its URL
/// and runs until stdin closes (the parent exits or drops it).
fn child() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let s = EmbeddedToxiproxy::start(([127, 0, 0, 1], 0).into(), ServerOptions::default()).await.unwrap();
        println!("{}", s.url());
        tokio::task::spawn_blocking(|| std::io::copy(&mut std::io::stdin(), &mut std::io::sink())).await.unwrap().ok();
        s.shutdown().await;
    });
}

struct Proxy {
    child: Child,
    listen: String,
}

impl Proxy {
    async fn start(upstream: &str, latency: bool) -> Proxy {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env(CHILD_ENV, "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let client = ToxiproxyClient::new(line.trim()).unwrap();
        let proxy = client.create_proxy("bench", "127.0.0.1:0", upstream).await.unwrap();
        if latency {
            let toxic = Toxic::new(ToxicKind::Latency { latency_ms: 1, jitter_ms: 0 }, Stream::Downstream);
            client.add_toxic("bench", &toxic).await.unwrap();
        }
        Proxy { child, listen: proxy.listen }
    }

    fn status(&self, key: &str) -> u64 {
        let text = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = text.lines().find(|l| l.starts_with(key)).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    fn rss_mb(&self) -> f64 {
        self.status("VmRSS:") as f64 / 1024.0
    }

    fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id())).map(|d| d.count()).unwrap_or(0)
    }

    /// Waits (bounded) until the proxy holds no more descriptors than at `baseline`.
    async fn settle(&self, baseline: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(SETTLE_WAIT_MS);
        while self.fds() > baseline && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One round: every client connects, sends its payload, reads it back, and stays open until
/// all have; then all close.
async fn round(listen: &str) {
    let gate = Arc::new(tokio::sync::Semaphore::new(CONNECTS_IN_FLIGHT_MAX));
    let payload: Arc<Vec<u8>> = Arc::new((0..PAYLOAD_BYTES).map(|i| (i % 251) as u8).collect());
    let mut clients = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        let (gate, payload, listen) = (gate.clone(), payload.clone(), listen.to_string());
        clients.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await.unwrap();
            let mut c = tokio::net::TcpStream::connect(&listen).await.unwrap();
            c.write_all(&payload).await.unwrap();
            let mut back = vec![0u8; payload.len()];
            c.read_exact(&mut back).await.unwrap();
            c
        }));
    }
    let mut open = Vec::with_capacity(CONNECTIONS);
    for c in clients {
        open.push(c.await.unwrap());
    }
    drop(open);
}

async fn parent() {
    let upstream = support::echo_server().await;
    let proxies =
        [("no toxic", Proxy::start(&upstream, false).await), ("latency 1 ms", Proxy::start(&upstream, true).await)];
    let baselines: Vec<usize> = proxies.iter().map(|(_, p)| p.fds()).collect();
    let fresh: Vec<f64> = proxies.iter().map(|(_, p)| p.rss_mb()).collect();
    println!("proxy RSS in MB, {ROUNDS} rounds of {CONNECTIONS} concurrent connections ({PAYLOAD_BYTES} B each way)");
    println!("{:>8} {:>12} {:>14}", "round", proxies[0].0, proxies[1].0);
    println!("{:>8} {:>12.1} {:>14.1}", "fresh", fresh[0], fresh[1]);
    let mut rss = vec![Vec::new(); proxies.len()];
    for r in 1..=ROUNDS {
        // Side by side: each proxy gets its round in turn, under the same machine load.
        for (i, (_, p)) in proxies.iter().enumerate() {
            round(&p.listen).await;
            p.settle(baselines[i]).await;
            rss[i].push(p.rss_mb());
        }
        println!("{r:>8} {:>12.1} {:>14.1}", rss[0][r - 1], rss[1][r - 1]);
    }
    for (i, (name, _)) in proxies.iter().enumerate() {
        let (first, last) = (rss[i][0], rss[i][ROUNDS - 1]);
        println!("{name}: last/first round {:.2} ({first:.1} -> {last:.1} MB)", last / first);
    }
}

/// 2,000 connections through a proxy are 4,000 descriptors in the child and 4,000 here:
/// the soft limit is raised to the hard one (the child inherits it).
fn raise_fd_limit() {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain syscalls on a valid rlimit struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}
