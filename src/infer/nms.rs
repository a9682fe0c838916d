//! Non-maximum suppression and voting (SPEC §6.2), a float32 re-implementation of the
//! original's `batched_nms` (ActionFormer's `nms_1d_cpu` kernels plus `seg_voting`).

use std::str::FromStr;

use super::InferError;
use super::decode::Candidates;
use crate::geometry::{tiou, tiou_nms};

/// Which suppression runs after decoding: the config's `test_cfg.nms_method`.
pub use crate::config::NmsMethod;

impl FromStr for NmsMethod {
    type Err = InferError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "soft" => Ok(Self::Soft),
            "hard" => Ok(Self::Hard),
            "none" => Ok(Self::None),
            other => Err(InferError::Config(format!(
                "nms_method {other:?} is not one of soft, hard, none"
            ))),
        }
    }
}

/// How the soft-NMS kernel decays the score of a segment with NMS-IoU `o` to the picked one
/// (the original's `method` 0, 1, 2).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decay {
    /// Method 0: score × 0 when `o ≥ iou_threshold`.
    Hard,
    /// Method 1: score × (1 − o) when `o ≥ iou_threshold`.
    Linear,
    /// Method 2: score × exp(−o²/σ) for every remaining segment (`iou_threshold` unused).
    Gaussian {
        /// σ (`nms_sigma`, 0.5).
        sigma: f32,
    },
}

/// The `test_cfg` values post-processing needs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NmsConfig {
    /// Soft, hard or none.
    pub method: NmsMethod,
    /// `iou_threshold` (0.1); hard NMS only (the Gaussian kernel ignores it).
    pub iou_threshold: f32,
    /// `min_score` (0.001): soft-NMS drops segments decayed below it; hard NMS keeps
    /// only scores strictly above it (when it is > 0).
    pub min_score: f32,
    /// `max_seg_num` (200): cap per NMS call and on the final sorted list.
    pub max_seg_num: usize,
    /// `multiclass_nms`: NMS per class (ascending class order, no voting) instead of class-agnostic.
    pub multiclass: bool,
    /// `nms_sigma` (0.5) of the Gaussian decay.
    pub sigma: f32,
    /// `voting_thresh` (0.7); voting runs (class-agnostic only) when it is > 0.
    pub voting_thresh: f32,
}

/// The original's iterative soft-NMS kernel (`softnms_1d_cpu`), operation for operation:
/// pick the highest remaining score (first on ties), emit it, decay every later segment,
/// and drop a segment whose score falls below `min_score` by moving the last remaining
/// segment into its slot. The first pick is emitted whatever its score.
///
/// Returns `(index into the input, score at emission)` in emission order (not necessarily
/// sorted, since later picks were decayed).
pub fn soft_nms(
    segs: &[[f32; 2]],
    scores: &[f32],
    iou_threshold: f32,
    min_score: f32,
    decay: Decay,
) -> Vec<(usize, f32)> {
    let mut x: Vec<[f32; 2]> = segs.to_vec();
    let mut sc: Vec<f32> = scores.to_vec();
    let mut inds: Vec<usize> = (0..segs.len()).collect();
    let mut n = segs.len();
    let mut out = Vec::new();
    let mut i = 0;
    while i < n {
        let mut max_pos = i;
        for pos in i + 1..n {
            if sc[max_pos] < sc[pos] {
                max_pos = pos;
            }
        }
        x.swap(i, max_pos);
        sc.swap(i, max_pos);
        inds.swap(i, max_pos);
        let picked = x[i];
        out.push((inds[i], sc[i]));

        let mut pos = i + 1;
        while pos < n {
            let ovr = tiou_nms(picked, x[pos]);
            let weight = match decay {
                Decay::Hard => {
                    if ovr >= iou_threshold {
                        0.0
                    } else {
                        1.0
                    }
                }
                Decay::Linear => {
                    if ovr >= iou_threshold {
                        1.0 - ovr
                    } else {
                        1.0
                    }
                }
                Decay::Gaussian { sigma } => (-(ovr * ovr) / sigma).exp(),
            };
            sc[pos] *= weight;
            if sc[pos] < min_score {
                x[pos] = x[n - 1];
                sc[pos] = sc[n - 1];
                inds[pos] = inds[n - 1];
                n -= 1;
            } else {
                pos += 1;
            }
        }
        i += 1;
    }
    out
}

/// Indices of `scores` sorted by score, descending; equal scores keep their input order.
pub fn argsort_desc(scores: &[f32]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    order
}

