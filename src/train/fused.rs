//! The per-parameter arithmetic after the backward (SPEC §4.3: global-norm clipping, AdamW,
//! the weight EMA) as single in-place passes on the flex CPU back-end.
//!
//! As burn tensor ops these are a dozen element-wise operations per parameter tensor, each
//! a fresh allocation and a pass over its values on one thread: for the paper model's
//! 36.8 M parameters that was ~110 ms of clipping, ~110 ms of AdamW and ~26 ms of EMA per
//! iteration (issue #6). Here each is one pass over the tensors' own buffers (in place when
//! burn holds the only reference, which it does for gradients, moments and the EMA), split
//! over the threads. The arithmetic is burn's, in the same order and precision, so a step
//! gives the same values as the tensor-op path to float rounding. Other back-ends (ndarray,
//! wgpu) take the tensor-op path.

use burn::backend::Flex;
use burn::backend::flex::FlexTensor;
use burn::optim::{AdamW, AdamWConfig, AdamWState, AdaptiveMomentumState, LearningRate, Optimizer};
use burn::tensor::{DType, Device, Tensor};
use rayon::prelude::*;

/// Values per parallel work item: fixed, so sums do not depend on the thread count.
const CHUNK: usize = 1 << 16;

/// How [`into_flex`] must lay the values out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Order {
    /// Row-major, as the logical tensor (element-wise with other tensors).
    RowMajor,
    /// Any order that covers every value exactly once (sums, scaling): a transposed
    /// gradient (burn's own convs return their weight gradients so) is used as it is.
    Any,
    /// Row-major, or the transpose of a row-major matrix (see [`transposed_2d`]).
    RowMajorOrTransposed,
}

/// The tensor's flex primitive, its buffer holding exactly its `f32` values in the order
/// asked, or the tensor back when it lives elsewhere (another back-end, the autodiff
/// device) or holds another float type.
// The `Err` is not an error but the caller's tensor handed back for the tensor-op path.
#[allow(clippy::result_large_err)]
fn into_flex<const D: usize>(t: Tensor<D>, order: Order) -> Result<FlexTensor, Tensor<D>> {
    if !is_plain_flex(&t) {
        return Err(t);
    }
    let p = match t.try_into_primitive::<Flex>() {
        Ok(p) => p,
        // Unreachable after the device check; the tensor is gone, so this is a bug, not input.
        Err(e) => unreachable!("flex device without a flex tensor: {e:?}"),
    };
    if p.dtype() != DType::F32 {
        return Err(from_flex(p));
    }
    let l = p.layout();
    let exact = l.start_offset() == 0 && p.bytes().len() == 4 * l.num_elements();
    let usable = match order {
        Order::RowMajor => exact && l.is_contiguous(),
        Order::Any => exact && is_permuted_dense(l.shape().as_slice(), l.strides()),
        Order::RowMajorOrTransposed => {
            exact && (l.is_contiguous() || transposed_2d(l.shape().as_slice(), l.strides()).is_some())
        }
    };
    Ok(if usable { p } else { p.to_contiguous() })
}

/// `Some((a, b))` when the tensor is logically an `a × b` matrix (ignoring dims of size 1)
/// whose buffer holds its transpose row-major: element (i, j) at `j·a + i`.
fn transposed_2d(dims: &[usize], strides: &[isize]) -> Option<(usize, usize)> {
    let kept: Vec<(usize, isize)> = dims
        .iter()
        .copied()
        .zip(strides.iter().copied())
        .filter(|&(d, _)| d > 1)
        .collect();
    match kept[..] {
        [(a, 1), (b, sb)] if sb == a as isize => Some((a, b)),
        _ => None,
    }
}

/// Whether strides are those of a row-major buffer of these dims in some dim order.
fn is_permuted_dense(dims: &[usize], strides: &[isize]) -> bool {
    let mut pairs: Vec<(isize, usize)> = strides
        .iter()
        .copied()
        .zip(dims.iter().copied())
        .filter(|&(_, d)| d > 1)
        .collect();
    pairs.sort_unstable();
    let mut expect = 1isize;
    for (stride, dim) in pairs {
        if stride != expect {
            return false;
        }
        expect *= dim as isize;
    }
    true
}

