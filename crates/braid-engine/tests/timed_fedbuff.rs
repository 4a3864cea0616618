//! Simulated time and the asynchronous FedBuff server, with a fake trainer whose compute is
//! known exactly: a synchronous round lasts as long as its slowest client; stragglers slow
//! FedAvg's rounds but not FedBuff's steps; FedBuff's staleness, weights, dropped updates and
//! deadlines; results independent of the worker count.

use braid_engine::algorithms::fedavg::FedProtocol;
use std::sync::Arc;
use std::time::Duration;

use braid_core::latency::LatencyConfig;
use braid_engine::accounting::FlopsPerSample;
use braid_engine::algorithms::fedavg::FedTrainer;
use braid_engine::algorithms::fedavg::{
    FedAvgClient, FedAvgServer, FedCtx, Msg, RoundMetrics, ServerConfig,
};
use braid_engine::algorithms::fedbuff::{FedBuffServer, FedBuffSettings, Staleness};
use braid_engine::node::{BoxNode, EngineError, EngineResult, Node, NodeCtx};
use braid_engine::sim::{SimOutcome, Simulator, Timing, Worker};
use braid_engine::trainer::{Evaluate, Train, Trainer};
use braid_engine::wire::{Body, NodeId, Tensor};
use braid_nn::{EvalOutcome, TrainOutcome};

/// GFLOP per training sample of the fake model.
const GFLOP: u64 = 1_000_000_000;

/// "Training" moves every parameter halfway to the shard's first index, and costs one GFLOP
/// per sample held; evaluation costs nothing and reports the first parameter.
struct Fake;

impl Trainer for Fake {
    fn flops_per_sample(&self) -> FlopsPerSample {
        FlopsPerSample {
            train: GFLOP,
            forward: 0,
        }
    }
}

impl Train for Fake {
    fn train(
        &mut self, params: &[f32], shard: &[usize], _seed: u64, _lr_scale: f64,
    ) -> EngineResult<TrainOutcome> {
        let target = shard.first().copied().unwrap_or(0) as f32;
        Ok(TrainOutcome {
            params: params.iter().map(|p| 0.5 * (p + target)).collect(),
            samples: shard.len(),
            steps: 1,
            mean_loss: 0.5,
        })
    }
}

impl Evaluate for Fake {
    fn evaluate(&mut self, p: &[f32]) -> EngineResult<EvalOutcome> {
        Ok(EvalOutcome {
            accuracy: f64::from(p[0]),
            loss: 0.0,
            samples: 1,
        })
    }

    fn evaluate_sample(&mut self, p: &[f32], _: usize) -> EngineResult<EvalOutcome> {
        self.evaluate(p)
    }
}

/// A client that never answers.
struct Dead(NodeId);

impl Node for Dead {
    type Protocol = FedProtocol;

    fn id(&self) -> NodeId {
        self.0
    }
    fn on_start(&mut self, _: &mut FedCtx<'_>) -> EngineResult {
        Ok(())
    }
    fn on_message(&mut self, _: NodeId, _: Msg, _: &mut FedCtx<'_>) -> EngineResult {
        Ok(())
    }
}

const PARAMS: usize = 8;

/// 1 GFLOP/s clients on 8 Mbit/s (1 MB/s) links with 10 ms latency; `slow` of them 10x
/// slower.
fn latency(slow: f64) -> LatencyConfig {
    LatencyConfig {
        client_gflops: 1.0,
        server_gflops: 1000.0,
        link_mbps: 8.0,
        latency_ms: 10.0,
        slow_fraction: slow,
        slowdown: 10.0,
    }
}

/// Client k (k = 1..=n) holds k samples starting at index 10 k.
fn shard(k: usize) -> Vec<usize> {
    (0..k).map(|i| 10 * k + i).collect()
}

fn server_config(rounds: u32, per_round: usize) -> ServerConfig {
    ServerConfig {
        rounds,
        clients_per_round: per_round,
        eval_every: 1,
        server_optimizer: Default::default(),
        seed: 3,
        round_deadline: None,
        min_replies: 1,
        aggregator: Default::default(),
    }
}

