//! Crash-safe writes and bounded reads. Everything xca writes goes to a temporary file (or
//! folder) beside its destination and is renamed into place, so an interrupted run or a full
//! disk never leaves a half-written checkpoint, result or dataset behind. Everything it reads
//! from a user-named path goes through [`read_bounded`]: regular files only, no larger than
//! their format can need, so a path to `/dev/zero`, a FIFO or a huge file is refused at once.
//!
//! - [`write`](self::write): atomic files and folders, leftovers of killed runs, the test-only
//!   fault injection;
//! - [`read`](self::read): bounded reads and the per-format [`limits`];
//! - [`outputs`](self::outputs): outputs that would overwrite inputs, free disk space;
//! - [`lock`](self::lock): the run-folder lock.

pub mod lock;
pub mod outputs;
pub mod read;
pub mod write;

pub use lock::{LockError, RunLock};
pub use outputs::{available_disk, check_outputs, same_file};
pub use read::{ReadError, limits, open_bounded, read_bounded, read_text_bounded};
pub use write::{
    TEMP_PREFIX, WriteError, build_dir_atomic, recover_dir, remove_stale_temps, write_atomic, write_json_atomic,
};
