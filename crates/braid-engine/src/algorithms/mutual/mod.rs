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
use braid_core::mutual::{defkt_round, dfml_round, mean_by_arch, round_subset, AlphaCycle};
use braid_core::params::weighted_mean;
use braid_core::seed;
use braid_nn::Member;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use super::common;
use crate::algorithm::{Algorithm, Feature, Summary};
use crate::config::ExperimentConfig;
use crate::node::{
    check_params, BoxNode, EngineError, EngineResult, Event, Metrics, Node, NodeCtx, NodeState,
};
use crate::prepared::Prepared;

mod report;
use crate::error::Invalid;
use crate::wire::{Message as _, NodeId, Tensor};

mod algorithm;
mod hub;
mod msg;
pub use algorithm::{
    model_names, mutual_settings, DefKt, Dfml, Fml, Local, MutualConfig, MutualRun,
};
pub use hub::MutualHub;
pub use msg::Msg;

/// What a node of mutual learning can do while handling an event.
pub type MutualCtx<'a> = NodeCtx<'a, Msg, MutualMetrics, dyn MutualLearner>;

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

/// One client of a mutual-learning run.
pub struct MutualClient {
    k: usize,
    settings: Arc<MutualSettings>,
    shard: Arc<Vec<usize>>,
    params: Arc<Vec<f32>>,
    peak: Option<Arc<Vec<f32>>>,
    /// Rounds completed.
    done: u32,
    /// The last round whose DFML send has gone out.
    sent: u32,
    /// Models received for the current or later rounds, by (round, sender).
    inbox: BTreeMap<(u32, NodeId), Arc<Vec<f32>>>,
    bytes_sent: u64,
    loss_sum: f64,
    loss_count: u64,
    /// The round whose deadline is set (0: none yet).
    deadline_for: u32,
    /// The round whose deadline has passed: it goes on without what is missing.
    given_up: u32,
    /// Changes with every input that changes the client (see [`Node::state_version`]).
    version: u64,
    /// The messages of the latest input that sent any (for checkpoints and resume).
    last_out: common::LatestSent<Msg>,
    /// Restored from a checkpoint: `last_out` goes out again at the start.
    resumed: bool,
}

impl MutualClient {
    /// Client `k`, holding training samples `shard`, starting from `initial` parameters of its
    /// architecture.
    pub fn new(
        k: usize, settings: Arc<MutualSettings>, shard: Arc<Vec<usize>>, initial: Vec<f32>,
    ) -> Self {
        Self {
            k,
            settings,
            shard,
            params: Arc::new(initial),
            peak: None,
            done: 0,
            sent: 0,
            inbox: BTreeMap::new(),
            bytes_sent: 0,
            loss_sum: 0.0,
            loss_count: 0,
            deadline_for: 0,
            given_up: 0,
            version: 0,
            last_out: common::LatestSent::default(),
            resumed: false,
        }
    }

    /// Sends `msg` to `to`, kept to be sent again on resume; its size.
    fn send(&mut self, ctx: &mut MutualCtx<'_>, to: NodeId, msg: Msg) -> usize {
        self.last_out.keep(to, &msg);
        ctx.send(to, msg)
    }

    /// An input begins: its messages, if any, replace the kept ones.
    fn begin_input(&mut self) {
        self.version += 1;
        self.last_out.begin();
    }

    /// The client's state from a checkpoint taken by [`Node::save_state`].
    fn restore(&mut self, state: &NodeState) -> Result<(), String> {
        let s = Arc::clone(&self.settings);
        let num = |k: &str| state.meta_u64(k).map_err(|e| e.to_string());
        let done = u32::try_from(num("done")?)
            .ok()
            .filter(|&d| d <= s.rounds)
            .ok_or("done is past the run's rounds")?;
        let sent = u32::try_from(num("sent")?)
            .ok()
            .filter(|&r| r <= s.rounds)
            .ok_or("sent is past the run's rounds")?;
        let size = s.model_params[self.arch()];
        let model = |name: &str| -> Result<Arc<Vec<f32>>, String> {
            let p = state.tensor(name).map_err(|e| e.to_string())?;
            check_params(p, size).map_err(|w| format!("{name}: {w}"))?;
            Ok(Arc::new(p.to_vec()))
        };
        let params = model("params")?;
        let peak = match state.tensor("peak") {
            Ok(_) => Some(model("peak")?),
            Err(_) => None,
        };
        let mut inbox = BTreeMap::new();
        let limits = crate::wire::Limits::new(s.model_params.iter().copied().max().unwrap_or(0));
        for (name, bytes) in &state.blobs {
            let Some(key) = common::inbox_key(name) else {
                continue;
            };
            let (round, from) = key?;
            let Ok(crate::wire::Body::Msg(Msg::Model { arch, model, .. })) =
                crate::wire::Body::<Msg>::decode(bytes, &limits)
            else {
                return Err(format!("{name}: not a model message"));
            };
            let p = s.unpack(arch, model)?;
            let want = s.expected_arch(round, self.k, from)?;
            if arch as usize != want || round <= done {
                return Err(format!("{name}: not a model this client waits for"));
            }
            check_params(&p, s.model_params[want]).map_err(|w| format!("{name}: {w}"))?;
            inbox.insert((round, from), p);
        }
        let last_out =
            common::LatestSent::from_blobs(&state.blobs, &limits, s.clients() as NodeId, |_| None)?;
        self.params = params;
        self.peak = peak;
        self.done = done;
        self.sent = sent;
        self.inbox = inbox;
        self.bytes_sent = num("bytes_sent")?;
        self.loss_count = num("loss_count")?;
        self.loss_sum = state
            .meta
            .get("loss_sum")
            .and_then(serde_json::Value::as_f64)
            .ok_or("no number \"loss_sum\"")?;
        self.last_out = last_out;
        self.resumed = true;
        Ok(())
    }

