//! Decentralized SGD's protocol (`dsgd`, tag 2). A restarted peer catches up with the control
//! messages [`crate::wire::Control::JoinRequest`] and [`crate::wire::Control::JoinReply`].

use braid_core::bytes::{Reader, Writer};

use crate::wire::{unknown_kind, Limits, Message, Tensor, WireError};

const KIND_GOSSIP: u8 = 1;
const KIND_SNAPSHOT: u8 = 2;

/// A message of decentralized SGD.
#[derive(Debug, Clone, PartialEq)]
pub enum Msg {
    /// Peer to peer: my parameters for gossip round `round` (exact, or packed with
    /// `compression.gossip`).
    Gossip {
        /// Communication round, from 1.
        round: u32,
        /// The sender's parameters (shared between its out-neighbours in-process).
        model: Tensor,
    },
    /// Peer to monitor: my local model at an evaluation point, for the run's metrics and the
    /// counterfactual global merge. Measurement traffic, not gossip.
    Snapshot {
        /// Local steps taken so far.
        step: u64,
        /// Mean training loss since the previous snapshot.
        train_loss: f32,
        /// Test accuracy of the local model.
        accuracy: f32,
        /// Test loss of the local model.
        loss: f32,
        /// Gossip bytes this peer has sent so far.
        gossip_bytes: u64,
        /// The local parameters, exactly (shared with the peer's own copy in-process).
        model: Tensor,
    },
}

impl Message for Msg {
    const PROTOCOL: &'static str = "dsgd";
    const TAG: u8 = 2;
    const VERSION: u8 = 1;

    fn kind(&self) -> &'static str {
        match self {
            Self::Gossip { .. } => "gossip",
            Self::Snapshot { .. } => "snapshot",
        }
    }

    fn round(&self) -> Option<u64> {
        Some(match self {
            Self::Gossip { round, .. } => u64::from(*round),
            Self::Snapshot { step, .. } => *step,
        })
    }

    fn encoded_len(&self) -> usize {
        1 + match self {
            Self::Gossip { model, .. } => 4 + model.encoded_len(),
            Self::Snapshot { model, .. } => 8 + 4 + 4 + 4 + 8 + model.encoded_len(),
        }
    }

    fn encode(&self, w: &mut Writer) {
        match self {
            Self::Gossip { round, model } => {
                w.u8(KIND_GOSSIP);
                w.u32(*round);
                model.encode(w);
            }
            Self::Snapshot {
                step,
                train_loss,
                accuracy,
                loss,
                gossip_bytes,
                model,
            } => {
                w.u8(KIND_SNAPSHOT);
                w.u64(*step);
                for v in [train_loss, accuracy, loss] {
                    w.f32(*v);
                }
                w.u64(*gossip_bytes);
                model.encode(w);
            }
        }
    }

    fn decode(r: &mut Reader<'_>, limits: &Limits) -> Result<Self, WireError> {
        Ok(match r.u8("kind")? {
            KIND_GOSSIP => Self::Gossip {
                round: r.u32("round")?,
                model: Tensor::decode(r, limits)?,
            },
            KIND_SNAPSHOT => Self::Snapshot {
                step: r.u64("step")?,
                train_loss: r.f32("train_loss")?,
                accuracy: r.f32("accuracy")?,
                loss: r.f32("loss")?,
                gossip_bytes: r.u64("gossip_bytes")?,
                model: Tensor::decode(r, limits)?,
            },
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
            for m in [
                Msg::Gossip { round, model: Tensor::exact(params.clone()) },
                Msg::Gossip { round, model: Tensor::packed(params.iter().map(|v| *v as u8).collect()) },
                Msg::Snapshot { step: u64::from(round) * 7, train_loss: 0.25, accuracy: 0.5, loss: 1.5, gossip_bytes: 1 << 40, model: Tensor::exact(params.clone()) },
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
        for m in [
            Msg::Gossip {
                round: 1,
                model: Tensor::exact(vec![1.0; 3]),
            },
            Msg::Snapshot {
                step: 5,
                train_loss: 0.1,
                accuracy: 0.2,
                loss: 0.3,
                gossip_bytes: 9,
                model: Tensor::exact(vec![1.0; 3]),
            },
        ] {
            let bytes = Body::Msg(m).encode();
            for cut in 0..bytes.len() {
                assert!(Body::<Msg>::decode(&bytes[..cut], &Limits::new(10)).is_err());
            }
            assert!(Body::<Msg>::decode(&bytes, &Limits::new(2)).is_err());
        }
    }
}
