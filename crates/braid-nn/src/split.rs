//! Split learning: a model cut at a named layer into a client part and a server part, and the
//! four computations parallel split learning needs, each on flat vectors so that only
//! activations, their gradients and parameter gradients cross the transport.
//!
//! Cut names are the layers after which the model is cut: `blocks.0`, `blocks.1`, ... (a conv
//! block, including its pooling) and `fc.0`, `fc.1`, ... (a hidden fully connected layer,
//! including its ReLU); the last layer cannot be a cut. The client part's parameters are the
//! first [`SplitArch::client_params`] values of the whole model's flat vector and the server
//! part's are the rest, so a split model and the whole model share one parameter layout.

use braid_data::Dataset;
use burn::module::{Module, ModuleVisitor, Param};
use burn::nn::loss::{CrossEntropyLoss, CrossEntropyLossConfig};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::arch::Arch;
use crate::device::DeviceKind;
use crate::flat;
use crate::net::Net;
use crate::train::{OptimizerConfig, OptimizerState};
use crate::NnError;

/// A model cut in two.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitArch {
    /// The whole model.
    pub full: Arch,
    /// The cut's name, e.g. `blocks.0`.
    pub cut: String,
    /// The layers up to and including the cut (run by clients).
    pub client: Arch,
    /// The layers after the cut (run by the server); its input is the cut's activations.
    pub server: Arch,
}

impl Arch {
    /// The names this model can be cut at, in order.
    pub fn cut_points(&self) -> Vec<String> {
        let blocks = (0..self.blocks.len()).map(|i| format!("blocks.{i}"));
        let hidden = (0..self.fc.len().saturating_sub(1)).map(|i| format!("fc.{i}"));
        blocks.chain(hidden).collect()
    }

    /// Cuts the model after the layer named `cut` (see [`Arch::cut_points`]).
    pub fn split(&self, cut: &str) -> Result<SplitArch, NnError> {
        let points = self.cut_points();
        let Some(pos) = points.iter().position(|p| p == cut) else {
            return Err(NnError::Config(format!(
                "split.cut = {cut:?} is not a layer of model {} that it can be cut after; use one of {}",
                self.name.as_str(),
                points.join(", ")
            )));
        };
        let nb = self.blocks.len();
        let (client, server) = if pos < nb {
            // After conv block `pos`: the server gets an image-shaped input.
            let client = Arch {
                blocks: self.blocks[..=pos].to_vec(),
                fc: Vec::new(),
                relu_out: false,
                ..self.clone()
            };
            let (mut h, mut w) = (self.input[1], self.input[2]);
            for _ in 0..=pos {
                h /= 2;
                w /= 2;
            }
            let ch = self.blocks[pos].last().copied().unwrap_or(self.input[0]);
            let server = Arch {
                input: vec![ch, h, w],
                blocks: self.blocks[pos + 1..].to_vec(),
                ..self.clone()
            };
            (client, server)
        } else {
            let j = pos - nb;
            let client = Arch {
                fc: self.fc[..=j].to_vec(),
                relu_out: true,
                ..self.clone()
            };
            let server = Arch {
                input: vec![self.fc[j]],
                blocks: Vec::new(),
                fc: self.fc[j + 1..].to_vec(),
                ..self.clone()
            };
            (client, server)
        };
        debug_assert_eq!(client.num_params() + server.num_params(), self.num_params());
        Ok(SplitArch {
            full: self.clone(),
            cut: cut.to_owned(),
            client,
            server,
        })
    }
}

impl SplitArch {
    /// Number of parameters of the client part (the first values of the flat vector).
    pub fn client_params(&self) -> usize {
        self.client.num_params()
    }

    /// Values per sample at the cut (the activations a client sends per sample).
    pub fn cut_features(&self) -> usize {
        self.server.input.iter().product()
    }
}

/// What the server's step returns.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerStep {
    /// The server part's parameters after the update.
    pub params: Vec<f32>,
    /// Gradient of the loss with respect to the activations, same layout as the input.
    pub grad: Vec<f32>,
    /// Mean cross-entropy over the global batch, before the update.
    pub loss: f64,
}

