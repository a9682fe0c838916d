//! A ConvLSTM layer's recurrence (SPEC §3.1 step 1) as CubeCL kernels, written once for
//! burn's `CubeBackend` (CUDA, wgpu, any CubeCL runtime).
//!
//! Why: as tensor ops each of the T steps is ~20 small kernels (the hidden half's conv, the
//! gate slices, sigmoids, products), forward and backward, so a training iteration of the
//! paper's configuration launches thousands of kernels and a GPU waits on launches, not
//! arithmetic (issue #16). Here the whole time loop of a layer is **one launch**: one cube per
//! video walks the T steps, each unit owning a fixed set of (channel, pixel) items of the
//! state, with a storage barrier between steps (step t+1 reads the neighbours of h_t that
//! other units wrote). The backward through time is one launch the same way, walking the
//! steps backwards and leaving `d gates` (pre-activation) for every step. A sequence too long
//! for one launch's loop budget ([`steps_per_launch`]; about 990 steps at the paper's state
//! size) is walked in several launches that carry the state through their buffers.
//!
//! The input half of the gates, `conv(x_t, wx) + bias`, does not depend on the state: the
//! caller computes it for all B·T frames in one batched conv (burn's, with its own backward)
//! and passes it in as `gx`; its gradient is this backward's `dgx`. The hidden half's weight
//! gradient is one batched conv weight-gradient of `dgx` against the previous hidden states.
//!
//! Layout: contiguous, batch-major. Gate order i, f, o, g (ConvLSTM_pytorch).
//!
//! Parallelism: B cubes, one per video, because a step depends on the whole previous step
//! of its video and CubeCL has no barrier across cubes. At the paper's B = 2 that leaves most
//! of a large GPU idle; the launch count, not the arithmetic, is what this removes.

use burn::backend::TensorMetadata;
use burn::backend::ops::{FloatTensorOps, ModuleOps};
use burn::tensor::Shape;
use burn::tensor::ops::ConvOptions;
use burn_cubecl::CubeBackend;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::calculate_cube_count_elemwise;
use cubecl::prelude::*;

/// Units per cube: the runtime's maximum, at most 1024 (items beyond it loop).
fn units(t: &CubeTensor) -> u32 {
    t.client.properties().hardware.max_units_per_cube.clamp(1, 1024)
}

/// Loop iterations one unit may run in one launch.
///
/// Why a budget: Mesa's llvmpipe (lavapipe, the Vulkan driver CI tests on) ends a shader
/// invocation silently after 65,535 loop iterations, counted over all its loops
/// (`LP_MAX_TGSI_LOOP_ITERATIONS`); the rest of its writes never happen. The 3 × 3 conv and
/// the channel loops are unrolled (comptime sizes), so what loops is the time loop and each
/// unit's items; half the limit leaves room for the loops the shader compiler adds.
const LOOP_BUDGET: usize = 32_768;

/// How many steps one launch of a layer's recurrence walks: as many as keep each unit
/// within [`LOOP_BUDGET`], at least one. At the paper's 8 × 64 × 64 state and 1024 units
/// that is 992 steps, so T = 128 is one launch.
pub fn steps_per_launch(state: usize, units: u32) -> usize {
    let per_step = state.div_ceil(units.max(1) as usize) + 1;
    (LOOP_BUDGET / per_step).max(1)
}

/// `1 / (1 + e^-v)`, saturating cleanly at both ends.
#[cube]
fn sigmoid(v: f32) -> f32 {
    1.0f32 / (1.0f32 + f32::exp(-v))
}

/// `tanh v` as `1 − 2 / (e^{2v} + 1)`: exact limits ±1 where `e^{2v}` overflows or
/// vanishes (some shader `tanh`s return NaN for large arguments).
#[cube]
fn tanh_of(v: f32) -> f32 {
    1.0f32 - 2.0f32 / (f32::exp(2.0f32 * v) + 1.0f32)
}

