//! Dataset loading (SPEC §2): ActivityNet-style annotations and the classes they name,
//! per-video `.npy` features, seconds↔grid conversion, the training crop, batching into burn
//! tensors and the dataset checks of `xca check`.

pub mod annotations;
pub mod batch;
pub mod check;
pub mod class;
pub mod crop;
pub mod features;
pub mod grid;
pub mod json;

use std::path::{Path, PathBuf};

use crate::config::Config;

pub use annotations::{Annotations, Segment, Video};
pub use class::Class;
pub use features::Features;
pub use grid::Grid;

/// Anything wrong with the data a config points at, naming the file and the entry.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error(transparent)]
    Bounded(#[from] crate::fsio::ReadError),
    #[error("{}: {message}", path.display())]
    Format { path: PathBuf, message: String },
    #[error("{}: video '{video}': {message}", path.display())]
    Entry {
        path: PathBuf,
        video: String,
        message: String,
    },
    #[error("split {splits:?} of {} has no videos (subsets present: {present:?})", path.display())]
    EmptySplit {
        path: PathBuf,
        splits: Vec<String>,
        present: Vec<String>,
    },
}

/// One video ready for training or inference: features in grid units plus its ground truth.
#[derive(Debug, Clone)]
pub struct VideoData {
    /// Video id (the key in the annotation file).
    pub id: String,
    /// Feature rows after `downsample_rate`, row-major `[rows, input_dim]`.
    pub feats: Features,
    /// Frames per second (config `default_fps` or the file's).
    pub fps: f64,
    /// Duration in seconds (from the file, or rows·feat_stride/fps when missing).
    pub duration: f64,
    /// Ground-truth segments in seconds, as annotated.
    pub segments_s: Vec<[f64; 2]>,
    /// Ground-truth segments in grid units (SPEC §2.2).
    pub segments: Vec<[f64; 2]>,
    /// Class id per segment.
    pub labels: Vec<usize>,
}

/// The videos of one split, loaded once and kept in memory (a few MB per video).
#[derive(Debug, Clone)]
pub struct SplitData {
    /// Which split names were selected.
    pub splits: Vec<String>,
    pub videos: Vec<VideoData>,
}

/// Path of a video's feature file: `feat_folder/{file_prefix}{id}{file_ext}`.
pub fn feature_path(cfg: &Config, id: &str) -> PathBuf {
    let d = &cfg.dataset;
    let name = format!("{}{}{}", d.file_prefix.as_deref().unwrap_or(""), id, d.file_ext);
    d.feat_folder.join(name)
}

/// Resolve the fps of a video: the config's `default_fps` wins (SPEC §2.1).
pub fn video_fps(cfg: &Config, video: &Video, json: &Path) -> Result<f64, DatasetError> {
    match cfg.dataset.default_fps.or(video.fps) {
        Some(f) if f.is_finite() && f > 0.0 => Ok(f),
        Some(f) => Err(DatasetError::Entry {
            path: json.to_path_buf(),
            video: video.id.clone(),
            message: format!("fps must be positive, got {f}"),
        }),
        None => Err(DatasetError::Entry {
            path: json.to_path_buf(),
            video: video.id.clone(),
            message: "has no fps and the config sets no dataset.default_fps".into(),
        }),
    }
}

/// Load the features and ground truth of every video in the named splits.
///
/// `on_video` is called after each video (for a progress bar).
pub fn load_split(
    cfg: &Config,
    ann: &Annotations,
    splits: &[String],
    mut on_video: impl FnMut(&str),
) -> Result<SplitData, DatasetError> {
    let grid = Grid::from_config(cfg);
    let selected = ann.split(splits);
    if selected.is_empty() {
        return Err(DatasetError::EmptySplit {
            path: ann.path.clone(),
            splits: splits.to_vec(),
            present: ann.subsets(),
        });
    }
    let mut videos = Vec::with_capacity(selected.len());
    for v in selected {
        let fps = video_fps(cfg, v, &ann.path)?;
        let path = feature_path(cfg, &v.id);
        let feats = Features::load(&path, cfg.dataset.input_dim)?.downsample(cfg.dataset.downsample_rate);
        if feats.rows == 0 {
            return Err(DatasetError::Format {
                path,
                message: "has no rows".into(),
            });
        }
        if let Some(bad) = feats.first_non_finite() {
            return Err(DatasetError::Format {
                path,
                message: format!("row {} holds a non-finite value (NaN or Inf)", bad / feats.dim),
            });
        }
        let duration = v
            .duration
            .unwrap_or((feats.rows * cfg.dataset.feat_stride * cfg.dataset.downsample_rate) as f64 / fps);
        let mut segments_s = Vec::new();
        let mut segments = Vec::new();
        let mut labels = Vec::new();
        for s in &v.segments {
            if s.label_id >= cfg.dataset.num_classes {
                return Err(DatasetError::Entry {
                    path: ann.path.clone(),
                    video: v.id.clone(),
                    message: format!(
                        "label_id {} ({}) is not below num_classes {}",
                        s.label_id,
                        crate::text::quoted(&s.label),
                        cfg.dataset.num_classes
                    ),
                });
            }
            segments_s.push([s.start, s.end]);
            segments.push([grid.to_grid(s.start, fps), grid.to_grid(s.end, fps)]);
            labels.push(s.label_id);
        }
        videos.push(VideoData {
            id: v.id.clone(),
            feats,
            fps,
            duration,
            segments_s,
            segments,
            labels,
        });
        on_video(&v.id);
    }
    Ok(SplitData {
        splits: splits.to_vec(),
        videos,
    })
}
