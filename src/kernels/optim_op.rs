//! The per-parameter arithmetic after the backward (SPEC §4.3: global-norm clipping, AdamW,
//! the weight EMA) as single in-place passes on the flex CPU back-end (the arithmetic is
//! [`super::cpu::optim`]).
//!
//! As burn tensor ops these are a dozen element-wise operations per parameter tensor, each
//! a fresh allocation and a pass over its values on one thread: for the paper model's
//! 36.8 M parameters that was ~110 ms of clipping, ~110 ms of AdamW and ~26 ms of EMA per
//! iteration (issue #6). Here each is one pass over the tensors' own buffers (in place when
//! burn holds the only reference, which it does for gradients, moments and the EMA), split
//! over the threads. The arithmetic is burn's, in the same order and precision, so a step
//! gives the same values as the tensor-op path to float rounding. Other back-ends (ndarray,
//! wgpu) take the tensor-op path.

use burn::optim::{AdamW, AdamWConfig, AdamWState, AdaptiveMomentumState, LearningRate, Optimizer};
use burn::tensor::{DType, Device, Tensor};

use super::cpu::optim::{self, StepConsts, transposed_2d};
use super::flex_io::{Order, from_flex, into_flex};
use super::fused_cpu_plain;

/// `Σ x²` of a tensor in `f64` (per chunk, then the chunks in order), or `None` when it is
/// not on the flex device.
pub fn sum_squares<const D: usize>(t: &Tensor<D>) -> Option<f64> {
    let p = into_flex(t.clone(), Order::Any).ok()?;
    Some(optim::sum_squares(p.storage::<f32>()))
}

/// `t · s`, in place when possible; any back-end.
pub fn scale<const D: usize>(t: Tensor<D>, s: f32) -> Tensor<D> {
    match into_flex(t, Order::Any) {
        Ok(mut p) => {
            optim::scale(p.storage_mut::<f32>(), s);
            from_flex(p)
        }
        Err(t) => t.mul_scalar(s),
    }
}

/// `ema · decay + model · (1 − decay)`, in place in `ema` when possible; any back-end.
pub fn blend<const D: usize>(ema: Tensor<D>, model: Tensor<D>, decay: f64) -> Tensor<D> {
    let (a, b) = (decay as f32, (1.0 - decay) as f32);
    #[cfg(any(feature = "wgpu", feature = "cuda"))]
    let (ema, model) = match cube::blend(ema, model, a, b) {
        Ok(out) => return out,
        Err(pair) => pair,
    };
    match (into_flex(ema, Order::RowMajor), into_flex(model, Order::RowMajor)) {
        (Ok(mut e), Ok(m)) => {
            optim::blend(e.storage_mut::<f32>(), m.storage::<f32>(), a, b);
            from_flex(e)
        }
        (e, m) => {
            let e = e.map_or_else(|t| t, from_flex);
            let m = m.map_or_else(|t| t, from_flex);
            e.mul_scalar(decay) + m.mul_scalar(1.0 - decay)
        }
    }
}

/// See [`super::blend_all`].
pub fn blend_all(pairs: Vec<(Tensor<1>, Tensor<1>)>, decay: f64) -> Vec<Tensor<1>> {
    #[cfg(any(feature = "wgpu", feature = "cuda"))]
    let pairs = match cube::blend_all(pairs, decay as f32, (1.0 - decay) as f32) {
        Ok(out) => return out,
        Err(pairs) => pairs,
    };
    pairs.into_iter().map(|(e, m)| blend(e, m, decay)).collect()
}

/// Sums of squares of gradients on one CubeCL device: see [`super::SquareSums`].
#[derive(Default)]
pub struct SquareSums {
    tensors: Vec<cube::Prim>,
    device: Option<Device>,
}

impl SquareSums {
    /// Take `t` when it is an `f32` tensor of a plain CubeCL device, the device of those
    /// taken before; hand it back otherwise.
    #[allow(clippy::result_large_err)]
    pub fn push<const D: usize>(&mut self, t: Tensor<D>) -> Result<(), Tensor<D>> {
        let device = t.device();
        if self.device.as_ref().is_some_and(|d| *d != device) {
            return Err(t);
        }
        self.tensors.push(cube::take(t)?);
        self.device = Some(device);
        Ok(())
    }

