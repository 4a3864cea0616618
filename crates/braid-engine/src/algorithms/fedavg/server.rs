//! The FedAvg server: samples clients, collects their replies, combines them through its
//! layers, steps the server optimizer, evaluates and reports each round.

use std::collections::BTreeMap;

use braid_core::compress::Compression;
use braid_core::params::weighted_mean;
use braid_core::seed;
use braid_core::server_opt::ServerOptimizer;
use rand::seq::index::sample;

use super::layers::compression::{answer, model_request, Answer, Update};
use super::layers::privacy::DpServer;
use super::layers::{self, downlink, secure, Reply, ServerLayer};
use super::{restore_server, server_state};
use super::{FedCtx, FedProtocol, Msg, RoundMetrics, SecureSettings, ServerConfig, SERVER};
use crate::config::PrivacyConfig;
use crate::error::Invalid;
use crate::node::{check_params, EngineError, EngineResult, Event, Node, NodeState};
use crate::wire::NodeId;

/// What a round's aggregation reports besides the average.
pub(in crate::algorithms::fedavg) struct Aggregated {
    pub(in crate::algorithms::fedavg) clients: usize,
    pub(in crate::algorithms::fedavg) stragglers: usize,
    pub(in crate::algorithms::fedavg) samples: u64,
    pub(in crate::algorithms::fedavg) local_steps: u64,
    pub(in crate::algorithms::fedavg) train_loss: f64,
}

/// The FedAvg server.
pub struct FedAvgServer {
    pub(in crate::algorithms::fedavg) config: ServerConfig,
    pub(in crate::algorithms::fedavg) clients: Vec<NodeId>,
    pub(in crate::algorithms::fedavg) params: Vec<f32>,
    pub(in crate::algorithms::fedavg) optimizer: ServerOptimizer,
    pub(in crate::algorithms::fedavg) round: u32,
    pub(in crate::algorithms::fedavg) waiting: BTreeMap<NodeId, Option<Reply>>,
    pub(in crate::algorithms::fedavg) bytes_down: u64,
    pub(in crate::algorithms::fedavg) bytes_up: u64,
    pub(in crate::algorithms::fedavg) done: bool,
    /// Rounds completed (the state a checkpoint holds is as of the end of this round).
    pub(in crate::algorithms::fedavg) completed: u32,
    /// Compression of the model sent to clients.
    pub(in crate::algorithms::fedavg) downlink: Option<Compression>,
    /// With `downlink_delta`: the clients' copy of the model, which the server sends changes to.
    pub(in crate::algorithms::fedavg) copy: Option<downlink::ServerCopy>,
    /// The feature layers on the aggregation path (privacy, robust rules), in order.
    pub(in crate::algorithms::fedavg) layers: Vec<Box<dyn ServerLayer>>,
    /// Secure aggregation: the settings, and the current round's state.
    pub(in crate::algorithms::fedavg) secure: Option<SecureSettings>,
    pub(in crate::algorithms::fedavg) sec: Option<secure::SecRound>,
}

