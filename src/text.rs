//! Text that came from a user's file or argument, made safe to print inside a one-line
//! message: an id holding a newline must not forge a second `xca: error:` line, a NUL or an
//! escape sequence must not reach the terminal raw, and a 65 KB header must not be echoed.

/// The most characters of a user's text that a message quotes.
pub const MAX_QUOTED: usize = 120;

/// `s` in single quotes, control characters, quotes and backslashes escaped as Rust
/// escapes them (`\n`, `\0`, `\u{1b}`), cut to [`MAX_QUOTED`] characters.
pub fn quoted(s: &str) -> String {
    format!("'{}'", escaped(s, MAX_QUOTED))
}

/// `s` escaped as in [`quoted`], without quotes, cut to `max` characters of the original
/// (with `…` and the full length when cut).
pub fn escaped(s: &str, max: usize) -> String {
    let mut out = String::new();
    for (n, c) in s.chars().enumerate() {
        if n == max {
            out.push_str(&format!("… ({} characters in all)", s.chars().count()));
            return out;
        }
        // Leave printable non-ASCII text (names in other scripts) as it is.
        if c.is_control() || c == '\'' || c == '\\' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// A file name made of the safe characters of `s` (others become `_`).
pub fn file_stem_safe(s: &str) -> String {
    let t: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if t.is_empty() || t.chars().all(|c| c == '.') {
        "video".into()
    } else {
        t
    }
}

/// One distinct file stem per name, in order: [`file_stem_safe`] of each, and where two
/// would be equal (`a b` and `a_b`; also `A` and `a`, for case-insensitive file systems) or
/// equal a `reserved` stem (`summary`), the later one gets `~2`, `~3`, … so that no picture
/// overwrites another.
pub fn unique_file_stems<'a>(names: impl IntoIterator<Item = &'a str>, reserved: &[&str]) -> Vec<String> {
    let mut taken: std::collections::HashSet<String> = reserved.iter().map(|r| r.to_lowercase()).collect();
    let mut out = Vec::new();
    for name in names {
        let base = file_stem_safe(name);
        let mut stem = base.clone();
        let mut k = 1;
        while !taken.insert(stem.to_lowercase()) {
            k += 1;
            stem = format!("{base}~{k}");
        }
        out.push(stem);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picture_names_are_safe_and_distinct() {
        assert_eq!(file_stem_safe("test01"), "test01");
        assert_eq!(file_stem_safe("a/b c"), "a_b_c");
        assert_eq!(file_stem_safe(".."), "video");
        assert_eq!(
            unique_file_stems(["a b", "a_b", "summary", "A_B", "x", "a_b~2"], &["summary"]),
            ["a_b", "a_b~2", "summary~2", "A_B~3", "x", "a_b_2"]
        );
    }

    #[test]
    fn control_characters_are_escaped_and_long_text_cut() {
        assert_eq!(quoted("test01"), "'test01'");
        assert_eq!(quoted("a\nxca: error: forged"), "'a\\nxca: error: forged'");
        assert_eq!(quoted("nul\0bell\u{7}"), "'nul\\u{0}bell\\u{7}'");
        assert_eq!(quoted("it's"), "'it\\'s'");
        assert_eq!(quoted("Gefäß"), "'Gefäß'");
        let long = "x".repeat(65_000);
        let q = quoted(&long);
        assert!(q.len() < 200 && q.contains("65000 characters"), "{q}");
        assert!(!quoted("a\r\n\u{1b}[31m").chars().any(char::is_control));
    }
}
