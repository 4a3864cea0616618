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
use burn::module::{Module, ModuleDisplay};
use burn::nn::loss::{CrossEntropyLoss, CrossEntropyLossConfig};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::arch::Arch;
use crate::device::DeviceKind;
use crate::dyn_net::{DynNet, Held};
use crate::flat;
use crate::model::{DataShape, Model, ModelKind};
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

/// What split learning needs to know of a model cut in two: sizes, the cut and compute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitShape {
    /// The whole model's name.
    pub model: String,
    /// Where it is cut: a built-in's layer (`blocks.0`) or `client` for a [`SplitModel`].
    pub cut: String,
    /// One sample's shape.
    pub input: Vec<usize>,
    /// Number of classes (the server part's outputs).
    pub classes: usize,
    /// Parameters of the client part: the first values of the whole model's flat vector.
    pub client_params: usize,
    /// Parameters of the server part: the rest.
    pub server_params: usize,
    /// Values per sample at the cut (what a client sends per sample).
    pub cut_features: usize,
    /// Forward FLOPs per sample of the client part.
    pub client_flops: u64,
    /// Forward FLOPs per sample of the server part.
    pub server_flops: u64,
}

impl SplitArch {
    /// Its [`SplitShape`].
    pub fn shape(&self) -> SplitShape {
        SplitShape {
            model: self.full.name.as_str().into(),
            cut: self.cut.clone(),
            input: self.full.input.clone(),
            classes: self.full.output_features(),
            client_params: self.client_params(),
            server_params: self.server.num_params(),
            cut_features: self.cut_features(),
            client_flops: self.client.forward_flops(),
            server_flops: self.server.forward_flops(),
        }
    }
}

/// A model made of two models of one's own, `client` then `server`, that split learning cuts
/// between them (and every other algorithm trains as one model). The server part is built for
/// samples of shape `[cut_features]`, the width of the client part's output; its parameters
/// follow the client part's in the flat vector, named `client.*` and `server.*`.
///
/// ```ignore
/// registry.add_model("my-split", SplitModel { client: Bottom, server: Top })?;
/// ```
#[derive(Debug, Clone)]
pub struct SplitModel<C, S> {
    /// The kind of the part clients run (from the input to the cut).
    pub client: C,
    /// The kind of the part the server runs (from the cut to the outputs).
    pub server: S,
}

/// The module of a [`SplitModel`]: the two parts in a row.
#[derive(Module, Debug)]
pub struct Halves<C: Module, S: Module> {
    /// The client part.
    pub client: C,
    /// The server part.
    pub server: S,
}

impl<C: Model + ModuleDisplay, S: Model + ModuleDisplay> Model for Halves<C, S> {
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.server.forward(self.client.forward(x))
    }
}

/// Values per sample of a part's output `out` for one sample.
fn one_row_width(out: &Tensor<2>) -> Result<usize, NnError> {
    match out.dims() {
        [1, w] if w > 0 => Ok(w),
        dims => Err(NnError::Shape(format!(
            "the client part's output for one sample has shape {dims:?}, expected [1, n] with n > 0"
        ))),
    }
}

/// Values per sample of `client`'s output for data of shape `data` (one forward pass of a
/// zero sample, without autodiff, on the module's device).
fn cut_width<M: Model>(client: &M, data: &DataShape) -> Result<usize, NnError> {
    let device = client
        .devices()
        .first()
        .cloned()
        .unwrap_or_else(Device::flex);
    let x = Tensor::<2>::zeros([1, data.sample_len()], &device.inner());
    one_row_width(&client.valid().forward(x))
}

impl<C: ModelKind, S: ModelKind> SplitModel<C, S> {
    /// The server part's data shape: the cut's values, the classes and the task.
    fn server_data(data: &DataShape, width: usize) -> DataShape {
        DataShape {
            sample: vec![width],
            ..data.clone()
        }
    }
}

