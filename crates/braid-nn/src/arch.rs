//! The model registry: architectures by name, their parameter layout, and seeded init.
//!
//! Every architecture is a stack of conv blocks (each: one or two 3x3 convolutions with
//! padding 1 and ReLU, then 2x2 max-pooling) followed by fully connected layers (ReLU between
//! them). Parameters are laid out block by block: conv weight `[out, in, 3, 3]`, conv bias,
//! ..., then per linear layer weight `[in, out]` (burn's layout) and bias.

use braid_core::seed;
use rand::Rng as _;
use serde::{Deserialize, Serialize};

use crate::NnError;

/// Model names accepted in the config (`[model] name = ...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelName {
    /// McMahan et al.'s 2NN: fc(in->200)-fc(200->200)-fc(200->classes). Works on any input.
    Mlp,
    /// The reference CNN: conv(1->32)-pool-conv(32->64)-pool-fc(3136->128)-fc(128->10).
    Cnn,
    /// A narrow CNN: conv(1->8)-pool-conv(8->16)-pool-fc(784->32)-fc(32->10).
    CnnSmall,
    /// A deeper, wider CNN: [conv(1->32), conv(32->32)]-pool-[conv(32->64), conv(64->64)]-pool-fc(3136->256)-fc(256->10).
    CnnDeep,
}

impl ModelName {
    /// All names, for help texts.
    pub const ALL: [ModelName; 4] = [
        ModelName::Mlp,
        ModelName::Cnn,
        ModelName::CnnSmall,
        ModelName::CnnDeep,
    ];

    /// The built-in named `name` (its config spelling), if there is one.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.as_str() == name)
    }

    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ModelName::Mlp => "mlp",
            ModelName::Cnn => "cnn",
            ModelName::CnnSmall => "cnn-small",
            ModelName::CnnDeep => "cnn-deep",
        }
    }
}

/// A concrete architecture: a model name bound to an input shape and a number of classes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arch {
    /// Registry name.
    pub name: ModelName,
    /// Input sample shape, `[channels, height, width]` for CNNs or `[features]`.
    pub input: Vec<usize>,
    /// Conv blocks: output channels of each convolution in the block.
    pub blocks: Vec<Vec<usize>>,
    /// Widths of the fully connected layers, the last one being the number of classes.
    pub fc: Vec<usize>,
    /// ReLU on the output of the last layer: false for a whole model (its output is the
    /// logits), true for the client part of a split model that ends in a hidden layer.
    pub relu_out: bool,
}

/// The shape of one parameter tensor and its init bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamShape {
    /// Name as saved in safetensors files, e.g. `blocks.0.convs.1.weight`.
    pub name: String,
    /// Dimensions.
    pub dims: Vec<usize>,
    /// Fan-in, which sets the init bound `1/sqrt(fan_in)`.
    pub fan_in: usize,
}

impl ParamShape {
    /// Number of values in the tensor.
    pub fn num_elements(&self) -> usize {
        self.dims.iter().product()
    }
}

impl Arch {
    /// Binds a model name to a data set's sample shape and number of classes.
    pub fn new(name: ModelName, input: &[usize], classes: usize) -> Result<Self, NnError> {
        let (blocks, hidden): (Vec<Vec<usize>>, Vec<usize>) = match name {
            ModelName::Mlp => (vec![], vec![200, 200]),
            ModelName::Cnn => (vec![vec![32], vec![64]], vec![128]),
            ModelName::CnnSmall => (vec![vec![8], vec![16]], vec![32]),
            ModelName::CnnDeep => (vec![vec![32, 32], vec![64, 64]], vec![256]),
        };
        if !blocks.is_empty() {
            let ok = input.len() == 3 && input[1] >= 4 && input[2] >= 4;
            if !ok {
                return Err(NnError::Shape(format!(
                    "model {} needs image input [channels, height >= 4, width >= 4], but the data has samples of shape {input:?}; use model \"mlp\"",
                    name.as_str()
                )));
            }
        }
        if classes < 1 {
            return Err(NnError::Shape(
                "need at least one output (a class or a regression target), got 0".into(),
            ));
        }
        let mut fc = hidden;
        fc.push(classes);
        Ok(Self {
            name,
            input: input.to_vec(),
            blocks,
            fc,
            relu_out: false,
        })
    }

