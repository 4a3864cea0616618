//! FedBuff (Nguyen et al., "Federated Learning with Buffered Asynchronous Aggregation",
//! AISTATS 2022): an asynchronous server that never waits for a round.
//!
//! The server keeps `concurrency` clients training at once. Each is sent the current model
//! (its version is the request's round minus one). Every update that comes back goes into a
//! buffer, weighted by the client's samples times a staleness factor `s(tau)`, where `tau` is
//! how many server updates happened since the client's model was sent; the client is replaced
//! at once by another idle client, drawn with the seed. When `buffer` updates are in, the
//! server takes one step: the weighted sum of the buffered updates over the buffered clients'
//! samples goes through the server optimizer, the model's version goes up, and the step is
//! reported as a round. Updates staler than `max_staleness` are dropped (counted as
//! stragglers). With a round deadline, a client that has not answered in time is given up on
//! and replaced.
//!
//! Clients are ordinary FedAvg clients ([`super::fedavg::FedAvgClient`]): they train from what
//! they are sent and reply with their parameters or a compressed update, so uplink and
//! downlink compression work as in FedAvg. The server keeps each model version that a client
//! is still training from, to turn parameters into updates.
//!
//! Which client replies first depends on the clients' speeds: in the simulator, on its
//! `[latency]` model (deterministic); across processes, on the real machines.

use std::collections::BTreeMap;
use std::sync::Arc;

use braid_core::compress::{self, Compression};
use braid_core::seed;
use braid_core::server_opt::ServerOptimizer;
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::common;
use super::fedavg::algorithm::build_family;
use super::fedavg::layers::compression::{answer, Answer, Update};
use super::fedavg::{
    model_request, restore_server, server_state, FedCtx, Msg, RoundMetrics, ServerConfig, SERVER,
};
use crate::algorithm::{Algorithm, Feature, Summary};
use crate::algorithms::fedavg::FedProtocol;
use crate::config::ExperimentConfig;
use crate::error::Invalid;
use crate::node::{check_params, BoxNode, EngineError, EngineResult, Event, Node, NodeState};
use crate::prepared::Prepared;
use crate::sim::Timing;
use crate::wire::{Message as _, NodeId, Tensor, HEADER};

/// How an update's weight falls with its staleness `tau`.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Staleness {
    /// Every update counts fully.
    Constant,
    /// `1 / sqrt(1 + tau)`, FedBuff's choice.
    #[default]
    Sqrt,
    /// `(1 + tau)^-a`.
    Poly {
        /// The exponent a (>= 0).
        a: f64,
    },
}

impl Staleness {
    /// The factor for staleness `tau`.
    pub fn factor(&self, tau: u32) -> f64 {
        let t = 1.0 + f64::from(tau);
        match self {
            Self::Constant => 1.0,
            Self::Sqrt => 1.0 / t.sqrt(),
            Self::Poly { a } => t.powf(-a),
        }
    }
}

/// Settings of the asynchronous server.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FedBuffSettings {
    /// Clients training at once.
    pub concurrency: usize,
    /// Updates per server step (K).
    pub buffer: usize,
    /// Weight of an update by its staleness.
    pub staleness: Staleness,
    /// Updates staler than this are dropped.
    pub max_staleness: Option<u32>,
}

/// One update waiting in the buffer.
struct Buffered {
    /// The update (trained parameters minus the model the client was sent).
    delta: Vec<f32>,
    samples: u64,
    steps: u32,
    train_loss: f32,
    staleness: u32,
}

/// The FedBuff server.
pub struct FedBuffServer {
    config: ServerConfig,
    settings: FedBuffSettings,
    clients: Vec<NodeId>,
    params: Vec<f32>,
    optimizer: ServerOptimizer,
    /// Server steps taken: the model's version.
    version: u32,
    /// Clients training now: the version each was sent and the request's deadline token.
    in_flight: BTreeMap<NodeId, (u32, u64)>,
    /// The last version each client was sent.
    last_sent: BTreeMap<NodeId, u32>,
    /// The models clients in flight train from, by version (as they decode them).
    models: BTreeMap<u32, Arc<Vec<f32>>>,
    buffer: Vec<Buffered>,
    /// Requests sent so far (seeds the choice of clients; deadline tokens).
    dispatched: u64,
    dropped: usize,
    bytes_up: u64,
    bytes_down: u64,
    downlink: Option<Compression>,
    done: bool,
}

