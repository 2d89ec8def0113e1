//! Strategies: the implementations a run judges, as values.
//!
//! A strategy is either one the harness ships ([`BuiltIn`]: the hybrid reference, its
//! baselines and design variants) or a program speaking the process protocol
//! ([`crate::external::ExternalSpec`]). What a run may run is a [`Strategies`] set, built by
//! the caller (the CLI from `--implementation`, a test from nothing) and passed to the
//! runner, so a verdict never depends on what else the process registered.
//!
//! Each strategy says what its design claims ([`Design`]: which liveness checks it is held
//! to) and whose expectations it is held to ([`Strategy::held_to`]). A scenario keys its
//! expectations by built-in ([`Expectations`]): adding a strategy is a variant here plus the
//! catalogue's `expect` lines where it differs from valid.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::checker::Validity;
use crate::external::{ExternalSpec, Worker};
use crate::reference::baselines::{PollingOnly, PollingOnlyStream, PubSubOnly, PubSubOnlyStream};
use crate::reference::feedback::Hybrid;
use crate::reference::stream::HybridStream;
use crate::reference::{Config, FeedbackStrategy, StreamStrategy};

/// What a strategy's design claims, which decides the liveness checks it is held to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Design {
    /// Woken by Pub/Sub notifications.
    pub notifies: bool,
    /// Polls storage.
    pub polls: bool,
}

/// A strategy the harness ships.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BuiltIn {
    /// The reference: storage is the truth, Pub/Sub the hint, polling the fallback.
    Hybrid,
    /// Baseline: Pub/Sub alone, the payload in the message.
    PubSubOnly,
    /// Baseline: storage polled alone.
    PollingOnly,
    /// Variant of the hybrid: the hint carries the committed response (no read after the wake).
    HybridPayload,
    /// The hybrid with its durability option (`WAIT 1` after every store): the sentinel
    /// topology's, which has a replica to wait for.
    HybridDurable,
}

impl BuiltIn {
    pub const ALL: [BuiltIn; 5] =
        [BuiltIn::Hybrid, BuiltIn::PubSubOnly, BuiltIn::PollingOnly, BuiltIn::HybridPayload, BuiltIn::HybridDurable];
    /// What a standalone run runs when no strategy is named; also what an external program
    /// may hold itself to (`hello.expect`).
    pub const SUITE: [BuiltIn; 3] = [BuiltIn::Hybrid, BuiltIn::PubSubOnly, BuiltIn::PollingOnly];
    /// Design variants, run on a standalone topology only when named, held to the hybrid's
    /// expectations, so `compare` shows what a variant buys and whether it stays safe.
    pub const VARIANTS: [BuiltIn; 1] = [BuiltIn::HybridPayload];
    /// What the sentinel topology runs: the hybrid as deployed and with its durability option.
    pub const SENTINEL: [BuiltIn; 2] = [BuiltIn::Hybrid, BuiltIn::HybridDurable];

