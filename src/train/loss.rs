//! Training losses (SPEC §4.2): sigmoid focal loss, 1-D DIoU, the loss normaliser, the
//! image-to-patch contrastive loss, its anchor sampling and its epoch schedule.
//!
//! Everything that returns a tensor stays on the device and is differentiable; nothing here
//! reads a tensor back to the host. What the host needs (the number of positives, which the
//! normaliser EMA uses) is computed from the plain-`Vec` targets of [`super::assign`].

use burn::tensor::{Bool, Int, Tensor, TensorData};
use rand::{Rng, RngExt};
use serde::{Deserialize, Serialize};

use super::assign::Targets;

/// Focal loss α of the original (`sigmoid_focal_loss` default).
pub const FOCAL_ALPHA: f32 = 0.25;
/// Focal loss γ of the original.
pub const FOCAL_GAMMA: f32 = 2.0;
/// Clamp applied to the DIoU denominators (`eps` of `ctr_diou_loss_1d`).
pub const DIOU_EPS: f32 = 1e-8;
/// Momentum of the loss-normaliser EMA.
pub const NORMALIZER_MOMENTUM: f64 = 0.9;

/// Shapes of the loss inputs that do not fit together.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum LossError {
    #[error("loss inputs disagree: {0}")]
    Shape(String),
}

/// Numerically stable binary cross-entropy with logits, element-wise:
/// `max(x, 0) − x·t + ln(1 + e^{−|x|})` (the form PyTorch uses).
pub fn bce_with_logits<const D: usize>(logits: Tensor<D>, targets: Tensor<D>) -> Tensor<D> {
    let relu = logits.clone().clamp_min(0.0);
    let soft = logits.clone().abs().neg().exp().log1p();
    relu - logits * targets + soft
}

/// Sigmoid focal loss, element-wise (no reduction), as torchvision / ActionFormer:
/// `ce · (1 − p_t)^γ · α_t` with `p_t = p·t + (1−p)(1−t)`, `α_t = α·t + (1−α)(1−t)`.
/// A negative `alpha` turns the α weighting off, as in the original.
pub fn sigmoid_focal_loss<const D: usize>(logits: Tensor<D>, targets: Tensor<D>, alpha: f32, gamma: f32) -> Tensor<D> {
    let p = burn::tensor::activation::sigmoid(logits.clone());
    let ce = bce_with_logits(logits, targets.clone());
    let one_minus_t = targets.clone().neg().add_scalar(1.0);
    let p_t = p.clone() * targets.clone() + p.neg().add_scalar(1.0) * one_minus_t.clone();
    let base = p_t.neg().add_scalar(1.0);
    // PyTorch evaluates `x ** 2.0` as x·x; keep that exact for the paper's γ.
    let modulating = if gamma == 2.0 {
        base.square()
    } else {
        base.powf_scalar(gamma)
    };
    let loss = ce * modulating;
    if alpha >= 0.0 {
        let alpha_t = targets.mul_scalar(alpha) + one_minus_t.mul_scalar(1.0 - alpha);
        alpha_t * loss
    } else {
        loss
    }
}

/// 1-D distance-IoU loss between offset pairs `(left, right)` that share a centre point,
/// element-wise over rows: `pred`, `target` are `[N, 2]`, the result is `[N]`.
///
/// `iou = (min(l_p,l_g) + min(r_p,r_g)) / max(union, eps)`,
/// `loss = 1 − iou + (ρ / max(len_c, eps))²` with `ρ = ½(r_p − l_p − r_g + l_g)` and
/// `len_c = max(l_p,l_g) + max(r_p,r_g)` (ActionFormer's `ctr_diou_loss_1d`).
pub fn diou_loss_1d(pred: Tensor<2>, target: Tensor<2>) -> Tensor<1> {
    let [n, _] = pred.dims();
    let col = |t: &Tensor<2>, c: usize| t.clone().slice([0..n, c..c + 1]).reshape([n]);
    let (lp, rp) = (col(&pred, 0), col(&pred, 1));
    let (lg, rg) = (col(&target, 0), col(&target, 1));

    let inter = lp.clone().min_pair(lg.clone()) + rp.clone().min_pair(rg.clone());
    let union = (lp.clone() + rp.clone()) + (lg.clone() + rg.clone()) - inter.clone();
    let iou = inter / union.clamp_min(DIOU_EPS);

    let len_c = lp.clone().max_pair(lg.clone()) + rp.clone().max_pair(rg.clone());
    let rho = (rp - lp - rg + lg).mul_scalar(0.5);
    let dist = (rho / len_c.clamp_min(DIOU_EPS)).square();
    iou.neg().add_scalar(1.0) + dist
}

