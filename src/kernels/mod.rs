//! Hand-written kernels: the fast paths that replace chains of small tensor ops where the
//! framework's per-op overhead dominates the arithmetic (measured in issue #6). The model and
//! the training loop call the functions here and stay back-end neutral; each function either
//! runs its kernel or declines, and the caller's tensor-op path (the paper's arithmetic, what
//! ndarray and wgpu run) is the reference the kernels are tested against.
//!
//! Layout, as burn's custom-kernel example separates kernel, forward and backward:
//! - [`cpu`]: the CPU kernels as plain Rust on `f32` slices (no burn types);
//! - `*_op` (flex builds only): the burn glue, each a backend extension of the flex back-end
//!   and of autodiff over it, with the backward node that calls the kernels' backward;
//! - this file: the one switch, [`fused_cpu`], and the API the model and training code call.
//!
//! The GPU kernels sit beside them: [`cube`] (CubeCL, for burn's `CubeBackend`: CUDA and
//! wgpu builds only) with their glue `*_cube_op`, and their own switch, [`fused_cube`].

pub mod cpu;
#[cfg(any(feature = "wgpu", feature = "cuda"))]
pub mod cube;

#[cfg(any(feature = "wgpu", feature = "cuda"))]
mod convlstm_cube_op;
#[cfg(any(feature = "wgpu", feature = "cuda"))]
mod gelu_cube_op;
#[cfg(any(feature = "wgpu", feature = "cuda"))]
mod layernorm_cube_op;

#[cfg(feature = "flex")]
mod batchnorm_op;
#[cfg(feature = "flex")]
mod conv_op;
#[cfg(feature = "flex")]
mod convlstm_op;
#[cfg(feature = "flex")]
mod flex_io;
#[cfg(feature = "flex")]
mod gelu_op;
#[cfg(feature = "flex")]
mod matmul_op;
#[cfg(feature = "flex")]
mod optim_op;
#[cfg(feature = "flex")]
mod spatial_op;

use burn::nn::BatchNorm;
use burn::nn::conv::Conv2d;
use burn::tensor::{Device, Tensor};

/// The one switch: whether the fused CPU kernels run for tensors on `device`, the flex
/// back-end with or without autodiff. Always false in a build without flex.
pub fn fused_cpu(device: &Device) -> bool {
    #[cfg(feature = "flex")]
    return device.clone().without_autodiff() == Device::flex();
    #[cfg(not(feature = "flex"))]
    {
        let _ = device;
        false
    }
}

/// The GPU switch: whether the CubeCL kernels run for tensors on `device`, a device of
/// burn's CubeCL back-end (CUDA or wgpu) with or without autodiff. Always false in a build
/// without `wgpu` or `cuda`.
pub fn fused_cube(device: &Device) -> bool {
    #[cfg(any(feature = "wgpu", feature = "cuda"))]
    return matches!(
        device.clone().without_autodiff().as_dispatch(),
        burn::backend::DispatchDevice::Cube(_)
    );
    #[cfg(not(any(feature = "wgpu", feature = "cuda")))]
    {
        let _ = device;
        false
    }
}

/// The name a CubeCL device gives itself (`NVIDIA H200`, `llvmpipe (LLVM 15.0.6, 256 bits)`),
/// or `None` for a device of another back-end.
pub fn cube_device_name(device: &Device) -> Option<String> {
    #[cfg(any(feature = "wgpu", feature = "cuda"))]
    {
        if !fused_cube(device) {
            return None;
        }
        let probe = Tensor::<1>::zeros([1], &device.clone().without_autodiff());
        let p = probe.try_into_primitive::<burn::backend::Cube>().ok()?;
        Some(p.client.properties().identity.name.clone())
    }
    #[cfg(not(any(feature = "wgpu", feature = "cuda")))]
    {
        let _ = device;
        None
    }
}

