//! Compression of parameter vectors and updates for the wire, with error feedback.
//!
//! A [`Compression`] is a sparsifier (keep everything, the top-k entries by magnitude, or k
//! random entries) followed by a value quantizer (f32, fp16, bf16, blockwise 8-bit or 4-bit
//! with one f32 scale per block, or QSGD's unbiased stochastic levels). [`encode`] writes a
//! self-describing byte string whose length [`encoded_len`] gives exactly, so the transport
//! can count what is really sent; [`decode`] checks every length before use. Each quantizer has
//! a documented error bound, which the tests check:
//!
//! | quantizer | bound on each decoded value `y` of `x` |
//! |---|---|
//! | f32 | exact |
//! | fp16 | `|y - x| <= |x| * 2^-11 + 2^-24` for `|x| <= 65504` (larger values saturate) |
//! | bf16 | `|y - x| <= |x| * 2^-8` |
//! | int8, block b | `|y - x| <= max|x in block| / 254` |
//! | int4, block b | `|y - x| <= max|x in block| / 14` |
//! | QSGD, s levels | `|y - x| <= ||x||_2 / s`, and `E[y] = x` (unbiased) |
//!
//! Sparsifiers keep the chosen entries (then quantized) and zero the rest; top-k keeps the
//! largest magnitudes (ties by lower index), random-k a uniform random subset (not rescaled:
//! meant for use with error feedback). The kept positions are written as a sorted list of u32
//! indices or, when that is smaller (more than 1/32 of the entries kept), as a bitmap of one
//! bit per entry. [`ErrorFeedback`] keeps what compression dropped and
//! adds it to the next vector it compresses, so nothing is lost for good: the decoded outputs
//! plus the final residual sum to the inputs.

use crate::bytes::{ReadError, Reader, Writer};
use rand::seq::index::sample;
use rand::Rng;
use serde::{Deserialize, Serialize};
use thiserror::Error;

pub mod lowrank;

/// Which entries are kept.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Sparsify {
    /// Every entry.
    #[default]
    None,
    /// The `fraction` of entries with the largest magnitude (at least one).
    TopK {
        /// Fraction kept, in (0, 1].
        fraction: f64,
    },
    /// A uniformly random `fraction` of entries (at least one).
    RandomK {
        /// Fraction kept, in (0, 1].
        fraction: f64,
    },
    /// PowerSGD: every matrix-shaped tensor as two rank-`rank` factors, the rest whole
    /// ([`lowrank`]; needs the model's layout, so it is encoded by
    /// [`lowrank::PowerSgd`], not [`encode`]).
    PowerSgd {
        /// The factors' rank (at least 1).
        rank: usize,
    },
}

/// How kept values are written.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Quantize {
    /// 4 bytes per value.
    #[default]
    F32,
    /// IEEE half precision, 2 bytes.
    Fp16,
    /// bfloat16, 2 bytes.
    Bf16,
    /// 1 byte per value, one f32 scale per `block` values.
    Int8 {
        /// Values per scale.
        block: usize,
    },
    /// 4 bits per value, one f32 scale per `block` values.
    Int4 {
        /// Values per scale.
        block: usize,
    },
    /// QSGD: the vector's L2 norm, then per value a sign and one of `levels` levels, drawn
    /// so the result is unbiased; 1 byte per value.
    Qsgd {
        /// Number of levels s (1 to 127).
        levels: u32,
    },
}

/// A compression setting: sparsify, then quantize.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Compression {
    /// Which entries are sent.
    #[serde(default)]
    pub sparsify: Sparsify,
    /// How their values are written.
    #[serde(default)]
    pub quantize: Quantize,
}

/// A malformed or unacceptable compressed vector, or a bad setting.
#[derive(Debug, Error, PartialEq)]
pub enum CompressError {
    /// The setting is out of range.
    #[error("compression: {0}")]
    Config(String),
    /// The bytes are not a valid encoding of a vector of the expected length.
    #[error("compressed vector: {0}")]
    Malformed(String),
}

const VERSION: u8 = 2;
const HEADER: usize = 1 + 1 + 1 + 4 + 4 + 4; // version, sparsify, quantize, n, m, param

