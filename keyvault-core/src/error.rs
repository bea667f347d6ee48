//! The crate's error type.
//!
//! Normal verification outcomes (unknown, disabled, expired, limited…) are values, not errors:
//! see [`crate::Outcome`]. `Err` means bad input to an API call, a missing or conflicting
//! target, or infrastructure that failed.

use std::fmt;

/// A value refused by a constructor or builder, naming the field that is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct InvalidInput {
    /// The field (JSON name) that is wrong.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl InvalidInput {
    /// A new error for `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }

    /// Prefixes the field with a parent path (`ratelimits[2]` + `limit` → `ratelimits[2].limit`).
    pub fn within(mut self, parent: &str) -> Self {
        self.field = if self.field.is_empty() {
            parent.to_owned()
        } else if self.field.starts_with('[') {
            format!("{parent}{}", self.field)
        } else {
            format!("{parent}.{}", self.field)
        };
        self
    }
}

/// A failure of a storage or network backend. The source is kept for logs; it never reaches a
/// client.
#[derive(Debug, thiserror::Error)]
#[error("{backend} backend failed")]
pub struct BackendError {
    backend: &'static str,
    #[source]
    source: Box<dyn std::error::Error + Send + Sync + 'static>,
}

impl BackendError {
    /// Wraps a backend's error.
    pub fn new(
        backend: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        Self {
            backend,
            source: source.into(),
        }
    }

    /// Which backend failed ("postgres", "redis", …).
    pub fn backend(&self) -> &'static str {
        self.backend
    }
}

/// What kind of thing an id named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Entity {
    /// A key.
    Key,
    /// A record kept by a host.
    Record,
    /// A user account (by username).
    User,
    /// An API token.
    Token,
    /// A signed-in session.
    Session,
}

impl fmt::Display for Entity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Entity::Key => "key",
            Entity::Record => "record",
            Entity::User => "user",
            Entity::Token => "token",
            Entity::Session => "session",
        })
    }
}

/// keyvault-core's error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Bad input, naming the field (HTTP 400/422).
    #[error(transparent)]
    Invalid(#[from] InvalidInput),
    /// The id is unknown or deleted (HTTP 404).
    #[error("{entity} {id} not found")]
    NotFound {
        /// What was looked for.
        entity: Entity,
        /// The id that was given.
        id: String,
    },
    /// The operation conflicts with the target's state (HTTP 409).
    #[error("conflict: {0}")]
    Conflict(String),
    /// A backend failed (HTTP 503).
    #[error(transparent)]
    Backend(#[from] BackendError),
}

impl Error {
    /// A backend failure from any error.
    pub fn backend(
        backend: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        Error::Backend(BackendError::new(backend, source))
    }

    /// A key id that is unknown or deleted.
    pub fn key_not_found(id: impl fmt::Display) -> Self {
        Error::NotFound {
            entity: Entity::Key,
            id: id.to_string(),
        }
    }

    /// No `entity` has this id (a key id, a username, a token id…).
    pub fn not_found(entity: Entity, id: impl fmt::Display) -> Self {
        Error::NotFound {
            entity,
            id: id.to_string(),
        }
    }

    /// Bad input for `field`.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Invalid(InvalidInput::new(field, message))
    }
}

/// `Result` with keyvault-core's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
