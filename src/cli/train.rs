//! `xca train CONFIG [--output NAME] [--resume]`: train and write EMA checkpoints.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use xca::device::DeviceChoice;
use xca::report::{CurvePoint, ValPoint, plot_curves};
use xca::train::interrupt;
use xca::train::trainer::{LogLine, TrainError, TrainOptions, train};

use super::{InputError, common};

/// Train a model: writes `<output_folder>/<config stem>_<NAME>/` with the resolved config,
/// `log.jsonl`, `curves.png` (losses, learning rate, validation mAP; refreshed every epoch),
/// the EMA checkpoints of the last epochs (`epoch_031` … `epoch_050` for the
/// paper config) and a resumable state.
///
/// Ctrl-C finishes the current step, saves a resumable state and exits with status 130;
/// `--resume` then continues exactly where it stopped (a second Ctrl-C stops at once).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// YAML config, e.g. configs/vessel.yaml.
    pub config: PathBuf,
    /// Run name: the run folder is `<output_folder>/<config stem>_<NAME>`.
    #[arg(long, default_value = "reproduce", value_parser = super::common::run_name)]
    pub output: String,
    /// Continue an interrupted run from its last saved state (an epoch end, or the step
    /// where Ctrl-C stopped it).
    #[arg(long)]
    pub resume: bool,
    /// cpu (flex), ndarray, wgpu, or cuda / cuda:N (the GPU back-ends need their cargo features).
    #[arg(long, default_value = "cpu")]
    pub device: DeviceChoice,
    /// Train on several NVIDIA GPUs of this machine at once, e.g. `cuda:0,cuda:1` (replaces
    /// --device; needs the cuda feature). Each GPU takes a part of every batch on a copy of
    /// the model; the gradients are summed on the first, which holds the model, the
    /// optimiser and the EMA. Each GPU's BatchNorm uses its own part's statistics.
    #[arg(long, value_delimiter = ',', num_args = 1.., conflicts_with = "device", value_name = "cuda:I,cuda:J,…")]
    pub devices: Vec<DeviceChoice>,
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
    // `--devices` replaces `--device`: the first holds the model, the others share batches.
    let (device, parallel) = if args.devices.is_empty() {
        (common::device(args.device)?, Vec::new())
    } else {
        xca::device::check_parallel(&args.devices).map_err(|e| InputError(e.to_string()))?;
        if cfg.loader.batch_size < args.devices.len() {
            return Err(InputError(format!(
                "{}: loader.batch_size {} cannot be shared by {} devices: each needs at least one video per batch",
                args.config.display(),
                cfg.loader.batch_size,
                args.devices.len()
            ))
            .into());
        }
        let mut devices = args.devices.iter().map(|&d| common::device(d));
        let first = devices.next().unwrap_or_else(|| common::device(args.device))?;
        (first, devices.collect::<Result<Vec<_>>>()?)
    };
    let device_names = if args.devices.is_empty() {
        args.device.to_string()
    } else {
        args.devices
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    };
    let ann = common::annotations(&cfg)?;
    let data = common::load_data(&cfg, &ann, &cfg.train_split, args.quiet)?;
    let run_dir = common::run_dir(&cfg, &args.config, &args.output);
    // Config errors that only the data reveal, before anything is created on disk.
    if data.videos.len() < cfg.loader.batch_size {
        return Err(InputError(format!(
            "{}: loader.batch_size {} is larger than the training split ({} videos in {:?})",
            args.config.display(),
            cfg.loader.batch_size,
            data.videos.len(),
            cfg.train_split
        ))
        .into());
    }
    check_memory(&cfg, &args.config)?;
    // One trainer per run folder: a second `xca train` into it is refused while the first
    // lives; a lock left by a killed run is free. Everything below looks at the folder only
    // while holding the lock: checked before it, a run finishing in between would be missed.
    let lock = xca::fsio::RunLock::acquire(&run_dir).map_err(|e| InputError(e.to_string()))?;
    // A kill in the middle of swapping in a new state leaves the previous one aside.
    xca::fsio::recover_dir(&run_dir.join("state"))?;
    if !args.resume && run_dir.join("state").exists() {
        return Err(InputError(format!(
            "{} already holds a run: pass --resume to continue it, or another --output",
            run_dir.display()
        ))
        .into());
    }
    // Half-written files of a killed run (never mistaken for results, but they take space).
    xca::fsio::remove_stale_temps(&run_dir)?;
    interrupt::install()?;
    if args.resume {
        let sdir = run_dir.join("state");
        if sdir.join("state.json").exists() {
            eprintln!("xca: resuming from the state saved in {}", sdir.display());
        } else {
            eprintln!(
                "xca: {} holds no saved state (no epoch finished yet): starting from the beginning",
                run_dir.display()
            );
        }
    }
    let opts = TrainOptions {
        run_dir: run_dir.clone(),
        device,
        parallel,
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
        device_names,
        run_dir.display()
    );
    let iters_per_epoch = (data.videos.len() / cfg.loader.batch_size.max(1)).max(1);
    let result = train(&cfg, &data, &opts, |l| {
        // A failed picture must not stop a long training run: warn and go on.
        if let Err(e) = write_curves(&run_dir, iters_per_epoch) {
            eprintln!("xca: warning: curves.png not refreshed: {e:#}");
        }
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
    });
    let summary = match result {
        Err(e @ TrainError::Interrupted { .. }) => {
            let mut again = format!("xca train {} --output {} --resume", args.config.display(), args.output);
            if let Some(seed) = args.seed {
                again.push_str(&format!(" --seed {seed}"));
            }
            if !args.devices.is_empty() {
                again.push_str(&format!(" --devices {device_names}"));
            } else if !matches!(args.device, DeviceChoice::Cpu) {
                again.push_str(&format!(" --device {}", args.device));
            }
            eprintln!("xca: {e}; continue with: {again}");
            drop(lock);
            std::process::exit(interrupt::EXIT_INTERRUPTED);
        }
        // A damaged, foreign or unreadable resumable state is the user's data: exit 2.
        Err(e @ (TrainError::Resume { .. } | TrainError::Read(_))) => return Err(InputError(e.to_string()).into()),
        r => r?,
    };
    println!(
        "trained {} epochs; {} checkpoints in {}",
        summary.epochs_done,
        summary.checkpoints.len(),
        summary.run_dir.display()
    );
    Ok(())
}

