//! Training-mode BatchNorm2d (then an optional ReLU) on `f32` slices: the batch statistics,
//! the normalisation and its backward, each a pass or two over the values.
//!
//! Statistics are summed in `f64` over fixed chunks of frames, so the result does not depend
//! on the thread count.

use rayon::prelude::*;

/// Frames per parallel work item; fixed so the sums do not depend on the thread count.
const FRAME_CHUNK: usize = 8;
/// Independent `f32` accumulators per plane (vectorisable), added into `f64` per plane.
const LANES: usize = 16;

/// Sizes: N frames of C channel planes of `plane` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BnDims {
    pub n: usize,
    pub c: usize,
    pub plane: usize,
}

impl BnDims {
    /// Values per channel, N·H·W.
    fn count(&self) -> usize {
        self.n * self.plane
    }
}

/// `Σ f(x)` over a plane: `LANES` `f32` partial sums (vectorised), then one `f64` total.
#[inline]
fn plane_sum(xs: &[f32], f: impl Fn(f32) -> f32) -> f64 {
    let mut acc = [0f32; LANES];
    let mut chunks = xs.chunks_exact(LANES);
    for ch in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(ch) {
            *a += f(v);
        }
    }
    let tail: f64 = chunks.remainder().iter().map(|&v| f(v) as f64).sum();
    acc.iter().map(|&a| a as f64).sum::<f64>() + tail
}

/// `v` where `keep`, else 0, without a branch: the ReLU mask is data-dependent and random,
/// and a mispredicted branch per value cost three times the whole pass.
#[inline]
fn masked(v: f32, keep: bool) -> f32 {
    f32::from_bits(v.to_bits() & (keep as u32).wrapping_neg())
}

/// `(Σ g, Σ g·f(x))` over a plane, `g = dy` where `keep(x)`, else 0: as [`plane_sum`].
#[inline]
fn plane_sum2(xs: &[f32], dys: &[f32], keep: impl Fn(f32) -> bool, f: impl Fn(f32) -> f32) -> [f64; 2] {
    let (mut a0, mut a1) = ([0f32; LANES], [0f32; LANES]);
    let mut cx = xs.chunks_exact(LANES);
    let mut cd = dys.chunks_exact(LANES);
    for (xc, dc) in (&mut cx).zip(&mut cd) {
        for l in 0..LANES {
            let g = masked(dc[l], keep(xc[l]));
            a0[l] += g;
            a1[l] += g * f(xc[l]);
        }
    }
    let mut total = [
        a0.iter().map(|&a| a as f64).sum::<f64>(),
        a1.iter().map(|&a| a as f64).sum::<f64>(),
    ];
    for (&x, &dy) in cx.remainder().iter().zip(cd.remainder()) {
        let g = masked(dy, keep(x));
        total[0] += g as f64;
        total[1] += (g * f(x)) as f64;
    }
    total
}

/// Per-channel sums of `f(frame_channel_plane, index)` over all frames: per chunk of frames
/// in parallel, then the chunks added in order. `K` sums per channel.
fn channel_sums<const K: usize>(d: BnDims, f: impl Fn(usize, usize, usize) -> [f64; K] + Sync) -> Vec<[f64; K]> {
    let chunks = d.n.div_ceil(FRAME_CHUNK);
    let partial: Vec<Vec<[f64; K]>> = (0..chunks)
        .into_par_iter()
        .map(|ci| {
            let mut sums = vec![[0f64; K]; d.c];
            for n in ci * FRAME_CHUNK..((ci + 1) * FRAME_CHUNK).min(d.n) {
                for (c, s) in sums.iter_mut().enumerate() {
                    let v = f(n, c, (n * d.c + c) * d.plane);
                    for k in 0..K {
                        s[k] += v[k];
                    }
                }
            }
            sums
        })
        .collect();
    let mut total = vec![[0f64; K]; d.c];
    for p in &partial {
        for (t, s) in total.iter_mut().zip(p) {
            for k in 0..K {
                t[k] += s[k];
            }
        }
    }
    total
}

