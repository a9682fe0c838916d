//! Optimisation pieces that do not need the network's internals (SPEC §4.3): the learning
//! rate schedule as a closed form of the global step, and AdamW with a weight-decay group.
//!
//! burn 0.22's `ModuleOptimizer` supports parameter groups (`with_group(ParamGroup, …)`,
//! the last matching group wins), and its `AdamW` is PyTorch's algorithm: decoupled decay
//! `p ← p·(1 − lr·wd)`, then `p ← p − lr·m̂/(√v̂ + ε)` with bias-corrected moments. Only its
//! defaults differ (ε 1e-5, decay 1e-4), so both are set explicitly here. The per-parameter
//! update is [`kernels::AdamW`], the same arithmetic in one pass on the flex device.
//! Global-norm clipping is in [`super::clip`], the weight EMA in [`super::ema`].

use burn::module::{Module, ModuleVisitor, Param, ParamGroup, ParamId};
use burn::optim::ModuleOptimizer;
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::kernels;

/// AdamW hyper-parameters (PyTorch defaults except the learning rate and decay).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWSettings {
    pub beta_1: f32,
    pub beta_2: f32,
    pub epsilon: f32,
    /// Decay of the parameters in the decay group; everything else gets 0.
    pub weight_decay: f32,
}

impl Default for AdamWSettings {
    /// PyTorch's `torch.optim.AdamW` defaults with the paper's decay 0.05.
    fn default() -> Self {
        Self {
            beta_1: 0.9,
            beta_2: 0.999,
            epsilon: 1e-8,
            weight_decay: 0.05,
        }
    }
}

impl AdamWSettings {
    fn optimizer(&self, weight_decay: f32) -> kernels::AdamW {
        kernels::adamw(self.beta_1, self.beta_2, self.epsilon, weight_decay)
    }
}

/// AdamW with two groups, as the original's `make_optimizer`: the parameters in `decay_ids`
/// get `settings.weight_decay`, every other parameter 0. The learning rate is passed to each
/// `step` (see [`LrSchedule`]). No clipping is attached: clip globally with
/// [`super::clip::clip_grad_global_norm`] before stepping. Each parameter's update is
/// [`kernels::AdamW`]: burn's AdamW arithmetic, in one pass on the flex device.
///
/// The state is keyed by [`ParamId`], so the model must keep its ids across save and load
/// for a resumed optimiser to find its moments.
pub fn adamw_with_decay_group(decay_ids: Vec<ParamId>, settings: &AdamWSettings) -> ModuleOptimizer {
    ModuleOptimizer::from(settings.optimizer(0.0)).with_group(
        ParamGroup::from_ids(decay_ids),
        settings.optimizer(settings.weight_decay),
        None,
    )
}

/// Collects the ids of the float parameters whose dotted module path (e.g.
/// `backbone.stem.0.mlp.0.weight`, as burn's visitor names fields and `Vec` indices)
/// satisfies `keep`. Use it to build the decay set of [`adamw_with_decay_group`] from a
/// name rule (SPEC §4.3).
pub fn param_ids_where<M: Module>(module: &M, keep: impl FnMut(&str) -> bool) -> Vec<ParamId> {
    struct Walk<F> {
        path: Vec<String>,
        keep: F,
        ids: Vec<ParamId>,
    }
    impl<F: FnMut(&str) -> bool> ModuleVisitor for Walk<F> {
        fn enter_module(&mut self, name: &str, _container_type: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if (self.keep)(&self.path.join(".")) {
                self.ids.push(param.id);
            }
        }
    }
    let mut walk = Walk {
        path: Vec::new(),
        keep,
        ids: Vec::new(),
    };
    module.visit(&mut walk);
    walk.ids
}

/// The learning rate schedule (SPEC §4.3), ActionFormer's `LinearWarmupCosineAnnealingLR`
/// stepped once per iteration, in closed form. Global step k (0-based) uses:
/// - `k < warmup_steps`: `base_lr · k / (warmup_steps − 1)` (0 at k = 0);
/// - otherwise: `eta_min + ½(base_lr − eta_min)(1 + cos(π (k − warmup_steps) / (max_steps − warmup_steps)))`.
///
/// The original's scheduler is recursive (each value from the previous one); its closed
/// form is this function, which the tests check numerically against the recursion.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LrSchedule {
    pub base_lr: f64,
    pub warmup_steps: usize,
    pub max_steps: usize,
    pub eta_min: f64,
}

