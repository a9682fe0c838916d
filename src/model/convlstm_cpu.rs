//! The ConvLSTM recurrence (SPEC §3.1 step 1) as plain Rust on `f32` slices: forward with
//! the activations a backward needs, and the backward itself.
//!
//! Why by hand: the recurrence is T sequential steps of a small 3×3 convolution plus gate
//! arithmetic. As tensor ops each step is ~20 small kernels, each allocating and recorded
//! for autodiff, and the framework's per-op overhead dominates the arithmetic (measured in
//! issue #6). Here each step is one im2col + one GEMM (the `gemm` crate, which picks AVX2/
//! AVX-512/NEON at run time) and one fused pass over the gates, done band by band so each
//! band's operands stay in cache (see [`BAND_PIXELS`]); videos of a batch run on separate
//! threads, as their recurrences are independent, and a lone video shares out its bands.
//!
//! A layer's conv over `concat(x_t, h_{t-1})` is split by linearity: the input half
//! `conv_x(x_t)` (with the bias) does not depend on the state, so [`input_forward`] runs it
//! for all frames in parallel; only the hidden half is inside the sequential [`forward`].
//!
//! Layout: batch-major. `gx` is the input half of the gates `[B, T, 4h, H, W]`; the hidden
//! half's weight is `[4h, h, k, k]`. Gate order i, f, o, g (ConvLSTM_pytorch). The state
//! starts at zero.

use rayon::prelude::*;

/// Sizes of one recurrence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dims {
    /// Videos.
    pub b: usize,
    /// Steps.
    pub t: usize,
    /// Hidden channels h (the gates have 4h).
    pub h: usize,
    /// Image height.
    pub height: usize,
    /// Image width.
    pub width: usize,
    /// Odd kernel side k (padding k / 2).
    pub k: usize,
}

impl Dims {
    fn hw(&self) -> usize {
        self.height * self.width
    }
    /// Values of one step's gates for one video.
    fn gates(&self) -> usize {
        4 * self.h * self.hw()
    }
    /// Values of one step's hidden (or cell) state for one video.
    fn state(&self) -> usize {
        self.h * self.hw()
    }
    /// Rows of the im2col matrix (`h·k·k`).
    fn col_rows(&self) -> usize {
        self.h * self.k * self.k
    }
    /// Values per band of a step: whole rows, about [`BAND_PIXELS`].
    fn band_len(&self) -> usize {
        band_len(self.height, self.width)
    }
    /// Values of the weight `[4h, h, k, k]`.
    pub fn weight_len(&self) -> usize {
        4 * self.h * self.col_rows()
    }
    /// Values of `gx` (and of its gradient).
    pub fn gx_len(&self) -> usize {
        self.b * self.t * self.gates()
    }
    /// Values of the output (and of its gradient).
    pub fn out_len(&self) -> usize {
        self.b * self.t * self.state()
    }
}

/// What the backward needs from the forward.
#[derive(Debug, Clone)]
pub struct Saved {
    pub dims: Dims,
    /// Activated gates i, f, o, g per step: `[B, T, 4h, H, W]`.
    pub gates: Vec<f32>,
    /// Cell state per step: `[B, T, h, H, W]`.
    pub cell: Vec<f32>,
    /// The hidden-half weight `[4h, h, k, k]`.
    pub weight: Vec<f32>,
}

/// `exp` to ~2 ulp that vectorises (the standard library's calls libm per element).
#[inline(always)]
fn exp_fast(x: f32) -> f32 {
    // Cephes' expf: x = n·ln2 + r with |r| ≤ ln2/2, then a degree-5 polynomial of r.
    let x = x.clamp(-87.0, 88.0);
    // Round to nearest by adding 1.5·2^23: n then sits in the low mantissa bits of `t`,
    // so both the float and the integer n come without a rounding or conversion instruction.
    const MAGIC: f32 = 12_582_912.0;
    let t = x * std::f32::consts::LOG2_E + MAGIC;
    let n = t - MAGIC;
    let ni = t.to_bits() as i32 - MAGIC.to_bits() as i32;
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let r2 = r * r;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 1.666_666_5e-1)
        * r
        + 0.5;
    let y = p * r2 + r + 1.0;
    // 2^n from its exponent bits; n ∈ [-126, 127] after the clamp.
    y * f32::from_bits(((ni + 127) << 23) as u32)
}

#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp_fast(-x))
}

#[inline(always)]
fn tanh(x: f32) -> f32 {
    // tanh(x) = sign(x)·(1 − e)/(1 + e), e = exp(−2|x|): no overflow, absolute error ~1e-7.
    let e = exp_fast(-2.0 * x.abs());
    ((1.0 - e) / (1.0 + e)).copysign(x)
}

/// `dst (m×n) = [dst +] a·b` for row-major matrices; `a` is `m×k` (or its transpose stored
/// `k×m` when `a_t`), `b` is `k×n` (or `n×k` when `b_t`).
fn matmul(dst: &mut [f32], a: &[f32], b: &[f32], (m, k, n): (usize, usize, usize), a_t: bool, b_t: bool, acc: bool) {
    let a = if a_t {
        View::row_major(a, k, m).t()
    } else {
        View::row_major(a, m, k)
    };
    let b = if b_t {
        View::row_major(b, n, k).t()
    } else {
        View::row_major(b, k, n)
    };
    matmul_view(dst, n, a, b, acc);
}

