//! Contrast timing: when the agent enters (start), when the tree is fully filled (apex)
//! and when it has washed out (end), and the vessel response at a given frame.
//!
//! Filling is a soft front that advances along the tree by path distance from the
//! ostium. Washout lowers one global concentration; a vessel point stays visible while
//! the concentration exceeds its threshold, and distal, thin points (high `rank`) have the
//! highest thresholds, so they disappear first — as thin vessels drop out of a real
//! segmentation first when the contrast fades.

use rand::{Rng, RngExt};

/// Keyframes of one run, in frames (0-based), with `0 <= start < apex < end < frames`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keyframes {
    pub frames: usize,
    pub start: usize,
    pub apex: usize,
    pub end: usize,
}

/// Draw a run length in `[min_frames, max_frames]` and its keyframes.
///
/// start ≈ 5–25 % of the run (a quarter of the runs get a short lead-in of 2–8 %),
/// apex ≈ 35–60 %, end ≈ 70–95 %; filling and washout last at least 6 frames each.
pub(crate) fn draw_keyframes<R: Rng>(rng: &mut R, min_frames: usize, max_frames: usize) -> Keyframes {
    let frames = rng.random_range(min_frames..=max_frames);
    let f = frames as f32;
    let start_frac = if rng.random_bool(0.25) {
        rng.random_range(0.02f32..0.08)
    } else {
        rng.random_range(0.05f32..0.25)
    };
    let apex_frac = rng.random_range(0.35f32..0.60);
    let end_frac = rng.random_range(0.70f32..0.95);
    let start = (start_frac * f).round() as usize;
    let apex = ((apex_frac * f).round() as usize).max(start + 6);
    let end = ((end_frac * f).round() as usize).max(apex + 6).min(frames - 1);
    Keyframes {
        frames,
        start,
        apex,
        end,
    }
}

/// Per-video parameters of the contrast response.
#[derive(Debug, Clone)]
pub(crate) struct Flow {
    pub key: Keyframes,
    /// Longest path distance from the ostium (canvas units).
    pub path_max: f32,
    /// Width of the soft filling front (canvas units).
    pub front_soft: f32,
    /// Ease-out exponent of the front: > 1 fills fast first, then slowly reaches the tips.
    pub fill_pow: f32,
    /// Exponent of the concentration decay during washout.
    pub wash_pow: f32,
    /// Faint response of the empty tree before the injection.
    pub pre: f32,
    /// Faint response left after the washout.
    pub residual: f32,
}

/// The response state at one instant, computed once per frame.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Phase {
    /// No agent: only the faint pre-contrast response.
    Before { floor: f32 },
    /// Front at path distance `front`, peak response `amp`.
    Filling {
        floor: f32,
        front: f32,
        soft: f32,
        amp: f32,
    },
    /// Global concentration `conc` in (0, 1].
    Washout { floor: f32, conc: f32, amp: f32 },
}

/// Washout threshold and sharpness: a point with rank r fades when the concentration
/// falls through `WASH_T0 + WASH_T1·r`.
const WASH_T0: f32 = 0.12;
const WASH_T1: f32 = 0.73;
const WASH_TAU: f32 = 0.04;

pub(crate) fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

impl Flow {
    pub(crate) fn draw<R: Rng>(rng: &mut R, key: Keyframes, path_max: f32) -> Self {
        let pre = rng.random_range(0.03f32..0.12);
        Flow {
            key,
            path_max,
            front_soft: rng.random_range(1.2f32..2.5),
            fill_pow: rng.random_range(1.2f32..2.2),
            wash_pow: rng.random_range(0.8f32..1.6),
            pre,
            residual: pre * rng.random_range(1.0f32..1.6),
        }
    }

