//! Per-video `.npy` features (SPEC §2.1): float32 (or float64) `[T, 4096]` or `[T, 64, 64]`.
//!
//! The header is checked against the file's real size before anything is allocated, so a
//! header that claims a huge shape is refused instead of exhausting memory.

use std::path::Path;

use npyz::{DType, NpyFile, NpyHeader, Order, TypeChar, WriterBuilder};

use super::DatasetError;

/// Feature rows of one video, row-major `[rows, dim]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Features {
    pub rows: usize,
    pub dim: usize,
    pub data: Vec<f32>,
}

impl Features {
    /// Read a feature file whose rows must hold `dim` values (`[T, dim]` or `[T, s, s]`).
    pub fn load(path: &Path, dim: usize) -> Result<Self, DatasetError> {
        let bytes = crate::fsio::read_bounded(path, crate::fsio::limits::FEATURES)?;
        Self::from_npy_bytes(&bytes, path, dim)
    }

    /// Parse `.npy` bytes; `path` is used in messages.
    pub fn from_npy_bytes(bytes: &[u8], path: &Path, dim: usize) -> Result<Self, DatasetError> {
        let fmt = |message: String| DatasetError::Format {
            path: path.to_path_buf(),
            message,
        };
        if let Some(problem) = header_problem(bytes) {
            return Err(fmt(problem));
        }
        if !shape_fits(bytes) {
            return Err(fmt("has a header whose shape does not fit in memory".into()));
        }
        let mut cursor = std::io::Cursor::new(bytes);
        let header = NpyHeader::from_reader(&mut cursor).map_err(|e| {
            // npyz quotes the whole header: cut it to one short line.
            fmt(format!(
                "not a valid .npy file: {}",
                crate::text::escaped(&e.to_string(), crate::text::MAX_QUOTED)
            ))
        })?;
        let data_start = cursor.position() as usize;
        let shape: Vec<u64> = header.shape().to_vec();
        let (kind, width) = match header.dtype() {
            DType::Plain(ts) => (ts.type_char(), ts.num_bytes().unwrap_or(0)),
            other => {
                return Err(fmt(format!(
                    "has dtype {} but features must be float32 or float64",
                    other.descr()
                )));
            }
        };
        let dtype_name = header.dtype().descr();
        if kind != TypeChar::Float || !(width == 4 || width == 8) {
            return Err(fmt(format!(
                "has dtype {dtype_name} but features must be float32 or float64"
            )));
        }
        let side = (dim as f64).sqrt().round() as u64;
        let rows = match shape.as_slice() {
            [t, c] if *c == dim as u64 => *t,
            [t, h, w] if *h == side && *w == side && side * side == dim as u64 => *t,
            _ => {
                return Err(fmt(format!(
                    "has shape {shape:?} but features must be [T, {dim}] or [T, {side}, {side}]"
                )));
            }
        };
        // Checked arithmetic: a hostile header must not overflow or drive the allocation.
        let expected = rows
            .checked_mul(dim as u64)
            .and_then(|n| n.checked_mul(width as u64))
            .ok_or_else(|| fmt(format!("shape {shape:?} is too large")))?;
        let available = (bytes.len() - data_start) as u64;
        if available < expected {
            return Err(fmt(format!(
                "is truncated: shape {shape:?} ({dtype_name}) needs {expected} data bytes but the file has {available}"
            )));
        }
        let body = &bytes[data_start..data_start + expected as usize];
        let order = header.order();
        let npy = NpyFile::with_header(header, body);
        let data: Vec<f32> = if width == 4 {
            npy.into_vec::<f32>()
        } else {
            npy.into_vec::<f64>().map(|v| v.into_iter().map(|x| x as f32).collect())
        }
        .map_err(|e| fmt(format!("cannot decode data: {e}")))?;
        let rows = rows as usize;
        let data = match order {
            Order::C => data,
            // Fortran order stores the first axis fastest: element (t, k) sits at k·rows + t.
            Order::Fortran => {
                let mut out = vec![0.0f32; data.len()];
                for t in 0..rows {
                    for k in 0..dim {
                        out[t * dim + k] = data[k * rows + t];
                    }
                }
                out
            }
        };
        Ok(Self { rows, dim, data })
    }

    /// Keep every `d`-th row (`feats[::d]`).
    pub fn downsample(self, d: usize) -> Self {
        if d <= 1 {
            return self;
        }
        let rows = self.rows.div_ceil(d);
        let mut data = Vec::with_capacity(rows * self.dim);
        for r in (0..self.rows).step_by(d) {
            data.extend_from_slice(&self.data[r * self.dim..(r + 1) * self.dim]);
        }
        Self {
            rows,
            dim: self.dim,
            data,
        }
    }

