//! The monitor: merges the peers' snapshots at each evaluation point (the single global merge), evaluates and reports.

use super::*;

struct Snap {
    train_loss: f32,
    accuracy: f32,
    gossip_bytes: u64,
    params: Arc<Vec<f32>>,
}

/// The monitor of a decentralized run: collects the peers' snapshots at every evaluation
/// point, merges them exactly, evaluates the merge and reports the metrics. It never sends.
pub struct DsgdMonitor {
    settings: Arc<DsgdSettings>,
    pending: BTreeMap<u64, BTreeMap<NodeId, Snap>>,
    done: BTreeSet<u64>,
    /// Peers that missed an evaluation point's deadline: not waited for until they report.
    absent: BTreeSet<NodeId>,
    /// Changes with every accepted snapshot and every reported point (see
    /// [`Node::state_version`]).
    version: u64,
}

impl DsgdMonitor {
    /// The monitor for `settings`' peers.
    pub fn new(settings: Arc<DsgdSettings>) -> Self {
        Self {
            settings,
            pending: BTreeMap::new(),
            done: BTreeSet::new(),
            absent: BTreeSet::new(),
            version: 0,
        }
    }

    /// Restores the open points' snapshots and the reported points from `state`.
    fn restore(&mut self, state: &NodeState) -> Result<(), String> {
        let s = &self.settings;
        let peers = s.peers();
        let steps = |name: &str| -> Result<Vec<u64>, String> {
            state
                .meta
                .get(name)
                .and_then(serde_json::Value::as_array)
                .ok_or(format!("no list {name:?}"))?
                .iter()
                .map(|v| v.as_u64().ok_or(format!("{name:?} holds a non-number")))
                .collect()
        };
        let done = steps("done")?;
        if let Some(&bad) = done
            .iter()
            .find(|&&t| t > s.total_steps || !s.evaluates_at(t))
        {
            return Err(format!("step {bad} is not an evaluation point of this run"));
        }
        let absent = steps("absent")?;
        if let Some(&bad) = absent.iter().find(|&&p| p >= peers as u64) {
            return Err(format!("node {bad} is not a peer of this run"));
        }
        let snaps = state
            .meta
            .get("snapshots")
            .and_then(serde_json::Value::as_array)
            .ok_or("no list \"snapshots\"")?;
        let mut pending: BTreeMap<u64, BTreeMap<NodeId, Snap>> = BTreeMap::new();
        for v in snaps {
            let num = |k: &str| v.get(k).and_then(serde_json::Value::as_f64);
            let (Some(step), Some(peer), Some(loss), Some(acc), Some(bytes)) = (
                v.get("step").and_then(serde_json::Value::as_u64),
                v.get("peer").and_then(serde_json::Value::as_u64),
                num("train_loss"),
                num("accuracy"),
                v.get("gossip_bytes").and_then(serde_json::Value::as_u64),
            ) else {
                return Err(format!("snapshot entry {v} is incomplete"));
            };
            let last = done.last().copied();
            if step > s.total_steps || !s.evaluates_at(step) || last.is_some_and(|l| step <= l) {
                return Err(format!("snapshot at step {step}, not an open point"));
            }
            let peer = NodeId::try_from(peer)
                .ok()
                .filter(|&p| (p as usize) < peers)
                .ok_or(format!("snapshot of node {peer}, not a peer of this run"))?;
            let params = state
                .tensor(&format!("snapshot/{step}/{peer}"))
                .map_err(|e| e.to_string())?;
            check_params(params, s.num_params)?;
            let snap = Snap {
                train_loss: loss as f32,
                accuracy: acc as f32,
                gossip_bytes: bytes,
                params: Arc::new(params.to_vec()),
            };
            if pending
                .entry(step)
                .or_default()
                .insert(peer, snap)
                .is_some()
            {
                return Err(format!("two snapshots of node {peer} at step {step}"));
            }
        }
        self.done = done.into_iter().collect();
        self.absent = absent.into_iter().map(|p| p as NodeId).collect();
        self.pending = pending;
        Ok(())
    }

    /// The evaluation point to report next: step 0, then each one after the last reported.
    fn next_point(&self) -> u64 {
        let s = &self.settings;
        match self.done.last() {
            None => 0,
            Some(&last) if s.eval_every > 0 => {
                ((last / s.eval_every + 1) * s.eval_every).min(s.total_steps)
            }
            Some(_) => s.total_steps,
        }
    }

    /// Reports, in step order, every evaluation point that every present peer has reached,
    /// from the next one on: a later point waits for it (its snapshots can come after the
    /// later point's, across a network or a restart of this monitor).
    fn report_complete(&mut self, ctx: &mut DsgdCtx<'_>) -> EngineResult {
        let present = self.settings.peers() - self.absent.len();
        while !self.finished() {
            let step = self.next_point();
            if self
                .pending
                .get(&step)
                .is_none_or(|snaps| snaps.len() < present)
            {
                break;
            }
            let Some(snaps) = self.pending.remove(&step) else {
                break;
            };
            self.done.insert(step);
            self.version += 1;
            self.report(step, snaps, ctx)?;
        }
        Ok(())
    }