    /// The state at (fractional) frame `t`.
    pub(crate) fn phase(&self, t: f32) -> Phase {
        let (s, a, e) = (self.key.start as f32, self.key.apex as f32, self.key.end as f32);
        if t < s {
            Phase::Before { floor: self.pre }
        } else if t < a {
            let u = (t - s) / (a - s);
            let ease = 1.0 - (1.0 - u).powf(self.fill_pow);
            let front = (self.path_max + 4.0 * self.front_soft) * ease;
            Phase::Filling {
                floor: self.pre,
                front,
                soft: self.front_soft,
                amp: 0.75 + 0.25 * u,
            }
        } else if t <= e {
            let u = (t - a) / (e - a);
            let conc = 1.0 - u.powf(self.wash_pow);
            Phase::Washout {
                floor: self.residual,
                conc,
                amp: 0.45 + 0.55 * conc,
            }
        } else {
            Phase::Washout {
                floor: self.residual,
                conc: 0.0,
                amp: 0.45,
            }
        }
    }
}

impl Phase {
    /// Response in [0, 1] of a fully occupied vessel point at path distance `path`
    /// with washout rank `rank` (0 proximal/thick … 1 distal/thin).
    #[inline]
    pub(crate) fn response(&self, path: f32, rank: f32) -> f32 {
        match *self {
            Phase::Before { floor } => floor,
            Phase::Filling {
                floor,
                front,
                soft,
                amp,
            } => floor.max(amp * sigmoid((front - path) / soft)),
            Phase::Washout { floor, conc, amp } => {
                floor.max(amp * sigmoid((conc - (WASH_T0 + WASH_T1 * rank)) / WASH_TAU))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn flow() -> Flow {
        let key = Keyframes {
            frames: 120,
            start: 12,
            apex: 50,
            end: 100,
        };
        Flow {
            key,
            path_max: 60.0,
            front_soft: 2.0,
            fill_pow: 1.5,
            wash_pow: 1.0,
            pre: 0.05,
            residual: 0.06,
        }
    }

    #[test]
    fn keyframes_are_ordered_and_in_range() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut short_lead_in = 0;
        for _ in 0..2000 {
            let k = draw_keyframes(&mut rng, 60, 240);
            assert!((60..=240).contains(&k.frames));
            assert!(k.start < k.apex && k.apex < k.end && k.end < k.frames, "{k:?}");
            assert!(k.apex - k.start >= 6 && k.end - k.apex >= 6, "{k:?}");
            if (k.start as f32) < 0.08 * k.frames as f32 {
                short_lead_in += 1;
            }
        }
        // Some runs must start almost immediately (a crop can then cut the lead-in).
        assert!(short_lead_in > 200, "{short_lead_in}");
    }

    #[test]
    fn front_reaches_ostium_at_start_and_every_tip_at_apex() {
        let f = flow();
        assert_eq!(f.phase(11.9).response(0.0, 0.0), 0.05);
        let at_start = f.phase(12.0).response(0.0, 0.0);
        assert!((at_start - 0.375).abs() < 1e-3, "{at_start}"); // 0.75·σ(0)
        let before_apex = f.phase(49.999).response(60.0, 1.0);
        assert!(before_apex > 0.95, "{before_apex}");
        // The front is monotone in time and reaches near points before far ones.
        let mut last = 0.0;
        for t in 12..50 {
            let v = f.phase(t as f32).response(30.0, 0.5);
            assert!(v >= last);
            last = v;
            assert!(f.phase(t as f32).response(10.0, 0.5) >= v);
        }
    }

    #[test]
    fn washout_removes_distal_thin_vessels_first_and_ends_near_residual() {
        let f = flow();
        let mid = f.phase(75.0);
        let proximal = mid.response(5.0, 0.1);
        let distal = mid.response(55.0, 0.9);
        assert!(proximal > 0.5 && distal < 0.1, "{proximal} {distal}");
        let mut last = 1.0;
        for t in 50..=100 {
            let v = f.phase(t as f32).response(5.0, 0.3);
            assert!(v <= last + 1e-6, "t {t}: {v} > {last}");
            last = v;
        }
        assert!(f.phase(100.0).response(0.0, 0.0) < 0.08);
        assert_eq!(f.phase(110.0).response(0.0, 0.0), 0.06);
    }
}
