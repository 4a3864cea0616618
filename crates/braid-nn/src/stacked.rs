//! Many clients' models of one built-in architecture trained at once, as one computation.
//!
//! At a batch of 32 a GPU spends a training step launching kernels and waiting for them, not
//! computing: ten clients trained one after another cost ten times the launches of one. A
//! [`StackedTrainer`] stacks `K` clients' parameters along a leading dimension and runs
//! their steps together: every convolution is one grouped convolution (`K` groups, client
//! `k`'s channels in group `k`), every fully connected layer one batched matrix product
//! (`[K, batch, in] x [K, in, out]`), and the loss is the sum of the clients' own losses.
//! No parameter of one client enters another client's loss, so the gradient of the sum is,
//! block by block, each client's own gradient, and the optimizers braid has (SGD with
//! momentum and weight decay, AdamW) act element by element: each client's result is what
//! training it alone gives, up to the order of floating-point sums.
//!
//! Every batch is padded to the configured batch size with samples of weight 0 (so a
//! model's sums run over the same rows whichever models share its stack).
//! Clients with different numbers of steps train together only under plain SGD (no
//! momentum, no weight decay), where a padded step's zero gradient leaves the parameters
//! exactly as they are; otherwise each number of steps is its own group, as is each distinct
//! [`TrainSpec`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use braid_data::{Dataset, Task};
use burn::module::{Module, Param};
use burn::optim::GradientsParams;
use burn::tensor::activation::{log_softmax, relu};
use burn::tensor::module::{conv2d, max_pool2d};
use burn::tensor::ops::{ConvOptions, MaxPoolOptions, PadMode};
use burn::tensor::{Device, Tensor, TensorData};

use crate::arch::Arch;
use crate::device::DeviceKind;
use crate::train::{check_indices, plan_batches, TrainOutcome, TrainSpec};
use crate::{NnError, OptimizerConfig};

/// `K` stacked 3x3 convolutions (padding 1): weight `[K * out, in, 3, 3]`, bias `[K * out]`.
#[derive(Module, Debug)]
struct StackedConv {
    weight: Param<Tensor<4>>,
    bias: Param<Tensor<1>>,
}

/// `K` stacked fully connected layers: weight `[K, in, out]`, bias `[K, 1, out]`.
#[derive(Module, Debug)]
struct StackedLinear {
    weight: Param<Tensor<3>>,
    bias: Param<Tensor<3>>,
}

/// `K` models of one built-in [`Arch`], parameters stacked client by client.
#[derive(Module, Debug)]
struct StackedNet {
    convs: Vec<StackedConv>,
    fc: Vec<StackedLinear>,
}

/// Where each parameter tensor of one model lies in its flat vector, and its dimensions.
fn segments(arch: &Arch) -> Vec<(usize, Vec<usize>)> {
    let mut offset = 0;
    arch.param_shapes()
        .into_iter()
        .map(|p| {
            let at = offset;
            offset += p.num_elements();
            (at, p.dims)
        })
        .collect()
}

impl StackedNet {
    /// The stacked module holding `params` (one flat vector per model, each of `arch`'s
    /// length), on `device`.
    fn new(arch: &Arch, params: &[&[f32]], device: &Device) -> Self {
        let k = params.len();
        let segs = segments(arch);
        // The concatenation, model after model, of one parameter tensor's values.
        let stacked = |i: usize| -> (Vec<f32>, &[usize]) {
            let (at, dims) = &segs[i];
            let n: usize = dims.iter().product();
            let mut v = Vec::with_capacity(k * n);
            for p in params {
                v.extend_from_slice(&p[*at..*at + n]);
            }
            (v, dims)
        };
        let mut next = 0;
        let mut convs = Vec::new();
        for _ in arch.blocks.iter().flatten() {
            let (w, dims) = stacked(next);
            let shape = [k * dims[0], dims[1], dims[2], dims[3]];
            let weight = Tensor::<4>::from_data(TensorData::new(w, shape), device);
            let (b, dims) = stacked(next + 1);
            let bias = Tensor::<1>::from_data(TensorData::new(b, [k * dims[0]]), device);
            convs.push(StackedConv {
                weight: Param::from_tensor(weight),
                bias: Param::from_tensor(bias),
            });
            next += 2;
        }
        let mut fc = Vec::new();
        for _ in &arch.fc {
            let (w, dims) = stacked(next);
            let weight = Tensor::<3>::from_data(TensorData::new(w, [k, dims[0], dims[1]]), device);
            let (b, dims) = stacked(next + 1);
            let bias = Tensor::<3>::from_data(TensorData::new(b, [k, 1, dims[0]]), device);
            fc.push(StackedLinear {
                weight: Param::from_tensor(weight),
                bias: Param::from_tensor(bias),
            });
            next += 2;
        }
        Self { convs, fc }
    }

