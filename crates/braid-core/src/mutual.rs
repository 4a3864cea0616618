//! The numeric parts of mutual learning between heterogeneous clients (DFML and its
//! baselines): which architecture each client gets, who does what in a round, the cyclic
//! distillation weight alpha, and averaging that never mixes architectures.
//!
//! Round roles are drawn from a stream derived from `(seed, round)`, so every participant
//! computes the same roles without coordination (as decentralized SGD does with its graphs).

use rand::seq::{IndexedRandom as _, SliceRandom as _};
use rand::Rng as _;
use serde::{Deserialize, Serialize};

use crate::params::{weighted_mean, ParamsError};
use crate::seed;

/// How clients are given architectures from the run's list of `m` models.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Assign {
    /// Client `k` gets model `k mod m`.
    Cycle,
    /// Model `i` goes to a share `weights[i] / sum(weights)` of the clients (largest
    /// remainders), in contiguous blocks of client ids.
    Ratio {
        /// One non-negative weight per model.
        weights: Vec<f64>,
    },
    /// Each client draws a model uniformly at random (seeded).
    Random,
}

impl Assign {
    /// The model index of each of `clients` clients, for `models` models.
    pub fn assign(
        &self, clients: usize, models: usize, seed_value: u64,
    ) -> Result<Vec<usize>, String> {
        if models == 0 {
            return Err("the list of models is empty".into());
        }
        match self {
            Self::Cycle => Ok((0..clients).map(|k| k % models).collect()),
            Self::Random => {
                let mut rng = seed::rng(seed_value, &[seed::stream::ARCH]);
                Ok((0..clients).map(|_| rng.random_range(0..models)).collect())
            }
            Self::Ratio { weights } => {
                if weights.len() != models {
                    return Err(format!(
                        "assign.weights has {} entries for {models} models",
                        weights.len()
                    ));
                }
                let total: f64 = weights.iter().sum();
                if weights.iter().any(|w| !w.is_finite() || *w < 0.0)
                    || !(total.is_finite() && total > 0.0)
                {
                    return Err("assign.weights must be >= 0 with a positive sum".into());
                }
                // Largest remainders: floor shares, then one more to the largest fractions.
                let exact: Vec<f64> = weights.iter().map(|w| w / total * clients as f64).collect();
                let mut counts: Vec<usize> = exact.iter().map(|e| e.floor() as usize).collect();
                let mut order: Vec<usize> = (0..models).collect();
                order.sort_by(|&a, &b| {
                    let (fa, fb) = (exact[a] - exact[a].floor(), exact[b] - exact[b].floor());
                    fb.total_cmp(&fa).then(a.cmp(&b))
                });
                let short = clients - counts.iter().sum::<usize>();
                for &i in order.iter().take(short) {
                    counts[i] += 1;
                }
                Ok(counts
                    .iter()
                    .enumerate()
                    .flat_map(|(i, &c)| std::iter::repeat_n(i, c))
                    .collect())
            }
        }
    }
}

/// The shape of alpha's cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CycleShape {
    /// Raised cosine: smooth between the extremes.
    Cosine,
    /// Straight lines between the extremes.
    Triangular,
    /// Always `max` (no cycle; every `period`-th round is still a peak).
    Constant,
}

/// Alpha, the weight of distillation in the loss, over rounds: it is `max` at rounds
/// `period, 2 period, ...` (the peaks, where clients snapshot their peak models) and `min`
/// half-way between them (rounds `period/2 + k period`; for odd periods the minimum falls
/// between two rounds).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlphaCycle {
    /// `cosine`, `triangular` or `constant`.
    pub shape: CycleShape,
    /// Rounds per cycle (>= 1).
    pub period: u32,
    /// Smallest alpha.
    pub min: f64,
    /// Largest alpha.
    pub max: f64,
}

impl Default for AlphaCycle {
    fn default() -> Self {
        Self {
            shape: CycleShape::Cosine,
            period: 10,
            min: 0.0,
            max: 0.8,
        }
    }
}

impl AlphaCycle {
    /// Checks the fields; the error names the one that is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if self.period == 0 {
            return Err("alpha.period must be at least 1".into());
        }
        for (f, v) in [("min", self.min), ("max", self.max)] {
            if !(0.0..=1.0).contains(&v) {
                return Err(format!("alpha.{f} = {v} must be in [0, 1]"));
            }
        }
        if self.min > self.max {
            return Err(format!(
                "alpha.min = {} is above alpha.max = {}",
                self.min, self.max
            ));
        }
        Ok(())
    }

    /// Alpha in round `round` (from 1).
    pub fn at(&self, round: u32) -> f64 {
        let period = self.period.max(1);
        // Position in the cycle: 0 at a peak, 0.5 half-way to the next.
        let phase = f64::from(round % period) / f64::from(period);
        let up = match self.shape {
            CycleShape::Constant => 1.0,
            CycleShape::Cosine => (1.0 + (2.0 * std::f64::consts::PI * phase).cos()) / 2.0,
            CycleShape::Triangular => (1.0 - 2.0 * phase).abs(),
        };
        self.min + (self.max - self.min) * up
    }

    /// True if round `round` is a peak of the cycle (peak models are taken after it).
    pub fn is_peak(&self, round: u32) -> bool {
        round > 0 && round.is_multiple_of(self.period.max(1))
    }
}