/// The hidden half of gate row `row` at pixel (y, x): `Σ wh[row, c, ky, kx] · src[base +
/// c·HW + (y + ky − r)·W + (x + kx − r)]`, zero padding. `hd` and `k` are comptime, so the
/// loops unroll (no loop iterations, see [`LOOP_BUDGET`]). `src` is only read; it is `&mut`
/// because one caller passes the kernel's output (CubeCL will not lend that as `&`).
#[cube]
#[allow(clippy::too_many_arguments)]
fn hidden_conv(
    src: &mut Tensor<f32>,
    base: usize,
    wh: &Tensor<f32>,
    row: usize,
    y: usize,
    x: usize,
    height: usize,
    width: usize,
    #[comptime] hd: usize,
    #[comptime] k: usize,
) -> f32 {
    let r = k / 2;
    let hw = height * width;
    let mut acc = 0.0f32;
    #[unroll]
    for c in 0..hd {
        #[unroll]
        for ky in 0..k {
            let yy = y + ky;
            if yy >= r && yy < height + r {
                #[unroll]
                for kx in 0..k {
                    let xx = x + kx;
                    if xx >= r && xx < width + r {
                        let w = wh[((row * hd + c) * k + ky) * k + kx];
                        acc += w * src[base + c * hw + (yy - r) * width + (xx - r)];
                    }
                }
            }
        }
    }
    acc
}

/// The forward of one layer over steps `first..last`; one cube per video.
///
/// `c` is the running cell state (its start is read from `c0` at step 0) and ends as the
/// last step's; a launch that starts after step 0 continues from `c` and the hidden state
/// the previous launch left. With `save`, the activated gates and every step's cell state
/// are kept for the backward; otherwise `gates` and `cells` are not touched. `h0` is only
/// read (`&mut` for [`hidden_conv`]).
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn lstm_forward(
    gx: &Tensor<f32>,
    wh: &Tensor<f32>,
    h0: &mut Tensor<f32>,
    c0: &Tensor<f32>,
    c: &mut Tensor<f32>,
    hidden: &mut Tensor<f32>,
    gates: &mut Tensor<f32>,
    cells: &mut Tensor<f32>,
    first: usize,
    last: usize,
    #[comptime] hd: usize,
    #[comptime] k: usize,
    #[comptime] save: bool,
) {
    let b = CUBE_POS;
    let steps = hidden.shape(1);
    let height = hidden.shape(3);
    let width = hidden.shape(4);
    let hw = height * width;
    let state = hd * hw;
    for t in first..last {
        let gbase = (b * steps + t) * 4 * state; // gates of step t: [4h, H, W]
        let obase = (b * steps + t) * state; // state of step t: [h, H, W]
        let mut item = UNIT_POS as usize;
        while item < state {
            let j = item / hw;
            let p = item - j * hw;
            let y = p / width;
            let x = p - y * width;
            let mut ai = gx[gbase + j * hw + p];
            let mut af = gx[gbase + (hd + j) * hw + p];
            let mut ao = gx[gbase + (2 * hd + j) * hw + p];
            let mut ag = gx[gbase + (3 * hd + j) * hw + p];
            let mut c_prev = c0[b * state + item];
            if t == 0 {
                let base = b * state;
                ai += hidden_conv(h0, base, wh, j, y, x, height, width, hd, k);
                af += hidden_conv(h0, base, wh, hd + j, y, x, height, width, hd, k);
                ao += hidden_conv(h0, base, wh, 2 * hd + j, y, x, height, width, hd, k);
                ag += hidden_conv(h0, base, wh, 3 * hd + j, y, x, height, width, hd, k);
            } else {
                let base = obase - state;
                ai += hidden_conv(hidden, base, wh, j, y, x, height, width, hd, k);
                af += hidden_conv(hidden, base, wh, hd + j, y, x, height, width, hd, k);
                ao += hidden_conv(hidden, base, wh, 2 * hd + j, y, x, height, width, hd, k);
                ag += hidden_conv(hidden, base, wh, 3 * hd + j, y, x, height, width, hd, k);
                c_prev = c[b * state + item];
            }
            let i = sigmoid(ai);
            let f = sigmoid(af);
            let o = sigmoid(ao);
            let g = tanh_of(ag);
            let c_next = f * c_prev + i * g;
            c[b * state + item] = c_next;
            hidden[obase + item] = o * tanh_of(c_next);
            if save {
                gates[gbase + j * hw + p] = i;
                gates[gbase + (hd + j) * hw + p] = f;
                gates[gbase + (2 * hd + j) * hw + p] = o;
                gates[gbase + (3 * hd + j) * hw + p] = g;
                cells[obase + item] = c_next;
            }
            item += CUBE_DIM as usize;
        }
        // Step t+1 reads neighbours of h_t written by other units of the cube.
        sync_storage();
    }
}

