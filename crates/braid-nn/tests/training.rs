//! Models, flat parameters, local training and safetensors on the bundled Fashion-MNIST subset.

use braid_data::source::{load_fashion, FashionSource};
use braid_nn::arch::{Arch, ModelName};
use braid_nn::{store, DeviceKind, NnError, OptimizerConfig, TrainSpec, Trainer};

fn sgd(lr: f64) -> TrainSpec {
    TrainSpec {
        optimizer: OptimizerConfig::Sgd {
            lr,
            momentum: 0.0,
            weight_decay: 0.0,
            nesterov: false,
        },
        batch_size: 32,
        epochs: 1,
        max_steps: None,
        prox_mu: 0.0,
        lr_scale: 1.0,
        dp_sgd: None,
    }
}

#[test]
fn flat_params_round_trip_through_the_module() {
    for name in ModelName::ALL {
        let arch = Arch::new(name, &[1, 28, 28], 10).unwrap();
        let p = arch.init_params(3);
        let data = load_fashion(&FashionSource::Bundled).unwrap().test;
        let mut t = Trainer::new(arch.clone(), &DeviceKind::Cpu).unwrap();
        // Zero steps of training return exactly what went in.
        let spec = TrainSpec {
            max_steps: Some(0),
            ..sgd(0.1)
        };
        let out = t.train(&p, &data, &[0, 1, 2], &spec, 0).unwrap();
        assert_eq!(out.params, p, "{}", name.as_str());
        assert_eq!(out.steps, 0);
    }
}

#[test]
fn every_parameter_gets_a_gradient_and_training_learns() {
    let split = load_fashion(&FashionSource::Bundled).unwrap();
    let arch = Arch::new(ModelName::CnnSmall, &[1, 28, 28], 10).unwrap();
    let p0 = arch.init_params(1);
    let mut t = Trainer::new(arch.clone(), &DeviceKind::Cpu).unwrap();
    let shard: Vec<usize> = (0..2000).collect();
    let before = t.evaluate(&p0, &split.test, None).unwrap();
    let out = t.train(&p0, &split.train, &shard, &sgd(0.05), 7).unwrap();
    assert_eq!(out.steps, 63);
    assert_eq!(out.samples, 2000);
    // Every parameter tensor moved: written-back parameters are still tracked by autodiff.
    let mut offset = 0;
    for ps in arch.param_shapes() {
        let n: usize = ps.dims.iter().product();
        let moved = (offset..offset + n).any(|i| out.params[i] != p0[i]);
        assert!(moved, "{} got no update", ps.name);
        offset += n;
    }
    let after = t.evaluate(&out.params, &split.test, None).unwrap();
    assert!(
        after.accuracy > before.accuracy + 0.15,
        "{before:?} -> {after:?}"
    );
    assert!(after.loss < before.loss);
    // A second call from the trained parameters keeps learning (the reused module is re-loaded).
    let again = t
        .train(&out.params, &split.train, &shard, &sgd(0.05), 8)
        .unwrap();
    assert!(again.mean_loss < out.mean_loss);
}

#[test]
fn training_is_deterministic_by_seed() {
    let split = load_fashion(&FashionSource::Bundled).unwrap();
    let arch = Arch::new(ModelName::Mlp, &[1, 28, 28], 10).unwrap();
    let p0 = arch.init_params(1);
    let shard: Vec<usize> = (0..300).collect();
    let mut t = Trainer::new(arch, &DeviceKind::Cpu).unwrap();
    let a = t.train(&p0, &split.train, &shard, &sgd(0.05), 11).unwrap();
    let b = t.train(&p0, &split.train, &shard, &sgd(0.05), 11).unwrap();
    let c = t.train(&p0, &split.train, &shard, &sgd(0.05), 12).unwrap();
    assert_eq!(a, b);
    assert_ne!(a.params, c.params);
}

