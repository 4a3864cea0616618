//! The decentralized-SGD peers and monitor in the simulator, driven by a pure-Rust fake
//! trainer: gossip preserves the average, complete gossip is an exact global average, local
//! only sends nothing, bytes are counted per peer, outsiders cannot inject parameters, and
//! results do not depend on the number of worker threads.

use braid_engine::algorithms::dsgd::DsgdProtocol;
use std::sync::{Arc, Mutex};

use braid_core::lr_schedule::LrSchedule;
use braid_core::schedule::{Budget, CommSchedule};
use braid_core::topology::{MixingRule, Topology, TopologyConfig};
use braid_engine::algorithms::dsgd::PeerTrainer;
use braid_engine::algorithms::dsgd::{
    DsgdCtx, DsgdMonitor, DsgdPeer, DsgdSettings, GossipMetrics, Msg,
};
use braid_engine::node::{BoxNode, EngineError, EngineResult, Event, Node, NodeCtx};
use braid_engine::sim::{SimOutcome, Simulator, Worker};
use braid_engine::trainer::{Evaluate, TrainSteps, Trainer};
use braid_engine::wire::{Body, Control, NodeId, Tensor};
use braid_nn::{EvalOutcome, OptimizerState, TrainOutcome};

const P: usize = 6;

/// A step pulls every parameter `10% * lr_scale` of the way toward the batch's mean sample
/// index (or does nothing if `frozen`); "accuracy" is the first parameter / 100. Every call's
/// (steps, lr_scale) goes to `calls`.
struct Fake {
    frozen: bool,
    calls: Arc<Mutex<Vec<(usize, f64)>>>,
}

impl Fake {
    fn new(frozen: bool) -> Self {
        Self {
            frozen,
            calls: Arc::default(),
        }
    }
}

impl Trainer for Fake {}

impl TrainSteps for Fake {
    fn train_batches(
        &mut self, params: &[f32], batches: &[Vec<usize>], _state: &mut OptimizerState,
        lr_scale: f64,
    ) -> EngineResult<TrainOutcome> {
        self.calls.lock().unwrap().push((batches.len(), lr_scale));
        let mut p = params.to_vec();
        if !self.frozen {
            for b in batches {
                let target = b.iter().sum::<usize>() as f32 / b.len() as f32;
                for v in &mut p {
                    *v += 0.1 * lr_scale as f32 * (target - *v);
                }
            }
        }
        Ok(TrainOutcome {
            params: p,
            samples: batches.iter().map(Vec::len).sum(),
            steps: batches.len(),
            mean_loss: 1.0,
        })
    }
}

impl Evaluate for Fake {
    fn evaluate(&mut self, params: &[f32]) -> EngineResult<EvalOutcome> {
        Ok(EvalOutcome {
            accuracy: f64::from(params[0]) / 100.0,
            loss: 0.0,
            samples: 1,
        })
    }

    fn evaluate_sample(&mut self, params: &[f32], _: usize) -> EngineResult<EvalOutcome> {
        self.evaluate(params)
    }
}

fn settings(topology: TopologyConfig, every: u64, budget: Budget, steps: u64) -> DsgdSettings {
    let mut rng = braid_core::seed::rng(1, &[]);
    let topology = Topology::new(topology, 8, &mut rng).unwrap();
    DsgdSettings {
        mixing: topology.default_mixing(),
        topology,
        schedule: CommSchedule { every, budget },
        total_steps: steps,
        eval_every: 4,
        eval_samples: 10,
        batch_size: 4,
        num_params: P,
        lr_schedule: LrSchedule::Constant,
        gossip_deadline: None,
        seed: 3,
        gossip_compression: None,
    }
}

/// Peer `i` holds samples `[20 i, 20 i + 20)` and starts from parameters all equal to `10 i`.
fn nodes(s: &Arc<DsgdSettings>) -> Vec<BoxNode<DsgdProtocol>> {
    let n = s.peers();
    let mut v: Vec<BoxNode<DsgdProtocol>> = (0..n)
        .map(|i| {
            Box::new(DsgdPeer::new(
                i as NodeId,
                Arc::clone(s),
                (20 * i..20 * i + 20).collect(),
                vec![10.0 * i as f32; P],
            )) as BoxNode<DsgdProtocol>
        })
        .collect();
    v.push(Box::new(DsgdMonitor::new(Arc::clone(s))));
    v
}

fn run(s: DsgdSettings, workers: usize, frozen: bool) -> SimOutcome<GossipMetrics> {
    let s = Arc::new(s);
    let w = (0..workers)
        .map(|_| Worker::new(Box::new(Fake::new(frozen)) as Box<dyn PeerTrainer>).unwrap())
        .collect();
    Simulator::new(nodes(&s), w)
        .unwrap()
        .run(&mut |_| {})
        .unwrap()
}

fn points(o: &SimOutcome<GossipMetrics>) -> Vec<GossipMetrics> {
    o.rows.iter().map(|(m, _)| m.clone()).collect()
}

