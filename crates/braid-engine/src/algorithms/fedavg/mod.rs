//! Server-based federated averaging: one server, many clients, synchronous rounds.
//!
//! Round `r`: the server samples `clients_per_round` clients (seeded by round), sends them the
//! global parameters; each client trains locally on its shard and replies with its parameters
//! and sample count; when every sampled client has replied, the server averages the replies
//! weighted by samples (in client-id order, so the result does not depend on arrival order),
//! applies the server optimizer, evaluates, and reports the round.
//!
//! With a round deadline, a round also ends when the deadline passes and at least
//! `min_replies` clients have answered: the clients that have not are skipped (counted as
//! stragglers) and the average is weighted over those that replied. With fewer replies the
//! server asks the missing clients again and waits another deadline, so a client that was
//! restarted picks up the current round and the current global model.
//!
//! Compression, differential privacy, secure aggregation, robust rules and simulated attacks
//! are layers on this path ([`layers`]): the client applies its update layers to what it
//! trained, the server its layers to what it combines.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use braid_core::compress::{self, Compression};
use braid_core::lowrank::Block;
use braid_core::lr_schedule::LrSchedule;
use braid_core::params::weighted_mean;
use braid_core::seed;
use braid_core::server_opt::{ServerOptimizer, ServerOptimizerConfig};
use rand::seq::index::sample;

use crate::config::{CompressionConfig, PrivacyConfig};
use crate::error::Invalid;
use crate::node::{check_params, EngineError, Event, Metrics, Node, NodeCtx, NodeState};
use crate::wire::{Control, NodeId, Tensor};

pub mod algorithm;
pub mod layers;
mod msg;
mod report;
pub use algorithm::{Centralized, FedAvg, FedProx};
pub use layers::compression::model_request;
use layers::compression::Uplink;
use layers::privacy::{DpServer, LocalDp};
pub use layers::secure::{SecureSettings, MAX_RESTARTS};
use layers::{downlink, secure, Reply, ServerLayer, UpdateLayer};
pub use msg::Msg;
pub use report::MetricsRow;

/// What a node of the FedAvg family can do while handling an event.
pub type FedCtx<'a> = NodeCtx<'a, Msg, RoundMetrics, dyn FedTrainer>;

crate::trainer_bundle!(
    /// What FedAvg-family nodes ask of their trainer: clients train from the global model
    /// with a fresh optimizer, the server evaluates.
    pub FedTrainer: Train + Evaluate
);

/// Metrics of one completed round, as the server sees them (FedAvg, FedProx, FedBuff and the
/// centralized baseline).
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

impl Metrics for RoundMetrics {
    fn progress(&self) -> (u64, Option<f64>) {
        (u64::from(self.round), self.accuracy)
    }

    fn line(&self) -> String {
        format!(
            "round {:>4} | accuracy {} | clients {} (stragglers {})",
            self.round,
            self.accuracy.map_or("-".into(), |a| format!("{a:.4}")),
            self.clients,
            self.stragglers
        )
    }

    fn set_sim_time(&mut self, seconds: f64) {
        self.sim_time_s = Some(seconds);
    }
}

/// The server's id.
pub const SERVER: NodeId = 0;

/// Settings of the server.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// Number of rounds.
    pub rounds: u32,
    /// Clients sampled per round.
    pub clients_per_round: usize,
    /// Evaluate the global model every this many rounds (and always after the last).
    pub eval_every: u32,
    /// Server optimizer applied to the averaged update.
    pub server_optimizer: ServerOptimizerConfig,
    /// Experiment seed (client sampling).
    pub seed: u64,
    /// Give up waiting for the clients of a round after this long (None: wait for all).
    pub round_deadline: Option<Duration>,
    /// Replies needed to close a round at its deadline (at least 1).
    pub min_replies: usize,
    /// How the round's updates are combined.
    pub aggregator: braid_core::robust::Aggregator,
}

/// What a round's aggregation reports besides the average.
struct Aggregated {
    clients: usize,
    stragglers: usize,
    samples: u64,
    local_steps: u64,
    train_loss: f64,
}

