//! Building blocks shared by every stage (SPEC §3.2, §3.6): the channel LayerNorm `ln` and the
//! masked 1-D convolution.

use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::conv::{Conv1d, Conv1dConfig};
use burn::nn::{Initializer, PaddingConfig1d};
use burn::tensor::{Bool, Device, Tensor};

/// Configuration of [`ChannelLayerNorm`].
#[derive(Config, Debug)]
pub struct ChannelLayerNormConfig {
    /// Number of channels C.
    pub num_channels: usize,
    /// Added to the variance before the square root.
    #[config(default = 1e-5)]
    pub eps: f64,
}

/// ActionFormer's LayerNorm over the channel axis of `[B, C, T]` (biased variance), with a
/// learnable per-channel weight (init 1) and bias (init 0).
///
/// PyTorch stores weight and bias as `[1, C, 1]`; xca stores `[C]`.
#[derive(Module, Debug)]
pub struct ChannelLayerNorm {
    /// Per-channel scale `[C]`.
    pub weight: Param<Tensor<1>>,
    /// Per-channel shift `[C]`.
    pub bias: Param<Tensor<1>>,
    /// Variance epsilon.
    pub eps: f64,
}

impl ChannelLayerNormConfig {
    /// Build the layer norm on `device`.
    pub fn init(&self, device: &Device) -> ChannelLayerNorm {
        ChannelLayerNorm {
            weight: Initializer::Ones.init([self.num_channels], device),
            bias: Initializer::Zeros.init([self.num_channels], device),
            eps: self.eps,
        }
    }
}

impl ChannelLayerNorm {
    /// Normalise every time step over its channels.
    ///
    /// # Shapes
    /// - x: `[B, C, T]`
    /// - output: `[B, C, T]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        // One fused operation on the GPU back-ends, the tensor ops below elsewhere.
        if let Some(y) = crate::kernels::channel_layer_norm(&x, &self.weight.val(), &self.bias.val(), self.eps) {
            return y;
        }
        self.forward_ops(x)
    }

    /// [`Self::forward`] as tensor ops (the reference of the fused norm).
    fn forward_ops(&self, x: Tensor<3>) -> Tensor<3> {
        let c = self.weight.dims()[0];
        let mu = x.clone().mean_dim(1); // [B, 1, T]
        let res = x - mu;
        let sigma = res.clone().square().mean_dim(1); // [B, 1, T]
        let out = res / sigma.add_scalar(self.eps).sqrt();
        out * self.weight.val().reshape([1, c, 1]) + self.bias.val().reshape([1, c, 1])
    }
}

/// Apply an optional [`ChannelLayerNorm`] (identity when absent).
pub fn maybe_norm(norm: &Option<ChannelLayerNorm>, x: Tensor<3>) -> Tensor<3> {
    match norm {
        Some(n) => n.forward(x),
        None => x,
    }
}

/// Configuration of [`MaskedConv1d`].
#[derive(Config, Debug)]
pub struct MaskedConv1dConfig {
    /// Input channels.
    pub channels_in: usize,
    /// Output channels.
    pub channels_out: usize,
    /// Odd kernel size; padding is `kernel_size / 2`.
    pub kernel_size: usize,
    /// Temporal stride (1, or even for downsampling).
    #[config(default = 1)]
    pub stride: usize,
    /// Groups (channels_in for a depthwise conv).
    #[config(default = 1)]
    pub groups: usize,
    /// Whether the conv has a bias (initialised to 0, as ActionFormer does).
    #[config(default = true)]
    pub bias: bool,
}

/// A Conv1d whose output is multiplied by the (downsampled) mask (SPEC §3.2).
///
/// With a stride the mask is downsampled by nearest neighbour, i.e. every stride-th step.
/// Padded steps of the *input* are not zeroed here: the conv sees whatever is there
/// (SPEC §3.6), exactly as in the original.
#[derive(Module, Debug)]
pub struct MaskedConv1d {
    /// The convolution (PyTorch layout `[out, in/groups, k]`).
    pub conv: Conv1d,
    /// Temporal stride.
    pub stride: usize,
}

