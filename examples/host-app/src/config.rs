//! Settings: flags, each with an environment variable; `.env` is read first and never
//! overrides the real environment.

use std::{fmt, net::SocketAddr, path::PathBuf};

use ipnet::IpNet;

/// The host application's settings.
#[derive(Clone, clap::Parser)]
#[command(
    name = "host-app",
    version,
    about = "An axum API protected by the keyvault layer"
)]
pub struct Config {
    /// `postgres://…` or `sqlite://PATH`; unset: in-memory backends with one demo key.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// `redis://…` for rate limits shared by several instances.
    #[arg(long, env = "REDIS_URL")]
    pub redis_url: Option<String>,
    /// Digest pepper; must equal the standalone server's on the same database.
    #[arg(long, env = "KEYVAULT_PEPPER", hide_env_values = true)]
    pub pepper: Option<String>,
    /// Address to listen on.
    #[arg(long, env = "KEYVAULT_BIND", default_value = "127.0.0.1:8081")]
    pub bind: SocketAddr,
    /// In-memory mode: write the demo key to this file (mode 0600). It is never printed.
    #[arg(long, env = "KEYVAULT_DEMO_KEY_FILE")]
    pub demo_key_file: Option<PathBuf>,
    /// Comma-separated CIDRs whose `X-Forwarded-For` is believed.
    #[arg(long, env = "KEYVAULT_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<IpNet>,
    /// On shutdown, after usage is flushed, write the last 24 hours' usage statistics
    /// (JSON) to this file.
    #[arg(long, env = "KEYVAULT_USAGE_SUMMARY_FILE")]
    pub usage_summary_file: Option<PathBuf>,
    /// In-memory mode: note client signals (the addresses of unknown keys, the networks keys
    /// are used from) as on a database, where they are always noted; for measuring what they
    /// cost the layer.
    #[arg(long, env = "HOST_APP_CLIENT_SIGNALS")]
    pub client_signals: bool,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Connection strings may hold passwords and the pepper is a secret.
        f.debug_struct("Config")
            .field("database_url", &self.database_url.as_ref().map(|_| "<set>"))
            .field("redis_url", &self.redis_url.as_ref().map(|_| "<set>"))
            .field("pepper", &self.pepper.as_ref().map(|_| "<set>"))
            .field("bind", &self.bind)
            .field("demo_key_file", &self.demo_key_file)
            .field("trusted_proxies", &self.trusted_proxies)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// Settings for an in-memory instance on `bind` (for tests).
    pub fn in_memory(bind: SocketAddr) -> Self {
        Self {
            database_url: None,
            redis_url: None,
            pepper: None,
            bind,
            demo_key_file: None,
            trusted_proxies: Vec::new(),
            usage_summary_file: None,
            client_signals: false,
        }
    }
}
