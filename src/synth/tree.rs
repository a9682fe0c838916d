//! Vessel-tree and catheter geometry on a 64×64 "canvas" (units are output pixels of a
//! 64-pixel image, x to the right, y down), and their rasterisation into reference maps.
//!
//! The tree imitates a left coronary artery: a short left main from the ostium that
//! splits into an LAD-like and an LCX-like branch (sometimes a ramus between them), each
//! with side branches of further generations. Centrelines are random walks of the
//! heading with smoothly varying curvature; diameters taper from about 2.5 px to 0.8 px.

use rand::{Rng, RngExt};

use super::flow::sigmoid;
use super::sample::normal;

/// Side of the canvas the geometry is drawn on; other image sides are rescaled.
pub(crate) const CANVAS: f32 = 64.0;
/// Spacing of centreline samples (canvas units); small against the smallest radius.
const STEP: f32 = 0.5;
/// Smallest vessel radius (a 0.8 px wide distal branch).
const R_TIP: f32 = 0.4;
/// Width of the soft vessel edge: occupancy = σ((radius − distance)/EDGE).
pub(crate) const EDGE: f32 = 0.3;
/// Keep growing a little outside the canvas so that motion never reveals a cut end.
const BOUND_LO: f32 = -6.0;
const BOUND_HI: f32 = CANVAS + 6.0;
/// A tree never has more centreline samples than this (a guard, not a tuning knob).
const MAX_POINTS: usize = 20_000;

/// One centreline sample of the tree.
#[derive(Debug, Clone, Copy)]
pub(crate) struct VesselPoint {
    pub x: f32,
    pub y: f32,
    pub radius: f32,
    /// Path distance from the ostium along the tree.
    pub path: f32,
    /// Washout order in [0, 1]: 0 proximal and thick (fades last), 1 distal and thin.
    pub rank: f32,
    /// Branching generation: 0 left main, 1 LAD/LCX, 2 side branches, … (checked by tests)
    #[cfg_attr(not(test), allow(dead_code))]
    pub generation: u32,
}

/// The vessel tree of one video.
#[derive(Debug, Clone)]
pub(crate) struct Tree {
    pub points: Vec<VesselPoint>,
    pub ostium: (f32, f32),
    pub path_max: f32,
    /// Roughly where the heart's centre is (the tree wraps around it).
    pub centre: (f32, f32),
}

/// The catheter: a thin curve from the image edge to the ostium.
#[derive(Debug, Clone)]
pub(crate) struct Catheter {
    pub points: Vec<(f32, f32)>,
    pub radius: f32,
    pub intensity: f32,
}

struct Grower<'a, R: Rng> {
    rng: &'a mut R,
    points: Vec<VesselPoint>,
    max_generation: u32,
    /// Per-branch jitter of the washout rank, so that fading is not a pure function of
    /// geometry.
    jitter: Vec<f32>,
}

impl<R: Rng> Grower<'_, R> {
    /// Grow one branch (and, recursively, its side branches).
    #[allow(clippy::too_many_arguments)]
    fn grow(&mut self, x0: f32, y0: f32, heading0: f32, r0: f32, r1: f32, length: f32, path0: f32, generation: u32) {
        let n = (length / STEP).ceil().max(1.0) as usize;
        let (mut x, mut y, mut heading) = (x0, y0, heading0);
        let mut curvature = 0.0f32;
        let wobble = self.rng.random_range(0.008f32..0.02);
        let mut side = if self.rng.random_bool(0.5) { 1.0f32 } else { -1.0 };
        let spacing = |rng: &mut R, g: u32| rng.random_range(4.0f32..9.0) * (1.0 + 0.3 * g as f32);
        let mut next_branch = spacing(&mut *self.rng, generation) * 0.6;
        let mut children = Vec::new();
        let branch_jitter = self.rng.random_range(-0.08f32..0.08);
        for i in 0..n {
            if self.points.len() >= MAX_POINTS {
                break;
            }
            let walked = i as f32 * STEP;
            let frac = walked / length;
            // Vessels stay thick for a while and thin out towards the tip.
            let radius = r1 + (r0 - r1) * (1.0 - frac).powf(0.7);
            self.points.push(VesselPoint {
                x,
                y,
                radius,
                path: path0 + walked,
                rank: 0.0,
                generation,
            });
            self.jitter.push(branch_jitter);
            // Curvature is a damped random walk, so headings turn smoothly; bigger vessels
            // are straighter.
            curvature = 0.9 * curvature + wobble * normal(&mut *self.rng) / radius.max(0.5);
            curvature = curvature.clamp(-0.12, 0.12);
            heading += curvature * STEP;
            x += heading.cos() * STEP;
            y += heading.sin() * STEP;
            if !(BOUND_LO..BOUND_HI).contains(&x) || !(BOUND_LO..BOUND_HI).contains(&y) {
                break;
            }
            if generation < self.max_generation && walked >= next_branch && frac < 0.85 {
                let child_r0 = radius * self.rng.random_range(0.6f32..0.85);
                if child_r0 >= 0.42 {
                    let remaining = length - walked;
                    let child_len =
                        (remaining * self.rng.random_range(0.45f32..0.9)).max(6.0) * (child_r0 / radius).sqrt();
                    let angle = side * self.rng.random_range(0.45f32..1.1);
                    children.push((x, y, heading + angle, child_r0, child_len, path0 + walked));
                    // Side branches mostly alternate, sometimes two on one side.
                    if self.rng.random_bool(0.75) {
                        side = -side;
                    }
                }
                next_branch = walked + spacing(&mut *self.rng, generation);
            }
        }
        for (cx, cy, h, cr0, clen, cpath) in children {
            self.grow(cx, cy, h, cr0, R_TIP, clen, cpath, generation + 1);
        }
    }
}

