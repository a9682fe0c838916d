//! The backward of the ConvLSTM recurrence ([`super::convlstm::forward`]) through time, on
//! `f32` slices: per video on its own thread, band by band like the forward. It returns the
//! gradient of the gates' input half, which [`super::conv::input_backward`] takes through
//! the input half's conv.

use rayon::prelude::*;

use super::convlstm::{Dims, Saved};
use super::gemm::{View, matmul_view};
use super::im2col::{col2im_add_rows, im2col_rows};
use super::simd::gates_backward;

/// Gradients of a loss through the recurrence whose output was `hidden`, given its gradient
/// with respect to that output `[B, T, h, H, W]`: returns (d gx `[B, T, 4h, H, W]`, d weight `[4h, h, k, k]`).
///
/// # Panics
/// If `hidden` or `grad_out` does not have the output's size.
pub fn backward(saved: &Saved, hidden: &[f32], grad_out: &[f32]) -> (Vec<f32>, Vec<f32>) {
    backward_in_bands(saved, hidden, grad_out, saved.dims.band_len())
}

/// [`backward`] with bands of `band_len` values (whole rows).
pub(super) fn backward_in_bands(
    saved: &Saved,
    hidden: &[f32],
    grad_out: &[f32],
    band_len: usize,
) -> (Vec<f32>, Vec<f32>) {
    let dims = saved.dims;
    assert_eq!(grad_out.len(), dims.out_len(), "ConvLSTM output gradient size");
    assert_eq!(hidden.len(), dims.out_len(), "ConvLSTM hidden state size");
    let (g_len, s_len, t) = (dims.gates(), dims.state(), dims.t);
    let mut dgx = vec![0.0f32; dims.gx_len()];
    let per_video: Vec<Vec<f32>> = dgx
        .par_chunks_mut(t * g_len)
        .enumerate()
        .map(|(v, dgx_b)| {
            backward_video(
                video(&saved.gates, v, t * g_len),
                video(&saved.cell, v, t * s_len),
                video(hidden, v, t * s_len),
                &saved.weight,
                video(grad_out, v, t * s_len),
                (dims, band_len),
                dgx_b,
            )
        })
        .collect();
    // Sum the weight gradients of the videos in a fixed order (deterministic).
    let mut dw = vec![0.0f32; dims.weight_len()];
    for w in &per_video {
        for (a, b) in dw.iter_mut().zip(w) {
            *a += b;
        }
    }
    (dgx, dw)
}

/// Video `v`'s part of a batch-major buffer with `per` values per video.
fn video(buf: &[f32], v: usize, per: usize) -> &[f32] {
    &buf[v * per..(v + 1) * per]
}

