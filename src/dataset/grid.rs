//! Seconds ↔ feature-grid conversion (SPEC §2.2).
//!
//! A feature row summarises `num_frames` frames and rows are `feat_stride·downsample_rate`
//! frames apart, so grid position g sits at the centre of its clip:
//! `t = (g·stride + 0.5·n)/fps`.

use crate::config::Config;

/// The grid geometry of a dataset.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Grid {
    /// Frames between grid steps: `feat_stride · downsample_rate`.
    pub stride: f64,
    /// Frames per feature row (`num_frames`).
    pub num_frames: f64,
}

impl Grid {
    pub fn from_config(cfg: &Config) -> Self {
        Self {
            stride: cfg.grid_stride(),
            num_frames: cfg.dataset.num_frames as f64,
        }
    }

    /// Offset of a clip's centre in grid units: `0.5·n / stride`.
    pub fn offset(&self) -> f64 {
        0.5 * self.num_frames / self.stride
    }

    /// Seconds → grid units.
    pub fn to_grid(&self, t: f64, fps: f64) -> f64 {
        t * fps / self.stride - self.offset()
    }

    /// Grid units → seconds (no clipping; see `infer` for the clipped version).
    pub fn to_seconds(&self, g: f64, fps: f64) -> f64 {
        (g * self.stride + 0.5 * self.num_frames) / fps
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn paper_grid_values() {
        let g = Grid {
            stride: 4.0,
            num_frames: 4.0,
        };
        assert_eq!(g.offset(), 0.5);
        // 2.6 s at 15 fps = frame 39 = grid 9.75 - 0.5
        assert!((g.to_grid(2.6, 15.0) - 9.25).abs() < 1e-12);
        assert!((g.to_seconds(9.25, 15.0) - 2.6).abs() < 1e-12);
        assert_eq!(g.to_seconds(0.0, 15.0), 2.0 / 15.0);
    }

    proptest! {
        #[test]
        fn seconds_grid_round_trip(t in 0.0f64..1000.0, fps in 1.0f64..120.0,
                                   s in 1usize..17, n in 1usize..33, d in 1usize..5) {
            let g = Grid { stride: (s * d) as f64, num_frames: n as f64 };
            let back = g.to_seconds(g.to_grid(t, fps), fps);
            prop_assert!((back - t).abs() <= 1e-9 * t.max(1.0));
            let x = g.to_grid(t, fps);
            prop_assert!((g.to_grid(g.to_seconds(x, fps), fps) - x).abs() <= 1e-9 * x.abs().max(1.0));
        }

        #[test]
        fn grid_is_monotone(a in 0.0f64..100.0, b in 0.0f64..100.0, fps in 1.0f64..60.0) {
            let g = Grid { stride: 4.0, num_frames: 4.0 };
            prop_assert_eq!(a < b, g.to_grid(a, fps) < g.to_grid(b, fps));
        }
    }
}
