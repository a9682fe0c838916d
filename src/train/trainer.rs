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

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::assign::AssignError;
use super::checkpoint::{self, CheckpointError, CheckpointMeta, config_hash};
use super::ema::{EmaError, ema_init};
use super::interrupt;
use super::loss::{LossError, LossNormalizer, contrastive_active};
use super::optim::{adamw_with_decay_group, param_ids_where};
use super::step::{Learner, StepSetup};
use crate::config::Config;
use crate::config::adapt;
use crate::dataset::batch::{BatchError, Window, collate};
use crate::dataset::crop::{CropParams, crop};
use crate::dataset::{Grid, SplitData};
use crate::fsio::{ReadError, WriteError, build_dir_atomic, limits, read_bounded, write_atomic, write_json_atomic};
use crate::model::{ModelError, Network};

/// Anything that stops training.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Batch(#[from] BatchError),
    #[error(transparent)]
    Loss(#[from] LossError),
    #[error(transparent)]
    Assign(#[from] AssignError),
    #[error(transparent)]
    Ema(#[from] EmaError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Write(#[from] WriteError),
    /// A file of the resumable state that is missing, not a regular file or too large.
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("{path}: {reason}", path = path.display())]
    Io { path: PathBuf, reason: String },
    #[error("the training split has {videos} videos, fewer than loader.batch_size {batch}")]
    TooFewVideos { videos: usize, batch: usize },
    #[error(
        "non-finite loss at epoch {epoch}, {where_}(cls {cls}, reg {reg}, contrastive {c}){batch}. {kept}",
        where_ = if videos.is_empty() { format!("in the epoch's mean up to step {step} ") } else { format!("step {step} ") },
        c = con.map_or_else(|| "off".to_string(), |v| v.to_string()),
        batch = if videos.is_empty() {
            String::new()
        } else {
            format!("; videos of the batch: {}", videos.iter().map(|v| crate::text::quoted(v)).collect::<Vec<_>>().join(", "))
        },
        kept = if *epoch > 1 {
            format!("Nothing of epoch {epoch} was saved; the state after epoch {} is kept and --resume continues from it", epoch - 1)
        } else {
            "Nothing was saved: no epoch had finished".to_string()
        }
    )]
    NonFinite {
        epoch: usize,
        step: usize,
        cls: f64,
        reg: f64,
        con: Option<f64>,
        /// The batch's videos (empty when the non-finite value showed only in the epoch's mean).
        videos: Vec<String>,
    },
    #[error("cannot resume from {}: {reason}", path.display())]
    Resume { path: PathBuf, reason: String },
    /// Ctrl-C: the resumable state in `run_dir/state` continues after global step `steps`.
    #[error(
        "interrupted in epoch {epoch} after {steps} steps; a resumable state is in {}",
        run_dir.join("state").display()
    )]
    Interrupted {
        run_dir: PathBuf,
        epoch: usize,
        steps: usize,
    },
}

/// How to run training (everything that is not in the config).
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// The run folder (`<output_folder>/<stem>_<output>`).
    pub run_dir: PathBuf,
    /// Device to train on (without autodiff; it is added here).
    pub device: Device,
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

/// One line of `log.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LogLine {
    /// `step` (a logged iteration) or `epoch` (epoch averages).
    pub kind: String,
    /// 1-based epoch.
    pub epoch: usize,
    /// Global 0-based step (for `epoch` lines: the last step of the epoch).
    pub step: usize,
    pub lr: f64,
    pub cls_loss: f64,
    pub reg_loss: f64,
    /// Contrastive loss (absent when inactive).
    pub con_loss: Option<f64>,
    pub total_loss: f64,
    /// Seconds per iteration.
    pub sec_per_iter: f64,
}

/// The resumable state beside the model/EMA/optimiser files.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ResumeState {
    epochs_done: usize,
    step: usize,
    normalizer: LossNormalizer,
    config_hash: String,
    seed: u64,
    /// Set when the state was saved inside epoch `epochs_done + 1` (Ctrl-C).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mid_epoch: Option<MidEpoch>,
}

