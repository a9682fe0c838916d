//! The evaluation summary: keyframe deviation histogram and per-tIoU mAP bars.

use std::path::Path;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::{
    Area, DrawResult, KEYFRAME_COLORS, KEYFRAMES, PlotError, class_color, input_error, render_png, text, tick,
};

/// Size of [`plot_summary`]'s picture in pixels (width, height).
pub const SUMMARY_SIZE: (u32, u32) = (1200, 500);

/// Histogram bins at most; the bin width (whole frames) grows to respect it.
const MAX_BINS: usize = 25;

/// What [`plot_summary`] draws for one evaluated split, in plain data.
#[derive(Debug, Clone, Default)]
pub struct SummaryPlot {
    /// Title, e.g. the split and checkpoint evaluated.
    pub title: String,
    /// tIoU thresholds of the detection table.
    pub tious: Vec<f64>,
    /// mAP per threshold under the paper protocol, as a fraction in [0, 1] (drawn in %,
    /// bars clamped to 0–100 % and labelled with the value); empty when not computed, else
    /// as long as `tious`.
    pub map_paper: Vec<f64>,
    /// mAP per threshold under the full protocol, as a fraction; empty or as long as `tious`.
    pub map_full: Vec<f64>,
    /// Per video, `|pred − GT|` of start, apex and end in frames
    /// (`VideoKeyframes::deviations`); non-finite entries are skipped.
    pub deviations: Vec<[f64; 3]>,
}

/// Draw `p` as a [`SUMMARY_SIZE`] PNG at `path` (written atomically): on the left a
/// histogram of keyframe deviations stacked by keyframe, with AD (mean over videos of the
/// mean of the three deviations); on the right mAP per tIoU and their average, in percent,
/// one bar per protocol.
///
/// Errors name `path`: mAP lists whose length differs from `tious`, a drawing failure, or a
/// failed write.
pub fn plot_summary(p: &SummaryPlot, path: &Path) -> Result<(), PlotError> {
    for (name, m) in [("map_paper", &p.map_paper), ("map_full", &p.map_full)] {
        if !m.is_empty() && m.len() != p.tious.len() {
            return Err(input_error(
                path,
                format!("{name} has {} values for {} tIoU thresholds", m.len(), p.tious.len()),
            ));
        }
    }
    render_png(path, SUMMARY_SIZE, |root| draw(p, root))
}

fn draw(p: &SummaryPlot, root: &Area) -> DrawResult {
    let root = root.margin(8, 8, 12, 12);
    let (head, body) = root.split_vertically(34);
    let title = if p.title.is_empty() {
        "Evaluation summary"
    } else {
        p.title.as_str()
    };
    head.draw_text(title, &text(22.0), (0, 2))?;
    let (w, _) = body.dim_in_pixel();
    let (left, right) = body.split_horizontally(w / 2);
    draw_histogram(&left.margin(0, 0, 0, 16), &p.deviations)?;
    draw_bars(&right.margin(0, 0, 16, 0), p)?;
    Ok(())
}

/// Mean of the finite values, if any.
fn mean(v: impl IntoIterator<Item = f64>) -> Option<f64> {
    let (s, n) = v
        .into_iter()
        .filter(|x| x.is_finite())
        .fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    (n > 0).then(|| s / n as f64)
}

/// Counts per bin and keyframe, the bin width in frames, and AD over the complete videos.
struct Histogram {
    counts: Vec<[usize; 3]>,
    width: f64,
    ad: Option<f64>,
    n_videos: usize,
    means: [Option<f64>; 3],
}

fn histogram(dev: &[[f64; 3]]) -> Histogram {
    let finite = |k: usize| dev.iter().map(move |d| d[k].abs()).filter(|v| v.is_finite());
    let max = (0..3).flat_map(finite).fold(0f64, f64::max);
    // Whole-frame bins: deviations are integers in practice.
    let width = ((max + 1.0) / MAX_BINS as f64).ceil().max(1.0);
    let n_bins = (max / width).floor() as usize + 1;
    let mut counts = vec![[0usize; 3]; n_bins];
    for d in dev {
        for (k, v) in d.iter().map(|v| v.abs()).enumerate() {
            if v.is_finite() {
                counts[((v / width).floor() as usize).min(n_bins - 1)][k] += 1;
            }
        }
    }
    let complete: Vec<f64> = dev
        .iter()
        .filter(|d| d.iter().all(|v| v.is_finite()))
        .map(|d| d.iter().map(|v| v.abs()).sum::<f64>() / 3.0)
        .collect();
    Histogram {
        counts,
        width,
        ad: mean(complete.iter().copied()),
        n_videos: complete.len(),
        means: [0, 1, 2].map(|k| mean(finite(k))),
    }
}

