//! The ConvLSTM's element-wise maths: `exp`, sigmoid and tanh that vectorise, and the gate
//! arithmetic of one recurrence step (forward and backward), written once and compiled both
//! portably and for AVX2 + FMA, picked at run time.

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

/// `1 / (1 + e^-x)` through [`exp_fast`] (absolute error < 3e-7; vectorises).
#[inline(always)]
pub(super) fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp_fast(-x))
}

#[inline(always)]
fn tanh(x: f32) -> f32 {
    // tanh(x) = sign(x)·(1 − e)/(1 + e), e = exp(−2|x|): no overflow, absolute error ~1e-7.
    let e = exp_fast(-2.0 * x.abs());
    ((1.0 - e) / (1.0 + e)).copysign(x)
}

/// `erf` to a few ulp that vectorises (the standard library has none; libm's is scalar):
/// the rational approximation of Eigen and XLA on [-4, 4], beyond which erf is ±1 in `f32`.
#[inline(always)]
fn erf_fast(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let p = ((((((-2.726_142_3e-10 * x2 + 2.770_681_4e-8) * x2 - 2.101_024e-6) * x2 - 5.692_506_4e-5) * x2
        - 7.349_906_3e-4)
        * x2
        - 2.954_6e-3)
        * x2
        - 1.609_603_3e-2)
        * x;
    let q = (((-1.456_607_2e-5 * x2 - 2.133_740_6e-4) * x2 - 1.682_827e-3) * x2 - 7.373_329e-3) * x2 - 1.426_474e-2;
    p / q
}

