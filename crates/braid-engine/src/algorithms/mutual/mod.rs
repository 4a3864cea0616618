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

use braid_nn::ModelName;

use super::common;
use crate::algorithm::{Algorithm, Feature, Summary};
use crate::config::ExperimentConfig;
use crate::experiment::Prepared;
use crate::node::{check_params, BoxNode, EngineError, Event, Metrics, Node, NodeCtx};

mod report;
use crate::error::Invalid;
use crate::wire::{Message as _, NodeId, Tensor};

mod msg;
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
}

impl MutualSettings {
    /// The message carrying model `params` of architecture `arch` for round `round` from
    /// `from`: quantized if the run says so (random choices seeded by sender and round).
    fn model_message(
        &self,
        round: u32,
        arch: usize,
        params: Arc<Vec<f32>>,
        from: NodeId,
    ) -> Result<Msg, EngineError> {
        let arch32 = arch as u32;
        Ok(match &self.model_compression {
            None => Msg::Model {
                round,
                arch: arch32,
                model: Tensor::Exact(params),
            },
            Some(c) => {
                let mut rng = seed::rng(
                    self.seed,
                    &[seed::stream::COMPRESS, u64::from(from), u64::from(round)],
                );
                let model = braid_core::compress::encode(&params, c, &mut rng)
                    .map_err(|e| EngineError::Failed(e.to_string()))?;
                Msg::Model {
                    round,
                    arch: arch32,
                    model: Tensor::packed(model),
                }
            }
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
    pub fn validate(&self) -> Result<(), EngineError> {
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
            return bad(
                "train.batch_size",
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
}

impl MutualClient {
    /// Client `k`, holding training samples `shard`, starting from `initial` parameters of its
    /// architecture.
    pub fn new(
        k: usize,
        settings: Arc<MutualSettings>,
        shard: Arc<Vec<usize>>,
        initial: Vec<f32>,
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
        }
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
        &mut self,
        ctx: &mut MutualCtx<'_>,
        to: NodeId,
        round: u32,
        arch: usize,
        params: Arc<Vec<f32>>,
    ) -> Result<(), EngineError> {
        let message = self
            .settings
            .model_message(round, arch, params, self.id())?;
        self.bytes_sent += ctx.send(to, message) as u64;
        Ok(())
    }

    /// Trains `others` (architecture, parameters) together with the own model in round
    /// `round`; returns the others' parameters after training (the own model is updated).
    fn train_with(
        &mut self,
        ctx: &mut MutualCtx<'_>,
        round: u32,
        others: &[(usize, Arc<Vec<f32>>)],
    ) -> Result<Vec<Vec<f32>>, EngineError> {
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
    fn advance(&mut self, ctx: &mut MutualCtx<'_>) -> Result<(), EngineError> {
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
                    let Some(back) = self.inbox.remove(&(t, to)) else {
                        return Ok(());
                    };
                    self.params = back;
                }
                Role::Aggregate(senders) => {
                    if !senders.iter().all(|f| self.inbox.contains_key(&(t, *f))) {
                        return Ok(());
                    }
                    let received: Vec<(usize, Arc<Vec<f32>>)> = senders
                        .iter()
                        .filter_map(|f| {
                            let p = self.inbox.remove(&(t, *f))?;
                            Some((s.archs[(f - 1) as usize], p))
                        })
                        .collect();
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
                    for ((to, (arch, _)), p) in senders.iter().zip(&received).zip(means) {
                        self.send_model(ctx, *to, t, *arch, Arc::new(p))?;
                    }
                }
                Role::Teach(student) => {
                    self.train_with(ctx, t, &[])?;
                    let p = Arc::clone(&self.params);
                    self.send_model(ctx, student, t, self.arch(), p)?;
                }
                Role::Learn(teacher) => {
                    let Some(p) = self.inbox.remove(&(t, teacher)) else {
                        return Ok(());
                    };
                    let arch = s.archs[(teacher - 1) as usize];
                    self.train_with(ctx, t, &[(arch, p)])?;
                }
                Role::Global => {
                    let Some(p) = self.inbox.remove(&(t, HUB)) else {
                        return Ok(());
                    };
                    let trained = self.train_with(ctx, t, &[(s.global_model, p)])?;
                    let back = trained.into_iter().next().unwrap_or_default();
                    self.send_model(ctx, HUB, t, s.global_model, Arc::new(back))?;
                }
            }
            self.complete(ctx, t)?;
        }
        Ok(())
    }

    /// Peak snapshot and evaluation report after round `t`.
    fn complete(&mut self, ctx: &mut MutualCtx<'_>, t: u32) -> Result<(), EngineError> {
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
            ctx.send(
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

    fn on_start(&mut self, ctx: &mut MutualCtx<'_>) -> Result<(), EngineError> {
        self.advance(ctx)
    }

    fn on_message(
        &mut self,
        from: NodeId,
        msg: Msg,
        ctx: &mut MutualCtx<'_>,
    ) -> Result<(), EngineError> {
        let kind = msg.kind();
        let node = self.id();
        let reject = EngineError::rejecter(node, from, kind);
        let Msg::Model { round, arch, model } = msg else {
            return Err(reject("a mutual-learning client only takes models".into()));
        };
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

struct Report {
    arch: usize,
    accuracy: f64,
    loss: f64,
    peak: Option<f64>,
    train_loss: Option<f64>,
    bytes_sent: u64,
}

/// The hub: collects evaluation reports; in FML also the server of the global model.
pub struct MutualHub {
    settings: Arc<MutualSettings>,
    reports: BTreeMap<u32, BTreeMap<NodeId, Report>>,
    /// The evaluation points already reported.
    reported: u32,
    prev_bytes: (u32, u64),
    /// FML: the global model, the round in progress, and the clients asked in it with the
    /// models they have returned.
    global: Arc<Vec<f32>>,
    round: u32,
    returned: BTreeMap<NodeId, Option<Arc<Vec<f32>>>>,
    global_eval: BTreeMap<u32, f64>,
    bytes_sent: u64,
    /// FML: bytes the hub had sent once round `t`'s global model was out.
    sent_through: BTreeMap<u32, u64>,
    done: bool,
}

impl MutualHub {
    /// The hub; `global` is FML's initial global model (empty otherwise).
    pub fn new(settings: Arc<MutualSettings>, global: Vec<f32>) -> Self {
        Self {
            settings,
            reports: BTreeMap::new(),
            reported: 0,
            prev_bytes: (0, 0),
            global: Arc::new(global),
            round: 0,
            returned: BTreeMap::new(),
            global_eval: BTreeMap::new(),
            bytes_sent: 0,
            sent_through: BTreeMap::new(),
            done: false,
        }
    }

    fn fml(&self) -> bool {
        self.settings.variant == Variant::Fml
    }

    fn start_round(&mut self, ctx: &mut MutualCtx<'_>, round: u32) -> Result<(), EngineError> {
        let s = Arc::clone(&self.settings);
        self.round = round;
        self.returned = round_subset(s.seed, round, s.clients(), s.clients_per_round)
            .into_iter()
            .map(|k| (client_node(k), None))
            .collect();
        let asked: Vec<NodeId> = self.returned.keys().copied().collect();
        for to in asked {
            let message = self.settings.model_message(
                round,
                self.settings.global_model,
                Arc::clone(&self.global),
                HUB,
            )?;
            self.bytes_sent += ctx.send(to, message) as u64;
        }
        self.sent_through.insert(round, self.bytes_sent);
        Ok(())
    }

    /// Emits the metrics of every evaluation point whose reports are all in.
    fn flush(&mut self, ctx: &mut MutualCtx<'_>) {
        let s = Arc::clone(&self.settings);
        let n = s.clients();
        let points: Vec<u32> = (self.reported + 1..=s.rounds)
            .filter(|&r| s.evaluates_at(r))
            .collect();
        for r in points {
            let complete = self.reports.get(&r).is_some_and(|m| m.len() == n);
            let global_ready = !self.fml() || self.global_eval.contains_key(&r);
            if !(complete && global_ready) {
                return;
            }
            let reports = self.reports.remove(&r).unwrap_or_default();
            let mean = |v: &[f64]| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
            let acc: Vec<f64> = reports.values().map(|x| x.accuracy).collect();
            let peaks: Vec<f64> = reports.values().filter_map(|x| x.peak).collect();
            let losses: Vec<f64> = reports.values().filter_map(|x| x.train_loss).collect();
            let per = |peak: bool| -> Vec<Option<f64>> {
                (0..s.model_names.len())
                    .map(|a| {
                        let v: Vec<f64> = reports
                            .values()
                            .filter(|x| x.arch == a)
                            .filter_map(|x| if peak { x.peak } else { Some(x.accuracy) })
                            .collect();
                        mean(&v)
                    })
                    .collect()
            };
            let cum = reports
                .values()
                .fold(0u64, |a, x| a.saturating_add(x.bytes_sent))
                .saturating_add(self.sent_through.get(&r).copied().unwrap_or(0));
            let rounds = r - self.prev_bytes.0;
            let m = MutualMetrics {
                round: r,
                alpha: s.alpha.at(r),
                accuracy: mean(&acc).unwrap_or(0.0),
                loss: mean(&reports.values().map(|x| x.loss).collect::<Vec<_>>()).unwrap_or(0.0),
                min_accuracy: acc.iter().copied().fold(f64::INFINITY, f64::min),
                max_accuracy: acc.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                peak_accuracy: (peaks.len() == n).then(|| mean(&peaks)).flatten(),
                per_arch: per(false),
                per_arch_peak: per(true),
                global_model_accuracy: self.global_eval.get(&r).copied(),
                train_loss: mean(&losses),
                bytes_per_round: cum.saturating_sub(self.prev_bytes.1) as f64
                    / f64::from(rounds.max(1)),
                cum_bytes: cum,
            };
            self.prev_bytes = (r, cum);
            self.reported = r;
            ctx.emit(Event::Metrics(m));
            if r == s.rounds {
                self.done = true;
            }
        }
    }
}

impl Node for MutualHub {
    type Msg = Msg;
    type Metrics = MutualMetrics;
    type Trainer = dyn MutualLearner;

    fn id(&self) -> NodeId {
        HUB
    }

    fn on_start(&mut self, ctx: &mut MutualCtx<'_>) -> Result<(), EngineError> {
        if self.fml() {
            self.start_round(ctx, 1)?;
        }
        Ok(())
    }

    fn on_message(
        &mut self,
        from: NodeId,
        msg: Msg,
        ctx: &mut MutualCtx<'_>,
    ) -> Result<(), EngineError> {
        let kind = msg.kind();
        let reject = EngineError::rejecter(HUB, from, kind);
        let s = Arc::clone(&self.settings);
        if from == HUB || from as usize > s.clients() {
            return Err(reject("not a client of this run".into()));
        }
        let msg = match msg {
            Msg::Model { round, arch, model } => Msg::Model {
                round,
                arch,
                model: Tensor::Exact(s.unpack(arch, model).map_err(reject)?),
            },
            report => report,
        };
        match msg {
            Msg::Report {
                round,
                arch,
                accuracy,
                loss,
                peak_accuracy,
                peak_loss: _,
                train_loss,
                bytes_sent,
            } => {
                if round <= self.reported || round > s.rounds || !s.evaluates_at(round) {
                    return Err(reject(format!(
                        "round {round} is not an open evaluation point"
                    )));
                }
                let want = s.archs[(from - 1) as usize];
                if arch as usize != want {
                    return Err(reject(format!(
                        "architecture {arch}, the client has {want}"
                    )));
                }
                let unit = |v: f32| (0.0..=1.0).contains(&v);
                if !unit(accuracy) || !(peak_accuracy.is_nan() || unit(peak_accuracy)) {
                    return Err(reject("accuracy outside [0, 1]".into()));
                }
                if !loss.is_finite() {
                    return Err(reject("a loss that is not finite".into()));
                }
                let finite = |v: f32| v.is_finite().then_some(f64::from(v));
                let entry = self.reports.entry(round).or_default();
                if entry.contains_key(&from) {
                    return Err(reject(format!("a second report for round {round}")));
                }
                entry.insert(
                    from,
                    Report {
                        arch: want,
                        accuracy: f64::from(accuracy),
                        loss: f64::from(loss),
                        peak: finite(peak_accuracy),
                        train_loss: finite(train_loss),
                        bytes_sent,
                    },
                );
            }
            Msg::Model {
                round,
                arch,
                model: Tensor::Exact(params),
            } if self.fml() => {
                if round != self.round || !self.returned.contains_key(&from) {
                    return Err(reject(format!(
                        "not asked for round {round} (the round is {})",
                        self.round
                    )));
                }
                if arch as usize != s.global_model {
                    return Err(reject(format!(
                        "architecture {arch} is not the global model's"
                    )));
                }
                check_params(&params, s.model_params[s.global_model]).map_err(reject)?;
                let slot = self.returned.get_mut(&from);
                if slot.as_ref().is_some_and(|m| m.is_some()) {
                    return Err(reject(format!("a second model for round {round}")));
                }
                if let Some(slot) = slot {
                    *slot = Some(params);
                }
                if self.returned.values().all(Option::is_some) {
                    // Weighted by sample counts; equal weights if the clients hold no samples.
                    let total: usize = self
                        .returned
                        .keys()
                        .map(|f| s.counts[(*f - 1) as usize])
                        .sum();
                    let items: Vec<(&[f32], f64)> = self
                        .returned
                        .iter()
                        .filter_map(|(f, p)| {
                            let w = if total == 0 {
                                1.0
                            } else {
                                s.counts[(*f - 1) as usize] as f64
                            };
                            Some((p.as_ref()?.as_slice(), w))
                        })
                        .collect();
                    self.global = Arc::new(weighted_mean(&items)?);
                    if s.evaluates_at(round) {
                        let e = ctx.trainer.evaluate_arch(
                            s.global_model,
                            &self.global,
                            s.eval_samples_at(round),
                        )?;
                        self.global_eval.insert(round, e.accuracy);
                    }
                    if round < s.rounds {
                        self.start_round(ctx, round + 1)?;
                    }
                }
            }
            _ => {
                return Err(reject(
                    "the hub takes reports (and FML's global models)".into(),
                ))
            }
        }
        self.flush(ctx);
        Ok(())
    }

    fn finished(&self) -> bool {
        self.done
    }
}

/// `[mutual]`: mutual learning between clients with different models (DFML and its baselines).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MutualConfig {
    /// The models clients may have, e.g. `["cnn-small", "mlp", "cnn"]` (default: `[model.name]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<ModelName>,
    /// How clients get their model: `{ kind = "cycle" }` (client k gets models[k mod m]),
    /// `{ kind = "ratio", weights = [2, 1, 1] }` or `{ kind = "random" }` (seeded).
    #[serde(default = "default_assign")]
    pub assign: braid_core::mutual::Assign,
    /// DFML: senders per round; Def-KT: (teacher, student) pairs per round (default:
    /// a fifth of the clients, at least 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub senders: Option<usize>,
    /// The distillation weight over rounds: `{ shape = "cosine" | "triangular" | "constant",
    /// period = 10, min = 0.0, max = 0.8 }`; peak models are taken at rounds `period, 2 period, ...`.
    #[serde(default)]
    pub alpha: braid_core::mutual::AlphaCycle,
    /// Softmax temperature of the distillation term (default 1).
    #[serde(default = "default_temperature")]
    pub temperature: f64,
    /// Supervised loss: `ce` (cross-entropy, default) or `wsm` (re-weighted softmax, for non-IID data).
    #[serde(default)]
    pub supervised: braid_nn::SupervisedLoss,
    /// Test samples each client's model is evaluated on at an evaluation point (default 2000;
    /// the last round uses the whole test set).
    #[serde(default = "default_eval_samples")]
    pub eval_samples: usize,
    /// FML: the global model's architecture (default: the first of `models`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global_model: Option<ModelName>,
}

fn default_assign() -> braid_core::mutual::Assign {
    braid_core::mutual::Assign::Cycle
}
fn default_temperature() -> f64 {
    1.0
}

impl Default for MutualConfig {
    fn default() -> Self {
        Self {
            models: Vec::new(),
            assign: default_assign(),
            senders: None,
            alpha: braid_core::mutual::AlphaCycle::default(),
            temperature: default_temperature(),
            supervised: braid_nn::SupervisedLoss::default(),
            eval_samples: default_eval_samples(),
            global_model: None,
        }
    }
}

impl MutualConfig {
    /// The list of models: `models`, or `[model]` when empty.
    pub fn model_list(&self, model: ModelName) -> Vec<ModelName> {
        if self.models.is_empty() {
            vec![model]
        } else {
            self.models.clone()
        }
    }
}

fn default_eval_samples() -> usize {
    2000
}

/// The list of models of a mutual-learning config by name (`[mutual] models`, or `[model]`
/// alone), for reports.
pub fn model_names(c: &ExperimentConfig) -> Vec<String> {
    let m: MutualConfig = c.table("mutual").ok().flatten().unwrap_or_default();
    m.model_list(c.model.name)
        .iter()
        .map(|n| n.as_str().to_string())
        .collect()
}

/// The name a variant has in `algorithm.name`.
fn variant_name(v: Variant) -> &'static str {
    match v {
        Variant::Dfml => "dfml",
        Variant::Local => "local",
        Variant::Fml => "fml",
        Variant::DefKt => "def-kt",
    }
}

/// The settings of a mutual-learning run: the variant and `[mutual]`.
#[derive(Debug, Clone, PartialEq)]
pub struct MutualRun {
    /// Which algorithm of the family.
    pub variant: Variant,
    /// `[mutual]` as written (with defaults).
    pub mutual: MutualConfig,
    /// Rounds.
    pub rounds: u32,
}

/// Checks the settings of mutual-learning variant `v`.
fn mutual_run(c: &ExperimentConfig, v: Variant) -> Result<MutualRun, Invalid> {
    let name = variant_name(v);
    common::check_compression(c, common::CompressionUse::Models)?;
    let rounds = common::rounds(c, name)?;
    let m: MutualConfig = c.table("mutual")?.unwrap_or_default();
    common::no_server_fields(c, name)?;
    if c.train.local_steps.is_some() {
        return Err(Invalid::not_applicable(
            "train.local_steps",
            format!("train.local_steps does not apply to {name:?} (use train.local_epochs)"),
        ));
    }
    if c.partition.clients < 2 {
        return Err(Invalid::range(
            "partition.clients",
            format!("{name:?} needs partition.clients >= 2"),
        ));
    }
    m.alpha
        .validate()
        .map_err(|e| Invalid::within("mutual", e))?;
    if !(m.temperature.is_finite() && m.temperature > 0.0) {
        return Err(Invalid::range(
            "mutual.temperature",
            format!("mutual.temperature = {} must be > 0", m.temperature),
        ));
    }
    if m.eval_samples == 0 {
        return Err(Invalid::range(
            "mutual.eval_samples",
            "mutual.eval_samples must be at least 1",
        ));
    }
    let models = m.model_list(c.model.name);
    for (i, a) in models.iter().enumerate() {
        if models[..i].contains(a) {
            return Err(Invalid::range(
                "mutual.models",
                format!("mutual.models lists {:?} twice", a.as_str()),
            ));
        }
    }
    m.assign
        .assign(c.partition.clients, models.len(), c.seed)
        .map_err(|e| Invalid::within("mutual", e))?;
    if let Some(g) = m.global_model {
        if v != Variant::Fml {
            return Err(Invalid::not_applicable(
                "mutual.global_model",
                "mutual.global_model only applies to \"fml\"",
            ));
        }
        if !models.contains(&g) {
            return Err(Invalid::range(
                "mutual.global_model",
                format!(
                    "mutual.global_model = {:?} is not in mutual.models",
                    g.as_str()
                ),
            ));
        }
    }
    let n = c.partition.clients;
    match (v, m.senders) {
        (Variant::Dfml, Some(s)) if s == 0 || s >= n => {
            return Err(Invalid::range(
                "mutual.senders",
                format!(
                    "mutual.senders = {s} must be between 1 and partition.clients - 1 = {}",
                    n - 1
                ),
            ))
        }
        (Variant::DefKt, Some(s)) if s == 0 || 2 * s > n => {
            return Err(Invalid::range(
                "mutual.senders",
                format!(
            "mutual.senders = {s} (Def-KT pairs) must be between 1 and partition.clients / 2 = {}",
            n / 2
        ),
            ))
        }
        (Variant::Local | Variant::Fml, Some(_)) => {
            return Err(Invalid::not_applicable(
                "mutual.senders",
                format!(
                    "mutual.senders does not apply to {name:?} (use algorithm.clients_per_round)"
                ),
            ))
        }
        _ => {}
    }
    if matches!(v, Variant::Dfml | Variant::DefKt) && c.algorithm.clients_per_round.is_some() {
        return Err(Invalid::not_applicable("algorithm.clients_per_round", format!(
            "algorithm.clients_per_round does not apply to {name:?} (mutual.senders sets who takes part)"
        )));
    }
    common::check_mu(c, false)?;
    common::check_clients_per_round(c)?;
    Ok(MutualRun {
        variant: v,
        mutual: m,
        rounds,
    })
}

/// Binds the run's list of models to the data and assigns one to each client.
fn prepare_models(p: &mut Prepared, run: &MutualRun) -> Result<(), EngineError> {
    let c = &p.config;
    let m = &run.mutual;
    let (shape, classes) = (
        p.data.train.sample_shape().to_vec(),
        p.data.train.num_classes(),
    );
    p.models = m
        .model_list(c.model.name)
        .into_iter()
        .map(|name| braid_nn::Arch::new(name, &shape, classes))
        .collect::<Result<Vec<_>, _>>()?;
    p.client_models = m
        .assign
        .assign(p.parts.len(), p.models.len(), c.seed)
        .map_err(|e| Invalid::within("mutual", e))?;
    p.mutual_spec = Some((m.temperature, m.supervised));
    Ok(())
}

/// The settings shared by the nodes of a mutual-learning run.
pub fn mutual_settings(p: &Prepared, run: &MutualRun) -> Result<MutualSettings, EngineError> {
    let c = &p.config;
    let variant = run.variant;
    let m = &run.mutual;
    let n = p.parts.len();
    let names = m.model_list(c.model.name);
    let global_model = m
        .global_model
        .and_then(|g| names.iter().position(|&x| x == g))
        .unwrap_or(0);
    let senders = m.senders.unwrap_or(match variant {
        Variant::DefKt => (n / 5).clamp(1, (n / 2).max(1)),
        _ => (n / 5).clamp(1, n.saturating_sub(1).max(1)),
    });
    let settings = MutualSettings {
        variant,
        rounds: run.rounds,
        eval_every: c.algorithm.eval_every,
        eval_samples: m.eval_samples,
        model_names: names.iter().map(|n| n.as_str().to_string()).collect(),
        model_params: p.models.iter().map(braid_nn::Arch::num_params).collect(),
        archs: p.client_models.clone(),
        counts: p.parts.iter().map(Vec::len).collect(),
        senders,
        clients_per_round: c.clients_per_round(),
        alpha: m.alpha,
        batch_size: c.train.batch_size,
        local_epochs: c.train.local_epochs,
        global_model,
        lr_schedule: c.train.lr_schedule.clone(),
        seed: c.seed,
        model_compression: c.compression.and_then(|k| k.models),
    };
    settings.validate()?;
    Ok(settings)
}

fn build_mutual(
    p: &Prepared,
    run: &MutualRun,
) -> Result<Vec<BoxNode<Msg, MutualMetrics, dyn MutualLearner>>, EngineError> {
    let c = &p.config;
    let settings = Arc::new(mutual_settings(p, run)?);
    let global = if settings.variant == Variant::Fml {
        p.models[settings.global_model].init_params(c.seed)
    } else {
        Vec::new()
    };
    let mut nodes: Vec<BoxNode<Msg, MutualMetrics, dyn MutualLearner>> =
        vec![Box::new(MutualHub::new(Arc::clone(&settings), global))];
    for (k, part) in p.parts.iter().enumerate() {
        // Clients with the same model start from the same seeded init, as FedAvg's do.
        let init = p.models[p.client_models[k]].init_params(c.seed);
        nodes.push(Box::new(MutualClient::new(
            k,
            Arc::clone(&settings),
            Arc::new(part.clone()),
            init,
        )));
    }
    Ok(nodes)
}

fn describe(p: &Prepared) -> String {
    let counts: Vec<String> = p
        .models
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let n = p.client_models.iter().filter(|&&m| m == i).count();
            format!("{n} x {} ({} parameters)", a.name.as_str(), a.num_params())
        })
        .collect();
    format!("{} clients: {}", p.parts.len(), counts.join(", "))
}

fn summary(rows: &[(MutualMetrics, f64)]) -> Summary {
    let f = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.4}"));
    let last = rows.last().map(|(m, _)| m);
    Summary {
        accuracy: last.map(|m| m.peak_accuracy.unwrap_or(m.accuracy)),
        line: format!(
            "final global accuracy {} (peak models {}) after {} rounds | {:.1} MB of models sent",
            f(last.map(|m| m.accuracy)),
            f(last.and_then(|m| m.peak_accuracy)),
            last.map_or(0, |m| m.round),
            last.map_or(0.0, |m| m.cum_bytes as f64 / 1e6),
        ),
    }
}

macro_rules! mutual_algorithm {
    ($ty:ident, $name:literal, $variant:expr, $doc:literal) => {
        #[doc = $doc]
        pub struct $ty;

        impl Algorithm for $ty {
            const NAME: &'static str = $name;
            type Config = MutualRun;
            type Msg = Msg;
            type Metrics = MutualMetrics;
            type Trainer = dyn MutualLearner;
            const TABLES: &'static [&'static str] = &["mutual"];
            const FEATURES: &'static [Feature] = &[Feature::Compression];

            fn config(c: &ExperimentConfig) -> Result<MutualRun, Invalid> {
                mutual_run(c, $variant)
            }

            fn prepare(p: &mut Prepared, run: &MutualRun) -> Result<(), EngineError> {
                prepare_models(p, run)
            }

            fn build(
                p: &Prepared,
                run: &MutualRun,
            ) -> Result<Vec<BoxNode<Msg, MutualMetrics, dyn MutualLearner>>, EngineError> {
                build_mutual(p, run)
            }

            fn role(run: &MutualRun, node: usize, _nodes: usize) -> &'static str {
                match (run.variant, node) {
                    (Variant::Fml, 0) => "server",
                    (_, 0) => "monitor",
                    _ => "client",
                }
            }

            fn max_message_values(p: &Prepared, _run: &MutualRun) -> usize {
                let largest = p
                    .models
                    .iter()
                    .map(braid_nn::Arch::num_params)
                    .max()
                    .unwrap_or(0);
                p.arch.num_params().max(largest)
            }

            fn describe(p: &Prepared, _run: &MutualRun) -> String {
                describe(p)
            }

            fn progress(_c: &ExperimentConfig, run: &MutualRun) -> (&'static str, u64) {
                ("round", u64::from(run.rounds))
            }

            fn summary(_p: &Prepared, _run: &MutualRun, rows: &[(MutualMetrics, f64)]) -> Summary {
                summary(rows)
            }
        }
    };
}

mutual_algorithm!(
    Dfml,
    "dfml",
    Variant::Dfml,
    "DFML: serverless mutual learning between heterogeneous models."
);
mutual_algorithm!(
    Local,
    "local",
    Variant::Local,
    "Isolated local training of each client's own model (a baseline)."
);
mutual_algorithm!(
    Fml,
    "fml",
    Variant::Fml,
    "Federated mutual learning: a server-held global model distilled with each client's model."
);
mutual_algorithm!(
    DefKt,
    "def-kt",
    Variant::DefKt,
    "Def-KT: decentralized mutual knowledge transfer between pairs of clients."
);
