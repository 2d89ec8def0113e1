//! The `hybrid-chaos` command line: a thin shell over the `harness` library and this suite's
//! catalogue (`scenarios::catalogue`), mutation kill matrix and property search.
//!
//! Exit codes: 0 success, 2 bad input or infrastructure failure (a one-line error on stderr),
//! 3 a wait that timed out; a `run` or `mutants` ended by a signal exits as a shell reports
//! a signal's death, 128 + its number: 130 for SIGINT, 143 for SIGTERM, within
//! [`INTERRUPT_EXIT_S`], with its processes, containers and networks removed and one line on
//! stderr saying so.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use futures_util::StreamExt;
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
struct RedisArgs {
    /// Redis URL, e.g. redis://127.0.0.1:6379/
    #[arg(long)]
    redis: String,
    /// Key prefix before every key and channel (empty: exactly the design notes' schema).
    #[arg(long, default_value = "")]
    prefix: String,
}

impl RedisArgs {
    fn config(&self) -> harness::reference::Config {
        harness::reference::Config::default().with_prefix(&self.prefix)
    }
}

#[derive(Subcommand)]
enum FeedbackAction {
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
enum StreamAction {
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

/// Exit code for "waited, nothing came" (distinct from errors, which exit 2).
const EXIT_TIMED_OUT: u8 = 3;
/// An interrupted run exits within this long of the signal, in s: dropping the run (each
/// handle kills its process or removes its container, a few hundred ms a container), then at
/// most [`RUNTIME_SHUTDOWN_MS`] for what it spawned, then at most [`SWEEP_TIMEOUT_MS`].
pub const INTERRUPT_EXIT_S: u64 = 10;
/// How long the tasks a run spawned get to end with the runtime, in ms. One that cannot (the
/// blocking property search of `mutants`, a drop waiting on I/O that a shutting-down runtime
/// no longer drives) must not hold the process: after this it exits regardless.
const RUNTIME_SHUTDOWN_MS: u64 = 2_000;
/// The sweep of what a run's handles left (its descendants, its labelled containers and
/// networks) gets at most this long, in ms.
const SWEEP_TIMEOUT_MS: u64 = 5_000;

/// The signal that ended a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Signal {
    Interrupt,
    Terminate,
}

impl Signal {
    fn name(self) -> &'static str {
        match self {
            Signal::Interrupt => "SIGINT",
            Signal::Terminate => "SIGTERM",
        }
    }

    /// 128 + the signal's number (2, 15 on Linux), what a shell reports for a process the
    /// signal ended.
    fn exit_code(self) -> u8 {
        match self {
            Signal::Interrupt => 130,
            Signal::Terminate => 143,
        }
    }
}

/// A run ended by a signal: not a failure of the run, and not exit 2.
#[derive(Debug)]
struct Interrupted(Signal);

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "interrupted by {}", self.0.name())
    }
}

impl std::error::Error for Interrupted {}

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

/// Fails before anything is created when `redis-server` is missing.
fn preflight() -> anyhow::Result<()> {
    let binary = harness::infra::RedisSpec::default().binary;
    if harness::infra::process::find_executable(&binary).is_none() {
        return Err(harness::infra::Error::RedisServerMissing { binary: binary.display().to_string() }.into());
    }
    Ok(())
}

/// Writes `text` to `path`; the error names the path (a bare "Permission denied" does not say
/// which file).
fn write_file(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))
}

/// Runs (scenario, strategy) pairs `jobs` at a time, each on its own Redis and proxies, and
/// prints one progress line per finished pair (`[n/N] scenario / strategy: verdict`, with
/// the elapsed time; a mismatch stands out). Results keep the pairs' order; an
/// infrastructure failure names the reproduce command.
async fn run_pairs(
    pairs: Vec<(&harness::scenario::Scenario, &str)>,
    seed: u64,
    budget: harness::scenario::Budget,
    quick: bool,
    jobs: usize,
    label: &str,
) -> Vec<anyhow::Result<harness::scenario::Outcome>> {
    let total = pairs.len();
    let started = std::time::Instant::now();
    let done = std::sync::atomic::AtomicUsize::new(0);
    let done = &done;
    futures_util::stream::iter(pairs)
        .map(|(sc, st)| async move {
            let o = harness::scenario::run(sc, st, seed, budget).await.map_err(|e| {
                anyhow::anyhow!("{} / {st}: {e:#} (reproduce: {})", sc.name, reproduce(sc.name, st, seed, quick))
            });
            let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            let secs = started.elapsed().as_secs_f64();
            match &o {
                Ok(o) if o.verdict != o.expected_verdict && o.mutation.is_none() => eprintln!(
                    "[{n}/{total}] {label}{} / {st}: MISMATCH {:?}, expected {:?}  ({secs:.0} s)",
                    sc.name, o.verdict, o.expected_verdict
                ),
                Ok(o) => eprintln!("[{n}/{total}] {label}{} / {st}: {:?}  ({secs:.0} s)", sc.name, o.verdict),
                Err(e) => eprintln!("[{n}/{total}] {label}{} / {st}: ERROR {e:#}  ({secs:.0} s)", sc.name),
            }
            o
        })
        .buffered(jobs)
        .collect()
        .await
}

