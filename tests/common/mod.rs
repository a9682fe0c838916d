//! Shared by the end-to-end tests: a tiny synthetic dataset (16×16 maps) and a tiny STA-IPCon
//! config (every component on, width 16, 3 levels, max_seq_len 32) that trains in seconds.

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use xca::synth::{SynthConfig, generate};

/// Write the dataset under `dir/data` and `dir/tiny.yaml` for `epochs` epochs in all (one of
/// them warm-up); the run folders go to `dir/ckpt`.
pub fn setup(dir: &Path, epochs: usize) -> PathBuf {
    let synth = SynthConfig {
        train: 4,
        val: 2,
        test: 2,
        seed: 3,
        side: 16,
        min_frames: 48,
        max_frames: 120,
        ..SynthConfig::default()
    };
    generate(&synth, &dir.join("data"), false).unwrap();
    let yaml = format!(
        "dataset: {{json_file: {d}/data/annotations/vessel.json, feat_folder: {d}/data/image, input_dim: 256, max_seq_len: 32}}\n\
         model: {{backbone_arch: [2, 1, 2], regression_range: [[0, 4], [4, 8], [8, 10000]], embd_dim: 16, fpn_dim: 16, head_dim: 16,\n\
         n_head: 2, SpAtten: True, TeAtten: True, SelfAtten: True, pretrain: True, random_patch: True}}\n\
         opt: {{learning_rate: 0.001, epochs: {e}, warmup_epochs: 1}}\n\
         output_folder: {d}/ckpt\n\
         xca: {{save_last_epochs: 2}}\n",
        d = dir.display(),
        e = epochs - 1
    );
    let path = dir.join("tiny.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

/// The `xca` binary under test.
pub fn xca() -> Command {
    Command::cargo_bin("xca").unwrap()
}
