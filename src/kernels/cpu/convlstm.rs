//! A ConvLSTM layer (SPEC §3.1 step 1) as plain Rust on `f32` slices: the forward, with the
//! activations a backward needs when asked ([`super::convlstm_backward`] is the backward).
//!
//! Why by hand: the recurrence is T sequential steps of a small 3×3 convolution plus gate
//! arithmetic. As tensor ops each step is ~20 small kernels, each allocating and recorded
//! for autodiff, and the framework's per-op overhead dominates the arithmetic (measured in
//! issue #6). Here each step runs band by band (see [`BAND_PIXELS`]): one im2col of the
//! band's rows of `x_t` and `h_{t-1}`, one GEMM over both with the cell's conv unsplit
//! (`[4h, (C + h)·k²]`, the `gemm` crate, which picks AVX2/AVX-512/NEON at run time) into a
//! scratch that stays in cache, and one fused pass over the gates (bias added there) that
//! writes the cell and hidden state and, for training, the activated gates. Videos of a batch
//! run on separate threads, as their recurrences are independent; a lone video shares out
//! the bands of each step.
//!
//! The input half `conv(x_t)` does not depend on the state and was once a separate batched
//! conv of all frames written to a `[B, T, 4h, H, W]` buffer that the recurrence then read
//! back: 64 MB per video and layer at the paper's T = 128, h = 8, 64 × 64, a round trip to
//! memory that cost more than the product itself saved by batching (issue #19).
//!
//! [`BAND_PIXELS`]: super::im2col::BAND_PIXELS
//!
//! Layout: batch-major. The input half's weight is `[4h, C, kx, kx]`, the hidden half's
//! `[4h, h, k, k]`. Gate order i, f, o, g (ConvLSTM_pytorch).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use rayon::prelude::*;

use super::gemm::matmul;
use super::im2col::{band_len, im2col_rows};
use super::simd::gates_forward;

/// Sizes of one recurrence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dims {
    /// Videos.
    pub b: usize,
    /// Steps.
    pub t: usize,
    /// Hidden channels h (the gates have 4h).
    pub h: usize,
    /// Image height.
    pub height: usize,
    /// Image width.
    pub width: usize,
    /// Odd kernel side k (padding k / 2).
    pub k: usize,
}

impl Dims {
    pub(super) fn hw(&self) -> usize {
        self.height * self.width
    }
    /// Values of one step's gates for one video.
    pub(super) fn gates(&self) -> usize {
        4 * self.h * self.hw()
    }
    /// Values of one step's hidden (or cell) state for one video.
    pub(super) fn state(&self) -> usize {
        self.h * self.hw()
    }
    /// Rows of the im2col matrix (`h·k·k`).
    pub(super) fn col_rows(&self) -> usize {
        self.h * self.k * self.k
    }
    /// Values per band of a step: whole rows, about [`BAND_PIXELS`](super::im2col::BAND_PIXELS).
    pub(super) fn band_len(&self) -> usize {
        band_len(self.height, self.width)
    }
    /// Values of the weight `[4h, h, k, k]`.
    pub fn weight_len(&self) -> usize {
        4 * self.h * self.col_rows()
    }
    /// Values of the gates of every step (and of their gradient, `d gx`).
    pub fn gx_len(&self) -> usize {
        self.b * self.t * self.gates()
    }
    /// Values of the output (and of its gradient).
    pub fn out_len(&self) -> usize {
        self.b * self.t * self.state()
    }
}

/// The input side of a layer: its frames and the input half of the cell's conv.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    /// Frames `[B, T, C, H, W]`.
    pub x: &'a [f32],
    /// Input channels C.
    pub c: usize,
    /// Odd kernel side of the input half (padding `kx / 2`).
    pub kx: usize,
    /// The input half's weight `[4h, C, kx, kx]`.
    pub wx: &'a [f32],
    /// The cell's bias `[4h]`.
    pub bias: &'a [f32],
}

