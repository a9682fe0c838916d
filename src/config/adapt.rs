//! Adapters from the YAML tree to the configs of the network and the post-processing:
//! each function takes the resolved, validated [`Config`] and returns the small typed config
//! one component needs, so no component reads the whole tree. The only part of `config`
//! that imports components. Training's own adapters are [`crate::train::adapt`]: training
//! calls these, so these do not import training back.

use super::Config;
use crate::infer::{DecodeConfig, GridToSeconds, NmsConfig};
use crate::model::NetworkConfig;

/// The network of `cfg.model` (plus the dataset and train_cfg values that shape it).
pub fn network_config(cfg: &Config) -> NetworkConfig {
    let m = &cfg.model;
    NetworkConfig::new()
        .with_input_dim(cfg.dataset.input_dim)
        .with_num_classes(cfg.dataset.num_classes)
        .with_backbone_arch(m.backbone_arch.to_vec())
        .with_scale_factor(m.scale_factor)
        .with_regression_range(m.regression_range.iter().map(|r| [r[0] as f32, r[1] as f32]).collect())
        .with_n_head(m.n_head)
        .with_n_mha_win_size(vec![m.n_mha_win_size])
        .with_embd_kernel_size(m.embd_kernel_size)
        .with_embd_dim(m.embd_dim)
        .with_embd_with_ln(m.embd_with_ln)
        .with_fpn_dim(m.fpn_dim)
        .with_fpn_with_ln(m.fpn_with_ln)
        .with_fpn_start_level(m.fpn_start_level)
        .with_head_dim(m.head_dim)
        .with_head_kernel_size(m.head_kernel_size)
        .with_head_num_layers(m.head_num_layers)
        .with_head_with_ln(m.head_with_ln)
        .with_sp_atten(m.sp_atten)
        .with_te_atten(m.te_atten)
        .with_self_atten(m.self_atten)
        .with_pretrain(m.pretrain)
        .with_random_patch(m.random_patch)
        .with_dropout(cfg.train_cfg.dropout)
        .with_droppath(cfg.train_cfg.droppath)
        .with_cls_prior_prob(cfg.train_cfg.cls_prior_prob)
        .with_head_empty_cls(cfg.train_cfg.head_empty_cls.clone())
        .with_convlstm_hidden(cfg.xca.convlstm_hidden.clone())
}

/// Candidate decoding (SPEC §6.1).
pub fn decode_config(cfg: &Config) -> DecodeConfig {
    let t = &cfg.test_cfg;
    DecodeConfig {
        num_classes: cfg.dataset.num_classes,
        pre_nms_thresh: t.pre_nms_thresh as f32,
        pre_nms_topk: t.pre_nms_topk,
        duration_thresh: t.duration_thresh as f32,
    }
}

/// Suppression and voting (SPEC §6.2).
pub fn nms_config(cfg: &Config) -> NmsConfig {
    let t = &cfg.test_cfg;
    NmsConfig {
        method: t.nms_method,
        iou_threshold: t.iou_threshold as f32,
        min_score: t.min_score as f32,
        max_seg_num: t.max_seg_num,
        multiclass: t.multiclass_nms,
        sigma: t.nms_sigma as f32,
        voting_thresh: t.voting_thresh as f32,
    }
}

/// Grid → seconds for one video (SPEC §6.3).
pub fn grid_to_seconds(cfg: &Config, fps: f64, duration: Option<f64>) -> GridToSeconds {
    GridToSeconds {
        feat_stride: cfg.dataset.feat_stride as f64,
        num_frames: cfg.dataset.num_frames as f64,
        downsample_rate: cfg.dataset.downsample_rate as f64,
        fps,
        duration,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn paper_config_maps_onto_the_network_and_post_processing() {
        let cfg = Config::load(Path::new("configs/vessel.yaml")).unwrap().config;
        let n = network_config(&cfg);
        assert_eq!(n.embd_dim, 512);
        assert_eq!(n.n_mha_win_size, vec![4]);
        assert!(n.sp_atten && n.te_atten && n.pretrain && n.random_patch && n.self_atten);
        assert_eq!(n.fpn_strides(), cfg.fpn_strides());
        assert_eq!(n.max_div_factor(), cfg.max_div_factor());
        n.check().unwrap();
        let d = decode_config(&cfg);
        assert_eq!((d.pre_nms_topk, d.num_classes), (2000, 2));
        let s = nms_config(&cfg);
        assert_eq!((s.max_seg_num, s.voting_thresh, s.multiclass), (200, 0.7, false));
    }

    #[test]
    fn a_yaml_with_fpn_start_level_builds_the_model_it_validates() {
        // One meaning of the pyramid: the YAML check and the network agree on 2 output
        // levels (strides 2 and 4 of 1, 2, 4) with one regression range each.
        let yaml = "dataset: {input_dim: 256, max_seq_len: 32}\n\
                    model: {backbone_arch: [2, 1, 2], fpn_start_level: 1, embd_dim: 16, fpn_dim: 16, \
                    head_dim: 16, n_head: 2, regression_range: [[0, 8], [8, 10000]]}\n";
        let cfg = Config::from_yaml_str(yaml, Path::new("x.yaml")).unwrap().config;
        assert_eq!(cfg.fpn_strides(), vec![2, 4]);
        let net = network_config(&cfg).init(&burn::tensor::Device::flex()).unwrap();
        assert_eq!(net.fpn_strides, cfg.fpn_strides());
        assert_eq!(net.max_div_factor, cfg.max_div_factor());
        assert_eq!(net.regression_range, vec![(0.0, 8.0), (8.0, 10000.0)]);
        assert_eq!(net.points(32).rows().len(), 16 + 8);
    }
}
