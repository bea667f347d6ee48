//! Maps `DATABASE_URL` and `REDIS_URL` to keyvault-core backends chosen at run time:
//! SQLite (the zero-config default) or PostgreSQL for keys, balances, audit and usage; Redis,
//! when set, for rate limits, a credit cache in front of the database, and change
//! propagation.

use std::{sync::Arc, time::Duration};

use keyvault_core::{
    AuditLog, CacheConfig, ChangeBus, CreditStore, KeyId, KeyStore, Keyvault, RateLimiter,
    UsageQuery, UsageSink,
};
use keyvault_postgres::{PgChangeBus, PgStore};
use keyvault_redis::{
    RedisBackend, RedisChangeBus, RedisConfig, RedisCreditConfig, RedisCreditStore,
    RedisLimiterConfig, RedisRateLimiter,
};
use keyvault_sqlite::{SqliteChangeBus, SqliteStore};

use crate::{
    config::{Config, DbUrl},
    error::{Error, Result},
};

/// The database backend, kept concrete for readiness checks.
#[derive(Debug, Clone)]
enum Durable {
    Sqlite(SqliteStore),
    Postgres(PgStore),
}

/// Redis components, kept concrete for flushing, invalidation and statistics.
#[derive(Debug, Clone)]
struct Redis {
    backend: RedisBackend,
    credits: Arc<RedisCreditStore>,
    limiter: Arc<RedisRateLimiter>,
}

/// The backends of one process.
#[derive(Debug, Clone)]
pub(crate) struct Backends {
    pub(crate) store: Arc<dyn KeyStore>,
    pub(crate) credits: Arc<dyn CreditStore>,
    pub(crate) audit: Arc<dyn AuditLog>,
    pub(crate) usage: Arc<dyn UsageSink>,
    pub(crate) stats: Arc<dyn UsageQuery>,
    limiter: Option<Arc<dyn RateLimiter>>,
    bus: Option<Arc<dyn ChangeBus>>,
    durable: Durable,
    redis: Option<Redis>,
}

fn redis_error(e: keyvault_redis::Error) -> Error {
    Error::Core(e.into())
}

impl Backends {
    /// Opens the configured backends and applies their migrations.
    pub(crate) async fn open(config: &Config) -> Result<Self> {
        let mut me = match &config.db {
            DbUrl::Sqlite(path) => {
                let url = format!("sqlite://{}", path.display());
                let fresh = !path.exists();
                let s = SqliteStore::connect(&url).await?;
                if fresh {
                    // The file holds digests, password hashes and the session secret: keep it
                    // private (SQLite gives its -wal and -shm files the same mode).
                    use std::os::unix::fs::PermissionsExt;
                    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                        .map_err(|e| Error::io(path.display().to_string(), e))?;
                }
                s.migrate().await?;
                // Polls a change log: other processes on the file (the CLI, other servers) are
                // heard within this interval, well inside the 1 s the contract allows even
                // on a busy machine.
                let bus =
                    SqliteChangeBus::with_interval(s.clone(), Duration::from_millis(100)).await?;
                Self::over(Arc::new(s.clone()), Durable::Sqlite(s), Arc::new(bus))
            }
            DbUrl::Postgres(url) => {
                let s = PgStore::connect(url).await?;
                s.migrate().await?;
                let bus = PgChangeBus::connect(s.pool()).await?;
                Self::over(Arc::new(s.clone()), Durable::Postgres(s), Arc::new(bus))
            }
        };
        if let Some(url) = &config.redis {
            let backend = RedisBackend::connect(url, RedisConfig::default())
                .await
                .map_err(redis_error)?;
            let redis_credits = Arc::new(RedisCreditStore::new(
                &backend,
                me.credits.clone(),
                RedisCreditConfig::default(),
            ));
            let limiter = Arc::new(RedisRateLimiter::new(
                &backend,
                RedisLimiterConfig::default(),
            ));
            me.credits = redis_credits.clone();
            me.limiter = Some(limiter.clone());
            // Redis pub/sub reaches every instance at once; the database's own bus stays for
            // processes that run without Redis (the CLI may).
            me.bus = Some(Arc::new(FanOutBus::new(vec![
                Arc::new(RedisChangeBus::new(&backend)),
                me.bus
                    .take()
                    .ok_or_else(|| Error::Internal("no bus".into()))?,
            ])));
            me.redis = Some(Redis {
                backend,
                credits: redis_credits,
                limiter,
            });
        }
        Ok(me)
    }

