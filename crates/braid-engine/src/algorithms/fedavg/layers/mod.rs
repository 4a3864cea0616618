//! The FedAvg family's feature layers: each wraps one stage of the path an update takes, the
//! way Flower wraps a strategy with its DP strategy.
//!
//! ```text
//! client:  train (attack: on flipped labels)
//!            -> update = trained - received
//!            -> [attack]           rewrites the update              (UpdateLayer)
//!            -> [privacy] local    clips and noises it              (UpdateLayer)
//!            -> leaves as          secure_aggregation mask | compression.uplink | exact f32
//! server:  reply in (compression decoded, downlink copy applied), checked, accepted
//!            -> [privacy]          accounts DP-SGD steps            (ServerLayer::accepted)
//!            -> combine            [privacy] central/local private mean
//!                                  | algorithm.aggregator robust rule | sample-weighted mean
//!            -> server optimizer, then [privacy] epsilon and target (ServerLayer::after_round)
//! ```
//!
//! What each layer composes with, and what it refuses (its `check`, with the messages users
//! see):
//!
//! | layer | stage | composes with | refuses |
//! |---|---|---|---|
//! | [`attack`] | client update, training labels | everything | - |
//! | [`privacy`] | client update (local), combine (central, local), accounting (all modes) | compression, attack; secure aggregation with mode = "local" | a robust aggregator with mode = "central" or "local" |
//! | [`robust`] | combine | compression, attack, privacy mode = "dp-sgd" | fewer clients per round than the rule needs |
//! | [`secure`] | client update's way out, combine | privacy mode = "local", compression.downlink | a robust aggregator, central DP, DP-SGD, compression.uplink |
//! | [`compression`], [`downlink`] | the update's and the model's way across | everything but secure aggregation's uplink | see `algorithms::common::check_compression` |
//!
//! The FedAvg family (`fedavg`, `fedprox`) accepts every layer; FedBuff accepts compression;
//! an algorithm outside braid reuses them by holding the same layer types.

pub mod attack;
pub mod compression;
pub mod downlink;
pub mod privacy;
pub mod robust;
pub mod secure;

use crate::node::EngineResult;
use crate::wire::NodeId;
use braid_core::seed;
use std::collections::BTreeMap;

/// A client's reply the server accepted.
pub struct Reply {
    /// Training samples the client holds (its FedAvg weight).
    pub num_samples: u64,
    /// Local optimizer steps it took.
    pub steps: u32,
    /// Its mean training loss.
    pub train_loss: f32,
    /// Its trained parameters (as applied to the exact global model).
    pub params: Vec<f32>,
}

/// A layer on the client's side: rewrites the update (trained minus received parameters)
/// before it leaves the client. A client applies its layers in order.
pub trait UpdateLayer: Send + Sync {
    /// Rewrites `update`, client `client`'s in round `round`; random choices are drawn from
    /// the experiment seed `seed`.
    fn rewrite(&self, update: &mut [f32], seed: u64, client: NodeId, round: u32);
    /// Whether the client trains on flipped labels (a label-flipping attacker).
    fn flips_labels(&self) -> bool {
        false
    }
}

/// What a server layer adds to a completed round.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RoundNote {
    /// Differential privacy spent so far (epsilon at the configured delta).
    pub epsilon: Option<f64>,
    /// The run must stop after this round (a privacy target would be passed).
    pub stop: bool,
}

/// A layer on the server's aggregation path. Every hook passes through by default; the server
/// calls its layers in order.
pub trait ServerLayer: Send {
    /// Before the first round of a run that has completed `completed` rounds: refuses a run
    /// the layer cannot serve.
    fn before_start(&self, _completed: u32) -> EngineResult {
        Ok(())
    }
    /// Chooses a round's clients from `clients` (ascending) with `rng`, the round's sampling
    /// stream, when the layer's guarantee depends on how they are chosen (DP-FedAvg's
    /// accountant: each client on its own with probability clients per round / clients);
    /// `None` leaves the server's sample of exactly `algorithm.clients_per_round`.
    fn choose_clients(&self, _clients: &[NodeId], _rng: &mut seed::Rng) -> Option<Vec<NodeId>> {
        None
    }
    /// A reply from `from` (holding `num_samples` samples, after `steps` local steps) was
    /// accepted.
    fn accepted(&mut self, _from: NodeId, _num_samples: u64, _steps: u32) -> EngineResult {
        Ok(())
    }
    /// Combines round `round`'s accepted replies into new parameters (before the server
    /// optimizer), or `None` to leave combining to the next layer (and finally to the
    /// sample-weighted mean).
    fn combine(
        &mut self, _round: u32, _global: &[f32], _replies: &[(NodeId, &Reply)],
    ) -> Option<EngineResult<Vec<f32>>> {
        None
    }
    /// Secure aggregation delivered the sum of `contributors`' updates: the denominator to
    /// divide it by, if the layer fixes one (DP-FedAvg's clients per round; local DP also
    /// counts the contributors' participations here). The server asks its layers in order and
    /// takes the first answer, so a layer that answers must come before any that accounts here.
    fn sum_denominator(&mut self, _contributors: &[NodeId]) -> Option<f64> {
        None
    }
    /// After round `round` of `rounds` was combined and stepped.
    fn after_round(&mut self, _round: u32, _rounds: u32) -> EngineResult<RoundNote> {
        Ok(RoundNote::default())
    }
    /// The layer's durable state, under its key in the server's checkpoint.
    fn save(&self) -> Option<(&'static str, serde_json::Value)> {
        None
    }
    /// Restores what [`ServerLayer::save`] wrote, from the checkpoint's metadata.
    fn load(&mut self, _meta: &serde_json::Value) -> EngineResult {
        Ok(())
    }
}

/// A map keyed by node id as a checkpoint's JSON holds it (object keys are strings); `None`
/// if `value` is missing or is not one.
pub(crate) fn node_map<T: serde::de::DeserializeOwned>(
    value: Option<&serde_json::Value>,
) -> Option<BTreeMap<NodeId, T>> {
    let map: BTreeMap<String, T> = serde_json::from_value(value?.clone()).ok()?;
    map.into_iter()
        .map(|(k, v)| Some((k.parse::<NodeId>().ok()?, v)))
        .collect()
}
