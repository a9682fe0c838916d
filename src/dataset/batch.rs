//! Batching with padding and masks into burn tensors (SPEC §2.4).
//!
//! Files store features `[T, C]`; the network reads `[B, C, T]`, so the transpose happens
//! here, once, on the host.

use burn::tensor::{Bool, Device, Tensor, TensorData};

use super::Features;

/// A run of rows of one video's features.
#[derive(Debug, Clone, Copy)]
pub struct Window<'a> {
    pub feats: &'a Features,
    /// First row.
    pub start: usize,
    /// Number of rows.
    pub len: usize,
}

impl<'a> Window<'a> {
    /// The whole video.
    pub fn whole(feats: &'a Features) -> Self {
        Self {
            feats,
            start: 0,
            len: feats.rows,
        }
    }
}

/// A padded batch.
#[derive(Debug, Clone)]
pub struct Batch {
    /// `[B, C, T]`, zero on padded steps.
    pub feats: Tensor<3>,
    /// `[B, T]`, true on real steps.
    pub mask: Tensor<2, Bool>,
    /// Real length of each video.
    pub lengths: Vec<usize>,
}

/// A window that does not fit the padded length, or inconsistent widths.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error(
        "video {index} has {len} steps but the batch is padded to {padded} (training videos must be cropped to max_seq_len first)"
    )]
    TooLong { index: usize, len: usize, padded: usize },
    #[error("video {index} has feature width {dim}, expected {expected}")]
    Width { index: usize, dim: usize, expected: usize },
    #[error("video {index}: window [{start}, {end}) is outside its {rows} rows")]
    Window {
        index: usize,
        start: usize,
        end: usize,
        rows: usize,
    },
    #[error("an empty batch")]
    Empty,
}

/// Host-side `[B, C, T]` buffer and `[B, T]` mask for `windows`, padded to `padded`.
pub fn collate_host(windows: &[Window<'_>], padded: usize) -> Result<(Vec<f32>, Vec<bool>, usize), BatchError> {
    let first = windows.first().ok_or(BatchError::Empty)?;
    let dim = first.feats.dim;
    let b = windows.len();
    let mut data = vec![0.0f32; b * dim * padded];
    let mut mask = vec![false; b * padded];
    for (i, w) in windows.iter().enumerate() {
        if w.feats.dim != dim {
            return Err(BatchError::Width {
                index: i,
                dim: w.feats.dim,
                expected: dim,
            });
        }
        if w.start + w.len > w.feats.rows {
            return Err(BatchError::Window {
                index: i,
                start: w.start,
                end: w.start + w.len,
                rows: w.feats.rows,
            });
        }
        if w.len > padded {
            return Err(BatchError::TooLong {
                index: i,
                len: w.len,
                padded,
            });
        }
        let base = i * dim * padded;
        for t in 0..w.len {
            let row = w.feats.row(w.start + t);
            for (c, &v) in row.iter().enumerate() {
                data[base + c * padded + t] = v; // [B, C, T]
            }
            mask[i * padded + t] = true;
        }
    }
    Ok((data, mask, dim))
}

/// Pad `windows` to `padded` steps and move them to `device`.
pub fn collate(windows: &[Window<'_>], padded: usize, device: &Device) -> Result<Batch, BatchError> {
    let (data, mask, dim) = collate_host(windows, padded)?;
    let b = windows.len();
    let feats = Tensor::<3>::from_data(TensorData::new(data, [b, dim, padded]), device);
    let mask = Tensor::<2, Bool>::from_data(TensorData::new(mask, [b, padded]), device);
    Ok(Batch {
        feats,
        mask,
        lengths: windows.iter().map(|w| w.len).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feats(rows: usize, dim: usize) -> Features {
        Features {
            rows,
            dim,
            data: (0..rows * dim).map(|x| x as f32 + 1.0).collect(),
        }
    }

    #[test]
    fn pads_transposes_and_masks() {
        let a = feats(3, 2);
        let b = feats(5, 2);
        let (data, mask, dim) = collate_host(
            &[
                Window::whole(&a),
                Window {
                    feats: &b,
                    start: 1,
                    len: 4,
                },
            ],
            6,
        )
        .unwrap();
        assert_eq!(dim, 2);
        // video 0, channel 1 over time: rows 0..3 → values 2, 4, 6, then zeros
        assert_eq!(&data[6..12], &[2.0, 4.0, 6.0, 0.0, 0.0, 0.0]);
        // video 1, channel 0 starts at row 1 → 3, 5, 7, 9
        assert_eq!(&data[12..18], &[3.0, 5.0, 7.0, 9.0, 0.0, 0.0]);
        assert_eq!(
            mask,
            vec![
                true, true, true, false, false, false, true, true, true, true, false, false
            ]
        );
    }

    #[test]
    fn tensors_have_expected_shapes_and_values() {
        let a = feats(3, 4);
        let dev = crate::device::DeviceChoice::Cpu.device().unwrap();
        let batch = collate(&[Window::whole(&a)], 8, &dev).unwrap();
        assert_eq!(batch.feats.dims(), [1, 4, 8]);
        assert_eq!(batch.mask.dims(), [1, 8]);
        let v = batch.feats.into_data().try_into_vec::<f32>().unwrap();
        assert_eq!(&v[..8], &[1.0, 5.0, 9.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
        let m = batch.mask.into_data().try_into_vec::<bool>().unwrap();
        assert_eq!(m.iter().filter(|x| **x).count(), 3);
    }

    #[test]
    fn errors_name_the_problem() {
        let a = feats(10, 2);
        let e = collate_host(&[Window::whole(&a)], 8).unwrap_err().to_string();
        assert!(e.contains("10 steps") && e.contains("padded to 8"), "{e}");
        let e = collate_host(
            &[Window {
                feats: &a,
                start: 8,
                len: 4,
            }],
            16,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("[8, 12)"), "{e}");
        assert!(matches!(collate_host(&[], 8), Err(BatchError::Empty)));
    }
}
