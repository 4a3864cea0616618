//! The [`Algorithm`] contract, and the [`Registry`] that lists the algorithms a program knows.
//!
//! An algorithm is one folder under `algorithms/` (or a type in a user's crate): its config
//! section (the `[algorithm]` fields it uses and the tables it owns), its protocol (a
//! [`Message`] type), its metrics row, the nodes it builds from a prepared experiment and the
//! feature layers it accepts. Everything else is generic over it: config loading and `--set`,
//! experiment building, the simulator, reports, the CLI (including `--baseline`) and the
//! network runtime (through [`WireNode`]). The registry is the one place that lists
//! algorithms; a program adds its own with [`Registry::add`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use braid_data::registered::{AnyDatasetKind, DatasetKind};
use braid_nn::{AnyModelKind, Kind, ModelKind};

use crate::config::{ConfigRules, ExperimentConfig};
use crate::error::{Invalid, Rule};
use crate::node::{BoxNode, EngineResult, Metrics, Protocol};
use crate::prepared::Prepared;
use crate::report::Rows;
use crate::sim::Timing;
use crate::trainer::TrainerObject;
use crate::wire::{Message, NodeId};
use crate::wire_node::WireNode;

/// A feature layer an algorithm may accept (its table in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feature {
    /// `[compression]` (each algorithm checks the fields it takes).
    Compression,
    /// `[privacy]`: differential privacy.
    Privacy,
    /// `[attack]`: simulated attackers.
    Attack,
    /// `[secure_aggregation]`.
    SecureAggregation,
    /// `algorithm.aggregator`: robust aggregation rules.
    RobustAggregation,
    /// `[latency]`: simulated time.
    Latency,
}

impl Feature {
    /// Every feature, in the order refusals check them.
    pub const ALL: [Feature; 6] = [
        Feature::Compression,
        Feature::Privacy,
        Feature::Attack,
        Feature::SecureAggregation,
        Feature::RobustAggregation,
        Feature::Latency,
    ];

    /// How the config names it.
    pub fn name(self) -> &'static str {
        match self {
            Feature::Compression => "[compression]",
            Feature::Privacy => "[privacy]",
            Feature::Attack => "[attack]",
            Feature::SecureAggregation => "[secure_aggregation]",
            Feature::RobustAggregation => "algorithm.aggregator",
            Feature::Latency => "[latency]",
        }
    }

    /// Whether `config` turns it on.
    pub fn is_set(self, config: &ExperimentConfig) -> bool {
        match self {
            Feature::Compression => config.compression.is_some(),
            Feature::Privacy => config.privacy.is_some(),
            Feature::Attack => config.attack.is_some(),
            Feature::SecureAggregation => config.secure_aggregation.is_some(),
            Feature::RobustAggregation => {
                config.algorithm.aggregator != braid_core::robust::Aggregator::Mean
            }
            Feature::Latency => config.latency.is_some(),
        }
    }
}

/// The reference run `--baseline` compares a run with.
#[derive(Debug, Clone)]
pub struct Baseline {
    /// The reference's config.
    pub config: ExperimentConfig,
    /// What the comparison line says of the run (e.g. "fedavg final accuracy").
    pub subject: String,
    /// What the reference is, for the comparison line (e.g. "centralized baseline").
    pub what: &'static str,
}

/// What an algorithm says at the end of a run, besides its metrics table.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// The accuracy `--baseline` compares (the final model's, or the merged model's).
    pub accuracy: Option<f64>,
    /// The summary line's beginning, e.g. `final test accuracy 0.81 after 10 rounds | 13 MB
    /// communicated`; the CLI adds wall time, memory and where the results are.
    pub line: String,
}

/// A node of algorithm `A`, boxed.
pub type NodeOf<A> = BoxNode<<A as Algorithm>::Protocol>;
/// The messages of algorithm `A`'s protocol.
pub type MsgOf<A> = <<A as Algorithm>::Protocol as Protocol>::Msg;
/// The metrics rows of algorithm `A`.
pub type MetricsOf<A> = <<A as Algorithm>::Protocol as Protocol>::Metrics;
/// The trainer algorithm `A`'s nodes are lent.
pub type TrainerOf<A> = <<A as Algorithm>::Protocol as Protocol>::Trainer;

