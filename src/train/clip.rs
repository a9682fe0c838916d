//! Gradient clipping by the global L2 norm, as PyTorch's `clip_grad_norm_` (SPEC §4.3).
//!
//! burn's `GradientClippingConfig::Norm` clips every parameter tensor by its own norm, which
//! is a different rule. Here the norms of all gradients are combined first:
//! `total = ‖(‖g_1‖, …, ‖g_n‖)‖`, and every gradient is multiplied by
//! `min(1, max_norm / (total + 1e-6))`. On the flex CPU device the sums of squares and the
//! scaling are single in-place passes ([`kernels::sum_squares`], [`kernels::scale`]). On a
//! CubeCL device (wgpu, cuda) the sums of squares are one launch per gradient
//! ([`kernels::SquareSums`]) instead of burn's square, sum, sqrt and square, and the factor
//! stays a device tensor, so clipping costs no host round trip; there
//! [`clip_for_optimizer`] leaves the multiplication to the AdamW kernel
//! ([`kernels::optimizer_scope`]) instead of a launch per gradient.

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor};

use crate::kernels;

/// Norms of the gradients present in `grads` for the float parameters of a module.
struct NormCollector<'a> {
    grads: &'a GradientsParams,
    sq_norms: Vec<Tensor<1>>,
    /// Sums of squares computed on the host (flex gradients), added in visit order.
    host: Option<(f64, Device)>,
    /// Gradients on a CubeCL device: summed by one kernel launch each.
    on_device: kernels::SquareSums,
}

impl ModuleVisitor for NormCollector<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.get::<D>(param.id) {
            if let Some(ss) = kernels::sum_squares(&g) {
                let device = g.device();
                let (sum, _) = self.host.get_or_insert((0.0, device));
                *sum += ss;
                return;
            }
            let Err(g) = self.on_device.push(g) else {
                return;
            };
            // Per-tensor norm first, then squared, as PyTorch stacks per-tensor norms.
            let norm = g.square().sum().sqrt();
            self.sq_norms.push(norm.square());
        }
    }
}

/// Multiplies every gradient of a module's float parameters by a `[1]` scale tensor.
struct Scaler<'a> {
    grads: &'a mut GradientsParams,
    scale: Tensor<1>,
    /// The scale's value when it is on the flex device (reading it costs nothing there):
    /// gradients are then scaled in place, and not at all when it is 1.
    host: Option<f32>,
}

impl ModuleVisitor for Scaler<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if self.host == Some(1.0) {
            return;
        }
        if let Some(g) = self.grads.remove::<D>(param.id) {
            let g = match self.host {
                Some(s) if kernels::fused_cpu_plain(&g) => kernels::scale(g, s),
                _ => {
                    let scale = self.scale.clone().to_device(&g.device()).reshape([1; D]);
                    g * scale
                }
            };
            self.grads.register::<D>(param.id, g);
        }
    }
}

/// Total L2 norm over all gradients of `module`'s parameters in `grads`, as a `[1]` tensor,
/// or `None` when no parameter has a gradient.
pub fn global_grad_norm<M: Module>(module: &M, grads: &GradientsParams) -> Option<Tensor<1>> {
    let mut collector = NormCollector {
        grads,
        sq_norms: Vec::new(),
        host: None,
        on_device: kernels::SquareSums::default(),
    };
    module.visit(&mut collector);
    if let Some(sum) = std::mem::take(&mut collector.on_device).total() {
        collector.sq_norms.push(sum);
    }
    if let Some((sum, device)) = collector.host {
        // Gradients live on one device, so the tensor list is empty here.
        collector.sq_norms.push(Tensor::<1>::from_floats([sum as f32], &device));
    }
    if collector.sq_norms.is_empty() {
        return None;
    }
    let device = collector.sq_norms[0].device();
    let sq: Vec<Tensor<1>> = collector.sq_norms.into_iter().map(|t| t.to_device(&device)).collect();
    Some(Tensor::cat(sq, 0).sum().sqrt())
}

/// `min(1, max_norm / (total + 1e-6))` of the global norm `total`, on its device.
fn clip_factor(total: Tensor<1>, max_norm: f32) -> Tensor<1> {
    total.add_scalar(1e-6).recip().mul_scalar(max_norm).clamp_max(1.0)
}

/// Clip `grads` in place to a global L2 norm of at most `max_norm` (PyTorch's
/// `clip_grad_norm_`, including its `1e-6` guard). Returns the norm before clipping as a
/// `[1]` tensor (for logging), or `None` when no parameter has a gradient.
/// A `max_norm <= 0` disables clipping, as `clip_grad_l2norm = -1` does in the original.
pub fn clip_grad_global_norm<M: Module>(module: &M, grads: &mut GradientsParams, max_norm: f32) -> Option<Tensor<1>> {
    let total = global_grad_norm(module, grads)?;
    if max_norm > 0.0 {
        scale_grads(module, grads, total.clone(), max_norm);
    }
    Some(total)
}

