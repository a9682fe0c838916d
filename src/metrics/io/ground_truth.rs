//! The ground truth for scoring: the annotation file as [`Annotations`] reads it (one
//! reader, so training and scoring see the same class ids), viewed as segments per split.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::ReadError;
use crate::dataset::{Annotations, Class};
use crate::metrics::anet::GtSegment;

/// One annotated segment of the ground truth.
#[derive(Debug, Clone, PartialEq)]
pub struct GtAnnotation {
    /// Class id.
    pub label: usize,
    /// `[start, end]` in seconds.
    pub segment: [f64; 2],
}

/// One video of the ground-truth file.
#[derive(Debug, Clone, PartialEq)]
pub struct GtVideo {
    /// Video id (the key in `database`).
    pub id: String,
    /// `subset` as written (matched case-insensitively).
    pub subset: String,
    /// Duration in seconds, when given.
    pub duration: Option<f64>,
    /// Frames per second, when given.
    pub fps: Option<f64>,
    /// Annotations in file order.
    pub annotations: Vec<GtAnnotation>,
}

/// A ground-truth file in the layout of SPEC §2.1.
#[derive(Debug, Clone, PartialEq)]
pub struct GroundTruth {
    /// The file it was read from.
    pub path: PathBuf,
    /// Videos in file order.
    pub videos: Vec<GtVideo>,
    /// Label name → class id, for every name the file writes.
    pub label_ids: HashMap<String, usize>,
}

impl From<&Annotations> for GroundTruth {
    fn from(ann: &Annotations) -> Self {
        let videos = ann
            .videos
            .iter()
            .map(|v| GtVideo {
                id: v.id.clone(),
                subset: v.subset.clone(),
                duration: v.duration,
                fps: v.fps,
                annotations: v
                    .segments
                    .iter()
                    .map(|s| GtAnnotation {
                        label: s.label_id,
                        segment: [s.start, s.end],
                    })
                    .collect(),
            })
            .collect();
        Self {
            path: ann.path.clone(),
            videos,
            label_ids: ann.label_ids.iter().map(|(k, &v)| (k.clone(), v)).collect(),
        }
    }
}

impl GroundTruth {
    /// The videos whose `subset` equals `split`, case-insensitively, in file order.
    pub fn split_videos(&self, split: &str) -> Vec<&GtVideo> {
        self.videos
            .iter()
            .filter(|v| v.subset.eq_ignore_ascii_case(split))
            .collect()
    }

    /// The ground-truth segments of `split`; an error if it has none.
    pub fn split_segments(&self, split: &str) -> Result<Vec<GtSegment>, ReadError> {
        let segs: Vec<GtSegment> = self
            .split_videos(split)
            .into_iter()
            .flat_map(|v| {
                v.annotations.iter().map(|a| GtSegment {
                    video: v.id.clone(),
                    segment: a.segment,
                    label: a.label,
                })
            })
            .collect();
        if segs.is_empty() {
            let mut subsets: Vec<String> = self.videos.iter().map(|v| v.subset.to_lowercase()).collect();
            subsets.sort();
            subsets.dedup();
            let available = if subsets.is_empty() {
                "none".to_string()
            } else {
                subsets.join(", ")
            };
            return Err(ReadError::EmptySplit {
                path: self.path.clone(),
                split: split.to_string(),
                available,
            });
        }
        Ok(segs)
    }

    /// Class id of a label name: as the file writes it, else the paper's class of that name
    /// (the same id either way, [`Annotations`] makes sure).
    pub fn label_id(&self, name: &str) -> Option<usize> {
        self.label_ids
            .get(name)
            .copied()
            .or_else(|| Class::from_name(name).map(Class::id))
    }

    /// Label name of a class id: the paper's name for its classes, else the first (in
    /// sort order) name the file gives the id.
    pub fn label_name(&self, id: usize) -> Option<&str> {
        Class::from_id(id).map(Class::name).or_else(|| {
            self.label_ids
                .iter()
                .filter(|&(_, &v)| v == id)
                .map(|(k, _)| k.as_str())
                .min()
        })
    }

