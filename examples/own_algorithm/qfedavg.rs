//! q-weighted FedAvg, an algorithm written outside braid's crates: this one file plus one
//! registry line (`registry.add::<QFedAvg>()` in `main.rs`).
//!
//! Each round the server sends the global model to every client; each client trains on its
//! own data and replies with its parameters and its mean training loss `L_k`; the server
//! averages the parameters with weights `n_k * L_k^q` (`n_k`: the client's samples) and
//! applies `algorithm.server_optimizer` to that mean, as FedAvg does. Clients
//! that fit the model badly pull it harder as `q` grows, the idea of q-FFL (Li et al., "Fair
//! Resource Allocation in Federated Learning", ICLR 2020), here in its simplest form: the loss
//! is the client's own training loss of the round, not the loss of the received model. At
//! `q = 0` it is FedAvg with every client in every round (the example's tests check that it
//! reproduces braid's `fedavg` to the bit).
//!
//! What it owns: its settings (the `[qfedavg]` table), its protocol (`qfedavg`, tag 16,
//! two message kinds), its two node roles, and its checks. It reuses FedAvg's metrics row, so
//! braid's reports (metrics.csv, plots, traffic and accounting) and `--baseline` work as for
//! FedAvg.

use std::collections::BTreeMap;
use std::sync::Arc;

use braid::braid_core::params::weighted_mean;
use braid::braid_core::server_opt::ServerOptimizer;
use braid::braid_engine::algorithms::{common, fedavg};
use braid::prelude::*;

/// `[qfedavg]`: the table this algorithm owns.
#[derive(Debug, Clone, Copy, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Table {
    /// How much a high training loss raises a client's weight (0: FedAvg's sample weights).
    q: f64,
}

/// The settings of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Rounds.
    pub rounds: u32,
    /// The fairness exponent.
    pub q: f64,
}

/// q-weighted FedAvg.
pub struct QFedAvg;

/// What its nodes exchange (its own messages), report (FedAvg's rows) and are lent.
pub type QProtocol = Family<QMsg, fedavg::RoundMetrics, dyn fedavg::FedTrainer>;

impl Algorithm for QFedAvg {
    const NAME: &'static str = "qfedavg";
    type Config = Settings;
    type Protocol = QProtocol;
    const TABLES: &'static [&'static str] = &["qfedavg"];

    fn config(c: &ExperimentConfig) -> Result<Settings, Invalid> {
        let rounds = common::rounds(c, Self::NAME)?;
        common::check_mu(c, false)?;
        if c.algorithm.round_timeout_s.is_some() || c.algorithm.min_replies.is_some() {
            return Err(Invalid::not_applicable("algorithm.round_timeout_s", "algorithm.round_timeout_s and min_replies do not apply to \"qfedavg\" (it waits for every client)"));
        }
        if c.algorithm.clients_per_round.is_some() {
            return Err(Invalid::not_applicable("algorithm.clients_per_round", "algorithm.clients_per_round does not apply to \"qfedavg\" (every client trains every round)"));
        }
        let table: Table = c.table("qfedavg")?.ok_or_else(|| {
            Invalid::missing(
                "qfedavg",
                "algorithm.name = \"qfedavg\" needs a [qfedavg] table with q",
            )
        })?;
        if !(table.q.is_finite() && (0.0..=10.0).contains(&table.q)) {
            return Err(Invalid::range(
                "qfedavg.q",
                format!("qfedavg.q = {} must be in [0, 10]", table.q),
            ));
        }
        Ok(Settings { rounds, q: table.q })
    }

    fn build(p: &Prepared, s: &Settings) -> EngineResult<Vec<NodeOf<Self>>> {
        let c = &p.config;
        let clients: Vec<NodeId> = (1..=p.parts.len() as NodeId).collect();
        let mut nodes: Vec<NodeOf<Self>> = vec![Box::new(Server {
            settings: s.clone(),
            eval_every: c.algorithm.eval_every.max(1),
            clients: clients.clone(),
            params: p.initial_params()?,
            optimizer: ServerOptimizer::new(c.algorithm.server_optimizer.clone()),
            round: 0,
            replies: BTreeMap::new(),
            bytes: (0, 0),
            done: false,
        })];
        for (&id, shard) in clients.iter().zip(&p.parts) {
            nodes.push(Box::new(Client {
                id,
                shard: Arc::new(shard.clone()),
                seed: c.seed,
                rounds: s.rounds,
                lr_schedule: c.train.lr_schedule.clone(),
                num_params: p.model.num_params(),
                done: false,
            }));
        }
        Ok(nodes)
    }

    fn describe(p: &Prepared, s: &Settings) -> String {
        format!("{} clients (all per round), q = {}", p.parts.len(), s.q)
    }

    fn progress(_c: &ExperimentConfig, s: &Settings) -> (&'static str, u64) {
        ("round", u64::from(s.rounds))
    }

    fn summary(p: &Prepared, _s: &Settings, rows: &[(fedavg::RoundMetrics, f64)]) -> Summary {
        fedavg::algorithm::summary(p, rows)
    }
}

