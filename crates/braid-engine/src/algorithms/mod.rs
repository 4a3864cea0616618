//! The built-in algorithms, one folder each: its nodes (every role a
//! [`crate::node::Node`]), its protocol (`msg.rs`), its metrics and reports (`report.rs`)
//! and its [`crate::algorithm::Algorithm`] implementation. [`builtin`] is the registry's
//! list; an algorithm is added with its folder and one line there.
//!
//! - [`fedavg`]: server-based federated learning: FedAvg (sample-weighted averaging), FedProx
//!   (the client-side proximal term is a training option), partial participation, and server
//!   optimizers on the averaged update (FedAvgM, FedAdam, FedYogi, DiLoCo's Nesterov step). The
//!   centralized baseline is the same algorithm with one client holding all data.
//! - [`fedbuff`]: FedBuff, an asynchronous server that steps whenever a buffer of client
//!   updates is full, weighting each by its staleness.
//! - [`dsgd`]: decentralized SGD without a server: peers on a topology gossip under a
//!   communication budget, and a monitor reports local and merged-model metrics.
//! - [`mutual`]: mutual learning between clients with different architectures: DFML and
//!   its baselines (isolated training, FML, Def-KT).
//! - [`split`]: parallel split learning: clients run the first layers of a cut model, the
//!   server the rest, with global sampling (GPSL) or fixed local batches (FLS, FPLS).

pub mod common;
pub mod dsgd;
pub mod fedavg;
pub mod fedbuff;
pub mod mutual;
pub mod split;

use std::path::Path;

use crate::algorithm::Registry;
use crate::config::{ConfigError, ExperimentConfig};
use crate::error::Invalid;

/// braid's own algorithms, in the order `braid` lists them.
pub fn builtin() -> Registry {
    let mut r = Registry::empty();
    let added = (|| {
        r.add::<fedavg::FedAvg>()?
            .add::<fedavg::FedProx>()?
            .add::<fedavg::Centralized>()?
            .add::<dsgd::Dsgd>()?
            .add::<split::Split>()?
            .add::<mutual::Dfml>()?
            .add::<mutual::Local>()?
            .add::<mutual::Fml>()?
            .add::<mutual::DefKt>()?
            .add::<fedbuff::FedBuff>()?;
        for model in braid_nn::ModelName::ALL {
            r.add_model_kind(model.as_str(), std::sync::Arc::new(model))?;
        }
        r.add_model("resnet20", braid_nn::models::ResNetKind::resnet20())?;
        r.add_model("transformer", braid_nn::models::TransformerKind::small())?;
        Ok::<(), crate::algorithm::RegistryError>(())
    })();
    debug_assert!(added.is_ok(), "the built-in algorithms register: {added:?}");
    r
}

impl Registry {
    /// braid's own algorithms ([`builtin`]).
    pub fn builtin() -> Self {
        builtin()
    }
}

/// Config loading against braid's own algorithms (programs with their own use the `_with`
/// forms and their registry).
impl ExperimentConfig {
    /// Parses a config from TOML text, applying `key.path=value` overrides, and validates it
    /// against braid's built-in algorithms.
    pub fn parse(src: &str, origin: &str, overrides: &[String]) -> Result<Self, ConfigError> {
        Self::parse_with(src, origin, overrides, &builtin())
    }

    /// Reads and parses a config file (braid's built-in algorithms).
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self, ConfigError> {
        Self::load_with(path, overrides, &builtin())
    }

    /// Checks values the types cannot express, for braid's built-in algorithms.
    pub fn validate(&self) -> Result<(), Invalid> {
        self.validate_with(&builtin())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algorithm::RegistryError;

    #[test]
    fn every_builtin_algorithm_registers_once() {
        let r = builtin();
        assert_eq!(
            r.names(),
            [
                "fedavg",
                "fedprox",
                "centralized",
                "dsgd",
                "split",
                "dfml",
                "local",
                "fml",
                "def-kt",
                "fedbuff"
            ]
        );
        let protocols: Vec<_> = r
            .names()
            .iter()
            .map(|n| r.get(n).map(|e| e.protocol()))
            .collect();
        assert!(protocols.iter().all(|p| p.is_some()));
        assert_eq!(r.tables(), ["decentralized", "fedbuff", "mutual", "split"]);
    }

    #[test]
    fn a_second_algorithm_of_the_same_name_is_refused() {
        let mut r = builtin();
        let e = r.add::<dsgd::Dsgd>().err();
        assert_eq!(e, Some(RegistryError::Name("dsgd")));
        assert_eq!(
            e.map(|e| e.to_string()).unwrap_or_default(),
            "an algorithm named \"dsgd\" is already registered"
        );
        // An empty registry knows nothing and says what it knows.
        let empty = Registry::empty();
        let c = crate::config::ExperimentConfig::parse_with(
            "name = \"x\"\n[data]\ndataset = \"synthetic\"\n[partition]\nclients = 2\n[model]\nname = \"mlp\"\n[algorithm]\nname = \"fedavg\"\nrounds = 1\n",
            "x.toml",
            &[],
            &builtin(),
        );
        let c = c.expect("a valid config");
        let e = empty
            .of(&c)
            .err()
            .expect("an empty registry knows no algorithm");
        assert_eq!(
            (e.field.as_str(), e.rule),
            ("algorithm.name", crate::error::Rule::Unknown)
        );
        assert_eq!(
            e.message,
            "algorithm.name: unknown algorithm `fedavg`, expected one of "
        );
    }
}
