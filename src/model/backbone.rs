//! The convTransformer backbone (SPEC §3.1–§3.3): long-term attention and random patch in
//! front of the first embedding conv, masked-conv embedding, transformer stem (stride 1) and
//! the downsampling branch; one output level per stem + branch block.

use burn::config::Config;
use burn::module::Module;
use burn::tensor::activation::relu;
use burn::tensor::{Bool, Device, Tensor};

use super::ModelError;
use super::layers::{
    ChannelLayerNorm, ChannelLayerNormConfig, MaskedConv1d, MaskedConv1dConfig, conv1d_dense, maybe_norm,
};
use super::long_term::{LongTermAttention, LongTermAttentionConfig, LongTermOutput, LongTermState, Project};
use super::patch::{apply_patch, patch_kernels, random_patch};
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
    /// `project` says where the long-term layer's fg/bg projections run ([`Project`]).
    pub fn forward(
        &self,
        x: Tensor<3>,
        mask: Tensor<2, Bool>,
        patch_centres: Option<&[(usize, usize)]>,
        project: Project<'_>,
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
        for (i, conv) in self.embd.iter().enumerate() {
            let (y, m) = conv.forward(x, mask);
            embd_conv_out.push(y.clone());
            x = self.embd_activation(i, y);
            embd_out.push(x.clone());
            mask = m;
        }
        let (feats, masks) = self.encode(x, mask);
        Ok(BackboneOutput {
            feats,
            masks,
            long_term,
            embd_conv_out,
            embd_out,
        })
    }

    /// [`Self::forward`]'s levels and masks for inference (no projections, no
    /// intermediates), streamed over time: the long-term layer, the random patch and the first
    /// embedding conv run `chunk` frames at a time (the ConvLSTM state carried between
    /// pieces), so that what they hold per frame (the input layer's activations, ~1 MB per
    /// 64×64 frame, and the re-weighted and patched 4096-channel copies of the input) exists
    /// for one piece only; from the first embedding conv's output on (embd_dim channels) the
    /// whole sequence runs as in [`Self::forward`]. The same numbers as [`Self::forward`] to
    /// float rounding (the embedding conv's sums run over windows of the sequence).
    ///
    /// # Shapes
    /// - x: `[B, input_dim, T]`, mask: `[B, T]`; chunk ≥ 1 frames
    /// - output: as [`BackboneOutput::feats`] and [`BackboneOutput::masks`]
    pub fn infer(
        &self,
        x: Tensor<3>,
        mask: Tensor<2, Bool>,
        patch_centres: Option<&[(usize, usize)]>,
        chunk: usize,
    ) -> Result<(Vec<Tensor<3>>, Vec<Tensor<2, Bool>>), ModelError> {
        let [b, _, t] = x.dims();
        if t == 0 {
            return Err(ModelError::Shape {
                what: "feats",
                expected: "T > 0".into(),
                actual: x.dims().to_vec(),
            });
        }
        let centres = match (self.random_patch, patch_centres) {
            (false, _) => None,
            (true, Some(c)) => Some(c),
            (true, None) => return Err(ModelError::PatchCentres { got: 0, batch: b }),
        };
        let chunk = chunk.max(1);
        let first = self.embd.first().filter(|c| c.stride == 1);
        // The first embedding conv's output on frames [done, end) needs the front's output
        // on [done − halo, end + halo): `window` holds the front's output from
        // `done − halo` (or 0) on.
        let halo = first.map_or(0, |c| c.conv.weight.dims()[2] / 2);
        let mut state = LongTermState::default();
        let mut kernels = None;
        let mut window: Option<Tensor<3>> = None;
        let (mut start, mut done) = (0, 0); // first frame of `window`, first frame not output
        let mut pieces = Vec::with_capacity(t.div_ceil(chunk));
        for s in (0..t).step_by(chunk) {
            let e = (s + chunk).min(t);
            let mut z = self.long_term.forward_piece(x.clone().narrow(2, s, e - s), &mut state);
            if let Some(centres) = centres {
                if kernels.is_none() {
                    kernels = Some(patch_kernels(z.clone(), centres, self.image_side)?);
                }
                if let Some(k) = &kernels {
                    z = apply_patch(z, k.clone(), self.image_side);
                }
            }
            let Some(conv) = first else {
                pieces.push(z);
                continue;
            };
            let w = match window.take() {
                Some(w) => Tensor::cat(vec![w, z], 2), // [B, C, e − start]
                None => z,
            };
            // Frames whose right neighbours are all in (or past the end of the sequence).
            let end = if e == t { t } else { e.saturating_sub(halo) };
            if end > done {
                // Zero padding at the window's ends only reaches frames outside [done, end).
                let y = conv1d_dense(&conv.conv, w.clone()); // [B, O, e − start]
                pieces.push(y.narrow(2, done - start, end - done));
                let next = end.saturating_sub(halo);
                window = Some(w.narrow(2, next - start, e - next));
                (start, done) = (next, end);
            } else {
                window = Some(w);
            }
        }
        // The input (input_dim values per step) is not needed any more: free it before the
        // transformer's full-length activations exist.
        drop((x, window, state));
        let y = Tensor::cat(pieces, 2); // [B, C', T]
        let (mut x, mut mask, rest) = match first {
            Some(_) => {
                let y = y * mask.clone().float().unsqueeze_dim::<3>(1); // as MaskedConv1d, stride 1
                (self.embd_activation(0, y), mask, 1)
            }
            None => (y, mask, 0),
        };
        for (i, conv) in self.embd.iter().enumerate().skip(rest) {
            let (y, m) = conv.forward(x, mask);
            x = self.embd_activation(i, y);
            mask = m;
        }
        Ok(self.encode(x, mask))
    }

    /// ln (when configured) and ReLU after embedding conv `i`.
    ///
    /// # Shapes
    /// - y: `[B, embd_dim, T]`
    /// - output: `[B, embd_dim, T]`
    fn embd_activation(&self, i: usize, y: Tensor<3>) -> Tensor<3> {
        match self.embd_norm.get(i) {
            Some(norm) => relu(maybe_norm(norm, y)),
            None => relu(y),
        }
    }

    /// Stem, then branch: the levels and their masks.
    ///
    /// # Shapes
    /// - x: `[B, embd_dim, T]`, mask: `[B, T]`
    /// - output: `1 + arch[2]` levels of `[B, embd_dim, T / stride_l]` with masks `[B, T / stride_l]`
    fn encode(&self, x: Tensor<3>, mask: Tensor<2, Bool>) -> (Vec<Tensor<3>>, Vec<Tensor<2, Bool>>) {
        let (mut x, mut mask) = (x, mask);
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
        (feats, masks)
    }
}
