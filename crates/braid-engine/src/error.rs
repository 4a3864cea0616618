//! The engine's errors, typed so that code can match them and each printed as one line.
//!
//! A refused setting is an [`Invalid`]: the field (`"train.batch_size"`, or a table such as
//! `"privacy"`), the [`Rule`] it breaks, and the line people read ("train.batch_size must be
//! at least 1"). Everything else that stops a run is an [`EngineError`] of a kind: a refused
//! message, a checkpoint that cannot be used, a trainer that lacks what was asked of it, data
//! that does not fit, a step that failed, or a fault in a driver.

use thiserror::Error;

use crate::wire::NodeId;

/// The rule a refused setting breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Rule {
    /// The value is outside its allowed range or set (`train.batch_size = 0`).
    Range,
    /// A setting that must be given is missing (`algorithm.steps` for dsgd).
    Missing,
    /// A setting, table or feature does not apply to the chosen algorithm
    /// (`[privacy]` with dsgd), or to another setting's value.
    NotApplicable,
    /// Two settings that cannot be used together (`[secure_aggregation]` with a robust
    /// `algorithm.aggregator`).
    Conflict,
    /// A name nothing is registered under: an algorithm, a model, or a top-level table. (A
    /// key inside a table that the types do not know is a [`Rule::Syntax`] error whose
    /// message names it.)
    Unknown,
    /// The text is not valid TOML, or a value has the wrong type.
    Syntax,
    /// The file cannot be read.
    Unreadable,
}

/// A setting braid refuses: which one, why, and the one line for people.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{message}")]
pub struct Invalid {
    /// The field, dotted as in the config file (`"fedbuff.buffer"`), or the table
    /// (`"privacy"`); empty when the fault is in the text as a whole (its message says where).
    pub field: String,
    /// The rule it breaks.
    pub rule: Rule,
    /// What is wrong and what is allowed, naming the field.
    pub message: String,
}

impl Invalid {
    /// `field` breaks `rule`; `message` says how.
    pub fn new(field: impl Into<String>, rule: Rule, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            rule,
            message: message.into(),
        }
    }

    /// `field` is out of its range ([`Rule::Range`]).
    pub fn range(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(field, Rule::Range, message)
    }

    /// `field` must be set ([`Rule::Missing`]).
    pub fn missing(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(field, Rule::Missing, message)
    }

    /// `field` does not apply here ([`Rule::NotApplicable`]).
    pub fn not_applicable(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(field, Rule::NotApplicable, message)
    }

    /// `field` cannot be combined with another setting ([`Rule::Conflict`]).
    pub fn conflict(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(field, Rule::Conflict, message)
    }

    /// A check of a part of the config (`train.lr_schedule`) whose own error `e` names the
    /// field within it: the field becomes `prefix`, the message `prefix.e`.
    pub fn within(prefix: &str, e: impl std::fmt::Display) -> Self {
        Self::range(prefix, format!("{prefix}.{e}"))
    }
}

/// What engine operations return: a value, or the [`EngineError`] that stopped them.
pub type EngineResult<T = ()> = Result<T, EngineError>;

/// Errors inside the engine.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum EngineError {
    /// Training or evaluation failed.
    #[error(transparent)]
    Nn(#[from] braid_nn::NnError),
    /// Combining parameters failed.
    #[error(transparent)]
    Params(#[from] braid_core::params::ParamsError),
    /// A node got a message it cannot accept (wrong round, unknown sender, bad shape).
    #[error("node {node} rejected a {kind} from node {from}: {why}")]
    Rejected {
        /// Receiving node.
        node: NodeId,
        /// Sender.
        from: NodeId,
        /// Message kind.
        kind: &'static str,
        /// Reason.
        why: String,
    },
    /// A setting the run cannot use.
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// A checkpoint that cannot be written, read or resumed from.
    #[error("{0}")]
    Checkpoint(String),
    /// The trainer lacks what a node asked of it (label flipping, a split model, a list of
    /// models).
    #[error("{0}")]
    Unsupported(String),
    /// The data cannot be loaded, partitioned or used as asked.
    #[error("{0}")]
    Data(String),
    /// A step of the run failed (secure aggregation, a codec, a privacy mechanism).
    #[error("{0}")]
    Failed(String),
    /// A driver could not run the nodes (threads, node ids, messages to nobody).
    #[error("{0}")]
    Driver(String),
}
