//! A read-through cache in front of any key store: what makes a verification a map lookup.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use quick_cache::sync::Cache;
use tokio::{sync::broadcast, task::JoinHandle};

use crate::{
    audit::AuditEvent,
    changes::{Change, ChangeBus},
    digest::KeyDigest,
    error::{Error, Result},
    model::{KeyId, KeyRecord},
    store::{KeyQuery, KeyStore, KeyWrite, Page},
};

/// Cache settings.
#[derive(Debug, Clone, Copy)]
pub struct CacheConfig {
    /// How long a found key is trusted without hearing of a change. Invalidation (local, or
    /// from a [`ChangeBus`]) evicts sooner; this bounds staleness if a message is lost.
    pub ttl: Duration,
    /// How long an unknown digest is remembered as unknown.
    pub negative_ttl: Duration,
    /// Most entries kept (least recently used go first).
    pub capacity: usize,
    /// How long a lookup that must read the store waits for it before failing as a backend
    /// error (a verification answers 503): a store that hangs (a stopped database server, a
    /// network that drops packets) must not hold every request for a key not cached until
    /// it answers. Keys already cached are not affected. Timed by Tokio: the runtime needs
    /// its timer (`enable_time`, part of `enable_all` and of `#[tokio::main]`).
    pub load_timeout: Duration,
    /// How long a key found before keeps verifying when it can no longer be confirmed and the
    /// store cannot be read ("stale if error", the fail mode of cached keys): an entry past its
    /// `ttl`, or dropped by [`CachedKeyStore::invalidate_all`] (a change bus that lost its
    /// connection, a subscriber that fell behind), is read again from the store; only when
    /// that read fails with a backend error is the entry answered instead, until this long
    /// after it went stale: after its TTL ended or after the latest flush, whichever came
    /// first (a bus that keeps failing flushes again on every retry, so the bound is `ttl` +
    /// this after the entry was last read). While the store keeps failing, such entries are
    /// answered at once and one lookup a second finds out whether it is back. A key's own
    /// change (a disable, a delete) is never answered stale, nor is a key not found.
    /// `Duration::ZERO` fails closed: a verification that cannot confirm its key answers 503.
    pub stale_if_error: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(60),
            negative_ttl: Duration::from_secs(10),
            capacity: 100_000,
            load_timeout: Duration::from_secs(3),
            stale_if_error: Duration::from_secs(60),
        }
    }
}

#[derive(Clone)]
struct Entry {
    record: Option<Arc<KeyRecord>>,
    loaded: Instant,
}

/// Hit and miss counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups that read the store.
    pub misses: u64,
    /// Lookups answered with an entry that could not be confirmed, the store failing
    /// ([`CacheConfig::stale_if_error`]).
    pub stale: u64,
}

/// Wraps a [`KeyStore`]: lookups by digest are cached (found and not found), concurrent misses
/// for one digest make a single store read, and writes through it evict what they change.
/// Records are cached, never decisions: expiry and enabled state are checked on every
/// verification against the current time.
///
/// ```
/// # use std::sync::Arc;
/// # use keyvault_core::{CachedKeyStore, CacheConfig, KeyStore, memory::MemoryStore};
/// # async fn demo() -> keyvault_core::Result<()> {
/// let cached = CachedKeyStore::new(MemoryStore::new(), CacheConfig::default());
/// let digest = keyvault_core::KeyHasher::sha256().digest("kv_nope");
/// assert!(cached.lookup(&digest).await?.is_none());
/// assert!(cached.lookup(&digest).await?.is_none()); // answered from the negative cache
/// assert_eq!(cached.stats().hits, 1);
/// # Ok(()) }
/// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(demo()).unwrap();
/// ```
///
/// A lookup that reads the store is timed ([`CacheConfig::load_timeout`]): it needs a Tokio
/// runtime with its timer enabled (`enable_time` or `enable_all`, as `#[tokio::main]` has).
#[derive(Debug)]
pub struct CachedKeyStore<S> {
    inner: S,
    cache: Cache<[u8; 32], Entry>,
    config: CacheConfig,
    // Bumped by every invalidation: a load that overlaps one is not kept, so a record read
    // just before a disable can't be cached after the disable's eviction.
    epoch: AtomicU64,
    // Entries that are neither fresh nor past `stale_if_error`, set aside while a read tries
    // to confirm them (which takes them out of `cache`).
    unconfirmed: Cache<[u8; 32], Entry>,
    // Bumped by the invalidations a stale entry must never outlive (a key's own change, a
    // flush that fails closed): an entry set aside while one happens is not kept.
    removals: AtomicU64,
    // The times below count nanoseconds from here, plus one (0: never).
    origin: Instant,
    // Entries loaded before this are unconfirmed (`invalidate_all` with `stale_if_error`).
    flushed_at: AtomicU64,
    // When a store read last failed; 0 once one succeeds.
    failed_at: AtomicU64,
    // A read is finding out whether the failing store is back.
    probing: AtomicBool,
    hits: AtomicU64,
    misses: AtomicU64,
    stale: AtomicU64,
}

