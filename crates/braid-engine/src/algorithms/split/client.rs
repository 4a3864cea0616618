//! The split-learning client: runs its part of the model forward and backward for the server's global batches.

use std::collections::VecDeque;

use super::*;

/// An open request: its step, the samples it named and the client part it sent.
type Open = (u64, Vec<usize>, Arc<Vec<f32>>);

/// Requests a client keeps open (a late copy of an old request can arrive after a newer one;
/// a server resumed from its epoch checkpoint asks for some steps again).
const OPEN_REQUESTS: usize = 4;

/// A split-learning client: runs the client part on its own samples.
pub struct SplitClient {
    id: NodeId,
    shard: Arc<Vec<usize>>,
    seed: u64,
    /// The epoch whose sample order is cached, and that order.
    order: Option<(u32, Vec<usize>)>,
    /// The latest requests, oldest first: step, samples, client-part parameters. A few are
    /// kept ([`OPEN_REQUESTS`]), answered gradients included, so that a late second copy of
    /// an earlier request does not replace the one whose gradient comes next, and a gradient
    /// sent again is answered again.
    pending: VecDeque<Open>,
    /// `compression.split` and the client part's parameter count (the size it decodes a
    /// packed client part to).
    compression: Option<(Compression, usize)>,
    /// The cut's values per sample (the size of a gradient's row), once the run's settings
    /// are known.
    cut_features: Option<usize>,
    done: bool,
    /// Bumped whenever `pending` or `done` changes (what a checkpoint holds).
    version: u64,
}

impl SplitClient {
    /// Client `id` holding training samples `shard`.
    pub fn new(id: NodeId, shard: Arc<Vec<usize>>, seed: u64) -> Self {
        Self {
            id,
            shard,
            seed,
            order: None,
            pending: VecDeque::new(),
            compression: None,
            cut_features: None,
            done: false,
            version: 0,
        }
    }

    /// Takes the run's settings: checks the size of every gradient against the cut, and
    /// compresses what it sends and expects compressed messages if they have
    /// `compression.split`.
    pub fn with_settings(mut self, settings: &SplitSettings) -> Self {
        self.compression = settings.compression.map(|c| (c, settings.client_params));
        self.cut_features = Some(settings.cut_features);
        self
    }

    fn order(&mut self, epoch: u32) -> &[usize] {
        if self.order.as_ref().is_none_or(|(e, _)| *e != epoch) {
            let mut o = self.shard.as_ref().clone();
            o.shuffle(&mut seed::rng(
                self.seed,
                &[
                    seed::stream::LOCAL_TRAIN,
                    u64::from(self.id),
                    u64::from(epoch),
                ],
            ));
            self.order = Some((epoch, o));
        }
        self.order.as_ref().map_or(&[], |(_, o)| o.as_slice())
    }
}

impl Node for SplitClient {
    type Protocol = SplitProtocol;

    fn id(&self) -> NodeId {
        self.id
    }

    fn on_start(&mut self, _ctx: &mut SplitCtx<'_>) -> EngineResult {
        Ok(())
    }

    fn finished(&self) -> bool {
        self.done
    }

    fn listens_to(&self) -> Option<Vec<NodeId>> {
        Some(vec![SERVER])
    }

    fn state_version(&self) -> u64 {
        self.version
    }

    /// The open requests (step, samples and client part of each), so that a client
    /// restarted between its activations and the server's gradient can still answer the
    /// gradient; and whether the run is over.
    fn save_state(&self) -> Option<NodeState> {
        let open: Vec<_> = self
            .pending
            .iter()
            .map(|(step, samples, _)| serde_json::json!({ "step": step, "samples": samples }))
            .collect();
        let tensors = self
            .pending
            .iter()
            .enumerate()
            .map(|(i, (_, _, params))| (format!("client_part/{i}"), params.to_vec()))
            .collect();
        Some(NodeState {
            meta: serde_json::json!({ "done": self.done, "open": open }),
            tensors,
            blobs: Vec::new(),
        })
    }

