//! Reading ground-truth and detection files for scoring (SPEC §2.1, §7.1).
//!
//! Both readers are lenient about extra keys and strict about the values they use: every
//! error names the file and the entry (e.g. `results["v1"][3].score`). Python's
//! `json.dump` writes `NaN`/`Infinity` for non-finite floats; those are read too, so that
//! they can be reported as non-finite values of a named entry instead of a syntax error.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::anet::{Detection, GtSegment};

/// A ground-truth or prediction file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The file could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a regular file, too large, or not UTF-8.
    #[error(transparent)]
    Bounded(#[from] crate::fsio::ReadError),
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
        /// Where in the file, e.g. `database["v1"].annotations[0].segment`.
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
    /// Label name → class id, over the whole file.
    pub label_ids: HashMap<String, usize>,
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

    /// Class id of a label name, if the file has it.
    pub fn label_id(&self, name: &str) -> Option<usize> {
        self.label_ids.get(name).copied()
    }

    /// Label name of a class id, if the file names it.
    pub fn label_name(&self, id: usize) -> Option<&str> {
        self.label_ids.iter().find(|&(_, &v)| v == id).map(|(k, _)| k.as_str())
    }
}

/// Which layout a prediction file had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PredictionFormat {
    /// `{"results": {vid: [{"segment", "label" | "label_id", "score"}]}}`.
    ActivityNet,
    /// `{"database": {vid: [{"segment", "label_id", "scores"}]}}`.
    ActionFormer,
}

/// Detections read from a prediction file, in file order.
#[derive(Debug, Clone, PartialEq)]
pub struct Predictions {
    /// The layout found.
    pub format: PredictionFormat,
    /// All detections, videos and entries in file order.
    pub detections: Vec<Detection>,
}

/// Replace the bare tokens `NaN`, `Infinity` and `-Infinity` that Python's json module
/// writes (outside strings) by the strings `"NaN"`, `"Infinity"`, `"-Infinity"`.
fn quote_non_finite(text: &str) -> Cow<'_, str> {
    if !(text.contains("NaN") || text.contains("Infinity")) {
        return Cow::Borrowed(text);
    }
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len() + 16);
    let (mut i, mut last, mut in_str) = (0, 0, false);
    while i < b.len() {
        let c = b[i];
        if in_str {
            if c == b'\\' {
                i += 2;
                continue;
            }
            if c == b'"' {
                in_str = false;
            }
            i += 1;
            continue;
        }
        if c == b'"' {
            in_str = true;
            i += 1;
            continue;
        }
        let token = ["-Infinity", "Infinity", "NaN"]
            .into_iter()
            .find(|t| b[i..].starts_with(t.as_bytes()));
        if let Some(t) = token {
            out.push_str(&text[last..i]);
            out.push('"');
            out.push_str(t);
            out.push('"');
            i += t.len();
            last = i;
            continue;
        }
        i += 1;
    }
    out.push_str(&text[last..]);
    Cow::Owned(out)
}

fn read_text(path: &Path, limit: u64) -> Result<String, ReadError> {
    Ok(crate::fsio::read_text_bounded(path, limit)?)
}

fn parse_json(text: &str, path: &Path) -> Result<Value, ReadError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    serde_json::from_str(&quote_non_finite(text)).map_err(|e| ReadError::Json {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })
}

/// Helper that builds entry errors for one file.
struct Ctx<'a> {
    path: &'a Path,
}

