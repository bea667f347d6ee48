//! Usage events, their sinks and the statistics read back from them.
//!
//! - `event`: what is recorded per request;
//! - `histogram`: the latency buckets every backend stores;
//! - `stats`: statistics queries, their answer and the one builder of it;
//! - `rollup`: how stores with minute and hour rollups read a range.

mod event;
mod histogram;
mod rollup;
mod stats;
mod window;

use std::fmt;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

pub use self::{
    event::{Label, RequestId, UsageEvent},
    histogram::{LATENCY_BUCKETS, LatencyHistogram, Percentiles},
    rollup::{ALL_KEYS_ROLLUP, RollupRanges, Span},
    stats::{
        Granularity, OverviewBuilder, ProviderStats, StatsOverview, StatsQuery, TimePoint,
        UNKNOWN_PROVIDER, success_rate,
    },
    window::{KeyWindow, KeyWindows, SecondCounts},
};
use crate::{KeyId, error::Result};

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

    /// Usage retention: removes the raw events and minute rollups older than `before` (hourly
    /// rollups stay, so statistics over whole hours are unchanged). A batch retried after this
    /// with events older than `before` would be counted again: keep at least a day. The
    /// default answers that the store cannot.
    async fn purge_before(&self, before: DateTime<Utc>) -> Result<Purged> {
        let _ = before;
        Err(crate::Error::backend(
            "usage",
            "this store does not purge usage",
        ))
    }
}

/// What a usage purge removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Purged {
    /// Raw events.
    pub events: u64,
    /// Minute rollup rows.
    pub minute_rollups: u64,
}

/// Statistics over stored usage.
#[async_trait]
pub trait UsageQuery: Send + Sync + fmt::Debug {
    /// CONTRACT §4's `/v1/stats/overview`.
    async fn overview(&self, query: &StatsQuery) -> Result<StatsOverview>;

    /// Calls of each of `keys` in `query`'s range (its `key_id` is ignored; its provider
    /// filter applies); a key without calls may be absent. The default asks
    /// [`UsageQuery::overview`] once per key; stores override it with one query.
    async fn calls_by_key(
        &self,
        query: &StatsQuery,
        keys: &[KeyId],
    ) -> Result<std::collections::HashMap<KeyId, u64>> {
        let mut out = std::collections::HashMap::with_capacity(keys.len());
        for &key in keys {
            let q = StatsQuery {
                key_id: Some(key),
                ..query.clone()
            };
            out.insert(key, self.overview(&q).await?.calls);
        }
        Ok(out)
    }

    /// Each key's calls in `[from, to)` (only `key`'s, when given), from the raw events
    /// through their time index: for short windows (alert evaluation). The default answers
    /// that the store cannot.
    async fn key_windows(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        key: Option<KeyId>,
    ) -> Result<KeyWindows> {
        let _ = (from, to, key);
        Err(crate::Error::backend(
            "usage",
            "this store does not read windows of raw events",
        ))
    }

    /// Calls per whole second of `[from, to)` (Unix seconds as keys; seconds without calls
    /// absent), from the raw events: the live statistics. The default answers that the
    /// store cannot.
    async fn per_second(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<std::collections::BTreeMap<i64, SecondCounts>> {
        let _ = (from, to);
        Err(crate::Error::backend(
            "usage",
            "this store does not read seconds of raw events",
        ))
    }
}
