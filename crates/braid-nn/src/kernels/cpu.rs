//! The CPU kernels behind [`super`]: a 3x3 convolution (stride 1, padding 1) fused with its
//! bias and ReLU, and 2x2 max-pooling, forward and backward, on plain `f32` slices in NCHW order.
//!
//! The convolution is an im2col + GEMM: the input is unfolded once into a `[cin*9, n*h*w]`
//! matrix (kept for the weight gradient), and each of the forward, weight-gradient and
//! input-gradient products is one large matrix product over the whole batch, done by the
//! `gemm` crate with the threads of the current rayon pool. The input gradient is skipped when
//! the input needs none (the first layer).

use gemm::Parallelism;
use rayon::prelude::*;

/// The shape of a 3x3 convolution's input: `[n, cin, h, w]`, and its output channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvShape {
    /// Batch size.
    pub n: usize,
    /// Input channels.
    pub cin: usize,
    /// Output channels.
    pub cout: usize,
    /// Height (input and output).
    pub h: usize,
    /// Width (input and output).
    pub w: usize,
}

impl ConvShape {
    /// Pixels per image plane.
    pub fn hw(&self) -> usize {
        self.h * self.w
    }
    /// Rows of the unfolded input: `cin * 9`.
    pub fn k(&self) -> usize {
        self.cin * 9
    }
    /// Columns of the unfolded input: `n * h * w`.
    pub fn cols(&self) -> usize {
        self.n * self.hw()
    }
}

/// A row-major or strided view of a matrix for [`matmul`].
#[derive(Clone, Copy)]
struct Mat<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<'a> Mat<'a> {
    fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }
    fn t(self) -> Self {
        Self {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
        }
    }
    /// The largest index the view touches (none if empty).
    fn fits(&self) -> bool {
        self.rows == 0
            || self.cols == 0
            || (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride
                < self.data.len()
    }
}

fn parallelism() -> Parallelism {
    match rayon::current_num_threads() {
        0 | 1 => Parallelism::None,
        t => Parallelism::Rayon(t),
    }
}

/// The most inner-dimension values one `gemm` call sums: every product is split into depth
/// blocks of this size, summed in order. `gemm` chooses its own depth blocking from the CPU's
/// cache sizes and vector width when the inner dimension is larger, which makes the rounding,
/// and so the bits of every result, depend on the machine; at or below this size it takes the
/// whole depth in one block on every x86-64 CPU. See docs/architecture.md, "Numerics".
pub const DEPTH_BLOCK: usize = 512;

/// True when `gemm` 0.19 would compute `a · b` with dot products reduced across SIMD lanes (its
/// "horizontal" microkernels for small outputs, and its row-major matrix-vector product): both
/// operands contiguous along the inner dimension, and an output of at most 16 x 16 values or
/// a single row or column. The number of lanes, and so the order of the sum, depends on the
/// CPU (8 with AVX2, 16 with AVX-512); its other kernels accumulate each output in inner order.
fn reduces_across_lanes(a: &Mat<'_>, b: &Mat<'_>) -> bool {
    let (m, n) = (a.rows, b.cols);
    a.col_stride == 1 && b.row_stride == 1 && (m * n <= 16 * 16 || m <= 1 || n <= 1)
}