#[test]
fn doubly_stochastic_gossip_preserves_the_average_and_contracts() {
    // No training: only gossip moves the models. Ring with Metropolis-Hastings weights.
    let o = run(
        settings(TopologyConfig::Ring, 1, Budget::Fixed { r: 1.0 }, 12),
        2,
        true,
    );
    let pts = points(&o);
    assert_eq!(
        pts.iter().map(|m| m.step).collect::<Vec<_>>(),
        vec![0, 4, 8, 12]
    );
    for m in &pts {
        // The merged model is the average of the starting points 0, 10, ..., 70 = 35.
        assert!((m.merged_accuracy - 0.35).abs() < 1e-5, "{m:?}");
    }
    for w in pts.windows(2) {
        assert!(w[1].consensus < w[0].consensus, "{:?}", w);
    }
    for v in o.final_params.unwrap() {
        assert!((v - 35.0).abs() < 1e-3);
    }
    // Every peer sends its parameters to its two ring neighbours each round.
    let msg = Body::Msg(Msg::Gossip {
        round: 1,
        model: Tensor::exact(vec![0.0; P]),
    })
    .encoded_len() as f64;
    assert_eq!(pts[3].bytes_per_peer, 12.0 * 2.0 * msg);
    assert_eq!(pts[3].comm_rounds, 12);
}

#[test]
fn quantized_gossip_costs_its_encoded_bytes_and_still_reaches_consensus() {
    use braid_core::compress::{encoded_len, Compression, Quantize, Sparsify};
    let q = Compression {
        sparsify: Sparsify::None,
        quantize: Quantize::Int8 { block: 3 },
    };
    let mut s = settings(TopologyConfig::Ring, 1, Budget::Fixed { r: 1.0 }, 12);
    s.gossip_compression = Some(q);
    let o = run(s.clone(), 2, true);
    let pts = points(&o);
    let msg = Body::Msg(Msg::Gossip {
        round: 1,
        model: Tensor::packed(vec![0; encoded_len(P, &q)]),
    })
    .encoded_len() as f64;
    assert_eq!(pts[3].bytes_per_peer, 12.0 * 2.0 * msg);
    // Neighbours see rounded models, so the average drifts a little, but the peers agree.
    for w in pts.windows(2) {
        assert!(w[1].consensus < w[0].consensus, "{:?}", w);
    }
    for m in &pts {
        assert!((m.merged_accuracy - 0.35).abs() < 0.01, "{m:?}");
    }
    assert_eq!(
        run(s, 1, true).final_params,
        o.final_params,
        "deterministic"
    );
    // A packed model of the wrong size is refused.
    let mut peer = DsgdPeer::new(
        1,
        Arc::new(settings(
            TopologyConfig::Ring,
            1,
            Budget::Fixed { r: 1.0 },
            12,
        )),
        (0..20).collect(),
        vec![0.0; P],
    );
    let bad = braid_core::compress::encode(&[0.0; P + 1], &q, &mut braid_core::seed::rng(1, &[]))
        .unwrap();
    let mut t = Fake::new(true);
    let (mut out, mut ev) = (Vec::new(), Vec::new());
    let r = peer.on_message(
        0,
        Msg::Gossip {
            round: 1,
            model: Tensor::packed(bad),
        },
        &mut NodeCtx::new(&mut out, &mut ev, &mut t as &mut dyn PeerTrainer),
    );
    assert!(matches!(r, Err(EngineError::Rejected { .. })), "{r:?}");
}

#[test]
fn complete_gossip_is_an_exact_global_average() {
    let o = run(
        settings(TopologyConfig::Random, 2, Budget::Fixed { r: 7.0 }, 8),
        2,
        false,
    );
    // After each communication round every local model equals the merge.
    for m in points(&o).iter().skip(1) {
        assert!(m.consensus < 1e-6, "{m:?}");
        assert!((m.local_mean - m.merged_accuracy).abs() < 1e-5);
        assert!(m.local_max - m.local_min < 1e-5);
    }
}

#[test]
fn local_only_sends_nothing_and_merges_at_the_end() {
    let o = run(
        settings(TopologyConfig::Random, 1, Budget::LocalOnly, 8),
        1,
        false,
    );
    let last = points(&o).pop().unwrap();
    assert_eq!(last.bytes_per_peer, 0.0);
    assert!(last.consensus > 1.0);
    assert!(last.local_max > last.local_min);
    // No gossip message at all; the only traffic is the snapshots to the monitor.
    for t in &o.traffic[..8] {
        assert_eq!(t.messages_sent, 3, "snapshots at steps 0, 4 and 8");
    }
}