impl FedBuffServer {
    /// A server for `clients` from `initial` parameters; `config.rounds` is the number of
    /// server steps.
    pub fn new(
        config: ServerConfig, settings: FedBuffSettings, clients: Vec<NodeId>, initial: Vec<f32>,
    ) -> EngineResult<Self> {
        if settings.concurrency == 0 || settings.concurrency > clients.len() {
            return Err(EngineError::Invalid(Invalid::range(
                "fedbuff.concurrency",
                format!(
                    "fedbuff.concurrency = {} must be between 1 and the {} clients",
                    settings.concurrency,
                    clients.len()
                ),
            )));
        }
        if settings.buffer == 0 {
            return Err(EngineError::Invalid(Invalid::range(
                "fedbuff.buffer",
                "fedbuff.buffer must be at least 1",
            )));
        }
        let optimizer = ServerOptimizer::new(config.server_optimizer.clone());
        Ok(Self {
            config,
            settings,
            clients,
            params: initial,
            optimizer,
            version: 0,
            in_flight: BTreeMap::new(),
            last_sent: BTreeMap::new(),
            models: BTreeMap::new(),
            buffer: Vec::new(),
            dispatched: 0,
            dropped: 0,
            bytes_up: 0,
            bytes_down: 0,
            downlink: None,
            done: false,
        })
    }

    /// Sends the model compressed with `c` (a quantizer) instead of as f32.
    pub fn with_downlink(mut self, c: Option<Compression>) -> Self {
        self.downlink = c;
        self
    }

    /// Sends the current model to an idle client, preferring clients that have not been sent
    /// this version; nothing if every client is busy.
    fn dispatch(&mut self, ctx: &mut FedCtx<'_>) -> EngineResult {
        let idle: Vec<NodeId> = self
            .clients
            .iter()
            .copied()
            .filter(|c| !self.in_flight.contains_key(c))
            .collect();
        let fresh: Vec<NodeId> = idle
            .iter()
            .copied()
            .filter(|c| self.last_sent.get(c) != Some(&self.version))
            .collect();
        let pool = if fresh.is_empty() { idle } else { fresh };
        if pool.is_empty() {
            return Ok(());
        }
        self.dispatched += 1;
        let mut rng = seed::rng(self.config.seed, &[seed::stream::SAMPLING, self.dispatched]);
        let client = pool[rng.random_range(0..pool.len())];
        let round = self.version + 1;
        let request = model_request(
            round,
            &self.params,
            self.downlink.as_ref(),
            self.config.seed,
        )?;
        if !self.models.contains_key(&self.version) {
            let model = match &request {
                Msg::Request {
                    model: Tensor::Packed(model),
                    ..
                } => Arc::new(
                    compress::decode(model, self.params.len())
                        .map_err(|e| EngineError::Failed(format!("downlink: {e}")))?,
                ),
                _ => Arc::new(self.params.clone()),
            };
            self.models.insert(self.version, model);
        }
        self.bytes_down += ctx.send(client, request) as u64;
        self.in_flight
            .insert(client, (self.version, self.dispatched));
        self.last_sent.insert(client, self.version);
        if let Some(d) = self.config.round_deadline {
            ctx.set_deadline(self.dispatched, d);
        }
        Ok(())
    }

    /// Forgets model versions no client in flight trains from.
    fn prune_models(&mut self) {
        let live: std::collections::BTreeSet<u32> =
            self.in_flight.values().map(|(v, _)| *v).collect();
        self.models.retain(|v, _| live.contains(v));
    }

    /// One server step from the buffer.
    fn step(&mut self, ctx: &mut FedCtx<'_>) -> EngineResult {
        let buffered = std::mem::take(&mut self.buffer);
        let samples: u64 = buffered.iter().map(|b| b.samples).sum();
        let total = samples.max(1) as f64;
        let mut sum = vec![0f64; self.params.len()];
        for b in &buffered {
            let w = b.samples as f64 * self.settings.staleness.factor(b.staleness) / total;
            for (s, d) in sum.iter_mut().zip(&b.delta) {
                *s += w * f64::from(*d);
            }
        }
        let mean: Vec<f32> = self
            .params
            .iter()
            .zip(&sum)
            .map(|(p, s)| p + *s as f32)
            .collect();
        self.optimizer.step(&mut self.params, &mean)?;
        self.version += 1;
        let last = self.version >= self.config.rounds;
        let (accuracy, loss) = if last || self.version.is_multiple_of(self.config.eval_every.max(1))
        {
            let e = ctx.trainer.evaluate(&self.params)?;
            (Some(e.accuracy), Some(e.loss))
        } else {
            (None, None)
        };
        let n = buffered.len().max(1) as f64;
        ctx.emit(Event::Metrics(RoundMetrics {
            round: self.version,
            accuracy,
            loss,
            train_loss: buffered
                .iter()
                .map(|b| f64::from(b.train_loss) * b.samples as f64)
                .sum::<f64>()
                / total,
            clients: buffered.len(),
            stragglers: std::mem::take(&mut self.dropped),
            samples,
            local_steps: buffered.iter().map(|b| u64::from(b.steps)).sum(),
            bytes_up: std::mem::take(&mut self.bytes_up),
            bytes_down: std::mem::take(&mut self.bytes_down),
            epsilon: None,
            sim_time_s: None,
            staleness: Some((
                buffered.iter().map(|b| f64::from(b.staleness)).sum::<f64>() / n,
                buffered.iter().map(|b| b.staleness).max().unwrap_or(0),
            )),
        }));
        if last {
            super::fedavg::end_run(ctx, &self.params, &self.clients, self.version);
            self.done = true;
        }
        Ok(())
    }
}

