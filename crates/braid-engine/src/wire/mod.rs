//! What nodes send each other, and its byte encoding.
//!
//! Every message travels in a frame: `"BR"`, the protocol's tag, the protocol's version, then
//! the protocol's own bytes ([`Body::encode`]). A protocol is a [`Message`] type owned by an
//! algorithm (`algorithms::fedavg::Msg`, ...) that encodes and decodes itself with the shared
//! [`braid_core::bytes`] writer and reader; control messages (the end of a run, joining a
//! running run, halts: [`Control`]) are protocol 0 and sit outside every algorithm. Model
//! parameters, updates and other vectors travel as one payload type, [`Tensor`]: exact `f32`
//! values, or bytes packed by a codec.
//!
//! Every byte count braid reports is the length of this encoding: the in-process transport
//! counts [`Body::encoded_len`] (equal to `encode().len()`, tested), and a network transport
//! sends exactly [`Body::encode`]. [`Body::decode`] validates everything (magic, protocol,
//! version, kind, lengths against the run's [`Limits`], exact total size) before anything is
//! used, and refuses a protocol or version the node does not speak by name.

mod control;
mod fields;
mod tensor;

use braid_core::bytes::ReadError;
pub use braid_core::bytes::{Reader, Writer};
use thiserror::Error;

pub use control::{halt_message, Control};
#[doc(hidden)]
pub use fields::{round_of, step_of};
pub use fields::{Codec, Labels, Plain};
pub use tensor::Tensor;

/// Identifies a node in a run (the server of server-based FL is node 0).
pub type NodeId = u32;

/// The first bytes of every frame.
pub const MAGIC: [u8; 2] = *b"BR";
/// Bytes of a frame before the protocol's own: magic, protocol tag, protocol version.
pub const HEADER: usize = 4;

/// The built-in protocols' tags and names (user protocols take tags from 128 up).
pub const BUILTIN_PROTOCOLS: [(u8, &str); 5] = [
    (Control::TAG, Control::PROTOCOL),
    (1, "fedavg"),
    (2, "dsgd"),
    (3, "split"),
    (4, "mutual"),
];

/// The name of built-in protocol `tag`, if there is one.
pub fn protocol_name(tag: u8) -> Option<&'static str> {
    BUILTIN_PROTOCOLS
        .iter()
        .find(|(t, _)| *t == tag)
        .map(|(_, n)| *n)
}

/// What a decoder accepts, from the run's config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The most values one tensor (or list of labels) may carry: the largest model, or in
    /// split learning one client's activations.
    pub max_values: usize,
}

impl Limits {
    /// Limits for tensors of at most `max_values` values.
    pub fn new(max_values: usize) -> Self {
        Self { max_values }
    }
}

/// One protocol's messages: an algorithm's, encoded after the frame header.
pub trait Message: Sized + Clone + std::fmt::Debug + PartialEq + Send + Sync + 'static {
    /// The protocol's name, for logs and refusals.
    const PROTOCOL: &'static str;
    /// Its tag in frames: unique among the protocols of a registry (0 is [`Control`]).
    const TAG: u8;
    /// Its version: a receiver refuses any other.
    const VERSION: u8;
    /// The kinds whose handling re-does the training a node logged, bit for bit, given the
    /// node's state before it (the FedAvg family's train requests, to a client that keeps no
    /// state between rounds; dsgd's gossip, to a peer restored from its state). Their senders
    /// keep a copy of each, nodes that carry state keep it around each training, and
    /// `braid audit replay` re-executes the claims. Empty (the default): not replayed.
    const REPLAYED: &'static [&'static str] = &[];
    /// The message's kind, for logs.
    fn kind(&self) -> &'static str;
    /// Length of [`Message::encode`]'s output, without encoding.
    fn encoded_len(&self) -> usize;
    /// Writes the message.
    fn encode(&self, w: &mut Writer);
    /// Reads one message, checking every length against `limits` first (the frame checks
    /// that nothing follows it).
    fn decode(r: &mut Reader<'_>, limits: &Limits) -> Result<Self, WireError>;
    /// The round or step the message belongs to, for attributing the compute it causes.
    fn round(&self) -> Option<u64> {
        None
    }
}

/// What travels between two nodes of a run of protocol `M`.
#[derive(Debug, Clone, PartialEq)]
pub enum Body<M> {
    /// A message of the run's algorithm.
    Msg(M),
    /// A control message.
    Control(Control),
}

impl<M: Message> Body<M> {
    /// Short name, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Msg(m) => m.kind(),
            Self::Control(c) => c.kind(),
        }
    }

    /// The round or step the message belongs to (see [`Message::round`]).
    pub fn round(&self) -> Option<u64> {
        match self {
            Self::Msg(m) => m.round(),
            Self::Control(c) => c.round(),
        }
    }

    /// Length of [`Body::encode`]'s output, without encoding.
    pub fn encoded_len(&self) -> usize {
        HEADER
            + match self {
                Self::Msg(m) => m.encoded_len(),
                Self::Control(c) => c.encoded_len(),
            }
    }

    /// The frame's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(self.encoded_len());
        w.raw(&MAGIC);
        match self {
            Self::Msg(m) => {
                w.u8(M::TAG);
                w.u8(M::VERSION);
                m.encode(&mut w);
            }
            Self::Control(c) => {
                w.u8(Control::TAG);
                w.u8(Control::VERSION);
                c.encode(&mut w);
            }
        }
        w.into_vec()
    }

    /// Parses and validates a frame of protocol `M` or a control message.
    pub fn decode(bytes: &[u8], limits: &Limits) -> Result<Self, WireError> {
        let mut r = Reader::new(bytes);
        if r.array::<2>("magic")? != MAGIC {
            return Err(WireError::Malformed("not a braid message".into()));
        }
        let (tag, version) = (r.u8("protocol")?, r.u8("version")?);
        let (name, speaks) = match tag {
            t if t == M::TAG => (M::PROTOCOL, M::VERSION),
            t if t == Control::TAG => (Control::PROTOCOL, Control::VERSION),
            _ => {
                return Err(WireError::UnknownProtocol {
                    tag,
                    name: protocol_name(tag),
                    speaks: M::PROTOCOL,
                })
            }
        };
        if version != speaks {
            return Err(WireError::Version {
                protocol: name,
                got: version,
                speaks,
            });
        }
        let body = if tag == Control::TAG {
            Self::Control(Control::decode(&mut r, limits)?)
        } else {
            Self::Msg(M::decode(&mut r, limits)?)
        };
        if r.remaining() > 0 {
            return Err(WireError::Malformed(format!(
                "{} trailing bytes",
                r.remaining()
            )));
        }
        Ok(body)
    }
}