/// One algorithm: see the module documentation.
pub trait Algorithm: Send + Sync + 'static {
    /// Its name in `algorithm.name`.
    const NAME: &'static str;
    /// Its settings, read from `[algorithm]` and the tables it owns.
    type Config: Clone + Send + Sync + 'static;
    /// What its nodes exchange, report (the rows of its `metrics.csv`) and are lent (a
    /// bundle of capabilities declared with [`crate::trainer_bundle!`], checked when the
    /// algorithm compiles); algorithms that share nodes share it.
    type Protocol: Protocol<Metrics: Metrics + Rows, Trainer: TrainerObject>;
    /// Top-level tables of the config it owns (e.g. `["decentralized"]`).
    const TABLES: &'static [&'static str] = &[];
    /// The feature layers it accepts.
    const FEATURES: &'static [Feature] = &[];

    /// What it offers in place of a feature it refuses, added to the refusal (split learning:
    /// "split learning has [split.latency]" for `[latency]`).
    fn instead(_feature: Feature) -> Option<&'static str> {
        None
    }

    /// Reads and checks its settings; the error names the field and the rule.
    fn config(config: &ExperimentConfig) -> Result<Self::Config, Invalid>;

    /// How many data shards (participants holding data) the run has.
    fn shards(config: &ExperimentConfig) -> usize {
        config.partition.clients
    }

    /// Adds what the algorithm needs to the prepared run (a split model, a list of models).
    fn prepare(_prepared: &mut Prepared, _settings: &Self::Config) -> EngineResult {
        Ok(())
    }

    /// The run's nodes, node 0 first.
    fn build(prepared: &Prepared, settings: &Self::Config) -> EngineResult<Vec<NodeOf<Self>>>;

    /// The node that holds shard `k` (default: node 0 is a server, shards are nodes 1..).
    fn node_of_shard(k: usize) -> NodeId {
        k as NodeId + 1
    }

    /// The shard node `id` holds, if any.
    fn shard_of_node(id: NodeId, shards: usize) -> Option<usize> {
        let k = (id as usize).checked_sub(1)?;
        (k < shards).then_some(k)
    }

    /// The role of node `node` of `nodes`, for reports.
    fn role(_settings: &Self::Config, node: usize, _nodes: usize) -> &'static str {
        if node == 0 {
            "server"
        } else {
            "client"
        }
    }

    /// True when the run's results depend on the order in which messages arrive (an
    /// asynchronous server that steps on whichever updates came first): the fault-schedule
    /// simulator then checks the reported rounds and termination, not equality with the
    /// fault-free run.
    const ARRIVAL_ORDER_MATTERS: bool = false;

    /// Why node `id`'s training claims are not replayed, if they are not (its state before
    /// an input is not kept: a node that checkpoints only between rounds or epochs).
    fn not_replayed(_id: NodeId) -> Option<&'static str> {
        None
    }

    /// The simulated-time model of the run, if it keeps simulated time.
    fn timing(_prepared: &Prepared, _settings: &Self::Config) -> Option<Timing> {
        None
    }

    /// The most values one message of the run may carry (the decoders' limit).
    fn max_message_values(prepared: &Prepared, _settings: &Self::Config) -> usize {
        prepared.model.num_params()
    }

    /// Who takes part, for the run's first line (e.g. "10 clients (10 per round)").
    fn describe(prepared: &Prepared, settings: &Self::Config) -> String;

    /// The progress bar's unit and length (e.g. `("round", 10)`).
    fn progress(config: &ExperimentConfig, settings: &Self::Config) -> (&'static str, u64);

    /// The summary of a finished run.
    fn summary(
        prepared: &Prepared, settings: &Self::Config, rows: &[(MetricsOf<Self>, f64)],
    ) -> Summary;

    /// The reference `--baseline` runs: by default the centralized baseline (one client
    /// holding all data, the same model, data, training and rounds).
    fn baseline(config: &ExperimentConfig) -> Option<Baseline> {
        Some(Baseline {
            config: crate::config::centralized(config),
            subject: format!("{} final accuracy", Self::NAME),
            what: "centralized baseline",
        })
    }
}

/// A finished simulated run, its metrics types erased: what the CLI prints and writes.
pub trait Finished {
    /// The metrics table printed after the run.
    fn table(&self) -> String;
    /// Writes every output file into `dir`; returns their paths.
    fn write(&self, dir: &Path) -> Result<Vec<PathBuf>, String>;
    /// The run's summary.
    fn summary(&self) -> Summary;
}

