//! The FedAvg family's protocol (`fedavg`, tag 1): FedAvg, FedProx, FedBuff and the
//! centralized baseline speak it.

use std::sync::Arc;

use braid_core::bytes::{Reader, Writer};

use crate::wire::{unknown_kind, Limits, Message, Tensor, WireError};

const KIND_REQUEST: u8 = 1;
const KIND_REPLY: u8 = 2;
const KIND_DELTA_REQUEST: u8 = 3;
const KIND_SECAGG: u8 = 4;

/// A message of the FedAvg family.
#[derive(Debug, Clone, PartialEq)]
pub enum Msg {
    /// Server to client: train from this model for round `round` (exact, or packed with
    /// `compression.downlink`).
    Request {
        /// Round number, from 1.
        round: u32,
        /// The global model.
        model: Tensor,
    },
    /// Server to client (`compression.downlink_delta`): train from your copy of the model of
    /// round `base` plus this packed change, which makes the model of round `round`.
    DeltaRequest {
        /// Round number, from 1.
        round: u32,
        /// The round of the copy the change applies to.
        base: u32,
        /// The change, packed.
        delta: Tensor,
    },
    /// Client to server: the result of local training.
    Reply {
        /// Round being answered.
        round: u32,
        /// Training samples the client holds (FedAvg's weight).
        num_samples: u64,
        /// Local optimizer steps taken.
        steps: u32,
        /// Mean local training loss.
        train_loss: f32,
        /// The trained parameters, exactly; or, with `compression.uplink`, the update
        /// (trained parameters minus the model received), packed.
        update: Tensor,
    },
    /// Secure aggregation, either way: a `braid_core::secagg::Message` of round `round`,
    /// encoded; its own decoder validates it.
    SecAgg {
        /// Round number, from 1.
        round: u32,
        /// The encoded protocol message (shared between recipients in-process).
        body: Arc<Vec<u8>>,
    },
}

impl Message for Msg {
    const PROTOCOL: &'static str = "fedavg";
    const TAG: u8 = 1;
    const VERSION: u8 = 1;

    fn kind(&self) -> &'static str {
        match self {
            Self::Request { .. } => "train-request",
            Self::DeltaRequest { .. } => "delta-request",
            Self::Reply { .. } => "train-reply",
            Self::SecAgg { .. } => "secagg",
        }
    }

    fn round(&self) -> Option<u64> {
        match self {
            Self::Request { round, .. }
            | Self::DeltaRequest { round, .. }
            | Self::Reply { round, .. }
            | Self::SecAgg { round, .. } => Some(u64::from(*round)),
        }
    }

    fn encoded_len(&self) -> usize {
        1 + match self {
            Self::Request { model, .. } => 4 + model.encoded_len(),
            Self::DeltaRequest { delta, .. } => 4 + 4 + delta.encoded_len(),
            Self::Reply { update, .. } => 4 + 8 + 4 + 4 + update.encoded_len(),
            Self::SecAgg { body, .. } => 4 + 4 + body.len(),
        }
    }

    fn encode(&self, w: &mut Writer) {
        match self {
            Self::Request { round, model } => {
                w.u8(KIND_REQUEST);
                w.u32(*round);
                model.encode(w);
            }
            Self::DeltaRequest { round, base, delta } => {
                w.u8(KIND_DELTA_REQUEST);
                w.u32(*round);
                w.u32(*base);
                delta.encode(w);
            }
            Self::Reply {
                round,
                num_samples,
                steps,
                train_loss,
                update,
            } => {
                w.u8(KIND_REPLY);
                w.u32(*round);
                w.u64(*num_samples);
                w.u32(*steps);
                w.f32(*train_loss);
                update.encode(w);
            }
            Self::SecAgg { round, body } => {
                w.u8(KIND_SECAGG);
                w.u32(*round);
                w.len_bytes(body);
            }
        }
    }

    fn decode(r: &mut Reader<'_>, limits: &Limits) -> Result<Self, WireError> {
        Ok(match r.u8("kind")? {
            KIND_REQUEST => Self::Request {
                round: r.u32("round")?,
                model: Tensor::decode(r, limits)?,
            },
            KIND_DELTA_REQUEST => Self::DeltaRequest {
                round: r.u32("round")?,
                base: r.u32("base")?,
                delta: Tensor::decode(r, limits)?,
            },
            KIND_REPLY => Self::Reply {
                round: r.u32("round")?,
                num_samples: r.u64("num_samples")?,
                steps: r.u32("steps")?,
                train_loss: r.f32("train_loss")?,
                update: Tensor::decode(r, limits)?,
            },
            KIND_SECAGG => {
                let round = r.u32("round")?;
                // A masked vector of the largest model and a few statistics, or the keys and
                // shares of up to a few thousand clients.
                let limit = (1usize << 20).saturating_add(limits.max_values.saturating_mul(8));
                Self::SecAgg {
                    round,
                    body: Arc::new(r.len_bytes("secagg length", limit)?.to_vec()),
                }
            }
            k => return Err(unknown_kind(Self::PROTOCOL, k)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Body;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn messages_round_trip_with_exact_lengths(params in prop::collection::vec(-1e6f32..1e6, 0..64), round in 0u32..1000) {
            let bytes: Vec<u8> = params.iter().map(|v| *v as u8).collect();
            for m in [
                Msg::Request { round, model: Tensor::exact(params.clone()) },
                Msg::Request { round, model: Tensor::packed(bytes.clone()) },
                Msg::DeltaRequest { round, base: round / 2, delta: Tensor::packed(bytes.clone()) },
                Msg::Reply { round, num_samples: 600, steps: 19, train_loss: 0.5, update: Tensor::exact(params.clone()) },
                Msg::Reply { round, num_samples: 3, steps: 4, train_loss: 0.5, update: Tensor::packed(bytes.clone()) },
                Msg::SecAgg { round, body: Arc::new(bytes.clone()) },
            ] {
                let body = Body::Msg(m);
                let encoded = body.encode();
                prop_assert_eq!(encoded.len(), body.encoded_len());
                prop_assert_eq!(Body::<Msg>::decode(&encoded, &Limits::new(64)).unwrap(), body);
            }
        }
    }

    #[test]
    fn hostile_messages_are_refused() {
        let good = Body::Msg(Msg::Reply {
            round: 3,
            num_samples: 600,
            steps: 19,
            train_loss: 0.5,
            update: Tensor::exact(vec![1.0, 2.0]),
        })
        .encode();
        for cut in 0..good.len() {
            assert!(Body::<Msg>::decode(&good[..cut], &Limits::new(10)).is_err());
        }
        assert_eq!(
            Body::<Msg>::decode(&good, &Limits::new(1)),
            Err(WireError::TooLarge { got: 2, max: 1 })
        );
        let mut bad_kind = good.clone();
        bad_kind[4] = 99;
        assert_eq!(
            Body::<Msg>::decode(&bad_kind, &Limits::new(10)),
            Err(WireError::Malformed(
                "unknown fedavg message kind 99".into()
            ))
        );
        // A count announcing four billion values.
        let mut huge = good[..4 + 1 + 4 + 8 + 4 + 4].to_vec();
        huge.extend_from_slice(&0x7fff_ffffu32.to_le_bytes());
        assert!(Body::<Msg>::decode(&huge, &Limits::new(usize::MAX)).is_err());
    }
}
