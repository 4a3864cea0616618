//! FedAvg with secure aggregation, through the simulator with a pure-Rust fake trainer: the
//! same model as plain FedAvg, the exact sum with clients dropping out at every step, rounds
//! that start again when too many drop, and a server that never sees an update in the clear.

use braid_engine::algorithms::fedavg::FedProtocol;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use braid_core::secagg::{self, Message};
use braid_engine::algorithms::fedavg::FedTrainer;
use braid_engine::algorithms::fedavg::{
    FedAvgClient, FedAvgServer, FedCtx, Msg, RoundMetrics, SecureSettings, ServerConfig,
    MAX_RESTARTS,
};
use braid_engine::node::{BoxNode, EngineResult, Node};
use braid_engine::sim::{SimOutcome, Simulator, Worker};
use braid_engine::trainer::{Evaluate, Train, Trainer};
use braid_engine::wire::{Control, NodeId};
use braid_nn::{EvalOutcome, TrainOutcome};

/// "Training" adds the mean of the shard's indices plus a seed-dependent fraction to every
/// parameter, so each client's update differs.
struct Shift;

impl Trainer for Shift {}

impl Train for Shift {
    fn train(
        &mut self, p: &[f32], shard: &[usize], seed: u64, _: f64,
    ) -> EngineResult<TrainOutcome> {
        let mean = shard.iter().sum::<usize>() as f32 / shard.len().max(1) as f32;
        let j = (seed % 1000) as f32 * 1e-3;
        Ok(TrainOutcome {
            params: p
                .iter()
                .enumerate()
                .map(|(k, v)| v + mean + j - 0.1 * k as f32)
                .collect(),
            samples: shard.len(),
            steps: 2,
            mean_loss: 0.25 * shard.len() as f64,
        })
    }
}

impl Evaluate for Shift {
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

/// A client that stops answering for good after it has sent `answers` messages (1: its keys,
/// 2: its shares, 3: its masked input), or (`keys_only`) that trains and sends its keys
/// whenever it is asked but never takes part in a later step.
struct Dropout {
    inner: FedAvgClient,
    answers: usize,
    keys_only: bool,
}

impl Node for Dropout {
    type Protocol = FedProtocol;

    fn on_control(&mut self, from: NodeId, c: Control, ctx: &mut FedCtx<'_>) -> EngineResult {
        self.inner.on_control(from, c, ctx)
    }
    fn id(&self) -> NodeId {
        self.inner.id()
    }
    fn on_start(&mut self, ctx: &mut FedCtx<'_>) -> EngineResult {
        self.inner.on_start(ctx)
    }
    fn on_message(&mut self, from: NodeId, payload: Msg, ctx: &mut FedCtx<'_>) -> EngineResult {
        if self.keys_only {
            if matches!(payload, Msg::SecAgg { .. }) {
                return Ok(());
            }
        } else if self.answers == 0 {
            return Ok(());
        } else {
            self.answers -= 1;
        }
        self.inner.on_message(from, payload, ctx)
    }
}

/// Every message the server received, with its sender.
type Log = Arc<Mutex<Vec<(NodeId, Msg)>>>;

/// Records every message the server receives, then hands it on.
struct Spy {
    inner: FedAvgServer,
    seen: Log,
}

impl Node for Spy {
    type Protocol = FedProtocol;

