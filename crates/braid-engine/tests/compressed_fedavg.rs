//! Compressed FedAvg on a problem whose answer is known: two clients with opposite pulls on two
//! coordinates. Plain top-k stalls on it and error feedback converges; the downlink sent as a
//! compressed change to the clients' copy of the model converges too, keeps every copy equal,
//! costs exactly its encoded bytes, and falls back to the whole copy for a client that missed
//! a round.

mod common;
use braid_engine::algorithms::fedavg::FedProtocol;
use common::Flaky;
use std::sync::Arc;
use std::time::Duration;

use braid_core::compress::{encoded_len, Compression, Quantize, Sparsify};
use braid_core::lowrank::Block;
use braid_engine::algorithms::fedavg::FedTrainer;
use braid_engine::algorithms::fedavg::{
    FedAvgClient, FedAvgServer, Msg, RoundMetrics, ServerConfig, SERVER,
};
use braid_engine::config::CompressionConfig;
use braid_engine::node::{BoxNode, EngineError, EngineResult, Node, NodeCtx};
use braid_engine::sim::{SimOutcome, Simulator, Worker};
use braid_engine::trainer::{Evaluate, Train, Trainer};
use braid_engine::wire::{Body, Control, NodeId, Tensor};
use braid_nn::{EvalOutcome, TrainOutcome};

const N: usize = 200;
/// How far apart the two clients' optima are on the first two coordinates.
const PULL: f32 = 5.0;
/// The local learning rate: one gradient step per round.
const ETA: f32 = 0.01;

/// The common optimum x* (a fixed pseudo-random vector).
fn optimum() -> Vec<f32> {
    (0..N)
        .map(|j| ((j as f32 * 0.618_034).fract() - 0.5) * 3.0)
        .collect()
}

/// Client `k`'s loss is 1/2 ||x - c_k||^2 with c_k = x* + or - PULL on coordinates 0 and 1 (the
/// sign from the client's shard: `[0]` or `[1]`), so the average loss is minimised at x*.
/// Training takes one gradient step.
struct Quadratic {
    optimum: Vec<f32>,
}

impl Trainer for Quadratic {}

impl Train for Quadratic {
    fn train(
        &mut self, params: &[f32], shard: &[usize], _seed: u64, _lr_scale: f64,
    ) -> EngineResult<TrainOutcome> {
        let sign = if shard.first() == Some(&0) { 1.0 } else { -1.0 };
        Ok(TrainOutcome {
            params: params
                .iter()
                .zip(&self.optimum)
                .enumerate()
                .map(|(j, (x, o))| {
                    let c = o + if j < 2 { sign * PULL } else { 0.0 };
                    x - ETA * (x - c)
                })
                .collect(),
            samples: shard.len(),
            steps: 1,
            mean_loss: 0.0,
        })
    }
}

impl Evaluate for Quadratic {
    fn evaluate(&mut self, _: &[f32]) -> EngineResult<EvalOutcome> {
        Ok(EvalOutcome {
            accuracy: 0.0,
            loss: 0.0,
            samples: 1,
        })
    }

    fn evaluate_sample(&mut self, p: &[f32], _: usize) -> EngineResult<EvalOutcome> {
        self.evaluate(p)
    }
}

fn config(rounds: u32) -> ServerConfig {
    ServerConfig {
        rounds,
        clients_per_round: 2,
        eval_every: rounds,
        server_optimizer: Default::default(),
        seed: 4,
        round_deadline: Some(Duration::from_secs(10)),
        min_replies: 1,
        aggregator: Default::default(),
    }
}

/// Two clients (shards `[0]` and `[1]`) from the zero model; client 2 ignores its first
/// `flaky` messages.
fn run(
    cfg: &CompressionConfig, rounds: u32, flaky: usize, workers: usize,
) -> SimOutcome<RoundMetrics> {
    let initial = vec![0.0f32; N];
    let delta = cfg.downlink_delta;
    let server = FedAvgServer::new(config(rounds), vec![1, 2], initial.clone())
        .unwrap()
        .with_downlink(cfg.downlink.filter(|_| !delta))
        .with_downlink_delta(cfg.downlink.filter(|_| delta));
    let mut nodes: Vec<BoxNode<FedProtocol>> = vec![Box::new(server)];
    for k in 0..2usize {
        let c = FedAvgClient::new(k as NodeId + 1, Arc::new(vec![k]), 4)
            .with_compression(cfg, N)
            .with_matrix_blocks(vec![Block {
                offset: 0,
                rows: 10,
                cols: 20,
            }])
            .with_model_copy(delta.then(|| initial.clone()));
        nodes.push(if k == 1 && flaky > 0 {
            Box::new(Flaky {
                inner: c,
                drop: flaky,
            })
        } else {
            Box::new(c)
        });
    }
    let workers = (0..workers)
        .map(|_| {
            Worker::new(Box::new(Quadratic { optimum: optimum() }) as Box<dyn FedTrainer>).unwrap()
        })
        .collect();
    Simulator::new(nodes, workers)
        .unwrap()
        .run(&mut |_| {})
        .unwrap()
}

