//! Scoring a detection file against a ground-truth file: both tables of the paper
//! (what `xca score` prints), as one pure function over already-read files.

use std::collections::{HashMap, HashSet};

use super::anet::{self, AnetError, Detection, DetectionMetrics, GtSegment};
use super::io::{GroundTruth, ReadError};
use super::keyframe::{self, KeyframeError, KeyframeMetrics, VideoKeyframes};
use crate::dataset::Class;
use crate::infer::keyframes::{DecodeSetting, frame_at, ground_truth_keyframes, predicted_keyframes};

/// Which detections are scored (SPEC §7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// Every detection (the standard ActivityNet protocol).
    #[default]
    Full,
    /// Only the top-1 detection per class per video, as the paper's evaluation did.
    Paper,
}

/// Scoring that failed.
#[derive(Debug, thiserror::Error)]
pub enum ScoreError {
    /// The ground truth of the split is missing or unusable.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// Every ground-truth segment of the split is shorter than the tolerance.
    #[error(
        "{}: split {split:?} has no ground-truth segment of at least {} s",
        path.display(),
        anet::GT_TOLERANCE
    )]
    OnlyShortSegments {
        /// The ground-truth file.
        path: std::path::PathBuf,
        /// The split.
        split: String,
    },
    /// The keyframe table failed.
    #[error(transparent)]
    Keyframe(#[from] KeyframeError),
}

/// Both tables plus what the reader should know about the input.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreReport {
    /// The split scored.
    pub split: String,
    /// The protocol applied.
    pub protocol: Protocol,
    /// Detections in the file, and how many were scored after the protocol.
    pub n_detections: usize,
    /// Detections scored.
    pub n_scored: usize,
    /// Videos in the split.
    pub n_videos: usize,
    /// The detection table.
    pub detection: DetectionMetrics,
    /// The keyframe table; `None` when no video of the split has both a filling and a
    /// washout annotation with fps and duration.
    pub keyframes: Option<KeyframeMetrics>,
    /// Remarks on the input (detections for other videos, skipped videos, …), one line each.
    pub notes: Vec<String>,
    /// Detections of the file that cannot be right, counted (all of them, before the protocol).
    pub suspect: Suspect,
}

/// Detections that no correct detector would write. They are scored as they are (a
/// detection for an unknown video or class is a false positive, an overlong segment still
/// overlaps); `xca score --strict` refuses the file instead.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Suspect {
    /// Detections for videos that the ground-truth file does not have at all.
    pub unknown_videos: usize,
    /// Detections whose class id is no class of the ground-truth file.
    pub unknown_labels: usize,
    /// Detections whose segment leaves its video: start below 0, or end beyond the video's
    /// duration (when the ground truth gives one) by more than [`SEGMENT_SLACK_S`].
    pub outside_video: usize,
}

/// How far (seconds) a segment may overhang its video before it counts as outside: decoding
/// on a grid can overshoot the last frame a little.
pub const SEGMENT_SLACK_S: f64 = 1.0;

impl Suspect {
    /// Count the suspect detections of `dets` against the whole of `gt`.
    pub fn of(gt: &GroundTruth, dets: &[Detection]) -> Self {
        let durations: HashMap<&str, Option<f64>> = gt.videos.iter().map(|v| (v.id.as_str(), v.duration)).collect();
        let classes: HashSet<usize> = gt
            .label_ids
            .values()
            .copied()
            .chain(gt.videos.iter().flat_map(|v| v.annotations.iter().map(|a| a.label)))
            .collect();
        let mut s = Self::default();
        for d in dets {
            match durations.get(d.video.as_str()) {
                None => s.unknown_videos += 1,
                Some(dur) => {
                    let [a, b] = d.segment;
                    let past_end = dur.is_some_and(|t| b > t + SEGMENT_SLACK_S);
                    if a < -SEGMENT_SLACK_S || past_end {
                        s.outside_video += 1;
                    }
                }
            }
            if !classes.contains(&d.label) {
                s.unknown_labels += 1;
            }
        }
        s
    }

    /// Whether any detection is suspect.
    pub fn any(&self) -> bool {
        self.unknown_videos + self.unknown_labels + self.outside_video > 0
    }

    /// One line per kind present.
    pub fn lines(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.unknown_videos > 0 {
            out.push(format!(
                "{} detections for videos that are not in the ground-truth file",
                self.unknown_videos
            ));
        }
        if self.unknown_labels > 0 {
            out.push(format!(
                "{} detections with a class id that the ground-truth file does not have",
                self.unknown_labels
            ));
        }
        if self.outside_video > 0 {
            out.push(format!(
                "{} detections whose segment leaves its video (starts before 0 s or ends more than {SEGMENT_SLACK_S} s after its duration)",
                self.outside_video
            ));
        }
        out
    }
}