    /// Each model's flat parameters.
    fn unstack(&self, arch: &Arch, k: usize) -> Vec<Vec<f32>> {
        let segs = segments(arch);
        let mut out: Vec<Vec<f32>> = (0..k)
            .map(|_| Vec::with_capacity(arch.num_params()))
            .collect();
        let tensors = crate::flat::flatten(self);
        let mut read = 0;
        for (_, dims) in &segs {
            let n: usize = dims.iter().product();
            for model in &mut out {
                model.extend_from_slice(&tensors[read..read + n]);
                read += n;
            }
        }
        out
    }

    /// The logits `[K, batch, classes]` of `x`, `[K, batch, sample_len]`: model `k` on
    /// its own samples `x[k]`, as [`crate::net::Net::forward`] computes them.
    fn forward(&self, arch: &Arch, x: Tensor<3>, form: ConvForm) -> Tensor<3> {
        let [k, batch, _] = x.dims();
        let mut h = if arch.blocks.is_empty() {
            x
        } else if form == ConvForm::Unfolded {
            // Model-major rows: model k's samples are rows k * batch .. (k + 1) * batch.
            let (c, hh, ww) = (arch.input[0], arch.input[1], arch.input[2]);
            let mut t: Tensor<4> = x.reshape([k * batch, c, hh, ww]);
            let mut convs = self.convs.iter();
            for block in &arch.blocks {
                for _ in block {
                    let Some(conv) = convs.next() else { break };
                    t = relu(conv3x3_unfolded(t, conv, k));
                }
                t = max_pool2d(t, MaxPoolOptions::new([2, 2]));
            }
            let [_, c2, h2, w2] = t.dims();
            t.reshape([k, batch, c2 * h2 * w2])
        } else {
            // Model k's channels become group k of one batch of K * channels.
            let (c, hh, ww) = (arch.input[0], arch.input[1], arch.input[2]);
            let mut t: Tensor<4> = x.swap_dims(0, 1).reshape([batch, k * c, hh, ww]);
            let mut convs = self.convs.iter();
            for block in &arch.blocks {
                for _ in block {
                    let Some(conv) = convs.next() else { break };
                    let options = ConvOptions::new([1, 1], [1, 1], [1, 1], k);
                    t = relu(conv2d(t, conv.weight.val(), Some(conv.bias.val()), options));
                }
                t = max_pool2d(t, MaxPoolOptions::new([2, 2]));
            }
            let [_, kc, h2, w2] = t.dims();
            t.reshape([batch, k, (kc / k) * h2 * w2]).swap_dims(0, 1)
        };
        let last = self.fc.len().saturating_sub(1);
        for (i, layer) in self.fc.iter().enumerate() {
            h = h.matmul(layer.weight.val()) + layer.bias.val();
            if i < last || arch.relu_out {
                h = relu(h);
            }
        }
        h
    }
}

/// How a stack computes its 3x3 convolutions. Both give each model its own convolution; they
/// differ in the kernels they launch, which is what a small model's step costs on a GPU.
/// [`ConvForm::for_device`] picks the one measured faster on each kind of device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvForm {
    /// One grouped convolution, `K` groups (burn's convolution kernels; on wgpu the weight
    /// gradient of a group of several channels is one launch per group).
    Grouped,
    /// The windows unfolded (nine shifted copies of the padded input), then one batched
    /// product `[K, batch * H * W, in * 9] x [K, in * 9, out]`: launches that do not grow with
    /// `K`, and nine times the input's memory.
    Unfolded,
}

