//! Training-mode BatchNorm2d followed by ReLU as one burn operation on the flex CPU back-end,
//! with a hand-written backward (the spatial-attention stack, SPEC §3.1 step 2).
//!
//! Composed from tensor ops, the batch statistics, the normalisation, the affine map and the
//! ReLU over the `[B·T, 16, 64, 64]` activations cost a dozen passes over 67 MB forward and
//! more backward, each into a freshly allocated buffer. Here the statistics take two passes,
//! the forward one more, and the backward two, all in place of the chain of graph nodes.
//! Statistics are summed in `f64` over fixed chunks of frames, so the result does not depend
//! on the thread count.

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
use rayon::prelude::*;

use super::convlstm_op::{tensor, values};

/// Frames per parallel work item; fixed so the sums do not depend on the thread count.
const FRAME_CHUNK: usize = 8;
/// Independent `f32` accumulators per plane (vectorisable), added into `f64` per plane.
const LANES: usize = 16;

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

/// Sizes: N frames of C channel planes of `plane` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BnDims {
    pub n: usize,
    pub c: usize,
    pub plane: usize,
}

impl BnDims {
    fn of(x: &FlexTensor) -> Self {
        let s = x.layout().shape();
        assert!(s.num_dims() == 4, "BatchNorm2d input must be [N, C, H, W], got {s:?}");
        Self {
            n: s[0],
            c: s[1],
            plane: s[2] * s[3],
        }
    }

    /// Values per channel, N·H·W.
    fn count(&self) -> usize {
        self.n * self.plane
    }
}

/// `Σ f(x)` over a plane: `LANES` `f32` partial sums (vectorised), then one `f64` total.
#[inline]
fn plane_sum(xs: &[f32], f: impl Fn(f32) -> f32) -> f64 {
    let mut acc = [0f32; LANES];
    let mut chunks = xs.chunks_exact(LANES);
    for ch in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(ch) {
            *a += f(v);
        }
    }
    let tail: f64 = chunks.remainder().iter().map(|&v| f(v) as f64).sum();
    acc.iter().map(|&a| a as f64).sum::<f64>() + tail
}

/// `v` where `keep`, else 0, without a branch: the ReLU mask is data-dependent and random,
/// and a mispredicted branch per value cost three times the whole pass.
#[inline]
fn masked(v: f32, keep: bool) -> f32 {
    f32::from_bits(v.to_bits() & (keep as u32).wrapping_neg())
}

/// `(Σ g, Σ g·f(x))` over a plane, `g = dy` where `keep(x)`, else 0: as [`plane_sum`].
#[inline]
fn plane_sum2(xs: &[f32], dys: &[f32], keep: impl Fn(f32) -> bool, f: impl Fn(f32) -> f32) -> [f64; 2] {
    let (mut a0, mut a1) = ([0f32; LANES], [0f32; LANES]);
    let mut cx = xs.chunks_exact(LANES);
    let mut cd = dys.chunks_exact(LANES);
    for (xc, dc) in (&mut cx).zip(&mut cd) {
        for l in 0..LANES {
            let g = masked(dc[l], keep(xc[l]));
            a0[l] += g;
            a1[l] += g * f(xc[l]);
        }
    }
    let mut total = [
        a0.iter().map(|&a| a as f64).sum::<f64>(),
        a1.iter().map(|&a| a as f64).sum::<f64>(),
    ];
    for (&x, &dy) in cx.remainder().iter().zip(cd.remainder()) {
        let g = masked(dy, keep(x));
        total[0] += g as f64;
        total[1] += (g * f(x)) as f64;
    }
    total
}

/// Per-channel sums of `f(frame_channel_plane, index)` over all frames: per chunk of frames
/// in parallel, then the chunks added in order. `K` sums per channel.
fn channel_sums<const K: usize>(d: BnDims, f: impl Fn(usize, usize, usize) -> [f64; K] + Sync) -> Vec<[f64; K]> {
    let chunks = d.n.div_ceil(FRAME_CHUNK);
    let partial: Vec<Vec<[f64; K]>> = (0..chunks)
        .into_par_iter()
        .map(|ci| {
            let mut sums = vec![[0f64; K]; d.c];
            for n in ci * FRAME_CHUNK..((ci + 1) * FRAME_CHUNK).min(d.n) {
                for (c, s) in sums.iter_mut().enumerate() {
                    let v = f(n, c, (n * d.c + c) * d.plane);
                    for k in 0..K {
                        s[k] += v[k];
                    }
                }
            }
            sums
        })
        .collect();
    let mut total = vec![[0f64; K]; d.c];
    for p in &partial {
        for (t, s) in total.iter_mut().zip(p) {
            for k in 0..K {
                t[k] += s[k];
            }
        }
    }
    total
}

