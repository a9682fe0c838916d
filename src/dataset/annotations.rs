//! The ActivityNet-style annotation file (SPEC §2.1): the one reader of it, for training,
//! inference and scoring alike (`metrics::io` builds its ground truth from [`Annotations`]).
//!
//! Class ids come from `label_id`; a label given by name only takes the id of its
//! [`Class`] (SPEC §1), whatever order the file lists its labels in. A class name written
//! with another id, a name with two ids, or an id with two names is an error: each would
//! train or score some segments against the wrong class.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::DatasetError;
use super::class::Class;
use super::json::{self, EntryError};

pub use super::json::duplicate_key_in;

/// One annotated action segment, in seconds.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    pub start: f64,
    pub end: f64,
    /// The label name as written, or the class's name when the file gives an id only.
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
    /// Label name → class id, for every name the file writes (as spelled there).
    pub label_ids: BTreeMap<String, usize>,
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

/// The one name ↔ id map of a file, built annotation by annotation in file order.
#[derive(Default)]
struct LabelMap {
    /// Name as written → id.
    ids: BTreeMap<String, usize>,
    /// Id → the first name written for it.
    names: BTreeMap<usize, String>,
}

impl LabelMap {
    /// The class id of an annotation with `name` and/or `id` at `entry`.
    fn resolve(&mut self, name: Option<&str>, id: Option<usize>, entry: &str) -> Result<usize, EntryError> {
        let q = crate::text::quoted;
        let class = name.and_then(Class::from_name);
        let id = match (id, name, class) {
            (Some(id), Some(n), Some(c)) if id != c.id() => {
                return Err(EntryError::new(
                    entry,
                    format!(
                        "label {} has label_id {id}, but {c} is class {} (SPEC §1)",
                        q(n),
                        c.id()
                    ),
                ));
            }
            (Some(id), _, _) => id,
            (None, Some(_), Some(c)) => c.id(),
            (None, Some(n), None) => {
                return Err(EntryError::new(
                    entry,
                    format!("label {} has no label_id and is not one of {:?}", q(n), Class::names()),
                ));
            }
            (None, None, _) => return Err(EntryError::new(entry, "has neither \"label\" nor \"label_id\"")),
        };
        let Some(name) = name else { return Ok(id) };
        if let Some(&prev) = self.ids.get(name)
            && prev != id
        {
            return Err(EntryError::new(
                entry,
                format!("label {} has label_id {id} here but {prev} elsewhere", q(name)),
            ));
        }
        match self.names.get(&id) {
            Some(prev) if !prev.eq_ignore_ascii_case(name) => {
                return Err(EntryError::new(
                    entry,
                    format!("label_id {id} is {} here but {} elsewhere", q(name), q(prev)),
                ));
            }
            Some(_) => {}
            None => {
                self.names.insert(id, name.to_string());
            }
        }
        self.ids.insert(name.to_string(), id);
        Ok(id)
    }
}

/// An entry error inside video `video` of `path`.
fn entry_error(path: &Path, video: &str, e: EntryError) -> DatasetError {
    let message = if e.entry.is_empty() {
        e.msg
    } else {
        format!("{}: {}", e.entry, e.msg)
    };
    DatasetError::Entry {
        path: path.to_path_buf(),
        video: crate::text::escaped(video, crate::text::MAX_QUOTED),
        message,
    }
}

/// An optional positive finite number under `key` of a video (missing or null: `None`).
fn positive(v: &serde_json::Map<String, Value>, key: &str) -> Result<Option<f64>, EntryError> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(x) => {
            let f = json::number(x, key)?;
            if f <= 0.0 {
                return Err(EntryError::new(key, format!("must be positive, found {f}")));
            }
            Ok(Some(f))
        }
    }
}

/// One video's entry; ids resolved through `labels`.
fn parse_video(id: &str, raw: &Value, labels: &mut LabelMap) -> Result<Video, EntryError> {
    // The id names the feature file `<feat_folder>/<id><ext>`: one path component only.
    check_video_id(id).map_err(|why| EntryError::new("", why))?;
    let v = json::object(raw, "")?;
    let subset = match v.get("subset") {
        Some(Value::String(s)) => s.clone(),
        Some(other) => {
            return Err(EntryError::new(
                "subset",
                format!("expected a string, found {}", json::kind(other)),
            ));
        }
        None => return Err(EntryError::new("", "missing \"subset\"")),
    };
    let duration = positive(v, "duration")?;
    let fps = positive(v, "fps")?;
    let mut segments = Vec::new();
    if let Some(list) = v.get("annotations").filter(|a| !a.is_null()) {
        for (i, a) in json::array(list, "annotations")?.iter().enumerate() {
            let ae = format!("annotations[{i}]");
            let a = json::object(a, &ae)?;
            let [start, end] = json::segment(
                a.get("segment")
                    .ok_or_else(|| EntryError::new(&ae, "missing \"segment\""))?,
                &format!("{ae}.segment"),
            )?;
            let name = match a.get("label") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(s.as_str()),
                Some(other) => {
                    return Err(EntryError::new(
                        &format!("{ae}.label"),
                        format!("expected a name, found {}", json::kind(other)),
                    ));
                }
            };
            let given = match a.get("label_id") {
                None | Some(Value::Null) => None,
                Some(x) => Some(json::index(x, &format!("{ae}.label_id"))?),
            };
            let label_id = labels.resolve(name, given, &ae)?;
            segments.push(Segment {
                start,
                end,
                label: name.map_or_else(|| Class::name_of(label_id), str::to_string),
                label_id,
            });
        }
    }
    Ok(Video {
        id: id.to_string(),
        subset,
        duration,
        fps,
        segments,
    })
}

