//! ActionFormer's channel LayerNorm (SPEC §3.2: every time step of `[B, C, T]` normalised over
//! its C channels, then a per-channel weight and bias) as CubeCL kernels, with a hand-written
//! backward.
//!
//! Why: as tensor ops one norm is 9 launches forward and ~33 backward (means, broadcasts,
//! their reductions), and the paper model runs dozens of them per step (every transformer
//! block has five). Here it is one launch forward and two backward.
//!
//! Layout: contiguous `[B, C, T]`; a column is one (b, t), its channels `T` apart. The
//! forward keeps each column's mean and `√(var + ε)` for the backward.

use burn::backend::TensorMetadata;
use burn::tensor::Shape;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::calculate_cube_count_elemwise;
use cubecl::prelude::*;

/// Units of a cube of the element-wise launches.
const UNITS: u32 = 256;
/// Units of a cube of [`ln_backward_params_kernel`] (one cube per channel); a power of two,
/// as its shared-memory reduction halves it.
const PARAM_UNITS: usize = 256;

/// One column per unit: its mean and standard deviation over the channels (biased
/// variance, as the tensor-op norm), then `(x − μ) / σ · w + b` per channel.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn ln_forward_kernel(
    x: &Tensor<f32>,
    w: &Tensor<f32>,
    b: &Tensor<f32>,
    out: &mut Tensor<f32>,
    mean: &mut Tensor<f32>,
    std: &mut Tensor<f32>,
    channels: usize,
    steps: usize,
    eps: f32,
) {
    let col = ABSOLUTE_POS;
    if col < mean.len() {
        let base = (col / steps) * channels * steps + col % steps;
        let n = channels as f32;
        let mut sum = 0.0f32;
        for c in 0..channels {
            sum += x[base + c * steps];
        }
        let mu = sum / n;
        let mut sq = 0.0f32;
        for c in 0..channels {
            let r = x[base + c * steps] - mu;
            sq += r * r;
        }
        let sigma = f32::sqrt(sq / n + eps);
        for c in 0..channels {
            let at = base + c * steps;
            out[at] = (x[at] - mu) / sigma * w[c] + b[c];
        }
        mean[col] = mu;
        std[col] = sigma;
    }
}

/// The input gradient, one column per unit: with `x̂ = (x − μ)/σ` and `g = dy · w`,
/// `dx = (g − mean_c(g) − x̂ · mean_c(g · x̂)) / σ`.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn ln_backward_input_kernel(
    x: &Tensor<f32>,
    w: &Tensor<f32>,
    dy: &Tensor<f32>,
    mean: &Tensor<f32>,
    std: &Tensor<f32>,
    dx: &mut Tensor<f32>,
    channels: usize,
    steps: usize,
) {
    let col = ABSOLUTE_POS;
    if col < mean.len() {
        let base = (col / steps) * channels * steps + col % steps;
        let (mu, sigma) = (mean[col], std[col]);
        let n = channels as f32;
        let mut sum_g = 0.0f32;
        let mut sum_gx = 0.0f32;
        for c in 0..channels {
            let at = base + c * steps;
            let g = dy[at] * w[c];
            sum_g += g;
            sum_gx += g * ((x[at] - mu) / sigma);
        }
        let (mean_g, mean_gx) = (sum_g / n, sum_gx / n);
        for c in 0..channels {
            let at = base + c * steps;
            let xhat = (x[at] - mu) / sigma;
            dx[at] = (dy[at] * w[c] - mean_g - xhat * mean_gx) / sigma;
        }
    }
}