/// The backward through time of one layer over steps `first..last`, walked in reverse; one
/// cube per video. Launches run from the last steps to the first.
///
/// `dout` is the gradient of the hidden states; writes `dgx`, the gradient of the gates
/// before activation at every step (= of the input `gx`). `dc` carries the cell gradient to
/// the step before (across launches too).
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn lstm_backward(
    dout: &Tensor<f32>,
    gates: &Tensor<f32>,
    cells: &Tensor<f32>,
    c0: &Tensor<f32>,
    wh: &Tensor<f32>,
    dc: &mut Tensor<f32>,
    dgx: &mut Tensor<f32>,
    first: usize,
    last: usize,
    #[comptime] hd: usize,
    #[comptime] k: usize,
) {
    let b = CUBE_POS;
    let steps = dout.shape(1);
    let height = dout.shape(3);
    let width = dout.shape(4);
    let r = k / 2;
    let hw = height * width;
    let state = hd * hw;
    for s in first..last {
        let t = last - 1 - (s - first);
        let gbase = (b * steps + t) * 4 * state;
        let obase = (b * steps + t) * state;
        let mut item = UNIT_POS as usize;
        while item < state {
            let j = item / hw;
            let p = item - j * hw;
            let y = p / width;
            let x = p - y * width;
            let mut dh = dout[obase + item];
            if t + 1 < steps {
                // h_t fed step t+1's hidden half: dh[j, y, x] += Σ_{o, ky, kx}
                // wh[o, j, ky, kx] · dgx_{t+1}[o, y − ky + r, x − kx + r].
                let next = gbase + 4 * state;
                #[unroll]
                for o in 0..4 * hd {
                    #[unroll]
                    for ky in 0..k {
                        let yy = y + r;
                        if yy >= ky && yy - ky < height {
                            #[unroll]
                            for kx in 0..k {
                                let xx = x + r;
                                if xx >= kx && xx - kx < width {
                                    let w = wh[((o * hd + j) * k + ky) * k + kx];
                                    dh += w * dgx[next + o * hw + (yy - ky) * width + (xx - kx)];
                                }
                            }
                        }
                    }
                }
            }
            let gi = gates[gbase + j * hw + p];
            let gf = gates[gbase + (hd + j) * hw + p];
            let go = gates[gbase + (2 * hd + j) * hw + p];
            let gg = gates[gbase + (3 * hd + j) * hw + p];
            let tc = tanh_of(cells[obase + item]);
            let mut c_prev = c0[b * state + item];
            if t > 0 {
                c_prev = cells[obase - state + item];
            }
            let mut dcn = dh * go * (1.0f32 - tc * tc);
            if t + 1 < steps {
                dcn += dc[b * state + item];
            }
            dgx[gbase + j * hw + p] = dcn * gg * gi * (1.0f32 - gi);
            dgx[gbase + (hd + j) * hw + p] = dcn * c_prev * gf * (1.0f32 - gf);
            dgx[gbase + (2 * hd + j) * hw + p] = dh * tc * go * (1.0f32 - go);
            dgx[gbase + (3 * hd + j) * hw + p] = dcn * gi * (1.0f32 - gg * gg);
            dc[b * state + item] = dcn * gf;
            item += CUBE_DIM as usize;
        }
        // Step t−1 reads neighbours of dgx_t written by other units of the cube.
        sync_storage();
    }
}

/// The hidden state each step started from: `out[b, t] = hidden[b, t − 1]`, `h0[b]` at t = 0.
#[cube(launch)]
fn previous_hidden(hidden: &Tensor<f32>, h0: &Tensor<f32>, out: &mut Tensor<f32>) {
    let i = ABSOLUTE_POS;
    if i < out.len() {
        let steps = hidden.shape(1);
        let state = hidden.shape(2) * hidden.shape(3) * hidden.shape(4);
        let frame = i / state;
        let b = frame / steps;
        let t = frame - b * steps;
        if t == 0 {
            out[i] = h0[b * state + (i - frame * state)];
        } else {
            out[i] = hidden[i - state];
        }
    }
}

fn empty(like: &CubeTensor, shape: Vec<usize>) -> CubeTensor {
    empty_device_contiguous_dtype(like.client.clone(), like.device.clone(), Shape::from(shape), like.dtype)
}