impl ConvForm {
    /// The form for `device`: grouped on the CPU (burn's flex convolution: a stack of 10
    /// reference CNNs' step took 0.6 of the unfolded form's time here), unfolded on a GPU
    /// (0.79 of the grouped form's time on Mesa's lavapipe, and launches that do not grow
    /// with the stack; not yet measured on a hardware GPU). See docs/speed.md.
    pub fn for_device(device: &DeviceKind) -> Self {
        if device.is_accelerator() {
            Self::Unfolded
        } else {
            Self::Grouped
        }
    }
}

/// Model `k`'s 3x3 convolution (padding 1, stride 1) with bias of its rows of `x`
/// (`[K * batch, in, H, W]`, model-major), as one batched product of unfolded windows.
fn conv3x3_unfolded(x: Tensor<4>, conv: &StackedConv, k: usize) -> Tensor<4> {
    let [rows, c, h, w] = x.dims();
    let batch = rows / k;
    let padded = x.pad((1, 1, 1, 1), PadMode::Constant(0.0));
    // Tap (di, dj) of every window, in the weight's (in, kh, kw) order.
    let taps: Vec<Tensor<4>> = (0..9)
        .map(|tap| {
            let (di, dj) = (tap / 3, tap % 3);
            padded
                .clone()
                .slice([0..rows, 0..c, di..di + h, dj..dj + w])
        })
        .collect();
    let windows: Tensor<5> = Tensor::stack(taps, 2);
    let windows = windows
        .reshape([k, batch, c * 9, h * w])
        .swap_dims(2, 3)
        .reshape([k, batch * h * w, c * 9]);
    let out = conv.bias.dims()[0] / k;
    let weight = conv.weight.val().reshape([k, out, c * 9]).swap_dims(1, 2);
    let bias = conv.bias.val().reshape([k, 1, out]);
    (windows.matmul(weight) + bias)
        .reshape([k, batch, h * w, out])
        .swap_dims(2, 3)
        .reshape([rows, out, h, w])
}

/// One client's share of a [`StackedTrainer::train`] call.
#[derive(Debug, Clone)]
pub struct StackedJob {
    /// The parameters it starts from.
    pub params: Vec<f32>,
    /// One optimizer step per batch (training-sample indices), as
    /// [`crate::Trainer::train_batches`] takes them.
    pub batches: Vec<Vec<usize>>,
    /// Its optimizer (fresh for the call), learning-rate scale and proximal weight. DP-SGD
    /// is not stacked.
    pub spec: TrainSpec,
}

impl StackedJob {
    /// The job [`crate::Trainer::train`] does: from `params`, on `shard`, batches drawn
    /// from `seed_value`.
    pub fn new(params: Vec<f32>, shard: &[usize], spec: TrainSpec, seed_value: u64) -> Self {
        let batches = plan_batches(shard, spec.batch_size, spec.steps(shard.len()), seed_value);
        Self {
            params,
            batches,
            spec,
        }
    }
}

/// Trains several clients' models of one built-in architecture at once (see the module
/// documentation), on any device.
pub struct StackedTrainer {
    arch: Arch,
    device: Device,
    stop: Option<Arc<AtomicBool>>,
    form: ConvForm,
}

impl StackedTrainer {
    /// A trainer for models of `arch` on `device`.
    pub fn new(arch: &Arch, device: &DeviceKind) -> Result<Self, NnError> {
        Ok(Self {
            arch: arch.clone(),
            device: device.device()?.autodiff(),
            stop: None,
            form: ConvForm::for_device(device),
        })
    }

    /// Computes convolutions in `form` (default [`ConvForm::for_device`]).
    pub fn with_conv_form(mut self, form: ConvForm) -> Self {
        self.form = form;
        self
    }

    /// Training stops after the step in progress once `flag` is set (a halted run).
    pub fn set_stop_flag(&mut self, flag: Arc<AtomicBool>) {
        self.stop = Some(flag);
    }