/// The loss normaliser N (SPEC §4.2): an EMA of the number of positives per batch.
/// It persists across steps and belongs in the resumable training state.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LossNormalizer {
    /// Current value of N.
    pub value: f64,
    /// EMA momentum (0.9 in the original).
    pub momentum: f64,
}

impl LossNormalizer {
    /// Start at `init_loss_norm` with the original's momentum 0.9.
    pub fn new(init_loss_norm: f64) -> Self {
        Self {
            value: init_loss_norm,
            momentum: NORMALIZER_MOMENTUM,
        }
    }

    /// Fold in this batch's number of positives and return the value to divide by.
    /// Same expression, in `f64`, as the original's Python floats.
    pub fn update(&mut self, num_pos: usize) -> f64 {
        self.value = self.momentum * self.value + (1.0 - self.momentum) * (num_pos.max(1) as f64);
        self.value
    }
}

/// Number of positive points of a batch: points with a class target > 0 that are also
/// valid (`valid` is `[B * N]` row-major, or `None` when every point is valid).
pub fn count_positives(targets: &[Targets], valid: Option<&[bool]>) -> usize {
    let mut offset = 0;
    let mut count = 0;
    for t in targets {
        for i in 0..t.len() {
            let ok = valid.is_none_or(|v| v.get(offset + i).copied().unwrap_or(false));
            if ok && t.is_positive(i) {
                count += 1;
            }
        }
        offset += t.len();
    }
    count
}

/// How the detection losses are weighted (`train_cfg`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossConfig {
    /// Weight of the regression loss; `<= 0` means the original's adaptive weight
    /// `cls.detach() / max(reg, 0.01)`.
    pub loss_weight: f32,
    /// Label smoothing of the class targets (`t·(1−ε) + ε/(C+1)`); 0 in the paper.
    pub label_smoothing: f32,
}

impl Default for LossConfig {
    fn default() -> Self {
        Self {
            loss_weight: 1.0,
            label_smoothing: 0.0,
        }
    }
}

/// Loss components of one step, each a `[1]` tensor that can be back-propagated.
#[derive(Debug, Clone)]
pub struct DetectionLosses {
    /// Focal loss over valid points and classes, divided by N.
    pub cls: Tensor<1>,
    /// DIoU over positive points, divided by N.
    pub reg: Tensor<1>,
    /// `cls + loss_weight · reg`.
    pub total: Tensor<1>,
}

impl DetectionLosses {
    /// Add the contrastive term (when active) to the total, as the original does.
    pub fn total_with(&self, contrastive: Option<Tensor<1>>) -> Tensor<1> {
        match contrastive {
            Some(c) => c + self.total.clone(),
            None => self.total.clone(),
        }
    }
}

