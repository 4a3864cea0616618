//! `[compression]` on the FedAvg family's path: the server sends the model quantized
//! (`downlink`, [`model_request`]; or the change to the clients' copy of it,
//! [`super::downlink`]), and clients send their update compressed ([`Uplink`]), optionally
//! with error feedback or as PowerSGD's low-rank factors. The server adds each decoded update
//! to its exact global model, so only what crosses the wire is approximated.
//!
//! Composes with attacks, DP and robust rules (they see the decoded update); refuses
//! secure aggregation's uplink ([`super::secure::check`]); what each algorithm takes is
//! checked by `algorithms::common::check_compression`.

use std::sync::Arc;

use braid_core::compress::{self, Compression, ErrorFeedback, Sparsify};
use braid_core::lowrank::{Block, PowerSgd};
use braid_core::seed;

use crate::algorithms::fedavg::{Msg, SERVER};
use crate::config::CompressionConfig;
use crate::node::{EngineError, EngineResult};
use crate::wire::{NodeId, Tensor};

/// A client's train reply, as a server reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// The round answered.
    pub round: u32,
    /// The client's training samples.
    pub num_samples: u64,
    /// Its local optimizer steps.
    pub steps: u32,
    /// Its mean local training loss.
    pub train_loss: f32,
    /// What it trained.
    pub update: Update,
}

/// The update a train reply carries.
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    /// The trained parameters, exactly.
    Trained(Vec<f32>),
    /// The change from the model the client trained from (`compression.uplink`), unpacked.
    Delta(Vec<f32>),
}

/// Reads `msg` as a train reply for a model of `len` parameters; why it is refused if it is
/// another kind or its packed update does not unpack to `len` values.
pub fn answer(msg: Msg, len: usize) -> Result<Answer, String> {
    let Msg::Reply {
        round,
        num_samples,
        steps,
        train_loss,
        update,
    } = msg
    else {
        return Err("the server only accepts train replies".into());
    };
    let update = match update {
        Tensor::Exact(params) => {
            Update::Trained(Arc::try_unwrap(params).unwrap_or_else(|p| (*p).clone()))
        }
        Tensor::Packed(bytes) => {
            Update::Delta(compress::decode(&bytes, len).map_err(|e| format!("update: {e}"))?)
        }
    };
    Ok(Answer {
        round,
        num_samples,
        steps,
        train_loss,
        update,
    })
}

/// A client's compressed way out for its update.
pub struct Uplink {
    compression: Compression,
    feedback: Option<ErrorFeedback>,
    /// The model's matrix-shaped tensors and PowerSGD's warm-start state (power-sgd).
    lowrank: (Vec<Block>, PowerSgd),
}

impl Uplink {
    /// The uplink `config` sets (none without `compression.uplink`), for a model whose
    /// matrix-shaped tensors are `blocks`.
    pub fn of(config: &CompressionConfig, blocks: Vec<Block>) -> Option<Self> {
        config.uplink.map(|compression| Self {
            compression,
            feedback: config.error_feedback.then(ErrorFeedback::default),
            lowrank: (blocks, PowerSgd::default()),
        })
    }

    /// The model's matrix-shaped tensors (for power-sgd).
    pub fn set_blocks(&mut self, blocks: Vec<Block>) {
        self.lowrank.0 = blocks;
    }

    /// Encodes client `client`'s update `delta` of round `round` (random choices from the
    /// experiment seed `seed`).
    pub fn encode(
        &mut self, delta: &[f32], seed: u64, client: NodeId, round: u32,
    ) -> EngineResult<Vec<u8>> {
        let c = &self.compression;
        let mut rng = seed::rng(
            seed,
            &[seed::stream::COMPRESS, u64::from(client), u64::from(round)],
        );
        match (c.sparsify, &mut self.feedback) {
            (Sparsify::PowerSgd { rank }, ef) => {
                let (blocks, ps) = &mut self.lowrank;
                let mut encode = |v: &[f32]| ps.encode(v, blocks, rank, c.quantize, &mut rng);
                match ef {
                    Some(ef) => ef.encode_with(delta, encode),
                    None => encode(delta),
                }
            }
            (_, Some(ef)) => ef.encode(delta, c, &mut rng),
            (_, None) => compress::encode(delta, c, &mut rng),
        }
        .map_err(|e| EngineError::Failed(e.to_string()))
    }
}

/// The request to train from `params` in round `round`: the model in f32, or compressed with
/// `downlink` (random choices seeded by the experiment seed and the round).
pub fn model_request(
    round: u32, params: &[f32], downlink: Option<&Compression>, experiment_seed: u64,
) -> EngineResult<Msg> {
    let model = match downlink {
        Some(c) => {
            let key = [u64::from(SERVER), u64::from(round)];
            let packed = compress::encode_seeded(params, c, experiment_seed, &key)
                .map_err(|e| EngineError::Failed(e.to_string()))?;
            Tensor::packed(packed)
        }
        None => Tensor::exact(params.to_vec()),
    };
    Ok(Msg::Request { round, model })
}
