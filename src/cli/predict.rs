//! `xca predict CKPT [--config CONFIG] FEATURES.npy…`: keyframes and detections of
//! videos without annotations, as a table, JSON and per-video pictures. The keyframes
//! are [`xca::infer::keyframes::predict_in_video`]'s.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::json;
use xca::config::Config;
use xca::dataset::Class;
use xca::dataset::Features;
use xca::evaluate::{VideoOutput, detect, patch_centres, row_scores, run_video};
use xca::infer::keyframes::predict_in_video;
use xca::infer::{Candidates, Fallback, Keyframes};
use xca::report::{VideoPlot, plot_video};

use super::{InputError, common};

/// fps used when neither `--fps` nor the config's `dataset.default_fps` gives one.
pub const FALLBACK_FPS: f64 = 15.0;

/// Find the start, apex and end keyframes (and the filling/washout detections) of one or
/// more feature sequences. Each FEATURES.npy is float32 (or float64) `[T, input_dim]` or
/// `[T, side, side]`, of any length T. Without annotations a sequence lasts
/// `T·feat_stride/fps` seconds (SPEC §2.1); keyframes are frame indices `⌊fps·t⌋`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Checkpoint: an xca `epoch_NNN.safetensors` (the extension may be left off) or one of
    /// the original's `.pth.tar` files.
    #[arg(value_name = "CKPT")]
    pub checkpoint: PathBuf,
    /// Feature files, one video each.
    #[arg(required = true, value_name = "FEATURES.npy")]
    pub inputs: Vec<PathBuf>,
    /// YAML config of the model (default: config.yaml beside CKPT, written by `xca train`).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Frames per second (default: the config's dataset.default_fps, else 15).
    #[arg(long)]
    pub fps: Option<f64>,
    /// Write one JSON object per input (a list) here; `-` prints it to stdout (the table then goes to stderr).
    #[arg(long, value_name = "OUT.json")]
    pub json: Option<PathBuf>,
    /// Write one picture per input, DIR/<input stem>.png (scores, detections, keyframes, frames).
    #[arg(long, value_name = "DIR")]
    pub plot: Option<PathBuf>,
    /// Detections listed per input in the table.
    #[arg(long, default_value_t = 5)]
    pub top: usize,
    #[command(flatten)]
    pub run: common::InferArgs,
}

/// What predict found for one input.
#[derive(Debug, Clone)]
pub struct Prediction {
    /// The feature file.
    pub input: PathBuf,
    /// Rows in the file (T, before `downsample_rate`).
    pub rows: usize,
    /// Frames in the video, `⌊duration·fps⌋`.
    pub frames: usize,
    /// Duration in seconds, `rows·feat_stride·downsample_rate/fps` after downsampling.
    pub duration: f64,
    /// Start, apex and end frame, in `[0, frames)` and in order.
    pub keyframes: Keyframes,
    /// Whether a filling or washout segment was missing (SPEC §6.4 fallback).
    pub fallback: Fallback,
    /// Whether the SPEC §6.4 frames had to be clamped into the video or put in order.
    pub adjusted: bool,
    /// Scores of the top filling and top washout segments (the keyframes' confidence).
    pub confidence: [Option<f32>; 2],
    /// Detections in seconds, best first.
    pub detections: Candidates,
}

/// Class name of a label id (`class <k>` beyond the paper's classes).
pub fn class_name(k: usize) -> String {
    Class::name_of(k)
}

/// Load one feature file as the model's input (downsampled, finite, non-empty); errors
/// name the file and are input errors.
pub fn load_features(cfg: &Config, path: &Path) -> Result<(usize, Features)> {
    let feats = Features::load(path, cfg.dataset.input_dim).map_err(|e| InputError(e.to_string()))?;
    let rows = feats.rows;
    if rows == 0 {
        return Err(InputError(format!("{}: has no rows (T = 0)", path.display())).into());
    }
    if let Some(bad) = feats.first_non_finite() {
        return Err(InputError(format!(
            "{}: row {} holds a non-finite value (NaN or Inf)",
            path.display(),
            bad / feats.dim
        ))
        .into());
    }
    Ok((rows, feats.downsample(cfg.dataset.downsample_rate)))
}

