//! Braid's models and local training, on burn (the `flex` CPU backend with braid's own kernels; GPUs
//! through burn's wgpu backend, the `gpu` cargo feature).
//!
//! - [`model`]: any burn module as a braid model ([`Model`], [`ModelKind`]), bound to a
//!   dataset's shape ([`BoundModel`]);
//! - [`arch`]: the built-in models (MLP and three CNNs), parameter shapes and seeded init, all
//!   without touching the tensor backend;
//! - [`net`]: the burn module that runs every built-in architecture;
//! - [`layers`]: burn's layers through braid's CPU kernels, for models of one's own;
//! - [`flat`]: reading and writing all parameters as one `Vec<f32>` in a fixed order;
//! - [`train`]: local training (SGD with momentum/Nesterov/weight decay, AdamW, FedProx's
//!   proximal term) and evaluation;
//! - [`mutual`]: several models, of any architectures, trained together by mutual learning
//!   (distillation between them), for DFML and its baselines;
//! - [`split`]: a model cut at a named layer into client and server parts, for split learning;
//! - [`stacked`]: many clients' models of one built-in architecture trained at once, as one
//!   computation (batched clients, for GPUs);
//! - [`store`]: safetensors files that PyTorch can read;
//! - [`device`]: choosing the device from the config.

pub mod arch;
pub mod device;
mod dyn_net;
pub mod flat;
pub mod kernels;
pub mod layers;
pub mod model;
pub mod models;
pub mod mutual;
pub mod net;
pub mod optim;
pub mod split;
pub mod stacked;
pub mod store;
pub mod train;

pub use arch::{Arch, ModelName};
pub use device::DeviceKind;
pub use model::{AnyModelKind, BoundModel, DataShape, Kind, Model, ModelKind};
pub use mutual::{Member, MutualOutcome, MutualSpec, MutualTrainer, SupervisedLoss};
pub use split::{Halves, Part, ServerStep, SplitArch, SplitModel, SplitShape, SplitTrainer};
pub use train::{
    DpSgd, EvalOutcome, ModelTrainer, OptimizerConfig, OptimizerState, StepTime, TrainOutcome,
    TrainSpec, Trainer,
};

use thiserror::Error;

/// Errors from the models-and-training layer.
#[derive(Debug, Error)]
pub enum NnError {
    /// A parameter vector does not fit the model.
    #[error("model {model} has {expected} parameters but got {got}")]
    ParamCount {
        /// The model's name.
        model: String,
        /// Its parameter count.
        expected: usize,
        /// Values given.
        got: usize,
    },
    /// The data does not fit the model.
    #[error("{0}")]
    Shape(String),
    /// A configuration value is invalid.
    #[error("{0}")]
    Config(String),
    /// Reading or writing a weights file failed.
    #[error("weights file {path}: {why}")]
    Store {
        /// The file.
        path: String,
        /// What went wrong.
        why: String,
    },
    /// Training produced NaN or infinite values.
    #[error("training diverged (loss or parameters not finite); lower the learning rate")]
    Diverged,
    /// Training was stopped by a halt before it finished (its result is discarded).
    #[error("training stopped: the run was halted")]
    Halted,
}