#[test]
fn windowed_budget_communicates_only_inside_the_window() {
    let budget = Budget::Window {
        r_start: 0.0,
        r_end: 7.0,
        point1: 0.5,
        width: 0.3125,
    };
    let o = run(settings(TopologyConfig::Random, 1, budget, 16), 2, false);
    let pts = points(&o);
    let by_step = |s: u64| pts.iter().find(|m| m.step == s).unwrap();
    // Rounds after steps 8..=12 fall in the window (p = 0.5 ..= 0.75).
    assert_eq!(by_step(4).bytes_per_peer, 0.0, "nothing before the window");
    assert!(by_step(8).bytes_per_peer > 0.0);
    assert!(by_step(12).bytes_per_peer > by_step(8).bytes_per_peer);
    assert!(
        by_step(12).consensus < 1e-6,
        "exact average at the end of the window"
    );
    assert_eq!(by_step(16).bytes_per_peer, by_step(12).bytes_per_peer);
}

#[test]
fn results_do_not_depend_on_worker_threads() {
    let s = || {
        settings(
            TopologyConfig::BaseRandom {
                base: Box::new(TopologyConfig::Exponential),
            },
            1,
            Budget::Fixed { r: 1.5 },
            12,
        )
    };
    let a = run(s(), 1, false);
    let b = run(s(), 2, false);
    assert_eq!(points(&a), points(&b));
    assert_eq!(a.final_params, b.final_params);
    assert_eq!(a.traffic, b.traffic);
}

#[test]
fn metropolis_hastings_on_a_directed_topology_is_refused() {
    let mut s = settings(TopologyConfig::Random, 1, Budget::Fixed { r: 1.0 }, 4);
    s.mixing = MixingRule::MetropolisHastings;
    match s.validate() {
        Err(EngineError::Invalid(e)) => {
            assert_eq!(e.field, "decentralized.mixing");
            assert_eq!(e.rule, braid_engine::error::Rule::Conflict);
        }
        other => panic!("expected a refused decentralized.mixing, got {other:?}"),
    }
}

/// Drives one peer by hand: outsiders, wrong rounds, wrong sizes and non-finite values are
/// rejected before they touch the model.
#[test]
fn a_peer_rejects_what_it_did_not_ask_for() {
    let s = Arc::new(settings(
        TopologyConfig::Ring,
        1,
        Budget::Fixed { r: 1.0 },
        4,
    ));
    let mut peer = DsgdPeer::new(0, Arc::clone(&s), (0..20).collect(), vec![0.0; P]);
    let mut trainer = Fake::new(false);
    let (mut out, mut ev) = (Vec::new(), Vec::<Event<GossipMetrics>>::new());
    {
        let mut ctx = NodeCtx::new(&mut out, &mut ev, &mut trainer as &mut dyn PeerTrainer);
        peer.on_start(&mut ctx).unwrap();
    }
    // It trained one step, sent to its ring neighbours 1 and 7, and waits for round 1.
    let sent: Vec<NodeId> = out.iter().map(|(to, _)| *to).collect();
    assert!(sent.contains(&1) && sent.contains(&7) && sent.contains(&s.monitor()));
    assert_eq!(peer.step(), 1);
    let before = peer.params().to_vec();
    let gossip = |round: u32, v: f32, n: usize| Msg::Gossip {
        round,
        model: Tensor::exact(vec![v; n]),
    };
    let mut ctx = NodeCtx::new(&mut out, &mut ev, &mut trainer as &mut dyn PeerTrainer);
    let cases: Vec<(NodeId, Msg)> = vec![
        (4, gossip(1, 1.0, P)),      // not a ring neighbour of 0
        (99, gossip(1, 1.0, P)),     // not a peer at all
        (1, gossip(0, 1.0, P)),      // round 0 does not exist
        (1, gossip(9, 1.0, P)),      // beyond the last round
        (1, gossip(1, 1.0, P + 1)),  // wrong model size
        (1, gossip(1, f32::NAN, P)), // not finite
        (
            1,
            Msg::Snapshot {
                step: 1,
                train_loss: 0.0,
                accuracy: 0.0,
                loss: 0.0,
                gossip_bytes: 0,
                model: Tensor::exact(vec![0.0; P]),
            },
        ), // a peer takes no snapshots
    ];
    for (from, p) in cases {
        let kind = braid_engine::wire::Message::kind(&p);
        let e = peer.on_message(from, p, &mut ctx).unwrap_err();
        assert!(
            matches!(e, EngineError::Rejected { .. }),
            "{kind} from {from}: {e}"
        );
    }
    assert_eq!(peer.params(), before.as_slice());
    // The two real neighbours complete round 1; a duplicate is then stale.
    peer.on_message(1, gossip(1, 1.0, P), &mut ctx).unwrap();
    assert!(peer.on_message(1, gossip(1, 1.0, P), &mut ctx).is_err());
    peer.on_message(7, gossip(1, 1.0, P), &mut ctx).unwrap();
    assert!(peer.step() >= 2, "mixed and moved on");
    assert!(peer.on_message(7, gossip(1, 1.0, P), &mut ctx).is_err());
}

