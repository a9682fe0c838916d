//! [`NetworkConfig`]: what the network is built from, the pyramid it implies, the
//! structural invariants the builder relies on, and [`NetworkConfig::init`].

use burn::config::Config;
use burn::tensor::Device;

use super::Network;
use crate::config::Pyramid;
use crate::model::ModelError;
use crate::model::backbone::BackboneConfig;
use crate::model::convlstm::ConvLstmConfig;
use crate::model::head::{ClsHeadConfig, HeadConfig, RegHeadConfig};
use crate::model::long_term::LongTermAttentionConfig;
use crate::model::neck::NeckConfig;

/// Everything the network needs (the `model` section of the YAML plus `input_dim`,
/// `num_classes` and the train_cfg values that shape the model). Built from a validated
/// YAML tree by [`crate::config::adapt::network_config`]; the YAML's rules are decided
/// there, not here.
#[derive(Config, Debug)]
pub struct NetworkConfig {
    /// Feature channels per step; with any input-layer flag on it must be a square (side²).
    #[config(default = 4096)]
    pub input_dim: usize,
    /// Number of classes.
    #[config(default = 2)]
    pub num_classes: usize,
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

/// A broken invariant, named by the YAML key the value comes from.
fn bad(key: &'static str, reason: impl Into<String>) -> ModelError {
    ModelError::Config {
        field: key,
        reason: reason.into(),
    }
}

impl NetworkConfig {
    /// The feature pyramid (levels and strides), worked out where the YAML check works it
    /// out: [`Pyramid`].
    pub fn pyramid(&self) -> Pyramid {
        Pyramid {
            scale_factor: self.scale_factor,
            backbone_levels: self.backbone_arch.get(2).copied().unwrap_or(0) + 1,
            start_level: self.fpn_start_level,
        }
    }

    /// Number of backbone levels (`1 + arch[2]`).
    pub fn backbone_levels(&self) -> usize {
        self.pyramid().backbone_levels
    }

    /// Number of output levels (backbone levels from `fpn_start_level` on).
    pub fn num_levels(&self) -> usize {
        self.pyramid().num_levels()
    }

    /// Stride of each output level: `scale_factor^l` for l from `fpn_start_level`.
    pub fn fpn_strides(&self) -> Vec<usize> {
        self.pyramid().fpn_strides()
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

    /// Inputs are padded to a multiple of this (see [`Pyramid::max_div_factor`]).
    pub fn max_div_factor(&self) -> usize {
        self.pyramid().max_div_factor(&self.window_sizes())
    }

    /// Side of the square image each step is, if `input_dim` is a square.
    pub fn image_side(&self) -> Option<usize> {
        let s = (self.input_dim as f64).sqrt().round() as usize;
        (s * s == self.input_dim).then_some(s)
    }

    /// The structural invariants the builder and the forward pass rely on: list lengths
    /// that must match the pyramid, shapes that must line up, flags that need each other.
    /// Ranges and support limits are the YAML check's ([`crate::config::Config::validate`]),
    /// which refuses every config that fails here; this catches a `NetworkConfig` built by
    /// hand. Errors name the YAML key.
    pub fn check(&self) -> Result<(), ModelError> {
        let arch = &self.backbone_arch;
        if arch.len() != 3 || arch[0] == 0 {
            return Err(bad(
                "model.backbone_arch",
                format!("needs 3 entries with at least one embedding conv, got {arch:?}"),
            ));
        }
        let p = self.pyramid();
        if self.fpn_start_level >= p.backbone_levels {
            return Err(bad(
                "model.fpn_start_level",
                format!(
                    "{} is not below the {} backbone levels",
                    self.fpn_start_level, p.backbone_levels
                ),
            ));
        }
        if self.regression_range.len() != p.num_levels() {
            return Err(bad(
                "model.regression_range",
                format!(
                    "has {} entries but the heads see {} output levels",
                    self.regression_range.len(),
                    p.num_levels()
                ),
            ));
        }
        if self.n_mha_win_size.len() != 1 && self.n_mha_win_size.len() != p.backbone_levels {
            return Err(bad(
                "model.n_mha_win_size",
                format!(
                    "needs 1 or {} entries, got {}",
                    p.backbone_levels,
                    self.n_mha_win_size.len()
                ),
            ));
        }
        if arch[2] > 0 && (self.scale_factor < 2 || !self.scale_factor.is_multiple_of(2)) {
            return Err(bad(
                "model.scale_factor",
                "the branch's downsampling needs an even stride ≥ 2",
            ));
        }
        if self.n_head == 0 || !self.embd_dim.is_multiple_of(self.n_head) {
            return Err(bad(
                "model.n_head",
                format!("{} heads do not divide embd_dim {}", self.n_head, self.embd_dim),
            ));
        }
        if self.fpn_dim != self.embd_dim {
            return Err(bad(
                "model.fpn_dim",
                format!("the identity neck needs fpn_dim == embd_dim ({})", self.embd_dim),
            ));
        }
        for (key, k) in [
            ("model.embd_kernel_size", self.embd_kernel_size),
            ("model.head_kernel_size", self.head_kernel_size),
        ] {
            if k.is_multiple_of(2) {
                return Err(bad(
                    key,
                    format!("same-length convolutions need an odd kernel, got {k}"),
                ));
            }
        }
        if self.sp_atten || self.te_atten || self.random_patch {
            match self.image_side() {
                None => {
                    return Err(bad(
                        "dataset.input_dim",
                        format!("{} is not a square (each step must be an image)", self.input_dim),
                    ));
                }
                Some(s) if self.random_patch && s < 5 => {
                    return Err(bad("model.random_patch", "needs images of at least 5×5"));
                }
                _ => {}
            }
        }
        if self.pretrain && !(self.sp_atten && self.te_atten) {
            return Err(bad(
                "model.pretrain",
                "needs SpAtten and TeAtten (fg/bg are cut by their attention map)",
            ));
        }
        if self.te_atten && (self.convlstm_hidden.last() != Some(&1) || self.convlstm_hidden.contains(&0)) {
            return Err(bad(
                "xca.convlstm_hidden",
                "needs positive channels, the last ConvLSTM layer 1",
            ));
        }
        Ok(())
    }

    /// Check the invariants and build the network on `device`.
    pub fn init(&self, device: &Device) -> Result<Network, ModelError> {
        self.check()?;
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