impl Node for FedBuffServer {
    type Protocol = FedProtocol;

    fn id(&self) -> NodeId {
        SERVER
    }

    fn finished(&self) -> bool {
        self.done
    }

    fn on_start(&mut self, ctx: &mut FedCtx<'_>) -> EngineResult {
        if self.version >= self.config.rounds {
            self.done = true;
            ctx.emit(Event::Finished {
                params: self.params.clone(),
            });
            return Ok(());
        }
        for _ in 0..self.settings.concurrency {
            self.dispatch(ctx)?;
        }
        Ok(())
    }

    fn on_message(&mut self, from: NodeId, msg: Msg, ctx: &mut FedCtx<'_>) -> EngineResult {
        let reject = EngineError::rejecter(SERVER, from, msg.kind());
        let bytes = (HEADER + msg.encoded_len()) as u64;
        if self.done {
            return Ok(()); // a client that was still training when the run ended
        }
        let Some(&(version, _)) = self.in_flight.get(&from) else {
            return Err(reject("this client is not training for the server".into()));
        };
        let model = self
            .models
            .get(&version)
            .cloned()
            .ok_or_else(|| reject("no model of the version this client was sent".into()))?;
        let Answer {
            round,
            num_samples: samples,
            steps,
            train_loss,
            update,
        } = answer(msg, self.params.len()).map_err(&reject)?;
        let delta = match update {
            Update::Trained(params) => {
                check_params(&params, self.params.len())
                    .map_err(|why| reject(format!("update: {why}")))?;
                braid_core::params::sub(&params, &model)?
            }
            Update::Delta(delta) => delta,
        };
        if round != version + 1 {
            return Err(reject(format!(
                "reply is for round {round}, the client was sent round {}",
                version + 1
            )));
        }
        if !train_loss.is_finite() {
            return Err(reject("the training loss is not finite".into()));
        }
        self.in_flight.remove(&from);
        self.bytes_up += bytes;
        let staleness = self.version - version;
        if self.settings.max_staleness.is_some_and(|m| staleness > m) {
            self.dropped += 1;
        } else {
            self.buffer.push(Buffered {
                delta,
                samples,
                steps,
                train_loss,
                staleness,
            });
            if self.buffer.len() >= self.settings.buffer {
                self.step(ctx)?;
            }
        }
        if !self.done {
            self.dispatch(ctx)?;
        }
        self.prune_models();
        Ok(())
    }

    fn on_deadline(&mut self, token: u64, ctx: &mut FedCtx<'_>) -> EngineResult {
        let late = self
            .in_flight
            .iter()
            .find(|(_, (_, t))| *t == token)
            .map(|(c, _)| *c);
        if let (Some(c), false) = (late, self.done) {
            self.in_flight.remove(&c);
            self.dropped += 1;
            self.dispatch(ctx)?;
            self.prune_models();
        }
        Ok(())
    }

    /// A restarted client's join request: after the run, it is told the run is over (it
    /// may have lost the shutdown); during it there is nothing to do, since a request it had
    /// not handled was not acknowledged and reaches it again.
    fn on_control(
        &mut self, from: NodeId, c: crate::wire::Control, ctx: &mut FedCtx<'_>,
    ) -> EngineResult {
        let clients = &self.clients;
        super::fedavg::join_request(ctx, from, c, clients, self.done, self.version).map(drop)
    }

    fn state_version(&self) -> u64 {
        1 + u64::from(self.version)
    }

    /// The model and the server optimizer, as of the last step (the buffer and the clients
    /// in flight are not kept: a resumed server sends the model afresh).
    fn save_state(&self) -> Option<NodeState> {
        Some(server_state(
            serde_json::json!({ "completed_rounds": self.version }),
            &self.params,
            &self.optimizer,
        ))
    }

    fn load_state(&mut self, state: NodeState) -> EngineResult {
        let (version, params) = restore_server(
            &state,
            self.config.rounds,
            self.params.len(),
            &mut self.optimizer,
        )?;
        self.params = params;
        self.version = version;
        Ok(())
    }
}

