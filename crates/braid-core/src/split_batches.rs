//! Local batch sizes for parallel split learning: how many samples each client contributes to
//! each step of an epoch.
//!
//! - [`Sampler::Global`] (GPSL, Kohankhaki et al.): the server pools one entry per sample held
//!   by each client, shuffles the pool and cuts it into `ceil(N/B)` near-equal chunks (sizes
//!   differ by at most one, none above `B`, as numpy's `array_split` in the authors' code);
//!   client k's batch at step t is the number of its entries in chunk t. Each global batch is
//!   then a uniform sample without replacement from the pooled data, whatever the number of
//!   clients.
//! - [`Sampler::FixedLocal`] (FLS): every client takes `round(B/K)` samples per step.
//! - [`Sampler::FixedProportional`] (FPLS): client k takes `max(1, round(B * N_k / N))`.
//!
//! In both fixed schemes a client that has run out of samples drops out for the rest of the
//! epoch, so an epoch lasts `max_k ceil(N_k / b_k)` steps and its last steps are small and
//! skewed. Rounding is half to even, as numpy's.

use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// How local batch sizes are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Sampler {
    /// Global sampling (GPSL): a fixed global batch drawn from the pooled data.
    Global,
    /// Fixed local batch `round(B/K)` per client (FLS).
    FixedLocal,
    /// Fixed local batch proportional to the client's data, `max(1, round(B N_k / N))` (FPLS).
    FixedProportional,
}

impl Sampler {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Global => "global",
            Self::FixedLocal => "fixed-local",
            Self::FixedProportional => "fixed-proportional",
        }
    }
}

/// Why a plan cannot be made.
#[derive(Debug, Error, PartialEq)]
pub enum PlanError {
    /// The global batch size is zero.
    #[error("the global batch size B must be at least 1")]
    ZeroBatch,
    /// No client holds data.
    #[error("no client holds any training samples")]
    NoData,
    /// A fixed scheme cannot keep the global batch at B with this many clients.
    #[error("sampler {sampler:?} gives every client at least one sample per step, so B = {batch} must be at least the {clients} clients holding data (global sampling has no such limit)")]
    BatchBelowClients {
        /// The sampler.
        sampler: &'static str,
        /// B.
        batch: usize,
        /// Clients holding data.
        clients: usize,
    },
}

/// Round half to even (numpy's `round`).
fn round_even(x: f64) -> usize {
    let r = x.round();
    let r = if (x - x.trunc()).abs() == 0.5 && r % 2.0 != 0.0 {
        r - x.signum()
    } else {
        r
    };
    r.max(0.0) as usize
}

/// Checks that `sampler` can plan epochs with global batch `batch` for clients holding
/// `counts` samples (what [`plan_epoch`] would refuse).
pub fn check(sampler: Sampler, counts: &[usize], batch: usize) -> Result<(), PlanError> {
    let holders = counts.iter().filter(|&&n| n > 0).count();
    if batch == 0 {
        return Err(PlanError::ZeroBatch);
    }
    if holders == 0 {
        return Err(PlanError::NoData);
    }
    if sampler != Sampler::Global && batch < holders {
        return Err(PlanError::BatchBelowClients {
            sampler: sampler.as_str(),
            batch,
            clients: holders,
        });
    }
    Ok(())
}

/// The fixed local batch sizes of FLS / FPLS for clients holding `counts` samples.
pub fn fixed_sizes(
    sampler: Sampler, counts: &[usize], batch: usize,
) -> Result<Vec<usize>, PlanError> {
    check(sampler, counts, batch)?;
    let total: usize = counts.iter().sum();
    let k = counts.len() as f64;
    Ok(counts
        .iter()
        .map(|&n| match sampler {
            Sampler::FixedLocal => round_even(batch as f64 / k).max(1),
            _ => round_even(batch as f64 * n as f64 / total as f64).max(1),
        })
        .collect())
}

