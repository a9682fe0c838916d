//! The spatial-attention stack for inference (SPEC §3.1 step 2) as one operation on the
//! plain flex device: [`super::cpu::spatial`] with each eval BatchNorm folded into its conv.
//! Training keeps the op-by-op stack (batch statistics and a backward).

use burn::backend::Flex;
use burn::nn::BatchNorm;
use burn::nn::conv::Conv2d;
use burn::tensor::{DType, Tensor};

use super::conv_op::fits;
use super::cpu::spatial::{self, FoldedConv, SpatialStack};
use super::flex_io::{tensor, values};

/// A tensor's values on the host (the stack's weights: a few thousand values).
fn host<const D: usize>(t: Tensor<D>) -> Option<Vec<f32>> {
    crate::host::read(t).ok()?.convert::<f32>().try_into_vec::<f32>().ok()
}

/// `conv` (same-padded, stride 1) with `bn`'s running statistics folded in.
fn fold(conv: &Conv2d, bn: &BatchNorm) -> Option<FoldedConv> {
    let [out, c, k, _] = conv.weight.dims();
    if !fits(conv) {
        return None;
    }
    let bias = match &conv.bias {
        Some(b) => Some(host(b.val())?),
        None => None,
    };
    Some(FoldedConv::fold(
        &host(conv.weight.val())?,
        bias.as_deref(),
        (out, c, k),
        &host(bn.gamma.val())?,
        &host(bn.beta.val())?,
        &host(bn.running_mean.value_sync())?,
        &host(bn.running_var.value_sync())?,
        bn.epsilon,
    ))
}

/// The stack on `x` `[N, C, H, W]` → `[N, 1, H, W]`, or `None` where its shapes are not the
/// ones the kernel takes (then the caller runs the stack op by op).
pub(super) fn forward(
    x: &Tensor<4>,
    (conv1, bn1): (&Conv2d, &BatchNorm),
    (conv2, bn2): (&Conv2d, &BatchNorm),
    conv3: &Conv2d,
) -> Option<Tensor<4>> {
    let [n, c, h, w] = x.dims();
    let [o3, c3, k3, _] = conv3.weight.dims();
    if (o3, k3) != (1, 1) || conv1.weight.dims()[1] != c || x.dtype() != DType::F32 {
        return None;
    }
    let stack = SpatialStack {
        conv1: fold(conv1, bn1)?,
        conv2: fold(conv2, bn2)?,
        w3: host(conv3.weight.val())?,
        b3: match &conv3.bias {
            Some(b) => *host(b.val())?.first()?,
            None => 0.0,
        },
    };
    if stack.conv2.c != stack.conv1.out || c3 != stack.conv2.out {
        return None;
    }
    let p = x.clone().try_into_primitive::<Flex>().ok()?;
    let y = spatial::forward(&values(&p), (h, w), &stack);
    Some(Tensor::from_primitive::<Flex>(tensor(y, vec![n, 1, h, w])))
}
