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
        crate::train::check_indices("sample", idx.iter(), data)?;
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
#[path = "split_tests.rs"]
mod tests;