/// Training curves of `log.jsonl` lines: the logged steps (at fractional epoch
/// `(step + 1)/iters_per_epoch`) or, when no step was logged, the epoch averages.
///
/// The contrastive loss only runs in some epochs: where it is absent it is NaN, so its
/// curve shows gaps instead of bridging them (no `con` curve at all when it never ran).
pub fn curve_points(log: &[LogLine], iters_per_epoch: usize) -> Vec<CurvePoint> {
    let has_con = log.iter().any(|l| l.con_loss.is_some());
    let point = |l: &LogLine, epoch: f64| {
        let mut losses = vec![("cls".to_string(), l.cls_loss), ("reg".to_string(), l.reg_loss)];
        if has_con {
            losses.push(("con".to_string(), l.con_loss.unwrap_or(f64::NAN)));
        }
        losses.push(("total".to_string(), l.total_loss));
        CurvePoint {
            step: l.step as u64,
            epoch,
            lr: l.lr,
            losses,
        }
    };
    let steps: Vec<CurvePoint> = log
        .iter()
        .filter(|l| l.kind == "step")
        .map(|l| point(l, (l.step + 1) as f64 / iters_per_epoch.max(1) as f64))
        .collect();
    if !steps.is_empty() {
        return steps;
    }
    log.iter()
        .filter(|l| l.kind == "epoch")
        .map(|l| point(l, l.epoch as f64))
        .collect()
}

/// Validation points of `select.json` (`xca select --json`), when the run folder has one:
/// `{"val": [{"epoch": n, "average_mAP": x}, …]}`. Anything else gives none.
pub fn val_points(select_json: &serde_json::Value) -> Vec<ValPoint> {
    let Some(rows) = select_json.get("val").and_then(|v| v.as_array()) else {
        return Vec::new();
    };
    rows.iter()
        .filter_map(|r| {
            Some(ValPoint {
                epoch: r.get("epoch")?.as_u64()? as usize,
                average_map: r.get("average_mAP")?.as_f64()?,
            })
        })
        .collect()
}

/// Refuse a config whose training step cannot fit in this machine's memory, before any
/// allocation. The estimate is ~1.1 KB per input value and crop row: the paper
/// configuration's measured 1.7 GB peak for 2 × 128 rows of 4096, weights and optimiser state
/// included, spread over the rows (an over-estimate for smaller models, which is the safe side).
fn check_memory(cfg: &xca::config::Config, path: &std::path::Path) -> Result<()> {
    const BYTES_PER_VALUE_AND_ROW: u64 = 1100;
    let rows = (cfg.loader.batch_size as u64).saturating_mul(cfg.dataset.max_seq_len as u64);
    let need = rows
        .saturating_mul(cfg.dataset.input_dim as u64)
        .saturating_mul(BYTES_PER_VALUE_AND_ROW);
    let Some(avail) = xca::memory::available_bytes() else {
        return Ok(());
    };
    if need > avail {
        let gb = |b: u64| b as f64 / (1u64 << 30) as f64;
        return Err(InputError(format!(
            "{}: dataset.max_seq_len {} × loader.batch_size {} needs about {:.1} GB for a training step; {:.1} GB of memory is available (lower max_seq_len or batch_size)",
            path.display(),
            cfg.dataset.max_seq_len,
            cfg.loader.batch_size,
            gb(need),
            gb(avail)
        ))
        .into());
    }
    Ok(())
}

