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
        let [bi, bf, bo, bg] = bias.map(|b| splat(b));
        let n8 = n - n % 8;
        for j in (0..n8).step_by(8) {
            // SAFETY: j + 8 ≤ n8 ≤ n, and every slice above has exactly n values.
            unsafe {
                let pre = |s: &[f32], b: __m256| _mm256_add_ps(_mm256_loadu_ps(s.as_ptr().add(j)), b);
                let i = sigmoid8(pre(pi, bi));
                let f = sigmoid8(pre(pf, bf));
                let o = sigmoid8(pre(po, bo));
                let g = tanh8(pre(pg, bg));
                let c = _mm256_fmadd_ps(f, _mm256_loadu_ps(c_prev.as_ptr().add(j)), _mm256_mul_ps(i, g));
                _mm256_storeu_ps(c_now.as_mut_ptr().add(j), c);
                _mm256_storeu_ps(h_now.as_mut_ptr().add(j), _mm256_mul_ps(o, tanh8(c)));
                if let Some([ai, af, ao, ag]) = act.as_mut() {
                    _mm256_storeu_ps(ai.as_mut_ptr().add(j), i);
                    _mm256_storeu_ps(af.as_mut_ptr().add(j), f);
                    _mm256_storeu_ps(ao.as_mut_ptr().add(j), o);
                    _mm256_storeu_ps(ag.as_mut_ptr().add(j), g);
                }
            }
        }
        if n8 < n {
            let act = act.map(|[ai, af, ao, ag]| [&mut ai[n8..], &mut af[n8..], &mut ao[n8..], &mut ag[n8..]]);
            super::portable::gates_forward(
                [&pi[n8..], &pf[n8..], &po[n8..], &pg[n8..]],
                bias,
                act,
                &c_prev[n8..],
                &mut c_now[n8..],
                &mut h_now[n8..],
            );
        }
    }
}

/// The forward gate arithmetic of one band of one step (see the portable `gates_forward`),
/// with AVX2 + FMA when the CPU has them.
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
/// with AVX2 + FMA when the CPU has them.
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

/// GELU in place (see the portable `gelu_in_place`), with AVX2 + FMA when the CPU has them.
#[inline]
pub fn gelu_in_place(v: &mut [f32]) {
    simd_dispatch!(gelu_in_place(v))
}

/// GELU's backward, `dx = g · gelu'(x)` (see the portable `gelu_backward`), with AVX2 + FMA
/// when the CPU has them.
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
            assert!((g - p).abs() <= 1e-6 * (1.0 + p.abs()), "AVX2 against portable at {x}");
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
                "AVX2 against portable gradient at {x}"
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
        let bias = [0.4, -0.3, 0.2, -0.1];
        let c_prev: Vec<f32> = values(n, 60).iter().map(|v| v * 3.0).collect();
        // (activations when kept, cell, hidden) of the AVX2 or the portable kernel.
        let run = |fast: bool, keep: bool| {
            let mut act = vec![vec![f32::NAN; n]; 4];
            let (mut c, mut h) = (vec![0f32; n], vec![0f32; n]);
            let [a, b, cc, d] = &mut act[..] else { unreachable!() };
            let out = keep.then(|| [&mut a[..], &mut b[..], &mut cc[..], &mut d[..]]);
            let pre = [&pre[0][..], &pre[1][..], &pre[2][..], &pre[3][..]];
            if fast {
                // SAFETY: checked above that the CPU has AVX2 and FMA.
                unsafe { avx2_forward::gates_forward(pre, bias, out, &c_prev, &mut c, &mut h) };
            } else {
                portable::gates_forward(pre, bias, out, &c_prev, &mut c, &mut h);
            }
            (act, c, h)
        };
        // Without the activations kept, the same state (and nothing written to them).
        for fast in [true, false] {
            let (act, c, h) = run(fast, false);
            assert!(act.iter().flatten().all(|v| v.is_nan()));
            assert_eq!((c, h), {
                let r = run(fast, true);
                (r.1, r.2)
            });
        }
        let (fast, slow) = (run(true, true), run(false, true));
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
        // Saturated: σ(95 + b) within an ulp of 1, σ(−95 + b) (clamped to e^−88) about 0.
        assert!(fast.0[0][3] >= 1.0 - 1.2e-7 && fast.0[0][3] <= 1.0, "{}", fast.0[0][3]);
        assert!((0.0..1e-30).contains(&fast.0[1][9]), "{}", fast.0[1][9]);
    }
}
