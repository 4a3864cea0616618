//! Unit tests of `cpu.rs`.

use super::*;

/// Direct 3x3 convolution with padding 1, bias and ReLU (the definition).
fn conv_direct(x: &[f32], wt: &[f32], bias: &[f32], s: ConvShape) -> Vec<f32> {
    let mut y = vec![0.0; s.n * s.cout * s.hw()];
    for b in 0..s.n {
        for co in 0..s.cout {
            for i in 0..s.h {
                for j in 0..s.w {
                    let mut acc = bias[co];
                    for ci in 0..s.cin {
                        for ky in 0..3 {
                            for kx in 0..3 {
                                let (si, sj) =
                                    (i as isize + ky as isize - 1, j as isize + kx as isize - 1);
                                if si < 0 || sj < 0 || si >= s.h as isize || sj >= s.w as isize {
                                    continue;
                                }
                                acc += wt[((co * s.cin + ci) * 3 + ky) * 3 + kx]
                                    * x[((b * s.cin + ci) * s.h + si as usize) * s.w + sj as usize];
                            }
                        }
                    }
                    y[((b * s.cout + co) * s.h + i) * s.w + j] = acc.max(0.0);
                }
            }
        }
    }
    y
}

fn values(len: usize, seed: u32) -> Vec<f32> {
    (0..len)
        .map(|i| {
            let v = (i as u32)
                .wrapping_mul(2_654_435_761)
                .wrapping_add(seed.wrapping_mul(40_503));
            (v >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        })
        .collect()
}

#[test]
fn conv_forward_matches_the_direct_definition() {
    for s in [
        ConvShape {
            n: 2,
            cin: 3,
            cout: 4,
            h: 5,
            w: 6,
        },
        ConvShape {
            n: 1,
            cin: 1,
            cout: 2,
            h: 1,
            w: 1,
        },
        ConvShape {
            n: 3,
            cin: 2,
            cout: 5,
            h: 4,
            w: 2,
        },
    ] {
        let x = values(s.n * s.cin * s.hw(), 1);
        let wt = values(s.cout * s.k(), 2);
        let bias = values(s.cout, 3);
        let (y, _) = conv3x3_relu_forward(&x, &wt, &bias, s);
        let want = conv_direct(&x, &wt, &bias, s);
        for (a, b) in y.iter().zip(&want) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b} for {s:?}");
        }
    }
}

#[test]
fn col2im_is_the_adjoint_of_im2col() {
    // <im2col(x), c> == <x, col2im(c)> for any x and c.
    let s = ConvShape {
        n: 2,
        cin: 3,
        cout: 1,
        h: 4,
        w: 5,
    };
    let x = values(s.n * s.cin * s.hw(), 4);
    let c = values(s.k() * s.cols(), 5);
    let lhs: f64 = im2col(&x, s)
        .iter()
        .zip(&c)
        .map(|(a, b)| f64::from(a * b))
        .sum();
    let rhs: f64 = x
        .iter()
        .zip(&col2im(&c, s))
        .map(|(a, b)| f64::from(a * b))
        .sum();
    assert!((lhs - rhs).abs() < 1e-4, "{lhs} vs {rhs}");
}

#[test]
fn conv_backward_matches_finite_differences() {
    let s = ConvShape {
        n: 2,
        cin: 2,
        cout: 3,
        h: 4,
        w: 3,
    };
    let x = values(s.n * s.cin * s.hw(), 6);
    let wt = values(s.cout * s.k(), 7);
    let bias: Vec<f32> = values(s.cout, 8).iter().map(|v| v + 0.3).collect();
    let r = values(s.n * s.cout * s.hw(), 9); // loss = <y, r>
                                              // The loss <y, r> and which ReLUs let their value through.
    let loss = |x: &[f32], wt: &[f32], bias: &[f32]| -> (f64, Vec<bool>) {
        let (y, _) = conv3x3_relu_forward(x, wt, bias, s);
        let l = y
            .iter()
            .zip(&r)
            .map(|(a, b)| f64::from(*a) * f64::from(*b))
            .sum();
        (l, y.iter().map(|v| *v > 0.0).collect())
    };
    let (y, saved) = conv3x3_relu_forward(&x, &wt, &bias, s);
    let (dx, dw, db) = conv3x3_relu_backward(&r, &y, &wt, &saved, true);
    let dx = dx.expect("dx was asked for");
    let eps = 1e-2f32;
    let mut checked = 0;
    // Central differences, where the step flips no ReLU (the loss is linear there).
    let mut check =
        |what: &str, i: usize, analytic: f32, plus: (f64, Vec<bool>), minus: (f64, Vec<bool>)| {
            if plus.1 != minus.1 {
                return;
            }
            let numeric = (plus.0 - minus.0) / (2.0 * f64::from(eps));
            assert!(
                (f64::from(analytic) - numeric).abs() < 1e-3,
                "{what}[{i}]: {analytic} vs {numeric}"
            );
            checked += 1;
        };
    for i in 0..x.len() {
        let (mut p, mut m) = (x.clone(), x.clone());
        p[i] += eps;
        m[i] -= eps;
        check("dx", i, dx[i], loss(&p, &wt, &bias), loss(&m, &wt, &bias));
    }
    for i in 0..wt.len() {
        let (mut p, mut m) = (wt.clone(), wt.clone());
        p[i] += eps;
        m[i] -= eps;
        check("dw", i, dw[i], loss(&x, &p, &bias), loss(&x, &m, &bias));
    }
    for i in 0..bias.len() {
        let (mut p, mut m) = (bias.clone(), bias.clone());
        p[i] += eps;
        m[i] -= eps;
        check("db", i, db[i], loss(&x, &wt, &p), loss(&x, &wt, &m));
    }
    assert!(
        checked > (x.len() + wt.len()) / 2,
        "only {checked} gradients checked"
    );
    let (none, dw2, db2) = conv3x3_relu_backward(&r, &y, &wt, &saved, false);
    assert!(none.is_none());
    assert_eq!((dw2, db2), (dw, db));
}

