//! The multi-layer ConvLSTM of the long-term attention (SPEC §3.1 step 1).
//!
//! Each cell's conv over `concat(x_t, h_{t-1})` is split by linearity into an input half
//! `conv_x(x_t)` (with the bias), computed for many frames per batched call, and a hidden
//! half `conv_h(h_{t-1})` (no bias), the only conv left in the sequential loop. Gates are
//! ordered i, f, o, g as in ConvLSTM_pytorch. The numbers do not depend on the chunk size.
//!
//! On the flex CPU back-end each layer runs instead as one fused operation with a
//! hand-written backward ([`kernels::convlstm`]); this tensor-op path is what other
//! back-ends (ndarray, wgpu) run, and what the tests compare the fused one with.

use burn::config::Config;
use burn::module::Module;
use burn::nn::PaddingConfig2d;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::tensor::activation::{sigmoid, tanh};
use burn::tensor::{Device, Tensor};

use crate::kernels::{self, LstmWeights};

/// Configuration of [`ConvLstm`].
#[derive(Config, Debug)]
pub struct ConvLstmConfig {
    /// Channels of each input frame.
    #[config(default = 1)]
    pub input_dim: usize,
    /// Hidden channels of each layer (the paper: `[8, 8, 1]`).
    #[config(default = "vec![8, 8, 1]")]
    pub hidden_dims: Vec<usize>,
    /// Square, odd kernel size (padding `k / 2`).
    #[config(default = 3)]
    pub kernel_size: usize,
    /// Frames per batched call of the input half of the gates (1 = one call per frame;
    /// ≥ T = one call for the whole sequence). Chunks of 4–16 were fastest for training on
    /// the flex CPU back-end (T = 128, B = 2): one call for all T made the backward ~35%
    /// slower, because the gradient of each per-step piece is padded to the whole batch.
    #[config(default = 8)]
    pub input_chunk: usize,
    /// Run each layer as one fused operation with a hand-written backward on the flex CPU
    /// back-end (the same numbers to float rounding, several times faster; see
    /// [`kernels::convlstm`]); other back-ends always use the tensor-op path.
    /// `input_chunk` applies to the tensor-op path only.
    #[config(default = true)]
    pub fused: bool,
}

/// One ConvLSTM cell, its conv split into input and hidden halves.
#[derive(Module, Debug)]
pub struct ConvLstmCell {
    /// Input half: `[4h, in, k, k]`, with the cell's bias.
    pub conv_x: Conv2d,
    /// Hidden half: `[4h, h, k, k]`, no bias.
    pub conv_h: Conv2d,
    /// Hidden channels h.
    pub hidden: usize,
}

/// A stack of ConvLSTM cells run over a sequence of frames; the state starts at zero.
#[derive(Module, Debug)]
pub struct ConvLstm {
    /// The cells, first layer first.
    pub cells: Vec<ConvLstmCell>,
    /// Frames per batched input-half conv call.
    pub input_chunk: usize,
    /// Use the fused layers where the back-end has them.
    pub fused: bool,
}

impl ConvLstmConfig {
    /// Build the ConvLSTM on `device` (PyTorch default Conv2d init).
    pub fn init(&self, device: &Device) -> ConvLstm {
        let k = self.kernel_size;
        let mut cells = Vec::with_capacity(self.hidden_dims.len());
        let mut cin = self.input_dim;
        for &h in &self.hidden_dims {
            let conv = |cin: usize, bias: bool| {
                Conv2dConfig::new([cin, 4 * h], [k, k])
                    .with_padding(PaddingConfig2d::Explicit(k / 2, k / 2, k / 2, k / 2))
                    .with_bias(bias)
                    .init(device)
            };
            cells.push(ConvLstmCell {
                conv_x: conv(cin, true),
                conv_h: conv(h, false),
                hidden: h,
            });
            cin = h;
        }
        ConvLstm {
            cells,
            input_chunk: self.input_chunk,
            fused: self.fused,
        }
    }
}

