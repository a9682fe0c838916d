//! The configuration (SPEC §5): the typed YAML tree, read and validated once, its derived
//! values, and the adapters that turn it into the small configs of each component.
//!
//! - [`tree`]: the sections and their defaults (key names are the original's, so
//!   `xca config` shows the user exactly what will run);
//! - [`load`]: reading the YAML (flow mappings, `~`, `True`/`False`, comments), unknown-key
//!   hints, notes on accepted-but-ignored keys;
//! - [`validate`]: every rule the types cannot express, each decided here and only here;
//! - [`derived`]: values computed from the tree (pyramid strides and levels,
//!   `max_div_factor`, image side, epochs), never stored twice;
//! - [`adapt`]: YAML tree → component configs (network, post-processing, losses, optimiser).
//!
//! `tree`, `load`, `validate` and `derived` import nothing from `model`, `train` or `infer`;
//! only `adapt` does.

use std::path::PathBuf;

pub mod adapt;
pub mod derived;
pub mod load;
pub mod tree;
pub mod validate;

pub use derived::Pyramid;
pub use load::{LoadedConfig, MAX_SEQ_LEN};
pub use tree::*;

/// A configuration that cannot be used, naming the file and the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Bounded(#[from] crate::fsio::ReadError),
    #[error("{}: not valid YAML: {message}", path.display())]
    Yaml { path: PathBuf, message: String },
    #[error("{}: {message}", path.display())]
    Structure { path: PathBuf, message: String },
    #[error("{}: unknown key '{key}' in {section}{hint}", path.display())]
    UnknownKey {
        path: PathBuf,
        key: String,
        section: String,
        hint: String,
    },
    #[error("{}: {key}: {message}", path.display())]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
}
