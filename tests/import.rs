//! Using the original's trained checkpoints (issue 7): `xca import` of
//! ../shared/parity/epoch_050.pth.tar (the reduced model of ../shared/parity/README.md, in
//! exactly the original's format) reproduces the original's forward outputs; the unused
//! tensors are reported by group; malformed checkpoints (a tensor removed, a wrong shape, a
//! wrong config, a truncated file) fail with one line naming the file and the tensor;
//! `xca eval` takes the `.pth.tar` directly.
//!
//! `cargo test --test import -- --nocapture` prints the largest differences.

#![allow(clippy::disallowed_methods)] // tests read tensors directly

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use assert_cmd::Command;
use burn::module::Module;
use burn::tensor::{Bool, Tensor, TensorData};
use xca::config::Config;
use xca::model::read_tensor_file;
use xca::synth::{SynthConfig, generate};
use xca::train::checkpoint;

#[macro_use]
#[path = "common/parity.rs"]
mod parity_fixtures;

fn fixture(name: &str) -> PathBuf {
    parity_fixtures::file(name)
}

fn xca() -> Command {
    Command::cargo_bin("xca").unwrap()
}

/// The parity README's model (the vessel config with widths 32, 4 heads, random_patch off),
/// its dataset at `data` (which need not exist for `xca import`).
fn write_config(dir: &Path, data: &Path, embd: usize) -> PathBuf {
    let yaml = format!(
        "dataset: {{json_file: {d}/annotations/vessel.json, feat_folder: {d}/image, input_dim: 4096, max_seq_len: 128}}\n\
         model: {{fpn_type: identity, n_mha_win_size: 4, embd_dim: {embd}, fpn_dim: {embd}, head_dim: {embd}, n_head: 4,\n\
         SpAtten: True, TeAtten: True, SelfAtten: True, pretrain: True, random_patch: False}}\n\
         output_folder: {o}/ckpt\n",
        d = data.display(),
        o = dir.display(),
    );
    let path = dir.join(format!("parity_{embd}.yaml"));
    std::fs::write(&path, yaml).unwrap();
    path
}

fn stderr_of(out: &assert_cmd::assert::Assert) -> String {
    String::from_utf8_lossy(&out.get_output().stderr).to_string()
}

fn values(data: &TensorData) -> Vec<f32> {
    data.clone().convert::<f32>().try_to_vec::<f32>().unwrap()
}

/// Largest |a − b| between a network output and the fixture tensor of the same name.
fn max_abs_diff(name: &str, t: &Tensor<3>, fx: &HashMap<String, TensorData>) -> f32 {
    let expected = &fx[name];
    assert_eq!(t.dims().to_vec(), expected.shape().to_vec(), "{name}: shape");
    let actual = values(&t.clone().into_data());
    actual
        .iter()
        .zip(values(expected))
        .map(|(a, e)| (a - e).abs())
        .fold(0f32, f32::max)
}

