//! Mutual learning's protocol (`mutual`, tag 4): DFML, FML, Def-KT and isolated local training
//! speak it.

use crate::wire::Tensor;

crate::protocol! {
    /// A message of mutual learning. Rounds count from 1; `arch` is an index into the run's
    /// list of models.
    pub enum Msg {
        protocol: "mutual", tag: 4, version: 1;
        /// Participant to participant: a whole `model` of architecture `arch` for round
        /// `round`, to be trained by mutual learning or handed back after it (exact, or packed
        /// with `compression.models`). Replayed: a client restored from its state before a
        /// model message redoes its training.
        Model(1, "mutual-model", round = round) [replay] { round: u32, arch: u32, model: Tensor },
        /// Client to monitor: how the client's models do after round `round`: the current
        /// model's test `accuracy` and `loss`, the peak model's (NaN before the first peak),
        /// the mean training loss since the client's last report (NaN if it did none) and the
        /// bytes of models it has sent so far.
        Report(2, "mutual-report", round = round) {
            round: u32, arch: u32, accuracy: f32, loss: f32,
            peak_accuracy: f32, peak_loss: f32, train_loss: f32, bytes_sent: u64,
        },
    }
}