/// `eta_min` of the original's warm-up cosine scheduler.
pub const ETA_MIN: f64 = 1e-8;

impl LrSchedule {
    /// The paper's schedule from the `opt` config: warm-up over `warmup_epochs` epochs, cosine
    /// over `total − warmup` with `total = (epochs + warmup_epochs + 10)·iters` when `pretrain`
    /// or `random_patch` (the original's choice), else `(epochs + warmup_epochs)·iters`.
    pub fn warmup_cosine(
        base_lr: f64,
        epochs: usize,
        warmup_epochs: usize,
        iters_per_epoch: usize,
        pretrain: bool,
        random_patch: bool,
    ) -> Self {
        let extra = if pretrain || random_patch { 10 } else { 0 };
        Self {
            base_lr,
            warmup_steps: warmup_epochs * iters_per_epoch,
            max_steps: (epochs + warmup_epochs + extra) * iters_per_epoch,
            eta_min: ETA_MIN,
        }
    }

    /// The original's schedule without warm-up (`opt.warmup: false`): PyTorch's
    /// `CosineAnnealingLR(T_max = epochs·iters)`, eta_min 0.
    pub fn cosine(base_lr: f64, epochs: usize, iters_per_epoch: usize) -> Self {
        Self {
            base_lr,
            warmup_steps: 0,
            max_steps: epochs * iters_per_epoch,
            eta_min: 0.0,
        }
    }

    /// Learning rate for global step `step` (0-based: the first optimiser step uses `lr(0)`).
    pub fn lr(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            // warmup_steps == 1 leaves only k = 0, where the original returns its start value 0.
            if step == 0 {
                return 0.0;
            }
            return self.base_lr * step as f64 / (self.warmup_steps - 1) as f64;
        }
        let span = self.max_steps.saturating_sub(self.warmup_steps);
        if span == 0 {
            return self.base_lr;
        }
        let progress = (step - self.warmup_steps) as f64 / span as f64;
        self.eta_min + 0.5 * (self.base_lr - self.eta_min) * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::optim::GradientsParams;
    use burn::tensor::{Device, TensorData};
    use std::f64::consts::PI;

    /// ActionFormer's chainable `get_lr`, step by step (warmup_start_lr 0).
    fn recursive_lrs(base: f64, warmup: usize, max: usize, eta_min: f64, n: usize) -> Vec<f64> {
        let mut lrs = Vec::with_capacity(n);
        let mut lr = 0.0;
        for k in 0..n {
            let (k_, w, m) = (k as i64, warmup as i64, max as i64);
            lr = if k == 0 {
                0.0
            } else if k < warmup {
                lr + base / (w - 1) as f64
            } else if k == warmup {
                base
            } else if (k_ - 1 - m).rem_euclid(2 * (m - w)) == 0 {
                lr + (base - eta_min) * (1.0 - (PI / (m - w) as f64).cos()) / 2.0
            } else {
                (1.0 + (PI * (k_ - w) as f64 / (m - w) as f64).cos())
                    / (1.0 + (PI * (k_ - w - 1) as f64 / (m - w) as f64).cos())
                    * (lr - eta_min)
                    + eta_min
            };
            lrs.push(lr);
        }
        lrs
    }

    #[test]
    fn closed_form_matches_the_recursive_scheduler() {
        // Small: 3 warm-up epochs of 4 iterations, 7 epochs, +10: max 20·4 = 80 steps;
        // run past the end (the original's cosine restarts there) to 100.
        let s = LrSchedule::warmup_cosine(1e-3, 7, 3, 4, true, false);
        assert_eq!((s.warmup_steps, s.max_steps), (12, 80));
        let rec = recursive_lrs(1e-3, 12, 80, ETA_MIN, 100);
        for (k, r) in rec.iter().enumerate() {
            let c = s.lr(k);
            assert!(
                (c - r).abs() <= 1e-12 + 1e-9 * r.abs(),
                "step {k}: closed {c} recursive {r}"
            );
        }
    }