impl MaskedConv1dConfig {
    /// Build the masked conv on `device` (PyTorch default weight init, zero bias).
    pub fn init(&self, device: &Device) -> MaskedConv1d {
        let mut conv = Conv1dConfig::new(self.channels_in, self.channels_out, self.kernel_size)
            .with_stride(self.stride)
            .with_groups(self.groups)
            .with_padding(PaddingConfig1d::Explicit(self.kernel_size / 2, self.kernel_size / 2))
            .with_bias(self.bias)
            .init(device);
        if self.bias {
            conv.bias = Some(Initializer::Zeros.init([self.channels_out], device));
        }
        MaskedConv1d {
            conv,
            stride: self.stride,
        }
    }
}

impl MaskedConv1d {
    /// Convolve, then zero the output on padded steps.
    ///
    /// # Shapes
    /// - x: `[B, C_in, T]`, mask: `[B, T]` (true on valid steps); T divisible by the stride
    /// - output: `[B, C_out, T / stride]` and its mask `[B, T / stride]`
    pub fn forward(&self, x: Tensor<3>, mask: Tensor<2, Bool>) -> (Tensor<3>, Tensor<2, Bool>) {
        let out_mask = downsample_mask(mask, self.stride);
        let keep = out_mask.clone().float().unsqueeze_dim::<3>(1); // [B, 1, T']
        (self.forward_zeroed(x, keep), out_mask)
    }

    /// Convolve, then multiply by `keep`, the output mask as floats: for convs that share an
    /// output mask, cast once (a launch per cast on a GPU).
    ///
    /// # Shapes
    /// - x: `[B, C_in, T]`, keep: `[B, 1, T / stride]` (1 on valid steps, 0 on padded ones)
    /// - output: `[B, C_out, T / stride]`
    pub fn forward_zeroed(&self, x: Tensor<3>, keep: Tensor<3>) -> Tensor<3> {
        conv1d_dense(&self.conv, x) * keep
    }
}

/// Nearest-neighbour downsampling of a mask by an integer stride: keep every stride-th step
/// (what `F.interpolate(mode='nearest')` does for an exact integer ratio).
///
/// # Shapes
/// - mask: `[B, T]` with T divisible by `stride`
/// - output: `[B, T / stride]`
pub fn downsample_mask(mask: Tensor<2, Bool>, stride: usize) -> Tensor<2, Bool> {
    if stride <= 1 {
        return mask;
    }
    let [b, t] = mask.dims();
    mask.reshape([b, t / stride, stride]) // [B, T', s]
        .narrow(2, 0, 1)
        .reshape([b, t / stride])
}

/// A dense (ungrouped), stride-1, same-padded Conv1d as im2col plus one batched matmul; a
/// depthwise same-padded one (any stride dividing T) as k shifted multiply-adds
/// ([`depthwise`]); anything else goes to burn's conv. The embedding (4096 → 512, k = 3) and the head convs
/// are such convs: on flex the matmul form is as fast forward and ~2× faster backward than
/// burn's conv (whose weight gradient is a slow loop), and it is one GEMM on any back-end.
/// The transformer's pointwise (k = 1) convs use it too: burn's conv hands back their weight
/// gradients as transposed views, which the optimiser step then has to read across memory.
/// The matmul is [`crate::kernels::matmul`]: on flex one task per thread, forward and backward.
///
/// # Shapes
/// - x: `[B, C, T]`
/// - output: `[B, O, T]`
pub fn conv1d_dense(conv: &Conv1d, x: Tensor<3>) -> Tensor<3> {
    let [o, c, k] = conv.weight.dims();
    let [b, cx, t] = x.dims();
    let p = k / 2;
    let same = matches!(conv.padding, PaddingConfig1d::Explicit(l, r) if l == p && r == p)
        || matches!(conv.padding, PaddingConfig1d::Same)
        || (k == 1 && matches!(conv.padding, PaddingConfig1d::Valid));
    // On the GPU back-ends burn's conv is one launch forward and a few backward, where the
    // shifted multiply-adds and the im2col are a slice, product and sum per tap, each with
    // its backward: 20 launches against 54 (depthwise) and 36 (k = 3) per conv, forward and
    // backward (`xca bench`'s per-phase counts). A pointwise conv stays one matmul there.
    if k > 1 && crate::kernels::fused_cube(&x.device()) {
        return conv.forward(x);
    }
    if conv.groups == cx && c == 1 && o == cx && conv.dilation == 1 && k % 2 == 1 && same && t % conv.stride == 0 {
        return depthwise(conv, x);
    }
    if conv.groups != 1 || conv.stride != 1 || conv.dilation != 1 || cx != c || k % 2 == 0 || !same {
        return conv.forward(x);
    }
    let dev = x.device();
    let xp = if p > 0 {
        let z = Tensor::<3>::zeros([b, c, p], &dev);
        Tensor::cat(vec![z.clone(), x, z], 2) // [B, C, T + 2p]
    } else {
        x
    };
    let cols: Vec<Tensor<3>> = (0..k).map(|j| xp.clone().slice([0..b, 0..c, j..j + t])).collect();
    let col = Tensor::stack::<4>(cols, 2).reshape([b, c * k, t]); // [B, C·k, T]
    let w = conv.weight.val().reshape([1, o, c * k]);
    let out = crate::kernels::matmul(w, col); // [B, O, T]
    match &conv.bias {
        Some(bias) => out + bias.val().reshape([1, o, 1]),
        None => out,
    }
}

