//! GELU as one burn operation on the CubeCL back-ends (CUDA, wgpu), with a hand-written
//! backward (the kernels: [`super::cube::gelu`]), as [`super::gelu_op`] is on flex.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Cube, Dispatch, backend_extension};
use burn::tensor::Tensor;
use burn_cubecl::tensor::CubeTensor;

use super::cube::gelu;

/// The fused GELU on a CubeCL device.
#[backend_extension(Cube, Autodiff)]
pub trait CubeGeluOps: burn::backend::Backend {
    /// `x/2 · (1 + erf(x/√2))`, element-wise.
    fn cube_gelu(x: FloatTensor<Self>) -> FloatTensor<Self>;
}

impl CubeGeluOps for Cube {
    fn cube_gelu(x: CubeTensor) -> CubeTensor {
        gelu::forward(x)
    }
}

/// The backward node of [`CubeGeluOps::cube_gelu`]; its state is the input.
#[derive(Debug)]
struct GeluBackward;

impl Backward<Cube, 1> for GeluBackward {
    type State = CubeTensor;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let [node] = ops.parents;
        let dy = grads.consume::<Cube>(&ops.node);
        if let Some(node) = node {
            grads.register::<Cube>(node.id, gelu::backward(ops.state, dy));
        }
    }
}

impl<C: CheckpointStrategy> CubeGeluOps for Autodiff<Cube, C> {
    fn cube_gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        match GeluBackward.prepare::<C>([x.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let xp = x.primitive().clone();
                prep.finish(xp.clone(), gelu::forward(xp))
            }
            OpsKind::UnTracked(prep) => prep.finish(gelu::forward(x.into_primitive())),
        }
    }
}

/// GELU through the dispatch back-end (see [`CubeGeluOps`]).
///
/// # Shapes
/// - x: any; output: as x
pub(super) fn gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as CubeGeluOps>::cube_gelu(x.into_dispatch()))
}

#[cfg(test)]
mod tests {
    /// The fused GELU on wgpu against flex's fused GELU (exact `erf` forward and derivative,
    /// tested against `f64` series there), value and gradient, on values far into both tails;
    /// one launch each way. (burn's own backward is the derivative of the tanh approximation,
    /// off by ~2e-4 relative: PyTorch's exact GELU is what the paper trains.)
    #[cfg(feature = "wgpu")]
    #[test]
    fn cube_gelu_matches_the_exact_gelu_with_its_gradient() {
        use burn::tensor::{Device, Distribution, Tensor, TensorData};

        let gpu = Device::wgpu(burn::tensor::DeviceKind::DefaultDevice).autodiff();
        let cpu = Device::flex().autodiff();
        cpu.seed(8);
        let shape = [3, 17, 41];
        let x = Tensor::<3>::random(shape, Distribution::Normal(0.0, 3.0), &cpu).into_data();
        let r = Tensor::<3>::random(shape, Distribution::Uniform(-1.0, 1.0), &cpu).into_data();
        let v = |t: Tensor<3>| t.into_data().try_to_vec::<f32>().unwrap();
        let run = |x: &TensorData, dev: &Device| {
            let x = Tensor::<3>::from_data(x.clone(), dev).require_grad();
            let y = crate::kernels::gelu(x.clone());
            let g = (y.clone() * Tensor::<3>::from_data(r.clone(), dev)).sum().backward();
            (v(y.inner()), v(x.grad(&g).unwrap()))
        };
        let (got, want) = (run(&x, &gpu), run(&x, &cpu));
        for (what, p, q) in [("y", &got.0, &want.0), ("dx", &got.1, &want.1)] {
            for (i, (a, b)) in p.iter().zip(q).enumerate() {
                assert!((a - b).abs() <= 2e-6 * (1.0 + b.abs()), "{what}[{i}]: {a} vs {b}");
            }
        }
        let (_, _, launched) = crate::bench::count_by_kernel(&gpu, || Ok::<_, ()>(run(&x, &gpu))).unwrap();
        let of = |name: &str| launched.by_kernel.iter().find(|(k, _)| k == name).map(|(_, n)| *n);
        assert_eq!(
            [of("GeluKernel"), of("GeluBackwardKernel")],
            [Some(1); 2],
            "{launched:?}"
        );
        // The plain device runs the same forward, burn's exact one.
        let plain = Tensor::<3>::from_data(x, &gpu.clone().without_autodiff());
        let (a, b) = (
            v(crate::kernels::gelu(plain.clone())),
            v(burn::tensor::activation::gelu(plain)),
        );
        assert!(a.iter().zip(&b).all(|(p, q)| (p - q).abs() <= 1e-5 * (1.0 + q.abs())));
    }
}