fn reproduce(scenario: &str, strategy: &str, seed: u64, quick: bool) -> String {
    format!(
        "hybrid-chaos run --scenario {scenario} --strategy {strategy} --seed {seed}{}{}",
        if quick { " --quick" } else { "" },
        harness::external::reproduce_arg(strategy)
    )
}

async fn run_suite(
    scenarios: Vec<String>,
    strategies: Vec<String>,
    seed: Option<u64>,
    quick: bool,
    out: PathBuf,
    jobs: usize,
    mutant: Option<String>,
    provider: &str,
    implementations: Vec<String>,
) -> anyhow::Result<ExitCode> {
    use harness::checker::Validity;
    let provider = harness::infra::Provider::parse(provider)
        .ok_or_else(|| anyhow::anyhow!("unknown provider {provider:?}; valid: process, container"))?;
    use harness::scenario::{Budget, STRATEGIES};
    let mutation = match &mutant {
        None => None,
        Some(name) => {
            let valid: Vec<&str> = harness::reference::Mutation::ALL.iter().map(|m| m.name()).collect();
            let m = harness::reference::Mutation::parse(name)
                .ok_or_else(|| anyhow::anyhow!("unknown mutant {name:?}; valid: {}", valid.join(", ")))?;
            if strategies.iter().any(|s| s != "hybrid" && s != "hybrid-payload") {
                anyhow::bail!("--mutant breaks the hybrid reference: use it with --strategy hybrid or hybrid-payload");
            }
            Some(m)
        }
    };
    let strategies = if mutation.is_some() && strategies.is_empty() { vec!["hybrid".to_string()] } else { strategies };
    let all = scenarios::catalogue();
    let names: Vec<&str> = all.iter().map(|s| s.name).collect();
    if let Some(bad) = scenarios.iter().find(|s| !names.contains(&s.as_str())) {
        anyhow::bail!("unknown scenario {bad:?}; valid: {}", names.join(", "));
    }
    let external: Vec<(String, String)> = implementations
        .iter()
        .map(|a| harness::external::parse_arg(a))
        .collect::<Result<_, String>>()
        .map_err(|e| anyhow::anyhow!(e))?;
    if mutation.is_some() && !external.is_empty() {
        anyhow::bail!("--mutant breaks the hybrid reference; it does not combine with --implementation");
    }
    let names_given = |n: &str| external.iter().any(|(e, _)| e == n);
    let known = |s: &str| STRATEGIES.contains(&s) || harness::scenario::VARIANTS.contains(&s) || names_given(s);
    if let Some(bad) = strategies.iter().find(|s| !known(s)) {
        anyhow::bail!(
            "unknown strategy {bad:?}; valid: {}, and the design variants {}",
            STRATEGIES.join(", "),
            harness::scenario::VARIANTS.join(", ")
        );
    }
    let chosen: Vec<_> =
        all.into_iter().filter(|s| scenarios.is_empty() || scenarios.iter().any(|n| n == s.name)).collect();
    // Variants run only when named.
    let strats: Vec<&str> = STRATEGIES
        .iter()
        .chain(harness::scenario::VARIANTS.iter())
        .copied()
        .filter(|s| if strategies.is_empty() { STRATEGIES.contains(s) } else { strategies.iter().any(|n| n == s) })
        .collect();
    preflight()?;
    if provider == harness::infra::Provider::Container {
        // Before minutes are spent: Docker answers and the image is there.
        let d = harness::infra::container::docker().await?;
        harness::infra::container::require_image(&d, &harness::infra::container::image()).await?;
    }
    let seed = seed.unwrap_or_else(rand::random);
    let mut run_dir = scenarios::run_dir::RunDir::create(&out, "", seed)?;
    let (run_id, dir) = (run_dir.id.clone(), run_dir.path.clone());
    // Each implementation describes itself before anything runs; one that cannot is
    // refused with what it printed, and the empty run directory goes.
    let mut strats = strats;
    for (name, command) in &external {
        match harness::external::describe(name, command, &dir).await {
            Ok(spec) => {
                eprintln!(
                    "implementation {name}: {:?} (notifies: {}, polls: {}, expects: {})",
                    spec.hello.name,
                    spec.hello.notifies,
                    spec.hello.polls,
                    spec.hello.expect.as_deref().unwrap_or("nothing declared: its verdicts are findings")
                );
                harness::external::register(spec);
                strats.push(Box::leak(name.clone().into_boxed_str()));
            }
            Err(e) => {
                run_dir.discard();
                return Err(e);
            }
        }
    }
    let started_at = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let budget = Budget::new(quick).with_mutation(mutation).with_provider(provider);
    let pairs: Vec<(&harness::scenario::Scenario, &str)> =
        chosen.iter().flat_map(|sc| strats.iter().filter(|st| sc.applies(st)).map(move |st| (sc, *st))).collect();
    // The proxy's own share, sampled beside the rows under the same load; a run whose probe
    // cannot start still runs, and its report says nothing of the proxy's share.
    let probe = match harness::overhead::ProxyProbe::start().await {
        Ok(p) => Some(p),
        Err(e) => {
            eprintln!("hybrid-chaos: the proxy-overhead probe did not start ({e}); the report will not show it");
            None
        }
    };
    let outcomes =
        run_pairs(pairs, seed, budget, quick, jobs, "").await.into_iter().collect::<anyhow::Result<Vec<_>>>();
    let proxy_overhead = match probe {
        Some(p) => p.finish().await,
        None => None,
    };
    let outcomes = outcomes?;
    let rows: Vec<_> = outcomes.iter().map(harness::report::row).collect();
    let report = harness::report::Report {
        run_id: run_id.clone(),
        seed,
        started_at,
        redis_version: redis_server_version(),
        toxiproxy: if std::env::var("TOXIPROXY_URL").is_ok_and(|u| !u.is_empty()) { "external" } else { "embedded" }
            .into(),
        quick,
        provider: provider.as_str().into(),
        topology: "standalone".into(),
        summary: harness::report::Summary::of(&rows),
        proxy_overhead,
        scenarios: rows,
        failover: vec![],
    };
    harness::report::write_dir(&dir, &report, &outcomes)
        .map_err(|e| anyhow::anyhow!("cannot write the report into {}: {e}", dir.display()))?;
    run_dir.keep();
    // `latest` points at the last run of the whole catalogue: a reproduce run of one scenario,
    // or a mutant's run, must not replace the run people compare against.
    if scenarios.is_empty() && strategies.is_empty() && mutation.is_none() && external.is_empty() {
        let latest = out.join("latest");
        let _ = std::fs::remove_file(&latest);
        let _ = std::os::unix::fs::symlink(&run_id, &latest);
    }
    // The summary and where to read the rest; report.md has every row.
    println!("{}", report.summary.line());
    println!("report: {} (also report.md, report.json, history.jsonl)", dir.join("report.html").display());
    if let Some(m) = mutation {
        // A mutant's verdicts are findings about the harness's teeth, not mismatches.
        let found = report.scenarios.iter().filter(|r| r.verdict == Validity::Invalid).count();
        eprintln!("mutant {}: found invalid in {found} of {} scenarios", m.name(), report.scenarios.len());
        return Ok(ExitCode::SUCCESS);
    }
    let mut code = ExitCode::SUCCESS;
    for r in &report.scenarios {
        if r.verdict != r.expected_verdict {
            eprintln!(
                "MISMATCH {} / {}: {:?}, expected {:?}. Reproduce: {}",
                r.scenario,
                r.strategy,
                r.verdict,
                r.expected_verdict,
                reproduce(&r.scenario, &r.strategy, seed, quick)
            );
            if code == ExitCode::SUCCESS {
                code = ExitCode::from(1);
            }
        }
        if r.verdict == Validity::Unknown {
            code = ExitCode::from(2);
        }
    }
    Ok(code)
}

