//! `proxy_overhead`: what the embedded fault proxy adds, measured against a real
//! `redis-server`, direct vs proxied, interleaved so both sides share the machine's noise:
//!
//! - PING p50/p99 with one client, and with 200 connections open (the harness's own client,
//!   a redis-rs multiplexed connection, so the figures are what the reports' latencies carry);
//! - pipelined SET throughput, 4 clients with 32 commands in flight each (bare RESP over TCP,
//!   so the client is not the bottleneck);
//! - the 5 ms latency toxic's accuracy: what it adds over the plain proxied PING, minus 5 ms.
//!
//! Beside the proxy, a control forwarder: a thread per direction doing blocking copies, the
//! least any extra TCP hop can cost. Where the proxy's tail matches the control's, the tail
//! belongs to the hop (two more thread wake-ups per round trip), not to the proxy's code.
//!
//! It runs twice: quiet, then beside `stress-ng --cpu 2` (skipped, and said so, when
//! stress-ng is not installed). The targets (`hybrid_chaos_benches::proxy_targets`) are
//! judged on the quiet run; the loaded run is reported as measured.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream as StdTcpStream};
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion};
use harness::infra::RedisNode;
use harness::toxiproxy::{Stream, Toxic, ToxicKind};
use hybrid_chaos_benches::{connect, ping, proxy_targets, quantiles_us, record, BenchRig};
use redis::aio::MultiplexedConnection;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// PING rounds (one PING per side per round) with one client.
const PING_ROUNDS: usize = 5_000;
/// Connections held open per side in the many-connections run.
const CONNECTIONS: usize = 200;
/// PINGs per connection in the many-connections run.
const PINGS_PER_CONNECTION: usize = 10;
/// Pipelined clients and commands in flight per client (`redis-benchmark -P 32 -c 4`).
const PIPELINE_CLIENTS: usize = 4;
const PIPELINE_DEPTH: usize = 32;
/// The throughput run alternates sides in slots of this many milliseconds, this many per side.
const THROUGHPUT_SLOT_MS: u64 = 500;
const THROUGHPUT_SLOTS: usize = 4;
/// The latency toxic under test, in milliseconds, and how many PINGs go through it.
const TOXIC_LATENCY_MS: u64 = 5;
const TOXIC_ROUNDS: usize = 500;
/// stress-ng's workers in the loaded run: one per core of the 2-core reference machine.
const HOG_WORKERS: &str = "2";

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let rig = rt.block_on(BenchRig::start());
    let control = control_forwarder(rig.redis.addr().parse().expect("redis address"));
    let toxic_url = rt.block_on(latency_proxy(&rig));
    let urls = Urls {
        direct: rig.redis.url(),
        proxied: rig.proxied_url.clone(),
        control: format!("redis://{control}/"),
        toxic: toxic_url,
    };

    let mut direct = rt.block_on(connect(&urls.direct));
    let mut proxied = rt.block_on(connect(&urls.proxied));
    let mut g = c.benchmark_group("proxy_overhead");
    for (name, conn) in [("direct", &mut direct), ("proxied", &mut proxied)] {
        g.bench_function(name, |b| b.iter_custom(|iters| rt.block_on(async { sum_pings(conn, iters).await })));
    }
    g.finish();
    drop((direct, proxied));

    let quiet = rt.block_on(measure(&urls, &rig));
    let loaded = match CpuHog::start() {
        Ok(hog) => {
            let mut phase = rt.block_on(measure(&urls, &rig));
            phase["load"] = format!("stress-ng --cpu {HOG_WORKERS}").into();
            drop(hog);
            phase
        }
        Err(why) => serde_json::json!({ "skipped": why }),
    };
    let mut result = serde_json::json!({
        "bench": "proxy_overhead",
        "client": "PING: redis-rs multiplexed connection (the harness's client); throughput: bare RESP over TCP",
        "quiet": quiet,
        "loaded": loaded,
    });
    result["targets"] = proxy_targets(&result);
    print_table(&result);
    record("proxy_overhead", &result);
    drop(rig);
}

struct Urls {
    direct: String,
    proxied: String,
    control: String,
    toxic: String,
}

