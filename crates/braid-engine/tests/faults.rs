//! The fault-schedule simulator on the FedAvg family and dsgd: seeded delays, duplicates,
//! reorderings and crashes with restarts from checkpoints break no invariant (see
//! `braid_engine::sim::faults`). CI runs 100 seeds in all; `braid faults` runs more.

use braid_engine::algorithm::Algorithm;
use braid_engine::algorithms::dsgd::Dsgd;
use braid_engine::algorithms::fedavg::FedAvg;
use braid_engine::config::ExperimentConfig;
use braid_engine::experiment;
use braid_engine::sim::faults::{explore, run_with_faults, Broken, FaultPlan};

fn prepared(src: &str) -> braid_engine::prepared::Prepared {
    let c = ExperimentConfig::parse(src, "faults.toml", &[]).unwrap();
    experiment::prepare(&c).unwrap()
}

const FEDAVG: &str = r#"
name = "faults"
seed = 4
[data]
dataset = "fashion-mnist"
source = "bundled"
train_limit = 240
test_limit = 60
[partition]
clients = 3
kind = "iid"
[model]
name = "mlp"
[train]
batch_size = 16
local_steps = 2
[algorithm]
name = "fedavg"
rounds = 4
"#;

const DSGD: &str = r#"
name = "faults-dsgd"
seed = 4
[data]
dataset = "fashion-mnist"
source = "bundled"
train_limit = 240
test_limit = 60
[partition]
clients = 4
kind = "iid"
[model]
name = "mlp"
[train]
batch_size = 16
[algorithm]
name = "dsgd"
steps = 12
eval_every = 4
[decentralized]
topology = { kind = "ring" }
every = 2
eval_samples = 60
"#;

fn report(failed: &[Broken]) -> String {
    failed
        .iter()
        .map(|b| {
            format!(
                "seed {}: {:?}\n  schedule: {:#?}",
                b.seed, b.broken, b.schedule
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn seeds<A: Algorithm>(src: &str, plan: &FaultPlan, n: u64) {
    let p = prepared(src);
    let settings = A::config(&p.config).unwrap();
    let failed = explore::<A>(&p, &settings, plan, 0..n, 10, &mut |_, _| {}).unwrap();
    assert!(failed.is_empty(), "{}", report(&failed));
}

#[test]
fn fedavg_survives_seeded_delays_duplicates_and_crashes() {
    seeds::<FedAvg>(FEDAVG, &FaultPlan::default(), 60);
}

/// dsgd under delays, duplicates and reorderings (no crashes: a crashed peer rejoins from a
/// neighbour's model, by design not the fault-free run's, and a crashed monitor loses its
/// points; docs/reliability.md).
#[test]
fn dsgd_survives_seeded_delays_duplicates_and_reorderings() {
    let plan = FaultPlan {
        crash: 0.0,
        duplicate: 0.1,
        ..FaultPlan::default()
    };
    seeds::<Dsgd>(DSGD, &plan, 40);
}

#[test]
fn the_schedule_is_the_seeds_and_faults_happen() {
    let p = prepared(FEDAVG);
    let s = FedAvg::config(&p.config).unwrap();
    let plan = FaultPlan {
        crash: 0.2,
        duplicate: 0.3,
        ..FaultPlan::default()
    };
    let a = run_with_faults::<FedAvg>(&p, &s, &plan, 7).unwrap();
    let b = run_with_faults::<FedAvg>(&p, &s, &plan, 7).unwrap();
    assert_eq!(a, b);
    assert!(
        a.schedule.iter().any(|l| l.contains("crashes")),
        "{:?}",
        a.schedule
    );
    assert!(
        a.schedule.iter().any(|l| l.contains("twice")),
        "{:?}",
        a.schedule
    );
    let c = run_with_faults::<FedAvg>(&p, &s, &plan, 8).unwrap();
    assert_ne!(a.schedule, c.schedule);
}
