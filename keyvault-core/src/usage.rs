//! Usage events, their sinks and the statistics read back from them.

use std::{
    borrow::Borrow,
    collections::BTreeMap,
    fmt,
    ops::Deref,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
};

use async_trait::async_trait;
use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use smol_str::SmolStr;

use crate::{
    error::{InvalidInput, Result},
    model::KeyId,
    outcome::Outcome,
};

/// One request (or one verification) as seen by usage statistics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageEvent {
    /// Unique per request: a sink counts an id once, however often it is written.
    pub request_id: RequestId,
    /// The key used, when one was found.
    pub key_id: Option<KeyId>,
    /// The key's owner.
    pub owner_id: Option<String>,
    /// When the request arrived.
    pub ts: DateTime<Utc>,
    /// Provider label (`openai`, `demo`…).
    pub provider: Option<Label>,
    /// Route template (`/v1/chat`), never the raw path.
    pub route: Option<Label>,
    /// HTTP method.
    pub method: Option<Label>,
    /// Response status.
    pub status: u16,
    /// Response time in microseconds.
    pub latency_us: u64,
    /// Verification outcome.
    pub outcome: Option<Outcome>,
    /// Credits spent.
    pub cost: u64,
}

impl UsageEvent {
    /// Success for statistics: a status in 200–399.
    pub fn is_success(&self) -> bool {
        (200..400).contains(&self.status)
    }
}

/// Defines an immutable text type over [`SmolStr`]: text of up to 23 bytes is kept inline, so
/// making, cloning and dropping one neither allocates nor touches a shared counter (longer
/// text shares one allocation between clones).
macro_rules! text_type {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(SmolStr);

        impl $name {
            /// The text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl Deref for $name {
            type Target = str;

            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self(SmolStr::new(s))
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                Self(SmolStr::from(s))
            }
        }

        impl From<Arc<str>> for $name {
            fn from(s: Arc<str>) -> Self {
                Self(SmolStr::from(&*s))
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(self.as_str(), f)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                String::deserialize(d).map(Self::from)
            }
        }
    };
}

text_type! {
    /// An immutable string for the few distinct values a usage event repeats on every request
    /// (provider, route template, method): short ones (up to 23 bytes) are copied inline, longer
    /// ones share one allocation, so a clone never allocates.
    ///
    /// ```
    /// # use keyvault_core::Label;
    /// let demo = Label::from("demo");
    /// let again = demo.clone(); // no allocation
    /// assert_eq!(again, "demo");
    /// assert_eq!(again.as_str(), "demo");
    /// ```
    Label
}

text_type! {
    /// A request's id, unique per request: sinks count an id once however often it is written.
    /// Ids of up to 23 bytes (those [`RequestId::generate`] makes) are kept inline, so an id
    /// per request costs no allocation.
    ///
    /// ```
    /// # use keyvault_core::RequestId;
    /// let given = RequestId::from("req-1");
    /// assert_eq!(given, "req-1");
    /// let (a, b) = (RequestId::generate(), RequestId::generate());
    /// assert_ne!(a, b);
    /// assert_eq!(a.len(), 23);
    /// ```
    RequestId
}

impl RequestId {
    /// A new id, unique across processes: 50 random bits chosen once per process, then a
    /// 60-bit counter that starts at a random value, both in lowercase base32
    /// (`<10 characters>-<12 characters>`). Cheaper than a UUID per request; sinks only need
    /// uniqueness.
    pub fn generate() -> Self {
        // Digits first: ids sort by counter within a process.
        const ALPHABET: &[u8; 32] = b"0123456789abcdefghijklmnopqrstuv";
        const COUNTER_BITS: u32 = 60;
        static PROCESS: OnceLock<[u8; 10]> = OnceLock::new();
        static COUNTER: OnceLock<AtomicU64> = OnceLock::new();
        let process = PROCESS.get_or_init(|| {
            let bits = rand::random::<u64>();
            std::array::from_fn(|i| ALPHABET[((bits >> (5 * i)) & 31) as usize])
        });
        let n = COUNTER
            .get_or_init(|| AtomicU64::new(rand::random::<u64>()))
            .fetch_add(1, Ordering::Relaxed)
            & ((1 << COUNTER_BITS) - 1);
        let mut id = [b'-'; 23];
        id[..10].copy_from_slice(process);
        for (i, c) in id[11..].iter_mut().enumerate() {
            *c = ALPHABET[((n >> (5 * (11 - i))) & 31) as usize];
        }
        // Only ASCII was written.
        Self(SmolStr::new(std::str::from_utf8(&id).unwrap_or_default()))
    }
}

