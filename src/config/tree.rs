//! The typed configuration tree (SPEC §5): one struct per YAML section, field names the
//! YAML's, `#[serde(default)]` merging the defaults of SPEC §5 (the vessel values), and the
//! enums that replace the original's magic strings and sentinel numbers.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Which split names select which videos (matched case-insensitively).
pub type SplitNames = Vec<String>;

/// Positive-point selection of label assignment (`train_cfg.center_sample` with
/// `train_cfg.center_sample_radius`; SPEC §4.1). The YAML spells it as two keys, the
/// original's; the tree holds this one value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CenterSample {
    /// `radius`: only points within `radius · stride` of the segment centre (and inside it).
    Radius(f64),
    /// `none`: every point strictly inside the segment.
    None,
}

/// Which suppression runs after decoding (`test_cfg.nms_method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NmsMethod {
    /// Gaussian soft-NMS (the paper's setting).
    Soft,
    /// Greedy hard NMS: drop every segment with NMS-IoU ≥ `iou_threshold` to a kept one.
    Hard,
    /// No NMS, no sorting, no cap: the decoded candidates as they are.
    None,
}

/// How predicted keyframes are read off the best filling segment F and the best washout
/// segment W (the original's `decodeSetting`, config key `setting`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "i64")]
pub enum DecodeSetting {
    /// Setting 0 (the paper's): start = F.start, apex = midpoint of F.end and W.start, end = W.end.
    #[default]
    ApexMidpoint,
    /// Setting 1: start = midpoint of F.start and W.start, apex = F.end, end = W.end.
    StartMidpoint,
    /// Setting 2: start = F.start, apex = W.start, end = midpoint of F.end and W.end.
    EndMidpoint,
}

impl From<DecodeSetting> for i64 {
    fn from(s: DecodeSetting) -> i64 {
        match s {
            DecodeSetting::ApexMidpoint => 0,
            DecodeSetting::StartMidpoint => 1,
            DecodeSetting::EndMidpoint => 2,
        }
    }
}

impl TryFrom<i64> for DecodeSetting {
    type Error = String;
    fn try_from(v: i64) -> Result<Self, Self::Error> {
        match v {
            0 => Ok(Self::ApexMidpoint),
            1 => Ok(Self::StartMidpoint),
            2 => Ok(Self::EndMidpoint),
            other => Err(format!("setting {other} is not 0, 1 or 2")),
        }
    }
}

/// Learning-rate schedule after warm-up (`opt.schedule_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleType {
    /// Cosine decay to 1e-8 (the paper's).
    #[default]
    Cosine,
    /// Step decay by `schedule_gamma` at `schedule_steps` epochs.
    Multistep,
}

// ---------------------------------------------------------------------------------------
// Sections. Field names are the YAML's; `#[serde(default)]` merges SPEC §5's defaults.

/// The `dataset` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatasetConfig {
    /// ActivityNet-style annotation file.
    pub json_file: PathBuf,
    /// Folder of per-video `.npy` features.
    pub feat_folder: PathBuf,
    /// Prefix added to a video id to form its feature file name.
    pub file_prefix: Option<String>,
    /// Feature file extension.
    pub file_ext: String,
    /// Number of action classes (2: filling, washout).
    pub num_classes: usize,
    /// Feature width per step (a flattened square image: 4096 = 64×64).
    pub input_dim: usize,
    /// Frames between two feature rows.
    pub feat_stride: usize,
    /// Frames summarised by one feature row.
    pub num_frames: usize,
    /// Frame rate that overrides the per-video `fps` when set.
    pub default_fps: Option<f64>,
    /// Take every d-th feature row.
    pub downsample_rate: usize,
    /// Training sequence length (grid steps); inputs are padded to it.
    pub max_seq_len: usize,
    /// A cropped segment is kept if at least this share of it survives.
    pub trunc_thresh: f64,
    /// Random crop length range as a share of the video, or none.
    pub crop_ratio: Option<[f64; 2]>,
    /// ActivityNet-style resampling to a fixed length (not supported by xca).
    pub force_upsampling: bool,
}