    /// Whether round `t` waits on for what it misses: until its deadline (set here, once)
    /// has passed; for ever without one.
    fn waits(&mut self, ctx: &mut MutualCtx<'_>, t: u32) -> bool {
        if self.given_up >= t {
            tracing::warn!(
                "mutual round {t}: client {} goes on without what did not arrive in time",
                self.id()
            );
            return false;
        }
        if let Some(d) = self.settings.round_deadline {
            if self.deadline_for < t {
                ctx.set_deadline(u64::from(t), d);
                self.deadline_for = t;
            }
        }
        true
    }

    fn arch(&self) -> usize {
        self.settings.archs[self.k]
    }

    /// The mini-batches of this client's training in round `round`.
    fn batches(&self, round: u32) -> Vec<Vec<usize>> {
        let s = &self.settings;
        let mut rng = seed::rng(
            s.seed,
            &[
                seed::stream::LOCAL_TRAIN,
                u64::from(self.id()),
                u64::from(round),
            ],
        );
        let mut out = Vec::new();
        let mut order = self.shard.to_vec();
        for _ in 0..s.local_epochs {
            order.shuffle(&mut rng);
            out.extend(order.chunks(s.batch_size).map(<[usize]>::to_vec));
        }
        out
    }

    fn send_model(
        &mut self, ctx: &mut MutualCtx<'_>, to: NodeId, round: u32, arch: usize,
        params: Arc<Vec<f32>>,
    ) -> EngineResult {
        let message = self
            .settings
            .model_message(round, arch, params, self.id())?;
        self.bytes_sent += self.send(ctx, to, message) as u64;
        Ok(())
    }

    /// Trains `others` (architecture, parameters) together with the own model in round
    /// `round`; returns the others' parameters after training (the own model is updated).
    fn train_with(
        &mut self, ctx: &mut MutualCtx<'_>, round: u32, others: &[(usize, Arc<Vec<f32>>)],
    ) -> EngineResult<Vec<Vec<f32>>> {
        let own = Arc::clone(&self.params);
        let mut members = vec![Member {
            arch: self.arch(),
            params: &own,
        }];
        members.extend(others.iter().map(|(a, p)| Member {
            arch: *a,
            params: p.as_slice(),
        }));
        let s = Arc::clone(&self.settings);
        let out = ctx.trainer.mutual_train(
            &members,
            &self.batches(round),
            s.alpha.at(round),
            s.lr_scale(round),
        )?;
        if let (Some(l), true) = (out.supervised.first(), out.steps > 0) {
            self.loss_sum += l;
            self.loss_count += 1;
        }
        let mut params = out.params.into_iter();
        if let Some(p) = params.next() {
            self.params = Arc::new(p);
        }
        Ok(params.collect())
    }

