//! The split-learning state machines and the simulator, driven with a pure-Rust fake trainer
//! (fast, no tensor backend): every sample used once per epoch, batch sizes as planned, byte
//! accounting, the client gradients' aggregation, simulated time, hostile messages, and
//! determinism across worker threads.

use braid_engine::algorithms::split::SplitProtocol;
use std::sync::{Arc, Mutex};

use braid_core::compress::{Compression, Quantize};
use braid_core::latency::{LatencyConfig, LatencyModel};
use braid_core::lr_schedule::LrSchedule;
use braid_core::seed;
use braid_core::split_batches::Sampler;
use braid_engine::algorithms::split::SplitLearner;
use braid_engine::algorithms::split::{
    ClientGradients, Msg, SplitClient, SplitMetrics, SplitServer, SplitSettings, SERVER,
};
use braid_engine::node::{BoxNode, EngineResult, Event, Node, NodeCtx};
use braid_engine::sim::{SimOutcome, Simulator, Worker};
use braid_engine::trainer::{Evaluate, SplitSteps, Trainer};
use braid_engine::wire::{Body, Control, NodeId, Tensor};
use braid_nn::{EvalOutcome, OptimizerState, ServerStep};

const F: usize = 3; // values per sample at the cut
const CLIENT_PARAMS: usize = 2;
const NUM_PARAMS: usize = 5;

/// Activations are the sample index repeated F times; the server's gradient is all ones; a
/// client-part gradient is (samples, 1); the client update subtracts the aggregated gradient.
/// Records every sample that went through a client forward pass.
#[derive(Clone, Default)]
struct Fake {
    seen: Arc<Mutex<Vec<usize>>>,
}

impl Trainer for Fake {}

impl Evaluate for Fake {
    fn evaluate(&mut self, params: &[f32]) -> EngineResult<EvalOutcome> {
        Ok(EvalOutcome {
            accuracy: f64::from(params[0]),
            loss: 0.0,
            samples: 1,
        })
    }

    fn evaluate_sample(&mut self, params: &[f32], _: usize) -> EngineResult<EvalOutcome> {
        self.evaluate(params)
    }
}

impl SplitSteps for Fake {
    fn split_forward(
        &mut self, params: &[f32], samples: &[usize],
    ) -> EngineResult<(Vec<f32>, Vec<u32>)> {
        assert_eq!(params.len(), CLIENT_PARAMS);
        if let Ok(mut s) = self.seen.lock() {
            s.extend_from_slice(samples);
        }
        let acts = samples
            .iter()
            .flat_map(|&i| std::iter::repeat_n(i as f32, F))
            .collect();
        Ok((acts, samples.iter().map(|&i| (i % 10) as u32).collect()))
    }

    fn split_backward(
        &mut self, _: &[f32], samples: &[usize], grad: &[f32],
    ) -> EngineResult<Vec<f32>> {
        assert_eq!(grad.len(), samples.len() * F);
        Ok(vec![samples.len() as f32, 1.0])
    }

    fn split_server_step(
        &mut self, params: &[f32], acts: &[f32], labels: &[u32], _: &mut OptimizerState, _: f64,
    ) -> EngineResult<ServerStep> {
        Ok(ServerStep {
            params: params.iter().map(|p| p + 1.0).collect(),
            grad: vec![1.0; acts.len()],
            loss: labels.len() as f64,
        })
    }

    fn split_client_update(
        &mut self, params: &[f32], grad: &[f32], _: &mut OptimizerState, _: f64,
    ) -> EngineResult<Vec<f32>> {
        Ok(params.iter().zip(grad).map(|(p, g)| p - g).collect())
    }

    fn split_flops(&self) -> (u64, u64) {
        (100, 1000)
    }
}

