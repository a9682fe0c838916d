//! The spatial-attention stack for inference (SPEC §3.1 step 2) as one pass per frame:
//! `σ(conv1x1(relu(conv3x3'(relu(conv3x3'(x))))))` with each eval-mode BatchNorm folded into
//! the conv before it. Run op by op, each of the five stages wrote and read all frames'
//! maps (the 16-channel one is 32 MB at T = 128) and the 1-channel conv and the sigmoid ran
//! at a fraction of the arithmetic rate; here a frame's first map stays in L2 and the second
//! is made, used and dropped band by band.

use rayon::prelude::*;

use super::gemm::{View, matmul_view};
use super::im2col::{band_len, im2col_rows};
use super::simd::sigmoid;

/// A same-padded k×k conv with its eval BatchNorm folded in: `w` `[out, c, k, k]`, `bias`
/// `[out]`.
#[derive(Debug, Clone, PartialEq)]
pub struct FoldedConv {
    pub w: Vec<f32>,
    pub bias: Vec<f32>,
    /// Input channels.
    pub c: usize,
    /// Output channels.
    pub out: usize,
    /// Odd kernel side.
    pub k: usize,
}

impl FoldedConv {
    /// Fold `bn(conv(x))` = `(conv(x) + b − mean) · γ / √(var + ε) + β` into one conv.
    ///
    /// # Panics
    /// If the operands' sizes disagree with `(out, c, k)`.
    #[allow(clippy::too_many_arguments)]
    pub fn fold(
        w: &[f32],
        bias: Option<&[f32]>,
        (out, c, k): (usize, usize, usize),
        gamma: &[f32],
        beta: &[f32],
        mean: &[f32],
        var: &[f32],
        eps: f64,
    ) -> Self {
        let per = c * k * k;
        assert!(
            w.len() == out * per
                && bias.is_none_or(|b| b.len() == out)
                && [gamma, beta, mean, var].iter().all(|v| v.len() == out),
            "folded conv sizes"
        );
        let scale: Vec<f32> = gamma
            .iter()
            .zip(var)
            .map(|(&g, &v)| (g as f64 / (v as f64 + eps).sqrt()) as f32)
            .collect();
        let w = w
            .chunks(per)
            .zip(&scale)
            .flat_map(|(row, &s)| row.iter().map(move |&x| x * s))
            .collect();
        let bias = (0..out)
            .map(|o| (bias.map_or(0.0, |b| b[o]) - mean[o]) * scale[o] + beta[o])
            .collect();
        Self { w, bias, c, out, k }
    }
}

impl FoldedConv {
    /// The conv plus bias of the output pixels `px` (whole image rows) of `img` `[c, H, W]`:
    /// output channel o goes to `dst[o · dst_rs..][..px.len()]`; `col` is scratch of at
    /// least `c·k² · px.len()` values.
    fn band(
        &self,
        img: &[f32],
        (height, width): (usize, usize),
        px: std::ops::Range<usize>,
        col: &mut [f32],
        dst: &mut [f32],
        dst_rs: usize,
    ) {
        let (rows, len) = (self.c * self.k * self.k, px.len());
        let col = &mut col[..rows * len];
        im2col_rows(
            img,
            col,
            self.c,
            (height, width),
            self.k,
            px.start / width..px.end / width,
        );
        for (o, b) in self.bias.iter().enumerate() {
            dst[o * dst_rs..][..len].fill(*b);
        }
        let (wv, cv) = (
            View::row_major(&self.w, self.out, rows),
            View::row_major(col, rows, len),
        );
        matmul_view(dst, dst_rs, wv, cv, true);
    }
}

/// The stack's weights: two folded convs, then a 1×1 conv to one channel (`w3` `[c2]`,
/// `b3`).
#[derive(Debug, Clone, PartialEq)]
pub struct SpatialStack {
    pub conv1: FoldedConv,
    pub conv2: FoldedConv,
    pub w3: Vec<f32>,
    pub b3: f32,
}

/// The attention map of every frame of `x` `[frames, c1, H, W]`: `[frames, H, W]`.
///
/// # Panics
/// If the sizes disagree (`x` not whole frames, channels not chaining, `w3` not one weight
/// per channel of the second conv).
pub fn forward(x: &[f32], (height, width): (usize, usize), s: &SpatialStack) -> Vec<f32> {
    let (c1, c2) = (&s.conv1, &s.conv2);
    let hw = height * width;
    assert!(
        hw > 0 && x.len().is_multiple_of(c1.c * hw) && c2.c == c1.out && s.w3.len() == c2.out,
        "spatial stack sizes"
    );
    let frames = x.len() / (c1.c * hw);
    let band = band_len(height, width);
    let rows1 = c1.c * c1.k * c1.k;
    let rows2 = c2.c * c2.k * c2.k;
    let mut y = vec![0.0f32; frames * hw];
    y.par_chunks_mut(hw).zip(x.par_chunks(c1.c * hw)).for_each_init(
        || {
            (
                vec![0.0f32; rows1.max(rows2) * band], // a band's columns
                vec![0.0f32; c1.out * hw],             // the frame's first map
                vec![0.0f32; c2.out * band],           // a band of the second map
            )
        },
        |(col, m1, m2), (out, xf)| {
            // First conv + ReLU, band by band into the whole first map.
            for start in (0..hw).step_by(band) {
                let len = band.min(hw - start);
                c1.band(xf, (height, width), start..start + len, col, &mut m1[start..], hw);
            }
            m1.iter_mut().for_each(|v| *v = v.max(0.0));
            // Second conv + ReLU, the 1×1 conv and the sigmoid, band by band.
            for start in (0..hw).step_by(band) {
                let len = band.min(hw - start);
                let m2 = &mut m2[..c2.out * len];
                c2.band(m1, (height, width), start..start + len, col, m2, len);
                let z = &mut out[start..start + len];
                z.fill(s.b3);
                for (plane, &w) in m2.chunks(len).zip(&s.w3) {
                    for (zi, &v) in z.iter_mut().zip(plane) {
                        *zi += w * v.max(0.0);
                    }
                }
                z.iter_mut().for_each(|v| *v = sigmoid(*v));
            }
        },
    );
    y
}

