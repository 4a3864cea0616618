//! The tamper-evident run log: an append-only, hash-chained, signed record per node.
//!
//! One line per entry: `<signature hex> <entry JSON>`. The JSON holds a sequence number, the
//! SHA-256 of the previous line (64 zeros for the first), the node id, the time (Unix
//! seconds), and what happened ([`LogEvent`]): joining (with the run's config hash and the
//! node's public key), every message sent (once acknowledged) and received (before it is
//! acknowledged) with its SHA-256, refusals, compute spent, metrics reported, the final model's
//! hash, leaving (a message sent gets a `sent` entry when handed to the network and a
//! `delivered` entry when acknowledged). The signature is the node's ed25519 signature over the JSON bytes exactly
//! as written. Each entry is one `write` call, so a killed process leaves whole entries; the
//! file is synced to disk at checkpoints and at exit.
//!
//! [`verify`] checks one log (parse, sequence, chain, signatures, one node, a join first and
//! its key matching the allow-list) and [`cross_check`] checks logs against each other: every
//! message one node says it sent, the receiver says it received, and the other way round. Any
//! edited, removed, reordered or forged entry breaks a signature, the chain or the sequence and
//! is reported with its position.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use braid_engine::wire::NodeId;
use libp2p::identity::{Keypair, PublicKey};
use libp2p::PeerId;
use serde::{Deserialize, Serialize};

use crate::identity::{hex, unhex};
use crate::NetError;

/// A SHA-256 in hex as its 32 bytes (`None` if it is not one).
pub fn hash_bytes(hex: &str) -> Option<[u8; 32]> {
    unhex(hex).and_then(|b| <[u8; 32]>::try_from(b).ok())
}

pub use braid_engine::accounting::{model_hash, sha256_hex};

/// The folder, beside a node's run log, holding copies of the messages it sent from which an
/// auditor replays training (named by their SHA-256; see `RuntimeOptions::keep_sent`).
pub const KEPT_DIR: &str = "sent";

/// Entries of a `compute` entry's `since` list that are not message hashes: the run's start,
/// a deadline, a message whose hash the runtime did not have, and the mark of a list cut at
/// its length limit.
pub mod since {
    /// The run's start.
    pub const START: &str = "start";
    /// A deadline passed.
    pub const DEADLINE: &str = "deadline";
    /// A message without a hash.
    pub const UNKNOWN: &str = "unknown";
    /// The list reached its limit; what followed is not listed.
    pub const TOO_MANY: &str = "too many";
}

