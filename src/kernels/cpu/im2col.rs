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
///
/// Each (channel, ky, kx) row is one copy of the band's source rows shifted by `kx − k/2`,
/// then the few values that wrapped across an image row's edge are zeroed: per image row a
/// 64-value copy was mostly call overhead (`memmove` was 6 % of inference in `perf`).
pub fn im2col_rows(
    img: &[f32],
    col: &mut [f32],
    c: usize,
    (height, width): (usize, usize),
    k: usize,
    rows: Range<usize>,
) {
    let p = k / 2;
    let hw = height * width;
    let len = rows.len() * width;
    for ic in 0..c {
        let plane = &img[ic * hw..(ic + 1) * hw];
        for ky in 0..k {
            // The band's rows y whose source row y + ky − p lies inside the image.
            let y_lo = rows.start.max(p.saturating_sub(ky)).min(rows.end);
            let y_hi = rows.end.min((height + p).saturating_sub(ky)).max(y_lo);
            // Output values before that block, and in it.
            let (head, block) = ((y_lo - rows.start) * width, (y_hi - y_lo) * width);
            // The block's first source row (only read when the block is not empty).
            let ys = (y_lo + ky).saturating_sub(p);
            for kx in 0..k {
                let out = &mut col[((ic * k + ky) * k + kx) * len..][..len];
                let (before, rest) = out.split_at_mut(head);
                let (mid, after) = rest.split_at_mut(block);
                before.fill(0.0);
                after.fill(0.0);
                if block > 0 {
                    shift_block(mid, plane, ys * width, width, kx as isize - p as isize);
                }
            }
        }
    }
}

/// `out[j] = src[start + j + dx]` for whole image rows of `width` values, zero where
/// `x + dx` leaves the row (the copy reads the neighbouring row's value there, or nothing
/// past the plane's ends).
#[inline]
fn shift_block(out: &mut [f32], src: &[f32], start: usize, width: usize, dx: isize) {
    let n = out.len();
    let d = dx.unsigned_abs().min(width);
    if dx >= 0 {
        // The last d values would lie past the last row (or the plane); zeroed below.
        out[..n - d].copy_from_slice(&src[start + d..start + n]);
        for row in out.chunks_exact_mut(width) {
            row[width - d..].fill(0.0);
        }
    } else {
        // The first d values may lie before the plane; each row's first d are zeroed below.
        let skip = d.saturating_sub(start);
        out[skip..].copy_from_slice(&src[start + skip - d..start + n - d]);
        for row in out.chunks_exact_mut(width) {
            row[..d].fill(0.0);
        }
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
    fn im2col_of_any_band_matches_the_definition() {
        // Every band of rows of images narrower and shorter than the kernel included, k = 1,
        // 3, 5 and 7: each column entry is the pixel it names, or zero outside the image.
        for (c, hgt, wid, k) in [
            (2, 5, 7, 3),
            (1, 4, 4, 1),
            (3, 6, 5, 5),
            (1, 2, 1, 5),
            (2, 3, 2, 7),
            (1, 9, 3, 3),
        ] {
            let img = values(c * hgt * wid, 9);
            for r0 in 0..hgt {
                for r1 in r0 + 1..=hgt {
                    let len = (r1 - r0) * wid;
                    let mut col = vec![f32::NAN; c * k * k * len];
                    im2col_rows(&img, &mut col, c, (hgt, wid), k, r0..r1);
                    let p = (k / 2) as isize;
                    for ic in 0..c {
                        for ky in 0..k {
                            for kx in 0..k {
                                for y in r0..r1 {
                                    for x in 0..wid {
                                        let (yy, xx) = (y as isize + ky as isize - p, x as isize + kx as isize - p);
                                        let inside = (0..hgt as isize).contains(&yy) && (0..wid as isize).contains(&xx);
                                        let want = if inside {
                                            img[(ic * hgt + yy as usize) * wid + xx as usize]
                                        } else {
                                            0.0
                                        };
                                        let got = col[((ic * k + ky) * k + kx) * len + (y - r0) * wid + x];
                                        assert_eq!(
                                            got, want,
                                            "c {ic} ky {ky} kx {kx} y {y} x {x}, band {r0}..{r1} of {hgt}x{wid}, k {k}"
                                        );
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }

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