#[test]
fn a_learning_rate_schedule_sets_every_steps_rate_even_between_rounds() {
    let mut s = settings(TopologyConfig::Ring, 4, Budget::Fixed { r: 2.0 }, 8);
    s.lr_schedule = LrSchedule::Linear {
        warmup: 0.0,
        final_factor: 0.0,
    };
    let s = Arc::new(s);
    let fake = Fake::new(false);
    let calls = Arc::clone(&fake.calls);
    Simulator::new(
        nodes(&s),
        vec![Worker::new(Box::new(fake) as Box<dyn PeerTrainer>).unwrap()],
    )
    .unwrap()
    .run(&mut |_| {})
    .unwrap();
    let calls = calls.lock().unwrap();
    assert_eq!(calls.len(), 8 * s.peers(), "one call per step and peer");
    assert!(calls.iter().all(|&(steps, _)| steps == 1));
    let mut scales: Vec<f64> = calls.iter().map(|&(_, x)| x).collect();
    scales.sort_by(f64::total_cmp);
    scales.dedup();
    let want: Vec<f64> = (1..=8).map(|k| f64::from(k) / 8.0).collect();
    assert_eq!(
        scales, want,
        "linear decay from 1 at step 0 to 1/8 at step 7"
    );

    // A constant schedule keeps one call per communication interval.
    let s = Arc::new(settings(
        TopologyConfig::Ring,
        4,
        Budget::Fixed { r: 2.0 },
        8,
    ));
    let fake = Fake::new(false);
    let calls = Arc::clone(&fake.calls);
    Simulator::new(
        nodes(&s),
        vec![Worker::new(Box::new(fake) as Box<dyn PeerTrainer>).unwrap()],
    )
    .unwrap()
    .run(&mut |_| {})
    .unwrap();
    assert!(calls
        .lock()
        .unwrap()
        .iter()
        .all(|&(steps, x)| steps == 4 && x == 1.0));
}

/// A peer that crashed before the run: it never sends anything and ignores what it gets.
struct Dead(NodeId);

impl Node for Dead {
    type Protocol = DsgdProtocol;

    fn id(&self) -> NodeId {
        self.0
    }
    fn on_start(&mut self, _: &mut DsgdCtx<'_>) -> EngineResult {
        Ok(())
    }
    fn on_message(&mut self, _: NodeId, _: Msg, _: &mut DsgdCtx<'_>) -> EngineResult {
        Ok(())
    }
}

#[test]
fn with_a_gossip_deadline_peers_go_on_without_a_dead_neighbour() {
    let mut s = settings(TopologyConfig::Ring, 2, Budget::Fixed { r: 2.0 }, 8);
    s.gossip_deadline = Some(std::time::Duration::from_secs(5));
    let s = Arc::new(s);
    let mut v = nodes(&s);
    v[3] = Box::new(Dead(3));
    let out = Simulator::new(
        v,
        vec![Worker::new(Box::new(Fake::new(true)) as Box<dyn PeerTrainer>).unwrap()],
    )
    .unwrap()
    .run(&mut |_| {})
    .unwrap();
    // Every evaluation point (steps 0, 4, 8) is reported, from the 7 live peers.
    let pts = points(&out);
    assert_eq!(
        pts.iter().map(|m| m.step).collect::<Vec<_>>(),
        vec![0, 4, 8]
    );
    // Frozen training: peers only mix. Live starting values are 10 i for i != 3; the merge is
    // their mean, and a missing neighbour's weight stays with the peer, so the values stay
    // within the live range.
    let merged = out.final_params.unwrap();
    let live: Vec<f32> = (0..8)
        .filter(|&i| i != 3)
        .map(|i| 10.0 * i as f32)
        .collect();
    assert!(merged.iter().all(|&x| (0.0..=70.0).contains(&x)));
    assert!(merged[0] > 0.0 && (merged[0] - live.iter().sum::<f32>() / 7.0).abs() < 10.0);
    // Peers 2 and 4 (the dead peer's ring neighbours) sent gossip every round.
    assert!(out.traffic[2].messages_sent >= 4 && out.traffic[4].messages_sent >= 4);
}

/// A peer's snapshot at `step` (a model of ones).
fn snap(step: u64) -> Msg {
    Msg::Snapshot {
        step,
        train_loss: 1.0,
        accuracy: 0.5,
        loss: 1.0,
        gossip_bytes: 0,
        model: Tensor::exact(vec![1.0; P]),
    }
}

/// The steps of the points reported in `ev`, in order.
fn reported_steps(ev: &[Event<GossipMetrics>]) -> Vec<u64> {
    ev.iter()
        .filter_map(|e| match e {
            Event::Metrics(m) => Some(m.step),
            _ => None,
        })
        .collect()
}

