//! PyTorch checkpoints (`.pth.tar`, `.pth`, `.pt`: zip, legacy and TAR `torch.save` layouts):
//! `model::torch::read_torch_checkpoint` and `load_torch_tensors`, as `xca import` and
//! `xca eval` read them, into the tiny network of fuzz/model.yaml. burn-store's reader takes
//! a path, so each input is written to a file in /dev/shm first. No panic, and every weight
//! of a network that loaded is float32.
#![no_main]

use std::path::PathBuf;

use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

thread_local! {
    static PATH: PathBuf = {
        let dir = if std::path::Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        dir.join(format!("xca-fuzz-{}.pth.tar", std::process::id()))
    };
}

fuzz_target!(|data: &[u8]| {
    let path = PATH.with(PathBuf::clone);
    std::fs::write(&path, data).expect("the input file can be written");
    if let Ok((tensors, _)) = xca::model::torch::read_torch_checkpoint(&path)
        && let Ok((net, report)) = xca::model::load_torch_tensors(common::network(), &tensors)
    {
        let _ = xca::model::torch::group_unused(&report);
        common::assert_float32(&net);
    }
});
