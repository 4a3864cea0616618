//! A participant that lies about its local training: the adversary `braid audit replay` is
//! built to catch, and is tested against (`braid node --dishonest KIND`).
//!
//! Such a node logs entries that look honest (the sample count and FLOPs of the training it
//! should have done, signed with its own key), so `braid audit verify` cannot tell; only
//! re-executing the training can. It changes nothing but its own process's trainer.

use std::str::FromStr;

use braid_nn::{TrainOutcome, TrainSpec};

/// How a dishonest participant trains instead of as configured.
#[derive(Debug, Clone, PartialEq)]
pub enum Dishonesty {
    /// Skips training: returns the model it was sent, claiming the samples it should have
    /// processed.
    Skip,
    /// Trains with the configured learning rate multiplied by this factor.
    LearningRate(f64),
    /// Trains on shard `k` of the partition instead of its own (a dsgd peer: each batch drawn
    /// from shard `k` at the positions of its own).
    Shard(usize),
}

impl FromStr for Dishonesty {
    type Err = String;

    /// `skip`, `lr=FACTOR` or `shard=K`.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("--dishonest {s:?}: expected skip, lr=FACTOR or shard=K");
        match s.split_once('=') {
            None if s == "skip" => Ok(Self::Skip),
            Some(("lr", f)) => match f.parse::<f64>() {
                Ok(f) if f.is_finite() && f > 0.0 => Ok(Self::LearningRate(f)),
                _ => Err(bad()),
            },
            Some(("shard", k)) => k.parse().map(Self::Shard).map_err(|_| bad()),
            _ => Err(bad()),
        }
    }
}

/// What a [`Dishonesty::Skip`] participant returns: the model it was given, unchanged, with
/// the sample and step counts honest training from `seed` would have had.
pub(crate) fn skipped(
    params: &[f32], shard: &[usize], spec: &TrainSpec, seed: u64,
) -> TrainOutcome {
    let steps = spec
        .max_steps
        .unwrap_or(spec.epochs * shard.len().div_ceil(spec.batch_size.max(1)));
    let batches = braid_nn::train::plan_batches(shard, spec.batch_size, steps, seed);
    TrainOutcome {
        params: params.to_vec(),
        samples: batches.iter().map(Vec::len).sum(),
        steps: batches.len(),
        mean_loss: 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_parse_and_nonsense_is_refused_with_the_forms() {
        assert_eq!("skip".parse(), Ok(Dishonesty::Skip));
        assert_eq!("lr=0.5".parse(), Ok(Dishonesty::LearningRate(0.5)));
        assert_eq!("shard=2".parse(), Ok(Dishonesty::Shard(2)));
        for bad in ["", "lr=0", "lr=nan", "lr", "shard=-1", "sleep"] {
            let e = bad.parse::<Dishonesty>().unwrap_err();
            assert!(e.contains("skip, lr=FACTOR or shard=K"), "{e}");
        }
    }
}
