//! Decoding (SPEC §6.1): per-level classification logits and regression offsets of one
//! video → scored candidate segments in grid units, before NMS.

use super::InferError;

/// The head outputs of one pyramid level for one video, on the host.
#[derive(Debug, Clone, PartialEq)]
pub struct LevelOutput {
    /// The level's stride `s_l` in grid units (1, 2, 4, …). Point `i` sits at `t = i·s_l`.
    pub stride: f32,
    /// Classification logits `[T_l · C]`, laid out `t·C + c` (the head's `[T_l, C]` row-major).
    pub logits: Vec<f32>,
    /// Regression offsets `[T_l · 2]`, laid out `t·2 + {0: left, 1: right}`, in stride units.
    pub offsets: Vec<f32>,
    /// Number of valid (unpadded) steps at this level; the mask is `t < valid_len`.
    pub valid_len: usize,
}

/// The `test_cfg` values decoding needs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DecodeConfig {
    /// Number of classes C.
    pub num_classes: usize,
    /// Keep probabilities strictly above this (`pre_nms_thresh`, 0.001).
    pub pre_nms_thresh: f32,
    /// Keep at most this many candidates per level (`pre_nms_topk`, 2000).
    pub pre_nms_topk: usize,
    /// Keep segments strictly longer than this, in grid units (`duration_thresh`, 0.05).
    pub duration_thresh: f32,
}

/// Scored segments of one video. Parallel vectors of equal length.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Candidates {
    /// `[start, end]`, in grid units before [`super::keyframes::grid_to_seconds`], seconds after.
    pub segs: Vec<[f32; 2]>,
    /// Scores (sigmoid probabilities, possibly decayed by soft-NMS).
    pub scores: Vec<f32>,
    /// Class ids in `0..C`.
    pub labels: Vec<usize>,
}

impl Candidates {
    /// Number of candidates.
    pub fn len(&self) -> usize {
        self.segs.len()
    }

    /// True when there are no candidates.
    pub fn is_empty(&self) -> bool {
        self.segs.is_empty()
    }

    /// The same candidates, best score first (stable: equal scores keep their order).
    pub fn sorted_by_score(&self) -> Candidates {
        let mut idx: Vec<usize> = (0..self.len()).collect();
        idx.sort_by(|&a, &b| self.scores[b].total_cmp(&self.scores[a]));
        Candidates {
            segs: idx.iter().map(|&i| self.segs[i]).collect(),
            scores: idx.iter().map(|&i| self.scores[i]).collect(),
            labels: idx.iter().map(|&i| self.labels[i]).collect(),
        }
    }

    fn push(&mut self, seg: [f32; 2], score: f32, label: usize) {
        self.segs.push(seg);
        self.scores.push(score);
        self.labels.push(label);
    }
}

/// Logistic sigmoid in float32, as `torch.sigmoid` computes it.
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Decode one level (SPEC §6.1 steps 1–4): `p = σ(logit)·mask`, keep `p > pre_nms_thresh`,
/// sort by score (descending; ties keep index order), keep the top `pre_nms_topk`, build
/// `[t − off_l·s, t + off_r·s]` and keep segments longer than `duration_thresh`.
pub fn decode_level(level: &LevelOutput, cfg: &DecodeConfig) -> Result<Candidates, InferError> {
    let c = cfg.num_classes;
    if c == 0 {
        return Err(InferError::Shape("num_classes is 0".into()));
    }
    if !level.logits.len().is_multiple_of(c) {
        return Err(InferError::Shape(format!(
            "logits have {} values, not a multiple of {c} classes",
            level.logits.len()
        )));
    }
    let t_len = level.logits.len() / c;
    if level.offsets.len() != 2 * t_len {
        return Err(InferError::Shape(format!(
            "offsets have {} values, expected 2 x {t_len} steps",
            level.offsets.len()
        )));
    }
    if level.valid_len > t_len {
        return Err(InferError::Shape(format!(
            "valid length {} exceeds {t_len} steps",
            level.valid_len
        )));
    }

    // Steps 1–2 (padded steps get p = 0, the mask).
    let mut kept: Vec<(usize, f32)> = (0..t_len * c)
        .map(|i| {
            (
                i,
                if i / c < level.valid_len {
                    sigmoid(level.logits[i])
                } else {
                    0.0
                },
            )
        })
        .filter(|&(_, p)| p > cfg.pre_nms_thresh)
        .collect();
    kept.sort_by(|a, b| b.1.total_cmp(&a.1));
    kept.truncate(cfg.pre_nms_topk);

    // Steps 3–4.
    let mut out = Candidates::default();
    for (i, p) in kept {
        let (t_idx, label) = (i / c, i % c);
        let t = t_idx as f32 * level.stride;
        let left = t - level.offsets[2 * t_idx] * level.stride;
        let right = t + level.offsets[2 * t_idx + 1] * level.stride;
        if right - left > cfg.duration_thresh {
            out.push([left, right], p, label);
        }
    }
    Ok(out)
}

