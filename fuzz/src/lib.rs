//! The library's input-facing modules, compiled from the library's own source files.
//!
//! The targets fuzz `trainyard::spec` and `trainyard::data::image`. Both modules depend
//! only on serde, serde_json, serde_path_to_error, thiserror, utoipa and image, while the
//! whole library pulls in Candle, sqlx, tokio and axum, which would make an instrumented
//! build take most of an hour on a small machine. So this crate compiles the very same
//! files (`#[path]`) with only what they need; the code fuzzed is the code served. If one
//! of these modules ever uses another part of the crate, this stops compiling: depend on
//! `trainyard` itself then.

#[path = "../../src/spec/mod.rs"]
pub mod spec;

// At the root, not inside `mod data`, so that the paths are plain files; `image` finds
// `super::resize` here as it does in the library.
#[path = "../../src/data/image.rs"]
pub mod image;
#[path = "../../src/data/resize.rs"]
pub mod resize;

/// The library's names for them.
pub mod data {
    pub use super::{image, resize};
}
