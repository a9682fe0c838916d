//! Training maths that does not depend on the network's internals (SPEC §4.1–§4.3):
//! label assignment, losses, learning-rate schedule, AdamW groups, global-norm gradient
//! clipping and the weight EMA. The training loop and checkpoints build on these.

pub mod assign;
pub mod clip;
pub mod ema;
pub mod loss;
pub mod optim;
