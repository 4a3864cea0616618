//! The split-learning client: runs its part of the model forward and backward for the server's global batches.

use super::*;

/// A split-learning client: runs the client part on its own samples.
pub struct SplitClient {
    id: NodeId,
    shard: Arc<Vec<usize>>,
    seed: u64,
    /// The epoch whose sample order is cached, and that order.
    order: Option<(u32, Vec<usize>)>,
    /// The request being served: step, samples, client-part parameters.
    pending: Option<(u64, Vec<usize>, Arc<Vec<f32>>)>,
    /// `compression.split`, the client part's parameter count and the cut's values per
    /// sample (the sizes it decodes messages to).
    compression: Option<(Compression, usize, usize)>,
    done: bool,
}

impl SplitClient {
    /// Client `id` holding training samples `shard`.
    pub fn new(id: NodeId, shard: Arc<Vec<usize>>, seed: u64) -> Self {
        Self {
            id,
            shard,
            seed,
            order: None,
            pending: None,
            compression: None,
            done: false,
        }
    }

    /// Compresses what it sends and expects compressed messages if the run's settings have
    /// `compression.split`.
    pub fn with_compression(mut self, settings: &SplitSettings) -> Self {
        self.compression = settings
            .compression
            .map(|c| (c, settings.client_params, settings.cut_features));
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
    type Msg = Msg;
    type Metrics = SplitMetrics;
    type Trainer = dyn SplitLearner;

    fn id(&self) -> NodeId {
        self.id
    }

    fn on_start(&mut self, _ctx: &mut SplitCtx<'_>) -> EngineResult {
        Ok(())
    }

    fn finished(&self) -> bool {
        self.done
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
        let compression = self.compression.map(|(c, _, _)| c);
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
                        let n = self.compression.map_or(0, |(_, n, _)| n);
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
                self.pending = Some((step, samples, params));
                Ok(())
            }
            Msg::Gradient { step, grad } => {
                let Some((s, samples, params)) = self.pending.take() else {
                    return Err(reject(format!("no request is open for step {step}")));
                };
                // A packed gradient has the activations' shape: features per sample x samples.
                let f = self.compression.map_or(0, |(_, _, f)| f);
                let grad = match values(grad, f.saturating_mul(samples.len()), "gradient") {
                    Ok(g) => g,
                    Err(why) => {
                        self.pending = Some((s, samples, params));
                        return Err(reject(why));
                    }
                };
                if s != step {
                    self.pending = Some((s, samples, params));
                    return Err(reject(format!("for step {step}, the open step is {s}")));
                }
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
                Ok(())
            }
            c => Err(EngineError::rejecter(self.id, from, c.kind())(
                "a split client only takes a shutdown from the server".into(),
            )),
        }
    }
}
