//! Weight import for the SPEC §3 network: the map between xca's module paths and the original
//! PyTorch state-dict keys, and a loader that fills a [`Network`] from a PyTorch-named tensor
//! map (safetensors or `.pth` files).
//!
//! Differences the map handles:
//! - the long-term attention lives in `backbone.embd.0` in PyTorch (`lstm_op`, `attention_op`,
//!   `conv_1`);
//! - each ConvLSTM cell's conv `[4h, in + h, k, k]` is split into `conv_x` (the first `in`
//!   input channels, with the bias) and `conv_h` (the last `h`);
//! - Linear weights are `[out, in]` in PyTorch, `[in, out]` in burn;
//! - BatchNorm `weight`/`bias` are burn's `gamma`/`beta`;
//! - LayerNorm and AffineDropPath `[1, C, 1]` are stored `[C]`; `Scale` 0-d is stored `[1]`;
//! - the MLP's `mlp.0`/`mlp.3` are `mlp_fc1`/`mlp_fc2`.
//!
//! A `module.` prefix (DataParallel) is stripped.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use burn::module::{ModuleMapper, Param};
use burn::store::{ModuleStore, PytorchStore, SafetensorsStore, bridge};
use burn::tensor::{Tensor, TensorData};

use super::{ModelError, Network};

/// How a PyTorch tensor becomes an xca parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transform {
    /// Same values; shapes equal up to size-1 dimensions.
    Same,
    /// Transpose a 2-D `[out, in]` into `[in, out]`.
    Transpose,
    /// Keep channels `start..start+len` of dimension 1.
    SliceDim1 {
        /// First channel.
        start: usize,
        /// Count.
        len: usize,
    },
    /// The hidden half of a ConvLSTM conv: the last `len` channels of dimension 1.
    TailDim1 {
        /// Count.
        len: usize,
    },
}

/// The PyTorch key and transform for an xca parameter path, given the xca shape.
pub fn torch_key(path: &str, shape: &[usize]) -> (String, Transform) {
    let p = path;
    if let Some(rest) = p.strip_prefix("backbone.long_term.convlstm.cells.") {
        // "{l}.conv_x.weight" …
        let mut it = rest.splitn(3, '.');
        let (l, conv, leaf) = (
            it.next().unwrap_or(""),
            it.next().unwrap_or(""),
            it.next().unwrap_or(""),
        );
        let key = format!("backbone.embd.0.lstm_op.cell_list.{l}.conv.{leaf}");
        let tr = match (conv, leaf) {
            ("conv_x", "weight") => Transform::SliceDim1 {
                start: 0,
                len: shape.get(1).copied().unwrap_or(0),
            },
            ("conv_h", "weight") => Transform::TailDim1 {
                len: shape.get(1).copied().unwrap_or(0),
            },
            _ => Transform::Same,
        };
        return (key, tr);
    }
    if let Some(rest) = p.strip_prefix("backbone.long_term.spatial.") {
        let (layer, leaf) = rest.split_once('.').unwrap_or((rest, ""));
        let idx = match layer {
            "conv1" => "0",
            "bn1" => "1",
            "conv2" => "3",
            "bn2" => "4",
            _ => "6",
        };
        let leaf = match leaf {
            "gamma" => "weight",
            "beta" => "bias",
            other => other,
        };
        return (format!("backbone.embd.0.attention_op.{idx}.{leaf}"), Transform::Same);
    }
    if let Some(rest) = p.strip_prefix("backbone.long_term.projection.") {
        let (layer, leaf) = rest.split_once('.').unwrap_or((rest, ""));
        let idx = if layer == "fc1" { "0" } else { "1" };
        let tr = if leaf == "weight" {
            Transform::Transpose
        } else {
            Transform::Same
        };
        return (format!("backbone.embd.0.conv_1.{idx}.{leaf}"), tr);
    }
    let key = p.replace(".mlp_fc1.", ".mlp.0.").replace(".mlp_fc2.", ".mlp.3.");
    (key, Transform::Same)
}

/// What a load did besides filling the network.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// PyTorch keys the network used.
    pub used: Vec<String>,
    /// PyTorch keys in the file that the network does not use (e.g. the original's unused
    /// `conv_2` maps and per-conv ConvLSTMs), sorted.
    pub unused: Vec<String>,
}

struct Loader<'a> {
    tensors: &'a HashMap<String, TensorData>,
    path: Vec<String>,
    used: BTreeSet<String>,
    errors: Vec<ModelError>,
}

fn squeeze_ones(s: &[usize]) -> Vec<usize> {
    s.iter().copied().filter(|&d| d != 1).collect()
}

