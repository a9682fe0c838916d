//! Atomic writes: a temporary sibling, fsync, rename; folders built aside and swapped in.

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

pub(super) fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Prefix of every temporary file or folder xca writes beside a destination. Nothing with
/// this prefix is ever a result: readers never look at such names, and `xca train` removes
/// leftovers of a killed run from its run folder ([`remove_stale_temps`]).
pub const TEMP_PREFIX: &str = ".xca-tmp-";

/// A fault injected into a write, for tests of crashes and full disks.
// Only `fault_from_spec` (tests and the `test-hooks` feature) builds the variants other
// than `Fail`; a shipped build keeps the handling code but can never reach it.
#[cfg_attr(not(any(test, feature = "test-hooks")), allow(dead_code))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// Fail like a full disk after half the bytes are in the temporary file.
    Fail,
    /// `abort()` the process after half the bytes are in the temporary file (a crash or
    /// SIGKILL in the middle of a write, made deterministic).
    Abort,
    /// Stop for two seconds after half the bytes (announced on stderr), so that a test can
    /// signal the process while the write is under way; then finish normally.
    Pause,
}

/// TEST-ONLY fault injection: `XCA_TEST_FAULT=<fail|abort|pause>:<substring>` makes every
/// [`write_atomic`] whose destination path contains `<substring>` fail, abort or pause half
/// way (see [`Fault`]). The end-to-end tests (tests/hardening.rs) use it on the real binary:
/// a full disk cannot be had without mounting a tmpfs, and a kill "during a write" is
/// otherwise a race. Only built with the internal `test-hooks` feature, which `cargo test`
/// turns on (Cargo.toml's self dev-dependency) and a `cargo build` never does.
#[cfg(feature = "test-hooks")]
fn injected_fault(path: &Path) -> Option<Fault> {
    fault_from_spec(&std::env::var("XCA_TEST_FAULT").ok()?, path)
}

/// Without the `test-hooks` feature (every shipped build) the variable is never read.
#[cfg(not(feature = "test-hooks"))]
fn injected_fault(_path: &Path) -> Option<Fault> {
    None
}

/// The fault that an `XCA_TEST_FAULT` value asks for on a write to `path`, if any.
#[cfg(any(test, feature = "test-hooks"))]
fn fault_from_spec(spec: &str, path: &Path) -> Option<Fault> {
    let (action, needle) = spec.split_once(':')?;
    if needle.is_empty() || !path.to_string_lossy().contains(needle) {
        return None;
    }
    match action {
        "fail" => Some(Fault::Fail),
        "abort" => Some(Fault::Abort),
        "pause" => Some(Fault::Pause),
        _ => None,
    }
}

/// Write `bytes` to `path` atomically: temp file in the same folder, fsync, rename.
/// Creates the parent folder if needed. On failure the previous file is untouched.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    write_atomic_with(path, bytes, injected_fault(path))
}

fn write_atomic_with(path: &Path, bytes: &[u8], fault: Option<Fault>) -> Result<(), WriteError> {
    let err = |source| WriteError {
        path: path.to_path_buf(),
        source,
    };
    let dir = parent_of(path);
    fs::create_dir_all(dir).map_err(err)?;
    let mut builder = tempfile::Builder::new();
    builder.prefix(TEMP_PREFIX);
    // Results are ordinary files: readable by others as `fs::write` would leave them
    // (tempfile's default is 0600).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(fs::Permissions::from_mode(0o644));
    }
    let mut tmp = builder.tempfile_in(dir).map_err(err)?;
    match fault {
        None => tmp.write_all(bytes).map_err(err)?,
        Some(fault) => {
            let half = bytes.len() / 2;
            tmp.write_all(&bytes[..half]).map_err(err)?;
            tmp.flush().map_err(err)?;
            match fault {
                // The temporary file is dropped (deleted) on the way out, as after a real
                // ENOSPC.
                Fault::Fail => {
                    return Err(err(std::io::Error::new(
                        std::io::ErrorKind::StorageFull,
                        "no space left on device (injected by XCA_TEST_FAULT)",
                    )));
                }
                Fault::Abort => std::process::abort(),
                Fault::Pause => {
                    eprintln!("XCA_TEST_FAULT: pausing the write of {}", path.display());
                    std::thread::sleep(std::time::Duration::from_secs(2));
                    tmp.write_all(&bytes[half..]).map_err(err)?;
                }
            }
        }
    }
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
    // A crash in an earlier call may have left `dest` moved aside: restore it first, so
    // that at every moment either `dest` or its moved-aside copy is complete.
    recover_dir(dest)?;
    let tmp = tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .tempdir_in(parent)
        .map_err(err)?;
    fill(tmp.path())?;
    let staged = tmp.keep();
    if dest.exists() {
        let old = old_dir(dest);
        let _ = fs::remove_dir_all(&old);
        fs::rename(dest, &old).map_err(err)?;
        // A crash here leaves no `dest`, only `old` (complete): [`recover_dir`] puts it back.
        if injected_fault(&dest.join("#swap")) == Some(Fault::Abort) {
            std::process::abort();
        }
        fs::rename(&staged, dest).map_err(err)?;
        let _ = fs::remove_dir_all(&old);
    } else {
        fs::rename(&staged, dest).map_err(err)?;
    }
    Ok(())
}

