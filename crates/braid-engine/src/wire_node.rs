//! [`WireNode`]: a node with its protocol erased to bytes, and the trainer it is lent, for
//! drivers that move bytes between processes (the network runtime). The simulator drives
//! typed nodes directly.

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use crate::accounting::{Compute, Meter};
use crate::node::{
    BoxNode, EngineError, EngineResult, Event, Input, Metrics, NodeCtx, NodeState, Protocol,
};
use crate::trainer::{Trainer, TrainerObject};
use crate::wire::{Body, Control, Limits, NodeId, WireError};

/// A decoded message, ready for the node thread.
pub enum Decoded {
    /// A halt (the runtime checks its signature; nodes never see it).
    Halt(Control),
    /// Anything else, for [`WireNode::handle`].
    Input {
        /// The message's kind, for logs.
        kind: &'static str,
        /// The decoded message (the node's own type, erased).
        body: Box<dyn Any + Send>,
    },
}

/// Decodes frames of one protocol (and control messages); shared by the network task.
pub type Decoder = Arc<dyn Fn(&[u8]) -> Result<Decoded, WireError> + Send + Sync>;

/// What a node is handed.
pub enum WireInput {
    /// The run starts.
    Start,
    /// A decoded message from a node ([`Decoded::Input`]'s body).
    Message(NodeId, Box<dyn Any + Send>),
    /// A deadline passed.
    Deadline(u64),
}

/// A message to send, encoded.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// The frame's bytes.
    pub bytes: Arc<Vec<u8>>,
    /// Its kind, for logs.
    pub kind: &'static str,
    /// A last word (a shutdown): its receiver may exit as soon as it has read it.
    pub last_word: bool,
}

/// A metrics row, erased: its progress and its JSON form (the node's [`Metrics`] type).
#[derive(Debug, Clone, PartialEq)]
pub enum WireEvent {
    /// A metrics row.
    Metrics {
        /// Position (round, step, epoch) and accuracy.
        progress: (u64, Option<f64>),
        /// The line a deployed node prints for it ([`crate::node::Metrics::line`]).
        line: String,
        /// The row.
        row: serde_json::Value,
    },
    /// The run is over with these final parameters.
    Finished {
        /// The parameters.
        params: Vec<f32>,
    },
}

/// What handling one input produced.
#[derive(Default)]
pub struct Handled {
    /// Messages to send, in order.
    pub outbox: Vec<(NodeId, Outgoing)>,
    /// Events reported.
    pub events: Vec<WireEvent>,
    /// Deadlines set.
    pub deadlines: Vec<(u64, Duration)>,
    /// Compute spent in the trainer.
    pub compute: Compute,
    /// With [`WireNode::hash_models`]: the model hash before the first and after the last
    /// training call.
    pub models: Option<(String, String)>,
}

/// A node whose messages are bytes, with its trainer.
pub trait WireNode: Send {
    /// The node's id.
    fn id(&self) -> NodeId;
    /// The decoder of its protocol.
    fn decoder(&self) -> Decoder;
    /// The round or step an input belongs to (for compute attribution).
    fn round_of(&self, input: &WireInput) -> Option<u64>;
    /// Hands the node an input; what it produced is returned even when the node refuses a
    /// message (an `Err` of [`EngineError::Rejected`]).
    fn handle(&mut self, input: WireInput) -> (Handled, EngineResult);
    /// Asks the trainer to stop after the step in progress once `flag` is set (a halt).
    fn set_stop_flag(&mut self, flag: Arc<std::sync::atomic::AtomicBool>);
    /// Also records model hashes around training ([`Handled::models`]), for run logs.
    fn hash_models(&mut self);
    /// The event of a metrics row this node reported (a [`WireEvent::Metrics`] row, e.g.
    /// restored from a checkpoint); `None` if it is not one of its rows.
    fn row_event(&self, row: &serde_json::Value) -> Option<WireEvent>;
    /// See [`crate::node::Node::state_version`].
    fn state_version(&self) -> u64;
    /// See [`crate::node::Node::save_state`].
    fn save_state(&self) -> Option<NodeState>;
    /// See [`crate::node::Node::load_state`].
    fn load_state(&mut self, state: NodeState) -> EngineResult;
    /// See [`crate::node::Node::keep_checkpoints`].
    fn keep_checkpoints(&mut self);
    /// See [`crate::node::Node::rejoin`].
    fn rejoin(&mut self);
    /// See [`crate::node::Node::finished`].
    fn finished(&self) -> bool;
    /// See [`crate::node::Node::listens_to`].
    fn listens_to(&self) -> Option<Vec<NodeId>>;
}

