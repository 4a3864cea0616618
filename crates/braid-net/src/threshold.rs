//! Reporting thresholds (`[governance]`): when a node's own compute or traffic crosses a
//! configured threshold, or node 0 starts a run with more participants than one, the node
//! writes a report signed with its key, logs the report's hash, and with `pause` stops.
//!
//! A report file is one line in the run log's form: the ed25519 signature (hex), a space and
//! the report's JSON exactly as signed. It names the node's public key, so anyone can check
//! it; `braid audit verify` also requires that key to be the one the node's log is signed
//! with, and the file's SHA-256 to be the one the log names.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use braid_engine::accounting::Compute;
use braid_engine::config::GovernanceConfig;
use braid_engine::wire::NodeId;
use libp2p::identity::{Keypair, PublicKey};
use serde::{Deserialize, Serialize};

use crate::identity::{hex, unhex};
use crate::runlog::{sha256_hex, History};
use crate::NetError;

/// The `kind` every report carries.
pub const REPORT_KIND: &str = "braid-threshold-report-v1";

/// What a report says: who crossed what, when, and everything the node had spent by then.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// [`REPORT_KIND`].
    pub kind: String,
    /// The run id (SHA-256 of the configuration).
    pub run: String,
    /// The reporting node.
    pub node: NodeId,
    /// Its peer id.
    pub peer_id: String,
    /// Its ed25519 public key (libp2p protobuf encoding, hex), which signs the report.
    pub public_key: String,
    /// `flops`, `bytes` or `participants`.
    pub measure: String,
    /// The configured threshold.
    pub threshold: f64,
    /// The value that crossed it.
    pub value: f64,
    /// When, in seconds since the Unix epoch.
    pub at: f64,
    /// FLOPs the node had spent (training and evaluation).
    pub flops: u64,
    /// Training samples it had processed.
    pub train_samples: u64,
    /// Bytes it had sent.
    pub bytes_sent: u64,
    /// Bytes it had received.
    pub bytes_received: u64,
    /// Participants of the run (`[network]`).
    pub participants: usize,
    /// The run's FLOPs as this node knew them: its own plus the latest totals the other
    /// nodes showed in their acknowledgements ([`Report::nodes_known`] of them).
    pub run_flops: u64,
    /// The run's bytes (sent plus received, per node), known the same way.
    pub run_bytes: u64,
    /// How many other nodes' totals the run figures include.
    pub nodes_known: usize,
    /// The node stops until the report is approved.
    pub pause: bool,
}

/// A node's thresholds and what it has reported so far.
#[derive(Debug)]
pub struct Governor {
    config: GovernanceConfig,
    dir: PathBuf,
    run: String,
    node: NodeId,
    key: Keypair,
    participants: usize,
    /// Measures already reported (from this process or an earlier one's log).
    reported: BTreeSet<String>,
    /// What the node has spent: from earlier processes (its log) plus this one's.
    compute: Compute,
    traffic: (u64, u64),
    earlier: History,
    /// The latest totals (FLOPs, bytes) each other node showed in its acknowledgements.
    known: std::collections::BTreeMap<NodeId, (u64, u64)>,
    /// With `pause`: why the node stopped (the first crossing), for its leave entry.
    paused: Option<String>,
}

/// A report written: where, the SHA-256 of the file, and whether the node is to pause.
#[derive(Debug, Clone)]
pub struct Written {
    /// The file.
    pub path: PathBuf,
    /// SHA-256 (hex) of its bytes.
    pub hash: String,
    /// What crossed.
    pub report: Report,
}

impl Governor {
    /// Thresholds `config` for node `node` of run `run` (of `participants`), reporting to
    /// `dir`; `earlier` is what its log already counts and reports.
    pub fn new(
        config: GovernanceConfig, dir: PathBuf, run: String, node: NodeId, key: Keypair,
        participants: usize, earlier: History,
    ) -> Self {
        Self {
            config,
            dir,
            run,
            node,
            key,
            participants,
            reported: earlier.reported.clone(),
            compute: earlier.compute,
            traffic: earlier.bytes,
            earlier,
            known: std::collections::BTreeMap::new(),
            paused: None,
        }
    }

    /// This node's totals, for its acknowledgements: FLOPs, and bytes sent plus received.
    pub fn totals(&self) -> (u64, u64) {
        (
            self.compute.flops,
            self.traffic.0.saturating_add(self.traffic.1),
        )
    }

