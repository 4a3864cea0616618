//! Local training and evaluation of one model on one shard.
//!
//! A [`Trainer`] owns one burn module and reuses it across calls: each call loads the given
//! flat parameters, runs, and hands back flat parameters, so clients hold no model between
//! rounds and memory grows with the number of trainers (worker threads), not clients.

use braid_core::seed;
use braid_data::{Dataset, Task};
use burn::module::{ModuleVisitor, Param};
use burn::nn::loss::{CrossEntropyLoss, CrossEntropyLossConfig};
use burn::optim::{GradientsParams, SgdConfig};
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::seq::SliceRandom;

use crate::arch::Arch;
use crate::device::DeviceKind;
use crate::flat;
use crate::model::{DataShape, Model};
use crate::net::Net;
pub use crate::optim::{OptimizerConfig, OptimizerState};
use crate::NnError;

/// What one local training call does.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainSpec {
    /// The optimizer.
    pub optimizer: OptimizerConfig,
    /// Mini-batch size (the last batch of an epoch may be smaller).
    pub batch_size: usize,
    /// Passes over the shard.
    pub epochs: usize,
    /// If set, stop after this many steps (overrides `epochs`; batches keep cycling epochs).
    pub max_steps: Option<usize>,
    /// FedProx's proximal weight: adds `mu/2 * ||w - w_start||^2` to the loss (0 = off).
    pub prox_mu: f32,
    /// Multiplies the optimizer's learning rate for this call (1 = as configured); callers set
    /// it from a [`braid_core::lr_schedule::LrSchedule`].
    pub lr_scale: f64,
    /// DP-SGD inside this training call (per-sample clipping and noise), or `None`.
    pub dp_sgd: Option<DpSgd>,
}

/// Refuses a learning-rate scale that is not a positive number.
pub(crate) fn check_lr_scale(scale: f64) -> Result<(), NnError> {
    if !(scale.is_finite() && scale > 0.0) {
        return Err(NnError::Config(format!(
            "learning-rate scale {scale} must be > 0"
        )));
    }
    Ok(())
}

/// Refuses an index of `indices` outside `data`'s samples; `what` names them in the message
/// (`"batch sample"`: "batch sample index 9 is outside the 8 training samples").
pub(crate) fn check_indices<'a>(
    what: &str, mut indices: impl Iterator<Item = &'a usize>, data: &Dataset,
) -> Result<(), NnError> {
    match indices.find(|&&i| i >= data.len()) {
        Some(bad) => Err(NnError::Config(format!(
            "{what} index {bad} is outside the {} training samples",
            data.len()
        ))),
        None => Ok(()),
    }
}

impl TrainSpec {
    /// Checks the optimizer's hyper-parameters and the learning-rate scale.
    pub(crate) fn validate(&self) -> Result<(), NnError> {
        self.optimizer.validate()?;
        check_lr_scale(self.lr_scale)
    }

    /// Optimizer steps of one training call on a shard of `shard_len` samples: `max_steps`,
    /// or `epochs` passes of batches of at most `batch_size`.
    pub fn steps(&self, shard_len: usize) -> usize {
        self.max_steps.unwrap_or(
            self.epochs
                .saturating_mul(shard_len.div_ceil(self.batch_size.max(1))),
        )
    }
}

/// DP-SGD (Abadi et al. 2016) for [`Trainer::train`]: every step's batch is a Poisson sample
/// of the shard (each sample in with probability `batch_size / shard size`), each sample's
/// gradient is clipped to L2 norm `clip`, Gaussian noise of standard deviation
/// `noise_multiplier * clip` is added to their sum, and the sum is divided by the expected
/// batch size before the optimizer step. A step whose batch came out empty is still taken,
/// on noise alone, so the number of steps reveals nothing. Per-sample gradients come from
/// one backward pass per sample (burn has no vectorized per-sample gradients), so a step
/// costs about a batch of single-sample steps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DpSgd {
    /// L2 bound on each sample's gradient.
    pub clip: f64,
    /// Noise standard deviation in units of `clip`.
    pub noise_multiplier: f64,
}

