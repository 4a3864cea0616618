//! Server-based federated averaging: one server, many clients, synchronous rounds.
//!
//! Round `r`: the server samples `clients_per_round` clients (seeded by round), sends them the
//! global parameters; each client trains locally on its shard and replies with its parameters
//! and sample count; when every sampled client has replied, the server averages the replies
//! weighted by samples (in client-id order, so the result does not depend on arrival order),
//! applies the server optimizer, evaluates, and reports the round.
//!
//! With a round deadline, a round also ends when the deadline passes and at least
//! `min_replies` clients have answered: the clients that have not are skipped (counted as
//! stragglers) and the average is weighted over those that replied. With fewer replies the
//! server asks the missing clients again and waits another deadline, so a client that was
//! restarted picks up the current round and the current global model.
//!
//! Compression, differential privacy, secure aggregation, robust rules and simulated attacks
//! are layers on this path ([`layers`]): the client applies its update layers to what it
//! trained, the server its layers to what it combines.

use std::time::Duration;

use braid_core::server_opt::{ServerOptimizer, ServerOptimizerConfig};

use crate::node::{check_params, EngineError, EngineResult, Event, Family, NodeCtx, NodeState};
use crate::wire::{Control, NodeId};

pub mod algorithm;
mod client;
pub mod layers;
mod msg;
mod report;
mod server;
pub use algorithm::{Centralized, FedAvg, FedProx};
pub use client::{local_training, FedAvgClient};
pub use layers::compression::model_request;
pub use layers::secure::{SecureSettings, MAX_RESTARTS};
pub use msg::Msg;
pub use report::{MetricsRow, RoundMetrics};
use server::Aggregated;
pub use server::FedAvgServer;

/// What the nodes of the FedAvg family (FedAvg, FedProx, the server optimizers,
/// FedBuff) exchange, report and are lent.
pub type FedProtocol = Family<Msg, RoundMetrics, dyn FedTrainer>;

/// What a node of the FedAvg family can do while handling an event.
pub type FedCtx<'a> = NodeCtx<'a, FedProtocol>;

crate::trainer_bundle!(
    /// What FedAvg-family nodes ask of their trainer: clients train from the global model
    /// with a fresh optimizer, the server evaluates.
    pub FedTrainer: Train + Evaluate
);

/// The server's id.
pub const SERVER: NodeId = 0;

/// Settings of the server.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// Number of rounds.
    pub rounds: u32,
    /// Clients sampled per round.
    pub clients_per_round: usize,
    /// Evaluate the global model every this many rounds (and always after the last).
    pub eval_every: u32,
    /// Server optimizer applied to the averaged update.
    pub server_optimizer: ServerOptimizerConfig,
    /// Experiment seed (client sampling).
    pub seed: u64,
    /// Give up waiting for the clients of a round after this long (None: wait for all).
    pub round_deadline: Option<Duration>,
    /// Replies needed to close a round at its deadline (at least 1).
    pub min_replies: usize,
    /// How the round's updates are combined.
    pub aggregator: braid_core::robust::Aggregator,
}

/// Ends a server's run: reports the final model `params` and tells every client that the run
/// ended after round `round`.
pub(crate) fn end_run(ctx: &mut FedCtx<'_>, params: &[f32], clients: &[NodeId], round: u32) {
    ctx.emit(Event::Finished {
        params: params.to_vec(),
    });
    for &c in clients {
        ctx.send_control(c, Control::Shutdown { round });
    }
}

/// A FedAvg-family server's handling of a control message. A join request from one of
/// `clients` (a restarted client) is answered with the shutdown of round `round` once the run
/// is over (`done`: it may have lost the shutdown) and returned otherwise, with the latest
/// round the client has a request for, for the server to act on. Any other control is
/// refused.
pub(crate) fn join_request(
    ctx: &mut FedCtx<'_>, from: NodeId, c: Control, clients: &[NodeId], done: bool, round: u32,
) -> EngineResult<Option<u64>> {
    match c {
        Control::JoinRequest { step } if clients.contains(&from) => {
            if done {
                ctx.send_control(from, Control::Shutdown { round });
                return Ok(None);
            }
            Ok(Some(step))
        }
        c => {
            use crate::wire::Message as _;
            Err(EngineError::Rejected {
                node: SERVER,
                from,
                kind: c.kind(),
                why: "the server takes only join requests from its clients".into(),
            })
        }
    }
}

/// A server's checkpoint: `meta` (with `completed_rounds`), the global model and the server
/// optimizer's buffers.
pub(crate) fn server_state(
    meta: serde_json::Value, params: &[f32], optimizer: &ServerOptimizer,
) -> NodeState {
    let (m, v) = optimizer.buffers();
    NodeState {
        meta,
        tensors: vec![
            ("params".into(), params.to_vec()),
            ("server_optimizer.m".into(), m.to_vec()),
            ("server_optimizer.v".into(), v.to_vec()),
        ],
        blobs: Vec::new(),
    }
}

/// Reads back what [`server_state`] wrote for a run of `rounds` rounds and a model of `len`
/// values: restores `optimizer` and returns the completed rounds and the global model.
pub(crate) fn restore_server(
    state: &NodeState, rounds: u32, len: usize, optimizer: &mut ServerOptimizer,
) -> EngineResult<(u32, Vec<f32>)> {
    let completed = u32::try_from(state.meta_u64("completed_rounds")?)
        .map_err(|_| EngineError::Checkpoint("checkpoint: completed_rounds is too large".into()))?;
    if completed > rounds {
        return Err(EngineError::Checkpoint(format!(
            "checkpoint has {completed} completed rounds, the run has {rounds}"
        )));
    }
    let params = state.tensor("params")?;
    check_params(params, len)
        .map_err(|why| EngineError::Checkpoint(format!("checkpoint params: {why}")))?;
    optimizer
        .restore(
            state.tensor("server_optimizer.m")?.to_vec(),
            state.tensor("server_optimizer.v")?.to_vec(),
            len,
        )
        .map_err(|e| EngineError::Checkpoint(format!("checkpoint server optimizer: {e}")))?;
    Ok((completed, params.to_vec()))
}
