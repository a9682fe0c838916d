//! Classification and regression heads shared across levels (SPEC §3.5), with a learnable
//! `Scale` per level on the regression output.

use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::Initializer;
use burn::tensor::activation::relu;
use burn::tensor::{Bool, Device, Tensor, TensorData};

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

/// The pyramid's levels laid end to end along time, with `gap` zero steps between them, as
/// [`run_levels`] takes them. The classification and regression heads take the same levels:
/// laid out once, for both, the concatenations and the mask's cast run once (each a launch
/// per piece on a GPU).
pub struct Levels {
    /// `[B, C, ΣT + gaps]`.
    x: Tensor<3>,
    /// `[B, 1, ΣT + gaps]`: the levels' masks as floats, 0 on the gaps.
    mask: Tensor<3>,
    /// `[1, 1, ΣT + gaps]`: 1 on the levels' steps, 0 on the gaps.
    gaps: Tensor<3>,
    /// Length of each level.
    lens: Vec<usize>,
    /// Zero steps between levels.
    gap: usize,
}

impl Levels {
    /// Lay out `xs` (levels `[B, C, T_l]`) with their `masks` (`[B, T_l]`); `None` for no
    /// levels.
    pub fn lay_out(xs: &[Tensor<3>], masks: &[Tensor<2, Bool>], gap: usize) -> Option<Levels> {
        let x0 = xs.first()?;
        let [b, c, _] = x0.dims();
        let (dev, lens): (_, Vec<usize>) = (x0.device(), xs.iter().map(|x| x.dims()[2]).collect());
        let mut x_parts = Vec::with_capacity(2 * xs.len());
        let mut m_parts = Vec::with_capacity(2 * xs.len());
        let mut gaps = Vec::new();
        for (l, (x, m)) in xs.iter().zip(masks).enumerate() {
            if l > 0 && gap > 0 {
                x_parts.push(Tensor::<3>::zeros([b, c, gap], &dev));
                // The gap's mask only decides what the discarded gap outputs hold.
                m_parts.push(Tensor::<2, Bool>::from_data(
                    TensorData::new(vec![false; b * gap], [b, gap]),
                    &dev,
                ));
                gaps.extend(std::iter::repeat_n(0.0f32, gap));
            }
            x_parts.push(x.clone());
            m_parts.push(m.clone());
            gaps.extend(std::iter::repeat_n(1.0f32, lens[l]));
        }
        let total = gaps.len();
        Some(Levels {
            x: Tensor::cat(x_parts, 2),                                  // [B, C, ΣT + gaps]
            mask: Tensor::cat(m_parts, 1).float().unsqueeze_dim::<3>(1), // [B, 1, ΣT + gaps]
            gaps: Tensor::<3>::from_data(TensorData::new(gaps, [1, 1, total]), &dev),
            lens,
            gap,
        })
    }

    /// `y` (`[B, O, ΣT + gaps]`) cut back into the levels `[B, O, T_l]`.
    fn split(&self, y: Tensor<3>) -> Vec<Tensor<3>> {
        let mut out = Vec::with_capacity(self.lens.len());
        let mut at = 0;
        for (l, len) in self.lens.iter().enumerate() {
            if l > 0 {
                at += self.gap;
            }
            out.push(y.clone().narrow(2, at, *len)); // [B, O, T_l]
            at += len;
        }
        out
    }
}

/// The zero steps [`Levels`] needs between levels for these convs: half the widest kernel,
/// so that no conv window reaches from one level into the next.
fn gap_for(head: &[MaskedConv1d], last: &MaskedConv1d) -> usize {
    head.iter()
        .chain(std::iter::once(last))
        .map(|conv| conv.conv.weight.dims()[2] / 2)
        .max()
        .unwrap_or(0)
}