/// Per-channel mean and biased variance (two passes: the mean, then centred squares).
pub fn moments(x: &[f32], d: BnDims) -> (Vec<f64>, Vec<f64>) {
    assert_eq!(x.len(), d.n * d.c * d.plane, "BatchNorm input length");
    let count = d.count().max(1) as f64;
    let mean: Vec<f64> = channel_sums::<1>(d, |_, _, off| [plane_sum(&x[off..off + d.plane], |v| v)])
        .iter()
        .map(|s| s[0] / count)
        .collect();
    let var = channel_sums::<1>(d, |_, c, off| {
        let m = mean[c] as f32;
        [plane_sum(&x[off..off + d.plane], |v| (v - m) * (v - m))]
    })
    .iter()
    .map(|s| s[0] / count)
    .collect();
    (mean, var)
}

/// Per-channel `scale = gamma / sqrt(var + eps)` and `shift = beta − mean · scale`, and the
/// `f32` mean and `1 / sqrt(var + eps)`.
struct Affine {
    mean: Vec<f32>,
    inv: Vec<f32>,
    scale: Vec<f32>,
    shift: Vec<f32>,
}

impl Affine {
    fn new(mean: &[f64], var: &[f64], gamma: &[f32], beta: &[f32], eps: f64) -> Self {
        let inv: Vec<f64> = var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
        let scale: Vec<f64> = inv.iter().zip(gamma).map(|(i, &g)| i * g as f64).collect();
        Self {
            mean: mean.iter().map(|&m| m as f32).collect(),
            inv: inv.iter().map(|&i| i as f32).collect(),
            shift: beta
                .iter()
                .zip(mean)
                .zip(&scale)
                .map(|((&b, m), s)| (b as f64 - m * s) as f32)
                .collect(),
            scale: scale.into_iter().map(|s| s as f32).collect(),
        }
    }
}

/// The normalised, affine-mapped (and rectified) values. The backward recomputes the
/// pre-activation with this same expression, so its ReLU mask matches bit for bit.
#[inline]
fn pre_activation(x: f32, scale: f32, shift: f32) -> f32 {
    x * scale + shift
}

fn forward(x: &[f32], a: &Affine, d: BnDims, relu: bool) -> Vec<f32> {
    let mut y = vec![0f32; x.len()];
    let per_frame = d.c * d.plane;
    y.par_chunks_mut(per_frame.max(1))
        .zip(x.par_chunks(per_frame.max(1)))
        .for_each(|(yf, xf)| {
            for c in 0..d.c {
                let (s, t) = (a.scale[c], a.shift[c]);
                let range = c * d.plane..(c + 1) * d.plane;
                for (yo, &xi) in yf[range.clone()].iter_mut().zip(&xf[range]) {
                    let p = pre_activation(xi, s, t);
                    *yo = if relu { p.max(0.0) } else { p };
                }
            }
        });
    y
}

/// Gradients of x, gamma and beta given the output gradient `dy`.
fn backward(x: &[f32], dy: &[f32], a: &Affine, gamma: &[f32], d: BnDims, relu: bool) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    // The gradient reaching the affine output is dy where the ReLU passed it.
    let keep = |x: f32, scale: f32, shift: f32| !relu || pre_activation(x, scale, shift) > 0.0;
    let sums = channel_sums::<2>(d, |_, c, off| {
        let (m, inv, s, t) = (a.mean[c], a.inv[c], a.scale[c], a.shift[c]);
        let r = off..off + d.plane;
        plane_sum2(&x[r.clone()], &dy[r], |v| keep(v, s, t), |v| (v - m) * inv)
    });
    let count = d.count().max(1) as f64;
    let dbeta: Vec<f32> = sums.iter().map(|s| s[0] as f32).collect();
    let dgamma: Vec<f32> = sums.iter().map(|s| s[1] as f32).collect();
    // dx = gamma·inv · (g − Σg/M − x̂ · Σ(g·x̂)/M)
    let mean_g: Vec<f32> = sums.iter().map(|s| (s[0] / count) as f32).collect();
    let mean_gx: Vec<f32> = sums.iter().map(|s| (s[1] / count) as f32).collect();
    let k: Vec<f32> = (0..d.c).map(|c| gamma[c] * a.inv[c]).collect();
    let mut dx = vec![0f32; x.len()];
    let per_frame = d.c * d.plane;
    dx.par_chunks_mut(per_frame.max(1))
        .zip(x.par_chunks(per_frame.max(1)))
        .zip(dy.par_chunks(per_frame.max(1)))
        .for_each(|((df, xf), dyf)| {
            for c in 0..d.c {
                let (m, inv, kc, mg, mgx) = (a.mean[c], a.inv[c], k[c], mean_g[c], mean_gx[c]);
                let (s, t) = (a.scale[c], a.shift[c]);
                let r = c * d.plane..(c + 1) * d.plane;
                for ((o, &x), &dy) in df[r.clone()].iter_mut().zip(&xf[r.clone()]).zip(&dyf[r]) {
                    let g = masked(dy, keep(x, s, t));
                    *o = kc * (g - mg - (x - m) * inv * mgx);
                }
            }
        });
    (dx, dgamma, dbeta)
}

