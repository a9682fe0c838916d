//! Annotation JSON, through the one reader (training, `xca check`) and the scorer's
//! ground-truth view of it (`xca score`, `xca eval`). No panic on any input.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use xca::dataset::Annotations;
use xca::metrics::io::parse_ground_truth;

fuzz_target!(|data: &[u8]| {
    let path = Path::new("fuzz.json");
    if let Ok(ann) = Annotations::from_slice(data, path) {
        let _ = ann.split(&["train".to_string(), "test".to_string()]);
    }
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(gt) = parse_ground_truth(text, path)
    {
        let _ = gt.split_segments("test");
    }
});
