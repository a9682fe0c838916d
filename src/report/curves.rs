//! The training curves: losses by component, learning rate, validation mAP.

use std::path::Path;

use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::{Area, DrawResult, PlotError, class_color, finite_range, finite_runs, render_png, text, tick};

/// Size of [`plot_curves`]'s picture in pixels (width, height).
pub const CURVES_SIZE: (u32, u32) = (1200, 800);

/// One logged training step.
#[derive(Debug, Clone, PartialEq)]
pub struct CurvePoint {
    /// Optimiser step (kept for the caller's logs; the x axis uses `epoch`).
    pub step: u64,
    /// Fractional epoch at this step (`epoch + batch / batches_per_epoch`).
    pub epoch: f64,
    /// Learning rate at this step.
    pub lr: f64,
    /// Loss components (name, value), e.g. `("cls", …), ("reg", …), ("final", …)`; a name
    /// keeps its colour across points, non-finite values are skipped.
    pub losses: Vec<(String, f64)>,
}

/// Validation result of a saved epoch.
#[derive(Debug, Clone, PartialEq)]
pub struct ValPoint {
    /// Epoch evaluated (the number of completed epochs).
    pub epoch: usize,
    /// Average mAP over the tIoU thresholds, as a fraction in [0, 1] (drawn in %).
    pub average_map: f64,
}

/// Draw the training curves as a [`CURVES_SIZE`] PNG at `path` (written atomically): on top
/// the losses by component against the epoch (log scale when they are all positive and span
/// more than a factor 10), below left the learning rate, below right the validation average
/// mAP per evaluated epoch ("no validation yet" when `val` is empty).
///
/// Errors name `path`: a drawing failure or a failed write. Empty inputs give empty panels.
pub fn plot_curves(train: &[CurvePoint], val: &[ValPoint], path: &Path) -> Result<(), PlotError> {
    render_png(path, CURVES_SIZE, |root| draw(train, val, root))
}

/// The epoch range shown by every panel, so they line up.
fn epoch_range(train: &[CurvePoint], val: &[ValPoint]) -> (f64, f64) {
    let e = train.iter().map(|p| p.epoch).chain(val.iter().map(|v| v.epoch as f64));
    let (lo, hi) = finite_range(e).unwrap_or((0.0, 1.0));
    let lo = lo.min(0.0);
    (lo, if hi > lo { hi } else { lo + 1.0 })
}

/// Loss component names in order of first appearance.
fn components(train: &[CurvePoint]) -> Vec<&str> {
    let mut names: Vec<&str> = Vec::new();
    for (n, _) in train.iter().flat_map(|p| &p.losses) {
        if !names.contains(&n.as_str()) {
            names.push(n);
        }
    }
    names
}

fn draw(train: &[CurvePoint], val: &[ValPoint], root: &Area) -> DrawResult {
    let root = root.margin(8, 8, 12, 12);
    let (head, body) = root.split_vertically(34);
    let last = train
        .last()
        .map_or(String::new(), |p| format!(" · step {} · epoch {:.2}", p.step, p.epoch));
    head.draw_text(&format!("Training curves{last}"), &text(22.0), (0, 2))?;
    let (_, h) = body.dim_in_pixel();
    let (top, bottom) = body.split_vertically(h * 11 / 20);
    let (w, _) = bottom.dim_in_pixel();
    let (lr_area, val_area) = bottom.split_horizontally(w / 2);
    let xr = epoch_range(train, val);

    let names = components(train);
    let values = train.iter().flat_map(|p| p.losses.iter().map(|(_, v)| *v));
    let caption = "Training losses by component";
    match finite_range(values) {
        // Log scale only when it helps: all positive, spanning over a decade.
        Some((lo, hi)) if lo > 0.0 && hi / lo > 10.0 => {
            draw_losses(&top, caption, train, &names, xr, (lo / 1.3..hi * 1.3).log_scale())
        }
        Some((lo, hi)) => {
            let pad = ((hi - lo) * 0.08).max(1e-6 * hi.abs().max(1.0));
            let lo = if lo >= 0.0 { 0.0 } else { lo - pad };
            draw_losses(&top, caption, train, &names, xr, lo..hi + pad)
        }
        None => draw_losses(&top, caption, train, &names, xr, 0f64..1.0),
    }?;
    draw_lr(&lr_area.margin(6, 0, 0, 10), train, xr)?;
    draw_val(&val_area.margin(6, 0, 10, 0), val, xr)?;
    Ok(())
}