/// `run --topology sentinel`: every failover scenario for the hybrid as deployed and with the
/// durability option, one topology at a time (five containers each; two at once would only
/// slow the Sentinels' timers on two cores). The report adds the loss table.
async fn run_sentinel(scenarios: Vec<String>, strategies: Vec<String>, out: PathBuf) -> anyhow::Result<ExitCode> {
    use harness::failover::{catalogue, STRATEGIES};
    let all = catalogue();
    let names: Vec<&str> = all.iter().map(|s| s.name).collect();
    if let Some(bad) = scenarios.iter().find(|s| !names.contains(&s.as_str())) {
        anyhow::bail!("unknown scenario {bad:?} for the sentinel topology; valid: {}", names.join(", "));
    }
    if let Some(bad) = strategies.iter().find(|s| !STRATEGIES.contains(&s.as_str())) {
        anyhow::bail!("unknown strategy {bad:?} for the sentinel topology; valid: {}", STRATEGIES.join(", "));
    }
    let d = harness::infra::container::docker().await?;
    harness::infra::container::require_image(&d, &harness::infra::container::image()).await?;
    let pairs: Vec<(&harness::failover::FailoverScenario, &str)> = all
        .iter()
        .filter(|s| scenarios.is_empty() || scenarios.iter().any(|n| n == s.name))
        .flat_map(|s| {
            STRATEGIES
                .iter()
                .filter(|st| strategies.is_empty() || strategies.iter().any(|n| n == *st))
                .map(move |st| (s, *st))
        })
        .collect();
    let mut run_dir = scenarios::run_dir::RunDir::create(&out, "sentinel-", 0)?;
    let (run_id, dir) = (run_dir.id.clone(), run_dir.path.clone());
    let started_at = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let started = std::time::Instant::now();
    let (mut outcomes, mut table) = (Vec::new(), Vec::new());
    for (i, (sc, st)) in pairs.iter().enumerate() {
        let (row, outcome) = harness::failover::run(sc, st).await.map_err(|e| {
            anyhow::anyhow!(
                "{} / {st}: {e:#} (reproduce: hybrid-chaos run --topology sentinel --scenario {} --strategy {st})",
                sc.name,
                sc.name
            )
        })?;
        eprintln!(
            "[{}/{}] {} / {st}: {:?}{}; {} acknowledged, {} lost, failover after {} ms  ({:.0} s)",
            i + 1,
            pairs.len(),
            sc.name,
            outcome.verdict,
            if outcome.verdict != outcome.expected_verdict { " MISMATCH" } else { "" },
            row.loss.acknowledged,
            row.loss.lost,
            row.failover_ms.map_or("-".into(), |m| m.to_string()),
            started.elapsed().as_secs_f64()
        );
        outcomes.push(outcome);
        table.push(row);
    }
    let rows: Vec<_> = outcomes.iter().map(harness::report::row).collect();
    let report = harness::report::Report {
        run_id,
        seed: 0,
        started_at,
        redis_version: redis_server_version(),
        toxiproxy: "none".into(),
        quick: false,
        provider: "container".into(),
        topology: "sentinel".into(),
        summary: harness::report::Summary::of(&rows),
        proxy_overhead: None,
        scenarios: rows,
        failover: table,
    };
    harness::report::write_dir(&dir, &report, &outcomes)
        .map_err(|e| anyhow::anyhow!("cannot write the report into {}: {e}", dir.display()))?;
    run_dir.keep();
    write_file(&dir.join("failover.md"), &harness::failover::markdown(&report.failover))?;
    let sum = &report.summary;
    println!("{}", sum.line());
    println!("report: {} (also report.md with the loss table, failover.md)", dir.join("report.html").display());
    Ok(if sum.mismatch {
        ExitCode::from(1)
    } else if sum.unknown > 0 {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

/// `hybrid-chaos mutants`: each mutation through the hybrid's scenarios, then, for the ones
/// the suite missed, a property search; the kill matrix next to the reports.
async fn run_mutants(
    names: Vec<String>,
    quick: bool,
    seed: Option<u64>,
    out: PathBuf,
    jobs: usize,
    property: bool,
) -> anyhow::Result<ExitCode> {
    use harness::reference::Mutation;
    use harness::scenario::Budget;
    let mut chosen = Vec::new();
    for n in &names {
        let valid: Vec<&str> = Mutation::ALL.iter().map(|m| m.name()).collect();
        chosen.push(
            Mutation::parse(n).ok_or_else(|| anyhow::anyhow!("unknown mutant {n:?}; valid: {}", valid.join(", ")))?,
        );
    }
    if chosen.is_empty() {
        chosen = Mutation::ALL.to_vec();
    }
    preflight()?;
    let seed = seed.unwrap_or_else(rand::random);
    let mut run_dir = scenarios::run_dir::RunDir::create(&out, "mutants-", seed)?;
    let dir = run_dir.path.clone();
    let catalogue = scenarios::catalogue();
    let mut rows = Vec::new();
    for m in chosen {
        let budget = Budget::new(quick).with_mutation(Some(m));
        // Only where the reference is expected valid: a configuration that loses (persistence
        // none) says nothing about a mutant.
        let pairs: Vec<_> = catalogue
            .iter()
            .filter(|sc| sc.applies("hybrid") && sc.expected[0] == harness::checker::Validity::Valid)
            .map(|sc| (sc, "hybrid"))
            .collect();
        let label = format!("{} :: ", m.name());
        let results = run_pairs(pairs, seed, budget, quick, jobs, &label).await;
        let mut errors = Vec::new();
        let outcomes: Vec<_> =
            results.into_iter().filter_map(|r| r.map_err(|e| errors.push(format!("{e:#}"))).ok()).collect();
        let mut kills = scenarios::mutants::suite_kills(&outcomes);
        if kills.is_empty() && property {
            eprintln!(
                "{}: not killed by the suite; property search, {} cases",
                m.name(),
                scenarios::mutants::PROPERTY_CASES
            );
            let mut search =
                scenarios::Search::new("hybrid", scenarios::gen::Workload::Free, scenarios::mutants::PROPERTY_CASES);
            search.cases = scenarios::mutants::PROPERTY_CASES;
            search.seed = seed >> 1;
            search.mutation = Some(m);
            search.shrink_runs_max = 0;
            let report = tokio::task::spawn_blocking(move || search.run()).await??;
            if let Some(found) = &report.found {
                // A kill only if the reference passes the same case: a case that fails for
                // both (load, a flaw of the design itself) says nothing about the mutant.
                let mut rig = harness::case::CaseRig::start(seed).await?;
                let reference = rig.run(&found.case, "hybrid", None).await;
                rig.stop().await;
                match reference {
                    Ok(r) if r.failures().is_empty() => kills = scenarios::mutants::property_kills(&found.reason),
                    Ok(r) => errors.push(format!(
                        "the property search's counterexample fails for the reference too, so it is not a kill: {}",
                        harness::case::describe(&r.failures())
                    )),
                    Err(e) => errors.push(format!("re-running the counterexample on the reference: {e:#}")),
                }
            }
        }
        eprintln!(
            "{}: {}",
            m.name(),
            match kills.first() {
                Some(k) => format!("killed ({} / {}: {})", k.scenario, k.check, k.evidence),
                None => "SURVIVED".into(),
            }
        );
        rows.push(scenarios::mutants::row(m, kills, errors));
    }
    run_dir.keep();
    write_file(&dir.join("mutants.md"), &scenarios::mutants::markdown(&rows, seed, quick))?;
    write_file(
        &dir.join("mutants.json"),
        &(serde_json::to_string_pretty(&scenarios::mutants::json(&rows, seed, quick))? + "\n"),
    )?;
    print!("{}", scenarios::mutants::markdown(&rows, seed, quick));
    eprintln!("kill matrix: {}", dir.join("mutants.md").display());
    Ok(if rows.iter().all(|r| r.killed) { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// `hybrid-chaos case`: one stored case, run `runs` times on one rig.
async fn replay_case(
    file: &std::path::Path,
    strategy: &str,
    mutant: Option<&str>,
    runs: u32,
    seed: u64,
) -> anyhow::Result<ExitCode> {
    let text = if file == std::path::Path::new("-") {
        std::io::read_to_string(std::io::stdin()).map_err(|e| anyhow::anyhow!("cannot read standard input: {e}"))?
    } else {
        std::fs::read_to_string(file).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?
    };
    let case: harness::case::Case =
        serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: not a case: {e}", file.display()))?;
    let mutation = match mutant {
        None => None,
        Some(name) => Some(harness::reference::Mutation::parse(name).ok_or_else(|| {
            let valid: Vec<&str> = harness::reference::Mutation::ALL.iter().map(|m| m.name()).collect();
            anyhow::anyhow!("unknown mutant {name:?}; valid: {}", valid.join(", "))
        })?),
    };
    if !harness::scenario::STRATEGIES.contains(&strategy) {
        anyhow::bail!("unknown strategy {strategy:?}; valid: {}", harness::scenario::STRATEGIES.join(", "));
    }
    preflight()?;
    println!("{case}");
    let mut rig = harness::case::CaseRig::start(seed).await?;
    let mut invalid = 0;
    let mut result = Ok(());
    for n in 1..=runs {
        match rig.run(&case, strategy, mutation).await {
            Ok(out) => {
                let failing = out.failures();
                if failing.is_empty() {
                    println!("run {n}: valid");
                } else {
                    invalid += 1;
                    println!("run {n}: INVALID\n{}", harness::case::describe(&failing));
                }
            }
            Err(e) => {
                result = Err(e.context(format!("run {n} of the case")));
                break;
            }
        }
    }
    rig.stop().await;
    result?;
    println!("{invalid} of {runs} runs invalid");
    Ok(if invalid == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn redis_server_version() -> String {
    let bin = harness::infra::RedisSpec::default().binary;
    std::process::Command::new(bin)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.split_whitespace().find_map(|w| w.strip_prefix("v=").map(str::to_string)))
        .unwrap_or_default()
}

/// Resolves on Ctrl-C or SIGTERM, with which.
///
/// The handlers are installed when this is called, not when the future is first polled: a
/// signal that arrives while a command is still setting up must not kill the process
/// uncleanly (default action) before the handler exists.
fn interrupted() -> impl std::future::Future<Output = Signal> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    async move {
        tokio::select! {
            _ = int.recv() => Signal::Interrupt,
            _ = term.recv() => Signal::Terminate,
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    use harness::reference::{FeedbackStrategy, PublishOutcome, WaitOutcome};
    match cli.command {
        Command::Toxiproxy { listen, config, seed, allow_remote_upstream, allow_remote_listen } => {
            if !allow_remote_listen && !harness::toxiproxy::server::is_loopback(listen.ip()) {
                anyhow::bail!(
                    "--listen {listen} is not a loopback address: the API would let every network this machine \
                     is on create proxies; pass --allow-remote-listen to permit it"
                );
            }
            let stop = interrupted();
            let options = ServerOptions { allow_remote_upstream, allow_remote_listen, seed };
            let server = EmbeddedToxiproxy::start(listen, options)
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
            if let Some(path) = config {
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
                let proxies: Vec<serde_json::Value> = serde_json::from_str(&text)
                    .map_err(|e| anyhow::anyhow!("{} is not a JSON array of proxies: {e}", path.display()))?;
                let client = ToxiproxyClient::new(&server.url())?;
                let packs = proxies
                    .iter()
                    .map(|p| {
                        let field = |k: &str| p.get(k).and_then(|v| v.as_str()).map(str::to_string);
                        match (field("name"), field("listen"), field("upstream")) {
                            (Some(n), Some(l), Some(u)) => Ok((n, l, u)),
                            _ => {
                                Err(anyhow::anyhow!("{}: every proxy needs name, listen and upstream", path.display()))
                            }
                        }
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?;
                client.populate(packs).await?;
            }
            eprintln!("toxiproxy-compatible API listening on {}", server.url());
            server
                .run_until(async {
                    stop.await;
                })
                .await;
            Ok(ExitCode::SUCCESS)
        }
        Command::Redis { port, persistence, print_pid } => {
            let stop = interrupted();
            let spec = RedisSpec { port, persistence: persistence.into(), ..RedisSpec::default() };
            let redis = ProcessRedis::start(spec).await?;
            if print_pid {
                println!("pid={} port={}", redis.pid().unwrap_or(0), redis.port());
            } else {
                eprintln!("redis-server ready at {} (data in {})", redis.url(), redis.data_dir().display());
            }
            stop.await;
            drop(redis);
            Ok(ExitCode::SUCCESS)
        }
        Command::List => {
            for s in scenarios::catalogue() {
                let expected: Vec<String> = harness::scenario::STRATEGIES
                    .iter()
                    .zip(s.expected)
                    .filter(|(st, _)| s.applies(st))
                    .map(|(st, v)| format!("{st}={}", format!("{v:?}").to_lowercase()))
                    .collect();
                println!("{:<30} {}  [{}]", s.name, s.about, expected.join(" "));
            }
            println!("strategies: {}", harness::scenario::STRATEGIES.join(", "));
            Ok(ExitCode::SUCCESS)
        }
        Command::ServeImpl { strategy } => {
            harness::external::serve::serve(&strategy).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Run { scenarios, strategies, seed, quick, out, jobs, mutant, provider, topology, implementations } => {
            // Ctrl-C or SIGTERM drops the run here, inside the runtime: every redis-server
            // and implementation it owns is killed on drop (a redis-server also by the
            // kernel, through PR_SET_PDEATHSIG, if even that is cut short), and its
            // containers and networks are removed. `main` then sweeps what is left.
            let stop = interrupted();
            if topology == "sentinel" {
                if !implementations.is_empty() {
                    anyhow::bail!("--implementation runs on the standalone topology only, for now");
                }
                if mutant.is_some() {
                    anyhow::bail!("--topology sentinel runs the reference in containers; it takes no --mutant");
                }
                return tokio::select! {
                    r = run_sentinel(scenarios, strategies, out) => r,
                    s = stop => Err(Interrupted(s).into()),
                };
            }
            tokio::select! {
                r = run_suite(scenarios, strategies, seed, quick, out, jobs as usize, mutant, &provider, implementations) => r,
                s = stop => Err(Interrupted(s).into()),
            }
        }
        Command::Mutants { quick, mutants, seed, out, jobs, no_property } => {
            let stop = interrupted();
            tokio::select! {
                r = run_mutants(mutants, quick, seed, out, jobs as usize, !no_property) => r,
                s = stop => Err(Interrupted(s).into()),
            }
        }
        Command::Case { file, strategy, mutant, runs, seed } => {
            let stop = interrupted();
            tokio::select! {
                r = replay_case(&file, &strategy, mutant.as_deref(), runs, seed) => r,
                s = stop => Err(Interrupted(s).into()),
            }
        }
        Command::GeneratedMutants { dir, out } => {
            let path = dir.join("outcomes.json");
            let text =
                std::fs::read_to_string(&path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
            let s = scenarios::generated::summarise(&text, scenarios::generated::KNOWN_GAPS)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            let md = scenarios::generated::markdown(&s);
            std::fs::create_dir_all(&out).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", out.display()))?;
            write_file(&out.join("generated.md"), &md)?;
            write_file(&out.join("generated.json"), &(serde_json::to_string_pretty(&s)? + "\n"))?;
            print!("{md}");
            eprintln!("generated mutants: {}", out.join("generated.md").display());
            let unexplained = s.unexplained().count();
            if unexplained > 0 {
                eprintln!("{unexplained} missed mutant(s) no gap explains: the harness lets those bugs through");
                return Ok(ExitCode::from(1));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Compare { a, b, strategy_a, strategy_b } => {
            use harness::compare::{read_history, read_report};
            let (ra, rb) = (read_report(&a.join("report.json"))?, read_report(&b.join("report.json"))?);
            // Latency is judged on each run's raw samples; a run without history.jsonl gets no
            // latency judgement, only verdicts and loss, and is named for it.
            let samples = |dir: &std::path::Path| -> anyhow::Result<harness::compare::Samples> {
                let path = dir.join("history.jsonl");
                Ok(read_history(&path)?.unwrap_or_else(|| {
                    eprintln!("compare: no {}: latency is not judged", path.display());
                    Default::default()
                }))
            };
            let (xa, xb) = (samples(&a)?, samples(&b)?);
            let c = match (strategy_a, strategy_b) {
                (Some(sa), Some(sb)) => harness::compare::compare_strategies(&ra, &rb, &xa, &xb, &sa, &sb),
                _ => harness::compare::compare(&ra, &rb, &xa, &xb),
            };
            let md = harness::compare::markdown(&c);
            write_file(&b.join("compare.md"), &md)?;
            write_file(&b.join("compare.html"), &harness::compare::html(&c))?;
            print!("{md}");
            eprintln!("compare: {}", b.join("compare.html").display());
            Ok(if c.worse_on_safety() { ExitCode::from(1) } else { ExitCode::SUCCESS })
        }
        Command::Smoke => {
            let report = harness::smoke::run().await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Feedback { action: FeedbackAction::Respond { redis, id, json } } => {
            let payload: serde_json::Value =
                serde_json::from_str(&json).map_err(|e| anyhow::anyhow!("payload is not JSON: {e}"))?;
            let payload = payload.as_object().ok_or_else(|| anyhow::anyhow!("payload must be a JSON object"))?;
            let hybrid =
                harness::reference::feedback::Hybrid::connect(&redis.redis, &redis.redis, redis.config()).await?;
            let outcome = hybrid.respond(&id, &harness::reference::response_fields(&id, payload)).await;
            hybrid.shutdown().await;
            println!("{}", serde_json::to_string(&outcome)?);
            match outcome {
                PublishOutcome::Failed { reason } | PublishOutcome::Refused { reason } => {
                    anyhow::bail!("response for {id} not stored: {reason}")
                }
                PublishOutcome::StoredUnreplicated { replicas, wanted } => {
                    anyhow::bail!("response for {id} stored but confirmed by {replicas} of {wanted} replicas")
                }
                _ => Ok(ExitCode::SUCCESS),
            }
        }
        Command::Feedback { action: FeedbackAction::Wait { redis, id, timeout } } => {
            let hybrid =
                harness::reference::feedback::Hybrid::connect(&redis.redis, &redis.redis, redis.config()).await?;
            let outcome = hybrid.wait(&id, timeout).await;
            hybrid.shutdown().await;
            match outcome? {
                WaitOutcome::Obtained { fields, .. } => {
                    println!("{}", serde_json::to_string(&fields)?);
                    Ok(ExitCode::SUCCESS)
                }
                WaitOutcome::TimedOut => {
                    eprintln!("hybrid-chaos: no response for {id} within {}", humantime::format_duration(timeout));
                    Ok(ExitCode::from(EXIT_TIMED_OUT))
                }
                WaitOutcome::Shutdown => anyhow::bail!("SHUTDOWN received on the control channel"),
            }
        }
        Command::Stream { action: StreamAction::Publish { redis, task, index, content, last } } => {
            use harness::reference::stream::{Chunk, StreamProducer};
            let producer = StreamProducer::connect(&redis.redis, redis.config()).await?;
            let chunk = if last { Chunk::last(index, content) } else { Chunk::content(index, content) };
            let outcome = producer.publish_in_order(&task, &chunk).await?;
            println!("{}", serde_json::to_string(&outcome)?);
            match outcome {
                PublishOutcome::Failed { reason } | PublishOutcome::Refused { reason } => {
                    anyhow::bail!("chunk {index} of {task} not stored: {reason}")
                }
                PublishOutcome::StoredUnreplicated { replicas, wanted } => {
                    anyhow::bail!("chunk {index} of {task} stored but confirmed by {replicas} of {wanted} replicas")
                }
                _ => Ok(ExitCode::SUCCESS),
            }
        }
        Command::Stream { action: StreamAction::Follow { redis, task, from, timeout } } => {
            use harness::reference::stream::{FollowEnd, StreamConsumer};
            let consumer = StreamConsumer::connect(&redis.redis, &redis.redis, redis.config()).await?;
            let end = consumer
                .follow(&task, from, timeout, |c, _| {
                    println!("{}", serde_json::to_string(c).expect("chunk serialises"))
                })
                .await;
            consumer.shutdown().await;
            match end? {
                FollowEnd::Finished { .. } => Ok(ExitCode::SUCCESS),
                FollowEnd::TimedOut { delivered, .. } => {
                    eprintln!(
                        "hybrid-chaos: stream {task} not finished within {} ({delivered} chunks)",
                        humantime::format_duration(timeout)
                    );
                    Ok(ExitCode::from(EXIT_TIMED_OUT))
                }
            }
        }
    }
}

/// The error and its causes on one line, each cause once: an error that already quotes its
/// source (`Redis: connection refused`) is not followed by that source again.
fn one_line(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain().map(|c| c.to_string()) {
        if !parts.iter().any(|p| p.contains(&cause)) {
            parts.push(cause);
        }
    }
    parts.join(": ")
}

/// [`harness::infra::sweep_own`] on a runtime of its own (the run's is shut down), bounded
/// by [`SWEEP_TIMEOUT_MS`].
fn sweep() -> harness::infra::Swept {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
        return harness::infra::Swept::default();
    };
    let limit = std::time::Duration::from_millis(SWEEP_TIMEOUT_MS);
    let swept = rt.block_on(async { tokio::time::timeout(limit, harness::infra::sweep_own()).await });
    rt.shutdown_timeout(std::time::Duration::ZERO);
    swept.unwrap_or_default()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HYBRID_CHAOS_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal: CI logs and files redirected from stderr get text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // Only a run owns infrastructure worth a sweep; the other commands never start any, or
    // (`redis`, `toxiproxy`) end it themselves on the signal that is their normal stop.
    let owns_infra = matches!(cli.command, Command::Run { .. } | Command::Mutants { .. });
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("build the tokio runtime");
    let result = runtime.block_on(run(cli));
    // Not a plain drop: dropping a runtime waits for every blocking task and thread, without
    // a bound, and an interrupted run can leave one that never ends.
    runtime.shutdown_timeout(std::time::Duration::from_millis(RUNTIME_SHUTDOWN_MS));
    let swept = if owns_infra { sweep() } else { harness::infra::Swept::default() };
    if let Some(Interrupted(signal)) = result.as_ref().err().and_then(|e| e.downcast_ref::<Interrupted>()) {
        // A start in flight when the run was dropped (a container Docker creates all the
        // same) has no handle yet: only the sweep finds it, and the line says so.
        let late =
            if swept.is_empty() { String::new() } else { format!(" (the final sweep removed {swept} no handle held)") };
        eprintln!(
            "hybrid-chaos: interrupted by {}: stopped, its processes, containers and networks removed{late}; no report written (exit {})",
            signal.name(),
            signal.exit_code()
        );
        return ExitCode::from(signal.exit_code());
    }
    if !swept.is_empty() {
        eprintln!("hybrid-chaos: warning: the final sweep removed {swept} no handle held");
    }
    match result {
        Ok(code) => code,
        Err(e) => {
            // One line: the causes joined, so CI logs and terminals show the whole reason.
            let msg = one_line(&e);
            eprintln!("hybrid-chaos: error: {}", msg.replace('\n', " | "));
            ExitCode::from(2)
        }
    }
}