/// The folder, beside a node's run log, holding its states around each training it logged,
/// for nodes that carry state between inputs (named by their SHA-256; see
/// `RuntimeOptions::keep_states`).
pub const STATES_DIR: &str = "states";

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What an entry records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum LogEvent {
    /// The node joined the run (always the first entry of a log; again after a restart).
    Join {
        /// SHA-256 of the run's configuration (the same on every node of a run).
        run: String,
        /// The node's libp2p peer id.
        peer_id: String,
        /// Its ed25519 public key (libp2p protobuf encoding, hex), which signs every entry.
        public_key: String,
        /// Restarted with `--resume`.
        resumed: bool,
    },
    /// A message handed to the network (its first attempt).
    Sent {
        /// Receiver.
        to: NodeId,
        /// Message kind.
        what: String,
        /// Encoded size.
        bytes: u64,
        /// SHA-256 of the encoding.
        hash: String,
    },
    /// A sent message the receiver acknowledged.
    Delivered {
        /// Receiver.
        to: NodeId,
        /// Message kind.
        what: String,
        /// SHA-256 of the encoding.
        hash: String,
        /// The receiver's run log as it acknowledged: its last entry's position and the
        /// SHA-256 of that line (`audit verify` requires the receiver's log to hold it).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        receiver_log: Option<(u64, String)>,
    },
    /// A message accepted from a participant (recorded before it is acknowledged).
    Received {
        /// Sender.
        from: NodeId,
        /// Message kind.
        what: String,
        /// Encoded size.
        bytes: u64,
        /// SHA-256 of the encoding.
        hash: String,
    },
    /// A connection or message refused.
    Refused {
        /// Who (a peer id or node id).
        from: String,
        /// Why.
        why: String,
    },
    /// Compute spent handling one input.
    Compute {
        /// The round (FedAvg) or step (dsgd) of the message that caused it, if any.
        round: Option<u64>,
        /// Training samples processed.
        train_samples: u64,
        /// Samples evaluated.
        eval_samples: u64,
        /// Floating-point operations.
        flops: u64,
        /// Seconds in the trainer.
        seconds: f64,
        /// Model hash before training (the parameters it started from), if it trained.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        model_before: Option<String>,
        /// Model hash after training.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        model_after: Option<String>,
        /// SHA-256 of the message that caused it (as in its `received` entry), if one did.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        input: Option<String>,
        /// The run's start caused it (the first input a node handles).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        start: bool,
        /// For nodes that carry state between inputs, when it trained: the SHA-256 of the
        /// node's whole state before the input and after it, each kept as a file of that name
        /// ([`STATES_DIR`]; the checkpoint format of the state alone).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        state_before: Option<String>,
        /// See `state_before`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        state_after: Option<String>,
        /// With the states: the inputs the node handled since its previous training (or its
        /// start), in order: message hashes, `"start"` or `"deadline"`. Replaying them from
        /// the previous training's `state_after` must give this one's `state_before`.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        since: Vec<String>,
    },
    /// Metrics the node reported (a FedAvg round, a dsgd evaluation point).
    Progress {
        /// Round or step.
        round: u64,
        /// Test accuracy reported then, if evaluated.
        accuracy: Option<f64>,
    },
    /// The run's final model, as this node computed it.
    Final {
        /// [`model_hash`] of its parameters.
        model_hash: String,
    },
    /// The result files this node wrote after the run (the evaluating node): the SHA-256 of
    /// their `manifest.json`, which lists every file's size and SHA-256, so the files are bound
    /// to this signed log.
    Results {
        /// SHA-256 (hex) of `manifest.json`.
        manifest: String,
    },
    /// A `[governance]` threshold was crossed: the node wrote a signed report
    /// ([`crate::threshold`]).
    Threshold {
        /// `flops`, `bytes` or `participants`.
        measure: String,
        /// The configured threshold.
        threshold: f64,
        /// The value that crossed it.
        value: f64,
        /// Where the report was written.
        file: String,
        /// SHA-256 (hex) of the report file.
        report: String,
    },
    /// An authorized halt was obeyed.
    Halted {
        /// Peer id of the key that signed the halt.
        by: String,
    },
    /// The node left the run.
    Leave {
        /// `finished`, `halted` or the error.
        reason: String,
    },
}

/// One entry as signed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Position in the log, from 0.
    pub seq: u64,
    /// SHA-256 of the previous line (64 zeros for the first).
    pub prev: String,
    /// The node that wrote it.
    pub node: NodeId,
    /// When, in seconds since the Unix epoch (this machine's clock).
    pub t: f64,
    /// What happened.
    #[serde(flatten)]
    pub event: LogEvent,
}

/// A node's open run log.
pub struct RunLog {
    path: PathBuf,
    file: File,
    key: Keypair,
    node: NodeId,
    seq: u64,
    prev: String,
}