    /// Node `node`'s totals as its acknowledgement showed them; node 0 checks the run's.
    pub fn set_known(
        &mut self, node: NodeId, flops: u64, bytes: u64,
    ) -> Result<Vec<Written>, NetError> {
        let e = self.known.entry(node).or_default();
        *e = (e.0.max(flops), e.1.max(bytes));
        self.check_run()
    }

    /// The run's totals as this node knows them: its own plus what the others showed.
    fn run_totals(&self) -> (u64, u64) {
        self.known.values().fold(self.totals(), |(f, b), (kf, kb)| {
            (f.saturating_add(*kf), b.saturating_add(*kb))
        })
    }

    /// Node 0 only: the run-wide thresholds.
    fn check_run(&mut self) -> Result<Vec<Written>, NetError> {
        if self.node != 0 {
            return Ok(Vec::new());
        }
        let (flops, bytes) = self.run_totals();
        let mut out = Vec::new();
        out.extend(self.cross("run-flops", self.config.report_run_flops, flops as f64)?);
        out.extend(self.cross("run-bytes", self.config.report_run_bytes, bytes as f64)?);
        Ok(out)
    }

    /// With `pause`, after a crossing: why the node stopped.
    pub fn paused(&self) -> Option<&str> {
        self.paused.as_deref()
    }

    /// The compute this process has spent so far (its whole total: `compute`).
    pub fn set_compute(&mut self, compute: &Compute) -> Result<Vec<Written>, NetError> {
        self.compute = self.earlier.compute;
        self.compute.add(compute);
        let flops = self.compute.flops as f64;
        let mut out: Vec<Written> = self
            .cross("flops", self.config.report_flops, flops)?
            .into_iter()
            .collect();
        out.extend(self.check_run()?);
        Ok(out)
    }

    /// The bytes this process has sent and received so far.
    pub fn set_traffic(&mut self, sent: u64, received: u64) -> Result<Vec<Written>, NetError> {
        let (s0, r0) = self.earlier.bytes;
        self.traffic = (s0.saturating_add(sent), r0.saturating_add(received));
        let (sent, received) = self.traffic;
        let bytes = sent.saturating_add(received) as f64;
        let mut out: Vec<Written> = self
            .cross("bytes", self.config.report_bytes, bytes)?
            .into_iter()
            .collect();
        out.extend(self.check_run()?);
        Ok(out)
    }

    /// At start, node 0 only: the run's participants.
    pub fn at_start(&mut self) -> Result<Option<Written>, NetError> {
        if self.node != 0 {
            return Ok(None);
        }
        let n = self.participants as f64;
        self.cross(
            "participants",
            self.config.report_participants.map(|p| p as f64),
            n,
        )
    }

    fn cross(
        &mut self, measure: &str, threshold: Option<f64>, value: f64,
    ) -> Result<Option<Written>, NetError> {
        let Some(threshold) = threshold else {
            return Ok(None);
        };
        if value <= threshold || self.reported.contains(measure) {
            return Ok(None);
        }
        self.reported.insert(measure.to_string());
        let public = self.key.public();
        let report = Report {
            kind: REPORT_KIND.into(),
            run: self.run.clone(),
            node: self.node,
            peer_id: public.to_peer_id().to_string(),
            public_key: hex(&public.encode_protobuf()),
            measure: measure.into(),
            threshold,
            value,
            at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
            flops: self.compute.flops,
            train_samples: self.compute.train_samples,
            bytes_sent: self.traffic.0,
            bytes_received: self.traffic.1,
            participants: self.participants,
            run_flops: self.run_totals().0,
            run_bytes: self.run_totals().1,
            nodes_known: self.known.len(),
            pause: self.config.pause,
        };
        let (path, hash) = write(&self.dir, &self.key, &report)?;
        if report.pause {
            self.paused.get_or_insert_with(|| {
                format!(
                    "paused: the {measure} threshold was crossed (report {}); continue after braid approve",
                    path.display()
                )
            });
        }
        Ok(Some(Written { path, hash, report }))
    }
}

