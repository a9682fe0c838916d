//! The keyframe table (SPEC §7.2): per-frame macro and micro precision/recall/F1, the
//! average keyframe deviation (AD) and its one-sided 95% upper confidence bound (CI).

use super::stats::{self, StatsError};
use crate::infer::keyframes::{Fallback, Keyframes};

/// Confidence level of the one-sided interval.
pub const CI_LEVEL: f64 = 0.95;

/// A keyframe table that cannot be computed.
#[derive(Debug, thiserror::Error)]
pub enum KeyframeError {
    /// No video to average over.
    #[error("no videos with keyframes to evaluate")]
    NoVideos,
    /// The confidence bound failed.
    #[error(transparent)]
    Stats(#[from] StatsError),
}

/// Frame labels over `[0, n_frames)`: 1 on `[start, apex)`, 2 on `[apex, end)`, 0
/// elsewhere (ranges clipped to the video; an inverted range is empty).
pub fn frame_labels(k: &Keyframes, n_frames: usize) -> Vec<u8> {
    let clip = |x: i64| x.clamp(0, n_frames as i64) as usize;
    let mut labels = vec![0u8; n_frames];
    let (s, a, e) = (clip(k.start), clip(k.apex), clip(k.end));
    if s < a {
        labels[s..a].fill(1);
    }
    if a < e {
        labels[a..e].fill(2);
    }
    labels
}

/// Per-video frame scores.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FrameScores {
    /// Macro precision over the labels present in truth or prediction.
    pub precision: f64,
    /// Macro recall, same labels.
    pub recall: f64,
    /// Macro F1, same labels.
    pub f1: f64,
    /// Micro precision = micro recall = micro F1 = frame accuracy, since every frame
    /// carries exactly one label in both sequences and all labels are counted.
    pub accuracy: f64,
}

/// Macro P/R/F1 and accuracy of one video's frame labels, with scikit-learn's semantics
/// (`average="macro"` over `unique_labels(truth, pred)`, undefined ratios count as 0).
/// Two empty sequences score 0 everywhere.
pub fn frame_scores(truth: &[u8], pred: &[u8]) -> FrameScores {
    debug_assert_eq!(truth.len(), pred.len());
    let mut tp = [0usize; 256];
    let mut n_true = [0usize; 256];
    let mut n_pred = [0usize; 256];
    for (&t, &p) in truth.iter().zip(pred) {
        n_true[t as usize] += 1;
        n_pred[p as usize] += 1;
        if t == p {
            tp[t as usize] += 1;
        }
    }
    let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    let (mut p_sum, mut r_sum, mut f_sum, mut n_labels) = (0.0, 0.0, 0.0, 0usize);
    for l in 0..256 {
        if n_true[l] == 0 && n_pred[l] == 0 {
            continue;
        }
        n_labels += 1;
        p_sum += ratio(tp[l], n_pred[l]);
        r_sum += ratio(tp[l], n_true[l]);
        // F1 = 2·tp / (2·tp + fp + fn) = 2·tp / (n_pred + n_true)
        f_sum += ratio(2 * tp[l], n_pred[l] + n_true[l]);
    }
    if n_labels == 0 {
        return FrameScores {
            precision: 0.0,
            recall: 0.0,
            f1: 0.0,
            accuracy: 0.0,
        };
    }
    let correct: usize = tp.iter().sum();
    let k = n_labels as f64;
    FrameScores {
        precision: p_sum / k,
        recall: r_sum / k,
        f1: f_sum / k,
        accuracy: ratio(correct, truth.len()),
    }
}

/// The keyframes of one video.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VideoKeyframes {
    /// Ground truth (SPEC §7.2).
    pub truth: Keyframes,
    /// Prediction (SPEC §6.4).
    pub pred: Keyframes,
    /// Frames in the video, `⌊duration·fps⌋`.
    pub n_frames: usize,
    /// Whether the prediction needed a fallback.
    pub fallback: Fallback,
}

impl VideoKeyframes {
    /// |pred − truth| of start, apex and end, in frames.
    pub fn deviations(&self) -> [f64; 3] {
        // In f64: a detection far outside the video (a segment of ±1e308 s) puts its frame
        // at i64::MAX, where the i64 difference would overflow.
        let d = |p: i64, t: i64| (p as f64 - t as f64).abs();
        [
            d(self.pred.start, self.truth.start),
            d(self.pred.apex, self.truth.apex),
            d(self.pred.end, self.truth.end),
        ]
    }

    /// Frame scores of this video.
    pub fn frame_scores(&self) -> FrameScores {
        frame_scores(
            &frame_labels(&self.truth, self.n_frames),
            &frame_labels(&self.pred, self.n_frames),
        )
    }
}

/// The keyframe table over a set of videos.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct KeyframeMetrics {
    /// Macro precision, averaged over videos.
    #[serde(rename = "P")]
    pub precision: f64,
    /// Macro recall, averaged over videos.
    #[serde(rename = "R")]
    pub recall: f64,
    /// Macro F1, averaged over videos.
    #[serde(rename = "F")]
    pub f1: f64,
    /// Micro precision (= frame accuracy), averaged over videos.
    #[serde(rename = "microP")]
    pub micro_precision: f64,
    /// Micro recall (= frame accuracy), averaged over videos.
    #[serde(rename = "microR")]
    pub micro_recall: f64,
    /// Micro F1 (= frame accuracy), averaged over videos.
    #[serde(rename = "microF")]
    pub micro_f1: f64,
    /// Average deviation in frames: mean over videos of the mean |Δ| of the three keyframes.
    #[serde(rename = "AD")]
    pub ad: f64,
    /// One-sided 95% upper bound of the mean deviation: `mean + t_{0.95,3N−1}·sd/√(3N)`
    /// over all 3N deviations (sd with ddof 1). The interval is reported as `0–CI_upper`.
    #[serde(rename = "CI_upper")]
    pub ci_upper: f64,
    /// N, the number of videos.
    pub n_videos: usize,
    /// Videos whose prediction needed a fallback.
    pub n_fallback: usize,
}

