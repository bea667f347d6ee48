//! keyvault-postgres's error, and how it reaches keyvault-core's.

/// The backend name carried by [`keyvault_core::BackendError`].
const BACKEND: &str = "postgres";

/// What failed inside the PostgreSQL backend.
///
/// keyvault-core's traits answer with a [`keyvault_core::Error::Backend`] named "postgres"
/// whose source is this error, so logs walk the whole chain (this error, then sqlx's, then
/// the server's) and no client sees it. Bad input (a number `bigint` cannot hold, a page
/// too large) is keyvault-core's `Invalid` instead, naming the field.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A statement, a transaction, the connection pool or the notification listener failed.
    /// A refusal by the server is `sqlx::Error::Database`, whose `code()` is the SQLSTATE.
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
}

impl From<Error> for keyvault_core::Error {
    fn from(e: Error) -> Self {
        // Text the server cannot store (U+0000: `character_not_in_repertoire`,
        // `untranslatable_character`) is the caller's input, not an outage: keyvault-core
        // refuses it in the fields it checks, and this keeps any other field from answering
        // 503 for it.
        if let Error::Sqlx(sqlx::Error::Database(d)) = &e
            && matches!(d.code().as_deref(), Some("22021" | "22P05"))
        {
            return keyvault_core::Error::invalid("text", "must not contain U+0000 (NUL)");
        }
        keyvault_core::Error::backend(BACKEND, e)
    }
}

/// A failure as keyvault-core's error, for `map_err` at the trait boundary.
pub(crate) fn db(e: impl Into<Error>) -> keyvault_core::Error {
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
        let e: keyvault_core::Error = corrupt("kv_audit.hash", "not 32 bytes").into();
        let keyvault_core::Error::Backend(b) = &e else {
            panic!("{e:?}")
        };
        assert_eq!(b.backend(), "postgres");
        let ours = b.source().unwrap().downcast_ref::<Error>().unwrap();
        assert!(matches!(
            ours,
            Error::Corrupt {
                column: "kv_audit.hash",
                ..
            }
        ));
        assert_eq!(ours.to_string(), "stored kv_audit.hash does not decode");
        assert_eq!(ours.source().unwrap().to_string(), "not 32 bytes");
    }
}
