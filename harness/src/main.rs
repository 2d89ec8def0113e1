//! The `hybrid-chaos` command line: a thin shell over the `harness` library.
//!
//! Exit codes: 0 success, 2 bad input or infrastructure failure (a one-line error on stderr).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use harness::infra::{Persistence, ProcessRedis, RedisNode, RedisSpec};
use harness::toxiproxy::server::{EmbeddedToxiproxy, ServerOptions};
use harness::toxiproxy::ToxiproxyClient;

#[derive(Parser)]
#[command(
    name = "hybrid-chaos",
    version,
    about = "Chaos harness for the Redis storage + Pub/Sub hybrid notification pattern"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the Toxiproxy-compatible fault proxy server (REST API on --listen).
    Toxiproxy {
        /// Address of the REST API.
        #[arg(long, default_value = "127.0.0.1:8474")]
        listen: SocketAddr,
        /// A JSON array of proxies to create at start (Toxiproxy's -config populate file).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Seed for the proxy's random choices (toxicity rolls, jitter, slice sizes).
        #[arg(long)]
        seed: Option<u64>,
        /// Allow upstreams that are not loopback addresses.
        #[arg(long)]
        allow_remote_upstream: bool,
    },
    /// Start a managed redis-server and keep it until interrupted (it dies with this process).
    Redis {
        #[arg(long)]
        port: Option<u16>,
        #[arg(long, value_enum, default_value_t = PersistenceArg::None)]
        persistence: PersistenceArg,
        /// Print `pid=<redis pid> port=<port>` once it is ready.
        #[arg(long)]
        print_pid: bool,
    },
    /// End-to-end check of the foundation (real Redis, fault proxy, latency, crash + restart).
    Smoke,
}

#[derive(Clone, Copy, ValueEnum)]
enum PersistenceArg {
    None,
    Rdb,
    AofEverysec,
    AofAlways,
}

impl From<PersistenceArg> for Persistence {
    fn from(p: PersistenceArg) -> Persistence {
        match p {
            PersistenceArg::None => Persistence::None,
            PersistenceArg::Rdb => Persistence::Rdb,
            PersistenceArg::AofEverysec => Persistence::AofEverysec,
            PersistenceArg::AofAlways => Persistence::AofAlways,
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM.
async fn interrupted() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Toxiproxy {
            listen,
            config,
            seed,
            allow_remote_upstream,
        } => {
            let options = ServerOptions {
                allow_remote_upstream,
                seed,
            };
            let server = EmbeddedToxiproxy::start(listen, options)
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
            if let Some(path) = config {
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
                let proxies: Vec<serde_json::Value> = serde_json::from_str(&text).map_err(|e| {
                    anyhow::anyhow!("{} is not a JSON array of proxies: {e}", path.display())
                })?;
                let client = ToxiproxyClient::new(&server.url())?;
                let packs = proxies
                    .iter()
                    .map(|p| {
                        let field = |k: &str| p.get(k).and_then(|v| v.as_str()).map(str::to_string);
                        match (field("name"), field("listen"), field("upstream")) {
                            (Some(n), Some(l), Some(u)) => Ok((n, l, u)),
                            _ => Err(anyhow::anyhow!(
                                "{}: every proxy needs name, listen and upstream",
                                path.display()
                            )),
                        }
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?;
                client.populate(packs).await?;
            }
            eprintln!("toxiproxy-compatible API listening on {}", server.url());
            server.run_until(interrupted()).await;
            Ok(())
        }
        Command::Redis {
            port,
            persistence,
            print_pid,
        } => {
            let spec = RedisSpec {
                port,
                persistence: persistence.into(),
                ..RedisSpec::default()
            };
            let redis = ProcessRedis::start(spec).await?;
            if print_pid {
                println!("pid={} port={}", redis.pid().unwrap_or(0), redis.port());
            } else {
                eprintln!(
                    "redis-server ready at {} (data in {})",
                    redis.url(),
                    redis.data_dir().display()
                );
            }
            interrupted().await;
            drop(redis);
            Ok(())
        }
        Command::Smoke => {
            let report = harness::smoke::run().await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HYBRID_CHAOS_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("build the tokio runtime");
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the causes joined, so CI logs and terminals show the whole reason.
            let msg = e
                .chain()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(": ");
            eprintln!("hybrid-chaos: error: {}", msg.replace('\n', " | "));
            ExitCode::from(2)
        }
    }
}
