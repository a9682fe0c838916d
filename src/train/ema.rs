//! Exponential moving average of a model's weights and buffers (SPEC §4.3, the original's
//! `ModelEma`): after every step, `ema ← decay·ema + (1 − decay)·model` for every float
//! parameter and every BatchNorm running statistic.
//!
//! Two burn details shape this:
//! - `Module::clone` shares a BatchNorm's `RunningState` (an `Arc<Mutex<_>>`), so an EMA built
//!   with `clone` would write its averages into the live model. [`ema_init`] uses `valid()`,
//!   which rebuilds every running state, drops autodiff and switches to eval mode, as the
//!   original's `deepcopy(model).eval()`.
//! - A training forward leaves the new running statistics pending per thread until the next
//!   `value_sync`; visiting the module would read the previous step's values. [`ema_update`]
//!   reads the model through `valid()` too, which synchronises them first.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::{Device, Tensor};

/// Decay of the original's `ModelEma`.
pub const EMA_DECAY: f64 = 0.999;

/// The EMA and the model do not have the same tensors.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum EmaError {
    #[error("EMA has {ema} float tensors but the model has {model}")]
    Count { ema: usize, model: usize },
    #[error("float tensor {index}: EMA shape {ema:?}, model shape {model:?}")]
    Shape {
        index: usize,
        ema: Vec<usize>,
        model: Vec<usize>,
    },
}

/// Every float tensor of a module (parameters and running states) in visit order, flattened.
#[derive(Default)]
struct Collect {
    tensors: Vec<(Vec<usize>, Tensor<1>)>,
}

impl ModuleVisitor for Collect {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let t = param.val();
        let dims = t.dims().to_vec();
        let n: usize = dims.iter().product();
        self.tensors.push((dims, t.reshape([n])));
    }
}

/// Shapes of every float tensor of a module in visit order, and the device of the first.
#[derive(Default)]
struct Shapes(Vec<Vec<usize>>, Option<Device>);

impl ModuleVisitor for Shapes {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.0.push(param.lazy_shape().to_vec());
        if self.1.is_none() {
            self.1 = Some(param.lazy_device());
        }
    }
}

/// Puts the blended tensors, flattened and in visit order, in place of the EMA's.
struct Replace {
    blended: std::vec::IntoIter<Tensor<1>>,
}

impl ModuleMapper for Replace {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        // Counts and shapes were checked before blending.
        let Some(b) = self.blended.next() else {
            return param;
        };
        param.map(|e| {
            let dims: [usize; D] = e.dims();
            b.reshape(dims)
        })
    }
}

struct Blend {
    model: std::vec::IntoIter<(Vec<usize>, Tensor<1>)>,
    decay: f64,
}

impl ModuleMapper for Blend {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        // Shapes and counts were checked before mapping.
        let Some((dims, m)) = self.model.next() else {
            return param;
        };
        let decay = self.decay;
        param.map(|e| {
            let device = e.device();
            let m: Tensor<D> = m
                .to_device(&device)
                .reshape(<[usize; D]>::try_from(dims).unwrap_or([1; D]));
            // In place on the flex CPU device, tensor ops elsewhere.
            crate::kernels::blend(e, m, decay)
        })
    }
}

/// A fresh EMA of `model`: an independent copy on the inner (non-autodiff) device, in eval
/// mode, with its own running statistics.
pub fn ema_init<M: Module>(model: &M) -> M {
    model.valid()
}

