//! Any burn module as a braid model.
//!
//! A user writes a burn `Module` and implements [`Model`] (its forward pass from a batch of
//! flattened samples to outputs) and [`ModelKind`] (how to build it for a dataset). braid then
//! trains it like a built-in: the built-in networks are one [`ModelKind`] among others
//! ([`crate::arch::ModelName`]).
//!
//! Parameters move between nodes as one flat `Vec<f32>`: every float parameter of the module,
//! in burn's visiting order (the order of the struct's fields, depth first, as
//! [`burn::module::ModuleVisitor`] walks them), each tensor row-major. [`ParamShape`] lists the
//! order with each parameter's path name (`fc.0.weight`), which safetensors files use too.
//!
//! Init is seeded: a kind may give its own ([`ModelKind::init_params`]); otherwise braid runs
//! the module's own burn initializers on the CPU with burn's random generator seeded from the
//! run's seed. burn's CPU generator is process-wide, so braid builds modules one at a time and
//! the same seed gives the same initial model whatever the thread count. A model that draws
//! from burn's generator while training (dropout) is not reproducible that way yet: braid's own
//! training draws nothing from it.

use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use braid_core::seed;
pub use braid_data::Task;
use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Device, Tensor};

use crate::arch::{Arch, ModelName, ParamShape};
use crate::device::DeviceKind;
use crate::dyn_net::{DynNet, Held};
use crate::net::Net;
use crate::split::{Part, SplitShape, SplitTrainer};
use crate::train::{ModelTrainer, Trainer};
use crate::NnError;

/// A network braid can train: a burn module with a forward pass.
///
/// `x` is a batch of samples, each flattened to one row (`[batch, sample_len]`, the sample's
/// shape is [`DataShape::sample`]: reshape it inside `forward`); the output is one row per
/// sample, for classification the logits `[batch, classes]` (braid applies the softmax and the
/// cross-entropy, and counts the arg-max for accuracy).
pub trait Model: Module + 'static {
    /// Outputs for a batch.
    fn forward(&self, x: Tensor<2>) -> Tensor<2>;
}

impl Model for Net {
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        Net::forward(self, x)
    }
}

/// What a model is built for: the shape of one sample, the number of classes and the task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataShape {
    /// One sample's shape, e.g. `[channels, height, width]` or `[features]` (next-token
    /// prediction: `[T + 1]`, the model reading `T` tokens).
    pub sample: Vec<usize>,
    /// Number of classes (the width of the output; next-token prediction: the vocabulary).
    pub classes: usize,
    /// Classification, or next-token prediction ([`Task`]).
    pub task: Task,
}

impl DataShape {
    /// The shape of a data set's samples, classes and task.
    pub fn of(data: &braid_data::Dataset) -> Self {
        Self {
            sample: data.sample_shape().to_vec(),
            classes: data.num_classes(),
            task: data.task(),
        }
    }
}

impl DataShape {
    /// Values per sample (the width of a row of `x`).
    pub fn sample_len(&self) -> usize {
        self.sample.iter().product()
    }
}

/// A kind of model: builds the module for a dataset. Register one under a name to use it in
/// configs (`[model] name = "..."`).
pub trait ModelKind: Send + Sync + 'static {
    /// The burn module.
    type Module: Model;

    /// Builds the module for `data` on `device`, or says why it does not fit the data (one
    /// line, e.g. "needs images of at least 8x8, the data has samples of shape [20]").
    fn build(&self, data: &DataShape, device: &Device) -> Result<Self::Module, NnError>;

    /// Floating-point operations of one forward pass of one sample, for the compute
    /// accounting in reports and run logs. Default: `2 * num_params`, the count of a network
    /// whose every parameter is used once per sample in a multiply-add (exact for fully
    /// connected layers; an undercount for convolutions and weight sharing: override it).
    fn forward_flops(&self, _data: &DataShape, num_params: usize) -> u64 {
        2 * num_params as u64
    }

    /// The kind's own seeded init, or `None` (the default) for the module's burn initializers
    /// under a seeded generator. The vector has the flat parameter order.
    fn init_params(&self, _data: &DataShape, _seed: u64) -> Option<Vec<f32>> {
        None
    }

    /// Floating-point operations of one forward pass of one sample through `module` (built
    /// for `data`). Default: [`ModelKind::forward_flops`] with the module's parameter count.
    fn module_flops(&self, module: &Self::Module, data: &DataShape) -> u64 {
        self.forward_flops(data, module.num_params())
    }

    /// The model's two parts for split learning, built for `data` on `device`: the client
    /// part (from the input to the cut; its parameters are the first values of the flat
    /// vector) and the server part (the rest, reading the client part's output rows). `None`
    /// (the default): the model is not split. [`crate::split::SplitModel`] gives both for a
    /// model made of two.
    fn parts(&self, _data: &DataShape, _device: &Device) -> Option<Result<(Part, Part), NnError>> {
        None
    }
}