/// Where usage events go. Writing the same `request_id` twice counts it once (a batch retried
/// after a timeout must not double-count).
///
/// ```
/// # use keyvault_core::{UsageSink, UsageQuery, UsageEvent, StatsQuery, memory::MemoryStore};
/// # async fn demo() -> keyvault_core::Result<()> {
/// let usage = MemoryStore::new();
/// let ev = UsageEvent { request_id: "r1".into(), key_id: None, owner_id: None,
///     ts: chrono::Utc::now(), provider: Some("demo".into()), route: None, method: None,
///     status: 200, latency_us: 1_500, outcome: None, cost: 1 };
/// usage.write(&[ev.clone(), ev]).await?;
/// let stats = usage.overview(&StatsQuery::last_24h()).await?;
/// assert_eq!(stats.calls, 1);
/// # Ok(()) }
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(demo()).unwrap();
/// ```
#[async_trait]
pub trait UsageSink: Send + Sync + fmt::Debug {
    /// Stores a batch, idempotently on `request_id`.
    async fn write(&self, events: &[UsageEvent]) -> Result<()>;
}

/// Statistics over stored usage.
#[async_trait]
pub trait UsageQuery: Send + Sync + fmt::Debug {
    /// CONTRACT §4's `/v1/stats/overview`.
    async fn overview(&self, query: &StatsQuery) -> Result<StatsOverview>;
}

/// A statistics query.
#[derive(Debug, Clone)]
pub struct StatsQuery {
    /// Start (inclusive).
    pub from: DateTime<Utc>,
    /// End (exclusive).
    pub to: DateTime<Utc>,
    /// Only this key.
    pub key_id: Option<KeyId>,
    /// Only this provider.
    pub provider: Option<String>,
}

impl StatsQuery {
    /// The last 24 hours.
    pub fn last_24h() -> Self {
        let to = Utc::now();
        Self {
            from: to - TimeDelta::hours(24),
            to,
            key_id: None,
            provider: None,
        }
    }

    /// Checks that `from` is before `to` and the range is at most 400 days.
    pub fn validate(&self) -> Result<(), InvalidInput> {
        if self.from >= self.to {
            return Err(InvalidInput::new("from", "must be before to"));
        }
        if self.to - self.from > TimeDelta::days(400) {
            return Err(InvalidInput::new(
                "from",
                "the range must be at most 400 days",
            ));
        }
        Ok(())
    }

    /// The time-series step: the smallest of 1 m, 5 m, 15 m, 1 h, 6 h, 1 d giving ≤ 300 points.
    pub fn step(&self) -> TimeDelta {
        let span = self.to - self.from;
        [1, 5, 15, 60, 360, 1_440]
            .into_iter()
            .map(TimeDelta::minutes)
            .find(|s| span.num_seconds() / s.num_seconds().max(1) <= 300)
            .unwrap_or(TimeDelta::days(1))
    }

