//! Training (SPEC §4): label assignment, losses, learning-rate schedule, AdamW groups,
//! global-norm gradient clipping, the weight EMA, checkpoints and the training loop.

pub mod assign;
pub mod checkpoint;
pub mod clip;
pub mod ema;
pub mod interrupt;
pub mod loss;
pub mod optim;
pub mod step;
pub mod trainer;
