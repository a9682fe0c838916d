//! 1-D segment geometry: length, intersection and temporal IoU (tIoU).
//!
//! This is the only copy of these formulas in xca; NMS, voting, the metrics and the
//! loss targets all call it, so a detection is "the same" segment everywhere.
//! A segment is `[start, end]`, in grid units or seconds (the formulas do not care).
//!
//! The operation order follows the original code exactly (`(len_a + len_b) − inter`),
//! because NMS decisions compare these values against thresholds in float32.

use std::ops::{Add, Div, Sub};

/// The scalar types segments are stored in (`f32` on the model side, `f64` in the metrics).
pub trait Coord: Copy + PartialOrd + Add<Output = Self> + Sub<Output = Self> + Div<Output = Self> {
    /// Additive identity.
    const ZERO: Self;
    /// The `1e-6` that the original 1-D NMS kernels add to every segment length.
    const NMS_AREA_EPS: Self;
}

impl Coord for f32 {
    const ZERO: Self = 0.0;
    const NMS_AREA_EPS: Self = 1e-6;
}

impl Coord for f64 {
    const ZERO: Self = 0.0;
    const NMS_AREA_EPS: Self = 1e-6;
}

fn max<T: Coord>(a: T, b: T) -> T {
    if b > a { b } else { a }
}

fn min<T: Coord>(a: T, b: T) -> T {
    if b < a { b } else { a }
}

/// Length `end − start` (negative for a reversed segment; callers validate their input).
pub fn length<T: Coord>(s: [T; 2]) -> T {
    s[1] - s[0]
}

/// Length of the overlap of `a` and `b`, `max(0, min(ends) − max(starts))`.
pub fn intersection<T: Coord>(a: [T; 2], b: [T; 2]) -> T {
    max(T::ZERO, min(a[1], b[1]) - max(a[0], b[0]))
}

/// IoU from precomputed lengths: `inter / ((len_a + len_b) − inter)`.
///
/// A zero union (two zero-length segments) gives 0, not NaN: every caller then treats
/// the pair as "not overlapping", which is what the original's NaN comparisons amount to.
pub fn iou_from_lengths<T: Coord>(inter: T, len_a: T, len_b: T) -> T {
    let union = (len_a + len_b) - inter;
    if union > T::ZERO { inter / union } else { T::ZERO }
}

/// Temporal IoU of two segments, in [0, 1] for well-formed segments. Symmetric.
pub fn tiou<T: Coord>(a: [T; 2], b: [T; 2]) -> T {
    iou_from_lengths(intersection(a, b), length(a), length(b))
}

/// The IoU the original 1-D NMS kernels use: each length gets `1e-6` added
/// (`areas = x2 − x1 + 1e-6`), so touching zero-length segments never divide by zero.
/// Use it for NMS parity only; metrics and voting use [`tiou`].
pub fn tiou_nms<T: Coord>(a: [T; 2], b: [T; 2]) -> T {
    iou_from_lengths(
        intersection(a, b),
        length(a) + T::NMS_AREA_EPS,
        length(b) + T::NMS_AREA_EPS,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn hand_computed_values() {
        assert_eq!(length([2.0f64, 5.5]), 3.5);
        assert_eq!(intersection([0.0f64, 10.0], [5.0, 20.0]), 5.0);
        assert_eq!(intersection([0.0f64, 1.0], [2.0, 3.0]), 0.0);
        // [0,10] vs [5,20]: inter 5, union 20
        assert_eq!(tiou([0.0f64, 10.0], [5.0, 20.0]), 0.25);
        // contained: [2,4] in [0,10] -> 2/10
        assert!((tiou([2.0f64, 4.0], [0.0, 10.0]) - 0.2).abs() < 1e-15);
        // touching segments do not overlap
        assert_eq!(tiou([0.0f64, 1.0], [1.0, 2.0]), 0.0);
        // two zero-length segments: 0, not NaN
        assert_eq!(tiou([1.0f64, 1.0], [1.0, 1.0]), 0.0);
        // NMS flavour: zero-length segments have no intersection, and the eps keeps the
        // union positive
        assert_eq!(tiou_nms([1.0f64, 1.0], [1.0, 1.0]), 0.0);
        // identity with eps: 1 / (1 + 2e-6), not exactly 1
        let v = tiou_nms([0.0f32, 1.0], [0.0, 1.0]);
        assert!((v as f64 - 1.0 / (1.0 + 2e-6)).abs() < 1e-7, "{v}");
        assert!(v < 1.0);
        // [0,1] vs [0,2] with eps: inter 1, union (1+1e-6)+(2+1e-6)-1, slightly below 0.5
        let w = tiou_nms([0.0f64, 1.0], [0.0, 2.0]);
        assert!((w - 1.0 / (2.0 + 2e-6)).abs() < 1e-15, "{w}");
        assert!(w < 0.5);
    }

    proptest! {
        #[test]
        fn tiou_is_symmetric_bounded_and_one_on_identity(
            a0 in -100.0f64..100.0, la in 0.0f64..50.0,
            b0 in -100.0f64..100.0, lb in 0.0f64..50.0,
        ) {
            let a = [a0, a0 + la];
            let b = [b0, b0 + lb];
            let ab = tiou(a, b);
            prop_assert_eq!(ab, tiou(b, a));
            prop_assert!((0.0..=1.0).contains(&ab), "{}", ab);
            if la > 1e-9 {
                prop_assert!((tiou(a, a) - 1.0).abs() < 1e-12);
            }
            let n = tiou_nms(a, b);
            prop_assert!((0.0..=1.0).contains(&n), "{}", n);
            prop_assert_eq!(n, tiou_nms(b, a));
        }

        #[test]
        fn f32_tiou_bounded(a0 in -100.0f32..100.0, la in 0.0f32..50.0, b0 in -100.0f32..100.0, lb in 0.0f32..50.0) {
            let v = tiou([a0, a0 + la], [b0, b0 + lb]);
            prop_assert!((0.0..=1.0).contains(&v));
        }
    }
}
