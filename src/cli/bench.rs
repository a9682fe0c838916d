//! `xca bench [CONFIG]`: time a training iteration, inference and the ConvLSTM.

use std::path::PathBuf;

use anyhow::{Context, Result};
use serde_json::json;
use xca::bench::{
    ConvLstmBench, Counts, InferBench, Timing, TrainStepBench, count, count_by_kernel, peak_rss_mb, time_it,
};
use xca::device::DeviceChoice;

use super::common;

/// Kernels of the training step listed in the table and in the JSON, most launched first.
const TOP_KERNELS_SHOWN: usize = 8;
const TOP_KERNELS_JSON: usize = 25;
/// A kernel's name for the table: CubeCL's short names of burn's matmul run to hundreds of
/// characters (every generic parameter), so the table keeps the first few (the JSON all).
fn short(name: &str) -> String {
    const KEEP: usize = 40;
    match name.char_indices().nth(KEEP) {
        Some((at, _)) => format!("{}…", &name[..at]),
        None => name.to_string(),
    }
}

/// Kernels named per phase in the table.
const TOP_KERNELS_PER_PHASE: usize = 4;

/// Time, after warm-up, (a) one full training iteration (forward, losses, backward, clip,
/// AdamW, EMA) on a synthetic batch of the config's shape, (b) inference of one video of
/// T = 128 and T = 512 including decoding and NMS, and (c) the ConvLSTM alone, forward and
/// backward; then (d) inference of one long video (`--long-t`, 20,000 steps) in a child
/// process of its own, whose peak resident memory is that inference's alone. Prints
/// median/min/max wall milliseconds, process CPU milliseconds (all threads) and the peak
/// resident memory. Needs no dataset.
///
/// After the timed runs each piece runs once more, counted: the kernels it launches (on
/// the GPU back-ends, by CubeCL's launch observer) and its tensor reads back to the host
/// (each a device → host synchronisation on a GPU). A training step should read nothing;
/// inference reads the head outputs.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// YAML config whose model and batch shape to time.
    #[arg(default_value = "configs/vessel.yaml")]
    pub config: PathBuf,
    /// cpu (flex), ndarray, wgpu, or cuda / cuda:N (the GPU back-ends need their cargo features).
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
    /// Steps of the long inference video, timed (without warm-up) in a child process so
    /// that its peak resident memory is measured alone; 0 skips it.
    #[arg(long, default_value_t = 20_000)]
    pub long_t: usize,
    /// Timed runs of the long inference.
    #[arg(long, default_value_t = 1)]
    pub long_iters: usize,
    /// How the ConvLSTM runs: `fused` (one operation per layer: the CPU kernels on flex, the
    /// CubeCL kernels on wgpu/cuda; ndarray has none) or `tensor-ops` (burn tensor ops, step
    /// by step, to compare).
    #[arg(long, value_enum, default_value_t = LstmPath::Fused)]
    pub convlstm: LstmPath,
    /// Run only the long inference and print its numbers as JSON on stdout (what the parent
    /// `xca bench` runs in its child process).
    #[arg(long, hide = true)]
    pub long_only: bool,
}

/// How `xca bench` runs the ConvLSTM (`--convlstm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LstmPath {
    /// One fused operation per layer where the back-end has one.
    Fused,
    /// burn tensor operations, step by step.
    TensorOps,
}

impl LstmPath {
    fn fused(self) -> bool {
        self == Self::Fused
    }

    fn name(self) -> &'static str {
        match self {
            Self::Fused => "fused",
            Self::TensorOps => "tensor-ops",
        }
    }
}

/// What the child process reports of the long inference.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct LongInfer {
    /// Steps of the video.
    t: usize,
    /// Wall milliseconds: median, min, max.
    wall_ms: [f64; 3],
    /// Process CPU milliseconds (all threads): median, min, max, where the OS says.
    cpu_ms: Option<[f64; 3]>,
    /// The child's peak resident memory (model, synthetic input, inference, NMS), MiB.
    peak_rss_mb: Option<f64>,
}

/// The long inference alone, in this process (the child side of `--long-only`).
fn long_infer(cfg: &xca::config::Config, device: &burn::tensor::Device, args: &Args) -> Result<LongInfer> {
    let b = InferBench::new(cfg, device, args.long_t, args.seed)
        .context("building the inference model")?
        .fused_convlstm(args.convlstm.fused());
    let t = time_it(0, args.long_iters.max(1), || b.run().map(|_| ()))
        .with_context(|| format!("inference T = {}", args.long_t))?;
    Ok(LongInfer {
        t: args.long_t,
        wall_ms: [t.wall_ms.median, t.wall_ms.min, t.wall_ms.max],
        cpu_ms: t.cpu_ms.map(|c| [c.median, c.min, c.max]),
        peak_rss_mb: peak_rss_mb(),
    })
}

