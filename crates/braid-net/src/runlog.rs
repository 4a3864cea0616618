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
#[path = "runlog_tests.rs"]
mod tests;
