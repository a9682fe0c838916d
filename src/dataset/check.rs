//! Validation of the dataset a config points at (what `xca check` reports): every problem of
//! every video listed at once, plus per-split counts, T and duration statistics.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use super::{DatasetError, Features};
use crate::config::Config;

/// Rows may disagree with duration·fps/feat_stride by this much (clip rounding).
pub const ROW_TOLERANCE: f64 = 2.0;

/// Counts and ranges of one split (a `subset` of the annotation file, lower-cased).
#[derive(Debug, Clone, PartialEq)]
pub struct SplitSummary {
    /// The subset's name, lower-cased.
    pub name: String,
    pub videos: usize,
    pub segments: usize,
    /// Smallest, median (upper median for an even count) and largest row count T over the
    /// feature files that could be read; all 0 when none could.
    pub rows_min: usize,
    pub rows_median: usize,
    pub rows_max: usize,
    /// Shortest and longest duration in seconds, over readable videos with a duration and an fps.
    pub durations: Option<(f64, f64)>,
}

impl fmt::Display for SplitSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "  {:<12} {:>4} videos, {:>4} segments, T {}–{} (median {}), duration {}",
            self.name,
            self.videos,
            self.segments,
            self.rows_min,
            self.rows_max,
            self.rows_median,
            match self.durations {
                None => "n/a".to_string(),
                Some((a, b)) => format!("{a:.1}–{b:.1} s"),
            }
        )
    }
}

/// Everything [`check`] found.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckReport {
    /// The annotation file read.
    pub json: PathBuf,
    /// Videos listed in it.
    pub videos: usize,
    /// One entry per subset present, by name.
    pub splits: Vec<SplitSummary>,
    /// One line per problem (each names the file and, where there is one, the video).
    pub problems: Vec<String>,
}

impl CheckReport {
    /// The summary as printed: the file and its video count, then one line per split.
    pub fn summary_lines(&self) -> Vec<String> {
        let mut out = vec![format!("{}: {} videos", self.json.display(), self.videos)];
        out.extend(self.splits.iter().map(ToString::to_string));
        out
    }
}

#[derive(Default)]
struct SplitStats {
    videos: usize,
    rows: Vec<usize>,
    durations: Vec<f64>,
    segments: usize,
}

/// Validate the dataset of `cfg`: per-split counts, T and duration statistics, every
/// feature file's dtype and shape, NaN/Inf, segments outside the video, labels not below
/// `num_classes`, missing feature files, rows that disagree with duration·fps/feat_stride
/// by more than [`ROW_TOLERANCE`], and splits of the config without videos.
///
/// Only an unreadable annotation file is an error; everything else is listed in
/// [`CheckReport::problems`]. `on_video(id, total)` is called after each video, with the
/// number of videos listed (for a progress bar).
pub fn check(cfg: &Config, mut on_video: impl FnMut(&str, usize)) -> Result<CheckReport, DatasetError> {
    let ann = super::Annotations::load(&cfg.dataset.json_file)?;
    let json = ann.path.display().to_string();
    let mut problems = Vec::new();
    let mut stats: BTreeMap<String, SplitStats> = BTreeMap::new();
    let stride = cfg.dataset.feat_stride as f64;
    for v in &ann.videos {
        let st = stats.entry(v.subset.to_lowercase()).or_default();
        st.videos += 1;
        st.segments += v.segments.len();
        let fps = match super::video_fps(cfg, v, &ann.path) {
            Ok(f) => Some(f),
            Err(e) => {
                problems.push(e.to_string());
                None
            }
        };
        for (i, s) in v.segments.iter().enumerate() {
            if s.label_id >= cfg.dataset.num_classes {
                problems.push(format!(
                    "{json}: video '{}': annotation {i}: label_id {} ({}) is not below num_classes {}",
                    v.id,
                    s.label_id,
                    crate::text::quoted(&s.label),
                    cfg.dataset.num_classes
                ));
            }
            if s.start < 0.0 || v.duration.is_some_and(|d| s.end > d + 1e-6) {
                problems.push(format!(
                    "{json}: video '{}': annotation {i}: segment [{}, {}] lies outside the video [0, {}]",
                    v.id,
                    s.start,
                    s.end,
                    v.duration.map(|d| d.to_string()).unwrap_or_else(|| "?".into())
                ));
            }
        }
        let path = super::feature_path(cfg, &v.id);
        match Features::load(&path, cfg.dataset.input_dim) {
            Err(DatasetError::Bounded(crate::fsio::ReadError::Io { source, .. }))
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                problems.push(format!("{}: missing feature file for video '{}'", path.display(), v.id));
            }
            Err(e) => problems.push(e.to_string()),
            Ok(f) => {
                let bad = f.data.iter().filter(|x| !x.is_finite()).count();
                if bad > 0 {
                    let first = f.first_non_finite().unwrap_or(0) / f.dim.max(1);
                    problems.push(format!(
                        "{}: {bad} non-finite values (NaN/Inf), first in row {first}",
                        path.display()
                    ));
                }
                if f.rows == 0 {
                    problems.push(format!("{}: has no rows", path.display()));
                }
                st.rows.push(f.rows);
                if let (Some(d), Some(fps)) = (v.duration, fps) {
                    st.durations.push(d);
                    let expected = d * fps / stride;
                    if (f.rows as f64 - expected).abs() > ROW_TOLERANCE {
                        problems.push(format!(
                            "{}: {} rows but duration {d} s × {fps} fps / feat_stride {} = {expected:.1} rows \
                             (a row is a feature step, not a frame; check feat_stride)",
                            path.display(),
                            f.rows,
                            cfg.dataset.feat_stride
                        ));
                    }
                }
            }
        }
        on_video(&v.id, ann.videos.len());
    }
    for split in cfg.train_split.iter().chain(&cfg.val_split).chain(&cfg.test_split) {
        if !stats.contains_key(&split.to_lowercase()) {
            problems.push(format!("{json}: the config's split '{split}' has no videos"));
        }
    }
    let splits = stats.into_iter().map(|(name, s)| summarise(name, s)).collect();
    Ok(CheckReport {
        json: ann.path.clone(),
        videos: ann.videos.len(),
        splits,
        problems,
    })
}