/// The highest-scoring detection segment of `class` in `dets` (first on equal scores).
fn top_segment<'a>(dets: impl Iterator<Item = &'a Detection>, class: usize) -> Option<[f64; 2]> {
    let mut best: Option<&Detection> = None;
    for d in dets.filter(|d| d.label == class) {
        if best.is_none_or(|b| d.score > b.score) {
            best = Some(d);
        }
    }
    best.map(|d| d.segment)
}

/// Score `dets` (file order) against the `split` of `gt` (SPEC §7): the detection table
/// over every detection or, with [`Protocol::Paper`], the top-1 per class per video; and
/// the keyframe table from each split video's top filling/washout detection (setting 0,
/// frames `⌊fps·t⌋`).
pub fn score(gt: &GroundTruth, split: &str, dets: &[Detection], protocol: Protocol) -> Result<ScoreReport, ScoreError> {
    let gt_segments: Vec<GtSegment> = gt.split_segments(split)?;
    let videos = gt.split_videos(split);
    let suspect = Suspect::of(gt, dets);
    let mut notes: Vec<String> = suspect
        .lines()
        .into_iter()
        .map(|l| format!("suspect input: {l}"))
        .collect();

    let scored: Vec<Detection> = match protocol {
        Protocol::Full => dets.to_vec(),
        Protocol::Paper => {
            let kept = anet::top1_per_class_per_video(dets);
            notes.push(format!(
                "paper protocol: kept the top-1 detection per class per video ({} of {} detections)",
                kept.len(),
                dets.len()
            ));
            kept
        }
    };

    let in_split: HashSet<&str> = videos.iter().map(|v| v.id.as_str()).collect();
    let outside: Vec<&Detection> = scored.iter().filter(|d| !in_split.contains(d.video.as_str())).collect();
    if !outside.is_empty() {
        let n_vid = outside.iter().map(|d| d.video.as_str()).collect::<HashSet<_>>().len();
        notes.push(format!(
            "{} detections in {n_vid} videos that are not in split {split:?}: counted as false positives",
            outside.len()
        ));
    }

    let detection =
        anet::evaluate_detection(&gt_segments, &scored, &anet::TIOUS, &anet::TOP_K).map_err(|e| match e {
            AnetError::NoGroundTruth => ScoreError::OnlyShortSegments {
                path: gt.path.clone(),
                split: split.to_string(),
            },
        })?;
    let classes: HashSet<usize> = detection.classes.iter().copied().collect();
    let mut unscored: Vec<usize> = scored
        .iter()
        .map(|d| d.label)
        .filter(|l| !classes.contains(l))
        .collect();
    if !unscored.is_empty() {
        let n = unscored.len();
        unscored.sort_unstable();
        unscored.dedup();
        let ids: Vec<String> = unscored.iter().map(|l| l.to_string()).collect();
        notes.push(format!(
            "{n} detections with label ids [{}] that have no ground truth in split {split:?}: not scored",
            ids.join(", ")
        ));
    }

    // Keyframe table.
    // The annotation reader holds every file to these ids (SPEC §1), whatever its names.
    let (fill_id, wash_id) = (Class::Filling.id(), Class::Washout.id());
    let mut by_video: HashMap<&str, Vec<&Detection>> = HashMap::new();
    for d in &scored {
        by_video.entry(d.video.as_str()).or_default().push(d);
    }
    let mut kf_videos = Vec::new();
    let (mut no_pair, mut no_meta) = (0usize, 0usize);
    for v in &videos {
        let f = v.annotations.iter().find(|a| a.label == fill_id);
        let w = v.annotations.iter().find(|a| a.label == wash_id);
        let (Some(f), Some(w)) = (f, w) else {
            no_pair += 1;
            continue;
        };
        let (Some(fps), Some(duration)) = (v.fps, v.duration) else {
            no_meta += 1;
            continue;
        };
        let vd = by_video.get(v.id.as_str()).map(Vec::as_slice).unwrap_or(&[]);
        let (pred, fallback) = predicted_keyframes(
            top_segment(vd.iter().copied(), fill_id),
            top_segment(vd.iter().copied(), wash_id),
            fps,
            DecodeSetting::ApexMidpoint,
        );
        kf_videos.push(VideoKeyframes {
            truth: ground_truth_keyframes(f.segment, w.segment, fps),
            pred,
            n_frames: frame_at(fps, duration).max(0) as usize,
            fallback,
        });
    }
    if no_pair > 0 {
        notes.push(format!(
            "{no_pair} videos without both a filling (id {fill_id}) and a washout (id {wash_id}) annotation: not in the keyframe table"
        ));
    }
    if no_meta > 0 {
        notes.push(format!(
            "{no_meta} videos without fps or duration in the ground truth: not in the keyframe table"
        ));
    }
    let keyframes = if kf_videos.is_empty() {
        None
    } else {
        Some(keyframe::keyframe_metrics(&kf_videos)?)
    };

    Ok(ScoreReport {
        split: split.to_string(),
        protocol,
        n_detections: dets.len(),
        n_scored: scored.len(),
        n_videos: videos.len(),
        detection,
        keyframes,
        notes,
        suspect,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::io::{GtAnnotation, GtVideo};
    use std::path::{Path, PathBuf};

    fn gt() -> GroundTruth {
        let video = |id: &str, f: [f64; 2], w: [f64; 2]| GtVideo {
            id: id.into(),
            subset: "test".into(),
            duration: Some(10.0),
            fps: Some(10.0),
            annotations: vec![
                GtAnnotation { label: 0, segment: f },
                GtAnnotation { label: 1, segment: w },
            ],
        };
        GroundTruth {
            path: PathBuf::from("gt.json"),
            videos: vec![video("a", [1.0, 3.0], [3.0, 6.0]), video("b", [2.0, 4.0], [4.0, 8.0])],
            label_ids: [("filling".to_string(), 0), ("washout".to_string(), 1)]
                .into_iter()
                .collect(),
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

    #[test]
    fn perfect_file_scores_perfectly_and_protocols_differ() {
        let dets = vec![
            d("a", 1.0, 3.0, 0, 0.9),
            d("a", 3.0, 6.0, 1, 0.8),
            d("b", 2.0, 4.0, 0, 0.9),
            d("b", 4.0, 8.0, 1, 0.7),
            // a strong false positive that only the full protocol sees
            d("a", 7.0, 9.0, 0, 0.5),
            d("b", 0.0, 1.0, 0, 0.95),
        ];
        let full = score(&gt(), "test", &dets, Protocol::Full).unwrap();
        let paper = score(&gt(), "test", &dets, Protocol::Paper).unwrap();
        assert!(full.detection.average_map < 1.0);
        assert_eq!(paper.n_scored, 4);
        // paper: in video b the top filling is the FP [0,1] → class 0 AP < 1 there too
        let k = full.keyframes.unwrap();
        assert_eq!((k.n_videos, k.n_fallback), (2, 0));
        assert!(paper.notes[0].starts_with("paper protocol"));
    }

    #[test]
    fn keyframes_fall_back_and_notes_report_outsiders() {
        let dets = vec![
            d("a", 1.0, 3.0, 0, 0.9),
            d("zz", 1.0, 3.0, 0, 0.9),
            d("a", 1.0, 3.0, 5, 0.9),
        ];
        let r = score(&gt(), "test", &dets, Protocol::Full).unwrap();
        let k = r.keyframes.unwrap();
        // a: no washout → fallback; b: nothing → fallback
        assert_eq!(k.n_fallback, 2);
        assert!(
            r.notes
                .iter()
                .any(|n| n.contains("1 detections in 1 videos that are not in split"))
        );
        assert!(r.notes.iter().any(|n| n.contains("label ids [5]")));
        assert!(score(&gt(), "train", &dets, Protocol::Full).is_err());
        let mut short = gt();
        for v in &mut short.videos {
            for a in &mut v.annotations {
                a.segment[1] = a.segment[0] + 0.0005;
            }
        }
        let e = score(&short, "test", &dets, Protocol::Full).unwrap_err().to_string();
        assert_eq!(
            e,
            "gt.json: split \"test\" has no ground-truth segment of at least 0.001 s"
        );
    }

    /// A ground truth that names its labels without ids and lists washout first is scored
    /// with filling as class 0 and washout as class 1, as the model's detections are. (Read
    /// in order of first appearance, washout would be class 0: every detection would meet
    /// the other class's ground truth, mAP 0, and the keyframes would swap.)
    #[test]
    fn name_only_ground_truth_listing_washout_first_scores_the_right_classes() {
        use crate::metrics::io::{parse_ground_truth, parse_predictions};
        let gt = parse_ground_truth(
            r#"{"database": {
              "a": {"subset": "test", "duration": 10, "fps": 10, "annotations": [
                    {"label": "washout", "segment": [3, 6]}, {"label": "filling", "segment": [1, 3]}]},
              "b": {"subset": "test", "duration": 10, "fps": 10, "annotations": [
                    {"label": "filling", "segment": [2, 4]}, {"label": "washout", "segment": [4, 8]}]}}}"#,
            Path::new("gt.json"),
        )
        .unwrap();
        let preds = parse_predictions(
            r#"{"results": {
              "a": [{"segment": [1, 3], "label_id": 0, "score": 0.9}, {"segment": [3, 6], "label_id": 1, "score": 0.8}],
              "b": [{"segment": [2, 4], "label": "filling", "score": 0.9}, {"segment": [4, 8], "label_id": 1, "score": 0.7}]}}"#,
            Path::new("pred.json"),
            &gt,
        )
        .unwrap();
        let r = score(&gt, "test", &preds.detections, Protocol::Full).unwrap();
        assert_eq!(r.detection.classes, vec![0, 1]);
        assert_eq!(r.detection.ap[0], vec![1.0, 1.0]);
        assert_eq!(r.detection.average_map, 1.0);
        let k = r.keyframes.unwrap();
        assert_eq!((k.n_videos, k.n_fallback), (2, 0));
        assert_eq!((k.ad, k.f1), (0.0, 1.0));
    }
}