/// Whether `t` lives on the flex device without autodiff (the device alone does not say:
/// an autodiff flex tensor's device compares equal to the plain one).
pub fn is_plain_flex<const D: usize>(t: &Tensor<D>) -> bool {
    t.device() == Device::flex() && !t.is_autodiff()
}

fn from_flex<const D: usize>(p: FlexTensor) -> Tensor<D> {
    Tensor::from_primitive::<Flex>(p)
}

/// `Σ x²` of a tensor in `f64` (per chunk, then the chunks in order), or `None` when it is
/// not on the flex device.
pub fn sum_squares<const D: usize>(t: &Tensor<D>) -> Option<f64> {
    let p = into_flex(t.clone(), Order::Any).ok()?;
    let xs = p.storage::<f32>();
    let partial: Vec<f64> = xs
        .par_chunks(CHUNK)
        .map(|c| {
            // 16 f32 lanes vectorise; each chunk's lanes are then added in f64.
            let mut acc = [0f32; 16];
            let mut it = c.chunks_exact(16);
            for v in &mut it {
                for (a, x) in acc.iter_mut().zip(v) {
                    *a += x * x;
                }
            }
            acc.iter().map(|&a| a as f64).sum::<f64>() + it.remainder().iter().map(|&x| (x * x) as f64).sum::<f64>()
        })
        .collect();
    Some(partial.iter().sum())
}

/// `t · s`, in place when possible; any back-end.
pub fn scale<const D: usize>(t: Tensor<D>, s: f32) -> Tensor<D> {
    match into_flex(t, Order::Any) {
        Ok(mut p) => {
            p.storage_mut::<f32>().par_chunks_mut(CHUNK).for_each(|c| {
                for x in c {
                    *x *= s;
                }
            });
            from_flex(p)
        }
        Err(t) => t.mul_scalar(s),
    }
}

/// `ema · decay + model · (1 − decay)`, in place in `ema` when possible; any back-end.
pub fn blend<const D: usize>(ema: Tensor<D>, model: Tensor<D>, decay: f64) -> Tensor<D> {
    let (a, b) = (decay as f32, (1.0 - decay) as f32);
    match (into_flex(ema, Order::RowMajor), into_flex(model, Order::RowMajor)) {
        (Ok(mut e), Ok(m)) => {
            let ms = m.storage::<f32>();
            e.storage_mut::<f32>()
                .par_chunks_mut(CHUNK)
                .zip(ms.par_chunks(CHUNK))
                .for_each(|(ec, mc)| {
                    for (x, y) in ec.iter_mut().zip(mc) {
                        *x = *x * a + *y * b;
                    }
                });
            from_flex(e)
        }
        (e, m) => {
            let e = e.map_or_else(|t| t, from_flex);
            let m = m.map_or_else(|t| t, from_flex);
            e.mul_scalar(decay) + m.mul_scalar(1.0 - decay)
        }
    }
}

/// PyTorch's AdamW (burn's [`AdamW`] with amsgrad off and plain weight decay), one fused pass
/// per parameter on flex, burn's own step elsewhere. The state is burn's [`AdamWState`], so
/// optimiser records (and `--resume` states) are the same as with burn's AdamW.
#[derive(Debug, Clone)]
pub struct FusedAdamW {
    pub beta_1: f32,
    pub beta_2: f32,
    pub epsilon: f32,
    pub weight_decay: f32,
}

impl FusedAdamW {
    fn burn(&self) -> AdamW {
        AdamWConfig::new()
            .with_beta_1(self.beta_1)
            .with_beta_2(self.beta_2)
            .with_epsilon(self.epsilon)
            .with_weight_decay(self.weight_decay)
            .build()
    }
}