/// `dst[m, n] (row-major) = a · b`, or `dst += a · b` when `accumulate`, with bits that do not
/// depend on the CPU: the inner dimension is summed in blocks of [`DEPTH_BLOCK`], and an
/// operand is copied into another layout when `gemm` would otherwise reduce across SIMD lanes.
fn matmul(dst: &mut [f32], a: Mat<'_>, b: Mat<'_>, accumulate: bool) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert!(
        b.rows == k && dst.len() == m * n && a.fits() && b.fits(),
        "matmul: shapes do not agree"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst.fill(0.0);
        }
        return;
    }
    if reduces_across_lanes(&a, &b) {
        if m == 1 && n == 1 {
            // A dot product: in inner order.
            let dot = (0..k).fold(0.0f32, |acc, p| {
                acc + a.data[p * a.col_stride] * b.data[p * b.row_stride]
            });
            dst[0] = if accumulate { dst[0] + dot } else { dot };
            return;
        }
        if n == 1 {
            // `a` column-major: gemm then adds one column of `a` per inner index.
            let cols: Vec<f32> = (0..k)
                .flat_map(|p| (0..m).map(move |i| (i, p)))
                .map(|(i, p)| a.data[i * a.row_stride + p * a.col_stride])
                .collect();
            let a = Mat {
                data: &cols,
                rows: m,
                cols: k,
                row_stride: 1,
                col_stride: m,
            };
            return matmul_blocks(dst, a, b, accumulate);
        }
        // `b` row-major: gemm then adds one row of `b` per inner index.
        let rows: Vec<f32> = (0..k)
            .flat_map(|p| (0..n).map(move |j| (p, j)))
            .map(|(p, j)| b.data[p * b.row_stride + j * b.col_stride])
            .collect();
        return matmul_blocks(dst, a, Mat::row_major(&rows, k, n), accumulate);
    }
    matmul_blocks(dst, a, b, accumulate)
}

/// [`matmul`]'s products, one `gemm` call per depth block.
fn matmul_blocks(dst: &mut [f32], a: Mat<'_>, b: Mat<'_>, accumulate: bool) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    let mut depth = 0;
    while depth < k {
        let block = (k - depth).min(DEPTH_BLOCK);
        // SAFETY: every index the product reads or writes is in bounds: `matmul` checked with
        // `fits` that the operands hold all `k` inner indices (a copy made there holds them
        // too), and this block reads inner indices `depth..depth + block` only (the pointers
        // are offset by `depth` inner steps); the row-major destination holds `m * n` values.
        // The destination does not alias the operands (it is a distinct `&mut`), and f32 is a
        // type gemm supports.
        unsafe {
            gemm::gemm(
                m,
                n,
                block,
                dst.as_mut_ptr(),
                1,
                n as isize,
                accumulate || depth > 0,
                a.data.as_ptr().add(depth * a.col_stride),
                a.col_stride as isize,
                a.row_stride as isize,
                b.data.as_ptr().add(depth * b.row_stride),
                b.col_stride as isize,
                b.row_stride as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                parallelism(),
            );
        }
        depth += block;
    }
}

/// `x · weight + bias` for `x: [rows, inputs]`, `weight: [inputs, outputs]` (burn's layout),
/// `bias: [outputs]`: a fully connected layer, `[rows, outputs]`.
pub fn linear_forward(
    x: &[f32], weight: &[f32], bias: &[f32], rows: usize, inputs: usize, outputs: usize,
) -> Vec<f32> {
    assert!(
        x.len() == rows * inputs && weight.len() == inputs * outputs && bias.len() == outputs,
        "linear_forward: buffer sizes do not match the shape"
    );
    let mut y = vec![0.0f32; rows * outputs];
    if outputs == 0 {
        return y;
    }
    for row in y.chunks_exact_mut(outputs) {
        row.copy_from_slice(bias);
    }
    matmul(
        &mut y,
        Mat::row_major(x, rows, inputs),
        Mat::row_major(weight, inputs, outputs),
        true,
    );
    y
}

