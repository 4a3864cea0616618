//! `[network]`: who takes part in a deployed run, and how nodes reach each other.

use super::*;

/// `[network]`: the participants of a deployed run and the transport's limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    /// The allow-list: every participant's node id, libp2p peer id (derived from its ed25519
    /// public key, printed by `braid keygen`) and, optionally, an address to dial. May be
    /// left out for `braid launch`, which fills it in.
    #[serde(default)]
    pub participants: Vec<Participant>,
    /// Largest message accepted, in MiB (default 1024).
    #[serde(default = "default_max_message_mib")]
    pub max_message_mib: u64,
    /// Seconds a message may take to be delivered and acknowledged (default 120; 1 to
    /// `MAX_WAIT_S`, 7 days).
    #[serde(default = "default_request_timeout_s")]
    pub request_timeout_s: u64,
    /// Seconds a node keeps retrying a message to an unreachable participant (default 600; 0
    /// to `MAX_WAIT_S`).
    #[serde(default = "default_retry_s")]
    pub retry_s: u64,
    /// Seconds a node waits without a message or acknowledgement from any participant before
    /// it stops as if halted (its coordinator or peers are gone); default 3600, 0: never.
    /// Set it above the longest round.
    #[serde(default = "default_idle_timeout_s")]
    pub idle_timeout_s: u64,
    /// Peer ids of the keys allowed to halt the run (`braid halt`); they may connect, but
    /// only to send a halt.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub halt_keys: Vec<String>,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            participants: Vec::new(),
            max_message_mib: default_max_message_mib(),
            request_timeout_s: default_request_timeout_s(),
            retry_s: default_retry_s(),
            idle_timeout_s: default_idle_timeout_s(),
            halt_keys: Vec::new(),
        }
    }
}

/// The longest wait a `[network]` setting may ask for: one week, in seconds. Longer waits
/// are refused at load time (they would overflow the clock arithmetic of the nodes).
pub const MAX_WAIT_S: u64 = 7 * 24 * 3600;

fn default_max_message_mib() -> u64 {
    1024
}
fn default_request_timeout_s() -> u64 {
    120
}
fn default_retry_s() -> u64 {
    600
}
fn default_idle_timeout_s() -> u64 {
    3600
}

/// One admitted participant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Participant {
    /// Node id in the run (FedAvg: 0 = server, 1.. = clients; dsgd: 0.. = peers, then the
    /// monitor).
    pub node: u32,
    /// libp2p peer id, e.g. `12D3KooW...`.
    pub peer_id: String,
    /// Multiaddress to dial, e.g. `/ip4/10.0.0.5/tcp/4100` (leave out for participants that
    /// only dial out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<String>,
}

impl NetworkConfig {
    /// Checks ids are unique and limits are sane (peer ids and addresses are parsed by the
    /// network layer).
    pub fn validate(&self) -> Result<(), Invalid> {
        let mut nodes = std::collections::BTreeSet::new();
        let mut peers = std::collections::BTreeSet::new();
        for p in &self.participants {
            if !nodes.insert(p.node) {
                return Err(Invalid::range(
                    "network.participants",
                    format!("network.participants: node {} appears twice", p.node),
                ));
            }
            if !peers.insert(p.peer_id.as_str()) {
                return Err(Invalid::range(
                    "network.participants",
                    format!("network.participants: peer_id {} appears twice", p.peer_id),
                ));
            }
        }
        let week = format!("{MAX_WAIT_S} (a week)");
        let checks = [
            (
                "max_message_mib",
                self.max_message_mib,
                1,
                1 << 20,
                "1",
                "1048576".to_string(),
            ),
            (
                "request_timeout_s",
                self.request_timeout_s,
                1,
                MAX_WAIT_S,
                "1",
                week.clone(),
            ),
            (
                "idle_timeout_s",
                self.idle_timeout_s,
                0,
                MAX_WAIT_S,
                "0 (never)",
                week.clone(),
            ),
            ("retry_s", self.retry_s, 0, MAX_WAIT_S, "0", week),
        ];
        for (name, value, lo, hi, low, high) in checks {
            if !(lo..=hi).contains(&value) {
                return Err(Invalid::range(
                    format!("network.{name}"),
                    format!("network.{name} = {value} must be between {low} and {high}"),
                ));
            }
        }
        Ok(())
    }
}