/// [`fused_cpu`] for a tensor that also records no autodiff graph (the plain flex device):
/// where the kernels without a backward (the optimiser step, inference) may run. Devices
/// compare equal with and without autodiff, so the flag is checked apart.
pub fn fused_cpu_plain<const D: usize>(t: &Tensor<D>) -> bool {
    fused_cpu(&t.device()) && !t.is_autodiff()
}

/// `conv.forward(x)`: one fused operation with a hand-written backward on the fused CPU
/// back-end when the conv is stride-1, same-padded (k / 2), undilated, ungrouped, square and
/// has a bias; burn's conv otherwise.
///
/// # Shapes
/// - x: `[N, C, H, W]`
/// - output: `[N, O, H, W]`
pub fn conv_same(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    #[cfg(feature = "flex")]
    if let Some(bias) = &conv.bias
        && conv_op::fits(conv)
        && fused_cpu(&x.device())
    {
        return conv_op::conv2d_same(x, conv.weight.val(), bias.val());
    }
    conv.forward(x)
}

/// `relu(bn(x))` as one fused operation, or `None` where there is none (then the caller
/// runs its tensor-op BatchNorm). On the fused CPU back-end: training on an autodiff device
/// uses the batch statistics and updates the running ones as PyTorch does; a plain device
/// (inference) uses the running statistics. An autodiff device in eval mode declines.
///
/// # Shapes
/// - x: `[N, C, H, W]`
/// - output: `[N, C, H, W]`
pub fn batch_norm_relu(bn: &BatchNorm, x: &Tensor<4>) -> Option<Tensor<4>> {
    #[cfg(feature = "flex")]
    if fused_cpu(&x.device()) {
        match (x.device().is_autodiff(), bn.training.is_enabled()) {
            (true, true) => return Some(batchnorm_op::batch_norm_train(bn, x.clone(), true)),
            (false, _) => return Some(batchnorm_op::batch_norm_eval(bn, x.clone(), true)),
            (true, false) => {}
        }
    }
    let _ = (bn, x);
    None
}

/// The spatial-attention stack for inference, `σ(conv3(relu(bn2(conv2(relu(bn1(conv1(x))))))))`
/// with the BatchNorms' running statistics, as one pass per frame with each BatchNorm folded
/// into its conv; `None` off the plain fused CPU back-end (training, other back-ends) or
/// where the shapes are not the stack's (same-padded stride-1 convs, a 1×1 conv to one
/// channel). The same values as the op-by-op stack to float rounding.
///
/// # Shapes
/// - x: `[N, C, H, W]`
/// - output: `[N, 1, H, W]`
pub fn spatial_attention_eval(
    x: &Tensor<4>,
    first: (&Conv2d, &BatchNorm),
    second: (&Conv2d, &BatchNorm),
    last: &Conv2d,
) -> Option<Tensor<4>> {
    #[cfg(feature = "flex")]
    if fused_cpu_plain(x) {
        return spatial_op::forward(x, first, second, last);
    }
    let _ = (x, first, second, last);
    None
}

/// GELU (`x/2 · (1 + erf(x/√2))`): on the fused CPU back-end one vectorised pass
/// ([`cpu::simd::gelu_in_place`]; in place for inference, with a hand-written one-pass
/// backward in training), on the CubeCL back-ends one launch each way
/// (`cube::gelu`), burn's `gelu` elsewhere. burn's runs several tensor passes around
/// a scalar `erf` (~2–3 ms of an inference at T = 128, ~5 % of a training step with its
/// backward). The same values to a few ulp of `erf`.
///
/// # Shapes
/// - x: any; output: as x
pub fn gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    #[cfg(feature = "flex")]
    let x = match flex_io::into_flex(x, flex_io::Order::Any) {
        Ok(mut p) => {
            cpu::simd::gelu_in_place(p.storage_mut::<f32>());
            return flex_io::from_flex(p);
        }
        Err(x) if fused_cpu(&x.device()) && x.dtype() == burn::tensor::DType::F32 => return gelu_op::gelu(x),
        Err(x) => x,
    };
    #[cfg(any(feature = "wgpu", feature = "cuda"))]
    if fused_cube(&x.device()) && x.dtype() == burn::tensor::DType::F32 {
        return gelu_cube_op::gelu(x);
    }
    burn::tensor::activation::gelu(x)
}