    /// Goes through the rounds until one needs a model that has not arrived.
    fn advance(&mut self, ctx: &mut MutualCtx<'_>) -> EngineResult {
        let s = Arc::clone(&self.settings);
        while self.done < s.rounds {
            let t = self.done + 1;
            match s.role(t, self.k) {
                Role::Idle => {}
                Role::Train => {
                    self.train_with(ctx, t, &[])?;
                }
                Role::Send(to) => {
                    if self.sent < t {
                        let p = Arc::clone(&self.params);
                        self.send_model(ctx, to, t, self.arch(), p)?;
                        self.sent = t;
                    }
                    // Without the aggregator's answer in time, the own model goes on.
                    match self.inbox.remove(&(t, to)) {
                        Some(back) => self.params = back,
                        None if self.waits(ctx, t) => return Ok(()),
                        None => {}
                    }
                }
                Role::Aggregate(senders) => {
                    let all_in = senders.iter().all(|f| self.inbox.contains_key(&(t, *f)));
                    if !all_in && self.waits(ctx, t) {
                        return Ok(());
                    }
                    // (At the deadline: the senders whose models came.)
                    let (from, received): (Vec<NodeId>, Vec<ArchModel>) = senders
                        .iter()
                        .filter_map(|f| {
                            let p = self.inbox.remove(&(t, *f))?;
                            Some((*f, (s.archs[(f - 1) as usize], p)))
                        })
                        .unzip();
                    let trained = self.train_with(ctx, t, &received)?;
                    let mut archs = vec![self.arch()];
                    archs.extend(received.iter().map(|(a, _)| *a));
                    let mut all: Vec<&[f32]> = vec![self.params.as_slice()];
                    all.extend(trained.iter().map(Vec::as_slice));
                    let means = mean_by_arch(&archs, &all)?;
                    let mut means = means.into_iter();
                    if let Some(own) = means.next() {
                        self.params = Arc::new(own);
                    }
                    for ((to, (arch, _)), p) in from.iter().zip(&received).zip(means) {
                        self.send_model(ctx, *to, t, *arch, Arc::new(p))?;
                    }
                }
                Role::Teach(student) => {
                    self.train_with(ctx, t, &[])?;
                    let p = Arc::clone(&self.params);
                    self.send_model(ctx, student, t, self.arch(), p)?;
                }
                // Without the teacher's (or the hub's) model in time, the round is idle.
                Role::Learn(teacher) => match self.inbox.remove(&(t, teacher)) {
                    Some(p) => {
                        let arch = s.archs[(teacher - 1) as usize];
                        self.train_with(ctx, t, &[(arch, p)])?;
                    }
                    None if self.waits(ctx, t) => return Ok(()),
                    None => {}
                },
                Role::Global => match self.inbox.remove(&(t, HUB)) {
                    Some(p) => {
                        let trained = self.train_with(ctx, t, &[(s.global_model, p)])?;
                        let back = trained.into_iter().next().unwrap_or_default();
                        self.send_model(ctx, HUB, t, s.global_model, Arc::new(back))?;
                    }
                    None if self.waits(ctx, t) => return Ok(()),
                    None => {}
                },
            }
            self.complete(ctx, t)?;
        }
        Ok(())
    }

    /// Peak snapshot and evaluation report after round `t`.
    fn complete(&mut self, ctx: &mut MutualCtx<'_>, t: u32) -> EngineResult {
        let s = Arc::clone(&self.settings);
        if s.variant == Variant::Dfml && s.alpha.is_peak(t) {
            self.peak = Some(Arc::clone(&self.params));
        }
        if s.evaluates_at(t) {
            let samples = s.eval_samples_at(t);
            let cur = ctx
                .trainer
                .evaluate_arch(self.arch(), &self.params, samples)?;
            let peak = match &self.peak {
                // Taken this round (or not trained since): the current model's result.
                Some(p) if Arc::ptr_eq(p, &self.params) => Some(cur),
                Some(p) => Some(ctx.trainer.evaluate_arch(self.arch(), p, samples)?),
                None => None,
            };
            let train_loss = if self.loss_count > 0 {
                (self.loss_sum / self.loss_count as f64) as f32
            } else {
                f32::NAN
            };
            self.send(
                ctx,
                HUB,
                Msg::Report {
                    round: t,
                    arch: self.arch() as u32,
                    accuracy: cur.accuracy as f32,
                    loss: cur.loss as f32,
                    peak_accuracy: peak.map_or(f32::NAN, |e| e.accuracy as f32),
                    peak_loss: peak.map_or(f32::NAN, |e| e.loss as f32),
                    train_loss,
                    bytes_sent: self.bytes_sent,
                },
            );
            self.loss_sum = 0.0;
            self.loss_count = 0;
        }
        self.done = t;
        Ok(())
    }
}

impl Node for MutualClient {
    type Msg = Msg;
    type Metrics = MutualMetrics;
    type Trainer = dyn MutualLearner;

    fn id(&self) -> NodeId {
        client_node(self.k)
    }

    fn on_start(&mut self, ctx: &mut MutualCtx<'_>) -> EngineResult {
        self.begin_input();
        if std::mem::take(&mut self.resumed) {
            // What the checkpointed input sent may not have left before the kill.
            for (to, msg) in self.last_out.take() {
                self.send(ctx, to, msg);
            }
        }
        self.advance(ctx)
    }

    /// Changes with every input: the models received and the rounds done are durable.
    fn state_version(&self) -> u64 {
        self.version
    }

