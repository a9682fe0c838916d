//! Grid units → seconds (SPEC §6.3), the start/apex/end keyframes (SPEC §6.4) and, for a
//! video without annotations, those keyframes as frames inside the video and in order.

use super::decode::Candidates;

/// What the seconds conversion needs about a video and the feature grid (SPEC §2.2).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GridToSeconds {
    /// `dataset.feat_stride` s (frames between feature rows, 4).
    pub feat_stride: f64,
    /// `dataset.num_frames` n (frames per feature clip, 4).
    pub num_frames: f64,
    /// `dataset.downsample_rate` d (1).
    pub downsample_rate: f64,
    /// Frames per second of this video.
    pub fps: f64,
    /// Duration in seconds; `None` leaves the upper end unclipped.
    pub duration: Option<f64>,
}

/// `t = (g·stride + 0.5·n)/fps` with `stride = s·d`, then clipped to `[0, duration]`
/// (SPEC §6.3). Computed in float32 in the original's operation order, so the values
/// match its output bit for bit (up to `exp`/division rounding of the platform).
pub fn grid_to_seconds(segs: &[[f32; 2]], g: &GridToSeconds) -> Vec<[f32; 2]> {
    let stride = (g.feat_stride * g.downsample_rate) as f32;
    let offset = (0.5 * g.num_frames) as f32;
    let fps = g.fps as f32;
    let dur = g.duration.map(|d| d as f32);
    let conv = |x: f32| {
        let t = (x * stride + offset) / fps;
        let t = if t <= 0.0 { 0.0 } else { t };
        match dur {
            Some(d) if t >= d => d,
            _ => t,
        }
    };
    segs.iter().map(|s| [conv(s[0]), conv(s[1])]).collect()
}

/// How predicted keyframes are read off the best filling and washout segments: the
/// config's `setting`.
pub use crate::config::DecodeSetting;

/// Start, apex and end keyframes, as frame indices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Keyframes {
    /// Contrast agent starts to fill the vessels.
    pub start: i64,
    /// Maximum filling.
    pub apex: i64,
    /// Agent gone.
    pub end: i64,
}

/// Which of the two segments were missing when keyframes were derived.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Fallback {
    /// Both a filling and a washout segment were found.
    None,
    /// No filling segment: start = apex = W.start.
    NoFilling,
    /// No washout segment: apex = end = F.end.
    NoWashout,
    /// Neither: all three keyframes are 0.
    Neither,
}

impl Fallback {
    /// True when a fallback was needed (SPEC §6.4 asks to count these videos).
    pub fn used(self) -> bool {
        self != Self::None
    }
}

/// Frame index of time `t` seconds: `⌊fps·t⌋`.
pub fn frame_at(fps: f64, t: f64) -> i64 {
    (fps * t).floor() as i64
}

/// `⌊(fps·a + fps·b)/2⌋`, the midpoint frame as the original computes it.
fn mid_frame(fps: f64, a: f64, b: f64) -> i64 {
    ((fps * a + fps * b) / 2.0).floor() as i64
}

/// Predicted keyframes from the best filling segment `f` and best washout segment `w`
/// (seconds), SPEC §6.4.
///
/// Fallbacks: a missing F is taken as the point `[W.start, W.start]` and a missing W as
/// `[F.end, F.end]`. For setting 0 this is exactly SPEC's rule (no F: start = apex =
/// ⌊fps·W.start⌋; no W: apex = end = ⌊fps·F.end⌋); settings 1 and 2 use the same
/// substitution. With neither, all keyframes are 0.
pub fn predicted_keyframes(
    f: Option<[f64; 2]>,
    w: Option<[f64; 2]>,
    fps: f64,
    setting: DecodeSetting,
) -> (Keyframes, Fallback) {
    let (f, w, fallback) = match (f, w) {
        (Some(f), Some(w)) => (f, w, Fallback::None),
        (None, Some(w)) => ([w[0], w[0]], w, Fallback::NoFilling),
        (Some(f), None) => (f, [f[1], f[1]], Fallback::NoWashout),
        (None, None) => return (Keyframes::default(), Fallback::Neither),
    };
    let k = match setting {
        DecodeSetting::ApexMidpoint => Keyframes {
            start: frame_at(fps, f[0]),
            apex: mid_frame(fps, f[1], w[0]),
            end: frame_at(fps, w[1]),
        },
        DecodeSetting::StartMidpoint => Keyframes {
            start: mid_frame(fps, f[0], w[0]),
            apex: frame_at(fps, f[1]),
            end: frame_at(fps, w[1]),
        },
        DecodeSetting::EndMidpoint => Keyframes {
            start: frame_at(fps, f[0]),
            apex: frame_at(fps, w[0]),
            end: mid_frame(fps, f[1], w[1]),
        },
    };
    (k, fallback)
}

