//! `[attack]`: a seeded fraction of the clients are simulated attackers. A label-flipping
//! attacker trains on flipped labels; the others rewrite their update (sign flip, scaling,
//! Gaussian noise) before it leaves them.
//!
//! Composes with every other layer: it runs first on the client, so local DP and
//! compression apply to what the attacker makes of its update, and the server's robust rule
//! or DP sees it as any other update.

use braid_core::robust::Attack;
use braid_core::seed;

use super::UpdateLayer;
use crate::wire::NodeId;

/// An attacker's client layer.
#[derive(Debug, Clone, Copy)]
pub struct Attacker(
    /// What it does to its update (or to its labels).
    pub Attack,
);

impl UpdateLayer for Attacker {
    fn rewrite(&self, update: &mut [f32], seed: u64, client: NodeId, round: u32) {
        let mut rng = seed::rng(
            seed,
            &[seed::stream::ATTACK, u64::from(client), u64::from(round)],
        );
        self.0.apply(update, &mut rng);
    }

    fn flips_labels(&self) -> bool {
        self.0.poisons_labels()
    }
}

/// Which of `clients` shards are attackers (a `fraction` of them, chosen by the experiment
/// seed), as indices into the shards.
pub fn attackers(clients: usize, fraction: f64, seed: u64) -> Vec<usize> {
    braid_core::robust::bad_clients(clients, fraction, seed)
}
