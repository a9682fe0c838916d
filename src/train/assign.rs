//! Label assignment with center sampling (SPEC §4.1): which points of the feature pyramid
//! are positives for which class, and what offsets they should regress.
//!
//! This is ActionFormer's `label_points_single_video`, computed on the host in `f32` with
//! the same operations in the same order, so that the targets match the original bit for
//! bit. Two of its quirks are kept on purpose because the losses see them:
//! - every segment whose length is within 1e-3 of the shortest qualifying one gets a
//!   one-hot class target (the sum is clamped to 1);
//! - a point that qualifies for no segment still carries the offsets to segment 0
//!   (PyTorch's `min` over an all-`inf` row returns index 0). Those offsets can be negative;
//!   the regression loss only reads positives, so they never reach a gradient.

/// Why targets could not be built.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AssignError {
    #[error("{segments} ground-truth segments but {labels} labels: they must pair up")]
    LengthMismatch { segments: usize, labels: usize },
    #[error("ground-truth label {label} is out of range for {num_classes} classes")]
    LabelOutOfRange { label: usize, num_classes: usize },
    #[error("num_classes must be at least 1")]
    NoClasses,
    #[error("point {index} has stride {stride}: strides must be positive")]
    BadStride { index: usize, stride: f32 },
}

/// How points qualify as inside a segment: the config's `train_cfg.center_sample`.
pub use crate::config::CenterSample;

/// Targets of one video, one row per point (all levels concatenated).
#[derive(Debug, Clone, PartialEq)]
pub struct Targets {
    /// `[n_points * num_classes]`, row-major: 0/1 class targets.
    pub cls: Vec<f32>,
    /// `[n_points * 2]`, row-major: `(left, right)` offsets divided by the point's stride.
    pub reg: Vec<f32>,
    /// Number of classes (row width of `cls`).
    pub num_classes: usize,
}

impl Targets {
    /// Number of points.
    pub fn len(&self) -> usize {
        self.reg.len() / 2
    }

    /// True when there are no points.
    pub fn is_empty(&self) -> bool {
        self.reg.is_empty()
    }

    /// Whether point `i` is a positive (some class target > 0).
    pub fn is_positive(&self, i: usize) -> bool {
        let c = self.num_classes;
        self.cls[i * c..(i + 1) * c].iter().any(|&v| v > 0.0)
    }

    /// Number of positive points.
    pub fn num_positives(&self) -> usize {
        (0..self.len()).filter(|&i| self.is_positive(i)).count()
    }
}

/// Assign class and regression targets to `points` for one video.
///
/// - `points`: rows `(t, reg_min, reg_max, stride)` of all pyramid levels concatenated
///   (SPEC §3.7), in grid units.
/// - `segments`: ground-truth `[start, end]` in grid units; `labels`: their class ids.
///
/// A video with no segments gets all-zero targets.
pub fn assign_targets(
    points: &[[f32; 4]],
    segments: &[[f32; 2]],
    labels: &[usize],
    num_classes: usize,
    center_sample: CenterSample,
) -> Result<Targets, AssignError> {
    if num_classes == 0 {
        return Err(AssignError::NoClasses);
    }
    if segments.len() != labels.len() {
        return Err(AssignError::LengthMismatch {
            segments: segments.len(),
            labels: labels.len(),
        });
    }
    if let Some(&label) = labels.iter().find(|&&l| l >= num_classes) {
        return Err(AssignError::LabelOutOfRange { label, num_classes });
    }
    if let Some((index, p)) = points.iter().enumerate().find(|(_, p)| p[3].is_nan() || p[3] <= 0.0) {
        return Err(AssignError::BadStride { index, stride: p[3] });
    }

    let n = points.len();
    let mut cls = vec![0.0f32; n * num_classes];
    let mut reg = vec![0.0f32; n * 2];
    if segments.is_empty() {
        return Ok(Targets { cls, reg, num_classes });
    }

    let mut lens = vec![0.0f32; segments.len()];
    for (i, p) in points.iter().enumerate() {
        let [t, reg_min, reg_max, stride] = *p;
        for (j, seg) in segments.iter().enumerate() {
            let [a, b] = *seg;
            let left = t - a;
            let right = b - t;
            let inside = match center_sample {
                CenterSample::Radius(r) => {
                    // Targets are computed in f32, as the original computes them.
                    let r = r as f32;
                    let center = 0.5 * (a + b);
                    let t_min = center - stride * r;
                    let t_max = center + stride * r;
                    let cb_left = t - t_min.max(a);
                    let cb_right = t_max.min(b) - t;
                    cb_left.min(cb_right) > 0.0
                }
                CenterSample::None => left.min(right) > 0.0,
            };
            let max_dist = left.max(right);
            let in_range = max_dist >= reg_min && max_dist <= reg_max;
            lens[j] = if inside && in_range { b - a } else { f32::INFINITY };
        }

        // First index of the minimum, as torch.min(dim) returns; 0 for an all-inf row.
        let mut min_ind = 0;
        for j in 1..lens.len() {
            if lens[j] < lens[min_ind] {
                min_ind = j;
            }
        }
        let min_len = lens[min_ind];

        let row = &mut cls[i * num_classes..(i + 1) * num_classes];
        for (j, &len) in lens.iter().enumerate() {
            if len <= min_len + 1e-3 && len < f32::INFINITY {
                row[labels[j]] = 1.0; // the sum is clamped to 1
            }
        }

        let [a, b] = segments[min_ind];
        reg[2 * i] = (t - a) / stride;
        reg[2 * i + 1] = (b - t) / stride;
    }
    Ok(Targets { cls, reg, num_classes })
}