impl Loader<'_> {
    /// The values for parameter `path` with xca shape `shape`, row-major.
    fn values(&mut self, path: &str, shape: &[usize]) -> Result<Vec<f32>, ModelError> {
        let (key, tr) = torch_key(path, shape);
        let data = self.tensors.get(&key).ok_or_else(|| ModelError::MissingWeight {
            key: key.clone(),
            path: path.to_string(),
        })?;
        let tshape: Vec<usize> = data.shape().to_vec();
        let data_err = |reason: String| ModelError::WeightData {
            key: key.clone(),
            reason,
        };
        // Integer and boolean tensors are no weights (PyTorch keeps only step counters so).
        if !data.dtype().is_float() {
            return Err(data_err(format!(
                "it holds {:?} values, not floating point",
                data.dtype()
            )));
        }
        let vals: Vec<f32> = data
            .clone()
            .try_cast_as::<f32>()
            .and_then(|d| d.try_into_vec::<f32>())
            .map_err(|e| data_err(format!("{e:?}")))?;
        if vals.len() != tshape.iter().product::<usize>() {
            return Err(data_err(format!("{} values for shape {tshape:?}", vals.len())));
        }
        let shape_err = |expected: Vec<usize>| ModelError::WeightShape {
            key: key.clone(),
            expected,
            actual: tshape.clone(),
        };
        let out = match tr {
            Transform::Same => {
                if squeeze_ones(&tshape) != squeeze_ones(shape) {
                    return Err(shape_err(shape.to_vec()));
                }
                vals
            }
            Transform::Transpose => {
                let [i, o] = [shape[0], shape[1]];
                if tshape != [o, i] {
                    return Err(shape_err(vec![o, i]));
                }
                let mut t = vec![0f32; i * o];
                for r in 0..o {
                    for c in 0..i {
                        t[c * o + r] = vals[r * i + c];
                    }
                }
                t
            }
            Transform::SliceDim1 { .. } | Transform::TailDim1 { .. } => {
                // xca [4h, n, k, k] from PyTorch [4h, in + h, k, k].
                let (o, n, kh, kw) = (shape[0], shape[1], shape[2], shape[3]);
                let total = tshape.get(1).copied().unwrap_or(0);
                let start = match tr {
                    Transform::SliceDim1 { start, .. } => start,
                    _ => total.saturating_sub(n),
                };
                let ok = tshape.len() == 4
                    && tshape[0] == o
                    && tshape[2] == kh
                    && tshape[3] == kw
                    && start + n <= total
                    && (matches!(tr, Transform::TailDim1 { .. }) || total == n + o / 4);
                if !ok {
                    return Err(shape_err(vec![o, n + o / 4, kh, kw]));
                }
                let plane = kh * kw;
                let mut t = Vec::with_capacity(o * n * plane);
                for r in 0..o {
                    let base = (r * total + start) * plane;
                    t.extend_from_slice(&vals[base..base + n * plane]);
                }
                t
            }
        };
        self.used.insert(key);
        Ok(out)
    }
}

impl ModuleMapper for Loader<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let path = self.path.join(".");
        let shape: Vec<usize> = param.lazy_shape().to_vec();
        match self.values(&path, &shape) {
            Ok(vals) => {
                let device = param.lazy_device();
                let tensor = Tensor::<D>::from_data(TensorData::new(vals, shape), &device);
                let id = param.id;
                param.transform_for_load(tensor, id)
            }
            Err(e) => {
                self.errors.push(e);
                param
            }
        }
    }
}

/// Fill `network` from PyTorch-named tensors (a `module.` prefix is stripped).
///
/// Every parameter and BatchNorm running statistic of the network must be present with a
/// compatible shape; otherwise the error lists every missing or mismatched tensor (never a
/// partial load). Keys the network does not use are listed in the report.
pub fn load_torch_tensors(
    network: Network,
    tensors: &HashMap<String, TensorData>,
) -> Result<(Network, LoadReport), WeightsError> {
    let stripped: HashMap<String, TensorData>;
    let tensors = if tensors.keys().any(|k| k.starts_with("module.")) {
        stripped = tensors
            .iter()
            .map(|(k, v)| (k.strip_prefix("module.").unwrap_or(k).to_string(), v.clone()))
            .collect();
        &stripped
    } else {
        tensors
    };
    let mut loader = Loader {
        tensors,
        path: Vec::new(),
        used: BTreeSet::new(),
        errors: Vec::new(),
    };
    let network = burn::module::Module::map(network, &mut loader);
    if !loader.errors.is_empty() {
        return Err(WeightsError::Mismatch {
            problems: loader.errors,
        });
    }
    let mut unused: Vec<String> = tensors.keys().filter(|k| !loader.used.contains(*k)).cloned().collect();
    unused.sort();
    Ok((
        network,
        LoadReport {
            used: loader.used.into_iter().collect(),
            unused,
        },
    ))
}