/// `[fedbuff]`: FedBuff's asynchronous server (algorithm `fedbuff`).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FedBuffConfig {
    /// Clients training at once (default: `algorithm.clients_per_round`, itself all clients
    /// by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<usize>,
    /// Updates per server step (default: half the concurrency, at least 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buffer: Option<usize>,
    /// `{ kind = "sqrt" }` (1 / sqrt(1 + tau), the default), `constant` or `poly` (a).
    #[serde(default)]
    pub staleness: Staleness,
    /// Updates from models more than this many server steps old are dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_staleness: Option<u32>,
}

impl FedBuffConfig {
    /// The concurrency for a run whose clients per round is `per_round`.
    pub fn concurrency_for(&self, per_round: usize) -> usize {
        self.concurrency.unwrap_or(per_round)
    }

    /// The buffer size for a run whose clients per round is `per_round`.
    pub fn buffer_for(&self, per_round: usize) -> usize {
        self.buffer
            .unwrap_or((self.concurrency_for(per_round) / 2).max(1))
    }
}

/// FedBuff as an [`Algorithm`]: FedAvg's clients and protocol, an asynchronous server.
pub struct FedBuff;

/// The settings of a FedBuff run.
#[derive(Debug, Clone, PartialEq)]
pub struct FedBuffRun {
    /// Server steps.
    pub rounds: u32,
    /// `[fedbuff]`, with its defaults resolved.
    pub settings: FedBuffSettings,
}

impl Algorithm for FedBuff {
    const NAME: &'static str = "fedbuff";
    type Config = FedBuffRun;
    type Protocol = FedProtocol;
    const TABLES: &'static [&'static str] = &["fedbuff"];
    const FEATURES: &'static [Feature] = &[Feature::Compression, Feature::Latency];

    fn config(c: &ExperimentConfig) -> Result<FedBuffRun, Invalid> {
        common::check_compression(c, common::CompressionUse::Server)?;
        let rounds = common::rounds(c, "fedbuff")?;
        common::check_mu(c, false)?;
        common::check_clients_per_round(c)?;
        let f: FedBuffConfig = c.table("fedbuff")?.unwrap_or_default();
        let per_round = c.clients_per_round();
        let concurrency = f.concurrency_for(per_round);
        if concurrency == 0 || concurrency > c.partition.clients {
            return Err(Invalid::range(
                "fedbuff.concurrency",
                format!(
                    "fedbuff.concurrency = {concurrency} must be between 1 and the {} clients",
                    c.partition.clients
                ),
            ));
        }
        // The server holds `buffer` model-sized updates before it steps.
        crate::config::check_in("fedbuff.buffer", f.buffer_for(per_round), 1, 10_000)?;
        if let Staleness::Poly { a } = f.staleness {
            crate::config::check_in("fedbuff.staleness.a", a, 0.0, 1e3)?;
        }
        if c.algorithm.min_replies.is_some() {
            return Err(Invalid::not_applicable("algorithm.min_replies", "algorithm.min_replies does not apply to \"fedbuff\" (the server steps on every fedbuff.buffer updates)"));
        }
        if c.compression.is_some_and(|k| k.downlink_delta) {
            return Err(Invalid::range(
                "compression.downlink_delta",
                "compression.downlink_delta needs synchronous rounds: not with \"fedbuff\"",
            ));
        }
        Ok(FedBuffRun {
            rounds,
            settings: FedBuffSettings {
                concurrency,
                buffer: f.buffer_for(per_round),
                staleness: f.staleness,
                max_staleness: f.max_staleness,
            },
        })
    }

    fn build(p: &Prepared, run: &FedBuffRun) -> EngineResult<Vec<BoxNode<FedProtocol>>> {
        let downlink = p.config.compression.and_then(|k| k.downlink);
        let settings = run.settings;
        build_family(p, |config, clients, initial| {
            Ok(Box::new(
                FedBuffServer::new(config, settings, clients, initial)?.with_downlink(downlink),
            ))
        })
    }

    const ARRIVAL_ORDER_MATTERS: bool = true;

    fn timing(p: &Prepared, _run: &FedBuffRun) -> Option<Timing> {
        super::fedavg::algorithm::timing(p)
    }

    fn describe(p: &Prepared, _run: &FedBuffRun) -> String {
        super::fedavg::algorithm::describe(p)
    }

    fn progress(_c: &ExperimentConfig, run: &FedBuffRun) -> (&'static str, u64) {
        ("round", u64::from(run.rounds))
    }

    fn summary(p: &Prepared, _run: &FedBuffRun, rows: &[(RoundMetrics, f64)]) -> Summary {
        super::fedavg::algorithm::summary(p, rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staleness_factors() {
        assert_eq!(Staleness::Constant.factor(9), 1.0);
        assert!((Staleness::Sqrt.factor(3) - 0.5).abs() < 1e-12);
        assert!((Staleness::Poly { a: 1.0 }.factor(4) - 0.2).abs() < 1e-12);
        assert_eq!(Staleness::Poly { a: 0.0 }.factor(4), 1.0);
    }
}
