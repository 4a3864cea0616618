//! A decentralized peer: local steps, gossip with its in-neighbours each communication round,
//! snapshots to the monitor, and catching up after a restart.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use braid_core::batches::EpochBatches;
use braid_core::lr_schedule::LrSchedule;
use braid_core::params::weighted_mean;
use braid_core::seed;
use braid_core::topology::{Graph, Mixing};
use braid_nn::OptimizerState;

use super::{common, DsgdCtx, DsgdProtocol, DsgdSettings, Msg};
use crate::node::{check_params, EngineError, EngineResult, Node, NodeState};
use crate::wire::{Control, Message as _, NodeId, Tensor};

struct Waiting {
    round: u32,
    graph: Graph,
}

/// One decentralized peer.
pub struct DsgdPeer {
    id: NodeId,
    settings: Arc<DsgdSettings>,
    /// Shared with the gossip messages and snapshot that carry it, so sending copies nothing.
    params: Arc<Vec<f32>>,
    optimizer: OptimizerState,
    /// The optimizer state as bytes after the latest input that trained, for checkpoints
    /// (kept only when checkpoints are).
    optimizer_bytes: Vec<u8>,
    batches: EpochBatches,
    step: u64,
    waiting: Option<Waiting>,
    /// Parameters received for the current or a later round, by (round, sender).
    inbox: BTreeMap<(u32, NodeId), Arc<Vec<f32>>>,
    /// Rounds whose mixing is done (messages for them are stale).
    mixed_through: u32,
    /// In-neighbours that missed a gossip deadline: not waited for until they send again.
    absent: BTreeSet<NodeId>,
    gossip_bytes: u64,
    loss_sum: f64,
    loss_steps: u64,
    /// Restarted without a checkpoint: asking the other peers where the run is now.
    rejoining: bool,
    /// Resumed from a checkpoint with a gossip deadline set: the other peers were asked
    /// where they are, and a peer far ahead (the others went on without this one at their
    /// deadlines) is followed.
    catching_up: bool,
    /// A driver that checkpoints asked for the state after every input.
    keep_checkpoints: bool,
    /// Changes with every input that changes the peer (see [`Node::state_version`]).
    version: u64,
    /// The messages of the latest input that sent any (for checkpoints and resume).
    last_out: common::LatestSent<Msg>,
    /// Restored from a checkpoint: `last_out` goes out again at the start.
    resumed: bool,
}

/// Deadline token of the wait for join replies (gossip deadlines use round numbers).
const JOIN_DEADLINE: u64 = u64::MAX;

/// How long a restarted peer waits for a join reply without a gossip deadline configured.
const DEFAULT_JOIN_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

impl DsgdPeer {
    /// Peer `id` holding training samples `shard`, starting from `initial` parameters.
    pub fn new(
        id: NodeId, settings: Arc<DsgdSettings>, shard: Vec<usize>, initial: Vec<f32>,
    ) -> Self {
        let batch_seed = seed::derive(settings.seed, &[seed::stream::LOCAL_TRAIN, u64::from(id)]);
        let batches = EpochBatches::new(shard, settings.batch_size, batch_seed);
        Self {
            id,
            settings,
            params: Arc::new(initial),
            optimizer: OptimizerState::default(),
            optimizer_bytes: Vec::new(),
            batches,
            step: 0,
            waiting: None,
            inbox: BTreeMap::new(),
            mixed_through: 0,
            absent: BTreeSet::new(),
            gossip_bytes: 0,
            loss_sum: 0.0,
            loss_steps: 0,
            rejoining: false,
            catching_up: false,
            keep_checkpoints: false,
            version: 0,
            last_out: common::LatestSent::default(),
            resumed: false,
        }
    }

    /// The batch stream as it is after `self.step` steps (it is a pure function of the seed).
    fn batch_stream(&self) -> EpochBatches {
        let mut b = self.batches.clone();
        b.rewind();
        b.skip(self.step);
        b
    }

