//! The FedAvg state machines and the simulator, driven with a pure-Rust fake trainer (fast,
//! no tensor backend): aggregation weights, partial participation, hostile messages,
//! determinism and independence from the number of worker threads.

mod common;
use braid_engine::algorithms::fedavg::FedProtocol;
use common::Flaky;
use std::sync::Arc;

use braid_core::server_opt::ServerOptimizerConfig;
use braid_engine::algorithms::fedavg::FedTrainer;
use braid_engine::algorithms::fedavg::{
    FedAvgClient, FedAvgServer, Msg, RoundMetrics, ServerConfig, SERVER,
};
use braid_engine::node::{BoxNode, EngineError, EngineResult, Event, Node, NodeCtx};
use braid_engine::sim::{Simulator, Worker};
use braid_engine::trainer::{Evaluate, Train, Trainer};
use braid_engine::wire::{Body, Control, NodeId, Tensor};
use braid_nn::{EvalOutcome, TrainOutcome};

/// "Training" moves every parameter to the mean of the shard's indices plus a seed-dependent
/// jitter; evaluation reports the first parameter as "accuracy".
struct FakeTrainer {
    jitter: bool,
}

impl Trainer for FakeTrainer {}

impl Train for FakeTrainer {
    fn train(
        &mut self, params: &[f32], shard: &[usize], seed: u64, _lr_scale: f64,
    ) -> EngineResult<TrainOutcome> {
        let mean = shard.iter().sum::<usize>() as f32 / shard.len().max(1) as f32;
        let j = if self.jitter {
            (seed % 1000) as f32 * 1e-3
        } else {
            0.0
        };
        Ok(TrainOutcome {
            params: params.iter().map(|_| mean + j).collect(),
            samples: shard.len(),
            steps: 1,
            mean_loss: 1.0,
        })
    }
}

impl Evaluate for LrRecorder {
    fn evaluate(&mut self, _: &[f32]) -> EngineResult<EvalOutcome> {
        Err(EngineError::Unsupported("a client never evaluates".into()))
    }

    fn evaluate_sample(&mut self, _: &[f32], _: usize) -> EngineResult<EvalOutcome> {
        Err(EngineError::Unsupported("a client never evaluates".into()))
    }
}

impl Evaluate for FakeTrainer {
    fn evaluate(&mut self, params: &[f32]) -> EngineResult<EvalOutcome> {
        Ok(EvalOutcome {
            accuracy: f64::from(params[0]),
            loss: 0.0,
            samples: 1,
        })
    }

    fn evaluate_sample(&mut self, params: &[f32], _n: usize) -> EngineResult<EvalOutcome> {
        self.evaluate(params)
    }
}

fn nodes(
    shards: &[Vec<usize>], per_round: usize, rounds: u32, opt: ServerOptimizerConfig,
) -> Vec<BoxNode<FedProtocol>> {
    let clients: Vec<NodeId> = (1..=shards.len() as NodeId).collect();
    let config = ServerConfig {
        rounds,
        clients_per_round: per_round,
        eval_every: 1,
        server_optimizer: opt,
        seed: 9,
        round_deadline: None,
        min_replies: 1,
        aggregator: Default::default(),
    };
    let mut v: Vec<BoxNode<FedProtocol>> = vec![Box::new(
        FedAvgServer::new(config, clients.clone(), vec![0.0; 4]).unwrap(),
    )];
    for (id, s) in clients.iter().zip(shards) {
        v.push(Box::new(FedAvgClient::new(*id, Arc::new(s.clone()), 9)));
    }
    v
}

fn workers(n: usize, jitter: bool) -> Vec<Worker<dyn FedTrainer>> {
    (0..n)
        .map(|_| Worker::new(Box::new(FakeTrainer { jitter }) as Box<dyn FedTrainer>).unwrap())
        .collect()
}

