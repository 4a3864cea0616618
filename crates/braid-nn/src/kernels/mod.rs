//! braid's own kernels for the hot operations of its models on the CPU, plugged into burn
//! through its backend-extension mechanism with hand-written backward passes.
//!
//! Profiling a training step of the reference CNN on burn's `flex` backend (docs/step-profile.md)
//! showed most of the time in three places: 2x2 max-pooling (a generic windowed loop), the
//! convolution's weight gradient (burn computes it as a convolution whose kernel is the whole
//! output gradient) and its input gradient (a transposed convolution). This module replaces a
//! `conv3x3 + bias + ReLU` and a `2x2 max-pool` by two operations whose forward and backward
//! passes are written here ([`cpu`]): im2col + one large GEMM per product, and a direct pool
//! that remembers the winning input. Fully connected layers run here too ([`linear`]), so that
//! every matrix product of training sums its inner dimension in the same blocks on every CPU
//! ([`cpu::DEPTH_BLOCK`]): burn's own product lets `gemm` pick the blocking from the cache
//! sizes, which changes the bits of the results from one machine to another. They are used
//! only on the `flex` device; other devices keep burn's own operations. Tests check them
//! against burn's operations, values and gradients.

pub mod cpu;

use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::Autodiff;
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Dispatch, Flex};
use burn::tensor::{Device, Tensor, TensorData};

use cpu::{ConvSaved, ConvShape};

/// The extension: three operations on float tensors, implemented for `flex` and for autodiff
/// over `flex`.
#[backend_extension(Flex, Autodiff)]
pub trait CpuKernels: burn::backend::Backend {
    /// `relu(conv2d(x, weight, bias))` with a 3x3 kernel, stride 1 and padding 1:
    /// `x: [n, cin, h, w]`, `weight: [cout, cin, 3, 3]`, `bias: [cout]`.
    fn conv3x3_relu(
        x: FloatTensor<Self>, weight: FloatTensor<Self>, bias: FloatTensor<Self>,
    ) -> FloatTensor<Self>;
    /// 2x2 max-pooling with stride 2 of `x: [n, c, h, w]`.
    fn max_pool2x2(x: FloatTensor<Self>) -> FloatTensor<Self>;
    /// `x · weight + bias`: `x: [rows, inputs]`, `weight: [inputs, outputs]`, `bias: [outputs]`.
    fn linear(
        x: FloatTensor<Self>, weight: FloatTensor<Self>, bias: FloatTensor<Self>,
    ) -> FloatTensor<Self>;
}

/// True when `device` runs on `flex`, where these kernels apply.
pub fn applies_to(device: &Device) -> bool {
    device.clone().inner() == Device::flex()
}

/// `relu(conv2d(x, weight, bias))`, 3x3 kernel, stride 1, padding 1, on the `flex` device.
pub fn conv3x3_relu(x: Tensor<4>, weight: Tensor<4>, bias: Tensor<1>) -> Tensor<4> {
    Tensor::from_dispatch(Dispatch::conv3x3_relu(
        x.into_dispatch(),
        weight.into_dispatch(),
        bias.into_dispatch(),
    ))
}

/// 2x2 max-pooling with stride 2, on the `flex` device.
pub fn max_pool2x2(x: Tensor<4>) -> Tensor<4> {
    Tensor::from_dispatch(Dispatch::max_pool2x2(x.into_dispatch()))
}

/// `x · weight + bias` (a fully connected layer), on the `flex` device.
pub fn linear(x: Tensor<2>, weight: Tensor<2>, bias: Tensor<1>) -> Tensor<2> {
    Tensor::from_dispatch(Dispatch::linear(
        x.into_dispatch(),
        weight.into_dispatch(),
        bias.into_dispatch(),
    ))
}

/// The contiguous `f32` values of a flex tensor, and its shape.
fn values(t: &FlexTensor) -> (std::borrow::Cow<'_, [f32]>, Vec<usize>) {
    let dims = t.layout().shape().to_vec();
    match t.as_slice::<f32>() {
        Some(s) => (std::borrow::Cow::Borrowed(s), dims),
        None => (
            std::borrow::Cow::Owned(
                t.to_contiguous()
                    .as_slice::<f32>()
                    .map(<[f32]>::to_vec)
                    .unwrap_or_default(),
            ),
            dims,
        ),
    }
}

fn tensor(v: Vec<f32>, shape: &[usize]) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(v, shape.to_vec()))
}

fn conv_shape(x: &[usize], weight: &[usize]) -> ConvShape {
    assert!(
        x.len() == 4 && weight.len() == 4 && weight[1] == x[1] && weight[2] == 3 && weight[3] == 3,
        "conv3x3_relu: input {x:?} and weight {weight:?} do not fit a 3x3 convolution"
    );
    ConvShape {
        n: x[0],
        cin: x[1],
        cout: weight[0],
        h: x[2],
        w: x[3],
    }
}

fn conv_forward(x: &FlexTensor, weight: &FlexTensor, bias: &FlexTensor) -> (FlexTensor, ConvSaved) {
    let ((xv, xd), (wv, wd), (bv, _)) = (values(x), values(weight), values(bias));
    let s = conv_shape(&xd, &wd);
    let (y, saved) = cpu::conv3x3_relu_forward(&xv, &wv, &bv, s);
    (tensor(y, &[s.n, s.cout, s.h, s.w]), saved)
}

/// `[rows, inputs, outputs]` of a linear layer's input and weight.
fn linear_shape(x: &[usize], weight: &[usize]) -> (usize, usize, usize) {
    assert!(
        x.len() == 2 && weight.len() == 2 && x[1] == weight[0],
        "linear: input {x:?} and weight {weight:?} do not fit"
    );
    (x[0], x[1], weight[1])
}

