//! Braid's engine.
//!
//! - [`wire`]: the messages nodes exchange and their validated byte encoding;
//! - [`transport`]: the transport interface and the in-process transport (byte-counting);
//! - [`node`]: the sans-IO node trait every algorithm role implements;
//! - [`algorithms`]: the algorithms, one file each;
//! - [`sim`]: the simulator driver (parallel, deterministic);
//! - [`accounting`]: compute spent per participant (samples, FLOPs, seconds);
//! - [`checkpoint`]: atomic checkpoints of a node's state and metrics (for resuming);
//! - [`config`]: the experiment file;
//! - [`experiment`]: config to finished run;
//! - [`report`]: metrics files, plots and the final weights.

pub mod accounting;
pub mod algorithms;
pub mod checkpoint;
pub mod config;
pub mod experiment;
pub mod node;
pub mod report;
pub mod sim;
pub mod transport;
pub mod wire;