fn settings(
    counts: Vec<usize>, sampler: Sampler, batch: usize, latency: LatencyConfig,
) -> SplitSettings {
    let k = counts.len();
    SplitSettings {
        sampler,
        batch,
        epochs: 2,
        eval_every: 1,
        client_gradients: ClientGradients::Sum,
        counts,
        client_params: CLIENT_PARAMS,
        num_params: NUM_PARAMS,
        cut_features: F,
        flops: (100, 1000),
        latency: LatencyModel::new(&latency, k, &mut seed::rng(1, &[])),
        lr_schedule: LrSchedule::Constant,
        seed: 7,
        compression: None,
        step_deadline: None,
    }
}

/// Clients hold consecutive sample ranges of the given sizes.
fn nodes(s: &Arc<SplitSettings>) -> Vec<BoxNode<SplitProtocol>> {
    let mut v: Vec<BoxNode<SplitProtocol>> = vec![Box::new(
        SplitServer::new(Arc::clone(s), vec![0.0; NUM_PARAMS]).unwrap(),
    )];
    let mut start = 0;
    for (k, &n) in s.counts.iter().enumerate() {
        v.push(Box::new(
            SplitClient::new(
                k as NodeId + 1,
                Arc::new((start..start + n).collect()),
                s.seed,
            )
            .with_settings(s),
        ));
        start += n;
    }
    v
}

fn run(s: SplitSettings, workers: usize) -> (SimOutcome<SplitMetrics>, Vec<usize>) {
    let s = Arc::new(s);
    let fake = Fake::default();
    let w = (0..workers)
        .map(|_| Worker::new(Box::new(fake.clone()) as Box<dyn SplitLearner>).unwrap())
        .collect();
    let out = Simulator::new(nodes(&s), w)
        .unwrap()
        .run(&mut |_| {})
        .unwrap();
    let seen = fake.seen.lock().unwrap().clone();
    (out, seen)
}

#[test]
fn every_sample_is_used_once_per_epoch_in_planned_batches() {
    for sampler in [
        Sampler::Global,
        Sampler::FixedLocal,
        Sampler::FixedProportional,
    ] {
        let counts = vec![9, 5, 2, 0, 4];
        let (out, seen) = run(
            settings(counts.clone(), sampler, 8, LatencyConfig::default()),
            2,
        );
        assert_eq!(out.rows.len(), 2, "{sampler:?}");
        let mut seen = seen;
        seen.sort_unstable();
        let once: Vec<usize> = (0..20).collect();
        let twice: Vec<usize> = once.iter().flat_map(|&i| [i, i]).collect();
        assert_eq!(
            seen, twice,
            "{sampler:?}: two epochs, each sample once per epoch"
        );
        for (m, _) in &out.rows {
            assert_eq!(m.samples, 20);
            assert!(m.min_batch >= 1, "{m:?}");
            match sampler {
                // ceil(20 / 8) near-equal chunks: 7, 7, 6.
                Sampler::Global => assert_eq!((m.steps, m.min_batch, m.max_batch), (3, 6, 7)),
                // round(8 / 5) = 2 each: the 9-sample client needs 5 steps.
                Sampler::FixedLocal => assert_eq!(m.steps, 5),
                // max(1, round(8 N_k / 20)) = 4, 2, 1, 1, 2: the first step takes 9 > B
                // samples (the rounding), and the 9- and 5-sample clients need 3 steps.
                Sampler::FixedProportional => {
                    assert_eq!((m.steps, m.max_batch), (3, 9))
                }
            }
            assert!(m.sim_time_s > 0.0);
        }
        // The server's part moved once per step; the client part by the summed gradients.
        let steps: u64 = out.rows.iter().map(|(m, _)| m.steps).sum();
        let p = out.final_params.clone().unwrap();
        assert_eq!(p[CLIENT_PARAMS], steps as f32, "{sampler:?}");
        // Client-part gradient per step: (samples of the step, clients of the step), summed.
        assert_eq!(p[0], -40.0, "{sampler:?}: every sample once per epoch");
        let clients: f64 = out
            .rows
            .iter()
            .map(|(m, _)| m.mean_clients * m.steps as f64)
            .sum();
        assert!((f64::from(p[1]) + clients).abs() < 1e-6, "{sampler:?}");
    }
}

