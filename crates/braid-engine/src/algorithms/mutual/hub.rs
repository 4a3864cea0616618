//! The hub: collects the clients' evaluation reports and writes the run's rows; in FML also the server of the global model.

use super::*;

#[derive(Clone, Serialize, Deserialize)]
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
    /// Clients that missed an evaluation point's deadline: not waited for until they report.
    absent: std::collections::BTreeSet<NodeId>,
    /// Evaluation points whose deadline is set.
    timed: std::collections::BTreeSet<u32>,
    /// Changes with every accepted input (see [`Node::state_version`]).
    version: u64,
    /// Restored from a checkpoint: FML's round goes out again at the start.
    resumed: bool,
}

/// The hub's durable state but the models (JSON in its checkpoint).
#[derive(Serialize, Deserialize)]
struct HubMeta {
    reported: u32,
    prev_bytes: (u32, u64),
    reports: BTreeMap<u32, BTreeMap<NodeId, Report>>,
    absent: Vec<NodeId>,
    global_eval: BTreeMap<u32, f64>,
    bytes_sent: u64,
    sent_through: BTreeMap<u32, u64>,
    round: u32,
    /// FML: the clients asked in `round`, and whether each has returned its model.
    returned: BTreeMap<NodeId, bool>,
}

/// Deadline tokens: an evaluation point's reports, and an FML round's returned models.
fn reports_token(round: u32) -> u64 {
    2 * u64::from(round)
}
fn returns_token(round: u32) -> u64 {
    2 * u64::from(round) + 1
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
            absent: Default::default(),
            timed: Default::default(),
            version: 0,
            resumed: false,
        }
    }

    /// The hub's state from a checkpoint taken by [`Node::save_state`].
    fn restore(&mut self, state: &NodeState) -> Result<(), String> {
        let s = Arc::clone(&self.settings);
        let m: HubMeta = serde_json::from_value(state.meta.clone()).map_err(|e| e.to_string())?;
        let n = s.clients() as NodeId;
        let client = |c: &NodeId| (1..=n).contains(c);
        let point = |r: &u32| *r <= s.rounds && s.evaluates_at(*r);
        if m.reported > s.rounds || m.round > s.rounds {
            return Err("a round past the run's".into());
        }
        if !m
            .reports
            .iter()
            .all(|(r, c)| point(r) && *r > m.reported && c.keys().all(client))
            || !m.absent.iter().all(client)
            || !m.returned.keys().all(client)
        {
            return Err("reports or clients that are not this run's".into());
        }
        let mut returned = BTreeMap::new();
        for (&c, &back) in &m.returned {
            let p = if back {
                let name = format!("returned/{c}");
                let p = state.tensor(&name).map_err(|e| e.to_string())?;
                check_params(p, s.model_params[s.global_model])
                    .map_err(|w| format!("{name}: {w}"))?;
                Some(Arc::new(p.to_vec()))
            } else {
                None
            };
            returned.insert(c, p);
        }
        if self.fml() {
            let g = state.tensor("global").map_err(|e| e.to_string())?;
            check_params(g, s.model_params[s.global_model]).map_err(|w| format!("global: {w}"))?;
            self.global = Arc::new(g.to_vec());
        }
        self.reported = m.reported;
        self.prev_bytes = m.prev_bytes;
        self.reports = m.reports;
        self.absent = m.absent.into_iter().collect();
        self.global_eval = m.global_eval;
        self.bytes_sent = m.bytes_sent;
        self.sent_through = m.sent_through;
        self.round = m.round;
        self.returned = returned;
        self.done = self.reported >= s.rounds;
        self.resumed = true;
        Ok(())
    }

    fn fml(&self) -> bool {
        self.settings.variant == Variant::Fml
    }

    fn start_round(&mut self, ctx: &mut MutualCtx<'_>, round: u32) -> EngineResult {
        let s = Arc::clone(&self.settings);
        self.round = round;
        self.returned = round_subset(s.seed, round, s.clients(), s.clients_per_round)
            .into_iter()
            .map(|k| (client_node(k), None))
            .collect();
        let asked: Vec<NodeId> = self.returned.keys().copied().collect();
        for to in asked {
            self.bytes_sent += self.send_global(ctx, to)?;
        }
        self.sent_through.insert(round, self.bytes_sent);
        if let Some(d) = s.round_deadline {
            ctx.set_deadline(returns_token(round), d);
        }
        Ok(())
    }

    /// FML: sends the global model of the round in progress to `to`; the bytes sent.
    fn send_global(&self, ctx: &mut MutualCtx<'_>, to: NodeId) -> EngineResult<u64> {
        let s = &self.settings;
        let message = s.model_message(self.round, s.global_model, Arc::clone(&self.global), HUB)?;
        Ok(ctx.send(to, message) as u64)
    }

    /// FML: the round's returned global models are averaged (weighted by the clients' sample
    /// counts; at a deadline, those that came; none: the global model stays), evaluated at
    /// evaluation points, and the next round starts.
    fn finish_fml_round(&mut self, ctx: &mut MutualCtx<'_>, round: u32) -> EngineResult {
        let s = Arc::clone(&self.settings);
        let returned: Vec<(NodeId, &Arc<Vec<f32>>)> = self
            .returned
            .iter()
            .filter_map(|(f, p)| Some((*f, p.as_ref()?)))
            .collect();
        if !returned.is_empty() {
            // Weighted by sample counts; equal weights if the clients hold no samples.
            let total: usize = returned
                .iter()
                .map(|(f, _)| s.counts[(*f - 1) as usize])
                .sum();
            let items: Vec<(&[f32], f64)> = returned
                .iter()
                .map(|(f, p)| {
                    let w = if total == 0 {
                        1.0
                    } else {
                        s.counts[(*f - 1) as usize] as f64
                    };
                    (p.as_slice(), w)
                })
                .collect();
            self.global = Arc::new(weighted_mean(&items)?);
        }
        self.returned.clear();
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
            // Every client reported, or every one but those absent (at least one report).
            let complete = self.reports.get(&r).is_some_and(|m| {
                !m.is_empty()
                    && (1..=n as NodeId).all(|c| m.contains_key(&c) || self.absent.contains(&c))
            });
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
                peak_accuracy: (peaks.len() == reports.len())
                    .then(|| mean(&peaks))
                    .flatten(),
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
    type Protocol = MutualProtocol;

    fn id(&self) -> NodeId {
        HUB
    }

    fn on_start(&mut self, ctx: &mut MutualCtx<'_>) -> EngineResult {
        self.version += 1;
        if !std::mem::take(&mut self.resumed) {
            if self.fml() {
                self.start_round(ctx, 1)?;
            }
            return Ok(());
        }
        // Resumed: the round's global model goes out again to those that have not returned
        // it (a second copy is refused), and the open deadlines start again.
        let s = Arc::clone(&self.settings);
        if self.fml() && self.round > 0 && !self.done {
            for to in common::unanswered(&self.returned) {
                self.send_global(ctx, to)?;
            }
            if let Some(d) = s.round_deadline {
                ctx.set_deadline(returns_token(self.round), d);
            }
        }
        if let Some(d) = s.round_deadline {
            for &r in self.reports.keys() {
                self.timed.insert(r);
                ctx.set_deadline(reports_token(r), d);
            }
        }
        self.flush(ctx);
        Ok(())
    }

    /// Changes with every input: the reports in, the points reported and FML's round are
    /// durable.
    fn state_version(&self) -> u64 {
        self.version
    }

    fn save_state(&self) -> Option<NodeState> {
        let meta = HubMeta {
            reported: self.reported,
            prev_bytes: self.prev_bytes,
            reports: self.reports.clone(),
            absent: self.absent.iter().copied().collect(),
            global_eval: self.global_eval.clone(),
            bytes_sent: self.bytes_sent,
            sent_through: self.sent_through.clone(),
            round: self.round,
            returned: self
                .returned
                .iter()
                .map(|(c, p)| (*c, p.is_some()))
                .collect(),
        };
        let mut tensors = Vec::new();
        if self.fml() {
            tensors.push(("global".to_string(), self.global.to_vec()));
            for (c, p) in &self.returned {
                if let Some(p) = p {
                    tensors.push((format!("returned/{c}"), p.to_vec()));
                }
            }
        }
        Some(NodeState {
            meta: serde_json::to_value(meta).ok()?,
            tensors,
            blobs: Vec::new(),
        })
    }

    fn load_state(&mut self, state: NodeState) -> EngineResult {
        self.restore(&state)
            .map_err(|why| EngineError::Checkpoint(format!("checkpoint: {why}")))
    }

    fn on_message(&mut self, from: NodeId, msg: Msg, ctx: &mut MutualCtx<'_>) -> EngineResult {
        self.version += 1;
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
        let late = match &msg {
            Msg::Report { round, .. } => *round <= self.reported,
            Msg::Model { round, .. } => self.fml() && *round < self.round,
        };
        if late && s.round_deadline.is_some() {
            // Expected after a deadline: the point or round went on without it.
            tracing::info!("late {kind} from node {from}: ignored");
            return Ok(());
        }
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
                self.absent.remove(&from);
                if let Some(d) = s.round_deadline {
                    if self.timed.insert(round) {
                        ctx.set_deadline(reports_token(round), d);
                    }
                }
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
                    self.finish_fml_round(ctx, round)?;
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

    /// An evaluation point's reports or an FML round's models passed their deadline: the
    /// point is reported without the missing clients (absent until they report again), and
    /// the round goes on with the models that came.
    fn on_deadline(&mut self, token: u64, ctx: &mut MutualCtx<'_>) -> EngineResult {
        self.version += 1;
        let round = u32::try_from(token / 2).unwrap_or(u32::MAX);
        if token % 2 == 1 {
            if !self.fml() || round != self.round || self.returned.is_empty() {
                return Ok(()); // a round that already completed
            }
            let missing = common::unanswered(&self.returned);
            tracing::warn!("FML round {round}: no model back from {missing:?} in time; going on");
            return self.finish_fml_round(ctx, round).map(|()| self.flush(ctx));
        }
        let n = self.settings.clients() as NodeId;
        let mut missing = Vec::new();
        for (_, got) in self.reports.range(..=round) {
            missing.extend((1..=n).filter(|c| !got.contains_key(c)));
        }
        if !missing.is_empty() {
            tracing::warn!(
                "evaluation point {round}: no report from {missing:?} in time; going on"
            );
        }
        self.absent.extend(missing);
        self.flush(ctx);
        Ok(())
    }
}
