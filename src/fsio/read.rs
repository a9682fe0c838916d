//! Bounded reads: regular files only, no larger than their format can need.

use std::fs;
use std::path::{Path, PathBuf};

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