/// Gradients of [`linear_forward`] from the output gradient `dy`: `(dx, dweight, dbias)`, with
/// `dx` only when `need_dx`. The bias gradient sums the rows in order.
pub fn linear_backward(
    dy: &[f32], x: &[f32], weight: &[f32], (rows, inputs, outputs): (usize, usize, usize),
    need_dx: bool,
) -> (Option<Vec<f32>>, Vec<f32>, Vec<f32>) {
    assert!(
        dy.len() == rows * outputs && x.len() == rows * inputs && weight.len() == inputs * outputs,
        "linear_backward: buffer sizes do not match the shape"
    );
    let mut dbias = vec![0.0f32; outputs];
    if outputs > 0 {
        for row in dy.chunks_exact(outputs) {
            for (d, g) in dbias.iter_mut().zip(row) {
                *d += g;
            }
        }
    }
    // dw[i, o] = sum_r x[r, i] dy[r, o]
    let mut dweight = vec![0.0f32; inputs * outputs];
    matmul(
        &mut dweight,
        Mat::row_major(x, rows, inputs).t(),
        Mat::row_major(dy, rows, outputs),
        false,
    );
    let dx = need_dx.then(|| {
        // dx[r, i] = sum_o dy[r, o] w[i, o]
        let mut dx = vec![0.0f32; rows * inputs];
        matmul(
            &mut dx,
            Mat::row_major(dy, rows, outputs),
            Mat::row_major(weight, inputs, outputs).t(),
            false,
        );
        dx
    });
    (dx, dweight, dbias)
}

/// Unfolds `x` (`[n, cin, h, w]`) into `col` (`[cin*9, n*h*w]`, row `ci*9 + ky*3 + kx`):
/// `col[(ci,ky,kx), (b,i,j)] = x[b, ci, i+ky-1, j+kx-1]`, zero outside the image.
pub fn im2col(x: &[f32], s: ConvShape) -> Vec<f32> {
    let (hw, cols) = (s.hw(), s.cols());
    let mut col = vec![0.0f32; s.k() * cols];
    if cols == 0 {
        return col;
    }
    col.par_chunks_mut(cols).enumerate().for_each(|(r, row)| {
        let (ci, ky, kx) = (r / 9, (r % 9) / 3, r % 3);
        for b in 0..s.n {
            let plane = &x[(b * s.cin + ci) * hw..][..hw];
            let out = &mut row[b * hw..][..hw];
            for i in 0..s.h {
                let dst = &mut out[i * s.w..][..s.w];
                let Some(si) = (i + ky).checked_sub(1).filter(|&si| si < s.h) else {
                    continue; // zero padding row (already zero)
                };
                let src = &plane[si * s.w..][..s.w];
                match kx {
                    0 => dst[1..].copy_from_slice(&src[..s.w - 1]),
                    1 => dst.copy_from_slice(src),
                    _ => dst[..s.w - 1].copy_from_slice(&src[1..]),
                }
            }
        }
    });
    col
}

/// Folds `dcol` (`[cin*9, n*h*w]`) back onto the input: the adjoint of [`im2col`].
fn col2im(dcol: &[f32], s: ConvShape) -> Vec<f32> {
    let (hw, cols) = (s.hw(), s.cols());
    let mut dx = vec![0.0f32; s.n * s.cin * hw];
    if hw == 0 {
        return dx;
    }
    dx.par_chunks_mut(hw)
        .enumerate()
        .for_each(|(plane_idx, plane)| {
            let (b, ci) = (plane_idx / s.cin, plane_idx % s.cin);
            for ky in 0..3 {
                for kx in 0..3 {
                    let row = &dcol[(ci * 9 + ky * 3 + kx) * cols + b * hw..][..hw];
                    for i in 0..s.h {
                        let Some(si) = (i + ky).checked_sub(1).filter(|&si| si < s.h) else {
                            continue;
                        };
                        let src = &row[i * s.w..][..s.w];
                        let dst = &mut plane[si * s.w..][..s.w];
                        let (d, r) = match kx {
                            0 => (&mut dst[..s.w - 1], &src[1..]),
                            1 => (&mut dst[..], src),
                            _ => (&mut dst[1..], &src[..s.w - 1]),
                        };
                        for (d, r) in d.iter_mut().zip(r) {
                            *d += r;
                        }
                    }
                }
            }
        });
    dx
}

