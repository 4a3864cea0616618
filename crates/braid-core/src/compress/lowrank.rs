//! PowerSGD low-rank compression (Vogels, Karimireddy and Jaggi, NeurIPS 2019) of a parameter
//! vector whose layout names its matrix-shaped tensors.
//!
//! Each matrix block `M` (rows x cols; a convolution's `[out, in, kh, kw]` is `out` x
//! `in kh kw`) is sent as two thin factors: `P = orthonormalised(M Q)` (rows x r) and
//! `Q' = M^T P` (cols x r), from one step of power iteration started at the previous `Q'`
//! (warm start, kept by the sender in [`PowerSgd`]); the receiver rebuilds `P Q'^T`, the best
//! rank-r approximation once the iteration has converged. Blocks too small to gain from it,
//! and every value outside the blocks (biases), are sent whole. The factors and whole values
//! go through the chosen quantizer ([`super`]). Use it with error feedback: a single
//! power step drops what lies outside the current subspace, and error feedback sends it later.
//!
//! The encoding is self-describing: it lists each compressed block's offset and shape, and
//! [`super::decode`] reads it, checking every block lies inside the vector, in
//! order and without overlap.

use rand::Rng;

use super::{self as compress, CompressError, Compression, Quantize, Sparsify};
use crate::bytes::{Reader, Writer};

/// The first byte of a PowerSGD encoding (distinct from [`super`]'s versions).
pub(crate) const TAG: u8 = 0x50;
const HEADER: usize = 1 + 4 + 4 + 4; // tag, n, rank, blocks
const BLOCK: usize = 4 + 4 + 4; // offset, rows, cols

/// A matrix-shaped tensor inside a flat parameter vector, stored row-major.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    /// Index of its first value.
    pub offset: usize,
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
}

impl Block {
    fn len(&self) -> usize {
        self.rows * self.cols
    }
}

/// The rank actually used for `b` at `rank`, or 0 if sending the factors would not be smaller
/// than sending the block whole.
fn effective_rank(b: &Block, rank: usize) -> usize {
    let r = rank.min(b.rows).min(b.cols);
    if r == 0 || (b.rows + b.cols) * r >= b.len() {
        0
    } else {
        r
    }
}

/// The sender's side: the rank and each block's warm-start query `Q`.
#[derive(Debug, Clone, Default)]
pub struct PowerSgd {
    queries: Vec<Vec<f32>>,
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum()
}

/// Gram-Schmidt on the `r` columns of the row-major `rows` x `r` matrix `p`. A column that
/// vanishes (the block has lower rank) is set to zero.
fn orthonormalise(p: &mut [f32], rows: usize, r: usize) {
    let mut cols: Vec<Vec<f32>> = (0..r)
        .map(|k| (0..rows).map(|i| p[i * r + k]).collect())
        .collect();
    for k in 0..r {
        for j in 0..k {
            let d = dot(&cols[k], &cols[j]) as f32;
            let (head, tail) = cols.split_at_mut(k);
            for (x, y) in tail[0].iter_mut().zip(&head[j]) {
                *x -= d * y;
            }
        }
        let norm = dot(&cols[k], &cols[k]).sqrt() as f32;
        for x in cols[k].iter_mut() {
            *x = if norm > 1e-12 { *x / norm } else { 0.0 };
        }
    }
    for (k, c) in cols.iter().enumerate() {
        for (i, v) in c.iter().enumerate() {
            p[i * r + k] = *v;
        }
    }
}

impl PowerSgd {
    /// Compresses `x` (laid out as `blocks` say) at `rank`, the factors and whole values
    /// written with `quantize`. `rng` draws the first query of each block and the
    /// quantizer's random choices.
    pub fn encode(
        &mut self, x: &[f32], blocks: &[Block], rank: usize, quantize: Quantize, rng: &mut impl Rng,
    ) -> Result<Vec<u8>, CompressError> {
        check_blocks(blocks, x.len()).map_err(CompressError::Config)?;
        if rank == 0 {
            return Err(CompressError::Config(
                "power-sgd rank must be at least 1".into(),
            ));
        }
        if self.queries.len() != blocks.len() {
            self.queries = vec![Vec::new(); blocks.len()];
        }
        let mut values = Vec::new();
        let mut used = Vec::new();
        let mut next = 0;
        for (b, q) in blocks.iter().zip(self.queries.iter_mut()) {
            let r = effective_rank(b, rank);
            if r == 0 {
                continue;
            }
            values.extend_from_slice(&x[next..b.offset]);
            next = b.offset + b.len();
            let m = &x[b.offset..next];
            if q.len() != b.cols * r {
                *q = (0..b.cols * r).map(|_| rng.random::<f32>() - 0.5).collect();
            }
            // P = M Q, orthonormalised; Q = M^T P.
            let mut p = vec![0f32; b.rows * r];
            for i in 0..b.rows {
                let row = &m[i * b.cols..(i + 1) * b.cols];
                for k in 0..r {
                    p[i * r + k] = (0..b.cols).map(|j| row[j] * q[j * r + k]).sum();
                }
            }
            orthonormalise(&mut p, b.rows, r);
            let mut qn = vec![0f32; b.cols * r];
            for i in 0..b.rows {
                let row = &m[i * b.cols..(i + 1) * b.cols];
                for k in 0..r {
                    let pik = p[i * r + k];
                    if pik != 0.0 {
                        for j in 0..b.cols {
                            qn[j * r + k] += row[j] * pik;
                        }
                    }
                }
            }
            values.extend_from_slice(&p);
            values.extend_from_slice(&qn);
            *q = qn;
            used.push((*b, r));
        }
        values.extend_from_slice(&x[next..]);
        let mut out = Writer::with_capacity(HEADER + BLOCK * used.len());
        out.u8(TAG);
        for v in [x.len(), rank, used.len()] {
            out.u32(v as u32);
        }
        for (b, _) in &used {
            for v in [b.offset, b.rows, b.cols] {
                out.u32(v as u32);
            }
        }
        let dense = Compression {
            sparsify: Sparsify::None,
            quantize,
        };
        out.raw(&compress::encode(&values, &dense, rng)?);
        Ok(out.into_vec())
    }
}

