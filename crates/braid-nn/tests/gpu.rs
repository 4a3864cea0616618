//! The GPU path (burn's wgpu backend on Vulkan) against the CPU (flex with braid's kernels):
//! the same training steps give the same losses, gradients and parameters within float
//! tolerance, for the built-in networks and a model of the kind users write (the transformer);
//! evaluation agrees; a GPU that is not there is one clear error.
//!
//! The device is `BRAID_TEST_GPU` (default `gpu`: the best adapter, lavapipe where that is the
//! only one). Without a Vulkan device these tests print why and pass, unless
//! `BRAID_REQUIRE_GPU=1`, which `.ci/run` sets after installing lavapipe: then they fail.
#![cfg(feature = "gpu")]

use braid_data::source::{load_fashion, FashionSource};
use std::sync::Arc;

use braid_data::dataset::Features;
use braid_data::{Dataset, Task};
use braid_nn::arch::{Arch, ModelName};
use braid_nn::models::TransformerKind;
use braid_nn::stacked::{ConvForm, StackedJob, StackedTrainer};
use braid_nn::{
    AnyModelKind, BoundModel, DataShape, DeviceKind, Kind, OptimizerConfig, OptimizerState,
    TrainSpec,
};

/// The GPU to test on, or `None` (with the reason printed) where there is none and none is
/// required.
fn gpu() -> Option<DeviceKind> {
    let name = std::env::var("BRAID_TEST_GPU").unwrap_or_else(|_| "gpu".into());
    let kind = DeviceKind::try_from(name).expect("BRAID_TEST_GPU names a device");
    match kind.device() {
        Ok(_) => Some(kind),
        Err(e) if std::env::var("BRAID_REQUIRE_GPU").as_deref() == Ok("1") => {
            panic!("BRAID_REQUIRE_GPU=1 but {e}")
        }
        Err(e) => {
            eprintln!("GPU tests skipped: {e}");
            None
        }
    }
}

fn sgd(lr: f64, batch: usize, steps: usize) -> TrainSpec {
    TrainSpec {
        optimizer: OptimizerConfig::Sgd {
            lr,
            momentum: 0.0,
            weight_decay: 0.0,
            nesterov: false,
        },
        batch_size: batch,
        epochs: 1,
        max_steps: Some(steps),
        prox_mu: 0.0,
        lr_scale: 1.0,
        dp_sgd: None,
    }
}

/// Largest difference between `a` and `b`, relative to the larger magnitude (at least 1e-3,
/// so values near zero are compared absolutely).
fn max_rel_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() / x.abs().max(y.abs()).max(1e-3))
        .fold(0.0, f32::max)
}

fn builtin(name: ModelName) -> BoundModel {
    BoundModel::builtin(&Arch::new(name, &[1, 28, 28], 10).unwrap())
}

/// Trains `model` from its seeded initial parameters on `data` with `spec` on `device`.
fn trained(
    model: &BoundModel, data: &Dataset, spec: &TrainSpec, device: &DeviceKind,
) -> braid_nn::TrainOutcome {
    let p0 = model.init_params(5).unwrap();
    let shard: Vec<usize> = (0..data.len().min(256)).collect();
    let mut t = model.trainer(device).unwrap();
    t.train(&p0, data, &shard, spec, 11).unwrap()
}

