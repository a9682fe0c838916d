//! The training loop (SPEC §4): seeded data order and crops, forward, label assignment,
//! losses (with the contrastive schedule), backward, global clipping, AdamW with its
//! decay group, the per-iteration schedule, weight EMA, EMA checkpoints for the last
//! epochs, a JSONL log and a resumable state after every epoch.
//!
//! Reproducibility: every random draw of epoch e (data order, crops, patch centres,
//! anchors, drop-path) comes from RNGs seeded by (seed, e) — the device RNG is re-seeded at
//! every step from (seed, e, step of the epoch) — so a run resumed at an epoch boundary, or
//! from the mid-epoch state that Ctrl-C saves (which records the host RNG's position),
//! continues exactly as an uninterrupted one would.

use std::path::PathBuf;
use std::time::Instant;

use burn::tensor::{Device, Tensor};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use super::adapt as train_adapt;
use super::checkpoint::{self, CheckpointMeta, config_hash};
use super::ema::ema_init;
use super::interrupt;
use super::log::{RunLog, log_path};
use super::loss::{LossNormalizer, contrastive_active};
use super::optim::{LrSchedule, adamw_with_decay_group, param_ids_where};
use super::resume::{self, MidEpoch, ResumeState, Start};
use super::step::{Learner, Shard, StepSetup, shard_ranges};
use crate::config::Config;
use crate::config::adapt;
use crate::dataset::batch::{Window, collate};
use crate::dataset::crop::{Crop, CropParams, crop};
use crate::dataset::{Grid, SplitData, VideoData};
use crate::fsio::write_atomic;
use crate::model::Network;

pub use super::error::TrainError;
pub use super::log::LogLine;

/// How to run training (everything that is not in the config).
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// The run folder (`<output_folder>/<stem>_<output>`).
    pub run_dir: PathBuf,
    /// Device to train on (without autodiff; it is added here). It holds the model, the
    /// optimiser and the EMA.
    pub device: Device,
    /// Further devices that each take a part of every batch (data parallelism,
    /// `--devices`; see [`Learner::step_sharded`]); empty trains on `device` alone.
    pub parallel: Vec<Device>,
    /// Seed of every RNG (defaults to the config's `init_rand_seed`).
    pub seed: u64,
    /// Continue from the run folder's resumable state.
    pub resume: bool,
    /// Log (and read the loss from the device) every this many iterations.
    pub log_every: usize,
    /// No progress bars.
    pub quiet: bool,
    /// Stop after this many epochs of this invocation (tests of resumption).
    pub max_epochs_this_run: Option<usize>,
}

/// What a finished run reports.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    pub run_dir: PathBuf,
    pub epochs_done: usize,
    pub checkpoints: Vec<PathBuf>,
    pub last_epoch: Option<LogLine>,
}

/// Whether the parameter at this module path gets weight decay (SPEC §4.3): weights of
/// convolutions and linear maps (including the input layer's Conv2d, BatchNorm and
/// projection weights), but not biases, LayerNorm, Scale or drop-path scales.
pub fn decays(path: &str) -> bool {
    let mut parts = path.rsplit('.');
    let last = parts.next().unwrap_or("");
    if last != "weight" && last != "gamma" {
        return false;
    }
    // The owning module, skipping a list index (`fpn_norms.0.weight` → `fpn_norms`).
    let owner = parts.find(|p| p.parse::<usize>().is_err()).unwrap_or("");
    // LayerNorm gains never decay (ln1, ln2, *_norm, norms). The input layer's BatchNorm
    // gains (bn1, bn2) do: the original decays every `weight` inside the first masked conv.
    let is_layer_norm = owner.starts_with("ln") || owner.contains("norm");
    !is_layer_norm
}

/// TEST-ONLY fault injection: `XCA_TEST_NAN_STEP=<global step>` multiplies that step's batch
/// by NaN, so the real path from a non-finite input to the loss check is exercised end to end
/// (tests/pipeline.rs). Only built with the internal `test-hooks` feature, which `cargo test`
/// turns on (Cargo.toml's self dev-dependency) and a `cargo build` never does.
#[cfg(feature = "test-hooks")]
fn test_poison_step() -> Option<usize> {
    std::env::var("XCA_TEST_NAN_STEP").ok()?.trim().parse().ok()
}

/// Without the `test-hooks` feature (every shipped build) the variable is never read.
#[cfg(not(feature = "test-hooks"))]
fn test_poison_step() -> Option<usize> {
    None
}

fn seed_for(seed: u64, epoch: usize, stream: u64) -> u64 {
    seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add((epoch as u64).wrapping_mul(0xD1B5_4A32_D192_ED03))
        .wrapping_add(stream)
}