/// The file name of node `node`'s report on `measure` in run `run` (its first 12 hex
/// digits: runs sharing a `report_dir` keep their own reports).
pub fn file_name(node: NodeId, measure: &str, run: &str) -> String {
    format!(
        "threshold-{measure}-node-{node}-{}.report",
        run.get(..12).unwrap_or(run)
    )
}

/// The largest report or approval file read (they are a few hundred bytes).
pub const MAX_FILE_BYTES: u64 = 1 << 16;

/// Reads a report or approval file, refusing anything but a regular file of at most
/// [`MAX_FILE_BYTES`].
pub fn read_file(path: &Path) -> Result<Vec<u8>, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if !meta.is_file() || meta.len() > MAX_FILE_BYTES {
        return Err(format!(
            "{}: not a report or approval (a regular file of at most {MAX_FILE_BYTES} bytes)",
            path.display()
        ));
    }
    std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// The copy of a logged report that hashes as logged: where the node wrote it (`file`), else
/// beside its log (`log`).
pub fn find_report(
    log: &Path, file: &str, node: NodeId, measure: &str, run: &str, hash: &str,
) -> Result<(PathBuf, Vec<u8>), String> {
    let beside = log.with_file_name(file_name(node, measure, run));
    let mut why = Vec::new();
    for p in [PathBuf::from(file), beside] {
        match read_file(&p) {
            Ok(b) if sha256_hex(&b) == hash => return Ok((p, b)),
            Ok(_) => why.push(format!("{} is not the file the log names", p.display())),
            Err(e) => why.push(e),
        }
    }
    Err(why.join("; "))
}

/// Signs `report` with `key` and writes it, atomically, into `dir`; returns the file and the
/// SHA-256 of its bytes.
pub fn write(dir: &Path, key: &Keypair, report: &Report) -> Result<(PathBuf, String), NetError> {
    let bytes = signed_line(report, key, "a threshold report")?;
    std::fs::create_dir_all(dir)
        .map_err(|e| NetError::Io(format!("cannot create {}: {e}", dir.display())))?;
    let path = dir.join(file_name(report.node, &report.measure, &report.run));
    braid_engine::report::write_atomic(&path, &bytes).map_err(NetError::Io)?;
    Ok((path, sha256_hex(&bytes)))
}

/// A signed line (the run log's form: signature in hex, a space, the JSON as signed) as the
/// signature's bytes and the JSON.
fn split_signed(bytes: &[u8]) -> Result<(Vec<u8>, &[u8]), String> {
    let line = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    let space = line
        .iter()
        .position(|&b| b == b' ')
        .ok_or("not a signed line (signature, space, JSON)")?;
    let sig = std::str::from_utf8(&line[..space])
        .ok()
        .and_then(unhex)
        .ok_or("the signature is not hex")?;
    Ok((sig, &line[space + 1..]))
}

/// Reads a report file and checks its signature against the key it names; returns the report
/// and that key.
pub fn read(bytes: &[u8]) -> Result<(Report, PublicKey), String> {
    let (sig, json) = split_signed(bytes)?;
    let report: Report =
        serde_json::from_slice(json).map_err(|e| format!("unreadable report ({e})"))?;
    if report.kind != REPORT_KIND {
        return Err(format!("not a {REPORT_KIND} (kind {:?})", report.kind));
    }
    let key = unhex(&report.public_key)
        .and_then(|b| PublicKey::try_decode_protobuf(&b).ok())
        .ok_or("the report's public key is unreadable")?;
    if key.to_peer_id().to_string() != report.peer_id {
        return Err("the report's public key is not its peer id's".into());
    }
    if !key.verify(json, &sig) {
        return Err("the signature does not verify".into());
    }
    Ok((report, key))
}

/// What an approval signs: that the report of this SHA-256 may be continued past.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Approval {
    /// `braid-continue-v1`.
    pub kind: String,
    /// SHA-256 (hex) of the approved report file.
    pub report: String,
    /// The approver's public key (libp2p protobuf encoding, hex).
    pub public_key: String,
}

const APPROVAL_KIND: &str = "braid-continue-v1";

/// Where the approval of the report at `report` is kept: beside it, `.approval` appended.
pub fn approval_path(report: &Path) -> PathBuf {
    let mut p = report.as_os_str().to_owned();
    p.push(".approval");
    PathBuf::from(p)
}

