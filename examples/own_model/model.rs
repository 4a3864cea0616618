//! The example's own model: an MLP with layer normalisation and GELU for 8x8 digit images
//! given as 64 pixel counts from 0 to 16. braid has no such model built in; it is an ordinary
//! burn module plus the two small traits braid asks for.

use braid::burn::module::Module;
use braid::burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};
use braid::burn::tensor::activation::gelu;
use braid::burn::tensor::{Device, Tensor};
use braid::prelude::{DataShape, Model, ModelKind, NnError};

/// Pixels scaled to [0, 1], a hidden layer, layer normalisation, GELU, the class logits.
#[derive(Module, Debug)]
pub struct DigitsNet {
    hidden: Linear,
    norm: LayerNorm,
    out: Linear,
}

impl Model for DigitsNet {
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let h = self.hidden.forward(x.div_scalar(16.0));
        self.out.forward(gelu(self.norm.forward(h)))
    }
}

/// Builds [`DigitsNet`] for a data set; registered as `digits-net`.
pub struct DigitsNetKind {
    /// Width of the hidden layer.
    pub hidden: usize,
}

impl ModelKind for DigitsNetKind {
    type Module = DigitsNet;

    fn build(&self, data: &DataShape, device: &Device) -> Result<DigitsNet, NnError> {
        if data.sample != [64] {
            return Err(NnError::Shape(format!(
                "digits-net reads 64 pixel counts per sample; the data has samples of shape {:?}",
                data.sample
            )));
        }
        Ok(DigitsNet {
            hidden: LinearConfig::new(64, self.hidden).init(device),
            norm: LayerNormConfig::new(self.hidden).init(device),
            out: LinearConfig::new(self.hidden, data.classes).init(device),
        })
    }

    /// Counted by hand: the two linear layers' multiply-adds and bias adds, about 8 operations
    /// per hidden value for the layer norm, 8 for GELU, 1 per input for the scaling.
    fn forward_flops(&self, data: &DataShape, _num_params: usize) -> u64 {
        let (i, h, c) = (64u64, self.hidden as u64, data.classes as u64);
        i + (2 * i * h + h) + 8 * h + 8 * h + (2 * h * c + c)
    }
}

/// The built-in `mlp`'s network (fc(in-200)-fc(200-200)-fc(200-classes), ReLU between) written
/// as a model of one's own, to compare what it costs per step with the built-in
/// (`bench-step --model user-mlp` against `--model mlp`): registered as `user-mlp` with burn's
/// layers' own forward, and as `user-mlp-kernels` through braid's CPU kernels
/// ([`braid::braid_nn::layers`]).
#[derive(Module, Debug)]
pub struct UserMlp {
    layers: Vec<Linear>,
    #[module(skip)]
    braid_kernels: bool,
}

impl Model for UserMlp {
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let last = self.layers.len() - 1;
        let mut h = x;
        for (i, layer) in self.layers.iter().enumerate() {
            h = if self.braid_kernels {
                braid::braid_nn::layers::linear(layer, h)
            } else {
                layer.forward(h)
            };
            if i < last {
                h = braid::burn::tensor::activation::relu(h);
            }
        }
        h
    }
}

/// Builds [`UserMlp`].
pub struct UserMlpKind {
    /// Run the layers through braid's CPU kernels.
    pub braid_kernels: bool,
}

impl ModelKind for UserMlpKind {
    type Module = UserMlp;

    fn build(&self, data: &DataShape, device: &Device) -> Result<UserMlp, NnError> {
        let widths = [data.sample_len(), 200, 200, data.classes];
        Ok(UserMlp {
            layers: widths
                .windows(2)
                .map(|w| LinearConfig::new(w[0], w[1]).init(device))
                .collect(),
            braid_kernels: self.braid_kernels,
        })
    }
}

/// The client part of `digits-split`: pixels scaled to [0, 1], a hidden layer, layer
/// normalisation and GELU; its output rows (`hidden` values per sample) are what a client
/// sends to the server in split learning.
#[derive(Module, Debug)]
pub struct DigitsEncoder {
    hidden: Linear,
    norm: LayerNorm,
}

impl Model for DigitsEncoder {
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        gelu(self.norm.forward(self.hidden.forward(x.div_scalar(16.0))))
    }
}

/// Builds [`DigitsEncoder`].
pub struct DigitsEncoderKind {
    /// Width of the hidden layer (the values per sample at the cut).
    pub hidden: usize,
}

impl ModelKind for DigitsEncoderKind {
    type Module = DigitsEncoder;

    fn build(&self, data: &DataShape, device: &Device) -> Result<DigitsEncoder, NnError> {
        Ok(DigitsEncoder {
            hidden: LinearConfig::new(data.sample_len(), self.hidden).init(device),
            norm: LayerNormConfig::new(self.hidden).init(device),
        })
    }
}

/// The server part of `digits-split`: a GELU hidden layer and the class logits, reading
/// whatever width the client part gives (`data.sample` is `[width]` for it).
#[derive(Module, Debug)]
pub struct DigitsHead {
    hidden: Linear,
    out: Linear,
}

impl Model for DigitsHead {
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.out.forward(gelu(self.hidden.forward(x)))
    }
}

/// Builds [`DigitsHead`].
pub struct DigitsHeadKind {
    /// Width of its hidden layer.
    pub hidden: usize,
}

impl ModelKind for DigitsHeadKind {
    type Module = DigitsHead;

    fn build(&self, data: &DataShape, device: &Device) -> Result<DigitsHead, NnError> {
        Ok(DigitsHead {
            hidden: LinearConfig::new(data.sample_len(), self.hidden).init(device),
            out: LinearConfig::new(self.hidden, data.classes).init(device),
        })
    }
}
