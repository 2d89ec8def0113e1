//! The commands that are tools rather than runs: the fault proxy server, a Redis the
//! harness owns, the reference's feedback and stream operations by hand, the catalogue
//! listing, the reference over the process protocol, `compare`, cargo-mutants' measure and
//! the smoke run. None of them owns infrastructure a sweep must find after a signal.

use std::process::ExitCode;

use harness::infra::{ProcessRedis, RedisNode, RedisSpec};
use harness::strategy::{BuiltIn, Strategy};
use harness::toxiproxy::server::{EmbeddedToxiproxy, ServerOptions};
use harness::toxiproxy::ToxiproxyClient;
use scenarios::suite::write_file;

use crate::cli::{Command, FeedbackAction, StreamAction};
use crate::{interrupted, EXIT_TIMED_OUT};

/// Runs a tool command. The runs (`run`, `mutants`, `case`) are `main.rs`'s: they own
/// infrastructure and end on a signal with a sweep.
pub(crate) async fn run(command: Command) -> anyhow::Result<ExitCode> {
    use harness::reference::{FeedbackStrategy, PublishOutcome, WaitOutcome};
    match command {
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
                let expected: Vec<String> = BuiltIn::SUITE
                    .into_iter()
                    .filter(|b| s.applies(&Strategy::from(*b)))
                    .map(|b| format!("{}={}", b.name(), format!("{:?}", s.expected.of(b).0).to_lowercase()))
                    .collect();
                println!("{:<30} {}  [{}]", s.name, s.about, expected.join(" "));
            }
            println!("strategies: {}", BuiltIn::names(&BuiltIn::SUITE));
            Ok(ExitCode::SUCCESS)
        }
        Command::ServeImpl { strategy } => {
            let valid = || BuiltIn::names(&[&BuiltIn::SUITE[..], &BuiltIn::VARIANTS[..]].concat());
            let strategy = BuiltIn::parse(&strategy)
                .filter(|b| b.standalone())
                .ok_or_else(|| anyhow::anyhow!("unknown strategy {strategy:?}; valid: {}", valid()))?;
            harness::external::serve::serve(strategy).await?;
            Ok(ExitCode::SUCCESS)
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
        Command::Run { .. } | Command::Mutants { .. } | Command::Case { .. } => {
            anyhow::bail!("a run, not a tool: main dispatches it")
        }
    }
}
