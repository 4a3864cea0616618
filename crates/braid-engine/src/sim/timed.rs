//! Simulated time: the simulator delivers every message at the moment it would arrive on slow,
//! unequal participants, from a [`Timing`] model (compute speed and link of each node).
//!
//! A node handles its inputs in time order. Handling one starts when the input has arrived
//! and the node is free, and lasts the node's compute for it: the FLOPs its trainer calls
//! counted (see [`crate::accounting`]) over the node's speed. Its messages leave when it is
//! done and arrive a link later (latency plus bytes over the slower end's bandwidth), in the
//! order they were sent on each pair of nodes; its deadlines fall due counted from then.
//!
//! Nodes still run in parallel where that cannot change the result (conservative parallel
//! discrete-event simulation). An input at time `t` may be handled once no other node can
//! still send this node a message arriving before `t`: every node that may send to it
//! ([`crate::node::Node::listens_to`]) either already has a message queued to it (links keep their order)
//! or cannot send before `t` (its own queued inputs, its compute for them and the links in
//! between bound the earliest it can). A node's compute for an input of one kind is assumed
//! to be at least the least it has ever taken for that kind (true when it is a function of
//! the node's data, as for training); the simulator checks that no message ever arrives in
//! the past and stops with an error if one would.

use std::collections::{BTreeMap, HashMap};

use braid_core::latency::{LatencyConfig, LatencyModel};

use super::{SimOutcome, Simulator, TaskOutput};
use crate::node::{EngineError, EngineResult, Event, Input, Metrics, Protocol};
use crate::transport::{Envelope, Transport};
use crate::wire::{Message, NodeId};

/// Nanoseconds of simulated time.
type Nanos = u64;

fn nanos(seconds: f64) -> Nanos {
    (seconds.max(0.0) * 1e9).round() as Nanos
}

/// How fast each node computes and communicates.
#[derive(Debug, Clone, PartialEq)]
pub struct Timing {
    /// Per node: its client index in the latency model, or `None` for a server-class node
    /// (the model's server speed and a link that is never the bottleneck).
    clients: Vec<Option<usize>>,
    model: LatencyModel,
}

impl Timing {
    /// A model for `nodes` nodes, of which `servers` compute at the server's speed; the others
    /// are clients, in id order, with stragglers drawn from `rng`.
    pub fn new(
        config: &LatencyConfig, nodes: usize, servers: &[NodeId], rng: &mut impl rand::Rng,
    ) -> Self {
        let mut next = 0;
        let clients: Vec<Option<usize>> = (0..nodes)
            .map(|i| {
                if servers.contains(&(i as NodeId)) {
                    None
                } else {
                    next += 1;
                    Some(next - 1)
                }
            })
            .collect();
        Self {
            clients,
            model: LatencyModel::new(config, next, rng),
        }
    }

    /// Nodes that are stragglers.
    pub fn stragglers(&self) -> Vec<NodeId> {
        self.clients
            .iter()
            .enumerate()
            .filter(|(_, c)| c.is_some_and(|c| self.model.stragglers().get(c) == Some(&true)))
            .map(|(i, _)| i as NodeId)
            .collect()
    }

    fn compute(&self, node: NodeId, flops: u64) -> Nanos {
        let s = match self.clients.get(node as usize).copied().flatten() {
            Some(c) => self.model.client_compute_s(c, flops as f64),
            None => self.model.server(flops as f64),
        };
        nanos(s)
    }

    /// One message's time on the link between `a` and `b`.
    fn transfer(&self, a: NodeId, b: NodeId, bytes: u64) -> Nanos {
        let secs = |n: NodeId| {
            self.clients
                .get(n as usize)
                .copied()
                .flatten()
                .map_or(0.0, |c| self.model.client_transfer_s(c, bytes))
        };
        nanos(self.model.latency_s() + secs(a).max(secs(b)))
    }

    /// The least time any message spends on a link.
    fn min_link(&self) -> Nanos {
        nanos(self.model.latency_s())
    }
}

/// An input waiting at a node.
/// A node's pending inputs, by arrival time and sequence number.
type Inbox<M> = BTreeMap<(Nanos, u64), Queued<M>>;

struct Queued<M> {
    from: Option<NodeId>,
    input: Input<M>,
}

/// Which inputs a node's handling of one step covered: when each arrived, and its kind.
struct Taken {
    node: NodeId,
    starts: Vec<(Nanos, &'static str)>,
}

fn kind<M: Message>(input: &Input<M>) -> &'static str {
    input.kind()
}

