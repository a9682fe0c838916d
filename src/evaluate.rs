//! Inference over videos and scoring of a split (SPEC §6–§7): the network's outputs leave
//! the device once per video, then decoding, NMS, keyframes and metrics run on the host.

use std::path::Path;

use burn::tensor::{Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::config::Config;
use crate::config::adapt;
use crate::dataset::batch::{BatchError, Window, collate};
use crate::dataset::{Features, SplitData};
use crate::infer::{Candidates, InferError, LevelOutput, postprocess};
use crate::metrics::anet::{Detection, detections_from};
use crate::metrics::io::{GroundTruth, ReadError, read_ground_truth};
use crate::metrics::score::{Protocol, ScoreError, ScoreReport, score};
use crate::model::{ModelError, Network, draw_patch_centres};

/// Inference or scoring that failed.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Batch(#[from] BatchError),
    #[error(transparent)]
    Infer(#[from] InferError),
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error(transparent)]
    Score(#[from] ScoreError),
    #[error("video '{video}': {reason}")]
    Video { video: String, reason: String },
}

/// Raw head outputs of one video, on the host.
#[derive(Debug, Clone)]
pub struct VideoOutput {
    /// One entry per pyramid level.
    pub levels: Vec<LevelOutput>,
}

fn host_vec(t: Tensor<1>, video: &str) -> Result<Vec<f32>, EvalError> {
    let err = |reason: String| EvalError::Video {
        video: video.to_string(),
        reason: format!("reading outputs: {reason}"),
    };
    crate::host::read(t)
        .map_err(err)?
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| err(format!("{e:?}")))
}

/// Run the network on one video of any length (padded to `cfg.inference_len`).
///
/// `patch_centre` is used when the model has `random_patch` on.
pub fn run_video(
    model: &Network,
    cfg: &Config,
    feats: &Features,
    patch_centre: Option<(usize, usize)>,
    device: &Device,
    video: &str,
) -> Result<VideoOutput, EvalError> {
    let len = cfg.inference_len(feats.rows);
    let batch = collate(&[Window::whole(feats)], len, device)?;
    let centres = patch_centre.map(|c| vec![c]);
    let out = model.infer(batch.feats, batch.mask, centres.as_deref())?;
    let strides = cfg.fpn_strides();
    // Every level's logits and offsets, flattened into one tensor: one read back to the
    // host per video rather than two per level (each read is a sync on a GPU).
    let parts: Vec<Tensor<1>> = out
        .cls_logits
        .into_iter()
        .zip(out.offsets)
        .flat_map(|(logits, offsets)| [logits.flatten::<1>(0, 2), offsets.flatten::<1>(0, 2)])
        .collect();
    let sizes: Vec<usize> = parts.iter().map(|p| p.dims()[0]).collect();
    let all = host_vec(Tensor::cat(parts, 0), video)?;
    let mut rest = all.as_slice();
    let mut take = |n: usize| {
        let (head, tail) = rest.split_at(n.min(rest.len()));
        rest = tail;
        head.to_vec()
    };
    let levels = sizes
        .chunks(2)
        .enumerate()
        .map(|(l, n)| {
            let stride = strides.get(l).copied().unwrap_or(1);
            LevelOutput {
                stride: stride as f32,
                logits: take(n[0]),
                offsets: take(n.get(1).copied().unwrap_or(0)),
                // Nearest-neighbour mask downsampling keeps step i when i·stride < rows.
                valid_len: feats.rows.div_ceil(stride),
            }
        })
        .collect();
    Ok(VideoOutput { levels })
}

/// Frame-wise class scores of one video, for plots: per class, per feature row `r < rows`,
/// the largest sigmoid probability among the points of every level that cover `r` (point
/// `i` of a level with stride `s` covers rows `[i·s, (i+1)·s)`; padded points beyond the
/// level's `valid_len` are ignored). Rows no point covers are NaN.
pub fn row_scores(out: &VideoOutput, rows: usize, num_classes: usize) -> Vec<Vec<f32>> {
    let mut scores = vec![vec![f32::NAN; rows]; num_classes];
    for level in &out.levels {
        let stride = (level.stride.round() as usize).max(1);
        let points = level.valid_len.min(level.logits.len() / num_classes.max(1));
        for i in 0..points {
            let lo = i * stride;
            if lo >= rows {
                break;
            }
            let hi = ((i + 1) * stride).min(rows);
            for (c, class_scores) in scores.iter_mut().enumerate() {
                let p = 1.0 / (1.0 + (-level.logits[i * num_classes + c]).exp());
                for v in &mut class_scores[lo..hi] {
                    // f32::max ignores NaN, so the first covering point initialises the row.
                    *v = v.max(p);
                }
            }
        }
    }
    scores
}