/// One epoch's local batch sizes: `steps[t][k]` samples from client k at step t. Every
/// client's sizes sum to its sample count; steps where no client contributes do not occur.
pub fn plan_epoch(
    sampler: Sampler, counts: &[usize], batch: usize, rng: &mut impl rand::Rng,
) -> Result<Vec<Vec<usize>>, PlanError> {
    check(sampler, counts, batch)?;
    let total: usize = counts.iter().sum();
    let k = counts.len();
    match sampler {
        Sampler::Global => {
            let mut pool: Vec<u32> = Vec::with_capacity(total);
            for (c, &n) in counts.iter().enumerate() {
                pool.extend(std::iter::repeat_n(c as u32, n));
            }
            pool.shuffle(rng);
            let chunks = total.div_ceil(batch);
            let (q, r) = (total / chunks, total % chunks);
            let mut steps = Vec::with_capacity(chunks);
            let mut start = 0;
            for t in 0..chunks {
                let len = q + usize::from(t < r);
                let mut row = vec![0usize; k];
                for &c in &pool[start..start + len] {
                    row[c as usize] += 1;
                }
                start += len;
                steps.push(row);
            }
            Ok(steps)
        }
        Sampler::FixedLocal | Sampler::FixedProportional => {
            let sizes = fixed_sizes(sampler, counts, batch)?;
            let mut left = counts.to_vec();
            let mut steps = Vec::new();
            while left.iter().any(|&n| n > 0) {
                let row: Vec<usize> = left
                    .iter_mut()
                    .zip(&sizes)
                    .map(|(n, &b)| {
                        let take = (*n).min(b);
                        *n -= take;
                        take
                    })
                    .collect();
                steps.push(row);
            }
            Ok(steps)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seed;
    use proptest::prelude::*;

    #[test]
    fn rounding_is_numpys() {
        assert_eq!(round_even(2.5), 2);
        assert_eq!(round_even(3.5), 4);
        assert_eq!(round_even(0.5), 0);
        assert_eq!(round_even(2.4), 2);
        assert_eq!(round_even(2.6), 3);
    }

    #[test]
    fn fixed_schemes_deplete_and_take_longer() {
        // 4 clients, B = 8: FLS gives 2 each; the big client runs on alone.
        let counts = [10, 2, 2, 2];
        let fls = plan_epoch(Sampler::FixedLocal, &counts, 8, &mut seed::rng(1, &[])).unwrap();
        assert_eq!(fls.len(), 5);
        assert_eq!(fls[0], [2, 2, 2, 2]);
        assert_eq!(fls[4], [2, 0, 0, 0]);
        // FPLS: round(8 * 10/16) = 5, round(1) = 1.
        assert_eq!(
            fixed_sizes(Sampler::FixedProportional, &counts, 8).unwrap(),
            [5, 1, 1, 1]
        );
        let gpsl = plan_epoch(Sampler::Global, &counts, 8, &mut seed::rng(1, &[])).unwrap();
        assert_eq!(gpsl.len(), 2);
        assert!(gpsl.iter().all(|s| s.iter().sum::<usize>() == 8));
        let e = plan_epoch(Sampler::FixedLocal, &[5; 10], 8, &mut seed::rng(1, &[])).unwrap_err();
        assert!(e.to_string().contains("at least the 10 clients"), "{e}");
        assert!(plan_epoch(Sampler::Global, &[5; 10], 8, &mut seed::rng(1, &[])).is_ok());
        assert_eq!(
            plan_epoch(Sampler::Global, &[0, 0], 8, &mut seed::rng(1, &[])),
            Err(PlanError::NoData)
        );
    }

    proptest! {
        #[test]
        fn plans_cover_each_client_exactly(
            counts in prop::collection::vec(0usize..200, 1..20),
            batch in 1usize..300,
            s in 0u64..1000,
        ) {
            prop_assume!(counts.iter().sum::<usize>() > 0);
            for sampler in [Sampler::Global, Sampler::FixedLocal, Sampler::FixedProportional] {
                let Ok(plan) = plan_epoch(sampler, &counts, batch, &mut seed::rng(s, &[])) else {
                    prop_assert!(sampler != Sampler::Global);
                    continue;
                };
                for (k, &n) in counts.iter().enumerate() {
                    prop_assert_eq!(plan.iter().map(|row| row[k]).sum::<usize>(), n);
                }
                prop_assert!(plan.iter().all(|row| row.iter().sum::<usize>() > 0));
                if sampler == Sampler::Global {
                    let total: usize = counts.iter().sum();
                    prop_assert_eq!(plan.len(), total.div_ceil(batch));
                    let sizes: Vec<usize> = plan.iter().map(|r| r.iter().sum()).collect();
                    let (lo, hi) = (sizes.iter().min().copied().unwrap_or(0), sizes.iter().max().copied().unwrap_or(0));
                    prop_assert!(hi <= batch && hi - lo <= 1, "{:?}", sizes);
                } else {
                    let b = fixed_sizes(sampler, &counts, batch).unwrap();
                    let steps = counts.iter().zip(&b).map(|(n, b)| n.div_ceil(*b)).max().unwrap_or(0);
                    prop_assert_eq!(plan.len(), steps);
                }
            }
        }
    }

    #[test]
    fn global_sampling_shares_match_data_shares() {
        // Over many epochs, a client's share of every step is N_k / N.
        let counts = [600, 300, 100];
        let mut rng = seed::rng(9, &[]);
        let mut first = [0usize; 3];
        let epochs = 400;
        for _ in 0..epochs {
            let plan = plan_epoch(Sampler::Global, &counts, 50, &mut rng).unwrap();
            for (f, v) in first.iter_mut().zip(&plan[0]) {
                *f += v;
            }
        }
        for (k, &n) in counts.iter().enumerate() {
            let share = first[k] as f64 / (50 * epochs) as f64;
            let want = n as f64 / 1000.0;
            assert!((share - want).abs() < 0.02, "client {k}: {share} vs {want}");
        }
    }
}
