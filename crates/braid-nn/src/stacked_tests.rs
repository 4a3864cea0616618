//! Unit tests of stacked training: each model's result is its training alone.

use super::*;
use crate::arch::ModelName;
use crate::train::{DpSgd, Trainer};
use crate::OptimizerState;

fn data(n: usize, shape: &[usize], classes: u32) -> Dataset {
    let mut rng = braid_core::seed::rng(11, &[]);
    use rand::Rng as _;
    let len: usize = shape.iter().product();
    let x: Vec<f32> = (0..n * len).map(|_| rng.random_range(0.0..1.0)).collect();
    let y: Vec<u32> = (0..n).map(|i| (i as u32 * 7) % classes).collect();
    Dataset::new(
        braid_data::dataset::Features::F32(x),
        y,
        shape.to_vec(),
        classes as usize,
    )
    .expect("data")
}

fn spec(optimizer: OptimizerConfig, batch_size: usize, prox_mu: f32) -> TrainSpec {
    TrainSpec {
        optimizer,
        batch_size,
        epochs: 1,
        max_steps: None,
        prox_mu,
        lr_scale: 1.0,
        dp_sgd: None,
    }
}

fn sgd(momentum: f64, weight_decay: f64) -> OptimizerConfig {
    OptimizerConfig::Sgd {
        lr: 0.05,
        momentum,
        weight_decay,
        nesterov: false,
    }
}

/// Each job trained alone by the one-model trainer.
fn alone(arch: &Arch, jobs: &[StackedJob], data: &Dataset) -> Vec<TrainOutcome> {
    let mut t = Trainer::new(arch.clone(), &DeviceKind::Cpu).expect("trainer");
    jobs.iter()
        .map(|j| {
            t.train_batches(
                &j.params,
                data,
                &j.batches,
                &j.spec,
                &mut OptimizerState::default(),
            )
            .expect("train alone")
        })
        .collect()
}

/// Parameters may differ by `1e-4` of the largest one, plus `atol`.
fn assert_close(
    stacked: &[Result<TrainOutcome, NnError>], alone: &[TrainOutcome], atol: f32, what: &str,
) {
    assert_eq!(stacked.len(), alone.len());
    for (m, (s, a)) in stacked.iter().zip(alone).enumerate() {
        let s = s
            .as_ref()
            .unwrap_or_else(|e| panic!("{what}: model {m}: {e}"));
        assert_eq!(
            (s.steps, s.samples),
            (a.steps, a.samples),
            "{what}: model {m}"
        );
        assert!(
            (s.mean_loss - a.mean_loss).abs() < 1e-4 * (1.0 + a.mean_loss.abs()),
            "{what}: model {m} loss {} vs {}",
            s.mean_loss,
            a.mean_loss
        );
        let scale = a.params.iter().fold(0f32, |x, p| x.max(p.abs()));
        for (i, (p, q)) in s.params.iter().zip(&a.params).enumerate() {
            assert!(
                (p - q).abs() <= 1e-4 * scale + atol,
                "{what}: model {m} parameter {i}: {p} vs {q}"
            );
        }
    }
}

#[test]
fn stacked_models_train_as_each_alone_for_every_builtin_and_optimizer() {
    // Two channels: model k's channels must stay in its own group.
    let shape = [2, 12, 12];
    let d = data(60, &shape, 5);
    let optimizers = [
        (sgd(0.0, 0.0), 0.0),
        (sgd(0.9, 1e-3), 0.0),
        (sgd(0.0, 0.0), 0.1),
        (
            OptimizerConfig::Adamw {
                lr: 1e-3,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.01,
            },
            0.0,
        ),
    ];
    for (name, form) in ModelName::ALL
        .into_iter()
        .flat_map(|n| [(n, ConvForm::Grouped), (n, ConvForm::Unfolded)])
    {
        let arch = Arch::new(name, &shape, 5).expect("arch");
        for (optimizer, mu) in optimizers.clone() {
            // Three models from different starts on different shards; batch 8 leaves a last
            // batch of 4 (20 samples), so batch widths differ within a step.
            let jobs: Vec<StackedJob> = (0..3)
                .map(|m| {
                    let shard: Vec<usize> = (m * 20..m * 20 + 20).collect();
                    StackedJob::new(
                        arch.init_params(m as u64),
                        &shard,
                        spec(optimizer.clone(), 8, mu),
                        100 + m as u64,
                    )
                })
                .collect();
            let mut stacked = StackedTrainer::new(&arch, &DeviceKind::Cpu)
                .expect("stacked")
                .with_conv_form(form);
            let got = stacked.train(&jobs, &d);
            // AdamW divides by the gradient's running magnitude: where a gradient is near
            // zero, float noise in it moves the step by a fraction of the learning rate.
            let atol = match optimizer {
                OptimizerConfig::Adamw { lr, .. } => 0.1 * lr as f32,
                OptimizerConfig::Sgd { .. } => 0.0,
            };
            let what = format!("{name:?} {form:?} {optimizer:?} mu {mu}");
            assert_close(&got, &alone(&arch, &jobs, &d), atol, &what);
        }
    }
}

