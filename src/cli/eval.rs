//! `xca eval [CONFIG] CKPT`: the paper's two tables for one checkpoint.

use std::path::{Path, PathBuf};

use anyhow::Result;
use serde_json::json;
use xca::config::Config;
use xca::dataset::Class;
use xca::evaluate::{SplitScores, detect, detect_split, patch_centres, run_video, score_split};
use xca::infer::Candidates;
use xca::metrics::io::PredictionFormat;
use xca::report::{SummaryPlot, plot_summary};

use super::{InputError, common, score};

/// Evaluate a checkpoint: mAP at tIoU 0.3–0.7 (paper protocol first, then the full
/// ActivityNet protocol) and the keyframe table P/R/F/AD/CI. CKPT is an xca checkpoint
/// (`epoch_049.safetensors`, or just `epoch_049`) or one of the original's `.pth.tar` files;
/// with CKPT alone the config is read from the run folder `xca train` wrote.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// [CONFIG] CKPT.
    #[arg(num_args = 1..=2, required = true, value_name = "[CONFIG] CKPT")]
    pub paths: Vec<PathBuf>,
    /// Split to evaluate (default: the config's test_split).
    #[arg(long)]
    pub split: Option<String>,
    /// Write {"paper": <score JSON>, "full": <score JSON>} here (`-` for stdout).
    #[arg(long, value_name = "OUT.json")]
    pub json: Option<PathBuf>,
    /// Write the detections (ActivityNet results format) here.
    #[arg(long, value_name = "OUT.json")]
    pub detections: Option<PathBuf>,
    #[command(flatten)]
    pub run: common::InferArgs,
    /// Write one picture per video of the split (DIR/<video>.png: scores, detections,
    /// predicted and true keyframes, frames) and DIR/summary.png (deviation histogram, mAP per tIoU).
    #[arg(long, value_name = "DIR")]
    pub plots: Option<PathBuf>,
}

/// Split the 1–2 positional paths into (config, checkpoint).
pub fn config_and_ckpt(paths: &[PathBuf]) -> Result<(PathBuf, PathBuf)> {
    match paths {
        [ckpt] => Ok((common::run_config_of(ckpt)?, common::resolve_checkpoint(ckpt))),
        [config, ckpt] => Ok((config.clone(), common::resolve_checkpoint(ckpt))),
        _ => Err(InputError("expected [CONFIG] CKPT".into()).into()),
    }
}

/// Detections as an ActivityNet results document, labels named by [`Class`].
pub fn detections_json(dets: &[(String, Candidates)]) -> serde_json::Value {
    let mut results = serde_json::Map::new();
    for (vid, c) in dets {
        let list: Vec<serde_json::Value> = (0..c.len())
            .map(|i| {
                json!({
                    "segment": [c.segs[i][0], c.segs[i][1]],
                    "label": Class::name_of(c.labels[i]),
                    "label_id": c.labels[i],
                    "score": c.scores[i],
                })
            })
            .collect();
        results.insert(vid.clone(), serde_json::Value::Array(list));
    }
    json!({"version": "xca", "results": results})
}

/// Print both protocols' tables.
pub fn print_scores(s: &SplitScores, method: &str) {
    println!("== {method}: paper protocol (top-1 per class per video; the paper's Table 1) ==");
    print!("{}", score::render(&s.paper, method, PredictionFormat::ActivityNet));
    println!("\n== {method}: full ActivityNet protocol (every detection) ==");
    print!("{}", score::render(&s.full, method, PredictionFormat::ActivityNet));
}

/// Evaluate an already-built model on `split` of `cfg`.
pub fn evaluate(
    cfg: &Config,
    model: &xca::model::Network,
    split: &str,
    seed: u64,
    device: &burn::tensor::Device,
    quiet: bool,
) -> Result<(SplitScores, Vec<(String, Candidates)>)> {
    let (data, gt) = load_eval_data(cfg, split, quiet)?;
    evaluate_loaded(cfg, model, &data, &gt, split, seed, device, quiet)
}

/// The videos of `split` and the ground truth to score them against.
fn load_eval_data(
    cfg: &Config,
    split: &str,
    quiet: bool,
) -> Result<(xca::dataset::SplitData, xca::metrics::io::GroundTruth)> {
    let ann = common::annotations(cfg)?;
    let data = common::load_data(cfg, &ann, &[split.to_string()], quiet)?;
    // The scorer's view of the file just read: no second read, the same class ids.
    Ok((data, xca::metrics::io::GroundTruth::from(&ann)))
}

/// [`evaluate`] with the data already in memory (`select` loads it once).
#[allow(clippy::too_many_arguments)]
pub fn evaluate_loaded(
    cfg: &Config,
    model: &xca::model::Network,
    data: &xca::dataset::SplitData,
    gt: &xca::metrics::io::GroundTruth,
    split: &str,
    seed: u64,
    device: &burn::tensor::Device,
    quiet: bool,
) -> Result<(SplitScores, Vec<(String, Candidates)>)> {
    let b = common::bar(data.videos.len(), &format!("eval {split}"), quiet);
    let dets = detect_split(model, cfg, data, seed, device, |id| {
        b.set_message(id.to_string());
        b.inc(1);
    })?;
    b.finish_and_clear();
    let scores = score_split(gt, split, &dets)?;
    Ok((scores, dets))
}

