//! Mutual learning between clients whose models have different architectures: DFML
//! (Khalil et al., "DFML: Decentralized Federated Mutual Learning", arXiv 2402.01863) and its
//! baselines on the same clients, data and models.
//!
//! Clients are nodes `1..=n`; client `k` (node `k + 1`) holds shard `k` and one model of
//! architecture `archs[k]`. Node 0 is the hub: in DFML, Def-KT and isolated training it only
//! collects the clients' evaluation reports (a monitor, like decentralized SGD's; no model
//! goes through it); in FML it is also the server holding the global model.
//!
//! Every round's roles are drawn from a stream derived from `(seed, round)` (see
//! [`braid_core::mutual`]), so each client knows, without coordination, what it does in every
//! round. A client walks through the rounds in order and only waits in rounds where it takes
//! part, for the models that round needs; rounds with disjoint participants therefore run
//! concurrently, and each client's models evolve exactly as in a sequential run.
//!
//! - **DFML**: round `t` has one aggregator and `senders` senders. Senders send their current
//!   models to the aggregator; the aggregator trains the received models together with its
//!   own by mutual learning on its local data (`train.local_epochs` epochs) with the round's
//!   alpha from the cycle, averages models of the same architecture (plain mean), and sends
//!   each sender its updated model back. After every peak round of the cycle each client
//!   copies its model as its peak model.
//! - **Isolated** (`local`): `clients_per_round` clients train their own model on their own
//!   data; no communication.
//! - **Def-KT** (Li et al. 2021): `senders` pairs (teacher, student) of distinct clients.
//!   The teacher trains locally, then sends its model to the student, who trains it together
//!   with its own by mutual learning on its data and keeps its own; the teacher keeps its
//!   locally trained model.
//! - **FML** (Shen et al. 2020): the hub holds a global model of architecture `global_model`;
//!   each round `clients_per_round` clients receive it, train it together with their own
//!   model by mutual learning on their data and send it back; the hub averages the returned
//!   global models weighted by the clients' sample counts.
//!
//! At evaluation points (every `eval_every` rounds and the last round) every client evaluates
//! its model (and its peak model) on a fixed sample of the test set (the whole test set after
//! the last round) and reports to the hub, which reports the run's metrics: global accuracy is
//! the mean over all clients' models.

use std::collections::BTreeMap;
use std::sync::Arc;

use braid_core::lr_schedule::LrSchedule;
use braid_core::mutual::{defkt_round, dfml_round, round_subset, AlphaCycle};
use braid_core::params::weighted_mean;
use serde::{Deserialize, Serialize};

use super::common;
use crate::algorithm::{Algorithm, Feature, Summary};
use crate::config::ExperimentConfig;
use crate::node::{
    check_params, BoxNode, EngineError, EngineResult, Event, Family, Node, NodeCtx, NodeState,
};
use crate::prepared::Prepared;

use crate::error::Invalid;
use crate::wire::{Message as _, NodeId, Tensor};

mod algorithm;
mod client;
mod hub;
mod msg;
mod report;
pub use algorithm::{
    model_names, mutual_settings, DefKt, Dfml, Fml, Local, MutualConfig, MutualRun,
};
pub use client::MutualClient;
pub use hub::MutualHub;
pub use msg::Msg;
pub use report::MutualMetrics;

/// What the nodes of mutual learning (DFML, FML, Def-KT) exchange, report and are lent.
pub type MutualProtocol = Family<Msg, MutualMetrics, dyn MutualLearner>;

/// What a node of mutual learning can do while handling an event.
pub type MutualCtx<'a> = NodeCtx<'a, MutualProtocol>;

crate::trainer_bundle!(
    /// What mutual-learning nodes ask of their trainer: training a list of models together
    /// and evaluating each.
    pub MutualLearner: MutualSteps
);

/// The hub's node id.
pub const HUB: NodeId = 0;

/// A model with its architecture (an index into the run's models).
type ArchModel = (usize, Arc<Vec<f32>>);

/// Which mutual-learning algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Variant {
    /// DFML: a random aggregator trains the senders' models with its own.
    Dfml,
    /// Isolated local training.
    Local,
    /// Federated mutual learning with a server-held global model.
    Fml,
    /// Def-KT: teachers' models are distilled into students' models.
    DefKt,
}