/// GELU, `x/2 · (1 + erf(x/√2))` (burn's and PyTorch's exact form), in place; and its
/// gradient, `g · (Φ(x) + x·φ(x))` with Φ(x) = (1 + erf(x/√2))/2 and φ(x) = e^(−x²/2)/√(2π).
macro_rules! gelu_kernel {
    ($($attr:meta)?; $($unsafety:ident)?) => {
        $(#[$attr])?
        pub $($unsafety)? fn gelu_in_place(v: &mut [f32]) {
            for x in v.iter_mut() {
                *x = 0.5 * *x * (1.0 + erf_fast(*x * std::f32::consts::FRAC_1_SQRT_2));
            }
        }

        $(#[$attr])?
        pub $($unsafety)? fn gelu_backward(x: &[f32], g: &[f32], dx: &mut [f32]) {
            // 1/√(2π)
            const INV_SQRT_2PI: f32 = 0.398_942_3;
            for ((d, &x), &g) in dx.iter_mut().zip(x).zip(g) {
                let cdf = 0.5 * (1.0 + erf_fast(x * std::f32::consts::FRAC_1_SQRT_2));
                let pdf = INV_SQRT_2PI * exp_fast(-0.5 * x * x);
                *d = g * (cdf + x * pdf);
            }
        }
    };
}

/// Call `$f` compiled for AVX-512 (16 lanes) or AVX2 + FMA (8) when the CPU has them,
/// instead of SSE2's 4, for the gate arithmetic (most of the recurrence's non-GEMM time),
/// else the portable build of the same body.
macro_rules! simd_dispatch {
    ($f:ident($($arg:expr),*)) => {{
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU has the features the `avx512` build was compiled for.
                unsafe { avx512::$f($($arg),*) }
            } else if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
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

/// The forward gate arithmetic of one step, the portable build (the SIMD ones are in
/// [`lanes`]).
macro_rules! gate_forward_kernel {
    ($($attr:meta)?; $($unsafety:ident)?) => {
        /// Forward: from the gates' pre-activations `pre` (i, f, o, g) less their `bias`,
        /// writes the cell and hidden state, and the activated gates into `act` when given
        /// (training keeps them for the backward).
        $(#[$attr])?
        pub $($unsafety)? fn gates_forward(
            pre: [&[f32]; 4],
            bias: [f32; 4],
            act: Option<[&mut [f32]; 4]>,
            c_prev: &[f32],
            c_now: &mut [f32],
            h_now: &mut [f32],
        ) {
            let n = c_now.len();
            let [pi, pf, po, pg] = pre;
            let (pi, pf, po, pg, c_prev, h_now) = (&pi[..n], &pf[..n], &po[..n], &pg[..n], &c_prev[..n], &mut h_now[..n]);
            let [bi, bf, bo, bg] = bias;
            let mut act = act.map(|[ai, af, ao, ag]| [&mut ai[..n], &mut af[..n], &mut ao[..n], &mut ag[..n]]);
            for j in 0..n {
                let i = sigmoid(pi[j] + bi);
                let f = sigmoid(pf[j] + bf);
                let o = sigmoid(po[j] + bo);
                let g = tanh(pg[j] + bg);
                let c = f * c_prev[j] + i * g;
                c_now[j] = c;
                h_now[j] = o * tanh(c);
                if let Some([ai, af, ao, ag]) = act.as_mut() {
                    (ai[j], af[j], ao[j], ag[j]) = (i, f, o, g);
                }
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
    use super::{erf_fast, exp_fast, sigmoid, tanh};
    gate_forward_kernel!(;);
    gate_kernels!(;);
    gelu_kernel!(;);
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{erf_fast, exp_fast, tanh};
    gate_kernels!(target_feature(enable = "avx2,fma"); unsafe);
    gelu_kernel!(target_feature(enable = "avx2,fma"); unsafe);
    pub use super::lanes::gates_forward_avx2 as gates_forward;
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{erf_fast, exp_fast, tanh};
    gate_kernels!(target_feature(enable = "avx512f"); unsafe);
    gelu_kernel!(target_feature(enable = "avx512f"); unsafe);
    pub use super::lanes::gates_forward_avx512 as gates_forward;
}

/// The forward gates with SIMD intrinsics, written once over [`lanes::Lanes`] and built for
/// AVX2 + FMA (8 lanes) and for AVX-512 (16): [`exp_fast`] on a vector, and every division
/// (5 per value: three sigmoids and two tanh) as a reciprocal estimate refined by one
/// Newton step. Auto-vectorised, the divisions made the gate arithmetic as costly as the
/// step's GEMM (perf, one video: 27 % vs 30 % of the recurrence); `vdivps` is several
/// times slower than a reciprocal estimate + 2 FMAs. Accuracy: ~1e-7 relative, like the
/// division.
#[cfg(target_arch = "x86_64")]
mod lanes {
    use std::arch::x86_64::*;

    /// A vector of `f32` lanes and the operations the forward gates use, each one or two
    /// instructions of its instruction set.
    ///
    /// # Safety
    /// Every method runs that instruction set's instructions: it may only be called where
    /// the CPU has them, from code compiled for them (the `#[target_feature]` entry points
    /// below, into which these `#[inline(always)]` methods are inlined).
    pub(super) trait Lanes: Copy {
        /// Lanes.
        const N: usize;
        unsafe fn splat(v: f32) -> Self;
        /// `N` values from `p`.
        unsafe fn load(p: *const f32) -> Self;
        /// `N` values to `p`.
        unsafe fn store(self, p: *mut f32);
        unsafe fn add(self, b: Self) -> Self;
        unsafe fn sub(self, b: Self) -> Self;
        unsafe fn mul(self, b: Self) -> Self;
        /// `self·b + c`, rounded once.
        unsafe fn mul_add(self, b: Self, c: Self) -> Self;
        /// `c − self·b`, rounded once.
        unsafe fn neg_mul_add(self, b: Self, c: Self) -> Self;
        unsafe fn min(self, b: Self) -> Self;
        unsafe fn max(self, b: Self) -> Self;
        /// An estimate of `1 / self` (12 bits or better).
        unsafe fn recip_estimate(self) -> Self;
        /// `2^n`, where `self` is `n + MAGIC` with the integer n in its low mantissa bits
        /// (see [`super::exp_fast`]) and `n ∈ [-126, 127]`.
        unsafe fn pow2_of_rounded(self, magic: f32) -> Self;
        /// `(|self|, the sign bit of self)`.
        unsafe fn abs_sign(self) -> (Self, Self);
        /// `self` with the sign bit `sign` or-ed in.
        unsafe fn or_sign(self, sign: Self) -> Self;
    }

    /// [`Lanes`]' methods `fn name(self, b) -> Self` from their intrinsics.
    macro_rules! binary_ops {
        ($($name:ident $intrinsic:ident),*) => {
            $(
                #[inline(always)]
                unsafe fn $name(self, b: Self) -> Self {
                    unsafe { $intrinsic(self, b) }
                }
            )*
        };
    }

    /// [`Lanes`] for a vector type, from the intrinsics that do each operation.
    macro_rules! lanes_impl {
        ($t:ty, $n:literal; set1 $set1:ident, load $load:ident, store $store:ident,
         add $add:ident, sub $sub:ident, mul $mul:ident, fmadd $fmadd:ident, fnmadd $fnmadd:ident,
         min $min:ident, max $max:ident, rcp $rcp:ident, set1_epi32 $set1i:ident,
         add_epi32 $addi:ident, sub_epi32 $subi:ident, slli_epi32 $slli:ident,
         and $and:ident, andnot $andnot:ident, or $or:ident, to_int $to_int:ident, to_float $to_float:ident) => {
            impl Lanes for $t {
                const N: usize = $n;
                #[inline(always)]
                unsafe fn splat(v: f32) -> Self {
                    unsafe { $set1(v) }
                }
                #[inline(always)]
                unsafe fn load(p: *const f32) -> Self {
                    unsafe { $load(p) }
                }
                #[inline(always)]
                unsafe fn store(self, p: *mut f32) {
                    unsafe { $store(p, self) }
                }
                binary_ops!(add $add, sub $sub, mul $mul, min $min, max $max);
                #[inline(always)]
                unsafe fn mul_add(self, b: Self, c: Self) -> Self {
                    unsafe { $fmadd(self, b, c) }
                }
                #[inline(always)]
                unsafe fn neg_mul_add(self, b: Self, c: Self) -> Self {
                    unsafe { $fnmadd(self, b, c) }
                }
                #[inline(always)]
                unsafe fn recip_estimate(self) -> Self {
                    unsafe { $rcp(self) }
                }
                #[inline(always)]
                unsafe fn pow2_of_rounded(self, magic: f32) -> Self {
                    unsafe {
                        let n = $subi($to_int(self), $set1i(magic.to_bits() as i32));
                        $to_float($slli::<23>($addi(n, $set1i(127))))
                    }
                }
                #[inline(always)]
                unsafe fn abs_sign(self) -> (Self, Self) {
                    unsafe {
                        let (x, m) = ($to_int(self), $to_int($set1(-0.0)));
                        ($to_float($andnot(m, x)), $to_float($and(x, m)))
                    }
                }
                #[inline(always)]
                unsafe fn or_sign(self, sign: Self) -> Self {
                    unsafe { $to_float($or($to_int(self), $to_int(sign))) }
                }
            }
        };
    }

    lanes_impl!(__m256, 8; set1 _mm256_set1_ps, load _mm256_loadu_ps, store _mm256_storeu_ps,
        add _mm256_add_ps, sub _mm256_sub_ps, mul _mm256_mul_ps, fmadd _mm256_fmadd_ps,
        fnmadd _mm256_fnmadd_ps, min _mm256_min_ps, max _mm256_max_ps, rcp _mm256_rcp_ps,
        set1_epi32 _mm256_set1_epi32, add_epi32 _mm256_add_epi32, sub_epi32 _mm256_sub_epi32,
        slli_epi32 _mm256_slli_epi32, and _mm256_and_si256, andnot _mm256_andnot_si256,
        or _mm256_or_si256, to_int _mm256_castps_si256, to_float _mm256_castsi256_ps);
    // rcp14: a 14-bit estimate. The integer forms of and/or: the float ones need AVX-512DQ.
    lanes_impl!(__m512, 16; set1 _mm512_set1_ps, load _mm512_loadu_ps, store _mm512_storeu_ps,
        add _mm512_add_ps, sub _mm512_sub_ps, mul _mm512_mul_ps, fmadd _mm512_fmadd_ps,
        fnmadd _mm512_fnmadd_ps, min _mm512_min_ps, max _mm512_max_ps, rcp _mm512_rcp14_ps,
        set1_epi32 _mm512_set1_epi32, add_epi32 _mm512_add_epi32, sub_epi32 _mm512_sub_epi32,
        slli_epi32 _mm512_slli_epi32, and _mm512_and_si512, andnot _mm512_andnot_si512,
        or _mm512_or_si512, to_int _mm512_castps_si512, to_float _mm512_castsi512_ps);

    /// [`super::exp_fast`] on a vector (its constants; FMAs where it rounds twice).
    #[inline(always)]
    unsafe fn exp<V: Lanes>(x: V) -> V {
        const MAGIC: f32 = 12_582_912.0;
        unsafe {
            let s = |v: f32| V::splat(v);
            let x = x.max(s(-87.0)).min(s(88.0));
            let t = x.mul_add(s(std::f32::consts::LOG2_E), s(MAGIC));
            let n = t.sub(s(MAGIC));
            let r = n.mul_add(s(2.121_944_4e-4), n.neg_mul_add(s(0.693_359_4), x));
            let r2 = r.mul(r);
            let mut p = s(1.987_569_1e-4).mul_add(r, s(1.398_199_9e-3));
            p = p.mul_add(r, s(8.333_452e-3));
            p = p.mul_add(r, s(4.166_579_6e-2));
            p = p.mul_add(r, s(1.666_666_5e-1));
            p = p.mul_add(r, s(0.5));
            p.mul_add(r2, r).add(s(1.0)).mul(t.pow2_of_rounded(MAGIC))
        }
    }

    /// `1 / x` to ~1 ulp: the estimate and one Newton step.
    #[inline(always)]
    unsafe fn recip<V: Lanes>(x: V) -> V {
        unsafe {
            let r = x.recip_estimate();
            r.mul(x.neg_mul_add(r, V::splat(2.0)))
        }
    }

    #[inline(always)]
    unsafe fn sigmoid<V: Lanes>(x: V) -> V {
        unsafe { recip(V::splat(1.0).add(exp(V::splat(0.0).sub(x)))) }
    }

    /// [`super::tanh`]: sign(x)·(1 − e)/(1 + e) with e = exp(−2|x|).
    #[inline(always)]
    unsafe fn tanh<V: Lanes>(x: V) -> V {
        unsafe {
            let (a, sign) = x.abs_sign();
            let e = exp(V::splat(-2.0).mul(a));
            let one = V::splat(1.0);
            one.sub(e).mul(recip(one.add(e))).or_sign(sign)
        }
    }

    /// As the portable `gates_forward`, `V::N` values at a time (the rest portably).
    ///
    /// # Safety
    /// As [`Lanes`]: the CPU has `V`'s instructions and the caller is compiled for them.
    #[inline(always)]
    unsafe fn gates_forward_in<V: Lanes>(
        pre: [&[f32]; 4],
        bias: [f32; 4],
        act: Option<[&mut [f32]; 4]>,
        c_prev: &[f32],
        c_now: &mut [f32],
        h_now: &mut [f32],
    ) {
        let n = c_now.len();
        let [pi, pf, po, pg] = pre;
        let (pi, pf, po, pg, c_prev, h_now) = (&pi[..n], &pf[..n], &po[..n], &pg[..n], &c_prev[..n], &mut h_now[..n]);
        let mut act = act.map(|[ai, af, ao, ag]| [&mut ai[..n], &mut af[..n], &mut ao[..n], &mut ag[..n]]);
        let nv = n - n % V::N;
        // SAFETY: the features, per the caller's contract; every access is at j + V::N ≤ nv
        // ≤ n, and every slice above has exactly n values.
        unsafe {
            let [bi, bf, bo, bg] = bias.map(|b| V::splat(b));
            for j in (0..nv).step_by(V::N) {
                let pre = |s: &[f32], b: V| V::load(s.as_ptr().add(j)).add(b);
                let i = sigmoid(pre(pi, bi));
                let f = sigmoid(pre(pf, bf));
                let o = sigmoid(pre(po, bo));
                let g = tanh(pre(pg, bg));
                let c = f.mul_add(V::load(c_prev.as_ptr().add(j)), i.mul(g));
                c.store(c_now.as_mut_ptr().add(j));
                o.mul(tanh(c)).store(h_now.as_mut_ptr().add(j));
                if let Some([ai, af, ao, ag]) = act.as_mut() {
                    i.store(ai.as_mut_ptr().add(j));
                    f.store(af.as_mut_ptr().add(j));
                    o.store(ao.as_mut_ptr().add(j));
                    g.store(ag.as_mut_ptr().add(j));
                }
            }
        }
        if nv < n {
            let act = act.map(|[ai, af, ao, ag]| [&mut ai[nv..], &mut af[nv..], &mut ao[nv..], &mut ag[nv..]]);
            super::portable::gates_forward(
                [&pi[nv..], &pf[nv..], &po[nv..], &pg[nv..]],
                bias,
                act,
                &c_prev[nv..],
                &mut c_now[nv..],
                &mut h_now[nv..],
            );
        }
    }

    /// A `#[target_feature]` entry point that runs [`gates_forward_in`] on `$lanes`.
    macro_rules! gates_forward_for {
        ($name:ident, $lanes:ty, $feature:literal, $doc:literal) => {
            #[doc = $doc]
            ///
            /// # Safety
            /// The CPU must have the features this function is compiled for.
            #[target_feature(enable = $feature)]
            pub unsafe fn $name(
                pre: [&[f32]; 4],
                bias: [f32; 4],
                act: Option<[&mut [f32]; 4]>,
                c_prev: &[f32],
                c_now: &mut [f32],
                h_now: &mut [f32],
            ) {
                // SAFETY: compiled for the lanes' instructions, which the caller vouches for.
                unsafe { gates_forward_in::<$lanes>(pre, bias, act, c_prev, c_now, h_now) }
            }
        };
    }

    gates_forward_for!(
        gates_forward_avx2,
        __m256,
        "avx2,fma",
        "The forward gates, 8 lanes (AVX2 + FMA)."
    );
    gates_forward_for!(
        gates_forward_avx512,
        __m512,
        "avx512f",
        "The forward gates, 16 lanes (AVX-512F)."
    );
}

/// The forward gate arithmetic of one band of one step (see the portable `gates_forward`),
/// with AVX-512 or AVX2 + FMA when the CPU has them.
#[inline]
pub fn gates_forward(
    pre: [&[f32]; 4],
    bias: [f32; 4],
    act: Option<[&mut [f32]; 4]>,
    c_prev: &[f32],
    c_now: &mut [f32],
    h_now: &mut [f32],
) {
    simd_dispatch!(gates_forward(pre, bias, act, c_prev, c_now, h_now))
}

/// The backward gate arithmetic of one band of one step (see the portable `gates_backward`),
/// with AVX-512 or AVX2 + FMA when the CPU has them.
#[inline]
pub fn gates_backward(
    g: [&[f32]; 4],
    c: &[f32],
    c_prev: &[f32],
    dout: &[f32],
    dh_next: &[f32],
    dc_next: &mut [f32],
    dpre: [&mut [f32]; 4],
) {
    simd_dispatch!(gates_backward(g, c, c_prev, dout, dh_next, dc_next, dpre))
}

/// GELU in place (see the portable `gelu_in_place`), with AVX-512 or AVX2 + FMA
/// when the CPU has them.
#[inline]
pub fn gelu_in_place(v: &mut [f32]) {
    simd_dispatch!(gelu_in_place(v))
}

/// GELU's backward, `dx = g · gelu'(x)` (see the portable `gelu_backward`), with AVX-512
/// or AVX2 + FMA when the CPU has them.
///
/// # Panics
/// If the three slices differ in length.
#[inline]
pub fn gelu_backward(x: &[f32], g: &[f32], dx: &mut [f32]) {
    assert!(x.len() == g.len() && g.len() == dx.len(), "gelu gradient sizes");
    simd_dispatch!(gelu_backward(x, g, dx))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::cpu::testing::values;

    /// erf by its Taylor series in f64 (|x| ≤ 4: the terms peak near 1e5, so ~1e-11
    /// absolute); ±1 beyond (1 − erf(4) ≈ 1.5e-8).
    fn erf_series(x: f64) -> f64 {
        if x.abs() > 4.0 {
            return x.signum();
        }
        let (mut term, mut sum) = (x, x);
        for n in 1..200 {
            term *= -x * x / n as f64;
            sum += term / (2 * n + 1) as f64;
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }

    #[test]
    fn fast_erf_and_gelu_are_accurate() {
        let mut worst = 0.0f64;
        for i in -5000..=5000 {
            let x = i as f32 * 0.001 * 5.0; // [-25, 25]
            let want = erf_series(x as f64);
            worst = worst.max((erf_fast(x) as f64 - want).abs());
        }
        assert!(worst < 4e-7, "erf absolute error {worst}");
        let xs: Vec<f32> = (-3000..=3000).map(|i| i as f32 * 0.004).collect();
        let (mut a, mut b) = (xs.clone(), xs.clone());
        gelu_in_place(&mut a);
        portable::gelu_in_place(&mut b);
        for ((x, g), p) in xs.iter().zip(&a).zip(&b) {
            let want = 0.5 * *x as f64 * (1.0 + erf_series(*x as f64 / 2f64.sqrt()));
            assert!(
                (*g as f64 - want).abs() < 3e-6 * (1.0 + want.abs()),
                "gelu({x}) = {g}, want {want}"
            );
            assert!((g - p).abs() <= 1e-6 * (1.0 + p.abs()), "SIMD against portable at {x}");
        }
        // The gradient against the f64 derivative, and against finite differences of the f64
        // GELU (which checks the derivative's formula itself).
        let gs: Vec<f32> = xs.iter().map(|x| 1.0 + 0.1 * x).collect();
        let (mut d, mut dp) = (vec![0.0; xs.len()], vec![0.0; xs.len()]);
        gelu_backward(&xs, &gs, &mut d);
        portable::gelu_backward(&xs, &gs, &mut dp);
        let gelu64 = |x: f64| 0.5 * x * (1.0 + erf_series(x / 2f64.sqrt()));
        for (((&x, &g), &got), &p) in xs.iter().zip(&gs).zip(&d).zip(&dp) {
            let x64 = x as f64;
            let exact = 0.5 * (1.0 + erf_series(x64 / 2f64.sqrt()))
                + x64 * (-0.5 * x64 * x64).exp() / (2.0 * std::f64::consts::PI).sqrt();
            let h = 1e-4;
            let fd = (gelu64(x64 + h) - gelu64(x64 - h)) / (2.0 * h);
            assert!((exact - fd).abs() < 1e-6, "derivative formula at {x}: {exact} vs {fd}");
            let want = g as f64 * exact;
            assert!(
                (got as f64 - want).abs() < 3e-6 * (1.0 + want.abs()),
                "gelu'({x}): {got} vs {want}"
            );
            assert!(
                (got - p).abs() <= 1e-6 * (1.0 + p.abs()),
                "SIMD against portable gradient at {x}"
            );
        }
    }

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

    /// The SIMD builds of the forward gates this CPU can run, by name.
    #[cfg(target_arch = "x86_64")]
    type GatesForward = unsafe fn([&[f32]; 4], [f32; 4], Option<[&mut [f32]; 4]>, &[f32], &mut [f32], &mut [f32]);

    #[cfg(target_arch = "x86_64")]
    fn simd_builds() -> Vec<(&'static str, GatesForward)> {
        let mut builds: Vec<(&'static str, GatesForward)> = Vec::new();
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            builds.push(("AVX2", lanes::gates_forward_avx2));
        }
        if std::arch::is_x86_feature_detected!("avx512f") {
            builds.push(("AVX-512", lanes::gates_forward_avx512));
        }
        builds
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn simd_forward_gates_match_the_portable_ones() {
        // 37 values: two 16-lane blocks (four 8-lane ones) and a portable tail; saturating
        // and zero inputs.
        let n = 37;
        let mut pre: Vec<Vec<f32>> = (0..4)
            .map(|q| values(n, 40 + q).iter().map(|v| v * 12.0).collect())
            .collect();
        pre[0][3] = 95.0;
        pre[1][9] = -95.0;
        pre[3][17] = 0.0;
        pre[3][18] = -40.0;
        pre[0][20] = -0.0;
        let bias = [0.4, -0.3, 0.2, -0.1];
        let c_prev: Vec<f32> = values(n, 60).iter().map(|v| v * 3.0).collect();
        // (activations when kept, cell, hidden) of a SIMD build or the portable kernel.
        let run = |build: Option<GatesForward>, keep: bool| {
            let mut act = vec![vec![f32::NAN; n]; 4];
            let (mut c, mut h) = (vec![0f32; n], vec![0f32; n]);
            let [a, b, cc, d] = &mut act[..] else { unreachable!() };
            let out = keep.then(|| [&mut a[..], &mut b[..], &mut cc[..], &mut d[..]]);
            let pre = [&pre[0][..], &pre[1][..], &pre[2][..], &pre[3][..]];
            match build {
                // SAFETY: `simd_builds` lists only the builds this CPU can run.
                Some(f) => unsafe { f(pre, bias, out, &c_prev, &mut c, &mut h) },
                None => portable::gates_forward(pre, bias, out, &c_prev, &mut c, &mut h),
            }
            (act, c, h)
        };
        let builds = simd_builds();
        println!(
            "SIMD builds tested: {:?}",
            builds.iter().map(|b| b.0).collect::<Vec<_>>()
        );
        let slow = run(None, true);
        // Without the activations kept, the same state (and nothing written to them).
        for build in builds.iter().map(|b| Some(b.1)).chain([None]) {
            let (act, c, h) = run(build, false);
            assert!(act.iter().flatten().all(|v| v.is_nan()));
            assert_eq!((c, h), {
                let r = run(build, true);
                (r.1, r.2)
            });
        }
        let close = |a: &[f32], b: &[f32], what: &str| {
            for (j, (x, y)) in a.iter().zip(b).enumerate() {
                assert!((x - y).abs() <= 1e-6 * (1.0 + y.abs()), "{what}[{j}]: {x} vs {y}");
            }
        };
        for (name, f) in builds {
            let fast = run(Some(f), true);
            for q in 0..4 {
                close(&fast.0[q], &slow.0[q], &format!("{name} gate {q}"));
            }
            close(&fast.1, &slow.1, &format!("{name} cell"));
            close(&fast.2, &slow.2, &format!("{name} hidden"));
            // Saturated: σ(95 + b) within an ulp of 1, σ(−95 + b) (clamped to e^−88) about 0.
            assert!(
                fast.0[0][3] >= 1.0 - 1.2e-7 && fast.0[0][3] <= 1.0,
                "{name}: {}",
                fast.0[0][3]
            );
            assert!((0.0..1e-30).contains(&fast.0[1][9]), "{name}: {}", fast.0[1][9]);
        }
    }
}
