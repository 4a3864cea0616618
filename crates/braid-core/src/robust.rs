//! Robust aggregation of client updates against faulty or malicious clients: coordinate-wise
//! median, trimmed mean, Krum and Multi-Krum (Blanchard et al. 2017), and norm clipping.
//!
//! Rules work on updates (a client's trained parameters minus the global model), so that norm
//! clipping is meaningful; the others are translation-equivariant and would give the same
//! result on parameters. The mean and norm clipping use the given weights (sample counts);
//! the median, trimmed mean and Krum treat every client alike, as in their papers.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::params::{weighted_mean, ParamsError};

/// How updates are combined (config: `algorithm.aggregator`).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Aggregator {
    /// Weighted mean (FedAvg).
    #[default]
    Mean,
    /// Coordinate-wise median.
    Median,
    /// Coordinate-wise mean after dropping the `trim` fraction of smallest and of largest values.
    TrimmedMean {
        /// Fraction dropped at each end, in [0, 0.5).
        trim: f64,
    },
    /// The update closest to its `n - f - 2` nearest neighbours.
    Krum {
        /// Number of bad clients tolerated.
        f: usize,
    },
    /// The mean of the `m` updates with the best Krum scores.
    MultiKrum {
        /// Number of bad clients tolerated.
        f: usize,
        /// Updates averaged.
        m: usize,
    },
    /// Every update scaled down to L2 norm at most `clip`, then the weighted mean.
    NormClip {
        /// The norm bound.
        clip: f64,
    },
}

/// Why updates cannot be aggregated.
#[derive(Debug, Error, PartialEq)]
pub enum RobustError {
    /// The rule needs more updates than there are.
    #[error("{0}")]
    TooFew(String),
    /// A rule parameter is out of range.
    #[error("{0}")]
    Invalid(String),
    /// The vectors do not fit together.
    #[error(transparent)]
    Params(#[from] ParamsError),
}

impl Aggregator {
    /// Checks the rule's parameters; the error names the field.
    pub fn validate(&self) -> Result<(), RobustError> {
        match *self {
            Self::TrimmedMean { trim } if !(0.0..0.5).contains(&trim) => Err(RobustError::Invalid(
                format!("aggregator.trim = {trim} must be in [0, 0.5)"),
            )),
            Self::MultiKrum { m: 0, .. } => Err(RobustError::Invalid(
                "aggregator.m must be at least 1".into(),
            )),
            Self::NormClip { clip } if !(clip > 0.0 && clip <= 1e6) => Err(RobustError::Invalid(
                format!("aggregator.clip = {clip} must be in (0, 1e6]"),
            )),
            Self::Krum { f } | Self::MultiKrum { f, .. } if f > 1_000_000 => Err(
                RobustError::Invalid(format!("aggregator.f = {f} must be at most 1000000")),
            ),
            _ => Ok(()),
        }
    }

    /// The fewest updates the rule can work with.
    pub fn min_updates(&self) -> usize {
        match *self {
            Self::Krum { f } => f.saturating_mul(2).saturating_add(3),
            Self::MultiKrum { f, m } => f.saturating_mul(2).saturating_add(3).max(m),
            _ => 1,
        }
    }