impl Ctx<'_> {
    fn err(&self, entry: &str, msg: impl Into<String>) -> ReadError {
        ReadError::Entry {
            path: self.path.to_path_buf(),
            entry: entry.to_string(),
            msg: msg.into(),
        }
    }

    fn object<'v>(&self, v: &'v Value, entry: &str) -> Result<&'v Map<String, Value>, ReadError> {
        v.as_object()
            .ok_or_else(|| self.err(entry, format!("expected an object, found {}", kind(v))))
    }

    fn array<'v>(&self, v: &'v Value, entry: &str) -> Result<&'v Vec<Value>, ReadError> {
        v.as_array()
            .ok_or_else(|| self.err(entry, format!("expected a list, found {}", kind(v))))
    }

    /// A finite number (non-finite values, read from Python's NaN/Infinity, are errors).
    fn number(&self, v: &Value, entry: &str) -> Result<f64, ReadError> {
        match v {
            Value::Number(n) => n.as_f64().ok_or_else(|| self.err(entry, "number out of range")),
            Value::String(s) if matches!(s.as_str(), "NaN" | "Infinity" | "-Infinity") => {
                Err(self.err(entry, format!("non-finite value {s}")))
            }
            other => Err(self.err(entry, format!("expected a number, found {}", kind(other)))),
        }
    }

    /// A non-negative integer (integral floats like `1.0` accepted).
    fn index(&self, v: &Value, entry: &str) -> Result<usize, ReadError> {
        if let Some(u) = v.as_u64() {
            return Ok(u as usize);
        }
        match v.as_f64() {
            Some(f) if f >= 0.0 && f.fract() == 0.0 && f < 1e15 => Ok(f as usize),
            _ => Err(self.err(entry, format!("expected a non-negative integer class id, found {v}"))),
        }
    }

    /// `[start, end]`: two finite numbers with end ≥ start.
    fn segment(&self, v: &Value, entry: &str) -> Result<[f64; 2], ReadError> {
        let a = self.array(v, entry)?;
        if a.len() != 2 {
            return Err(self.err(entry, format!("expected [start, end], found {} values", a.len())));
        }
        let s = self.number(&a[0], &format!("{entry}[0]"))?;
        let e = self.number(&a[1], &format!("{entry}[1]"))?;
        if e < s {
            return Err(self.err(entry, format!("end {e} is before start {s}")));
        }
        Ok([s, e])
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Read a ground-truth file (SPEC §2.1): `{"database": {vid: {"subset", "duration"?,
/// "fps"?, "annotations": [{"label"?, "label_id"?, "segment"}]}}}`.
///
/// Class ids come from `label_id`; an annotation with only a `label` name takes the id
/// that name has elsewhere in the file, or else the next free id (in order of first
/// appearance). A name used with two ids, or an id with two names, is an error.
pub fn read_ground_truth(path: &Path) -> Result<GroundTruth, ReadError> {
    parse_ground_truth(&read_text(path, crate::fsio::limits::ANNOTATIONS)?, path)
}

/// [`read_ground_truth`] from text already in memory; `path` is only used in messages.
pub fn parse_ground_truth(text: &str, path: &Path) -> Result<GroundTruth, ReadError> {
    let ctx = Ctx { path };
    let root = parse_json(text, path)?;
    let root = ctx.object(&root, "top level")?;
    let db = root.get("database").ok_or_else(|| ReadError::Format {
        path: path.to_path_buf(),
        msg: "no \"database\" key: not a ground-truth file in the layout {\"database\": {video: {...}}}".into(),
    })?;
    let db = ctx.object(db, "database")?;
    if let Some(vid) = crate::dataset::annotations::duplicate_key_in(text.as_bytes(), "database") {
        return Err(ReadError::Format {
            path: path.to_path_buf(),
            msg: format!("video {} appears twice in \"database\"", crate::text::quoted(&vid)),
        });
    }

    // Pass 1: the values as written.
    struct RawAnn {
        entry: String,
        name: Option<String>,
        id: Option<usize>,
        segment: [f64; 2],
    }
    let mut raw: Vec<(GtVideo, Vec<RawAnn>)> = Vec::with_capacity(db.len());
    for (vid, v) in db {
        let entry = format!("database[{vid:?}]");
        let v = ctx.object(v, &entry)?;
        let subset = match v.get("subset") {
            Some(Value::String(s)) => s.clone(),
            Some(other) => {
                return Err(ctx.err(
                    &format!("{entry}.subset"),
                    format!("expected a string, found {}", kind(other)),
                ));
            }
            None => return Err(ctx.err(&entry, "missing \"subset\"")),
        };
        let opt_num = |key: &str| -> Result<Option<f64>, ReadError> {
            match v.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(x) => ctx.number(x, &format!("{entry}.{key}")).map(Some),
            }
        };
        let duration = opt_num("duration")?;
        let fps = opt_num("fps")?;
        if let Some(f) = fps
            && f <= 0.0
        {
            return Err(ctx.err(&format!("{entry}.fps"), format!("must be positive, found {f}")));
        }
        let mut anns = Vec::new();
        if let Some(list) = v.get("annotations").filter(|a| !a.is_null()) {
            for (i, a) in ctx.array(list, &format!("{entry}.annotations"))?.iter().enumerate() {
                let ae = format!("{entry}.annotations[{i}]");
                let a = ctx.object(a, &ae)?;
                let segment = ctx.segment(
                    a.get("segment").ok_or_else(|| ctx.err(&ae, "missing \"segment\""))?,
                    &format!("{ae}.segment"),
                )?;
                let name = match a.get("label") {
                    None | Some(Value::Null) => None,
                    Some(Value::String(s)) => Some(s.clone()),
                    Some(other) => {
                        return Err(ctx.err(
                            &format!("{ae}.label"),
                            format!("expected a name, found {}", kind(other)),
                        ));
                    }
                };
                let id = match a.get("label_id") {
                    None | Some(Value::Null) => None,
                    Some(x) => Some(ctx.index(x, &format!("{ae}.label_id"))?),
                };
                if name.is_none() && id.is_none() {
                    return Err(ctx.err(&ae, "has neither \"label\" nor \"label_id\""));
                }
                anns.push(RawAnn {
                    entry: ae,
                    name,
                    id,
                    segment,
                });
            }
        }
        raw.push((
            GtVideo {
                id: vid.clone(),
                subset,
                duration,
                fps,
                annotations: Vec::new(),
            },
            anns,
        ));
    }

    // Pass 2: one consistent name ↔ id map.
    let mut label_ids: HashMap<String, usize> = HashMap::new();
    let mut names_of: HashMap<usize, String> = HashMap::new();
    for (_, anns) in &raw {
        for a in anns {
            if let (Some(name), Some(id)) = (&a.name, a.id) {
                if let Some(&prev) = label_ids.get(name)
                    && prev != id
                {
                    return Err(ctx.err(
                        &a.entry,
                        format!("label {name:?} has label_id {id} here but {prev} elsewhere"),
                    ));
                }
                if let Some(prev) = names_of.get(&id)
                    && prev != name
                {
                    return Err(ctx.err(
                        &a.entry,
                        format!("label_id {id} is {name:?} here but {prev:?} elsewhere"),
                    ));
                }
                label_ids.insert(name.clone(), id);
                names_of.insert(id, name.clone());
            }
        }
    }
    let mut next_id = names_of
        .keys()
        .copied()
        .chain(raw.iter().flat_map(|(_, a)| a.iter().filter_map(|x| x.id)))
        .max()
        .map_or(0, |m| m + 1);
    let mut videos = Vec::with_capacity(raw.len());
    for (mut video, anns) in raw {
        for a in anns {
            // Pass 1 guarantees a name wherever the id is missing.
            let label = match a.id {
                Some(id) => id,
                None => *label_ids.entry(a.name.unwrap_or_default()).or_insert_with(|| {
                    next_id += 1;
                    next_id - 1
                }),
            };
            video.annotations.push(GtAnnotation {
                label,
                segment: a.segment,
            });
        }
        videos.push(video);
    }
    Ok(GroundTruth {
        path: path.to_path_buf(),
        videos,
        label_ids,
    })
}

