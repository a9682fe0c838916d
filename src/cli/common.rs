//! Pieces several subcommands share: loading data with a progress bar, picking the device,
//! locating run folders and loading checkpoints (xca's own or the original's `.pth.tar`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use burn::tensor::Device;
use indicatif::{ProgressBar, ProgressStyle};
use xca::config::Config;
use xca::config::adapt;
use xca::dataset::{Annotations, SplitData, load_split};
use xca::device::DeviceChoice;
use xca::model::Network;
use xca::train::checkpoint;

use super::InputError;

/// The options of the commands that run a trained model (eval, select, predict).
#[derive(Debug, Clone, clap::Args)]
pub struct InferArgs {
    /// cpu (flex), ndarray, wgpu, or cuda / cuda:N (the GPU back-ends need their cargo features).
    #[arg(long, default_value = "cpu")]
    pub device: DeviceChoice,
    /// Seed of the inference-time random-patch centres (default: init_rand_seed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// No progress bars.
    #[arg(long, short)]
    pub quiet: bool,
}

/// A progress bar over `len` items (hidden when quiet).
pub fn bar(len: usize, what: &str, quiet: bool) -> ProgressBar {
    let b = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(len as u64)
    };
    b.set_style(
        ProgressStyle::with_template(&format!(
            "{what} {{bar:30}} {{pos}}/{{len}} [{{elapsed_precise}}<{{eta_precise}}] {{msg}}"
        ))
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    b
}

/// The device a `--device` choice names (an input error if not compiled in).
pub fn device(choice: DeviceChoice) -> Result<Device> {
    choice.device().map_err(|e| InputError(e.to_string()).into())
}

/// Load the features and annotations of `splits` (input error on bad data).
pub fn load_data(cfg: &Config, ann: &Annotations, splits: &[String], quiet: bool) -> Result<SplitData> {
    let n = ann.split(splits).len();
    let b = bar(n, &format!("loading {}", splits.join("+")), quiet);
    let data = load_split(cfg, ann, splits, |id| {
        b.set_message(id.to_string());
        b.inc(1);
    })
    .map_err(|e| InputError(e.to_string()))?;
    b.finish_and_clear();
    Ok(data)
}

/// Read the annotation file a config points at (input error, with a hint for the demo data).
pub fn annotations(cfg: &Config) -> Result<Annotations> {
    Annotations::load(&cfg.dataset.json_file).map_err(|e| {
        let hint = if !cfg.dataset.json_file.exists() {
            " (run `xca synth` to make the synthetic dataset)"
        } else {
            ""
        };
        InputError(format!("{e}{hint}")).into()
    })
}

/// A run name (`--output`): it becomes part of one folder's name, so it must be a single
/// path component — no `/`, `\\`, `..` or control characters — lest the run land outside
/// `output_folder`.
pub fn run_name(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("a run name cannot be empty".into());
    }
    if s.len() > 200 {
        return Err(format!("a run name is at most 200 bytes, got {}", s.len()));
    }
    if s == "." || s == ".." || s.contains(['/', '\\']) || s.chars().any(char::is_control) {
        return Err(format!(
            "{} is not a plain name (no '/', '\\', '..' or control characters): the run folder is <output_folder>/<config stem>_<NAME>",
            xca::text::quoted(s)
        ));
    }
    Ok(s.to_string())
}

/// `<output_folder>/<config stem>_<output>`.
pub fn run_dir(cfg: &Config, config_path: &Path, output: &str) -> PathBuf {
    let stem = config_path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "run".into());
    cfg.output_folder.join(format!("{stem}_{output}"))
}

/// Whether a path is one of the original's PyTorch checkpoints.
pub fn is_torch_checkpoint(path: &Path) -> bool {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    name.ends_with(".pth.tar") || name.ends_with(".pth") || name.ends_with(".pt")
}

/// What a checkpoint file holds.
#[derive(Debug)]
pub enum CheckpointKind {
    /// xca's own format (safetensors written by `xca train`/`xca import`), with its bytes.
    Xca(Vec<u8>),
    /// Tensors under the original's PyTorch names: a `.pth.tar`/`.pth`/`.pt` archive, or a
    /// `.safetensors` file not written by xca.
    Torch,
}