/// Draw a left-coronary-like tree with its ostium in the upper part of the canvas.
pub(crate) fn draw_tree<R: Rng>(rng: &mut R) -> Tree {
    let ostium = (rng.random_range(18.0f32..46.0), rng.random_range(8.0f32..22.0));
    // LAD runs downwards (y grows), tilted either way; the LCX leaves on one side,
    // which side depends on the projection (mirror views).
    let lad_heading = std::f32::consts::FRAC_PI_2 + rng.random_range(-0.7f32..0.7);
    let mirror = if rng.random_bool(0.5) { 1.0f32 } else { -1.0 };
    let lcx_heading = lad_heading + mirror * rng.random_range(0.9f32..1.4);
    let lm_heading = 0.5 * (lad_heading + lcx_heading) + rng.random_range(-0.2f32..0.2);
    let max_generation = rng.random_range(2u32..=4);
    let mut g = Grower {
        rng,
        points: Vec::new(),
        max_generation,
        jitter: Vec::new(),
    };

    let lm_r = g.rng.random_range(1.15f32..1.4);
    let lm_len = g.rng.random_range(3.0f32..7.0);
    // The left main: no side branches of its own.
    let n_lm = (lm_len / STEP).ceil() as usize;
    let (mut x, mut y) = ostium;
    for i in 0..n_lm {
        g.points.push(VesselPoint {
            x,
            y,
            radius: lm_r,
            path: i as f32 * STEP,
            rank: 0.0,
            generation: 0,
        });
        g.jitter.push(0.0);
        x += lm_heading.cos() * STEP;
        y += lm_heading.sin() * STEP;
    }
    let path_bif = n_lm as f32 * STEP;
    let lad_len = g.rng.random_range(50.0f32..70.0);
    let lcx_len = g.rng.random_range(35.0f32..55.0);
    let lad_r = lm_r * g.rng.random_range(0.8f32..0.92);
    let lcx_r = lm_r * g.rng.random_range(0.7f32..0.85);
    g.grow(x, y, lad_heading, lad_r, R_TIP, lad_len, path_bif, 1);
    g.grow(x, y, lcx_heading, lcx_r, R_TIP, lcx_len, path_bif, 1);
    if g.rng.random_bool(0.3) {
        // A ramus intermedius between LAD and LCX.
        let h = 0.5 * (lad_heading + lcx_heading);
        let len = g.rng.random_range(20.0f32..32.0);
        g.grow(x, y, h, lm_r * 0.6, R_TIP, len, path_bif, 2);
    }
    let Grower { mut points, jitter, .. } = g;

    let path_max = points.iter().map(|p| p.path).fold(0.0, f32::max).max(STEP);
    let r_max = points.iter().map(|p| p.radius).fold(R_TIP, f32::max);
    for (p, j) in points.iter_mut().zip(jitter) {
        let thin = 1.0 - (p.radius - R_TIP) / (r_max - R_TIP).max(1e-3);
        p.rank = (0.55 * p.path / path_max + 0.45 * thin + j).clamp(0.0, 1.0);
    }
    // The heart's centre: inside the arc the LAD and LCX wrap around.
    let (mx, my) = points.iter().fold((0.0, 0.0), |(a, b), p| (a + p.x, b + p.y));
    let n = points.len() as f32;
    Tree {
        points,
        ostium,
        path_max,
        centre: (mx / n, my / n),
    }
}

