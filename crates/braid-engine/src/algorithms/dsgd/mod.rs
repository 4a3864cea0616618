//! Decentralized SGD without a server, with communication budgets and the single global merge
//! (Zhu et al., "A Single Merging Suffices", arXiv 2507.06542).
//!
//! Peers are nodes `0..n`. Each holds its own model, optimizer state (momentum survives
//! between rounds) and stream of mini-batches over its shard, and takes local SGD steps.
//! After every `every` local steps comes communication round `t`: the round's graph is drawn
//! from the topology under the budget `r(p)` (p = training progress) with a random stream
//! derived from `(seed, t)`, so every peer computes the same graph without coordination and
//! can check that a message really comes from one of its in-neighbours. A peer sends its
//! parameters to every peer that listens to it, waits for its own in-neighbours, and replaces
//! its parameters by the mixing-weighted mean (`x_i <- sum_j W_ij x_j`). A round with no
//! in-neighbour (r = 0, or a fractional draw that failed) costs nothing and does not wait.
//!
//! At evaluation points (step 0, every `eval_every` steps, and the last step) each peer
//! evaluates its local model and sends a snapshot to the monitor, node `n`. The monitor
//! averages all local models exactly (the global merge, a counterfactual that does not change
//! training), evaluates it, and reports the run's metrics; after the last step the merge is
//! the run's final model. None of the registry's models has batch-norm, so the merged model
//! needs no statistics recalibration.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use braid_core::lr_schedule::LrSchedule;
use braid_core::params::{self, weighted_mean};
use braid_core::schedule::CommSchedule;
use braid_core::seed;
use braid_core::topology::{Graph, MixingRule, Topology};

use braid_core::schedule::Budget;
use braid_core::topology::TopologyConfig;
use serde::{Deserialize, Serialize};

use super::common;
use crate::algorithm::{Algorithm, Baseline, Feature, Summary};
use crate::config::ExperimentConfig;
use crate::error::Invalid;
use crate::node::{
    check_params, BoxNode, EngineError, EngineResult, Event, Family, Node, NodeCtx, NodeState,
};
use crate::prepared::Prepared;
use crate::wire::{Message as _, NodeId};

mod algorithm;
mod monitor;
mod msg;
mod peer;
mod report;
pub use algorithm::{dsgd_settings, DecentralizedConfig, Dsgd};
pub use monitor::DsgdMonitor;
pub use msg::Msg;
pub use peer::DsgdPeer;
pub use report::GossipMetrics;

/// What the nodes of decentralized SGD exchange, report and are lent.
pub type DsgdProtocol = Family<Msg, GossipMetrics, dyn PeerTrainer>;

/// What a node of decentralized SGD can do while handling an event.
pub type DsgdCtx<'a> = NodeCtx<'a, DsgdProtocol>;

crate::trainer_bundle!(
    /// What decentralized peers ask of their trainer: steps that keep their optimizer state,
    /// and evaluation.
    pub PeerTrainer: TrainSteps + Evaluate
);

/// Settings shared by every peer and the monitor of a decentralized run.
#[derive(Debug, Clone)]
pub struct DsgdSettings {
    /// The topology, bound to the number of peers.
    pub topology: Topology,
    /// Mixing weights.
    pub mixing: MixingRule,
    /// When peers communicate and how much.
    pub schedule: CommSchedule,
    /// Local steps per peer.
    pub total_steps: u64,
    /// Evaluate every this many local steps (and at step 0 and at the end); 0 = only those two.
    pub eval_every: u64,
    /// Test samples each local model is evaluated on (the merged model uses the whole test set).
    pub eval_samples: usize,
    /// Mini-batch size.
    pub batch_size: usize,
    /// Number of model parameters (incoming messages are checked against it).
    pub num_params: usize,
    /// Learning-rate schedule over progress `step / total_steps`.
    pub lr_schedule: LrSchedule,
    /// How long a peer waits for its in-neighbours in a round before mixing with those that
    /// have sent (a missing neighbour's weight goes to the peer's own model); the monitor
    /// waits three times as long for the snapshots of an evaluation point. None: wait for
    /// everyone.
    pub gossip_deadline: Option<std::time::Duration>,
    /// Experiment seed.
    pub seed: u64,
    /// Quantizer of the parameters peers gossip (`compression.gossip`; None: f32).
    pub gossip_compression: Option<braid_core::compress::Compression>,
}

/// Metropolis-Hastings weights need an undirected topology (one whose own rule is
/// Metropolis-Hastings, `topology_rule`).
pub(crate) fn check_mixing(mixing: MixingRule, topology_rule: MixingRule) -> Result<(), Invalid> {
    if mixing == MixingRule::MetropolisHastings && topology_rule != MixingRule::MetropolisHastings {
        return Err(Invalid::conflict("decentralized.mixing", "decentralized.mixing = \"metropolis-hastings\" needs an undirected topology (ring, torus, complete, erdos-renyi); this one is directed, use \"uniform\""));
    }
    Ok(())
}

impl DsgdSettings {
    /// Checks the settings; the error names the config field.
    pub fn validate(&self) -> EngineResult {
        self.schedule
            .validate()
            .map_err(|e| Invalid::within("decentralized", e))?;
        self.lr_schedule
            .validate()
            .map_err(|e| Invalid::within("train.lr_schedule", e))?;
        if self.batch_size == 0 {
            return Err(EngineError::Invalid(Invalid::range(
                "train.batch_size",
                "train.batch_size must be at least 1",
            )));
        }
        check_mixing(self.mixing, self.topology.default_mixing())?;
        let rounds = self.total_steps / self.schedule.every.max(1);
        if rounds > u64::from(u32::MAX) {
            return Err(Invalid::range(
                "algorithm.steps",
                format!(
                    "{rounds} communication rounds is more than braid supports ({})",
                    u32::MAX
                ),
            )
            .into());
        }
        Ok(())
    }

    /// Number of peers.
    pub fn peers(&self) -> usize {
        self.topology.nodes()
    }

    /// The monitor's node id (one past the last peer).
    pub fn monitor(&self) -> NodeId {
        self.peers() as NodeId
    }

    /// True if local step `step` is an evaluation point.
    pub fn evaluates_at(&self, step: u64) -> bool {
        step == 0
            || step == self.total_steps
            || (self.eval_every > 0 && step.is_multiple_of(self.eval_every))
    }

    /// The local step after which communication round `round` (from 1) happens.
    pub fn round_step(&self, round: u32) -> u64 {
        u64::from(round) * self.schedule.every
    }

    /// The learning-rate factor of the local step taken after `step` steps.
    pub fn lr_scale_at(&self, step: u64) -> f64 {
        self.lr_schedule
            .factor(step as f64 / self.total_steps.max(1) as f64)
    }

    /// The budget r at local step `step`.
    pub fn budget_at(&self, step: u64) -> f64 {
        self.schedule
            .budget
            .r_at(step as f64 / self.total_steps.max(1) as f64)
    }

    /// The graph of communication round `round`: the same on every peer.
    pub fn round_graph(&self, round: u32) -> Graph {
        let r = self.budget_at(self.round_step(round));
        let mut rng = seed::rng(self.seed, &[seed::stream::TOPOLOGY, u64::from(round)]);
        self.topology.round_graph(u64::from(round), r, &mut rng)
    }

    fn last_round(&self) -> u32 {
        if !self.schedule.communicates_after(self.schedule.every) {
            return 0; // local only
        }
        (self.total_steps / self.schedule.every) as u32
    }
}