/// `lhs.matmul(rhs)` for a batch of products (`[B or 1, M, K]` times `[B or 1, K, N]`, a
/// batch of 1 shared by every item): on the fused CPU back-end one operation cut into one
/// single-threaded GEMM per thread, forward and backward; burn's matmul elsewhere.
///
/// # Shapes
/// - lhs: `[B or 1, M, K]`, rhs: `[B or 1, K, N]`
/// - output: `[B, M, N]`
pub fn matmul(lhs: Tensor<3>, rhs: Tensor<3>) -> Tensor<3> {
    #[cfg(feature = "flex")]
    if fused_cpu(&lhs.device()) {
        return matmul_op::matmul(lhs, rhs);
    }
    lhs.matmul(rhs)
}

/// `linear.forward(x)` (`x · W + b`, W stored `[in, out]`) through [`matmul`].
///
/// # Shapes
/// - x: `[B, T, in]`
/// - output: `[B, T, out]`
pub fn linear(linear: &burn::nn::Linear, x: Tensor<3>) -> Tensor<3> {
    let out = matmul(x, linear.weight.val().unsqueeze::<3>()); // [B, T, out]
    match &linear.bias {
        Some(b) => out + b.val().unsqueeze::<3>(),
        None => out,
    }
}

/// ActionFormer's channel LayerNorm of `x` (`(x − μ)/√(σ² + ε) · w + b` per (b, t) over the
/// channels) as one operation with a hand-written backward on the CubeCL back-ends (one
/// launch forward, two backward, where the tensor ops take ~40); `None` elsewhere (then the
/// caller runs its tensor ops).
///
/// # Shapes
/// - x: `[B, C, T]`; weight, bias: `[C]`
/// - output: `[B, C, T]`
pub fn channel_layer_norm(x: &Tensor<3>, weight: &Tensor<1>, bias: &Tensor<1>, eps: f64) -> Option<Tensor<3>> {
    #[cfg(any(feature = "wgpu", feature = "cuda"))]
    if fused_cube(&x.device()) && x.dtype() == burn::tensor::DType::F32 {
        return Some(layernorm_cube_op::channel_layer_norm(
            x.clone(),
            weight.clone(),
            bias.clone(),
            eps as f32,
        ));
    }
    let _ = (x, weight, bias, eps);
    None
}

/// One ConvLSTM layer's weights as the fused layer takes them.
#[derive(Debug, Clone)]
pub struct LstmWeights {
    /// Input half `[4h, C, k, k]`.
    pub wx: Tensor<4>,
    /// The input half's bias `[4h]` (zeros where the conv has none).
    pub bias: Tensor<1>,
    /// Hidden half `[4h, h, k, k]` (no bias).
    pub wh: Tensor<4>,
}

/// A stack of ConvLSTM layers over a sequence from a zero state, each layer one fused
/// operation (each step one product over `concat(x_t, h_{t-1})` and the gate arithmetic)
/// with a hand-written backward; `None` where there is none (then the caller runs its tensor-op
/// layers). Gate order i, f, o, g.
///
/// # Shapes
/// - x: `[B, T, C, H, W]`; layers: first layer first
/// - output: `[B, T, h_last, H, W]`, the last layer's hidden state at every step
pub fn convlstm(x: &Tensor<5>, layers: impl IntoIterator<Item = LstmWeights>) -> Option<Tensor<5>> {
    #[cfg(feature = "flex")]
    if fused_cpu(&x.device()) {
        let mut seq = x.clone(); // [B, T, C, H, W]
        for w in layers {
            seq = convlstm_op::layer(seq, w.wx, w.bias, w.wh); // [B, T, h, H, W]
        }
        return Some(seq);
    }
    #[cfg(any(feature = "wgpu", feature = "cuda"))]
    if fused_cube(&x.device()) {
        let mut seq = x.clone(); // [B, T, C, H, W]
        for w in layers {
            seq = convlstm_cube_op::layer(seq, w); // [B, T, h, H, W]
        }
        return Some(seq);
    }
    let _ = (x, layers);
    None
}

