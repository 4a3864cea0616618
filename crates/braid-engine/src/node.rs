//! The shape every algorithm role has: a message-driven state machine ("sans-IO").
//!
//! A [`Node`] reacts to its start and to messages; it sends by pushing onto its [`NodeCtx`],
//! trains and evaluates through the [`LocalTrainer`] the driver lends it, and reports progress
//! as [`Event`]s. It never touches sockets, threads or clocks, so the same code runs in the
//! simulator and across real processes.

use std::time::Duration;

use braid_nn::{EvalOutcome, OptimizerState, TrainOutcome};
use thiserror::Error;

use crate::wire::{NodeId, Payload};

/// Local training and evaluation, lent to a node by the driver. A driver keeps one per worker
/// thread, so nodes (clients) hold no model between calls.
pub trait LocalTrainer: Send {
    /// Trains from `params` on the training samples `shard`; batch order from `seed`; the
    /// configured learning rate is multiplied by `lr_scale`.
    fn train(
        &mut self,
        params: &[f32],
        shard: &[usize],
        seed: u64,
        lr_scale: f64,
    ) -> Result<TrainOutcome, EngineError>;
    /// [`LocalTrainer::train`] on the same samples with every label `l` replaced by
    /// `classes - 1 - l` (a label-flipping attacker). Default: refused.
    fn train_label_flipped(
        &mut self,
        _params: &[f32],
        _shard: &[usize],
        _seed: u64,
        _lr_scale: f64,
    ) -> Result<TrainOutcome, EngineError> {
        Err(EngineError::Setup(
            "this trainer cannot train on flipped labels (attack kind \"label-flip\")".into(),
        ))
    }
    /// One optimizer step per batch (training-sample indices), continuing from `state`'s
    /// optimizer state and updating it: for participants that keep their optimizer across
    /// rounds (decentralized peers). The learning rate is multiplied by `lr_scale`.
    fn train_batches(
        &mut self,
        params: &[f32],
        batches: &[Vec<usize>],
        state: &mut OptimizerState,
        lr_scale: f64,
    ) -> Result<TrainOutcome, EngineError>;
    /// Evaluates `params` on the test set.
    fn evaluate(&mut self, params: &[f32]) -> Result<EvalOutcome, EngineError>;
    /// Evaluates `params` on a fixed, seeded sample of at most `max_samples` test samples
    /// (the same sample for every call of a run), for cheap per-participant metrics.
    fn evaluate_sample(
        &mut self,
        params: &[f32],
        max_samples: usize,
    ) -> Result<EvalOutcome, EngineError>;
    /// FLOPs of training and of evaluating one sample, for compute accounting (zero if the
    /// trainer does not know its model).
    fn flops_per_sample(&self) -> crate::accounting::FlopsPerSample {
        crate::accounting::FlopsPerSample::default()
    }
    /// Asks the trainer to stop after the step in progress once `flag` is set (a halt).
    /// Default: ignored (the call finishes).
    fn set_stop_flag(&mut self, _flag: std::sync::Arc<std::sync::atomic::AtomicBool>) {}
    /// Split learning, client side: the client part's activations at the cut for training
    /// samples `samples` (row by row), and their labels.
    fn split_forward(
        &mut self,
        _params: &[f32],
        _samples: &[usize],
    ) -> Result<(Vec<f32>, Vec<u8>), EngineError> {
        Err(no_split())
    }
    /// Split learning, client side: the gradient of the client part's parameters given the
    /// loss's gradient `grad` with respect to the activations of `samples`.
    fn split_backward(
        &mut self,
        _params: &[f32],
        _samples: &[usize],
        _grad: &[f32],
    ) -> Result<Vec<f32>, EngineError> {
        Err(no_split())
    }
    /// Split learning, server side: one optimizer step of the server part on a global batch
    /// of activations; returns the new parameters and the activations' gradient.
    fn split_server_step(
        &mut self,
        _params: &[f32],
        _acts: &[f32],
        _labels: &[u8],
        _state: &mut OptimizerState,
        _lr_scale: f64,
    ) -> Result<braid_nn::ServerStep, EngineError> {
        Err(no_split())
    }
    /// Split learning: one optimizer step of the client part with an aggregated gradient.
    fn split_client_update(
        &mut self,
        _params: &[f32],
        _grad: &[f32],
        _state: &mut OptimizerState,
        _lr_scale: f64,
    ) -> Result<Vec<f32>, EngineError> {
        Err(no_split())
    }
    /// Forward FLOPs per sample of the client part and of the server part of a split model
    /// (zero if the trainer has no split model).
    fn split_flops(&self) -> (u64, u64) {
        (0, 0)
    }
    /// Mutual learning: trains `members` (models of the run's list of architectures)
    /// together on `batches` of training samples with distillation weight `alpha` (see
    /// [`braid_nn::mutual`]); the learning rate is multiplied by `lr_scale`.
    fn mutual_train(
        &mut self,
        _members: &[braid_nn::Member<'_>],
        _batches: &[Vec<usize>],
        _alpha: f64,
        _lr_scale: f64,
    ) -> Result<braid_nn::MutualOutcome, EngineError> {
        Err(no_mutual())
    }
    /// Evaluates `params`, a model of architecture `arch` of the run's list, on a fixed,
    /// seeded sample of at most `max_samples` test samples.
    fn evaluate_arch(
        &mut self,
        _arch: usize,
        _params: &[f32],
        _max_samples: usize,
    ) -> Result<EvalOutcome, EngineError> {
        Err(no_mutual())
    }
    /// FLOPs per sample of architecture `arch` of the run's list (zero if unknown).
    fn arch_flops(&self, _arch: usize) -> crate::accounting::FlopsPerSample {
        crate::accounting::FlopsPerSample::default()
    }
}

fn no_mutual() -> EngineError {
    EngineError::Setup(
        "this trainer has no list of models (the mutual-learning algorithms set one up)".into(),
    )
}

fn no_split() -> EngineError {
    EngineError::Setup(
        "this trainer has no split model (algorithm.name = \"split\" sets one up)".into(),
    )
}

/// Metrics of one completed round, as the server sees them.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RoundMetrics {
    /// Round number, from 1.
    pub round: u32,
    /// Test accuracy of the global model (None if not evaluated this round).
    pub accuracy: Option<f64>,
    /// Test loss of the global model (None if not evaluated this round).
    pub loss: Option<f64>,
    /// Sample-weighted mean of the clients' training losses.
    pub train_loss: f64,
    /// Clients whose updates were aggregated.
    pub clients: usize,
    /// Clients asked to train that had not replied by the round's deadline (skipped).
    pub stragglers: usize,
    /// Training samples they hold (the FedAvg weights).
    pub samples: u64,
    /// Local optimizer steps they took this round, summed over clients.
    pub local_steps: u64,
    /// Encoded bytes clients sent to the server this round.
    pub bytes_up: u64,
    /// Encoded bytes the server sent to clients this round.
    pub bytes_down: u64,
    /// Differential privacy spent so far: epsilon at the configured delta (`[privacy]` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epsilon: Option<f64>,
    /// Simulated seconds from the start to the end of the round (set by the simulator when
    /// it runs with a `[latency]` model; nodes leave it `None`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sim_time_s: Option<f64>,
    /// How many server updates old the models were that this round's updates were trained
    /// from: mean and largest (asynchronous servers only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub staleness: Option<(f64, u32)>,
}