/// The result of local training.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainOutcome {
    /// Parameters after training.
    pub params: Vec<f32>,
    /// Samples processed (counting repeats).
    pub samples: usize,
    /// Optimizer steps taken.
    pub steps: usize,
    /// Mean training loss over the steps (without the proximal term).
    pub mean_loss: f64,
}

impl TrainOutcome {
    /// The outcome of a finished training run, or [`NnError::Diverged`] if the loss or any
    /// parameter is not finite.
    pub(crate) fn checked(
        params: Vec<f32>, samples: usize, steps: usize, mean_loss: f64,
    ) -> Result<Self, NnError> {
        if !mean_loss.is_finite() || !braid_core::params::all_finite(&params) {
            return Err(NnError::Diverged);
        }
        Ok(Self {
            params,
            samples,
            steps,
            mean_loss,
        })
    }
}

/// The result of an evaluation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvalOutcome {
    /// Fraction of correctly classified samples (next-token prediction: of tokens).
    pub accuracy: f64,
    /// Mean cross-entropy, per sample (next-token prediction: per token, in nats; the
    /// perplexity is its exponential).
    pub loss: f64,
    /// Samples evaluated.
    pub samples: usize,
}

/// Appends every parameter's gradient in `grads` to `out`, in visiting order (zeros for a
/// parameter without one).
struct GradReader<'a> {
    grads: &'a GradientsParams,
    out: &'a mut Vec<f32>,
}

impl ModuleVisitor for GradReader<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let n = param.lazy_shape().num_elements();
        let values = self
            .grads
            .get::<D>(param.id)
            .and_then(|g| g.into_data().try_into_vec_as::<f32>().ok());
        match values {
            Some(v) if v.len() == n => self.out.extend_from_slice(&v),
            _ => self.out.resize(self.out.len() + n, 0.0),
        }
    }
}

/// Registers `src` (all parameters' gradients, in visiting order) as `grads`.
struct GradWriter<'a> {
    src: &'a [f32],
    offset: usize,
    device: &'a Device,
    grads: &'a mut GradientsParams,
}

impl ModuleVisitor for GradWriter<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let shape = param.lazy_shape();
        let n = shape.num_elements();
        let end = (self.offset + n).min(self.src.len());
        let mut values = self.src[self.offset.min(end)..end].to_vec();
        values.resize(n, 0.0);
        self.offset += n;
        let t = Tensor::<D>::from_data(TensorData::new(values, shape), self.device);
        self.grads.register(param.id, t);
    }
}

/// Local training and evaluation of one model, behind a trait object: what a
/// [`crate::model::BoundModel`] makes, whatever the module type. [`Trainer`] implements it.
pub trait ModelTrainer: Send {
    /// See [`Trainer::train`].
    fn train(
        &mut self, params: &[f32], data: &Dataset, shard: &[usize], spec: &TrainSpec,
        seed_value: u64,
    ) -> Result<TrainOutcome, NnError>;
    /// See [`Trainer::train_batches`].
    fn train_batches(
        &mut self, params: &[f32], data: &Dataset, batches: &[Vec<usize>], spec: &TrainSpec,
        state: &mut OptimizerState,
    ) -> Result<TrainOutcome, NnError>;
    /// See [`Trainer::evaluate`].
    fn evaluate(
        &mut self, params: &[f32], data: &Dataset, idx: Option<&[usize]>,
    ) -> Result<EvalOutcome, NnError>;
    /// See [`Trainer::set_stop_flag`].
    fn set_stop_flag(&mut self, flag: std::sync::Arc<std::sync::atomic::AtomicBool>);
    /// See [`Trainer::time_steps`].
    fn time_steps(
        &mut self, params: &[f32], data: &Dataset, batches: &[Vec<usize>], lr: f64,
    ) -> Result<Vec<StepTime>, NnError>;
}

/// The wall time of one training step, split into its parts, in seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepTime {
    /// Batch to tensors, forward pass and loss (read back as a number).
    pub forward: f64,
    /// Backward pass to the parameters' gradients.
    pub backward: f64,
    /// The optimizer's update.
    pub update: f64,
}

impl StepTime {
    /// The whole step.
    pub fn total(&self) -> f64 {
        self.forward + self.backward + self.update
    }
}