/// The picture of one video (see [`VideoPlot`]) from the model's raw outputs and detections.
#[allow(clippy::too_many_arguments)]
pub fn plot_one(
    cfg: &Config,
    title: &str,
    fps: f64,
    frames: usize,
    feats: &Features,
    out: &VideoOutput,
    detections: &Candidates,
    predicted: Keyframes,
    truth: Option<Keyframes>,
    path: &Path,
) -> Result<()> {
    let classes = cfg.dataset.num_classes;
    let scores = row_scores(out, feats.rows, classes);
    let side = (feats.dim as f64).sqrt().round() as usize;
    let images = (side * side == feats.dim).then_some((feats.data.as_slice(), feats.rows, side));
    let plot = VideoPlot {
        title,
        fps,
        frames,
        frames_per_row: (cfg.dataset.feat_stride * cfg.dataset.downsample_rate) as f64,
        row_offset: 0.5 * cfg.dataset.num_frames as f64,
        class_scores: scores
            .into_iter()
            .enumerate()
            .map(|(k, s)| (class_name(k), s))
            .collect(),
        detections: (0..detections.len())
            .map(|i| {
                let s = detections.segs[i];
                (
                    class_name(detections.labels[i]),
                    [s[0] as f64, s[1] as f64],
                    detections.scores[i],
                )
            })
            .collect(),
        predicted: [predicted.start, predicted.apex, predicted.end],
        truth: truth.map(|t| [t.start, t.apex, t.end]),
        images,
    };
    plot_video(&plot, path)?;
    Ok(())
}

/// The JSON object of one prediction (the documented keys).
pub fn prediction_json(p: &Prediction, fps: f64, config: &Path, ckpt: &Path) -> serde_json::Value {
    let k = &p.keyframes;
    let d = &p.detections;
    let dets: Vec<serde_json::Value> = (0..d.len())
        .map(|i| {
            json!({
                "segment": [d.segs[i][0], d.segs[i][1]],
                "label_id": d.labels[i],
                "label": class_name(d.labels[i]),
                "score": d.scores[i],
            })
        })
        .collect();
    json!({
        // Paths as text (lossy): a non-UTF-8 path must not stop the output (`json!` panics on
        // a PathBuf it cannot turn into a string).
        "input": p.input.to_string_lossy(),
        "rows": p.rows,
        "keyframes": {
            "start_frame": k.start,
            "apex_frame": k.apex,
            "end_frame": k.end,
            "start_s": k.start as f64 / fps,
            "apex_s": k.apex as f64 / fps,
            "end_s": k.end as f64 / fps,
            "fallback": p.fallback.used(),
        },
        "detections": dets,
        "config": config.to_string_lossy(),
        "checkpoint": ckpt.to_string_lossy(),
    })
}

/// The readable table of one prediction.
fn render(p: &Prediction, fps: f64, top: usize) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "== {}: {} rows, {} frames ({:.2} s at {fps} fps) ==\n",
        p.input.display(),
        p.rows,
        p.frames,
        p.duration
    ));
    let conf = |c: Option<f32>| c.map(|v| format!("{v:.3}")).unwrap_or_else(|| "none".into());
    s.push_str("| keyframe | frame | time (s) |\n|---|---|---|\n");
    for (name, f) in [
        ("start", p.keyframes.start),
        ("apex", p.keyframes.apex),
        ("end", p.keyframes.end),
    ] {
        s.push_str(&format!("| {name} | {f} | {:.2} |\n", f as f64 / fps));
    }
    s.push_str(&format!(
        "confidence: top filling segment {}, top washout segment {}\n",
        conf(p.confidence[0]),
        conf(p.confidence[1])
    ));
    match p.fallback {
        Fallback::None => {}
        Fallback::NoFilling => s.push_str("note: no filling segment found: start = apex = washout start\n"),
        Fallback::NoWashout => s.push_str("note: no washout segment found: apex = end = filling end\n"),
        Fallback::Neither => s.push_str("note: no filling and no washout segment found: keyframes are 0\n"),
    }
    if p.adjusted {
        s.push_str("note: keyframes clamped into the video and put in order (the top segments disagree)\n");
    }
    let d = &p.detections;
    let n = d.len().min(top);
    s.push_str(&format!("top {n} of {} detections:\n", d.len()));
    if n > 0 {
        s.push_str("| # | label | start (s) | end (s) | score |\n|---|---|---|---|---|\n");
        for i in 0..n {
            s.push_str(&format!(
                "| {} | {} | {:.2} | {:.2} | {:.4} |\n",
                i + 1,
                class_name(d.labels[i]),
                d.segs[i][0],
                d.segs[i][1],
                d.scores[i]
            ));
        }
    }
    s
}

