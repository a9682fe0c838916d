//! The per-parameter arithmetic after the backward (SPEC §4.3: the global-norm clip's sums of
//! squares, AdamW and the weight EMA) as one CubeCL launch per parameter tensor, as
//! [`super::super::cpu::optim`] is one pass on the CPU.
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
use burn::backend::ops::FloatTensorOps;
use burn::tensor::Shape;
use burn_cubecl::CubeBackend;
use burn_cubecl::CubeDevice;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::calculate_cube_count_elemwise;
use cubecl::prelude::*;

use crate::kernels::cpu::optim::StepConsts;

/// One AdamW update of element `i` (when inside `p_out`): the moments, then the decayed
/// parameter minus the step. `g` is read through its strides when `strided` (a transposed
/// weight gradient, read in place instead of copied), and multiplied by `scale[0]` when
/// `scaled` (the global-norm clip's factor, applied here instead of by a launch of its own
/// per gradient).
#[cube]
#[allow(clippy::too_many_arguments)]
fn adamw_at(
    p: &Tensor<f32>,
    g: &Tensor<f32>,
    m: &Tensor<f32>,
    v: &Tensor<f32>,
    p_out: &mut Tensor<f32>,
    m_out: &mut Tensor<f32>,
    v_out: &mut Tensor<f32>,
    moments: &Tensor<f32>,
    scale: &Tensor<f32>,
    i: usize,
    #[comptime] decays: bool,
    #[comptime] strided: bool,
    #[comptime] scaled: bool,
) {
    if i < p_out.len() {
        // [b1, b2, f1, f2, c1, c2, eps, keep, lr]
        let mut at = i;
        if strided {
            // The row-major index i of p as an offset into g's buffer, last axis first.
            let rank = g.rank();
            let mut rest = i;
            at = 0;
            for k in 0..rank {
                let d = rank - 1 - k;
                at += (rest % g.shape(d)) * g.stride(d);
                rest /= g.shape(d);
            }
        }
        let mut gj = g[at];
        if scaled {
            gj *= scale[0];
        }
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

/// [`adamw_at`] for every element of one parameter.
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
    scale: &Tensor<f32>,
    #[comptime] decays: bool,
    #[comptime] strided: bool,
    #[comptime] scaled: bool,
) {
    adamw_at(
        p,
        g,
        m,
        v,
        p_out,
        m_out,
        v_out,
        moments,
        scale,
        ABSOLUTE_POS,
        decays,
        strided,
        scaled,
    );
}

/// [`adamw_kernel`] for up to [`ADAMW_GROUP`] parameters of one kind (one set of constants, one
/// `strided`, one `scaled`): cube row `y` steps slot `y` (rows past the group's size are not
/// launched; their slots are placeholders), each unit an element every `CUBE_COUNT_X`
/// cubes' width up to `n`, the group's largest size.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn adamw_group_kernel(
    p0: &Tensor<f32>,
    g0: &Tensor<f32>,
    m0: &Tensor<f32>,
    v0: &Tensor<f32>,
    po0: &mut Tensor<f32>,
    mo0: &mut Tensor<f32>,
    vo0: &mut Tensor<f32>,
    p1: &Tensor<f32>,
    g1: &Tensor<f32>,
    m1: &Tensor<f32>,
    v1: &Tensor<f32>,
    po1: &mut Tensor<f32>,
    mo1: &mut Tensor<f32>,
    vo1: &mut Tensor<f32>,
    p2: &Tensor<f32>,
    g2: &Tensor<f32>,
    m2: &Tensor<f32>,
    v2: &Tensor<f32>,
    po2: &mut Tensor<f32>,
    mo2: &mut Tensor<f32>,
    vo2: &mut Tensor<f32>,
    p3: &Tensor<f32>,
    g3: &Tensor<f32>,
    m3: &Tensor<f32>,
    v3: &Tensor<f32>,
    po3: &mut Tensor<f32>,
    mo3: &mut Tensor<f32>,
    vo3: &mut Tensor<f32>,
    moments: &Tensor<f32>,
    scale: &Tensor<f32>,
    n: usize,
    #[comptime] decays: bool,
    #[comptime] strided: bool,
    #[comptime] scaled: bool,
) {
    let y = CUBE_POS_Y as usize;
    let step = CUBE_COUNT_X as usize * CUBE_DIM_X as usize;
    let mut i = CUBE_POS_X as usize * CUBE_DIM_X as usize + UNIT_POS_X as usize;
    while i < n {
        if y == 0 {
            adamw_at(
                p0, g0, m0, v0, po0, mo0, vo0, moments, scale, i, decays, strided, scaled,
            );
        } else if y == 1 {
            adamw_at(
                p1, g1, m1, v1, po1, mo1, vo1, moments, scale, i, decays, strided, scaled,
            );
        } else if y == 2 {
            adamw_at(
                p2, g2, m2, v2, po2, mo2, vo2, moments, scale, i, decays, strided, scaled,
            );
        } else {
            adamw_at(
                p3, g3, m3, v3, po3, mo3, vo3, moments, scale, i, decays, strided, scaled,
            );
        }
        i += step;
    }
}

