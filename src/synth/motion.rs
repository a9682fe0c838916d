//! Cardiac and respiratory motion as a smooth displacement field on the canvas.
//!
//! The heart contracts towards its centre and twists a little in systole (a non-rigid
//! warp with a spatially varying part), with a per-video heart rate of 0.8–1.5 Hz;
//! breathing shifts everything slowly (0.2–0.3 Hz). A frame is rendered by sampling the
//! reference maps at `x − displacement(x, t)`.

use std::f32::consts::TAU;

use rand::{Rng, RngExt};

/// Motion parameters of one video.
#[derive(Debug, Clone)]
pub(crate) struct Motion {
    pub centre: (f32, f32),
    /// Radial contraction at 30 px from the centre, in pixels.
    pub cardiac_amp: f32,
    pub cardiac_hz: f32,
    pub cardiac_phase: f32,
    /// Systolic twist (radians at peak).
    pub twist: f32,
    /// Amplitude, wave number and phases of the spatially varying part.
    pub wave_amp: f32,
    pub wave_k: f32,
    pub wave_phase: (f32, f32),
    pub resp_amp: f32,
    pub resp_dir: (f32, f32),
    pub resp_hz: f32,
    pub resp_phase: f32,
}

/// Reference radius at which `cardiac_amp` is the contraction.
const R_REF: f32 = 30.0;

impl Motion {
    pub(crate) fn draw<R: Rng>(rng: &mut R, centre: (f32, f32)) -> Self {
        // Breathing moves mostly up and down.
        let resp_angle = std::f32::consts::FRAC_PI_2 + rng.random_range(-0.5f32..0.5);
        Motion {
            centre,
            cardiac_amp: rng.random_range(1.0f32..3.0),
            cardiac_hz: rng.random_range(0.8f32..1.5),
            cardiac_phase: rng.random_range(0.0f32..1.0),
            twist: rng.random_range(-0.04f32..0.04),
            wave_amp: rng.random_range(0.3f32..0.9),
            wave_k: rng.random_range(0.08f32..0.18),
            wave_phase: (rng.random_range(0.0f32..TAU), rng.random_range(0.0f32..TAU)),
            resp_amp: rng.random_range(0.8f32..2.5),
            resp_dir: (resp_angle.cos(), resp_angle.sin()),
            resp_hz: rng.random_range(0.2f32..0.3),
            resp_phase: rng.random_range(0.0f32..TAU),
        }
    }

    /// Systolic contraction in [0, 1] at time `t` seconds: a fast rise over the first
    /// 35 % of the beat, a slower relaxation over the rest.
    pub(crate) fn systole(&self, t: f32) -> f32 {
        let phase = (self.cardiac_hz * t + self.cardiac_phase).rem_euclid(1.0);
        if phase < 0.35 {
            0.5 * (1.0 - (std::f32::consts::PI * phase / 0.35).cos())
        } else {
            0.5 * (1.0 + (std::f32::consts::PI * (phase - 0.35) / 0.65).cos())
        }
    }

    /// Respiratory shift at time `t` seconds.
    pub(crate) fn respiration(&self, t: f32) -> (f32, f32) {
        let s = self.resp_amp * (TAU * self.resp_hz * t + self.resp_phase).sin();
        (s * self.resp_dir.0, s * self.resp_dir.1)
    }

    /// The per-frame constants of the warp.
    pub(crate) fn at(&self, t: f32) -> Warp {
        let s = self.systole(t);
        let (rx, ry) = self.respiration(t);
        Warp {
            centre: self.centre,
            contraction: s * self.cardiac_amp / R_REF,
            twist: s * self.twist,
            wave: s * self.wave_amp,
            wave_k: self.wave_k,
            wave_phase: self.wave_phase,
            shift: (rx, ry),
        }
    }
}

/// The displacement field at one instant.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Warp {
    centre: (f32, f32),
    contraction: f32,
    twist: f32,
    wave: f32,
    wave_k: f32,
    wave_phase: (f32, f32),
    pub shift: (f32, f32),
}

impl Warp {
    /// Where the content shown at canvas position (x, y) comes from (the inverse warp,
    /// to first order — displacements are a few pixels over a smooth field).
    #[inline]
    pub(crate) fn source(&self, x: f32, y: f32) -> (f32, f32) {
        let (dx, dy) = self.displacement(x - self.shift.0, y - self.shift.1);
        (x - self.shift.0 - dx, y - self.shift.1 - dy)
    }

    /// Heart displacement of the point (x, y) of the reference (end-diastolic) tree.
    #[inline]
    pub(crate) fn displacement(&self, x: f32, y: f32) -> (f32, f32) {
        let (px, py) = (x - self.centre.0, y - self.centre.1);
        // Contraction towards the centre plus a small rotation (twist).
        let mut dx = -self.contraction * px - self.twist * py;
        let mut dy = -self.contraction * py + self.twist * px;
        // A smooth spatially varying part so the motion is not a similarity transform.
        dx += self.wave * (self.wave_k * py + self.wave_phase.0).sin();
        dy += self.wave * (self.wave_k * px + self.wave_phase.1).sin();
        (dx, dy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn heart_beats_at_its_rate_with_bounded_displacement() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        for _ in 0..20 {
            let m = Motion::draw(&mut rng, (32.0, 36.0));
            let period = 1.0 / m.cardiac_hz;
            for i in 0..50 {
                let t = i as f32 * 0.137;
                assert!((m.systole(t) - m.systole(t + period)).abs() < 1e-3);
                let s = m.systole(t);
                assert!((0.0..=1.0).contains(&s));
                let w = m.at(t);
                let (dx, dy) = w.displacement(2.0, 2.0);
                // At most cardiac_amp·(distance/30) + twist + wave ≈ a few pixels.
                assert!(dx.hypot(dy) < 6.0, "{dx} {dy}");
                let (rx, ry) = m.respiration(t);
                assert!(rx.hypot(ry) <= m.resp_amp + 1e-4);
            }
            // In end diastole the heart is at rest: only breathing moves things.
            let t0 = ((1.0 - m.cardiac_phase) / m.cardiac_hz).rem_euclid(period);
            assert!(m.systole(t0) < 1e-3);
            let w = m.at(t0);
            let (sx, sy) = w.source(10.0, 20.0);
            assert!((sx - (10.0 - w.shift.0)).abs() < 1e-2 && (sy - (20.0 - w.shift.1)).abs() < 1e-2);
        }
    }
}
