//! `xca score`: score any detection file (ours, ActionFormer's, another tool's) against a
//! ground-truth file and print the paper's two tables.

use std::path::PathBuf;

use anyhow::Context;
use serde_json::json;
use xca::metrics::io::{PredictionFormat, read_ground_truth, read_predictions};
use xca::metrics::score::{Protocol, ScoreReport, score};

use super::InputError;

/// Which detections are scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProtocolArg {
    /// Every detection in the file (the standard ActivityNet protocol).
    Full,
    /// Only the top-1 detection per class per video, as the paper's evaluation did.
    Paper,
}

/// Score a detection file against ground truth (ActivityNet mAP at tIoU 0.3–0.7,
/// Recall@1x/5x, and the keyframe table P/R/F/AD/CI).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Ground-truth file: {"database": {video: {"subset", "duration", "fps", "annotations"}}}.
    #[arg(long, value_name = "GT.json")]
    pub gt: PathBuf,
    /// Detections: {"results": {video: [{"segment", "label" or "label_id", "score"}]}}
    /// (ActivityNet) or {"database": {video: [{"segment", "label_id", "scores"}]}} (ActionFormer).
    #[arg(long, value_name = "PRED.json")]
    pub pred: PathBuf,
    /// Subset of the ground truth to score against (case-insensitive).
    #[arg(long, default_value = "test")]
    pub split: String,
    /// Also write the numbers (fractions, AD/CI in frames) to this JSON file.
    #[arg(long, value_name = "OUT.json")]
    pub json: Option<PathBuf>,
    /// `full` scores every detection; `paper` keeps only the top-1 detection per class
    /// per video first, as the paper's evaluation did.
    #[arg(long, value_enum, default_value_t = ProtocolArg::Full)]
    pub protocol: ProtocolArg,
    /// Refuse (exit 2) a detection file with detections no correct detector writes: videos
    /// the ground truth does not have, class ids it does not have, segments that leave their
    /// video. Without it they are scored as they are, counted in a note and in the JSON.
    #[arg(long)]
    pub strict: bool,
}

/// The `--json` document (fractions in [0, 1], AD and CI in frames).
pub fn report_json(r: &ScoreReport) -> serde_json::Value {
    let d = &r.detection;
    let recall = |k: usize| -> Vec<f64> { d.recall.iter().map(|row| row[k]).collect() };
    let keyframes = match &r.keyframes {
        Some(k) => json!({
            "P": k.precision, "R": k.recall, "F": k.f1,
            "microP": k.micro_precision, "microR": k.micro_recall, "microF": k.micro_f1,
            "AD": k.ad, "CI_upper": k.ci_upper,
            "n_videos": k.n_videos, "n_fallback": k.n_fallback,
        }),
        None => serde_json::Value::Null,
    };
    json!({
        "split": r.split,
        "tious": d.tious,
        "mAP": d.map,
        "average_mAP": d.average_map,
        "recall1x": recall(0),
        "recall5x": recall(1),
        "keyframes": keyframes,
        "suspect": {
            "unknown_videos": r.suspect.unknown_videos,
            "unknown_labels": r.suspect.unknown_labels,
            "outside_video": r.suspect.outside_video,
        },
        "notes": r.notes,
    })
}