    pub fn name(self) -> &'static str {
        match self {
            BuiltIn::Hybrid => "hybrid",
            BuiltIn::PubSubOnly => "pubsub-only",
            BuiltIn::PollingOnly => "polling-only",
            BuiltIn::HybridPayload => "hybrid-payload",
            BuiltIn::HybridDurable => "hybrid-durable",
        }
    }

    pub fn parse(name: &str) -> Option<BuiltIn> {
        BuiltIn::ALL.into_iter().find(|b| b.name() == name)
    }

    pub fn design(self) -> Design {
        match self {
            BuiltIn::PubSubOnly => Design { notifies: true, polls: false },
            BuiltIn::PollingOnly => Design { notifies: false, polls: true },
            BuiltIn::Hybrid | BuiltIn::HybridPayload | BuiltIn::HybridDurable => Design { notifies: true, polls: true },
        }
    }

    /// The strategy whose expected verdicts this one is held to: a variant, the hybrid's.
    pub fn held_to(self) -> BuiltIn {
        match self {
            BuiltIn::HybridPayload => BuiltIn::Hybrid,
            b => b,
        }
    }

    /// Runs on a single standalone Redis (the durable hybrid needs a replica).
    pub fn standalone(self) -> bool {
        self != BuiltIn::HybridDurable
    }

    /// Has a chunk-streaming implementation (the design variants are feedback-only: streams
    /// already carry their data in the message).
    pub fn streams(self) -> bool {
        BuiltIn::SUITE.contains(&self)
    }

    /// The names, comma-separated, for an error that lists what is valid.
    pub fn names(list: &[BuiltIn]) -> String {
        list.iter().map(|b| b.name()).collect::<Vec<_>>().join(", ")
    }

    /// One worker of this strategy's feedback implementation. The durable hybrid is the
    /// hybrid: its durability is the configuration's (`Config::durability`), which the
    /// topology that has a replica sets.
    pub async fn connect_feedback(
        self,
        cmd_url: &str,
        sub_url: &str,
        cfg: Config,
    ) -> anyhow::Result<Arc<dyn FeedbackStrategy>> {
        Ok(match self {
            BuiltIn::Hybrid | BuiltIn::HybridDurable => Arc::new(Hybrid::connect(cmd_url, sub_url, cfg).await?),
            BuiltIn::HybridPayload => Arc::new(Hybrid::payload_variant(cmd_url, sub_url, cfg).await?),
            BuiltIn::PubSubOnly => Arc::new(PubSubOnly::connect(cmd_url, sub_url, cfg).await?),
            BuiltIn::PollingOnly => Arc::new(PollingOnly::connect(cmd_url, cfg).await?),
        })
    }

    /// One worker of this strategy's streaming implementation.
    pub async fn connect_stream(
        self,
        cmd_url: &str,
        sub_url: &str,
        cfg: Config,
    ) -> anyhow::Result<Arc<dyn StreamStrategy>> {
        Ok(match self {
            BuiltIn::Hybrid => Arc::new(HybridStream::connect(cmd_url, sub_url, cfg).await?),
            BuiltIn::PubSubOnly => Arc::new(PubSubOnlyStream::connect(cmd_url, sub_url, cfg).await?),
            BuiltIn::PollingOnly => Arc::new(PollingOnlyStream::connect(cmd_url, cfg).await?),
            other => anyhow::bail!(
                "{} has no streaming implementation; these do: {}",
                other.name(),
                BuiltIn::names(&BuiltIn::SUITE)
            ),
        })
    }
}

/// One strategy of a run.
#[derive(Clone, Debug)]
pub enum Strategy {
    BuiltIn(BuiltIn),
    /// A program the harness did not write, described by its `hello`.
    External(Arc<ExternalSpec>),
}

impl std::fmt::Display for BuiltIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::fmt::Display for Strategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl From<BuiltIn> for Strategy {
    fn from(b: BuiltIn) -> Strategy {
        Strategy::BuiltIn(b)
    }
}

impl Strategy {
    /// Its name in reports and on the command line.
    pub fn name(&self) -> &str {
        match self {
            Strategy::BuiltIn(b) => b.name(),
            Strategy::External(spec) => &spec.name,
        }
    }

    pub fn design(&self) -> Design {
        match self {
            Strategy::BuiltIn(b) => b.design(),
            Strategy::External(spec) => Design { notifies: spec.hello.notifies, polls: spec.hello.polls },
        }
    }

    /// Whose expected verdicts it is held to: a built-in's (a variant: the hybrid's), an
    /// external program's declared one, or none (an external program that declared nothing:
    /// its verdicts are findings).
    pub fn held_to(&self) -> Option<BuiltIn> {
        match self {
            Strategy::BuiltIn(b) => Some(b.held_to()),
            Strategy::External(spec) => spec.hello.expect.as_deref().and_then(BuiltIn::parse),
        }
    }

    /// Run over the process protocol (its answers cross a pipe; it can break the protocol).
    pub fn is_external(&self) -> bool {
        matches!(self, Strategy::External(_))
    }

    pub fn built_in(&self) -> Option<BuiltIn> {
        match self {
            Strategy::BuiltIn(b) => Some(*b),
            Strategy::External(_) => None,
        }
    }

    /// Speaks the streaming workload.
    pub fn streams(&self) -> bool {
        match self {
            Strategy::BuiltIn(b) => b.streams(),
            Strategy::External(spec) => spec.hello.streams,
        }
    }