    fn id(&self) -> NodeId {
        self.inner.id()
    }
    fn on_start(&mut self, ctx: &mut FedCtx<'_>) -> EngineResult {
        self.inner.on_start(ctx)
    }
    fn on_message(&mut self, from: NodeId, payload: Msg, ctx: &mut FedCtx<'_>) -> EngineResult {
        if let Ok(mut s) = self.seen.lock() {
            s.push((from, payload.clone()));
        }
        self.inner.on_message(from, payload, ctx)
    }
    fn finished(&self) -> bool {
        self.inner.finished()
    }
    fn on_deadline(&mut self, token: u64, ctx: &mut FedCtx<'_>) -> EngineResult {
        self.inner.on_deadline(token, ctx)
    }
}

const PARAMS: usize = 6;

fn shards(n: usize) -> Vec<Vec<usize>> {
    (0..n)
        .map(|i| (0..=i).map(|k| k * 3 + i).collect())
        .collect()
}

struct Setup {
    clients: usize,
    per_round: usize,
    rounds: u32,
    secure: Option<SecureSettings>,
    /// (client index, messages it answers before dropping out for good).
    dropouts: Vec<(usize, usize)>,
    /// Clients (by index) that only ever send their keys.
    keys_only: Vec<usize>,
}

fn run(s: &Setup, seen: Option<Log>) -> EngineResult<SimOutcome<RoundMetrics>> {
    let ids: Vec<NodeId> = (1..=s.clients as NodeId).collect();
    let config = ServerConfig {
        rounds: s.rounds,
        clients_per_round: s.per_round,
        eval_every: 1,
        server_optimizer: Default::default(),
        seed: 5,
        round_deadline: Some(Duration::from_secs(10)),
        min_replies: 1,
        aggregator: Default::default(),
    };
    let server = FedAvgServer::new(config, ids.clone(), vec![0.5; PARAMS])?
        .with_secure_aggregation(s.secure);
    let mut nodes: Vec<BoxNode<FedProtocol>> = vec![match seen {
        Some(seen) => Box::new(Spy {
            inner: server,
            seen,
        }),
        None => Box::new(server),
    }];
    for (k, (id, shard)) in ids.iter().zip(shards(s.clients)).enumerate() {
        let c = FedAvgClient::new(*id, Arc::new(shard), 5).with_secure_aggregation(s.secure);
        let keys_only = s.keys_only.contains(&k);
        nodes.push(match s.dropouts.iter().find(|(i, _)| *i == k) {
            Some((_, answers)) => Box::new(Dropout {
                inner: c,
                answers: *answers,
                keys_only,
            }),
            None if keys_only => Box::new(Dropout {
                inner: c,
                answers: 0,
                keys_only,
            }),
            None => Box::new(c),
        });
    }
    Simulator::new(
        nodes,
        vec![
            Worker::new(Box::new(Shift) as Box<dyn FedTrainer>)?,
            Worker::new(Box::new(Shift) as Box<dyn FedTrainer>)?,
        ],
    )?
    .run(&mut |_| {})
}

fn secure(threshold: usize) -> Option<SecureSettings> {
    Some(SecureSettings {
        threshold,
        scale_bits: 24,
    })
}

fn close(a: &[f32], b: &[f32], tol: f32) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= tol)
}

#[test]
fn secure_fedavg_trains_the_same_model_as_plain_fedavg() {
    for (clients, per_round) in [(5, 5), (8, 4)] {
        let plain = run(
            &Setup {
                clients,
                per_round,
                rounds: 3,
                secure: None,
                dropouts: vec![],
                keys_only: vec![],
            },
            None,
        )
        .unwrap();
        let sec = run(
            &Setup {
                clients,
                per_round,
                rounds: 3,
                secure: secure(per_round / 2 + 1),
                dropouts: vec![],
                keys_only: vec![],
            },
            None,
        )
        .unwrap();
        let (p, s) = (plain.final_params.unwrap(), sec.final_params.unwrap());
        assert!(close(&p, &s, 1e-5), "{p:?} vs {s:?}");
        for ((a, _), (b, _)) in plain.rows.iter().zip(&sec.rows) {
            assert_eq!(
                (a.clients, a.samples, a.local_steps),
                (b.clients, b.samples, b.local_steps)
            );
            assert!((a.train_loss - b.train_loss).abs() < 1e-6);
            // The protocol's extra messages cost bytes both ways.
            assert!(b.bytes_up > a.bytes_up && b.bytes_down > a.bytes_down);
        }
    }
}

