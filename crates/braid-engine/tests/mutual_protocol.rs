//! The mutual-learning state machines (DFML, isolated training, FML, Def-KT) and the
//! simulator, driven with a pure-Rust fake trainer (fast, no tensor backend): averaging only
//! within an architecture, peak models, byte accounting, determinism across worker threads,
//! and hostile messages.

use braid_engine::algorithms::mutual::MutualProtocol;
use std::sync::{Arc, Mutex};

use braid_core::lr_schedule::LrSchedule;
use braid_core::mutual::{dfml_round, AlphaCycle, CycleShape};
use braid_engine::algorithms::mutual::MutualLearner;
use braid_engine::algorithms::mutual::{
    client_node, Msg, MutualClient, MutualHub, MutualMetrics, MutualSettings, Variant, HUB,
};
use braid_engine::node::{BoxNode, EngineError, EngineResult, Node, NodeCtx};
use braid_engine::sim::{SimOutcome, Simulator, Worker};
use braid_engine::trainer::{MutualSteps, Trainer};
use braid_engine::wire::{Body, NodeId, Tensor};
use braid_nn::{EvalOutcome, Member, MutualOutcome};

/// Parameter counts of the two architectures.
const SIZES: [usize; 2] = [2, 3];

/// Mutual training adds 1 to every parameter of every member and records the call; a model's
/// "accuracy" is its first parameter / 1000.
#[derive(Clone, Default)]
struct Fake {
    calls: Arc<Mutex<Vec<Vec<usize>>>>,
}

impl Trainer for Fake {}