/// A read-only strided matrix: element (r, c) is `data[r·rs + c·cs]`.
#[derive(Debug, Clone, Copy)]
struct View<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl<'a> View<'a> {
    fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        View {
            data,
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }
    /// The transpose (no copy).
    fn t(self) -> Self {
        View {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }
    /// Whether every element lies inside `data`.
    fn in_bounds(&self) -> bool {
        self.rows == 0 || self.cols == 0 || (self.rows - 1) * self.rs + (self.cols - 1) * self.cs < self.data.len()
    }
}

/// `dst = [dst +] a·b`, `dst` row-major `a.rows × b.cols` with row stride `dst_rs`.
fn matmul_view(dst: &mut [f32], dst_rs: usize, a: View, b: View, acc: bool) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    let out = View {
        data: dst,
        rows: m,
        cols: n,
        rs: dst_rs,
        cs: 1,
    };
    assert!(
        b.rows == k && a.in_bounds() && b.in_bounds() && out.in_bounds(),
        "matmul operand sizes"
    );
    let s = |v: usize| v as isize;
    // SAFETY: the assert above keeps every index of the three strided views in bounds,
    // and `dst` does not alias `a` or `b` (a `&mut` and two `&`).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            s(dst_rs),
            acc,
            a.data.as_ptr(),
            s(a.cs),
            s(a.rs),
            b.data.as_ptr(),
            s(b.cs),
            s(b.rs),
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// im2col of a `[c, H, W]` image for a k×k kernel with padding k / 2: `col[(c·k + ky)·k + kx][y·W + x]`
/// (the whole-image form, for the tests).
#[cfg(test)]
fn im2col(img: &[f32], col: &mut [f32], c: usize, height: usize, width: usize, k: usize) {
    im2col_rows(img, col, c, (height, width), k, 0..height);
}

/// [`im2col`] of the output rows `rows` only: `col[(c·k + ky)·k + kx][(y − rows.start)·W + x]`
/// (the kernel still reads the image rows next to the band).
fn im2col_rows(
    img: &[f32],
    col: &mut [f32],
    c: usize,
    (height, width): (usize, usize),
    k: usize,
    rows: std::ops::Range<usize>,
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
fn col2im_add(col: &[f32], img: &mut [f32], c: usize, height: usize, width: usize, k: usize) {
    col2im_add_rows(col, img, c, (height, width), k, 0..height);
}

/// The adjoint of [`im2col_rows`]: the band's columns land on its rows and the rows next
/// to them.
fn col2im_add_rows(
    col: &[f32],
    img: &mut [f32],
    c: usize,
    (height, width): (usize, usize),
    k: usize,
    rows: std::ops::Range<usize>,
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

/// Call `$f` compiled for AVX2 + FMA when the CPU has them (8 lanes instead of SSE2's 4 for
/// the gate arithmetic, which is most of the recurrence's non-GEMM time), else the portable
/// build of the same body.
macro_rules! simd_dispatch {
    ($f:ident($($arg:expr),*)) => {{
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                // SAFETY: the CPU has the features the `avx2` build was compiled for.
                unsafe { avx2::$f($($arg),*) }
            } else {
                portable::$f($($arg),*)
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            portable::$f($($arg),*)
        }
    }};
}

/// The forward gate arithmetic of one step, the portable build (the AVX2 one is
/// [`avx2_forward::gates_forward`]).
macro_rules! gate_forward_kernel {
    ($($attr:meta)?; $($unsafety:ident)?) => {
        /// Forward: `pre` holds the input half of the pre-activations i, f, o, g and is
        /// overwritten by the activations, `hh` holds their hidden half; writes the cell and
        /// hidden state.
        $(#[$attr])?
        pub $($unsafety)? fn gates_forward(
            pre: [&mut [f32]; 4],
            hh: [&[f32]; 4],
            c_prev: &[f32],
            c_now: &mut [f32],
            h_now: &mut [f32],
        ) {
            let n = c_now.len();
            let [pi, pf, po, pg] = pre;
            let (pi, pf, po, pg) = (&mut pi[..n], &mut pf[..n], &mut po[..n], &mut pg[..n]);
            let [hi, hf, ho, hg] = hh;
            let (hi, hf, ho, hg, c_prev, h_now) = (&hi[..n], &hf[..n], &ho[..n], &hg[..n], &c_prev[..n], &mut h_now[..n]);
            for j in 0..n {
                let i = sigmoid(pi[j] + hi[j]);
                let f = sigmoid(pf[j] + hf[j]);
                let o = sigmoid(po[j] + ho[j]);
                let g = tanh(pg[j] + hg[j]);
                let c = f * c_prev[j] + i * g;
                c_now[j] = c;
                h_now[j] = o * tanh(c);
                pi[j] = i;
                pf[j] = f;
                po[j] = o;
                pg[j] = g;
            }
        }

    };
}

/// The backward gate arithmetic of one step, written once and compiled twice (see
/// `simd_dispatch`).
macro_rules! gate_kernels {
    ($($attr:meta)?; $($unsafety:ident)?) => {
        /// Backward: from the activations `g` (i, f, o, g), the cell states and the
        /// output gradient, write the pre-activation gradients into `dpre` and carry
        /// `dc_next` (in and out); `dh_next` is the gradient into this step's hidden state
        /// from the next step's hidden half.
        $(#[$attr])?
        pub $($unsafety)? fn gates_backward(
            g: [&[f32]; 4],
            c: &[f32],
            c_prev: &[f32],
            dout: &[f32],
            dh_next: &[f32],
            dc_next: &mut [f32],
            dpre: [&mut [f32]; 4],
        ) {
            let n = c.len();
            let [gi, gf, go, gg] = g;
            let [di_, df_, do_, dg_] = dpre;
            let (gi, gf, go, gg, c_prev, dout, dh_next, dc_next) =
                (&gi[..n], &gf[..n], &go[..n], &gg[..n], &c_prev[..n], &dout[..n], &dh_next[..n], &mut dc_next[..n]);
            let (di_, df_, do_, dg_) = (&mut di_[..n], &mut df_[..n], &mut do_[..n], &mut dg_[..n]);
            for j in 0..n {
                let (i, f, o, gv) = (gi[j], gf[j], go[j], gg[j]);
                let dh = dout[j] + dh_next[j];
                let tc = tanh(c[j]);
                let dc = dh * o * (1.0 - tc * tc) + dc_next[j];
                di_[j] = dc * gv * i * (1.0 - i);
                df_[j] = dc * c_prev[j] * f * (1.0 - f);
                do_[j] = dh * tc * o * (1.0 - o);
                dg_[j] = dc * i * (1.0 - gv * gv);
                dc_next[j] = dc * f;
            }
        }
    };
}

mod portable {
    use super::{sigmoid, tanh};
    gate_forward_kernel!(;);
    gate_kernels!(;);
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::tanh;
    gate_kernels!(target_feature(enable = "avx2,fma"); unsafe);
    pub use super::avx2_forward::gates_forward;
}

/// The forward gates with AVX2 intrinsics: [`exp_fast`] on 8 lanes, and every division
/// (5 per value: three sigmoids and two tanh) as a reciprocal estimate refined by one
/// Newton step. Auto-vectorised, the divisions made the gate arithmetic as costly as the
/// step's GEMM (perf, one video: 27 % vs 30 % of the recurrence); `vdivps` is several
/// times slower than `vrcpps` + 2 FMAs. Accuracy: ~1e-7 relative, like the division.
#[cfg(target_arch = "x86_64")]
mod avx2_forward {
    use std::arch::x86_64::*;

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn splat(v: f32) -> __m256 {
        _mm256_set1_ps(v)
    }

    /// [`super::exp_fast`], 8 lanes (its constants; FMAs where it rounds twice).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn exp8(x: __m256) -> __m256 {
        const MAGIC: f32 = 12_582_912.0;
        let x = _mm256_min_ps(_mm256_max_ps(x, splat(-87.0)), splat(88.0));
        let t = _mm256_fmadd_ps(x, splat(std::f32::consts::LOG2_E), splat(MAGIC));
        let n = _mm256_sub_ps(t, splat(MAGIC));
        let ni = _mm256_sub_epi32(_mm256_castps_si256(t), _mm256_set1_epi32(MAGIC.to_bits() as i32));
        let r = _mm256_fmadd_ps(n, splat(2.121_944_4e-4), _mm256_fnmadd_ps(n, splat(0.693_359_4), x));
        let r2 = _mm256_mul_ps(r, r);
        let mut p = _mm256_fmadd_ps(splat(1.987_569_1e-4), r, splat(1.398_199_9e-3));
        p = _mm256_fmadd_ps(p, r, splat(8.333_452e-3));
        p = _mm256_fmadd_ps(p, r, splat(4.166_579_6e-2));
        p = _mm256_fmadd_ps(p, r, splat(1.666_666_5e-1));
        p = _mm256_fmadd_ps(p, r, splat(0.5));
        let y = _mm256_add_ps(_mm256_fmadd_ps(p, r2, r), splat(1.0));
        let scale = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(ni, _mm256_set1_epi32(127))));
        _mm256_mul_ps(y, scale)
    }

    /// `1 / x` to ~1 ulp: the 12-bit estimate and one Newton step.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn recip8(x: __m256) -> __m256 {
        let r = _mm256_rcp_ps(x);
        _mm256_mul_ps(r, _mm256_fnmadd_ps(x, r, splat(2.0)))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn sigmoid8(x: __m256) -> __m256 {
        recip8(_mm256_add_ps(splat(1.0), exp8(_mm256_sub_ps(_mm256_setzero_ps(), x))))
    }

    /// [`super::tanh`]: sign(x)·(1 − e)/(1 + e) with e = exp(−2|x|).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn tanh8(x: __m256) -> __m256 {
        let sign = _mm256_and_ps(x, splat(-0.0));
        let a = _mm256_andnot_ps(splat(-0.0), x);
        let e = exp8(_mm256_mul_ps(splat(-2.0), a));
        let t = _mm256_mul_ps(_mm256_sub_ps(splat(1.0), e), recip8(_mm256_add_ps(splat(1.0), e)));
        _mm256_or_ps(t, sign)
    }

