//! `xca bench` on a tiny config: every piece runs, and the JSON has the schema.

mod common;

use common::{setup, xca};

#[test]
fn bench_times_every_piece_and_writes_the_json_schema() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = setup(dir.path(), 2);
    let out = dir.path().join("bench.json");
    xca()
        .args([
            "bench",
            cfg.to_str().unwrap(),
            "--iters",
            "2",
            "--warmup",
            "1",
            "--long-t",
            "1000",
            "--json",
        ])
        .arg(&out)
        .assert()
        .success()
        .stdout(predicates::str::contains("training step"))
        .stdout(predicates::str::contains("ConvLSTM fwd+bwd"))
        .stdout(predicates::str::contains("inference T=1000"))
        .stdout(predicates::str::contains("inference T=1000 in its own process"));
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(v["config"], cfg.to_str().unwrap());
    assert!(v["device"].as_str().unwrap().starts_with("cpu"));
    // The counted runs: no kernel launches on the CPU back-end; a training step reads back
    // only the clip scale (flex reads it to scale in place), inference its outputs.
    assert_eq!(v["device_name"], serde_json::Value::Null);
    assert_eq!(v["convlstm_path"], "fused");
    let counts = &v["counts"];
    for piece in ["train_step", "infer_t128", "infer_t512", "convlstm"] {
        assert_eq!(counts[piece]["launches"], serde_json::Value::Null, "{piece}: {counts}");
    }
    assert_eq!(counts["train_step"]["host_reads"], 1, "{counts}");
    assert_eq!(counts["convlstm"]["host_reads"], 0, "{counts}");
    assert!(counts["infer_t128"]["host_reads"].as_u64().unwrap() >= 1, "{counts}");
    assert_eq!(v["train_step_launches_by_kernel"], serde_json::json!([]));
    assert_eq!(v["train_step_launches_by_phase"], serde_json::json!([]));
    for key in [
        "train_step_ms",
        "infer_ms_t128",
        "infer_ms_t512",
        "convlstm_ms",
        "infer_ms_long",
    ] {
        let s = &v[key];
        let (med, min, max) = (
            s["median"].as_f64().unwrap(),
            s["min"].as_f64().unwrap(),
            s["max"].as_f64().unwrap(),
        );
        assert!(min > 0.0 && min <= med && med <= max, "{key}: {s}");
    }
    // A longer video costs more than a short one of the same model.
    assert!(v["infer_ms_t512"]["median"].as_f64().unwrap() > v["infer_ms_t128"]["min"].as_f64().unwrap());
    assert!(v["peak_rss_mb"].as_f64().unwrap() > 1.0);
    assert!(v["train_step_cpu_ms"]["median"].as_f64().unwrap() > 0.0);
    // The long video ran in a child process: its own peak memory, its own timing.
    assert_eq!(v["infer_long_t"], 1000);
    assert!(v["peak_rss_mb_long"].as_f64().unwrap() > 1.0);
    assert!(v["infer_cpu_ms_long"]["median"].as_f64().unwrap() > 0.0);
    assert!(v["infer_ms_long"]["median"].as_f64().unwrap() > v["infer_ms_t128"]["min"].as_f64().unwrap());
}

#[test]
fn bench_json_to_stdout_is_only_json() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = setup(dir.path(), 2);
    let out = xca()
        .args([
            "bench",
            cfg.to_str().unwrap(),
            "--iters",
            "1",
            "--warmup",
            "0",
            "--long-t",
            "0",
            "--json",
            "-",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["train_step_ms"]["median"].as_f64().unwrap() > 0.0);
    // `--long-t 0` skips the long inference.
    assert!(v["infer_ms_long"].is_null() && v["peak_rss_mb_long"].is_null());
}

#[test]
fn bench_of_a_missing_config_is_an_input_error() {
    xca()
        .args(["bench", "/nonexistent/x.yaml"])
        .assert()
        .code(2)
        .stderr(predicates::str::contains("/nonexistent/x.yaml"));
}
