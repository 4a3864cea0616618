//! Runs one braid node in this process over libp2p.
//!
//! Two threads of control:
//! - the node thread owns the algorithm's node (a [`WireNode`]: any algorithm's node, its
//!   protocol erased to bytes, with its trainer); it handles one
//!   message or deadline at a time, exactly as the simulator would, so training never blocks
//!   the network;
//! - the network task (tokio) owns the libp2p swarm: it sends what the node sends, receives
//!   and checks what arrives, retries deliveries to participants that are not reachable yet
//!   (or have restarted), and keeps dialing participants whose address is known.
//!
//! A message is acknowledged only once the node has handled it, written the checkpoint that
//! holds its effect and handed over what it made the node send: a node killed before then
//! has not acknowledged it, so its sender delivers it again to the resumed node (state
//! machines ignore or refuse a second copy of what they already hold).
//!
//! Stopping: SIGINT and SIGTERM stop a node the way an authorized halt does, on this node
//! only (the step in progress is finished or abandoned, the checkpoint written, `leave` logged
//! with the signal, the log flushed, and the process ends normally); a second SIGINT ends it
//! at once (repeated SIGTERMs are one request). A node that hears from no participant for [`RuntimeOptions::idle_timeout`] stops
//! the same way: its coordinator or peers are gone.
//!
//! Admission: only the run's participants may connect (libp2p's allow-list, checked after the
//! Noise handshake has proved the peer holds its key); anyone else is refused and logged.
//! A message that fails to decode, or that the node rejects, is logged and dropped; the run
//! goes on.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use braid_engine::accounting::Compute;
use braid_engine::checkpoint::Checkpoint;
use braid_engine::node::{EngineError, NodeState};
use braid_engine::transport::NodeTraffic;
use braid_engine::wire::NodeId;
use braid_engine::wire_node::{Outgoing as Encoded, WireEvent, WireInput, WireNode};
use libp2p::identity::Keypair;
use libp2p::request_response;
use libp2p::swarm::NetworkBehaviour;
use libp2p::{allow_block_list, identify, Multiaddr, PeerId};
use tokio::sync::mpsc as tokio_mpsc;
use tracing::{info, warn};

use crate::codec::{Ack, FrameCodec};
use crate::roster::Roster;
use crate::runlog::{model_hash, since, LogEvent, RunLog};
use crate::NetError;

mod network;
use network::network_loop;
pub(crate) use network::tcp_swarm;

/// How a node process talks to the network.
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    /// Addresses to listen on, e.g. `/ip4/0.0.0.0/tcp/4100`.
    pub listen: Vec<Multiaddr>,
    /// Largest message accepted, in bytes.
    pub max_message_bytes: u64,
    /// Time allowed to deliver and acknowledge one message.
    pub request_timeout: Duration,
    /// How long to keep retrying a message to an unreachable participant.
    pub retry_for: Duration,
    /// Where the node's checkpoint is written after every change of its durable state (for
    /// nodes that keep one: the FedAvg server after each round).
    pub checkpoint: Option<PathBuf>,
    /// Continue from the checkpoint instead of starting fresh (nodes without durable state
    /// simply start; they rejoin from the messages they receive).
    pub resume: bool,
    /// Where to keep this node's signed run log (see [`crate::runlog`]).
    pub run_log: Option<PathBuf>,
    /// The run's configuration hash (SHA-256, hex): recorded in the run log, and the run a
    /// halt must name. Without it the node cannot be halted.
    pub run_id: Option<String>,
    /// Stop (as on SIGTERM) after this long without a message or acknowledgement from any
    /// participant; `None`: wait for ever.
    pub idle_timeout: Option<Duration>,
    /// Keep a copy of each sent message of these kinds, for `braid audit replay`.
    pub keep_sent: Option<KeepSent>,
    /// Keep the node's state before and after each input it trained on, in this directory,
    /// and log their hashes (nodes that carry state between inputs; needs a run log), for
    /// `braid audit replay`.
    pub keep_states: Option<PathBuf>,
    /// `[governance]` reporting thresholds, and the directory reports go to (needs a run log).
    pub governance: Option<(braid_engine::config::GovernanceConfig, PathBuf)>,
}

