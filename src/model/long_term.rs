//! Long short-term spatiotemporal attention input layer (SPEC §3.1 steps 1–4): ConvLSTM
//! long-term attention, the spatial-attention conv stack, the residual re-weighting and the
//! image-wise contrastive projection of foreground and background.

use burn::config::Config;
use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Initializer, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::activation::{relu, sigmoid};
use burn::tensor::{Device, Int, Tensor, TensorData};

use super::convlstm::{ConvLstm, ConvLstmConfig, LstmState};
use crate::kernels;

/// Configuration of [`SpatialAttention`].
#[derive(Config, Debug)]
pub struct SpatialAttentionConfig {
    /// Channels of the first conv (the paper: 8).
    #[config(default = 8)]
    pub mid1: usize,
    /// Channels of the second conv (the paper: 16).
    #[config(default = 16)]
    pub mid2: usize,
}

/// `A = σ(conv1x1(relu(bn(conv3x3(relu(bn(conv3x3(x))))))))` on single-channel images.
#[derive(Module, Debug)]
pub struct SpatialAttention {
    /// 3×3 conv, 1 → mid1 (PyTorch `attention_op.0`).
    pub conv1: Conv2d,
    /// BatchNorm2d (PyTorch `attention_op.1`).
    pub bn1: BatchNorm,
    /// 3×3 conv, mid1 → mid2 (PyTorch `attention_op.3`).
    pub conv2: Conv2d,
    /// BatchNorm2d (PyTorch `attention_op.4`).
    pub bn2: BatchNorm,
    /// 1×1 conv, mid2 → 1 (PyTorch `attention_op.6`).
    pub conv3: Conv2d,
}

impl SpatialAttentionConfig {
    /// Build the conv stack on `device` (PyTorch default init; these Conv2d biases are not zeroed).
    pub fn init(&self, device: &Device) -> SpatialAttention {
        let conv3x3 = |cin: usize, cout: usize| {
            Conv2dConfig::new([cin, cout], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(device)
        };
        SpatialAttention {
            conv1: conv3x3(1, self.mid1),
            bn1: BatchNormConfig::new(self.mid1).init(device),
            conv2: conv3x3(self.mid1, self.mid2),
            bn2: BatchNormConfig::new(self.mid2).init(device),
            conv3: Conv2dConfig::new([self.mid2, 1], [1, 1]).init(device),
        }
    }
}

impl SpatialAttention {
    /// The attention map, in (0, 1). For inference on the CPU the whole stack is one pass
    /// per frame with the BatchNorms folded in ([`kernels::spatial_attention_eval`]).
    ///
    /// # Shapes
    /// - x: `[N, 1, H, W]`
    /// - output: `[N, 1, H, W]`
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let fused =
            kernels::spatial_attention_eval(&x, (&self.conv1, &self.bn1), (&self.conv2, &self.bn2), &self.conv3);
        if let Some(a) = fused {
            return a;
        }
        let x = bn_relu(&self.bn1, conv(&self.conv1, x));
        let x = bn_relu(&self.bn2, conv(&self.conv2, x));
        sigmoid(conv(&self.conv3, x))
    }
}

/// A conv of the stack: `c.forward(x)`, fused on the CPU back-end (several times faster
/// over B·T frames; [`kernels::conv_same`]).
fn conv(c: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    kernels::conv_same(c, x)
}

/// `relu(bn(x))`: [`batch_norm_2d`] then a ReLU, or one fused operation where
/// [`kernels::batch_norm_relu`] has one.
///
/// # Shapes
/// - x: `[N, C, H, W]`
/// - output: `[N, C, H, W]`
fn bn_relu(bn: &BatchNorm, x: Tensor<4>) -> Tensor<4> {
    match kernels::batch_norm_relu(bn, &x) {
        Some(y) => y,
        None => relu(batch_norm_2d(bn, x)),
    }
}