/// Points of a pyramid (SPEC §3.7) for tests and tools: level `l` has `lengths[l]` points at
/// `i · strides[l]`, each carrying `regression_ranges[l]` and its stride.
pub fn pyramid_points(lengths: &[usize], strides: &[f32], regression_ranges: &[[f32; 2]]) -> Vec<[f32; 4]> {
    lengths
        .iter()
        .zip(strides)
        .zip(regression_ranges)
        .flat_map(|((&len, &s), &[lo, hi])| (0..len).map(move |i| [i as f32 * s, lo, hi, s]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const RANGES: [[f32; 2]; 6] = [
        [0.0, 4.0],
        [4.0, 8.0],
        [8.0, 16.0],
        [16.0, 32.0],
        [32.0, 64.0],
        [64.0, 10000.0],
    ];

    fn paper_points(t: usize) -> Vec<[f32; 4]> {
        let strides = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0];
        let lengths: Vec<usize> = (0..6).map(|l| t >> l).collect();
        pyramid_points(&lengths, &strides, &RANGES)
    }

    #[test]
    fn empty_video_gives_zero_targets() {
        let pts = paper_points(16);
        let t = assign_targets(&pts, &[], &[], 2, CenterSample::Radius(1.5)).unwrap();
        assert_eq!(t.cls, vec![0.0; pts.len() * 2]);
        assert_eq!(t.reg, vec![0.0; pts.len() * 2]);
        assert_eq!(t.num_positives(), 0);
    }

    #[test]
    fn center_sampling_picks_points_near_the_centre_at_the_right_level() {
        // One segment [10, 13] (length 3, centre 11.5): at stride 1 the centre region is
        // (10, 13) clipped to (10, 13); max(left, right) must lie in [0, 4].
        let pts = paper_points(32);
        let t = assign_targets(&pts, &[[10.0, 13.0]], &[1], 2, CenterSample::Radius(1.5)).unwrap();
        let pos: Vec<usize> = (0..t.len()).filter(|&i| t.is_positive(i)).collect();
        // Level 0 points 11 and 12 (t=10 and 13 are on the boundary: strict inequalities).
        assert_eq!(pos, vec![11, 12]);
        assert_eq!(&t.cls[22..24], &[0.0, 1.0]);
        assert_eq!(&t.reg[22..24], &[1.0, 2.0]);
        assert_eq!(&t.reg[24..26], &[2.0, 1.0]);
        // Level 1 point t=12 (index 32 + 6): inside, but max(2, 1) = 2 < 4, out of range.
        assert!(!t.is_positive(38));
    }

    #[test]
    fn unmatched_points_carry_offsets_to_segment_zero() {
        let pts = paper_points(32);
        let segs = [[20.0, 24.0], [2.0, 5.0]];
        let t = assign_targets(&pts, &segs, &[0, 1], 2, CenterSample::Radius(1.5)).unwrap();
        // Point t=0 at level 0 matches nothing: offsets to segment 0 = (0-20, 24-0).
        assert!(!t.is_positive(0));
        assert_eq!(&t.reg[0..2], &[-20.0, 24.0]);
        // Level 2 (stride 4) point t=8: offsets to segment 0 divided by 4.
        let i = 32 + 16 + 2;
        assert_eq!(&t.reg[2 * i..2 * i + 2], &[-3.0, 4.0]);
    }

    #[test]
    fn ties_within_1e3_get_both_classes_and_the_first_shortest_regresses() {
        let pts = paper_points(32);
        // Two overlapping segments of equal length with different labels, and a longer one.
        let segs = [[8.0, 12.0], [8.0005, 12.0], [6.0, 14.0]];
        let t = assign_targets(&pts, &segs, &[1, 0, 1], 2, CenterSample::None).unwrap();
        // Point t=10 at level 0: all three contain it; max distances 2, 2, 4: all in [0, 4].
        // Lengths 4, 3.9995, 8: the shortest is segment 1, segment 0 is within 1e-3.
        assert_eq!(&t.cls[20..22], &[1.0, 1.0]);
        let expect_left = 10.0f32 - 8.0005;
        assert_eq!(&t.reg[20..22], &[expect_left, 2.0]);
        // Same label twice is clamped to 1.
        let t2 = assign_targets(&pts, &[[8.0, 12.0], [8.0, 12.0]], &[0, 0], 2, CenterSample::None).unwrap();
        assert_eq!(&t2.cls[20..22], &[1.0, 0.0]);
    }

    proptest::proptest! {
        /// Positives lie strictly inside their segment, regress within their level's range,
        /// and carry a class of a segment with exactly those offsets; negatives carry the
        /// offsets to segment 0.
        #[test]
        fn assignment_invariants(
            segs in proptest::collection::vec((0.0f32..120.0, 0.5f32..60.0, 0usize..2), 1..5),
        ) {
            let pts = paper_points(128);
            let segments: Vec<[f32; 2]> = segs.iter().map(|&(a, l, _)| [a, a + l]).collect();
            let labels: Vec<usize> = segs.iter().map(|s| s.2).collect();
            let t = assign_targets(&pts, &segments, &labels, 2, CenterSample::Radius(1.5)).unwrap();
            proptest::prop_assert!(t.cls.iter().all(|&c| c == 0.0 || c == 1.0));
            for (i, p) in pts.iter().enumerate() {
                let (l, r) = (t.reg[2 * i], t.reg[2 * i + 1]);
                if t.is_positive(i) {
                    proptest::prop_assert!(l > 0.0 && r > 0.0);
                    let m = (l * p[3]).max(r * p[3]);
                    proptest::prop_assert!(m >= p[1] - 1e-3 && m <= p[2] + 1e-3);
                    let owner = segments.iter().zip(&labels).find(|(s, _)| {
                        (p[0] - s[0]) / p[3] == l && (s[1] - p[0]) / p[3] == r
                    });
                    proptest::prop_assert!(owner.is_some_and(|(_, &lab)| t.cls[2 * i + lab] == 1.0));
                } else {
                    let [a, b] = segments[0];
                    proptest::prop_assert_eq!((l, r), ((p[0] - a) / p[3], (b - p[0]) / p[3]));
                }
            }
        }
    }

    #[test]
    fn bad_input_is_an_error() {
        let pts = paper_points(8);
        assert_eq!(
            assign_targets(&pts, &[[1.0, 2.0]], &[], 2, CenterSample::None),
            Err(AssignError::LengthMismatch { segments: 1, labels: 0 })
        );
        assert_eq!(
            assign_targets(&pts, &[[1.0, 2.0]], &[2], 2, CenterSample::None),
            Err(AssignError::LabelOutOfRange {
                label: 2,
                num_classes: 2
            })
        );
        assert_eq!(
            assign_targets(&[[0.0, 0.0, 4.0, 0.0]], &[[1.0, 2.0]], &[0], 2, CenterSample::None),
            Err(AssignError::BadStride { index: 0, stride: 0.0 })
        );
    }
}
