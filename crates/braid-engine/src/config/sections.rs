//! The common sections of the experiment file: `[partition]`, `[model]`, `[train]`,
//! `[algorithm]` and `[runtime]`, with the checks several sections share.

use std::path::PathBuf;
use std::sync::Arc;

use braid_core::lr_schedule::LrSchedule;
use braid_core::partition::PartitionScheme;
use braid_core::server_opt::ServerOptimizerConfig;
use braid_nn::{AnyModelKind, BoundModel, DataShape, DeviceKind, OptimizerConfig};

use super::ConfigRules;
use crate::error::{Invalid, Rule};
use serde::{Deserialize, Serialize};

/// `[partition]`: the number of clients and the split scheme.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionConfig {
    /// Number of clients.
    #[serde(default = "default_clients")]
    pub clients: usize,
    /// `iid`, `dirichlet`, `shards`, `extended-dirichlet`, `quantity-skew` or `natural`.
    #[serde(default = "default_kind")]
    pub kind: PartitionKind,
    /// Concentration (dirichlet, extended-dirichlet, quantity-skew).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpha: Option<f64>,
    /// Minimum samples per client (dirichlet; default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_size: Option<usize>,
    /// Shards per client (shards).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shards_per_client: Option<usize>,
    /// Classes per client (extended-dirichlet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classes_per_client: Option<usize>,
}

/// Partition scheme names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PartitionKind {
    /// See [`PartitionScheme::Iid`].
    Iid,
    /// See [`PartitionScheme::Dirichlet`].
    Dirichlet,
    /// See [`PartitionScheme::Shards`].
    Shards,
    /// See [`PartitionScheme::ExtendedDirichlet`].
    ExtendedDirichlet,
    /// See [`PartitionScheme::QuantitySkew`].
    QuantitySkew,
    /// See [`PartitionScheme::Natural`].
    Natural,
}

fn default_clients() -> usize {
    10
}
fn default_kind() -> PartitionKind {
    PartitionKind::Iid
}

impl Default for PartitionConfig {
    fn default() -> Self {
        Self {
            clients: default_clients(),
            kind: default_kind(),
            alpha: None,
            min_size: None,
            shards_per_client: None,
            classes_per_client: None,
        }
    }
}

impl PartitionConfig {
    /// The scheme, checking that exactly the fields the kind needs are given.
    pub fn scheme(&self) -> Result<PartitionScheme, Invalid> {
        let missing = |f: &str| {
            Invalid::missing(
                format!("partition.{f}"),
                format!("partition.kind = {:?} needs partition.{f}", self.kind),
            )
        };
        let need = |v: Option<f64>, f: &str| v.ok_or_else(|| missing(f));
        let needu = |v: Option<usize>, f: &str| v.ok_or_else(|| missing(f));
        let given: Vec<&str> = [
            ("alpha", self.alpha.is_some()),
            ("min_size", self.min_size.is_some()),
            ("shards_per_client", self.shards_per_client.is_some()),
            ("classes_per_client", self.classes_per_client.is_some()),
        ]
        .iter()
        .filter(|(_, g)| *g)
        .map(|(f, _)| *f)
        .collect();
        let (scheme, allowed): (PartitionScheme, &[&str]) = match self.kind {
            PartitionKind::Iid => (PartitionScheme::Iid, &[]),
            PartitionKind::Natural => (PartitionScheme::Natural, &[]),
            PartitionKind::Dirichlet => (
                PartitionScheme::Dirichlet {
                    alpha: need(self.alpha, "alpha")?,
                    min_size: self.min_size.unwrap_or(1),
                },
                &["alpha", "min_size"],
            ),
            PartitionKind::Shards => (
                PartitionScheme::Shards {
                    shards_per_client: needu(self.shards_per_client, "shards_per_client")?,
                },
                &["shards_per_client"],
            ),
            PartitionKind::ExtendedDirichlet => (
                PartitionScheme::ExtendedDirichlet {
                    classes_per_client: needu(self.classes_per_client, "classes_per_client")?,
                    alpha: need(self.alpha, "alpha")?,
                },
                &["classes_per_client", "alpha"],
            ),
            PartitionKind::QuantitySkew => (
                PartitionScheme::QuantitySkew {
                    alpha: need(self.alpha, "alpha")?,
                },
                &["alpha"],
            ),
        };
        if let Some(extra) = given.iter().find(|f| !allowed.contains(f)) {
            return Err(Invalid::not_applicable(
                format!("partition.{extra}"),
                format!(
                    "partition.{extra} does not apply to partition.kind = {:?}",
                    self.kind
                ),
            ));
        }
        Ok(scheme)
    }
}