impl FedAvgServer {
    /// A server for `clients`, starting from `initial` parameters.
    pub fn new(
        config: ServerConfig, clients: Vec<NodeId>, initial: Vec<f32>,
    ) -> EngineResult<Self> {
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
        mut self, config: Option<PrivacyConfig>, total_clients: usize, batch_size: usize,
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
    /// which every client must start from too ([`super::FedAvgClient::with_model_copy`]).
    pub fn with_downlink_delta(mut self, c: Option<Compression>) -> Self {
        self.copy = c.map(|c| downlink::ServerCopy::new(c, &self.params));
        self
    }

    /// The current global parameters.
    pub fn params(&self) -> &[f32] {
        &self.params
    }

    pub(in crate::algorithms::fedavg) fn start_round(
        &mut self, ctx: &mut FedCtx<'_>,
    ) -> EngineResult {
        self.round += 1;
        let mut rng = seed::rng(
            self.config.seed,
            &[seed::stream::SAMPLING, u64::from(self.round)],
        );
        let mut chosen: Vec<NodeId> = if self.config.clients_per_round == self.clients.len() {
            self.clients.clone()
        } else if let Some(c) = self
            .layers
            .iter()
            .find_map(|l| l.choose_clients(&self.clients, &mut rng))
        {
            c
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
        if self.waiting.is_empty() {
            // A Poisson sample can be empty: the round's aggregate is the layer's alone
            // (DP-FedAvg: noise over the fixed denominator).
            return self.finish_round(ctx);
        }
        self.ask_missing(ctx)
    }

    /// Sends the round's request to every chosen client that has not replied yet, and arms
    /// the round's deadline.
    pub(in crate::algorithms::fedavg) fn ask_missing(
        &mut self, ctx: &mut FedCtx<'_>,
    ) -> EngineResult {
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

    /// Sends the round's request to `client` alone (a client that restarted and lost it).
    fn ask_again(&mut self, client: NodeId, ctx: &mut FedCtx<'_>) -> EngineResult {
        let request = match &self.copy {
            Some(copy) => copy.request_for(client),
            None => model_request(
                self.round,
                &self.params,
                self.downlink.as_ref(),
                self.config.seed,
            )?,
        };
        self.bytes_down += ctx.send(client, request) as u64;
        Ok(())
    }

    /// Ends the run: reports the final model and tells every client.
    pub(in crate::algorithms::fedavg) fn finish(&mut self, ctx: &mut FedCtx<'_>) {
        super::end_run(ctx, &self.params, &self.clients, self.completed);
        self.done = true;
    }

    pub(in crate::algorithms::fedavg) fn finish_round(
        &mut self, ctx: &mut FedCtx<'_>,
    ) -> EngineResult {
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
    pub(in crate::algorithms::fedavg) fn close_round(
        &mut self, ctx: &mut FedCtx<'_>, mean: Vec<f32>, agg: Aggregated,
    ) -> EngineResult {
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
    type Protocol = FedProtocol;

    fn id(&self) -> NodeId {
        SERVER
    }

    fn on_start(&mut self, ctx: &mut FedCtx<'_>) -> EngineResult {
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
        // ("privacy": null without DP, as checkpoints written before the layers had it.)
        let mut meta = serde_json::json!({ "completed_rounds": self.completed, "privacy": null });
        for (key, value) in self.layers.iter().filter_map(|l| l.save()) {
            meta[key] = value;
        }
        let mut state = server_state(meta, &self.params, &self.optimizer);
        if let Some(copy) = &self.copy {
            copy.save(&mut state);
        }
        Some(state)
    }

    fn load_state(&mut self, state: NodeState) -> EngineResult {
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

    fn on_message(&mut self, from: NodeId, msg: Msg, ctx: &mut FedCtx<'_>) -> EngineResult {
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
        let Answer {
            round,
            num_samples,
            steps,
            train_loss,
            update,
        } = answer(msg, self.params.len()).map_err(&reject)?;
        let params = match (update, &self.copy) {
            // Trained from the clients' copy: the update applies to the exact model.
            (Update::Trained(params), Some(copy)) if params.len() == self.params.len() => params
                .iter()
                .zip(copy.copy())
                .zip(&self.params)
                .map(|((t, c), p)| p + (t - c))
                .collect(),
            (Update::Trained(params), _) => params,
            // The update applies to the exact global model (clients may have trained from a
            // compressed copy of it).
            (Update::Delta(delta), _) => {
                self.params.iter().zip(&delta).map(|(p, d)| p + d).collect()
            }
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

    fn on_control(
        &mut self, from: NodeId, c: crate::wire::Control, ctx: &mut FedCtx<'_>,
    ) -> EngineResult {
        // A restarted client, with the latest round it has a request for (0: none, and no
        // copy of the model): asked for a later round and silent, it lost that request.
        let Some(step) =
            super::join_request(ctx, from, c, &self.clients, self.done, self.completed)?
        else {
            return Ok(());
        };
        if step == 0 {
            if let Some(copy) = self.copy.as_mut() {
                copy.forget(from);
            }
        }
        if self.secure.is_none()
            && step < u64::from(self.round)
            && self.waiting.get(&from).is_some_and(Option::is_none)
        {
            self.ask_again(from, ctx)?;
        }
        Ok(())
    }

    fn on_deadline(&mut self, token: u64, ctx: &mut FedCtx<'_>) -> EngineResult {
        if self.secure.is_some() {
            return self.secure_deadline(token, ctx);
        }
        if token != u64::from(self.round) || self.waiting.is_empty() {
            return Ok(()); // a round that already completed
        }
        let replied = self.waiting.values().filter(|r| r.is_some()).count();
        // (A Poisson sample may hold fewer clients than min_replies: then all of them.)
        let needed = self.config.min_replies.max(1).min(self.waiting.len());
        if replied >= needed {
            self.finish_round(ctx)
        } else {
            self.ask_missing(ctx)
        }
    }
}