impl Compression {
    /// Checks fractions, block sizes and levels.
    pub fn validate(&self) -> Result<(), CompressError> {
        match self.sparsify {
            Sparsify::TopK { fraction } | Sparsify::RandomK { fraction }
                if !(fraction > 0.0 && fraction <= 1.0) =>
            {
                return Err(CompressError::Config(format!(
                    "sparsify.fraction = {fraction} must be in (0, 1]"
                )))
            }
            Sparsify::PowerSgd { rank } if rank == 0 || rank > u32::MAX as usize => {
                return Err(CompressError::Config(format!(
                    "sparsify.rank = {rank} must be at least 1"
                )))
            }
            _ => {}
        }
        match self.quantize {
            Quantize::Int8 { block } | Quantize::Int4 { block }
                if block == 0 || block > u32::MAX as usize =>
            {
                Err(CompressError::Config(format!(
                    "quantize.block = {block} must be at least 1"
                )))
            }
            Quantize::Qsgd { levels } if !(1..=127).contains(&levels) => Err(
                CompressError::Config(format!("quantize.levels = {levels} must be 1 to 127")),
            ),
            _ => Ok(()),
        }
    }

    /// Entries kept of a vector of `n`.
    pub fn kept(&self, n: usize) -> usize {
        match self.sparsify {
            Sparsify::None | Sparsify::PowerSgd { .. } => n,
            Sparsify::TopK { fraction } | Sparsify::RandomK { fraction } => {
                ((n as f64 * fraction).ceil() as usize).clamp(n.min(1), n)
            }
        }
    }
}

/// Whether the `m` kept positions of `n` are written as a bitmap (else as u32 indices).
fn uses_bitmap(n: usize, m: usize) -> bool {
    n.div_ceil(8) < 4 * m
}

/// Bytes of the kept positions: the smaller of `m` u32 indices and an `n`-bit bitmap.
fn index_bytes(n: usize, m: usize) -> usize {
    (4 * m).min(n.div_ceil(8))
}

/// Exact length of [`encode`]'s output for a vector of `n` values (PowerSGD's depends on the
/// layout: see [`lowrank::encoded_len`]; here it counts the vector dense).
pub fn encoded_len(n: usize, c: &Compression) -> usize {
    let m = c.kept(n);
    let indices = if matches!(c.sparsify, Sparsify::None | Sparsify::PowerSgd { .. }) {
        0
    } else {
        index_bytes(n, m)
    };
    let values = match c.quantize {
        Quantize::F32 => 4 * m,
        Quantize::Fp16 | Quantize::Bf16 => 2 * m,
        Quantize::Int8 { block } => m + 4 * m.div_ceil(block.max(1)),
        Quantize::Int4 { block } => m.div_ceil(2) + 4 * m.div_ceil(block.max(1)),
        Quantize::Qsgd { .. } => 4 + m,
    };
    HEADER + indices + values
}

fn kinds(c: &Compression) -> (u8, u8, u32) {
    let s = match c.sparsify {
        Sparsify::None | Sparsify::PowerSgd { .. } => 0,
        Sparsify::TopK { .. } => 1,
        Sparsify::RandomK { .. } => 2,
    };
    let (q, p) = match c.quantize {
        Quantize::F32 => (0, 0),
        Quantize::Fp16 => (1, 0),
        Quantize::Bf16 => (2, 0),
        Quantize::Int8 { block } => (3, block as u32),
        Quantize::Int4 { block } => (4, block as u32),
        Quantize::Qsgd { levels } => (5, levels),
    };
    (s, q, p)
}

/// [`encode`] with its random choices drawn from the run's `seed` and the stream
/// `[seed::stream::COMPRESS, key...]` (a sender and a round, typically), so that every
/// packing of a run can be made again.
pub fn encode_seeded(
    x: &[f32], c: &Compression, seed: u64, key: &[u64],
) -> Result<Vec<u8>, CompressError> {
    let path: Vec<u64> = std::iter::once(crate::seed::stream::COMPRESS)
        .chain(key.iter().copied())
        .collect();
    encode(x, c, &mut crate::seed::rng(seed, &path))
}