/// Sizes `[B, T, h, H, W]` of a layer from `gx` `[B, T, 4h, H, W]` and `wh` `[4h, h, k, k]`.
fn dims(gx: &CubeTensor, wh: &CubeTensor) -> [usize; 5] {
    let (g, w) = (gx.shape(), wh.shape());
    assert!(
        g.num_dims() == 5 && w.num_dims() == 4 && g[2] == w[0] && w[0] == 4 * w[1] && w[2] == w[3] && w[2] % 2 == 1,
        "ConvLSTM recurrence shapes: gx {g:?}, wh {w:?}"
    );
    [g[0], g[1], w[1], g[3], g[4]]
}

/// What the forward keeps for the backward.
#[derive(Debug, Clone)]
pub struct Saved {
    /// Activated gates `[B, T, 4h, H, W]`.
    pub gates: CubeTensor,
    /// Cell state of every step `[B, T, h, H, W]`.
    pub cells: CubeTensor,
}

/// The forward of one layer from `(h0, c0)`: the hidden states `[B, T, h, H, W]`, the last
/// cell state `[B, h, H, W]` and, when `save`, what the backward needs. One launch (more
/// past the loop budget, [`steps_per_launch`]).
///
/// # Shapes
/// - gx: `[B, T, 4h, H, W]` (input half with bias), wh: `[4h, h, k, k]`
/// - h0, c0: `[B, h, H, W]`
pub fn forward(
    gx: CubeTensor,
    wh: CubeTensor,
    h0: CubeTensor,
    c0: CubeTensor,
    save: bool,
) -> (CubeTensor, CubeTensor, Option<Saved>) {
    let [_, _, hd, height, width] = dims(&gx, &wh);
    let chunk = steps_per_launch(hd * height * width, units(&gx));
    forward_in(gx, wh, (h0, c0), save, chunk)
}

/// [`forward`] in launches of `chunk` steps each.
fn forward_in(
    gx: CubeTensor,
    wh: CubeTensor,
    (h0, c0): (CubeTensor, CubeTensor),
    save: bool,
    chunk: usize,
) -> (CubeTensor, CubeTensor, Option<Saved>) {
    let [b, t, hd, height, width] = dims(&gx, &wh);
    let (gx, wh, h0, c0) = (
        into_contiguous(gx),
        into_contiguous(wh),
        into_contiguous(h0),
        into_contiguous(c0),
    );
    let hidden = empty(&gx, vec![b, t, hd, height, width]);
    let c = empty(&gx, vec![b, hd, height, width]);
    let (gates, cells) = if save {
        (
            empty(&gx, vec![b, t, 4 * hd, height, width]),
            empty(&gx, vec![b, t, hd, height, width]),
        )
    } else {
        // Not written without `save`; one element keeps the argument list fixed.
        (empty(&gx, vec![1]), empty(&gx, vec![1]))
    };
    if b > 0 && t > 0 {
        let client = gx.client.clone();
        let k = wh.shape()[2];
        let units = units(&gx);
        for first in (0..t).step_by(chunk.max(1)) {
            lstm_forward::launch(
                &client,
                CubeCount::Static(b as u32, 1, 1),
                CubeDim::new_1d(units),
                gx.clone().into_tensor_arg(),
                wh.clone().into_tensor_arg(),
                h0.clone().into_tensor_arg(),
                c0.clone().into_tensor_arg(),
                c.clone().into_tensor_arg(),
                hidden.clone().into_tensor_arg(),
                gates.clone().into_tensor_arg(),
                cells.clone().into_tensor_arg(),
                first,
                (first + chunk).min(t),
                hd,
                k,
                save,
            );
        }
    }
    let c_last = if t > 0 { c } else { c0 };
    (hidden, c_last, save.then_some(Saved { gates, cells }))
}

/// The backward of one layer run by [`forward`] from `(h0, c0)`: the gradients of `gx`
/// `[B, T, 4h, H, W]` and of `wh` `[4h, h, k, k]` from the gradient `dout` of the hidden
/// states. One launch for the recurrence (more past the loop budget), one for the previous
/// hidden states, and burn's conv weight gradient over all B·T frames at once.
pub fn backward(
    dout: CubeTensor,
    saved: &Saved,
    hidden: CubeTensor,
    wh: CubeTensor,
    state: (CubeTensor, CubeTensor),
) -> (CubeTensor, CubeTensor) {
    let [_, _, hd, height, width] = dims(&saved.gates, &wh);
    let chunk = steps_per_launch(hd * height * width, units(&dout));
    backward_in(dout, saved, hidden, wh, state, chunk)
}