/// Read a detection file in either layout of SPEC §7.1. Labels may be names (looked up in
/// `gt`; an unknown name is an error) or class ids (`label_id`, or an integer `label`);
/// `label_id` wins when both are given. The score is `score` or `scores` in either layout.
pub fn read_predictions(path: &Path, gt: &GroundTruth) -> Result<Predictions, ReadError> {
    parse_predictions(&read_text(path, crate::fsio::limits::PREDICTIONS)?, path, gt)
}

/// [`read_predictions`] from text already in memory; `path` is only used in messages.
pub fn parse_predictions(text: &str, path: &Path, gt: &GroundTruth) -> Result<Predictions, ReadError> {
    let ctx = Ctx { path };
    let root = parse_json(text, path)?;
    let root = ctx.object(&root, "top level")?;
    let (format, key, body) = if let Some(r) = root.get("results") {
        (PredictionFormat::ActivityNet, "results", ctx.object(r, "results")?)
    } else if let Some(db) = root.get("database") {
        let db = ctx.object(db, "database")?;
        if let Some((vid, v)) = db.iter().find(|(_, v)| !v.is_array()) {
            let hint = if v.get("annotations").is_some() {
                " (this looks like a ground-truth file)"
            } else {
                ""
            };
            return Err(ReadError::Format {
                path: path.to_path_buf(),
                msg: format!(
                    "database[{vid:?}] is {}, but the ActionFormer layout needs a list of detections per video{hint}",
                    kind(v)
                ),
            });
        }
        (PredictionFormat::ActionFormer, "database", db)
    } else {
        return Err(ReadError::Format {
            path: path.to_path_buf(),
            msg: "neither the ActivityNet layout {\"results\": {video: [...]}} nor the ActionFormer layout {\"database\": {video: [...]}}".into(),
        });
    };

    // Two lists for one video would be merged silently (the last one kept).
    if let Some(vid) = crate::dataset::annotations::duplicate_key_in(text.as_bytes(), key) {
        return Err(ReadError::Format {
            path: path.to_path_buf(),
            msg: format!("video {} appears twice in \"{key}\"", crate::text::quoted(&vid)),
        });
    }
    let mut detections = Vec::new();
    for (vid, list) in body {
        let ve = format!("{key}[{vid:?}]");
        for (i, det) in ctx.array(list, &ve)?.iter().enumerate() {
            let de = format!("{ve}[{i}]");
            let det = ctx.object(det, &de)?;
            let segment = ctx.segment(
                det.get("segment").ok_or_else(|| ctx.err(&de, "missing \"segment\""))?,
                &format!("{de}.segment"),
            )?;
            let label = match (
                det.get("label_id").filter(|x| !x.is_null()),
                det.get("label").filter(|x| !x.is_null()),
            ) {
                (Some(id), _) => ctx.index(id, &format!("{de}.label_id"))?,
                (None, Some(Value::String(name))) => gt.label_id(name).ok_or_else(|| {
                    let mut known: Vec<&str> = gt.label_ids.keys().map(String::as_str).collect();
                    known.sort_unstable();
                    let closest = known
                        .iter()
                        .map(|k| (strsim::levenshtein(k, name), *k))
                        .min()
                        .map(|(_, k)| format!("; did you mean {k:?}?"))
                        .unwrap_or_default();
                    ctx.err(
                        &format!("{de}.label"),
                        format!(
                            "label {name:?} is not in the ground truth {}{closest}",
                            gt.path.display()
                        ),
                    )
                })?,
                (None, Some(other)) => ctx.index(other, &format!("{de}.label"))?,
                (None, None) => return Err(ctx.err(&de, "has neither \"label\" nor \"label_id\"")),
            };
            let (own, other) = match format {
                PredictionFormat::ActivityNet => ("score", "scores"),
                PredictionFormat::ActionFormer => ("scores", "score"),
            };
            let (score_key, score_v) = match (det.get(own), det.get(other)) {
                (Some(v), _) => (own, v),
                (None, Some(v)) => (other, v),
                (None, None) => return Err(ctx.err(&de, format!("missing \"{own}\""))),
            };
            let score = ctx.number(score_v, &format!("{de}.{score_key}"))?;
            detections.push(Detection {
                video: vid.clone(),
                segment,
                label,
                score,
            });
        }
    }
    Ok(Predictions { format, detections })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    const GT: &str = r#"{"version": "x", "database": {
        "v1": {"subset": "Test", "duration": 6.4, "fps": 15.0, "extra": 1,
               "annotations": [{"label": "filling", "label_id": 0, "segment": [0.8, 2.6]},
                               {"label": "washout", "label_id": 1, "segment": [2.6, 5.9]}]},
        "v2": {"subset": "train", "annotations": [{"label": "washout", "segment": [1, 2]}]},
        "v3": {"subset": "test", "duration": 3, "annotations": []}}}"#;

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
        assert_eq!(gt.label_name(0), Some("filling"));
        let segs = gt.split_segments("TEST").unwrap();
        assert_eq!(segs.len(), 2);
        let e = gt.split_segments("validation").unwrap_err().to_string();
        assert!(
            e.contains("gt.json") && e.contains("\"validation\"") && e.contains("test, train"),
            "{e}"
        );
    }

    #[test]
    fn names_without_ids_get_fresh_ids() {
        let dir = tempfile::tempdir().unwrap();
        let text = r#"{"database": {"a": {"subset": "test", "annotations": [
            {"label": "x", "segment": [0, 1]}, {"label": "y", "label_id": 4, "segment": [0, 1]},
            {"label": "z", "segment": [0, 1]}, {"label": "x", "segment": [2, 3]}]}}}"#;
        let gt = read_ground_truth(&write(dir.path(), "gt.json", text)).unwrap();
        let labels: Vec<usize> = gt.videos[0].annotations.iter().map(|a| a.label).collect();
        assert_eq!(labels, vec![5, 4, 6, 5]);
    }

    #[test]
    fn ground_truth_errors_name_the_entry() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            (
                r#"{"database": {"a": {"subset": "test", "annotations": [{"label_id": 0, "segment": [3, 1]}]}}}"#,
                "database[\"a\"].annotations[0].segment: end 1 is before start 3",
            ),
            (
                r#"{"database": {"a": {"subset": "test", "annotations": [{"segment": [0, 1]}]}}}"#,
                "neither \"label\" nor \"label_id\"",
            ),
            (
                r#"{"database": {"a": {"annotations": []}}}"#,
                "database[\"a\"]: missing \"subset\"",
            ),
            (
                r#"{"database": {"a": {"subset": "test", "annotations": [{"label": "p", "label_id": 0, "segment": [0, 1]}, {"label": "p", "label_id": 1, "segment": [0, 1]}]}}}"#,
                "annotations[1]: label \"p\" has label_id 1 here but 0 elsewhere",
            ),
            (
                r#"{"database": {"a": {"subset": "test", "fps": NaN}}}"#,
                "database[\"a\"].fps: non-finite value NaN",
            ),
            (r#"{"results": {}}"#, "no \"database\" key"),
            ("{not json", "not valid JSON"),
        ];
        for (text, want) in cases {
            let e = read_ground_truth(&write(dir.path(), "g.json", text))
                .unwrap_err()
                .to_string();
            assert!(
                e.starts_with(&format!("{}: ", dir.path().join("g.json").display())),
                "{e}"
            );
            assert!(e.contains(want), "{e} — want {want}");
        }
    }

    #[test]
    fn reads_both_prediction_layouts() {
        let dir = tempfile::tempdir().unwrap();
        let gt = read_ground_truth(&write(dir.path(), "gt.json", GT)).unwrap();
        let anet = r#"{"version": "1.3", "results": {"v1": [
            {"segment": [0.8, 2.6], "label": "filling", "score": 0.9},
            {"segment": [2.6, 5.9], "label_id": 1, "score": 0.8},
            {"segment": [1, 2], "label": 1, "scores": 0.7}]}, "external_data": {}}"#;
        let p = read_predictions(&write(dir.path(), "a.json", anet), &gt).unwrap();
        assert_eq!(p.format, PredictionFormat::ActivityNet);
        let labels: Vec<usize> = p.detections.iter().map(|d| d.label).collect();
        assert_eq!(labels, vec![0, 1, 1]);
        assert_eq!(p.detections[2].score, 0.7);
        let af = r#"{"database": {"v1": [{"segment": [0.8, 2.6], "label_id": 0, "scores": 0.9}], "v9": []}}"#;
        let p = read_predictions(&write(dir.path(), "b.json", af), &gt).unwrap();
        assert_eq!(p.format, PredictionFormat::ActionFormer);
        assert_eq!(
            p.detections,
            vec![Detection {
                video: "v1".into(),
                segment: [0.8, 2.6],
                label: 0,
                score: 0.9
            }]
        );
    }

    #[test]
    fn prediction_errors_name_the_entry() {
        let dir = tempfile::tempdir().unwrap();
        let gt = read_ground_truth(&write(dir.path(), "gt.json", GT)).unwrap();
        let cases = [
            (
                r#"{"results": {"v1": [{"segment": [0, 1], "label": "filing", "score": 0.5}]}}"#,
                "results[\"v1\"][0].label: label \"filing\" is not in the ground truth",
                Some("did you mean \"filling\"?"),
            ),
            (
                r#"{"results": {"v1": [{"segment": [0, 1], "label_id": 0, "score": NaN}]}}"#,
                "results[\"v1\"][0].score: non-finite value NaN",
                None,
            ),
            (
                r#"{"database": {"v1": [{"segment": [0, 1], "label_id": 0, "scores": -Infinity}]}}"#,
                "database[\"v1\"][0].scores: non-finite value -Infinity",
                None,
            ),
            (
                r#"{"results": {"v1": [{"segment": [2, 1], "label_id": 0, "score": 0.5}]}}"#,
                "results[\"v1\"][0].segment: end 1 is before start 2",
                None,
            ),
            (
                r#"{"results": {"v1": [{"segment": [0, 1], "label_id": 0}]}}"#,
                "results[\"v1\"][0]: missing \"score\"",
                None,
            ),
            (r#"{"preds": []}"#, "neither the ActivityNet layout", None),
            (GT, "looks like a ground-truth file", None),
        ];
        for (text, want, extra) in cases {
            let e = read_predictions(&write(dir.path(), "p.json", text), &gt)
                .unwrap_err()
                .to_string();
            assert!(e.contains("p.json: ") && e.contains(want), "{e} — want {want}");
            if let Some(x) = extra {
                assert!(e.contains(x), "{e}");
            }
            assert!(!e.contains('\n'));
        }
    }

    #[test]
    fn non_finite_tokens_are_quoted_outside_strings_only() {
        let t = r#"{"a NaN": NaN, "b": [Infinity, -Infinity], "c": "x\"NaN"}"#;
        assert_eq!(
            quote_non_finite(t),
            r#"{"a NaN": "NaN", "b": ["Infinity", "-Infinity"], "c": "x\"NaN"}"#
        );
    }
}
