//! Classification and regression heads shared across levels (SPEC §3.5), with a learnable
//! `Scale` per level on the regression output.

use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::Initializer;
use burn::tensor::activation::relu;
use burn::tensor::{Bool, Device, Tensor};

use super::layers::{ChannelLayerNorm, ChannelLayerNormConfig, MaskedConv1d, MaskedConv1dConfig, maybe_norm};

/// Configuration of the shared trunk of both heads.
#[derive(Config, Debug)]
pub struct HeadConfig {
    /// Input channels (fpn_dim).
    pub input_dim: usize,
    /// Trunk channels (head_dim).
    pub feat_dim: usize,
    /// Layers including the final conv (3: two trunk convs).
    #[config(default = 3)]
    pub num_layers: usize,
    /// Kernel size.
    #[config(default = 3)]
    pub kernel_size: usize,
    /// ln after each trunk conv.
    #[config(default = true)]
    pub with_ln: bool,
}

fn trunk(cfg: &HeadConfig, device: &Device) -> (Vec<MaskedConv1d>, Vec<Option<ChannelLayerNorm>>) {
    let mut head = Vec::new();
    let mut norm = Vec::new();
    for i in 0..cfg.num_layers.saturating_sub(1) {
        let cin = if i == 0 { cfg.input_dim } else { cfg.feat_dim };
        head.push(
            MaskedConv1dConfig::new(cin, cfg.feat_dim, cfg.kernel_size)
                .with_bias(!cfg.with_ln)
                .init(device),
        );
        norm.push(
            cfg.with_ln
                .then(|| ChannelLayerNormConfig::new(cfg.feat_dim).init(device)),
        );
    }
    (head, norm)
}

fn run_trunk(
    head: &[MaskedConv1d],
    norm: &[Option<ChannelLayerNorm>],
    x: Tensor<3>,
    mask: &Tensor<2, Bool>,
) -> Tensor<3> {
    let mut x = x;
    for (conv, n) in head.iter().zip(norm) {
        let (y, _) = conv.forward(x, mask.clone());
        x = relu(maybe_norm(n, y));
    }
    x
}

/// Configuration of [`ClsHead`].
#[derive(Config, Debug)]
pub struct ClsHeadConfig {
    /// The trunk.
    pub trunk: HeadConfig,
    /// Number of classes.
    pub num_classes: usize,
    /// Prior probability for the classifier bias, `−ln((1 − p)/p)`; ≤ 0 leaves it at 0.
    #[config(default = 0.01)]
    pub prior_prob: f64,
    /// Classes with no training examples: their bias starts at `−ln((1 − 1e-6)/1e-6)`.
    #[config(default = "Vec::new()")]
    pub empty_cls: Vec<usize>,
}

/// Classification head.
#[derive(Module, Debug)]
pub struct ClsHead {
    /// Trunk convs.
    pub head: Vec<MaskedConv1d>,
    /// Trunk lns.
    pub norm: Vec<Option<ChannelLayerNorm>>,
    /// Final classifier conv.
    pub cls_head: MaskedConv1d,
}

impl ClsHeadConfig {
    /// Build on `device`.
    pub fn init(&self, device: &Device) -> ClsHead {
        let (head, norm) = trunk(&self.trunk, device);
        let mut cls_head =
            MaskedConv1dConfig::new(self.trunk.feat_dim, self.num_classes, self.trunk.kernel_size).init(device);
        let mut bias = vec![0f32; self.num_classes];
        if self.prior_prob > 0.0 {
            let v = -((1.0 - self.prior_prob) / self.prior_prob).ln();
            bias.iter_mut().for_each(|b| *b = v as f32);
        }
        let empty = -((1.0f64 - 1e-6) / 1e-6).ln() as f32;
        for &c in &self.empty_cls {
            if let Some(b) = bias.get_mut(c) {
                *b = empty;
            }
        }
        cls_head.conv.bias = Some(Param::from_data(
            burn::tensor::TensorData::new(bias, [self.num_classes]),
            device,
        ));
        ClsHead { head, norm, cls_head }
    }
}

impl ClsHead {
    /// Logits of one level.
    ///
    /// # Shapes
    /// - x: `[B, C, T]`, mask `[B, T]`
    /// - output: `[B, T, num_classes]`
    pub fn forward(&self, x: Tensor<3>, mask: &Tensor<2, Bool>) -> Tensor<3> {
        let x = run_trunk(&self.head, &self.norm, x, mask);
        let (y, _) = self.cls_head.forward(x, mask.clone());
        y.swap_dims(1, 2) // [B, T, classes]
    }
}

/// A learnable scalar multiplier (init 1.0).
#[derive(Module, Debug)]
pub struct Scale {
    /// The scalar, stored as `[1]` (PyTorch: a 0-d tensor).
    pub scale: Param<Tensor<1>>,
}

/// Configuration of [`RegHead`].
#[derive(Config, Debug)]
pub struct RegHeadConfig {
    /// The trunk.
    pub trunk: HeadConfig,
    /// Number of pyramid levels (one Scale each).
    pub num_levels: usize,
}

/// Regression head: offsets to the segment start and end, in stride units.
#[derive(Module, Debug)]
pub struct RegHead {
    /// Trunk convs.
    pub head: Vec<MaskedConv1d>,
    /// Trunk lns.
    pub norm: Vec<Option<ChannelLayerNorm>>,
    /// One Scale per level.
    pub scale: Vec<Scale>,
    /// Final 2-channel conv.
    pub offset_head: MaskedConv1d,
}

impl RegHeadConfig {
    /// Build on `device`.
    pub fn init(&self, device: &Device) -> RegHead {
        let (head, norm) = trunk(&self.trunk, device);
        RegHead {
            head,
            norm,
            scale: (0..self.num_levels)
                .map(|_| Scale {
                    scale: Initializer::Ones.init([1], device),
                })
                .collect(),
            offset_head: MaskedConv1dConfig::new(self.trunk.feat_dim, 2, self.trunk.kernel_size).init(device),
        }
    }
}

impl RegHead {
    /// Offsets of level `level`: `relu(scale_l · conv(x))`.
    ///
    /// # Shapes
    /// - x: `[B, C, T]`, mask `[B, T]`
    /// - output: `[B, T, 2]`
    pub fn forward(&self, x: Tensor<3>, mask: &Tensor<2, Bool>, level: usize) -> Tensor<3> {
        let x = run_trunk(&self.head, &self.norm, x, mask);
        let (y, _) = self.offset_head.forward(x, mask.clone());
        let y = match self.scale.get(level) {
            Some(s) => y * s.scale.val().reshape([1, 1, 1]),
            None => y,
        };
        relu(y).swap_dims(1, 2) // [B, T, 2]
    }
}
