//! Synthetic XCA vessel maps (SPEC §2.5) in the paper's layout (SPEC §2.1).
//!
//! Each video is a left-coronary-like vessel tree ([`tree`]) that fills from the catheter
//! tip and washes out ([`flow`]), beating and breathing ([`motion`]), seen through the
//! eyes of an imperfect segmentation network ([`noise`]). Frames are rendered at `fps`
//! on a `side`×`side` grid; every `feat_stride` frames one row is written, the mean of a
//! clip of `num_frames` clean frames (SVS-Net segments a clip of 4 frames into one map)
//! with the segmentation artefacts of that clip's output on top.
//!
//! Rows and seconds: a run of F frames has `duration = F / fps` seconds and
//! `T = ⌊(F − num_frames)/feat_stride⌋ + 1` rows (⌊F/4⌋ for the paper's 4/4), so
//! `duration·fps − T·feat_stride ∈ [0, feat_stride)`. Keyframes are frames; the
//! annotation stores `frame / fps` seconds rounded up to 4 decimals (see [`frame_to_seconds`]),
//! so that `⌊fps·seconds⌋` gives the frame back exactly (SPEC §7.2).
//!
//! Determinism: video i of a split uses its own ChaCha8 stream
//! (`seed`, stream = split·2³² + i), so the same seed gives byte-identical files and
//! adding videos to a split never changes the earlier ones.

mod flow;
mod motion;
mod noise;
mod preview;
mod sample;
mod tree;
mod writer;

use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

pub use flow::Keyframes;
pub use preview::write_preview;

use crate::fsio::WriteError;

/// Default seed of `xca synth` (the demo dataset).
pub const DEFAULT_SEED: u64 = 7;

/// What to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthConfig {
    /// Number of videos per split.
    pub train: usize,
    pub val: usize,
    pub test: usize,
    pub seed: u64,
    /// Frame rate written to the annotations.
    pub fps: f64,
    /// Frames between rows, and frames summarised by one row (SPEC §2.1).
    pub feat_stride: usize,
    pub num_frames: usize,
    /// Side of the square vessel map (64 → 4096 values per row).
    pub side: usize,
    /// Run length range in frames (inclusive).
    pub min_frames: usize,
    pub max_frames: usize,
}

impl Default for SynthConfig {
    /// 192/30/60 videos of 60–240 frames at 15 fps, 64×64, stride 4, clips of 4: the demo
    /// dataset. 60 test videos as in the paper's test split (its CI constant is for
    /// 3N = 180 deviations); 192 training videos because, at the demo's fixed budget of
    /// ~860 training steps, more distinct videos and fewer epochs generalise better than
    /// 48 videos seen 34 times (README, Demo results).
    fn default() -> Self {
        SynthConfig {
            train: 192,
            val: 30,
            test: 60,
            seed: DEFAULT_SEED,
            fps: 15.0,
            feat_stride: 4,
            num_frames: 4,
            side: 64,
            min_frames: 60,
            max_frames: 240,
        }
    }
}

/// Errors of the generator.
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    #[error("invalid synth settings: {0}")]
    Config(String),
    #[error("no video {} in this dataset (ids look like {example})", crate::text::quoted(id))]
    UnknownVideo { id: String, example: String },
    #[error("cannot draw preview {}: {msg}", path.display())]
    Preview { path: PathBuf, msg: String },
    #[error(transparent)]
    Write(#[from] WriteError),
}

/// A dataset split, in the order videos are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Subset {
    Train,
    Validation,
    Test,
}

impl Subset {
    pub const ALL: [Subset; 3] = [Subset::Train, Subset::Validation, Subset::Test];

    /// The `subset` value in the annotations.
    pub fn name(self) -> &'static str {
        match self {
            Subset::Train => "train",
            Subset::Validation => "validation",
            Subset::Test => "test",
        }
    }

    /// Prefix of the video ids (`train01`, `val01`, `test01`).
    pub fn prefix(self) -> &'static str {
        match self {
            Subset::Train => "train",
            Subset::Validation => "val",
            Subset::Test => "test",
        }
    }

    fn stream(self) -> u64 {
        match self {
            Subset::Train => 0,
            Subset::Validation => 1,
            Subset::Test => 2,
        }
    }
}

/// One generated video, in memory.
#[derive(Debug, Clone)]
pub struct SynthVideo {
    pub id: String,
    pub subset: Subset,
    pub fps: f64,
    pub side: usize,
    pub feat_stride: usize,
    pub num_frames: usize,
    /// Ground truth in frames.
    pub key: Keyframes,
    /// Number of rows T.
    pub rows: usize,
    /// `[T, side·side]` row-major, values in [0, 1].
    pub data: Vec<f32>,
}

