//! The CPU kernels as plain Rust on `f32` slices: no burn types, no back-end, so they build
//! and test anywhere and are the reference a GPU kernel of the same op can be checked against.
//! The burn glue that feeds them flex tensors and records their backward is beside this
//! module (`super::*_op`).
//!
//! - [`simd`]: `exp`, sigmoid and tanh that vectorise, and the ConvLSTM gate arithmetic
//!   (portable, AVX2 + FMA and AVX-512, picked at run time);
//! - [`gemm`]: matrix products with transposed and strided views, and batched products cut
//!   into one single-threaded GEMM per thread;
//! - [`im2col`]: im2col / col2im by bands of rows, and the band size;
//! - [`conv`]: a same-padded k×k conv of many frames, forward and backward;
//! - [`convlstm`], [`convlstm_backward`]: a ConvLSTM layer, forward and backward through time;
//! - [`batchnorm`]: training-mode BatchNorm2d (+ ReLU);
//! - [`spatial`]: the spatial-attention stack for inference, BatchNorm folded, one pass per frame;
//! - [`optim`]: clipping, AdamW and EMA arithmetic over parameter buffers.

pub mod batchnorm;
pub mod conv;
pub mod convlstm;
pub mod convlstm_backward;
pub mod gemm;
pub mod im2col;
pub mod optim;
pub mod simd;
pub mod spatial;

/// Helpers the kernels' tests share.
#[cfg(test)]
pub(crate) mod testing {
    /// A direct 2-D convolution of one `[c, H, W]` image, for checking im2col + GEMM.
    pub fn conv_direct(img: &[f32], w: &[f32], c: usize, out_c: usize, hgt: usize, wid: usize, k: usize) -> Vec<f32> {
        let p = (k / 2) as isize;
        let mut out = vec![0.0f32; out_c * hgt * wid];
        for oc in 0..out_c {
            for y in 0..hgt {
                for x in 0..wid {
                    let mut s = 0.0;
                    for ic in 0..c {
                        for ky in 0..k {
                            for kx in 0..k {
                                let (yy, xx) = (y as isize + ky as isize - p, x as isize + kx as isize - p);
                                if yy >= 0 && yy < hgt as isize && xx >= 0 && xx < wid as isize {
                                    s += w[((oc * c + ic) * k + ky) * k + kx]
                                        * img[(ic * hgt + yy as usize) * wid + xx as usize];
                                }
                            }
                        }
                    }
                    out[(oc * hgt + y) * wid + x] = s;
                }
            }
        }
        out
    }

    /// `n` values in [-1, 1) from a small deterministic generator seeded by `seed`.
    pub fn values(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s as f32 / u32::MAX as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// `a` and `b` agree to `tol` relative (plus `tol` absolute), value by value.
    pub fn assert_close(a: &[f32], b: &[f32], tol: f32, what: &str) {
        assert_eq!(a.len(), b.len(), "{what}: length");
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= tol * (1.0 + y.abs()), "{what}[{i}]: {x} vs {y}");
        }
    }
}