/// Ground-truth keyframes from the annotated filling and washout segments (seconds):
/// start = ⌊fps·F.start⌋, apex = ⌊fps·F.end⌋, end = ⌊fps·W.end⌋ (SPEC §7.2; the
/// annotation's own seconds, not the original's grid values).
pub fn ground_truth_keyframes(filling: [f64; 2], washout: [f64; 2], fps: f64) -> Keyframes {
    Keyframes {
        start: frame_at(fps, filling[0]),
        apex: frame_at(fps, filling[1]),
        end: frame_at(fps, washout[1]),
    }
}

/// The highest-scoring segment of `class` (first one on equal scores), if any.
pub fn top_of_class(c: &Candidates, class: usize) -> Option<[f32; 2]> {
    let mut best: Option<(usize, f32)> = None;
    for (i, (&label, &score)) in c.labels.iter().zip(&c.scores).enumerate() {
        if label == class && best.is_none_or(|(_, s)| score > s) {
            best = Some((i, score));
        }
    }
    best.map(|(i, _)| c.segs[i])
}

/// Keyframes of one post-processed video (segments in seconds): the top filling and top
/// washout segment through [`predicted_keyframes`].
pub fn keyframes_of(
    c: &Candidates,
    filling_class: usize,
    washout_class: usize,
    fps: f64,
    setting: DecodeSetting,
) -> (Keyframes, Fallback) {
    let widen = |s: [f32; 2]| [s[0] as f64, s[1] as f64];
    predicted_keyframes(
        top_of_class(c, filling_class).map(widen),
        top_of_class(c, washout_class).map(widen),
        fps,
        setting,
    )
}

/// The score of the highest-scoring segment of `class`, if any.
pub fn top_score(c: &Candidates, class: usize) -> Option<f32> {
    c.labels
        .iter()
        .zip(&c.scores)
        .filter(|(l, _)| **l == class)
        .map(|(_, s)| *s)
        .reduce(f32::max)
}

/// Keyframes as frame indices of a video of `frames` frames: clamped to `[0, frames − 1]`
/// and put in order. SPEC §6.4 reads them off two independent segments, so a poor model
/// can give an apex before the start, or an end at `⌊fps·duration⌋ = frames`, one past the
/// last frame. Returns whether anything changed.
pub fn in_video_order(k: Keyframes, frames: usize) -> (Keyframes, bool) {
    let last = frames.saturating_sub(1) as i64;
    let mut v = [k.start, k.apex, k.end].map(|f| f.clamp(0, last));
    v.sort_unstable();
    let out = Keyframes {
        start: v[0],
        apex: v[1],
        end: v[2],
    };
    (out, out != k)
}

/// The keyframes of a video without annotations (what `xca predict` reports).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VideoPrediction {
    /// Frames in the video, `⌊fps·duration⌋`.
    pub frames: usize,
    /// Start, apex and end frame, in `[0, frames)` and in order.
    pub keyframes: Keyframes,
    /// Whether a filling or washout segment was missing (SPEC §6.4 fallback).
    pub fallback: Fallback,
    /// Whether the SPEC §6.4 frames had to be clamped into the video or put in order.
    pub adjusted: bool,
    /// Scores of the top filling and top washout segments (the keyframes' confidence).
    pub confidence: [Option<f32>; 2],
}