    /// Number of values entering the first fully connected layer.
    pub fn flat_features(&self) -> usize {
        if self.blocks.is_empty() {
            return self.input.iter().product();
        }
        let (mut h, mut w) = (self.input[1], self.input[2]);
        for _ in &self.blocks {
            h /= 2;
            w /= 2;
        }
        let channels = self
            .blocks
            .last()
            .and_then(|b| b.last())
            .copied()
            .unwrap_or(self.input[0]);
        channels * h * w
    }

    /// Number of values the model outputs per sample (the classes for a whole model; the
    /// activations at the cut for the client part of a split model).
    pub fn output_features(&self) -> usize {
        self.fc
            .last()
            .copied()
            .unwrap_or_else(|| self.flat_features())
    }

    /// All parameter tensors in flat order.
    pub fn param_shapes(&self) -> Vec<ParamShape> {
        let mut out = Vec::new();
        let mut ch = self.input.first().copied().unwrap_or(1);
        for (b, block) in self.blocks.iter().enumerate() {
            for (c, &o) in block.iter().enumerate() {
                let fan_in = ch * 9;
                out.push(ParamShape {
                    name: format!("blocks.{b}.convs.{c}.weight"),
                    dims: vec![o, ch, 3, 3],
                    fan_in,
                });
                out.push(ParamShape {
                    name: format!("blocks.{b}.convs.{c}.bias"),
                    dims: vec![o],
                    fan_in,
                });
                ch = o;
            }
        }
        let mut inp = self.flat_features();
        for (l, &o) in self.fc.iter().enumerate() {
            out.push(ParamShape {
                name: format!("fc.{l}.weight"),
                dims: vec![inp, o],
                fan_in: inp,
            });
            out.push(ParamShape {
                name: format!("fc.{l}.bias"),
                dims: vec![o],
                fan_in: inp,
            });
            inp = o;
        }
        out
    }

    /// Floating-point operations of one forward pass of one sample: 2 per multiply-add
    /// (convolutions, linear layers), 1 per bias add and per ReLU, 3 per 2x2 max-pool output
    /// (the max of 4); the softmax and loss are not counted.
    pub fn forward_flops(&self) -> u64 {
        let mut flops = 0u64;
        let mut ch = self.input.first().copied().unwrap_or(1) as u64;
        if !self.blocks.is_empty() {
            let (mut h, mut w) = (self.input[1] as u64, self.input[2] as u64);
            for block in &self.blocks {
                for &o in block {
                    let out = o as u64 * h * w; // 3x3 convolution, padding 1: same size
                    flops += 2 * out * ch * 9 + out + out; // multiply-adds, bias, ReLU
                    ch = o as u64;
                }
                h /= 2;
                w /= 2;
                flops += 3 * ch * h * w; // 2x2 max-pool
            }
        }
        let mut inp = self.flat_features() as u64;
        let last = self.fc.len().saturating_sub(1);
        for (l, &o) in self.fc.iter().enumerate() {
            let o = o as u64;
            flops += 2 * inp * o + o; // multiply-adds, bias
            if l < last || self.relu_out {
                flops += o; // ReLU
            }
            inp = o;
        }
        flops
    }

    /// Floating-point operations of training on one sample: forward plus backward, counted
    /// as 3 forward passes (the backward pass computes gradients for both the inputs and the
    /// weights of every layer, about twice the forward cost; the usual convention for
    /// training-compute estimates). The optimizer update is not counted.
    pub fn train_flops(&self) -> u64 {
        3 * self.forward_flops()
    }