impl<M: Model> ModelTrainer for Trainer<M> {
    fn train(
        &mut self, params: &[f32], data: &Dataset, shard: &[usize], spec: &TrainSpec,
        seed_value: u64,
    ) -> Result<TrainOutcome, NnError> {
        Trainer::train(self, params, data, shard, spec, seed_value)
    }
    fn train_batches(
        &mut self, params: &[f32], data: &Dataset, batches: &[Vec<usize>], spec: &TrainSpec,
        state: &mut OptimizerState,
    ) -> Result<TrainOutcome, NnError> {
        Trainer::train_batches(self, params, data, batches, spec, state)
    }
    fn evaluate(
        &mut self, params: &[f32], data: &Dataset, idx: Option<&[usize]>,
    ) -> Result<EvalOutcome, NnError> {
        Trainer::evaluate(self, params, data, idx)
    }
    fn set_stop_flag(&mut self, flag: std::sync::Arc<std::sync::atomic::AtomicBool>) {
        Trainer::set_stop_flag(self, flag);
    }
    fn time_steps(
        &mut self, params: &[f32], data: &Dataset, batches: &[Vec<usize>], lr: f64,
    ) -> Result<Vec<StepTime>, NnError> {
        Trainer::time_steps(self, params, data, batches, lr)
    }
}

/// Trains and evaluates one model (a built-in [`Net`] or any [`Model`]) on one device.
pub struct Trainer<M: Model = Net> {
    name: String,
    input: Vec<usize>,
    task: Task,
    num_params: usize,
    device: Device,
    /// The module with zero parameters, numbered 0, 1, 2, ...: what a call starts from if
    /// the kept module was lost.
    template: M,
    model: Option<M>,
    loss: CrossEntropyLoss,
    eval_batch: usize,
    stop: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

impl Trainer<Net> {
    /// A trainer for the built-in architecture `arch` on `device`.
    pub fn new(arch: Arch, device: &DeviceKind) -> Result<Self, NnError> {
        let module = Net::new(&arch, &device.device()?.autodiff());
        let data = DataShape {
            sample: arch.input.clone(),
            classes: arch.output_features(),
            task: Task::Classify,
        };
        Self::from_module(arch.name.as_str(), &data, arch.num_params(), module, device)
    }
}

impl<M: Model> Trainer<M> {
    /// A trainer for `module` (built on `device`'s autodiff device) named `name`, for data of
    /// shape `data`; `num_params` is its flat length.
    pub fn from_module(
        name: &str, data: &DataShape, num_params: usize, module: M, device: &DeviceKind,
    ) -> Result<Self, NnError> {
        let device = device.device()?.autodiff();
        let template = flat::renumber(module);
        let loss = CrossEntropyLossConfig::new().init(&device);
        Ok(Self {
            name: name.into(),
            input: data.sample.clone(),
            task: data.task,
            num_params,
            device,
            model: Some(template.clone()),
            template,
            loss,
            eval_batch: 256,
            stop: None,
        })
    }

    /// Training stops after the step in progress once `flag` is set (a halted run), with
    /// [`NnError::Halted`].
    pub fn set_stop_flag(&mut self, flag: std::sync::Arc<std::sync::atomic::AtomicBool>) {
        self.stop = Some(flag);
    }

    /// Evaluates in batches of `n` samples (default 256): larger batches are no faster on a
    /// CPU and hold more activation memory.
    pub fn with_eval_batch(mut self, n: usize) -> Self {
        self.eval_batch = n.max(1);
        self
    }

    fn check(&self, params: &[f32], data: &Dataset) -> Result<(), NnError> {
        if params.len() != self.num_params {
            return Err(NnError::ParamCount {
                model: self.name.clone(),
                expected: self.num_params,
                got: params.len(),
            });
        }
        if data.task() != self.task {
            return Err(NnError::Shape(format!(
                "model {} was built for {:?}, the data is for {:?}",
                self.name,
                self.task,
                data.task()
            )));
        }
        if data.sample_shape() != self.input.as_slice() {
            return Err(NnError::Shape(format!(
                "model {} expects samples of shape {:?}, data has {:?}",
                self.name,
                self.input,
                data.sample_shape()
            )));
        }
        Ok(())
    }

