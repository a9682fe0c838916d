//! The whole STA-IPCon network (SPEC §3): backbone → identity neck → shared heads, plus the
//! point generator.
//!
//! - [`config`]: [`NetworkConfig`], its pyramid, its invariants and the builder;
//! - this file: the [`Network`] module and its forward and streamed inference;
//! - [`debug`]: the forward that also returns the [`Intermediates`] (parity tests, inspection).

use burn::module::Module;
use burn::tensor::{Bool, Tensor};

use super::backbone::Backbone;
use super::head::{ClsHead, Levels, RegHead};
use super::long_term::Project;
use super::neck::Neck;
use super::points::Points;
use super::{ModelError, check_dims};

pub mod config;
pub mod debug;
#[cfg(test)]
mod tests;

pub use config::NetworkConfig;
pub use debug::Intermediates;

/// The network.
#[derive(Module, Debug)]
pub struct Network {
    /// Backbone (input layer, embedding, stem, branch).
    pub backbone: Backbone,
    /// Identity neck.
    pub neck: Neck,
    /// Classification head.
    pub cls_head: ClsHead,
    /// Regression head.
    pub reg_head: RegHead,
    /// Input channels.
    pub input_dim: usize,
    /// Inputs must have a length divisible by this.
    pub max_div_factor: usize,
    /// Stride of each output level.
    #[module(skip)]
    pub fpn_strides: Vec<usize>,
    /// Regression range of each output level.
    #[module(skip)]
    pub regression_range: Vec<(f32, f32)>,
}

/// Network outputs, one entry per output level l with T_l = T / stride_l.
#[derive(Debug, Clone)]
pub struct NetworkOutput {
    /// Classification logits `[B, T_l, num_classes]`.
    pub cls_logits: Vec<Tensor<3>>,
    /// Offsets to start and end in stride units, ≥ 0: `[B, T_l, 2]`.
    pub offsets: Vec<Tensor<3>>,
    /// Valid steps `[B, T_l]`.
    pub masks: Vec<Tensor<2, Bool>>,
    /// Foreground projection `[B, proj_dim, T]` (pretrain, [`Network::forward`]).
    pub fg: Option<Tensor<3>>,
    /// Background projection `[B, proj_dim, T]` (pretrain, [`Network::forward`]).
    pub bg: Option<Tensor<3>>,
    /// Foreground projection of the chosen steps `[n, proj_dim]` (pretrain,
    /// [`Network::forward_projecting`] with [`Project::Rows`]).
    pub fg_rows: Option<Tensor<2>>,
    /// Background projection of the chosen steps `[n, proj_dim]` (as `fg_rows`).
    pub bg_rows: Option<Tensor<2>>,
}

/// Frames per piece of streamed inference ([`Network::infer`]): the input layer's
/// activations (~1 MB per 64×64 frame) exist for this many frames at a time.
pub const INFER_CHUNK: usize = 128;

/// What the neck and heads give per output level l.
struct HeadOutputs {
    /// `[B, T_l, num_classes]`.
    cls_logits: Vec<Tensor<3>>,
    /// `[B, T_l, 2]`.
    offsets: Vec<Tensor<3>>,
    /// `[B, T_l]`.
    masks: Vec<Tensor<2, Bool>>,
    /// Neck outputs `[B, fpn_dim, T_l]`.
    fpn_feats: Vec<Tensor<3>>,
}

impl Network {
    /// Run the network.
    ///
    /// `patch_centres` (one `(row, col)` per video, see [`super::draw_patch_centres`]) is
    /// required when `random_patch` is on and ignored otherwise.
    ///
    /// # Shapes
    /// - feats: `[B, input_dim, T]`, T divisible by `max_div_factor`
    /// - mask: `[B, T]`, true on valid steps
    /// - output: see [`NetworkOutput`]
    pub fn forward(
        &self,
        feats: Tensor<3>,
        mask: Tensor<2, Bool>,
        patch_centres: Option<&[(usize, usize)]>,
    ) -> Result<NetworkOutput, ModelError> {
        self.forward_debug(feats, mask, patch_centres).map(|(o, _)| o)
    }

    /// [`Network::forward`] with the foreground/background projections (pretrain only) run
    /// where `project` says: training projects only the contrastive loss's anchor steps
    /// ([`Project::Rows`]), or nothing in epochs without that loss ([`Project::Skip`]).
    ///
    /// # Shapes
    /// - as [`Network::forward`]; rows of [`Project::Rows`] must be < B·T
    pub fn forward_projecting(
        &self,
        feats: Tensor<3>,
        mask: Tensor<2, Bool>,
        patch_centres: Option<&[(usize, usize)]>,
        project: Project<'_>,
    ) -> Result<NetworkOutput, ModelError> {
        self.run(feats, mask, patch_centres, project).map(|(o, _)| o)
    }

    /// Whether the network has the foreground/background projections (`pretrain` with both
    /// attentions), i.e. whether [`Project`] makes a difference.
    pub fn has_projection(&self) -> bool {
        self.backbone.long_term.projection.is_some()
    }

    /// [`Network::forward`] without the foreground/background projections (`fg` and `bg`
    /// are `None`): what detection needs. The projections feed only the contrastive loss,
    /// and at T = 128 they are two 128×4096×1024 matmuls, a tenth of the inference time.
    ///
    /// The input layer runs [`INFER_CHUNK`] frames at a time, so memory grows with T only
    /// by the embedding-sized features (see [`Network::infer_chunked`]).
    ///
    /// # Shapes
    /// - as [`Network::forward`]
    pub fn infer(
        &self,
        feats: Tensor<3>,
        mask: Tensor<2, Bool>,
        patch_centres: Option<&[(usize, usize)]>,
    ) -> Result<NetworkOutput, ModelError> {
        self.infer_chunked(feats, mask, patch_centres, INFER_CHUNK)
    }