impl ResumeState {
    /// Check every counter against the run it is to continue: `total_epochs` epochs of
    /// `iters` steps each. A state that xca wrote always passes; a damaged or hand-edited
    /// one is refused naming the field, instead of resuming into garbage (a run "finished"
    /// after 2⁶⁴−1 epochs, a learning rate read from step 999 of an epoch of 96, a negative
    /// loss normaliser).
    fn validate(&self, total_epochs: usize, iters: usize) -> Result<(), String> {
        if self.epochs_done > total_epochs {
            return Err(format!(
                "epochs_done is {}, more than the {total_epochs} epochs the config trains",
                self.epochs_done
            ));
        }
        let n = &self.normalizer;
        if !(n.value.is_finite() && n.value > 0.0) {
            return Err(format!("normalizer.value is {}; it must be a positive number", n.value));
        }
        if !(0.0..=1.0).contains(&n.momentum) {
            return Err(format!("normalizer.momentum is {}; it must lie in [0, 1]", n.momentum));
        }
        let mut in_epoch = 0;
        if let Some(m) = &self.mid_epoch {
            if self.epochs_done >= total_epochs {
                return Err(format!("mid_epoch is set, but all {total_epochs} epochs are done"));
            }
            if m.iters_done == 0 || m.iters_done >= iters {
                return Err(format!(
                    "mid_epoch.iters_done is {}; it must lie in 1..{iters} (steps per epoch)",
                    m.iters_done
                ));
            }
            if m.n_con > m.iters_done {
                return Err(format!(
                    "mid_epoch.n_con is {}, more than the {} steps done",
                    m.n_con, m.iters_done
                ));
            }
            if m.sum_con.is_some() != (m.n_con > 0) {
                return Err(format!(
                    "mid_epoch.sum_con is {}, but mid_epoch.n_con is {}",
                    if m.sum_con.is_some() { "set" } else { "absent" },
                    m.n_con
                ));
            }
            for (field, v) in [
                ("sum_cls", Some(m.sum_cls)),
                ("sum_reg", Some(m.sum_reg)),
                ("sum_con", m.sum_con),
            ] {
                if let Some(v) = v
                    && !(v.is_finite() && v >= 0.0)
                {
                    return Err(format!(
                        "mid_epoch.{field} is {v}; a sum of losses is finite and not negative"
                    ));
                }
            }
            in_epoch = m.iters_done;
        }
        // Every state is saved between steps: the global step count is exact.
        let expected = self.epochs_done.saturating_mul(iters).saturating_add(in_epoch);
        if self.step != expected {
            return Err(format!(
                "step is {}, but {} epochs of {iters} steps{} make {expected} (was the training split changed?)",
                self.step,
                self.epochs_done,
                if in_epoch > 0 {
                    format!(" and {in_epoch} more")
                } else {
                    String::new()
                }
            ));
        }
        Ok(())
    }
}

/// Where in an unfinished epoch a state was saved, and the epoch's running loss sums (as
/// the exact f32 values the device held, so the epoch's log line comes out the same).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct MidEpoch {
    iters_done: usize,
    rng_word_pos: u128,
    sum_cls: f64,
    sum_reg: f64,
    sum_con: Option<f64>,
    n_con: usize,
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
/// (tests/pipeline.rs). Unset in normal use.
fn test_poison_step() -> Option<usize> {
    std::env::var("XCA_TEST_NAN_STEP").ok()?.trim().parse().ok()
}

fn seed_for(seed: u64, epoch: usize, stream: u64) -> u64 {
    seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add((epoch as u64).wrapping_mul(0xD1B5_4A32_D192_ED03))
        .wrapping_add(stream)
}

fn state_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("state")
}

/// Read the scalar value of a `[1]` tensor (one host sync).
fn scalar(t: &Tensor<1>) -> f64 {
    t.clone().into_data().iter::<f64>().next().unwrap_or(f64::NAN)
}

