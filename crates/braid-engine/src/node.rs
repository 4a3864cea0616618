//! The shape every algorithm role has: a message-driven state machine ("sans-IO").
//!
//! A [`Node`] reacts to its start and to messages; it sends by pushing onto its [`NodeCtx`],
//! trains and evaluates through the trainer the driver lends it (a bundle of the
//! capabilities in [`crate::trainer`] its algorithm needs), and reports progress
//! as [`Event`]s. It never touches sockets, threads or clocks, so the same code runs in the
//! simulator and across real processes.

use std::marker::PhantomData;
use std::time::Duration;

pub use crate::error::{EngineError, EngineResult};

use crate::wire::{Body, Control, Message, NodeId};

/// A row of an algorithm's metrics (`metrics.csv`): what its reporting node emits at each
/// round, evaluation point or epoch.
pub trait Metrics:
    Clone
    + std::fmt::Debug
    + PartialEq
    + Send
    + serde::Serialize
    + serde::de::DeserializeOwned
    + 'static
{
    /// How far the run is (the round, step or epoch) and the accuracy reported there, for
    /// progress bars and run logs.
    fn progress(&self) -> (u64, Option<f64>);
    /// The line a deployed node prints when it reports the row (`braid node` adds the wall
    /// time), e.g. `round    3 | accuracy 0.7712 | clients 10 (stragglers 0)`.
    fn line(&self) -> String;
    /// Records the simulated time at which the row was reported (by a simulator keeping
    /// time). Default: nothing to record.
    fn set_sim_time(&mut self, _seconds: f64) {}
}

/// What a node reports to the driver.
#[derive(Debug, Clone, PartialEq)]
pub enum Event<R> {
    /// A row of the algorithm's metrics.
    Metrics(R),
    /// The run is over; these are the final global parameters.
    Finished {
        /// Final parameters.
        params: Vec<f32>,
    },
}

impl EngineError {
    /// A function that turns a reason into [`EngineError::Rejected`] for a `kind` message from
    /// `from` received by `node`: every node's message handler refuses through one.
    pub fn rejecter(
        node: NodeId, from: NodeId, kind: &'static str,
    ) -> impl Fn(String) -> EngineError + Copy {
        move |why| EngineError::Rejected {
            node,
            from,
            kind,
            why,
        }
    }
}

/// Checks a received parameter vector before use: `expected` values, all finite. The error
/// says what is wrong, for [`EngineError::Rejected`].
pub fn check_params(params: &[f32], expected: usize) -> Result<(), String> {
    if params.len() != expected {
        return Err(format!(
            "{} parameters, the model has {expected}",
            params.len()
        ));
    }
    if !braid_core::params::all_finite(params) {
        return Err("parameters contain NaN or infinite values".into());
    }
    Ok(())
}

/// A node's durable state: small metadata and named parameter-sized vectors.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeState {
    /// Counters and flags (JSON object).
    pub meta: serde_json::Value,
    /// Named vectors (model, optimizer buffers).
    pub tensors: Vec<(String, Vec<f32>)>,
    /// Named opaque byte strings (e.g. a trainer's serialized optimizer state).
    pub blobs: Vec<(String, Vec<u8>)>,
}

/// The entry called `name` of a checkpoint's named list.
fn named<'a, T>(list: &'a [(String, Vec<T>)], name: &str) -> EngineResult<&'a [T]> {
    list.iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_slice())
        .ok_or_else(|| EngineError::Checkpoint(format!("checkpoint has no {name:?}")))
}

impl NodeState {
    /// The vector called `name`.
    pub fn tensor(&self, name: &str) -> EngineResult<&[f32]> {
        named(&self.tensors, name)
    }

    /// The byte string called `name`.
    pub fn blob(&self, name: &str) -> EngineResult<&[u8]> {
        named(&self.blobs, name)
    }

    /// The unsigned integer `name` in the metadata.
    pub fn meta_u64(&self, name: &str) -> EngineResult<u64> {
        self.meta
            .get(name)
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| EngineError::Checkpoint(format!("checkpoint has no number {name:?}")))
    }
}