/// Read the scalar value of a `[1]` tensor (one host sync).
fn scalar(t: &Tensor<1>) -> f64 {
    crate::host::read_scalar(t.clone()).unwrap_or(f64::NAN)
}

/// What stays fixed over a run: the config's numbers for `n` training videos.
struct Plan {
    batch: usize,
    /// Steps per epoch.
    iters: usize,
    total_epochs: usize,
    schedule: LrSchedule,
    /// `train_cfg.loss_weight`, for the logged total.
    loss_weight: f64,
    crop: CropParams,
    /// Padded length of a training batch (`max_seq_len`).
    t_len: usize,
    /// Ties checkpoints and the resumable state to the config.
    hash: String,
}

impl Plan {
    fn new(cfg: &Config, n: usize) -> Result<Self, TrainError> {
        let batch = cfg.loader.batch_size;
        if n < batch {
            return Err(TrainError::TooFewVideos { videos: n, batch });
        }
        let iters = n / batch; // drop_last, as the original's train loader
        let grid = Grid::from_config(cfg);
        Ok(Self {
            batch,
            iters,
            total_epochs: cfg.total_epochs(),
            schedule: train_adapt::lr_schedule(cfg, iters),
            loss_weight: train_adapt::loss_config(cfg).loss_weight.max(0.0) as f64,
            crop: CropParams {
                max_seq_len: cfg.dataset.max_seq_len,
                trunc_thresh: cfg.dataset.trunc_thresh,
                offset: grid.offset(),
                crop_ratio: cfg.dataset.crop_ratio,
            },
            t_len: cfg.dataset.max_seq_len,
            hash: config_hash(cfg),
        })
    }
}

/// Train `model` on `data` as `cfg` says. Writes checkpoints, `log.jsonl` and the
/// resumable state into `opts.run_dir`.
pub fn train(
    cfg: &Config,
    data: &SplitData,
    opts: &TrainOptions,
    mut on_epoch: impl FnMut(&LogLine),
) -> Result<TrainSummary, TrainError> {
    let plan = Plan::new(cfg, data.videos.len())?;
    prepare_run_dir(cfg, opts)?;
    let device = opts.device.clone().autodiff();
    device.seed(opts.seed);
    let shards = 1 + opts.parallel.len();
    if plan.batch < shards {
        return Err(TrainError::TooFewPerDevice {
            batch: plan.batch,
            devices: shards,
        });
    }
    let parallel: Vec<Device> = opts.parallel.iter().map(|d| d.clone().autodiff()).collect();
    let start = start_or_resume(cfg, opts, &plan, &device)?;
    let mut learner = learner(cfg, opts, start.model, start.ema, start.optim_bytes, start.normalizer)?;
    let mut log = RunLog::open(&log_path(&opts.run_dir))?;
    let end_epoch = match opts.max_epochs_this_run {
        Some(k) => (start.epoch + k).min(plan.total_epochs),
        None => plan.total_epochs,
    };
    let mut run = Run {
        cfg,
        data,
        opts,
        setup: StepSetup::new(cfg, &learner.model),
        plan,
        device,
        parallel,
        poison_step: test_poison_step(),
        step: start.step,
    };
    let mut mid_epoch = start.mid_epoch;
    let mut checkpoints = Vec::new();
    let mut last_epoch = None;
    for epoch in start.epoch..end_epoch {
        // Resuming inside this epoch: same order, and the RNG goes on from where it stopped.
        let mid = if epoch == start.epoch { mid_epoch.take() } else { None };
        let (next, sums) = run.epoch(learner, epoch, mid, &mut log)?;
        learner = next;
        let line = run.epoch_line(epoch, sums)?;
        log.write(&line)?;
        let epoch1 = epoch + 1;
        checkpoints.extend(run.save_epoch(&learner, epoch1)?);
        on_epoch(&line);
        last_epoch = Some(line);
        if interrupt::requested() && epoch1 < end_epoch {
            return Err(TrainError::Interrupted {
                run_dir: opts.run_dir.clone(),
                epoch: epoch1,
                steps: run.step,
            });
        }
    }
    Ok(TrainSummary {
        run_dir: opts.run_dir.clone(),
        epochs_done: end_epoch,
        checkpoints,
        last_epoch,
    })
}

/// Create the run folder and write the resolved config into it.
fn prepare_run_dir(cfg: &Config, opts: &TrainOptions) -> Result<(), TrainError> {
    std::fs::create_dir_all(&opts.run_dir).map_err(|e| TrainError::Io {
        path: opts.run_dir.clone(),
        reason: e.to_string(),
    })?;
    write_atomic(&opts.run_dir.join("config.yaml"), cfg.to_yaml().as_bytes())?;
    Ok(())
}