/// What the forward pass keeps for the backward pass.
#[derive(Debug, Clone)]
pub struct ConvSaved {
    /// The shape.
    pub shape: ConvShape,
    /// The unfolded input, `[cin*9, n*h*w]`.
    pub col: Vec<f32>,
}

/// `relu(conv3x3(x, weight) + bias)` for `x: [n, cin, h, w]`, `weight: [cout, cin, 3, 3]`,
/// `bias: [cout]`; returns the output `[n, cout, h, w]` and the unfolded input.
pub fn conv3x3_relu_forward(
    x: &[f32], weight: &[f32], bias: &[f32], s: ConvShape,
) -> (Vec<f32>, ConvSaved) {
    assert!(
        x.len() == s.n * s.cin * s.hw() && weight.len() == s.cout * s.k() && bias.len() == s.cout,
        "conv3x3_relu_forward: buffer sizes do not match the shape"
    );
    let col = im2col(x, s);
    let (hw, cols) = (s.hw(), s.cols());
    // y2[co, b*hw + p] = sum_k w[co, k] col[k, b*hw + p]
    let mut y2 = vec![0.0f32; s.cout * cols];
    matmul(
        &mut y2,
        Mat::row_major(weight, s.cout, s.k()),
        Mat::row_major(&col, s.k(), cols),
        false,
    );
    // To NCHW, with the bias and the ReLU.
    let mut y = vec![0.0f32; s.n * s.cout * hw];
    if hw > 0 {
        y.par_chunks_mut(hw)
            .enumerate()
            .for_each(|(plane_idx, out)| {
                let (b, co) = (plane_idx / s.cout, plane_idx % s.cout);
                let src = &y2[co * cols + b * hw..][..hw];
                let bias = bias[co];
                for (o, v) in out.iter_mut().zip(src) {
                    *o = (v + bias).max(0.0);
                }
            });
    }
    (y, ConvSaved { shape: s, col })
}

/// Gradients of [`conv3x3_relu_forward`] from the output gradient `dy` and the output `y`:
/// `(dx, dweight, dbias)`, with `dx` only when `need_dx`.
pub fn conv3x3_relu_backward(
    dy: &[f32], y: &[f32], weight: &[f32], saved: &ConvSaved, need_dx: bool,
) -> (Option<Vec<f32>>, Vec<f32>, Vec<f32>) {
    let s = saved.shape;
    let (hw, cols) = (s.hw(), s.cols());
    assert!(
        dy.len() == s.n * s.cout * hw && y.len() == dy.len() && weight.len() == s.cout * s.k(),
        "conv3x3_relu_backward: buffer sizes do not match the shape"
    );
    // g2[co, b*hw + p] = dy[b, co, p] where the ReLU let the value through.
    let mut g2 = vec![0.0f32; s.cout * cols];
    if cols > 0 {
        g2.par_chunks_mut(cols).enumerate().for_each(|(co, row)| {
            for b in 0..s.n {
                let at = (b * s.cout + co) * hw;
                let (dyp, yp) = (&dy[at..][..hw], &y[at..][..hw]);
                for ((g, d), v) in row[b * hw..][..hw].iter_mut().zip(dyp).zip(yp) {
                    // Branch-free (a ReLU passes about half its inputs, so a branch mispredicts).
                    let keep = u32::from(*v > 0.0).wrapping_neg();
                    *g = f32::from_bits(d.to_bits() & keep);
                }
            }
        });
    }
    let dbias: Vec<f32> = if cols > 0 {
        g2.par_chunks(cols).map(sum).collect()
    } else {
        vec![0.0; s.cout]
    };
    // dw[co, k] = sum_c g2[co, c] col[k, c]
    let mut dweight = vec![0.0f32; s.cout * s.k()];
    matmul(
        &mut dweight,
        Mat::row_major(&g2, s.cout, cols),
        Mat::row_major(&saved.col, s.k(), cols).t(),
        false,
    );
    let dx = need_dx.then(|| {
        // dcol[k, c] = sum_co w[co, k] g2[co, c]
        let mut dcol = vec![0.0f32; s.k() * cols];
        matmul(
            &mut dcol,
            Mat::row_major(weight, s.cout, s.k()).t(),
            Mat::row_major(&g2, s.cout, cols),
            false,
        );
        col2im(&dcol, s)
    });
    (dx, dweight, dbias)
}

