//! `.safetensors` checkpoints: xca's own (`checkpoint::load_bytes`, as `xca eval`, `select`
//! and `predict` load them) and PyTorch-named ones (`model::torch::read_torch_safetensors`
//! and `load_torch_tensors`, as `xca import` and `eval` read them), into the tiny network of
//! fuzz/model.yaml. No panic, and every weight of a network that loaded is float32 (a
//! float64 or half-precision weight made burn's matmul panic later).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let path = Path::new("fuzz.safetensors");
    if let Ok(net) = xca::train::checkpoint::load_bytes(common::network(), data.to_vec(), path) {
        common::assert_float32(&net);
    }
    if let Ok(tensors) = xca::model::torch::read_torch_safetensors(data.to_vec(), path)
        && let Ok((net, report)) = xca::model::load_torch_tensors(common::network(), &tensors)
    {
        let _ = xca::model::torch::group_unused(&report);
        common::assert_float32(&net);
    }
});