impl Default for DatasetConfig {
    fn default() -> Self {
        Self {
            json_file: PathBuf::from("./data/vessel/annotations/vessel.json"),
            feat_folder: PathBuf::from("./data/vessel/image"),
            file_prefix: None,
            file_ext: ".npy".into(),
            num_classes: 2,
            input_dim: 4096,
            feat_stride: 4,
            num_frames: 4,
            default_fps: None,
            downsample_rate: 1,
            max_seq_len: 128,
            trunc_thresh: 0.5,
            crop_ratio: Some([0.9, 1.0]),
            force_upsampling: false,
        }
    }
}

/// The `model` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// Backbone type; only `convTransformer` exists in xca.
    pub backbone_type: String,
    /// Neck type; only `identity` exists in xca.
    pub fpn_type: String,
    /// (embedding convs, stem blocks, branch blocks).
    pub backbone_arch: [usize; 3],
    /// Downsampling factor between pyramid levels.
    pub scale_factor: usize,
    /// Regression range (grid units) per pyramid level.
    pub regression_range: Vec<[f64; 2]>,
    /// Attention heads.
    pub n_head: usize,
    /// Local attention window; ≤ 1 means global attention.
    pub n_mha_win_size: i64,
    /// Kernel of the embedding convs.
    pub embd_kernel_size: usize,
    /// Embedding width.
    pub embd_dim: usize,
    /// LayerNorm after embedding convs.
    pub embd_with_ln: bool,
    /// Neck width.
    pub fpn_dim: usize,
    /// LayerNorm on neck outputs.
    pub fpn_with_ln: bool,
    /// First pyramid level fed to the heads.
    pub fpn_start_level: usize,
    /// Head width.
    pub head_dim: usize,
    /// Head conv kernel.
    pub head_kernel_size: usize,
    /// Head layers including the final one.
    pub head_num_layers: usize,
    /// LayerNorm inside the heads.
    pub head_with_ln: bool,
    /// Point buffer factor of the original (xca generates points on demand: ignored).
    pub max_buffer_len_factor: f64,
    /// Absolute position encoding (not supported).
    pub use_abs_pe: bool,
    /// Relative position encoding (not supported).
    pub use_rel_pe: bool,
    /// Spatial attention in the input layer (SPEC §3.1 step 2).
    #[serde(rename = "SpAtten")]
    pub sp_atten: bool,
    /// Temporal (ConvLSTM) attention in the input layer (SPEC §3.1 step 1).
    #[serde(rename = "TeAtten")]
    pub te_atten: bool,
    /// Transformer stem (SPEC §3.3).
    #[serde(rename = "SelfAtten")]
    pub self_atten: bool,
    /// Image-wise contrastive projection and loss (SPEC §3.1 step 4).
    pub pretrain: bool,
    /// Patch-wise random-patch projection (SPEC §3.1 step 5).
    pub random_patch: bool,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            backbone_type: "convTransformer".into(),
            fpn_type: "identity".into(),
            backbone_arch: [2, 2, 5],
            scale_factor: 2,
            regression_range: vec![
                [0.0, 4.0],
                [4.0, 8.0],
                [8.0, 16.0],
                [16.0, 32.0],
                [32.0, 64.0],
                [64.0, 10000.0],
            ],
            n_head: 4,
            n_mha_win_size: 4,
            embd_kernel_size: 3,
            embd_dim: 512,
            embd_with_ln: true,
            fpn_dim: 512,
            fpn_with_ln: true,
            fpn_start_level: 0,
            head_dim: 512,
            head_kernel_size: 3,
            head_num_layers: 3,
            head_with_ln: true,
            max_buffer_len_factor: 6.0,
            use_abs_pe: false,
            use_rel_pe: false,
            sp_atten: false,
            te_atten: false,
            self_atten: true,
            pretrain: false,
            random_patch: false,
        }
    }
}

/// The `opt` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptConfig {
    /// Optimiser; only AdamW exists in xca.
    #[serde(rename = "type")]
    pub kind: String,
    /// SGD momentum of the original (unused by AdamW).
    pub momentum: f64,
    /// Peak learning rate.
    pub learning_rate: f64,
    /// Decoupled weight decay for the decay group.
    pub weight_decay: f64,
    /// Epochs after warm-up.
    pub epochs: usize,
    /// Linear warm-up on or off.
    pub warmup: bool,
    /// Warm-up epochs.
    pub warmup_epochs: usize,
    /// Schedule after warm-up.
    pub schedule_type: ScheduleType,
    /// Multistep milestones (epochs after warm-up).
    pub schedule_steps: Vec<usize>,
    /// Multistep decay factor.
    pub schedule_gamma: f64,
}

