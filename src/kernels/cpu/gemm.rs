//! Row-major matrix products on `f32` slices through the `gemm` crate (which picks AVX2,
//! AVX-512 or NEON at run time), with transposed and strided operands as views, not copies.

/// `dst (m×n) = [dst +] a·b` for row-major matrices; `a` is `m×k` (or its transpose stored
/// `k×m` when `a_t`), `b` is `k×n` (or `n×k` when `b_t`).
pub fn matmul(
    dst: &mut [f32],
    a: &[f32],
    b: &[f32],
    (m, k, n): (usize, usize, usize),
    a_t: bool,
    b_t: bool,
    acc: bool,
) {
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
pub struct View<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    /// Row stride.
    pub rs: usize,
    /// Column stride.
    pub cs: usize,
}

impl<'a> View<'a> {
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        View {
            data,
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }
    /// The transpose (no copy).
    pub fn t(self) -> Self {
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
pub fn matmul_view(dst: &mut [f32], dst_rs: usize, a: View, b: View, acc: bool) {
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

/// One operand of [`par_matmul`]: a stack of `rows × cols` matrices, matrix `b` at
/// `data[b · batch_stride ..]` (stride 0: one matrix shared by the whole batch), each
/// strided as a [`View`].
#[derive(Debug, Clone, Copy)]
pub struct Stack<'a> {
    pub data: &'a [f32],
    /// Values between consecutive matrices; 0 broadcasts one matrix.
    pub batch_stride: usize,
    pub rows: usize,
    pub cols: usize,
    /// Row stride.
    pub rs: usize,
    /// Column stride.
    pub cs: usize,
}

impl<'a> Stack<'a> {
    /// Row-major matrices stored one after another (`shared`: one matrix for every item).
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize, shared: bool) -> Self {
        Stack {
            data,
            batch_stride: if shared { 0 } else { rows * cols },
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }
    /// Each matrix transposed (no copy).
    pub fn t(self) -> Self {
        Stack {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }
    /// Rows `r0..r0 + n` of matrix `item`.
    fn view(&self, item: usize, r0: usize, n: usize) -> View<'a> {
        let start = item * self.batch_stride + r0 * self.rs;
        View {
            data: &self.data[start.min(self.data.len())..],
            rows: n,
            cols: self.cols,
            rs: self.rs,
            cs: self.cs,
        }
    }
}

/// Below this many multiply-adds a product runs on the calling thread: splitting it would
/// cost more in packing and hand-over than it saves.
const PAR_MIN_WORK: usize = 1 << 20;

/// Rows of a task are a multiple of this (the micro-kernel's row count on AVX2 and AVX-512).
const ROW_ALIGN: usize = 16;

/// `batch` products `a[i] · b[i]` into `dst`, `[batch, m, n]` row-major, or, when `sum`,
/// their sum into `dst` `[m, n]`; `acc` adds to what `dst` holds. The work is cut once into
/// at most one task per thread (whole items, or blocks of rows when there are fewer items
/// than threads), each a single-threaded GEMM, so a product costs one hand-over between
/// threads rather than one per depth block as the `gemm` crate's own threading does (which
/// on a 2-core VM often left the second core idle: the embedding's 512×12288×128 product
/// took 9–19 ms inside a forward pass; cut in two row blocks it took 8.0–8.2 ms in a
/// stand-alone benchmark, where the crate's own threading took 8.2–8.6 ms). No value is split between threads: each is one GEMM's
/// sum over k (and, when `sum`, the items added in order), so the thread count only moves
/// which task computes it.
///
/// # Panics
/// If the operands' shapes do not chain or an operand or `dst` is too short.
pub fn par_matmul(dst: &mut [f32], batch: usize, a: Stack, b: Stack, sum: bool, acc: bool) {
    use rayon::prelude::*;
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(b.rows, k, "matmul inner sizes");
    let items = if sum { 1 } else { batch };
    assert!(dst.len() >= items * m * n, "matmul output size");
    if m == 0 || n == 0 {
        return;
    }
    if batch == 0 {
        // An empty sum.
        if sum && !acc {
            dst[..m * n].fill(0.0);
        }
        return;
    }
    let work = batch.saturating_mul(m).saturating_mul(n).saturating_mul(k);
    let threads = rayon::current_num_threads().max(1);
    let tasks_per_item = if work < PAR_MIN_WORK {
        1
    } else {
        threads.div_ceil(items).min(m.div_ceil(ROW_ALIGN)).max(1)
    };
    let block = m.div_ceil(tasks_per_item).next_multiple_of(ROW_ALIGN).min(m);
    // One task: rows r0.. of output item `item` (all items summed when `sum`).
    let run = |item: usize, r0: usize, out: &mut [f32]| {
        let rows = out.len() / n;
        if sum {
            for i in 0..batch {
                matmul_view(out, n, a.view(i, r0, rows), b.view(i, 0, k), acc || i > 0);
            }
        } else {
            matmul_view(out, n, a.view(item, r0, rows), b.view(item, 0, k), acc);
        }
    };
    let mut jobs: Vec<(usize, usize, &mut [f32])> = Vec::new();
    for (item, out) in dst[..items * m * n].chunks_mut(m * n).enumerate() {
        for (j, rows) in out.chunks_mut(block * n).enumerate() {
            jobs.push((item, j * block, rows));
        }
    }
    if jobs.len() == 1 || work < PAR_MIN_WORK {
        jobs.into_iter().for_each(|(item, r0, out)| run(item, r0, out));
    } else {
        jobs.into_par_iter().for_each(|(item, r0, out)| run(item, r0, out));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::cpu::testing::{assert_close, values};

    /// `Σ_k a[i, k] b[k, j]` in f64, item by item (or summed over the batch).
    fn naive(batch: usize, a: &Stack, b: &Stack, sum: bool) -> Vec<f32> {
        let (m, k, n) = (a.rows, a.cols, b.cols);
        let items = if sum { 1 } else { batch };
        let mut out = vec![0.0f64; items * m * n];
        for it in 0..batch {
            let o = if sum { 0 } else { it * m * n };
            for i in 0..m {
                for j in 0..n {
                    let s: f64 = (0..k)
                        .map(|q| {
                            let x = a.data[it * a.batch_stride + i * a.rs + q * a.cs] as f64;
                            x * b.data[it * b.batch_stride + q * b.rs + j * b.cs] as f64
                        })
                        .sum();
                    out[o + i * n + j] += s;
                }
            }
        }
        out.into_iter().map(|v| v as f32).collect()
    }

    #[test]
    fn split_products_equal_the_naive_sum_for_every_sharing_and_transpose() {
        // Small (one task) and large enough to be cut (m = 70: blocks of 48 and 22 rows
        // with two threads), shared and per-item operands, transposed views, summed batches,
        // and accumulation into what dst holds.
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        for (m, k, n) in [(5, 3, 4), (70, 150, 120)] {
            for (a_shared, b_shared, sum, a_t) in [
                (false, false, false, false),
                (true, false, false, false),
                (false, true, false, true),
                (false, false, true, false),
                (true, false, true, true),
            ] {
                let batch = 3;
                let a_data = values(if a_shared { m * k } else { batch * m * k }, 1);
                let b_data = values(if b_shared { k * n } else { batch * k * n }, 2);
                let a = if a_t {
                    Stack::row_major(&a_data, k, m, a_shared).t()
                } else {
                    Stack::row_major(&a_data, m, k, a_shared)
                };
                let b = Stack::row_major(&b_data, k, n, b_shared);
                let want = naive(batch, &a, &b, sum);
                let what = format!("{m}×{k}×{n}, shared {a_shared}/{b_shared}, sum {sum}, a_t {a_t}");
                let mut got = vec![f32::NAN; want.len()];
                pool.install(|| par_matmul(&mut got, batch, a, b, sum, false));
                assert_close(&got, &want, 1e-5, &what);
                // acc adds the same product again.
                pool.install(|| par_matmul(&mut got, batch, a, b, sum, true));
                let twice: Vec<f32> = want.iter().map(|v| 2.0 * v).collect();
                assert_close(&got, &twice, 1e-5, &format!("{what}, acc"));
            }
        }
    }

    #[test]
    fn the_thread_count_does_not_change_a_single_bit() {
        // k below the depth block (512): the GEMM's summation order is fixed, so any
        // difference would come from the cut or the batch sum.
        let (m, k, n, batch) = (100, 64, 90, 2);
        let a_data = values(m * k, 3);
        let b_data = values(batch * k * n, 4);
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let mut out = vec![0.0f32; m * n];
            let (a, b) = (
                Stack::row_major(&a_data, m, k, true),
                Stack::row_major(&b_data, k, n, false),
            );
            pool.install(|| par_matmul(&mut out, batch, a, b, true, false));
            out
        };
        let one = run(1);
        assert_eq!(run(2), one);
        assert_eq!(run(5), one);
    }
}