    /// The label names a prediction file may use: the file's and the paper's, sorted.
    pub fn known_names(&self) -> Vec<&str> {
        let mut known: Vec<&str> = self
            .label_ids
            .keys()
            .map(String::as_str)
            .chain(Class::names())
            .collect();
        known.sort_unstable();
        known.dedup();
        known
    }
}

/// Read a ground-truth file (SPEC §2.1) with the annotation reader: `{"database": {vid:
/// {"subset", "duration"?, "fps"?, "annotations": [{"label"?, "label_id"?, "segment"}]}}}`.
///
/// Class ids come from `label_id`; an annotation with only a `label` name takes the id of
/// its [`Class`], independent of the order of the file. A class name with another id, a
/// name with two ids, or an id with two names is an error.
pub fn read_ground_truth(path: &Path) -> Result<GroundTruth, ReadError> {
    Ok(GroundTruth::from(&Annotations::load(path)?))
}

/// [`read_ground_truth`] from text already in memory; `path` is only used in messages.
pub fn parse_ground_truth(text: &str, path: &Path) -> Result<GroundTruth, ReadError> {
    Ok(GroundTruth::from(&Annotations::from_slice(text.as_bytes(), path)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::io::test_support::{GT, write};

    #[test]
    fn reads_ground_truth() {
        let dir = tempfile::tempdir().unwrap();
        let gt = read_ground_truth(&write(dir.path(), "gt.json", GT)).unwrap();
        assert_eq!(gt.videos.len(), 3);
        assert_eq!(gt.split_videos("test").len(), 2);
        assert_eq!(gt.videos[1].annotations[0].label, 1); // name looked up
        assert_eq!(gt.videos[0].fps, Some(15.0));
        assert_eq!(gt.videos[1].duration, None);
        assert_eq!(gt.label_id("washout"), Some(1));
        assert_eq!(gt.label_id("Washout"), Some(1));
        assert_eq!(gt.label_id("venous"), None);
        assert_eq!(gt.label_name(0), Some("filling"));
        let segs = gt.split_segments("TEST").unwrap();
        assert_eq!(segs.len(), 2);
        let e = gt.split_segments("validation").unwrap_err().to_string();
        assert!(
            e.contains("gt.json") && e.contains("\"validation\"") && e.contains("test, train"),
            "{e}"
        );
    }

    /// The scorer reads the ground truth with the annotation reader: the same ids, the same
    /// checks (here one of the checks the old scorer's own reader lacked).
    #[test]
    fn ground_truth_is_what_the_annotation_reader_reads() {
        let dir = tempfile::tempdir().unwrap();
        let text = r#"{"database": {"a": {"subset": "test", "annotations": [
            {"label": "washout", "segment": [3, 6]}, {"label": "filling", "segment": [1, 3]},
            {"label": "x", "label_id": 4, "segment": [0, 1]}]}}}"#;
        let p = write(dir.path(), "gt.json", text);
        let gt = read_ground_truth(&p).unwrap();
        let ann = Annotations::load(&p).unwrap();
        let labels: Vec<usize> = gt.videos[0].annotations.iter().map(|a| a.label).collect();
        let ann_labels: Vec<usize> = ann.videos[0].segments.iter().map(|s| s.label_id).collect();
        assert_eq!(labels, vec![1, 0, 4]);
        assert_eq!(labels, ann_labels);
        assert_eq!(gt.label_name(4), Some("x"));
        assert_eq!(gt.known_names(), vec!["filling", "washout", "x"]);

        let e = parse_ground_truth(
            r#"{"database": {"../v": {"subset": "test", "annotations": []}}}"#,
            Path::new("g.json"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("g.json: video '../v': the id is not a plain file name"),
            "{e}"
        );
        let e = read_ground_truth(&dir.path().join("missing.json"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("cannot read ") && e.contains("missing.json"), "{e}");
    }
}