/// A typed node behind [`WireNode`], with its trainer (metered).
pub struct Wired<P: Protocol> {
    node: BoxNode<P>,
    trainer: Box<P::Trainer>,
    meter: Meter,
    limits: Limits,
}

impl<P: Protocol<Metrics: Metrics, Trainer: TrainerObject>> Wired<P> {
    /// `node` lent `trainer`, decoding messages within `limits`.
    pub fn new(node: BoxNode<P>, trainer: Box<P::Trainer>, limits: Limits) -> Self {
        let (trainer, meter) = crate::trainer::metered(trainer);
        Self {
            node,
            trainer,
            meter,
            limits,
        }
    }

    fn typed(input: WireInput) -> EngineResult<Input<P::Msg>> {
        Ok(match input {
            WireInput::Start => Input::Start,
            WireInput::Deadline(t) => Input::Deadline(t),
            WireInput::Message(from, body) => match body.downcast::<Body<P::Msg>>() {
                Ok(b) => Input::arrived(from, *b),
                Err(_) => {
                    return Err(EngineError::Driver(
                        "a message decoded for another protocol".into(),
                    ))
                }
            },
        })
    }
}

impl<P: Protocol<Metrics: Metrics, Trainer: TrainerObject>> WireNode for Wired<P> {
    fn id(&self) -> NodeId {
        self.node.id()
    }

    fn decoder(&self) -> Decoder {
        let limits = self.limits;
        Arc::new(move |bytes: &[u8]| {
            Ok(match Body::<P::Msg>::decode(bytes, &limits)? {
                Body::Control(c @ Control::Halt { .. }) => Decoded::Halt(c),
                body => Decoded::Input {
                    kind: body.kind(),
                    body: Box::new(body),
                },
            })
        })
    }

    fn round_of(&self, input: &WireInput) -> Option<u64> {
        match input {
            WireInput::Message(_, body) => body.downcast_ref::<Body<P::Msg>>()?.round(),
            _ => None,
        }
    }

    fn handle(&mut self, input: WireInput) -> (Handled, EngineResult) {
        let input = match Self::typed(input) {
            Ok(i) => i,
            Err(e) => return (Handled::default(), Err(e)),
        };
        let (mut outbox, mut events) = (Vec::new(), Vec::new());
        let mut ctx = NodeCtx::new(&mut outbox, &mut events, self.trainer.as_mut());
        let result = input.apply(self.node.as_mut(), &mut ctx);
        let deadlines = ctx.take_deadlines();
        let (compute, models) = self.meter.take();
        let outbox = outbox
            .into_iter()
            .map(|(to, body)| {
                let last_word = matches!(body, Body::Control(Control::Shutdown { .. }));
                (
                    to,
                    Outgoing {
                        kind: body.kind(),
                        bytes: Arc::new(body.encode()),
                        last_word,
                    },
                )
            })
            .collect();
        let events = events
            .into_iter()
            .map(|e| match e {
                Event::Metrics(m) => WireEvent::Metrics {
                    progress: m.progress(),
                    line: m.line(),
                    row: serde_json::to_value(&m).unwrap_or(serde_json::Value::Null),
                },
                Event::Finished { params } => WireEvent::Finished { params },
            })
            .collect();
        (
            Handled {
                outbox,
                events,
                deadlines,
                compute,
                models,
            },
            result,
        )
    }

    fn set_stop_flag(&mut self, flag: Arc<std::sync::atomic::AtomicBool>) {
        self.trainer.set_stop_flag(flag);
    }

    fn hash_models(&mut self) {
        self.meter.hash_models(true);
    }

    fn row_event(&self, row: &serde_json::Value) -> Option<WireEvent> {
        serde_json::from_value::<P::Metrics>(row.clone())
            .ok()
            .map(|m| WireEvent::Metrics {
                progress: m.progress(),
                line: m.line(),
                row: row.clone(),
            })
    }

    fn state_version(&self) -> u64 {
        self.node.state_version()
    }

    fn save_state(&self) -> Option<NodeState> {
        self.node.save_state()
    }

    fn load_state(&mut self, state: NodeState) -> EngineResult {
        self.node.load_state(state)
    }

    fn keep_checkpoints(&mut self) {
        self.node.keep_checkpoints()
    }

    fn rejoin(&mut self) {
        self.node.rejoin()
    }

    fn finished(&self) -> bool {
        self.node.finished()
    }

    fn listens_to(&self) -> Option<Vec<NodeId>> {
        self.node.listens_to()
    }
}
