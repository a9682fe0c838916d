//! `--preview`: a PNG with a strip of rows of one video (white vessels on black, as a
//! segmentation map is usually shown), the rows that hold the ground-truth start, apex
//! and end framed and labelled, and the mean intensity of every row over time with the
//! keyframes marked.

use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;
use plotters::style::FontStyle;

use super::{SynthError, SynthVideo};

/// DejaVu Sans (Bitstream Vera license, see assets/fonts/DejaVuSans-LICENSE.txt), bundled
/// so that drawing text needs no system fonts.
static FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");

const COLS: usize = 6;
const PANELS: usize = 12;
const SCALE: usize = 3;
const GAP: usize = 14;
const LABEL_H: usize = 34;
const TITLE_H: usize = 40;
const CURVE_H: usize = 240;
const START_C: RGBColor = RGBColor(40, 190, 60);
const APEX_C: RGBColor = RGBColor(230, 50, 40);
const END_C: RGBColor = RGBColor(40, 110, 240);

fn register_font() -> Result<(), String> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        plotters::style::register_font("sans-serif", FontStyle::Normal, FONT)
            .map_err(|_| "the bundled font is not a valid TrueType font".to_string())
    })
    .clone()
}

/// The row that summarises frame `frame` (the clip that contains it).
fn row_of(v: &SynthVideo, frame: usize) -> usize {
    (frame / v.feat_stride).min(v.rows - 1)
}

/// Up to `PANELS` rows spread over the run, always including the keyframe rows.
fn pick_rows(v: &SynthVideo) -> Vec<usize> {
    let n = PANELS.min(v.rows);
    let mut rows: Vec<usize> = (0..n)
        .map(|k| ((k as f64) * (v.rows - 1) as f64 / (n - 1).max(1) as f64).round() as usize)
        .collect();
    let keys = [row_of(v, v.key.start), row_of(v, v.key.apex), row_of(v, v.key.end)];
    let mut taken = vec![false; n];
    for &kr in &keys {
        if let Some(i) = rows.iter().position(|&r| r == kr) {
            taken[i] = true;
            continue;
        }
        // Replace the nearest row that is not itself a keyframe row.
        if let Some(i) = (0..n).filter(|&i| !taken[i]).min_by_key(|&i| rows[i].abs_diff(kr)) {
            rows[i] = kr;
            taken[i] = true;
        }
    }
    rows.sort_unstable();
    rows.dedup();
    rows
}

/// Draw the preview of `v` to `path` (PNG), atomically.
pub fn write_preview(v: &SynthVideo, path: &Path) -> Result<(), SynthError> {
    let perr = |msg: String| SynthError::Preview {
        path: path.to_path_buf(),
        msg,
    };
    if v.rows == 0 {
        return Err(perr("the video has no rows".into()));
    }
    register_font().map_err(perr)?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let werr = |source| {
        SynthError::Write(crate::fsio::WriteError {
            path: path.to_path_buf(),
            source,
        })
    };
    std::fs::create_dir_all(dir).map_err(werr)?;
    let tmp = tempfile::Builder::new()
        .prefix(".xca-tmp-")
        .suffix(".png")
        .tempfile_in(dir)
        .map_err(werr)?;
    draw(v, tmp.path()).map_err(perr)?;
    // A picture to share: readable by others, unlike the temporary file's 0600.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o644)).map_err(werr)?;
    }
    tmp.persist(path).map_err(|e| werr(e.error))?;
    Ok(())
}