impl ModelName {
    /// The architecture for `data`, or why it does not fit: the built-ins classify, or regress
    /// (their last layer giving the targets).
    fn arch_for(self, name: &str, data: &DataShape) -> Result<Arch, NnError> {
        if data.task == Task::NextToken {
            return Err(NnError::Shape(format!(
                "model {name} classifies; the data is for {:?} (a language model such as \"transformer\" fits it)",
                data.task
            )));
        }
        if data.task == Task::Classify && data.classes < 2 {
            return Err(NnError::Shape(format!(
                "model {name} needs at least 2 classes, the data has {}",
                data.classes
            )));
        }
        Arch::new(self, &data.sample, data.classes)
    }
}

impl ModelKind for ModelName {
    type Module = Net;

    fn build(&self, data: &DataShape, device: &Device) -> Result<Net, NnError> {
        Ok(Net::new(&self.arch_for(self.as_str(), data)?, device))
    }

    fn forward_flops(&self, data: &DataShape, _num_params: usize) -> u64 {
        Arch::new(*self, &data.sample, data.classes).map_or(0, |a| a.forward_flops())
    }

    fn init_params(&self, data: &DataShape, seed_value: u64) -> Option<Vec<f32>> {
        Arch::new(*self, &data.sample, data.classes)
            .ok()
            .map(|a| a.init_params(seed_value))
    }
}

/// A [`ModelKind`] behind a trait object, as registries hold them.
pub trait AnyModelKind: Send + Sync {
    /// Binds the kind to a dataset's shape under the name it is registered as.
    fn bind(self: Arc<Self>, name: &str, data: &DataShape) -> Result<BoundModel, NnError>;
}

/// A [`ModelKind`] wrapped for a registry: `Arc::new(Kind(MyModel))`.
pub struct Kind<K>(pub K);

impl<K: ModelKind> AnyModelKind for Kind<K> {
    fn bind(self: Arc<Self>, name: &str, data: &DataShape) -> Result<BoundModel, NnError> {
        let module = self.built(data, &Device::flex(), None)?;
        let params = layout(&module);
        let num_params = params.iter().map(ParamShape::num_elements).sum();
        Ok(BoundModel {
            name: name.into(),
            data: data.clone(),
            forward_flops: self.0.module_flops(&module, data),
            params: params.into(),
            num_params,
            arch: None,
            maker: self,
        })
    }
}

impl AnyModelKind for ModelName {
    fn bind(self: Arc<Self>, name: &str, data: &DataShape) -> Result<BoundModel, NnError> {
        let arch = self.arch_for(name, data)?;
        let builtin = BoundModel::builtin(&arch);
        Ok(BoundModel {
            name: name.into(),
            data: DataShape {
                task: data.task,
                ..builtin.data.clone()
            },
            ..builtin
        })
    }
}

/// Makes trainers and initial parameters for a bound model (implemented for [`Kind`]).
trait Maker: Send + Sync {
    fn init(&self, data: &DataShape, seed: u64) -> Result<Vec<f32>, NnError>;
    fn trainer(
        &self, name: &str, data: &DataShape, num_params: usize, device: &DeviceKind,
    ) -> Result<Box<dyn ModelTrainer>, NnError>;
    fn save(
        &self, name: &str, data: &DataShape, params: &[f32], path: &Path,
    ) -> Result<(), NnError>;
    fn load(&self, name: &str, data: &DataShape, path: &Path) -> Result<Vec<f32>, NnError>;
    fn member(&self, data: &DataShape, device: &Device) -> Result<Box<dyn DynNet>, NnError>;
    fn parts(&self, data: &DataShape, device: &Device) -> Option<Result<(Part, Part), NnError>>;
}