/// [`backward`] in launches of `chunk` steps each.
fn backward_in(
    dout: CubeTensor,
    saved: &Saved,
    hidden: CubeTensor,
    wh: CubeTensor,
    (h0, c0): (CubeTensor, CubeTensor),
    chunk: usize,
) -> (CubeTensor, CubeTensor) {
    let [b, t, hd, height, width] = dims(&saved.gates, &wh);
    let (dout, wh, h0, c0) = (
        into_contiguous(dout),
        into_contiguous(wh),
        into_contiguous(h0),
        into_contiguous(c0),
    );
    let (gates, cells, hidden) = (
        into_contiguous(saved.gates.clone()),
        into_contiguous(saved.cells.clone()),
        into_contiguous(hidden),
    );
    let dgx = empty(&dout, vec![b, t, 4 * hd, height, width]);
    let dc = empty(&dout, vec![b, hd, height, width]);
    let client = dout.client.clone();
    let k = wh.shape()[2];
    let units = units(&dout);
    // Launches walk the chunks from the last steps back (`dc`, `dgx` carry between them).
    let mut last = t;
    while last > 0 {
        let first = last.saturating_sub(chunk.max(1));
        lstm_backward::launch(
            &client,
            CubeCount::Static(b as u32, 1, 1),
            CubeDim::new_1d(units),
            dout.clone().into_tensor_arg(),
            gates.clone().into_tensor_arg(),
            cells.clone().into_tensor_arg(),
            c0.clone().into_tensor_arg(),
            wh.clone().into_tensor_arg(),
            dc.clone().into_tensor_arg(),
            dgx.clone().into_tensor_arg(),
            first,
            last,
            hd,
            k,
        );
        last = first;
    }
    let prev = empty(&hidden, vec![b, t, hd, height, width]);
    let n = b * t * hd * height * width;
    let dim = CubeDim::new_1d(256);
    previous_hidden::launch(
        &client,
        calculate_cube_count_elemwise(&client, n, dim),
        dim,
        hidden.into_tensor_arg(),
        h0.into_tensor_arg(),
        prev.clone().into_tensor_arg(),
    );
    let r = wh.shape()[2] / 2;
    let prev = CubeBackend::float_reshape(prev, Shape::from(vec![b * t, hd, height, width]));
    let dgx_frames = CubeBackend::float_reshape(dgx.clone(), Shape::from(vec![b * t, 4 * hd, height, width]));
    let options = ConvOptions::new([1, 1], [r, r], [1, 1], 1);
    let dwh = CubeBackend::conv2d_weight_backward(prev, wh, dgx_frames, options);
    (dgx, dwh)
}

#[cfg(all(test, feature = "wgpu"))]
mod tests {
    use super::*;
    use burn::backend::Cube;
    use burn::tensor::{Device, DeviceKind, Distribution, Tensor};

    fn prim<const D: usize>(t: Tensor<D>) -> CubeTensor {
        t.try_into_primitive::<Cube>().unwrap()
    }

    fn host<const D: usize>(t: CubeTensor) -> Vec<f32> {
        Tensor::<D>::from_primitive::<Cube>(t)
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap()
    }

    /// The recurrence from a zero state in plain Rust: hidden `[B, T, h, H, W]`.
    fn reference(gx: &[f32], wh: &[f32], [b, t, hd, hh, ww]: [usize; 5], k: usize) -> Vec<f32> {
        let (hw, r) = (hh * ww, k / 2);
        let state = hd * hw;
        let sig = |v: f32| 1.0 / (1.0 + (-v).exp());
        let mut out = vec![0.0; b * t * state];
        for bi in 0..b {
            let (mut h, mut c) = (vec![0.0f32; state], vec![0.0f32; state]);
            for ti in 0..t {
                let gb = (bi * t + ti) * 4 * state;
                let mut next = vec![0.0; state];
                for (it, hn) in next.iter_mut().enumerate() {
                    let (j, y, x) = (it / hw, it % hw / ww, it % ww);
                    let mut a = [0.0f32; 4];
                    for (q, aq) in a.iter_mut().enumerate() {
                        let row = q * hd + j;
                        *aq = gx[gb + row * hw + y * ww + x];
                        for cc in 0..hd {
                            for ky in 0..k {
                                for kx in 0..k {
                                    let (yy, xx) = (y + ky, x + kx);
                                    if yy >= r && xx >= r && yy - r < hh && xx - r < ww {
                                        *aq += wh[((row * hd + cc) * k + ky) * k + kx]
                                            * h[cc * hw + (yy - r) * ww + (xx - r)];
                                    }
                                }
                            }
                        }
                    }
                    c[it] = sig(a[1]) * c[it] + sig(a[0]) * a[3].tanh();
                    *hn = sig(a[2]) * c[it].tanh();
                }
                h = next;
                out[(bi * t + ti) * state..][..state].copy_from_slice(&h);
            }
        }
        out
    }

