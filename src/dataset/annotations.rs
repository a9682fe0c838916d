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

/// Why `id` cannot name a feature file inside the feature folder, if it cannot: empty, `.`
/// or `..`, a path separator, or a control character (`../../x`, `/abs/x` would read
/// outside the folder).
pub fn check_video_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("an empty video id".into());
    }
    if id == "." || id == ".." || id.contains(['/', '\\']) || id.chars().any(char::is_control) {
        return Err(
            "the id is not a plain file name (no '/', '\\', '..' or control characters); it names the feature file in feat_folder"
                .into(),
        );
    }
    Ok(())
}

/// The first key that occurs twice in the JSON object under the top-level key `field`
/// (e.g. a video listed twice in `database`). `None` when there is none, and also when the
/// text is not such JSON: the caller's parser reports that.
pub fn duplicate_key_in(bytes: &[u8], field: &str) -> Option<String> {
    use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};
    use std::collections::HashSet;
    use std::fmt;

    /// Visits the root object, descending only into `field`.
    struct Root<'a>(&'a str);
    /// Visits `field`'s object and returns its first repeated key.
    struct Keys;

    impl<'de> Visitor<'de> for Keys {
        type Value = Option<String>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut seen = HashSet::new();
            let mut dup = None;
            while let Some(k) = map.next_key::<String>()? {
                map.next_value::<IgnoredAny>()?;
                if dup.is_none() && !seen.insert(k.clone()) {
                    dup = Some(k);
                }
            }
            Ok(dup)
        }
    }
    impl<'de> DeserializeSeed<'de> for Keys {
        type Value = Option<String>;
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_map(self)
        }
    }
    impl<'de> Visitor<'de> for Root<'_> {
        type Value = Option<String>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut dup = None;
            while let Some(k) = map.next_key::<String>()? {
                if k == self.0 && dup.is_none() {
                    dup = map.next_value_seed(Keys)?;
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            Ok(dup)
        }
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    serde::Deserializer::deserialize_map(&mut de, Root(field))
        .ok()
        .flatten()
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
        let bytes = crate::fsio::read_bounded(path, crate::fsio::limits::ANNOTATIONS)?;
        Self::from_slice(&bytes, path)
    }

    /// Parse annotation JSON; `path` is used in messages.
    pub fn from_slice(bytes: &[u8], path: &Path) -> Result<Self, DatasetError> {
        let fmt = |message: String| DatasetError::Format {
            path: path.to_path_buf(),
            message,
        };
        // Editors on Windows start UTF-8 files with a byte-order mark; JSON has no place for it.
        let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
        let root: Value = serde_json::from_slice(bytes).map_err(|e| fmt(format!("not valid JSON: {e}")))?;
        // serde_json keeps the last of two equal keys: two entries for one video would be
        // merged silently, so find them in the text first.
        if let Some(id) = duplicate_key_in(bytes, "database") {
            return Err(fmt(format!(
                "video {} appears twice in \"database\"",
                crate::text::quoted(&id)
            )));
        }
        let db = root
            .get("database")
            .and_then(Value::as_object)
            .ok_or_else(|| fmt("has no \"database\" mapping of videos (ActivityNet layout, SPEC §2.1)".into()))?;
        let mut videos = Vec::with_capacity(db.len());
        for (id, raw) in db {
            let entry = |message: String| DatasetError::Entry {
                path: path.to_path_buf(),
                video: crate::text::escaped(id, crate::text::MAX_QUOTED),
                message,
            };
            // The id names the feature file `<feat_folder>/<id><ext>`: one path component only.
            if let Err(why) = check_video_id(id) {
                return Err(entry(why));
            }
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
                                "annotation {i}: label {} has no label_id and is not one of {CLASS_NAMES:?}",
                                crate::text::quoted(name)
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
    fn ids_that_leave_the_feature_folder_duplicates_and_a_bom() {
        for id in ["../../x", "/abs/x", "a/b", "a\\b", "..", ".", "", "a\nb"] {
            let text = format!(
                r#"{{"database": {{{}: {{"subset": "train", "annotations": []}}}}}}"#,
                serde_json::to_string(id).unwrap()
            );
            let e = parse(&text).unwrap_err().to_string();
            assert!(e.contains("vessel.json") && e.contains("id"), "{id:?}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
        let e =
            parse(r#"{"database": {"v1": {"subset": "train"}, "v2": {"subset": "test"}, "v1": {"subset": "test"}}}"#)
                .unwrap_err()
                .to_string();
        assert!(e.contains("'v1' appears twice"), "{e}");
        // Equal keys in different videos' objects are no duplicates.
        assert!(
            parse(r#"{"version": 1, "database": {"v1": {"subset": "train"}, "v2": {"subset": "train"}}, "x": {"v1": 1, "v1": 2}}"#)
                .is_ok()
        );
        let with_bom = "\u{feff}{\"database\": {\"v1\": {\"subset\": \"train\"}}}";
        assert_eq!(parse(with_bom).unwrap().videos.len(), 1);
        assert_eq!(duplicate_key_in(b"[1, 2]", "database"), None);
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