/// The thresholds shared by the node thread (compute) and the network task (traffic).
type SharedGov = Option<Arc<Mutex<crate::threshold::Governor>>>;

/// Logs the reports just written; with `pause` sets the stop flag and returns true when it
/// was not set before (the caller stops the node; the governor keeps why).
fn governed(
    log: &SharedLog, stop: &AtomicBool,
    written: impl IntoIterator<Item = crate::threshold::Written>,
) -> Result<bool, NetError> {
    let mut stopped_now = false;
    for w in written {
        let r = &w.report;
        warn!(
            "crossed the {} threshold ({} > {}): signed report {}",
            r.measure,
            r.value,
            r.threshold,
            w.path.display()
        );
        record(
            log,
            LogEvent::Threshold {
                measure: r.measure.clone(),
                threshold: r.threshold,
                value: r.value,
                file: w.path.display().to_string(),
                report: w.hash.clone(),
            },
        )?;
        sync_log(log)?;
        if r.pause {
            stopped_now |= !stop.swap(true, Ordering::SeqCst);
        }
    }
    Ok(stopped_now)
}

fn lock_gov(
    g: &Arc<Mutex<crate::threshold::Governor>>,
) -> Result<std::sync::MutexGuard<'_, crate::threshold::Governor>, NetError> {
    g.lock()
        .map_err(|_| NetError::Io("the thresholds' lock is poisoned".into()))
}

/// Copies of sent messages kept for audits: the inputs from which an auditor re-executes the
/// training they caused (the FedAvg server's train requests). Each copy is written, atomically,
/// before the message's `sent` entry is logged, so every such entry has its copy.
#[derive(Debug, Clone)]
pub struct KeepSent {
    /// The directory; each copy is named by the SHA-256 (hex) of its bytes.
    pub dir: PathBuf,
    /// The message kinds kept.
    pub kinds: &'static [&'static str],
}

impl KeepSent {
    fn keep(&self, what: &str, hash: &str, bytes: &[u8]) -> Result<(), NetError> {
        if !self.kinds.contains(&what) {
            return Ok(());
        }
        keep_named(&self.dir, hash, bytes)
    }
}

/// Writes `bytes` to `dir/name` atomically, unless that file is there already (a kept copy
/// is named by its content's SHA-256).
fn keep_named(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), NetError> {
    let path = dir.join(name);
    if path.exists() {
        return Ok(());
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| NetError::Io(format!("cannot create {}: {e}", dir.display())))?;
    braid_engine::report::write_atomic(&path, bytes).map_err(NetError::Io)
}

/// The most inputs listed between two trainings of a node (a log entry's `since`).
const MAX_SINCE: usize = 4096;

/// A node's state encoded for audits ([`braid_engine::checkpoint::encode_state`]), with its
/// SHA-256 and the [`WireNode::state_version`] it was taken at.
struct KeptState {
    hash: String,
    bytes: Vec<u8>,
    version: u64,
}

impl KeptState {
    /// The node's state now; `None` for a node that keeps none.
    fn of(node: &dyn WireNode) -> Result<Option<Self>, NetError> {
        let version = node.state_version();
        let Some(state) = node.save_state() else {
            return Ok(None);
        };
        let bytes = braid_engine::checkpoint::encode_state(state)
            .map_err(|e| NetError::Node(e.to_string()))?;
        Ok(Some(Self {
            hash: braid_engine::accounting::sha256_hex(&bytes),
            bytes,
            version,
        }))
    }

    /// Writes it to `dir`, named by its hash, unless it is there already.
    fn keep(&self, dir: &Path) -> Result<(), NetError> {
        keep_named(dir, &self.hash, &self.bytes)
    }
}