    /// [`Network::infer`] with the input layer streamed `chunk` frames at a time (see
    /// [`super::backbone::Backbone::infer`]): the same outputs to float rounding, for any
    /// chunk ≥ 1.
    ///
    /// # Shapes
    /// - as [`Network::forward`]
    pub fn infer_chunked(
        &self,
        feats: Tensor<3>,
        mask: Tensor<2, Bool>,
        patch_centres: Option<&[(usize, usize)]>,
        chunk: usize,
    ) -> Result<NetworkOutput, ModelError> {
        self.check_inputs(&feats, &mask)?;
        let (feats, masks) = self.backbone.infer(feats, mask, patch_centres, chunk)?;
        let h = self.heads(&feats, &masks);
        Ok(NetworkOutput {
            cls_logits: h.cls_logits,
            offsets: h.offsets,
            masks: h.masks,
            fg: None,
            bg: None,
            fg_rows: None,
            bg_rows: None,
        })
    }

    /// The forward, with the projections where `project` says.
    pub(super) fn run(
        &self,
        feats: Tensor<3>,
        mask: Tensor<2, Bool>,
        patch_centres: Option<&[(usize, usize)]>,
        project: Project<'_>,
    ) -> Result<(NetworkOutput, Intermediates), ModelError> {
        self.check_inputs(&feats, &mask)?;
        if let Project::Rows { fg, bg } = project {
            let [b, _, t] = feats.dims();
            if let Some(&r) = fg.iter().chain(bg).find(|&&r| r >= b * t) {
                return Err(ModelError::Shape {
                    what: "projected rows",
                    expected: format!("rows < B·T = {}", b * t),
                    actual: vec![r],
                });
            }
            if fg.len() != bg.len() {
                return Err(ModelError::Shape {
                    what: "projected rows",
                    expected: "as many background rows as foreground rows".into(),
                    actual: vec![fg.len(), bg.len()],
                });
            }
        }
        let bb = self.backbone.forward(feats, mask, patch_centres, project)?;
        let HeadOutputs {
            cls_logits,
            offsets,
            masks: fpn_masks,
            fpn_feats,
        } = self.heads(&bb.feats, &bb.masks);
        let lt = bb.long_term;
        let out = NetworkOutput {
            cls_logits,
            offsets,
            masks: fpn_masks,
            fg: lt.fg,
            bg: lt.bg,
            fg_rows: lt.fg_rows,
            bg_rows: lt.bg_rows,
        };
        let inter = Intermediates {
            lstm_h: lt.lstm_h,
            x_lstm: lt.x_lstm,
            attention: lt.attention,
            embd_conv_out: bb.embd_conv_out,
            embd_out: bb.embd_out,
            feats: bb.feats,
            fpn_feats,
        };
        Ok((out, inter))
    }

    /// `feats` `[B, input_dim, T]` and `mask` `[B, T]` with T > 0 divisible by
    /// `max_div_factor`, or the error naming both shapes.
    fn check_inputs(&self, feats: &Tensor<3>, mask: &Tensor<2, Bool>) -> Result<(), ModelError> {
        let [b, _, t] = feats.dims();
        check_dims("feats", feats.dims(), [None, Some(self.input_dim), None], "B, C, T")?;
        check_dims("mask", mask.dims(), [Some(b), Some(t)], "B, T")?;
        if t == 0 || !t.is_multiple_of(self.max_div_factor) {
            return Err(ModelError::Shape {
                what: "feats",
                expected: format!("T > 0 divisible by max_div_factor {}", self.max_div_factor),
                actual: feats.dims().to_vec(),
            });
        }
        Ok(())
    }

    /// Neck and heads over the backbone's levels.
    ///
    /// # Shapes
    /// - feats: levels `[B, embd_dim, T_l]`, masks `[B, T_l]`
    /// - output: see [`HeadOutputs`]
    fn heads(&self, feats: &[Tensor<3>], masks: &[Tensor<2, Bool>]) -> HeadOutputs {
        let (fpn_feats, masks) = self.neck.forward(feats, masks);
        let gap = self.cls_head.gap();
        let (cls_logits, offsets) = if gap == self.reg_head.gap() {
            // Both heads run on the same layout of the levels: laid out once.
            match Levels::lay_out(&fpn_feats, &masks, gap) {
                Some(levels) => (
                    self.cls_head.forward_laid_out(&levels),
                    self.reg_head.forward_laid_out(&levels),
                ),
                None => (Vec::new(), Vec::new()),
            }
        } else {
            (
                self.cls_head.forward_levels(&fpn_feats, &masks),
                self.reg_head.forward_levels(&fpn_feats, &masks),
            )
        };
        HeadOutputs {
            cls_logits,
            offsets,
            masks,
            fpn_feats,
        }
    }

    /// Side of the square images the input layer works on (0 when it is off).
    pub fn image_side(&self) -> usize {
        self.backbone.image_side
    }

    /// The points of every output level for an input of length `t`.
    pub fn points(&self, t: usize) -> Points {
        let lengths: Vec<usize> = self.fpn_strides.iter().map(|s| t / s).collect();
        Points::new(&lengths, &self.fpn_strides, &self.regression_range)
    }
}