/// Draw the catheter: a cubic Bézier from the lower image edge that hooks into the ostium
/// from the side opposite the tree.
pub(crate) fn draw_catheter<R: Rng>(rng: &mut R, tree: &Tree) -> Catheter {
    let (ox, oy) = tree.ostium;
    let entry = (rng.random_range(4.0f32..60.0), CANVAS + 6.0);
    let c1 = (
        entry.0 + rng.random_range(-10.0f32..10.0),
        entry.1 - rng.random_range(18.0f32..34.0),
    );
    // Tip tangent: away from the tree's centre, turned a little.
    let (dx, dy) = (ox - tree.centre.0, oy - tree.centre.1);
    let a = dy.atan2(dx) + rng.random_range(-0.6f32..0.6);
    let reach = rng.random_range(8.0f32..16.0);
    let c2 = (ox + a.cos() * reach, oy + a.sin() * reach);
    let bez = |t: f32| {
        let u = 1.0 - t;
        let b = [u * u * u, 3.0 * u * u * t, 3.0 * u * t * t, t * t * t];
        (
            b[0] * entry.0 + b[1] * c1.0 + b[2] * c2.0 + b[3] * ox,
            b[0] * entry.1 + b[1] * c1.1 + b[2] * c2.1 + b[3] * oy,
        )
    };
    // Sample densely enough for a spacing below STEP on any reasonable curve.
    let n = 400;
    let points = (0..=n).map(|i| bez(i as f32 / n as f32)).collect();
    Catheter {
        points,
        radius: rng.random_range(0.5f32..0.7),
        intensity: rng.random_range(0.4f32..0.7),
    }
}

/// Static maps of the tree and catheter in canvas coordinates, sampled on a grid finer
/// than the output (`RES` cells per canvas unit) with a margin, so that a frame is
/// just a warp plus a per-cell response.
#[derive(Debug, Clone)]
pub(crate) struct RefMaps {
    /// Cells per side.
    pub n: usize,
    /// Occupancy of the vessel tree in [0, 1].
    pub occ: Vec<f32>,
    /// Path distance and washout rank of the vessel point that gives `occ`.
    pub path: Vec<f32>,
    pub rank: Vec<f32>,
    /// Catheter response (occupancy × its intensity).
    pub cath: Vec<f32>,
}

pub(crate) const RES: f32 = 2.0;
pub(crate) const MARGIN: f32 = 8.0;

impl RefMaps {
    pub(crate) fn build(tree: &Tree, catheter: &Catheter) -> Self {
        let n = ((CANVAS + 2.0 * MARGIN) * RES) as usize;
        let mut m = RefMaps {
            n,
            occ: vec![0.0; n * n],
            path: vec![0.0; n * n],
            rank: vec![0.0; n * n],
            cath: vec![0.0; n * n],
        };
        for p in &tree.points {
            m.stamp(p.x, p.y, p.radius, |m, i, v| {
                if v > m.occ[i] {
                    m.occ[i] = v;
                    m.path[i] = p.path;
                    m.rank[i] = p.rank;
                }
            });
        }
        for &(x, y) in &catheter.points {
            m.stamp(x, y, catheter.radius, |m, i, v| {
                let v = v * catheter.intensity;
                if v > m.cath[i] {
                    m.cath[i] = v;
                }
            });
        }
        m
    }

