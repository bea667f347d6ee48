//! The host application's error.

/// Why the host application could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// keyvault refused (a bad setting is named: `DATABASE_URL: …`, `KEYVAULT_PEPPER: …`) or
    /// a backend failed.
    #[error(transparent)]
    Keyvault(#[from] keyvault_core::Error),
    /// A file or socket failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}
