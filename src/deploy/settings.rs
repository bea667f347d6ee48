//! What a deployment's settings name: the database (`DATABASE_URL`) and Redis with its
//! behaviour while unreachable.

use std::{fmt, path::PathBuf};

use keyvault_core::{Error, Result};
use keyvault_redis::{RedisConfig, RedisCreditConfig, RedisLimiterConfig};

/// Where the data lives, as `DATABASE_URL` names it. Every keyvault process parses the URL
/// here, so they all accept (and refuse) the same ones.
///
/// ```
/// use keyvault::deploy::DatabaseUrl;
///
/// assert_eq!(DatabaseUrl::parse("sqlite://keyvault.db")?.kind(), "sqlite");
/// assert_eq!(DatabaseUrl::parse("postgresql://db/kv")?.kind(), "postgres");
/// assert!(DatabaseUrl::parse("mysql://db/kv").is_err());
/// # Ok::<(), keyvault::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    /// `postgres://…` or `postgresql://…`, as given.
    Postgres(String),
    /// `sqlite://PATH`, `sqlite:PATH` or `sqlite::memory:`; the file, `None` in memory. Options
    /// after `?` are left to SQLite.
    Sqlite {
        /// The URL as given.
        url: String,
        /// The database file; `None` for an in-memory database.
        path: Option<PathBuf>,
    },
}

// A PostgreSQL URL may hold a password: only the kind and an SQLite path are shown.
impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DatabaseUrl::Postgres(_) => f.write_str("Postgres(…)"),
            DatabaseUrl::Sqlite { path, .. } => f.debug_tuple("Sqlite").field(path).finish(),
        }
    }
}

impl DatabaseUrl {
    /// Parses `DATABASE_URL`.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming `DATABASE_URL` for another scheme or an SQLite URL without
    /// a path.
    pub fn parse(url: &str) -> Result<Self> {
        let url = url.trim();
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(DatabaseUrl::Postgres(url.to_owned()));
        }
        let Some(rest) = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
        else {
            return Err(Error::invalid(
                "DATABASE_URL",
                "must start with sqlite://, postgres:// or postgresql://",
            ));
        };
        let path = rest.split('?').next().unwrap_or_default();
        let path = match path {
            "" => {
                return Err(Error::invalid(
                    "DATABASE_URL",
                    "an SQLite URL needs a file path (sqlite://keyvault.db)",
                ));
            }
            ":memory:" => None,
            p => Some(PathBuf::from(p)),
        };
        Ok(DatabaseUrl::Sqlite {
            url: url.to_owned(),
            path,
        })
    }

    /// `"postgres"` or `"sqlite"`, for logs (never the URL: it may carry a password).
    pub fn kind(&self) -> &'static str {
        match self {
            DatabaseUrl::Postgres(_) => "postgres",
            DatabaseUrl::Sqlite { .. } => "sqlite",
        }
    }
}

/// What Redis is asked to do: where it is, and how its limiter and credit cache behave when
/// it is unreachable (`KEYVAULT_INSTANCES`, the fail modes).
#[derive(Clone)]
#[non_exhaustive]
pub struct RedisSettings {
    /// `redis://…` or `rediss://…`; several node URLs, comma-separated, name a Redis
    /// Cluster.
    pub url: String,
    /// The rate limiter's fail modes and instance count.
    pub limiter: RedisLimiterConfig,
    /// The credit cache's fail mode and write-back interval.
    pub credits: RedisCreditConfig,
    /// The connection's settings: the namespace of every key.
    pub config: RedisConfig,
}

// The URL may hold a password.
impl fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSettings")
            .field("limiter", &self.limiter)
            .field("credits", &self.credits)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl RedisSettings {
    /// Redis at `url` with the default limiter and credit settings.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            limiter: RedisLimiterConfig::default(),
            credits: RedisCreditConfig::default(),
            config: RedisConfig::default(),
        }
    }

    /// Sets the connection's settings (the key namespace).
    #[must_use]
    pub fn config(mut self, config: RedisConfig) -> Self {
        self.config = config;
        self
    }

    /// Sets the limiter's settings.
    #[must_use]
    pub fn limiter(mut self, limiter: RedisLimiterConfig) -> Self {
        self.limiter = limiter;
        self
    }

    /// Sets the credit cache's settings.
    #[must_use]
    pub fn credits(mut self, credits: RedisCreditConfig) -> Self {
        self.credits = credits;
        self
    }
}
