//! Framing of braid messages on libp2p request-response streams.
//!
//! One message per stream: an 8-byte little-endian length, then that many bytes: the sender's
//! run id (the 32-byte SHA-256 of the run's configuration) and a
//! [`braid_engine::wire::Body`] encoding. The reader refuses a length above the configured
//! maximum before reading anything else, and grows its buffer only as bytes actually arrive, so
//! an announced size costs nothing until it is sent. A frame of another run (a node started
//! from another configuration: another learning rate, seed or data split) is handed on as
//! [`Frame::OtherRun`], so the receiver refuses it before decoding: admission by
//! configuration, on every message. The answer is a short acknowledgement: one status byte
//! and, when the message was refused, the reason (or the receiver's run id).

use std::io;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::request_response;
use libp2p::StreamProtocol;

/// The protocol name braid speaks.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/braid/msg/1");

/// Largest acknowledgement accepted.
const MAX_ACK: u64 = 4096;

/// Bytes of the run id at the start of every frame.
pub const RUN_ID_BYTES: usize = 32;

/// A whole frame as it goes on the wire: length prefix, run id, body (for hand-made
/// messages: halts, probes).
pub fn frame(run: &[u8; RUN_ID_BYTES], body: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(8 + RUN_ID_BYTES + body.len());
    f.extend_from_slice(&((RUN_ID_BYTES + body.len()) as u64).to_le_bytes());
    f.extend_from_slice(run);
    f.extend_from_slice(body);
    f
}

/// The receiver's answer to one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ack {
    /// Accepted and handed to the node.
    Accepted,
    /// Refused (malformed, too large, or not acceptable to the node); the reason.
    Refused(String),
    /// Refused because the message belongs to another run; the receiver's run id.
    OtherRun([u8; RUN_ID_BYTES]),
    /// Accepted and handled; the receiver's run log then ended at entry `seq`, a line of
    /// SHA-256 `head`: the sender records it, so the receiver's log up to there is witnessed.
    /// With `[governance]`, also the receiver's totals (zero without), for run-wide
    /// thresholds.
    Witnessed {
        /// The position of the receiver's last log entry.
        seq: u64,
        /// The SHA-256 of that entry's line.
        head: [u8; 32],
        /// The FLOPs the receiver had spent.
        flops: u64,
        /// The bytes it had sent and received.
        bytes: u64,
    },
}

/// One incoming or outgoing message stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A whole frame's body (a payload encoding, not yet validated) of this run.
    Bytes(std::sync::Arc<Vec<u8>>),
    /// An incoming frame of another run: its run id (the body is not looked at).
    OtherRun([u8; RUN_ID_BYTES]),
    /// An incoming frame that could not be read whole: too large, or cut short. Handed on
    /// (instead of failing the stream) so the receiver can log the sender and refuse it with
    /// the reason.
    Unreadable(String),
}

/// Length-prefixed frames of one run with a size limit.
#[derive(Debug, Clone)]
pub struct FrameCodec {
    max_bytes: u64,
    run: [u8; RUN_ID_BYTES],
}

impl FrameCodec {
    /// Frames of run `run` with bodies of at most `max_bytes` bytes.
    pub fn new(max_bytes: u64, run: [u8; RUN_ID_BYTES]) -> Self {
        Self { max_bytes, run }
    }
}

/// Reads one frame of at most `max` bytes.
pub async fn read_frame<T: AsyncRead + Unpin + Send>(io: &mut T, max: u64) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 8];
    io.read_exact(&mut len).await?;
    let n = u64::from_le_bytes(len);
    if n > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("message of {n} bytes is larger than the allowed {max}"),
        ));
    }
    let mut buf = Vec::with_capacity(n.min(1 << 20) as usize);
    io.take(n).read_to_end(&mut buf).await?;
    if buf.len() as u64 != n {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("message truncated: {} of {n} bytes", buf.len()),
        ));
    }
    Ok(buf)
}

/// Reads one acknowledgement.
pub async fn read_ack<T: AsyncRead + Unpin + Send>(io: &mut T) -> io::Result<Ack> {
    let b = read_frame(io, MAX_ACK).await?;
    match b.split_first() {
        Some((0, [])) => Ok(Ack::Accepted),
        Some((1, why)) => Ok(Ack::Refused(String::from_utf8_lossy(why).into_owned())),
        Some((2, run)) => match <[u8; RUN_ID_BYTES]>::try_from(run) {
            Ok(run) => Ok(Ack::OtherRun(run)),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "malformed acknowledgement",
            )),
        },
        Some((3, rest)) if rest.len() == 56 => {
            let word = |i: usize| {
                u64::from_le_bytes(<[u8; 8]>::try_from(&rest[i..i + 8]).unwrap_or_default())
            };
            let head = <[u8; 32]>::try_from(&rest[8..40]).unwrap_or_default();
            Ok(Ack::Witnessed {
                seq: word(0),
                head,
                flops: word(40),
                bytes: word(48),
            })
        }
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "malformed acknowledgement",
        )),
    }
}

/// Writes one frame.
pub async fn write_frame<T: AsyncWrite + Unpin + Send>(io: &mut T, bytes: &[u8]) -> io::Result<()> {
    io.write_all(&(bytes.len() as u64).to_le_bytes()).await?;
    io.write_all(bytes).await?;
    io.flush().await
}

