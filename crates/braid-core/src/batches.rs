//! Mini-batches drawn epoch by epoch from one participant's shard.
//!
//! Each epoch is a fresh shuffle of the shard (seeded by the epoch number), cut into batches
//! of `batch_size`; the last batch of an epoch may be smaller and a batch never spans two
//! epochs. The position is two integers, so a checkpoint can resume the exact stream.

use rand::seq::SliceRandom;

use crate::seed;

/// An endless, reproducible stream of mini-batches over a shard.
#[derive(Debug, Clone)]
pub struct EpochBatches {
    shard: Vec<usize>,
    batch_size: usize,
    seed: u64,
    epoch: u64,
    pos: usize,
    order: Vec<usize>,
}

impl EpochBatches {
    /// Batches of `batch_size` (at least 1) over `shard`, with shuffles drawn from `seed`.
    pub fn new(shard: Vec<usize>, batch_size: usize, seed: u64) -> Self {
        let mut s = Self {
            shard,
            batch_size: batch_size.max(1),
            seed,
            epoch: 0,
            pos: 0,
            order: Vec::new(),
        };
        s.shuffle();
        s
    }

    fn shuffle(&mut self) {
        self.order.clone_from(&self.shard);
        self.order.shuffle(&mut seed::rng(self.seed, &[self.epoch]));
    }

    /// Batches per epoch.
    pub fn steps_per_epoch(&self) -> usize {
        self.shard.len().div_ceil(self.batch_size)
    }

    /// `(epoch, offset in the epoch)` of the next batch.
    pub fn position(&self) -> (u64, usize) {
        (self.epoch, self.pos)
    }

    /// The next batch; `None` only for an empty shard.
    pub fn next_batch(&mut self) -> Option<Vec<usize>> {
        if self.shard.is_empty() {
            return None;
        }
        let end = (self.pos + self.batch_size).min(self.order.len());
        let batch = self.order[self.pos..end].to_vec();
        self.pos = end;
        if self.pos >= self.order.len() {
            self.epoch += 1;
            self.pos = 0;
            self.shuffle();
        }
        Some(batch)
    }

    /// The next `k` batches (fewer only for an empty shard).
    pub fn take(&mut self, k: usize) -> Vec<Vec<usize>> {
        (0..k).map_while(|_| self.next_batch()).collect()
    }

    /// Back to the first batch of the first epoch.
    pub fn rewind(&mut self) {
        self.epoch = 0;
        self.pos = 0;
        self.shuffle();
    }

    /// Moves past the next `n` batches without producing them (shuffling only the epoch it
    /// lands in): where the stream is after `n` calls of [`EpochBatches::next_batch`].
    pub fn skip(&mut self, n: u64) {
        let per_epoch = self.steps_per_epoch() as u64;
        if per_epoch == 0 || n == 0 {
            return;
        }
        let done_in_epoch = (self.pos / self.batch_size) as u64;
        let total = done_in_epoch + n;
        let epochs = total / per_epoch;
        self.pos = (total % per_epoch) as usize * self.batch_size;
        if epochs > 0 {
            self.epoch += epochs;
            self.shuffle();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skip_lands_where_taking_would() {
        for (len, bs) in [(10, 3), (9, 3), (1, 4), (7, 1)] {
            for n in 0..25u64 {
                for first in 0..4 {
                    let mut taken = EpochBatches::new((0..len).collect(), bs, 11);
                    let mut skipped = taken.clone();
                    taken.take(first);
                    skipped.take(first);
                    taken.take(n as usize);
                    skipped.skip(n);
                    assert_eq!(
                        skipped.position(),
                        taken.position(),
                        "len {len} bs {bs} n {n}"
                    );
                    assert_eq!(skipped.take(5), taken.take(5));
                }
            }
        }
        let mut empty = EpochBatches::new(Vec::new(), 3, 1);
        empty.skip(5);
        assert!(empty.next_batch().is_none());
    }
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn every_epoch_visits_each_sample_once(n in 1usize..200, b in 1usize..40, seed in 0u64..100) {
            let shard: Vec<usize> = (0..n).map(|i| i * 3 + 1).collect();
            let mut it = EpochBatches::new(shard.clone(), b, seed);
            for epoch in 0..3u64 {
                let mut seen = Vec::new();
                for _ in 0..it.steps_per_epoch() {
                    prop_assert_eq!(it.position().0, epoch);
                    let batch = it.next_batch().unwrap();
                    prop_assert!(!batch.is_empty() && batch.len() <= b);
                    seen.extend(batch);
                }
                seen.sort_unstable();
                prop_assert_eq!(&seen, &shard);
            }
        }
    }

    #[test]
    fn streams_are_reproducible_and_differ_by_seed() {
        let shard: Vec<usize> = (0..100).collect();
        let a = EpochBatches::new(shard.clone(), 8, 1).take(30);
        let b = EpochBatches::new(shard.clone(), 8, 1).take(30);
        let c = EpochBatches::new(shard, 8, 2).take(30);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(EpochBatches::new(Vec::new(), 8, 1).take(3).is_empty());
    }
}