/// Signs an approval of the report whose bytes are `report` with `key` (`braid approve`): one
/// line, the signature (hex), a space and the approval's JSON.
pub fn approve(report: &[u8], key: &Keypair) -> Result<Vec<u8>, NetError> {
    read(report).map_err(|e| NetError::Config(format!("not a threshold report: {e}")))?;
    let approval = Approval {
        kind: APPROVAL_KIND.into(),
        report: sha256_hex(report),
        public_key: hex(&key.public().encode_protobuf()),
    };
    signed_line(&approval, key, "an approval")
}

/// `value` as a signed line (the run log's form: signature in hex, a space, the JSON as
/// signed, a newline); `what` names it in errors.
fn signed_line<T: Serialize>(value: &T, key: &Keypair, what: &str) -> Result<Vec<u8>, NetError> {
    let json = serde_json::to_vec(value)
        .map_err(|e| NetError::Io(format!("cannot encode {what}: {e}")))?;
    let sig = key
        .sign(&json)
        .map_err(|e| NetError::Key(format!("cannot sign {what}: {e}")))?;
    let mut bytes = hex(&sig).into_bytes();
    bytes.push(b' ');
    bytes.extend_from_slice(&json);
    bytes.push(b'\n');
    Ok(bytes)
}

/// Checks an approval of the report of SHA-256 `report`: its signature, and that its signer is
/// one of `authorized` (`network.halt_keys`). Returns the signer.
pub fn check_approval(
    bytes: &[u8], report: &str, authorized: &[libp2p::PeerId],
) -> Result<libp2p::PeerId, String> {
    let (sig, json) = split_signed(bytes)?;
    let a: Approval =
        serde_json::from_slice(json).map_err(|e| format!("unreadable approval ({e})"))?;
    let key = unhex(&a.public_key)
        .and_then(|b| PublicKey::try_decode_protobuf(&b).ok())
        .ok_or("the approver's key is unreadable")?;
    let who = key.to_peer_id();
    if a.kind != APPROVAL_KIND || a.report != report {
        return Err("it approves another report".into());
    }
    if !key.verify(json, &sig) {
        return Err(format!("the signature by {who} does not verify"));
    }
    if !authorized.contains(&who) {
        return Err(format!(
            "signed by {who}, which is not in network.halt_keys"
        ));
    }
    Ok(who)
}