    /// Combines `updates` (all the same length) with `weights` (one per update).
    pub fn aggregate(&self, updates: &[&[f32]], weights: &[f64]) -> Result<Vec<f32>, RobustError> {
        self.validate()?;
        let n = updates.len();
        if n == 0 || weights.len() != n {
            return Err(RobustError::TooFew(
                "no updates (or not one weight per update) to aggregate".into(),
            ));
        }
        let dim = updates[0].len();
        if let Some(u) = updates.iter().find(|u| u.len() != dim) {
            return Err(ParamsError::LengthMismatch {
                expected: dim,
                got: u.len(),
            }
            .into());
        }
        if n < self.min_updates() {
            return Err(RobustError::TooFew(format!(
                "{self:?} needs at least {} updates, got {n}",
                self.min_updates()
            )));
        }
        match *self {
            Self::Mean => {
                let items: Vec<(&[f32], f64)> = updates
                    .iter()
                    .copied()
                    .zip(weights.iter().copied())
                    .collect();
                Ok(weighted_mean(&items)?)
            }
            Self::Median => Ok(coordinatewise(updates, |col| {
                let k = col.len();
                if k % 2 == 1 {
                    col[k / 2]
                } else {
                    (col[k / 2 - 1] + col[k / 2]) / 2.0
                }
            })),
            Self::TrimmedMean { trim } => {
                let cut = (trim * n as f64).floor() as usize;
                Ok(coordinatewise(updates, |col| {
                    let kept = &col[cut..col.len() - cut];
                    kept.iter().map(|&v| f64::from(v)).sum::<f64>() as f32 / kept.len() as f32
                }))
            }
            Self::Krum { f } => {
                let best = krum_order(updates, f)[0];
                Ok(updates[best].to_vec())
            }
            Self::MultiKrum { f, m } => {
                let chosen: Vec<(&[f32], f64)> = krum_order(updates, f)
                    .into_iter()
                    .take(m)
                    .map(|i| (updates[i], 1.0))
                    .collect();
                Ok(weighted_mean(&chosen)?)
            }
            Self::NormClip { clip } => {
                let clipped: Vec<Vec<f32>> = updates
                    .iter()
                    .map(|u| {
                        let mut v = u.to_vec();
                        crate::privacy::clip_to_norm(&mut v, clip);
                        v
                    })
                    .collect();
                let items: Vec<(&[f32], f64)> = clipped
                    .iter()
                    .map(Vec::as_slice)
                    .zip(weights.iter().copied())
                    .collect();
                Ok(weighted_mean(&items)?)
            }
        }
    }
}

/// A simulated attack: what a bad client does to its update before sending it
/// (config: `[attack]`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Attack {
    /// Sends `-scale` times its update (pushes the model backwards).
    SignFlip {
        /// Multiplier of the flipped update (default 1).
        #[serde(default = "one")]
        scale: f64,
    },
    /// Sends `scale` times its update (model replacement / boosting).
    Scale {
        /// Multiplier.
        scale: f64,
    },
    /// Sends Gaussian noise of standard deviation `std` instead of its update.
    Gaussian {
        /// Standard deviation of every coordinate.
        std: f64,
    },
    /// Trains on its data with every label `l` replaced by `classes - 1 - l` and sends the
    /// resulting update unchanged (data poisoning rather than update forging).
    LabelFlip,
}

fn one() -> f64 {
    1.0
}

impl Attack {
    /// Checks the parameters.
    pub fn validate(&self) -> Result<(), RobustError> {
        let v = match *self {
            Self::SignFlip { scale } | Self::Scale { scale } => scale,
            Self::Gaussian { std } => std,
            Self::LabelFlip => return Ok(()),
        };
        if (0.0..=1e6).contains(&v) {
            Ok(())
        } else {
            Err(RobustError::Invalid(format!(
                "attack parameter {v} must be in [0, 1e6]"
            )))
        }
    }

    /// True when the attack poisons the training data instead of the update.
    pub fn poisons_labels(&self) -> bool {
        matches!(self, Self::LabelFlip)
    }

    /// Turns an honest `update` into the attacker's (a label-flipping attacker's update is
    /// already the attack: unchanged).
    pub fn apply(&self, update: &mut [f32], rng: &mut impl rand::Rng) {
        match *self {
            Self::LabelFlip => {}
            Self::SignFlip { scale } => update.iter_mut().for_each(|x| *x *= -(scale as f32)),
            Self::Scale { scale } => update.iter_mut().for_each(|x| *x *= scale as f32),
            Self::Gaussian { std } => {
                update.iter_mut().for_each(|x| *x = 0.0);
                crate::privacy::add_gaussian_noise(update, std, rng);
            }
        }
    }
}

