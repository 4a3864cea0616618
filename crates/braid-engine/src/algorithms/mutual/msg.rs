//! Mutual learning's protocol (`mutual`, tag 4): DFML, FML, Def-KT and isolated local training
//! speak it.

use braid_core::bytes::{Reader, Writer};

use crate::wire::{unknown_kind, Limits, Message, Tensor, WireError};

const KIND_MODEL: u8 = 1;
const KIND_REPORT: u8 = 2;

/// A message of mutual learning.
#[derive(Debug, Clone, PartialEq)]
pub enum Msg {
    /// Participant to participant: a whole model for round `round`, to be trained by mutual
    /// learning or handed back after it (exact, or packed with `compression.models`).
    Model {
        /// Round, from 1.
        round: u32,
        /// The model's architecture: an index into the run's list of models.
        arch: u32,
        /// Its parameters.
        model: Tensor,
    },
    /// Client to monitor: how the client's models do after round `round`.
    Report {
        /// Round, from 1.
        round: u32,
        /// The client's architecture (index into the run's list of models).
        arch: u32,
        /// Test accuracy of the current model.
        accuracy: f32,
        /// Its test loss.
        loss: f32,
        /// Test accuracy of the peak model (NaN before the first peak).
        peak_accuracy: f32,
        /// Its test loss (NaN before the first peak).
        peak_loss: f32,
        /// Mean training loss of the training this client did since its last report (NaN if
        /// none).
        train_loss: f32,
        /// Bytes of models this client has sent so far.
        bytes_sent: u64,
    },
}

impl Message for Msg {
    const PROTOCOL: &'static str = "mutual";
    const TAG: u8 = 4;
    const VERSION: u8 = 1;

    fn kind(&self) -> &'static str {
        match self {
            Self::Model { .. } => "mutual-model",
            Self::Report { .. } => "mutual-report",
        }
    }

    fn round(&self) -> Option<u64> {
        match self {
            Self::Model { round, .. } | Self::Report { round, .. } => Some(u64::from(*round)),
        }
    }

    fn encoded_len(&self) -> usize {
        1 + match self {
            Self::Model { model, .. } => 4 + 4 + model.encoded_len(),
            Self::Report { .. } => 4 + 4 + 5 * 4 + 8,
        }
    }

    fn encode(&self, w: &mut Writer) {
        match self {
            Self::Model { round, arch, model } => {
                w.u8(KIND_MODEL);
                w.u32(*round);
                w.u32(*arch);
                model.encode(w);
            }
            Self::Report {
                round,
                arch,
                accuracy,
                loss,
                peak_accuracy,
                peak_loss,
                train_loss,
                bytes_sent,
            } => {
                w.u8(KIND_REPORT);
                w.u32(*round);
                w.u32(*arch);
                for v in [accuracy, loss, peak_accuracy, peak_loss, train_loss] {
                    w.f32(*v);
                }
                w.u64(*bytes_sent);
            }
        }
    }

    fn decode(r: &mut Reader<'_>, limits: &Limits) -> Result<Self, WireError> {
        Ok(match r.u8("kind")? {
            KIND_MODEL => Self::Model {
                round: r.u32("round")?,
                arch: r.u32("arch")?,
                model: Tensor::decode(r, limits)?,
            },
            KIND_REPORT => Self::Report {
                round: r.u32("round")?,
                arch: r.u32("arch")?,
                accuracy: r.f32("accuracy")?,
                loss: r.f32("loss")?,
                peak_accuracy: r.f32("peak_accuracy")?,
                peak_loss: r.f32("peak_loss")?,
                train_loss: r.f32("train_loss")?,
                bytes_sent: r.u64("bytes_sent")?,
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
                Msg::Model { round, arch: 2, model: Tensor::exact(params.clone()) },
                Msg::Model { round, arch: 1, model: Tensor::packed(params.iter().map(|v| *v as u8).collect()) },
                Msg::Report { round, arch: 1, accuracy: 0.5, loss: 1.5, peak_accuracy: 0.75, peak_loss: 0.9, train_loss: 0.25, bytes_sent: 1 << 40 },
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
        let bytes = Body::Msg(Msg::Model {
            round: 2,
            arch: 1,
            model: Tensor::exact(vec![1.0; 3]),
        })
        .encode();
        for cut in 0..bytes.len() {
            assert!(Body::<Msg>::decode(&bytes[..cut], &Limits::new(10)).is_err());
        }
        assert!(Body::<Msg>::decode(&bytes, &Limits::new(2)).is_err());
    }
}
