//! The resumable state of a run (`<run>/state/`): model, EMA, optimiser and the counters
//! of [`ResumeState`], written after every epoch and on Ctrl-C; checked against the run it
//! is to continue and loaded back by [`restore`].

use std::path::{Path, PathBuf};

use burn::module::Module;
use serde::{Deserialize, Serialize};

use super::error::TrainError;
use super::log;
use super::loss::LossNormalizer;
use super::step::Learner;
use crate::fsio::{build_dir_atomic, limits, read_bounded, write_atomic, write_json_atomic};
use crate::model::Network;

/// The resumable state beside the model/EMA/optimiser files.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct ResumeState {
    pub(super) epochs_done: usize,
    pub(super) step: usize,
    pub(super) normalizer: LossNormalizer,
    pub(super) config_hash: String,
    pub(super) seed: u64,
    /// Set when the state was saved inside epoch `epochs_done + 1` (Ctrl-C).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) mid_epoch: Option<MidEpoch>,
}

impl ResumeState {
    /// Check every counter against the run it is to continue: `total_epochs` epochs of
    /// `iters` steps each. A state that xca wrote always passes; a damaged or hand-edited
    /// one is refused naming the field, instead of resuming into garbage (a run "finished"
    /// after 2⁶⁴−1 epochs, a learning rate read from step 999 of an epoch of 96, a negative
    /// loss normaliser).
    pub(super) fn validate(&self, total_epochs: usize, iters: usize) -> Result<(), String> {
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
pub(super) struct MidEpoch {
    pub(super) iters_done: usize,
    pub(super) rng_word_pos: u128,
    pub(super) sum_cls: f64,
    pub(super) sum_reg: f64,
    pub(super) sum_con: Option<f64>,
    pub(super) n_con: usize,
}

/// The state directory of a run folder.
pub(super) fn state_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("state")
}

/// Where a run starts: the fresh model or the saved state of an earlier run.
pub(super) struct Start {
    pub(super) model: Network,
    pub(super) ema: Network,
    /// The saved optimiser (none for a fresh run).
    pub(super) optim_bytes: Option<Vec<u8>>,
    pub(super) normalizer: LossNormalizer,
    /// Epochs already done.
    pub(super) epoch: usize,
    /// Global steps already done.
    pub(super) step: usize,
    /// Set when the state was saved inside epoch `epoch + 1`.
    pub(super) mid_epoch: Option<MidEpoch>,
}

/// With `resume` and a saved state in `run_dir`: check it against this run (config hash,
/// seed, counters for `total_epochs` epochs of `iters` steps), load it into `fresh` and trim
/// the log to it. Otherwise start from `fresh` and remove an old log.
pub(super) fn restore(
    run_dir: &Path,
    resume: bool,
    seed: u64,
    hash: &str,
    (total_epochs, iters): (usize, usize),
    fresh: Start,
) -> Result<Start, TrainError> {
    let sdir = state_dir(run_dir);
    let log_path = log::log_path(run_dir);
    if resume {
        // A kill in the middle of swapping in a new state leaves the previous one aside.
        crate::fsio::recover_dir(&sdir)?;
    }
    if !(resume && sdir.join("state.json").exists()) {
        log::remove_old(&log_path)?;
        return Ok(fresh);
    }
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
    if st.seed != seed {
        return Err(bad(format!(
            "it was written with seed {} and this run has seed {seed}; resume with --seed {}",
            st.seed, st.seed
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
    let model = fresh
        .model
        .try_load_record(record("model.bpk")?)
        .map_err(|e| bad(format!("model.bpk: {e}")))?;
    let ema = fresh
        .ema
        .try_load_record(record("ema.bpk")?)
        .map_err(|e| bad(format!("ema.bpk: {e}")))?;
    let optim_bytes = Some(read_bounded(&sdir.join("optim.bin"), limits::CHECKPOINT)?);
    log::keep_lines_of_state(&log_path, st.epochs_done, st.step, st.mid_epoch.is_some())?;
    Ok(Start {
        model,
        ema,
        optim_bytes,
        normalizer: st.normalizer,
        epoch: st.epochs_done,
        step: st.step,
        mid_epoch: st.mid_epoch,
    })
}

/// Write the learner (model, EMA, optimiser) and `state` as the run's resumable state.
pub(super) fn save_state(run_dir: &Path, learner: &Learner, state: ResumeState) -> Result<(), TrainError> {
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
}
