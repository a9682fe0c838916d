//! The per-parameter arithmetic after the backward (SPEC §4.3: AdamW and the weight EMA) as
//! one CubeCL launch per parameter tensor, as [`super::super::cpu::optim`] is one pass on
//! the CPU.
//!
//! Why: burn's AdamW is about a dozen element-wise kernels per parameter tensor (moments,
//! bias corrections, square root, decay, update) and the EMA three; for the paper model's
//! few hundred parameter tensors that is thousands of launches per iteration on a GPU
//! (issue #16). The arithmetic is burn's, in its order, as the CPU kernel's is.
//!
//! Outputs are fresh buffers (burn's memory pool reuses them), not in-place writes: a
//! parameter's buffer may be shared by another handle (a clone of the model) that must keep
//! its values.

use burn::backend::TensorMetadata;
use burn::tensor::Shape;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::calculate_cube_count_elemwise;
use cubecl::prelude::*;

use crate::kernels::cpu::optim::StepConsts;

/// One AdamW update per element: the moments, then the decayed parameter minus the step.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn adamw_kernel(
    p: &Tensor<f32>,
    g: &Tensor<f32>,
    m: &Tensor<f32>,
    v: &Tensor<f32>,
    p_out: &mut Tensor<f32>,
    m_out: &mut Tensor<f32>,
    v_out: &mut Tensor<f32>,
    moments: &Tensor<f32>,
    #[comptime] decays: bool,
) {
    let i = ABSOLUTE_POS;
    if i < p_out.len() {
        // [b1, b2, f1, f2, c1, c2, eps, keep, lr]
        let gj = g[i];
        let mj = m[i] * moments[0] + gj * moments[2];
        let vj = v[i] * moments[1] + gj * gj * moments[3];
        m_out[i] = mj;
        v_out[i] = vj;
        let delta = (mj / moments[4]) / (f32::sqrt(vj / moments[5]) + moments[6]);
        let mut kept = p[i];
        if decays {
            kept *= moments[7];
        }
        p_out[i] = kept - delta * moments[8];
    }
}

/// `ema · a + model · b` per element.
#[cube(launch)]
fn blend_kernel(ema: &Tensor<f32>, model: &Tensor<f32>, out: &mut Tensor<f32>, ab: &Tensor<f32>) {
    let i = ABSOLUTE_POS;
    if i < out.len() {
        out[i] = ema[i] * ab[0] + model[i] * ab[1];
    }
}

fn empty_like(t: &CubeTensor) -> CubeTensor {
    empty_device_contiguous_dtype(t.client.clone(), t.device.clone(), t.shape(), t.dtype)
}

/// A small `f32` tensor of constants on `like`'s device (an upload, not a read back).
fn constants(like: &CubeTensor, values: &[f32]) -> CubeTensor {
    let handle = like.client.create_from_slice(f32::as_bytes(values));
    CubeTensor::new_contiguous(
        like.client.clone(),
        like.device.clone(),
        Shape::from(vec![values.len()]),
        handle,
        like.dtype,
    )
}

/// One AdamW step of the `f32` parameter `p` with its gradient `g` and moments `m`, `v`
/// (all of one shape): the new parameter and moments. One launch (plus a copy of any operand
/// that is not contiguous, such as a transposed weight gradient).
pub fn adamw(p: CubeTensor, g: CubeTensor, m: CubeTensor, v: CubeTensor, k: StepConsts) -> [CubeTensor; 3] {
    let (p, g, m, v) = (
        into_contiguous(p),
        into_contiguous(g),
        into_contiguous(m),
        into_contiguous(v),
    );
    let (p_out, m_out, v_out) = (empty_like(&p), empty_like(&p), empty_like(&p));
    let n = p.shape().num_elements();
    if n > 0 {
        let consts = constants(&p, &[k.b1, k.b2, k.f1, k.f2, k.c1, k.c2, k.eps, k.keep, k.lr]);
        let client = p.client.clone();
        let dim = CubeDim::new_1d(256);
        adamw_kernel::launch(
            &client,
            calculate_cube_count_elemwise(&client, n, dim),
            dim,
            p.into_tensor_arg(),
            g.into_tensor_arg(),
            m.into_tensor_arg(),
            v.into_tensor_arg(),
            p_out.clone().into_tensor_arg(),
            m_out.clone().into_tensor_arg(),
            v_out.clone().into_tensor_arg(),
            consts.into_tensor_arg(),
            k.decays,
        );
    }
    [p_out, m_out, v_out]
}

/// `ema · a + model · b` for two `f32` tensors of one shape. One launch.
pub fn blend(ema: CubeTensor, model: CubeTensor, a: f32, b: f32) -> CubeTensor {
    let (ema, model) = (into_contiguous(ema), into_contiguous(model));
    let out = empty_like(&ema);
    let n = ema.shape().num_elements();
    if n > 0 {
        let ab = constants(&ema, &[a, b]);
        let client = ema.client.clone();
        let dim = CubeDim::new_1d(256);
        blend_kernel::launch(
            &client,
            calculate_cube_count_elemwise(&client, n, dim),
            dim,
            ema.into_tensor_arg(),
            model.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            ab.into_tensor_arg(),
        );
    }
    out
}
