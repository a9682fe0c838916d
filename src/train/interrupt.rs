//! Ctrl-C (SIGINT) during training: the handler only raises a flag; the trainer looks at it
//! between steps, so the step under way finishes, a resumable state is written (the same
//! `state/` folder an epoch end writes, plus where in the epoch to go on) and training
//! stops with [`super::TrainError::Interrupted`]. A second Ctrl-C stops at once:
//! every file on disk is still whole (writes are temp-then-rename), only the steps since the
//! last saved state are lost.

use std::sync::atomic::{AtomicBool, Ordering};

/// Exit status of a command stopped by Ctrl-C (128 + SIGINT, as shells report it).
pub const EXIT_INTERRUPTED: i32 = 130;

static REQUESTED: AtomicBool = AtomicBool::new(false);
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// The handler could not be installed.
#[derive(Debug, thiserror::Error)]
#[error("cannot install the Ctrl-C handler: {0}")]
pub struct InterruptError(String);

/// Install the Ctrl-C handler (once per process; later calls do nothing).
pub fn install() -> Result<(), InterruptError> {
    if INSTALLED.swap(true, Ordering::SeqCst) {
        return Ok(());
    }
    // ctrlc runs this on its own thread, not in the signal handler, so printing is safe.
    ctrlc::set_handler(|| {
        if REQUESTED.swap(true, Ordering::SeqCst) {
            eprintln!("\nxca: second interrupt: stopping now; the last saved state is kept");
            std::process::exit(EXIT_INTERRUPTED);
        }
        eprintln!(
            "\nxca: interrupt: finishing the current step and saving a resumable state (Ctrl-C again to stop at once)"
        );
    })
    .map_err(|e| {
        INSTALLED.store(false, Ordering::SeqCst);
        InterruptError(e.to_string())
    })
}

/// Whether an interrupt asked training to stop.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}

/// Ask training to stop after its current step, as Ctrl-C does (for embedding programs).
pub fn request() {
    REQUESTED.store(true, Ordering::SeqCst);
}

/// Forget a request (before starting another training run in the same process).
pub fn clear() {
    REQUESTED.store(false, Ordering::SeqCst);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_and_clear_flip_the_flag() {
        // The lib's tests never train, so flipping the process-wide flag here is harmless.
        clear();
        assert!(!requested());
        request();
        assert!(requested());
        clear();
        assert!(!requested());
    }
}