impl ConvLstm {
    /// Run all layers over the sequence and return the last layer's hidden state for every step.
    ///
    /// # Shapes
    /// - x: `[B, T, C_in, H, W]`
    /// - output: `[B, T, h_last, H, W]`
    pub fn forward(&self, x: Tensor<5>) -> Tensor<5> {
        if self.fused
            && let Some(h) = kernels::convlstm(&x, self.cells.iter().map(|cell| cell.weights(&x.device())))
        {
            return h;
        }
        let [b, t, c, hgt, wid] = x.dims();
        // Frames time-major so that step s is rows s·B..(s+1)·B: [T·B, C, H, W].
        let seq = x.swap_dims(0, 1).reshape([t * b, c, hgt, wid]);
        let mut steps = split_steps(seq, t, b);
        for cell in &self.cells {
            steps = cell.run(steps, self.input_chunk);
        }
        Tensor::stack::<5>(steps, 1) // [B, T, h, H, W]
    }

    /// [`Self::forward`] from the state the frames before `x` ended in (`None`: zero, the
    /// start of a sequence), also returning the state after its last frame. A sequence run in
    /// pieces this way, each from the previous piece's state, gives the same numbers as run
    /// whole; inference streams long videos so (training runs [`Self::forward`]).
    ///
    /// On a plain flex device each layer is one fused operation (no backward); on an
    /// autodiff device, and on other back-ends, the tensor-op path runs.
    ///
    /// # Shapes
    /// - x: `[B, T, C_in, H, W]`; state: one `([B, h, H, W], [B, h, H, W])` per layer
    /// - output: `[B, T, h_last, H, W]` and the state after step T
    pub fn forward_from(&self, x: Tensor<5>, state: Option<LstmState>) -> (Tensor<5>, LstmState) {
        let [b, t, c, hgt, wid] = x.dims();
        let device = x.device();
        let initial = |l: usize| -> (Tensor<4>, Tensor<4>) {
            match &state {
                Some(s) => s.layers[l].clone(),
                None => {
                    let z = Tensor::zeros([b, self.cells[l].hidden, hgt, wid], &device);
                    (z.clone(), z)
                }
            }
        };
        if let Some(s) = &state {
            debug_assert_eq!(s.layers.len(), self.cells.len(), "one state per layer");
        }
        let h_last = self.cells.last().map_or(c, |cell| cell.hidden);
        if t == 0 {
            let layers = (0..self.cells.len()).map(initial).collect();
            return (Tensor::zeros([b, 0, h_last, hgt, wid], &device), LstmState { layers });
        }
        if self.fused {
            let start = self.cells.iter().enumerate();
            let start = start.map(|(l, cell)| (cell.weights(&device), initial(l)));
            if let Some((h, layers)) = kernels::convlstm_from(&x, start) {
                return (h, LstmState { layers });
            }
        }
        let mut layers = Vec::with_capacity(self.cells.len());
        // Frames time-major so that step s is rows s·B..(s+1)·B: [T·B, C, H, W].
        let seq = x.swap_dims(0, 1).reshape([t * b, c, hgt, wid]);
        let mut steps = split_steps(seq, t, b);
        for (l, cell) in self.cells.iter().enumerate() {
            let (out, last) = cell.run_from(steps, self.input_chunk, state.as_ref().map(|s| s.layers[l].clone()));
            steps = out;
            layers.push(last.unwrap_or_else(|| initial(l)));
        }
        (Tensor::stack::<5>(steps, 1), LstmState { layers }) // [B, T, h, H, W]
    }
}

/// What a [`ConvLstm`] carries from one piece of a sequence to the next: each layer's
/// hidden and cell state after the last frame, first layer first.
#[derive(Debug, Clone)]
pub struct LstmState {
    /// `(h, c)` per layer, each `[B, h, H, W]`.
    pub layers: Vec<(Tensor<4>, Tensor<4>)>,
}

