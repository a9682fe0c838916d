//! `.npy` feature files: header and body, for `[T, 16]`/`[T, 4, 4]` and `[T, 4096]` rows.
//! No panic, and never an allocation larger than the input justifies.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use xca::dataset::features::Features;

fuzz_target!(|data: &[u8]| {
    for dim in [16, 4096] {
        if let Ok(f) = Features::from_npy_bytes(data, Path::new("fuzz.npy"), dim) {
            assert_eq!(f.data.len(), f.rows * f.dim);
            assert!(f.data.len() * 4 <= data.len(), "more values than the file holds");
            let _ = f.first_non_finite();
            let _ = f.downsample(3);
        }
    }
});
