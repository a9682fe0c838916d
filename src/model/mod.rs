//! The STA-IPCon network (SPEC §3): long short-term spatiotemporal attention input layer,
//! image- and patch-wise contrastive projections, ActionFormer's masked-conv embedding,
//! local-window conv-attention transformer, identity neck, shared heads and the point generator.
//!
//! Every block pairs a burn `XConfig` with an `X` module. [`NetworkConfig`] holds everything the
//! network needs; [`NetworkConfig::init`] checks its structural invariants and builds a [`Network`].
//! [`torch`] maps the original PyTorch parameter names onto this module tree.

pub mod attention;
pub mod backbone;
pub mod convlstm;
pub mod head;
pub mod layers;
pub mod long_term;
pub mod neck;
pub mod network;
pub mod params;
pub mod patch;
pub mod points;
pub mod torch;
pub mod transformer;

pub use network::{Intermediates, Network, NetworkConfig, NetworkOutput};
pub use params::param_counts;
pub use patch::draw_patch_centres;
pub use points::{LevelPoints, Points};
pub use torch::{LoadReport, load_torch_tensors, read_tensor_file};

/// Errors of the model module: impossible configurations, wrong input shapes and weight files
/// that do not fit the network.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A configuration value the network cannot be built with.
    #[error("invalid model config: {field}: {reason}")]
    Config {
        /// The offending field (YAML key where one exists).
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// An input tensor with the wrong shape.
    #[error("wrong shape for {what}: expected {expected}, got {actual:?}")]
    Shape {
        /// Which input.
        what: &'static str,
        /// The expected shape, in words.
        expected: String,
        /// The actual dims.
        actual: Vec<usize>,
    },
    /// `random_patch` is on but no patch centres were given, or not one per video.
    #[error("random_patch needs one patch centre per video: got {got} for a batch of {batch}")]
    PatchCentres {
        /// Number of centres given.
        got: usize,
        /// Batch size.
        batch: usize,
    },
    /// A patch centre whose 5×5 patch does not fit inside the image.
    #[error("patch centre ({row}, {col}) is outside 2..={max} for a {side}×{side} image")]
    PatchCentreRange {
        /// Row.
        row: usize,
        /// Column.
        col: usize,
        /// Largest valid row/column.
        max: usize,
        /// Image side.
        side: usize,
    },
    /// A weight the network needs is not in the weight file.
    #[error("weight file has no tensor '{key}' (needed for {path})")]
    MissingWeight {
        /// PyTorch key looked for.
        key: String,
        /// xca module path it would fill.
        path: String,
    },
    /// A weight exists but has an incompatible shape.
    #[error("tensor '{key}' has shape {actual:?}, expected {expected:?}")]
    WeightShape {
        /// PyTorch key.
        key: String,
        /// Shape the network needs (PyTorch layout).
        expected: Vec<usize>,
        /// Shape in the file.
        actual: Vec<usize>,
    },
    /// A weight that cannot be read as float32.
    #[error("tensor '{key}' cannot be read as float32: {reason}")]
    WeightData {
        /// PyTorch key.
        key: String,
        /// Why.
        reason: String,
    },
    /// A weight file that is missing, not a regular file, or larger than a checkpoint can be.
    #[error(transparent)]
    File(#[from] crate::fsio::ReadError),
    /// A weight file that cannot be read.
    #[error("cannot read weights from {path}: {reason}")]
    WeightFile {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
}

/// Check that `dims` equals `expected`, naming the input otherwise.
pub(crate) fn check_dims<const D: usize>(
    what: &'static str,
    dims: [usize; D],
    expected: [Option<usize>; D],
    names: &str,
) -> Result<(), ModelError> {
    let ok = dims.iter().zip(expected.iter()).all(|(d, e)| e.is_none_or(|e| e == *d));
    if ok {
        Ok(())
    } else {
        let exp: Vec<String> = names
            .split(',')
            .zip(expected.iter())
            .map(|(n, e)| match e {
                Some(v) => format!("{}={v}", n.trim()),
                None => n.trim().to_string(),
            })
            .collect();
        Err(ModelError::Shape {
            what,
            expected: format!("[{}]", exp.join(", ")),
            actual: dims.to_vec(),
        })
    }
}