fn draw(v: &SynthVideo, file: &Path) -> Result<(), String> {
    let e = |err: plotters::drawing::DrawingAreaErrorKind<_>| format!("{err:?}");
    let p = v.side * SCALE;
    let lines = PANELS.div_ceil(COLS);
    let width = GAP + COLS * (p + GAP);
    let panels_h = TITLE_H + lines * (LABEL_H + p + GAP);
    let height = panels_h + CURVE_H;
    let root = BitMapBackend::new(file, (width as u32, height as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(e)?;

    let k = v.key;
    let title = format!(
        "{} ({}): {} frames @ {} fps, {} rows (1 row = {} frames) — GT start f{}, apex f{}, end f{}",
        v.id,
        v.subset.name(),
        k.frames,
        v.fps,
        v.rows,
        v.feat_stride,
        k.start,
        k.apex,
        k.end
    );
    root.draw_text(&title, &("sans-serif", 20).into_font().color(&BLACK), (GAP as i32, 10))
        .map_err(e)?;

    let key_of = |row: usize| {
        [
            (k.start, "START", START_C),
            (k.apex, "APEX", APEX_C),
            (k.end, "END", END_C),
        ]
        .into_iter()
        .filter(|&(f, _, _)| row_of(v, f) == row)
        .collect::<Vec<_>>()
    };
    for (slot, &row) in pick_rows(v).iter().enumerate() {
        let (col, line) = (slot % COLS, slot / COLS);
        let x0 = (GAP + col * (p + GAP)) as i32;
        let y0 = (TITLE_H + line * (LABEL_H + p + GAP) + LABEL_H) as i32;
        let data = v.row(row);
        for r in 0..v.side {
            for c in 0..v.side {
                let g = (data[r * v.side + c].clamp(0.0, 1.0) * 255.0).round() as u8;
                let color = RGBColor(g, g, g);
                for dy in 0..SCALE {
                    for dx in 0..SCALE {
                        root.draw_pixel((x0 + (c * SCALE + dx) as i32, y0 + (r * SCALE + dy) as i32), &color)
                            .map_err(e)?;
                    }
                }
            }
        }
        let f0 = row * v.feat_stride;
        let f1 = f0 + v.num_frames - 1;
        let keys = key_of(row);
        let label_style = ("sans-serif", 15).into_font().color(&BLACK);
        root.draw_text(
            &format!("row {row} · f{f0}–{f1}"),
            &label_style,
            (x0, y0 - LABEL_H as i32 + 2),
        )
        .map_err(e)?;
        if !keys.is_empty() {
            let color = keys[0].2;
            for w in 1..=3 {
                root.draw(&Rectangle::new(
                    [(x0 - w, y0 - w), (x0 + p as i32 + w - 1, y0 + p as i32 + w - 1)],
                    color,
                ))
                .map_err(e)?;
            }
            let text = keys
                .iter()
                .map(|&(f, name, _)| format!("{name} f{f}"))
                .collect::<Vec<_>>()
                .join(" ");
            let style = ("sans-serif", 15).into_font().color(&color);
            root.draw_text(&text, &style, (x0, y0 - LABEL_H as i32 / 2 + 1))
                .map_err(e)?;
        }
    }

    // Mean intensity of every row at the clip's centre frame.
    let (_, curve_area) = root.split_vertically(panels_h as u32);
    let means: Vec<(f64, f64)> = (0..v.rows)
        .map(|i| {
            let r = v.row(i);
            let t = (i * v.feat_stride) as f64 + 0.5 * v.num_frames as f64;
            (t, r.iter().map(|&x| x as f64).sum::<f64>() / r.len() as f64)
        })
        .collect();
    let y_max = means.iter().map(|m| m.1).fold(0.0, f64::max).max(1e-3) * 1.15;
    let mut chart = ChartBuilder::on(&curve_area)
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..k.frames as f64, 0.0..y_max)
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc("frame")
        .y_desc("mean of row")
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 15))
        .light_line_style(WHITE)
        .draw()
        .map_err(e)?;
    let shade =
        |a: usize, b: usize, c: RGBColor| Rectangle::new([(a as f64, 0.0), (b as f64, y_max)], c.mix(0.12).filled());
    chart
        .draw_series([shade(k.start, k.apex, START_C), shade(k.apex, k.end, END_C)])
        .map_err(e)?;
    chart
        .draw_series(LineSeries::new(means.iter().copied(), BLACK.stroke_width(2)))
        .map_err(e)?;
    for (f, name, c) in [
        (k.start, "start", START_C),
        (k.apex, "apex", APEX_C),
        (k.end, "end", END_C),
    ] {
        chart
            .draw_series(LineSeries::new([(f as f64, 0.0), (f as f64, y_max)], c.stroke_width(2)))
            .map_err(e)?;
        chart
            .draw_series([Text::new(
                format!("{name} f{f}"),
                (f as f64 + 1.0, y_max * 0.95),
                ("sans-serif", 14).into_font().color(&c),
            )])
            .map_err(e)?;
    }
    root.present().map_err(e)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::{Keyframes, Subset};

    fn video(rows: usize, key: Keyframes) -> SynthVideo {
        SynthVideo {
            id: "train01".into(),
            subset: Subset::Train,
            fps: 15.0,
            side: 16,
            feat_stride: 4,
            num_frames: 4,
            key,
            rows,
            data: (0..rows * 256).map(|i| (i % 7) as f32 / 7.0).collect(),
        }
    }

    #[test]
    fn picked_rows_include_the_keyframe_rows() {
        let v = video(
            40,
            Keyframes {
                frames: 160,
                start: 5,
                apex: 70,
                end: 141,
            },
        );
        let rows = pick_rows(&v);
        assert_eq!(rows.len(), 12);
        for kr in [1, 17, 35] {
            assert!(rows.contains(&kr), "{rows:?} lacks {kr}");
        }
        assert!(rows.windows(2).all(|w| w[0] < w[1]));
        // Short videos: every row once.
        let v = video(
            5,
            Keyframes {
                frames: 20,
                start: 1,
                apex: 9,
                end: 17,
            },
        );
        assert_eq!(pick_rows(&v), vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn preview_is_a_png_of_the_planned_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.png");
        let v = video(
            40,
            Keyframes {
                frames: 160,
                start: 5,
                apex: 70,
                end: 141,
            },
        );
        write_preview(&v, &path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        // IHDR width and height (big-endian) right after the signature and chunk header.
        let w = u32::from_be_bytes(bytes[16..20].try_into().unwrap()) as usize;
        let h = u32::from_be_bytes(bytes[20..24].try_into().unwrap()) as usize;
        assert_eq!(w, GAP + COLS * (16 * SCALE + GAP));
        assert_eq!(h, TITLE_H + 2 * (LABEL_H + 16 * SCALE + GAP) + CURVE_H);
        // Only the PNG is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
