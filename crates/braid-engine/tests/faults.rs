//! The fault-schedule simulator on every algorithm family (the FedAvg family, FedBuff, dsgd,
//! split learning, mutual learning): seeded delays, duplicates, reorderings and crashes with
//! restarts from checkpoints break no invariant (see `braid_engine::sim::faults`). CI runs
//! 120 seeds in all; `braid faults` runs more (docs/reliability.md).

use braid_engine::algorithm::Algorithm;
use braid_engine::algorithms::dsgd::Dsgd;
use braid_engine::algorithms::fedavg::FedAvg;
use braid_engine::algorithms::fedbuff::FedBuff;
use braid_engine::algorithms::mutual::Dfml;
use braid_engine::algorithms::split::Split;
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

/// `FEDAVG` run as another algorithm (`name` and its settings in place of FedAvg's).
fn as_algorithm(name_and_settings: &str, clients: usize) -> String {
    FEDAVG
        .replace("name = \"fedavg\"\nrounds = 4\n", name_and_settings)
        .replace("local_steps = 2\n", "")
        .replace("clients = 3", &format!("clients = {clients}"))
}

#[test]
fn fedavg_survives_seeded_delays_duplicates_and_crashes() {
    seeds::<FedAvg>(FEDAVG, &FaultPlan::default(), 40);
}

/// FedBuff steps on whichever updates came first, so its results depend on the delays; its
/// rounds, once each and in order, and its termination are checked (a restarted client that
/// lost the shutdown is told the run is over when it asks to join).
#[test]
fn fedbuff_survives_seeded_delays_duplicates_and_crashes() {
    let src = FEDAVG
        .replace("name = \"fedavg\"", "name = \"fedbuff\"")
        .replace("clients = 3", "clients = 4")
        + "[fedbuff]\nconcurrency = 3\nbuffer = 2\n";
    seeds::<FedBuff>(&src, &FaultPlan::default(), 20);
}

/// Split learning: a client restarted between its activations and the server's gradient
/// answers from its checkpointed open request; a server restarted from its epoch checkpoint
/// asks the epoch's steps again under the same numbers; the results equal the fault-free
/// run's bit for bit.
#[test]
fn split_learning_survives_seeded_delays_duplicates_and_crashes() {
    let src = as_algorithm("name = \"split\"\nrounds = 2\n", 3);
    seeds::<Split>(&src, &FaultPlan::default(), 20);
}

/// DFML (mutual learning across clients, a hub that evaluates): bit for bit the fault-free
/// run's.
#[test]
fn dfml_survives_seeded_delays_duplicates_and_crashes() {
    let src = as_algorithm(
        "name = \"dfml\"\nrounds = 4\n[mutual]\nsenders = 2\neval_samples = 60\n",
        4,
    );
    seeds::<Dfml>(&src, &FaultPlan::default(), 20);
}

/// dsgd: a crashed peer resumes from its checkpoint (written after every input) exactly where
/// it stopped, and the monitor reports its points in order whatever order the snapshots come
/// in; bit for bit the fault-free run's.
#[test]
fn dsgd_survives_seeded_delays_duplicates_and_crashes() {
    seeds::<Dsgd>(DSGD, &FaultPlan::default(), 20);
}

/// An authorized halt of the whole run (every node stops with its checkpoint as it stands,
/// the messages in flight unacknowledged) and a resume of every node: each family finishes as
/// if nothing had happened.
#[test]
fn every_family_resumes_exactly_after_a_halt_of_the_whole_run() {
    let plan = FaultPlan {
        crash: 0.0,
        halt: 0.03,
        ..FaultPlan::default()
    };
    let p = prepared(FEDAVG);
    let s = FedAvg::config(&p.config).unwrap();
    let halted = (0..10)
        .filter(|&seed| {
            let o = run_with_faults::<FedAvg>(&p, &s, &plan, seed).unwrap();
            o.schedule.iter().any(|l| l.contains("authorized halt"))
        })
        .count();
    assert!(halted >= 3, "only {halted} of 10 seeds halted");
    seeds::<FedAvg>(FEDAVG, &plan, 10);
    seeds::<Dsgd>(DSGD, &plan, 5);
    let split = as_algorithm("name = \"split\"\nrounds = 2\n", 3);
    seeds::<Split>(&split, &plan, 5);
    let dfml = as_algorithm(
        "name = \"dfml\"\nrounds = 4\n[mutual]\nsenders = 2\neval_samples = 60\n",
        4,
    );
    seeds::<Dfml>(&dfml, &plan, 5);
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
