//! The FedAvg client: trains on its shard when asked, applies its update layers and sends
//! the update back.

use std::sync::Arc;

use braid_core::compress::{self};
use braid_core::lowrank::Block;
use braid_core::lr_schedule::LrSchedule;
use braid_core::seed;

use super::layers::compression::Uplink;
use super::layers::privacy::LocalDp;
use super::layers::{self, downlink, secure, UpdateLayer};
use super::{FedCtx, FedProtocol, Msg, SecureSettings, SERVER};
use crate::config::{CompressionConfig, PrivacyConfig};
use crate::node::{EngineError, EngineResult, Node};
use crate::wire::{Control, Message, NodeId, Tensor};

/// Applies `f` to the update `trained - received` and writes `received + update` back into
/// `trained`.
pub(in crate::algorithms::fedavg) fn rewrite_update(
    trained: &mut Vec<f32>, received: &[f32], f: impl FnOnce(&mut [f32]),
) -> EngineResult {
    let mut delta = braid_core::params::sub(trained, received)?;
    f(&mut delta);
    *trained = received.iter().zip(&delta).map(|(p, d)| p + d).collect();
    Ok(())
}

/// How long a restarted client waits for a request before it asks the server for one.
pub const JOIN_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
/// The deadline token of that wait.
const JOIN_TOKEN: u64 = u64::MAX;

/// A FedAvg client: holds its shard of the training set, trains when asked.
pub struct FedAvgClient {
    pub(in crate::algorithms::fedavg) id: NodeId,
    pub(in crate::algorithms::fedavg) shard: Arc<Vec<usize>>,
    pub(in crate::algorithms::fedavg) seed: u64,
    pub(in crate::algorithms::fedavg) lr_schedule: LrSchedule,
    pub(in crate::algorithms::fedavg) rounds: u32,
    pub(in crate::algorithms::fedavg) done: bool,
    /// Restarted into a running run: every [`JOIN_WAIT`] it tells the server the latest round
    /// it has a request for (a join request); a server waiting on it for a later round sends
    /// that round's request again (the one it had was lost with the process).
    rejoined: bool,
    /// The latest round it was asked to train since it started (0: none).
    latest: u32,
    /// The model's size (to decode compressed requests).
    pub(in crate::algorithms::fedavg) num_params: usize,
    /// Compression of this client's updates (`compression.uplink`).
    pub(in crate::algorithms::fedavg) uplink: Option<Uplink>,
    /// The model's matrix-shaped tensors (for a power-sgd uplink).
    pub(in crate::algorithms::fedavg) blocks: Vec<Block>,
    /// Update layers, applied in this order: a simulated attacker, then local DP.
    pub(in crate::algorithms::fedavg) attack: Option<layers::attack::Attacker>,
    pub(in crate::algorithms::fedavg) local_dp: Option<LocalDp>,
    /// Secure aggregation: the settings, and the current round's state.
    pub(in crate::algorithms::fedavg) secure: Option<SecureSettings>,
    pub(in crate::algorithms::fedavg) sec: Option<secure::ClientSec>,
    /// With `downlink_delta`: this client's copy of the model.
    pub(in crate::algorithms::fedavg) copy: Option<downlink::ClientCopy>,
}

/// The batch-order seed and learning-rate scale of client `client`'s local training in round
/// `round` of `rounds` (experiment seed `seed`, schedule `schedule` over the rounds): the
/// FedAvg family's convention, for algorithms that want to train as its clients do.
pub fn local_training(
    seed: u64, client: NodeId, round: u32, rounds: u32, schedule: &LrSchedule,
) -> (u64, f64) {
    let s = seed::derive(
        seed,
        &[
            seed::stream::LOCAL_TRAIN,
            u64::from(round),
            u64::from(client),
        ],
    );
    let progress = f64::from(round.saturating_sub(1)) / f64::from(rounds);
    (s, schedule.factor(progress))
}