fn linear_forward(x: &FlexTensor, weight: &FlexTensor, bias: &FlexTensor) -> FlexTensor {
    let ((xv, xd), (wv, wd), (bv, _)) = (values(x), values(weight), values(bias));
    let (rows, inputs, outputs) = linear_shape(&xd, &wd);
    let y = cpu::linear_forward(&xv, &wv, &bv, rows, inputs, outputs);
    tensor(y, &[rows, outputs])
}

fn pool_forward(x: &FlexTensor) -> (FlexTensor, Vec<u8>, [usize; 4]) {
    let (xv, d) = values(x);
    assert!(d.len() == 4, "max_pool2x2: input {d:?} is not [n, c, h, w]");
    let (out, arg) = cpu::max_pool2x2_forward(&xv, d[0] * d[1], d[2], d[3]);
    (
        tensor(out, &[d[0], d[1], d[2] / 2, d[3] / 2]),
        arg,
        [d[0], d[1], d[2], d[3]],
    )
}

impl CpuKernels for Flex {
    fn conv3x3_relu(x: FlexTensor, weight: FlexTensor, bias: FlexTensor) -> FlexTensor {
        conv_forward(&x, &weight, &bias).0
    }

    fn max_pool2x2(x: FlexTensor) -> FlexTensor {
        pool_forward(&x).0
    }

    fn linear(x: FlexTensor, weight: FlexTensor, bias: FlexTensor) -> FlexTensor {
        linear_forward(&x, &weight, &bias)
    }
}

#[derive(Debug)]
struct LinearBackward;

impl Backward<Flex, 3> for LinearBackward {
    /// The input and the weight.
    type State = (FlexTensor, FlexTensor);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_w, node_b] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        let (x, weight) = ops.state;
        let ((dyv, _), (xv, xd), (wv, wd)) = (values(&dy), values(&x), values(&weight));
        let shape = linear_shape(&xd, &wd);
        let (dx, dw, db) = cpu::linear_backward(&dyv, &xv, &wv, shape, node_x.is_some());
        if let (Some(node), Some(dx)) = (node_x, dx) {
            grads.register::<Flex>(node.id, tensor(dx, &xd));
        }
        if let Some(node) = node_w {
            grads.register::<Flex>(node.id, tensor(dw, &wd));
        }
        if let Some(node) = node_b {
            grads.register::<Flex>(node.id, tensor(db, &[shape.2]));
        }
    }
}

#[derive(Debug)]
struct Conv3x3ReluBackward;

impl Backward<Flex, 3> for Conv3x3ReluBackward {
    /// The unfolded input, the weight and the output (for the ReLU mask).
    type State = (Arc<ConvSaved>, FlexTensor, FlexTensor);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_w, node_b] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        let (saved, weight, y) = ops.state;
        let ((dyv, _), (yv, _), (wv, wd)) = (values(&dy), values(&y), values(&weight));
        let s = saved.shape;
        let (dx, dw, db) = cpu::conv3x3_relu_backward(&dyv, &yv, &wv, &saved, node_x.is_some());
        if let (Some(node), Some(dx)) = (node_x, dx) {
            grads.register::<Flex>(node.id, tensor(dx, &[s.n, s.cin, s.h, s.w]));
        }
        if let Some(node) = node_w {
            grads.register::<Flex>(node.id, tensor(dw, &wd));
        }
        if let Some(node) = node_b {
            grads.register::<Flex>(node.id, tensor(db, &[s.cout]));
        }
    }
}

#[derive(Debug)]
struct MaxPool2x2Backward;

impl Backward<Flex, 1> for MaxPool2x2Backward {
    /// Which input won each window, and the input shape.
    type State = (Arc<Vec<u8>>, [usize; 4]);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x] = ops.parents;
        let dout = grads.consume::<Flex>(&ops.node);
        let (arg, d) = ops.state;
        if let Some(node) = node_x {
            let (dv, _) = values(&dout);
            let dx = cpu::max_pool2x2_backward(&dv, &arg, d[0] * d[1], d[2], d[3]);
            grads.register::<Flex>(node.id, tensor(dx, &d));
        }
    }
}

impl<C: CheckpointStrategy> CpuKernels for Autodiff<Flex, C> {
    fn conv3x3_relu(
        x: FloatTensor<Self>, weight: FloatTensor<Self>, bias: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        match Conv3x3ReluBackward
            .prepare::<C>([x.node(), weight.node(), bias.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (y, saved) = conv_forward(x.primitive(), weight.primitive(), bias.primitive());
                prep.finish((Arc::new(saved), weight.into_primitive(), y.clone()), y)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(conv_forward(x.primitive(), weight.primitive(), bias.primitive()).0)
            }
        }
    }

    fn max_pool2x2(x: FloatTensor<Self>) -> FloatTensor<Self> {
        match MaxPool2x2Backward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (out, arg, d) = pool_forward(x.primitive());
                prep.finish((Arc::new(arg), d), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(pool_forward(x.primitive()).0),
        }
    }

    fn linear(
        x: FloatTensor<Self>, weight: FloatTensor<Self>, bias: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        match LinearBackward
            .prepare::<C>([x.node(), weight.node(), bias.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let y = linear_forward(x.primitive(), weight.primitive(), bias.primitive());
                prep.finish((x.into_primitive(), weight.into_primitive()), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(linear_forward(
                x.primitive(),
                weight.primitive(),
                bias.primitive(),
            )),
        }
    }
}
