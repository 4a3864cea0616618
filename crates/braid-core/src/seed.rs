//! Reproducible random streams derived from one experiment seed.
//!
//! Every random choice in a run (partition, model init, batch order of client `c` in round `r`,
//! client sampling) draws from its own stream, derived from the experiment seed and a path of
//! labels. Streams are independent of thread scheduling, so the same seed gives the same run.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// The random generator used everywhere in braid: portable and stable across platforms.
pub type Rng = ChaCha8Rng;

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Derives a sub-seed from `base` and a path of labels, e.g. `derive(seed, &[ROUND, r, c])`.
pub fn derive(base: u64, path: &[u64]) -> u64 {
    path.iter()
        .fold(splitmix64(base), |acc, &p| splitmix64(acc ^ splitmix64(p)))
}

/// A generator seeded from `base` and a label path (see [`derive`]).
pub fn rng(base: u64, path: &[u64]) -> Rng {
    Rng::seed_from_u64(derive(base, path))
}

/// Stream labels, so that different uses of the same seed never share a stream.
pub mod stream {
    /// Partitioning the data set over clients.
    pub const PARTITION: u64 = 1;
    /// Model initialisation.
    pub const INIT: u64 = 2;
    /// Choosing which clients take part in a round.
    pub const SAMPLING: u64 = 3;
    /// A client's local training (batch order) in a round.
    pub const LOCAL_TRAIN: u64 = 4;
    /// Synthetic data generation.
    pub const SYNTHETIC: u64 = 5;
    /// A decentralized run's communication graph in a round.
    pub const TOPOLOGY: u64 = 6;
    /// Choosing the test samples local models are evaluated on.
    pub const EVAL: u64 = 7;
    /// Random choices of compression (random-k subsets, QSGD levels).
    pub const COMPRESS: u64 = 8;
    /// Choosing which simulated clients are stragglers.
    pub const LATENCY: u64 = 9;
    /// Roles in a mutual-learning round (DFML's aggregator and senders, Def-KT's pairs).
    pub const MUTUAL: u64 = 10;
    /// Drawing clients' architectures at random.
    pub const ARCH: u64 = 11;
    /// Differential-privacy noise.
    pub const PRIVACY: u64 = 12;
    /// Choosing the bad clients of a simulated attack, and their random updates.
    pub const ATTACK: u64 = 13;
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng as _;

    #[test]
    fn derived_streams_are_stable_and_distinct() {
        assert_eq!(derive(7, &[1, 2]), derive(7, &[1, 2]));
        assert_ne!(derive(7, &[1, 2]), derive(7, &[2, 1]));
        assert_ne!(derive(7, &[1]), derive(8, &[1]));
        let a: u64 = rng(1, &[stream::INIT]).random();
        let b: u64 = rng(1, &[stream::INIT]).random();
        assert_eq!(a, b);
    }
}
