//! Crash-safe writes and bounded reads. Everything xca writes goes to a temporary file (or
//! folder) beside its destination and is renamed into place, so an interrupted run or a full
//! disk never leaves a half-written checkpoint, result or dataset behind. Everything it reads
//! from a user-named path goes through [`read_bounded`]: regular files only, no larger than
//! their format can need, so a path to `/dev/zero`, a FIFO or a huge file is refused at once.

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
    fn outputs_that_are_inputs_or_each_other_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let ckpt = d.join("epoch_009.safetensors");
        fs::write(&ckpt, b"weights").unwrap();
        fs::create_dir(d.join("sub")).unwrap();
        let via_dots = d.join("sub/../epoch_009.safetensors");
        let e = check_outputs(&[("--json", &via_dots)], &[("checkpoint", &ckpt)]).unwrap_err();
        assert!(e.contains("--json") && e.contains("is the checkpoint"), "{e}");
        // A hard link is the same file too.
        let link = d.join("link.json");
        fs::hard_link(&ckpt, &link).unwrap();
        assert!(check_outputs(&[("--json", &link)], &[("checkpoint", &ckpt)]).is_err());
        // Two outputs, one not yet written.
        let a = d.join("out.json");
        let e = check_outputs(&[("--json", &a), ("--detections", &d.join("sub/../out.json"))], &[]).unwrap_err();
        assert!(e.contains("--json and --detections"), "{e}");
        assert!(
            check_outputs(
                &[("--json", &a), ("--detections", &d.join("det.json"))],
                &[("checkpoint", &ckpt)]
            )
            .is_ok()
        );
        let dash = Path::new("-");
        assert!(check_outputs(&[("--json", dash), ("--detections", dash)], &[]).is_ok());
        assert_eq!(fs::read(&ckpt).unwrap(), b"weights");
    }

    #[test]
    fn bounded_reads_refuse_devices_fifos_folders_and_large_files_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.txt");
        fs::write(&p, b"\xEF\xBB\xBFkey: 1\n").unwrap();
        assert_eq!(read_text_bounded(&p, 100).unwrap(), "key: 1\n");
        assert_eq!(read_bounded(&p, 10).unwrap().len(), 10);
        let e = read_bounded(&p, 9).unwrap_err().to_string();
        assert!(e.contains("10 bytes") && e.contains("a.txt"), "{e}");
        // A symlink to /dev/zero: refused by type, nothing read.
        let z = dir.path().join("zero.npy");
        std::os::unix::fs::symlink("/dev/zero", &z).unwrap();
        let e = read_bounded(&z, u64::MAX).unwrap_err().to_string();
        assert!(e.contains("character device") && e.contains("zero.npy"), "{e}");
        // A FIFO with no writer: refused, not waited on.
        let f = dir.path().join("fifo");
        let c = std::ffi::CString::new(f.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        assert!(read_bounded(&f, 100).unwrap_err().to_string().contains("FIFO"));
        assert!(
            read_bounded(dir.path(), 100)
                .unwrap_err()
                .to_string()
                .contains("folder")
        );
        let e = read_text_bounded(
            &{
                let q = dir.path().join("bin");
                fs::write(&q, b"ab\xFFcd").unwrap();
                q
            },
            100,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("offset 2"), "{e}");
    }

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

/// What a path will be once written: the canonical path of the file if it exists, else its
/// canonical folder joined with its name (`None` when even the folder does not exist yet).
fn identity(path: &Path) -> Option<PathBuf> {
    if let Ok(p) = fs::canonicalize(path) {
        return Some(p);
    }
    let name = path.file_name()?;
    Some(fs::canonicalize(parent_of(path)).ok()?.join(name))
}

/// Whether `a` and `b` name the same file (same canonical path, or the same inode: hard links).
pub fn same_file(a: &Path, b: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let (Ok(x), Ok(y)) = (fs::metadata(a), fs::metadata(b))
            && x.dev() == y.dev()
            && x.ino() == y.ino()
        {
            return true;
        }
    }
    matches!((identity(a), identity(b)), (Some(x), Some(y)) if x == y)
}

/// Refuse outputs that would replace one of the inputs or each other: `outputs` and
/// `inputs` are `(what, path)` pairs, `what` naming the flag or argument for the message.
/// `-` (standard output) is never a file.
pub fn check_outputs(outputs: &[(&str, &Path)], inputs: &[(&str, &Path)]) -> Result<(), String> {
    let outputs: Vec<_> = outputs.iter().filter(|(_, p)| *p != Path::new("-")).collect();
    for (i, (what, out)) in outputs.iter().enumerate() {
        if let Some((in_what, _)) = inputs.iter().find(|(_, p)| same_file(out, p)) {
            return Err(format!(
                "{what} {} is the {in_what}: refusing to overwrite an input",
                out.display()
            ));
        }
        if let Some((other, _)) = outputs[..i].iter().find(|(_, p)| same_file(out, p)) {
            return Err(format!(
                "{other} and {what} are both {}: one would overwrite the other",
                out.display()
            ));
        }
    }
    Ok(())
}

