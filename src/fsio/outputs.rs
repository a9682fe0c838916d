//! Outputs that must not replace inputs, and the free space a write can count on.

use std::fs;
use std::path::{Path, PathBuf};

use super::write::parent_of;

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
}