    /// The start of the step that holds `ts`.
    pub fn bucket_of(&self, ts: DateTime<Utc>) -> DateTime<Utc> {
        ts.duration_trunc(self.step()).unwrap_or(ts)
    }
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct Percentiles {
    /// Median.
    pub p50: Option<f64>,
    /// 95th percentile.
    pub p95: Option<f64>,
    /// 99th percentile.
    pub p99: Option<f64>,
}

/// Calls and success rate of one provider.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProviderStats {
    /// The provider label (`"unknown"` when none was set).
    pub provider: String,
    /// Calls.
    pub calls: u64,
    /// Fraction of successful calls.
    pub success_rate: Option<f64>,
}

/// One point of the time series.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimePoint {
    /// Start of the step.
    pub ts: DateTime<Utc>,
    /// Calls.
    pub calls: u64,
    /// Calls that were not successful.
    pub errors: u64,
}

/// CONTRACT §4's statistics overview.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct StatsOverview {
    /// Calls in the range.
    pub calls: u64,
    /// Fraction of calls with a status in 200–399 (None without calls).
    pub success_rate: Option<f64>,
    /// Latency percentiles.
    pub latency_ms: Percentiles,
    /// Per provider, most calls first.
    pub by_provider: Vec<ProviderStats>,
    /// Calls and errors per step.
    pub timeseries: Vec<TimePoint>,
}

/// Provider label for events that carry none.
pub const UNKNOWN_PROVIDER: &str = "unknown";

/// A latency histogram with buckets at most 10 % wide, shared by every backend so that
/// rollups stored anywhere merge and answer alike.
///
/// Bucket 0 holds latencies under 100 µs; bucket `i ≥ 1` holds `[100·1.1^(i−1), 100·1.1^i)` µs;
/// the last bucket (200) holds everything from about 1.9 hours up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LatencyHistogram {
    /// Sorted by bucket. Latencies cluster in a few buckets, so a search and (rarely) an
    /// insert into a short vector cost less per event than a tree's node walk.
    counts: Vec<(u16, u64)>,
}

/// Number of histogram buckets.
pub const LATENCY_BUCKETS: u16 = 201;

impl LatencyHistogram {
    /// The bucket of a latency.
    pub fn bucket_of(latency_us: u64) -> u16 {
        // The bucket formula is monotonic, so its lower bounds, computed once, answer it
        // exactly with a binary search instead of a logarithm per event.
        static LOWER_BOUNDS: OnceLock<Vec<u64>> = OnceLock::new();
        let bounds = LOWER_BOUNDS.get_or_init(|| {
            (1..LATENCY_BUCKETS)
                .map(|b| {
                    // The smallest latency whose bucket is at least `b`.
                    let (mut lo, mut hi) = (0u64, u64::MAX);
                    while lo < hi {
                        let mid = lo + (hi - lo) / 2;
                        if Self::bucket_by_formula(mid) >= b {
                            hi = mid;
                        } else {
                            lo = mid + 1;
                        }
                    }
                    lo
                })
                .collect()
        });
        // Buckets 1..=200 start at bounds[0..200].
        bounds.partition_point(|&start| start <= latency_us) as u16
    }

    /// The definition of the buckets.
    fn bucket_by_formula(latency_us: u64) -> u16 {
        if latency_us < 100 {
            return 0;
        }
        let i = ((latency_us as f64 / 100.0).ln() / 1.1f64.ln()).floor() as i64 + 1;
        i.clamp(1, i64::from(LATENCY_BUCKETS - 1)) as u16
    }

    /// The value reported for a bucket, in ms: its geometric middle (within 5 % of any
    /// latency in it).
    pub fn representative_ms(bucket: u16) -> f64 {
        if bucket == 0 {
            return 0.05;
        }
        let lo = 100.0 * 1.1f64.powi(i32::from(bucket) - 1);
        lo * 1.1f64.sqrt() / 1_000.0
    }

    /// Counts one latency.
    pub fn record(&mut self, latency_us: u64) {
        self.add(Self::bucket_of(latency_us), 1);
    }