fn draw_histogram(area: &Area, dev: &[[f64; 3]]) -> DrawResult {
    let hist = histogram(dev);
    let caption = match hist.ad {
        Some(ad) => format!("Keyframe deviation: AD = {ad:.2} frames ({} videos)", hist.n_videos),
        None => "Keyframe deviation".to_string(),
    };
    let top = hist.counts.iter().map(|c| c.iter().sum::<usize>()).max().unwrap_or(0);
    let x1 = hist.counts.len() as f64 * hist.width;
    let y1 = (top as f64 * 1.15).max(1.0);
    let mut chart = ChartBuilder::on(area)
        .caption(caption, text(17.0))
        .margin(6)
        .x_label_area_size(42)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..x1, 0f64..y1)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(12)
        .y_labels(8)
        .x_desc(if hist.width == 1.0 {
            "|pred − GT| (frames)".to_string()
        } else {
            format!("|pred − GT| (frames, bins of {})", hist.width)
        })
        .y_desc("keyframes")
        .x_label_formatter(&tick)
        .y_label_formatter(&tick)
        .max_light_lines(4)
        .label_style(text(13.0))
        .axis_desc_style(text(14.0))
        .light_line_style(RGBColor(240, 240, 240))
        .bold_line_style(RGBColor(215, 215, 215))
        .draw()?;
    if top == 0 {
        chart.draw_series([Text::new(
            "no keyframe deviations (no ground truth)",
            (x1 / 2.0, y1 / 2.0),
            text(15.0).pos(Pos::new(HPos::Center, VPos::Center)),
        )])?;
        return Ok(());
    }
    let gap = hist.width * 0.08;
    for k in 0..3 {
        let color = KEYFRAME_COLORS[k];
        let bars = hist.counts.iter().enumerate().filter(|(_, c)| c[k] > 0).map(|(b, c)| {
            let base = c[..k].iter().sum::<usize>() as f64;
            let x = b as f64 * hist.width;
            Rectangle::new(
                [(x + gap, base), (x + hist.width - gap, base + c[k] as f64)],
                color.mix(0.8).filled(),
            )
        });
        let label = match hist.means[k] {
            Some(m) => format!("{} (mean {m:.2})", KEYFRAMES[k]),
            None => KEYFRAMES[k].to_string(),
        };
        chart
            .draw_series(bars)?
            .label(label)
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 16, y + 6)], color.mix(0.8).filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font(text(13.0))
        .background_style(WHITE.mix(0.9))
        .border_style(RGBColor(180, 180, 180))
        .draw()?;
    Ok(())
}

