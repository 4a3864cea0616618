//! Pieces several protocol tests share.

use braid_engine::algorithms::fedavg::FedProtocol;
use braid_engine::algorithms::fedavg::{FedAvgClient, FedCtx, Msg};
use braid_engine::node::{EngineResult, Node};
use braid_engine::wire::{Control, NodeId};

/// A client that ignores the first `drop` messages it gets (crashed, then back).
pub struct Flaky {
    /// The client behind it.
    pub inner: FedAvgClient,
    /// Messages still to ignore.
    pub drop: usize,
}

impl Node for Flaky {
    type Protocol = FedProtocol;

    fn id(&self) -> NodeId {
        self.inner.id()
    }
    fn on_start(&mut self, ctx: &mut FedCtx<'_>) -> EngineResult {
        self.inner.on_start(ctx)
    }
    fn on_message(&mut self, from: NodeId, msg: Msg, ctx: &mut FedCtx<'_>) -> EngineResult {
        if self.drop > 0 {
            self.drop -= 1;
            return Ok(());
        }
        self.inner.on_message(from, msg, ctx)
    }
    fn on_control(&mut self, from: NodeId, c: Control, ctx: &mut FedCtx<'_>) -> EngineResult {
        self.inner.on_control(from, c, ctx)
    }
}