/// BatchNorm2d as PyTorch computes it.
///
/// In eval (or on a plain device) this is burn's BatchNorm on the running statistics. In
/// training the batch statistics are reduced axis by axis (W, H, then N: at most a few hundred
/// terms per float32 sum) instead of over all N·H·W ≈ 10⁶ values at once, which alone
/// differs from PyTorch by ~1e-5 relative in the mean and 2e-4 at the logits; the running
/// variance gets the unbiased estimate, as in PyTorch.
///
/// # Shapes
/// - x: `[N, C, H, W]`
/// - output: `[N, C, H, W]`
pub fn batch_norm_2d(bn: &BatchNorm, x: Tensor<4>) -> Tensor<4> {
    if !(x.device().is_autodiff() && bn.training.is_enabled()) {
        return bn.forward(x);
    }
    let [n, c, h, w] = x.dims();
    let count = (n * h * w) as f64;
    let mean = x.clone().mean_dim(3).mean_dim(2).mean_dim(0); // [1, C, 1, 1]
    let centered = x - mean.clone();
    let var = centered.clone().square().mean_dim(3).mean_dim(2).mean_dim(0); // biased
    let out = centered / var.clone().add_scalar(bn.epsilon).sqrt();
    let out = out * bn.gamma.val().reshape([1, c, 1, 1]) + bn.beta.val().reshape([1, c, 1, 1]);

    let mom = bn.momentum;
    let device = out.device();
    let rm = bn.running_mean.value_sync().to_device(&device);
    let rv = bn.running_var.value_sync().to_device(&device);
    let mean = mean.detach().reshape([c]);
    let unbiased = var.detach().reshape([c]).mul_scalar(count / (count - 1.0).max(1.0));
    bn.running_mean
        .update(rm.mul_scalar(1.0 - mom).add(mean.mul_scalar(mom)).detach());
    bn.running_var
        .update(rv.mul_scalar(1.0 - mom).add(unbiased.mul_scalar(mom)).detach());
    out
}

/// Configuration of [`Projection`].
#[derive(Config, Debug)]
pub struct ProjectionConfig {
    /// Input size (the flattened image, 4096).
    pub d_input: usize,
    /// Hidden size (1024).
    #[config(default = 1024)]
    pub d_hidden: usize,
    /// Output size (256).
    #[config(default = 256)]
    pub d_output: usize,
}

/// Two linear maps with no activation between, shared by foreground and background
/// (PyTorch `conv_1`).
#[derive(Module, Debug)]
pub struct Projection {
    /// d_input → d_hidden (PyTorch `conv_1.0`, stored transposed `[in, out]`).
    pub fc1: Linear,
    /// d_hidden → d_output (PyTorch `conv_1.1`).
    pub fc2: Linear,
}

impl ProjectionConfig {
    /// Build the projection on `device` (zero biases, as the backbone init does).
    pub fn init(&self, device: &Device) -> Projection {
        let lin = |i: usize, o: usize| {
            let mut l = LinearConfig::new(i, o).init(device);
            l.bias = Some(Initializer::Zeros.init([o], device));
            l
        };
        Projection {
            fc1: lin(self.d_input, self.d_hidden),
            fc2: lin(self.d_hidden, self.d_output),
        }
    }
}

impl Projection {
    /// Project every time step.
    ///
    /// # Shapes
    /// - x: `[B, T, d_input]`
    /// - output: `[B, T, d_output]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        kernels::linear(&self.fc2, kernels::linear(&self.fc1, x))
    }
}

/// Configuration of [`LongTermAttention`].
#[derive(Config, Debug)]
pub struct LongTermAttentionConfig {
    /// Side of the square image each time step is (64; input_dim = side²).
    pub image_side: usize,
    /// `SpAtten`: the spatial-attention conv stack (step 2).
    pub sp_atten: bool,
    /// `TeAtten`: the ConvLSTM long-term attention (step 1).
    pub te_atten: bool,
    /// `pretrain`: the image-wise contrastive projection (step 4; needs both attentions).
    pub pretrain: bool,
    /// The ConvLSTM.
    #[config(default = "ConvLstmConfig::new()")]
    pub convlstm: ConvLstmConfig,
    /// The spatial-attention stack.
    #[config(default = "SpatialAttentionConfig::new()")]
    pub spatial: SpatialAttentionConfig,
    /// Hidden size of the projection (1024).
    #[config(default = 1024)]
    pub proj_hidden: usize,
    /// Output size of the projection (256).
    #[config(default = 256)]
    pub proj_dim: usize,
}

/// What [`LongTermAttention::forward_piece`] carries from one piece of a video to the next.
#[derive(Debug, Clone, Default)]
pub struct LongTermState {
    /// The ConvLSTM's state after the last frame so far (`None` before the first piece).
    lstm: Option<LstmState>,
}