fn run(
    server: BoxNode<FedProtocol>, clients: usize, dead: &[NodeId], timing: Option<Timing>,
    workers: usize,
) -> SimOutcome<RoundMetrics> {
    let mut nodes = vec![server];
    for k in 1..=clients {
        let id = k as NodeId;
        nodes.push(if dead.contains(&id) {
            Box::new(Dead(id))
        } else {
            Box::new(FedAvgClient::new(id, Arc::new(shard(k)), 3))
        });
    }
    let workers = (0..workers)
        .map(|_| Worker::new(Box::new(Fake) as Box<dyn FedTrainer>).unwrap())
        .collect();
    Simulator::new(nodes, workers)
        .unwrap()
        .with_timing(timing)
        .run(&mut |_| {})
        .unwrap()
}

fn timing(clients: usize, slow: f64) -> Timing {
    Timing::new(
        &latency(slow),
        clients + 1,
        &[0],
        &mut braid_core::seed::rng(3, &[]),
    )
}

fn fedavg(rounds: u32, clients: usize) -> BoxNode<FedProtocol> {
    Box::new(
        FedAvgServer::new(
            server_config(rounds, clients),
            (1..=clients as NodeId).collect(),
            vec![0.0; PARAMS],
        )
        .unwrap(),
    )
}

fn fedbuff(rounds: u32, clients: usize, settings: FedBuffSettings) -> BoxNode<FedProtocol> {
    Box::new(
        FedBuffServer::new(
            server_config(rounds, clients),
            settings,
            (1..=clients as NodeId).collect(),
            vec![0.0; PARAMS],
        )
        .unwrap(),
    )
}

/// Bytes of a request and of a reply for the fake model.
fn sizes() -> (u64, u64) {
    let req = Body::Msg(Msg::Request {
        round: 1,
        model: Tensor::exact(vec![0.0; PARAMS]),
    })
    .encoded_len() as u64;
    let rep = Body::Msg(Msg::Reply {
        round: 1,
        num_samples: 1,
        steps: 1,
        train_loss: 0.0,
        update: Tensor::exact(vec![0.0; PARAMS]),
    })
    .encoded_len() as u64;
    (req, rep)
}

#[test]
fn a_synchronous_round_lasts_as_long_as_its_slowest_client() {
    let clients = 4;
    let plain = run(fedavg(3, clients), clients, &[], None, 2);
    let timed = run(
        fedavg(3, clients),
        clients,
        &[],
        Some(timing(clients, 0.0)),
        2,
    );
    // Time changes when things happen, not what a synchronous round computes.
    assert_eq!(plain.final_params, timed.final_params);
    assert!(plain.rows.iter().all(|(m, _)| m.sim_time_s.is_none()));
    // Client 4 is the slowest: 4 samples at 1 GFLOP/s, plus the request and reply over 1 MB/s
    // links and 10 ms each way.
    let (req, rep) = sizes();
    let round = 0.02 + 4.0 + (req + rep) as f64 / 1e6;
    for (r, (m, _)) in timed.rows.iter().enumerate() {
        let t = m.sim_time_s.unwrap();
        assert!(
            (t - round * (r + 1) as f64).abs() < 1e-6,
            "round {}: {t}",
            r + 1
        );
    }
    // Stragglers (here 2 of 4, 10x slower) set the pace of every round.
    let slow = run(
        fedavg(3, clients),
        clients,
        &[],
        Some(timing(clients, 0.5)),
        2,
    );
    let t = |o: &SimOutcome<RoundMetrics>| o.rows.last().unwrap().0.sim_time_s.unwrap();
    assert!(t(&slow) > 2.0 * t(&timed), "{} vs {}", t(&slow), t(&timed));
    assert_eq!(slow.final_params, plain.final_params);
}