pub fn run(args: Args) -> Result<()> {
    let (config_path, ckpt) = config_and_ckpt(&args.paths)?;
    let mut outputs: Vec<(&str, &Path)> = Vec::new();
    if let Some(p) = &args.json {
        outputs.push(("--json", p));
    }
    if let Some(p) = &args.detections {
        outputs.push(("--detections", p));
    }
    xca::fsio::check_outputs(&outputs, &[("checkpoint", &ckpt), ("config", &config_path)]).map_err(InputError)?;
    let cfg = super::config::load_config(&config_path)?;
    let device = common::device(args.run.device)?;
    let model = common::load_model(&cfg, &ckpt, &device)?;
    let split = args
        .split
        .clone()
        .or_else(|| cfg.test_split.first().cloned())
        .unwrap_or_else(|| "test".into());
    let seed = args.run.seed.unwrap_or(cfg.init_rand_seed);
    let method = ckpt_label(&ckpt);
    let (scores, dets) = match &args.plots {
        None => evaluate(&cfg, &model, &split, seed, &device, args.run.quiet)?,
        Some(dir) => evaluate_with_plots(&cfg, &model, &split, seed, &device, args.run.quiet, dir, &method)?,
    };
    print_scores(&scores, &method);
    if let Some(p) = &args.json {
        common::write_json_out(
            p,
            &json!({"paper": score::report_json(&scores.paper), "full": score::report_json(&scores.full)}),
        )?;
    }
    if let Some(p) = &args.detections {
        common::write_json_out(p, &detections_json(&dets))?;
    }
    Ok(())
}

/// [`evaluate`] that also draws one picture per video and `dir/summary.png`.
///
/// Same detections as [`evaluate`] (same patch centres, in split order), but each video's
/// raw outputs are kept long enough to plot its frame-wise scores. The pictures' keyframes
/// follow the keyframe table (setting 0, SPEC §6.4), so the summary's deviations are the
/// table's.
#[allow(clippy::too_many_arguments)]
pub fn evaluate_with_plots(
    cfg: &Config,
    model: &xca::model::Network,
    split: &str,
    seed: u64,
    device: &burn::tensor::Device,
    quiet: bool,
    dir: &Path,
    method: &str,
) -> Result<(SplitScores, Vec<(String, Candidates)>)> {
    use xca::infer::DecodeSetting;
    use xca::infer::keyframes::{frame_at, ground_truth_keyframes, keyframes_of};
    use xca::metrics::VideoKeyframes;

    let (data, gt) = load_eval_data(cfg, split, quiet)?;
    let (fill, wash) = (Class::Filling.id(), Class::Washout.id());
    let centres = patch_centres(cfg, seed, data.videos.len(), model.image_side());
    let b = common::bar(data.videos.len(), &format!("eval+plots {split}"), quiet);
    let mut dets = Vec::with_capacity(data.videos.len());
    let mut videos = Vec::new();
    // One picture per video: ids that make the same file name (`a b`, `a_b`, `summary`) get
    // ~2, ~3, … instead of overwriting each other.
    let stems = xca::text::unique_file_stems(data.videos.iter().map(|v| v.id.as_str()), &["summary"]);
    for ((v, centre), stem) in data.videos.iter().zip(centres).zip(&stems) {
        b.set_message(v.id.clone());
        let raw = run_video(model, cfg, &v.feats, centre, device, &v.id)?;
        let cands = detect(cfg, &raw, v.fps, Some(v.duration))?;
        let frames = frame_at(v.fps, v.duration).max(0) as usize;
        let (pred, fallback) = keyframes_of(&cands, fill, wash, v.fps, DecodeSetting::ApexMidpoint);
        let seg = |class| v.labels.iter().position(|&l| l == class).map(|i| v.segments_s[i]);
        let truth = match (seg(fill), seg(wash)) {
            (Some(f), Some(w)) => Some(ground_truth_keyframes(f, w, v.fps)),
            _ => None,
        };
        if let Some(truth) = truth {
            videos.push(VideoKeyframes {
                truth,
                pred,
                n_frames: frames,
                fallback,
            });
        }
        let png = dir.join(format!("{stem}.png"));
        super::predict::plot_one(cfg, &v.id, v.fps, frames, &v.feats, &raw, &cands, pred, truth, &png)?;
        dets.push((v.id.clone(), cands));
        b.inc(1);
    }
    b.finish_and_clear();
    let scores = score_split(&gt, split, &dets)?;
    let summary = SummaryPlot {
        title: format!("{method} on split {split} ({} videos)", data.videos.len()),
        tious: scores.paper.detection.tious.clone(),
        map_paper: scores.paper.detection.map.clone(),
        map_full: scores.full.detection.map.clone(),
        deviations: videos.iter().map(VideoKeyframes::deviations).collect(),
    };
    plot_summary(&summary, &dir.join("summary.png"))?;
    eprintln!(
        "xca: wrote {} video pictures and summary.png to {}",
        data.videos.len(),
        dir.display()
    );
    Ok((scores, dets))
}

/// A short name for a checkpoint in table rows: `vessel_reproduce/epoch_049`.
pub fn ckpt_label(ckpt: &Path) -> String {
    let file = ckpt
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let file = file
        .trim_end_matches(".safetensors")
        .trim_end_matches(".pth.tar")
        .to_string();
    match ckpt.parent().and_then(|p| p.file_name()) {
        Some(dir) => format!("{}/{file}", dir.to_string_lossy()),
        None => file,
    }
}