/// Decode all levels of one video and concatenate them in level order (SPEC §6.1 step 5).
pub fn decode(levels: &[LevelOutput], cfg: &DecodeConfig) -> Result<Candidates, InferError> {
    let mut all = Candidates::default();
    for (l, level) in levels.iter().enumerate() {
        let c = decode_level(level, cfg).map_err(|e| e.at_level(l))?;
        all.segs.extend(c.segs);
        all.scores.extend(c.scores);
        all.labels.extend(c.labels);
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> DecodeConfig {
        DecodeConfig {
            num_classes: 2,
            pre_nms_thresh: 0.001,
            pre_nms_topk: 2000,
            duration_thresh: 0.05,
        }
    }

    fn logit(p: f32) -> f32 {
        (p / (1.0 - p)).ln()
    }

    #[test]
    fn decodes_a_hand_made_level() {
        // 3 steps, stride 2; step 2 is padding.
        let level = LevelOutput {
            stride: 2.0,
            logits: vec![
                logit(0.5),
                logit(0.0005),
                logit(0.2),
                logit(0.9),
                logit(0.99),
                logit(0.99),
            ],
            offsets: vec![1.0, 2.0, 0.5, 0.01, 3.0, 3.0],
            valid_len: 2,
        };
        let c = decode_level(&level, &cfg()).unwrap();
        // kept: (t0,c0)=0.5, (t1,c0)=0.2, (t1,c1)=0.9; (t0,c1) below threshold, t2 padded.
        // sorted: 0.9 (t1,c1), 0.5 (t0,c0), 0.2 (t1,c0).
        // t1 = 2: segment [2 - 0.5*2, 2 + 0.01*2] = [1, 2.02], length 1.02 > 0.05.
        // t0 = 0: [0 - 2, 0 + 4] = [-2, 4].
        assert_eq!(c.labels, vec![1, 0, 0]);
        assert_eq!(c.segs, vec![[1.0, 2.02], [-2.0, 4.0], [1.0, 2.02]]);
        let want = [0.9f32, 0.5, 0.2];
        for (s, w) in c.scores.iter().zip(want) {
            assert!((s - w).abs() < 1e-6, "{s} vs {w}");
        }
    }

    #[test]
    fn short_segments_and_topk_are_dropped() {
        let level = LevelOutput {
            stride: 1.0,
            logits: vec![logit(0.3), logit(0.6), logit(0.4), logit(0.7)],
            offsets: vec![0.01, 0.01, 1.0, 1.0],
            valid_len: 2,
        };
        let mut cfg = cfg();
        cfg.pre_nms_topk = 3;
        let c = decode_level(&level, &cfg).unwrap();
        // top-3 by score: 0.7 (t1,c1), 0.6 (t0,c1), 0.4 (t1,c0); t0's segment is 0.02 long -> dropped.
        assert_eq!(c.labels, vec![1, 0]);
        assert_eq!(c.segs, vec![[0.0, 2.0], [0.0, 2.0]]);
    }

    #[test]
    fn equal_scores_keep_index_order() {
        let level = LevelOutput {
            stride: 1.0,
            logits: vec![0.0; 4],
            offsets: vec![1.0; 4],
            valid_len: 2,
        };
        let c = decode_level(&level, &cfg()).unwrap();
        assert_eq!(c.labels, vec![0, 1, 0, 1]);
        assert_eq!(c.segs[2], [0.0, 2.0]);
    }

    #[test]
    fn bad_shapes_are_errors() {
        let level = LevelOutput {
            stride: 1.0,
            logits: vec![0.0; 4],
            offsets: vec![1.0; 3],
            valid_len: 2,
        };
        let e = decode(&[level], &cfg()).unwrap_err().to_string();
        assert!(e.contains("level 0") && e.contains("offsets"), "{e}");
        let level = LevelOutput {
            stride: 1.0,
            logits: vec![0.0; 4],
            offsets: vec![1.0; 4],
            valid_len: 3,
        };
        assert!(decode_level(&level, &cfg()).is_err());
    }

    #[test]
    fn candidates_sort_best_first_and_keep_ties_in_order() {
        let c = Candidates {
            segs: vec![[0.0, 1.0], [1.0, 2.0], [2.0, 3.0], [3.0, 4.0]],
            scores: vec![0.2, 0.9, 0.5, 0.9],
            labels: vec![0, 1, 0, 1],
        };
        let s = c.sorted_by_score();
        assert_eq!(s.scores, [0.9, 0.9, 0.5, 0.2]);
        assert_eq!(s.segs, [[1.0, 2.0], [3.0, 4.0], [2.0, 3.0], [0.0, 1.0]]);
        assert_eq!(s.labels, [1, 1, 0, 0]);
    }
}