    /// Call `f(self, cell, occupancy)` for every cell near a disc of radius `r` at (x, y).
    fn stamp(&mut self, x: f32, y: f32, r: f32, mut f: impl FnMut(&mut Self, usize, f32)) {
        let reach = r + 4.0 * EDGE;
        let to_cell = |v: f32| (v + MARGIN) * RES;
        let lo = |v: f32| (to_cell(v - reach).floor().max(0.0)) as usize;
        let hi = |v: f32| (to_cell(v + reach).ceil().max(0.0) as usize).min(self.n);
        let (c0, c1, r0, r1) = (lo(x), hi(x), lo(y), hi(y));
        for row in r0..r1 {
            // Cell centres in canvas units.
            let cy = (row as f32 + 0.5) / RES - MARGIN;
            for col in c0..c1 {
                let cx = (col as f32 + 0.5) / RES - MARGIN;
                let d = ((cx - x).powi(2) + (cy - y).powi(2)).sqrt();
                if d < reach {
                    let v = sigmoid((r - d) / EDGE);
                    let i = row * self.n + col;
                    f(self, i, v);
                }
            }
        }
    }

    /// Bilinear taps for canvas position (x, y): four (cell, weight) pairs; cells outside
    /// the map get weight 0.
    #[inline]
    pub(crate) fn taps(&self, x: f32, y: f32) -> [(usize, f32); 4] {
        let gx = (x + MARGIN) * RES - 0.5;
        let gy = (y + MARGIN) * RES - 0.5;
        let (fx, fy) = (gx.floor(), gy.floor());
        let (tx, ty) = (gx - fx, gy - fy);
        let (ix, iy) = (fx as i64, fy as i64);
        let n = self.n as i64;
        let cell = |cx: i64, cy: i64, w: f32| {
            if cx >= 0 && cy >= 0 && cx < n && cy < n {
                ((cy * n + cx) as usize, w)
            } else {
                (0, 0.0)
            }
        };
        [
            cell(ix, iy, (1.0 - tx) * (1.0 - ty)),
            cell(ix + 1, iy, tx * (1.0 - ty)),
            cell(ix, iy + 1, (1.0 - tx) * ty),
            cell(ix + 1, iy + 1, tx * ty),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn trees_branch_taper_and_start_at_the_ostium() {
        for seed in 0..30 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let t = draw_tree(&mut rng);
            assert!(
                t.points.len() > 150 && t.points.len() < MAX_POINTS,
                "seed {seed}: {}",
                t.points.len()
            );
            assert_eq!((t.points[0].x, t.points[0].y), t.ostium);
            assert_eq!(t.points[0].path, 0.0);
            let gens = t.points.iter().map(|p| p.generation).max().unwrap();
            assert!(gens >= 2, "seed {seed}: only {gens} generations");
            for p in &t.points {
                // Diameters between 0.8 and 2.8 px.
                assert!(p.radius >= R_TIP - 1e-4 && p.radius <= 1.4, "{p:?}");
                assert!((0.0..=1.0).contains(&p.rank));
                assert!(p.path <= t.path_max);
            }
            // The tree reaches a good part of the canvas.
            assert!(t.path_max > 35.0, "seed {seed}: {}", t.path_max);
            let inside = t
                .points
                .iter()
                .filter(|p| (0.0..64.0).contains(&p.x) && (0.0..64.0).contains(&p.y))
                .count();
            // Long branches may leave the field of view, as in real runs, but most of the
            // tree is inside.
            assert!(
                inside * 10 > t.points.len() * 6,
                "seed {seed}: {inside} of {} inside",
                t.points.len()
            );
        }
    }

    #[test]
    fn ref_maps_cover_vessels_with_soft_edges_and_catheter_ends_at_ostium() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let t = draw_tree(&mut rng);
        let c = draw_catheter(&mut rng, &t);
        let last = *c.points.last().unwrap();
        assert!((last.0 - t.ostium.0).abs() < 1e-4 && (last.1 - t.ostium.1).abs() < 1e-4);
        let m = RefMaps::build(&t, &c);
        let at = |x: f32, y: f32| m.taps(x, y).iter().map(|&(i, w)| w * m.occ[i]).sum::<f32>();
        // On the left main's centreline the occupancy is near 1; 3 px beside it, 0.
        let p = t.points[2];
        assert!(at(p.x, p.y) > 0.9, "{}", at(p.x, p.y));
        assert!(m.occ.iter().all(|v| (0.0..=1.0).contains(v)));
        assert!(m.cath.iter().all(|v| (0.0..=0.7).contains(v)));
        // Soft edges: plenty of partially occupied cells.
        let partial = m.occ.iter().filter(|&&v| v > 0.1 && v < 0.9).count();
        let full = m.occ.iter().filter(|&&v| v >= 0.9).count();
        assert!(partial > full / 4 && full > 100, "partial {partial} full {full}");
    }
}