/// One run of every measurement.
async fn measure(urls: &Urls, rig: &BenchRig) -> serde_json::Value {
    let one = ping_one_client(urls).await;
    let many = ping_many_connections(urls).await;
    let direct_addr = rig.redis.addr();
    let proxied_addr = rig.proxied_url.trim_start_matches("redis://").trim_end_matches('/').to_string();
    let (d_ops, p_ops) = pipelined_throughput(&direct_addr, &proxied_addr).await;
    let toxic = latency_toxic_accuracy(urls).await;
    serde_json::json!({
        "load": "none",
        "ping_one_client": one,
        "ping_200_connections": many,
        "pipelined_set": { "direct_ops_s": d_ops, "proxied_ops_s": p_ops, "ratio": p_ops / d_ops },
        "latency_toxic": toxic,
    })
}

async fn ping_one_client(urls: &Urls) -> serde_json::Value {
    let mut conns = [connect(&urls.direct).await, connect(&urls.proxied).await, connect(&urls.control).await];
    let mut samples = [Vec::new(), Vec::new(), Vec::new()];
    for _ in 0..PING_ROUNDS {
        for (c, s) in conns.iter_mut().zip(samples.iter_mut()) {
            s.push(ping(c).await);
        }
    }
    let [d, p, k] = &mut samples;
    serde_json::json!({ "direct": quantiles_us(d), "proxied": quantiles_us(p), "control": quantiles_us(k) })
}

async fn ping_many_connections(urls: &Urls) -> serde_json::Value {
    let mut direct: Vec<MultiplexedConnection> = Vec::with_capacity(CONNECTIONS);
    let mut proxied: Vec<MultiplexedConnection> = Vec::with_capacity(CONNECTIONS);
    let (mut d_setup, mut p_setup) = (Vec::new(), Vec::new());
    for _ in 0..CONNECTIONS {
        let t = Instant::now();
        direct.push(connect(&urls.direct).await);
        d_setup.push(t.elapsed());
        let t = Instant::now();
        proxied.push(connect(&urls.proxied).await);
        p_setup.push(t.elapsed());
    }
    let (mut d, mut p) = (Vec::new(), Vec::new());
    for _ in 0..PINGS_PER_CONNECTION {
        for (dc, pc) in direct.iter_mut().zip(proxied.iter_mut()) {
            d.push(ping(dc).await);
            p.push(ping(pc).await);
        }
    }
    serde_json::json!({
        "connections": CONNECTIONS,
        "direct": quantiles_us(&mut d),
        "proxied": quantiles_us(&mut p),
        "connect_direct": quantiles_us(&mut d_setup),
        "connect_proxied": quantiles_us(&mut p_setup),
    })
}

/// SETs per second through each side, alternating slots so both see the same noise.
async fn pipelined_throughput(direct: &str, proxied: &str) -> (f64, f64) {
    let (mut d_ops, mut p_ops, mut d_time, mut p_time) = (0u64, 0u64, Duration::ZERO, Duration::ZERO);
    for _ in 0..THROUGHPUT_SLOTS {
        let (n, t) = pipelined_slot(direct).await;
        d_ops += n;
        d_time += t;
        let (n, t) = pipelined_slot(proxied).await;
        p_ops += n;
        p_time += t;
    }
    (d_ops as f64 / d_time.as_secs_f64(), p_ops as f64 / p_time.as_secs_f64())
}

async fn pipelined_slot(addr: &str) -> (u64, Duration) {
    let slot = Duration::from_millis(THROUGHPUT_SLOT_MS);
    let started = Instant::now();
    let clients = (0..PIPELINE_CLIENTS).map(|i| {
        let addr = addr.to_string();
        tokio::spawn(async move {
            let key = format!("bench:pipe:{i}");
            let one = format!("*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n$1\r\nv\r\n", key.len());
            let batch = one.repeat(PIPELINE_DEPTH).into_bytes();
            let replies = b"+OK\r\n".len() * PIPELINE_DEPTH;
            let mut s = tokio::net::TcpStream::connect(&addr).await.expect("connect for the throughput run");
            s.set_nodelay(true).unwrap();
            let mut buf = vec![0u8; replies];
            let mut done = 0u64;
            while started.elapsed() < slot {
                s.write_all(&batch).await.expect("write a batch");
                s.read_exact(&mut buf).await.expect("read a batch's replies");
                done += PIPELINE_DEPTH as u64;
            }
            done
        })
    });
    let mut total = 0;
    for c in clients.collect::<Vec<_>>() {
        total += c.await.expect("throughput client");
    }
    (total, started.elapsed())
}

