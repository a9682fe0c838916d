//! The per-video picture: score curves, detections, keyframes and a strip of frames.

use std::path::Path;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::{
    Area, DrawResult, KEYFRAME_COLORS, KEYFRAMES, PlotError, class_color, finite_runs, input_error, render_png, text,
    tick,
};

/// Size of [`plot_video`]'s picture in pixels (width, height).
pub const VIDEO_SIZE: (u32, u32) = (1200, 700);

/// Detections drawn, best first; more would not fit the lanes legibly.
const MAX_LANES: usize = 8;

/// Everything [`plot_video`] draws for one video, in plain data.
///
/// The x axis is in frames. Feature rows are placed on it with the SPEC §2.2 grid:
/// row `r` sits at frame `r·frames_per_row + row_offset`.
#[derive(Debug, Clone)]
pub struct VideoPlot<'a> {
    /// Title, normally the video id.
    pub title: &'a str,
    /// Frames per second; converts detection seconds to frames and labels the time axis.
    pub fps: f64,
    /// Frames in the video, `⌊duration·fps⌋`; the x axis spans at least `[0, frames]`.
    pub frames: usize,
    /// Frames per feature row: `feat_stride · downsample_rate` (4 in the paper's config).
    pub frames_per_row: f64,
    /// Frame of row 0's centre: `0.5 · num_frames` (2 in the paper's config).
    pub row_offset: f64,
    /// Per class (name, per-row score in [0, 1]), e.g. the largest sigmoid over the pyramid
    /// levels covering each row. Non-finite scores leave a gap in the curve.
    pub class_scores: Vec<(String, Vec<f32>)>,
    /// Detections (class name, `[start, end]` in seconds, score in [0, 1]); the best
    /// eight are drawn, one lane each, opacity growing with the score. Detections
    /// with non-finite or reversed bounds are skipped.
    pub detections: Vec<(String, [f64; 2], f32)>,
    /// Predicted start, apex and end frames (solid vertical lines).
    pub predicted: [i64; 3],
    /// Ground-truth start, apex and end frames when known (dashed vertical lines).
    pub truth: Option<[i64; 3]>,
    /// For the frame strip: (features `[rows, side·side]` row-major, rows, side). Each row is
    /// shown as a `side × side` grayscale image, row-major (element `r·side + c` is image row
    /// `r`, column `c`); gray levels span the min..max of the images shown. `None` (or zero
    /// rows) leaves the strip out.
    pub images: Option<(&'a [f32], usize, usize)>,
}

/// One image of the frame strip.
struct Cell {
    label: String,
    sub: String,
    row: usize,
    color: RGBColor,
    truth: bool,
}

/// Draw `p` as a [`VIDEO_SIZE`] PNG at `path` (written atomically).
///
/// Errors name `path`: inconsistent input (non-positive fps or `frames_per_row`, an image
/// buffer whose length is not `rows·side²`), a drawing failure, or a failed write.
pub fn plot_video(p: &VideoPlot, path: &Path) -> Result<(), PlotError> {
    if !(p.fps.is_finite() && p.fps > 0.0) {
        return Err(input_error(path, format!("fps must be positive, got {}", p.fps)));
    }
    if !(p.frames_per_row.is_finite() && p.frames_per_row > 0.0) {
        return Err(input_error(
            path,
            format!("frames_per_row must be positive, got {}", p.frames_per_row),
        ));
    }
    if !p.row_offset.is_finite() {
        return Err(input_error(
            path,
            format!("row_offset must be finite, got {}", p.row_offset),
        ));
    }
    if let Some((data, rows, side)) = p.images
        && rows > 0
        && (side == 0 || rows.checked_mul(side).and_then(|n| n.checked_mul(side)) != Some(data.len()))
    {
        return Err(input_error(
            path,
            format!(
                "images: {} values do not make {rows} rows of {side}×{side} pixels",
                data.len()
            ),
        ));
    }
    render_png(path, VIDEO_SIZE, |root| draw(p, root))
}