    /// The checks every training call makes: parameter count, sample shape, hyper-parameters.
    fn check_call(&self, params: &[f32], data: &Dataset, spec: &TrainSpec) -> Result<(), NnError> {
        self.check(params, data)?;
        spec.validate()
    }

    fn halted(&self) -> bool {
        self.stop
            .as_ref()
            .is_some_and(|f| f.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// [`Trainer::train`] under DP-SGD (see [`DpSgd`]): `steps` steps on Poisson-sampled
    /// batches, per-sample clipped gradients, Gaussian noise from `seed_value`.
    #[allow(clippy::too_many_arguments)]
    fn train_dp_sgd(
        &mut self, params: &[f32], data: &Dataset, shard: &[usize], spec: &TrainSpec, dp: DpSgd,
        steps: usize, seed_value: u64,
    ) -> Result<TrainOutcome, NnError> {
        self.check_call(params, data, spec)?;
        if !(dp.clip.is_finite() && dp.clip > 0.0) {
            return Err(NnError::Config(format!(
                "DP-SGD clip = {} must be > 0",
                dp.clip
            )));
        }
        if !(dp.noise_multiplier.is_finite() && dp.noise_multiplier >= 0.0) {
            return Err(NnError::Config(format!(
                "DP-SGD noise multiplier = {} must be >= 0",
                dp.noise_multiplier
            )));
        }
        check_indices("shard sample", shard.iter(), data)?;
        if shard.is_empty() || steps == 0 {
            return Ok(TrainOutcome {
                params: params.to_vec(),
                samples: 0,
                steps: 0,
                mean_loss: 0.0,
            });
        }
        // Poisson sampling: the amplification the accountant assumes.
        let q = braid_core::privacy::poisson_rate(spec.batch_size, shard.len() as u64);
        let expected = q * shard.len() as f64;
        let mut sampler = seed::rng(seed_value, &[]);
        let mut noise = seed::rng(seed_value, &[seed::stream::PRIVACY]);
        let std = dp.noise_multiplier * dp.clip;
        let mut model = self.loaded(params);
        let mut optim = spec.optimizer.build();
        let lr = spec.optimizer.lr() * spec.lr_scale;
        let inner = self.device.clone().inner();
        let n = params.len();
        let (mut samples, mut loss_sum) = (0usize, 0f64);
        let mut sum = vec![0f32; n];
        let mut one = Vec::with_capacity(n);
        for _ in 0..steps {
            if self.halted() {
                self.model = Some(model);
                return Err(NnError::Halted);
            }
            sum.iter_mut().for_each(|x| *x = 0.0);
            for &i in shard {
                if !rand::Rng::random_bool(&mut sampler, q) {
                    continue;
                }
                let (x, y) = self.batch(data, &[i], &self.device);
                let ce = task_loss(&self.loss, model.forward(x), y);
                loss_sum += f64::from(ce.clone().detach().into_scalar::<f32>());
                let grads = GradientsParams::from_grads(ce.backward(), &model);
                one.clear();
                model.visit(&mut GradReader {
                    grads: &grads,
                    out: &mut one,
                });
                braid_core::privacy::clip_to_norm(&mut one, dp.clip);
                sum.iter_mut().zip(&one).for_each(|(s, g)| *s += g);
                samples += 1;
            }
            braid_core::privacy::add_gaussian_noise(&mut sum, std, &mut noise);
            let scale = (1.0 / expected) as f32;
            sum.iter_mut().for_each(|x| *x *= scale);
            if spec.prox_mu > 0.0 {
                // FedProx's term depends on no sample: its gradient is added unclipped.
                let w = flat::flatten(&model);
                for ((s, w), a) in sum.iter_mut().zip(&w).zip(params) {
                    *s += spec.prox_mu * (w - a);
                }
            }
            let mut grads = GradientsParams::new();
            model.visit(&mut GradWriter {
                src: &sum,
                offset: 0,
                device: &inner,
                grads: &mut grads,
            });
            model = optim.step(lr, model, grads);
        }
        let out = flat::flatten(&model);
        self.model = Some(model);
        let mean_loss = loss_sum / samples.max(1) as f64;
        TrainOutcome::checked(out, samples, steps, mean_loss)
    }

    fn loaded(&mut self, params: &[f32]) -> M {
        let model = self.model.take().unwrap_or_else(|| self.template.clone());
        flat::load_flat(model, params)
    }

    /// The model's input for samples `idx` and the targets of its output rows: the labels
    /// (classification), or each window's tokens after the first (next-token prediction: the
    /// input is the window without its last token, `[batch, T]`, the targets `[batch * T]`).
    fn batch(&self, data: &Dataset, idx: &[usize], device: &Device) -> (Tensor<2>, Targets) {
        let (mut x, mut y) = (Vec::new(), Vec::new());
        data.gather(idx, &mut x, &mut y);
        let len = data.sample_len();
        if data.task() == Task::Regress {
            let mut v = Vec::with_capacity(idx.len() * data.num_classes());
            data.gather_targets(idx, &mut v);
            let xs = Tensor::<2>::from_data(TensorData::new(x, [idx.len(), len]), device);
            let vs =
                Tensor::<2>::from_data(TensorData::new(v, [idx.len(), data.num_classes()]), device);
            return (xs, Targets::Values(vs));
        }
        if data.task() == Task::NextToken {
            let t = len.saturating_sub(1);
            let mut input = Vec::with_capacity(idx.len() * t);
            let mut next = Vec::with_capacity(idx.len() * t);
            for row in x.chunks(len.max(1)) {
                input.extend_from_slice(&row[..t]);
                next.extend(row[1..].iter().map(|&v| v as i64));
            }
            let xs = Tensor::<2>::from_data(TensorData::new(input, [idx.len(), t]), device);
            let ys = Tensor::<1, Int>::from_data(TensorData::new(next, [idx.len() * t]), device);
            return (xs, Targets::Classes(ys));
        }
        let xs = Tensor::<2>::from_data(TensorData::new(x, [idx.len(), len]), device);
        let ys = Tensor::<1, Int>::from_data(TensorData::new(y, [idx.len()]), device);
        (xs, Targets::Classes(ys))
    }

    /// Trains from `params` on samples `shard` of `data` with a fresh optimizer: `spec.epochs`
    /// shuffled passes (or `spec.max_steps` steps); batch order is drawn from `seed_value`.
    pub fn train(
        &mut self, params: &[f32], data: &Dataset, shard: &[usize], spec: &TrainSpec,
        seed_value: u64,
    ) -> Result<TrainOutcome, NnError> {
        if spec.batch_size == 0 {
            return Err(NnError::Config(
                "train.batch_size must be at least 1".into(),
            ));
        }
        let total_steps = spec.steps(shard.len());
        if let Some(dp) = spec.dp_sgd {
            return self.train_dp_sgd(params, data, shard, spec, dp, total_steps, seed_value);
        }
        let batches = plan_batches(shard, spec.batch_size, total_steps, seed_value);
        self.train_batches(params, data, &batches, spec, &mut OptimizerState::default())
    }

    /// Takes one optimizer step per entry of `batches` (sample indices into `data`), starting
    /// from `params` and from the optimizer state in `state`, which is updated in place (a
    /// decentralized peer keeps its momentum between calls). `spec`'s optimizer and proximal
    /// weight apply; its batch size, epochs and step limit do not.
    pub fn train_batches(
        &mut self, params: &[f32], data: &Dataset, batches: &[Vec<usize>], spec: &TrainSpec,
        state: &mut OptimizerState,
    ) -> Result<TrainOutcome, NnError> {
        if spec.dp_sgd.is_some() {
            return Err(NnError::Config(
                "DP-SGD draws its own (Poisson) batches: train through Trainer::train".into(),
            ));
        }
        self.check_call(params, data, spec)?;
        check_indices("batch sample", batches.iter().flatten(), data)?;
        let batches: Vec<&Vec<usize>> = batches.iter().filter(|b| !b.is_empty()).collect();
        if batches.is_empty() {
            return Ok(TrainOutcome {
                params: params.to_vec(),
                samples: 0,
                steps: 0,
                mean_loss: 0.0,
            });
        }
        let mut model = self.loaded(params);
        let mut optim = spec.optimizer.build();
        if let Some(record) = state.record.take() {
            optim = optim.load_record(record);
        }
        let lr = spec.optimizer.lr() * spec.lr_scale;
        let anchor = (spec.prox_mu > 0.0).then(|| {
            Tensor::<1>::from_data(
                TensorData::new(params.to_vec(), [params.len()]),
                &self.device.clone().inner(),
            )
        });
        let (mut steps, mut samples) = (0usize, 0usize);
        let mut loss_sum: Option<Tensor<1>> = None;
        for chunk in batches {
            if self.halted() {
                // A halted run: the partial result must not be used as if it were whole.
                self.model = Some(model);
                return Err(NnError::Halted);
            }
            let (x, y) = self.batch(data, chunk, &self.device);
            let logits = model.forward(x);
            let ce = task_loss(&self.loss, logits, y);
            let ce_value = ce.clone().detach();
            let loss = match &anchor {
                Some(a) => {
                    let w = flat::concat(&model);
                    let diff = w - a.clone().set_require_grad(false);
                    ce + diff.powi_scalar(2).sum().mul_scalar(spec.prox_mu / 2.0)
                }
                None => ce,
            };
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(lr, model, grads);
            loss_sum = Some(match loss_sum {
                Some(s) => s + ce_value,
                None => ce_value,
            });
            steps += 1;
            samples += chunk.len();
        }
        let mean_loss = loss_sum
            .map(|s| f64::from(s.into_scalar::<f32>()))
            .unwrap_or(0.0)
            / steps.max(1) as f64;
        let out = flat::flatten(&model);
        self.model = Some(model);
        let record = optim.to_record();
        if !record.is_empty() {
            state.record = Some(record);
        }
        TrainOutcome::checked(out, samples, steps, mean_loss)
    }

    /// Times plain SGD steps (learning rate `lr`), one per entry of `batches`, from `params`:
    /// the cost of a step as `braid bench-step` reports it, the parameters loaded once.
    pub fn time_steps(
        &mut self, params: &[f32], data: &Dataset, batches: &[Vec<usize>], lr: f64,
    ) -> Result<Vec<StepTime>, NnError> {
        self.check(params, data)?;
        check_indices("batch sample", batches.iter().flatten(), data)?;
        let mut model = self.loaded(params);
        let mut optim = SgdConfig::new().init();
        let mut times = Vec::with_capacity(batches.len());
        for chunk in batches.iter().filter(|b| !b.is_empty()) {
            let t0 = std::time::Instant::now();
            let (x, y) = self.batch(data, chunk, &self.device);
            let loss = task_loss(&self.loss, model.forward(x), y);
            // Reading one number makes the split honest on a backend that defers work.
            let _: f32 = loss.clone().detach().into_scalar();
            let t1 = std::time::Instant::now();
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            let t2 = std::time::Instant::now();
            model = optim.step(lr, model, grads);
            let t3 = std::time::Instant::now();
            times.push(StepTime {
                forward: (t1 - t0).as_secs_f64(),
                backward: (t2 - t1).as_secs_f64(),
                update: (t3 - t2).as_secs_f64(),
            });
        }
        self.model = Some(model);
        Ok(times)
    }

    /// Accuracy and mean loss of `params` on samples `idx` of `data` (all samples if `None`).
    pub fn evaluate(
        &mut self, params: &[f32], data: &Dataset, idx: Option<&[usize]>,
    ) -> Result<EvalOutcome, NnError> {
        self.check(params, data)?;
        let all: Vec<usize>;
        let idx = match idx {
            Some(i) => i,
            None => {
                all = (0..data.len()).collect();
                &all
            }
        };
        let model = self.loaded(params);
        let valid = model.valid();
        let device = self.device.clone().inner();
        let loss_fn = CrossEntropyLossConfig::new().init(&device);
        if data.task() == Task::Regress {
            let out = Self::evaluate_regression(&valid, data, idx, self.eval_batch, &device);
            self.model = Some(model);
            return out;
        }
        let (mut correct, mut loss_sum, mut targets) = (0i64, 0f64, 0usize);
        for chunk in idx.chunks(self.eval_batch) {
            let (x, y) = self.batch(data, chunk, &device);
            let Targets::Classes(y) = y else {
                break;
            };
            let logits = valid.forward(x);
            let [rows] = y.dims();
            let loss = loss_fn
                .forward(logits.clone(), y.clone())
                .into_scalar::<f32>();
            loss_sum += f64::from(loss) * rows as f64;
            let pred = logits.argmax(1).reshape([rows as i32]);
            correct += pred.equal(y).int().sum().into_scalar::<i64>();
            targets += rows;
        }
        self.model = Some(model);
        let n = targets.max(1) as f64;
        Ok(EvalOutcome {
            accuracy: correct as f64 / n,
            loss: loss_sum / n,
            samples: idx.len(),
        })
    }
}

/// What a batch's output rows are compared with.
enum Targets {
    /// Class ids, one per output row (cross-entropy).
    Classes(Tensor<1, Int>),
    /// Real values, `[batch, outputs]` (mean squared error).
    Values(Tensor<2>),
}

/// The task's loss of `out` against `targets`: cross-entropy for classes, the mean squared
/// error over every value for regression.
fn task_loss(ce: &CrossEntropyLoss, out: Tensor<2>, targets: Targets) -> Tensor<1> {
    match targets {
        Targets::Classes(y) => ce.forward(out, y),
        Targets::Values(v) => (out - v).powi_scalar(2).mean(),
    }
}

impl<M: Model> Trainer<M> {
    /// Mean squared error (over every target value) and R^2 (one minus the squared error over
    /// the squared deviation from each output's mean, summed over outputs), reported as
    /// `loss` and `accuracy`.
    fn evaluate_regression(
        valid: &M, data: &Dataset, idx: &[usize], eval_batch: usize, device: &Device,
    ) -> Result<EvalOutcome, NnError> {
        let k = data.num_classes();
        let (mut sse, mut sum, mut sum_sq) = (0f64, vec![0f64; k], vec![0f64; k]);
        for chunk in idx.chunks(eval_batch) {
            let (mut x, mut y) = (Vec::new(), Vec::new());
            data.gather(chunk, &mut x, &mut y);
            let xs = Tensor::<2>::from_data(
                TensorData::new(x, [chunk.len(), data.sample_len()]),
                device,
            );
            let pred: Vec<f32> = valid
                .forward(xs)
                .into_data()
                .try_to_vec::<f32>()
                .map_err(|e| NnError::Shape(format!("reading predictions: {e:?}")))?;
            let mut t = Vec::with_capacity(chunk.len() * k);
            data.gather_targets(chunk, &mut t);
            if pred.len() != t.len() {
                return Err(NnError::Shape(format!(
                    "the model gives {} values for {} samples of {k} targets",
                    pred.len(),
                    chunk.len()
                )));
            }
            for (j, (&p, &v)) in pred.iter().zip(&t).enumerate() {
                let (p, v) = (f64::from(p), f64::from(v));
                sse += (p - v) * (p - v);
                sum[j % k] += v;
                sum_sq[j % k] += v * v;
            }
        }
        let n = idx.len().max(1) as f64;
        let sst: f64 = sum
            .iter()
            .zip(&sum_sq)
            .map(|(s, q)| (q - s * s / n).max(0.0))
            .sum();
        Ok(EvalOutcome {
            accuracy: if sst > 0.0 { 1.0 - sse / sst } else { 0.0 },
            loss: sse / (n * k as f64),
            samples: idx.len(),
        })
    }
}

/// The batches of [`Trainer::train`] without DP-SGD: `steps` batches of at most `batch_size`
/// samples, from passes over `shard` shuffled with `seed_value` (none for an empty shard).
pub fn plan_batches(
    shard: &[usize], batch_size: usize, steps: usize, seed_value: u64,
) -> Vec<Vec<usize>> {
    let mut batches: Vec<Vec<usize>> = Vec::with_capacity(steps.min(1 << 20));
    if shard.is_empty() || batch_size == 0 {
        return batches;
    }
    let mut rng = seed::rng(seed_value, &[]);
    let mut order: Vec<usize> = shard.to_vec();
    'outer: while batches.len() < steps {
        order.shuffle(&mut rng);
        for chunk in order.chunks(batch_size) {
            if batches.len() == steps {
                break 'outer;
            }
            batches.push(chunk.to_vec());
        }
    }
    batches
}
