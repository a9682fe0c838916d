//! Reading ground-truth and detection files for scoring (SPEC §2.1, §7.1).
//!
//! The ground truth is the annotation file, read by the one annotation reader
//! ([`crate::dataset::Annotations`]) and viewed per split ([`ground_truth`]); detections come
//! in two layouts ([`predictions`]). Both readers are lenient about extra keys and strict
//! about the values they use: every error names the file and the entry (e.g.
//! `results["v1"][3].score`). Python's `NaN`/`Infinity` tokens are read too, so that they
//! are reported as non-finite values of a named entry instead of a syntax error.

mod ground_truth;
mod predictions;

use std::path::PathBuf;

pub use ground_truth::{GroundTruth, GtAnnotation, GtVideo, parse_ground_truth, read_ground_truth};
pub use predictions::{PredictionFormat, Predictions, parse_predictions, read_predictions};

/// A ground-truth or prediction file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The file is not a regular file, too large, or not UTF-8.
    #[error(transparent)]
    Bounded(#[from] crate::fsio::ReadError),
    /// The ground-truth (annotation) file is malformed; the message names file and entry.
    #[error(transparent)]
    Annotations(#[from] crate::dataset::DatasetError),
    /// The file is not JSON.
    #[error("{}: not valid JSON: {msg}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// serde_json's message (with line and column).
        msg: String,
    },
    /// An entry with a missing or bad value.
    #[error("{}: {entry}: {msg}", path.display())]
    Entry {
        /// The file.
        path: PathBuf,
        /// Where in the file, e.g. `results["v1"][0].segment`.
        entry: String,
        /// What is wrong.
        msg: String,
    },
    /// The file has neither accepted layout.
    #[error("{}: {msg}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// The requested split has no ground truth.
    #[error("{}: split {split:?} has no ground-truth segments (subsets in the file: {available})", path.display())]
    EmptySplit {
        /// The file.
        path: PathBuf,
        /// The split asked for.
        split: String,
        /// The subsets present, comma-separated.
        available: String,
    },
}

/// What the reader tests of both files share: a small ground truth and a file writer.
#[cfg(test)]
pub(crate) mod test_support {
    use std::path::{Path, PathBuf};

    pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    pub const GT: &str = r#"{"version": "x", "database": {
        "v1": {"subset": "Test", "duration": 6.4, "fps": 15.0, "extra": 1,
               "annotations": [{"label": "filling", "label_id": 0, "segment": [0.8, 2.6]},
                               {"label": "washout", "label_id": 1, "segment": [2.6, 5.9]}]},
        "v2": {"subset": "train", "annotations": [{"label": "washout", "segment": [1, 2]}]},
        "v3": {"subset": "test", "duration": 3, "annotations": []}}}"#;
}
