//! A same-padded k×k 2-D convolution with bias (stride 1) as one burn operation on the flex
//! CPU back-end, with a hand-written backward: the spatial-attention stack (SPEC §3.1 step
//! 2) runs its convs over all B·T frames, where im2col + GEMM per frame on parallel threads
//! ([`super::cpu::conv::forward`]) is several times faster than the generic conv.

use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Dispatch, Flex, backend_extension};
use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2d;
use burn::tensor::Tensor;

use super::cpu::conv::{self, ConvDims};
use super::flex_io::{tensor, values};

/// The same-padded convolution.
#[backend_extension(Flex, Autodiff)]
pub trait ConvSameOps: burn::backend::Backend {
    /// `conv(x, w) + bias` with padding k / 2: x `[N, C, H, W]`, w `[O, C, k, k]`, bias `[O]`
    /// → `[N, O, H, W]`.
    fn conv2d_same(x: FloatTensor<Self>, w: FloatTensor<Self>, bias: FloatTensor<Self>) -> FloatTensor<Self>;
}

fn dims_of(x: &FlexTensor, w: &FlexTensor, bias: &FlexTensor) -> ConvDims {
    let (xs, ws, bs) = (x.layout().shape(), w.layout().shape(), bias.layout().shape());
    assert!(
        xs.num_dims() == 4
            && ws.num_dims() == 4
            && bs.num_dims() == 1
            && ws[1] == xs[1]
            && ws[2] == ws[3]
            && ws[2] % 2 == 1
            && bs[0] == ws[0],
        "same-padded conv shapes: x {xs:?}, w {ws:?}, bias {bs:?}"
    );
    ConvDims {
        frames: xs[0],
        c: xs[1],
        out: ws[0],
        height: xs[2],
        width: xs[3],
        k: ws[2],
    }
}

impl ConvSameOps for Flex {
    fn conv2d_same(x: FlexTensor, w: FlexTensor, bias: FlexTensor) -> FlexTensor {
        let d = dims_of(&x, &w, &bias);
        let y = conv::forward(&values(&x), &values(&w), &values(&bias), d);
        tensor(y, vec![d.frames, d.out, d.height, d.width])
    }
}

/// The forward's operands, for the backward.
#[derive(Debug)]
struct ConvSaved {
    dims: ConvDims,
    /// The input and weight themselves (shared buffers, not copies).
    x: FlexTensor,
    w: FlexTensor,
}

#[derive(Debug)]
struct ConvSameBackward;

impl Backward<Flex, 3> for ConvSameBackward {
    type State = Arc<ConvSaved>;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let [node_x, node_w, node_b] = ops.parents;
        let grad = grads.consume::<Flex>(&ops.node);
        let s = ops.state;
        let d = s.dims;
        let (dx, dw, db) = conv::backward(&values(&s.x), &values(&s.w), &values(&grad), d, node_x.is_some());
        if let (Some(node), Some(dx)) = (node_x, dx) {
            grads.register::<Flex>(node.id, tensor(dx, vec![d.frames, d.c, d.height, d.width]));
        }
        if let Some(node) = node_w {
            grads.register::<Flex>(node.id, tensor(dw, vec![d.out, d.c, d.k, d.k]));
        }
        if let Some(node) = node_b {
            grads.register::<Flex>(node.id, tensor(db, vec![d.out]));
        }
    }
}

impl<C: CheckpointStrategy> ConvSameOps for Autodiff<Flex, C> {
    fn conv2d_same(x: FloatTensor<Self>, w: FloatTensor<Self>, bias: FloatTensor<Self>) -> FloatTensor<Self> {
        match ConvSameBackward
            .prepare::<C>([x.node(), w.node(), bias.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (xp, wp, bp) = (x.primitive(), w.primitive(), bias.primitive());
                let dims = dims_of(xp, wp, bp);
                let y = conv::forward(&values(xp), &values(wp), &values(bp), dims);
                let out = tensor(y, vec![dims.frames, dims.out, dims.height, dims.width]);
                prep.finish(
                    Arc::new(ConvSaved {
                        dims,
                        x: xp.clone(),
                        w: wp.clone(),
                    }),
                    out,
                )
            }
            OpsKind::UnTracked(prep) => prep.finish(<Flex as ConvSameOps>::conv2d_same(
                x.into_primitive(),
                w.into_primitive(),
                bias.into_primitive(),
            )),
        }
    }
}