/// The FedAvg server.
pub struct FedAvgServer {
    config: ServerConfig,
    clients: Vec<NodeId>,
    params: Vec<f32>,
    optimizer: ServerOptimizer,
    round: u32,
    waiting: BTreeMap<NodeId, Option<Reply>>,
    bytes_down: u64,
    bytes_up: u64,
    done: bool,
    /// Rounds completed (the state a checkpoint holds is as of the end of this round).
    completed: u32,
    /// Compression of the model sent to clients.
    downlink: Option<Compression>,
    /// With `downlink_delta`: the clients' copy of the model, which the server sends changes to.
    copy: Option<downlink::ServerCopy>,
    /// The feature layers on the aggregation path (privacy, robust rules), in order.
    layers: Vec<Box<dyn ServerLayer>>,
    /// Secure aggregation: the settings, and the current round's state.
    secure: Option<SecureSettings>,
    sec: Option<secure::SecRound>,
}

impl FedAvgServer {
    /// A server for `clients`, starting from `initial` parameters.
    pub fn new(
        config: ServerConfig,
        clients: Vec<NodeId>,
        initial: Vec<f32>,
    ) -> Result<Self, EngineError> {
        if clients.is_empty() {
            return Err(
                Invalid::range("partition.clients", "FedAvg needs at least one client").into(),
            );
        }
        if config.clients_per_round == 0 || config.clients_per_round > clients.len() {
            return Err(EngineError::Invalid(Invalid::range(
                "algorithm.clients_per_round",
                format!(
                    "algorithm.clients_per_round = {} must be between 1 and the {} clients",
                    config.clients_per_round,
                    clients.len()
                ),
            )));
        }
        if config.min_replies > config.clients_per_round {
            return Err(EngineError::Invalid(Invalid::range(
                "algorithm.min_replies",
                format!(
                    "algorithm.min_replies = {} is more than the {} clients asked per round",
                    config.min_replies, config.clients_per_round
                ),
            )));
        }
        let optimizer = ServerOptimizer::new(config.server_optimizer.clone());
        let layers: Vec<Box<dyn ServerLayer>> = layers::robust::Robust::of(config.aggregator)
            .into_iter()
            .map(|r| Box::new(r) as Box<dyn ServerLayer>)
            .collect();
        Ok(Self {
            config,
            clients,
            params: initial,
            optimizer,
            round: 0,
            waiting: BTreeMap::new(),
            bytes_down: 0,
            bytes_up: 0,
            done: false,
            completed: 0,
            downlink: None,
            copy: None,
            layers,
            secure: None,
            sec: None,
        })
    }

    /// Runs DP-FedAvg with `config`, for `total_clients` clients in all (the sampling rate is
    /// `clients_per_round / total_clients`); under DP-SGD, accounts each client's steps at
    /// sampling rate `batch_size` over its sample count.
    pub fn with_privacy(
        mut self,
        config: Option<PrivacyConfig>,
        total_clients: usize,
        batch_size: usize,
    ) -> Self {
        if let Some(config) = config {
            let dp = DpServer::new(
                config,
                self.config.clients_per_round,
                total_clients,
                batch_size,
                self.config.seed,
            );
            // Privacy combines first: a robust rule is refused with it, except DP-SGD's.
            self.layers.insert(0, Box::new(dp));
        }
        self
    }

    /// Sends the global model compressed with `c` (a quantizer) instead of as f32.
    pub fn with_downlink(mut self, c: Option<Compression>) -> Self {
        self.downlink = c;
        self
    }

    /// Sends each round the change to a copy of the model that the clients keep, compressed
    /// with `c`, instead of the model; the copy starts as this server's initial parameters,
    /// which every client must start from too ([`FedAvgClient::with_model_copy`]).
    pub fn with_downlink_delta(mut self, c: Option<Compression>) -> Self {
        self.copy = c.map(|c| downlink::ServerCopy::new(c, &self.params));
        self
    }

    /// The current global parameters.
    pub fn params(&self) -> &[f32] {
        &self.params
    }