impl SynthVideo {
    /// Duration in seconds (`frames / fps`, see [`frame_to_seconds`]).
    pub fn duration(&self) -> f64 {
        frame_to_seconds(self.key.frames, self.fps)
    }

    /// Row `i` as a `side·side` slice.
    pub fn row(&self, i: usize) -> &[f32] {
        let n = self.side * self.side;
        &self.data[i * n..(i + 1) * n]
    }
}

/// Per-video line of the summary.
#[derive(Debug, Clone, Serialize)]
pub struct VideoSummary {
    pub id: String,
    pub subset: Subset,
    pub frames: usize,
    pub rows: usize,
    pub start: usize,
    pub apex: usize,
    pub end: usize,
}

/// What [`generate`] wrote.
#[derive(Debug, Clone, Serialize)]
pub struct SynthSummary {
    pub out: PathBuf,
    pub seed: u64,
    pub train: usize,
    pub val: usize,
    pub test: usize,
    pub min_rows: usize,
    pub max_rows: usize,
    pub total_rows: usize,
    pub videos: Vec<VideoSummary>,
}

/// Seconds of frame `frame` at `fps` as written to the annotations: `frame/fps` plus
/// at least a thousandth of a frame, rounded up to 4 decimals (frame 0 is 0.0). Then
/// `⌊fps·seconds⌋ == frame` holds with a margin, so it survives a JSON parser that is
/// an ulp off (serde_json without `float_roundtrip` is), and the numbers stay readable.
pub fn frame_to_seconds(frame: usize, fps: f64) -> f64 {
    if frame == 0 {
        return 0.0;
    }
    ((frame as f64 + 1e-3) / fps * 1e4).ceil() / 1e4
}

/// The most videos one `xca synth` writes.
pub const MAX_VIDEOS: usize = 100_000;

impl SynthConfig {
    /// An upper estimate of the dataset's size on disk, in bytes (every video as long as
    /// `max_frames` allows, float32 rows, plus the annotation file).
    pub fn estimated_bytes(&self) -> u64 {
        let videos = (self.train + self.val + self.test) as u64;
        let row = (self.side * self.side * 4) as u64;
        videos * (self.rows_for(self.max_frames) as u64 * row + 128 + 1024)
    }

    /// Check the settings; every later step relies on them.
    pub fn validate(&self) -> Result<(), SynthError> {
        let bad = |m: String| Err(SynthError::Config(m));
        let total = self.train.saturating_add(self.val).saturating_add(self.test);
        if total == 0 {
            return bad("at least one video is needed (train + val + test = 0)".into());
        }
        if total > MAX_VIDEOS {
            return bad(format!(
                "{total} videos is too many: at most {MAX_VIDEOS} (about 0.6 MB of disk each, 60 GB in all)"
            ));
        }
        if !(self.fps.is_finite() && self.fps > 0.0) {
            return bad(format!("fps must be positive, got {}", self.fps));
        }
        if self.feat_stride == 0 || self.num_frames == 0 {
            return bad("feat_stride and num_frames must be at least 1".into());
        }
        if !(8..=1024).contains(&self.side) {
            return bad(format!("side must be in 8..=1024, got {}", self.side));
        }
        if self.min_frames < 30 || self.min_frames > self.max_frames {
            return bad(format!(
                "frame range {}..={} is empty or too short (at least 30 frames)",
                self.min_frames, self.max_frames
            ));
        }
        if self.max_frames > 100_000 {
            return bad(format!("max_frames {} is unreasonably long", self.max_frames));
        }
        if self.min_frames < self.num_frames + 2 * self.feat_stride {
            return bad(format!(
                "runs of {} frames give fewer than 3 rows with feat_stride {} and num_frames {}",
                self.min_frames, self.feat_stride, self.num_frames
            ));
        }
        Ok(())
    }

    /// Rows of a run of `frames` frames.
    pub fn rows_for(&self, frames: usize) -> usize {
        (frames.saturating_sub(self.num_frames)) / self.feat_stride + 1
    }

    /// Every video to write, in order: (split, index within split, id).
    pub fn plan(&self) -> Vec<(Subset, usize, String)> {
        let mut out = Vec::new();
        for subset in Subset::ALL {
            let n = match subset {
                Subset::Train => self.train,
                Subset::Validation => self.val,
                Subset::Test => self.test,
            };
            let width = n.to_string().len().max(2);
            for i in 0..n {
                out.push((subset, i, format!("{}{:0width$}", subset.prefix(), i + 1)));
            }
        }
        out
    }

