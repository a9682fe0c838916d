//! Multi-head conv attention, MHCA (SPEC §3.3): depthwise masked convs for q, k, v, ln, 1×1
//! projections, then local-window attention (|i − j| ≤ w/2, w > 1) or global attention
//! (w ≤ 1).
//!
//! The local attention is computed on the band only (`[B, h, T, w + 1]` scores, O(T·w));
//! [`dense_attention`] is the naive T×T reference it is tested against. On a GPU, sequences
//! up to [`BANDED_DENSE_MAX_T`] take [`banded_attention`], the same band as one T×T product
//! with far fewer kernel launches.

use burn::config::Config;
use burn::module::Module;
use burn::nn::conv::{Conv1d, Conv1dConfig};
use burn::nn::{Dropout, DropoutConfig, Initializer};
use burn::tensor::activation::softmax;
#[cfg(test)]
use burn::tensor::s;
use burn::tensor::{Bool, Device, Int, Tensor};

use crate::kernels;

use super::layers::{
    ChannelLayerNorm, ChannelLayerNormConfig, MaskedConv1d, MaskedConv1dConfig, conv1d_dense, downsample_mask,
};

/// Score added to keys on padded steps in local attention (the original's value).
pub const PAD_KEY_PENALTY: f64 = -1e4;

/// Configuration of [`Mhca`].
#[derive(Config, Debug)]
pub struct MhcaConfig {
    /// Embedding size C.
    pub n_embd: usize,
    /// Number of heads (divides C).
    pub n_head: usize,
    /// Local window w; w ≤ 1 means global attention.
    pub window_size: usize,
    /// Downsampling stride of q, k and v (1, or even).
    #[config(default = 1)]
    pub stride: usize,
    /// Dropout on the attention weights.
    #[config(default = 0.0)]
    pub attn_pdrop: f64,
    /// Dropout after the output projection.
    #[config(default = 0.0)]
    pub proj_pdrop: f64,
}

/// Multi-head conv attention with a mask.
#[derive(Module, Debug)]
pub struct Mhca {
    /// Depthwise conv for queries.
    pub query_conv: MaskedConv1d,
    /// ln after the query conv.
    pub query_norm: ChannelLayerNorm,
    /// Depthwise conv for keys.
    pub key_conv: MaskedConv1d,
    /// ln after the key conv.
    pub key_norm: ChannelLayerNorm,
    /// Depthwise conv for values.
    pub value_conv: MaskedConv1d,
    /// ln after the value conv.
    pub value_norm: ChannelLayerNorm,
    /// 1×1 key projection.
    pub key: Conv1d,
    /// 1×1 query projection.
    pub query: Conv1d,
    /// 1×1 value projection.
    pub value: Conv1d,
    /// 1×1 output projection.
    pub proj: Conv1d,
    /// Dropout on attention weights.
    pub attn_drop: Dropout,
    /// Dropout after `proj`.
    pub proj_drop: Dropout,
    /// Number of heads.
    pub n_head: usize,
    /// Local window (≤ 1: global).
    pub window_size: usize,
}

/// A 1×1 Conv1d with zero bias (ActionFormer's backbone init).
pub(crate) fn pointwise(cin: usize, cout: usize, device: &Device) -> Conv1d {
    let mut c = Conv1dConfig::new(cin, cout, 1).init(device);
    c.bias = Some(Initializer::Zeros.init([cout], device));
    c
}

impl MhcaConfig {
    /// Build the attention on `device`.
    pub fn init(&self, device: &Device) -> Mhca {
        let c = self.n_embd;
        let kernel = if self.stride > 1 { self.stride + 1 } else { 3 };
        let dw = || {
            MaskedConv1dConfig::new(c, c, kernel)
                .with_stride(self.stride)
                .with_groups(c)
                .with_bias(false)
                .init(device)
        };
        let ln = || ChannelLayerNormConfig::new(c).init(device);
        Mhca {
            query_conv: dw(),
            query_norm: ln(),
            key_conv: dw(),
            key_norm: ln(),
            value_conv: dw(),
            value_norm: ln(),
            key: pointwise(c, c, device),
            query: pointwise(c, c, device),
            value: pointwise(c, c, device),
            proj: pointwise(c, c, device),
            attn_drop: DropoutConfig::new(self.attn_pdrop).init(),
            proj_drop: DropoutConfig::new(self.proj_pdrop).init(),
            n_head: self.n_head,
            window_size: self.window_size,
        }
    }
}