    /// Takes over another peer's state (a join reply): its step, round and parameters.
    fn adopt(
        &mut self, from: NodeId, step: u64, mixed_through: u32, params: Arc<Vec<f32>>,
        ctx: &mut DsgdCtx<'_>,
    ) -> EngineResult {
        tracing::info!(
            "peer {} rejoins at step {step} (round {mixed_through} mixed) with peer {from}'s model",
            self.id
        );
        self.rejoining = false;
        self.catching_up = false;
        self.step = step;
        self.mixed_through = mixed_through;
        self.params = Arc::clone(&params);
        self.waiting = None;
        self.inbox.retain(|&(r, _), _| r > mixed_through);
        self.batches = self.batch_stream();
        self.loss_sum = 0.0;
        self.loss_steps = 0;
        // If the sender is waiting for round `mixed_through + 1` at this step, its parameters
        // are what it sent for that round: join the round with them.
        let every = self.settings.schedule.every.max(1);
        let round = mixed_through + 1;
        let in_round = step < self.settings.total_steps
            && self.settings.schedule.communicates_after(step)
            && step == u64::from(round) * every;
        if in_round {
            let listens =
                self.settings.round_graph(round).peers[self.id as usize].contains(&(from as usize));
            if listens {
                self.inbox.insert((round, from), params);
            }
            self.start_round(round, ctx)?;
        }
        self.run(ctx)
    }

    /// Sends `msg`, keeping it among the latest input's messages (for a checkpoint).
    fn send(&mut self, ctx: &mut DsgdCtx<'_>, to: NodeId, msg: Msg) -> usize {
        if self.keep_checkpoints {
            self.last_out.keep(to, &msg);
        }
        ctx.send(to, msg)
    }

    /// An input that changes the peer begins: its messages, if any, replace the kept ones.
    fn begin_input(&mut self) {
        self.version += 1;
        self.last_out.begin();
    }

    /// The round this peer has gossiped in and waits to mix, derived from its step (between
    /// inputs a peer waits only at a round's step): how a restored peer takes up its wait.
    fn restore_wait(&mut self) {
        let s = &self.settings;
        self.waiting = None;
        if !s.schedule.communicates_after(self.step) {
            return;
        }
        let round = (self.step / s.schedule.every.max(1)) as u32;
        if round > self.mixed_through {
            let graph = s.round_graph(round);
            if !graph.peers[self.id as usize].is_empty() {
                self.waiting = Some(Waiting { round, graph });
            }
        }
    }

    /// Asks every other peer where the run is (they answer with a join reply).
    fn ask_where_the_run_is(&self, ctx: &mut DsgdCtx<'_>) {
        for j in 0..self.settings.peers() as NodeId {
            if j != self.id {
                ctx.send_control(j, Control::JoinRequest { step: self.step });
            }
        }
    }

    /// The peer's state from a checkpoint taken by [`Node::save_state`].
    fn restore(&mut self, state: &NodeState) -> Result<(), String> {
        let s = Arc::clone(&self.settings);
        let num = |k: &str| state.meta_u64(k).map_err(|e| e.to_string());
        let step = num("step")?;
        if step > s.total_steps {
            return Err(format!(
                "step {step} is past the run's {} steps",
                s.total_steps
            ));
        }
        let mixed_through = u32::try_from(num("mixed_through")?)
            .ok()
            .filter(|&r| r <= s.last_round() && u64::from(r) <= step / s.schedule.every.max(1))
            .ok_or("mixed_through is past the run's last round or the checkpoint's step")?;
        let params = state.tensor("params").map_err(|e| e.to_string())?;
        check_params(params, s.num_params).map_err(|w| format!("params: {w}"))?;
        let params = Arc::new(params.to_vec());
        let optimizer_bytes = state.blob("optimizer").map_err(|e| e.to_string())?;
        let optimizer = OptimizerState::from_bytes(optimizer_bytes).map_err(|e| e.to_string())?;
        let loss_sum = state
            .meta
            .get("loss_sum")
            .and_then(serde_json::Value::as_f64)
            .filter(|v| v.is_finite())
            .ok_or("no finite number \"loss_sum\"")?;
        let absent = state
            .meta
            .get("absent")
            .and_then(serde_json::Value::as_array)
            .ok_or("no list \"absent\"")?
            .iter()
            .map(|v| {
                v.as_u64()
                    .filter(|&p| p < s.peers() as u64)
                    .map(|p| p as NodeId)
                    .ok_or(format!("absent: {v} is not a peer of this run"))
            })
            .collect::<Result<BTreeSet<NodeId>, String>>()?;
        let limits = crate::wire::Limits::new(s.num_params);
        let mut inbox = BTreeMap::new();
        for (name, bytes) in &state.blobs {
            let Some(key) = common::inbox_key(name) else {
                continue;
            };
            let (round, from) = key?;
            let Ok(crate::wire::Body::Msg(Msg::Gossip {
                model: Tensor::Exact(p),
                ..
            })) = crate::wire::Body::<Msg>::decode(bytes, &limits)
            else {
                return Err(format!("{name}: not exact gossip"));
            };
            let open = round > mixed_through && round <= s.last_round();
            if !open || !s.round_graph(round).peers[self.id as usize].contains(&(from as usize)) {
                return Err(format!("{name}: not gossip this peer waits for"));
            }
            check_params(&p, s.num_params).map_err(|w| format!("{name}: {w}"))?;
            inbox.insert((round, from), p);
        }
        let last_out =
            common::LatestSent::from_blobs(&state.blobs, &limits, s.monitor(), |m| match m {
                Msg::Gossip { round, .. } => Some(Msg::Gossip {
                    round,
                    model: Tensor::Exact(Arc::clone(&params)),
                }),
                Msg::Snapshot { .. } => None,
            })?;
        self.gossip_bytes = num("gossip_bytes")?;
        self.loss_steps = num("loss_steps")?;
        self.loss_sum = loss_sum;
        self.optimizer = optimizer;
        self.optimizer_bytes = optimizer_bytes.to_vec();
        self.params = params;
        self.step = step;
        self.mixed_through = mixed_through;
        self.batches = self.batch_stream();
        self.inbox = inbox;
        self.absent = absent;
        self.last_out = last_out;
        self.restore_wait();
        self.rejoining = false;
        self.resumed = true;
        Ok(())
    }

