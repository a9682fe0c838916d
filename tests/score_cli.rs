//! `xca score` end to end on small hand-computed fixtures (tests/data/score).
//!
//! The fixture (test split: v1, v2; v3 is train; v9 is in no split):
//! - filling: GT v1 [1,3] (+ a duplicate [1.0005,3] that must be dropped), v2 [2,4];
//!   detections v1 [1,3] 0.9, v2 [2,3.3] 0.6 (tIoU 0.65), v2 [2,4] 0.5, v1 [5,9] 0.3.
//! - washout: GT v1 [3,7], v2 [4,6]; detections v9 [0,1] 0.99 (FP), v2 [4,6] 0.95, v1 [3,7] 0.8.
//!
//! Full protocol. washout: FP, TP, TP → AP = ½·⅔ + ½·⅔ = ⅔ at every tIoU.
//! filling, tIoU ≤ 0.6: TP, TP, FP (GT taken), FP → AP 1; tIoU 0.7: TP, FP, TP, FP →
//! precision [1, ½, ⅔, ½], recall [½, ½, 1, 1] → AP ½ + ½·⅔ = ⅚.
//! mAP = [⅚, ⅚, ⅚, ⅚, ¾], average 49/60. Recall@1x at 0.7: filling ½, washout 1 → ¾;
//! Recall@5x at 0.7: 1 ([2,4] is in v2's top 5). Below 0.7 everything is 1.
//!
//! Paper protocol drops v1 [5,9] and v2 [2,4]: filling at 0.7 is TP, FP → ½;
//! mAP[0.7] = 7/12, average 47/60, Recall@5x at 0.7 = ¾.
//!
//! Keyframes (both protocols): v1 (fps 10, 100 frames) perfect: 10/30/70.
//! v2 (80 frames): truth 20/40/60, prediction 20/⌊(33+40)/2⌋=36/60 → deviations 0, 4, 0.
//! Frames of v2: label 0: P=R=F=1; label 1: P 1, R 16/20, F 32/36; label 2: P 20/24, R 1,
//! F 40/44; accuracy 76/80. Over the two videos: P 35/36, R 29/30, F 287/297,
//! micro 0.975, AD ⅔; the six deviations have mean ⅔ and sd √(8/3), so
//! CI = ⅔ + t(0.95, 5)·√(8/3)/√6 = ⅔·(1 + 2.015048373333024).

use assert_cmd::cargo::cargo_bin_cmd;
use predicates::prelude::*;
use serde_json::Value;

fn data(name: &str) -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/score/").to_string() + name
}

fn score_json(pred: &str, extra: &[&str]) -> (Value, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.json");
    let assert = cargo_bin_cmd!("xca")
        .args(["score", "--gt", &data("gt.json"), "--pred", &data(pred), "--json"])
        .arg(&out)
        .args(extra)
        .assert()
        .success();
    let stdout = String::from_utf8(assert.get_output().stdout.clone()).unwrap();
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    (v, stdout)
}

fn nums(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

fn assert_close(got: &[f64], want: &[f64]) {
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() < 1e-9, "{got:?} vs {want:?}");
    }
}

fn check_keyframes(k: &Value) {
    let keys: Vec<&str> = k.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "P",
            "R",
            "F",
            "microP",
            "microR",
            "microF",
            "AD",
            "CI_upper",
            "n_videos",
            "n_fallback"
        ]
    );
    let f = |key: &str| k[key].as_f64().unwrap();
    assert_close(
        &[f("P"), f("R"), f("F"), f("microP"), f("microR"), f("microF"), f("AD")],
        &[35.0 / 36.0, 29.0 / 30.0, 287.0 / 297.0, 0.975, 0.975, 0.975, 2.0 / 3.0],
    );
    assert_close(&[f("CI_upper")], &[2.0 / 3.0 * (1.0 + 2.015048373333024)]);
    assert_eq!(k["n_videos"], 2);
    assert_eq!(k["n_fallback"], 0);
}