/// Runs the two parts of a split model on one device.
pub struct SplitTrainer {
    split: SplitArch,
    device: Device,
    client: Option<Net>,
    server: Option<Net>,
    loss: CrossEntropyLoss,
}

/// Collects each parameter's gradient in visiting order (zeros where there is none).
struct GradReader<'a> {
    grads: &'a GradientsParams,
    out: Vec<f32>,
}

impl ModuleVisitor for GradReader<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let n = param.lazy_shape().num_elements();
        match self.grads.get::<D>(param.id) {
            Some(g) => {
                let values = g.into_data().try_into_vec_as::<f32>().unwrap_or_default();
                let start = self.out.len();
                self.out.extend_from_slice(&values);
                self.out.resize(start + n, 0.0);
            }
            None => self.out.resize(self.out.len() + n, 0.0),
        }
    }
}

fn finite(v: &[f32], what: &str) -> Result<(), NnError> {
    if braid_core::params::all_finite(v) {
        Ok(())
    } else {
        Err(NnError::Shape(format!(
            "{what} contain NaN or infinite values"
        )))
    }
}

impl SplitTrainer {
    /// A trainer for `split` on `device`.
    pub fn new(split: SplitArch, device: &DeviceKind) -> Result<Self, NnError> {
        let device = device.device()?.autodiff();
        let client = flat::renumber(Net::new(&split.client, &device));
        let server = flat::renumber(Net::new(&split.server, &device));
        let loss = CrossEntropyLossConfig::new().init(&device);
        Ok(Self {
            split,
            device,
            client: Some(client),
            server: Some(server),
            loss,
        })
    }

    /// The split.
    pub fn split(&self) -> &SplitArch {
        &self.split
    }

    fn check(arch: &Arch, params: &[f32], part: &str) -> Result<(), NnError> {
        if params.len() != arch.num_params() {
            return Err(NnError::ParamCount {
                model: format!("{} ({part} part)", arch.name.as_str()),
                expected: arch.num_params(),
                got: params.len(),
            });
        }
        Ok(())
    }

    fn input(&self, data: &Dataset, idx: &[usize], device: &Device) -> Result<Tensor<2>, NnError> {
        if data.sample_shape() != self.split.full.input.as_slice() {
            return Err(NnError::Shape(format!(
                "model {} expects samples of shape {:?}, data has {:?}",
                self.split.full.name.as_str(),
                self.split.full.input,
                data.sample_shape()
            )));
        }
        if let Some(bad) = idx.iter().find(|&&i| i >= data.len()) {
            return Err(NnError::Config(format!(
                "sample index {bad} is outside the {} training samples",
                data.len()
            )));
        }
        let (mut x, mut y) = (Vec::new(), Vec::new());
        data.gather(idx, &mut x, &mut y);
        Ok(Tensor::<2>::from_data(
            TensorData::new(x, [idx.len(), data.sample_len()]),
            device,
        ))
    }

    fn client_model(&mut self, params: &[f32]) -> Net {
        Net::loaded(&mut self.client, &self.split.client, &self.device, params)
    }

    fn server_model(&mut self, params: &[f32]) -> Net {
        Net::loaded(&mut self.server, &self.split.server, &self.device, params)
    }

    /// The client part's activations for samples `idx` of `data` (`idx.len() x
    /// cut_features` values, row by row) and their labels.
    pub fn client_forward(
        &mut self, params: &[f32], data: &Dataset, idx: &[usize],
    ) -> Result<(Vec<f32>, Vec<u32>), NnError> {
        Self::check(&self.split.client, params, "client")?;
        let x = self.input(data, idx, &self.device.clone().inner())?;
        let labels: Vec<u32> = idx.iter().map(|&i| data.labels()[i]).collect();
        if idx.is_empty() {
            return Ok((Vec::new(), labels));
        }
        let model = self.client_model(params);
        let out = model.valid().forward(x);
        self.client = Some(model);
        let acts = out.into_data().try_into_vec_as::<f32>().unwrap_or_default();
        Ok((acts, labels))
    }