impl Input<'_> {
    /// Rows of the input half's im2col matrix (`C·kx²`).
    pub(super) fn col_rows(&self) -> usize {
        self.c * self.kx * self.kx
    }
    /// The cell's conv unsplit, `[4h, C·kx² + h·k²]`: row r is `[wx[r] | wh[r]]`, matching a
    /// column matrix of x_t's im2col rows above h_{t−1}'s (`kh` = h·k²).
    pub(super) fn weight_cat(&self, wh: &[f32], kh: usize) -> Vec<f32> {
        self.wx
            .chunks(self.col_rows().max(1))
            .zip(wh.chunks(kh))
            .flat_map(|(a, b)| a.iter().chain(b).copied())
            .collect()
    }
}

/// What the backward needs from the forward.
#[derive(Debug, Clone)]
pub struct Saved {
    pub dims: Dims,
    /// Activated gates i, f, o, g per step: `[B, T, 4h, H, W]`.
    pub gates: Vec<f32>,
    /// Cell state per step: `[B, T, h, H, W]`.
    pub cell: Vec<f32>,
    /// The hidden-half weight `[4h, h, k, k]`.
    pub weight: Vec<f32>,
}

/// A state `(h, c)`, each `[B, h, H, W]`, that a previous piece of a sequence ended in.
pub type State<'a> = Option<(&'a [f32], &'a [f32])>;

/// What [`forward`] returns.
#[derive(Debug)]
pub struct Forward {
    /// The hidden state of every step `[B, T, h, H, W]`.
    pub hidden: Vec<f32>,
    /// The last step's cell state `[B, h, H, W]` (the initial one when T = 0): with the
    /// last hidden state, where a next piece of the sequence starts.
    pub c_last: Vec<f32>,
    /// What [`super::convlstm_backward::backward`] needs besides the hidden state, when
    /// asked for.
    pub saved: Option<Saved>,
}

/// Run a layer over `input` with the hidden half's weight `wh` `[4h, h, k, k]` from the
/// state `init` (`(h0, c0)`, each `[B, h, H, W]`; zero when `None`). Running a sequence in
/// pieces, each from the state the previous one ended in, gives the same numbers as running
/// it whole. With `save`, also keeps every step's activated gates and cell state for the
/// backward; without, only two cell planes per video, which stay in cache.
///
/// # Panics
/// If the operands do not have the sizes `dims` and `input` imply (callers check shapes).
pub fn forward(input: Input, wh: &[f32], dims: Dims, init: State, save: bool) -> Forward {
    forward_in_bands(input, wh, dims, init, save, dims.band_len())
}

/// [`forward`] with bands of `band_len` values (whole rows).
pub(super) fn forward_in_bands(
    input: Input,
    wh: &[f32],
    dims: Dims,
    init: State,
    save: bool,
    band_len: usize,
) -> Forward {
    // Videos run on separate threads. With fewer videos than threads (inference), each
    // video in turn shares the bands of every step out over its own threads instead
    // (not inside a thread pool's task, where the pool already has the cores).
    let threads = rayon::current_num_threads();
    let share = if dims.b < threads && rayon::current_thread_index().is_none() {
        threads
    } else {
        1
    };
    forward_shared(input, wh, dims, (init, save), band_len, share)
}

/// One video's hidden states, cell planes and (when saving) gates, as [`video_forward`]
/// writes them.
type VideoOut<'a> = (&'a mut [f32], &'a mut [f32], Option<&'a mut [f32]>);

