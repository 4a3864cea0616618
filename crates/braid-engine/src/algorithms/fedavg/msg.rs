//! The FedAvg family's protocol (`fedavg`, tag 1): FedAvg, FedProx, FedBuff and the
//! centralized baseline speak it.

use std::sync::Arc;

use braid_core::bytes::{Reader, Writer};

use crate::wire::{Codec, Limits, Tensor, WireError};

crate::protocol! {
    /// A message of the FedAvg family. Rounds count from 1.
    pub enum Msg {
        protocol: "fedavg", tag: 1, version: 1;
        /// Server to client: train from `model`, the global model, for round `round` (exact,
        /// or packed with `compression.downlink`). Replayed: a client trains from the model
        /// in the request alone, with a fresh optimizer.
        Request(1, "train-request", round = round) [replay] { round: u32, model: Tensor },
        /// Client to server, answering round `round`: the client holds `num_samples` training
        /// samples (FedAvg's weight), took `steps` local optimizer steps at a mean training
        /// loss of `train_loss`; `update` is the trained parameters, exactly, or with
        /// `compression.uplink` the update (trained parameters minus the model received),
        /// packed.
        Reply(2, "train-reply", round = round) {
            round: u32, num_samples: u64, steps: u32, train_loss: f32, update: Tensor,
        },
        /// Server to client (`compression.downlink_delta`): train from your copy of the model
        /// of round `base` plus `delta`, a packed change, which makes the model of round
        /// `round`.
        DeltaRequest(3, "delta-request", round = round) { round: u32, base: u32, delta: Tensor },
        /// Secure aggregation, either way: `body` is a `braid_core::secagg::Message` of round
        /// `round`, encoded (shared between recipients in-process); its own decoder validates
        /// it.
        SecAgg(4, "secagg", round = round) { round: u32, body: Arc<Vec<u8>> as SecAggBytes },
    }
}

/// A secure-aggregation message's bytes after a `u32` length: a masked vector of the largest
/// model and a few statistics, or the keys and shares of up to a few thousand clients.
struct SecAggBytes;

impl Codec<Arc<Vec<u8>>> for SecAggBytes {
    fn size(value: &Arc<Vec<u8>>) -> usize {
        4 + value.len()
    }
    fn write(value: &Arc<Vec<u8>>, w: &mut Writer) {
        w.len_bytes(value);
    }
    fn read(
        r: &mut Reader<'_>, _: &'static str, limits: &Limits,
    ) -> Result<Arc<Vec<u8>>, WireError> {
        let limit = (1usize << 20).saturating_add(limits.max_values.saturating_mul(8));
        Ok(Arc::new(r.len_bytes("secagg length", limit)?.to_vec()))
    }
}
