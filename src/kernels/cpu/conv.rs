//! A same-padded k×k 2-D convolution with bias (stride 1) of many frames on `f32` slices,
//! forward and backward: im2col + GEMM per frame on parallel threads, band by band. The
//! spatial-attention stack's convs run on it.

use rayon::prelude::*;

use super::gemm::{View, matmul, matmul_view};
use super::im2col::{band_len, col2im_add_rows, im2col_rows};

/// Sizes of a k×k conv (padding k / 2) of every frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvDims {
    /// Frames (B·T).
    pub frames: usize,
    /// Input channels.
    pub c: usize,
    /// Output channels.
    pub out: usize,
    pub height: usize,
    pub width: usize,
    /// Odd kernel side.
    pub k: usize,
}

impl ConvDims {
    fn hw(&self) -> usize {
        self.height * self.width
    }
    fn col_rows(&self) -> usize {
        self.c * self.k * self.k
    }
    /// Values of the input `[frames, c, H, W]`.
    pub fn x_len(&self) -> usize {
        self.frames * self.c * self.hw()
    }
    /// Values of the weight `[out, c, k, k]`.
    pub fn weight_len(&self) -> usize {
        self.out * self.col_rows()
    }
}

/// `Σ v` with 16 independent partial sums (vectorisable; a single running sum is a chain
/// of dependent adds, several times slower).
pub(super) fn sum(v: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let mut chunks = v.chunks_exact(16);
    for ch in &mut chunks {
        for (a, x) in acc.iter_mut().zip(ch) {
            *a += x;
        }
    }
    acc.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>()
}

/// Frames per task of the backward: the weight gradient is summed per chunk,
/// then over chunks in order, so the result does not depend on thread scheduling.
const FRAME_CHUNK: usize = 8;

/// The conv of every frame: `conv(x, w) + bias`, `[frames, out, H, W]`.
///
/// # Panics
/// If the operands do not have the sizes `d` implies.
pub fn forward(x: &[f32], w: &[f32], bias: &[f32], d: ConvDims) -> Vec<f32> {
    assert!(
        x.len() == d.x_len() && w.len() == d.weight_len() && bias.len() == d.out,
        "conv operand sizes"
    );
    let (hw, rows) = (d.hw(), d.col_rows());
    let band = band_len(d.height, d.width);
    let mut y = vec![0.0f32; d.frames * d.out * hw];
    // A 1×1 conv's im2col is the frame itself.
    let col_len = if d.k == 1 { 0 } else { rows * band };
    y.par_chunks_mut(d.out * hw).zip(x.par_chunks(d.c * hw)).for_each_init(
        || vec![0.0f32; col_len],
        |col, (g, xf)| {
            for (plane, b) in g.chunks_mut(hw).zip(bias) {
                plane.fill(*b);
            }
            if d.k == 1 {
                matmul(g, w, xf, (d.out, rows, hw), false, false, true);
                return;
            }
            // Band by band, as the recurrence (see `BAND_PIXELS`): a whole frame's columns
            // (c·k·k × H·W) do not fit in L2.
            for start in (0..hw).step_by(band) {
                let len = band.min(hw - start);
                let col = &mut col[..rows * len];
                let band_rows = start / d.width..(start + len) / d.width;
                im2col_rows(xf, col, d.c, (d.height, d.width), d.k, band_rows);
                let (wv, cv) = (View::row_major(w, d.out, rows), View::row_major(col, rows, len));
                matmul_view(&mut g[start..], hw, wv, cv, true);
            }
        },
    );
    y
}