/// burn's CPU random generator is process-wide, and building a module draws from it (its
/// initializers): braid builds one module at a time, so nothing draws between a seeded init's
/// seeding and its last draw.
static BUILD: Mutex<()> = Mutex::new(());

/// Holds [`BUILD`]: whoever draws from burn's generator (a module's random initializers,
/// `Tensor::random`) outside a seeded build holds it, so that no seeded init sees its draws.
pub(crate) fn lock_rng() -> std::sync::MutexGuard<'static, ()> {
    BUILD.lock().unwrap_or_else(|e| e.into_inner())
}

impl<K: ModelKind> Kind<K> {
    /// The module for `data` on `device`, its parameters initialised (by its own
    /// initializers) while holding [`BUILD`]; `seed`, if given, seeds burn's generator first.
    fn built(
        &self, data: &DataShape, device: &Device, seed_value: Option<u64>,
    ) -> Result<K::Module, NnError> {
        build_locked(&self.0, data, device, seed_value)
    }
}

/// `kind`'s module for `data` on `device`, its parameters initialised (by its own
/// initializers) while holding [`BUILD`]; `seed`, if given, seeds burn's generator first.
pub(crate) fn build_locked<K: ModelKind>(
    kind: &K, data: &DataShape, device: &Device, seed_value: Option<u64>,
) -> Result<K::Module, NnError> {
    let _one_at_a_time = lock_rng();
    if let Some(s) = seed_value {
        device.seed(s);
    }
    let module = kind.build(data, device)?;
    // Reading the parameters runs their lazy initializers, inside the lock.
    Ok(crate::flat::renumber(module))
}

/// `kind`'s module for `data` initialised by its own initializers under the run's seed, flat.
pub(crate) fn seeded_flat<K: ModelKind>(
    kind: &K, data: &DataShape, seed_value: u64,
) -> Result<Vec<f32>, NnError> {
    let seed_value = seed::derive(seed_value, &[seed::stream::INIT]);
    let module = build_locked(kind, data, &Device::flex(), Some(seed_value))?;
    Ok(crate::flat::flatten(&module))
}

impl<K: ModelKind> Maker for Kind<K> {
    fn init(&self, data: &DataShape, seed_value: u64) -> Result<Vec<f32>, NnError> {
        if let Some(own) = self.0.init_params(data, seed_value) {
            return Ok(own);
        }
        seeded_flat(&self.0, data, seed_value)
    }

    fn trainer(
        &self, name: &str, data: &DataShape, num_params: usize, device: &DeviceKind,
    ) -> Result<Box<dyn ModelTrainer>, NnError> {
        let module = self.built(data, &device.device()?.autodiff(), None)?;
        Ok(Box::new(Trainer::from_module(
            name, data, num_params, module, device,
        )?))
    }

    fn save(
        &self, name: &str, data: &DataShape, params: &[f32], path: &Path,
    ) -> Result<(), NnError> {
        let module = self.built(data, &Device::flex(), None)?;
        crate::store::save_module(module, name, params, path)
    }

    fn load(&self, name: &str, data: &DataShape, path: &Path) -> Result<Vec<f32>, NnError> {
        let module = self.built(data, &Device::flex(), None)?;
        crate::store::load_module(module, name, path)
    }

    fn member(&self, data: &DataShape, device: &Device) -> Result<Box<dyn DynNet>, NnError> {
        Ok(Box::new(Held::new(self.built(data, device, None)?)))
    }

    fn parts(&self, data: &DataShape, device: &Device) -> Option<Result<(Part, Part), NnError>> {
        // Building reads parameters, which draws from burn's generator: one at a time.
        let _one_at_a_time = lock_rng();
        self.0.parts(data, device)
    }
}

/// A model bound to a dataset: its name, parameter layout, compute per sample, and a way to
/// make trainers and seeded initial parameters. Cheap to clone.
#[derive(Clone)]
pub struct BoundModel {
    name: String,
    data: DataShape,
    params: Arc<[ParamShape]>,
    num_params: usize,
    forward_flops: u64,
    arch: Option<Arch>,
    maker: Arc<dyn Maker>,
}

