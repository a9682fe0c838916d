//! The ConvLSTM recurrence (SPEC §3.1 step 1) as plain Rust on `f32` slices: the forward,
//! with the activations a backward needs ([`super::convlstm_backward`] is the backward).
//!
//! Why by hand: the recurrence is T sequential steps of a small 3×3 convolution plus gate
//! arithmetic. As tensor ops each step is ~20 small kernels, each allocating and recorded
//! for autodiff, and the framework's per-op overhead dominates the arithmetic (measured in
//! issue #6). Here each step is one im2col + one GEMM (the `gemm` crate, which picks AVX2/
//! AVX-512/NEON at run time) and one fused pass over the gates, done band by band so each
//! band's operands stay in cache (see [`BAND_PIXELS`]); videos of a batch run on separate
//! threads, as their recurrences are independent, and a lone video shares out its bands.
//!
//! A layer's conv over `concat(x_t, h_{t-1})` is split by linearity: the input half
//! `conv_x(x_t)` (with the bias) does not depend on the state, so [`input_forward`] runs it
//! for all frames in parallel; only the hidden half is inside the sequential [`forward`].
//!
//! [`BAND_PIXELS`]: super::im2col::BAND_PIXELS
//! [`input_forward`]: super::conv::input_forward
//!
//! Layout: batch-major. `gx` is the input half of the gates `[B, T, 4h, H, W]`; the hidden
//! half's weight is `[4h, h, k, k]`. Gate order i, f, o, g (ConvLSTM_pytorch). The state
//! starts at zero.

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
    /// Values of `gx` (and of its gradient).
    pub fn gx_len(&self) -> usize {
        self.b * self.t * self.gates()
    }
    /// Values of the output (and of its gradient).
    pub fn out_len(&self) -> usize {
        self.b * self.t * self.state()
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

/// Run the recurrence over the input half `gx` `[B, T, 4h, H, W]`, which it consumes: each
/// step adds the hidden half into its slice of `gx` and activates it there, so the saved
/// gates are that same buffer (no second 4h·H·W·T buffer per video, no copy). Returns the
/// hidden state of every step `[B, T, h, H, W]` and, when `save`, what
/// [`super::convlstm_backward::backward`] needs besides the hidden state itself.
///
/// # Panics
/// If `gx` or `weight` do not have the sizes `dims` implies (callers check shapes).
pub fn forward(gx: Vec<f32>, weight: &[f32], dims: Dims, save: bool) -> (Vec<f32>, Option<Saved>) {
    let (hidden, saved, _) = forward_in_bands(gx, weight, dims, save, None, dims.band_len());
    (hidden, saved)
}

/// [`forward`] for inference (nothing saved) from the state `(h0, c0)`, each `[B, h, H, W]`,
/// that a previous call over the frames before these ended in: returns the hidden state of
/// every step `[B, T, h, H, W]` and the last step's cell state `[B, h, H, W]`. Running a
/// sequence in pieces this way gives the same numbers as running it whole.
///
/// # Panics
/// If `gx`, `weight`, `h0` or `c0` do not have the sizes `dims` implies.
pub fn forward_from(gx: Vec<f32>, weight: &[f32], dims: Dims, h0: &[f32], c0: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let (hidden, _, c_last) = forward_in_bands(gx, weight, dims, false, Some((h0, c0)), dims.band_len());
    (hidden, c_last)
}

/// [`forward`] with bands of `band_len` values (whole rows), from the state `init` (zero
/// when `None`); also returns the last step's cell state `[B, h, H, W]` when started from
/// `init` (empty otherwise: training does not need it).
pub(super) fn forward_in_bands(
    mut gx: Vec<f32>,
    weight: &[f32],
    dims: Dims,
    save: bool,
    init: Option<(&[f32], &[f32])>,
    band_len: usize,
) -> (Vec<f32>, Option<Saved>, Vec<f32>) {
    assert_eq!(gx.len(), dims.gx_len(), "ConvLSTM gates size");
    assert_eq!(weight.len(), dims.weight_len(), "ConvLSTM weight size");
    let (g_len, s_len, t) = (dims.gates(), dims.state(), dims.t);
    let state_len = dims.b * s_len;
    if let Some((h0, c0)) = init {
        assert!(
            h0.len() == state_len && c0.len() == state_len,
            "ConvLSTM initial state size"
        );
    }
    let mut hidden = vec![0.0f32; dims.out_len()];
    // The backward needs every step's cell state; inference only the previous one, so it
    // alternates between two planes that stay in cache instead of filling T of them.
    let cell_slots = if save { t } else { t.min(2) };
    let mut cell = vec![0.0f32; dims.b * cell_slots * s_len];
    // Each video's slice of the initial state.
    let init_of = |v: usize| init.map(|(h0, c0)| (&h0[v * s_len..][..s_len], &c0[v * s_len..][..s_len]));
    let jobs: Vec<_> = gx
        .chunks_mut(t * g_len)
        .zip(hidden.chunks_mut(t * s_len))
        .zip(cell.chunks_mut((cell_slots * s_len).max(1)))
        .enumerate()
        .map(|(v, ((gx_b, h_b), c_b))| (gx_b, h_b, c_b, init_of(v)))
        .collect();
    // Videos run on separate threads; with fewer videos than threads (inference), the
    // bands of each step are shared out instead.
    let parallel_bands = dims.b < rayon::current_num_threads();
    jobs.into_par_iter().for_each(|(gx_b, h_b, c_b, init_b)| {
        forward_video(gx_b, weight, dims, h_b, c_b, init_b, (band_len, parallel_bands))
    });
    // The last step wrote plane (T − 1) mod slots of each video's cell buffer.
    let c_last = match init {
        None => Vec::new(),
        Some((_, c0)) if t == 0 => c0.to_vec(),
        Some(_) => {
            let last = (t - 1) % cell_slots;
            cell.chunks(cell_slots * s_len)
                .flat_map(|c_b| &c_b[last * s_len..][..s_len])
                .copied()
                .collect()
        }
    };
    let saved = save.then(|| Saved {
        dims,
        gates: gx,
        cell,
        weight: weight.to_vec(),
    });
    (hidden, saved, c_last)
}

/// One band's share of a step: its segment of each of the 4h gate planes (gate-major,
/// as in `gx`) and of the h cell and hidden planes.
struct Band<'a> {
    /// First image row.
    y0: usize,
    gates: Vec<&'a mut [f32]>,
    cell: Vec<&'a mut [f32]>,
    hidden: Vec<&'a mut [f32]>,
}

