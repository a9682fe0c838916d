//! `xca synth` end to end with a tiny dataset.

use std::fs;

use assert_cmd::Command;
use predicates::prelude::*;

fn xca() -> Command {
    Command::cargo_bin("xca").unwrap()
}

#[test]
fn synth_writes_the_layout_and_refuses_to_overwrite_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("data/vessel");
    let args = ["synth", "--train", "2", "--val", "1", "--test", "1", "--out"];
    xca()
        .args(args)
        .arg(&out)
        .args(["--seed", "3"])
        .assert()
        .success()
        .stdout(predicate::str::contains("wrote 4 videos (2+1+1"));

    let mut files: Vec<String> = fs::read_dir(out.join("image"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files, ["test01.npy", "train01.npy", "train02.npy", "val01.npy"]);
    let json: serde_json::Value =
        serde_json::from_slice(&fs::read(out.join("annotations/vessel.json")).unwrap()).unwrap();
    let db = json["database"].as_object().unwrap();
    assert_eq!(db.keys().collect::<Vec<_>>(), ["train01", "train02", "val01", "test01"]);
    assert_eq!(db["val01"]["subset"], "validation");
    // Each .npy starts with the npy magic and declares [T, 4096] float32.
    let npy = fs::read(out.join("image/train01.npy")).unwrap();
    assert_eq!(&npy[..6], b"\x93NUMPY");
    let header = String::from_utf8_lossy(&npy[10..128]);
    assert!(
        header.contains("'descr': '<f4'") && header.contains("'fortran_order': False") && header.contains(", 4096, )"),
        "{header}"
    );
    let before = fs::read(out.join("annotations/vessel.json")).unwrap();

    // A second run without --force is refused (exit 2) and changes nothing.
    xca()
        .args(args)
        .arg(&out)
        .args(["--seed", "4"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--force"));
    assert_eq!(fs::read(out.join("annotations/vessel.json")).unwrap(), before);

    // With --force it is replaced, and the new seed gives different data.
    xca()
        .args(args)
        .arg(&out)
        .args(["--force", "--seed", "4"])
        .assert()
        .success();
    assert_ne!(fs::read(out.join("annotations/vessel.json")).unwrap(), before);
    // No temporary folders are left beside the dataset.
    assert_eq!(fs::read_dir(out.parent().unwrap()).unwrap().count(), 1);
}

#[test]
fn synth_draws_a_preview_and_rejects_unknown_preview_videos() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("vessel");
    let png = dir.path().join("preview.png");
    xca()
        .args([
            "synth",
            "--train",
            "1",
            "--val",
            "1",
            "--test",
            "0",
            "--json",
            "--preview",
        ])
        .arg(&png)
        .args(["--preview-video", "val01", "--out"])
        .arg(&out)
        .assert()
        .success()
        .stdout(predicate::str::contains("\"total_rows\""));
    let bytes = fs::read(&png).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");

    let out2 = dir.path().join("other");
    xca()
        .args(["synth", "--train", "1", "--val", "0", "--test", "0", "--preview"])
        .arg(&png)
        .args(["--preview-video", "test07", "--out"])
        .arg(&out2)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("no video 'test07'"));
    // Refused before anything was written.
    assert!(!out2.exists());
}

#[test]
fn synth_rejects_an_empty_dataset() {
    let dir = tempfile::tempdir().unwrap();
    xca()
        .args(["synth", "--train", "0", "--val", "0", "--test", "0", "--out"])
        .arg(dir.path().join("x"))
        .assert()
        .code(2)
        .stderr(predicate::str::contains("at least one video"));
}
