//! Training (SPEC §4): label assignment, losses, learning-rate schedule, AdamW groups,
//! global-norm gradient clipping, the weight EMA, checkpoints and the training loop.
//!
//! Imports go one way: [`trainer`] (the epoch loop) → [`resume`], [`log`] → [`step`] (one
//! iteration) → the pieces; [`error`] is named by all of them.

pub mod adapt;
pub mod assign;
pub mod checkpoint;
pub mod clip;
pub mod ema;
pub mod error;
pub mod interrupt;
pub mod log;
pub mod loss;
pub mod optim;
pub mod resume;
pub mod step;
pub mod trainer;

pub use error::TrainError;