    /// As the portable `gates_forward`, 8 values at a time (the rest portably).
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn gates_forward(
        pre: [&mut [f32]; 4],
        hh: [&[f32]; 4],
        c_prev: &[f32],
        c_now: &mut [f32],
        h_now: &mut [f32],
    ) {
        let n = c_now.len();
        let [pi, pf, po, pg] = pre;
        let (pi, pf, po, pg) = (&mut pi[..n], &mut pf[..n], &mut po[..n], &mut pg[..n]);
        let [hi, hf, ho, hg] = hh;
        let (hi, hf, ho, hg, c_prev, h_now) = (&hi[..n], &hf[..n], &ho[..n], &hg[..n], &c_prev[..n], &mut h_now[..n]);
        let n8 = n - n % 8;
        for j in (0..n8).step_by(8) {
            // SAFETY: j + 8 ≤ n8 ≤ n, and every slice above has exactly n values.
            unsafe {
                let pre = |s: &[f32], h: &[f32]| {
                    _mm256_add_ps(_mm256_loadu_ps(s.as_ptr().add(j)), _mm256_loadu_ps(h.as_ptr().add(j)))
                };
                let i = sigmoid8(pre(pi, hi));
                let f = sigmoid8(pre(pf, hf));
                let o = sigmoid8(pre(po, ho));
                let g = tanh8(pre(pg, hg));
                let c = _mm256_fmadd_ps(f, _mm256_loadu_ps(c_prev.as_ptr().add(j)), _mm256_mul_ps(i, g));
                _mm256_storeu_ps(c_now.as_mut_ptr().add(j), c);
                _mm256_storeu_ps(h_now.as_mut_ptr().add(j), _mm256_mul_ps(o, tanh8(c)));
                _mm256_storeu_ps(pi.as_mut_ptr().add(j), i);
                _mm256_storeu_ps(pf.as_mut_ptr().add(j), f);
                _mm256_storeu_ps(po.as_mut_ptr().add(j), o);
                _mm256_storeu_ps(pg.as_mut_ptr().add(j), g);
            }
        }
        if n8 < n {
            super::portable::gates_forward(
                [&mut pi[n8..], &mut pf[n8..], &mut po[n8..], &mut pg[n8..]],
                [&hi[n8..], &hf[n8..], &ho[n8..], &hg[n8..]],
                &c_prev[n8..],
                &mut c_now[n8..],
                &mut h_now[n8..],
            );
        }
    }
}

