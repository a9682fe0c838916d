//! `xca check CONFIG`: validate the dataset a config points at before anyone trains on it.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};
use xca::config::Config;
use xca::dataset::{self, Annotations, DatasetError, Features};

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

/// Rows may disagree with duration·fps/feat_stride by this much (clip rounding).
const ROW_TOLERANCE: f64 = 2.0;

#[derive(Default)]
struct SplitStats {
    videos: usize,
    rows: Vec<usize>,
    durations: Vec<f64>,
    segments: usize,
}

/// Everything `check` found, in a testable form.
pub struct Report {
    pub problems: Vec<String>,
    pub summary: Vec<String>,
}

pub fn check(cfg: &Config, quiet: bool) -> Result<Report, DatasetError> {
    let ann = Annotations::load(&cfg.dataset.json_file)?;
    let json = ann.path.display().to_string();
    let mut problems = Vec::new();
    let mut stats: BTreeMap<String, SplitStats> = BTreeMap::new();
    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(ann.videos.len() as u64)
    };
    bar.set_style(
        ProgressStyle::with_template("checking {bar:30} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let stride = cfg.dataset.feat_stride as f64;
    for v in &ann.videos {
        bar.set_message(v.id.clone());
        let st = stats.entry(v.subset.to_lowercase()).or_default();
        st.videos += 1;
        st.segments += v.segments.len();
        let fps = match dataset::video_fps(cfg, v, &ann.path) {
            Ok(f) => Some(f),
            Err(e) => {
                problems.push(e.to_string());
                None
            }
        };
        for (i, s) in v.segments.iter().enumerate() {
            if s.label_id >= cfg.dataset.num_classes {
                problems.push(format!(
                    "{json}: video '{}': annotation {i}: label_id {} ({}) is not below num_classes {}",
                    v.id,
                    s.label_id,
                    xca::text::quoted(&s.label),
                    cfg.dataset.num_classes
                ));
            }
            if s.start < 0.0 || v.duration.is_some_and(|d| s.end > d + 1e-6) {
                problems.push(format!(
                    "{json}: video '{}': annotation {i}: segment [{}, {}] lies outside the video [0, {}]",
                    v.id,
                    s.start,
                    s.end,
                    v.duration.map(|d| d.to_string()).unwrap_or_else(|| "?".into())
                ));
            }
        }
        let path = dataset::feature_path(cfg, &v.id);
        match Features::load(&path, cfg.dataset.input_dim) {
            Err(DatasetError::Bounded(xca::fsio::ReadError::Io { source, .. }))
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                problems.push(format!("{}: missing feature file for video '{}'", path.display(), v.id));
            }
            Err(e) => problems.push(e.to_string()),
            Ok(f) => {
                let bad = f.data.iter().filter(|x| !x.is_finite()).count();
                if bad > 0 {
                    let first = f.first_non_finite().unwrap_or(0) / f.dim.max(1);
                    problems.push(format!(
                        "{}: {bad} non-finite values (NaN/Inf), first in row {first}",
                        path.display()
                    ));
                }
                if f.rows == 0 {
                    problems.push(format!("{}: has no rows", path.display()));
                }
                st.rows.push(f.rows);
                if let (Some(d), Some(fps)) = (v.duration, fps) {
                    st.durations.push(d);
                    let expected = d * fps / stride;
                    if (f.rows as f64 - expected).abs() > ROW_TOLERANCE {
                        problems.push(format!(
                            "{}: {} rows but duration {d} s × {fps} fps / feat_stride {} = {expected:.1} rows \
                             (a row is a feature step, not a frame; check feat_stride)",
                            path.display(),
                            f.rows,
                            cfg.dataset.feat_stride
                        ));
                    }
                }
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    for split in cfg.train_split.iter().chain(&cfg.val_split).chain(&cfg.test_split) {
        if !stats.contains_key(&split.to_lowercase()) {
            problems.push(format!("{json}: the config's split '{split}' has no videos"));
        }
    }
    let mut summary = vec![format!("{json}: {} videos", ann.videos.len())];
    for (name, s) in &stats {
        let (rmin, rmax) = (
            s.rows.iter().min().copied().unwrap_or(0),
            s.rows.iter().max().copied().unwrap_or(0),
        );
        let mut rows = s.rows.clone();
        rows.sort_unstable();
        let median = rows.get(rows.len() / 2).copied().unwrap_or(0);
        let (dmin, dmax) = s
            .durations
            .iter()
            .fold((f64::INFINITY, 0.0f64), |(a, b), &d| (a.min(d), b.max(d)));
        summary.push(format!(
            "  {name:<12} {:>4} videos, {:>4} segments, T {rmin}–{rmax} (median {median}), duration {}",
            s.videos,
            s.segments,
            if s.durations.is_empty() {
                "n/a".to_string()
            } else {
                format!("{dmin:.1}–{dmax:.1} s")
            }
        ));
    }
    Ok(Report { problems, summary })
}

pub fn run(args: Args) -> Result<()> {
    let cfg = super::config::load_config(&args.config)?;
    let report = check(&cfg, args.quiet).map_err(|e| {
        let hint = if cfg.dataset.json_file.exists() {
            ""
        } else {
            " (run `xca synth` to make the synthetic dataset)"
        };
        InputError(format!("{e}{hint}"))
    })?;
    for line in &report.summary {
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