/// Stack per-video targets into `[B, N, C]` class and `[B, N, 2]` offset tensors.
pub fn targets_to_tensors(
    targets: &[Targets],
    device: &burn::tensor::Device,
) -> Result<(Tensor<3>, Tensor<3>), LossError> {
    let b = targets.len();
    let Some(first) = targets.first() else {
        return Err(LossError::Shape("no videos in the batch".into()));
    };
    let (n, c) = (first.len(), first.num_classes);
    let mut cls = Vec::with_capacity(b * n * c);
    let mut reg = Vec::with_capacity(b * n * 2);
    for (i, t) in targets.iter().enumerate() {
        if t.len() != n || t.num_classes != c || t.cls.len() != n * c {
            return Err(LossError::Shape(format!(
                "video {i} has {} points x {} classes, video 0 has {n} x {c}",
                t.len(),
                t.num_classes
            )));
        }
        cls.extend_from_slice(&t.cls);
        reg.extend_from_slice(&t.reg);
    }
    Ok((
        Tensor::from_data(TensorData::new(cls, [b, n, c]), device),
        Tensor::from_data(TensorData::new(reg, [b, n, 2]), device),
    ))
}

/// Classification and regression losses (SPEC §4.2) from the model outputs concatenated
/// over levels: `cls_logits [B, N, C]`, `offsets [B, N, 2]`, `valid_mask [B, N]`, and the
/// per-video targets. `normalizer` is this step's N (from [`LossNormalizer::update`]).
///
/// Masked points are zeroed with `mask_fill`, so they add nothing to the sums and get zero
/// gradient; the sums therefore run over the same elements as the original's boolean
/// indexing (in a different order, so the last bits can differ).
pub fn detection_losses(
    cls_logits: Tensor<3>,
    offsets: Tensor<3>,
    valid_mask: Tensor<2, Bool>,
    targets: &[Targets],
    normalizer: f64,
    cfg: &LossConfig,
) -> Result<DetectionLosses, LossError> {
    let [b, n, c] = cls_logits.dims();
    if offsets.dims() != [b, n, 2] {
        return Err(LossError::Shape(format!(
            "offsets {:?}, cls_logits {:?}",
            offsets.dims(),
            [b, n, c]
        )));
    }
    if valid_mask.dims() != [b, n] {
        return Err(LossError::Shape(format!(
            "valid_mask {:?}, cls_logits {:?}",
            valid_mask.dims(),
            [b, n, c]
        )));
    }
    if targets.len() != b || targets.iter().any(|t| t.len() != n || t.num_classes != c) {
        return Err(LossError::Shape(format!(
            "targets for {} videos of {:?} points x {:?} classes, outputs [{b}, {n}, {c}]",
            targets.len(),
            targets.first().map(Targets::len),
            targets.first().map(|t| t.num_classes)
        )));
    }
    let device = cls_logits.device();
    let (gt_cls, gt_off) = targets_to_tensors(targets, &device)?;

    // 1. focal loss over valid points
    let mut gt_target = gt_cls.clone();
    if cfg.label_smoothing != 0.0 {
        let eps = cfg.label_smoothing;
        gt_target = gt_target.mul_scalar(1.0 - eps).add_scalar(eps / (c as f32 + 1.0));
    }
    let invalid = valid_mask.clone().bool_not();
    let focal = sigmoid_focal_loss(cls_logits, gt_target, FOCAL_ALPHA, FOCAL_GAMMA);
    let focal = focal.mask_fill(invalid.unsqueeze_dim::<3>(2).expand([b, n, c]), 0.0);
    let cls = focal.sum().div_scalar(normalizer);

    // 2. DIoU over positives (any class target > 0, and valid)
    let positive = gt_cls.sum_dim(2).reshape([b, n]).greater_elem(0.0).bool_and(valid_mask);
    let diou = diou_loss_1d(offsets.reshape([b * n, 2]), gt_off.reshape([b * n, 2]));
    let diou = diou.mask_fill(positive.bool_not().reshape([b * n]), 0.0);
    let reg = diou.sum().div_scalar(normalizer);

    let total = if cfg.loss_weight > 0.0 {
        cls.clone() + reg.clone().mul_scalar(cfg.loss_weight)
    } else {
        let w = cls.clone().detach() / reg.clone().detach().clamp_min(0.01);
        cls.clone() + reg.clone() * w
    };
    Ok(DetectionLosses { cls, reg, total })
}