fn row_frame(p: &VideoPlot, row: usize) -> f64 {
    row as f64 * p.frames_per_row + p.row_offset
}

/// The row whose centre is nearest to `frame`, within `[0, rows)`.
fn nearest_row(p: &VideoPlot, frame: i64, rows: usize) -> usize {
    let r = ((frame as f64 - p.row_offset) / p.frames_per_row).round();
    if r.is_finite() && r > 0.0 {
        (r as usize).min(rows.saturating_sub(1))
    } else {
        0
    }
}

fn draw(p: &VideoPlot, root: &Area) -> DrawResult {
    let root = root.margin(8, 8, 12, 12);
    let (w, h) = root.dim_in_pixel();
    let (head, body) = root.split_vertically(34);
    head.draw_text(p.title, &text(22.0), (0, 2))?;
    let mut info = format!(
        "{} frames at {} fps ({:.1} s) · 1 feature row = {} frames",
        p.frames,
        p.fps,
        p.frames as f64 / p.fps,
        p.frames_per_row
    );
    if let Some(t) = p.truth {
        let d: Vec<String> = (0..3).map(|k| p.predicted[k].abs_diff(t[k]).to_string()).collect();
        info.push_str(&format!(" · |pred − GT| start/apex/end: {} frames", d.join(" / ")));
    }
    head.draw_text(&info, &text(14.0).pos(Pos::new(HPos::Right, VPos::Top)), (w as i32, 8))?;

    let strip_rows = p.images.map_or(0, |(_, rows, _)| rows);
    let strip_h = if strip_rows > 0 { 190 } else { 0 };
    let body_h = h - 34;
    let (upper, strip) = body.split_vertically(body_h - strip_h);
    let (plots, legend) = upper.split_horizontally(w - 210);
    let (curves_area, det_area) = plots.split_vertically((body_h - strip_h) * 2 / 3);

    // Class colours follow class_scores, then detection classes in order of appearance.
    let mut classes: Vec<&str> = p.class_scores.iter().map(|(n, _)| n.as_str()).collect();
    for (name, _, _) in &p.detections {
        if !classes.contains(&name.as_str()) {
            classes.push(name);
        }
    }
    let color_of = |name: &str| class_color(classes.iter().position(|c| *c == name).unwrap_or(0));

    let mut dets: Vec<(&str, f64, f64, f64)> = p
        .detections
        .iter()
        .map(|(n, [a, b], s)| (n.as_str(), a * p.fps, b * p.fps, *s as f64))
        .filter(|(_, a, b, s)| a.is_finite() && b.is_finite() && s.is_finite() && a <= b)
        .collect();
    dets.sort_by(|x, y| y.3.total_cmp(&x.3));
    dets.truncate(MAX_LANES);

    // x range: the video, stretched to show anything that falls outside it.
    let last_row = p
        .class_scores
        .iter()
        .map(|(_, s)| s.len())
        .chain([strip_rows])
        .max()
        .unwrap_or(0);
    let mut x0 = 0f64;
    let mut x1 = (p.frames as f64).max(1.0);
    let keyframes = p.predicted.iter().chain(p.truth.iter().flatten()).map(|&f| f as f64);
    let extra = dets.iter().flat_map(|d| [d.1, d.2]).chain(keyframes);
    // Absurd values (a billion frames) would squash the video into a pixel: leave them out.
    let last = (last_row > 0).then(|| row_frame(p, last_row - 1));
    for v in extra.chain(last).filter(|v| v.abs() < 1e9) {
        x0 = x0.min(v);
        x1 = x1.max(v);
    }
    let y1 = 1.05;
    // plotters overflows on coordinates far outside the chart; clipping happens anyway.
    let span = x1 - x0;
    let cx = |v: f64| v.clamp(x0 - span, x1 + span);

    // Score curves, with the time axis in seconds on top.
    let mut chart = ChartBuilder::on(&curves_area)
        .margin_right(12)
        .y_label_area_size(60)
        .top_x_label_area_size(40)
        .build_cartesian_2d(x0..x1, 0f64..y1)?
        .set_secondary_coord(x0 / p.fps..x1 / p.fps, 0f64..y1);
    chart
        .configure_mesh()
        .x_labels(12)
        .y_labels(6)
        .y_desc("score")
        .y_label_formatter(&tick)
        .max_light_lines(4)
        .label_style(text(13.0))
        .axis_desc_style(text(14.0))
        .light_line_style(RGBColor(240, 240, 240))
        .bold_line_style(RGBColor(215, 215, 215))
        .draw()?;
    chart
        .configure_secondary_axes()
        .x_labels(12)
        .x_desc("time (s)")
        .x_label_formatter(&tick)
        .label_style(text(13.0))
        .axis_desc_style(text(14.0))
        .draw()?;
    draw_keyframes(&mut chart, p, y1, cx)?;
    for (i, (_, scores)) in p.class_scores.iter().enumerate() {
        let pts = scores.iter().enumerate().map(|(r, &s)| (cx(row_frame(p, r)), s as f64));
        for run in finite_runs(pts) {
            chart.draw_series(LineSeries::new(run, class_color(i).stroke_width(2)))?;
        }
    }
    if p.class_scores.is_empty() {
        chart.draw_series([Text::new(
            "no scores",
            ((x0 + x1) / 2.0, 0.5),
            text(16.0).pos(Pos::new(HPos::Center, VPos::Center)),
        )])?;
    }

    // Detection lanes, best on top.
    let lanes = dets.len().max(1) as f64;
    let mut dchart = ChartBuilder::on(&det_area)
        .margin_right(12)
        .margin_top(6)
        .y_label_area_size(60)
        .x_label_area_size(42)
        .build_cartesian_2d(x0..x1, 0f64..lanes)?;
    dchart
        .configure_mesh()
        .x_labels(12)
        .y_labels(0)
        .y_label_formatter(&|_| String::new())
        .disable_y_mesh()
        .x_desc("frame")
        .x_label_formatter(&tick)
        .max_light_lines(4)
        .y_desc("detections")
        .label_style(text(13.0))
        .axis_desc_style(text(14.0))
        .light_line_style(RGBColor(240, 240, 240))
        .bold_line_style(RGBColor(215, 215, 215))
        .draw()?;
    draw_keyframes(&mut dchart, p, lanes, cx)?;
    for (i, &(name, a, b, s)) in dets.iter().enumerate() {
        let top = lanes - i as f64 - 0.12;
        let bottom = lanes - i as f64 - 0.88;
        let (a, b) = (cx(a), cx(b));
        let c = color_of(name);
        let alpha = 0.15 + 0.75 * s.clamp(0.0, 1.0);
        dchart.draw_series([
            Rectangle::new([(a, bottom), (b, top)], c.mix(alpha).filled()),
            Rectangle::new([(a, bottom), (b, top)], c.stroke_width(1)),
        ])?;
        dchart.draw_series([Text::new(
            format!(" {name} {s:.2}"),
            (a.max(x0), (top + bottom) / 2.0),
            text(12.0).pos(Pos::new(HPos::Left, VPos::Center)),
        )])?;
    }
    if dets.is_empty() {
        dchart.draw_series([Text::new(
            "no detections",
            ((x0 + x1) / 2.0, 0.5),
            text(14.0).pos(Pos::new(HPos::Center, VPos::Center)),
        )])?;
    }

    draw_legend(&legend, p, &classes)?;
    if strip_rows > 0 {
        draw_strip(&strip, p)?;
    }
    Ok(())
}

