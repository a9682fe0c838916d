//! The whole STA-IPCon network (SPEC §3): backbone → identity neck → shared heads, plus the
//! point generator. [`NetworkConfig`] holds everything the model needs.

use burn::config::Config;
use burn::module::Module;
use burn::tensor::{Bool, Device, Tensor};

use super::backbone::{Backbone, BackboneConfig};
use super::convlstm::ConvLstmConfig;
use super::head::{ClsHead, ClsHeadConfig, HeadConfig, RegHead, RegHeadConfig};
use super::long_term::LongTermAttentionConfig;
use super::neck::{Neck, NeckConfig};
use super::points::Points;
use super::{ModelError, check_dims};

/// Everything the network needs (the `model` section of the YAML plus `input_dim`,
/// `num_classes`, `max_seq_len` and the train_cfg values that shape the model).
#[derive(Config, Debug)]
pub struct NetworkConfig {
    /// Feature channels per step; with any input-layer flag on it must be a square (side²).
    #[config(default = 4096)]
    pub input_dim: usize,
    /// Number of classes.
    #[config(default = 2)]
    pub num_classes: usize,
    /// Training length; must be divisible by [`NetworkConfig::max_div_factor`].
    #[config(default = 128)]
    pub max_seq_len: usize,
    /// `backbone_arch`: (embedding convs, stem blocks, branch blocks).
    #[config(default = "vec![2, 2, 5]")]
    pub backbone_arch: Vec<usize>,
    /// Downsampling factor between branch levels.
    #[config(default = 2)]
    pub scale_factor: usize,
    /// Regression range `[min, max]` per output level.
    #[config(default = "vec![[0.0, 4.0], [4.0, 8.0], [8.0, 16.0], [16.0, 32.0], [32.0, 64.0], [64.0, 10000.0]]")]
    pub regression_range: Vec<[f32; 2]>,
    /// Attention heads.
    #[config(default = 4)]
    pub n_head: usize,
    /// `n_mha_win_size`: one window for all levels or one per backbone level; ≤ 1 = global.
    #[config(default = "vec![4]")]
    pub n_mha_win_size: Vec<i64>,
    /// Kernel of the embedding convs.
    #[config(default = 3)]
    pub embd_kernel_size: usize,
    /// Embedding size.
    #[config(default = 512)]
    pub embd_dim: usize,
    /// ln after embedding convs.
    #[config(default = true)]
    pub embd_with_ln: bool,
    /// Neck size (must equal embd_dim: the neck is the identity).
    #[config(default = 512)]
    pub fpn_dim: usize,
    /// ln in the neck.
    #[config(default = true)]
    pub fpn_with_ln: bool,
    /// First backbone level fed to the heads.
    #[config(default = 0)]
    pub fpn_start_level: usize,
    /// Head trunk size.
    #[config(default = 512)]
    pub head_dim: usize,
    /// Head kernel size.
    #[config(default = 3)]
    pub head_kernel_size: usize,
    /// Head layers including the final conv. (The original passes it to the regression head
    /// only; its classification head always has 3. xca applies it to both.)
    #[config(default = 3)]
    pub head_num_layers: usize,
    /// ln in the heads.
    #[config(default = true)]
    pub head_with_ln: bool,
    /// `SpAtten`: spatial attention.
    #[config(default = true)]
    pub sp_atten: bool,
    /// `TeAtten`: ConvLSTM long-term attention.
    #[config(default = true)]
    pub te_atten: bool,
    /// `SelfAtten`: run the transformer stem.
    #[config(default = true)]
    pub self_atten: bool,
    /// `pretrain`: fg/bg contrastive projections (needs SpAtten and TeAtten).
    #[config(default = true)]
    pub pretrain: bool,
    /// `random_patch`: patch-wise contrastive projection.
    #[config(default = true)]
    pub random_patch: bool,
    /// train_cfg.dropout.
    #[config(default = 0.0)]
    pub dropout: f64,
    /// train_cfg.droppath.
    #[config(default = 0.1)]
    pub droppath: f64,
    /// train_cfg.cls_prior_prob.
    #[config(default = 0.01)]
    pub cls_prior_prob: f64,
    /// train_cfg.head_empty_cls.
    #[config(default = "Vec::new()")]
    pub head_empty_cls: Vec<usize>,
    /// ConvLSTM hidden channels per layer; the last must be 1.
    #[config(default = "vec![8, 8, 1]")]
    pub convlstm_hidden: Vec<usize>,
    /// Hidden size of the fg/bg projection.
    #[config(default = 1024)]
    pub proj_hidden: usize,
    /// Output size of the fg/bg projection.
    #[config(default = 256)]
    pub proj_dim: usize,
}

fn bad(field: &'static str, reason: impl Into<String>) -> ModelError {
    ModelError::Config {
        field,
        reason: reason.into(),
    }
}

