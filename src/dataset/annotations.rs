//! The ActivityNet-style annotation file (SPEC §2.1).

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use super::DatasetError;

/// One annotated action segment, in seconds.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    pub start: f64,
    pub end: f64,
    pub label: String,
    pub label_id: usize,
}

/// One video entry of the `database`.
#[derive(Debug, Clone, PartialEq)]
pub struct Video {
    pub id: String,
    /// `train`, `validation`, `test` … as written in the file.
    pub subset: String,
    pub duration: Option<f64>,
    pub fps: Option<f64>,
    pub segments: Vec<Segment>,
}

/// All videos of an annotation file, in file order.
#[derive(Debug, Clone)]
pub struct Annotations {
    pub path: PathBuf,
    pub videos: Vec<Video>,
}

#[derive(Deserialize)]
struct RawVideo {
    subset: String,
    #[serde(default)]
    duration: Option<f64>,
    #[serde(default)]
    fps: Option<f64>,
    #[serde(default)]
    annotations: Vec<RawSegment>,
}

#[derive(Deserialize)]
struct RawSegment {
    #[serde(default)]
    label: Option<String>,
    #[serde(default)]
    label_id: Option<i64>,
    segment: [f64; 2],
}

/// The class names of SPEC §1, used when a file gives names without ids.
pub const CLASS_NAMES: [&str; 2] = ["filling", "washout"];

impl Annotations {
    /// Read and check the structure of an annotation file.
    pub fn load(path: &Path) -> Result<Self, DatasetError> {
        let bytes = std::fs::read(path).map_err(|source| DatasetError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_slice(&bytes, path)
    }

    /// Parse annotation JSON; `path` is used in messages.
    pub fn from_slice(bytes: &[u8], path: &Path) -> Result<Self, DatasetError> {
        let fmt = |message: String| DatasetError::Format {
            path: path.to_path_buf(),
            message,
        };
        let root: Value = serde_json::from_slice(bytes).map_err(|e| fmt(format!("not valid JSON: {e}")))?;
        let db = root
            .get("database")
            .and_then(Value::as_object)
            .ok_or_else(|| fmt("has no \"database\" mapping of videos (ActivityNet layout, SPEC §2.1)".into()))?;
        let mut videos = Vec::with_capacity(db.len());
        for (id, raw) in db {
            let entry = |message: String| DatasetError::Entry {
                path: path.to_path_buf(),
                video: id.clone(),
                message,
            };
            let rv: RawVideo = serde_json::from_value(raw.clone()).map_err(|e| entry(e.to_string()))?;
            if let Some(d) = rv.duration
                && !(d.is_finite() && d > 0.0)
            {
                return Err(entry(format!("duration must be positive, got {d}")));
            }
            let mut segments = Vec::with_capacity(rv.annotations.len());
            for (i, a) in rv.annotations.into_iter().enumerate() {
                let [start, end] = a.segment;
                if !(start.is_finite() && end.is_finite()) {
                    return Err(entry(format!("annotation {i}: segment [{start}, {end}] is not finite")));
                }
                if end < start {
                    return Err(entry(format!(
                        "annotation {i}: segment [{start}, {end}] ends before it starts"
                    )));
                }
                let label_id = match (a.label_id, a.label.as_deref()) {
                    (Some(id), _) if id >= 0 => id as usize,
                    (Some(id), _) => return Err(entry(format!("annotation {i}: negative label_id {id}"))),
                    (None, Some(name)) => CLASS_NAMES
                        .iter()
                        .position(|n| n.eq_ignore_ascii_case(name))
                        .ok_or_else(|| {
                            entry(format!(
                                "annotation {i}: label '{name}' has no label_id and is not one of {CLASS_NAMES:?}"
                            ))
                        })?,
                    (None, None) => return Err(entry(format!("annotation {i}: needs a label or a label_id"))),
                };
                let label = a.label.unwrap_or_else(|| {
                    CLASS_NAMES
                        .get(label_id)
                        .map(|s| s.to_string())
                        .unwrap_or_else(|| label_id.to_string())
                });
                segments.push(Segment {
                    start,
                    end,
                    label,
                    label_id,
                });
            }
            videos.push(Video {
                id: id.clone(),
                subset: rv.subset,
                duration: rv.duration,
                fps: rv.fps,
                segments,
            });
        }
        Ok(Self {
            path: path.to_path_buf(),
            videos,
        })
    }

    /// Videos whose subset matches one of `names`, case-insensitively, in file order.
    pub fn split(&self, names: &[String]) -> Vec<&Video> {
        self.videos
            .iter()
            .filter(|v| names.iter().any(|n| n.eq_ignore_ascii_case(&v.subset)))
            .collect()
    }

    /// The distinct subset names present, in first-seen order.
    pub fn subsets(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for v in &self.videos {
            if !out.iter().any(|s| s.eq_ignore_ascii_case(&v.subset)) {
                out.push(v.subset.clone());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Annotations, DatasetError> {
        Annotations::from_slice(s.as_bytes(), Path::new("vessel.json"))
    }

    #[test]
    fn reads_the_spec_example_and_selects_splits_case_insensitively() {
        let a = parse(
            r#"{"database": {
            "train12": {"subset": "train", "duration": 6.4, "fps": 15.0,
               "annotations": [{"label": "filling", "label_id": 0, "segment": [0.8, 2.6]},
                               {"label": "washout", "label_id": 1, "segment": [2.6, 5.9]}]},
            "val1": {"subset": "Validation", "fps": 15, "annotations": [{"label": "washout", "segment": [1, 2]}]}}}"#,
        )
        .unwrap();
        assert_eq!(a.videos.len(), 2);
        assert_eq!(
            a.videos[0].segments[1],
            Segment {
                start: 2.6,
                end: 5.9,
                label: "washout".into(),
                label_id: 1
            }
        );
        assert_eq!(a.split(&["validation".into()]).len(), 1);
        assert_eq!(a.split(&["VALIDATION".into()])[0].segments[0].label_id, 1);
        assert_eq!(a.videos[1].duration, None);
        assert_eq!(a.subsets(), vec!["train", "Validation"]);
    }

    #[test]
    fn bad_entries_name_file_and_video() {
        let e =
            parse(r#"{"database": {"v1": {"subset": "train", "annotations": [{"label_id": 0, "segment": [3, 1]}]}}}"#)
                .unwrap_err()
                .to_string();
        assert!(
            e.contains("vessel.json") && e.contains("'v1'") && e.contains("ends before"),
            "{e}"
        );
        let e = parse(r#"{"database": {"v2": {"annotations": []}}}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("'v2'") && e.contains("subset"), "{e}");
        let e = parse(r#"{"videos": {}}"#).unwrap_err().to_string();
        assert!(e.contains("database"), "{e}");
        let e = parse("{").unwrap_err().to_string();
        assert!(e.contains("not valid JSON"), "{e}");
        let e = parse(
            r#"{"database": {"v3": {"subset": "test", "annotations": [{"label": "other", "segment": [0, 1]}]}}}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("'other'"), "{e}");
    }
}