impl<C: ModelKind, S: ModelKind> ModelKind for SplitModel<C, S>
where
    C::Module: ModuleDisplay,
    S::Module: ModuleDisplay,
{
    type Module = Halves<C::Module, S::Module>;

    fn build(&self, data: &DataShape, device: &Device) -> Result<Self::Module, NnError> {
        let client = self.client.build(data, device)?;
        let width = cut_width(&client, data)?;
        let server = self.server.build(&Self::server_data(data, width), device)?;
        Ok(Halves { client, server })
    }

    fn module_flops(&self, module: &Self::Module, data: &DataShape) -> u64 {
        let width = cut_width(&module.client, data).unwrap_or(0);
        let server = Self::server_data(data, width);
        self.client
            .module_flops(&module.client, data)
            .saturating_add(self.server.module_flops(&module.server, &server))
    }

    fn init_params(&self, data: &DataShape, seed_value: u64) -> Option<Vec<f32>> {
        // A part's own init where its kind has one, the module's seeded initializers for the
        // other; `None` (the whole module's seeded initializers) when neither has one.
        let client_module = crate::model::build_locked(&self.client, data, &Device::flex(), None);
        let server_data = Self::server_data(data, cut_width(&client_module.ok()?, data).ok()?);
        let client = self.client.init_params(data, seed_value);
        let server = self.server.init_params(&server_data, seed_value);
        if client.is_none() && server.is_none() {
            return None;
        }
        let client =
            client.or_else(|| crate::model::seeded_flat(&self.client, data, seed_value).ok())?;
        let server = server
            .or_else(|| crate::model::seeded_flat(&self.server, &server_data, seed_value).ok())?;
        Some(client.into_iter().chain(server).collect())
    }

    fn parts(&self, data: &DataShape, device: &Device) -> Option<Result<(Part, Part), NnError>> {
        let parts = || -> Result<(Part, Part), NnError> {
            let Halves { client, server } = self.build(data, device)?;
            let server_data = Self::server_data(data, cut_width(&client, data)?);
            let (fc, fs) = (
                self.client.module_flops(&client, data),
                self.server.module_flops(&server, &server_data),
            );
            Ok((Part::new(client, fc), Part::new(server, fs)))
        };
        Some(parts())
    }
}

/// One part of a model for split learning: a module of any [`Model`] type and its forward
/// FLOPs per sample (see [`ModelKind::parts`]).
pub struct Part {
    net: Box<dyn DynNet>,
    flops: u64,
}

impl Part {
    /// `module` (built on the device the trainer asked for) as a part.
    pub fn new<M: Model>(module: M, forward_flops: u64) -> Self {
        Self {
            net: Box::new(Held::new(flat::renumber(module))),
            flops: forward_flops,
        }
    }

    /// Number of parameters.
    pub fn num_params(&self) -> usize {
        self.net.num_params()
    }

    /// Forward FLOPs per sample.
    pub fn forward_flops(&self) -> u64 {
        self.flops
    }