/// Metrics of a decentralized run at one evaluation point, as the monitor sees them.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GossipMetrics {
    /// Local steps every peer has taken.
    pub step: u64,
    /// Training progress, `step / total steps`.
    pub progress: f64,
    /// Communication rounds so far (`step / every`, counting rounds with no edges).
    pub comm_rounds: u64,
    /// The budget r(p) at this point.
    pub budget: f64,
    /// Mean test accuracy of the local models (on the evaluation sample).
    pub local_mean: f64,
    /// Worst local model.
    pub local_min: f64,
    /// Best local model.
    pub local_max: f64,
    /// Test accuracy of the global merge (exact average of all local models), full test set.
    pub merged_accuracy: f64,
    /// Test loss of the global merge.
    pub merged_loss: f64,
    /// Mergeability gap: the merge's accuracy minus the mean local accuracy, both on the
    /// local models' evaluation sample (so the two are measured on the same samples).
    pub gap: f64,
    /// Consensus distance: mean squared L2 distance of the local models to their average.
    pub consensus: f64,
    /// Mean training loss of the peers since the previous evaluation point.
    pub train_loss: f64,
    /// Gossip bytes sent per peer so far, mean over peers.
    pub bytes_per_peer: f64,
    /// Gossip bytes sent so far by the busiest peer.
    pub bytes_max_peer: u64,
}

/// What a node reports to the driver.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A round completed.
    Round(RoundMetrics),
    /// A decentralized run reached an evaluation point.
    Gossip(GossipMetrics),
    /// A split-learning epoch completed.
    Split(crate::algorithms::split::SplitMetrics),
    /// A mutual-learning run (DFML and its baselines) reached an evaluation point.
    Mutual(crate::algorithms::mutual::MutualMetrics),
    /// The run is over; these are the final global parameters.
    Finished {
        /// Final parameters.
        params: Vec<f32>,
    },
}