/// Free space (bytes, for an unprivileged user) on the file system that `path` would be
/// created on: that of its nearest existing ancestor. `None` where it cannot be asked.
pub fn available_disk(path: &Path) -> Option<u64> {
    let abs = std::path::absolute(path).ok()?;
    let existing = abs.ancestors().find(|p| p.exists())?;
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(existing.as_os_str().as_bytes()).ok()?;
        let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
        // SAFETY: `c` is a NUL-terminated path and `st` a buffer of the right type, which
        // statvfs fills when it returns 0.
        if unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) } != 0 {
            return None;
        }
        // SAFETY: statvfs returned 0, so it initialised `st`.
        let st = unsafe { st.assume_init() };
        // The field types differ between platforms (u32 on some).
        #[allow(clippy::unnecessary_cast)]
        Some((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
    }
    #[cfg(not(unix))]
    {
        let _ = existing;
        None
    }
}

/// How large each kind of file xca reads may be: generous for any real file of that kind,
/// small enough that a wrong path is refused before it costs memory.
pub mod limits {
    const MIB: u64 = 1 << 20;
    /// A YAML config (the paper's is 1.5 KB).
    pub const CONFIG: u64 = 4 * MIB;
    /// An annotation file (ActivityNet's 20k videos are ~10 MB).
    pub const ANNOTATIONS: u64 = 256 * MIB;
    /// A detection (prediction) file for `xca score`.
    pub const PREDICTIONS: u64 = 1024 * MIB;
    /// Small JSON sidecars: a checkpoint's metadata, a run's `state.json`, `select.json`.
    pub const SIDECAR: u64 = 16 * MIB;
    /// A run's `log.jsonl` (about 1 KB a logged step).
    pub const LOG: u64 = 512 * MIB;
    /// A `.npy` feature file: 2²⁰ rows of 4096 float32 (16 GiB) would be a 19-hour video at
    /// 15 fps; this allows 65,536 rows of float64.
    pub const FEATURES: u64 = 2048 * MIB;
    /// A checkpoint (the paper's model is 150 MB as float32, 300 MB as float64, and a
    /// PyTorch `.pth.tar` adds the optimiser's two moments).
    pub const CHECKPOINT: u64 = 4096 * MIB;
}

/// A read refused or failed, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read {}: it is {kind}, not a regular file", path.display())]
    NotAFile { path: PathBuf, kind: &'static str },
    #[error("cannot read {}: {size} bytes, more than the {limit} bytes such a file can need", path.display())]
    TooLarge { path: PathBuf, size: u64, limit: u64 },
}

/// What kind of non-regular file this is, in words.
fn file_kind(ft: &fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if ft.is_char_device() {
            return "a character device";
        }
        if ft.is_block_device() {
            return "a block device";
        }
        if ft.is_fifo() {
            return "a FIFO";
        }
        if ft.is_socket() {
            return "a socket";
        }
    }
    if ft.is_dir() { "a folder" } else { "not a regular file" }
}

/// Open a regular file of at most `limit` bytes for reading, without reading it: for readers
/// that take a path or seek (a PyTorch archive, a tensor file's tail). Symlinks are followed;
/// devices, FIFOs, sockets and folders are refused before any byte is read, and so is a file
/// larger than `limit`. Returns the open file and its size.
pub fn open_bounded(path: &Path, limit: u64) -> Result<(fs::File, u64), ReadError> {
    let io = |source| ReadError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut opts = fs::OpenOptions::new();
    opts.read(true);
    // A FIFO would block `open` until a writer came: open without waiting, then refuse it.
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.custom_flags(libc::O_NONBLOCK);
    }
    let file = opts.open(path).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(ReadError::NotAFile {
            path: path.to_path_buf(),
            kind: file_kind(&meta.file_type()),
        });
    }
    if meta.len() > limit {
        return Err(ReadError::TooLarge {
            path: path.to_path_buf(),
            size: meta.len(),
            limit,
        });
    }
    Ok((file, meta.len()))
}

/// Read a whole regular file of at most `limit` bytes. Symlinks are followed; devices,
/// FIFOs, sockets and folders are refused before any byte is read, and so is a file larger
/// than `limit` (also one that grows past it while being read).
pub fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>, ReadError> {
    use std::io::Read;
    let (file, len) = open_bounded(path, limit)?;
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| ReadError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    if bytes.len() as u64 > limit {
        return Err(ReadError::TooLarge {
            path: path.to_path_buf(),
            size: bytes.len() as u64,
            limit,
        });
    }
    Ok(bytes)
}

/// [`read_bounded`] as UTF-8 text. A leading byte-order mark is skipped (editors on Windows
/// write one); other invalid UTF-8 is an error naming the file and the byte offset.
pub fn read_text_bounded(path: &Path, limit: u64) -> Result<String, ReadError> {
    let mut bytes = read_bounded(path, limit)?;
    if bytes.starts_with(&[0xEF, 0xBB, 0xBF]) {
        bytes.drain(..3);
    }
    String::from_utf8(bytes).map_err(|e| ReadError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "not UTF-8 text (invalid byte at offset {})",
                e.utf8_error().valid_up_to()
            ),
        ),
    })
}

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