/// Per-channel mean and biased variance (two passes: the mean, then centred squares).
pub fn moments(x: &[f32], d: BnDims) -> (Vec<f64>, Vec<f64>) {
    assert_eq!(x.len(), d.n * d.c * d.plane, "BatchNorm input length");
    let count = d.count().max(1) as f64;
    let mean: Vec<f64> = channel_sums::<1>(d, |_, _, off| [plane_sum(&x[off..off + d.plane], |v| v)])
        .iter()
        .map(|s| s[0] / count)
        .collect();
    let var = channel_sums::<1>(d, |_, c, off| {
        let m = mean[c] as f32;
        [plane_sum(&x[off..off + d.plane], |v| (v - m) * (v - m))]
    })
    .iter()
    .map(|s| s[0] / count)
    .collect();
    (mean, var)
}

/// Per-channel `scale = gamma / sqrt(var + eps)` and `shift = beta − mean · scale`, and the
/// `f32` mean and `1 / sqrt(var + eps)`.
pub struct Affine {
    mean: Vec<f32>,
    inv: Vec<f32>,
    scale: Vec<f32>,
    shift: Vec<f32>,
}

impl Affine {
    /// From the per-channel mean and biased variance, and the affine parameters.
    pub fn new(mean: &[f64], var: &[f64], gamma: &[f32], beta: &[f32], eps: f64) -> Self {
        let inv: Vec<f64> = var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
        let scale: Vec<f64> = inv.iter().zip(gamma).map(|(i, &g)| i * g as f64).collect();
        Self {
            mean: mean.iter().map(|&m| m as f32).collect(),
            inv: inv.iter().map(|&i| i as f32).collect(),
            shift: beta
                .iter()
                .zip(mean)
                .zip(&scale)
                .map(|((&b, m), s)| (b as f64 - m * s) as f32)
                .collect(),
            scale: scale.into_iter().map(|s| s as f32).collect(),
        }
    }
}

/// The normalised, affine-mapped (and rectified) values. The backward recomputes the
/// pre-activation with this same expression, so its ReLU mask matches bit for bit.
#[inline]
fn pre_activation(x: f32, scale: f32, shift: f32) -> f32 {
    x * scale + shift
}

/// `pre_activation` of every value (then a ReLU when `relu`), `[N, C, H, W]`.
pub fn forward(x: &[f32], a: &Affine, d: BnDims, relu: bool) -> Vec<f32> {
    let mut y = vec![0f32; x.len()];
    let per_frame = d.c * d.plane;
    y.par_chunks_mut(per_frame.max(1))
        .zip(x.par_chunks(per_frame.max(1)))
        .for_each(|(yf, xf)| {
            for c in 0..d.c {
                let (s, t) = (a.scale[c], a.shift[c]);
                let range = c * d.plane..(c + 1) * d.plane;
                for (yo, &xi) in yf[range.clone()].iter_mut().zip(&xf[range]) {
                    let p = pre_activation(xi, s, t);
                    *yo = if relu { p.max(0.0) } else { p };
                }
            }
        });
    y
}

