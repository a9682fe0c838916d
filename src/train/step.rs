//! One training iteration (SPEC §4): forward, label assignment, losses (with the
//! contrastive term when active), backward, global clipping, AdamW and the weight EMA.
//!
//! The epoch loop in [`super::trainer`] and `xca bench` both run this, so the benchmark
//! times exactly what training does.

use burn::module::Module;
use burn::optim::ModuleOptimizer;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::{Bool, Tensor};
use rand::Rng;

use super::adapt;
use super::assign::{CenterSample, Targets, assign_targets};
use super::clip::clip_for_optimizer;
use super::ema::ema_update;
use super::error::TrainError;
use super::loss::{
    Anchor, AnchorDraw, LossConfig, LossNormalizer, anchor_rows, contrastive_loss, count_positives, detection_losses,
    sample_anchors,
};
use crate::config::Config;
use crate::dataset::batch::{Batch, BatchError};
use crate::dataset::crop::Crop;
use crate::kernels;
use crate::model::long_term::Project;
use crate::model::{Network, draw_patch_centres};
use crate::phase;

/// What does not change between the steps of a run.
#[derive(Debug, Clone)]
pub struct StepSetup {
    /// The points of every level for the padded length, concatenated.
    pub points: Vec<[f32; 4]>,
    /// Padded length of a training batch (`max_seq_len`).
    pub t_len: usize,
    pub num_classes: usize,
    pub center: CenterSample,
    pub loss: LossConfig,
    /// Global gradient-norm clip; 0 disables.
    pub clip: f32,
    pub ema_decay: f64,
    /// Draw patch centres per video (`random_patch`).
    pub random_patch: bool,
    /// Image side of one time step (for the patch centres).
    pub side: usize,
}

/// The learner's state: the model, its EMA, the optimiser and the loss normaliser.
pub struct Learner {
    pub model: Network,
    pub ema: Network,
    pub optim: ModuleOptimizer,
    pub normalizer: LossNormalizer,
}

/// The losses of one step, still on the device: reading one is a host sync.
#[derive(Debug, Clone)]
pub struct StepLosses {
    pub cls: Tensor<1>,
    pub reg: Tensor<1>,
    /// The contrastive loss, when active and defined for this batch.
    pub con: Option<Tensor<1>>,
}

impl StepSetup {
    /// The setup of `cfg` for `model`.
    pub fn new(cfg: &Config, model: &Network) -> Self {
        let t_len = cfg.dataset.max_seq_len;
        Self {
            points: model.points(t_len).rows(),
            t_len,
            num_classes: cfg.dataset.num_classes,
            center: cfg.train_cfg.center_sample,
            loss: adapt::loss_config(cfg),
            clip: cfg.train_cfg.clip_grad_l2norm.unwrap_or(0.0) as f32,
            ema_decay: cfg.xca.ema_decay,
            random_patch: cfg.model.random_patch,
            side: model.image_side(),
        }
    }
}

/// Valid points of every level, concatenated, for a video of `len` steps (nearest-neighbour
/// mask downsampling keeps index i of a level with stride s when i·s < len).
fn valid_points(points: &[[f32; 4]], len: usize) -> Vec<bool> {
    points.iter().map(|p| (p[0] as usize) < len).collect()
}

/// The videos `0..n` of a batch split into `parts` contiguous ranges whose sizes differ by
/// at most one (the larger ones first), one per device of data parallelism.
pub fn shard_ranges(n: usize, parts: usize) -> Vec<std::ops::Range<usize>> {
    let parts = parts.max(1);
    let (base, extra) = (n / parts, n % parts);
    let mut start = 0;
    (0..parts)
        .map(|i| {
            let len = base + usize::from(i < extra);
            let r = start..start + len;
            start += len;
            r
        })
        .collect()
}