/// The fresh network (initialised from the seeded `device`) and its EMA, or, with
/// `--resume`, the saved state of the run folder.
fn start_or_resume(cfg: &Config, opts: &TrainOptions, plan: &Plan, device: &Device) -> Result<Start, TrainError> {
    let model: Network = adapt::network_config(cfg).init(device)?;
    let ema: Network = ema_init(&model);
    let fresh = Start {
        model,
        ema,
        optim_bytes: None,
        normalizer: LossNormalizer::new(cfg.train_cfg.init_loss_norm),
        epoch: 0,
        step: 0,
        mid_epoch: None,
    };
    resume::restore(
        &opts.run_dir,
        opts.resume,
        opts.seed,
        &plan.hash,
        (plan.total_epochs, plan.iters),
        fresh,
    )
}

/// The learner: AdamW with its decay group over `model`, restored from `optim_bytes` when
/// resuming.
fn learner(
    cfg: &Config,
    opts: &TrainOptions,
    model: Network,
    ema: Network,
    optim_bytes: Option<Vec<u8>>,
    normalizer: LossNormalizer,
) -> Result<Learner, TrainError> {
    // The decay group is keyed by parameter id, so it is built after a resumed model has
    // its persisted ids back; otherwise the group would name ids nobody has.
    let decay_ids = param_ids_where(&model, decays);
    let mut optim = adamw_with_decay_group(decay_ids, &train_adapt::adamw_settings(cfg));
    if let Some(bytes) = optim_bytes {
        optim = optim
            .from_bytes(burn::tensor::Bytes::from_bytes_vec(bytes))
            .map_err(|e| TrainError::Resume {
                path: resume::state_dir(&opts.run_dir),
                reason: format!("optimiser: {e}"),
            })?;
    }
    Ok(Learner {
        model,
        ema,
        optim,
        normalizer,
    })
}

/// A training run in progress.
struct Run<'a> {
    cfg: &'a Config,
    data: &'a SplitData,
    opts: &'a TrainOptions,
    plan: Plan,
    setup: StepSetup,
    /// The autodiff device.
    device: Device,
    /// The further autodiff devices of data parallelism (`TrainOptions::parallel`).
    parallel: Vec<Device>,
    /// `XCA_TEST_NAN_STEP` (see [`test_poison_step`]).
    poison_step: Option<usize>,
    /// Global 0-based step of the next iteration.
    step: usize,
}

/// An epoch's loss sums, still on the device, and what its log line needs.
struct EpochSums {
    cls: Option<Tensor<1>>,
    reg: Option<Tensor<1>>,
    con: Option<Tensor<1>>,
    /// Steps with a contrastive loss.
    n_con: usize,
    /// The learning rate of the last step.
    lr: f64,
    started: Instant,
    /// First iteration this invocation ran (> 0 when resumed mid-epoch).
    first_it: usize,
}