/// Gradients of x, gamma and beta given the output gradient `dy`.
pub fn backward(
    x: &[f32],
    dy: &[f32],
    a: &Affine,
    gamma: &[f32],
    d: BnDims,
    relu: bool,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    // The gradient reaching the affine output is dy where the ReLU passed it.
    let keep = |x: f32, scale: f32, shift: f32| !relu || pre_activation(x, scale, shift) > 0.0;
    let sums = channel_sums::<2>(d, |_, c, off| {
        let (m, inv, s, t) = (a.mean[c], a.inv[c], a.scale[c], a.shift[c]);
        let r = off..off + d.plane;
        plane_sum2(&x[r.clone()], &dy[r], |v| keep(v, s, t), |v| (v - m) * inv)
    });
    let count = d.count().max(1) as f64;
    let dbeta: Vec<f32> = sums.iter().map(|s| s[0] as f32).collect();
    let dgamma: Vec<f32> = sums.iter().map(|s| s[1] as f32).collect();
    // dx = gamma·inv · (g − Σg/M − x̂ · Σ(g·x̂)/M)
    let mean_g: Vec<f32> = sums.iter().map(|s| (s[0] / count) as f32).collect();
    let mean_gx: Vec<f32> = sums.iter().map(|s| (s[1] / count) as f32).collect();
    let k: Vec<f32> = (0..d.c).map(|c| gamma[c] * a.inv[c]).collect();
    let mut dx = vec![0f32; x.len()];
    let per_frame = d.c * d.plane;
    dx.par_chunks_mut(per_frame.max(1))
        .zip(x.par_chunks(per_frame.max(1)))
        .zip(dy.par_chunks(per_frame.max(1)))
        .for_each(|((df, xf), dyf)| {
            for c in 0..d.c {
                let (m, inv, kc, mg, mgx) = (a.mean[c], a.inv[c], k[c], mean_g[c], mean_gx[c]);
                let (s, t) = (a.scale[c], a.shift[c]);
                let r = c * d.plane..(c + 1) * d.plane;
                for ((o, &x), &dy) in df[r.clone()].iter_mut().zip(&xf[r.clone()]).zip(&dyf[r]) {
                    let g = masked(dy, keep(x, s, t));
                    *o = kc * (g - mg - (x - m) * inv * mgx);
                }
            }
        });
    (dx, dgamma, dbeta)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moments_are_the_mean_and_biased_variance_per_channel() {
        // Two frames, two channels, planes of 3 (channel 0: 1..6, channel 1: constant 7).
        let x = [1.0, 2.0, 3.0, 7.0, 7.0, 7.0, 4.0, 5.0, 6.0, 7.0, 7.0, 7.0];
        let (m, v) = moments(&x, BnDims { n: 2, c: 2, plane: 3 });
        assert_eq!(m, vec![3.5, 7.0]);
        assert!((v[0] - 35.0 / 12.0).abs() < 1e-12 && v[1] == 0.0, "{v:?}");
    }

    /// Finite differences of `Σ r ⊙ bn_relu(x)` against the analytic gradient of x.
    #[test]
    fn backward_matches_finite_differences() {
        let d = BnDims { n: 3, c: 2, plane: 19 };
        let len = d.n * d.c * d.plane;
        let x: Vec<f32> = (0..len).map(|i| ((i * 37 % 23) as f32 - 11.0) / 5.0).collect();
        let r: Vec<f32> = (0..len).map(|i| ((i * 13 % 17) as f32 - 8.0) / 9.0).collect();
        let (gamma, beta) = ([1.3f32, -0.7], [0.2f32, 0.4]);
        let f = |x: &[f32]| -> f64 {
            let (m, v) = moments(x, d);
            let a = Affine::new(&m, &v, &gamma, &beta, 1e-5);
            forward(x, &a, d, true)
                .iter()
                .zip(&r)
                .map(|(y, r)| (*y as f64) * (*r as f64))
                .sum()
        };
        let (m, v) = moments(&x, d);
        let a = Affine::new(&m, &v, &gamma, &beta, 1e-5);
        let (dx, _, _) = backward(&x, &r, &a, &gamma, d, true);
        // Steps small enough not to move any value across the ReLU's kink; values right at
        // the kink are skipped.
        let h = 2e-3f32;
        let plane_c = |i: usize| (i / d.plane) % d.c;
        let mut checked = 0;
        for i in (0..len).step_by(5) {
            if pre_activation(x[i], a.scale[plane_c(i)], a.shift[plane_c(i)]).abs() < 0.05 {
                continue;
            }
            checked += 1;
            let (mut xp, mut xm) = (x.clone(), x.clone());
            xp[i] += h;
            xm[i] -= h;
            let fd = (f(&xp) - f(&xm)) / (2.0 * h as f64);
            assert!((fd - dx[i] as f64).abs() < 2e-3, "x[{i}]: fd {fd}, analytic {}", dx[i]);
        }
        assert!(checked > 15, "{checked}");
    }
}