/// An algorithm with its types erased, as the registry holds it.
pub trait Registered: Send + Sync {
    /// Its name.
    fn name(&self) -> &'static str;
    /// [`Algorithm::ARRIVAL_ORDER_MATTERS`].
    fn arrival_order_matters(&self) -> bool;
    /// The protocol its nodes speak.
    fn protocol(&self) -> (&'static str, u8);
    /// The tables it owns.
    fn tables(&self) -> &'static [&'static str];
    /// The features it accepts.
    fn features(&self) -> &'static [Feature];
    /// See [`Algorithm::instead`].
    fn instead(&self, feature: Feature) -> Option<&'static str>;
    /// Checks its settings in `config`.
    fn check(&self, config: &ExperimentConfig) -> Result<(), Invalid>;
    /// Data shards of the run.
    fn shards(&self, config: &ExperimentConfig) -> usize;
    /// Prepares the run (data, partition, model and what the algorithm adds).
    fn prepare(&self, config: &ExperimentConfig) -> EngineResult<Prepared>;
    /// See [`Algorithm::node_of_shard`].
    fn node_of_shard(&self, k: usize) -> NodeId;
    /// See [`Algorithm::shard_of_node`].
    fn shard_of_node(&self, id: NodeId, shards: usize) -> Option<usize>;
    /// See [`Algorithm::role`].
    fn role(&self, config: &ExperimentConfig, node: usize, nodes: usize) -> &'static str;
    /// See [`Algorithm::max_message_values`].
    fn max_message_values(&self, prepared: &Prepared) -> EngineResult<usize>;
    /// See [`Algorithm::describe`].
    fn describe(&self, prepared: &Prepared) -> EngineResult<String>;
    /// See [`Algorithm::progress`].
    fn progress(&self, config: &ExperimentConfig) -> EngineResult<(&'static str, u64)>;
    /// See [`Algorithm::baseline`].
    fn baseline(&self, config: &ExperimentConfig) -> Option<Baseline>;
    /// Runs the experiment in the simulator; `on_progress` sees each metrics row's progress
    /// (position, accuracy) as it is reported.
    fn simulate(
        &self, prepared: &Prepared, on_progress: &mut dyn FnMut(u64, Option<f64>),
    ) -> EngineResult<Box<dyn Finished>>;
    /// Runs `seeds` of the fault-schedule simulator ([`crate::sim::faults::explore`]);
    /// returns the seeds that broke an invariant.
    fn explore_faults(
        &self, prepared: &Prepared, plan: &crate::sim::faults::FaultPlan,
        seeds: std::ops::Range<u64>, replay_every: u64, progress: &mut dyn FnMut(u64, bool),
    ) -> EngineResult<Vec<crate::sim::faults::Broken>>;
    /// Node `id` of a deployed run, its protocol erased to bytes for the network runtime.
    fn deploy(&self, prepared: &Prepared, id: NodeId) -> EngineResult<Box<dyn WireNode>>;
    /// See [`Message::REPLAYED`].
    fn replay_inputs(&self) -> &'static [&'static str];
    /// See [`Algorithm::not_replayed`].
    fn not_replayed(&self, id: NodeId) -> Option<&'static str>;
    /// Re-executes what node `id`, built afresh and given `state` (as
    /// [`crate::checkpoint::encode_state`] wrote it; `None`: as built), does with `inputs`,
    /// one after the other: for each, the compute it spends, the model hashes around its
    /// training and the hashes of the node's state around it, as its run log would record
    /// them. A message the node refuses leaves it as it was, as in a run.
    fn replay(
        &self, prepared: &Prepared, id: NodeId, state: Option<&[u8]>, inputs: &[ReplayInput<'_>],
    ) -> EngineResult<Vec<Replayed>>;
    /// The outputs of a deployed node from the rows it reported (as JSON values, see
    /// [`WireNode`]) and its final parameters.
    fn finished_from_rows(
        &self, prepared: &Prepared, rows: Vec<(serde_json::Value, f64)>,
        final_params: Option<Vec<f32>>,
    ) -> EngineResult<Box<dyn Finished>>;
}

/// What [`Registered::replay`] hands the node.
#[derive(Debug, Clone, Copy)]
pub enum ReplayInput<'a> {
    /// The run's start.
    Start,
    /// An encoded message (one of [`Message::REPLAYED`]) from node `from`.
    Message {
        /// Its sender.
        from: NodeId,
        /// Its frame.
        bytes: &'a [u8],
    },
}

/// A training claim re-executed by [`Registered::replay`].
#[derive(Debug, Clone, PartialEq)]
pub struct Replayed {
    /// The compute spent.
    pub compute: crate::accounting::Compute,
    /// The model hashes before and after training, if it trained.
    pub models: Option<(String, String)>,
    /// The round or step the input belongs to (as the runtime logs it).
    pub round: Option<u64>,
    /// For a node that keeps state: the SHA-256 of its encoded state before the input and
    /// after it.
    pub states: Option<(String, String)>,
    /// The messages it sent while handling the input: receiver and SHA-256 of the frame (as
    /// a `sent` log entry names them).
    pub sent: Vec<(NodeId, String)>,
}

