//! Reading the JSON of annotation and detection files as Python tools write it.
//!
//! Python's `json.dump` writes `NaN`/`Infinity` for non-finite floats; [`prepare`] turns
//! those tokens into strings so that a reader can report them as non-finite values of a
//! named entry instead of a syntax error. serde_json keeps the last of two equal keys, so
//! [`duplicate_key_in`] finds a repeated video before it is merged silently. The typed
//! getters return an [`EntryError`] naming the entry (e.g. `annotations[0].segment[1]`);
//! each reader wraps it in its own error with the file.

use std::borrow::Cow;

use serde_json::{Map, Value};

/// A missing or bad value at `entry`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryError {
    /// Where, e.g. `annotations[0].segment`.
    pub entry: String,
    /// What is wrong.
    pub msg: String,
}

impl EntryError {
    /// An error at `entry`.
    pub fn new(entry: &str, msg: impl Into<String>) -> Self {
        Self {
            entry: entry.to_string(),
            msg: msg.into(),
        }
    }
}

/// `text` without a leading byte-order mark and with the bare tokens `NaN`, `Infinity` and
/// `-Infinity` (outside strings) quoted, ready for `serde_json`.
pub fn prepare(text: &str) -> Cow<'_, str> {
    // Editors on Windows start UTF-8 files with a byte-order mark; JSON has no place for it.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    quote_non_finite(text)
}

/// Replace the bare tokens `NaN`, `Infinity` and `-Infinity` that Python's json module
/// writes (outside strings) by the strings `"NaN"`, `"Infinity"`, `"-Infinity"`.
pub fn quote_non_finite(text: &str) -> Cow<'_, str> {
    if !(text.contains("NaN") || text.contains("Infinity")) {
        return Cow::Borrowed(text);
    }
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len() + 16);
    let (mut i, mut last, mut in_str) = (0, 0, false);
    while i < b.len() {
        let c = b[i];
        if in_str {
            if c == b'\\' {
                i += 2;
                continue;
            }
            if c == b'"' {
                in_str = false;
            }
            i += 1;
            continue;
        }
        if c == b'"' {
            in_str = true;
            i += 1;
            continue;
        }
        let token = ["-Infinity", "Infinity", "NaN"]
            .into_iter()
            .find(|t| b[i..].starts_with(t.as_bytes()));
        if let Some(t) = token {
            out.push_str(&text[last..i]);
            out.push('"');
            out.push_str(t);
            out.push('"');
            i += t.len();
            last = i;
            continue;
        }
        i += 1;
    }
    out.push_str(&text[last..]);
    Cow::Owned(out)
}

/// The first key that occurs twice in the JSON object under the top-level key `field`
/// (e.g. a video listed twice in `database`). `None` when there is none, and also when the
/// text is not such JSON: the caller's parser reports that.
pub fn duplicate_key_in(bytes: &[u8], field: &str) -> Option<String> {
    use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};
    use std::collections::HashSet;
    use std::fmt;

    /// Visits the root object, descending only into `field`.
    struct Root<'a>(&'a str);
    /// Visits `field`'s object and returns its first repeated key.
    struct Keys;

    impl<'de> Visitor<'de> for Keys {
        type Value = Option<String>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut seen = HashSet::new();
            let mut dup = None;
            while let Some(k) = map.next_key::<String>()? {
                map.next_value::<IgnoredAny>()?;
                if dup.is_none() && !seen.insert(k.clone()) {
                    dup = Some(k);
                }
            }
            Ok(dup)
        }
    }
    impl<'de> DeserializeSeed<'de> for Keys {
        type Value = Option<String>;
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_map(self)
        }
    }
    impl<'de> Visitor<'de> for Root<'_> {
        type Value = Option<String>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut dup = None;
            while let Some(k) = map.next_key::<String>()? {
                if k == self.0 && dup.is_none() {
                    dup = map.next_value_seed(Keys)?;
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            Ok(dup)
        }
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    serde::Deserializer::deserialize_map(&mut de, Root(field))
        .ok()
        .flatten()
}

/// What kind of JSON value `v` is, in words.
pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// `v` as an object.
pub fn object<'v>(v: &'v Value, entry: &str) -> Result<&'v Map<String, Value>, EntryError> {
    v.as_object()
        .ok_or_else(|| EntryError::new(entry, format!("expected an object, found {}", kind(v))))
}

/// `v` as a list.
pub fn array<'v>(v: &'v Value, entry: &str) -> Result<&'v Vec<Value>, EntryError> {
    v.as_array()
        .ok_or_else(|| EntryError::new(entry, format!("expected a list, found {}", kind(v))))
}

/// A finite number (non-finite values, read from Python's NaN/Infinity, are errors).
pub fn number(v: &Value, entry: &str) -> Result<f64, EntryError> {
    match v {
        Value::Number(n) => n.as_f64().ok_or_else(|| EntryError::new(entry, "number out of range")),
        Value::String(s) if matches!(s.as_str(), "NaN" | "Infinity" | "-Infinity") => {
            Err(EntryError::new(entry, format!("non-finite value {s}")))
        }
        other => Err(EntryError::new(
            entry,
            format!("expected a number, found {}", kind(other)),
        )),
    }
}

/// A non-negative integer class id (integral floats like `1.0` accepted).
pub fn index(v: &Value, entry: &str) -> Result<usize, EntryError> {
    if let Some(u) = v.as_u64() {
        return Ok(u as usize);
    }
    match v.as_f64() {
        Some(f) if f >= 0.0 && f.fract() == 0.0 && f < 1e15 => Ok(f as usize),
        _ => Err(EntryError::new(
            entry,
            format!("expected a non-negative integer class id, found {v}"),
        )),
    }
}

/// `[start, end]`: two finite numbers with end ≥ start.
pub fn segment(v: &Value, entry: &str) -> Result<[f64; 2], EntryError> {
    let a = array(v, entry)?;
    if a.len() != 2 {
        return Err(EntryError::new(
            entry,
            format!("expected [start, end], found {} values", a.len()),
        ));
    }
    let s = number(&a[0], &format!("{entry}[0]"))?;
    let e = number(&a[1], &format!("{entry}[1]"))?;
    if e < s {
        return Err(EntryError::new(entry, format!("end {e} is before start {s}")));
    }
    Ok([s, e])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_finite_tokens_are_quoted_outside_strings_only() {
        let t = r#"{"a NaN": NaN, "b": [Infinity, -Infinity], "c": "x\"NaN"}"#;
        assert_eq!(
            quote_non_finite(t),
            r#"{"a NaN": "NaN", "b": ["Infinity", "-Infinity"], "c": "x\"NaN"}"#
        );
        assert_eq!(prepare("\u{feff}[NaN]"), r#"["NaN"]"#);
    }

    #[test]
    fn typed_getters_name_the_entry() {
        let v: Value = serde_json::from_str(&prepare(r#"[[0, 1.5], [2, 1], [0, NaN], 1.0, -1, "x"]"#)).unwrap();
        assert_eq!(segment(&v[0], "s"), Ok([0.0, 1.5]));
        assert_eq!(
            segment(&v[1], "s"),
            Err(EntryError::new("s", "end 1 is before start 2"))
        );
        assert_eq!(
            segment(&v[2], "s"),
            Err(EntryError::new("s[1]", "non-finite value NaN"))
        );
        assert_eq!(index(&v[3], "i"), Ok(1));
        assert!(index(&v[4], "i").is_err());
        assert_eq!(
            number(&v[5], "n"),
            Err(EntryError::new("n", "expected a number, found a string"))
        );
    }
}