impl FedAvgClient {
    /// Client `id` holding training samples `shard`, training at the configured learning rate.
    pub fn new(id: NodeId, shard: Arc<Vec<usize>>, seed: u64) -> Self {
        Self {
            id,
            shard,
            seed,
            lr_schedule: LrSchedule::Constant,
            rounds: 1,
            done: false,
            rejoined: false,
            latest: 0,
            num_params: 0,
            uplink: None,
            blocks: Vec::new(),
            attack: None,
            local_dp: None,
            secure: None,
            sec: None,
            copy: None,
        }
    }

    /// Keeps a copy of the model, starting from `initial` (the server's initial model), to
    /// which the server sends changes (`compression.downlink_delta`).
    pub fn with_model_copy(mut self, initial: Option<Vec<f32>>) -> Self {
        self.copy = initial.map(downlink::ClientCopy::new);
        self
    }

    /// Makes this client an attacker that applies `attack` to every update it sends.
    pub fn with_attack(mut self, attack: Option<braid_core::robust::Attack>) -> Self {
        self.attack = attack.map(layers::attack::Attacker);
        self
    }

    /// With local DP (`[privacy] mode = "local"`), clips its update to `clip` and adds
    /// Gaussian noise of standard deviation `noise_multiplier * clip` before sending.
    pub fn with_privacy(mut self, config: Option<PrivacyConfig>) -> Self {
        self.local_dp = LocalDp::of(config);
        self
    }

    /// Accepts compressed requests for a model of `num_params` values, and compresses its
    /// updates as `compression` says.
    pub fn with_compression(mut self, compression: &CompressionConfig, num_params: usize) -> Self {
        self.num_params = num_params;
        self.uplink = Uplink::of(compression, self.blocks.clone());
        self
    }

    /// The model's matrix-shaped tensors, which a `power-sgd` uplink compresses.
    pub fn with_matrix_blocks(mut self, blocks: Vec<Block>) -> Self {
        if let Some(uplink) = self.uplink.as_mut() {
            uplink.set_blocks(blocks.clone());
        }
        self.blocks = blocks;
        self
    }

    /// The update layers this client applies, in order.
    pub(in crate::algorithms::fedavg) fn update_layers(
        &self,
    ) -> impl Iterator<Item = &dyn UpdateLayer> {
        let attack = self.attack.as_ref().map(|a| a as &dyn UpdateLayer);
        let dp = self.local_dp.as_ref().map(|d| d as &dyn UpdateLayer);
        attack.into_iter().chain(dp)
    }

    /// Scales the learning rate of round `r` by `schedule` at progress `(r - 1) / rounds`.
    pub fn with_lr_schedule(mut self, schedule: LrSchedule, rounds: u32) -> Self {
        self.lr_schedule = schedule;
        self.rounds = rounds.max(1);
        self
    }
}

impl Node for FedAvgClient {
    type Protocol = FedProtocol;

    fn id(&self) -> NodeId {
        self.id
    }

    fn listens_to(&self) -> Option<Vec<NodeId>> {
        Some(vec![SERVER])
    }

    fn finished(&self) -> bool {
        self.done
    }

    fn on_start(&mut self, ctx: &mut FedCtx<'_>) -> EngineResult {
        if self.rejoined {
            ctx.set_deadline(JOIN_TOKEN, JOIN_WAIT);
        }
        Ok(())
    }

    fn on_deadline(&mut self, token: u64, ctx: &mut FedCtx<'_>) -> EngineResult {
        if token == JOIN_TOKEN && !self.done {
            ctx.send_control(
                SERVER,
                Control::JoinRequest {
                    step: u64::from(self.latest),
                },
            );
            ctx.set_deadline(JOIN_TOKEN, JOIN_WAIT);
        }
        Ok(())
    }

    fn rejoin(&mut self) {
        self.rejoined = true;
    }

    fn on_control(&mut self, from: NodeId, c: Control, _ctx: &mut FedCtx<'_>) -> EngineResult {
        match c {
            Control::Shutdown { .. } if from == SERVER => {
                self.done = true;
                Ok(())
            }
            c => Err(EngineError::Rejected {
                node: self.id,
                from,
                kind: c.kind(),
                why: "a client only takes a shutdown from the server".into(),
            }),
        }
    }