#[test]
fn fedavg_weights_clients_by_samples() {
    // Client 1 holds {0} (mean 0, 1 sample); client 2 holds {1..=3} (mean 2, 3 samples).
    let shards = vec![vec![0], vec![1, 2, 3]];
    let mut sim = Simulator::new(
        nodes(&shards, 2, 1, ServerOptimizerConfig::default()),
        workers(2, false),
    )
    .unwrap();
    let out = sim.run(&mut |_| {}).unwrap();
    let expect = (0.0 * 1.0 + 2.0 * 3.0) / 4.0;
    assert_eq!(out.final_params.unwrap(), vec![expect; 4]);
    let (m, _) = &out.rows[0];
    assert_eq!((m.round, m.clients, m.samples, m.local_steps), (1, 2, 4, 2));
    assert_eq!(m.accuracy, Some(f64::from(expect)));
    // Bytes: 2 requests down and 2 replies up, each exactly its encoding's length.
    let req = Body::Msg(Msg::Request {
        round: 1,
        model: Tensor::exact(vec![0.0; 4]),
    })
    .encode()
    .len() as u64;
    assert_eq!(m.bytes_down, 2 * req);
    // The server also tells both clients the run is over.
    let bye = Control::Shutdown { round: 1 }.frame().len() as u64;
    assert_eq!(out.traffic[0].bytes_sent, 2 * req + 2 * bye);
    assert_eq!(out.traffic[0].bytes_received, m.bytes_up);
    assert_eq!(
        out.traffic[1].bytes_received + out.traffic[2].bytes_received,
        2 * req + 2 * bye
    );
}

#[test]
fn partial_participation_is_seeded_and_deterministic() {
    let shards: Vec<Vec<usize>> = (0..20).map(|k| vec![k * 10, k * 10 + 1]).collect();
    let run = |w: usize| {
        let mut sim = Simulator::new(
            nodes(&shards, 5, 6, ServerOptimizerConfig::default()),
            workers(w, true),
        )
        .unwrap();
        sim.run(&mut |_| {}).unwrap()
    };
    let a = run(1);
    let b = run(2);
    let c = run(3);
    let strip = |o: &braid_engine::sim::SimOutcome<RoundMetrics>| {
        (
            o.rows.iter().map(|(m, _)| m.clone()).collect::<Vec<_>>(),
            o.final_params.clone(),
            o.traffic.clone(),
        )
    };
    assert_eq!(
        strip(&a),
        strip(&b),
        "results depend on the number of workers"
    );
    assert_eq!(strip(&a), strip(&c));
    assert!(a.rows.iter().all(|(m, _)| m.clients == 5));
    // Over 6 rounds, 5 of 20 clients each: several different clients took part.
    let active = a.traffic[1..]
        .iter()
        .filter(|t| t.messages_received > 0)
        .count();
    assert!(active > 5, "only {active} clients ever sampled");
}

#[test]
fn server_optimizer_changes_the_trajectory() {
    let shards = vec![vec![4], vec![6]];
    let run = |opt| {
        let mut sim = Simulator::new(nodes(&shards, 2, 3, opt), workers(1, false)).unwrap();
        sim.run(&mut |_| {}).unwrap().final_params.unwrap()[0]
    };
    assert_eq!(run(ServerOptimizerConfig::default()), 5.0);
    let m = run(ServerOptimizerConfig::Momentum {
        lr: 1.0,
        momentum: 0.9,
    });
    assert!(m > 5.0, "momentum should overshoot the mean, got {m}");
    let half = run(ServerOptimizerConfig::Plain { lr: 0.5 });
    assert!(half > 0.0 && half < 5.0);
}

/// What handling one message produced: the result, the messages sent and the events.
type Handled = (
    EngineResult,
    Vec<(NodeId, Body<Msg>)>,
    Vec<Event<RoundMetrics>>,
);