/// PING through the latency proxy and through the plain proxy, interleaved; what the toxic
/// adds at each quantile, in milliseconds.
async fn latency_toxic_accuracy(urls: &Urls) -> serde_json::Value {
    let mut toxic = connect(&urls.toxic).await;
    let mut plain = connect(&urls.proxied).await;
    let (mut t, mut p) = (Vec::new(), Vec::new());
    for _ in 0..TOXIC_ROUNDS {
        t.push(ping(&mut toxic).await);
        p.push(ping(&mut plain).await);
    }
    let (tq, pq) = (quantiles_us(&mut t), quantiles_us(&mut p));
    let added_ms = |k: &str| (tq[k].as_f64().unwrap_or(f64::NAN) - pq[k].as_f64().unwrap_or(f64::NAN)) / 1000.0;
    let least_ms = t.iter().min().map_or(f64::NAN, |d| d.as_secs_f64() * 1e3);
    serde_json::json!({
        "requested_ms": TOXIC_LATENCY_MS,
        "through_toxic": tq,
        "plain_proxy": pq,
        "added_p50_ms": added_ms("p50"),
        "added_p99_ms": added_ms("p99"),
        "least_round_trip_ms": least_ms,
    })
}

/// A second proxy in front of the same Redis, with the latency toxic under test.
async fn latency_proxy(rig: &BenchRig) -> String {
    let tp = rig.faults.client();
    let name = format!("{}-latency", rig.proxy_name);
    let p = tp.create_proxy(&name, "127.0.0.1:0", &rig.redis.addr()).await.expect("latency proxy");
    let toxic = Toxic::new(ToxicKind::Latency { latency_ms: TOXIC_LATENCY_MS, jitter_ms: 0 }, Stream::Downstream);
    tp.add_toxic(&name, &toxic).await.expect("latency toxic");
    format!("redis://{}/", p.listen)
}

/// The control: a blocking forwarder, one OS thread per direction, no toxics, no runtime.
/// Runs until the bench process exits.
fn control_forwarder(upstream: SocketAddr) -> SocketAddr {
    fn copy(mut from: StdTcpStream, mut to: StdTcpStream) {
        let mut buf = [0u8; 32 * 1024];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 || to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Write);
    }
    let listener = TcpListener::bind("127.0.0.1:0").expect("control forwarder listens");
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let Ok(server) = StdTcpStream::connect(upstream) else { continue };
            let _ = (client.set_nodelay(true), server.set_nodelay(true));
            let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(move || copy(client, server));
            std::thread::spawn(move || copy(s2, c2));
        }
    });
    addr
}

/// `stress-ng --cpu 2` for the loaded run; killed on drop.
struct CpuHog(std::process::Child);

impl CpuHog {
    fn start() -> Result<CpuHog, String> {
        let child = std::process::Command::new("stress-ng")
            .args(["--cpu", HOG_WORKERS, "--timeout", "600s", "--quiet"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| format!("stress-ng not started ({e}); install it (apt-get install stress-ng)"))?;
        // Let the hog workers reach full speed before measuring.
        std::thread::sleep(Duration::from_secs(1));
        Ok(CpuHog(child))
    }
}

impl Drop for CpuHog {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn sum_pings(c: &mut MultiplexedConnection, n: u64) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..n {
        total += ping(c).await;
    }
    total
}

fn print_table(result: &serde_json::Value) {
    println!("\nproxy_overhead targets (judged on the quiet run; the loaded run as measured):");
    for t in result["targets"].as_array().into_iter().flatten() {
        println!(
            "  {:<44} {:<26} quiet {:>10} {:<8} loaded {:>10} {}",
            t["target"].as_str().unwrap_or(""),
            t["bound"].as_str().unwrap_or(""),
            t["quiet"].as_f64().map_or("n/a".into(), |v| format!("{v:.2}")),
            match t["quiet_met"].as_bool() {
                Some(true) => "met",
                Some(false) => "NOT MET",
                None => "n/a",
            },
            t["loaded"].as_f64().map_or("n/a".into(), |v| format!("{v:.2}")),
            match t["loaded_met"].as_bool() {
                Some(true) => "(within)",
                Some(false) => "(beyond)",
                None => "",
            },
        );
    }
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