/// Scratch of [`band_forward`]; every value it reads was written in the same call.
#[derive(Default)]
struct BandScratch {
    col: Vec<f32>,
    hh: Vec<f32>,
}

impl BandScratch {
    /// At least the sizes one band of `dims` needs (grown once, then reused).
    fn fit(&mut self, dims: Dims, band_len: usize) -> &mut Self {
        let (col, hh) = (dims.col_rows() * band_len, 4 * dims.h * band_len);
        if self.col.len() < col {
            self.col.resize(col, 0.0);
        }
        if self.hh.len() < hh {
            self.hh.resize(hh, 0.0);
        }
        self
    }
}

thread_local! {
    /// Each thread's band scratch: a step hands its bands to whichever threads are free, so
    /// the buffers live with the thread rather than with one video's loop (allocating them
    /// per task cost an allocation and a zero-fill per band task per step). `band_forward`
    /// starts no parallel work, so a thread never re-enters its own borrow.
    static BAND_SCRATCH: std::cell::RefCell<BandScratch> = std::cell::RefCell::default();
}

/// The cell state `[h, H, W]` of the previous step (`c0`, the initial state, at the first)
/// and the plane this step writes, from a video's cell buffer of `slots` planes: step t uses
/// plane `t % slots` (every step its own plane when the buffer holds all T, two alternating
/// ones otherwise).
fn cell_planes<'a>(cell: &'a mut [f32], c0: &'a [f32], step: usize, slots: usize) -> (&'a [f32], &'a mut [f32]) {
    let len = c0.len();
    let now = step % slots;
    if step == 0 {
        return (c0, &mut cell[now * len..(now + 1) * len]);
    }
    let prev = (step - 1) % slots;
    if prev < now {
        let (a, b) = cell.split_at_mut(now * len);
        (&a[prev * len..(prev + 1) * len], &mut b[..len])
    } else {
        let (a, b) = cell.split_at_mut(prev * len);
        (&b[..len], &mut a[now * len..(now + 1) * len])
    }
}