impl Mhca {
    /// Attend.
    ///
    /// # Shapes
    /// - x: `[B, C, T]`, mask: `[B, T]`
    /// - output: `[B, C, T / stride]` and its mask `[B, T / stride]`
    pub fn forward(&self, x: Tensor<3>, mask: Tensor<2, Bool>) -> (Tensor<3>, Tensor<2, Bool>) {
        let (out, out_mask, _) = self.forward_keep(x, mask);
        (out, out_mask)
    }

    /// [`Self::forward`], also giving the output mask as floats, which the caller can use
    /// instead of casting it again (a launch on a GPU).
    ///
    /// # Shapes
    /// - x: `[B, C, T]`, mask: `[B, T]`
    /// - output: `[B, C, T']`, its mask `[B, T']` and that mask as floats `[B, 1, T']`
    ///   (T' = T / stride)
    pub fn forward_keep(&self, x: Tensor<3>, mask: Tensor<2, Bool>) -> (Tensor<3>, Tensor<2, Bool>, Tensor<3>) {
        let [b, c, _] = x.dims();
        // The query, key and value convs share their stride, so their output mask: it is
        // cast to floats once, for them, the attention and the output.
        let out_mask = downsample_mask(mask, self.query_conv.stride); // [B, T']
        let keep = out_mask.clone().float(); // [B, T']
        let keep3 = keep.clone().unsqueeze_dim::<3>(1); // [B, 1, T']
        let q = self
            .query_norm
            .forward(self.query_conv.forward_zeroed(x.clone(), keep3.clone()));
        let k = self
            .key_norm
            .forward(self.key_conv.forward_zeroed(x.clone(), keep3.clone()));
        let v = self
            .value_norm
            .forward(self.value_conv.forward_zeroed(x, keep3.clone()));

        let q = conv1d_dense(&self.query, q);
        let k = conv1d_dense(&self.key, k);
        let v = conv1d_dense(&self.value, v);
        let t = q.dims()[2];
        let nh = self.n_head;
        let hs = c / nh;
        let heads = |z: Tensor<3>| z.reshape([b, nh, hs, t]).swap_dims(2, 3); // [B, nh, T, hs]
        let (q, k, v) = (heads(q), heads(k), heads(v));
        let q = q.mul_scalar(1.0 / (hs as f64).sqrt());

        let out = if self.window_size > 1 {
            let half = self.window_size / 2;
            if kernels::fused_cube(&q.device()) && t <= BANDED_DENSE_MAX_T {
                banded_attention(q, k, v, keep, half, &self.attn_drop)
            } else {
                local_attention(q, k, v, out_mask.clone(), half, &self.attn_drop)
            }
        } else {
            global_attention(q, k, v, out_mask.clone(), &self.attn_drop)
        }; // [B, nh, T, hs]
        let out = out.swap_dims(2, 3).reshape([b, c, t]); // [B, C, T]
        let out = self.proj_drop.forward(conv1d_dense(&self.proj, out));
        (out * keep3.clone(), out_mask, keep3)
    }
}

/// Longest sequence whose local attention runs as [`banded_attention`] on a GPU: its T × T
/// scores are 4 MiB per head and video at T = 1024; longer sequences (long-video inference)
/// take the O(T·w) [`local_attention`].
pub const BANDED_DENSE_MAX_T: usize = 1024;

