//! ActivityNet detection metrics (SPEC §7.1): average precision per class and tIoU
//! threshold, mAP, average mAP and Recall@kx — the protocol of ActivityNet's
//! `eval_detection.py` as adapted by ActionFormer, with ties broken by input order.

use std::collections::HashMap;

use crate::geometry::tiou;
use crate::infer::Candidates;

/// The tIoU thresholds of the paper's table.
pub const TIOUS: [f64; 5] = [0.3, 0.4, 0.5, 0.6, 0.7];
/// The k of Recall@kx that the tables report.
pub const TOP_K: [usize; 2] = [1, 5];
/// Ground-truth segments shorter than this (seconds) are dropped, and two segments of the
/// same label whose ends both lie within it are duplicates.
pub const GT_TOLERANCE: f64 = 1e-3;

/// A metric that cannot be computed from its input.
#[derive(Debug, thiserror::Error)]
pub enum AnetError {
    /// No ground-truth segment left to score against.
    #[error("no ground-truth segments to evaluate against")]
    NoGroundTruth,
}

/// One ground-truth segment of the evaluated split.
#[derive(Debug, Clone, PartialEq)]
pub struct GtSegment {
    /// Video id.
    pub video: String,
    /// `[start, end]` in seconds.
    pub segment: [f64; 2],
    /// Class id.
    pub label: usize,
}

/// One scored detection.
#[derive(Debug, Clone, PartialEq)]
pub struct Detection {
    /// Video id.
    pub video: String,
    /// `[start, end]` in seconds.
    pub segment: [f64; 2],
    /// Class id.
    pub label: usize,
    /// Confidence; higher ranks first, equal scores keep input order.
    pub score: f64,
}

/// The detection table: AP per class and threshold, mAP, average mAP, Recall@kx.
#[derive(Debug, Clone, PartialEq)]
pub struct DetectionMetrics {
    /// tIoU thresholds, as given.
    pub tious: Vec<f64>,
    /// The class ids scored: those present in the ground truth, ascending.
    pub classes: Vec<usize>,
    /// `ap[t][c]`: AP at `tious[t]` of `classes[c]`.
    pub ap: Vec<Vec<f64>>,
    /// `map[t]`: mean AP over the classes at `tious[t]`.
    pub map: Vec<f64>,
    /// Mean of `map` over the thresholds.
    pub average_map: f64,
    /// The k of Recall@kx, as given.
    pub top_k: Vec<usize>,
    /// `recall[t][k]`: Recall@`top_k[k]`x at `tious[t]`, mean over classes.
    pub recall: Vec<Vec<f64>>,
    /// Ground-truth segments scored (after dropping short and duplicate ones).
    pub n_ground_truth: usize,
}

/// The detections of one post-processed video (segments already in seconds, e.g. from
/// [`crate::infer::postprocess`]), in their order, for [`evaluate_detection`].
pub fn detections_from(video: &str, c: &Candidates) -> Vec<Detection> {
    (0..c.len())
        .map(|i| Detection {
            video: video.to_string(),
            segment: [c.segs[i][0] as f64, c.segs[i][1] as f64],
            label: c.labels[i],
            score: c.scores[i] as f64,
        })
        .collect()
}

/// Drop ground-truth segments shorter than [`GT_TOLERANCE`] and duplicates (same label,
/// both ends within the tolerance of an earlier kept one), keeping order. Apply per video.
pub fn remove_duplicate_annotations(anns: &[([f64; 2], usize)]) -> Vec<([f64; 2], usize)> {
    let mut kept: Vec<([f64; 2], usize)> = Vec::new();
    for &(s, l) in anns {
        let long_enough = s[1] - s[0] >= GT_TOLERANCE;
        let duplicate = kept
            .iter()
            .any(|&(p, pl)| (s[0] - p[0]).abs() <= GT_TOLERANCE && (s[1] - p[1]).abs() <= GT_TOLERANCE && l == pl);
        if long_enough && !duplicate {
            kept.push((s, l));
        }
    }
    kept
}

/// The paper protocol (SPEC §7.1): keep only the highest-scoring detection of each class
/// in each video (the first one on equal scores), in input order.
pub fn top1_per_class_per_video(dets: &[Detection]) -> Vec<Detection> {
    let mut best: HashMap<(&str, usize), usize> = HashMap::new();
    for (i, d) in dets.iter().enumerate() {
        best.entry((d.video.as_str(), d.label))
            .and_modify(|b| {
                if d.score > dets[*b].score {
                    *b = i;
                }
            })
            .or_insert(i);
    }
    let mut keep: Vec<usize> = best.into_values().collect();
    keep.sort_unstable();
    keep.into_iter().map(|i| dets[i].clone()).collect()
}

