//! `xca demo`: synthetic data (if absent) → train → select → test tables, in one command.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use xca::device::DeviceChoice;

/// The whole pipeline on the synthetic dataset: `xca synth` (only if data/vessel is absent),
/// `xca train configs/vessel_demo.yaml --output demo` (the paper's architecture with every
/// component on, scaled to train in minutes on a laptop CPU), `xca select` over its saved
/// checkpoints, and both test tables at the end.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Demo config.
    #[arg(long, default_value = "configs/vessel_demo.yaml")]
    pub config: PathBuf,
    /// Run name (the run folder is ckpt/<config stem>_<NAME>; replaced if it exists).
    #[arg(long, default_value = "demo", value_parser = super::common::run_name)]
    pub output: String,
    /// cpu (flex), ndarray, wgpu, or cuda / cuda:N (the GPU back-ends need their cargo features).
    #[arg(long, default_value = "cpu")]
    pub device: DeviceChoice,
    /// No progress bars.
    #[arg(long, short)]
    pub quiet: bool,
}

pub fn run(args: Args) -> Result<()> {
    let started = Instant::now();
    let cfg = super::config::load_config(&args.config)?;
    let defaults = xca::synth::SynthConfig::default();
    let generate = !cfg.dataset.json_file.exists();
    if generate {
        let out = cfg
            .dataset
            .json_file
            .parent()
            .and_then(|p| p.parent())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("data/vessel"));
        eprintln!(
            "xca demo: no dataset at {}: generating the synthetic one",
            out.display()
        );
        super::synth::run(super::synth::Args {
            out,
            train: defaults.train,
            val: defaults.val,
            test: defaults.test,
            seed: defaults.seed,
            force: false,
            preview: None,
            preview_video: None,
            json: false,
        })?;
    }
    let ann = super::common::annotations(&cfg)?;
    let counts = [&cfg.train_split, &cfg.val_split, &cfg.test_split].map(|s| ann.split(s).len());
    if !generate {
        // An existing dataset is used as it is; say so when it is not the default synthetic
        // one, since the README's demo numbers are for that one.
        let note = if counts != [defaults.train, defaults.val, defaults.test] {
            format!(
                " (the README's demo numbers are for `xca synth`'s default {}/{}/{}; \
                 `xca synth --force` regenerates it)",
                defaults.train, defaults.val, defaults.test
            )
        } else {
            String::new()
        };
        eprintln!(
            "xca demo: using the dataset of {}: {}/{}/{} videos (train/validation/test){note}",
            cfg.dataset.json_file.display(),
            counts[0],
            counts[1],
            counts[2]
        );
    }
    let run_dir = super::common::run_dir(&cfg, &args.config, &args.output);
    if run_dir.exists() {
        std::fs::remove_dir_all(&run_dir)
            .map_err(|e| anyhow::anyhow!("cannot replace the previous demo run {}: {e}", run_dir.display()))?;
    }
    super::train::run(super::train::Args {
        config: args.config.clone(),
        output: args.output.clone(),
        resume: false,
        device: args.device,
        devices: Vec::new(),
        seed: None,
        log_every: 10,
        epochs: None,
        quiet: args.quiet,
    })?;
    super::select::run(super::select::Args {
        config: args.config.clone(),
        ckpt_dir: Some(run_dir.clone()),
        output: args.output.clone(),
        epochs: None,
        json: Some(run_dir.join("select.json")),
        run: super::common::InferArgs {
            device: args.device,
            seed: None,
            quiet: args.quiet,
        },
    })?;
    // Training drew its curves before selection existed; redraw them with the validation mAP.
    let iters = (counts[0] / cfg.loader.batch_size.max(1)).max(1);
    if let Err(e) = super::train::write_curves(&run_dir, iters) {
        eprintln!("xca demo: warning: could not redraw curves.png: {e}");
    }
    println!(
        "\ndemo finished in {:.1} min; run folder {} (select.json holds the numbers)",
        started.elapsed().as_secs_f64() / 60.0,
        run_dir.display()
    );
    Ok(())
}
