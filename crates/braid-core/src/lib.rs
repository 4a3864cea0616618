//! Braid's numeric core.
//!
//! Everything here works on plain `f32` slices and label vectors, with no deep-learning
//! dependency, so it builds and tests in seconds:
//! - [`params`]: flat parameter vectors and their arithmetic (weighted means, deltas, norms);
//! - [`server_opt`]: server-side optimizers applied to the averaged client update
//!   (plain FedAvg, FedAvgM, FedAdam, FedYogi, DiLoCo's outer Nesterov step);
//! - [`partition`]: splitting a labelled data set over clients (IID, Dirichlet, shards,
//!   extended Dirichlet, quantity skew) and per-client label histograms;
//! - [`topology`]: peer graphs for decentralized training, mixing matrices, spectral gaps;
//! - [`schedule`]: communication schedules (every k steps, budgets r(p) over training);
//! - [`lowrank`]: PowerSGD low-rank compression of matrix-shaped tensors;
//! - [`lr_schedule`]: learning-rate schedules over training progress (cosine, linear, step);
//! - [`batches`]: a participant's reproducible stream of mini-batches, epoch by epoch;
//! - [`bytes`]: the one little-endian byte writer and length-checking reader behind every
//!   binary encoding (wire messages, secure aggregation, compressed vectors, checkpoints);
//! - [`compress`]: compressed vectors for the wire (top-k / random-k, fp16, bf16, int8, int4,
//!   QSGD) with exact sizes, error bounds and error feedback;
//! - [`split_batches`]: per-client batch sizes of parallel split learning (global sampling,
//!   fixed local and fixed proportional batches);
//! - [`latency`]: a straggler and link model giving the simulated time of synchronous steps;
//! - [`mutual`]: mutual learning between heterogeneous clients (DFML and its baselines):
//!   architecture assignment, round roles, the cyclic distillation weight, per-architecture means;
//! - [`privacy`]: the Renyi-DP accountant of the subsampled Gaussian mechanism and its
//!   conversion to (epsilon, delta);
//! - [`robust`]: robust aggregation of client updates (median, trimmed mean, Krum,
//!   Multi-Krum, norm clipping);
//! - [`seed`]: deriving independent, reproducible random streams from one experiment seed.

pub mod batches;
pub mod bytes;
pub mod compress;
pub mod latency;
pub use compress::lowrank;
pub mod lr_schedule;
pub mod mutual;
pub mod params;
pub mod partition;
pub mod privacy;
pub mod robust;
pub mod schedule;
pub mod secagg;
pub mod seed;
pub mod server_opt;
pub mod split_batches;
pub mod topology;
