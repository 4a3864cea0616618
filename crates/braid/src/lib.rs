//! braid as a library: federated, decentralized, split and mutual learning as sans-IO state
//! machines, run by a deterministic simulator or across processes over libp2p.
//!
//! This crate is the facade a program builds on. [`prelude`] brings in what an algorithm or
//! an embedding program needs; the layers are re-exported whole:
//!
//! - [`braid_core`]: numerics free of the deep-learning backend (parameters, seeds,
//!   partitions, topologies, compression, privacy accounting, secure aggregation, the byte
//!   reader and writer);
//! - [`braid_data`]: datasets; [`braid_nn`]: models and training (burn);
//! - [`braid_engine`]: the [`Algorithm`](braid_engine::algorithm::Algorithm) contract and the
//!   [`Registry`], the built-in algorithms, configs, the simulator and reports;
//! - [`braid_net`]: the network runtime (libp2p), identities, signed run logs and halts;
//! - [`cli`]: the `braid` command line, which [`cli::main_with`] runs for any registry: a
//!   program that registers its own algorithms keeps every command for them.
//!
//! Examples (run by `cargo test`): `examples/own_algorithm` adds an algorithm with its own
//! config section and protocol; `examples/embed` runs experiments from Rust code.

pub mod cli;

pub use braid_core;
pub use braid_data;
pub use braid_engine;
pub use braid_net;
pub use braid_nn;
/// The burn braid is built on: a program's own models use this one (the same version).
pub use burn;

pub use braid_engine::algorithm::Registry;
pub use braid_engine::protocol;

/// What an algorithm, or a program running experiments, usually needs.
pub mod prelude {
    pub use braid_core::bytes::{ReadError, Reader, Writer};
    pub use braid_data::registered::DatasetKind;
    pub use braid_data::{DataError, DataSplit, Dataset};
    pub use braid_engine::algorithm::{
        Algorithm, Baseline, Feature, Finished, MetricsOf, MsgOf, NodeOf, Registry, RegistryError,
        Summary, TrainerOf,
    };
    pub use braid_engine::config::ExperimentConfig;
    pub use braid_engine::error::{Invalid, Rule};
    pub use braid_engine::experiment::{self, Prepared};
    pub use braid_engine::node::{
        check_params, BoxNode, Ctx, EngineError, EngineResult, Event, Family, Metrics, Node,
        NodeCtx, Protocol,
    };
    pub use braid_engine::report::Rows;
    pub use braid_engine::sim::SimOutcome;
    pub use braid_engine::trainer::{
        Evaluate, FlipLabels, MutualSteps, SplitSteps, Train, TrainSteps, Trainer,
    };
    pub use braid_engine::wire::{
        unknown_kind, Codec, Control, Limits, Message, NodeId, Tensor, WireError,
    };
    pub use braid_nn::{DataShape, Model, ModelKind, NnError, Part, SplitModel};
}