    #[test]
    fn paper_schedule_key_values() {
        // 50 iterations per epoch, paper config: warm-up 250 steps, max (45+5+10)·50 = 3000.
        let s = LrSchedule::warmup_cosine(1e-4, 45, 5, 50, true, false);
        assert_eq!((s.warmup_steps, s.max_steps), (250, 3000));
        assert_eq!(s.lr(0), 0.0);
        assert!((s.lr(1) - 1e-4 / 249.0).abs() < 1e-18);
        assert!((s.lr(249) - 1e-4).abs() < 1e-18);
        assert_eq!(s.lr(250), 1e-4);
        // Half way through the cosine: eta + (base - eta)/2.
        assert!((s.lr(250 + 1375) - (ETA_MIN + 0.5 * (1e-4 - ETA_MIN))).abs() < 1e-15);
        // Last training step (50 epochs): cos(π·2249/2750).
        let want = ETA_MIN + 0.5 * (1e-4 - ETA_MIN) * (1.0 + (PI * 2249.0 / 2750.0).cos());
        assert!((s.lr(2499) - want).abs() < 1e-18);
        // ≈ 7.98e-6: the cosine never reaches its end.
        assert!((s.lr(2499) - 7.977e-6).abs() < 1e-9, "{}", s.lr(2499));
        assert!((s.lr(3000) - ETA_MIN).abs() < 1e-18);
        // Without pretrain/random_patch there is no +10.
        assert_eq!(LrSchedule::warmup_cosine(1e-4, 45, 5, 50, false, false).max_steps, 2500);
        assert_eq!(LrSchedule::warmup_cosine(1e-4, 45, 5, 50, false, true).max_steps, 3000);
    }

    #[test]
    fn plain_cosine_without_warmup() {
        let s = LrSchedule::cosine(1.0, 10, 10);
        assert_eq!(s.lr(0), 1.0);
        assert!((s.lr(50) - 0.5).abs() < 1e-12);
        assert!(s.lr(100).abs() < 1e-12);
    }

    #[derive(Module, Debug)]
    struct Two {
        w: Param<Tensor<1>>,
        b: Param<Tensor<1>>,
    }