/// How long, after a failed store read, entries that can't be confirmed are answered without
/// trying the store again.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);

/// The one read in flight that finds out whether a failing store is back.
struct Probe<'a>(&'a AtomicBool);

impl<'a> Probe<'a> {
    fn start(flag: &'a AtomicBool) -> Option<Self> {
        flag.compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| Probe(flag))
    }
}

impl Drop for Probe<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// A store read that took longer than [`CacheConfig::load_timeout`].
#[derive(Debug, thiserror::Error)]
#[error("the key store did not answer within {} ms", .0.as_millis())]
struct LoadTimeout(Duration);

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("found", &self.record.is_some())
            .finish()
    }
}

impl<S: KeyStore> CachedKeyStore<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, config: CacheConfig) -> Self {
        Self {
            inner,
            cache: Cache::new(config.capacity.max(16)),
            config,
            epoch: AtomicU64::new(0),
            unconfirmed: Cache::new(config.capacity.max(16)),
            removals: AtomicU64::new(0),
            origin: Instant::now(),
            flushed_at: AtomicU64::new(0),
            failed_at: AtomicU64::new(0),
            probing: AtomicBool::new(false),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            stale: AtomicU64::new(0),
        }
    }

    fn ticks(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.origin).as_nanos()).unwrap_or(u64::MAX - 1)
            + 1
    }

    fn instant(&self, ticks: &AtomicU64) -> Option<Instant> {
        match ticks.load(Ordering::Acquire) {
            0 => None,
            t => Some(self.origin + Duration::from_nanos(t - 1)),
        }
    }

    /// When `e` stopped being fresh: at the end of its TTL, or when everything loaded
    /// before it was marked unconfirmed.
    fn stale_since(&self, e: &Entry) -> Instant {
        let expired = e.loaded + self.config.ttl;
        match self.instant(&self.flushed_at) {
            Some(f) if e.loaded < f => f.min(expired),
            _ => expired,
        }
    }

    /// Whether no key was evicted by its own change since `removals` was read.
    fn unchanged(&self, removals: u64) -> bool {
        self.removals.load(Ordering::SeqCst) == removals
    }

    /// Whether a found entry that is not fresh may be answered if the store fails.
    fn servable(&self, e: &Entry, now: Instant) -> bool {
        e.record.is_some()
            && now.saturating_duration_since(self.stale_since(e)) < self.config.stale_if_error
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    fn fresh(&self, e: &Entry) -> bool {
        self.fresh_at(e, Instant::now())
    }

    fn fresh_at(&self, e: &Entry, now: Instant) -> bool {
        let ttl = if e.record.is_some() {
            self.config.ttl
        } else {
            self.config.negative_ttl
        };
        // An entry loaded after `now` (by a concurrent request) is as fresh as can be.
        now.saturating_duration_since(e.loaded) < ttl
            && self.instant(&self.flushed_at).is_none_or(|f| e.loaded >= f)
    }

    /// The key with this digest if the cache holds a fresh entry for it (`Some(None)`: known
    /// not to exist) that `usable` accepts, without waiting; `now` is the caller's clock
    /// reading for the request. A hit is counted only then. `None`: ask
    /// [`lookup`](Self::lookup), which counts the hit or miss itself.
    pub fn cached(
        &self,
        digest: &KeyDigest,
        now: Instant,
        usable: impl FnOnce(Option<&KeyRecord>) -> bool,
    ) -> Option<Option<Arc<KeyRecord>>> {
        let e = self.cache.get(digest.as_bytes())?;
        if !self.fresh_at(&e, now) || !usable(e.record.as_deref()) {
            return None;
        }
        self.hits.fetch_add(1, Ordering::Relaxed);
        Some(e.record)
    }

    /// The key with this digest, from the cache or the store (or, the store failing, from
    /// an entry that can't be confirmed: [`CacheConfig::stale_if_error`]).
    pub async fn lookup(&self, digest: &KeyDigest) -> Result<Option<Arc<KeyRecord>>> {
        let k = digest.as_bytes();
        let now = Instant::now();
        let removals = self.removals.load(Ordering::SeqCst);
        let stale = match self.cache.get(k) {
            Some(e) if self.fresh_at(&e, now) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                return Ok(e.record);
            }
            // Set aside: the read below takes it out of the cache, and the lookups that come
            // while it runs must still find it.
            Some(e) if self.servable(&e, now) => {
                self.unconfirmed.insert(*k, e.clone());
                if self.removals.load(Ordering::SeqCst) != removals {
                    self.unconfirmed.remove(k);
                }
                Some(e)
            }
            Some(_) => {
                self.cache.remove(k);
                None
            }
            None => self.unconfirmed.get(k).filter(|e| self.servable(e, now)),
        };
        // While the store fails, an entry that may be answered stale is answered at once;
        // one lookup a second (the probe) reads the store to find out whether it is back.
        let mut _probe = None;
        if let (Some(e), Some(failed)) = (&stale, self.instant(&self.failed_at)) {
            let retry = now.saturating_duration_since(failed) >= RETRY_AFTER_FAILURE;
            match retry.then(|| Probe::start(&self.probing)).flatten() {
                Some(p) => _probe = Some(p),
                None if self.unchanged(removals) => {
                    self.stale.fetch_add(1, Ordering::Relaxed);
                    return Ok(e.record.clone());
                }
                None => {}
            }
        }
        // One bound for the whole wait, whether this lookup reads the store or waits for a
        // concurrent one (which may itself time out and hand the read on).
        let read = match tokio::time::timeout(self.config.load_timeout, self.load(digest)).await {
            Ok(r) => r,
            Err(_) => Err(Error::backend(
                "key store",
                LoadTimeout(self.config.load_timeout),
            )),
        };
        match (read, stale) {
            (Ok(record), _) => {
                self.failed_at.store(0, Ordering::Release);
                self.unconfirmed.remove(k);
                Ok(record)
            }
            // Unless the key changed meanwhile: its own change is never answered stale.
            (Err(e @ Error::Backend(_)), Some(entry)) if self.unchanged(removals) => {
                self.failed_at
                    .store(self.ticks(Instant::now()), Ordering::Release);
                tracing::warn!(error = %e, "key store failing; answering a key unconfirmed");
                self.stale.fetch_add(1, Ordering::Relaxed);
                Ok(entry.record)
            }
            (Err(e), _) => {
                if matches!(e, Error::Backend(_)) {
                    self.failed_at
                        .store(self.ticks(Instant::now()), Ordering::Release);
                }
                Err(e)
            }
        }
    }

    /// Reads `digest` from the store, or waits for a concurrent read of it.
    async fn load(&self, digest: &KeyDigest) -> Result<Option<Arc<KeyRecord>>> {
        let k = digest.as_bytes();
        loop {
            match self.cache.get_value_or_guard_async(k).await {
                Ok(e) if self.fresh(&e) => {
                    self.hits.fetch_add(1, Ordering::Relaxed);
                    return Ok(e.record);
                }
                Ok(_) => {
                    self.cache.remove(k);
                }
                Err(guard) => {
                    self.misses.fetch_add(1, Ordering::Relaxed);
                    let epoch = self.epoch.load(Ordering::SeqCst);
                    // On error the guard drops unfilled and a waiter retries the load.
                    let record = self.inner.find_by_digest(digest).await?.map(Arc::new);
                    let entry = Entry {
                        record: record.clone(),
                        loaded: Instant::now(),
                    };
                    if self.epoch.load(Ordering::SeqCst) == epoch {
                        let _ = guard.insert(entry);
                        // An invalidation between the check and the insert must still win.
                        if self.epoch.load(Ordering::SeqCst) != epoch {
                            self.cache.remove(k);
                        }
                    }
                    return Ok(record);
                }
            }
        }
    }

    /// Drops one digest (a change of that key: never answered stale afterwards).
    pub fn invalidate(&self, digest: &KeyDigest) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        // In this order: a lookup that still found the entry in `cache` sees the new count
        // after setting it aside, and takes it back out.
        self.cache.remove(digest.as_bytes());
        self.removals.fetch_add(1, Ordering::SeqCst);
        self.unconfirmed.remove(digest.as_bytes());
    }

    /// Trusts nothing cached so far: every key is read from the store again. With
    /// [`CacheConfig::stale_if_error`] the entries are kept, unconfirmed, for a store that
    /// fails; without it they are dropped.
    pub fn invalidate_all(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        if self.config.stale_if_error.is_zero() {
            self.cache.clear();
            self.removals.fetch_add(1, Ordering::SeqCst);
            self.unconfirmed.clear();
        } else {
            self.flushed_at
                .store(self.ticks(Instant::now()), Ordering::Release);
        }
    }

    /// Applies a change heard from elsewhere.
    pub fn on_change(&self, change: &Change) {
        match change {
            Change::Key { digest, .. } => self.invalidate(digest),
            Change::All => self.invalidate_all(),
        }
    }

    /// Hit and miss counts so far.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            stale: self.stale.load(Ordering::Relaxed),
        }
    }
}