/// Every level's trunk and final conv at once, on the [`Levels`] laid end to end (with
/// [`gap_for`] these convs' zero steps between them), the gap steps zeroed again after every
/// trunk layer (where ln and ReLU made them non-zero), so each level sees exactly the zero
/// padding it sees alone. One GEMM per layer for all levels instead of one per level: the
/// shared weights are read once, and the short levels (down to 4 steps) no longer run as
/// products too small to use the cores (issue #19).
///
/// # Shapes
/// - levels: see [`Levels`]
/// - output: levels `[B, O, T_l]` of the final conv (masked)
fn run_levels(
    head: &[MaskedConv1d],
    norm: &[Option<ChannelLayerNorm>],
    last: &MaskedConv1d,
    levels: &Levels,
) -> Vec<Tensor<3>> {
    // Narrower gaps would let these convs' windows reach across levels.
    debug_assert!(
        levels.gap >= gap_for(head, last),
        "levels laid out with too narrow gaps"
    );
    let mut x = levels.x.clone();
    for (conv, n) in head.iter().zip(norm) {
        let y = conv.forward_zeroed(x, levels.mask.clone());
        x = relu(maybe_norm(n, y)) * levels.gaps.clone();
    }
    levels.split(last.forward_zeroed(x, levels.mask.clone()))
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
        cls_head.conv.bias = Some(Param::from_data(TensorData::new(bias, [self.num_classes]), device));
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

    /// [`Self::forward`] of every level, all levels in one pass (see `run_levels`).
    ///
    /// # Shapes
    /// - xs: levels `[B, C, T_l]`, masks `[B, T_l]`
    /// - output: levels `[B, T_l, num_classes]`
    pub fn forward_levels(&self, xs: &[Tensor<3>], masks: &[Tensor<2, Bool>]) -> Vec<Tensor<3>> {
        Levels::lay_out(xs, masks, self.gap()).map_or_else(Vec::new, |l| self.forward_laid_out(&l))
    }

    /// [`Self::forward_levels`] of levels laid out with [`Self::gap`] zero steps between them.
    pub fn forward_laid_out(&self, levels: &Levels) -> Vec<Tensor<3>> {
        run_levels(&self.head, &self.norm, &self.cls_head, levels)
            .into_iter()
            .map(|y| y.swap_dims(1, 2)) // [B, T_l, classes]
            .collect()
    }

    /// Zero steps its [`Levels`] need between levels.
    pub fn gap(&self) -> usize {
        gap_for(&self.head, &self.cls_head)
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

    /// [`Self::forward`] of every level (level l scaled by its own Scale), all levels in one
    /// pass (see `run_levels`).
    ///
    /// # Shapes
    /// - xs: levels `[B, C, T_l]`, masks `[B, T_l]`
    /// - output: levels `[B, T_l, 2]`
    pub fn forward_levels(&self, xs: &[Tensor<3>], masks: &[Tensor<2, Bool>]) -> Vec<Tensor<3>> {
        Levels::lay_out(xs, masks, self.gap()).map_or_else(Vec::new, |l| self.forward_laid_out(&l))
    }

    /// Zero steps its [`Levels`] need between levels.
    pub fn gap(&self) -> usize {
        gap_for(&self.head, &self.offset_head)
    }

    /// [`Self::forward_levels`] of levels laid out with [`Self::gap`] zero steps between them.
    pub fn forward_laid_out(&self, levels: &Levels) -> Vec<Tensor<3>> {
        run_levels(&self.head, &self.norm, &self.offset_head, levels)
            .into_iter()
            .enumerate()
            .map(|(level, y)| {
                let y = match self.scale.get(level) {
                    Some(s) => y * s.scale.val().reshape([1, 1, 1]),
                    None => y,
                };
                relu(y).swap_dims(1, 2) // [B, T_l, 2]
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    /// Values of a tensor.
    fn vals<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().try_to_vec::<f32>().unwrap()
    }

    #[test]
    fn all_levels_at_once_equal_each_level_alone_forward_and_backward() {
        // Levels of 8, 4, 2 and 1 steps, laid out once for both heads, with padded tails (and
        // one whole level padded), a kernel of 3 and of 5 (gap 2); trained weights stand-ins:
        // every ln weight and bias random, so that ln(0) = bias ≠ 0 on the gaps would leak
        // into the next level's window if the gaps were not zeroed again.
        let dev = Device::flex().autodiff();
        dev.seed(21);
        for k in [3, 5] {
            let trunk = HeadConfig::new(6, 5).with_kernel_size(k);
            let mut cls = ClsHeadConfig::new(trunk.clone(), 3).init(&dev);
            let mut reg = RegHeadConfig::new(trunk, 4).init(&dev);
            for n in cls.norm.iter_mut().chain(reg.norm.iter_mut()).flatten() {
                n.weight = Param::from_tensor(Tensor::random([5], Distribution::Uniform(0.5, 1.5), &dev));
                n.bias = Param::from_tensor(Tensor::random([5], Distribution::Uniform(0.2, 1.0), &dev));
            }
            for (l, s) in reg.scale.iter_mut().enumerate() {
                s.scale = Param::from_tensor(Tensor::from_data(
                    TensorData::new(vec![1.0 + l as f32 * 0.5], [1]),
                    &dev,
                ));
            }
            let lens = [8usize, 4, 2, 1];
            let valid = [[6usize, 3, 1, 0], [8, 4, 2, 1]];
            let xs: Vec<Tensor<3>> = lens
                .iter()
                .map(|&t| Tensor::random([2, 6, t], Distribution::Uniform(-1.0, 1.0), &dev).require_grad())
                .collect();
            let masks: Vec<Tensor<2, Bool>> = lens
                .iter()
                .enumerate()
                .map(|(l, &t)| {
                    let m: Vec<bool> = (0..2).flat_map(|b| (0..t).map(move |i| i < valid[b][l])).collect();
                    Tensor::from_data(TensorData::new(m, [2, t]), &dev)
                })
                .collect();
            // Both heads on one layout of the levels, as the network runs them.
            assert_eq!((cls.gap(), reg.gap()), (k / 2, k / 2));
            let levels = Levels::lay_out(&xs, &masks, k / 2).expect("levels");
            let together = (cls.forward_laid_out(&levels), reg.forward_laid_out(&levels));
            // Each head laying the levels out itself gives the same outputs.
            let apart = (cls.forward_levels(&xs, &masks), reg.forward_levels(&xs, &masks));
            for (a, b) in together.0.iter().chain(&together.1).zip(apart.0.iter().chain(&apart.1)) {
                assert_eq!(vals(a.clone().inner()), vals(b.clone().inner()), "k {k}");
            }
            let alone: (Vec<_>, Vec<_>) = (
                xs.iter().zip(&masks).map(|(x, m)| cls.forward(x.clone(), m)).collect(),
                xs.iter()
                    .zip(&masks)
                    .enumerate()
                    .map(|(l, (x, m))| reg.forward(x.clone(), m, l))
                    .collect(),
            );
            // A loss over every output, to compare the gradients into each level's input.
            let loss = |(c, r): &(Vec<Tensor<3>>, Vec<Tensor<3>>)| {
                c.iter()
                    .chain(r)
                    .enumerate()
                    .fold(Tensor::<1>::zeros([1], &dev), |acc, (i, y)| {
                        acc + y.clone().mul_scalar(1.0 + i as f64).sin().sum()
                    })
            };
            // Not a comparison of zeros: the logits of every level have non-zero values (the
            // offsets pass a ReLU, so a short level's may all be 0).
            for (l, y) in together.0.iter().enumerate() {
                assert!(
                    vals(y.clone().inner()).iter().any(|v| *v != 0.0),
                    "k {k}, level {l}: logits all zero"
                );
            }
            let g_together = loss(&together).backward();
            let g_alone = loss(&alone).backward();
            for (l, x) in xs.iter().enumerate() {
                for (a, b, what) in [
                    (&together.0[l], &alone.0[l], "logits"),
                    (&together.1[l], &alone.1[l], "offsets"),
                ] {
                    assert_eq!(a.dims(), b.dims(), "k {k}, level {l}: {what}");
                    let (a, b) = (vals(a.clone().inner()), vals(b.clone().inner()));
                    assert!(
                        a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-5),
                        "k {k}, level {l}: {what}"
                    );
                }
                let (a, b) = (vals(x.grad(&g_together).unwrap()), vals(x.grad(&g_alone).unwrap()));
                assert!(
                    a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-4),
                    "k {k}, level {l}: d x"
                );
            }
        }
    }
}
