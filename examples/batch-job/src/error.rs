//! The batch job's error.

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum Error {
    /// A setting or argument is wrong; names it.
    #[error("{setting}: {message}")]
    Config {
        setting: &'static str,
        message: String,
    },
    /// keyvault refused or a backend failed.
    #[error(transparent)]
    Keyvault(#[from] keyvault_core::Error),
    /// A file failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// The CSV output failed.
    #[error("{context}: {source}")]
    Csv {
        context: String,
        #[source]
        source: csv::Error,
    },
    /// Some rows were refused; the others were processed.
    #[error("{bad} of {total} rows refused (see above); the other rows were processed")]
    BadRows { bad: usize, total: usize },
}

impl Error {
    pub(crate) fn config(setting: &'static str, message: impl Into<String>) -> Self {
        Error::Config {
            setting,
            message: message.into(),
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}