/// Vertical lines at the keyframes: predicted solid, ground truth dashed.
fn draw_keyframes<DB, CT>(
    chart: &mut ChartContext<'_, DB, CT>,
    p: &VideoPlot,
    top: f64,
    cx: impl Fn(f64) -> f64,
) -> DrawResult
where
    DB: DrawingBackend,
    DB::ErrorType: 'static,
    CT: CoordTranslate<From = (f64, f64)>,
{
    for k in 0..3 {
        let f = cx(p.predicted[k] as f64);
        chart.draw_series(LineSeries::new(
            [(f, 0.0), (f, top)],
            KEYFRAME_COLORS[k].stroke_width(2),
        ))?;
        if let Some(t) = p.truth {
            let f = cx(t[k] as f64);
            chart.draw_series(DashedLineSeries::new(
                [(f, 0.0), (f, top)],
                7,
                5,
                KEYFRAME_COLORS[k].stroke_width(2),
            ))?;
        }
    }
    Ok(())
}

fn draw_legend(area: &Area, p: &VideoPlot, classes: &[&str]) -> DrawResult {
    let x = 14;
    let mut y = 50;
    let line = |y: i32| vec![(x, y), (x + 30, y)];
    let label = |s: String, y: i32| Text::new(s, (x + 40, y), text(13.0).pos(Pos::new(HPos::Left, VPos::Center)));
    area.draw(&Text::new("legend", (x, y - 30), text(15.0)))?;
    for (i, name) in classes.iter().enumerate() {
        area.draw(&PathElement::new(line(y), class_color(i).stroke_width(2)))?;
        area.draw(&label(format!("{name} score"), y))?;
        y += 22;
    }
    for (i, name) in classes.iter().enumerate() {
        area.draw(&Rectangle::new(
            [(x, y - 6), (x + 30, y + 6)],
            class_color(i).mix(0.6).filled(),
        ))?;
        area.draw(&label(format!("{name} detection"), y))?;
        y += 22;
    }
    if !classes.is_empty() {
        area.draw(&Text::new("(opacity = score)", (x + 40, y - 6), text(11.0)))?;
        y += 18;
    }
    y += 6;
    for k in 0..3 {
        area.draw(&PathElement::new(line(y), KEYFRAME_COLORS[k].stroke_width(2)))?;
        area.draw(&label(format!("pred {} (f {})", KEYFRAMES[k], p.predicted[k]), y))?;
        y += 22;
    }
    if let Some(t) = p.truth {
        for k in 0..3 {
            // Dashes by hand: a path element has no dash style.
            for d in 0..3 {
                let a = x + d * 12;
                area.draw(&PathElement::new(
                    vec![(a, y), (a + 7, y)],
                    KEYFRAME_COLORS[k].stroke_width(2),
                ))?;
            }
            area.draw(&label(format!("GT {} (f {})", KEYFRAMES[k], t[k]), y))?;
            y += 22;
        }
    }
    Ok(())
}