/// One part of a batch for data parallelism: some of its videos, collated on the device
/// they run on, and their crops. A batch on one device is one shard.
pub struct Shard<'a> {
    pub batch: Batch,
    pub crops: &'a [Crop],
}

/// One shard's share of a step: its losses and the gradients of its loss, both on the
/// shard's device.
struct ShardOut {
    cls: Tensor<1>,
    reg: Tensor<1>,
    con: Option<Tensor<1>>,
    grads: GradientsParams,
}

/// What a shard's forward needs from the host-side draws of the whole batch.
struct ShardInputs {
    batch: Batch,
    centres: Option<Vec<(usize, usize)>>,
    /// Anchor rows `(fg, bg)` into the shard's `B·T` steps, when the contrastive term is on
    /// and the shard has at least two anchors.
    rows: Option<(Vec<usize>, Vec<usize>)>,
    targets: Vec<Targets>,
    /// The shard's share of the batch's videos: the weight of its contrastive term.
    share: f32,
}

impl Learner {
    /// One iteration on `batch`, whose videos were cropped as `crops` say, at learning
    /// rate `lr`. `use_con` turns the contrastive term on (its epoch schedule). Patch
    /// centres and anchors are drawn from `rng`, in that order.
    pub fn step(
        self,
        setup: &StepSetup,
        batch: Batch,
        crops: &[Crop],
        use_con: bool,
        lr: f64,
        rng: &mut impl Rng,
    ) -> Result<(Self, StepLosses), TrainError> {
        self.step_sharded(setup, vec![Shard { batch, crops }], use_con, lr, rng)
    }

    /// One data-parallel iteration over `shards`, each on its own device (the first
    /// shard's device holds the model): every shard runs the forward and backward of its
    /// videos in a thread of its own on a fork of the model, as burn-train's multi-device
    /// strategy does; their gradients are summed on the model's device with burn's
    /// `GradientsAccumulator`; clipping, AdamW and the EMA then run once.
    ///
    /// The host-side draws (patch centres, anchors) and the loss normaliser are those of the
    /// whole batch, so the detection losses of the shards sum to the whole batch's. As in
    /// any data-parallel training without synchronised BatchNorm, each shard's BatchNorm
    /// uses its own batch statistics, and its contrastive term contrasts its own anchors
    /// (weighted by its share of the videos). One shard is exactly [`Learner::step`].
    pub fn step_sharded(
        self,
        setup: &StepSetup,
        shards: Vec<Shard<'_>>,
        use_con: bool,
        lr: f64,
        rng: &mut impl Rng,
    ) -> Result<(Self, StepLosses), TrainError> {
        let Learner {
            model,
            ema,
            mut optim,
            mut normalizer,
        } = self;
        let (mut grads, step_losses) = batch_gradients(&model, &mut normalizer, setup, shards, use_con, rng)?;
        // On a CubeCL device the clip's factor is applied inside the AdamW kernel.
        let deferred = phase::within("clip", || clip_for_optimizer(&model, &mut grads, setup.clip));
        let model = phase::within("optimizer", || {
            kernels::optimizer_scope(deferred, || optim.step(lr, model, grads))
        });
        let ema = phase::within("ema", || ema_update(ema, &model, setup.ema_decay))?;
        Ok((
            Learner {
                model,
                ema,
                optim,
                normalizer,
            },
            step_losses,
        ))
    }
}