    /// `Σ x²` over everything taken, as a `[1]` tensor on its device; `None` when nothing was.
    pub fn total(self) -> Option<Tensor<1>> {
        cube::sum_squares(self.tensors)
    }
}

/// What [`optimizer_scope`] sets for the AdamW steps of its thread.
struct Scope {
    /// The clip's factor for every gradient.
    scale: Option<Tensor<1>>,
    /// The steps on CubeCL devices, launched four at a time (flushed when dropped).
    #[cfg(any(feature = "wgpu", feature = "cuda"))]
    queue: super::cube::optim::AdamwQueue,
}

thread_local! {
    /// The enclosing [`optimizer_scope`] of this thread, if any.
    static SCOPE: std::cell::RefCell<Option<Scope>> = const { std::cell::RefCell::new(None) };
}

/// See [`super::optimizer_scope`].
pub fn optimizer_scope<T>(scale: Option<Tensor<1>>, f: impl FnOnce() -> T) -> T {
    /// Puts the outer scope back, dropping (so flushing) this one, even on a panic.
    struct Restore(Option<Scope>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let ours = SCOPE.with(|s| std::mem::replace(&mut *s.borrow_mut(), self.0.take()));
            drop(ours);
        }
    }
    let scope = Scope {
        scale,
        #[cfg(any(feature = "wgpu", feature = "cuda"))]
        queue: Default::default(),
    };
    let _restore = Restore(SCOPE.with(|s| s.borrow_mut().replace(scope)));
    f()
}

/// The factor of the enclosing [`optimizer_scope`], if any.
fn grad_scale() -> Option<Tensor<1>> {
    SCOPE.with(|s| s.borrow().as_ref().and_then(|scope| scope.scale.clone()))
}

/// PyTorch's AdamW (burn's [`AdamW`] with amsgrad off and plain weight decay), one fused pass
/// per parameter on flex or a CubeCL launch on wgpu/cuda, burn's own step elsewhere. The
/// state is burn's [`AdamWState`], so optimiser records (and `--resume` states) are the same
/// as with burn's AdamW. Inside [`optimizer_scope`] each gradient is first multiplied by its
/// factor (in the CubeCL kernel where that runs), and the CubeCL launches take four
/// parameters each.
#[derive(Debug, Clone)]
pub struct FusedAdamW {
    pub beta_1: f32,
    pub beta_2: f32,
    pub epsilon: f32,
    pub weight_decay: f32,
}

impl FusedAdamW {
    /// The constants of step `time` (1-based) at rate `lr`, as burn's AdamW computes them.
    fn consts(&self, lr: LearningRate, time: usize) -> StepConsts {
        let t = time as i32;
        let decay_rate = lr * self.weight_decay as f64;
        StepConsts {
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
        }
    }

