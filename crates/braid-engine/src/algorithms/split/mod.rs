//! Parallel split learning (PSL) with global sampling (GPSL, Kohankhaki et al.) and its
//! fixed-batch baselines.
//!
//! The model is cut in two (`braid_nn::split`). Each step `t` of epoch `e`:
//! 1. the server sends every client with a non-zero local batch `b[t][k]` a
//!    [`Msg::Request`]: the client part's current parameters, and which of the
//!    client's samples to use (a window of its epoch-`e` shuffled order, so a client keeps no
//!    state between steps);
//! 2. each client runs its part and replies with the activations at the cut and the labels;
//! 3. the server concatenates them in client-id order, runs its part, takes the mean
//!    cross-entropy over the global batch, updates its part, and sends each client its rows of
//!    the gradient at the cut;
//! 4. each client back-propagates them through its part (recomputing the forward pass) and
//!    replies with the gradient of the client part's parameters;
//! 5. the server combines those (summed, as the authors' code does, which makes the update
//!    the gradient of the global batch's loss; or averaged) and applies the optimizer to the
//!    client part, which every client receives with its next request. The client parts are
//!    thus identical by construction.
//!
//! With `compression.split` every one of these messages carries its values compressed
//! (packed [`crate::wire::Tensor`]s; quantizers only): the server
//! keeps the exact client part, and each side decodes what it receives before using it.
//!
//! Local batch sizes come from `braid_core::split_batches` (global sampling, FLS, FPLS).
//! Every step's simulated time follows `braid_core::latency`: the slowest forward leg, the
//! server's compute, the slowest backward leg.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use braid_core::compress::{self, Compression};
use braid_core::latency::{LatencyModel, Leg};
use braid_core::lr_schedule::LrSchedule;
use braid_core::seed;
use braid_core::split_batches::{self, plan_epoch, Sampler};
use braid_nn::OptimizerState;
use rand::seq::SliceRandom;

use serde::{Deserialize, Serialize};

use super::common;
use crate::algorithm::{Algorithm, Feature, Summary};
use crate::config::ExperimentConfig;
use crate::error::Invalid;
use crate::node::{
    check_params, BoxNode, EngineError, EngineResult, Event, Family, Node, NodeCtx, NodeState,
};
use crate::prepared::Prepared;
use crate::wire::{Control, Message as _, NodeId, Tensor, HEADER};

mod algorithm;
mod client;
mod msg;
mod report;
pub use algorithm::{split_settings, ClientGradients, Split, SplitConfig};
pub use client::SplitClient;
pub use msg::Msg;
pub use report::SplitMetrics;

/// What the nodes of split learning exchange, report and are lent.
pub type SplitProtocol = Family<Msg, SplitMetrics, dyn SplitLearner>;

/// What a node of split learning can do while handling an event.
pub type SplitCtx<'a> = NodeCtx<'a, SplitProtocol>;

crate::trainer_bundle!(
    /// What split-learning nodes ask of their trainer: the two halves' steps, and the whole
    /// model's evaluation.
    pub SplitLearner: SplitSteps + Evaluate
);

/// Which values a split message carries (its number seeds the codec's random stream).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Activations = 0,
    Gradient = 1,
    ClientGrad = 2,
}

/// The server's id.
pub const SERVER: NodeId = 0;

/// A step's phases, for its deadlines (token `2 x step + phase`).
const FORWARD: u64 = 0;
const BACKWARD: u64 = 1;

/// Settings shared by the server and its clients.
#[derive(Debug, Clone)]
pub struct SplitSettings {
    /// How local batch sizes are chosen.
    pub sampler: Sampler,
    /// The global batch size B.
    pub batch: usize,
    /// Epochs.
    pub epochs: u32,
    /// Evaluate every this many epochs (and after the last).
    pub eval_every: u32,
    /// How client-part gradients are combined.
    pub client_gradients: ClientGradients,
    /// Training samples of each client (client `k` is node `k + 1`).
    pub counts: Vec<usize>,
    /// Parameters of the client part (the first values of the whole model's vector).
    pub client_params: usize,
    /// Parameters of the whole model.
    pub num_params: usize,
    /// Activation values per sample at the cut.
    pub cut_features: usize,
    /// Forward FLOPs per sample of the client part and of the server part.
    pub flops: (u64, u64),
    /// Client speeds and links for the simulated time.
    pub latency: LatencyModel,
    /// Learning-rate schedule over training progress (steps done / total).
    pub lr_schedule: LrSchedule,
    /// Experiment seed.
    pub seed: u64,
    /// Codec of every split message's values (`compression.split`; None: f32).
    pub compression: Option<Compression>,
    /// How long a step's phase waits for its clients (`split.step_timeout_s`; None: for ever).
    pub step_deadline: Option<std::time::Duration>,
}