fn moments_tensor(x: &FlexTensor) -> FlexTensor {
    let d = BnDims::of(x);
    let (mean, var) = moments(&values(x), d);
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
        let d = BnDims::of(&x);
        let a = affine_of(&moments, &values(&gamma), &values(&beta), eps, d.c);
        let s = x.layout().shape().to_vec();
        tensor(forward(&values(&x), &a, d, relu), s)
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
        let (dx, dgamma, dbeta) = backward(&values(&s.x), &values(&grad), &a, &gamma, d, s.relu);
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
                    dims: BnDims::of(xp),
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
pub fn batch_norm_train(bn: &BatchNorm, x: Tensor<4>, relu: bool) -> Tensor<4> {
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
pub fn batch_norm_eval(bn: &BatchNorm, x: Tensor<4>, relu: bool) -> Tensor<4> {
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

    #[test]
    fn moments_are_the_mean_and_biased_variance_per_channel() {
        // Two frames, two channels, planes of 3 (channel 0: 1..6, channel 1: constant 7).
        let x = [1.0, 2.0, 3.0, 7.0, 7.0, 7.0, 4.0, 5.0, 6.0, 7.0, 7.0, 7.0];
        let (m, v) = moments(&x, BnDims { n: 2, c: 2, plane: 3 });
        assert_eq!(m, vec![3.5, 7.0]);
        assert!((v[0] - 35.0 / 12.0).abs() < 1e-12 && v[1] == 0.0, "{v:?}");
    }

    /// Finite differences of `Σ r ⊙ bn_relu(x)` against the analytic gradient of x.
    #[test]
    fn backward_matches_finite_differences() {
        let d = BnDims { n: 3, c: 2, plane: 19 };
        let len = d.n * d.c * d.plane;
        let x: Vec<f32> = (0..len).map(|i| ((i * 37 % 23) as f32 - 11.0) / 5.0).collect();
        let r: Vec<f32> = (0..len).map(|i| ((i * 13 % 17) as f32 - 8.0) / 9.0).collect();
        let (gamma, beta) = ([1.3f32, -0.7], [0.2f32, 0.4]);
        let f = |x: &[f32]| -> f64 {
            let (m, v) = moments(x, d);
            let a = Affine::new(&m, &v, &gamma, &beta, 1e-5);
            forward(x, &a, d, true)
                .iter()
                .zip(&r)
                .map(|(y, r)| (*y as f64) * (*r as f64))
                .sum()
        };
        let (m, v) = moments(&x, d);
        let a = Affine::new(&m, &v, &gamma, &beta, 1e-5);
        let (dx, _, _) = backward(&x, &r, &a, &gamma, d, true);
        // Steps small enough not to move any value across the ReLU's kink; values right at
        // the kink are skipped.
        let h = 2e-3f32;
        let plane_c = |i: usize| (i / d.plane) % d.c;
        let mut checked = 0;
        for i in (0..len).step_by(5) {
            if pre_activation(x[i], a.scale[plane_c(i)], a.shift[plane_c(i)]).abs() < 0.05 {
                continue;
            }
            checked += 1;
            let (mut xp, mut xm) = (x.clone(), x.clone());
            xp[i] += h;
            xm[i] -= h;
            let fd = (f(&xp) - f(&xm)) / (2.0 * h as f64);
            assert!((fd - dx[i] as f64).abs() < 2e-3, "x[{i}]: fd {fd}, analytic {}", dx[i]);
        }
        assert!(checked > 15, "{checked}");
    }
}