#[test]
fn full_protocol_matches_hand_computation() {
    let (v, stdout) = score_json("pred_anet.json", &[]);
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "split",
            "tious",
            "mAP",
            "average_mAP",
            "recall1x",
            "recall5x",
            "keyframes",
            "suspect",
            "notes"
        ]
    );
    assert_eq!(v["split"], "test");
    // v9 is not in the ground-truth file.
    assert_eq!(v["suspect"]["unknown_videos"], 1);
    assert_close(&nums(&v["tious"]), &[0.3, 0.4, 0.5, 0.6, 0.7]);
    assert_close(&nums(&v["mAP"]), &[5.0 / 6.0, 5.0 / 6.0, 5.0 / 6.0, 5.0 / 6.0, 0.75]);
    assert_close(&[v["average_mAP"].as_f64().unwrap()], &[49.0 / 60.0]);
    assert_close(&nums(&v["recall1x"]), &[1.0, 1.0, 1.0, 1.0, 0.75]);
    assert_close(&nums(&v["recall5x"]), &[1.0; 5]);
    check_keyframes(&v["keyframes"]);

    // the printed tables: percent with two decimals, the paper's layout
    assert!(stdout.contains("| 0.3 | 0.4 | 0.5 | 0.6 | 0.7 | Avg |"), "{stdout}");
    assert!(
        stdout.contains("| pred_anet mAP (%) | 83.33 | 83.33 | 83.33 | 83.33 | 75.00 | 81.67 |"),
        "{stdout}"
    );
    assert!(
        stdout.contains("| pred_anet | 0.9722 | 0.9667 | 0.9663 | 0.67 | 0–2.01 |"),
        "{stdout}"
    );
    assert!(stdout.contains("Protocol: full"), "{stdout}");
    // the detection for a video outside the split is reported
    assert!(
        stdout.contains("Note: 1 detections in 1 videos that are not in split \"test\""),
        "{stdout}"
    );
}

#[test]
fn actionformer_layout_gives_the_same_numbers() {
    let (a, _) = score_json("pred_anet.json", &[]);
    let (b, stdout) = score_json("pred_actionformer.json", &[]);
    assert_eq!(a, b);
    assert!(stdout.contains("ActionFormer layout"), "{stdout}");
}

#[test]
fn paper_protocol_keeps_top1_and_says_so() {
    let (v, stdout) = score_json("pred_anet.json", &["--protocol", "paper"]);
    assert_close(
        &nums(&v["mAP"]),
        &[5.0 / 6.0, 5.0 / 6.0, 5.0 / 6.0, 5.0 / 6.0, 7.0 / 12.0],
    );
    assert_close(&[v["average_mAP"].as_f64().unwrap()], &[47.0 / 60.0]);
    assert_close(&nums(&v["recall5x"]), &[1.0, 1.0, 1.0, 1.0, 0.75]);
    check_keyframes(&v["keyframes"]);
    assert!(stdout.contains("Protocol: paper"), "{stdout}");
    assert!(
        stdout.contains("kept the top-1 detection per class per video (5 of 7 detections)"),
        "{stdout}"
    );
}

#[test]
fn split_is_case_insensitive() {
    let (v, _) = score_json("pred_anet.json", &["--split", "TEST"]);
    assert_eq!(v["split"], "TEST");
    assert_close(&[v["average_mAP"].as_f64().unwrap()], &[49.0 / 60.0]);
}

fn fails_with(pred: &str, extra: &[&str], message: &str) {
    cargo_bin_cmd!("xca")
        .args(["score", "--gt", &data("gt.json"), "--pred", &data(pred)])
        .args(extra)
        .assert()
        .code(2)
        .stdout(predicate::str::is_empty())
        .stderr(predicate::str::contains(message))
        .stderr(predicate::function(|s: &str| s.trim_end().lines().count() == 1));
}