/// What the nodes of one algorithm family share: the messages they exchange, the metrics
/// rows they report and the trainer they are lent. A family names it once, usually as a
/// [`Family`] (`pub type FedProtocol = Family<Msg, RoundMetrics, dyn FedTrainer>;`), and its
/// nodes and algorithms name that.
pub trait Protocol: 'static {
    /// The messages its nodes exchange.
    type Msg: Message;
    /// The metrics rows its nodes report.
    type Metrics;
    /// What its nodes ask of their trainer: a bundle of capabilities declared with
    /// [`crate::trainer_bundle!`] (`dyn FedTrainer`).
    type Trainer: ?Sized;
}

/// The [`Protocol`] of messages `M`, metrics rows `R` and trainer `T` (a type, never a value).
pub struct Family<M, R, T: ?Sized>(PhantomData<M>, PhantomData<R>, PhantomData<Box<T>>);

impl<M: Message, R: 'static, T: ?Sized + 'static> Protocol for Family<M, R, T> {
    type Msg = M;
    type Metrics = R;
    type Trainer = T;
}

/// What a node can do while handling an event: send messages of protocol `P`, report its
/// metrics rows, set deadlines, and train and evaluate with its trainer (its algorithm's
/// bundle of capabilities, see [`crate::trainer`]).
pub struct NodeCtx<'a, P: Protocol> {
    outbox: &'a mut Vec<(NodeId, Body<P::Msg>)>,
    events: &'a mut Vec<Event<P::Metrics>>,
    deadlines: Vec<(u64, Duration)>,
    /// Training and evaluation.
    pub trainer: &'a mut P::Trainer,
}

impl<'a, P: Protocol> NodeCtx<'a, P> {
    /// A context writing into the given buffers (drivers and tests build these).
    pub fn new(
        outbox: &'a mut Vec<(NodeId, Body<P::Msg>)>, events: &'a mut Vec<Event<P::Metrics>>,
        trainer: &'a mut P::Trainer,
    ) -> Self {
        Self {
            outbox,
            events,
            deadlines: Vec::new(),
            trainer,
        }
    }

    /// Asks the driver to call [`Node::on_deadline`] with `token` once `after` has passed
    /// (wall-clock time across processes; in the simulator, virtual time that advances only
    /// when no message is left to deliver, so a deadline fires there only if someone never
    /// answers). Deadlines cannot be cancelled: a node ignores tokens it no longer needs.
    pub fn set_deadline(&mut self, token: u64, after: Duration) {
        self.deadlines.push((token, after));
    }

    /// The deadlines set so far (for drivers).
    pub fn take_deadlines(&mut self) -> Vec<(u64, Duration)> {
        std::mem::take(&mut self.deadlines)
    }

    /// Sends `msg` to `to`; returns its encoded size in bytes (frame included).
    pub fn send(&mut self, to: NodeId, msg: P::Msg) -> usize {
        self.send_body(to, Body::Msg(msg))
    }

    /// Sends a control message to `to`; returns its encoded size in bytes.
    pub fn send_control(&mut self, to: NodeId, c: Control) -> usize {
        self.send_body(to, Body::Control(c))
    }

    fn send_body(&mut self, to: NodeId, body: Body<P::Msg>) -> usize {
        let n = body.encoded_len();
        self.outbox.push((to, body));
        n
    }

    /// Reports an event to the driver.
    pub fn emit(&mut self, event: Event<P::Metrics>) {
        self.events.push(event);
    }
}

/// One thing a driver hands a node: the same in the simulator and across processes.
#[derive(Debug)]
pub enum Input<M> {
    /// The run starts.
    Start,
    /// A message of the run's protocol arrived from a node.
    Message(NodeId, M),
    /// A control message arrived from a node.
    Control(NodeId, Control),
    /// A deadline set with [`NodeCtx::set_deadline`] has passed.
    Deadline(u64),
}

impl<M: Message> Input<M> {
    /// What arrived from `from`.
    pub fn arrived(from: NodeId, body: Body<M>) -> Self {
        match body {
            Body::Msg(m) => Self::Message(from, m),
            Body::Control(c) => Self::Control(from, c),
        }
    }

