//! Patch-wise contrastive projection, the "random patch" (SPEC §3.1 step 5).
//!
//! Per video, the 5×5 patch of its first frame centred at (r, c) is used as a fixed conv
//! kernel (padding 2, bias 0 — the original adds a fresh random bias, xca does not) over
//! every frame of that video, then ReLU. Centres come from the run's seeded RNG.

use burn::tensor::activation::relu;
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Tensor, s};
use rand::RngExt;

use super::ModelError;

/// Half the patch size: patches are `(2·PATCH_HALF + 1)²` = 5×5.
pub const PATCH_HALF: usize = 2;

/// Largest valid centre row/column for an image of this side (60 for 64, as the original's
/// `randint(2, 61)`).
pub fn max_centre(side: usize) -> usize {
    side.saturating_sub(4)
}

/// Draw one patch centre `(row, col)` per video, uniformly with `2 ≤ row, col ≤ side − 4`.
pub fn draw_patch_centres<R: rand::Rng + ?Sized>(rng: &mut R, batch: usize, side: usize) -> Vec<(usize, usize)> {
    let hi = max_centre(side).max(PATCH_HALF);
    (0..batch)
        .map(|_| (rng.random_range(PATCH_HALF..=hi), rng.random_range(PATCH_HALF..=hi)))
        .collect()
}

/// Apply the random-patch projection with the given centres.
///
/// All videos go through one grouped conv (video = channel group). The kernels are cut from
/// the input and detached: they are constants, not parameters.
///
/// # Shapes
/// - x: `[B, C, T]` with C = side², step t of video b the image `x[b, :, t]` row-major
/// - centres: B pairs `(row, col)`
/// - output: `[B, C, T]`
pub fn random_patch(x: Tensor<3>, centres: &[(usize, usize)], side: usize) -> Result<Tensor<3>, ModelError> {
    let kernels = patch_kernels(x.clone(), centres, side)?;
    Ok(apply_patch(x, kernels, side))
}

/// The random patch's kernels: per video, the 5×5 patch of its first frame at its centre,
/// detached (constants, not parameters).
///
/// # Shapes
/// - x: `[B, C, T]` (T ≥ 1; only step 0 is read), C = side²
/// - centres: B pairs `(row, col)`
/// - output: `[B, 1, 5, 5]`
pub fn patch_kernels(x: Tensor<3>, centres: &[(usize, usize)], side: usize) -> Result<Tensor<4>, ModelError> {
    let [b, _, _] = x.dims();
    if centres.len() != b {
        return Err(ModelError::PatchCentres {
            got: centres.len(),
            batch: b,
        });
    }
    let max = max_centre(side);
    for &(row, col) in centres {
        if row < PATCH_HALF || col < PATCH_HALF || row > max || col > max {
            return Err(ModelError::PatchCentreRange { row, col, max, side });
        }
    }
    // First frame of each video: [B, 1, H, W]; kernels [B, 1, 5, 5].
    let first = x.detach().narrow(2, 0, 1).reshape([b, 1, side, side]);
    let kernels: Vec<Tensor<4>> = centres
        .iter()
        .enumerate()
        .map(|(i, &(r, cc))| {
            first.clone().slice(s![
                i..i + 1,
                ..,
                r - PATCH_HALF..r + PATCH_HALF + 1,
                cc - PATCH_HALF..cc + PATCH_HALF + 1
            ])
        })
        .collect();
    let weight = Tensor::cat(kernels, 0); // [B, 1, 5, 5]
    let k = 2 * PATCH_HALF + 1;
    debug_assert_eq!(weight.dims(), [b, 1, k, k]);
    Ok(weight)
}

/// Convolve every frame of each video with its kernel (padding 2, no bias), then ReLU.
/// Frames are independent, so any run of steps can be done on its own (streamed inference).
///
/// # Shapes
/// - x: `[B, C, T]` with C = side²
/// - kernels: `[B, 1, 5, 5]` from [`patch_kernels`]
/// - output: `[B, C, T]`
pub fn apply_patch(x: Tensor<3>, kernels: Tensor<4>, side: usize) -> Tensor<3> {
    let [b, c, t] = x.dims();
    // Frames with videos as channels: [T, B, H, W].
    let frames = x.permute([2, 0, 1]).reshape([t, b, side, side]);
    let options = ConvOptions::new([1, 1], [PATCH_HALF, PATCH_HALF], [1, 1], b);
    let y = relu(conv2d(frames, kernels, None, options)); // [T, B, H, W]
    y.reshape([t, b, c]).permute([1, 2, 0]) // [B, C, T]
}
