//! `xca synth`: write a synthetic dataset in the paper's layout (SPEC §2.1, §2.5).

use std::path::{Path, PathBuf};

use anyhow::Context;
use xca::synth::{self, Subset, SynthConfig, SynthError};

use super::InputError;

/// Generate synthetic XCA vessel maps: videos of a coronary tree that fills from the
/// catheter tip and washes out, with cardiac and respiratory motion and segmentation
/// noise, written as `<out>/annotations/vessel.json` and `<out>/image/<id>.npy`
/// (float32 [T, 4096], one row per 4 frames at 15 fps). The same seed always gives
/// byte-identical files.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Dataset folder to create; built in a temporary folder and renamed when complete.
    #[arg(long, default_value = "data/vessel")]
    pub out: PathBuf,
    /// Number of training videos.
    #[arg(long, default_value_t = SynthConfig::default().train)]
    pub train: usize,
    /// Number of validation videos.
    #[arg(long, default_value_t = SynthConfig::default().val)]
    pub val: usize,
    /// Number of test videos.
    #[arg(long, default_value_t = SynthConfig::default().test)]
    pub test: usize,
    /// Random seed; each video has its own stream, so adding videos keeps earlier ones.
    #[arg(long, default_value_t = synth::DEFAULT_SEED)]
    pub seed: u64,
    /// Replace an existing, non-empty --out folder.
    #[arg(long)]
    pub force: bool,
    /// Also draw a PNG with a strip of rows of one video and its ground-truth keyframes.
    #[arg(long, value_name = "FILE.png")]
    pub preview: Option<PathBuf>,
    /// Video to preview (default: the first training video, else the first video).
    #[arg(long, value_name = "ID", requires = "preview")]
    pub preview_video: Option<String>,
    /// Print the summary as JSON on stdout instead of a table.
    #[arg(long)]
    pub json: bool,
}

fn is_nonempty_dir(p: &Path) -> bool {
    if p.is_file() {
        return true;
    }
    std::fs::read_dir(p).map(|mut d| d.next().is_some()).unwrap_or(false)
}

fn input(e: SynthError) -> anyhow::Error {
    match e {
        SynthError::Config(_) | SynthError::UnknownVideo { .. } => anyhow::Error::new(InputError(e.to_string())),
        other => anyhow::Error::new(other),
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let cfg = SynthConfig {
        train: args.train,
        val: args.val,
        test: args.test,
        seed: args.seed,
        ..SynthConfig::default()
    };
    cfg.validate().map_err(input)?;
    if !args.force && is_nonempty_dir(&args.out) {
        return Err(InputError(format!(
            "{} already exists and is not empty; pass --force to replace it",
            args.out.display()
        ))
        .into());
    }
    // Resolve the preview video before spending time on the dataset.
    let plan = cfg.plan();
    let preview_id = args.preview_video.clone().or_else(|| plan.first().map(|p| p.2.clone()));
    if let (Some(_), Some(id)) = (&args.preview, &preview_id)
        && !plan.iter().any(|p| &p.2 == id)
    {
        let example = plan.first().map(|p| p.2.clone()).unwrap_or_default();
        return Err(input(SynthError::UnknownVideo {
            id: id.clone(),
            example,
        }));
    }

    // Refuse a dataset that cannot fit on the disk before writing any of it.
    let need = cfg.estimated_bytes();
    if let Some(free) = xca::fsio::available_disk(&args.out)
        && need > free
    {
        let gb = |b: u64| b as f64 / (1u64 << 30) as f64;
        return Err(InputError(format!(
            "{} videos need up to {:.1} GB but {} has {:.1} GB free",
            cfg.train + cfg.val + cfg.test,
            gb(need),
            args.out.display(),
            gb(free)
        ))
        .into());
    }
    let started = std::time::Instant::now();
    let summary = synth::generate(&cfg, &args.out, !args.json)
        .map_err(input)
        .with_context(|| format!("cannot write the dataset to {}", args.out.display()))?;
    let elapsed = started.elapsed().as_secs_f64();

    if let (Some(path), Some(id)) = (&args.preview, &preview_id) {
        let video = cfg.video_by_id(id).map_err(input)?;
        synth::write_preview(&video, path).map_err(input)?;
        if !args.json {
            eprintln!("preview of {id} written to {}", path.display());
        }
    }

    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!("split       videos  rows (min–max)");
        for (subset, n) in Subset::ALL.into_iter().zip([cfg.train, cfg.val, cfg.test]) {
            let name = subset.name();
            let rows: Vec<usize> = summary
                .videos
                .iter()
                .filter(|v| v.subset == subset)
                .map(|v| v.rows)
                .collect();
            let range = match (rows.iter().min(), rows.iter().max()) {
                (Some(a), Some(b)) => format!("{a}–{b}"),
                _ => "-".into(),
            };
            println!("{name:<11} {n:>6}  {range}");
        }
        println!(
            "wrote {} videos ({}+{}+{}, T {}–{} rows, {} rows in all, seed {}) to {} in {:.1} s",
            summary.videos.len(),
            cfg.train,
            cfg.val,
            cfg.test,
            summary.min_rows,
            summary.max_rows,
            summary.total_rows,
            cfg.seed,
            args.out.display(),
            elapsed
        );
    }
    Ok(())
}