impl Run<'_> {
    /// Run the iterations of 0-based `epoch` (from `mid` on when resumed inside it),
    /// logging every `log_every` steps. On Ctrl-C saves the mid-epoch state and stops.
    fn epoch(
        &mut self,
        mut learner: Learner,
        epoch: usize,
        mid: Option<MidEpoch>,
        log: &mut RunLog,
    ) -> Result<(Learner, EpochSums), TrainError> {
        let (opts, plan) = (self.opts, &self.plan);
        let (iters, batch) = (plan.iters, plan.batch);
        let mut rng = ChaCha8Rng::seed_from_u64(seed_for(opts.seed, epoch, 1));
        let mut order: Vec<usize> = (0..self.data.videos.len()).collect();
        order.shuffle(&mut rng);
        let first_it = mid.as_ref().map_or(0, |m| m.iters_done);
        if let Some(m) = &mid {
            rng.set_word_pos(m.rng_word_pos);
        }
        let use_con = contrastive_active(epoch, self.cfg.model.pretrain, self.cfg.model.random_patch);
        let bar = progress_bar(opts.quiet, iters, plan.total_epochs, epoch, first_it);
        let started = Instant::now();
        let restore = |v: f64| Tensor::<1>::from_data(burn::tensor::TensorData::new(vec![v as f32], [1]), &self.device);
        let mut sums = EpochSums {
            cls: mid.as_ref().map(|m| restore(m.sum_cls)),
            reg: mid.as_ref().map(|m| restore(m.sum_reg)),
            con: mid.as_ref().and_then(|m| m.sum_con.map(restore)),
            n_con: mid.as_ref().map_or(0, |m| m.n_con),
            lr: 0.0,
            started,
            first_it,
        };
        for it in first_it..iters {
            // Per step, so a state saved between steps knows the device RNG's stream.
            let step_seed = seed_for(opts.seed, epoch, 2) ^ (it as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            self.device.seed(step_seed);
            for (i, d) in self.parallel.iter().enumerate() {
                d.seed(step_seed ^ (i as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03));
            }
            let idx = &order[it * batch..(it + 1) * batch];
            let vids: Vec<&VideoData> = idx.iter().map(|&i| &self.data.videos[i]).collect();
            let crops: Vec<Crop> = vids
                .iter()
                .map(|v| crop(v.feats.rows, &v.segments, &v.labels, &plan.crop, &mut rng))
                .collect();
            let windows: Vec<Window<'_>> = vids
                .iter()
                .zip(&crops)
                .map(|(v, c)| Window {
                    feats: &v.feats,
                    start: c.start,
                    len: c.len,
                })
                .collect();
            // One shard per device, the first on the model's device.
            let devices = std::iter::once(&self.device).chain(&self.parallel);
            let mut shards = Vec::with_capacity(1 + self.parallel.len());
            for (range, device) in shard_ranges(batch, 1 + self.parallel.len()).into_iter().zip(devices) {
                let mut b = collate(&windows[range.clone()], plan.t_len, device)?;
                if self.poison_step == Some(self.step) {
                    b.feats = b.feats.mul_scalar(f32::NAN);
                }
                shards.push(Shard {
                    batch: b,
                    crops: &crops[range],
                });
            }
            let step = self.step;
            let lr = plan.schedule.lr(step);
            sums.lr = lr;
            let (next, losses) = learner.step_sharded(&self.setup, shards, use_con, lr, &mut rng)?;
            learner = next;
            let con = losses.con;
            let (c, r) = (losses.cls, losses.reg);
            sums.cls = Some(sums.cls.map_or(c.clone(), |s| s + c.clone()));
            sums.reg = Some(sums.reg.map_or(r.clone(), |s| s + r.clone()));
            if let Some(cv) = &con {
                sums.n_con += 1;
                let cv = cv.clone();
                sums.con = Some(sums.con.map_or(cv.clone(), |s| s + cv));
            }
            if (step + 1).is_multiple_of(opts.log_every.max(1)) {
                let (cls, reg) = (scalar(&c), scalar(&r));
                let conv = con.as_ref().map(scalar);
                if !(cls.is_finite() && reg.is_finite() && conv.is_none_or(f64::is_finite)) {
                    return Err(TrainError::NonFinite {
                        epoch: epoch + 1,
                        step,
                        cls,
                        reg,
                        con: conv,
                        videos: vids.iter().map(|v| v.id.clone()).collect(),
                    });
                }
                let line = LogLine {
                    kind: "step".into(),
                    epoch: epoch + 1,
                    step,
                    lr,
                    cls_loss: cls,
                    reg_loss: reg,
                    con_loss: conv,
                    total_loss: cls + plan.loss_weight * reg + conv.unwrap_or(0.0),
                    sec_per_iter: started.elapsed().as_secs_f64() / (it + 1 - first_it) as f64,
                };
                bar.set_message(format!(
                    "loss {:.4} (cls {:.4} reg {:.4}) lr {:.2e}",
                    line.total_loss, cls, reg, lr
                ));
                log.write(&line)?;
            }
            self.step += 1;
            bar.inc(1);
            if interrupt::requested() && it + 1 < iters {
                bar.finish_and_clear();
                return Err(self.save_mid_epoch(&learner, epoch, it + 1, rng.get_word_pos(), &sums));
            }
        }
        bar.finish_and_clear();
        Ok((learner, sums))
    }

    /// Ctrl-C inside `epoch` after `iters_done` of its steps: save the resumable state with
    /// the RNG position and the running sums, and return the error that stops the run (or
    /// the saving's own error).
    fn save_mid_epoch(
        &self,
        learner: &Learner,
        epoch: usize,
        iters_done: usize,
        rng_word_pos: u128,
        sums: &EpochSums,
    ) -> TrainError {
        let sum = |t: &Option<Tensor<1>>| t.as_ref().map(scalar);
        let mid = MidEpoch {
            iters_done,
            rng_word_pos,
            sum_cls: sum(&sums.cls).unwrap_or(0.0),
            sum_reg: sum(&sums.reg).unwrap_or(0.0),
            sum_con: sum(&sums.con),
            n_con: sums.n_con,
        };
        let state = self.state(learner, epoch, Some(mid));
        if let Err(e) = resume::save_state(&self.opts.run_dir, learner, state) {
            return e;
        }
        TrainError::Interrupted {
            run_dir: self.opts.run_dir.clone(),
            epoch: epoch + 1,
            steps: self.step,
        }
    }

    /// The resumable counters after `epochs_done` epochs (and `mid_epoch`).
    fn state(&self, learner: &Learner, epochs_done: usize, mid_epoch: Option<MidEpoch>) -> ResumeState {
        ResumeState {
            epochs_done,
            step: self.step,
            normalizer: learner.normalizer,
            config_hash: self.plan.hash.clone(),
            seed: self.opts.seed,
            mid_epoch,
        }
    }

    /// The epoch's averages as a log line, or the error for a non-finite one.
    fn epoch_line(&self, epoch: usize, sums: EpochSums) -> Result<LogLine, TrainError> {
        let iters = self.plan.iters;
        let avg = |s: Option<Tensor<1>>, k: usize| s.map(|t| scalar(&t) / k.max(1) as f64);
        let cls = avg(sums.cls, iters).unwrap_or(f64::NAN);
        let reg = avg(sums.reg, iters).unwrap_or(f64::NAN);
        let conv = avg(sums.con, sums.n_con);
        if !(cls.is_finite() && reg.is_finite() && conv.is_none_or(f64::is_finite)) {
            return Err(TrainError::NonFinite {
                epoch: epoch + 1,
                step: self.step,
                cls,
                reg,
                con: conv,
                videos: Vec::new(),
            });
        }
        Ok(LogLine {
            kind: "epoch".into(),
            epoch: epoch + 1,
            step: self.step.saturating_sub(1),
            lr: sums.lr,
            cls_loss: cls,
            reg_loss: reg,
            con_loss: conv,
            total_loss: cls + self.plan.loss_weight * reg + conv.unwrap_or(0.0),
            sec_per_iter: sums.started.elapsed().as_secs_f64() / (iters - sums.first_it).max(1) as f64,
        })
    }

    /// After 1-based epoch `epoch1`: the EMA checkpoint when the epoch is one of the saved
    /// ones (its path is returned), then the resumable state.
    fn save_epoch(&self, learner: &Learner, epoch1: usize) -> Result<Option<PathBuf>, TrainError> {
        let mut written = None;
        if self.cfg.saved_epochs().contains(&epoch1) {
            let path = checkpoint::epoch_file(&self.opts.run_dir, epoch1);
            let meta = CheckpointMeta {
                epoch: epoch1,
                config_hash: self.plan.hash.clone(),
                xca_version: env!("CARGO_PKG_VERSION").into(),
                weights: "ema".into(),
            };
            checkpoint::save(&learner.ema, &path, &meta)?;
            written = Some(path);
        }
        resume::save_state(&self.opts.run_dir, learner, self.state(learner, epoch1, None))?;
        Ok(written)
    }
}