/// Whether `conv` is one [`ConvSameOps::conv2d_same`] computes: stride 1, same-padded
/// (k / 2), undilated, ungrouped and square (the bias is checked by the caller).
pub(super) fn fits(conv: &Conv2d) -> bool {
    let [_, _, kh, kw] = conv.weight.dims();
    let p = kh / 2;
    let same = match conv.padding {
        PaddingConfig2d::Same => true,
        PaddingConfig2d::Valid => kh == 1,
        PaddingConfig2d::Explicit(a, b, c, d) => [a, b, c, d] == [p; 4],
    };
    same && kh == kw && kh % 2 == 1 && conv.stride == [1, 1] && conv.dilation == [1, 1] && conv.groups == 1
}

/// The fused same-padded conv on tensors of a flex device (see [`ConvSameOps`]).
///
/// # Shapes
/// - x: `[N, C, H, W]`, w: `[O, C, k, k]`, bias: `[O]`
/// - output: `[N, O, H, W]`
pub(super) fn conv2d_same(x: Tensor<4>, w: Tensor<4>, bias: Tensor<1>) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as ConvSameOps>::conv2d_same(
        x.into_dispatch(),
        w.into_dispatch(),
        bias.into_dispatch(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::conv_same;
    use burn::nn::conv::Conv2dConfig;
    use burn::tensor::{Device, Distribution};

    fn max_diff(a: Tensor<4>, b: Tensor<4>) -> f32 {
        let a = a.into_data().try_to_vec::<f32>().unwrap();
        let b = b.into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(a.len(), b.len());
        a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
    }

    #[test]
    fn fused_conv_matches_burns_conv_forward_and_backward() {
        let dev = Device::flex().autodiff();
        dev.seed(5);
        for (cin, cout, k, pad) in [
            (1, 8, 3, PaddingConfig2d::Explicit(1, 1, 1, 1)),
            (3, 2, 1, PaddingConfig2d::Valid),
            (2, 4, 5, PaddingConfig2d::Same),
        ] {
            let conv = Conv2dConfig::new([cin, cout], [k, k]).with_padding(pad).init(&dev);
            let x = Tensor::<4>::random([9, cin, 6, 7], Distribution::Uniform(-1.0, 1.0), &dev);
            let r = Tensor::<4>::random([9, cout, 6, 7], Distribution::Uniform(-1.0, 1.0), &dev);
            let run = |fused: bool| {
                let x = x.clone().detach().require_grad();
                let y = if fused {
                    conv_same(&conv, x.clone())
                } else {
                    conv.forward(x.clone())
                };
                let g = (y.clone() * r.clone()).sum().backward();
                let gb = conv.bias.as_ref().unwrap().grad(&g).unwrap();
                (y.inner(), x.grad(&g).unwrap(), conv.weight.grad(&g).unwrap(), gb)
            };
            let (y1, dx1, dw1, db1) = run(true);
            let (y0, dx0, dw0, db0) = run(false);
            assert!(max_diff(y1, y0) < 1e-5, "k {k}");
            assert!(max_diff(dx1, dx0) < 1e-5, "k {k}");
            assert!(max_diff(dw1, dw0) < 1e-4, "k {k}");
            let (b1, b0) = (
                db1.into_data().try_to_vec::<f32>().unwrap(),
                db0.into_data().try_to_vec::<f32>().unwrap(),
            );
            assert!(b1.iter().zip(&b0).all(|(a, b)| (a - b).abs() < 1e-4), "k {k}");
        }
    }
}