fn draw_losses<Y>(
    area: &Area,
    caption: &str,
    train: &[CurvePoint],
    names: &[&str],
    (x0, x1): (f64, f64),
    y: Y,
) -> DrawResult
where
    Y: AsRangedCoord<Value = f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    let mut chart = ChartBuilder::on(area)
        .caption(caption, text(17.0))
        .margin(6)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(x0..x1, y)?;
    chart
        .configure_mesh()
        .x_labels(12)
        .y_labels(10)
        .x_desc("epoch")
        .x_label_formatter(&tick)
        .y_label_formatter(&loss_tick)
        .max_light_lines(4)
        .y_desc("loss")
        .label_style(text(13.0))
        .axis_desc_style(text(14.0))
        .light_line_style(RGBColor(240, 240, 240))
        .bold_line_style(RGBColor(215, 215, 215))
        .draw()?;
    if names.is_empty() {
        // In pixel space: the y axis may be logarithmic.
        let (px, py) = chart.plotting_area().dim_in_pixel();
        chart.plotting_area().strip_coord_spec().draw(&Text::new(
            "no training steps yet",
            (px as i32 / 2, py as i32 / 2),
            text(16.0).pos(Pos::new(HPos::Center, VPos::Center)),
        ))?;
        return Ok(());
    }
    for (i, name) in names.iter().enumerate() {
        let pts = train
            .iter()
            .filter_map(|p| p.losses.iter().find(|(n, _)| n == name).map(|(_, v)| (p.epoch, *v)));
        let color = class_color(i);
        let mut first = true;
        for run in finite_runs(pts) {
            // Per-step losses are noisy: the raw values faint, their moving average bold.
            let smooth = moving_average(&run, SMOOTH_WINDOW);
            if smooth.is_some() {
                chart.draw_series(LineSeries::new(run.iter().copied(), color.mix(0.25).stroke_width(1)))?;
            }
            let series = chart.draw_series(LineSeries::new(smooth.unwrap_or(run), color.stroke_width(2)))?;
            if first {
                series
                    .label(name.to_string())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
                first = false;
            }
        }
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

/// Points of a loss curve averaged over (half a window either side, within the run).
const SMOOTH_WINDOW: usize = 15;

/// A loss-axis label: [`tick`]'s short form (plotters' own printed a log axis's 0.3 as
/// `0.30000000000000004`), and powers of ten below 0.01, where three decimals would round
/// every label to 0.
fn loss_tick(v: &f64) -> String {
    if *v != 0.0 && v.abs() < 0.01 {
        format!("{v:.0e}")
    } else {
        tick(v)
    }
}

/// The centred moving average of `run`'s y values over `window` points (shrinking at the
/// ends), or `None` when the run is too short for smoothing to mean anything.
fn moving_average(run: &[(f64, f64)], window: usize) -> Option<Vec<(f64, f64)>> {
    if run.len() < 3 * window {
        return None;
    }
    let half = window / 2;
    let mut prefix = vec![0.0];
    for (_, y) in run {
        prefix.push(prefix.last().copied().unwrap_or(0.0) + y);
    }
    let out = (0..run.len())
        .map(|i| {
            let (a, b) = (i.saturating_sub(half), (i + half + 1).min(run.len()));
            (run[i].0, (prefix[b] - prefix[a]) / (b - a) as f64)
        })
        .collect();
    Some(out)
}

fn draw_lr(area: &Area, train: &[CurvePoint], (x0, x1): (f64, f64)) -> DrawResult {
    let (lo, hi) = finite_range(train.iter().map(|p| p.lr)).unwrap_or((0.0, 1.0));
    let y0 = lo.min(0.0);
    let y1 = if hi > 0.0 { hi * 1.1 } else { 1.0 };
    let mut chart = ChartBuilder::on(area)
        .caption("Learning rate", text(17.0))
        .margin(6)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(x0..x1, y0..y1)?;
    chart
        .configure_mesh()
        .x_labels(8)
        .y_labels(6)
        .y_label_formatter(&|v| {
            if *v == 0.0 { "0".into() } else { format!("{v:.1e}") }
        })
        .x_desc("epoch")
        .x_label_formatter(&tick)
        .max_light_lines(4)
        .y_desc("learning rate")
        .label_style(text(13.0))
        .axis_desc_style(text(14.0))
        .light_line_style(RGBColor(240, 240, 240))
        .bold_line_style(RGBColor(215, 215, 215))
        .draw()?;
    if train.is_empty() {
        chart.draw_series([Text::new(
            "no training steps yet",
            ((x0 + x1) / 2.0, (y0 + y1) / 2.0),
            text(15.0).pos(Pos::new(HPos::Center, VPos::Center)),
        )])?;
        return Ok(());
    }
    for run in finite_runs(train.iter().map(|p| (p.epoch, p.lr))) {
        chart.draw_series(LineSeries::new(run, class_color(4).stroke_width(2)))?;
    }
    Ok(())
}

fn draw_val(area: &Area, val: &[ValPoint], (x0, x1): (f64, f64)) -> DrawResult {
    let pts: Vec<(f64, f64)> = val
        .iter()
        .map(|v| (v.epoch as f64, 100.0 * v.average_map))
        .filter(|(_, y)| y.is_finite())
        .collect();
    let best = pts.iter().copied().max_by(|a, b| a.1.total_cmp(&b.1));
    // Drawn within 0–100 % (an out-of-range value is a bug upstream; the caption shows it).
    let pts: Vec<(f64, f64)> = pts.into_iter().map(|(e, m)| (e, m.clamp(0.0, 100.0))).collect();
    let top = pts.iter().map(|p| p.1).fold(0f64, f64::max);
    let y1 = ((top * 1.15 / 10.0).ceil() * 10.0).clamp(10.0, 110.0);
    let caption = match best {
        Some((e, m)) => format!("Validation average mAP (best {m:.1}% at epoch {e})"),
        None => "Validation average mAP".to_string(),
    };
    let mut chart = ChartBuilder::on(area)
        .caption(caption, text(17.0))
        .margin(6)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(x0..x1, 0f64..y1)?;
    chart
        .configure_mesh()
        .x_labels(8)
        .y_labels(6)
        .x_desc("epoch")
        .x_label_formatter(&tick)
        .y_label_formatter(&tick)
        .max_light_lines(4)
        .y_desc("average mAP (%)")
        .label_style(text(13.0))
        .axis_desc_style(text(14.0))
        .light_line_style(RGBColor(240, 240, 240))
        .bold_line_style(RGBColor(215, 215, 215))
        .draw()?;
    if pts.is_empty() {
        chart.draw_series([Text::new(
            "no validation yet",
            ((x0 + x1) / 2.0, y1 / 2.0),
            text(15.0).pos(Pos::new(HPos::Center, VPos::Center)),
        )])?;
        return Ok(());
    }
    let color = class_color(2);
    chart.draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?;
    chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
    if let Some(b) = best {
        let b = (b.0, b.1.clamp(0.0, 100.0));
        chart.draw_series([Circle::new(b, 7, RGBColor(200, 0, 40).stroke_width(2))])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{decode, unwritable, write_doc_example};
    use super::*;

    /// 35 epochs of 20 steps: warm-up then cosine decay, losses falling with noise.
    fn example() -> (Vec<CurvePoint>, Vec<ValPoint>) {
        let steps_per_epoch = 20u64;
        let total = 35 * steps_per_epoch;
        let warm = 5 * steps_per_epoch;
        let train = (0..total)
            .step_by(2)
            .map(|s| {
                let e = s as f64 / steps_per_epoch as f64;
                let lr = if s < warm {
                    1e-4 * s as f64 / warm as f64
                } else {
                    let t = (s - warm) as f64 / (total - warm) as f64;
                    0.5e-4 * (1.0 + (std::f64::consts::PI * t).cos())
                };
                // A hash of the step, uniform in [-0.5, 0.5).
                let noise = (s.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) as f64 / (1u64 << 24) as f64 - 0.5;
                let cls = 0.9 * (-e / 8.0).exp() + 0.05 + 0.04 * noise;
                let reg = 0.6 * (-e / 12.0).exp() + 0.08 + 0.03 * noise;
                let con = 2.2 * (-e / 4.0).exp() + 0.01 + 0.005 * noise;
                CurvePoint {
                    step: s,
                    epoch: e,
                    lr,
                    losses: vec![
                        ("cls".into(), cls),
                        ("reg".into(), reg),
                        ("contrastive".into(), con),
                        ("final".into(), cls + reg + 0.1 * con),
                    ],
                }
            })
            .collect();
        let val = (1..=7)
            .map(|k| {
                let e = 5 * k;
                ValPoint {
                    epoch: e,
                    average_map: 0.78 - 0.6 * (-(e as f64) / 9.0).exp() + 0.01 * (k % 2) as f64,
                }
            })
            .collect();
        (train, val)
    }

    #[test]
    fn writes_example_png() {
        let (train, val) = example();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("curves.png");
        plot_curves(&train, &val, &path).unwrap();
        let (w, h, colors) = decode(&path);
        assert_eq!((w, h), CURVES_SIZE);
        assert!(colors > 10, "only {colors} colours");
        // Refreshing overwrites in place.
        plot_curves(&train[..10], &[], &path).unwrap();
        assert_eq!(decode(&path).0, CURVES_SIZE.0);
        write_doc_example("example_curves.png", CURVES_SIZE, |doc| plot_curves(&train, &val, doc));
    }

    #[test]
    fn empty_inputs_plot() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.png");
        plot_curves(&[], &[], &path).unwrap();
        let (w, h, colors) = decode(&path);
        assert_eq!((w, h), CURVES_SIZE);
        assert!(colors > 2);
        // One point, linear scale, non-finite values and a zero loss.
        let one = CurvePoint {
            step: 0,
            epoch: 0.0,
            lr: f64::NAN,
            losses: vec![("a".into(), 0.0), ("b".into(), f64::NAN)],
        };
        // A NaN and an out-of-range mAP (drawn clamped, not a panic).
        let val = [
            ValPoint {
                epoch: 0,
                average_map: f64::NAN,
            },
            ValPoint {
                epoch: 1,
                average_map: 1e12,
            },
        ];
        plot_curves(&[one], &val, &path).unwrap();
        assert_eq!(decode(&path).1, CURVES_SIZE.1);
    }

    #[test]
    fn loss_ticks_are_short_on_a_log_axis() {
        // The values a log axis from 0.06 to 2.6 labels, as plotters computes them.
        assert_eq!(loss_tick(&0.30000000000000004), "0.3");
        assert_eq!(loss_tick(&0.7000000000000001), "0.7");
        assert_eq!(loss_tick(&2.0), "2");
        assert_eq!(loss_tick(&0.05), "0.05");
        assert_eq!(loss_tick(&0.0004), "4e-4");
        assert_eq!(loss_tick(&0.0), "0");
    }

    #[test]
    fn moving_average_is_centred() {
        let run: Vec<(f64, f64)> = (0..9).map(|i| (i as f64, (i % 3) as f64)).collect();
        let m = moving_average(&run, 3).unwrap();
        // Ends average two points, the inside three: (0+1)/2, then (0+1+2)/3 = 1 everywhere.
        assert_eq!(m[0], (0.0, 0.5));
        assert!(m[1..8].iter().all(|&(_, y)| (y - 1.0).abs() < 1e-12));
        assert_eq!(m[8], (8.0, 1.5));
        assert!(moving_average(&run[..8], 3).is_none());
    }

    #[test]
    fn components_and_range() {
        let (train, val) = example();
        assert_eq!(components(&train), vec!["cls", "reg", "contrastive", "final"]);
        let (lo, hi) = epoch_range(&train, &val);
        assert_eq!(lo, 0.0);
        assert_eq!(hi, 35.0); // the last validation epoch
        assert_eq!(epoch_range(&[], &[]), (0.0, 1.0));
    }

    #[test]
    fn unwritable_path_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = unwritable(dir.path());
        let (train, val) = example();
        let e = plot_curves(&train, &val, &path).unwrap_err();
        assert!(matches!(e, PlotError::Write(_)));
        assert!(e.to_string().contains(&path.display().to_string()), "{e}");
    }
}
