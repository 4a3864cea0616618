//! Framing of braid messages on libp2p request-response streams.
//!
//! One message per stream: an 8-byte little-endian length, then that many bytes (a
//! [`braid_engine::wire::Body`] encoding). The reader refuses a length above the configured
//! maximum before reading anything else, and grows its buffer only as bytes actually arrive, so
//! an announced size costs nothing until it is sent. The answer is a short acknowledgement:
//! one status byte and, when the message was refused, the reason.

use std::io;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::request_response;
use libp2p::StreamProtocol;

/// The protocol name braid speaks.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/braid/msg/1");

/// Largest acknowledgement accepted.
const MAX_ACK: u64 = 4096;

/// The receiver's answer to one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ack {
    /// Accepted and handed to the node.
    Accepted,
    /// Refused (malformed, too large, or not acceptable to the node); the reason.
    Refused(String),
}

/// One incoming or outgoing message stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A whole frame's bytes (a payload encoding, not yet validated).
    Bytes(std::sync::Arc<Vec<u8>>),
    /// An incoming frame that could not be read whole: too large, or cut short. Handed on
    /// (instead of failing the stream) so the receiver can log the sender and refuse it with
    /// the reason.
    Unreadable(String),
}

/// Length-prefixed frames with a size limit.
#[derive(Debug, Clone)]
pub struct FrameCodec {
    max_bytes: u64,
}

impl FrameCodec {
    /// Frames of at most `max_bytes` bytes.
    pub fn new(max_bytes: u64) -> Self {
        Self { max_bytes }
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
        match read_frame(io, self.max_bytes).await {
            Ok(b) => Ok(Frame::Bytes(std::sync::Arc::new(b))),
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
            Frame::Bytes(b) => write_frame(io, &b).await,
            Frame::Unreadable(_) => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "an unreadable frame cannot be sent",
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
}
