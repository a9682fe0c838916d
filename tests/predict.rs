//! `xca predict`, `xca eval --plots` and the training curves, on a tiny trained model
//! (16×16 images, width 16, max_seq_len 32, as in tests/pipeline.rs).

mod common;
use common::{setup, xca};

use std::path::Path;

use npyz::WriterBuilder;
use xca::dataset::Features;
use xca::dataset::features::to_npy_bytes;
use xca::report::{CURVES_SIZE, SUMMARY_SIZE, VIDEO_SIZE};

/// A `.npy` of float32 `shape` holding `data`.
fn write_npy(path: &Path, shape: &[u64], data: &[f32]) {
    let mut out = Vec::new();
    {
        let mut w = npyz::WriteOptions::<f32>::new()
            .default_dtype()
            .shape(shape)
            .writer(&mut out)
            .begin_nd()
            .unwrap();
        w.extend(data.iter().copied()).unwrap();
        w.finish().unwrap();
    }
    std::fs::write(path, out).unwrap();
}

/// Features of the first synthetic test video, cut or tiled to `rows` rows.
fn video_rows(dir: &Path, rows: usize) -> Vec<f32> {
    let first = std::fs::read_dir(dir.join("data/image"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "npy") && p.file_name().unwrap().to_string_lossy().starts_with("test")
        })
        .min()
        .expect("a synthetic test video");
    let f = Features::load(&first, 256).unwrap();
    (0..rows).flat_map(|r| f.row(r % f.rows).to_vec()).collect()
}

/// Width, height and number of distinct colours (up to 64) of a PNG.
fn png_info(path: &Path) -> (u32, u32, usize) {
    let img = image::open(path)
        .unwrap_or_else(|e| panic!("{}: not a PNG: {e}", path.display()))
        .to_rgb8();
    let mut colors = std::collections::HashSet::new();
    for p in img.pixels() {
        colors.insert(p.0);
        if colors.len() >= 64 {
            break;
        }
    }
    (img.width(), img.height(), colors.len())
}

fn check_prediction(doc: &serde_json::Value, input: &Path, rows: usize, ckpt: &Path, config: &Path) {
    let keys: Vec<&str> = doc.as_object().unwrap().keys().map(String::as_str).collect();
    let mut sorted = keys.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        ["checkpoint", "config", "detections", "input", "keyframes", "rows"],
        "{doc}"
    );
    assert_eq!(doc["input"], input.to_str().unwrap());
    assert_eq!(doc["rows"], rows);
    assert_eq!(doc["checkpoint"], ckpt.to_str().unwrap());
    assert_eq!(doc["config"], config.to_str().unwrap());
    let k = &doc["keyframes"];
    let mut kk: Vec<&str> = k.as_object().unwrap().keys().map(String::as_str).collect();
    kk.sort_unstable();
    assert_eq!(
        kk,
        [
            "apex_frame",
            "apex_s",
            "end_frame",
            "end_s",
            "fallback",
            "start_frame",
            "start_s"
        ]
    );
    let f = |n: &str| k[n].as_i64().unwrap();
    let (s, a, e) = (f("start_frame"), f("apex_frame"), f("end_frame"));
    // 4 frames per row (feat_stride 4) at --fps 15.
    let frames = (rows * 4) as i64;
    assert!(
        0 <= s && s <= a && a <= e && e < frames,
        "keyframes {s} {a} {e} of {frames} frames"
    );
    for (name, frame) in [("start_s", s), ("apex_s", a), ("end_s", e)] {
        assert!((k[name].as_f64().unwrap() - frame as f64 / 15.0).abs() < 1e-9, "{name}");
    }
    assert!(k["fallback"].is_boolean());
    let dets = doc["detections"].as_array().unwrap();
    assert!(
        !dets.is_empty(),
        "a trained model detects something above pre_nms_thresh"
    );
    let duration = frames as f64 / 15.0;
    let mut last = f64::INFINITY;
    for d in dets {
        let seg = d["segment"].as_array().unwrap();
        let (a, b) = (seg[0].as_f64().unwrap(), seg[1].as_f64().unwrap());
        assert!(
            0.0 <= a && a <= b && b <= duration + 1e-4,
            "segment {a}..{b} in {duration} s"
        );
        let id = d["label_id"].as_u64().unwrap();
        assert_eq!(d["label"], ["filling", "washout"][id as usize]);
        let score = d["score"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&score) && score <= last, "scores best first");
        last = score;
    }
}

