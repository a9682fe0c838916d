//! A ConvLSTM layer as one burn operation on the flex CPU back-end, with a hand-written
//! backward (the kernels: [`super::cpu::convlstm`] forward, [`super::cpu::convlstm_backward`]
//! backward through time).
//!
//! burn's backend-extension API routes the call: the plain flex device runs the forward
//! alone; the autodiff flex device also records one graph node whose backward calls
//! [`convlstm_backward::backward`]. Other back-ends (ndarray, wgpu) never reach this module:
//! [`super::convlstm`] declines them and `ConvLstm` runs its tensor-op path there.

use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, AutodiffBackend, Dispatch, Flex, backend_extension};
use burn::tensor::Tensor;

use super::cpu::conv::ConvDims;
use super::cpu::convlstm::{self, Dims, Saved};
use super::cpu::convlstm_backward;
use super::flex_io::{tensor, values};

/// One fused ConvLSTM layer.
#[backend_extension(Flex, Autodiff)]
pub trait ConvLstmOps: burn::backend::Backend {
    /// Hidden states `[B, T, h, H, W]` of one layer over `x` `[B, T, C, H, W]`: the input
    /// half of the gates is `conv(x_t, wx) + bias` (`wx` `[4h, C, k, k]`, `bias` `[4h]`), the
    /// hidden half `conv(h_{t-1}, wh)` (`wh` `[4h, h, k, k]`).
    fn convlstm_layer(
        x: FloatTensor<Self>,
        wx: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        wh: FloatTensor<Self>,
    ) -> FloatTensor<Self>;

    /// [`Self::convlstm_layer`] for inference, from the state `h0`, `c0` (each `[B, h, H, W]`)
    /// that the frames before `x` ended in: returns the hidden states `[B, T, h, H, W]` and
    /// the last step's cell state `[B, h, H, W]`. Has no backward: the outputs are constants.
    fn convlstm_layer_from(
        x: FloatTensor<Self>,
        wx: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        wh: FloatTensor<Self>,
        h0: FloatTensor<Self>,
        c0: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);
}

/// Sizes of the layer from its operands' shapes.
fn dims_of(x: &FlexTensor, wx: &FlexTensor, bias: &FlexTensor, wh: &FlexTensor) -> (ConvDims, Dims) {
    let (xs, wxs, bs, whs) = (
        x.layout().shape(),
        wx.layout().shape(),
        bias.layout().shape(),
        wh.layout().shape(),
    );
    assert!(
        xs.num_dims() == 5 && wxs.num_dims() == 4 && bs.num_dims() == 1 && whs.num_dims() == 4,
        "ConvLSTM operand ranks"
    );
    let dims = Dims {
        b: xs[0],
        t: xs[1],
        h: whs[1],
        height: xs[3],
        width: xs[4],
        k: whs[2],
    };
    let input = ConvDims {
        frames: xs[0] * xs[1],
        c: xs[2],
        out: 4 * dims.h,
        height: xs[3],
        width: xs[4],
        k: wxs[2],
    };
    assert!(
        wxs[0] == 4 * dims.h
            && wxs[1] == input.c
            && wxs[3] == input.k
            && input.k % 2 == 1
            && bs[0] == 4 * dims.h
            && whs[0] == 4 * dims.h
            && whs[3] == dims.k
            && dims.k % 2 == 1,
        "ConvLSTM shapes: x {xs:?}, wx {wxs:?}, bias {bs:?}, wh {whs:?}"
    );
    (input, dims)
}

fn out_shape(d: Dims) -> Vec<usize> {
    vec![d.b, d.t, d.h, d.height, d.width]
}

impl ConvLstmOps for Flex {
    fn convlstm_layer(x: FlexTensor, wx: FlexTensor, bias: FlexTensor, wh: FlexTensor) -> FlexTensor {
        let dims = dims_of(&x, &wx, &bias, &wh);
        let out = run((&x, &wx, &bias, &wh), dims, None, false);
        tensor(out.hidden, out_shape(dims.1))
    }

    fn convlstm_layer_from(
        x: FlexTensor,
        wx: FlexTensor,
        bias: FlexTensor,
        wh: FlexTensor,
        h0: FlexTensor,
        c0: FlexTensor,
    ) -> (FlexTensor, FlexTensor) {
        let (input, dims) = dims_of(&x, &wx, &bias, &wh);
        let (h0, c0) = (values(&h0), values(&c0));
        let out = run((&x, &wx, &bias, &wh), (input, dims), Some((&h0, &c0)), false);
        let state = vec![dims.b, dims.h, dims.height, dims.width];
        (tensor(out.hidden, out_shape(dims)), tensor(out.c_last, state))
    }
}

/// Run a layer on flex tensors from the state `init` (zero when `None`), keeping the
/// activations for the backward when `save`.
fn run(
    (x, wx, bias, wh): (&FlexTensor, &FlexTensor, &FlexTensor, &FlexTensor),
    (input, dims): (ConvDims, Dims),
    init: Option<(&[f32], &[f32])>,
    save: bool,
) -> convlstm::Forward {
    let (x, wx, bias, wh) = (values(x), values(wx), values(bias), values(wh));
    let input = convlstm::Input {
        x: &x,
        c: input.c,
        kx: input.k,
        wx: &wx,
        bias: &bias,
    };
    convlstm::forward(input, &wh, dims, init, save)
}

