//! Braid across processes and machines.
//!
//! The algorithms in `braid-engine` are sans-IO nodes; this crate runs one of them per process
//! over rust-libp2p instead of the in-process simulator:
//! - [`identity`]: ed25519 key files (`braid keygen`), whose public keys are the peer ids the
//!   run's allow-list names;
//! - [`roster`]: the run's participants (node id, peer id, address) from `[network]`;
//! - [`halt`]: signed halt messages: signing, checking against the authorized keys, sending;
//! - [`codec`]: length-prefixed message frames with a size limit, and acknowledgements;
//! - [`probe`]: hand-made (malformed) messages, for testing a deployment's input checks;
//! - [`runlog`]: the tamper-evident run log (hash-chained, signed entries) and its checks;
//! - [`threshold`]: `[governance]` reporting thresholds and their signed reports;
//! - [`runtime`]: the node thread and the network task that connect a node to its peers
//!   (TCP, Noise, yamux), with admission, retries and deadlines.

pub mod codec;
pub mod halt;
pub mod identity;
pub mod probe;
pub mod roster;
pub mod runlog;
pub mod runtime;
pub mod threshold;
pub mod unsent;

pub use libp2p::{Multiaddr, PeerId};

use thiserror::Error;

/// Errors of the network layer.
#[derive(Debug, Error)]
pub enum NetError {
    /// A key file is missing or malformed.
    #[error("{0}")]
    Key(String),
    /// The `[network]` configuration is wrong.
    #[error("{0}")]
    Config(String),
    /// Sockets, threads or the runtime failed.
    #[error("{0}")]
    Io(String),
    /// The node failed (not a rejected message, which is only logged).
    #[error("node failed: {0}")]
    Node(String),
}