impl Annotations {
    /// Read and check an annotation file (at most [`crate::fsio::limits::ANNOTATIONS`] bytes).
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
        let text = std::str::from_utf8(bytes).map_err(|e| {
            fmt(format!(
                "not valid JSON: not UTF-8 text (invalid byte at offset {})",
                e.valid_up_to()
            ))
        })?;
        let text = json::prepare(text);
        let root: Value = serde_json::from_str(&text).map_err(|e| fmt(format!("not valid JSON: {e}")))?;
        let root = json::object(&root, "top level").map_err(|e| fmt(format!("{}: {}", e.entry, e.msg)))?;
        let db = root.get("database").ok_or_else(|| {
            fmt(
                "no \"database\" key: not an annotation file in the layout {\"database\": {video: {...}}} (SPEC §2.1)"
                    .into(),
            )
        })?;
        let db = json::object(db, "database").map_err(|e| fmt(format!("{}: {}", e.entry, e.msg)))?;
        // serde_json keeps the last of two equal keys: two entries for one video would be
        // merged silently, so find them in the text first.
        if let Some(id) = duplicate_key_in(text.as_bytes(), "database") {
            return Err(fmt(format!(
                "video {} appears twice in \"database\"",
                crate::text::quoted(&id)
            )));
        }
        let mut labels = LabelMap::default();
        let videos = db
            .iter()
            .map(|(id, raw)| parse_video(id, raw, &mut labels).map_err(|e| entry_error(path, id, e)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            path: path.to_path_buf(),
            videos,
            label_ids: labels.ids,
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

    fn labels(a: &Annotations) -> Vec<usize> {
        a.videos
            .iter()
            .flat_map(|v| v.segments.iter().map(|s| s.label_id))
            .collect()
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
        // Python's NaN token does not hide a duplicate.
        let e = parse(r#"{"database": {"v1": {"subset": "train", "fps": NaN}, "v1": {"subset": "test"}}}"#)
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
        let e = Annotations::from_slice(b"{\"database\": {\"v\xff\": {}}}", Path::new("vessel.json"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "vessel.json: not valid JSON: not UTF-8 text (invalid byte at offset 16)"
        );
    }

    #[test]
    fn reads_the_spec_example_and_selects_splits_case_insensitively() {
        let a = parse(
            r#"{"database": {
            "train12": {"subset": "train", "duration": 6.4, "fps": 15.0,
               "annotations": [{"label": "filling", "label_id": 0, "segment": [0.8, 2.6]},
                               {"label": "washout", "label_id": 1, "segment": [2.6, 5.9]}]},
            "val1": {"subset": "Validation", "fps": 15, "annotations": [{"label": "washout", "segment": [1, 2]}]},
            "t1": {"subset": "test", "annotations": null}}}"#,
        )
        .unwrap();
        assert_eq!(a.videos.len(), 3);
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
        assert_eq!(a.videos[1].fps, Some(15.0));
        assert!(a.videos[2].segments.is_empty());
        assert_eq!(a.subsets(), vec!["train", "Validation", "test"]);
        assert_eq!(
            a.label_ids,
            BTreeMap::from([("filling".to_string(), 0), ("washout".to_string(), 1)])
        );
    }

    /// Name-only labels take their class's id (SPEC §1), not the order in which the file
    /// first lists them: here washout comes first and must still be class 1.
    #[test]
    fn name_only_labels_listing_washout_first_keep_the_paper_ids() {
        let a = parse(
            r#"{"database": {
            "a": {"subset": "test", "annotations": [{"label": "washout", "segment": [3, 6]},
                                                    {"label": "filling", "segment": [1, 3]}]},
            "b": {"subset": "test", "annotations": [{"label": "Filling", "segment": [0, 2]},
                                                    {"label_id": 1, "segment": [2, 4]},
                                                    {"label": "x", "label_id": 4, "segment": [0, 1]}]}}}"#,
        )
        .unwrap();
        assert_eq!(labels(&a), vec![1, 0, 0, 1, 4]);
        let names: Vec<&str> = a.videos[1].segments.iter().map(|s| s.label.as_str()).collect();
        assert_eq!(names, ["Filling", "washout", "x"]);
        assert_eq!(
            a.label_ids,
            BTreeMap::from([
                ("Filling".to_string(), 0),
                ("filling".to_string(), 0),
                ("washout".to_string(), 1),
                ("x".to_string(), 4)
            ])
        );
    }

