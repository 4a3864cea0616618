//! The downlink as a compressed change to a copy of the model that every client keeps
//! (`compression.downlink_delta = true`), with the server's error feedback.
//!
//! Server and clients hold the same copy `c` of the model. It starts as the seeded initial
//! model, which every participant builds from the experiment file. In round `t` the server
//! compresses `params - c` (the global model minus the copy), adds the decoded change to its
//! copy and sends the same bytes to the clients, which add them to theirs: both copies move
//! to `c_t` bit for bit. What compression dropped stays in `params - c_t` and is sent in later
//! rounds, so a sparsifier loses nothing for good (error feedback on the server's side).
//! Clients train from `c_t`; their updates (trained minus `c_t`) are added to the exact
//! global model, as with any compressed downlink.
//!
//! A client can apply round `t`'s change only to the copy of round `t - 1`. The server counts
//! a client as holding that copy when it answered round `t - 1`; every other client (one
//! that skipped a round, or was not asked) is sent the copy `c_t` whole, in f32. With partial
//! participation most requests are therefore whole copies: this mode pays off when most
//! clients take part in every round.

use std::collections::BTreeMap;
use std::sync::Arc;

use braid_core::compress::{self, Compression};

use crate::algorithms::fedavg::Msg;
use crate::algorithms::fedavg::SERVER;
use crate::node::{EngineError, EngineResult, NodeState};
use crate::wire::{NodeId, Tensor};

/// `copy += change`, the one way server and clients both update their copies, so they stay
/// equal bit for bit.
fn add_into(copy: &mut [f32], change: &[f32]) {
    for (c, d) in copy.iter_mut().zip(change) {
        *c += d;
    }
}

/// The server's copy of the clients' model and what each client holds.
pub(in crate::algorithms::fedavg) struct ServerCopy {
    compression: Compression,
    /// The copy, as of round `round`.
    copy: Vec<f32>,
    round: u32,
    /// Round `round`'s change, encoded.
    delta: Arc<Vec<u8>>,
    /// The last round each client answered, whose copy it holds (0: the initial model).
    synced: BTreeMap<NodeId, u32>,
}

impl ServerCopy {
    /// Starts from the initial model, which every client also holds.
    pub(in crate::algorithms::fedavg) fn new(compression: Compression, initial: &[f32]) -> Self {
        Self {
            compression,
            copy: initial.to_vec(),
            round: 0,
            delta: Arc::new(Vec::new()),
            synced: BTreeMap::new(),
        }
    }

    /// Moves the copy to round `round` by the compressed change towards `params` (the global
    /// model); a second call for the same round changes nothing.
    pub(in crate::algorithms::fedavg) fn advance(
        &mut self, round: u32, params: &[f32], experiment_seed: u64,
    ) -> EngineResult {
        if round == self.round {
            return Ok(());
        }
        let change = braid_core::params::sub(params, &self.copy)?;
        let key = [u64::from(SERVER), u64::from(round)];
        let bytes = compress::encode_seeded(&change, &self.compression, experiment_seed, &key)
            .map_err(|e| EngineError::Failed(e.to_string()))?;
        let sent = compress::decode(&bytes, change.len())
            .map_err(|e| EngineError::Failed(e.to_string()))?;
        add_into(&mut self.copy, &sent);
        self.round = round;
        self.delta = Arc::new(bytes);
        Ok(())
    }

    /// What `client` is sent in the current round: the change if it holds the previous
    /// round's copy, else the whole copy.
    pub(in crate::algorithms::fedavg) fn request_for(&self, client: NodeId) -> Msg {
        let held = self.synced.get(&client).copied().unwrap_or(0);
        if self.round > 0 && held == self.round - 1 {
            Msg::DeltaRequest {
                round: self.round,
                base: held,
                delta: Tensor::Packed(Arc::clone(&self.delta)),
            }
        } else {
            Msg::Request {
                round: self.round,
                model: Tensor::exact(self.copy.clone()),
            }
        }
    }

    /// `client` restarted and holds no copy: it is sent the whole model next.
    pub(in crate::algorithms::fedavg) fn forget(&mut self, client: NodeId) {
        // No round's copy: never the previous round's.
        self.synced.insert(client, u32::MAX);
    }