/// Steps 1–4 of SPEC §3.1. Which parts exist follows the flags; all off is the identity.
#[derive(Module, Debug)]
pub struct LongTermAttention {
    /// ConvLSTM (TeAtten).
    pub convlstm: Option<ConvLstm>,
    /// Spatial attention (SpAtten).
    pub spatial: Option<SpatialAttention>,
    /// Foreground/background projection (pretrain).
    pub projection: Option<Projection>,
    /// Image side.
    pub image_side: usize,
}

/// Which time steps the foreground/background projections run on. They feed only the
/// contrastive loss, which reads a few anchor steps per video, and each step's projection
/// depends on that step alone: projecting only the anchors gives the same rows (and the same
/// gradients) for a sliver of the two `[B·T, side²] × [side², d_hidden]` products.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Project<'a> {
    /// Not at all (detection).
    Skip,
    /// Every step: [`LongTermOutput::fg`] and [`LongTermOutput::bg`] `[B, d, T]`.
    All,
    /// The given steps only, as rows `video · T + t` of the videos' steps laid end to end, for
    /// the foreground and the background separately: [`LongTermOutput::fg_rows`] and
    /// [`LongTermOutput::bg_rows`] `[n, d]`, row i for `fg[i]` and `bg[i]`. Every row must be
    /// < B·T.
    Rows {
        /// Foreground rows.
        fg: &'a [usize],
        /// Background rows.
        bg: &'a [usize],
    },
}

/// What [`LongTermAttention::forward`] returns.
#[derive(Debug, Clone)]
pub struct LongTermOutput {
    /// The re-weighted input `[B, C, T]`.
    pub x: Tensor<3>,
    /// Foreground projection `[B, d, T]` (pretrain, [`Project::All`]).
    pub fg: Option<Tensor<3>>,
    /// Background projection `[B, d, T]` (pretrain, [`Project::All`]).
    pub bg: Option<Tensor<3>>,
    /// Foreground projection of the chosen steps `[n, d]` (pretrain, [`Project::Rows`]).
    pub fg_rows: Option<Tensor<2>>,
    /// Background projection of the chosen steps `[n, d]` (pretrain, [`Project::Rows`]).
    pub bg_rows: Option<Tensor<2>>,
    /// Last ConvLSTM layer's hidden state `[B, T, 1, H, W]` (TeAtten).
    pub lstm_h: Option<Tensor<5>>,
    /// `lstm_h + x` as images `[B·T, 1, H, W]` (TeAtten and SpAtten).
    pub x_lstm: Option<Tensor<4>>,
    /// The attention map `[B, C, T]` (either attention).
    pub attention: Option<Tensor<3>>,
}

impl LongTermAttentionConfig {
    /// Build the enabled parts on `device`.
    pub fn init(&self, device: &Device) -> LongTermAttention {
        let side2 = self.image_side * self.image_side;
        LongTermAttention {
            convlstm: self.te_atten.then(|| self.convlstm.init(device)),
            spatial: self.sp_atten.then(|| self.spatial.init(device)),
            projection: (self.pretrain && self.sp_atten && self.te_atten).then(|| {
                ProjectionConfig::new(side2)
                    .with_d_hidden(self.proj_hidden)
                    .with_d_output(self.proj_dim)
                    .init(device)
            }),
            image_side: self.image_side,
        }
    }
}

impl LongTermAttention {
    /// Re-weight the input by the enabled attentions and project fg/bg.
    ///
    /// # Shapes
    /// - x: `[B, C, T]` with C = side²; step t of video b is the image `x[b, :, t]` row-major
    /// - output: see [`LongTermOutput`]
    ///
    /// `project` says which steps the fg/bg projections run on (inference needs none).
    pub fn forward(&self, x: Tensor<3>, project: Project<'_>) -> LongTermOutput {
        self.attend(x, project, |lstm, x_img| lstm.forward(x_img))
    }