/// The constants of one step, computed as burn's AdamW computes them.
#[derive(Debug, Clone, Copy)]
struct StepConsts {
    b1: f32,
    b2: f32,
    f1: f32,
    f2: f32,
    /// `1 − β₁ᵗ`, `1 − β₂ᵗ`.
    c1: f32,
    c2: f32,
    eps: f32,
    /// `1 − lr·wd` and lr, each rounded to f32 as a scalar op rounds them.
    keep: f32,
    lr: f32,
    decays: bool,
}

/// One AdamW update of a slice of parameters with their gradients and moments.
#[inline]
fn adamw_chunk(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], k: StepConsts) {
    let n = p.len();
    let (g, m, v) = (&g[..n], &mut m[..n], &mut v[..n]);
    for j in 0..n {
        let gj = g[j];
        let mj = m[j] * k.b1 + gj * k.f1;
        let vj = v[j] * k.b2 + gj * gj * k.f2;
        m[j] = mj;
        v[j] = vj;
        let delta = (mj / k.c1) / ((vj / k.c2).sqrt() + k.eps);
        let kept = if k.decays { p[j] * k.keep } else { p[j] };
        p[j] = kept - delta * k.lr;
    }
}

/// Side of the tiles in which [`adamw_transposed`] reads the transposed gradient.
const TILE: usize = 64;

/// [`adamw_chunk`] over a `rows × cols` row-major parameter whose gradient buffer `gt` holds
/// the transpose (`cols × rows`): tile by tile, the gradient tile transposed in L1 first, so
/// neither operand is walked across memory with a long stride.
fn adamw_transposed(
    p: &mut [f32],
    gt: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    (rows, cols): (usize, usize),
    k: StepConsts,
) {
    let band = TILE * cols;
    p.par_chunks_mut(band)
        .zip(m.par_chunks_mut(band))
        .zip(v.par_chunks_mut(band))
        .enumerate()
        .for_each(|(bi, ((pb, mb), vb))| {
            let (r0, n_r) = (bi * TILE, pb.len() / cols);
            let mut tile = vec![0f32; TILE * TILE];
            for c0 in (0..cols).step_by(TILE) {
                let len = TILE.min(cols - c0);
                // Transpose the tile in L1: each source row is a contiguous run over r.
                for j in 0..len {
                    let src = &gt[(c0 + j) * rows + r0..][..n_r];
                    for (r, &x) in src.iter().enumerate() {
                        tile[r * TILE + j] = x;
                    }
                }
                for r in 0..n_r {
                    let at = r * cols + c0;
                    let g = &tile[r * TILE..r * TILE + len];
                    adamw_chunk(
                        &mut pb[at..at + len],
                        g,
                        &mut mb[at..at + len],
                        &mut vb[at..at + len],
                        k,
                    );
                }
            }
        });
}

