//! [`MemoryUsage`]: usage statistics in memory as per-minute rollups.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState},
    sync::{Arc, Mutex},
};

use async_trait::async_trait;
use chrono::{DateTime, TimeDelta, Utc};

use super::MemoryStore;
use crate::{
    error::Result,
    model::KeyId,
    usage::{
        Label, LatencyHistogram, OverviewBuilder, RollupRanges, StatsOverview, StatsQuery,
        UNKNOWN_PROVIDER, UsageEvent, UsageQuery, UsageSink,
    },
};

/// How many recent request ids are remembered to refuse duplicates, by default. An in-memory
/// write never fails, so a recorder never retries one; duplicates come only from a caller
/// writing an event twice soon after. A window this size stays in the CPU's cache.
pub const DEFAULT_DEDUP_WINDOW: usize = 1 << 13;
/// How long minutes are kept.
const RETENTION: TimeDelta = TimeDelta::days(8);

#[derive(Debug, Default)]
struct Agg {
    calls: u64,
    ok: u64,
    latency: LatencyHistogram,
}

/// provider → key → counts, for one minute. Providers and key ids are chosen by the
/// application and its administrators, not by callers, so these maps use FNV rather than
/// SipHash, which would cost more than the rest of the per-event work.
type Minute = HashMap<Label, HashMap<Option<KeyId>, Agg, Fnv>, Fnv>;

type Fnv = fnv::FnvBuildHasher;

#[derive(Debug, Default)]
struct State {
    /// Keyed by minutes since the Unix epoch.
    minutes: BTreeMap<i64, Minute>,
    /// Hashes of recent request ids in two generations: new ids go into `current`; when it
    /// holds a window's worth, `previous` is emptied and the two swap. No id is removed one by
    /// one (a removal per event cost as much as the rest of the write).
    current: HashSet<u64, BuildHasherDefault<Prehashed>>,
    previous: HashSet<u64, BuildHasherDefault<Prehashed>>,
}

impl State {
    /// Adds a run's counts to its minute, provider and key.
    fn add(&mut self, minute: i64, provider: &str, key: Option<KeyId>, run: Agg) {
        let by_provider = self.minutes.entry(minute).or_default();
        let by_key = match by_provider.get_mut(provider) {
            Some(m) => m,
            None => by_provider.entry(Label::from(provider)).or_default(),
        };
        let agg = by_key.entry(key).or_default();
        agg.calls += run.calls;
        agg.ok += run.ok;
        agg.latency.merge(&run.latency);
    }
}

/// Usage statistics in memory, per minute, provider and key: the bounded choice for a
/// long-running process. [`MemoryStore`](super::MemoryStore)'s usage keeps every event (the
/// reference semantics, exact to the microsecond) and so grows by hundreds of bytes per
/// request; these rollups cost a few map updates per event, and their size depends on minutes ×
/// providers × keys, not on traffic.
///
/// Statistics have a resolution of one minute (a minute counts in a range when it starts in
/// it), minutes older than eight days are dropped, and a request id written again is counted
/// once as long as it is among the last [`DEFAULT_DEDUP_WINDOW`] events written (older ones
/// may be recognised too, up to twice as many; see
/// [`with_dedup_window`](Self::with_dedup_window)). Keys' `last_used_at` is moved on the
/// key store given to [`with_key_store`](Self::with_key_store), once per run of a key's events.
///
/// ```
/// # use std::sync::Arc;
/// # use keyvault_core::{UsageEvent, UsageQuery, UsageRecorder, RecorderConfig, StatsQuery, memory::MemoryUsage};
/// # async fn demo() -> keyvault_core::Result<()> {
/// let usage = Arc::new(MemoryUsage::new());
/// let recorder = UsageRecorder::spawn(usage.clone(), RecorderConfig::default());
/// recorder.record(UsageEvent { request_id: "r1".into(), key_id: None, owner_id: None,
///     ts: chrono::Utc::now() - chrono::TimeDelta::minutes(2), provider: Some("demo".into()),
///     route: None, method: None, status: 200, latency_us: 900, outcome: None, cost: 1 });
/// recorder.shutdown().await;
/// assert_eq!(usage.overview(&StatsQuery::last_24h()).await?.calls, 1);
/// # Ok(()) }
/// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(demo()).unwrap();
/// ```
#[derive(Debug)]
pub struct MemoryUsage {
    state: Mutex<State>,
    /// Random per process, so that which ids share a hash cannot be known in advance.
    seed: u64,
    window: usize,
    /// Where keys' `last_used_at` is moved, if anywhere.
    keys: Option<Arc<MemoryStore>>,
}