impl<S: KeyStore + 'static> CachedKeyStore<S> {
    /// Evicts whatever `bus` reports, until the cache is dropped. A subscriber that falls
    /// behind flushes everything: a lost message must not keep a stale entry.
    pub fn listen(self: &Arc<Self>, bus: &dyn ChangeBus) -> JoinHandle<()> {
        let mut rx = bus.subscribe();
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let msg = rx.recv().await;
                let Some(cache) = weak.upgrade() else { return };
                match msg {
                    Ok(change) => cache.on_change(&change),
                    Err(broadcast::error::RecvError::Lagged(_)) => cache.invalidate_all(),
                    Err(broadcast::error::RecvError::Closed) => {
                        cache.invalidate_all();
                        return;
                    }
                }
            }
        })
    }
}

#[async_trait]
impl<S: KeyStore> KeyStore for CachedKeyStore<S> {
    async fn apply(&self, writes: &[KeyWrite], audit: &[AuditEvent]) -> Result<()> {
        let result = self.inner.apply(writes, audit).await;
        // Evict even on failure: the write may have committed before the error arrived.
        for w in writes {
            self.on_change(&w.change());
        }
        result
    }

    async fn get(&self, id: KeyId) -> Result<Option<KeyRecord>> {
        self.inner.get(id).await
    }