/// Errors inside the engine.
#[derive(Debug, Error)]
pub enum EngineError {
    /// Training or evaluation failed.
    #[error(transparent)]
    Nn(#[from] braid_nn::NnError),
    /// Combining parameters failed.
    #[error(transparent)]
    Params(#[from] braid_core::params::ParamsError),
    /// A node got a message it cannot accept (wrong round, unknown sender, bad shape).
    #[error("node {node} rejected a {kind} from node {from}: {why}")]
    Rejected {
        /// Receiving node.
        node: NodeId,
        /// Sender.
        from: NodeId,
        /// Message kind.
        kind: &'static str,
        /// Reason.
        why: String,
    },
    /// The run cannot be set up as configured.
    #[error("{0}")]
    Setup(String),
}

impl EngineError {
    /// A function that turns a reason into [`EngineError::Rejected`] for a `kind` message from
    /// `from` received by `node`: every node's message handler refuses through one.
    pub fn rejecter(
        node: NodeId,
        from: NodeId,
        kind: &'static str,
    ) -> impl Fn(String) -> EngineError + Copy {
        move |why| EngineError::Rejected {
            node,
            from,
            kind,
            why,
        }
    }
}

/// Checks a received parameter vector before use: `expected` values, all finite. The error
/// says what is wrong, for [`EngineError::Rejected`].
pub fn check_params(params: &[f32], expected: usize) -> Result<(), String> {
    if params.len() != expected {
        return Err(format!(
            "{} parameters, the model has {expected}",
            params.len()
        ));
    }
    if !braid_core::params::all_finite(params) {
        return Err("parameters contain NaN or infinite values".into());
    }
    Ok(())
}

/// A node's durable state: small metadata and named parameter-sized vectors.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeState {
    /// Counters and flags (JSON object).
    pub meta: serde_json::Value,
    /// Named vectors (model, optimizer buffers).
    pub tensors: Vec<(String, Vec<f32>)>,
    /// Named opaque byte strings (e.g. a trainer's serialized optimizer state).
    pub blobs: Vec<(String, Vec<u8>)>,
}

impl NodeState {
    /// The vector called `name`.
    pub fn tensor(&self, name: &str) -> Result<&[f32], EngineError> {
        self.tensors
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t.as_slice())
            .ok_or_else(|| EngineError::Setup(format!("checkpoint has no {name:?}")))
    }

    /// The byte string called `name`.
    pub fn blob(&self, name: &str) -> Result<&[u8], EngineError> {
        self.blobs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, b)| b.as_slice())
            .ok_or_else(|| EngineError::Setup(format!("checkpoint has no {name:?}")))
    }

    /// The unsigned integer `name` in the metadata.
    pub fn meta_u64(&self, name: &str) -> Result<u64, EngineError> {
        self.meta
            .get(name)
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| EngineError::Setup(format!("checkpoint has no number {name:?}")))
    }
}

/// What a node can do while handling an event.
pub struct NodeCtx<'a> {
    outbox: &'a mut Vec<(NodeId, Payload)>,
    events: &'a mut Vec<Event>,
    deadlines: Vec<(u64, Duration)>,
    /// Training and evaluation.
    pub trainer: &'a mut dyn LocalTrainer,
}

impl<'a> NodeCtx<'a> {
    /// A context writing into the given buffers (drivers and tests build these).
    pub fn new(
        outbox: &'a mut Vec<(NodeId, Payload)>,
        events: &'a mut Vec<Event>,
        trainer: &'a mut dyn LocalTrainer,
    ) -> Self {
        Self {
            outbox,
            events,
            deadlines: Vec::new(),
            trainer,
        }
    }

    /// Asks the driver to call [`Node::on_deadline`] with `token` once `after` has passed
    /// (wall-clock time across processes; in the simulator, virtual time that advances only
    /// when no message is left to deliver, so a deadline fires there only if someone never
    /// answers). Deadlines cannot be cancelled: a node ignores tokens it no longer needs.
    pub fn set_deadline(&mut self, token: u64, after: Duration) {
        self.deadlines.push((token, after));
    }

    /// The deadlines set so far (for drivers).
    pub fn take_deadlines(&mut self) -> Vec<(u64, Duration)> {
        std::mem::take(&mut self.deadlines)
    }

    /// Sends `payload` to `to`; returns its encoded size in bytes.
    pub fn send(&mut self, to: NodeId, payload: Payload) -> usize {
        let n = payload.encoded_len();
        self.outbox.push((to, payload));
        n
    }