impl fmt::Debug for BoundModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BoundModel")
            .field("name", &self.name)
            .field("data", &self.data)
            .field("num_params", &self.num_params)
            .finish_non_exhaustive()
    }
}

impl BoundModel {
    /// A built-in architecture.
    pub fn builtin(arch: &Arch) -> Self {
        Self {
            name: arch.name.as_str().into(),
            data: DataShape {
                sample: arch.input.clone(),
                classes: arch.output_features(),
                task: Task::Classify,
            },
            params: arch.param_shapes().into(),
            num_params: arch.num_params(),
            forward_flops: arch.forward_flops(),
            arch: Some(arch.clone()),
            maker: Arc::new(Kind(arch.name)),
        }
    }

    /// The name it was registered under.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The data shape it was built for.
    pub fn data(&self) -> &DataShape {
        &self.data
    }

    /// Every parameter tensor, in the flat order.
    pub fn param_shapes(&self) -> &[ParamShape] {
        &self.params
    }

    /// Total number of parameters (the length of the flat vector).
    pub fn num_params(&self) -> usize {
        self.num_params
    }

    /// Floating-point operations of one forward pass of one sample.
    pub fn forward_flops(&self) -> u64 {
        self.forward_flops
    }

    /// Floating-point operations of training on one sample: three forward passes (the
    /// backward pass costs about two), the convention of [`Arch::train_flops`].
    pub fn train_flops(&self) -> u64 {
        3 * self.forward_flops
    }

    /// The built-in architecture, for what only the built-ins support yet (a split at a
    /// named layer, mutual learning between models); `None` for a user's model.
    pub fn arch(&self) -> Option<&Arch> {
        self.arch.as_ref()
    }

    /// Seeded initial parameters (the same for the same seed, on any machine and thread count).
    pub fn init_params(&self, seed_value: u64) -> Result<Vec<f32>, NnError> {
        let params = self.maker.init(&self.data, seed_value)?;
        if params.len() != self.num_params {
            return Err(NnError::ParamCount {
                model: self.name.clone(),
                expected: self.num_params,
                got: params.len(),
            });
        }
        Ok(params)
    }

    /// Writes `params` to a safetensors file at `path` (atomically; tensors named by module
    /// path, linear weights in PyTorch's `[out, in]` layout), see [`crate::store`].
    pub fn save(&self, params: &[f32], path: &Path) -> Result<(), NnError> {
        self.maker.save(&self.name, &self.data, params, path)
    }

    /// Reads parameters from a safetensors file written by [`BoundModel::save`] (or by
    /// PyTorch for the same module); a file for another model is an error.
    pub fn load(&self, path: &Path) -> Result<Vec<f32>, NnError> {
        self.maker.load(&self.name, &self.data, path)
    }

    /// A module of this model on `device` (an autodiff device) for mutual learning.
    pub(crate) fn member(&self, device: &Device) -> Result<Box<dyn DynNet>, NnError> {
        self.maker.member(&self.data, device)
    }

    /// The model cut in two for split learning: a built-in after its layer `cut` (default:
    /// the first it can be cut after), a model of one's own between the two parts its kind
    /// gives ([`ModelKind::parts`], e.g. a [`crate::split::SplitModel`]).
    pub fn split(&self, cut: Option<&str>) -> Result<SplitShape, NnError> {
        if let Some(arch) = &self.arch {
            let cut = match cut {
                Some(c) => c.to_string(),
                None => arch.cut_points().into_iter().next().ok_or_else(|| {
                    NnError::Config(format!("model {} has no layer to cut after", self.name))
                })?,
            };
            let mut shape = arch.split(&cut)?.shape();
            shape.model.clone_from(&self.name);
            return Ok(shape);
        }
        if let Some(c) = cut {
            return Err(NnError::Config(format!(
                "split.cut = {c:?} names a layer of a built-in model; model {} is cut between the two parts its kind gives",
                self.name
            )));
        }
        let device = Device::flex();
        let (client, server) = self.parts(&device)?;
        let shape = SplitShape {
            model: self.name.clone(),
            cut: "client".into(),
            input: self.data.sample.clone(),
            classes: self.data.classes,
            client_params: client.num_params(),
            server_params: server.num_params(),
            cut_features: client.width(&self.data, &device)?,
            client_flops: client.forward_flops(),
            server_flops: server.forward_flops(),
        };
        if shape.client_params + shape.server_params != self.num_params {
            return Err(NnError::Config(format!(
                "model {}'s parts have {} + {} parameters, the whole model {}",
                self.name, shape.client_params, shape.server_params, self.num_params
            )));
        }
        Ok(shape)
    }

