//! burn's layers through braid's CPU kernels, for a model of one's own.
//!
//! Call these in a [`crate::Model`]'s forward pass instead of the layer's `forward`: on the
//! `flex` CPU device they run braid's kernels ([`crate::kernels`]), the ones the built-in models
//! use, so a model of one's own costs what a built-in of the same shape costs, and its matrix
//! products sum in the same blocks on every CPU (burn's own product picks its blocking from the
//! cache sizes, so its bits can differ from one machine to another). On another device, or for
//! a layer the kernel does not cover, they are the layer's own `forward`.

use burn::nn::conv::Conv2d;
use burn::nn::pool::MaxPool2d;
use burn::nn::{Linear, PaddingConfig2d};
use burn::tensor::activation::relu;
use burn::tensor::Tensor;

use crate::kernels;

/// `layer.forward(x)` for a fully connected layer with a bias.
pub fn linear(layer: &Linear, x: Tensor<2>) -> Tensor<2> {
    match &layer.bias {
        Some(bias) if kernels::applies_to(&x.device()) => {
            kernels::linear(x, layer.weight.val(), bias.val())
        }
        _ => layer.forward(x),
    }
}

/// `relu(conv.forward(x))`; braid's kernel for a 3x3 convolution with a bias, stride 1,
/// padding 1 (explicit or "same"), no dilation, one group.
pub fn conv_relu(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    let same = matches!(
        conv.padding,
        PaddingConfig2d::Explicit(1, 1, 1, 1) | PaddingConfig2d::Same
    );
    let fits = conv.kernel_size == [3, 3]
        && conv.stride == [1, 1]
        && conv.dilation == [1, 1]
        && conv.groups == 1
        && same;
    match &conv.bias {
        Some(bias) if fits && kernels::applies_to(&x.device()) => {
            kernels::conv3x3_relu(x, conv.weight.val(), bias.val())
        }
        _ => relu(conv.forward(x)),
    }
}

/// `pool.forward(x)`; braid's kernel for 2x2 max-pooling with stride 2 and no padding.
pub fn max_pool(pool: &MaxPool2d, x: Tensor<4>) -> Tensor<4> {
    let fits = pool.kernel_size == [2, 2]
        && pool.stride == [2, 2]
        && pool.dilation == [1, 1]
        && !pool.ceil_mode
        && matches!(pool.padding, PaddingConfig2d::Valid);
    if fits && kernels::applies_to(&x.device()) {
        kernels::max_pool2x2(x)
    } else {
        pool.forward(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::conv::Conv2dConfig;
    use burn::nn::pool::MaxPool2dConfig;
    use burn::nn::LinearConfig;
    use burn::tensor::{Device, Distribution};

    fn close(a: Tensor<4>, b: Tensor<4>) -> bool {
        let a = a.into_data().try_to_vec::<f32>().unwrap_or_default();
        let b = b.into_data().try_to_vec::<f32>().unwrap_or_default();
        a.len() == b.len() && !a.is_empty() && a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-4)
    }

    #[test]
    fn the_kernels_compute_what_the_layers_compute() {
        // Random inputs and initializers draw from burn's process-wide generator: not while
        // another test checks that a seeded init is the same from several threads.
        let _rng = crate::model::lock_rng();
        let device = Device::flex();
        let x = Tensor::<4>::random([2, 3, 8, 8], Distribution::Default, &device);
        for padding in [PaddingConfig2d::Explicit(1, 1, 1, 1), PaddingConfig2d::Same] {
            let conv = Conv2dConfig::new([3, 4], [3, 3])
                .with_padding(padding)
                .init(&device);
            assert!(close(
                conv_relu(&conv, x.clone()),
                relu(conv.forward(x.clone()))
            ));
        }
        // Not 3x3: burn's own layer.
        let wide = Conv2dConfig::new([3, 4], [5, 5]).init(&device);
        assert!(close(
            conv_relu(&wide, x.clone()),
            relu(wide.forward(x.clone()))
        ));
        let pool = MaxPool2dConfig::new([2, 2]).init();
        assert!(close(max_pool(&pool, x.clone()), pool.forward(x.clone())));
        let fc = LinearConfig::new(8, 5).init(&device);
        let v = Tensor::<2>::random([3, 8], Distribution::Default, &device);
        let a = linear(&fc, v.clone()).reshape([1, 1, 3, 5]);
        let b = fc.forward(v).reshape([1, 1, 3, 5]);
        assert!(close(a, b));
    }
}
