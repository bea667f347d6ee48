//! Test helpers: each test gets its own database file in its own temporary directory.

#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;

use keyvault_core::{Change, ChangeBus, Result, async_trait};
use keyvault_sqlite::{SqliteChangeBus, SqliteStore};
use tokio::sync::broadcast;

/// A fresh database file (the directory goes when the value is dropped).
pub struct TestDb {
    pub dir: tempfile::TempDir,
    pub url: String,
}

impl TestDb {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        // A directory that does not exist yet: `connect` must create it.
        let url = format!("sqlite://{}/data/keyvault.db", dir.path().display());
        Self { dir, url }
    }

    /// A new pool on the file, migrated.
    pub async fn store(&self) -> SqliteStore {
        let s = SqliteStore::connect(&self.url).await.expect("connect");
        s.migrate().await.expect("migrate");
        s
    }
}

/// A change bus that also keeps the test's database directory alive for as long as the
/// conformance backends are in use.
#[derive(Debug)]
pub struct BusWithDir {
    pub bus: SqliteChangeBus,
    pub _dir: Arc<tempfile::TempDir>,
}

#[async_trait]
impl ChangeBus for BusWithDir {
    async fn publish(&self, changes: &[Change]) -> Result<()> {
        self.bus.publish(changes).await
    }
    fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.bus.subscribe()
    }
}
