//! The simulator: a driver that runs every node of a run inside one process.
//!
//! It delivers messages through an [`InProcessTransport`] in rounds of "everything that is
//! ready": the ready messages are grouped by receiver, receivers are handled in parallel on
//! `workers` threads (each with its own single-threaded rayon pool and its own
//! trainer, metered), and their outgoing messages are queued in receiver-id order. Handling is
//! deterministic per node and outputs are merged in a fixed order, so results do not depend
//! on the number of workers or on thread timing. When only one node has work (the server
//! aggregating and evaluating), it runs on the global rayon pool and uses every core.
//!
//! Deadlines ([`NodeCtx::set_deadline`]) run on a virtual clock that moves only when no
//! message is left to deliver: then the earliest pending deadline fires. Nodes that all answer
//! never see a deadline pass; a node that never answers (a crashed participant in a test)
//! lets the others' deadlines fire, as they would across a real network.
//!
//! With a [`Timing`] model ([`Simulator::with_timing`]) the simulator instead keeps simulated
//! time: every message arrives when it would on participants of the modelled speeds and
//! links, and deadlines fall due at their simulated time (module [`timed`]).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::accounting::{Compute, Meter};
use crate::node::{
    BoxNode, EngineError, EngineResult, Event, Input, Metrics, Node, NodeCtx, Protocol,
};
use crate::trainer::TrainerObject;
use crate::transport::{Envelope, InProcessTransport, NodeTraffic, Transport};
use crate::wire::{Body, NodeId};

pub mod faults;
pub mod timed;
pub use timed::Timing;

/// A worker thread's resources: a trainer of type `T` (an algorithm's bundle of
/// capabilities, see [`crate::trainer`]), metered, and a single-threaded rayon pool.
pub struct Worker<T: ?Sized> {
    trainer: Box<T>,
    meter: Meter,
    pool: rayon::ThreadPool,
}

impl<T: TrainerObject + ?Sized> Worker<T> {
    /// A worker with its own trainer and a single-threaded rayon pool.
    pub fn new(trainer: Box<T>) -> EngineResult<Self> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .map_err(|e| EngineError::Driver(format!("cannot start a worker thread pool: {e}")))?;
        let (trainer, meter) = crate::trainer::metered(trainer);
        Ok(Self {
            trainer,
            meter,
            pool,
        })
    }
}

/// Told which tasks run at once, by a trainer that the workers share (batched clients,
/// [`crate::batched`]). With it ([`Simulator::with_waves`]) the simulator hands a delivery
/// step's tasks to its workers in waves of fixed composition, in node-id order, task `i` of a
/// wave to worker `i`, so who runs beside whom is the same in every run.
pub trait Waves: Send + Sync {
    /// `tasks` tasks are about to run at once.
    fn begin(&self, tasks: usize);
    /// One of them has finished (whatever it asked of its trainer).
    fn done(&self);
}

/// Calls [`Waves::done`] when a task ends, even by a panic.
struct TaskEnd<'a>(&'a dyn Waves);

impl Drop for TaskEnd<'_> {
    fn drop(&mut self) {
        self.0.done();
    }
}

/// The result of a simulated run whose reporting node emits rows `R`.
#[derive(Debug, Clone, PartialEq)]
pub struct SimOutcome<R> {
    /// The metrics rows, with the wall-clock seconds since the start of the run.
    pub rows: Vec<(R, f64)>,
    /// Final global parameters.
    pub final_params: Option<Vec<f32>>,
    /// Traffic per node id.
    pub traffic: Vec<NodeTraffic>,
    /// Compute per node id (samples, FLOPs, seconds in the trainer).
    pub compute: Vec<Compute>,
    /// Compute per (node id, round of the message that caused it; `None`: the start or a
    /// deadline).
    pub compute_by_round: std::collections::BTreeMap<(NodeId, Option<u64>), Compute>,
}

impl<R> Default for SimOutcome<R> {
    fn default() -> Self {
        Self {
            rows: Vec::new(),
            final_params: None,
            traffic: Vec::new(),
            compute: Vec::new(),
            compute_by_round: Default::default(),
        }
    }
}

