//! The command line's shape: every subcommand and its flags (clap derive), documented where
//! `--help` shows them. What each does is `main.rs`'s (the runs) and `tools.rs`'s (the rest).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use harness::infra::Persistence;

#[derive(Parser)]
#[command(
    name = "hybrid-chaos",
    version,
    about = "Chaos harness for the Redis storage + Pub/Sub hybrid notification pattern"
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand)]
pub(crate) enum Command {
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
        /// Allow listen addresses that are not loopback, for the API (--listen) and for the
        /// proxies it creates: without it, `0.0.0.0:P` is refused, since it would expose the
        /// proxy, and the loopback Redis behind it, to every network this machine is on.
        #[arg(long)]
        allow_remote_listen: bool,
    },
    /// Start a managed redis-server and keep it until interrupted (it dies with this process).
    Redis {
        /// Port to listen on (loopback); default a free one.
        #[arg(long)]
        port: Option<u16>,
        /// What survives a crash: nothing, RDB snapshots, or the AOF synced every second or
        /// on every write.
        #[arg(long, value_enum, default_value_t = PersistenceArg::None)]
        persistence: PersistenceArg,
        /// Print `pid=<redis pid> port=<port>` once it is ready.
        #[arg(long)]
        print_pid: bool,
    },
    /// End-to-end check of the foundation (real Redis, fault proxy, latency, crash + restart).
    Smoke,
    /// List the scenarios and strategies.
    List,
    /// Run scenarios x strategies against a real Redis behind the fault proxy and write the
    /// report. Exit 0: every verdict as expected; 1: a mismatch; 2: unknown or infra failure;
    /// 130 / 143: interrupted by SIGINT / SIGTERM (its processes, containers and networks
    /// removed, no report).
    Run {
        /// Scenario to run (repeatable); default all.
        #[arg(long = "scenario")]
        scenarios: Vec<String>,
        /// Strategy to run (repeatable): hybrid, pubsub-only, polling-only, or the design
        /// variant hybrid-payload; default the three strategies.
        #[arg(long = "strategy")]
        strategies: Vec<String>,
        /// Seed for the workload's schedule and the proxy's randomness; default a fresh one.
        #[arg(long)]
        seed: Option<u64>,
        /// Smaller workload and shorter fault windows (CI).
        #[arg(long)]
        quick: bool,
        /// Where run directories go.
        #[arg(long, default_value = "reports/out")]
        out: PathBuf,
        /// (scenario, strategy) pairs run at once, each on its own Redis and proxies.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=16))]
        jobs: u16,
        /// Run the hybrid with this deliberately broken variant (see `hybrid-chaos mutants`),
        /// e.g. to reproduce a kill; its verdicts are findings, not mismatches.
        #[arg(long)]
        mutant: Option<String>,
        /// Where each run's Redis runs: a child process (default), or a container started
        /// through testcontainers from HYBRID_CHAOS_REDIS_IMAGE (needs Docker).
        #[arg(long, default_value = "process", value_parser = ["process", "container"])]
        provider: String,
        /// standalone: one server per run (the catalogue). sentinel: a primary, a replica and
        /// three Sentinels in containers (needs Docker), with the failover scenarios for the
        /// hybrid as deployed and with the durability option (hybrid-durable); the report
        /// adds the loss table.
        #[arg(long, default_value = "standalone", value_parser = ["standalone", "sentinel"])]
        topology: String,
        /// An implementation the harness did not write (repeatable): NAME=COMMAND, a program
        /// speaking the JSON-lines protocol of harness/PROTOCOL.md, run through `sh -c`, one
        /// process per worker. Runs beside the strategies in every feedback scenario; its
        /// stderr goes to the run directory.
        #[arg(long = "implementation", value_name = "NAME=COMMAND")]
        implementations: Vec<String>,
    },
    /// Serve a built-in strategy over the process protocol (harness/PROTOCOL.md) on
    /// stdin/stdout: `run --implementation NAME='hybrid-chaos serve-impl --strategy hybrid'`
    /// must give the verdicts the strategy gives in-process.
    ServeImpl {
        /// hybrid, pubsub-only, polling-only or hybrid-payload.
        #[arg(long, default_value = "hybrid")]
        strategy: String,
    },
    /// Run every catalogued mutation of the reference (deliberately broken hybrids) through
    /// the scenario suite, and through a 40-case property search when the suite misses one;
    /// write mutants.md / mutants.json. Exit 1 if any mutant survives; 130 / 143 when
    /// interrupted by SIGINT / SIGTERM.
    Mutants {
        /// The quick budget (the bar: every mutant killed by the quick suite or the search).
        #[arg(long)]
        quick: bool,
        /// Only these mutations (repeatable); default all.
        #[arg(long = "mutant")]
        mutants: Vec<String>,
        /// Seed for the workload's schedule, the proxy and the property search.
        #[arg(long)]
        seed: Option<u64>,
        /// Where the run directory goes.
        #[arg(long, default_value = "reports/out")]
        out: PathBuf,
        /// Scenario runs at once, each on its own Redis and proxies.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=16))]
        jobs: u16,
        /// Skip the property search for mutants the suite did not kill.
        #[arg(long)]
        no_property: bool,
    },
    /// Replay one generated case (the JSON a property search prints with its counterexample)
    /// on a Redis and proxies of its own, `--runs` times, and print each run's failing checks.
    /// Exit 1 if any run was invalid.
    Case {
        /// The case: a JSON file, or - for standard input.
        file: PathBuf,
        #[arg(long, default_value = "hybrid")]
        strategy: String,
        /// A catalogued mutation of the hybrid to run instead of the reference.
        #[arg(long)]
        mutant: Option<String>,
        /// Runs of the same case, one after another (a flaky verdict shows here).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
        runs: u32,
        /// Seed for the proxy's toxics.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Summarise a cargo-mutants run over the reference (`./ci/mutants --generated` calls
    /// this): caught / missed / timeout / unviable and every miss with its disposition, written
    /// to generated.md / generated.json. Exit 1 if a miss is not a listed gap.
    GeneratedMutants {
        /// cargo-mutants' output directory (holds outcomes.json).
        dir: PathBuf,
        /// Where generated.md / generated.json go.
        #[arg(long)]
        out: PathBuf,
    },
    /// Compare two run directories (A: the baseline, B: the change): verdict, loss and
    /// latency changes, written to B's compare.md and compare.html. Exit 1 when B is worse on
    /// safety (a verdict got worse, or more was lost).
    Compare {
        /// The baseline run directory (holds report.json).
        a: PathBuf,
        /// The run to judge against it.
        b: PathBuf,
        /// Compare this strategy of A ...
        #[arg(long, requires = "strategy_b")]
        strategy_a: Option<String>,
        /// ... with this strategy of B, scenario by scenario (e.g. hybrid with hybrid-payload;
        /// A and B may be the same run).
        #[arg(long, requires = "strategy_a")]
        strategy_b: Option<String>,
    },
    /// Feedback request/response with the hybrid reference, on the `feedback:response:{id}`
    /// hash / `feedback:{id}` channel schema of the design notes.
    Feedback {
        #[command(subcommand)]
        action: FeedbackAction,
    },
    /// Chunk streaming with the hybrid reference, on the `stream:{task}:chunks` list /
    /// `stream:{task}` channel schema of the design notes.
    Stream {
        #[command(subcommand)]
        action: StreamAction,
    },
}