fn draw_strip(area: &Area, p: &VideoPlot) -> DrawResult {
    let Some((data, rows, side)) = p.images else {
        return Ok(());
    };
    if rows == 0 || side == 0 {
        return Ok(());
    }
    let mut cells = Vec::new();
    for k in 0..3 {
        let row = nearest_row(p, p.predicted[k], rows);
        cells.push(Cell {
            label: format!("pred {} · frame {}", KEYFRAMES[k], p.predicted[k]),
            sub: format!("row {row} (frame {:.0})", row_frame(p, row)),
            row,
            color: KEYFRAME_COLORS[k],
            truth: false,
        });
    }
    if let Some(t) = p.truth {
        for k in 0..3 {
            let row = nearest_row(p, t[k], rows);
            cells.push(Cell {
                label: format!("GT {} · frame {}", KEYFRAMES[k], t[k]),
                sub: format!("row {row} (frame {:.0})", row_frame(p, row)),
                row,
                color: KEYFRAME_COLORS[k],
                truth: true,
            });
        }
    }

    // One gray scale for the whole strip, so brightness compares across cells.
    let pixels = |row: usize| &data[row * side * side..(row + 1) * side * side];
    let range = super::finite_range(cells.iter().flat_map(|c| pixels(c.row)).map(|&v| v as f64));
    let (lo, hi) = range.unwrap_or((0.0, 1.0));

    let (w, h) = area.dim_in_pixel();
    area.draw(&Text::new(
        format!("frames at the keyframes (nearest feature row, {side}×{side}; gray = {lo:.2} … {hi:.2})"),
        (0, 4),
        text(14.0),
    ))?;
    let cell_w = (w as i32 / cells.len() as i32).min(200);
    // Integer zoom keeps pixels square and crisp; larger images are sampled down.
    let room = (h as i32 - 64).min(cell_w - 16).max(8) as usize;
    let size = if side <= room {
        side * (room / side).min(3)
    } else {
        room
    };
    for (i, c) in cells.iter().enumerate() {
        let x = i as i32 * cell_w + 4;
        let y = 24;
        area.draw(&Text::new(c.label.clone(), (x, y), text(13.0).color(&c.color)))?;
        area.draw(&Text::new(c.sub.clone(), (x, y + 16), text(11.0)))?;
        let iy = y + 34;
        let src = pixels(c.row);
        let mut rgb = Vec::with_capacity(size * size * 3);
        for yy in 0..size {
            for xx in 0..size {
                let v = src[(yy * side / size) * side + xx * side / size];
                let g = if !v.is_finite() {
                    0
                } else if hi - lo < 1e-12 {
                    128
                } else {
                    (((v as f64 - lo) / (hi - lo)).clamp(0.0, 1.0) * 255.0).round() as u8
                };
                rgb.extend_from_slice(&[g, g, g]);
            }
        }
        let img = BitMapElement::<(i32, i32)>::with_owned_buffer((x + 2, iy + 2), (size as u32, size as u32), rgb)
            .ok_or("strip image buffer has the wrong size")?;
        area.draw(&img)?;
        let s = size as i32;
        // The image spans x + 2 ..= x + s + 1, and a 3 px plotters line reaches two pixels
        // before its coordinate: the thick border's far sides go one pixel further out than
        // the thin one's, or they cover the image's last row and column.
        let (border, far) = if c.truth {
            (c.color.stroke_width(1), s + 3)
        } else {
            (c.color.stroke_width(3), s + 4)
        };
        area.draw(&Rectangle::new([(x, iy), (x + far, iy + far)], border))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{decode, unwritable, write_doc_example};
    use super::*;
    use image::GenericImageView;

    /// A made-up but plausible video: 30 rows of 32×32 "vessel maps" at 4 frames a row,
    /// filling rising then washout.
    fn example_features(rows: usize, side: usize) -> Vec<f32> {
        let mut v = vec![0f32; rows * side * side];
        for r in 0..rows {
            // Contrast peaks around row 13, reaching the distal branches last.
            let a = (-((r as f32 - 13.0) / 8.0).powi(2)).exp();
            for y in 0..side {
                for x in 0..side {
                    let (fx, fy) = (x as f32 / side as f32, y as f32 / side as f32);
                    // A trunk and two branches, fading out with distance.
                    let trunk = (-((fx - 0.3 - 0.2 * fy) * 18.0).powi(2)).exp();
                    let b1 = (-((fy - 0.4 - 0.5 * (fx - 0.4)) * 20.0).powi(2)).exp() * (fx > 0.35) as u8 as f32;
                    let b2 = (-((fy - 0.75 + 0.3 * (fx - 0.5)) * 22.0).powi(2)).exp() * (fx > 0.45) as u8 as f32;
                    let reach = ((a * 1.4 - fx).clamp(0.0, 0.3)) / 0.3;
                    let noise = ((x * 31 + y * 17 + r * 7) % 13) as f32 / 130.0;
                    v[(r * side + y) * side + x] = (trunk.max(b1).max(b2) * reach * a + noise).min(1.0);
                }
            }
        }
        v
    }

    fn example<'a>(images: Option<(&'a [f32], usize, usize)>) -> VideoPlot<'a> {
        let rows = 30;
        let fill: Vec<f32> = (0..rows)
            .map(|r| 1.0 / (1.0 + (-(r as f32 - 6.0) * 0.9).exp()) * (r < 15) as u8 as f32 * 0.95 + 0.02)
            .collect();
        let wash: Vec<f32> = (0..rows)
            .map(|r| {
                if (13..26).contains(&r) {
                    0.85 - ((r as f32 - 18.0) / 6.0).powi(2) * 0.6
                } else {
                    0.04
                }
            })
            .collect();
        VideoPlot {
            title: "video_0042",
            fps: 15.0,
            frames: 120,
            frames_per_row: 4.0,
            row_offset: 2.0,
            class_scores: vec![("filling".into(), fill), ("washout".into(), wash)],
            detections: vec![
                ("filling".into(), [1.4, 3.9], 0.91),
                ("washout".into(), [3.9, 6.9], 0.84),
                ("filling".into(), [1.0, 4.6], 0.42),
                ("washout".into(), [4.4, 7.6], 0.31),
                ("filling".into(), [0.2, 2.2], 0.12),
            ],
            predicted: [22, 58, 103],
            truth: Some([20, 55, 108]),
            images,
        }
    }

    #[test]
    fn writes_example_png() {
        let feats = example_features(30, 32);
        let p = example(Some((&feats, 30, 32)));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.png");
        plot_video(&p, &path).unwrap();
        let (w, h, colors) = decode(&path);
        assert_eq!((w, h), VIDEO_SIZE);
        assert!(colors > 10, "only {colors} colours");
        write_doc_example("example_video.png", VIDEO_SIZE, |doc| plot_video(&p, doc));
    }

    #[test]
    fn empty_inputs_plot() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.png");
        let p = VideoPlot {
            title: "empty",
            fps: 15.0,
            frames: 0,
            frames_per_row: 4.0,
            row_offset: 2.0,
            class_scores: vec![],
            detections: vec![],
            predicted: [0, 0, 0],
            truth: None,
            images: Some((&[], 0, 64)),
        };
        plot_video(&p, &path).unwrap();
        let (w, h, colors) = decode(&path);
        assert_eq!((w, h), VIDEO_SIZE);
        assert!(colors > 2);
    }

    fn pixels(path: &Path) -> image::RgbImage {
        image::open(path).expect("a decodable PNG").to_rgb8()
    }

    /// How often the `size`×`size` gray block `want` (row-major gray levels) appears in `img`.
    fn count_block(img: &image::RgbImage, want: &[u8], size: u32) -> usize {
        let gray = |x, y| {
            let p = img.get_pixel(x, y).0;
            (p[0] == p[1] && p[1] == p[2]).then_some(p[0])
        };
        let last = want[want.len() - 1];
        let mut n = 0;
        for oy in 0..=img.height() - size {
            for ox in 0..=img.width() - size {
                if gray(ox, oy) != Some(want[0]) || gray(ox + size - 1, oy + size - 1) != Some(last) {
                    continue;
                }
                let all =
                    (0..size).all(|y| (0..size).all(|x| gray(ox + x, oy + y) == Some(want[(y * size + x) as usize])));
                n += all as usize;
            }
        }
        n
    }

    /// The gray level the strip should show for `v` in the range `lo..hi` (NaN/Inf black).
    fn gray(v: f32, lo: f64, hi: f64) -> u8 {
        if v.is_finite() {
            ((v as f64 - lo) / (hi - lo) * 255.0).round() as u8
        } else {
            0
        }
    }

    /// Columns of `color` in the rows `y0..y1` of `img`.
    fn columns_of(img: &image::RgbImage, color: RGBColor, y0: u32, y1: u32) -> Vec<u32> {
        let want = [color.0, color.1, color.2];
        (0..img.width())
            .filter(|&x| (y0..y1).any(|y| img.get_pixel(x, y).0 == want))
            .collect()
    }

    #[test]
    fn non_finite_pixels_are_black_and_left_out_of_the_gray_range() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nan.png");
        let side = 16;
        let mut feats = example_features(30, side);
        // Keyframe rows: predicted 22, 58, 103 → rows 5, 14, 25; truth 20, 55, 108 → 5, 13, 27.
        let shown = [5, 14, 25, 5, 13, 27];
        feats[5 * side * side + 3 * side + 7] = f32::NAN;
        feats[14 * side * side + 9] = f32::INFINITY;
        plot_video(&example(Some((&feats, 30, side))), &path).unwrap();
        let row = |r: usize| &feats[r * side * side..(r + 1) * side * side];
        let finite: Vec<f64> = shown
            .iter()
            .flat_map(|&r| row(r))
            .filter(|v| v.is_finite())
            .map(|&v| v as f64)
            .collect();
        let lo = finite.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = finite.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        assert!(hi - lo > 0.5, "{lo} {hi}");
        // 16 px images are zoomed 3× (nearest neighbour) to 48 px.
        let block = |r: usize| -> Vec<u8> {
            (0..48 * 48)
                .map(|i| gray(row(r)[(i / 48 / 3) * side + (i % 48) / 3], lo, hi))
                .collect()
        };
        let b5 = block(5);
        assert_eq!(b5[(3 * 3) * 48 + 7 * 3], 0, "the NaN pixel is black");
        let img = pixels(&path);
        let counts: Vec<usize> = [5, 14, 25, 13, 27]
            .iter()
            .map(|&r| count_block(&img, &block(r), 48))
            .collect();
        assert_eq!(counts, [2, 1, 1, 1, 1], "rows 5, 14, 25, 13, 27 in the strip");
    }

    #[test]
    fn non_finite_scores_leave_a_gap() {
        let dir = tempfile::tempdir().unwrap();
        let draw = |value: Option<f32>, name: &str| {
            let mut p = example(None);
            p.truth = None;
            if let Some(v) = value {
                p.class_scores[0].1[3] = v;
            }
            let path = dir.path().join(name);
            plot_video(&p, &path).unwrap();
            pixels(&path)
        };
        let (clean, nan) = (draw(None, "clean.png"), draw(Some(f32::NAN), "nan.png"));
        // The curves' panel: below the title, above the detection lanes (2/3 of 650 px).
        let (y0, y1) = (60, 460);
        // Frame → pixel column from the predicted start (frame 22) and end (frame 103) lines.
        let col = |k: usize| columns_of(&clean, KEYFRAME_COLORS[k], y0, y1)[0] as f64;
        let (c22, c103) = (col(0), col(2));
        let px = |frame: f64| c22 + (frame - 22.0) * (c103 - c22) / 81.0;
        // Rows 2 and 4 sit at frames 10 and 18; with row 3 missing nothing of the filling
        // curve lies between them.
        let inside = |img: &image::RgbImage| {
            columns_of(img, class_color(0), y0, y1)
                .into_iter()
                .filter(|&x| (x as f64) > px(10.0) + 3.0 && (x as f64) < px(18.0) - 3.0)
                .count()
        };
        assert!(inside(&clean) > 20, "the clean curve crosses rows 2..4");
        assert_eq!(inside(&nan), 0, "a NaN score bridges rows 2..4");
        // ±Inf leave the same gap, pixel for pixel.
        assert!(draw(Some(f32::INFINITY), "inf.png") == nan);
        assert!(draw(Some(f32::NEG_INFINITY), "ninf.png") == nan);
    }

    #[test]
    fn bad_detections_are_skipped_and_absurd_ones_leave_the_axis_alone() {
        let dir = tempfile::tempdir().unwrap();
        let draw = |extra: &[(&str, [f64; 2], f32)], truth: Option<[i64; 3]>, name: &str| {
            let mut p = example(None);
            p.truth = truth;
            p.detections
                .extend(extra.iter().map(|(n, s, c)| (n.to_string(), *s, *c)));
            let path = dir.path().join(name);
            plot_video(&p, &path).unwrap();
            pixels(&path)
        };
        let truth = example(None).truth;
        let clean = draw(&[], truth, "clean.png");
        let bad = [
            ("filling", [f64::NAN, 2.0], 0.5),
            ("washout", [3.0, 1.0], 0.5),
            ("washout", [1.0, 2.0], f32::NAN),
        ];
        assert!(
            draw(&bad, truth, "bad.png") == clean,
            "skipped detections change nothing"
        );
        // A detection a billion frames out gets a lane (off-chart) but the frame axis, and
        // with it everything above the lanes, stays as it was.
        let absurd = draw(&[("washout", [1e12, 2e12], 0.2)], truth, "absurd.png");
        assert!(absurd != clean);
        let top = |img: &image::RgbImage| img.view(0, 0, img.width(), 460).to_image();
        assert!(top(&absurd) == top(&clean));
        // Keyframes at the ends of i64 are drawn clamped, not overflowing.
        let extreme = draw(&[], Some([i64::MIN, 55, i64::MAX]), "extreme.png");
        assert_eq!(extreme.dimensions(), VIDEO_SIZE);
    }

    #[test]
    fn large_side_is_sampled_down() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.png");
        let side = 300;
        // Row r: (x + 2y + 100r)/1097 at column x, image row y: 0 at row 0's corner, 1 at row 2's.
        let value = |r: usize, y: usize, x: usize| (x + 2 * y + 100 * r) as f32 / 1097.0;
        let feats: Vec<f32> = (0..3 * side * side)
            .map(|i| value(i / (side * side), (i / side) % side, i % side))
            .collect();
        let mut p = example(Some((&feats, 3, side)));
        p.frames_per_row = 40.0;
        plot_video(&p, &path).unwrap();
        // The strip is 190 px high; less 64 px of labels leaves 126 px per image, so each
        // shows every (300/126)-th pixel: pixel (x, y) is source (⌊300x/126⌋, ⌊300y/126⌋).
        let size = 126;
        let block = |r: usize| -> Vec<u8> {
            (0..size * size)
                .map(|i| gray(value(r, (i / size) * side / size, (i % size) * side / size), 0.0, 1.0))
                .collect()
        };
        let img = pixels(&path);
        // Predicted 22, 58, 103 → rows 1, 1, 2; truth 20, 55, 108 → rows 0, 1, 2.
        let counts: Vec<usize> = (0..3).map(|r| count_block(&img, &block(r), size as u32)).collect();
        assert_eq!(counts, [1, 3, 2]);
    }

    #[test]
    fn bad_input_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.png");
        let feats = vec![0f32; 10];
        let e = plot_video(&example(Some((&feats, 3, 4))), &path).unwrap_err();
        assert!(matches!(e, PlotError::Input { .. }));
        assert!(
            e.to_string().contains("bad.png") && e.to_string().contains("10 values"),
            "{e}"
        );
        let mut p = example(None);
        p.fps = 0.0;
        assert!(plot_video(&p, &path).unwrap_err().to_string().contains("fps"));
        assert!(!path.exists());
    }

    #[test]
    fn unwritable_path_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = unwritable(dir.path());
        let e = plot_video(&example(None), &path).unwrap_err();
        assert!(matches!(e, PlotError::Write(_)));
        assert!(e.to_string().contains(&path.display().to_string()), "{e}");
    }

    #[test]
    fn nearest_row_follows_the_grid() {
        let p = example(None);
        // Row r sits at frame 4r + 2.
        assert_eq!(nearest_row(&p, 2, 30), 0);
        assert_eq!(nearest_row(&p, 14, 30), 3);
        assert_eq!(nearest_row(&p, 15, 30), 3); // (15-2)/4 = 3.25
        assert_eq!(nearest_row(&p, -50, 30), 0);
        assert_eq!(nearest_row(&p, 10_000, 30), 29);
    }
}
