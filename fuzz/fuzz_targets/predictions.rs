//! A detection file (either layout of SPEC §7.1) read against a fixed ground truth, then
//! scored with both protocols as `xca score` does. No panic on any input.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use xca::metrics::io::{GroundTruth, parse_ground_truth, parse_predictions};
use xca::metrics::score::{Protocol, score};

/// The ground truth every input is scored against (also read by tests/hardening.rs).
const GT: &str = include_str!("../gt.json");

fn gt() -> &'static GroundTruth {
    static GT_CELL: OnceLock<GroundTruth> = OnceLock::new();
    GT_CELL.get_or_init(|| parse_ground_truth(GT, Path::new("gt.json")).expect("the fixed ground truth reads"))
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(preds) = parse_predictions(text, Path::new("fuzz.json"), gt()) {
        let _ = score(gt(), "test", &preds.detections, Protocol::Full);
        let _ = score(gt(), "test", &preds.detections, Protocol::Paper);
    }
});
