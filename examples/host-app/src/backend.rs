//! Backends chosen from the settings: in-memory without `DATABASE_URL`.

use std::{fs, io::Write, os::unix::fs::OpenOptionsExt, path::Path, sync::Arc};

use keyvault::deploy::{self, Deployment, Durable};
use keyvault_core::{
    Actor, ApiKey, KeyHasher, Keyvault, NewKey, UsageQuery, UsageSink,
    memory::{MemoryStore, MemoryUsage},
};

use crate::{config::Config, error::Error};

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
    /// With a database: what it runs on (with Redis, live credit balances are written back
    /// to the database periodically and on close).
    deployment: Option<Deployment>,
}

impl Backends {
    /// Writes back what only lives in Redis (credit balances) before the process exits.
    pub async fn close(&self) -> Result<(), Error> {
        if let Some(d) = &self.deployment {
            d.flush().await?;
        }
        Ok(())
    }
}

/// Connects the backends the settings name.
pub async fn connect(config: &Config) -> Result<Backends, Error> {
    let hasher = deploy::hasher(config.pepper.as_deref())?;
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
    let mut builder = Keyvault::builder().backend(store.clone()).hasher(hasher);
    if config.client_signals {
        // Gathered and never written: enough to measure what noting them costs.
        builder = builder.client_signals(keyvault_core::ClientSignals::new());
    }
    let vault = builder.build().map_err(keyvault_core::Error::from)?;
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
    // with every request; they move the keys' `last_used_at` as the store's own list does.
    let usage = Arc::new(MemoryUsage::new().with_key_store(store));
    Ok(Backends {
        vault,
        usage: usage.clone(),
        stats: usage,
        demo_key: Some(created.key),
        deployment: None,
    })
}

/// The same backends as the standalone server on the same `DATABASE_URL` and `REDIS_URL`, so
/// that its keys verify here and its changes reach this process.
async fn database(
    url: &str,
    redis_url: Option<&str>,
    hasher: KeyHasher,
) -> Result<Backends, Error> {
    let durable = Durable::open(url).await?;
    let deployment = Deployment::connect(durable, redis_url).await?;
    Ok(Backends {
        vault: deployment
            .builder()
            .hasher(hasher)
            .build()
            .map_err(keyvault_core::Error::from)?,
        usage: deployment.usage(),
        stats: deployment.durable().stats.clone(),
        demo_key: None,
        deployment: Some(deployment),
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
