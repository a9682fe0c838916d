//! Where the parity fixtures are (tensors produced by the original PyTorch code; ~70 MB, so they
//! are not in the repository).
//!
//! Looked for in `$XCA_PARITY_DIR`, else `../shared/parity/` beside the clone. When neither holds
//! them, the parity tests skip with a notice on stderr, so a clone with nothing beside it still
//! passes its tests; `XCA_REQUIRE_PARITY=1` (set by `.ci/run`) turns their absence into a failure,
//! so CI always runs them.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Once;

/// The file every parity test needs; its presence marks the folder as the fixture folder.
const MARKER: &str = "config.json";

fn candidate() -> PathBuf {
    match std::env::var_os("XCA_PARITY_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/parity")),
    }
}

fn required() -> bool {
    std::env::var_os("XCA_REQUIRE_PARITY").is_some_and(|v| !v.is_empty() && v != "0")
}

/// The fixture folder, or `None` (after a one-time notice) when it is absent and not required.
///
/// # Panics
/// When the folder is absent and `XCA_REQUIRE_PARITY` is set.
pub fn dir() -> Option<PathBuf> {
    let dir = candidate();
    if dir.join(MARKER).is_file() {
        return Some(dir);
    }
    assert!(
        !required(),
        "XCA_REQUIRE_PARITY is set but the parity fixtures are not in {} (set XCA_PARITY_DIR)",
        dir.display()
    );
    static NOTICE: Once = Once::new();
    NOTICE.call_once(|| {
        // Straight to the process's stderr: the test harness captures eprintln! of passing tests.
        let _ = writeln!(
            std::io::stderr(),
            "note: parity fixtures not found in {}; the parity tests of this file are skipped \
             (set XCA_PARITY_DIR, or XCA_REQUIRE_PARITY=1 to make this a failure)",
            dir.display()
        );
    });
    None
}

/// One fixture file; only call after [`dir`] returned `Some`.
pub fn file(name: &str) -> PathBuf {
    candidate().join(name)
}

/// Skip the calling test (return early) when the fixtures are absent and not required.
#[macro_export]
macro_rules! parity_or_skip {
    () => {
        if $crate::parity_fixtures::dir().is_none() {
            return;
        }
    };
}