#[test]
fn dropouts_at_every_step_leave_the_exact_mean_of_the_survivors() {
    // 6 clients, threshold 3: client 1 never answers, client 2 drops after its keys, client 4
    // after its shares (its masked input never comes; its pairwise masks are removed with its
    // reconstructed key).
    let dropouts = vec![(0, 0), (1, 1), (3, 2)];
    let sec = run(
        &Setup {
            clients: 6,
            per_round: 6,
            rounds: 1,
            secure: secure(3),
            dropouts: dropouts.clone(),
            keys_only: vec![],
        },
        None,
    )
    .unwrap();
    let (m, _) = &sec.rows[0];
    assert_eq!((m.clients, m.stragglers), (3, 3));
    // Plain FedAvg over the three survivors alone gives the same model.
    let survivors = [2usize, 4, 5];
    let shards = shards(6);
    let init = vec![0.5f32; PARAMS];
    let mut num = [0f64; PARAMS];
    let mut den = 0f64;
    for &k in &survivors {
        let out = Shift
            .train(
                &init,
                &shards[k],
                braid_core::seed::derive(
                    5,
                    &[braid_core::seed::stream::LOCAL_TRAIN, 1, k as u64 + 1],
                ),
                1.0,
            )
            .unwrap();
        for (n, p) in num.iter_mut().zip(&out.params) {
            *n += f64::from(*p) * shards[k].len() as f64;
        }
        den += shards[k].len() as f64;
    }
    let expect: Vec<f32> = num.iter().map(|n| (n / den) as f32).collect();
    let got = sec.final_params.unwrap();
    assert!(close(&got, &expect, 1e-5), "{got:?} vs {expect:?}");
    assert_eq!(
        m.samples,
        survivors
            .iter()
            .map(|&k| shards[k].len() as u64)
            .sum::<u64>()
    );
}

#[test]
fn a_client_dropping_before_unmasking_is_still_counted() {
    // Client 3 sends its masked input, then disappears: its input is in the sum (the others'
    // shares remove its self mask).
    let sec = run(
        &Setup {
            clients: 4,
            per_round: 4,
            rounds: 1,
            secure: secure(3),
            dropouts: vec![(2, 3)],
            keys_only: vec![],
        },
        None,
    )
    .unwrap();
    let plain = run(
        &Setup {
            clients: 4,
            per_round: 4,
            rounds: 1,
            secure: None,
            dropouts: vec![],
            keys_only: vec![],
        },
        None,
    )
    .unwrap();
    assert_eq!(sec.rows[0].0.clients, 4);
    assert!(close(
        &sec.final_params.unwrap(),
        &plain.final_params.unwrap(),
        1e-5
    ));
}

#[test]
fn too_many_dropouts_restart_the_round_then_fail_clearly() {
    // Threshold 4 of 5, two clients send their keys but never their shares, in every
    // attempt: the share step cannot reach 4, so the round starts again until it gives up.
    // (Too few keys would not end the run: like plain FedAvg below min_replies, the server
    // keeps asking, so a restarted client can still join.)
    let err = run(
        &Setup {
            clients: 5,
            per_round: 5,
            rounds: 1,
            secure: secure(4),
            dropouts: vec![],
            keys_only: vec![1, 3],
        },
        None,
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(&format!("failed {} times", MAX_RESTARTS + 1)),
        "{text}"
    );
}

#[test]
fn the_server_never_receives_an_update_in_the_clear() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let out = run(
        &Setup {
            clients: 4,
            per_round: 4,
            rounds: 2,
            secure: secure(3),
            dropouts: vec![],
            keys_only: vec![],
        },
        Some(Arc::clone(&seen)),
    )
    .unwrap();
    assert_eq!(out.rows.len(), 2);
    let seen = seen.lock().unwrap();
    let mut masked = 0;
    for (from, p) in seen.iter() {
        let Msg::SecAgg { round, body } = p else {
            panic!(
                "the server got a {} message from {from}",
                braid_engine::wire::Message::kind(p)
            );
        };
        if let Message::Masked(y) = Message::decode(body).unwrap() {
            masked += 1;
            // What the client would have sent in the clear: its weighted update, in fixed point.
            let k = *from as usize - 1;
            let shard = &shards(4)[k];
            let start = if *round == 1 {
                vec![0.5f32; PARAMS]
            } else {
                continue;
            };
            let s = braid_core::seed::derive(
                5,
                &[braid_core::seed::stream::LOCAL_TRAIN, 1, u64::from(*from)],
            );
            let out = Shift.train(&start, shard, s, 1.0).unwrap();
            let w = shard.len() as f64;
            let clear: Vec<f64> = out
                .params
                .iter()
                .zip(&start)
                .map(|(a, b)| w * f64::from(a - b))
                .collect();
            let ring = secagg::to_ring(&clear, 24, 1e9).unwrap();
            assert!(
                y.iter().zip(&ring).all(|(a, b)| a != b),
                "client {from}'s masked input shows a value of its update"
            );
        }
    }
    assert_eq!(masked, 8, "4 masked inputs per round");
}
