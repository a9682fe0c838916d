//! Evaluation metrics (SPEC §7): ActivityNet detection mAP and Recall@kx ([`anet`]), the
//! keyframe table ([`keyframe`]) with its confidence bound ([`stats`]), and the readers
//! for ground-truth and detection files ([`io`]). Plain Rust values; independent of the model.

pub mod anet;
pub mod io;
pub mod keyframe;
pub mod score;
pub mod stats;

pub use anet::{
    Detection, DetectionMetrics, GtSegment, TIOUS, TOP_K, detections_from, evaluate_detection, top1_per_class_per_video,
};
pub use keyframe::{KeyframeMetrics, VideoKeyframes, keyframe_metrics};
