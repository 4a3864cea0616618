//! A mutual-learning client: trains the models it is sent with its own data, hands them on,
//! and reports to the hub.

use std::collections::BTreeMap;
use std::sync::Arc;

use braid_core::mutual::mean_by_arch;
use braid_core::seed;
use braid_nn::Member;
use rand::seq::SliceRandom;

use super::{
    client_node, common, ArchModel, Msg, MutualCtx, MutualProtocol, MutualSettings, Role, Variant,
    HUB,
};
use crate::node::{check_params, EngineError, EngineResult, Node, NodeState};
use crate::wire::{Message as _, NodeId, Tensor};

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
    type Protocol = MutualProtocol;

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
