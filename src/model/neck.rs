//! The identity neck (SPEC §3.4): the backbone levels from `start_level` on, each through ln
//! when `fpn_with_ln`.

use burn::config::Config;
use burn::module::Module;
use burn::tensor::{Bool, Device, Tensor};

use super::layers::{ChannelLayerNorm, ChannelLayerNormConfig, maybe_norm};

/// Configuration of [`Neck`].
#[derive(Config, Debug)]
pub struct NeckConfig {
    /// Channels (fpn_dim = embd_dim).
    pub channels: usize,
    /// Backbone levels.
    pub num_levels: usize,
    /// First backbone level used.
    #[config(default = 0)]
    pub start_level: usize,
    /// ln on every level.
    pub with_ln: bool,
}

/// FPNIdentity.
#[derive(Module, Debug)]
pub struct Neck {
    /// One optional ln per output level (PyTorch `fpn_norms.{i}`).
    pub fpn_norms: Vec<Option<ChannelLayerNorm>>,
    /// First backbone level used.
    pub start_level: usize,
}

impl NeckConfig {
    /// Build on `device`.
    pub fn init(&self, device: &Device) -> Neck {
        let n = self.num_levels.saturating_sub(self.start_level);
        Neck {
            fpn_norms: (0..n)
                .map(|_| {
                    self.with_ln
                        .then(|| ChannelLayerNormConfig::new(self.channels).init(device))
                })
                .collect(),
            start_level: self.start_level,
        }
    }
}

impl Neck {
    /// Pass levels through.
    ///
    /// # Shapes
    /// - feats: levels of `[B, C, T_l]`, masks `[B, T_l]`
    /// - output: levels `start_level..` of the same shapes
    pub fn forward(&self, feats: &[Tensor<3>], masks: &[Tensor<2, Bool>]) -> (Vec<Tensor<3>>, Vec<Tensor<2, Bool>>) {
        let mut out = Vec::with_capacity(self.fpn_norms.len());
        let mut out_masks = Vec::with_capacity(self.fpn_norms.len());
        for (i, norm) in self.fpn_norms.iter().enumerate() {
            let l = i + self.start_level;
            out.push(maybe_norm(norm, feats[l].clone()));
            out_masks.push(masks[l].clone());
        }
        (out, out_masks)
    }
}
