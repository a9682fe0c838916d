//! [`TrainError`]: everything that stops training. Its own file so that the step and the
//! epoch loop can both name it without importing each other.

use std::path::PathBuf;

use super::assign::AssignError;
use super::checkpoint::CheckpointError;
use super::ema::EmaError;
use super::loss::LossError;
use crate::dataset::batch::BatchError;
use crate::fsio::{ReadError, WriteError};
use crate::model::ModelError;

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
    #[error("loader.batch_size {batch} cannot be shared by {devices} devices: each needs at least one video per batch")]
    TooFewPerDevice { batch: usize, devices: usize },
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
