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
        let out = self.conv.forward(x);
        let out_mask = downsample_mask(mask, self.stride);
        let out = out * out_mask.clone().float().unsqueeze_dim::<3>(1); // [B, 1, T']
        (out, out_mask)
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