impl NetworkConfig {
    /// Number of backbone levels (`1 + arch[2]`).
    pub fn backbone_levels(&self) -> usize {
        self.backbone_arch.get(2).copied().unwrap_or(0) + 1
    }

    /// Number of output levels (backbone levels from `fpn_start_level` on).
    pub fn num_levels(&self) -> usize {
        self.backbone_levels().saturating_sub(self.fpn_start_level)
    }

    /// Stride of each output level: `scale_factor^l` for l from `fpn_start_level`.
    pub fn fpn_strides(&self) -> Vec<usize> {
        (self.fpn_start_level..self.backbone_levels())
            .map(|l| self.scale_factor.pow(l as u32))
            .collect()
    }

    /// Window of each backbone level (1 = global attention).
    pub fn window_sizes(&self) -> Vec<usize> {
        let n = self.backbone_levels();
        let w = |v: i64| if v > 1 { v as usize } else { 1 };
        if self.n_mha_win_size.len() == 1 {
            vec![w(self.n_mha_win_size[0]); n]
        } else {
            self.n_mha_win_size.iter().map(|&v| w(v)).collect()
        }
    }

    /// Largest `stride_l · (w_l/2)·2` (or `stride_l` for global attention) over levels: inputs
    /// are padded to a multiple of it.
    pub fn max_div_factor(&self) -> usize {
        let windows = self.window_sizes();
        (0..self.backbone_levels())
            .map(|l| {
                let s = self.scale_factor.pow(l as u32);
                let w = windows.get(l).copied().unwrap_or(1);
                if w > 1 { s * (w / 2) * 2 } else { s }
            })
            .max()
            .unwrap_or(1)
    }

    /// Side of the square image each step is, if `input_dim` is a square.
    pub fn image_side(&self) -> Option<usize> {
        let s = (self.input_dim as f64).sqrt().round() as usize;
        (s * s == self.input_dim).then_some(s)
    }

    /// Check every value the network cannot be built with.
    pub fn validate(&self) -> Result<(), ModelError> {
        if self.backbone_arch.len() != 3 {
            return Err(bad("backbone_arch", "needs 3 entries (embedding convs, stem, branch)"));
        }
        if self.backbone_arch[0] == 0 {
            return Err(bad("backbone_arch", "needs at least one embedding conv"));
        }
        if self.input_dim == 0 || self.embd_dim == 0 || self.head_dim == 0 {
            return Err(bad("embd_dim", "input_dim, embd_dim and head_dim must be positive"));
        }
        if self.n_head == 0 || !self.embd_dim.is_multiple_of(self.n_head) {
            return Err(bad(
                "n_head",
                format!("{} heads do not divide embd_dim {}", self.n_head, self.embd_dim),
            ));
        }
        if self.fpn_dim != self.embd_dim {
            return Err(bad(
                "fpn_dim",
                format!("the identity neck needs fpn_dim == embd_dim ({})", self.embd_dim),
            ));
        }
        if self.backbone_arch[2] > 0 && (self.scale_factor < 2 || !self.scale_factor.is_multiple_of(2)) {
            return Err(bad("scale_factor", "must be even and at least 2"));
        }
        if self.fpn_start_level >= self.backbone_levels() {
            return Err(bad("fpn_start_level", "must be below the number of levels"));
        }
        let n = self.backbone_levels();
        if self.n_mha_win_size.len() != 1 && self.n_mha_win_size.len() != n {
            return Err(bad(
                "n_mha_win_size",
                format!("needs 1 or {n} entries, got {}", self.n_mha_win_size.len()),
            ));
        }
        if self.regression_range.len() != self.num_levels() {
            return Err(bad(
                "regression_range",
                format!(
                    "has {} entries but the model has {} levels",
                    self.regression_range.len(),
                    self.num_levels()
                ),
            ));
        }
        if self.embd_kernel_size.is_multiple_of(2) {
            return Err(bad(
                "embd_kernel_size",
                format!("must be odd, got {}", self.embd_kernel_size),
            ));
        }
        if self.head_kernel_size.is_multiple_of(2) {
            return Err(bad(
                "head_kernel_size",
                format!("must be odd, got {}", self.head_kernel_size),
            ));
        }
        if self.head_num_layers == 0 {
            return Err(bad("head_num_layers", "must be at least 1"));
        }
        if self.num_classes == 0 {
            return Err(bad("num_classes", "must be at least 1"));
        }
        let mdf = self.max_div_factor();
        if self.max_seq_len == 0 || !self.max_seq_len.is_multiple_of(mdf) {
            return Err(bad(
                "max_seq_len",
                format!("{} is not divisible by max_div_factor {mdf}", self.max_seq_len),
            ));
        }
        if self.sp_atten || self.te_atten || self.random_patch {
            match self.image_side() {
                None => {
                    return Err(bad(
                        "input_dim",
                        format!("{} is not a square (each step must be an image)", self.input_dim),
                    ));
                }
                Some(s) if self.random_patch && s < 5 => {
                    return Err(bad("input_dim", "random_patch needs images of at least 5×5"));
                }
                _ => {}
            }
        }
        if self.pretrain && !(self.sp_atten && self.te_atten) {
            return Err(bad(
                "pretrain",
                "needs SpAtten and TeAtten (fg/bg are cut by their attention map)",
            ));
        }
        if self.te_atten && self.convlstm_hidden.last() != Some(&1) {
            return Err(bad("convlstm_hidden", "the last ConvLSTM layer must have 1 channel"));
        }
        if self.convlstm_hidden.contains(&0) {
            return Err(bad("convlstm_hidden", "hidden sizes must be positive"));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(bad("dropout", "must be in [0, 1)"));
        }
        if !(0.0..1.0).contains(&self.droppath) {
            return Err(bad("droppath", "must be in [0, 1)"));
        }
        if self.cls_prior_prob >= 1.0 {
            return Err(bad("cls_prior_prob", "must be below 1"));
        }
        if let Some(&c) = self.head_empty_cls.iter().find(|&&c| c >= self.num_classes) {
            return Err(bad("head_empty_cls", format!("class {c} ≥ num_classes")));
        }
        Ok(())
    }