/// What the network task hands the node thread.
enum ToNode {
    /// An input for the node, with the token of the acknowledgement its sender waits for
    /// (sent back in [`ToNet::Handled`] once the node has handled it and checkpointed), and
    /// the SHA-256 of its encoding (what the run log names it by).
    Input(WireInput, Option<u64>, Option<String>),
    /// An authorized halt: stop now.
    Halt,
}

/// The run log shared by the node thread and the network task.
type SharedLog = Option<Arc<Mutex<RunLog>>>;

/// Appends `event` to the run log, if there is one.
fn record(log: &SharedLog, event: LogEvent) -> Result<(), NetError> {
    match log {
        Some(l) => l
            .lock()
            .map_err(|_| NetError::Io("the run log's lock is poisoned".into()))?
            .append(event),
        None => Ok(()),
    }
}

/// The acknowledgement of a handled message: with a run log, witnessing its head (and with
/// thresholds, showing this node's totals).
fn accepted(log: &SharedLog, gov: &SharedGov) -> Ack {
    let head = log
        .as_ref()
        .and_then(|l| l.lock().ok().and_then(|l| l.head()));
    let (flops, bytes) = gov
        .as_ref()
        .and_then(|g| g.lock().ok().map(|g| g.totals()))
        .unwrap_or_default();
    match head.and_then(|(seq, h)| Some((seq, crate::runlog::hash_bytes(&h)?))) {
        Some((seq, head)) => Ack::Witnessed {
            seq,
            head,
            flops,
            bytes,
        },
        None => Ack::Accepted,
    }
}

fn sync_log(log: &SharedLog) -> Result<(), NetError> {
    match log {
        Some(l) => l
            .lock()
            .map_err(|_| NetError::Io("the run log's lock is poisoned".into()))?
            .sync(),
        None => Ok(()),
    }
}

/// What a finished node process reports.
#[derive(Debug, Clone, Default)]
pub struct RunReport {
    /// Every event the node emitted, with seconds since the start.
    pub events: Vec<(WireEvent, f64)>,
    /// Bytes and messages this node sent (first attempts; retries are not counted twice)
    /// and accepted.
    pub traffic: NodeTraffic,
    /// Connections refused because the peer is not a participant.
    pub refused_connections: u64,
    /// Messages refused (malformed, too large, or rejected by the node).
    pub refused_messages: u64,
    /// Compute this node spent in its trainer.
    pub compute: Compute,
    /// The run was halted by an authorized key, a signal or the idle timeout.
    pub halted: bool,
    /// Why the node paused at a `[governance]` threshold, if it did.
    pub paused: Option<String>,
    /// Why this node stopped early on its own (a signal, the idle timeout); `None` for an
    /// authorized halt or a finished run.
    pub stopped: Option<String>,
}

/// Something the node thread asks of the network task.
enum ToNet {
    Send(NodeId, Encoded),
    /// The message with this acknowledgement token is handled, its effect checkpointed and
    /// what it made the node send handed over: acknowledge it.
    Handled(u64),
    Finished,
    Failed(String),
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    allow: allow_block_list::Behaviour<allow_block_list::AllowedPeers>,
    identify: identify::Behaviour,
    msg: request_response::Behaviour<FrameCodec>,
}

/// How long a finished node keeps trying to deliver its last messages.
const FINISH_GRACE: Duration = Duration::from_secs(10);
/// How long a node that must stop keeps its connections after its last acknowledgement is
/// written, so that the acknowledgement reaches its sender.
const ACK_LINGER: Duration = Duration::from_millis(500);

struct Outgoing {
    to: NodeId,
    peer: PeerId,
    bytes: Arc<Vec<u8>>,
    since: Instant,
    /// The message kind, for the run log.
    what: &'static str,
    /// Retry on failure (not for forwarded halts: a node that cannot be reached has
    /// usually halted already, and the halt reaches it by other paths too).
    retry: bool,
    /// A last word (`Shutdown`): its receiver may exit as soon as it has read it, so a
    /// connection that closes before the acknowledgement counts as delivered.
    last_word: bool,
}