/// The reports with `pause` in the node's log at `log` that lack a valid approval by one of
/// `authorized`, each as a line saying what to do: a node resumes only when this is empty.
pub fn unapproved(log: &Path, run: &str, authorized: &[libp2p::PeerId]) -> Vec<String> {
    let mut missing = Vec::new();
    for entry in crate::runlog::run_entries(log, run) {
        let crate::runlog::LogEvent::Threshold {
            measure,
            file,
            report,
            ..
        } = entry.event
        else {
            continue;
        };
        // A report that cannot be found as logged counts as one that paused.
        let found = find_report(log, &file, entry.node, &measure, run, &report);
        let path = found
            .as_ref()
            .map_or_else(|_| PathBuf::from(&file), |(p, _)| p.clone());
        let pauses = found
            .as_ref()
            .ok()
            .and_then(|(_, b)| read(b).ok())
            .is_none_or(|(r, _)| r.pause);
        if !pauses {
            continue;
        }
        let approval = approval_path(&path);
        let checked = read_file(&approval)
            .map_err(|e| format!("no approval ({e})"))
            .and_then(|b| check_approval(&b, &report, authorized));
        if let Err(why) = checked {
            missing.push(format!(
                "paused at the {measure} threshold and not approved: {why}; an authorized key approves with `braid approve {} --key KEY`",
                path.display()
            ));
        }
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;

    fn governor(dir: &Path, config: GovernanceConfig) -> Governor {
        Governor::new(
            config,
            dir.to_owned(),
            "run".into(),
            0,
            Keypair::generate_ed25519(),
            12,
            History::default(),
        )
    }

    #[test]
    fn a_crossing_writes_one_signed_report_that_reads_back_and_a_changed_byte_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let mut g = governor(
            dir.path(),
            GovernanceConfig {
                report_flops: Some(1000.0),
                report_participants: Some(10),
                ..Default::default()
            },
        );
        let p = g.at_start().unwrap().expect("12 participants > 10");
        assert_eq!(p.report.nodes_known, 0);
        assert_eq!(p.report.measure, "participants");
        let spent = |flops| Compute {
            flops,
            ..Default::default()
        };
        assert!(g.set_compute(&spent(1000)).unwrap().is_empty(), "not above");
        let w = g.set_compute(&spent(1001)).unwrap().pop().expect("crossed");
        assert!(
            g.set_compute(&spent(5000)).unwrap().is_empty(),
            "reported once"
        );
        assert!(
            g.set_traffic(1 << 40, 0).unwrap().is_empty(),
            "no bytes threshold"
        );
        let bytes = std::fs::read(&w.path).unwrap();
        assert_eq!(sha256_hex(&bytes), w.hash);
        let (r, _) = read(&bytes).unwrap();
        assert_eq!(
            (r.measure.as_str(), r.value, r.flops),
            ("flops", 1001.0, 1001)
        );
        let mut changed = bytes.clone();
        let at = changed.len() - 3;
        changed[at] ^= 1;
        assert!(read(&changed).is_err());

        // Approval: only by an authorized key, only of this report.
        let boss = Keypair::generate_ed25519();
        let other = Keypair::generate_ed25519();
        let ok = approve(&bytes, &boss).unwrap();
        let allowed = [boss.public().to_peer_id()];
        assert_eq!(check_approval(&ok, &w.hash, &allowed), Ok(allowed[0]));
        let e = check_approval(&approve(&bytes, &other).unwrap(), &w.hash, &allowed).unwrap_err();
        assert!(e.contains("not in network.halt_keys"), "{e}");
        let e = check_approval(&ok, &p.hash, &allowed).unwrap_err();
        assert!(e.contains("another report"), "{e}");
        let mut forged = ok.clone();
        let at = forged.len() - 4;
        forged[at] ^= 1;
        assert!(check_approval(&forged, &w.hash, &allowed).is_err());
        assert!(approve(b"not a report", &boss).is_err());
    }

    #[test]
    fn node_0_reports_the_run_once_what_the_others_showed_it_crosses_the_run_threshold() {
        let dir = tempfile::tempdir().unwrap();
        let mut g = governor(
            dir.path(),
            GovernanceConfig {
                report_run_flops: Some(1000.0),
                ..Default::default()
            },
        );
        let own = Compute {
            flops: 300,
            ..Default::default()
        };
        assert!(g.set_compute(&own).unwrap().is_empty());
        assert!(g.set_known(1, 400, 0).unwrap().is_empty());
        // An older acknowledgement does not lower what node 1 showed.
        assert!(g.set_known(1, 100, 0).unwrap().is_empty());
        let w = g
            .set_known(2, 301, 0)
            .unwrap()
            .pop()
            .expect("300 + 400 + 301 > 1000");
        assert_eq!(w.report.measure, "run-flops");
        assert_eq!((w.report.run_flops, w.report.nodes_known), (1001, 2));
        assert!(
            g.set_known(3, 1 << 30, 0).unwrap().is_empty(),
            "reported once"
        );
    }

    #[test]
    fn what_an_earlier_process_spent_counts_and_an_earlier_report_is_not_repeated() {
        let dir = tempfile::tempdir().unwrap();
        let config = GovernanceConfig {
            report_flops: Some(1000.0),
            report_bytes: Some(1000.0),
            ..Default::default()
        };
        let earlier = History {
            compute: Compute {
                flops: 900,
                ..Default::default()
            },
            bytes: (600, 300),
            reported: BTreeSet::new(),
        };
        let new = |earlier: History| {
            Governor::new(
                config.clone(),
                dir.path().to_owned(),
                "run".into(),
                3,
                Keypair::generate_ed25519(),
                4,
                earlier,
            )
        };
        let more = Compute {
            flops: 200,
            ..Default::default()
        };
        let mut g = new(earlier.clone());
        assert_eq!(g.set_compute(&more).unwrap().len(), 1);
        let w = g
            .set_traffic(50, 60)
            .unwrap()
            .pop()
            .expect("900 + 110 bytes");
        assert_eq!((w.report.bytes_sent, w.report.bytes_received), (650, 360));
        let mut again = new(History {
            reported: ["flops".to_string(), "bytes".to_string()].into(),
            ..earlier
        });
        assert!(again.set_compute(&more).unwrap().is_empty());
        assert!(again.set_traffic(50, 60).unwrap().is_empty());
    }
}