/// Run the recurrence over the input half `gx` `[B, T, 4h, H, W]`, which it consumes: each
/// step adds the hidden half into its slice of `gx` and activates it there, so the saved
/// gates are that same buffer (no second 4h·H·W·T buffer per video, no copy). Returns the
/// hidden state of every step `[B, T, h, H, W]` and, when `save`, what [`backward`] needs
/// besides the hidden state itself.
///
/// # Panics
/// If `gx` or `weight` do not have the sizes `dims` implies (callers check shapes).
pub fn forward(gx: Vec<f32>, weight: &[f32], dims: Dims, save: bool) -> (Vec<f32>, Option<Saved>) {
    let (hidden, saved, _) = forward_in_bands(gx, weight, dims, save, None, dims.band_len());
    (hidden, saved)
}

/// [`forward`] for inference (nothing saved) from the state `(h0, c0)`, each `[B, h, H, W]`,
/// that a previous call over the frames before these ended in: returns the hidden state of
/// every step `[B, T, h, H, W]` and the last step's cell state `[B, h, H, W]`. Running a
/// sequence in pieces this way gives the same numbers as running it whole.
///
/// # Panics
/// If `gx`, `weight`, `h0` or `c0` do not have the sizes `dims` implies.
pub fn forward_from(gx: Vec<f32>, weight: &[f32], dims: Dims, h0: &[f32], c0: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let (hidden, _, c_last) = forward_in_bands(gx, weight, dims, false, Some((h0, c0)), dims.band_len());
    (hidden, c_last)
}

/// [`forward`] with bands of `band_len` values (whole rows), from the state `init` (zero
/// when `None`); also returns the last step's cell state `[B, h, H, W]` when started from
/// `init` (empty otherwise: training does not need it).
fn forward_in_bands(
    mut gx: Vec<f32>,
    weight: &[f32],
    dims: Dims,
    save: bool,
    init: Option<(&[f32], &[f32])>,
    band_len: usize,
) -> (Vec<f32>, Option<Saved>, Vec<f32>) {
    assert_eq!(gx.len(), dims.gx_len(), "ConvLSTM gates size");
    assert_eq!(weight.len(), dims.weight_len(), "ConvLSTM weight size");
    let (g_len, s_len, t) = (dims.gates(), dims.state(), dims.t);
    let state_len = dims.b * s_len;
    if let Some((h0, c0)) = init {
        assert!(
            h0.len() == state_len && c0.len() == state_len,
            "ConvLSTM initial state size"
        );
    }
    let mut hidden = vec![0.0f32; dims.out_len()];
    // The backward needs every step's cell state; inference only the previous one, so it
    // alternates between two planes that stay in cache instead of filling T of them.
    let cell_slots = if save { t } else { t.min(2) };
    let mut cell = vec![0.0f32; dims.b * cell_slots * s_len];
    // Each video's slice of the initial state.
    let init_of = |v: usize| init.map(|(h0, c0)| (&h0[v * s_len..][..s_len], &c0[v * s_len..][..s_len]));
    let jobs: Vec<_> = gx
        .chunks_mut(t * g_len)
        .zip(hidden.chunks_mut(t * s_len))
        .zip(cell.chunks_mut((cell_slots * s_len).max(1)))
        .enumerate()
        .map(|(v, ((gx_b, h_b), c_b))| (gx_b, h_b, c_b, init_of(v)))
        .collect();
    // Videos run on separate threads; with fewer videos than threads (inference), the
    // bands of each step are shared out instead.
    let parallel_bands = dims.b < rayon::current_num_threads();
    jobs.into_par_iter().for_each(|(gx_b, h_b, c_b, init_b)| {
        forward_video(gx_b, weight, dims, h_b, c_b, init_b, (band_len, parallel_bands))
    });
    // The last step wrote plane (T − 1) mod slots of each video's cell buffer.
    let c_last = match init {
        None => Vec::new(),
        Some((_, c0)) if t == 0 => c0.to_vec(),
        Some(_) => {
            let last = (t - 1) % cell_slots;
            cell.chunks(cell_slots * s_len)
                .flat_map(|c_b| &c_b[last * s_len..][..s_len])
                .copied()
                .collect()
        }
    };
    let saved = save.then(|| Saved {
        dims,
        gates: gx,
        cell,
        weight: weight.to_vec(),
    });
    (hidden, saved, c_last)
}