impl Default for OptConfig {
    fn default() -> Self {
        Self {
            kind: "AdamW".into(),
            momentum: 0.9,
            learning_rate: 1e-4,
            weight_decay: 0.05,
            epochs: 45,
            warmup: true,
            warmup_epochs: 5,
            schedule_type: ScheduleType::Cosine,
            schedule_steps: Vec::new(),
            schedule_gamma: 0.1,
        }
    }
}

/// The `loader` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoaderConfig {
    /// Videos per training batch.
    pub batch_size: usize,
    /// Data-loading workers of the original (xca loads in-process: ignored).
    pub num_workers: usize,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        Self {
            batch_size: 2,
            num_workers: 4,
        }
    }
}

/// The `train_cfg` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "TrainConfigYaml", into = "TrainConfigYaml")]
pub struct TrainConfig {
    /// Positive-point selection (`center_sample` and `center_sample_radius`).
    pub center_sample: CenterSample,
    /// Weight of the regression loss.
    pub loss_weight: f64,
    /// Prior probability that sets the classifier bias.
    pub cls_prior_prob: f64,
    /// Initial value of the loss normaliser EMA.
    pub init_loss_norm: f64,
    /// Global gradient-norm clip; none disables clipping.
    pub clip_grad_l2norm: Option<f64>,
    /// Classes whose head receives no data.
    pub head_empty_cls: Vec<usize>,
    /// Dropout in the transformer MLPs.
    pub dropout: f64,
    /// Drop-path probability.
    pub droppath: f64,
    /// Label smoothing of classification targets.
    pub label_smoothing: f64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            center_sample: CenterSample::Radius(DEFAULT_CENTER_SAMPLE_RADIUS),
            loss_weight: 1.0,
            cls_prior_prob: 0.01,
            init_loss_norm: 100.0,
            clip_grad_l2norm: Some(1.0),
            head_empty_cls: Vec::new(),
            dropout: 0.0,
            droppath: 0.1,
            label_smoothing: 0.0,
        }
    }
}

const DEFAULT_CENTER_SAMPLE_RADIUS: f64 = 1.5;

/// `train_cfg.center_sample` as the YAML spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum CenterSampleName {
    Radius,
    None,
}

/// `train_cfg` as the YAML spells it: [`TrainConfig`] with the centre sampling as two keys.
/// Only serde sees it; the field order is the serialised one (the config hash reads it).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct TrainConfigYaml {
    center_sample: CenterSampleName,
    center_sample_radius: f64,
    loss_weight: f64,
    cls_prior_prob: f64,
    init_loss_norm: f64,
    clip_grad_l2norm: Option<f64>,
    head_empty_cls: Vec<usize>,
    dropout: f64,
    droppath: f64,
    label_smoothing: f64,
}

impl Default for TrainConfigYaml {
    fn default() -> Self {
        TrainConfig::default().into()
    }
}

impl From<TrainConfigYaml> for TrainConfig {
    fn from(y: TrainConfigYaml) -> Self {
        Self {
            center_sample: match y.center_sample {
                CenterSampleName::Radius => CenterSample::Radius(y.center_sample_radius),
                CenterSampleName::None => CenterSample::None,
            },
            loss_weight: y.loss_weight,
            cls_prior_prob: y.cls_prior_prob,
            init_loss_norm: y.init_loss_norm,
            clip_grad_l2norm: y.clip_grad_l2norm,
            head_empty_cls: y.head_empty_cls,
            dropout: y.dropout,
            droppath: y.droppath,
            label_smoothing: y.label_smoothing,
        }
    }
}

impl From<TrainConfig> for TrainConfigYaml {
    fn from(t: TrainConfig) -> Self {
        let (center_sample, center_sample_radius) = match t.center_sample {
            CenterSample::Radius(r) => (CenterSampleName::Radius, r),
            // `none` ignores the radius; the resolved tree shows the default one.
            CenterSample::None => (CenterSampleName::None, DEFAULT_CENTER_SAMPLE_RADIUS),
        };
        Self {
            center_sample,
            center_sample_radius,
            loss_weight: t.loss_weight,
            cls_prior_prob: t.cls_prior_prob,
            init_loss_norm: t.init_loss_norm,
            clip_grad_l2norm: t.clip_grad_l2norm,
            head_empty_cls: t.head_empty_cls,
            dropout: t.dropout,
            droppath: t.droppath,
            label_smoothing: t.label_smoothing,
        }
    }
}