/// The keyframe table of SPEC §7.2 over `videos`.
pub fn keyframe_metrics(videos: &[VideoKeyframes]) -> Result<KeyframeMetrics, KeyframeError> {
    if videos.is_empty() {
        return Err(KeyframeError::NoVideos);
    }
    let n = videos.len() as f64;
    let scores: Vec<FrameScores> = videos.iter().map(VideoKeyframes::frame_scores).collect();
    let avg = |f: fn(&FrameScores) -> f64| scores.iter().map(f).sum::<f64>() / n;
    let devs: Vec<f64> = videos.iter().flat_map(|v| v.deviations()).collect();
    let ad = videos
        .iter()
        .map(|v| v.deviations().iter().sum::<f64>() / 3.0)
        .sum::<f64>()
        / n;
    let accuracy = avg(|s| s.accuracy);
    Ok(KeyframeMetrics {
        precision: avg(|s| s.precision),
        recall: avg(|s| s.recall),
        f1: avg(|s| s.f1),
        micro_precision: accuracy,
        micro_recall: accuracy,
        micro_f1: accuracy,
        ad,
        ci_upper: stats::upper_confidence_bound(&devs, CI_LEVEL)?,
        n_videos: videos.len(),
        n_fallback: videos.iter().filter(|v| v.fallback.used()).count(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kf(start: i64, apex: i64, end: i64) -> Keyframes {
        Keyframes { start, apex, end }
    }

    #[test]
    fn labels_are_clipped_and_inverted_ranges_empty() {
        assert_eq!(frame_labels(&kf(1, 3, 5), 6), vec![0, 1, 1, 2, 2, 0]);
        assert_eq!(frame_labels(&kf(-2, 1, 9), 4), vec![1, 2, 2, 2]);
        assert_eq!(frame_labels(&kf(196, 99, 5), 4), vec![0, 0, 0, 0]);
    }

    #[test]
    fn matches_the_original_parity_video() {
        // decode.json vessel_eval_path: t1..t6 = [196, 99, 5, 40, 160, 360], 400 frames:
        // sklearn macro P 1/15, R 1/3, F 1/9, micro 0.2; deviation/3 = 190.666…
        let v = VideoKeyframes {
            truth: kf(40, 160, 360),
            pred: kf(196, 99, 5),
            n_frames: 400,
            fallback: Fallback::None,
        };
        let s = v.frame_scores();
        assert!((s.precision - 0.06666666666666667).abs() < 1e-15);
        assert!((s.recall - 0.3333333333333333).abs() < 1e-15);
        assert!((s.f1 - 0.1111111111111111).abs() < 1e-15);
        assert!((s.accuracy - 0.2).abs() < 1e-15);
        let d = v.deviations();
        assert!((d.iter().sum::<f64>() / 3.0 - 190.66666666666666).abs() < 1e-12);
    }

    #[test]
    fn hand_computed_macro_scores() {
        // truth 0 0 1 1 2 2, pred 0 1 1 1 2 0
        // label 0: tp 1, pred 2, true 2 → P 1/2, R 1/2, F 1/2
        // label 1: tp 2, pred 3, true 2 → P 2/3, R 1, F 4/5
        // label 2: tp 1, pred 1, true 2 → P 1, R 1/2, F 2/3
        let s = frame_scores(&[0, 0, 1, 1, 2, 2], &[0, 1, 1, 1, 2, 0]);
        assert!((s.precision - (0.5 + 2.0 / 3.0 + 1.0) / 3.0).abs() < 1e-15);
        assert!((s.recall - (0.5 + 1.0 + 0.5) / 3.0).abs() < 1e-15);
        assert!((s.f1 - (0.5 + 0.8 + 2.0 / 3.0) / 3.0).abs() < 1e-15);
        assert!((s.accuracy - 4.0 / 6.0).abs() < 1e-15);
        // a label only in the prediction counts with P = R = F = 0
        let s = frame_scores(&[0, 0], &[0, 2]);
        assert!((s.precision - 0.5).abs() < 1e-15 && (s.recall - 0.25).abs() < 1e-15);
        assert_eq!(frame_scores(&[], &[]).accuracy, 0.0);
    }

    #[test]
    fn table_over_videos() {
        let perfect = VideoKeyframes {
            truth: kf(2, 5, 9),
            pred: kf(2, 5, 9),
            n_frames: 10,
            fallback: Fallback::None,
        };
        let off = VideoKeyframes {
            truth: kf(2, 5, 9),
            pred: kf(3, 5, 7),
            n_frames: 10,
            fallback: Fallback::NoWashout,
        };
        let m = keyframe_metrics(&[perfect, off]).unwrap();
        assert_eq!(m.n_videos, 2);
        assert_eq!(m.n_fallback, 1);
        // AD: (0 + (1+0+2)/3) / 2 = 0.5
        assert!((m.ad - 0.5).abs() < 1e-15);
        // deviations [0,0,0,1,0,2]: mean 0.5, sample sd sqrt((4·0.25 + 0.25 + 2.25)/5) = sqrt(0.7)
        let t5 = 2.015048373333024;
        assert!(
            (m.ci_upper - (0.5 + t5 * 0.7f64.sqrt() / 6f64.sqrt())).abs() < 1e-9,
            "{}",
            m.ci_upper
        );
        assert!(keyframe_metrics(&[]).is_err());
        // one video works (df = 2)
        assert!(keyframe_metrics(&[off]).is_ok());
    }
}