#[test]
fn max_pool_picks_the_window_maximum_and_routes_its_gradient() {
    // One 3x5 plane: the odd last row and column are dropped.
    let x = [
        1.0, 5.0, 2.0, 0.0, 9.0, //
        3.0, 4.0, 8.0, 7.0, 9.0, //
        9.0, 9.0, 9.0, 9.0, 9.0,
    ];
    let (out, arg) = max_pool2x2_forward(&x, 1, 3, 5);
    assert_eq!(out, vec![5.0, 8.0]);
    assert_eq!(arg, vec![1, 2]);
    let dx = max_pool2x2_backward(&[10.0, 20.0], &arg, 1, 3, 5);
    let mut want = vec![0.0; 15];
    want[1] = 10.0;
    want[7] = 20.0;
    assert_eq!(dx, want);
    let (nan, _) = max_pool2x2_forward(&[1.0, f32::NAN, 3.0, 2.0], 1, 2, 2);
    assert!(nan[0].is_nan());
}

#[test]
fn linear_matches_the_definition_in_values_and_gradients() {
    // Inner dimensions below, at and above one depth block.
    for (rows, inputs, outputs) in [
        (3, 5, 4),
        (2, DEPTH_BLOCK, 3),
        (4, 2 * DEPTH_BLOCK + 37, 6),
        (1, 600, 3),
        (5, 700, 1),
        (1, 9, 1),
        (40, 30, 20),
    ] {
        let x = values(rows * inputs, 10);
        let w = values(inputs * outputs, 11);
        let b = values(outputs, 12);
        let dy = values(rows * outputs, 13);
        let y = linear_forward(&x, &w, &b, rows, inputs, outputs);
        let (dx, dw, db) = linear_backward(&dy, &x, &w, (rows, inputs, outputs), true);
        let dx = dx.expect("dx was asked for");
        let close = |a: f32, b: f64, what: &str| {
            assert!((f64::from(a) - b).abs() < 1e-4, "{what}: {a} vs {b}");
        };
        for r in 0..rows {
            for o in 0..outputs {
                let want = f64::from(b[o])
                    + (0..inputs)
                        .map(|i| f64::from(x[r * inputs + i]) * f64::from(w[i * outputs + o]))
                        .sum::<f64>();
                close(y[r * outputs + o], want, "y");
            }
            for i in 0..inputs {
                let want: f64 = (0..outputs)
                    .map(|o| f64::from(dy[r * outputs + o]) * f64::from(w[i * outputs + o]))
                    .sum();
                close(dx[r * inputs + i], want, "dx");
            }
        }
        for i in 0..inputs {
            for o in 0..outputs {
                let want: f64 = (0..rows)
                    .map(|r| f64::from(x[r * inputs + i]) * f64::from(dy[r * outputs + o]))
                    .sum();
                close(dw[i * outputs + o], want, "dw");
            }
        }
        for o in 0..outputs {
            let want: f64 = (0..rows).map(|r| f64::from(dy[r * outputs + o])).sum();
            close(db[o], want, "db");
        }
        let (none, dw2, db2) = linear_backward(&dy, &x, &w, (rows, inputs, outputs), false);
        assert!(none.is_none());
        assert_eq!((dw2, db2), (dw, db));
    }
}

#[test]
fn deep_products_sum_their_depth_blocks_in_order() {
    // A product deeper than one block equals the first block's product, then each
    // following block's product added to it: the fixed order that makes the bits the same
    // on every CPU.
    let (m, k, n) = (5, 2 * DEPTH_BLOCK + 100, 7);
    let a = values(m * k, 14);
    let b = values(k * n, 15);
    let mut whole = vec![0.0; m * n];
    matmul(
        &mut whole,
        Mat::row_major(&a, m, k),
        Mat::row_major(&b, k, n),
        false,
    );
    let mut blocks = vec![0.0; m * n];
    for (i, start) in (0..k).step_by(DEPTH_BLOCK).enumerate() {
        let len = (k - start).min(DEPTH_BLOCK);
        let a_block: Vec<f32> = (0..m)
            .flat_map(|r| a[r * k + start..][..len].to_vec())
            .collect();
        let b_block = &b[start * n..][..len * n];
        matmul(
            &mut blocks,
            Mat::row_major(&a_block, m, len),
            Mat::row_major(b_block, len, n),
            i > 0,
        );
    }
    assert_eq!(
        whole.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        blocks.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
    );
}