    /// Validate and build the network on `device`.
    pub fn init(&self, device: &Device) -> Result<Network, ModelError> {
        self.validate()?;
        let side = self.image_side().unwrap_or(0);
        let arch = [self.backbone_arch[0], self.backbone_arch[1], self.backbone_arch[2]];
        let long_term = LongTermAttentionConfig::new(side, self.sp_atten, self.te_atten, self.pretrain)
            .with_convlstm(ConvLstmConfig::new().with_hidden_dims(self.convlstm_hidden.clone()))
            .with_proj_hidden(self.proj_hidden)
            .with_proj_dim(self.proj_dim);
        let backbone = BackboneConfig::new(
            self.input_dim,
            self.embd_dim,
            self.n_head,
            self.embd_kernel_size,
            arch,
            self.window_sizes(),
            self.scale_factor,
            self.embd_with_ln,
            self.dropout,
            self.droppath,
            long_term,
            self.self_atten,
            self.random_patch,
        )
        .init(device);
        let neck = NeckConfig::new(self.embd_dim, self.backbone_levels(), self.fpn_with_ln)
            .with_start_level(self.fpn_start_level)
            .init(device);
        let trunk = HeadConfig::new(self.fpn_dim, self.head_dim)
            .with_num_layers(self.head_num_layers)
            .with_kernel_size(self.head_kernel_size)
            .with_with_ln(self.head_with_ln);
        let cls_head = ClsHeadConfig::new(trunk.clone(), self.num_classes)
            .with_prior_prob(self.cls_prior_prob)
            .with_empty_cls(self.head_empty_cls.clone())
            .init(device);
        let reg_head = RegHeadConfig::new(trunk, self.num_levels()).init(device);
        Ok(Network {
            backbone,
            neck,
            cls_head,
            reg_head,
            input_dim: self.input_dim,
            max_div_factor: self.max_div_factor(),
            fpn_strides: self.fpn_strides(),
            regression_range: self.regression_range.iter().map(|r| (r[0], r[1])).collect(),
        })
    }
}

/// The network.
#[derive(Module, Debug)]
pub struct Network {
    /// Backbone (input layer, embedding, stem, branch).
    pub backbone: Backbone,
    /// Identity neck.
    pub neck: Neck,
    /// Classification head.
    pub cls_head: ClsHead,
    /// Regression head.
    pub reg_head: RegHead,
    /// Input channels.
    pub input_dim: usize,
    /// Inputs must have a length divisible by this.
    pub max_div_factor: usize,
    /// Stride of each output level.
    #[module(skip)]
    pub fpn_strides: Vec<usize>,
    /// Regression range of each output level.
    #[module(skip)]
    pub regression_range: Vec<(f32, f32)>,
}

/// Network outputs, one entry per output level l with T_l = T / stride_l.
#[derive(Debug, Clone)]
pub struct NetworkOutput {
    /// Classification logits `[B, T_l, num_classes]`.
    pub cls_logits: Vec<Tensor<3>>,
    /// Offsets to start and end in stride units, ≥ 0: `[B, T_l, 2]`.
    pub offsets: Vec<Tensor<3>>,
    /// Valid steps `[B, T_l]`.
    pub masks: Vec<Tensor<2, Bool>>,
    /// Foreground projection `[B, proj_dim, T]` (pretrain only).
    pub fg: Option<Tensor<3>>,
    /// Background projection `[B, proj_dim, T]` (pretrain only).
    pub bg: Option<Tensor<3>>,
}