/// Where [`build_dir_atomic`] moves the previous `dest` while it swaps the new one in.
fn old_dir(dest: &Path) -> PathBuf {
    parent_of(dest).join(format!(
        ".xca-old-{}",
        dest.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    ))
}

/// Undo a swap of [`build_dir_atomic`] cut short by a crash: when `dest` is missing but its
/// previous version was moved aside, move it back. Returns whether it did. Call it before
/// reading a folder that is rebuilt this way (e.g. a run's resumable state).
pub fn recover_dir(dest: &Path) -> Result<bool, WriteError> {
    let old = old_dir(dest);
    if dest.exists() || !old.is_dir() {
        return Ok(false);
    }
    fs::rename(&old, dest).map_err(|source| WriteError {
        path: dest.to_path_buf(),
        source,
    })?;
    Ok(true)
}

/// Remove the temporary files and folders ([`TEMP_PREFIX`]) that a killed process left in
/// `dir`; returns how many. Only for a folder this process owns (e.g. a locked run folder):
/// another process's write under way there would lose its temporary file.
pub fn remove_stale_temps(dir: &Path) -> Result<usize, WriteError> {
    let io = |source| WriteError {
        path: dir.to_path_buf(),
        source,
    };
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io(e)),
    };
    let mut removed = 0;
    for entry in entries {
        let entry = entry.map_err(io)?;
        if !entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
            continue;
        }
        let path = entry.path();
        let r = if entry.file_type().map_err(io)?.is_dir() {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        r.map_err(|source| WriteError { path, source })?;
        removed += 1;
    }
    Ok(removed)
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
    fn a_failed_write_names_the_path_and_keeps_the_previous_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("result.json");
        write_atomic(&p, b"previous result").unwrap();
        let e = write_atomic_with(&p, b"a new result, longer than the old one", Some(Fault::Fail)).unwrap_err();
        assert_eq!(e.path, p);
        assert_eq!(e.source.kind(), std::io::ErrorKind::StorageFull);
        let msg = e.to_string();
        assert!(
            msg.contains(&p.display().to_string()) && msg.contains("no space left"),
            "{msg}"
        );
        assert_eq!(fs::read(&p).unwrap(), b"previous result");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names,
            [std::ffi::OsString::from("result.json")],
            "the temporary file is removed"
        );
        // A real I/O error (the destination's folder cannot be created: a file is in the way)
        // names the path too.
        let blocked = p.join("sub.json");
        let e = write_atomic(&blocked, b"x").unwrap_err();
        assert_eq!(e.path, blocked);
        assert_eq!(fs::read(&p).unwrap(), b"previous result");
    }

    #[test]
    fn the_fault_spec_matches_action_and_path() {
        let p = Path::new("/runs/tiny_t/epoch_002.safetensors");
        assert_eq!(fault_from_spec("fail:epoch_002", p), Some(Fault::Fail));
        assert_eq!(fault_from_spec("abort:tiny_t/epoch", p), Some(Fault::Abort));
        assert_eq!(fault_from_spec("pause:.safetensors", p), Some(Fault::Pause));
        assert_eq!(fault_from_spec("fail:epoch_003", p), None);
        assert_eq!(fault_from_spec("fail:", p), None, "an empty substring matches nothing");
        assert_eq!(fault_from_spec("explode:epoch", p), None);
        assert_eq!(fault_from_spec("epoch_002", p), None);
    }

    #[test]
    fn a_swap_cut_short_is_recovered_and_stale_temps_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("state");
        build_dir_atomic::<WriteError>(&dest, |d| write_atomic(&d.join("a"), b"1")).unwrap();
        // As if killed between the two renames: dest moved aside, the new one still staged.
        fs::rename(&dest, old_dir(&dest)).unwrap();
        fs::create_dir(dir.path().join(".xca-tmp-staged")).unwrap();
        fs::write(dir.path().join(".xca-tmp-staged/a"), b"2").unwrap();
        fs::write(dir.path().join(".xca-tmp-half"), b"partial").unwrap();
        assert!(recover_dir(&dest).unwrap());
        assert_eq!(fs::read(dest.join("a")).unwrap(), b"1");
        assert!(!recover_dir(&dest).unwrap(), "nothing left to recover");
        assert_eq!(remove_stale_temps(dir.path()).unwrap(), 2);
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [std::ffi::OsString::from("state")]);
        // build_dir_atomic recovers by itself too, and leaves no moved-aside copy behind.
        fs::rename(&dest, old_dir(&dest)).unwrap();
        build_dir_atomic::<WriteError>(&dest, |d| write_atomic(&d.join("a"), b"3")).unwrap();
        assert_eq!(fs::read(dest.join("a")).unwrap(), b"3");
        assert!(!old_dir(&dest).exists());
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