    fn start_round(&mut self, ctx: &mut FedCtx<'_>) -> Result<(), EngineError> {
        self.round += 1;
        let mut rng = seed::rng(
            self.config.seed,
            &[seed::stream::SAMPLING, u64::from(self.round)],
        );
        let mut chosen: Vec<NodeId> = if self.config.clients_per_round == self.clients.len() {
            self.clients.clone()
        } else {
            sample(&mut rng, self.clients.len(), self.config.clients_per_round)
                .into_iter()
                .map(|i| self.clients[i])
                .collect()
        };
        chosen.sort_unstable();
        if let Some(copy) = self.copy.as_mut() {
            copy.advance(self.round, &self.params, self.config.seed)?;
        }
        if let Some(settings) = self.secure {
            self.sec = Some(secure::SecRound::new(
                self.round,
                settings,
                self.params.len(),
                chosen.clone(),
                0,
            )?);
        }
        self.waiting = chosen.into_iter().map(|c| (c, None)).collect();
        self.bytes_down = 0;
        self.bytes_up = 0;
        self.ask_missing(ctx)
    }

    /// Sends the round's request to every chosen client that has not replied yet, and arms
    /// the round's deadline.
    fn ask_missing(&mut self, ctx: &mut FedCtx<'_>) -> Result<(), EngineError> {
        let missing: Vec<NodeId> = match &self.sec {
            Some(sr) => sr.missing(),
            None => self
                .waiting
                .iter()
                .filter(|(_, r)| r.is_none())
                .map(|(&c, _)| c)
                .collect(),
        };
        if let Some(copy) = &self.copy {
            for c in missing {
                self.bytes_down += ctx.send(c, copy.request_for(c)) as u64;
            }
            if let Some(d) = self.config.round_deadline {
                ctx.set_deadline(u64::from(self.round), d);
            }
            return Ok(());
        }
        let request = model_request(
            self.round,
            &self.params,
            self.downlink.as_ref(),
            self.config.seed,
        )?;
        for c in missing {
            self.bytes_down += ctx.send(c, request.clone()) as u64;
        }
        if let Some(d) = self.config.round_deadline {
            ctx.set_deadline(u64::from(self.round), d);
        }
        Ok(())
    }

    /// Ends the run: reports the final model and tells every client.
    fn finish(&mut self, ctx: &mut FedCtx<'_>) {
        ctx.emit(Event::Finished {
            params: self.params.clone(),
        });
        for &c in &self.clients {
            ctx.send_control(
                c,
                Control::Shutdown {
                    round: self.completed,
                },
            );
        }
        self.done = true;
    }

    fn finish_round(&mut self, ctx: &mut FedCtx<'_>) -> Result<(), EngineError> {
        let asked = self.waiting.len();
        let (ids, replies): (Vec<NodeId>, Vec<Reply>) = std::mem::take(&mut self.waiting)
            .into_iter()
            .filter_map(|(id, r)| Some((id, r?)))
            .unzip();
        let stragglers = asked - replies.len();
        self.completed = self.round;
        let with_ids: Vec<(NodeId, &Reply)> = ids.into_iter().zip(&replies).collect();
        let (round, global) = (self.round, &self.params);
        let combined = self
            .layers
            .iter_mut()
            .find_map(|l| l.combine(round, global, &with_ids));
        let mean = match combined {
            Some(mean) => mean?,
            None => {
                let items: Vec<(&[f32], f64)> = replies
                    .iter()
                    .map(|r| (r.params.as_slice(), r.num_samples as f64))
                    .collect();
                weighted_mean(&items)?
            }
        };
        let samples: u64 = replies.iter().map(|r| r.num_samples).sum();
        let local_steps: u64 = replies.iter().map(|r| u64::from(r.steps)).sum();
        let train_loss = replies
            .iter()
            .map(|r| f64::from(r.train_loss) * r.num_samples as f64)
            .sum::<f64>()
            / samples.max(1) as f64;
        self.close_round(
            ctx,
            mean,
            Aggregated {
                clients: replies.len(),
                stragglers,
                samples,
                local_steps,
                train_loss,
            },
        )
    }