/// `out[i] = ema[i] · ab[0] + model[i] · ab[1]` when `i` is inside `out`.
#[cube]
fn blend_at(ema: &Tensor<f32>, model: &Tensor<f32>, out: &mut Tensor<f32>, ab: &Tensor<f32>, i: usize) {
    if i < out.len() {
        out[i] = ema[i] * ab[0] + model[i] * ab[1];
    }
}

/// [`blend_at`] for every element of one tensor.
#[cube(launch)]
fn blend_kernel(ema: &Tensor<f32>, model: &Tensor<f32>, out: &mut Tensor<f32>, ab: &Tensor<f32>) {
    blend_at(ema, model, out, ab, ABSOLUTE_POS);
}

/// [`blend_kernel`] for up to [`GROUP`] tensors: cube row `y` blends slot `y` (rows past the
/// group's size are not launched; their slots are placeholders), each unit an element
/// every `CUBE_COUNT_X` cubes' width.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn blend_group_kernel(
    e0: &Tensor<f32>,
    m0: &Tensor<f32>,
    o0: &mut Tensor<f32>,
    e1: &Tensor<f32>,
    m1: &Tensor<f32>,
    o1: &mut Tensor<f32>,
    e2: &Tensor<f32>,
    m2: &Tensor<f32>,
    o2: &mut Tensor<f32>,
    e3: &Tensor<f32>,
    m3: &Tensor<f32>,
    o3: &mut Tensor<f32>,
    e4: &Tensor<f32>,
    m4: &Tensor<f32>,
    o4: &mut Tensor<f32>,
    e5: &Tensor<f32>,
    m5: &Tensor<f32>,
    o5: &mut Tensor<f32>,
    e6: &Tensor<f32>,
    m6: &Tensor<f32>,
    o6: &mut Tensor<f32>,
    e7: &Tensor<f32>,
    m7: &Tensor<f32>,
    o7: &mut Tensor<f32>,
    ab: &Tensor<f32>,
    n: usize,
) {
    let y = CUBE_POS_Y as usize;
    let step = CUBE_COUNT_X as usize * CUBE_DIM_X as usize;
    let mut i = CUBE_POS_X as usize * CUBE_DIM_X as usize + UNIT_POS_X as usize;
    // `n` is the group's largest size: a bound the loop needs to be a plain one.
    while i < n {
        if y == 0 {
            blend_at(e0, m0, o0, ab, i);
        } else if y == 1 {
            blend_at(e1, m1, o1, ab, i);
        } else if y == 2 {
            blend_at(e2, m2, o2, ab, i);
        } else if y == 3 {
            blend_at(e3, m3, o3, ab, i);
        } else if y == 4 {
            blend_at(e4, m4, o4, ab, i);
        } else if y == 5 {
            blend_at(e5, m5, o5, ab, i);
        } else if y == 6 {
            blend_at(e6, m6, o6, ab, i);
        } else {
            blend_at(e7, m7, o7, ab, i);
        }
        i += step;
    }
}

