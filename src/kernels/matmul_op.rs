//! A batched matrix product as one burn operation on the flex CPU back-end, with a
//! hand-written backward, both cut into one task per thread ([`super::cpu::gemm::par_matmul`]).
//!
//! Why: burn's flex matmul hands large products to the `gemm` crate's own threading, which
//! forks and joins once per depth block; on a 2-core VM the second core was often asleep at
//! those hand-overs, and the dense Conv1d layers (embedding, heads, the transformer's
//! pointwise convs) and the contrastive projection often ran at one core's speed (issue #19). The products here are the same `gemm` calls, one per task.

use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Dispatch, Flex, backend_extension};
use burn::tensor::Tensor;

use super::cpu::gemm::{Stack, par_matmul};
use super::flex_io::{tensor, values};

/// The batched product.
#[backend_extension(Flex, Autodiff)]
pub trait MatmulOps: burn::backend::Backend {
    /// `lhs · rhs` item by item: lhs `[B or 1, M, K]`, rhs `[B or 1, K, N]` (a batch of 1
    /// is shared by every item) → `[B, M, N]`.
    fn matmul_split(lhs: FloatTensor<Self>, rhs: FloatTensor<Self>) -> FloatTensor<Self>;
}

/// Sizes of a product.
#[derive(Debug, Clone, Copy)]
struct Dims {
    batch: usize,
    /// Whether lhs / rhs is one matrix shared by the batch.
    lhs_shared: bool,
    rhs_shared: bool,
    m: usize,
    k: usize,
    n: usize,
}

fn dims_of(lhs: &FlexTensor, rhs: &FlexTensor) -> Dims {
    let (ls, rs) = (lhs.layout().shape(), rhs.layout().shape());
    assert!(
        ls.num_dims() == 3 && rs.num_dims() == 3 && ls[2] == rs[1] && (ls[0] == rs[0] || ls[0] == 1 || rs[0] == 1),
        "matmul shapes: lhs {ls:?}, rhs {rs:?}"
    );
    let batch = ls[0].max(rs[0]);
    Dims {
        batch,
        lhs_shared: ls[0] == 1 && batch > 1,
        rhs_shared: rs[0] == 1 && batch > 1,
        m: ls[1],
        k: ls[2],
        n: rs[2],
    }
}

fn forward(lhs: &FlexTensor, rhs: &FlexTensor) -> (FlexTensor, Dims) {
    let d = dims_of(lhs, rhs);
    let (a, b) = (values(lhs), values(rhs));
    let mut out = vec![0.0f32; d.batch * d.m * d.n];
    par_matmul(
        &mut out,
        d.batch,
        Stack::row_major(&a, d.m, d.k, d.lhs_shared),
        Stack::row_major(&b, d.k, d.n, d.rhs_shared),
        false,
        false,
    );
    (tensor(out, vec![d.batch, d.m, d.n]), d)
}

impl MatmulOps for Flex {
    fn matmul_split(lhs: FlexTensor, rhs: FlexTensor) -> FlexTensor {
        forward(&lhs, &rhs).0
    }
}

/// The operands (shared buffers, not copies), for the backward.
#[derive(Debug)]
struct MatmulSaved {
    dims: Dims,
    lhs: FlexTensor,
    rhs: FlexTensor,
}

#[derive(Debug)]
struct MatmulBackward;

impl Backward<Flex, 2> for MatmulBackward {
    type State = Arc<MatmulSaved>;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let [node_lhs, node_rhs] = ops.parents;
        let grad = grads.consume::<Flex>(&ops.node);
        let s = ops.state;
        let d = s.dims;
        let dc = values(&grad);
        let dc = Stack::row_major(&dc, d.m, d.n, false);
        // One operand's gradient `[items, rows, cols]` = x_i · y_i, summed over the batch
        // when that operand was shared (one item).
        let grad_of = |shared: bool, (rows, cols): (usize, usize), x: Stack, y: Stack| {
            let items = if shared { 1 } else { d.batch };
            let mut g = vec![0.0f32; items * rows * cols];
            par_matmul(&mut g, d.batch, x, y, shared, false);
            tensor(g, vec![items, rows, cols])
        };
        if let Some(node) = node_lhs {
            // dA_i = dC_i · B_iᵀ.
            let b = values(&s.rhs);
            let bt = Stack::row_major(&b, d.k, d.n, d.rhs_shared).t();
            grads.register::<Flex>(node.id, grad_of(d.lhs_shared, (d.m, d.k), dc, bt));
        }
        if let Some(node) = node_rhs {
            // dB_i = A_iᵀ · dC_i.
            let a = values(&s.lhs);
            let at = Stack::row_major(&a, d.m, d.k, d.lhs_shared).t();
            grads.register::<Flex>(node.id, grad_of(d.rhs_shared, (d.k, d.n), at, dc));
        }
    }
}