/// The progress bar of 0-based `epoch` (hidden with `quiet`), at iteration `first_it`.
fn progress_bar(
    quiet: bool,
    iters: usize,
    total_epochs: usize,
    epoch: usize,
    first_it: usize,
) -> indicatif::ProgressBar {
    let bar = if quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(iters as u64)
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "epoch {prefix:>3}/{len_total} {bar:25} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .with_key(
            "len_total",
            move |_s: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = write!(w, "{total_epochs}");
            },
        ),
    );
    bar.set_prefix(format!("{}", epoch + 1));
    bar.set_position(first_it as u64);
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decay_rule_follows_the_spec_groups() {
        assert!(decays("backbone.stem.0.attn.query.weight"));
        assert!(decays("backbone.embd.0.conv.weight"));
        assert!(!decays("backbone.embd.0.conv.bias"));
        assert!(!decays("neck.fpn_norms.0.weight"));
        assert!(!decays("backbone.stem.0.ln1.weight"));
        assert!(!decays("backbone.stem.0.attn.query_norm.weight"));
        assert!(!decays("backbone.embd_norm.1.weight"));
        assert!(!decays("cls_head.norm.0.weight"));
        assert!(decays("backbone.long_term.spatial.bn1.gamma"));
        assert!(decays("backbone.long_term.convlstm.cells.0.conv_h.weight"));
        assert!(decays("backbone.long_term.projection.fc1.weight"));
        assert!(decays("backbone.stem.0.mlp_fc1.weight"));
        assert!(decays("cls_head.head.0.conv.weight"));
        assert!(decays("reg_head.offset_head.conv.weight"));
        assert!(!decays("reg_head.scale.0.scale"));
        assert!(!decays("backbone.stem.0.drop_path_attn.scale"));
    }
}