impl ConvLstmCell {
    /// The weights as the fused layer takes them: the input half's weight `[4h, C, k, k]`
    /// and bias `[4h]` (zero when the conv has none), the hidden half's weight `[4h, h, k, k]`.
    fn weights(&self, device: &Device) -> LstmWeights {
        let bias = match &self.conv_x.bias {
            Some(b) => b.val(),
            None => Tensor::zeros([4 * self.hidden], device),
        };
        LstmWeights {
            wx: self.conv_x.weight.val(),
            bias,
            wh: self.conv_h.weight.val(),
        }
    }

    /// Run this cell over a sequence and return the hidden state per step.
    ///
    /// The input half of the gates is computed `chunk` frames per conv call (all T when
    /// `chunk ≥ T`); only the hidden half runs step by step.
    ///
    /// # Shapes
    /// - steps: T tensors `[B, C_in, H, W]`
    /// - output: T tensors `[B, h, H, W]`
    pub fn run(&self, steps: Vec<Tensor<4>>, chunk: usize) -> Vec<Tensor<4>> {
        self.run_from(steps, chunk, None).0
    }

    /// [`Self::run`] from the state `(h, c)` the previous steps ended in (`None`: zero), also
    /// returning the state after the last step (`None` when there are no steps and no state).
    ///
    /// # Shapes
    /// - steps: T tensors `[B, C_in, H, W]`; state: `([B, h, H, W], [B, h, H, W])`
    /// - output: T tensors `[B, h, H, W]` and the last state
    pub fn run_from(
        &self,
        steps: Vec<Tensor<4>>,
        chunk: usize,
        state: Option<(Tensor<4>, Tensor<4>)>,
    ) -> (Vec<Tensor<4>>, Option<(Tensor<4>, Tensor<4>)>) {
        let t = steps.len();
        let h = self.hidden;
        let mut out = Vec::with_capacity(t);
        let mut state = state;
        let mut steps = steps.into_iter().peekable();
        while steps.peek().is_some() {
            let frames: Vec<Tensor<4>> = steps.by_ref().take(chunk.max(1)).collect();
            let (k, b) = (frames.len(), frames[0].dims()[0]);
            // Input half of k frames in one call: [k·B, 4h, H, W], then per step [B, 4h, H, W].
            let gates_x = split_steps(self.conv_x.forward(Tensor::cat(frames, 0)), k, b);
            for gx in gates_x {
                // With a zero state the hidden half is exactly zero: skip it.
                let gates = match &state {
                    Some((h_prev, _)) => gx + self.conv_h.forward(h_prev.clone()),
                    None => gx,
                };
                // Gate order i, f, o, g: each [B, h, H, W].
                let i = sigmoid(gates.clone().narrow(1, 0, h));
                let f = sigmoid(gates.clone().narrow(1, h, h));
                let o = sigmoid(gates.clone().narrow(1, 2 * h, h));
                let g = tanh(gates.narrow(1, 3 * h, h));
                let c_next = match state {
                    Some((_, c_prev)) => f * c_prev + i * g,
                    None => i * g,
                };
                let h_next = o * tanh(c_next.clone());
                out.push(h_next.clone());
                state = Some((h_next, c_next));
            }
        }
        (out, state)
    }
}

/// Split a step-major batch `[T·B, …]` into T tensors `[B, …]` by recursive halving.
///
/// A slice's backward materialises a zero gradient the size of the tensor it was cut from;
/// halving keeps that at O(T log T) of one step's size instead of O(T²) for T direct slices.
pub fn split_steps(x: Tensor<4>, t: usize, b: usize) -> Vec<Tensor<4>> {
    let mut out = Vec::with_capacity(t);
    split_rec(x, t, b, &mut out);
    out
}