#[test]
fn bytes_are_counted_as_encoded() {
    let (out, _) = run(
        settings(vec![6, 6], Sampler::Global, 4, LatencyConfig::default()),
        1,
    );
    let reported: u64 = out
        .rows
        .iter()
        .map(|(m, _)| m.bytes_up + m.bytes_down)
        .sum();
    let shutdowns = 2 * Control::Shutdown { round: 2 }.frame().len() as u64;
    let sent: u64 = out.traffic.iter().map(|t| t.bytes_sent).sum();
    assert_eq!(reported + shutdowns, sent);
    // Activations up: 12 samples x F floats, twice.
    let header_free = 2 * 12 * F as u64 * 4;
    let up: u64 = out.rows.iter().map(|(m, _)| m.bytes_up).sum();
    assert!(up > header_free, "{up}");
}

#[test]
fn results_do_not_depend_on_workers_and_stragglers_slow_the_clock() {
    // No latency: a step's time is bytes and FLOPs, which a straggler's slowdown scales.
    let fast = LatencyConfig {
        latency_ms: 0.0,
        ..LatencyConfig::default()
    };
    let s = || settings(vec![7, 3, 5, 5], Sampler::Global, 6, fast);
    let (a, _) = run(s(), 1);
    let (b, _) = run(s(), 3);
    let strip =
        |o: &SimOutcome<SplitMetrics>| o.rows.iter().map(|(m, _)| m.clone()).collect::<Vec<_>>();
    assert_eq!(strip(&a), strip(&b));
    assert_eq!(a.final_params, b.final_params);
    let slow = LatencyConfig {
        slow_fraction: 0.5,
        slowdown: 10.0,
        ..fast
    };
    let (c, _) = run(settings(vec![7, 3, 5, 5], Sampler::Global, 6, slow), 1);
    assert!(c.rows[0].0.sim_time_s > 2.0 * a.rows[0].0.sim_time_s);
    assert_eq!(strip(&a)[0].accuracy, strip(&c)[0].accuracy);
}

/// What a node's handling of one message returned, and what it sent.
type Handled = (EngineResult, Vec<(NodeId, Body<Msg>)>);

impl Fake {
    fn ctx_run(node: &mut dyn Node<Protocol = SplitProtocol>, from: NodeId, p: Msg) -> Handled {
        let (mut out, mut ev) = (Vec::new(), Vec::<Event<SplitMetrics>>::new());
        let mut t = Fake::default();
        let mut ctx = NodeCtx::new(&mut out, &mut ev, &mut t as &mut dyn SplitLearner);
        let r = node.on_message(from, p, &mut ctx);
        (r, out)
    }
}

