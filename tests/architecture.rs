//! docs/ARCHITECTURE.md's import rules, checked: each library folder may name (`crate::x`) only
//! the modules its paragraph there allows. Test modules (`#[cfg(test)] mod …` to the end of a
//! file, and files named `tests.rs`) and comments are not counted; `src/cli/` is the binary and
//! may use anything.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module (top-level folder or file, or `config::adapt`) → the modules it may import.
/// Keep in step with docs/ARCHITECTURE.md.
const ALLOWED: &[(&str, &[&str])] = &[
    // Leaves: plain Rust, no other xca module.
    ("geometry", &[]),
    ("text", &[]),
    ("memory", &[]),
    ("device", &[]),
    ("host", &[]),
    ("phase", &[]),
    ("fsio", &[]),
    ("select", &[]),
    ("kernels", &["host"]),
    ("report", &["fsio"]),
    // The typed configuration; only its adapters know the components they configure.
    ("config", &["fsio"]),
    ("config::adapt", &["fsio", "model", "infer"]),
    ("dataset", &["config", "fsio", "text"]),
    ("synth", &["fsio", "text"]),
    ("model", &["config", "fsio", "kernels"]),
    ("infer", &["config", "geometry"]),
    (
        "train",
        &["config", "dataset", "fsio", "host", "kernels", "model", "phase", "text"],
    ),
    ("metrics", &["dataset", "fsio", "geometry", "infer", "text"]),
    ("evaluate", &["config", "dataset", "host", "infer", "metrics", "model"]),
    (
        "bench",
        &[
            "config", "dataset", "evaluate", "host", "kernels", "model", "phase", "train",
        ],
    ),
];

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src is readable") {
        let path = entry.expect("a folder entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The `crate::x` names in `text`, outside comments and test modules.
fn imports(text: &str) -> BTreeSet<String> {
    let code = match text.find("#[cfg(test)]\nmod ") {
        Some(i) => &text[..i],
        None => text,
    };
    let mut found = BTreeSet::new();
    for line in code.lines().map(str::trim).filter(|l| !l.starts_with("//")) {
        let mut rest = line;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            if !name.is_empty() {
                found.insert(name);
            }
        }
    }
    found
}

/// Which module of [`ALLOWED`] a file under `src/` belongs to (`None`: the binary's files).
fn owner(rel: &str) -> Option<String> {
    if rel.starts_with("cli/") || rel == "main.rs" || rel == "lib.rs" {
        return None;
    }
    if rel == "config/adapt.rs" {
        return Some("config::adapt".into());
    }
    let top = rel.split('/').next().unwrap_or(rel);
    Some(top.trim_end_matches(".rs").to_string())
}

fn violations(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut bad: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for path in files {
        let rel = path
            .strip_prefix(src)
            .expect("under src")
            .to_string_lossy()
            .replace('\\', "/");
        if rel.ends_with("/tests.rs") {
            continue;
        }
        let Some(module) = owner(&rel) else { continue };
        let own = module.split("::").next().unwrap_or(&module).to_string();
        let text = std::fs::read_to_string(&path).expect("a source file is UTF-8");
        let ok = allowed.get(module.as_str()).copied();
        for name in imports(&text) {
            if name == own {
                continue;
            }
            if !ok.is_some_and(|ok| ok.contains(&name.as_str())) {
                bad.entry(format!("{rel} ({module})")).or_default().insert(name);
            }
        }
    }
    bad
}

#[test]
fn library_folders_import_only_what_architecture_md_allows() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let bad = violations(&src);
    assert!(
        bad.is_empty(),
        "imports that docs/ARCHITECTURE.md does not allow (fix the import or the rule, both places):\n{bad:#?}"
    );
}

#[test]
fn the_scanner_sees_imports_and_skips_comments_and_tests() {
    let text = "use crate::model::Network;\n// crate::cli is only a comment\nfn f() { crate::train::x(); }\n\
                #[cfg(test)]\nmod tests {\n    use crate::report::y;\n}\n";
    let got: Vec<String> = imports(text).into_iter().collect();
    assert_eq!(got, ["model", "train"]);
    assert_eq!(owner("config/adapt.rs").as_deref(), Some("config::adapt"));
    assert_eq!(owner("config/tree.rs").as_deref(), Some("config"));
    assert_eq!(owner("geometry.rs").as_deref(), Some("geometry"));
    assert_eq!(owner("cli/train.rs"), None);
}

#[test]
fn a_module_missing_from_the_table_is_a_violation() {
    // A new top-level module must be given its rule: with no entry, any import is refused.
    let dir = tempfile::tempdir().expect("a temp folder");
    std::fs::write(dir.path().join("newthing.rs"), "use crate::fsio::read_bounded;\n").expect("write");
    std::fs::write(dir.path().join("geometry.rs"), "use crate::model::Network;\n").expect("write");
    let bad = violations(dir.path());
    let names: Vec<&String> = bad.keys().collect();
    assert_eq!(names, ["geometry.rs (geometry)", "newthing.rs (newthing)"]);
}
