//! A small decoder-only transformer language model over bytes (GPT-2's shape, Radford et al.
//! 2019, at a few hundred thousand parameters): token embeddings plus learned position
//! embeddings; pre-norm blocks of causal multi-head self-attention and a GELU MLP four times
//! as wide, each added back to its input; a final LayerNorm and a linear layer to the
//! vocabulary's logits at every position. No dropout (braid's runs are deterministic).

use burn::module::{Module, Param};
use burn::nn::attention::MultiHeadAttentionConfig;
use burn::nn::attention::{generate_autoregressive_mask, MhaInput, MultiHeadAttention};
use burn::nn::{
    Embedding, EmbeddingConfig, Initializer, LayerNorm, LayerNormConfig, Linear, LinearConfig,
};
use burn::tensor::activation::gelu;
use burn::tensor::{Device, Tensor};

use crate::model::{DataShape, Model, ModelKind, Task};
use crate::NnError;

/// One pre-norm transformer block.
#[derive(Module, Debug)]
pub struct Block {
    norm1: LayerNorm,
    attn: MultiHeadAttention,
    norm2: LayerNorm,
    up: Linear,
    down: Linear,
}

impl Block {
    fn new(d: usize, heads: usize, device: &Device) -> Self {
        Self {
            norm1: LayerNormConfig::new(d).init(device),
            attn: MultiHeadAttentionConfig::new(d, heads)
                .with_dropout(0.0)
                .init(device),
            norm2: LayerNormConfig::new(d).init(device),
            up: LinearConfig::new(d, 4 * d).init(device),
            down: LinearConfig::new(4 * d, d).init(device),
        }
    }

    fn forward(&self, h: Tensor<3>) -> Tensor<3> {
        let [batch, t, _] = h.dims();
        let mask = generate_autoregressive_mask(batch, t, &h.device());
        let a = self
            .attn
            .forward(MhaInput::self_attn(self.norm1.forward(h.clone())).mask_attn(mask))
            .context;
        let h = h + a;
        let m = self
            .down
            .forward(gelu(self.up.forward(self.norm2.forward(h.clone()))));
        h + m
    }
}

/// The language model.
#[derive(Module, Debug)]
pub struct TransformerLm {
    tokens: Embedding,
    positions: Param<Tensor<2>>,
    blocks: Vec<Block>,
    norm: LayerNorm,
    head: Linear,
}

impl Model for TransformerLm {
    /// `x`: `[batch, T]` token ids (as floats); the logits `[batch * T, vocabulary]`, position
    /// by position.
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let [batch, t] = x.dims();
        let [_, d] = self.positions.dims();
        let pos = self.positions.val().slice([0..t, 0..d]).unsqueeze::<3>();
        let mut h = self.tokens.forward(x.int()) + pos;
        for b in &self.blocks {
            h = b.forward(h);
        }
        let logits = self.head.forward(self.norm.forward(h));
        let [_, _, vocab] = logits.dims();
        logits.reshape([batch * t, vocab])
    }
}

/// Builds a [`TransformerLm`] for next-token windows ([`Task::NextToken`]).
#[derive(Debug, Clone, Copy)]
pub struct TransformerKind {
    /// Transformer blocks.
    pub layers: usize,
    /// Width of the residual stream.
    pub d_model: usize,
    /// Attention heads (dividing `d_model`).
    pub heads: usize,
}

impl TransformerKind {
    /// The built-in `transformer`: 2 blocks of width 128 with 4 heads (about 0.44 M
    /// parameters at a 64-byte context).
    pub fn small() -> Self {
        Self {
            layers: 2,
            d_model: 128,
            heads: 4,
        }
    }

    /// The context length `T` for `data`, or why the model does not fit it.
    fn context(data: &DataShape) -> Result<usize, NnError> {
        match (data.task, data.sample.as_slice()) {
            (Task::NextToken, &[n]) if n >= 2 => Ok(n - 1),
            _ => Err(NnError::Shape(format!(
                "the transformer predicts next tokens (a text dataset); the data is for {:?} with samples of shape {:?}",
                data.task, data.sample
            ))),
        }
    }
}

impl ModelKind for TransformerKind {
    type Module = TransformerLm;