braid::protocol! {
    /// The `qfedavg` protocol: each message is its kind byte, then its fields in order.
    /// Rounds count from 1.
    pub enum QMsg {
        protocol: "qfedavg", tag: 16, version: 1;
        /// Server to client: train from `model`, the global model, in round `round`.
        Model(1, "model", round = round) { round: u32, model: Tensor },
        /// Client to server, answering round `round`: the client's training `samples`, the
        /// optimizer `steps` it took, its mean training `loss` of the round (which weighs its
        /// parameters) and `params`, the trained parameters.
        Update(2, "update", round = round) {
            round: u32, samples: u64, steps: u32, loss: f32, params: Tensor,
        },
    }
}

/// One client's answer.
struct Reply {
    samples: u64,
    steps: u32,
    loss: f32,
    params: Vec<f32>,
}

/// The server (node 0).
struct Server {
    settings: Settings,
    eval_every: u32,
    clients: Vec<NodeId>,
    params: Vec<f32>,
    /// `algorithm.server_optimizer`, applied to the weighted mean (default: the mean).
    optimizer: ServerOptimizer,
    round: u32,
    /// This round's replies by client (`BTreeMap`: averaged in client order, whatever the
    /// arrival order).
    replies: BTreeMap<NodeId, Reply>,
    /// Bytes (up, down) of the round.
    bytes: (u64, u64),
    done: bool,
}

impl Server {
    fn start_round(&mut self, ctx: &mut Ctx<'_, Self>) {
        self.round += 1;
        self.replies.clear();
        let model = Tensor::exact(self.params.clone());
        self.bytes = (0, 0);
        for &c in &self.clients {
            let msg = QMsg::Model {
                round: self.round,
                model: model.clone(),
            };
            self.bytes.1 += ctx.send(c, msg) as u64;
        }
    }

    fn finish_round(&mut self, ctx: &mut Ctx<'_, Self>) -> EngineResult {
        let q = self.settings.q;
        let items: Vec<(&[f32], f64)> = self
            .replies
            .values()
            .map(|r| {
                (
                    r.params.as_slice(),
                    r.samples as f64 * f64::from(r.loss).powf(q),
                )
            })
            .collect();
        let mean = weighted_mean(&items)?;
        self.optimizer.step(&mut self.params, &mean)?;
        let samples: u64 = self.replies.values().map(|r| r.samples).sum();
        let last = self.round == self.settings.rounds;
        let (accuracy, loss) = if last || self.round.is_multiple_of(self.eval_every) {
            let e = ctx.trainer.evaluate(&self.params)?;
            (Some(e.accuracy), Some(e.loss))
        } else {
            (None, None)
        };
        ctx.emit(Event::Metrics(fedavg::RoundMetrics {
            round: self.round,
            accuracy,
            loss,
            train_loss: self
                .replies
                .values()
                .map(|r| f64::from(r.loss) * r.samples as f64)
                .sum::<f64>()
                / samples.max(1) as f64,
            clients: self.replies.len(),
            stragglers: 0,
            samples,
            local_steps: self.replies.values().map(|r| u64::from(r.steps)).sum(),
            bytes_up: self.bytes.0,
            bytes_down: self.bytes.1,
            epsilon: None,
            sim_time_s: None,
            staleness: None,
        }));
        if last {
            ctx.emit(Event::Finished {
                params: self.params.clone(),
            });
            for &c in &self.clients {
                ctx.send_control(c, Control::Shutdown { round: self.round });
            }
            self.done = true;
        } else {
            self.start_round(ctx);
        }
        Ok(())
    }
}