/// Image-to-patch contrastive loss (SPEC §4.2 step 3) over anchor features
/// `fg [N, D]` (the set U) and `bg [M, D]` (the set D):
/// `mean_i −ln(a_i / (a_i + b_i))`, `a_i = Σ_{j≠i} e^{cos(u_i,u_j)}`, `b_i = Σ_k e^{cos(u_i,d_k)}`.
/// Returns `None` (the term is skipped) when there are fewer than 2 anchors.
pub fn contrastive_loss(fg: Tensor<2>, bg: Tensor<2>) -> Option<Tensor<1>> {
    let [n, _] = fg.dims();
    if n < 2 {
        return None;
    }
    let device = fg.device();
    let u = l2_normalize_rows(fg);
    let d = l2_normalize_rows(bg);
    let sim_uu = u.clone().matmul(u.clone().transpose()).exp();
    let off_diagonal = Tensor::<2>::eye(n, &device).neg().add_scalar(1.0);
    let a = (sim_uu * off_diagonal).sum_dim(1); // [n, 1]
    let b = u.matmul(d.transpose()).exp().sum_dim(1); // [n, 1]
    let ratio = a.clone() / (a + b);
    Some(ratio.log().neg().mean().reshape([1]))
}

/// Rows divided by `max(‖row‖, 1e-8)`, as `torch.cosine_similarity` normalises.
fn l2_normalize_rows(x: Tensor<2>) -> Tensor<2> {
    let norm = x.clone().square().sum_dim(1).sqrt().clamp_min(1e-8);
    x / norm
}

/// Whether the contrastive term is part of the loss in (0-based) `epoch` (SPEC §4.2):
/// with `pretrain`, in even epochs; with `random_patch` as well, only in even epochs < 10.
pub fn contrastive_active(epoch0: usize, pretrain: bool, random_patch: bool) -> bool {
    pretrain && epoch0.is_multiple_of(2) && (!random_patch || epoch0 < 10)
}

/// One contrastive anchor: video `video` of the batch, time steps for the foreground and
/// background features.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Anchor {
    pub video: usize,
    pub t_fg: usize,
    pub t_bg: usize,
}

/// Whether the foreground and background of an anchor share one time step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnchorDraw {
    /// One draw per anchor, used for both (SPEC §4.2 step 2).
    Shared,
    /// Two independent draws from the same range, as the original's code does
    /// (it calls `random.randint` separately for `foreground` and `background`).
    Independent,
}

/// Class id of `filling` (anchors from the second half of the segment).
pub const FILLING: usize = 0;
/// Class id of `washout` (anchors from the first half of the segment).
pub const WASHOUT: usize = 1;

/// Draw contrastive anchors (SPEC §4.2 step 1) for every video of a batch and every kept
/// ground-truth segment `[a, b]` (grid units): `filling` draws t uniformly in
/// `[⌊(a+b)/2⌋, ⌊b⌋]`, `washout` in `[⌊a⌋, ⌊(a+b)/2⌋]`, both clamped to `[0, t_len − 1]`.
/// Other labels give no anchor. `videos[i]` is `(segments, labels)` of video i.
pub fn sample_anchors<R: Rng + ?Sized>(
    videos: &[(&[[f32; 2]], &[usize])],
    t_len: usize,
    draw: AnchorDraw,
    rng: &mut R,
) -> Vec<Anchor> {
    let mut anchors = Vec::new();
    if t_len == 0 {
        return anchors;
    }
    let clamp = |x: f64| -> usize { x.max(0.0).min((t_len - 1) as f64) as usize };
    for (video, (segments, labels)) in videos.iter().enumerate() {
        for (seg, &label) in segments.iter().zip(labels.iter()) {
            let (a, b) = (seg[0] as f64, seg[1] as f64);
            let mid = ((a + b) / 2.0).floor();
            let (lo, hi) = match label {
                FILLING => (mid, b.trunc()),
                WASHOUT => (a.trunc(), mid),
                _ => continue,
            };
            let (lo, hi) = (clamp(lo), clamp(hi));
            let (lo, hi) = (lo.min(hi), lo.max(hi));
            let t_fg = rng.random_range(lo..=hi);
            let t_bg = match draw {
                AnchorDraw::Shared => t_fg,
                AnchorDraw::Independent => rng.random_range(lo..=hi),
            };
            anchors.push(Anchor { video, t_fg, t_bg });
        }
    }
    anchors
}

