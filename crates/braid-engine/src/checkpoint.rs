//! Checkpoints of a running node: its durable state plus the metrics it has reported.
//!
//! One file, written atomically (temp file, fsync, rename, fsync of the directory), so a crash
//! at any moment leaves either the previous checkpoint or the new one, never a torn file:
//! `BRDCKPT1`, an 8-byte little-endian header length, a JSON header (metadata, metrics so far,
//! names and lengths of the vectors and byte strings), then the vectors as little-endian f32,
//! then the byte strings. Loading checks every length against the file before using anything.

use std::fs;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::node::{EngineError, Event, GossipMetrics, NodeState, RoundMetrics};

const MAGIC: &[u8; 8] = b"BRDCKPT1";
/// Largest header accepted (the metrics of a very long run fit easily).
const MAX_HEADER: u64 = 256 << 20;

/// A metrics event worth keeping across a restart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Reported {
    /// A round's metrics.
    Round(RoundMetrics),
    /// A decentralized evaluation point.
    Gossip(GossipMetrics),
    /// A split-learning epoch.
    Split(crate::algorithms::split::SplitMetrics),
    /// A mutual-learning evaluation point.
    Mutual(crate::algorithms::mutual::MutualMetrics),
}

impl Reported {
    /// The event, if it is a metrics event.
    pub fn from_event(e: &Event) -> Option<Self> {
        match e {
            Event::Round(m) => Some(Self::Round(m.clone())),
            Event::Gossip(m) => Some(Self::Gossip(m.clone())),
            Event::Split(m) => Some(Self::Split(m.clone())),
            Event::Mutual(m) => Some(Self::Mutual(m.clone())),
            Event::Finished { .. } => None,
        }
    }

    /// Back to an event.
    pub fn into_event(self) -> Event {
        match self {
            Self::Round(m) => Event::Round(m),
            Self::Gossip(m) => Event::Gossip(m),
            Self::Split(m) => Event::Split(m),
            Self::Mutual(m) => Event::Mutual(m),
        }
    }
}

/// What a checkpoint holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    /// The node's state.
    pub state: NodeState,
    /// Metrics reported so far, with their wall-clock seconds.
    pub reported: Vec<(Reported, f64)>,
}

#[derive(Serialize, Deserialize)]
struct Header {
    meta: serde_json::Value,
    reported: Vec<(Reported, f64)>,
    tensors: Vec<(String, u64)>,
    #[serde(default)]
    blobs: Vec<(String, u64)>,
}

fn bad(path: &Path, why: impl std::fmt::Display) -> EngineError {
    EngineError::Setup(format!("checkpoint {} is unusable: {why}", path.display()))
}

