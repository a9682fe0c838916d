//! xca's checkpoint format: safetensors weights (readable from Python with `safetensors`)
//! under xca's module paths, plus a small JSON beside them (epoch, config hash, version).
//! Every file is written to a temporary name and renamed, so a crash never leaves a
//! half-written checkpoint.

use std::path::{Path, PathBuf};

use burn::store::{ModuleSnapshot, SafetensorsStore};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::fsio::{ReadError, WriteError, limits, read_bounded, read_text_bounded, write_atomic, write_json_atomic};
use crate::model::Network;

/// A checkpoint that cannot be written or read, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error(transparent)]
    Write(#[from] WriteError),
    /// The file is missing, not a regular file, or larger than a checkpoint can be.
    #[error(transparent)]
    File(#[from] ReadError),
    #[error("cannot read checkpoint {}: {reason}", path.display())]
    Read { path: PathBuf, reason: String },
    #[error("checkpoint {} does not fit the config: {reason}", path.display())]
    Mismatch { path: PathBuf, reason: String },
}

/// What a checkpoint's JSON sidecar records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointMeta {
    /// 1-based epoch after which the weights were taken.
    pub epoch: usize,
    /// SHA-256 of the resolved config (see [`config_hash`]).
    pub config_hash: String,
    /// xca version that wrote it.
    pub xca_version: String,
    /// Which weights: `ema` (what evaluation uses) or `model`.
    pub weights: String,
}

/// SHA-256 (hex, first 16 digits) of the resolved config as JSON: two runs with the same
/// effective settings share it, whatever the YAML spelling.
pub fn config_hash(cfg: &Config) -> String {
    let json = serde_json::to_string(&cfg.to_json()).unwrap_or_default();
    let digest = Sha256::digest(json.as_bytes());
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// Sidecar path of a weights file: `epoch_031.safetensors` → `epoch_031.json`.
pub fn meta_path(weights: &Path) -> PathBuf {
    weights.with_extension("json")
}

/// Checkpoint file name of a 1-based epoch.
pub fn epoch_file(dir: &Path, epoch: usize) -> PathBuf {
    dir.join(format!("epoch_{epoch:03}.safetensors"))
}

/// The weights of `model` as safetensors bytes.
pub fn weights_bytes(model: &Network, path: &Path) -> Result<Vec<u8>, CheckpointError> {
    let mut store = SafetensorsStore::from_bytes(None).metadata("format", "xca");
    model.save_into(&mut store).map_err(|e| CheckpointError::Read {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    store.get_bytes().map_err(|e| CheckpointError::Read {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Write `model`'s weights and the sidecar JSON, atomically.
pub fn save(model: &Network, path: &Path, meta: &CheckpointMeta) -> Result<(), CheckpointError> {
    let bytes = weights_bytes(model, path)?;
    write_atomic(path, &bytes)?;
    write_json_atomic(&meta_path(path), meta)?;
    Ok(())
}

/// Load weights into `model` (built from the matching config). Every tensor must be present
/// with the right shape; anything else is an error naming the tensors.
pub fn load(model: Network, path: &Path) -> Result<Network, CheckpointError> {
    let bytes = read_bounded(path, limits::CHECKPOINT)?;
    load_bytes(model, bytes, path)
}

/// The first float tensor of safetensors `bytes` holding a NaN or an infinity, if any.
/// Training never saves such weights (a non-finite loss stops it first), so one in a file
/// means the file was damaged; without this check it would load and score garbage.
fn non_finite_tensor(bytes: &[u8]) -> Option<String> {
    use safetensors::Dtype;
    let st = safetensors::SafeTensors::deserialize(bytes).ok()?;
    let mut tensors = st.tensors();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    tensors.into_iter().find_map(|(name, view)| {
        let data = view.data();
        let bad = match view.dtype() {
            Dtype::F32 => data
                .chunks_exact(4)
                .any(|c| !f32::from_le_bytes([c[0], c[1], c[2], c[3]]).is_finite()),
            Dtype::F64 => data
                .chunks_exact(8)
                .any(|c| !f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]).is_finite()),
            _ => false,
        };
        bad.then_some(name)
    })
}

/// [`load`] from bytes already in memory.
pub fn load_bytes(mut model: Network, bytes: Vec<u8>, path: &Path) -> Result<Network, CheckpointError> {
    if let Some(name) = non_finite_tensor(&bytes) {
        return Err(CheckpointError::Read {
            path: path.to_path_buf(),
            reason: format!("tensor {name} holds NaN or infinite values; the file is damaged"),
        });
    }
    let mut store = SafetensorsStore::from_bytes(Some(bytes))
        .allow_partial(true)
        .validate(false);
    let result = model.load_from(&mut store).map_err(|e| CheckpointError::Read {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let mut problems = Vec::new();
    if !result.missing.is_empty() {
        let names: Vec<&str> = result.missing.iter().map(|(p, _)| p.as_str()).take(8).collect();
        problems.push(format!(
            "{} tensors missing ({}{})",
            result.missing.len(),
            names.join(", "),
            if result.missing.len() > 8 { ", …" } else { "" }
        ));
    }
    if !result.errors.is_empty() {
        let errs: Vec<String> = result.errors.iter().take(4).map(|e| e.to_string()).collect();
        problems.push(format!(
            "{} tensors do not fit: {}",
            result.errors.len(),
            errs.join("; ")
        ));
    }
    if !result.unused.is_empty() {
        let names: Vec<&str> = result.unused.iter().map(String::as_str).take(8).collect();
        problems.push(format!(
            "{} tensors the model does not have ({})",
            result.unused.len(),
            names.join(", ")
        ));
    }
    if problems.is_empty() {
        Ok(model)
    } else {
        Err(CheckpointError::Mismatch {
            path: path.to_path_buf(),
            reason: problems.join("; "),
        })
    }
}

/// Read a checkpoint's sidecar JSON, if there is one (a regular file of at most
/// [`limits::SIDECAR`] bytes holding the fields of [`CheckpointMeta`]).
pub fn read_meta(weights: &Path) -> Option<CheckpointMeta> {
    let text = read_text_bounded(&meta_path(weights), limits::SIDECAR).ok()?;
    serde_json::from_str(&text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sidecar_that_is_no_regular_file_reads_as_none_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let weights = dir.path().join("epoch_001.safetensors");
        let meta = CheckpointMeta {
            epoch: 1,
            config_hash: "0123456789abcdef".into(),
            xca_version: "0.1.0".into(),
            weights: "ema".into(),
        };
        write_json_atomic(&meta_path(&weights), &meta).unwrap();
        assert_eq!(read_meta(&weights), Some(meta));
        std::fs::remove_file(meta_path(&weights)).unwrap();
        let fifo = std::ffi::CString::new(meta_path(&weights).to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        let started = std::time::Instant::now();
        assert_eq!(read_meta(&weights), None);
        std::fs::remove_file(meta_path(&weights)).unwrap();
        std::os::unix::fs::symlink("/dev/zero", meta_path(&weights)).unwrap();
        assert_eq!(read_meta(&weights), None);
        assert!(started.elapsed().as_secs() < 2, "{:?}", started.elapsed());
    }
}