#[test]
fn the_monitor_reports_in_step_order_even_when_snapshots_arrive_out_of_order() {
    let mut s = settings(TopologyConfig::Ring, 2, Budget::Fixed { r: 2.0 }, 8);
    s.gossip_deadline = Some(std::time::Duration::from_secs(1));
    let s = Arc::new(s);
    let mut monitor = DsgdMonitor::new(Arc::clone(&s));
    let mut trainer = Fake::new(true);
    let (mut out, mut ev) = (Vec::new(), Vec::new());
    let mut ctx = NodeCtx::new(&mut out, &mut ev, &mut trainer as &mut dyn PeerTrainer);
    // Step 4's first snapshot arrives before any of step 0's, so its deadline comes first.
    monitor.on_message(0, snap(4), &mut ctx).unwrap();
    monitor.on_message(1, snap(0), &mut ctx).unwrap();
    monitor.on_deadline(4, &mut ctx).unwrap();
    // A snapshot for a point already reported is stale.
    let late = monitor.on_message(2, snap(0), &mut ctx);
    assert!(matches!(late, Err(EngineError::Rejected { .. })));
    drop(ctx);
    assert_eq!(reported_steps(&ev), vec![0, 4]);
}

/// Without deadlines a later point never goes before an earlier one, even when every peer's
/// snapshot of the later point comes first (a monitor restarted with nothing accepted gets
/// the snapshots held for it in any order).
#[test]
fn without_deadlines_the_monitor_waits_for_the_earlier_point() {
    let s = Arc::new(settings(
        TopologyConfig::Ring,
        2,
        Budget::Fixed { r: 2.0 },
        8,
    ));
    let mut monitor = DsgdMonitor::new(Arc::clone(&s));
    let mut trainer = Fake::new(true);
    let (mut out, mut ev) = (Vec::new(), Vec::new());
    let mut ctx = NodeCtx::new(&mut out, &mut ev, &mut trainer as &mut dyn PeerTrainer);
    for peer in 0..8 {
        monitor.on_message(peer, snap(4), &mut ctx).unwrap();
    }
    for peer in 0..8 {
        monitor.on_message(peer, snap(0), &mut ctx).unwrap();
    }
    drop(ctx);
    assert_eq!(reported_steps(&ev), vec![0, 4]);
}

