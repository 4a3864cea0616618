//! Control messages: protocol 0, the same in every run, outside every algorithm.

use braid_core::bytes::{Reader, Writer};

use super::{Codec, Limits, Message, Tensor, WireError};

/// Longest public key or signature a halt may carry.
const MAX_HALT_FIELD: usize = 1024;

crate::protocol! {
    /// A message about the run rather than the algorithm's work: protocol 0 (`control`), the
    /// same in every run, which every node speaks besides its algorithm's.
    pub enum Control {
        protocol: "control", tag: 0, version: 1;
        /// The run is over (after round `round`); the receiver may exit.
        Shutdown(1, "shutdown", round = round) { round: u32 },
        /// I restarted into a running run with `step` steps (from my checkpoint, 0 without
        /// one): where is it now?
        JoinRequest(2, "join-request", round = step) { step: u64 },
        /// The answer to a [`Control::JoinRequest`]: the sender has taken `step` steps and
        /// completed communication round `round`; `model` is its model (for a node waiting on
        /// round `round + 1`, the one it sent for that round).
        JoinReply(3, "join-reply", round = step) { step: u64, round: u32, model: Tensor },
        /// Stop the run `run` (its configuration hash, SHA-256), issued at `issued_at` (Unix
        /// seconds) by `signer` (a public key, libp2p protobuf encoding) with `signature` over
        /// [`halt_message`]`(run, issued_at)`. The run must authorize the key; the network
        /// runtime checks, obeys and forwards it; algorithms never see it.
        Halt(4, "halt") {
            run: [u8; 32], issued_at: u64, signer: Vec<u8> as HaltField,
            signature: Vec<u8> as HaltField,
        },
    }
}

/// A halt's key or signature: a `u16` length of at most [`MAX_HALT_FIELD`], then the bytes.
/// A longer one is refused when read; only what fits is written.
struct HaltField;

impl Codec<Vec<u8>> for HaltField {
    fn size(value: &Vec<u8>) -> usize {
        2 + value.len().min(MAX_HALT_FIELD)
    }
    fn write(value: &Vec<u8>, w: &mut Writer) {
        let n = value.len().min(MAX_HALT_FIELD);
        w.u16(n as u16);
        w.raw(&value[..n]);
    }
    fn read(r: &mut Reader<'_>, name: &'static str, _: &Limits) -> Result<Vec<u8>, WireError> {
        let n = r.u16(name)? as usize;
        if n > MAX_HALT_FIELD {
            return Err(WireError::Malformed(format!(
                "{name} of {n} bytes (at most {MAX_HALT_FIELD})"
            )));
        }
        Ok(r.take(n, name)?.to_vec())
    }
}

/// The bytes a halt's signature covers.
pub fn halt_message(run: &[u8; 32], issued_at: u64) -> Vec<u8> {
    let mut m = b"braid-halt-v1".to_vec();
    m.extend_from_slice(run);
    m.extend_from_slice(&issued_at.to_le_bytes());
    m
}

impl Control {
    /// The whole frame of this control message (the same in every protocol's runs).
    pub fn frame(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(super::HEADER + self.encoded_len());
        w.raw(&super::MAGIC);
        w.u8(Self::TAG);
        w.u8(Self::VERSION);
        self.encode(&mut w);
        w.into_vec()
    }
}