/// Settings shared by every node of a mutual-learning run.
#[derive(Debug, Clone)]
pub struct MutualSettings {
    /// The algorithm.
    pub variant: Variant,
    /// Rounds.
    pub rounds: u32,
    /// Evaluate every this many rounds (and after the last); 0 = only after the last.
    pub eval_every: u32,
    /// Test samples each model is evaluated on at intermediate evaluation points (the last
    /// round uses the whole test set).
    pub eval_samples: usize,
    /// The run's models: config names, in index order.
    pub model_names: Vec<String>,
    /// Parameter count of each model.
    pub model_params: Vec<usize>,
    /// Each client's model (index into `model_names`).
    pub archs: Vec<usize>,
    /// Each client's number of training samples.
    pub counts: Vec<usize>,
    /// DFML: senders per round; Def-KT: (teacher, student) pairs per round.
    pub senders: usize,
    /// Isolated and FML: clients training per round.
    pub clients_per_round: usize,
    /// The distillation weight over rounds.
    pub alpha: AlphaCycle,
    /// Mini-batch size.
    pub batch_size: usize,
    /// Passes over the local data per training.
    pub local_epochs: usize,
    /// FML: the global model's architecture.
    pub global_model: usize,
    /// Learning-rate schedule over rounds.
    pub lr_schedule: LrSchedule,
    /// Experiment seed.
    pub seed: u64,
    /// Quantizer of the models nodes exchange (`compression.models`; None: f32).
    pub model_compression: Option<braid_core::compress::Compression>,
    /// How long a node waits for a round's models or reports (`mutual.round_timeout_s`;
    /// None: for ever).
    pub round_deadline: Option<std::time::Duration>,
}

impl MutualSettings {
    /// The message carrying model `params` of architecture `arch` for round `round` from
    /// `from`: quantized if the run says so (random choices seeded by sender and round).
    fn model_message(
        &self, round: u32, arch: usize, params: Arc<Vec<f32>>, from: NodeId,
    ) -> EngineResult<Msg> {
        let model = match &self.model_compression {
            None => Tensor::Exact(params),
            Some(c) => {
                let key = [u64::from(from), u64::from(round)];
                let packed = braid_core::compress::encode_seeded(&params, c, self.seed, &key)
                    .map_err(|e| EngineError::Failed(e.to_string()))?;
                Tensor::packed(packed)
            }
        };
        Ok(Msg::Model {
            round,
            arch: arch as u32,
            model,
        })
    }

    /// A model message's parameters: exact ones as they are, quantized ones decoded to the
    /// size of architecture `arch`; the error says why they do not decode.
    fn unpack(&self, arch: u32, model: Tensor) -> Result<Arc<Vec<f32>>, String> {
        match model {
            Tensor::Exact(params) => Ok(params),
            Tensor::Packed(model) => {
                let n = self
                    .model_params
                    .get(arch as usize)
                    .copied()
                    .ok_or_else(|| format!("no architecture {arch} in this run"))?;
                let params =
                    braid_core::compress::decode(&model, n).map_err(|e| format!("model: {e}"))?;
                Ok(Arc::new(params))
            }
        }
    }
}

/// What a client does in a round.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Role {
    Idle,
    /// Train the own model alone.
    Train,
    /// DFML sender: send the model to the aggregator and wait for it to come back.
    Send(NodeId),
    /// DFML aggregator: wait for these senders' models.
    Aggregate(Vec<NodeId>),
    /// Def-KT teacher: train alone, then send the model to the student.
    Teach(NodeId),
    /// Def-KT student: wait for the teacher's model.
    Learn(NodeId),
    /// FML: wait for the global model, train it with the own one, send it back.
    Global,
}

/// The node id of client `k`.
pub fn client_node(k: usize) -> NodeId {
    k as NodeId + 1
}

impl MutualSettings {
    /// Number of clients.
    pub fn clients(&self) -> usize {
        self.archs.len()
    }

