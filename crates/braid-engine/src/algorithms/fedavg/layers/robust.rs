//! `algorithm.aggregator`: a robust rule (coordinate-wise median, trimmed mean, Krum,
//! Multi-Krum, norm bounding) combines the round's updates instead of the sample-weighted
//! mean, so a minority of attackers cannot steer the model.
//!
//! Composes with compression, attacks and `[privacy] mode = "dp-sgd"` (its guarantee holds
//! whatever the server does with the updates); refuses central and local DP (their accountant
//! assumes the clipped updates are summed) and secure aggregation ([`super::secure::check`]),
//! and needs as many clients per round as its rule does.

use braid_core::robust::Aggregator;

use super::{Reply, ServerLayer};
use crate::config::{is_mean, DpMode, ExperimentConfig};
use crate::error::Invalid;
use crate::node::{EngineError, EngineResult};
use crate::wire::NodeId;

/// The server layer of a robust `algorithm.aggregator`.
pub struct Robust {
    aggregator: Aggregator,
}

impl Robust {
    /// The layer for `aggregator`; none for the plain mean.
    pub fn of(aggregator: Aggregator) -> Option<Self> {
        (aggregator != Aggregator::Mean).then_some(Self { aggregator })
    }
}

impl ServerLayer for Robust {
    fn combine(
        &mut self, round: u32, global: &[f32], replies: &[(NodeId, &Reply)],
    ) -> Option<EngineResult<Vec<f32>>> {
        // Robust rules combine updates (trained minus global parameters).
        let combined = || {
            let deltas = replies
                .iter()
                .map(|(_, r)| braid_core::params::sub(&r.params, global))
                .collect::<Result<Vec<_>, _>>()?;
            let refs: Vec<&[f32]> = deltas.iter().map(Vec::as_slice).collect();
            let weights: Vec<f64> = replies.iter().map(|(_, r)| r.num_samples as f64).collect();
            let agg = self
                .aggregator
                .aggregate(&refs, &weights)
                .map_err(|e| EngineError::Failed(format!("round {round}: {e}")))?;
            Ok(global.iter().zip(&agg).map(|(p, d)| p + d).collect())
        };
        Some(combined())
    }
}

/// What a robust `algorithm.aggregator` cannot be combined with.
pub fn check(c: &ExperimentConfig) -> Result<(), Invalid> {
    if is_mean(&c.algorithm.aggregator) {
        return Ok(());
    }
    if c.privacy.is_some_and(|p| p.mode != DpMode::DpSgd) {
        return Err(Invalid::conflict("algorithm.aggregator", "algorithm.aggregator and [privacy] mode = \"central\" or \"local\" cannot be combined: the accountant assumes the clipped updates are summed, and a robust rule's sensitivity is not that of a sum (mode = \"dp-sgd\" can: its guarantee holds for whatever the server does with the updates)"));
    }
    let need = c.algorithm.aggregator.min_updates();
    let per_round = c.clients_per_round();
    if per_round < need {
        return Err(Invalid::range(
            "algorithm.aggregator",
            format!(
                "algorithm.aggregator {:?} needs at least {need} clients per round, the run has {per_round}",
                c.algorithm.aggregator
            ),
        ));
    }
    Ok(())
}
