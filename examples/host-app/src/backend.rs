//! Backends chosen from the settings: in-memory without `DATABASE_URL`.

use std::{fs, io::Write, os::unix::fs::OpenOptionsExt, path::Path, sync::Arc, time::Duration};

use keyvault_core::{
    Actor, ApiKey, AuditLog, CacheConfig, ChangeBus, CreditStore, KeyHasher, KeyStore, Keyvault,
    NewKey, UsageQuery, UsageSink, memory::MemoryStore,
};
use keyvault_postgres::{PgChangeBus, PgStore};
use keyvault_redis::{
    RedisBackend, RedisChangeBus, RedisConfig, RedisCreditConfig, RedisCreditStore,
    RedisLimiterConfig, RedisRateLimiter,
};
use keyvault_sqlite::{SqliteChangeBus, SqliteStore};

use crate::{config::Config, error::Error, fanout::FanOutBus, usage::RollupUsage};

/// What the application runs on.
#[derive(Debug)]
pub struct Backends {
    /// The verifier.
    pub vault: Keyvault,
    /// Where usage events go.
    pub usage: Arc<dyn UsageSink>,
    /// Statistics over them.
    pub stats: Arc<dyn UsageQuery>,
    /// In-memory mode: the demo key (shown to nobody but the demo key file).
    pub demo_key: Option<ApiKey>,
    /// With Redis: live credit balances, written back to the database periodically.
    redis_credits: Option<Arc<RedisCreditStore>>,
}

impl Backends {
    /// Writes back what only lives in Redis (credit balances) before the process exits.
    pub async fn close(&self) -> Result<(), Error> {
        if let Some(c) = &self.redis_credits {
            c.flush().await?;
        }
        Ok(())
    }
}

/// Connects the backends the settings name.
pub async fn connect(config: &Config) -> Result<Backends, Error> {
    let hasher = match &config.pepper {
        Some(p) => KeyHasher::with_pepper(p.as_bytes())
            .map_err(|e| Error::config("KEYVAULT_PEPPER", e.message))?,
        None => KeyHasher::sha256(),
    };
    match config.database_url.as_deref() {
        None => in_memory(config, hasher).await,
        Some(url) => database(url, config.redis_url.as_deref(), hasher).await,
    }
}

async fn in_memory(config: &Config, hasher: KeyHasher) -> Result<Backends, Error> {
    if config.redis_url.is_some() {
        tracing::warn!("REDIS_URL is ignored without DATABASE_URL: in-memory limits are used");
    }
    let store = Arc::new(MemoryStore::new());
    let vault = Keyvault::builder()
        .backend(store.clone())
        .hasher(hasher)
        .build()
        .map_err(keyvault_core::Error::from)?;
    let created = vault
        .create_key(NewKey::new("demo"), &Actor::named("host-app"))
        .await?;
    if let Some(path) = &config.demo_key_file {
        write_secret(path, created.key.expose())?;
        tracing::info!(file = %path.display(), key_id = %created.record.id, "demo key written");
    } else {
        tracing::info!(
            key_id = %created.record.id,
            "demo key created; set KEYVAULT_DEMO_KEY_FILE to receive it"
        );
    }
    // Per-minute rollups rather than the reference store's event list, whose memory grows
    // with every request.
    let usage = Arc::new(RollupUsage::new());
    Ok(Backends {
        vault,
        usage: usage.clone(),
        stats: usage,
        demo_key: Some(created.key),
        redis_credits: None,
    })
}

/// The database's roles, played by one store.
struct Durable {
    store: Arc<dyn KeyStore>,
    credits: Arc<dyn CreditStore>,
    audit: Arc<dyn AuditLog>,
    usage: Arc<dyn UsageSink>,
    stats: Arc<dyn UsageQuery>,
    bus: Arc<dyn ChangeBus>,
}

impl Durable {
    fn over<S>(s: Arc<S>, bus: Arc<dyn ChangeBus>) -> Self
    where
        S: KeyStore + CreditStore + AuditLog + UsageSink + UsageQuery + 'static,
    {
        Self {
            store: s.clone(),
            credits: s.clone(),
            audit: s.clone(),
            usage: s.clone(),
            stats: s,
            bus,
        }
    }
}

/// The same backends as the standalone server on the same `DATABASE_URL` and `REDIS_URL`, so
/// that its keys verify here and its changes reach this process.
async fn database(
    url: &str,
    redis_url: Option<&str>,
    hasher: KeyHasher,
) -> Result<Backends, Error> {
    let durable = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let s = PgStore::connect(url).await?;
        s.migrate().await?;
        let bus = PgChangeBus::connect(s.pool()).await?;
        Durable::over(Arc::new(s), Arc::new(bus))
    } else if url.starts_with("sqlite:") {
        let s = SqliteStore::connect(url).await?;
        s.migrate().await?;
        let bus = SqliteChangeBus::new(s.clone()).await?;
        Durable::over(Arc::new(s), Arc::new(bus))
    } else {
        return Err(Error::config(
            "DATABASE_URL",
            "must start with postgres://, postgresql:// or sqlite://",
        ));
    };
    // Changes reach every process through the bus within a second; the TTL only bounds
    // staleness if a message is lost.
    let cache = CacheConfig {
        ttl: Duration::from_secs(30),
        ..CacheConfig::default()
    };
    let mut builder = Keyvault::builder()
        .key_store(durable.store.clone())
        .audit_log(durable.audit.clone())
        .hasher(hasher)
        .cache(cache);
    let mut redis_credits = None;
    match redis_url {
        Some(redis_url) => {
            let redis = RedisBackend::connect(redis_url, RedisConfig::default())
                .await
                .map_err(keyvault_core::Error::from)?;
            let credits = Arc::new(RedisCreditStore::new(
                &redis,
                durable.credits.clone(),
                RedisCreditConfig::default(),
            ));
            redis_credits = Some(credits.clone());
            let bus = FanOutBus::new(vec![
                Arc::new(RedisChangeBus::new(&redis)),
                durable.bus.clone(),
            ]);
            builder = builder
                .credits(credits)
                .limiter(Arc::new(RedisRateLimiter::new(
                    &redis,
                    RedisLimiterConfig::default(),
                )))
                .change_bus(Arc::new(bus));
        }
        None => {
            builder = builder
                .credits(durable.credits.clone())
                .change_bus(durable.bus.clone());
        }
    }
    Ok(Backends {
        vault: builder.build().map_err(keyvault_core::Error::from)?,
        usage: durable.usage,
        stats: durable.stats,
        demo_key: None,
        redis_credits,
    })
}

/// Writes `secret` to `path`, readable by its owner only, replacing what was there.
pub(crate) fn write_secret(path: &Path, secret: &str) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt;
    let ctx = || format!("writing {}", path.display());
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io(ctx(), e))?;
    // `mode` applies only to a file created now; an existing one is narrowed too.
    f.set_permissions(fs::Permissions::from_mode(0o600))
        .map_err(|e| Error::io(ctx(), e))?;
    writeln!(f, "{secret}").map_err(|e| Error::io(ctx(), e))?;
    f.sync_all().map_err(|e| Error::io(ctx(), e))
}
