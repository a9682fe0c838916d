//! Reading a YAML config: parse it as the original writes it (flow mappings, `~`,
//! `True`/`False`, comments), refuse unknown keys with the closest known one, note the
//! original's keys that xca accepts but ignores, merge over the defaults and validate.

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::{Map, Value};

use super::{
    Config, ConfigError, DatasetConfig, LoaderConfig, ModelConfig, OptConfig, TestConfig, TrainConfig, XcaConfig,
};

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
    use crate::config::NmsMethod;

    const PAPER: &str = include_str!("../../configs/vessel.yaml");

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
