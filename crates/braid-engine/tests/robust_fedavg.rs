//! Robust aggregation in FedAvg against simulated attackers, with a pure-Rust fake trainer:
//! every honest client moves each parameter by +1; attackers send a boosted or flipped update.

use braid_engine::algorithms::fedavg::FedProtocol;
use std::sync::Arc;

use braid_core::robust::{Aggregator, Attack};
use braid_engine::algorithms::fedavg::FedTrainer;
use braid_engine::algorithms::fedavg::{FedAvgClient, FedAvgServer, ServerConfig};
use braid_engine::node::{BoxNode, EngineError, EngineResult};
use braid_engine::sim::{Simulator, Worker};
use braid_engine::trainer::{Evaluate, Train, Trainer};
use braid_nn::{EvalOutcome, TrainOutcome};

struct Shift;

impl Trainer for Shift {}

impl Train for Shift {
    fn train(&mut self, p: &[f32], shard: &[usize], _: u64, _: f64) -> EngineResult<TrainOutcome> {
        Ok(TrainOutcome {
            params: p.iter().map(|v| v + 1.0).collect(),
            samples: shard.len(),
            steps: 1,
            mean_loss: 0.5,
        })
    }
}

impl Evaluate for Shift {
    fn evaluate(&mut self, _: &[f32]) -> EngineResult<EvalOutcome> {
        Ok(EvalOutcome {
            accuracy: 0.5,
            loss: 1.0,
            samples: 1,
        })
    }

    fn evaluate_sample(&mut self, p: &[f32], _: usize) -> EngineResult<EvalOutcome> {
        self.evaluate(p)
    }
}

/// One round with 10 clients, of which `bad` (by index) attack; returns the global model.
fn one_round(aggregator: Aggregator, attack: Attack, bad: &[usize]) -> EngineResult<Vec<f32>> {
    let clients: Vec<u32> = (1..=10).collect();
    let config = ServerConfig {
        rounds: 1,
        clients_per_round: 10,
        eval_every: 1,
        server_optimizer: Default::default(),
        seed: 1,
        round_deadline: None,
        min_replies: 1,
        aggregator,
    };
    let mut nodes: Vec<BoxNode<FedProtocol>> = vec![Box::new(FedAvgServer::new(
        config,
        clients.clone(),
        vec![0.0; 5],
    )?)];
    for (k, id) in clients.into_iter().enumerate() {
        let a = bad.contains(&k).then_some(attack);
        nodes.push(Box::new(
            FedAvgClient::new(id, Arc::new(vec![0, 1]), 3).with_attack(a),
        ));
    }
    let out = Simulator::new(
        nodes,
        vec![Worker::new(Box::new(Shift) as Box<dyn FedTrainer>)?],
    )?
    .run(&mut |_| {})?;
    out.final_params
        .ok_or_else(|| EngineError::Driver("no final model".into()))
}

#[test]
fn robust_rules_ignore_a_minority_of_attackers_that_the_mean_follows() {
    let boost = Attack::Scale { scale: 100.0 };
    let flip = Attack::SignFlip { scale: 50.0 };
    // The mean follows the attackers: 8 x 1 + 2 x 100 over 10.
    let mean = one_round(Aggregator::Mean, boost, &[2, 7]).unwrap();
    assert!(mean.iter().all(|v| (v - 20.8).abs() < 1e-4), "{mean:?}");
    for rule in [
        Aggregator::Median,
        Aggregator::TrimmedMean { trim: 0.2 },
        Aggregator::Krum { f: 2 },
        Aggregator::MultiKrum { f: 2, m: 5 },
    ] {
        for attack in [boost, flip] {
            let p = one_round(rule, attack, &[2, 7]).unwrap();
            assert!(
                p.iter().all(|v| (v - 1.0).abs() < 1e-5),
                "{rule:?} {attack:?}: {p:?}"
            );
        }
    }
    // Norm clipping bounds each update's pull: with clip 1 (an honest update has norm sqrt 5),
    // the boosted ones count no more than the honest ones.
    let p = one_round(Aggregator::NormClip { clip: 1.0 }, boost, &[2, 7]).unwrap();
    let norm = braid_core::params::l2_norm(&p);
    assert!(norm <= 1.0 + 1e-5, "{norm}");
}

#[test]
fn krum_needs_enough_clients() {
    let e = one_round(Aggregator::Krum { f: 4 }, Attack::Scale { scale: 2.0 }, &[]).unwrap_err();
    assert!(e.to_string().contains("at least 11"), "{e}");
}