/// Runs `node` until it reports [`Node::finished`] and its last messages are delivered (or
/// could not be delivered for a grace period of 10 s: their receivers are gone).
///
/// `observer` sees every event as the node emits it (on the node thread); `on_listen` is
/// called with every address the process listens on.
#[allow(clippy::too_many_arguments)]
pub fn run(
    node: Box<dyn WireNode>, key: Keypair, roster: Roster, options: RuntimeOptions,
    observer: Box<dyn FnMut(&WireEvent) + Send>, on_listen: Box<dyn FnMut(&Multiaddr) + Send>,
) -> Result<RunReport, NetError> {
    let me = crate::identity::peer_id(&key);
    let my_node = node.id();
    match roster.node_of(&me) {
        Some(n) if n == my_node => {}
        Some(n) => {
            return Err(NetError::Config(format!(
                "this key ({me}) is node {n} in network.participants, not node {my_node}"
            )))
        }
        None => {
            return Err(NetError::Config(format!(
                "this key ({me}) is not in network.participants"
            )))
        }
    }
    let mut node = node;
    let mut restored = Vec::new();
    if let (true, Some(path)) = (options.resume, &options.checkpoint) {
        if path.exists() {
            let c = Checkpoint::<serde_json::Value>::load(path)
                .map_err(|e| NetError::Node(e.to_string()))?;
            if let (Some(theirs), Some(ours)) = (&c.run, &options.run_id) {
                if theirs != ours {
                    return Err(NetError::Config(format!(
                        "--resume: {} belongs to run {theirs}, not to this run {ours} (another config, seed or override): start a fresh --out, or resume with that run's config",
                        path.display()
                    )));
                }
            }
            node.load_state(c.state)
                .map_err(|e| NetError::Node(format!("cannot resume: {e}")))?;
            info!("resumed from {}", path.display());
            restored = c.reported;
        } else if node.state_version() != 0 {
            return Err(NetError::Config(format!(
                "--resume: no checkpoint at {}",
                path.display()
            )));
        }
    }
    if options.checkpoint.is_some() {
        node.keep_checkpoints();
    }
    if options.resume {
        node.rejoin();
    }
    let log: SharedLog = match &options.run_log {
        Some(path) => {
            let mut l = RunLog::open(path, key.clone(), my_node)?;
            l.append(LogEvent::Join {
                run: options.run_id.clone().unwrap_or_default(),
                peer_id: me.to_string(),
                public_key: crate::identity::hex(&key.public().encode_protobuf()),
                resumed: options.resume,
            })?;
            Some(Arc::new(Mutex::new(l)))
        }
        None => None,
    };
    if log.is_some() {
        node.hash_models();
    }
    let stop = Arc::new(AtomicBool::new(false));
    node.set_stop_flag(Arc::clone(&stop));
    let gov: SharedGov = match (&options.governance, &options.run_log) {
        (Some((config, dir)), Some(path)) => {
            // What the node's log already counts and reports (a resumed node carries on).
            let run = options.run_id.clone().unwrap_or_default();
            let earlier = crate::runlog::history(path, &run);
            let mut g = crate::threshold::Governor::new(
                config.clone(),
                dir.clone(),
                run,
                my_node,
                key.clone(),
                roster.len(),
                earlier,
            );
            let w = g.at_start()?;
            governed(&log, &stop, w)?;
            Some(Arc::new(Mutex::new(g)))
        }
        _ => None,
    };
    let checkpoint = options.checkpoint.clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| NetError::Io(format!("cannot start the network runtime: {e}")))?;
    let (to_net, from_node) = tokio_mpsc::unbounded_channel();
    let (to_node, from_net) = std_mpsc::channel();
    let start = Instant::now();
    let node_log = log.clone();
    let node_stop = Arc::clone(&stop);
    let node_gov = gov.clone();
    let decoder = node.decoder();
    // Checkpoints name their run, so a resume can refuse another run's.
    let checkpoint = checkpoint.map(|p| (p, options.run_id.clone()));
    let states = options.keep_states.clone().filter(|_| log.is_some());
    let node_thread = std::thread::Builder::new()
        .name(format!("braid-node-{my_node}"))
        .spawn(move || {
            node_loop(
                node,
                from_net,
                to_net,
                observer,
                start,
                checkpoint,
                restored,
                node_log,
                (node_stop, node_gov, states),
            )
        })
        .map_err(|e| NetError::Io(format!("cannot start the node thread: {e}")))?;
    let net = rt.block_on(network_loop(
        key,
        roster,
        options,
        decoder,
        from_node,
        to_node,
        on_listen,
        log.clone(),
        (stop, gov.clone()),
    ));
    let node_result = node_thread
        .join()
        .map_err(|_| NetError::Node("the node thread panicked".into()))?;
    let paused = gov
        .as_ref()
        .and_then(|g| g.lock().ok()?.paused().map(String::from));
    let reason = match (&net, &node_result) {
        (Ok(r), Ok(_)) if r.stopped.is_some() => r.stopped.clone().unwrap_or_default(),
        (Ok(_), Ok(n)) if n.3 && paused.is_some() => paused.clone().unwrap_or_default(),
        (Ok(_), Ok(n)) if n.3 => "halted".to_string(),
        (Ok(_), Ok(_)) => "finished".to_string(),
        (Err(e), _) | (_, Err(e)) => format!("failed: {e}"),
    };
    record(&log, LogEvent::Leave { reason })?;
    sync_log(&log)?;
    let (mut report, node_report) = (net?, node_result?);
    report.events = node_report.0;
    report.refused_messages += node_report.1;
    report.compute = node_report.2;
    report.halted = node_report.3;
    report.paused = paused;
    Ok(report)
}