fn drive(node: &mut dyn Node<Protocol = FedProtocol>, from: NodeId, payload: Msg) -> Handled {
    let (mut out, mut ev) = (Vec::new(), Vec::new());
    let mut t = FakeTrainer { jitter: false };
    let mut ctx = NodeCtx::new(&mut out, &mut ev, &mut t as &mut dyn FedTrainer);
    let r = node.on_message(from, payload, &mut ctx);
    (r, out, ev)
}

#[test]
fn server_rejects_hostile_or_stale_updates() {
    let config = ServerConfig {
        rounds: 2,
        clients_per_round: 2,
        eval_every: 1,
        server_optimizer: Default::default(),
        seed: 0,
        round_deadline: None,
        min_replies: 1,
        aggregator: Default::default(),
    };
    let mut server = FedAvgServer::new(config, vec![1, 2], vec![0.0; 3]).unwrap();
    let (mut out, mut ev) = (Vec::new(), Vec::new());
    let mut t = FakeTrainer { jitter: false };
    server
        .on_start(&mut NodeCtx::new(
            &mut out,
            &mut ev,
            &mut t as &mut dyn FedTrainer,
        ))
        .unwrap();
    assert_eq!(out.len(), 2);
    let reply = |round, params: Vec<f32>| Msg::Reply {
        round,
        num_samples: 1,
        steps: 1,
        train_loss: 0.0,
        update: Tensor::exact(params),
    };
    let cases = [
        (1, reply(2, vec![0.0; 3]), "round 2"),
        (7, reply(1, vec![0.0; 3]), "not asked"),
        (1, reply(1, vec![0.0; 5]), "5 parameters"),
        (1, reply(1, vec![f32::NAN, 0.0, 0.0]), "NaN"),
        (
            1,
            Msg::Request {
                round: 1,
                model: Tensor::exact(vec![]),
            },
            "only accepts",
        ),
    ];
    for (from, p, needle) in cases {
        let (r, _, _) = drive(&mut server, from, p);
        let e = r.unwrap_err().to_string();
        assert!(e.contains(needle), "{needle:?} not in {e:?}");
    }
    assert!(drive(&mut server, 1, reply(1, vec![1.0; 3])).0.is_ok());
    let dup = drive(&mut server, 1, reply(1, vec![1.0; 3]))
        .0
        .unwrap_err()
        .to_string();
    assert!(dup.contains("duplicate"), "{dup}");
    // The rejected messages changed nothing: one more good reply completes the round.
    let (r, out, ev) = drive(&mut server, 2, reply(1, vec![3.0; 3]));
    r.unwrap();
    assert_eq!(server.params(), &[2.0, 2.0, 2.0]);
    assert!(matches!(&ev[0], Event::Metrics(m) if m.round == 1 && m.clients == 2));
    assert_eq!(out.len(), 2, "round 2 requests");
}

#[test]
fn client_only_obeys_the_server() {
    let mut client = FedAvgClient::new(3, Arc::new(vec![1, 2]), 0);
    let (r, out, _) = drive(
        &mut client,
        5,
        Msg::Request {
            round: 1,
            model: Tensor::exact(vec![0.0]),
        },
    );
    assert!(r
        .unwrap_err()
        .to_string()
        .contains("only listens to the server"));
    assert!(out.is_empty());
    let (r, out, _) = drive(
        &mut client,
        SERVER,
        Msg::Request {
            round: 4,
            model: Tensor::exact(vec![0.0]),
        },
    );
    r.unwrap();
    assert!(matches!(
        &out[0],
        (
            SERVER,
            Body::Msg(Msg::Reply {
                round: 4,
                num_samples: 2,
                ..
            })
        )
    ));
}

#[test]
fn bad_setups_are_errors() {
    let config = ServerConfig {
        rounds: 1,
        clients_per_round: 3,
        eval_every: 1,
        server_optimizer: Default::default(),
        seed: 0,
        round_deadline: None,
        min_replies: 1,
        aggregator: Default::default(),
    };
    assert!(FedAvgServer::new(config.clone(), vec![1, 2], vec![0.0]).is_err());
    assert!(FedAvgServer::new(config, vec![], vec![0.0]).is_err());
    assert!(Simulator::new(nodes(&[vec![0]], 1, 1, Default::default()), vec![]).is_err());
}

