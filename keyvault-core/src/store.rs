//! Where keys live.

use std::fmt::Debug;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::{
    audit::AuditEvent,
    digest::KeyDigest,
    error::Result,
    model::{KeyId, KeyRecord},
};

/// One change to the key table, applied with others in one transaction.
#[derive(Debug, Clone)]
pub enum KeyWrite {
    /// A new key. Its credits, if any, open a balance for its `quota_id`.
    Insert(KeyRecord),
    /// A changed key; `record.revision` must be the stored revision + 1, else `Conflict`.
    Update {
        /// The new state.
        record: KeyRecord,
        /// The credits configuration changed: set the balance to `record.credits`.
        reset_credits: bool,
    },
    /// Removes a key for good (`NotFound` when it is not there).
    Delete {
        /// The key.
        id: KeyId,
        /// Its digest, so that caches can drop it.
        digest: KeyDigest,
    },
}

/// Filters and a page of the key listing (newest first).
#[derive(Debug, Clone, Default)]
pub struct KeyQuery {
    /// Only this owner's keys.
    pub owner_id: Option<String>,
    /// Only enabled (or disabled) keys.
    pub enabled: Option<bool>,
    /// Case-insensitive substring of the name, or the key's start.
    pub search: Option<String>,
    /// Page size (1–100).
    pub limit: usize,
    /// Only keys older than this id (the previous page's last).
    pub before: Option<KeyId>,
}

impl KeyWrite {
    /// The cache invalidation this write calls for.
    pub fn change(&self) -> crate::Change {
        match self {
            KeyWrite::Insert(r) | KeyWrite::Update { record: r, .. } => crate::Change::Key {
                id: r.id,
                digest: r.digest,
            },
            KeyWrite::Delete { id, digest } => crate::Change::Key {
                id: *id,
                digest: *digest,
            },
        }
    }
}

/// A page of results.
#[derive(Debug, Clone)]
pub struct Page<T> {
    /// The items.
    pub items: Vec<T>,
    /// Whether more follow.
    pub has_more: bool,
}

impl<T> Page<T> {
    /// The page of a query that asked for one item more than `limit`: that extra item, when
    /// it came, only says that more follow.
    ///
    /// ```
    /// # use keyvault_core::Page;
    /// let page = Page::over_fetched(vec![1, 2, 3], 2);
    /// assert_eq!((page.items, page.has_more), (vec![1, 2], true));
    /// let last = Page::over_fetched(vec![3], 2);
    /// assert_eq!((last.items, last.has_more), (vec![3], false));
    /// ```
    pub fn over_fetched(mut items: Vec<T>, limit: usize) -> Self {
        let has_more = items.len() > limit;
        items.truncate(limit);
        Self { items, has_more }
    }
}

/// Every item of a listing, page after page: `fetch(after)` reads the page that follows the
/// item at `after` (`None`: the first page), and `position` names an item for the next call.
///
/// ```
/// # use keyvault_core::{Page, every_page};
/// # async fn demo() -> keyvault_core::Result<()> {
/// let items: Vec<u32> = (1..=5).collect();
/// let all = every_page(
///     |after: Option<u32>| {
///         let rest: Vec<u32> = items.iter().copied().filter(|i| after.is_none_or(|a| *i > a)).collect();
///         async move { Ok(Page::over_fetched(rest, 2)) }
///     },
///     |i| *i,
/// )
/// .await?;
/// assert_eq!(all, items);
/// # Ok(()) }
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(demo()).unwrap();
/// ```
pub async fn every_page<T, P, F, Fut>(mut fetch: F, position: impl Fn(&T) -> P) -> Result<Vec<T>>
where
    F: FnMut(Option<P>) -> Fut,
    Fut: std::future::Future<Output = Result<Page<T>>>,
{
    let mut all = Vec::new();
    let mut after = None;
    loop {
        let page = fetch(after).await?;
        after = page.items.last().map(&position);
        all.extend(page.items);
        if !page.has_more {
            return Ok(all);
        }
    }
}

/// Stores key records. Mutations come with the audit events that record them and are written
/// in one transaction with them: no change without its record.
///
/// ```
/// # use keyvault_core::{KeyStore, memory::MemoryStore};
/// # async fn demo() -> keyvault_core::Result<()> {
/// let store = MemoryStore::new();
/// let digest = keyvault_core::KeyHasher::sha256().digest("kv_unknown");
/// assert!(store.find_by_digest(&digest).await?.is_none());
/// # Ok(()) }
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(demo()).unwrap();
/// ```
#[async_trait]
pub trait KeyStore: Send + Sync + Debug {
    /// Applies `writes` and appends `audit`, all or nothing.
    async fn apply(&self, writes: &[KeyWrite], audit: &[AuditEvent]) -> Result<()>;

    /// The key with this id.
    async fn get(&self, id: KeyId) -> Result<Option<KeyRecord>>;

    /// The key with this digest: the verification lookup.
    async fn find_by_digest(&self, digest: &KeyDigest) -> Result<Option<KeyRecord>>;

    /// A page of keys, newest first.
    async fn list(&self, query: &KeyQuery) -> Result<Page<KeyRecord>>;

    /// Up to `limit` keys whose automatic rotation is due at `now`: `next_rotation_at <= now`,
    /// enabled, not superseded and not expired; the most overdue first.
    async fn due_for_rotation(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<KeyRecord>>;

    /// Up to `limit` keys whose effective expiry is at or before `before`.
    async fn expired_before(&self, before: DateTime<Utc>, limit: usize) -> Result<Vec<KeyRecord>>;

    /// The enabled keys that hold credits or whose `expires_at` is at or before
    /// `expires_before`, in no particular order: what an alert evaluation watches. The
    /// default pages through [`list`](Self::list); a database answers with one query
    /// that decodes only those keys.
    async fn watched_keys(&self, expires_before: DateTime<Utc>) -> Result<Vec<KeyRecord>> {
        let all = every_page(
            |before| async move {
                self.list(&KeyQuery {
                    enabled: Some(true),
                    limit: 1_000,
                    before,
                    ..KeyQuery::default()
                })
                .await
            },
            |k: &KeyRecord| k.id,
        )
        .await?;
        Ok(all
            .into_iter()
            .filter(|k| k.credits.is_some() || k.expires_at.is_some_and(|t| t <= expires_before))
            .collect())
    }
}