    /// Generate one video in memory. Deterministic in (seed, subset, index).
    pub fn video(&self, subset: Subset, index: usize, id: &str) -> SynthVideo {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_stream((subset.stream() << 32) | index as u64);

        let key = flow::draw_keyframes(&mut rng, self.min_frames, self.max_frames);
        let tree = tree::draw_tree(&mut rng);
        let catheter = tree::draw_catheter(&mut rng, &tree);
        let maps = tree::RefMaps::build(&tree, &catheter);
        let flow = flow::Flow::draw(&mut rng, key, tree.path_max);
        let motion = motion::Motion::draw(&mut rng, tree.centre);
        let rows = self.rows_for(key.frames);
        let confounders = noise::Confounders::draw(&mut rng, rows);

        let n = self.side * self.side;
        let scale = tree::CANVAS / self.side as f32;
        let mut clean = vec![0.0f32; n];
        let mut out = vec![0.0f32; n];
        let mut data = Vec::with_capacity(rows * n);
        let share = 1.0 / self.num_frames as f32;
        for row in 0..rows {
            clean.fill(0.0);
            for j in 0..self.num_frames {
                let frame = row * self.feat_stride + j;
                let t = (frame as f64 / self.fps) as f32;
                let phase = flow.phase(frame as f32);
                let warp = motion.at(t);
                for r in 0..self.side {
                    let y = (r as f32 + 0.5) * scale;
                    for c in 0..self.side {
                        let x = (c as f32 + 0.5) * scale;
                        let (sx, sy) = warp.source(x, y);
                        let mut vessel = 0.0;
                        let mut cath = 0.0;
                        for (i, w) in maps.taps(sx, sy) {
                            if w == 0.0 {
                                continue;
                            }
                            cath += w * maps.cath[i];
                            let occ = maps.occ[i];
                            if occ > 1e-3 {
                                vessel += w * occ * phase.response(maps.path[i], maps.rank[i]);
                            }
                        }
                        clean[r * self.side + c] += share * f32::max(vessel, cath);
                    }
                }
            }
            // False positives move with breathing at the clip's centre time.
            let t_mid = ((row * self.feat_stride) as f64 + 0.5 * self.num_frames as f64) / self.fps;
            let shift = motion.respiration(t_mid as f32);
            confounders.apply(&mut rng, &clean, self.side, row, shift, &mut out);
            data.extend_from_slice(&out);
        }
        SynthVideo {
            id: id.to_string(),
            subset,
            fps: self.fps,
            side: self.side,
            feat_stride: self.feat_stride,
            num_frames: self.num_frames,
            key,
            rows,
            data,
        }
    }

    /// Generate the video with id `id` (as written by [`generate`]).
    pub fn video_by_id(&self, id: &str) -> Result<SynthVideo, SynthError> {
        let plan = self.plan();
        let example = plan.first().map(|p| p.2.clone()).unwrap_or_default();
        let (subset, index, id) = plan
            .into_iter()
            .find(|p| p.2 == id)
            .ok_or_else(|| SynthError::UnknownVideo {
                id: id.to_string(),
                example,
            })?;
        Ok(self.video(subset, index, &id))
    }
}

/// Generate the dataset into `out` (SPEC §2.1 layout), atomically: it is built in a
/// temporary sibling folder and renamed into place when complete, replacing any
/// existing `out`. Callers that must not replace data check first (the CLI does).
pub fn generate(cfg: &SynthConfig, out: &Path, progress: bool) -> Result<SynthSummary, SynthError> {
    cfg.validate()?;
    let plan = cfg.plan();
    let bar = if progress {
        let b = indicatif::ProgressBar::new(plan.len() as u64);
        if let Ok(style) =
            indicatif::ProgressStyle::with_template("synth {bar:30} {pos}/{len} videos {msg} [{elapsed}]")
        {
            b.set_style(style);
        }
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut videos = Vec::with_capacity(plan.len());
    crate::fsio::build_dir_atomic(out, |dir| -> Result<(), SynthError> {
        let mut db = writer::Database::default();
        for (subset, index, id) in &plan {
            bar.set_message(id.clone());
            let v = cfg.video(*subset, *index, id);
            writer::write_npy(&dir.join("image").join(format!("{id}.npy")), &v)?;
            db.add(&v);
            videos.push(VideoSummary {
                id: v.id.clone(),
                subset: v.subset,
                frames: v.key.frames,
                rows: v.rows,
                start: v.key.start,
                apex: v.key.apex,
                end: v.key.end,
            });
            bar.inc(1);
        }
        db.write(&dir.join("annotations").join("vessel.json"))?;
        Ok(())
    })?;
    bar.finish_and_clear();
    let rows = videos.iter().map(|v| v.rows);
    Ok(SynthSummary {
        out: out.to_path_buf(),
        seed: cfg.seed,
        train: cfg.train,
        val: cfg.val,
        test: cfg.test,
        min_rows: rows.clone().min().unwrap_or(0),
        max_rows: rows.clone().max().unwrap_or(0),
        total_rows: rows.sum(),
        videos,
    })
}

#[cfg(test)]
mod tests;