/// The bad clients among `clients`: `round(fraction * clients)` of them, drawn with `seed`.
pub fn bad_clients(clients: usize, fraction: f64, seed_value: u64) -> Vec<usize> {
    let k = ((fraction.clamp(0.0, 1.0) * clients as f64).round() as usize).min(clients);
    let mut rng = crate::seed::rng(seed_value, &[crate::seed::stream::ATTACK]);
    let mut out = rand::seq::index::sample(&mut rng, clients, k).into_vec();
    out.sort_unstable();
    out
}

/// Applies `reduce` to every coordinate's values, sorted.
fn coordinatewise(updates: &[&[f32]], reduce: impl Fn(&[f32]) -> f32) -> Vec<f32> {
    let dim = updates[0].len();
    let mut col = vec![0f32; updates.len()];
    (0..dim)
        .map(|j| {
            for (c, u) in col.iter_mut().zip(updates) {
                *c = u[j];
            }
            col.sort_unstable_by(f32::total_cmp);
            reduce(&col)
        })
        .collect()
}

/// Update indices from best to worst Krum score (the sum of squared distances to the
/// `n - f - 2` nearest other updates); ties go to the lower index.
fn krum_order(updates: &[&[f32]], f: usize) -> Vec<usize> {
    let n = updates.len();
    let mut d = vec![vec![0f64; n]; n];
    for i in 0..n {
        for j in i + 1..n {
            let s = updates[i]
                .iter()
                .zip(updates[j])
                .map(|(a, b)| f64::from(a - b).powi(2))
                .sum::<f64>();
            d[i][j] = s;
            d[j][i] = s;
        }
    }
    let k = n.saturating_sub(f + 2).max(1);
    let score = |i: usize| {
        let mut others: Vec<f64> = (0..n).filter(|&j| j != i).map(|j| d[i][j]).collect();
        others.sort_unstable_by(f64::total_cmp);
        others.iter().take(k).sum::<f64>()
    };
    let scores: Vec<f64> = (0..n).map(score).collect();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]).then(a.cmp(&b)));
    order
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn agg(rule: Aggregator, rows: &[Vec<f32>]) -> Vec<f32> {
        let refs: Vec<&[f32]> = rows.iter().map(Vec::as_slice).collect();
        rule.aggregate(&refs, &vec![1.0; rows.len()]).unwrap()
    }

    #[test]
    fn each_rule_on_a_small_example() {
        let rows = vec![
            vec![1.0, 10.0],
            vec![2.0, 20.0],
            vec![3.0, 30.0],
            vec![4.0, 40.0],
            vec![100.0, -1000.0],
        ];
        assert_eq!(agg(Aggregator::Median, &rows), vec![3.0, 20.0]);
        // Trim 20% of 5 = 1 at each end.
        assert_eq!(
            agg(Aggregator::TrimmedMean { trim: 0.2 }, &rows),
            vec![3.0, 20.0]
        );
        assert_eq!(agg(Aggregator::Mean, &rows), vec![22.0, -180.0]);
        // Krum with f = 1 picks a central honest update, never the outlier.
        let k = agg(Aggregator::Krum { f: 1 }, &rows);
        assert!(rows[..4].contains(&k), "{k:?}");
        assert_eq!(k, vec![2.0, 20.0]);
        let mk = agg(Aggregator::MultiKrum { f: 1, m: 3 }, &rows);
        assert!(mk[0] < 5.0 && mk[1] > 0.0, "{mk:?}");
        // Norm clipping bounds the outlier's pull.
        let c = agg(Aggregator::NormClip { clip: 1.0 }, &rows);
        assert!(crate::params::l2_norm(&c) <= 1.0 + 1e-6);
        assert_eq!(agg(Aggregator::Median, &rows[..4]), vec![2.5, 25.0]);
    }

    #[test]
    fn too_few_updates_and_bad_parameters_are_errors() {
        let rows = [vec![1.0f32], vec![2.0]];
        let refs: Vec<&[f32]> = rows.iter().map(Vec::as_slice).collect();
        let e = Aggregator::Krum { f: 1 }
            .aggregate(&refs, &[1.0, 1.0])
            .unwrap_err();
        assert!(e.to_string().contains("at least 5"), "{e}");
        assert!(Aggregator::TrimmedMean { trim: 0.5 }.validate().is_err());
        assert!(Aggregator::NormClip { clip: 0.0 }.validate().is_err());
        assert!(Aggregator::MultiKrum { f: 0, m: 0 }.validate().is_err());
        assert!(Aggregator::Median.aggregate(&[], &[]).is_err());
        let bad = [&[1.0f32, 2.0][..], &[1.0][..]];
        assert!(Aggregator::Median.aggregate(&bad, &[1.0, 1.0]).is_err());
    }

    #[test]
    fn attacks_do_what_they_say() {
        let mut rng = crate::seed::rng(1, &[]);
        let mut u = vec![1.0f32, -2.0];
        Attack::SignFlip { scale: 2.0 }.apply(&mut u, &mut rng);
        assert_eq!(u, vec![-2.0, 4.0]);
        Attack::Scale { scale: 10.0 }.apply(&mut u, &mut rng);
        assert_eq!(u, vec![-20.0, 40.0]);
        let mut g = vec![5.0f32; 10_000];
        Attack::Gaussian { std: 3.0 }.apply(&mut g, &mut rng);
        let sd = (g.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / 1e4).sqrt();
        assert!((sd - 3.0).abs() < 0.1, "{sd}");
        assert!(Attack::Scale { scale: f64::NAN }.validate().is_err());
        // A label flipper's update is honest training on poisoned data: left as it is.
        let mut l = vec![1.0f32, -2.0];
        Attack::LabelFlip.apply(&mut l, &mut rng);
        assert_eq!(l, vec![1.0, -2.0]);
        assert!(Attack::LabelFlip.poisons_labels() && Attack::LabelFlip.validate().is_ok());
        assert!(!Attack::Scale { scale: 2.0 }.poisons_labels());
        let bad = bad_clients(20, 0.2, 7);
        assert_eq!(bad.len(), 4);
        assert_eq!(bad, bad_clients(20, 0.2, 7));
        assert!(bad.iter().all(|&k| k < 20));
        assert!(bad_clients(20, 0.0, 7).is_empty());
    }

    proptest! {
        #[test]
        fn robust_rules_stay_within_the_honest_range_despite_a_minority_of_outliers(
            honest in prop::collection::vec(prop::collection::vec(-1.0f32..1.0, 3), 7..12),
            bad in prop::collection::vec(-1e6f32..1e6, 2),
        ) {
            // Two attackers sending huge values in every coordinate.
            let mut rows = honest.clone();
            for b in &bad {
                rows.push(vec![*b; 3]);
            }
            let n = rows.len();
            for rule in [
                Aggregator::Median,
                Aggregator::TrimmedMean { trim: 2.0 / n as f64 + 1e-9 },
                Aggregator::Krum { f: 2 },
                Aggregator::MultiKrum { f: 2, m: 3 },
            ] {
                let out = agg(rule, &rows);
                for (j, v) in out.iter().enumerate() {
                    let lo = honest.iter().map(|h| h[j]).fold(f32::INFINITY, f32::min);
                    let hi = honest.iter().map(|h| h[j]).fold(f32::NEG_INFINITY, f32::max);
                    prop_assert!(*v >= lo - 1e-4 && *v <= hi + 1e-4, "{rule:?} coordinate {j}: {v} outside [{lo}, {hi}]");
                }
            }
        }

        #[test]
        fn without_outliers_median_and_trimmed_mean_lie_between_min_and_max(
            rows in prop::collection::vec(prop::collection::vec(-10.0f32..10.0, 4), 1..9),
        ) {
            for rule in [Aggregator::Median, Aggregator::TrimmedMean { trim: 0.25 }, Aggregator::Mean] {
                let out = agg(rule, &rows);
                for (j, v) in out.iter().enumerate() {
                    let lo = rows.iter().map(|h| h[j]).fold(f32::INFINITY, f32::min);
                    let hi = rows.iter().map(|h| h[j]).fold(f32::NEG_INFINITY, f32::max);
                    prop_assert!(*v >= lo - 1e-4 && *v <= hi + 1e-4);
                }
            }
        }
    }
}