#[test]
fn imported_checkpoint_reproduces_the_original_forward() {
    parity_or_skip!();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &dir.path().join("data"), 32);
    let out_ckpt = dir.path().join("epoch_050.safetensors");
    let summary = dir.path().join("summary.json");
    let out = xca()
        .arg("import")
        .arg(fixture("epoch_050.pth.tar"))
        .arg("--config")
        .arg(&config)
        .arg("--out")
        .arg(&out_ckpt)
        .arg("--json")
        .arg(&summary)
        .assert()
        .success();
    let stdout = String::from_utf8_lossy(&out.get_output().stdout).to_string();
    println!("{stdout}");
    assert!(stdout.contains("loaded into the network: 253"), "{stdout}");
    assert!(
        stdout.contains("ignored as unused by the original's forward: 174"),
        "{stdout}"
    );

    // 427 tensors under state_dict_ema: the 253 of weights.safetensors, plus the unused ones.
    let s: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
    assert_eq!(s["top_level_key"], "state_dict_ema");
    assert_eq!(s["tensors_in_file"], 427);
    assert_eq!(s["loaded"], 253);
    let groups: HashMap<String, Vec<String>> = s["unused"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            let keys: Vec<String> = g["keys"]
                .as_array()
                .unwrap()
                .iter()
                .map(|k| k.as_str().unwrap().to_string())
                .collect();
            assert_eq!(g["count"].as_u64().unwrap() as usize, keys.len());
            (g["group"].as_str().unwrap().to_string(), keys)
        })
        .collect();
    let group = |prefix: &str| -> &Vec<String> {
        groups
            .iter()
            .find(|(k, _)| k.starts_with(prefix))
            .unwrap_or_else(|| panic!("no group '{prefix}': {groups:?}"))
            .1
    };
    let conv2 = group("conv_2 maps");
    assert_eq!(conv2.len(), 4);
    assert!(
        conv2.iter().all(|k| k.starts_with("backbone.embd.0.conv_2.")),
        "{conv2:?}"
    );
    let lstm = group("ConvLSTMs of masked convs other than backbone.embd.0");
    // 28 masked convs (embd.1 and 3 per transformer block × 9) × 3 cells × (weight, bias).
    assert_eq!(lstm.len(), 168);
    assert!(lstm.contains(&"backbone.embd.1.lstm_op.cell_list.0.conv.weight".to_string()));
    assert!(lstm.contains(&"backbone.branch.4.attn.value_conv.lstm_op.cell_list.2.conv.bias".to_string()));
    assert!(lstm.iter().all(|k| !k.starts_with("backbone.embd.0.")));
    assert_eq!(group("BatchNorm step counters").len(), 2);
    assert_eq!(groups.len(), 3, "{:?}", groups.keys());

    // The sidecar records the epoch from the file name, the EMA weights and the config.
    let meta = checkpoint::read_meta(&out_ckpt).unwrap();
    assert_eq!(meta.epoch, 50);
    assert_eq!(meta.weights, "ema");
    let cfg = Config::load(&config).unwrap().config;
    assert_eq!(meta.config_hash, checkpoint::config_hash(&cfg));

    // xca's checkpoint, loaded back, gives the original's outputs.
    let dev = xca::device::DeviceChoice::Cpu.device().unwrap();
    let net = xca::config::adapt::network_config(&cfg).init(&dev).unwrap();
    let net = checkpoint::load(net, &out_ckpt).unwrap().valid();
    let fx = read_tensor_file(&fixture("forward.safetensors"), None).unwrap();
    let input: Tensor<3> = Tensor::from_data(fx["input"].clone().convert::<f32>(), &dev);
    let mask: Tensor<2, Bool> = Tensor::<2>::from_data(fx["mask"].clone().convert::<f32>(), &dev).greater_elem(0.5);
    let outputs = net.forward(input, mask, None).unwrap();
    assert_eq!(outputs.cls_logits.len(), 6);
    for l in 0..6 {
        for (kind, t) in [("cls_logits", &outputs.cls_logits[l]), ("offsets", &outputs.offsets[l])] {
            let name = format!("{kind}_l{l}");
            let d = max_abs_diff(&name, t, &fx);
            println!("{name:>14}  max abs diff {d:.3e}");
            assert!(d <= 1e-4, "{name}: max abs diff {d:e} exceeds 1e-4");
        }
    }
}

