//! meshgate configuration: Istio YAML in, a validated and compiled [`Model`] out.
//!
//! `load` reads files and directories (`source`), parses every document into strict serde
//! structs by its kind (`raw`), and compiles them into the immutable runtime model (`compile`,
//! `model`), collecting every error on the way. Nothing here does I/O but reading files.

#![forbid(unsafe_code)]
// No input, configuration or network bytes, may panic the process: the workspace's lints deny
// unwrap, expect, panic, unchecked arithmetic and indexing here (Cargo.toml), and where an
// invariant makes an index or an operation safe, a narrowly scoped `allow` says why. Unit tests
// may unwrap, index and panic (clippy.toml), and compute freely:
#![cfg_attr(test, allow(clippy::arithmetic_side_effects))]

mod compile;
pub mod error;
pub mod fields;
pub mod model;
pub mod raw;
pub mod source;
/// SPIFFE IDs and trust domains, from the crate they live in.
pub use meshgate_spiffe as spiffe;
pub mod warning;

use std::path::PathBuf;

pub use error::{ConfigError, ConfigErrors};
pub use model::Model;
pub use warning::{Code, Warning};

/// Reads, parses and compiles the configuration at `paths` (files or directories).
pub fn load(paths: &[PathBuf]) -> Result<Model, ConfigErrors> {
    load_checked(paths).map_err(|(errors, _)| errors)
}

/// `load`, keeping on failure the warnings found beside the errors (files skipped, resources
/// that do not apply), so that `check` shows everything that is wrong at once.
pub fn load_checked(paths: &[PathBuf]) -> Result<Model, (ConfigErrors, Vec<Warning>)> {
    let mut errors = Vec::new();
    let read = source::read(paths, &mut errors);
    finish(read, errors)
}

/// Compiles configuration given as text, as if read from `file` (for tests and tools).
pub fn load_str(file: &str, text: &str) -> Result<Model, ConfigErrors> {
    let mut errors = Vec::new();
    let file = PathBuf::from(file);
    let documents = source::split(&file, text, &mut errors);
    let read = source::Read {
        documents,
        files: vec![file],
        warnings: Vec::new(),
    };
    finish(read, errors).map_err(|(errors, _)| errors)
}

fn finish(
    read: source::Read,
    mut errors: Vec<ConfigError>,
) -> Result<Model, (ConfigErrors, Vec<Warning>)> {
    let (mut warnings, mut secret_files) = (Vec::new(), Vec::new());
    let model = compile::compile(read, &mut errors, &mut warnings, &mut secret_files);
    match model {
        Some(model) if errors.is_empty() => Ok(model),
        _ => Err((ConfigErrors(errors, secret_files), warnings)),
    }
}
