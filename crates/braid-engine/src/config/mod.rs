//! The experiment file (TOML): what to train, on what data, with which algorithm.
//!
//! Every table and field is documented in the README's config reference. Unknown fields are
//! errors (a typo never silently falls back to a default), and every error names the field.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use braid_data::registered::{AnyDatasetKind, RegisteredData};
use braid_data::DataConfig;
use braid_nn::{AnyModelKind, TrainSpec};

mod features;
mod governance;
mod network;
mod sections;
pub use features::{
    AttackConfig, CompressionConfig, DpMode, OnTarget, PrivacyConfig, SecureAggregationConfig,
};
pub use governance::GovernanceConfig;
pub use network::{NetworkConfig, Participant};
pub use sections::{
    check_in, check_seconds, is_mean, seconds, AlgorithmTable, ModelChoice, ModelConfig,
    PartitionConfig, PartitionKind, RegisteredModels, RuntimeConfig, TrainConfig, MAX_CLIENTS,
};

use crate::error::{Invalid, Rule};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// A config that cannot be used: where it came from, and the refused setting (its field,
/// the rule and the line naming both).
#[derive(Debug, Error)]
#[error("{origin}: {invalid}")]
pub struct ConfigError {
    /// The file (or "--set").
    pub origin: String,
    /// What is wrong.
    pub invalid: Invalid,
}

impl ConfigError {
    fn new(origin: impl Into<String>, invalid: Invalid) -> Self {
        Self {
            origin: origin.into(),
            invalid,
        }
    }
}

/// What a config is checked against beyond its common sections: the algorithms a program
/// knows (implemented by [`crate::algorithm::Registry`]).
pub trait ConfigRules {
    /// The top-level tables the algorithms own (kept as written for them to read).
    fn owned_tables(&self) -> Vec<&'static str>;
    /// The model kind registered as `name`, or an error listing the registered names.
    fn model(&self, name: &str) -> Result<Arc<dyn AnyModelKind>, Invalid>;
    /// The data set a program registered as `name` (none by default).
    fn dataset(&self, _name: &str) -> Option<Arc<dyn AnyDatasetKind>> {
        None
    }
    /// The names of the data sets a program registered (none by default).
    fn dataset_names(&self) -> Vec<String> {
        Vec::new()
    }
    /// Every model kind registered, by name (none by default: the built-ins resolve anyway).
    fn models(&self) -> Vec<(String, Arc<dyn AnyModelKind>)> {
        Vec::new()
    }
    /// Checks `config` as a whole: its algorithm, its common sections
    /// ([`ExperimentConfig::check_sections`], [`ExperimentConfig::check_runtime`]), and that
    /// every table and feature set is one its algorithm takes.
    fn check(&self, config: &ExperimentConfig) -> Result<(), Invalid>;
}

/// The top-level keys of the config that are not an algorithm's own tables.
pub const COMMON_TABLES: [&str; 17] = [
    "name",
    "seed",
    "output_dir",
    "data",
    "partition",
    "model",
    "train",
    "algorithm",
    "runtime",
    "network",
    "compression",
    "privacy",
    "attack",
    "latency",
    "secure_aggregation",
    "governance",
    "tables",
];