impl<C: CheckpointStrategy> MatmulOps for Autodiff<Flex, C> {
    fn matmul_split(lhs: FloatTensor<Self>, rhs: FloatTensor<Self>) -> FloatTensor<Self> {
        match MatmulBackward
            .prepare::<C>([lhs.node(), rhs.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (lp, rp) = (lhs.primitive(), rhs.primitive());
                let (out, dims) = forward(lp, rp);
                prep.finish(
                    Arc::new(MatmulSaved {
                        dims,
                        lhs: lp.clone(),
                        rhs: rp.clone(),
                    }),
                    out,
                )
            }
            OpsKind::UnTracked(prep) => prep.finish(<Flex as MatmulOps>::matmul_split(
                lhs.into_primitive(),
                rhs.into_primitive(),
            )),
        }
    }
}

/// The batched product on tensors of a flex device (see [`MatmulOps`]).
///
/// # Shapes
/// - lhs: `[B or 1, M, K]`, rhs: `[B or 1, K, N]`
/// - output: `[B, M, N]`
pub(super) fn matmul(lhs: Tensor<3>, rhs: Tensor<3>) -> Tensor<3> {
    Tensor::from_dispatch(<Dispatch as MatmulOps>::matmul_split(
        lhs.into_dispatch(),
        rhs.into_dispatch(),
    ))
}

#[cfg(test)]
mod tests {
    use crate::kernels;
    use burn::tensor::{Device, Distribution, Tensor};

    fn vals(t: Tensor<3>) -> Vec<f32> {
        t.into_data().try_to_vec::<f32>().unwrap()
    }

    fn assert_near(a: Tensor<3>, b: Tensor<3>, tol: f32, what: &str) {
        assert_eq!(a.dims(), b.dims(), "{what}");
        let (a, b) = (vals(a), vals(b));
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            assert!((x - y).abs() <= tol * (1.0 + y.abs()), "{what}[{i}]: {x} vs {y}");
        }
    }

    #[test]
    fn the_split_product_matches_burns_matmul_forward_and_backward() {
        // Shared lhs (a conv weight), shared rhs (a Linear weight), neither; one size small
        // enough to run in one task and one that is cut; a transposed (strided) operand.
        let dev = Device::flex().autodiff();
        dev.seed(17);
        for (lb, rb, m, k, n) in [
            (1, 2, 4, 3, 5),
            (1, 2, 70, 150, 120),
            (2, 1, 90, 80, 140),
            (3, 3, 33, 20, 17),
        ] {
            let lhs = Tensor::<3>::random([lb, m, k], Distribution::Uniform(-1.0, 1.0), &dev);
            let rhs = Tensor::<3>::random([rb, n, k], Distribution::Uniform(-1.0, 1.0), &dev);
            let b = lb.max(rb);
            let r = Tensor::<3>::random([b, m, n], Distribution::Uniform(-1.0, 1.0), &dev);
            let run = |ours: bool| {
                let (l, x) = (lhs.clone().detach().require_grad(), rhs.clone().detach().require_grad());
                let xt = x.clone().swap_dims(1, 2); // [rb, K, N], a strided view
                let y = if ours {
                    kernels::matmul(l.clone(), xt)
                } else {
                    l.clone().matmul(xt)
                };
                let g = (y.clone() * r.clone()).sum().backward();
                (y.inner(), l.grad(&g).unwrap(), x.grad(&g).unwrap())
            };
            let (y1, dl1, dr1) = run(true);
            let (y0, dl0, dr0) = run(false);
            let what = format!("[{lb}, {m}, {k}] · [{rb}, {k}, {n}]");
            assert_near(y1, y0, 1e-5, &format!("{what}: output"));
            assert_near(dl1, dl0, 1e-5, &format!("{what}: d lhs"));
            assert_near(dr1, dr0, 1e-5, &format!("{what}: d rhs"));
        }
    }

    #[test]
    fn linear_through_the_split_product_equals_burns_linear() {
        let dev = Device::flex();
        dev.seed(18);
        let lin = burn::nn::LinearConfig::new(40, 24).init(&dev);
        let x = Tensor::<3>::random([2, 30, 40], Distribution::Uniform(-1.0, 1.0), &dev);
        assert_near(kernels::linear(&lin, x.clone()), lin.forward(x), 1e-5, "linear");
    }
}
