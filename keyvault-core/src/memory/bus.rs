use async_trait::async_trait;
use tokio::sync::broadcast;

use crate::{
    changes::{Change, ChangeBus},
    error::Result,
};

/// A change bus inside one process (clones share it).
#[derive(Debug, Clone)]
pub struct MemoryChangeBus {
    tx: broadcast::Sender<Change>,
}

impl MemoryChangeBus {
    /// A new bus.
    pub fn new() -> Self {
        Self {
            tx: broadcast::channel(4_096).0,
        }
    }
}

impl Default for MemoryChangeBus {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl ChangeBus for MemoryChangeBus {
    async fn publish(&self, changes: &[Change]) -> Result<()> {
        for c in changes {
            // No subscriber is not an error: nobody caches.
            let _ = self.tx.send(*c);
        }
        Ok(())
    }

    fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.tx.subscribe()
    }
}