#[test]
fn bad_files_give_one_line_errors() {
    fails_with(
        "pred_nan.json",
        &[],
        "pred_nan.json: results[\"v1\"][1].score: non-finite value NaN",
    );
    fails_with(
        "pred_reversed.json",
        &[],
        "pred_reversed.json: results[\"v2\"][0].segment: end 2 is before start 4",
    );
    fails_with(
        "pred_unknown_label.json",
        &[],
        "pred_unknown_label.json: results[\"v1\"][0].label: label \"filing\" is not in the ground truth",
    );
    fails_with(
        "pred_neither.json",
        &[],
        "pred_neither.json: neither the ActivityNet layout",
    );
    fails_with("gt.json", &[], "looks like a ground-truth file");
    fails_with(
        "pred_anet.json",
        &["--split", "validation"],
        "gt.json: split \"validation\" has no ground-truth segments (subsets in the file: test, train)",
    );
    fails_with("no_such_file.json", &[], "no_such_file.json");
}

#[test]
fn help_documents_the_formats() {
    cargo_bin_cmd!("xca")
        .args(["score", "--help"])
        .assert()
        .success()
        .stdout(predicate::str::contains("--protocol").and(predicate::str::contains("ActionFormer")));
}

#[test]
fn impossible_detections_are_counted_and_refused_under_strict() {
    // One detection each: a video not in the ground truth (ghost), a class id it lacks (7),
    // a segment leaving its video ([-1e308, 1e308]).
    let (v, stdout) = score_json("pred_suspect.json", &[]);
    assert_eq!(v["suspect"]["unknown_videos"], 1, "{v}");
    assert_eq!(v["suspect"]["unknown_labels"], 1, "{v}");
    assert_eq!(v["suspect"]["outside_video"], 1, "{v}");
    for want in [
        "1 detections for videos that are not in the ground-truth file",
        "1 detections with a class id that the ground-truth file does not have",
        "1 detections whose segment leaves its video",
    ] {
        assert!(stdout.contains(want), "{stdout}");
        assert!(
            v["notes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|n| n.as_str().unwrap().contains(want)),
            "{v}"
        );
    }
    // A clean file has none (v9 of pred_anet.json is in no split but also not in the file).
    let (clean, _) = score_json("pred_actionformer.json", &[]);
    assert_eq!(clean["suspect"]["outside_video"], 0);
    assert_eq!(clean["suspect"]["unknown_labels"], 0);
    fails_with(
        "pred_suspect.json",
        &["--strict"],
        "pred_suspect.json (--strict): 1 detections for videos that are not in the ground-truth file; 1 detections with a class id",
    );
}

#[test]
fn an_output_that_is_an_input_is_refused_and_left_intact() {
    let dir = tempfile::tempdir().unwrap();
    let pred = dir.path().join("pred.json");
    std::fs::copy(data("pred_anet.json"), &pred).unwrap();
    let before = std::fs::read(&pred).unwrap();
    cargo_bin_cmd!("xca")
        .args(["score", "--gt", &data("gt.json"), "--pred"])
        .arg(&pred)
        .arg("--json")
        .arg(dir.path().join(".").join("pred.json"))
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "is the --pred file: refusing to overwrite an input",
        ));
    assert_eq!(std::fs::read(&pred).unwrap(), before);
}

#[test]
fn unreadable_kinds_of_file_are_refused_at_once() {
    // A device, a folder: refused by type, before any byte is read (/dev/zero never ends).
    for (gt, want) in [("/dev/zero", "character device"), ("/", "folder")] {
        cargo_bin_cmd!("xca")
            .args(["score", "--gt", gt, "--pred", &data("pred_anet.json")])
            .assert()
            .code(2)
            .stderr(predicate::str::contains(want))
            .stderr(predicate::function(|s: &str| s.trim_end().lines().count() == 1));
    }
}