/// The message carrying `values` (`part` of step `step`, from `from` to `to`): plain, or
/// compressed with `compression`, its random choices seeded by the run, both ends, the step
/// and the part.
fn split_message(
    compression: Option<&Compression>, seed: u64, (from, to): (NodeId, NodeId), step: u64,
    part: Part, labels: Vec<u32>, values: Vec<f32>,
) -> EngineResult<Msg> {
    let values = match compression {
        None => Tensor::exact(values),
        Some(c) => {
            let key = [u64::from(from), u64::from(to), step, part as u64];
            Tensor::packed(pack(&values, c, seed, &key)?)
        }
    };
    Ok(match part {
        Part::Activations => Msg::Activations {
            step,
            labels,
            acts: values,
        },
        Part::Gradient => Msg::Gradient { step, grad: values },
        Part::ClientGrad => Msg::ClientGrad { step, grad: values },
    })
}

/// `values` compressed with `c`, its random choices seeded by the run and `key`.
fn pack(values: &[f32], c: &Compression, seed: u64, key: &[u64]) -> EngineResult<Vec<u8>> {
    compress::encode_seeded(values, c, seed, key)
        .map_err(|e| EngineError::Failed(format!("compression.split: {e}")))
}

/// Why a message's form does not match the run's `compression.split`, if it does not.
fn form_mismatch(compressed: bool, msg: &Msg) -> Option<String> {
    let tensor = match msg {
        Msg::Request { client_part: t, .. }
        | Msg::Activations { acts: t, .. }
        | Msg::Gradient { grad: t, .. }
        | Msg::ClientGrad { grad: t, .. } => t,
    };
    match (tensor, compressed) {
        (Tensor::Packed(_), false) => {
            Some("compressed, but this run has no compression.split".into())
        }
        (Tensor::Exact(_), true) => {
            Some("uncompressed, but this run sets compression.split".into())
        }
        _ => None,
    }
}

/// The values of a split message's tensor: exact ones as they are, packed ones decoded to `n`
/// values.
fn values(t: Tensor, n: usize, what: &str) -> Result<Vec<f32>, String> {
    match t {
        Tensor::Exact(v) => Ok(Arc::try_unwrap(v).unwrap_or_else(|v| (*v).clone())),
        Tensor::Packed(b) => unpack(&b, n, what),
    }
}

/// Decodes `n` values of a compressed split message.
fn unpack(data: &[u8], n: usize, what: &str) -> Result<Vec<f32>, String> {
    compress::decode(data, n).map_err(|e| format!("{what}: {e}"))
}

/// Per asked client: its labels and activations, once they arrive.
type Activations = BTreeMap<NodeId, Option<(Vec<u32>, Vec<f32>)>>;

/// The answers, taken out, once every client asked has answered, or every one but those
/// `absent` (at least one answer: a step is not made of nothing).
fn take_if_complete<T>(
    waiting: &mut BTreeMap<NodeId, Option<T>>, absent: &BTreeSet<NodeId>,
) -> Option<BTreeMap<NodeId, T>> {
    let answered = waiting.values().filter(|v| v.is_some()).count();
    let complete = answered > 0
        && waiting
            .iter()
            .all(|(n, v)| v.is_some() || absent.contains(n));
    complete.then(|| answers(waiting))
}

/// The answers in `waiting`, taken out (the missing ones left behind).
fn answers<T>(waiting: &mut BTreeMap<NodeId, Option<T>>) -> BTreeMap<NodeId, T> {
    std::mem::take(waiting)
        .into_iter()
        .filter_map(|(n, v)| Some((n, v?)))
        .collect()
}

