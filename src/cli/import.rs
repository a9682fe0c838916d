//! `xca import CKPT --config CONFIG [--out FILE]`: convert one of the original's PyTorch
//! checkpoints into xca's own format, with a summary of what was used and what was not.

use std::path::{Path, PathBuf};

use anyhow::Result;
use serde_json::json;
use xca::config::Config;
use xca::config::adapt;
use xca::device::DeviceChoice;
use xca::model::torch::ImportReport;
use xca::train::checkpoint::{self, CheckpointMeta};

use super::InputError;
use super::common::{self, CheckpointKind};

/// Convert the authors' trained checkpoint (`ckpt/…/epoch_049.pth.tar`, a `torch.save`
/// archive holding `state_dict_ema` with `module.`-prefixed keys) into an xca checkpoint.
/// Nothing in the file is executed: the pickle is parsed as data. Every tensor the config's
/// network needs must be present with the right shape; the tensors the original's forward
/// never reads (per-conv ConvLSTMs, `conv_2`, …) are counted and left out. `xca eval`,
/// `select` and `predict` also accept the `.pth.tar` directly.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The original's checkpoint: `epoch_NNN.pth.tar` (or `.pth`/`.pt`), or a `.safetensors`
    /// file with PyTorch key names.
    #[arg(value_name = "CKPT")]
    pub ckpt: PathBuf,
    /// The config the checkpoint was trained with (e.g. configs/vessel.yaml).
    #[arg(long, short)]
    pub config: PathBuf,
    /// Where to write the xca checkpoint (default: next to CKPT, `epoch_NNN.safetensors`,
    /// plus its `.json` sidecar).
    #[arg(long, short, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Also write the summary as JSON here (`-` for stdout).
    #[arg(long, value_name = "OUT.json")]
    pub json: Option<PathBuf>,
}

/// The name without `.pth.tar`, `.pth`, `.pt` or `.safetensors`.
fn stem(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let lower = name.to_lowercase();
    for ext in [".pth.tar", ".pth", ".pt", ".safetensors"] {
        if lower.ends_with(ext) && lower.len() > ext.len() {
            return name[..name.len() - ext.len()].to_string();
        }
    }
    name
}

/// Default output: `<dir>/<stem>.safetensors`, or `<stem>_xca.safetensors` when that is
/// the input itself (a PyTorch-named safetensors file).
pub fn default_out(ckpt: &Path) -> PathBuf {
    let dir = ckpt.parent().unwrap_or(Path::new("."));
    let s = stem(ckpt);
    let out = dir.join(format!("{s}.safetensors"));
    if out == ckpt {
        dir.join(format!("{s}_xca.safetensors"))
    } else {
        out
    }
}

/// The 1-based epoch in an `epoch_NNN…` file name (what the original's train.py writes
/// after epoch NNN), else 0.
pub fn epoch_of(ckpt: &Path) -> usize {
    let s = stem(ckpt);
    s.strip_prefix("epoch_").and_then(|d| d.parse().ok()).unwrap_or(0)
}

fn summary_json(ckpt: &Path, out: &Path, r: &ImportReport) -> serde_json::Value {
    json!({
        "checkpoint": ckpt.display().to_string(),
        "out": out.display().to_string(),
        "top_level_key": r.top_level_key,
        "tensors_in_file": r.total,
        "loaded": r.used.len(),
        "unused": r.unused.iter().map(|g| json!({"group": g.label, "count": g.keys.len(), "keys": g.keys})).collect::<Vec<_>>(),
    })
}