    fn burn(&self) -> AdamW {
        AdamWConfig::new()
            .with_beta_1(self.beta_1)
            .with_beta_2(self.beta_2)
            .with_epsilon(self.epsilon)
            .with_weight_decay(self.weight_decay)
            .build()
    }
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
        // f32 on the plain flex device (so `into_flex` below cannot refuse) or on a plain
        // CubeCL device; burn's step anywhere else.
        let f32_flex = |t: &Tensor<D>| fused_cpu_plain(t) && t.dtype() == DType::F32;
        let on_flex = f32_flex(&tensor) && f32_flex(&grad);
        let on_cube = cube::takes(&tensor) && cube::takes(&grad);
        let scale = grad_scale();
        let fused = (on_flex || on_cube) && state.as_ref().is_none_or(|s| s.momentum.max_moment_2.is_none());
        // The clip's factor: inside the CubeCL kernel, else one multiplication here.
        let (grad, scale) = match scale {
            Some(s) if !(fused && on_cube && cube::takes(&s)) => {
                let s = s.to_device(&grad.device()).reshape([1; D]);
                (grad * s, None)
            }
            s => (grad, s),
        };
        if !fused {
            return self.burn().step(lr, tensor, grad, state);
        }
        let (time, m, v) = match state {
            Some(s) => (s.momentum.time + 1, s.momentum.moment_1, s.momentum.moment_2),
            None => (1, grad.zeros_like(), grad.zeros_like()),
        };
        let k = self.consts(lr, time);
        if on_cube {
            let scale = scale.map(|s| s.to_device(&grad.device()));
            let [p, m, v] = cube::adamw([tensor, grad, m, v], scale, k);
            let momentum = AdaptiveMomentumState::new(time, m, v);
            return (p, Some(AdamWState::new(momentum)));
        }
        let row = Order::RowMajor;
        let (Ok(mut p), Ok(g), Ok(mut m), Ok(mut v)) = (
            into_flex(tensor, row),
            into_flex(grad, Order::RowMajorOrTransposed),
            into_flex(m, row),
            into_flex(v, row),
        ) else {
            unreachable!("p and g were checked to be f32 on flex; m and v are zeros like g, or earlier output")
        };
        let gl = g.layout();
        let gs = g.storage::<f32>();
        let (ps, ms, vs) = (p.storage_mut::<f32>(), m.storage_mut::<f32>(), v.storage_mut::<f32>());
        match transposed_2d(gl.shape().as_slice(), gl.strides()).filter(|_| !gl.is_contiguous()) {
            None => optim::adamw(ps, gs, ms, vs, k),
            Some((rows, cols)) => optim::adamw_transposed(ps, gs, ms, vs, (rows, cols), k),
        }
        let momentum = AdaptiveMomentumState::new(time, from_flex(m), from_flex(v));
        (from_flex(p), Some(AdamWState::new(momentum)))
    }

    fn to_device<const D: usize>(mut state: Self::State<D>, device: &Device) -> Self::State<D> {
        state.momentum = state.momentum.to_device(device);
        state
    }
}

/// The same steps on burn's CubeCL back-ends (wgpu, cuda): one launch per parameter tensor
/// ([`super::cube::optim`]).
#[cfg(any(feature = "wgpu", feature = "cuda"))]
mod cube {
    use burn::backend::Cube;
    use burn::tensor::{DType, Tensor};

    use super::StepConsts;
    use crate::kernels::{cube::optim, fused_cube};

    /// Whether `t` is an `f32` tensor of a plain (non-autodiff) CubeCL device.
    pub fn takes<const D: usize>(t: &Tensor<D>) -> bool {
        fused_cube(&t.device()) && !t.is_autodiff() && t.dtype() == DType::F32
    }

    /// A CubeCL tensor's primitive.
    pub type Prim = burn_cubecl::tensor::CubeTensor;

    /// `t`'s primitive when it [`takes`], else `t` back.
    #[allow(clippy::result_large_err)]
    pub fn take<const D: usize>(t: Tensor<D>) -> Result<Prim, Tensor<D>> {
        if takes(&t) { Ok(prim(t)) } else { Err(t) }
    }

    fn prim<const D: usize>(t: Tensor<D>) -> Prim {
        match t.try_into_primitive::<Cube>() {
            Ok(p) => p,
            // Unreachable after `takes`; the tensor is gone, so this is a bug, not input.
            Err(e) => unreachable!("CubeCL device without a CubeCL tensor: {e:?}"),
        }
    }

    /// AdamW of `[param, grad, m, v]` (each [`takes`]-checked), the gradient multiplied by
    /// `scale` (on their device) if given: the new param, m, v.
    pub fn adamw<const D: usize>(
        [p, g, m, v]: [Tensor<D>; 4],
        scale: Option<Tensor<1>>,
        k: StepConsts,
    ) -> [Tensor<D>; 3] {
        let (p, g, m, v, scale) = (prim(p), prim(g), prim(m), prim(v), scale.map(prim));
        // Queued in the enclosing scope, else launched alone.
        let out = super::SCOPE.with(|s| match s.borrow_mut().as_mut() {
            Some(scope) => scope.queue.push(p, g, m, v, scale, k),
            None => optim::adamw(p, g, m, v, scale, k),
        });
        out.map(Tensor::from_primitive::<Cube>)
    }

