//! Flex tensors to and from the `f32` slices the CPU kernels work on.

use std::borrow::Cow;

use burn::backend::Flex;
use burn::backend::flex::FlexTensor;
use burn::tensor::{DType, Tensor, TensorData};

use super::cpu::optim::{is_permuted_dense, transposed_2d};
use super::fused_cpu_plain;

/// The values of a flex tensor as contiguous `f32`, borrowed when they already are.
pub(super) fn values(t: &FlexTensor) -> Cow<'_, [f32]> {
    match t.as_slice::<f32>() {
        Some(s) => Cow::Borrowed(s),
        None => Cow::Owned(
            t.clone()
                .into_data()
                .convert::<f32>()
                .try_into_vec::<f32>()
                .unwrap_or_else(|e| unreachable!("converted to f32: {e:?}")),
        ),
    }
}

/// A contiguous flex tensor of these values.
pub(super) fn tensor(values: Vec<f32>, shape: Vec<usize>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}

/// How [`into_flex`] must lay the values out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Order {
    /// Row-major, as the logical tensor (element-wise with other tensors).
    RowMajor,
    /// Any order that covers every value exactly once (sums, scaling): a transposed
    /// gradient (burn's own convs return their weight gradients so) is used as it is.
    Any,
    /// Row-major, or the transpose of a row-major matrix (see [`transposed_2d`]).
    RowMajorOrTransposed,
}

/// The tensor's flex primitive, its buffer holding exactly its `f32` values in the order
/// asked, or the tensor back when it lives elsewhere (another back-end, the autodiff
/// device) or holds another float type.
// The `Err` is not an error but the caller's tensor handed back for the tensor-op path.
#[allow(clippy::result_large_err)]
pub(super) fn into_flex<const D: usize>(t: Tensor<D>, order: Order) -> Result<FlexTensor, Tensor<D>> {
    if !fused_cpu_plain(&t) {
        return Err(t);
    }
    let p = match t.try_into_primitive::<Flex>() {
        Ok(p) => p,
        // Unreachable after the device check; the tensor is gone, so this is a bug, not input.
        Err(e) => unreachable!("flex device without a flex tensor: {e:?}"),
    };
    if p.dtype() != DType::F32 {
        return Err(from_flex(p));
    }
    let l = p.layout();
    let exact = l.start_offset() == 0 && p.bytes().len() == 4 * l.num_elements();
    let usable = match order {
        Order::RowMajor => exact && l.is_contiguous(),
        Order::Any => exact && is_permuted_dense(l.shape().as_slice(), l.strides()),
        Order::RowMajorOrTransposed => {
            exact && (l.is_contiguous() || transposed_2d(l.shape().as_slice(), l.strides()).is_some())
        }
    };
    Ok(if usable { p } else { p.to_contiguous() })
}

/// A flex primitive back as a tensor (of the plain flex device).
pub(super) fn from_flex<const D: usize>(p: FlexTensor) -> Tensor<D> {
    Tensor::from_primitive::<Flex>(p)
}
