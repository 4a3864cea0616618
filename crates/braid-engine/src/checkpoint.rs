//! Checkpoints of a running node: its durable state plus the metrics it has reported.
//!
//! One file, written atomically (temp file, fsync, rename, fsync of the directory), so a crash
//! at any moment leaves either the previous checkpoint or the new one, never a torn file:
//! `BRDCKPT1`, an 8-byte little-endian header length, a JSON header (metadata, metrics so far,
//! names and lengths of the vectors and byte strings), then the vectors as little-endian f32,
//! then the byte strings. Loading checks every length against the file before using anything.

use std::fs;
use std::path::Path;

use braid_core::bytes::{Reader, Writer};
use serde::{Deserialize, Serialize};

use crate::node::{EngineError, EngineResult, NodeState};

/// The file's first bytes. Version 2: the metrics rows are the algorithm's own type (version
/// 1 tagged them with one of four built-in kinds).
const MAGIC: &[u8; 8] = b"BRDCKPT2";
/// Largest header accepted (the metrics of a very long run fit easily).
const MAX_HEADER: u64 = 256 << 20;

/// What a checkpoint holds, for a node whose algorithm reports rows `R`.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint<R> {
    /// The node's state.
    pub state: NodeState,
    /// Metrics reported so far, with their wall-clock seconds.
    pub reported: Vec<(R, f64)>,
    /// The run it belongs to (its configuration hash), so a resume can refuse another run's
    /// checkpoint; `None` in checkpoints of a braid that did not record it.
    pub run: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct Header<R> {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    run: Option<String>,
    meta: serde_json::Value,
    reported: Vec<(R, f64)>,
    tensors: Vec<(String, u64)>,
    #[serde(default)]
    blobs: Vec<(String, u64)>,
}

fn bad(path: &Path, why: impl std::fmt::Display) -> EngineError {
    EngineError::Checkpoint(format!("checkpoint {} is unusable: {why}", path.display()))
}

impl<R: Serialize + serde::de::DeserializeOwned + Clone> Checkpoint<R> {
    /// The file's bytes.
    pub fn encode(&self) -> EngineResult<Vec<u8>> {
        let header = Header {
            run: self.run.clone(),
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
            .map_err(|e| EngineError::Checkpoint(format!("cannot encode a checkpoint: {e}")))?;
        let data: usize = self
            .state
            .tensors
            .iter()
            .map(|(_, t)| 4 * t.len())
            .sum::<usize>()
            + self.state.blobs.iter().map(|(_, b)| b.len()).sum::<usize>();
        let mut out = Writer::with_capacity(16 + h.len() + data);
        out.raw(MAGIC);
        out.u64(h.len() as u64);
        out.raw(&h);
        for (_, t) in &self.state.tensors {
            out.f32s(t);
        }
        for (_, b) in &self.state.blobs {
            out.raw(b);
        }
        Ok(out.into_vec())
    }

    /// Parses and validates a checkpoint file's bytes (`path` only names it in errors).
    pub fn decode(bytes: &[u8], path: &Path) -> EngineResult<Self> {
        if bytes.len() < 16 || &bytes[..8] != MAGIC {
            return Err(bad(
                path,
                "not a braid checkpoint (or one written by an older braid)",
            ));
        }
        let mut r = Reader::new(&bytes[8..]);
        let hlen = r.u64("header length").map_err(|e| bad(path, e))?;
        if hlen > MAX_HEADER || hlen > r.remaining() as u64 {
            return Err(bad(path, format!("header of {hlen} bytes does not fit")));
        }
        let header: Header<R> =
            serde_json::from_slice(r.take(hlen as usize, "header").map_err(|e| bad(path, e))?)
                .map_err(|e| bad(path, e))?;
        let truncated = |name: &str| bad(path, format!("{name:?} is truncated"));
        let mut tensors = Vec::with_capacity(header.tensors.len());
        for (name, len) in header.tensors {
            let n = usize::try_from(len)
                .ok()
                .filter(|n| n.checked_mul(4).is_some_and(|b| b <= r.remaining()))
                .ok_or_else(|| truncated(&name))?;
            let t = r.f32s(n, "tensor").map_err(|_| truncated(&name))?;
            tensors.push((name, t));
        }
        let mut blobs = Vec::with_capacity(header.blobs.len());
        for (name, len) in header.blobs {
            let n = usize::try_from(len)
                .ok()
                .filter(|&n| n <= r.remaining())
                .ok_or_else(|| truncated(&name))?;
            let b = r.take(n, "blob").map_err(|_| truncated(&name))?.to_vec();
            blobs.push((name, b));
        }
        if r.remaining() > 0 {
            return Err(bad(path, format!("{} trailing bytes", r.remaining())));
        }
        Ok(Self {
            state: NodeState {
                meta: header.meta,
                tensors,
                blobs,
            },
            reported: header.reported,
            run: header.run,
        })
    }

    /// Writes the checkpoint to `path` atomically and durably ([`crate::report::write_atomic`]).
    pub fn save(&self, path: &Path) -> EngineResult {
        if let Some(d) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(d).map_err(|e| {
                EngineError::Checkpoint(format!("cannot write checkpoint {}: {e}", path.display()))
            })?;
        }
        crate::report::write_atomic(path, &self.encode()?).map_err(EngineError::Checkpoint)
    }