    /// The round or step carried by the message, for attributing the compute it causes;
    /// `None` for starts and deadlines.
    pub fn round(&self) -> Option<u64> {
        match self {
            Self::Message(_, m) => m.round(),
            Self::Control(_, c) => c.round(),
            Self::Start | Self::Deadline(_) => None,
        }
    }

    /// The input's kind, for logs and the simulator's time model.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::Message(_, m) => m.kind(),
            Self::Control(_, c) => c.kind(),
            Self::Deadline(_) => "deadline",
        }
    }

    /// Hands this input to `node`.
    pub fn apply<P: Protocol<Msg = M>>(
        self, node: &mut dyn Node<Protocol = P>, ctx: &mut NodeCtx<'_, P>,
    ) -> EngineResult {
        match self {
            Self::Start => node.on_start(ctx),
            Self::Message(from, m) => node.on_message(from, m, ctx),
            Self::Control(from, c) => node.on_control(from, c, ctx),
            Self::Deadline(token) => node.on_deadline(token, ctx),
        }
    }
}

/// A node's context, from its own types.
pub type Ctx<'a, N> = NodeCtx<'a, <N as Node>::Protocol>;

/// One role of an algorithm on one participant.
pub trait Node: Send {
    /// The protocol it speaks: its messages, metrics rows and trainer.
    type Protocol: Protocol;
    /// This node's id.
    fn id(&self) -> NodeId;
    /// Called once when the run starts.
    fn on_start(&mut self, ctx: &mut NodeCtx<'_, Self::Protocol>) -> EngineResult;
    /// Called for every message of the run's protocol delivered to this node.
    fn on_message(
        &mut self, from: NodeId, msg: <Self::Protocol as Protocol>::Msg,
        ctx: &mut NodeCtx<'_, Self::Protocol>,
    ) -> EngineResult;
    /// Called for every control message delivered to this node (halts never reach nodes:
    /// the network runtime handles them). Default: refused.
    fn on_control(
        &mut self, from: NodeId, c: Control, _ctx: &mut NodeCtx<'_, Self::Protocol>,
    ) -> EngineResult {
        Err(EngineError::Rejected {
            node: self.id(),
            from,
            kind: c.kind(),
            why: "this node takes no control messages".into(),
        })
    }
    /// Changes whenever the node's durable state changes (a completed round); 0 for nodes
    /// that keep nothing worth a checkpoint. Drivers checkpoint when it changes.
    fn state_version(&self) -> u64 {
        0
    }
    /// The state to checkpoint, for nodes that keep one.
    fn save_state(&self) -> Option<NodeState> {
        None
    }
    /// Restores a checkpoint taken by [`Node::save_state`], before [`Node::on_start`].
    fn load_state(&mut self, _state: NodeState) -> EngineResult {
        Err(EngineError::Checkpoint(
            "this node keeps no state to resume from".into(),
        ))
    }
    /// Called before [`Node::on_start`] by drivers that checkpoint: nodes whose durable state
    /// costs something to capture capture it only after this. Default: nothing to do.
    fn keep_checkpoints(&mut self) {}
    /// Called before [`Node::on_start`] (after any [`Node::load_state`]) when the process was
    /// restarted into a run that went on without it (`braid node --resume`): nodes that can
    /// catch up from their peers prepare to. Default: nothing to do.
    fn rejoin(&mut self) {}
    /// True once this node has nothing left to do in the run (a network driver then exits
    /// after its last messages are delivered).
    fn finished(&self) -> bool {
        false
    }
    /// Called when a deadline set with [`NodeCtx::set_deadline`] has passed.
    fn on_deadline(&mut self, _token: u64, _ctx: &mut NodeCtx<'_, Self::Protocol>) -> EngineResult {
        Ok(())
    }
    /// The nodes this node accepts messages from, if only some (`None`: any node). Drivers
    /// with simulated time use it to run nodes at once that no other node can interrupt.
    fn listens_to(&self) -> Option<Vec<NodeId>> {
        None
    }
}

/// A boxed node of protocol `P`.
pub type BoxNode<P> = Box<dyn Node<Protocol = P>>;