/// Pixels per band of a recurrence step (whole image rows, at least one). Each step runs
/// band by band (im2col, GEMM, gates) so that a band's column matrix (h·k·k × 256) and
/// hidden-half gates (4h × 256) stay in L1/L2 between the three (bands of 128, 256, 512,
/// 1024 and 2048 pixels measured on 64 × 64 images, h = 8: 256 was fastest); with one video the bands of a step are the unit of
/// threading (measured in issue #6: splitting each step's whole GEMM across threads left
/// im2col and the gates on one thread and cost a rayon round trip inside the GEMM).
const BAND_PIXELS: usize = 256;

/// Whole image rows of about [`BAND_PIXELS`] values (at least one row).
fn band_len(height: usize, width: usize) -> usize {
    (BAND_PIXELS / width).clamp(1, height) * width
}

/// One band's share of a step: its segment of each of the 4h gate planes (gate-major,
/// as in `gx`) and of the h cell and hidden planes.
struct Band<'a> {
    /// First image row.
    y0: usize,
    gates: Vec<&'a mut [f32]>,
    cell: Vec<&'a mut [f32]>,
    hidden: Vec<&'a mut [f32]>,
}

/// Scratch of [`band_forward`]; every value it reads was written in the same call.
#[derive(Default)]
struct BandScratch {
    col: Vec<f32>,
    hh: Vec<f32>,
}

impl BandScratch {
    /// At least the sizes one band of `dims` needs (grown once, then reused).
    fn fit(&mut self, dims: Dims, band_len: usize) -> &mut Self {
        let (col, hh) = (dims.col_rows() * band_len, 4 * dims.h * band_len);
        if self.col.len() < col {
            self.col.resize(col, 0.0);
        }
        if self.hh.len() < hh {
            self.hh.resize(hh, 0.0);
        }
        self
    }
}

thread_local! {
    /// Each thread's band scratch: a step hands its bands to whichever threads are free, so
    /// the buffers live with the thread rather than with one video's loop (allocating them
    /// per task cost an allocation and a zero-fill per band task per step). `band_forward`
    /// starts no parallel work, so a thread never re-enters its own borrow.
    static BAND_SCRATCH: std::cell::RefCell<BandScratch> = std::cell::RefCell::default();
}

/// The cell state `[h, H, W]` of the previous step (`c0`, the initial state, at the first)
/// and the plane this step writes, from a video's cell buffer of `slots` planes: step t uses
/// plane `t % slots` (every step its own plane when the buffer holds all T, two alternating
/// ones otherwise).
fn cell_planes<'a>(cell: &'a mut [f32], c0: &'a [f32], step: usize, slots: usize) -> (&'a [f32], &'a mut [f32]) {
    let len = c0.len();
    let now = step % slots;
    if step == 0 {
        return (c0, &mut cell[now * len..(now + 1) * len]);
    }
    let prev = (step - 1) % slots;
    if prev < now {
        let (a, b) = cell.split_at_mut(now * len);
        (&a[prev * len..(prev + 1) * len], &mut b[..len])
    } else {
        let (a, b) = cell.split_at_mut(prev * len);
        (&b[..len], &mut a[now * len..(now + 1) * len])
    }
}

/// One video's recurrence from the state `init` (`(h0, c0)`, zero when `None`); `gates`
/// holds the input half on entry and the activated gates on return; `cell` holds T planes
/// (all kept) or two (alternating).
fn forward_video(
    gates: &mut [f32],
    weight: &[f32],
    dims: Dims,
    hidden: &mut [f32],
    cell: &mut [f32],
    init: Option<(&[f32], &[f32])>,
    (band_len, parallel): (usize, bool),
) {
    let (g_len, s_len, hw) = (dims.gates(), dims.state(), dims.hw());
    let zeros;
    let (h0, c0) = match init {
        Some((h0, c0)) => (Some(h0), c0),
        None => {
            zeros = vec![0.0f32; s_len];
            (None, &zeros[..])
        }
    };
    let slots = cell.len() / s_len;
    for step in 0..dims.t {
        let (h_done, h_rest) = hidden.split_at_mut(step * s_len);
        // A zero initial state skips the hidden half of the first step (it is exactly zero).
        let h_prev = if step > 0 {
            Some(&h_done[(step - 1) * s_len..])
        } else {
            h0
        };
        let (c_prev, c_now) = cell_planes(cell, c0, step, slots);
        let mut bands: Vec<Band> = (0..hw.div_ceil(band_len))
            .map(|i| Band {
                y0: i * band_len / dims.width,
                gates: Vec::with_capacity(4 * dims.h),
                cell: Vec::with_capacity(dims.h),
                hidden: Vec::with_capacity(dims.h),
            })
            .collect();
        let planes = |buf| band_segments(buf, hw, band_len);
        for plane in planes(&mut gates[step * g_len..(step + 1) * g_len]) {
            bands.iter_mut().zip(plane).for_each(|(b, seg)| b.gates.push(seg));
        }
        for plane in planes(c_now) {
            bands.iter_mut().zip(plane).for_each(|(b, seg)| b.cell.push(seg));
        }
        for plane in planes(&mut h_rest[..s_len]) {
            bands.iter_mut().zip(plane).for_each(|(b, seg)| b.hidden.push(seg));
        }
        let run = |band: Band| {
            BAND_SCRATCH.with_borrow_mut(|s| band_forward(band, h_prev, c_prev, weight, dims, s.fit(dims, band_len)))
        };
        if parallel {
            bands.into_par_iter().for_each(run);
        } else {
            bands.into_iter().for_each(run);
        }
    }
}