impl MutualSteps for Fake {
    fn mutual_train(
        &mut self, members: &[Member<'_>], batches: &[Vec<usize>], _alpha: f64, _lr_scale: f64,
    ) -> EngineResult<MutualOutcome> {
        for m in members {
            assert_eq!(
                m.params.len(),
                SIZES[m.arch],
                "a model reached training with the wrong size"
            );
        }
        if let Ok(mut c) = self.calls.lock() {
            c.push(members.iter().map(|m| m.arch).collect());
        }
        Ok(MutualOutcome {
            params: members
                .iter()
                .map(|m| m.params.iter().map(|v| v + 1.0).collect())
                .collect(),
            supervised: vec![0.5; members.len()],
            distill: vec![0.1; members.len()],
            steps: batches.len(),
            samples: batches.iter().map(Vec::len).sum(),
        })
    }

    fn evaluate_arch(
        &mut self, arch: usize, params: &[f32], _: usize,
    ) -> EngineResult<EvalOutcome> {
        assert_eq!(params.len(), SIZES[arch]);
        Ok(EvalOutcome {
            accuracy: f64::from(params[0]) / 1000.0,
            loss: 1.0,
            samples: 10,
        })
    }
}

fn settings(variant: Variant, clients: usize, rounds: u32) -> MutualSettings {
    MutualSettings {
        variant,
        rounds,
        eval_every: 1,
        eval_samples: 10,
        model_names: vec!["small".into(), "big".into()],
        model_params: SIZES.to_vec(),
        archs: (0..clients).map(|k| k % 2).collect(),
        counts: (0..clients).map(|k| 10 + k).collect(),
        senders: 2,
        clients_per_round: 2,
        alpha: AlphaCycle {
            shape: CycleShape::Cosine,
            period: 2,
            min: 0.0,
            max: 0.8,
        },
        batch_size: 4,
        local_epochs: 1,
        global_model: 1,
        lr_schedule: LrSchedule::Constant,
        seed: 3,
        model_compression: None,
        round_deadline: None,
    }
}

/// Client k starts from `10 k` in every parameter.
fn nodes(s: &Arc<MutualSettings>) -> Vec<BoxNode<MutualProtocol>> {
    let global = if s.variant == Variant::Fml {
        vec![500.0; SIZES[s.global_model]]
    } else {
        Vec::new()
    };
    let mut out: Vec<BoxNode<MutualProtocol>> =
        vec![Box::new(MutualHub::new(Arc::clone(s), global))];
    for k in 0..s.clients() {
        let shard: Vec<usize> = (k * 20..k * 20 + 10).collect();
        out.push(Box::new(MutualClient::new(
            k,
            Arc::clone(s),
            Arc::new(shard),
            vec![10.0 * k as f32; SIZES[s.archs[k]]],
        )));
    }
    out
}

fn simulate(s: MutualSettings, workers: usize) -> (SimOutcome<MutualMetrics>, Vec<Vec<usize>>) {
    let s = Arc::new(s);
    let fake = Fake::default();
    let ws = (0..workers)
        .map(|_| Worker::new(Box::new(fake.clone()) as Box<dyn MutualLearner>).unwrap())
        .collect();
    let out = Simulator::new(nodes(&s), ws)
        .unwrap()
        .run(&mut |_| {})
        .unwrap();
    let calls = fake.calls.lock().unwrap().clone();
    (out, calls)
}

/// Runs `node`'s handler for `input`; returns what it sent.
fn step(
    node: &mut dyn Node<Protocol = MutualProtocol>, fake: &mut Fake, from: Option<(NodeId, Msg)>,
) -> EngineResult<Vec<(NodeId, Body<Msg>)>> {
    let (mut outbox, mut events) = (Vec::new(), Vec::new());
    let mut ctx = NodeCtx::new(&mut outbox, &mut events, fake as &mut dyn MutualLearner);
    match from {
        None => node.on_start(&mut ctx)?,
        Some((f, p)) => node.on_message(f, p, &mut ctx)?,
    }
    Ok(outbox)
}

#[test]
fn a_dfml_round_averages_models_only_within_their_architecture() {
    let s = Arc::new(settings(Variant::Dfml, 6, 1));
    let round = dfml_round(s.seed, 1, 6, 2);
    let mut all = nodes(&s);
    let mut fake = Fake::default();
    let agg = round.aggregator;
    // Senders send their models at the start; the aggregator sends nothing yet.
    let mut to_agg = Vec::new();
    for k in 0..6 {
        let sent = step(all[k + 1].as_mut(), &mut fake, None).unwrap();
        let models: Vec<_> = sent
            .into_iter()
            .filter_map(|(to, p)| match p {
                Body::Msg(m @ Msg::Model { .. }) => Some((to, m)),
                _ => None,
            })
            .collect();
        if round.senders.contains(&k) {
            assert_eq!(models.len(), 1);
            assert_eq!(models[0].0, client_node(agg));
            to_agg.push((client_node(k), models[0].1.clone()));
        } else {
            assert!(
                models.is_empty(),
                "client {k} sent a model but is not a sender"
            );
        }
    }
    let mut returned = Vec::new();
    for (from, p) in to_agg {
        returned.extend(step(all[agg + 1].as_mut(), &mut fake, Some((from, p))).unwrap());
    }
    // One mutual training of the aggregator's model and both senders' models.
    let calls = fake.calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].len(), 3);
    // Expected: each model + 1, then the mean over the models of its architecture.
    let members: Vec<usize> = std::iter::once(agg)
        .chain(round.senders.iter().copied())
        .collect();
    let mean_of = |arch: usize| {
        let group: Vec<f32> = members
            .iter()
            .filter(|&&k| k % 2 == arch)
            .map(|&k| 10.0 * k as f32 + 1.0)
            .collect();
        group.iter().sum::<f32>() / group.len() as f32
    };
    let backs: Vec<_> = returned
        .iter()
        .filter_map(|(to, p)| match p {
            Body::Msg(Msg::Model { arch, model, .. }) => {
                Some((*to, *arch as usize, model.exact_values().ok()?.clone()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(backs.len(), 2);
    for (to, arch, params) in backs {
        let k = (to - 1) as usize;
        assert!(round.senders.contains(&k));
        assert_eq!(arch, k % 2);
        assert_eq!(params.len(), SIZES[arch]);
        assert!(
            params.iter().all(|&v| (v - mean_of(arch)).abs() < 1e-5),
            "{params:?}"
        );
    }
}

#[test]
fn simulated_dfml_reports_peaks_counts_bytes_and_is_deterministic() {
    let s = settings(Variant::Dfml, 6, 4);
    let (one, calls) = simulate(s.clone(), 1);
    let (two, _) = simulate(s.clone(), 2);
    let metrics =
        |o: &SimOutcome<MutualMetrics>| o.rows.iter().map(|(m, _)| m.clone()).collect::<Vec<_>>();
    assert_eq!(metrics(&one), metrics(&two));
    assert_eq!(one.traffic, two.traffic);
    // One aggregation per round, each with the aggregator and 2 senders.
    assert_eq!(calls.len(), 4);
    assert!(calls.iter().all(|c| c.len() == 3));
    let m = metrics(&one);
    assert_eq!(
        m.iter().map(|x| x.round).collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
    // Peaks at rounds 2 and 4 (period 2): none before, equal to the current models at a peak.
    assert_eq!(m[0].peak_accuracy, None);
    for i in [1, 3] {
        let peak = m[i].peak_accuracy.unwrap();
        assert!((peak - m[i].accuracy).abs() < 1e-9);
    }
    assert!(m[2].peak_accuracy.is_some());
    // Bytes: every round, each sender's model goes to the aggregator and comes back.
    let model_bytes = |arch: usize| {
        Body::Msg(Msg::Model {
            round: 1,
            arch: 0,
            model: Tensor::exact(vec![0.0; SIZES[arch]]),
        })
        .encoded_len() as u64
    };
    let want: u64 = (1..=4)
        .map(|t| {
            dfml_round(s.seed, t, 6, 2)
                .senders
                .iter()
                .map(|&k| 2 * model_bytes(s.archs[k]))
                .sum::<u64>()
        })
        .sum();
    assert_eq!(m[3].cum_bytes, want);
    // Global accuracy is the mean over all clients.
    assert!(m
        .iter()
        .all(|x| x.min_accuracy <= x.accuracy && x.accuracy <= x.max_accuracy));
    assert_eq!(m[0].per_arch.len(), 2);
}

#[test]
fn quantized_models_cost_their_encoded_bytes_and_keep_dfml_deterministic() {
    use braid_core::compress::{encoded_len, Compression, Quantize, Sparsify};
    let q = Compression {
        sparsify: Sparsify::None,
        quantize: Quantize::Int8 { block: 4 },
    };
    let mut s = settings(Variant::Dfml, 6, 4);
    s.model_compression = Some(q);
    let (one, _) = simulate(s.clone(), 1);
    let (two, _) = simulate(s.clone(), 2);
    let metrics =
        |o: &SimOutcome<MutualMetrics>| o.rows.iter().map(|(m, _)| m.clone()).collect::<Vec<_>>();
    assert_eq!(metrics(&one), metrics(&two));
    let (plain, _) = simulate(settings(Variant::Dfml, 6, 4), 1);
    assert_ne!(metrics(&one), metrics(&plain), "models went through int8");
    let model_bytes = |arch: usize| {
        Body::Msg(Msg::Model {
            round: 1,
            arch: 0,
            model: Tensor::packed(vec![0; encoded_len(SIZES[arch], &q)]),
        })
        .encoded_len() as u64
    };
    let want: u64 = (1..=4)
        .map(|t| {
            dfml_round(s.seed, t, 6, 2)
                .senders
                .iter()
                .map(|&k| 2 * model_bytes(s.archs[k]))
                .sum::<u64>()
        })
        .sum();
    assert_eq!(metrics(&one)[3].cum_bytes, want);
    // A packed model of an architecture the run does not have, or of the wrong size, is
    // refused.
    let mut nodes = nodes(&Arc::new(s));
    let mut t = Fake::default();
    for (arch, len) in [(7u32, SIZES[0]), (0, SIZES[0] + 1)] {
        let model =
            braid_core::compress::encode(&vec![0.5; len], &q, &mut braid_core::seed::rng(1, &[]))
                .unwrap();
        let (mut out, mut ev) = (Vec::new(), Vec::new());
        let r = nodes[1].on_message(
            2,
            Msg::Model {
                round: 1,
                arch,
                model: Tensor::packed(model),
            },
            &mut NodeCtx::new(&mut out, &mut ev, &mut t as &mut dyn MutualLearner),
        );
        assert!(matches!(r, Err(EngineError::Rejected { .. })), "{r:?}");
    }
}

#[test]
fn baselines_run_with_their_roles() {
    // Isolated: 2 clients train alone per round, nothing is sent.
    let (out, calls) = simulate(settings(Variant::Local, 6, 3), 2);
    assert_eq!(calls.len(), 6);
    assert!(calls.iter().all(|c| c.len() == 1));
    assert_eq!(out.rows.last().unwrap().0.cum_bytes, 0);
    // Def-KT: 2 pairs per round: 2 local trainings and 2 two-model trainings.
    let (out, calls) = simulate(settings(Variant::DefKt, 6, 3), 2);
    assert_eq!(calls.iter().filter(|c| c.len() == 1).count(), 6);
    assert_eq!(calls.iter().filter(|c| c.len() == 2).count(), 6);
    assert_eq!(out.rows.len(), 3);
    // FML: 2 clients per round train their model with the global one (architecture 1).
    let s = settings(Variant::Fml, 6, 3);
    let (out, calls) = simulate(s.clone(), 2);
    assert_eq!(calls.len(), 6);
    assert!(calls.iter().all(|c| c.len() == 2 && c[1] == 1));
    let last = &out.rows.last().unwrap().0;
    // The global model started at 500 and gains 1 per round (every returned copy gains 1).
    assert!((last.global_model_accuracy.unwrap() - 0.503).abs() < 1e-9);
    let per_model = Body::Msg(Msg::Model {
        round: 1,
        arch: 1,
        model: Tensor::exact(vec![0.0; SIZES[1]]),
    })
    .encoded_len() as u64;
    assert_eq!(last.cum_bytes, 3 * 2 * 2 * per_model);
}

#[test]
fn hostile_messages_are_rejected_not_obeyed() {
    let s = Arc::new(settings(Variant::Dfml, 6, 2));
    let r = dfml_round(s.seed, 1, 6, 2);
    let agg = r.aggregator;
    let sender = r.senders[0];
    let idle = (0..6)
        .find(|k| *k != agg && !r.senders.contains(k))
        .unwrap();
    let model = |round, arch: usize, n: usize| Msg::Model {
        round,
        arch: arch as u32,
        model: Tensor::exact(vec![1.0; n]),
    };
    let mut fake = Fake::default();
    let cases: Vec<(usize, NodeId, Msg, &str)> = vec![
        // Wrong architecture for the sender.
        (
            agg,
            client_node(sender),
            model(1, 1 - sender % 2, SIZES[1 - sender % 2]),
            "architecture",
        ),
        // Wrong length.
        (
            agg,
            client_node(sender),
            model(1, sender % 2, 7),
            "parameters",
        ),
        // Not a sender of this round.
        (
            agg,
            client_node(idle),
            model(1, idle % 2, SIZES[idle % 2]),
            "no model",
        ),
        // A round past the end.
        (
            agg,
            client_node(sender),
            model(9, sender % 2, SIZES[sender % 2]),
            "round 9",
        ),
        // Unknown node.
        (agg, 77, model(1, 0, 2), "participant"),
        // Reports go to the hub only.
        (
            agg,
            client_node(sender),
            Msg::Report {
                round: 1,
                arch: 0,
                accuracy: 0.5,
                loss: 1.0,
                peak_accuracy: f32::NAN,
                peak_loss: f32::NAN,
                train_loss: 0.1,
                bytes_sent: 0,
            },
            "only takes models",
        ),
    ];
    for (k, from, payload, word) in cases {
        let mut all = nodes(&s);
        let e = step(all[k + 1].as_mut(), &mut fake, Some((from, payload))).unwrap_err();
        assert!(matches!(e, EngineError::Rejected { .. }), "{e}");
        assert!(e.to_string().contains(word), "{e} (expected {word:?})");
    }
    // NaN parameters.
    let mut all = nodes(&s);
    let nan = Msg::Model {
        round: 1,
        arch: (sender % 2) as u32,
        model: Tensor::exact(vec![f32::NAN; SIZES[sender % 2]]),
    };
    let e = step(
        all[agg + 1].as_mut(),
        &mut fake,
        Some((client_node(sender), nan)),
    )
    .unwrap_err();
    assert!(e.to_string().contains("NaN"), "{e}");
    // A second copy of the same model.
    let mut all = nodes(&s);
    let p = model(1, sender % 2, SIZES[sender % 2]);
    step(
        all[agg + 1].as_mut(),
        &mut fake,
        Some((client_node(sender), p.clone())),
    )
    .unwrap();
    let e = step(
        all[agg + 1].as_mut(),
        &mut fake,
        Some((client_node(sender), p)),
    )
    .unwrap_err();
    assert!(e.to_string().contains("second"), "{e}");
    // The hub: a report with the wrong architecture, accuracy out of range, or twice.
    let report = |arch: u32, accuracy: f32| Msg::Report {
        round: 1,
        arch,
        accuracy,
        loss: 1.0,
        peak_accuracy: f32::NAN,
        peak_loss: f32::NAN,
        train_loss: 0.1,
        bytes_sent: 0,
    };
    let mut all = nodes(&s);
    let hub = all[HUB as usize].as_mut();
    assert!(step(hub, &mut fake, Some((client_node(1), report(0, 0.5)))).is_err());
    assert!(step(hub, &mut fake, Some((client_node(1), report(1, 1.5)))).is_err());
    step(hub, &mut fake, Some((client_node(1), report(1, 0.5)))).unwrap();
    let e = step(hub, &mut fake, Some((client_node(1), report(1, 0.5)))).unwrap_err();
    assert!(e.to_string().contains("second"), "{e}");
}

#[test]
fn the_hub_emits_each_evaluation_point_once_all_clients_reported() {
    let s = settings(Variant::Local, 4, 2);
    let (out, _) = simulate(s, 1);
    let rounds: Vec<u32> = out.rows.iter().map(|(m, _)| m.round).collect();
    assert_eq!(rounds, vec![1, 2]);
    let first = &out.rows[0].0;
    // Accuracy = first parameter / 1000; clients start at 0, 10, 20, 30 and the 2 that
    // trained in round 1 gained 1.
    assert!((first.accuracy - (60.0 + 2.0) / 4.0 / 1000.0).abs() < 1e-9);
    assert_eq!(first.train_loss, Some(0.5));
}

/// A client that crashed before the run: it never sends anything and ignores what it gets.
struct Dead(NodeId);

impl Node for Dead {
    type Protocol = MutualProtocol;

    fn id(&self) -> NodeId {
        self.0
    }
    fn on_start(&mut self, _: &mut NodeCtx<'_, MutualProtocol>) -> EngineResult {
        Ok(())
    }
    fn on_message(
        &mut self, _: NodeId, _: Msg, _: &mut NodeCtx<'_, MutualProtocol>,
    ) -> EngineResult {
        Ok(())
    }
}

#[test]
fn with_a_round_deadline_every_variant_goes_on_without_a_dead_client() {
    for variant in [Variant::Dfml, Variant::DefKt, Variant::Fml, Variant::Local] {
        let timed = || MutualSettings {
            round_deadline: Some(std::time::Duration::from_secs(5)),
            ..settings(variant, 6, 6)
        };
        // No fault: a deadline changes nothing.
        let (plain, _) = simulate(settings(variant, 6, 6), 2);
        let (same, _) = simulate(timed(), 2);
        assert_eq!(plain.rows.len(), 6, "{variant:?}");
        let rows = |o: &SimOutcome<MutualMetrics>| -> Vec<MutualMetrics> {
            o.rows.iter().map(|(m, _)| m.clone()).collect()
        };
        assert_eq!(rows(&plain), rows(&same), "{variant:?}");
        // Client 2 (node 3) dead from the start: every round and evaluation point completes
        // with the five others.
        let s = Arc::new(timed());
        let mut v = nodes(&s);
        v[3] = Box::new(Dead(3));
        let fake = Fake::default();
        let out = Simulator::new(
            v,
            vec![Worker::new(Box::new(fake.clone()) as Box<dyn MutualLearner>).unwrap()],
        )
        .unwrap()
        .run(&mut |_| {})
        .unwrap();
        let got = rows(&out);
        assert_eq!(
            got.iter().map(|m| m.round).collect::<Vec<_>>(),
            (1..=6).collect::<Vec<_>>(),
            "{variant:?}"
        );
        // Accuracy is the mean over the five live clients' models: client 2's starting value
        // (20) would pull it, so it differs from the fault-free run's.
        assert_ne!(
            got.last().unwrap().accuracy,
            plain.rows.last().unwrap().0.accuracy
        );
        if variant == Variant::Fml {
            assert!(got.iter().all(|m| m.global_model_accuracy.is_some()));
        }
    }
}

#[test]
fn mutual_checkpoints_restore_models_received_and_messages_sent() {
    let s = Arc::new(settings(Variant::Dfml, 6, 2));
    let round = dfml_round(s.seed, 1, 6, 2);
    let (agg, senders) = (round.aggregator, round.senders.clone());
    let mut fake = Fake::default();
    let fresh = |k: usize| {
        MutualClient::new(
            k,
            Arc::clone(&s),
            Arc::new((0..10).collect()),
            vec![10.0 * k as f32; SIZES[s.archs[k]]],
        )
    };
    // The senders' models of round 1.
    let mut models = Vec::new();
    for &k in &senders {
        let mut c = fresh(k);
        let sent = step(&mut c, &mut fake, None).unwrap();
        let model = sent
            .iter()
            .find_map(|(to, p)| match p {
                Body::Msg(m @ Msg::Model { .. }) if *to == client_node(agg) => Some(m.clone()),
                _ => None,
            })
            .unwrap();
        models.push((client_node(k), model));
        // A resumed sender sends its model again (the kill may have come before it left).
        let mut back = fresh(k);
        back.load_state(c.save_state().unwrap()).unwrap();
        let again = step(&mut back, &mut fake, None).unwrap();
        assert!(again
            .iter()
            .any(|(to, p)| *to == client_node(agg)
                && *p == Body::Msg(models.last().unwrap().1.clone())));
    }
    // The aggregator has the first model when it is killed; resumed, it answers the second
    // exactly as the unbroken one does.
    let mut a = fresh(agg);
    step(&mut a, &mut fake, None).unwrap();
    step(&mut a, &mut fake, Some(models[0].clone())).unwrap();
    let state = a.save_state().unwrap();
    let mut b = fresh(agg);
    b.load_state(state.clone()).unwrap();
    step(&mut b, &mut fake, None).unwrap();
    let unbroken = step(&mut a, &mut fake, Some(models[1].clone())).unwrap();
    let resumed = step(&mut b, &mut fake, Some(models[1].clone())).unwrap();
    assert!(!unbroken.is_empty());
    // (Debug text: the reports' NaN peak fields compare unequal as values.)
    assert_eq!(format!("{resumed:?}"), format!("{unbroken:?}"));
    // Damaged or foreign checkpoints are errors, not panics.
    let mut wrong = state.clone();
    wrong.tensors[0].1.push(1.0);
    assert!(fresh(agg).load_state(wrong).is_err());
    let mut wrong = state.clone();
    wrong.meta["done"] = serde_json::json!(99);
    assert!(fresh(agg).load_state(wrong).is_err());
    let mut wrong = state.clone();
    for (_, b) in wrong.blobs.iter_mut() {
        b.truncate(5);
    }
    assert!(fresh(agg).load_state(wrong).is_err());
    // The hub: reports of round 1 from three clients, then a kill; resumed, the point is
    // reported as the unbroken hub reports it.
    let report = |k: usize| Msg::Report {
        round: 1,
        arch: s.archs[k] as u32,
        accuracy: 0.1 * k as f32,
        loss: 1.0,
        peak_accuracy: f32::NAN,
        peak_loss: f32::NAN,
        train_loss: 0.5,
        bytes_sent: 100 * k as u64,
    };
    let metrics = |h: &mut MutualHub, k: usize, f: &mut Fake| {
        let (mut out, mut ev) = (Vec::new(), Vec::new());
        let mut ctx = NodeCtx::new(&mut out, &mut ev, f as &mut dyn MutualLearner);
        h.on_message(client_node(k), report(k), &mut ctx).unwrap();
        drop(ctx);
        ev.len()
    };
    let mut h = MutualHub::new(Arc::clone(&s), Vec::new());
    for k in 0..3 {
        assert_eq!(metrics(&mut h, k, &mut fake), 0);
    }
    let mut g = MutualHub::new(Arc::clone(&s), Vec::new());
    g.load_state(h.save_state().unwrap()).unwrap();
    step(&mut g, &mut fake, None).unwrap();
    for k in 3..5 {
        assert_eq!(metrics(&mut h, k, &mut fake), 0);
        assert_eq!(metrics(&mut g, k, &mut fake), 0);
    }
    let (mut o1, mut e1, mut o2, mut e2) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    h.on_message(
        client_node(5),
        report(5),
        &mut NodeCtx::new(&mut o1, &mut e1, &mut fake as &mut dyn MutualLearner),
    )
    .unwrap();
    g.on_message(
        client_node(5),
        report(5),
        &mut NodeCtx::new(&mut o2, &mut e2, &mut fake as &mut dyn MutualLearner),
    )
    .unwrap();
    assert_eq!(e1.len(), 1);
    assert_eq!(format!("{e1:?}"), format!("{e2:?}"));
    let mut wrong = h.save_state().unwrap();
    wrong.meta["reported"] = serde_json::json!(7);
    assert!(MutualHub::new(Arc::clone(&s), Vec::new())
        .load_state(wrong)
        .is_err());
}