    /// Applies the server optimizer to the round's average `mean` (parameters), evaluates,
    /// reports the round and starts the next one or ends the run.
    fn close_round(
        &mut self,
        ctx: &mut FedCtx<'_>,
        mean: Vec<f32>,
        agg: Aggregated,
    ) -> Result<(), EngineError> {
        self.completed = self.round;
        self.optimizer.step(&mut self.params, &mean)?;
        let Aggregated {
            clients,
            stragglers,
            samples,
            local_steps,
            train_loss,
        } = agg;
        let (mut epsilon, mut over_budget) = (None, false);
        for layer in &mut self.layers {
            let note = layer.after_round(self.round, self.config.rounds)?;
            epsilon = epsilon.or(note.epsilon);
            over_budget |= note.stop;
        }
        let last = self.round == self.config.rounds || over_budget;
        let (accuracy, loss) = if last || self.round.is_multiple_of(self.config.eval_every.max(1)) {
            let e = ctx.trainer.evaluate(&self.params)?;
            (Some(e.accuracy), Some(e.loss))
        } else {
            (None, None)
        };
        ctx.emit(Event::Metrics(RoundMetrics {
            round: self.round,
            accuracy,
            loss,
            train_loss,
            clients,
            stragglers,
            samples,
            local_steps,
            bytes_up: self.bytes_up,
            bytes_down: self.bytes_down,
            epsilon,
            sim_time_s: None,
            staleness: None,
        }));
        if last {
            self.finish(ctx);
        } else {
            self.start_round(ctx)?;
        }
        Ok(())
    }
}

impl Node for FedAvgServer {
    type Msg = Msg;
    type Metrics = RoundMetrics;
    type Trainer = dyn FedTrainer;

    fn id(&self) -> NodeId {
        SERVER
    }

    fn on_start(&mut self, ctx: &mut FedCtx<'_>) -> Result<(), EngineError> {
        for layer in &self.layers {
            layer.before_start(self.completed)?;
        }
        // A fresh server starts at round 0; a resumed one after its last completed round.
        self.round = self.completed;
        if self.completed >= self.config.rounds {
            self.finish(ctx);
            return Ok(());
        }
        self.start_round(ctx)
    }

    fn state_version(&self) -> u64 {
        1 + u64::from(self.completed)
    }

    fn save_state(&self) -> Option<NodeState> {
        let mut meta = serde_json::json!({ "completed_rounds": self.completed });
        for (key, value) in self.layers.iter().filter_map(|l| l.save()) {
            meta[key] = value;
        }
        let mut state = server_state(meta, &self.params, &self.optimizer);
        if let Some(copy) = &self.copy {
            copy.save(&mut state);
        }
        Some(state)
    }

    fn load_state(&mut self, state: NodeState) -> Result<(), EngineError> {
        let (completed, params) = restore_server(
            &state,
            self.config.rounds,
            self.params.len(),
            &mut self.optimizer,
        )?;
        for layer in &mut self.layers {
            layer.load(&state.meta)?;
        }
        if let Some(copy) = self.copy.as_mut() {
            copy.load(&state)?;
        }
        self.params = params;
        self.completed = completed;
        Ok(())
    }

    fn on_message(
        &mut self,
        from: NodeId,
        msg: Msg,
        ctx: &mut FedCtx<'_>,
    ) -> Result<(), EngineError> {
        use crate::wire::Message as _;
        let kind = msg.kind();
        let reject = EngineError::rejecter(SERVER, from, kind);
        let bytes = (crate::wire::HEADER + msg.encoded_len()) as u64;
        if let Msg::SecAgg { round, body } = &msg {
            return self.on_secagg(from, *round, body, bytes, ctx);
        }
        if self.secure.is_some() {
            return Err(reject(
                "secure aggregation is on: updates come only as secagg messages".into(),
            ));
        }
        let (round, num_samples, steps, train_loss, params) = match msg {
            Msg::Reply {
                round,
                num_samples,
                steps,
                train_loss,
                update: Tensor::Exact(params),
            } => {
                let params = Arc::try_unwrap(params).unwrap_or_else(|p| (*p).clone());
                match &self.copy {
                    // Trained from the clients' copy: the update applies to the exact model.
                    Some(copy) if params.len() == self.params.len() => {
                        let params = params
                            .iter()
                            .zip(copy.copy())
                            .zip(&self.params)
                            .map(|((t, c), p)| p + (t - c))
                            .collect();
                        (round, num_samples, steps, train_loss, params)
                    }
                    _ => (round, num_samples, steps, train_loss, params),
                }
            }
            Msg::Reply {
                round,
                num_samples,
                steps,
                train_loss,
                update: Tensor::Packed(update),
            } => {
                // The update applies to the exact global model (clients may have trained
                // from a compressed copy of it).
                let delta = compress::decode(&update, self.params.len())
                    .map_err(|e| reject(format!("update: {e}")))?;
                let params = self.params.iter().zip(&delta).map(|(p, d)| p + d).collect();
                (round, num_samples, steps, train_loss, params)
            }
            _ => return Err(reject("the server only accepts train replies".into())),
        };
        if round != self.round {
            return Err(reject(format!(
                "reply is for round {round}, the current round is {}",
                self.round
            )));
        }
        let slot = self
            .waiting
            .get_mut(&from)
            .ok_or_else(|| reject("this client was not asked to train this round".into()))?;
        if slot.is_some() {
            return Err(reject("duplicate reply".into()));
        }
        check_params(&params, self.params.len()).map_err(|why| reject(format!("update: {why}")))?;
        if let Some(copy) = self.copy.as_mut() {
            copy.answered(from);
        }
        for layer in &mut self.layers {
            layer.accepted(from, num_samples, steps)?;
        }
        *slot = Some(Reply {
            num_samples,
            steps,
            train_loss,
            params,
        });
        self.bytes_up += bytes;
        if self.waiting.values().all(Option::is_some) {
            self.finish_round(ctx)?;
        }
        Ok(())
    }