/// How many problems an error message spells out before it only counts the rest.
const LISTED: usize = 20;

fn listing<T: std::fmt::Display>(items: &[T]) -> String {
    let mut s: Vec<String> = items.iter().take(LISTED).map(|p| p.to_string()).collect();
    if items.len() > LISTED {
        s.push(format!("… and {} more", items.len() - LISTED));
    }
    s.join("; ")
}

/// A PyTorch weight map that does not fit a network.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    /// The file cannot be read.
    #[error(transparent)]
    File(#[from] ModelError),
    /// Tensors the network needs are missing, have the wrong shape or are not float data;
    /// every one is listed (the message spells out the first 20).
    #[error("{} tensor(s) missing or mismatched: {}", problems.len(), listing(problems))]
    Mismatch {
        /// One entry per tensor ([`ModelError::MissingWeight`], [`ModelError::WeightShape`]
        /// or [`ModelError::WeightData`]).
        problems: Vec<ModelError>,
    },
    /// Tensors the original's forward would use but the configured network has no place for:
    /// the checkpoint was trained with a different model configuration.
    #[error(
        "{} tensor(s) that the original's forward uses have no place in the configured network \
         (was the checkpoint trained with other SpAtten/TeAtten/SelfAtten/pretrain/droppath/backbone_arch \
         settings?): {}",
        keys.len(),
        listing(keys)
    )]
    Unexpected {
        /// The PyTorch keys (without `module.`).
        keys: Vec<String>,
    },
}

/// A group of checkpoint tensors that the original's forward never reads (or that the
/// configuration switches off), as reported by `xca import`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UnusedGroup {
    /// What the tensors are and why they are not used.
    pub label: &'static str,
    /// Their PyTorch keys (without `module.`), sorted.
    pub keys: Vec<String>,
}

/// Which known group an unused key belongs to, if any.
///
/// The original's `MaskedConv1D` declares a ConvLSTM in every masked conv and, with
/// `pretrain`, two 4096→1024→256 maps (`conv_1`, `conv_2`); only `backbone.embd.0` runs its
/// ConvLSTM and `conv_1`, and nothing ever runs `conv_2`. `embd.0`'s own parts and the stem are
/// unused only when the config switches them off (xca then allocates nothing for them).
fn unused_group(key: &str) -> Option<&'static str> {
    let in_embd0 = key.starts_with("backbone.embd.0.");
    if key.ends_with(".num_batches_tracked") {
        Some("BatchNorm step counters (num_batches_tracked, not weights)")
    } else if key.contains(".conv_2.") {
        Some("conv_2 maps (declared by the original, never used)")
    } else if key.contains(".lstm_op.") && !in_embd0 {
        Some("ConvLSTMs of masked convs other than backbone.embd.0 (never used)")
    } else if key.contains(".conv_1.") && !in_embd0 {
        Some("conv_1 maps of masked convs other than backbone.embd.0 (never used)")
    } else if key.starts_with("backbone.embd.0.lstm_op.") {
        Some("backbone.embd.0 ConvLSTM (not used with this config's SpAtten/TeAtten)")
    } else if key.starts_with("backbone.embd.0.conv_1.") {
        Some("backbone.embd.0 contrastive projection conv_1 (not used with this config's pretrain/SpAtten/TeAtten)")
    } else if key.starts_with("backbone.stem.") {
        Some("transformer stem (SelfAtten off in this config)")
    } else {
        None
    }
}

/// Sort a load's unused keys into the known groups; any other unused key is an error
/// ([`WeightsError::Unexpected`]): ignoring it would silently evaluate another model than
/// the one the checkpoint holds.
pub fn group_unused(report: &LoadReport) -> Result<Vec<UnusedGroup>, WeightsError> {
    let mut groups: Vec<UnusedGroup> = Vec::new();
    let mut unexpected = Vec::new();
    for key in &report.unused {
        match unused_group(key) {
            Some(label) => match groups.iter_mut().find(|g| g.label == label) {
                Some(g) => g.keys.push(key.clone()),
                None => groups.push(UnusedGroup {
                    label,
                    keys: vec![key.clone()],
                }),
            },
            None => unexpected.push(key.clone()),
        }
    }
    if unexpected.is_empty() {
        Ok(groups)
    } else {
        Err(WeightsError::Unexpected { keys: unexpected })
    }
}