/// The algorithms and models a program knows, by name.
pub struct Registry {
    entries: Vec<Box<dyn Registered>>,
    models: Vec<(String, Arc<dyn AnyModelKind>)>,
    datasets: Vec<(String, Arc<dyn AnyDatasetKind>)>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("algorithms", &self.names())
            .field("models", &self.model_names())
            .field("datasets", &self.dataset_names())
            .finish()
    }
}

/// Why an algorithm cannot be registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// Its name is taken.
    #[error("an algorithm named {0:?} is already registered")]
    Name(&'static str),
    /// A model's name is taken, or is not a plain name.
    #[error("model name {0:?} is taken or not a plain name (letters, digits, '-', '_')")]
    ModelName(String),
    /// A data set's name is taken (braid's own included), or is not a plain name.
    #[error("data set name {0:?} is taken or not a plain name (letters, digits, '-', '_')")]
    DatasetName(String),
    /// It owns a table another algorithm owns with another layout, or a common one.
    #[error("table [{table}] of algorithm {name:?} is a common table of the config")]
    Table {
        /// The algorithm.
        name: &'static str,
        /// The table.
        table: &'static str,
    },
    /// Its protocol tag is taken by another protocol.
    #[error(
        "protocol {protocol:?} of algorithm {name:?} uses tag {tag}, which protocol {other:?} has"
    )]
    Tag {
        /// The algorithm.
        name: &'static str,
        /// Its protocol.
        protocol: &'static str,
        /// The tag.
        tag: u8,
        /// The protocol that has it.
        other: &'static str,
    },
}

impl Registry {
    /// An empty registry.
    pub fn empty() -> Self {
        Self {
            entries: Vec::new(),
            models: Vec::new(),
            datasets: Vec::new(),
        }
    }

    /// Adds a data set under `name`, for configs' `[data] dataset = "..."` (its options are
    /// the table's other keys). The names of braid's own data sets
    /// ([`DataConfig::BUILTIN`](braid_data::DataConfig::BUILTIN)) are taken.
    pub fn add_dataset<K: DatasetKind>(
        &mut self, name: &str, kind: K,
    ) -> Result<&mut Self, RegistryError> {
        if !plain_name(name)
            || braid_data::DataConfig::BUILTIN.contains(&name)
            || self.datasets.iter().any(|(n, _)| n == name)
        {
            return Err(RegistryError::DatasetName(name.into()));
        }
        self.datasets.push((name.into(), Arc::new(kind)));
        Ok(self)
    }

    /// Adds a model kind under `name`, for configs' `[model] name = "..."`.
    pub fn add_model<K: ModelKind>(
        &mut self, name: &str, kind: K,
    ) -> Result<&mut Self, RegistryError> {
        self.add_model_kind(name, Arc::new(Kind(kind)))
    }

    /// Adds a model kind already behind a trait object (the built-ins are
    /// [`braid_nn::ModelName`]s).
    pub fn add_model_kind(
        &mut self, name: &str, kind: Arc<dyn AnyModelKind>,
    ) -> Result<&mut Self, RegistryError> {
        if !plain_name(name) || self.models.iter().any(|(n, _)| n == name) {
            return Err(RegistryError::ModelName(name.into()));
        }
        self.models.push((name.into(), kind));
        Ok(self)
    }

    /// Every registered data set name, in registration order.
    pub fn dataset_names(&self) -> Vec<&str> {
        self.datasets.iter().map(|(n, _)| n.as_str()).collect()
    }

    /// Every registered model name, in registration order.
    pub fn model_names(&self) -> Vec<&str> {
        self.models.iter().map(|(n, _)| n.as_str()).collect()
    }

    /// Adds algorithm `A`.
    pub fn add<A: Algorithm>(&mut self) -> Result<&mut Self, RegistryError> {
        if self.get(A::NAME).is_some() {
            return Err(RegistryError::Name(A::NAME));
        }
        if let Some(t) = A::TABLES
            .iter()
            .find(|t| crate::config::COMMON_TABLES.contains(t))
        {
            return Err(RegistryError::Table {
                name: A::NAME,
                table: t,
            });
        }
        let tag = <MsgOf<A> as Message>::TAG;
        let protocol = <MsgOf<A> as Message>::PROTOCOL;
        let taken = crate::wire::BUILTIN_PROTOCOLS
            .iter()
            .map(|&(t, n)| (n, t))
            .chain(self.entries.iter().map(|e| e.protocol()))
            .find(|&(n, t)| t == tag && n != protocol);
        if let Some((other, _)) = taken {
            return Err(RegistryError::Tag {
                name: A::NAME,
                protocol,
                tag,
                other,
            });
        }
        self.entries
            .push(Box::new(Entry::<A>(std::marker::PhantomData)));
        Ok(self)
    }

