//! Real training (burn, bundled data): the same config and seed give the same metrics, whatever
//! the number of worker threads; FedProx and server optimizers run end to end.

use braid_engine::algorithms::dsgd::Dsgd;
use braid_engine::algorithms::fedavg::{Centralized, FedAvg, FedProx, RoundMetrics};
use braid_engine::config::ExperimentConfig;
use braid_engine::experiment;

fn config(extra: &[&str]) -> ExperimentConfig {
    let src = r#"
name = "det"
seed = 7
[data]
dataset = "fashion-mnist"
source = "bundled"
train_limit = 1200
test_limit = 400
[partition]
clients = 6
kind = "dirichlet"
alpha = 0.5
[model]
name = "cnn-small"
[train]
batch_size = 32
local_steps = 5
[algorithm]
name = "fedavg"
rounds = 3
clients_per_round = 4
"#;
    let overrides: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    ExperimentConfig::parse(src, "det.toml", &overrides).unwrap()
}

/// Runs the FedAvg family member that `extra` names (FedAvg unless it sets `algorithm.name`).
fn metrics(extra: &[&str]) -> (Vec<RoundMetrics>, Vec<f32>) {
    let p = experiment::prepare(&config(extra)).unwrap();
    let out = if extra.contains(&"algorithm.name=fedprox") {
        experiment::run::<FedProx>(&p, &mut |_| {})
    } else {
        experiment::run::<FedAvg>(&p, &mut |_| {})
    }
    .unwrap();
    (
        out.rows.into_iter().map(|(m, _)| m).collect(),
        out.final_params.unwrap(),
    )
}

#[test]
fn same_seed_same_metrics_any_worker_count() {
    let a = metrics(&["runtime.workers=1"]);
    let b = metrics(&["runtime.workers=2"]);
    let c = metrics(&["runtime.workers=2"]);
    assert_eq!(a, b);
    assert_eq!(b, c);
    assert_eq!(a.0.len(), 3);
    assert!(a.0.iter().all(|m| m.accuracy.is_some() && m.clients == 4));
    let other = metrics(&["seed=8"]);
    assert_ne!(a.0, other.0);
}

#[test]
fn fedprox_and_server_optimizers_run() {
    for extra in [
        vec!["algorithm.name=fedprox", "algorithm.mu=0.1"],
        vec![
            "algorithm.server_optimizer.kind=adam",
            "algorithm.server_optimizer.lr=0.01",
        ],
        vec!["algorithm.server_optimizer.kind=nesterov"],
        vec!["algorithm.server_optimizer.kind=momentum"],
        vec!["algorithm.server_optimizer.kind=yogi"],
    ] {
        let (rows, params) = metrics(&extra);
        assert_eq!(rows.len(), 3, "{extra:?}");
        assert!(params.iter().all(|v| v.is_finite()), "{extra:?}");
    }
    let (plain, _) = metrics(&[]);
    let (prox, _) = metrics(&["algorithm.name=fedprox", "algorithm.mu=0.1"]);
    assert_ne!(plain, prox, "the proximal term had no effect");
}

#[test]
fn centralized_baseline_uses_one_client_with_all_data() {
    let base = config(&[]).to_toml();
    let e = ExperimentConfig::parse(&base, "x", &["algorithm.name=centralized".into()])
        .unwrap_err()
        .to_string();
    assert!(e.contains("clients_per_round"), "{e}");
    let c = ExperimentConfig::parse(
        &base.replace("clients_per_round = 4\n", ""),
        "x",
        &["algorithm.name=centralized".into()],
    )
    .unwrap();
    let p = experiment::prepare(&c).unwrap();
    assert_eq!(p.parts.len(), 1);
    assert_eq!(p.parts[0].len(), 1200);
    let out = experiment::run::<Centralized>(&p, &mut |_| {}).unwrap();
    assert!(out
        .rows
        .iter()
        .all(|(m, _)| m.clients == 1 && m.samples == 1200 && m.local_steps == 5));
}