/// A sum in eight lanes (vectorizes; a plain fold is one long dependency chain).
fn sum(v: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let chunks = v.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for (l, x) in lanes.iter_mut().zip(c) {
            *l += x;
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// The larger of two values and whether it is the second; NaN wins. Branch-free.
#[inline(always)]
fn pick(a: f32, b: f32) -> (f32, bool) {
    let second = (b > a) | b.is_nan();
    (if second { b } else { a }, second)
}

/// 2x2 max-pooling with stride 2 of `x: [planes, h, w]` (a trailing odd row or column is
/// dropped, as burn's and PyTorch's floor mode do). Returns the output `[planes, h/2, w/2]`
/// and, per output, which of the four inputs won (0..4, row-major in the window). NaN wins.
pub fn max_pool2x2_forward(x: &[f32], planes: usize, h: usize, w: usize) -> (Vec<f32>, Vec<u8>) {
    assert!(
        x.len() == planes * h * w,
        "max_pool2x2_forward: buffer size does not match"
    );
    let (oh, ow) = (h / 2, w / 2);
    let mut out = vec![0.0f32; planes * oh * ow];
    let mut arg = vec![0u8; planes * oh * ow];
    if oh * ow == 0 {
        return (out, arg);
    }
    out.par_chunks_mut(oh * ow)
        .zip(arg.par_chunks_mut(oh * ow))
        .enumerate()
        .for_each(|(p, (out, arg))| {
            let plane = &x[p * h * w..][..h * w];
            for i in 0..oh {
                let (r0, r1) = (&plane[2 * i * w..][..w], &plane[(2 * i + 1) * w..][..w]);
                let (out, arg) = (&mut out[i * ow..][..ow], &mut arg[i * ow..][..ow]);
                // Iterators rather than indices: no bounds checks in the loop.
                for (((o, a), top), bottom) in out
                    .iter_mut()
                    .zip(arg.iter_mut())
                    .zip(r0.chunks_exact(2))
                    .zip(r1.chunks_exact(2))
                {
                    let (top, t) = pick(top[0], top[1]);
                    let (bottom, b) = pick(bottom[0], bottom[1]);
                    let (best, lower) = pick(top, bottom);
                    *o = best;
                    *a = (u8::from(lower) << 1) | u8::from(if lower { b } else { t });
                }
            }
        });
    (out, arg)
}

/// The gradient of [`max_pool2x2_forward`]: each output gradient goes to the input that won.
pub fn max_pool2x2_backward(
    dout: &[f32], arg: &[u8], planes: usize, h: usize, w: usize,
) -> Vec<f32> {
    let (oh, ow) = (h / 2, w / 2);
    assert!(
        dout.len() == planes * oh * ow && arg.len() == dout.len(),
        "max_pool2x2_backward: buffer sizes do not match"
    );
    let mut dx = vec![0.0f32; planes * h * w];
    if h * w == 0 || oh * ow == 0 {
        return dx;
    }
    dx.par_chunks_mut(h * w).enumerate().for_each(|(p, plane)| {
        let (d, a) = (
            &dout[p * oh * ow..][..oh * ow],
            &arg[p * oh * ow..][..oh * ow],
        );
        for i in 0..oh {
            for j in 0..ow {
                let at = a[i * ow + j] as usize;
                plane[(2 * i + at / 2) * w + 2 * j + at % 2] = d[i * ow + j];
            }
        }
    });
    dx
}

#[cfg(test)]
#[path = "cpu_tests.rs"]
mod tests;
