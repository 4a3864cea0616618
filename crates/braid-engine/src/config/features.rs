//! The feature layers' tables: `[privacy]`, `[secure_aggregation]`, `[attack]` and `[compression]`.

use super::*;

/// `[secure_aggregation]`: pairwise-masked aggregation (Bonawitz et al. 2017) with x25519
/// key agreement, ChaCha20 masks and Shamir shares, so the server learns only each round's
/// sum and the sum survives clients dropping out after sharing their keys.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecureAggregationConfig {
    /// Shares needed to unmask, between 2 and the clients per round (default: a majority,
    /// `clients_per_round / 2 + 1`). Up to `clients_per_round - threshold` clients may drop out
    /// of a round; fewer than `threshold` colluding clients learn nothing with the server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<usize>,
    /// Fractional bits of the fixed-point encoding of updates (default 24, in 8..=40).
    #[serde(default = "default_scale_bits")]
    pub scale_bits: u32,
}

fn default_scale_bits() -> u32 {
    24
}

impl SecureAggregationConfig {
    /// The threshold for `clients_per_round` clients per round.
    pub fn threshold_for(&self, clients_per_round: usize) -> usize {
        self.threshold.unwrap_or(clients_per_round / 2 + 1)
    }
}

/// `[attack]`: a fraction of the clients, drawn with the seed, turn their update into the
/// attacker's before sending it (FedAvg family; for testing robust aggregators).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttackConfig {
    /// Fraction of the clients that attack, in [0, 1].
    pub fraction: f64,
    /// What they do: `{ kind = "sign-flip", scale = 1 }`, `{ kind = "scale", scale = 10 }` or
    /// `{ kind = "gaussian", std = 1 }`.
    pub kind: braid_core::robust::Attack,
}

/// `[privacy]`: differential privacy for the FedAvg family. `central` and `local` are
/// user-level DP (DP-FedAvg, McMahan et al. 2018): every client's update (trained minus
/// received parameters) is clipped to L2 norm `clip`, Gaussian noise of standard deviation
/// `noise_multiplier * clip` is added, and the server averages with equal weights over the
/// `clients_per_round` it asked. `dp-sgd` is sample-level DP inside local training (Abadi et
/// al. 2016): Poisson-sampled batches, each sample's gradient clipped to `clip`, noise on
/// every step; the server aggregates as usual.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivacyConfig {
    /// `central`: the (trusted) server clips every update and adds one noise draw to their
    /// sum; `local`: each client clips and noises its own update before sending it;
    /// `dp-sgd`: each client trains with DP-SGD (per-sample clipping and noise).
    pub mode: DpMode,
    /// L2 bound on each client's update (`dp-sgd`: on each sample's gradient).
    pub clip: f64,
    /// Noise standard deviation in units of `clip`.
    pub noise_multiplier: f64,
    /// The delta of the reported (epsilon, delta) (default 1e-5).
    #[serde(default = "default_delta")]
    pub delta: f64,
    /// Stop (or warn, see `on_target`) before a round would take epsilon past this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_epsilon: Option<f64>,
    /// `stop` (default: the run ends before exceeding the target) or `warn` (it goes on).
    #[serde(default)]
    pub on_target: OnTarget,
}

/// Where DP noise is added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DpMode {
    /// At the server, once per round, on the sum of clipped updates.
    Central,
    /// At every client, on its own clipped update.
    Local,
    /// Inside every client's local training, on every step's sum of per-sample clipped
    /// gradients (sample-level DP for each client's data).
    DpSgd,
}

/// What happens when the privacy budget would be exceeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnTarget {
    /// End the run after the last round that stays within the target.
    #[default]
    Stop,
    /// Log a warning and go on.
    Warn,
}

fn default_delta() -> f64 {
    1e-5
}

impl PrivacyConfig {
    /// Checks the fields; the error names the one that is wrong.
    pub fn validate(&self) -> Result<(), Invalid> {
        // Noise of std clip x noise_multiplier is added in f32: both bounded keep it finite.
        if !(self.clip > 0.0 && self.clip <= 1e6) {
            return Err(Invalid::range(
                "privacy.clip",
                format!("privacy.clip = {} must be in (0, 1e6]", self.clip),
            ));
        }
        super::check_in("privacy.noise_multiplier", self.noise_multiplier, 0.0, 1e6)?;
        if !(self.delta > 0.0 && self.delta < 1.0) {
            return Err(Invalid::range(
                "privacy.delta",
                format!("privacy.delta = {} must be in (0, 1)", self.delta),
            ));
        }
        if let Some(t) = self.target_epsilon {
            if !(t.is_finite() && t > 0.0) {
                return Err(Invalid::range(
                    "privacy.target_epsilon",
                    format!("privacy.target_epsilon = {t} must be > 0"),
                ));
            }
        }
        Ok(())
    }
}

/// `[compression]`: compressed messages of the FedAvg family.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompressionConfig {
    /// Client updates (trained parameters minus the model received), e.g.
    /// `{ sparsify = { kind = "top-k", fraction = 0.01 }, quantize = { kind = "fp16" } }`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uplink: Option<braid_core::compress::Compression>,
    /// Clients keep what compression dropped from their update and add it next time.
    #[serde(default)]
    pub error_feedback: bool,
    /// The global model sent to clients (quantizers only: every client gets the whole model),
    /// or with `downlink_delta` the change to the clients' copy (any setting).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downlink: Option<braid_core::compress::Compression>,
    /// Clients keep a copy of the model between rounds and the server sends the compressed
    /// change to it, keeping what compression dropped for later rounds.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub downlink_delta: bool,
    /// `dsgd`: the parameters peers gossip, quantized (quantizers only: every neighbour needs
    /// the whole model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gossip: Option<braid_core::compress::Compression>,
    /// Mutual learning (`dfml`, `fml`, `def-kt`): the models nodes exchange, quantized
    /// (quantizers only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub models: Option<braid_core::compress::Compression>,
    /// `split`: every split-learning message's values (activations and gradients at the cut,
    /// the client part and its gradient), quantized (quantizers only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<braid_core::compress::Compression>,
}

impl CompressionConfig {
    /// Checks each setting.
    pub fn validate(&self) -> Result<(), Invalid> {
        for (name, c) in [
            ("uplink", &self.uplink),
            ("downlink", &self.downlink),
            ("gossip", &self.gossip),
            ("models", &self.models),
            ("split", &self.split),
        ] {
            if let Some(c) = c {
                c.validate().map_err(|e| {
                    Invalid::range(
                        format!("compression.{name}"),
                        format!("compression.{name}: {e}"),
                    )
                })?;
            }
        }
        if matches!(
            self.downlink.map(|d| d.sparsify),
            Some(braid_core::compress::Sparsify::PowerSgd { .. })
        ) {
            return Err(Invalid::not_applicable(
                "compression.downlink",
                "compression.downlink: power-sgd applies to the uplink only",
            ));
        }
        match &self.downlink {
            Some(d)
                if d.sparsify != braid_core::compress::Sparsify::None && !self.downlink_delta =>
            {
                return Err(Invalid::not_applicable("compression.downlink", "compression.downlink: only quantizers (no sparsify) unless downlink_delta = true: clients need the whole model"));
            }
            None if self.downlink_delta => {
                return Err(Invalid::missing(
                    "compression.downlink",
                    "compression.downlink_delta needs compression.downlink",
                ));
            }
            _ => {}
        }
        if self.error_feedback && self.uplink.is_none() {
            return Err(Invalid::missing(
                "compression.uplink",
                "compression.error_feedback needs compression.uplink",
            ));
        }
        Ok(())
    }
}