/// Records the learning-rate scale of every training call.
struct LrRecorder(Vec<f64>);

impl Trainer for LrRecorder {}

impl Train for LrRecorder {
    fn train(
        &mut self, params: &[f32], shard: &[usize], _seed: u64, lr_scale: f64,
    ) -> EngineResult<TrainOutcome> {
        self.0.push(lr_scale);
        Ok(TrainOutcome {
            params: params.to_vec(),
            samples: shard.len(),
            steps: 1,
            mean_loss: 1.0,
        })
    }
}

#[test]
fn clients_follow_the_learning_rate_schedule_by_round() {
    use braid_core::lr_schedule::LrSchedule;
    let mut client = FedAvgClient::new(1, Arc::new(vec![0, 1]), 9).with_lr_schedule(
        LrSchedule::Step {
            milestones: vec![0.5],
            gamma: 0.1,
        },
        4,
    );
    let mut rec = LrRecorder(Vec::new());
    let (mut out, mut ev) = (Vec::new(), Vec::new());
    for round in 1..=4 {
        let mut ctx = NodeCtx::new(&mut out, &mut ev, &mut rec as &mut dyn FedTrainer);
        let req = Msg::Request {
            round,
            model: Tensor::exact(vec![0.0; 4]),
        };
        client.on_message(SERVER, req, &mut ctx).unwrap();
    }
    assert_eq!(rec.0, vec![1.0, 1.0, 0.1, 0.1], "progress (round - 1) / 4");
}

/// Server with a 30 s round deadline over clients holding {0}, {1, 2, 3}, {10, 20}; client 3
/// ignores its first `drop` requests.
fn flaky_run(
    drop: usize, min_replies: usize, rounds: u32,
) -> braid_engine::sim::SimOutcome<RoundMetrics> {
    let shards = [vec![0], vec![1, 2, 3], vec![10, 20]];
    let config = ServerConfig {
        rounds,
        clients_per_round: 3,
        eval_every: 1,
        server_optimizer: Default::default(),
        seed: 0,
        round_deadline: Some(std::time::Duration::from_secs(30)),
        min_replies,
        aggregator: Default::default(),
    };
    let mut v: Vec<BoxNode<FedProtocol>> = vec![Box::new(
        FedAvgServer::new(config, vec![1, 2, 3], vec![0.0; 4]).unwrap(),
    )];
    for (i, s) in shards.iter().enumerate() {
        let c = FedAvgClient::new(i as NodeId + 1, Arc::new(s.clone()), 0);
        v.push(if i == 2 {
            Box::new(Flaky { inner: c, drop })
        } else {
            Box::new(c)
        });
    }
    Simulator::new(v, workers(2, false))
        .unwrap()
        .run(&mut |_| {})
        .unwrap()
}

#[test]
fn a_dead_client_is_skipped_at_the_deadline_and_the_weights_adjust() {
    let out = flaky_run(usize::MAX, 1, 3);
    assert_eq!(out.rows.len(), 3, "every round completes without client 3");
    for (m, _) in &out.rows {
        assert_eq!((m.clients, m.stragglers, m.samples), (2, 1, 4));
    }
    // Weighted over the two that answered: (0 * 1 + 2 * 3) / 4.
    assert_eq!(out.final_params.unwrap(), vec![1.5; 4]);
    // Nobody dead: no deadline passes, all three count.
    let all = flaky_run(0, 1, 2);
    assert!(all
        .rows
        .iter()
        .all(|(m, _)| m.stragglers == 0 && m.clients == 3));
    assert_eq!(all.final_params.unwrap(), vec![(6.0 + 30.0) / 6.0; 4]);
}