/// Intermediate tensors of a forward pass (for the parity test and inspection).
#[derive(Debug, Clone)]
pub struct Intermediates {
    /// Last ConvLSTM layer's hidden state `[B, T, 1, H, W]` (TeAtten).
    pub lstm_h: Option<Tensor<5>>,
    /// `lstm_h + x` as images `[B·T, 1, H, W]` (SpAtten and TeAtten).
    pub x_lstm: Option<Tensor<4>>,
    /// Attention map `[B, input_dim, T]`.
    pub attention: Option<Tensor<3>>,
    /// Each embedding conv's masked output, before ln/ReLU: `[B, embd_dim, T]`.
    pub embd_conv_out: Vec<Tensor<3>>,
    /// Each embedding layer's output after ln and ReLU: `[B, embd_dim, T]`.
    pub embd_out: Vec<Tensor<3>>,
    /// Backbone levels `[B, embd_dim, T_l]`.
    pub feats: Vec<Tensor<3>>,
    /// Neck outputs `[B, fpn_dim, T_l]`.
    pub fpn_feats: Vec<Tensor<3>>,
}

/// Frames per piece of streamed inference ([`Network::infer`]): the input layer's
/// activations (~1 MB per 64×64 frame) exist for this many frames at a time.
pub const INFER_CHUNK: usize = 128;

/// What the neck and heads give per output level l.
struct HeadOutputs {
    /// `[B, T_l, num_classes]`.
    cls_logits: Vec<Tensor<3>>,
    /// `[B, T_l, 2]`.
    offsets: Vec<Tensor<3>>,
    /// `[B, T_l]`.
    masks: Vec<Tensor<2, Bool>>,
    /// Neck outputs `[B, fpn_dim, T_l]`.
    fpn_feats: Vec<Tensor<3>>,
}

impl Network {
    /// Run the network.
    ///
    /// `patch_centres` (one `(row, col)` per video, see [`super::draw_patch_centres`]) is
    /// required when `random_patch` is on and ignored otherwise.
    ///
    /// # Shapes
    /// - feats: `[B, input_dim, T]`, T divisible by `max_div_factor`
    /// - mask: `[B, T]`, true on valid steps
    /// - output: see [`NetworkOutput`]
    pub fn forward(
        &self,
        feats: Tensor<3>,
        mask: Tensor<2, Bool>,
        patch_centres: Option<&[(usize, usize)]>,
    ) -> Result<NetworkOutput, ModelError> {
        self.forward_debug(feats, mask, patch_centres).map(|(o, _)| o)
    }

    /// [`Network::forward`] without the foreground/background projections (`fg` and `bg`
    /// are `None`): what detection needs. The projections feed only the contrastive loss,
    /// and at T = 128 they are two 128×4096×1024 matmuls, a tenth of the inference time.
    ///
    /// The input layer runs [`INFER_CHUNK`] frames at a time, so memory grows with T only
    /// by the embedding-sized features (see [`Network::infer_chunked`]).
    ///
    /// # Shapes
    /// - as [`Network::forward`]
    pub fn infer(
        &self,
        feats: Tensor<3>,
        mask: Tensor<2, Bool>,
        patch_centres: Option<&[(usize, usize)]>,
    ) -> Result<NetworkOutput, ModelError> {
        self.infer_chunked(feats, mask, patch_centres, INFER_CHUNK)
    }

    /// [`Network::infer`] with the input layer streamed `chunk` frames at a time (see
    /// [`super::backbone::Backbone::infer`]): the same outputs to float rounding, for any
    /// chunk ≥ 1.
    ///
    /// # Shapes
    /// - as [`Network::forward`]
    pub fn infer_chunked(
        &self,
        feats: Tensor<3>,
        mask: Tensor<2, Bool>,
        patch_centres: Option<&[(usize, usize)]>,
        chunk: usize,
    ) -> Result<NetworkOutput, ModelError> {
        self.check_inputs(&feats, &mask)?;
        let (feats, masks) = self.backbone.infer(feats, mask, patch_centres, chunk)?;
        let h = self.heads(&feats, &masks);
        Ok(NetworkOutput {
            cls_logits: h.cls_logits,
            offsets: h.offsets,
            masks: h.masks,
            fg: None,
            bg: None,
        })
    }

    /// [`Network::forward`] that also returns the intermediates.
    ///
    /// # Shapes
    /// - as [`Network::forward`]; intermediates as documented on [`Intermediates`]
    pub fn forward_debug(
        &self,
        feats: Tensor<3>,
        mask: Tensor<2, Bool>,
        patch_centres: Option<&[(usize, usize)]>,
    ) -> Result<(NetworkOutput, Intermediates), ModelError> {
        self.run(feats, mask, patch_centres, true)
    }