/// [`local_attention`] as one T × T product with the band as an additive bias: −inf for
/// |i − j| > `half`, [`PAD_KEY_PENALTY`] on padded keys, padded query rows zeroed after the
/// softmax, then dropout. The same numbers as the diagonal-by-diagonal form, in a handful of
/// kernels instead of several per diagonal forward and backward (issue #16: a GPU waits on
/// launches, and at T ≤ [`BANDED_DENSE_MAX_T`] the wasted products cost less than they do).
///
/// # Shapes
/// - q (already scaled), k, v: `[B, nh, T, hs]`; keep: `[B, T]`, the mask as floats (1 on
///   valid steps, 0 on padded ones)
/// - output: `[B, nh, T, hs]`
pub fn banded_attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    keep: Tensor<2>,
    half: usize,
    drop: &Dropout,
) -> Tensor<4> {
    let [b, _, t, _] = q.dims();
    let device = q.device();
    let att = q.matmul(k.swap_dims(2, 3)); // [B, nh, T, T]
    let i = Tensor::<1, Int>::arange(0..t as i64, &device).reshape([t, 1]);
    let j = Tensor::<1, Int>::arange(0..t as i64, &device).reshape([1, t]);
    let outside = (i - j).abs().greater_elem(half as i64).reshape([1, 1, t, t]);
    let pen = keep.clone().neg().add_scalar(1.0).mul_scalar(PAD_KEY_PENALTY); // [B, T]
    let att = att.mask_fill(outside, f32::NEG_INFINITY) + pen.reshape([b, 1, 1, t]);
    let att = drop.forward(softmax(att, 3) * keep.reshape([b, 1, t, 1]));
    att.matmul(v)
}

/// Local attention on the band |i − j| ≤ `half`, computed diagonal by diagonal.
///
/// Padded keys get [`PAD_KEY_PENALTY`] added before the softmax, out-of-sequence positions
/// are excluded, and rows of padded queries are zeroed after it (as the original does).
///
/// # Shapes
/// - q (already scaled), k, v: `[B, nh, T, hs]`; mask: `[B, T]`
/// - output: `[B, nh, T, hs]`
pub fn local_attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    mask: Tensor<2, Bool>,
    half: usize,
    drop: &Dropout,
) -> Tensor<4> {
    let [b, nh, t, hs] = q.dims();
    let device = q.device();
    let width = 2 * half + 1;
    // Keys and values padded by `half` on both sides: [B, nh, T + 2·half, hs].
    let pad = |z: Tensor<4>| {
        let zeros = Tensor::<4>::zeros([b, nh, half, hs], &device);
        Tensor::cat(vec![zeros.clone(), z, zeros], 2)
    };
    let (kp, vp) = (pad(k), pad(v));
    // Score of query i with key i + d − half, for d in 0..width: [B, nh, T, width].
    let scores: Vec<Tensor<4>> = (0..width)
        .map(|d| (q.clone() * kp.clone().narrow(2, d, t)).sum_dim(3))
        .collect();
    let scores = Tensor::cat(scores, 3);
    // Additive mask per (query, diagonal): −inf outside the sequence, penalty on padded keys.
    let keymask_f = mask.clone().float(); // [B, T]
    let bias = band_bias(&keymask_f, t, half); // [B, 1, T, width]
    let scores = scores + bias;
    let att = softmax(scores, 3);
    // Zero padded queries (their rows would otherwise mix padded keys).
    let qmask = mask.float().reshape([b, 1, t, 1]);
    let att = drop.forward(att * qmask);
    // out_i = Σ_d att[i, d] · v[i + d − half]
    let mut out = Tensor::<4>::zeros([b, nh, t, hs], &device);
    for d in 0..width {
        out = out + att.clone().narrow(3, d, 1) * vp.clone().narrow(2, d, t);
    }
    out
}