/// [`convlstm`] for inference from the state each layer's frames before `x` ended in, also
/// returning each layer's state after the last frame; `None` on an autodiff device (the
/// fused layer has no backward here), for an empty sequence and where there is no fused
/// layer.
///
/// # Shapes
/// - x: `[B, T, C, H, W]`; layers: weights and `(h, c)`, each `[B, h, H, W]`,
///   first layer first
/// - output: `[B, T, h_last, H, W]` and one `(h, c)` per layer, each `[B, h, H, W]`
#[allow(clippy::type_complexity)]
pub fn convlstm_from(
    x: &Tensor<5>,
    layers: impl IntoIterator<Item = (LstmWeights, (Tensor<4>, Tensor<4>))>,
) -> Option<(Tensor<5>, Vec<(Tensor<4>, Tensor<4>)>)> {
    #[cfg(feature = "flex")]
    if fused_cpu_plain(x) && x.dims()[1] > 0 {
        let [b, t, _, hgt, wid] = x.dims();
        let mut seq = x.clone(); // [B, T, C, H, W]
        let mut states = Vec::new();
        for (w, state) in layers {
            let hidden = w.wh.dims()[1];
            let (h, c_last) = convlstm_op::layer_from(seq, w.wx, w.bias, w.wh, state);
            let h_last = h.clone().narrow(1, t - 1, 1).reshape([b, hidden, hgt, wid]); // [B, h, H, W]
            states.push((h_last, c_last));
            seq = h; // [B, T, h, H, W]
        }
        return Some((seq, states));
    }
    #[cfg(any(feature = "wgpu", feature = "cuda"))]
    if fused_cube(&x.device()) && !x.is_autodiff() && x.dims()[1] > 0 {
        let [b, t, _, hgt, wid] = x.dims();
        let mut seq = x.clone(); // [B, T, C, H, W]
        let mut states = Vec::new();
        for (w, state) in layers {
            let hidden = w.wh.dims()[1];
            let (h, c_last) = convlstm_cube_op::layer_from(seq, w, state);
            let h_last = h.clone().narrow(1, t - 1, 1).reshape([b, hidden, hgt, wid]); // [B, h, H, W]
            states.push((h_last, c_last));
            seq = h; // [B, T, h, H, W]
        }
        return Some((seq, states));
    }
    let _ = (x, layers);
    None
}

/// `Σ x²` of a tensor in `f64` in one pass over its buffer, or `None` where the tensor is
/// not on the plain fused CPU back-end (then the caller sums with tensor ops).
pub fn sum_squares<const D: usize>(t: &Tensor<D>) -> Option<f64> {
    #[cfg(feature = "flex")]
    return optim_op::sum_squares(t);
    #[cfg(not(feature = "flex"))]
    {
        let _ = t;
        None
    }
}

/// Sums of squares of gradients on one CubeCL device (wgpu, cuda), gathered a tensor at a
/// time and added up by one launch per tensor and a final sum
/// ([`cube::optim::sum_squares`]), nothing read back. A permuted gradient (a transposed
/// weight gradient) is summed in its own buffer order, without a copy. Takes nothing in a
/// build without a CubeCL back-end (or without flex, whose glue it shares).
#[cfg(feature = "flex")]
pub type SquareSums = optim_op::SquareSums;

/// Sums of squares on the device: none in this build (nothing is taken).
#[cfg(not(feature = "flex"))]
#[derive(Default)]
pub struct SquareSums;

#[cfg(not(feature = "flex"))]
impl SquareSums {
    /// Hands every tensor back: this build has no CubeCL sums.
    #[allow(clippy::result_large_err)]
    pub fn push<const D: usize>(&mut self, t: Tensor<D>) -> Result<(), Tensor<D>> {
        Err(t)
    }

    /// `None`: nothing was taken.
    pub fn total(self) -> Option<Tensor<1>> {
        None
    }
}

