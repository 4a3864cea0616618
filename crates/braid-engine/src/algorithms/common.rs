//! Checks of `[algorithm]` fields and feature tables that several algorithms share, with the
//! messages braid has always given.

use braid_core::compress::Sparsify;

use crate::config::{is_mean, DpMode, ExperimentConfig};

/// `algorithm.rounds`, which algorithm `name` needs (and `algorithm.steps`, which it refuses).
pub fn rounds(c: &ExperimentConfig, name: &str) -> Result<u32, String> {
    let rounds = c
        .algorithm
        .rounds
        .ok_or_else(|| format!("algorithm.name = {name} needs algorithm.rounds"))?;
    if c.algorithm.steps.is_some() {
        return Err(
            "algorithm.steps only applies to \"dsgd\" (use train.local_steps for steps per round)"
                .into(),
        );
    }
    Ok(rounds)
}

/// `algorithm.mu`: needed by FedProx (`fedprox`), refused by everything else.
pub fn check_mu(c: &ExperimentConfig, fedprox: bool) -> Result<(), String> {
    match (fedprox, c.algorithm.mu) {
        (true, None) => Err("algorithm.name = \"fedprox\" needs algorithm.mu (e.g. 0.01)".into()),
        (true, Some(mu)) if !(mu.is_finite() && mu >= 0.0) => {
            Err(format!("algorithm.mu must be >= 0 (got {mu})"))
        }
        (false, Some(_)) => Err("algorithm.mu only applies to algorithm.name = \"fedprox\"".into()),
        _ => Ok(()),
    }
}

/// `algorithm.clients_per_round`, between 1 and the clients.
pub fn check_clients_per_round(c: &ExperimentConfig) -> Result<(), String> {
    match c.algorithm.clients_per_round {
        Some(k) if k == 0 || k > c.partition.clients => Err(format!(
            "algorithm.clients_per_round = {k} must be between 1 and partition.clients = {}",
            c.partition.clients
        )),
        _ => Ok(()),
    }
}

/// Which fields of `[compression]` an algorithm takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompressionUse {
    /// The FedAvg family: `uplink`, `downlink`, `error_feedback`, `downlink_delta`.
    Server,
    /// Decentralized SGD: `gossip`.
    Gossip,
    /// Mutual learning: `models`.
    Models,
    /// Split learning: `split`.
    Split,
}

/// Checks that `[compression]` sets only the fields `takes` names, and that the
/// quantizer-only fields do not sparsify.
pub fn check_compression(c: &ExperimentConfig, takes: CompressionUse) -> Result<(), String> {
    let Some(k) = &c.compression else {
        return Ok(());
    };
    let server_side = k.uplink.is_some() || k.downlink.is_some() || k.error_feedback;
    match takes {
        CompressionUse::Gossip if server_side || k.models.is_some() || k.split.is_some() => {
            return Err("dsgd has no server: its [compression] takes only gossip".into())
        }
        CompressionUse::Models if server_side || k.gossip.is_some() || k.split.is_some() => {
            return Err("mutual learning's [compression] takes only models".into())
        }
        CompressionUse::Split if server_side || k.gossip.is_some() || k.models.is_some() => {
            return Err("split learning's [compression] takes only split".into())
        }
        _ => {}
    }
    for (field, setting, applies, to, why) in [
        (
            "models",
            k.models,
            takes == CompressionUse::Models,
            "\"dfml\", \"local\", \"fml\" and \"def-kt\"",
            "the receiver trains the whole model",
        ),
        (
            "gossip",
            k.gossip,
            takes == CompressionUse::Gossip,
            "\"dsgd\"",
            "every neighbour mixes the whole model",
        ),
        (
            "split",
            k.split,
            takes == CompressionUse::Split,
            "\"split\"",
            "each side needs every value at the cut",
        ),
    ] {
        let Some(setting) = setting else { continue };
        if !applies {
            return Err(format!("compression.{field} applies to {to} only"));
        }
        if setting.sparsify != Sparsify::None {
            return Err(format!(
                "compression.{field}: only quantizers (no sparsify): {why}"
            ));
        }
    }
    Ok(())
}

/// `[secure_aggregation]`: the threshold, the fixed-point scale, and the feature layers it
/// cannot be combined with.
pub fn check_secure_aggregation(c: &ExperimentConfig) -> Result<(), String> {
    let Some(sa) = &c.secure_aggregation else {
        return Ok(());
    };
    let m = c.clients_per_round();
    let t = sa.threshold_for(m);
    if t < 2 || t > m {
        return Err(format!(
            "secure_aggregation.threshold = {t} must be between 2 and the {m} clients per round"
        ));
    }
    if !(8..=40).contains(&sa.scale_bits) {
        return Err(format!(
            "secure_aggregation.scale_bits = {} must be in 8..=40",
            sa.scale_bits
        ));
    }
    if !is_mean(&c.algorithm.aggregator) {
        return Err("[secure_aggregation] hides single updates, which algorithm.aggregator needs: they cannot be combined".into());
    }
    if c.privacy.is_some_and(|p| p.mode == DpMode::Central) {
        return Err("[secure_aggregation] hides single updates, which central DP clips at the server: use [privacy] mode = \"local\"".into());
    }
    if c.privacy.is_some_and(|p| p.mode == DpMode::DpSgd) {
        return Err("[secure_aggregation] hides each client's sample count and steps, which the server's DP-SGD accountant needs: use [privacy] mode = \"local\"".into());
    }
    if c.compression.is_some_and(|k| k.uplink.is_some()) {
        return Err("[secure_aggregation] and compression.uplink cannot be combined (masked updates are ring elements); compression.downlink can".into());
    }
    Ok(())
}

/// Refuses the FedAvg server's `[algorithm]` fields for algorithm `name`, which has no such
/// server.
pub fn no_server_fields(c: &ExperimentConfig, name: &str) -> Result<(), String> {
    if c.algorithm.server_optimizer != Default::default()
        || c.algorithm.round_timeout_s.is_some()
        || c.algorithm.min_replies.is_some()
    {
        return Err(format!(
            "algorithm.server_optimizer, round_timeout_s and min_replies do not apply to {name:?}"
        ));
    }
    Ok(())
}
