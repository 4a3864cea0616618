//! The network side of a node: the libp2p swarm and the task that sends what the node
//! sends, receives and checks what arrives, and retries deliveries.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use braid_engine::wire::{Message, NodeId};
use braid_engine::wire_node::{Decoded, WireInput};
use futures::StreamExt;
use libp2p::identity::Keypair;
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport};
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::swarm::{DialError, ListenError, NetworkBehaviour, SwarmEvent};
use libp2p::{allow_block_list, identify, noise, tcp, yamux, Multiaddr, Swarm};
use tokio::sync::mpsc as tokio_mpsc;
use tracing::{debug, info, warn};

use crate::codec::{Ack, Frame, FrameCodec, PROTOCOL, RUN_ID_BYTES};
use crate::roster::Roster;
use crate::runlog::{sha256_hex, LogEvent};
use crate::NetError;

use super::{
    accepted, governed, lock_gov, record, sync_log, Behaviour, BehaviourEvent, KeepSent, Outgoing,
    RunReport, RuntimeOptions, SharedGov, SharedLog, ToNet, ToNode, ACK_LINGER, FINISH_GRACE,
};

/// A swarm on braid's one transport (TCP, Noise, Yamux) with `behaviour`, closing
/// connections idle for `idle`.
pub(crate) fn tcp_swarm<B: NetworkBehaviour>(
    key: Keypair, behaviour: impl FnOnce(&Keypair) -> B, idle: Duration,
) -> Result<Swarm<B>, String> {
    Ok(libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| e.to_string())?
        .with_behaviour(behaviour)
        .map_err(|e| e.to_string())?
        .with_swarm_config(|c| c.with_idle_connection_timeout(idle))
        .build())
}

fn build_swarm(
    key: Keypair, roster: &Roster, options: &RuntimeOptions, run: [u8; RUN_ID_BYTES],
) -> Result<Swarm<Behaviour>, NetError> {
    let io = |e: &dyn std::fmt::Display| NetError::Io(format!("cannot build the network: {e}"));
    let max = options.max_message_bytes;
    let timeout = options.request_timeout;
    let behaviour = |key: &Keypair| Behaviour {
        allow: allow_block_list::Behaviour::default(),
        identify: identify::Behaviour::new(identify::Config::new(
            "/braid/id/1".into(),
            key.public(),
        )),
        msg: request_response::Behaviour::with_codec(
            FrameCodec::new(max, run),
            [(PROTOCOL, ProtocolSupport::Full)],
            request_response::Config::default().with_request_timeout(timeout),
        ),
    };
    let mut swarm = tcp_swarm(key, behaviour, Duration::from_secs(3600)).map_err(|e| io(&e))?;
    for (_, peer, addr) in roster.iter() {
        swarm.behaviour_mut().allow.allow_peer(peer);
        if let Some(a) = addr {
            swarm.add_peer_address(peer, a.clone());
        }
    }
    // Halt keys may connect; the network task accepts only a halt from them.
    for peer in roster.halters() {
        swarm.behaviour_mut().allow.allow_peer(*peer);
    }
    for addr in &options.listen {
        swarm
            .listen_on(addr.clone())
            .map_err(|e| NetError::Io(format!("cannot listen on {addr}: {e}")))?;
    }
    Ok(swarm)
}

/// Why a message of another run is refused: both run ids, and what to do.
fn other_run(theirs: &[u8; RUN_ID_BYTES], ours: &[u8; RUN_ID_BYTES]) -> String {
    format!(
        "runs another configuration: its run id is {}, this node's {} (another run: every node must start from the same config file and overrides)",
        crate::identity::hex(theirs),
        crate::identity::hex(ours)
    )
}

/// True when node 0 (the run's coordinator: server, hub or monitor) runs another
/// configuration than this node, which is not node 0: this node cannot take part, and stops.
/// Node 0 itself refuses such participants and goes on with the others.
fn coordinator_elsewhere(me: Option<NodeId>, other: Option<NodeId>) -> bool {
    other == Some(0) && me.is_some_and(|m| m != 0)
}