/// All-points interpolated AP (VOC 2011 style, as ActivityNet): make precision monotone
/// from the right, then sum Δrecall·precision at each change of recall.
pub fn interpolated_ap(precision: &[f64], recall: &[f64]) -> f64 {
    let mut mprec = Vec::with_capacity(precision.len() + 2);
    mprec.push(0.0);
    mprec.extend_from_slice(precision);
    mprec.push(0.0);
    let mut mrec = Vec::with_capacity(recall.len() + 2);
    mrec.push(0.0);
    mrec.extend_from_slice(recall);
    mrec.push(1.0);
    for i in (0..mprec.len() - 1).rev() {
        mprec[i] = mprec[i].max(mprec[i + 1]);
    }
    (1..mrec.len())
        .filter(|&i| mrec[i] != mrec[i - 1])
        .map(|i| (mrec[i] - mrec[i - 1]) * mprec[i])
        .sum()
}

/// Stable order of `dets` by descending score (equal scores keep input order).
fn by_score(dets: &[&Detection]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..dets.len()).collect();
    order.sort_by(|&a, &b| dets[b].score.total_cmp(&dets[a].score));
    order
}

/// AP of one class at each threshold. `gt` are this class's segments; `dets` this class's
/// detections in input order.
fn class_ap(gt: &[&GtSegment], dets: &[&Detection], tious: &[f64]) -> Vec<f64> {
    if dets.is_empty() {
        return vec![0.0; tious.len()];
    }
    let mut gt_by_video: HashMap<&str, Vec<usize>> = HashMap::new();
    for (j, g) in gt.iter().enumerate() {
        gt_by_video.entry(g.video.as_str()).or_default().push(j);
    }
    let npos = gt.len() as f64;
    // matched[t][j]: ground truth j already taken at threshold t
    let mut matched = vec![vec![false; gt.len()]; tious.len()];
    let mut tp = vec![vec![0.0f64; dets.len()]; tious.len()];
    let mut fp = vec![vec![0.0f64; dets.len()]; tious.len()];

    for (rank, &i) in by_score(dets).iter().enumerate() {
        let d = dets[i];
        let Some(cands) = gt_by_video.get(d.video.as_str()) else {
            for row in fp.iter_mut() {
                row[rank] = 1.0;
            }
            continue;
        };
        let ious: Vec<f64> = cands.iter().map(|&j| tiou(d.segment, gt[j].segment)).collect();
        let mut order: Vec<usize> = (0..cands.len()).collect();
        order.sort_by(|&a, &b| ious[b].total_cmp(&ious[a]));
        for (t, &thr) in tious.iter().enumerate() {
            let mut hit = false;
            for &o in &order {
                if ious[o] < thr {
                    break;
                }
                let j = cands[o];
                if matched[t][j] {
                    continue;
                }
                matched[t][j] = true;
                hit = true;
                break;
            }
            if hit {
                tp[t][rank] = 1.0;
            } else {
                fp[t][rank] = 1.0;
            }
        }
    }

    tious
        .iter()
        .enumerate()
        .map(|(t, _)| {
            let (mut ctp, mut cfp) = (0.0, 0.0);
            let mut prec = Vec::with_capacity(dets.len());
            let mut rec = Vec::with_capacity(dets.len());
            for r in 0..dets.len() {
                ctp += tp[t][r];
                cfp += fp[t][r];
                prec.push(ctp / (ctp + cfp));
                rec.push(ctp / npos);
            }
            interpolated_ap(&prec, &rec)
        })
        .collect()
}