/// Whether the [`AdamW`] steps of parameters on `device` multiply their gradients by the
/// factor of [`optimizer_scope`] inside their own kernel: a plain or autodiff CubeCL device
/// in a build with the fused optimiser. There the global-norm clip hands its factor to the
/// optimiser instead of launching a multiplication per gradient.
pub fn optimizer_scales_gradients(device: &Device) -> bool {
    cfg!(feature = "flex") && fused_cube(device)
}

/// Run `f` (an optimiser step) with every [`AdamW`] step on this thread first multiplying
/// its gradient by `scale` (a `[1]` tensor) if given: inside the CubeCL kernel where it runs,
/// by a tensor multiplication anywhere else, so the result is the same either way. On a
/// CubeCL device the steps are launched four parameters of one kind (rate, decay, gradient
/// layout) at a time, the last ones when `f` returns: a step's outputs are written then, so
/// `f` must not read them (an optimiser step only puts them into the module and its state). In a build without the fused
/// optimiser (burn's AdamW) `f` runs as it is: ask [`optimizer_scales_gradients`] before
/// handing over a factor.
pub fn optimizer_scope<T>(scale: Option<Tensor<1>>, f: impl FnOnce() -> T) -> T {
    #[cfg(feature = "flex")]
    return optim_op::optimizer_scope(scale, f);
    #[cfg(not(feature = "flex"))]
    {
        let _ = scale;
        f()
    }
}

/// `t · s`, in place on the plain fused CPU back-end, `t.mul_scalar(s)` elsewhere.
pub fn scale<const D: usize>(t: Tensor<D>, s: f32) -> Tensor<D> {
    #[cfg(feature = "flex")]
    return optim_op::scale(t, s);
    #[cfg(not(feature = "flex"))]
    t.mul_scalar(s)
}

/// `ema · decay + model · (1 − decay)`, in place in `ema` on the plain fused CPU back-end,
/// with tensor ops elsewhere.
pub fn blend<const D: usize>(ema: Tensor<D>, model: Tensor<D>, decay: f64) -> Tensor<D> {
    #[cfg(feature = "flex")]
    return optim_op::blend(ema, model, decay);
    #[cfg(not(feature = "flex"))]
    {
        ema.mul_scalar(decay) + model.mul_scalar(1.0 - decay)
    }
}

/// [`blend`] for every pair (each of one shape): on a CubeCL device one launch per eight
/// pairs, where [`blend`] would launch once per pair; a pair at a time elsewhere.
pub fn blend_all(pairs: Vec<(Tensor<1>, Tensor<1>)>, decay: f64) -> Vec<Tensor<1>> {
    #[cfg(feature = "flex")]
    return optim_op::blend_all(pairs, decay);
    #[cfg(not(feature = "flex"))]
    pairs.into_iter().map(|(e, m)| blend(e, m, decay)).collect()
}

/// The per-parameter AdamW (PyTorch's: amsgrad off, decoupled decay): in flex builds one
/// fused pass per parameter on the plain fused CPU back-end and burn's own step elsewhere;
/// burn's AdamW in other builds. The state is burn's `AdamWState` either way.
#[cfg(feature = "flex")]
pub type AdamW = optim_op::FusedAdamW;
/// The per-parameter AdamW: burn's (this build has no fused CPU back-end).
#[cfg(not(feature = "flex"))]
pub type AdamW = burn::optim::AdamW;

/// An [`AdamW`] with these hyper-parameters.
pub fn adamw(beta_1: f32, beta_2: f32, epsilon: f32, weight_decay: f32) -> AdamW {
    #[cfg(feature = "flex")]
    return optim_op::FusedAdamW {
        beta_1,
        beta_2,
        epsilon,
        weight_decay,
    };
    #[cfg(not(feature = "flex"))]
    return burn::optim::AdamWConfig::new()
        .with_beta_1(beta_1)
        .with_beta_2(beta_2)
        .with_epsilon(epsilon)
        .with_weight_decay(weight_decay)
        .build();
}
