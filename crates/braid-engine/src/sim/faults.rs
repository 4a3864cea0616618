//! The fault-schedule simulator: the real nodes of a run under a seeded schedule of faults,
//! with the run's invariants checked against a run without faults.
//!
//! In the spirit of FoundationDB's deterministic simulation and TigerBeetle's VOPR: one thread,
//! simulated time, and one seed that decides everything that goes wrong:
//! - every message is delayed by a random time (so messages overtake each other), some are
//!   delivered twice, and (with [`FaultPlan::drop`]) some never arrive;
//! - a node may crash when an input reaches it: everything in its memory is lost, and after
//!   [`FaultPlan::restart_after_ms`] it restarts from its last checkpoint (written whenever
//!   its durable state changed, as `braid node` does) with a rejoin, as `braid node --resume`
//!   does. The message it was handling was not acknowledged (the runtime acknowledges a
//!   message once it is handled and checkpointed), so it is delivered again after the
//!   restart, as are the messages sent to it while it is down: the network runtime's retries
//!   deliver them.
//!
//! [`check`] compares a faulty run with the same run without faults: it must end with a final
//! model, report the same rounds (or steps) once each, in order (no completed round lost or
//! counted twice, across crashes of the reporting node), and, where the config sets no
//! deadlines and nothing is dropped, give the same metrics and final model bit for bit (so
//! delays, duplicates, reorderings and crashes change nothing; an aggregate over an update
//! counted twice or lost would). The same seed gives the same schedule and run
//! ([`run_with_faults`] is deterministic). `braid faults` runs many seeds and prints the
//! schedule of any that breaks an invariant.

use std::collections::BTreeMap;
use std::time::Duration;

use rand::Rng;

use crate::algorithm::{Algorithm, MetricsOf, MsgOf, NodeOf, TrainerOf};
use crate::node::{EngineError, EngineResult, Event, Input, Metrics, NodeState};
use crate::prepared::{BurnTrainer, Prepared};
use crate::trainer::TrainerObject;
use crate::wire::{Body, NodeId};

/// What goes wrong in a run, and how often.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FaultPlan {
    /// Largest delay of a message, in milliseconds of simulated time (uniform from 0).
    pub max_delay_ms: u64,
    /// Chance that a message is delivered twice (the copy with its own delay).
    pub duplicate: f64,
    /// Chance that a message is lost for good (a run survives this only with deadlines).
    pub drop: f64,
    /// Chance that a node crashes when an input reaches it.
    pub crash: f64,
    /// Chance that an authorized halt stops the whole run when an input reaches a node: every
    /// node stops with its checkpoint as it stands (what `braid node` writes on a halt), the
    /// messages in flight stay unacknowledged, and after [`FaultPlan::restart_after_ms`] every
    /// node resumes (`braid launch --resume`). Counts as one of the [`FaultPlan::max_crashes`].
    pub halt: f64,
    /// Simulated milliseconds before a crashed node restarts.
    pub restart_after_ms: u64,
    /// Most crashes in one run.
    pub max_crashes: usize,
    /// Most inputs handled before the run counts as hung.
    pub max_steps: u64,
}

impl Default for FaultPlan {
    fn default() -> Self {
        Self {
            max_delay_ms: 200,
            duplicate: 0.05,
            drop: 0.0,
            crash: 0.02,
            halt: 0.0,
            restart_after_ms: 500,
            max_crashes: 3,
            max_steps: 200_000,
        }
    }
}

impl FaultPlan {
    /// No faults at all: the reference run.
    pub fn none() -> Self {
        Self {
            max_delay_ms: 0,
            duplicate: 0.0,
            drop: 0.0,
            crash: 0.0,
            halt: 0.0,
            restart_after_ms: 0,
            max_crashes: 0,
            ..Self::default()
        }
    }
}

/// What a run under faults produced.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultOutcome<R> {
    /// The reporting node's rows, as its reports stand at the end (restored from its
    /// checkpoint where it crashed).
    pub rows: Vec<R>,
    /// The final model, if the run finished.
    pub final_params: Option<Vec<f32>>,
    /// Every fault, in order, with its simulated time: the schedule to replay.
    pub schedule: Vec<String>,
    /// Inputs handled.
    pub steps: u64,
}