/// `buf`'s planes of `hw` values, each cut into segments of `band_len`.
fn band_segments(buf: &mut [f32], hw: usize, band_len: usize) -> Vec<Vec<&mut [f32]>> {
    buf.chunks_mut(hw)
        .map(|plane| plane.chunks_mut(band_len).collect())
        .collect()
}

/// One band of one step: the hidden half of its gates from `h_prev` (none at the first
/// step, whose state is zero), then the gate arithmetic.
fn band_forward(
    band: Band,
    h_prev: Option<&[f32]>,
    c_prev: &[f32],
    weight: &[f32],
    dims: Dims,
    scratch: &mut BandScratch,
) {
    let Band {
        y0,
        mut gates,
        cell,
        hidden,
    } = band;
    let (h, hw) = (dims.h, dims.hw());
    let len = cell[0].len();
    let hh = &mut scratch.hh[..4 * h * len];
    match h_prev {
        Some(h_prev) => {
            let col = &mut scratch.col[..dims.col_rows() * len];
            let rows = y0..y0 + len / dims.width;
            im2col_rows(h_prev, col, h, (dims.height, dims.width), dims.k, rows);
            matmul(hh, weight, col, (4 * h, dims.col_rows(), len), false, false, false);
        }
        None => hh.fill(0.0),
    }
    let (gi, rest) = gates.split_at_mut(h);
    let (gf, rest) = rest.split_at_mut(h);
    let (go, gg) = rest.split_at_mut(h);
    for (c, (c_now, h_now)) in cell.into_iter().zip(hidden).enumerate() {
        let pre = [&mut *gi[c], &mut *gf[c], &mut *go[c], &mut *gg[c]];
        let hh = [0, 1, 2, 3].map(|q| &hh[(q * h + c) * len..][..len]);
        let c_prev = &c_prev[c * hw + y0 * dims.width..][..len];
        simd_dispatch!(gates_forward(pre, hh, c_prev, c_now, h_now));
    }
}

/// Gradients of a loss through the recurrence whose output was `hidden`, given its gradient
/// with respect to that output `[B, T, h, H, W]`: returns (d gx `[B, T, 4h, H, W]`, d weight `[4h, h, k, k]`).
///
/// # Panics
/// If `hidden` or `grad_out` does not have the output's size.
pub fn backward(saved: &Saved, hidden: &[f32], grad_out: &[f32]) -> (Vec<f32>, Vec<f32>) {
    backward_in_bands(saved, hidden, grad_out, saved.dims.band_len())
}

/// [`backward`] with bands of `band_len` values (whole rows).
fn backward_in_bands(saved: &Saved, hidden: &[f32], grad_out: &[f32], band_len: usize) -> (Vec<f32>, Vec<f32>) {
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
/// band like the forward (see [`BAND_PIXELS`]); the gradient into h_{t-1} goes to a second
/// buffer, as a band's col2im reaches into its neighbours' rows.
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
                    simd_dispatch!(gates_backward(
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
                            &mut dg[ch][seg]
                        ]
                    ));
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

/// Sizes of the input half of a layer: a k×k conv (padding k / 2) of every frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputDims {
    /// Frames (B·T).
    pub frames: usize,
    /// Input channels.
    pub c: usize,
    /// Output channels (4h).
    pub out: usize,
    pub height: usize,
    pub width: usize,
    /// Odd kernel side.
    pub k: usize,
}