/// The gradients of the batch made of `shards` (summed on `model`'s device) and its
/// losses, updating the loss normaliser: [`Learner::step_sharded`] before clipping.
pub fn batch_gradients(
    model: &Network,
    normalizer: &mut LossNormalizer,
    setup: &StepSetup,
    shards: Vec<Shard<'_>>,
    use_con: bool,
    rng: &mut impl Rng,
) -> Result<(GradientsParams, StepLosses), TrainError> {
    if shards.is_empty() {
        return Err(TrainError::Batch(BatchError::Empty));
    }
    let crops: Vec<&Crop> = shards.iter().flat_map(|s| s.crops).collect();
    let b = crops.len();
    let centres = setup.random_patch.then(|| draw_patch_centres(rng, b, setup.side));
    let segs_f32: Vec<Vec<[f32; 2]>> = crops
        .iter()
        .map(|c| c.segments.iter().map(|s| [s[0] as f32, s[1] as f32]).collect())
        .collect();
    // The anchors depend on the labels alone, so they are drawn before the forward and
    // only their steps are projected (the same rows, draws in the same order as drawing
    // them after the forward).
    let anchors = (use_con && model.has_projection()).then(|| {
        let per_video: Vec<(&[[f32; 2]], &[usize])> = segs_f32
            .iter()
            .zip(&crops)
            .map(|(s, c)| (s.as_slice(), c.labels.as_slice()))
            .collect();
        sample_anchors(&per_video, setup.t_len, AnchorDraw::Shared, rng)
    });

    let mut targets: Vec<Targets> = Vec::with_capacity(b);
    let mut valid = Vec::with_capacity(b * setup.points.len());
    for (c, segs) in crops.iter().zip(&segs_f32) {
        targets.push(assign_targets(
            &setup.points,
            segs,
            &c.labels,
            setup.num_classes,
            setup.center,
        )?);
        valid.extend(valid_points(&setup.points, c.len));
    }
    let norm = normalizer.update(count_positives(&targets, Some(&valid)));

    // Split the draws by shard (video indices become the shard's own).
    let n_shards = shards.len();
    let mut inputs = Vec::with_capacity(n_shards);
    let mut targets = targets.into_iter();
    let mut first = 0;
    for shard in shards {
        let n = shard.crops.len();
        let videos = first..first + n;
        let rows = match &anchors {
            Some(all) => {
                let mine: Vec<Anchor> = all
                    .iter()
                    .filter(|a| videos.contains(&a.video))
                    .map(|a| Anchor {
                        video: a.video - first,
                        ..*a
                    })
                    .collect();
                // Fewer than two anchors give no contrastive term (`contrastive_loss`).
                if mine.len() >= 2 {
                    Some(anchor_rows(&mine, n, shard.batch.feats.dims()[2])?)
                } else {
                    None
                }
            }
            None => None,
        };
        inputs.push(ShardInputs {
            batch: shard.batch,
            centres: centres.as_ref().map(|c| c[videos.clone()].to_vec()),
            rows,
            targets: targets.by_ref().take(n).collect(),
            share: n as f32 / b.max(1) as f32,
        });
        first += n;
    }

    let outs: Vec<ShardOut> = if n_shards == 1 {
        inputs
            .into_iter()
            .map(|i| shard_pass(model, setup, i, norm))
            .collect::<Result<_, _>>()?
    } else {
        std::thread::scope(|scope| {
            let handles: Vec<_> = inputs
                .into_iter()
                .map(|i| {
                    let replica = model.clone();
                    scope.spawn(move || {
                        let replica = replica.fork(&i.batch.feats.device());
                        shard_pass(&replica, setup, i, norm)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
                .collect::<Result<Vec<_>, _>>()
        })?
    };

    // Sum on the model's device (a lone shard is already there).
    let main = model.devices().into_iter().next().filter(|_| n_shards > 1);
    let to_main = |t: Tensor<1>| match &main {
        Some(d) => t.to_device(d),
        None => t,
    };
    let mut accumulated = GradientsAccumulator::<Network>::new();
    let (mut cls, mut reg, mut con): (Option<Tensor<1>>, Option<Tensor<1>>, Option<Tensor<1>>) = (None, None, None);
    let sum = |acc: Option<Tensor<1>>, t: Tensor<1>| {
        Some(match acc {
            Some(a) => a + t,
            None => t,
        })
    };
    for out in outs {
        let grads = match &main {
            Some(d) => out.grads.to_device(d, model),
            None => out.grads,
        };
        accumulated.accumulate(model, grads);
        cls = sum(cls, to_main(out.cls));
        reg = sum(reg, to_main(out.reg));
        if let Some(c) = out.con {
            con = sum(con, to_main(c));
        }
    }
    let (Some(cls), Some(reg)) = (cls, reg) else {
        unreachable!("at least one shard, checked above");
    };
    Ok((accumulated.grads(), StepLosses { cls, reg, con }))
}

/// One shard's forward, losses and backward on `model` (on the shard's device).
fn shard_pass(model: &Network, setup: &StepSetup, input: ShardInputs, norm: f64) -> Result<ShardOut, TrainError> {
    let ShardInputs {
        batch,
        centres,
        rows,
        targets,
        share,
    } = input;
    let project = match &rows {
        Some((fg, bg)) => Project::Rows { fg, bg },
        None => Project::Skip,
    };
    let out = phase::within("forward", || {
        model.forward_projecting(batch.feats, batch.mask, centres.as_deref(), project)
    })?;
    let (losses, con, total) = phase::within("losses", || {
        let cls_logits = Tensor::cat(out.cls_logits, 1);
        let offsets = Tensor::cat(out.offsets, 1);
        let masks: Tensor<2, Bool> = Tensor::cat(out.masks, 1);
        let losses = detection_losses(cls_logits, offsets, masks, &targets, norm, &setup.loss)?;
        let con = match (out.fg_rows, out.bg_rows) {
            // A lone shard's term is the batch's, unscaled (bit for bit the one-device step).
            (Some(u), Some(d)) => contrastive_loss(u, d).map(|c| if share < 1.0 { c.mul_scalar(share) } else { c }),
            _ => None,
        };
        let total = losses.total_with(con.clone());
        Ok::<_, TrainError>((losses, con, total))
    })?;
    let grads = phase::within("backward", || GradientsParams::from_grads(total.backward(), model));
    Ok(ShardOut {
        cls: losses.cls.detach(),
        reg: losses.reg.detach(),
        con: con.map(|c| c.detach()),
        grads,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use burn::module::{ModuleVisitor, Param, ParamId};
    use burn::tensor::Device;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    use super::*;
    use crate::bench::synthetic_features;
    use crate::config::adapt as config_adapt;
    use crate::dataset::Features;
    use crate::dataset::batch::{Window, collate};

    /// Every parameter's gradient, by id.
    struct Collect<'a> {
        grads: &'a GradientsParams,
        out: HashMap<ParamId, Vec<f32>>,
    }

    impl ModuleVisitor for Collect<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.grads.get::<D>(param.id) {
                let v = g.into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
                self.out.insert(param.id, v);
            }
        }
    }

    /// The largest difference between two sets of gradients, each parameter's relative to
    /// its largest magnitude in `want` (at least `floor`).
    fn largest_relative_difference(
        want: &HashMap<ParamId, Vec<f32>>,
        got: &HashMap<ParamId, Vec<f32>>,
        floor: f32,
    ) -> f32 {
        let mut worst = 0f32;
        for (id, w) in want {
            let g = &got[id];
            let scale = w.iter().fold(0f32, |m, v| m.max(v.abs())).max(floor);
            let d = w.iter().zip(g).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            worst = worst.max(d / scale);
        }
        worst
    }

    fn collect(model: &Network, grads: &GradientsParams) -> HashMap<ParamId, Vec<f32>> {
        let mut c = Collect {
            grads,
            out: HashMap::new(),
        };
        model.visit(&mut c);
        c.out
    }

    /// The gradients and the classification loss of `n` videos on `dev` split into the
    /// shards `ranges`, from the same model, normaliser and draws.
    fn split_gradients(
        model: &Network,
        setup: &StepSetup,
        feats: &[Features],
        crops: &[Crop],
        ranges: &[std::ops::Range<usize>],
        use_con: bool,
        dev: &Device,
    ) -> (HashMap<ParamId, Vec<f32>>, f32, Option<f32>) {
        let windows: Vec<Window<'_>> = feats.iter().map(Window::whole).collect();
        let shards = ranges
            .iter()
            .map(|r| Shard {
                batch: collate(&windows[r.clone()], setup.t_len, dev).unwrap(),
                crops: &crops[r.clone()],
            })
            .collect();
        let mut norm = LossNormalizer::new(100.0);
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        dev.seed(5);
        let (grads, losses) = batch_gradients(model, &mut norm, setup, shards, use_con, &mut rng).unwrap();
        let scalar = |t: Tensor<1>| t.into_data().try_to_vec::<f32>().unwrap()[0];
        (collect(model, &grads), scalar(losses.cls), losses.con.map(scalar))
    }

    /// A tiny model (T = 32, widths 16, no drop-path) with these `model` keys, on flex with
    /// autodiff, and its step setup.
    fn tiny(model_keys: &str) -> (Network, StepSetup, Device) {
        let yaml = format!(
            "dataset: {{input_dim: 256, max_seq_len: 32}}\n\
             model: {{backbone_arch: [2, 1, 2], regression_range: [[0, 4], [4, 8], [8, 10000]], \
             embd_dim: 16, fpn_dim: 16, head_dim: 16, n_head: 2, TeAtten: True, SelfAtten: True, \
             {model_keys}}}\n\
             train_cfg: {{droppath: 0.0}}\n"
        );
        let cfg = Config::from_yaml_str(&yaml, std::path::Path::new("t.yaml"))
            .unwrap()
            .config;
        let dev = Device::flex().autodiff();
        dev.seed(1);
        let model: Network = config_adapt::network_config(&cfg).init(&dev).unwrap();
        let setup = StepSetup::new(&cfg, &model);
        (model, setup, dev)
    }

    #[test]
    fn a_batch_split_over_shards_has_the_whole_batch_gradients() {
        // No BatchNorm (SpAtten off), no drop-path, no contrastive term: the three things
        // that differ by design between a split batch and a whole one.
        let (model, setup, dev) = tiny("SpAtten: False");
        let n = 3;
        let feats: Vec<Features> = (0..n)
            .map(|i| synthetic_features(32 - 4 * i, 256, 10 + i as u64))
            .collect();
        let crops: Vec<Crop> = (0..n)
            .map(|i| Crop {
                start: 0,
                len: 32 - 4 * i,
                segments: vec![[3.0 + i as f64, 14.0], [12.0, 20.0 + i as f64]],
                labels: vec![0, 1],
            })
            .collect();
        let (whole, cls_whole, con) = split_gradients(&model, &setup, &feats, &crops, &shard_ranges(n, 1), false, &dev);
        assert_eq!(con, None);
        assert_eq!(shard_ranges(n, 2), vec![0..2, 2..3]);
        let (split, cls_split, _) = split_gradients(&model, &setup, &feats, &crops, &shard_ranges(n, 2), false, &dev);
        assert!(whole.len() > 40, "{} parameters with gradients", whole.len());
        assert_eq!(whole.len(), split.len());
        assert!(
            (cls_whole - cls_split).abs() <= 1e-5 * cls_whole.abs(),
            "{cls_whole} vs {cls_split}"
        );
        let worst = largest_relative_difference(&whole, &split, 1e-6);
        assert!(worst < 1e-4, "largest relative gradient difference {worst}");
    }

    #[test]
    fn with_the_contrastive_term_each_shard_contrasts_its_own_anchors() {
        // The contrastive term needs spatial attention, hence BatchNorm: each shard's term is
        // its own anchors' (weighted by its share of the videos), not the whole batch's.
        let (model, setup, dev) = tiny("SpAtten: True, pretrain: True");
        assert!(model.has_projection());
        let n = 3;
        let feats: Vec<Features> = (0..n).map(|i| synthetic_features(32, 256, 20 + i as u64)).collect();
        let crops: Vec<Crop> = (0..n)
            .map(|i| Crop {
                start: 0,
                len: 32,
                segments: vec![[3.0 + i as f64, 14.0], [12.0, 24.0]],
                labels: vec![0, 1],
            })
            .collect();
        let (whole, _, con_whole) = split_gradients(&model, &setup, &feats, &crops, &shard_ranges(n, 1), true, &dev);
        let (split, _, con_split) = split_gradients(&model, &setup, &feats, &crops, &shard_ranges(n, 2), true, &dev);
        let (con_whole, con_split) = (con_whole.expect("contrastive on"), con_split.expect("contrastive on"));
        assert!(con_whole.is_finite() && con_split.is_finite() && (con_whole - con_split).abs() > 1e-6);
        assert_eq!(whole.len(), split.len());
        assert!(split.values().flatten().all(|v| v.is_finite()));
    }

    /// A batch's gradients on wgpu (the CubeCL kernels: ConvLSTM, LayerNorm, banded
    /// attention, burn's convs) are flex's, for every parameter, with every component on.
    #[cfg(feature = "wgpu")]
    #[test]
    fn on_wgpu_a_batchs_gradients_are_flexs() {
        let (model, setup, dev) = tiny("SpAtten: True, pretrain: True, random_patch: True");
        let gpu = Device::wgpu(burn::tensor::DeviceKind::DefaultDevice).autodiff();
        let on_gpu = model.clone().fork(&gpu);
        let n = 2;
        let feats: Vec<Features> = (0..n)
            .map(|i| synthetic_features(32 - 5 * i, 256, 30 + i as u64))
            .collect();
        let crops: Vec<Crop> = (0..n)
            .map(|i| Crop {
                start: 0,
                len: 32 - 5 * i,
                segments: vec![[2.0 + i as f64, 12.0], [10.0, 22.0]],
                labels: vec![0, 1],
            })
            .collect();
        let one = shard_ranges(n, 1);
        let (want, cls_want, con_want) = split_gradients(&model, &setup, &feats, &crops, &one, true, &dev);
        let (got, cls_got, con_got) = split_gradients(&on_gpu, &setup, &feats, &crops, &one, true, &gpu);
        assert!(
            (cls_got - cls_want).abs() <= 1e-4 * cls_want.abs(),
            "{cls_got} vs {cls_want}"
        );
        let (con_got, con_want) = (con_got.expect("contrastive on"), con_want.expect("contrastive on"));
        assert!(
            (con_got - con_want).abs() <= 1e-4 * con_want.abs(),
            "{con_got} vs {con_want}"
        );
        assert_eq!(got.len(), want.len());
        assert!(want.len() > 60, "{} parameters with gradients", want.len());
        // Measured: 6.8e-5 at worst run alone, 1.4e-4 beside other tests (burn's autotune
        // picks its kernels by timing, so the summation order varies). The floor is for the
        // conv biases in front of a BatchNorm, whose gradient is 0 up to float noise (~1e-8).
        let worst = largest_relative_difference(&want, &got, 1e-4);
        println!("largest relative gradient difference wgpu vs flex: {worst}");
        assert!(worst < 1e-3, "largest relative gradient difference {worst}");
    }

    #[test]
    fn shard_ranges_cover_the_batch_evenly() {
        assert_eq!(shard_ranges(5, 2), vec![0..3, 3..5]);
        assert_eq!(shard_ranges(4, 4), vec![0..1, 1..2, 2..3, 3..4]);
        assert_eq!(shard_ranges(7, 3), vec![0..3, 3..5, 5..7]);
        assert_eq!(shard_ranges(2, 1), vec![0..2]);
        assert_eq!(shard_ranges(2, 0), vec![0..2]);
    }
}
