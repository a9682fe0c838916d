//! The point generator (SPEC §3.7): level l has stride s_l and points at 0, s_l, 2·s_l, …,
//! each carrying `(t, reg_min_l, reg_max_l, s_l)`. As many points as the level has steps.

use burn::tensor::{Device, Tensor, TensorData};

/// The points of one pyramid level.
#[derive(Debug, Clone, PartialEq)]
pub struct LevelPoints {
    /// Stride of the level in grid units.
    pub stride: f32,
    /// Regression range `(min, max)` of the level.
    pub reg_range: (f32, f32),
    /// Number of points (the level's length).
    pub len: usize,
}

impl LevelPoints {
    /// Position of point `i`.
    pub fn t(&self, i: usize) -> f32 {
        i as f32 * self.stride
    }

    /// Rows `[t, reg_min, reg_max, stride]`.
    pub fn rows(&self) -> Vec<[f32; 4]> {
        (0..self.len)
            .map(|i| [self.t(i), self.reg_range.0, self.reg_range.1, self.stride])
            .collect()
    }
}

/// Points of every level, finest first.
#[derive(Debug, Clone, PartialEq)]
pub struct Points {
    /// One entry per level.
    pub levels: Vec<LevelPoints>,
}

impl Points {
    /// Points for levels of the given lengths, strides and regression ranges (zipped; extra
    /// entries of the longer lists are ignored).
    pub fn new(lengths: &[usize], strides: &[usize], reg_ranges: &[(f32, f32)]) -> Self {
        Points {
            levels: lengths
                .iter()
                .zip(strides)
                .zip(reg_ranges)
                .map(|((&len, &s), &r)| LevelPoints {
                    stride: s as f32,
                    reg_range: r,
                    len,
                })
                .collect(),
        }
    }

    /// Total number of points.
    pub fn len(&self) -> usize {
        self.levels.iter().map(|l| l.len).sum()
    }

    /// Whether there are no points.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// All rows, levels concatenated.
    pub fn rows(&self) -> Vec<[f32; 4]> {
        self.levels.iter().flat_map(|l| l.rows()).collect()
    }

    /// All rows as a tensor.
    ///
    /// # Shapes
    /// - output: `[N, 4]`, N = [`Points::len`]
    pub fn to_tensor(&self, device: &Device) -> Tensor<2> {
        let rows = self.rows();
        let n = rows.len();
        let flat: Vec<f32> = rows.into_iter().flatten().collect();
        Tensor::from_data(TensorData::new(flat, [n, 4]), device)
    }
}
