//! The convTransformer backbone (SPEC §3.1–§3.3): long-term attention and random patch in
//! front of the first embedding conv, masked-conv embedding, transformer stem (stride 1) and
//! the downsampling branch; one output level per stem + branch block.

use burn::config::Config;
use burn::module::Module;
use burn::tensor::activation::relu;
use burn::tensor::{Bool, Device, Tensor};

use super::ModelError;
use super::layers::{ChannelLayerNorm, ChannelLayerNormConfig, MaskedConv1d, MaskedConv1dConfig, maybe_norm};
use super::long_term::{LongTermAttention, LongTermAttentionConfig, LongTermOutput};
use super::patch::random_patch;
use super::transformer::{TransformerBlock, TransformerBlockConfig};

/// Configuration of [`Backbone`].
#[derive(Config, Debug)]
pub struct BackboneConfig {
    /// Input channels (side²).
    pub input_dim: usize,
    /// Embedding size.
    pub embd_dim: usize,
    /// Attention heads.
    pub n_head: usize,
    /// Kernel of the embedding convs.
    pub embd_kernel_size: usize,
    /// Embedding convs, stem blocks, branch blocks.
    pub arch: [usize; 3],
    /// Attention window per level (stem first), length `arch[2] + 1`.
    pub mha_win_size: Vec<usize>,
    /// Downsampling factor of each branch block.
    pub scale_factor: usize,
    /// ln after each embedding conv.
    pub with_ln: bool,
    /// Dropout in the transformer (MLP and attention projection).
    pub proj_pdrop: f64,
    /// Drop-path probability.
    pub path_pdrop: f64,
    /// Input layer (SpAtten, TeAtten, pretrain).
    pub long_term: LongTermAttentionConfig,
    /// `SelfAtten`: run the stem.
    pub self_atten: bool,
    /// `random_patch`: the patch-wise projection.
    pub random_patch: bool,
}

/// The backbone.
#[derive(Module, Debug)]
pub struct Backbone {
    /// Long short-term spatiotemporal attention (inside the first embedding conv in PyTorch).
    pub long_term: LongTermAttention,
    /// Embedding masked convs.
    pub embd: Vec<MaskedConv1d>,
    /// ln after each embedding conv (absent when `embd_with_ln` is false).
    pub embd_norm: Vec<Option<ChannelLayerNorm>>,
    /// Stem transformer blocks (empty when SelfAtten is off).
    pub stem: Vec<TransformerBlock>,
    /// Branch transformer blocks with downsampling.
    pub branch: Vec<TransformerBlock>,
    /// Whether the patch-wise projection runs.
    pub random_patch: bool,
    /// Image side.
    pub image_side: usize,
}

/// Backbone outputs plus the intermediates the parity test compares.
#[derive(Debug, Clone)]
pub struct BackboneOutput {
    /// Per-level features `[B, C, T_l]`.
    pub feats: Vec<Tensor<3>>,
    /// Per-level masks `[B, T_l]`.
    pub masks: Vec<Tensor<2, Bool>>,
    /// The input layer's outputs (x, fg, bg, ConvLSTM state, attention).
    pub long_term: LongTermOutput,
    /// Each embedding conv's masked output, before ln/ReLU.
    pub embd_conv_out: Vec<Tensor<3>>,
    /// Each embedding layer's output, after ln and ReLU.
    pub embd_out: Vec<Tensor<3>>,
}

impl BackboneConfig {
    /// Build on `device`.
    pub fn init(&self, device: &Device) -> Backbone {
        let mut embd = Vec::new();
        let mut embd_norm = Vec::new();
        for i in 0..self.arch[0] {
            let cin = if i == 0 { self.input_dim } else { self.embd_dim };
            embd.push(
                MaskedConv1dConfig::new(cin, self.embd_dim, self.embd_kernel_size)
                    .with_bias(!self.with_ln)
                    .init(device),
            );
            embd_norm.push(
                self.with_ln
                    .then(|| ChannelLayerNormConfig::new(self.embd_dim).init(device)),
            );
        }
        let block = |stride: usize, w: usize| {
            TransformerBlockConfig::new(self.embd_dim, self.n_head, w)
                .with_stride(stride)
                .with_proj_pdrop(self.proj_pdrop)
                .with_path_pdrop(self.path_pdrop)
                .init(device)
        };
        let stem = if self.self_atten {
            (0..self.arch[1]).map(|_| block(1, self.mha_win_size[0])).collect()
        } else {
            Vec::new()
        };
        let branch = (0..self.arch[2])
            .map(|i| block(self.scale_factor, self.mha_win_size[1 + i]))
            .collect();
        Backbone {
            long_term: self.long_term.init(device),
            embd,
            embd_norm,
            stem,
            branch,
            random_patch: self.random_patch,
            image_side: self.long_term.image_side,
        }
    }
}

impl Backbone {
    /// Run the backbone.
    ///
    /// # Shapes
    /// - x: `[B, input_dim, T]`, mask: `[B, T]`
    /// - output: `1 + arch[2]` levels of `[B, embd_dim, T / stride_l]` with masks `[B, T / stride_l]`
    ///
    /// `project` = false skips the fg/bg projections of the long-term layer.
    pub fn forward(
        &self,
        x: Tensor<3>,
        mask: Tensor<2, Bool>,
        patch_centres: Option<&[(usize, usize)]>,
        project: bool,
    ) -> Result<BackboneOutput, ModelError> {
        let long_term = self.long_term.forward(x, project);
        let mut x = long_term.x.clone();
        if self.random_patch {
            let centres = patch_centres.ok_or(ModelError::PatchCentres {
                got: 0,
                batch: x.dims()[0],
            })?;
            x = random_patch(x, centres, self.image_side)?;
        }
        let mut mask = mask;
        let mut embd_conv_out = Vec::with_capacity(self.embd.len());
        let mut embd_out = Vec::with_capacity(self.embd.len());
        for (conv, norm) in self.embd.iter().zip(&self.embd_norm) {
            let (y, m) = conv.forward(x, mask);
            embd_conv_out.push(y.clone());
            x = relu(maybe_norm(norm, y));
            embd_out.push(x.clone());
            mask = m;
        }
        for block in &self.stem {
            (x, mask) = block.forward(x, mask);
        }
        let mut feats = vec![x.clone()];
        let mut masks = vec![mask.clone()];
        for block in &self.branch {
            (x, mask) = block.forward(x, mask);
            feats.push(x.clone());
            masks.push(mask.clone());
        }
        Ok(BackboneOutput {
            feats,
            masks,
            long_term,
            embd_conv_out,
            embd_out,
        })
    }
}
