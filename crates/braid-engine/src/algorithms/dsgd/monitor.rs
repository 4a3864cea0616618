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
}

impl DsgdMonitor {
    /// The monitor for `settings`' peers.
    pub fn new(settings: Arc<DsgdSettings>) -> Self {
        Self {
            settings,
            pending: BTreeMap::new(),
            done: BTreeSet::new(),
            absent: BTreeSet::new(),
        }
    }

    /// Reports, in step order, every evaluation point that every present peer has reached.
    fn report_complete(&mut self, ctx: &mut DsgdCtx<'_>) -> EngineResult {
        let present = self.settings.peers() - self.absent.len();
        while let Some(entry) = self.pending.first_entry() {
            if entry.get().len() < present {
                break;
            }
            let (step, snaps) = entry.remove_entry();
            self.done.insert(step);
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
    type Msg = Msg;
    type Metrics = GossipMetrics;
    type Trainer = dyn PeerTrainer;

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
            self.report(s, snaps, ctx)?;
        }
        self.report_complete(ctx)
    }

    fn on_start(&mut self, _ctx: &mut DsgdCtx<'_>) -> EngineResult {
        Ok(())
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
        self.report_complete(ctx)
    }
}