#[test]
fn with_min_replies_the_server_asks_again_and_a_returning_client_rejoins() {
    // Client 3 misses round 1's first request; the server needs all 3 replies, so at the
    // deadline it asks client 3 again, which now answers from the current global model.
    let out = flaky_run(1, 3, 2);
    assert_eq!(out.rows.len(), 2);
    for (m, _) in &out.rows {
        assert_eq!((m.clients, m.stragglers), (3, 0));
    }
    // Round 1 sent 3 requests and 1 repeat: 4 requests' worth of bytes down.
    let req = Body::Msg(Msg::Request {
        round: 1,
        model: Tensor::exact(vec![0.0; 4]),
    })
    .encoded_len() as u64;
    assert_eq!(out.rows[0].0.bytes_down, 4 * req);
    assert_eq!(out.rows[1].0.bytes_down, 3 * req);
    assert_eq!(out.final_params.unwrap(), vec![6.0; 4]);
}

#[test]
fn a_server_resumed_from_its_state_finishes_like_an_uninterrupted_one() {
    use braid_engine::node::NodeState;
    let shards = vec![vec![0], vec![1, 2, 3], vec![10, 20]];
    let run = |rounds: u32, state: Option<NodeState>| {
        let mut v = nodes(&shards, 2, rounds, ServerOptimizerConfig::default());
        if let Some(s) = state {
            v[0].load_state(s).unwrap();
        }
        let mut sim = Simulator::new(v, workers(2, true)).unwrap();
        sim.run(&mut |_| {}).unwrap()
    };
    let whole = run(5, None);
    // The state after round 2 of a 5-round run, taken by the server itself.
    let mut server = FedAvgServer::new(
        ServerConfig {
            rounds: 5,
            clients_per_round: 2,
            eval_every: 1,
            server_optimizer: ServerOptimizerConfig::default(),
            seed: 9,
            round_deadline: None,
            min_replies: 1,
            aggregator: Default::default(),
        },
        vec![1, 2, 3],
        vec![0.0; 4],
    )
    .unwrap();
    let two = run(2, None);
    let mut state = server.save_state().unwrap();
    state.meta = serde_json::json!({ "completed_rounds": 2 });
    state.tensors[0].1 = two.final_params.clone().unwrap();
    server.load_state(state.clone()).unwrap();
    let resumed = run(5, Some(state.clone()));
    assert_eq!(resumed.final_params, whole.final_params);
    let tail: Vec<_> = whole.rows[2..].iter().map(|(m, _)| m.clone()).collect();
    let got: Vec<_> = resumed.rows.iter().map(|(m, _)| m.clone()).collect();
    assert_eq!(got, tail, "rounds 3..=5, identical");
    // Damaged states are refused.
    let mut bad = state.clone();
    bad.tensors[0].1.pop();
    assert!(server.load_state(bad).is_err());
    let mut bad = state.clone();
    bad.meta = serde_json::json!({ "completed_rounds": 6 });
    assert!(server.load_state(bad).is_err());
    let mut bad = state;
    bad.tensors.retain(|(n, _)| n != "params");
    assert!(server.load_state(bad).is_err());
}

fn compressed_nodes(
    shards: &[Vec<usize>], rounds: u32, cfg: &braid_engine::config::CompressionConfig,
) -> Vec<BoxNode<FedProtocol>> {
    let n = 100;
    let clients: Vec<NodeId> = (1..=shards.len() as NodeId).collect();
    let config = ServerConfig {
        rounds,
        clients_per_round: shards.len(),
        eval_every: 1,
        server_optimizer: ServerOptimizerConfig::default(),
        seed: 9,
        round_deadline: None,
        min_replies: 1,
        aggregator: Default::default(),
    };
    let mut v: Vec<BoxNode<FedProtocol>> = vec![Box::new(
        FedAvgServer::new(config, clients.clone(), vec![0.0; n])
            .unwrap()
            .with_downlink(cfg.downlink),
    )];
    for (id, s) in clients.iter().zip(shards) {
        v.push(Box::new(
            FedAvgClient::new(*id, Arc::new(s.clone()), 9).with_compression(cfg, n),
        ));
    }
    v
}