#[test]
fn hostile_messages_get_clear_errors() {
    let s = Arc::new(settings(
        vec![4, 4],
        Sampler::Global,
        8,
        LatencyConfig::default(),
    ));
    let mut server = SplitServer::new(Arc::clone(&s), vec![0.0; NUM_PARAMS]).unwrap();
    let (mut out, mut ev) = (Vec::new(), Vec::new());
    let mut t = Fake::default();
    server
        .on_start(&mut NodeCtx::new(
            &mut out,
            &mut ev,
            &mut t as &mut dyn SplitLearner,
        ))
        .unwrap();
    assert_eq!(out.len(), 2, "both clients asked");
    let acts = |n: usize, f: usize, step: u64| Msg::Activations {
        step,
        labels: vec![1; n],
        acts: Tensor::exact(vec![0.0; n * f]),
    };
    let cases = [
        (1, acts(4, F + 1, 1), "the cut has 3 values per sample"),
        (1, acts(3, F, 1), "3 labels, 4 samples were asked for"),
        (1, acts(4, F, 2), "for step 2, the current step is 1"),
        (9, acts(4, F, 1), "not a client"),
        (
            1,
            Msg::ClientGrad {
                step: 1,
                grad: Tensor::exact(vec![0.0; 2]),
            },
            "unexpected split-client-grad",
        ),
    ];
    for (from, p, needle) in cases {
        let (r, _) = Fake::ctx_run(&mut server, from, p);
        let e = r.unwrap_err().to_string();
        assert!(e.contains(needle), "{needle:?} not in {e:?}");
    }
    // A good answer is taken, a second one refused.
    let (r, _) = Fake::ctx_run(&mut server, 1, acts(4, F, 1));
    r.unwrap();
    let (r, _) = Fake::ctx_run(&mut server, 1, acts(4, F, 1));
    assert!(r.unwrap_err().to_string().contains("second answer"));

    // Clients refuse windows outside their data and gradients for steps they did not run.
    let mut client = SplitClient::new(1, Arc::new(vec![0, 1, 2]), 7);
    let req = |offset, count| Msg::Request {
        step: 1,
        epoch: 1,
        offset,
        count,
        client_part: Tensor::exact(vec![0.0; CLIENT_PARAMS]),
    };
    let (r, _) = Fake::ctx_run(&mut client, SERVER, req(2, 2));
    assert!(r.unwrap_err().to_string().contains("this client holds 3"));
    let (r, _) = Fake::ctx_run(&mut client, SERVER, req(u32::MAX, 2));
    assert!(r.is_err());
    let (r, _) = Fake::ctx_run(&mut client, 2, req(0, 1));
    assert!(r.unwrap_err().to_string().contains("only the server"));
    let g = Msg::Gradient {
        step: 1,
        grad: Tensor::exact(vec![0.0; F]),
    };
    let (r, _) = Fake::ctx_run(&mut client, SERVER, g.clone());
    assert!(r.unwrap_err().to_string().contains("no request is open"));
    let (r, sent) = Fake::ctx_run(&mut client, SERVER, req(0, 1));
    r.unwrap();
    assert!(matches!(sent[0].1, Body::Msg(Msg::Activations { .. })));
    let (r, sent) = Fake::ctx_run(&mut client, SERVER, g);
    r.unwrap();
    assert!(matches!(sent[0].1, Body::Msg(Msg::ClientGrad { .. })));
}

#[test]
fn a_bad_global_batch_is_refused_before_the_run() {
    let s = Arc::new(settings(
        vec![4; 10],
        Sampler::FixedLocal,
        5,
        LatencyConfig::default(),
    ));
    let e = SplitServer::new(s, vec![0.0; NUM_PARAMS])
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("B = 5 must be at least the 10 clients"), "{e}");
    let ok = Arc::new(settings(
        vec![4; 10],
        Sampler::Global,
        5,
        LatencyConfig::default(),
    ));
    assert!(SplitServer::new(ok, vec![0.0; NUM_PARAMS]).is_ok());
}

fn compressed(quantize: Quantize) -> SplitSettings {
    SplitSettings {
        compression: Some(Compression {
            quantize,
            ..Compression::default()
        }),
        ..settings(
            vec![7, 3, 5, 5],
            Sampler::Global,
            6,
            LatencyConfig::default(),
        )
    }
}

#[test]
fn compressed_messages_carry_the_same_run() {
    let plain = settings(
        vec![7, 3, 5, 5],
        Sampler::Global,
        6,
        LatencyConfig::default(),
    );
    let (a, _) = run(plain, 1);
    // The fake's values are small integers, which fp16 holds exactly: the same run.
    let (b, _) = run(compressed(Quantize::Fp16), 2);
    assert_eq!(a.final_params, b.final_params);
    let bytes = |o: &SimOutcome<SplitMetrics>| -> (u64, u64) {
        o.rows
            .iter()
            .fold((0, 0), |(u, d), (m, _)| (u + m.bytes_up, d + m.bytes_down))
    };
    // Bytes are counted as encoded (the fake's vectors are too short for fp16 to save bytes
    // after the codec's header; the CLI test shows the saving on a real model).
    let (up_b, down_b) = bytes(&b);
    let shutdowns = 4 * Control::Shutdown { round: 2 }.frame().len() as u64;
    let sent: u64 = b.traffic.iter().map(|t| t.bytes_sent).sum();
    assert_eq!(up_b + down_b + shutdowns, sent);
    // Stochastic rounding is seeded by run, ends, step and part: worker count changes nothing.
    let (c, _) = run(compressed(Quantize::Qsgd { levels: 4 }), 1);
    let (d, _) = run(compressed(Quantize::Qsgd { levels: 4 }), 3);
    assert_eq!(c.final_params, d.final_params);
    assert_eq!(bytes(&c), bytes(&d));
}

