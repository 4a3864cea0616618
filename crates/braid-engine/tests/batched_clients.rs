//! Batched clients (`runtime.batch_clients`) on real training (burn's flex CPU backend,
//! bundled data): the stacked runs equal one-client-at-a-time runs within float tolerance,
//! for equal and unequal shards and for optimizers with state; they are deterministic, the
//! same bits again and with another number of clients per wave; an attacker that trains
//! alone and an asynchronous server run beside the stack; and a run that cannot be batched is
//! refused with one line naming the setting.

use braid_engine::algorithms::fedavg::{FedAvg, FedProx, RoundMetrics};
use braid_engine::algorithms::fedbuff::FedBuff;
use braid_engine::config::ExperimentConfig;
use braid_engine::experiment;

const SRC: &str = r#"
name = "batched"
seed = 5
[data]
dataset = "fashion-mnist"
source = "bundled"
train_limit = 900
test_limit = 300
[partition]
clients = 5
kind = "dirichlet"
alpha = 0.5
[model]
name = "cnn-small"
[train]
batch_size = 32
local_epochs = 1
[algorithm]
name = "fedavg"
rounds = 2
clients_per_round = 4
"#;

fn config(set: &[&str]) -> ExperimentConfig {
    let set: Vec<String> = set.iter().map(|s| s.to_string()).collect();
    ExperimentConfig::parse(SRC, "batched.toml", &set).expect("config")
}

/// A run of FedAvg, or of FedProx where `set` names it.
fn fedavg(set: &[&str]) -> (Vec<RoundMetrics>, Vec<f32>) {
    let p = experiment::prepare(&config(set)).expect("prepare");
    let out = if set.iter().any(|s| s.contains("fedprox")) {
        experiment::run::<FedProx>(&p, &mut |_| {})
    } else {
        experiment::run::<FedAvg>(&p, &mut |_| {})
    }
    .expect("run");
    (
        out.rows.into_iter().map(|(m, _)| m).collect(),
        out.final_params.expect("final parameters"),
    )
}

/// The two runs did the same work and agree within float tolerance.
fn assert_close(a: &(Vec<RoundMetrics>, Vec<f32>), b: &(Vec<RoundMetrics>, Vec<f32>), what: &str) {
    assert_eq!(a.0.len(), b.0.len(), "{what}");
    for (x, y) in a.0.iter().zip(&b.0) {
        assert_eq!(
            (x.round, x.clients, x.samples, x.local_steps),
            (y.round, y.clients, y.samples, y.local_steps),
            "{what}"
        );
        let (xa, ya) = (x.accuracy.expect("accuracy"), y.accuracy.expect("accuracy"));
        assert!(
            (xa - ya).abs() <= 2.0 / 300.0 + 1e-12,
            "{what}: accuracy {xa} vs {ya}"
        );
        let (xl, yl) = (x.loss.expect("loss"), y.loss.expect("loss"));
        assert!((xl - yl).abs() / xl < 1e-3, "{what}: loss {xl} vs {yl}");
    }
    let worst =
        a.1.iter()
            .zip(&b.1)
            .map(|(p, q)| (p - q).abs() / p.abs().max(q.abs()).max(1e-2))
            .fold(0.0, f32::max);
    assert!(
        worst < 1e-3,
        "{what}: final parameters differ by {worst} (relative)"
    );
}

#[test]
fn batched_clients_match_one_at_a_time_and_repeat_bit_for_bit() {
    for (what, set) in [
        // Dirichlet shards of different sizes: one padded stack (plain SGD).
        ("unequal shards, plain SGD", vec![]),
        // The same number of steps each.
        ("equal steps", vec!["train.local_steps=4"]),
        // Momentum keeps state: stacks of equal step counts only.
        (
            "momentum",
            vec!["train.optimizer={name=\"sgd\", lr=0.05, momentum=0.9}"],
        ),
        (
            "fedprox",
            vec!["algorithm.name=\"fedprox\"", "algorithm.mu=0.1"],
        ),
    ] {
        let with = |extra: &[&'static str]| -> Vec<&'static str> {
            set.iter().chain(extra).copied().collect()
        };
        let alone = fedavg(&with(&["runtime.workers=1"]));
        let batched = fedavg(&with(&["runtime.batch_clients=true"]));
        assert_close(&alone, &batched, what);
        assert_eq!(
            batched,
            fedavg(&with(&["runtime.batch_clients=true"])),
            "{what}: a batched run again"
        );
        // Waves of 3 and 1, and of 1 each, instead of one of 4.
        for workers in ["runtime.workers=3", "runtime.workers=1"] {
            assert_eq!(
                batched,
                fedavg(&with(&["runtime.batch_clients=true", workers])),
                "{what}: {workers}"
            );
        }
    }
}

#[test]
fn an_attacker_training_alone_and_an_asynchronous_server_run_beside_the_stack() {
    // A label-flipping attacker trains on its own; the stack waits for it to finish.
    let attack = ["attack.fraction=0.4", "attack.kind={kind=\"label-flip\"}"];
    let alone = fedavg(&[attack[0], attack[1], "runtime.workers=1"]);
    let batched = fedavg(&[attack[0], attack[1], "runtime.batch_clients=true"]);
    assert_close(&alone, &batched, "label-flip attack");
    // FedBuff: the server's steps and the clients' training share waves.
    let src = SRC.replace("name = \"fedavg\"", "name = \"fedbuff\"")
        + "[fedbuff]\nconcurrency = 3\nbuffer = 2\n";
    let run = |set: &[&str]| {
        let set: Vec<String> = set.iter().map(|s| s.to_string()).collect();
        let c = ExperimentConfig::parse(&src, "fedbuff.toml", &set).expect("config");
        let p = experiment::prepare(&c).expect("prepare");
        experiment::run::<FedBuff>(&p, &mut |_| {}).expect("fedbuff run")
    };
    let batched = run(&["runtime.batch_clients=true"]);
    assert_eq!(batched.rows.len(), 2);
    assert!(batched
        .final_params
        .expect("final parameters")
        .iter()
        .all(|v| v.is_finite()));
}

#[test]
fn a_run_that_cannot_be_batched_is_refused_in_one_line() {
    let dp = config(&[
        "runtime.batch_clients=true",
        "privacy.mode=\"dp-sgd\"",
        "privacy.clip=1.0",
        "privacy.noise_multiplier=1.0",
    ]);
    let e = match experiment::prepare(&dp).and_then(|p| experiment::run::<FedAvg>(&p, &mut |_| {}))
    {
        Err(e) => e.to_string(),
        Ok(_) => panic!("DP-SGD ran with batched clients"),
    };
    assert!(
        e.contains("runtime.batch_clients") && e.contains("DP-SGD"),
        "{e}"
    );
    assert!(!e.contains('\n'), "{e}");
}