/// A whole experiment: the sections every algorithm shares, the feature layers' tables, and
/// the tables the chosen algorithm owns (kept as written; the algorithm reads them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentConfig {
    /// Name of the run (default output directory: `runs/<name>`).
    #[serde(default = "default_name")]
    pub name: String,
    /// Seed of every random choice in the run.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Where results go (default `runs/<name>`).
    #[serde(default)]
    pub output_dir: Option<PathBuf>,
    /// The data set.
    #[serde(default)]
    pub data: DataConfig,
    /// How training data is split over clients.
    #[serde(default)]
    pub partition: PartitionConfig,
    /// The model.
    pub model: ModelConfig,
    /// Local training.
    #[serde(default)]
    pub train: TrainConfig,
    /// `[algorithm]`: which algorithm, and the fields the algorithms share.
    pub algorithm: AlgorithmTable,
    /// Where and how it runs.
    #[serde(default)]
    pub runtime: RuntimeConfig,
    /// Who takes part when the run is deployed across processes (`braid node`); ignored by
    /// the simulator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkConfig>,
    /// `[compression]`: what is compressed on the wire (each algorithm takes its fields).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<CompressionConfig>,
    /// `[privacy]`: differentially private FedAvg (central or local DP) with an RDP accountant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub privacy: Option<PrivacyConfig>,
    /// `[attack]`: a simulated attack by a fraction of the clients (FedAvg family).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attack: Option<AttackConfig>,
    /// `[latency]`: simulate time on clients of these speeds and links (FedAvg family and
    /// `fedbuff`, in the simulator).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<braid_core::latency::LatencyConfig>,
    /// `[secure_aggregation]`: the server learns only the sum of each round's updates
    /// (FedAvg family).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secure_aggregation: Option<SecureAggregationConfig>,
    /// `[governance]`: reporting thresholds of a deployed run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub governance: Option<GovernanceConfig>,
    /// The algorithm's own tables (e.g. `[decentralized]`), as written.
    #[serde(skip)]
    pub tables: BTreeMap<String, toml::Value>,
}

fn default_name() -> String {
    "experiment".into()
}
fn default_seed() -> u64 {
    42
}

/// Takes `[data]` out of `value` when it names a data set the program registered (serde reads
/// braid's own); an unknown name is refused with every name known.
fn take_registered_data(
    value: &mut toml::Table, rules: &dyn ConfigRules,
) -> Result<Option<RegisteredData>, Invalid> {
    let Some(toml::Value::Table(data)) = value.get("data") else {
        return Ok(None);
    };
    let Some(toml::Value::String(name)) = data.get("dataset") else {
        return Ok(None);
    };
    if DataConfig::BUILTIN.contains(&name.as_str()) {
        return Ok(None);
    }
    let name = name.clone();
    let Some(kind) = rules.dataset(&name) else {
        let known: Vec<String> = DataConfig::BUILTIN
            .iter()
            .map(|n| n.to_string())
            .chain(rules.dataset_names())
            .map(|n| format!("`{n}`"))
            .collect();
        return Err(Invalid::new(
            "data.dataset",
            Rule::Unknown,
            format!(
                "data.dataset: unknown data set `{name}`, expected one of {}",
                known.join(", ")
            ),
        ));
    };
    let Some(toml::Value::Table(mut options)) = value.remove("data") else {
        return Ok(None);
    };
    options.remove("dataset");
    kind.check(&options).map_err(|e| {
        Invalid::new(
            "data",
            Rule::Syntax,
            format!("data (dataset `{name}`): {}", strip_field(&e)),
        )
    })?;
    Ok(Some(RegisteredData {
        name,
        options,
        kind,
    }))
}

/// A data error's message without the `data.dataset: ` prefix of a bad option.
fn strip_field(e: &braid_data::DataError) -> String {
    let s = e.to_string();
    s.strip_prefix("data.dataset: ").unwrap_or(&s).to_string()
}

/// Turns a TOML parse error into one line: `line L, column C: message`.
fn one_line(src: &str, e: &toml::de::Error) -> String {
    let msg = e.message().trim().replace('\n', " ");
    match e.span() {
        Some(span) => {
            let before = src.get(..span.start).unwrap_or(src);
            let line = before.matches('\n').count() + 1;
            let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("line {line}, column {col}: {msg}")
        }
        None => msg,
    }
}

