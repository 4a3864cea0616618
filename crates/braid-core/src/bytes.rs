//! One byte writer and one byte reader for every binary encoding braid defines: wire messages,
//! secure aggregation's messages, compressed vectors and checkpoints.
//!
//! Everything is little-endian. The [`Reader`] checks every length against the bytes left
//! before it copies or allocates anything, names the field it was reading when it fails, and
//! [`Reader::finish`] refuses trailing bytes, so a decoder built on it reads exactly one value
//! or fails with one clear line.

use thiserror::Error;

/// Why bytes could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ReadError {
    /// Fewer bytes are left than the field needs.
    #[error("{what} needs {need} bytes at offset {at}, the message has {len}")]
    Truncated {
        /// The field being read.
        what: &'static str,
        /// Bytes it needs.
        need: usize,
        /// Where it starts.
        at: usize,
        /// Length of the whole input.
        len: usize,
    },
    /// A count is larger than the reader allows.
    #[error("{what}: {got}, more than the allowed {max}")]
    TooLarge {
        /// The field being read.
        what: &'static str,
        /// The count read.
        got: usize,
        /// The most allowed.
        max: usize,
    },
    /// Bytes are left after the value.
    #[error("{0} trailing bytes")]
    Trailing(usize),
}

/// Appends little-endian values to a byte vector.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    /// An empty writer.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty writer with room for `n` bytes.
    pub fn with_capacity(n: usize) -> Self {
        Self {
            buf: Vec::with_capacity(n),
        }
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// True before anything is written.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The bytes written.
    pub fn into_vec(self) -> Vec<u8> {
        self.buf
    }

    /// One byte.
    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }

    /// A `u16`.
    pub fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    /// A `u32`.
    pub fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    /// A `u64`.
    pub fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    /// An `f32`.
    pub fn f32(&mut self, v: f32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    /// Raw bytes, as they are.
    pub fn raw(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// A `u32` length, then the bytes (read back with [`Reader::len_bytes`]).
    pub fn len_bytes(&mut self, bytes: &[u8]) {
        self.u32(u32_len(bytes.len()));
        self.raw(bytes);
    }

    /// `f32` values without a count.
    pub fn f32s(&mut self, values: &[f32]) {
        // One resize, then fixed-size chunks: a straight copy on little-endian machines
        // instead of a capacity check per value.
        let start = self.buf.len();
        self.buf.resize(start + 4 * values.len(), 0);
        for (dst, v) in self.buf[start..].chunks_exact_mut(4).zip(values) {
            dst.copy_from_slice(&v.to_le_bytes());
        }
    }

    /// A `u32` count, then the `f32` values (read back with [`Reader::len_f32s`]).
    pub fn len_f32s(&mut self, values: &[f32]) {
        self.u32(u32_len(values.len()));
        self.f32s(values);
    }
}

/// A length as the `u32` the encodings carry. Encoders only write what their decoders accept,
/// which is far below `u32::MAX`; a longer slice is a bug, written as `u32::MAX` so that the
/// reader refuses it instead of reading a wrapped-around length.
fn u32_len(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Reads little-endian values from a byte slice, checking every length first.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, pos: 0 }
    }

    /// Bytes read so far.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Bytes left.
    pub fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    /// The next `n` bytes (`what` names them in the error).
    pub fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], ReadError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or(ReadError::Truncated {
                what,
                need: n,
                at: self.pos,
                len: self.bytes.len(),
            })?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    /// Every byte left.
    pub fn rest(&mut self) -> &'a [u8] {
        let s = &self.bytes[self.pos..];
        self.pos = self.bytes.len();
        s
    }

    /// The next `N` bytes as an array.
    pub fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], ReadError> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    /// One byte.
    pub fn u8(&mut self, what: &'static str) -> Result<u8, ReadError> {
        Ok(self.take(1, what)?[0])
    }

    /// A `u16`.
    pub fn u16(&mut self, what: &'static str) -> Result<u16, ReadError> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }

    /// A `u32`.
    pub fn u32(&mut self, what: &'static str) -> Result<u32, ReadError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    /// A `u64`.
    pub fn u64(&mut self, what: &'static str) -> Result<u64, ReadError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// An `f32`.
    pub fn f32(&mut self, what: &'static str) -> Result<f32, ReadError> {
        Ok(f32::from_le_bytes(self.array(what)?))
    }

    /// A `u32` count of at most `max`.
    pub fn count(&mut self, what: &'static str, max: usize) -> Result<usize, ReadError> {
        let n = self.u32(what)? as usize;
        if n > max {
            return Err(ReadError::TooLarge { what, got: n, max });
        }
        Ok(n)
    }

    /// A `u32` count of items of `item_bytes` bytes each that must fit in the bytes left.
    pub fn count_of(&mut self, what: &'static str, item_bytes: usize) -> Result<usize, ReadError> {
        let at = self.pos;
        let n = self.u32(what)? as usize;
        let need = n.saturating_mul(item_bytes);
        if need > self.remaining() {
            return Err(ReadError::Truncated {
                what,
                need,
                at,
                len: self.bytes.len(),
            });
        }
        Ok(n)
    }

    /// `n` `f32` values.
    pub fn f32s(&mut self, n: usize, what: &'static str) -> Result<Vec<f32>, ReadError> {
        let raw = self.take(n.saturating_mul(4), what)?;
        Ok(raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }

    /// A `u32` count of at most `max`, then that many `f32` values (as [`Writer::len_f32s`]
    /// writes them).
    pub fn len_f32s(&mut self, what: &'static str, max: usize) -> Result<Vec<f32>, ReadError> {
        let n = self.count(what, max)?;
        self.f32s(n, what)
    }

    /// A `u32` length of at most `max`, then that many bytes (as [`Writer::len_bytes`] writes
    /// them).
    pub fn len_bytes(&mut self, what: &'static str, max: usize) -> Result<&'a [u8], ReadError> {
        let n = self.count(what, max)?;
        self.take(n, what)
    }

    /// Ends reading: an error if bytes are left.
    pub fn finish(&self) -> Result<(), ReadError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(ReadError::Trailing(n)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn written(values: &[f32], bytes: &[u8]) -> Vec<u8> {
        let mut w = Writer::new();
        w.u8(7);
        w.u16(0xbeef);
        w.u32(1 << 31);
        w.u64(u64::MAX - 1);
        w.f32(-0.5);
        w.len_f32s(values);
        w.len_bytes(bytes);
        w.raw(&[1, 2, 3]);
        w.into_vec()
    }

    proptest! {
        #[test]
        fn what_is_written_reads_back(values in prop::collection::vec(-1e6f32..1e6, 0..40), bytes in prop::collection::vec(any::<u8>(), 0..40)) {
            let buf = written(&values, &bytes);
            let mut r = Reader::new(&buf);
            prop_assert_eq!(r.u8("a").unwrap(), 7);
            prop_assert_eq!(r.u16("b").unwrap(), 0xbeef);
            prop_assert_eq!(r.u32("c").unwrap(), 1 << 31);
            prop_assert_eq!(r.u64("d").unwrap(), u64::MAX - 1);
            prop_assert_eq!(r.f32("e").unwrap(), -0.5);
            prop_assert_eq!(r.len_f32s("f", 40).unwrap(), values);
            prop_assert_eq!(r.len_bytes("g", 40).unwrap(), &bytes[..]);
            prop_assert_eq!(r.array::<3>("h").unwrap(), [1, 2, 3]);
            prop_assert!(r.finish().is_ok());
        }

        #[test]
        fn every_prefix_is_refused_and_nothing_panics(values in prop::collection::vec(-1e6f32..1e6, 1..10), junk in prop::collection::vec(any::<u8>(), 0..64)) {
            let buf = written(&values, &[9; 5]);
            for cut in 0..buf.len() {
                let mut r = Reader::new(&buf[..cut]);
                let ok = r.u8("a").and_then(|_| r.u16("b")).and_then(|_| r.u32("c"))
                    .and_then(|_| r.u64("d")).and_then(|_| r.f32("e"))
                    .and_then(|_| r.len_f32s("f", 40)).and_then(|_| r.len_bytes("g", 40).map(|_| ()))
                    .and_then(|_| r.array::<3>("h").map(|_| ()));
                prop_assert!(ok.is_err(), "a prefix of {} bytes read whole", cut);
            }
            // Arbitrary bytes: every read either fails cleanly or succeeds.
            let mut r = Reader::new(&junk);
            let _ = r.len_f32s("x", usize::MAX).and_then(|_| r.len_bytes("y", usize::MAX).map(|_| ()));
        }
    }

    #[test]
    fn errors_name_the_field_and_the_limits() {
        let mut r = Reader::new(&[5, 0, 0, 0, 1]);
        assert_eq!(
            r.count("labels", 4),
            Err(ReadError::TooLarge {
                what: "labels",
                got: 5,
                max: 4
            })
        );
        let mut r = Reader::new(&[2, 0, 0, 0, 1]);
        let e = r.count_of("ids", 4).unwrap_err();
        assert_eq!(
            e.to_string(),
            "ids needs 8 bytes at offset 0, the message has 5"
        );
        let mut r = Reader::new(&[1, 2]);
        r.u8("x").unwrap();
        assert_eq!(r.finish(), Err(ReadError::Trailing(1)));
        // A count announcing four billion values fails before allocating.
        let mut r = Reader::new(&[0xff, 0xff, 0xff, 0xff]);
        assert!(matches!(
            r.len_f32s("values", usize::MAX),
            Err(ReadError::Truncated { .. })
        ));
    }
}