    fn finished(&self) -> bool {
        self.done
    }

    fn on_deadline(&mut self, token: u64, ctx: &mut FedCtx<'_>) -> Result<(), EngineError> {
        if self.secure.is_some() {
            return self.secure_deadline(token, ctx);
        }
        if token != u64::from(self.round) || self.waiting.is_empty() {
            return Ok(()); // a round that already completed
        }
        let replied = self.waiting.values().filter(|r| r.is_some()).count();
        if replied >= self.config.min_replies.max(1) {
            self.finish_round(ctx)
        } else {
            self.ask_missing(ctx)
        }
    }
}

/// A server's checkpoint: `meta` (with `completed_rounds`), the global model and the server
/// optimizer's buffers.
pub(crate) fn server_state(
    meta: serde_json::Value,
    params: &[f32],
    optimizer: &ServerOptimizer,
) -> NodeState {
    let (m, v) = optimizer.buffers();
    NodeState {
        meta,
        tensors: vec![
            ("params".into(), params.to_vec()),
            ("server_optimizer.m".into(), m.to_vec()),
            ("server_optimizer.v".into(), v.to_vec()),
        ],
        blobs: Vec::new(),
    }
}

/// Reads back what [`server_state`] wrote for a run of `rounds` rounds and a model of `len`
/// values: restores `optimizer` and returns the completed rounds and the global model.
pub(crate) fn restore_server(
    state: &NodeState,
    rounds: u32,
    len: usize,
    optimizer: &mut ServerOptimizer,
) -> Result<(u32, Vec<f32>), EngineError> {
    let completed = u32::try_from(state.meta_u64("completed_rounds")?)
        .map_err(|_| EngineError::Checkpoint("checkpoint: completed_rounds is too large".into()))?;
    if completed > rounds {
        return Err(EngineError::Checkpoint(format!(
            "checkpoint has {completed} completed rounds, the run has {rounds}"
        )));
    }
    let params = state.tensor("params")?;
    check_params(params, len)
        .map_err(|why| EngineError::Checkpoint(format!("checkpoint params: {why}")))?;
    optimizer.restore(
        state.tensor("server_optimizer.m")?.to_vec(),
        state.tensor("server_optimizer.v")?.to_vec(),
        len,
    )?;
    Ok((completed, params.to_vec()))
}

/// Applies `f` to the update `trained - received` and writes `received + update` back into
/// `trained`.
fn rewrite_update(
    trained: &mut Vec<f32>,
    received: &[f32],
    f: impl FnOnce(&mut [f32]),
) -> Result<(), EngineError> {
    let mut delta = braid_core::params::sub(trained, received)?;
    f(&mut delta);
    *trained = received.iter().zip(&delta).map(|(p, d)| p + d).collect();
    Ok(())
}

