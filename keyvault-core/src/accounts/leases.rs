//! Leases: one holder at a time for background jobs shared by several instances.

use std::fmt::Debug;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::error::Result;

/// Named leases in the database: a job that must run on one instance at a time (rotation,
/// clean-up, alert evaluation) takes its lease before each run. A lease has an end instead
/// of a lock that needs its holder alive: when the holder dies, the lease lapses and another
/// instance takes it over. Times come from the caller's clock, never the database's.
///
/// ```
/// use chrono::{TimeDelta, Utc};
/// use keyvault_core::{LeaseStore, memory::MemoryStore};
///
/// # async fn demo() -> keyvault_core::Result<()> {
/// let store = MemoryStore::new();
/// let now = Utc::now();
/// let ttl = TimeDelta::seconds(30);
/// assert!(store.try_lease("rotate-due", "instance-a", now, now + ttl).await?);
/// assert!(!store.try_lease("rotate-due", "instance-b", now, now + ttl).await?, "held");
/// // Instance a stops renewing (it died): once its lease has lapsed, b takes over.
/// let later = now + ttl;
/// assert!(store.try_lease("rotate-due", "instance-b", later, later + ttl).await?);
/// # Ok(()) }
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(demo()).unwrap();
/// ```
#[async_trait]
pub trait LeaseStore: Send + Sync + Debug {
    /// Takes the lease `name` for `holder` until `until`, when it is free, lapsed
    /// (`expires_at <= now`) or held by `holder` already (a renewal); returns whether
    /// `holder` holds it now. `Invalid` when `until` is not after `now`.
    async fn try_lease(
        &self,
        name: &str,
        holder: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<bool>;

    /// Gives the lease up, if `holder` holds it (lapsed or not); returns whether it did.
    /// Another holder's lease is left alone.
    async fn release_lease(&self, name: &str, holder: &str) -> Result<bool>;
}