/// ||x - x*|| / ||x*|| of the final model.
fn relative_error(out: &SimOutcome<RoundMetrics>) -> f64 {
    let x = out.final_params.as_ref().unwrap();
    let o = optimum();
    let d: f64 = x
        .iter()
        .zip(&o)
        .map(|(a, b)| f64::from(a - b).powi(2))
        .sum();
    let n: f64 = o.iter().map(|b| f64::from(*b).powi(2)).sum();
    (d / n).sqrt()
}

fn top_k(fraction: f64, quantize: Quantize) -> Compression {
    Compression {
        sparsify: Sparsify::TopK { fraction },
        quantize,
    }
}

#[test]
fn error_feedback_makes_top_1_percent_converge_where_plain_top_k_stalls() {
    // Top-1% of 200 values keeps 2: each client always picks coordinates 0 and 1, where the
    // two pulls cancel in the average, so without error feedback the other 198 coordinates
    // never move. With it, each client's dropped gradient piles up until it is sent.
    let uplink = Some(top_k(0.01, Quantize::F32));
    let plain = run(
        &CompressionConfig {
            uplink,
            ..Default::default()
        },
        300,
        0,
        2,
    );
    let ef = run(
        &CompressionConfig {
            uplink,
            error_feedback: true,
            ..Default::default()
        },
        300,
        0,
        2,
    );
    let uncompressed = run(&CompressionConfig::default(), 300, 0, 2);
    let (p, e, u) = (
        relative_error(&plain),
        relative_error(&ef),
        relative_error(&uncompressed),
    );
    assert!(p > 0.99, "plain top-k moved: {p}");
    assert!(e < 0.1, "error feedback did not converge: {e}");
    assert!(u < 0.1, "{u}");
}

#[test]
fn the_downlink_as_a_compressed_change_converges_with_exact_bytes() {
    let down = top_k(0.05, Quantize::Int8 { block: 64 });
    let cfg = CompressionConfig {
        uplink: Some(top_k(0.05, Quantize::Int8 { block: 64 })),
        error_feedback: true,
        downlink: Some(down),
        downlink_delta: true,
        gossip: None,
        models: None,
        split: None,
    };
    let out = run(&cfg, 300, 0, 2);
    assert!(relative_error(&out) < 0.1, "{}", relative_error(&out));
    // Every round both clients hold the previous copy, so both get the change.
    let request = Body::Msg(Msg::DeltaRequest {
        round: 1,
        base: 0,
        delta: Tensor::packed(vec![0; encoded_len(N, &down)]),
    })
    .encoded_len() as u64;
    assert!(out.rows.iter().all(|(m, _)| m.bytes_down == 2 * request));
    // The same with one worker or two.
    assert_eq!(run(&cfg, 300, 0, 1).final_params, out.final_params);
    // A change sent whole (top-100% in f32) tracks the uncompressed run.
    let whole = CompressionConfig {
        downlink: Some(top_k(1.0, Quantize::F32)),
        downlink_delta: true,
        ..Default::default()
    };
    let (a, b) = (
        run(&whole, 50, 0, 2).final_params.unwrap(),
        run(&CompressionConfig::default(), 50, 0, 2)
            .final_params
            .unwrap(),
    );
    assert!(a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-4));
}

#[test]
fn a_client_that_missed_a_round_is_sent_the_whole_copy() {
    let down = top_k(0.05, Quantize::F32);
    let cfg = CompressionConfig {
        downlink: Some(down),
        downlink_delta: true,
        ..Default::default()
    };
    // Client 2 ignores round 1's request: a straggler; in round 2 it does not hold round 1's
    // copy, so it gets the copy whole; from round 3 on it gets changes again.
    let out = run(&cfg, 4, 1, 2);
    let delta = Body::Msg(Msg::DeltaRequest {
        round: 1,
        base: 0,
        delta: Tensor::packed(vec![0; encoded_len(N, &down)]),
    })
    .encoded_len() as u64;
    let whole = Body::Msg(Msg::Request {
        round: 1,
        model: Tensor::exact(vec![0.0; N]),
    })
    .encoded_len() as u64;
    let rows: Vec<(usize, usize, u64)> = out
        .rows
        .iter()
        .map(|(m, _)| (m.clients, m.stragglers, m.bytes_down))
        .collect();
    assert_eq!(
        rows,
        vec![
            (1, 1, 2 * delta),
            (2, 0, delta + whole),
            (2, 0, 2 * delta),
            (2, 0, 2 * delta)
        ]
    );
}