    /// PyTorch `torch.optim.AdamW` single-tensor algorithm in f64, for reference.
    fn torch_adamw(p: &mut [f64], m: &mut [f64], v: &mut [f64], g: &[f64], step: i32, lr: f64, wd: f64) {
        let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8f64);
        for i in 0..p.len() {
            p[i] *= 1.0 - lr * wd;
            m[i] = b1 * m[i] + (1.0 - b1) * g[i];
            v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
            let bc1 = 1.0 - b1.powi(step);
            let bc2 = 1.0 - b2.powi(step);
            let denom = v[i].sqrt() / bc2.sqrt() + eps;
            p[i] -= lr / bc1 * m[i] / denom;
        }
    }

    #[test]
    fn adamw_groups_match_pytorch_for_three_steps() {
        let dev = Device::flex().autodiff();
        let mut model = Two {
            w: Param::from_tensor(Tensor::from_data(TensorData::new(vec![1.0f32, -2.0, 0.5], [3]), &dev)),
            b: Param::from_tensor(Tensor::from_data(TensorData::new(vec![0.3f32, -0.7], [2]), &dev)),
        };
        let mut optim = adamw_with_decay_group(
            vec![model.w.id],
            &AdamWSettings {
                weight_decay: 0.5,
                ..Default::default()
            },
        );
        let (mut pw, mut mw, mut vw) = (vec![1.0, -2.0, 0.5], vec![0.0; 3], vec![0.0; 3]);
        let (mut pb, mut mb, mut vb) = (vec![0.3, -0.7], vec![0.0; 2], vec![0.0; 2]);
        let lrs = [0.1, 0.05, 0.2];
        for (step, &lr) in lrs.iter().enumerate() {
            // loss = Σ w² + Σ 3b: grads 2w and 3.
            let loss = model.w.val().square().sum() + model.b.val().mul_scalar(3.0).sum();
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(lr, model, grads);
            let gw: Vec<f64> = pw.iter().map(|x| 2.0 * x).collect();
            torch_adamw(&mut pw, &mut mw, &mut vw, &gw, step as i32 + 1, lr, 0.5);
            torch_adamw(&mut pb, &mut mb, &mut vb, &[3.0, 3.0], step as i32 + 1, lr, 0.0);
            let got_w = model.w.val().into_data().try_into_vec::<f32>().unwrap();
            let got_b = model.b.val().into_data().try_into_vec::<f32>().unwrap();
            for (g, w) in got_w.iter().zip(&pw).chain(got_b.iter().zip(&pb)) {
                assert!(
                    (*g as f64 - w).abs() < 2e-6,
                    "step {step}: {got_w:?} {pw:?} / {got_b:?} {pb:?}"
                );
            }
        }
        // Step 1 by hand for w[0] = 1 (g = 2, m̂ = 2, v̂ = 4): 1·(1 − 0.1·0.5) − 0.1·2/(2 + 1e-8) ≈ 0.85.
        // For b (no decay), each step moves by ≈ lr since m̂/√v̂ = 1 for a constant gradient:
        // 0.3 − 0.1 − 0.05 − 0.2 = −0.05.
        assert!((pb[0] + 0.05).abs() < 1e-6, "{pb:?}");
    }

    #[test]
    fn optimizer_state_with_groups_survives_a_byte_round_trip() {
        let dev = Device::flex().autodiff();
        let mut model = Two {
            w: Param::from_tensor(Tensor::from_data(TensorData::new(vec![1.0f32, -2.0], [2]), &dev)),
            b: Param::from_tensor(Tensor::from_data(TensorData::new(vec![0.5f32], [1]), &dev)),
        };
        let settings = AdamWSettings {
            weight_decay: 0.3,
            ..Default::default()
        };
        let grads = |m: &Two, k: f32| {
            let loss = m.w.val().square().sum().mul_scalar(k) + m.b.val().mul_scalar(k).sum();
            GradientsParams::from_grads(loss.backward(), m)
        };
        let mut optim = adamw_with_decay_group(vec![model.w.id], &settings);
        for k in [1.0, 0.1] {
            let g = grads(&model, k);
            model = optim.step(0.1, model, g);
        }
        let bytes = optim.into_bytes().unwrap();
        let mut restored = adamw_with_decay_group(vec![model.w.id], &settings)
            .from_bytes(bytes)
            .unwrap();
        let fresh = adamw_with_decay_group(vec![model.w.id], &settings);
        let a = optim.step(0.1, model.clone(), grads(&model, -0.5));
        let b = restored.step(0.1, model.clone(), grads(&model, -0.5));
        let c = fresh.clone().step(0.1, model.clone(), grads(&model, -0.5));
        let v = |m: &Two| {
            let mut v = m.w.val().into_data().try_into_vec::<f32>().unwrap();
            v.extend(m.b.val().into_data().try_into_vec::<f32>().unwrap());
            v
        };
        assert_eq!(v(&a), v(&b));
        assert_ne!(v(&a), v(&c), "a fresh optimiser has no moments: the state mattered");
    }

    #[derive(Module, Debug)]
    struct Nested {
        layers: Vec<burn::nn::Linear>,
        norm: burn::nn::LayerNorm,
    }

    #[test]
    fn ids_by_path_rule() {
        let dev = Device::flex();
        let m = Nested {
            layers: vec![
                burn::nn::LinearConfig::new(2, 2).init(&dev),
                burn::nn::LinearConfig::new(2, 2).init(&dev),
            ],
            norm: burn::nn::LayerNormConfig::new(2).init(&dev),
        };
        let mut paths = Vec::new();
        let all = param_ids_where(&m, |p| {
            paths.push(p.to_string());
            true
        });
        assert_eq!(all.len(), 6);
        let ids = param_ids_where(&m, |p| p.starts_with("layers.") && p.ends_with(".weight"));
        assert_eq!(ids, vec![m.layers[0].weight.id, m.layers[1].weight.id]);
        // burn names LayerNorm's affine parameters gamma/beta (PyTorch: weight/bias).
        let want = [
            "layers.0.weight",
            "layers.0.bias",
            "layers.1.weight",
            "layers.1.bias",
            "norm.gamma",
            "norm.beta",
        ];
        assert_eq!(paths, want);
    }
}
