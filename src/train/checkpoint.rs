//! xca's checkpoint format: safetensors weights (readable from Python with `safetensors`)
//! under xca's module paths, plus a small JSON beside them (epoch, config hash, version).
//! Every file is written to a temporary name and renamed, so a crash never leaves a
//! half-written checkpoint.

use std::path::{Path, PathBuf};

use burn::store::{FloatCastAdapter, ModuleSnapshot, SafetensorsStore};
use burn::tensor::DType;
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

/// Whether every tensor of safetensors `bytes` can become float32 weights: floating point
/// (F32, or F64, F16 and BF16, which are converted on load) and finite. Returns the first
/// problem (tensors in name order), naming the tensor. Bytes that are not a safetensors file
/// pass: the reader reports those.
///
/// Training never saves NaN or infinite weights (a non-finite loss stops it first), so one in
/// a file means the file was damaged; without this check it would load and score garbage.
/// Integer and boolean tensors are no weights of this network, whatever their name.
fn check_tensors(bytes: &[u8]) -> Result<(), String> {
    use burn::tensor::{bf16, f16};
    use safetensors::Dtype;
    let Ok(st) = safetensors::SafeTensors::deserialize(bytes) else {
        return Ok(());
    };
    let mut tensors = st.tensors();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, view) in tensors {
        let data = view.data();
        let finite = match view.dtype() {
            Dtype::F32 => data
                .chunks_exact(4)
                .all(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]).is_finite()),
            // Converted to float32 on load: a finite value beyond its range would become
            // infinite.
            Dtype::F64 => data
                .chunks_exact(8)
                .all(|c| (f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32).is_finite()),
            Dtype::F16 => data
                .chunks_exact(2)
                .all(|c| f16::from_le_bytes([c[0], c[1]]).is_finite()),
            Dtype::BF16 => data
                .chunks_exact(2)
                .all(|c| bf16::from_le_bytes([c[0], c[1]]).is_finite()),
            other => {
                return Err(format!(
                    "tensor {name} holds {other:?} values; weights are floating point (F32, F64, F16 or BF16)"
                ));
            }
        };
        if !finite {
            return Err(format!(
                "tensor {name} holds NaN or infinite values (or values beyond float32's range); the file is damaged"
            ));
        }
    }
    Ok(())
}

/// [`load`] from bytes already in memory.
pub fn load_bytes(mut model: Network, bytes: Vec<u8>, path: &Path) -> Result<Network, CheckpointError> {
    check_tensors(&bytes).map_err(|reason| CheckpointError::Read {
        path: path.to_path_buf(),
        reason,
    })?;
    // Float64 and half-precision tensors become float32, the network's dtype (applied as
    // they are, they would make the first matmul panic on mixed dtypes).
    let mut store = SafetensorsStore::from_bytes(Some(bytes))
        .with_from_adapter(FloatCastAdapter::to(DType::F32))
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
    use burn::tensor::{bf16, f16};
    use safetensors::Dtype;
    use safetensors::tensor::TensorView;

    /// A safetensors file of one tensor `w` of dtype `dtype` holding `data`.
    fn one(dtype: Dtype, data: &[u8], n: usize) -> Vec<u8> {
        let view = TensorView::new(dtype, vec![n], data).unwrap();
        safetensors::serialize([("w", view)], None).unwrap()
    }

    #[test]
    fn float_tensors_of_any_width_pass_and_others_are_refused_naming_the_tensor() {
        let f32s: Vec<u8> = [1.0f32, -2.5].iter().flat_map(|v| v.to_le_bytes()).collect();
        let f64s: Vec<u8> = [1.0f64, 3.0e38].iter().flat_map(|v| v.to_le_bytes()).collect();
        let f16s: Vec<u8> = [f16::from_f32(1.0), f16::MAX]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let bf16s: Vec<u8> = [bf16::from_f32(1.0), bf16::MIN]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        for (dtype, data) in [
            (Dtype::F32, &f32s),
            (Dtype::F64, &f64s),
            (Dtype::F16, &f16s),
            (Dtype::BF16, &bf16s),
        ] {
            assert_eq!(check_tensors(&one(dtype, data, 2)), Ok(()), "{dtype:?}");
        }
        let damaged = "tensor w holds NaN or infinite values (or values beyond float32's range); the file is damaged";
        let nan32: Vec<u8> = [1.0f32, f32::NAN].iter().flat_map(|v| v.to_le_bytes()).collect();
        // Finite as float64, infinite as the float32 it would load as.
        let big64: Vec<u8> = [1.0f64, 1e300].iter().flat_map(|v| v.to_le_bytes()).collect();
        let inf16: Vec<u8> = [f16::ONE, f16::INFINITY].iter().flat_map(|v| v.to_le_bytes()).collect();
        let nan_bf16: Vec<u8> = [bf16::NAN, bf16::ONE].iter().flat_map(|v| v.to_le_bytes()).collect();
        for (dtype, data) in [
            (Dtype::F32, &nan32),
            (Dtype::F64, &big64),
            (Dtype::F16, &inf16),
            (Dtype::BF16, &nan_bf16),
        ] {
            assert_eq!(
                check_tensors(&one(dtype, data, 2)),
                Err(damaged.to_string()),
                "{dtype:?}"
            );
        }
        for (dtype, width) in [(Dtype::I32, 4), (Dtype::U8, 1), (Dtype::BOOL, 1), (Dtype::I64, 8)] {
            let e = check_tensors(&one(dtype, &vec![0u8; 2 * width], 2)).unwrap_err();
            assert_eq!(
                e,
                format!("tensor w holds {dtype:?} values; weights are floating point (F32, F64, F16 or BF16)")
            );
        }
        // Not a safetensors file: left to the reader, which names the problem.
        assert_eq!(check_tensors(b"garbage"), Ok(()));
    }

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