/// A FedAvg client: holds its shard of the training set, trains when asked.
pub struct FedAvgClient {
    id: NodeId,
    shard: Arc<Vec<usize>>,
    seed: u64,
    lr_schedule: LrSchedule,
    rounds: u32,
    done: bool,
    /// The model's size (to decode compressed requests).
    num_params: usize,
    /// Compression of this client's updates (`compression.uplink`).
    uplink: Option<Uplink>,
    /// The model's matrix-shaped tensors (for a power-sgd uplink).
    blocks: Vec<Block>,
    /// Update layers, applied in this order: a simulated attacker, then local DP.
    attack: Option<layers::attack::Attacker>,
    local_dp: Option<LocalDp>,
    /// Secure aggregation: the settings, and the current round's state.
    secure: Option<SecureSettings>,
    sec: Option<secure::ClientSec>,
    /// With `downlink_delta`: this client's copy of the model.
    copy: Option<downlink::ClientCopy>,
}

impl FedAvgClient {
    /// Client `id` holding training samples `shard`, training at the configured learning rate.
    pub fn new(id: NodeId, shard: Arc<Vec<usize>>, seed: u64) -> Self {
        Self {
            id,
            shard,
            seed,
            lr_schedule: LrSchedule::Constant,
            rounds: 1,
            done: false,
            num_params: 0,
            uplink: None,
            blocks: Vec::new(),
            attack: None,
            local_dp: None,
            secure: None,
            sec: None,
            copy: None,
        }
    }

    /// Keeps a copy of the model, starting from `initial` (the server's initial model), to
    /// which the server sends changes (`compression.downlink_delta`).
    pub fn with_model_copy(mut self, initial: Option<Vec<f32>>) -> Self {
        self.copy = initial.map(downlink::ClientCopy::new);
        self
    }

    /// Makes this client an attacker that applies `attack` to every update it sends.
    pub fn with_attack(mut self, attack: Option<braid_core::robust::Attack>) -> Self {
        self.attack = attack.map(layers::attack::Attacker);
        self
    }

    /// With local DP (`[privacy] mode = "local"`), clips its update to `clip` and adds
    /// Gaussian noise of standard deviation `noise_multiplier * clip` before sending.
    pub fn with_privacy(mut self, config: Option<PrivacyConfig>) -> Self {
        self.local_dp = LocalDp::of(config);
        self
    }

    /// Accepts compressed requests for a model of `num_params` values, and compresses its
    /// updates as `compression` says.
    pub fn with_compression(mut self, compression: &CompressionConfig, num_params: usize) -> Self {
        self.num_params = num_params;
        self.uplink = Uplink::of(compression, self.blocks.clone());
        self
    }

    /// The model's matrix-shaped tensors, which a `power-sgd` uplink compresses.
    pub fn with_matrix_blocks(mut self, blocks: Vec<Block>) -> Self {
        if let Some(uplink) = self.uplink.as_mut() {
            uplink.set_blocks(blocks.clone());
        }
        self.blocks = blocks;
        self
    }

    /// The update layers this client applies, in order.
    fn update_layers(&self) -> impl Iterator<Item = &dyn UpdateLayer> {
        let attack = self.attack.as_ref().map(|a| a as &dyn UpdateLayer);
        let dp = self.local_dp.as_ref().map(|d| d as &dyn UpdateLayer);
        attack.into_iter().chain(dp)
    }

    /// Scales the learning rate of round `r` by `schedule` at progress `(r - 1) / rounds`.
    pub fn with_lr_schedule(mut self, schedule: LrSchedule, rounds: u32) -> Self {
        self.lr_schedule = schedule;
        self.rounds = rounds.max(1);
        self
    }
}

impl Node for FedAvgClient {
    type Msg = Msg;
    type Metrics = RoundMetrics;
    type Trainer = dyn FedTrainer;

    fn id(&self) -> NodeId {
        self.id
    }

    fn listens_to(&self) -> Option<Vec<NodeId>> {
        Some(vec![SERVER])
    }

    fn finished(&self) -> bool {
        self.done
    }

    fn on_start(&mut self, _ctx: &mut FedCtx<'_>) -> Result<(), EngineError> {
        Ok(())
    }