    /// `Σ x²` of all of `ts` (one device) as a `[1]` tensor; `None` for none.
    pub fn sum_squares(ts: Vec<Prim>) -> Option<Tensor<1>> {
        (!ts.is_empty()).then(|| Tensor::from_primitive::<Cube>(optim::sum_squares(ts)))
    }

    /// `ema · a + model · b` on a CubeCL device, or the pair back.
    #[allow(clippy::result_large_err)]
    pub fn blend<const D: usize>(
        ema: Tensor<D>,
        model: Tensor<D>,
        a: f32,
        b: f32,
    ) -> Result<Tensor<D>, (Tensor<D>, Tensor<D>)> {
        if !(takes(&ema) && takes(&model)) {
            return Err((ema, model));
        }
        Ok(Tensor::from_primitive::<Cube>(optim::blend(
            prim(ema),
            prim(model),
            a,
            b,
        )))
    }

    /// `ema · a + model · b` for each pair, all on one CubeCL device, in groups of
    /// [`optim::GROUP`] per launch where the device can bind a group (a launch per pair where
    /// it cannot); the pairs back when they are not all [`takes`]-checked and on one device.
    #[allow(clippy::type_complexity)]
    pub fn blend_all(
        pairs: Vec<(Tensor<1>, Tensor<1>)>,
        a: f32,
        b: f32,
    ) -> Result<Vec<Tensor<1>>, Vec<(Tensor<1>, Tensor<1>)>> {
        let device = pairs.first().map(|(e, _)| e.device());
        let one_device = pairs
            .iter()
            .all(|(e, m)| takes(e) && takes(m) && Some(e.device()) == device && Some(m.device()) == device);
        if !one_device {
            return Err(pairs);
        }
        let prims: Vec<(Prim, Prim)> = pairs.into_iter().map(|(e, m)| (prim(e), prim(m))).collect();
        let out = match prims.first() {
            None => Vec::new(),
            Some((e, _)) if optim::groups_fit(e) => optim::blend_all(prims, a, b),
            Some(_) => prims.into_iter().map(|(e, m)| optim::blend(e, m, a, b)).collect(),
        };
        Ok(out.into_iter().map(Tensor::from_primitive::<Cube>).collect())
    }
}

/// Without a CubeCL back-end nothing takes the GPU path.
#[cfg(not(any(feature = "wgpu", feature = "cuda")))]
mod cube {
    use burn::tensor::Tensor;

    use super::StepConsts;

    pub fn takes<const D: usize>(_: &Tensor<D>) -> bool {
        false
    }

    /// Nothing is ever taken in this build.
    pub enum Prim {}

    #[allow(clippy::result_large_err)]
    pub fn take<const D: usize>(t: Tensor<D>) -> Result<Prim, Tensor<D>> {
        Err(t)
    }

    pub fn adamw<const D: usize>(_: [Tensor<D>; 4], _: Option<Tensor<1>>, _: StepConsts) -> [Tensor<D>; 3] {
        unreachable!("no tensor `takes` the CubeCL path in this build")
    }

    pub fn sum_squares(_: Vec<Prim>) -> Option<Tensor<1>> {
        None
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
        check_adamw_matches_burns(&Device::flex());
    }

    /// The CubeCL AdamW (one launch per parameter) against burn's, on wgpu (lavapipe where
    /// there is no GPU).
    #[cfg(feature = "wgpu")]
    #[test]
    fn cube_adamw_matches_burns_adamw_over_steps_with_and_without_decay() {
        let dev = Device::wgpu(burn::tensor::DeviceKind::DefaultDevice);
        let (plain, ad) = (
            Tensor::<1>::zeros([2], &dev),
            Tensor::<1>::zeros([2], &dev.clone().autodiff()),
        );
        assert!(cube::takes(&plain) && !cube::takes(&ad) && !cube::takes(&Tensor::<1>::zeros([2], &Device::flex())));
        check_adamw_matches_burns(&dev);
    }