/// Something due at a simulated time.
enum Due<M> {
    Start(NodeId),
    Deliver {
        to: NodeId,
        from: NodeId,
        body: Body<M>,
    },
    Deadline {
        node: NodeId,
        token: u64,
        life: u64,
    },
    Restart(NodeId),
}

/// One node's durable copy: its state and the rows it had reported, as of its last change.
struct Disk<R> {
    state: Option<NodeState>,
    rows: Vec<R>,
    version: u64,
}

/// Runs the nodes of `prepared` under the faults `plan` draws from `seed`.
pub fn run_with_faults<A: Algorithm>(
    prepared: &Prepared, settings: &A::Config, plan: &FaultPlan, seed: u64,
) -> EngineResult<FaultOutcome<MetricsOf<A>>> {
    let mut rng = braid_core::seed::rng(seed, &[0xfa17]);
    let build = || -> EngineResult<Vec<Option<NodeOf<A>>>> {
        let mut nodes = A::build(prepared, settings)?;
        for n in nodes.iter_mut() {
            n.keep_checkpoints();
        }
        Ok(nodes.into_iter().map(Some).collect())
    };
    let mut nodes = build()?;
    let n = nodes.len();
    let trainer = <TrainerOf<A>>::from_full(BurnTrainer::new(prepared)?);
    let (mut trainer, meter) = crate::trainer::metered(trainer);
    let mut queue: BTreeMap<(u64, u64), Due<MsgOf<A>>> = BTreeMap::new();
    let mut seq = 0u64;
    let mut at = |queue: &mut BTreeMap<(u64, u64), Due<MsgOf<A>>>, t: u64, due: Due<MsgOf<A>>| {
        queue.insert((t, seq), due);
        seq += 1;
    };
    for id in 0..n as NodeId {
        at(&mut queue, 0, Due::Start(id));
    }
    let mut life = vec![0u64; n];
    let mut down_until: Vec<Option<u64>> = vec![None; n];
    let mut disk: Vec<Disk<MetricsOf<A>>> = (0..n)
        .map(|_| Disk {
            state: None,
            rows: Vec::new(),
            version: 0,
        })
        .collect();
    let mut rows: Vec<Vec<MetricsOf<A>>> = vec![Vec::new(); n];
    let mut out = FaultOutcome {
        rows: Vec::new(),
        final_params: None,
        schedule: Vec::new(),
        steps: 0,
    };
    let mut crashes = 0usize;
    while let Some(((now, _), due)) = queue.pop_first() {
        out.steps += 1;
        if out.steps > plan.max_steps {
            return Err(EngineError::Driver(format!(
                "hung: {} inputs handled without the run ending",
                plan.max_steps
            )));
        }
        let (node, input) = match due {
            Due::Start(id) => (id, Input::Start),
            Due::Restart(id) => {
                if down_until[id as usize].is_some_and(|back| back > now) {
                    continue; // a halt after the crash moved the restart later
                }
                let mut fresh = build()?;
                let mut restarted = fresh[id as usize]
                    .take()
                    .ok_or_else(|| EngineError::Driver(format!("node {id} is missing")))?;
                if let Some(state) = disk[id as usize].state.clone() {
                    restarted.load_state(state)?;
                }
                restarted.rejoin();
                nodes[id as usize] = Some(restarted);
                rows[id as usize] = disk[id as usize].rows.clone();
                // A new process has written no checkpoint yet (the runtime starts its count
                // of saved versions afresh): its first change is saved whatever its number.
                disk[id as usize].version = 0;
                down_until[id as usize] = None;
                out.schedule
                    .push(format!("{now} ms: node {id} restarts from its checkpoint"));
                (id, Input::Start)
            }
            Due::Deadline {
                node,
                token,
                life: l,
            } => {
                if l != life[node as usize] || down_until[node as usize].is_some() {
                    continue; // set by a life that crashed
                }
                (node, Input::Deadline(token))
            }
            Due::Deliver { to, from, body } => {
                if let Some(back) = down_until[to as usize] {
                    // The sender's transport keeps retrying until the receiver is back.
                    let t = back.max(now) + 1 + rng.random_range(0..=plan.max_delay_ms);
                    at(&mut queue, t, Due::Deliver { to, from, body });
                    continue;
                }
                let halt =
                    crashes < plan.max_crashes && plan.halt > 0.0 && rng.random_bool(plan.halt);
                let crash = !halt
                    && crashes < plan.max_crashes
                    && plan.crash > 0.0
                    && rng.random_bool(plan.crash);
                if halt || crash {
                    crashes += 1;
                    let back = now + plan.restart_after_ms;
                    let down: Vec<usize> = if halt {
                        (0..n).collect()
                    } else {
                        vec![to as usize]
                    };
                    for id in down {
                        // A node already down past `back` resumes when it was to.
                        if down_until[id].is_some_and(|t| t >= back) {
                            continue;
                        }
                        life[id] += 1;
                        nodes[id] = None;
                        down_until[id] = Some(back);
                        at(&mut queue, back, Due::Restart(id as NodeId));
                    }
                    let kind = body.kind();
                    out.schedule.push(if halt {
                        format!("{now} ms: an authorized halt stops every node as a {kind} from node {from} reaches node {to} (unacknowledged: sent again)")
                    } else {
                        format!("{now} ms: node {to} crashes as a {kind} from node {from} reaches it (unacknowledged: sent again)")
                    });
                    let t = back + 1 + rng.random_range(0..=plan.max_delay_ms);
                    at(&mut queue, t, Due::Deliver { to, from, body });
                    continue;
                }
                (to, Input::arrived(from, body))
            }
        };
        let Some(mut handled) = nodes[node as usize].take() else {
            continue;
        };
        let result = crate::sim::handle(
            handled.as_mut(),
            vec![input],
            (trainer.as_mut(), &meter),
            true,
        );
        let task = match result {
            Ok(t) => t,
            Err(e) => {
                return Err(EngineError::Driver(format!(
                    "node {node} failed at {now} ms: {e}"
                )))
            }
        };
        for ev in task.events {
            match ev {
                Event::Metrics(m) => rows[node as usize].push(m),
                Event::Finished { params } => out.final_params = Some(params),
            }
        }
        for (token, after) in task.deadlines {
            let t = now + duration_ms(after);
            at(
                &mut queue,
                t,
                Due::Deadline {
                    node,
                    token,
                    life: life[node as usize],
                },
            );
        }
        for (to, body) in task.outbox {
            if to as usize >= n {
                return Err(EngineError::Driver(format!(
                    "node {node} sent a message to unknown node {to}"
                )));
            }
            if plan.drop > 0.0 && rng.random_bool(plan.drop) {
                out.schedule.push(format!(
                    "{now} ms: a {} from node {node} to node {to} is lost",
                    body.kind()
                ));
                continue;
            }
            if plan.duplicate > 0.0 && rng.random_bool(plan.duplicate) {
                let t = now + rng.random_range(0..=plan.max_delay_ms);
                out.schedule.push(format!(
                    "{now} ms: a {} from node {node} to node {to} is delivered twice",
                    body.kind()
                ));
                at(
                    &mut queue,
                    t,
                    Due::Deliver {
                        to,
                        from: node,
                        body: body.clone(),
                    },
                );
            }
            let t = now + rng.random_range(0..=plan.max_delay_ms);
            at(
                &mut queue,
                t,
                Due::Deliver {
                    to,
                    from: node,
                    body,
                },
            );
        }
        // The checkpoint `braid node` would write now.
        let v = handled.state_version();
        let d = &mut disk[node as usize];
        if v != d.version {
            if let Some(state) = handled.save_state() {
                d.state = Some(state);
                d.rows = rows[node as usize].clone();
            }
            d.version = v;
        }
        nodes[node as usize] = Some(handled);
    }
    out.rows = rows.into_iter().find(|r| !r.is_empty()).unwrap_or_default();
    Ok(out)
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX / 4)
}