pub fn run(args: Args) -> Result<()> {
    let out = args.out.clone().unwrap_or_else(|| default_out(&args.ckpt));
    let sidecar = checkpoint::meta_path(&out);
    let mut outputs: Vec<(&str, &Path)> = vec![("--out", &out), ("its metadata file", &sidecar)];
    if let Some(j) = &args.json {
        outputs.push(("--json", j));
    }
    xca::fsio::check_outputs(&outputs, &[("checkpoint", &args.ckpt), ("--config", &args.config)])
        .map_err(InputError)?;
    let cfg = Config::load(&args.config)
        .map_err(|e| InputError(e.to_string()))?
        .config;
    if let CheckpointKind::Xca(_) = common::checkpoint_kind(&args.ckpt)? {
        return Err(InputError(format!(
            "{} is already an xca checkpoint: pass it to `xca eval` directly",
            args.ckpt.display()
        ))
        .into());
    }
    let device = common::device(DeviceChoice::Cpu)?;
    let net = adapt::network_config(&cfg)
        .init(&device)
        .map_err(|e| InputError(e.to_string()))?;
    let (net, report) = match xca::model::torch::import_torch_checkpoint(net, &args.ckpt) {
        Ok(ok) => ok,
        Err(e) => {
            // The one-line error spells out the first 20 problems; list every one here.
            let all: Vec<String> = match &e {
                xca::model::torch::WeightsError::Mismatch { problems } => {
                    problems.iter().map(|p| p.to_string()).collect()
                }
                xca::model::torch::WeightsError::Unexpected { keys } => keys.clone(),
                xca::model::torch::WeightsError::File(_) => Vec::new(),
            };
            if all.len() > 1 {
                eprintln!("{}: {} problem(s):", args.ckpt.display(), all.len());
                for p in &all {
                    eprintln!("  {p}");
                }
            }
            return Err(match e {
                xca::model::torch::WeightsError::File(e) => InputError(e.to_string()),
                e => InputError(format!(
                    "checkpoint {} does not fit {}: {e}",
                    args.ckpt.display(),
                    args.config.display()
                )),
            }
            .into());
        }
    };
    let meta = CheckpointMeta {
        epoch: epoch_of(&args.ckpt),
        config_hash: checkpoint::config_hash(&cfg),
        xca_version: env!("CARGO_PKG_VERSION").to_string(),
        weights: "ema".to_string(),
    };
    checkpoint::save(&net, &out, &meta)?;

    // With `--json -` stdout carries the JSON alone; the readable summary goes to stderr.
    let to_stderr = args.json.as_deref() == Some(Path::new("-"));
    let say = |line: String| {
        if to_stderr {
            eprintln!("{line}")
        } else {
            println!("{line}")
        }
    };
    let key = report
        .top_level_key
        .as_deref()
        .map(|k| format!(" (under '{k}')"))
        .unwrap_or_default();
    say(format!(
        "imported {}{key}: {} tensors in the file",
        args.ckpt.display(),
        report.total
    ));
    say(format!("  loaded into the network: {}", report.used.len()));
    let ignored: usize = report.unused.iter().map(|g| g.keys.len()).sum();
    say(format!("  ignored as unused by the original's forward: {ignored}"));
    for g in &report.unused {
        say(format!("    {:>4}  {}", g.keys.len(), g.label));
    }
    say(format!(
        "wrote {} (epoch {}, config hash {})",
        out.display(),
        meta.epoch,
        meta.config_hash
    ));
    if let Some(path) = &args.json {
        common::write_json_out(path, &summary_json(&args.ckpt, &out, &report))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_name_and_epoch_follow_the_input_name() {
        let p = Path::new("ckpt/vessel_SpTeAttenRPCon_reproduce/epoch_049.pth.tar");
        assert_eq!(
            default_out(p),
            Path::new("ckpt/vessel_SpTeAttenRPCon_reproduce/epoch_049.safetensors")
        );
        assert_eq!(epoch_of(p), 49);
        assert_eq!(default_out(Path::new("w/model.PTH")), Path::new("w/model.safetensors"));
        assert_eq!(epoch_of(Path::new("w/model.pth")), 0);
        assert_eq!(
            default_out(Path::new("epoch_007.safetensors")),
            Path::new("epoch_007_xca.safetensors")
        );
        assert_eq!(epoch_of(Path::new("epoch_007.safetensors")), 7);
    }
}