    /// Index of the first NaN/Inf value, if any.
    pub fn first_non_finite(&self) -> Option<usize> {
        self.data.iter().position(|x| !x.is_finite())
    }

    /// Row `r` as a slice.
    pub fn row(&self, r: usize) -> &[f32] {
        &self.data[r * self.dim..(r + 1) * self.dim]
    }
}

/// Deepest bracket nesting of a header npyz is given to parse. A float feature file's header
/// nests two deep (`{… 'shape': (T, 4096), }`), structured dtypes a few more.
const MAX_HEADER_NESTING: usize = 8;

/// What npyz itself would do badly with: it allocates a buffer of the header length the
/// file claims (up to 4 GiB in version 2/3) before reading it, and its header parser takes
/// time exponential in the bracket nesting depth (cargo fuzz found a 236-byte file of `[[[…`
/// that ran for minutes; each level doubles the time). Both are checked here first. A file
/// that is not recognisably an `.npy` preamble is left for npyz to reject.
fn header_problem(bytes: &[u8]) -> Option<String> {
    if bytes.len() < 10 || !bytes.starts_with(b"\x93NUMPY") {
        return None;
    }
    let (start, len) = match bytes[6] {
        1 => (10, u16::from_le_bytes([bytes[8], bytes[9]]) as usize),
        2 | 3 if bytes.len() >= 12 => (
            12,
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
        ),
        _ => return None,
    };
    let available = bytes.len() - start;
    if len > available {
        return Some(format!(
            "is truncated: its header claims {len} bytes but only {available} follow the preamble"
        ));
    }
    let (mut depth, mut deepest) = (0usize, 0usize);
    for &b in &bytes[start..start + len] {
        match b {
            b'(' | b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    (deepest > MAX_HEADER_NESTING)
        .then(|| format!("has a malformed header: brackets nested {deepest} deep (a feature file's header nests 2)"))
}

/// npyz multiplies the header's dimensions without overflow checks, so a hostile header
/// can make it panic (debug) or wrap (release). Look at the shape tuple first: every
/// dimension and their product must fit in a u64. Anything that is not recognisably a
/// shape is left for npyz to reject.
fn shape_fits(bytes: &[u8]) -> bool {
    let head = &bytes[..bytes.len().min(65_536 + 12)];
    let text = String::from_utf8_lossy(head);
    let Some(at) = text.find("'shape'") else { return true };
    let rest = &text[at..];
    let (Some(open), Some(close)) = (rest.find('('), rest.find(')')) else {
        return true;
    };
    if close < open {
        return true;
    }
    let mut product: u64 = 1;
    for part in rest[open + 1..close]
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        match part.parse::<u64>().ok().and_then(|d| product.checked_mul(d)) {
            Some(p) => product = p,
            None => return part.parse::<u64>().is_err() && !part.chars().all(|c| c.is_ascii_digit()),
        }
    }
    // Elements of up to 16 bytes must stay addressable too.
    product.checked_mul(16).is_some()
}

/// Write `[rows, dim]` float32 features as a C-order `.npy` (tests and tools).
pub fn to_npy_bytes(rows: usize, dim: usize, data: &[f32]) -> Result<Vec<u8>, std::io::Error> {
    let mut out = Vec::new();
    {
        let mut w = npyz::WriteOptions::new()
            .default_dtype()
            .shape(&[rows as u64, dim as u64])
            .writer(&mut out)
            .begin_nd()?;
        w.extend(data.iter().copied())?;
        w.finish()?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> &'static Path {
        Path::new("v.npy")
    }

    #[test]
    fn round_trip_and_downsample() {
        let data: Vec<f32> = (0..5 * 4).map(|x| x as f32).collect();
        let bytes = to_npy_bytes(5, 4, &data).unwrap();
        let f = Features::from_npy_bytes(&bytes, p(), 4).unwrap();
        assert_eq!((f.rows, f.dim), (5, 4));
        assert_eq!(f.data, data);
        let d = f.downsample(2);
        assert_eq!(d.rows, 3);
        assert_eq!(d.row(1), &[8.0, 9.0, 10.0, 11.0]);
        assert_eq!(d.row(2), &[16.0, 17.0, 18.0, 19.0]);
    }

    #[test]
    fn accepts_3d_f64_and_fortran() {
        let mut out = Vec::new();
        {
            let mut w = npyz::WriteOptions::new()
                .default_dtype()
                .shape(&[2, 2, 2])
                .writer(&mut out)
                .begin_nd()
                .unwrap();
            w.extend([0.5f64, 1.5, 2.5, 3.5, 4.5, 5.5, 6.5, 7.5]).unwrap();
            w.finish().unwrap();
        }
        let f = Features::from_npy_bytes(&out, p(), 4).unwrap();
        assert_eq!(f.rows, 2);
        assert_eq!(f.data, vec![0.5, 1.5, 2.5, 3.5, 4.5, 5.5, 6.5, 7.5]);

        let mut out = Vec::new();
        {
            let mut w = npyz::WriteOptions::new()
                .default_dtype()
                .order(Order::Fortran)
                .shape(&[3, 4])
                .writer(&mut out)
                .begin_nd()
                .unwrap();
            // Fortran order: column by column.
            w.extend((0..12).map(|i| i as f32)).unwrap();
            w.finish().unwrap();
        }
        let f = Features::from_npy_bytes(&out, p(), 4).unwrap();
        assert_eq!(f.row(0), &[0.0, 3.0, 6.0, 9.0]);
        assert_eq!(f.row(2), &[2.0, 5.0, 8.0, 11.0]);
    }

    #[test]
    fn refuses_wrong_shape_dtype_truncation_and_garbage() {
        let bytes = to_npy_bytes(3, 5, &[0.0; 15]).unwrap();
        let e = Features::from_npy_bytes(&bytes, p(), 4).unwrap_err().to_string();
        assert!(
            e.contains("v.npy") && e.contains("[3, 5]") && e.contains("[T, 4]"),
            "{e}"
        );

        let good = to_npy_bytes(3, 4, &[1.0; 12]).unwrap();
        let e = Features::from_npy_bytes(&good[..good.len() - 5], p(), 4)
            .unwrap_err()
            .to_string();
        assert!(e.contains("truncated"), "{e}");

        let mut ints = Vec::new();
        {
            let mut w = npyz::WriteOptions::new()
                .default_dtype()
                .shape(&[1, 4])
                .writer(&mut ints)
                .begin_nd()
                .unwrap();
            w.extend([1i32, 2, 3, 4]).unwrap();
            w.finish().unwrap();
        }
        let e = Features::from_npy_bytes(&ints, p(), 4).unwrap_err().to_string();
        assert!(e.contains("dtype") && e.contains("float32"), "{e}");

        let e = Features::from_npy_bytes(b"hello world", p(), 4)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a valid .npy"), "{e}");
    }

    /// A hand-made version-1.0 header (magic, length, dict padded to 64 bytes) + `body`.
    fn raw_npy(dict: &str, body: &[u8]) -> Vec<u8> {
        let mut header = dict.to_string();
        while !(10 + header.len() + 1).is_multiple_of(64) {
            header.push(' ');
        }
        header.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn deeply_nested_or_oversized_headers_are_refused_before_npyz_parses_them() {
        // Found by cargo fuzz (tests/fuzz_regressions/npy/): npyz's parser takes time
        // exponential in the nesting depth; 12 levels already cost it a fraction of a second.
        let nested = raw_npy(&"[".repeat(12), &[]);
        let e = Features::from_npy_bytes(&nested, p(), 4).unwrap_err().to_string();
        assert!(e.contains("v.npy") && e.contains("nested 12 deep"), "{e}");
        let found = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fuzz_regressions/npy/timeout-fa20eea4eaf0f7e1e87c46df697362cca9a042d2"
        ))
        .unwrap();
        let e = Features::from_npy_bytes(&found, p(), 4096).unwrap_err().to_string();
        assert!(e.contains("malformed header"), "{e}");
        // A version-2 header claiming 4 GiB: refused before npyz allocates a buffer for it.
        let mut v2 = b"\x93NUMPY\x02\x00".to_vec();
        v2.extend_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
        v2.extend_from_slice(b"{'descr': '<f4'");
        let e = Features::from_npy_bytes(&v2, p(), 4).unwrap_err().to_string();
        assert!(e.contains("header claims 4294967280 bytes but only 15 follow"), "{e}");
        // Nesting as deep as real headers go is still read.
        let ok = raw_npy(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 4), }",
            &[0u8; 16],
        );
        assert_eq!(Features::from_npy_bytes(&ok, p(), 4).unwrap().rows, 1);
    }

    #[test]
    fn huge_header_is_refused_before_allocating() {
        let ok = raw_npy(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 4), }",
            &[0u8; 16],
        );
        assert_eq!(Features::from_npy_bytes(&ok, p(), 4).unwrap().rows, 1);
        let huge = raw_npy(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000000, 4096), }",
            &[0u8; 16],
        );
        let e = Features::from_npy_bytes(&huge, p(), 4096).unwrap_err().to_string();
        assert!(e.contains("truncated") && e.contains("1000000000000"), "{e}");
        let overflow = raw_npy(
            "{'descr': '<f8', 'fortran_order': False, 'shape': (18446744073709551615, 4096), }",
            &[],
        );
        assert!(Features::from_npy_bytes(&overflow, p(), 4096).is_err());
    }
}