/// The fixture's tensors under their PyTorch names (with `module.`), as a safetensors file.
fn write_torch_safetensors(path: &Path, tensors: &HashMap<String, TensorData>) {
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(k, v)| {
            let dtype = match v.dtype() {
                burn::tensor::DType::I64 => safetensors::Dtype::I64,
                burn::tensor::DType::F32 => safetensors::Dtype::F32,
                other => panic!("{k}: unexpected dtype {other:?}"),
            };
            (
                k.clone(),
                safetensors::tensor::TensorView::new(dtype, v.shape().to_vec(), v.as_bytes()).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

fn pth_tensors() -> HashMap<String, TensorData> {
    xca::model::torch::read_torch_checkpoint(&fixture("epoch_050.pth.tar"))
        .unwrap()
        .0
}

#[test]
fn torch_named_safetensors_imports_like_the_archive() {
    parity_or_skip!();
    // The same state dict re-saved as safetensors (what `safetensors.torch.save_file` writes)
    // is accepted by `xca import` and gives the same xca checkpoint.
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &dir.path().join("data"), 32);
    let st = dir.path().join("epoch_050.safetensors");
    write_torch_safetensors(&st, &pth_tensors());
    xca()
        .arg("import")
        .arg(&st)
        .arg("--config")
        .arg(&config)
        .assert()
        .success();
    // The default output is next to the input; here it would be the input itself.
    let from_st = dir.path().join("epoch_050_xca.safetensors");
    assert!(from_st.exists());
    let from_pth = dir.path().join("from_pth.safetensors");
    xca()
        .arg("import")
        .arg(fixture("epoch_050.pth.tar"))
        .arg("--config")
        .arg(&config)
        .arg("--out")
        .arg(&from_pth)
        .assert()
        .success();
    let (a, b) = (
        read_tensor_file(&from_st, None).unwrap(),
        read_tensor_file(&from_pth, None).unwrap(),
    );
    assert_eq!(a.len(), b.len());
    for (k, v) in &a {
        assert_eq!(values(v), values(&b[k]), "{k}");
    }
    // An xca checkpoint is not imported again.
    let out = xca()
        .arg("import")
        .arg(&from_pth)
        .arg("--config")
        .arg(&config)
        .assert()
        .code(2);
    assert!(
        stderr_of(&out).contains("already an xca checkpoint"),
        "{}",
        stderr_of(&out)
    );
}

#[test]
fn a_removed_tensor_is_named() {
    parity_or_skip!();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &dir.path().join("data"), 32);
    let mut t = pth_tensors();
    assert!(t.remove("module.backbone.stem.1.attn.proj.bias").is_some());
    let st = dir.path().join("removed.safetensors");
    write_torch_safetensors(&st, &t);
    let out = xca()
        .arg("import")
        .arg(&st)
        .arg("--config")
        .arg(&config)
        .assert()
        .code(2);
    let err = stderr_of(&out);
    assert!(
        err.contains("removed.safetensors") && err.contains("backbone.stem.1.attn.proj.bias"),
        "{err}"
    );
    assert!(err.contains("1 tensor(s) missing or mismatched"), "{err}");
    assert!(
        !dir.path().join("removed_xca.safetensors").exists(),
        "nothing is written on failure"
    );
}

#[test]
fn a_wrong_shape_is_named() {
    parity_or_skip!();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &dir.path().join("data"), 32);
    let mut t = pth_tensors();
    // cls_head.cls_head.conv.weight [2, 32, 3] → [2, 32, 1] (the first tap only).
    let key = "module.cls_head.cls_head.conv.weight";
    let w = values(&t[key]);
    let first: Vec<f32> = w.chunks(3).map(|c| c[0]).collect();
    t.insert(key.to_string(), TensorData::new(first, [2, 32, 1]));
    let st = dir.path().join("reshaped.safetensors");
    write_torch_safetensors(&st, &t);
    let out = xca()
        .arg("import")
        .arg(&st)
        .arg("--config")
        .arg(&config)
        .assert()
        .code(2);
    let err = stderr_of(&out);
    assert!(err.contains("reshaped.safetensors"), "{err}");
    assert!(
        err.contains("tensor 'cls_head.cls_head.conv.weight' has shape [2, 32, 1], expected [2, 32, 3]"),
        "{err}"
    );
}

#[test]
fn a_wrong_config_lists_every_mismatch() {
    parity_or_skip!();
    // The 32-wide checkpoint against a 64-wide config: every width-dependent tensor is
    // listed (on stderr, one per line), and the one-line error spells out the first 20.
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &dir.path().join("data"), 64);
    let out = xca()
        .arg("import")
        .arg(fixture("epoch_050.pth.tar"))
        .arg("--config")
        .arg(&config)
        .assert()
        .code(2);
    let err = stderr_of(&out);
    let last = err.lines().last().unwrap();
    assert!(
        last.starts_with("xca: error: checkpoint ") && last.contains("epoch_050.pth.tar"),
        "{last}"
    );
    assert!(
        last.contains("tensor 'backbone.embd.0.conv.weight' has shape [32, 4096, 3], expected [64, 4096, 3]"),
        "{last}"
    );
    let n: usize = last
        .split("does not fit")
        .nth(1)
        .unwrap()
        .split(':')
        .nth(1)
        .unwrap()
        .trim()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(n > 100, "{last}");
    assert!(last.contains(&format!("… and {} more", n - 20)), "{last}");
    // Every problem on its own line before the error.
    assert_eq!(err.lines().filter(|l| l.starts_with("  ")).count(), n, "{err}");
    assert!(
        err.contains("  tensor 'reg_head.offset_head.conv.weight' has shape [2, 32, 3], expected [2, 64, 3]"),
        "{err}"
    );
}