#[test]
fn synthetic_data_with_its_natural_split_trains_an_mlp() {
    let src = r#"
name = "synthetic"
seed = 3
[data]
dataset = "synthetic"
alpha = 0.5
beta = 0.5
groups = 8
samples_per_group = 150
[partition]
clients = 8
kind = "natural"
[model]
name = "mlp"
[train]
batch_size = 16
local_steps = 20
[algorithm]
name = "fedavg"
rounds = 6
"#;
    let c = ExperimentConfig::parse(src, "synthetic.toml", &[]).unwrap();
    let p = experiment::prepare(&c).unwrap();
    assert_eq!(p.parts.len(), 8);
    assert!(p.parts.iter().all(|part| part.len() == 120));
    let out = experiment::run::<FedAvg>(&p, &mut |_| {}).unwrap();
    let first = out.rows[0].0.accuracy.unwrap();
    let last = out.rows.last().unwrap().0.accuracy.unwrap();
    assert!(
        last > 0.3 && last > first,
        "accuracy {first} -> {last} (chance is 0.1)"
    );
    // A CNN cannot run on 60-dimensional vectors: a clear setup error, not a panic.
    let bad = ExperimentConfig::parse(src, "s", &["model.name=cnn".into()]).unwrap();
    let e = experiment::prepare(&bad)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("mlp"), "{e}");
}

fn dsgd(extra: &[&str]) -> ExperimentConfig {
    let src = r#"
name = "dsgd"
seed = 5
[data]
dataset = "fashion-mnist"
source = "bundled"
train_limit = 1200
test_limit = 300
[partition]
clients = 4
kind = "dirichlet"
alpha = 0.3
[model]
name = "cnn-small"
[train]
batch_size = 16
[train.optimizer]
name = "sgd"
lr = 0.05
momentum = 0.9
[algorithm]
name = "dsgd"
steps = 12
eval_every = 6
[decentralized]
topology = { kind = "random" }
every = 2
budget = { kind = "fixed", r = 0.5 }
eval_samples = 500
"#;
    let overrides: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    ExperimentConfig::parse(src, "dsgd.toml", &overrides).unwrap()
}

#[test]
fn dsgd_is_deterministic_and_merges_at_the_end() {
    let run = |extra: &[&str]| {
        let p = experiment::prepare(&dsgd(extra)).unwrap();
        experiment::run::<Dsgd>(&p, &mut |_| {}).unwrap()
    };
    let a = run(&["runtime.workers=1"]);
    let b = run(&["runtime.workers=2"]);
    let pts = |o: &braid_engine::sim::SimOutcome<braid_engine::algorithms::dsgd::GossipMetrics>| {
        o.rows.iter().map(|(m, _)| m.clone()).collect::<Vec<_>>()
    };
    assert_eq!(pts(&a), pts(&b));
    assert_eq!(a.final_params, b.final_params);
    let steps: Vec<u64> = pts(&a).iter().map(|m| m.step).collect();
    assert_eq!(steps, vec![0, 6, 12]);
    let last = pts(&a).pop().unwrap();
    assert!(last.consensus > 0.0 && last.bytes_per_peer > 0.0);
    assert!(last.local_min <= last.local_mean && last.local_mean <= last.local_max);
    // eval_samples (500) covers the whole test set (300), so the gap uses the merged accuracy.
    assert!((last.gap - (last.merged_accuracy - last.local_mean)).abs() < 1e-12);
    // A different seed gives a different run.
    assert_ne!(pts(&run(&["seed=6"])), pts(&a));
}

#[test]
fn dsgd_config_errors_name_the_field() {
    let base = dsgd(&[]).to_toml();
    for (overrides, needle) in [
        (vec!["algorithm.rounds=3"], "algorithm.rounds"),
        (vec!["decentralized.every=0"], "decentralized.every"),
        (vec!["decentralized.budget.r=-1"], "decentralized.budget.r"),
        (vec!["algorithm.clients_per_round=2"], "clients_per_round"),
        (vec!["partition.clients=1"], "partition.clients"),
        (vec!["decentralized.eval_samples=0"], "eval_samples"),
        (vec!["decentralized.topology.kind=moebius"], "moebius"),
        (
            vec!["train.lr_schedule={kind=\"cosine\",warmup=1.5}"],
            "train.lr_schedule.warmup",
        ),
        (vec!["train.lr_schedule={kind=\"wavy\"}"], "wavy"),
    ] {
        let o: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
        let e = ExperimentConfig::parse(&base, "d.toml", &o)
            .unwrap_err()
            .to_string();
        assert!(e.contains(needle), "{needle:?} not in {e:?}");
    }
    let e = ExperimentConfig::parse(&base.replace("steps = 12\n", ""), "d.toml", &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("algorithm.steps"), "{e}");
    // Metropolis-Hastings on the directed random topology: refused when the file is read.
    let e = ExperimentConfig::parse(
        &base,
        "d.toml",
        &["decentralized.mixing=metropolis-hastings".to_string()],
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("undirected"), "{e}");
}