impl ExperimentConfig {
    /// Parses a config from TOML text, applying `key.path=value` overrides, and validates it
    /// against `rules` (a [`crate::algorithm::Registry`]).
    pub fn parse_with(
        src: &str, origin: &str, overrides: &[String], rules: &dyn ConfigRules,
    ) -> Result<Self, ConfigError> {
        let err =
            |message: String| ConfigError::new(origin, Invalid::new("", Rule::Syntax, message));
        let mut value: toml::Table = toml::from_str(src).map_err(|e| err(one_line(src, &e)))?;
        for o in overrides {
            apply_override(&mut value, o)
                .map_err(|m| ConfigError::new("--set", Invalid::new("", Rule::Syntax, m)))?;
        }
        // The tables algorithms own are the algorithm's to read; anything else must be one
        // of the common keys.
        let registered =
            take_registered_data(&mut value, rules).map_err(|e| ConfigError::new(origin, e))?;
        let owned = rules.owned_tables();
        let mut tables = BTreeMap::new();
        for t in &owned {
            if let Some(v) = value.remove(*t) {
                tables.insert((*t).to_string(), v);
            }
        }
        if let Some(k) = value
            .keys()
            .find(|k| !COMMON_TABLES.contains(&k.as_str()) || k.as_str() == "tables")
        {
            let mut expected: Vec<&str> = COMMON_TABLES[..COMMON_TABLES.len() - 1].to_vec();
            expected.extend(owned.iter().copied());
            return Err(ConfigError::new(
                origin,
                Invalid::new(
                    k.as_str(),
                    Rule::Unknown,
                    format!(
                        "unknown field `{k}`, expected one of {}",
                        expected
                            .iter()
                            .map(|e| format!("`{e}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ),
            ));
        }
        let text = toml::to_string(&value).map_err(|e| err(e.to_string()))?;
        let mut config: Self = toml::from_str(&text).map_err(|e| {
            // Report positions in the user's file when there were no overrides.
            if overrides.is_empty() {
                err(one_line(src, &e))
            } else {
                err(e.message().trim().replace('\n', " "))
            }
        })?;
        config.tables = tables;
        if let Some(r) = registered {
            config.data = DataConfig::Registered(r);
        }
        config.model.kind = ModelChoice(Some(
            rules
                .model(&config.model.name)
                .map_err(|e| ConfigError::new(origin, e))?,
        ));
        config.model.registered = RegisteredModels(rules.models());
        config
            .validate_with(rules)
            .map_err(|e| ConfigError::new(origin, e))?;
        Ok(config)
    }

    /// A config built in code: model `model` and algorithm `algorithm`, every other value at
    /// the default a TOML file gets. Set fields, then check it with
    /// [`ExperimentConfig::validate_with`] before preparing a run.
    pub fn new(model: &str, algorithm: &str) -> Result<Self, ConfigError> {
        let mut t = toml::Table::new();
        for (section, name) in [("model", model), ("algorithm", algorithm)] {
            let mut s = toml::Table::new();
            s.insert("name".into(), toml::Value::String(name.into()));
            t.insert(section.into(), toml::Value::Table(s));
        }
        Self::deserialize(t).map_err(|e| {
            ConfigError::new(
                "ExperimentConfig::new",
                Invalid::new("", Rule::Syntax, e.message().trim().replace('\n', " ")),
            )
        })
    }

    /// Sets the table an algorithm owns (e.g. `"decentralized"`), as a TOML file would.
    pub fn set_table(&mut self, name: &str, value: toml::Table) {
        self.tables.insert(name.into(), toml::Value::Table(value));
    }

    /// Reads and parses a config file, validated against `rules` (a
    /// [`crate::algorithm::Registry`]).
    pub fn load_with(
        path: &Path, overrides: &[String], rules: &dyn ConfigRules,
    ) -> Result<Self, ConfigError> {
        let origin = path.display().to_string();
        let src = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new(
                origin.clone(),
                Invalid::new("", Rule::Unreadable, format!("cannot read: {e}")),
            )
        })?;
        Self::parse_with(&src, &origin, overrides, rules)
    }

    /// The run id: the SHA-256 (hex) of the config as TOML, with what may differ between the
    /// machines of one run left out: participants' addresses, `output_dir`,
    /// `governance.report_dir` and `[runtime]`
    /// (device and worker threads). Run logs, halts, checkpoints and result manifests name
    /// their run by it, and every network message carries it (a node of another run is
    /// refused).
    pub fn run_id(&self) -> String {
        use sha2::Digest;
        let mut c = self.clone();
        c.output_dir = None;
        c.runtime = RuntimeConfig::default();
        if let Some(g) = &mut c.governance {
            g.report_dir = None;
        }
        if let Some(net) = &mut c.network {
            for p in &mut net.participants {
                p.addr = None;
            }
        }
        sha2::Sha256::digest(c.to_toml().as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// The config as TOML (written next to the results): the common sections, then the
    /// algorithm's own tables.
    pub fn to_toml(&self) -> String {
        // A registered data set is written from its table (serde does not know it).
        let (plain, data) = match &self.data {
            DataConfig::Registered(r) => {
                let mut c = self.clone();
                c.data = DataConfig::default();
                (std::borrow::Cow::Owned(c), Some(r.to_table()))
            }
            _ => (std::borrow::Cow::Borrowed(self), None),
        };
        let mut table = match toml::Table::try_from(plain.as_ref()) {
            Ok(t) => t,
            Err(e) => return format!("# config could not be serialized: {e}\n"),
        };
        if let Some(d) = data {
            table.insert("data".into(), toml::Value::Table(d));
        }
        for (k, v) in &self.tables {
            table.insert(k.clone(), v.clone());
        }
        toml::to_string_pretty(&table)
            .unwrap_or_else(|e| format!("# config could not be serialized: {e}\n"))
    }

    /// The algorithm's own table `name`, if the config has it, read as `T`; the error names
    /// the table.
    pub fn table<T: serde::de::DeserializeOwned>(&self, name: &str) -> Result<Option<T>, Invalid> {
        self.tables
            .get(name)
            .map(|v| {
                T::deserialize(v.clone()).map_err(|e| {
                    Invalid::new(
                        name,
                        Rule::Syntax,
                        format!("{name}: {}", e.message().trim().replace('\n', " ")),
                    )
                })
            })
            .transpose()
    }

    /// Checks values the types cannot express against `rules` (a
    /// [`crate::algorithm::Registry`]): the algorithm, the common sections, the algorithm's own
    /// settings ([`crate::algorithm::Algorithm::config`]), and that every table and feature
    /// layer set is one the algorithm takes.
    pub fn validate_with(&self, rules: &dyn ConfigRules) -> Result<(), Invalid> {
        rules.check(self)
    }

    /// Checks the common sections (before the algorithm's own checks).
    pub fn check_sections(&self) -> Result<(), Invalid> {
        check_in("partition.clients", self.partition.clients, 1, MAX_CLIENTS)?;
        if let Some(alpha) = self.partition.alpha {
            check_in("partition.alpha", alpha, 1e-6, 1e6)?;
        }
        for (field, v) in [
            ("partition.min_size", self.partition.min_size),
            (
                "partition.shards_per_client",
                self.partition.shards_per_client,
            ),
            (
                "partition.classes_per_client",
                self.partition.classes_per_client,
            ),
        ] {
            if let Some(v) = v {
                check_in(field, v, 0, 1 << 24)?;
            }
        }
        // A round's batches are drawn up front: bound the steps, epochs and samples per round.
        check_in("train.batch_size", self.train.batch_size, 1, 1 << 20)?;
        check_in("train.local_epochs", self.train.local_epochs, 0, 1000)?;
        if let Some(steps) = self.train.local_steps {
            check_in("train.local_steps", steps, 1, 1_000_000)?;
            if steps.saturating_mul(self.train.batch_size) > 1 << 30 {
                return Err(Invalid::range(
                    "train.local_steps",
                    format!(
                        "train.local_steps x train.batch_size = {steps} x {} is more than 2^30 samples per round",
                        self.train.batch_size
                    ),
                ));
            }
        }
        if let Some(c) = &self.compression {
            c.validate()?;
        }
        self.partition.scheme()?;
        self.train
            .lr_schedule
            .validate()
            .map_err(|e| Invalid::within("train.lr_schedule", e))?;
        if self.train.local_epochs == 0 && self.train.local_steps.is_none() {
            return Err(Invalid::range(
                "train.local_epochs",
                "train.local_epochs must be at least 1 (or set train.local_steps)",
            ));
        }
        self.train
            .optimizer
            .validate()
            .map_err(|e| Invalid::range("train.optimizer", e.to_string()))?;
        self.algorithm
            .server_optimizer
            .validate()
            .map_err(|e| Invalid::within("algorithm", e))?;
        if self.algorithm.eval_every == 0 {
            return Err(Invalid::range(
                "algorithm.eval_every",
                "algorithm.eval_every must be at least 1",
            ));
        }
        self.algorithm
            .aggregator
            .validate()
            .map_err(|e| Invalid::within("algorithm", e))?;
        if let Some(a) = &self.attack {
            if !(0.0..=1.0).contains(&a.fraction) {
                return Err(Invalid::range(
                    "attack.fraction",
                    format!("attack.fraction = {} must be in [0, 1]", a.fraction),
                ));
            }
            a.kind
                .validate()
                .map_err(|e| Invalid::within("attack", e))?;
        }
        if let Some(l) = &self.latency {
            l.validate().map_err(|e| Invalid::within("latency", e))?;
        }
        if let Some(p) = &self.privacy {
            p.validate()?;
        }
        check_seconds("algorithm.round_timeout_s", self.algorithm.round_timeout_s)?;
        if self.algorithm.min_replies == Some(0) {
            return Err(Invalid::range(
                "algorithm.min_replies",
                "algorithm.min_replies must be at least 1",
            ));
        }
        Ok(())
    }

    /// Checks the deployment and runtime sections (after the algorithm's own checks).
    pub fn check_runtime(&self) -> Result<(), Invalid> {
        if let Some(n) = &self.network {
            n.validate()?;
        }
        if let Some(g) = &self.governance {
            g.validate()?;
        }
        if let Some(w) = self.runtime.workers {
            check_in("runtime.workers", w, 1, 1024)?;
        }
        Ok(())
    }

    /// Clients sampled per round (`algorithm.clients_per_round`, or all of `partition.clients`).
    pub fn clients_per_round(&self) -> usize {
        self.algorithm
            .clients_per_round
            .unwrap_or(self.partition.clients)
    }

    /// The local training specification (`prox_mu`: FedProx's proximal weight, 0 without).
    pub fn train_spec(&self) -> TrainSpec {
        TrainSpec {
            optimizer: self.train.optimizer.clone(),
            batch_size: self.train.batch_size,
            epochs: self.train.local_epochs,
            max_steps: self.train.local_steps,
            prox_mu: self.algorithm.mu.unwrap_or(0.0),
            lr_scale: 1.0,
            dp_sgd: self
                .privacy
                .filter(|p| p.mode == DpMode::DpSgd)
                .map(|p| braid_nn::DpSgd {
                    clip: p.clip,
                    noise_multiplier: p.noise_multiplier,
                }),
        }
    }

    /// The output directory.
    pub fn output_dir(&self) -> PathBuf {
        self.output_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("runs").join(&self.name))
    }
}

/// The centralized baseline of `config`: one client holding all data, the same model, data,
/// training, rounds and evaluation, no feature layers.
pub fn centralized(config: &ExperimentConfig) -> ExperimentConfig {
    let mut central = config.clone();
    central.name = format!("{}-centralized", config.name);
    central.algorithm.name = "centralized".into();
    central.algorithm.clients_per_round = None;
    central.algorithm.steps = None;
    central.algorithm.mu = None;
    central.algorithm.server_optimizer = Default::default();
    central.algorithm.aggregator = Default::default();
    central.tables.clear();
    central.latency = None;
    central.compression = None;
    central.privacy = None;
    central.attack = None;
    central.secure_aggregation = None;
    central
}

/// Applies `a.b.c=value` to a TOML table; the value is parsed as TOML, else taken as a string.
fn apply_override(table: &mut toml::Table, assignment: &str) -> Result<(), String> {
    let (key, raw) = assignment
        .split_once('=')
        .ok_or_else(|| format!("{assignment:?} is not of the form key.path=value"))?;
    let value: toml::Value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.trim().to_owned()));
    let parts: Vec<&str> = key.trim().split('.').collect();
    let (last, path) = parts.split_last().ok_or("empty key")?;
    let mut cur = table;
    for p in path {
        let entry = cur
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = entry
            .as_table_mut()
            .ok_or_else(|| format!("{key}: {p} is not a table"))?;
    }
    cur.insert(last.to_string(), value);
    Ok(())
}

#[cfg(test)]
mod tests;