    async fn find_by_digest(&self, digest: &KeyDigest) -> Result<Option<KeyRecord>> {
        Ok(self.lookup(digest).await?.map(|r| (*r).clone()))
    }

    async fn list(&self, query: &KeyQuery) -> Result<Page<KeyRecord>> {
        self.inner.list(query).await
    }

    async fn due_for_rotation(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<KeyRecord>> {
        self.inner.due_for_rotation(now, limit).await
    }

    async fn expired_before(&self, before: DateTime<Utc>, limit: usize) -> Result<Vec<KeyRecord>> {
        self.inner.expired_before(before, limit).await
    }

    async fn watched_keys(&self, expires_before: DateTime<Utc>) -> Result<Vec<KeyRecord>> {
        self.inner.watched_keys(expires_before).await
    }
}

/// Forwarding impls so that `Arc<dyn KeyStore>` (chosen at run time) is a store too.
#[async_trait]
impl<T: KeyStore + ?Sized> KeyStore for Arc<T> {
    async fn apply(&self, writes: &[KeyWrite], audit: &[AuditEvent]) -> Result<()> {
        (**self).apply(writes, audit).await
    }
    async fn get(&self, id: KeyId) -> Result<Option<KeyRecord>> {
        (**self).get(id).await
    }
    async fn find_by_digest(&self, digest: &KeyDigest) -> Result<Option<KeyRecord>> {
        (**self).find_by_digest(digest).await
    }
    async fn list(&self, query: &KeyQuery) -> Result<Page<KeyRecord>> {
        (**self).list(query).await
    }
    async fn due_for_rotation(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<KeyRecord>> {
        (**self).due_for_rotation(now, limit).await
    }
    async fn expired_before(&self, before: DateTime<Utc>, limit: usize) -> Result<Vec<KeyRecord>> {
        (**self).expired_before(before, limit).await
    }
    async fn watched_keys(&self, expires_before: DateTime<Utc>) -> Result<Vec<KeyRecord>> {
        (**self).watched_keys(expires_before).await
    }
}
