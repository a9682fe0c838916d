//! The typed configuration tree (SPEC §5).
//!
//! The paper's YAML is read as it is written — flow mappings, `~`, `True`/`False`,
//! comments — merged over the defaults of SPEC §5 (the vessel values), and validated
//! once. Section and key names are the original's, so `xca config` shows the user
//! exactly what will run. Derived values (pyramid strides, `max_div_factor`, the image
//! side) are methods, never stored twice.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A configuration that cannot be used, naming the file and the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Bounded(#[from] crate::fsio::ReadError),
    #[error("{}: not valid YAML: {message}", path.display())]
    Yaml { path: PathBuf, message: String },
    #[error("{}: {message}", path.display())]
    Structure { path: PathBuf, message: String },
    #[error("{}: unknown key '{key}' in {section}{hint}", path.display())]
    UnknownKey {
        path: PathBuf,
        key: String,
        section: String,
        hint: String,
    },
    #[error("{}: {key}: {message}", path.display())]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
}

// ---------------------------------------------------------------------------------------
// Enums instead of magic strings and sentinel numbers.

/// Which split names select which videos (matched case-insensitively).
pub type SplitNames = Vec<String>;

pub use crate::infer::{DecodeSetting, NmsMethod};

/// Positive-point selection (`train_cfg.center_sample`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum CenterSample {
    /// Only points within `center_sample_radius` strides of the segment centre.
    #[default]
    Radius,
    /// Every point inside the segment.
    None,
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
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Positive-point selection.
    pub center_sample: CenterSample,
    /// Centre-sampling radius in strides.
    pub center_sample_radius: f64,
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
            center_sample: CenterSample::Radius,
            center_sample_radius: 1.5,
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

/// A config together with the notes produced while reading it.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    pub config: Config,
    /// Where it was read from.
    pub path: PathBuf,
    /// One line per accepted-but-ignored key of the original.
    pub notes: Vec<String>,
}

// ---------------------------------------------------------------------------------------
// Key catalogue: used for unknown-key messages and "closest key" hints.

const SECTIONS: &[&str] = &["dataset", "model", "opt", "loader", "train_cfg", "test_cfg", "xca"];

/// Keys of the original that xca accepts but does not use, with the reason.
const IGNORED: &[(&str, &str)] = &[
    ("devices", "xca picks the device with --device"),
    ("loader.num_workers", "xca loads features in-process"),
    ("model.max_buffer_len_factor", "xca generates points for any length"),
    ("opt.momentum", "only used by SGD; xca trains with AdamW"),
];

fn keys_of<T: Serialize + Default>() -> Vec<String> {
    match serde_json::to_value(T::default()) {
        Ok(Value::Object(m)) => m.keys().cloned().collect(),
        _ => Vec::new(),
    }
}

fn section_keys(section: &str) -> Vec<String> {
    match section {
        "" => keys_of::<Config>(),
        "dataset" => keys_of::<DatasetConfig>(),
        "model" => keys_of::<ModelConfig>(),
        "opt" => keys_of::<OptConfig>(),
        "loader" => keys_of::<LoaderConfig>(),
        "train_cfg" => keys_of::<TrainConfig>(),
        "test_cfg" => keys_of::<TestConfig>(),
        "xca" => keys_of::<XcaConfig>(),
        _ => Vec::new(),
    }
}

fn closest<'a>(key: &str, candidates: impl IntoIterator<Item = &'a String>) -> Option<String> {
    candidates
        .into_iter()
        .map(|c| {
            (
                strsim::normalized_damerau_levenshtein(&key.to_lowercase(), &c.to_lowercase()),
                c,
            )
        })
        .filter(|(score, _)| *score >= 0.5)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c.clone())
}

// ---------------------------------------------------------------------------------------
// Loading.

/// The longest training crop a config may ask for (`dataset.max_seq_len`); inference takes
/// sequences of any length.
pub const MAX_SEQ_LEN: usize = 1 << 16;

impl Config {
    /// Read, merge over defaults and validate a YAML config file.
    pub fn load(path: &Path) -> Result<LoadedConfig, ConfigError> {
        let text = crate::fsio::read_text_bounded(path, crate::fsio::limits::CONFIG)?;
        Self::from_yaml_str(&text, path)
    }