#[test]
fn compressed_messages_are_counted_exactly_and_lossless_settings_change_nothing() {
    use braid_core::compress::{encoded_len, Compression, Quantize, Sparsify};
    use braid_engine::config::CompressionConfig;
    let shards = vec![vec![0, 1], vec![5, 6, 7]];
    let run = |cfg: &CompressionConfig, w: usize| {
        Simulator::new(compressed_nodes(&shards, 3, cfg), workers(w, true))
            .unwrap()
            .run(&mut |_| {})
            .unwrap()
    };
    let plain = run(&CompressionConfig::default(), 1);
    // Top-k of everything in f32 is lossless: the same model, though the bytes differ.
    let lossless = CompressionConfig {
        uplink: Some(Compression {
            sparsify: Sparsify::TopK { fraction: 1.0 },
            quantize: Quantize::F32,
        }),
        error_feedback: true,
        downlink: None,
        downlink_delta: false,
        gossip: None,
        models: None,
        split: None,
    };
    assert_eq!(run(&lossless, 2).final_params, plain.final_params);

    let lossy = CompressionConfig {
        uplink: Some(Compression {
            sparsify: Sparsify::TopK { fraction: 0.1 },
            quantize: Quantize::Fp16,
        }),
        error_feedback: true,
        downlink: Some(Compression {
            sparsify: Sparsify::None,
            quantize: Quantize::Int8 { block: 16 },
        }),
        downlink_delta: false,
        gossip: None,
        models: None,
        split: None,
    };
    let out = run(&lossy, 2);
    assert_eq!(
        out.final_params,
        run(&lossy, 1).final_params,
        "deterministic"
    );
    let up = Body::Msg(Msg::Reply {
        round: 1,
        num_samples: 0,
        steps: 0,
        train_loss: 0.0,
        update: Tensor::packed(vec![0; encoded_len(100, lossy.uplink.as_ref().unwrap())]),
    })
    .encoded_len() as u64;
    let down = Body::Msg(Msg::Request {
        round: 1,
        model: Tensor::packed(vec![0; encoded_len(100, lossy.downlink.as_ref().unwrap())]),
    })
    .encoded_len() as u64;
    for (m, _) in &out.rows {
        assert_eq!((m.bytes_up, m.bytes_down), (2 * up, 2 * down));
        // 10 indices and fp16 values plus headers, against 100 f32 values.
        assert!(m.bytes_up * 3 < plain.rows[0].0.bytes_up);
    }
    // A compressed update that does not fit the model is refused, not applied.
    let mut server = FedAvgServer::new(
        ServerConfig {
            rounds: 1,
            clients_per_round: 1,
            eval_every: 1,
            server_optimizer: ServerOptimizerConfig::default(),
            seed: 0,
            round_deadline: None,
            min_replies: 1,
            aggregator: Default::default(),
        },
        vec![1],
        vec![0.0; 100],
    )
    .unwrap();
    let mut t = FakeTrainer { jitter: false };
    let (mut o, mut e) = (Vec::new(), Vec::new());
    server
        .on_start(&mut NodeCtx::new(
            &mut o,
            &mut e,
            &mut t as &mut dyn FedTrainer,
        ))
        .unwrap();
    let mut rng = braid_core::seed::rng(1, &[]);
    let wrong_size =
        braid_core::compress::encode(&[1.0; 99], lossy.uplink.as_ref().unwrap(), &mut rng).unwrap();
    let r = server.on_message(
        1,
        Msg::Reply {
            round: 1,
            num_samples: 1,
            steps: 1,
            train_loss: 0.0,
            update: Tensor::packed(wrong_size),
        },
        &mut NodeCtx::new(&mut o, &mut e, &mut t as &mut dyn FedTrainer),
    );
    assert!(matches!(r, Err(EngineError::Rejected { .. })), "{r:?}");
}