fn draw_bars(area: &Area, p: &SummaryPlot) -> DrawResult {
    let protocols: Vec<(&str, &[f64])> = [("paper protocol", &p.map_paper), ("full protocol", &p.map_full)]
        .into_iter()
        .filter(|(_, m)| !m.is_empty())
        .map(|(n, m)| (n, m.as_slice()))
        .collect();
    // One group per threshold, then the average over thresholds.
    let groups = if protocols.is_empty() { 0 } else { p.tious.len() + 1 };
    let values: Vec<Vec<Option<f64>>> = protocols
        .iter()
        .map(|(_, m)| {
            let mut v: Vec<Option<f64>> = m.iter().map(|x| x.is_finite().then_some(100.0 * x)).collect();
            v.push(mean(m.iter().copied()).map(|x| 100.0 * x));
            v
        })
        .collect();
    let top = values.iter().flatten().flatten().fold(0f64, |a, &b| a.max(b));
    let y1 = ((top * 1.15 / 10.0).ceil() * 10.0).clamp(10.0, 110.0);
    let x0 = -0.6;
    let x1 = groups.max(1) as f64 - 0.4;
    let tious = p.tious.clone();
    let fmt_x = move |v: &f64| {
        let i = v.round();
        if (v - i).abs() > 1e-6 || i < 0.0 {
            return String::new();
        }
        match tious.get(i as usize) {
            Some(t) => format!("{t}"),
            None if i as usize == tious.len() => "avg".to_string(),
            None => String::new(),
        }
    };
    let mut chart = ChartBuilder::on(area)
        .caption("Detection mAP per tIoU (%)", text(17.0))
        .margin(6)
        .x_label_area_size(42)
        .y_label_area_size(56)
        .build_cartesian_2d(x0..x1, 0f64..y1)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(groups.max(1))
        .x_label_formatter(&fmt_x)
        .y_labels(8)
        .x_desc("tIoU threshold")
        .y_desc("mAP (%)")
        .y_label_formatter(&tick)
        .max_light_lines(4)
        .label_style(text(13.0))
        .axis_desc_style(text(14.0))
        .light_line_style(RGBColor(240, 240, 240))
        .bold_line_style(RGBColor(215, 215, 215))
        .draw()?;
    if groups == 0 {
        chart.draw_series([Text::new(
            "no detection metrics",
            ((x0 + x1) / 2.0, y1 / 2.0),
            text(15.0).pos(Pos::new(HPos::Center, VPos::Center)),
        )])?;
        return Ok(());
    }
    let n = protocols.len() as f64;
    let bar = 0.8 / n;
    for (j, ((name, _), vals)) in protocols.iter().zip(&values).enumerate() {
        let color = class_color(j);
        let left = |i: usize| i as f64 - 0.4 + j as f64 * bar;
        let bars = vals.iter().enumerate().filter_map(|(i, v)| {
            v.map(|v| {
                Rectangle::new(
                    [(left(i) + 0.02, 0.0), (left(i) + bar - 0.02, v.clamp(0.0, 100.0))],
                    color.filled(),
                )
            })
        });
        chart
            .draw_series(bars)?
            .label(*name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 16, y + 6)], color.filled()));
        let labels = vals.iter().enumerate().filter_map(|(i, v)| {
            v.map(|v| {
                Text::new(
                    format!("{v:.1}"),
                    (left(i) + bar / 2.0, v.clamp(0.0, 100.0)),
                    text(11.0).pos(Pos::new(HPos::Center, VPos::Bottom)),
                )
            })
        });
        chart.draw_series(labels)?;
    }
    // The average group is not a threshold: set it apart.
    let sep = groups as f64 - 1.5;
    chart.draw_series(DashedLineSeries::new(
        [(sep, 0.0), (sep, y1)],
        5,
        4,
        RGBColor(150, 150, 150).stroke_width(1),
    ))?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font(text(13.0))
        .background_style(WHITE.mix(0.9))
        .border_style(RGBColor(180, 180, 180))
        .draw()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{decode, unwritable, write_doc_example};
    use super::*;

    fn example() -> SummaryPlot {
        // Deviations of 40 made-up videos: mostly small, a few misses.
        let deviations = (0..40u64)
            .map(|i| {
                let h = |s: u64| ((i * 2654435761 + s * 40503) % 1000) as f64 / 1000.0;
                let d = |s: u64, scale: f64| (h(s).powi(3) * scale).round();
                [d(1, 18.0), d(2, 9.0), d(3, 30.0)]
            })
            .collect();
        SummaryPlot {
            title: "test split · checkpoint epoch 35".into(),
            tious: vec![0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7],
            map_paper: vec![0.962, 0.941, 0.903, 0.851, 0.774, 0.652, 0.488],
            map_full: vec![0.915, 0.887, 0.842, 0.770, 0.681, 0.553, 0.401],
            deviations,
        }
    }

    #[test]
    fn histogram_counts_and_ad() {
        let h = histogram(&[[0.0, 1.0, 2.0], [3.0, f64::NAN, 1.0], [-1.0, 1.0, 4.0]]);
        // max 4 → 1-frame bins 0..=4.
        assert_eq!(h.width, 1.0);
        assert_eq!(h.counts, vec![[1, 0, 0], [1, 2, 1], [0, 0, 1], [1, 0, 0], [0, 0, 1]]);
        // Complete videos: (0+1+2)/3 = 1 and (1+1+4)/3 = 2.
        assert_eq!(h.ad, Some(1.5));
        assert_eq!(h.n_videos, 2);
        assert_eq!(h.means, [Some(4.0 / 3.0), Some(1.0), Some(7.0 / 3.0)]);
        // Wide deviations get wider bins, no more than MAX_BINS.
        let h = histogram(&[[0.0, 100.0, 49.0]]);
        assert_eq!(h.width, 5.0);
        assert!(h.counts.len() <= MAX_BINS);
        assert_eq!(h.counts[20], [0, 1, 0]);
        assert_eq!(h.counts[9], [0, 0, 1]);
    }

    #[test]
    fn writes_example_png() {
        let p = example();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.png");
        plot_summary(&p, &path).unwrap();
        let (w, h, colors) = decode(&path);
        assert_eq!((w, h), SUMMARY_SIZE);
        assert!(colors > 10, "only {colors} colours");
        write_doc_example("example_summary.png", SUMMARY_SIZE, |doc| plot_summary(&p, doc));
    }

    #[test]
    fn empty_and_partial_inputs_plot() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.png");
        plot_summary(&SummaryPlot::default(), &path).unwrap();
        let (w, h, colors) = decode(&path);
        assert_eq!((w, h), SUMMARY_SIZE);
        assert!(colors > 2);
        let mut p = example();
        p.map_full.clear();
        p.map_paper[2] = f64::NAN;
        p.deviations[0][1] = f64::INFINITY;
        p.map_paper[3] = 1e12; // out of range: drawn clamped, not a panic
        p.map_paper[4] = -3.0;
        plot_summary(&p, &path).unwrap();
        assert_eq!(decode(&path).0, SUMMARY_SIZE.0);
    }

    #[test]
    fn mismatched_lengths_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.png");
        let mut p = example();
        p.map_full.pop();
        let e = plot_summary(&p, &path).unwrap_err();
        assert!(matches!(e, PlotError::Input { .. }));
        assert!(
            e.to_string().contains("bad.png") && e.to_string().contains("map_full has 6"),
            "{e}"
        );
    }

    #[test]
    fn unwritable_path_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = unwritable(dir.path());
        let e = plot_summary(&example(), &path).unwrap_err();
        assert!(matches!(e, PlotError::Write(_)));
        assert!(e.to_string().contains(&path.display().to_string()), "{e}");
    }
}
