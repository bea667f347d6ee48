//! Mapping SQLite failures into keyvault-core's error: a [`keyvault_core::BackendError`]
//! named "sqlite" that keeps the source for logs and never reaches a client.

/// The backend name carried by [`keyvault_core::BackendError`].
const BACKEND: &str = "sqlite";

/// Wraps any SQLite failure as a core backend error.
pub(crate) fn backend(
    e: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
) -> keyvault_core::Error {
    keyvault_core::Error::backend(BACKEND, e)
}

/// A stored value that does not decode (edited by hand, or written by a newer version).
#[derive(Debug, thiserror::Error)]
#[error("stored {column} does not decode: {reason}")]
struct Corrupt {
    column: &'static str,
    reason: String,
}

pub(crate) fn corrupt(
    column: &'static str,
    reason: impl std::fmt::Display,
) -> keyvault_core::Error {
    backend(Corrupt {
        column,
        reason: reason.to_string(),
    })
}
