//! One change bus over several: publishes to all, delivers what any of them hears. The
//! standalone server announces changes on Redis and on the database; a host listening to both
//! hears a change made by any process, with or without Redis.

use std::sync::Arc;

use keyvault_core::{Change, ChangeBus, async_trait};
use tokio::sync::broadcast::{self, error::RecvError};

#[derive(Debug)]
pub(crate) struct FanOutBus {
    buses: Vec<Arc<dyn ChangeBus>>,
    tx: broadcast::Sender<Change>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl FanOutBus {
    /// Must run inside a Tokio runtime: a task per bus forwards what it hears.
    pub(crate) fn new(buses: Vec<Arc<dyn ChangeBus>>) -> Self {
        let (tx, _) = broadcast::channel(4096);
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
                            Err(RecvError::Lagged(_)) => {
                                let _ = tx.send(Change::All);
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

#[async_trait]
impl ChangeBus for FanOutBus {
    async fn publish(&self, changes: &[Change]) -> keyvault_core::Result<()> {
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