pub fn run(mut args: Args) -> Result<()> {
    args.checkpoint = common::resolve_checkpoint(&args.checkpoint);
    let config_path = match &args.config {
        Some(c) => c.clone(),
        None => common::run_config_of(&args.checkpoint)?,
    };
    let cfg = super::config::load_config(&config_path)?;
    let (fps, fps_source) = match (args.fps, cfg.dataset.default_fps) {
        (Some(f), _) => (f, "--fps"),
        (None, Some(f)) => (f, "config dataset.default_fps"),
        (None, None) => (FALLBACK_FPS, "default"),
    };
    if !(fps.is_finite() && fps > 0.0) {
        return Err(InputError(format!("fps must be positive, got {fps} ({fps_source})")).into());
    }
    // No output may replace an input (`--json` naming the checkpoint or a .npy).
    let mut ins: Vec<(&str, &Path)> = vec![("checkpoint", &args.checkpoint), ("config", &config_path)];
    ins.extend(args.inputs.iter().map(|p| ("input", p.as_path())));
    if let Some(j) = &args.json {
        xca::fsio::check_outputs(&[("--json", j)], &ins).map_err(InputError)?;
    }
    // One picture per input, named after its file; equal names get ~2, ~3, …
    let names: Vec<String> = args
        .inputs
        .iter()
        .map(|p| {
            p.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
        .collect();
    let stems = xca::text::unique_file_stems(names.iter().map(String::as_str), &[]);
    if let Some(dir) = &args.plot {
        for stem in &stems {
            let png = dir.join(format!("{stem}.png"));
            xca::fsio::check_outputs(&[("--plot picture", &png)], &ins).map_err(InputError)?;
        }
    }
    // Read every input before the model: a bad file fails fast, naming the file.
    let mut inputs = Vec::with_capacity(args.inputs.len());
    for path in &args.inputs {
        inputs.push(load_features(&cfg, path)?);
    }
    let device = common::device(args.run.device)?;
    let model = common::load_model(&cfg, &args.checkpoint, &device)?;
    let seed = args.run.seed.unwrap_or(cfg.init_rand_seed);
    let centres = patch_centres(&cfg, seed, inputs.len(), model.image_side());
    let (fill, wash) = (Class::Filling.id(), Class::Washout.id());
    // With `--json -` stdout holds only the JSON; the table goes to stderr.
    let json_to_stdout = args.json.as_deref() == Some(Path::new("-"));
    let say = |s: &str| if json_to_stdout { eprint!("{s}") } else { print!("{s}") };
    say(&format!(
        "xca predict: {} with {}; fps {fps} ({fps_source})\n",
        args.checkpoint.display(),
        config_path.display()
    ));

    let bar = common::bar(inputs.len(), "predict", args.run.quiet);
    let mut docs = Vec::with_capacity(inputs.len());
    let mut tables = Vec::with_capacity(inputs.len());
    for (((path, (rows, feats)), centre), stem) in args.inputs.iter().zip(&inputs).zip(centres).zip(&stems) {
        let name = path.display().to_string();
        bar.set_message(name.clone());
        let duration = (feats.rows * cfg.dataset.feat_stride * cfg.dataset.downsample_rate) as f64 / fps;
        let out = run_video(&model, &cfg, feats, centre, &device, &name).with_context(|| format!("running {name}"))?;
        let cands = detect(&cfg, &out, fps, Some(duration))
            .with_context(|| format!("post-processing {name}"))?
            .sorted_by_score();
        let k = predict_in_video(&cands, fill, wash, fps, duration, cfg.setting);
        let p = Prediction {
            input: path.clone(),
            rows: *rows,
            frames: k.frames,
            duration,
            keyframes: k.keyframes,
            fallback: k.fallback,
            adjusted: k.adjusted,
            confidence: k.confidence,
            detections: cands,
        };
        if let Some(dir) = &args.plot {
            let png = dir.join(format!("{stem}.png"));
            plot_one(
                &cfg,
                &name,
                fps,
                p.frames,
                feats,
                &out,
                &p.detections,
                p.keyframes,
                None,
                &png,
            )?;
        }
        docs.push(prediction_json(&p, fps, &config_path, &args.checkpoint));
        tables.push(render(&p, fps, args.top));
        bar.inc(1);
    }
    bar.finish_and_clear();
    for t in &tables {
        say(&format!("\n{t}"));
    }
    if let Some(dir) = &args.plot {
        say(&format!("\nwrote {} picture(s) to {}\n", docs.len(), dir.display()));
    }
    if let Some(out) = &args.json {
        common::write_json_out(out, &serde_json::Value::Array(docs))?;
    }
    Ok(())
}