#[test]
fn compressed_split_messages_are_checked() {
    let s = Arc::new(SplitSettings {
        counts: vec![4, 4],
        batch: 8,
        ..compressed(Quantize::Fp16)
    });
    let mut server = SplitServer::new(Arc::clone(&s), vec![0.0; NUM_PARAMS]).unwrap();
    let (mut out, mut ev) = (Vec::new(), Vec::new());
    let mut t = Fake::default();
    server
        .on_start(&mut NodeCtx::new(
            &mut out,
            &mut ev,
            &mut t as &mut dyn SplitLearner,
        ))
        .unwrap();
    let c = s.compression.unwrap();
    let Body::Msg(Msg::Request { client_part, .. }) = &out[0].1 else {
        panic!("{:?}", out[0].1);
    };
    assert_eq!(
        client_part.packed_bytes().unwrap().len(),
        braid_core::compress::encoded_len(CLIENT_PARAMS, &c)
    );
    let pack = |v: &[f32]| braid_core::compress::encode(v, &c, &mut seed::rng(0, &[])).unwrap();
    let acts = |labels: usize, values: usize| Msg::Activations {
        step: 1,
        labels: vec![1; labels],
        acts: Tensor::packed(pack(&vec![0.5; values])),
    };
    let cases = [
        (acts(4, 4 * F + 1), "activations: compressed vector"),
        (acts(3, 3 * F), "3 labels, 4 samples were asked for"),
        (
            Msg::Activations {
                step: 1,
                labels: vec![1; 4],
                acts: Tensor::exact(vec![0.0; 4 * F]),
            },
            "uncompressed, but this run sets compression.split",
        ),
        (
            Msg::Gradient {
                step: 1,
                grad: Tensor::packed(pack(&[1.0; 4 * F])),
            },
            "unexpected split-gradient",
        ),
    ];
    for (p, needle) in cases {
        let (r, _) = Fake::ctx_run(&mut server, 1, p);
        let e = r.unwrap_err().to_string();
        assert!(e.contains(needle), "{needle:?} not in {e:?}");
    }
    let (r, _) = Fake::ctx_run(&mut server, 1, acts(4, 4 * F));
    r.unwrap();

    // A client of a compressed run: wrong sizes and the plain form are refused.
    let mut client = SplitClient::new(1, Arc::new(vec![0, 1, 2]), 7).with_settings(&s);
    let req = |n: usize| Msg::Request {
        step: 1,
        epoch: 1,
        offset: 0,
        count: 2,
        client_part: Tensor::packed(pack(&vec![0.0; n])),
    };
    let (r, _) = Fake::ctx_run(&mut client, SERVER, req(CLIENT_PARAMS + 1));
    let e = r.unwrap_err().to_string();
    assert!(
        e.contains("client part") && e.contains("values, expected 2"),
        "{e}"
    );
    let (r, sent) = Fake::ctx_run(&mut client, SERVER, req(CLIENT_PARAMS));
    r.unwrap();
    assert!(matches!(
        &sent[0].1,
        Body::Msg(Msg::Activations {
            acts: Tensor::Packed(_),
            ..
        })
    ));
    let grad = |n: usize| Msg::Gradient {
        step: 1,
        grad: Tensor::packed(pack(&vec![1.0; n])),
    };
    let (r, _) = Fake::ctx_run(&mut client, SERVER, grad(2 * F + 1));
    let e = r.unwrap_err().to_string();
    assert!(e.contains("gradient") && e.contains("expected 6"), "{e}");
    let (r, sent) = Fake::ctx_run(&mut client, SERVER, grad(2 * F));
    r.unwrap();
    assert!(matches!(
        &sent[0].1,
        Body::Msg(Msg::ClientGrad {
            grad: Tensor::Packed(_),
            ..
        })
    ));
    // A plain client refuses compressed messages.
    let mut plain = SplitClient::new(1, Arc::new(vec![0, 1, 2]), 7);
    let (r, _) = Fake::ctx_run(&mut plain, SERVER, req(CLIENT_PARAMS));
    let e = r.unwrap_err().to_string();
    assert!(e.contains("no compression.split"), "{e}");
}