    /// The forward, with or without the projections.
    fn run(
        &self,
        feats: Tensor<3>,
        mask: Tensor<2, Bool>,
        patch_centres: Option<&[(usize, usize)]>,
        project: bool,
    ) -> Result<(NetworkOutput, Intermediates), ModelError> {
        self.check_inputs(&feats, &mask)?;
        let bb = self.backbone.forward(feats, mask, patch_centres, project)?;
        let HeadOutputs {
            cls_logits,
            offsets,
            masks: fpn_masks,
            fpn_feats,
        } = self.heads(&bb.feats, &bb.masks);
        let lt = bb.long_term;
        let out = NetworkOutput {
            cls_logits,
            offsets,
            masks: fpn_masks,
            fg: lt.fg,
            bg: lt.bg,
        };
        let inter = Intermediates {
            lstm_h: lt.lstm_h,
            x_lstm: lt.x_lstm,
            attention: lt.attention,
            embd_conv_out: bb.embd_conv_out,
            embd_out: bb.embd_out,
            feats: bb.feats,
            fpn_feats,
        };
        Ok((out, inter))
    }

    /// `feats` `[B, input_dim, T]` and `mask` `[B, T]` with T > 0 divisible by
    /// `max_div_factor`, or the error naming both shapes.
    fn check_inputs(&self, feats: &Tensor<3>, mask: &Tensor<2, Bool>) -> Result<(), ModelError> {
        let [b, _, t] = feats.dims();
        check_dims("feats", feats.dims(), [None, Some(self.input_dim), None], "B, C, T")?;
        check_dims("mask", mask.dims(), [Some(b), Some(t)], "B, T")?;
        if t == 0 || !t.is_multiple_of(self.max_div_factor) {
            return Err(ModelError::Shape {
                what: "feats",
                expected: format!("T > 0 divisible by max_div_factor {}", self.max_div_factor),
                actual: feats.dims().to_vec(),
            });
        }
        Ok(())
    }

    /// Neck and heads over the backbone's levels.
    ///
    /// # Shapes
    /// - feats: levels `[B, embd_dim, T_l]`, masks `[B, T_l]`
    /// - output: see [`HeadOutputs`]
    fn heads(&self, feats: &[Tensor<3>], masks: &[Tensor<2, Bool>]) -> HeadOutputs {
        let (fpn_feats, masks) = self.neck.forward(feats, masks);
        let mut cls_logits = Vec::with_capacity(fpn_feats.len());
        let mut offsets = Vec::with_capacity(fpn_feats.len());
        for (l, (x, m)) in fpn_feats.iter().zip(&masks).enumerate() {
            cls_logits.push(self.cls_head.forward(x.clone(), m));
            offsets.push(self.reg_head.forward(x.clone(), m, l));
        }
        HeadOutputs {
            cls_logits,
            offsets,
            masks,
            fpn_feats,
        }
    }

    /// Side of the square images the input layer works on (0 when it is off).
    pub fn image_side(&self) -> usize {
        self.backbone.image_side
    }