impl Default for MemoryUsage {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryUsage {
    /// Empty rollups that recognise a repeat among the last [`DEFAULT_DEDUP_WINDOW`] events.
    pub fn new() -> Self {
        Self::with_dedup_window(DEFAULT_DEDUP_WINDOW)
    }

    /// Empty rollups that recognise a repeated request id among the last `window` events
    /// written (at least one; older ones may be recognised too, up to twice as many); its
    /// memory is about 20 bytes per event of the window.
    pub fn with_dedup_window(window: usize) -> Self {
        let window = window.max(1);
        Self {
            state: Mutex::new(State {
                // Sized once, so that the index never resizes while requests wait.
                current: HashSet::with_capacity_and_hasher(window, BuildHasherDefault::default()),
                previous: HashSet::with_capacity_and_hasher(window, BuildHasherDefault::default()),
                ..State::default()
            }),
            seed: RandomState::new().build_hasher().finish(),
            window,
            keys: None,
        }
    }

    /// Also moves the `last_used_at` of the keys in `store` (the store the verifier reads)
    /// to their latest event written.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use keyvault_core::{Actor, Keyvault, NewKey, UsageEvent, UsageSink, memory::{MemoryStore, MemoryUsage}};
    /// # async fn demo() -> keyvault_core::Result<()> {
    /// let store = Arc::new(MemoryStore::new());
    /// let kv = Keyvault::builder().backend(store.clone()).build()?;
    /// let key = kv.create_key(NewKey::new("k"), &Actor::library()).await?.record;
    /// let usage = MemoryUsage::new().with_key_store(store);
    /// let ts = chrono::Utc::now();
    /// usage.write(&[UsageEvent { request_id: "r1".into(), key_id: Some(key.id), owner_id: None,
    ///     ts, provider: None, route: None, method: None, status: 200, latency_us: 900,
    ///     outcome: None, cost: 1 }]).await?;
    /// assert_eq!(kv.get_key(key.id).await?.last_used_at, Some(ts));
    /// # Ok(()) }
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(demo()).unwrap();
    /// ```
    pub fn with_key_store(mut self, store: Arc<MemoryStore>) -> Self {
        self.keys = Some(store);
        self
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The set's values are already keyed hashes: hashing them again would only cost time.
#[derive(Debug, Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

/// A seeded 64-bit hash of a request id, a word at a time: generated ids are 23 bytes, for which
/// SipHash costs several times as much. Each step is a bijection of the state for a fixed
/// word, so two ids of one length that differ in a single word never collide.
fn id_hash(seed: u64, id: &str) -> u64 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let bytes = id.as_bytes();
    let mut h = seed ^ (bytes.len() as u64).wrapping_mul(K);
    let mut words = bytes.chunks_exact(8);
    for w in &mut words {
        let mut b = [0u8; 8];
        b.copy_from_slice(w);
        h = (h ^ u64::from_le_bytes(b)).wrapping_mul(K).rotate_left(29);
    }
    let rest = words.remainder();
    if !rest.is_empty() {
        let mut b = [0u8; 8];
        b[..rest.len()].copy_from_slice(rest);
        h = (h ^ u64::from_le_bytes(b)).wrapping_mul(K).rotate_left(29);
    }
    // murmur3's finaliser: spreads every input bit over the output.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// Minutes since the Unix epoch (integer maths: this runs for every event).
fn minute_of(ts: DateTime<Utc>) -> i64 {
    ts.timestamp().div_euclid(60)
}

fn minute_start(m: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(m.saturating_mul(60), 0).unwrap_or_default()
}

#[async_trait]
impl UsageSink for MemoryUsage {
    async fn write(&self, events: &[UsageEvent]) -> Result<()> {
        let mut st = self.state();
        // Events of one batch mostly share their minute, provider and key: each run of them
        // is counted apart and added to the maps once.
        let mut run: Option<(i64, &str, Option<KeyId>, Agg)> = None;
        // The latest event of each run of a key, when keys' `last_used_at` is kept.
        let mut used: Vec<(KeyId, DateTime<Utc>)> = Vec::new();
        let mut used_at = |key: Option<KeyId>, ts: DateTime<Utc>| {
            if let (Some(k), Some(_)) = (key, &self.keys) {
                match used.last_mut() {
                    Some((last, t)) if *last == k => *t = (*t).max(ts),
                    _ => used.push((k, ts)),
                }
            }
        };
        for e in events {
            let id = id_hash(self.seed, &e.request_id);
            if st.previous.contains(&id) || !st.current.insert(id) {
                continue;
            }
            if st.current.len() >= self.window {
                let st = &mut *st;
                std::mem::swap(&mut st.current, &mut st.previous);
                st.current.clear();
            }
            let minute = minute_of(e.ts);
            let provider = e.provider.as_deref().unwrap_or(UNKNOWN_PROVIDER);
            let agg = match &mut run {
                Some((m, p, k, agg)) if *m == minute && *p == provider && *k == e.key_id => agg,
                _ => {
                    if let Some((m, p, k, agg)) = run.take() {
                        st.add(m, p, k, agg);
                    }
                    &mut run.insert((minute, provider, e.key_id, Agg::default())).3
                }
            };
            agg.calls += 1;
            agg.ok += u64::from(e.is_success());
            agg.latency.record(e.latency_us);
            used_at(e.key_id, e.ts);
        }
        if let Some((m, p, k, agg)) = run {
            st.add(m, p, k, agg);
        }
        if let Some(&last) = st.minutes.keys().next_back() {
            let keep_from = last - RETENTION.num_minutes();
            if st
                .minutes
                .keys()
                .next()
                .is_some_and(|&first| first < keep_from)
            {
                st.minutes = st.minutes.split_off(&keep_from);
            }
        }
        drop(st);
        if let Some(keys) = &self.keys {
            keys.touch(&used);
        }
        Ok(())
    }
}

#[async_trait]
impl UsageQuery for MemoryUsage {
    async fn overview(&self, q: &StatsQuery) -> Result<StatsOverview> {
        q.validate()?;
        let st = self.state();
        let mut out = OverviewBuilder::new(q);
        // Minutes are the resolution: a minute belongs to the range when it starts in it.
        let minutes = RollupRanges::split(q.from, q.to).minute_starts();
        for (&m, by_provider) in st
            .minutes
            .range(minute_of(minutes.start)..minute_of(minutes.end))
        {
            let at = minute_start(m);
            for (provider, by_key) in by_provider {
                if q.provider
                    .as_ref()
                    .is_some_and(|p| p.as_str() != provider.as_str())
                {
                    continue;
                }
                for (key, agg) in by_key {
                    if q.key_id.is_some_and(|k| *key != Some(k)) {
                        continue;
                    }
                    out.add(provider.as_str(), at, agg.calls, agg.ok);
                    out.latency().merge(&agg.latency);
                }
            }
        }
        Ok(out.finish())
    }
}

#[cfg(test)]
mod tests {
    use crate::{Actor, Keyvault, NewKey, StatsQuery, memory::MemoryStore};

    use super::*;

    /// `last_used_at` moves to the latest event of each key, whatever order events and
    /// batches come in, and never back; keys without events and ids without keys are left
    /// alone; without a key store nothing is touched.
    #[tokio::test]
    async fn keys_last_use_follows_their_latest_event() {
        let store = Arc::new(MemoryStore::new());
        let kv = Keyvault::builder().backend(store.clone()).build().unwrap();
        let mut ids = Vec::new();
        for name in ["a", "b", "idle"] {
            let c = kv
                .create_key(NewKey::new(name), &Actor::library())
                .await
                .unwrap();
            ids.push(c.record.id);
        }
        let (a, b, idle) = (ids[0], ids[1], ids[2]);
        let t0 = Utc::now() - TimeDelta::minutes(30);
        let at = |s: i64| t0 + TimeDelta::seconds(s);
        let ev = |i: usize, key: KeyId, s: i64| UsageEvent {
            ts: at(s),
            ..event(i, Some("p"), Some(key), 200)
        };
        let plain = MemoryUsage::new();
        plain.write(&[ev(0, a, 500)]).await.unwrap();
        assert_eq!(kv.get_key(a).await.unwrap().last_used_at, None);

        let usage = MemoryUsage::new().with_key_store(store.clone());
        // Runs of one key, interleaved, out of order; an id no key has.
        usage
            .write(&[
                ev(1, a, 10),
                ev(2, a, 40),
                ev(3, a, 20),
                ev(4, b, 5),
                ev(5, a, 30),
                ev(6, KeyId::new(), 99),
                ev(7, b, 7),
                ev(8, b, 6),
            ])
            .await
            .unwrap();
        assert_eq!(kv.get_key(a).await.unwrap().last_used_at, Some(at(40)));
        assert_eq!(kv.get_key(b).await.unwrap().last_used_at, Some(at(7)));
        // A later batch with older events does not move it back; a newer one moves it on.
        usage.write(&[ev(9, a, 1), ev(10, b, 60)]).await.unwrap();
        assert_eq!(kv.get_key(a).await.unwrap().last_used_at, Some(at(40)));
        assert_eq!(kv.get_key(b).await.unwrap().last_used_at, Some(at(60)));
        // A repeated request id is not an event again.
        usage.write(&[ev(1, a, 300)]).await.unwrap();
        assert_eq!(kv.get_key(a).await.unwrap().last_used_at, Some(at(40)));
        assert_eq!(kv.get_key(idle).await.unwrap().last_used_at, None);
    }

    fn event(i: usize, provider: Option<&str>, key: Option<KeyId>, status: u16) -> UsageEvent {
        UsageEvent {
            request_id: format!("r{i}").into(),
            key_id: key,
            owner_id: None,
            ts: Utc::now() - TimeDelta::minutes((i % 30) as i64 + 2),
            provider: provider.map(Into::into),
            route: Some("/v1/hello".into()),
            method: Some("GET".into()),
            status,
            latency_us: 100 + (i as u64 * 37) % 5_000,
            outcome: None,
            cost: 1,
        }
    }

    /// Ids as the layer makes them (a process prefix, then a counter) never share a hash,
    /// so no event is mistaken for a duplicate; a seed changes every hash.
    #[test]
    fn request_id_hashes_are_distinct() {
        let seed = 0x1234_5678_9abc_def0;
        let ids = (0u64..100_000).map(|n| format!("0123456789abcdef-{n:016x}"));
        let hashes: HashSet<u64> = ids.map(|id| id_hash(seed, &id)).collect();
        assert_eq!(hashes.len(), 100_000);
        assert_ne!(id_hash(seed, "r1"), id_hash(seed ^ 1, "r1"));
        assert_ne!(id_hash(seed, "r1"), id_hash(seed, "r1\0"));
    }

    /// A repeat is counted once while its id is among the last `window` events written; the
    /// window is what bounds the memory of ids.
    #[tokio::test]
    async fn repeats_within_the_window_count_once() {
        let usage = MemoryUsage::with_dedup_window(4);
        let batch: Vec<UsageEvent> = (0..4).map(|i| event(i, Some("demo"), None, 200)).collect();
        usage.write(&batch).await.unwrap();
        usage.write(&batch[..1]).await.unwrap();
        let q = StatsQuery::last_24h();
        assert_eq!(usage.overview(&q).await.unwrap().calls, 4);
        let later: Vec<UsageEvent> = (4..8).map(|i| event(i, Some("demo"), None, 200)).collect();
        usage.write(&later).await.unwrap();
        // r0 left the window: written again, it counts.
        usage.write(&batch[..1]).await.unwrap();
        assert_eq!(usage.overview(&q).await.unwrap().calls, 9);
    }

    /// Answers as the reference memory backend does, queries at whole minutes.
    #[tokio::test]
    async fn answers_like_the_reference_backend() {
        let (a, b) = (KeyId::new(), KeyId::new());
        let events: Vec<UsageEvent> = (0..500)
            .map(|i| {
                let provider = [Some("openai"), Some("demo"), None][i % 3];
                let key = [Some(a), Some(b), None][i % 5 % 3];
                event(i, provider, key, if i % 7 == 0 { 503 } else { 200 })
            })
            .collect();
        let rollup = MemoryUsage::new();
        let reference = MemoryStore::new();
        for chunk in events.chunks(64) {
            rollup.write(chunk).await.unwrap();
            reference.write(chunk).await.unwrap();
        }
        // Written twice: counted once.
        rollup.write(&events[..10]).await.unwrap();
        let to = minute_start(minute_of(Utc::now()));
        let base = StatsQuery {
            from: to - TimeDelta::hours(1),
            to,
            key_id: None,
            provider: None,
            granularity: None,
        };
        for q in [
            base.clone(),
            StatsQuery {
                from: to - TimeDelta::minutes(10),
                ..base.clone()
            },
            StatsQuery {
                key_id: Some(a),
                ..base.clone()
            },
            StatsQuery {
                provider: Some("openai".into()),
                ..base.clone()
            },
            StatsQuery {
                provider: Some(UNKNOWN_PROVIDER.into()),
                ..base.clone()
            },
        ] {
            let got = rollup.overview(&q).await.unwrap();
            let want = reference.overview(&q).await.unwrap();
            if q.provider.as_deref() == Some(UNKNOWN_PROVIDER) {
                // The reference filters on the stored label, which is absent here.
                assert_eq!(want.calls, 0);
                assert!(got.calls > 0);
                continue;
            }
            assert_eq!(got, want, "{q:?}");
        }
        assert_eq!(rollup.overview(&base).await.unwrap().calls, 500);
    }
}