/// What [`import_torch_checkpoint`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportReport {
    /// Top-level key the weights were read from (`state_dict_ema`), if any.
    pub top_level_key: Option<String>,
    /// Tensors in the file (after selecting the top-level key).
    pub total: usize,
    /// PyTorch keys the network was filled from.
    pub used: Vec<String>,
    /// Tensors the original's forward does not read, by group.
    pub unused: Vec<UnusedGroup>,
}

/// Read an original-format checkpoint: a `torch.save` archive (`.pth.tar`, `.pth`, `.pt`)
/// holding `{'state_dict_ema': …}` (or a bare state dict), or a `.safetensors` file with
/// PyTorch key names. Returns the tensors and the top-level key used.
///
/// Nothing in the file is executed: burn-store's PyTorch reader parses the pickle as data
/// and only rebuilds tensors from their storages.
pub fn read_torch_checkpoint(path: &Path) -> Result<(HashMap<String, TensorData>, Option<String>), ModelError> {
    let is_safetensors = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("safetensors"));
    if is_safetensors {
        let bytes = crate::fsio::read_bounded(path, crate::fsio::limits::CHECKPOINT)?;
        return Ok((read_torch_safetensors(bytes, path)?, None));
    }
    let (tensors, key) = {
        // A regular file no larger than a checkpoint can be, before burn-store opens it by
        // name: a path to a device, a FIFO or a folder is refused at once.
        let (file, len) = crate::fsio::open_bounded(path, crate::fsio::limits::CHECKPOINT)?;
        check_archive(path, file, len)?;
        const EMA: &str = "state_dict_ema";
        match read_pytorch(path, Some(EMA)) {
            Ok(t) => (t, Some(EMA.to_string())),
            // A bare state dict (no top-level key) is read as it is.
            Err(PthError::KeyNotFound) => (read_pytorch(path, None).map_err(|e| e.into_model(path))?, None),
            Err(e) => return Err(e.into_model(path)),
        }
    };
    check_finite(&tensors).map_err(|reason| ModelError::WeightFile {
        path: path.display().to_string(),
        reason,
    })?;
    Ok((tensors, key))
}

/// [`read_torch_checkpoint`] of a `.safetensors` file already in memory (`bytes`, read from
/// `path`, which errors name).
pub fn read_torch_safetensors(bytes: Vec<u8>, path: &Path) -> Result<HashMap<String, TensorData>, ModelError> {
    let tensors = read_safetensors_bytes(bytes, path)?;
    check_finite(&tensors).map_err(|reason| ModelError::WeightFile {
        path: path.display().to_string(),
        reason,
    })?;
    Ok(tensors)
}

/// The first float tensor (in key order) holding a NaN or an infinity, or a value beyond
/// float32's range, as an error message. Training never saves such weights, so one in a file
/// means the file was damaged; xca's own checkpoints are refused for the same reason
/// ([`crate::train::checkpoint::load`]). Integer tensors (step counters) are not weights and
/// pass.
fn check_finite(tensors: &HashMap<String, TensorData>) -> Result<(), String> {
    let mut keys: Vec<&String> = tensors.keys().collect();
    keys.sort();
    for key in keys {
        let data = &tensors[key];
        if !data.dtype().is_float() {
            continue;
        }
        let finite = data
            .clone()
            .try_cast_as::<f32>()
            .and_then(|d| d.try_into_vec::<f32>())
            .map_err(|e| format!("tensor {key} cannot be read as float32: {e:?}"))?
            .iter()
            .all(|v| v.is_finite());
        if !finite {
            return Err(format!(
                "tensor {key} holds NaN or infinite values (or values beyond float32's range); the file is damaged"
            ));
        }
    }
    Ok(())
}

/// Fill `network` from an original-format checkpoint (see [`read_torch_checkpoint`]):
/// every tensor the network needs must be there with the right shape, and every tensor left
/// over must be one the original's forward does not read either.
pub fn import_torch_checkpoint(network: Network, path: &Path) -> Result<(Network, ImportReport), WeightsError> {
    let (tensors, top_level_key) = read_torch_checkpoint(path)?;
    let total = tensors.len();
    let (network, report) = load_torch_tensors(network, &tensors)?;
    let unused = group_unused(&report)?;
    Ok((
        network,
        ImportReport {
            top_level_key,
            total,
            used: report.used,
            unused,
        },
    ))
}

