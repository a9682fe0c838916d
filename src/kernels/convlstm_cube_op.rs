//! A ConvLSTM layer's recurrence as one burn operation on the CubeCL back-ends (CUDA, wgpu),
//! with a hand-written backward (the kernels: [`super::cube::convlstm`]).
//!
//! The layer is `recurrence(conv(x, wx) + bias, wh)`: the input half is burn's batched conv
//! over all B·T frames (burn records its backward), the recurrence is this operation. The
//! plain cube device runs the forward alone; the autodiff cube device also records one
//! graph node whose backward returns the gradients of the input half's output and of `wh`.

use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::ops::FloatTensorOps;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, AutodiffBackend, Cube, Dispatch, TensorMetadata, backend_extension};
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Shape, Tensor};
use burn_cubecl::tensor::CubeTensor;

use super::LstmWeights;
use super::cube::convlstm::{self, Saved};

/// One ConvLSTM layer's recurrence.
#[backend_extension(Cube, Autodiff)]
pub trait LstmRecurrenceOps: burn::backend::Backend {
    /// Hidden states `[B, T, h, H, W]` from a zero state, given the input half of the gates
    /// `gx` `[B, T, 4h, H, W]` (bias included) and the hidden half's weight `wh`
    /// `[4h, h, k, k]`.
    fn lstm_recurrence(gx: FloatTensor<Self>, wh: FloatTensor<Self>) -> FloatTensor<Self>;

    /// [`Self::lstm_recurrence`] for inference from the state `h0`, `c0` (each `[B, h, H, W]`):
    /// returns the hidden states and the last cell state. Has no backward.
    fn lstm_recurrence_from(
        gx: FloatTensor<Self>,
        wh: FloatTensor<Self>,
        h0: FloatTensor<Self>,
        c0: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);
}

/// A zero state `[B, h, H, W]` for the layer of `gx` and `wh`.
fn zero_state(gx: &CubeTensor, wh: &CubeTensor) -> CubeTensor {
    let (g, w) = (gx.shape(), wh.shape());
    let shape = Shape::from(vec![g[0], w[1], g[3], g[4]]);
    Cube::float_zeros(shape, &gx.device, gx.dtype.into())
}

impl LstmRecurrenceOps for Cube {
    fn lstm_recurrence(gx: CubeTensor, wh: CubeTensor) -> CubeTensor {
        let zero = zero_state(&gx, &wh);
        convlstm::forward(gx, wh, zero.clone(), zero, false).0
    }

    fn lstm_recurrence_from(
        gx: CubeTensor,
        wh: CubeTensor,
        h0: CubeTensor,
        c0: CubeTensor,
    ) -> (CubeTensor, CubeTensor) {
        let (hidden, c_last, _) = convlstm::forward(gx, wh, h0, c0, false);
        (hidden, c_last)
    }
}

/// What the backward needs.
#[derive(Debug)]
struct LayerSaved {
    saved: Saved,
    hidden: CubeTensor,
    wh: CubeTensor,
    zero: CubeTensor,
}

/// The backward node of [`LstmRecurrenceOps::lstm_recurrence`].
#[derive(Debug)]
struct RecurrenceBackward;

impl Backward<Cube, 2> for RecurrenceBackward {
    type State = Arc<LayerSaved>;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let [node_gx, node_wh] = ops.parents;
        let grad = grads.consume::<Cube>(&ops.node);
        let s = ops.state;
        let (dgx, dwh) = convlstm::backward(
            grad,
            &s.saved,
            s.hidden.clone(),
            s.wh.clone(),
            (s.zero.clone(), s.zero.clone()),
        );
        if let Some(node) = node_gx {
            grads.register::<Cube>(node.id, dgx);
        }
        if let Some(node) = node_wh {
            grads.register::<Cube>(node.id, dwh);
        }
    }
}

impl<C: CheckpointStrategy> LstmRecurrenceOps for Autodiff<Cube, C> {
    fn lstm_recurrence(gx: FloatTensor<Self>, wh: FloatTensor<Self>) -> FloatTensor<Self> {
        match RecurrenceBackward
            .prepare::<C>([gx.node(), wh.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (gxp, whp) = (gx.primitive().clone(), wh.primitive().clone());
                let zero = zero_state(&gxp, &whp);
                let (hidden, _, saved) = convlstm::forward(gxp, whp.clone(), zero.clone(), zero.clone(), true);
                let saved = saved.unwrap_or_else(|| unreachable!("forward saves when asked"));
                let state = LayerSaved {
                    saved,
                    hidden: hidden.clone(),
                    wh: whp,
                    zero,
                };
                prep.finish(Arc::new(state), hidden)
            }
            OpsKind::UnTracked(prep) => prep.finish(<Cube as LstmRecurrenceOps>::lstm_recurrence(
                gx.into_primitive(),
                wh.into_primitive(),
            )),
        }
    }

    fn lstm_recurrence_from(
        gx: FloatTensor<Self>,
        wh: FloatTensor<Self>,
        h0: FloatTensor<Self>,
        c0: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        // Inference only: no graph node (`ConvLstm` runs its tensor-op path when a state is
        // carried on an autodiff device).
        let (h, c) = <Cube as LstmRecurrenceOps>::lstm_recurrence_from(
            gx.into_primitive(),
            wh.into_primitive(),
            h0.into_primitive(),
            c0.into_primitive(),
        );
        (Self::from_inner(h), Self::from_inner(c))
    }
}

/// The input half of the gates for all frames in one batched conv (burn's, with its
/// backward): `conv(x, wx) + bias`.
///
/// # Shapes
/// - x: `[B, T, C, H, W]`
/// - output: `[B, T, 4h, H, W]`
fn input_half(x: Tensor<5>, w: &LstmWeights) -> Tensor<5> {
    let [b, t, c, height, width] = x.dims();
    let [g, _, k, _] = w.wx.dims();
    let frames = x.reshape([b * t, c, height, width]); // [B·T, C, H, W]
    let options = ConvOptions::new([1, 1], [k / 2, k / 2], [1, 1], 1);
    conv2d(frames, w.wx.clone(), Some(w.bias.clone()), options).reshape([b, t, g, height, width]) // [B, T, 4h, H, W]
}

/// One ConvLSTM layer from a zero state on a cube device (see [`LstmRecurrenceOps`]).
///
/// # Shapes
/// - x: `[B, T, C, H, W]`
/// - output: `[B, T, h, H, W]`
pub(super) fn layer(x: Tensor<5>, w: LstmWeights) -> Tensor<5> {
    let gx = input_half(x, &w);
    Tensor::from_dispatch(<Dispatch as LstmRecurrenceOps>::lstm_recurrence(
        gx.into_dispatch(),
        w.wh.into_dispatch(),
    ))
}

/// One ConvLSTM layer for inference from a carried state; returns the hidden states and the
/// last cell state.
///
/// # Shapes
/// - x: `[B, T, C, H, W]`; h0, c0: `[B, h, H, W]`
/// - output: `[B, T, h, H, W]` and `[B, h, H, W]`
pub(super) fn layer_from(x: Tensor<5>, w: LstmWeights, (h0, c0): (Tensor<4>, Tensor<4>)) -> (Tensor<5>, Tensor<4>) {
    let gx = input_half(x, &w);
    let (h, c) = <Dispatch as LstmRecurrenceOps>::lstm_recurrence_from(
        gx.into_dispatch(),
        w.wh.into_dispatch(),
        h0.into_dispatch(),
        c0.into_dispatch(),
    );
    (Tensor::from_dispatch(h), Tensor::from_dispatch(c))
}