/// [`forward_in_bands`] with each video's bands shared out over `share` threads (videos in
/// turn), or, when `share` is 1, videos on the thread pool's threads.
fn forward_shared(
    input: Input,
    wh: &[f32],
    dims: Dims,
    (init, save): (State, bool),
    band_len: usize,
    share: usize,
) -> Forward {
    let (c, hw, t) = (input.c, dims.hw(), dims.t);
    let (s_len, g_len) = (dims.state(), dims.gates());
    assert!(
        input.x.len() == dims.b * t * c * hw
            && input.wx.len() == 4 * dims.h * input.col_rows()
            && input.bias.len() == 4 * dims.h,
        "ConvLSTM input sizes"
    );
    assert_eq!(wh.len(), dims.weight_len(), "ConvLSTM weight size");
    if let Some((h0, c0)) = init {
        assert!(
            h0.len() == dims.b * s_len && c0.len() == dims.b * s_len,
            "ConvLSTM initial state size"
        );
    }
    let w_cat = input.weight_cat(wh, dims.col_rows());
    let layer = Layer {
        input,
        w_cat: &w_cat,
        dims,
        band_len,
    };
    let mut hidden = vec![0.0f32; dims.out_len()];
    // The backward needs every step's cell state; inference only the previous one, so it
    // alternates between two planes.
    let slots = if save { t } else { t.min(2) };
    let mut cell = vec![0.0f32; dims.b * slots * s_len];
    let mut gates = if save { vec![0.0f32; dims.gx_len()] } else { Vec::new() };
    let init_of = |v: usize| init.map(|(h0, c0)| (&h0[v * s_len..][..s_len], &c0[v * s_len..][..s_len]));
    let x_of = |v: usize| &input.x[v * t * c * hw..][..t * c * hw];
    if t > 0 {
        let gate_chunks: Vec<Option<&mut [f32]>> = if save {
            gates.chunks_mut(t * g_len).map(Some).collect()
        } else {
            (0..dims.b).map(|_| None).collect()
        };
        // Each video's (hidden, cell, gates) buffers.
        let videos: Vec<VideoOut> = hidden
            .chunks_mut(t * s_len)
            .zip(cell.chunks_mut(slots * s_len))
            .zip(gate_chunks)
            .map(|((h_b, c_b), g_b)| (h_b, c_b, g_b))
            .collect();
        let run = |(v, out): (usize, VideoOut)| video_forward(&layer, x_of(v), out, init_of(v), share);
        if share > 1 {
            videos.into_iter().enumerate().for_each(run);
        } else {
            videos.into_par_iter().enumerate().for_each(run);
        }
    }
    // The last step wrote plane (T − 1) mod slots of each video's cell buffer.
    let c_last = match (init, t) {
        (Some((_, c0)), 0) => c0.to_vec(),
        (None, 0) => vec![0.0f32; dims.b * s_len],
        _ => {
            let last = (t - 1) % slots;
            cell.chunks(slots * s_len)
                .flat_map(|c_b| &c_b[last * s_len..][..s_len])
                .copied()
                .collect()
        }
    };
    let saved = save.then(|| Saved {
        dims,
        gates,
        cell,
        weight: wh.to_vec(),
    });
    Forward { hidden, c_last, saved }
}

/// A layer's operands as the bands use them.
struct Layer<'a> {
    input: Input<'a>,
    /// `[4h, C·kx² + h·k²]`.
    w_cat: &'a [f32],
    dims: Dims,
    band_len: usize,
}

/// One band's share of a step: its segment of each of the h cell and hidden planes and,
/// when saving, of the 4h gate planes.
struct Band<'a> {
    /// First image row.
    y0: usize,
    cell: Vec<&'a mut [f32]>,
    hidden: Vec<&'a mut [f32]>,
    gates: Vec<&'a mut [f32]>,
}

/// Scratch of [`band_forward`]; every value it reads was written in the same call.
#[derive(Default)]
struct BandScratch {
    col: Vec<f32>,
    pre: Vec<f32>,
}

thread_local! {
    /// Each thread's band scratch, grown once and reused by every band the thread runs
    /// (allocating it per band cost an allocation and a zero-fill per band per step).
    /// `band_forward` starts no parallel work, so a thread never re-enters its own borrow.
    static BAND_SCRATCH: std::cell::RefCell<BandScratch> = std::cell::RefCell::default();
}