/// Units of a [`sum_squares_kernel`] cube, and the elements each unit adds up: a cube
/// covers `SS_UNITS · SS_PER_UNIT` elements. `SS_UNITS` is a power of two: the reduction
/// in shared memory halves it.
const SS_UNITS: usize = 256;
const SS_PER_UNIT: usize = 64;

/// Tensors one grouped launch ([`sum_squares_group_kernel`], [`blend_group_kernel`]) takes:
/// its slots are separate bindings, so a kernel body is selected per cube row, unrolled.
pub const GROUP: usize = 8;

/// This unit's share of `Σ g²` over the cube starting at `start`: `per_unit` elements a
/// cube's width apart.
#[cube]
fn unit_squares(g: &Tensor<f32>, start: usize, #[comptime] units: usize, #[comptime] per_unit: usize) -> f32 {
    let u = UNIT_POS as usize;
    let n = g.len();
    let mut acc = 0.0f32;
    for k in 0..per_unit {
        let i = start + k * units + u;
        if i < n {
            let v = g[i];
            acc += v * v;
        }
    }
    acc
}

/// The sum of squares of one stretch of a tensor per cube: cube row `y` reads slot `g{y}`
/// (rows past the group's size are not launched; their slots are placeholders), cube
/// column `x` its `x`-th stretch, and writes `partial[first + y · cubes + x]`, 0 past the
/// tensor's end. Each unit adds up its elements, then the cube adds its units' sums in
/// shared memory.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn sum_squares_group_kernel(
    g0: &Tensor<f32>,
    g1: &Tensor<f32>,
    g2: &Tensor<f32>,
    g3: &Tensor<f32>,
    g4: &Tensor<f32>,
    g5: &Tensor<f32>,
    g6: &Tensor<f32>,
    g7: &Tensor<f32>,
    partial: &mut Tensor<f32>,
    first: usize,
    cubes: usize,
    #[comptime] units: usize,
    #[comptime] per_unit: usize,
) {
    let mut shared = Shared::<[f32]>::new_slice(units);
    let u = UNIT_POS as usize;
    let (x, y) = (CUBE_POS_X as usize, CUBE_POS_Y as usize);
    let start = x * units * per_unit;
    let acc = if y == 0 {
        unit_squares(g0, start, units, per_unit)
    } else if y == 1 {
        unit_squares(g1, start, units, per_unit)
    } else if y == 2 {
        unit_squares(g2, start, units, per_unit)
    } else if y == 3 {
        unit_squares(g3, start, units, per_unit)
    } else if y == 4 {
        unit_squares(g4, start, units, per_unit)
    } else if y == 5 {
        unit_squares(g5, start, units, per_unit)
    } else if y == 6 {
        unit_squares(g6, start, units, per_unit)
    } else {
        unit_squares(g7, start, units, per_unit)
    };
    shared[u] = acc;
    sync_cube();
    // From CUBE_DIM (= units), a runtime value: a comptime one cannot be reassigned.
    let mut stride = CUBE_DIM as usize / 2;
    while stride > 0 {
        if u < stride {
            let both = shared[u] + shared[u + stride];
            shared[u] = both;
        }
        sync_cube();
        stride /= 2;
    }
    if u == 0 {
        let total = shared[0];
        partial[first + y * cubes + x] = total;
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

/// Whether `t`'s elements fill its buffer exactly, in some order of its axes: a contiguous
/// tensor or a permuted one (a transposed weight gradient), with no gaps, overlap or
/// broadcast. Reading such a buffer from 0 to n visits every element once.
fn dense(t: &CubeTensor) -> bool {
    let (shape, strides) = (t.meta.shape(), t.meta.strides());
    let mut axes: Vec<(usize, usize)> = strides
        .iter()
        .zip(shape.iter())
        .filter(|(_, n)| **n != 1)
        .map(|(s, n)| (*s, *n))
        .collect();
    axes.sort_unstable();
    let mut expected = 1;
    for (stride, n) in axes {
        if stride != expected {
            return false;
        }
        expected *= n;
    }
    true
}

/// One AdamW step of the `f32` parameter `p` with its gradient `g` and moments `m`, `v`
/// (all of one shape), the gradient first multiplied by `scale` (a `[1]` tensor on the
/// device) when there is one: the new parameter and moments. One launch: a gradient that
/// is not contiguous (a transposed weight gradient) is read through its strides; the
/// parameter and moments are contiguous unless a caller made them otherwise (then they
/// are copied first).
pub fn adamw(
    p: CubeTensor,
    g: CubeTensor,
    m: CubeTensor,
    v: CubeTensor,
    scale: Option<CubeTensor>,
    k: StepConsts,
) -> [CubeTensor; 3] {
    let (p, m, v) = (into_contiguous(p), into_contiguous(m), into_contiguous(v));
    let strided = !g.is_contiguous();
    let (p_out, m_out, v_out) = (empty_like(&p), empty_like(&p), empty_like(&p));
    let n = p.shape().num_elements();
    if n > 0 {
        let consts = constants(&p, &[k.b1, k.b2, k.f1, k.f2, k.c1, k.c2, k.eps, k.keep, k.lr]);
        let scaled = scale.is_some();
        // Unread when not `scaled`; a binding is needed all the same.
        let scale = scale.map_or_else(|| consts.clone(), into_contiguous);
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
            scale.into_tensor_arg(),
            k.decays,
            strided,
            scaled,
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

/// An AdamW step waiting in an [`AdamwQueue`]: inputs, the outputs already handed out, and
/// what makes steps launchable together.
struct AdamwJob {
    tensors: [CubeTensor; 7],
    scale: Option<CubeTensor>,
    k: StepConsts,
    strided: bool,
}

impl AdamwJob {
    /// Steps with equal keys share a launch: one device, one set of constants (a parameter
    /// group's learning rate and decay at one step count), one gradient layout, one factor.
    fn key(&self) -> (CubeDevice, [u32; 9], [bool; 3]) {
        let k = &self.k;
        let consts = [k.b1, k.b2, k.f1, k.f2, k.c1, k.c2, k.eps, k.keep, k.lr].map(f32::to_bits);
        let flags = [k.decays, self.strided, self.scale.is_some()];
        (self.tensors[0].device.clone(), consts, flags)
    }
}

/// AdamW steps of many parameters launched [`ADAMW_GROUP`] at a time
/// ([`adamw_group_kernel`]): [`AdamwQueue::push`] hands out a step's outputs at once and
/// launches the step with three others of its kind; [`AdamwQueue::flush`] launches what
/// still waits.
///
/// The outputs are written when their launch runs: nothing may read them before the queue
/// is flushed (the optimiser only puts them into the module and its state). Dropping the
/// queue flushes it.
#[derive(Default)]
pub struct AdamwQueue {
    waiting: Vec<AdamwJob>,
}

/// Parameters one [`adamw_group_kernel`] launch steps: 4 × 7 tensors and 2 more are 30
/// bindings, within the 31 storage buffers wgpu grants on Mesa's lavapipe (Metal: 30).
pub const ADAMW_GROUP: usize = 4;

/// Bindings an [`adamw_group_kernel`] launch needs: 7 per slot, the constants and the factor.
const ADAMW_GROUP_BINDINGS: u32 = 7 * ADAMW_GROUP as u32 + 2;

impl AdamwQueue {
    /// [`adamw`]'s step, queued: its new parameter and moments, written by a later launch
    /// (at once where the device cannot bind a group).
    pub fn push(
        &mut self,
        p: CubeTensor,
        g: CubeTensor,
        m: CubeTensor,
        v: CubeTensor,
        scale: Option<CubeTensor>,
        k: StepConsts,
    ) -> [CubeTensor; 3] {
        if !binds(&p, ADAMW_GROUP_BINDINGS) {
            return adamw(p, g, m, v, scale, k);
        }
        let (p, m, v) = (into_contiguous(p), into_contiguous(m), into_contiguous(v));
        let strided = !g.is_contiguous();
        let out = [empty_like(&p), empty_like(&p), empty_like(&p)];
        if p.shape().num_elements() == 0 {
            return out;
        }
        let [po, mo, vo] = out.clone();
        let job = AdamwJob {
            tensors: [p, g, m, v, po, mo, vo],
            scale: scale.map(into_contiguous),
            k,
            strided,
        };
        let key = job.key();
        self.waiting.push(job);
        if self.waiting.iter().filter(|j| j.key() == key).count() == ADAMW_GROUP {
            self.launch(&key);
        }
        out
    }

    /// Launch every waiting step, a group per kind.
    pub fn flush(&mut self) {
        while let Some(key) = self.waiting.first().map(AdamwJob::key) {
            self.launch(&key);
        }
    }

    /// One launch of the (at most [`ADAMW_GROUP`]) waiting steps of kind `key`.
    fn launch(&mut self, key: &(CubeDevice, [u32; 9], [bool; 3])) {
        let (group, rest): (Vec<AdamwJob>, Vec<AdamwJob>) = std::mem::take(&mut self.waiting)
            .into_iter()
            .partition(|j| j.key() == *key);
        self.waiting = rest;
        let Some(first) = group.first() else {
            return;
        };
        let (p, k) = (&first.tensors[0], &first.k);
        let client = p.client.clone();
        let consts = constants(p, &[k.b1, k.b2, k.f1, k.f2, k.c1, k.c2, k.eps, k.keep, k.lr]);
        // Unread when not scaled; a binding is needed all the same.
        let scale = first.scale.clone().unwrap_or_else(|| consts.clone());
        let spare = empty_device_contiguous_dtype(client.clone(), p.device.clone(), Shape::from(vec![1]), p.dtype);
        let (decays, strided, scaled) = (k.decays, first.strided, first.scale.is_some());
        let n = group
            .iter()
            .map(|j| j.tensors[0].shape().num_elements())
            .max()
            .unwrap_or(0);
        let rows = group.len() as u32;
        let mut args = group.into_iter().flat_map(|j| j.tensors);
        let mut next = || args.next().unwrap_or_else(|| spare.clone()).into_tensor_arg();
        adamw_group_kernel::launch(
            &client,
            CubeCount::Static(n.div_ceil(256).min(ROW_MAX_CUBES) as u32, rows, 1),
            CubeDim::new_1d(256),
            next(),
            next(),
            next(),
            next(),
            next(),
            next(),
            next(),
            next(),
            next(),
            next(),
            next(),
            next(),
            next(),
            next(),
            next(),
            next(),
            next(),
            next(),
            next(),
            next(),
            next(),
            next(),
            next(),
            next(),
            next(),
            next(),
            next(),
            next(),
            consts.into_tensor_arg(),
            scale.into_tensor_arg(),
            n,
            decays,
            strided,
            scaled,
        );
    }
}

impl Drop for AdamwQueue {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Cubes along a row of a grouped launch ([`blend_group_kernel`], [`adamw_group_kernel`])
/// at most: a tensor larger than this many cubes' width is covered by each unit more than
/// once (few times: 4,096 · 256 elements a pass).
const ROW_MAX_CUBES: usize = 4096;

/// `ema · a + model · b` for each pair, each of one shape (pairs may differ): one launch per
/// [`GROUP`] pairs, into fresh buffers, in the order given.
pub fn blend_all(pairs: Vec<(CubeTensor, CubeTensor)>, a: f32, b: f32) -> Vec<CubeTensor> {
    let pairs: Vec<(CubeTensor, CubeTensor, CubeTensor)> = pairs
        .into_iter()
        .map(|(e, m)| {
            let (e, m) = (into_contiguous(e), into_contiguous(m));
            let out = empty_like(&e);
            (e, m, out)
        })
        .collect();
    let Some((like, _, _)) = pairs.first() else {
        return Vec::new();
    };
    let (client, device, dtype) = (like.client.clone(), like.device.clone(), like.dtype);
    let ab = constants(like, &[a, b]);
    let spare = empty_device_contiguous_dtype(client.clone(), device, Shape::from(vec![1]), dtype);
    // Largest first, so that a group's tensors are of similar sizes and few units idle.
    let mut order: Vec<usize> = (0..pairs.len()).collect();
    order.sort_by_key(|&k| std::cmp::Reverse(pairs[k].0.shape().num_elements()));
    let dim = CubeDim::new_1d(256);
    for group in order.chunks(GROUP) {
        let n = pairs[group[0]].0.shape().num_elements();
        if n == 0 {
            continue;
        }
        let cubes = n.div_ceil(256).min(ROW_MAX_CUBES);
        let mut args = group.iter().flat_map(|&k| {
            let (e, m, o) = &pairs[k];
            [e.clone(), m.clone(), o.clone()]
        });
        let mut next = || args.next().unwrap_or_else(|| spare.clone()).into_tensor_arg();
        blend_group_kernel::launch(
            &client,
            CubeCount::Static(cubes as u32, group.len() as u32, 1),
            dim,
            next(),
            next(),
            next(),
            next(),
            next(),
            next(),
            next(),
            next(),
            next(),
            next(),
            next(),
            next(),
            next(),
            next(),
            next(),
            next(),
            next(),
            next(),
            next(),
            next(),
            next(),
            next(),
            next(),
            next(),
            ab.clone().into_tensor_arg(),
            n,
        );
    }
    pairs.into_iter().map(|(_, _, out)| out).collect()
}

/// Bindings a [`blend_group_kernel`] launch needs: 3 per slot and the constants.
const BLEND_GROUP_BINDINGS: u32 = 3 * GROUP as u32 + 1;

/// Whether `t`'s device can bind `tensors` tensors in one launch, beside the buffer of
/// CubeCL's own metadata: a grouped launch's test (not on a WebGPU with its default 8).
fn binds(t: &CubeTensor, tensors: u32) -> bool {
    t.client.properties().hardware.max_bindings > tensors
}

/// Whether `t`'s device can bind a [`blend_group_kernel`]'s tensors in one launch.
pub fn groups_fit(t: &CubeTensor) -> bool {
    binds(t, BLEND_GROUP_BINDINGS)
}

/// `Σ x²` over all elements of the `f32` tensors `ts` (one device, at least one tensor), as
/// a `[1]` tensor on that device: one launch per [`GROUP`] tensors, whose cubes each leave a
/// partial sum (one per 16,384 elements), then burn's sum of the partials. Nothing is read
/// back.
pub fn sum_squares(ts: Vec<CubeTensor>) -> CubeTensor {
    let per_cube = SS_UNITS * SS_PER_UNIT;
    // The order of the elements does not matter to a sum: a permuted gradient is summed
    // from its buffer as it is. Nor does the order of the tensors: largest first, so that
    // a group's tensors span similar numbers of cubes and few cubes idle.
    let mut ts: Vec<(usize, CubeTensor)> = ts
        .into_iter()
        .map(|t| if dense(&t) { t } else { into_contiguous(t) })
        .map(|t| (t.shape().num_elements().div_ceil(per_cube).max(1), t))
        .collect();
    ts.sort_by_key(|(cubes, _)| std::cmp::Reverse(*cubes));
    let like = ts[0].1.clone();
    let client = like.client.clone();
    // A group's row of cubes is as wide as its largest tensor needs.
    let groups: Vec<&[(usize, CubeTensor)]> = ts.chunks(GROUP).collect();
    let slots: usize = groups.iter().map(|g| g.len() * g[0].0).sum();
    let partial = empty_device_contiguous_dtype(
        client.clone(),
        like.device.clone(),
        Shape::from(vec![slots]),
        like.dtype,
    );
    // Placeholders for the slots of a short last group; never read.
    let spare = empty_device_contiguous_dtype(client.clone(), like.device.clone(), Shape::from(vec![1]), like.dtype);
    let mut first = 0;
    for group in groups {
        let cubes = group[0].0;
        let mut g = group.iter().map(|(_, t)| t.clone());
        let mut next = || g.next().unwrap_or_else(|| spare.clone()).into_tensor_arg();
        sum_squares_group_kernel::launch(
            &client,
            CubeCount::Static(cubes as u32, group.len() as u32, 1),
            CubeDim::new_1d(SS_UNITS as u32),
            next(),
            next(),
            next(),
            next(),
            next(),
            next(),
            next(),
            next(),
            partial.clone().into_tensor_arg(),
            first,
            cubes,
            SS_UNITS,
            SS_PER_UNIT,
        );
        first += group.len() * cubes;
    }
    CubeBackend::float_sum(partial)
}
