//! The keyvault the job works on, from `DATABASE_URL` (and `REDIS_URL`) as the host
//! application and the standalone server read them.

use std::sync::Arc;

use keyvault_core::{ChangeBus, KeyHasher, Keyvault, UsageQuery, memory::MemoryStore};
use keyvault_postgres::{PgChangeBus, PgStore};
use keyvault_redis::{RedisBackend, RedisChangeBus, RedisConfig};
use keyvault_sqlite::{SqliteChangeBus, SqliteStore};

use crate::{Global, error::Error, fanout::FanOutBus};

/// The key manager and the statistics of one database.
pub(crate) struct Backend {
    pub(crate) vault: Keyvault,
    pub(crate) stats: Arc<dyn UsageQuery>,
}

pub(crate) async fn connect(global: &Global) -> Result<Backend, Error> {
    let hasher = match &global.pepper {
        Some(p) => KeyHasher::with_pepper(p.as_bytes())
            .map_err(|e| Error::config("KEYVAULT_PEPPER", e.message))?,
        None => KeyHasher::sha256(),
    };
    let Some(url) = global.database_url.as_deref() else {
        crate::warn(
            "DATABASE_URL is unset: working on an in-memory database that is gone when this \
             program exits",
        );
        let store = Arc::new(MemoryStore::new());
        let vault = Keyvault::builder()
            .backend(store.clone())
            .hasher(hasher)
            .build()
            .map_err(keyvault_core::Error::from)?;
        return Ok(Backend {
            vault,
            stats: store,
        });
    };
    let builder = Keyvault::builder().hasher(hasher);
    let (builder, stats, db_bus): (_, Arc<dyn UsageQuery>, Arc<dyn ChangeBus>) =
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let s = PgStore::connect(url).await?;
            s.migrate().await?;
            let bus = PgChangeBus::connect(s.pool()).await?;
            let s = Arc::new(s);
            (builder.backend(s.clone()), s, Arc::new(bus))
        } else if url.starts_with("sqlite:") {
            let s = SqliteStore::connect(url).await?;
            s.migrate().await?;
            let bus = SqliteChangeBus::new(s.clone()).await?;
            let s = Arc::new(s);
            (builder.backend(s.clone()), s, Arc::new(bus))
        } else {
            return Err(Error::config(
                "DATABASE_URL",
                "must start with postgres://, postgresql:// or sqlite://",
            ));
        };
    // Rotations must reach every verifying process at once (their caches hold the old
    // record): announce on the database and, when set, on Redis too.
    let bus: Arc<dyn ChangeBus> = match &global.redis_url {
        Some(redis_url) => {
            let redis = RedisBackend::connect(redis_url, RedisConfig::default())
                .await
                .map_err(keyvault_core::Error::from)?;
            Arc::new(FanOutBus::new(vec![
                Arc::new(RedisChangeBus::new(&redis)),
                db_bus,
            ]))
        }
        None => db_bus,
    };
    let vault = builder
        .change_bus(bus)
        .build()
        .map_err(keyvault_core::Error::from)?;
    Ok(Backend { vault, stats })
}