/// A message's first attempt: counted as traffic, logged as sent, handed to the swarm.
fn first_send(
    swarm: &mut Swarm<Behaviour>, pending: &mut HashMap<OutboundRequestId, Outgoing>,
    report: &mut RunReport, log: &SharedLog, keep: Option<&KeepSent>, out: Outgoing,
) -> Result<(), NetError> {
    report.traffic.bytes_sent += out.bytes.len() as u64;
    report.traffic.messages_sent += 1;
    let hash = sha256_hex(&out.bytes);
    if let Some(k) = keep {
        k.keep(out.what, &hash, &out.bytes)?;
    }
    record(
        log,
        LogEvent::Sent {
            to: out.to,
            what: out.what.into(),
            bytes: out.bytes.len() as u64,
            hash,
        },
    )?;
    let id = swarm
        .behaviour_mut()
        .msg
        .send_request(&out.peer, Frame::Bytes(Arc::clone(&out.bytes)));
    pending.insert(id, out);
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn network_loop(
    key: Keypair, roster: Roster, options: RuntimeOptions,
    decoder: braid_engine::wire_node::Decoder, mut from_node: tokio_mpsc::UnboundedReceiver<ToNet>,
    to_node: std_mpsc::Sender<ToNode>, mut on_listen: Box<dyn FnMut(&Multiaddr) + Send>,
    log: SharedLog, (stop, gov): (Arc<AtomicBool>, SharedGov),
) -> Result<RunReport, NetError> {
    let run_id = match &options.run_id {
        Some(h) => Some(crate::halt::run_id(h)?),
        None => None,
    };
    let started_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let me = crate::identity::peer_id(&key);
    let my_node = roster.node_of(&me);
    let run_bytes = run_id.unwrap_or([0; RUN_ID_BYTES]);
    let mut swarm = build_swarm(key, &roster, &options, run_bytes)?;
    let mut report = RunReport::default();
    let mut pending: HashMap<OutboundRequestId, Outgoing> = HashMap::new();
    let mut retry: Vec<(Instant, Outgoing)> = Vec::new();
    // After a halt: messages sent and not acknowledged, kept beside the checkpoint for the
    // resumed node to send again (crate::unsent).
    let mut unsent: Vec<Outgoing> = Vec::new();
    let unsent_path = options.checkpoint.as_deref().map(crate::unsent::path_for);
    if let (true, Some(path)) = (options.resume, &unsent_path) {
        let kept = crate::unsent::load(path, options.max_message_bytes).map_err(NetError::Io)?;
        if !kept.is_empty() {
            info!(
                "sending again {} message(s) unacknowledged at the halt",
                kept.len()
            );
        }
        for (to, bytes) in kept {
            let Some(peer) = roster.peer_of(to) else {
                warn!(
                    "{}: node {to} is not in network.participants; dropped",
                    path.display()
                );
                continue;
            };
            // Its kind as when it was first sent, so its delivery is logged under the name its
            // `sent` entry and its receiver's `received` entry have.
            let what = match decoder(&bytes) {
                Ok(Decoded::Input { kind, .. }) => kind,
                Ok(Decoded::Halt(c)) => c.kind(),
                Err(_) => "message sent before the halt",
            };
            let out = Outgoing {
                to,
                peer,
                bytes: Arc::new(bytes),
                since: Instant::now(),
                what,
                retry: true,
                last_word: false,
            };
            retry.push((Instant::now(), out));
        }
    }
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut last_dial = Instant::now() - Duration::from_secs(60);
    let mut node_done = false;
    let mut done_at: Option<Instant> = None;
    let mut done_linger: Option<Instant> = None;
    // Acknowledgements queued but not yet written: a finished node flushes them before it
    // exits, so its senders do not retry into a closed socket.
    let mut acks_in_flight = 0usize;
    // Messages handed to the node and not yet handled: their acknowledgements wait for it, by
    // token, so that a message acknowledged is a message handled (and checkpointed).
    let mut unanswered: HashMap<u64, request_response::ResponseChannel<Ack>> = HashMap::new();
    let mut next_token = 0u64;
    // A node that must stop (node 0 runs another configuration) first writes the
    // acknowledgement that tells node 0 why, for at most FINISH_GRACE.
    let mut leaving: Option<(NetError, Instant)> = None;
    let mut linger: Option<Instant> = None;
    let mut signals = Signals::new()?;
    let mut last_heard = Instant::now();
    loop {
        if let Some(g) = &gov {
            let (sent, received) = (report.traffic.bytes_sent, report.traffic.bytes_received);
            let written = lock_gov(g)?.set_traffic(sent, received)?;
            if governed(&log, &stop, written)? {
                warn!("pausing this node (checkpoint, leave) until the report is approved");
                let _ = to_node.send(ToNode::Halt);
            }
        }
        if let Some((_, since)) = &leaving {
            // Once the acknowledgements are written, the swarm is polled a little longer so
            // that they leave the connection before the process exits.
            let lingered = acks_in_flight == 0
                && Instant::now() >= *linger.get_or_insert_with(|| Instant::now() + ACK_LINGER);
            if lingered || since.elapsed() > FINISH_GRACE {
                if let Some((e, _)) = leaving.take() {
                    return Err(e);
                }
            }
        }
        if node_done {
            let halted = stop.load(Ordering::Relaxed);
            if halted {
                // Halted: nothing more is tried; what is not acknowledged is kept.
                unsent.extend(retry.drain(..).map(|(_, out)| out));
            }
            let since = *done_at.get_or_insert_with(Instant::now);
            let drained = pending.is_empty() && retry.is_empty() && acks_in_flight == 0;
            // Written acknowledgements still need the connection a moment to reach their
            // senders (a monitor's acknowledgement of the last snapshot): without it the
            // sender retries until FINISH_GRACE.
            let lingered = drained
                && Instant::now()
                    >= *done_linger.get_or_insert_with(|| Instant::now() + ACK_LINGER);
            if lingered || since.elapsed() > FINISH_GRACE {
                if !drained {
                    warn!(
                        "exiting with {} message(s) undelivered (their receivers are unreachable or halted)",
                        pending.len() + retry.len()
                    );
                }
                if let Some(path) = &unsent_path {
                    // After a halt, the unacknowledged messages; after a finished run, none.
                    let kept: Vec<&Outgoing> = if halted {
                        pending.values().chain(&unsent).collect()
                    } else {
                        Vec::new()
                    };
                    crate::unsent::save(path, kept.iter().map(|o| (o.to, o.bytes.as_slice())))
                        .map_err(NetError::Io)?;
                }
                return Ok(report);
            }
        }
        tokio::select! {
            sig = signals.next() => {
                let why = format!("stopped by {sig}");
                if stop.swap(true, Ordering::SeqCst) {
                    // A second Ctrl-C: the person means it. SIGTERM can arrive more than once
                    // for one request (the kernel's parent-death signal did here), so repeats
                    // of it change nothing; SIGKILL is the way to end a node at once.
                    if sig == "SIGINT" {
                        warn!("SIGINT again: exiting at once");
                        let _ = sync_log(&log);
                        std::process::exit(128 + signals.number(sig));
                    }
                    continue;
                }
                warn!("{sig}: stopping this node (checkpoint, leave); a second SIGINT exits at once");
                report.stopped = Some(why);
                let _ = to_node.send(ToNode::Halt);
            },
            cmd = from_node.recv() => match cmd {
                Some(ToNet::Send(to, message)) => {
                    let Some(peer) = roster.peer_of(to) else {
                        warn!("node {to} is not in network.participants; dropped a {}", message.kind);
                        continue;
                    };
                    let out = Outgoing { to, peer, bytes: message.bytes, since: Instant::now(), what: message.kind, retry: true, last_word: message.last_word };
                    first_send(&mut swarm, &mut pending, &mut report, &log, options.keep_sent.as_ref(), out)?;
                }
                Some(ToNet::Handled(token)) => {
                    if let Some(channel) = unanswered.remove(&token) {
                        if swarm.behaviour_mut().msg.send_response(channel, accepted(&log, &gov)).is_ok() {
                            acks_in_flight += 1;
                        }
                    }
                }
                Some(ToNet::Finished) | None => {
                    node_done = true;
                    // Messages the node did not handle: after a finished run they no longer
                    // matter (acknowledged, so their senders do not retry); after a halt or a
                    // signal they are not acknowledged, so their senders deliver them again
                    // to the node when it resumes.
                    let halted = stop.load(Ordering::Relaxed);
                    for (_, channel) in unanswered.drain() {
                        if !halted && swarm.behaviour_mut().msg.send_response(channel, accepted(&log, &gov)).is_ok() {
                            acks_in_flight += 1;
                        }
                    }
                }
                Some(ToNet::Failed(e)) => return Err(NetError::Node(e)),
            },
            _ = tick.tick() => {
                let now = Instant::now();
                if let Some(limit) = options.idle_timeout {
                    if !node_done && now.duration_since(last_heard) > limit && !stop.swap(true, Ordering::SeqCst) {
                        let why = format!("no message from any participant for {} s", limit.as_secs());
                        warn!("{why}: stopping this node (checkpoint, leave)");
                        report.stopped = Some(format!("stopped: {why}"));
                        let _ = to_node.send(ToNode::Halt);
                    }
                }
                let (due, later): (Vec<_>, Vec<_>) = retry.drain(..).partition(|(t, _)| *t <= now);
                retry = later;
                for (_, out) in due {
                    let id = swarm.behaviour_mut().msg.send_request(&out.peer, Frame::Bytes(Arc::clone(&out.bytes)));
                    pending.insert(id, out);
                }
                if now.duration_since(last_dial) >= Duration::from_secs(2) {
                    last_dial = now;
                    for (_, peer, addr) in roster.iter() {
                        if let (Some(a), false) = (addr, peer == me || swarm.is_connected(&peer)) {
                            let opts = DialOpts::peer_id(peer).addresses(vec![a.clone()]).build();
                            if let Err(e) = swarm.dial(opts) {
                                debug!("dial {peer}: {e}");
                            }
                        }
                    }
                }
            },
            ev = swarm.select_next_some() => match ev {
                SwarmEvent::NewListenAddr { address, .. } => on_listen(&address),
                SwarmEvent::ConnectionEstablished { peer_id, endpoint, .. } => {
                    info!("connected to node {:?} ({peer_id}) at {}", roster.node_of(&peer_id), endpoint.get_remote_address());
                }
                SwarmEvent::ConnectionClosed { peer_id, cause, .. } => {
                    info!("connection to node {:?} closed: {cause:?}", roster.node_of(&peer_id));
                }
                SwarmEvent::IncomingConnectionError { peer_id, error: ListenError::Denied { cause }, send_back_addr, .. } => {
                    report.refused_connections += 1;
                    warn!("refused a connection from {peer_id:?} at {send_back_addr}: {cause}");
                    record(&log, LogEvent::Refused {
                        from: peer_id.map_or_else(|| send_back_addr.to_string(), |p| p.to_string()),
                        why: format!("connection: {cause}"),
                    })?;
                }
                SwarmEvent::OutgoingConnectionError { peer_id, error: DialError::Denied { cause }, .. } => {
                    report.refused_connections += 1;
                    warn!("refused a connection to {peer_id:?}: {cause}");
                }
                SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                    debug!("dial {peer_id:?} failed: {error}");
                }
                SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }))
                    if roster.node_of(&peer_id).is_some() =>
                {
                    for a in info.listen_addrs {
                        swarm.add_peer_address(peer_id, a);
                    }
                }
                SwarmEvent::Behaviour(BehaviourEvent::Msg(e)) => match e {
                    request_response::Event::Message { peer, message, .. } => match message {
                        request_response::Message::Request { request, channel, .. } => {
                            let sender = roster.node_of(&peer);
                            if sender.is_some() {
                                last_heard = Instant::now();
                            }
                            let who = sender.map_or_else(|| peer.to_string(), |n| format!("node {n}"));
                            let mut fatal = None;
                            let mut held = None;
                            let ack = match (sender, request) {
                                (None, _) if !roster.may_halt(&peer) => {
                                    warn!("refused a message from {peer}: not a participant");
                                    report.refused_messages += 1;
                                    Ack::Refused("not a participant".into())
                                }
                                (_, Frame::Unreadable(why)) => {
                                    warn!("refused a message from {who}: {why}");
                                    report.refused_messages += 1;
                                    record(&log, LogEvent::Refused { from: who, why: why.clone() })?;
                                    Ack::Refused(why)
                                }
                                (_, Frame::OtherRun(theirs)) => {
                                    let why = other_run(&theirs, &run_bytes);
                                    warn!("refused a message from {who}: it {why}");
                                    report.refused_messages += 1;
                                    record(&log, LogEvent::Refused { from: who, why: format!("it {why}") })?;
                                    if coordinator_elsewhere(my_node, sender) {
                                        fatal = Some(NetError::Config(format!("node 0 {why}")));
                                    }
                                    Ack::OtherRun(run_bytes)
                                }
                                (_, Frame::Bytes(request)) => match decoder(&request) {
                                    Err(e) => {
                                        warn!("refused a message from {who}: {e}");
                                        report.refused_messages += 1;
                                        record(&log, LogEvent::Refused { from: who, why: e.to_string() })?;
                                        Ack::Refused(e.to_string())
                                    }
                                    Ok(Decoded::Halt(p)) => {
                                        let checked = match &run_id {
                                            Some(run) => crate::halt::verify(&p, run, roster.halters(), started_at),
                                            None => Err("this node was started without a run id".into()),
                                        };
                                        match checked {
                                            Err(why) => {
                                                warn!("refused a halt from {who}: {why}");
                                                report.refused_messages += 1;
                                                record(&log, LogEvent::Refused { from: who, why: format!("halt: {why}") })?;
                                                Ack::Refused(why)
                                            }
                                            Ok(by) => {
                                                if let Some(from) = sender {
                                                    record(&log, LogEvent::Received {
                                                        from,
                                                        what: p.kind().into(),
                                                        bytes: request.len() as u64,
                                                        hash: sha256_hex(&request),
                                                    })?;
                                                }
                                                if !stop.swap(true, Ordering::SeqCst) {
                                                    warn!("halted by {by} (via {who}); stopping and forwarding the halt");
                                                    record(&log, LogEvent::Halted { by: by.to_string() })?;
                                                    let _ = to_node.send(ToNode::Halt);
                                                    // Every other participant hears it from us too.
                                                    for (n, p, _) in roster.iter() {
                                                        if p == me || p == peer {
                                                            continue;
                                                        }
                                                        let out = Outgoing {
                                                            to: n,
                                                            peer: p,
                                                            bytes: Arc::clone(&request),
                                                            since: Instant::now(),
                                                            what: "halt",
                                                            retry: false,
                                                            last_word: true,
                                                        };
                                                        first_send(&mut swarm, &mut pending, &mut report, &log, options.keep_sent.as_ref(), out)?;
                                                    }
                                                }
                                                Ack::Accepted
                                            }
                                        }
                                    }
                                    Ok(_) if sender.is_none() => {
                                        warn!("refused a message from {peer}: a halt key may only send a halt");
                                        report.refused_messages += 1;
                                        Ack::Refused("a halt key may only send a halt".into())
                                    }
                                    Ok(Decoded::Input { kind, body }) => {
                                        let from = sender.unwrap_or_default();
                                        report.traffic.bytes_received += request.len() as u64;
                                        report.traffic.messages_received += 1;
                                        // Recorded before it is acknowledged, so a message its
                                        // sender logs as delivered is always in this log.
                                        let hash = sha256_hex(&request);
                                        record(&log, LogEvent::Received {
                                            from,
                                            what: kind.into(),
                                            bytes: request.len() as u64,
                                            hash: hash.clone(),
                                        })?;
                                        // Acknowledged once the node has handled it
                                        // (ToNet::Handled), not now.
                                        let token = next_token;
                                        next_token += 1;
                                        if to_node.send(ToNode::Input(WireInput::Message(from, body), Some(token), Some(hash))).is_err() {
                                            node_done = true;
                                        } else {
                                            held = Some(token);
                                        }
                                        Ack::Accepted
                                    }
                                },
                            };
                            match held.take() {
                                Some(token) => {
                                    unanswered.insert(token, channel);
                                }
                                None => {
                                    if swarm.behaviour_mut().msg.send_response(channel, ack).is_ok() {
                                        acks_in_flight += 1;
                                    }
                                }
                            }
                            if let Some(e) = fatal.take() {
                                leaving.get_or_insert((e, Instant::now()));
                            }
                        }
                        request_response::Message::Response { request_id, response } => {
                            last_heard = Instant::now();
                            if let Some(out) = pending.remove(&request_id) {
                                match response {
                                    Ack::Refused(why) => warn!("node {} refused our message: {why}", out.to),
                                    Ack::OtherRun(theirs) => {
                                        let why = other_run(&theirs, &run_bytes);
                                        warn!("node {} refused our message: it {why}", out.to);
                                        record(&log, LogEvent::Refused {
                                            from: format!("node {}", out.to),
                                            why: format!("it refused our {}: it {why}", out.what),
                                        })?;
                                        if coordinator_elsewhere(my_node, Some(out.to)) {
                                            return Err(NetError::Config(format!("node 0 {why}")));
                                        }
                                    }
                                    Ack::Accepted => record(&log, LogEvent::Delivered {
                                        to: out.to,
                                        what: out.what.into(),
                                        hash: sha256_hex(&out.bytes),
                                        receiver_log: None,
                                    })?,
                                    Ack::Witnessed { seq, head, flops, bytes } => {
                                        record(&log, LogEvent::Delivered {
                                            to: out.to,
                                            what: out.what.into(),
                                            hash: sha256_hex(&out.bytes),
                                            receiver_log: Some((seq, crate::identity::hex(&head))),
                                        })?;
                                        if let Some(g) = &gov {
                                            let written = lock_gov(g)?.set_known(out.to, flops, bytes)?;
                                            if governed(&log, &stop, written)? {
                                                warn!("pausing this node (checkpoint, leave) until the report is approved");
                                                let _ = to_node.send(ToNode::Halt);
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    },
                    request_response::Event::OutboundFailure { request_id, error, .. } => {
                        if let Some(out) = pending.remove(&request_id) {
                            if out.last_word && matches!(error, request_response::OutboundFailure::ConnectionClosed) {
                                debug!("node {} closed its connection after our last message", out.to);
                            } else if out.retry && stop.load(Ordering::Relaxed) {
                                debug!("halted: a {} to node {} is kept for the resume", out.what, out.to);
                                unsent.push(out);
                            } else if !out.retry {
                                debug!("could not forward a {} to node {}: {error}", out.what, out.to);
                            } else if out.since.elapsed() < options.retry_for {
                                debug!("delivery to node {} failed ({error}); retrying", out.to);
                                retry.push((Instant::now() + Duration::from_secs(1), out));
                            } else {
                                warn!("gave up delivering a message to node {}: {error}", out.to);
                            }
                        }
                    }
                    request_response::Event::ResponseSent { .. } => {
                        acks_in_flight = acks_in_flight.saturating_sub(1);
                    }
                    request_response::Event::InboundFailure { peer, error, .. } => {
                        // Also reported for a response that could not be sent.
                        // Also reported for an acknowledgement that could not be sent.
                        if matches!(error, request_response::InboundFailure::ConnectionClosed | request_response::InboundFailure::Io(_) | request_response::InboundFailure::Timeout) {
                            acks_in_flight = acks_in_flight.saturating_sub(1);
                        }
                        debug!("inbound message from {peer} failed: {error}");
                    }
                },
                _ => {}
            }
        }
    }
}

/// SIGINT and SIGTERM as a stream (Unix; elsewhere nothing arrives).
struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Result<Self, NetError> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let io = |e: std::io::Error| NetError::Io(format!("cannot handle signals: {e}"));
            Ok(Self {
                term: signal(SignalKind::terminate()).map_err(io)?,
                int: signal(SignalKind::interrupt()).map_err(io)?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    /// The next signal's name.
    async fn next(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                Some(()) = self.term.recv() => "SIGTERM",
                Some(()) = self.int.recv() => "SIGINT",
                else => std::future::pending().await,
            }
        }
        #[cfg(not(unix))]
        std::future::pending().await
    }

    /// The signal's number (for the exit status 128 + n of a process it ends).
    fn number(&self, name: &str) -> i32 {
        if name == "SIGINT" {
            2
        } else {
            15
        }
    }
}