    pub async fn connect_feedback(
        &self,
        cmd_url: &str,
        sub_url: &str,
        cfg: &Config,
    ) -> anyhow::Result<Arc<dyn FeedbackStrategy>> {
        match self {
            Strategy::BuiltIn(b) => b.connect_feedback(cmd_url, sub_url, cfg.clone()).await,
            Strategy::External(spec) => Ok(Arc::new(Worker::start(spec, "feedback", cmd_url, sub_url, cfg).await?)),
        }
    }

    pub async fn connect_stream(
        &self,
        cmd_url: &str,
        sub_url: &str,
        cfg: &Config,
    ) -> anyhow::Result<Arc<dyn StreamStrategy>> {
        match self {
            Strategy::BuiltIn(b) => b.connect_stream(cmd_url, sub_url, cfg.clone()).await,
            Strategy::External(spec) => Ok(Arc::new(Worker::start(spec, "stream", cmd_url, sub_url, cfg).await?)),
        }
    }

    /// ` --implementation 'NAME=COMMAND'`, shell-quoted, for a reproduce command naming an
    /// external program; empty for a built-in.
    pub fn reproduce_arg(&self) -> String {
        match self {
            Strategy::BuiltIn(_) => String::new(),
            Strategy::External(spec) => implementation_arg(&spec.name, &spec.command),
        }
    }
}

/// `--implementation NAME=COMMAND` parsed, refused before any program starts when NAME is a
/// built-in's.
pub fn parse_implementation(arg: &str) -> Result<(String, String), String> {
    let (name, command) = crate::external::parse_arg(arg)?;
    if BuiltIn::parse(&name).is_some() {
        return Err(format!("--implementation {name}: the name of a built-in strategy; choose another"));
    }
    Ok((name, command))
}

/// ` --implementation 'NAME=COMMAND'`, the command shell-quoted.
pub fn implementation_arg(name: &str, command: &str) -> String {
    format!(" --implementation '{name}={}'", command.replace('\'', "'\\''"))
}

/// The strategies a run may name: every built-in, and the external programs it was given.
#[derive(Clone, Debug, Default)]
pub struct Strategies {
    externals: BTreeMap<String, Arc<ExternalSpec>>,
}

impl Strategies {
    /// The built-ins alone.
    pub fn built_in() -> Strategies {
        Strategies::default()
    }

    /// Adds an external program under its name. Refused: a built-in's name, or a `hello`
    /// that holds itself to something other than a suite strategy.
    pub fn add(&mut self, spec: ExternalSpec) -> Result<Strategy, String> {
        if BuiltIn::parse(&spec.name).is_some() {
            return Err(format!("--implementation {}: the name of a built-in strategy; choose another", spec.name));
        }
        if let Some(e) = &spec.hello.expect {
            if !BuiltIn::parse(e).is_some_and(|b| BuiltIn::SUITE.contains(&b)) {
                return Err(format!(
                    "--implementation {}: it expects the verdicts of {e:?}; valid: {}",
                    spec.name,
                    BuiltIn::names(&BuiltIn::SUITE)
                ));
            }
        }
        let spec = Arc::new(spec);
        self.externals.insert(spec.name.clone(), spec.clone());
        Ok(Strategy::External(spec))
    }

    /// The strategy called `name`: a built-in, or an external program of this set.
    pub fn resolve(&self, name: &str) -> Option<Strategy> {
        BuiltIn::parse(name)
            .map(Strategy::BuiltIn)
            .or_else(|| self.externals.get(name).cloned().map(Strategy::External))
    }

    /// The external programs, by name.
    pub fn externals(&self) -> impl Iterator<Item = Strategy> + '_ {
        self.externals.values().cloned().map(Strategy::External)
    }
}

/// What one scenario expects of one built-in strategy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expectation {
    pub strategy: BuiltIn,
    pub verdict: Validity,
    /// Why: the cause of an expected loss (a canary's reason), or what a valid one rests on.
    pub why: &'static str,
}

/// A scenario's expectations, keyed by built-in strategy: valid unless listed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Expectations(Vec<Expectation>);

impl Expectations {
    /// `strategy` is expected to get `verdict`, because `why` (a later entry for the same
    /// strategy replaces an earlier one).
    pub fn set(&mut self, strategy: BuiltIn, verdict: Validity, why: &'static str) {
        self.0.retain(|e| e.strategy != strategy);
        self.0.push(Expectation { strategy, verdict, why });
    }