/// One video's recurrence from the state `init` (zero when `None`) on `threads` threads
/// (the calling one and `threads − 1` it starts), each running a contiguous share of the
/// bands of every step and waiting for the others at the end of the step: `x` `[T, C, H, W]`;
/// `hidden` `[T, h, H, W]` (written), `cell` T planes (all kept) or two (alternating) and
/// `gates` `[T, 4h, H, W]` (written, when saving).
///
/// Why own threads and a spinning barrier: a step of one band set is tens of microseconds,
/// and handing its bands to the thread pool step by step lost ~35 µs per step to waking
/// and waiting (measured at T = 128, 2 threads: the bands' summed time was 52 ms, the layer
/// 33 ms instead of 26).
fn video_forward(layer: &Layer, x: &[f32], (hidden, cell, gates): VideoOut, init: State, threads: usize) {
    let dims = layer.dims;
    let (s_len, hw, band_len) = (dims.state(), dims.hw(), layer.band_len);
    let zeros;
    let (h0, c0) = match init {
        Some((h0, c0)) => (Some(h0), c0),
        None => {
            zeros = vec![0.0f32; s_len];
            (None, &zeros[..])
        }
    };
    let out = Outputs {
        hidden: SharedMut::new(hidden),
        cell: SharedMut::new(cell),
        gates: gates.map(SharedMut::new),
    };
    let bands = hw.div_ceil(band_len);
    let threads = threads.clamp(1, bands);
    let barrier = SpinBarrier::new(threads);
    let share = |tid: usize| {
        let _poison = barrier.poison_on_panic();
        let mine = tid * bands / threads..(tid + 1) * bands / threads;
        for step in 0..dims.t {
            // SAFETY: every thread writes only its own bands' segments of step `step`'s
            // planes, and reads the previous step's, which all threads finished writing
            // before the barrier at the end of that step (release/acquire).
            unsafe { step_forward(layer, x, &out, (h0, c0), step, mine.clone()) };
            barrier.wait(step);
        }
    };
    if threads == 1 {
        share(0);
        return;
    }
    std::thread::scope(|scope| {
        for tid in 1..threads {
            let share = &share;
            scope.spawn(move || share(tid));
        }
        share(0);
    });
}

/// One video's output buffers, shared by the threads of [`video_forward`].
struct Outputs<'a> {
    hidden: SharedMut<'a>,
    cell: SharedMut<'a>,
    gates: Option<SharedMut<'a>>,
}

/// A buffer that several threads write in disjoint parts.
struct SharedMut<'a> {
    ptr: *mut f32,
    len: usize,
    _buf: std::marker::PhantomData<&'a mut [f32]>,
}

// SAFETY: the threads of `video_forward` write disjoint parts and read only parts whose
// writers finished before a barrier (see `step_forward`).
unsafe impl Sync for SharedMut<'_> {}

impl<'a> SharedMut<'a> {
    fn new(buf: &'a mut [f32]) -> Self {
        SharedMut {
            ptr: buf.as_mut_ptr(),
            len: buf.len(),
            _buf: std::marker::PhantomData,
        }
    }
    /// `len` values from `start`.
    ///
    /// # Safety
    /// No other live reference may overlap them while the returned one lives.
    #[allow(clippy::mut_from_ref)]
    unsafe fn part_mut(&self, start: usize, len: usize) -> &mut [f32] {
        assert!(start + len <= self.len, "part of a shared buffer out of range");
        // SAFETY: in range (checked); exclusive per the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(start), len) }
    }
    /// The segment `range` of each of `planes` planes of `hw` values from `plane0`.
    ///
    /// # Safety
    /// As [`Self::part_mut`], for each segment.
    #[allow(clippy::mut_from_ref)]
    unsafe fn segments(
        &self,
        (plane0, planes, hw, range): (usize, usize, usize, std::ops::Range<usize>),
    ) -> Vec<&mut [f32]> {
        (0..planes)
            // SAFETY: per the caller's contract.
            .map(|p| unsafe { self.part_mut(plane0 + p * hw + range.start, range.len()) })
            .collect()
    }
    /// `len` values from `start`, read only.
    ///
    /// # Safety
    /// No live mutable reference may overlap them while the returned one lives.
    unsafe fn part(&self, start: usize, len: usize) -> &[f32] {
        assert!(start + len <= self.len, "part of a shared buffer out of range");
        // SAFETY: in range (checked); no writer per the caller's contract.
        unsafe { std::slice::from_raw_parts(self.ptr.add(start), len) }
    }
}