    /// Adds `count` to a bucket (merging stored rollups).
    pub fn add(&mut self, bucket: u16, count: u64) {
        let bucket = bucket.min(LATENCY_BUCKETS - 1);
        match self.counts.binary_search_by_key(&bucket, |&(b, _)| b) {
            Ok(i) => self.counts[i].1 += count,
            Err(i) => self.counts.insert(i, (bucket, count)),
        }
    }

    /// Non-empty buckets and their counts.
    pub fn buckets(&self) -> impl Iterator<Item = (u16, u64)> + '_ {
        self.counts.iter().copied()
    }

    /// Total count.
    pub fn total(&self) -> u64 {
        self.counts.iter().map(|&(_, c)| c).sum()
    }

    /// The `q`-quantile in ms (`q` in [0, 1]), None when empty.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        let total = self.total();
        if total == 0 {
            return None;
        }
        // Nearest-rank: the smallest bucket holding at least ⌈q·n⌉ values.
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for &(b, c) in &self.counts {
            seen += c;
            if seen >= rank {
                return Some(Self::representative_ms(b));
            }
        }
        None
    }

    /// p50, p95 and p99.
    pub fn percentiles(&self) -> Percentiles {
        Percentiles {
            p50: self.quantile_ms(0.50),
            p95: self.quantile_ms(0.95),
            p99: self.quantile_ms(0.99),
        }
    }
}

/// Assembles a [`StatsOverview`] from counted calls: what every [`UsageQuery`] that counts
/// in process (raw events, rollup cells) does the same way.
#[derive(Debug, Clone, Default)]
pub struct OverviewBuilder {
    calls: u64,
    ok: u64,
    latency: LatencyHistogram,
    providers: std::collections::HashMap<String, (u64, u64)>,
    series: BTreeMap<DateTime<Utc>, (u64, u64)>,
}

impl OverviewBuilder {
    /// Counts `calls` calls (`ok` of them successful) of `provider` in the step starting at
    /// `step` (see [`StatsQuery::bucket_of`]).
    pub fn add(&mut self, provider: &str, step: DateTime<Utc>, calls: u64, ok: u64) {
        self.calls += calls;
        self.ok += ok;
        match self.providers.get_mut(provider) {
            Some(p) => {
                p.0 += calls;
                p.1 += ok;
            }
            None => {
                self.providers.insert(provider.to_owned(), (calls, ok));
            }
        }
        let s = self.series.entry(step).or_default();
        s.0 += calls;
        s.1 += calls - ok.min(calls);
    }

    /// The latency histogram the calls are added to.
    pub fn latency(&mut self) -> &mut LatencyHistogram {
        &mut self.latency
    }

    /// The overview: providers by most calls (then name), steps in time order.
    pub fn finish(self) -> StatsOverview {
        let mut by_provider: Vec<ProviderStats> = self
            .providers
            .into_iter()
            .map(|(provider, (calls, ok))| ProviderStats {
                provider,
                calls,
                success_rate: success_rate(ok, calls),
            })
            .collect();
        by_provider.sort_by(|a, b| b.calls.cmp(&a.calls).then(a.provider.cmp(&b.provider)));
        StatsOverview {
            calls: self.calls,
            success_rate: success_rate(self.ok, self.calls),
            latency_ms: self.latency.percentiles(),
            by_provider,
            timeseries: self
                .series
                .into_iter()
                .map(|(ts, (calls, errors))| TimePoint { ts, calls, errors })
                .collect(),
        }
    }
}