#[test]
fn predict_eval_plots_and_training_curves() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path(), 2);
    xca()
        .args(["train", config.to_str().unwrap(), "--output", "t", "--quiet"])
        .assert()
        .success();
    let run = dir.path().join("ckpt/tiny_t");
    let ckpt = run.join("epoch_002.safetensors");
    // curves.png is drawn after every epoch.
    let (w, h, colors) = png_info(&run.join("curves.png"));
    assert_eq!((w, h), CURVES_SIZE);
    assert!(colors > 10, "curves.png looks empty");

    // One input shorter than max_seq_len (20 rows, [T, 256]), one much longer (150 rows,
    // [T, 16, 16]).
    let short = dir.path().join("short.npy");
    let long = dir.path().join("long clip.npy");
    std::fs::write(&short, to_npy_bytes(20, 256, &video_rows(dir.path(), 20)).unwrap()).unwrap();
    write_npy(&long, &[150, 16, 16], &video_rows(dir.path(), 150));

    let out_json = dir.path().join("pred.json");
    let plots = dir.path().join("plots");
    let out = xca()
        .arg("predict")
        .arg(&ckpt)
        .arg("--config")
        .arg(&config)
        .arg(&short)
        .arg(&long)
        .args(["--fps", "15", "--quiet", "--json"])
        .arg(&out_json)
        .arg("--plot")
        .arg(&plots)
        .assert()
        .success();
    let stdout = String::from_utf8_lossy(&out.get_output().stdout).to_string();
    assert!(
        stdout.contains("fps 15 (--fps)") && stdout.contains("| apex |") && stdout.contains("short.npy"),
        "{stdout}"
    );
    let text = std::fs::read_to_string(&out_json).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    let list = doc.as_array().unwrap();
    assert_eq!(list.len(), 2);
    check_prediction(&list[0], &short, 20, &ckpt, &config);
    check_prediction(&list[1], &long, 150, &ckpt, &config);
    // The table on stdout shows the keyframes the JSON holds (one prediction, two outputs).
    for (input, entry) in ["short.npy", "long clip.npy"].iter().zip(list) {
        let section = stdout
            .split("\n== ")
            .find(|s| s.contains(input))
            .unwrap_or_else(|| panic!("no table for {input} in:\n{stdout}"));
        for name in ["start", "apex", "end"] {
            let frame = entry["keyframes"][format!("{name}_frame")].as_i64().unwrap();
            let row = format!("| {name} | {frame} | {:.2} |", frame as f64 / 15.0);
            assert!(section.contains(&row), "{row} not in:\n{section}");
        }
    }
    for name in ["short.png", "long_clip.png"] {
        let (w, h, colors) = png_info(&plots.join(name));
        assert_eq!((w, h), VIDEO_SIZE, "{name}");
        assert!(colors > 10, "{name} looks empty");
    }

    // An output that is an input is refused and the input left as it was.
    let ckpt_bytes = std::fs::read(&ckpt).unwrap();
    for target in [&ckpt, &short] {
        let out = xca()
            .arg("predict")
            .arg(&ckpt)
            .arg(&short)
            .arg("--json")
            .arg(target)
            .assert()
            .code(2);
        let err = String::from_utf8_lossy(&out.get_output().stderr).to_string();
        assert!(err.contains("refusing to overwrite an input"), "{err}");
    }
    assert_eq!(std::fs::read(&ckpt).unwrap(), ckpt_bytes);
    assert_eq!(
        Features::load(&short, 256).unwrap().rows,
        20,
        "the input .npy is intact"
    );
    // Two inputs with one file name in different folders: two pictures. A file name that is
    // not UTF-8 is no reason to fail.
    for sub in ["a", "b"] {
        std::fs::create_dir(dir.path().join(sub)).unwrap();
        std::fs::copy(&short, dir.path().join(sub).join("same.npy")).unwrap();
    }
    let odd = {
        use std::os::unix::ffi::OsStrExt;
        dir.path().join(std::ffi::OsStr::from_bytes(b"odd\xff.npy"))
    };
    std::fs::copy(&short, &odd).unwrap();
    let twin_plots = dir.path().join("twin_plots");
    let out = xca()
        .arg("predict")
        .arg(&ckpt)
        .arg(dir.path().join("a/same.npy"))
        .arg(dir.path().join("b/same.npy"))
        .arg(&odd)
        .args(["--quiet", "--json", "-", "--plot"])
        .arg(&twin_plots)
        .assert()
        .success();
    let docs: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(docs.as_array().unwrap().len(), 3);
    assert!(
        docs[2]["input"].as_str().unwrap().ends_with("odd\u{fffd}.npy"),
        "{docs}"
    );
    let mut names: Vec<String> = std::fs::read_dir(&twin_plots)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["odd_.png", "same.png", "same~2.png"]);

    // Without --config the run folder's config.yaml is used; `--json -` prints only JSON on
    // stdout, the same as the file (same seed, same inputs).
    let out = xca()
        .arg("predict")
        .arg(&ckpt)
        .arg(&short)
        .arg(&long)
        .args(["--fps", "15", "--json", "-"])
        .assert()
        .success();
    let stdout: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).expect("stdout is JSON");
    let list2 = stdout.as_array().unwrap();
    assert_eq!(list2.len(), 2);
    for (a, b) in list.iter().zip(list2) {
        assert_eq!(a["keyframes"], b["keyframes"]);
        assert_eq!(a["detections"], b["detections"]);
        assert_eq!(b["config"], run.join("config.yaml").to_str().unwrap());
    }

    // eval --plots: one picture per test video plus the summary; same numbers as plain eval.
    let eplots = dir.path().join("eval_plots");
    let (j1, j2) = (dir.path().join("e1.json"), dir.path().join("e2.json"));
    xca()
        .arg("eval")
        .arg(&ckpt)
        .arg("--quiet")
        .arg("--json")
        .arg(&j1)
        .assert()
        .success();
    xca()
        .arg("eval")
        .arg(&ckpt)
        .arg("--quiet")
        .arg("--json")
        .arg(&j2)
        .arg("--plots")
        .arg(&eplots)
        .assert()
        .success();
    let (e1, e2): (serde_json::Value, serde_json::Value) = (
        serde_json::from_str(&std::fs::read_to_string(&j1).unwrap()).unwrap(),
        serde_json::from_str(&std::fs::read_to_string(&j2).unwrap()).unwrap(),
    );
    assert_eq!(e1, e2, "--plots must not change the evaluation");
    let ann: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("data/annotations/vessel.json")).unwrap())
            .unwrap();
    let test_ids: Vec<&String> = ann["database"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, v)| v["subset"] == "test")
        .map(|(k, _)| k)
        .collect();
    assert_eq!(test_ids.len(), 2);
    let mut pngs: Vec<String> = std::fs::read_dir(&eplots)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    pngs.sort();
    let mut want: Vec<String> = test_ids
        .iter()
        .map(|id| format!("{id}.png"))
        .chain(["summary.png".to_string()])
        .collect();
    want.sort();
    assert_eq!(pngs, want);
    for id in &test_ids {
        let (w, h, colors) = png_info(&eplots.join(format!("{id}.png")));
        assert_eq!((w, h), VIDEO_SIZE);
        assert!(colors > 10);
    }
    let (w, h, colors) = png_info(&eplots.join("summary.png"));
    assert_eq!((w, h), SUMMARY_SIZE);
    assert!(colors > 10);
}