/// One DFML round: the aggregator and the senders whose models it trains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DfmlRound {
    /// The client that trains and averages.
    pub aggregator: usize,
    /// The clients that send it their models (distinct, without the aggregator), sorted.
    pub senders: Vec<usize>,
}

/// Round `round`'s aggregator and `senders` senders among `clients` clients (at most
/// `clients - 1` senders).
pub fn dfml_round(seed_value: u64, round: u32, clients: usize, senders: usize) -> DfmlRound {
    let mut rng = seed::rng(seed_value, &[seed::stream::MUTUAL, u64::from(round)]);
    let aggregator = rng.random_range(0..clients.max(1));
    let others: Vec<usize> = (0..clients).filter(|&k| k != aggregator).collect();
    let mut chosen: Vec<usize> = others
        .choose_multiple(&mut rng, senders.min(others.len()))
        .copied()
        .collect();
    chosen.sort_unstable();
    DfmlRound {
        aggregator,
        senders: chosen,
    }
}

/// Round `round`'s Def-KT pairs among `clients` clients: `pairs` (teacher, student) pairs of
/// distinct clients (at most `clients / 2`).
pub fn defkt_round(
    seed_value: u64, round: u32, clients: usize, pairs: usize,
) -> Vec<(usize, usize)> {
    let mut rng = seed::rng(seed_value, &[seed::stream::MUTUAL, u64::from(round)]);
    let mut all: Vec<usize> = (0..clients).collect();
    all.shuffle(&mut rng);
    let q = pairs.min(clients / 2);
    (0..q).map(|i| (all[2 * i], all[2 * i + 1])).collect()
}

/// Round `round`'s `k` participants among `clients` (all when `k >= clients`), sorted.
pub fn round_subset(seed_value: u64, round: u32, clients: usize, k: usize) -> Vec<usize> {
    if k >= clients {
        return (0..clients).collect();
    }
    let mut rng = seed::rng(seed_value, &[seed::stream::MUTUAL, u64::from(round)]);
    let mut out = rand::seq::index::sample(&mut rng, clients, k).into_vec();
    out.sort_unstable();
    out
}