    /// Every database role played by one store.
    fn over<S>(s: Arc<S>, durable: Durable, bus: Arc<dyn ChangeBus>) -> Self
    where
        S: KeyStore + CreditStore + AuditLog + UsageSink + UsageQuery + 'static,
    {
        Self {
            store: s.clone(),
            credits: s.clone(),
            audit: s.clone(),
            usage: s.clone(),
            stats: s,
            limiter: None,
            bus: Some(bus),
            durable,
            redis: None,
        }
    }

    /// A `Keyvault` over these backends.
    pub(crate) fn keyvault(&self, config: &Config) -> Result<Keyvault> {
        // Changes reach every process through the bus within a second; the TTL only bounds
        // staleness if a message is lost.
        let cache = CacheConfig {
            ttl: Duration::from_secs(30),
            ..CacheConfig::default()
        };
        let mut b = Keyvault::builder()
            .key_store(self.store.clone())
            .credits(self.credits.clone())
            .audit_log(self.audit.clone())
            .hasher(config.hasher.clone())
            .cache(cache);
        if let Some(l) = &self.limiter {
            b = b.limiter(l.clone());
        }
        if let Some(bus) = &self.bus {
            b = b.change_bus(bus.clone());
        }
        b.build().map_err(|e| Error::Core(e.into()))
    }

    /// Checks every backend answers (for `/readyz`).
    pub(crate) async fn ping(&self) -> Result<()> {
        match &self.durable {
            Durable::Sqlite(s) => s.ping().await?,
            Durable::Postgres(s) => {
                sqlx::query("SELECT 1")
                    .execute(s.pool())
                    .await
                    .map_err(|e| Error::Core(keyvault_core::Error::backend("postgres", e)))?;
            }
        }
        if let Some(r) = &self.redis {
            r.backend.ping().await.map_err(redis_error)?;
        }
        Ok(())
    }

    /// Writes back credit spends cached in Redis (on shutdown).
    pub(crate) async fn flush(&self) -> Result<()> {
        if let Some(r) = &self.redis {
            r.credits.flush().await?;
        }
        Ok(())
    }

    /// Drops Redis's cached balance of a quota (after a restore set it in the database).
    pub(crate) async fn invalidate_balance(&self, quota_id: KeyId) -> Result<()> {
        if let Some(r) = &self.redis {
            r.credits.invalidate(quota_id).await?;
        }
        Ok(())
    }

    /// Times a limiter met an unavailable Redis and answered with its fail mode.
    pub(crate) fn limiter_fallbacks(&self) -> u64 {
        self.redis.as_ref().map_or(0, |r| {
            let s = r.limiter.stats();
            s.open + s.local + s.closed
        })
    }
}

/// Publishes to several buses and merges what they deliver.
#[derive(Debug)]
struct FanOutBus {
    buses: Vec<Arc<dyn ChangeBus>>,
    tx: tokio::sync::broadcast::Sender<keyvault_core::Change>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl FanOutBus {
    fn new(buses: Vec<Arc<dyn ChangeBus>>) -> Self {
        let (tx, _) = tokio::sync::broadcast::channel(4096);
        let tasks = buses
            .iter()
            .map(|b| {
                let mut rx = b.subscribe();
                let tx = tx.clone();
                tokio::spawn(async move {
                    use tokio::sync::broadcast::error::RecvError;
                    loop {
                        match rx.recv().await {
                            Ok(c) => {
                                let _ = tx.send(c);
                            }
                            Err(RecvError::Lagged(_)) => {
                                let _ = tx.send(keyvault_core::Change::All);
                            }
                            Err(RecvError::Closed) => return,
                        }
                    }
                })
            })
            .collect();
        Self { buses, tx, tasks }
    }
}

impl Drop for FanOutBus {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

#[async_trait::async_trait]
impl ChangeBus for FanOutBus {
    async fn publish(&self, changes: &[keyvault_core::Change]) -> keyvault_core::Result<()> {
        let mut first_err = None;
        for b in &self.buses {
            if let Err(e) = b.publish(changes).await {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<keyvault_core::Change> {
        self.tx.subscribe()
    }
}
