//! The transport interface, and the in-process transport used by the simulator.
//!
//! Algorithms never touch a transport: their nodes return messages (see [`crate::node`]) and a
//! driver hands them to a [`Transport`]. The simulator uses [`InProcessTransport`]; a network
//! transport implements the same trait, so algorithms run unchanged across processes.

use std::collections::VecDeque;

use crate::wire::{Body, Message, NodeId};

/// A message in flight.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope<M> {
    /// Sender.
    pub from: NodeId,
    /// Receiver.
    pub to: NodeId,
    /// What it carries.
    pub body: Body<M>,
}

/// Bytes and messages one node sent and received.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeTraffic {
    /// Encoded bytes sent.
    pub bytes_sent: u64,
    /// Encoded bytes received.
    pub bytes_received: u64,
    /// Messages sent.
    pub messages_sent: u64,
    /// Messages received.
    pub messages_received: u64,
}

/// Moves messages of protocol `M` between nodes and counts every byte.
pub trait Transport<M> {
    /// Queues `envelope` for delivery and returns its encoded size in bytes.
    fn send(&mut self, envelope: Envelope<M>) -> usize;
    /// Takes every message that is ready, in a deterministic order.
    fn drain(&mut self) -> Vec<Envelope<M>>;
    /// Traffic of node `id` so far.
    fn traffic(&self, id: NodeId) -> NodeTraffic;
}

/// Delivers messages inside one process, in the order they were sent (FIFO), counting the
/// encoded size of each without copying parameter buffers.
#[derive(Debug)]
pub struct InProcessTransport<M> {
    queue: VecDeque<Envelope<M>>,
    traffic: Vec<NodeTraffic>,
}

impl<M> Default for InProcessTransport<M> {
    fn default() -> Self {
        Self {
            queue: VecDeque::new(),
            traffic: Vec::new(),
        }
    }
}

impl<M> InProcessTransport<M> {
    /// An empty transport.
    pub fn new() -> Self {
        Self::default()
    }

    fn slot(&mut self, id: NodeId) -> &mut NodeTraffic {
        let i = id as usize;
        if self.traffic.len() <= i {
            self.traffic.resize(i + 1, NodeTraffic::default());
        }
        &mut self.traffic[i]
    }
}

impl<M: Message> Transport<M> for InProcessTransport<M> {
    fn send(&mut self, envelope: Envelope<M>) -> usize {
        let bytes = envelope.body.encoded_len();
        let s = self.slot(envelope.from);
        s.bytes_sent += bytes as u64;
        s.messages_sent += 1;
        let r = self.slot(envelope.to);
        r.bytes_received += bytes as u64;
        r.messages_received += 1;
        self.queue.push_back(envelope);
        bytes
    }

    fn drain(&mut self) -> Vec<Envelope<M>> {
        self.queue.drain(..).collect()
    }

    fn traffic(&self, id: NodeId) -> NodeTraffic {
        self.traffic.get(id as usize).copied().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algorithms::fedavg::Msg;
    use crate::wire::Tensor;

    #[test]
    fn counts_encoded_bytes_both_ways_and_keeps_order() {
        let mut t = InProcessTransport::new();
        let p = Body::Msg(Msg::Request {
            round: 1,
            model: Tensor::exact(vec![0.0; 10]),
        });
        let n = p.encode().len();
        assert_eq!(
            t.send(Envelope {
                from: 0,
                to: 1,
                body: p.clone()
            }),
            n
        );
        t.send(Envelope {
            from: 0,
            to: 2,
            body: p.clone(),
        });
        assert_eq!(t.traffic(0).bytes_sent, 2 * n as u64);
        assert_eq!(t.traffic(2).bytes_received, n as u64);
        assert_eq!(t.traffic(7), NodeTraffic::default());
        let got: Vec<NodeId> = t.drain().iter().map(|e| e.to).collect();
        assert_eq!(got, vec![1, 2]);
        assert!(t.drain().is_empty());
    }
}