/// Compresses `x` (its length must fit in a u32). `rng` draws random-k's subset and QSGD's
/// levels; the other settings do not use it.
pub fn encode(x: &[f32], c: &Compression, rng: &mut impl Rng) -> Result<Vec<u8>, CompressError> {
    c.validate()?;
    let n = x.len();
    if n > u32::MAX as usize {
        return Err(CompressError::Config(format!(
            "{n} values do not fit a compressed vector"
        )));
    }
    let m = c.kept(n);
    let idx: Option<Vec<u32>> = match c.sparsify {
        Sparsify::None => None,
        Sparsify::PowerSgd { .. } => {
            return Err(CompressError::Config(
                "power-sgd needs the model's layout: encode with lowrank::PowerSgd".into(),
            ))
        }
        Sparsify::TopK { .. } => {
            let mut order: Vec<u32> = (0..n as u32).collect();
            if m < n {
                order.select_nth_unstable_by(m, |&a, &b| {
                    x[b as usize]
                        .abs()
                        .total_cmp(&x[a as usize].abs())
                        .then(a.cmp(&b))
                });
            }
            order.truncate(m);
            order.sort_unstable();
            Some(order)
        }
        Sparsify::RandomK { .. } => {
            let mut v: Vec<u32> = sample(rng, n, m).into_iter().map(|i| i as u32).collect();
            v.sort_unstable();
            Some(v)
        }
    };
    let values: Vec<f32> = match &idx {
        Some(ix) => ix.iter().map(|&i| x[i as usize]).collect(),
        None => x.to_vec(),
    };
    let (s, q, p) = kinds(c);
    let mut out = Writer::with_capacity(encoded_len(n, c));
    for b in [VERSION, s, q] {
        out.u8(b);
    }
    out.u32(n as u32);
    out.u32(m as u32);
    out.u32(p);
    if let Some(ix) = &idx {
        if uses_bitmap(n, m) {
            let mut bits = vec![0u8; n.div_ceil(8)];
            for &i in ix {
                bits[i as usize / 8] |= 1 << (i % 8);
            }
            out.raw(&bits);
        } else {
            for &i in ix {
                out.u32(i);
            }
        }
    }
    match c.quantize {
        Quantize::F32 => out.f32s(&values),
        Quantize::Fp16 => values.iter().for_each(|v| {
            let v = v.clamp(-65504.0, 65504.0);
            out.raw(&half::f16::from_f32(v).to_le_bytes())
        }),
        Quantize::Bf16 => values
            .iter()
            .for_each(|v| out.raw(&half::bf16::from_f32(*v).to_le_bytes())),
        Quantize::Int8 { block } => {
            for chunk in values.chunks(block) {
                let (scale, levels) = block_levels(chunk, 127);
                out.f32(scale);
                levels.iter().for_each(|&q| out.u8(q as u8));
            }
        }
        Quantize::Int4 { block } => {
            let mut nibbles = Vec::with_capacity(m);
            for chunk in values.chunks(block) {
                let (scale, levels) = block_levels(chunk, 7);
                out.f32(scale);
                nibbles.extend(levels.iter().map(|&q| (q + 8) as u8));
            }
            for pair in nibbles.chunks(2) {
                out.u8(pair[0] | (pair.get(1).copied().unwrap_or(8) << 4));
            }
        }
        Quantize::Qsgd { levels } => {
            let norm = values
                .iter()
                .map(|v| f64::from(*v).powi(2))
                .sum::<f64>()
                .sqrt() as f32;
            out.f32(norm);
            let s = levels as f32;
            for v in &values {
                let level = if norm > 0.0 {
                    let r = (v.abs() / norm * s).min(s);
                    let low = r.floor();
                    // Round up with probability r - low: unbiased.
                    if rng.random::<f32>() < r - low {
                        low + 1.0
                    } else {
                        low
                    }
                } else {
                    0.0
                };
                let sign = if *v < 0.0 { 0x80 } else { 0 };
                out.u8(sign | (level.min(s) as u8));
            }
        }
    }
    let out = out.into_vec();
    debug_assert_eq!(out.len(), encoded_len(n, c));
    Ok(out)
}

