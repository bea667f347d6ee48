//! Verifier properties that need a store double: garbage never reaches a store, concurrent
//! misses load once, and the usage recorder's delivery guarantees.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use keyvault_core::{
    Actor, ApiKey, AuditEvent, CacheConfig, CachedKeyStore, KeyDigest, KeyId, KeyQuery, KeyRecord,
    KeyStore, KeyWrite, Keyvault, NewKey, Outcome, Page, Prefix, RecorderConfig, Result,
    StatsQuery, UsageEvent, UsageQuery, UsageRecorder, UsageSink, VerifyRequest,
    memory::MemoryStore,
};
use rand::{RngExt, SeedableRng, rngs::StdRng};

mockall::mock! {
    #[derive(Debug)]
    Store {}
    #[async_trait]
    impl KeyStore for Store {
        async fn apply(&self, writes: &[KeyWrite], audit: &[AuditEvent]) -> Result<()>;
        async fn get(&self, id: KeyId) -> Result<Option<KeyRecord>>;
        async fn find_by_digest(&self, digest: &KeyDigest) -> Result<Option<KeyRecord>>;
        async fn list(&self, query: &KeyQuery) -> Result<Page<KeyRecord>>;
        async fn due_for_rotation(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<KeyRecord>>;
        async fn expired_before(&self, before: DateTime<Utc>, limit: usize) -> Result<Vec<KeyRecord>>;
    }
}

#[tokio::test]
async fn malformed_keys_never_reach_the_store() {
    // The mock fails the test on any call: parsing must reject everything below by itself.
    let store = MockStore::new();
    let memory = Arc::new(MemoryStore::new());
    let kv = Keyvault::builder()
        .key_store(Arc::new(store))
        .credits(memory)
        .build()
        .unwrap();
    let alphabet: Vec<u8> = (0u8..=127).filter(u8::is_ascii_graphic).collect();
    let mut rejected = 0u64;
    for i in 0..10_000 {
        let prefix = Prefix::new(["kv", "acme", "my_app"][i % 3]).unwrap();
        let key = ApiKey::generate(&prefix);
        let original = key.expose().as_bytes().to_vec();
        let mut buf = original.clone();
        for pos in 0..buf.len() {
            // A few substitutions per position keep the run short; the parser's unit test
            // covers the whole alphabet at every position.
            for &c in alphabet.iter().skip(pos % 7).step_by(7) {
                if c == original[pos] {
                    continue;
                }
                buf[pos] = c;
                let text = std::str::from_utf8(&buf).unwrap();
                let v = kv.verify(&VerifyRequest::new(text)).await.unwrap();
                assert_eq!(v.outcome, Outcome::NotFound);
                rejected += 1;
            }
            buf[pos] = original[pos];
        }
    }
    let mut rng = StdRng::seed_from_u64(7);
    const B62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut s = String::new();
    for _ in 0..1_000_000 {
        s.clear();
        s.push_str("kv_");
        for _ in 0..46 {
            s.push(char::from(B62[rng.random_range(0..62usize)]));
        }
        let v = kv.verify(&VerifyRequest::new(&s)).await.unwrap();
        assert_eq!(v.outcome, Outcome::NotFound);
    }
    assert!(rejected > 10_000 * 46 * 10);
}

/// A store that counts digest lookups and answers slowly, so that misses pile up.
#[derive(Debug)]
struct SlowCountingStore {
    inner: MemoryStore,
    lookups: AtomicUsize,
    /// Lookups never answer while set (a hung database).
    hung: AtomicBool,
    /// Lookups fail while set (a database that refuses connections).
    failing: AtomicBool,
}

impl SlowCountingStore {
    /// Answering (slowly), neither hung nor failing.
    fn new() -> Arc<Self> {
        Arc::new(Self {
            inner: MemoryStore::new(),
            lookups: AtomicUsize::new(0),
            hung: AtomicBool::new(false),
            failing: AtomicBool::new(false),
        })
    }
}

#[async_trait]
impl KeyStore for SlowCountingStore {
    async fn apply(&self, writes: &[KeyWrite], audit: &[AuditEvent]) -> Result<()> {
        self.inner.apply(writes, audit).await
    }
    async fn get(&self, id: KeyId) -> Result<Option<KeyRecord>> {
        self.inner.get(id).await
    }
    async fn find_by_digest(&self, digest: &KeyDigest) -> Result<Option<KeyRecord>> {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        if self.hung.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        if self.failing.load(Ordering::SeqCst) {
            return Err(keyvault_core::Error::backend("test", "connection refused"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.inner.find_by_digest(digest).await
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
}

/// A store that stops answering fails the lookups of keys not cached after the cache's load
/// timeout, all of them at once rather than one after another, as backend errors (503);
/// a cached key keeps verifying; once the store answers again, so do the lookups.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_store_fails_lookups_after_the_load_timeout_and_cached_keys_verify() {
    let store = SlowCountingStore::new();
    let kv = Keyvault::builder()
        .key_store(store.clone())
        .credits(Arc::new(MemoryStore::new()))
        .cache(CacheConfig {
            load_timeout: Duration::from_millis(300),
            ..CacheConfig::default()
        })
        .build()
        .unwrap();
    let mut keys = Vec::new();
    for name in ["cached", "not cached"] {
        let created = kv
            .create_key(NewKey::new(name), &Actor::library())
            .await
            .unwrap();
        keys.push(created.key.expose().to_owned());
    }
    let verify = |k: &str| {
        let (kv, k) = (kv.clone(), k.to_owned());
        tokio::spawn(async move { kv.verify(&VerifyRequest::new(&k)).await.map(|v| v.outcome) })
    };
    assert_eq!(verify(&keys[0]).await.unwrap().unwrap(), Outcome::Valid);
    store.hung.store(true, Ordering::SeqCst);
    let start = Instant::now();
    let waiting: Vec<_> = (0..50).map(|_| verify(&keys[1])).collect();
    assert_eq!(verify(&keys[0]).await.unwrap().unwrap(), Outcome::Valid);
    assert!(
        start.elapsed() < Duration::from_millis(300),
        "the cached key waited"
    );
    for w in waiting {
        let e = w.await.unwrap().expect_err("a hung store answers nothing");
        assert!(matches!(e, keyvault_core::Error::Backend(_)), "{e:?}");
        let cause = std::error::Error::source(&e).map(ToString::to_string);
        assert_eq!(
            cause.as_deref(),
            Some("the key store did not answer within 300 ms")
        );
    }
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(2),
        "50 lookups failed after {waited:?}, not one timeout"
    );
    store.hung.store(false, Ordering::SeqCst);
    assert_eq!(verify(&keys[1]).await.unwrap().unwrap(), Outcome::Valid);
}

/// CacheConfig::stale_if_error, the fail mode of cached keys: a key found before keeps
/// verifying past its TTL and after a flush while the store fails, answered at once between
/// the probes, until the window ends; a key never found, a key whose own change evicted it
/// and any key once the window is over answer as a backend failure; with a zero window a
/// flush fails closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_keys_verify_stale_while_the_store_fails_within_the_window() {
    let store = SlowCountingStore::new();
    let config = CacheConfig {
        ttl: Duration::from_millis(200),
        stale_if_error: Duration::from_millis(2_500),
        ..CacheConfig::default()
    };
    let kv = Keyvault::builder()
        .key_store(store.clone())
        .credits(Arc::new(MemoryStore::new()))
        .cache(config)
        .build()
        .unwrap();
    let cache = kv.key_cache();
    let mut keys = Vec::new();
    for name in ["a", "b", "never verified"] {
        let created = kv
            .create_key(NewKey::new(name), &Actor::library())
            .await
            .unwrap();
        keys.push((created.record.id, created.key.expose().to_owned()));
    }
    let outcome = |k: &str| {
        let (kv, k) = (kv.clone(), k.to_owned());
        async move { kv.verify(&VerifyRequest::new(&k)).await.map(|v| v.outcome) }
    };
    for (_, k) in &keys[..2] {
        assert_eq!(outcome(k).await.unwrap(), Outcome::Valid);
    }
    // b changes (a disable elsewhere, heard here): evicted, never to be answered stale.
    kv.set_enabled(keys[1].0, false, &Actor::library())
        .await
        .unwrap();
    assert_eq!(outcome(&keys[1].1).await.unwrap(), Outcome::Disabled);
    kv.set_enabled(keys[1].0, true, &Actor::library())
        .await
        .unwrap();
    store.failing.store(true, Ordering::SeqCst);
    let failed_at = Instant::now();
    tokio::time::sleep(Duration::from_millis(250)).await;
    // Past its TTL, the store failing: a is answered from its stale entry…
    assert_eq!(outcome(&keys[0].1).await.unwrap(), Outcome::Valid);
    // …b, evicted by its own change, and the key never verified are not.
    for (_, k) in &keys[1..] {
        let e = outcome(k).await.expect_err("no entry to answer with");
        assert!(matches!(e, keyvault_core::Error::Backend(_)), "{e:?}");
    }
    // Between probes (one a second), without reading the store.
    let reads = store.lookups.load(Ordering::SeqCst);
    for _ in 0..100 {
        assert_eq!(outcome(&keys[0].1).await.unwrap(), Outcome::Valid);
    }
    assert!(store.lookups.load(Ordering::SeqCst) <= reads + 1);
    // A flush (a change bus that lost its connection) keeps entries unconfirmed.
    cache.invalidate_all();
    assert_eq!(outcome(&keys[0].1).await.unwrap(), Outcome::Valid);
    assert!(cache.stats().stale >= 101, "{:?}", cache.stats());
    // The window counts from when the entry went stale (its TTL's end, 200 ms after it was
    // loaded; the flush came later): once it has passed, a fails too.
    tokio::time::sleep(Duration::from_millis(2_600).saturating_sub(failed_at.elapsed())).await;
    let e = outcome(&keys[0].1).await.expect_err("the window is over");
    assert!(matches!(e, keyvault_core::Error::Backend(_)), "{e:?}");
    // The store back: confirmed and fresh again.
    store.failing.store(false, Ordering::SeqCst);
    assert_eq!(outcome(&keys[0].1).await.unwrap(), Outcome::Valid);

    // A zero window fails closed: a flush drops everything.
    let closed = Arc::new(CachedKeyStore::new(
        store.clone(),
        CacheConfig {
            stale_if_error: Duration::ZERO,
            ..CacheConfig::default()
        },
    ));
    let digest = keyvault_core::KeyHasher::sha256().digest(&keys[0].1);
    assert!(closed.lookup(&digest).await.unwrap().is_some());
    closed.invalidate_all();
    store.failing.store(true, Ordering::SeqCst);
    assert!(closed.lookup(&digest).await.is_err());
    assert_eq!(closed.stats().stale, 0);
}

/// A lookup already waiting on a hung store when its key is invalidated (a disable heard
/// meanwhile) answers the store's failure, not the entry it set aside, and so does every
/// lookup after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_invalidated_during_a_hung_read_is_never_answered_stale() {
    let store = SlowCountingStore::new();
    let kv = Keyvault::builder()
        .key_store(store.clone())
        .credits(Arc::new(MemoryStore::new()))
        .cache(CacheConfig {
            ttl: Duration::from_millis(100),
            load_timeout: Duration::from_millis(400),
            ..CacheConfig::default()
        })
        .build()
        .unwrap();
    let created = kv
        .create_key(NewKey::new("k"), &Actor::library())
        .await
        .unwrap();
    let key = created.key.expose().to_owned();
    let digest = keyvault_core::KeyHasher::sha256().digest(&key);
    assert_eq!(
        kv.verify(&VerifyRequest::new(&key)).await.unwrap().outcome,
        Outcome::Valid
    );
    tokio::time::sleep(Duration::from_millis(150)).await;
    store.hung.store(true, Ordering::SeqCst);
    let waiting = {
        let kv = kv.clone();
        let key = key.clone();
        tokio::spawn(async move { kv.verify(&VerifyRequest::new(&key)).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    kv.key_cache().invalidate(&digest);
    let e = waiting
        .await
        .unwrap()
        .expect_err("the invalidated entry is not answered");
    assert!(matches!(e, keyvault_core::Error::Backend(_)), "{e:?}");
    let e = kv
        .verify(&VerifyRequest::new(&key))
        .await
        .expect_err("nor later");
    assert!(matches!(e, keyvault_core::Error::Backend(_)), "{e:?}");
    assert_eq!(kv.cache_stats().stale, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_misses_make_one_store_read() {
    let store = SlowCountingStore::new();
    let kv = Keyvault::builder()
        .key_store(store.clone())
        .credits(Arc::new(MemoryStore::new()))
        .build()
        .unwrap();
    let created = kv
        .create_key(NewKey::new("hot"), &Actor::library())
        .await
        .unwrap();
    let key = created.key.expose().to_owned();
    let tasks: Vec<_> = (0..1_000)
        .map(|_| {
            let kv = kv.clone();
            let key = key.clone();
            tokio::spawn(async move { kv.verify(&VerifyRequest::new(&key)).await.unwrap().outcome })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), Outcome::Valid);
    }
    assert_eq!(store.lookups.load(Ordering::SeqCst), 1);

    // The same for a digest nobody issued: one read, then the negative cache answers.
    let unknown = ApiKey::generate(&Prefix::default());
    let tasks: Vec<_> = (0..1_000)
        .map(|_| {
            let kv = kv.clone();
            let key = unknown.expose().to_owned();
            tokio::spawn(async move { kv.verify(&VerifyRequest::new(&key)).await.unwrap().outcome })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), Outcome::NotFound);
    }
    assert_eq!(store.lookups.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn cache_entries_expire_and_invalidation_wins_over_a_load_in_flight() {
    let store = SlowCountingStore::new();
    let cache = Arc::new(CachedKeyStore::new(
        store.clone(),
        CacheConfig {
            ttl: Duration::from_millis(100),
            negative_ttl: Duration::from_millis(100),
            capacity: 1_000,
            ..CacheConfig::default()
        },
    ));
    let kv = Keyvault::builder()
        .key_store(cache.clone())
        .credits(Arc::new(MemoryStore::new()))
        .build()
        .unwrap();
    let created = kv
        .create_key(NewKey::new("ttl"), &Actor::library())
        .await
        .unwrap();
    let digest = created.record.digest;
    assert!(cache.lookup(&digest).await.unwrap().is_some());
    assert!(cache.lookup(&digest).await.unwrap().is_some());
    assert_eq!(store.lookups.load(Ordering::SeqCst), 1);
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert!(cache.lookup(&digest).await.unwrap().is_some());
    assert_eq!(
        store.lookups.load(Ordering::SeqCst),
        2,
        "a stale entry is reloaded"
    );

    // A load that overlaps an invalidation is answered but not kept.
    cache.invalidate(&digest);
    let loading = {
        let cache = cache.clone();
        tokio::spawn(async move { cache.lookup(&digest).await.unwrap() })
    };
    tokio::time::sleep(Duration::from_millis(10)).await;
    cache.invalidate(&digest);
    assert!(loading.await.unwrap().is_some());
    assert!(cache.lookup(&digest).await.unwrap().is_some());
    assert_eq!(
        store.lookups.load(Ordering::SeqCst),
        4,
        "the overlapped load was not cached"
    );
}

#[tokio::test]
async fn a_disable_is_honoured_at_once_by_the_instance_that_made_it() {
    let kv = Keyvault::in_memory();
    let created = kv
        .create_key(NewKey::new("k"), &Actor::library())
        .await
        .unwrap();
    let key = created.key.expose();
    assert!(
        kv.verify(&VerifyRequest::new(key))
            .await
            .unwrap()
            .is_valid()
    );
    kv.set_enabled(created.record.id, false, &Actor::library())
        .await
        .unwrap();
    assert_eq!(
        kv.verify(&VerifyRequest::new(key)).await.unwrap().outcome,
        Outcome::Disabled
    );
}

fn event(i: usize) -> UsageEvent {
    UsageEvent {
        request_id: format!("r{i}").into(),
        key_id: None,
        owner_id: None,
        ts: Utc::now(),
        provider: Some("demo".into()),
        route: Some("/v1/hello".into()),
        method: Some("GET".into()),
        status: 200,
        latency_us: 500,
        outcome: Some(Outcome::Valid),
        cost: 1,
    }
}

/// A recorder writing batches of 64, whose interval never comes during a test: only a full
/// batch or shutdown writes.
fn batches_of_64(store: Arc<MemoryStore>) -> UsageRecorder {
    UsageRecorder::spawn(
        store,
        RecorderConfig {
            flush_interval: Duration::from_secs(3_600),
            batch_size: 64,
            ..RecorderConfig::default()
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_recorder_flushes_everything_on_shutdown() {
    let store = Arc::new(MemoryStore::new());
    let rec = batches_of_64(store.clone());
    for i in 0..1_000 {
        assert!(rec.record(event(i)));
    }
    rec.shutdown().await;
    assert_eq!(store.usage_len(), 1_000);
    let stats = rec.stats();
    assert_eq!(
        (stats.recorded, stats.written, stats.dropped),
        (1_000, 1_000, 0)
    );
    // After shutdown nothing is accepted, and saying so is counted.
    assert!(!rec.record(event(5_000)));
    assert_eq!(rec.stats().dropped, 1);
    rec.shutdown().await;
}

#[tokio::test]
async fn the_recorder_flushes_on_its_interval() {
    let store = Arc::new(MemoryStore::new());
    let rec = UsageRecorder::spawn(
        store.clone(),
        RecorderConfig {
            flush_interval: Duration::from_millis(50),
            ..RecorderConfig::default()
        },
    );
    rec.record(event(1));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let s = store.overview(&StatsQuery::last_24h()).await.unwrap();
    assert_eq!(s.calls, 1, "fresh without a shutdown");
    rec.shutdown().await;
}

/// A full batch is written without waiting for the interval, and batches keep being written
/// while events keep coming.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_batch_wakes_the_writer_before_its_interval() {
    let store = Arc::new(MemoryStore::new());
    let rec = batches_of_64(store.clone());
    for round in 1..=3 {
        for i in 0..64 {
            assert!(rec.record(event(round * 1_000 + i)));
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while store.usage_len() < round * 64 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(store.usage_len(), round * 64, "batch {round} written");
    }
    assert_eq!(rec.stats().written, 3 * 64);
    rec.shutdown().await;
}

/// A sink that never answers: the buffer fills and the recorder drops instead of blocking.
#[derive(Debug)]
struct StuckSink;

#[async_trait]
impl UsageSink for StuckSink {
    async fn write(&self, _events: &[UsageEvent]) -> Result<()> {
        std::future::pending().await
    }
}

/// A sink that refuses a batch as invalid input whenever it holds a provider named "bad".
#[derive(Debug, Default)]
struct PickySink {
    written: AtomicUsize,
}

#[async_trait]
impl UsageSink for PickySink {
    async fn write(&self, events: &[UsageEvent]) -> Result<()> {
        if events.iter().any(|e| e.provider.as_deref() == Some("bad")) {
            return Err(keyvault_core::Error::invalid("provider", "refused"));
        }
        self.written.fetch_add(events.len(), Ordering::SeqCst);
        Ok(())
    }
}

/// A batch the sink refuses as invalid is given up at once (counted as failed) instead of
/// being held and tried again, so that the batches behind it are written.
#[tokio::test]
async fn a_batch_refused_as_invalid_is_dropped_and_holds_nothing_up() {
    let sink = Arc::new(PickySink::default());
    let rec = UsageRecorder::spawn(
        sink.clone(),
        RecorderConfig {
            batch_size: 10,
            flush_interval: Duration::from_millis(10),
            ..RecorderConfig::default()
        },
    );
    for i in 0..30 {
        let mut e = event(i);
        e.provider = Some(if i == 5 { "bad" } else { "ok" }.into());
        rec.record(e);
    }
    rec.shutdown().await;
    let stats = rec.stats();
    assert_eq!(stats.failed, 10, "{stats:?}");
    assert_eq!(stats.written, 20, "{stats:?}");
    assert_eq!(sink.written.load(Ordering::SeqCst), 20);
}

#[tokio::test]
async fn a_full_buffer_drops_and_counts_without_blocking() {
    let rec = UsageRecorder::spawn(
        Arc::new(StuckSink),
        RecorderConfig {
            capacity: 100,
            batch_size: 10,
            ..RecorderConfig::default()
        },
    );
    let started = std::time::Instant::now();
    let accepted = (0..10_000).filter(|&i| rec.record(event(i))).count();
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(accepted <= 100 + 10, "accepted {accepted}");
    let stats = rec.stats();
    assert_eq!(stats.dropped as usize, 10_000 - accepted);
}

/// `verify_cached` answers exactly as `verify` whenever it answers, and leaves to `verify`
/// what needs the store (an uncached key) or a limiter or credit store.
#[tokio::test]
async fn the_cached_answer_is_the_full_answer() {
    use keyvault_core::{Clock, Credits, FakeClock, RateLimit};
    let clock = FakeClock::new(Utc::now());
    let store = Arc::new(MemoryStore::new());
    let kv = Keyvault::builder()
        .backend(store)
        .clock(Arc::new(clock.clone()))
        .build()
        .unwrap();
    let actor = Actor::library();
    let net: keyvault_core::ipnet::IpNet = "10.0.0.0/8".parse().unwrap();
    let mut keys = Vec::new();
    for (new, needs_backend) in [
        (NewKey::new("plain"), false),
        (NewKey::new("disabled").disabled(), false),
        (
            NewKey::new("expiring").expires_at(clock.now() + chrono::TimeDelta::hours(1)),
            false,
        ),
        (NewKey::new("allow-list").allow(net), false),
        (NewKey::new("scoped").scope("admin"), false),
        (NewKey::new("credits").credits(Credits::new(5)), true),
        (
            NewKey::new("limited").ratelimit(RateLimit::new("h", 100, 3_600_000).unwrap()),
            true,
        ),
    ] {
        let created = kv.create_key(new, &actor).await.unwrap();
        keys.push((created.key, needs_backend));
    }
    clock.advance(chrono::TimeDelta::hours(2)); // the expiring key has expired
    let unknown = ApiKey::generate(&Prefix::default());
    let token_like = ApiKey::generate(&Prefix::any("kvt").unwrap());
    let ip = Some("192.0.2.1".parse().unwrap());
    let scopes = ["read".to_owned()];
    for (key, needs_backend) in &keys {
        let req = VerifyRequest::new(key.expose()).ip(ip).scopes(&scopes);
        let now = std::time::Instant::now();
        assert!(kv.verify_cached(&req, now).is_none(), "not cached yet");
        let full = kv.verify(&req).await.unwrap();
        let hits = kv.cache_stats().hits;
        match kv.verify_cached(&req, std::time::Instant::now()) {
            Some(fast) => {
                assert!(!needs_backend, "{key:?} needs its limits checked");
                assert_eq!(kv.cache_stats().hits, hits + 1, "a hit answered is counted");
                let fast = fast.unwrap();
                assert_eq!(fast.outcome, full.outcome, "{key:?}");
                assert_eq!(fast.key.map(|k| k.id), full.key.map(|k| k.id));
                assert_eq!(fast.credits_remaining, full.credits_remaining);
                assert!(fast.ratelimits.is_empty() && full.ratelimits.is_empty());
            }
            None => {
                assert!(needs_backend, "{key:?} was cached and needs nothing else");
                // `verify` counts this lookup; a hit counted here too would count it twice.
                assert_eq!(
                    kv.cache_stats().hits,
                    hits,
                    "a hit not answered is not counted"
                );
            }
        }
    }
    let outcomes: Vec<Outcome> = keys[..5]
        .iter()
        .map(|(k, _)| {
            let req = VerifyRequest::new(k.expose()).ip(ip).scopes(&scopes);
            kv.verify_cached(&req, std::time::Instant::now())
                .unwrap()
                .unwrap()
                .outcome
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            Outcome::InsufficientPermissions,
            Outcome::Disabled,
            Outcome::Expired,
            Outcome::Forbidden,
            Outcome::InsufficientPermissions,
        ]
    );
    // Texts that are not keys, and a token, are refused without a store.
    for text in ["", "kv_short", token_like.expose()] {
        let v = kv
            .verify_cached(&VerifyRequest::new(text), std::time::Instant::now())
            .unwrap()
            .unwrap();
        assert_eq!(v.outcome, Outcome::NotFound, "{text:?}");
    }
    // An unknown key is remembered as unknown once the store was asked.
    let req = VerifyRequest::new(unknown.expose());
    assert!(kv.verify_cached(&req, std::time::Instant::now()).is_none());
    assert_eq!(kv.verify(&req).await.unwrap().outcome, Outcome::NotFound);
    let cached = kv
        .verify_cached(&req, std::time::Instant::now())
        .unwrap()
        .unwrap();
    assert_eq!(cached.outcome, Outcome::NotFound);
    // A cost that is not a credit amount is refused as `verify` refuses it.
    let bad_cost = VerifyRequest::new(keys[0].0.expose()).cost(u64::MAX);
    assert!(
        kv.verify_cached(&bad_cost, std::time::Instant::now())
            .unwrap()
            .is_err()
    );
    assert!(kv.verify(&bad_cost).await.is_err());
}

#[tokio::test]
async fn limit_states_read_a_keys_buckets_without_taking_a_token() {
    let kv = Keyvault::in_memory();
    let mut new = NewKey::new("limited");
    new.ratelimits = vec![
        keyvault_core::RateLimit::new("per_minute", 5, 60_000).unwrap(),
        keyvault_core::RateLimit::new("per_day", 100, 86_400_000).unwrap(),
    ];
    let created = kv.create_key(new, &Actor::library()).await.unwrap();
    for _ in 0..2 {
        let v = kv
            .verify(&VerifyRequest::new(created.key.expose()))
            .await
            .unwrap();
        assert!(v.is_valid());
    }
    for _ in 0..3 {
        let states = kv.limit_states(&created.record).await.unwrap();
        let left: Vec<_> = states
            .iter()
            .map(|s| (s.name.as_str(), s.remaining))
            .collect();
        assert_eq!(left, [("per_minute", 3), ("per_day", 98)]);
    }
    let unlimited = kv
        .create_key(NewKey::new("free"), &Actor::library())
        .await
        .unwrap();
    assert!(kv.limit_states(&unlimited.record).await.unwrap().is_empty());
}

/// A sink that refuses every write until it is told to answer, like a database that is down.
#[derive(Debug, Default)]
struct DownSink {
    up: std::sync::atomic::AtomicBool,
    inner: MemoryStore,
}

#[async_trait]
impl UsageSink for DownSink {
    async fn write(&self, events: &[UsageEvent]) -> Result<()> {
        if !self.up.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(keyvault_core::Error::backend("usage", "database down"));
        }
        self.inner.write(events).await
    }
}

/// An outage longer than a batch's attempts loses nothing under the buffer's bound: the
/// writer holds what it could not write and writes it once the sink answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_held_through_an_outage_and_written_after_it() {
    let sink = Arc::new(DownSink::default());
    let rec = UsageRecorder::spawn(
        sink.clone(),
        RecorderConfig {
            capacity: 1_000,
            batch_size: 50,
            flush_interval: Duration::from_millis(20),
            max_attempts: 2,
        },
    );
    for i in 0..500 {
        assert!(rec.record(event(i)));
    }
    // Several rounds of failed attempts.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(rec.stats().written, 0);
    assert_eq!(rec.stats().failed, 0, "held, not given up");
    sink.up.store(true, std::sync::atomic::Ordering::SeqCst);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while sink.inner.usage_len() < 500 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        sink.inner.usage_len(),
        500,
        "every event written after the outage"
    );
    let stats = rec.stats();
    assert_eq!((stats.written, stats.failed, stats.dropped), (500, 0, 0));
    rec.shutdown().await;
}

/// A sink still down at shutdown: what could not be written is counted as failed.
#[tokio::test]
async fn events_the_sink_still_refuses_at_shutdown_are_counted_as_failed() {
    let sink = Arc::new(DownSink::default());
    let rec = UsageRecorder::spawn(
        sink,
        RecorderConfig {
            capacity: 100,
            batch_size: 10,
            flush_interval: Duration::from_millis(20),
            max_attempts: 1,
        },
    );
    for i in 0..30 {
        assert!(rec.record(event(i)));
    }
    rec.shutdown().await;
    let stats = rec.stats();
    assert_eq!((stats.written, stats.failed), (0, 30));
}