/// What the backward needs: the recurrence's activations and the input half's operands.
#[derive(Debug)]
struct LayerSaved {
    recurrence: Saved,
    input: ConvDims,
    /// The input and weight themselves (shared buffers, not copies).
    x: FlexTensor,
    wx: FlexTensor,
    /// The output (hidden state of every step), shared with the graph.
    hidden: FlexTensor,
}

/// The backward node of [`ConvLstmOps::convlstm_layer`].
#[derive(Debug)]
struct LayerBackward;

impl Backward<Flex, 4> for LayerBackward {
    type State = Arc<LayerSaved>;

    fn backward(self, ops: Ops<Self::State, 4>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let [node_x, node_wx, node_b, node_wh] = ops.parents;
        let grad = grads.consume::<Flex>(&ops.node);
        let saved = ops.state;
        let (d, inp) = (saved.recurrence.dims, saved.input);
        let (x, wx) = (values(&saved.x), values(&saved.wx));
        let input = convlstm::Input {
            x: &x,
            c: inp.c,
            kx: inp.k,
            wx: &wx,
            // The backward does not read the bias.
            bias: &[],
        };
        let grads_of = convlstm_backward::backward(
            &saved.recurrence,
            input,
            &values(&saved.hidden),
            &values(&grad),
            node_x.is_some(),
        );
        let convlstm_backward::Grads { dx, dwx, db, dwh } = grads_of;
        if let (Some(node), Some(dx)) = (node_x, dx) {
            grads.register::<Flex>(node.id, tensor(dx, vec![d.b, d.t, inp.c, d.height, d.width]));
        }
        if let Some(node) = node_wx {
            grads.register::<Flex>(node.id, tensor(dwx, vec![inp.out, inp.c, inp.k, inp.k]));
        }
        if let Some(node) = node_b {
            grads.register::<Flex>(node.id, tensor(db, vec![inp.out]));
        }
        if let Some(node) = node_wh {
            grads.register::<Flex>(node.id, tensor(dwh, vec![4 * d.h, d.h, d.k, d.k]));
        }
    }
}

impl<C: CheckpointStrategy> ConvLstmOps for Autodiff<Flex, C> {
    fn convlstm_layer(
        x: FloatTensor<Self>,
        wx: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        wh: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        match LayerBackward
            .prepare::<C>([x.node(), wx.node(), bias.node(), wh.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (xp, wxp, bp, whp) = (x.primitive(), wx.primitive(), bias.primitive(), wh.primitive());
                let (input, dims) = dims_of(xp, wxp, bp, whp);
                let run = run((xp, wxp, bp, whp), (input, dims), None, true);
                let recurrence = run.saved.unwrap_or_else(|| unreachable!("forward saves when asked"));
                let out = tensor(run.hidden, out_shape(dims));
                let state = LayerSaved {
                    recurrence,
                    input,
                    x: xp.clone(),
                    wx: wxp.clone(),
                    hidden: out.clone(),
                };
                prep.finish(Arc::new(state), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(<Flex as ConvLstmOps>::convlstm_layer(
                x.into_primitive(),
                wx.into_primitive(),
                bias.into_primitive(),
                wh.into_primitive(),
            )),
        }
    }

    fn convlstm_layer_from(
        x: FloatTensor<Self>,
        wx: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        wh: FloatTensor<Self>,
        h0: FloatTensor<Self>,
        c0: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        // Inference only: no graph node, so no gradient flows (`ConvLstm` runs its tensor-op
        // path instead when a state is carried on an autodiff device).
        let (h, c) = <Flex as ConvLstmOps>::convlstm_layer_from(
            x.into_primitive(),
            wx.into_primitive(),
            bias.into_primitive(),
            wh.into_primitive(),
            h0.into_primitive(),
            c0.into_primitive(),
        );
        (Self::from_inner(h), Self::from_inner(c))
    }
}

/// One fused ConvLSTM layer on tensors of a flex device (see [`ConvLstmOps`]).
///
/// # Shapes
/// - x: `[B, T, C, H, W]`
/// - wx: `[4h, C, k, k]`, bias: `[4h]`, wh: `[4h, h, k, k]`
/// - output: `[B, T, h, H, W]`
pub(super) fn layer(x: Tensor<5>, wx: Tensor<4>, bias: Tensor<1>, wh: Tensor<4>) -> Tensor<5> {
    Tensor::from_dispatch(<Dispatch as ConvLstmOps>::convlstm_layer(
        x.into_dispatch(),
        wx.into_dispatch(),
        bias.into_dispatch(),
        wh.into_dispatch(),
    ))
}

/// One fused ConvLSTM layer for inference from a carried state (see
/// [`ConvLstmOps::convlstm_layer_from`]); returns the hidden states and the last cell state.
///
/// # Shapes
/// - x: `[B, T, C, H, W]`; h0, c0: `[B, h, H, W]`
/// - wx: `[4h, C, k, k]`, bias: `[4h]`, wh: `[4h, h, k, k]`
/// - output: `[B, T, h, H, W]` and `[B, h, H, W]`
pub(super) fn layer_from(
    x: Tensor<5>,
    wx: Tensor<4>,
    bias: Tensor<1>,
    wh: Tensor<4>,
    (h0, c0): (Tensor<4>, Tensor<4>),
) -> (Tensor<5>, Tensor<4>) {
    let (h, c) = <Dispatch as ConvLstmOps>::convlstm_layer_from(
        x.into_dispatch(),
        wx.into_dispatch(),
        bias.into_dispatch(),
        wh.into_dispatch(),
        h0.into_dispatch(),
        c0.into_dispatch(),
    );
    (Tensor::from_dispatch(h), Tensor::from_dispatch(c))
}