    /// The current local parameters.
    pub fn params(&self) -> &[f32] {
        &self.params
    }

    /// Local steps taken.
    pub fn step(&self) -> u64 {
        self.step
    }

    fn next_stop(&self) -> u64 {
        let s = &self.settings;
        let mut next = s.total_steps;
        let every = s.schedule.every.max(1);
        next = next.min((self.step / every + 1) * every);
        if let Some(k) = self.step.checked_div(s.eval_every) {
            next = next.min((k + 1) * s.eval_every);
        }
        next
    }

    fn snapshot(&mut self, ctx: &mut DsgdCtx<'_>) -> EngineResult {
        let e = ctx
            .trainer
            .evaluate_sample(&self.params, self.settings.eval_samples)?;
        let train_loss = if self.loss_steps > 0 {
            self.loss_sum / self.loss_steps as f64
        } else {
            0.0
        };
        self.loss_sum = 0.0;
        self.loss_steps = 0;
        let monitor = self.settings.monitor();
        self.send(
            ctx,
            monitor,
            Msg::Snapshot {
                step: self.step,
                train_loss: train_loss as f32,
                accuracy: e.accuracy as f32,
                loss: e.loss as f32,
                gossip_bytes: self.gossip_bytes,
                model: Tensor::Exact(Arc::clone(&self.params)),
            },
        );
        Ok(())
    }

    /// Starts communication round `round`: sends to the peers listening to this one and
    /// waits for this one's in-neighbours, if any.
    fn start_round(&mut self, round: u32, ctx: &mut DsgdCtx<'_>) -> EngineResult {
        let graph = self.settings.round_graph(round);
        let me = self.id as usize;
        let model = match &self.settings.gossip_compression {
            Some(c) => {
                let key = [u64::from(self.id), u64::from(round)];
                let packed =
                    braid_core::compress::encode_seeded(&self.params, c, self.settings.seed, &key)
                        .map_err(|e| EngineError::Failed(e.to_string()))?;
                Tensor::packed(packed)
            }
            None => Tensor::Exact(Arc::clone(&self.params)),
        };
        let message = Msg::Gossip { round, model };
        for (j, listens_to) in graph.peers.iter().enumerate() {
            if listens_to.contains(&me) {
                self.gossip_bytes += self.send(ctx, j as NodeId, message.clone()) as u64;
            }
        }
        if graph.peers[me].is_empty() {
            self.mixed_through = round;
        } else {
            self.waiting = Some(Waiting { round, graph });
            if let Some(d) = self.settings.gossip_deadline {
                ctx.set_deadline(u64::from(round), d);
            }
        }
        Ok(())
    }