    /// Reports an event to the driver.
    pub fn emit(&mut self, event: Event) {
        self.events.push(event);
    }
}

/// One thing a driver hands a node: the same three in the simulator and across processes.
#[derive(Debug)]
pub enum Input {
    /// The run starts.
    Start,
    /// A message arrived from a node.
    Message(NodeId, Payload),
    /// A deadline set with [`NodeCtx::set_deadline`] has passed.
    Deadline(u64),
}

impl Input {
    /// The round (FedAvg family, dsgd gossip) or step (dsgd snapshots and joins, split
    /// learning) carried by
    /// the message, for attributing the compute it causes; `None` for starts and deadlines.
    pub fn round(&self) -> Option<u64> {
        match self {
            Self::Message(_, p) => match p {
                Payload::TrainRequest { round, .. }
                | Payload::TrainReply { round, .. }
                | Payload::PackedRequest { round, .. }
                | Payload::DeltaRequest { round, .. }
                | Payload::PackedReply { round, .. }
                | Payload::SecAgg { round, .. }
                | Payload::Gossip { round, .. }
                | Payload::PackedGossip { round, .. }
                | Payload::MutualModel { round, .. }
                | Payload::PackedMutualModel { round, .. }
                | Payload::MutualReport { round, .. }
                | Payload::Shutdown { round } => Some(u64::from(*round)),
                Payload::Snapshot { step, .. }
                | Payload::JoinRequest { step }
                | Payload::JoinReply { step, .. }
                | Payload::SplitRequest { step, .. }
                | Payload::SplitActivations { step, .. }
                | Payload::SplitGradient { step, .. }
                | Payload::SplitClientGrad { step, .. }
                | Payload::PackedSplitRequest { step, .. }
                | Payload::PackedSplit { step, .. } => Some(*step),
                Payload::Halt { .. } => None,
            },
            Self::Start | Self::Deadline(_) => None,
        }
    }

    /// Hands this input to `node`.
    pub fn apply(self, node: &mut dyn Node, ctx: &mut NodeCtx<'_>) -> Result<(), EngineError> {
        match self {
            Self::Start => node.on_start(ctx),
            Self::Message(from, p) => node.on_message(from, p, ctx),
            Self::Deadline(token) => node.on_deadline(token, ctx),
        }
    }
}

/// One role of an algorithm on one participant.
pub trait Node: Send {
    /// This node's id.
    fn id(&self) -> NodeId;
    /// Called once when the run starts.
    fn on_start(&mut self, ctx: &mut NodeCtx<'_>) -> Result<(), EngineError>;
    /// Called for every message delivered to this node.
    fn on_message(
        &mut self,
        from: NodeId,
        payload: Payload,
        ctx: &mut NodeCtx<'_>,
    ) -> Result<(), EngineError>;
    /// Changes whenever the node's durable state changes (a completed round); 0 for nodes
    /// that keep nothing worth a checkpoint. Drivers checkpoint when it changes.
    fn state_version(&self) -> u64 {
        0
    }
    /// The state to checkpoint, for nodes that keep one.
    fn save_state(&self) -> Option<NodeState> {
        None
    }
    /// Restores a checkpoint taken by [`Node::save_state`], before [`Node::on_start`].
    fn load_state(&mut self, _state: NodeState) -> Result<(), EngineError> {
        Err(EngineError::Setup(
            "this node keeps no state to resume from".into(),
        ))
    }
    /// Called before [`Node::on_start`] by drivers that checkpoint: nodes whose durable state
    /// costs something to capture capture it only after this. Default: nothing to do.
    fn keep_checkpoints(&mut self) {}
    /// Called before [`Node::on_start`] (after any [`Node::load_state`]) when the process was
    /// restarted into a run that went on without it (`braid node --resume`): nodes that can
    /// catch up from their peers prepare to. Default: nothing to do.
    fn rejoin(&mut self) {}
    /// True once this node has nothing left to do in the run (a network driver then exits
    /// after its last messages are delivered).
    fn finished(&self) -> bool {
        false
    }
    /// Called when a deadline set with [`NodeCtx::set_deadline`] has passed.
    fn on_deadline(&mut self, _token: u64, _ctx: &mut NodeCtx<'_>) -> Result<(), EngineError> {
        Ok(())
    }
    /// The nodes this node accepts messages from, if only some (`None`: any node). Drivers
    /// with simulated time use it to run nodes at once that no other node can interrupt.
    fn listens_to(&self) -> Option<Vec<NodeId>> {
        None
    }
}