/// One block's scale (its largest magnitude over `max`) and its values as integer levels
/// in `-max..=max`, rounded to nearest.
fn block_levels(chunk: &[f32], max: i8) -> (f32, Vec<i8>) {
    let m = f32::from(max);
    let scale = absmax(chunk) / m;
    let levels = chunk
        .iter()
        .map(|v| {
            let q = if scale > 0.0 {
                (v / scale).round()
            } else {
                0.0
            };
            q.clamp(-m, m) as i8
        })
        .collect();
    (scale, levels)
}

fn absmax(v: &[f32]) -> f32 {
    v.iter().fold(0.0f32, |a, b| a.max(b.abs()))
}

impl From<ReadError> for CompressError {
    fn from(e: ReadError) -> Self {
        CompressError::Malformed(e.to_string())
    }
}

/// Decodes a vector that must have `n` values; every length and field is checked first.
pub fn decode(bytes: &[u8], n: usize) -> Result<Vec<f32>, CompressError> {
    let bad = |why: String| CompressError::Malformed(why);
    if bytes.len() < HEADER {
        return Err(bad(format!(
            "{} bytes, shorter than its header",
            bytes.len()
        )));
    }
    if bytes[0] == lowrank::TAG {
        return lowrank::decode(bytes, n);
    }
    let mut r = Reader::new(bytes);
    let (version, s, q) = (r.u8("version")?, r.u8("sparsifier")?, r.u8("quantizer")?);
    if version != VERSION {
        return Err(bad(format!("unknown version {version}")));
    }
    let (got_n, m, p) = (
        r.u32("length")? as usize,
        r.u32("kept")? as usize,
        r.u32("quantizer parameter")?,
    );
    if got_n != n {
        return Err(bad(format!("{got_n} values, expected {n}")));
    }
    if m > n {
        return Err(bad(format!("{m} kept of {n}")));
    }
    let sparsify = match s {
        0 if m == n => Sparsify::None,
        0 => return Err(bad("a dense vector must keep every value".into())),
        // The fraction is not needed to decode; any value in range describes the layout.
        1 => Sparsify::TopK { fraction: 1.0 },
        2 => Sparsify::RandomK { fraction: 1.0 },
        k => return Err(bad(format!("unknown sparsifier {k}"))),
    };
    let quantize = match (q, p) {
        (0, _) => Quantize::F32,
        (1, _) => Quantize::Fp16,
        (2, _) => Quantize::Bf16,
        (3, b) if b > 0 => Quantize::Int8 { block: b as usize },
        (4, b) if b > 0 => Quantize::Int4 { block: b as usize },
        (5, s) if (1..=127).contains(&s) => Quantize::Qsgd { levels: s },
        (q, p) => return Err(bad(format!("unknown quantizer {q} ({p})"))),
    };
    let sparse = !matches!(sparsify, Sparsify::None);
    // The expected length from the header's own m (the fraction is not stored).
    let indices = if sparse { index_bytes(n, m) } else { 0 };
    let values_len = encoded_len(
        m,
        &Compression {
            sparsify: Sparsify::None,
            quantize,
        },
    ) - HEADER;
    let want = HEADER + indices + values_len;
    if bytes.len() != want {
        return Err(bad(format!("{} bytes, expected {want}", bytes.len())));
    }
    let idx = if sparse {
        Some(read_indices(r.take(indices, "positions")?, n, m)?)
    } else {
        None
    };
    let values: Vec<f32> = match quantize {
        Quantize::F32 => r.f32s(m, "values")?,
        Quantize::Fp16 => r
            .take(2 * m, "values")?
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Quantize::Bf16 => r
            .take(2 * m, "values")?
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Quantize::Int8 { block } => {
            let mut v = Vec::with_capacity(m);
            while v.len() < m {
                let k = block.min(m - v.len());
                let scale = r.f32("block scale")?;
                v.extend(
                    r.take(k, "block")?
                        .iter()
                        .map(|&b| f32::from(b as i8) * scale),
                );
            }
            v
        }
        Quantize::Int4 { block } => {
            let nblocks = m.div_ceil(block);
            let scales = r.f32s(nblocks, "block scales")?;
            let packed = r.take(m.div_ceil(2), "values")?;
            (0..m)
                .map(|i| {
                    let byte = packed[i / 2];
                    let nib = if i % 2 == 0 { byte & 0x0f } else { byte >> 4 };
                    f32::from(nib as i8 - 8) * scales[i / block]
                })
                .collect()
        }
        Quantize::Qsgd { levels } => {
            let norm = r.f32("norm")?;
            let s = levels as f32;
            r.take(m, "values")?
                .iter()
                .map(|&b| {
                    let level = f32::from(b & 0x7f).min(s);
                    let v = norm * level / s;
                    if b & 0x80 != 0 {
                        -v
                    } else {
                        v
                    }
                })
                .collect()
        }
    };
    r.finish()?;
    if values.iter().any(|v| !v.is_finite()) {
        return Err(bad("a value is not finite".into()));
    }
    Ok(match idx {
        None => values,
        Some(ix) => {
            let mut dense = vec![0.0; n];
            for (i, v) in ix.into_iter().zip(values) {
                dense[i] = v;
            }
            dense
        }
    })
}