/// The empty slot of `from`'s answer for step `s`, while the server waits on step `step`; why
/// the answer is refused otherwise.
fn answer_slot<T>(
    waiting: &mut BTreeMap<NodeId, Option<T>>, from: NodeId, s: u64, step: u64,
) -> Result<&mut Option<T>, String> {
    if s != step {
        return Err(format!("for step {s}, the current step is {step}"));
    }
    match waiting.get_mut(&from) {
        None => Err(format!("node {from} was not asked in step {step}")),
        Some(Some(_)) => Err(format!("a second answer for step {step}")),
        Some(slot) => Ok(slot),
    }
}

enum Phase {
    /// Waiting for activations.
    Forward(Activations),
    /// Waiting for client-part gradients.
    Backward(BTreeMap<NodeId, Option<Vec<f32>>>),
    Idle,
}

#[derive(Default)]
struct EpochTotals {
    steps: u64,
    samples: u64,
    loss_sum: f64,
    min_batch: u64,
    max_batch: u64,
    clients: u64,
    bytes_up: u64,
    bytes_down: u64,
    sim_time_s: f64,
}

/// The split-learning server: runs the server part and keeps the client part's parameters.
pub struct SplitServer {
    settings: Arc<SplitSettings>,
    client_params: Vec<f32>,
    server_params: Vec<f32>,
    client_opt: OptimizerState,
    server_opt: OptimizerState,
    epoch: u32,
    plan: Vec<Vec<usize>>,
    t: usize,
    offsets: Vec<usize>,
    step: u64,
    phase: Phase,
    totals: EpochTotals,
    /// Each asked client's leg of the phase in progress, for the simulated time: bytes down
    /// and FLOPs when asked, bytes up once it answers.
    legs: BTreeMap<NodeId, Leg>,
    /// Simulated seconds of the step's forward phase and server compute.
    step_forward_s: f64,
    completed: u32,
    /// The step count when the last completed epoch ended (what a checkpoint holds: the
    /// next epoch may have sent its first step already).
    completed_step: u64,
    done: bool,
    keep: bool,
    saved_blobs: Vec<(String, Vec<u8>)>,
    /// Clients that missed a step's deadline: asked as before, not waited for until they
    /// answer in time again.
    absent: BTreeSet<NodeId>,
}

impl SplitServer {
    /// A server starting from the whole model's `initial` parameters.
    pub fn new(settings: Arc<SplitSettings>, initial: Vec<f32>) -> EngineResult<Self> {
        check_params(&initial, settings.num_params)
            .map_err(|why| EngineError::Failed(format!("initial parameters: {why}")))?;
        if settings.client_params >= settings.num_params {
            return Err(Invalid::range(
                "split.cut",
                "split.cut: the client part must leave layers to the server",
            )
            .into());
        }
        // A bad B fails before the run starts, not at the first epoch.
        split_batches::check(settings.sampler, &settings.counts, settings.batch)
            .map_err(|e| Invalid::range("split.batch", format!("split: {e}")))?;
        let (c, s) = initial.split_at(settings.client_params);
        let n = settings.counts.len();
        Ok(Self {
            client_params: c.to_vec(),
            server_params: s.to_vec(),
            client_opt: OptimizerState::default(),
            server_opt: OptimizerState::default(),
            epoch: 0,
            plan: Vec::new(),
            t: 0,
            offsets: vec![0; n],
            step: 0,
            phase: Phase::Idle,
            totals: EpochTotals::default(),
            legs: BTreeMap::new(),
            step_forward_s: 0.0,
            completed: 0,
            completed_step: 0,
            done: false,
            keep: false,
            saved_blobs: Vec::new(),
            absent: BTreeSet::new(),
            settings,
        })
    }

    fn client_of(&self, node: NodeId) -> Option<usize> {
        (node as usize)
            .checked_sub(1)
            .filter(|&k| k < self.settings.counts.len())
    }

    fn whole(&self) -> Vec<f32> {
        let mut p = self.client_params.clone();
        p.extend_from_slice(&self.server_params);
        p
    }