/// One video's recurrence from the state `init` (`(h0, c0)`, zero when `None`); `gates`
/// holds the input half on entry and the activated gates on return; `cell` holds T planes
/// (all kept) or two (alternating).
fn forward_video(
    gates: &mut [f32],
    weight: &[f32],
    dims: Dims,
    hidden: &mut [f32],
    cell: &mut [f32],
    init: Option<(&[f32], &[f32])>,
    (band_len, parallel): (usize, bool),
) {
    let (g_len, s_len, hw) = (dims.gates(), dims.state(), dims.hw());
    let zeros;
    let (h0, c0) = match init {
        Some((h0, c0)) => (Some(h0), c0),
        None => {
            zeros = vec![0.0f32; s_len];
            (None, &zeros[..])
        }
    };
    let slots = cell.len() / s_len;
    for step in 0..dims.t {
        let (h_done, h_rest) = hidden.split_at_mut(step * s_len);
        // A zero initial state skips the hidden half of the first step (it is exactly zero).
        let h_prev = if step > 0 {
            Some(&h_done[(step - 1) * s_len..])
        } else {
            h0
        };
        let (c_prev, c_now) = cell_planes(cell, c0, step, slots);
        let mut bands: Vec<Band> = (0..hw.div_ceil(band_len))
            .map(|i| Band {
                y0: i * band_len / dims.width,
                gates: Vec::with_capacity(4 * dims.h),
                cell: Vec::with_capacity(dims.h),
                hidden: Vec::with_capacity(dims.h),
            })
            .collect();
        let planes = |buf| band_segments(buf, hw, band_len);
        for plane in planes(&mut gates[step * g_len..(step + 1) * g_len]) {
            bands.iter_mut().zip(plane).for_each(|(b, seg)| b.gates.push(seg));
        }
        for plane in planes(c_now) {
            bands.iter_mut().zip(plane).for_each(|(b, seg)| b.cell.push(seg));
        }
        for plane in planes(&mut h_rest[..s_len]) {
            bands.iter_mut().zip(plane).for_each(|(b, seg)| b.hidden.push(seg));
        }
        let run = |band: Band| {
            BAND_SCRATCH.with_borrow_mut(|s| band_forward(band, h_prev, c_prev, weight, dims, s.fit(dims, band_len)))
        };
        if parallel {
            bands.into_par_iter().for_each(run);
        } else {
            bands.into_iter().for_each(run);
        }
    }
}

/// `buf`'s planes of `hw` values, each cut into segments of `band_len`.
fn band_segments(buf: &mut [f32], hw: usize, band_len: usize) -> Vec<Vec<&mut [f32]>> {
    buf.chunks_mut(hw)
        .map(|plane| plane.chunks_mut(band_len).collect())
        .collect()
}