/// The `test_cfg` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TestConfig {
    /// Candidates need a probability above this.
    pub pre_nms_thresh: f64,
    /// Candidates kept per level before NMS.
    pub pre_nms_topk: usize,
    /// IoU threshold of hard NMS.
    pub iou_threshold: f64,
    /// Soft-NMS drops segments whose score falls below this.
    pub min_score: f64,
    /// Segments kept per video after NMS.
    pub max_seg_num: usize,
    /// NMS variant.
    pub nms_method: NmsMethod,
    /// Gaussian soft-NMS sigma.
    pub nms_sigma: f64,
    /// Minimum candidate length (grid units).
    pub duration_thresh: f64,
    /// Per-class NMS (true) or class-agnostic with voting (false).
    pub multiclass_nms: bool,
    /// Voting IoU threshold; 0 disables voting.
    pub voting_thresh: f64,
    /// External classification scores of the original (not supported).
    pub ext_score_file: Option<PathBuf>,
}

impl Default for TestConfig {
    fn default() -> Self {
        Self {
            pre_nms_thresh: 0.001,
            pre_nms_topk: 2000,
            iou_threshold: 0.1,
            min_score: 0.001,
            max_seg_num: 200,
            nms_method: NmsMethod::Soft,
            nms_sigma: 0.5,
            duration_thresh: 0.05,
            multiclass_nms: false,
            voting_thresh: 0.7,
            ext_score_file: None,
        }
    }
}

/// xca's own additions (a section the original does not have).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct XcaConfig {
    /// EMA checkpoints are written for this many final epochs (`select` considers them).
    pub save_last_epochs: usize,
    /// Hidden channels of the ConvLSTM layers (SPEC §3.1: 8-8-1; the last must be 1).
    pub convlstm_hidden: Vec<usize>,
    /// Decay of the weight EMA that checkpoints store (SPEC §4.3: 0.999). Short runs need a
    /// smaller one: after k steps the initial weights still weigh decay^k.
    pub ema_decay: f64,
}

impl Default for XcaConfig {
    fn default() -> Self {
        Self {
            save_last_epochs: 20,
            convlstm_hidden: vec![8, 8, 1],
            ema_decay: 0.999,
        }
    }
}

/// The whole resolved configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Dataset loader name of the original (`vessel`).
    pub dataset_name: String,
    /// Seed of every RNG: data order, crops, patch positions, drop-path, init.
    pub init_rand_seed: u64,
    /// Devices of the original (xca uses `--device`: ignored).
    pub devices: Vec<String>,
    /// Split names used for training.
    pub train_split: SplitNames,
    /// Split names used for checkpoint selection.
    pub val_split: SplitNames,
    /// Split names used for the test tables.
    pub test_split: SplitNames,
    /// Keyframe decode setting.
    pub setting: DecodeSetting,
    /// Meta-architecture name of the original (informational).
    pub model_name: String,
    /// Where `xca train` writes `<config stem>_<output>/`.
    pub output_folder: PathBuf,
    pub dataset: DatasetConfig,
    pub model: ModelConfig,
    pub opt: OptConfig,
    pub loader: LoaderConfig,
    pub train_cfg: TrainConfig,
    pub test_cfg: TestConfig,
    pub xca: XcaConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            dataset_name: "vessel".into(),
            init_rand_seed: 1234567891,
            devices: vec!["cuda:0".into()],
            train_split: vec!["train".into()],
            val_split: vec!["validation".into()],
            test_split: vec!["test".into()],
            setting: DecodeSetting::ApexMidpoint,
            model_name: "LocPointTransformer".into(),
            output_folder: PathBuf::from("./ckpt/"),
            dataset: DatasetConfig::default(),
            model: ModelConfig::default(),
            opt: OptConfig::default(),
            loader: LoaderConfig::default(),
            train_cfg: TrainConfig::default(),
            test_cfg: TestConfig::default(),
            xca: XcaConfig::default(),
        }
    }
}

impl Config {
    /// The resolved tree with the YAML's section and key names.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// The resolved tree as YAML text.
    pub fn to_yaml(&self) -> String {
        serde_saphyr::to_string(self).unwrap_or_else(|e| format!("# cannot render YAML: {e}\n"))
    }
}