/// Blocks must lie inside a vector of `n`, in increasing order, without overlap.
fn check_blocks(blocks: &[Block], n: usize) -> Result<(), String> {
    let mut end = 0;
    for b in blocks {
        if b.offset < end || b.rows == 0 || b.cols == 0 {
            return Err(format!("matrix block at {} overlaps or is empty", b.offset));
        }
        end = b
            .rows
            .checked_mul(b.cols)
            .and_then(|l| l.checked_add(b.offset))
            .filter(|&e| e <= n)
            .ok_or_else(|| format!("matrix block at {} does not fit {n} values", b.offset))?;
    }
    Ok(())
}

/// Exact length of [`PowerSgd::encode`]'s output.
pub fn encoded_len(n: usize, blocks: &[Block], rank: usize, quantize: Quantize) -> usize {
    let mut values = n;
    let mut used = 0;
    for b in blocks {
        let r = effective_rank(b, rank);
        if r > 0 {
            values = values - b.len() + (b.rows + b.cols) * r;
            used += 1;
        }
    }
    let dense = Compression {
        sparsify: Sparsify::None,
        quantize,
    };
    HEADER + BLOCK * used + compress::encoded_len(values, &dense)
}

/// Decodes a PowerSGD encoding of a vector of `n` values.
pub(crate) fn decode(bytes: &[u8], n: usize) -> Result<Vec<f32>, CompressError> {
    let bad = |why: String| CompressError::Malformed(why);
    if bytes.len() < HEADER {
        return Err(bad("a power-sgd vector shorter than its header".into()));
    }
    let mut r = Reader::new(bytes);
    r.u8("tag")?;
    let (got_n, rank) = (r.u32("length")? as usize, r.u32("rank")? as usize);
    if got_n != n {
        return Err(bad(format!("{got_n} values, expected {n}")));
    }
    let count = r.u32("blocks")? as usize;
    if count.saturating_mul(BLOCK) > r.remaining() {
        return Err(bad(format!("{count} blocks do not fit the message")));
    }
    let mut blocks = Vec::with_capacity(count);
    for _ in 0..count {
        blocks.push(Block {
            offset: r.u32("block offset")? as usize,
            rows: r.u32("block rows")? as usize,
            cols: r.u32("block columns")? as usize,
        });
    }
    check_blocks(&blocks, n).map_err(bad)?;
    let mut values_len = n;
    let mut ranks = Vec::with_capacity(count);
    for b in &blocks {
        let r = effective_rank(b, rank);
        if r == 0 {
            return Err(bad(format!(
                "block at {} would not be compressed",
                b.offset
            )));
        }
        values_len = values_len - b.len() + (b.rows + b.cols) * r;
        ranks.push(r);
    }
    let values = compress::decode(r.rest(), values_len)?;
    let mut out = Vec::with_capacity(n);
    let mut pos = 0;
    for (b, r) in blocks.iter().zip(ranks) {
        let whole = b.offset - out.len();
        out.extend_from_slice(&values[pos..pos + whole]);
        pos += whole;
        let p = &values[pos..pos + b.rows * r];
        let q = &values[pos + b.rows * r..pos + (b.rows + b.cols) * r];
        pos += (b.rows + b.cols) * r;
        for i in 0..b.rows {
            for j in 0..b.cols {
                out.push((0..r).map(|k| p[i * r + k] * q[j * r + k]).sum());
            }
        }
    }
    out.extend_from_slice(&values[pos..]);
    if out.len() != n || out.iter().any(|v| !v.is_finite()) {
        return Err(bad("power-sgd factors do not rebuild the vector".into()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A rank-2 20 x 30 matrix, then 7 loose values, then a 4 x 3 block (too small to gain).
    fn example() -> (Vec<f32>, Vec<Block>) {
        let mut x = Vec::new();
        for i in 0..20 {
            for j in 0..30 {
                x.push(
                    (i as f32 * 0.3).sin() * (j as f32 * 0.2).cos()
                        + 0.5 * (i % 3) as f32 * (j % 4) as f32 / 10.0,
                );
            }
        }
        x.extend((0..7).map(|i| i as f32 - 3.0));
        x.extend((0..12).map(|i| i as f32 * 0.1));
        let blocks = vec![
            Block {
                offset: 0,
                rows: 20,
                cols: 30,
            },
            Block {
                offset: 607,
                rows: 4,
                cols: 3,
            },
        ];
        (x, blocks)
    }

    #[test]
    fn a_low_rank_block_is_recovered_and_the_rest_sent_whole() {
        let (x, blocks) = example();
        let mut ps = PowerSgd::default();
        let mut rng = crate::seed::rng(1, &[]);
        // A few warm-started power steps converge on the rank-2 matrix.
        let mut y = Vec::new();
        for _ in 0..4 {
            let bytes = ps.encode(&x, &blocks, 2, Quantize::F32, &mut rng).unwrap();
            assert_eq!(bytes.len(), encoded_len(x.len(), &blocks, 2, Quantize::F32));
            y = compress::decode(&bytes, x.len()).unwrap();
        }
        let err: f32 = x[..600]
            .iter()
            .zip(&y)
            .map(|(a, b)| (a - b).powi(2))
            .sum::<f32>()
            .sqrt();
        let norm: f32 = x[..600].iter().map(|a| a * a).sum::<f32>().sqrt();
        assert!(err < 1e-4 * norm, "{err} of {norm}");
        assert_eq!(
            &y[600..],
            &x[600..],
            "loose values and the small block go whole"
        );
        // (20 + 30) x 2 factors instead of 600 values.
        assert!(encoded_len(x.len(), &blocks, 2, Quantize::F32) < 4 * (100 + 19) + 64);
    }

    #[test]
    fn malformed_encodings_are_refused() {
        let (x, blocks) = example();
        let bytes = PowerSgd::default()
            .encode(
                &x,
                &blocks,
                2,
                Quantize::Fp16,
                &mut crate::seed::rng(2, &[]),
            )
            .unwrap();
        assert!(compress::decode(&bytes, x.len()).is_ok());
        assert!(compress::decode(&bytes, x.len() + 1).is_err());
        for cut in [1, HEADER, HEADER + 5, bytes.len() - 1] {
            assert!(compress::decode(&bytes[..cut], x.len()).is_err(), "{cut}");
        }
        // A block that runs past the end, or a rank that would leave it whole.
        let mut past = bytes.clone();
        past[HEADER + 4..HEADER + 8].copy_from_slice(&1000u32.to_le_bytes());
        assert!(compress::decode(&past, x.len()).is_err());
        let mut big_rank = bytes;
        big_rank[5..9].copy_from_slice(&100u32.to_le_bytes());
        assert!(compress::decode(&big_rank, x.len()).is_err());
        // Bad layouts are refused at the sender.
        let overlap = [
            Block {
                offset: 0,
                rows: 20,
                cols: 30,
            },
            Block {
                offset: 599,
                rows: 2,
                cols: 2,
            },
        ];
        assert!(PowerSgd::default()
            .encode(
                &x,
                &overlap,
                2,
                Quantize::F32,
                &mut crate::seed::rng(1, &[])
            )
            .is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        /// Error feedback over PowerSGD loses nothing: the decoded outputs plus the residual
        /// sum to the inputs, whatever the rank.
        #[test]
        fn error_feedback_over_power_sgd_loses_nothing(
            xs in prop::collection::vec(prop::collection::vec(-5f32..5.0, 8 * 12 + 5), 1..5),
            rank in 1usize..4,
        ) {
            let blocks = [Block { offset: 2, rows: 8, cols: 12 }];
            let mut ps = PowerSgd::default();
            let mut ef = compress::ErrorFeedback::default();
            let n = xs[0].len();
            let (mut sent, mut input) = (vec![0f64; n], vec![0f64; n]);
            let mut rng = crate::seed::rng(3, &[]);
            for x in &xs {
                let bytes = ef
                    .encode_with(x, |v| ps.encode(v, &blocks, rank, Quantize::F32, &mut rng))
                    .unwrap();
                prop_assert_eq!(bytes.len(), encoded_len(n, &blocks, rank, Quantize::F32));
                let y = compress::decode(&bytes, n).unwrap();
                for i in 0..n {
                    sent[i] += f64::from(y[i]);
                    input[i] += f64::from(x[i]);
                }
            }
            for i in 0..n {
                prop_assert!((sent[i] + f64::from(ef.residual()[i]) - input[i]).abs() < 1e-3);
            }
        }
    }
}
