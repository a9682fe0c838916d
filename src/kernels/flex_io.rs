//! Flex tensors to and from the `f32` slices the CPU kernels work on.

use std::borrow::Cow;

use burn::backend::flex::FlexTensor;
use burn::tensor::TensorData;

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
