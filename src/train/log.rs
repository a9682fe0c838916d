//! The run's `log.jsonl`: one [`LogLine`] per logged step and per epoch, appended as
//! training goes; a resumed run first drops the lines of the steps it will redo.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::TrainError;
use crate::fsio::{ReadError, limits, read_bounded, write_atomic};

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

/// The log file of a run folder.
pub fn log_path(run_dir: &Path) -> PathBuf {
    run_dir.join("log.jsonl")
}

/// The log, open for appending.
pub(super) struct RunLog {
    file: std::fs::File,
    path: PathBuf,
}

impl RunLog {
    /// Open (creating it if needed) the log at `path` for appending.
    pub(super) fn open(path: &Path) -> Result<Self, TrainError> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| TrainError::Io {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
        })
    }

    /// Append one line.
    pub(super) fn write(&mut self, line: &LogLine) -> Result<(), TrainError> {
        let mut s = serde_json::to_string(line).unwrap_or_default();
        s.push('\n');
        self.file.write_all(s.as_bytes()).map_err(|e| TrainError::Io {
            path: self.path.clone(),
            reason: e.to_string(),
        })
    }
}

/// A run killed mid-epoch logged steps that the resumed run will redo: keep only the lines
/// that the state after `epochs_done` epochs (and, with `mid_epoch`, `step` global steps)
/// includes, so the log has each step once.
pub(super) fn keep_lines_of_state(
    path: &Path,
    epochs_done: usize,
    step: usize,
    mid_epoch: bool,
) -> Result<(), TrainError> {
    let log_bytes = match read_bounded(path, limits::LOG) {
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
                    line.epoch <= epochs_done
                        || (mid_epoch && line.kind == "step" && line.epoch == epochs_done + 1 && line.step < step)
                })
            })
            .map(|l| format!("{l}\n"))
            .collect();
        write_atomic(path, kept.as_bytes())?;
    }
    Ok(())
}

/// A fresh run replaces an old log.
pub(super) fn remove_old(path: &Path) -> Result<(), TrainError> {
    if path.exists() {
        std::fs::remove_file(path).map_err(|e| TrainError::Io {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    }
    Ok(())
}