/// The weight and bias gradients, one cube per channel: `dw[c] = Σ dy · x̂` and
/// `db[c] = Σ dy` over every column, each unit summing every `units`-th column, then the
/// cube adding its units' sums in shared memory.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn ln_backward_params_kernel(
    x: &Tensor<f32>,
    dy: &Tensor<f32>,
    mean: &Tensor<f32>,
    std: &Tensor<f32>,
    dw: &mut Tensor<f32>,
    db: &mut Tensor<f32>,
    channels: usize,
    steps: usize,
    #[comptime] units: usize,
) {
    let mut shared_w = Shared::<[f32]>::new_slice(units);
    let mut shared_b = Shared::<[f32]>::new_slice(units);
    let c = CUBE_POS;
    let u = UNIT_POS as usize;
    let cols = mean.len();
    let mut acc_w = 0.0f32;
    let mut acc_b = 0.0f32;
    let mut col = u;
    while col < cols {
        let at = (col / steps) * channels * steps + c * steps + col % steps;
        let d = dy[at];
        acc_w += d * ((x[at] - mean[col]) / std[col]);
        acc_b += d;
        col += units;
    }
    shared_w[u] = acc_w;
    shared_b[u] = acc_b;
    sync_cube();
    // From CUBE_DIM (= units), a runtime value: a comptime one cannot be reassigned.
    let mut stride = CUBE_DIM as usize / 2;
    while stride > 0 {
        if u < stride {
            let sw = shared_w[u] + shared_w[u + stride];
            let sb = shared_b[u] + shared_b[u + stride];
            shared_w[u] = sw;
            shared_b[u] = sb;
        }
        sync_cube();
        stride /= 2;
    }
    if u == 0 {
        let (tw, tb) = (shared_w[0], shared_b[0]);
        dw[c] = tw;
        db[c] = tb;
    }
}

fn empty(like: &CubeTensor, shape: Vec<usize>) -> CubeTensor {
    empty_device_contiguous_dtype(like.client.clone(), like.device.clone(), Shape::from(shape), like.dtype)
}

/// What the backward keeps of a forward: each column's mean and standard deviation.
#[derive(Debug)]
pub struct Stats {
    /// `[B·T]` each.
    pub mean: CubeTensor,
    pub std: CubeTensor,
}

/// The norm of `x` `[B, C, T]` with weight and bias `[C]`: the output `[B, C, T]` and the
/// column statistics. One launch.
pub fn forward(x: CubeTensor, w: CubeTensor, b: CubeTensor, eps: f32) -> (CubeTensor, Stats) {
    let (x, w, b) = (into_contiguous(x), into_contiguous(w), into_contiguous(b));
    let [batch, channels, steps] = dims3(&x);
    let out = empty(&x, vec![batch, channels, steps]);
    let (mean, std) = (empty(&x, vec![batch * steps]), empty(&x, vec![batch * steps]));
    let cols = batch * steps;
    if cols > 0 {
        let client = x.client.clone();
        let dim = CubeDim::new_1d(UNITS);
        ln_forward_kernel::launch(
            &client,
            calculate_cube_count_elemwise(&client, cols, dim),
            dim,
            x.into_tensor_arg(),
            w.into_tensor_arg(),
            b.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            mean.clone().into_tensor_arg(),
            std.clone().into_tensor_arg(),
            channels,
            steps,
            eps,
        );
    }
    (out, Stats { mean, std })
}

/// The gradients of `x`, `w` and `b` from the output's gradient `dy`. Two launches.
pub fn backward(dy: CubeTensor, x: CubeTensor, w: CubeTensor, stats: &Stats) -> [CubeTensor; 3] {
    let (dy, x, w) = (into_contiguous(dy), into_contiguous(x), into_contiguous(w));
    let [batch, channels, steps] = dims3(&x);
    let dx = empty(&x, vec![batch, channels, steps]);
    let (dw, db) = (empty(&x, vec![channels]), empty(&x, vec![channels]));
    let cols = batch * steps;
    let client = x.client.clone();
    if cols > 0 {
        let dim = CubeDim::new_1d(UNITS);
        ln_backward_input_kernel::launch(
            &client,
            calculate_cube_count_elemwise(&client, cols, dim),
            dim,
            x.clone().into_tensor_arg(),
            w.into_tensor_arg(),
            dy.clone().into_tensor_arg(),
            stats.mean.clone().into_tensor_arg(),
            stats.std.clone().into_tensor_arg(),
            dx.clone().into_tensor_arg(),
            channels,
            steps,
        );
    }
    if channels > 0 {
        ln_backward_params_kernel::launch(
            &client,
            CubeCount::Static(channels as u32, 1, 1),
            CubeDim::new_1d(PARAM_UNITS as u32),
            x.into_tensor_arg(),
            dy.into_tensor_arg(),
            stats.mean.clone().into_tensor_arg(),
            stats.std.clone().into_tensor_arg(),
            dw.clone().into_tensor_arg(),
            db.clone().into_tensor_arg(),
            channels,
            steps,
            PARAM_UNITS,
        );
    }
    [dx, dw, db]
}

fn dims3(t: &CubeTensor) -> [usize; 3] {
    let s = t.shape();
    [s[0], s[1], s[2]]
}