/// Recall@kx of one class: for each video, the ground truths hit (tIoU ≥ threshold) by
/// any of the top k·(#GT of the class in that video) detections of the class there.
/// Returns `recall[t][k]` = hits summed over videos / #GT of the class — ActivityNet's
/// (and ActionFormer's) aggregation: pooled over the class's videos, not averaged per video.
fn class_recall(gt: &[&GtSegment], dets: &[&Detection], tious: &[f64], top_k: &[usize]) -> Vec<Vec<f64>> {
    let mut gt_by_video: HashMap<&str, Vec<usize>> = HashMap::new();
    for (j, g) in gt.iter().enumerate() {
        gt_by_video.entry(g.video.as_str()).or_default().push(j);
    }
    let mut det_by_video: HashMap<&str, Vec<&Detection>> = HashMap::new();
    for d in dets {
        det_by_video.entry(d.video.as_str()).or_default().push(d);
    }
    let mut hits = vec![vec![0usize; top_k.len()]; tious.len()];
    for (video, gts) in &gt_by_video {
        let Some(vd) = det_by_video.get(video) else {
            continue;
        };
        let order = by_score(vd);
        for (t, &thr) in tious.iter().enumerate() {
            for (ki, &k) in top_k.iter().enumerate() {
                let top = &order[..order.len().min(k * gts.len())];
                hits[t][ki] += gts
                    .iter()
                    .filter(|&&j| top.iter().any(|&i| tiou(vd[i].segment, gt[j].segment) >= thr))
                    .count();
            }
        }
    }
    let n = gt.len() as f64;
    hits.iter()
        .map(|row| row.iter().map(|&h| h as f64 / n).collect())
        .collect()
}

