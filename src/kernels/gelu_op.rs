//! GELU (the transformer's MLP activation, SPEC §3.3) as one burn operation on the flex CPU
//! back-end with a hand-written backward: burn's runs several element-wise passes around a
//! scalar `erf` forward, and more backward (~5 % of a training step). The maths is
//! [`super::cpu::simd::gelu_in_place`] and [`super::cpu::simd::gelu_backward`].

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Dispatch, Flex, backend_extension};
use burn::tensor::Tensor;

use super::cpu::simd;
use super::flex_io::{tensor, values};

/// The fused GELU.
#[backend_extension(Flex, Autodiff)]
pub trait GeluOps: burn::backend::Backend {
    /// `x/2 · (1 + erf(x/√2))`, element-wise.
    fn gelu_fused(x: FloatTensor<Self>) -> FloatTensor<Self>;
}

fn shape_of(x: &FlexTensor) -> Vec<usize> {
    x.layout().shape().as_slice().to_vec()
}

impl GeluOps for Flex {
    fn gelu_fused(x: FlexTensor) -> FlexTensor {
        let mut v = values(&x).into_owned();
        simd::gelu_in_place(&mut v);
        tensor(v, shape_of(&x))
    }
}

#[derive(Debug)]
struct GeluBackward;

impl Backward<Flex, 1> for GeluBackward {
    /// The input (a shared buffer, not a copy).
    type State = FlexTensor;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let [node_x] = ops.parents;
        let grad = grads.consume::<Flex>(&ops.node);
        if let Some(node) = node_x {
            let x = &ops.state;
            let (xv, gv) = (values(x), values(&grad));
            let mut dx = vec![0.0f32; xv.len()];
            simd::gelu_backward(&xv, &gv, &mut dx);
            grads.register::<Flex>(node.id, tensor(dx, shape_of(x)));
        }
    }
}

impl<C: CheckpointStrategy> GeluOps for Autodiff<Flex, C> {
    fn gelu_fused(x: FloatTensor<Self>) -> FloatTensor<Self> {
        match GeluBackward.prepare::<C>([x.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let xp = x.primitive().clone();
                let out = <Flex as GeluOps>::gelu_fused(xp.clone());
                prep.finish(xp, out)
            }
            OpsKind::UnTracked(prep) => prep.finish(<Flex as GeluOps>::gelu_fused(x.into_primitive())),
        }
    }
}

/// The fused GELU on a tensor of a flex device, with or without autodiff.
///
/// # Shapes
/// - x: any; output: as x
pub(super) fn gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as GeluOps>::gelu_fused(x.into_dispatch()))
}

#[cfg(test)]
mod tests {
    use burn::tensor::activation::gelu as burn_gelu;
    use burn::tensor::{Device, Distribution};

    fn vec_of<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().try_to_vec::<f32>().unwrap()
    }

    use super::*;

    #[test]
    fn fused_gelu_matches_burns_forward_and_backward() {
        let dev = Device::flex().autodiff();
        dev.seed(17);
        let x = Tensor::<3>::random([2, 7, 33], Distribution::Normal(0.0, 2.0), &dev);
        let r = Tensor::<3>::random([2, 7, 33], Distribution::Uniform(-1.0, 1.0), &dev);
        let run = |fused: bool| {
            let x = x.clone().detach().require_grad();
            let y = if fused { gelu(x.clone()) } else { burn_gelu(x.clone()) };
            let g = (y.clone() * r.clone()).sum().backward();
            (vec_of(y.inner()), vec_of(x.grad(&g).unwrap()))
        };
        let ((y, dx), (y0, dx0)) = (run(true), run(false));
        let close = |a: &[f32], b: &[f32], what: &str| {
            assert_eq!(a.len(), b.len());
            for (p, q) in a.iter().zip(b) {
                assert!((p - q).abs() <= 2e-6 * (1.0 + q.abs()), "{what}: {p} vs {q}");
            }
        };
        close(&y, &y0, "forward");
        close(&dx, &dx0, "gradient");
        assert!(dx.iter().any(|v| v.abs() > 0.5) && y.iter().any(|v| *v < -0.1));
    }
}