impl RunLog {
    /// Opens `path` for appending as node `node` signing with `key`: a new log, or (after a
    /// restart) the existing one, whose chain continues after its last whole line.
    pub fn open(path: &Path, key: Keypair, node: NodeId) -> Result<Self, NetError> {
        let io = |e: std::io::Error| NetError::Io(format!("run log {}: {e}", path.display()));
        if let Some(d) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(d).map_err(io)?;
        }
        let (mut seq, mut prev) = (0, GENESIS.to_string());
        if path.exists() {
            let text = std::fs::read(path).map_err(io)?;
            // Only whole lines count: a torn last line (a crash mid-write) is cut off.
            let whole = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            if whole < text.len() {
                let f = OpenOptions::new().write(true).open(path).map_err(io)?;
                f.set_len(whole as u64).map_err(io)?;
            }
            for line in text[..whole]
                .split(|&b| b == b'\n')
                .filter(|l| !l.is_empty())
            {
                seq += 1;
                prev = sha256_hex(line);
            }
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io)?;
        Ok(Self {
            path: path.to_owned(),
            file,
            key,
            node,
            seq,
            prev,
        })
    }

    /// Appends one signed entry (one `write` call).
    pub fn append(&mut self, event: LogEvent) -> Result<(), NetError> {
        let entry = Entry {
            seq: self.seq,
            prev: self.prev.clone(),
            node: self.node,
            t: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
            event,
        };
        let json = serde_json::to_vec(&entry)
            .map_err(|e| NetError::Io(format!("run log: cannot encode an entry: {e}")))?;
        let sig = self
            .key
            .sign(&json)
            .map_err(|e| NetError::Key(format!("run log: cannot sign: {e}")))?;
        let mut line = hex(&sig).into_bytes();
        line.push(b' ');
        line.extend_from_slice(&json);
        let hash = sha256_hex(&line);
        line.push(b'\n');
        let io = |e: std::io::Error| NetError::Io(format!("run log {}: {e}", self.path.display()));
        let before = self.file.metadata().map_err(io)?.len();
        if let Err(e) = self.file.write_all(&line) {
            // Leave no torn entry behind: later entries must chain to the last whole one.
            let _ = self.file.set_len(before);
            return Err(io(e));
        }
        self.prev = hash;
        self.seq += 1;
        Ok(())
    }

    /// The last entry written: its position and the SHA-256 of its line (none yet: `None`).
    pub fn head(&self) -> Option<(u64, String)> {
        self.seq.checked_sub(1).map(|s| (s, self.prev.clone()))
    }

    /// Forces everything written so far to disk.
    pub fn sync(&mut self) -> Result<(), NetError> {
        self.file
            .sync_data()
            .map_err(|e| NetError::Io(format!("run log {}: {e}", self.path.display())))
    }
}

/// What a node's own earlier log holds that a restarted node carries on with.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct History {
    /// The compute its log counts.
    pub compute: braid_engine::accounting::Compute,
    /// Bytes it logged sending and receiving.
    pub bytes: (u64, u64),
    /// The thresholds it reported.
    pub reported: BTreeSet<String>,
}

/// The entries of a node's own log at `path`, read, not verified (the node's own file, or one
/// whose verification is not the point); an unreadable line ends the reading, and a missing
/// file reads as empty.
pub fn read_entries(path: &Path) -> Vec<Entry> {
    let Ok(text) = std::fs::read(path) else {
        return Vec::new();
    };
    text.split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map_while(|line| {
            let space = line.iter().position(|&b| b == b' ')?;
            serde_json::from_slice::<Entry>(&line[space + 1..]).ok()
        })
        .collect()
}

/// [`read_entries`] of run `run` only: the entries after a join of that run, joins included
/// (a directory reused for another run starts again).
pub fn run_entries(path: &Path, run: &str) -> Vec<Entry> {
    let mut ours = false;
    read_entries(path)
        .into_iter()
        .filter(|e| {
            if let LogEvent::Join { run: r, .. } = &e.event {
                ours = r == run;
            }
            ours
        })
        .collect()
}

/// The [`History`] of run `run` in the node's log at `path` ([`run_entries`]).
pub fn history(path: &Path, run: &str) -> History {
    let mut h = History::default();
    for entry in run_entries(path, run) {
        match entry.event {
            LogEvent::Compute {
                train_samples,
                eval_samples,
                flops,
                seconds,
                ..
            } => h.compute.add(&braid_engine::accounting::Compute {
                train_samples,
                eval_samples,
                flops,
                seconds,
            }),
            LogEvent::Sent { bytes, .. } => h.bytes.0 = h.bytes.0.saturating_add(bytes),
            LogEvent::Received { bytes, .. } => h.bytes.1 = h.bytes.1.saturating_add(bytes),
            LogEvent::Threshold { measure, .. } => {
                h.reported.insert(measure);
            }
            _ => {}
        }
    }
    h
}

/// What [`verify`] found in one log.
#[derive(Debug, Clone, Default)]
pub struct LogCheck {
    /// The node the log belongs to (from its first entry).
    pub node: Option<NodeId>,
    /// Entries that verified, in order (checking stops at the first broken one).
    pub entries: Vec<Entry>,
    /// Problems, each naming the entry's position (0-based line number).
    pub problems: Vec<String>,
    /// The last line is cut short (a crash while writing): the entries before it stand.
    pub torn_tail: bool,
    /// The SHA-256 of the last line that verified.
    pub head: Option<String>,
}