/// Run the long inference in a child process (this binary with `--long-only`) and read
/// its report.
fn long_infer_child(args: &Args) -> Result<LongInfer> {
    let exe = std::env::current_exe().context("finding this program to run the long inference")?;
    let out = std::process::Command::new(exe)
        .arg("bench")
        .arg(&args.config)
        .args(["--device", &args.device.to_string()])
        .args(["--seed", &args.seed.to_string()])
        .args(["--long-t", &args.long_t.to_string()])
        .args(["--long-iters", &args.long_iters.to_string()])
        .args(["--convlstm", args.convlstm.name()])
        .arg("--long-only")
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running the long inference")?;
    if !out.status.success() {
        anyhow::bail!("the long inference (T = {}) failed: {}", args.long_t, out.status);
    }
    serde_json::from_slice(&out.stdout).context("reading the long inference's report")
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
    if args.long_only {
        let report = long_infer(&cfg, &device, &args)?;
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    let to_stdout = args.json.as_deref() == Some(std::path::Path::new("-"));
    let say = |s: &str| {
        if to_stdout {
            eprintln!("{s}");
        } else {
            println!("{s}");
        }
    };
    let iters = args.iters.max(1);
    let device_name = xca::kernels::cube_device_name(&device);
    say(&format!(
        "xca bench {} on {}{} ({} threads): {} warm-up + {} timed iterations each, ConvLSTM {}",
        args.config.display(),
        args.device,
        device_name.as_deref().map_or(String::new(), |n| format!(" [{n}]")),
        rayon_threads(),
        args.warmup,
        iters,
        args.convlstm.name()
    ));
    let bar = common::bar(4 + usize::from(args.long_t > 0), "bench", false);

    bar.set_message("training step");
    let mut train = TrainStepBench::new(&cfg, &device, args.seed)
        .context("building the training step")?
        .fused_convlstm(args.convlstm.fused());
    let train_t = time_it(args.warmup, iters, || train.run().map(|_| ())).context("training step")?;
    let (loss, train_n, train_launches) =
        count_by_kernel(&device, || train.step()).context("training step (counted)")?;
    drop(loss);
    drop(train);
    let peak_train = peak_rss_mb();
    bar.inc(1);

    let mut infer = Vec::new();
    let mut infer_n = Vec::new();
    for t in [128usize, 512] {
        bar.set_message(format!("inference T = {t}"));
        let b = InferBench::new(&cfg, &device, t, args.seed)
            .context("building the inference model")?
            .fused_convlstm(args.convlstm.fused());
        infer.push(time_it(args.warmup, iters, || b.run().map(|_| ())).with_context(|| format!("inference T = {t}"))?);
        infer_n.push(
            count(&device, || b.run())
                .with_context(|| format!("inference T = {t} (counted)"))?
                .1,
        );
        bar.inc(1);
    }

    bar.set_message("ConvLSTM");
    let lstm_t = match ConvLstmBench::new(&cfg, &device, args.seed) {
        Ok(b) => {
            let b = b.fused(args.convlstm.fused());
            let t = time_it(args.warmup, iters, || b.run().map(|_| ())).context("ConvLSTM")?;
            let (out, n) = count(&device, || b.pass()).context("ConvLSTM (counted)")?;
            drop(out);
            Some((t, n))
        }
        Err(xca::bench::BenchError::NoConvLstm) => None,
        Err(e) => return Err(e).context("building the ConvLSTM"),
    };
    bar.inc(1);
    // Read before the child runs (the child's memory is not this process's anyway).
    let peak = peak_rss_mb();

    let long = if args.long_t > 0 {
        bar.set_message(format!("inference T = {} (own process)", args.long_t));
        let l = long_infer_child(&args)?;
        bar.inc(1);
        Some(l)
    } else {
        None
    };
    bar.finish_and_clear();

    let lstm_n = lstm_t.as_ref().map(|(_, n)| *n);
    let lstm_t = lstm_t.map(|(t, _)| t);
    let rows: Vec<(&str, Option<(&Timing, &Counts)>)> = vec![
        ("training step", Some((&train_t, &train_n))),
        ("inference T=128", Some((&infer[0], &infer_n[0]))),
        ("inference T=512", Some((&infer[1], &infer_n[1]))),
        ("ConvLSTM fwd+bwd", lstm_t.as_ref().zip(lstm_n.as_ref())),
    ];
    say(&format!(
        "{:<18} {:>10} {:>10} {:>10} {:>12} {:>9} {:>6}",
        "piece", "median ms", "min ms", "max ms", "CPU ms (med)", "launches", "reads"
    ));
    for (name, t) in &rows {
        match t {
            Some((t, n)) => say(&format!(
                "{:<18} {:>10.1} {:>10.1} {:>10.1} {:>12} {:>9} {:>6}",
                name,
                t.wall_ms.median,
                t.wall_ms.min,
                t.wall_ms.max,
                t.cpu_ms.map_or("-".into(), |c| format!("{:.1}", c.median)),
                n.launches.map_or("-".into(), |l| l.to_string()),
                n.host_reads
            )),
            None => say(&format!("{name:<18} (not in this config)")),
        }
    }
    if let Some(l) = &long {
        say(&format!(
            "{:<18} {:>10.1} {:>10.1} {:>10.1} {:>12}",
            format!("inference T={}", l.t),
            l.wall_ms[0],
            l.wall_ms[1],
            l.wall_ms[2],
            l.cpu_ms.map_or("-".into(), |c| format!("{:.1}", c[0]))
        ));
    }
    if !train_launches.by_kernel.is_empty() {
        say("most launched kernels of the training step:");
        for (name, n) in train_launches.by_kernel.iter().take(TOP_KERNELS_SHOWN) {
            say(&format!("{n:>9}  {}", short(name)));
        }
        say("launches of the training step by phase (and its top kernels):");
        for p in &train_launches.by_phase {
            let top: Vec<String> = p
                .kernels
                .iter()
                .take(TOP_KERNELS_PER_PHASE)
                .map(|(k, n)| format!("{} {n}", short(k)))
                .collect();
            say(&format!("{:>9}  {:<10} {}", p.launches, p.phase, top.join(", ")));
        }
    }
    let mb = |m: Option<f64>| m.map_or("unknown".into(), |m| format!("{m:.0} MiB"));
    say(&format!(
        "peak resident memory: {} after the training step, {} in all",
        mb(peak_train),
        mb(peak)
    ));
    if let Some(l) = &long {
        say(&format!(
            "peak resident memory of inference T={} in its own process (model, input, NMS): {}",
            l.t,
            mb(l.peak_rss_mb)
        ));
    }

    if let Some(path) = &args.json {
        let value = json!({
            "device": format!("{} ({})", args.device, device_words(args.device)),
            "device_name": device_name,
            "config": args.config.display().to_string(),
            "threads": rayon_threads(),
            "convlstm_path": args.convlstm.name(),
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
            // One counted run of each piece after the timed ones (launches: null on the
            // CPU back-ends; reads: tensor reads back to the host, xca's own).
            "counts": {
                "train_step": train_n,
                "infer_t128": infer_n[0],
                "infer_t512": infer_n[1],
                "convlstm": lstm_n,
            },
            // The counted training step's launches per kernel, most launched first (empty on
            // the CPU back-ends).
            "train_step_launches_by_kernel": train_launches
                .by_kernel
                .iter()
                .take(TOP_KERNELS_JSON)
                .map(|(name, n)| json!({ "kernel": name, "launches": n }))
                .collect::<Vec<_>>(),
            // The same launches per phase of the step (forward, losses, backward, clip,
            // optimizer, ema), each with its most launched kernels.
            "train_step_launches_by_phase": train_launches
                .by_phase
                .iter()
                .map(|p| json!({
                    "phase": p.phase,
                    "launches": p.launches,
                    "kernels": p.kernels
                        .iter()
                        .take(TOP_KERNELS_JSON)
                        .map(|(name, n)| json!({ "kernel": name, "launches": n }))
                        .collect::<Vec<_>>(),
                }))
                .collect::<Vec<_>>(),
            "peak_rss_mb": peak,
            "peak_rss_mb_train": peak_train,
            "infer_long_t": long.as_ref().map(|l| l.t),
            "infer_ms_long": long.as_ref().map(|l| json!({"median": l.wall_ms[0], "min": l.wall_ms[1], "max": l.wall_ms[2]})),
            "infer_cpu_ms_long": long.as_ref().and_then(|l| l.cpu_ms).map(|c| json!({"median": c[0], "min": c[1], "max": c[2]})),
            "peak_rss_mb_long": long.as_ref().and_then(|l| l.peak_rss_mb),
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
        DeviceChoice::Cuda(_) => "burn cuda, GPU",
    }
}