#[test]
fn proximal_term_keeps_the_model_near_its_start() {
    let split = load_fashion(&FashionSource::Bundled).unwrap();
    let arch = Arch::new(ModelName::Mlp, &[1, 28, 28], 10).unwrap();
    let p0 = arch.init_params(1);
    let shard: Vec<usize> = (0..640).collect();
    let mut t = Trainer::new(arch, &DeviceKind::Cpu).unwrap();
    let free = t.train(&p0, &split.train, &shard, &sgd(0.1), 1).unwrap();
    let prox = t
        .train(
            &p0,
            &split.train,
            &shard,
            &TrainSpec {
                prox_mu: 5.0,
                ..sgd(0.1)
            },
            1,
        )
        .unwrap();
    let d = |p: &[f32]| braid_core::params::sq_dist(p, &p0).unwrap();
    assert!(
        d(&prox.params) < 0.5 * d(&free.params),
        "{} vs {}",
        d(&prox.params),
        d(&free.params)
    );
}

#[test]
fn momentum_nesterov_and_adamw_train() {
    let split = load_fashion(&FashionSource::Bundled).unwrap();
    let arch = Arch::new(ModelName::Mlp, &[1, 28, 28], 10).unwrap();
    let p0 = arch.init_params(1);
    let shard: Vec<usize> = (0..2000).collect();
    let mut t = Trainer::new(arch, &DeviceKind::Cpu).unwrap();
    let base = t.evaluate(&p0, &split.test, None).unwrap().accuracy;
    for opt in [
        OptimizerConfig::Sgd {
            lr: 0.02,
            momentum: 0.9,
            weight_decay: 5e-4,
            nesterov: true,
        },
        OptimizerConfig::Adamw {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        },
    ] {
        let spec = TrainSpec {
            optimizer: opt.clone(),
            ..sgd(0.1)
        };
        let out = t.train(&p0, &split.train, &shard, &spec, 2).unwrap();
        let acc = t.evaluate(&out.params, &split.test, None).unwrap().accuracy;
        assert!(acc > base + 0.25, "{opt:?}: {base} -> {acc}");
    }
}

#[test]
fn wrong_shapes_are_errors_not_panics() {
    let split = load_fashion(&FashionSource::Bundled).unwrap();
    let arch = Arch::new(ModelName::CnnSmall, &[1, 28, 28], 10).unwrap();
    let mut t = Trainer::new(arch, &DeviceKind::Cpu).unwrap();
    let e = t
        .train(&[0.0; 10], &split.train, &[0], &sgd(0.1), 0)
        .unwrap_err();
    assert!(matches!(e, NnError::ParamCount { got: 10, .. }), "{e}");
    let vec_arch = Arch::new(ModelName::Mlp, &[60], 10).unwrap();
    let mut t = Trainer::new(vec_arch.clone(), &DeviceKind::Cpu).unwrap();
    let e = t
        .evaluate(&vec_arch.init_params(0), &split.test, None)
        .unwrap_err();
    assert!(e.to_string().contains("[60]"), "{e}");
}

#[test]
fn safetensors_round_trip_and_reject_other_models() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    let arch = Arch::new(ModelName::Cnn, &[1, 28, 28], 10).unwrap();
    let p = arch.init_params(5);
    store::save(&arch, &p, &path).unwrap();
    store::save(&arch, &p, &path).unwrap(); // overwriting works
    assert_eq!(store::load(&arch, &path).unwrap(), p);
    let other = Arch::new(ModelName::CnnDeep, &[1, 28, 28], 10).unwrap();
    assert!(store::load(&other, &path).is_err());
    assert!(store::load(&arch, &dir.path().join("missing.safetensors"))
        .unwrap_err()
        .to_string()
        .contains("missing"));
    // The file is plain safetensors: an 8-byte header length, then a JSON header naming tensors.
    let bytes = std::fs::read(&path).unwrap();
    let hlen = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&bytes[8..8 + hlen]).unwrap();
    assert!(
        header.contains("\"fc.0.weight\"") && header.contains("[128,3136]"),
        "{header}"
    );
}