    fn inputs(dev: &Device, [b, t, hd, hh, ww]: [usize; 5]) -> (Tensor<5>, Tensor<4>) {
        dev.seed(3);
        let gx = Tensor::<5>::random([b, t, 4 * hd, hh, ww], Distribution::Uniform(-1.0, 1.0), dev);
        let wh = Tensor::<4>::random([4 * hd, hd, 3, 3], Distribution::Uniform(-0.2, 0.2), dev);
        (gx, wh)
    }

    /// The paper's 8 hidden channels of 64 × 64 over enough steps that the first version
    /// (3 × 3 and channel loops not unrolled) ran past llvmpipe's loop limit at step 3 and
    /// left the rest unwritten: every step against plain Rust.
    #[test]
    fn the_recurrence_matches_plain_rust_at_the_papers_state_size() {
        let dev = Device::wgpu(DeviceKind::DefaultDevice);
        let dims = [1, 6, 8, 64, 64];
        let (gx, wh) = inputs(&dev, dims);
        let want = reference(&host::<5>(prim(gx.clone())), &host::<4>(prim(wh.clone())), dims, 3);
        let zero = prim(Tensor::<4>::zeros([1, 8, 64, 64], &dev));
        let (h, _, _) = forward(prim(gx), prim(wh), zero.clone(), zero, false);
        let got = host::<5>(h);
        let state = 8 * 64 * 64;
        for (i, (a, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (a - w).abs() < 1e-5,
                "step {}, item {}: {a} vs {w}",
                i / state,
                i % state
            );
        }
        // Not vacuous: the old kernel left zeros from step 3 on.
        assert!(want.iter().any(|v| v.abs() > 0.1));
    }

    /// Several launches of a few steps each (what a long sequence gets) give exactly what one
    /// launch gives: the hidden states, the last cell state and both gradients.
    #[test]
    fn launches_of_a_few_steps_equal_one_launch() {
        let dev = Device::wgpu(DeviceKind::DefaultDevice);
        let dims = [2, 7, 8, 12, 13];
        let (gx, wh) = inputs(&dev, dims);
        let zero = prim(Tensor::<4>::zeros([2, 8, 12, 13], &dev));
        let dout = Tensor::<5>::random([2, 7, 8, 12, 13], Distribution::Uniform(-1.0, 1.0), &dev);
        let run = |chunk: usize| {
            let state = (zero.clone(), zero.clone());
            let (h, c, saved) = forward_in(prim(gx.clone()), prim(wh.clone()), state.clone(), true, chunk);
            let saved = saved.unwrap();
            let (dgx, dwh) = backward_in(prim(dout.clone()), &saved, h.clone(), prim(wh.clone()), state, chunk);
            [host::<5>(h), host::<4>(c), host::<5>(dgx), host::<4>(dwh)]
        };
        let whole = run(7);
        for chunk in [1, 2, 3] {
            assert_eq!(run(chunk), whole, "{chunk} steps per launch");
        }
        assert!(whole[2].iter().any(|v| v.abs() > 1e-3), "gradient all zero");
    }

    #[test]
    fn a_launch_walks_as_many_steps_as_the_loop_budget_allows() {
        // Paper state, 1024 units: 33 loop iterations a step.
        assert_eq!(steps_per_launch(8 * 64 * 64, 1024), LOOP_BUDGET / 33);
        assert!(steps_per_launch(8 * 64 * 64, 1024) >= 128);
        // One unit: the whole state every step.
        assert_eq!(steps_per_launch(1000, 1), LOOP_BUDGET / 1001);
        // More than the budget in one step: still one step a launch.
        assert_eq!(steps_per_launch(LOOP_BUDGET * 4, 1), 1);
    }
}
