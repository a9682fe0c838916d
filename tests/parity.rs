//! Parity with the original PyTorch implementation (../shared/parity): the reduced-width
//! model with randomised weights, one video's forward (every intermediate), the random-patch
//! projection with fixed centres, and the point generator.
//!
//! `cargo test --test parity -- --nocapture` prints the largest absolute difference per tensor.
//! `XCA_TEST_DEVICE=wgpu` (a `--features wgpu` build) runs the same comparisons on wgpu, with
//! the GPU kernels (README, Development).

#![allow(clippy::disallowed_methods)] // tests read tensors directly

use std::collections::HashMap;
use std::path::PathBuf;

use burn::module::Module;
use burn::tensor::{Bool, Device, Tensor, TensorData};
use xca::model::patch::random_patch;
use xca::model::{Network, NetworkConfig, load_torch_tensors, read_tensor_file};

#[macro_use]
#[path = "common/parity.rs"]
mod parity_fixtures;

fn fixture(name: &str) -> PathBuf {
    parity_fixtures::file(name)
}

/// `XCA_TEST_DEVICE` (cpu, ndarray, wgpu, cuda:N), else cpu (flex).
fn device() -> Device {
    let choice: xca::device::DeviceChoice = std::env::var("XCA_TEST_DEVICE")
        .ok()
        .filter(|s| !s.is_empty())
        .map_or(Ok(Default::default()), |s| s.parse())
        .expect("XCA_TEST_DEVICE names a device");
    choice.device().expect("XCA_TEST_DEVICE's back-end is compiled in")
}

fn load(name: &str) -> HashMap<String, TensorData> {
    read_tensor_file(&fixture(name), None).expect("fixture readable")
}

fn values(data: &TensorData) -> Vec<f32> {
    data.clone().convert::<f32>().try_to_vec::<f32>().expect("f32 data")
}

fn tensor<const D: usize>(data: &TensorData, dev: &Device) -> Tensor<D> {
    Tensor::from_data(data.clone().convert::<f32>(), dev)
}

/// Largest |a − b| / max(1, |b|) must be ≤ 1e-4 (absolute for small values, relative for
/// large ones). Returns the largest absolute difference.
fn compare(name: &str, actual: &[f32], expected: &TensorData) -> f32 {
    let exp = values(expected);
    assert_eq!(actual.len(), exp.len(), "{name}: element count");
    let mut max_abs = 0f32;
    let mut max_scaled = 0f32;
    for (a, e) in actual.iter().zip(&exp) {
        let d = (a - e).abs();
        assert!(d.is_finite(), "{name}: non-finite difference ({a} vs {e})");
        max_abs = max_abs.max(d);
        max_scaled = max_scaled.max(d / e.abs().max(1.0));
    }
    println!(
        "{name:>16}  shape {:?}  max abs diff {max_abs:.3e}",
        expected.shape().to_vec()
    );
    assert!(
        max_scaled <= 1e-4,
        "{name}: max difference {max_scaled:e} (abs {max_abs:e}) exceeds 1e-4"
    );
    max_abs
}

fn check<const D: usize>(name: &str, t: &Tensor<D>, fx: &HashMap<String, TensorData>) {
    let expected = fx.get(name).unwrap_or_else(|| panic!("fixture has no '{name}'"));
    assert_eq!(t.dims().to_vec(), expected.shape().to_vec(), "{name}: shape");
    let actual = t.clone().into_data().convert::<f32>().try_to_vec::<f32>().expect("f32");
    compare(name, &actual, expected);
}

/// The parity README's model: the vessel config with dims 32, 4 heads, random_patch off.
fn reduced_config() -> NetworkConfig {
    NetworkConfig::new()
        .with_embd_dim(32)
        .with_fpn_dim(32)
        .with_head_dim(32)
        .with_n_head(4)
        .with_random_patch(false)
}

fn loaded_network(dev: &Device) -> Network {
    let net = reduced_config().init(dev).expect("valid config");
    let weights = load("weights.safetensors");
    let (net, report) = load_torch_tensors(net, &weights).expect("weights fit");
    assert!(report.unused.is_empty(), "unused keys: {:?}", report.unused);
    assert_eq!(report.used.len(), weights.len());
    net.valid()
}

#[test]
fn forward_matches_original() {
    parity_or_skip!();
    let dev = device();
    let net = loaded_network(&dev);
    let fx = load("forward.safetensors");
    let input: Tensor<3> = tensor(&fx["input"], &dev);
    let mask: Tensor<2, Bool> = tensor::<2>(&fx["mask"], &dev).greater_elem(0.5);
    let (out, inter) = net.forward_debug(input, mask, None).expect("forward");

    check("lstm_h", inter.lstm_h.as_ref().expect("lstm_h"), &fx);
    check("x_lstm", inter.x_lstm.as_ref().expect("x_lstm"), &fx);
    check("attention", inter.attention.as_ref().expect("attention"), &fx);
    check("fg", out.fg.as_ref().expect("fg"), &fx);
    check("bg", out.bg.as_ref().expect("bg"), &fx);
    check("embd0_out", &inter.embd_conv_out[0], &fx);
    check("embd1_in", &inter.embd_out[0], &fx);
    check("stem_in", &inter.embd_out[1], &fx);
    assert_eq!(inter.feats.len(), 6);
    for l in 0..6 {
        check(&format!("feat_l{l}"), &inter.feats[l], &fx);
        check(&format!("mask_l{l}"), &out.masks[l].clone().float(), &fx);
        check(&format!("fpn_l{l}"), &inter.fpn_feats[l], &fx);
        check(&format!("cls_logits_l{l}"), &out.cls_logits[l], &fx);
        check(&format!("offsets_l{l}"), &out.offsets[l], &fx);
    }
}