    /// Total number of parameters.
    pub fn num_params(&self) -> usize {
        self.param_shapes()
            .iter()
            .map(|p| p.dims.iter().product::<usize>())
            .sum()
    }

    /// Seeded init, the same rule as PyTorch's default for conv and linear layers: weights and
    /// biases uniform in `[-1/sqrt(fan_in), 1/sqrt(fan_in)]`. Independent of the backend and threads.
    pub fn init_params(&self, seed_value: u64) -> Vec<f32> {
        let mut rng = seed::rng(seed_value, &[seed::stream::INIT]);
        let mut out = Vec::with_capacity(self.num_params());
        for p in self.param_shapes() {
            let bound = 1.0 / (p.fan_in as f32).sqrt();
            let n: usize = p.dims.iter().product();
            out.extend((0..n).map(|_| rng.random_range(-bound..bound)));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flops_match_a_hand_count() {
        let cnn = Arch::new(ModelName::Cnn, &[1, 28, 28], 10).unwrap();
        // conv 1->32 on 28x28: 32*28*28 = 25,088 outputs, 9 multiply-adds each, + bias + ReLU
        let conv1 = 2 * 25_088 * 9 + 25_088 + 25_088;
        let pool1 = 3 * 32 * 14 * 14;
        // conv 32->64 on 14x14: 64*14*14 = 12,544 outputs, 32*9 = 288 multiply-adds each
        let conv2 = 2 * 12_544 * 288 + 12_544 + 12_544;
        let pool2 = 3 * 64 * 7 * 7;
        let fc1 = 2 * 3_136 * 128 + 128 + 128; // + ReLU
        let fc2 = 2 * 128 * 10 + 10; // logits: no ReLU
        let hand: u64 = conv1 + pool1 + conv2 + pool2 + fc1 + fc2;
        assert_eq!(hand, 8_586_058);
        assert_eq!(cnn.forward_flops(), hand);
        assert_eq!(cnn.train_flops(), 3 * hand);
        let mlp = Arch::new(ModelName::Mlp, &[1, 28, 28], 10).unwrap();
        let hand = (2 * 784 * 200 + 200 + 200) + (2 * 200 * 200 + 200 + 200) + (2 * 200 * 10 + 10);
        assert_eq!(mlp.forward_flops(), hand);
    }

    #[test]
    fn reference_cnn_has_the_expected_size() {
        let a = Arch::new(ModelName::Cnn, &[1, 28, 28], 10).unwrap();
        assert_eq!(a.flat_features(), 3136);
        // conv1 320 + conv2 18496 + fc1 401536 + fc2 1290
        assert_eq!(a.num_params(), 320 + 18_496 + 401_536 + 1_290);
    }

    #[test]
    fn architectures_differ_clearly_in_size() {
        let n = |m| Arch::new(m, &[1, 28, 28], 10).unwrap().num_params();
        assert!(n(ModelName::CnnSmall) * 5 < n(ModelName::Cnn));
        assert!(n(ModelName::Cnn) * 2 < n(ModelName::CnnDeep));
        assert_eq!(
            n(ModelName::Mlp),
            784 * 200 + 200 + 200 * 200 + 200 + 200 * 10 + 10
        );
    }

    #[test]
    fn init_is_seeded_and_bounded() {
        let a = Arch::new(ModelName::CnnSmall, &[1, 28, 28], 10).unwrap();
        let p = a.init_params(1);
        assert_eq!(p.len(), a.num_params());
        assert_eq!(p, a.init_params(1));
        assert_ne!(p, a.init_params(2));
        assert!(p[..72].iter().all(|v| v.abs() <= 1.0 / 3.0)); // conv1: fan_in 9
    }

    #[test]
    fn cnn_on_vectors_is_a_clear_error() {
        let e = Arch::new(ModelName::Cnn, &[60], 10)
            .unwrap_err()
            .to_string();
        assert!(e.contains("mlp") && e.contains("[60]"), "{e}");
        assert!(Arch::new(ModelName::Mlp, &[60], 10).is_ok());
    }
}
