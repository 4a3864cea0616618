//! [`Tensor`]: the one payload type for vectors on the wire, exact or packed by a codec.

use std::sync::Arc;

use braid_core::bytes::{Reader, Writer};

use super::{Limits, WireError};

/// The high bit of a tensor's length word: set when the tensor is packed.
const PACKED: u32 = 1 << 31;

/// A vector on the wire: model parameters, an update, activations, a gradient.
///
/// Encoded as one little-endian `u32` word, then the contents: with the word's high bit clear,
/// the word is a count of `f32` values that follow; with it set, the rest of the word is the
/// length of bytes a codec packed (`braid_core::compress`), which the receiver unpacks to the
/// size it expects. Both forms are shared, not copied, between the recipients of a message
/// in-process.
#[derive(Debug, Clone, PartialEq)]
pub enum Tensor {
    /// `f32` values, exactly.
    Exact(Arc<Vec<f32>>),
    /// Bytes packed by a codec.
    Packed(Arc<Vec<u8>>),
}

impl Tensor {
    /// Exact values.
    pub fn exact(values: Vec<f32>) -> Self {
        Self::Exact(Arc::new(values))
    }

    /// Packed bytes.
    pub fn packed(bytes: Vec<u8>) -> Self {
        Self::Packed(Arc::new(bytes))
    }

    /// `"f32"` or `"packed"`, for errors.
    pub fn form(&self) -> &'static str {
        match self {
            Self::Exact(_) => "f32",
            Self::Packed(_) => "packed",
        }
    }

    /// Bytes of [`Tensor::encode`]'s output.
    pub fn encoded_len(&self) -> usize {
        4 + match self {
            Self::Exact(v) => 4 * v.len(),
            Self::Packed(b) => b.len(),
        }
    }

    /// Writes the length word and the contents.
    pub fn encode(&self, w: &mut Writer) {
        match self {
            Self::Exact(v) => {
                w.u32(word(v.len(), 0));
                w.f32s(v);
            }
            Self::Packed(b) => {
                w.u32(word(b.len(), PACKED));
                w.raw(b);
            }
        }
    }

    /// Reads a tensor of at most `limits.max_values` values (packed: at most the largest
    /// encoding of that many values, a header and an index and an `f32` per value).
    pub fn decode(r: &mut Reader<'_>, limits: &Limits) -> Result<Self, WireError> {
        let w = r.u32("tensor length")?;
        let n = (w & !PACKED) as usize;
        if w & PACKED == 0 {
            if n > limits.max_values {
                return Err(WireError::TooLarge {
                    got: n,
                    max: limits.max_values,
                });
            }
            Ok(Self::exact(r.f32s(n, "tensor values")?))
        } else {
            let max = 64usize.saturating_add(limits.max_values.saturating_mul(8));
            if n > max {
                return Err(WireError::TooLarge { got: n, max });
            }
            Ok(Self::packed(r.take(n, "packed tensor")?.to_vec()))
        }
    }

    /// The exact values, shared; an error naming the form otherwise.
    pub fn exact_values(&self) -> Result<&Arc<Vec<f32>>, String> {
        match self {
            Self::Exact(v) => Ok(v),
            Self::Packed(_) => Err("a packed tensor where exact values were expected".into()),
        }
    }

    /// The exact values, taken out (copied only if they are shared).
    pub fn into_values(self) -> Result<Vec<f32>, String> {
        match self {
            Self::Exact(v) => Ok(Arc::try_unwrap(v).unwrap_or_else(|v| (*v).clone())),
            Self::Packed(_) => Err("a packed tensor where exact values were expected".into()),
        }
    }

    /// The packed bytes; an error naming the form otherwise.
    pub fn packed_bytes(&self) -> Result<&[u8], String> {
        match self {
            Self::Packed(b) => Ok(b),
            Self::Exact(_) => Err("exact values where a packed tensor was expected".into()),
        }
    }
}

/// A length with its form bit. Senders only send what receivers accept (far below 2^31
/// values); a longer one is a bug, written so that every receiver refuses it.
fn word(len: usize, form: u32) -> u32 {
    u32::try_from(len)
        .ok()
        .filter(|&n| n < PACKED)
        .map_or(u32::MAX, |n| n | form)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn both_forms_round_trip_with_exact_lengths(values in prop::collection::vec(-1e6f32..1e6, 0..50), bytes in prop::collection::vec(any::<u8>(), 0..50)) {
            let limits = Limits::new(50);
            for t in [Tensor::exact(values.clone()), Tensor::packed(bytes.clone())] {
                let mut w = Writer::new();
                t.encode(&mut w);
                let b = w.into_vec();
                prop_assert_eq!(b.len(), t.encoded_len());
                let mut r = Reader::new(&b);
                prop_assert_eq!(Tensor::decode(&mut r, &limits).unwrap(), t);
                prop_assert_eq!(r.remaining(), 0);
            }
        }
    }

    #[test]
    fn limits_and_forms_are_checked() {
        let limits = Limits::new(2);
        let mut w = Writer::new();
        Tensor::exact(vec![1.0; 3]).encode(&mut w);
        let b = w.into_vec();
        assert_eq!(
            Tensor::decode(&mut Reader::new(&b), &limits),
            Err(WireError::TooLarge { got: 3, max: 2 })
        );
        // A packed length beyond the largest encoding of the limit.
        let huge = (PACKED | 1000).to_le_bytes();
        assert!(matches!(
            Tensor::decode(&mut Reader::new(&huge), &limits),
            Err(WireError::TooLarge { .. })
        ));
        assert!(Tensor::packed(vec![1]).exact_values().is_err());
        assert!(Tensor::exact(vec![1.0]).packed_bytes().is_err());
        assert_eq!(Tensor::exact(vec![1.0]).into_values(), Ok(vec![1.0]));
    }
}
