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