    /// Parse YAML text; `path` is only used in messages.
    pub fn from_yaml_str(text: &str, path: &Path) -> Result<LoadedConfig, ConfigError> {
        let value: Value = if text.trim().is_empty() {
            Value::Object(Map::new())
        } else {
            serde_saphyr::from_str(text).map_err(|e| ConfigError::Yaml {
                path: path.to_path_buf(),
                message: e.to_string().lines().next().unwrap_or("parse error").to_string(),
            })?
        };
        Self::from_value(value, path)
    }

    /// Merge a parsed tree over the defaults and validate it.
    pub fn from_value(value: Value, path: &Path) -> Result<LoadedConfig, ConfigError> {
        let p = || path.to_path_buf();
        let mut root = match value {
            Value::Object(m) => m,
            Value::Null => Map::new(),
            other => {
                return Err(ConfigError::Structure {
                    path: p(),
                    message: format!("the top level must be a mapping of keys, found {}", kind(&other)),
                });
            }
        };
        let mut notes = Vec::new();
        check_keys(&root, "", path)?;
        for section in SECTIONS {
            match root.get(*section) {
                None | Some(Value::Object(_)) => {}
                Some(Value::Null) => {
                    root.remove(*section);
                }
                Some(other) => {
                    return Err(ConfigError::Invalid {
                        path: p(),
                        key: section.to_string(),
                        message: format!("must be a mapping of keys, found {}", kind(other)),
                    });
                }
            }
            if let Some(Value::Object(m)) = root.get(*section) {
                check_keys(m, section, path)?;
            }
        }
        let defaults = Config::default().to_json();
        for (key, why) in IGNORED {
            let lookup = |tree: &Value| -> Option<Value> {
                match key.split_once('.') {
                    Some((s, k)) => tree.get(s).and_then(|v| v.get(k)).cloned(),
                    None => tree.get(*key).cloned(),
                }
            };
            // A resolved config (e.g. a run folder's config.yaml) carries the defaults of
            // these keys; only a value someone chose deserves a note.
            let tree = Value::Object(root.clone());
            if lookup(&tree).is_some_and(|v| Some(v) != lookup(&defaults)) {
                notes.push(format!("note: {key} is accepted but not used ({why})"));
            }
        }
        // The original spells "no clipping" as -1; accept it and store none.
        if let Some(Value::Object(tc)) = root.get_mut("train_cfg")
            && let Some(v) = tc.get("clip_grad_l2norm")
            && v.as_f64().is_some_and(|x| x <= 0.0)
        {
            tc.insert("clip_grad_l2norm".into(), Value::Null);
        }
        let config: Config = serde_path_to_error::deserialize(Value::Object(root)).map_err(|e| {
            let key = e.path().to_string();
            let msg = e.inner().to_string();
            ConfigError::Invalid {
                path: p(),
                key,
                message: msg,
            }
        })?;
        config.validate(path)?;
        Ok(LoadedConfig {
            config,
            path: path.to_path_buf(),
            notes,
        })
    }

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
        if m.scale_factor < 2 {
            return Err(bad("model.scale_factor", "must be at least 2".into()));
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
        if m.fpn_start_level >= self.num_levels() {
            return Err(bad(
                "model.fpn_start_level",
                format!("must be below the number of levels {}", self.num_levels()),
            ));
        }
        if m.regression_range.len() != self.num_levels() {
            return Err(bad(
                "model.regression_range",
                format!(
                    "has {} ranges but backbone_arch {:?} gives {} pyramid levels",
                    m.regression_range.len(),
                    m.backbone_arch,
                    self.num_levels()
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
        if t.center_sample_radius.is_nan() || t.center_sample_radius <= 0.0 {
            return Err(bad(
                "train_cfg.center_sample_radius",
                format!("must be positive, got {}", t.center_sample_radius),
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

    // ---- derived values -----------------------------------------------------------------

    /// Side of the square image a feature row holds (64 for 4096).
    pub fn image_side(&self) -> usize {
        (self.dataset.input_dim as f64).sqrt().round() as usize
    }

    /// Pyramid levels: the stem output plus one per branch block.
    pub fn num_levels(&self) -> usize {
        1 + self.model.backbone_arch[2]
    }

    /// Stride of each pyramid level in grid steps: `scale_factor^l`.
    pub fn fpn_strides(&self) -> Vec<usize> {
        (0..self.num_levels())
            .map(|l| self.model.scale_factor.pow(l as u32))
            .collect()
    }

    /// Attention window, or none for global attention (`n_mha_win_size ≤ 1`).
    pub fn attention_window(&self) -> Option<usize> {
        (self.model.n_mha_win_size > 1).then_some(self.model.n_mha_win_size as usize)
    }

    /// Inference inputs are padded to a multiple of this (SPEC §2.4).
    pub fn max_div_factor(&self) -> usize {
        let w = self.attention_window();
        self.fpn_strides()
            .into_iter()
            .map(|s| match w {
                Some(w) => s * (w / 2) * 2,
                None => s,
            })
            .max()
            .unwrap_or(1)
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

    /// The resolved tree with the YAML's section and key names.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// The resolved tree as YAML text.
    pub fn to_yaml(&self) -> String {
        serde_saphyr::to_string(self).unwrap_or_else(|e| format!("# cannot render YAML: {e}\n"))
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

fn check_keys(map: &Map<String, Value>, section: &str, path: &Path) -> Result<(), ConfigError> {
    let known = section_keys(section);
    for key in map.keys() {
        if known.iter().any(|k| k == key) {
            continue;
        }
        // Suggest from this section first, then say if the key belongs to another one.
        let mut hint = closest(key, &known)
            .map(|c| format!(" (did you mean '{c}'?)"))
            .unwrap_or_default();
        if hint.is_empty() {
            for other in std::iter::once("").chain(SECTIONS.iter().copied()) {
                if other != section && section_keys(other).iter().any(|k| k == key) {
                    let place = if other.is_empty() {
                        "at the top level".to_string()
                    } else {
                        format!("in section '{other}'")
                    };
                    hint = format!(" (it belongs {place})");
                    break;
                }
            }
        }
        let section_name = if section.is_empty() {
            "the top level".to_string()
        } else {
            format!("section '{section}'")
        };
        return Err(ConfigError::UnknownKey {
            path: path.to_path_buf(),
            key: key.clone(),
            section: section_name,
            hint,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAPER: &str = include_str!("../configs/vessel.yaml");

    fn load(text: &str) -> Result<LoadedConfig, ConfigError> {
        Config::from_yaml_str(text, Path::new("test.yaml"))
    }

    #[test]
    fn paper_yaml_resolves_to_spec_values() {
        let c = load(PAPER).unwrap().config;
        assert_eq!(c.dataset_name, "vessel");
        assert_eq!(c.init_rand_seed, 1234567891);
        assert_eq!(c.train_split, vec!["train"]);
        assert_eq!(c.val_split, vec!["validation"]);
        assert_eq!(c.dataset.input_dim, 4096);
        assert_eq!(c.dataset.feat_stride, 4);
        assert_eq!(c.dataset.num_frames, 4);
        assert_eq!(c.dataset.max_seq_len, 128);
        assert_eq!(c.dataset.crop_ratio, Some([0.9, 1.0]));
        assert_eq!(c.dataset.file_prefix, None);
        assert_eq!(c.dataset.file_ext, ".npy");
        assert!(c.model.sp_atten && c.model.te_atten && c.model.self_atten && c.model.pretrain && c.model.random_patch);
        assert_eq!(c.model.n_mha_win_size, 4);
        assert_eq!(c.model.embd_dim, 512);
        assert_eq!(c.opt.learning_rate, 1e-4);
        assert_eq!(c.opt.epochs, 45);
        assert_eq!(c.opt.weight_decay, 0.05);
        assert_eq!(c.loader.batch_size, 2);
        assert_eq!(c.train_cfg.init_loss_norm, 100.0);
        assert_eq!(c.train_cfg.clip_grad_l2norm, Some(1.0));
        assert_eq!(c.train_cfg.droppath, 0.1);
        assert_eq!(c.test_cfg.voting_thresh, 0.7);
        assert_eq!(c.test_cfg.pre_nms_topk, 2000);
        assert_eq!(c.test_cfg.max_seg_num, 200);
        assert_eq!(c.test_cfg.min_score, 0.001);
        assert!(!c.test_cfg.multiclass_nms);
        assert_eq!(c.test_cfg.nms_method, NmsMethod::Soft);
        // derived
        assert_eq!(c.fpn_strides(), vec![1, 2, 4, 8, 16, 32]);
        assert_eq!(c.max_div_factor(), 128);
        assert_eq!(c.image_side(), 64);
        assert_eq!(c.total_epochs(), 50);
        assert_eq!(c.saved_epochs(), 31..=50);
        assert_eq!(c.inference_len(100), 128);
        assert_eq!(c.inference_len(300), 384);
    }

    #[test]
    fn original_spellings_parse() {
        let c = load("model: {SpAtten: True, TeAtten: False, n_mha_win_size: -1}\ndataset: {file_prefix: ~, default_fps: 15,}\n# comment\ntrain_cfg: {clip_grad_l2norm: -1}\n")
            .unwrap()
            .config;
        assert!(c.model.sp_atten);
        assert!(!c.model.te_atten);
        assert_eq!(c.attention_window(), None);
        assert_eq!(c.max_div_factor(), 32);
        assert_eq!(c.dataset.default_fps, Some(15.0));
        assert_eq!(c.train_cfg.clip_grad_l2norm, None);
    }

    #[test]
    fn empty_file_gives_defaults() {
        assert_eq!(load("").unwrap().config, Config::default());
    }

    #[test]
    fn ignored_keys_give_notes_not_errors() {
        let l = load("devices: ['cuda:1']\nloader: {num_workers: 8}\n").unwrap();
        assert_eq!(l.notes.len(), 2, "{:?}", l.notes);
        assert!(l.notes[0].contains("devices"));
        assert!(l.notes[1].contains("loader.num_workers"));
        // The defaults themselves (as in a resolved config.yaml) give no note.
        let resolved = Config::default().to_yaml();
        assert!(load(&resolved).unwrap().notes.is_empty());
    }

    #[test]
    fn unknown_key_names_key_section_and_closest() {
        let e = load("dataset: {max_seq_lenn: 128}").unwrap_err().to_string();
        assert!(
            e.contains("'max_seq_lenn'") && e.contains("section 'dataset'") && e.contains("did you mean 'max_seq_len'"),
            "{e}"
        );
        let e = load("learning_rate: 0.1").unwrap_err().to_string();
        assert!(e.contains("the top level") && e.contains("section 'opt'"), "{e}");
        let e = load("modle: {}").unwrap_err().to_string();
        assert!(e.contains("did you mean 'model'"), "{e}");
    }

    #[test]
    fn bad_types_name_the_key() {
        let e = load("dataset: {max_seq_len: many}").unwrap_err().to_string();
        assert!(e.contains("dataset.max_seq_len"), "{e}");
        let e = load("model: {SpAtten: 3}").unwrap_err().to_string();
        assert!(e.contains("model.SpAtten"), "{e}");
        let e = load("setting: 5").unwrap_err().to_string();
        assert!(e.contains("setting") && e.contains("0, 1 or 2"), "{e}");
        let e = load("test_cfg: {nms_method: fancy}").unwrap_err().to_string();
        assert!(e.contains("test_cfg.nms_method"), "{e}");
        let e = load("dataset: 3").unwrap_err().to_string();
        assert!(e.contains("dataset") && e.contains("mapping"), "{e}");
        let e = load("dataset: {json_file: [").unwrap_err().to_string();
        assert!(e.contains("not valid YAML"), "{e}");
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
        ];
        for (yaml, key) in cases {
            let e = load(yaml).unwrap_err().to_string();
            assert!(e.contains(key), "{yaml} → {e}");
        }
    }

    #[test]
    fn resolved_tree_round_trips() {
        let c = load(PAPER).unwrap().config;
        let again = Config::from_value(c.to_json(), Path::new("x")).unwrap().config;
        assert_eq!(c, again);
        let yaml_again = load(&c.to_yaml()).unwrap().config;
        assert_eq!(c, yaml_again);
        let j = c.to_json();
        assert_eq!(j["model"]["SpAtten"], Value::Bool(true));
        assert_eq!(j["opt"]["type"], Value::String("AdamW".into()));
    }
}