    fn load_state(&mut self, state: NodeState) -> EngineResult {
        let bad = |why: String| EngineError::Checkpoint(format!("checkpoint: {why}"));
        self.done = state.meta.get("done").and_then(serde_json::Value::as_bool) == Some(true);
        let open = state
            .meta
            .get("open")
            .and_then(serde_json::Value::as_array)
            .ok_or_else(|| bad("no open requests".into()))?;
        if open.len() > OPEN_REQUESTS {
            return Err(bad(format!(
                "{} open requests, at most {OPEN_REQUESTS}",
                open.len()
            )));
        }
        let held = self.shard.len();
        let mut pending = VecDeque::new();
        for (i, o) in open.iter().enumerate() {
            let step = o
                .get("step")
                .and_then(serde_json::Value::as_u64)
                .ok_or_else(|| bad("an open request without its step".into()))?;
            let samples = o
                .get("samples")
                .and_then(serde_json::Value::as_array)
                .ok_or_else(|| bad(format!("no samples for step {step}")))?
                .iter()
                .map(|v| {
                    v.as_u64()
                        .and_then(|i| usize::try_from(i).ok())
                        .filter(|i| self.shard.contains(i))
                        .ok_or_else(|| {
                            bad(format!("a sample that is not one of this client's {held}"))
                        })
                })
                .collect::<EngineResult<Vec<usize>>>()?;
            let params = state.tensor(&format!("client_part/{i}"))?.to_vec();
            pending.push_back((step, samples, Arc::new(params)));
        }
        self.pending = pending;
        Ok(())
    }

    fn on_message(&mut self, from: NodeId, msg: Msg, ctx: &mut SplitCtx<'_>) -> EngineResult {
        let kind = msg.kind();
        let node = self.id;
        let reject = EngineError::rejecter(node, from, kind);
        if from != SERVER {
            return Err(reject("only the server sends to split clients".into()));
        }
        if let Some(why) = form_mismatch(self.compression.is_some(), &msg) {
            return Err(reject(why));
        }
        let compression = self.compression.map(|(c, _)| c);
        match msg {
            Msg::Request {
                step,
                epoch,
                offset,
                count,
                client_part,
            } => {
                let params = match client_part {
                    Tensor::Exact(p) => p,
                    Tensor::Packed(b) => {
                        let n = self.compression.map_or(0, |(_, n)| n);
                        Arc::new(unpack(&b, n, "client part").map_err(&reject)?)
                    }
                };
                let (offset, count) = (offset as usize, count as usize);
                let held = self.shard.len();
                if offset.checked_add(count).is_none_or(|end| end > held) {
                    return Err(reject(format!(
                        "samples {offset}..{} asked for, this client holds {held}",
                        offset.saturating_add(count)
                    )));
                }
                let samples = self.order(epoch)[offset..offset + count].to_vec();
                let (acts, labels) = ctx.trainer.split_forward(&params, &samples)?;
                let message = split_message(
                    compression.as_ref(),
                    self.seed,
                    (node, SERVER),
                    step,
                    Part::Activations,
                    labels,
                    acts,
                )?;
                ctx.send(SERVER, message);
                self.pending.retain(|(s, _, _)| *s != step);
                if self.pending.len() == OPEN_REQUESTS {
                    self.pending.pop_front();
                }
                self.pending.push_back((step, samples, params));
                self.version += 1;
                Ok(())
            }
            Msg::Gradient { step, grad } => {
                let Some(at) = self.pending.iter().position(|(s, _, _)| *s == step) else {
                    let open: Vec<u64> = self.pending.iter().map(|(s, _, _)| *s).collect();
                    return Err(reject(format!(
                        "no request is open for step {step} (open: {open:?})"
                    )));
                };
                let (_, samples, params) = &self.pending[at];
                // A gradient has the activations' shape: features per sample x samples.
                let f = self.cut_features.unwrap_or(0);
                let want = f.saturating_mul(samples.len());
                let grad = values(grad, want, "gradient").map_err(&reject)?;
                if self.cut_features.is_some() && grad.len() != want {
                    return Err(reject(format!(
                        "a gradient of {} values for {} samples of {f} values each",
                        grad.len(),
                        samples.len()
                    )));
                }
                // The request stays open: a gradient that comes again (from a server
                // resumed from its epoch checkpoint, which asks the step again after this
                // client answered the run before the crash) is answered again, identically.
                let (samples, params) = (samples.clone(), Arc::clone(params));
                let grad = ctx.trainer.split_backward(&params, &samples, &grad)?;
                let message = split_message(
                    compression.as_ref(),
                    self.seed,
                    (node, SERVER),
                    step,
                    Part::ClientGrad,
                    Vec::new(),
                    grad,
                )?;
                ctx.send(SERVER, message);
                Ok(())
            }
            m => Err(reject(format!("unexpected {}", m.kind()))),
        }
    }

    fn on_control(&mut self, from: NodeId, c: Control, _ctx: &mut SplitCtx<'_>) -> EngineResult {
        match c {
            Control::Shutdown { .. } if from == SERVER => {
                self.done = true;
                self.version += 1;
                Ok(())
            }
            c => Err(EngineError::rejecter(self.id, from, c.kind())(
                "a split client only takes a shutdown from the server".into(),
            )),
        }
    }
}