    /// The verdict `strategy` is expected to get, and why (empty when valid and unexplained).
    pub fn of(&self, strategy: BuiltIn) -> (Validity, &'static str) {
        self.0.iter().find(|e| e.strategy == strategy).map_or((Validity::Valid, ""), |e| (e.verdict, e.why))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::external::Hello;
    use std::path::PathBuf;

    fn spec(name: &str, hello: Hello) -> ExternalSpec {
        ExternalSpec {
            name: name.into(),
            command: "sh -c 'echo hi'".into(),
            log_dir: PathBuf::from("/tmp"),
            hello,
            answer_grace_ms: crate::external::ANSWER_GRACE_MS,
        }
    }

    #[test]
    fn names_round_trip_and_variants_are_held_to_the_hybrid() {
        for b in BuiltIn::ALL {
            assert_eq!(BuiltIn::parse(b.name()), Some(b));
        }
        assert_eq!(BuiltIn::parse("nope"), None);
        assert_eq!(BuiltIn::HybridPayload.held_to(), BuiltIn::Hybrid);
        assert_eq!(BuiltIn::PubSubOnly.held_to(), BuiltIn::PubSubOnly);
        assert!(!BuiltIn::HybridDurable.standalone() && BuiltIn::Hybrid.standalone());
        assert!(!BuiltIn::HybridPayload.streams() && BuiltIn::PollingOnly.streams());
    }

    /// Two sets do not see each other's programs: what a name means is the set's, not the
    /// process's.
    #[test]
    fn externals_belong_to_their_set_and_quote_back() {
        let mut a = Strategies::built_in();
        let hello = Hello { notifies: true, polls: false, expect: Some("hybrid".into()), ..Hello::default() };
        let quoted = a.add(spec("quoted", hello)).unwrap();
        assert_eq!(quoted.reproduce_arg(), " --implementation 'quoted=sh -c '\\''echo hi'\\'''");
        assert_eq!(quoted.design(), Design { notifies: true, polls: false });
        assert_eq!(quoted.held_to(), Some(BuiltIn::Hybrid));
        assert!(quoted.is_external());
        assert!(a.resolve("quoted").is_some());
        assert!(Strategies::built_in().resolve("quoted").is_none());
        assert_eq!(a.resolve("hybrid").unwrap().reproduce_arg(), "");
        assert_eq!(a.resolve("pubsub-only").unwrap().built_in(), Some(BuiltIn::PubSubOnly));
    }

    #[test]
    fn an_implementation_argument_may_not_name_a_built_in() {
        assert!(parse_implementation("polling-only=x").unwrap_err().contains("built-in"));
        assert!(parse_implementation("hybrid-durable=x").unwrap_err().contains("built-in"));
        assert_eq!(parse_implementation("mine=x y").unwrap(), ("mine".to_string(), "x y".to_string()));
    }

    #[test]
    fn an_external_may_not_take_a_built_in_name_or_hold_itself_to_a_stranger() {
        let mut s = Strategies::built_in();
        let err = s.add(spec("polling-only", Hello { polls: true, ..Hello::default() })).unwrap_err();
        assert!(err.contains("built-in"), "{err}");
        let odd = Hello { polls: true, expect: Some("hybrid-payload".into()), ..Hello::default() };
        let err = s.add(spec("mine", odd)).unwrap_err();
        assert!(err.contains("hybrid, pubsub-only, polling-only"), "{err}");
        let none = s.add(spec("mine", Hello { polls: true, ..Hello::default() })).unwrap();
        assert_eq!(none.held_to(), None);
    }

    #[test]
    fn expectations_default_to_valid_and_the_last_word_counts() {
        let mut e = Expectations::default();
        assert_eq!(e.of(BuiltIn::Hybrid), (Validity::Valid, ""));
        e.set(BuiltIn::PubSubOnly, Validity::Invalid, "first");
        e.set(BuiltIn::PubSubOnly, Validity::Invalid, "second");
        assert_eq!(e.of(BuiltIn::PubSubOnly), (Validity::Invalid, "second"));
        assert_eq!(e.of(BuiltIn::PollingOnly), (Validity::Valid, ""));
    }
}
