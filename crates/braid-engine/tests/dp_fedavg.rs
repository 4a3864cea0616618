//! DP-FedAvg with a pure-Rust fake trainer: updates are clipped to the bound, the noise has the
//! configured spread, epsilon follows the RDP accountant round by round, and a target epsilon
//! ends the run before it is passed.

use std::sync::Arc;

use braid_core::privacy::RdpAccountant;
use braid_core::server_opt::ServerOptimizerConfig;
use braid_engine::algorithms::fedavg::{
    FedAvgClient, FedAvgServer, Msg, RoundMetrics, ServerConfig,
};
use braid_engine::algorithms::fedavg::{FedProtocol, FedTrainer};
use braid_engine::config::{DpMode, OnTarget, PrivacyConfig};
use braid_engine::node::{BoxNode, EngineResult, Node, NodeCtx};
use braid_engine::sim::{SimOutcome, Simulator, Worker};
use braid_engine::trainer::{Evaluate, Train, Trainer};
use braid_engine::wire::Tensor;
use braid_nn::{EvalOutcome, TrainOutcome};

/// Local training moves every parameter by `step`.
struct Shift {
    step: f32,
}

impl Trainer for Shift {}

impl Train for Shift {
    fn train(
        &mut self, params: &[f32], shard: &[usize], _: u64, _: f64,
    ) -> EngineResult<TrainOutcome> {
        Ok(TrainOutcome {
            params: params.iter().map(|p| p + self.step).collect(),
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

const CLIENTS: usize = 10;

fn dp(mode: DpMode, clip: f64, sigma: f64, target: Option<f64>) -> PrivacyConfig {
    PrivacyConfig {
        mode,
        clip,
        noise_multiplier: sigma,
        delta: 1e-5,
        target_epsilon: target,
        on_target: OnTarget::Stop,
    }
}

fn server_config(rounds: u32, per_round: usize) -> ServerConfig {
    ServerConfig {
        rounds,
        clients_per_round: per_round,
        eval_every: 1,
        server_optimizer: ServerOptimizerConfig::default(),
        seed: 5,
        round_deadline: None,
        min_replies: 1,
        aggregator: Default::default(),
    }
}

/// DP-SGD: client k (1..=10) holds 8k samples; the server accounts batches of 4.
fn run_dp_sgd(privacy: PrivacyConfig, rounds: u32) -> EngineResult<SimOutcome<RoundMetrics>> {
    let clients: Vec<u32> = (1..=CLIENTS as u32).collect();
    let mut nodes: Vec<BoxNode<FedProtocol>> = vec![Box::new(
        FedAvgServer::new(
            server_config(rounds, CLIENTS),
            clients.clone(),
            vec![0.0; 10],
        )?
        .with_privacy(Some(privacy), CLIENTS, 4),
    )];
    for id in clients {
        let shard: Vec<usize> = (0..8 * id as usize).collect();
        nodes.push(Box::new(
            FedAvgClient::new(id, Arc::new(shard), 9).with_privacy(Some(privacy)),
        ));
    }
    let workers = vec![Worker::new(
        Box::new(Shift { step: 1.0 }) as Box<dyn FedTrainer>
    )?];
    Simulator::new(nodes, workers)?.run(&mut |_| {})
}

fn run(
    privacy: PrivacyConfig, per_round: usize, rounds: u32, n: usize, step: f32,
) -> EngineResult<SimOutcome<RoundMetrics>> {
    let clients: Vec<u32> = (1..=CLIENTS as u32).collect();
    let config = server_config(rounds, per_round);
    let mut nodes: Vec<BoxNode<FedProtocol>> = vec![Box::new(
        FedAvgServer::new(config, clients.clone(), vec![0.0; n])?.with_privacy(
            Some(privacy),
            CLIENTS,
            32,
        ),
    )];
    for id in clients {
        nodes.push(Box::new(
            FedAvgClient::new(id, Arc::new(vec![0, 1, 2]), 9).with_privacy(Some(privacy)),
        ));
    }
    let workers = vec![Worker::new(Box::new(Shift { step }) as Box<dyn FedTrainer>)?];
    Simulator::new(nodes, workers)?.run(&mut |_| {})
}

#[test]
fn without_noise_every_update_is_clipped_to_the_bound() {
    // Each client moves all 100 parameters by 1 (norm 10); clipped to 0.5, summed over the
    // round's clients and divided by the 4 asked for per round (central DP samples each client
    // with probability 4/10, so a round holds about 4; local DP asks exactly 4).
    for mode in [DpMode::Central, DpMode::Local] {
        let out = run(dp(mode, 0.5, 0.0, None), 4, 1, 100, 1.0).unwrap();
        let p = out.final_params.unwrap();
        let norm = braid_core::params::l2_norm(&p);
        let clients = out.rows[0].0.clients as f64;
        if mode == DpMode::Local {
            assert_eq!(clients, 4.0);
        }
        assert!(
            (norm - 0.5 * clients / 4.0).abs() < 1e-5,
            "{mode:?}: {norm}"
        );
        // No noise: no privacy.
        assert_eq!(out.rows[0].0.epsilon, Some(f64::INFINITY));
    }
    // A small update is not scaled up.
    let out = run(dp(DpMode::Central, 0.5, 0.0, None), 4, 1, 100, 0.01).unwrap();
    let clients = out.rows[0].0.clients as f64;
    let norm = braid_core::params::l2_norm(&out.final_params.unwrap());
    assert!((norm - 0.1 * clients / 4.0).abs() < 1e-5, "{norm}");
}

#[test]
fn central_dp_samples_clients_as_its_accountant_assumes() {
    // Poisson sampling: each of the 10 clients joins a round with probability 3/10, on its
    // own, so a round's size varies around 3 and may be 0 (then the round's update is noise
    // alone over the fixed denominator). The amplification bound the accountant uses holds
    // for this sampling; it does not for a sample of exactly 3.
    let rounds = 400;
    let out = run(dp(DpMode::Central, 0.5, 1.0, None), 3, rounds, 4, 0.1).unwrap();
    assert_eq!(out.rows.len(), rounds as usize);
    let sizes: Vec<usize> = out.rows.iter().map(|(m, _)| m.clients).collect();
    let mean = sizes.iter().sum::<usize>() as f64 / rounds as f64;
    // Binomial(10, 0.3): mean 3, standard deviation of the mean 1.45 / 20 = 0.07.
    assert!((mean - 3.0).abs() < 0.3, "{mean}");
    let empty = sizes.iter().filter(|&&n| n == 0).count();
    // P(empty) = 0.7^10 = 2.8%: about 11 of 400.
    assert!((3..=25).contains(&empty), "{empty} empty rounds");
    assert!(sizes.iter().any(|&n| n >= 6), "{sizes:?}");
    // Same seed, same sample.
    let again = run(dp(DpMode::Central, 0.5, 1.0, None), 3, rounds, 4, 0.1).unwrap();
    let sizes_again: Vec<usize> = again.rows.iter().map(|(m, _)| m.clients).collect();
    assert_eq!(sizes, sizes_again);
    // The accountant: q = 3/10 every round, whatever the round's size.
    let mut a = RdpAccountant::default();
    a.step(0.3, 1.0, u64::from(rounds)).unwrap();
    let want = a.epsilon(1e-5).unwrap().0;
    let got = out.rows.last().unwrap().0.epsilon.unwrap();
    assert!((got - want).abs() < 1e-9, "{got} vs {want}");
}

#[test]
fn the_noise_on_the_average_has_the_configured_spread() {
    // Updates of 0: the global model after one round is the noise / clients per round.
    let (n, m, clip, sigma) = (20_000, 4usize, 2.0, 1.5);
    for mode in [DpMode::Central, DpMode::Local] {
        let out = run(dp(mode, clip, sigma, None), m, 1, n, 0.0).unwrap();
        let p = out.final_params.unwrap();
        let mean = p.iter().map(|&v| f64::from(v)).sum::<f64>() / n as f64;
        let sd = (p
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / n as f64)
            .sqrt();
        // Central: one draw of sigma * clip on the sum; local: m draws, sqrt(m) times larger.
        let want = match mode {
            DpMode::Central => sigma * clip / m as f64,
            DpMode::Local => sigma * clip * (m as f64).sqrt() / m as f64,
            DpMode::DpSgd => unreachable!("not in this loop"),
        };
        assert!(
            (sd - want).abs() < 0.03 * want,
            "{mode:?}: sd {sd}, want {want}"
        );
        assert!(mean.abs() < 0.05 * want, "{mode:?}: mean {mean}");
    }
}

#[test]
fn epsilon_follows_the_accountant_and_the_target_stops_the_run() {
    let (m, sigma) = (2usize, 1.0);
    let out = run(dp(DpMode::Central, 1.0, sigma, None), m, 5, 10, 1.0).unwrap();
    let mut acc = RdpAccountant::default();
    for (r, (metrics, _)) in out.rows.iter().enumerate() {
        acc.step(m as f64 / CLIENTS as f64, sigma, 1).unwrap();
        let want = acc.epsilon(1e-5).unwrap().0;
        assert!(
            (metrics.epsilon.unwrap() - want).abs() < 1e-9,
            "round {}",
            r + 1
        );
    }
    // A target between rounds 3 and 4's epsilon: the run ends after round 3.
    let eps: Vec<f64> = out.rows.iter().map(|(m, _)| m.epsilon.unwrap()).collect();
    let target = (eps[2] + eps[3]) / 2.0;
    let stopped = run(dp(DpMode::Central, 1.0, sigma, Some(target)), m, 5, 10, 1.0).unwrap();
    assert_eq!(stopped.rows.len(), 3);
    assert!(stopped.rows[2].0.epsilon.unwrap() <= target);
    assert!(stopped.final_params.is_some(), "the run finishes cleanly");
    // Local DP: the client asked most often, without amplification by sampling.
    let out = run(dp(DpMode::Local, 1.0, sigma, None), m, 5, 10, 1.0).unwrap();
    let last = out.rows.last().unwrap().0.epsilon.unwrap();
    // Between one and five unamplified Gaussian releases (at most one per round).
    let plain = |k: u64| {
        let mut a = RdpAccountant::default();
        a.step(1.0, sigma, k).unwrap();
        a.epsilon(1e-5).unwrap().0
    };
    assert!(plain(1) <= last && last <= plain(5) + 1e-9, "{last}");
    assert!(
        last > eps[4],
        "local DP spends more than central DP at the same noise"
    );
}

#[test]
fn a_target_spent_by_one_round_is_refused_at_the_start() {
    let e = run(dp(DpMode::Central, 1.0, 0.3, Some(0.01)), 2, 5, 10, 1.0).unwrap_err();
    assert!(e.to_string().contains("target_epsilon"), "{e}");
}

#[test]
fn dp_sgd_epsilon_is_the_worst_clients_and_its_target_stops_the_run() {
    let sigma = 1.1;
    let out = run_dp_sgd(dp(DpMode::DpSgd, 1.0, sigma, None), 5).unwrap();
    // The smallest client (8 samples, batches of 4: rate 0.5) spends most, one step a round.
    let mut worst = RdpAccountant::default();
    let mut eps = Vec::new();
    for (r, (metrics, _)) in out.rows.iter().enumerate() {
        worst.step(0.5, sigma, 1).unwrap();
        let want = worst.epsilon(1e-5).unwrap().0;
        let got = metrics.epsilon.unwrap();
        assert!(
            (got - want).abs() < 1e-9 * want,
            "round {}: {got} vs {want}",
            r + 1
        );
        eps.push(got);
    }
    // The server averages as FedAvg does (weighted by samples, no clipping): every client
    // moved every parameter by 1.
    assert!(out
        .final_params
        .unwrap()
        .iter()
        .all(|p| (p - 5.0).abs() < 1e-4));
    let target = (eps[1] + eps[2]) / 2.0;
    let stopped = run_dp_sgd(dp(DpMode::DpSgd, 1.0, sigma, Some(target)), 5).unwrap();
    assert_eq!(stopped.rows.len(), 2);
}

#[test]
fn dp_sgd_budgets_survive_a_checkpoint() {
    let privacy = dp(DpMode::DpSgd, 1.0, 1.0, None);
    let make = || {
        FedAvgServer::new(server_config(3, 2), vec![1, 2], vec![0.0; 4])
            .unwrap()
            .with_privacy(Some(privacy), 2, 4)
    };
    let mut t = Shift { step: 0.0 };
    let mut server = make();
    let (mut out, mut ev) = (Vec::new(), Vec::new());
    let ctx = &mut NodeCtx::new(&mut out, &mut ev, &mut t as &mut dyn FedTrainer);
    server.on_start(ctx).unwrap();
    for (id, samples) in [(1, 8), (2, 40)] {
        let reply = Msg::Reply {
            round: 1,
            num_samples: samples,
            steps: 3,
            train_loss: 0.1,
            update: Tensor::exact(vec![0.0; 4]),
        };
        server.on_message(id, reply, ctx).unwrap();
    }
    let state = server.save_state().unwrap();
    let clients = &state.meta["privacy"]["clients"];
    assert_eq!(clients["1"]["q"], 0.5);
    assert_eq!(clients["2"]["steps"], 3);
    let mut restored = make();
    restored.load_state(state.clone()).unwrap();
    assert_eq!(restored.save_state().unwrap(), state);
    let mut bad = state;
    bad.meta["privacy"]["clients"]["1"]["q"] = serde_json::json!(1.5);
    assert!(make().load_state(bad).is_err());
}
