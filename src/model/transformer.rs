//! ActionFormer's transformer block (SPEC §3.3) and AffineDropPath:
//!
//! ```text
//! out, m = attn(ln1(x), mask)
//! out    = pool_skip(x)·m + drop_path_attn(out)
//! out    = out + drop_path_mlp(mlp(ln2(out))·m)
//! ```

use burn::config::Config;
use burn::module::{Flag, Module, Param};
use burn::nn::conv::Conv1d;
use burn::nn::{Dropout, DropoutConfig, Initializer};
use burn::tensor::module::max_pool1d;
use burn::tensor::ops::MaxPoolOptions;
use burn::tensor::{Bool, Device, Distribution, Tensor};

use super::attention::{Mhca, MhcaConfig, pointwise};
use super::layers::{ChannelLayerNorm, ChannelLayerNormConfig, conv1d_dense};
use crate::kernels;

/// Configuration of [`AffineDropPath`].
#[derive(Config, Debug)]
pub struct AffineDropPathConfig {
    /// Channels C.
    pub num_channels: usize,
    /// Probability of dropping a whole sample in training.
    pub drop_prob: f64,
    /// Initial value of the per-channel scale.
    #[config(default = 1e-4)]
    pub init_scale: f64,
}

/// Per-channel learnable scale, then stochastic depth: in training, whole samples are dropped
/// with probability p and the kept ones scaled by 1/(1 − p).
#[derive(Module, Debug)]
pub struct AffineDropPath {
    /// Per-channel scale `[C]` (PyTorch `[1, C, 1]`).
    pub scale: Param<Tensor<1>>,
    /// Drop probability.
    pub drop_prob: f64,
    /// Training behaviour flag (cleared by `valid()`), as `burn::nn::Dropout` has.
    pub training: Param<Flag>,
}

impl AffineDropPathConfig {
    /// Build on `device`.
    pub fn init(&self, device: &Device) -> AffineDropPath {
        AffineDropPath {
            scale: Initializer::Constant { value: self.init_scale }.init([self.num_channels], device),
            drop_prob: self.drop_prob,
            training: Param::from_bool(true),
        }
    }
}

impl AffineDropPath {
    /// Scale, then drop whole samples when training on an autodiff device.
    ///
    /// # Shapes
    /// - x: `[B, C, T]`
    /// - output: `[B, C, T]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [b, c, _] = x.dims();
        let x = x * self.scale.val().reshape([1, c, 1]);
        if !self.training.is_enabled() || !x.device().is_autodiff() || self.drop_prob <= 0.0 {
            return x;
        }
        let keep = 1.0 - self.drop_prob;
        let m = Tensor::<3>::random([b, 1, 1], Distribution::Bernoulli(keep), &x.device());
        x.div_scalar(keep) * m
    }
}

/// Configuration of [`TransformerBlock`].
#[derive(Config, Debug)]
pub struct TransformerBlockConfig {
    /// Embedding size C.
    pub n_embd: usize,
    /// Attention heads.
    pub n_head: usize,
    /// Downsampling stride (1 in the stem, `scale_factor` in the branch).
    #[config(default = 1)]
    pub stride: usize,
    /// Local attention window (≤ 1: global).
    pub window_size: usize,
    /// Dropout in the MLP and after the attention projection.
    #[config(default = 0.0)]
    pub proj_pdrop: f64,
    /// Drop-path probability; 0 means no AffineDropPath at all (as the original).
    #[config(default = 0.0)]
    pub path_pdrop: f64,
}

/// Post-LN transformer block with conv attention and an optional downsampling stride.
#[derive(Module, Debug)]
pub struct TransformerBlock {
    /// ln before attention.
    pub ln1: ChannelLayerNorm,
    /// ln before the MLP.
    pub ln2: ChannelLayerNorm,
    /// Multi-head conv attention.
    pub attn: Mhca,
    /// MLP first 1×1 conv C → 4C (PyTorch `mlp.0`).
    pub mlp_fc1: Conv1d,
    /// MLP second 1×1 conv 4C → C (PyTorch `mlp.3`).
    pub mlp_fc2: Conv1d,
    /// Dropout inside the MLP.
    pub mlp_drop: Dropout,
    /// Drop path on the attention branch (absent when droppath is 0).
    pub drop_path_attn: Option<AffineDropPath>,
    /// Drop path on the MLP branch.
    pub drop_path_mlp: Option<AffineDropPath>,
    /// Stride (max-pool skip when > 1).
    pub stride: usize,
}

impl TransformerBlockConfig {
    /// Build on `device`.
    pub fn init(&self, device: &Device) -> TransformerBlock {
        let c = self.n_embd;
        let dp = || (self.path_pdrop > 0.0).then(|| AffineDropPathConfig::new(c, self.path_pdrop).init(device));
        TransformerBlock {
            ln1: ChannelLayerNormConfig::new(c).init(device),
            ln2: ChannelLayerNormConfig::new(c).init(device),
            attn: MhcaConfig::new(c, self.n_head, self.window_size)
                .with_stride(self.stride)
                .with_proj_pdrop(self.proj_pdrop)
                .init(device),
            mlp_fc1: pointwise(c, 4 * c, device),
            mlp_fc2: pointwise(4 * c, c, device),
            mlp_drop: DropoutConfig::new(self.proj_pdrop).init(),
            drop_path_attn: dp(),
            drop_path_mlp: dp(),
            stride: self.stride,
        }
    }
}

fn drop_path(dp: &Option<AffineDropPath>, x: Tensor<3>) -> Tensor<3> {
    match dp {
        Some(d) => d.forward(x),
        None => x,
    }
}

impl TransformerBlock {
    /// Apply the block.
    ///
    /// # Shapes
    /// - x: `[B, C, T]`, mask: `[B, T]`
    /// - output: `[B, C, T / stride]` and its mask `[B, T / stride]`
    pub fn forward(&self, x: Tensor<3>, mask: Tensor<2, Bool>) -> (Tensor<3>, Tensor<2, Bool>) {
        let (out, out_mask, m) = self.attn.forward_keep(self.ln1.forward(x.clone()), mask); // m: [B, 1, T']
        let skip = if self.stride > 1 {
            let k = self.stride + 1;
            let opts = MaxPoolOptions::new([k])
                .with_stride([self.stride])
                .with_padding([k / 2]);
            max_pool1d(x, opts)
        } else {
            x
        };
        let out = skip * m.clone() + drop_path(&self.drop_path_attn, out);
        let h = self.mlp_drop.forward(kernels::gelu(conv1d_dense(
            &self.mlp_fc1,
            self.ln2.forward(out.clone()),
        )));
        let h = self.mlp_drop.forward(conv1d_dense(&self.mlp_fc2, h));
        let out = out + drop_path(&self.drop_path_mlp, h * m);
        (out, out_mask)
    }
}