impl request_response::Codec for FrameCodec {
    type Protocol = StreamProtocol;
    type Request = Frame;
    type Response = Ack;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Frame>
    where
        T: AsyncRead + Unpin + Send,
    {
        let max = self.max_bytes.saturating_add(RUN_ID_BYTES as u64);
        match read_frame(io, max).await {
            Ok(b) if b.len() < RUN_ID_BYTES => Ok(Frame::Unreadable(format!(
                "a frame of {} bytes, shorter than its run id",
                b.len()
            ))),
            Ok(mut b) => {
                let mut run = [0u8; RUN_ID_BYTES];
                run.copy_from_slice(&b[..RUN_ID_BYTES]);
                if run != self.run {
                    return Ok(Frame::OtherRun(run));
                }
                b.drain(..RUN_ID_BYTES);
                Ok(Frame::Bytes(std::sync::Arc::new(b)))
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof
                ) =>
            {
                Ok(Frame::Unreadable(e.to_string()))
            }
            Err(e) => Err(e),
        }
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Ack>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_ack(io).await
    }

    async fn write_request<T>(
        &mut self, _: &StreamProtocol, io: &mut T, req: Frame,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        match req {
            Frame::Bytes(b) => {
                io.write_all(&((RUN_ID_BYTES + b.len()) as u64).to_le_bytes())
                    .await?;
                io.write_all(&self.run).await?;
                io.write_all(&b).await?;
                io.flush().await
            }
            Frame::Unreadable(_) | Frame::OtherRun(_) => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "only a frame of this run can be sent",
            )),
        }
    }

    async fn write_response<T>(
        &mut self, _: &StreamProtocol, io: &mut T, ack: Ack,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        let mut b = Vec::new();
        match ack {
            Ack::Accepted => b.push(0),
            Ack::Refused(why) => {
                b.push(1);
                let why = why.as_bytes();
                b.extend_from_slice(&why[..why.len().min(MAX_ACK as usize - 1)]);
            }
            Ack::OtherRun(run) => {
                b.push(2);
                b.extend_from_slice(&run);
            }
            Ack::Witnessed {
                seq,
                head,
                flops,
                bytes,
            } => {
                b.push(3);
                b.extend_from_slice(&seq.to_le_bytes());
                b.extend_from_slice(&head);
                b.extend_from_slice(&flops.to_le_bytes());
                b.extend_from_slice(&bytes.to_le_bytes());
            }
        }
        write_frame(io, &b).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::block_on;
    use futures::io::Cursor;

    #[test]
    fn frames_round_trip_and_limits_hold() {
        let mut wire = Cursor::new(Vec::new());
        block_on(write_frame(&mut wire, b"hello")).unwrap();
        let bytes = wire.into_inner();
        assert_eq!(bytes.len(), 8 + 5);
        let back = block_on(read_frame(&mut Cursor::new(bytes.clone()), 5)).unwrap();
        assert_eq!(back, b"hello");
        // Over the limit: refused from the header alone.
        let e = block_on(read_frame(&mut Cursor::new(bytes.clone()), 4)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        // Every truncation is an error, never a short message.
        for cut in 0..bytes.len() {
            assert!(block_on(read_frame(&mut Cursor::new(bytes[..cut].to_vec()), 100)).is_err());
        }
        // A huge announced length with no body costs no allocation and fails cleanly.
        let mut huge = u64::MAX.to_le_bytes().to_vec();
        huge.extend_from_slice(b"xy");
        assert!(block_on(read_frame(&mut Cursor::new(huge), u64::MAX)).is_err());
    }

    #[test]
    fn a_frame_of_another_run_is_told_apart_without_decoding_it() {
        use request_response::Codec;
        let (ours, theirs) = ([1u8; RUN_ID_BYTES], [2u8; RUN_ID_BYTES]);
        let mut codec = FrameCodec::new(100, ours);
        let mut wire = Cursor::new(Vec::new());
        let body = std::sync::Arc::new(b"a body".to_vec());
        block_on(codec.write_request(&PROTOCOL, &mut wire, Frame::Bytes(body.clone()))).unwrap();
        let sent = wire.into_inner();
        assert_eq!(sent, frame(&ours, &body));
        let read = |bytes: Vec<u8>| {
            block_on(FrameCodec::new(100, ours).read_request(&PROTOCOL, &mut Cursor::new(bytes)))
                .unwrap()
        };
        assert_eq!(read(sent), Frame::Bytes(body));
        assert_eq!(read(frame(&theirs, b"a body")), Frame::OtherRun(theirs));
        // Shorter than a run id, or a body over the limit: unreadable, said why.
        let mut short = 5u64.to_le_bytes().to_vec();
        short.extend_from_slice(b"12345");
        assert!(
            matches!(read(short), Frame::Unreadable(w) if w.contains("shorter than its run id"))
        );
        assert!(
            matches!(read(frame(&ours, &[0; 101])), Frame::Unreadable(w) if w.contains("larger than"))
        );
        // The receiver's answer names its run.
        let mut wire = Cursor::new(Vec::new());
        block_on(codec.write_response(&PROTOCOL, &mut wire, Ack::OtherRun(ours))).unwrap();
        let back = block_on(read_ack(&mut Cursor::new(wire.into_inner()))).unwrap();
        assert_eq!(back, Ack::OtherRun(ours));
    }
}
