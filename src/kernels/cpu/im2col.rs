//! im2col and its adjoint col2im for a same-padded k×k kernel, over a band of image rows at
//! a time, and the band size that keeps a band's operands in cache.

use std::ops::Range;

/// Pixels per band of a recurrence step (whole image rows, at least one). Each step runs
/// band by band (im2col, GEMM, gates) so that a band's column matrix (h·k·k × 256) and
/// hidden-half gates (4h × 256) stay in L1/L2 between the three (bands of 128, 256, 512,
/// 1024 and 2048 pixels measured on 64 × 64 images, h = 8: 256 was fastest); with one video the bands of a step are the unit of
/// threading (measured in issue #6: splitting each step's whole GEMM across threads left
/// im2col and the gates on one thread and cost a rayon round trip inside the GEMM).
pub const BAND_PIXELS: usize = 256;

/// Whole image rows of about [`BAND_PIXELS`] values (at least one row).
pub fn band_len(height: usize, width: usize) -> usize {
    (BAND_PIXELS / width).clamp(1, height) * width
}

/// im2col of a `[c, H, W]` image for a k×k kernel with padding k / 2: `col[(c·k + ky)·k + kx][y·W + x]`
/// (the whole-image form, for the tests).
#[cfg(test)]
pub fn im2col(img: &[f32], col: &mut [f32], c: usize, height: usize, width: usize, k: usize) {
    im2col_rows(img, col, c, (height, width), k, 0..height);
}

/// im2col of the output rows `rows` only: `col[(c·k + ky)·k + kx][(y − rows.start)·W + x]`
/// (the kernel still reads the image rows next to the band).
pub fn im2col_rows(
    img: &[f32],
    col: &mut [f32],
    c: usize,
    (height, width): (usize, usize),
    k: usize,
    rows: Range<usize>,
) {
    let p = (k / 2) as isize;
    let hw = height * width;
    let len = rows.len() * width;
    for ic in 0..c {
        let plane = &img[ic * hw..(ic + 1) * hw];
        for ky in 0..k {
            for kx in 0..k {
                let row = &mut col[((ic * k + ky) * k + kx) * len..][..len];
                let dx = kx as isize - p;
                for (y, out) in rows.clone().zip(row.chunks_exact_mut(width)) {
                    let yy = y as isize + ky as isize - p;
                    if yy < 0 || yy >= height as isize {
                        out.fill(0.0);
                        continue;
                    }
                    let src = &plane[yy as usize * width..(yy as usize + 1) * width];
                    shift_row(out, src, dx);
                }
            }
        }
    }
}

/// `out[x] = src[x + dx]`, zero outside.
#[inline]
fn shift_row(out: &mut [f32], src: &[f32], dx: isize) {
    let w = out.len() as isize;
    let lo = (-dx).clamp(0, w) as usize;
    let hi = (w - dx).clamp(0, w) as usize;
    out[..lo].fill(0.0);
    out[hi.max(lo)..].fill(0.0);
    if hi > lo {
        out[lo..hi].copy_from_slice(&src[(lo as isize + dx) as usize..(hi as isize + dx) as usize]);
    }
}

/// The adjoint of [`im2col`]: add every column entry back onto the pixel it was read from.
#[cfg(test)]
pub fn col2im_add(col: &[f32], img: &mut [f32], c: usize, height: usize, width: usize, k: usize) {
    col2im_add_rows(col, img, c, (height, width), k, 0..height);
}

/// The adjoint of [`im2col_rows`]: the band's columns land on its rows and the rows next
/// to them.
pub fn col2im_add_rows(
    col: &[f32],
    img: &mut [f32],
    c: usize,
    (height, width): (usize, usize),
    k: usize,
    rows: Range<usize>,
) {
    let p = (k / 2) as isize;
    let hw = height * width;
    let len = rows.len() * width;
    let w = width as isize;
    for ic in 0..c {
        let plane = &mut img[ic * hw..(ic + 1) * hw];
        for ky in 0..k {
            for kx in 0..k {
                let row = &col[((ic * k + ky) * k + kx) * len..][..len];
                let dx = kx as isize - p;
                let lo = (-dx).clamp(0, w) as usize;
                let hi = (w - dx).clamp(0, w) as usize;
                if hi <= lo {
                    continue;
                }
                for (y, src) in rows.clone().zip(row.chunks_exact(width)) {
                    let yy = y as isize + ky as isize - p;
                    if yy < 0 || yy >= height as isize {
                        continue;
                    }
                    let dst_lo = (yy as usize) * width + (lo as isize + dx) as usize;
                    let dst = &mut plane[dst_lo..dst_lo + (hi - lo)];
                    for (d, s) in dst.iter_mut().zip(&src[lo..hi]) {
                        *d += s;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::cpu::gemm::matmul;
    use crate::kernels::cpu::testing::{conv_direct, values};

    #[test]
    fn im2col_gemm_is_a_convolution_and_col2im_its_adjoint() {
        for (c, oc, hgt, wid, k) in [(2, 3, 5, 7, 3), (1, 4, 4, 4, 1), (3, 2, 6, 5, 5)] {
            let img = values(c * hgt * wid, 1);
            let w = values(oc * c * k * k, 2);
            let mut col = vec![0.0; c * k * k * hgt * wid];
            im2col(&img, &mut col, c, hgt, wid, k);
            let mut out = vec![0.0; oc * hgt * wid];
            matmul(&mut out, &w, &col, (oc, c * k * k, hgt * wid), false, false, false);
            let want = conv_direct(&img, &w, c, oc, hgt, wid, k);
            for (a, b) in out.iter().zip(&want) {
                assert!((a - b).abs() < 1e-5, "{a} vs {b}");
            }
            // <im2col(x), y> = <x, col2im(y)> for any x, y.
            let y = values(col.len(), 3);
            let lhs: f64 = col.iter().zip(&y).map(|(a, b)| (*a as f64) * (*b as f64)).sum();
            let mut back = vec![0.0; img.len()];
            col2im_add(&y, &mut back, c, hgt, wid, k);
            let rhs: f64 = img.iter().zip(&back).map(|(a, b)| (*a as f64) * (*b as f64)).sum();
            assert!((lhs - rhs).abs() < 1e-4, "{lhs} vs {rhs}");
        }
    }
}