    /// Reads a checkpoint written by [`Checkpoint::save`].
    pub fn load(path: &Path) -> EngineResult<Self> {
        let bytes = fs::read(path).map_err(|e| {
            EngineError::Checkpoint(format!("cannot read checkpoint {}: {e}", path.display()))
        })?;
        Self::decode(&bytes, path)
    }
}

/// A node's state alone in the checkpoint format (no metrics, no run id): the bytes an audit
/// keeps and names by their SHA-256, the same for the same state on every machine.
pub fn encode_state(state: NodeState) -> EngineResult<Vec<u8>> {
    Checkpoint::<serde_json::Value> {
        state,
        reported: Vec::new(),
        run: None,
    }
    .encode()
}

/// Reads what [`encode_state`] wrote (`path` only names it in errors).
pub fn decode_state(bytes: &[u8], path: &Path) -> EngineResult<NodeState> {
    Ok(Checkpoint::<serde_json::Value>::decode(bytes, path)?.state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algorithms::fedavg::RoundMetrics;

    fn sample() -> Checkpoint<RoundMetrics> {
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
                RoundMetrics {
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
                },
                0.25,
            )],
            run: Some("ab12".into()),
        }
    }

    #[test]
    fn round_trips_and_rejects_damage() {
        let c = sample();
        let bytes = c.encode().unwrap();
        let p = Path::new("x.ckpt");
        assert_eq!(Checkpoint::<RoundMetrics>::decode(&bytes, p).unwrap(), c);
        for cut in 0..bytes.len() {
            assert!(
                Checkpoint::<RoundMetrics>::decode(&bytes[..cut], p).is_err(),
                "cut {cut}"
            );
        }
        let mut long = bytes.clone();
        long.push(0);
        assert!(Checkpoint::<RoundMetrics>::decode(&long, p).is_err());
        let mut huge = bytes;
        huge[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(Checkpoint::<RoundMetrics>::decode(&huge, p).is_err());
    }

    #[test]
    fn saves_atomically_over_an_older_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("n/state.ckpt");
        let mut c = sample();
        c.save(&p).unwrap();
        c.state.meta = serde_json::json!({ "round": 4 });
        c.save(&p).unwrap();
        assert_eq!(Checkpoint::<RoundMetrics>::load(&p).unwrap(), c);
        let leftovers: Vec<_> = fs::read_dir(dir.path().join("n")).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temp files left behind");
        assert!(Checkpoint::<RoundMetrics>::load(&dir.path().join("missing")).is_err());
    }
}