impl Node for Server {
    type Protocol = QProtocol;

    fn id(&self) -> NodeId {
        0
    }

    fn on_start(&mut self, ctx: &mut Ctx<'_, Self>) -> EngineResult {
        self.start_round(ctx);
        Ok(())
    }

    fn on_message(&mut self, from: NodeId, msg: QMsg, ctx: &mut Ctx<'_, Self>) -> EngineResult {
        let reject = EngineError::rejecter(0, from, msg.kind());
        let size = (braid::braid_engine::wire::HEADER + msg.encoded_len()) as u64;
        let QMsg::Update {
            round,
            samples,
            steps,
            loss,
            params,
        } = msg
        else {
            return Err(reject("the server only takes updates".into()));
        };
        if round != self.round || self.done {
            return Err(reject(format!(
                "update for round {round}, the round is {}",
                self.round
            )));
        }
        if !self.clients.contains(&from) {
            return Err(reject("not a client of this run".into()));
        }
        if self.replies.contains_key(&from) {
            return Err(reject("duplicate update".into()));
        }
        if !(loss.is_finite() && loss >= 0.0) || samples == 0 {
            return Err(reject(format!("loss {loss} over {samples} samples")));
        }
        let params = params.into_values().map_err(reject)?;
        check_params(&params, self.params.len()).map_err(reject)?;
        self.bytes.0 += size;
        self.replies.insert(
            from,
            Reply {
                samples,
                steps,
                loss,
                params,
            },
        );
        if self.replies.len() == self.clients.len() {
            self.finish_round(ctx)?;
        }
        Ok(())
    }

    fn finished(&self) -> bool {
        self.done
    }
}

/// A client.
struct Client {
    id: NodeId,
    shard: Arc<Vec<usize>>,
    seed: u64,
    rounds: u32,
    lr_schedule: braid::braid_core::lr_schedule::LrSchedule,
    num_params: usize,
    done: bool,
}

impl Node for Client {
    type Protocol = QProtocol;

    fn id(&self) -> NodeId {
        self.id
    }

    fn on_start(&mut self, _ctx: &mut Ctx<'_, Self>) -> EngineResult {
        Ok(())
    }

    fn on_message(&mut self, from: NodeId, msg: QMsg, ctx: &mut Ctx<'_, Self>) -> EngineResult {
        let reject = EngineError::rejecter(self.id, from, msg.kind());
        let QMsg::Model { round, model } = msg else {
            return Err(reject("a client only takes models".into()));
        };
        if from != 0 {
            return Err(reject("models come from the server".into()));
        }
        let params = model.into_values().map_err(reject)?;
        check_params(&params, self.num_params).map_err(reject)?;
        // The same seeds and learning-rate schedule as braid's FedAvg clients.
        let (s, lr_scale) =
            fedavg::local_training(self.seed, self.id, round, self.rounds, &self.lr_schedule);
        let out = ctx.trainer.train(&params, &self.shard, s, lr_scale)?;
        ctx.send(
            0,
            QMsg::Update {
                round,
                samples: self.shard.len() as u64,
                steps: out.steps as u32,
                loss: out.mean_loss as f32,
                params: Tensor::exact(out.params),
            },
        );
        Ok(())
    }

    fn on_control(&mut self, from: NodeId, c: Control, _ctx: &mut Ctx<'_, Self>) -> EngineResult {
        match c {
            Control::Shutdown { .. } if from == 0 => {
                self.done = true;
                Ok(())
            }
            c => Err(EngineError::rejecter(self.id, from, c.kind())(
                "a client only takes a shutdown from the server".into(),
            )),
        }
    }

    fn finished(&self) -> bool {
        self.done
    }
}