fn summarise(name: String, s: SplitStats) -> SplitSummary {
    let mut rows = s.rows;
    rows.sort_unstable();
    let durations = (!s.durations.is_empty()).then(|| {
        s.durations
            .iter()
            .fold((f64::INFINITY, 0.0f64), |(a, b), &d| (a.min(d), b.max(d)))
    });
    SplitSummary {
        name,
        videos: s.videos,
        segments: s.segments,
        rows_min: rows.first().copied().unwrap_or(0),
        rows_median: rows.get(rows.len() / 2).copied().unwrap_or(0),
        rows_max: rows.last().copied().unwrap_or(0),
        durations,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::dataset::features::to_npy_bytes;

    /// A config over `dir/ann.json` and `dir/feats/`, 4-wide features, fps 10, stride 4
    /// (so 10 s of video is 25 rows).
    fn config(dir: &Path) -> Config {
        let yaml = format!(
            "dataset: {{json_file: {d}/ann.json, feat_folder: {d}/feats, input_dim: 4, default_fps: 10, max_seq_len: 32}}\n\
             model: {{backbone_arch: [2, 1, 2], regression_range: [[0, 4], [4, 8], [8, 10000]]}}\n",
            d = dir.display()
        );
        Config::from_yaml_str(&yaml, &dir.join("c.yaml")).unwrap().config
    }

    fn write_feats(dir: &Path, id: &str, rows: usize, data: Option<Vec<f32>>) {
        std::fs::create_dir_all(dir.join("feats")).unwrap();
        let data = data.unwrap_or_else(|| vec![0.5; rows * 4]);
        std::fs::write(
            dir.join(format!("feats/{id}.npy")),
            to_npy_bytes(rows, 4, &data).unwrap(),
        )
        .unwrap();
    }

    fn video(subset: &str, duration: f64, segs: &[(f64, f64, usize)]) -> serde_json::Value {
        let anns: Vec<_> = segs
            .iter()
            .map(|&(a, b, l)| {
                let label = ["filling", "washout"].get(l).copied().unwrap_or("other");
                serde_json::json!({"segment": [a, b], "label": label, "label_id": l})
            })
            .collect();
        serde_json::json!({"subset": subset, "duration": duration, "annotations": anns})
    }

    fn write_ann(dir: &Path, db: serde_json::Value) {
        std::fs::write(
            dir.join("ann.json"),
            serde_json::to_string(&serde_json::json!({"database": db})).unwrap(),
        )
        .unwrap();
    }

    #[test]
    fn a_clean_dataset_has_no_problems_and_exact_statistics() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write_ann(
            d,
            serde_json::json!({
                "a": video("train", 10.0, &[(1.0, 4.0, 0), (4.0, 9.0, 1)]),
                "b": video("Train", 8.0, &[(0.5, 3.0, 0)]),
                "c": video("train", 12.0, &[]),
                "v": video("validation", 6.0, &[(1.0, 2.0, 1)]),
                "t": video("test", 4.0, &[(1.0, 2.0, 0), (2.0, 3.0, 1)]),
            }),
        );
        // duration·10/4 rows, give or take one (within the tolerance of 2).
        for (id, rows) in [("a", 25), ("b", 21), ("c", 29), ("v", 15), ("t", 10)] {
            write_feats(d, id, rows, None);
        }
        let mut seen = Vec::new();
        let r = check(&config(d), |id, n| seen.push((id.to_string(), n))).unwrap();
        assert_eq!(r.problems, Vec::<String>::new());
        assert_eq!(seen, ["a", "b", "c", "v", "t"].map(|id| (id.to_string(), 5)));
        assert_eq!(r.videos, 5);
        let train = SplitSummary {
            name: "train".into(),
            videos: 3,
            segments: 3,
            rows_min: 21,
            rows_median: 25,
            rows_max: 29,
            durations: Some((8.0, 12.0)),
        };
        assert_eq!(r.splits.len(), 3);
        // By name: test, train, validation.
        assert_eq!(r.splits[1], train);
        assert_eq!(
            (r.splits[0].name.as_str(), r.splits[0].rows_median, r.splits[0].segments),
            ("test", 10, 2)
        );
        assert_eq!(r.splits[2].durations, Some((6.0, 6.0)));
        let lines = r.summary_lines();
        assert_eq!(lines[0], format!("{}: 5 videos", d.join("ann.json").display()));
        assert_eq!(
            lines[2],
            "  train           3 videos,    3 segments, T 21–29 (median 25), duration 8.0–12.0 s"
        );
    }

    #[test]
    fn every_problem_is_listed_once_with_its_file_and_video() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write_ann(
            d,
            serde_json::json!({
                // label 2 is not below num_classes 2; the second segment ends after the video
                "a": video("train", 10.0, &[(1.0, 4.0, 2), (4.0, 10.5, 1)]),
                // no feature file
                "b": video("train", 8.0, &[]),
                // a NaN in row 3
                "c": video("train", 4.0, &[]),
                // 10 s at 10 fps, stride 4 is 25 rows, not 40
                "v": video("validation", 10.0, &[]),
            }),
        );
        write_feats(d, "a", 25, None);
        let mut nan = vec![0.0; 10 * 4];
        nan[3 * 4 + 1] = f32::NAN;
        nan[7 * 4] = f32::INFINITY;
        write_feats(d, "c", 10, Some(nan));
        write_feats(d, "v", 40, None);
        let r = check(&config(d), |_, _| {}).unwrap();
        let json = d.join("ann.json").display().to_string();
        let feats = d.join("feats");
        assert_eq!(
            r.problems,
            [
                format!("{json}: video 'a': annotation 0: label_id 2 ('other') is not below num_classes 2"),
                format!("{json}: video 'a': annotation 1: segment [4, 10.5] lies outside the video [0, 10]"),
                format!("{}: missing feature file for video 'b'", feats.join("b.npy").display()),
                format!(
                    "{}: 2 non-finite values (NaN/Inf), first in row 3",
                    feats.join("c.npy").display()
                ),
                format!(
                    "{}: 40 rows but duration 10 s × 10 fps / feat_stride 4 = 25.0 rows \
                     (a row is a feature step, not a frame; check feat_stride)",
                    feats.join("v.npy").display()
                ),
                format!("{json}: the config's split 'test' has no videos"),
            ]
        );
        // The unreadable video counts but adds no rows.
        let train = &r.splits[0];
        assert_eq!((train.videos, train.rows_min, train.rows_max), (3, 10, 25));
    }

    #[test]
    fn a_missing_annotation_file_is_the_only_error() {
        let dir = tempfile::tempdir().unwrap();
        let e = check(&config(dir.path()), |_, _| {}).unwrap_err().to_string();
        assert!(e.contains("ann.json"), "{e}");
    }
}
