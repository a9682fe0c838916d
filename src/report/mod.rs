//! Pictures of a run (issue 8): per-video keyframe plots, the evaluation summary and the
//! training curves, drawn with plotters into an in-memory RGB buffer, encoded as PNG and
//! written atomically.
//!
//! Everything here takes plain Rust data (no model, no tensors), so `predict`, `eval` and
//! `train` can call it with whatever they already hold. Text uses DejaVu Sans bundled in
//! the binary (`assets/fonts/DejaVuSans.ttf`, Bitstream Vera license, see
//! `assets/fonts/DejaVuSans-LICENSE.txt`): no system font library is needed.
//!
//! Each function writes a PNG of a fixed size ([`VIDEO_SIZE`], [`SUMMARY_SIZE`],
//! [`CURVES_SIZE`]), draws placeholders ("no detections", "no validation yet") for empty
//! inputs and skips non-finite values. The examples `docs/example_{video,summary,curves}.png`
//! come from the unit tests' made-up data: `XCA_UPDATE_DOCS=1 cargo test --lib report`
//! regenerates them, plain `cargo test` checks them.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::{FontStyle, RGBColor};

use crate::fsio::{WriteError, write_atomic};

mod curves;
mod summary;
mod video;

pub use curves::{CURVES_SIZE, CurvePoint, ValPoint, plot_curves};
pub use summary::{SUMMARY_SIZE, SummaryPlot, plot_summary};
pub use video::{VIDEO_SIZE, VideoPlot, plot_video};

/// The font family name every plot asks for.
pub(crate) const FONT: &str = "sans-serif";

static FONT_BYTES: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");

/// Register the bundled DejaVu Sans as plotters' `"sans-serif"` (once per process).
/// Returns whether the font is usable; every plot function calls it first.
pub fn ensure_font() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| plotters::style::register_font(FONT, FontStyle::Normal, FONT_BYTES).is_ok())
}

/// A plot that could not be produced, naming the destination.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// The data handed in cannot be drawn (inconsistent lengths, invalid scale).
    #[error("cannot plot {}: {msg}", path.display())]
    Input { path: PathBuf, msg: String },
    /// plotters or the PNG encoder failed.
    #[error("cannot draw {}: {msg}", path.display())]
    Draw { path: PathBuf, msg: String },
    /// The PNG could not be written.
    #[error(transparent)]
    Write(#[from] WriteError),
}

/// What drawing closures return; converted to [`PlotError::Draw`] with the path.
pub(crate) type DrawResult = Result<(), Box<dyn std::error::Error>>;

/// The drawing area every plot renders into.
pub(crate) type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

pub(crate) fn input_error(path: &Path, msg: impl Into<String>) -> PlotError {
    PlotError::Input {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

/// Render `draw` on a white `size` canvas, encode it as PNG and write it atomically to `path`.
pub(crate) fn render_png(
    path: &Path,
    size: (u32, u32),
    draw: impl FnOnce(&Area) -> DrawResult,
) -> Result<(), PlotError> {
    let draw_err = |msg: String| PlotError::Draw {
        path: path.to_path_buf(),
        msg,
    };
    if !ensure_font() {
        return Err(draw_err("the bundled font DejaVuSans.ttf is not a valid font".into()));
    }
    let (w, h) = size;
    let mut rgb = vec![255u8; w as usize * h as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| draw_err(e.to_string()))?;
        draw(&root).map_err(|e| draw_err(e.to_string()))?;
        root.present().map_err(|e| draw_err(e.to_string()))?;
    }
    let mut png = Vec::new();
    {
        use image::ImageEncoder;
        use image::codecs::png::{CompressionType, FilterType, PngEncoder};
        // Best compression: flat plot colours shrink well, and the cost is milliseconds.
        PngEncoder::new_with_quality(&mut png, CompressionType::Best, FilterType::Adaptive)
            .write_image(&rgb, w, h, image::ColorType::Rgb8)
            .map_err(|e| draw_err(format!("PNG encoding failed: {e}")))?;
    }
    write_atomic(path, &png)?;
    Ok(())
}

/// A text style of the bundled font.
pub(crate) fn text(size: f64) -> TextStyle<'static> {
    (FONT, size).into_font().color(&BLACK)
}

/// Axis tick label: whole numbers without decimals, others with at most three.
pub(crate) fn tick(v: &f64) -> String {
    if (v - v.round()).abs() < 1e-9 {
        format!("{:.0}", v.round() + 0.0)
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').to_string()
    }
}