/// For every model, the plain mean of all models of its architecture (`archs[i]` is model
/// `i`'s): models are averaged only with their own kind.
pub fn mean_by_arch(archs: &[usize], params: &[&[f32]]) -> Result<Vec<Vec<f32>>, ParamsError> {
    if archs.len() != params.len() {
        return Err(ParamsError::LengthMismatch {
            expected: archs.len(),
            got: params.len(),
        });
    }
    let mut means: std::collections::BTreeMap<usize, Vec<f32>> = Default::default();
    for &a in archs {
        if means.contains_key(&a) {
            continue;
        }
        let group: Vec<(&[f32], f64)> = archs
            .iter()
            .zip(params)
            .filter(|(b, _)| **b == a)
            .map(|(_, p)| (*p, 1.0))
            .collect();
        means.insert(a, weighted_mean(&group)?);
    }
    Ok(archs.iter().map(|a| means[a].clone()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn alpha_hits_max_at_the_peaks_and_min_half_way() {
        for shape in [CycleShape::Cosine, CycleShape::Triangular] {
            let c = AlphaCycle {
                shape,
                period: 10,
                min: 0.1,
                max: 0.9,
            };
            for k in 1..4 {
                assert!((c.at(10 * k) - 0.9).abs() < 1e-12, "{shape:?}");
                assert!(c.is_peak(10 * k));
                assert!((c.at(10 * k + 5) - 0.1).abs() < 1e-12, "{shape:?}");
                assert!(!c.is_peak(10 * k + 5));
            }
            for r in 1..40 {
                let a = c.at(r);
                assert!((0.1..=0.9).contains(&a));
                assert_eq!(c.is_peak(r), r % 10 == 0);
            }
        }
        let tri = AlphaCycle {
            shape: CycleShape::Triangular,
            period: 4,
            min: 0.0,
            max: 1.0,
        };
        let got: Vec<f64> = (1..=8).map(|r| tri.at(r)).collect();
        assert_eq!(got, vec![0.5, 0.0, 0.5, 1.0, 0.5, 0.0, 0.5, 1.0]);
        let constant = AlphaCycle {
            shape: CycleShape::Constant,
            ..tri
        };
        assert!((1..9).all(|r| constant.at(r) == 1.0));
        assert!(!AlphaCycle::default().is_peak(0));
    }

    #[test]
    fn bad_cycles_are_refused() {
        let ok = AlphaCycle::default();
        assert!(ok.validate().is_ok());
        for (bad, word) in [
            (AlphaCycle { period: 0, ..ok }, "period"),
            (AlphaCycle { min: -0.1, ..ok }, "min"),
            (AlphaCycle { max: 1.5, ..ok }, "max"),
            (
                AlphaCycle {
                    min: 0.9,
                    max: 0.2,
                    ..ok
                },
                "above",
            ),
        ] {
            let e = bad.validate().unwrap_err();
            assert!(e.contains(word), "{e}");
        }
    }

    #[test]
    fn assignments_follow_the_rule() {
        assert_eq!(Assign::Cycle.assign(5, 3, 1).unwrap(), vec![0, 1, 2, 0, 1]);
        let r = Assign::Ratio {
            weights: vec![2.0, 1.0, 1.0],
        };
        assert_eq!(r.assign(8, 3, 1).unwrap(), vec![0, 0, 0, 0, 1, 1, 2, 2]);
        assert_eq!(r.assign(5, 3, 1).unwrap().len(), 5);
        let random = Assign::Random.assign(50, 3, 7).unwrap();
        assert_eq!(random, Assign::Random.assign(50, 3, 7).unwrap());
        assert!((0..3).all(|m| random.contains(&m)));
        assert!(Assign::Cycle.assign(3, 0, 1).is_err());
        assert!(Assign::Ratio { weights: vec![1.0] }
            .assign(3, 2, 1)
            .is_err());
        assert!(Assign::Ratio {
            weights: vec![0.0, 0.0]
        }
        .assign(3, 2, 1)
        .is_err());
    }

    #[test]
    fn averaging_never_mixes_architectures() {
        let a = [1.0f32, 1.0];
        let b = [3.0f32, 5.0];
        let c = [100.0f32, 100.0, 100.0];
        let out = mean_by_arch(&[0, 1, 0], &[&a, &c, &b]).unwrap();
        assert_eq!(out[0], vec![2.0, 3.0]);
        assert_eq!(out[2], vec![2.0, 3.0]);
        assert_eq!(out[1], c.to_vec());
    }

    proptest! {
        #[test]
        fn dfml_rounds_are_shared_and_well_formed(seed_value in 0u64..1000, round in 1u32..500, n in 2usize..60, m in 0usize..70) {
            let r = dfml_round(seed_value, round, n, m);
            prop_assert_eq!(&r, &dfml_round(seed_value, round, n, m));
            prop_assert!(r.aggregator < n);
            prop_assert_eq!(r.senders.len(), m.min(n - 1));
            prop_assert!(!r.senders.contains(&r.aggregator));
            prop_assert!(r.senders.windows(2).all(|w| w[0] < w[1]));
            let pairs = defkt_round(seed_value, round, n, m);
            prop_assert_eq!(pairs.len(), m.min(n / 2));
            let mut seen: Vec<usize> = pairs.iter().flat_map(|&(a, b)| [a, b]).collect();
            seen.sort_unstable();
            seen.dedup();
            prop_assert_eq!(seen.len(), 2 * pairs.len());
            let s = round_subset(seed_value, round, n, m);
            prop_assert_eq!(s.len(), m.min(n));
            prop_assert!(s.windows(2).all(|w| w[0] < w[1]) && s.iter().all(|&k| k < n));
        }

        #[test]
        fn per_arch_means_preserve_each_groups_mean(vals in prop::collection::vec(-100f32..100.0, 1..12), archs in prop::collection::vec(0usize..3, 12)) {
            let archs = &archs[..vals.len()];
            let params: Vec<Vec<f32>> = vals.iter().map(|&v| vec![v]).collect();
            let refs: Vec<&[f32]> = params.iter().map(Vec::as_slice).collect();
            let out = mean_by_arch(archs, &refs).unwrap();
            for a in 0..3 {
                let group: Vec<usize> = (0..vals.len()).filter(|&i| archs[i] == a).collect();
                if group.is_empty() { continue; }
                let mean = group.iter().map(|&i| f64::from(vals[i])).sum::<f64>() / group.len() as f64;
                for &i in &group {
                    prop_assert!((f64::from(out[i][0]) - mean).abs() < 1e-3);
                }
            }
        }

        #[test]
        fn ratio_assignments_hit_their_shares(w in prop::collection::vec(0.1f64..10.0, 1..5), n in 0usize..200) {
            let got = Assign::Ratio { weights: w.clone() }.assign(n, w.len(), 1).unwrap();
            prop_assert_eq!(got.len(), n);
            let total: f64 = w.iter().sum();
            for (i, wi) in w.iter().enumerate() {
                let count = got.iter().filter(|&&m| m == i).count() as f64;
                prop_assert!((count - wi / total * n as f64).abs() < 1.0 + 1e-9);
            }
        }
    }
}