/// `[model]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// A registered model: a built-in (`mlp`, `cnn`, `cnn-small`, `cnn-deep`) or one a program
    /// registered ([`crate::algorithm::Registry::add_model`]).
    pub name: String,
    /// Start from these weights instead of the seeded init: a safetensors file in PyTorch's
    /// layout (a `state_dict` saved with `safetensors.torch.save_file`, or a `final.safetensors`
    /// braid wrote), names and shapes checked against the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<PathBuf>,
    /// The model kind `name` resolves to, set when the config is read through a registry
    /// (not part of the TOML).
    #[serde(skip)]
    pub kind: ModelChoice,
    /// Every model kind the reading registry holds, by name, for algorithms that name further
    /// models (mutual learning's `[mutual] models`); not part of the TOML.
    #[serde(skip)]
    pub registered: RegisteredModels,
}

/// The model kinds a registry holds, by name (empty until the config is read through one).
#[derive(Clone, Default)]
pub struct RegisteredModels(pub Vec<(String, Arc<dyn AnyModelKind>)>);

impl std::fmt::Debug for RegisteredModels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(n, _)| n))
            .finish()
    }
}

/// Configs are compared by what they say: the registry that read them is not part of it.
impl PartialEq for RegisteredModels {
    fn eq(&self, _other: &Self) -> bool {
        true
    }
}

/// The model kind a config's `[model] name` resolved to (empty until the config is read
/// through a registry; a built-in name then still resolves).
#[derive(Clone, Default)]
pub struct ModelChoice(pub Option<Arc<dyn AnyModelKind>>);

impl std::fmt::Debug for ModelChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "resolved"
        } else {
            "unresolved"
        })
    }
}

/// Configs are compared by the model's name: the resolved kind follows from it.
impl PartialEq for ModelChoice {
    fn eq(&self, _other: &Self) -> bool {
        true
    }
}

impl ModelConfig {
    /// The model bound to data of shape `data`: the resolved kind, or braid's built-in of
    /// that name; an error names a model nobody registered.
    pub fn bind(&self, data: &DataShape) -> crate::error::EngineResult<BoundModel> {
        self.bind_named("model.name", &self.name, data)
    }

    /// The kind registered as `name`: `[model]`'s own kind, one the reading registry holds,
    /// or a built-in; `None` if nobody registered it.
    pub fn resolve(&self, name: &str) -> Option<Arc<dyn AnyModelKind>> {
        if name == self.name {
            if let Some(kind) = &self.kind.0 {
                return Some(Arc::clone(kind));
            }
        }
        self.registered
            .0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, k)| Arc::clone(k))
            .or_else(|| crate::algorithm::Registry::builtin().model(name).ok())
    }

    /// Model `name` (named by config field `field`) bound to data of shape `data`; an error
    /// names a model nobody registered.
    pub fn bind_named(
        &self, field: &str, name: &str, data: &DataShape,
    ) -> crate::error::EngineResult<BoundModel> {
        let kind = self.resolve(name).ok_or_else(|| {
            Invalid::new(
                field,
                Rule::Unknown,
                format!(
                    "{field}: `{name}` is not a built-in model; a program that registers it (Registry::add_model) must read the config"
                ),
            )
        })?;
        Ok(kind.bind(name, data)?)
    }
}

/// `[train]`: local training on each client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Mini-batch size.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Local epochs per round.
    #[serde(default = "default_epochs")]
    pub local_epochs: usize,
    /// If set, local steps per round instead of epochs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_steps: Option<usize>,
    /// The local optimizer.
    #[serde(default = "default_optimizer")]
    pub optimizer: OptimizerConfig,
    /// Learning-rate schedule over training progress (default: constant).
    #[serde(default, skip_serializing_if = "is_constant")]
    pub lr_schedule: LrSchedule,
}

fn is_constant(s: &LrSchedule) -> bool {
    *s == LrSchedule::Constant
}

fn default_batch() -> usize {
    32
}
fn default_epochs() -> usize {
    1
}
fn default_optimizer() -> OptimizerConfig {
    OptimizerConfig::Sgd {
        lr: 0.05,
        momentum: 0.0,
        weight_decay: 0.0,
        nesterov: false,
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            batch_size: default_batch(),
            local_epochs: default_epochs(),
            local_steps: None,
            optimizer: default_optimizer(),
            lr_schedule: LrSchedule::Constant,
        }
    }
}

