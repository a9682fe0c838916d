//! Values derived from the configuration tree: the feature pyramid's geometry, the image
//! side, the padded lengths and the epoch counts. Computed on demand, never stored.
//!
//! [`Pyramid`] is the one place the pyramid's levels and strides are worked out; the
//! network's own config ([`crate::model::NetworkConfig`]) asks it too, so the YAML check and
//! the model cannot count levels differently.

use super::Config;

/// The feature pyramid: `backbone_levels` backbone levels with strides `scale_factor^l`, of
/// which those from `start_level` on go through the neck to the heads (the output levels).
///
/// This is the original's meaning (`meta_archs.py`): `fpn_strides = [scale_factor**i for i
/// in range(fpn_start_level, backbone_arch[-1] + 1)]`, one `regression_range` entry and one
/// head scale per output level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pyramid {
    /// Downsampling factor between backbone levels (`model.scale_factor`).
    pub scale_factor: usize,
    /// Backbone levels: the stem output plus one per branch block (`1 + backbone_arch[2]`).
    pub backbone_levels: usize,
    /// First backbone level fed to the neck and heads (`model.fpn_start_level`).
    pub start_level: usize,
}

impl Pyramid {
    /// Output levels: backbone levels from `start_level` on (0 when `start_level` is too
    /// large, which validation refuses).
    pub fn num_levels(&self) -> usize {
        self.backbone_levels.saturating_sub(self.start_level)
    }

    /// Stride of backbone level `l` in grid steps: `scale_factor^l`.
    pub fn backbone_stride(&self, l: usize) -> usize {
        self.scale_factor.saturating_pow(l.min(u32::MAX as usize) as u32)
    }

    /// Stride of each output level.
    pub fn fpn_strides(&self) -> Vec<usize> {
        (self.start_level..self.backbone_levels)
            .map(|l| self.backbone_stride(l))
            .collect()
    }

    /// Inputs are padded to a multiple of this (SPEC §2.4): the largest
    /// `stride_l · (w_l/2)·2` over backbone levels, or `stride_l` where level l attends
    /// globally (`windows[l] ≤ 1`; a missing entry counts as global). With one window for
    /// all levels (all the YAML can say) it is the original's `max_div_factor`.
    pub fn max_div_factor(&self, windows: &[usize]) -> usize {
        (0..self.backbone_levels)
            .map(|l| {
                let s = self.backbone_stride(l);
                match windows.get(l).copied().unwrap_or(1) {
                    w if w > 1 => s.saturating_mul((w / 2) * 2),
                    _ => s,
                }
            })
            .max()
            .unwrap_or(1)
    }
}

impl Config {
    /// Side of the square image a feature row holds (64 for 4096).
    pub fn image_side(&self) -> usize {
        (self.dataset.input_dim as f64).sqrt().round() as usize
    }

    /// The feature pyramid of `model.backbone_arch`, `scale_factor` and `fpn_start_level`.
    pub fn pyramid(&self) -> Pyramid {
        Pyramid {
            scale_factor: self.model.scale_factor,
            backbone_levels: 1 + self.model.backbone_arch[2],
            start_level: self.model.fpn_start_level,
        }
    }

    /// Output levels (those the heads see): one `regression_range` entry each.
    pub fn num_levels(&self) -> usize {
        self.pyramid().num_levels()
    }

    /// Stride of each output level in grid steps: `scale_factor^l` for l from
    /// `fpn_start_level`.
    pub fn fpn_strides(&self) -> Vec<usize> {
        self.pyramid().fpn_strides()
    }

    /// Attention window, or none for global attention (`n_mha_win_size ≤ 1`).
    pub fn attention_window(&self) -> Option<usize> {
        (self.model.n_mha_win_size > 1).then_some(self.model.n_mha_win_size as usize)
    }

    /// Inference inputs are padded to a multiple of this (SPEC §2.4).
    pub fn max_div_factor(&self) -> usize {
        let p = self.pyramid();
        p.max_div_factor(&vec![self.attention_window().unwrap_or(1); p.backbone_levels])
    }

    /// Grid stride in frames: `feat_stride · downsample_rate` (SPEC §2.2).
    pub fn grid_stride(&self) -> f64 {
        (self.dataset.feat_stride * self.dataset.downsample_rate) as f64
    }

    /// Whether the image-to-patch contrastive branch exists.
    pub fn uses_contrastive(&self) -> bool {
        self.model.pretrain
    }

    /// Total training epochs: `epochs + warmup_epochs` (SPEC §4.3).
    pub fn total_epochs(&self) -> usize {
        self.opt.epochs + if self.opt.warmup { self.opt.warmup_epochs } else { 0 }
    }

    /// 1-based epochs whose EMA checkpoints are written (the last `save_last_epochs`).
    pub fn saved_epochs(&self) -> std::ops::RangeInclusive<usize> {
        let total = self.total_epochs();
        let first = total.saturating_sub(self.xca.save_last_epochs) + 1;
        first..=total
    }

    /// Padded length for inference of a video with `t` grid steps (SPEC §2.4).
    pub fn inference_len(&self, t: usize) -> usize {
        let max = self.dataset.max_seq_len;
        if t <= max {
            max
        } else {
            let f = self.max_div_factor();
            t.div_ceil(f) * f
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paper_pyramid() {
        let c = Config::default();
        assert_eq!(c.fpn_strides(), vec![1, 2, 4, 8, 16, 32]);
        assert_eq!(c.num_levels(), 6);
        assert_eq!(c.max_div_factor(), 128);
        assert_eq!(c.image_side(), 64);
        assert_eq!(c.total_epochs(), 50);
        assert_eq!(c.saved_epochs(), 31..=50);
        assert_eq!(c.inference_len(100), 128);
        assert_eq!(c.inference_len(300), 384);
    }

    #[test]
    fn start_level_drops_the_finest_levels_but_not_the_padding() {
        // The original: fpn_strides = scale_factor^l for l in fpn_start_level..=arch[2].
        let mut c = Config::default();
        c.model.fpn_start_level = 2;
        assert_eq!(c.fpn_strides(), vec![4, 8, 16, 32]);
        assert_eq!(c.num_levels(), 4);
        assert_eq!(c.pyramid().backbone_levels, 6);
        // The backbone still runs every level, so the padding is the same.
        assert_eq!(c.max_div_factor(), 128);
    }

    #[test]
    fn per_level_windows_take_the_largest_product() {
        let p = Pyramid {
            scale_factor: 2,
            backbone_levels: 3,
            start_level: 0,
        };
        assert_eq!(p.max_div_factor(&[9, 1, 1]), 8);
        assert_eq!(p.max_div_factor(&[1, 1, 4]), 16);
        assert_eq!(p.max_div_factor(&[]), 4);
    }
}