fn split_rec(x: Tensor<4>, t: usize, b: usize, out: &mut Vec<Tensor<4>>) {
    if t <= 1 {
        out.push(x);
        return;
    }
    let left = t / 2;
    split_rec(x.clone().narrow(0, 0, left * b), left, b, out);
    split_rec(x.narrow(0, left * b, (t - left) * b), t - left, b, out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    #[test]
    fn chunk_size_does_not_change_the_numbers() {
        // The chunked input half is the tensor-op path's (the fused layers take all frames at
        // once), so that path runs here: chunks of 1, 3 (the last one short), 7 (= T) and
        // more than T, from a zero state and from a carried one.
        let dev = Device::flex();
        dev.seed(2);
        let mut lstm = ConvLstmConfig::new().with_fused(false).init(&dev);
        let x = Tensor::<5>::random([2, 7, 1, 6, 6], Distribution::Uniform(0.0, 1.0), &dev);
        let (_, state) = lstm.forward_from(x.clone().narrow(1, 0, 2), None);
        let outs: Vec<(Vec<f32>, Vec<f32>)> = [1usize, 3, 7, 100]
            .into_iter()
            .map(|k| {
                lstm.input_chunk = k;
                let h = lstm.forward(x.clone());
                assert_eq!(h.dims(), [2, 7, 1, 6, 6]);
                let (warm, _) = lstm.forward_from(x.clone(), Some(state.clone()));
                (
                    h.into_data().try_to_vec::<f32>().unwrap(),
                    warm.into_data().try_to_vec::<f32>().unwrap(),
                )
            })
            .collect();
        for (k, out) in [3, 7, 100].into_iter().zip(&outs[1..]) {
            assert_eq!(out.0, outs[0].0, "chunk {k}, zero state");
            assert_eq!(out.1, outs[0].1, "chunk {k}, carried state");
        }
        // Not trivially equal: the outputs vary, and the carried state changes them.
        let (h, warm) = &outs[0];
        assert!(h.iter().any(|v| (v - h[0]).abs() > 1e-3), "constant outputs");
        assert!(
            h.iter().zip(warm).any(|(a, b)| (a - b).abs() > 1e-3),
            "state had no effect"
        );
    }

    /// Max |a − b| over two tensors.
    fn max_diff<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
        let a = a.into_data().try_to_vec::<f32>().unwrap();
        let b = b.into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(a.len(), b.len());
        a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
    }

    /// The fused layers (hidden `dims`, frames `[b, t, c, hgt, wid]`) against the tensor-op
    /// path on `dev` (plain; autodiff is added here): the hidden states, the gradient of the
    /// input and of every weight and bias, and the plain device's forward.
    fn check_fused_matches(dev: &Device, dims: Vec<usize>, [b, t, c, hgt, wid]: [usize; 5]) {
        let dev = dev.clone().autodiff();
        dev.seed(11);
        let mut lstm = ConvLstmConfig::new()
            .with_input_dim(c)
            .with_hidden_dims(dims)
            .init(&dev);
        let h_last = *lstm.cells.last().map(|c| &c.hidden).unwrap();
        let x = Tensor::<5>::random([b, t, c, hgt, wid], Distribution::Uniform(0.0, 1.0), &dev);
        let r = Tensor::<5>::random([b, t, h_last, hgt, wid], Distribution::Uniform(-1.0, 1.0), &dev);
        let run = |lstm: &ConvLstm| {
            let x = x.clone().detach().require_grad();
            let h = lstm.forward(x.clone());
            let grads = (h.clone() * r.clone()).sum().backward();
            let gx = x.grad(&grads).unwrap();
            let gw: Vec<(Tensor<4>, Tensor<4>, Tensor<1>)> = lstm
                .cells
                .iter()
                .map(|c| {
                    let bias = c.conv_x.bias.as_ref().unwrap();
                    (
                        c.conv_x.weight.grad(&grads).unwrap(),
                        c.conv_h.weight.grad(&grads).unwrap(),
                        bias.grad(&grads).unwrap(),
                    )
                })
                .collect();
            (h.inner(), gx, gw)
        };
        lstm.fused = true;
        let (h1, gx1, gw1) = run(&lstm);
        lstm.fused = false;
        let (h0, gx0, gw0) = run(&lstm);
        assert!(max_diff(h1, h0) < 1e-6);
        assert!(max_diff(gx1, gx0) < 1e-5);
        for ((x1, h1, b1), (x0, h0, b0)) in gw1.into_iter().zip(gw0) {
            assert!(max_diff(x1, x0) < 1e-4);
            assert!(max_diff(h1, h0) < 1e-4);
            assert!(max_diff(b1, b0) < 1e-4);
        }
        // And on the plain device (inference): the same forward.
        let plain = lstm.valid();
        let mut fused = plain.clone();
        fused.fused = true;
        let xv = x.inner();
        assert!(max_diff(fused.forward(xv.clone()), plain.forward(xv)) < 1e-6);
    }

    #[test]
    fn fused_layers_match_the_tensor_op_path_forward_and_backward() {
        check_fused_matches(&Device::flex(), vec![3, 2, 1], [2, 5, 1, 6, 7]);
    }

    /// The CubeCL layers (`kernels::cube::convlstm`) on wgpu (a software Vulkan driver
    /// where there is no GPU): two input channels, three layers, and a layer whose state
    /// (8 × 12 × 13) outnumbers a cube's units, so each unit owns several items.
    #[cfg(feature = "wgpu")]
    #[test]
    fn cube_layers_match_the_tensor_op_path_forward_and_backward() {
        let dev = Device::wgpu(burn::tensor::DeviceKind::DefaultDevice);
        check_fused_matches(&dev, vec![3, 2, 1], [2, 5, 2, 6, 7]);
        check_fused_matches(&dev, vec![8], [1, 4, 1, 12, 13]);
    }

    /// The paper's layers and frame size (64 × 64), where llvmpipe's loop limit cut the
    /// first version of the kernels short after 3 steps.
    #[cfg(feature = "wgpu")]
    #[test]
    fn cube_layers_match_at_the_papers_frame_size() {
        let dev = Device::wgpu(burn::tensor::DeviceKind::DefaultDevice);
        check_fused_matches(&dev, vec![8, 8, 1], [1, 6, 1, 64, 64]);
    }

    #[test]
    fn a_sequence_run_in_pieces_from_the_carried_state_equals_it_run_whole() {
        check_pieces(&Device::flex());
    }

    #[cfg(feature = "wgpu")]
    #[test]
    fn cube_layers_run_in_pieces_equal_the_whole_run() {
        check_pieces(&Device::wgpu(burn::tensor::DeviceKind::DefaultDevice));
    }

    fn check_pieces(dev: &Device) {
        // T = 7 as pieces of 3, 3 and 1 frames (not a multiple of the piece), B = 1 and 2,
        // on the fused layers (flex or CubeCL) and on the tensor-op path: the hidden states
        // equal the whole run's, and so does the state after the last frame (checked by
        // continuing with one more frame). Breaking the carry (starting the second piece
        // from zero) changes its outputs, which the last check shows.
        let dev = dev.clone();
        dev.seed(5);
        let mut lstm = ConvLstmConfig::new()
            .with_hidden_dims(vec![3, 2, 1])
            .with_input_chunk(2)
            .init(&dev);
        for (b, fused) in [(1, true), (2, true), (1, false), (2, false)] {
            lstm.fused = fused;
            let x = Tensor::<5>::random([b, 8, 1, 6, 5], Distribution::Uniform(0.0, 1.0), &dev);
            let whole = lstm.forward(x.clone()).into_data().try_to_vec::<f32>().unwrap();
            let mut state = None;
            let mut pieces = Vec::new();
            for (t0, n) in [(0, 3), (3, 3), (6, 1), (7, 1)] {
                let (h, next) = lstm.forward_from(x.clone().narrow(1, t0, n), state.take());
                assert_eq!(h.dims(), [b, n, 1, 6, 5]);
                assert_eq!(next.layers.len(), 3);
                pieces.push(h);
                state = Some(next);
            }
            let pieces = Tensor::cat(pieces, 1).into_data().try_to_vec::<f32>().unwrap();
            let diff = pieces
                .iter()
                .zip(&whole)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert_eq!(diff, 0.0, "b {b}, fused {fused}");
            assert!(whole.iter().any(|v| v.abs() > 1e-3), "non-trivial outputs");
            // Carry broken: frames 3..6 from a zero state.
            let (cold, _) = lstm.forward_from(x.clone().narrow(1, 3, 3), None);
            let cold = cold.into_data().try_to_vec::<f32>().unwrap();
            let n = b * 3 * 30;
            let warm: Vec<f32> = (0..b)
                .flat_map(|v| whole[(v * 8 + 3) * 30..(v * 8 + 6) * 30].to_vec())
                .collect();
            let broken = cold.iter().zip(&warm).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
            assert_eq!(cold.len(), n);
            assert!(
                broken > 1e-3,
                "b {b}, fused {fused}: a zero state gave the same outputs ({broken})"
            );
        }
    }

    #[test]
    fn later_frames_do_not_change_earlier_outputs() {
        // Causality: the padded steps after the valid ones cannot change them (SPEC §3.6).
        let dev = Device::flex();
        dev.seed(4);
        let lstm = ConvLstmConfig::new().init(&dev);
        let x = Tensor::<5>::random([1, 6, 1, 5, 5], Distribution::Uniform(0.0, 1.0), &dev);
        let a = lstm.forward(x.clone()).narrow(1, 0, 4);
        let x2 = x.slice_assign(
            burn::tensor::s![.., 4..6, .., .., ..],
            Tensor::ones([1, 2, 1, 5, 5], &dev),
        );
        let b = lstm.forward(x2).narrow(1, 0, 4);
        assert_eq!(
            a.into_data().try_to_vec::<f32>().unwrap(),
            b.into_data().try_to_vec::<f32>().unwrap()
        );
    }
}