/// The bands `mine` of step `step` of one video (see [`video_forward`]).
///
/// # Safety
/// No other thread may touch those bands' segments of this step's planes meanwhile, and
/// every writer of the previous step's planes must have finished.
unsafe fn step_forward(
    layer: &Layer,
    x: &[f32],
    out: &Outputs,
    (h0, c0): (Option<&[f32]>, &[f32]),
    step: usize,
    mine: std::ops::Range<usize>,
) {
    let dims = layer.dims;
    let (g_len, s_len, hw, h, band_len) = (dims.gates(), dims.state(), dims.hw(), dims.h, layer.band_len);
    let x_len = layer.input.c * hw;
    let x_t = &x[step * x_len..][..x_len];
    let slots = out.cell.len / s_len;
    let (now, prev) = (step % slots, step.checked_sub(1).map(|p| p % slots));
    // SAFETY (all parts below): the previous step's planes are finished and read only; this
    // step's segments are the bands `mine`, which only this thread touches. With two cell
    // slots, the previous plane and this one differ (one slot: T = 1, no previous plane).
    let h_prev = match step {
        0 => h0,
        _ => Some(unsafe { out.hidden.part((step - 1) * s_len, s_len) }),
    };
    let c_prev = match prev {
        None => c0,
        Some(p) => unsafe { out.cell.part(p * s_len, s_len) },
    };
    for band in mine {
        let start = band * band_len;
        let len = band_len.min(hw - start);
        let segments = |plane0: usize, planes: usize| (plane0, planes, hw, start..start + len);
        let band = Band {
            y0: start / dims.width,
            cell: unsafe { out.cell.segments(segments(now * s_len, h)) },
            hidden: unsafe { out.hidden.segments(segments(step * s_len, h)) },
            gates: match &out.gates {
                Some(g) => unsafe { g.segments(segments(step * g_len, 4 * h)) },
                None => Vec::new(),
            },
        };
        BAND_SCRATCH.with_borrow_mut(|s| band_forward(band, x_t, h_prev, c_prev, layer, s));
    }
}

/// A barrier for a few threads that each wait once per round, spinning (the rounds are
/// tens of microseconds apart), then yielding if a round takes long.
struct SpinBarrier {
    threads: usize,
    arrived: AtomicUsize,
    poisoned: AtomicBool,
}

impl SpinBarrier {
    fn new(threads: usize) -> Self {
        SpinBarrier {
            threads,
            arrived: AtomicUsize::new(0),
            poisoned: AtomicBool::new(false),
        }
    }

    /// Wait until every thread has arrived at round `round` (rounds counted from 0).
    ///
    /// # Panics
    /// If another thread panicked (instead of waiting for it forever).
    fn wait(&self, round: usize) {
        self.arrived.fetch_add(1, Ordering::AcqRel);
        let target = self.threads * (round + 1);
        let mut spins = 0u32;
        while self.arrived.load(Ordering::Acquire) < target {
            assert!(!self.poisoned.load(Ordering::Relaxed), "a ConvLSTM thread panicked");
            if spins < 1 << 12 {
                std::hint::spin_loop();
                spins += 1;
            } else {
                std::thread::yield_now();
            }
        }
    }