#[test]
fn one_step_gives_the_cpus_loss_and_gradient() {
    let Some(gpu) = gpu() else { return };
    let data = load_fashion(&FashionSource::Bundled).unwrap().train;
    for name in [ModelName::Mlp, ModelName::CnnSmall] {
        let model = builtin(name);
        let p0 = model.init_params(5).unwrap();
        // One plain SGD step with lr 1: the parameters move by exactly minus the gradient.
        let spec = sgd(1.0, 16, 1);
        let cpu = trained(&model, &data, &spec, &DeviceKind::Cpu);
        let on_gpu = trained(&model, &data, &spec, &gpu);
        assert_eq!((cpu.steps, cpu.samples), (on_gpu.steps, on_gpu.samples));
        let rel = (cpu.mean_loss - on_gpu.mean_loss).abs() / cpu.mean_loss;
        assert!(
            rel < 1e-5,
            "{}: loss {} vs {}",
            name.as_str(),
            cpu.mean_loss,
            on_gpu.mean_loss
        );
        let grad = |p: &[f32]| -> Vec<f32> { p0.iter().zip(p).map(|(a, b)| a - b).collect() };
        let (g_cpu, g_gpu) = (grad(&cpu.params), grad(&on_gpu.params));
        assert!(
            g_cpu.iter().any(|g| *g != 0.0),
            "{}: no gradient",
            name.as_str()
        );
        let norm = g_cpu.iter().map(|g| g * g).sum::<f32>().sqrt();
        let diff = g_cpu
            .iter()
            .zip(&g_gpu)
            .map(|(a, b)| (a - b) * (a - b))
            .sum::<f32>()
            .sqrt();
        assert!(
            diff / norm < 1e-4,
            "{}: gradient differs by {} of its norm",
            name.as_str(),
            diff / norm
        );
    }
}

#[test]
fn several_steps_track_the_cpu_and_evaluation_agrees() {
    let Some(gpu) = gpu() else { return };
    let split = load_fashion(&FashionSource::Bundled).unwrap();
    let model = builtin(ModelName::CnnSmall);
    let spec = sgd(0.05, 32, 6);
    let cpu = trained(&model, &split.train, &spec, &DeviceKind::Cpu);
    let on_gpu = trained(&model, &split.train, &spec, &gpu);
    let rel = max_rel_diff(&cpu.params, &on_gpu.params);
    assert!(
        rel < 1e-3,
        "parameters after 6 steps differ by {rel} (relative)"
    );
    // Evaluation of the same parameters on both devices.
    let idx: Vec<usize> = (0..300).collect();
    let e_cpu = model
        .trainer(&DeviceKind::Cpu)
        .unwrap()
        .evaluate(&cpu.params, &split.test, Some(&idx))
        .unwrap();
    let e_gpu = model
        .trainer(&gpu)
        .unwrap()
        .evaluate(&cpu.params, &split.test, Some(&idx))
        .unwrap();
    assert_eq!(e_cpu.samples, e_gpu.samples);
    // A sample whose top two scores tie within rounding may flip; none should here, but allow one.
    assert!((e_cpu.accuracy - e_gpu.accuracy).abs() <= 1.0 / 300.0 + 1e-12);
    assert!((e_cpu.loss - e_gpu.loss).abs() / e_cpu.loss < 1e-4);
}

#[test]
fn clients_stacked_on_the_gpu_train_as_each_alone_on_the_cpu() {
    let Some(gpu) = gpu() else { return };
    let data = load_fashion(&FashionSource::Bundled).unwrap().train;
    let cases = [
        (ModelName::CnnSmall, ConvForm::Unfolded),
        (ModelName::CnnSmall, ConvForm::Grouped),
        (ModelName::Mlp, ConvForm::Unfolded),
    ];
    for (name, form) in cases {
        let arch = Arch::new(name, &[1, 28, 28], 10).unwrap();
        let model = BoundModel::builtin(&arch);
        // Three clients with 40, 56 and 72 samples: 3, 4 and 5 steps of at most 16, so the
        // stack pads both steps and last batches.
        let jobs: Vec<StackedJob> = (0..3)
            .map(|m| {
                let shard: Vec<usize> = (m * 100..m * 100 + 40 + 16 * m).collect();
                let spec = TrainSpec {
                    max_steps: None,
                    ..sgd(0.05, 16, 0)
                };
                StackedJob::new(arch.init_params(m as u64), &shard, spec, 21 + m as u64)
            })
            .collect();
        let mut stacked = StackedTrainer::new(&arch, &gpu)
            .unwrap()
            .with_conv_form(form);
        let on_gpu = stacked.train(&jobs, &data);
        let mut alone = model.trainer(&DeviceKind::Cpu).unwrap();
        for (m, (job, got)) in jobs.iter().zip(on_gpu).enumerate() {
            let got = got.unwrap();
            let cpu = alone
                .train_batches(
                    &job.params,
                    &data,
                    &job.batches,
                    &job.spec,
                    &mut OptimizerState::default(),
                )
                .unwrap();
            assert_eq!(
                (got.steps, got.samples),
                (cpu.steps, cpu.samples),
                "{name:?} {m}"
            );
            // Within 1e-3 of the largest parameter: a ReLU or a max-pool tie that rounds the
            // other way moves a few weights by about 1e-4 of it (the unfolded form sums its
            // windows in another order than burn's convolution).
            let scale = cpu.params.iter().fold(0f32, |m, p| m.max(p.abs()));
            let worst = cpu
                .params
                .iter()
                .zip(&got.params)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(
                worst <= 1e-3 * scale,
                "{name:?} {form:?} client {m}: a parameter differs by {worst} (largest {scale})"
            );
            assert!(
                (got.mean_loss - cpu.mean_loss).abs() / cpu.mean_loss < 1e-5,
                "{name:?} {form:?} client {m}: loss {} vs {}",
                got.mean_loss,
                cpu.mean_loss
            );
        }
    }
}

