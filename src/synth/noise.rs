//! Segmentation artefacts applied to each output row (the vessel map of one clip):
//! per-video contrast (gain) with a slow drift, a few rows of flicker, a blotchy
//! confidence field along the vessels, pixel noise, speckle dots and a few persistent
//! false-positive structures that move with breathing.

use rand::{Rng, RngExt};

use super::sample::{normal, poisson};

/// A false-positive structure: an elongated soft blob (a rib edge, a diaphragm border,
/// an overlapping catheter loop the network mistakes for a vessel).
#[derive(Debug, Clone)]
pub(crate) struct Blob {
    pub x: f32,
    pub y: f32,
    /// Unit direction of the long axis.
    pub dir: (f32, f32),
    pub sigma_long: f32,
    pub sigma_short: f32,
    pub amp: f32,
    /// Visible on rows [from, to).
    pub from: usize,
    pub to: usize,
}

/// Per-video artefact parameters.
#[derive(Debug, Clone)]
pub(crate) struct Confounders {
    pub gain: f32,
    pub drift_amp: f32,
    pub drift_period_rows: f32,
    pub drift_phase: f32,
    /// (row, gain factor) of the flicker rows.
    pub flicker: Vec<(usize, f32)>,
    /// Confidence field on a coarse `CONF_N`×`CONF_N` grid, bilinearly upsampled.
    pub conf: Vec<f32>,
    pub pixel_sigma: f32,
    pub vessel_sigma: f32,
    pub speckle_rate: f32,
    pub blobs: Vec<Blob>,
}

pub(crate) const CONF_N: usize = 7;

impl Confounders {
    pub(crate) fn draw<R: Rng>(rng: &mut R, rows: usize) -> Self {
        let n_flicker = rng.random_range(0..=4usize).min(rows / 6);
        let mut flicker: Vec<(usize, f32)> = (0..n_flicker)
            .map(|_| (rng.random_range(0..rows), rng.random_range(0.35f32..0.75)))
            .collect();
        flicker.sort_by_key(|f| f.0);
        flicker.dedup_by_key(|f| f.0);
        let conf = (0..CONF_N * CONF_N).map(|_| rng.random_range(0.75f32..1.0)).collect();
        let n_blobs = rng.random_range(1..=4usize);
        let blobs = (0..n_blobs)
            .map(|_| {
                let a = rng.random_range(0.0f32..std::f32::consts::PI);
                // Half the blobs stay the whole run; the others come and go.
                let (from, to) = if rng.random_bool(0.5) {
                    (0, rows)
                } else {
                    let from = rng.random_range(0..rows);
                    (from, (from + rng.random_range(3..=rows.max(4))).min(rows))
                };
                Blob {
                    x: rng.random_range(2.0f32..62.0),
                    y: rng.random_range(2.0f32..62.0),
                    dir: (a.cos(), a.sin()),
                    sigma_long: rng.random_range(1.5f32..6.0),
                    sigma_short: rng.random_range(0.5f32..1.2),
                    amp: rng.random_range(0.15f32..0.5),
                    from,
                    to,
                }
            })
            .collect();
        Confounders {
            gain: rng.random_range(0.6f32..1.0),
            drift_amp: rng.random_range(0.0f32..0.12),
            drift_period_rows: rng.random_range(8.0f32..30.0),
            drift_phase: rng.random_range(0.0f32..std::f32::consts::TAU),
            flicker,
            conf,
            pixel_sigma: rng.random_range(0.01f32..0.04),
            vessel_sigma: rng.random_range(0.04f32..0.12),
            speckle_rate: rng.random_range(3.0f32..20.0),
            blobs,
        }
    }

    /// Global gain of row `row`: contrast × slow drift × flicker.
    pub(crate) fn row_gain(&self, row: usize) -> f32 {
        let drift = 1.0
            + self.drift_amp * (std::f32::consts::TAU * row as f32 / self.drift_period_rows + self.drift_phase).sin();
        let flick = self.flicker.iter().find(|f| f.0 == row).map_or(1.0, |f| f.1);
        (self.gain * drift * flick).min(1.0)
    }

    /// Confidence of the segmentation at canvas position (x, y), in [0.75, 1].
    pub(crate) fn confidence(&self, x: f32, y: f32) -> f32 {
        let s = (CONF_N - 1) as f32 / super::tree::CANVAS;
        let gx = (x * s).clamp(0.0, (CONF_N - 1) as f32 - 1e-3);
        let gy = (y * s).clamp(0.0, (CONF_N - 1) as f32 - 1e-3);
        let (ix, iy) = (gx as usize, gy as usize);
        let (tx, ty) = (gx - ix as f32, gy - iy as f32);
        let c = |i: usize, j: usize| self.conf[j * CONF_N + i];
        (1.0 - ty) * ((1.0 - tx) * c(ix, iy) + tx * c(ix + 1, iy))
            + ty * ((1.0 - tx) * c(ix, iy + 1) + tx * c(ix + 1, iy + 1))
    }

