//! Inference post-processing on the host (SPEC §6): decode the heads' outputs into
//! candidate segments, suppress duplicates (soft-NMS + voting), convert grid units to
//! seconds and derive the start/apex/end keyframes. Plain Rust values in and out, once
//! per video; nothing here touches a tensor.

pub mod decode;
pub mod keyframes;
pub mod nms;

pub use decode::{Candidates, DecodeConfig, LevelOutput, decode};
pub use keyframes::{DecodeSetting, Fallback, GridToSeconds, Keyframes};
pub use nms::{NmsConfig, NmsMethod, batched_nms};

/// A post-processing input that does not fit (shapes, settings).
#[derive(Debug, thiserror::Error)]
pub enum InferError {
    /// Head outputs whose sizes do not agree.
    #[error("head output shape: {0}")]
    Shape(String),
    /// A post-processing setting out of range.
    #[error("post-processing setting: {0}")]
    Config(String),
}

impl InferError {
    /// Prefix the message with the pyramid level it came from.
    pub(crate) fn at_level(self, level: usize) -> Self {
        match self {
            Self::Shape(m) => Self::Shape(format!("level {level}: {m}")),
            Self::Config(m) => Self::Config(format!("level {level}: {m}")),
        }
    }
}

/// The whole of SPEC §6.1–§6.3 for one video: decode every level, run [`batched_nms`],
/// convert to seconds and clip. The result is sorted by score (unless NMS is `none`).
pub fn postprocess(
    levels: &[LevelOutput],
    decode_cfg: &DecodeConfig,
    nms_cfg: &NmsConfig,
    grid: &GridToSeconds,
) -> Result<Candidates, InferError> {
    let cands = decode(levels, decode_cfg)?;
    let mut out = batched_nms(&cands, nms_cfg);
    out.segs = keyframes::grid_to_seconds(&out.segs, grid);
    Ok(out)
}
