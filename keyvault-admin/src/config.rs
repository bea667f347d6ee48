//! Resolved configuration: what the flags and environment mean.

use std::path::PathBuf;

use ipnet::IpNet;
use keyvault_axum::TrustedProxies;
use keyvault_core::KeyHasher;

use crate::{
    cli::Global,
    error::{Error, Result},
};

/// Where the data lives.
#[derive(Clone, PartialEq, Eq)]
pub enum DbUrl {
    /// An SQLite file (created if missing).
    Sqlite(PathBuf),
    /// A PostgreSQL URL.
    Postgres(String),
}

// The URL may hold a password: Debug shows only the kind.
impl std::fmt::Debug for DbUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DbUrl::Sqlite(p) => write!(f, "Sqlite({})", p.display()),
            DbUrl::Postgres(_) => f.write_str("Postgres(…)"),
        }
    }
}

impl DbUrl {
    /// Parses `sqlite://PATH`, `sqlite:PATH`, `postgres://…` or `postgresql://…`.
    pub fn parse(url: &str) -> Result<Self> {
        let bad = || {
            Error::input(
                "DATABASE_URL",
                "must start with sqlite://, postgres:// or postgresql://",
            )
        };
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(DbUrl::Postgres(url.to_owned()));
        }
        let path = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .ok_or_else(bad)?;
        // Options after `?` are not ours to interpret; the path is what matters.
        let path = path.split('?').next().unwrap_or_default();
        if path.is_empty() || path == ":memory:" {
            return Err(Error::input(
                "DATABASE_URL",
                "an SQLite URL needs a file path (sqlite://keyvault.db)",
            ));
        }
        Ok(DbUrl::Sqlite(PathBuf::from(path)))
    }

    /// A label for logs (never the URL: it may carry a password).
    pub fn kind(&self) -> &'static str {
        match self {
            DbUrl::Sqlite(_) => "sqlite",
            DbUrl::Postgres(_) => "postgres",
        }
    }
}

/// The length below which `SECRET_KEY` is flagged as weak.
pub(crate) const MIN_SECRET_KEY_BYTES: usize = 32;

/// Everything the commands need from the flags and environment.
#[derive(Clone)]
pub struct Config {
    pub(crate) db: DbUrl,
    pub(crate) redis: Option<String>,
    pub(crate) secret_key: Option<String>,
    pub(crate) hasher: KeyHasher,
    /// Whose `X-Forwarded-For` is believed; `None`: nobody's.
    pub(crate) trusted_proxies: Option<TrustedProxies>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("db", &self.db)
            .field("redis", &self.redis.is_some())
            .field("peppered", &self.hasher.is_peppered())
            .field("trusted_proxies", &self.trusted_proxies)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// The configuration the environment (and a `.env` file already loaded) describes, with
    /// the defaults of the `keyvault` command.
    pub fn from_env() -> Result<Self> {
        #[derive(clap::Parser)]
        struct EnvOnly {
            #[command(flatten)]
            global: Global,
        }
        let parsed = <EnvOnly as clap::Parser>::try_parse_from(["keyvault"])
            .map_err(|e| Error::input("environment", e.kind().to_string()))?;
        Self::from_args(&parsed.global)
    }

    /// The configuration the command line's global flags describe.
    pub fn from_args(g: &Global) -> Result<Self> {
        let db = DbUrl::parse(g.database_url.trim())?;
        let redis = g
            .redis_url
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                if s.starts_with("redis://") || s.starts_with("rediss://") {
                    Ok(s.to_owned())
                } else {
                    Err(Error::input(
                        "REDIS_URL",
                        "must start with redis:// or rediss://",
                    ))
                }
            })
            .transpose()?;
        let hasher = match g.pepper.as_deref().filter(|p| !p.is_empty()) {
            Some(p) => KeyHasher::with_pepper(p.as_bytes())
                .map_err(|e| Error::input("KEYVAULT_PEPPER", e.message))?,
            None => KeyHasher::sha256(),
        };
        // Any value is a valid secret (the deployment chose it); `serve` flags a short one.
        let secret_key = g.secret_key.clone().filter(|s| !s.is_empty());
        let nets = parse_proxies(g.trusted_proxies.as_deref().unwrap_or(""))?;
        let trusted_proxies = (!nets.is_empty()).then(|| TrustedProxies::new(nets));
        Ok(Self {
            db,
            redis,
            secret_key,
            hasher,
            trusted_proxies,
        })
    }
}

fn parse_proxies(text: &str) -> Result<Vec<IpNet>> {
    let items: Vec<&str> = text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    keyvault_core::parse_allowlist(&items)
        .map_err(|e| Error::input("KEYVAULT_TRUSTED_PROXIES", e.message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_urls_name_their_backend() {
        assert_eq!(
            DbUrl::parse("sqlite://keyvault.db").unwrap(),
            DbUrl::Sqlite("keyvault.db".into())
        );
        assert_eq!(
            DbUrl::parse("sqlite:///tmp/x/kv.db?mode=rwc").unwrap(),
            DbUrl::Sqlite("/tmp/x/kv.db".into())
        );
        assert!(matches!(
            DbUrl::parse("postgres://u@h/db").unwrap(),
            DbUrl::Postgres(_)
        ));
        assert!(matches!(
            DbUrl::parse("postgresql://u@h/db").unwrap(),
            DbUrl::Postgres(_)
        ));
        assert!(DbUrl::parse("mysql://x").is_err());
        assert!(DbUrl::parse("sqlite://").is_err());
    }

    #[test]
    fn proxies_are_cidrs() {
        assert_eq!(parse_proxies("10.0.0.0/8, ::1").unwrap().len(), 2);
        assert!(parse_proxies("nope").is_err());
        assert!(parse_proxies("").unwrap().is_empty());
    }
}