#[test]
fn optimizer_state_carries_momentum_between_calls_and_trainers() {
    let split = load_fashion(&FashionSource::Bundled).unwrap();
    let arch = Arch::new(ModelName::Mlp, &[1, 28, 28], 10).unwrap();
    let p0 = arch.init_params(2);
    let spec = TrainSpec {
        optimizer: OptimizerConfig::Sgd {
            lr: 0.05,
            momentum: 0.9,
            weight_decay: 0.0,
            nesterov: false,
        },
        ..sgd(0.05)
    };
    let batches: Vec<Vec<usize>> = (0..8).map(|b| (b * 16..(b + 1) * 16).collect()).collect();
    let mut a = Trainer::new(arch.clone(), &DeviceKind::Cpu).unwrap();
    let mut b = Trainer::new(arch.clone(), &DeviceKind::Cpu).unwrap();
    // Eight steps in one call...
    let mut s = braid_nn::OptimizerState::default();
    let whole = a
        .train_batches(&p0, &split.train, &batches, &spec, &mut s)
        .unwrap();
    assert!(!s.is_empty());
    // ...equal four + four steps in two calls on two different trainers, with the state carried.
    let mut s = braid_nn::OptimizerState::default();
    let first = b
        .train_batches(&p0, &split.train, &batches[..4], &spec, &mut s)
        .unwrap();
    let second = a
        .train_batches(&first.params, &split.train, &batches[4..], &spec, &mut s)
        .unwrap();
    assert_eq!(second.params, whole.params);
    // ...and when the state goes through bytes (a checkpoint) between the two calls.
    let mut s = braid_nn::OptimizerState::default();
    let first = b
        .train_batches(&p0, &split.train, &batches[..4], &spec, &mut s)
        .unwrap();
    let bytes = s.to_bytes().unwrap();
    assert!(!bytes.is_empty() && !s.is_empty());
    let mut restored = braid_nn::OptimizerState::from_bytes(&bytes).unwrap();
    let second = a
        .train_batches(
            &first.params,
            &split.train,
            &batches[4..],
            &spec,
            &mut restored,
        )
        .unwrap();
    assert_eq!(second.params, whole.params);
    assert!(braid_nn::OptimizerState::from_bytes(&bytes[..bytes.len() / 2]).is_err());
    assert!(braid_nn::OptimizerState::from_bytes(b"garbage").is_err());
    assert!(braid_nn::OptimizerState::from_bytes(&[])
        .unwrap()
        .is_empty());
    // Without the state (momentum restarted) the result differs.
    let fresh = a
        .train_batches(
            &first.params,
            &split.train,
            &batches[4..],
            &spec,
            &mut braid_nn::OptimizerState::default(),
        )
        .unwrap();
    assert_ne!(fresh.params, whole.params);
    // Indices outside the data set are an error, not a panic.
    let bad = vec![vec![split.train.len()]];
    assert!(a
        .train_batches(&p0, &split.train, &bad, &spec, &mut s)
        .is_err());
}

#[test]
fn lr_scale_multiplies_the_learning_rate() {
    let split = load_fashion(&FashionSource::Bundled).unwrap();
    let arch = Arch::new(ModelName::Mlp, &[1, 28, 28], 10).unwrap();
    let p0 = arch.init_params(4);
    let mut t = Trainer::new(arch, &DeviceKind::Cpu).unwrap();
    let shard: Vec<usize> = (0..256).collect();
    let halved = TrainSpec {
        lr_scale: 0.5,
        ..sgd(0.1)
    };
    let a = t.train(&p0, &split.train, &shard, &halved, 5).unwrap();
    let b = t.train(&p0, &split.train, &shard, &sgd(0.05), 5).unwrap();
    assert_eq!(a.params, b.params, "0.1 x 0.5 is exactly 0.05");
    let c = t.train(&p0, &split.train, &shard, &sgd(0.1), 5).unwrap();
    assert_ne!(a.params, c.params);
    for bad in [0.0, -1.0, f64::NAN] {
        let spec = TrainSpec {
            lr_scale: bad,
            ..sgd(0.1)
        };
        assert!(t.train(&p0, &split.train, &shard, &spec, 5).is_err());
    }
}
