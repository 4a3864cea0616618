//! Hand-made messages for checking a deployment's input validation.
//!
//! [`send_raw`] connects to one node with a given identity (Noise, yamux, braid's protocol)
//! and writes each byte string verbatim as one message stream, length prefix included, so a
//! caller can send what no honest node would: garbage, a payload cut short, a frame shorter
//! than its announced length, or a length above the receiver's limit. It returns what the
//! receiver answered to each. The tests use it to show such messages are refused and logged
//! without harm to the run.

use std::io;
use std::time::{Duration, Instant};

use futures::{AsyncRead, AsyncWrite, AsyncWriteExt, StreamExt};
use libp2p::identity::Keypair;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, StreamProtocol};

use crate::codec::{read_ack, Ack, PROTOCOL};
use crate::NetError;

/// What the receiver made of one hand-made message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It answered with an acknowledgement.
    Answered(Ack),
    /// It sent no answer (it closed the stream or the connection): the error seen here.
    NoAnswer(String),
}

/// Writes requests verbatim; reads braid acknowledgements.
#[derive(Debug, Clone, Default)]
struct RawCodec;

impl request_response::Codec for RawCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Ack;

    async fn read_request<T>(&mut self, _: &StreamProtocol, _: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "the probe accepts no messages",
        ))
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Ack>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_ack(io).await
    }

    async fn write_request<T>(
        &mut self, _: &StreamProtocol, io: &mut T, req: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        io.write_all(&req).await?;
        io.flush().await
    }

    async fn write_response<T>(&mut self, _: &StreamProtocol, _: &mut T, _: Ack) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "the probe answers nothing",
        ))
    }
}

/// Sends each of `streams` (bytes written as they are, then the stream is closed) to the
/// node `peer` at `addr`, one after the other, as `key`; waits at most `timeout` for each
/// answer.
pub fn send_raw(
    key: Keypair, addr: Multiaddr, peer: PeerId, streams: Vec<Vec<u8>>, timeout: Duration,
) -> Result<Vec<Outcome>, NetError> {
    let io_err = |e: &dyn std::fmt::Display| NetError::Io(format!("probe: {e}"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| io_err(&e))?;
    rt.block_on(async move {
        let behaviour = |_: &Keypair| {
            request_response::Behaviour::with_codec(
                RawCodec,
                [(PROTOCOL, ProtocolSupport::Outbound)],
                request_response::Config::default().with_request_timeout(timeout),
            )
        };
        let mut swarm = crate::runtime::tcp_swarm(key, behaviour, Duration::from_secs(60))
            .map_err(|e| io_err(&e))?;
        swarm.add_peer_address(peer, addr);
        let mut outcomes = Vec::with_capacity(streams.len());
        for bytes in streams {
            let id = swarm.behaviour_mut().send_request(&peer, bytes);
            let deadline = Instant::now() + timeout + Duration::from_secs(5);
            let outcome = loop {
                let left = deadline.saturating_duration_since(Instant::now());
                let ev = tokio::time::timeout(left, swarm.select_next_some())
                    .await
                    .map_err(|_| io_err(&"no answer before the timeout"))?;
                match ev {
                    SwarmEvent::Behaviour(request_response::Event::Message {
                        message:
                            request_response::Message::Response {
                                request_id,
                                response,
                            },
                        ..
                    }) if request_id == id => break Outcome::Answered(response),
                    SwarmEvent::Behaviour(request_response::Event::OutboundFailure {
                        request_id,
                        error,
                        ..
                    }) if request_id == id => break Outcome::NoAnswer(error.to_string()),
                    _ => {}
                }
            };
            outcomes.push(outcome);
        }
        Ok(outcomes)
    })
}