    /// Turn the clean clip map `clean` (side×side, canvas scale `scale` units per pixel)
    /// into the network's output for row `row`: gain, confidence, noise, blobs, speckle;
    /// clamped to [0, 1].
    pub(crate) fn apply<R: Rng>(
        &self,
        rng: &mut R,
        clean: &[f32],
        side: usize,
        row: usize,
        shift: (f32, f32),
        out: &mut [f32],
    ) {
        let scale = super::tree::CANVAS / side as f32;
        let gain = self.row_gain(row);
        for r in 0..side {
            for c in 0..side {
                let i = r * side + c;
                let v = clean[i];
                let (x, y) = ((c as f32 + 0.5) * scale, (r as f32 + 0.5) * scale);
                let mut o = v * gain * self.confidence(x, y);
                if v > 0.05 {
                    o *= 1.0 + self.vessel_sigma * normal(rng);
                }
                o += self.pixel_sigma * normal(rng);
                out[i] = o;
            }
        }
        // Persistent false positives drift with breathing.
        for b in self.blobs.iter().filter(|b| (b.from..b.to).contains(&row)) {
            let (bx, by) = (b.x + shift.0, b.y + shift.1);
            splat(out, side, bx, by, b.dir, b.sigma_long, b.sigma_short, b.amp * gain);
        }
        // Speckle: small isolated dots anywhere.
        for _ in 0..poisson(rng, self.speckle_rate) {
            let x = rng.random_range(0.0f32..super::tree::CANVAS);
            let y = rng.random_range(0.0f32..super::tree::CANVAS);
            let s = rng.random_range(0.4f32..0.9);
            let amp = rng.random_range(0.15f32..0.6);
            splat(out, side, x, y, (1.0, 0.0), s, s, amp);
        }
        for o in out.iter_mut() {
            *o = o.clamp(0.0, 1.0);
        }
    }
}

/// Add an anisotropic Gaussian (canvas units) to `out`, taking the max with what is there.
#[allow(clippy::too_many_arguments)]
fn splat(out: &mut [f32], side: usize, x: f32, y: f32, dir: (f32, f32), s_long: f32, s_short: f32, amp: f32) {
    let scale = super::tree::CANVAS / side as f32;
    let reach = 3.0 * s_long;
    let lo = |v: f32| ((v - reach) / scale).floor().max(0.0) as usize;
    let hi = |v: f32| (((v + reach) / scale).ceil().max(0.0) as usize).min(side);
    for r in lo(y)..hi(y) {
        for c in lo(x)..hi(x) {
            let (px, py) = ((c as f32 + 0.5) * scale - x, (r as f32 + 0.5) * scale - y);
            let along = px * dir.0 + py * dir.1;
            let across = -px * dir.1 + py * dir.0;
            let g = amp * (-0.5 * ((along / s_long).powi(2) + (across / s_short).powi(2))).exp();
            let i = r * side + c;
            out[i] = out[i].max(g);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn artefacts_stay_in_range_and_flicker_dims_its_row() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let mut c = Confounders::draw(&mut rng, 40);
        c.flicker = vec![(3, 0.5)];
        c.drift_amp = 0.0;
        assert!((c.row_gain(3) - 0.5 * c.gain).abs() < 1e-6);
        assert!((c.row_gain(4) - c.gain).abs() < 1e-6);
        let clean = vec![1.0f32; 64 * 64];
        let mut out = vec![0.0f32; 64 * 64];
        c.apply(&mut rng, &clean, 64, 4, (0.0, 0.0), &mut out);
        assert!(out.iter().all(|v| (0.0..=1.0).contains(v)));
        let bright = out.iter().sum::<f32>();
        c.apply(&mut rng, &clean, 64, 3, (0.0, 0.0), &mut out);
        let dim = out.iter().sum::<f32>();
        assert!(dim < 0.6 * bright, "{dim} vs {bright}");
        // An empty map gets only sparse noise.
        let empty = vec![0.0f32; 64 * 64];
        c.apply(&mut rng, &empty, 64, 5, (0.0, 0.0), &mut out);
        let mean = out.iter().sum::<f32>() / out.len() as f32;
        assert!(mean < 0.05, "{mean}");
    }
}
