//! The training crop (SPEC §2.3), ActionFormer's `truncate_feats` with `crop_ratio`.

use rand::{Rng, RngExt};

/// Parameters of the crop, from the `dataset` section.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CropParams {
    /// Longest window (grid steps).
    pub max_seq_len: usize,
    /// Keep a segment if at least this share of it survives.
    pub trunc_thresh: f64,
    /// Clip centre offset in grid units (`0.5·num_frames/stride`).
    pub offset: f64,
    /// Random crop length as a share of the video, or none.
    pub crop_ratio: Option<[f64; 2]>,
}

/// A crop window and the segments it keeps, shifted to the window.
#[derive(Debug, Clone, PartialEq)]
pub struct Crop {
    /// First row of the window.
    pub start: usize,
    /// Rows in the window.
    pub len: usize,
    /// Kept segments in window grid units.
    pub segments: Vec<[f64; 2]>,
    pub labels: Vec<usize>,
}

/// How many windows to try before settling for the last one (the original's 200).
const MAX_TRIALS: usize = 200;

/// Python's `round` (ties to even), as the original's length draw uses it.
fn py_round(x: f64) -> i64 {
    x.round_ties_even() as i64
}

/// Choose a crop window for a video of `rows` grid steps (SPEC §2.3).
pub fn crop(rows: usize, segments: &[[f64; 2]], labels: &[usize], p: &CropParams, rng: &mut impl Rng) -> Crop {
    let whole = || Crop {
        start: 0,
        len: rows,
        segments: segments.to_vec(),
        labels: labels.to_vec(),
    };
    let len = if rows <= p.max_seq_len {
        let Some([lo, hi]) = p.crop_ratio else { return whole() };
        let a = py_round(lo * rows as f64).max(1);
        let b = py_round(hi * rows as f64).min(rows as i64);
        let len = if a >= b { b.max(1) } else { rng.random_range(a..=b) } as usize;
        if len == rows {
            return whole();
        }
        len
    } else {
        p.max_seq_len
    };
    let mut chosen = Crop {
        start: 0,
        len,
        segments: Vec::new(),
        labels: Vec::new(),
    };
    for _ in 0..MAX_TRIALS {
        let st = rng.random_range(0..=rows - len);
        let (lo, hi) = (st as f64 - p.offset, (st + len) as f64 + p.offset);
        let mut kept = Vec::new();
        let mut kept_labels = Vec::new();
        for (seg, &label) in segments.iter().zip(labels) {
            let left = lo.max(seg[0]);
            let right = hi.min(seg[1]);
            let inter = (right - left).max(0.0);
            let area = (seg[1] - seg[0]).abs();
            // A zero-length segment gives 0/0 = NaN in the original, which never passes.
            let ratio = inter / area;
            if ratio >= p.trunc_thresh {
                kept.push([left - st as f64, right - st as f64]);
                kept_labels.push(label);
            }
        }
        chosen = Crop {
            start: st,
            len,
            segments: kept,
            labels: kept_labels,
        };
        if !chosen.segments.is_empty() {
            break;
        }
    }
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn params(max: usize) -> CropParams {
        CropParams {
            max_seq_len: max,
            trunc_thresh: 0.5,
            offset: 0.5,
            crop_ratio: Some([0.9, 1.0]),
        }
    }

    #[test]
    fn no_ratio_and_short_video_is_unchanged() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let p = CropParams {
            crop_ratio: None,
            ..params(128)
        };
        let c = crop(50, &[[3.0, 9.0]], &[0], &p, &mut rng);
        assert_eq!(
            c,
            Crop {
                start: 0,
                len: 50,
                segments: vec![[3.0, 9.0]],
                labels: vec![0]
            }
        );
    }

    #[test]
    fn long_video_is_cut_to_max_len() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let c = crop(300, &[[10.0, 60.0], [60.0, 250.0]], &[0, 1], &params(128), &mut rng);
        assert_eq!(c.len, 128);
        assert!(c.start + 128 <= 300);
        assert!(!c.segments.is_empty());
    }

    #[test]
    fn same_seed_same_crop() {
        let segs = [[5.0, 20.0], [20.0, 44.0]];
        let a = crop(48, &segs, &[0, 1], &params(128), &mut ChaCha8Rng::seed_from_u64(9));
        let b = crop(48, &segs, &[0, 1], &params(128), &mut ChaCha8Rng::seed_from_u64(9));
        assert_eq!(a, b);
    }

    proptest! {
        #[test]
        fn crop_keeps_enough_of_each_segment(rows in 2usize..400, seed in 0u64..1000,
                                             a in 0.0f64..1.0, b in 0.0f64..1.0, c in 0.0f64..1.0) {
            let mut pts = [a, b, c].map(|x| x * rows as f64);
            pts.sort_by(f64::total_cmp);
            prop_assume!(pts[1] - pts[0] > 0.5 && pts[2] - pts[1] > 0.5);
            let segs = [[pts[0], pts[1]], [pts[1], pts[2]]];
            let p = params(128);
            let out = crop(rows, &segs, &[0, 1], &p, &mut ChaCha8Rng::seed_from_u64(seed));
            prop_assert!(out.len >= 1 && out.start + out.len <= rows);
            if rows <= p.max_seq_len {
                prop_assert!(out.len <= rows);
                prop_assert!(out.len as f64 >= (0.9 * rows as f64).round_ties_even().max(1.0));
            } else {
                prop_assert_eq!(out.len, p.max_seq_len);
            }
            prop_assert_eq!(out.segments.len(), out.labels.len());
            for (s, l) in out.segments.iter().zip(&out.labels) {
                let orig = segs[*l];
                // inside the window (with the clip offset) and at least trunc_thresh of its length
                prop_assert!(s[0] >= -p.offset - 1e-9 && s[1] <= out.len as f64 + p.offset + 1e-9);
                prop_assert!(s[1] - s[0] >= p.trunc_thresh * (orig[1] - orig[0]) - 1e-9);
            }
            // Two segments that split the video: a window of ≥ 90% always keeps one of them,
            // so the search must have found it.
            prop_assert!(!out.segments.is_empty());
        }
    }
}