/// The `m` kept positions of `n`, from their encoding (`index_bytes(n, m)` bytes): strictly
/// increasing u32 indices below `n`, or a bitmap with exactly `m` bits set and no bit at or
/// past `n`.
fn read_indices(bytes: &[u8], n: usize, m: usize) -> Result<Vec<usize>, CompressError> {
    let bad = |why: String| CompressError::Malformed(why);
    let mut v = Vec::with_capacity(m);
    if uses_bitmap(n, m) {
        for (k, &byte) in bytes.iter().enumerate() {
            for bit in 0..8 {
                if byte & (1 << bit) != 0 {
                    let i = 8 * k + bit;
                    if i >= n {
                        return Err(bad(format!("bitmap marks position {i} of {n}")));
                    }
                    v.push(i);
                }
            }
        }
        if v.len() != m {
            return Err(bad(format!(
                "bitmap marks {} positions, the header {m}",
                v.len()
            )));
        }
    } else {
        let mut last: Option<usize> = None;
        let mut r = Reader::new(bytes);
        while r.remaining() > 0 {
            let i = r.u32("position")? as usize;
            if i >= n || last.is_some_and(|l| i <= l) {
                return Err(bad(format!("index {i} out of order or range")));
            }
            last = Some(i);
            v.push(i);
        }
    }
    Ok(v)
}

/// Error feedback: what compression dropped from one vector is added to the next.
#[derive(Debug, Clone, Default)]
pub struct ErrorFeedback {
    residual: Vec<f32>,
}

impl ErrorFeedback {
    /// Compresses `x` plus the residual so far; keeps the new residual.
    pub fn encode(
        &mut self, x: &[f32], c: &Compression, rng: &mut impl Rng,
    ) -> Result<Vec<u8>, CompressError> {
        self.encode_with(x, |v| encode(v, c, rng))
    }

    /// [`ErrorFeedback::encode`] with any encoder whose output [`decode`] reads (such as
    /// [`lowrank::PowerSgd`]).
    pub fn encode_with(
        &mut self, x: &[f32], encoder: impl FnOnce(&[f32]) -> Result<Vec<u8>, CompressError>,
    ) -> Result<Vec<u8>, CompressError> {
        if self.residual.len() != x.len() {
            self.residual = vec![0.0; x.len()];
        }
        let corrected: Vec<f32> = x.iter().zip(&self.residual).map(|(a, r)| a + r).collect();
        let bytes = encoder(&corrected)?;
        let sent = decode(&bytes, x.len())?;
        for ((r, c), s) in self.residual.iter_mut().zip(&corrected).zip(&sent) {
            *r = c - s;
        }
        Ok(bytes)
    }