/// Drives one node with one input; returns what it sent.
fn drive(
    node: &mut dyn Node<Protocol = DsgdProtocol>, trainer: &mut Fake,
    f: impl FnOnce(&mut dyn Node<Protocol = DsgdProtocol>, &mut DsgdCtx<'_>) -> EngineResult,
) -> Vec<(NodeId, Body<Msg>)> {
    let (mut out, mut ev) = (Vec::new(), Vec::<Event<GossipMetrics>>::new());
    let mut ctx = NodeCtx::new(&mut out, &mut ev, trainer as &mut dyn PeerTrainer);
    f(node, &mut ctx).unwrap();
    out
}

#[test]
fn a_restarted_peer_rejoins_from_a_live_peers_current_state() {
    let mut s = settings(TopologyConfig::Ring, 1, Budget::Fixed { r: 1.0 }, 12);
    s.gossip_deadline = Some(std::time::Duration::from_secs(1));
    let s = Arc::new(s);
    let mut trainer = Fake::new(false);
    // Peer 1 is alive: one step taken, round 1 gossiped, waiting for 0 and 2; 2 has sent.
    let mut alive = DsgdPeer::new(1, Arc::clone(&s), (20..40).collect(), vec![10.0; P]);
    drive(&mut alive, &mut trainer, |n, c| n.on_start(c));
    let p2 = Msg::Gossip {
        round: 1,
        model: Tensor::exact(vec![20.0; P]),
    };
    drive(&mut alive, &mut trainer, |n, c| n.on_message(2, p2, c));
    assert_eq!(alive.step(), 1);
    let alive_params = alive.params().to_vec();

    // Peer 0 restarts (no checkpoint): it asks every other peer, and trains nothing yet.
    let mut back = DsgdPeer::new(0, Arc::clone(&s), (0..20).collect(), vec![0.0; P]);
    back.rejoin();
    let asked = drive(&mut back, &mut trainer, |n, c| n.on_start(c));
    assert_eq!(asked.len(), 7);
    assert!(asked
        .iter()
        .all(|(_, p)| matches!(p, Body::Control(Control::JoinRequest { step: 0 }))));
    assert!(!back.finished());

    // Peer 1 answers with where it is; peer 0 takes that over and joins round 1 at once.
    let reply = drive(&mut alive, &mut trainer, |n, c| {
        n.on_control(0, Control::JoinRequest { step: 0 }, c)
    });
    let [(to, reply)] = <[_; 1]>::try_from(reply).unwrap();
    assert_eq!(to, 0);
    let Body::Control(reply) = reply else {
        panic!("not a control message: {reply:?}")
    };
    assert!(matches!(
        &reply,
        Control::JoinReply {
            step: 1,
            round: 0,
            ..
        }
    ));
    let sent = drive(&mut back, &mut trainer, |n, c| n.on_control(1, reply, c));
    assert_eq!(back.step(), 1);
    assert_eq!(back.params(), alive_params.as_slice());
    let gossip_to: Vec<NodeId> = sent
        .iter()
        .filter(|(_, p)| matches!(p, Body::Msg(Msg::Gossip { round: 1, .. })))
        .map(|(to, _)| *to)
        .collect();
    assert_eq!(gossip_to, vec![1, 7]);
    // Its round-1 gossip completes peer 1's round.
    let (_, g) = sent.into_iter().find(|(to, _)| *to == 1).unwrap();
    let Body::Msg(g) = g else {
        panic!("not gossip: {g:?}")
    };
    drive(&mut alive, &mut trainer, |n, c| n.on_message(0, g, c));
    assert!(alive.step() >= 2, "peer 1 mixed round 1 and moved on");
    // A second, late answer changes nothing.
    let late = Control::JoinReply {
        step: 5,
        round: 4,
        model: Tensor::exact(vec![99.0; P]),
    };
    drive(&mut back, &mut trainer, |n, c| n.on_control(3, late, c));
    assert_eq!(back.step(), 1);
    // Peer 7 is gone too: at the deadline peer 0 mixes with peer 1's model and goes on.
    drive(&mut back, &mut trainer, |n, c| n.on_deadline(1, c));
    assert!(back.step() >= 2);
    // A restarted peer that nobody answers goes on from its own state at the join deadline.
    let mut alone = DsgdPeer::new(5, Arc::clone(&s), (100..120).collect(), vec![0.0; P]);
    alone.rejoin();
    drive(&mut alone, &mut trainer, |n, c| n.on_start(c));
    assert_eq!(alone.step(), 0);
    drive(&mut alone, &mut trainer, |n, c| n.on_deadline(u64::MAX, c));
    assert_eq!(
        alone.step(),
        1,
        "trained its first step and waits for round 1"
    );
}

/// The messages in `out` as (to, message) pairs; control messages are left out.
fn msgs(out: Vec<(NodeId, Body<Msg>)>) -> Vec<(NodeId, Msg)> {
    out.into_iter()
        .filter_map(|(to, b)| match b {
            Body::Msg(m) => Some((to, m)),
            Body::Control(_) => None,
        })
        .collect()
}

fn gossip(round: u32, v: f32) -> Msg {
    Msg::Gossip {
        round,
        model: Tensor::exact(vec![v; P]),
    }
}

#[test]
fn a_peer_checkpoint_taken_after_any_input_resumes_it_exactly() {
    let s = Arc::new(settings(
        TopologyConfig::Ring,
        1,
        Budget::Fixed { r: 1.0 },
        8,
    ));
    let mut trainer = Fake::new(false);
    let mut a = DsgdPeer::new(1, Arc::clone(&s), (20..40).collect(), vec![10.0; P]);
    assert!(a.save_state().is_none(), "nothing captured unless asked");
    a.keep_checkpoints();
    assert_eq!(a.state_version(), 0);
    // Step 1 taken, round 1 gossiped to peers 0 and 2, waiting for both; peer 2's round-1
    // gossip and (early) its round-2 gossip arrive.
    let started = msgs(drive(&mut a, &mut trainer, |n, c| n.on_start(c)));
    drive(&mut a, &mut trainer, |n, c| {
        n.on_message(2, gossip(1, 30.0), c)
    });
    drive(&mut a, &mut trainer, |n, c| {
        n.on_message(2, gossip(2, 31.0), c)
    });
    assert_eq!(a.state_version(), 3, "every input that changed the peer");
    assert_eq!(a.step(), 1);
    let state = a.save_state().unwrap();
    assert_eq!(state.meta_u64("step").unwrap(), 1);

    // Restored into a fresh process: the same step and model, and on start it sends what its
    // latest sending input sent (the round-1 gossip and the step-0 snapshot; a kill may have
    // come before they left), and nothing else.
    let mut b = DsgdPeer::new(1, Arc::clone(&s), (20..40).collect(), vec![0.0; P]);
    b.keep_checkpoints();
    b.load_state(state.clone()).unwrap();
    b.rejoin();
    assert_eq!((b.step(), b.params()), (a.step(), a.params()));
    let again = msgs(drive(&mut b, &mut trainer, |n, c| n.on_start(c)));
    assert_eq!(again, started);
    assert!(!b.finished());
    // Peer 0's round-1 gossip completes round 1 on both, and round 2 at once (peer 2's
    // round-2 gossip was kept; peer 0's for round 2 is still missing): they send the same.
    let from_a = msgs(drive(&mut a, &mut trainer, |n, c| {
        n.on_message(0, gossip(1, 5.0), c)
    }));
    let from_b = msgs(drive(&mut b, &mut trainer, |n, c| {
        n.on_message(0, gossip(1, 5.0), c)
    }));
    assert_eq!(from_a, from_b);
    assert_eq!(a.step(), 2);
    for (m, peer) in [
        (gossip(2, 6.0), 0),
        (gossip(3, 7.0), 0),
        (gossip(3, 8.0), 2),
    ] {
        let x = msgs(drive(&mut a, &mut trainer, |n, c| {
            n.on_message(peer, m.clone(), c)
        }));
        let y = msgs(drive(&mut b, &mut trainer, |n, c| n.on_message(peer, m, c)));
        assert_eq!(x, y);
    }
    assert_eq!((b.step(), b.params()), (a.step(), a.params()));
    assert_eq!(a.save_state().unwrap(), b.save_state().unwrap());

    // Damaged or foreign checkpoints are errors, not panics.
    let fresh = || DsgdPeer::new(1, Arc::clone(&s), vec![], vec![0.0; P]);
    let mut wrong = state.clone();
    wrong.meta["step"] = serde_json::json!(99);
    assert!(fresh().load_state(wrong).is_err());
    let mut wrong = state.clone();
    wrong.meta["mixed_through"] = serde_json::json!(5);
    assert!(fresh().load_state(wrong).is_err(), "mixed past its step");
    let mut wrong = state.clone();
    wrong.meta["absent"] = serde_json::json!([8]);
    assert!(
        fresh().load_state(wrong).is_err(),
        "the monitor is not a peer"
    );
    let mut wrong = state.clone();
    wrong.tensors[0].1.push(1.0);
    assert!(fresh().load_state(wrong).is_err());
    let mut wrong = state.clone();
    wrong.blobs[0].1 = b"not an optimizer state".to_vec();
    assert!(fresh().load_state(wrong).is_err());
    let mut wrong = state.clone();
    let inbox = wrong
        .blobs
        .iter_mut()
        .find(|(name, _)| name.starts_with("inbox/"))
        .unwrap();
    inbox.0 = "inbox/2/5".into();
    assert!(
        fresh().load_state(wrong).is_err(),
        "peer 5 is not a neighbour"
    );
    let mut wrong = state;
    let out = wrong
        .blobs
        .iter_mut()
        .find(|(name, _)| name.starts_with("out/"))
        .unwrap();
    out.1.truncate(5);
    assert!(fresh().load_state(wrong).is_err(), "a torn message");
}

/// A peer restarted without a checkpoint had sent nothing (its first checkpoint precedes its
/// first message): without a gossip deadline it starts as if for the first time, step-0
/// snapshot included, so the monitor and its neighbours get what they wait for.
#[test]
fn a_peer_restarted_without_a_checkpoint_and_without_a_deadline_starts_afresh() {
    let s = Arc::new(settings(
        TopologyConfig::Ring,
        1,
        Budget::Fixed { r: 1.0 },
        8,
    ));
    let mut trainer = Fake::new(false);
    let mut first = DsgdPeer::new(1, Arc::clone(&s), (20..40).collect(), vec![10.0; P]);
    let mut again = DsgdPeer::new(1, Arc::clone(&s), (20..40).collect(), vec![10.0; P]);
    again.rejoin();
    let a = msgs(drive(&mut first, &mut trainer, |n, c| n.on_start(c)));
    let b = msgs(drive(&mut again, &mut trainer, |n, c| n.on_start(c)));
    assert_eq!(a, b);
    assert!(matches!(b[0], (8, Msg::Snapshot { step: 0, .. })), "{b:?}");
    assert_eq!(
        (again.step(), again.params()),
        (first.step(), first.params())
    );
}

/// With a gossip deadline, the others may have gone on without a killed peer: resumed from
/// its checkpoint it asks where they are, and follows only a peer further ahead than waiting
/// for it would allow.
#[test]
fn a_resumed_peer_follows_only_a_peer_that_left_it_behind() {
    let mut s = settings(TopologyConfig::Ring, 1, Budget::Fixed { r: 1.0 }, 40);
    s.gossip_deadline = Some(std::time::Duration::from_secs(1));
    let s = Arc::new(s);
    let mut trainer = Fake::new(false);
    let mut a = DsgdPeer::new(1, Arc::clone(&s), (20..40).collect(), vec![10.0; P]);
    a.keep_checkpoints();
    drive(&mut a, &mut trainer, |n, c| n.on_start(c));
    let mut b = DsgdPeer::new(1, Arc::clone(&s), (20..40).collect(), vec![0.0; P]);
    b.load_state(a.save_state().unwrap()).unwrap();
    b.rejoin();
    let sent = drive(&mut b, &mut trainer, |n, c| n.on_start(c));
    let asked = sent
        .iter()
        .filter(|(_, m)| matches!(m, Body::Control(Control::JoinRequest { step: 1 })))
        .count();
    assert_eq!(asked, 7, "every other peer is asked");
    // A neighbour one round ahead waited for this peer: not followed.
    let near = Control::JoinReply {
        step: 2,
        round: 1,
        model: Tensor::exact(vec![50.0; P]),
    };
    drive(&mut b, &mut trainer, |n, c| n.on_control(2, near, c));
    assert_eq!((b.step(), b.params()), (a.step(), a.params()));
    // One 20 rounds ahead went on without it: followed, and it joins that peer's round.
    let far = Control::JoinReply {
        step: 21,
        round: 20,
        model: Tensor::exact(vec![60.0; P]),
    };
    let joined = msgs(drive(&mut b, &mut trainer, |n, c| n.on_control(2, far, c)));
    assert_eq!(b.step(), 21);
    assert_eq!(b.params(), &[60.0; P][..]);
    assert!(joined
        .iter()
        .all(|(_, m)| matches!(m, Msg::Gossip { round: 21, .. })));
    // After the join deadline nothing more is followed.
    drive(&mut b, &mut trainer, |n, c| n.on_deadline(u64::MAX, c));
    let later = Control::JoinReply {
        step: 39,
        round: 38,
        model: Tensor::exact(vec![70.0; P]),
    };
    drive(&mut b, &mut trainer, |n, c| n.on_control(0, later, c));
    assert_eq!(b.step(), 21);
}

#[test]
fn a_monitor_checkpoint_keeps_the_reported_points_and_the_open_points_snapshots() {
    let s = Arc::new(settings(TopologyConfig::Ring, 1, Budget::LocalOnly, 8));
    let mut trainer = Fake::new(true);
    let snap = |step: u64, peer: u32| Msg::Snapshot {
        step,
        train_loss: 1.0 + peer as f32,
        accuracy: 0.1 * peer as f32,
        loss: 1.0,
        gossip_bytes: u64::from(peer),
        model: Tensor::exact(vec![peer as f32 + step as f32; P]),
    };
    let metrics = |ev: Vec<Event<GossipMetrics>>| -> Vec<GossipMetrics> {
        ev.into_iter()
            .filter_map(|e| match e {
                Event::Metrics(m) => Some(m),
                _ => None,
            })
            .collect()
    };
    let feed = |m: &mut DsgdMonitor, t: &mut Fake, msgs: Vec<(u32, Msg)>| {
        let (mut out, mut ev) = (Vec::new(), Vec::new());
        let mut ctx = NodeCtx::new(&mut out, &mut ev, t as &mut dyn PeerTrainer);
        for (from, msg) in msgs {
            m.on_message(from, msg, &mut ctx).unwrap();
        }
        drop(ctx);
        metrics(ev)
    };
    let mut a = DsgdMonitor::new(Arc::clone(&s));
    assert_eq!(a.state_version(), 0);
    // Step 0 reported; step 4 open with peers 0 to 4 in.
    let first = feed(
        &mut a,
        &mut trainer,
        (0..8).map(|p| (p, snap(0, p))).collect(),
    );
    assert_eq!(first.len(), 1);
    feed(
        &mut a,
        &mut trainer,
        (0..5).map(|p| (p, snap(4, p))).collect(),
    );
    assert_eq!(a.state_version(), 8 + 1 + 5);
    let state = a.save_state().unwrap();
    assert_eq!(state.meta_u64("reported_points").unwrap(), 1);
    assert_eq!(state.tensors.len(), 5);
    // A resumed monitor finishes step 4 exactly as the unbroken one does, and step 0 is closed.
    let mut b = DsgdMonitor::new(Arc::clone(&s));
    b.load_state(state.clone()).unwrap();
    let rest: Vec<(u32, Msg)> = (5..8).map(|p| (p, snap(4, p))).collect();
    let unbroken = feed(&mut a, &mut trainer, rest.clone());
    let resumed = feed(&mut b, &mut trainer, rest);
    assert_eq!(unbroken.len(), 1);
    assert_eq!(resumed, unbroken);
    let (mut out, mut ev) = (Vec::new(), Vec::new());
    let mut ctx = NodeCtx::new(&mut out, &mut ev, &mut trainer as &mut dyn PeerTrainer);
    assert!(
        b.on_message(1, snap(0, 1), &mut ctx).is_err(),
        "step 0 is reported"
    );
    drop(ctx);
    // Damaged or foreign checkpoints are errors, not panics.
    let mut wrong = state.clone();
    wrong.tensors[0].1.pop();
    assert!(DsgdMonitor::new(Arc::clone(&s)).load_state(wrong).is_err());
    let mut wrong = state.clone();
    wrong.meta["done"] = serde_json::json!([3]);
    assert!(DsgdMonitor::new(Arc::clone(&s)).load_state(wrong).is_err());
    let mut wrong = state.clone();
    wrong.meta["absent"] = serde_json::json!([8]);
    assert!(DsgdMonitor::new(Arc::clone(&s)).load_state(wrong).is_err());
    let mut wrong = state;
    wrong.meta["snapshots"][0]["step"] = serde_json::json!(0);
    assert!(DsgdMonitor::new(Arc::clone(&s)).load_state(wrong).is_err());
}
