//! Training-mode BatchNorm2d followed by ReLU as one burn operation on the flex CPU back-end,
//! with a hand-written backward (the spatial-attention stack, SPEC §3.1 step 2); the
//! arithmetic is [`super::cpu::batchnorm`].
//!
//! Composed from tensor ops, the batch statistics, the normalisation, the affine map and the
//! ReLU over the `[B·T, 16, 64, 64]` activations cost a dozen passes over 67 MB forward and
//! more backward, each into a freshly allocated buffer. Here the statistics take two passes,
//! the forward one more, and the backward two, all in place of the chain of graph nodes.

use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, AutodiffBackend, Dispatch, Flex, backend_extension};
use burn::nn::BatchNorm;
use burn::tensor::Tensor;

use super::cpu::batchnorm::{self, Affine, BnDims};
use super::flex_io::{tensor, values};

/// Batch statistics and the fused normalisation.
#[backend_extension(Flex, Autodiff)]
pub trait BatchNormOps: burn::backend::Backend {
    /// Per-channel mean and biased variance of x `[N, C, H, W]`, as `[2, C]`. Never tracked.
    fn channel_moments(x: FloatTensor<Self>) -> FloatTensor<Self>;

    /// `((x − mean) / sqrt(var + eps)) · gamma + beta`, then a ReLU when `relu`, with
    /// `moments` `[2, C]` = (mean, var). Inference passes the running statistics. When the
    /// result is tracked, `moments` must be [`BatchNormOps::channel_moments`] of this very
    /// `x`: the backward differentiates through the batch statistics (as PyTorch's
    /// training-mode BatchNorm does), not through `moments`.
    fn batch_norm_apply(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        moments: FloatTensor<Self>,
        eps: f64,
        relu: bool,
    ) -> FloatTensor<Self>;
}

/// Sizes of an `[N, C, H, W]` flex tensor.
fn dims_of(x: &FlexTensor) -> BnDims {
    let s = x.layout().shape();
    assert!(s.num_dims() == 4, "BatchNorm2d input must be [N, C, H, W], got {s:?}");
    BnDims {
        n: s[0],
        c: s[1],
        plane: s[2] * s[3],
    }
}

fn moments_tensor(x: &FlexTensor) -> FlexTensor {
    let d = dims_of(x);
    let (mean, var) = batchnorm::moments(&values(x), d);
    let v: Vec<f32> = mean.iter().chain(&var).map(|&v| v as f32).collect();
    tensor(v, vec![2, d.c])
}

/// The f64 moments back from the `[2, C]` tensor (the forward's own, rounded once to f32).
fn affine_of(moments: &FlexTensor, gamma: &[f32], beta: &[f32], eps: f64, c: usize) -> Affine {
    let m = values(moments);
    assert!(
        m.len() == 2 * c && gamma.len() == c && beta.len() == c,
        "BatchNorm2d parameters for {c} channels: moments {}, gamma {}, beta {}",
        m.len(),
        gamma.len(),
        beta.len()
    );
    let mean: Vec<f64> = m[..c].iter().map(|&v| v as f64).collect();
    let var: Vec<f64> = m[c..].iter().map(|&v| v as f64).collect();
    Affine::new(&mean, &var, gamma, beta, eps)
}

impl BatchNormOps for Flex {
    fn channel_moments(x: FlexTensor) -> FlexTensor {
        moments_tensor(&x)
    }

    fn batch_norm_apply(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        moments: FlexTensor,
        eps: f64,
        relu: bool,
    ) -> FlexTensor {
        let d = dims_of(&x);
        let a = affine_of(&moments, &values(&gamma), &values(&beta), eps, d.c);
        let s = x.layout().shape().to_vec();
        tensor(batchnorm::forward(&values(&x), &a, d, relu), s)
    }
}

#[derive(Debug)]
struct BnSaved {
    dims: BnDims,
    relu: bool,
    eps: f64,
    /// The input, gamma, beta and moments themselves (shared buffers, not copies).
    x: FlexTensor,
    gamma: FlexTensor,
    beta: FlexTensor,
    moments: FlexTensor,
}

#[derive(Debug)]
struct BnBackward;

impl Backward<Flex, 4> for BnBackward {
    type State = Arc<BnSaved>;

