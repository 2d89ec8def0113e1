//! The suite driver: what `hybrid-chaos run` does once its arguments are parsed. The
//! catalogue's (scenario, strategy) pairs run side by side, each on its own Redis and proxies;
//! the report goes into a fresh run directory; the exit code says whether every verdict was
//! the expected one. The sentinel topology has its own driver here ([`run_sentinel`]), one
//! topology at a time.

use std::path::PathBuf;
use std::process::ExitCode;

use futures_util::StreamExt;
use harness::checker::Validity;
use harness::reference::Mutation;
use harness::scenario::{Budget, Scenario};
use harness::strategy::{BuiltIn, Strategies, Strategy};

/// Fails before anything is created when `redis-server` is missing.
pub fn preflight() -> anyhow::Result<()> {
    let binary = harness::infra::RedisSpec::default().binary;
    if harness::infra::process::find_executable(&binary).is_none() {
        return Err(harness::infra::Error::RedisServerMissing { binary: binary.display().to_string() }.into());
    }
    Ok(())
}

/// Writes `text` to `path`; the error names the path (a bare "Permission denied" does not say
/// which file).
pub fn write_file(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))
}

/// Runs (scenario, strategy) pairs `jobs` at a time, each on its own Redis and proxies, and
/// prints one progress line per finished pair (`[n/N] scenario / strategy: verdict`, with
/// the elapsed time; a mismatch stands out). Results keep the pairs' order; an
/// infrastructure failure names the reproduce command.
pub async fn run_pairs(
    pairs: Vec<(&harness::scenario::Scenario, Strategy)>,
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
        .map(|(sc, strategy)| async move {
            let st = strategy.name();
            let o = harness::scenario::run(sc, &strategy, seed, budget).await.map_err(|e| {
                anyhow::anyhow!("{} / {st}: {e:#} (reproduce: {})", sc.name, reproduce(sc.name, &strategy, seed, quick))
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

pub fn reproduce(scenario: &str, strategy: &Strategy, seed: u64, quick: bool) -> String {
    format!(
        "hybrid-chaos run --scenario {scenario} --strategy {} --seed {seed}{}{}",
        strategy.name(),
        if quick { " --quick" } else { "" },
        strategy.reproduce_arg()
    )
}

/// `hybrid-chaos run` on the standalone topology, as given on the command line.
#[derive(Clone, Debug, Default)]
pub struct SuiteArgs {
    /// Scenario names (empty: the whole catalogue).
    pub scenarios: Vec<String>,
    /// Strategy names (empty: [`BuiltIn::SUITE`]).
    pub strategies: Vec<String>,
    /// The run's seed (`None`: a fresh one, written into the report).
    pub seed: Option<u64>,
    pub quick: bool,
    /// Where the run directory is created.
    pub out: PathBuf,
    /// Pairs run at once.
    pub jobs: usize,
    pub mutant: Option<String>,
    /// `process` or `container`.
    pub provider: String,
    /// `NAME=COMMAND` of each `--implementation`.
    pub implementations: Vec<String>,
}

/// What a run will do, checked before anything is created.
struct Plan {
    provider: harness::infra::Provider,
    mutation: Option<Mutation>,
    chosen: Vec<Scenario>,
    /// The built-ins to run; the external programs join once described.
    strats: Vec<Strategy>,
    /// `(NAME, COMMAND)` of each `--implementation`.
    external: Vec<(String, String)>,
    /// The whole catalogue with the default strategies: what `latest` points at.
    whole: bool,
}

/// Refuses bad input (an unknown scenario, strategy, mutant or provider, a combination that
/// means nothing) with what is valid, before any server starts.
fn plan(args: &SuiteArgs) -> anyhow::Result<Plan> {
    let SuiteArgs { scenarios, strategies, mutant, provider, implementations, .. } = args;
    let provider = harness::infra::Provider::parse(provider)
        .ok_or_else(|| anyhow::anyhow!("unknown provider {provider:?}; valid: process, container"))?;
    let mutation = match &mutant {
        None => None,
        Some(name) => {
            let valid: Vec<&str> = Mutation::ALL.iter().map(|m| m.name()).collect();
            let m = Mutation::parse(name)
                .ok_or_else(|| anyhow::anyhow!("unknown mutant {name:?}; valid: {}", valid.join(", ")))?;
            if strategies.iter().any(|s| BuiltIn::parse(s).map(BuiltIn::held_to) != Some(BuiltIn::Hybrid)) {
                anyhow::bail!("--mutant breaks the hybrid reference: use it with --strategy hybrid or hybrid-payload");
            }
            Some(m)
        }
    };
    let strategies = &if mutation.is_some() && strategies.is_empty() {
        vec![BuiltIn::Hybrid.name().to_string()]
    } else {
        strategies.clone()
    };
    let all = crate::catalogue();
    let names: Vec<&str> = all.iter().map(|s| s.name).collect();
    if let Some(bad) = scenarios.iter().find(|s| !names.contains(&s.as_str())) {
        anyhow::bail!("unknown scenario {bad:?}; valid: {}", names.join(", "));
    }
    let external: Vec<(String, String)> = implementations
        .iter()
        .map(|a| harness::strategy::parse_implementation(a))
        .collect::<Result<_, String>>()
        .map_err(|e| anyhow::anyhow!(e))?;
    if mutation.is_some() && !external.is_empty() {
        anyhow::bail!("--mutant breaks the hybrid reference; it does not combine with --implementation");
    }
    let names_given = |n: &str| external.iter().any(|(e, _)| e == n);
    let known = |s: &str| BuiltIn::parse(s).is_some_and(BuiltIn::standalone) || names_given(s);
    if let Some(bad) = strategies.iter().find(|s| !known(s)) {
        if BuiltIn::parse(bad).is_some() {
            anyhow::bail!(
                "strategy {bad:?} needs a replica: it runs on the sentinel topology (--topology sentinel), \
                 which runs {}",
                BuiltIn::names(&BuiltIn::SENTINEL)
            );
        }
        anyhow::bail!(
            "unknown strategy {bad:?}; valid: {}, and the design variants {}",
            BuiltIn::names(&BuiltIn::SUITE),
            BuiltIn::names(&BuiltIn::VARIANTS)
        );
    }
    let chosen: Vec<_> =
        all.into_iter().filter(|s| scenarios.is_empty() || scenarios.iter().any(|n| n == s.name)).collect();
    // Variants run only when named.
    let strats: Vec<Strategy> = BuiltIn::SUITE
        .into_iter()
        .chain(BuiltIn::VARIANTS)
        .filter(|b| {
            if strategies.is_empty() {
                BuiltIn::SUITE.contains(b)
            } else {
                strategies.iter().any(|n| n == b.name())
            }
        })
        .map(Strategy::from)
        .collect();
    let whole = scenarios.is_empty() && strategies.is_empty() && mutation.is_none() && external.is_empty();
    Ok(Plan { provider, mutation, chosen, strats, external, whole })
}

/// Each implementation describes itself before anything runs; one that cannot is refused
/// with what it printed.
async fn describe_externals(external: &[(String, String)], dir: &std::path::Path) -> anyhow::Result<Vec<Strategy>> {
    let mut set = Strategies::built_in();
    let mut out = Vec::new();
    for (name, command) in external {
        let spec = harness::external::describe(name, command, dir).await?;
        eprintln!(
            "implementation {name}: {:?} (notifies: {}, polls: {}, expects: {})",
            spec.hello.name,
            spec.hello.notifies,
            spec.hello.polls,
            spec.hello.expect.as_deref().unwrap_or("nothing declared: its verdicts are findings")
        );
        out.push(set.add(spec).map_err(|e| anyhow::anyhow!(e))?);
    }
    Ok(out)
}

/// `hybrid-chaos run` (standalone): plan, describe the external programs, run every pair,
/// write the report, and say by the exit code whether every verdict was expected.
pub async fn run_suite(args: SuiteArgs) -> anyhow::Result<ExitCode> {
    let Plan { provider, mutation, chosen, mut strats, external, whole } = plan(&args)?;
    let SuiteArgs { seed, quick, out, jobs, .. } = args;
    preflight()?;
    if provider == harness::infra::Provider::Container {
        // Before minutes are spent: Docker answers and the image is there.
        let d = harness::infra::container::docker().await?;
        harness::infra::container::require_image(&d, &harness::infra::container::image()).await?;
    }
    let seed = seed.unwrap_or_else(rand::random);
    let mut run_dir = crate::run_dir::RunDir::create(&out, "", seed)?;
    let (run_id, dir) = (run_dir.id.clone(), run_dir.path.clone());
    // The empty run directory goes with a refused implementation.
    match describe_externals(&external, &dir).await {
        Ok(described) => strats.extend(described),
        Err(e) => {
            run_dir.discard();
            return Err(e);
        }
    }
    let started_at = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let budget = Budget::new(quick).with_mutation(mutation).with_provider(provider);
    let pairs: Vec<(&harness::scenario::Scenario, Strategy)> = chosen
        .iter()
        .flat_map(|sc| strats.iter().filter(|st| sc.applies(st)).map(move |st| (sc, st.clone())))
        .collect();
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
        implementations: external.iter().cloned().collect(),
        failover: vec![],
    };
    harness::report::write_dir(&dir, &report, &outcomes)
        .map_err(|e| anyhow::anyhow!("cannot write the report into {}: {e}", dir.display()))?;
    run_dir.keep();
    // `latest` points at the last run of the whole catalogue: a reproduce run of one scenario,
    // or a mutant's run, must not replace the run people compare against.
    if whole {
        let latest = out.join("latest");
        let _ = std::fs::remove_file(&latest);
        let _ = std::os::unix::fs::symlink(&run_id, &latest);
    }
    println!("{}", report.summary.line());
    println!("report: {} (also report.md, report.json, history.jsonl)", dir.join("report.html").display());
    Ok(exit_code(&report, mutation))
}

/// 0 when every verdict was expected, 1 on a mismatch (each printed with its reproduce
/// command), 2 when a verdict is unknown. A mutant's verdicts are findings about the
/// harness's teeth, not mismatches: always 0.
fn exit_code(report: &harness::report::Report, mutation: Option<Mutation>) -> ExitCode {
    if let Some(m) = mutation {
        let found = report.scenarios.iter().filter(|r| r.verdict == Validity::Invalid).count();
        eprintln!("mutant {}: found invalid in {found} of {} scenarios", m.name(), report.scenarios.len());
        return ExitCode::SUCCESS;
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
                harness::report::reproduce(report, r)
            );
            if code == ExitCode::SUCCESS {
                code = ExitCode::from(1);
            }
        }
        if r.verdict == Validity::Unknown {
            code = ExitCode::from(2);
        }
    }
    code
}

/// `run --topology sentinel`: every failover scenario for the hybrid as deployed and with the
/// durability option, one topology at a time (five containers each; two at once would only
/// slow the Sentinels' timers on two cores). The report adds the loss table.
pub async fn run_sentinel(scenarios: Vec<String>, strategies: Vec<String>, out: PathBuf) -> anyhow::Result<ExitCode> {
    use harness::failover::catalogue;
    let all = catalogue();
    let names: Vec<&str> = all.iter().map(|s| s.name).collect();
    if let Some(bad) = scenarios.iter().find(|s| !names.contains(&s.as_str())) {
        anyhow::bail!("unknown scenario {bad:?} for the sentinel topology; valid: {}", names.join(", "));
    }
    if let Some(bad) = strategies.iter().find(|s| !BuiltIn::parse(s).is_some_and(|b| BuiltIn::SENTINEL.contains(&b))) {
        anyhow::bail!(
            "unknown strategy {bad:?} for the sentinel topology; valid: {}",
            BuiltIn::names(&BuiltIn::SENTINEL)
        );
    }
    let d = harness::infra::container::docker().await?;
    harness::infra::container::require_image(&d, &harness::infra::container::image()).await?;
    let pairs: Vec<(&harness::failover::FailoverScenario, BuiltIn)> = all
        .iter()
        .filter(|s| scenarios.is_empty() || scenarios.iter().any(|n| n == s.name))
        .flat_map(|s| {
            BuiltIn::SENTINEL
                .into_iter()
                .filter(|st| strategies.is_empty() || strategies.iter().any(|n| n == st.name()))
                .map(move |st| (s, st))
        })
        .collect();
    let mut run_dir = crate::run_dir::RunDir::create(&out, "sentinel-", 0)?;
    let (run_id, dir) = (run_dir.id.clone(), run_dir.path.clone());
    let started_at = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let started = std::time::Instant::now();
    let (mut outcomes, mut table) = (Vec::new(), Vec::new());
    for (i, (sc, strategy)) in pairs.iter().enumerate() {
        let st = strategy.name();
        let (row, outcome) = harness::failover::run(sc, *strategy).await.map_err(|e| {
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
        implementations: Default::default(),
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

pub fn redis_server_version() -> String {
    let bin = harness::infra::RedisSpec::default().binary;
    std::process::Command::new(bin)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.split_whitespace().find_map(|w| w.strip_prefix("v=").map(str::to_string)))
        .unwrap_or_default()
}