/// One band of one step: the hidden half of its gates from `h_prev` (none at the first
/// step, whose state is zero), then the gate arithmetic.
fn band_forward(
    band: Band,
    h_prev: Option<&[f32]>,
    c_prev: &[f32],
    weight: &[f32],
    dims: Dims,
    scratch: &mut BandScratch,
) {
    let Band {
        y0,
        mut gates,
        cell,
        hidden,
    } = band;
    let (h, hw) = (dims.h, dims.hw());
    let len = cell[0].len();
    let hh = &mut scratch.hh[..4 * h * len];
    match h_prev {
        Some(h_prev) => {
            let col = &mut scratch.col[..dims.col_rows() * len];
            let rows = y0..y0 + len / dims.width;
            im2col_rows(h_prev, col, h, (dims.height, dims.width), dims.k, rows);
            matmul(hh, weight, col, (4 * h, dims.col_rows(), len), false, false, false);
        }
        None => hh.fill(0.0),
    }
    let (gi, rest) = gates.split_at_mut(h);
    let (gf, rest) = rest.split_at_mut(h);
    let (go, gg) = rest.split_at_mut(h);
    for (c, (c_now, h_now)) in cell.into_iter().zip(hidden).enumerate() {
        let pre = [&mut *gi[c], &mut *gf[c], &mut *go[c], &mut *gg[c]];
        let hh = [0, 1, 2, 3].map(|q| &hh[(q * h + c) * len..][..len]);
        let c_prev = &c_prev[c * hw + y0 * dims.width..][..len];
        gates_forward(pre, hh, c_prev, c_now, h_now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::cpu::testing::values;

    #[test]
    fn inference_with_two_cell_planes_gives_the_same_hidden_states() {
        // Without `save` the cell state alternates between two planes; the hidden states
        // must equal those of the run that keeps all T planes, bit for bit, for T = 1
        // (one plane), 2 and an odd T.
        for (b, t) in [(1, 1), (2, 2), (1, 5), (2, 6)] {
            let dims = Dims {
                b,
                t,
                h: 3,
                height: 7,
                width: 5,
                k: 3,
            };
            let gx: Vec<f32> = values(dims.gx_len(), 21).iter().map(|v| v * 1.5).collect();
            let w: Vec<f32> = values(dims.weight_len(), 22).iter().map(|v| v * 0.6).collect();
            let (h_all, saved, _) = forward_in_bands(gx.clone(), &w, dims, true, None, 5);
            let (h_two, none, _) = forward_in_bands(gx, &w, dims, false, None, 5);
            assert!(saved.is_some() && none.is_none());
            assert_eq!(h_two, h_all, "b {b}, t {t}");
        }
    }

    #[test]
    fn a_sequence_run_in_pieces_from_the_carried_state_equals_it_run_whole() {
        // T = 7 as 3 + 1 + 3 steps, each piece from the state the previous one ended in
        // (the first from zeros): the same hidden states bit for bit, and the last cell state
        // equals the whole run's. A piece started from zeros instead differs (the test can
        // tell a broken carry).
        for b in [1, 2] {
            let dims = Dims {
                b,
                t: 7,
                h: 3,
                height: 6,
                width: 5,
                k: 3,
            };
            let (s_len, g_len) = (dims.state(), dims.gates());
            let gx: Vec<f32> = values(dims.gx_len(), 31).iter().map(|v| v * 1.5).collect();
            let w: Vec<f32> = values(dims.weight_len(), 32).iter().map(|v| v * 0.6).collect();
            let (whole, saved, _) = forward_in_bands(gx.clone(), &w, dims, true, None, dims.band_len());
            let cell_all = saved.unwrap().cell;
            // Steps [t0, t1) of every video: [B, n, …].
            let steps = |buf: &[f32], per: usize, t0: usize, t1: usize| -> Vec<f32> {
                (0..b)
                    .flat_map(|v| buf[(v * 7 + t0) * per..(v * 7 + t1) * per].to_vec())
                    .collect()
            };
            let (mut h, mut c) = (vec![0.0f32; b * s_len], vec![0.0f32; b * s_len]);
            let mut pieces = vec![Vec::new(); b];
            for (t0, t1) in [(0, 3), (3, 4), (4, 7)] {
                let d = Dims { t: t1 - t0, ..dims };
                let (hp, c_last) = forward_from(steps(&gx, g_len, t0, t1), &w, d, &h, &c);
                for (v, piece) in pieces.iter_mut().enumerate() {
                    piece.extend_from_slice(&hp[v * d.t * s_len..(v + 1) * d.t * s_len]);
                }
                // The last step's hidden state of every video: [B, h, H, W].
                h = (0..b)
                    .flat_map(|v| hp[((v + 1) * d.t - 1) * s_len..(v + 1) * d.t * s_len].to_vec())
                    .collect();
                c = c_last;
            }
            assert_eq!(pieces.concat(), whole, "b {b}: hidden states");
            assert_eq!(c, steps(&cell_all, s_len, 6, 7), "b {b}: last cell state");
            // Without the carry (the last piece from zeros) the numbers change.
            let d = Dims { t: 3, ..dims };
            let zeros = vec![0.0f32; b * s_len];
            let (cold, _) = forward_from(steps(&gx, g_len, 4, 7), &w, d, &zeros, &zeros);
            assert_ne!(cold, steps(&whole, s_len, 4, 7));
        }
    }
}