    fn on_message(&mut self, from: NodeId, msg: Msg, ctx: &mut FedCtx<'_>) -> EngineResult {
        use crate::wire::Message as _;
        let kind = msg.kind();
        if from != SERVER {
            return Err(EngineError::Rejected {
                node: self.id,
                from,
                kind,
                why: "a client only listens to the server".into(),
            });
        }
        let reject = EngineError::rejecter(self.id, from, kind);
        if let Msg::Request { round, .. } | Msg::DeltaRequest { round, .. } = &msg {
            self.latest = self.latest.max(*round);
        }
        let (round, params) = match msg {
            Msg::Request {
                round,
                model: Tensor::Exact(params),
            } => {
                if let Some(copy) = self.copy.as_mut() {
                    copy.replace(round, &params)
                        .map_err(|e| reject(format!("model: {e}")))?;
                }
                (round, params)
            }
            Msg::DeltaRequest { round, base, delta } => {
                let copy = self
                    .copy
                    .as_mut()
                    .ok_or_else(|| reject("this client keeps no copy of the model".into()))?;
                if !copy.can_apply(round, base) {
                    // Its copy is not the one the server thinks (this client restarted, and
                    // its join request was lost): ask for the whole model.
                    ctx.send_control(SERVER, Control::JoinRequest { step: 0 });
                    return Ok(());
                }
                let delta = delta
                    .packed_bytes()
                    .map_err(|e| reject(format!("model change: {e}")))?;
                let params = copy
                    .apply(round, base, delta)
                    .map_err(|e| reject(format!("model change: {e}")))?;
                (round, Arc::new(params.to_vec()))
            }
            Msg::Request {
                round,
                model: Tensor::Packed(model),
            } => {
                let params = compress::decode(&model, self.num_params)
                    .map_err(|e| reject(format!("model: {e}")))?;
                (round, Arc::new(params))
            }
            Msg::SecAgg { round, body } => return self.on_secagg(round, &body, ctx),
            Msg::Reply { .. } => {
                return Err(EngineError::Rejected {
                    node: self.id,
                    from,
                    kind,
                    why: "a client only accepts train requests".into(),
                })
            }
        };
        let (s, lr_scale) =
            local_training(self.seed, self.id, round, self.rounds, &self.lr_schedule);
        let mut out = if self.update_layers().any(|l| l.flips_labels()) {
            ctx.trainer
                .label_flipper()
                .ok_or_else(crate::trainer::no_label_flipping)?
                .train_label_flipped(&params, &self.shard, s, lr_scale)?
        } else {
            ctx.trainer.train(&params, &self.shard, s, lr_scale)?
        };
        // The update layers rewrite the update before it is sent.
        for layer in self.update_layers() {
            rewrite_update(&mut out.params, &params, |d| {
                layer.rewrite(d, self.seed, self.id, round);
            })?;
        }
        if self.secure.is_some() {
            let update = braid_core::params::sub(&out.params, &params)?;
            return self.secure_start(
                round,
                &update,
                self.shard.len() as u64,
                out.steps as u32,
                out.mean_loss as f32,
                ctx,
            );
        }
        let reply = match &mut self.uplink {
            None => Msg::Reply {
                round,
                num_samples: self.shard.len() as u64,
                steps: out.steps as u32,
                train_loss: out.mean_loss as f32,
                update: Tensor::exact(out.params),
            },
            Some(uplink) => {
                let delta = braid_core::params::sub(&out.params, &params)?;
                let update = uplink.encode(&delta, self.seed, self.id, round)?;
                Msg::Reply {
                    round,
                    num_samples: self.shard.len() as u64,
                    steps: out.steps as u32,
                    train_loss: out.mean_loss as f32,
                    update: Tensor::packed(update),
                }
            }
        };
        ctx.send(SERVER, reply);
        Ok(())
    }
}