#[derive(clap::Args)]
pub(crate) struct RedisArgs {
    /// Redis URL, e.g. redis://127.0.0.1:6379/
    #[arg(long)]
    pub(crate) redis: String,
    /// Key prefix before every key and channel (empty: exactly the design notes' schema).
    #[arg(long, default_value = "")]
    pub(crate) prefix: String,
}

impl RedisArgs {
    pub(crate) fn config(&self) -> harness::reference::Config {
        harness::reference::Config::default().with_prefix(&self.prefix)
    }
}

#[derive(Subcommand)]
pub(crate) enum FeedbackAction {
    /// Store the response for ID (a JSON object of payload fields), then publish the hint.
    Respond {
        #[command(flatten)]
        redis: RedisArgs,
        /// The feedback request id (the response goes to `feedback:response:{ID}`).
        id: String,
        /// Payload fields, e.g. '{"approved": true, "comment": "ship it"}'.
        json: String,
    },
    /// Wait for the response to ID; print it as JSON (exit 0), or exit 3 on timeout.
    Wait {
        #[command(flatten)]
        redis: RedisArgs,
        /// The feedback request id to wait for.
        id: String,
        /// How long to wait, e.g. 30s, 500ms, 2m.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
}

#[derive(Subcommand)]
pub(crate) enum StreamAction {
    /// Append chunk INDEX of TASK and publish it.
    Publish {
        #[command(flatten)]
        redis: RedisArgs,
        /// The stream's task id (chunks go to `stream:{TASK}:chunks`).
        task: String,
        /// The chunk's index: at most one past the last stored chunk.
        index: u64,
        /// The chunk's text.
        content: String,
        /// Mark this chunk as the last one.
        #[arg(long = "final")]
        last: bool,
    },
    /// Print every chunk of TASK from --from as JSON lines until the final one (exit 0), or
    /// exit 3 on timeout.
    Follow {
        #[command(flatten)]
        redis: RedisArgs,
        /// The stream's task id.
        task: String,
        /// The first chunk index to print (0: the whole stream, as a late joiner would).
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// How long to follow, e.g. 30s, 500ms, 2m.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum PersistenceArg {
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
