//! Change propagation with `LISTEN/NOTIFY`.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use keyvault_core::{Change, ChangeBus, KeyDigest, KeyId};
use sqlx::{PgPool, postgres::PgListener};
use tokio::{sync::broadcast, task::JoinHandle};
use uuid::Uuid;

use crate::{Result, db};

/// The notification channel.
pub const CHANNEL: &str = "kv_changes";

/// A [`ChangeBus`] over PostgreSQL `LISTEN/NOTIFY`: every instance connected to the same
/// database hears every change, its own included, within the notification latency
/// (milliseconds). A listener that loses its connection reconnects and reports
/// [`Change::All`], since notifications sent meanwhile are gone. Clones share one listener.
#[derive(Debug, Clone)]
pub struct PgChangeBus {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    pool: PgPool,
    tx: broadcast::Sender<Change>,
    task: JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The listener holds a pooled connection; give it back when nobody can subscribe.
        self.task.abort();
    }
}

impl PgChangeBus {
    /// Starts listening (one connection of `pool`, held for the bus's lifetime) on the current
    /// Tokio runtime.
    pub async fn connect(pool: &PgPool) -> Result<Self> {
        let mut listener = PgListener::connect_with(pool).await.map_err(db)?;
        listener.listen(CHANNEL).await.map_err(db)?;
        let tx = broadcast::channel(4_096).0;
        let task = tokio::spawn(run(listener, tx.clone()));
        Ok(Self {
            inner: Arc::new(Inner {
                pool: pool.clone(),
                tx,
                task,
            }),
        })
    }
}

async fn run(mut listener: PgListener, tx: broadcast::Sender<Change>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match listener.try_recv().await {
            Ok(Some(n)) => {
                backoff = Duration::from_millis(100);
                let change = parse(n.payload()).unwrap_or_else(|| {
                    tracing::warn!("unreadable change notification; dropping every cached key");
                    Change::All
                });
                // No subscriber is not an error: nobody caches.
                let _ = tx.send(change);
            }
            // The connection was lost and re-established: whatever was sent meanwhile is lost.
            Ok(None) => {
                tracing::warn!("change listener reconnected; dropping every cached key");
                let _ = tx.send(Change::All);
            }
            Err(sqlx::Error::PoolClosed) => return,
            Err(e) => {
                tracing::warn!(error = %e, "change listener failed; retrying");
                let _ = tx.send(Change::All);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// `k:<uuid>:<digest hex>` or `all`.
fn payload(change: &Change) -> String {
    match change {
        Change::Key { id, digest } => format!("k:{id}:{}", digest.to_hex()),
        Change::All => "all".to_owned(),
    }
}

fn parse(payload: &str) -> Option<Change> {
    if payload == "all" {
        return Some(Change::All);
    }
    let rest = payload.strip_prefix("k:")?;
    let (id, digest) = rest.split_once(':')?;
    Some(Change::Key {
        id: KeyId::from_uuid(Uuid::parse_str(id).ok()?),
        digest: KeyDigest::from_hex(digest).ok()?,
    })
}

#[async_trait]
impl ChangeBus for PgChangeBus {
    async fn publish(&self, changes: &[Change]) -> Result<()> {
        if changes.is_empty() {
            return Ok(());
        }
        let payloads: Vec<String> = changes.iter().map(payload).collect();
        sqlx::query("SELECT pg_notify($1, p) FROM UNNEST($2::text[]) AS p")
            .bind(CHANNEL)
            .bind(&payloads)
            .execute(&self.inner.pool)
            .await
            .map_err(db)?;
        Ok(())
    }

    fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.inner.tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip() {
        let c = Change::Key {
            id: KeyId::new(),
            digest: keyvault_core::KeyHasher::sha256().digest("kv_x"),
        };
        assert_eq!(parse(&payload(&c)), Some(c));
        assert_eq!(parse(&payload(&Change::All)), Some(Change::All));
        assert_eq!(parse("k:nope"), None);
        assert_eq!(parse("x"), None);
    }
}