impl InputDims {
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
fn sum(v: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let mut chunks = v.chunks_exact(16);
    for ch in &mut chunks {
        for (a, x) in acc.iter_mut().zip(ch) {
            *a += x;
        }
    }
    acc.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>()
}

/// Frames per task of the input half's backward: the weight gradient is summed per chunk,
/// then over chunks in order, so the result does not depend on thread scheduling.
const FRAME_CHUNK: usize = 8;

/// The input half of the gates of every frame: `conv(x, w) + bias`, `[frames, out, H, W]`.
///
/// # Panics
/// If the operands do not have the sizes `d` implies.
pub fn input_forward(x: &[f32], w: &[f32], bias: &[f32], d: InputDims) -> Vec<f32> {
    assert!(
        x.len() == d.x_len() && w.len() == d.weight_len() && bias.len() == d.out,
        "ConvLSTM input-half sizes"
    );
    let (hw, rows) = (d.hw(), d.col_rows());
    let band = band_len(d.height, d.width);
    let mut gx = vec![0.0f32; d.frames * d.out * hw];
    // A 1×1 conv's im2col is the frame itself.
    let col_len = if d.k == 1 { 0 } else { rows * band };
    gx.par_chunks_mut(d.out * hw).zip(x.par_chunks(d.c * hw)).for_each_init(
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
    gx
}

/// Gradients of the input half given d gx `[frames, out, H, W]`: (d x when `need_dx`,
/// d w, d bias).
///
/// # Panics
/// If the operands do not have the sizes `d` implies.
pub fn input_backward(
    x: &[f32],
    w: &[f32],
    dgx: &[f32],
    d: InputDims,
    need_dx: bool,
) -> (Option<Vec<f32>>, Vec<f32>, Vec<f32>) {
    let (hw, rows) = (d.hw(), d.col_rows());
    assert!(
        x.len() == d.x_len() && w.len() == d.weight_len() && dgx.len() == d.frames * d.out * hw,
        "ConvLSTM input-half gradient sizes"
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
                let g = &dgx[f * d.out * hw..(f + 1) * d.out * hw];
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

    #[test]
    fn fast_exp_sigmoid_and_tanh_are_accurate() {
        let mut worst = 0.0f64;
        for i in -2000..=2000 {
            let x = i as f32 * 0.04;
            let want = (x as f64).exp();
            worst = worst.max(((exp_fast(x) as f64 - want) / want).abs());
            assert!(
                (sigmoid(x) as f64 - 1.0 / (1.0 + (-(x as f64)).exp())).abs() < 3e-7,
                "sigmoid {x}"
            );
            assert!((tanh(x) as f64 - (x as f64).tanh()).abs() < 3e-7, "tanh {x}");
        }
        assert!(worst < 3e-7, "exp relative error {worst}");
        assert!(sigmoid(-200.0) < 1e-37);
        assert_eq!(sigmoid(200.0), 1.0);
        assert_eq!(tanh(-50.0), -1.0);
    }

    /// A direct 2-D convolution of one `[c, H, W]` image, for checking im2col + GEMM.
    fn conv_direct(img: &[f32], w: &[f32], c: usize, out_c: usize, hgt: usize, wid: usize, k: usize) -> Vec<f32> {
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

    fn values(n: usize, seed: u32) -> Vec<f32> {
        // A small deterministic generator: values in [-1, 1).
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
            let (h, _) = forward(gx.to_vec(), w, dims, false);
            h.iter().zip(&r).map(|(a, b)| (*a as f64) * (*b as f64)).sum()
        };
        let (hidden, saved) = forward(gx.clone(), &w, dims, true);
        let (dgx, dw) = backward(&saved.unwrap(), &hidden, &r);
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
    #[cfg(target_arch = "x86_64")]
    fn avx2_forward_gates_match_the_portable_ones() {
        if !(std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")) {
            return; // the AVX2 kernel never runs on this CPU
        }
        // 37 values: four 8-lane blocks and a portable tail; saturating and zero inputs.
        let n = 37;
        let mut pre: Vec<Vec<f32>> = (0..4)
            .map(|q| values(n, 40 + q).iter().map(|v| v * 12.0).collect())
            .collect();
        pre[0][3] = 95.0;
        pre[1][9] = -95.0;
        pre[3][17] = 0.0;
        pre[3][18] = -40.0;
        let hh: Vec<Vec<f32>> = (0..4).map(|q| values(n, 50 + q)).collect();
        let c_prev: Vec<f32> = values(n, 60).iter().map(|v| v * 3.0).collect();
        let run = |fast: bool| {
            let mut p = pre.clone();
            let (mut c, mut h) = (vec![0f32; n], vec![0f32; n]);
            let [a, b, cc, d] = &mut p[..] else { unreachable!() };
            let hh = [&hh[0][..], &hh[1][..], &hh[2][..], &hh[3][..]];
            let pre = [&mut a[..], &mut b[..], &mut cc[..], &mut d[..]];
            if fast {
                // SAFETY: checked above that the CPU has AVX2 and FMA.
                unsafe { avx2_forward::gates_forward(pre, hh, &c_prev, &mut c, &mut h) };
            } else {
                portable::gates_forward(pre, hh, &c_prev, &mut c, &mut h);
            }
            (p, c, h)
        };
        let (fast, slow) = (run(true), run(false));
        let close = |a: &[f32], b: &[f32], what: &str| {
            for (j, (x, y)) in a.iter().zip(b).enumerate() {
                assert!((x - y).abs() <= 1e-6 * (1.0 + y.abs()), "{what}[{j}]: {x} vs {y}");
            }
        };
        for q in 0..4 {
            close(&fast.0[q], &slow.0[q], &format!("gate {q}"));
        }
        close(&fast.1, &slow.1, "cell");
        close(&fast.2, &slow.2, "hidden");
        // Saturated: σ(95 + h) within an ulp of 1, σ(−95 + h) (clamped to e^−88) about 0.
        assert!(fast.0[0][3] >= 1.0 - 1.2e-7 && fast.0[0][3] <= 1.0, "{}", fast.0[0][3]);
        assert!((0.0..1e-30).contains(&fast.0[1][9]), "{}", fast.0[1][9]);
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
            let (h_ref, saved_ref, _) = forward_in_bands(gx.clone(), &w, dims, true, None, whole);
            let saved_ref = saved_ref.unwrap();
            let (dgx_ref, dw_ref) = backward_in_bands(&saved_ref, &h_ref, &r, whole);
            for band_len in [5, 15] {
                let (h, saved, _) = forward_in_bands(gx.clone(), &w, dims, true, None, band_len);
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

    #[test]
    fn inference_with_two_cell_planes_gives_the_same_hidden_states() {
        // Without `save` the cell state alternates between two planes; the hidden states
        // must equal those of the run that keeps all T planes, bit for bit, for T = 1
        // (one plane), 2 and an odd T.
        for (b, t) in [(1, 1), (2, 2), (1, 5), (2, 6)] {
            let dims = Dims {
                b,
                t,
                h: 3,
                height: 7,
                width: 5,
                k: 3,
            };
            let gx: Vec<f32> = values(dims.gx_len(), 21).iter().map(|v| v * 1.5).collect();
            let w: Vec<f32> = values(dims.weight_len(), 22).iter().map(|v| v * 0.6).collect();
            let (h_all, saved, _) = forward_in_bands(gx.clone(), &w, dims, true, None, 5);
            let (h_two, none, _) = forward_in_bands(gx, &w, dims, false, None, 5);
            assert!(saved.is_some() && none.is_none());
            assert_eq!(h_two, h_all, "b {b}, t {t}");
        }
    }

    #[test]
    fn a_sequence_run_in_pieces_from_the_carried_state_equals_it_run_whole() {
        // T = 7 as 3 + 1 + 3 steps, each piece from the state the previous one ended in
        // (the first from zeros): the same hidden states bit for bit, and the last cell state
        // equals the whole run's. A piece started from zeros instead differs (the test can
        // tell a broken carry).
        for b in [1, 2] {
            let dims = Dims {
                b,
                t: 7,
                h: 3,
                height: 6,
                width: 5,
                k: 3,
            };
            let (s_len, g_len) = (dims.state(), dims.gates());
            let gx: Vec<f32> = values(dims.gx_len(), 31).iter().map(|v| v * 1.5).collect();
            let w: Vec<f32> = values(dims.weight_len(), 32).iter().map(|v| v * 0.6).collect();
            let (whole, saved, _) = forward_in_bands(gx.clone(), &w, dims, true, None, dims.band_len());
            let cell_all = saved.unwrap().cell;
            // Steps [t0, t1) of every video: [B, n, …].
            let steps = |buf: &[f32], per: usize, t0: usize, t1: usize| -> Vec<f32> {
                (0..b)
                    .flat_map(|v| buf[(v * 7 + t0) * per..(v * 7 + t1) * per].to_vec())
                    .collect()
            };
            let (mut h, mut c) = (vec![0.0f32; b * s_len], vec![0.0f32; b * s_len]);
            let mut pieces = vec![Vec::new(); b];
            for (t0, t1) in [(0, 3), (3, 4), (4, 7)] {
                let d = Dims { t: t1 - t0, ..dims };
                let (hp, c_last) = forward_from(steps(&gx, g_len, t0, t1), &w, d, &h, &c);
                for (v, piece) in pieces.iter_mut().enumerate() {
                    piece.extend_from_slice(&hp[v * d.t * s_len..(v + 1) * d.t * s_len]);
                }
                // The last step's hidden state of every video: [B, h, H, W].
                h = (0..b)
                    .flat_map(|v| hp[((v + 1) * d.t - 1) * s_len..(v + 1) * d.t * s_len].to_vec())
                    .collect();
                c = c_last;
            }
            assert_eq!(pieces.concat(), whole, "b {b}: hidden states");
            assert_eq!(c, steps(&cell_all, s_len, 6, 7), "b {b}: last cell state");
            // Without the carry (the last piece from zeros) the numbers change.
            let d = Dims { t: 3, ..dims };
            let zeros = vec![0.0f32; b * s_len];
            let (cold, _) = forward_from(steps(&gx, g_len, 4, 7), &w, d, &zeros, &zeros);
            assert_ne!(cold, steps(&whole, s_len, 4, 7));
        }
    }

    fn assert_close(a: &[f32], b: &[f32], tol: f32, what: &str) {
        assert_eq!(a.len(), b.len(), "{what}: length");
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= tol * (1.0 + y.abs()), "{what}[{i}]: {x} vs {y}");
        }
    }

    #[test]
    fn input_half_is_a_conv_with_bias_and_its_gradients_match_finite_differences() {
        let d = InputDims {
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
        let gx = input_forward(&x, &w, &bias, d);
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
                let got = gx[f * d.out * hw + j];
                assert!((got - (v + bias[j / hw])).abs() < 1e-5, "frame {f} value {j}");
            }
        }
        let r = values(gx.len(), 24);
        let loss = |x: &[f32], w: &[f32], b: &[f32]| -> f64 {
            let g = input_forward(x, w, b, d);
            g.iter().zip(&r).map(|(a, b)| (*a as f64) * (*b as f64)).sum()
        };
        let (dx, dw, db) = input_backward(&x, &w, &r, d, true);
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
        let (none, dw2, db2) = input_backward(&x, &w, &r, d, false);
        assert!(none.is_none() && dw2 == dw && db2 == db);
    }
}
