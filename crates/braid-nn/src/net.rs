//! The burn module that runs every registered architecture (see [`crate::arch`]).

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{Initializer, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};

use crate::arch::Arch;

/// A conv block: 3x3 convolutions (padding 1) with ReLU, then 2x2 max-pooling.
#[derive(Module, Debug)]
pub struct ConvBlock {
    convs: Vec<Conv2d>,
    pool: MaxPool2d,
}

/// Conv blocks, then fully connected layers with ReLU between them: a built-in model, one
/// [`crate::model::Model`] like any user's.
#[derive(Module, Debug)]
pub struct Net {
    blocks: Vec<ConvBlock>,
    fc: Vec<Linear>,
    #[module(skip)]
    arch: Arch,
}

impl Net {
    /// Builds the module for `arch` with zero parameters (load real values with
    /// [`crate::flat::load_flat`]; braid's init is [`Arch::init_params`], independent of burn's RNG).
    pub fn new(arch: &Arch, device: &Device) -> Self {
        let mut ch = arch.input.first().copied().unwrap_or(1);
        let blocks = arch
            .blocks
            .iter()
            .map(|block| ConvBlock {
                convs: block
                    .iter()
                    .map(|&o| {
                        let conv = Conv2dConfig::new([ch, o], [3, 3])
                            .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                            .with_initializer(Initializer::Zeros)
                            .init(device);
                        ch = o;
                        conv
                    })
                    .collect(),
                pool: MaxPool2dConfig::new([2, 2]).init(),
            })
            .collect();
        let mut inp = arch.flat_features();
        let fc = arch
            .fc
            .iter()
            .map(|&o| {
                let l = LinearConfig::new(inp, o)
                    .with_initializer(Initializer::Zeros)
                    .init(device);
                inp = o;
                l
            })
            .collect();
        Self {
            blocks,
            fc,
            arch: arch.clone(),
        }
    }

    /// The architecture this module was built for.
    pub fn arch(&self) -> &Arch {
        &self.arch
    }

    /// Logits for a batch `x` of shape `[batch, sample_len]` (images are reshaped to `input`).
    /// On the CPU the conv blocks and the fully connected layers run braid's own kernels
    /// ([`crate::kernels`]).
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let own_kernels = crate::kernels::applies_to(&x.device());
        self.forward_with(x, own_kernels)
    }

    /// [`Net::forward`] with burn's own convolution, ReLU, pooling and linear layers everywhere: the reference
    /// the CPU kernels are tested against.
    pub fn forward_reference(&self, x: Tensor<2>) -> Tensor<2> {
        self.forward_with(x, false)
    }

    fn forward_with(&self, x: Tensor<2>, own_kernels: bool) -> Tensor<2> {
        let arch = &self.arch;
        let [batch, _] = x.dims();
        let mut h = if self.blocks.is_empty() {
            x
        } else {
            let mut t: Tensor<4> = x.reshape([batch, arch.input[0], arch.input[1], arch.input[2]]);
            for block in &self.blocks {
                for conv in &block.convs {
                    t = if own_kernels {
                        crate::layers::conv_relu(conv, t)
                    } else {
                        relu(conv.forward(t))
                    };
                }
                t = if own_kernels {
                    crate::layers::max_pool(&block.pool, t)
                } else {
                    block.pool.forward(t)
                };
            }
            t.flatten::<2>(1, 3)
        };
        let last = self.fc.len().saturating_sub(1);
        for (i, layer) in self.fc.iter().enumerate() {
            h = if own_kernels {
                crate::layers::linear(layer, h)
            } else {
                layer.forward(h)
            };
            if i < last || arch.relu_out {
                h = relu(h);
            }
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::ModelName;
    use burn::nn::loss::CrossEntropyLossConfig;
    use burn::optim::{GradientsParams, SgdConfig};
    use burn::tensor::{Int, TensorData};

    /// Loss and one SGD step (lr 1, so the step is the gradient) through either path.
    fn step(arch: &Arch, params: &[f32], own: bool, batch: usize) -> (Vec<f32>, f32, Vec<f32>) {
        let device = Device::flex().autodiff();
        let model = crate::flat::load_flat(crate::flat::renumber(Net::new(arch, &device)), params);
        let len: usize = arch.input.iter().product();
        let x: Vec<f32> = (0..batch * len)
            .map(|i| ((i * 7919) % 255) as f32 / 255.0)
            .collect();
        let y: Vec<i64> = (0..batch).map(|i| (i % 10) as i64).collect();
        let x = Tensor::<2>::from_data(TensorData::new(x, [batch, len]), &device);
        let y = Tensor::<1, Int>::from_data(TensorData::new(y, [batch]), &device);
        let logits = model.forward_with(x, own);
        let loss = CrossEntropyLossConfig::new()
            .init(&device)
            .forward(logits.clone(), y);
        let loss_value: f32 = loss.clone().into_scalar();
        let logits = logits.into_data().try_to_vec::<f32>().unwrap_or_default();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let next = SgdConfig::new().init().step(1.0, model, grads);
        let grad = params
            .iter()
            .zip(crate::flat::flatten(&next))
            .map(|(a, b)| a - b)
            .collect();
        (logits, loss_value, grad)
    }

    #[test]
    fn cpu_kernels_match_burns_operations_in_values_and_gradients() {
        for name in [
            ModelName::Mlp,
            ModelName::Cnn,
            ModelName::CnnSmall,
            ModelName::CnnDeep,
        ] {
            let arch = Arch::new(name, &[1, 28, 28], 10).expect("arch");
            let params = arch.init_params(3);
            let (logits_k, loss_k, grad_k) = step(&arch, &params, true, 5);
            let (logits_r, loss_r, grad_r) = step(&arch, &params, false, 5);
            assert_eq!(logits_k.len(), logits_r.len());
            for (a, b) in logits_k.iter().zip(&logits_r) {
                assert!((a - b).abs() < 1e-4, "{name:?} logits {a} vs {b}");
            }
            assert!((loss_k - loss_r).abs() < 1e-5, "{name:?} loss");
            let scale = grad_r.iter().fold(0.0f32, |m, g| m.max(g.abs()));
            assert!(scale > 0.0, "{name:?}: no gradient");
            for (i, (a, b)) in grad_k.iter().zip(&grad_r).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-4 * scale + 1e-6,
                    "{name:?} gradient {i}: {a} vs {b}"
                );
            }
        }
    }
}