#[test]
fn bad_inputs_are_named_with_their_shape_or_dtype() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path(), 2);
    // The inputs are checked before the checkpoint is read, so none is needed here.
    let ckpt = dir.path().join("none.safetensors");
    let predict = |input: &Path| {
        let out = xca()
            .arg("predict")
            .arg(&ckpt)
            .arg("--config")
            .arg(&config)
            .arg(input)
            .arg("--quiet")
            .assert()
            .code(2);
        String::from_utf8_lossy(&out.get_output().stderr).to_string()
    };

    let wrong_shape = dir.path().join("wrong_shape.npy");
    write_npy(&wrong_shape, &[10, 100], &vec![0.0; 1000]);
    let err = predict(&wrong_shape);
    assert!(
        err.contains("wrong_shape.npy") && err.contains("[10, 100]") && err.contains("[T, 256]"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");

    let wrong_side = dir.path().join("wrong_side.npy");
    write_npy(&wrong_side, &[4, 8, 32], &vec![0.0; 4 * 256]);
    let err = predict(&wrong_side);
    assert!(
        err.contains("wrong_side.npy") && err.contains("[4, 8, 32]") && err.contains("[T, 16, 16]"),
        "{err}"
    );

    let ints = dir.path().join("ints.npy");
    let mut bytes = Vec::new();
    {
        let mut w = npyz::WriteOptions::<i32>::new()
            .default_dtype()
            .shape(&[3, 256])
            .writer(&mut bytes)
            .begin_nd()
            .unwrap();
        w.extend(std::iter::repeat_n(1i32, 3 * 256)).unwrap();
        w.finish().unwrap();
    }
    std::fs::write(&ints, bytes).unwrap();
    let err = predict(&ints);
    assert!(
        err.contains("ints.npy") && err.contains("<i4") && err.contains("float32"),
        "{err}"
    );

    let empty = dir.path().join("empty.npy");
    write_npy(&empty, &[0, 256], &[]);
    let err = predict(&empty);
    assert!(err.contains("empty.npy") && err.contains("no rows"), "{err}");

    let missing = dir.path().join("missing.npy");
    let err = predict(&missing);
    assert!(err.contains("missing.npy"), "{err}");

    // Valid features but a checkpoint that does not exist.
    let ok = dir.path().join("ok.npy");
    write_npy(&ok, &[5, 256], &vec![0.5; 5 * 256]);
    let out = xca()
        .arg("predict")
        .arg(&ckpt)
        .arg("--config")
        .arg(&config)
        .arg(&ok)
        .assert()
        .code(2);
    let err = String::from_utf8_lossy(&out.get_output().stderr).to_string();
    assert!(
        err.contains("none.safetensors") && err.contains("does not exist"),
        "{err}"
    );

    // A non-positive fps is refused.
    let out = xca()
        .arg("predict")
        .arg(&ckpt)
        .arg("--config")
        .arg(&config)
        .arg(&ok)
        .args(["--fps", "0"])
        .assert()
        .code(2);
    let err = String::from_utf8_lossy(&out.get_output().stderr).to_string();
    assert!(err.contains("fps must be positive"), "{err}");
}