enum PthError {
    KeyNotFound,
    Other(String),
}

impl PthError {
    fn into_model(self, path: &Path) -> ModelError {
        ModelError::WeightFile {
            path: path.display().to_string(),
            reason: match self {
                PthError::KeyNotFound => "no tensors found".to_string(),
                PthError::Other(r) => r,
            },
        }
    }
}

fn read_pytorch(path: &Path, top_level_key: Option<&str>) -> Result<HashMap<String, TensorData>, PthError> {
    use burn::store::{PytorchStoreError, pytorch_reader::PytorchError};
    // PytorchStore renumbers `nn.Sequential` indices by default (attention_op.3 would
    // become .2); the name map needs the original keys.
    let mut store = PytorchStore::from_file(path).map_indices_contiguous(false);
    if let Some(key) = top_level_key {
        store = store.with_top_level_key(key);
    }
    let all = match store.get_all_tensors() {
        Ok(all) => all,
        Err(PytorchStoreError::Reader(PytorchError::KeyNotFound(_))) => {
            return Err(PthError::KeyNotFound);
        }
        Err(e) => return Err(PthError::Other(e.to_string())),
    };
    let mut out = HashMap::new();
    for (k, t) in all {
        out.insert(
            k.clone(),
            bridge::to_data(t).map_err(|e| PthError::Other(format!("{k}: {e}")))?,
        );
    }
    Ok(out)
}

/// A cheap sanity check before the PyTorch reader: if `file` (`len` bytes, opened from
/// `path`) is a zip archive (what `torch.save` writes since PyTorch 1.6), its
/// end-of-central-directory record is there, so a truncated download is reported as such.
fn check_archive(path: &Path, mut f: std::fs::File, len: u64) -> Result<(), ModelError> {
    use std::io::{Read, Seek, SeekFrom};
    let err = |reason: String| ModelError::WeightFile {
        path: path.display().to_string(),
        reason,
    };
    let mut magic = [0u8; 4];
    if len < 4 || f.read_exact(&mut magic).is_err() {
        return Err(err(format!(
            "file is too short ({len} bytes) to be a PyTorch checkpoint"
        )));
    }
    if magic != *b"PK\x03\x04" {
        // Legacy (pre-1.6) pickle stream or TAR container: left to the reader.
        return Ok(());
    }
    // The end-of-central-directory record (22 bytes + a comment of at most 64 KiB) closes
    // every zip file.
    let tail_len = len.min(22 + 65_535);
    f.seek(SeekFrom::Start(len - tail_len))
        .map_err(|e| err(e.to_string()))?;
    let mut tail = Vec::with_capacity(tail_len as usize);
    f.take(tail_len)
        .read_to_end(&mut tail)
        .map_err(|e| err(e.to_string()))?;
    if !tail.windows(4).any(|w| w == b"PK\x05\x06") {
        return Err(err(format!(
            "zip archive is truncated or damaged ({len} bytes, no end-of-central-directory record)"
        )));
    }
    Ok(())
}

/// Every tensor of safetensors `bytes` (read from `path`, which errors name), by name.
pub fn read_safetensors_bytes(bytes: Vec<u8>, path: &Path) -> Result<HashMap<String, TensorData>, ModelError> {
    let err = |reason: String| ModelError::WeightFile {
        path: path.display().to_string(),
        reason,
    };
    let mut store = SafetensorsStore::from_bytes(Some(bytes)).map_indices_contiguous(false);
    let all = store.get_all_tensors().map_err(|e| err(e.to_string()))?;
    let mut out = HashMap::new();
    for (k, t) in all {
        out.insert(k.clone(), bridge::to_data(t).map_err(|e| err(format!("{k}: {e}")))?);
    }
    Ok(out)
}

/// Read every tensor of a `.safetensors` file, or of a PyTorch `.pth`/`.pth.tar` archive
/// (optionally under `top_level_key`, e.g. `state_dict_ema`), by name.
pub fn read_tensor_file(path: &Path, top_level_key: Option<&str>) -> Result<HashMap<String, TensorData>, ModelError> {
    let is_safetensors = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("safetensors"));
    if is_safetensors {
        let bytes = crate::fsio::read_bounded(path, crate::fsio::limits::CHECKPOINT)?;
        return read_safetensors_bytes(bytes, path);
    }
    // Checked before burn-store opens it by name (see `read_torch_checkpoint`).
    crate::fsio::open_bounded(path, crate::fsio::limits::CHECKPOINT)?;
    read_pytorch(path, top_level_key).map_err(|e| e.into_model(path))
}