    /// The round reached, the model (and peak model), the models received for later rounds
    /// and the messages of the latest input that sent any (as their wire frames).
    fn save_state(&self) -> Option<NodeState> {
        let mut tensors = vec![("params".to_string(), self.params.to_vec())];
        if let Some(p) = &self.peak {
            tensors.push(("peak".into(), p.to_vec()));
        }
        let mut blobs = Vec::new();
        for ((round, from), p) in &self.inbox {
            let arch = self.settings.expected_arch(*round, self.k, *from).ok()?;
            let m = Msg::Model {
                round: *round,
                arch: arch as u32,
                model: Tensor::Exact(Arc::clone(p)),
            };
            blobs.push((
                format!("inbox/{round}/{from}"),
                crate::wire::Body::Msg(m).encode(),
            ));
        }
        blobs.extend(self.last_out.to_blobs(|_| None));
        Some(NodeState {
            meta: serde_json::json!({
                "done": self.done,
                "sent": self.sent,
                "bytes_sent": self.bytes_sent,
                "loss_sum": self.loss_sum,
                "loss_count": self.loss_count,
            }),
            tensors,
            blobs,
        })
    }

    fn load_state(&mut self, state: NodeState) -> EngineResult {
        self.restore(&state)
            .map_err(|why| EngineError::Checkpoint(format!("checkpoint: {why}")))
    }

    fn on_message(&mut self, from: NodeId, msg: Msg, ctx: &mut MutualCtx<'_>) -> EngineResult {
        self.begin_input();
        let kind = msg.kind();
        let node = self.id();
        let reject = EngineError::rejecter(node, from, kind);
        let Msg::Model { round, arch, model } = msg else {
            return Err(reject("a mutual-learning client only takes models".into()));
        };
        if round <= self.done && self.settings.round_deadline.is_some() {
            // Expected after a deadline: the round went on without it.
            tracing::info!("late model from node {from} for round {round}: ignored");
            return Ok(());
        }
        let params = self.settings.unpack(arch, model).map_err(reject)?;
        let s = &self.settings;
        if round <= self.done || round > s.rounds {
            return Err(reject(format!(
                "for round {round}; this client has done {} of {} rounds",
                self.done, s.rounds
            )));
        }
        if from != HUB && from as usize > s.clients() {
            return Err(reject("not a participant of this run".into()));
        }
        let want = s.expected_arch(round, self.k, from).map_err(reject)?;
        if arch as usize != want {
            return Err(reject(format!(
                "a model of architecture {arch}, expected {want} ({})",
                s.model_names[want]
            )));
        }
        check_params(&params, s.model_params[want]).map_err(reject)?;
        // Checked before storing: a refused duplicate must not replace the first copy.
        if self.inbox.contains_key(&(round, from)) {
            return Err(reject(format!("a second model for round {round}")));
        }
        self.inbox.insert((round, from), params);
        self.advance(ctx)
    }

    fn finished(&self) -> bool {
        self.done >= self.settings.rounds
    }

    /// The round it waits in passed its deadline: it goes on without what is missing.
    fn on_deadline(&mut self, token: u64, ctx: &mut MutualCtx<'_>) -> EngineResult {
        let t = self.done + 1;
        if token != u64::from(t) || t > self.settings.rounds {
            return Ok(()); // a round that already completed
        }
        self.begin_input();
        self.given_up = t;
        self.advance(ctx)
    }
}

/// Metrics of a mutual-learning run at one evaluation point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MutualMetrics {
    /// Round, from 1.
    pub round: u32,
    /// Alpha in this round.
    pub alpha: f64,
    /// Global accuracy: mean test accuracy of all clients' current models.
    pub accuracy: f64,
    /// Mean test loss of the current models.
    pub loss: f64,
    /// Worst current model.
    pub min_accuracy: f64,
    /// Best current model.
    pub max_accuracy: f64,
    /// Mean test accuracy of the peak models (DFML, once every client has one).
    pub peak_accuracy: Option<f64>,
    /// Mean current accuracy per architecture (in the order of the list of models; None for
    /// a model no client has).
    pub per_arch: Vec<Option<f64>>,
    /// Mean peak accuracy per architecture.
    pub per_arch_peak: Vec<Option<f64>>,
    /// FML: test accuracy of the global model.
    pub global_model_accuracy: Option<f64>,
    /// Mean training loss (supervised part) of the trainings since the previous point.
    pub train_loss: Option<f64>,
    /// Bytes of models sent by everyone since the previous evaluation point, per round.
    pub bytes_per_round: f64,
    /// Bytes of models sent by everyone so far.
    pub cum_bytes: u64,
}

impl Metrics for MutualMetrics {
    fn progress(&self) -> (u64, Option<f64>) {
        (u64::from(self.round), Some(self.accuracy))
    }

    fn line(&self) -> String {
        format!(
            "round {:>5} | global accuracy {:.4}",
            self.round, self.accuracy
        )
    }
}