/// [`keyframes_of`] a post-processed video of `duration` seconds (segments in seconds),
/// then [`in_video_order`] in its `⌊fps·duration⌋` frames.
pub fn predict_in_video(
    c: &Candidates,
    filling_class: usize,
    washout_class: usize,
    fps: f64,
    duration: f64,
    setting: DecodeSetting,
) -> VideoPrediction {
    let frames = frame_at(fps, duration).max(0) as usize;
    let (raw, fallback) = keyframes_of(c, filling_class, washout_class, fps, setting);
    let (keyframes, adjusted) = in_video_order(raw, frames);
    VideoPrediction {
        frames,
        keyframes,
        fallback,
        adjusted,
        confidence: [top_score(c, filling_class), top_score(c, washout_class)],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S0: DecodeSetting = DecodeSetting::ApexMidpoint;

    #[test]
    fn seconds_conversion_and_clipping() {
        let g = GridToSeconds {
            feat_stride: 4.0,
            num_frames: 4.0,
            downsample_rate: 1.0,
            fps: 15.0,
            duration: Some(6.0),
        };
        // (10·4 + 2)/15 = 2.8; (-1·4 + 2)/15 < 0 → 0; (30·4+2)/15 = 8.13 → 6.0
        let out = grid_to_seconds(&[[10.0, -1.0], [-0.5, 30.0]], &g);
        assert!((out[0][0] - 2.8).abs() < 1e-6);
        assert_eq!(out[0][1], 0.0);
        assert_eq!(out[1][0], 0.0); // exactly 0 at g = -0.5
        assert_eq!(out[1][1], 6.0);
        let g2 = GridToSeconds {
            downsample_rate: 2.0,
            duration: None,
            ..g
        };
        // stride 8: (30·8+2)/15 = 16.133, unclipped
        assert!((grid_to_seconds(&[[0.0, 30.0]], &g2)[0][1] - 242.0 / 15.0).abs() < 1e-5);
    }

    #[test]
    fn setting_0_and_fallbacks() {
        let f = [0.8, 2.6];
        let w = [2.6, 5.9];
        let (k, fb) = predicted_keyframes(Some(f), Some(w), 15.0, S0);
        // 12.0 → 12; (39 + 39)/2 = 39; 88.5 → 88
        assert_eq!(
            (k, fb),
            (
                Keyframes {
                    start: 12,
                    apex: 39,
                    end: 88
                },
                Fallback::None
            )
        );
        let (k, fb) = predicted_keyframes(None, Some(w), 15.0, S0);
        assert_eq!(
            (k, fb),
            (
                Keyframes {
                    start: 39,
                    apex: 39,
                    end: 88
                },
                Fallback::NoFilling
            )
        );
        let (k, fb) = predicted_keyframes(Some(f), None, 15.0, S0);
        assert_eq!(
            (k, fb),
            (
                Keyframes {
                    start: 12,
                    apex: 39,
                    end: 39
                },
                Fallback::NoWashout
            )
        );
        let (k, fb) = predicted_keyframes(None, None, 15.0, S0);
        assert_eq!((k, fb), (Keyframes::default(), Fallback::Neither));
        assert!(fb.used() && !Fallback::None.used());
    }

    #[test]
    fn settings_1_and_2() {
        let f = [1.0, 3.0];
        let w = [2.0, 6.0];
        // setting 1: start ⌊10·(1+2)/2⌋ = 15, apex 30, end 60
        let (k, _) = predicted_keyframes(Some(f), Some(w), 10.0, DecodeSetting::StartMidpoint);
        assert_eq!(
            k,
            Keyframes {
                start: 15,
                apex: 30,
                end: 60
            }
        );
        // setting 2: start 10, apex 20, end ⌊10·(3+6)/2⌋ = 45
        let (k, _) = predicted_keyframes(Some(f), Some(w), 10.0, DecodeSetting::EndMidpoint);
        assert_eq!(
            k,
            Keyframes {
                start: 10,
                apex: 20,
                end: 45
            }
        );
        // fallback substitution also applies to settings 1 and 2
        let (k, fb) = predicted_keyframes(None, Some(w), 10.0, DecodeSetting::EndMidpoint);
        assert_eq!(
            (k, fb),
            (
                Keyframes {
                    start: 20,
                    apex: 20,
                    end: 40
                },
                Fallback::NoFilling
            )
        );
        assert!(DecodeSetting::try_from(3).is_err());
        assert_eq!(DecodeSetting::try_from(2).unwrap(), DecodeSetting::EndMidpoint);
    }

    #[test]
    fn midpoint_floors_half_frames() {
        // fps·F.end = 10, fps·W.start = 11 → 10.5 → 10
        let (k, _) = predicted_keyframes(Some([0.0, 1.0]), Some([1.1, 2.0]), 10.0, S0);
        assert_eq!(k.apex, 10);
    }

    #[test]
    fn ground_truth_uses_annotation_seconds() {
        let k = ground_truth_keyframes([0.8, 2.6], [2.6, 5.9], 15.0);
        assert_eq!(
            k,
            Keyframes {
                start: 12,
                apex: 39,
                end: 88
            }
        );
    }

    #[test]
    fn top_of_class_takes_first_of_equal_scores() {
        let c = Candidates {
            segs: vec![[0.0, 1.0], [2.0, 3.0], [4.0, 5.0], [6.0, 7.0]],
            scores: vec![0.5, 0.9, 0.9, 0.95],
            labels: vec![0, 0, 0, 1],
        };
        assert_eq!(top_of_class(&c, 0), Some([2.0, 3.0]));
        assert_eq!(top_of_class(&c, 1), Some([6.0, 7.0]));
        assert_eq!(top_of_class(&c, 2), None);
        let (k, fb) = keyframes_of(&c, 0, 1, 10.0, S0);
        assert_eq!(
            (k, fb),
            (
                Keyframes {
                    start: 20,
                    apex: 45,
                    end: 70
                },
                Fallback::None
            )
        );
    }

    fn k(start: i64, apex: i64, end: i64) -> Keyframes {
        Keyframes { start, apex, end }
    }

    #[test]
    fn keyframes_are_clamped_into_the_video_and_ordered() {
        assert_eq!(in_video_order(k(3, 5, 9), 10), (k(3, 5, 9), false));
        // End one past the last frame (segment clipped to the duration).
        assert_eq!(in_video_order(k(3, 5, 10), 10), (k(3, 5, 9), true));
        // Apex before start (washout starting before filling).
        assert_eq!(in_video_order(k(6, 2, 8), 10), (k(2, 6, 8), true));
        // End before everything, and beyond the video.
        assert_eq!(in_video_order(k(7, 12, 1), 10), (k(1, 7, 9), true));
        assert_eq!(in_video_order(k(-1, 0, 0), 1), (k(0, 0, 0), true));
        assert_eq!(in_video_order(k(0, 0, 0), 0), (k(0, 0, 0), false));
    }

    #[test]
    fn a_prediction_reads_the_top_segments_and_stays_inside_the_video() {
        // 6 s at 10 fps: 60 frames. Top filling [1.0, 3.0] (0.8), top washout [4.0, 6.0] (0.6).
        let c = Candidates {
            segs: vec![[1.0, 3.0], [4.0, 6.0], [0.5, 2.0], [2.0, 5.0]],
            scores: vec![0.8, 0.6, 0.3, 0.7],
            labels: vec![0, 1, 0, 2],
        };
        let p = predict_in_video(&c, 0, 1, 10.0, 6.0, S0);
        assert_eq!(p.frames, 60);
        // apex ⌊(30 + 40)/2⌋ = 35; end ⌊10·6⌋ = 60 is one past the last frame → 59.
        assert_eq!(p.keyframes, k(10, 35, 59));
        assert!(p.adjusted);
        assert_eq!(p.fallback, Fallback::None);
        assert_eq!(p.confidence, [Some(0.8), Some(0.6)]);

        // Washout before filling: the apex would precede the start; no washout class 3.
        let c = Candidates {
            segs: vec![[3.0, 4.0], [0.5, 1.0]],
            scores: vec![0.9, 0.4],
            labels: vec![0, 1],
        };
        let p = predict_in_video(&c, 0, 1, 10.0, 6.0, S0);
        // raw start 30, apex ⌊(40 + 5)/2⌋ = 22, end 10 → 10, 22, 30
        assert_eq!((p.keyframes, p.adjusted), (k(10, 22, 30), true));
        let p = predict_in_video(&c, 0, 3, 10.0, 6.0, S0);
        assert_eq!(
            (p.keyframes, p.fallback, p.adjusted, p.confidence),
            (k(30, 40, 40), Fallback::NoWashout, false, [Some(0.9), None])
        );
        // A video shorter than a frame has no frames: everything collapses to 0.
        assert_eq!(predict_in_video(&c, 0, 1, 10.0, 0.05, S0).keyframes, k(0, 0, 0));
        assert_eq!(predict_in_video(&c, 0, 1, 10.0, 0.05, S0).frames, 0);
    }

    #[test]
    fn top_score_is_the_best_of_the_class() {
        let c = Candidates {
            segs: vec![[0.0, 1.0], [1.0, 2.0], [2.0, 3.0], [3.0, 4.0]],
            scores: vec![0.2, 0.9, 0.5, 0.9],
            labels: vec![0, 1, 0, 1],
        };
        assert_eq!(top_score(&c, 0), Some(0.5));
        assert_eq!(top_score(&c, 5), None);
    }
}
