//! Pieces several protocol tests share.

use braid_engine::algorithms::fedavg::FedAvgClient;
use braid_engine::node::{EngineError, Node, NodeCtx};
use braid_engine::wire::{NodeId, Payload};

/// A client that ignores the first `drop` messages it gets (crashed, then back).
pub struct Flaky {
    /// The client behind it.
    pub inner: FedAvgClient,
    /// Messages still to ignore.
    pub drop: usize,
}

impl Node for Flaky {
    fn id(&self) -> NodeId {
        self.inner.id()
    }
    fn on_start(&mut self, ctx: &mut NodeCtx<'_>) -> Result<(), EngineError> {
        self.inner.on_start(ctx)
    }
    fn on_message(
        &mut self,
        from: NodeId,
        payload: Payload,
        ctx: &mut NodeCtx<'_>,
    ) -> Result<(), EngineError> {
        if self.drop > 0 {
            self.drop -= 1;
            return Ok(());
        }
        self.inner.on_message(from, payload, ctx)
    }
}
