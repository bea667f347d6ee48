//! Change propagation: how every instance hears that a key changed.

use std::fmt::Debug;

use async_trait::async_trait;
use tokio::sync::broadcast;

use crate::{digest::KeyDigest, error::Result, model::KeyId};

/// A change that makes cached copies stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// One key changed (disabled, deleted, updated, rotated, expired).
    Key {
        /// Its id.
        id: KeyId,
        /// Its digest (what caches are indexed by).
        digest: KeyDigest,
    },
    /// Anything may have changed: drop every cached entry (after a lost connection, a restore…).
    All,
}

/// Carries [`Change`]s between instances: Redis pub/sub, PostgreSQL `LISTEN/NOTIFY`, a polled
/// revision, or an in-process channel. Subscribers that fall behind must treat it as
/// [`Change::All`].
///
/// ```
/// # use keyvault_core::{ChangeBus, Change, memory::MemoryChangeBus};
/// # async fn demo() -> keyvault_core::Result<()> {
/// let bus = MemoryChangeBus::new();
/// let mut rx = bus.subscribe();
/// bus.publish(&[Change::All]).await?;
/// assert_eq!(rx.recv().await.unwrap(), Change::All);
/// # Ok(()) }
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(demo()).unwrap();
/// ```
#[async_trait]
pub trait ChangeBus: Send + Sync + Debug {
    /// Tells every instance (this one included) about `changes`.
    async fn publish(&self, changes: &[Change]) -> Result<()>;

    /// A receiver of every change published from now on.
    fn subscribe(&self) -> broadcast::Receiver<Change>;
}