/// The additive bias of local attention for every (query i, diagonal d): −inf where key
/// i + d − half is outside [0, T), [`PAD_KEY_PENALTY`] where it is a padded step, 0 otherwise.
///
/// # Shapes
/// - keymask: `[B, T]` as float 0/1
/// - output: `[B, 1, T, 2·half + 1]`
fn band_bias(keymask: &Tensor<2>, t: usize, half: usize) -> Tensor<4> {
    let [b, _] = keymask.dims();
    let device = keymask.device();
    let width = 2 * half + 1;
    // Key penalty, padded by `half` with anything (those slots are −inf anyway): [B, T + 2h].
    let pen = keymask.clone().neg().add_scalar(1.0).mul_scalar(PAD_KEY_PENALTY);
    let z = Tensor::<2>::zeros([b, half], &device);
    let pen = Tensor::cat(vec![z.clone(), pen, z], 1);
    let cols: Vec<Tensor<2>> = (0..width).map(|d| pen.clone().narrow(1, d, t)).collect();
    let pen = Tensor::stack::<3>(cols, 2); // [B, T, width]
    // Out-of-sequence: key index i + d − half outside [0, T).
    let i = Tensor::<1, Int>::arange(0..t as i64, &device).reshape([t, 1]);
    let d = Tensor::<1, Int>::arange(0..width as i64, &device).reshape([1, width]);
    let j = i + d - half as i64; // [T, width]
    let outside = j.clone().lower_elem(0).bool_or(j.greater_equal_elem(t as i64));
    let inf = Tensor::<2>::zeros([t, width], &device).mask_fill(outside, f32::NEG_INFINITY);
    (pen + inf.unsqueeze::<3>()).unsqueeze_dim(1)
}

/// Global attention: padded keys get −inf and values are multiplied by the key mask.
///
/// # Shapes
/// - q (already scaled), k, v: `[B, nh, T, hs]`; mask: `[B, T]`
/// - output: `[B, nh, T, hs]`
pub fn global_attention(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, mask: Tensor<2, Bool>, drop: &Dropout) -> Tensor<4> {
    let [b, _, t, _] = q.dims();
    let att = q.matmul(k.swap_dims(2, 3)); // [B, nh, T, T]
    let keypad = mask.clone().bool_not().reshape([b, 1, 1, t]);
    let att = att.mask_fill(keypad, f32::NEG_INFINITY);
    let att = drop.forward(softmax(att, 3));
    let vmask = mask.float().reshape([b, 1, t, 1]);
    att.matmul(v * vmask)
}

