//! Unit tests of split learning's model halves and steps.

use super::*;
use crate::arch::ModelName;
use crate::train::{TrainSpec, Trainer};

fn data(n: usize) -> Dataset {
    let mut rng = braid_core::seed::rng(7, &[]);
    use rand::Rng as _;
    let x: Vec<f32> = (0..n * 784).map(|_| rng.random_range(0.0..1.0)).collect();
    let y: Vec<u32> = (0..n).map(|i| (i % 10) as u32).collect();
    Dataset::new(
        braid_data::dataset::Features::F32(x),
        y,
        vec![1, 28, 28],
        10,
    )
    .unwrap()
}

fn sgd(lr: f64, momentum: f64) -> OptimizerConfig {
    OptimizerConfig::Sgd {
        lr,
        momentum,
        weight_decay: 0.0,
        nesterov: false,
    }
}

#[test]
fn every_cut_splits_the_parameters_and_shapes() {
    for name in ModelName::ALL {
        let a = Arch::new(name, &[1, 28, 28], 10).unwrap();
        let points = a.cut_points();
        assert!(!points.is_empty());
        for cut in &points {
            let s = a.split(cut).unwrap();
            assert_eq!(s.client_params() + s.server.num_params(), a.num_params());
            assert_eq!(s.client.output_features(), s.cut_features(), "{cut}");
            assert_eq!(
                s.client.forward_flops() + s.server.forward_flops(),
                a.forward_flops(),
                "{name:?} {cut}"
            );
        }
    }
    let cnn = Arch::new(ModelName::Cnn, &[1, 28, 28], 10).unwrap();
    assert_eq!(cnn.cut_points(), ["blocks.0", "blocks.1", "fc.0"]);
    assert_eq!(cnn.split("blocks.0").unwrap().cut_features(), 32 * 14 * 14);
    assert_eq!(cnn.split("blocks.0").unwrap().client_params(), 320);
    for bad in ["fc.1", "blocks.2", "conv1", ""] {
        let e = cnn.split(bad).unwrap_err().to_string();
        assert!(e.contains("blocks.0, blocks.1, fc.0"), "{e}");
    }
}

#[test]
fn the_parts_compose_to_the_whole_model() {
    let d = data(6);
    let idx = [0, 1, 2, 3, 4, 5];
    for (name, cut) in [
        (ModelName::Cnn, "blocks.0"),
        (ModelName::Cnn, "fc.0"),
        (ModelName::CnnDeep, "blocks.1"),
        (ModelName::Mlp, "fc.1"),
    ] {
        let a = Arch::new(name, &[1, 28, 28], 10).unwrap();
        let s = a.split(cut).unwrap();
        let p = a.init_params(3);
        let (pc, ps) = p.split_at(s.client_params());
        let mut t = SplitTrainer::new(s.clone(), &DeviceKind::Cpu).unwrap();
        let (acts, labels) = t.client_forward(pc, &d, &idx).unwrap();
        assert_eq!(acts.len(), 6 * s.cut_features());
        assert_eq!(labels, [0, 1, 2, 3, 4, 5]);
        // The server's loss before its update equals the whole model's loss.
        let step = t
            .server_step(
                ps,
                &acts,
                &labels,
                &sgd(0.1, 0.0),
                &mut OptimizerState::default(),
                1.0,
            )
            .unwrap();
        let mut whole = Trainer::new(a.clone(), &DeviceKind::Cpu).unwrap();
        let e = whole.evaluate(&p, &d, Some(&idx)).unwrap();
        assert!(
            (step.loss - e.loss).abs() < 1e-5,
            "{name:?} {cut}: {} vs {}",
            step.loss,
            e.loss
        );
    }
}

/// Two steps of split learning over several clients, with the client gradients summed,
/// give the parameters of two SGD steps of the whole model on the concatenated batch.
fn split_steps_equal_whole_model_steps(
    t: &mut SplitTrainer, whole: &mut dyn crate::train::ModelTrainer, p: &[f32], d: &Dataset,
) {
    let opt = sgd(0.05, 0.9);
    let clients: [&[usize]; 3] = [&[0, 1, 2, 3, 4], &[5, 6], &[7, 8, 9, 10, 11]];
    let n = t.shape().client_params;
    let (mut pc, mut ps) = (p[..n].to_vec(), p[n..].to_vec());
    let (mut sc, mut ss) = (OptimizerState::default(), OptimizerState::default());
    let spec = TrainSpec {
        optimizer: opt.clone(),
        batch_size: 12,
        epochs: 1,
        max_steps: None,
        prox_mu: 0.0,
        lr_scale: 1.0,
        dp_sgd: None,
    };
    let mut pw = p.to_vec();
    let mut sw = OptimizerState::default();
    for _ in 0..2 {
        let (mut acts, mut labels) = (Vec::new(), Vec::new());
        for idx in clients {
            let (a, l) = t.client_forward(&pc, d, idx).unwrap();
            acts.extend(a);
            labels.extend(l);
        }
        let step = t
            .server_step(&ps, &acts, &labels, &opt, &mut ss, 1.0)
            .unwrap();
        let f = t.shape().cut_features;
        let mut sum = vec![0.0f32; pc.len()];
        let mut row = 0;
        for idx in clients {
            let g = &step.grad[row * f..(row + idx.len()) * f];
            row += idx.len();
            let gc = t.client_backward(&pc, d, idx, g).unwrap();
            for (s, v) in sum.iter_mut().zip(gc) {
                *s += v;
            }
        }
        pc = t.client_update(&pc, &sum, &opt, &mut sc, 1.0).unwrap();
        ps = step.params;
        let all: Vec<usize> = (0..12).collect();
        pw = whole
            .train_batches(&pw, d, &[all], &spec, &mut sw)
            .unwrap()
            .params;
    }
    let joined: Vec<f32> = pc.iter().chain(&ps).copied().collect();
    let diff = joined
        .iter()
        .zip(&pw)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(diff < 1e-5, "split and whole model differ by {diff}");
    assert_ne!(pw, p, "training moved the model");
}

