//! Decentralized SGD's protocol (`dsgd`, tag 2). A restarted peer catches up with the control
//! messages [`crate::wire::Control::JoinRequest`] and [`crate::wire::Control::JoinReply`].

use crate::wire::Tensor;

crate::protocol! {
    /// A message of decentralized SGD.
    pub enum Msg {
        protocol: "dsgd", tag: 2, version: 1;
        /// Peer to peer: `model`, my parameters for gossip round `round` (from 1; exact, or
        /// packed with `compression.gossip`; shared between my out-neighbours in-process).
        /// Replayed: a peer restored from its state before the gossip that completed a round
        /// redoes the mixing and the local steps that followed.
        Gossip(1, "gossip", round = round) [replay] { round: u32, model: Tensor },
        /// Peer to monitor, at an evaluation point after `step` local steps: the mean
        /// training loss since the previous snapshot, the local model's test `accuracy` and
        /// `loss`, the gossip bytes I have sent so far, and `model`, my parameters exactly
        /// (shared with my own copy in-process), for the run's metrics and the counterfactual
        /// global merge. Measurement traffic, not gossip.
        Snapshot(2, "snapshot", round = step) {
            step: u64, train_loss: f32, accuracy: f32, loss: f32, gossip_bytes: u64, model: Tensor,
        },
    }
}