    /// What has not been sent yet.
    pub fn residual(&self) -> &[f32] {
        &self.residual
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn all() -> Vec<Compression> {
        let mut v = Vec::new();
        for sparsify in [
            Sparsify::None,
            Sparsify::TopK { fraction: 0.3 },
            Sparsify::RandomK { fraction: 0.3 },
            // Few enough kept that the positions go as a list, not a bitmap.
            Sparsify::TopK { fraction: 0.02 },
        ] {
            for quantize in [
                Quantize::F32,
                Quantize::Fp16,
                Quantize::Bf16,
                Quantize::Int8 { block: 7 },
                Quantize::Int4 { block: 5 },
                Quantize::Qsgd { levels: 8 },
            ] {
                v.push(Compression { sparsify, quantize });
            }
        }
        v
    }

    /// The largest error the quantizer allows for value `x` of `values` (the kept values).
    fn bound(q: Quantize, x: f32, i: usize, values: &[f32]) -> f32 {
        let block_max =
            |b: usize| absmax(&values[(i / b) * b..((i / b + 1) * b).min(values.len())]);
        match q {
            Quantize::F32 => 0.0,
            Quantize::Fp16 => x.abs() * 2f32.powi(-11) + 2f32.powi(-24),
            Quantize::Bf16 => x.abs() * 2f32.powi(-8),
            Quantize::Int8 { block } => block_max(block) / 254.0 * 1.0001,
            Quantize::Int4 { block } => block_max(block) / 14.0 * 1.0001,
            Quantize::Qsgd { levels } => {
                let norm = values.iter().map(|v| v * v).sum::<f32>().sqrt();
                norm / levels as f32 * 1.0001
            }
        }
    }

    proptest! {
        #[test]
        fn round_trips_within_bounds_with_exact_lengths(
            x in prop::collection::vec(-1e4f32..1e4, 1..200),
            seed in 0u64..1000,
        ) {
            for c in all() {
                let mut rng = crate::seed::rng(seed, &[]);
                let bytes = encode(&x, &c, &mut rng).unwrap();
                prop_assert_eq!(bytes.len(), encoded_len(x.len(), &c));
                let y = decode(&bytes, x.len()).unwrap();
                prop_assert_eq!(y.len(), x.len());
                // Dense: every value within its bound. Sparse: kept values within their bound
                // (relative to the kept vector), the rest zero.
                let kept_idx: Vec<usize> = if matches!(c.sparsify, Sparsify::None) {
                    (0..x.len()).collect()
                } else {
                    // Recover the kept set from the encoding's positions.
                    let m = u32::from_le_bytes([bytes[7], bytes[8], bytes[9], bytes[10]]) as usize;
                    prop_assert_eq!(m, c.kept(x.len()));
                    read_indices(&bytes[HEADER..HEADER + index_bytes(x.len(), m)], x.len(), m).unwrap()
                };
                let values: Vec<f32> = kept_idx.iter().map(|&i| x[i]).collect();
                for (k, &i) in kept_idx.iter().enumerate() {
                    let b = bound(c.quantize, x[i], k, &values);
                    prop_assert!((y[i] - x[i]).abs() <= b, "{:?}: x {} y {} bound {}", c, x[i], y[i], b);
                }
                for (i, v) in y.iter().enumerate() {
                    if !kept_idx.contains(&i) {
                        prop_assert_eq!(*v, 0.0);
                    }
                }
                if let Sparsify::TopK { .. } = c.sparsify {
                    // Nothing dropped is larger than anything kept.
                    let min_kept = values.iter().fold(f32::INFINITY, |a, b| a.min(b.abs()));
                    for i in (0..x.len()).filter(|i| !kept_idx.contains(i)) {
                        prop_assert!(x[i].abs() <= min_kept);
                    }
                }
                // Every cut of a valid encoding is refused, never a panic.
                for cut in [0, bytes.len() / 2, bytes.len() - 1] {
                    prop_assert!(decode(&bytes[..cut], x.len()).is_err());
                }
                prop_assert!(decode(&bytes, x.len() + 1).is_err());
            }
        }

        #[test]
        fn error_feedback_loses_nothing(
            xs in prop::collection::vec(prop::collection::vec(-10f32..10.0, 50), 1..8),
        ) {
            let c = Compression { sparsify: Sparsify::TopK { fraction: 0.05 }, quantize: Quantize::Int8 { block: 16 } };
            let mut ef = ErrorFeedback::default();
            let mut rng = crate::seed::rng(1, &[]);
            let mut sent_sum = vec![0.0f64; 50];
            let mut in_sum = vec![0.0f64; 50];
            for x in &xs {
                let y = decode(&ef.encode(x, &c, &mut rng).unwrap(), 50).unwrap();
                for i in 0..50 {
                    sent_sum[i] += f64::from(y[i]);
                    in_sum[i] += f64::from(x[i]);
                }
            }
            // Sent so far plus what is still held back equals everything that came in.
            for i in 0..50 {
                let held = f64::from(ef.residual()[i]);
                prop_assert!((sent_sum[i] + held - in_sum[i]).abs() < 1e-3, "{i}");
            }
        }
    }

    #[test]
    fn qsgd_is_unbiased() {
        let x: Vec<f32> = (0..20).map(|i| (i as f32 - 9.5) * 0.37).collect();
        let c = Compression {
            sparsify: Sparsify::None,
            quantize: Quantize::Qsgd { levels: 2 },
        };
        let mut rng = crate::seed::rng(7, &[]);
        let trials = 20_000;
        let mut mean = vec![0.0f64; x.len()];
        for _ in 0..trials {
            let y = decode(&encode(&x, &c, &mut rng).unwrap(), x.len()).unwrap();
            for (m, v) in mean.iter_mut().zip(y) {
                *m += f64::from(v) / trials as f64;
            }
        }
        let norm = x.iter().map(|v| v * v).sum::<f32>().sqrt() as f64;
        for (m, v) in mean.iter().zip(&x) {
            // Standard error of each mean is at most norm / (2 s sqrt(trials)) ~ 0.009 here.
            assert!((m - f64::from(*v)).abs() < 0.05 * norm / 2.0, "{m} vs {v}");
        }
    }

    #[test]
    fn sizes_and_bad_settings() {
        let n = 1_000_000;
        let topk_fp16 = Compression {
            sparsify: Sparsify::TopK { fraction: 0.01 },
            quantize: Quantize::Fp16,
        };
        // 1% of a million values: 10,000 indices (4 B) and values (2 B), plus the header.
        assert_eq!(encoded_len(n, &topk_fp16), HEADER + 10_000 * 6);
        let int4 = Compression {
            sparsify: Sparsify::None,
            quantize: Quantize::Int4 { block: 64 },
        };
        assert_eq!(encoded_len(n, &int4), HEADER + 500_000 + 4 * 15_625);
        // 10% kept: a bitmap of a million bits is smaller than 100,000 indices.
        let top10_int8 = Compression {
            sparsify: Sparsify::TopK { fraction: 0.1 },
            quantize: Quantize::Int8 { block: 256 },
        };
        assert_eq!(
            encoded_len(n, &top10_int8),
            HEADER + 125_000 + 100_000 + 4 * 391
        );
        for bad in [
            Compression {
                sparsify: Sparsify::TopK { fraction: 0.0 },
                quantize: Quantize::F32,
            },
            Compression {
                sparsify: Sparsify::None,
                quantize: Quantize::Int8 { block: 0 },
            },
            Compression {
                sparsify: Sparsify::None,
                quantize: Quantize::Qsgd { levels: 200 },
            },
        ] {
            assert!(bad.validate().is_err());
        }
        let cfg: Compression =
            toml::from_str("sparsify = { kind = \"top-k\", fraction = 0.01 }\nquantize = { kind = \"int8\", block = 256 }")
                .unwrap();
        assert_eq!(cfg.kept(1000), 10);
        assert!(decode(b"garbage that is long enough", 3).is_err());
    }

    #[test]
    fn bitmaps_with_the_wrong_count_or_stray_bits_are_refused() {
        let c = Compression {
            sparsify: Sparsify::TopK { fraction: 0.5 },
            quantize: Quantize::F32,
        };
        let x: Vec<f32> = (0..13).map(|i| i as f32 - 6.2).collect();
        let bytes = encode(&x, &c, &mut crate::seed::rng(1, &[])).unwrap();
        assert!(uses_bitmap(13, 7));
        assert!(decode(&bytes, 13).is_ok());
        // Bit 13 lies past the vector; clearing a kept bit leaves 6 where the header says 7.
        for (byte, flip) in [(HEADER + 1, 1u8 << 5), (HEADER, 0)] {
            let mut bad = bytes.clone();
            if flip == 0 {
                let lowest = bad[byte] & bad[byte].wrapping_neg();
                bad[byte] &= !lowest;
            } else {
                bad[byte] |= flip;
            }
            assert!(matches!(decode(&bad, 13), Err(CompressError::Malformed(_))));
        }
    }
}
