//! Maps `DATABASE_URL` and `REDIS_URL` to keyvault-core backends chosen at run time:
//! SQLite (the zero-config default) or PostgreSQL for keys, balances, audit, usage and the
//! server's accounts; Redis, when set, for rate limits, a credit cache in front of the
//! database, and change propagation.

use std::{sync::Arc, time::Duration};

use keyvault::{
    deploy::{Deployment, Durable},
    postgres::PgStore,
    sqlite::SqliteStore,
};
use keyvault_core::{
    AlertStore, AuditLog, CachedTokenStore, DEFAULT_TOKEN_TTL, KeyId, KeyStore, Keyvault,
    LeaseStore, NotifierStore, RestoreTarget, SessionStore, SettingStore, SignalStore, TokenStore,
    UsageQuery, UsageSink, UserStore,
};

use crate::{
    config::{Config, DatabaseUrl},
    error::{Error, Result},
};

/// The backends of one process.
#[derive(Debug, Clone)]
pub(crate) struct Backends {
    pub(crate) store: Arc<dyn KeyStore>,
    pub(crate) audit: Arc<dyn AuditLog>,
    pub(crate) usage: Arc<dyn UsageSink>,
    pub(crate) stats: Arc<dyn UsageQuery>,
    pub(crate) users: Arc<dyn UserStore>,
    /// Lookups by digest are remembered for [`DEFAULT_TOKEN_TTL`]: a revocation made on any
    /// instance is honoured everywhere within it.
    pub(crate) tokens: Arc<CachedTokenStore<Arc<dyn TokenStore>>>,
    pub(crate) settings: Arc<dyn SettingStore>,
    /// Dashboard sessions: read on every request, never cached, so that an ended session
    /// ends on every instance at once.
    pub(crate) sessions: Arc<dyn SessionStore>,
    /// Alert rules, alerts and baselines (CONTRACT §7).
    pub(crate) alerts: Arc<dyn AlertStore>,
    /// One instance at a time runs a background job (the alert evaluation).
    pub(crate) leases: Arc<dyn LeaseStore>,
    /// Notification channels and their outbox (CONTRACT §7).
    pub(crate) notifiers: Arc<dyn NotifierStore>,
    /// Client signals: `NOT_FOUND` counts per IP, key sightings (CONTRACT §7).
    pub(crate) signals: Arc<dyn SignalStore>,
    /// Where `keyvault restore` writes, all in one transaction.
    pub(crate) restore: Arc<dyn RestoreTarget>,
    deployment: Deployment,
}

impl Backends {
    /// Opens the configured backends and applies their migrations.
    pub(crate) async fn open(config: &Config) -> Result<Self> {
        let durable = match &config.db {
            DatabaseUrl::Sqlite { path: None, .. } => {
                return Err(Error::input("DATABASE_URL", "needs a file path"));
            }
            DatabaseUrl::Sqlite {
                path: Some(path), ..
            } => {
                let url = format!("sqlite://{}", path.display());
                let fresh = !path.exists();
                let s = SqliteStore::connect(&url).await?;
                if fresh {
                    // The file holds digests, password hashes and the session secret: keep it
                    // private (SQLite gives its -wal and -shm files the same mode, so this
                    // comes before the migrations create them).
                    use std::os::unix::fs::PermissionsExt;
                    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                        .map_err(|e| Error::io(path.display().to_string(), e))?;
                }
                // Polls a change log: other processes on the file (the CLI, other servers) are
                // heard within this interval, well inside the 1 s the contract allows even
                // on a busy machine.
                Durable::sqlite(s, Duration::from_millis(100)).await?
            }
            DatabaseUrl::Postgres(url) => Durable::postgres(PgStore::connect(url).await?).await?,
        };
        // With Redis: rate limits, a credit cache in front of the database, and changes on
        // Redis pub/sub as well as the database's bus (the CLI may run without Redis).
        let deployment = Deployment::connect_with(durable, config.redis.as_ref()).await?;
        let d = deployment.durable();
        Ok(Self {
            store: d.store.clone(),
            audit: d.audit.clone(),
            usage: deployment.usage(),
            stats: d.stats.clone(),
            users: d.users.clone(),
            tokens: Arc::new(CachedTokenStore::new(d.tokens.clone(), DEFAULT_TOKEN_TTL)),
            settings: d.settings.clone(),
            sessions: d.sessions.clone(),
            alerts: d.alerts.clone(),
            leases: d.leases.clone(),
            notifiers: d.notifiers.clone(),
            signals: d.signals.clone(),
            restore: d.restore.clone(),
            deployment,
        })
    }

    /// A `Keyvault` over these backends.
    pub(crate) fn keyvault(&self, config: &Config) -> Result<Keyvault> {
        self.deployment
            .builder()
            .hasher(config.hasher.clone())
            .build()
            .map_err(|e| Error::Core(e.into()))
    }

    /// Checks every backend answers (for `/readyz`).
    pub(crate) async fn ping(&self) -> Result<()> {
        Ok(self.deployment.ping().await?)
    }

    /// Writes the client signals gathered so far.
    pub(crate) async fn flush_signals(&self) -> Result<()> {
        Ok(self.deployment.flush_signals().await?)
    }

    /// Writes back credit spends cached in Redis (on shutdown).
    pub(crate) async fn flush(&self) -> Result<()> {
        Ok(self.deployment.flush().await?)
    }

    /// Tells the credit store a quota's balance was set in the database (a restore): a Redis
    /// cache drops what it holds for it, as after `Keyvault::update_key`.
    pub(crate) async fn invalidate_balance(&self, quota_id: KeyId) -> Result<()> {
        Ok(self.deployment.credits().balance_set(quota_id).await?)
    }

    /// Redis's live counters, when Redis is configured: the live statistics across instances.
    pub(crate) fn live(&self) -> Option<&keyvault::redis::LiveCounters> {
        self.deployment.redis().map(|r| r.live())
    }

    /// Times a limiter met an unavailable Redis and answered with its fail mode.
    pub(crate) fn limiter_fallbacks(&self) -> u64 {
        self.deployment.redis().map_or(0, |r| {
            let s = r.limiter().stats();
            s.open + s.local + s.closed
        })
    }
}