    /// On wgpu the steps inside an optimiser scope take up to four parameters per launch,
    /// one launch per kind (learning rate, transposed gradient or not), and give what the
    /// steps launched alone give. 20 parameters of different sizes (one larger than a row
    /// of cubes covers at once), two steps.
    #[cfg(feature = "wgpu")]
    #[test]
    fn cube_steps_in_a_scope_are_grouped_and_equal_the_steps_alone() {
        let dev = Device::wgpu(burn::tensor::DeviceKind::DefaultDevice);
        dev.seed(7);
        let fused = FusedAdamW {
            beta_1: 0.9,
            beta_2: 0.999,
            epsilon: 1e-8,
            weight_decay: 0.05,
        };
        let normal = |shape: [usize; 2], sd: f64| Tensor::<2>::random(shape, Distribution::Normal(0.0, sd), &dev);
        let shape = |k: usize| if k == 3 { [1100, 1000] } else { [k + 1, 2 * k + 3] };
        // Gradients 1, 6, 11, 16 are transposed views; parameters 0 to 13 have one rate,
        // 14 to 19 another. Kinds: 11 contiguous at the first rate (3 launches), 3
        // transposed at it (1), 5 contiguous (2) and 1 transposed at the second (1).
        let lr = |k: usize| if k < 14 { 1e-3 } else { 2e-3 };
        let grad = |k: usize| {
            let [r, c] = shape(k);
            if k % 5 == 1 {
                normal([c, r], 0.1).transpose()
            } else {
                normal([r, c], 0.1)
            }
        };
        let params: Vec<Tensor<2>> = (0..20).map(|k| normal(shape(k), 1.0)).collect();
        let steps: [Vec<Tensor<2>>; 2] = [(0..20).map(grad).collect(), (0..20).map(grad).collect()];
        let scale = Tensor::<1>::from_floats([0.75], &dev);
        type Stepped = Vec<(Tensor<2>, Option<AdamWState<2>>)>;
        let (mut alone, mut grouped): (Stepped, Stepped) = (
            params.iter().map(|p| (p.clone(), None)).collect(),
            params.iter().map(|p| (p.clone(), None)).collect(),
        );
        let mut launches = 0;
        for grads in &steps {
            alone = alone
                .into_iter()
                .enumerate()
                .map(|(k, (p, s))| {
                    let g = grads[k].clone() * scale.clone().reshape([1, 1]);
                    fused.step(lr(k), p, g, s)
                })
                .collect();
            let (next, _, launched) = crate::bench::count_by_kernel(&dev, || {
                Ok::<_, ()>(optimizer_scope(Some(scale.clone()), || {
                    grouped
                        .into_iter()
                        .enumerate()
                        .map(|(k, (p, s))| fused.step(lr(k), p, grads[k].clone(), s))
                        .collect::<Vec<_>>()
                }))
            })
            .unwrap();
            grouped = next;
            let of = |name: &str| launched.by_kernel.iter().find(|(k, _)| k == name).map(|(_, n)| *n);
            assert_eq!(of("AdamwKernel"), None, "{launched:?}");
            launches += of("AdamwGroupKernel").unwrap_or(0);
        }
        assert_eq!(launches, 2 * 7);
        for (k, ((p, s), (q, r))) in alone.into_iter().zip(grouped).enumerate() {
            assert_close(&read(q), &read(p), &format!("parameter {k}"));
            let (s, r) = (s.unwrap().momentum, r.unwrap().momentum);
            assert_eq!(r.time, 2);
            assert_close(&read(r.moment_1), &read(s.moment_1), &format!("first moment {k}"));
            assert_close(&read(r.moment_2), &read(s.moment_2), &format!("second moment {k}"));
        }
    }

