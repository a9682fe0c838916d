//! `xca train CONFIG [--output NAME] [--resume]`: train and write EMA checkpoints.

use std::path::PathBuf;

use anyhow::Result;
use xca::device::DeviceChoice;
use xca::train::trainer::{TrainOptions, train};

use super::{InputError, common};

/// Train a model: writes `<output_folder>/<config stem>_<NAME>/` with the resolved config,
/// `log.jsonl`, the EMA checkpoints of the last epochs (`epoch_031` … `epoch_050` for the
/// paper config) and a resumable state.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// YAML config, e.g. configs/vessel.yaml.
    pub config: PathBuf,
    /// Run name: the run folder is `<output_folder>/<config stem>_<NAME>`.
    #[arg(long, default_value = "reproduce")]
    pub output: String,
    /// Continue an interrupted run from its last completed epoch.
    #[arg(long)]
    pub resume: bool,
    /// cpu (flex), ndarray or wgpu.
    #[arg(long, default_value = "cpu")]
    pub device: DeviceChoice,
    /// Seed of every RNG (default: the config's init_rand_seed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Log the losses every N iterations.
    #[arg(long, default_value_t = 10)]
    pub log_every: usize,
    /// Stop after N epochs of this invocation (continue later with --resume).
    #[arg(long, value_name = "N")]
    pub epochs: Option<usize>,
    /// No progress bars.
    #[arg(long, short)]
    pub quiet: bool,
}

pub fn run(args: Args) -> Result<()> {
    let cfg = super::config::load_config(&args.config)?;
    let device = common::device(args.device)?;
    let ann = common::annotations(&cfg)?;
    let data = common::load_data(&cfg, &ann, &cfg.train_split, args.quiet)?;
    let run_dir = common::run_dir(&cfg, &args.config, &args.output);
    if !args.resume && run_dir.join("state").exists() {
        return Err(InputError(format!(
            "{} already holds a run: pass --resume to continue it, or another --output",
            run_dir.display()
        ))
        .into());
    }
    let opts = TrainOptions {
        run_dir: run_dir.clone(),
        device,
        seed: args.seed.unwrap_or(cfg.init_rand_seed),
        resume: args.resume,
        log_every: args.log_every,
        quiet: args.quiet,
        max_epochs_this_run: args.epochs,
    };
    eprintln!(
        "xca: training {} on {} videos ({} per batch, {} epochs) on {} → {}",
        args.config.display(),
        data.videos.len(),
        cfg.loader.batch_size,
        cfg.total_epochs(),
        args.device,
        run_dir.display()
    );
    let summary = train(&cfg, &data, &opts, |l| {
        if !args.quiet {
            eprintln!(
                "epoch {:>3}/{}: loss {:.4} (cls {:.4}, reg {:.4}{}) lr {:.2e}, {:.2} s/iter",
                l.epoch,
                cfg.total_epochs(),
                l.total_loss,
                l.cls_loss,
                l.reg_loss,
                l.con_loss.map(|c| format!(", con {c:.4}")).unwrap_or_default(),
                l.lr,
                l.sec_per_iter
            );
        }
    })?;
    println!(
        "trained {} epochs; {} checkpoints in {}",
        summary.epochs_done,
        summary.checkpoints.len(),
        summary.run_dir.display()
    );
    Ok(())
}