/// The invariants of a run under faults against the same run without them; the broken ones.
///
/// `exact`: the faults were only delays, duplicates and crashes and the config sets no
/// deadlines, so the metrics and final model must be the fault-free run's bit for bit.
pub fn check<R: Metrics>(
    reference: &FaultOutcome<R>, faulty: &FaultOutcome<R>, exact: bool,
) -> Vec<String> {
    let mut broken = Vec::new();
    if reference.final_params.is_some() && faulty.final_params.is_none() {
        broken.push("the run never produced its final model".to_string());
    }
    let rounds =
        |o: &FaultOutcome<R>| -> Vec<u64> { o.rows.iter().map(|r| r.progress().0).collect() };
    let (want, got) = (rounds(reference), rounds(faulty));
    if let Some(w) = got.windows(2).find(|w| w[1] <= w[0]) {
        broken.push(format!(
            "round {} reported after round {}: a round counted twice or out of order",
            w[1], w[0]
        ));
    }
    if got != want {
        let lost: Vec<&u64> = want.iter().filter(|r| !got.contains(r)).collect();
        broken.push(format!(
            "reported rounds differ from the fault-free run's (lost: {lost:?}; reported {} of {})",
            got.len(),
            want.len()
        ));
    }
    if exact {
        // What was learned: the accuracy at every reported round and the final model (traffic
        // counts may differ: a restarted node is sent its request again).
        let learned = |o: &FaultOutcome<R>| -> Vec<(u64, Option<u64>)> {
            o.rows
                .iter()
                .map(|r| {
                    let (round, acc) = r.progress();
                    (round, acc.map(f64::to_bits))
                })
                .collect()
        };
        let (want, got) = (learned(reference), learned(faulty));
        if let Some(at) = (0..want.len().max(got.len())).find(|&i| want.get(i) != got.get(i)) {
            broken.push(format!(
                "accuracy differs from the fault-free run's at report {at}: {:?} against {:?}",
                faulty.rows.get(at).map(|r| r.progress()),
                reference.rows.get(at).map(|r| r.progress())
            ));
        }
        if faulty.final_params != reference.final_params {
            broken.push("the final model differs from the fault-free run's".to_string());
        }
    }
    broken
}