impl<R> SimOutcome<R> {
    /// Adds the compute node `node` spent on the inputs of one step, each with the round of
    /// the message that caused it.
    pub fn add_compute(&mut self, node: NodeId, spent: &[(Option<u64>, Compute)]) {
        for (round, c) in spent {
            if let Some(total) = self.compute.get_mut(node as usize) {
                total.add(c);
            }
            self.compute_by_round
                .entry((node, *round))
                .or_default()
                .add(c);
        }
    }

    /// Records an event a node emitted `wall` seconds into the run.
    pub fn record(&mut self, event: Event<R>, wall: f64) {
        match event {
            Event::Metrics(m) => self.rows.push((m, wall)),
            Event::Finished { params } => self.final_params = Some(params),
        }
    }
}

pub(crate) struct TaskOutput<P: Protocol> {
    pub(crate) outbox: Vec<(NodeId, Body<P::Msg>)>,
    pub(crate) events: Vec<Event<P::Metrics>>,
    pub(crate) deadlines: Vec<(u64, Duration)>,
    /// Compute spent, by the round of the input that caused it.
    compute: Vec<(Option<u64>, Compute)>,
    /// Per input, in order: where its messages, events and deadlines end in the lists above,
    /// and the FLOPs it cost.
    marks: Vec<Mark>,
}

/// The end of one input's share of a [`TaskOutput`].
struct Mark {
    outbox: usize,
    events: usize,
    deadlines: usize,
    flops: u64,
}

/// Runs the nodes of a run of protocol `P` in one process.
pub struct Simulator<P: Protocol> {
    nodes: Vec<Option<BoxNode<P>>>,
    transport: InProcessTransport<P::Msg>,
    workers: Vec<Worker<P::Trainer>>,
    timing: Option<Timing>,
    /// With simulated time, messages can arrive late (a straggler's reply after its round
    /// closed): nodes reject them and the run goes on, as across processes.
    drop_rejected: bool,
    /// Fixed waves of tasks, told to the workers' shared trainer.
    waves: Option<std::sync::Arc<dyn Waves>>,
}

/// Hands `inputs` to `node` in order. With `drop_rejected`, a message the node rejects is
/// dropped and logged, as the network runtime does, instead of ending the run.
pub(crate) fn handle<P: Protocol>(
    node: &mut dyn Node<Protocol = P>, inputs: Vec<Input<P::Msg>>,
    (trainer, meter): (&mut P::Trainer, &Meter), drop_rejected: bool,
) -> EngineResult<TaskOutput<P>> {
    let (mut outbox, mut events, mut deadlines) = (Vec::new(), Vec::new(), Vec::new());
    let (mut compute, mut marks) = (Vec::new(), Vec::new());
    for input in inputs {
        // Metered per input, so compute is attributed to the round that caused it.
        let round = input.round();
        let mut ctx = NodeCtx::new(&mut outbox, &mut events, &mut *trainer);
        let applied = input.apply(node, &mut ctx);
        // Read (and reset) the meter whatever the outcome, so nothing carries over.
        let (spent, _) = meter.take();
        match applied {
            Err(e @ EngineError::Rejected { .. }) if drop_rejected => {
                tracing::info!("simulated time: dropped a message: {e}");
            }
            other => other?,
        }
        deadlines.extend(ctx.take_deadlines());
        if !spent.is_zero() {
            compute.push((round, spent));
        }
        marks.push(Mark {
            outbox: outbox.len(),
            events: events.len(),
            deadlines: deadlines.len(),
            flops: spent.flops,
        });
    }
    Ok(TaskOutput {
        outbox,
        events,
        deadlines,
        compute,
        marks,
    })
}

impl<P: Protocol<Metrics: Metrics, Trainer: TrainerObject>> Simulator<P> {
    /// A simulator over `nodes` (ids must be 0..n in order) with at least one worker.
    pub fn new(nodes: Vec<BoxNode<P>>, workers: Vec<Worker<P::Trainer>>) -> EngineResult<Self> {
        if workers.is_empty() {
            return Err(EngineError::Driver(
                "the simulator needs at least one worker".into(),
            ));
        }
        if let Some((i, n)) = nodes
            .iter()
            .enumerate()
            .find(|(i, n)| n.id() as usize != *i)
        {
            return Err(EngineError::Driver(format!(
                "node at position {i} has id {}",
                n.id()
            )));
        }
        Ok(Self {
            nodes: nodes.into_iter().map(Some).collect(),
            transport: InProcessTransport::new(),
            workers,
            timing: None,
            drop_rejected: false,
            waves: None,
        })
    }