/// Tell xca checkpoints from the original's (by extension, and for `.safetensors` by the
/// `format: xca` header entry that xca writes). Input error if the file is missing or not
/// a readable safetensors file.
pub fn checkpoint_kind(ckpt: &Path) -> Result<CheckpointKind> {
    if !ckpt.exists() {
        return Err(InputError(format!("checkpoint {} does not exist", ckpt.display())).into());
    }
    if is_torch_checkpoint(ckpt) {
        return Ok(CheckpointKind::Torch);
    }
    // A regular file no larger than a checkpoint can be: a path to a device, a FIFO or a
    // folder is refused at once, naming it.
    let bytes = xca::fsio::read_bounded(ckpt, xca::fsio::limits::CHECKPOINT).map_err(|e| InputError(e.to_string()))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| {
        InputError(format!(
            "checkpoint {} is neither a safetensors file nor a PyTorch archive (.pth.tar): {e}",
            ckpt.display()
        ))
    })?;
    let is_xca = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get("format"))
        .is_some_and(|f| f == "xca");
    Ok(if is_xca {
        CheckpointKind::Xca(bytes)
    } else {
        CheckpointKind::Torch
    })
}

/// Fill `net` from one of the original's checkpoints (see
/// [`xca::model::import_torch_checkpoint`]): an input error naming the file and every
/// missing, mismatched or unexpected tensor if it does not fit the config.
pub fn import_torch(net: Network, ckpt: &Path) -> Result<(Network, xca::model::torch::ImportReport)> {
    xca::model::torch::import_torch_checkpoint(net, ckpt).map_err(|e| match e {
        // A read error already names the file.
        xca::model::torch::WeightsError::File(e) => InputError(e.to_string()).into(),
        e => InputError(format!("checkpoint {} does not fit the config: {e}", ckpt.display())).into(),
    })
}

/// Build the network of `cfg` on `device` and fill it from `ckpt`: an xca checkpoint, or one
/// of the original's (`.pth.tar` with `state_dict_ema`, or PyTorch-named safetensors),
/// imported in memory.
pub fn load_model(cfg: &Config, ckpt: &Path, device: &Device) -> Result<Network> {
    let kind = checkpoint_kind(ckpt)?;
    let net = adapt::network_config(cfg)
        .init(device)
        .map_err(|e| InputError(e.to_string()))?;
    match kind {
        CheckpointKind::Torch => Ok(import_torch(net, ckpt)?.0),
        CheckpointKind::Xca(bytes) => {
            checkpoint::load_bytes(net, bytes, ckpt).map_err(|e| InputError(e.to_string()).into())
        }
    }
}

/// A checkpoint as the user named it: the path itself if it exists, else, for a name without
/// an extension such as `ckpt/vessel_reproduce/epoch_049`, the `.safetensors` file `xca train`
/// wrote under that name. A missing file stays as given, so the error names what was typed.
pub fn resolve_checkpoint(ckpt: &Path) -> PathBuf {
    if ckpt.exists() || ckpt.extension().is_some() {
        return ckpt.to_path_buf();
    }
    let with_ext = ckpt.with_extension("safetensors");
    if with_ext.is_file() {
        with_ext
    } else {
        ckpt.to_path_buf()
    }
}

/// Config of a run folder (written by `xca train`), for commands given only a checkpoint.
pub fn run_config_of(ckpt: &Path) -> Result<PathBuf> {
    let dir = ckpt.parent().unwrap_or(Path::new("."));
    let p = dir.join("config.yaml");
    if p.exists() {
        Ok(p)
    } else {
        Err(InputError(format!(
            "no config given and {} has no config.yaml (written by `xca train`): pass CONFIG CKPT",
            dir.display()
        ))
        .into())
    }
}

/// Write JSON to a file, or to stdout for `-`.
pub fn write_json_out(path: &Path, value: &serde_json::Value) -> Result<()> {
    if path == Path::new("-") {
        println!("{}", serde_json::to_string_pretty(value)?);
        Ok(())
    } else {
        xca::fsio::write_json_atomic(path, value).with_context(|| format!("writing {}", path.display()))
    }
}