    fn build(&self, data: &DataShape, device: &Device) -> Result<TransformerLm, NnError> {
        let t = Self::context(data)?;
        let (d, v) = (self.d_model, data.classes);
        if self.layers == 0 || self.heads == 0 || d == 0 || d % self.heads != 0 {
            return Err(NnError::Config(format!(
                "a transformer needs layers >= 1 and a width divisible by its heads (got {} layers, width {d}, {} heads)",
                self.layers, self.heads
            )));
        }
        Ok(TransformerLm {
            tokens: EmbeddingConfig::new(v, d)
                .with_initializer(Initializer::Normal {
                    mean: 0.0,
                    std: 0.02,
                })
                .init(device),
            positions: Initializer::Normal {
                mean: 0.0,
                std: 0.02,
            }
            .init([t, d], device),
            blocks: (0..self.layers)
                .map(|_| Block::new(d, self.heads, device))
                .collect(),
            norm: LayerNormConfig::new(d).init(device),
            head: LinearConfig::new(d, v).init(device),
        })
    }

    /// Per window of `T` predictions: 2 operations per multiply-add of every weight matrix at
    /// every position (the projections, the MLP, the head), plus the attention's scores and
    /// weighted sums (`2 * 2 * T * T * d` per block, counted whole although causal masking
    /// leaves half of it unused); norms, softmax and GELU not counted.
    fn forward_flops(&self, data: &DataShape, _num_params: usize) -> u64 {
        let Ok(t) = Self::context(data) else {
            return 0;
        };
        let (t, d, v, l) = (
            t as u64,
            self.d_model as u64,
            data.classes as u64,
            self.layers as u64,
        );
        let per_block = 4 * d * d + 8 * d * d; // q, k, v, out; up and down
        2 * t * (l * per_block + d * v) + l * 4 * t * t * d
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AnyModelKind, Kind};
    use crate::train::{OptimizerConfig, TrainSpec};
    use crate::DeviceKind;
    use braid_data::dataset::Features;
    use braid_data::Dataset;
    use std::sync::Arc;

    #[test]
    fn the_model_learns_a_repeating_text_and_sees_no_future() {
        // "abcd" repeated: after one pass of training the next byte is certain.
        let t = 8;
        let text: Vec<u8> = b"abcd".iter().copied().cycle().take(40 * t + 1).collect();
        let mut windows = Vec::new();
        for k in 0..40 {
            windows.extend_from_slice(&text[k * t..k * t + t + 1]);
        }
        let data = Dataset::new(
            Features::U8 {
                data: windows,
                scale: 1.0,
            },
            vec![0; 40],
            vec![t + 1],
            256,
        )
        .expect("data")
        .with_task(Task::NextToken);
        let kind = TransformerKind {
            layers: 1,
            d_model: 32,
            heads: 2,
        };
        let bound = Arc::new(Kind(kind))
            .bind("transformer", &DataShape::of(&data))
            .expect("binds");
        let init = bound.init_params(1).expect("init");
        let mut trainer = bound.trainer(&DeviceKind::Cpu).expect("trainer");
        let before = trainer.evaluate(&init, &data, None).expect("eval");
        assert!((before.loss - (256f64).ln()).abs() < 0.5, "{}", before.loss);
        let spec = TrainSpec {
            optimizer: OptimizerConfig::Adamw {
                lr: 3e-3,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.0,
            },
            batch_size: 8,
            epochs: 8,
            max_steps: None,
            prox_mu: 0.0,
            lr_scale: 1.0,
            dp_sgd: None,
        };
        let shard: Vec<usize> = (0..40).collect();
        let out = trainer
            .train(&init, &data, &shard, &spec, 3)
            .expect("train");
        let after = trainer.evaluate(&out.params, &data, None).expect("eval");
        assert!(after.loss < 0.5, "loss {} -> {}", before.loss, after.loss);
        assert!(
            after.accuracy > 0.9,
            "next-token accuracy {}",
            after.accuracy
        );

        // Causality: changing the last input token changes no earlier position's logits.
        let module = kind
            .build(&DataShape::of(&data), &Device::flex())
            .expect("built");
        let module = crate::flat::load_flat(module, &out.params);
        let a: Vec<f32> = (0..t).map(|i| (97 + i % 4) as f32).collect();
        let mut b = a.clone();
        b[t - 1] = 120.0;
        let logits = |x: Vec<f32>| {
            module
                .forward(Tensor::<2>::from_data(
                    burn::tensor::TensorData::new(x, [1, t]),
                    &Device::flex(),
                ))
                .into_data()
                .try_to_vec::<f32>()
                .expect("values")
        };
        let (la, lb) = (logits(a), logits(b));
        let earlier = (t - 1) * 256;
        assert_eq!(la[..earlier], lb[..earlier], "a position saw a later token");
        assert_ne!(la[earlier..], lb[earlier..]);
        // A classification data set is refused with one line.
        let e = Arc::new(Kind(kind))
            .bind(
                "transformer",
                &DataShape {
                    sample: vec![784],
                    classes: 10,
                    task: Task::Classify,
                },
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains("next tokens"), "{e}");
    }
}