#[test]
fn a_users_kind_of_model_trains_on_the_gpu_as_on_the_cpu() {
    let Some(gpu) = gpu() else { return };
    // Byte-level next-token windows and the built-in transformer, a model written as a user
    // writes one (any burn module behind braid's `Model` trait).
    let t = 16;
    let text: Vec<u8> = b"the quick brown fox jumps over the lazy dog; "
        .iter()
        .copied()
        .cycle()
        .take(64 * t + 1)
        .collect();
    let windows: Vec<u8> = (0..64)
        .flat_map(|k| text[k * t..k * t + t + 1].to_vec())
        .collect();
    let data = Dataset::new(
        Features::U8 {
            data: windows,
            scale: 1.0,
        },
        vec![0; 64],
        vec![t + 1],
        256,
    )
    .unwrap()
    .with_task(Task::NextToken);
    let kind = TransformerKind {
        layers: 2,
        d_model: 32,
        heads: 2,
    };
    let model = Arc::new(Kind(kind))
        .bind("transformer", &DataShape::of(&data))
        .unwrap();
    let spec = sgd(0.05, 8, 2);
    let p0 = model.init_params(3).unwrap();
    let shard: Vec<usize> = (0..64).collect();
    let cpu = model
        .trainer(&DeviceKind::Cpu)
        .unwrap()
        .train(&p0, &data, &shard, &spec, 1)
        .unwrap();
    let on_gpu = model
        .trainer(&gpu)
        .unwrap()
        .train(&p0, &data, &shard, &spec, 1)
        .unwrap();
    assert!((cpu.mean_loss - on_gpu.mean_loss).abs() / cpu.mean_loss < 1e-4);
    // The updates (parameters after minus before) agree to a small fraction of their size:
    // softmax, layer norm and the attention's reductions round differently on the two devices.
    let update = |p: &[f32]| -> Vec<f32> { p.iter().zip(&p0).map(|(a, b)| a - b).collect() };
    let (u_cpu, u_gpu) = (update(&cpu.params), update(&on_gpu.params));
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    let diff: Vec<f32> = u_cpu.iter().zip(&u_gpu).map(|(a, b)| a - b).collect();
    let rel = norm(&diff) / norm(&u_cpu);
    assert!(
        rel < 1e-3,
        "transformer updates differ by {rel} of their norm"
    );
}

#[test]
fn a_gpu_that_is_not_there_is_one_clear_error() {
    let missing = DeviceKind::try_from("gpu:virtual:97".to_string()).unwrap();
    let e = missing.device().unwrap_err().to_string();
    assert!(e.contains("gpu:virtual:97"), "{e}");
    assert!(!e.contains('\n'), "{e}");
}
