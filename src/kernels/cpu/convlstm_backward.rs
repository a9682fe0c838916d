//! The backward of a ConvLSTM layer ([`super::convlstm::forward`]) through time, on `f32`
//! slices: per video on its own thread, band by band like the forward. Each band of a step
//! takes its gates' gradient through the cell's conv unsplit, as the forward does: one
//! product for the weight gradient of both halves, one for the gradient of the column
//! matrix over `concat(x_t, h_{t-1})`, whose two parts land on `x_t` and `h_{t-1}`. So the
//! gates' gradient of a whole sequence (`[B, T, 4h, H, W]`, 134 MB per layer at the paper's
//! B = 2, T = 128) is never stored, and the input half needs no pass of its own.

use rayon::prelude::*;

use super::conv::sum;
use super::convlstm::{Dims, Input, Saved};
use super::gemm::{View, matmul_view};
use super::im2col::{col2im_add_rows, im2col_rows};
use super::simd::gates_backward;

/// The gradients of a layer.
#[derive(Debug)]
pub struct Grads {
    /// Of the input `[B, T, C, H, W]`, when asked for.
    pub dx: Option<Vec<f32>>,
    /// Of the input half's weight `[4h, C, kx, kx]`.
    pub dwx: Vec<f32>,
    /// Of the bias `[4h]`.
    pub db: Vec<f32>,
    /// Of the hidden half's weight `[4h, h, k, k]`.
    pub dwh: Vec<f32>,
}

/// Gradients of a loss through a layer run from a zero state (as training runs it) over
/// `input`, whose output was `hidden`, given the loss's gradient with respect to that output
/// `[B, T, h, H, W]`; `dx` only when `need_dx`.
///
/// # Panics
/// If `input`, `hidden` or `grad_out` does not have the sizes `saved.dims` implies.
pub fn backward(saved: &Saved, input: Input, hidden: &[f32], grad_out: &[f32], need_dx: bool) -> Grads {
    backward_in_bands(saved, input, hidden, grad_out, need_dx, saved.dims.band_len())
}

/// [`backward`] with bands of `band_len` values (whole rows).
pub(super) fn backward_in_bands(
    saved: &Saved,
    input: Input,
    hidden: &[f32],
    grad_out: &[f32],
    need_dx: bool,
    band_len: usize,
) -> Grads {
    let dims = saved.dims;
    let (g_len, s_len, t, hw) = (dims.gates(), dims.state(), dims.t, dims.hw());
    let (kx, kh) = (input.col_rows(), dims.col_rows());
    let x_len = input.c * hw;
    assert_eq!(grad_out.len(), dims.out_len(), "ConvLSTM output gradient size");
    assert_eq!(hidden.len(), dims.out_len(), "ConvLSTM hidden state size");
    assert!(
        input.x.len() == dims.b * t * x_len && input.wx.len() == 4 * dims.h * kx,
        "ConvLSTM input sizes"
    );
    let w_cat = input.weight_cat(&saved.weight, kh);
    let mut dx = if need_dx {
        vec![0.0f32; dims.b * t * x_len]
    } else {
        Vec::new()
    };
    let dx_videos: Vec<Option<&mut [f32]>> = if need_dx {
        dx.chunks_mut((t * x_len).max(1)).map(Some).collect()
    } else {
        (0..dims.b).map(|_| None).collect()
    };
    let per_video: Vec<(Vec<f32>, Vec<f32>)> = dx_videos
        .into_par_iter()
        .enumerate()
        .map(|(v, dx_v)| {
            let fwd = Video {
                x: video(input.x, v, t * x_len),
                gates: video(&saved.gates, v, t * g_len),
                cell: video(&saved.cell, v, t * s_len),
                hidden: video(hidden, v, t * s_len),
            };
            let layer = (&input, &w_cat[..], dims, band_len);
            backward_video(fwd, layer, video(grad_out, v, t * s_len), dx_v)
        })
        .collect();
    // Sum the videos' weight and bias gradients in a fixed order (deterministic).
    let mut dw = vec![0.0f32; 4 * dims.h * (kx + kh)];
    let mut db = vec![0.0f32; 4 * dims.h];
    for (w, b) in &per_video {
        dw.iter_mut().zip(w).for_each(|(a, b)| *a += b);
        db.iter_mut().zip(b).for_each(|(a, b)| *a += b);
    }
    // Split [4h, kx + kh] into the two halves' weights.
    let (mut dwx, mut dwh) = (Vec::with_capacity(4 * dims.h * kx), Vec::with_capacity(4 * dims.h * kh));
    for row in dw.chunks(kx + kh) {
        dwx.extend_from_slice(&row[..kx]);
        dwh.extend_from_slice(&row[kx..]);
    }
    Grads {
        dx: need_dx.then_some(dx),
        dwx,
        db,
        dwh,
    }
}

