//! keyvault-sqlite's error, and how it reaches keyvault-core's.

use std::{path::PathBuf, time::Duration};

/// The backend name carried by [`keyvault_core::BackendError`].
const BACKEND: &str = "sqlite";

/// What failed inside the SQLite backend.
///
/// keyvault-core's traits answer with a [`keyvault_core::Error::Backend`] named "sqlite"
/// whose source is this error, so logs walk the whole chain (this error, then sqlx's, then
/// SQLite's) and no client sees it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A statement, a transaction or the connection pool failed.
    #[error("database request failed")]
    Sqlx(#[from] sqlx::Error),
    /// keyvault's embedded migrations could not be applied.
    #[error("applying keyvault's migrations failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A stored value does not decode (edited by hand, or written by a newer version).
    #[error("stored {column} does not decode")]
    Corrupt {
        /// The column (`table.column` where the name alone is ambiguous).
        column: &'static str,
        /// Why it does not decode.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
    /// A value could not be encoded for its column.
    #[error("{column} does not encode as JSON")]
    Encode {
        /// The column.
        column: &'static str,
        /// serde's reason.
        #[source]
        source: serde_json::Error,
    },
    /// The database file's directory could not be created.
    #[error("creating the directory {} failed", .path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The lock file beside the database, which makes processes take turns migrating it,
    /// could not be opened or locked.
    #[error("locking {} for migrations failed", .path.display())]
    MigrationLock {
        /// The lock file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Another process held the migration lock for longer than a migration takes.
    #[error("another process kept {} locked for migrations for {} s", .path.display(), .waited.as_secs())]
    MigrationLockTimeout {
        /// The lock file.
        path: PathBuf,
        /// How long this process waited.
        waited: Duration,
    },
}

impl From<Error> for keyvault_core::Error {
    fn from(e: Error) -> Self {
        keyvault_core::Error::backend(BACKEND, e)
    }
}

/// A failure as keyvault-core's error, for `map_err` at the trait boundary.
pub(crate) fn backend(e: impl Into<Error>) -> keyvault_core::Error {
    e.into().into()
}

/// A stored value in `column` that does not decode, for `reason`.
pub(crate) fn corrupt(
    column: &'static str,
    reason: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
) -> Error {
    Error::Corrupt {
        column,
        source: reason.into(),
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[test]
    fn a_core_backend_error_keeps_this_error_and_its_source() {
        let e: keyvault_core::Error = corrupt(
            "kv_users.role",
            keyvault_core::InvalidInput::new("role", "unknown"),
        )
        .into();
        let keyvault_core::Error::Backend(b) = &e else {
            panic!("{e:?}")
        };
        assert_eq!(b.backend(), "sqlite");
        let ours = b.source().unwrap().downcast_ref::<Error>().unwrap();
        assert!(matches!(
            ours,
            Error::Corrupt {
                column: "kv_users.role",
                ..
            }
        ));
        assert_eq!(ours.to_string(), "stored kv_users.role does not decode");
        assert_eq!(ours.source().unwrap().to_string(), "role: unknown");
    }
}