/// The two tables in the paper's layout, plus notes.
pub fn render(r: &ScoreReport, method: &str, format: PredictionFormat) -> String {
    let d = &r.detection;
    let mut s = String::new();
    let protocol = match r.protocol {
        Protocol::Full => "full (every detection in the file)",
        Protocol::Paper => "paper (top-1 detection per class per video)",
    };
    let format = match format {
        PredictionFormat::ActivityNet => "ActivityNet",
        PredictionFormat::ActionFormer => "ActionFormer",
    };
    s.push_str(&format!(
        "Detection — split {:?}: {} videos, {} ground-truth segments, {} classes; {} of {} detections scored ({format} layout)\n",
        r.split,
        r.n_videos,
        d.n_ground_truth,
        d.classes.len(),
        r.n_scored,
        r.n_detections
    ));
    s.push_str(&format!("Protocol: {protocol}\n\n"));
    let head: Vec<String> = d.tious.iter().map(|t| format!("{t:.1}")).collect();
    s.push_str(&format!("| Method | {} | Avg |\n", head.join(" | ")));
    s.push_str(&format!("|---|{}---|\n", "---|".repeat(d.tious.len())));
    let pct = |xs: &[f64]| {
        xs.iter()
            .map(|x| format!("{:.2}", 100.0 * x))
            .collect::<Vec<_>>()
            .join(" | ")
    };
    let mean = |xs: &[f64]| xs.iter().sum::<f64>() / xs.len().max(1) as f64;
    s.push_str(&format!(
        "| {method} mAP (%) | {} | {:.2} |\n",
        pct(&d.map),
        100.0 * d.average_map
    ));
    for (ki, k) in d.top_k.iter().enumerate() {
        let row: Vec<f64> = d.recall.iter().map(|r| r[ki]).collect();
        s.push_str(&format!(
            "| {method} Recall@{k}x (%) | {} | {:.2} |\n",
            pct(&row),
            100.0 * mean(&row)
        ));
    }
    s.push('\n');
    match &r.keyframes {
        Some(k) => {
            s.push_str(&format!(
                "Keyframes — {} videos, {} needed a fallback\n\n",
                k.n_videos, k.n_fallback
            ));
            s.push_str("| Method | P | R | F | AD | CI |\n|---|---|---|---|---|---|\n");
            s.push_str(&format!(
                "| {method} | {:.4} | {:.4} | {:.4} | {:.2} | 0–{:.2} |\n",
                k.precision, k.recall, k.f1, k.ad, k.ci_upper
            ));
            s.push_str(&format!(
                "Micro P / R / F (= frame accuracy): {:.4} / {:.4} / {:.4}; AD and CI in frames, CI one-sided 95% (t, {} df)\n",
                k.micro_precision,
                k.micro_recall,
                k.micro_f1,
                3 * k.n_videos - 1
            ));
        }
        None => {
            s.push_str("Keyframes — no video of the split has filling and washout annotations with fps and duration\n")
        }
    }
    for n in &r.notes {
        s.push_str(&format!("Note: {n}\n"));
    }
    s
}

/// Run `xca score`.
pub fn run(args: Args) -> anyhow::Result<()> {
    if let Some(out) = &args.json {
        xca::fsio::check_outputs(
            &[("--json", out)],
            &[("--gt file", &args.gt), ("--pred file", &args.pred)],
        )
        .map_err(InputError)?;
    }
    let gt = read_ground_truth(&args.gt).map_err(|e| InputError(e.to_string()))?;
    let preds = read_predictions(&args.pred, &gt).map_err(|e| InputError(e.to_string()))?;
    let protocol = match args.protocol {
        ProtocolArg::Full => Protocol::Full,
        ProtocolArg::Paper => Protocol::Paper,
    };
    if args.strict {
        let suspect = xca::metrics::score::Suspect::of(&gt, &preds.detections);
        if suspect.any() {
            return Err(InputError(format!(
                "{} (--strict): {}",
                args.pred.display(),
                suspect.lines().join("; ")
            ))
            .into());
        }
    }
    let report = score(&gt, &args.split, &preds.detections, protocol).map_err(|e| InputError(e.to_string()))?;
    let method = args
        .pred
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "predictions".into());
    print!("{}", render(&report, &method, preds.format));
    if let Some(out) = &args.json {
        xca::fsio::write_json_atomic(out, &report_json(&report))
            .with_context(|| format!("writing the scores to {}", out.display()))?;
        println!("Wrote {}", out.display());
    }
    Ok(())
}