/// Video `v`'s part of a batch-major buffer with `per` values per video.
fn video(buf: &[f32], v: usize, per: usize) -> &[f32] {
    &buf[v * per..(v + 1) * per]
}

/// One video's part of what the forward saw and kept.
struct Video<'a> {
    /// `[T, C, H, W]`.
    x: &'a [f32],
    /// `[T, 4h, H, W]`.
    gates: &'a [f32],
    /// `[T, h, H, W]`.
    cell: &'a [f32],
    /// `[T, h, H, W]`.
    hidden: &'a [f32],
}

/// One video's backward through time; writes d x (when given) and returns its gradients of
/// the unsplit weight `[4h, C·kx² + h·k²]` and of the bias. The gradient into h_{t-1} goes
/// to a second buffer, as a band's col2im reaches into its neighbours' rows.
fn backward_video(
    fwd: Video,
    (input, w_cat, dims, band_len): (&Input, &[f32], Dims, usize),
    grad_out: &[f32],
    mut dx: Option<&mut [f32]>,
) -> (Vec<f32>, Vec<f32>) {
    let (g_len, s_len, hw, h) = (dims.gates(), dims.state(), dims.hw(), dims.h);
    let size = (dims.height, dims.width);
    let (kx, kh) = (input.col_rows(), dims.col_rows());
    let x_len = input.c * hw;
    // The weight's gradient transposed, `[C·kx² + h·k², 4h]`: with the band's pixels the
    // products' inner dimension, `gemm` then packs the band's 4h rows of d pre instead of
    // its (C·kx² + h·k²) rows of columns (2.5× to 20× fewer values per band at the
    // paper's widths).
    let mut dw_t = vec![0.0f32; (kx + kh) * 4 * h];
    let mut db = vec![0.0f32; 4 * h];
    let mut dh_next = vec![0.0f32; s_len];
    let mut dh_prev = vec![0.0f32; s_len];
    let mut dc_next = vec![0.0f32; s_len];
    // The gates' gradient of one step, `[4h, H, W]`.
    let mut dpre = vec![0.0f32; g_len];
    let mut col = vec![0.0f32; (kx + kh) * band_len];
    let zeros = vec![0.0f32; s_len];
    for step in (0..dims.t).rev() {
        let g = &fwd.gates[step * g_len..(step + 1) * g_len];
        let c = &fwd.cell[step * s_len..(step + 1) * s_len];
        let c_prev = if step > 0 {
            &fwd.cell[(step - 1) * s_len..step * s_len]
        } else {
            &zeros[..]
        };
        let dout = &grad_out[step * s_len..(step + 1) * s_len];
        let x_t = &fwd.x[step * x_len..][..x_len];
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
            // The band's columns over x_t, and over h_{t-1} after the first step (whose
            // zero state had no hidden half).
            let rows = start / dims.width..(start + len) / dims.width;
            let k_used = if step > 0 { kx + kh } else { kx };
            let col = &mut col[..k_used * len];
            let (col_x, col_h) = col.split_at_mut(kx * len);
            im2col_rows(x_t, col_x, input.c, size, input.kx, rows.clone());
            let h_prev = &fwd.hidden[step.saturating_sub(1) * s_len..][..s_len];
            if step > 0 {
                im2col_rows(h_prev, col_h, h, size, dims.k, rows.clone());
            }
            // The band's d pre-activations: 4h rows of `len`, row stride HW.
            let dpre_band = View {
                data: &dpre[start..],
                rows: 4 * h,
                cols: len,
                rs: hw,
                cs: 1,
            };
            let w_used = View {
                data: w_cat,
                rows: 4 * h,
                cols: k_used,
                rs: kx + kh,
                cs: 1,
            };
            matmul_view(&mut dw_t, 4 * h, View::row_major(col, k_used, len), dpre_band.t(), true);
            matmul_view(col, len, w_used.t(), dpre_band, false);
            let (dcol_x, dcol_h) = col.split_at(kx * len);
            if let Some(dx) = dx.as_deref_mut() {
                let dx_t = &mut dx[step * x_len..][..x_len];
                col2im_add_rows(dcol_x, dx_t, input.c, size, input.kx, rows.clone());
            }
            if step > 0 {
                col2im_add_rows(dcol_h, &mut dh_prev, h, size, dims.k, rows);
            }
        }
        for (acc, plane) in db.iter_mut().zip(dpre.chunks(hw)) {
            *acc += sum(plane);
        }
        std::mem::swap(&mut dh_next, &mut dh_prev);
    }
    let dw = (0..4 * h)
        .flat_map(|g| dw_t.iter().skip(g).step_by(4 * h).copied())
        .collect();
    (dw, db)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::cpu::convlstm::{Forward, forward_in_bands};
    use crate::kernels::cpu::testing::{assert_close, values};

    /// A layer's operands from fixed seeds: x `[B, T, C, H, W]`, wx, bias, wh.
    fn operands(dims: Dims, c: usize, seed: u32) -> [Vec<f32>; 4] {
        let (h, k) = (dims.h, dims.k);
        [
            values(dims.b * dims.t * c * dims.hw(), seed)
                .iter()
                .map(|v| v * 1.5)
                .collect(),
            values(4 * h * c * k * k, seed + 1).iter().map(|v| v * 0.5).collect(),
            values(4 * h, seed + 2),
            values(dims.weight_len(), seed + 3).iter().map(|v| v * 0.6).collect(),
        ]
    }

    fn input<'a>(ops: &'a [Vec<f32>; 4], c: usize, k: usize) -> Input<'a> {
        Input {
            x: &ops[0],
            c,
            kx: k,
            wx: &ops[1],
            bias: &ops[2],
        }
    }

    fn run(ops: &[Vec<f32>; 4], c: usize, dims: Dims, save: bool, band_len: usize) -> Forward {
        forward_in_bands(input(ops, c, dims.k), &ops[3], dims, None, save, band_len)
    }

    #[test]
    fn backward_matches_finite_differences() {
        // Every operand's gradient: x, both halves' weights and the bias, k = 3 and 5.
        for (k, c) in [(3, 2), (5, 1)] {
            let dims = Dims {
                b: 2,
                t: 4,
                h: 2,
                height: 4,
                width: 3,
                k,
            };
            let ops = operands(dims, c, 5);
            let r = values(dims.out_len(), 7);
            // Loss L = Σ r·h, so dL/dh = r.
            let loss = |ops: &[Vec<f32>; 4]| -> f64 {
                let h = run(ops, c, dims, false, dims.band_len()).hidden;
                h.iter().zip(&r).map(|(a, b)| (*a as f64) * (*b as f64)).sum()
            };
            let out = run(&ops, c, dims, true, dims.band_len());
            let g = backward(&out.saved.unwrap(), input(&ops, c, k), &out.hidden, &r, true);
            let analytic = [g.dx.unwrap(), g.dwx, g.db, g.dwh];
            let eps = 1e-2f32;
            for (which, name) in ["x", "wx", "bias", "wh"].iter().enumerate() {
                assert_eq!(analytic[which].len(), ops[which].len(), "{name}: size");
                for idx in (0..ops[which].len()).step_by(if which == 0 { 5 } else { 1 }) {
                    let (mut p, mut m) = (ops.clone(), ops.clone());
                    p[which][idx] += eps;
                    m[which][idx] -= eps;
                    let numeric = (loss(&p) - loss(&m)) / (2.0 * eps as f64);
                    let got = analytic[which][idx] as f64;
                    assert!(
                        (got - numeric).abs() < 2e-3 * (1.0 + numeric.abs()),
                        "k {k}, {name}[{idx}]: analytic {got} vs numeric {numeric}"
                    );
                }
            }
        }
    }

    #[test]
    fn bands_do_not_change_the_layer() {
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
            let c = 2;
            let ops = operands(dims, c, 11);
            let r = values(dims.out_len(), 13);
            let whole = 7 * 5;
            let Forward {
                hidden: h_ref, saved, ..
            } = run(&ops, c, dims, true, whole);
            let saved_ref = saved.unwrap();
            let g_ref = backward_in_bands(&saved_ref, input(&ops, c, 3), &h_ref, &r, true, whole);
            for band_len in [5, 15] {
                let Forward { hidden: h, saved, .. } = run(&ops, c, dims, true, band_len);
                let saved = saved.unwrap();
                assert_close(&h, &h_ref, 1e-6, &format!("b {b}, band {band_len}: hidden"));
                assert_close(&saved.gates, &saved_ref.gates, 1e-6, "gates");
                assert_close(&saved.cell, &saved_ref.cell, 1e-6, "cell");
                let g = backward_in_bands(&saved, input(&ops, c, 3), &h, &r, true, band_len);
                let what = |o: &str| format!("b {b}, band {band_len}: d {o}");
                assert_close(g.dx.as_deref().unwrap(), g_ref.dx.as_deref().unwrap(), 1e-5, &what("x"));
                assert_close(&g.dwx, &g_ref.dwx, 1e-5, &what("wx"));
                assert_close(&g.db, &g_ref.db, 1e-5, &what("bias"));
                assert_close(&g.dwh, &g_ref.dwh, 1e-5, &what("wh"));
                // Without d x, the same weight gradients.
                let none = backward_in_bands(&saved, input(&ops, c, 3), &h, &r, false, band_len);
                assert!(none.dx.is_none());
                assert_eq!((none.dwx, none.dwh, none.db), (g.dwx, g.dwh, g.db));
            }
        }
    }
}
