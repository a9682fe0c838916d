//! Writing the SPEC §2.1 files: `image/<id>.npy` (float32 `[T, side²]`, C order) and the
//! ActivityNet-style `annotations/vessel.json`, videos in generation order.

use std::path::Path;

use serde_json::{Map, Value, json};

use super::{SynthVideo, frame_to_seconds};
use crate::fsio::{WriteError, write_atomic, write_json_atomic};

/// Encode a video's rows as `.npy` bytes.
pub(crate) fn npy_bytes(v: &SynthVideo) -> std::io::Result<Vec<u8>> {
    use npyz::WriterBuilder;
    let mut buf = Vec::with_capacity(v.data.len() * 4 + 128);
    let mut w = npyz::WriteOptions::<f32>::new()
        .default_dtype()
        .shape(&[v.rows as u64, (v.side * v.side) as u64])
        .writer(&mut buf)
        .begin_nd()?;
    w.extend(v.data.iter().copied())?;
    w.finish()?;
    Ok(buf)
}

pub(crate) fn write_npy(path: &Path, v: &SynthVideo) -> Result<(), WriteError> {
    let bytes = npy_bytes(v).map_err(|source| WriteError {
        path: path.to_path_buf(),
        source,
    })?;
    write_atomic(path, &bytes)
}

/// The `database` object, filled in id order.
#[derive(Debug, Default)]
pub(crate) struct Database {
    videos: Map<String, Value>,
}

impl Database {
    pub(crate) fn add(&mut self, v: &SynthVideo) {
        let s = |f| frame_to_seconds(f, v.fps);
        let (start, apex, end) = (s(v.key.start), s(v.key.apex), s(v.key.end));
        self.videos.insert(
            v.id.clone(),
            json!({
                "subset": v.subset.name(),
                "duration": v.duration(),
                "fps": v.fps,
                "annotations": [
                    {"label": "filling", "label_id": 0, "segment": [start, apex]},
                    {"label": "washout", "label_id": 1, "segment": [apex, end]},
                ],
            }),
        );
    }

    pub(crate) fn to_value(&self) -> Value {
        json!({ "database": Value::Object(self.videos.clone()) })
    }

    pub(crate) fn write(&self, path: &Path) -> Result<(), WriteError> {
        write_json_atomic(path, &self.to_value())
    }
}