/// One EMA step: `ema ← decay·ema + (1 − decay)·model` over all float parameters and running
/// statistics. `model` may live on an autodiff device; the EMA stays where it is.
pub fn ema_update<M: Module>(ema: M, model: &M, decay: f64) -> Result<M, EmaError> {
    let mut collect = Collect::default();
    model.valid().visit(&mut collect);
    let mut shapes = Shapes::default();
    ema.visit(&mut shapes);
    if shapes.0.len() != collect.tensors.len() {
        return Err(EmaError::Count {
            ema: shapes.0.len(),
            model: collect.tensors.len(),
        });
    }
    for (index, (e, (m, _))) in shapes.0.iter().zip(&collect.tensors).enumerate() {
        if e != m {
            return Err(EmaError::Shape {
                index,
                ema: e.clone(),
                model: m.clone(),
            });
        }
    }
    if shapes.1.as_ref().is_some_and(crate::kernels::fused_cube) {
        // On a GPU: eight tensors per launch instead of one.
        let mut own = Collect::default();
        ema.visit(&mut own);
        let pairs = own
            .tensors
            .into_iter()
            .zip(collect.tensors)
            .map(|((_, e), (_, m))| {
                let m = m.to_device(&e.device());
                (e, m)
            })
            .collect();
        let blended = crate::kernels::blend_all(pairs, decay);
        return Ok(ema.map(&mut Replace {
            blended: blended.into_iter(),
        }));
    }
    // Elsewhere a tensor at a time, so that the EMA's own tensors are not shared and can be
    // blended in place.
    Ok(ema.map(&mut Blend {
        model: collect.tensors.into_iter(),
        decay,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig};
    use burn::tensor::{Device, TensorData};

    #[derive(Module, Debug)]
    struct Net {
        lin: Linear,
        bn: BatchNorm,
    }

    fn read<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().try_into_vec::<f32>().unwrap()
    }

    fn net(dev: &Device) -> Net {
        Net {
            lin: LinearConfig::new(2, 2).init(dev),
            bn: BatchNormConfig::new(2).init(dev),
        }
    }

    #[test]
    fn ema_blends_weights_and_running_stats() {
        check_blends(&Device::flex().autodiff());
    }

    /// On wgpu the EMA's six tensors are blended by one grouped launch, to the same values.
    #[cfg(feature = "wgpu")]
    #[test]
    fn on_wgpu_the_ema_blends_alike_in_one_launch() {
        let dev = Device::wgpu(burn::tensor::DeviceKind::DefaultDevice).autodiff();
        check_blends(&dev);
        let model = net(&dev);
        let ema = ema_init(&model);
        let (_, _, launched) = crate::bench::count_by_kernel(&dev, || ema_update(ema, &model, 0.9)).unwrap();
        assert_eq!(
            launched.by_kernel,
            vec![("BlendGroupKernel".to_string(), 1)],
            "{launched:?}"
        );
    }

    fn check_blends(dev: &Device) {
        let dev = dev.clone();
        let model = net(&dev);
        let ema = ema_init(&model);
        let w0 = read(model.lin.weight.val());

        // A training forward moves the BatchNorm running mean (momentum 0.1) from 0 to
        // 0.1·batch mean; the batch below has channel means 2 and -4.
        let x = Tensor::<2>::from_data(TensorData::new(vec![1.0f32, -3.0, 3.0, -5.0], [2, 2]), &dev);
        let _ = model.bn.forward(x);
        // Change the weights as an optimiser step would.
        let model = Net {
            lin: Linear {
                weight: model.lin.weight.clone().map(|w| w.add_scalar(1.0)),
                ..model.lin
            },
            bn: model.bn,
        };

        let ema = ema_update(ema, &model, 0.9).unwrap();
        let w = read(ema.lin.weight.val());
        for (e, w0) in w.iter().zip(&w0) {
            assert!((e - (w0 + 0.1)).abs() < 1e-6, "{w:?} vs {w0:?}");
        }
        // running mean: 0.9·0 + 0.1·(0.1·[2, -4]) = [0.02, -0.04]
        let rm = read(ema.bn.running_mean.value());
        assert!((rm[0] - 0.02).abs() < 1e-6 && (rm[1] + 0.04).abs() < 1e-6, "{rm:?}");
        // The live model keeps its own running mean (0.2, -0.4): the EMA does not alias it.
        let live = read(model.bn.running_mean.value_sync());
        assert!((live[0] - 0.2).abs() < 1e-6 && (live[1] + 0.4).abs() < 1e-6, "{live:?}");
        // The EMA is off the autodiff device.
        assert!(!ema.lin.weight.val().is_autodiff());
    }

    #[test]
    fn mismatched_modules_are_an_error() {
        let dev = Device::flex();
        let a = LinearConfig::new(2, 2).init(&dev);
        let b = LinearConfig::new(2, 3).init(&dev);
        assert!(matches!(ema_update(a, &b, 0.9), Err(EmaError::Shape { .. })));
        let c = LinearConfig::new(2, 2).with_bias(false).init(&dev);
        let d = LinearConfig::new(2, 2).init(&dev);
        assert_eq!(
            ema_update(c, &d, 0.9).unwrap_err(),
            EmaError::Count { ema: 1, model: 2 }
        );
    }
}