/// Why a message was rejected.
#[derive(Debug, Error, PartialEq)]
pub enum WireError {
    /// Too short to hold what its header announces.
    #[error("message truncated: {0}")]
    Truncated(String),
    /// Not a braid message, or an unknown kind, or a malformed field.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// Announces more values than allowed.
    #[error("message carries {got} values, more than the allowed {max}")]
    TooLarge {
        /// Announced count.
        got: usize,
        /// The run's limit.
        max: usize,
    },
    /// A protocol this node does not speak.
    #[error("a message of protocol {tag}{}, which this node does not speak (it speaks {speaks})", name.map_or(String::new(), |n| format!(" ({n})")))]
    UnknownProtocol {
        /// The frame's protocol tag.
        tag: u8,
        /// Its name, if it is a built-in protocol.
        name: Option<&'static str>,
        /// The protocol this node speaks.
        speaks: &'static str,
    },
    /// A version of a known protocol this node does not speak.
    #[error("a {protocol} message of version {got}; this node speaks version {speaks}")]
    Version {
        /// The protocol.
        protocol: &'static str,
        /// The frame's version.
        got: u8,
        /// The version this node speaks.
        speaks: u8,
    },
}

impl From<ReadError> for WireError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::TooLarge { got, max, .. } => WireError::TooLarge { got, max },
            ReadError::Truncated { .. } => WireError::Truncated(e.to_string()),
            ReadError::Trailing(_) => WireError::Malformed(e.to_string()),
        }
    }
}

/// An unknown message kind of `protocol`.
pub fn unknown_kind(protocol: &str, kind: u8) -> WireError {
    WireError::Malformed(format!("unknown {protocol} message kind {kind}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny protocol for the frame's tests.
    #[derive(Debug, Clone, PartialEq)]
    struct Ping {
        n: u32,
        model: Tensor,
    }

    impl Message for Ping {
        const PROTOCOL: &'static str = "ping";
        const TAG: u8 = 200;
        const VERSION: u8 = 3;
        fn kind(&self) -> &'static str {
            "ping"
        }
        fn encoded_len(&self) -> usize {
            4 + self.model.encoded_len()
        }
        fn encode(&self, w: &mut Writer) {
            w.u32(self.n);
            self.model.encode(w);
        }
        fn decode(r: &mut Reader<'_>, limits: &Limits) -> Result<Self, WireError> {
            Ok(Self {
                n: r.u32("n")?,
                model: Tensor::decode(r, limits)?,
            })
        }
    }

    #[test]
    fn frames_round_trip_and_refuse_other_protocols_and_versions_by_name() {
        let limits = Limits::new(10);
        let ping = Body::Msg(Ping {
            n: 7,
            model: Tensor::exact(vec![1.0, 2.0]),
        });
        let bytes = ping.encode();
        assert_eq!(bytes.len(), ping.encoded_len());
        assert_eq!(&bytes[..4], &[b'B', b'R', 200, 3]);
        assert_eq!(Body::<Ping>::decode(&bytes, &limits), Ok(ping.clone()));
        for cut in 0..bytes.len() {
            assert!(Body::<Ping>::decode(&bytes[..cut], &limits).is_err());
        }
        let mut long = bytes.clone();
        long.push(0);
        assert!(matches!(
            Body::<Ping>::decode(&long, &limits),
            Err(WireError::Malformed(_))
        ));
        let mut other = bytes.clone();
        other[2] = 2;
        let e = Body::<Ping>::decode(&other, &limits).unwrap_err();
        assert_eq!(
            e.to_string(),
            "a message of protocol 2 (dsgd), which this node does not speak (it speaks ping)"
        );
        other[2] = 99;
        assert!(Body::<Ping>::decode(&other, &limits)
            .unwrap_err()
            .to_string()
            .contains("protocol 99, which"));
        let mut newer = bytes.clone();
        newer[3] = 4;
        assert_eq!(
            Body::<Ping>::decode(&newer, &limits)
                .unwrap_err()
                .to_string(),
            "a ping message of version 4; this node speaks version 3"
        );
        let mut magic = bytes;
        magic[0] = b'X';
        assert!(Body::<Ping>::decode(&magic, &limits).is_err());
        assert_eq!(
            Body::<Ping>::decode(&ping.encode(), &Limits::new(1)),
            Err(WireError::TooLarge { got: 2, max: 1 })
        );
        // Control messages travel in every protocol's frames.
        let stop: Body<Ping> = Body::Control(Control::Shutdown { round: 4 });
        assert_eq!(Body::<Ping>::decode(&stop.encode(), &limits), Ok(stop));
    }
}