/// Class colours (matplotlib's tab10, which reads well on white): filling, washout, …
pub(crate) fn class_color(i: usize) -> RGBColor {
    const TAB10: [RGBColor; 10] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(127, 127, 127),
        RGBColor(188, 189, 34),
        RGBColor(23, 190, 207),
    ];
    TAB10[i % TAB10.len()]
}

/// Keyframe names, in the order of every `[start, apex, end]` triple.
pub(crate) const KEYFRAMES: [&str; 3] = ["start", "apex", "end"];

/// Keyframe colours, distinct from the first class colours: start, apex, end.
pub(crate) const KEYFRAME_COLORS: [RGBColor; 3] = [RGBColor(0, 150, 90), RGBColor(200, 0, 40), RGBColor(120, 50, 170)];

/// `[lo, hi]` of the finite values, or `None` when there are none.
pub(crate) fn finite_range(values: impl IntoIterator<Item = f64>) -> Option<(f64, f64)> {
    values
        .into_iter()
        .filter(|v| v.is_finite())
        .fold(None, |acc, v| match acc {
            None => Some((v, v)),
            Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
        })
}

/// Split a sequence of optional points into runs of consecutive finite points, so a curve
/// with a gap (a non-finite value) is drawn as separate pieces instead of bridging it.
pub(crate) fn finite_runs(points: impl IntoIterator<Item = (f64, f64)>) -> Vec<Vec<(f64, f64)>> {
    let mut runs = vec![Vec::new()];
    for (x, y) in points {
        if x.is_finite() && y.is_finite() {
            if let Some(r) = runs.last_mut() {
                r.push((x, y));
            }
        } else if runs.last().is_some_and(|r| !r.is_empty()) {
            runs.push(Vec::new());
        }
    }
    runs.retain(|r| !r.is_empty());
    runs
}

#[cfg(test)]
pub(crate) mod test_util {
    use std::path::Path;

    /// Decode `path` and return (width, height, number of distinct colours, seen up to 64).
    pub fn decode(path: &Path) -> (u32, u32, usize) {
        let img = image::open(path).expect("a decodable PNG").to_rgb8();
        let mut colors = std::collections::HashSet::new();
        for p in img.pixels() {
            colors.insert(p.0);
            if colors.len() >= 64 {
                break;
            }
        }
        (img.width(), img.height(), colors.len())
    }

    /// A path that cannot be written: a file standing where its parent folder should be.
    pub fn unwritable(dir: &Path) -> std::path::PathBuf {
        let blocker = dir.join("blocker");
        std::fs::write(&blocker, b"a file, not a folder").unwrap();
        blocker.join("plot.png")
    }

    /// The committed example `docs/<name>`: regenerated by `plot` when `XCA_UPDATE_DOCS=1`
    /// (`XCA_UPDATE_DOCS=1 cargo test --lib report`), and in any case checked to be a
    /// valid PNG of `size` under 250 KB.
    pub fn write_doc_example(name: &str, size: (u32, u32), plot: impl FnOnce(&Path) -> Result<(), super::PlotError>) {
        let doc = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs").join(name);
        if std::env::var_os("XCA_UPDATE_DOCS").is_some_and(|v| v == "1") {
            plot(&doc).unwrap();
        }
        let (w, h, colors) = decode(&doc);
        assert_eq!((w, h), size, "{name}");
        assert!(colors > 10, "{name}");
        assert!(std::fs::metadata(&doc).unwrap().len() < 250_000, "{name} too large");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn font_registers() {
        assert!(ensure_font());
        assert!(ensure_font());
    }

    #[test]
    fn finite_runs_split_at_gaps() {
        let runs = finite_runs(vec![
            (0.0, 1.0),
            (1.0, f64::NAN),
            (2.0, 2.0),
            (3.0, 3.0),
            (f64::INFINITY, 0.0),
        ]);
        assert_eq!(runs, vec![vec![(0.0, 1.0)], vec![(2.0, 2.0), (3.0, 3.0)]]);
        assert!(finite_runs(vec![(f64::NAN, 0.0)]).is_empty());
    }

    #[test]
    fn ticks_are_short() {
        assert_eq!(tick(&20.0), "20");
        assert_eq!(tick(&-0.0), "0");
        assert_eq!(tick(&0.25), "0.25");
        assert_eq!(tick(&0.1), "0.1");
        assert_eq!(tick(&1.0000000001), "1");
    }

    #[test]
    fn finite_range_skips_nan() {
        assert_eq!(
            finite_range(vec![f64::NAN, 3.0, -1.0, f64::INFINITY]),
            Some((-1.0, 3.0))
        );
        assert_eq!(finite_range(Vec::<f64>::new()), None);
    }
}