    fn on_control(
        &mut self,
        from: NodeId,
        c: Control,
        _ctx: &mut FedCtx<'_>,
    ) -> Result<(), EngineError> {
        match c {
            Control::Shutdown { .. } if from == SERVER => {
                self.done = true;
                Ok(())
            }
            c => Err(EngineError::Rejected {
                node: self.id,
                from,
                kind: c.kind(),
                why: "a client only takes a shutdown from the server".into(),
            }),
        }
    }

    fn on_message(
        &mut self,
        from: NodeId,
        msg: Msg,
        ctx: &mut FedCtx<'_>,
    ) -> Result<(), EngineError> {
        use crate::wire::Message as _;
        let kind = msg.kind();
        if from != SERVER {
            return Err(EngineError::Rejected {
                node: self.id,
                from,
                kind,
                why: "a client only listens to the server".into(),
            });
        }
        let reject = EngineError::rejecter(self.id, from, kind);
        let (round, params) = match msg {
            Msg::Request {
                round,
                model: Tensor::Exact(params),
            } => {
                if let Some(copy) = self.copy.as_mut() {
                    copy.replace(round, &params)
                        .map_err(|e| reject(format!("model: {e}")))?;
                }
                (round, params)
            }
            Msg::DeltaRequest { round, base, delta } => {
                let copy = self
                    .copy
                    .as_mut()
                    .ok_or_else(|| reject("this client keeps no copy of the model".into()))?;
                let delta = delta
                    .packed_bytes()
                    .map_err(|e| reject(format!("model change: {e}")))?;
                let params = copy
                    .apply(round, base, delta)
                    .map_err(|e| reject(format!("model change: {e}")))?;
                (round, Arc::new(params.to_vec()))
            }
            Msg::Request {
                round,
                model: Tensor::Packed(model),
            } => {
                let params = compress::decode(&model, self.num_params)
                    .map_err(|e| reject(format!("model: {e}")))?;
                (round, Arc::new(params))
            }
            Msg::SecAgg { round, body } => return self.on_secagg(round, &body, ctx),
            Msg::Reply { .. } => {
                return Err(EngineError::Rejected {
                    node: self.id,
                    from,
                    kind,
                    why: "a client only accepts train requests".into(),
                })
            }
        };
        let s = seed::derive(
            self.seed,
            &[
                seed::stream::LOCAL_TRAIN,
                u64::from(round),
                u64::from(self.id),
            ],
        );
        let progress = f64::from(round.saturating_sub(1)) / f64::from(self.rounds);
        let lr_scale = self.lr_schedule.factor(progress);
        let mut out = if self.update_layers().any(|l| l.flips_labels()) {
            ctx.trainer
                .label_flipper()
                .ok_or_else(|| {
                    EngineError::Unsupported(
                        "this trainer cannot train on flipped labels (attack kind \"label-flip\")"
                            .into(),
                    )
                })?
                .train_label_flipped(&params, &self.shard, s, lr_scale)?
        } else {
            ctx.trainer.train(&params, &self.shard, s, lr_scale)?
        };
        // The update layers rewrite the update before it is sent.
        for layer in self.update_layers() {
            rewrite_update(&mut out.params, &params, |d| {
                layer.rewrite(d, self.seed, self.id, round);
            })?;
        }
        if self.secure.is_some() {
            let update = braid_core::params::sub(&out.params, &params)?;
            return self.secure_start(
                round,
                &update,
                self.shard.len() as u64,
                out.steps as u32,
                out.mean_loss as f32,
                ctx,
            );
        }
        let reply = match &mut self.uplink {
            None => Msg::Reply {
                round,
                num_samples: self.shard.len() as u64,
                steps: out.steps as u32,
                train_loss: out.mean_loss as f32,
                update: Tensor::exact(out.params),
            },
            Some(uplink) => {
                let delta: Vec<f32> = out
                    .params
                    .iter()
                    .zip(params.iter())
                    .map(|(a, b)| a - b)
                    .collect();
                let update = uplink.encode(&delta, self.seed, self.id, round)?;
                Msg::Reply {
                    round,
                    num_samples: self.shard.len() as u64,
                    steps: out.steps as u32,
                    train_loss: out.mean_loss as f32,
                    update: Tensor::packed(update),
                }
            }
        };
        ctx.send(SERVER, reply);
        Ok(())
    }
}
