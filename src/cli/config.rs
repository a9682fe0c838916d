//! `xca config CONFIG [--json]`: print the fully resolved configuration.

use std::path::PathBuf;

use anyhow::Result;
use xca::config::Config;

use super::InputError;

/// Print the fully resolved configuration (defaults merged, validated), with the YAML's
/// own section and key names, so you see exactly what will run.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// YAML config, e.g. configs/vessel.yaml.
    pub config: PathBuf,
    /// Print JSON instead of YAML.
    #[arg(long)]
    pub json: bool,
    /// Print the parameter count per block and in total instead (only parameters the
    /// forward pass uses).
    #[arg(long)]
    pub params: bool,
}

/// Load a config or fail with an input error (exit 2); notes go to stderr.
pub fn load_config(path: &std::path::Path) -> Result<Config> {
    let loaded = Config::load(path).map_err(|e| InputError(e.to_string()))?;
    for note in &loaded.notes {
        eprintln!("xca: {}: {note}", path.display());
    }
    Ok(loaded.config)
}

pub fn run(args: Args) -> Result<()> {
    let cfg = load_config(&args.config)?;
    if args.params {
        return print_params(&cfg, args.json);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&cfg.to_json())?);
    } else {
        print!("# resolved from {}\n{}", args.config.display(), cfg.to_yaml());
        println!(
            "# derived: levels {}, fpn strides {:?}, max_div_factor {}, image {}x{}, epochs {} (checkpoints {}..={})",
            cfg.num_levels(),
            cfg.fpn_strides(),
            cfg.max_div_factor(),
            cfg.image_side(),
            cfg.image_side(),
            cfg.total_epochs(),
            cfg.saved_epochs().start(),
            cfg.saved_epochs().end()
        );
    }
    Ok(())
}

/// `--params`: build the network on the CPU and count its parameters per block.
fn print_params(cfg: &Config, json: bool) -> Result<()> {
    let device = super::common::device(xca::device::DeviceChoice::Cpu)?;
    let net = xca::config::adapt::network_config(cfg)
        .init(&device)
        .map_err(|e| InputError(e.to_string()))?;
    let blocks = xca::model::param_counts(&net);
    let total: usize = blocks.iter().map(|(_, n)| n).sum();
    if json {
        let map: serde_json::Map<String, serde_json::Value> = blocks
            .iter()
            .map(|(k, n)| (k.clone(), serde_json::Value::from(*n)))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"total": total, "blocks": map}))?
        );
    } else {
        for (k, n) in &blocks {
            println!("{k:<28} {n:>12}");
        }
        println!("{:<28} {total:>12}", "total");
    }
    Ok(())
}