    /// The EMA blend on wgpu: one kernel, the tensor ops' values.
    #[cfg(feature = "wgpu")]
    #[test]
    fn cube_blend_matches_the_tensor_ops() {
        let dev = Device::wgpu(burn::tensor::DeviceKind::DefaultDevice);
        dev.seed(4);
        let e = Tensor::<2>::random(SHAPE, Distribution::Normal(0.0, 1.0), &dev);
        let m = Tensor::<2>::random(SHAPE, Distribution::Normal(0.0, 1.0), &dev);
        let want = read(e.clone().mul_scalar(0.999) + m.clone().mul_scalar(1.0 - 0.999));
        assert_close(&read(blend(e.clone(), m.clone(), 0.999)), &want, "blend");
        // A transposed operand is read in its logical order.
        let (et, mt) = (e.clone().transpose(), m.transpose());
        let want = read(et.clone().mul_scalar(0.5) + mt.clone().mul_scalar(0.5));
        assert_close(&read(blend(et, mt, 0.5)), &want, "blend, transposed");
        // The input keeps its values (fresh output buffer).
        let before = read(e.clone());
        let _ = blend(e.clone(), e.clone(), 0.1);
        assert_eq!(read(e), before);
    }

    /// The EMA's grouped blend on wgpu: eleven pairs of different shapes (one transposed,
    /// one empty) in two launches, each the tensor ops' values, in the order given.
    #[cfg(feature = "wgpu")]
    #[test]
    fn cube_blend_all_groups_eight_pairs_per_launch() {
        let dev = Device::wgpu(burn::tensor::DeviceKind::DefaultDevice);
        dev.seed(5);
        let normal = |n: usize| Tensor::<1>::random([n], Distribution::Normal(0.0, 1.0), &dev);
        // 1,300,000 elements: more than the 4,096 cubes of 256 a row has, so units loop.
        let mut sizes = vec![5usize, 1_300_000, 0, 77_100, 1, 300];
        sizes.extend(2..=6);
        let mut pairs: Vec<(Tensor<1>, Tensor<1>)> = sizes.iter().map(|&n| (normal(n), normal(n))).collect();
        let t = Tensor::<2>::random(SHAPE, Distribution::Normal(0.0, 1.0), &dev);
        pairs[3].1 = t.transpose().reshape([SHAPE[0] * SHAPE[1]]);
        let want: Vec<Vec<f32>> = pairs
            .iter()
            .map(|(e, m)| read(e.clone().mul_scalar(0.9) + m.clone().mul_scalar(1.0 - 0.9)))
            .collect();
        let (got, _, launched) =
            crate::bench::count_by_kernel(&dev, || Ok::<_, ()>(crate::kernels::blend_all(pairs, 0.9))).unwrap();
        assert_eq!(got.len(), want.len());
        for (k, (g, w)) in got.into_iter().zip(&want).enumerate() {
            assert_close(&read(g), w, &format!("pair {k}"));
        }
        let of = |name: &str| launched.by_kernel.iter().find(|(k, _)| k == name).map(|(_, n)| *n);
        assert_eq!(of("BlendGroupKernel"), Some(2), "{launched:?}");
    }