/// Events, rejected messages, compute, halted.
type NodeOutcome = (Vec<(WireEvent, f64)>, u64, Compute, bool);

/// A metrics row kept across restarts, with its wall-clock seconds.
type Reported = (serde_json::Value, f64);

/// Writes `state` with the metrics `reported` so far to the checkpoint at `path`, naming run
/// `run_id` (atomically: the old checkpoint or the new one survives a crash).
fn save_checkpoint(
    path: &Path, run_id: &Option<String>, state: NodeState, reported: &[Reported],
) -> Result<(), NetError> {
    Checkpoint {
        state,
        reported: reported.to_vec(),
        run: run_id.clone(),
    }
    .save(path)
    .map_err(|e| NetError::Io(e.to_string()))
}

#[allow(clippy::too_many_arguments)]
fn node_loop(
    mut node: Box<dyn WireNode>, inbox: std_mpsc::Receiver<ToNode>,
    to_net: tokio_mpsc::UnboundedSender<ToNet>, mut observer: Box<dyn FnMut(&WireEvent) + Send>,
    start: Instant, checkpoint: Option<(PathBuf, Option<String>)>, restored: Vec<Reported>,
    log: SharedLog, (stop, gov, states): (Arc<AtomicBool>, SharedGov, Option<PathBuf>),
) -> Result<NodeOutcome, NetError> {
    // Wall-clock seconds continue from the restored metrics.
    let offset = restored.last().map_or(0.0, |(_, w)| *w);
    let mut reported = restored;
    let mut events: Vec<(WireEvent, f64)> = reported
        .iter()
        .map(|(r, w)| {
            let event = node.row_event(r).unwrap_or_else(|| WireEvent::Metrics {
                progress: (0, None),
                line: String::new(),
                row: r.clone(),
            });
            (event, *w)
        })
        .collect();
    let mut saved_version = 0u64;
    let mut rejected = 0u64;
    let mut compute = Compute::default();
    let mut timers: BinaryHeap<Reverse<(Instant, u64, u64)>> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut first = Some(());
    // The acknowledgement the input being handled waits for.
    let mut ack: Option<u64> = None;
    // A halt cut the latest input short (its effects are not to be checkpointed).
    let mut interrupted = false;
    // With `states`: the node's state as it stands, encoded, with its hash and version, and
    // the inputs handled since its latest training.
    let mut state_now: Option<KeptState> = None;
    let mut inputs_since: Vec<String> = Vec::new();
    let result = loop {
        // What to do next: start, a message, or a deadline.
        // The SHA-256 of the message being handled, for its compute entry.
        let mut input_hash: Option<String> = None;
        let input = if stop.load(Ordering::Relaxed) {
            // Halted: the durable state as it stands, then nothing more. A halt that cut an
            // input short leaves a state half way through it: the checkpoint of the inputs
            // before stands (that input was not acknowledged, so it comes again).
            if !interrupted {
                if let (Some((path, run_id)), Some(state)) = (&checkpoint, node.save_state()) {
                    if let Err(e) = save_checkpoint(path, run_id, state, &reported) {
                        break Err(e);
                    }
                }
            }
            break Ok(true);
        } else if first.take().is_some() {
            WireInput::Start
        } else if node.finished() {
            break Ok(false);
        } else {
            let next = timers.peek().map(|Reverse((due, _, _))| *due);
            let got = match next {
                Some(due) => {
                    let wait = due.saturating_duration_since(Instant::now());
                    match inbox.recv_timeout(wait) {
                        Ok(m) => Some(m),
                        Err(std_mpsc::RecvTimeoutError::Timeout) => None,
                        Err(std_mpsc::RecvTimeoutError::Disconnected) => {
                            break Err(NetError::Io("the network task stopped".into()))
                        }
                    }
                }
                None => match inbox.recv() {
                    Ok(m) => Some(m),
                    Err(_) => break Err(NetError::Io("the network task stopped".into())),
                },
            };
            match got {
                Some(ToNode::Input(message, token, hash)) => {
                    ack = token;
                    input_hash = hash;
                    message
                }
                Some(ToNode::Halt) => continue, // the flag is set: stop at the top
                None => match timers.pop() {
                    Some(Reverse((_, _, token))) => WireInput::Deadline(token),
                    None => continue,
                },
            }
        };
        let round = node.round_of(&input);
        let started = matches!(input, WireInput::Start);
        let tag = match &input {
            WireInput::Start => since::START.to_string(),
            WireInput::Deadline(_) => since::DEADLINE.to_string(),
            WireInput::Message(..) => input_hash.clone().unwrap_or_else(|| since::UNKNOWN.into()),
        };
        if states.is_some() && state_now.is_none() {
            match KeptState::of(node.as_ref()) {
                Ok(s) => state_now = s,
                Err(e) => break Err(e),
            }
        }
        let (handled, r) = node.handle(input);
        let (outbox, emitted) = (handled.outbox, handled.events);
        let now = Instant::now();
        for (token, after) in handled.deadlines {
            timers.push(Reverse((now + after, seq, token)));
            seq += 1;
        }
        compute.add(&handled.compute);
        let (c, models) = (handled.compute, handled.models);
        // The states around a training, kept before its entry names them.
        let (mut state_before, mut state_after) = (None, None);
        if let (Some(dir), Some(before)) = (&states, state_now.take()) {
            let after = if node.state_version() != before.version {
                match KeptState::of(node.as_ref()) {
                    Ok(after) => after,
                    Err(e) => break Err(e),
                }
            } else {
                None
            };
            if c.train_samples > 0 {
                let now = after.as_ref().unwrap_or(&before);
                if let Err(e) = before.keep(dir).and_then(|_| now.keep(dir)) {
                    break Err(e);
                }
                state_before = Some(before.hash.clone());
                state_after = Some(now.hash.clone());
            } else if inputs_since.len() < MAX_SINCE {
                inputs_since.push(tag);
            } else {
                // A node that has not trained for this long (a server, a monitor): the list
                // stops growing, and a training after it is not replayed from the run.
                inputs_since[MAX_SINCE - 1] = since::TOO_MANY.into();
            }
            state_now = Some(after.unwrap_or(before));
        }
        if !c.is_zero() {
            let (model_before, model_after) = models.unzip();
            let e = LogEvent::Compute {
                round,
                train_samples: c.train_samples,
                eval_samples: c.eval_samples,
                flops: c.flops,
                seconds: c.seconds,
                model_before,
                model_after,
                input: input_hash.take(),
                start: started,
                since: if state_before.is_some() {
                    std::mem::take(&mut inputs_since)
                } else {
                    Vec::new()
                },
                state_before,
                state_after,
            };
            if let Err(e) = record(&log, e) {
                break Err(e);
            }
        }
        // After the compute entry that crossed it, so the log never reports more than it counts.
        if let Some(g) = &gov {
            let written = match lock_gov(g).and_then(|mut g| g.set_compute(&compute)) {
                Ok(w) => w,
                Err(e) => break Err(e),
            };
            if let Err(e) = governed(&log, &stop, written) {
                break Err(e);
            }
        }
        match r {
            Ok(()) => {}
            Err(e @ EngineError::Rejected { .. }) => {
                warn!("dropped a message: {e}");
                rejected += 1;
                let (from, why) = match &e {
                    EngineError::Rejected {
                        from, why, kind, ..
                    } => (format!("node {from}"), format!("{kind}: {why}")),
                    _ => (String::new(), e.to_string()),
                };
                if let Err(e) = record(&log, LogEvent::Refused { from, why }) {
                    break Err(e);
                }
            }
            // Halted in the middle of handling this input: drop what it produced (a partial
            // training result), and stop at the top of the loop.
            Err(_) if stop.load(Ordering::Relaxed) => {
                interrupted = true;
                continue;
            }
            Err(e) => break Err(NetError::Node(e.to_string())),
        }
        let mut log_failed = None;
        for ev in &emitted {
            let entry = match ev {
                WireEvent::Metrics {
                    progress: (round, accuracy),
                    ..
                } => LogEvent::Progress {
                    round: *round,
                    accuracy: *accuracy,
                },
                WireEvent::Finished { params } => LogEvent::Final {
                    model_hash: model_hash(params),
                },
            };
            if let Err(e) = record(&log, entry) {
                log_failed = Some(e);
                break;
            }
        }
        if let Some(e) = log_failed {
            break Err(e);
        }
        for ev in emitted {
            observer(&ev);
            let wall = offset + start.elapsed().as_secs_f64();
            if let WireEvent::Metrics { row, .. } = &ev {
                reported.push((row.clone(), wall));
            }
            events.push((ev, wall));
        }
        if let Some((path, run_id)) = &checkpoint {
            let v = node.state_version();
            if v != saved_version {
                if let Some(state) = node.save_state() {
                    if let Err(e) = save_checkpoint(path, run_id, state, &reported) {
                        break Err(e);
                    }
                    if let Err(e) = sync_log(&log) {
                        break Err(e);
                    }
                }
                saved_version = v;
            }
        }
        for (to, p) in outbox {
            if to_net.send(ToNet::Send(to, p)).is_err() {
                return Err(NetError::Io("the network task stopped".into()));
            }
        }
        // Acknowledged only now: a node killed before this point has not acknowledged the
        // message, so its sender delivers it again to the resumed node.
        if let Some(token) = ack.take() {
            if to_net.send(ToNet::Handled(token)).is_err() {
                return Err(NetError::Io("the network task stopped".into()));
            }
        }
    };
    let _ = to_net.send(match &result {
        Ok(_) => ToNet::Finished,
        Err(e) => ToNet::Failed(e.to_string()),
    });
    result.map(|halted| (events, rejected, compute, halted))
}