/// Gradients of the conv given d y `[frames, out, H, W]`: (d x when `need_dx`,
/// d w, d bias).
///
/// # Panics
/// If the operands do not have the sizes `d` implies.
pub fn backward(
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    d: ConvDims,
    need_dx: bool,
) -> (Option<Vec<f32>>, Vec<f32>, Vec<f32>) {
    let (hw, rows) = (d.hw(), d.col_rows());
    assert!(
        x.len() == d.x_len() && w.len() == d.weight_len() && dy.len() == d.frames * d.out * hw,
        "conv gradient sizes"
    );
    let mut dx = if need_dx { vec![0.0f32; d.x_len()] } else { Vec::new() };
    let chunks = d.frames.div_ceil(FRAME_CHUNK);
    let mut dx_chunks: Vec<Option<&mut [f32]>> = if need_dx {
        dx.chunks_mut(FRAME_CHUNK * d.c * hw).map(Some).collect()
    } else {
        (0..chunks).map(|_| None).collect()
    };
    let partial: Vec<(Vec<f32>, Vec<f32>)> = dx_chunks
        .par_iter_mut()
        .enumerate()
        .map(|(ci, dx_chunk)| {
            let mut dw = vec![0.0f32; d.weight_len()];
            let mut db = vec![0.0f32; d.out];
            // A 1×1 conv needs no im2col/col2im: the frame is its own column matrix.
            let band = band_len(d.height, d.width);
            let mut col = vec![0.0f32; if d.k == 1 { 0 } else { rows * band }];
            let first = ci * FRAME_CHUNK;
            for f in first..(first + FRAME_CHUNK).min(d.frames) {
                let g = &dy[f * d.out * hw..(f + 1) * d.out * hw];
                for (acc, plane) in db.iter_mut().zip(g.chunks(hw)) {
                    *acc += sum(plane);
                }
                let xf = &x[f * d.c * hw..(f + 1) * d.c * hw];
                let mut dxf = dx_chunk.as_deref_mut().map(|dxc| {
                    let j = f - first;
                    &mut dxc[j * d.c * hw..(j + 1) * d.c * hw]
                });
                if d.k == 1 {
                    matmul(&mut dw, g, xf, (d.out, hw, rows), false, true, true);
                    if let Some(dxf) = dxf {
                        matmul(dxf, w, g, (rows, d.out, hw), true, false, false);
                    }
                    continue;
                }
                // Band by band, as the forward; d x gets each band's col2im in turn (a band
                // reaches into its neighbours' rows).
                for start in (0..hw).step_by(band) {
                    let len = band.min(hw - start);
                    let col = &mut col[..rows * len];
                    let band_rows = start / d.width..(start + len) / d.width;
                    im2col_rows(xf, col, d.c, (d.height, d.width), d.k, band_rows.clone());
                    let gv = View {
                        data: &g[start..],
                        rows: d.out,
                        cols: len,
                        rs: hw,
                        cs: 1,
                    };
                    matmul_view(&mut dw, rows, gv, View::row_major(col, rows, len).t(), true);
                    if let Some(dxf) = dxf.as_deref_mut() {
                        matmul_view(col, len, View::row_major(w, d.out, rows).t(), gv, false);
                        col2im_add_rows(col, dxf, d.c, (d.height, d.width), d.k, band_rows);
                    }
                }
            }
            (dw, db)
        })
        .collect();
    let mut dw = vec![0.0f32; d.weight_len()];
    let mut db = vec![0.0f32; d.out];
    for (pw, pb) in &partial {
        dw.iter_mut().zip(pw).for_each(|(a, b)| *a += b);
        db.iter_mut().zip(pb).for_each(|(a, b)| *a += b);
    }
    (need_dx.then_some(dx), dw, db)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::cpu::testing::{conv_direct, values};

    #[test]
    fn input_half_is_a_conv_with_bias_and_its_gradients_match_finite_differences() {
        let d = ConvDims {
            frames: 11, // more than one FRAME_CHUNK, not a multiple of it
            c: 2,
            out: 4,
            // Rows of 100 make bands of 2 rows (the last one short): 2 + 2 + 2 + 1.
            height: 7,
            width: 100,
            k: 3,
        };
        let x = values(d.x_len(), 21);
        let w = values(d.weight_len(), 22);
        let bias = values(d.out, 23);
        let y = forward(&x, &w, &bias, d);
        let hw = d.height * d.width;
        for f in [0, 7, 10] {
            let want = conv_direct(
                &x[f * d.c * hw..(f + 1) * d.c * hw],
                &w,
                d.c,
                d.out,
                d.height,
                d.width,
                d.k,
            );
            for (j, v) in want.iter().enumerate() {
                let got = y[f * d.out * hw + j];
                assert!((got - (v + bias[j / hw])).abs() < 1e-5, "frame {f} value {j}");
            }
        }
        let r = values(y.len(), 24);
        let loss = |x: &[f32], w: &[f32], b: &[f32]| -> f64 {
            let g = forward(x, w, b, d);
            g.iter().zip(&r).map(|(a, b)| (*a as f64) * (*b as f64)).sum()
        };
        let (dx, dw, db) = backward(&x, &w, &r, d, true);
        let dx = dx.unwrap();
        let eps = 1e-2f32;
        let fd = |f: &dyn Fn(f32) -> f64| (f(eps) - f(-eps)) / (2.0 * eps as f64);
        for i in (0..x.len()).step_by(37) {
            let num = fd(&|e| {
                let mut xx = x.clone();
                xx[i] += e;
                loss(&xx, &w, &bias)
            });
            assert!(
                (dx[i] as f64 - num).abs() < 1e-3 * (1.0 + num.abs()),
                "dx[{i}] {} vs {num}",
                dx[i]
            );
        }
        for i in 0..w.len() {
            let num = fd(&|e| {
                let mut ww = w.clone();
                ww[i] += e;
                loss(&x, &ww, &bias)
            });
            assert!(
                (dw[i] as f64 - num).abs() < 1e-3 * (1.0 + num.abs()),
                "dw[{i}] {} vs {num}",
                dw[i]
            );
        }
        for i in 0..d.out {
            let num = fd(&|e| {
                let mut bb = bias.clone();
                bb[i] += e;
                loss(&x, &w, &bb)
            });
            assert!(
                (db[i] as f64 - num).abs() < 1e-3 * (1.0 + num.abs()),
                "db[{i}] {} vs {num}",
                db[i]
            );
        }
        // Without d x the parameter gradients are the same numbers.
        let (none, dw2, db2) = backward(&x, &w, &r, d, false);
        assert!(none.is_none() && dw2 == dw && db2 == db);
    }
}