    /// The clip's sum of squares on wgpu: one launch per eight tensors (two groups here, the
    /// second short), several cubes for a large one, a transposed one in its buffer order
    /// without a copy (a broadcast view is copied first), against `f64` sums on the host.
    #[cfg(feature = "wgpu")]
    #[test]
    fn cube_sum_of_squares_matches_the_host_sum() {
        let dev = Device::wgpu(burn::tensor::DeviceKind::DefaultDevice);
        dev.seed(6);
        let big = Tensor::<2>::random(SHAPE, Distribution::Normal(0.0, 1.0), &dev); // 77,100: 5 cubes
        let small = Tensor::<1>::from_floats([3.0, 4.0], &dev);
        let wide = Tensor::<1>::random([16_384], Distribution::Normal(0.0, 2.0), &dev);
        let row = Tensor::<2>::random([1, 300], Distribution::Normal(0.0, 1.0), &dev);
        let spread = row.clone().expand([4, 300]); // stride 0: not dense
        let host = |t: Vec<f32>| t.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>();
        // Six more of 1 to 6 elements: 11 tensors, 2 launches.
        let few: Vec<Tensor<1>> = (1..=6)
            .map(|n| Tensor::<1>::random([n], Distribution::Normal(0.0, 3.0), &dev))
            .collect();
        let want = host(read(small.clone()))
            + 2.0 * host(read(big.clone()))
            + host(read(wide.clone()))
            + 4.0 * host(read(row))
            + few.iter().map(|t| host(read(t.clone()))).sum::<f64>();
        let mut sums = crate::kernels::SquareSums::default();
        assert!(sums.push(small).is_ok() && sums.push(big.clone()).is_ok());
        assert!(sums.push(big.transpose()).is_ok() && sums.push(wide).is_ok() && sums.push(spread).is_ok());
        assert!(few.into_iter().all(|t| sums.push(t).is_ok()));
        // Another device, or an autodiff one: handed back.
        assert!(sums.push(Tensor::<1>::ones([2], &Device::flex())).is_err());
        assert!(sums.push(Tensor::<1>::ones([2], &dev.clone().autodiff())).is_err());
        let (total, _, launched) = crate::bench::count_by_kernel(&dev, || Ok::<_, ()>(sums.total())).unwrap();
        let got = f64::from(read(total.unwrap())[0]);
        assert!((got - want).abs() <= 1e-5 * want, "{got} vs {want}");
        assert!(want > 1e5, "{want}");
        let of = |name: &str| launched.by_kernel.iter().find(|(k, _)| k == name).map(|(_, n)| *n);
        assert_eq!(of("SumSquaresGroupKernel"), Some(2), "{launched:?}");
        assert_eq!(
            of("CopyKernel"),
            Some(1),
            "only the broadcast view is copied: {launched:?}"
        );
        assert!(crate::kernels::SquareSums::default().total().is_none());
    }

    fn check_adamw_matches_burns(dev: &Device) {
        dev.seed(3);
        for wd in [0.0f32, 0.05] {
            let fused = FusedAdamW {
                beta_1: 0.9,
                beta_2: 0.999,
                epsilon: 1e-8,
                weight_decay: wd,
            };
            let reference = fused.burn();
            let p0 = Tensor::<2>::random(SHAPE, Distribution::Normal(0.0, 1.0), dev);
            let (mut p, mut q) = (p0.clone(), p0.clone());
            let (mut s, mut r) = (None, None);
            // Step 1 has a transposed gradient, steps 1 and 2 the clip's factor, step 3
            // neither (the factor ended with its scope).
            for step in 0..4 {
                let g = Tensor::<2>::random(SHAPE, Distribution::Normal(0.0, 0.1), dev);
                // The second step's gradient is a transposed view (not contiguous).
                let g = if step == 1 {
                    g.reshape([SHAPE[1], SHAPE[0]]).transpose()
                } else {
                    g
                };
                let lr = 1e-3 * (step + 1) as f64;
                if step == 1 || step == 2 {
                    // The clip's factor handed to the step (inside the kernel on a CubeCL
                    // device) is the same as scaling the gradient first.
                    let f = Tensor::<1>::from_floats([0.37], dev);
                    (p, s) = optimizer_scope(Some(f.clone()), || fused.step(lr, p, g.clone(), s));
                    (q, r) = reference.step(lr, q, g * f.reshape([1, 1]), r);
                } else {
                    (p, s) = fused.step(lr, p, g.clone(), s);
                    (q, r) = reference.step(lr, q, g, r);
                }
                let (a, b) = (s.clone().unwrap().momentum, r.clone().unwrap().momentum);
                assert_eq!(a.time, b.time);
                assert_close(&read(a.moment_1), &read(b.moment_1), "m");
                assert_close(&read(a.moment_2), &read(b.moment_2), "v");
                assert_close(&read(p.clone()), &read(q.clone()), &format!("wd {wd} step {step}: p"));
            }
            // Not a no-op: the parameters moved, each by at most ~Σ lr = 1e-2 (plus decay).
            let (now, before) = (read(p.clone()), read(p0.clone()));
            let moved = now.iter().zip(&before).filter(|(a, b)| a != b).count();
            assert!(moved * 1000 > 999 * now.len(), "{moved} of {} moved", now.len());
            for (a, b) in now.iter().zip(&before) {
                assert!((a - b).abs() < 1.05e-2 + 1e-2 * wd * b.abs(), "{a} from {b}");
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
