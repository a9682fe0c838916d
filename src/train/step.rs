//! One training iteration (SPEC §4): forward, label assignment, losses (with the
//! contrastive term when active), backward, global clipping, AdamW and the weight EMA.
//!
//! The epoch loop in [`super::trainer`] and `xca bench` both run this, so the benchmark
//! times exactly what training does.

use burn::optim::GradientsParams;
use burn::optim::ModuleOptimizer;
use burn::tensor::{Bool, Tensor};
use rand::Rng;

use super::adapt;
use super::assign::{CenterSample, Targets, assign_targets};
use super::clip::clip_grad_global_norm;
use super::ema::ema_update;
use super::error::TrainError;
use super::loss::{
    AnchorDraw, LossConfig, LossNormalizer, anchor_rows, contrastive_loss, count_positives, detection_losses,
    sample_anchors,
};
use crate::config::Config;
use crate::dataset::batch::Batch;
use crate::dataset::crop::Crop;
use crate::model::long_term::Project;
use crate::model::{Network, draw_patch_centres};

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
        let Learner {
            model,
            ema,
            mut optim,
            mut normalizer,
        } = self;
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
                .zip(crops)
                .map(|(s, c)| (s.as_slice(), c.labels.as_slice()))
                .collect();
            sample_anchors(&per_video, setup.t_len, AnchorDraw::Shared, rng)
        });
        // Fewer than two anchors give no contrastive term (`contrastive_loss`).
        let rows = match anchors.as_deref() {
            Some(a) if a.len() >= 2 => Some(anchor_rows(a, b, batch.feats.dims()[2])?),
            _ => None,
        };
        let project = match &rows {
            Some((fg, bg)) => Project::Rows { fg, bg },
            None => Project::Skip,
        };
        let out = model.forward_projecting(batch.feats, batch.mask, centres.as_deref(), project)?;

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
        let cls_logits = Tensor::cat(out.cls_logits, 1);
        let offsets = Tensor::cat(out.offsets, 1);
        let masks: Tensor<2, Bool> = Tensor::cat(out.masks, 1);
        let losses = detection_losses(cls_logits, offsets, masks, &targets, norm, &setup.loss)?;
        let con = match (out.fg_rows, out.bg_rows) {
            (Some(u), Some(d)) => contrastive_loss(u, d),
            _ => None,
        };
        let total = losses.total_with(con.clone());
        let grads = total.backward();
        let mut grads = GradientsParams::from_grads(grads, &model);
        if setup.clip > 0.0 {
            clip_grad_global_norm(&model, &mut grads, setup.clip);
        }
        let model = optim.step(lr, model, grads);
        let ema = ema_update(ema, &model, setup.ema_decay)?;
        let step_losses = StepLosses {
            cls: losses.cls.detach(),
            reg: losses.reg.detach(),
            con: con.map(|c| c.detach()),
        };
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