#[test]
fn models_with_different_step_counts_share_a_stack_only_where_that_is_exact() {
    let shape = [1, 8, 8];
    let d = data(80, &shape, 4);
    let arch = Arch::new(ModelName::CnnSmall, &shape, 4).expect("arch");
    // Shards of 10, 25 and 40 samples: 2, 4 and 5 steps of at most 8.
    let shards: Vec<Vec<usize>> = vec![(0..10).collect(), (10..35).collect(), (35..75).collect()];
    for optimizer in [sgd(0.0, 0.0), sgd(0.5, 0.0)] {
        let jobs: Vec<StackedJob> = shards
            .iter()
            .enumerate()
            .map(|(m, s)| {
                StackedJob::new(
                    arch.init_params(m as u64),
                    s,
                    spec(optimizer.clone(), 8, 0.0),
                    7,
                )
            })
            .collect();
        let mut stacked = StackedTrainer::new(&arch, &DeviceKind::Cpu).expect("stacked");
        let got = stacked.train(&jobs, &d);
        assert_close(
            &got,
            &alone(&arch, &jobs, &d),
            0.0,
            &format!("{optimizer:?}"),
        );
    }
    assert!(padding_is_inert(&spec(sgd(0.0, 0.0), 8, 0.0)));
    assert!(!padding_is_inert(&spec(sgd(0.5, 0.0), 8, 0.0)));
    assert!(!padding_is_inert(&spec(sgd(0.0, 0.1), 8, 0.0)));
    assert!(!padding_is_inert(&spec(sgd(0.0, 0.0), 8, 0.01)));
}

#[test]
fn a_job_that_does_not_fit_gets_its_own_error_and_the_others_train() {
    let shape = [1, 8, 8];
    let d = data(40, &shape, 3);
    let arch = Arch::new(ModelName::Mlp, &shape, 3).expect("arch");
    let shard: Vec<usize> = (0..16).collect();
    let good = StackedJob::new(arch.init_params(1), &shard, spec(sgd(0.0, 0.0), 8, 0.0), 3);
    let short = StackedJob::new(vec![0.0; 5], &shard, spec(sgd(0.0, 0.0), 8, 0.0), 3);
    let mut dp = good.clone();
    dp.spec.dp_sgd = Some(DpSgd {
        clip: 1.0,
        noise_multiplier: 1.0,
    });
    let mut outside = good.clone();
    outside.batches[0][0] = 40;
    let mut stacked = StackedTrainer::new(&arch, &DeviceKind::Cpu).expect("stacked");
    let got = stacked.train(&[short, good.clone(), dp, outside], &d);
    assert!(matches!(got[0], Err(NnError::ParamCount { got: 5, .. })));
    assert!(matches!(&got[2], Err(NnError::Config(why)) if why.contains("DP-SGD")));
    assert!(matches!(&got[3], Err(NnError::Config(why)) if why.contains("outside")));
    assert_close(
        &got[1..2],
        &alone(&arch, &[good], &d),
        0.0,
        "the fitting job",
    );
    // Data of another shape: every job is refused with the reason.
    let other = data(10, &[1, 4, 4], 3);
    let got = stacked.train(
        &[StackedJob::new(
            arch.init_params(1),
            &[0, 1],
            spec(sgd(0.0, 0.0), 2, 0.0),
            1,
        )],
        &other,
    );
    assert!(matches!(&got[0], Err(NnError::Shape(why)) if why.contains("expects samples")));
}

#[test]
fn a_set_stop_flag_halts_the_stack() {
    let shape = [1, 8, 8];
    let d = data(20, &shape, 2);
    let arch = Arch::new(ModelName::Mlp, &shape, 2).expect("arch");
    let mut stacked = StackedTrainer::new(&arch, &DeviceKind::Cpu).expect("stacked");
    stacked.set_stop_flag(Arc::new(AtomicBool::new(true)));
    let job = StackedJob::new(
        arch.init_params(1),
        &[0, 1, 2],
        spec(sgd(0.0, 0.0), 2, 0.0),
        1,
    );
    assert!(matches!(stacked.train(&[job], &d)[0], Err(NnError::Halted)));
}

#[test]
fn a_models_bits_do_not_depend_on_who_shares_its_stack_on_the_cpu() {
    let shape = [1, 28, 28];
    let d = data(200, &shape, 10);
    let arch = Arch::new(ModelName::CnnSmall, &shape, 10).expect("arch");
    // Shards of 30 to 55 samples: different step counts and last batches (plain SGD, so
    // they share stacks).
    let jobs: Vec<StackedJob> = (0..6)
        .map(|m| {
            let shard: Vec<usize> = (m * 25..m * 30 + 30).collect();
            StackedJob::new(
                arch.init_params(m as u64),
                &shard,
                spec(sgd(0.0, 0.0), 8, 0.0),
                9,
            )
        })
        .collect();
    let params = |r: &Result<TrainOutcome, NnError>| r.as_ref().expect("trained").params.clone();
    for form in [ConvForm::Grouped, ConvForm::Unfolded] {
        let mut stacked = StackedTrainer::new(&arch, &DeviceKind::Cpu)
            .expect("stacked")
            .with_conv_form(form);
        let first_alone = params(&stacked.train(&jobs[..1], &d)[0]);
        for k in 2..=jobs.len() {
            let got = stacked.train(&jobs[..k], &d);
            assert_eq!(
                params(&got[0]),
                first_alone,
                "{form:?}: first of a stack of {k}"
            );
            let reversed: Vec<StackedJob> = jobs[..k].iter().rev().cloned().collect();
            let got = stacked.train(&reversed, &d);
            assert_eq!(
                params(&got[k - 1]),
                first_alone,
                "{form:?}: last of a stack of {k}"
            );
        }
    }
}