    fn lr_scale(&self) -> f64 {
        // Steps of the whole run: this epoch's count for every epoch (exact for the fixed
        // samplers and global sampling alike).
        let total = (self.plan.len() as u64 * u64::from(self.settings.epochs)).max(1) as f64;
        self.settings
            .lr_schedule
            .factor((self.step.saturating_sub(1)) as f64 / total)
    }

    fn start_epoch(&mut self, ctx: &mut SplitCtx<'_>) -> EngineResult {
        self.epoch += 1;
        let s = &self.settings;
        let mut rng = seed::rng(s.seed, &[seed::stream::SAMPLING, u64::from(self.epoch)]);
        self.plan = plan_epoch(s.sampler, &s.counts, s.batch, &mut rng)
            .map_err(|e| EngineError::Failed(format!("split: {e}")))?;
        self.t = 0;
        self.offsets.iter_mut().for_each(|o| *o = 0);
        self.totals = EpochTotals {
            min_batch: u64::MAX,
            ..EpochTotals::default()
        };
        self.start_step(ctx)
    }

    fn start_step(&mut self, ctx: &mut SplitCtx<'_>) -> EngineResult {
        self.step += 1;
        let params = Arc::new(self.client_params.clone());
        // Compressed once per step, shared by the step's clients.
        let packed = match &self.settings.compression {
            Some(c) => {
                let key = [u64::from(SERVER), self.step];
                Some(Arc::new(pack(&params, c, self.settings.seed, &key)?))
            }
            None => None,
        };
        let mut waiting = BTreeMap::new();
        self.legs.clear();
        for (k, &count) in self.plan[self.t].iter().enumerate() {
            if count == 0 {
                continue;
            }
            let node = k as NodeId + 1;
            let (step, epoch, offset, count32) =
                (self.step, self.epoch, self.offsets[k] as u32, count as u32);
            let request = Msg::Request {
                step,
                epoch,
                offset,
                count: count32,
                client_part: match &packed {
                    Some(p) => Tensor::Packed(Arc::clone(p)),
                    None => Tensor::Exact(Arc::clone(&params)),
                },
            };
            let bytes = ctx.send(node, request) as u64;
            self.totals.bytes_down += bytes;
            self.legs.insert(
                node,
                Leg {
                    client: k,
                    bytes_down: bytes,
                    flops: (count as u64 * self.settings.flops.0) as f64,
                    bytes_up: 0,
                },
            );
            self.offsets[k] += count;
            waiting.insert(node, None);
        }
        self.phase = Phase::Forward(waiting);
        self.set_step_deadline(FORWARD, ctx);
        Ok(())
    }

    /// Starts the deadline of this step's `phase` ([`FORWARD`] or [`BACKWARD`]), if the run
    /// has one.
    fn set_step_deadline(&self, phase: u64, ctx: &mut SplitCtx<'_>) {
        if let Some(d) = self.settings.step_deadline {
            ctx.set_deadline(2 * self.step + phase, d);
        }
    }

    /// The next step of the epoch, or the epoch's end.
    fn next_step(&mut self, ctx: &mut SplitCtx<'_>) -> EngineResult {
        self.t += 1;
        if self.t < self.plan.len() {
            return self.start_step(ctx);
        }
        self.finish_epoch(ctx)
    }

    /// Every activation is in: run the server part and send back the gradients.
    /// Counts `bytes` received from client `from` in this step.
    fn counted_up(&mut self, from: NodeId, bytes: u64) {
        self.totals.bytes_up += bytes;
        if let Some(l) = self.legs.get_mut(&from) {
            l.bytes_up = bytes;
        }
    }