/// A late second copy of an earlier request does not close the request whose gradient comes
/// next; a gradient that does not fit its request is refused; a client restarted from its
/// checkpoint between its activations and the gradient answers as the unbroken one; and a
/// gradient that comes again is answered again.
#[test]
fn a_split_client_keeps_its_open_requests_across_late_copies_and_restarts() {
    let s = settings(vec![4], Sampler::Global, 2, LatencyConfig::default());
    let client = || SplitClient::new(1, Arc::new(vec![0, 1, 2, 3]), 7).with_settings(&s);
    let req = |step: u64, offset: u32| Msg::Request {
        step,
        epoch: 1,
        offset,
        count: 2,
        client_part: Tensor::exact(vec![0.5; CLIENT_PARAMS]),
    };
    let grad = |step: u64, n: usize| Msg::Gradient {
        step,
        grad: Tensor::exact(vec![1.0; n]),
    };
    let mut a = client();
    assert_eq!(a.state_version(), 0);
    for m in [req(2, 0), req(3, 2), req(2, 0)] {
        Fake::ctx_run(&mut a, SERVER, m).0.unwrap();
    }
    assert_eq!(a.state_version(), 3, "every request changes the checkpoint");
    let e = Fake::ctx_run(&mut a, SERVER, grad(3, 2 * F + 1))
        .0
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("a gradient of 7 values for 2 samples"),
        "{e}"
    );
    // Restarted from its checkpoint: the open requests come back.
    let mut b = client();
    b.load_state(a.save_state().unwrap()).unwrap();
    let (r, from_b) = Fake::ctx_run(&mut b, SERVER, grad(3, 2 * F));
    r.unwrap();
    let (r, from_a) = Fake::ctx_run(&mut a, SERVER, grad(3, 2 * F));
    r.unwrap();
    assert_eq!(format!("{from_a:?}"), format!("{from_b:?}"));
    assert!(
        matches!(
            &from_a[..],
            [(SERVER, Body::Msg(Msg::ClientGrad { step: 3, .. }))]
        ),
        "{from_a:?}"
    );
    // A gradient that comes again is answered again, the same way (a resumed server asks a
    // step again); step 2 is still open; an unknown step is refused.
    let (r, again) = Fake::ctx_run(&mut a, SERVER, grad(3, 2 * F));
    r.unwrap();
    assert_eq!(format!("{again:?}"), format!("{from_a:?}"));
    assert_eq!(a.state_version(), 3, "answering changes no checkpoint");
    Fake::ctx_run(&mut a, SERVER, grad(2, 2 * F)).0.unwrap();
    let e = Fake::ctx_run(&mut a, SERVER, grad(4, 2 * F)).0.unwrap_err();
    assert!(
        e.to_string()
            .contains("no request is open for step 4 (open: [3, 2])"),
        "{e}"
    );
    // A damaged checkpoint is refused.
    let mut state = b.save_state().unwrap();
    state.meta["open"] = serde_json::json!([{ "step": 9, "samples": [77] }]);
    let e = client().load_state(state).unwrap_err();
    assert!(e.to_string().contains("not one of this client's 4"), "{e}");
}

/// A split client that crashed: it never answers (`forward`), or it answers requests and
/// then never sends its client-part gradient (`!forward`).
struct Crashed {
    id: NodeId,
    forward: bool,
    inner: SplitClient,
}

impl Node for Crashed {
    type Protocol = SplitProtocol;