/// Whether a run of `config` under `plan` must equal its fault-free run bit for bit: nothing
/// is dropped and no deadline is set (a deadline that fires under delays changes what is
/// averaged, by design). A deadline is any `*_timeout_s` setting outside `[network]`
/// (`algorithm.round_timeout_s`, `decentralized.gossip_timeout_s`, `split.step_timeout_s`,
/// `mutual.round_timeout_s`, and those of algorithms added later).
pub fn exact_expected(config: &crate::config::ExperimentConfig, plan: &FaultPlan) -> bool {
    fn has_deadline(t: &toml::Table) -> bool {
        t.iter().any(|(k, v)| match v {
            toml::Value::Table(inner) => k != "network" && has_deadline(inner),
            _ => k.ends_with("_timeout_s"),
        })
    }
    let deadlines =
        toml::from_str::<toml::Table>(&config.to_toml()).map_or(true, |t| has_deadline(&t));
    plan.drop == 0.0 && !deadlines
}

/// A seed whose run broke invariants: what broke, and the schedule that broke it.
#[derive(Debug, Clone, PartialEq)]
pub struct Broken {
    /// The seed (replay it with the same config and plan).
    pub seed: u64,
    /// The invariants it broke (or the error it ended with).
    pub broken: Vec<String>,
    /// Its faults, in order.
    pub schedule: Vec<String>,
}

/// Runs `seeds` under `plan` and checks each against the fault-free run (and, for every
/// `replay_every`-th seed, that running it again gives the same outcome); `progress` sees
/// each seed as it ends. Returns the seeds that broke an invariant.
pub fn explore<A: Algorithm>(
    prepared: &Prepared, settings: &A::Config, plan: &FaultPlan, seeds: std::ops::Range<u64>,
    replay_every: u64, progress: &mut dyn FnMut(u64, bool),
) -> EngineResult<Vec<Broken>> {
    let reference = run_with_faults::<A>(prepared, settings, &FaultPlan::none(), 0)?;
    let exact = exact_expected(&prepared.config, plan) && !A::ARRIVAL_ORDER_MATTERS;
    let mut failed = Vec::new();
    for seed in seeds {
        let mut broken = Vec::new();
        let mut schedule = Vec::new();
        match run_with_faults::<A>(prepared, settings, plan, seed) {
            Ok(o) => {
                broken.extend(check(&reference, &o, exact));
                if replay_every > 0 && seed % replay_every == 0 {
                    match run_with_faults::<A>(prepared, settings, plan, seed) {
                        Ok(again) if again == o => {}
                        Ok(_) => broken.push("the same seed gave another run".into()),
                        Err(e) => broken.push(format!("the replay failed: {e}")),
                    }
                }
                schedule = o.schedule;
            }
            Err(e) => broken.push(e.to_string()),
        }
        progress(seed, broken.is_empty());
        if !broken.is_empty() {
            failed.push(Broken {
                seed,
                broken,
                schedule,
            });
        }
    }
    Ok(failed)
}
