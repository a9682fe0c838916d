//! Checkpoint choice for `xca select` (SPEC §8): which saved checkpoints a folder holds for
//! a range of epochs, and which of them the validation scores pick.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

/// The checkpoints in `dir` whose epoch lies in `epochs`, by epoch: xca's
/// `epoch_NNN.safetensors`, else the original's `epoch_NNN.pth.tar` (a folder of the authors'
/// checkpoints works as it is). A missing or unreadable folder holds none.
///
/// Found by listing the folder once, so the cost follows the files present, not the range
/// asked for (`1..=4000000000` is as quick as `31..=50`).
pub fn checkpoints_in(dir: &Path, epochs: &RangeInclusive<usize>) -> Vec<(usize, PathBuf)> {
    let mut found = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(rest) = name.strip_prefix("epoch_") else {
            continue;
        };
        let (digits, ours) = if let Some(d) = rest.strip_suffix(".safetensors") {
            (d, true)
        } else if let Some(d) = rest.strip_suffix(".pth.tar") {
            (d, false)
        } else {
            continue;
        };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(epoch) = digits.parse::<usize>() else { continue };
        // The canonical name only (epoch_007, not epoch_7 or epoch_0007), as training writes it.
        if !epochs.contains(&epoch) || format!("{epoch:03}") != digits {
            continue;
        }
        let slot = found.entry(epoch).or_insert((ours, entry.path()));
        if ours && !slot.0 {
            *slot = (ours, entry.path());
        }
    }
    found.into_iter().map(|(e, (_, p))| (e, p)).collect()
}

/// One checkpoint's validation scores.
#[derive(Debug, Clone, PartialEq)]
pub struct ValRow {
    pub epoch: usize,
    /// Average mAP over the tIoU thresholds, as a fraction.
    pub average_map: f64,
    /// Keyframe average deviation (frames).
    pub ad: f64,
    /// Keyframe F1.
    pub f: f64,
}

/// Highest average mAP; ties go to the earlier row (the earlier epoch when `rows` is by
/// epoch). `None` only for no rows.
pub fn choose(rows: &[ValRow]) -> Option<&ValRow> {
    rows.iter().fold(None, |best: Option<&ValRow>, r| match best {
        Some(b) if b.average_map >= r.average_map => Some(b),
        _ => Some(r),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(got: &[(usize, PathBuf)]) -> Vec<(usize, String)> {
        got.iter()
            .map(|(e, p)| (*e, p.file_name().unwrap().to_string_lossy().into_owned()))
            .collect()
    }

    #[test]
    fn checkpoints_are_listed_not_probed() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "epoch_002.pth.tar",
            "epoch_002.safetensors",
            "epoch_003.pth.tar",
            "epoch_7.safetensors",
            "epoch_0008.safetensors",
            "epoch_010.safetensors",
            "epoch_011.json",
            "epoch_.safetensors",
            "epoch_01a.safetensors",
            "notes.txt",
        ] {
            std::fs::write(dir.path().join(name), b"").unwrap();
        }
        assert_eq!(
            names(&checkpoints_in(dir.path(), &(1..=4_000_000_000))),
            [
                (2, "epoch_002.safetensors".to_string()),
                (3, "epoch_003.pth.tar".to_string()),
                (10, "epoch_010.safetensors".to_string())
            ]
        );
        assert_eq!(
            names(&checkpoints_in(dir.path(), &(3..=9))),
            [(3, "epoch_003.pth.tar".to_string())]
        );
        assert!(checkpoints_in(dir.path(), &(4..=9)).is_empty());
        assert!(checkpoints_in(&dir.path().join("missing"), &(1..=9)).is_empty());
    }

    #[test]
    fn the_best_average_map_wins_and_ties_go_to_the_earlier_epoch() {
        let r = |epoch, m| ValRow {
            epoch,
            average_map: m,
            ad: 0.0,
            f: 0.0,
        };
        assert_eq!(
            choose(&[r(31, 0.5), r(32, 0.7), r(33, 0.7), r(34, 0.6)]).unwrap().epoch,
            32
        );
        assert_eq!(choose(&[r(31, 0.5), r(32, 0.4), r(33, 0.8)]).unwrap().epoch, 33);
        assert_eq!(choose(&[r(40, 0.2)]).unwrap().epoch, 40);
        assert_eq!(choose(&[]), None);
    }
}