/// Score `dets` against `gt` (SPEC §7.1). The ground truth is cleaned first
/// ([`remove_duplicate_annotations`] per video). Classes are those present in the cleaned
/// ground truth; detections of other classes are ignored, and a detection in a video with
/// no ground truth of its class is a false positive. Errors if no ground truth is left.
pub fn evaluate_detection(
    gt: &[GtSegment],
    dets: &[Detection],
    tious: &[f64],
    top_k: &[usize],
) -> Result<DetectionMetrics, AnetError> {
    // Clean per video, keeping the videos' order of first appearance.
    let mut videos: Vec<&str> = Vec::new();
    let mut per_video: HashMap<&str, Vec<([f64; 2], usize)>> = HashMap::new();
    for g in gt {
        per_video
            .entry(g.video.as_str())
            .or_insert_with(|| {
                videos.push(g.video.as_str());
                Vec::new()
            })
            .push((g.segment, g.label));
    }
    let clean: Vec<GtSegment> = videos
        .iter()
        .flat_map(|v| {
            remove_duplicate_annotations(&per_video[v])
                .into_iter()
                .map(|(segment, label)| GtSegment {
                    video: v.to_string(),
                    segment,
                    label,
                })
        })
        .collect();
    if clean.is_empty() {
        return Err(AnetError::NoGroundTruth);
    }

    let mut classes: Vec<usize> = clean.iter().map(|g| g.label).collect();
    classes.sort_unstable();
    classes.dedup();

    let mut ap = vec![vec![0.0; classes.len()]; tious.len()];
    let mut recall_sum = vec![vec![0.0; top_k.len()]; tious.len()];
    for (ci, &c) in classes.iter().enumerate() {
        let g: Vec<&GtSegment> = clean.iter().filter(|g| g.label == c).collect();
        let d: Vec<&Detection> = dets.iter().filter(|d| d.label == c).collect();
        for (t, v) in class_ap(&g, &d, tious).into_iter().enumerate() {
            ap[t][ci] = v;
        }
        for (t, row) in class_recall(&g, &d, tious, top_k).into_iter().enumerate() {
            for (k, v) in row.into_iter().enumerate() {
                recall_sum[t][k] += v;
            }
        }
    }
    let nc = classes.len() as f64;
    let map: Vec<f64> = ap.iter().map(|row| row.iter().sum::<f64>() / nc).collect();
    let average_map = if map.is_empty() {
        0.0
    } else {
        map.iter().sum::<f64>() / map.len() as f64
    };
    let recall = recall_sum
        .into_iter()
        .map(|row| row.into_iter().map(|v| v / nc).collect())
        .collect();
    Ok(DetectionMetrics {
        tious: tious.to_vec(),
        classes,
        ap,
        map,
        average_map,
        top_k: top_k.to_vec(),
        recall,
        n_ground_truth: clean.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(video: &str, s: f64, e: f64, label: usize) -> GtSegment {
        GtSegment {
            video: video.into(),
            segment: [s, e],
            label,
        }
    }

    fn d(video: &str, s: f64, e: f64, label: usize, score: f64) -> Detection {
        Detection {
            video: video.into(),
            segment: [s, e],
            label,
            score,
        }
    }

    fn eval(gt: &[GtSegment], dets: &[Detection]) -> DetectionMetrics {
        evaluate_detection(gt, dets, &TIOUS, &TOP_K).unwrap()
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn perfect_detections_score_one() {
        let gt = [
            g("a", 0.0, 2.0, 0),
            g("a", 2.0, 5.0, 1),
            g("b", 1.0, 3.0, 0),
            g("b", 3.0, 4.0, 1),
        ];
        let dets: Vec<Detection> = gt
            .iter()
            .map(|x| d(&x.video, x.segment[0], x.segment[1], x.label, 0.9))
            .collect();
        let m = eval(&gt, &dets);
        assert_eq!(m.classes, vec![0, 1]);
        assert!(m.map.iter().all(|&v| close(v, 1.0)), "{:?}", m.map);
        assert!(close(m.average_map, 1.0));
        assert!(m.recall.iter().flatten().all(|&v| close(v, 1.0)));
    }

    #[test]
    fn false_positive_ranked_first() {
        // One GT; an FP at 0.9 then the TP at 0.8: precision [0, 1/2], recall [0, 1].
        // Interpolated: AP = 1 · 1/2.
        let gt = [g("a", 0.0, 10.0, 0)];
        let dets = [d("a", 20.0, 30.0, 0, 0.9), d("a", 0.0, 10.0, 0, 0.8)];
        let m = eval(&gt, &dets);
        assert!(m.ap.iter().all(|r| close(r[0], 0.5)), "{:?}", m.ap);
        // Recall@1x: the top-1 is the FP → 0; Recall@5x: 1.
        assert!(
            m.recall.iter().all(|r| close(r[0], 0.0) && close(r[1], 1.0)),
            "{:?}",
            m.recall
        );
    }

    #[test]
    fn duplicate_detection_is_a_false_positive_and_a_gt_is_hit_once() {
        // Two GTs; detections: TP on GT1 (0.9), duplicate of it (0.8), TP on GT2 (0.7).
        // precision [1, 1/2, 2/3], recall [1/2, 1/2, 1] → AP = 1/2·1 + 1/2·2/3 = 5/6.
        let gt = [g("a", 0.0, 10.0, 0), g("a", 20.0, 30.0, 0)];
        let dets = [
            d("a", 0.0, 10.0, 0, 0.9),
            d("a", 0.5, 10.0, 0, 0.8),
            d("a", 20.0, 30.0, 0, 0.7),
        ];
        let m = eval(&gt, &dets);
        assert!(m.ap.iter().all(|r| close(r[0], 5.0 / 6.0)), "{:?}", m.ap);
    }

    #[test]
    fn second_detection_takes_the_next_best_ground_truth() {
        // GT1 [0,10], GT2 [0,9]. Both detections overlap both; the first takes GT1 (IoU 1),
        // the second ([0,9.5]: IoU 0.95 with GT1, 0.947 with GT2) finds GT1 taken and takes GT2.
        let gt = [g("a", 0.0, 10.0, 0), g("a", 0.0, 9.0, 0)];
        let dets = [d("a", 0.0, 10.0, 0, 0.9), d("a", 0.0, 9.5, 0, 0.8)];
        let m = eval(&gt, &dets);
        assert!(m.ap.iter().all(|r| close(r[0], 1.0)), "{:?}", m.ap);
    }

    #[test]
    fn detections_for_unknown_videos_are_false_positives() {
        let gt = [g("a", 0.0, 10.0, 0)];
        let dets = [d("zzz", 0.0, 10.0, 0, 0.95), d("a", 0.0, 10.0, 0, 0.5)];
        let m = eval(&gt, &dets);
        assert!(m.ap.iter().all(|r| close(r[0], 0.5)), "{:?}", m.ap);
        // ...and do not count towards Recall@1x of video "a"
        assert!(m.recall.iter().all(|r| close(r[0], 1.0)));
    }

    #[test]
    fn thresholds_separate_loose_detections() {
        // tIoU 0.5 exactly: TP at 0.3/0.4/0.5, FP at 0.6/0.7.
        let gt = [g("a", 0.0, 10.0, 0)];
        let dets = [d("a", 5.0, 10.0, 0, 0.9)];
        let m = eval(&gt, &dets);
        let col: Vec<f64> = m.ap.iter().map(|r| r[0]).collect();
        assert_eq!(col, vec![1.0, 1.0, 1.0, 0.0, 0.0]);
        assert!(close(m.average_map, 0.6));
    }

    #[test]
    fn map_averages_classes_present_in_ground_truth_only() {
        // class 0 perfect, class 1 missed entirely, class 7 has detections but no GT (ignored)
        let gt = [g("a", 0.0, 1.0, 0), g("a", 1.0, 2.0, 1)];
        let dets = [d("a", 0.0, 1.0, 0, 0.5), d("a", 1.0, 2.0, 7, 0.9)];
        let m = eval(&gt, &dets);
        assert_eq!(m.classes, vec![0, 1]);
        assert!(m.map.iter().all(|&v| close(v, 0.5)));
    }

    #[test]
    fn equal_scores_keep_input_order() {
        // Both at 0.5: FP first then TP (input order) → AP 0.5; swapped input → AP 1.
        let gt = [g("a", 0.0, 10.0, 0)];
        let fp_first = [d("a", 20.0, 30.0, 0, 0.5), d("a", 0.0, 10.0, 0, 0.5)];
        assert!(close(eval(&gt, &fp_first).ap[0][0], 0.5));
        let tp_first = [d("a", 0.0, 10.0, 0, 0.5), d("a", 20.0, 30.0, 0, 0.5)];
        assert!(close(eval(&gt, &tp_first).ap[0][0], 1.0));
    }

    #[test]
    fn ground_truth_is_cleaned() {
        let anns = [
            ([0.0, 1.0], 0),
            ([0.0005, 1.0009], 0),
            ([0.0, 1.0], 1),
            ([3.0, 3.0005], 0),
        ];
        let kept = remove_duplicate_annotations(&anns);
        assert_eq!(kept, vec![([0.0, 1.0], 0), ([0.0, 1.0], 1)]);
        // the duplicate would otherwise make a single detection score AP 1/2
        let gt = [g("a", 0.0, 1.0, 0), g("a", 0.0005, 1.0009, 0)];
        let m = eval(&gt, &[d("a", 0.0, 1.0, 0, 0.9)]);
        assert_eq!(m.n_ground_truth, 1);
        assert!(close(m.ap[0][0], 1.0));
        assert!(matches!(
            evaluate_detection(&[g("a", 1.0, 1.0, 0)], &[], &TIOUS, &TOP_K),
            Err(AnetError::NoGroundTruth)
        ));
    }

    #[test]
    fn recall_at_kx_counts_top_k_times_gt() {
        // Video with 1 GT: 3 detections, the hit ranked 2nd → Recall@1x 0, Recall@5x 1.
        // Video with 2 GTs: detections hit only one of them → 1/2 at any k.
        // Pooled: @1x (0 + 1)/3, @5x (1 + 1)/3.
        let gt = [g("a", 0.0, 10.0, 0), g("b", 0.0, 10.0, 0), g("b", 20.0, 30.0, 0)];
        let dets = [
            d("a", 50.0, 60.0, 0, 0.9),
            d("a", 0.0, 10.0, 0, 0.8),
            d("a", 70.0, 80.0, 0, 0.7),
            d("b", 0.0, 10.0, 0, 0.9),
        ];
        let m = eval(&gt, &dets);
        assert!(
            close(m.recall[0][0], 1.0 / 3.0) && close(m.recall[0][1], 2.0 / 3.0),
            "{:?}",
            m.recall
        );
    }

    #[test]
    fn interpolation_matches_hand_values() {
        // precision [1, 0.5, 0.667], recall [0.5, 0.5, 1.0]
        let ap = interpolated_ap(&[1.0, 0.5, 2.0 / 3.0], &[0.5, 0.5, 1.0]);
        assert!(close(ap, 0.5 + 0.5 * 2.0 / 3.0));
        assert_eq!(interpolated_ap(&[], &[]), 0.0);
    }

    #[test]
    fn candidates_become_detections() {
        let c = Candidates {
            segs: vec![[0.5, 1.5]],
            scores: vec![0.25],
            labels: vec![1],
        };
        assert_eq!(detections_from("v", &c), vec![d("v", 0.5, 1.5, 1, 0.25)]);
    }

    #[test]
    fn paper_protocol_keeps_top1_per_class_and_video() {
        let dets = [
            d("a", 0.0, 1.0, 0, 0.5),
            d("a", 0.0, 2.0, 0, 0.9),
            d("a", 0.0, 3.0, 1, 0.4),
            d("b", 0.0, 4.0, 0, 0.7),
            d("a", 0.0, 5.0, 0, 0.9),
        ];
        let kept = top1_per_class_per_video(&dets);
        let ends: Vec<f64> = kept.iter().map(|x| x.segment[1]).collect();
        assert_eq!(ends, vec![2.0, 3.0, 4.0]);
    }
}