#[test]
fn a_split_step_equals_a_whole_model_step() {
    let d = data(12);
    let a = Arch::new(ModelName::Cnn, &[1, 28, 28], 10).unwrap();
    let s = a.split("blocks.0").unwrap();
    let p = a.init_params(5);
    let mut t = SplitTrainer::new(s, &DeviceKind::Cpu).unwrap();
    let mut whole = Trainer::new(a, &DeviceKind::Cpu).unwrap();
    split_steps_equal_whole_model_steps(&mut t, &mut whole, &p, &d);
}

/// A part of one's own: a linear layer and GELU (the server part's input width is what
/// the client part gives).
#[derive(Module, Debug)]
struct Dense {
    layer: burn::nn::Linear,
    #[module(skip)]
    gelu: bool,
}

impl Model for Dense {
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let y = self.layer.forward(x);
        if self.gelu {
            burn::tensor::activation::gelu(y)
        } else {
            y
        }
    }
}

/// [`Dense`] with `width` outputs (the classes when `None`).
struct DenseKind(Option<usize>);

impl ModelKind for DenseKind {
    type Module = Dense;
    fn build(&self, data: &DataShape, device: &Device) -> Result<Dense, NnError> {
        let out = self.0.unwrap_or(data.classes);
        Ok(Dense {
            layer: burn::nn::LinearConfig::new(data.sample_len(), out).init(device),
            gelu: self.0.is_some(),
        })
    }
}

#[test]
fn a_model_of_ones_own_in_two_parts_splits_between_them() {
    use crate::model::{AnyModelKind, Kind};
    use std::sync::Arc;
    let d = data(12);
    let shape = DataShape::of(&d);
    let kind = SplitModel {
        client: DenseKind(Some(24)),
        server: DenseKind(None),
    };
    let m = Arc::new(Kind(kind)).bind("two-part", &shape).unwrap();
    let names: Vec<&str> = m.param_shapes().iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "client.layer.weight",
            "client.layer.bias",
            "server.layer.weight",
            "server.layer.bias"
        ]
    );
    let cut = m.split(None).unwrap();
    assert_eq!(
        (cut.client_params, cut.server_params, cut.cut_features),
        (784 * 24 + 24, 24 * 10 + 10, 24)
    );
    assert_eq!(cut.client_flops + cut.server_flops, m.forward_flops());
    let e = m.split(Some("blocks.0")).unwrap_err().to_string();
    assert!(e.contains("cut between the two parts"), "{e}");
    let p = m.init_params(3).unwrap();
    let mut t = m.split_trainer(&cut, &DeviceKind::Cpu).unwrap();
    let mut whole = m.trainer(&DeviceKind::Cpu).unwrap();
    split_steps_equal_whole_model_steps(&mut t, whole.as_mut(), &p, &d);
    // A model of one's own in one piece is not split, and says how it could be.
    let one = Arc::new(Kind(DenseKind(None))).bind("one", &shape).unwrap();
    let e = one.split(None).unwrap_err().to_string();
    assert!(e.contains("register it as a SplitModel"), "{e}");
}

#[test]
fn bad_shapes_and_labels_are_errors() {
    let a = Arch::new(ModelName::Cnn, &[1, 28, 28], 10).unwrap();
    let s = a.split("fc.0").unwrap();
    let p = a.init_params(1);
    let ps = &p[s.client_params()..];
    let mut t = SplitTrainer::new(s.clone(), &DeviceKind::Cpu).unwrap();
    let mut st = OptimizerState::default();
    let opt = sgd(0.1, 0.0);
    let e = t
        .server_step(ps, &[0.0; 127], &[1], &opt, &mut st, 1.0)
        .unwrap_err();
    assert!(e.to_string().contains("expected 1 samples x 128"), "{e}");
    let e = t
        .server_step(ps, &[0.0; 128], &[10], &opt, &mut st, 1.0)
        .unwrap_err();
    assert!(e.to_string().contains("label 10"), "{e}");
    let e = t
        .server_step(ps, &[f32::NAN; 128], &[1], &opt, &mut st, 1.0)
        .unwrap_err();
    assert!(e.to_string().contains("NaN"), "{e}");
    let e = t
        .server_step(&p, &[0.0; 128], &[1], &opt, &mut st, 1.0)
        .unwrap_err();
    assert!(e.to_string().contains("server part"), "{e}");
    let d = data(2);
    let pc = &p[..s.client_params()];
    let e = t.client_backward(pc, &d, &[0, 1], &[0.0; 5]).unwrap_err();
    assert!(e.to_string().contains("cut-layer gradient"), "{e}");
    let e = t.client_forward(pc, &d, &[2]).unwrap_err();
    assert!(e.to_string().contains("outside"), "{e}");
}