    /// Trains every job on `data` (a classification set), as many at once as can share
    /// steps; returns each job's outcome in order. A job that does not fit (wrong parameter
    /// count, DP-SGD, a bad hyper-parameter) gets its own error and the others go on.
    pub fn train(
        &mut self, jobs: &[StackedJob], data: &Dataset,
    ) -> Vec<Result<TrainOutcome, NnError>> {
        let mut out: Vec<Option<Result<TrainOutcome, NnError>>> =
            jobs.iter().map(|_| None).collect();
        if let Err(e) = self.check_data(data) {
            return jobs
                .iter()
                .map(|_| Err(NnError::Shape(e.clone())))
                .collect();
        }
        // Groups of jobs that step together: the same spec and, unless padded steps are
        // inert, the same number of steps.
        let steps: Vec<usize> = jobs
            .iter()
            .map(|j| j.batches.iter().filter(|b| !b.is_empty()).count())
            .collect();
        let mut groups: Vec<Vec<usize>> = Vec::new();
        for (i, job) in jobs.iter().enumerate() {
            if let Err(e) = self.check_job(job, data) {
                out[i] = Some(Err(e));
                continue;
            }
            if steps[i] == 0 {
                out[i] = Some(Ok(TrainOutcome {
                    params: job.params.clone(),
                    samples: 0,
                    steps: 0,
                    mean_loss: 0.0,
                }));
                continue;
            }
            let fits = |g: &Vec<usize>| {
                jobs[g[0]].spec == job.spec
                    && (padding_is_inert(&job.spec) || steps[g[0]] == steps[i])
            };
            match groups.iter_mut().find(|g| fits(g)) {
                Some(g) => g.push(i),
                None => groups.push(vec![i]),
            }
        }
        for group in groups {
            let members: Vec<&StackedJob> = group.iter().map(|&i| &jobs[i]).collect();
            match self.train_group(&members, data) {
                Some(results) => {
                    for (&i, r) in group.iter().zip(results) {
                        out[i] = Some(r);
                    }
                }
                None => {
                    for &i in &group {
                        out[i] = Some(Err(NnError::Halted));
                    }
                }
            }
        }
        out.into_iter()
            .map(|r| r.unwrap_or(Err(NnError::Config("job not trained".into()))))
            .collect()
    }

    fn check_data(&self, data: &Dataset) -> Result<(), String> {
        if data.task() != Task::Classify {
            return Err(format!(
                "stacked clients train classification only, the data is for {:?}",
                data.task()
            ));
        }
        if data.sample_shape() != self.arch.input.as_slice() {
            return Err(format!(
                "model {} expects samples of shape {:?}, data has {:?}",
                self.arch.name.as_str(),
                self.arch.input,
                data.sample_shape()
            ));
        }
        if data.num_classes() != self.arch.output_features() {
            return Err(format!(
                "model {} has {} outputs, the data {} classes",
                self.arch.name.as_str(),
                self.arch.output_features(),
                data.num_classes()
            ));
        }
        Ok(())
    }

    fn check_job(&self, job: &StackedJob, data: &Dataset) -> Result<(), NnError> {
        if job.params.len() != self.arch.num_params() {
            return Err(NnError::ParamCount {
                model: self.arch.name.as_str().into(),
                expected: self.arch.num_params(),
                got: job.params.len(),
            });
        }
        if job.spec.dp_sgd.is_some() {
            return Err(NnError::Config(
                "DP-SGD clips each sample's gradient: its clients train one at a time".into(),
            ));
        }
        job.spec.validate()?;
        check_indices("batch sample", job.batches.iter().flatten(), data)
    }

    fn halted(&self) -> bool {
        self.stop
            .as_ref()
            .is_some_and(|f| f.load(Ordering::Relaxed))
    }

