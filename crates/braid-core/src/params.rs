//! Flat parameter vectors: a model's parameters as one `&[f32]` in a fixed order.
//!
//! Aggregation accumulates in `f64` in a fixed client order, so the result does not depend on
//! thread scheduling and loses no precision when many clients are averaged.

use thiserror::Error;

/// Errors from combining parameter vectors.
#[derive(Debug, Error, PartialEq)]
pub enum ParamsError {
    /// Two vectors that must have the same length do not.
    #[error(
        "parameter vector has {got} values, expected {expected} (models of different shapes?)"
    )]
    LengthMismatch {
        /// Length of the first vector.
        expected: usize,
        /// Length of the offending vector.
        got: usize,
    },
    /// Nothing to average.
    #[error("cannot average zero parameter vectors")]
    Empty,
    /// Weights must be finite, non-negative and not all zero.
    #[error("aggregation weights must be finite, >= 0 and sum to more than 0 (got {0:?})")]
    BadWeights(Vec<f64>),
}

fn check_len(expected: usize, got: usize) -> Result<(), ParamsError> {
    if expected == got {
        Ok(())
    } else {
        Err(ParamsError::LengthMismatch { expected, got })
    }
}

/// Weighted mean `sum_i w_i x_i / sum_i w_i` of equally long vectors.
pub fn weighted_mean(items: &[(&[f32], f64)]) -> Result<Vec<f32>, ParamsError> {
    let (first, _) = items.first().ok_or(ParamsError::Empty)?;
    let len = first.len();
    let weights: Vec<f64> = items.iter().map(|(_, w)| *w).collect();
    let total: f64 = weights.iter().sum();
    if weights.iter().any(|w| !w.is_finite() || *w < 0.0) || total <= 0.0 || !total.is_finite() {
        return Err(ParamsError::BadWeights(weights));
    }
    let mut acc = vec![0.0f64; len];
    for (x, w) in items {
        check_len(len, x.len())?;
        let w = *w / total;
        for (a, v) in acc.iter_mut().zip(x.iter()) {
            *a += w * f64::from(*v);
        }
    }
    Ok(acc.into_iter().map(|v| v as f32).collect())
}

/// `a - b`, element-wise.
pub fn sub(a: &[f32], b: &[f32]) -> Result<Vec<f32>, ParamsError> {
    check_len(a.len(), b.len())?;
    Ok(a.iter().zip(b).map(|(x, y)| x - y).collect())
}

/// `y += alpha * x`, element-wise.
pub fn axpy(y: &mut [f32], alpha: f32, x: &[f32]) -> Result<(), ParamsError> {
    check_len(y.len(), x.len())?;
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += alpha * xi;
    }
    Ok(())
}

/// Euclidean norm, accumulated in `f64`.
pub fn l2_norm(x: &[f32]) -> f64 {
    x.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>().sqrt()
}

/// Squared Euclidean distance between two vectors.
pub fn sq_dist(a: &[f32], b: &[f32]) -> Result<f64, ParamsError> {
    check_len(a.len(), b.len())?;
    Ok(a.iter()
        .zip(b)
        .map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2))
        .sum())
}

/// True when every value is finite (no NaN or infinity).
pub fn all_finite(x: &[f32]) -> bool {
    x.iter().all(|v| v.is_finite())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn mean_of_two() {
        let m = weighted_mean(&[(&[1.0, 2.0], 1.0), (&[3.0, 6.0], 3.0)]).unwrap();
        assert_eq!(m, vec![2.5, 5.0]);
    }

    #[test]
    fn rejects_mismatched_and_bad_weights() {
        assert_eq!(
            weighted_mean(&[(&[1.0], 1.0), (&[1.0, 2.0], 1.0)]),
            Err(ParamsError::LengthMismatch {
                expected: 1,
                got: 2
            })
        );
        assert!(matches!(
            weighted_mean(&[(&[1.0], 0.0)]),
            Err(ParamsError::BadWeights(_))
        ));
        assert!(matches!(
            weighted_mean(&[(&[1.0], f64::NAN)]),
            Err(ParamsError::BadWeights(_))
        ));
        assert_eq!(weighted_mean(&[]), Err(ParamsError::Empty));
    }

    proptest! {
        /// Averaging preserves the (weighted) mean: the mean of the inputs' weighted sums equals
        /// the sum of the output, and the result lies within the inputs' coordinate-wise range.
        #[test]
        fn weighted_mean_preserves_mean_and_stays_in_range(
            rows in prop::collection::vec(prop::collection::vec(-100.0f32..100.0, 5), 1..8),
            ws in prop::collection::vec(0.1f64..10.0, 8),
        ) {
            let items: Vec<(&[f32], f64)> = rows.iter().zip(&ws).map(|(r, w)| (r.as_slice(), *w)).collect();
            let m = weighted_mean(&items).unwrap();
            let total: f64 = items.iter().map(|(_, w)| w).sum();
            for j in 0..5 {
                let expect: f64 = items.iter().map(|(r, w)| f64::from(r[j]) * w).sum::<f64>() / total;
                prop_assert!((f64::from(m[j]) - expect).abs() <= 1e-4 * (1.0 + expect.abs()));
                let lo = rows.iter().map(|r| r[j]).fold(f32::INFINITY, f32::min);
                let hi = rows.iter().map(|r| r[j]).fold(f32::NEG_INFINITY, f32::max);
                prop_assert!(m[j] >= lo - 1e-3 && m[j] <= hi + 1e-3);
            }
        }

        #[test]
        fn sub_then_axpy_round_trips(a in prop::collection::vec(-10.0f32..10.0, 1..32)) {
            let b: Vec<f32> = a.iter().map(|v| v * 0.5 + 1.0).collect();
            let d = sub(&a, &b).unwrap();
            let mut back = b.clone();
            axpy(&mut back, 1.0, &d).unwrap();
            for (x, y) in back.iter().zip(&a) {
                prop_assert!((x - y).abs() <= 1e-5 * (1.0 + y.abs()));
            }
        }
    }
}