    /// A guard that marks the barrier poisoned if its thread unwinds.
    fn poison_on_panic(&self) -> impl Drop + '_ {
        struct Guard<'b>(&'b AtomicBool);
        impl Drop for Guard<'_> {
            fn drop(&mut self) {
                if std::thread::panicking() {
                    self.0.store(true, Ordering::Relaxed);
                }
            }
        }
        Guard(&self.poisoned)
    }
}

/// One band of one step: the gates' pre-activations from `x_t` and `h_prev` (none at the
/// first step from a zero state) in one product, then the gate arithmetic.
fn band_forward(
    band: Band,
    x_t: &[f32],
    h_prev: Option<&[f32]>,
    c_prev: &[f32],
    layer: &Layer,
    scratch: &mut BandScratch,
) {
    let Band {
        y0,
        cell,
        hidden,
        mut gates,
    } = band;
    let (dims, input) = (layer.dims, layer.input);
    let (h, hw, size) = (dims.h, dims.hw(), (dims.height, dims.width));
    let len = cell[0].len();
    let (kx, kh) = (input.col_rows(), dims.col_rows());
    let col_len = (kx + kh) * len;
    if scratch.col.len() < col_len {
        scratch.col.resize(col_len, 0.0);
    }
    if scratch.pre.len() < 4 * h * len {
        scratch.pre.resize(4 * h * len, 0.0);
    }
    let (col, pre) = (&mut scratch.col[..col_len], &mut scratch.pre[..4 * h * len]);
    let rows = y0..y0 + len / dims.width;
    let (col_x, col_h) = col.split_at_mut(kx * len);
    im2col_rows(x_t, col_x, input.c, size, input.kx, rows.clone());
    match h_prev {
        Some(h_prev) => {
            im2col_rows(h_prev, col_h, h, size, dims.k, rows);
            matmul(pre, layer.w_cat, col, (4 * h, kx + kh, len), false, false, false);
        }
        None => matmul(pre, input.wx, col_x, (4 * h, kx, len), false, false, false),
    }
    // The gate segments are gate-major (q·h + channel), empty when not saving.
    let save = !gates.is_empty();
    for (ch, (c_now, h_now)) in cell.into_iter().zip(hidden).enumerate() {
        let pre = [0, 1, 2, 3].map(|q| &pre[(q * h + ch) * len..][..len]);
        let bias = [0, 1, 2, 3].map(|q| input.bias[q * h + ch]);
        let c_prev = &c_prev[ch * hw + y0 * dims.width..][..len];
        let act = save.then(|| [0, 1, 2, 3].map(|q| std::mem::take(&mut gates[q * h + ch])));
        gates_forward(pre, bias, act, c_prev, c_now, h_now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::cpu::testing::{assert_close, conv_direct, values};

    /// A layer of C input channels and its operands from fixed seeds.
    fn layer(dims: Dims, c: usize, seed: u32) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
        let (h, k, hw) = (dims.h, dims.k, dims.hw());
        let x: Vec<f32> = values(dims.b * dims.t * c * hw, seed).iter().map(|v| v * 2.0).collect();
        let wx: Vec<f32> = values(4 * h * c * k * k, seed + 1).iter().map(|v| v * 0.5).collect();
        let bias = values(4 * h, seed + 2);
        let wh: Vec<f32> = values(dims.weight_len(), seed + 3).iter().map(|v| v * 0.6).collect();
        (x, wx, bias, wh)
    }

    fn input<'a>(x: &'a [f32], c: usize, k: usize, wx: &'a [f32], bias: &'a [f32]) -> Input<'a> {
        Input { x, c, kx: k, wx, bias }
    }

    /// ConvLSTM_pytorch's cell in f64 from direct convolutions: hidden `[B, T, h, H, W]`.
    fn reference(dims: Dims, c: usize, (x, wx, bias, wh): (&[f32], &[f32], &[f32], &[f32]), init: State) -> Vec<f32> {
        let (h, k, hw, t) = (dims.h, dims.k, dims.hw(), dims.t);
        let s_len = dims.state();
        let sig = |v: f64| 1.0 / (1.0 + (-v).exp());
        let mut out = Vec::new();
        for v in 0..dims.b {
            let (mut hs, mut cs): (Vec<f32>, Vec<f64>) = match init {
                Some((h0, c0)) => (
                    h0[v * s_len..][..s_len].to_vec(),
                    c0[v * s_len..][..s_len].iter().map(|&a| a as f64).collect(),
                ),
                None => (vec![0.0; s_len], vec![0.0; s_len]),
            };
            for step in 0..t {
                let xt = &x[(v * t + step) * c * hw..][..c * hw];
                let gx = conv_direct(xt, wx, c, 4 * h, dims.height, dims.width, k);
                let gh = conv_direct(&hs, wh, h, 4 * h, dims.height, dims.width, k);
                let pre = |q: usize, ch: usize, j: usize| {
                    let i = (q * h + ch) * hw + j;
                    gx[i] as f64 + gh[i] as f64 + bias[q * h + ch] as f64
                };
                for ch in 0..h {
                    for j in 0..hw {
                        let (i, f, o, g) = (
                            sig(pre(0, ch, j)),
                            sig(pre(1, ch, j)),
                            sig(pre(2, ch, j)),
                            pre(3, ch, j).tanh(),
                        );
                        let cell = f * cs[ch * hw + j] + i * g;
                        cs[ch * hw + j] = cell;
                        hs[ch * hw + j] = (o * cell.tanh()) as f32;
                    }
                }
                out.extend_from_slice(&hs);
            }
        }
        out
    }

    #[test]
    fn the_layer_is_convlstm_pytorchs_cell() {
        // Batches of 1 (bands on threads) and 3 (videos on threads), C ≠ h, images of several
        // bands (22 × 20 = 440 pixels, bands of 12 rows) and of one, k = 3 and 5, from zero
        // and from a carried state; kept activations or not, the same hidden states.
        for (b, t, c, h, (height, width), k) in [
            (1, 6, 2, 3, (22, 20), 3),
            (3, 4, 1, 2, (7, 5), 3),
            (2, 3, 3, 1, (9, 30), 5),
            (1, 1, 2, 2, (6, 6), 3),
        ] {
            let dims = Dims {
                b,
                t,
                h,
                height,
                width,
                k,
            };
            let (x, wx, bias, wh) = layer(dims, c, 71);
            let inp = input(&x, c, k, &wx, &bias);
            let what = format!("b {b}, t {t}, c {c}, h {h}, k {k}");
            let want = reference(dims, c, (&x, &wx, &bias, &wh), None);
            let kept = forward(inp, &wh, dims, None, true);
            assert_close(&kept.hidden, &want, 2e-5, &format!("{what}: hidden"));
            let plain = forward(inp, &wh, dims, None, false);
            assert_eq!(plain.hidden, kept.hidden, "{what}: kept or not");
            assert!(plain.saved.is_none());
            let saved = kept.saved.unwrap();
            // The last kept cell plane is the last cell state.
            let s_len = dims.state();
            let last: Vec<f32> = saved
                .cell
                .chunks(t * s_len)
                .flat_map(|cb| cb[(t - 1) * s_len..].to_vec())
                .collect();
            assert_eq!(plain.c_last, last, "{what}: last cell");
            // From a carried state (random, so the first step's hidden half is not zero).
            let h0 = values(b * s_len, 75);
            let c0: Vec<f32> = values(b * s_len, 76).iter().map(|v| v * 2.0).collect();
            let want = reference(dims, c, (&x, &wx, &bias, &wh), Some((&h0, &c0)));
            let from = forward(inp, &wh, dims, Some((&h0, &c0)), false);
            assert_close(&from.hidden, &want, 2e-5, &format!("{what}: hidden from a state"));
            assert_ne!(from.hidden, plain.hidden, "{what}: the carried state must matter");
        }
    }

    #[test]
    fn threads_sharing_the_bands_give_the_same_numbers() {
        // One and two videos; 1 to 5 threads on 4 bands (11 rows of 6, bands of 3 rows) and on
        // 2 (more threads than bands): every output bit for bit as on one thread.
        for b in [1, 2] {
            for band_rows in [3, 6] {
                let dims = Dims {
                    b,
                    t: 5,
                    h: 2,
                    height: 11,
                    width: 6,
                    k: 3,
                };
                let c = 3;
                let (x, wx, bias, wh) = layer(dims, c, 41);
                let inp = input(&x, c, 3, &wx, &bias);
                let h0 = values(b * dims.state(), 45);
                let c0 = values(b * dims.state(), 46);
                for (init, save) in [(None, true), (Some((&h0[..], &c0[..])), false)] {
                    let one = forward_shared(inp, &wh, dims, (init, save), band_rows * 6, 1);
                    for share in 2..=5 {
                        let many = forward_shared(inp, &wh, dims, (init, save), band_rows * 6, share);
                        let what = format!("b {b}, band rows {band_rows}, {share} threads, save {save}");
                        assert_eq!(many.hidden, one.hidden, "{what}: hidden");
                        assert_eq!(many.c_last, one.c_last, "{what}: last cell");
                        let kept = |f: &Forward| f.saved.as_ref().map(|s| (s.gates.clone(), s.cell.clone()));
                        assert_eq!(kept(&many), kept(&one), "{what}: kept activations");
                    }
                }
            }
        }
    }

    #[test]
    fn a_sequence_run_in_pieces_from_the_carried_state_equals_it_run_whole() {
        // T = 7 as 3 + 1 + 3 steps, each piece from the state the previous one ended in (the
        // first from zero): the same hidden states bit for bit, and the last cell state equals
        // the whole run's. T = 0 returns the state it was given.
        for b in [1, 2] {
            let dims = Dims {
                b,
                t: 7,
                h: 3,
                height: 6,
                width: 5,
                k: 3,
            };
            let c = 2;
            let (x, wx, bias, wh) = layer(dims, c, 31);
            let (s_len, x_len) = (dims.state(), c * dims.hw());
            let whole = forward(input(&x, c, 3, &wx, &bias), &wh, dims, None, false);
            // Steps [t0, t1) of every video: [B, n, …].
            let steps = |buf: &[f32], per: usize, t0: usize, t1: usize| -> Vec<f32> {
                (0..b)
                    .flat_map(|v| buf[(v * 7 + t0) * per..(v * 7 + t1) * per].to_vec())
                    .collect()
            };
            let mut state: Option<(Vec<f32>, Vec<f32>)> = None;
            let mut pieces = vec![Vec::new(); b];
            for (t0, t1) in [(0, 3), (3, 3), (3, 4), (4, 7)] {
                let d = Dims { t: t1 - t0, ..dims };
                let xp = steps(&x, x_len, t0, t1);
                let init = state.as_ref().map(|(h, c)| (&h[..], &c[..]));
                let out = forward(input(&xp, c, 3, &wx, &bias), &wh, d, init, false);
                for (v, piece) in pieces.iter_mut().enumerate() {
                    piece.extend_from_slice(&out.hidden[v * d.t * s_len..(v + 1) * d.t * s_len]);
                }
                let h_last = match d.t {
                    0 => state.as_ref().map(|s| s.0.clone()).unwrap_or_default(),
                    n => (0..b)
                        .flat_map(|v| out.hidden[((v + 1) * n - 1) * s_len..(v + 1) * n * s_len].to_vec())
                        .collect(),
                };
                if d.t == 0 {
                    assert_eq!(Some(&out.c_last), state.as_ref().map(|s| &s.1), "b {b}: T = 0");
                }
                state = Some((h_last, out.c_last));
            }
            assert_eq!(pieces.concat(), whole.hidden, "b {b}: hidden states");
            assert_eq!(state.map(|s| s.1), Some(whole.c_last), "b {b}: last cell state");
        }
    }
}
