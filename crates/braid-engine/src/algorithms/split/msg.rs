//! Parallel split learning's protocol (`split`, tag 3). With `compression.split` every tensor
//! travels packed; each side unpacks to the sizes it expects and refuses the other form.

use braid_core::bytes::{Reader, Writer};

use crate::wire::{read_labels, unknown_kind, Limits, Message, Tensor, WireError};

const KIND_REQUEST: u8 = 1;
const KIND_ACTIVATIONS: u8 = 2;
const KIND_GRADIENT: u8 = 3;
const KIND_CLIENT_GRAD: u8 = 4;

/// A message of split learning.
#[derive(Debug, Clone, PartialEq)]
pub enum Msg {
    /// Server to client: run your part on `count` of your samples, starting at position
    /// `offset` of your epoch-`epoch` sample order, with these client-part parameters; send
    /// back the activations.
    Request {
        /// Global step, from 1.
        step: u64,
        /// Epoch, from 1 (selects the client's shuffled sample order).
        epoch: u32,
        /// Position in that order of the first sample to use.
        offset: u32,
        /// Samples to use.
        count: u32,
        /// The client part's current parameters (shared between the step's clients
        /// in-process).
        client_part: Tensor,
    },
    /// Client to server: activations at the cut for a [`Msg::Request`].
    Activations {
        /// The step being answered.
        step: u64,
        /// Labels of the samples, one byte each.
        labels: Vec<u8>,
        /// Activations, sample by sample.
        acts: Tensor,
    },
    /// Server to client: the loss's gradient with respect to the client's activations of
    /// step `step`.
    Gradient {
        /// The step.
        step: u64,
        /// The gradient, same layout as the activations.
        grad: Tensor,
    },
    /// Client to server: the gradient of the client part's parameters.
    ClientGrad {
        /// The step.
        step: u64,
        /// One value per client-part parameter.
        grad: Tensor,
    },
}

impl Message for Msg {
    const PROTOCOL: &'static str = "split";
    const TAG: u8 = 3;
    const VERSION: u8 = 1;

    fn kind(&self) -> &'static str {
        match self {
            Self::Request { .. } => "split-request",
            Self::Activations { .. } => "split-activations",
            Self::Gradient { .. } => "split-gradient",
            Self::ClientGrad { .. } => "split-client-grad",
        }
    }

    fn round(&self) -> Option<u64> {
        match self {
            Self::Request { step, .. }
            | Self::Activations { step, .. }
            | Self::Gradient { step, .. }
            | Self::ClientGrad { step, .. } => Some(*step),
        }
    }

    fn encoded_len(&self) -> usize {
        1 + 8
            + match self {
                Self::Request { client_part, .. } => 4 + 4 + 4 + client_part.encoded_len(),
                Self::Activations { labels, acts, .. } => 4 + labels.len() + acts.encoded_len(),
                Self::Gradient { grad, .. } | Self::ClientGrad { grad, .. } => grad.encoded_len(),
            }
    }

    fn encode(&self, w: &mut Writer) {
        match self {
            Self::Request {
                step,
                epoch,
                offset,
                count,
                client_part,
            } => {
                w.u8(KIND_REQUEST);
                w.u64(*step);
                for v in [epoch, offset, count] {
                    w.u32(*v);
                }
                client_part.encode(w);
            }
            Self::Activations { step, labels, acts } => {
                w.u8(KIND_ACTIVATIONS);
                w.u64(*step);
                w.len_bytes(labels);
                acts.encode(w);
            }
            Self::Gradient { step, grad } | Self::ClientGrad { step, grad } => {
                w.u8(if matches!(self, Self::Gradient { .. }) {
                    KIND_GRADIENT
                } else {
                    KIND_CLIENT_GRAD
                });
                w.u64(*step);
                grad.encode(w);
            }
        }
    }

    fn decode(r: &mut Reader<'_>, limits: &Limits) -> Result<Self, WireError> {
        let kind = r.u8("kind")?;
        let step = r.u64("step")?;
        Ok(match kind {
            KIND_REQUEST => Self::Request {
                step,
                epoch: r.u32("epoch")?,
                offset: r.u32("offset")?,
                count: r.u32("count")?,
                client_part: Tensor::decode(r, limits)?,
            },
            KIND_ACTIVATIONS => Self::Activations {
                step,
                labels: read_labels(r, limits)?,
                acts: Tensor::decode(r, limits)?,
            },
            KIND_GRADIENT => Self::Gradient {
                step,
                grad: Tensor::decode(r, limits)?,
            },
            KIND_CLIENT_GRAD => Self::ClientGrad {
                step,
                grad: Tensor::decode(r, limits)?,
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
            let bytes: Vec<u8> = params.iter().map(|v| *v as u8).collect();
            for m in [
                Msg::Request { step: u64::from(round) << 20, epoch: round, offset: 7, count: 2, client_part: Tensor::exact(params.clone()) },
                Msg::Request { step: u64::from(round) << 20, epoch: round, offset: 7, count: 2, client_part: Tensor::packed(bytes.clone()) },
                Msg::Activations { step: 9, labels: bytes.clone(), acts: Tensor::exact(params.clone()) },
                Msg::Activations { step: 3, labels: vec![1, 2], acts: Tensor::packed(bytes.clone()) },
                Msg::Gradient { step: 1, grad: Tensor::exact(params.clone()) },
                Msg::ClientGrad { step: 2, grad: Tensor::exact(params.clone()) },
                Msg::ClientGrad { step: 4, grad: Tensor::packed(vec![9; 3]) },
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
        let bytes = Body::Msg(Msg::Activations {
            step: 9,
            labels: vec![1, 2, 3],
            acts: Tensor::exact(vec![1.0; 3]),
        })
        .encode();
        for cut in 0..bytes.len() {
            assert!(Body::<Msg>::decode(&bytes[..cut], &Limits::new(10)).is_err());
        }
        assert!(Body::<Msg>::decode(&bytes, &Limits::new(2)).is_err());
    }
}