#[test]
fn pth_archive_loads_the_same_weights() {
    parity_or_skip!();
    let dev = device();
    let tensors = read_tensor_file(&fixture("epoch_050.pth.tar"), Some("state_dict_ema")).expect("pth readable");
    let net = reduced_config().init(&dev).expect("valid config");
    let (_, report) = load_torch_tensors(net, &tensors).expect("weights fit");
    let st = load("weights.safetensors");
    assert_eq!(report.used.len(), st.len());
    // Unused: the 28 other masked convs' ConvLSTMs (168 keys), embd.0's conv_2 (4) and the
    // two num_batches_tracked.
    assert_eq!(report.unused.len(), 168 + 4 + 2, "{:?}", report.unused);
    for key in &report.used {
        let a = values(&tensors[&format!("module.{key}")]);
        assert_eq!(a, values(&st[key]), "{key}");
    }
}

#[test]
fn missing_weight_is_an_error_naming_the_key() {
    parity_or_skip!();
    let dev = device();
    let mut weights = load("weights.safetensors");
    weights.remove("backbone.stem.1.attn.proj.bias");
    let net = reduced_config().init(&dev).expect("valid config");
    let err = load_torch_tensors(net, &weights).expect_err("must fail");
    assert!(err.to_string().contains("backbone.stem.1.attn.proj.bias"), "{err}");
}

#[test]
fn wrong_weight_shape_is_an_error_naming_the_key() {
    parity_or_skip!();
    let dev = device();
    let weights = load("weights.safetensors");
    // A 64-wide model cannot take the 32-wide weights.
    let net = reduced_config()
        .with_embd_dim(64)
        .with_fpn_dim(64)
        .with_head_dim(64)
        .init(&dev)
        .expect("valid config");
    let err = load_torch_tensors(net, &weights).expect_err("must fail");
    assert!(err.to_string().contains("backbone.embd.0.conv.weight"), "{err}");
}

#[test]
fn random_patch_matches_original() {
    parity_or_skip!();
    let dev = device();
    let fx = load("random_patch.safetensors");
    let input: Tensor<3> = tensor(&fx["input"], &dev);
    let c = fx["centres"].clone().convert::<i64>().try_to_vec::<i64>().expect("i64");
    let centres: Vec<(usize, usize)> = c.chunks(2).map(|p| (p[0] as usize, p[1] as usize)).collect();
    assert_eq!(centres, vec![(30, 17), (5, 60)]);
    let out = random_patch(input, &centres, 64).expect("valid centres");
    check("output", &out, &fx);
}

#[test]
fn points_match_original() {
    parity_or_skip!();
    let dev = device();
    let net = reduced_config().init(&dev).expect("valid config");
    let text = std::fs::read_to_string(fixture("points.json")).expect("points.json");
    let json: serde_json::Value = serde_json::from_str(&text).expect("json");
    let t = json["T"].as_u64().expect("T") as usize;
    let points = net.points(t);
    let levels = json["levels"].as_array().expect("levels");
    assert_eq!(points.levels.len(), levels.len());
    for (lp, lj) in points.levels.iter().zip(levels) {
        let rows: Vec<[f32; 4]> = lj["rows"]
            .as_array()
            .expect("rows")
            .iter()
            .map(|r| {
                let v: Vec<f32> = r
                    .as_array()
                    .expect("row")
                    .iter()
                    .map(|x| x.as_f64().expect("num") as f32)
                    .collect();
                [v[0], v[1], v[2], v[3]]
            })
            .collect();
        assert_eq!(lp.len, lj["length"].as_u64().expect("length") as usize);
        assert_eq!(lp.rows(), rows, "level {}", lj["level"]);
    }
    let all = load("losses.safetensors");
    let expected = values(&all["points"]);
    let got: Vec<f32> = points.rows().into_iter().flatten().collect();
    assert_eq!(got, expected);
}

#[test]
fn training_mode_forward_matches_original() {
    parity_or_skip!();
    // losses.safetensors: two unpadded videos, training mode (BatchNorm on batch statistics
    // over the B·T = 256 images), droppath 0 (no AffineDropPath modules).
    let dev = device().autodiff();
    let net = reduced_config().with_droppath(0.0).init(&dev).expect("valid config");
    let weights = load("weights.safetensors");
    let (net, report) = load_torch_tensors(net, &weights).expect("weights fit");
    assert_eq!(report.unused.len(), 14, "{:?}", report.unused);
    assert!(report.unused.iter().all(|k| k.contains(".drop_path_")));
    let fx = load("losses.safetensors");
    let feats: Tensor<3> = tensor(&fx["feats"], &dev);
    let mask = Tensor::<2, Bool>::from_data(TensorData::new(vec![true; 256], [2, 128]), &dev);
    let out = net.forward(feats, mask, None).expect("forward");
    check("out_cls_logits", &Tensor::cat(out.cls_logits, 1), &fx);
    check("out_offsets", &Tensor::cat(out.offsets, 1), &fx);
}

#[test]
fn param_count_equals_the_fixture_parameters() {
    parity_or_skip!();
    // weights.safetensors holds exactly the tensors the eval forward reads: its parameters
    // (running statistics excluded) are what xca allocates.
    let dev = device();
    let net = reduced_config().init(&dev).expect("valid config");
    let total: usize = xca::model::param_counts(&net).iter().map(|(_, n)| n).sum();
    let expected: usize = load("weights.safetensors")
        .iter()
        .filter(|(k, _)| !k.ends_with("running_mean") && !k.ends_with("running_var"))
        .map(|(_, v)| v.num_elements())
        .sum();
    assert_eq!(total, expected);
}