    fn parts(&self, device: &Device) -> Result<(Part, Part), NnError> {
        self.maker.parts(&self.data, device).unwrap_or_else(|| {
            Err(NnError::Config(format!(
                "model {} cannot be split: register it as a SplitModel {{ client, server }} of two models, or give its kind's ModelKind::parts",
                self.name
            )))
        })
    }

    /// A trainer for this model's two parts cut as `shape` ([`BoundModel::split`]) on
    /// `device`.
    pub fn split_trainer(
        &self, shape: &SplitShape, device: &DeviceKind,
    ) -> Result<SplitTrainer, NnError> {
        if let Some(arch) = &self.arch {
            return SplitTrainer::new(arch.split(&shape.cut)?, device);
        }
        let device = device.device()?.autodiff();
        let (client, server) = self.parts(&device)?;
        SplitTrainer::from_parts(shape.clone(), client, server, device)
    }

    /// A trainer for this model on `device`.
    pub fn trainer(&self, device: &DeviceKind) -> Result<Box<dyn ModelTrainer>, NnError> {
        self.maker
            .trainer(&self.name, &self.data, self.num_params, device)
    }
}

/// Every float parameter's path name and shape, in the flat order.
pub fn layout<M: Module>(module: &M) -> Vec<ParamShape> {
    let mut l = Layout {
        path: Vec::new(),
        out: Vec::new(),
    };
    module.visit(&mut l);
    l.out
}

struct Layout {
    path: Vec<String>,
    out: Vec<ParamShape>,
}

impl ModuleVisitor for Layout {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let dims = param.lazy_shape().dims::<D>().to_vec();
        let fan_in = match dims.as_slice() {
            [] => 1,
            // a bias or norm scale; burn's linear weight is [in, out]
            [n] | [n, _] => *n,
            // a convolution's [out, in, kernel...]
            [_, rest @ ..] => rest.iter().product(),
        };
        self.out.push(ParamShape {
            name: self.path.join("."),
            dims,
            fan_in,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::{OptimizerConfig, TrainSpec};
    use braid_data::dataset::Features;
    use braid_data::Dataset;
    use burn::nn::{Linear, LinearConfig};
    use burn::tensor::activation::relu;

    /// A model defined outside braid's built-ins: two linear layers.
    #[derive(Module, Debug)]
    struct Tiny {
        hidden: Linear,
        out: Linear,
    }

    impl Model for Tiny {
        fn forward(&self, x: Tensor<2>) -> Tensor<2> {
            self.out.forward(relu(self.hidden.forward(x)))
        }
    }

    struct TinyKind;

    impl ModelKind for TinyKind {
        type Module = Tiny;
        fn build(&self, data: &DataShape, device: &Device) -> Result<Tiny, NnError> {
            Ok(Tiny {
                hidden: LinearConfig::new(data.sample_len(), 16).init(device),
                out: LinearConfig::new(16, data.classes).init(device),
            })
        }
    }

    /// Two classes told apart by the sign of the first feature.
    fn data(n: usize) -> Dataset {
        let mut x = Vec::new();
        let mut y = Vec::new();
        for i in 0..n {
            let class = (i % 2) as u32;
            let sign = if class == 0 { -1.0 } else { 1.0 };
            x.extend([
                sign * (0.5 + (i % 7) as f32 / 10.0),
                (i % 5) as f32 / 5.0,
                0.3,
            ]);
            y.push(class);
        }
        Dataset::new(Features::F32(x), y, vec![3], 2).expect("data")
    }

    fn shape() -> DataShape {
        DataShape {
            sample: vec![3],
            classes: 2,
            task: braid_data::Task::Classify,
        }
    }

    #[test]
    fn builtin_layouts_read_from_the_module_match_the_documented_order() {
        for name in ModelName::ALL {
            let arch = Arch::new(name, &[1, 28, 28], 10).expect("arch");
            let from_module: Vec<(String, Vec<usize>)> = layout(&Net::new(&arch, &Device::flex()))
                .into_iter()
                .map(|p| (p.name, p.dims))
                .collect();
            let documented: Vec<(String, Vec<usize>)> = arch
                .param_shapes()
                .into_iter()
                .map(|p| (p.name, p.dims))
                .collect();
            assert_eq!(from_module, documented, "{}", name.as_str());
        }
    }

    #[test]
    fn a_users_module_binds_inits_by_seed_and_trains() {
        let bound = Arc::new(Kind(TinyKind))
            .bind("tiny", &shape())
            .expect("bind");
        let names: Vec<&str> = bound
            .param_shapes()
            .iter()
            .map(|p| p.name.as_str())
            .collect();
        assert_eq!(
            names,
            ["hidden.weight", "hidden.bias", "out.weight", "out.bias"]
        );
        assert_eq!(bound.num_params(), 3 * 16 + 16 + 16 * 2 + 2);
        assert_eq!(bound.forward_flops(), 2 * bound.num_params() as u64);
        assert!(bound.arch().is_none());
        let init = bound.init_params(7).expect("init");
        assert_eq!(init.len(), bound.num_params());
        assert_eq!(init, bound.init_params(7).expect("init"), "same seed");
        assert_ne!(init, bound.init_params(8).expect("init"), "another seed");
        // The same seed from several threads at once: the same model.
        let inits: Vec<Vec<f32>> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|_| s.spawn(|| bound.init_params(7).expect("init")))
                .collect();
            hs.into_iter().map(|h| h.join().expect("thread")).collect()
        });
        assert!(inits.iter().all(|p| *p == init));