    /// Mixes if every in-neighbour of the awaited round has sent (or, if `force`, with those
    /// that have); returns whether it did.
    fn try_mix(&mut self, force: bool) -> EngineResult<bool> {
        let Some(w) = &self.waiting else {
            return Ok(true);
        };
        let me = self.id as usize;
        let ready = w.graph.peers[me].iter().all(|&j| {
            self.inbox.contains_key(&(w.round, j as NodeId)) || self.absent.contains(&(j as NodeId))
        });
        if !ready && !force {
            return Ok(false);
        }
        for &j in &w.graph.peers[me] {
            if !self.inbox.contains_key(&(w.round, j as NodeId)) {
                self.absent.insert(j as NodeId);
            }
        }
        let row = Mixing::new(&w.graph, self.settings.mixing)
            .map_err(EngineError::Failed)?
            .rows
            .swap_remove(me);
        let round = w.round;
        // Weight of neighbours that did not send in time: kept by this peer's own model.
        let missing: f64 = row
            .iter()
            .filter(|&&(j, _)| j != me && !self.inbox.contains_key(&(round, j as NodeId)))
            .map(|&(_, w)| w)
            .sum();
        let mut items: Vec<(&[f32], f64)> = Vec::with_capacity(row.len());
        let mut own_listed = false;
        for &(j, weight) in &row {
            if j == me {
                items.push((&self.params, weight + missing));
                own_listed = true;
            } else if let Some(p) = self.inbox.get(&(round, j as NodeId)) {
                items.push((p.as_slice(), weight));
            }
        }
        if !own_listed && missing > 0.0 {
            items.push((&self.params, missing));
        }
        let mixed = weighted_mean(&items)?;
        self.params = Arc::new(mixed);
        self.inbox.retain(|&(r, _), _| r > round);
        self.waiting = None;
        self.mixed_through = round;
        Ok(true)
    }

    fn train(
        &mut self, batches: &[Vec<usize>], lr_scale: f64, ctx: &mut DsgdCtx<'_>,
    ) -> EngineResult {
        let out =
            ctx.trainer
                .train_batches(&self.params, batches, &mut self.optimizer, lr_scale)?;
        self.params = Arc::new(out.params);
        self.loss_sum += out.mean_loss * out.steps as f64;
        self.loss_steps += out.steps as u64;
        Ok(())
    }

    /// Trains and communicates until the run ends or a round waits for messages; then, for
    /// checkpoints, serializes the optimizer state once if it trained.
    fn run(&mut self, ctx: &mut DsgdCtx<'_>) -> EngineResult {
        let from = self.step;
        self.advance(ctx)?;
        if self.keep_checkpoints && self.step != from {
            self.optimizer_bytes = self.optimizer.to_bytes().map_err(EngineError::Nn)?;
        }
        Ok(())
    }

    fn advance(&mut self, ctx: &mut DsgdCtx<'_>) -> EngineResult {
        loop {
            if self.waiting.is_some() {
                if !self.try_mix(false)? {
                    return Ok(());
                }
                if self.settings.evaluates_at(self.step) {
                    self.snapshot(ctx)?;
                }
            }
            if self.step >= self.settings.total_steps {
                return Ok(());
            }
            let next = self.next_stop();
            let batches = self.batches.take((next - self.step) as usize);
            if self.settings.lr_schedule == LrSchedule::Constant {
                self.train(&batches, 1.0, ctx)?;
            } else {
                // One call per step, so every step gets its own learning rate.
                for (k, batch) in batches.chunks(1).enumerate() {
                    let scale = self.settings.lr_scale_at(self.step + k as u64);
                    self.train(batch, scale, ctx)?;
                }
            }
            self.step = next;
            if self.settings.schedule.communicates_after(self.step) {
                let round = (self.step / self.settings.schedule.every) as u32;
                self.start_round(round, ctx)?;
                if self.waiting.is_some() {
                    continue;
                }
            }
            if self.settings.evaluates_at(self.step) {
                self.snapshot(ctx)?;
            }
        }
    }
}

impl Node for DsgdPeer {
    type Protocol = DsgdProtocol;

    fn id(&self) -> NodeId {
        self.id
    }

    fn finished(&self) -> bool {
        !self.rejoining && self.step >= self.settings.total_steps && self.waiting.is_none()
    }