    fn report(
        &mut self, step: u64, snaps: BTreeMap<NodeId, Snap>, ctx: &mut DsgdCtx<'_>,
    ) -> EngineResult {
        let n = snaps.len() as f64;
        let items: Vec<(&[f32], f64)> =
            snaps.values().map(|s| (s.params.as_slice(), 1.0)).collect();
        let merged = weighted_mean(&items)?;
        let consensus = snaps
            .values()
            .map(|s| params::sq_dist(&s.params, &merged))
            .collect::<Result<Vec<f64>, _>>()?
            .iter()
            .sum::<f64>()
            / n;
        let e = ctx.trainer.evaluate(&merged)?;
        let on_sample = ctx
            .trainer
            .evaluate_sample(&merged, self.settings.eval_samples)?;
        let accs: Vec<f64> = snaps.values().map(|s| f64::from(s.accuracy)).collect();
        let local_mean = accs.iter().sum::<f64>() / n;
        let s = &self.settings;
        ctx.emit(Event::Metrics(GossipMetrics {
            step,
            progress: step as f64 / s.total_steps.max(1) as f64,
            comm_rounds: step / s.schedule.every.max(1),
            budget: s.budget_at(step),
            local_mean,
            local_min: accs.iter().copied().fold(f64::INFINITY, f64::min),
            local_max: accs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            merged_accuracy: e.accuracy,
            merged_loss: e.loss,
            gap: on_sample.accuracy - local_mean,
            consensus,
            train_loss: snaps.values().map(|s| f64::from(s.train_loss)).sum::<f64>() / n,
            bytes_per_peer: snaps.values().map(|s| s.gossip_bytes as f64).sum::<f64>() / n,
            bytes_max_peer: snaps.values().map(|s| s.gossip_bytes).max().unwrap_or(0),
        }));
        if step == s.total_steps {
            ctx.emit(Event::Finished { params: merged });
        }
        Ok(())
    }
}

impl Node for DsgdMonitor {
    type Protocol = DsgdProtocol;

    fn id(&self) -> NodeId {
        self.settings.monitor()
    }

    fn finished(&self) -> bool {
        self.done.contains(&self.settings.total_steps)
    }

    fn on_deadline(&mut self, step: u64, ctx: &mut DsgdCtx<'_>) -> EngineResult {
        // Some peer's snapshot did not come in time: report the evaluation point without it,
        // and every earlier one still open first (messages can arrive out of order across a
        // network, so an earlier point's deadline may be the later one), keeping step order.
        let due: Vec<u64> = self.pending.range(..=step).map(|(&s, _)| s).collect();
        for s in due {
            let Some(snaps) = self.pending.remove(&s) else {
                continue;
            };
            for p in 0..self.settings.peers() as NodeId {
                if !snaps.contains_key(&p) {
                    self.absent.insert(p);
                }
            }
            self.done.insert(s);
            self.version += 1;
            self.report(s, snaps, ctx)?;
        }
        self.report_complete(ctx)
    }

    /// Changes with every accepted snapshot: a monitor killed and resumed neither loses the
    /// points it reported nor the snapshots of an open point (the peers do not send them again).
    fn state_version(&self) -> u64 {
        self.version
    }

    /// The reported points, the absent peers and every open point's snapshots (one model per
    /// peer that has reported there).
    fn save_state(&self) -> Option<NodeState> {
        let mut snapshots = Vec::new();
        let mut tensors = Vec::new();
        for (step, snaps) in &self.pending {
            for (peer, snap) in snaps {
                snapshots.push(serde_json::json!({
                    "step": step,
                    "peer": peer,
                    "train_loss": snap.train_loss,
                    "accuracy": snap.accuracy,
                    "gossip_bytes": snap.gossip_bytes,
                }));
                tensors.push((format!("snapshot/{step}/{peer}"), snap.params.to_vec()));
            }
        }
        Some(NodeState {
            meta: serde_json::json!({
                "reported_points": self.done.len(),
                "done": self.done,
                "absent": self.absent,
                "snapshots": snapshots,
            }),
            tensors,
            blobs: Vec::new(),
        })
    }

    fn load_state(&mut self, state: NodeState) -> EngineResult {
        self.restore(&state)
            .map_err(|why| EngineError::Checkpoint(format!("checkpoint: {why}")))
    }

    fn on_start(&mut self, ctx: &mut DsgdCtx<'_>) -> EngineResult {
        // Resumed with open points: their deadlines start again.
        if let Some(d) = self.settings.gossip_deadline {
            for &step in self.pending.keys() {
                ctx.set_deadline(step, 3 * d);
            }
        }
        self.report_complete(ctx)
    }

    fn on_message(&mut self, from: NodeId, msg: Msg, ctx: &mut DsgdCtx<'_>) -> EngineResult {
        let kind = msg.kind();
        let reject = EngineError::rejecter(self.settings.monitor(), from, kind);
        let Msg::Snapshot {
            step,
            train_loss,
            accuracy,
            gossip_bytes,
            model,
            ..
        } = msg
        else {
            return Err(reject("the monitor only accepts snapshots".into()));
        };
        let params = model.exact_values().map_err(reject)?.clone();
        let s = &self.settings;
        if from as usize >= s.peers() {
            return Err(reject("the sender is not a peer of this run".into()));
        }
        // Points are reported in step order: a snapshot at or before the last reported one is
        // stale.
        let stale = self.done.last().is_some_and(|&last| step <= last);
        if step > s.total_steps || !s.evaluates_at(step) || stale {
            return Err(reject(format!(
                "step {step} is not an open evaluation point"
            )));
        }
        check_params(&params, s.num_params).map_err(reject)?;
        if !accuracy.is_finite() || !train_loss.is_finite() {
            return Err(reject("snapshot contains NaN or infinite values".into()));
        }
        if !self.pending.contains_key(&step) {
            if let Some(d) = s.gossip_deadline {
                ctx.set_deadline(step, 3 * d);
            }
        }
        let slot = self.pending.entry(step).or_default();
        if slot.contains_key(&from) {
            return Err(reject("duplicate snapshot".into()));
        }
        slot.insert(
            from,
            Snap {
                train_loss,
                accuracy,
                gossip_bytes,
                params,
            },
        );
        self.absent.remove(&from);
        self.version += 1;
        self.report_complete(ctx)
    }
}
