//! [`ChangeBus`] between processes on one database file: a change log table, polled.

use std::{
    sync::{Arc, Weak},
    time::Duration,
};

use async_trait::async_trait;
use chrono::Utc;
use keyvault_core::{Change, ChangeBus, KeyDigest, Result};
use sqlx::SqliteConnection;
use tokio::{sync::broadcast, task::JoinHandle};

use crate::{
    SqliteStore,
    codec::{id_text, micros, parse_id},
    error::{backend, corrupt},
};

/// How often the log is polled: a change made by another process is seen within this (plus
/// a query), well inside the 1 s CONTRACT §3 allows.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(200);

/// How long log entries are kept: a poller that has been away longer (a suspended process)
/// cannot tell what it missed and drops every cached entry instead.
const RETENTION: chrono::TimeDelta = chrono::TimeDelta::minutes(10);

/// Most entries read per poll; more wait for the next one.
const POLL_BATCH: i64 = 1_000;

/// Appends `changes` to the log inside the caller's write transaction.
pub(crate) async fn log_changes(
    conn: &mut SqliteConnection,
    changes: &[Change],
    origin: Option<i64>,
) -> Result<(), crate::Error> {
    let at = micros(Utc::now());
    for c in changes {
        let (key, digest) = match c {
            Change::Key { id, digest } => (Some(id_text(*id)), Some(digest.as_bytes().to_vec())),
            Change::All => (None, None),
        };
        sqlx::query("INSERT INTO kv_changes (at, key_id, digest, origin) VALUES (?1, ?2, ?3, ?4)")
            .bind(at)
            .bind(key)
            .bind(digest)
            .bind(origin)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Carries [`Change`]s between every process that opens the same SQLite file.
///
/// Key writes through [`SqliteStore`] log their change in the same transaction, so a CLI
/// that only writes (and has no bus) is still heard. `publish` tells this process's
/// subscribers at once and logs the changes for the others; a background task polls the log
/// every [`DEFAULT_POLL_INTERVAL`] and forwards what other processes wrote. Clones share one
/// poller, which stops when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct SqliteChangeBus {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: SqliteStore,
    tx: broadcast::Sender<Change>,
    /// Tags this bus's own log entries, which the poller skips (already delivered).
    origin: i64,
    poller: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(task) = self.poller.lock().unwrap_or_else(|e| e.into_inner()).take() {
            task.abort();
        }
    }
}

impl SqliteChangeBus {
    /// A bus over `store`'s database, polling every [`DEFAULT_POLL_INTERVAL`]. Must be called
    /// inside a Tokio runtime. Changes logged before this call are not delivered.
    pub async fn new(store: SqliteStore) -> Result<Self> {
        Self::with_interval(store, DEFAULT_POLL_INTERVAL).await
    }

    /// A bus polling every `interval` (at least 10 ms).
    pub async fn with_interval(store: SqliteStore, interval: Duration) -> Result<Self> {
        let start: i64 = sqlx::query_scalar("SELECT coalesce(max(rev), 0) FROM kv_changes")
            .fetch_one(store.pool())
            .await
            .map_err(backend)?;
        let inner = Arc::new(Inner {
            store,
            tx: broadcast::channel(4_096).0,
            origin: i64::from(rand_origin()),
            poller: std::sync::Mutex::new(None),
        });
        let task = tokio::spawn(poll(
            Arc::downgrade(&inner),
            start,
            interval.max(Duration::from_millis(10)),
        ));
        *inner.poller.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
        Ok(Self { inner })
    }
}

/// A per-bus tag; uniqueness across processes only has to be likely (a collision makes a
/// process skip another's change, bounded by the cache TTL).
fn rand_origin() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u128(Utc::now().timestamp_nanos_opt().unwrap_or_default() as u128);
    h.finish() as u32
}

async fn poll(inner: Weak<Inner>, mut last: i64, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut polls = 0u64;
    loop {
        ticker.tick().await;
        let Some(bus) = inner.upgrade() else { return };
        match read_since(&bus, last).await {
            Ok(next) => last = next,
            Err(e) => {
                // The log is durable: the next successful poll delivers what this one missed.
                tracing::warn!(error = %e, "change log not read; retrying");
            }
        }
        polls += 1;
        // About once a minute, drop entries every poller has long seen.
        if polls.is_multiple_of((60_000 / interval.as_millis().max(1) as u64).max(1))
            && let Err(e) = prune(&bus.store).await
        {
            tracing::warn!(error = %e, "change log not pruned");
        }
    }
}

/// A change log entry: revision, key id and digest (none for "everything"), origin.
type LogRow = (i64, Option<String>, Option<Vec<u8>>, Option<i64>);

async fn read_since(bus: &Inner, last: i64) -> Result<i64, crate::Error> {
    let rows: Vec<LogRow> = sqlx::query_as(
        "SELECT rev, key_id, digest, origin FROM kv_changes WHERE rev > ?1 ORDER BY rev LIMIT ?2",
    )
    .bind(last)
    .bind(POLL_BATCH)
    .fetch_all(bus.store.pool())
    .await?;
    let Some(&(first, ..)) = rows.first() else {
        return Ok(last);
    };
    // A gap means entries were pruned before this poller saw them.
    if first > last + 1 {
        let oldest: Option<i64> = sqlx::query_scalar("SELECT min(rev) FROM kv_changes")
            .fetch_one(bus.store.pool())
            .await?;
        if oldest.is_some_and(|o| o > last + 1) {
            let _ = bus.tx.send(Change::All);
        }
    }
    let mut next = last;
    for (rev, key, digest, origin) in rows {
        next = rev;
        if origin == Some(bus.origin) {
            continue;
        }
        let change = match (key, digest) {
            (Some(k), Some(d)) => Change::Key {
                id: parse_id(&k, "kv_changes.key_id")?,
                digest: KeyDigest::from_slice(&d).map_err(|e| corrupt("kv_changes.digest", e))?,
            },
            _ => Change::All,
        };
        // No subscriber is not an error: nobody caches.
        let _ = bus.tx.send(change);
    }
    Ok(next)
}

async fn prune(store: &SqliteStore) -> Result<(), crate::Error> {
    let cutoff = micros(Utc::now() - RETENTION);
    let _turn = store.write_turn().await;
    // The newest entry always stays, so that a new poller's starting revision survives.
    sqlx::query("DELETE FROM kv_changes WHERE at < ?1 AND rev < (SELECT max(rev) FROM kv_changes)")
        .bind(cutoff)
        .execute(store.pool())
        .await?;
    Ok(())
}

#[async_trait]
impl ChangeBus for SqliteChangeBus {
    async fn publish(&self, changes: &[Change]) -> Result<()> {
        for c in changes {
            let _ = self.inner.tx.send(*c);
        }
        let mut w = self.inner.store.write().await?;
        log_changes(&mut w.tx, changes, Some(self.inner.origin)).await?;
        Ok(w.commit().await?)
    }

    fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.inner.tx.subscribe()
    }
}
