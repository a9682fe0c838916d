//! The per-parameter arithmetic after the backward (SPEC §4.3: global-norm clipping, AdamW,
//! the weight EMA) on `f32` slices: each one pass over the values, split over the threads in
//! fixed chunks. The arithmetic is burn's, in the same order and precision.

use rayon::prelude::*;

/// Values per parallel work item: fixed, so sums do not depend on the thread count.
const CHUNK: usize = 1 << 16;

/// `Some((a, b))` when the tensor is logically an `a × b` matrix (ignoring dims of size 1)
/// whose buffer holds its transpose row-major: element (i, j) at `j·a + i`.
pub fn transposed_2d(dims: &[usize], strides: &[isize]) -> Option<(usize, usize)> {
    let kept: Vec<(usize, isize)> = dims
        .iter()
        .copied()
        .zip(strides.iter().copied())
        .filter(|&(d, _)| d > 1)
        .collect();
    match kept[..] {
        [(a, 1), (b, sb)] if sb == a as isize => Some((a, b)),
        _ => None,
    }
}

/// Whether strides are those of a row-major buffer of these dims in some dim order.
pub fn is_permuted_dense(dims: &[usize], strides: &[isize]) -> bool {
    let mut pairs: Vec<(isize, usize)> = strides
        .iter()
        .copied()
        .zip(dims.iter().copied())
        .filter(|&(_, d)| d > 1)
        .collect();
    pairs.sort_unstable();
    let mut expect = 1isize;
    for (stride, dim) in pairs {
        if stride != expect {
            return false;
        }
        expect *= dim as isize;
    }
    true
}

/// `Σ x²` in `f64` (per chunk, then the chunks in order).
pub fn sum_squares(xs: &[f32]) -> f64 {
    let partial: Vec<f64> = xs
        .par_chunks(CHUNK)
        .map(|c| {
            // 16 f32 lanes vectorise; each chunk's lanes are then added in f64.
            let mut acc = [0f32; 16];
            let mut it = c.chunks_exact(16);
            for v in &mut it {
                for (a, x) in acc.iter_mut().zip(v) {
                    *a += x * x;
                }
            }
            acc.iter().map(|&a| a as f64).sum::<f64>() + it.remainder().iter().map(|&x| (x * x) as f64).sum::<f64>()
        })
        .collect();
    partial.iter().sum()
}

/// `xs · s`, in place.
pub fn scale(xs: &mut [f32], s: f32) {
    xs.par_chunks_mut(CHUNK).for_each(|c| {
        for x in c {
            *x *= s;
        }
    });
}

/// `ema ← ema · a + model · b`, in place (`a` = decay, `b` = 1 − decay).
pub fn blend(ema: &mut [f32], model: &[f32], a: f32, b: f32) {
    ema.par_chunks_mut(CHUNK)
        .zip(model.par_chunks(CHUNK))
        .for_each(|(ec, mc)| {
            for (x, y) in ec.iter_mut().zip(mc) {
                *x = *x * a + *y * b;
            }
        });
}

/// One AdamW step of parameters `p` with their gradients `g` and moments `m`, `v`, all in
/// the same (row-major) order.
pub fn adamw(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], k: StepConsts) {
    p.par_chunks_mut(CHUNK)
        .zip(g.par_chunks(CHUNK))
        .zip(m.par_chunks_mut(CHUNK))
        .zip(v.par_chunks_mut(CHUNK))
        .for_each(|(((pc, gc), mc), vc)| adamw_chunk(pc, gc, mc, vc, k));
}

/// The constants of one step, computed as burn's AdamW computes them.
#[derive(Debug, Clone, Copy)]
pub struct StepConsts {
    pub b1: f32,
    pub b2: f32,
    pub f1: f32,
    pub f2: f32,
    /// `1 − β₁ᵗ`, `1 − β₂ᵗ`.
    pub c1: f32,
    pub c2: f32,
    pub eps: f32,
    /// `1 − lr·wd` and lr, each rounded to f32 as a scalar op rounds them.
    pub keep: f32,
    pub lr: f32,
    pub decays: bool,
}

/// One AdamW update of a slice of parameters with their gradients and moments.
#[inline]
fn adamw_chunk(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], k: StepConsts) {
    let n = p.len();
    let (g, m, v) = (&g[..n], &mut m[..n], &mut v[..n]);
    for j in 0..n {
        let gj = g[j];
        let mj = m[j] * k.b1 + gj * k.f1;
        let vj = v[j] * k.b2 + gj * gj * k.f2;
        m[j] = mj;
        v[j] = vj;
        let delta = (mj / k.c1) / ((vj / k.c2).sqrt() + k.eps);
        let kept = if k.decays { p[j] * k.keep } else { p[j] };
        p[j] = kept - delta * k.lr;
    }
}

/// Side of the tiles in which [`adamw_transposed`] reads the transposed gradient.
const TILE: usize = 64;

/// [`adamw`] of a `rows × cols` row-major parameter whose gradient buffer `gt` holds
/// the transpose (`cols × rows`): tile by tile, the gradient tile transposed in L1 first, so
/// neither operand is walked across memory with a long stride.
pub fn adamw_transposed(
    p: &mut [f32],
    gt: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    (rows, cols): (usize, usize),
    k: StepConsts,
) {
    let band = TILE * cols;
    p.par_chunks_mut(band)
        .zip(m.par_chunks_mut(band))
        .zip(v.par_chunks_mut(band))
        .enumerate()
        .for_each(|(bi, ((pb, mb), vb))| {
            let (r0, n_r) = (bi * TILE, pb.len() / cols);
            let mut tile = vec![0f32; TILE * TILE];
            for c0 in (0..cols).step_by(TILE) {
                let len = TILE.min(cols - c0);
                // Transpose the tile in L1: each source row is a contiguous run over r.
                for j in 0..len {
                    let src = &gt[(c0 + j) * rows + r0..][..n_r];
                    for (r, &x) in src.iter().enumerate() {
                        tile[r * TILE + j] = x;
                    }
                }
                for r in 0..n_r {
                    let at = r * cols + c0;
                    let g = &tile[r * TILE..r * TILE + len];
                    adamw_chunk(
                        &mut pb[at..at + len],
                        g,
                        &mut mb[at..at + len],
                        &mut vb[at..at + len],
                        k,
                    );
                }
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permuted_dense_layouts_are_recognised() {
        assert!(is_permuted_dense(&[2, 3], &[3, 1]));
        assert!(is_permuted_dense(&[3, 2], &[1, 3])); // a transpose
        assert!(is_permuted_dense(&[512, 512, 1], &[1, 512, 1]));
        assert!(!is_permuted_dense(&[3, 2], &[0, 1])); // broadcast
        assert!(!is_permuted_dense(&[2, 3], &[4, 1])); // rows with gaps (a slice)
        assert_eq!(transposed_2d(&[512, 2048, 1], &[1, 512, 1]), Some((512, 2048)));
        assert_eq!(transposed_2d(&[3, 5], &[5, 1]), None); // row-major
        assert_eq!(transposed_2d(&[3, 5, 2], &[1, 3, 15]), None); // three dims
    }
}