    #[test]
    fn bad_entries_name_file_video_and_key() {
        let cases = [
            (
                r#"{"database": {"a": {"subset": "test", "annotations": [{"label_id": 0, "segment": [3, 1]}]}}}"#,
                "vessel.json: video 'a': annotations[0].segment: end 1 is before start 3",
            ),
            (
                r#"{"database": {"a": {"subset": "test", "annotations": [{"label_id": 0, "segment": [0, Infinity]}]}}}"#,
                "vessel.json: video 'a': annotations[0].segment[1]: non-finite value Infinity",
            ),
            (
                r#"{"database": {"a": {"subset": "test", "annotations": [{"segment": [0, 1]}]}}}"#,
                "vessel.json: video 'a': annotations[0]: has neither \"label\" nor \"label_id\"",
            ),
            (
                r#"{"database": {"a": {"subset": "test", "annotations": [{"label_id": -1, "segment": [0, 1]}]}}}"#,
                "vessel.json: video 'a': annotations[0].label_id: expected a non-negative integer class id, found -1",
            ),
            (
                r#"{"database": {"a": {"subset": "test", "annotations": [{"label": 3, "segment": [0, 1]}]}}}"#,
                "vessel.json: video 'a': annotations[0].label: expected a name, found a number",
            ),
            (
                r#"{"database": {"v2": {"annotations": []}}}"#,
                "vessel.json: video 'v2': missing \"subset\"",
            ),
            (
                r#"{"database": {"v2": {"subset": 1}}}"#,
                "vessel.json: video 'v2': subset: expected a string, found a number",
            ),
            (
                r#"{"database": {"a": {"subset": "test", "fps": NaN}}}"#,
                "vessel.json: video 'a': fps: non-finite value NaN",
            ),
            (
                r#"{"database": {"a": {"subset": "test", "duration": 0}}}"#,
                "vessel.json: video 'a': duration: must be positive, found 0",
            ),
            (
                r#"{"database": {"a": {"subset": "test", "fps": -15}}}"#,
                "vessel.json: video 'a': fps: must be positive, found -15",
            ),
            (
                r#"{"database": {"a": [1]}}"#,
                "vessel.json: video 'a': expected an object, found a list",
            ),
            (
                r#"{"database": {"v3": {"subset": "test", "annotations": [{"label": "other", "segment": [0, 1]}]}}}"#,
                "vessel.json: video 'v3': annotations[0]: label 'other' has no label_id and is not one of [\"filling\", \"washout\"]",
            ),
            (
                r#"{"database": {"a": {"subset": "test", "annotations": [{"label": "p", "label_id": 2, "segment": [0, 1]}]},
                                 "b": {"subset": "test", "annotations": [{"label": "p", "label_id": 3, "segment": [0, 1]}]}}}"#,
                "vessel.json: video 'b': annotations[0]: label 'p' has label_id 3 here but 2 elsewhere",
            ),
            (
                r#"{"database": {"a": {"subset": "test", "annotations": [{"label": "washout", "segment": [0, 1]},
                                                                         {"label": "venous", "label_id": 1, "segment": [0, 1]}]}}}"#,
                "vessel.json: video 'a': annotations[1]: label_id 1 is 'venous' here but 'washout' elsewhere",
            ),
            (
                r#"{"database": {"a": {"subset": "test", "annotations": [{"label": "washout", "label_id": 0, "segment": [0, 1]}]}}}"#,
                "vessel.json: video 'a': annotations[0]: label 'washout' has label_id 0, but washout is class 1 (SPEC §1)",
            ),
            (
                r#"{"results": {}}"#,
                "vessel.json: no \"database\" key: not an annotation file",
            ),
            (
                r#"{"database": []}"#,
                "vessel.json: database: expected an object, found a list",
            ),
            ("[]", "vessel.json: top level: expected an object, found a list"),
            ("{", "vessel.json: not valid JSON"),
        ];
        for (text, want) in cases {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.starts_with(want), "{e} — want {want}");
            assert!(!e.contains('\n'), "{e}");
        }
    }
}
