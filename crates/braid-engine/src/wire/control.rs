//! Control messages: protocol 0, the same in every run, outside every algorithm.

use braid_core::bytes::{Reader, Writer};

use super::{Limits, Tensor, WireError};

/// The control protocol's tag.
pub(super) const TAG: u8 = 0;
/// Its version.
pub(super) const VERSION: u8 = 1;
/// Its name.
pub(super) const PROTOCOL: &str = "control";

const KIND_SHUTDOWN: u8 = 1;
const KIND_JOIN_REQUEST: u8 = 2;
const KIND_JOIN_REPLY: u8 = 3;
const KIND_HALT: u8 = 4;
/// Longest public key or signature a halt may carry.
const MAX_HALT_FIELD: usize = 1024;

/// A message about the run rather than the algorithm's work.
#[derive(Debug, Clone, PartialEq)]
pub enum Control {
    /// The run is over (after round `round`); the receiver may exit.
    Shutdown {
        /// The last round.
        round: u32,
    },
    /// I restarted into a running run: where is it now?
    JoinRequest {
        /// Steps the asking node has (from its checkpoint, 0 without one).
        step: u64,
    },
    /// The answer to a [`Control::JoinRequest`]: the sender's progress and model.
    JoinReply {
        /// Steps the sender has taken.
        step: u64,
        /// The last communication round the sender has completed.
        round: u32,
        /// The sender's model (for a node waiting on round `round + 1`, the one it sent for
        /// that round).
        model: Tensor,
    },
    /// Stop the run. Signed by a key the run authorizes to halt it (checked by the network
    /// runtime, which obeys and forwards it; algorithms never see it).
    Halt {
        /// The run's configuration hash (SHA-256).
        run: [u8; 32],
        /// When it was issued (Unix seconds).
        issued_at: u64,
        /// The signer's public key (libp2p protobuf encoding).
        signer: Vec<u8>,
        /// Signature over [`halt_message`]`(run, issued_at)`.
        signature: Vec<u8>,
    },
}

/// The bytes a halt's signature covers.
pub fn halt_message(run: &[u8; 32], issued_at: u64) -> Vec<u8> {
    let mut m = b"braid-halt-v1".to_vec();
    m.extend_from_slice(run);
    m.extend_from_slice(&issued_at.to_le_bytes());
    m
}

impl Control {
    /// Short name, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Shutdown { .. } => "shutdown",
            Self::JoinRequest { .. } => "join-request",
            Self::JoinReply { .. } => "join-reply",
            Self::Halt { .. } => "halt",
        }
    }

    /// The round or step the message belongs to (none for halts).
    pub fn round(&self) -> Option<u64> {
        match self {
            Self::Shutdown { round } => Some(u64::from(*round)),
            Self::JoinRequest { step } | Self::JoinReply { step, .. } => Some(*step),
            Self::Halt { .. } => None,
        }
    }

    /// The whole frame of this control message (the same in every protocol's runs).
    pub fn frame(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(super::HEADER + self.encoded_len());
        w.raw(&super::MAGIC);
        w.u8(TAG);
        w.u8(VERSION);
        self.encode(&mut w);
        w.into_vec()
    }

    /// Length of [`Control::encode`]'s output.
    pub fn encoded_len(&self) -> usize {
        1 + match self {
            Self::Shutdown { .. } => 4,
            Self::JoinRequest { .. } => 8,
            Self::JoinReply { model, .. } => 8 + 4 + model.encoded_len(),
            Self::Halt {
                signer, signature, ..
            } => {
                32 + 8 + 4 + signer.len().min(MAX_HALT_FIELD) + signature.len().min(MAX_HALT_FIELD)
            }
        }
    }

    /// Writes the message (after the frame header).
    pub fn encode(&self, w: &mut Writer) {
        match self {
            Self::Shutdown { round } => {
                w.u8(KIND_SHUTDOWN);
                w.u32(*round);
            }
            Self::JoinRequest { step } => {
                w.u8(KIND_JOIN_REQUEST);
                w.u64(*step);
            }
            Self::JoinReply { step, round, model } => {
                w.u8(KIND_JOIN_REPLY);
                w.u64(*step);
                w.u32(*round);
                model.encode(w);
            }
            Self::Halt {
                run,
                issued_at,
                signer,
                signature,
            } => {
                w.u8(KIND_HALT);
                w.raw(run);
                w.u64(*issued_at);
                for field in [signer, signature] {
                    // Longer fields are refused when decoding; encode what fits.
                    let n = field.len().min(MAX_HALT_FIELD);
                    w.u16(n as u16);
                    w.raw(&field[..n]);
                }
            }
        }
    }

    /// Reads one control message.
    pub fn decode(r: &mut Reader<'_>, limits: &Limits) -> Result<Self, WireError> {
        Ok(match r.u8("kind")? {
            KIND_SHUTDOWN => Self::Shutdown {
                round: r.u32("round")?,
            },
            KIND_JOIN_REQUEST => Self::JoinRequest {
                step: r.u64("step")?,
            },
            KIND_JOIN_REPLY => Self::JoinReply {
                step: r.u64("step")?,
                round: r.u32("round")?,
                model: Tensor::decode(r, limits)?,
            },
            KIND_HALT => {
                let run = r.array("run")?;
                let issued_at = r.u64("issued_at")?;
                let mut field = |name: &'static str| -> Result<Vec<u8>, WireError> {
                    let n = r.u16(name)? as usize;
                    if n > MAX_HALT_FIELD {
                        return Err(WireError::Malformed(format!(
                            "{name} of {n} bytes (at most {MAX_HALT_FIELD})"
                        )));
                    }
                    Ok(r.take(n, name)?.to_vec())
                };
                let signer = field("signer")?;
                let signature = field("signature")?;
                Self::Halt {
                    run,
                    issued_at,
                    signer,
                    signature,
                }
            }
            k => return Err(super::unknown_kind(PROTOCOL, k)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn control_messages_round_trip_with_exact_lengths(params in prop::collection::vec(-1e6f32..1e6, 0..32), round in 0u32..1000) {
            let limits = Limits::new(32);
            for c in [
                Control::Shutdown { round },
                Control::JoinRequest { step: u64::from(round) << 33 },
                Control::JoinReply { step: 5, round, model: Tensor::exact(params.clone()) },
                Control::Halt { run: [round as u8; 32], issued_at: 7, signer: vec![1, 2, 3], signature: params.iter().map(|v| *v as u8).collect() },
            ] {
                let mut w = Writer::new();
                c.encode(&mut w);
                let b = w.into_vec();
                prop_assert_eq!(b.len(), c.encoded_len());
                let mut r = Reader::new(&b);
                prop_assert_eq!(Control::decode(&mut r, &limits).unwrap(), c);
                prop_assert_eq!(r.remaining(), 0);
            }
        }
    }
}
