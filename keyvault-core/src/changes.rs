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

/// One change bus over several: publishes to all, delivers what any of them hears. A process
/// that listens on the database's bus and on Redis hears a change made by any other process,
/// whether or not that process uses Redis.
///
/// ```
/// # use std::sync::Arc;
/// # use keyvault_core::{ChangeBus, Change, FanOutBus, memory::MemoryChangeBus};
/// # async fn demo() -> keyvault_core::Result<()> {
/// let (a, b) = (Arc::new(MemoryChangeBus::new()), Arc::new(MemoryChangeBus::new()));
/// let both = FanOutBus::new(vec![a.clone(), b.clone()]);
/// let mut rx = both.subscribe();
/// b.publish(&[Change::All]).await?;
/// assert_eq!(rx.recv().await.unwrap(), Change::All);
/// # Ok(()) }
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(demo()).unwrap();
/// ```
#[derive(Debug)]
pub struct FanOutBus {
    buses: Vec<std::sync::Arc<dyn ChangeBus>>,
    tx: broadcast::Sender<Change>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl FanOutBus {
    /// Listens on every bus (a task each): must run inside a Tokio runtime.
    pub fn new(buses: Vec<std::sync::Arc<dyn ChangeBus>>) -> Self {
        let (tx, _) = broadcast::channel(4_096);
        let tasks = buses
            .iter()
            .map(|b| {
                let mut rx = b.subscribe();
                let tx = tx.clone();
                tokio::spawn(async move {
                    loop {
                        match rx.recv().await {
                            Ok(c) => {
                                let _ = tx.send(c);
                            }
                            // Missed changes are unknown changes: drop every cached key.
                            Err(broadcast::error::RecvError::Lagged(_)) => {
                                let _ = tx.send(Change::All);
                            }
                            Err(broadcast::error::RecvError::Closed) => return,
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

#[async_trait]
impl ChangeBus for FanOutBus {
    /// Publishes on every bus; the first failure is returned after all were tried.
    async fn publish(&self, changes: &[Change]) -> Result<()> {
        let mut first_err = None;
        for b in &self.buses {
            if let Err(e) = b.publish(changes).await {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.tx.subscribe()
    }
}