    /// Runs tasks in fixed waves, telling `waves` (see [`Waves`]).
    pub fn with_waves(mut self, waves: Option<std::sync::Arc<dyn Waves>>) -> Self {
        self.waves = waves;
        self
    }

    /// Keeps simulated time with `timing` (see [`timed`]).
    pub fn with_timing(mut self, timing: Option<Timing>) -> Self {
        self.timing = timing;
        self
    }

    /// Runs until no message is left, calling `observer` for every event as it happens.
    pub fn run(
        &mut self, observer: &mut dyn FnMut(&Event<P::Metrics>),
    ) -> EngineResult<SimOutcome<P::Metrics>> {
        if let Some(timing) = self.timing.take() {
            self.drop_rejected = true;
            let out = self.run_timed(&timing, observer);
            self.drop_rejected = false;
            self.timing = Some(timing);
            return out;
        }
        let t0 = Instant::now();
        let mut outcome = SimOutcome {
            compute: vec![Compute::default(); self.nodes.len()],
            ..SimOutcome::default()
        };
        let ids: Vec<NodeId> = (0..self.nodes.len() as NodeId).collect();
        let mut tasks: Vec<(NodeId, Vec<Input<P::Msg>>)> =
            ids.iter().map(|&i| (i, vec![Input::Start])).collect();
        // Pending deadlines on the virtual clock: (due, sequence number, node, token).
        let mut timers: BinaryHeap<Reverse<(Duration, u64, NodeId, u64)>> = BinaryHeap::new();
        let (mut now, mut seq) = (Duration::ZERO, 0u64);
        while !tasks.is_empty() {
            let outputs = self.run_tasks(tasks)?;
            for (from, out) in outputs {
                outcome.add_compute(from, &out.compute);
                for (token, after) in out.deadlines {
                    timers.push(Reverse((now + after, seq, from, token)));
                    seq += 1;
                }
                for ev in out.events {
                    observer(&ev);
                    outcome.record(ev, t0.elapsed().as_secs_f64());
                }
                for (to, body) in out.outbox {
                    if to as usize >= self.nodes.len() {
                        return Err(EngineError::Driver(format!(
                            "node {from} sent a message to unknown node {to}"
                        )));
                    }
                    self.transport.send(Envelope { from, to, body });
                }
            }
            let mut by_node: Vec<Vec<Envelope<P::Msg>>> =
                (0..self.nodes.len()).map(|_| Vec::new()).collect();
            for env in self.transport.drain() {
                by_node[env.to as usize].push(env);
            }
            tasks = by_node
                .into_iter()
                .enumerate()
                .filter(|(_, inbox)| !inbox.is_empty())
                .map(|(i, inbox)| {
                    let inputs = inbox
                        .into_iter()
                        .map(|e| Input::arrived(e.from, e.body))
                        .collect();
                    (i as NodeId, inputs)
                })
                .collect();
            if tasks.is_empty() {
                if let Some(Reverse((due, _, node, token))) = timers.pop() {
                    now = due;
                    tasks.push((node, vec![Input::Deadline(token)]));
                }
            }
        }
        outcome.traffic = ids.iter().map(|&i| self.transport.traffic(i)).collect();
        Ok(outcome)
    }