/// The original's greedy NMS (`nms_1d_cpu` behind `NMSop`): with `min_score > 0` keep only
/// scores strictly above it; visit by descending score and drop every later segment whose
/// NMS-IoU with a kept one is ≥ `iou_threshold`. Returns kept input indices, by score.
pub fn hard_nms(segs: &[[f32; 2]], scores: &[f32], iou_threshold: f32, min_score: f32) -> Vec<usize> {
    let order: Vec<usize> = argsort_desc(scores)
        .into_iter()
        .filter(|&i| min_score <= 0.0 || scores[i] > min_score)
        .collect();
    let mut keep = vec![true; order.len()];
    for a in 0..order.len() {
        if !keep[a] {
            continue;
        }
        for b in a + 1..order.len() {
            if keep[b] && tiou_nms(segs[order[a]], segs[order[b]]) >= iou_threshold {
                keep[b] = false;
            }
        }
    }
    order
        .into_iter()
        .zip(keep)
        .filter_map(|(i, k)| k.then_some(i))
        .collect()
}

/// Segment voting: each of `kept` becomes the weighted mean of ALL candidates `all_segs`
/// with tIoU ≥ `thresh` to it, weights `score·tIoU` (original scores, tIoU without the NMS
/// epsilon; the original STA-IPCon code weights by IoU too, unlike ActionFormer's). A kept
/// segment with no neighbour of positive weight is returned unchanged (the original would
/// produce NaN there; it cannot happen for decoded segments, which have positive length).
pub fn vote(kept: &[[f32; 2]], all_segs: &[[f32; 2]], all_scores: &[f32], thresh: f32) -> Vec<[f32; 2]> {
    kept.iter()
        .map(|&k| {
            let (mut w_sum, mut s0, mut s1) = (0.0f64, 0.0f64, 0.0f64);
            for (&seg, &score) in all_segs.iter().zip(all_scores) {
                let iou = tiou(k, seg);
                if iou >= thresh {
                    let w = score as f64 * iou as f64;
                    w_sum += w;
                    s0 += w * seg[0] as f64;
                    s1 += w * seg[1] as f64;
                }
            }
            if w_sum > 0.0 {
                [(s0 / w_sum) as f32, (s1 / w_sum) as f32]
            } else {
                k
            }
        })
        .collect()
}

fn subset(c: &Candidates, idx: &[usize]) -> Candidates {
    Candidates {
        segs: idx.iter().map(|&i| c.segs[i]).collect(),
        scores: idx.iter().map(|&i| c.scores[i]).collect(),
        labels: idx.iter().map(|&i| c.labels[i]).collect(),
    }
}

/// One NMS call on a set of candidates, capped at `max_seg_num` (the original's
/// `SoftNMSop` / `NMSop`). Output in the kernel's order.
fn nms_once(c: &Candidates, cfg: &NmsConfig) -> Candidates {
    let mut out = match cfg.method {
        NmsMethod::Soft => {
            let picked = soft_nms(
                &c.segs,
                &c.scores,
                cfg.iou_threshold,
                cfg.min_score,
                Decay::Gaussian { sigma: cfg.sigma },
            );
            Candidates {
                segs: picked.iter().map(|&(i, _)| c.segs[i]).collect(),
                scores: picked.iter().map(|&(_, s)| s).collect(),
                labels: picked.iter().map(|&(i, _)| c.labels[i]).collect(),
            }
        }
        NmsMethod::Hard => subset(c, &hard_nms(&c.segs, &c.scores, cfg.iou_threshold, cfg.min_score)),
        NmsMethod::None => c.clone(),
    };
    if cfg.max_seg_num > 0 && out.len() > cfg.max_seg_num {
        out.segs.truncate(cfg.max_seg_num);
        out.scores.truncate(cfg.max_seg_num);
        out.labels.truncate(cfg.max_seg_num);
    }
    out
}