/// Train `model` on `data` as `cfg` says. Writes checkpoints, `log.jsonl` and the
/// resumable state into `opts.run_dir`.
pub fn train(
    cfg: &Config,
    data: &SplitData,
    opts: &TrainOptions,
    mut on_epoch: impl FnMut(&LogLine),
) -> Result<TrainSummary, TrainError> {
    let batch = cfg.loader.batch_size;
    let n = data.videos.len();
    if n < batch {
        return Err(TrainError::TooFewVideos { videos: n, batch });
    }
    let iters = n / batch; // drop_last, as the original's train loader
    let total_epochs = cfg.total_epochs();
    let schedule = adapt::lr_schedule(cfg, iters);
    let loss_cfg = adapt::loss_config(cfg);
    let grid = Grid::from_config(cfg);
    let crop_params = CropParams {
        max_seq_len: cfg.dataset.max_seq_len,
        trunc_thresh: cfg.dataset.trunc_thresh,
        offset: grid.offset(),
        crop_ratio: cfg.dataset.crop_ratio,
    };
    let hash = config_hash(cfg);
    let t_len = cfg.dataset.max_seq_len;

    std::fs::create_dir_all(&opts.run_dir).map_err(|e| TrainError::Io {
        path: opts.run_dir.clone(),
        reason: e.to_string(),
    })?;
    write_atomic(&opts.run_dir.join("config.yaml"), cfg.to_yaml().as_bytes())?;

    let device = opts.device.clone().autodiff();
    device.seed(opts.seed);
    let net_cfg = adapt::network_config(cfg);
    let mut model: Network = net_cfg.init(&device)?;
    let mut ema: Network = ema_init(&model);
    let mut optim_bytes = None;
    let mut normalizer = LossNormalizer::new(cfg.train_cfg.init_loss_norm);
    let mut start_epoch = 0;
    let mut step = 0usize;

    let sdir = state_dir(&opts.run_dir);
    let log_path = opts.run_dir.join("log.jsonl");
    let mut mid_epoch: Option<MidEpoch> = None;
    if opts.resume {
        // A kill in the middle of swapping in a new state leaves the previous one aside.
        crate::fsio::recover_dir(&sdir)?;
    }
    if opts.resume && sdir.join("state.json").exists() {
        let bad = |reason: String| TrainError::Resume {
            path: sdir.clone(),
            reason,
        };
        let state_json = sdir.join("state.json");
        let text = crate::fsio::read_text_bounded(&state_json, limits::SIDECAR)?;
        // The error names the field (`epochs_done: invalid value: integer `-1`…`).
        let mut de = serde_json::Deserializer::from_str(&text);
        let st: ResumeState = serde_path_to_error::deserialize(&mut de)
            .map_err(|e| e.to_string())
            .and_then(|st| de.end().map(|()| st).map_err(|e| e.to_string()))
            .map_err(|reason| TrainError::Resume {
                path: state_json.clone(),
                reason,
            })?;
        if st.config_hash != hash {
            return Err(bad(format!(
                "it was written with a different config (hash {} vs {hash}); start a new run or restore the config",
                st.config_hash
            )));
        }
        // Another seed would silently change the data order, crops and anchors of the rest
        // of the run: the result would match neither seed.
        if st.seed != opts.seed {
            return Err(bad(format!(
                "it was written with seed {} and this run has seed {}; resume with --seed {}",
                st.seed, opts.seed, st.seed
            )));
        }
        st.validate(total_epochs, iters).map_err(|reason| TrainError::Resume {
            path: state_json.clone(),
            reason,
        })?;
        // Each file a regular one no larger than a checkpoint can be.
        let record = |name: &str| -> Result<burn::store::ModuleRecord, TrainError> {
            let path = sdir.join(name);
            let bytes = read_bounded(&path, limits::CHECKPOINT)?;
            burn::store::ModuleRecord::from_bytes(burn::tensor::Bytes::from_bytes_vec(bytes)).map_err(|e| {
                TrainError::Resume {
                    path,
                    reason: e.to_string(),
                }
            })
        };
        model = model
            .try_load_record(record("model.bpk")?)
            .map_err(|e| bad(format!("model.bpk: {e}")))?;
        ema = ema
            .try_load_record(record("ema.bpk")?)
            .map_err(|e| bad(format!("ema.bpk: {e}")))?;
        optim_bytes = Some(read_bounded(&sdir.join("optim.bin"), limits::CHECKPOINT)?);
        normalizer = st.normalizer;
        start_epoch = st.epochs_done;
        step = st.step;
        mid_epoch = st.mid_epoch;
        // A run killed mid-epoch logged steps that the resumed run will redo: keep only the
        // lines of the steps the state includes, so the log has each step once.
        let log_bytes = match read_bounded(&log_path, limits::LOG) {
            Ok(bytes) => Some(bytes),
            Err(ReadError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => None,
            // A log that is a FIFO or a device would block or flood the appends below.
            Err(e) => return Err(e.into()),
        };
        if let Some(bytes) = log_bytes {
            // A damaged line (invalid UTF-8 included) is dropped like any unparsable one.
            let text = String::from_utf8_lossy(&bytes);
            let kept: String = text
                .lines()
                .filter(|l| {
                    serde_json::from_str::<LogLine>(l).is_ok_and(|line| {
                        line.epoch <= st.epochs_done
                            || (mid_epoch.is_some()
                                && line.kind == "step"
                                && line.epoch == st.epochs_done + 1
                                && line.step < st.step)
                    })
                })
                .map(|l| format!("{l}\n"))
                .collect();
            write_atomic(&log_path, kept.as_bytes())?;
        }
    } else if log_path.exists() {
        // A fresh run replaces an old log.
        std::fs::remove_file(&log_path).map_err(|e| TrainError::Io {
            path: log_path.clone(),
            reason: e.to_string(),
        })?;
    }
    // The decay group is keyed by parameter id, so it is built after a resumed model has
    // its persisted ids back; otherwise the group would name ids nobody has.
    let decay_ids = param_ids_where(&model, decays);
    let mut optim = adamw_with_decay_group(decay_ids, &adapt::adamw_settings(cfg));
    if let Some(bytes) = optim_bytes {
        optim = optim
            .from_bytes(burn::tensor::Bytes::from_bytes_vec(bytes))
            .map_err(|e| TrainError::Resume {
                path: sdir.clone(),
                reason: format!("optimiser: {e}"),
            })?;
    }
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| TrainError::Io {
            path: log_path.clone(),
            reason: e.to_string(),
        })?;
    let mut write_log = |line: &LogLine| -> Result<(), TrainError> {
        let mut s = serde_json::to_string(line).unwrap_or_default();
        s.push('\n');
        log.write_all(s.as_bytes()).map_err(|e| TrainError::Io {
            path: log_path.clone(),
            reason: e.to_string(),
        })
    };

    let setup = StepSetup::new(cfg, &model);
    let mut learner = Learner {
        model,
        ema,
        optim,
        normalizer,
    };
    let mut checkpoints = Vec::new();
    let mut last_epoch = None;
    let end_epoch = match opts.max_epochs_this_run {
        Some(k) => (start_epoch + k).min(total_epochs),
        None => total_epochs,
    };
    let poison_step = test_poison_step();
    for epoch in start_epoch..end_epoch {
        let mut rng = ChaCha8Rng::seed_from_u64(seed_for(opts.seed, epoch, 1));
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut rng);
        // Resuming inside this epoch: same order, and the RNG goes on from where it stopped.
        let mid = if epoch == start_epoch { mid_epoch.take() } else { None };
        let first_it = mid.as_ref().map_or(0, |m| m.iters_done);
        if let Some(m) = &mid {
            rng.set_word_pos(m.rng_word_pos);
        }
        let use_con = contrastive_active(epoch, cfg.model.pretrain, cfg.model.random_patch);
        let bar = if opts.quiet {
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
        let started = Instant::now();
        let restore = |v: f64| Tensor::<1>::from_data(burn::tensor::TensorData::new(vec![v as f32], [1]), &device);
        let mut sum_cls: Option<Tensor<1>> = mid.as_ref().map(|m| restore(m.sum_cls));
        let mut sum_reg: Option<Tensor<1>> = mid.as_ref().map(|m| restore(m.sum_reg));
        let mut sum_con: Option<Tensor<1>> = mid.as_ref().and_then(|m| m.sum_con.map(restore));
        let mut n_con = mid.as_ref().map_or(0, |m| m.n_con);
        let mut lr = 0.0;
        for it in first_it..iters {
            // Per step, so a state saved between steps knows the device RNG's stream.
            device.seed(seed_for(opts.seed, epoch, 2) ^ (it as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let idx = &order[it * batch..(it + 1) * batch];
            let vids: Vec<&crate::dataset::VideoData> = idx.iter().map(|&i| &data.videos[i]).collect();
            let crops: Vec<_> = vids
                .iter()
                .map(|v| crop(v.feats.rows, &v.segments, &v.labels, &crop_params, &mut rng))
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
            let mut b = collate(&windows, t_len, &device)?;
            if poison_step == Some(step) {
                b.feats = b.feats.mul_scalar(f32::NAN);
            }
            lr = schedule.lr(step);
            let (next, losses) = learner.step(&setup, b, &crops, use_con, lr, &mut rng)?;
            learner = next;
            let con = losses.con;
            let (c, r) = (losses.cls, losses.reg);
            sum_cls = Some(sum_cls.map_or(c.clone(), |s| s + c.clone()));
            sum_reg = Some(sum_reg.map_or(r.clone(), |s| s + r.clone()));
            if let Some(cv) = &con {
                n_con += 1;
                let cv = cv.clone();
                sum_con = Some(sum_con.map_or(cv.clone(), |s| s + cv));
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
                    total_loss: cls + loss_cfg.loss_weight.max(0.0) as f64 * reg + conv.unwrap_or(0.0),
                    sec_per_iter: started.elapsed().as_secs_f64() / (it + 1 - first_it) as f64,
                };
                bar.set_message(format!(
                    "loss {:.4} (cls {:.4} reg {:.4}) lr {:.2e}",
                    line.total_loss, cls, reg, lr
                ));
                write_log(&line)?;
            }
            step += 1;
            bar.inc(1);
            if interrupt::requested() && it + 1 < iters {
                bar.finish_and_clear();
                let sum = |t: &Option<Tensor<1>>| t.as_ref().map(scalar);
                let mid = MidEpoch {
                    iters_done: it + 1,
                    rng_word_pos: rng.get_word_pos(),
                    sum_cls: sum(&sum_cls).unwrap_or(0.0),
                    sum_reg: sum(&sum_reg).unwrap_or(0.0),
                    sum_con: sum(&sum_con),
                    n_con,
                };
                save_state(
                    &opts.run_dir,
                    &learner,
                    ResumeState {
                        epochs_done: epoch,
                        step,
                        normalizer: learner.normalizer,
                        config_hash: hash.clone(),
                        seed: opts.seed,
                        mid_epoch: Some(mid),
                    },
                )?;
                return Err(TrainError::Interrupted {
                    run_dir: opts.run_dir.clone(),
                    epoch: epoch + 1,
                    steps: step,
                });
            }
        }
        bar.finish_and_clear();
        let avg = |s: Option<Tensor<1>>, k: usize| s.map(|t| scalar(&t) / k.max(1) as f64);
        let cls = avg(sum_cls, iters).unwrap_or(f64::NAN);
        let reg = avg(sum_reg, iters).unwrap_or(f64::NAN);
        let conv = avg(sum_con, n_con);
        if !(cls.is_finite() && reg.is_finite() && conv.is_none_or(f64::is_finite)) {
            return Err(TrainError::NonFinite {
                epoch: epoch + 1,
                step,
                cls,
                reg,
                con: conv,
                videos: Vec::new(),
            });
        }
        let line = LogLine {
            kind: "epoch".into(),
            epoch: epoch + 1,
            step: step.saturating_sub(1),
            lr,
            cls_loss: cls,
            reg_loss: reg,
            con_loss: conv,
            total_loss: cls + loss_cfg.loss_weight.max(0.0) as f64 * reg + conv.unwrap_or(0.0),
            sec_per_iter: started.elapsed().as_secs_f64() / (iters - first_it).max(1) as f64,
        };
        write_log(&line)?;

        let epoch1 = epoch + 1;
        if cfg.saved_epochs().contains(&epoch1) {
            let path = checkpoint::epoch_file(&opts.run_dir, epoch1);
            let meta = CheckpointMeta {
                epoch: epoch1,
                config_hash: hash.clone(),
                xca_version: env!("CARGO_PKG_VERSION").into(),
                weights: "ema".into(),
            };
            checkpoint::save(&learner.ema, &path, &meta)?;
            checkpoints.push(path);
        }
        save_state(
            &opts.run_dir,
            &learner,
            ResumeState {
                epochs_done: epoch1,
                step,
                normalizer: learner.normalizer,
                config_hash: hash.clone(),
                seed: opts.seed,
                mid_epoch: None,
            },
        )?;
        on_epoch(&line);
        last_epoch = Some(line);
        if interrupt::requested() && epoch1 < end_epoch {
            return Err(TrainError::Interrupted {
                run_dir: opts.run_dir.clone(),
                epoch: epoch1,
                steps: step,
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

/// Write the learner (model, EMA, optimiser) and `state` as the run's resumable state.
fn save_state(run_dir: &Path, learner: &Learner, state: ResumeState) -> Result<(), TrainError> {
    let Learner { model, ema, optim, .. } = learner;
    let dir = state_dir(run_dir);
    build_dir_atomic(&dir, |tmp: &Path| -> Result<(), TrainError> {
        let io = |p: &Path, e: String| TrainError::Io {
            path: p.to_path_buf(),
            reason: e,
        };
        let mp = tmp.join("model.bpk");
        model
            .clone()
            .valid()
            .save_file(&mp)
            .map_err(|e| io(&mp, e.to_string()))?;
        let ep = tmp.join("ema.bpk");
        ema.clone().save_file(&ep).map_err(|e| io(&ep, e.to_string()))?;
        let op = tmp.join("optim.bin");
        let bytes = optim.into_bytes().map_err(|e| io(&op, e.to_string()))?;
        write_atomic(&op, &bytes)?;
        write_json_atomic(&tmp.join("state.json"), &state)?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A state as `xca train` writes it after `epochs_done` epochs of 96 steps (plus
    /// `mid` steps of the next, as Ctrl-C saves it).
    fn written(epochs_done: usize, mid: usize) -> ResumeState {
        ResumeState {
            epochs_done,
            step: epochs_done * 96 + mid,
            normalizer: LossNormalizer {
                value: 41.5,
                momentum: 0.9,
            },
            config_hash: "0123456789abcdef".into(),
            seed: 7,
            mid_epoch: (mid > 0).then_some(MidEpoch {
                iters_done: mid,
                rng_word_pos: 12_345,
                sum_cls: 3.5,
                sum_reg: 1.25,
                sum_con: Some(0.5),
                n_con: mid,
            }),
        }
    }

    #[test]
    fn states_xca_writes_pass_and_absurd_counters_are_refused_naming_the_field() {
        for (done, mid) in [(0, 0), (1, 0), (3, 0), (0, 1), (2, 95)] {
            assert_eq!(written(done, mid).validate(3, 96), Ok(()), "{done} {mid}");
        }
        let mut no_con = written(1, 5);
        if let Some(m) = &mut no_con.mid_epoch {
            m.sum_con = None;
            m.n_con = 0;
        }
        assert_eq!(no_con.validate(3, 96), Ok(()));

        let check = |st: ResumeState, want: &str| {
            let e = st.validate(3, 96).expect_err(want);
            assert!(e.contains(want), "{e}");
        };
        let mut st = written(1, 0);
        st.epochs_done = usize::MAX;
        check(
            st,
            "epochs_done is 18446744073709551615, more than the 3 epochs the config trains",
        );
        let mut st = written(1, 0);
        st.step = 999;
        check(st, "step is 999, but 1 epochs of 96 steps make 96");
        let mut st = written(1, 7);
        st.step = 96;
        check(st, "step is 96, but 1 epochs of 96 steps and 7 more make 103");
        for v in [-1.0, 0.0, f64::NAN, f64::INFINITY] {
            let mut st = written(1, 0);
            st.normalizer.value = v;
            check(st, &format!("normalizer.value is {v}; it must be a positive number"));
        }
        let mut st = written(1, 0);
        st.normalizer.momentum = 1.5;
        check(st, "normalizer.momentum is 1.5");
        check(written(2, 96), "mid_epoch.iters_done is 96; it must lie in 1..96");
        let mut st = written(3, 4);
        st.step = 3 * 96 + 4;
        check(st, "mid_epoch is set, but all 3 epochs are done");
        let mut st = written(1, 4);
        if let Some(m) = &mut st.mid_epoch {
            m.n_con = 5;
        }
        check(st, "mid_epoch.n_con is 5, more than the 4 steps done");
        let mut st = written(1, 4);
        if let Some(m) = &mut st.mid_epoch {
            m.sum_con = None;
        }
        check(st, "mid_epoch.sum_con is absent, but mid_epoch.n_con is 4");
        let mut st = written(1, 4);
        if let Some(m) = &mut st.mid_epoch {
            m.sum_reg = f64::NAN;
        }
        check(st, "mid_epoch.sum_reg is NaN");
        let mut st = written(1, 4);
        if let Some(m) = &mut st.mid_epoch {
            m.sum_cls = -2.0;
        }
        check(st, "mid_epoch.sum_cls is -2");
    }

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