    /// Changes with every input that changes the peer: its step, model, optimizer state and
    /// the gossip received for open rounds are durable after each.
    fn state_version(&self) -> u64 {
        self.version
    }

    /// The step, rounds mixed, model, optimizer state, counters, the gossip received for open
    /// rounds and the messages of the latest input that sent any (as their wire frames): all
    /// a killed peer needs to go on as if it had not stopped.
    fn save_state(&self) -> Option<NodeState> {
        if !self.keep_checkpoints {
            return None;
        }
        let mut blobs = vec![("optimizer".to_string(), self.optimizer_bytes.clone())];
        for ((round, from), p) in &self.inbox {
            let m = Msg::Gossip {
                round: *round,
                model: Tensor::Exact(Arc::clone(p)),
            };
            blobs.push((
                format!("inbox/{round}/{from}"),
                crate::wire::Body::Msg(m).encode(),
            ));
        }
        // Gossip of the current model (the usual case while a round waits) is written without
        // its copy of the model: it is the checkpoint's `params`.
        blobs.extend(self.last_out.to_blobs(|m| match m {
            Msg::Gossip {
                round,
                model: Tensor::Exact(p),
            } if Arc::ptr_eq(p, &self.params) => Some(Msg::Gossip {
                round: *round,
                model: Tensor::exact(Vec::new()),
            }),
            _ => None,
        }));
        Some(NodeState {
            meta: serde_json::json!({
                "step": self.step,
                "mixed_through": self.mixed_through,
                "gossip_bytes": self.gossip_bytes,
                "loss_sum": self.loss_sum,
                "loss_steps": self.loss_steps,
                "absent": self.absent,
            }),
            tensors: vec![("params".into(), self.params.to_vec())],
            blobs,
        })
    }

    fn load_state(&mut self, state: NodeState) -> EngineResult {
        self.restore(&state)
            .map_err(|why| EngineError::Checkpoint(format!("checkpoint: {why}")))
    }

    fn keep_checkpoints(&mut self) {
        self.keep_checkpoints = true;
    }

    /// Restarted: from a checkpoint it goes on exactly where it stopped; without one, and with
    /// a gossip deadline, it asks the other peers where the run is.
    fn rejoin(&mut self) {
        // Without a checkpoint it has sent nothing (its first checkpoint comes before its
        // first message leaves): without a deadline the others wait for it, and it starts as
        // if for the first time; with one they may have gone on, and it asks where they are.
        if !self.resumed && self.settings.gossip_deadline.is_some() {
            self.rejoining = true;
        }
    }

    fn on_start(&mut self, ctx: &mut DsgdCtx<'_>) -> EngineResult {
        self.begin_input();
        if self.rejoining {
            // Ask every other peer where the run is; the first useful answer wins, and
            // without one this peer goes on from its own state when the wait is over.
            self.ask_where_the_run_is(ctx);
            let wait = self.settings.gossip_deadline.unwrap_or(DEFAULT_JOIN_WAIT);
            ctx.set_deadline(JOIN_DEADLINE, wait);
            return Ok(());
        }
        if std::mem::take(&mut self.resumed) {
            tracing::info!(
                "peer {} resumes at step {} (round {} mixed) from its checkpoint",
                self.id,
                self.step,
                self.mixed_through
            );
            // What the checkpointed input sent may not have left before the kill.
            for (to, msg) in self.last_out.take() {
                self.send(ctx, to, msg);
            }
            if let Some(d) = self.settings.gossip_deadline {
                // The others may have gone on without this peer at their deadlines: ask where
                // they are (a peer far ahead is followed), and wait for this round again.
                if let Some(w) = &self.waiting {
                    ctx.set_deadline(u64::from(w.round), d);
                }
                self.ask_where_the_run_is(ctx);
                self.catching_up = true;
                ctx.set_deadline(JOIN_DEADLINE, d);
            }
            return self.run(ctx);
        }
        self.snapshot(ctx)?;
        self.run(ctx)
    }

