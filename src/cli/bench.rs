//! `xca bench [CONFIG]`: time a training iteration, inference and the ConvLSTM.

use std::path::PathBuf;

use anyhow::{Context, Result};
use serde_json::json;
use xca::bench::{ConvLstmBench, InferBench, Timing, TrainStepBench, peak_rss_mb, time_it};
use xca::device::DeviceChoice;

use super::common;

/// Time, after warm-up, (a) one full training iteration (forward, losses, backward, clip,
/// AdamW, EMA) on a synthetic batch of the config's shape, (b) inference of one video of
/// T = 128 and T = 512 including decoding and NMS, and (c) the ConvLSTM alone, forward and
/// backward. Prints median/min/max wall milliseconds, process CPU milliseconds (all
/// threads) and the peak resident memory. Needs no dataset.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// YAML config whose model and batch shape to time.
    #[arg(default_value = "configs/vessel.yaml")]
    pub config: PathBuf,
    /// cpu (flex), ndarray or wgpu.
    #[arg(long, default_value = "cpu")]
    pub device: DeviceChoice,
    /// Timed iterations of each piece (after the warm-up).
    #[arg(long, default_value_t = 5)]
    pub iters: usize,
    /// Untimed warm-up iterations of each piece.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Write the numbers as JSON here (`-` for stdout, which then holds only the JSON).
    #[arg(long, value_name = "OUT.json")]
    pub json: Option<PathBuf>,
    /// Seed of the model initialisation and the synthetic inputs.
    #[arg(long, default_value_t = 2023)]
    pub seed: u64,
}

fn stats_json(t: &Timing) -> serde_json::Value {
    json!({"median": t.wall_ms.median, "min": t.wall_ms.min, "max": t.wall_ms.max})
}

fn cpu_json(t: &Timing) -> serde_json::Value {
    match &t.cpu_ms {
        Some(c) => json!({"median": c.median, "min": c.min, "max": c.max}),
        None => serde_json::Value::Null,
    }
}

pub fn run(args: Args) -> Result<()> {
    let cfg = super::config::load_config(&args.config)?;
    let device = common::device(args.device)?;
    let to_stdout = args.json.as_deref() == Some(std::path::Path::new("-"));
    let say = |s: &str| {
        if to_stdout {
            eprintln!("{s}");
        } else {
            println!("{s}");
        }
    };
    let iters = args.iters.max(1);
    say(&format!(
        "xca bench {} on {} ({} threads): {} warm-up + {} timed iterations each",
        args.config.display(),
        args.device,
        rayon_threads(),
        args.warmup,
        iters
    ));
    let bar = common::bar(4, "bench", false);

    bar.set_message("training step");
    let mut train = TrainStepBench::new(&cfg, &device, args.seed).context("building the training step")?;
    let train_t = time_it(args.warmup, iters, || train.run().map(|_| ())).context("training step")?;
    drop(train);
    let peak_train = peak_rss_mb();
    bar.inc(1);

    let mut infer = Vec::new();
    for t in [128usize, 512] {
        bar.set_message(format!("inference T = {t}"));
        let b = InferBench::new(&cfg, &device, t, args.seed).context("building the inference model")?;
        infer.push(time_it(args.warmup, iters, || b.run().map(|_| ())).with_context(|| format!("inference T = {t}"))?);
        bar.inc(1);
    }

    bar.set_message("ConvLSTM");
    let lstm_t = match ConvLstmBench::new(&cfg, &device, args.seed) {
        Ok(b) => Some(time_it(args.warmup, iters, || b.run().map(|_| ())).context("ConvLSTM")?),
        Err(xca::bench::BenchError::NoConvLstm) => None,
        Err(e) => return Err(e).context("building the ConvLSTM"),
    };
    bar.inc(1);
    bar.finish_and_clear();
    let peak = peak_rss_mb();

    let rows: Vec<(&str, Option<&Timing>)> = vec![
        ("training step", Some(&train_t)),
        ("inference T=128", Some(&infer[0])),
        ("inference T=512", Some(&infer[1])),
        ("ConvLSTM fwd+bwd", lstm_t.as_ref()),
    ];
    say(&format!(
        "{:<18} {:>10} {:>10} {:>10} {:>12}",
        "piece", "median ms", "min ms", "max ms", "CPU ms (med)"
    ));
    for (name, t) in &rows {
        match t {
            Some(t) => say(&format!(
                "{:<18} {:>10.1} {:>10.1} {:>10.1} {:>12}",
                name,
                t.wall_ms.median,
                t.wall_ms.min,
                t.wall_ms.max,
                t.cpu_ms.map_or("-".into(), |c| format!("{:.1}", c.median))
            )),
            None => say(&format!("{name:<18} (not in this config)")),
        }
    }
    let mb = |m: Option<f64>| m.map_or("unknown".into(), |m| format!("{m:.0} MiB"));
    say(&format!(
        "peak resident memory: {} after the training step, {} in all",
        mb(peak_train),
        mb(peak)
    ));

    if let Some(path) = &args.json {
        let value = json!({
            "device": format!("{} ({})", args.device, device_words(args.device)),
            "config": args.config.display().to_string(),
            "threads": rayon_threads(),
            "iters": iters,
            "warmup": args.warmup,
            "train_step_ms": stats_json(&train_t),
            "infer_ms_t128": stats_json(&infer[0]),
            "infer_ms_t512": stats_json(&infer[1]),
            "convlstm_ms": lstm_t.as_ref().map(stats_json),
            "train_step_cpu_ms": cpu_json(&train_t),
            "infer_cpu_ms_t128": cpu_json(&infer[0]),
            "infer_cpu_ms_t512": cpu_json(&infer[1]),
            "convlstm_cpu_ms": lstm_t.as_ref().map(cpu_json),
            "peak_rss_mb": peak,
            "peak_rss_mb_train": peak_train,
        });
        common::write_json_out(path, &value)?;
    }
    Ok(())
}

/// Threads of the CPU back-ends' pool (`RAYON_NUM_THREADS`, else the core count).
fn rayon_threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

fn device_words(d: DeviceChoice) -> &'static str {
    match d {
        DeviceChoice::Cpu => "burn flex, CPU",
        DeviceChoice::Ndarray => "burn ndarray, CPU",
        DeviceChoice::Wgpu => "burn wgpu, GPU",
    }
}