    /// Gradient of the client part's parameters, given the gradient `grad` of the loss with
    /// respect to its activations for samples `idx` (recomputes the forward pass).
    pub fn client_backward(
        &mut self, params: &[f32], data: &Dataset, idx: &[usize], grad: &[f32],
    ) -> Result<Vec<f32>, NnError> {
        Self::check(&self.split.client, params, "client")?;
        let f = self.split.cut_features();
        if grad.len() != idx.len() * f {
            return Err(NnError::Shape(format!(
                "cut-layer gradient has {} values, expected {} samples x {f}",
                grad.len(),
                idx.len()
            )));
        }
        finite(grad, "cut-layer gradients")?;
        if idx.is_empty() {
            return Ok(vec![0.0; params.len()]);
        }
        let x = self.input(data, idx, &self.device)?;
        let model = self.client_model(params);
        let out = model.forward(x);
        let g =
            Tensor::<2>::from_data(TensorData::new(grad.to_vec(), [idx.len(), f]), &self.device);
        // d/dw sum(out * g) = (d out / d w)^T g: the chain rule through the cut.
        let surrogate = (out * g.set_require_grad(false)).sum();
        let grads = GradientsParams::from_grads(surrogate.backward(), &model);
        let mut r = GradReader {
            grads: &grads,
            out: Vec::with_capacity(params.len()),
        };
        model.visit(&mut r);
        self.client = Some(model);
        Ok(r.out)
    }

    /// One optimizer step of the server part on a global batch of activations (`labels.len()
    /// x cut_features` values): mean cross-entropy, backward, update. Returns the updated
    /// parameters and the gradient with respect to the activations.
    pub fn server_step(
        &mut self, params: &[f32], acts: &[f32], labels: &[u32], optimizer: &OptimizerConfig,
        state: &mut OptimizerState, lr_scale: f64,
    ) -> Result<ServerStep, NnError> {
        Self::check(&self.split.server, params, "server")?;
        let f = self.split.cut_features();
        let b = labels.len();
        if b == 0 {
            return Err(NnError::Shape("empty global batch".into()));
        }
        if acts.len() != b * f {
            return Err(NnError::Shape(format!(
                "activations have {} values, expected {b} samples x {f}",
                acts.len()
            )));
        }
        finite(acts, "activations")?;
        let classes = self.split.full.fc.last().copied().unwrap_or(0);
        if let Some(bad) = labels.iter().find(|&&l| l as usize >= classes) {
            return Err(NnError::Shape(format!(
                "label {bad} is out of range for {classes} classes"
            )));
        }
        optimizer.validate()?;
        let x = Tensor::<2>::from_data(TensorData::new(acts.to_vec(), [b, f]), &self.device)
            .require_grad();
        let y = Tensor::<1, Int>::from_data(
            TensorData::new(labels.iter().map(|&l| i64::from(l)).collect(), [b]),
            &self.device,
        );
        let model = self.server_model(params);
        let logits = model.forward(x.clone());
        let ce = self.loss.forward(logits, y);
        let loss = f64::from(ce.clone().detach().into_scalar::<f32>());
        let mut grads = ce.backward();
        let gx = x
            .grad_remove(&mut grads)
            .map(|g| g.into_data().try_into_vec_as::<f32>().unwrap_or_default())
            .unwrap_or_else(|| vec![0.0; b * f]);
        let gp = GradientsParams::from_grads(grads, &model);
        let model = Self::step(optimizer, state, lr_scale, model, gp);
        let out = flat::flatten(&model);
        self.server = Some(model);
        if !loss.is_finite() || !braid_core::params::all_finite(&out) {
            return Err(NnError::Diverged);
        }
        Ok(ServerStep {
            params: out,
            grad: gx,
            loss,
        })
    }

