//! `xca config` and `xca check` from the command line: resolved configs, one-line errors that
//! name the key or file, and every kind of bad dataset file caught.

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use xca::synth::{SynthConfig, generate};

fn xca() -> Command {
    Command::cargo_bin("xca").unwrap()
}

fn stderr(out: &assert_cmd::assert::Assert) -> String {
    String::from_utf8_lossy(&out.get_output().stderr).to_string()
}

/// A small synthetic dataset (16×16 maps) and a config pointing at it.
fn dataset(dir: &Path) -> PathBuf {
    let synth = SynthConfig {
        train: 2,
        val: 1,
        test: 1,
        seed: 5,
        side: 16,
        min_frames: 48,
        max_frames: 96,
        ..SynthConfig::default()
    };
    generate(&synth, &dir.join("data"), false).unwrap();
    let cfg = dir.join("c.yaml");
    std::fs::write(
        &cfg,
        format!(
            "dataset: {{json_file: {d}/data/annotations/vessel.json, feat_folder: {d}/data/image, input_dim: 256, max_seq_len: 32}}\n\
             model: {{backbone_arch: [2, 1, 2], regression_range: [[0, 4], [4, 8], [8, 10000]]}}\n",
            d = dir.display()
        ),
    )
    .unwrap();
    cfg
}

#[test]
fn config_prints_the_resolved_tree_with_the_yaml_names() {
    let out = xca()
        .args(["config", "configs/vessel.yaml", "--json"])
        .assert()
        .success();
    let v: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(v["model"]["SpAtten"], true);
    assert_eq!(v["dataset"]["max_seq_len"], 128);
    assert_eq!(v["train_cfg"]["init_loss_norm"], 100.0);
    assert_eq!(v["test_cfg"]["nms_method"], "soft");
    assert_eq!(v["opt"]["type"], "AdamW");
    assert!(
        stderr(&out).is_empty(),
        "the paper's values of ignored keys need no note"
    );

    // An ignored key of the original set to something else gets a one-line note.
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("n.yaml");
    std::fs::write(&cfg, "devices: ['cuda:0', 'cuda:1']\nloader: {num_workers: 16}\n").unwrap();
    let err = stderr(&xca().arg("config").arg(&cfg).assert().success());
    assert_eq!(err.lines().count(), 2, "{err}");
    assert!(
        err.contains("devices is accepted but not used") && err.contains("loader.num_workers"),
        "{err}"
    );

    let out = xca()
        .args(["config", "configs/vessel_actionformer.yaml"])
        .assert()
        .success();
    let text = String::from_utf8_lossy(&out.get_output().stdout).to_string();
    assert!(
        text.contains("SpAtten: false") && text.contains("max_div_factor 128"),
        "{text}"
    );

    let out = xca()
        .args(["config", "configs/vessel.yaml", "--params", "--json"])
        .assert()
        .success();
    let v: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    let total = v["total"].as_u64().unwrap();
    let sum: u64 = v["blocks"]
        .as_object()
        .unwrap()
        .values()
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(total, sum);
    assert_eq!(v["blocks"]["long_term.convlstm"], 7592);
}

#[test]
fn config_errors_are_one_line_and_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "dataset: {max_seq_lenn: 3}\n").unwrap();
    let out = xca().arg("config").arg(&bad).assert().code(2);
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("xca: error: ")
            && err.contains("bad.yaml")
            && err.contains("'max_seq_lenn'")
            && err.contains("'max_seq_len'"),
        "{err}"
    );

    std::fs::write(&bad, "model: {embd_dim: lots}\n").unwrap();
    let err = stderr(&xca().arg("config").arg(&bad).assert().code(2));
    assert!(err.contains("model.embd_dim"), "{err}");

    let err = stderr(&xca().args(["config", "no/such.yaml"]).assert().code(2));
    assert!(err.contains("no/such.yaml"), "{err}");
}

#[test]
fn check_passes_a_clean_dataset() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dataset(dir.path());
    let out = xca().arg("check").arg(&cfg).arg("--quiet").assert().success();
    let text = String::from_utf8_lossy(&out.get_output().stdout).to_string();
    assert!(
        text.contains("4 videos") && text.contains("ok: no problems found"),
        "{text}"
    );
    assert!(
        text.contains("train") && text.contains("validation") && text.contains("test"),
        "{text}"
    );
}

#[test]
fn check_lists_every_kind_of_problem() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dataset(dir.path());
    let img = dir.path().join("data/image");
    let json_path = dir.path().join("data/annotations/vessel.json");
    // 1. wrong shape
    std::fs::write(
        img.join("train01.npy"),
        xca::dataset::features::to_npy_bytes(3, 100, &[0.0; 300]).unwrap(),
    )
    .unwrap();
    // 2. truncated
    let bytes = std::fs::read(img.join("train02.npy")).unwrap();
    std::fs::write(img.join("train02.npy"), &bytes[..bytes.len() / 2]).unwrap();
    // 3. missing file
    std::fs::remove_file(img.join("val01.npy")).unwrap();
    // 4. NaN values
    let mut f = xca::dataset::Features::load(&img.join("test01.npy"), 256).unwrap();
    f.data[5 * 256 + 3] = f32::NAN;
    std::fs::write(
        img.join("test01.npy"),
        xca::dataset::features::to_npy_bytes(f.rows, 256, &f.data).unwrap(),
    )
    .unwrap();
    // 5. segment outside the video, 6. label not below num_classes
    let mut ann: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    let v = &mut ann["database"]["test01"];
    let duration = v["duration"].as_f64().unwrap();
    v["annotations"][1]["segment"][1] = serde_json::json!(duration + 5.0);
    // An id only: the name "filling" with id 7 would be refused as it is read (filling is
    // class 0), before `check` could list the id against num_classes.
    let a = &mut ann["database"]["train02"]["annotations"][0];
    a["label_id"] = serde_json::json!(7);
    a.as_object_mut().unwrap().remove("label");
    std::fs::write(&json_path, serde_json::to_string(&ann).unwrap()).unwrap();

    let out = xca().arg("check").arg(&cfg).arg("--quiet").assert().code(2);
    let err = stderr(&out);
    let problem = |needle: &[&str]| {
        assert!(
            err.lines()
                .any(|l| l.starts_with("problem:") && needle.iter().all(|n| l.contains(n))),
            "no problem line with {needle:?} in:\n{err}"
        )
    };
    problem(&["train01.npy", "[3, 100]"]);
    problem(&["train02.npy", "truncated"]);
    problem(&["val01.npy", "missing feature file"]);
    problem(&["test01.npy", "non-finite", "row 5"]);
    problem(&["'test01'", "outside the video"]);
    problem(&["'train02'", "label_id 7"]);
    assert!(err.lines().last().unwrap().contains("6 problem(s)"), "{err}");

    // 7. rows that disagree with duration·fps/feat_stride (the config says one row per frame)
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("max_seq_len: 32", "max_seq_len: 32, feat_stride: 1, num_frames: 1");
    std::fs::write(&cfg, text).unwrap();
    let err = stderr(&xca().arg("check").arg(&cfg).arg("--quiet").assert().code(2));
    assert!(err.contains("a row is a feature step, not a frame"), "{err}");
}

#[test]
fn check_without_data_points_at_synth() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.yaml");
    std::fs::write(
        &cfg,
        format!("dataset: {{json_file: {}/none.json}}\n", dir.path().display()),
    )
    .unwrap();
    let err = stderr(&xca().arg("check").arg(&cfg).assert().code(2));
    assert!(err.contains("none.json") && err.contains("xca synth"), "{err}");
}