/// The rows of the anchors' foreground and background steps in the videos' steps laid end
/// to end (`video · t + step`, the layout of [`crate::model::long_term::Project::Rows`]), for
/// a batch of `b` videos of `t` steps.
pub fn anchor_rows(anchors: &[Anchor], b: usize, t: usize) -> Result<(Vec<usize>, Vec<usize>), LossError> {
    if let Some(a) = anchors.iter().find(|a| a.video >= b || a.t_fg >= t || a.t_bg >= t) {
        return Err(LossError::Shape(format!(
            "anchor {a:?} outside {b} videos of {t} steps"
        )));
    }
    Ok(anchors
        .iter()
        .map(|a| (a.video * t + a.t_fg, a.video * t + a.t_bg))
        .unzip())
}

/// Gather anchor features from `fg`, `bg` laid out `[B, C, T]` into `[n_anchors, C]` each
/// (differentiable index selection).
pub fn gather_anchor_features(
    fg: Tensor<3>,
    bg: Tensor<3>,
    anchors: &[Anchor],
) -> Result<(Tensor<2>, Tensor<2>), LossError> {
    let [b, c, t] = fg.dims();
    if bg.dims() != [b, c, t] {
        return Err(LossError::Shape(format!("fg {:?}, bg {:?}", [b, c, t], bg.dims())));
    }
    let (fg_rows, bg_rows) = anchor_rows(anchors, b, t)?;
    let device = fg.device();
    let index = |rows: Vec<usize>| {
        let idx: Vec<i64> = rows.into_iter().map(|r| r as i64).collect();
        let n = idx.len();
        Tensor::<1, Int>::from_data(TensorData::new(idx, [n]), &device)
    };
    let rows = |x: Tensor<3>| x.swap_dims(1, 2).reshape([b * t, c]);
    Ok((rows(fg).select(0, index(fg_rows)), rows(bg).select(0, index(bg_rows))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;
    use rand::SeedableRng;

    fn dev() -> Device {
        Device::flex()
    }

    fn t1(v: &[f32]) -> Tensor<1> {
        Tensor::from_data(TensorData::new(v.to_vec(), [v.len()]), &dev())
    }

    fn read<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().try_into_vec::<f32>().unwrap()
    }

    /// Plain f64 reference of the focal loss for one element.
    fn focal_ref(x: f64, t: f64) -> f64 {
        let p = 1.0 / (1.0 + (-x).exp());
        let ce = -(t * p.ln() + (1.0 - t) * (1.0 - p).ln());
        let p_t = p * t + (1.0 - p) * (1.0 - t);
        let a_t = 0.25 * t + 0.75 * (1.0 - t);
        a_t * ce * (1.0 - p_t).powi(2)
    }

    #[test]
    fn focal_loss_matches_hand_computed_values() {
        let xs = [-3.0f32, -0.5, 0.0, 0.7, 2.5, 4.0];
        let ts = [0.0f32, 1.0, 1.0, 0.0, 1.0, 0.0];
        let got = read(sigmoid_focal_loss(t1(&xs), t1(&ts), 0.25, 2.0));
        for i in 0..xs.len() {
            let want = focal_ref(xs[i] as f64, ts[i] as f64);
            assert!(
                (got[i] as f64 - want).abs() < 1e-6 * want.max(1e-3),
                "{i}: {} vs {want}",
                got[i]
            );
        }
        // x = 0, t = 1: ce = ln 2, p_t = 0.5, α_t = 0.25 → 0.25 · ln2 · 0.25.
        assert!((got[2] - 0.25 * std::f32::consts::LN_2 * 0.25).abs() < 1e-7);
    }

    #[test]
    fn bce_is_stable_for_large_logits() {
        let got = read(bce_with_logits(
            t1(&[100.0, -100.0, 100.0, -100.0]),
            t1(&[1.0, 0.0, 0.0, 1.0]),
        ));
        // ln(1 + e^-100) ≈ 3.7e-44 (a subnormal f32): no overflow, no cancellation to a wrong value.
        assert!(
            got[0] >= 0.0 && got[0] < 1e-40 && got[1] >= 0.0 && got[1] < 1e-40,
            "{got:?}"
        );
        assert!(
            (got[2] - 100.0).abs() < 1e-4 && (got[3] - 100.0).abs() < 1e-4,
            "{got:?}"
        );
    }

    #[test]
    fn diou_matches_hand_computed_values() {
        let pred = Tensor::<2>::from_data(TensorData::new(vec![1.0f32, 1.0, 2.0, 1.0, 0.0, 0.0], [3, 2]), &dev());
        let gt = Tensor::<2>::from_data(TensorData::new(vec![1.0f32, 1.0, 1.0, 3.0, 1.0, 1.0], [3, 2]), &dev());
        let got = read(diou_loss_1d(pred, gt));
        // Identical: loss 0.
        assert!(got[0].abs() < 1e-7);
        // pred (2,1) gt (1,3): inter 1+1=2, union 3+4-2=5, iou 0.4; rho = .5(1-2-3+1) = -1.5;
        // len_c = 2+3 = 5 → 1 - 0.4 + 0.09 = 0.69.
        assert!((got[1] - 0.69).abs() < 1e-6, "{}", got[1]);
        // Empty prediction: inter 0, iou 0; rho = .5(0-0-1+1) = 0 → 1.
        assert!((got[2] - 1.0).abs() < 1e-7);
    }

    #[test]
    fn normalizer_follows_the_ema_and_round_trips() {
        let mut n = LossNormalizer::new(100.0);
        assert!((n.update(14) - 91.4).abs() < 1e-12);
        assert!((n.update(0) - (0.9 * 91.4 + 0.1)).abs() < 1e-12);
        let json = serde_json::to_string(&n).unwrap();
        let back: LossNormalizer = serde_json::from_str(&json).unwrap();
        assert_eq!(back, n);
    }

    #[test]
    fn contrastive_schedule() {
        let active: Vec<usize> = (0..14).filter(|&e| contrastive_active(e, true, false)).collect();
        assert_eq!(active, vec![0, 2, 4, 6, 8, 10, 12]);
        let active: Vec<usize> = (0..14).filter(|&e| contrastive_active(e, true, true)).collect();
        assert_eq!(active, vec![0, 2, 4, 6, 8]);
        assert!((0..14).all(|e| !contrastive_active(e, false, true) && !contrastive_active(e, false, false)));
    }

    #[test]
    fn contrastive_loss_hand_case_and_skip() {
        // u0 = (1,0), u1 = (0,1), d0 = (1,0), d1 = (-1,0) (scaled, to check normalisation).
        let fg = Tensor::<2>::from_data(TensorData::new(vec![2.0f32, 0.0, 0.0, 3.0], [2, 2]), &dev());
        let bg = Tensor::<2>::from_data(TensorData::new(vec![5.0f32, 0.0, -1.0, 0.0], [2, 2]), &dev());
        let got = read(contrastive_loss(fg, bg).unwrap());
        let e = std::f64::consts::E;
        // i=0: a = e^0 = 1, b = e^1 + e^-1. i=1: a = 1, b = e^0 + e^0 = 2.
        let l0 = -(1.0 / (1.0 + e + 1.0 / e)).ln();
        let l1 = -(1.0f64 / 3.0).ln();
        assert!((got[0] as f64 - (l0 + l1) / 2.0).abs() < 1e-6, "{got:?}");
        let one = Tensor::<2>::ones([1, 4], &dev());
        assert!(contrastive_loss(one.clone(), one).is_none());
    }

    #[test]
    fn anchors_follow_the_segment_halves() {
        let segs: [[f32; 2]; 2] = [[10.5, 40.0], [40.0, 97.25]];
        let labels = [FILLING, WASHOUT];
        let videos: Vec<(&[[f32; 2]], &[usize])> = vec![(&segs, &labels), (&[[3.0, 20.0]], &[7])];
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut seen_fg = std::collections::BTreeSet::new();
        for _ in 0..400 {
            let a = sample_anchors(&videos, 128, AnchorDraw::Shared, &mut rng);
            assert_eq!(a.len(), 2, "label 7 gives no anchor");
            // filling: [floor(25.25), floor(40)] = [25, 40]; washout: [40, floor(68.625)] = [40, 68].
            assert!((25..=40).contains(&a[0].t_fg) && a[0].t_fg == a[0].t_bg);
            assert!((40..=68).contains(&a[1].t_fg) && a[1].video == 0);
            seen_fg.insert(a[0].t_fg);
        }
        assert_eq!(seen_fg.len(), 16, "every step of [25, 40] is drawn");
        // Clamped to the sequence; independent draws differ sometimes.
        let end: [[f32; 2]; 1] = [[120.0, 128.0]];
        let v: Vec<(&[[f32; 2]], &[usize])> = vec![(&end, &[FILLING])];
        let mut differ = false;
        for _ in 0..50 {
            let a = sample_anchors(&v, 128, AnchorDraw::Independent, &mut rng);
            assert!((124..=127).contains(&a[0].t_fg) && (124..=127).contains(&a[0].t_bg));
            differ |= a[0].t_fg != a[0].t_bg;
        }
        assert!(differ);
        // Same seed, same anchors.
        let a1 = sample_anchors(
            &videos,
            128,
            AnchorDraw::Shared,
            &mut rand_chacha::ChaCha8Rng::seed_from_u64(1),
        );
        let a2 = sample_anchors(
            &videos,
            128,
            AnchorDraw::Shared,
            &mut rand_chacha::ChaCha8Rng::seed_from_u64(1),
        );
        assert_eq!(a1, a2);
    }

    #[test]
    fn gather_picks_the_anchor_columns() {
        // fg[b, c, t] = 100 b + 10 c + t
        let mut v = Vec::new();
        for b in 0..2 {
            for c in 0..3 {
                for t in 0..4 {
                    v.push((100 * b + 10 * c + t) as f32);
                }
            }
        }
        let fg = Tensor::<3>::from_data(TensorData::new(v, [2, 3, 4]), &dev());
        let bg = fg.clone().neg();
        let anchors = [
            Anchor {
                video: 1,
                t_fg: 2,
                t_bg: 3,
            },
            Anchor {
                video: 0,
                t_fg: 0,
                t_bg: 1,
            },
        ];
        assert_eq!(anchor_rows(&anchors, 2, 4).unwrap(), (vec![6, 0], vec![7, 1]));
        assert!(anchor_rows(&anchors, 2, 3).is_err());
        let (u, d) = gather_anchor_features(fg.clone(), bg.clone(), &anchors).unwrap();
        assert_eq!(read(u), vec![102.0, 112.0, 122.0, 0.0, 10.0, 20.0]);
        assert_eq!(read(d), vec![-103.0, -113.0, -123.0, -1.0, -11.0, -21.0]);
        assert!(
            gather_anchor_features(
                fg,
                bg,
                &[Anchor {
                    video: 2,
                    t_fg: 0,
                    t_bg: 0
                }]
            )
            .is_err()
        );
    }

    #[test]
    fn detection_losses_mask_invalid_points_and_backprop() {
        let ad = dev().autodiff();
        // One video, 3 points, 2 classes; point 2 is invalid (its garbage must not count).
        let targets = [Targets {
            cls: vec![1.0, 0.0, 0.0, 0.0, 0.0, 1.0],
            reg: vec![1.0, 1.0, -5.0, 3.0, 2.0, 1.0],
            num_classes: 2,
        }];
        let logits = Tensor::<3>::from_data(
            TensorData::new(vec![0.5f32, -1.0, -2.0, 0.3, 50.0, -50.0], [1, 3, 2]),
            &ad,
        )
        .require_grad();
        let offs = Tensor::<3>::from_data(TensorData::new(vec![2.0f32, 1.0, 0.0, 0.0, 1.0, 1.0], [1, 3, 2]), &ad)
            .require_grad();
        let valid = Tensor::<2, Bool>::from_data(TensorData::new(vec![true, true, false], [1, 3]), &ad);
        let n = 2.0;
        let out = detection_losses(logits.clone(), offs.clone(), valid, &targets, n, &LossConfig::default()).unwrap();
        let cls_want = (focal_ref(0.5, 1.0) + focal_ref(-1.0, 0.0) + focal_ref(-2.0, 0.0) + focal_ref(0.3, 0.0)) / n;
        // Only point 0 is a (valid) positive: pred (2,1) gt (1,1): inter 2, union 3, iou 2/3,
        // rho = .5(1-2-1+1) = -.5, len_c = 3.
        let reg_want = (1.0 - 2.0 / 3.0 + (0.5f64 / 3.0).powi(2)) / n;
        let cls = read(out.cls.clone())[0] as f64;
        let reg = read(out.reg.clone())[0] as f64;
        assert!((cls - cls_want).abs() < 1e-6, "{cls} vs {cls_want}");
        assert!((reg - reg_want).abs() < 1e-6, "{reg} vs {reg_want}");
        assert!((read(out.total.clone())[0] as f64 - cls - reg).abs() < 1e-6);

        let grads = out.total.backward();
        let g_logits = read(logits.grad(&grads).unwrap());
        let g_offs = read(offs.grad(&grads).unwrap());
        assert!(g_logits.iter().chain(&g_offs).all(|g| g.is_finite()));
        // Invalid point: no gradient; non-positive point: no offset gradient.
        assert_eq!(&g_logits[4..6], &[0.0, 0.0]);
        assert_eq!(&g_offs[2..6], &[0.0, 0.0, 0.0, 0.0]);
        assert!(g_offs[0] != 0.0 && g_logits[0] < 0.0, "{g_offs:?} {g_logits:?}");
    }

    #[test]
    fn shape_mismatch_is_an_error() {
        let targets = [Targets {
            cls: vec![0.0; 4],
            reg: vec![0.0; 4],
            num_classes: 2,
        }];
        let logits = Tensor::<3>::zeros([1, 3, 2], &dev());
        let offs = Tensor::<3>::zeros([1, 3, 2], &dev());
        let valid = Tensor::<2, Bool>::from_data(TensorData::new(vec![true; 3], [1, 3]), &dev());
        assert!(detection_losses(logits, offs, valid, &targets, 1.0, &LossConfig::default()).is_err());
    }

    #[test]
    fn count_positives_respects_validity() {
        let t = Targets {
            cls: vec![1.0, 0.0, 0.0, 0.0, 0.0, 1.0],
            reg: vec![0.0; 6],
            num_classes: 2,
        };
        let both = [t.clone(), t];
        assert_eq!(count_positives(&both, None), 4);
        assert_eq!(count_positives(&both, Some(&[true, true, false, true, true, true])), 3);
    }
}