impl LogCheck {
    /// The SHA-256 of the line of entry `seq`, if it verified.
    pub fn line_hash(&self, seq: u64) -> Option<&str> {
        let i = usize::try_from(seq).ok()?;
        match self.entries.get(i + 1) {
            Some(next) => Some(next.prev.as_str()),
            None if i + 1 == self.entries.len() => self.head.as_deref(),
            None => None,
        }
    }
}

/// Every receiver's log against what its acknowledgements showed of it: a sender's
/// `delivered` entry names the receiver's last entry and its line's hash at that moment, so a
/// log cut before it, or rewritten up to it, is found even when its own key re-signs it.
pub fn check_witnessed(logs: &[(NodeId, &LogCheck)]) -> Vec<String> {
    let mut problems = Vec::new();
    for (sender, log) in logs {
        for e in &log.entries {
            let LogEvent::Delivered {
                to,
                receiver_log: Some((seq, head)),
                ..
            } = &e.event
            else {
                continue;
            };
            let Some((_, theirs)) = logs.iter().find(|(n, _)| n == to) else {
                continue;
            };
            if !theirs.problems.is_empty() {
                continue; // already reported where it broke
            }
            match theirs.line_hash(*seq) {
                Some(h) if h == head => {}
                Some(_) => problems.push(format!(
                    "node {to}'s log differs at entry {seq} from what it showed node {sender} when it acknowledged a message (node {sender}'s entry {}): it was rewritten",
                    e.seq
                )),
                None => problems.push(format!(
                    "node {to}'s log ends before entry {seq}, which it showed node {sender} when it acknowledged a message (node {sender}'s entry {}): entries were removed",
                    e.seq
                )),
            }
        }
    }
    problems
}

/// Checks one log's lines, sequence, chain and signatures. With `allowed`, the signing key
/// must belong to that peer (the node's entry in the run's allow-list).
pub fn verify(bytes: &[u8], allowed: Option<&dyn Fn(NodeId) -> Option<PeerId>>) -> LogCheck {
    let mut check = LogCheck::default();
    let whole = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    check.torn_tail = whole < bytes.len();
    let mut prev = GENESIS.to_string();
    let mut key: Option<PublicKey> = None;
    for (i, line) in bytes[..whole]
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .enumerate()
    {
        let fail = |why: String| format!("entry {i}: {why}");
        let Some(space) = line.iter().position(|&b| b == b' ') else {
            check.problems.push(fail("not a signed entry".into()));
            break;
        };
        let (sig, json) = (&line[..space], &line[space + 1..]);
        let Some(sig) = std::str::from_utf8(sig).ok().and_then(unhex) else {
            check.problems.push(fail("the signature is not hex".into()));
            break;
        };
        let entry: Entry = match serde_json::from_slice(json) {
            Ok(e) => e,
            Err(e) => {
                check.problems.push(fail(format!("unreadable entry ({e})")));
                break;
            }
        };
        if let LogEvent::Join {
            public_key,
            peer_id,
            ..
        } = &entry.event
        {
            let pk = unhex(public_key).and_then(|b| PublicKey::try_decode_protobuf(&b).ok());
            let Some(pk) = pk else {
                check
                    .problems
                    .push(fail("the join entry's public key is unreadable".into()));
                break;
            };
            if pk.to_peer_id().to_string() != *peer_id {
                check.problems.push(fail(
                    "the join entry's public key is not its peer id's".into(),
                ));
                break;
            }
            if let Some(k) = &key {
                if *k != pk {
                    check
                        .problems
                        .push(fail("a later join entry names another key".into()));
                    break;
                }
            }
            if let Some(lookup) = allowed {
                if lookup(entry.node) != Some(pk.to_peer_id()) {
                    check.problems.push(fail(format!(
                        "signed by {}, which is not node {}'s key in the allow-list",
                        pk.to_peer_id(),
                        entry.node
                    )));
                    break;
                }
            }
            key = Some(pk);
        }
        let Some(k) = &key else {
            check
                .problems
                .push(fail("the log does not start with a join entry".into()));
            break;
        };
        if !k.verify(json, &sig) {
            check.problems.push(fail(
                "the signature does not verify (the entry was edited or forged)".into(),
            ));
            break;
        }
        if entry.seq != i as u64 {
            check.problems.push(fail(format!(
                "sequence number {}, expected {i} (an entry was removed, added or moved)",
                entry.seq
            )));
            break;
        }
        if entry.prev != prev {
            check.problems.push(fail(
                "it does not chain to the entry before it (an entry was removed, added or moved)"
                    .into(),
            ));
            break;
        }
        match check.node {
            None => check.node = Some(entry.node),
            Some(n) if n != entry.node => {
                check.problems.push(fail(format!(
                    "written by node {}, not node {n}",
                    entry.node
                )));
                break;
            }
            Some(_) => {}
        }
        prev = sha256_hex(line);
        check.head = Some(prev.clone());
        check.entries.push(entry);
    }
    check
}