impl Checkpoint {
    /// The file's bytes.
    pub fn encode(&self) -> Result<Vec<u8>, EngineError> {
        let header = Header {
            meta: self.state.meta.clone(),
            reported: self.reported.clone(),
            tensors: self
                .state
                .tensors
                .iter()
                .map(|(n, t)| (n.clone(), t.len() as u64))
                .collect(),
            blobs: self
                .state
                .blobs
                .iter()
                .map(|(n, b)| (n.clone(), b.len() as u64))
                .collect(),
        };
        let h = serde_json::to_vec(&header)
            .map_err(|e| EngineError::Setup(format!("cannot encode a checkpoint: {e}")))?;
        let data: usize = self
            .state
            .tensors
            .iter()
            .map(|(_, t)| 4 * t.len())
            .sum::<usize>()
            + self.state.blobs.iter().map(|(_, b)| b.len()).sum::<usize>();
        let mut out = Vec::with_capacity(16 + h.len() + data);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(h.len() as u64).to_le_bytes());
        out.extend_from_slice(&h);
        for (_, t) in &self.state.tensors {
            for v in t {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        for (_, b) in &self.state.blobs {
            out.extend_from_slice(b);
        }
        Ok(out)
    }

    /// Parses and validates a checkpoint file's bytes (`path` only names it in errors).
    pub fn decode(bytes: &[u8], path: &Path) -> Result<Self, EngineError> {
        if bytes.len() < 16 || &bytes[..8] != MAGIC {
            return Err(bad(path, "not a braid checkpoint"));
        }
        let mut n = [0u8; 8];
        n.copy_from_slice(&bytes[8..16]);
        let hlen = u64::from_le_bytes(n);
        if hlen > MAX_HEADER || hlen > (bytes.len() - 16) as u64 {
            return Err(bad(path, format!("header of {hlen} bytes does not fit")));
        }
        let hend = 16 + hlen as usize;
        let header: Header = serde_json::from_slice(&bytes[16..hend]).map_err(|e| bad(path, e))?;
        let mut pos = hend;
        let mut tensors = Vec::with_capacity(header.tensors.len());
        for (name, len) in header.tensors {
            let end = len
                .checked_mul(4)
                .and_then(|b| u64::try_from(pos).ok()?.checked_add(b))
                .filter(|&e| e <= bytes.len() as u64)
                .ok_or_else(|| bad(path, format!("{name:?} is truncated")))?
                as usize;
            let t: Vec<f32> = bytes[pos..end]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            pos = end;
            tensors.push((name, t));
        }
        let mut blobs = Vec::with_capacity(header.blobs.len());
        for (name, len) in header.blobs {
            let end = u64::try_from(pos)
                .ok()
                .and_then(|p| p.checked_add(len))
                .filter(|&e| e <= bytes.len() as u64)
                .ok_or_else(|| bad(path, format!("{name:?} is truncated")))?
                as usize;
            blobs.push((name, bytes[pos..end].to_vec()));
            pos = end;
        }
        if pos != bytes.len() {
            return Err(bad(path, format!("{} trailing bytes", bytes.len() - pos)));
        }
        Ok(Self {
            state: NodeState {
                meta: header.meta,
                tensors,
                blobs,
            },
            reported: header.reported,
        })
    }

    /// Writes the checkpoint to `path` atomically and durably ([`crate::report::write_atomic`]).
    pub fn save(&self, path: &Path) -> Result<(), EngineError> {
        if let Some(d) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(d).map_err(|e| {
                EngineError::Setup(format!("cannot write checkpoint {}: {e}", path.display()))
            })?;
        }
        crate::report::write_atomic(path, &self.encode()?).map_err(EngineError::Setup)
    }

    /// Reads a checkpoint written by [`Checkpoint::save`].
    pub fn load(path: &Path) -> Result<Self, EngineError> {
        let bytes = fs::read(path).map_err(|e| {
            EngineError::Setup(format!("cannot read checkpoint {}: {e}", path.display()))
        })?;
        Self::decode(&bytes, path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Checkpoint {
        Checkpoint {
            state: NodeState {
                meta: serde_json::json!({ "round": 3, "done": false }),
                tensors: vec![
                    ("params".into(), vec![1.0, -2.5, f32::MIN_POSITIVE]),
                    ("empty".into(), vec![]),
                ],
                blobs: vec![("optimizer".into(), vec![0, 255, 7])],
            },
            reported: vec![(
                Reported::Round(RoundMetrics {
                    round: 1,
                    accuracy: Some(0.5),
                    loss: None,
                    train_loss: 1.0,
                    clients: 2,
                    stragglers: 1,
                    samples: 10,
                    local_steps: 4,
                    bytes_up: 7,
                    bytes_down: 8,
                    epsilon: Some(1.5),
                    sim_time_s: Some(2.5),
                    staleness: None,
                }),
                0.25,
            )],
        }
    }

    #[test]
    fn round_trips_and_rejects_damage() {
        let c = sample();
        let bytes = c.encode().unwrap();
        let p = Path::new("x.ckpt");
        assert_eq!(Checkpoint::decode(&bytes, p).unwrap(), c);
        for cut in 0..bytes.len() {
            assert!(Checkpoint::decode(&bytes[..cut], p).is_err(), "cut {cut}");
        }
        let mut long = bytes.clone();
        long.push(0);
        assert!(Checkpoint::decode(&long, p).is_err());
        let mut huge = bytes;
        huge[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(Checkpoint::decode(&huge, p).is_err());
    }

    #[test]
    fn saves_atomically_over_an_older_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("n/state.ckpt");
        let mut c = sample();
        c.save(&p).unwrap();
        c.state.meta = serde_json::json!({ "round": 4 });
        c.save(&p).unwrap();
        assert_eq!(Checkpoint::load(&p).unwrap(), c);
        let leftovers: Vec<_> = fs::read_dir(dir.path().join("n")).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temp files left behind");
        assert!(Checkpoint::load(&dir.path().join("missing")).is_err());
    }
}