    fn on_deadline(&mut self, token: u64, ctx: &mut DsgdCtx<'_>) -> EngineResult {
        if token == JOIN_DEADLINE {
            self.catching_up = false;
            if !self.rejoining {
                return Ok(());
            }
            tracing::info!(
                "peer {}: no peer answered; going on from its own step {}",
                self.id,
                self.step
            );
            self.begin_input();
            self.rejoining = false;
            return self.run(ctx);
        }
        match &self.waiting {
            Some(w) if u64::from(w.round) == token => {}
            _ => return Ok(()), // that round was mixed in time
        }
        // Some in-neighbour is gone or stalled: mix with those that sent, and go on.
        self.begin_input();
        self.try_mix(true)?;
        if self.settings.evaluates_at(self.step) {
            self.snapshot(ctx)?;
        }
        self.run(ctx)
    }

    fn on_control(&mut self, from: NodeId, c: Control, ctx: &mut DsgdCtx<'_>) -> EngineResult {
        let reject = EngineError::rejecter(self.id, from, c.kind());
        if from as usize >= self.settings.peers() {
            return Err(reject("the sender is not a peer of this run".into()));
        }
        match c {
            Control::JoinRequest { .. } => {
                // A restarted peer asks where the run is: tell it (unless this peer is itself
                // rejoining: its state is a checkpoint, not where the run is).
                if self.rejoining {
                    return Ok(());
                }
                ctx.send_control(
                    from,
                    Control::JoinReply {
                        step: self.step,
                        round: self.mixed_through,
                        model: Tensor::Exact(Arc::clone(&self.params)),
                    },
                );
                Ok(())
            }
            Control::JoinReply {
                step,
                round: mixed_through,
                model,
            } => {
                if step > self.settings.total_steps || mixed_through > self.settings.last_round() {
                    return Err(reject(format!(
                        "step {step} or round {mixed_through} is past the run's end"
                    )));
                }
                let params = model.exact_values().map_err(reject)?.clone();
                check_params(&params, self.settings.num_params).map_err(reject)?;
                // Late answers, and answers from peers behind this one's own state, are not
                // needed. A peer resumed from its checkpoint follows only a peer more rounds
                // ahead than there are peers: one that waited for it could not be.
                let left_behind = self.catching_up
                    && u64::from(mixed_through)
                        > u64::from(self.mixed_through) + self.settings.peers() as u64;
                if self.rejoining && step >= self.step || left_behind {
                    self.begin_input();
                    return self.adopt(from, step, mixed_through, params, ctx);
                }
                Ok(())
            }
            _ => Err(reject(
                "a peer only accepts gossip and join messages".into(),
            )),
        }
    }

    fn on_message(&mut self, from: NodeId, msg: Msg, ctx: &mut DsgdCtx<'_>) -> EngineResult {
        let kind = msg.kind();
        let reject = EngineError::rejecter(self.id, from, kind);
        if from as usize >= self.settings.peers() {
            return Err(reject("the sender is not a peer of this run".into()));
        }
        let (round, params) = match msg {
            Msg::Gossip {
                round,
                model: Tensor::Exact(params),
            } => (round, params),
            Msg::Gossip {
                round,
                model: Tensor::Packed(model),
            } => {
                let params = braid_core::compress::decode(&model, self.settings.num_params)
                    .map_err(|e| reject(format!("parameters: {e}")))?;
                (round, Arc::new(params))
            }
            Msg::Snapshot { .. } => {
                return Err(reject(
                    "a peer only accepts gossip and join messages".into(),
                ))
            }
        };
        // A neighbour that missed a deadline is alive again: wait for it from now on.
        if self.absent.remove(&from) {
            self.begin_input();
        }
        if round <= self.mixed_through || round > self.settings.last_round() {
            return Err(reject(format!(
                "round {round} is not open (mixed through round {}, last round {})",
                self.mixed_through,
                self.settings.last_round()
            )));
        }
        let listens = match &self.waiting {
            Some(w) if w.round == round => {
                w.graph.peers[self.id as usize].contains(&(from as usize))
            }
            _ => {
                self.settings.round_graph(round).peers[self.id as usize].contains(&(from as usize))
            }
        };
        if !listens {
            return Err(reject(format!(
                "the sender is not an in-neighbour of this peer in round {round}"
            )));
        }
        if self.inbox.contains_key(&(round, from)) {
            return Err(reject("duplicate gossip".into()));
        }
        check_params(&params, self.settings.num_params).map_err(reject)?;
        self.begin_input();
        self.inbox.insert((round, from), params);
        if self.waiting.as_ref().is_some_and(|w| w.round == round) {
            self.run(ctx)?;
        }
        Ok(())
    }
}