/// A depthwise conv (groups = channels, one filter per channel), same-padded, with a stride
/// dividing T: `Σ_j w[c, j] · x[c, t + j − k/2]` as k shifted multiply-adds, then every
/// stride-th step. burn's grouped conv ran each channel's tiny product on its own (its
/// backward was ~2 % of a training step on one thread); these are k element-wise passes.
///
/// # Shapes
/// - x: `[B, C, T]`, conv weight `[C, 1, k]`
/// - output: `[B, C, T / stride]`
fn depthwise(conv: &Conv1d, x: Tensor<3>) -> Tensor<3> {
    let [ch, _, k] = conv.weight.dims();
    let [b, _, t] = x.dims();
    let p = k / 2;
    let dev = x.device();
    let xp = if p > 0 {
        let z = Tensor::<3>::zeros([b, ch, p], &dev);
        Tensor::cat(vec![z.clone(), x, z], 2) // [B, C, T + 2p]
    } else {
        x
    };
    let w = conv.weight.val().reshape([1, ch, k]); // [1, C, k]
    let mut y = xp.clone().narrow(2, 0, t) * w.clone().narrow(2, 0, 1);
    for j in 1..k {
        y = y + xp.clone().narrow(2, j, t) * w.clone().narrow(2, j, 1);
    }
    let s = conv.stride;
    if s > 1 {
        y = y.reshape([b, ch, t / s, s]).narrow(3, 0, 1).reshape([b, ch, t / s]); // [B, C, T / s]
    }
    match &conv.bias {
        Some(bias) => y + bias.val().reshape([1, ch, 1]),
        None => y,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    #[test]
    fn dense_conv1d_matches_burns_conv_forward_and_backward() {
        let dev = Device::flex().autodiff();
        dev.seed(3);
        // (in, out, k, padding, groups, stride): dense convs, then depthwise ones (MHCA's
        // query/key/value convs, stride 1 and 2) that take the shifted multiply-add path.
        for (cin, cout, k, pad, groups, stride) in [
            (5, 4, 3, PaddingConfig1d::Explicit(1, 1), 1, 1),
            (3, 2, 1, PaddingConfig1d::Valid, 1, 1),
            (2, 3, 5, PaddingConfig1d::Same, 1, 1),
            (4, 4, 3, PaddingConfig1d::Explicit(1, 1), 4, 1),
            (4, 4, 3, PaddingConfig1d::Explicit(1, 1), 4, 2),
            (3, 3, 5, PaddingConfig1d::Explicit(2, 2), 3, 2),
        ] {
            let conv = Conv1dConfig::new(cin, cout, k)
                .with_padding(pad)
                .with_groups(groups)
                .with_stride(stride)
                .init(&dev);
            let x = Tensor::<3>::random([2, cin, 10], Distribution::Uniform(-1.0, 1.0), &dev);
            let r = Tensor::<3>::random([2, cout, 10 / stride], Distribution::Uniform(-1.0, 1.0), &dev);
            let run = |dense: bool| {
                let x = x.clone().detach().require_grad();
                let y = if dense {
                    conv1d_dense(&conv, x.clone())
                } else {
                    conv.forward(x.clone())
                };
                let g = (y.clone() * r.clone()).sum().backward();
                let v = |t: Tensor<3>| t.into_data().try_to_vec::<f32>().unwrap();
                let bias = conv.bias.as_ref().unwrap().grad(&g).unwrap();
                (
                    v(y.inner()),
                    v(x.grad(&g).unwrap()),
                    v(conv.weight.grad(&g).unwrap()),
                    bias.into_data().try_to_vec::<f32>().unwrap(),
                )
            };
            let (a, b) = (run(true), run(false));
            let close = |p: &[f32], q: &[f32]| p.len() == q.len() && p.iter().zip(q).all(|(u, v)| (u - v).abs() < 1e-5);
            assert!(close(&a.0, &b.0), "k {k}: output");
            assert!(close(&a.1, &b.1), "k {k}: dx");
            assert!(close(&a.2, &b.2), "k {k}: dw");
            assert!(close(&a.3, &b.3), "k {k}: dbias");
        }
    }

    /// The fused LayerNorm of the GPU back-ends against the tensor ops, output and the
    /// gradients of the input, weight and bias, on wgpu (lavapipe where there is no GPU):
    /// one launch forward, two backward.
    #[cfg(feature = "wgpu")]
    #[test]
    fn fused_layer_norm_matches_the_tensor_ops_with_gradients_on_wgpu() {
        let dev = Device::wgpu(burn::tensor::DeviceKind::DefaultDevice).autodiff();
        dev.seed(5);
        let (c, b, t) = (37, 3, 50);
        let mut ln = ChannelLayerNormConfig::new(c).init(&dev);
        ln.weight = Param::from_tensor(Tensor::random([c], Distribution::Normal(1.0, 0.5), &dev));
        ln.bias = Param::from_tensor(Tensor::random([c], Distribution::Normal(0.0, 0.5), &dev));
        let x = Tensor::<3>::random([b, c, t], Distribution::Normal(0.3, 2.0), &dev);
        let r = Tensor::<3>::random([b, c, t], Distribution::Uniform(-1.0, 1.0), &dev);
        let v = |t: Tensor<3>| t.into_data().try_to_vec::<f32>().unwrap();
        let v1 = |t: Tensor<1>| t.into_data().try_to_vec::<f32>().unwrap();
        let run = |fused: bool| {
            let x = x.clone().detach().require_grad();
            let y = if fused {
                ln.forward(x.clone())
            } else {
                ln.forward_ops(x.clone())
            };
            let g = crate::phase::within("backward", || (y.clone() * r.clone()).sum().backward());
            (
                v(y.inner()),
                v(x.grad(&g).unwrap()),
                v1(ln.weight.grad(&g).unwrap()),
                v1(ln.bias.grad(&g).unwrap()),
            )
        };
        let (got, want) = (run(true), run(false));
        let close = |p: &[f32], q: &[f32], what: &str| {
            assert_eq!(p.len(), q.len(), "{what}");
            for (i, (u, w)) in p.iter().zip(q).enumerate() {
                assert!((u - w).abs() <= 1e-4 * (1.0 + w.abs()), "{what}[{i}]: {u} vs {w}");
            }
        };
        close(&got.0, &want.0, "y");
        close(&got.1, &want.1, "dx");
        close(&got.2, &want.2, "dw");
        close(&got.3, &want.3, "db");
        assert!(want.2.iter().any(|g| g.abs() > 0.1), "{:?}", want.2);
        // The plain device (inference) runs the same forward.
        let plain = ln.valid();
        let x0 = x.clone().inner();
        close(
            &v(plain.forward(x0.clone())),
            &v(plain.forward_ops(x0)),
            "y, plain device",
        );
        // Launches: the norm's kernels, once each.
        let (_, _, launched) = crate::bench::count_by_kernel(&dev, || Ok::<_, ()>(run(true))).unwrap();
        let of = |name: &str| launched.by_kernel.iter().find(|(k, _)| k == name).map(|(_, n)| *n);
        assert_eq!(
            [
                of("LnForwardKernel"),
                of("LnBackwardInputKernel"),
                of("LnBackwardParamsKernel")
            ],
            [Some(1); 3],
            "{launched:?}"
        );
    }
}
