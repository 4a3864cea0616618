//! The run's participants: node ids, peer ids and addresses, and the allow-list they form.

use std::collections::{BTreeMap, HashMap};

use braid_engine::config::NetworkConfig;
use braid_engine::wire::NodeId;
use libp2p::{Multiaddr, PeerId};

use crate::NetError;

/// Who takes part in a run.
#[derive(Debug, Clone)]
pub struct Roster {
    by_node: BTreeMap<NodeId, (PeerId, Option<Multiaddr>)>,
    by_peer: HashMap<PeerId, NodeId>,
    halters: Vec<PeerId>,
}

impl Roster {
    /// Parses the `[network]` participants; errors name the offending entry.
    pub fn from_config(config: &NetworkConfig) -> Result<Self, NetError> {
        config
            .validate()
            .map_err(|e| NetError::Config(e.to_string()))?;
        let mut by_node = BTreeMap::new();
        let mut by_peer = HashMap::new();
        for p in &config.participants {
            let peer: PeerId = p.peer_id.parse().map_err(|e| {
                NetError::Config(format!(
                    "network.participants: node {} has peer_id {:?}, which is not a libp2p peer id: {e}",
                    p.node, p.peer_id
                ))
            })?;
            let addr = p
                .addr
                .as_deref()
                .map(|a| {
                    a.parse::<Multiaddr>().map_err(|e| {
                        NetError::Config(format!(
                            "network.participants: node {} has addr {a:?}, which is not a multiaddress: {e}",
                            p.node
                        ))
                    })
                })
                .transpose()?;
            by_node.insert(p.node, (peer, addr));
            by_peer.insert(peer, p.node);
        }
        let halters = config
            .halt_keys
            .iter()
            .map(|h| {
                h.parse::<PeerId>().map_err(|e| {
                    NetError::Config(format!(
                        "network.halt_keys: {h:?} is not a libp2p peer id: {e}"
                    ))
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            by_node,
            by_peer,
            halters,
        })
    }

    /// Keys allowed to halt the run.
    pub fn halters(&self) -> &[PeerId] {
        &self.halters
    }

    /// True if `peer` may halt the run.
    pub fn may_halt(&self, peer: &PeerId) -> bool {
        self.halters.contains(peer)
    }

    /// The node id of an admitted peer.
    pub fn node_of(&self, peer: &PeerId) -> Option<NodeId> {
        self.by_peer.get(peer).copied()
    }

    /// The peer id of a node.
    pub fn peer_of(&self, node: NodeId) -> Option<PeerId> {
        self.by_node.get(&node).map(|(p, _)| *p)
    }

    /// Every admitted peer with its node id and address to dial, if any.
    pub fn iter(&self) -> impl Iterator<Item = (NodeId, PeerId, Option<&Multiaddr>)> {
        self.by_node.iter().map(|(&n, (p, a))| (n, *p, a.as_ref()))
    }

    /// Number of participants.
    pub fn len(&self) -> usize {
        self.by_node.len()
    }

    /// True if nobody is admitted.
    pub fn is_empty(&self) -> bool {
        self.by_node.is_empty()
    }
}
