//! Detection files in either layout of SPEC §7.1, read against a ground truth (whose label
//! names a detection may use).

use std::path::Path;

use serde_json::{Map, Value};

use super::{GroundTruth, ReadError};
use crate::dataset::json::{self, EntryError, kind};
use crate::metrics::anet::Detection;

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

fn parse_json(text: &str, path: &Path) -> Result<Value, ReadError> {
    serde_json::from_str(text).map_err(|e| ReadError::Json {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })
}

/// Builds entry errors for one file from [`json`]'s typed getters.
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

    fn wrap<T>(&self, r: Result<T, EntryError>) -> Result<T, ReadError> {
        r.map_err(|e| self.err(&e.entry, e.msg))
    }

    fn object<'v>(&self, v: &'v Value, entry: &str) -> Result<&'v Map<String, Value>, ReadError> {
        self.wrap(json::object(v, entry))
    }

    fn array<'v>(&self, v: &'v Value, entry: &str) -> Result<&'v Vec<Value>, ReadError> {
        self.wrap(json::array(v, entry))
    }

    fn number(&self, v: &Value, entry: &str) -> Result<f64, ReadError> {
        self.wrap(json::number(v, entry))
    }

    fn index(&self, v: &Value, entry: &str) -> Result<usize, ReadError> {
        self.wrap(json::index(v, entry))
    }

    fn segment(&self, v: &Value, entry: &str) -> Result<[f64; 2], ReadError> {
        self.wrap(json::segment(v, entry))
    }
}

/// Read a detection file in either layout of SPEC §7.1. Labels may be names (looked up in
/// `gt`; an unknown name is an error) or class ids (`label_id`, or an integer `label`);
/// `label_id` wins when both are given. The score is `score` or `scores` in either layout.
pub fn read_predictions(path: &Path, gt: &GroundTruth) -> Result<Predictions, ReadError> {
    parse_predictions(
        &crate::fsio::read_text_bounded(path, crate::fsio::limits::PREDICTIONS)?,
        path,
        gt,
    )
}

/// [`read_predictions`] from text already in memory; `path` is only used in messages.
pub fn parse_predictions(text: &str, path: &Path, gt: &GroundTruth) -> Result<Predictions, ReadError> {
    let ctx = Ctx { path };
    let text = json::prepare(text);
    let root = parse_json(&text, path)?;
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
    if let Some(vid) = json::duplicate_key_in(text.as_bytes(), key) {
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
                    let closest = gt
                        .known_names()
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
    use crate::metrics::io::read_ground_truth;
    use crate::metrics::io::test_support::{GT, write};

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
}
