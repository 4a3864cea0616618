//! Braid's engine.
//!
//! - [`algorithm`]: the [`algorithm::Algorithm`] contract every algorithm implements, and the
//!   [`algorithm::Registry`] that lists them;
//! - [`algorithms`]: the built-in algorithms, one folder each;
//! - [`wire`]: the frame every message travels in (protocol, version, the protocol's bytes),
//!   control messages and the tensor payload;
//! - [`node`]: the sans-IO node trait every algorithm role implements;
//! - [`trainer`]: what nodes can ask of a trainer, one trait per capability;
//! - [`transport`]: the transport interface and the in-process transport (byte-counting);
//! - [`sim`]: the simulator driver (parallel, deterministic);
//! - [`batched`]: batched clients, the simulator's concurrent training calls as one stacked
//!   computation (`runtime.batch_clients`);
//! - [`wire_node`]: nodes with their protocol erased to bytes, for the network runtime;
//! - [`accounting`]: compute spent per participant (samples, FLOPs, seconds);
//! - [`checkpoint`]: atomic checkpoints of a node's state and metrics (for resuming);
//! - [`config`]: the experiment file;
//! - [`error`]: the engine's errors, typed (refused settings name their field and rule);
//! - [`prepared`]: a run's data, partition and model, and braid's trainer on burn;
//! - [`experiment`]: config to finished run, for any registered algorithm;
//! - [`report`]: metrics files, plots and the final weights.

pub mod accounting;
pub mod algorithm;
pub mod algorithms;
pub mod batched;
pub mod checkpoint;
pub mod config;
pub mod dishonest;
pub mod error;
pub mod experiment;
pub mod node;
pub mod prepared;
pub mod report;
pub mod sim;
pub mod trainer;
pub mod transport;
pub mod wire;
pub mod wire_node;