/// `[algorithm]`: the algorithm's name and the fields the built-in algorithms read from
/// this table. Each algorithm refuses the fields it does not use, naming the rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlgorithmTable {
    /// A registered algorithm: `fedavg`, `fedprox`, `centralized`, `fedbuff`, `dsgd`,
    /// `split`, `dfml`, `local`, `fml`, `def-kt`, or one a program registers.
    pub name: String,
    /// Rounds (for `centralized`: epochs, one per round when local_epochs = 1; for `split`:
    /// epochs). Not for `dsgd`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rounds: Option<u32>,
    /// Local SGD steps per peer (`dsgd` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<u64>,
    /// Clients per round (default: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clients_per_round: Option<usize>,
    /// FedProx's proximal weight (fedprox only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mu: Option<f32>,
    /// Evaluate every this many rounds (and after the last); for `dsgd`, every this many
    /// local steps (and at the start and the end).
    #[serde(default = "default_eval_every")]
    pub eval_every: u32,
    /// Server optimizer applied to the averaged client models.
    #[serde(default)]
    pub server_optimizer: ServerOptimizerConfig,
    /// How client updates are combined (FedAvg family): `{ kind = "mean" }` (default),
    /// `median`, `trimmed-mean` (trim), `krum` (f), `multi-krum` (f, m), `norm-clip` (clip).
    #[serde(default, skip_serializing_if = "is_mean")]
    pub aggregator: braid_core::robust::Aggregator,
    /// Seconds the server waits for a round's clients before skipping the ones that have not
    /// replied (default: wait for every client).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub round_timeout_s: Option<f64>,
    /// Replies needed to close a round at its deadline (default 1); with fewer, the server
    /// asks the missing clients again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_replies: Option<usize>,
}

fn default_eval_every() -> u32 {
    1
}

/// True for the plain mean (the default aggregator).
pub fn is_mean(a: &braid_core::robust::Aggregator) -> bool {
    *a == braid_core::robust::Aggregator::Mean
}

impl AlgorithmTable {
    /// Rounds of a server-based run (0 for `dsgd`).
    pub fn rounds(&self) -> u32 {
        self.rounds.unwrap_or(0)
    }

    /// The round deadline, if set.
    pub fn round_deadline(&self) -> Option<std::time::Duration> {
        seconds(self.round_timeout_s)
    }
}

/// Checks a timeout setting `field` (seconds, if set): positive, finite and below 1e9.
pub fn check_seconds(field: &str, value: Option<f64>) -> Result<(), Invalid> {
    match value {
        Some(t) if !(t.is_finite() && t > 0.0 && t < 1e9) => Err(Invalid::range(
            field,
            format!("{field} = {t} must be a positive number of seconds"),
        )),
        _ => Ok(()),
    }
}

/// Checks that setting `field` lies in `lo..=hi` (a NaN never does): the refusal names the
/// field, the value and the range. The ranges are listed in docs/config.md.
pub fn check_in<T: PartialOrd + std::fmt::Display + Copy>(
    field: &str, value: T, lo: T, hi: T,
) -> Result<(), Invalid> {
    if value >= lo && value <= hi {
        Ok(())
    } else {
        Err(Invalid::range(
            field,
            format!("{field} = {value} must be in [{lo}, {hi}]"),
        ))
    }
}

/// Most clients (or peers) a run may have: each holds a model, and some algorithms keep a
/// slot per client from the moment the config is checked.
pub const MAX_CLIENTS: usize = 1_000_000;

/// A timeout setting checked by [`check_seconds`], as a duration.
pub fn seconds(value: Option<f64>) -> Option<std::time::Duration> {
    value.and_then(|s| std::time::Duration::try_from_secs_f64(s).ok())
}

/// `[runtime]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// `cpu` (burn's flex backend) or `gpu` / `gpu:N` / `gpu:software` (burn's wgpu backend).
    #[serde(default)]
    pub device: DeviceKind,
    /// Clients trained at once, one thread each (default: one per CPU core; 1 on a GPU; the
    /// clients of a round with `batch_clients`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<usize>,
    /// The clients trained at once (`workers` of them) train as one stacked computation
    /// ([`crate::batched`]): for GPUs, where a small model's step costs its kernel launches.
    /// Built-in models and classification, without DP-SGD; the simulator only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub batch_clients: bool,
}
