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