    /// The algorithm named `name`.
    pub fn get(&self, name: &str) -> Option<&dyn Registered> {
        self.entries
            .iter()
            .find(|e| e.name() == name)
            .map(|e| e.as_ref())
    }

    /// The algorithm `config` names, or an error listing the known ones.
    pub fn of(&self, config: &ExperimentConfig) -> Result<&dyn Registered, Invalid> {
        self.get(&config.algorithm.name).ok_or_else(|| {
            Invalid::new(
                "algorithm.name",
                Rule::Unknown,
                format!(
                    "algorithm.name: unknown algorithm `{}`, expected one of {}",
                    config.algorithm.name,
                    self.names()
                        .iter()
                        .map(|n| format!("`{n}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        })
    }

    /// Every registered name, in registration order.
    pub fn names(&self) -> Vec<&'static str> {
        self.entries.iter().map(|e| e.name()).collect()
    }

    /// Every table some algorithm owns.
    pub fn tables(&self) -> Vec<&'static str> {
        let mut t: Vec<&'static str> = self
            .entries
            .iter()
            .flat_map(|e| e.tables().iter().copied())
            .collect();
        t.sort_unstable();
        t.dedup();
        t
    }

    /// The algorithms owning `table` or accepting `feature`, quoted and joined as a sentence
    /// ("\"fedavg\" and \"fedprox\"").
    pub fn who(&self, pick: impl Fn(&dyn Registered) -> bool, last: &str) -> String {
        let names: Vec<String> = self
            .entries
            .iter()
            .filter(|e| pick(e.as_ref()))
            .map(|e| format!("\"{}\"", e.name()))
            .collect();
        match names.split_last() {
            None => "no algorithm".into(),
            Some((only, [])) => only.clone(),
            Some((l, rest)) => format!("{} {last} {l}", rest.join(", ")),
        }
    }
}

/// A registered algorithm (what it does for drivers is in [`crate::experiment`]).
pub(crate) struct Entry<A>(pub(crate) std::marker::PhantomData<A>);

/// Letters, digits, '-' and '_', at least one.
fn plain_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

impl ConfigRules for Registry {
    fn owned_tables(&self) -> Vec<&'static str> {
        self.tables()
    }

    fn dataset(&self, name: &str) -> Option<Arc<dyn AnyDatasetKind>> {
        self.datasets
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, k)| Arc::clone(k))
    }

    fn dataset_names(&self) -> Vec<String> {
        self.datasets.iter().map(|(n, _)| n.clone()).collect()
    }

    fn models(&self) -> Vec<(String, Arc<dyn AnyModelKind>)> {
        self.models.clone()
    }

    fn model(&self, name: &str) -> Result<Arc<dyn AnyModelKind>, Invalid> {
        self.models
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, k)| Arc::clone(k))
            .ok_or_else(|| {
                Invalid::new(
                    "model.name",
                    Rule::Unknown,
                    format!(
                        "model.name: unknown model `{name}`, expected one of {}",
                        self.model_names()
                            .iter()
                            .map(|n| format!("`{n}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
            })
    }

    fn check(&self, config: &ExperimentConfig) -> Result<(), Invalid> {
        let algorithm = self.of(config)?;
        config.check_sections()?;
        for t in config.tables.keys() {
            if !algorithm.tables().contains(&t.as_str()) {
                let owners = self.who(|e| e.tables().contains(&t.as_str()), "or");
                return Err(Invalid::not_applicable(
                    t.as_str(),
                    format!("[{t}] only applies to algorithm.name = {owners}"),
                ));
            }
        }
        for f in Feature::ALL {
            if f.is_set(config) && !algorithm.features().contains(&f) {
                let refusal = match f {
                    Feature::Compression => {
                        format!("[compression] does not apply to \"{}\"", algorithm.name())
                    }
                    _ => format!(
                        "{} applies to {}",
                        f.name(),
                        self.who(|e| e.features().contains(&f), "and")
                    ),
                };
                let refusal = match algorithm.instead(f) {
                    Some(hint) => format!("{refusal} ({hint})"),
                    None => refusal,
                };
                let field = f.name().trim_start_matches('[').trim_end_matches(']');
                return Err(Invalid::not_applicable(field, refusal));
            }
        }
        algorithm.check(config)?;
        config.check_runtime()
    }
}