    /// Trains `jobs` (one spec; equal step counts unless padding is inert) as one stack;
    /// `None` if the run was halted first.
    fn train_group(
        &mut self, jobs: &[&StackedJob], data: &Dataset,
    ) -> Option<Vec<Result<TrainOutcome, NnError>>> {
        let real = jobs.len();
        let spec = &jobs[0].spec;
        let arch = &self.arch;
        let mut params: Vec<&[f32]> = jobs.iter().map(|j| j.params.as_slice()).collect();
        let mut batches: Vec<Vec<&Vec<usize>>> = jobs
            .iter()
            .map(|j| j.batches.iter().filter(|b| !b.is_empty()).collect())
            .collect();
        if real == 1 {
            // burn runs one group and one matrix of a batch by other kernels than several,
            // which sum in another order: a model alone is stacked with an idle copy of
            // itself (no samples, so no gradient), so its bits are those of any stack.
            params.push(params[0]);
            batches.push(Vec::new());
        }
        let k = params.len();
        let mut model = StackedNet::new(arch, &params, &self.device);
        let mut optim = spec.optimizer.build();
        let lr = spec.optimizer.lr() * spec.lr_scale;
        let inner = self.device.clone().inner();
        let anchor = (spec.prox_mu > 0.0).then(|| {
            let start = crate::flat::flatten(&model);
            let n = start.len();
            Tensor::<1>::from_data(TensorData::new(start, [n]), &inner)
        });
        let steps = batches.iter().map(Vec::len).max().unwrap_or(0);
        let (len, classes) = (data.sample_len(), data.num_classes());
        // Per model: its loss summed over its steps, kept on the device until the end.
        let mut loss_sum: Option<Tensor<3>> = None;
        let mut samples = vec![0usize; k];
        for t in 0..steps {
            if self.halted() {
                return None;
            }
            // Every batch padded to the configured size, whatever the others in the stack
            // hold: a model's sums then run over the same rows in any stack, so its bits do
            // not depend on who it trains with.
            let width = batches
                .iter()
                .filter_map(|b| b.get(t).map(|b| b.len()))
                .fold(spec.batch_size, usize::max);
            let mut x = Vec::with_capacity(k * width * len);
            let mut target = vec![0f32; k * width * classes];
            let mut y = Vec::with_capacity(width);
            for (m, b) in batches.iter().enumerate() {
                let batch: &[usize] = b.get(t).map_or(&[], |b| b.as_slice());
                y.clear();
                data.gather(batch, &mut x, &mut y);
                x.resize((m + 1) * width * len, 0.0);
                // Each model's mean over its own samples: weight 1/n at the true class.
                let w = 1.0 / batch.len().max(1) as f32;
                for (s, &label) in y.iter().enumerate() {
                    let at =
                        (m * width + s) * classes + label.clamp(0, classes as i64 - 1) as usize;
                    target[at] = w;
                }
                samples[m] += batch.len();
            }
            let x = Tensor::<3>::from_data(TensorData::new(x, [k, width, len]), &self.device);
            let target =
                Tensor::<3>::from_data(TensorData::new(target, [k, width, classes]), &self.device);
            let logits = model.forward(arch, x, self.form);
            // Each model's cross-entropy, [K, 1, 1]; their sum is what is differentiated.
            let ce = (log_softmax(logits, 2) * target)
                .sum_dim(2)
                .sum_dim(1)
                .neg();
            let ce_value = ce.clone().detach();
            let mut loss = ce.sum();
            if let Some(a) = &anchor {
                let w = crate::flat::concat(&model);
                let diff = w - a.clone().set_require_grad(false);
                loss = loss + diff.powi_scalar(2).sum().mul_scalar(spec.prox_mu / 2.0);
            }
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(lr, model, grads);
            loss_sum = Some(match loss_sum {
                Some(s) => s + ce_value,
                None => ce_value,
            });
        }
        let losses: Vec<f32> = loss_sum
            .map(|s| s.into_data().try_into_vec_as::<f32>().unwrap_or_default())
            .unwrap_or_default();
        let trained = model.unstack(arch, k);
        Some(
            trained
                .into_iter()
                .take(real)
                .enumerate()
                .map(|(m, params)| {
                    let steps = batches[m].len();
                    let mean = f64::from(losses.get(m).copied().unwrap_or(f32::NAN)) / steps as f64;
                    TrainOutcome::checked(params, samples[m], steps, mean)
                })
                .collect(),
        )
    }
}

/// True when a step whose gradient is zero leaves the parameters exactly as they are: plain
/// SGD without momentum, weight decay or proximal term. Only then may models with different
/// numbers of steps share a stack (the shorter ones padded with empty steps).
fn padding_is_inert(spec: &TrainSpec) -> bool {
    matches!(
        spec.optimizer,
        OptimizerConfig::Sgd {
            momentum,
            weight_decay,
            ..
        } if momentum == 0.0 && weight_decay == 0.0
    ) && spec.prox_mu == 0.0
}

#[cfg(test)]
#[path = "stacked_tests.rs"]
mod tests;