    fn server_step(
        &mut self, got: BTreeMap<NodeId, (Vec<u32>, Vec<f32>)>, ctx: &mut SplitCtx<'_>,
    ) -> EngineResult {
        let (mut labels, mut acts, mut rows) = (Vec::new(), Vec::new(), Vec::new());
        for (node, (l, a)) in got {
            rows.push((node, l.len()));
            labels.extend(l);
            acts.extend(a);
        }
        let lr = self.lr_scale();
        let out = ctx.trainer.split_server_step(
            &self.server_params,
            &acts,
            &labels,
            &mut self.server_opt,
            lr,
        )?;
        self.server_params = out.params;
        let b = labels.len() as u64;
        let s = &self.settings;
        let forward: Vec<Leg> = std::mem::take(&mut self.legs).into_values().collect();
        self.step_forward_s =
            s.latency.phase(&forward) + s.latency.server((3 * b * s.flops.1) as f64);
        self.totals.loss_sum += out.loss * b as f64;
        self.totals.samples += b;
        self.totals.min_batch = self.totals.min_batch.min(b);
        self.totals.max_batch = self.totals.max_batch.max(b);
        self.totals.clients += rows.len() as u64;
        let f = s.cut_features;
        let mut waiting = BTreeMap::new();
        let mut start = 0;
        for (node, n) in rows {
            let grad = out.grad[start * f..(start + n) * f].to_vec();
            start += n;
            let message = split_message(
                s.compression.as_ref(),
                s.seed,
                (SERVER, node),
                self.step,
                Part::Gradient,
                Vec::new(),
                grad,
            )?;
            let bytes = ctx.send(node, message) as u64;
            self.totals.bytes_down += bytes;
            // Backward: the client's forward pass again, then its backward pass (2x).
            self.legs.insert(
                node,
                Leg {
                    client: node as usize - 1,
                    bytes_down: bytes,
                    flops: (3 * n as u64 * s.flops.0) as f64,
                    bytes_up: 0,
                },
            );
            waiting.insert(node, None);
        }
        self.phase = Phase::Backward(waiting);
        self.set_step_deadline(BACKWARD, ctx);
        Ok(())
    }

    /// Every client-part gradient is in: update the client part and move on.
    fn client_step(
        &mut self, got: BTreeMap<NodeId, Vec<f32>>, ctx: &mut SplitCtx<'_>,
    ) -> EngineResult {
        let n = got.len();
        let mut sum = vec![0.0f32; self.client_params.len()];
        for g in got.into_values() {
            for (s, v) in sum.iter_mut().zip(g) {
                *s += v;
            }
        }
        if self.settings.client_gradients == ClientGradients::Mean && n > 0 {
            let inv = 1.0 / n as f32;
            sum.iter_mut().for_each(|v| *v *= inv);
        }
        let lr = self.lr_scale();
        self.client_params =
            ctx.trainer
                .split_client_update(&self.client_params, &sum, &mut self.client_opt, lr)?;
        let backward: Vec<Leg> = std::mem::take(&mut self.legs).into_values().collect();
        self.totals.sim_time_s += self.step_forward_s + self.settings.latency.phase(&backward);
        self.totals.steps += 1;
        self.next_step(ctx)
    }

    fn finish_epoch(&mut self, ctx: &mut SplitCtx<'_>) -> EngineResult {
        self.completed = self.epoch;
        self.completed_step = self.step;
        let last = self.epoch >= self.settings.epochs;
        let whole = self.whole();
        let (accuracy, loss) = if last || self.epoch.is_multiple_of(self.settings.eval_every.max(1))
        {
            let e = ctx.trainer.evaluate(&whole)?;
            (Some(e.accuracy), Some(e.loss))
        } else {
            (None, None)
        };
        let t = std::mem::take(&mut self.totals);
        ctx.emit(Event::Metrics(SplitMetrics {
            epoch: self.epoch,
            accuracy,
            loss,
            train_loss: t.loss_sum / t.samples.max(1) as f64,
            steps: t.steps,
            samples: t.samples,
            min_batch: if t.steps == 0 { 0 } else { t.min_batch },
            max_batch: t.max_batch,
            mean_clients: t.clients as f64 / t.steps.max(1) as f64,
            bytes_up: t.bytes_up,
            bytes_down: t.bytes_down,
            sim_time_s: t.sim_time_s,
        }));
        if self.keep {
            self.saved_blobs = vec![
                ("client_optimizer".into(), self.client_opt.to_bytes()?),
                ("server_optimizer".into(), self.server_opt.to_bytes()?),
            ];
        }
        if last {
            self.finish(ctx);
            Ok(())
        } else {
            self.start_epoch(ctx)
        }
    }