#[test]
fn a_client_applies_a_change_once_and_only_to_the_copy_it_was_made_for() {
    let mut t = Quadratic { optimum: optimum() };
    let mut client = FedAvgClient::new(1, Arc::new(vec![0]), 4).with_model_copy(Some(vec![0.0; N]));
    let change = braid_core::compress::encode(
        &[0.5; N],
        &top_k(0.5, Quantize::F32),
        &mut braid_core::seed::rng(1, &[]),
    )
    .unwrap();
    let ask = |round: u32, base: u32| Msg::DeltaRequest {
        round,
        base,
        delta: Tensor::packed(change.clone()),
    };
    let mut replies = Vec::new();
    for request in [ask(1, 0), ask(1, 0)] {
        let (mut out, mut ev) = (Vec::new(), Vec::new());
        client
            .on_message(
                SERVER,
                request,
                &mut NodeCtx::new(&mut out, &mut ev, &mut t as &mut dyn FedTrainer),
            )
            .unwrap();
        replies.push(out);
    }
    // Asked twice for round 1: it trains from the same copy both times.
    assert_eq!(replies[0], replies[1]);
    // A change from a copy it does not hold is not applied, and nothing is trained: the client
    // asks the server for the whole model (a join request; it restarted, or missed a round).
    let (mut out, mut ev) = (Vec::new(), Vec::new());
    let r = client.on_message(
        SERVER,
        ask(3, 2),
        &mut NodeCtx::new(&mut out, &mut ev, &mut t as &mut dyn FedTrainer),
    );
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(out.len(), 1);
    assert!(
        matches!(
            &out[0],
            (SERVER, Body::Control(Control::JoinRequest { .. }))
        ),
        "{out:?}"
    );
    let (mut out, mut ev) = (Vec::new(), Vec::new());
    let ctx = &mut NodeCtx::new(&mut out, &mut ev, &mut t as &mut dyn FedTrainer);
    // A client without a copy refuses changes.
    let mut plain = FedAvgClient::new(2, Arc::new(vec![1]), 4);
    let r = plain.on_message(SERVER, ask(1, 0), ctx);
    assert!(matches!(r, Err(EngineError::Rejected { .. })), "{r:?}");
    // A whole model of the wrong size is refused.
    let r = client.on_message(
        SERVER,
        Msg::Request {
            round: 2,
            model: Tensor::exact(vec![0.0; N - 1]),
        },
        ctx,
    );
    assert!(matches!(r, Err(EngineError::Rejected { .. })), "{r:?}");
}

#[test]
fn the_servers_copy_survives_a_checkpoint() {
    let down = top_k(0.05, Quantize::F32);
    let make = || {
        FedAvgServer::new(config(3), vec![1, 2], vec![0.0; N])
            .unwrap()
            .with_downlink_delta(Some(down))
    };
    let mut t = Quadratic { optimum: optimum() };
    let mut server = make();
    let (mut out, mut ev) = (Vec::new(), Vec::new());
    server
        .on_start(&mut NodeCtx::new(
            &mut out,
            &mut ev,
            &mut t as &mut dyn FedTrainer,
        ))
        .unwrap();
    let state = server.save_state().unwrap();
    let mut restored = make();
    restored.load_state(state.clone()).unwrap();
    assert_eq!(restored.save_state().unwrap(), state);
    // A copy of the wrong size is refused.
    let mut bad = state;
    for (name, t) in bad.tensors.iter_mut() {
        if name == "downlink.copy" {
            t.pop();
        }
    }
    assert!(make().load_state(bad).is_err());
}

#[test]
fn power_sgd_with_error_feedback_converges_in_fewer_bytes() {
    // The 200 values as one 10 x 20 matrix, sent as rank-1 factors: 30 values a round.
    let uplink = Some(Compression {
        sparsify: Sparsify::PowerSgd { rank: 1 },
        quantize: Quantize::F32,
    });
    let ef = run(
        &CompressionConfig {
            uplink,
            error_feedback: true,
            ..Default::default()
        },
        300,
        0,
        2,
    );
    assert!(relative_error(&ef) < 0.1, "{}", relative_error(&ef));
    let plain = run(&CompressionConfig::default(), 300, 0, 2);
    for ((a, _), (b, _)) in ef.rows.iter().zip(&plain.rows) {
        assert!(
            a.bytes_up * 4 < b.bytes_up,
            "{} vs {}",
            a.bytes_up,
            b.bytes_up
        );
    }
    assert_eq!(
        run(
            &CompressionConfig {
                uplink,
                error_feedback: true,
                ..Default::default()
            },
            300,
            0,
            1,
        )
        .final_params,
        ef.final_params,
        "deterministic across workers"
    );
}
