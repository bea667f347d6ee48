//! The crate's error type.

use std::time::Duration;

use keyvault_core::{BackendError, InvalidInput};

/// A failure of the Redis backend.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Redis did not answer within the time budget.
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    /// Redis (or the connection to it) failed.
    #[error("redis failed")]
    Redis(#[from] redis::RedisError),
    /// Redis answered something the scripts never return.
    #[error("unexpected reply from redis: {0}")]
    Reply(&'static str),
    /// A bad configuration value, naming the field.
    #[error(transparent)]
    Invalid(#[from] InvalidInput),
}

impl Error {
    /// Whether Redis is unreachable or too slow (a timeout, a refused or dropped connection, a
    /// server still loading its data): the failures a fail mode answers. Any other error (a
    /// script error, a wrong type) is a fault that no fail mode hides.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Error::Timeout(_) => true,
            Error::Redis(e) => {
                use redis::{ErrorKind, ServerErrorKind};
                e.is_io_error()
                    || e.is_connection_dropped()
                    || e.is_connection_refusal()
                    || e.is_timeout()
                    || e.is_unrecoverable_error()
                    || matches!(
                        e.kind(),
                        ErrorKind::Server(
                            ServerErrorKind::BusyLoading
                                | ServerErrorKind::TryAgain
                                | ServerErrorKind::ClusterDown
                                | ServerErrorKind::MasterDown
                        ) | ErrorKind::ClusterConnectionNotFound
                    )
            }
            Error::Reply(_) | Error::Invalid(_) => false,
        }
    }
}

impl From<Error> for keyvault_core::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Invalid(i) => keyvault_core::Error::Invalid(i),
            other => keyvault_core::Error::Backend(BackendError::new("redis", other)),
        }
    }
}
