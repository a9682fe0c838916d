//! `xca check CONFIG`: validate the dataset a config points at before anyone trains on it
//! (the checks are [`xca::dataset::check`]; this prints them and sets the exit code).

use std::path::PathBuf;

use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};
use xca::dataset::check::check;

use super::InputError;

/// Validate the dataset a config points at: per-split counts, T and duration statistics,
/// every feature file's dtype and shape, NaN/Inf, segments outside the video, labels that
/// do not match num_classes, missing feature files, and row counts that disagree with
/// duration·fps/feat_stride by more than two rows. Lists every problem; exits 2 if any.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// YAML config, e.g. configs/vessel.yaml.
    pub config: PathBuf,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
}

pub fn run(args: Args) -> Result<()> {
    let cfg = super::config::load_config(&args.config)?;
    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(0)
    };
    bar.set_style(
        ProgressStyle::with_template("checking {bar:30} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let report = check(&cfg, |id, total| {
        bar.set_length(total as u64);
        bar.set_message(id.to_string());
        bar.inc(1);
    });
    bar.finish_and_clear();
    let report = report.map_err(|e| {
        let hint = if cfg.dataset.json_file.exists() {
            ""
        } else {
            " (run `xca synth` to make the synthetic dataset)"
        };
        InputError(format!("{e}{hint}"))
    })?;
    for line in report.summary_lines() {
        println!("{line}");
    }
    if report.problems.is_empty() {
        println!("ok: no problems found");
        Ok(())
    } else {
        for p in &report.problems {
            eprintln!("problem: {p}");
        }
        Err(InputError(format!(
            "{} problem(s) found in the dataset of {}",
            report.problems.len(),
            args.config.display()
        ))
        .into())
    }
}