/// Kernel launches of the ConvLSTM on a CubeCL back-end, counted as `xca bench` counts them
/// ([`crate::bench::count`]: CubeCL's launch hook, this thread's launches).
#[cfg(all(test, feature = "wgpu"))]
mod launch_count {
    use burn::tensor::{Device, DeviceKind, Distribution, Tensor};

    use super::ConvLstmConfig;

    /// Launches of one forward + backward of the paper's stack (hidden 8, 8, 1; T = 128,
    /// B = 2; small frames, as the count does not depend on their size), after one warm-up
    /// pass so that autotuning is over.
    fn launches(fused: bool) -> usize {
        let dev = Device::wgpu(DeviceKind::DefaultDevice).autodiff();
        dev.seed(3);
        let lstm = ConvLstmConfig::new().with_fused(fused).init(&dev);
        let x = Tensor::<5>::random([2, 128, 1, 8, 8], Distribution::Uniform(0.0, 1.0), &dev);
        let pass = || {
            let x = x.clone().detach().require_grad();
            let grads = lstm.forward(x.clone()).sum().backward();
            let g = x.grad(&grads).map(|g| g.sum().into_scalar());
            assert!(g.is_some_and(f32::is_finite));
        };
        pass();
        let ((), n) = crate::bench::count::<_, ()>(&dev, || {
            pass();
            Ok(())
        })
        .unwrap();
        n.launches.expect("launches are counted on wgpu")
    }

    #[test]
    fn fused_layers_launch_under_100_kernels_per_layer_forward_and_backward() {
        let (fused, ops) = (launches(true), launches(false));
        println!("ConvLSTM launches per forward + backward (3 layers, T = 128): fused {fused}, tensor ops {ops}");
        // Issue #16's target: ≤ 100 per layer, forward + backward (the count includes the
        // test's own sum and read-back, a handful).
        assert!(fused <= 3 * 100, "fused: {fused} launches");
        assert!(ops > 10 * fused, "tensor ops {ops} vs fused {fused}");
    }
}