impl<P: Protocol<Metrics: Metrics, Trainer: crate::trainer::TrainerObject>> Simulator<P> {
    /// Runs with simulated time from `timing` (see the module documentation). Every round's
    /// metrics get the simulated seconds at which the round ended.
    pub(super) fn run_timed(
        &mut self, timing: &Timing, observer: &mut dyn FnMut(&Event<P::Metrics>),
    ) -> EngineResult<SimOutcome<P::Metrics>> {
        let t0 = std::time::Instant::now();
        let n = self.nodes.len();
        let mut outcome = SimOutcome {
            compute: vec![Default::default(); n],
            ..SimOutcome::default()
        };
        let senders: Vec<Vec<NodeId>> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, node)| {
                let listens = node.as_ref().and_then(|x| x.listens_to());
                listens
                    .unwrap_or_else(|| (0..n as NodeId).collect())
                    .into_iter()
                    .filter(|&s| s as usize != i && (s as usize) < n)
                    .collect()
            })
            .collect();
        // Per node: queued inputs by (arrival, sequence), queued messages by sender, when it
        // is next free, the least compute seen per input kind, and the latest input handled.
        let mut inbox: Vec<Inbox<P::Msg>> = (0..n).map(|_| BTreeMap::new()).collect();
        let mut queued_from: Vec<HashMap<NodeId, usize>> = vec![HashMap::new(); n];
        let mut free_at: Vec<Nanos> = vec![0; n];
        let mut least: Vec<HashMap<&'static str, Nanos>> = vec![HashMap::new(); n];
        let mut handled_upto: Vec<Nanos> = vec![0; n];
        let mut last_arrival: HashMap<(NodeId, NodeId), Nanos> = HashMap::new();
        let mut seq = 0u64;
        for q in inbox.iter_mut() {
            q.insert(
                (0, seq),
                Queued {
                    from: None,
                    input: Input::Start,
                },
            );
            seq += 1;
        }
        let link = timing.min_link();
        loop {
            if inbox.iter().all(BTreeMap::is_empty) {
                break;
            }
            // The earliest each node could send anything: its own queued inputs, or an input
            // another node could still cause.
            let mut earliest: Vec<Nanos> = (0..n)
                .map(|i| {
                    inbox[i]
                        .iter()
                        .map(|((t, _), q)| {
                            (*t).max(free_at[i])
                                + least[i].get(kind(&q.input)).copied().unwrap_or(0)
                        })
                        .min()
                        .unwrap_or(Nanos::MAX)
                })
                .collect();
            loop {
                let mut changed = false;
                for i in 0..n {
                    let via = senders[i]
                        .iter()
                        .map(|&s| earliest[s as usize].saturating_add(link))
                        .min()
                        .unwrap_or(Nanos::MAX);
                    if via < earliest[i] {
                        earliest[i] = via;
                        changed = true;
                    }
                }
                if !changed {
                    break;
                }
            }
            // Take, per node, the queued inputs in order while nothing can still arrive
            // before them.
            let mut tasks: Vec<(NodeId, Vec<Input<P::Msg>>)> = Vec::new();
            let mut taken: Vec<Taken> = Vec::new();
            for i in 0..n {
                let mut inputs = Vec::new();
                let mut starts = Vec::new();
                while let Some((&(t, s), q)) = inbox[i].iter().next() {
                    let safe = senders[i].iter().all(|&m| {
                        queued_from[i].get(&m).copied().unwrap_or(0) > 0
                            || earliest[m as usize].saturating_add(link) >= t
                    });
                    if !safe {
                        break;
                    }
                    if let Some(m) = q.from {
                        if let Some(c) = queued_from[i].get_mut(&m) {
                            *c -= 1;
                        }
                    }
                    let Some(q) = inbox[i].remove(&(t, s)) else {
                        break;
                    };
                    starts.push((t, kind(&q.input)));
                    handled_upto[i] = handled_upto[i].max(t);
                    inputs.push(q.input);
                }
                if !inputs.is_empty() {
                    tasks.push((i as NodeId, inputs));
                    taken.push(Taken {
                        node: i as NodeId,
                        starts,
                    });
                }
            }
            if tasks.is_empty() {
                return Err(EngineError::Driver(
                    "simulated time: no input can be handled (a bug in the simulator)".into(),
                ));
            }
            let outputs = self.run_tasks(tasks)?;
            for ((from, out), took) in outputs.into_iter().zip(taken) {
                debug_assert_eq!(from, took.node);
                self.deliver_timed(
                    timing,
                    from,
                    out,
                    &took.starts,
                    &mut Timed {
                        inbox: &mut inbox,
                        queued_from: &mut queued_from,
                        free_at: &mut free_at,
                        least: &mut least,
                        handled_upto: &handled_upto,
                        last_arrival: &mut last_arrival,
                        seq: &mut seq,
                    },
                    &mut outcome,
                    observer,
                    t0,
                )?;
            }
        }
        outcome.traffic = (0..n as NodeId)
            .map(|i| self.transport.traffic(i))
            .collect();
        Ok(outcome)
    }

    /// Timestamps one node's output of a step and queues its messages and deadlines.
    #[allow(clippy::too_many_arguments)]
    fn deliver_timed(
        &mut self, timing: &Timing, from: NodeId, out: TaskOutput<P>,
        starts: &[(Nanos, &'static str)], st: &mut Timed<'_, P::Msg>,
        outcome: &mut SimOutcome<P::Metrics>, observer: &mut dyn FnMut(&Event<P::Metrics>),
        t0: std::time::Instant,
    ) -> EngineResult {
        let f = from as usize;
        let (mut m0, mut e0, mut d0) = (0, 0, 0);
        let mut free = st.free_at[f];
        let mut outbox = out.outbox.into_iter();
        let mut events = out.events.into_iter();
        let mut deadlines = out.deadlines.into_iter();
        for (mark, &(arrived, kind)) in out.marks.iter().zip(starts) {
            let start = arrived.max(free);
            let took = timing.compute(from, mark.flops);
            let done = start.saturating_add(took);
            free = done;
            let least = st.least[f].entry(kind).or_insert(took);
            *least = (*least).min(took);
            for ev in events.by_ref().take(mark.events - e0) {
                let ev = match ev {
                    Event::Metrics(mut m) => {
                        m.set_sim_time(done as f64 / 1e9);
                        Event::Metrics(m)
                    }
                    other => other,
                };
                observer(&ev);
                outcome.record(ev, t0.elapsed().as_secs_f64());
            }
            for (to, body) in outbox.by_ref().take(mark.outbox - m0) {
                let t = to as usize;
                if t >= st.inbox.len() {
                    return Err(EngineError::Driver(format!(
                        "node {from} sent a message to unknown node {to}"
                    )));
                }
                let bytes = body.encoded_len() as u64;
                let key = (from, to);
                let arrival = done
                    .saturating_add(timing.transfer(from, to, bytes))
                    .max(st.last_arrival.get(&key).copied().unwrap_or(0));
                st.last_arrival.insert(key, arrival);
                if arrival < st.handled_upto[t] {
                    return Err(EngineError::Driver(format!(
                        "simulated time: a {} from node {from} would arrive at node {to} at {:.6} s, after it handled an input of {:.6} s (node {from} computed faster than it ever had for this kind of input)",
                        body.kind(),
                        arrival as f64 / 1e9,
                        st.handled_upto[t] as f64 / 1e9
                    )));
                }
                // Through the in-process transport, which counts the bytes.
                self.transport.send(Envelope { from, to, body });
                for env in self.transport.drain() {
                    st.inbox[t].insert(
                        (arrival, *st.seq),
                        Queued {
                            from: Some(from),
                            input: Input::arrived(from, env.body),
                        },
                    );
                    *st.seq += 1;
                }
                *st.queued_from[t].entry(from).or_insert(0) += 1;
            }
            for (token, after) in deadlines.by_ref().take(mark.deadlines - d0) {
                st.inbox[f].insert(
                    (done + nanos(after.as_secs_f64()), *st.seq),
                    Queued {
                        from: None,
                        input: Input::Deadline(token),
                    },
                );
                *st.seq += 1;
            }
            (m0, e0, d0) = (mark.outbox, mark.events, mark.deadlines);
        }
        st.free_at[f] = free;
        outcome.add_compute(from, &out.compute);
        Ok(())
    }
}

/// The timed run's state that delivering a step's output changes.
struct Timed<'a, M> {
    inbox: &'a mut Vec<Inbox<M>>,
    queued_from: &'a mut Vec<HashMap<NodeId, usize>>,
    free_at: &'a mut Vec<Nanos>,
    least: &'a mut Vec<HashMap<&'static str, Nanos>>,
    handled_upto: &'a Vec<Nanos>,
    last_arrival: &'a mut HashMap<(NodeId, NodeId), Nanos>,
    seq: &'a mut u64,
}
