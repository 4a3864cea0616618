//! Whole runs on the GPU (burn's wgpu backend): a FedAvg round trains and evaluates as on the
//! CPU within float tolerance, several clients trained at once on the one GPU give the same
//! result as one after another, clients batched into one stacked computation agree with the
//! CPU's one at a time and repeat bit for bit, and a GPU that is not there is one clear error before any
//! work.
//!
//! The device is `BRAID_TEST_GPU` (default `gpu`). Without a Vulkan device these tests print
//! why and pass, unless `BRAID_REQUIRE_GPU=1` (set by `.ci/run`, which installs lavapipe).
#![cfg(feature = "gpu")]

use braid_engine::algorithms::fedavg::{FedAvg, RoundMetrics};
use braid_engine::config::ExperimentConfig;
use braid_engine::experiment;
use braid_nn::DeviceKind;

fn gpu() -> Option<String> {
    let name = std::env::var("BRAID_TEST_GPU").unwrap_or_else(|_| "gpu".into());
    let kind = DeviceKind::try_from(name.clone()).expect("BRAID_TEST_GPU names a device");
    match kind.device() {
        Ok(_) => Some(name),
        Err(e) if std::env::var("BRAID_REQUIRE_GPU").as_deref() == Ok("1") => {
            panic!("BRAID_REQUIRE_GPU=1 but {e}")
        }
        Err(e) => {
            eprintln!("GPU tests skipped: {e}");
            None
        }
    }
}

const SRC: &str = r#"
name = "gpu"
seed = 3
[data]
dataset = "fashion-mnist"
source = "bundled"
train_limit = 240
test_limit = 200
[partition]
clients = 4
kind = "iid"
[model]
name = "cnn-small"
[train]
batch_size = 16
local_steps = 3
[algorithm]
name = "fedavg"
rounds = 2
"#;

fn run(set: &[String]) -> (Vec<RoundMetrics>, Vec<f32>) {
    let c = ExperimentConfig::parse(SRC, "gpu.toml", set).unwrap();
    let p = experiment::prepare(&c).unwrap();
    let out = experiment::run::<FedAvg>(&p, &mut |_| {}).unwrap();
    (
        out.rows.into_iter().map(|(m, _)| m).collect(),
        out.final_params.unwrap(),
    )
}

/// The GPU run `gpu` did the CPU run's work and agrees with it within float tolerance.
fn assert_matches_cpu(cpu: &(Vec<RoundMetrics>, Vec<f32>), gpu: &(Vec<RoundMetrics>, Vec<f32>)) {
    assert_eq!(cpu.0.len(), 2);
    assert_eq!(cpu.0.len(), gpu.0.len());
    for (c, g) in cpu.0.iter().zip(&gpu.0) {
        assert_eq!(
            (c.round, c.clients, c.samples, c.local_steps),
            (g.round, g.clients, g.samples, g.local_steps)
        );
        let (ca, ga) = (c.accuracy.unwrap(), g.accuracy.unwrap());
        assert!(
            (ca - ga).abs() <= 1.0 / 200.0 + 1e-12,
            "accuracy {ca} vs {ga}"
        );
        let (cl, gl) = (c.loss.unwrap(), g.loss.unwrap());
        assert!((cl - gl).abs() / cl < 1e-3, "loss {cl} vs {gl}");
    }
    let worst = cpu
        .1
        .iter()
        .zip(&gpu.1)
        .map(|(a, b)| (a - b).abs() / a.abs().max(b.abs()).max(1e-3))
        .fold(0.0, f32::max);
    assert!(
        worst < 1e-3,
        "final parameters differ by {worst} (relative)"
    );
}

#[test]
fn fedavg_rounds_on_the_gpu_match_the_cpu_and_any_number_of_clients_at_once() {
    let Some(gpu) = gpu() else { return };
    let device = format!("runtime.device={gpu:?}");
    let cpu = run(&["runtime.workers=1".into()]);
    let one = run(&[device.clone(), "runtime.workers=1".into()]);
    assert_matches_cpu(&cpu, &one);
    // Four clients trained at once on the one GPU (a thread and a model each): the same run,
    // bit for bit, as one after another.
    assert_eq!(one, run(&[device, "runtime.workers=4".into()]));
}

#[test]
fn batched_clients_on_the_gpu_match_the_cpu_one_at_a_time() {
    let Some(gpu) = gpu() else { return };
    let device = format!("runtime.device={gpu:?}");
    let cpu = run(&["runtime.workers=1".into()]);
    let batched = || run(&[device.clone(), "runtime.batch_clients=true".into()]);
    let stacked = batched();
    assert_matches_cpu(&cpu, &stacked);
    // The same stacks again: the same bits.
    assert_eq!(stacked, batched());
}

#[test]
fn a_missing_gpu_is_refused_before_any_work() {
    let c = ExperimentConfig::parse(
        SRC,
        "gpu.toml",
        &["runtime.device=\"gpu:virtual:97\"".to_string()],
    )
    .unwrap();
    let e = match experiment::prepare(&c) {
        Err(e) => e.to_string(),
        Ok(p) => match experiment::run::<FedAvg>(&p, &mut |_| {}) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("a run on a GPU that is not there succeeded"),
        },
    };
    assert!(e.contains("gpu:virtual:97"), "{e}");
    assert!(!e.contains('\n'), "{e}");
}
