//! Every rule of the configuration that the types cannot express, decided here once and
//! checked at load. The network, the data pipeline and training rely on a validated tree;
//! what they check themselves are only their own structural invariants.

use std::path::Path;

use super::load::MAX_SEQ_LEN;
use super::{CenterSample, Config, ConfigError, ScheduleType};

impl Config {
    /// Every check that the types alone cannot express. Run once, at load.
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let bad = |key: &str, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            key: key.to_string(),
            message,
        };
        let d = &self.dataset;
        let m = &self.model;
        if d.num_classes == 0 {
            return Err(bad("dataset.num_classes", "must be at least 1".into()));
        }
        if d.input_dim == 0 || self.image_side().pow(2) != d.input_dim {
            return Err(bad(
                "dataset.input_dim",
                format!("{} is not the square of an image side (e.g. 4096 = 64×64)", d.input_dim),
            ));
        }
        for (key, v) in [
            ("dataset.feat_stride", d.feat_stride),
            ("dataset.num_frames", d.num_frames),
            ("dataset.downsample_rate", d.downsample_rate),
            ("dataset.max_seq_len", d.max_seq_len),
            ("model.scale_factor", m.scale_factor),
            ("model.n_head", m.n_head),
            ("model.embd_dim", m.embd_dim),
            ("model.fpn_dim", m.fpn_dim),
            ("model.head_dim", m.head_dim),
            ("model.embd_kernel_size", m.embd_kernel_size),
            ("model.head_kernel_size", m.head_kernel_size),
            ("loader.batch_size", self.loader.batch_size),
            ("opt.epochs", self.opt.epochs),
            ("test_cfg.max_seg_num", self.test_cfg.max_seg_num),
            ("test_cfg.pre_nms_topk", self.test_cfg.pre_nms_topk),
        ] {
            if v == 0 {
                return Err(bad(key, "must be at least 1".into()));
            }
        }
        // Upper bounds: far above any real setting, low enough that a typo (an extra few
        // zeros) is an error here instead of a 16 GB allocation or an overflow later.
        for (key, v, max, why) in [
            ("dataset.num_classes", d.num_classes, 1024, "classes"),
            (
                "dataset.input_dim",
                d.input_dim,
                1 << 16,
                "values per row (a 256×256 image)",
            ),
            ("dataset.feat_stride", d.feat_stride, 1024, "frames per row"),
            ("dataset.num_frames", d.num_frames, 1024, "frames per row"),
            ("dataset.downsample_rate", d.downsample_rate, 1024, "rows"),
            (
                "dataset.max_seq_len",
                d.max_seq_len,
                MAX_SEQ_LEN,
                "rows per training crop (training keeps ~7 MB of activations per row and video)",
            ),
            (
                "model.backbone_arch",
                m.backbone_arch.into_iter().max().unwrap_or(0),
                32,
                "blocks per stage",
            ),
            ("model.scale_factor", m.scale_factor, 64, "(stride between levels)"),
            ("model.n_head", m.n_head, 1024, "heads"),
            ("model.embd_dim", m.embd_dim, 16384, "channels"),
            ("model.fpn_dim", m.fpn_dim, 16384, "channels"),
            ("model.head_dim", m.head_dim, 16384, "channels"),
            ("model.embd_kernel_size", m.embd_kernel_size, 255, "taps"),
            ("model.head_kernel_size", m.head_kernel_size, 255, "taps"),
            ("model.head_num_layers", m.head_num_layers, 64, "layers"),
            (
                "model.n_mha_win_size",
                m.n_mha_win_size.unsigned_abs().try_into().unwrap_or(usize::MAX),
                MAX_SEQ_LEN,
                "steps",
            ),
            ("loader.batch_size", self.loader.batch_size, 4096, "videos per step"),
            ("opt.epochs", self.opt.epochs, 1_000_000, "epochs"),
            ("opt.warmup_epochs", self.opt.warmup_epochs, 1_000_000, "epochs"),
            ("test_cfg.max_seg_num", self.test_cfg.max_seg_num, 1_000_000, "segments"),
            (
                "test_cfg.pre_nms_topk",
                self.test_cfg.pre_nms_topk,
                10_000_000,
                "segments",
            ),
            ("xca.save_last_epochs", self.xca.save_last_epochs, 1_000_000, "epochs"),
            (
                "xca.convlstm_hidden",
                self.xca.convlstm_hidden.iter().copied().max().unwrap_or(0),
                1024,
                "channels",
            ),
            ("xca.convlstm_hidden", self.xca.convlstm_hidden.len(), 64, "layers"),
        ] {
            if v > max {
                return Err(bad(key, format!("{v} is too large: at most {max} {why}")));
            }
        }
        // The branch downsamples with a stride-`scale_factor` conv and a max-pool of kernel
        // `scale_factor + 1`: the original asserts an even stride (blocks.py).
        if m.scale_factor < 2 || !m.scale_factor.is_multiple_of(2) {
            return Err(bad(
                "model.scale_factor",
                format!("must be even and at least 2, got {}", m.scale_factor),
            ));
        }
        // The coarsest level's stride must fit a training crop (and so cannot overflow).
        let top = m.backbone_arch[2] as u32;
        if m.scale_factor.checked_pow(top).is_none_or(|s| s > d.max_seq_len) {
            return Err(bad(
                "model.backbone_arch",
                format!(
                    "{} downsampling blocks of scale_factor {} give a coarsest stride above max_seq_len {}",
                    top, m.scale_factor, d.max_seq_len
                ),
            ));
        }
        for (key, k) in [
            ("model.embd_kernel_size", m.embd_kernel_size),
            ("model.head_kernel_size", m.head_kernel_size),
        ] {
            if k % 2 == 0 {
                return Err(bad(key, format!("must be odd (same-length convolution), got {k}")));
            }
        }
        if let Some(fps) = d.default_fps
            && !(fps.is_finite() && fps > 0.0)
        {
            return Err(bad(
                "dataset.default_fps",
                format!("must be a positive frame rate, got {fps}"),
            ));
        }
        if !(0.0..=1.0).contains(&d.trunc_thresh) {
            return Err(bad(
                "dataset.trunc_thresh",
                format!("must be in [0, 1], got {}", d.trunc_thresh),
            ));
        }
        if let Some([lo, hi]) = d.crop_ratio
            && !(lo > 0.0 && lo <= hi && hi <= 1.0)
        {
            return Err(bad(
                "dataset.crop_ratio",
                format!("needs 0 < low ≤ high ≤ 1, got [{lo}, {hi}]"),
            ));
        }
        if d.force_upsampling {
            return Err(bad(
                "dataset.force_upsampling",
                "is not supported by xca (ActivityNet-only resampling); set it to false".into(),
            ));
        }
        if m.backbone_type != "convTransformer" {
            return Err(bad(
                "model.backbone_type",
                format!("'{}' is not supported; xca implements convTransformer", m.backbone_type),
            ));
        }
        if m.fpn_type != "identity" {
            return Err(bad(
                "model.fpn_type",
                format!("'{}' is not supported; xca implements identity", m.fpn_type),
            ));
        }
        if m.use_abs_pe || m.use_rel_pe {
            return Err(bad(
                "model.use_abs_pe",
                "position encodings are not supported (the paper keeps them off)".into(),
            ));
        }
        if m.backbone_arch[0] == 0 {
            return Err(bad(
                "model.backbone_arch",
                "needs at least one embedding conv (the first one is the input layer)".into(),
            ));
        }
        let pyramid = self.pyramid();
        if m.fpn_start_level >= pyramid.backbone_levels {
            return Err(bad(
                "model.fpn_start_level",
                format!(
                    "{} must be below the {} backbone levels of backbone_arch {:?}",
                    m.fpn_start_level, pyramid.backbone_levels, m.backbone_arch
                ),
            ));
        }
        // One range per output level: the backbone levels from fpn_start_level on (the
        // original's `len(fpn_strides) == len(regression_range)`).
        if m.regression_range.len() != pyramid.num_levels() {
            return Err(bad(
                "model.regression_range",
                format!(
                    "has {} ranges but backbone_arch {:?} with fpn_start_level {} gives {} output levels",
                    m.regression_range.len(),
                    m.backbone_arch,
                    m.fpn_start_level,
                    pyramid.num_levels()
                ),
            ));
        }
        for (i, [lo, hi]) in m.regression_range.iter().enumerate() {
            if !(lo.is_finite() && hi.is_finite() && *lo >= 0.0 && lo < hi) {
                return Err(bad(
                    "model.regression_range",
                    format!("range {i} [{lo}, {hi}] needs 0 ≤ low < high"),
                ));
            }
        }
        if !m.embd_dim.is_multiple_of(m.n_head) {
            return Err(bad(
                "model.n_head",
                format!("embd_dim {} is not divisible by n_head {}", m.embd_dim, m.n_head),
            ));
        }
        if m.fpn_dim != m.embd_dim {
            return Err(bad(
                "model.fpn_dim",
                format!("must equal embd_dim {} with the identity neck", m.embd_dim),
            ));
        }
        if m.head_dim != m.fpn_dim {
            return Err(bad(
                "model.head_dim",
                format!("must equal fpn_dim {} (the heads read the neck directly)", m.fpn_dim),
            ));
        }
        if m.head_num_layers == 0 {
            return Err(bad(
                "model.head_num_layers",
                "must be at least 1 (the final prediction conv)".into(),
            ));
        }
        if !d.max_seq_len.is_multiple_of(self.max_div_factor()) {
            return Err(bad(
                "dataset.max_seq_len",
                format!(
                    "{} is not divisible by max_div_factor {} (largest stride × window)",
                    d.max_seq_len,
                    self.max_div_factor()
                ),
            ));
        }
        if self.opt.schedule_type == ScheduleType::Multistep {
            return Err(bad(
                "opt.schedule_type",
                "multistep is not supported by xca; use cosine (the paper's)".into(),
            ));
        }
        if self.opt.kind != "AdamW" {
            return Err(bad(
                "opt.type",
                format!("'{}' is not supported; xca trains with AdamW", self.opt.kind),
            ));
        }
        if !(self.opt.learning_rate.is_finite() && self.opt.learning_rate > 0.0) {
            return Err(bad(
                "opt.learning_rate",
                format!("must be positive, got {}", self.opt.learning_rate),
            ));
        }
        if !(self.opt.weight_decay.is_finite() && self.opt.weight_decay >= 0.0) {
            return Err(bad(
                "opt.weight_decay",
                format!("must be ≥ 0, got {}", self.opt.weight_decay),
            ));
        }
        let t = &self.train_cfg;
        if !(t.cls_prior_prob > 0.0 && t.cls_prior_prob < 1.0) {
            return Err(bad(
                "train_cfg.cls_prior_prob",
                format!("must be in (0, 1), got {}", t.cls_prior_prob),
            ));
        }
        if t.init_loss_norm.is_nan() || t.init_loss_norm <= 0.0 {
            return Err(bad(
                "train_cfg.init_loss_norm",
                format!("must be positive, got {}", t.init_loss_norm),
            ));
        }
        if let CenterSample::Radius(r) = t.center_sample
            && !(r.is_finite() && r > 0.0)
        {
            return Err(bad(
                "train_cfg.center_sample_radius",
                format!("must be positive, got {r}"),
            ));
        }
        for (key, p) in [
            ("train_cfg.dropout", t.dropout),
            ("train_cfg.droppath", t.droppath),
            ("train_cfg.label_smoothing", t.label_smoothing),
        ] {
            if !(0.0..1.0).contains(&p) {
                return Err(bad(key, format!("must be in [0, 1), got {p}")));
            }
        }
        if let Some(c) = t.head_empty_cls.iter().find(|c| **c >= d.num_classes) {
            return Err(bad(
                "train_cfg.head_empty_cls",
                format!("class {c} ≥ num_classes {}", d.num_classes),
            ));
        }
        let tc = &self.test_cfg;
        if !(0.0..1.0).contains(&tc.pre_nms_thresh) {
            return Err(bad(
                "test_cfg.pre_nms_thresh",
                format!("must be in [0, 1), got {}", tc.pre_nms_thresh),
            ));
        }
        if tc.nms_sigma.is_nan() || tc.nms_sigma <= 0.0 {
            return Err(bad(
                "test_cfg.nms_sigma",
                format!("must be positive, got {}", tc.nms_sigma),
            ));
        }
        if !(0.0..=1.0).contains(&tc.voting_thresh) {
            return Err(bad(
                "test_cfg.voting_thresh",
                format!("must be in [0, 1], got {}", tc.voting_thresh),
            ));
        }
        if tc.ext_score_file.is_some() {
            return Err(bad(
                "test_cfg.ext_score_file",
                "external scores are not supported; set it to ~".into(),
            ));
        }
        // fg/bg are cut from the input by the spatiotemporal attention map (SPEC §3.1 step 4).
        if m.pretrain && !(m.sp_atten && m.te_atten) {
            return Err(bad(
                "model.pretrain",
                "needs SpAtten and TeAtten (foreground and background are cut by their attention map)".into(),
            ));
        }
        if m.random_patch && self.image_side() < 5 {
            return Err(bad(
                "model.random_patch",
                format!(
                    "needs images of at least 5×5 (its patches), got input_dim {}",
                    d.input_dim
                ),
            ));
        }
        let hidden = &self.xca.convlstm_hidden;
        if m.te_atten && (hidden.is_empty() || hidden.last() != Some(&1) || hidden.contains(&0)) {
            return Err(bad(
                "xca.convlstm_hidden",
                format!("needs positive channels ending in 1, got {hidden:?}"),
            ));
        }
        if !(self.xca.ema_decay >= 0.0 && self.xca.ema_decay < 1.0) {
            return Err(bad(
                "xca.ema_decay",
                format!("must be in [0, 1), got {}", self.xca.ema_decay),
            ));
        }
        if self.xca.save_last_epochs == 0 {
            return Err(bad("xca.save_last_epochs", "must be at least 1".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LoadedConfig;

    fn load(text: &str) -> Result<LoadedConfig, ConfigError> {
        Config::from_yaml_str(text, Path::new("test.yaml"))
    }

    #[test]
    fn impossible_values_name_the_key() {
        let cases = [
            ("dataset: {max_seq_len: 100}", "dataset.max_seq_len"),
            ("dataset: {input_dim: 4000}", "dataset.input_dim"),
            ("model: {regression_range: [[0, 4], [4, 8]]}", "model.regression_range"),
            ("model: {n_head: 3}", "model.n_head"),
            ("dataset: {crop_ratio: [1.0, 0.5]}", "dataset.crop_ratio"),
            ("loader: {batch_size: 0}", "loader.batch_size"),
            ("opt: {type: SGD}", "opt.type"),
            ("model: {fpn_type: fpn}", "model.fpn_type"),
            ("model: {use_abs_pe: true}", "model.use_abs_pe"),
            ("train_cfg: {droppath: 1.5}", "train_cfg.droppath"),
            ("test_cfg: {ext_score_file: x.json}", "test_cfg.ext_score_file"),
            ("model: {embd_kernel_size: 4}", "model.embd_kernel_size"),
            (
                "model: {TeAtten: true}\nxca: {convlstm_hidden: [8, 2]}",
                "xca.convlstm_hidden",
            ),
            ("dataset: {default_fps: -3}", "dataset.default_fps"),
            // The branch's downsampling needs an even stride (the original asserts it).
            ("model: {scale_factor: 3}", "model.scale_factor"),
            // 6 backbone levels from level 1 on are 5 output levels: 6 ranges are one too many.
            ("model: {fpn_start_level: 1}", "model.regression_range"),
            ("model: {fpn_start_level: 6}", "model.fpn_start_level"),
            ("model: {pretrain: true, TeAtten: true}", "model.pretrain"),
            (
                "dataset: {input_dim: 16}\nmodel: {random_patch: true}",
                "model.random_patch",
            ),
            ("train_cfg: {center_sample_radius: 0}", "train_cfg.center_sample_radius"),
        ];
        for (yaml, key) in cases {
            let e = load(yaml).unwrap_err().to_string();
            assert!(e.contains(key), "{yaml} → {e}");
        }
    }

    #[test]
    fn an_odd_scale_factor_is_one_line_naming_the_key() {
        let e = load("model: {scale_factor: 3}").unwrap_err().to_string();
        assert_eq!(e, "test.yaml: model.scale_factor: must be even and at least 2, got 3");
        let even =
            "model: {scale_factor: 4, backbone_arch: [2, 2, 2], regression_range: [[0, 4], [4, 16], [16, 10000]]}";
        assert_eq!(load(even).unwrap().config.fpn_strides(), vec![1, 4, 16]);
    }

    #[test]
    fn regression_range_counts_the_output_levels() {
        // fpn_start_level 2 of 6 backbone levels: 4 output levels, so 4 ranges.
        let ok = "model: {fpn_start_level: 2, regression_range: [[0, 8], [8, 16], [16, 32], [32, 10000]]}";
        let c = load(ok).unwrap().config;
        assert_eq!(c.fpn_strides(), vec![4, 8, 16, 32]);
        let six = "model: {fpn_start_level: 2}";
        let e = load(six).unwrap_err().to_string();
        assert!(e.contains("has 6 ranges") && e.contains("4 output levels"), "{e}");
    }

    #[test]
    fn center_sample_none_ignores_the_radius() {
        let c = load("train_cfg: {center_sample: none, center_sample_radius: 0}")
            .unwrap()
            .config;
        assert_eq!(c.train_cfg.center_sample, CenterSample::None);
        let c = load("train_cfg: {center_sample_radius: 2.5}").unwrap().config;
        assert_eq!(c.train_cfg.center_sample, CenterSample::Radius(2.5));
    }
}
