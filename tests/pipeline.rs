//! End to end on a tiny configuration (16×16 images, width 16, T 32): training is
//! deterministic, a resumed run ends with the same checkpoint as an uninterrupted one,
//! and `xca train` → `xca select` → `xca eval` work as the paper's README describes.

mod common;
use common::{setup, xca};

use std::path::Path;

use xca::config::Config;
use xca::dataset::{Annotations, load_split};
use xca::device::DeviceChoice;
use xca::train::trainer::{LogLine, TrainOptions, train};

fn run(cfg: &Config, run_dir: &Path, resume: bool, max_epochs: Option<usize>) -> Vec<LogLine> {
    let ann = Annotations::load(&cfg.dataset.json_file).unwrap();
    let data = load_split(cfg, &ann, &cfg.train_split, |_| {}).unwrap();
    let opts = TrainOptions {
        run_dir: run_dir.to_path_buf(),
        device: DeviceChoice::Cpu.device().unwrap(),
        parallel: Vec::new(),
        seed: 11,
        resume,
        log_every: 1,
        quiet: true,
        max_epochs_this_run: max_epochs,
    };
    train(cfg, &data, &opts, |_| {}).unwrap();
    std::fs::read_to_string(run_dir.join("log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn losses(log: &[LogLine]) -> Vec<(usize, f64, f64, Option<f64>)> {
    log.iter()
        .filter(|l| l.kind == "step")
        .map(|l| (l.step, l.cls_loss, l.reg_loss, l.con_loss))
        .collect()
}

#[test]
fn same_seed_gives_identical_losses_and_resume_gives_the_same_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config::load(&setup(dir.path(), 3)).unwrap().config;
    assert_eq!(cfg.total_epochs(), 3);

    let a = run(&cfg, &dir.path().join("a"), false, None);
    let b = run(&cfg, &dir.path().join("b"), false, None);
    let (la, lb) = (losses(&a), losses(&b));
    assert_eq!(la.len(), 3 * 2, "2 iterations per epoch, every step logged");
    assert!(la.iter().all(|l| l.1.is_finite() && l.2.is_finite()));
    assert_eq!(la, lb, "two runs with the same seed must log identical losses");
    // The contrastive term runs in even (0-based) epochs only.
    assert!(
        a.iter()
            .any(|l| l.kind == "step" && l.epoch == 1 && l.con_loss.is_some())
    );
    assert!(a.iter().all(|l| !(l.epoch == 2 && l.con_loss.is_some())));

    // Interrupted after one epoch, then resumed: same log and same final weights.
    let c_dir = dir.path().join("c");
    run(&cfg, &c_dir, false, Some(1));
    // As if killed during epoch 2: a step of the unfinished epoch is already in the log.
    let mut log = std::fs::read_to_string(c_dir.join("log.jsonl")).unwrap();
    log.push_str(&serde_json::to_string(&a.iter().find(|l| l.epoch == 2).unwrap()).unwrap());
    log.push('\n');
    std::fs::write(c_dir.join("log.jsonl"), log).unwrap();
    assert!(!c_dir.join("epoch_003.safetensors").exists());
    // Resuming with another seed is refused, naming both, and changes nothing.
    let log_before = std::fs::read(c_dir.join("log.jsonl")).unwrap();
    let ann = Annotations::load(&cfg.dataset.json_file).unwrap();
    let data = load_split(&cfg, &ann, &cfg.train_split, |_| {}).unwrap();
    let other = TrainOptions {
        run_dir: c_dir.clone(),
        device: DeviceChoice::Cpu.device().unwrap(),
        parallel: Vec::new(),
        seed: 12,
        resume: true,
        log_every: 1,
        quiet: true,
        max_epochs_this_run: None,
    };
    let err = train(&cfg, &data, &other, |_| {})
        .expect_err("another seed")
        .to_string();
    assert!(
        err.contains("seed 11") && err.contains("seed 12") && err.contains("--seed 11"),
        "{err}"
    );
    assert_eq!(std::fs::read(c_dir.join("log.jsonl")).unwrap(), log_before);
    assert!(!c_dir.join("epoch_002.safetensors").exists());
    let c = run(&cfg, &c_dir, true, None);
    assert_eq!(losses(&c), la, "a resumed run must continue exactly where it stopped");
    for epoch in [2, 3] {
        let name = format!("epoch_{epoch:03}.safetensors");
        let wa = xca::model::read_tensor_file(&dir.path().join("a").join(&name), None).unwrap();
        let wc = xca::model::read_tensor_file(&c_dir.join(&name), None).unwrap();
        assert_eq!(wa.len(), wc.len());
        for (key, a) in &wa {
            let (a, c) = (
                a.clone().try_into_vec::<f32>().unwrap(),
                wc[key].clone().try_into_vec::<f32>().unwrap(),
            );
            assert!(
                a == c,
                "{name}: tensor {key} differs between the uninterrupted and the resumed run"
            );
        }
    }
    // Only the last save_last_epochs checkpoints are written.
    assert!(!dir.path().join("a/epoch_001.safetensors").exists());
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("a/epoch_003.json")).unwrap()).unwrap();
    assert_eq!(meta["epoch"], 3);
    assert_eq!(meta["weights"], "ema");

    // A different seed gives different losses.
    let ann = Annotations::load(&cfg.dataset.json_file).unwrap();
    let data = load_split(&cfg, &ann, &cfg.train_split, |_| {}).unwrap();
    let opts = TrainOptions {
        run_dir: dir.path().join("d"),
        device: DeviceChoice::Cpu.device().unwrap(),
        parallel: Vec::new(),
        seed: 12,
        resume: false,
        log_every: 1,
        quiet: true,
        max_epochs_this_run: Some(1),
    };
    train(&cfg, &data, &opts, |_| {}).unwrap();
    let d: Vec<LogLine> = std::fs::read_to_string(dir.path().join("d/log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_ne!(losses(&d)[0], la[0]);
}

#[test]
fn train_select_eval_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path(), 2);
    xca()
        .args(["train", config.to_str().unwrap(), "--output", "t", "--quiet"])
        .assert()
        .success();
    let run = dir.path().join("ckpt/tiny_t");
    for f in [
        "config.yaml",
        "log.jsonl",
        "epoch_001.safetensors",
        "epoch_002.safetensors",
        "state/state.json",
    ] {
        assert!(run.join(f).exists(), "{f} missing");
    }
    // A second train into the same folder without --resume is refused.
    let out = xca()
        .args(["train", config.to_str().unwrap(), "--output", "t", "--quiet"])
        .assert()
        .code(2);
    let err = String::from_utf8_lossy(&out.get_output().stderr).to_string();
    assert!(err.contains("--resume"), "{err}");

    let sel = dir.path().join("select.json");
    let out = xca()
        .args([
            "val_test",
            config.to_str().unwrap(),
            "--output",
            "t",
            "--quiet",
            "--json",
        ])
        .arg(&sel)
        .assert()
        .success();
    let stdout = String::from_utf8_lossy(&out.get_output().stdout).to_string();
    assert!(stdout.contains("Chosen: epoch"), "{stdout}");
    assert!(
        stdout.contains("paper protocol") && stdout.contains("full ActivityNet protocol"),
        "{stdout}"
    );
    let s: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&sel).unwrap()).unwrap();
    assert_eq!(s["val"].as_array().unwrap().len(), 2);
    let chosen = s["chosen_epoch"].as_u64().unwrap();
    assert!(chosen == 1 || chosen == 2);
    for key in ["test", "test_full"] {
        assert_eq!(s[key]["mAP"].as_array().unwrap().len(), 5);
        let m = s[key]["average_mAP"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&m));
    }

    // eval with only a checkpoint reads the run folder's config; both forms agree.
    let ckpt = run.join(format!("epoch_{chosen:03}.safetensors"));
    let ev = dir.path().join("eval.json");
    let dets = dir.path().join("dets.json");
    xca()
        .arg("eval")
        .arg(&ckpt)
        .arg("--quiet")
        .arg("--json")
        .arg(&ev)
        .arg("--detections")
        .arg(&dets)
        .assert()
        .success();
    let e: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&ev).unwrap()).unwrap();
    assert_eq!(
        e["paper"], s["test"],
        "eval of the chosen checkpoint reproduces select's test numbers"
    );
    assert_eq!(e["full"], s["test_full"]);
    // The CONFIG CKPT form, with the checkpoint named as the paper's README writes it
    // (no extension), gives the same numbers.
    let ev2 = dir.path().join("eval2.json");
    xca()
        .arg("eval")
        .arg(&config)
        .arg(run.join(format!("epoch_{chosen:03}")))
        .args(["--quiet", "--json"])
        .arg(&ev2)
        .assert()
        .success();
    let e2: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&ev2).unwrap()).unwrap();
    assert_eq!(e2, e);
    let out = xca()
        .arg("eval")
        .arg(&config)
        .arg(run.join("epoch_009"))
        .arg("--quiet")
        .assert()
        .code(2);
    let err = String::from_utf8_lossy(&out.get_output().stderr).to_string();
    assert!(err.contains("epoch_009 does not exist"), "{err}");
    // The detections file scores to the same numbers with `xca score`.
    let sc = dir.path().join("score.json");
    xca()
        .args(["score", "--gt"])
        .arg(dir.path().join("data/annotations/vessel.json"))
        .arg("--pred")
        .arg(&dets)
        .arg("--json")
        .arg(&sc)
        .assert()
        .success();
    let scored: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&sc).unwrap()).unwrap();
    let (a, b) = (
        scored["average_mAP"].as_f64().unwrap(),
        e["full"]["average_mAP"].as_f64().unwrap(),
    );
    assert!((a - b).abs() < 1e-6, "score {a} vs eval {b}");

    // A checkpoint that does not fit the config is refused with its name.
    let other = dir.path().join("other.yaml");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "embd_dim: 16, fpn_dim: 16, head_dim: 16",
        "embd_dim: 32, fpn_dim: 32, head_dim: 32",
    );
    std::fs::write(&other, text).unwrap();
    let out = xca().arg("eval").arg(&other).arg(&ckpt).arg("--quiet").assert().code(2);
    let err = String::from_utf8_lossy(&out.get_output().stderr).to_string();
    assert!(err.contains("epoch_") && err.contains("does not fit"), "{err}");
}

