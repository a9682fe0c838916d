//! The channel LayerNorm as one burn operation on the CubeCL back-ends (CUDA, wgpu), with a
//! hand-written backward (the kernels: [`super::cube::layernorm`]). The plain cube device
//! runs the forward alone; the autodiff cube device also records one graph node whose
//! backward returns the gradients of the input, the weight and the bias.

use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Cube, Dispatch, backend_extension};
use burn::tensor::Tensor;
use burn_cubecl::tensor::CubeTensor;

use super::cube::layernorm::{self, Stats};

/// ActionFormer's LayerNorm over the channels of `[B, C, T]`.
#[backend_extension(Cube, Autodiff)]
pub trait ChannelLayerNormOps: burn::backend::Backend {
    /// `(x − μ)/√(σ² + ε) · w + b` per (b, t) over the C channels of `x` `[B, C, T]`, with
    /// `w`, `b` `[C]`.
    fn channel_layer_norm(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        b: FloatTensor<Self>,
        eps: f32,
    ) -> FloatTensor<Self>;
}

impl ChannelLayerNormOps for Cube {
    fn channel_layer_norm(x: CubeTensor, w: CubeTensor, b: CubeTensor, eps: f32) -> CubeTensor {
        layernorm::forward(x, w, b, eps).0
    }
}

/// What the backward needs.
#[derive(Debug)]
struct NormSaved {
    x: CubeTensor,
    w: CubeTensor,
    stats: Stats,
}

/// The backward node of [`ChannelLayerNormOps::channel_layer_norm`].
#[derive(Debug)]
struct NormBackward;

impl Backward<Cube, 3> for NormBackward {
    type State = Arc<NormSaved>;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let [node_x, node_w, node_b] = ops.parents;
        let dy = grads.consume::<Cube>(&ops.node);
        let s = ops.state;
        let [dx, dw, db] = layernorm::backward(dy, s.x.clone(), s.w.clone(), &s.stats);
        for (node, grad) in [(node_x, dx), (node_w, dw), (node_b, db)] {
            if let Some(node) = node {
                grads.register::<Cube>(node.id, grad);
            }
        }
    }
}

impl<C: CheckpointStrategy> ChannelLayerNormOps for Autodiff<Cube, C> {
    fn channel_layer_norm(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        b: FloatTensor<Self>,
        eps: f32,
    ) -> FloatTensor<Self> {
        match NormBackward
            .prepare::<C>([x.node(), w.node(), b.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (xp, wp) = (x.primitive().clone(), w.primitive().clone());
                let (out, stats) = layernorm::forward(xp.clone(), wp.clone(), b.primitive().clone(), eps);
                prep.finish(Arc::new(NormSaved { x: xp, w: wp, stats }), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(<Cube as ChannelLayerNormOps>::channel_layer_norm(
                x.into_primitive(),
                w.into_primitive(),
                b.into_primitive(),
                eps,
            )),
        }
    }
}

/// The norm through the dispatch back-end (see [`ChannelLayerNormOps`]).
///
/// # Shapes
/// - x: `[B, C, T]`; w, b: `[C]`
/// - output: `[B, C, T]`
pub(super) fn channel_layer_norm(x: Tensor<3>, w: Tensor<1>, b: Tensor<1>, eps: f32) -> Tensor<3> {
    Tensor::from_dispatch(<Dispatch as ChannelLayerNormOps>::channel_layer_norm(
        x.into_dispatch(),
        w.into_dispatch(),
        b.into_dispatch(),
        eps,
    ))
}