/// One video's backward through time; writes d gx and returns its d weight. Runs band by
/// band like the forward (see [`super::im2col::BAND_PIXELS`]); the gradient into h_{t-1}
/// goes to a second buffer, as a band's col2im reaches into its neighbours' rows.
fn backward_video(
    gates: &[f32],
    cell: &[f32],
    hidden: &[f32],
    weight: &[f32],
    grad_out: &[f32],
    (dims, band_len): (Dims, usize),
    dgx: &mut [f32],
) -> Vec<f32> {
    let (g_len, s_len, hw, h) = (dims.gates(), dims.state(), dims.hw(), dims.h);
    let rows = dims.col_rows();
    let mut dw = vec![0.0f32; dims.weight_len()];
    let mut dh_next = vec![0.0f32; s_len];
    let mut dh_prev = vec![0.0f32; s_len];
    let mut dc_next = vec![0.0f32; s_len];
    let mut col = vec![0.0f32; rows * band_len];
    let zeros = vec![0.0f32; s_len];
    for step in (0..dims.t).rev() {
        let g = &gates[step * g_len..(step + 1) * g_len];
        let c = &cell[step * s_len..(step + 1) * s_len];
        let c_prev = if step > 0 {
            &cell[(step - 1) * s_len..step * s_len]
        } else {
            &zeros[..]
        };
        let dout = &grad_out[step * s_len..(step + 1) * s_len];
        let dpre = &mut dgx[step * g_len..(step + 1) * g_len];
        dh_prev.fill(0.0);
        for start in (0..hw).step_by(band_len) {
            let len = band_len.min(hw - start);
            {
                let mut planes: Vec<&mut [f32]> = dpre.chunks_mut(hw).collect();
                let (di, rest) = planes.split_at_mut(h);
                let (df, rest) = rest.split_at_mut(h);
                let (d_o, dg) = rest.split_at_mut(h);
                for ch in 0..h {
                    let at = |q: usize| (q * h + ch) * hw + start;
                    let r = ch * hw + start..ch * hw + start + len;
                    let seg = start..start + len;
                    gates_backward(
                        [0, 1, 2, 3].map(|q| &g[at(q)..at(q) + len]),
                        &c[r.clone()],
                        &c_prev[r.clone()],
                        &dout[r.clone()],
                        &dh_next[r.clone()],
                        &mut dc_next[r],
                        [
                            &mut di[ch][seg.clone()],
                            &mut df[ch][seg.clone()],
                            &mut d_o[ch][seg.clone()],
                            &mut dg[ch][seg],
                        ],
                    );
                }
            }
            if step > 0 {
                // The hidden half saw h_{t-1}: its weight gradient and the gradient into h_{t-1}.
                let h_prev = &hidden[(step - 1) * s_len..step * s_len];
                let band = start / dims.width..(start + len) / dims.width;
                let col = &mut col[..rows * len];
                im2col_rows(h_prev, col, h, (dims.height, dims.width), dims.k, band.clone());
                // The band's d pre-activations: 4h rows of `len`, row stride HW.
                let dpre_band = View {
                    data: &dpre[start..],
                    rows: 4 * h,
                    cols: len,
                    rs: hw,
                    cs: 1,
                };
                matmul_view(&mut dw, rows, dpre_band, View::row_major(col, rows, len).t(), true);
                matmul_view(col, len, View::row_major(weight, 4 * h, rows).t(), dpre_band, false);
                col2im_add_rows(col, &mut dh_prev, h, (dims.height, dims.width), dims.k, band);
            }
        }
        std::mem::swap(&mut dh_next, &mut dh_prev);
    }
    dw
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::cpu::convlstm::{Forward, Input, forward_in_bands, identity_input};
    use crate::kernels::cpu::testing::{assert_close, values};

    /// The recurrence over the input half `gx` itself, in bands of `band_len`.
    fn run(gx: &[f32], w: &[f32], dims: Dims, save: bool, band_len: usize) -> Forward {
        let (eye, zero) = identity_input(dims);
        let input = Input {
            x: gx,
            c: 4 * dims.h,
            kx: 1,
            wx: &eye,
            bias: &zero,
        };
        forward_in_bands(input, w, dims, None, save, band_len)
    }

    #[test]
    fn backward_matches_finite_differences() {
        let dims = Dims {
            b: 2,
            t: 4,
            h: 2,
            height: 4,
            width: 3,
            k: 3,
        };
        let gx: Vec<f32> = values(dims.gx_len(), 5).iter().map(|v| v * 1.5).collect();
        let w: Vec<f32> = values(dims.weight_len(), 6).iter().map(|v| v * 0.6).collect();
        let r = values(dims.out_len(), 7);
        // Loss L = Σ r·h, so dL/dh = r.
        let loss = |gx: &[f32], w: &[f32]| -> f64 {
            let h = run(gx, w, dims, false, dims.band_len()).hidden;
            h.iter().zip(&r).map(|(a, b)| (*a as f64) * (*b as f64)).sum()
        };
        let out = run(&gx, &w, dims, true, dims.band_len());
        let (dgx, dw) = backward(&out.saved.unwrap(), &out.hidden, &r);
        let eps = 1e-2f32;
        let check = |analytic: f32, plus: f64, minus: f64, what: &str| {
            let numeric = (plus - minus) / (2.0 * eps as f64);
            assert!(
                (analytic as f64 - numeric).abs() < 2e-3 * (1.0 + numeric.abs()),
                "{what}: analytic {analytic} vs numeric {numeric}"
            );
        };
        for idx in (0..gx.len()).step_by(7) {
            let (mut p, mut m) = (gx.clone(), gx.clone());
            p[idx] += eps;
            m[idx] -= eps;
            check(dgx[idx], loss(&p, &w), loss(&m, &w), &format!("gx[{idx}]"));
        }
        for idx in 0..w.len() {
            let (mut p, mut m) = (w.clone(), w.clone());
            p[idx] += eps;
            m[idx] -= eps;
            check(dw[idx], loss(&gx, &p), loss(&gx, &m), &format!("w[{idx}]"));
        }
    }

    #[test]
    fn bands_do_not_change_the_recurrence() {
        // 7 rows of 5: bands of 1 and 3 rows (the last one short) against one band, for one
        // video (bands shared out over threads) and two (bands in turn on each video's thread).
        for b in [1, 2] {
            let dims = Dims {
                b,
                t: 5,
                h: 3,
                height: 7,
                width: 5,
                k: 3,
            };
            let gx: Vec<f32> = values(dims.gx_len(), 11).iter().map(|v| v * 1.5).collect();
            let w: Vec<f32> = values(dims.weight_len(), 12).iter().map(|v| v * 0.6).collect();
            let r = values(dims.out_len(), 13);
            let whole = 7 * 5;
            let Forward {
                hidden: h_ref, saved, ..
            } = run(&gx, &w, dims, true, whole);
            let saved_ref = saved.unwrap();
            let (dgx_ref, dw_ref) = backward_in_bands(&saved_ref, &h_ref, &r, whole);
            for band_len in [5, 15] {
                let Forward { hidden: h, saved, .. } = run(&gx, &w, dims, true, band_len);
                let saved = saved.unwrap();
                assert_close(&h, &h_ref, 1e-6, &format!("b {b}, band {band_len}: hidden"));
                assert_close(&saved.gates, &saved_ref.gates, 1e-6, "gates");
                assert_close(&saved.cell, &saved_ref.cell, 1e-6, "cell");
                let (dgx, dw) = backward_in_bands(&saved, &h, &r, band_len);
                assert_close(&dgx, &dgx_ref, 1e-5, &format!("b {b}, band {band_len}: d gx"));
                assert_close(&dw, &dw_ref, 1e-5, &format!("b {b}, band {band_len}: d w"));
            }
        }
    }
}