impl Optimizer for FusedAdamW {
    type State<const D: usize> = AdamWState<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        // f32 on the plain flex device, or burn's step (so `into_flex` below cannot refuse).
        let f32_flex = |t: &Tensor<D>| is_plain_flex(t) && t.dtype() == DType::F32;
        let on_flex = f32_flex(&tensor) && f32_flex(&grad);
        if !on_flex || state.as_ref().is_some_and(|s| s.momentum.max_moment_2.is_some()) {
            return self.burn().step(lr, tensor, grad, state);
        }
        let (time, m, v) = match state {
            Some(s) => (s.momentum.time + 1, s.momentum.moment_1, s.momentum.moment_2),
            None => (1, grad.zeros_like(), grad.zeros_like()),
        };
        let row = Order::RowMajor;
        let (Ok(mut p), Ok(g), Ok(mut m), Ok(mut v)) = (
            into_flex(tensor, row),
            into_flex(grad, Order::RowMajorOrTransposed),
            into_flex(m, row),
            into_flex(v, row),
        ) else {
            unreachable!("p and g were checked to be f32 on flex; m and v are zeros like g, or earlier output")
        };
        let t = time as i32;
        let decay_rate = lr * self.weight_decay as f64;
        let k = StepConsts {
            b1: self.beta_1,
            b2: self.beta_2,
            f1: 1.0 - self.beta_1,
            f2: 1.0 - self.beta_2,
            c1: 1.0 - self.beta_1.powi(t),
            c2: 1.0 - self.beta_2.powi(t),
            eps: self.epsilon,
            keep: (1.0 - decay_rate) as f32,
            lr: lr as f32,
            decays: decay_rate != 0.0,
        };
        let gl = g.layout();
        let gs = g.storage::<f32>();
        let (ps, ms, vs) = (p.storage_mut::<f32>(), m.storage_mut::<f32>(), v.storage_mut::<f32>());
        match transposed_2d(gl.shape().as_slice(), gl.strides()).filter(|_| !gl.is_contiguous()) {
            None => ps
                .par_chunks_mut(CHUNK)
                .zip(gs.par_chunks(CHUNK))
                .zip(ms.par_chunks_mut(CHUNK))
                .zip(vs.par_chunks_mut(CHUNK))
                .for_each(|(((pc, gc), mc), vc)| adamw_chunk(pc, gc, mc, vc, k)),
            Some((rows, cols)) => adamw_transposed(ps, gs, ms, vs, (rows, cols), k),
        }
        let momentum = AdaptiveMomentumState::new(time, from_flex(m), from_flex(v));
        (from_flex(p), Some(AdamWState::new(momentum)))
    }

    fn to_device<const D: usize>(mut state: Self::State<D>, device: &Device) -> Self::State<D> {
        state.momentum = state.momentum.to_device(device);
        state
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    fn read<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().convert::<f32>().try_into_vec::<f32>().unwrap()
    }

    fn assert_close(a: &[f32], b: &[f32], what: &str) {
        assert_eq!(a.len(), b.len(), "{what}: length");
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= 1e-6 * (1.0 + y.abs()), "{what}[{i}]: {x} vs {y}");
        }
    }

    /// More values than one chunk, so several work items and a short last one.
    const SHAPE: [usize; 2] = [300, 257];

    #[test]
    fn adamw_matches_burns_adamw_over_steps_with_and_without_decay() {
        let dev = Device::flex();
        dev.seed(3);
        for wd in [0.0f32, 0.05] {
            let fused = FusedAdamW {
                beta_1: 0.9,
                beta_2: 0.999,
                epsilon: 1e-8,
                weight_decay: wd,
            };
            let reference = fused.burn();
            let p0 = Tensor::<2>::random(SHAPE, Distribution::Normal(0.0, 1.0), &dev);
            let (mut p, mut q) = (p0.clone(), p0.clone());
            let (mut s, mut r) = (None, None);
            for step in 0..3 {
                let g = Tensor::<2>::random(SHAPE, Distribution::Normal(0.0, 0.1), &dev);
                // The second step's gradient is a transposed view (not contiguous).
                let g = if step == 1 {
                    g.reshape([SHAPE[1], SHAPE[0]]).transpose()
                } else {
                    g
                };
                let lr = 1e-3 * (step + 1) as f64;
                (p, s) = fused.step(lr, p, g.clone(), s);
                (q, r) = reference.step(lr, q, g, r);
                let (a, b) = (s.clone().unwrap().momentum, r.clone().unwrap().momentum);
                assert_eq!(a.time, b.time);
                assert_close(&read(a.moment_1), &read(b.moment_1), "m");
                assert_close(&read(a.moment_2), &read(b.moment_2), "v");
                assert_close(&read(p.clone()), &read(q.clone()), &format!("wd {wd} step {step}: p"));
            }
            // Not a no-op: the parameters moved, each by at most ~Σ lr = 6e-3 (plus decay).
            let (now, before) = (read(p.clone()), read(p0.clone()));
            let moved = now.iter().zip(&before).filter(|(a, b)| a != b).count();
            assert!(moved * 1000 > 999 * now.len(), "{moved} of {} moved", now.len());
            for (a, b) in now.iter().zip(&before) {
                assert!((a - b).abs() < 6.5e-3 + 6e-3 * wd * b.abs(), "{a} from {b}");
            }
        }
    }

    #[test]
    fn adamw_moves_each_parameter_by_the_learning_rate_on_its_first_step() {
        // t = 1: m̂ = g and v̂ = g², so the update is lr·g/(|g| + ε) ≈ ±lr; decay shrinks p first.
        let dev = Device::flex();
        let p = Tensor::<1>::from_floats([1.0, -2.0, 0.5], &dev);
        let g = Tensor::<1>::from_floats([0.3, -0.01, 0.0], &dev);
        let opt = FusedAdamW {
            beta_1: 0.9,
            beta_2: 0.999,
            epsilon: 1e-8,
            weight_decay: 0.5,
        };
        let (p, _) = opt.step(0.1, p, g, None);
        let want = [1.0 * 0.95 - 0.1, -2.0 * 0.95 + 0.1, 0.5 * 0.95];
        assert_close(&read(p), &want, "p");
    }

    #[test]
    fn permuted_dense_layouts_are_recognised() {
        assert!(is_permuted_dense(&[2, 3], &[3, 1]));
        assert!(is_permuted_dense(&[3, 2], &[1, 3])); // a transpose
        assert!(is_permuted_dense(&[512, 512, 1], &[1, 512, 1]));
        assert!(!is_permuted_dense(&[3, 2], &[0, 1])); // broadcast
        assert!(!is_permuted_dense(&[2, 3], &[4, 1])); // rows with gaps (a slice)
        assert_eq!(transposed_2d(&[512, 2048, 1], &[1, 512, 1]), Some((512, 2048)));
        assert_eq!(transposed_2d(&[3, 5], &[5, 1]), None); // row-major
        assert_eq!(transposed_2d(&[3, 5, 2], &[1, 3, 15]), None); // three dims
    }

    #[test]
    fn blend_scale_and_sum_of_squares_match_the_tensor_ops() {
        let dev = Device::flex();
        dev.seed(4);
        let e = Tensor::<2>::random(SHAPE, Distribution::Normal(0.0, 1.0), &dev);
        let m = Tensor::<2>::random(SHAPE, Distribution::Normal(0.0, 1.0), &dev);
        let want = read(e.clone().mul_scalar(0.999) + m.clone().mul_scalar(1.0 - 0.999));
        assert_close(&read(blend(e.clone(), m.clone(), 0.999)), &want, "blend");
        assert_close(
            &read(scale(m.clone(), 0.25)),
            &read(m.clone().mul_scalar(0.25)),
            "scale",
        );
        let exact: f64 = read(m.clone()).iter().map(|&x| (x as f64) * (x as f64)).sum();
        let ss = sum_squares(&m).unwrap();
        assert!((ss - exact).abs() < 1e-6 * exact, "{ss} vs {exact}");
        // A transposed view (as the pointwise convs' weight gradients are) is summed and
        // scaled in its own buffer order; read back it is still the logical tensor.
        let mt = m.clone().transpose();
        assert_close(
            &read(scale(mt.clone(), 0.5)),
            &read(mt.clone().mul_scalar(0.5)),
            "scale, transposed",
        );
        assert!((sum_squares(&mt).unwrap() - exact).abs() < 1e-6 * exact);
        // Off the plain flex device: no host sum, and the tensor-op paths.
        let ad = Tensor::<1>::from_floats([3.0, 4.0], &dev.clone().autodiff());
        assert_eq!(sum_squares(&ad), None);
        assert_eq!(read(scale(ad.clone(), 2.0)), vec![6.0, 8.0]);
        assert_eq!(read(blend(ad.clone(), ad.clone().mul_scalar(3.0), 0.5)), vec![6.0, 8.0]);
    }
}