    /// An answer from a client that missed a deadline, for a phase the server no longer waits
    /// on (an earlier step's, or this step's forward once it is over): expected after a
    /// deadline, so ignored rather than refused.
    fn is_late(&self, from: NodeId, msg: &Msg) -> bool {
        let (Msg::Activations { step: s, .. } | Msg::ClientGrad { step: s, .. }) = msg else {
            return false;
        };
        let slot_open = match (msg, &self.phase) {
            (Msg::Activations { .. }, Phase::Forward(w)) => {
                w.get(&from).is_some_and(Option::is_none)
            }
            (Msg::ClientGrad { .. }, Phase::Backward(w)) => {
                w.get(&from).is_some_and(Option::is_none)
            }
            _ => false,
        };
        let awaited = *s == self.step && slot_open;
        !awaited && self.absent.contains(&from) && *s <= self.step
    }

    /// `missing` did not answer this step's `phase` in time.
    fn missed(&mut self, missing: Vec<NodeId>, phase: u64, ctx: &mut SplitCtx<'_>) -> EngineResult {
        tracing::warn!(
            "split step {}: no {} from node(s) {missing:?} in time; going on without them",
            self.step,
            if phase == FORWARD {
                "activations"
            } else {
                "client-part gradient"
            },
        );
        self.absent.extend(missing);
        let (forward, backward) = match &mut self.phase {
            Phase::Forward(w) => (take_if_complete(w, &self.absent), None),
            Phase::Backward(w) => (None, take_if_complete(w, &self.absent)),
            Phase::Idle => (None, None),
        };
        match (forward, backward) {
            (Some(got), _) => self.server_step(got, ctx),
            (_, Some(got)) => self.client_step(got, ctx),
            // Nobody answered: wait on, for whoever answers first.
            _ => {
                self.set_step_deadline(phase, ctx);
                Ok(())
            }
        }
    }

    fn finish(&mut self, ctx: &mut SplitCtx<'_>) {
        self.phase = Phase::Idle;
        ctx.emit(Event::Finished {
            params: self.whole(),
        });
        for k in 0..self.settings.counts.len() {
            ctx.send_control(
                k as NodeId + 1,
                Control::Shutdown {
                    round: self.completed,
                },
            );
        }
        self.done = true;
    }
}

impl Node for SplitServer {
    type Protocol = SplitProtocol;

    fn id(&self) -> NodeId {
        SERVER
    }

    fn on_start(&mut self, ctx: &mut SplitCtx<'_>) -> EngineResult {
        // A fresh server starts at epoch 0; a resumed one after its last completed epoch.
        self.epoch = self.completed;
        if self.completed >= self.settings.epochs {
            self.finish(ctx);
            return Ok(());
        }
        self.start_epoch(ctx)
    }

    fn keep_checkpoints(&mut self) {
        self.keep = true;
    }

    fn state_version(&self) -> u64 {
        1 + u64::from(self.completed)
    }

    fn save_state(&self) -> Option<NodeState> {
        Some(NodeState {
            meta: serde_json::json!({ "completed_epochs": self.completed, "step": self.completed_step }),
            tensors: vec![("params".into(), self.whole())],
            blobs: self.saved_blobs.clone(),
        })
    }

    fn load_state(&mut self, state: NodeState) -> EngineResult {
        let completed = u32::try_from(state.meta_u64("completed_epochs")?)
            .ok()
            .filter(|&c| c <= self.settings.epochs)
            .ok_or_else(|| {
                EngineError::Checkpoint(format!(
                    "checkpoint: completed_epochs is more than the run's {} epochs",
                    self.settings.epochs
                ))
            })?;
        let params = state.tensor("params")?;
        check_params(params, self.settings.num_params)
            .map_err(|why| EngineError::Checkpoint(format!("checkpoint params: {why}")))?;
        let (c, s) = params.split_at(self.settings.client_params);
        self.client_params = c.to_vec();
        self.server_params = s.to_vec();
        let optimizer = |name: &str| {
            OptimizerState::from_bytes(state.blob(name).unwrap_or(&[]))
                .map_err(|e| EngineError::Checkpoint(format!("checkpoint {name}: {e}")))
        };
        self.client_opt = optimizer("client_optimizer")?;
        self.server_opt = optimizer("server_optimizer")?;
        self.step = state.meta_u64("step")?;
        self.completed_step = self.step;
        self.completed = completed;
        Ok(())
    }