    /// Handles each task's node; returns outputs in node-id order.
    #[allow(clippy::type_complexity)]
    fn run_tasks(
        &mut self, tasks: Vec<(NodeId, Vec<Input<P::Msg>>)>,
    ) -> EngineResult<Vec<(NodeId, TaskOutput<P>)>> {
        let mut work = Vec::with_capacity(tasks.len());
        for (id, what) in tasks {
            let node = self.nodes[id as usize]
                .take()
                .ok_or_else(|| EngineError::Driver(format!("node {id} is missing")))?;
            work.push(Task {
                id,
                node,
                what,
                drop_rejected: self.drop_rejected,
            });
        }
        let results: Vec<Done<P>> = if let Some(waves) = self.waves.clone() {
            self.run_waves(work, waves.as_ref())?
        } else if work.len() == 1 || self.workers.len() == 1 {
            let Worker { trainer, meter, .. } = &mut self.workers[0];
            work.into_iter()
                .map(|t| t.run((trainer.as_mut(), meter)))
                .collect()
        } else {
            let n = work.len();
            let queue: Vec<Mutex<Option<Task<P>>>> =
                work.into_iter().map(|w| Mutex::new(Some(w))).collect();
            let done: Vec<Mutex<Option<Done<P>>>> = (0..n).map(|_| Mutex::new(None)).collect();
            let next = AtomicUsize::new(0);
            std::thread::scope(|s| {
                for worker in self.workers.iter_mut() {
                    let (queue, done, next) = (&queue, &done, &next);
                    s.spawn(move || {
                        let Worker {
                            trainer,
                            meter,
                            pool,
                        } = worker;
                        pool.install(|| loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            if i >= n {
                                break;
                            }
                            let taken = queue[i].lock().ok().and_then(|mut q| q.take());
                            if let Some(task) = taken {
                                let d = task.run((trainer.as_mut(), meter));
                                if let Ok(mut slot) = done[i].lock() {
                                    *slot = Some(d);
                                }
                            }
                        });
                    });
                }
            });
            done.into_iter()
                .map(|m| {
                    m.into_inner()
                        .ok()
                        .flatten()
                        .ok_or_else(|| EngineError::Driver("a worker thread failed".into()))
                })
                .collect::<Result<_, _>>()?
        };
        let mut outputs = Vec::with_capacity(results.len());
        for Done { id, node, result } in results {
            self.nodes[id as usize] = Some(node);
            outputs.push((id, result?));
        }
        Ok(outputs)
    }
}

impl<P: Protocol<Metrics: Metrics, Trainer: TrainerObject>> Simulator<P> {
    /// Runs `work` in waves of at most one task per worker, task `i` of a wave on worker `i`,
    /// telling `waves` when each begins and ends. A wave of one runs on this thread (the
    /// global rayon pool: a server aggregating uses every core).
    fn run_waves(&mut self, work: Vec<Task<P>>, waves: &dyn Waves) -> EngineResult<Vec<Done<P>>> {
        let mut done = Vec::with_capacity(work.len());
        let mut work = work.into_iter().peekable();
        let width = self.workers.len();
        while work.peek().is_some() {
            let wave: Vec<Task<P>> = work.by_ref().take(width).collect();
            waves.begin(wave.len());
            if let [_] = wave.as_slice() {
                let Worker { trainer, meter, .. } = &mut self.workers[0];
                for task in wave {
                    let _end = TaskEnd(waves);
                    done.push(task.run((trainer.as_mut(), meter)));
                }
                continue;
            }
            let ran: Vec<Option<Done<P>>> = std::thread::scope(|s| {
                let handles: Vec<_> = wave
                    .into_iter()
                    .zip(self.workers.iter_mut())
                    .map(|(task, worker)| {
                        s.spawn(move || {
                            let _end = TaskEnd(waves);
                            let Worker {
                                trainer,
                                meter,
                                pool,
                            } = worker;
                            pool.install(|| task.run((trainer.as_mut(), meter)))
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().ok()).collect()
            });
            for d in ran {
                done.push(d.ok_or_else(|| EngineError::Driver("a worker thread failed".into()))?);
            }
        }
        Ok(done)
    }
}

/// One node's share of a delivery step.
struct Task<P: Protocol> {
    id: NodeId,
    node: BoxNode<P>,
    what: Vec<Input<P::Msg>>,
    drop_rejected: bool,
}

/// A handled task: the node goes back to the simulator with its output.
struct Done<P: Protocol> {
    id: NodeId,
    node: BoxNode<P>,
    result: EngineResult<TaskOutput<P>>,
}

impl<P: Protocol> Task<P> {
    fn run(mut self, trainer: (&mut P::Trainer, &Meter)) -> Done<P> {
        let result = handle(self.node.as_mut(), self.what, trainer, self.drop_rejected);
        Done {
            id: self.id,
            node: self.node,
            result,
        }
    }
}
