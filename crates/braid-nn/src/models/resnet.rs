//! A CIFAR-style ResNet (He et al. 2016, section 4.2) with GroupNorm in place of BatchNorm:
//! batch statistics are per client and do not average across clients (Hsieh et al. 2020), so
//! federated ResNets use GroupNorm.
//!
//! A 3x3 convolution to 16 channels, then three stages of `n` basic blocks (two 3x3
//! convolutions, each followed by GroupNorm; ReLU after the first and after the residual sum)
//! at 16, 32 and 64 channels, the first block of the second and third stages halving the
//! resolution with stride 2 and a 1x1 convolution + GroupNorm on its shortcut; global average
//! pooling and a fully connected layer to the classes. `n = 3` is ResNet-20 (about 0.27 M
//! parameters on 32x32 RGB). Convolutions have no bias (the GroupNorm after each has one).

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{GroupNorm, GroupNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};

use crate::model::{DataShape, Model, ModelKind};
use crate::NnError;

/// Channels per GroupNorm group.
const GROUP: usize = 8;

fn conv(i: usize, o: usize, k: usize, stride: usize, device: &Device) -> Conv2d {
    let pad = k / 2;
    Conv2dConfig::new([i, o], [k, k])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
        .with_bias(false)
        .init(device)
}

fn norm(channels: usize, device: &Device) -> GroupNorm {
    GroupNormConfig::new((channels / GROUP).max(1), channels).init(device)
}

/// Two 3x3 convolutions with a residual connection.
#[derive(Module, Debug)]
pub struct Block {
    conv1: Conv2d,
    norm1: GroupNorm,
    conv2: Conv2d,
    norm2: GroupNorm,
    /// A 1x1 convolution and its GroupNorm where the shape changes.
    shortcut: Option<(Conv2d, GroupNorm)>,
}

impl Block {
    fn new(i: usize, o: usize, stride: usize, device: &Device) -> Self {
        Self {
            conv1: conv(i, o, 3, stride, device),
            norm1: norm(o, device),
            conv2: conv(o, o, 3, 1, device),
            norm2: norm(o, device),
            shortcut: (stride != 1 || i != o)
                .then(|| (conv(i, o, 1, stride, device), norm(o, device))),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let h = relu(self.norm1.forward(self.conv1.forward(x.clone())));
        let h = self.norm2.forward(self.conv2.forward(h));
        let skip = match &self.shortcut {
            Some((c, n)) => n.forward(c.forward(x)),
            None => x,
        };
        relu(h + skip)
    }
}

/// The network.
#[derive(Module, Debug)]
pub struct ResNet {
    stem: Conv2d,
    stem_norm: GroupNorm,
    blocks: Vec<Block>,
    fc: Linear,
    #[module(skip)]
    input: [usize; 3],
}

impl Model for ResNet {
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let [batch, _] = x.dims();
        let [c, h, w] = self.input;
        let mut t = relu(
            self.stem_norm
                .forward(self.stem.forward(x.reshape([batch, c, h, w]))),
        );
        for b in &self.blocks {
            t = b.forward(t);
        }
        let [_, channels, _, _] = t.dims();
        let pooled = t.mean_dim(3).mean_dim(2).reshape([batch, channels]);
        self.fc.forward(pooled)
    }
}

/// Builds a [`ResNet`] of depth `6 n + 2` for image data.
#[derive(Debug, Clone, Copy)]
pub struct ResNetKind {
    /// Basic blocks per stage.
    pub blocks_per_stage: usize,
}

impl ResNetKind {
    /// ResNet-20: three blocks per stage.
    pub fn resnet20() -> Self {
        Self {
            blocks_per_stage: 3,
        }
    }

    const WIDTHS: [usize; 3] = [16, 32, 64];

    fn input(data: &DataShape) -> Result<[usize; 3], NnError> {
        match data.sample.as_slice() {
            &[c, h, w] if c >= 1 && h >= 8 && w >= 8 => Ok([c, h, w]),
            other => Err(NnError::Shape(format!(
                "the ResNet needs image input [channels, height >= 8, width >= 8], but the data has samples of shape {other:?}"
            ))),
        }
    }
}

impl ModelKind for ResNetKind {
    type Module = ResNet;

