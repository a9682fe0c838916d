//! GELU (the transformer's MLP activation, SPEC §3.3) as CubeCL kernels: one launch forward,
//! one backward, where burn's is a division, `erf`, a sum and two products forward and more
//! backward. The backward is the exact derivative (PyTorch's; burn's tensor-op backward is
//! that of the tanh approximation).

use burn::backend::TensorMetadata;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::calculate_cube_count_elemwise;
use cubecl::prelude::*;

/// `1/√2` and `1/√(2π)`.
const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;

/// `x/2 · (1 + erf(x/√2))` per element.
#[cube(launch)]
fn gelu_kernel(x: &Tensor<f32>, out: &mut Tensor<f32>) {
    let i = ABSOLUTE_POS;
    if i < out.len() {
        let v = x[i];
        out[i] = v * 0.5f32 * (1.0f32 + Erf::erf(v * FRAC_1_SQRT_2));
    }
}

/// `dy · (Φ(x) + x · φ(x))` per element: GELU's derivative, `Φ` the normal CDF and `φ` its
/// density.
#[cube(launch)]
fn gelu_backward_kernel(x: &Tensor<f32>, dy: &Tensor<f32>, dx: &mut Tensor<f32>) {
    let i = ABSOLUTE_POS;
    if i < dx.len() {
        let v = x[i];
        let cdf = 0.5f32 * (1.0f32 + Erf::erf(v * FRAC_1_SQRT_2));
        let pdf = f32::exp(-0.5f32 * v * v) * FRAC_1_SQRT_2PI;
        dx[i] = dy[i] * (cdf + v * pdf);
    }
}

fn empty_like(t: &CubeTensor) -> CubeTensor {
    empty_device_contiguous_dtype(t.client.clone(), t.device.clone(), t.shape(), t.dtype)
}

/// GELU of an `f32` tensor. One launch (plus a copy of a tensor that is not contiguous).
pub fn forward(x: CubeTensor) -> CubeTensor {
    let x = into_contiguous(x);
    let out = empty_like(&x);
    let n = x.shape().num_elements();
    if n > 0 {
        let client = x.client.clone();
        let dim = CubeDim::new_1d(256);
        gelu_kernel::launch(
            &client,
            calculate_cube_count_elemwise(&client, n, dim),
            dim,
            x.into_tensor_arg(),
            out.clone().into_tensor_arg(),
        );
    }
    out
}

/// The input gradient of GELU at `x` from the output's gradient `dy` (one shape). One launch.
pub fn backward(x: CubeTensor, dy: CubeTensor) -> CubeTensor {
    let (x, dy) = (into_contiguous(x), into_contiguous(dy));
    let dx = empty_like(&x);
    let n = x.shape().num_elements();
    if n > 0 {
        let client = x.client.clone();
        let dim = CubeDim::new_1d(256);
        gelu_backward_kernel::launch(
            &client,
            calculate_cube_count_elemwise(&client, n, dim),
            dim,
            x.into_tensor_arg(),
            dy.into_tensor_arg(),
            dx.clone().into_tensor_arg(),
        );
    }
    dx
}