/// Detections (seconds) of one video: decode, NMS, grid → seconds (SPEC §6.1–6.3).
pub fn detect(cfg: &Config, out: &VideoOutput, fps: f64, duration: Option<f64>) -> Result<Candidates, EvalError> {
    Ok(postprocess(
        &out.levels,
        &adapt::decode_config(cfg),
        &adapt::nms_config(cfg),
        &adapt::grid_to_seconds(cfg, fps, duration),
    )?)
}

/// Inference-time random-patch centres: one per video, in order, from the run's seed, so
/// the same seed gives the same detections (SPEC §3.1 step 5).
pub fn patch_centres(cfg: &Config, seed: u64, count: usize, side: usize) -> Vec<Option<(usize, usize)>> {
    if !cfg.model.random_patch {
        return vec![None; count];
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    draw_patch_centres(&mut rng, count, side)
        .into_iter()
        .map(Some)
        .collect()
}

/// Detections of every video of a split, in split order.
pub fn detect_split(
    model: &Network,
    cfg: &Config,
    data: &SplitData,
    seed: u64,
    device: &Device,
    mut on_video: impl FnMut(&str),
) -> Result<Vec<(String, Candidates)>, EvalError> {
    let centres = patch_centres(cfg, seed, data.videos.len(), model.image_side());
    let mut out = Vec::with_capacity(data.videos.len());
    for (v, centre) in data.videos.iter().zip(centres) {
        let raw = run_video(model, cfg, &v.feats, centre, device, &v.id)?;
        out.push((v.id.clone(), detect(cfg, &raw, v.fps, Some(v.duration))?));
        on_video(&v.id);
    }
    Ok(out)
}

/// Both protocols' tables for a split's detections.
#[derive(Debug, Clone)]
pub struct SplitScores {
    /// Top-1 per class per video (what the paper's Table 1 means).
    pub paper: ScoreReport,
    /// Every detection (the standard ActivityNet protocol).
    pub full: ScoreReport,
}

/// Score detections against the annotation file's `split` under both protocols.
pub fn score_split(gt: &GroundTruth, split: &str, dets: &[(String, Candidates)]) -> Result<SplitScores, EvalError> {
    let all: Vec<Detection> = dets.iter().flat_map(|(v, c)| detections_from(v, c)).collect();
    Ok(SplitScores {
        paper: score(gt, split, &all, Protocol::Paper)?,
        full: score(gt, split, &all, Protocol::Full)?,
    })
}

/// Read the ground truth a config points at.
pub fn ground_truth(cfg: &Config) -> Result<GroundTruth, EvalError> {
    Ok(read_ground_truth(Path::new(&cfg.dataset.json_file))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logit(p: f32) -> f32 {
        (p / (1.0 - p)).ln()
    }

    #[test]
    fn row_scores_take_the_max_over_covering_levels() {
        // 5 rows, 2 classes. Level 0 (stride 1) covers each row; level 1 (stride 2) covers
        // rows [0,2), [2,4), [4,6)∩[0,5); its third point is padding (valid_len 2).
        let l0: Vec<f32> = [0.1, 0.9, 0.2, 0.8, 0.3, 0.7, 0.4, 0.6, 0.5, 0.5]
            .iter()
            .map(|&p| logit(p))
            .collect();
        let l1: Vec<f32> = [0.6, 0.05, 0.1, 0.95, 0.99, 0.99].iter().map(|&p| logit(p)).collect();
        let out = VideoOutput {
            levels: vec![
                LevelOutput {
                    stride: 1.0,
                    logits: l0,
                    offsets: vec![0.0; 10],
                    valid_len: 5,
                },
                LevelOutput {
                    stride: 2.0,
                    logits: l1,
                    offsets: vec![0.0; 6],
                    valid_len: 2,
                },
            ],
        };
        let s = row_scores(&out, 5, 2);
        let want = [[0.6, 0.6, 0.3, 0.4, 0.5], [0.9, 0.8, 0.95, 0.95, 0.5]];
        for c in 0..2 {
            for r in 0..5 {
                assert!(
                    (s[c][r] - want[c][r]).abs() < 1e-5,
                    "class {c} row {r}: {} vs {}",
                    s[c][r],
                    want[c][r]
                );
            }
        }
        // A level that starts at stride 2 only (fpn_start_level > 0) still covers every row;
        // rows beyond every valid point stay NaN.
        let out = VideoOutput {
            levels: vec![LevelOutput {
                stride: 2.0,
                logits: vec![0.0; 2],
                offsets: vec![0.0; 4],
                valid_len: 2,
            }],
        };
        let s = row_scores(&out, 5, 1);
        assert_eq!(&s[0][..4], &[0.5; 4]);
        assert!(s[0][4].is_nan());
    }
}
