//! The `hybrid-chaos` command line: a thin shell over the `harness` library and this suite's
//! catalogue (`scenarios::catalogue`), mutation kill matrix and property search.
//!
//! Exit codes: 0 success, 2 bad input or infrastructure failure (a one-line error on stderr),
//! 3 a wait that timed out; a `run` or `mutants` ended by a signal exits as a shell reports
//! a signal's death, 128 + its number: 130 for SIGINT, 143 for SIGTERM, within
//! [`INTERRUPT_EXIT_S`], with its processes, containers and networks removed and one line on
//! stderr saying so.

//!
//! `cli.rs` holds the flags, `tools.rs` the commands that are tools; the runs' drivers are
//! the suite's library ([`scenarios::suite`], [`scenarios::kill_matrix`], [`scenarios::replay`]).

mod cli;
mod tools;

use std::process::ExitCode;

use clap::Parser;
use scenarios::suite::SuiteArgs;

use cli::{Cli, Command};

/// Exit code for "waited, nothing came" (distinct from errors, which exit 2).
pub(crate) const EXIT_TIMED_OUT: u8 = 3;
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
    match cli.command {
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
                    r = scenarios::suite::run_sentinel(scenarios, strategies, out) => r,
                    s = stop => Err(Interrupted(s).into()),
                };
            }
            tokio::select! {
                r = scenarios::suite::run_suite(SuiteArgs {
                    scenarios, strategies, seed, quick, out, jobs: jobs as usize, mutant, provider, implementations,
                }) => r,
                s = stop => Err(Interrupted(s).into()),
            }
        }
        Command::Mutants { quick, mutants, seed, out, jobs, no_property } => {
            let stop = interrupted();
            tokio::select! {
                r = scenarios::kill_matrix::run_mutants(mutants, quick, seed, out, jobs as usize, !no_property) => r,
                s = stop => Err(Interrupted(s).into()),
            }
        }
        Command::Case { file, strategy, mutant, runs, seed } => {
            let stop = interrupted();
            tokio::select! {
                r = scenarios::replay::replay_case(&file, &strategy, mutant.as_deref(), runs, seed) => r,
                s = stop => Err(Interrupted(s).into()),
            }
        }
        tool => tools::run(tool).await,
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