/// Redraw `run_dir/curves.png` from `run_dir/log.jsonl` (and `select.json` when present).
pub fn write_curves(run_dir: &Path, iters_per_epoch: usize) -> Result<()> {
    let log_path = run_dir.join("log.jsonl");
    // Bounded reads: a log or select.json that is a FIFO or a device must not stall the run
    // after every epoch.
    let text = xca::fsio::read_text_bounded(&log_path, xca::fsio::limits::LOG)?;
    let log: Vec<LogLine> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing {}", log_path.display()))?;
    let val = xca::fsio::read_text_bounded(&run_dir.join("select.json"), xca::fsio::limits::SIDECAR)
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .map(|v| val_points(&v))
        .unwrap_or_default();
    plot_curves(&curve_points(&log, iters_per_epoch), &val, &run_dir.join("curves.png"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(kind: &str, epoch: usize, step: usize, con: Option<f64>) -> LogLine {
        LogLine {
            kind: kind.into(),
            epoch,
            step,
            lr: 0.1 * step as f64,
            cls_loss: 1.0,
            reg_loss: 2.0,
            con_loss: con,
            total_loss: 3.0 + con.unwrap_or(0.0),
            sec_per_iter: 0.5,
        }
    }

    #[test]
    fn curve_points_use_steps_else_epochs() {
        let log = vec![
            line("step", 1, 1, Some(0.5)),
            line("step", 1, 3, None),
            line("epoch", 1, 3, Some(0.5)),
        ];
        let pts = curve_points(&log, 4);
        assert_eq!(pts.len(), 2);
        assert_eq!((pts[0].epoch, pts[1].epoch), (0.5, 1.0));
        assert_eq!(
            pts[0].losses.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
            ["cls", "reg", "con", "total"]
        );
        assert!(pts[1].losses[2].1.is_nan(), "absent con loss leaves a gap");
        assert_eq!(pts[1].losses[3], ("total".to_string(), 3.0));
        assert!((pts[1].lr - 0.3).abs() < 1e-12);
        let pts = curve_points(&[line("epoch", 1, 3, None), line("epoch", 2, 7, None)], 4);
        assert_eq!(pts.iter().map(|p| p.epoch).collect::<Vec<_>>(), [1.0, 2.0]);
        assert_eq!(
            pts[0].losses.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
            ["cls", "reg", "total"]
        );
    }

    #[test]
    fn curves_refuse_a_log_or_select_json_that_is_no_regular_file_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path();
        let mut log = String::new();
        for step in 0..4 {
            log.push_str(&serde_json::to_string(&line("step", 1, step, None)).unwrap());
            log.push('\n');
        }
        std::fs::write(run.join("log.jsonl"), &log).unwrap();
        let fifo = |p: &Path| {
            let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
            assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        };
        let started = std::time::Instant::now();
        // A select.json that is a FIFO is skipped, not waited on.
        fifo(&run.join("select.json"));
        write_curves(run, 4).unwrap();
        assert!(run.join("curves.png").is_file());
        // A log that is one is an error naming it.
        std::fs::remove_file(run.join("log.jsonl")).unwrap();
        fifo(&run.join("log.jsonl"));
        let e = write_curves(run, 4).unwrap_err().to_string();
        assert!(e.contains("log.jsonl: it is a FIFO, not a regular file"), "{e}");
        assert!(started.elapsed().as_secs() < 5, "{:?}", started.elapsed());
    }

    #[test]
    fn val_points_from_select_json() {
        let v = serde_json::json!({"val": [{"epoch": 3, "average_mAP": 0.25, "AD": 1.0}, {"epoch": "x"}], "chosen_epoch": 3});
        let pts = val_points(&v);
        assert_eq!(pts.len(), 1);
        assert_eq!((pts[0].epoch, pts[0].average_map), (3, 0.25));
        assert!(val_points(&serde_json::json!({})).is_empty());
    }
}
