//! The run-folder lock (`flock` on `lock`, released by the kernel however its owner exits).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Another live process holds a run folder.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("{} is in use by another xca process{}; wait for it to finish", path.display(), owner_text(*pid))]
    Busy { path: PathBuf, pid: Option<u32> },
    #[error("cannot lock {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn owner_text(pid: Option<u32>) -> String {
    pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
}

/// An exclusive lock on a run folder: an OS advisory lock (`flock`) on the file `lock`,
/// held for as long as this value lives, the file holding the owner's pid for people to
/// read. The kernel releases the lock when its owner exits however it exits, so a lock left
/// by a killed run is free, and a lock whose owner is alive can never be taken over — the
/// file's content (empty, garbage, a dead pid) plays no part in the decision.
#[derive(Debug)]
pub struct RunLock {
    path: PathBuf,
    file: fs::File,
}

impl RunLock {
    /// Lock `dir` (created if needed) for this process.
    pub fn acquire(dir: &Path) -> Result<Self, LockError> {
        let path = dir.join("lock");
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        fs::create_dir_all(dir).map_err(io)?;
        // The owner removes the file when it drops the lock. A process that opened the old
        // file just before can then win the lock on a file no longer in the folder, while a
        // third creates and locks a new one; so after locking, check that the locked file is
        // still the one at `path`, and start over when it is not.
        for _ in 0..100 {
            let file = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(io)?;
            match file.try_lock() {
                Ok(()) => {}
                Err(fs::TryLockError::WouldBlock) => {
                    let pid = fs::read_to_string(&path)
                        .ok()
                        .and_then(|s| s.trim().parse::<u32>().ok());
                    return Err(LockError::Busy { path, pid });
                }
                Err(fs::TryLockError::Error(e)) => return Err(io(e)),
            }
            if !still_at(&file, &path) {
                continue;
            }
            let mut f = &file;
            f.set_len(0).map_err(io)?;
            f.write_all(std::process::id().to_string().as_bytes()).map_err(io)?;
            return Ok(Self { path, file });
        }
        Err(io(std::io::Error::other("the lock file keeps being replaced")))
    }
}

/// Whether the open `file` is the file now at `path`.
fn still_at(file: &fs::File, path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        match (file.metadata(), fs::metadata(path)) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (file, path);
        true
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        // Remove the file while still holding the lock (see `acquire`), then release it.
        let _ = fs::remove_file(&self.path);
        let _ = self.file.unlock();
    }
}

#[cfg(test)]
mod lock_tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_and_a_dead_owner_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        let lock = RunLock::acquire(&run).unwrap();
        assert_eq!(
            fs::read_to_string(run.join("lock")).unwrap(),
            std::process::id().to_string()
        );
        let err = RunLock::acquire(&run).unwrap_err().to_string();
        assert!(
            err.contains(&format!("pid {}", std::process::id())) && err.contains("run"),
            "{err}"
        );
        // The owner is alive: whatever the file says, the lock is not taken over.
        for text in ["", "not a pid", "1"] {
            fs::write(run.join("lock"), text).unwrap();
            assert!(
                matches!(RunLock::acquire(&run), Err(LockError::Busy { .. })),
                "{text:?}"
            );
        }
        drop(lock);
        assert!(!run.join("lock").exists());

        // A lock file left by a process that has exited holds no lock: taken over.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        fs::write(run.join("lock"), dead.to_string()).unwrap();
        let taken = RunLock::acquire(&run).unwrap();
        assert_eq!(
            fs::read_to_string(run.join("lock")).unwrap(),
            std::process::id().to_string()
        );
        drop(taken);
        // So is an empty or garbled one.
        fs::write(run.join("lock"), "").unwrap();
        assert!(RunLock::acquire(&run).is_ok());
    }

    #[test]
    fn of_many_simultaneous_acquirers_exactly_one_wins_each_round() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        for _round in 0..50 {
            let barrier = std::sync::Barrier::new(8);
            let held = std::sync::atomic::AtomicUsize::new(0);
            let max_held = std::sync::atomic::AtomicUsize::new(0);
            let wins = std::sync::atomic::AtomicUsize::new(0);
            std::thread::scope(|s| {
                for _ in 0..8 {
                    s.spawn(|| {
                        use std::sync::atomic::Ordering::SeqCst;
                        barrier.wait();
                        // Acquire, hold briefly, release; count how many hold at once.
                        if let Ok(lock) = RunLock::acquire(&run) {
                            wins.fetch_add(1, SeqCst);
                            let now = held.fetch_add(1, SeqCst) + 1;
                            max_held.fetch_max(now, SeqCst);
                            std::thread::sleep(std::time::Duration::from_micros(200));
                            held.fetch_sub(1, SeqCst);
                            drop(lock);
                        }
                    });
                }
            });
            assert_eq!(max_held.into_inner(), 1, "two holders at once");
            assert!(wins.into_inner() >= 1);
        }
    }
}