    /// The points of every output level for an input of length `t`.
    pub fn points(&self, t: usize) -> Points {
        let lengths: Vec<usize> = self.fpn_strides.iter().map(|s| t / s).collect();
        Points::new(&lengths, &self.fpn_strides, &self.regression_range)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{draw_patch_centres, param_counts};
    use burn::tensor::{Distribution, TensorData};
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    /// 16×16 images, 16 channels, levels with strides 1, 2, 4; max_div_factor 16.
    fn tiny() -> NetworkConfig {
        NetworkConfig::new()
            .with_input_dim(256)
            .with_embd_dim(16)
            .with_fpn_dim(16)
            .with_head_dim(16)
            .with_n_head(2)
            .with_backbone_arch(vec![2, 1, 2])
            .with_regression_range(vec![[0.0, 4.0], [4.0, 8.0], [8.0, 10000.0]])
            .with_max_seq_len(32)
            .with_proj_hidden(32)
            .with_proj_dim(8)
    }

    fn inputs(b: usize, c: usize, t: usize, valid: usize, dev: &Device) -> (Tensor<3>, Tensor<2, Bool>) {
        dev.seed(3);
        let x = Tensor::<3>::random([b, c, t], Distribution::Uniform(0.0, 1.0), dev);
        let m: Vec<bool> = (0..b * t).map(|i| i % t < valid).collect();
        let mask = Tensor::<2, Bool>::from_data(TensorData::new(m, [b, t]), dev);
        let x = x * mask.clone().float().unsqueeze_dim::<3>(1);
        (x, mask)
    }

    fn all_finite<const D: usize>(t: &Tensor<D>) -> bool {
        t.clone().is_finite().all().into_scalar::<bool>()
    }

    #[test]
    fn ablations_build_and_run() {
        let dev = Device::flex();
        let af = tiny()
            .with_sp_atten(false)
            .with_te_atten(false)
            .with_pretrain(false)
            .with_random_patch(false);
        let cases = [
            ("actionformer", af.clone()),
            ("sp_only", af.clone().with_sp_atten(true)),
            ("te_only", af.clone().with_te_atten(true)),
            ("patch_only", af.clone().with_random_patch(true)),
            ("no_self_atten", tiny().with_self_atten(false)),
            ("global_attention", tiny().with_n_mha_win_size(vec![-1])),
            (
                "no_ln_no_droppath",
                tiny()
                    .with_embd_with_ln(false)
                    .with_fpn_with_ln(false)
                    .with_head_with_ln(false)
                    .with_droppath(0.0),
            ),
            ("paper", tiny()),
        ];
        for (name, cfg) in cases {
            let net = cfg.init(&dev).unwrap_or_else(|e| panic!("{name}: {e}"));
            let (x, mask) = inputs(2, 256, 32, 27, &dev);
            let centres = [(2, 12), (7, 5)];
            let out = net
                .forward(x, mask, Some(&centres))
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(out.cls_logits.len(), 3, "{name}");
            for (l, s) in [1usize, 2, 4].iter().enumerate() {
                assert_eq!(out.cls_logits[l].dims(), [2, 32 / s, 2], "{name} level {l}");
                assert_eq!(out.offsets[l].dims(), [2, 32 / s, 2], "{name} level {l}");
                assert_eq!(out.masks[l].dims(), [2, 32 / s], "{name} level {l}");
                assert!(all_finite(&out.cls_logits[l]) && all_finite(&out.offsets[l]), "{name}");
            }
            assert_eq!(out.fg.is_some(), cfg.pretrain, "{name}");
            if let (Some(fg), Some(bg)) = (&out.fg, &out.bg) {
                assert_eq!(fg.dims(), [2, 8, 32]);
                assert_eq!(bg.dims(), [2, 8, 32]);
            }
            // Which blocks exist follows the flags.
            let blocks: Vec<String> = param_counts(&net).into_iter().map(|(b, _)| b).collect();
            assert_eq!(
                blocks.contains(&"long_term.convlstm".to_string()),
                cfg.te_atten,
                "{name}"
            );
            assert_eq!(
                blocks.contains(&"long_term.spatial".to_string()),
                cfg.sp_atten,
                "{name}"
            );
            assert_eq!(blocks.contains(&"stem".to_string()), cfg.self_atten, "{name}");
        }
    }

    #[test]
    fn infer_gives_the_forward_detections_without_the_projections() {
        let dev = Device::flex();
        let net = tiny().init(&dev).expect("valid");
        let (x, mask) = inputs(2, 256, 32, 27, &dev);
        let centres = [(2, 12), (7, 5)];
        let full = net.forward(x.clone(), mask.clone(), Some(&centres)).expect("forward");
        let det = net.infer(x, mask, Some(&centres)).expect("infer");
        assert!(full.fg.is_some() && full.bg.is_some());
        assert!(det.fg.is_none() && det.bg.is_none());
        let flat = |v: Vec<Tensor<3>>| -> Vec<f32> {
            v.into_iter()
                .flat_map(|t| t.into_data().try_to_vec::<f32>().unwrap())
                .collect()
        };
        assert_eq!(flat(full.cls_logits), flat(det.cls_logits));
        assert_eq!(flat(full.offsets), flat(det.offsets));
    }

    #[test]
    fn streamed_inference_equals_the_whole_forward_for_any_chunk() {
        // Pieces of 1 frame (fewer than the embedding conv's halo), 5 and 13 (T = 64 is a
        // multiple of neither), 64 (one piece) and more than T; B = 2 with different valid
        // lengths, random patch on (its kernels come from the first piece); fused and
        // tensor-op ConvLSTM.
        let dev = Device::flex();
        let mut net = tiny().with_max_seq_len(64).init(&dev).expect("valid");
        let (x, mask) = inputs(2, 256, 64, 50, &dev);
        let centres = [(2, 12), (7, 5)];
        let flat = |v: &[Tensor<3>]| -> Vec<f32> {
            v.iter()
                .flat_map(|t| t.clone().into_data().try_to_vec::<f32>().unwrap())
                .collect()
        };
        for fused in [true, false] {
            if let Some(l) = net.backbone.long_term.convlstm.as_mut() {
                l.fused = fused;
            }
            let full = net.forward(x.clone(), mask.clone(), Some(&centres)).expect("forward");
            let (want_cls, want_off) = (flat(&full.cls_logits), flat(&full.offsets));
            for chunk in [1, 5, 13, 64, 100] {
                let out = net
                    .infer_chunked(x.clone(), mask.clone(), Some(&centres), chunk)
                    .expect("infer");
                for (got, want, what) in [
                    (flat(&out.cls_logits), &want_cls, "logits"),
                    (flat(&out.offsets), &want_off, "offsets"),
                ] {
                    assert_eq!(got.len(), want.len());
                    let d = got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
                    assert!(d < 1e-5, "fused {fused}, chunk {chunk}, {what}: {d}");
                }
                assert_eq!(out.masks.len(), full.masks.len());
            }
        }
        // Without the patch centres random patch cannot run.
        assert!(net.infer_chunked(x, mask, None, 8).is_err());
    }

    #[test]
    fn valid_outputs_do_not_depend_on_padding() {
        // Paper flags (random patch included), reduced width, real 64×64 images.
        let dev = Device::flex();
        let cfg = NetworkConfig::new()
            .with_embd_dim(16)
            .with_fpn_dim(16)
            .with_head_dim(16)
            .with_proj_hidden(32)
            .with_proj_dim(8);
        let net = cfg.init(&dev).expect("valid");
        let valid = 100;
        let (x, _) = inputs(1, 4096, valid, valid, &dev);
        let run = |t: usize| {
            let pad = Tensor::<3>::zeros([1, 4096, t - valid], &dev);
            let xx = Tensor::cat(vec![x.clone(), pad], 2);
            let m: Vec<bool> = (0..t).map(|i| i < valid).collect();
            let mask = Tensor::<2, Bool>::from_data(TensorData::new(m, [1, t]), &dev);
            net.forward(xx, mask, Some(&[(30, 40)])).expect("forward")
        };
        let (a, b) = (run(128), run(256));
        let lens = [100, 50, 25, 13, 7, 4];
        for (l, &n) in lens.iter().enumerate() {
            let va: Vec<bool> = a.masks[l].clone().into_data().try_to_vec().unwrap();
            assert_eq!(va.iter().filter(|&&v| v).count(), n);
            for (x, y) in [(&a.cls_logits[l], &b.cls_logits[l]), (&a.offsets[l], &b.offsets[l])] {
                let d = (x.clone().narrow(1, 0, n) - y.clone().narrow(1, 0, n))
                    .abs()
                    .max()
                    .into_scalar::<f32>();
                assert!(d < 1e-4, "level {l}: {d}");
            }
        }
        let (fa, fb) = (a.fg.expect("fg"), b.fg.expect("fg"));
        let d = (fa.narrow(2, 0, valid) - fb.narrow(2, 0, valid))
            .abs()
            .max()
            .into_scalar::<f32>();
        assert!(d < 1e-4, "fg: {d}");
    }

    #[test]
    fn wrong_shapes_are_errors_naming_both() {
        let dev = Device::flex();
        let net = tiny().init(&dev).expect("valid");
        let (x, mask) = inputs(1, 255, 32, 32, &dev);
        let e = net.forward(x, mask, Some(&[(2, 2)])).expect_err("channels");
        let msg = e.to_string();
        assert!(msg.contains("C=256") && msg.contains("255"), "{msg}");
        let (x, mask) = inputs(1, 256, 24, 24, &dev);
        let e = net.forward(x, mask, Some(&[(2, 2)])).expect_err("length");
        assert!(e.to_string().contains("max_div_factor 16"), "{e}");
        let (x, _) = inputs(1, 256, 32, 32, &dev);
        let (_, mask) = inputs(2, 256, 32, 32, &dev);
        let e = net.forward(x, mask, Some(&[(2, 2)])).expect_err("mask");
        assert!(e.to_string().contains("mask"), "{e}");
        let (x, mask) = inputs(1, 256, 32, 32, &dev);
        assert!(matches!(
            net.forward(x, mask, None),
            Err(ModelError::PatchCentres { .. })
        ));
    }

    #[test]
    fn impossible_configs_are_rejected() {
        let field = |c: NetworkConfig| match c.validate() {
            Err(ModelError::Config { field, .. }) => field,
            other => panic!("expected a config error, got {other:?}"),
        };
        assert_eq!(field(NetworkConfig::new().with_input_dim(4000)), "input_dim");
        assert_eq!(field(NetworkConfig::new().with_max_seq_len(192)), "max_seq_len");
        assert_eq!(field(NetworkConfig::new().with_sp_atten(false)), "pretrain");
        assert_eq!(
            field(NetworkConfig::new().with_regression_range(vec![[0.0, 4.0]])),
            "regression_range"
        );
        assert_eq!(field(NetworkConfig::new().with_n_head(3)), "n_head");
        assert_eq!(field(NetworkConfig::new().with_fpn_dim(256)), "fpn_dim");
        assert_eq!(
            field(NetworkConfig::new().with_n_mha_win_size(vec![4, 4])),
            "n_mha_win_size"
        );
        assert!(NetworkConfig::new().validate().is_ok());
        // ActionFormer: any input_dim works when the input layer is off.
        assert!(
            NetworkConfig::new()
                .with_input_dim(2048)
                .with_sp_atten(false)
                .with_te_atten(false)
                .with_pretrain(false)
                .with_random_patch(false)
                .validate()
                .is_ok()
        );
    }

    #[test]
    fn derived_values_of_the_paper_config() {
        let c = NetworkConfig::new();
        assert_eq!(c.fpn_strides(), vec![1, 2, 4, 8, 16, 32]);
        assert_eq!(c.max_div_factor(), 128);
        assert_eq!(c.num_levels(), 6);
        assert_eq!(c.image_side(), Some(64));
        assert_eq!(c.clone().with_n_mha_win_size(vec![-1]).max_div_factor(), 32);
        assert_eq!(c.with_n_mha_win_size(vec![9]).max_div_factor(), 256);
    }

    #[test]
    fn patch_centres_are_seeded_and_in_range() {
        let a = draw_patch_centres(&mut ChaCha8Rng::seed_from_u64(5), 500, 64);
        let b = draw_patch_centres(&mut ChaCha8Rng::seed_from_u64(5), 500, 64);
        assert_eq!(a, b);
        assert!(a.iter().all(|&(r, c)| (2..=60).contains(&r) && (2..=60).contains(&c)));
        // Both ends are reachable.
        assert!(a.iter().any(|&(r, _)| r == 2) && a.iter().any(|&(r, _)| r == 60));
        let c = draw_patch_centres(&mut ChaCha8Rng::seed_from_u64(6), 500, 64);
        assert_ne!(a, c);
    }

    #[test]
    fn paper_param_counts() {
        let dev = Device::flex();
        let net = NetworkConfig::new().init(&dev).expect("valid");
        let counts: std::collections::HashMap<String, usize> = param_counts(&net).into_iter().collect();
        // ConvLSTM: 4·8·(1+8)·9+32, 4·8·(8+8)·9+32, 4·1·(8+1)·9+4.
        assert_eq!(counts["long_term.convlstm"], 2624 + 4640 + 328);
        // conv 1→8, bn 8, conv 8→16, bn 16, conv 16→1 (running stats are not parameters).
        assert_eq!(counts["long_term.spatial"], 80 + 16 + 1168 + 32 + 17);
        assert_eq!(counts["long_term.projection"], 4096 * 1024 + 1024 + 1024 * 256 + 256);
        assert_eq!(counts["embedding"], 512 * 4096 * 3 + 512 * 512 * 3 + 4 * 512);
        // Transformer block: 3 depthwise k3 (no bias), 5 lns, 4 1×1 convs, MLP, 2 drop-path scales.
        let c = 512;
        let block = |k: usize| 3 * c * k + 5 * 2 * c + 4 * (c * c + c) + (c * 4 * c + 4 * c) + (4 * c * c + c) + 2 * c;
        assert_eq!(counts["stem"], 2 * block(3));
        assert_eq!(counts["branch"], 5 * block(3));
        assert_eq!(counts["neck"], 6 * 2 * c);
        let trunk = 2 * (c * c * 3) + 2 * 2 * c;
        assert_eq!(counts["cls_head"], trunk + 2 * c * 3 + 2);
        assert_eq!(counts["reg_head"], trunk + 2 * c * 3 + 2 + 6);
        assert_eq!(counts.len(), 9);
    }

    #[test]
    fn drop_path_drops_whole_samples_only_in_training() {
        use crate::model::transformer::AffineDropPathConfig;
        use burn::module::Module;
        let dev = Device::flex().autodiff();
        dev.seed(11);
        let dp = AffineDropPathConfig::new(4, 0.5).init(&dev);
        let x = Tensor::<3>::ones([64, 4, 3], &dev);
        let y: Vec<f32> = dp.forward(x.clone()).into_data().try_to_vec().unwrap();
        // Each sample is all 0 or all 1e-4 / 0.5.
        let per: Vec<f32> = y.chunks(12).map(|s| s[0]).collect();
        for (s, chunk) in per.iter().zip(y.chunks(12)) {
            assert!(chunk.iter().all(|v| v == s));
            assert!(*s == 0.0 || (s - 2e-4).abs() < 1e-9, "{s}");
        }
        let dropped = per.iter().filter(|&&s| s == 0.0).count();
        assert!((10..=54).contains(&dropped), "{dropped} of 64 dropped");
        // Eval: only the scale.
        let e: Vec<f32> = dp.valid().forward(x.clone()).into_data().try_to_vec().unwrap();
        assert!(e.iter().all(|&v| (v - 1e-4).abs() < 1e-10));
    }

    #[test]
    fn same_seed_same_random_patch_output() {
        let dev = Device::flex();
        let net = tiny().init(&dev).expect("valid");
        let run = |seed: u64| {
            let centres = draw_patch_centres(&mut ChaCha8Rng::seed_from_u64(seed), 1, 16);
            let (x, mask) = inputs(1, 256, 32, 32, &dev);
            let o = net.forward(x, mask, Some(&centres)).expect("forward");
            o.cls_logits[0].clone().into_data().try_to_vec::<f32>().unwrap()
        };
        assert_eq!(run(1), run(1));
    }
}