    /// `client` answered the current round: it holds the current copy.
    pub(in crate::algorithms::fedavg) fn answered(&mut self, client: NodeId) {
        self.synced.insert(client, self.round);
    }

    /// The copy the clients of this round train from.
    pub(in crate::algorithms::fedavg) fn copy(&self) -> &[f32] {
        &self.copy
    }

    /// Adds the copy and the clients' rounds to a checkpoint (taken between rounds).
    pub(in crate::algorithms::fedavg) fn save(&self, state: &mut NodeState) {
        state
            .tensors
            .push(("downlink.copy".into(), self.copy.clone()));
        // The current round's change: a resumed server sends it again (the copy already
        // includes it, so it is not recomputed).
        state
            .blobs
            .push(("downlink.delta".into(), self.delta.to_vec()));
        if let Some(meta) = state.meta.as_object_mut() {
            meta.insert(
                "downlink".into(),
                serde_json::json!({
                    "round": self.round,
                    "synced": self.synced.iter().map(|(k, v)| (k.to_string(), *v)).collect::<BTreeMap<String, u32>>(),
                }),
            );
        }
    }

    /// Restores what [`ServerCopy::save`] wrote.
    pub(in crate::algorithms::fedavg) fn load(&mut self, state: &NodeState) -> EngineResult {
        let bad = || EngineError::Checkpoint("checkpoint: malformed downlink copy".into());
        let copy = state.tensor("downlink.copy")?;
        if copy.len() != self.copy.len() {
            return Err(bad());
        }
        let meta = state.meta.get("downlink").ok_or_else(bad)?;
        let round = meta
            .get("round")
            .and_then(|v| v.as_u64())
            .and_then(|v| u32::try_from(v).ok())
            .ok_or_else(bad)?;
        self.synced = super::node_map(meta.get("synced")).ok_or_else(bad)?;
        self.copy = copy.to_vec();
        self.round = round;
        self.delta = match state.blob("downlink.delta") {
            Ok(d) => Arc::new(d.to_vec()),
            // A checkpoint without it (an older braid): everyone gets the whole copy.
            Err(_) => {
                self.synced.clear();
                Arc::new(Vec::new())
            }
        };
        Ok(())
    }
}

/// A client's copy of the model (`compression.downlink_delta`).
pub(in crate::algorithms::fedavg) struct ClientCopy {
    copy: Vec<f32>,
    round: u32,
}

impl ClientCopy {
    /// Starts from the initial model.
    pub(in crate::algorithms::fedavg) fn new(initial: Vec<f32>) -> Self {
        Self {
            copy: initial,
            round: 0,
        }
    }

    /// Whether a change from round `base`'s model to round `round`'s applies to this copy.
    pub(in crate::algorithms::fedavg) fn can_apply(&self, round: u32, base: u32) -> bool {
        self.round == round || self.round == base
    }

    /// The whole copy of round `round` arrived.
    pub(in crate::algorithms::fedavg) fn replace(
        &mut self, round: u32, params: &[f32],
    ) -> Result<(), String> {
        if params.len() != self.copy.len() {
            return Err(format!(
                "a model of {} values, this client's has {}",
                params.len(),
                self.copy.len()
            ));
        }
        self.copy = params.to_vec();
        self.round = round;
        Ok(())
    }

    /// Applies round `round`'s change to the copy of round `base` (a change already applied,
    /// asked again, is not applied twice); returns the model to train from.
    pub(in crate::algorithms::fedavg) fn apply(
        &mut self, round: u32, base: u32, delta: &[u8],
    ) -> Result<&[f32], String> {
        if self.round == round {
            return Ok(&self.copy);
        }
        if self.round != base {
            return Err(format!(
                "a change from round {base}'s model, this client holds round {}'s",
                self.round
            ));
        }
        let change = compress::decode(delta, self.copy.len()).map_err(|e| e.to_string())?;
        add_into(&mut self.copy, &change);
        self.round = round;
        Ok(&self.copy)
    }
}