    fn backward(self, ops: Ops<Self::State, 4>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let [node_x, node_gamma, node_beta, _moments] = ops.parents;
        let grad = grads.consume::<Flex>(&ops.node);
        let s = ops.state;
        let d = s.dims;
        let gamma = values(&s.gamma);
        let a = affine_of(&s.moments, &gamma, &values(&s.beta), s.eps, d.c);
        let (dx, dgamma, dbeta) = batchnorm::backward(&values(&s.x), &values(&grad), &a, &gamma, d, s.relu);
        if let Some(node) = node_x {
            grads.register::<Flex>(node.id, tensor(dx, s.x.layout().shape().to_vec()));
        }
        if let Some(node) = node_gamma {
            grads.register::<Flex>(node.id, tensor(dgamma, vec![d.c]));
        }
        if let Some(node) = node_beta {
            grads.register::<Flex>(node.id, tensor(dbeta, vec![d.c]));
        }
    }
}

impl<C: CheckpointStrategy> BatchNormOps for Autodiff<Flex, C> {
    fn channel_moments(x: FloatTensor<Self>) -> FloatTensor<Self> {
        <Self as AutodiffBackend>::from_inner(moments_tensor(x.primitive()))
    }

    fn batch_norm_apply(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        moments: FloatTensor<Self>,
        eps: f64,
        relu: bool,
    ) -> FloatTensor<Self> {
        match BnBackward
            .prepare::<C>([x.node(), gamma.node(), beta.node(), moments.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (xp, gp, bp, mp) = (x.primitive(), gamma.primitive(), beta.primitive(), moments.primitive());
                let out =
                    <Flex as BatchNormOps>::batch_norm_apply(xp.clone(), gp.clone(), bp.clone(), mp.clone(), eps, relu);
                let state = BnSaved {
                    dims: dims_of(xp),
                    relu,
                    eps,
                    x: xp.clone(),
                    gamma: gp.clone(),
                    beta: bp.clone(),
                    moments: mp.clone(),
                };
                prep.finish(Arc::new(state), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(<Flex as BatchNormOps>::batch_norm_apply(
                x.into_primitive(),
                gamma.into_primitive(),
                beta.into_primitive(),
                moments.into_primitive(),
                eps,
                relu,
            )),
        }
    }
}

/// Training-mode `bn(x)` (then a ReLU when `relu`) on a flex autodiff device: batch
/// statistics, the running statistics updated as PyTorch does (momentum, unbiased
/// variance), one graph node.
///
/// # Shapes
/// - x: `[N, C, H, W]`
/// - output: `[N, C, H, W]`
pub(super) fn batch_norm_train(bn: &BatchNorm, x: Tensor<4>, relu: bool) -> Tensor<4> {
    let [n, c, h, w] = x.dims();
    let moments = Tensor::<2>::from_dispatch(<Dispatch as BatchNormOps>::channel_moments(x.clone().into_dispatch())); // [2, C]
    let y = Tensor::from_dispatch(<Dispatch as BatchNormOps>::batch_norm_apply(
        x.into_dispatch(),
        bn.gamma.val().into_dispatch(),
        bn.beta.val().into_dispatch(),
        moments.clone().into_dispatch(),
        bn.epsilon,
        relu,
    ));
    let count = (n * h * w) as f64;
    let mom = bn.momentum;
    let device = y.device();
    let mean = moments.clone().slice([0..1, 0..c]).reshape([c]).detach();
    let unbiased = moments
        .slice([1..2, 0..c])
        .reshape([c])
        .mul_scalar(count / (count - 1.0).max(1.0))
        .detach();
    let rm = bn.running_mean.value_sync().to_device(&device);
    let rv = bn.running_var.value_sync().to_device(&device);
    bn.running_mean
        .update(rm.mul_scalar(1.0 - mom).add(mean.mul_scalar(mom)).detach());
    bn.running_var
        .update(rv.mul_scalar(1.0 - mom).add(unbiased.mul_scalar(mom)).detach());
    y
}

/// Inference-mode `bn(x)` (then a ReLU when `relu`) on a plain flex device: the running
/// statistics in one pass.
///
/// # Shapes
/// - x: `[N, C, H, W]`
/// - output: `[N, C, H, W]`
pub(super) fn batch_norm_eval(bn: &BatchNorm, x: Tensor<4>, relu: bool) -> Tensor<4> {
    let device = x.device();
    let moments = Tensor::stack::<2>(
        vec![
            bn.running_mean.value_sync().to_device(&device),
            bn.running_var.value_sync().to_device(&device),
        ],
        0,
    ); // [2, C]
    Tensor::from_dispatch(<Dispatch as BatchNormOps>::batch_norm_apply(
        x.into_dispatch(),
        bn.gamma.val().into_dispatch(),
        bn.beta.val().into_dispatch(),
        moments.into_dispatch(),
        bn.epsilon,
        relu,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::long_term::batch_norm_2d;
    use burn::nn::BatchNormConfig;
    use burn::tensor::activation::relu;
    use burn::tensor::{Device, Distribution};

    fn vec_of<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().try_to_vec::<f32>().unwrap()
    }

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
    }

    /// The fused op against the tensor-op BatchNorm (+ ReLU): outputs, running statistics
    /// and the gradients of x, gamma and beta, with a frame count that is not a multiple of
    /// the chunk and a plane that is not a multiple of the lanes.
    #[test]
    fn fused_batch_norm_matches_the_tensor_op_version() {
        let dev = Device::flex().autodiff();
        dev.seed(11);
        for relu_on in [true, false] {
            let fused_bn = BatchNormConfig::new(3).init(&dev);
            let plain_bn = BatchNormConfig::new(3).init(&dev);
            // Non-trivial affine parameters, the same in both.
            let gamma = Tensor::<1>::from_floats([0.5, -1.5, 2.0], &dev);
            let beta = Tensor::<1>::from_floats([0.1, 0.0, -0.3], &dev);
            let fused_bn = BatchNorm {
                gamma: fused_bn.gamma.map(|_| gamma.clone().require_grad()),
                beta: fused_bn.beta.map(|_| beta.clone().require_grad()),
                ..fused_bn
            };
            let plain_bn = BatchNorm {
                gamma: plain_bn.gamma.map(|_| gamma.clone().require_grad()),
                beta: plain_bn.beta.map(|_| beta.clone().require_grad()),
                ..plain_bn
            };
            let x = Tensor::<4>::random([11, 3, 5, 7], Distribution::Normal(1.0, 2.0), &dev);
            let r = Tensor::<4>::random([11, 3, 5, 7], Distribution::Uniform(-1.0, 1.0), &dev);
            let run = |bn: &BatchNorm, fused: bool| {
                let x = x.clone().detach().require_grad();
                let y = if fused {
                    batch_norm_train(bn, x.clone(), relu_on)
                } else {
                    let y = batch_norm_2d(bn, x.clone());
                    if relu_on { relu(y) } else { y }
                };
                let g = (y.clone() * r.clone()).sum().backward();
                (
                    vec_of(y.inner()),
                    vec_of(x.grad(&g).unwrap()),
                    vec_of(bn.gamma.grad(&g).unwrap()),
                    vec_of(bn.beta.grad(&g).unwrap()),
                    vec_of(bn.running_mean.value_sync()),
                    vec_of(bn.running_var.value_sync()),
                )
            };
            let f = run(&fused_bn, true);
            let p = run(&plain_bn, false);
            assert!(max_diff(&f.0, &p.0) < 1e-5, "relu {relu_on}: y");
            assert!(max_diff(&f.1, &p.1) < 1e-5, "relu {relu_on}: dx");
            assert!(max_diff(&f.2, &p.2) < 1e-4, "relu {relu_on}: dgamma");
            assert!(max_diff(&f.3, &p.3) < 1e-4, "relu {relu_on}: dbeta");
            assert!(max_diff(&f.4, &p.4) < 1e-6, "relu {relu_on}: running mean");
            assert!(max_diff(&f.5, &p.5) < 1e-5, "relu {relu_on}: running var");
            if relu_on {
                assert!(f.0.contains(&0.0) && f.0.iter().any(|&v| v > 0.0));
            }
        }
    }

    #[test]
    fn eval_mode_uses_the_running_statistics_like_burns_batch_norm() {
        let dev = Device::flex();
        let mut bn = BatchNormConfig::new(2).init(&dev);
        bn.running_mean = burn::module::RunningState::new(Tensor::<1>::from_floats([0.5, -1.0], &dev));
        bn.running_var = burn::module::RunningState::new(Tensor::<1>::from_floats([4.0, 0.25], &dev));
        bn.gamma = bn.gamma.map(|_| Tensor::<1>::from_floats([2.0, -1.0], &dev));
        let x = Tensor::<4>::random([3, 2, 4, 5], Distribution::Normal(0.0, 2.0), &dev);
        let want = vec_of(relu(bn.forward(x.clone())));
        let got = vec_of(batch_norm_eval(&bn, x, true));
        assert!(max_diff(&got, &want) < 1e-5);
        assert!(got.contains(&0.0) && got.iter().any(|&v| v > 1.0));
    }
}
