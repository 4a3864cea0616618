//! FedProx's Synthetic(alpha, beta) data (Li et al., "Federated Optimization in Heterogeneous
//! Networks", 2020).
//!
//! Group `k` draws `u_k ~ N(0, alpha)` and `B_k ~ N(0, beta)`; its model is
//! `W_k[c][j] ~ N(u_k, 1)`, `b_k[c] ~ N(u_k, 1)`; its inputs are `x ~ N(v_k, Sigma)` with
//! `v_k[j] ~ N(B_k, 1)` and `Sigma = diag(j^-1.2)`; labels are `argmax(W_k x + b_k)`.
//! `alpha` controls how much the groups' models differ, `beta` how much their inputs differ.
//! Each sample keeps its group id, so a run can use the natural split (`partition.kind = "natural"`).

use braid_core::seed;
use rand_distr::{Distribution, Normal};
use serde::{Deserialize, Serialize};

use crate::dataset::{DataSplit, Dataset, Features};
use crate::DataError;

/// Parameters of the generator (config: `[data] dataset = "synthetic"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyntheticConfig {
    /// Spread of the groups' models (FedProx: 0, 0.5, 1).
    #[serde(default = "one")]
    pub alpha: f64,
    /// Spread of the groups' input distributions (FedProx: 0, 0.5, 1).
    #[serde(default = "one")]
    pub beta: f64,
    /// Number of groups (natural clients).
    #[serde(default = "default_groups")]
    pub groups: usize,
    /// Samples drawn per group, before the test split.
    #[serde(default = "default_samples")]
    pub samples_per_group: usize,
    /// Input dimension.
    #[serde(default = "default_dim")]
    pub dim: usize,
    /// Number of classes.
    #[serde(default = "default_classes")]
    pub classes: usize,
    /// Fraction of each group's samples held out for the test set.
    #[serde(default = "default_test_fraction")]
    pub test_fraction: f64,
}

fn one() -> f64 {
    1.0
}
fn default_groups() -> usize {
    30
}
fn default_samples() -> usize {
    200
}
fn default_dim() -> usize {
    60
}
fn default_classes() -> usize {
    10
}
fn default_test_fraction() -> f64 {
    0.2
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        Self {
            alpha: 1.0,
            beta: 1.0,
            groups: default_groups(),
            samples_per_group: default_samples(),
            dim: default_dim(),
            classes: default_classes(),
            test_fraction: default_test_fraction(),
        }
    }
}

fn normal(mean: f64, sd: f64) -> Normal<f64> {
    Normal::new(mean, sd).unwrap_or_else(|_| unreachable!("sd checked finite and >= 0"))
}