    /// One optimizer step of the client part with the (aggregated) gradient `grad`: what every
    /// client does with the gradient of the global batch so that all client parts stay equal.
    pub fn client_update(
        &mut self, params: &[f32], grad: &[f32], optimizer: &OptimizerConfig,
        state: &mut OptimizerState, lr_scale: f64,
    ) -> Result<Vec<f32>, NnError> {
        Self::check(&self.split.client, params, "client")?;
        if grad.len() != params.len() {
            return Err(NnError::Shape(format!(
                "client-part gradient has {} values, the client part has {}",
                grad.len(),
                params.len()
            )));
        }
        finite(grad, "client-part gradients")?;
        optimizer.validate()?;
        let model = self.client_model(params);
        // The gradient of sum(w * g) with respect to w is g: the optimizer sees exactly `grad`.
        let w = flat::concat(&model);
        let g = Tensor::<1>::from_data(TensorData::new(grad.to_vec(), [grad.len()]), &self.device);
        let surrogate = (w * g.set_require_grad(false)).sum();
        let gp = GradientsParams::from_grads(surrogate.backward(), &model);
        let model = Self::step(optimizer, state, lr_scale, model, gp);
        let out = flat::flatten(&model);
        self.client = Some(model);
        if !braid_core::params::all_finite(&out) {
            return Err(NnError::Diverged);
        }
        Ok(out)
    }

    fn step(
        optimizer: &OptimizerConfig, state: &mut OptimizerState, lr_scale: f64, model: Net,
        grads: GradientsParams,
    ) -> Net {
        let mut optim = optimizer.build();
        if let Some(record) = state.take_record() {
            optim = optim.load_record(record);
        }
        let model = optim.step(optimizer.lr() * lr_scale, model, grads);
        state.put_record(optim.to_record());
        model
    }
}

#[cfg(test)]
mod tests {
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

    /// Split steps over several clients, with the client gradients summed, are one SGD step
    /// of the whole model on the concatenated batch.
    #[test]
    fn a_split_step_equals_a_whole_model_step() {
        let d = data(12);
        let a = Arch::new(ModelName::Cnn, &[1, 28, 28], 10).unwrap();
        let s = a.split("blocks.0").unwrap();
        let p = a.init_params(5);
        let opt = sgd(0.05, 0.9);
        let clients: [&[usize]; 3] = [&[0, 1, 2, 3, 4], &[5, 6], &[7, 8, 9, 10, 11]];
        let mut t = SplitTrainer::new(s.clone(), &DeviceKind::Cpu).unwrap();
        let (mut pc, mut ps) = (
            p[..s.client_params()].to_vec(),
            p[s.client_params()..].to_vec(),
        );
        let (mut sc, mut ss) = (OptimizerState::default(), OptimizerState::default());
        let mut whole = Trainer::new(a.clone(), &DeviceKind::Cpu).unwrap();
        let spec = TrainSpec {
            optimizer: opt.clone(),
            batch_size: 12,
            epochs: 1,
            max_steps: None,
            prox_mu: 0.0,
            lr_scale: 1.0,
            dp_sgd: None,
        };
        let mut pw = p.clone();
        let mut sw = OptimizerState::default();
        for _ in 0..2 {
            let (mut acts, mut labels) = (Vec::new(), Vec::new());
            for idx in clients {
                let (a, l) = t.client_forward(&pc, &d, idx).unwrap();
                acts.extend(a);
                labels.extend(l);
            }
            let step = t
                .server_step(&ps, &acts, &labels, &opt, &mut ss, 1.0)
                .unwrap();
            let f = s.cut_features();
            let mut sum = vec![0.0f32; pc.len()];
            let mut row = 0;
            for idx in clients {
                let g = &step.grad[row * f..(row + idx.len()) * f];
                row += idx.len();
                let gc = t.client_backward(&pc, &d, idx, g).unwrap();
                for (s, v) in sum.iter_mut().zip(gc) {
                    *s += v;
                }
            }
            pc = t.client_update(&pc, &sum, &opt, &mut sc, 1.0).unwrap();
            ps = step.params;
            let all: Vec<usize> = (0..12).collect();
            pw = whole
                .train_batches(&pw, &d, &[all], &spec, &mut sw)
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
}