#[test]
fn a_config_without_the_attention_refuses_its_tensors() {
    parity_or_skip!();
    // SpAtten/TeAtten/pretrain off (the ActionFormer row): the checkpoint's spatial
    // attention would be silently dropped, so the import is refused.
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &dir.path().join("data"), 32);
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "SpAtten: True, TeAtten: True, SelfAtten: True, pretrain: True",
        "SpAtten: False, TeAtten: False, SelfAtten: True, pretrain: False",
    );
    std::fs::write(&config, text).unwrap();
    let out = xca()
        .arg("import")
        .arg(fixture("epoch_050.pth.tar"))
        .arg("--config")
        .arg(&config)
        .assert()
        .code(2);
    let err = stderr_of(&out);
    assert!(err.contains("have no place in the configured network"), "{err}");
    assert!(err.contains("backbone.embd.0.attention_op.0.weight"), "{err}");
    assert!(
        !err.contains("lstm_op"),
        "the ConvLSTM is legitimately unused without TeAtten: {err}"
    );
}

#[test]
fn a_truncated_archive_fails_cleanly() {
    parity_or_skip!();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &dir.path().join("data"), 32);
    let bytes = std::fs::read(fixture("epoch_050.pth.tar")).unwrap();
    for (name, len) in [
        ("half.pth.tar", bytes.len() / 2),
        ("short.pth.tar", 3),
        ("empty.pth.tar", 0),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, &bytes[..len]).unwrap();
        let out = xca()
            .arg("import")
            .arg(&path)
            .arg("--config")
            .arg(&config)
            .assert()
            .code(2);
        let err = stderr_of(&out);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.starts_with("xca: error: cannot read weights from ") && err.contains(name),
            "{err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
    // Without xca's end-of-archive check the PyTorch reader itself refuses the truncated
    // archive with an error (no panic); the check only makes the message say "truncated".
    let half = dir.path().join("half.pth.tar");
    assert!(read_tensor_file(&half, Some("state_dict_ema")).is_err());
    // Damaged storage bytes (size intact) fail the zip CRC check of the entry.
    let mut damaged = bytes.clone();
    let mid = damaged.len() / 2;
    damaged[mid..mid + 64].iter_mut().for_each(|b| *b = !*b);
    let path = dir.path().join("damaged.pth.tar");
    std::fs::write(&path, &damaged).unwrap();
    let out = xca()
        .arg("import")
        .arg(&path)
        .arg("--config")
        .arg(&config)
        .assert()
        .code(2);
    let err = stderr_of(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("damaged.pth.tar") && err.contains("checksum"), "{err}");
    // The truncated archive through `xca eval` too (no dataset needed: it fails first).
    let path = half;
    let out = xca()
        .arg("eval")
        .arg(&config)
        .arg(&path)
        .arg("--quiet")
        .assert()
        .code(2);
    assert!(stderr_of(&out).contains("truncated"), "{}", stderr_of(&out));
}

#[test]
fn eval_takes_the_pth_archive_directly() {
    parity_or_skip!();
    // `xca eval CONFIG epoch_050.pth.tar` on a tiny synthetic dataset of 64×64 maps: both
    // tables print, and the numbers equal those of the imported xca checkpoint.
    let dir = tempfile::tempdir().unwrap();
    let synth = SynthConfig {
        train: 1,
        val: 1,
        test: 2,
        seed: 5,
        side: 64,
        min_frames: 48,
        max_frames: 120,
        ..SynthConfig::default()
    };
    generate(&synth, &dir.path().join("data"), false).unwrap();
    let config = write_config(dir.path(), &dir.path().join("data"), 32);
    let json_pth = dir.path().join("eval_pth.json");
    let out = xca()
        .arg("eval")
        .arg(&config)
        .arg(fixture("epoch_050.pth.tar"))
        .arg("--quiet")
        .arg("--json")
        .arg(&json_pth)
        .assert()
        .success();
    let stdout = String::from_utf8_lossy(&out.get_output().stdout).to_string();
    assert!(
        stdout.contains("paper protocol") && stdout.contains("full ActivityNet protocol"),
        "{stdout}"
    );

    let ckpt = dir.path().join("epoch_050.safetensors");
    xca()
        .arg("import")
        .arg(fixture("epoch_050.pth.tar"))
        .arg("--config")
        .arg(&config)
        .arg("--out")
        .arg(&ckpt)
        .assert()
        .success();
    let json_xca = dir.path().join("eval_xca.json");
    xca()
        .arg("eval")
        .arg(&config)
        .arg(&ckpt)
        .arg("--quiet")
        .arg("--json")
        .arg(&json_xca)
        .assert()
        .success();
    let a: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json_pth).unwrap()).unwrap();
    let b: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json_xca).unwrap()).unwrap();
    assert_eq!(a["paper"]["mAP"].as_array().unwrap().len(), 5);
    assert_eq!(a, b, "eval of the .pth.tar and of its import agree");
}