/// Generates the data set; group `k`'s samples carry group id `k`.
pub fn generate(c: &SyntheticConfig, seed_value: u64) -> Result<DataSplit, DataError> {
    let bad = |field, why: String| Err(DataError::BadConfig { field, why });
    if !(0.0..=1e6).contains(&c.alpha) {
        return bad("alpha", format!("must be in [0, 1e6] (got {})", c.alpha));
    }
    if !(0.0..=1e6).contains(&c.beta) {
        return bad("beta", format!("must be in [0, 1e6] (got {})", c.beta));
    }
    if c.groups == 0 || c.dim == 0 || !(2..=256).contains(&c.classes) {
        return bad(
            "groups",
            format!(
                "need groups >= 1, dim >= 1 and 2 <= classes <= 256 (got {}, {}, {})",
                c.groups, c.dim, c.classes
            ),
        );
    }
    // Every value is generated and held in memory: at most 2^28 feature values (1 GiB).
    let values = c
        .groups
        .checked_mul(c.samples_per_group)
        .and_then(|n| n.checked_mul(c.dim))
        .filter(|&v| v <= 1 << 28);
    if values.is_none() {
        return bad(
            "groups",
            format!(
                "groups x samples_per_group x dim = {} x {} x {} must be at most 2^28 values",
                c.groups, c.samples_per_group, c.dim
            ),
        );
    }
    let n_test = (c.samples_per_group as f64 * c.test_fraction).round() as usize;
    if !(0.0..1.0).contains(&c.test_fraction) || n_test == 0 || n_test >= c.samples_per_group {
        return bad("test_fraction", format!(
            "must leave at least one train and one test sample per group (samples_per_group = {}, test_fraction = {})",
            c.samples_per_group, c.test_fraction
        ));
    }
    let sigma_sd: Vec<f64> = (1..=c.dim).map(|j| (j as f64).powf(-1.2).sqrt()).collect();
    let (mut tr_x, mut tr_y, mut tr_g) = (Vec::new(), Vec::new(), Vec::new());
    let (mut te_x, mut te_y) = (Vec::new(), Vec::new());
    for k in 0..c.groups {
        let mut rng = seed::rng(seed_value, &[seed::stream::SYNTHETIC, k as u64]);
        let u = normal(0.0, c.alpha.sqrt()).sample(&mut rng);
        let b_mean = normal(0.0, c.beta.sqrt()).sample(&mut rng);
        let w: Vec<f64> = (0..c.classes * c.dim)
            .map(|_| normal(u, 1.0).sample(&mut rng))
            .collect();
        let b: Vec<f64> = (0..c.classes)
            .map(|_| normal(u, 1.0).sample(&mut rng))
            .collect();
        let v: Vec<f64> = (0..c.dim)
            .map(|_| normal(b_mean, 1.0).sample(&mut rng))
            .collect();
        for s in 0..c.samples_per_group {
            let x: Vec<f64> = (0..c.dim)
                .map(|j| normal(v[j], sigma_sd[j]).sample(&mut rng))
                .collect();
            let logits = (0..c.classes)
                .map(|cl| b[cl] + (0..c.dim).map(|j| w[cl * c.dim + j] * x[j]).sum::<f64>());
            let y = logits
                .enumerate()
                .fold((0usize, f64::NEG_INFINITY), |best, (i, l)| {
                    if l > best.1 {
                        (i, l)
                    } else {
                        best
                    }
                })
                .0 as crate::Label;
            let (xs, ys) = if s < n_test {
                (&mut te_x, &mut te_y)
            } else {
                (&mut tr_x, &mut tr_y)
            };
            xs.extend(x.iter().map(|&v| v as f32));
            ys.push(y);
            if s >= n_test {
                tr_g.push(k as u32);
            }
        }
    }
    let train =
        Dataset::new(Features::F32(tr_x), tr_y, vec![c.dim], c.classes)?.with_groups(tr_g)?;
    let test = Dataset::new(Features::F32(te_x), te_y, vec![c.dim], c.classes)?;
    Ok(DataSplit { train, test })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_groups_and_determinism() {
        let c = SyntheticConfig {
            groups: 5,
            samples_per_group: 50,
            ..Default::default()
        };
        let a = generate(&c, 1).unwrap();
        assert_eq!(a.train.len(), 5 * 40);
        assert_eq!(a.test.len(), 5 * 10);
        assert_eq!(a.train.sample_shape(), &[60]);
        assert_eq!(
            a.train
                .groups()
                .unwrap()
                .iter()
                .filter(|&&g| g == 4)
                .count(),
            40
        );
        assert_eq!(a, generate(&c, 1).unwrap());
        assert_ne!(a, generate(&c, 2).unwrap());
    }

    #[test]
    fn bad_parameters_name_the_field() {
        let c = SyntheticConfig {
            alpha: -1.0,
            ..Default::default()
        };
        assert!(generate(&c, 0).unwrap_err().to_string().contains("alpha"));
        let c = SyntheticConfig {
            test_fraction: 1.5,
            ..Default::default()
        };
        assert!(generate(&c, 0)
            .unwrap_err()
            .to_string()
            .contains("test_fraction"));
        // Sizes that would not fit are refused before anything is generated (2^30 values).
        let c = SyntheticConfig {
            groups: 1 << 10,
            samples_per_group: 1 << 10,
            dim: 1 << 10,
            ..Default::default()
        };
        assert!(generate(&c, 0).unwrap_err().to_string().contains("2^28"));
        let c = SyntheticConfig {
            beta: 1e300,
            ..Default::default()
        };
        assert!(generate(&c, 0).unwrap_err().to_string().contains("beta"));
    }
}
