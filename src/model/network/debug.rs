//! The forward pass with its intermediate tensors, for the parity test against the
//! original and for inspection.

use burn::tensor::{Bool, Tensor};

use super::{Network, NetworkOutput};
use crate::model::ModelError;
use crate::model::long_term::Project;

/// Intermediate tensors of a forward pass (for the parity test and inspection).
#[derive(Debug, Clone)]
pub struct Intermediates {
    /// Last ConvLSTM layer's hidden state `[B, T, 1, H, W]` (TeAtten).
    pub lstm_h: Option<Tensor<5>>,
    /// `lstm_h + x` as images `[B·T, 1, H, W]` (SpAtten and TeAtten).
    pub x_lstm: Option<Tensor<4>>,
    /// Attention map `[B, input_dim, T]`.
    pub attention: Option<Tensor<3>>,
    /// Each embedding conv's masked output, before ln/ReLU: `[B, embd_dim, T]`.
    pub embd_conv_out: Vec<Tensor<3>>,
    /// Each embedding layer's output after ln and ReLU: `[B, embd_dim, T]`.
    pub embd_out: Vec<Tensor<3>>,
    /// Backbone levels `[B, embd_dim, T_l]`.
    pub feats: Vec<Tensor<3>>,
    /// Neck outputs `[B, fpn_dim, T_l]`.
    pub fpn_feats: Vec<Tensor<3>>,
}

impl Network {
    /// [`Network::forward`] that also returns the intermediates.
    ///
    /// # Shapes
    /// - as [`Network::forward`]; intermediates as documented on [`Intermediates`]
    pub fn forward_debug(
        &self,
        feats: Tensor<3>,
        mask: Tensor<2, Bool>,
        patch_centres: Option<&[(usize, usize)]>,
    ) -> Result<(NetworkOutput, Intermediates), ModelError> {
        self.run(feats, mask, patch_centres, Project::All)
    }
}