/// Multiply `grads` by the clip factor of the global norm `total`.
fn scale_grads<M: Module>(module: &M, grads: &mut GradientsParams, total: Tensor<1>, max_norm: f32) {
    let scale = clip_factor(total, max_norm);
    // A flex scale is read (a memory copy on the CPU); anywhere else it stays on the device.
    let host = kernels::fused_cpu_plain(&scale)
        .then(|| crate::host::read_scalar(scale.clone()).ok())
        .flatten()
        .map(|s| s as f32);
    module.visit(&mut Scaler { grads, scale, host });
}

/// [`clip_grad_global_norm`] for a step of [`kernels::AdamW`] that follows: where the
/// optimiser can apply the factor itself ([`kernels::optimizer_scales_gradients`]: the
/// CubeCL devices), `grads` are left as they are and the factor is returned, for the step
/// to run inside [`kernels::optimizer_scope`]; elsewhere the gradients are scaled here and
/// `None` is returned. The step's result is the same either way.
pub fn clip_for_optimizer<M: Module>(module: &M, grads: &mut GradientsParams, max_norm: f32) -> Option<Tensor<1>> {
    if max_norm <= 0.0 {
        return None;
    }
    let total = global_grad_norm(module, grads)?;
    if !kernels::optimizer_scales_gradients(&total.device()) {
        scale_grads(module, grads, total, max_norm);
        return None;
    }
    Some(clip_factor(total, max_norm))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::Param;
    use burn::tensor::{Device, TensorData};

    #[derive(Module, Debug)]
    struct Tiny {
        a: Param<Tensor<2>>,
        b: Param<Tensor<1>>,
    }

    fn setup(scale: f32) -> (Tiny, GradientsParams) {
        setup_on(&Device::flex(), scale)
    }

    fn setup_on(dev: &Device, scale: f32) -> (Tiny, GradientsParams) {
        let dev = dev.clone().autodiff();
        let tiny = Tiny {
            a: Param::from_tensor(Tensor::from_data(
                TensorData::new(vec![1.0f32, 2.0, 3.0, 4.0], [2, 2]),
                &dev,
            )),
            b: Param::from_tensor(Tensor::from_data(TensorData::new(vec![1.0f32, -1.0], [2]), &dev)),
        };
        // loss = scale · (Σ a·k + Σ b·m): grads are scale·k and scale·m.
        let k = Tensor::<2>::from_data(TensorData::new(vec![3.0f32, 0.0, 0.0, 4.0], [2, 2]), &dev);
        let m = Tensor::<1>::from_data(TensorData::new(vec![0.0f32, 12.0], [2]), &dev);
        let loss = ((tiny.a.val() * k).sum() + (tiny.b.val() * m).sum()).mul_scalar(scale);
        let grads = GradientsParams::from_grads(loss.backward(), &tiny);
        (tiny, grads)
    }

    fn read<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().try_into_vec::<f32>().unwrap()
    }

    #[test]
    fn clips_by_the_global_norm() {
        check_clips_by_the_global_norm(&Device::flex());
    }

    /// On wgpu the sums of squares are CubeCL launches ([`kernels::sum_squares_on_device`]).
    #[cfg(feature = "wgpu")]
    #[test]
    fn clips_by_the_global_norm_on_wgpu() {
        check_clips_by_the_global_norm(&Device::wgpu(burn::tensor::DeviceKind::DefaultDevice));
    }

    fn check_clips_by_the_global_norm(dev: &Device) {
        // ‖(3, 4)‖ = 5, ‖12‖ = 12 → total 13.
        let (tiny, mut grads) = setup_on(dev, 1.0);
        let total = clip_grad_global_norm(&tiny, &mut grads, 1.0).unwrap();
        assert!((read(total)[0] - 13.0).abs() < 1e-5);
        let s = 1.0 / (13.0 + 1e-6);
        let ga = read(grads.get::<2>(tiny.a.id).unwrap());
        let gb = read(grads.get::<1>(tiny.b.id).unwrap());
        let want_a = [3.0 * s, 0.0, 0.0, 4.0 * s];
        for (g, w) in ga.iter().zip(want_a) {
            assert!((g - w).abs() < 1e-7, "{ga:?}");
        }
        assert!(gb[0] == 0.0 && (gb[1] - 12.0 * s).abs() < 1e-7, "{gb:?}");
        // After clipping the global norm is max_norm (per-tensor clipping would give 1 each).
        let after = read(global_grad_norm(&tiny, &grads).unwrap())[0];
        assert!((after - 1.0).abs() < 1e-5, "{after}");
    }

    /// On flex the clip for the optimiser scales the gradients itself; on wgpu it leaves
    /// them and hands the factor over, which is the one the plain clip applies.
    #[test]
    fn the_clip_for_the_optimiser_scales_here_or_hands_the_factor_over() {
        let (tiny, mut grads) = setup(1.0);
        assert!(clip_for_optimizer(&tiny, &mut grads, 1.0).is_none());
        let after = read(global_grad_norm(&tiny, &grads).unwrap())[0];
        assert!((after - 1.0).abs() < 1e-5, "{after}");
        let (tiny, mut grads) = setup(1.0);
        assert!(clip_for_optimizer(&tiny, &mut grads, 0.0).is_none(), "disabled");
        assert!((read(global_grad_norm(&tiny, &grads).unwrap())[0] - 13.0).abs() < 1e-5);
        #[cfg(feature = "wgpu")]
        {
            let dev = Device::wgpu(burn::tensor::DeviceKind::DefaultDevice);
            let (tiny, mut grads) = setup_on(&dev, 1.0);
            let factor = clip_for_optimizer(&tiny, &mut grads, 1.0).expect("handed over on wgpu");
            assert!((read(factor)[0] - 1.0 / (13.0 + 1e-6)).abs() < 1e-7, "an f32 ulp or so");
            let left = read(global_grad_norm(&tiny, &grads).unwrap())[0];
            assert!((left - 13.0).abs() < 1e-5, "gradients left as they were: {left}");
        }
    }

    /// Through burn's `ModuleOptimizer` on wgpu: the factor handed to the AdamW kernels
    /// gives the step of gradients clipped beforehand (the optimiser's per-parameter steps
    /// run on the calling thread, where the factor is set). The clip is on the second step
    /// only: Adam does not see a factor that is the same at every step.
    #[cfg(feature = "wgpu")]
    #[test]
    fn on_wgpu_a_step_with_the_factor_handed_over_is_the_clipped_step() {
        #[derive(Clone, Copy, PartialEq)]
        enum Clip {
            HandedOver,
            Applied,
            Off,
        }
        let dev = Device::wgpu(burn::tensor::DeviceKind::DefaultDevice);
        let settings = crate::train::optim::AdamWSettings::default();
        let grads_of = |tiny: &Tiny| {
            let ad = dev.clone().autodiff();
            let k = Tensor::<2>::from_data(TensorData::new(vec![3.0f32, 0.0, 0.0, 4.0], [2, 2]), &ad);
            let m = Tensor::<1>::from_data(TensorData::new(vec![0.0f32, 12.0], [2]), &ad);
            let loss = (tiny.a.val() * k).sum() + (tiny.b.val() * m).sum();
            GradientsParams::from_grads(loss.backward(), tiny)
        };
        let run = |clip: Clip| {
            let (tiny, first) = setup_on(&dev, 1.0);
            let mut optim = crate::train::optim::adamw_with_decay_group(vec![tiny.a.id], &settings);
            let tiny = optim.step(0.1, tiny, first);
            let mut grads = grads_of(&tiny);
            let tiny = match clip {
                Clip::HandedOver => {
                    let factor = clip_for_optimizer(&tiny, &mut grads, 1.0).expect("handed over on wgpu");
                    kernels::optimizer_scope(Some(factor), || optim.step(0.1, tiny, grads))
                }
                Clip::Applied => {
                    clip_grad_global_norm(&tiny, &mut grads, 1.0);
                    optim.step(0.1, tiny, grads)
                }
                Clip::Off => optim.step(0.1, tiny, grads),
            };
            let mut v = read(tiny.a.val().inner());
            v.extend(read(tiny.b.val().inner()));
            v
        };
        let (handed, applied, off) = (run(Clip::HandedOver), run(Clip::Applied), run(Clip::Off));
        for (h, c) in handed.iter().zip(&applied) {
            assert!((h - c).abs() <= 1e-7, "{handed:?} vs {applied:?}");
        }
        let moved = applied.iter().zip(&off).fold(0f32, |m, (a, o)| m.max((a - o).abs()));
        assert!(moved > 1e-3, "the clip changes the second step: {applied:?} vs {off:?}");
    }

    #[test]
    fn small_gradients_are_left_alone() {
        let (tiny, mut grads) = setup(0.01); // total 0.13
        clip_grad_global_norm(&tiny, &mut grads, 1.0).unwrap();
        let ga = read(grads.get::<2>(tiny.a.id).unwrap());
        assert!((ga[0] - 0.03).abs() < 1e-7 && (ga[3] - 0.04).abs() < 1e-7, "{ga:?}");
    }
}