/// Post-NMS selection of one video (the original's `batched_nms`, SPEC §6.2):
/// class-agnostic NMS then voting, or per-class NMS (classes ascending, no voting);
/// then sort by score (descending, stable) and keep `max_seg_num`.
/// With [`NmsMethod::None`] the candidates are returned unchanged, as the original does.
pub fn batched_nms(c: &Candidates, cfg: &NmsConfig) -> Candidates {
    if cfg.method == NmsMethod::None || c.is_empty() {
        return c.clone();
    }
    let merged = if cfg.multiclass {
        let mut classes: Vec<usize> = c.labels.clone();
        classes.sort_unstable();
        classes.dedup();
        let mut merged = Candidates::default();
        for class in classes {
            let idx: Vec<usize> = (0..c.len()).filter(|&i| c.labels[i] == class).collect();
            let one = nms_once(&subset(c, &idx), cfg);
            merged.segs.extend(one.segs);
            merged.scores.extend(one.scores);
            merged.labels.extend(one.labels);
        }
        merged
    } else {
        let mut one = nms_once(c, cfg);
        if cfg.voting_thresh > 0.0 {
            one.segs = vote(&one.segs, &c.segs, &c.scores, cfg.voting_thresh);
        }
        one
    };
    let mut order = argsort_desc(&merged.scores);
    order.truncate(cfg.max_seg_num);
    subset(&merged, &order)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(method: NmsMethod) -> NmsConfig {
        NmsConfig {
            method,
            iou_threshold: 0.1,
            min_score: 0.001,
            max_seg_num: 200,
            multiclass: false,
            sigma: 0.5,
            voting_thresh: 0.0,
        }
    }

    fn cands(segs: &[[f32; 2]], scores: &[f32], labels: &[usize]) -> Candidates {
        Candidates {
            segs: segs.to_vec(),
            scores: scores.to_vec(),
            labels: labels.to_vec(),
        }
    }

    #[test]
    fn soft_nms_hand_worked_example() {
        // A = [0,10] 0.9, B = [5,15] 0.8, C = [20,30] 0.7.
        // Pick A. B: NMS-IoU = 5/(10+1e-6 + 10+1e-6 - 5) ≈ 1/3 → 0.8·exp(-(1/9)/0.5) = 0.8·e^{-2/9}.
        //          C: IoU 0 → unchanged 0.7.
        // Next pick: C (0.7 > 0.8·0.8007 = 0.6405). B vs C: IoU 0 → unchanged. Then B.
        let segs = [[0.0f32, 10.0], [5.0, 15.0], [20.0, 30.0]];
        let out = soft_nms(&segs, &[0.9, 0.8, 0.7], 0.1, 0.001, Decay::Gaussian { sigma: 0.5 });
        let idx: Vec<usize> = out.iter().map(|p| p.0).collect();
        assert_eq!(idx, vec![0, 2, 1]);
        let b = 0.8f64 * (-(1.0f64 / 9.0) / 0.5).exp();
        assert!((out[0].1 - 0.9).abs() < 1e-7);
        assert!((out[1].1 - 0.7).abs() < 1e-7);
        assert!((out[2].1 as f64 - b).abs() < 1e-6, "{} vs {b}", out[2].1);
    }

    #[test]
    fn soft_nms_drops_below_min_score_by_moving_the_last_one_in() {
        // Identical segments: the second decays to 0.5·e^{-2} ≈ 0.068 and the third
        // (score 0.0005 < min_score) is dropped on the first pass even without overlap.
        let segs = [[0.0f32, 1.0], [0.0, 1.0], [5.0, 6.0]];
        let out = soft_nms(&segs, &[0.9, 0.5, 0.0005], 0.1, 0.001, Decay::Gaussian { sigma: 0.5 });
        assert_eq!(out.iter().map(|p| p.0).collect::<Vec<_>>(), vec![0, 1]);
        assert!((out[1].1 as f64 - 0.5 * (-2.0f64).exp()).abs() < 1e-6);
    }

    #[test]
    fn lone_segment_passes_unchanged() {
        let c = cands(&[[3.0, 7.5]], &[0.42], &[1]);
        for method in [NmsMethod::Soft, NmsMethod::Hard, NmsMethod::None] {
            let mut k = cfg(method);
            k.voting_thresh = 0.7;
            assert_eq!(batched_nms(&c, &k), c, "{method:?}");
        }
    }

    #[test]
    fn voting_leaves_an_isolated_segment_unchanged_and_averages_neighbours() {
        let all = [[0.0f32, 10.0], [1.0, 10.0], [50.0, 60.0]];
        let scores = [0.6f32, 0.2, 0.9];
        let voted = vote(&[[50.0, 60.0], [0.0, 10.0]], &all, &scores, 0.7);
        assert_eq!(voted[0], [50.0, 60.0]);
        // [0,10] and [1,10]: IoU 0.9 → weights 0.6·1 and 0.2·0.9: start 0.18/0.78
        assert!(
            (voted[1][0] - 0.18 / 0.78).abs() < 1e-6 && voted[1][1] == 10.0,
            "{:?}",
            voted[1]
        );
    }

    #[test]
    fn hard_nms_suppresses_at_threshold() {
        let segs = [[0.0f32, 10.0], [0.0, 9.0], [20.0, 30.0], [0.0, 1.0]];
        // [0,9] vs [0,10]: IoU 0.9 → dropped. [0,1] vs [0,10]: 1/(10 + 2e-6), just below
        // 0.1 because of the eps → kept. With score 0.0005 it is filtered before NMS.
        let keep = hard_nms(&segs, &[0.9, 0.8, 0.7, 0.5], 0.1, 0.001);
        assert_eq!(keep, vec![0, 2, 3]);
        let keep = hard_nms(&segs, &[0.9, 0.8, 0.7, 0.0005], 0.1, 0.001);
        assert_eq!(keep, vec![0, 2]);
    }

    #[test]
    fn multiclass_runs_per_class_then_sorts() {
        let c = cands(&[[0.0, 10.0], [0.0, 10.0], [0.5, 10.0]], &[0.5, 0.9, 0.4], &[1, 0, 1]);
        let mut k = cfg(NmsMethod::Hard);
        k.multiclass = true;
        let out = batched_nms(&c, &k);
        // class 0 keeps its one segment; class 1 keeps [0,10] and drops [0.5,10]
        assert_eq!(out.labels, vec![0, 1]);
        assert_eq!(out.scores, vec![0.9, 0.5]);
    }

    #[test]
    fn max_seg_num_caps_output() {
        let segs: Vec<[f32; 2]> = (0..10).map(|i| [i as f32 * 10.0, i as f32 * 10.0 + 5.0]).collect();
        let scores: Vec<f32> = (0..10).map(|i| 0.1 + i as f32 * 0.05).collect();
        let c = cands(&segs, &scores, &[0; 10]);
        let mut k = cfg(NmsMethod::Soft);
        k.max_seg_num = 3;
        let out = batched_nms(&c, &k);
        assert_eq!(out.len(), 3);
        assert_eq!(out.segs[0], [90.0, 95.0]);
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        /// Random candidates with pairwise distinct scores (ties would make the visiting
        /// order of the two kernels differ).
        fn arb_cands() -> impl Strategy<Value = (Vec<[f32; 2]>, Vec<f32>)> {
            prop::collection::vec((0.0f32..50.0, 0.1f32..20.0, 0.0f32..1.0), 1..40)
                .prop_map(|v| {
                    (
                        v.iter().map(|&(a, l, _)| [a, a + l]).collect(),
                        v.iter().map(|&(_, _, s)| s).collect(),
                    )
                })
                .prop_filter("distinct scores", |(_, s): &(Vec<[f32; 2]>, Vec<f32>)| {
                    let mut t = s.clone();
                    t.sort_by(f32::total_cmp);
                    t.windows(2).all(|w| w[0] != w[1])
                })
        }

        proptest! {
            #[test]
            fn soft_nms_invariants((segs, scores) in arb_cands()) {
                let c = Candidates { labels: vec![0; segs.len()], segs: segs.clone(), scores: scores.clone() };
                let mut k = cfg(NmsMethod::Soft);
                k.max_seg_num = 1000;
                let out = batched_nms(&c, &k);
                // sorted descending
                prop_assert!(out.scores.windows(2).all(|w| w[0] >= w[1]));
                // scores never increase: every output matches an input segment whose
                // original score is at least the output score
                for (s, sc) in out.segs.iter().zip(&out.scores) {
                    let best = segs.iter().zip(&scores).filter(|(t, _)| *t == s).map(|(_, &x)| x).fold(f32::MIN, f32::max);
                    prop_assert!(*sc <= best, "{} > {}", sc, best);
                }
                // no duplicates of an input (each input emitted at most once)
                let raw = soft_nms(&segs, &scores, 0.1, 0.001, Decay::Gaussian { sigma: 0.5 });
                let mut idx: Vec<usize> = raw.iter().map(|p| p.0).collect();
                idx.sort_unstable();
                let n = idx.len();
                idx.dedup();
                prop_assert_eq!(idx.len(), n);
            }

            #[test]
            fn tiny_sigma_approaches_hard_nms((segs, scores) in arb_cands()) {
                // With σ → 0, exp(-o²/σ) is 0 for any overlap o > 0 and 1 for o = 0:
                // soft-NMS then equals hard NMS at IoU threshold "> 0" (tiny positive).
                let soft = soft_nms(&segs, &scores, 0.1, 0.001, Decay::Gaussian { sigma: 1e-30 });
                let mut soft_idx: Vec<usize> = soft.iter().map(|p| p.0).collect();
                let mut hard_idx = hard_nms(&segs, &scores, f32::MIN_POSITIVE, 0.001);
                // hard NMS filters `> min_score` first; soft emits the first pick regardless.
                soft_idx.retain(|&i| scores[i] > 0.001);
                soft_idx.sort_unstable();
                hard_idx.sort_unstable();
                prop_assert_eq!(soft_idx, hard_idx);
            }
        }
    }
}