    fn build(&self, data: &DataShape, device: &Device) -> Result<ResNet, NnError> {
        let input = Self::input(data)?;
        if self.blocks_per_stage == 0 {
            return Err(NnError::Config(
                "a ResNet needs at least one block per stage".into(),
            ));
        }
        let mut blocks = Vec::new();
        let mut ch = Self::WIDTHS[0];
        for (s, &o) in Self::WIDTHS.iter().enumerate() {
            for b in 0..self.blocks_per_stage {
                let stride = if s > 0 && b == 0 { 2 } else { 1 };
                blocks.push(Block::new(ch, o, stride, device));
                ch = o;
            }
        }
        Ok(ResNet {
            stem: conv(input[0], Self::WIDTHS[0], 3, 1, device),
            stem_norm: norm(Self::WIDTHS[0], device),
            blocks,
            fc: LinearConfig::new(ch, data.classes).init(device),
            input,
        })
    }

    /// Multiply-adds of the convolutions and the classifier (2 operations each), 8 per
    /// normalised value (GroupNorm's statistics and affine map), 1 per ReLU and per residual
    /// sum, 1 per pooled value.
    fn forward_flops(&self, data: &DataShape, _num_params: usize) -> u64 {
        let Ok([c, mut h, mut w]) = Self::input(data) else {
            return 0;
        };
        let conv =
            |i: usize, o: usize, k: usize, h: usize, w: usize| (2 * i * k * k * o * h * w) as u64;
        let first = Self::WIDTHS[0];
        let mut flops = conv(c, first, 3, h, w) + (9 * first * h * w) as u64;
        let mut ch = first;
        for (s, &o) in Self::WIDTHS.iter().enumerate() {
            for b in 0..self.blocks_per_stage {
                let stride = if s > 0 && b == 0 { 2 } else { 1 };
                let (oh, ow) = (h.div_ceil(stride), w.div_ceil(stride));
                let out = (o * oh * ow) as u64;
                flops += conv(ch, o, 3, oh, ow) + 9 * out; // conv1, norm1, relu
                flops += conv(o, o, 3, oh, ow) + 8 * out; // conv2, norm2
                if stride != 1 || ch != o {
                    flops += conv(ch, o, 1, oh, ow) + 8 * out;
                }
                flops += 2 * out; // sum, relu
                (h, w, ch) = (oh, ow, o);
            }
        }
        flops + (ch * h * w) as u64 + (2 * ch * data.classes + data.classes) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AnyModelKind, Kind};
    use std::sync::Arc;

    fn cifar() -> DataShape {
        DataShape {
            sample: vec![3, 32, 32],
            classes: 10,
            task: braid_data::Task::Classify,
        }
    }

    #[test]
    fn resnet20_has_the_papers_size_and_shapes() {
        let bound = Arc::new(Kind(ResNetKind::resnet20()))
            .bind("resnet20", &cifar())
            .expect("binds");
        // He et al. report 0.27 M parameters for ResNet-20 (zero-padded shortcuts); the 1x1
        // projections here add 16 * 32 + 32 * 64 weights and their GroupNorms.
        let convs: usize = 3 * 16 * 9
            + 6 * (16 * 16 * 9)
            + (16 * 32 * 9 + 32 * 32 * 9 + 16 * 32)
            + 4 * (32 * 32 * 9)
            + (32 * 64 * 9 + 64 * 64 * 9 + 32 * 64)
            + 4 * (64 * 64 * 9);
        let norms = 2 * (16 + 6 * 16 + 6 * 32 + 32 + 6 * 64 + 64);
        assert_eq!(bound.num_params(), convs + norms + 64 * 10 + 10);
        assert!((270_000..280_000).contains(&bound.num_params()));
        // About 41 M multiply-adds per 32x32 image, as the paper's ResNet-20.
        let macs = bound.forward_flops() / 2;
        assert!((40_000_000..45_000_000).contains(&macs), "{macs}");
        let e = Arc::new(Kind(ResNetKind::resnet20()))
            .bind(
                "resnet20",
                &DataShape {
                    sample: vec![784],
                    classes: 10,
                    task: braid_data::Task::Classify,
                },
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains("image input") && e.contains("[784]"), "{e}");
    }
}