    fn id(&self) -> NodeId {
        self.id
    }
    fn on_start(&mut self, _: &mut NodeCtx<'_, SplitProtocol>) -> EngineResult {
        Ok(())
    }
    fn on_message(
        &mut self, from: NodeId, msg: Msg, ctx: &mut NodeCtx<'_, SplitProtocol>,
    ) -> EngineResult {
        match msg {
            Msg::Request { .. } if !self.forward => self.inner.on_message(from, msg, ctx),
            _ => Ok(()),
        }
    }
    fn on_control(
        &mut self, _: NodeId, _: Control, _: &mut NodeCtx<'_, SplitProtocol>,
    ) -> EngineResult {
        Ok(())
    }
}

fn run_with(
    s: &Arc<SplitSettings>, crashed: Option<(NodeId, bool)>,
) -> (SimOutcome<SplitMetrics>, Vec<usize>) {
    let fake = Fake::default();
    let mut v = nodes(s);
    if let Some((id, forward)) = crashed {
        let shard = (0..s.counts.len())
            .take(id as usize - 1)
            .map(|k| s.counts[k])
            .sum::<usize>();
        v[id as usize] = Box::new(Crashed {
            id,
            forward,
            inner: SplitClient::new(
                id,
                Arc::new((shard..shard + s.counts[id as usize - 1]).collect()),
                s.seed,
            ),
        });
    }
    let w = vec![Worker::new(Box::new(fake.clone()) as Box<dyn SplitLearner>).unwrap()];
    let out = Simulator::new(v, w).unwrap().run(&mut |_| {}).unwrap();
    let seen = fake.seen.lock().unwrap().clone();
    (out, seen)
}

#[test]
fn with_a_step_deadline_the_server_goes_on_without_a_crashed_client() {
    let counts = vec![9, 5, 2, 4];
    let plain = Arc::new(settings(
        counts.clone(),
        Sampler::Global,
        8,
        LatencyConfig::default(),
    ));
    let timed = Arc::new(SplitSettings {
        step_deadline: Some(std::time::Duration::from_secs(5)),
        ..settings(counts, Sampler::Global, 8, LatencyConfig::default())
    });
    // No fault: a deadline changes nothing.
    let (a, _) = run_with(&plain, None);
    let (b, _) = run_with(&timed, None);
    assert_eq!(a.final_params, b.final_params);
    assert_eq!(
        a.rows.iter().map(|(m, _)| m.clone()).collect::<Vec<_>>(),
        b.rows.iter().map(|(m, _)| m.clone()).collect::<Vec<_>>()
    );
    // Client 2 (samples 9..14) never answers: every epoch completes without its samples.
    let (out, seen) = run_with(&timed, Some((2, true)));
    assert_eq!(out.rows.len(), 2);
    assert!(out.final_params.is_some(), "the run finished");
    assert!(seen.iter().all(|&i| !(9..14).contains(&i)), "{seen:?}");
    for (m, _) in &out.rows {
        assert_eq!(m.samples, 15, "{m:?}");
    }
    // Client 2 answers requests, then never sends its gradient: the server part trains on the
    // activations that came in time (its own included while it is not yet known to be late),
    // the client part on the live clients' gradients only.
    let (out, seen) = run_with(&timed, Some((2, false)));
    assert_eq!(out.rows.len(), 2);
    let mut seen = seen;
    seen.sort_unstable();
    let twice: Vec<usize> = (0..20).flat_map(|i| [i, i]).collect();
    assert_eq!(seen, twice, "every client ran its forward passes");
    for (m, _) in &out.rows {
        assert!((15..=20).contains(&m.samples), "{m:?}");
    }
    // Client-part gradient per step: (samples, 1) summed over the clients that sent one: the
    // crashed client's 5 samples per epoch are missing from it.
    let p = out.final_params.unwrap();
    assert_eq!(p[0], -30.0);
    // Without a deadline the same crash stalls the run (the simulator ends with nothing to
    // deliver and no result).
    let (stalled, _) = run_with(&plain, Some((2, true)));
    assert!(stalled.final_params.is_none());
}