#[test]
fn fedbuff_steps_without_waiting_for_stragglers() {
    let clients = 8;
    let settings = FedBuffSettings {
        concurrency: 8,
        buffer: 2,
        staleness: Staleness::Sqrt,
        max_staleness: None,
    };
    let sync = run(
        fedavg(4, clients),
        clients,
        &[],
        Some(timing(clients, 0.25)),
        2,
    );
    let asyn = run(
        fedbuff(16, clients, settings),
        clients,
        &[],
        Some(timing(clients, 0.25)),
        2,
    );
    assert_eq!(asyn.rows.len(), 16);
    // Both took 32 client updates; FedBuff did not wait for the two 10x slower clients.
    let updates =
        |o: &SimOutcome<RoundMetrics>| o.rows.iter().map(|(m, _)| m.clients).sum::<usize>();
    assert_eq!((updates(&sync), updates(&asyn)), (32, 32));
    let t = |o: &SimOutcome<RoundMetrics>| o.rows.last().unwrap().0.sim_time_s.unwrap();
    assert!(
        t(&asyn) * 2.0 < t(&sync),
        "fedbuff {} vs fedavg {}",
        t(&asyn),
        t(&sync)
    );
    // Simulated time only moves forward; every step reports its updates' staleness.
    let times: Vec<f64> = asyn
        .rows
        .iter()
        .map(|(m, _)| m.sim_time_s.unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    assert!(asyn
        .rows
        .iter()
        .all(|(m, _)| m.clients == 2 && m.staleness.is_some()));
    assert!(asyn.rows.iter().any(|(m, _)| m.staleness.unwrap().1 > 0));
    // The same with one worker: the order of events is the model's, not the threads'.
    let again = run(
        fedbuff(16, clients, settings),
        clients,
        &[],
        Some(timing(clients, 0.25)),
        1,
    );
    assert_eq!(again.final_params, asyn.final_params);
    assert_eq!(
        again
            .rows
            .iter()
            .map(|(m, _)| m.clone())
            .collect::<Vec<_>>(),
        asyn.rows.iter().map(|(m, _)| m.clone()).collect::<Vec<_>>()
    );
}

#[test]
fn a_buffer_of_every_client_at_once_is_one_fedavg_round() {
    let clients = 5;
    let settings = FedBuffSettings {
        concurrency: 5,
        buffer: 5,
        staleness: Staleness::Constant,
        max_staleness: None,
    };
    // Without simulated time every first reply arrives before any second one: the buffer holds
    // each client once. (With time, fast clients come back before slow ones answer.)
    let a = run(fedbuff(1, clients, settings), clients, &[], None, 2);
    let b = run(fedavg(1, clients), clients, &[], None, 2);
    let (x, y) = (a.final_params.unwrap(), b.final_params.unwrap());
    assert!(
        x.iter().zip(&y).all(|(p, q)| (p - q).abs() < 1e-5),
        "{x:?} vs {y:?}"
    );
    assert_eq!(a.rows[0].0.staleness, Some((0.0, 0)));
}

#[test]
fn stale_updates_weigh_less_or_are_dropped() {
    let clients = 6;
    let base = FedBuffSettings {
        concurrency: 6,
        buffer: 1,
        staleness: Staleness::Constant,
        max_staleness: None,
    };
    let t = || Some(timing(clients, 0.0));
    let constant = run(fedbuff(6, clients, base), clients, &[], t(), 2);
    let sqrt = run(
        fedbuff(
            6,
            clients,
            FedBuffSettings {
                staleness: Staleness::Sqrt,
                ..base
            },
        ),
        clients,
        &[],
        t(),
        2,
    );
    // Client k trains k seconds, so the slow ones answer after several steps.
    let stale: Vec<u32> = constant
        .rows
        .iter()
        .map(|(m, _)| m.staleness.unwrap().1)
        .collect();
    assert!(stale.iter().any(|&s| s >= 2), "{stale:?}");
    assert_ne!(constant.final_params, sqrt.final_params);
    // With max_staleness = 0 only fresh updates count; the others are dropped and counted.
    let capped = run(
        fedbuff(
            6,
            clients,
            FedBuffSettings {
                max_staleness: Some(0),
                ..base
            },
        ),
        clients,
        &[],
        t(),
        2,
    );
    assert_eq!(capped.rows.len(), 6);
    assert!(capped
        .rows
        .iter()
        .all(|(m, _)| m.staleness == Some((0.0, 0))));
    let dropped: usize = capped.rows.iter().map(|(m, _)| m.stragglers).sum();
    assert!(dropped >= 1, "{:?}", capped.rows);
}

#[test]
fn a_client_that_never_answers_is_replaced_at_its_deadline() {
    let clients = 3;
    let mut config = server_config(10, clients);
    config.round_deadline = Some(Duration::from_secs(5));
    let server = FedBuffServer::new(
        config,
        FedBuffSettings {
            concurrency: 3,
            buffer: 1,
            staleness: Staleness::Sqrt,
            max_staleness: None,
        },
        vec![1, 2, 3],
        vec![0.0; PARAMS],
    )
    .unwrap();
    let out = run(
        Box::new(server),
        clients,
        &[2],
        Some(timing(clients, 0.0)),
        2,
    );
    assert_eq!(out.rows.len(), 10);
    // Client 2 holds its slot until the deadline, then counts as dropped.
    let dropped: usize = out.rows.iter().map(|(m, _)| m.stragglers).sum();
    assert!(dropped >= 1, "{:?}", out.rows);
}

#[test]
fn fedbuff_refuses_bad_settings_and_replies_it_did_not_ask_for() {
    let make = |concurrency, buffer| {
        FedBuffServer::new(
            server_config(2, 3),
            FedBuffSettings {
                concurrency,
                buffer,
                staleness: Staleness::Sqrt,
                max_staleness: None,
            },
            vec![1, 2, 3],
            vec![0.0; PARAMS],
        )
    };
    assert!(make(0, 1).is_err());
    assert!(make(4, 1).is_err());
    assert!(make(2, 0).is_err());
    let mut server = make(1, 1).unwrap();
    let mut t = Fake;
    let (mut out, mut ev) = (Vec::new(), Vec::new());
    let ctx = &mut NodeCtx::new(&mut out, &mut ev, &mut t as &mut dyn FedTrainer);
    server.on_start(ctx).unwrap();
    let asked = match ctx_sent(&out) {
        Some(c) => c,
        None => panic!("no request sent"),
    };
    let (mut out2, mut ev2) = (Vec::new(), Vec::new());
    let ctx = &mut NodeCtx::new(&mut out2, &mut ev2, &mut t as &mut dyn FedTrainer);
    let reply = |round, params: Vec<f32>| Msg::Reply {
        round,
        num_samples: 1,
        steps: 1,
        train_loss: 0.0,
        update: Tensor::exact(params),
    };
    let other = (1..=3).find(|c| *c != asked).unwrap();
    for (from, p) in [
        (other, reply(1, vec![0.0; PARAMS])),
        (asked, reply(2, vec![0.0; PARAMS])),
        (asked, reply(1, vec![0.0; PARAMS - 1])),
        (asked, reply(1, vec![f32::NAN; PARAMS])),
    ] {
        let r = server.on_message(from, p, ctx);
        assert!(matches!(r, Err(EngineError::Rejected { .. })), "{r:?}");
    }
    server
        .on_message(asked, reply(1, vec![1.0; PARAMS]), ctx)
        .unwrap();
    assert_eq!(ev2.len(), 1, "one server step");
}

fn ctx_sent(out: &[(NodeId, Body<Msg>)]) -> Option<NodeId> {
    out.iter()
        .find(|(_, p)| matches!(p, Body::Msg(Msg::Request { .. })))
        .map(|(c, _)| *c)
}

/// Counts one sample the second time it trains on a shard (a node whose compute drops).
struct Shrinking {
    seen: std::collections::BTreeSet<usize>,
}

impl Trainer for Shrinking {
    fn flops_per_sample(&self) -> FlopsPerSample {
        Fake.flops_per_sample()
    }
}

impl Train for Shrinking {
    fn train(
        &mut self, params: &[f32], shard: &[usize], seed: u64, lr: f64,
    ) -> EngineResult<TrainOutcome> {
        let mut out = Fake.train(params, shard, seed, lr)?;
        if !self.seen.insert(shard[0]) {
            out.samples = 1;
        }
        Ok(out)
    }
}

impl Evaluate for Shrinking {
    fn evaluate(&mut self, p: &[f32]) -> EngineResult<EvalOutcome> {
        Fake.evaluate(p)
    }

    fn evaluate_sample(&mut self, p: &[f32], n: usize) -> EngineResult<EvalOutcome> {
        Fake.evaluate_sample(p, n)
    }
}

#[test]
fn a_node_computing_faster_than_ever_before_is_an_error_not_a_wrong_order() {
    // Client 1 (9 samples) answers at 9 s and is sent the model again; the simulator expects
    // it to take 9 s again, so it lets the server handle client 2's reply of 15 s meanwhile.
    // Client 1 then takes 1 s: its reply would arrive in the server's past.
    let server = FedBuffServer::new(
        server_config(5, 2),
        FedBuffSettings {
            concurrency: 2,
            buffer: 1,
            staleness: Staleness::Constant,
            max_staleness: None,
        },
        vec![1, 2],
        vec![0.0; PARAMS],
    )
    .unwrap();
    let nodes: Vec<BoxNode<FedProtocol>> = vec![
        Box::new(server),
        Box::new(FedAvgClient::new(1, Arc::new((0..9).collect()), 3)),
        Box::new(FedAvgClient::new(2, Arc::new((100..115).collect()), 3)),
    ];
    let worker = Worker::new(Box::new(Shrinking {
        seen: Default::default(),
    }) as Box<dyn FedTrainer>)
    .unwrap();
    let err = Simulator::new(nodes, vec![worker])
        .unwrap()
        .with_timing(Some(timing(2, 0.0)))
        .run(&mut |_| {})
        .unwrap_err();
    assert!(
        err.to_string().contains("computed faster than it ever had"),
        "{err}"
    );
}

#[test]
fn a_round_deadline_in_simulated_time_skips_the_slow_clients() {
    // Client k trains k seconds; the round closes after 2.5 s with clients 1 and 2. The
    // others' replies arrive in a later round and are dropped, as across processes.
    let clients = 4;
    let mut config = server_config(3, clients);
    config.round_deadline = Some(Duration::from_secs_f64(2.5));
    let server = FedAvgServer::new(config, (1..=4).collect(), vec![0.0; PARAMS]).unwrap();
    let out = run(
        Box::new(server),
        clients,
        &[],
        Some(timing(clients, 0.0)),
        2,
    );
    assert_eq!(out.rows.len(), 3);
    for (r, (m, _)) in out.rows.iter().enumerate() {
        assert_eq!((m.clients, m.stragglers), (2, 2));
        let t = m.sim_time_s.unwrap();
        assert!((t - 2.5 * (r + 1) as f64).abs() < 1e-6, "{t}");
    }
}

#[test]
fn a_fedbuff_checkpoint_keeps_its_steps_model_and_optimizer() {
    let settings = FedBuffSettings {
        concurrency: 2,
        buffer: 1,
        staleness: Staleness::Sqrt,
        max_staleness: None,
    };
    let make = || {
        FedBuffServer::new(
            server_config(6, 3),
            settings,
            vec![1, 2, 3],
            vec![0.0; PARAMS],
        )
        .unwrap()
    };
    let mut server = make();
    let mut t = Fake;
    let (mut out, mut ev) = (Vec::new(), Vec::new());
    let ctx = &mut NodeCtx::new(&mut out, &mut ev, &mut t as &mut dyn FedTrainer);
    server.on_start(ctx).unwrap();
    let asked = ctx_sent(&out).unwrap();
    let (mut out2, mut ev2) = (Vec::new(), Vec::new());
    let ctx = &mut NodeCtx::new(&mut out2, &mut ev2, &mut t as &mut dyn FedTrainer);
    let reply = Msg::Reply {
        round: 1,
        num_samples: 1,
        steps: 1,
        train_loss: 0.0,
        update: Tensor::exact(vec![2.0; PARAMS]),
    };
    server.on_message(asked, reply, ctx).unwrap();
    let state = server.save_state().unwrap();
    assert_eq!(state.meta_u64("completed_rounds").unwrap(), 1);
    let mut restored = make();
    restored.load_state(state.clone()).unwrap();
    assert_eq!(restored.save_state().unwrap(), state);
    // More steps than the run has, or a model of the wrong size, are refused.
    let mut bad = state.clone();
    bad.meta = serde_json::json!({ "completed_rounds": 7 });
    assert!(make().load_state(bad).is_err());
    let mut bad = state;
    bad.tensors[0].1.pop();
    assert!(make().load_state(bad).is_err());
}