        let data = data(200);
        let mut trainer = bound.trainer(&DeviceKind::Cpu).expect("trainer");
        let before = trainer.evaluate(&init, &data, None).expect("eval");
        let spec = TrainSpec {
            optimizer: OptimizerConfig::Sgd {
                lr: 0.1,
                momentum: 0.0,
                weight_decay: 0.0,
                nesterov: false,
            },
            batch_size: 16,
            epochs: 5,
            max_steps: None,
            prox_mu: 0.0,
            lr_scale: 1.0,
            dp_sgd: None,
        };
        let shard: Vec<usize> = (0..200).collect();
        let out = trainer
            .train(&init, &data, &shard, &spec, 1)
            .expect("train");
        let again = trainer
            .train(&init, &data, &shard, &spec, 1)
            .expect("train");
        assert_eq!(out.params, again.params, "training is deterministic");
        let after = trainer.evaluate(&out.params, &data, None).expect("eval");
        assert!(
            after.loss < before.loss,
            "{} -> {}",
            before.loss,
            after.loss
        );
        assert!(after.accuracy > 0.95, "accuracy {}", after.accuracy);
        let wrong = trainer.evaluate(&init[1..], &data, None).unwrap_err();
        assert!(wrong.to_string().contains("tiny"), "{wrong}");
    }

    #[test]
    fn a_builtin_bound_by_name_is_the_built_in() {
        let data = DataShape {
            sample: vec![1, 28, 28],
            classes: 10,
            task: braid_data::Task::Classify,
        };
        let bound = Arc::new(ModelName::CnnSmall)
            .bind("cnn-small", &data)
            .expect("bind");
        let arch = Arch::new(ModelName::CnnSmall, &[1, 28, 28], 10).expect("arch");
        assert_eq!(bound.arch(), Some(&arch));
        assert_eq!(bound.num_params(), arch.num_params());
        assert_eq!(bound.forward_flops(), arch.forward_flops());
        assert_eq!(bound.init_params(3).expect("init"), arch.init_params(3));
        let cnn_on_vectors = Arc::new(ModelName::Cnn).bind("cnn", &shape()).unwrap_err();
        assert!(
            cnn_on_vectors.to_string().contains("mlp"),
            "{cnn_on_vectors}"
        );
    }
}