#[cfg(test)]
mod tests {
    use super::super::testing::{assert_close, conv_direct, values};
    use super::*;

    /// The stack op by op from its unfolded parts, in f64 where it sums.
    #[allow(clippy::too_many_arguments)]
    fn reference(
        x: &[f32],
        (h, w): (usize, usize),
        convs: &[(Vec<f32>, Vec<f32>, usize, usize)], // (w, b, c, out), k = 3
        bns: &[[Vec<f32>; 4]],                        // γ, β, mean, var
        w3: &[f32],
        b3: f32,
        eps: f32,
    ) -> Vec<f32> {
        let hw = h * w;
        let frames = x.len() / (convs[0].2 * hw);
        let mut out = Vec::new();
        for f in 0..frames {
            let mut m = x[f * convs[0].2 * hw..(f + 1) * convs[0].2 * hw].to_vec();
            for ((wt, b, c, o), [g, be, mu, var]) in convs.iter().zip(bns) {
                let y = conv_direct(&m, wt, *c, *o, h, w, 3);
                m = y
                    .iter()
                    .enumerate()
                    .map(|(i, &v)| {
                        let ch = i / hw;
                        let n = (v + b[ch] - mu[ch]) / (var[ch] + eps).sqrt() * g[ch] + be[ch];
                        n.max(0.0)
                    })
                    .collect();
            }
            for p in 0..hw {
                let z: f64 = b3 as f64 + (0..w3.len()).map(|c| (w3[c] * m[c * hw + p]) as f64).sum::<f64>();
                out.push((1.0 / (1.0 + (-z).exp())) as f32);
            }
        }
        out
    }

    #[test]
    fn the_fused_stack_matches_the_stack_op_by_op() {
        // Odd sizes (bands of several rows and a short last band, images narrower than a
        // band), 1 and 2 input channels, BatchNorm with non-trivial running statistics.
        for (frames, c, (h, w), seed) in [(3, 1, (64, 64), 1u32), (2, 2, (7, 5), 2), (1, 1, (37, 29), 3)] {
            let (o1, o2) = (4, 6);
            let x = values(frames * c * h * w, seed);
            let convs = [
                (values(o1 * c * 9, seed + 10), values(o1, seed + 11), c, o1),
                (values(o2 * o1 * 9, seed + 12), values(o2, seed + 13), o1, o2),
            ];
            let bn = |o: usize, s: u32| {
                let pos = |v: Vec<f32>| v.iter().map(|x| 0.5 + x.abs()).collect::<Vec<f32>>();
                [
                    pos(values(o, s)),
                    values(o, s + 1),
                    values(o, s + 2),
                    pos(values(o, s + 3)),
                ]
            };
            let bns = [bn(o1, seed + 20), bn(o2, seed + 30)];
            let (w3, b3) = (values(o2, seed + 40), 0.3);
            let eps = 1e-5;
            let fold = |i: usize| {
                let (wt, b, cc, o) = &convs[i];
                let [g, be, mu, var] = &bns[i];
                FoldedConv::fold(wt, Some(b), (*o, *cc, 3), g, be, mu, var, eps as f64)
            };
            let stack = SpatialStack {
                conv1: fold(0),
                conv2: fold(1),
                w3: w3.clone(),
                b3,
            };
            let got = forward(&x, (h, w), &stack);
            let want = reference(&x, (h, w), &convs, &bns, &w3, b3, eps);
            assert_close(&got, &want, 2e-6, &format!("{frames}×{c}×{h}×{w}"));
        }
    }

    #[test]
    fn folding_without_a_conv_bias_uses_zero() {
        let f = FoldedConv::fold(
            &[1.0, 2.0],
            None,
            (2, 1, 1),
            &[2.0, 1.0],
            &[0.5, 0.0],
            &[1.0, -1.0],
            &[3.0, 0.0],
            1.0,
        );
        assert_eq!(f.w, vec![1.0, 2.0]);
        assert_eq!(f.bias, vec![-1.0 + 0.5, 1.0]);
    }
}