    /// Checks the settings; errors name the config field.
    pub fn validate(&self) -> EngineResult {
        let bad = |field: &str, m: String| Err(Invalid::range(field, m).into());
        let n = self.clients();
        if n < 2 && self.variant != Variant::Local {
            return bad(
                "partition.clients",
                format!("mutual learning needs at least 2 clients, the partition has {n}"),
            );
        }
        if self.counts.len() != n {
            return bad(
                "partition.clients",
                "one sample count per client is needed".into(),
            );
        }
        if let Some(a) = self.archs.iter().find(|&&a| a >= self.model_params.len()) {
            return bad(
                "mutual.models",
                format!("model index {a} is outside the list of models"),
            );
        }
        if self.rounds == 0 {
            return bad(
                "algorithm.rounds",
                "algorithm.rounds must be at least 1".into(),
            );
        }
        if self.batch_size == 0 || self.local_epochs == 0 {
            let field = if self.batch_size == 0 {
                "train.batch_size"
            } else {
                "train.local_epochs"
            };
            return bad(
                field,
                "train.batch_size and train.local_epochs must be at least 1".into(),
            );
        }
        if self.eval_samples == 0 {
            return bad(
                "mutual.eval_samples",
                "mutual.eval_samples must be at least 1".into(),
            );
        }
        self.alpha
            .validate()
            .map_err(|e| Invalid::within("mutual", e))?;
        self.lr_schedule
            .validate()
            .map_err(|e| Invalid::within("train.lr_schedule", e))?;
        match self.variant {
            Variant::Dfml if self.senders == 0 || self.senders >= n => bad(
                "mutual.senders",
                format!(
                    "mutual.senders = {} must be between 1 and clients - 1 = {}",
                    self.senders,
                    n - 1
                ),
            ),
            Variant::DefKt if self.senders == 0 || 2 * self.senders > n => bad(
                "mutual.senders",
                format!(
                    "mutual.senders = {} (Def-KT pairs) must be between 1 and clients / 2 = {}",
                    self.senders,
                    n / 2
                ),
            ),
            Variant::Local | Variant::Fml if self.clients_per_round == 0 => bad(
                "algorithm.clients_per_round",
                "algorithm.clients_per_round must be at least 1".into(),
            ),
            Variant::Fml if self.global_model >= self.model_params.len() => bad(
                "mutual.global_model",
                "mutual.global_model is not in the list of models".into(),
            ),
            _ => Ok(()),
        }
    }

    /// True if round `round` is an evaluation point.
    pub fn evaluates_at(&self, round: u32) -> bool {
        round == self.rounds || (self.eval_every > 0 && round.is_multiple_of(self.eval_every))
    }

    /// Test samples evaluated after round `round`: `eval_samples`, and the whole test set
    /// after the last round.
    pub fn eval_samples_at(&self, round: u32) -> usize {
        if round >= self.rounds {
            usize::MAX
        } else {
            self.eval_samples
        }
    }

    /// The learning-rate factor of round `round`.
    pub fn lr_scale(&self, round: u32) -> f64 {
        self.lr_schedule
            .factor(f64::from(round.saturating_sub(1)) / f64::from(self.rounds.max(1)))
    }

    /// Client `k`'s role in round `round`.
    fn role(&self, round: u32, k: usize) -> Role {
        let n = self.clients();
        match self.variant {
            Variant::Dfml => {
                let r = dfml_round(self.seed, round, n, self.senders);
                if r.aggregator == k {
                    Role::Aggregate(r.senders.iter().map(|&s| client_node(s)).collect())
                } else if r.senders.contains(&k) {
                    Role::Send(client_node(r.aggregator))
                } else {
                    Role::Idle
                }
            }
            Variant::DefKt => {
                for (t, s) in defkt_round(self.seed, round, n, self.senders) {
                    if t == k {
                        return Role::Teach(client_node(s));
                    }
                    if s == k {
                        return Role::Learn(client_node(t));
                    }
                }
                Role::Idle
            }
            Variant::Local | Variant::Fml => {
                let chosen = round_subset(self.seed, round, n, self.clients_per_round);
                match (chosen.binary_search(&k).is_ok(), self.variant) {
                    (false, _) => Role::Idle,
                    (true, Variant::Fml) => Role::Global,
                    (true, _) => Role::Train,
                }
            }
        }
    }

    /// The model a message from `from` must carry in round `round` when client `k` expects
    /// it, or why `k` expects nothing from `from` then.
    fn expected_arch(&self, round: u32, k: usize, from: NodeId) -> Result<usize, String> {
        let arch_of = |node: NodeId| self.archs[(node - 1) as usize];
        let ok = match self.role(round, k) {
            Role::Send(to) if to == from => Some(self.archs[k]),
            Role::Aggregate(senders) if senders.contains(&from) => Some(arch_of(from)),
            Role::Learn(t) if t == from => Some(arch_of(from)),
            Role::Global if from == HUB => Some(self.global_model),
            _ => None,
        };
        ok.ok_or_else(|| format!("node {from} has no model for this client in round {round}"))
    }
}