#[test]
fn a_live_lock_refuses_a_second_trainer() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path(), 2);
    let run = dir.path().join("ckpt/tiny_busy");
    // This test process holds the run folder's lock, as a running trainer would.
    let _held = xca::fsio::RunLock::acquire(&run).unwrap();
    let out = xca()
        .args(["train", config.to_str().unwrap(), "--output", "busy", "--quiet"])
        .assert()
        .code(2);
    let err = String::from_utf8_lossy(&out.get_output().stderr).to_string();
    assert!(
        err.contains("in use by another xca process") && err.contains(&std::process::id().to_string()),
        "{err}"
    );
    assert!(
        !run.join("log.jsonl").exists(),
        "nothing may be written into a locked run folder"
    );
}

#[test]
fn a_non_finite_loss_stops_training_naming_the_step_and_videos_and_keeps_the_last_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path(), 3);
    let cfg = config.to_str().unwrap();
    // 4 training videos, batch 2: 2 steps per epoch; step 5 is the second step of epoch 3.
    let out = xca()
        .args(["train", cfg, "--output", "nan", "--quiet", "--log-every", "1"])
        .env("XCA_TEST_NAN_STEP", "5")
        .assert()
        .code(1);
    let err = String::from_utf8_lossy(&out.get_output().stderr).to_string();
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("xca: error:")).collect();
    assert_eq!(errors.len(), 1, "one error line: {err}");
    assert!(errors[0].contains("non-finite loss at epoch 3, step 5"), "{err}");
    assert!(errors[0].contains("(cls NaN, reg NaN, contrastive NaN)"), "{err}");
    assert!(err.contains("videos of the batch: 'train"), "{err}");
    assert!(
        err.contains("Nothing of epoch 3 was saved; the state after epoch 2 is kept"),
        "{err}"
    );
    let run = dir.path().join("ckpt/tiny_nan");
    // Epoch 2 finished cleanly: its checkpoint and state stay, and the checkpoint loads; the
    // log ends before the bad step.
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("state/state.json")).unwrap()).unwrap();
    assert_eq!(state["epochs_done"], 2);
    assert!(!run.join("epoch_003.safetensors").exists());
    xca()
        .args(["eval", run.join("epoch_002.safetensors").to_str().unwrap()])
        .assert()
        .success();
    let log = std::fs::read_to_string(run.join("log.jsonl")).unwrap();
    let last: serde_json::Value = serde_json::from_str(log.lines().last().unwrap()).unwrap();
    assert_eq!(last["step"], 4, "the log ends with the last good step: {log}");
    assert!(!log.contains("NaN"), "{log}");
    // The run resumes from the last good state without the fault.
    xca()
        .args(["train", cfg, "--output", "nan", "--quiet", "--resume"])
        .assert()
        .success();
    assert!(run.join("epoch_003.safetensors").exists());
}
