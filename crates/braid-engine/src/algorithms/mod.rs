//! Algorithms, one file each, every role a [`crate::node::Node`].
//!
//! - [`fedavg`]: server-based federated learning: FedAvg (sample-weighted averaging), FedProx
//!   (the client-side proximal term is a training option), partial participation, and server
//!   optimizers on the averaged update (FedAvgM, FedAdam, FedYogi, DiLoCo's Nesterov step). The
//!   centralized baseline is the same algorithm with one client holding all data.
//! - [`fedbuff`]: FedBuff, an asynchronous server that steps whenever a buffer of client
//!   updates is full, weighting each by its staleness.
//! - [`dsgd`]: decentralized SGD without a server: peers on a topology gossip under a
//!   communication budget, and a monitor reports local and merged-model metrics.
//! - [`mutual`]: mutual learning between clients with different architectures: DFML and
//!   its baselines (isolated training, FML, Def-KT).
//! - [`split`]: parallel split learning: clients run the first layers of a cut model, the
//!   server the rest, with global sampling (GPSL) or fixed local batches (FLS, FPLS).

pub mod dsgd;
pub mod fedavg;
pub mod fedbuff;
pub mod mutual;
pub mod split;
