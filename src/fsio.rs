//! Crash-safe writes: everything xca writes goes to a temporary file (or folder) beside
//! its destination and is renamed into place, so an interrupted run or a full disk never
//! leaves a half-written checkpoint, result or dataset behind.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// A write that failed, naming the destination.
#[derive(Debug, thiserror::Error)]
#[error("cannot write {}: {source}", path.display())]
pub struct WriteError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Write `bytes` to `path` atomically: temp file in the same folder, fsync, rename.
/// Creates the parent folder if needed. On failure the previous file is untouched.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    let err = |source| WriteError {
        path: path.to_path_buf(),
        source,
    };
    let dir = parent_of(path);
    fs::create_dir_all(dir).map_err(err)?;
    let mut builder = tempfile::Builder::new();
    builder.prefix(".xca-tmp-");
    // Results are ordinary files: readable by others as `fs::write` would leave them
    // (tempfile's default is 0600).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(fs::Permissions::from_mode(0o644));
    }
    let mut tmp = builder.tempfile_in(dir).map_err(err)?;
    tmp.write_all(bytes).map_err(err)?;
    tmp.as_file().sync_all().map_err(err)?;
    tmp.persist(path).map_err(|e| err(e.error))?;
    Ok(())
}

/// Serialise `value` as pretty JSON and write it atomically.
pub fn write_json_atomic<T: serde::Serialize + ?Sized>(path: &Path, value: &T) -> Result<(), WriteError> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(|e| WriteError {
        path: path.to_path_buf(),
        source: std::io::Error::other(e),
    })?;
    bytes.push(b'\n');
    write_atomic(path, &bytes)
}

/// Build a folder atomically: `fill` writes into a fresh temporary sibling of `dest`,
/// which is renamed to `dest` only when `fill` succeeds. An existing `dest` is replaced
/// only after the new one is complete.
pub fn build_dir_atomic<E>(dest: &Path, fill: impl FnOnce(&Path) -> Result<(), E>) -> Result<(), E>
where
    E: From<WriteError>,
{
    let err = |source| WriteError {
        path: dest.to_path_buf(),
        source,
    };
    let parent = parent_of(dest);
    fs::create_dir_all(parent).map_err(err)?;
    let tmp = tempfile::Builder::new()
        .prefix(".xca-tmp-")
        .tempdir_in(parent)
        .map_err(err)?;
    fill(tmp.path())?;
    let staged = tmp.keep();
    if dest.exists() {
        let old = parent.join(format!(
            ".xca-old-{}",
            dest.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        ));
        let _ = fs::remove_dir_all(&old);
        fs::rename(dest, &old).map_err(err)?;
        fs::rename(&staged, dest).map_err(err)?;
        let _ = fs::remove_dir_all(&old);
    } else {
        fs::rename(&staged, dest).map_err(err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/out.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(p.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o644);
        }
    }

    #[test]
    fn failed_dir_build_keeps_old_dir() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("ds");
        build_dir_atomic::<WriteError>(&dest, |d| write_atomic(&d.join("a"), b"1")).unwrap();
        let r: Result<(), WriteError> = build_dir_atomic(&dest, |d| {
            write_atomic(&d.join("b"), b"2")?;
            Err(WriteError {
                path: d.to_path_buf(),
                source: std::io::Error::other("boom"),
            })
        });
        assert!(r.is_err());
        assert_eq!(fs::read(dest.join("a")).unwrap(), b"1");
        assert!(!dest.join("b").exists());
        // no stray temporaries left beside it other than dest
        let n = fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(n, 1);
    }
}

/// Another live process holds a run folder.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("{} is in use by another xca process (pid {pid}); wait for it to finish, or remove the lock file if that process is gone", path.display())]
    Busy { path: PathBuf, pid: u32 },
    #[error("cannot lock {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// An exclusive lock on a run folder: the file `lock` holding the owner's pid, removed when
/// the lock is dropped. A lock left by a process that no longer exists (killed, crashed) is
/// taken over.
#[derive(Debug)]
pub struct RunLock {
    path: PathBuf,
}

/// Whether a process with this pid is alive. Where that cannot be known (no `/proc`), assume
/// it is, so a lock is never stolen from a live run.
fn process_alive(pid: u32) -> bool {
    let proc = Path::new("/proc");
    if !proc.exists() {
        return true;
    }
    proc.join(pid.to_string()).exists()
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
        for _ in 0..3 {
            match fs::OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut f) => {
                    f.write_all(std::process::id().to_string().as_bytes()).map_err(io)?;
                    return Ok(Self { path });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let owner = fs::read_to_string(&path)
                        .ok()
                        .and_then(|s| s.trim().parse::<u32>().ok());
                    match owner {
                        Some(pid) if process_alive(pid) => return Err(LockError::Busy { path, pid }),
                        // Stale (dead owner) or unreadable: take it over.
                        _ => match fs::remove_file(&path) {
                            Ok(()) => {}
                            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                            Err(e) => return Err(io(e)),
                        },
                    }
                }
                Err(e) => return Err(io(e)),
            }
        }
        Err(io(std::io::Error::other("the lock file keeps reappearing")))
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
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
        drop(lock);
        assert!(!run.join("lock").exists());

        // A lock written by a process that has exited is stale.
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
        // Garbage in the lock file is treated as stale too.
        fs::write(run.join("lock"), "not a pid").unwrap();
        assert!(RunLock::acquire(&run).is_ok());
    }
}
