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

/// Conv blocks, then fully connected layers with ReLU between them.
#[derive(Module, Debug)]
pub struct Net {
    blocks: Vec<ConvBlock>,
    fc: Vec<Linear>,
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
        Self { blocks, fc }
    }

    /// The module kept in `slot` (or a new one for `arch` on `device`), loaded with `params`:
    /// trainers reuse one module across calls.
    pub(crate) fn loaded(
        slot: &mut Option<Net>,
        arch: &Arch,
        device: &Device,
        params: &[f32],
    ) -> Net {
        let model = slot
            .take()
            .unwrap_or_else(|| crate::flat::renumber(Net::new(arch, device)));
        crate::flat::load_flat(model, params)
    }

    /// Logits for a batch `x` of shape `[batch, sample_len]` (images are reshaped to `input`).
    pub fn forward(&self, arch: &Arch, x: Tensor<2>) -> Tensor<2> {
        let [batch, _] = x.dims();
        let mut h = if self.blocks.is_empty() {
            x
        } else {
            let mut t: Tensor<4> = x.reshape([batch, arch.input[0], arch.input[1], arch.input[2]]);
            for block in &self.blocks {
                for conv in &block.convs {
                    t = relu(conv.forward(t));
                }
                t = block.pool.forward(t);
            }
            t.flatten::<2>(1, 3)
        };
        let last = self.fc.len().saturating_sub(1);
        for (i, layer) in self.fc.iter().enumerate() {
            h = layer.forward(h);
            if i < last || arch.relu_out {
                h = relu(h);
            }
        }
        h
    }
}