    fn finished(&self) -> bool {
        self.done
    }

    /// A step's phase passed its deadline: the clients that have not answered are absent (not
    /// waited for until they answer in time again) and the step goes on with the answers in,
    /// or waits on while none is.
    fn on_deadline(&mut self, token: u64, ctx: &mut SplitCtx<'_>) -> EngineResult {
        let (phase, missing) = match &self.phase {
            Phase::Forward(w) => (FORWARD, common::unanswered(w)),
            Phase::Backward(w) => (BACKWARD, common::unanswered(w)),
            Phase::Idle => return Ok(()),
        };
        if self.done || token != 2 * self.step + phase {
            return Ok(()); // a phase that already completed
        }
        self.missed(missing, phase, ctx)
    }

    fn on_message(&mut self, from: NodeId, msg: Msg, ctx: &mut SplitCtx<'_>) -> EngineResult {
        let kind = msg.kind();
        let reject = EngineError::rejecter(SERVER, from, kind);
        let bytes = (HEADER + msg.encoded_len()) as u64;
        let Some(k) = self.client_of(from) else {
            return Err(reject("not a client of this run".into()));
        };
        if let Some(why) = form_mismatch(self.settings.compression.is_some(), &msg) {
            return Err(reject(why));
        }
        if self.is_late(from, &msg) {
            tracing::info!(
                "late {kind} from node {from} (the server is at step {}): ignored",
                self.step
            );
            return Ok(());
        }
        let msg = match msg {
            Msg::Activations {
                step,
                labels,
                acts: Tensor::Packed(data),
            } => {
                // The label count is checked before decoding, so a hostile count cannot size the
                // decoded vector; the values per label are checked below.
                let n = labels.len().saturating_mul(self.settings.cut_features);
                let asked = self.plan.get(self.t).map_or(0, |p| p[k]);
                if labels.len() != asked {
                    return Err(reject(format!(
                        "{} labels, {asked} samples were asked for",
                        labels.len()
                    )));
                }
                let acts = unpack(&data, n, "activations").map_err(&reject)?;
                Msg::Activations {
                    step,
                    labels,
                    acts: Tensor::exact(acts),
                }
            }
            Msg::ClientGrad {
                step,
                grad: Tensor::Packed(data),
            } => {
                let n = self.client_params.len();
                let grad = unpack(&data, n, "client-part gradient").map_err(&reject)?;
                Msg::ClientGrad {
                    step,
                    grad: Tensor::exact(grad),
                }
            }
            m => m,
        };
        let step = self.step;
        match (msg, &mut self.phase) {
            (
                Msg::Activations {
                    step: s,
                    labels,
                    acts,
                },
                Phase::Forward(waiting),
            ) => {
                let acts = acts.into_values().map_err(&reject)?;
                let slot = answer_slot(waiting, from, s, step).map_err(&reject)?;
                let asked = self.plan[self.t][from as usize - 1];
                let f = self.settings.cut_features;
                if labels.len() != asked {
                    return Err(reject(format!(
                        "{} labels, {asked} samples were asked for",
                        labels.len()
                    )));
                }
                if acts.len() != asked * f {
                    return Err(reject(format!(
                        "activations of {} values for {asked} samples; the cut has {f} values per sample",
                        acts.len()
                    )));
                }
                *slot = Some((labels, acts));
                self.absent.remove(&from);
                let got = take_if_complete(waiting, &self.absent);
                self.counted_up(from, bytes);
                got.map_or(Ok(()), |got| self.server_step(got, ctx))
            }
            (Msg::ClientGrad { step: s, grad }, Phase::Backward(waiting)) => {
                let grad = grad.into_values().map_err(&reject)?;
                let slot = answer_slot(waiting, from, s, step).map_err(&reject)?;
                check_params(&grad, self.client_params.len()).map_err(reject)?;
                *slot = Some(grad);
                self.absent.remove(&from);
                let got = take_if_complete(waiting, &self.absent);
                self.counted_up(from, bytes);
                got.map_or(Ok(()), |got| self.client_step(got, ctx))
            }
            (m, _) => Err(reject(format!("unexpected {} in step {step}", m.kind()))),
        }
    }
}