    /// The re-weighted input (the `x` of [`Self::forward`]) of the next `n` frames of the
    /// videos, for inference: the ConvLSTM starts from the state the previous call left in
    /// `state` (start each video with `LongTermState::default()`) and leaves its own there.
    /// A video run in pieces gives the numbers of one run over it all (the recurrence is
    /// sequential anyway; the spatial stack and, in eval, its BatchNorm work per frame),
    /// while the activations (the ConvLSTM's gates and hidden states, the stack's 16-channel
    /// maps: ~1 MB per frame) exist for one piece only.
    ///
    /// # Shapes
    /// - x: `[B, C, n]`, the frames after those of the previous call
    /// - output: `[B, C, n]`
    pub fn forward_piece(&self, x: Tensor<3>, state: &mut LongTermState) -> Tensor<3> {
        self.attend(x, Project::Skip, |lstm, x_img| {
            let (h, next) = lstm.forward_from(x_img, state.lstm.take());
            state.lstm = Some(next);
            h
        })
        .x
    }

    /// [`Self::forward`] with `lstm` running the ConvLSTM over `[B, T, 1, H, W]`.
    fn attend(
        &self,
        x: Tensor<3>,
        project: Project<'_>,
        lstm_run: impl FnOnce(&ConvLstm, Tensor<5>) -> Tensor<5>,
    ) -> LongTermOutput {
        let [b, c, t] = x.dims();
        let s = self.image_side;
        let mut out = LongTermOutput {
            x: x.clone(),
            fg: None,
            bg: None,
            fg_rows: None,
            bg_rows: None,
            lstm_h: None,
            x_lstm: None,
            attention: None,
        };
        let x_btc = x.clone().swap_dims(1, 2); // [B, T, C]
        match (&self.convlstm, &self.spatial) {
            (Some(lstm), Some(spatial)) => {
                let x_img = x_btc.reshape([b, t, 1, s, s]); // [B, T, 1, H, W]
                let h = lstm_run(lstm, x_img.clone());
                let x_lstm = (h.clone() + x_img).reshape([b * t, 1, s, s]); // [B·T, 1, H, W]
                let a_btc = spatial.forward(x_lstm.clone()).reshape([b, t, c]); // [B, T, C]
                let attention = a_btc.clone().swap_dims(1, 2); // [B, C, T]
                match (&self.projection, project) {
                    (Some(proj), Project::All) => {
                        let xl = x_lstm.clone().reshape([b, t, c]); // [B, T, C]
                        let fg = proj.forward(xl.clone() * a_btc.clone());
                        let bg = proj.forward(xl * a_btc.neg().add_scalar(1.0));
                        out.fg = Some(fg.swap_dims(1, 2)); // [B, d, T]
                        out.bg = Some(bg.swap_dims(1, 2));
                    }
                    (Some(proj), Project::Rows { fg, bg }) => {
                        let xl = x_lstm.clone().reshape([b * t, c]); // [B·T, C]
                        let a = a_btc.clone().reshape([b * t, c]); // [B·T, C]
                        let device = xl.device();
                        let pick = |x: Tensor<2>, rows: &[usize]| {
                            let idx: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
                            let idx = Tensor::<1, Int>::from_data(TensorData::new(idx, [rows.len()]), &device);
                            x.select(0, idx).unsqueeze_dim::<3>(0) // [1, n, C]
                        };
                        let rows = |y: Tensor<3>| {
                            let [_, n, d] = y.dims();
                            y.reshape([n, d]) // [n, d]
                        };
                        let fg_in = pick(xl.clone(), fg) * pick(a.clone(), fg);
                        let bg_in = pick(xl, bg) * pick(a, bg).neg().add_scalar(1.0);
                        out.fg_rows = Some(rows(proj.forward(fg_in)));
                        out.bg_rows = Some(rows(proj.forward(bg_in)));
                    }
                    _ => {}
                }
                out.x = x.clone() + x * attention.clone();
                out.lstm_h = Some(h);
                out.x_lstm = Some(x_lstm);
                out.attention = Some(attention);
            }
            (None, Some(spatial)) => {
                let imgs = x_btc.reshape([b * t, 1, s, s]); // [B·T, 1, H, W]
                let attention = spatial.forward(imgs).reshape([b, t, c]).swap_dims(1, 2); // [B, C, T]
                out.x = x.clone() + x * attention.clone();
                out.attention = Some(attention);
            }
            (Some(lstm), None) => {
                let x_img = x_btc.reshape([b, t, 1, s, s]); // [B, T, 1, H, W]
                let h = lstm_run(lstm, x_img.clone());
                let a = sigmoid(h.clone());
                let y = a.clone() * x_img.clone() + x_img; // [B, T, 1, H, W]
                out.x = y.reshape([b, t, c]).swap_dims(1, 2); // [B, C, T]
                out.attention = Some(a.reshape([b, t, c]).swap_dims(1, 2));
                out.lstm_h = Some(h);
            }
            (None, None) => {}
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::Module;
    use burn::tensor::{Distribution, TensorData};

    #[test]
    fn the_fused_inference_stack_equals_the_stack_op_by_op() {
        // Inference runs the spatial stack as one kernel with the BatchNorms folded in; the
        // op-by-op stack (fused convs, eval BatchNorm + ReLU, sigmoid) is the reference.
        // Non-trivial running statistics and biases; 64×64 and odd-sized frames.
        let dev = Device::flex();
        dev.seed(12);
        let mut sp = SpatialAttentionConfig::new().init(&dev);
        for bn in [&mut sp.bn1, &mut sp.bn2] {
            let c = bn.gamma.dims()[0];
            let u = |lo, hi| Tensor::<1>::random([c], Distribution::Uniform(lo, hi), &dev);
            bn.running_mean = burn::module::RunningState::new(u(-0.5, 0.5));
            bn.running_var = burn::module::RunningState::new(u(0.5, 2.0));
            bn.gamma = burn::module::Param::from_tensor(u(0.5, 1.5));
            bn.beta = burn::module::Param::from_tensor(u(-0.2, 0.2));
        }
        let sp = sp.valid();
        for shape in [[5, 1, 64, 64], [3, 1, 9, 7]] {
            let x = Tensor::<4>::random(shape, Distribution::Uniform(0.0, 1.0), &dev);
            let fused = kernels::spatial_attention_eval(&x, (&sp.conv1, &sp.bn1), (&sp.conv2, &sp.bn2), &sp.conv3)
                .expect("the plain flex device runs the fused stack");
            let want = sigmoid(conv(
                &sp.conv3,
                bn_relu(&sp.bn2, conv(&sp.conv2, bn_relu(&sp.bn1, conv(&sp.conv1, x.clone())))),
            ));
            assert_eq!(fused.dims(), want.dims());
            let (f, w) = (
                fused.into_data().try_to_vec::<f32>().unwrap(),
                want.into_data().try_to_vec::<f32>().unwrap(),
            );
            let diff = f.iter().zip(&w).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            assert!(diff < 2e-6, "{shape:?}: {diff}");
            // Not a constant map: the attention varies over the frame.
            let (lo, hi) = w.iter().fold((1.0f32, 0.0f32), |(l, h), &v| (l.min(v), h.max(v)));
            assert!(hi - lo > 1e-3, "{shape:?}: {lo}..{hi}");
            // `forward` takes the fused path.
            let y = sp.forward(x).into_data().try_to_vec::<f32>().unwrap();
            assert_eq!(y, f, "{shape:?}");
        }
        // An autodiff device declines (training keeps the op-by-op stack with its backward).
        let ad = Tensor::<4>::zeros([1, 1, 8, 8], &dev.clone().autodiff());
        assert!(kernels::spatial_attention_eval(&ad, (&sp.conv1, &sp.bn1), (&sp.conv2, &sp.bn2), &sp.conv3).is_none());
    }

    #[test]
    fn the_input_layer_run_in_pieces_equals_it_run_whole() {
        // Inference streams the input layer (`forward_piece`); T = 11 in pieces of 4 (the
        // last one short), B = 1 and 2, fused flex ConvLSTM and the tensor-op path, each
        // combination of the attentions. BatchNorm with non-trivial running statistics, so
        // that eval mode (per frame) is what is compared.
        let dev = Device::flex();
        dev.seed(8);
        for (sp, te) in [(true, true), (false, true), (true, false)] {
            let cfg = LongTermAttentionConfig::new(8, sp, te, false)
                .with_convlstm(ConvLstmConfig::new().with_hidden_dims(vec![3, 1]));
            let mut lt = cfg.init(&dev);
            if let Some(spatial) = lt.spatial.as_mut() {
                for bn in [&mut spatial.bn1, &mut spatial.bn2] {
                    let c = bn.gamma.dims()[0];
                    bn.running_mean =
                        burn::module::RunningState::new(Tensor::random([c], Distribution::Uniform(-0.5, 0.5), &dev));
                    bn.running_var =
                        burn::module::RunningState::new(Tensor::random([c], Distribution::Uniform(0.5, 2.0), &dev));
                }
            }
            let mut lt = lt.valid();
            for (b, fused) in [(1, true), (2, true), (1, false), (2, false)] {
                if let Some(l) = lt.convlstm.as_mut() {
                    l.fused = fused;
                }
                let x = Tensor::<3>::random([b, 64, 11], Distribution::Uniform(0.0, 1.0), &dev);
                let whole = lt.forward(x.clone(), Project::Skip).x;
                let mut state = LongTermState::default();
                let pieces: Vec<Tensor<3>> = [(0, 4), (4, 4), (8, 3)]
                    .into_iter()
                    .map(|(t0, n)| lt.forward_piece(x.clone().narrow(2, t0, n), &mut state))
                    .collect();
                let pieces = Tensor::cat(pieces, 2);
                let what = format!("sp {sp}, te {te}, b {b}, fused {fused}");
                assert_eq!(pieces.dims(), [b, 64, 11], "{what}");
                let (p, w) = (
                    pieces.into_data().try_to_vec::<f32>().unwrap(),
                    whole.into_data().try_to_vec::<f32>().unwrap(),
                );
                assert_eq!(p, w, "{what}");
                // The layer changed the input: the comparison is not of two identities.
                let xv = x.into_data().try_to_vec::<f32>().unwrap();
                assert!(p.iter().zip(&xv).any(|(a, b)| (a - b).abs() > 1e-3), "{what}");
            }
        }
    }

    #[test]
    fn batch_norm_training_uses_batch_statistics_and_updates_running_ones() {
        let dev = Device::flex().autodiff();
        dev.seed(9);
        let bn = BatchNormConfig::new(2).init(&dev);
        let x = Tensor::<4>::random([4, 2, 3, 3], Distribution::Normal(2.0, 3.0), &dev);
        let y = batch_norm_2d(&bn, x.clone());
        // Per channel: mean 0, biased variance 1 (up to eps).
        let m: Vec<f32> = y
            .clone()
            .mean_dim(3)
            .mean_dim(2)
            .mean_dim(0)
            .into_data()
            .try_to_vec()
            .unwrap();
        assert!(m.iter().all(|v| v.abs() < 1e-5), "{m:?}");
        let v: Vec<f32> = y
            .square()
            .mean_dim(3)
            .mean_dim(2)
            .mean_dim(0)
            .into_data()
            .try_to_vec()
            .unwrap();
        assert!(v.iter().all(|v| (v - 1.0).abs() < 1e-3), "{v:?}");
        // Running stats: 0.9·init + 0.1·batch (unbiased variance, n = 36).
        let xs: Vec<f32> = x.into_data().try_to_vec().unwrap();
        let ch = |c: usize| -> Vec<f64> {
            (0..4)
                .flat_map(|n| (0..9).map(move |i| (n, i)))
                .map(|(n, i)| xs[(n * 2 + c) * 9 + i] as f64)
                .collect()
        };
        let rm: Vec<f32> = bn.running_mean.value_sync().into_data().try_to_vec().unwrap();
        let rv: Vec<f32> = bn.running_var.value_sync().into_data().try_to_vec().unwrap();
        for c in 0..2 {
            let v = ch(c);
            let mean = v.iter().sum::<f64>() / 36.0;
            let var = v.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / 35.0;
            assert!((rm[c] as f64 - 0.1 * mean).abs() < 1e-5);
            assert!((rv[c] as f64 - (0.9 + 0.1 * var)).abs() < 1e-4);
        }
        // Eval: the running statistics.
        let bnv = bn.valid();
        let one = Tensor::<4>::from_data(TensorData::new(vec![1.0f32; 2], [1, 2, 1, 1]), &Device::flex());
        let e: Vec<f32> = batch_norm_2d(&bnv, one).into_data().try_to_vec().unwrap();
        for c in 0..2 {
            let want = (1.0 - rm[c]) / (rv[c] + 1e-5).sqrt();
            assert!((e[c] - want).abs() < 1e-5);
        }
    }
}