/// Naive dense attention over all T×T pairs, the reference for [`local_attention`]:
/// with `band = Some(half)` it is [`banded_attention`] without dropout (pairs with
/// |i − j| > half get −inf, padded keys [`PAD_KEY_PENALTY`], padded query rows zeroed after
/// the softmax).
///
/// # Shapes
/// - q (already scaled), k, v: `[B, nh, T, hs]`; mask: `[B, T]`
/// - output: `[B, nh, T, hs]`
pub fn dense_attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    mask: Tensor<2, Bool>,
    band: Option<usize>,
) -> Tensor<4> {
    if let Some(half) = band {
        // The band form is the production T×T path without dropout.
        return banded_attention(q, k, v, mask.float(), half, &DropoutConfig::new(0.0).init());
    }
    let [b, _, t, _] = q.dims();
    let att = q.matmul(k.swap_dims(2, 3)); // [B, nh, T, T]
    let keypad = mask.clone().bool_not().reshape([b, 1, 1, t]);
    let att = softmax(att.mask_fill(keypad, f32::NEG_INFINITY), 3);
    att.matmul(v * mask.float().reshape([b, 1, t, 1]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Distribution, TensorData};

    fn max_diff(a: Tensor<4>, b: Tensor<4>) -> f32 {
        (a - b).abs().max().into_scalar::<f32>()
    }

    fn qkv(b: usize, t: usize, dev: &Device) -> (Tensor<4>, Tensor<4>, Tensor<4>) {
        dev.seed(7);
        let d = Distribution::Normal(0.0, 1.0);
        (
            Tensor::random([b, 2, t, 4], d, dev),
            Tensor::random([b, 2, t, 4], d, dev),
            Tensor::random([b, 2, t, 4], d, dev),
        )
    }

    fn mask(valid: &[usize], t: usize, dev: &Device) -> Tensor<2, Bool> {
        let v: Vec<bool> = valid.iter().flat_map(|&n| (0..t).map(move |i| i < n)).collect();
        Tensor::from_data(TensorData::new(v, [valid.len(), t]), dev)
    }

    #[test]
    fn windowed_equals_dense_band_attention() {
        let dev = Device::flex();
        let drop = DropoutConfig::new(0.0).init();
        for (t, half, valid) in [(16, 2, [11, 16]), (8, 1, [8, 3]), (12, 3, [1, 7])] {
            let (q, k, v) = qkv(2, t, &dev);
            let m = mask(&valid, t, &dev);
            let win = local_attention(q.clone(), k.clone(), v.clone(), m.clone(), half, &drop);
            let dense = dense_attention(q, k, v, m, Some(half));
            let d = max_diff(win.clone(), dense);
            assert!(d < 1e-5, "T={t} half={half}: {d}");
            // Padded queries give exactly zero rows.
            let row = win.slice(s![0, .., valid[0].min(t - 1)..t, ..]);
            if valid[0] < t {
                assert_eq!(row.abs().max().into_scalar::<f32>(), 0.0);
            }
        }
    }

    /// The T × T form against the diagonal form: outputs, and the gradients of q, k and v
    /// with padded keys and queries.
    #[test]
    fn banded_equals_local_attention_with_gradients() {
        let dev = Device::flex().autodiff();
        let drop = DropoutConfig::new(0.0).init();
        for (t, half, valid) in [(16, 2, [11, 16]), (9, 4, [9, 2])] {
            let (q, k, v) = qkv(2, t, &dev);
            let m = mask(&valid, t, &dev);
            let w = Tensor::<4>::random([2, 2, t, 4], Distribution::Normal(0.0, 1.0), &dev);
            let run = |banded: bool| {
                let (q, k, v) = (
                    q.clone().require_grad(),
                    k.clone().require_grad(),
                    v.clone().require_grad(),
                );
                let (q_, k_, v_) = (q.clone(), k.clone(), v.clone());
                let out = if banded {
                    banded_attention(q_, k_, v_, m.clone().float(), half, &drop)
                } else {
                    local_attention(q_, k_, v_, m.clone(), half, &drop)
                };
                let grads = (out.clone() * w.clone()).sum().backward();
                let g = |x: &Tensor<4>| x.grad(&grads).unwrap();
                [out.inner(), g(&q), g(&k), g(&v)]
            };
            let (banded, local) = (run(true), run(false));
            for (name, (a, b)) in ["out", "dq", "dk", "dv"].iter().zip(banded.into_iter().zip(local)) {
                assert!(b.clone().abs().max().into_scalar::<f32>() > 1e-3, "{name} is zero");
                let d = max_diff(a, b);
                assert!(d < 1e-5, "T={t} half={half} {name}: {d}");
            }
        }
    }

    #[test]
    fn band_really_limits_the_receptive_field() {
        // Changing a key far outside the window must not change a query's output.
        let dev = Device::flex();
        let drop = DropoutConfig::new(0.0).init();
        let t = 16;
        let (q, k, v) = qkv(1, t, &dev);
        let m = mask(&[16], t, &dev);
        let a = local_attention(q.clone(), k.clone(), v.clone(), m.clone(), 2, &drop);
        let k2 = k.slice_assign(s![.., .., 10..11, ..], Tensor::ones([1, 2, 1, 4], &dev) * 50.0);
        let b = local_attention(q, k2, v, m, 2, &drop);
        // Query 7 sees keys 5..=9: unchanged. Query 8 sees 6..=10: changed.
        let q7 = max_diff(a.clone().narrow(2, 7, 1), b.clone().narrow(2, 7, 1));
        let q8 = max_diff(a.narrow(2, 8, 1), b.narrow(2, 8, 1));
        assert_eq!(q7, 0.0);
        assert!(q8 > 1e-3);
    }

    #[test]
    fn global_attention_equals_dense_without_band() {
        let dev = Device::flex();
        let drop = DropoutConfig::new(0.0).init();
        let (q, k, v) = qkv(2, 10, &dev);
        let m = mask(&[10, 4], 10, &dev);
        let g = global_attention(q.clone(), k.clone(), v.clone(), m.clone(), &drop);
        let d = dense_attention(q, k, v, m, None);
        assert!(max_diff(g, d) < 1e-6);
    }
}