/// A fraction, or None for no calls.
pub fn success_rate(ok: u64, calls: u64) -> Option<f64> {
    (calls > 0).then(|| ok as f64 / calls as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_at_most_ten_percent_wide() {
        for us in [
            100u64, 150, 999, 1_000, 12_345, 250_000, 5_000_000, 60_000_000,
        ] {
            let b = LatencyHistogram::bucket_of(us);
            let rep = LatencyHistogram::representative_ms(b) * 1_000.0;
            let err = (rep - us as f64).abs() / us as f64;
            assert!(err <= 0.1, "{us} µs → bucket {b} → {rep} µs");
        }
        assert_eq!(LatencyHistogram::bucket_of(0), 0);
        assert_eq!(LatencyHistogram::bucket_of(u64::MAX), LATENCY_BUCKETS - 1);
    }

    /// The table answers exactly as the formula that defines the buckets (stored rollups
    /// depend on it): every latency up to 10 s, each bucket's edges, and a spread beyond.
    #[test]
    fn bucket_lookup_matches_the_formula() {
        let edges = (1..LATENCY_BUCKETS).flat_map(|b| {
            let lo = (100.0 * 1.1f64.powi(i32::from(b) - 1)) as u64;
            lo.saturating_sub(2)..lo.saturating_add(3)
        });
        let spread = (0..4_000u32).map(|i| (1.011f64.powi(i as i32)) as u64);
        for us in (0..10_000_000u64)
            .chain(edges)
            .chain(spread)
            .chain([u64::MAX])
        {
            assert_eq!(
                LatencyHistogram::bucket_of(us),
                LatencyHistogram::bucket_by_formula(us),
                "{us} µs"
            );
        }
    }

    #[test]
    fn quantiles_use_nearest_rank() {
        let mut h = LatencyHistogram::default();
        for ms in 1..=100u64 {
            h.record(ms * 1_000);
        }
        let p = h.percentiles();
        for (got, want) in [(p.p50, 50.0), (p.p95, 95.0), (p.p99, 99.0)] {
            let got = got.unwrap();
            assert!((got - want).abs() / want <= 0.1, "{got} vs {want}");
        }
        assert_eq!(LatencyHistogram::default().quantile_ms(0.5), None);
    }

    /// Counts merge per bucket whatever the order they arrive in, buckets come out in
    /// ascending order, and histograms built in different orders are equal.
    #[test]
    fn histograms_merge_per_bucket_in_any_order() {
        let adds: Vec<(u16, u64)> = (0..2_000u64)
            .map(|i| (((i * 7_919) % 230) as u16, i % 5 + 1))
            .collect();
        let mut forward = LatencyHistogram::default();
        let mut backward = LatencyHistogram::default();
        let mut reference = BTreeMap::<u16, u64>::new();
        for &(b, n) in &adds {
            forward.add(b, n);
            *reference.entry(b.min(LATENCY_BUCKETS - 1)).or_default() += n;
        }
        for &(b, n) in adds.iter().rev() {
            backward.add(b, n);
        }
        assert_eq!(forward, backward);
        assert_eq!(
            forward.buckets().collect::<Vec<_>>(),
            reference.into_iter().collect::<Vec<_>>()
        );
        assert_eq!(forward.total(), adds.iter().map(|&(_, n)| n).sum::<u64>());
    }

    #[test]
    fn generated_request_ids_are_distinct_short_and_share_the_process_part() {
        let ids: Vec<RequestId> = (0..10_000).map(|_| RequestId::generate()).collect();
        let distinct: std::collections::HashSet<&str> = ids.iter().map(|i| i.as_str()).collect();
        assert_eq!(distinct.len(), ids.len());
        for id in &ids {
            assert_eq!(id.len(), 23, "{id}");
            assert_eq!(id[..10], ids[0][..10], "one process part");
            assert_eq!(&id[10..11], "-");
            assert!(
                id.bytes()
                    .all(|b| b == b'-' || b.is_ascii_digit() || (b'a'..=b'v').contains(&b))
            );
        }
    }

    #[test]
    fn steps_keep_the_series_short() {
        let to = Utc::now();
        let q = |h| StatsQuery {
            from: to - TimeDelta::hours(h),
            to,
            key_id: None,
            provider: None,
        };
        assert_eq!(q(1).step(), TimeDelta::minutes(1));
        assert_eq!(q(24).step(), TimeDelta::minutes(5));
        assert_eq!(q(24 * 30).step(), TimeDelta::hours(6));
        assert!(q(0).validate().is_err());
    }
}
