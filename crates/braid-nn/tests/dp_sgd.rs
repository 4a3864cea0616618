//! DP-SGD inside local training: per-sample clipping, noise, Poisson batches.

use braid_data::source::{load_fashion, FashionSource};
use braid_data::Dataset;
use braid_nn::arch::{Arch, ModelName};
use braid_nn::{DeviceKind, DpSgd, NnError, OptimizerConfig, TrainSpec, Trainer};

fn spec(lr: f64, batch_size: usize, dp: Option<DpSgd>) -> TrainSpec {
    TrainSpec {
        optimizer: OptimizerConfig::Sgd {
            lr,
            momentum: 0.0,
            weight_decay: 0.0,
            nesterov: false,
        },
        batch_size,
        epochs: 1,
        max_steps: None,
        prox_mu: 0.0,
        lr_scale: 1.0,
        dp_sgd: dp,
    }
}

fn dp_sgd(clip: f64, noise_multiplier: f64) -> Option<DpSgd> {
    Some(DpSgd {
        clip,
        noise_multiplier,
    })
}

fn setup() -> (Arch, Vec<f32>, Trainer, Dataset) {
    let arch = Arch::new(ModelName::Mlp, &[1, 28, 28], 10).unwrap();
    let p = arch.init_params(5);
    let t = Trainer::new(arch.clone(), &DeviceKind::Cpu).unwrap();
    let data = load_fashion(&FashionSource::Bundled).unwrap().train;
    (arch, p, t, data)
}

fn norm(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| f64::from(x - y).powi(2))
        .sum::<f64>()
        .sqrt()
}

#[test]
fn without_clipping_or_noise_a_full_batch_step_is_plain_sgd() {
    let (_, p, mut t, data) = setup();
    let shard: Vec<usize> = (0..24).collect();
    // Batch size = shard: every sample is drawn (rate 1), one step on the mean gradient.
    let plain = t.train(&p, &data, &shard, &spec(0.1, 24, None), 3).unwrap();
    let dp = DpSgd {
        clip: 1e9,
        noise_multiplier: 0.0,
    };
    let private = t
        .train(&p, &data, &shard, &spec(0.1, 24, Some(dp)), 3)
        .unwrap();
    assert_eq!((plain.steps, private.steps), (1, 1));
    assert_eq!(private.samples, 24);
    let moved = norm(&plain.params, &p);
    assert!(moved > 1e-3, "the step moved the model by {moved}");
    let gap = norm(&plain.params, &private.params);
    assert!(
        gap < 1e-4 * moved.max(1.0),
        "per-sample sum differs by {gap}"
    );
    assert!((plain.mean_loss - private.mean_loss).abs() < 1e-4);
}

#[test]
fn clipping_bounds_the_step_and_noise_has_the_configured_spread() {
    let (_, p, mut t, data) = setup();
    let shard: Vec<usize> = (0..16).collect();
    // lr 1, rate 1: the step is (sum of clipped gradients + noise) / 16.
    let clip = 1e-3;
    let clipped = t
        .train(&p, &data, &shard, &spec(1.0, 16, dp_sgd(clip, 0.0)), 1)
        .unwrap();
    let step = norm(&clipped.params, &p);
    assert!(step > 0.0 && step <= clip * (1.0 + 1e-3), "step {step}");
    // Clip so small the gradients vanish next to the noise: each entry moves by N(0, (s C / 16)^2).
    let (clip, sigma) = (1e-2, 3.0);
    let noised = t
        .train(&p, &data, &shard, &spec(1.0, 16, dp_sgd(clip, sigma)), 1)
        .unwrap();
    let d: Vec<f64> = noised
        .params
        .iter()
        .zip(&p)
        .map(|(a, b)| f64::from(a - b))
        .collect();
    let mean = d.iter().sum::<f64>() / d.len() as f64;
    let sd = (d.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / d.len() as f64).sqrt();
    let want = sigma * clip / 16.0;
    assert!((sd / want - 1.0).abs() < 0.02, "spread {sd}, want {want}");
    assert!(mean.abs() < 0.02 * want, "noise mean {mean}");
}

#[test]
fn batches_are_poisson_samples_and_runs_repeat_by_seed() {
    let (_, p, mut t, data) = setup();
    let shard: Vec<usize> = (0..200).collect();
    let dp = dp_sgd(1.0, 1.0);
    let s = spec(0.05, 20, dp);
    let a = t.train(&p, &data, &shard, &s, 11).unwrap();
    let b = t.train(&p, &data, &shard, &s, 11).unwrap();
    let c = t.train(&p, &data, &shard, &s, 12).unwrap();
    // One epoch's worth of steps; each sample drawn with probability 0.1 per step, so the
    // samples seen are Binomial(2000, 0.1): mean 200, sd 13.4.
    assert_eq!(a.steps, 10);
    assert!((140..=260).contains(&a.samples), "{} samples", a.samples);
    assert_eq!(a, b);
    assert_ne!(a.params, c.params);
    assert_ne!(a.samples, c.samples);
}

#[test]
fn bad_settings_and_the_batch_api_are_clear_errors() {
    let (_, p, mut t, data) = setup();
    let shard: Vec<usize> = (0..8).collect();
    for (clip, noise) in [
        (0.0, 1.0),
        (f64::NAN, 1.0),
        (1.0, -1.0),
        (1.0, f64::INFINITY),
    ] {
        let dp = dp_sgd(clip, noise);
        let e = t
            .train(&p, &data, &shard, &spec(0.1, 4, dp), 0)
            .unwrap_err();
        assert!(matches!(e, NnError::Config(_)), "{e}");
    }
    let dp = dp_sgd(1.0, 1.0);
    let bad = t
        .train(&p, &data, &[data.len()], &spec(0.1, 4, dp), 0)
        .unwrap_err();
    assert!(bad.to_string().contains("outside"), "{bad}");
    let e = t
        .train_batches(
            &p,
            &data,
            &[vec![0, 1]],
            &spec(0.1, 4, dp),
            &mut Default::default(),
        )
        .unwrap_err();
    assert!(e.to_string().contains("Poisson"), "{e}");
    // An empty shard trains nothing.
    let out = t.train(&p, &data, &[], &spec(0.1, 4, dp), 0).unwrap();
    assert_eq!((out.steps, out.params), (0, p));
}
