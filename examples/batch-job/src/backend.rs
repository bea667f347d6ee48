//! The keyvault the job works on, from `DATABASE_URL` (and `REDIS_URL`) as the host
//! application and the standalone server read them.

use std::sync::Arc;

use keyvault::deploy::{self, Durable};
use keyvault_core::{Keyvault, UsageQuery, memory::MemoryStore};

use crate::{Global, error::Error};

/// The key manager and the statistics of one database.
pub(crate) struct Backend {
    pub(crate) vault: Keyvault,
    pub(crate) stats: Arc<dyn UsageQuery>,
}

pub(crate) async fn connect(global: &Global) -> Result<Backend, Error> {
    let hasher = deploy::hasher(global.pepper.as_deref())?;
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
    let mut durable = Durable::open(url).await?;
    // Rotations must reach every verifying process at once (their caches hold the old
    // record): announce on the database and, when set, on Redis too.
    if let Some(redis_url) = &global.redis_url {
        durable = durable.announce_on_redis(redis_url).await?;
    }
    let vault = durable
        .builder()
        .hasher(hasher)
        .build()
        .map_err(keyvault_core::Error::from)?;
    Ok(Backend {
        vault,
        stats: durable.stats,
    })
}