    /// Values per sample of this part's output for data of shape `data`, its module on
    /// `device`.
    pub(crate) fn width(&self, data: &DataShape, device: &Device) -> Result<usize, NnError> {
        let x = Tensor::<2>::zeros([1, data.sample_len()], &device.clone().inner());
        one_row_width(&self.net.forward_valid(x))
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
    shape: SplitShape,
    device: Device,
    client: Box<dyn DynNet>,
    server: Box<dyn DynNet>,
    loss: CrossEntropyLoss,
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
    /// A trainer for the built-in model cut as `split`, on `device`.
    pub fn new(split: SplitArch, device: &DeviceKind) -> Result<Self, NnError> {
        let device = device.device()?.autodiff();
        let client = Part::new(
            Net::new(&split.client, &device),
            split.client.forward_flops(),
        );
        let server = Part::new(
            Net::new(&split.server, &device),
            split.server.forward_flops(),
        );
        Self::from_parts(split.shape(), client, server, device)
    }

    /// A trainer for two parts built on `device` (an autodiff device), cut as `shape` says.
    pub(crate) fn from_parts(
        shape: SplitShape, client: Part, server: Part, device: Device,
    ) -> Result<Self, NnError> {
        for (part, want, which) in [
            (&client, shape.client_params, "client"),
            (&server, shape.server_params, "server"),
        ] {
            if part.num_params() != want {
                return Err(NnError::ParamCount {
                    model: format!("{} ({which} part)", shape.model),
                    expected: want,
                    got: part.num_params(),
                });
            }
        }
        let loss = CrossEntropyLossConfig::new().init(&device);
        Ok(Self {
            shape,
            device,
            client: client.net,
            server: server.net,
            loss,
        })
    }

    /// The cut's sizes and compute.
    pub fn shape(&self) -> &SplitShape {
        &self.shape
    }

    fn check(&self, params: &[f32], client: bool) -> Result<(), NnError> {
        let (want, part) = if client {
            (self.shape.client_params, "client")
        } else {
            (self.shape.server_params, "server")
        };
        if params.len() != want {
            return Err(NnError::ParamCount {
                model: format!("{} ({part} part)", self.shape.model),
                expected: want,
                got: params.len(),
            });
        }
        Ok(())
    }

    fn input(&self, data: &Dataset, idx: &[usize], device: &Device) -> Result<Tensor<2>, NnError> {
        if data.sample_shape() != self.shape.input.as_slice() {
            return Err(NnError::Shape(format!(
                "model {} expects samples of shape {:?}, data has {:?}",
                self.shape.model,
                self.shape.input,
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

    /// The client part's activations for samples `idx` of `data` (`idx.len() x
    /// cut_features` values, row by row) and their labels.
    pub fn client_forward(
        &mut self, params: &[f32], data: &Dataset, idx: &[usize],
    ) -> Result<(Vec<f32>, Vec<u32>), NnError> {
        self.check(params, true)?;
        let x = self.input(data, idx, &self.device.clone().inner())?;
        let labels: Vec<u32> = idx.iter().map(|&i| data.labels()[i]).collect();
        if idx.is_empty() {
            return Ok((Vec::new(), labels));
        }
        self.client.load(params);
        let out = self.client.forward_valid(x);
        let acts = out.into_data().try_into_vec_as::<f32>().unwrap_or_default();
        Ok((acts, labels))
    }

    /// Gradient of the client part's parameters, given the gradient `grad` of the loss with
    /// respect to its activations for samples `idx` (recomputes the forward pass).
    pub fn client_backward(
        &mut self, params: &[f32], data: &Dataset, idx: &[usize], grad: &[f32],
    ) -> Result<Vec<f32>, NnError> {
        self.check(params, true)?;
        let f = self.shape.cut_features;
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
        self.client.load(params);
        let out = self.client.forward(x);
        let g =
            Tensor::<2>::from_data(TensorData::new(grad.to_vec(), [idx.len(), f]), &self.device);
        // d/dw sum(out * g) = (d out / d w)^T g: the chain rule through the cut.
        let surrogate = (out * g.set_require_grad(false)).sum();
        let grads = self.client.take_grads(&mut surrogate.backward());
        Ok(self.client.read_grads(&grads))
    }

    /// One optimizer step of the server part on a global batch of activations (`labels.len()
    /// x cut_features` values): mean cross-entropy, backward, update. Returns the updated
    /// parameters and the gradient with respect to the activations.
    pub fn server_step(
        &mut self, params: &[f32], acts: &[f32], labels: &[u32], optimizer: &OptimizerConfig,
        state: &mut OptimizerState, lr_scale: f64,
    ) -> Result<ServerStep, NnError> {
        self.check(params, false)?;
        let f = self.shape.cut_features;
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
        let classes = self.shape.classes;
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
        self.server.load(params);
        let logits = self.server.forward(x.clone());
        let ce = self.loss.forward(logits, y);
        let loss = f64::from(ce.clone().detach().into_scalar::<f32>());
        let mut grads = ce.backward();
        let gx = x
            .grad_remove(&mut grads)
            .map(|g| g.into_data().try_into_vec_as::<f32>().unwrap_or_default())
            .unwrap_or_else(|| vec![0.0; b * f]);
        let gp = self.server.take_grads(&mut grads);
        step(self.server.as_mut(), optimizer, state, lr_scale, gp);
        let out = self.server.params();
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
        self.check(params, true)?;
        if grad.len() != params.len() {
            return Err(NnError::Shape(format!(
                "client-part gradient has {} values, the client part has {}",
                grad.len(),
                params.len()
            )));
        }
        finite(grad, "client-part gradients")?;
        optimizer.validate()?;
        self.client.load(params);
        // The gradient of sum(w * g) with respect to w is g: the optimizer sees exactly `grad`.
        let w = self.client.concat();
        let g = Tensor::<1>::from_data(TensorData::new(grad.to_vec(), [grad.len()]), &self.device);
        let surrogate = (w * g.set_require_grad(false)).sum();
        let gp = self.client.take_grads(&mut surrogate.backward());
        step(self.client.as_mut(), optimizer, state, lr_scale, gp);
        let out = self.client.params();
        if !braid_core::params::all_finite(&out) {
            return Err(NnError::Diverged);
        }
        Ok(out)
    }
}

/// One optimizer step of `net`, its optimizer state carried in `state`.
fn step(
    net: &mut dyn DynNet, optimizer: &OptimizerConfig, state: &mut OptimizerState, lr_scale: f64,
    grads: GradientsParams,
) {
    let mut optim = optimizer.build();
    if let Some(record) = state.take_record() {
        optim = optim.load_record(record);
    }
    net.step(&mut optim, optimizer.lr() * lr_scale, grads);
    state.put_record(optim.to_record());
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
}