/// Checks the logs of a run against each other, in both directions, in a way that holds
/// even when nodes crash or halt between sending and acknowledging:
/// - every message a node records receiving, its sender records sending (nobody invents
///   messages, or loses the record of one it sent);
/// - every message a node records as delivered (acknowledged), its receiver records receiving
///   (nobody drops the record of a message it accepted).
///
/// A message sent but never acknowledged may or may not have arrived, so it is not checked.
/// Nodes without a log (never started, or the log is missing) are reported once.
pub fn cross_check(logs: &[(NodeId, &[Entry])]) -> Vec<String> {
    use std::collections::{BTreeMap, BTreeSet};
    let have: BTreeSet<NodeId> = logs.iter().map(|(n, _)| *n).collect();
    // (from, to, what, hash) -> (sent, delivered, received)
    type Flow = (NodeId, NodeId, String, String);
    let mut flows: BTreeMap<Flow, (u64, u64, u64)> = BTreeMap::new();
    for (node, entries) in logs {
        for e in entries.iter() {
            match &e.event {
                LogEvent::Sent { to, what, hash, .. } => {
                    flows
                        .entry((*node, *to, what.clone(), hash.clone()))
                        .or_default()
                        .0 += 1;
                }
                LogEvent::Delivered { to, what, hash, .. } => {
                    flows
                        .entry((*node, *to, what.clone(), hash.clone()))
                        .or_default()
                        .1 += 1;
                }
                LogEvent::Received {
                    from, what, hash, ..
                } => {
                    flows
                        .entry((*from, *node, what.clone(), hash.clone()))
                        .or_default()
                        .2 += 1;
                }
                _ => {}
            }
        }
    }
    let mut problems = Vec::new();
    let mut missing_logs = BTreeSet::new();
    // Presence, not counts: a retried delivery can be received twice while sent once.
    for ((from, to, what, hash), (sent, delivered, received)) in flows {
        let short = hash.get(..12).unwrap_or(&hash);
        if received > 0 && sent == 0 {
            if have.contains(&from) {
                problems.push(format!(
                    "node {to} says it received {received} {what} message(s) {short}... from node {from}, which records sending {sent}"
                ));
            } else {
                missing_logs.insert(from);
            }
        }
        if delivered > 0 && received == 0 {
            if have.contains(&to) {
                problems.push(format!(
                    "node {from} says it sent {delivered} {what} message(s) {short}... to node {to} and had them acknowledged; node {to} records receiving {received}"
                ));
            } else {
                missing_logs.insert(to);
            }
        }
    }
    for n in missing_logs {
        problems.push(format!(
            "node {n} exchanged messages with the others but has no log to check"
        ));
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_log(dir: &Path, key: &Keypair, node: NodeId, n: usize) -> PathBuf {
        let p = dir.join(format!("log-{node}"));
        let mut log = RunLog::open(&p, key.clone(), node).unwrap();
        log.append(LogEvent::Join {
            run: sha256_hex(b"config"),
            peer_id: key.public().to_peer_id().to_string(),
            public_key: hex(&key.public().encode_protobuf()),
            resumed: false,
        })
        .unwrap();
        for i in 0..n {
            log.append(LogEvent::Sent {
                to: 1 - node,
                what: "gossip".into(),
                bytes: 10,
                hash: sha256_hex(&[i as u8]),
            })
            .unwrap();
            log.append(LogEvent::Delivered {
                to: 1 - node,
                what: "gossip".into(),
                hash: sha256_hex(&[i as u8]),
                receiver_log: None,
            })
            .unwrap();
            log.append(LogEvent::Received {
                from: 1 - node,
                what: "gossip".into(),
                bytes: 10,
                hash: sha256_hex(&[i as u8]),
            })
            .unwrap();
        }
        log.append(LogEvent::Leave {
            reason: "finished".into(),
        })
        .unwrap();
        log.sync().unwrap();
        p
    }

    fn lines(bytes: &[u8]) -> Vec<Vec<u8>> {
        bytes
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| l.to_vec())
            .collect()
    }

    fn join(lines: &[Vec<u8>]) -> Vec<u8> {
        lines
            .iter()
            .flat_map(|l| l.iter().copied().chain([b'\n']))
            .collect()
    }

    #[test]
    fn a_log_cut_before_what_it_showed_a_sender_or_rewritten_up_to_it_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let (k0, k1) = (crate::identity::generate(), crate::identity::generate());
        let receiver = write_log(dir.path(), &k1, 1, 3);
        let bytes = std::fs::read(&receiver).unwrap();
        let rl = RunLog::open(&receiver, k1.clone(), 1).unwrap();
        let (seq, head) = rl.head().unwrap();
        assert_eq!(seq, 10, "join, 3 x 3 entries, leave");
        drop(rl);
        let p0 = write_log(dir.path(), &k0, 0, 0);
        let mut log = RunLog::open(&p0, k0.clone(), 0).unwrap();
        log.append(LogEvent::Delivered {
            to: 1,
            what: "gossip".into(),
            hash: sha256_hex(b"m"),
            receiver_log: Some((
                seq - 1,
                verify(&bytes, None).line_hash(seq - 1).unwrap().into(),
            )),
        })
        .unwrap();
        log.append(LogEvent::Delivered {
            to: 1,
            what: "gossip".into(),
            hash: sha256_hex(b"n"),
            receiver_log: Some((seq, head)),
        })
        .unwrap();
        drop(log);
        let sender = verify(&std::fs::read(&p0).unwrap(), None);
        assert!(sender.problems.is_empty() && sender.entries.len() == 4);
        let whole = verify(&bytes, None);
        assert!(check_witnessed(&[(0, &sender), (1, &whole)]).is_empty());
        // Its last entry removed and the log re-signed to end well: still found.
        let mut cut = lines(&bytes);
        cut.pop();
        std::fs::write(&receiver, join(&cut)).unwrap();
        let mut rl = RunLog::open(&receiver, k1.clone(), 1).unwrap();
        rl.append(LogEvent::Leave {
            reason: "finished".into(),
        })
        .unwrap();
        drop(rl);
        let resigned = verify(&std::fs::read(&receiver).unwrap(), None);
        assert!(resigned.problems.is_empty());
        let p = check_witnessed(&[(0, &sender), (1, &resigned)]);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].contains("differs at entry 10") && p[0].contains("rewritten"),
            "{p:?}"
        );
        std::fs::write(&receiver, join(&cut)).unwrap();
        let shorter = verify(&std::fs::read(&receiver).unwrap(), None);
        let p = check_witnessed(&[(0, &sender), (1, &shorter)]);
        assert!(
            p.len() == 1 && p[0].contains("ends before entry 10"),
            "{p:?}"
        );
    }

    #[test]
    fn a_log_verifies_and_every_kind_of_tampering_is_found_where_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let key = crate::identity::generate();
        let p = write_log(dir.path(), &key, 0, 3);
        let good = std::fs::read(&p).unwrap();
        let me = key.public().to_peer_id();
        let allow = move |n: NodeId| (n == 0).then_some(me);
        let c = verify(&good, Some(&allow));
        assert!(c.problems.is_empty(), "{:?}", c.problems);
        assert_eq!(c.entries.len(), 11);
        assert!(!c.torn_tail);
        let ls = lines(&good);

        // A changed byte in entry 3's JSON: its signature fails.
        let mut edited = ls.clone();
        let pos = edited[3].len() - 5;
        edited[3][pos] ^= 1;
        let c = verify(&join(&edited), None);
        assert!(c.problems[0].starts_with("entry 3:"), "{:?}", c.problems);
        assert_eq!(c.entries.len(), 3);

        // A removed entry: the next one no longer fits.
        let mut removed = ls.clone();
        removed.remove(4);
        let c = verify(&join(&removed), None);
        assert!(c.problems[0].starts_with("entry 4:"), "{:?}", c.problems);

        // Two entries swapped.
        let mut swapped = ls.clone();
        swapped.swap(2, 5);
        let c = verify(&join(&swapped), None);
        assert!(c.problems[0].starts_with("entry 2:"), "{:?}", c.problems);

        // An entry re-signed by another key (a forgery): its signature fails.
        let other = crate::identity::generate();
        let mut forged = ls.clone();
        let json = &forged[5][forged[5].iter().position(|&b| b == b' ').unwrap() + 1..];
        let mut line = hex(&other.sign(json).unwrap()).into_bytes();
        line.push(b' ');
        line.extend_from_slice(json);
        forged[5] = line;
        let c = verify(&join(&forged), None);
        assert!(c.problems[0].starts_with("entry 5:"), "{:?}", c.problems);

        // A whole log written by a key that is not the node's in the allow-list.
        let q = write_log(&dir.path().join("x"), &other, 0, 1);
        let c = verify(&std::fs::read(q).unwrap(), Some(&allow));
        assert!(
            c.problems[0].contains("not node 0's key"),
            "{:?}",
            c.problems
        );

        // A torn last line (crash mid-write): the prefix stands, and is reported as such.
        let mut torn = good.clone();
        torn.extend_from_slice(b"abc123 {\"seq\":8");
        let c = verify(&torn, None);
        assert!(c.problems.is_empty() && c.torn_tail && c.entries.len() == 11);

        // Reopening continues the chain after the last whole line, cutting the torn one off.
        std::fs::write(&p, &torn).unwrap();
        let mut log = RunLog::open(&p, key.clone(), 0).unwrap();
        log.append(LogEvent::Leave {
            reason: "again".into(),
        })
        .unwrap();
        let c = verify(&std::fs::read(&p).unwrap(), Some(&allow));
        assert!(c.problems.is_empty() && !c.torn_tail, "{:?}", c.problems);
        assert_eq!(c.entries.len(), 12);
    }

    #[test]
    fn cross_checking_finds_messages_one_side_does_not_record() {
        let dir = tempfile::tempdir().unwrap();
        let (k0, k1) = (crate::identity::generate(), crate::identity::generate());
        let a = verify(
            &std::fs::read(write_log(dir.path(), &k0, 0, 3)).unwrap(),
            None,
        );
        let b = verify(
            &std::fs::read(write_log(dir.path(), &k1, 1, 3)).unwrap(),
            None,
        );
        assert!(cross_check(&[(0, &a.entries), (1, &b.entries)]).is_empty());
        // Node 1 "forgets" receiving one message (its entry dropped before verification).
        let mut b_short = b.entries.clone();
        b_short.retain(
            |e| !matches!(&e.event, LogEvent::Received { hash, .. } if *hash == sha256_hex(&[1])),
        );
        let p = cross_check(&[(0, &a.entries), (1, &b_short)]);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].starts_with("node 0 says it sent 1 gossip"), "{p:?}");
        // Node 0 "forgets" sending one: node 1's record of receiving it has no sender.
        let mut a_short = a.entries.clone();
        a_short.retain(|e| {
            !matches!(&e.event, LogEvent::Sent { hash, .. } | LogEvent::Delivered { hash, .. } if *hash == sha256_hex(&[2]))
        });
        let p = cross_check(&[(0, &a_short), (1, &b.entries)]);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with("node 1 says it received 1 gossip"),
            "{p:?}"
        );
        // A retried delivery received twice but sent once: not a problem.
        let mut b_twice = b.entries.clone();
        let dup = b_twice
            .iter()
            .find(|e| matches!(e.event, LogEvent::Received { .. }))
            .cloned()
            .unwrap();
        b_twice.push(dup);
        assert!(cross_check(&[(0, &a.entries), (1, &b_twice)]).is_empty());
        // Sent but never acknowledged (the receiver crashed or halted first): not a problem.
        let mut a_unacked = a.entries.clone();
        a_unacked.retain(|e| !matches!(&e.event, LogEvent::Delivered { .. }));
        let mut b_lost = b.entries.clone();
        b_lost.retain(|e| !matches!(&e.event, LogEvent::Received { .. }));
        assert!(cross_check(&[(0, &a_unacked), (1, &b_lost)]).is_empty());
        // A node with no log at all is named once.
        let p = cross_check(&[(0, &a.entries)]);
        assert_eq!(
            p,
            vec!["node 1 exchanged messages with the others but has no log to check"]
        );
    }
}
