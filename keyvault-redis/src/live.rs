//! [`LiveCounters`]: calls and errors per second and per minute for a real-time dashboard.

use std::{collections::HashMap, sync::Arc};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use keyvault_core::{KeyId, Outcome, Purged, UNKNOWN_PROVIDER, UsageEvent, UsageSink};

use crate::backend::RedisBackend;

/// Seconds kept (the per-second view shows the last minute).
const SECOND_TTL_S: i64 = 120;
/// Minutes kept (the per-minute view shows the last hour).
const MINUTE_TTL_S: i64 = 2 * 3_600;
/// Points in each view.
const POINTS: i64 = 60;

/// Whose counters to read.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LiveScope {
    /// Every call.
    All,
    /// The calls of one key.
    Key(KeyId),
    /// The calls of one provider label.
    Provider(String),
}

impl LiveScope {
    fn tag(&self) -> String {
        match self {
            LiveScope::All => "all".to_owned(),
            LiveScope::Key(id) => format!("key:{id}"),
            LiveScope::Provider(p) => format!("provider:{p}"),
        }
    }
}

/// One bucket of a view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LivePoint {
    /// The start of the second or minute.
    pub ts: DateTime<Utc>,
    /// Calls in it.
    pub calls: u64,
    /// Calls that were not a success (status outside 200–399).
    pub errors: u64,
    /// Verifications refused: calls recorded with an outcome other than `VALID`, and the
    /// refusals counted by [`LiveCounters::incr_rejected`] (in [`LiveScope::All`]).
    pub rejected: u64,
}

/// The live view of a scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveSnapshot {
    /// The last 60 seconds, oldest first (the current, partial second last).
    pub per_second: Vec<LivePoint>,
    /// The last 60 minutes, oldest first (the current, partial minute last).
    pub per_minute: Vec<LivePoint>,
}

impl LiveSnapshot {
    /// Calls and errors in the last complete second.
    pub fn last_second(&self) -> (u64, u64) {
        last_complete(&self.per_second)
    }

    /// Calls and errors in the last complete minute.
    pub fn last_minute(&self) -> (u64, u64) {
        last_complete(&self.per_minute)
    }
}

fn last_complete(points: &[LivePoint]) -> (u64, u64) {
    points
        .len()
        .checked_sub(2)
        .and_then(|i| points.get(i))
        .map_or((0, 0), |p| (p.calls, p.errors))
}

/// Calls and errors per second and per minute, per key and per provider, kept in Redis by
/// every instance and expiring by themselves (seconds after 2 minutes, minutes after 2 hours).
///
/// Keys are `<namespace>:live:{<scope>}:s:<unix second>` and `…:m:<unix minute>`, hashes of
/// `c` (calls), `e` (errors) and `r` (refused verifications); one hash tag per scope keeps
/// each scope's keys in one Redis Cluster slot.
///
/// ```no_run
/// use keyvault_redis::{LiveCounters, LiveScope, RedisBackend, RedisConfig};
/// # async fn demo(event: keyvault_core::UsageEvent) -> keyvault_core::Result<()> {
/// let redis = RedisBackend::connect("redis://127.0.0.1:6379", RedisConfig::default()).await?;
/// let live = LiveCounters::new(&redis);
/// live.incr(&event).await?;
/// let view = live.read(&LiveScope::All, chrono::Utc::now()).await?;
/// let (calls, errors) = view.last_second();
/// # let _ = (calls, errors); Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct LiveCounters {
    redis: RedisBackend,
}

impl LiveCounters {
    /// Counters on `redis`'s namespace.
    pub fn new(redis: &RedisBackend) -> Self {
        Self {
            redis: redis.clone(),
        }
    }

    fn bucket_key(&self, scope: &str, unit: char, n: i64) -> String {
        self.redis.key(&format!("live:{{{scope}}}:{unit}:{n}"))
    }

    /// Counts one call (at its `ts`, for its key, its provider and in all).
    pub async fn incr(&self, event: &UsageEvent) -> keyvault_core::Result<()> {
        self.incr_many(std::slice::from_ref(event)).await
    }

    /// Counts calls, summed per bucket first: one pipelined round trip for the batch.
    pub async fn incr_many(&self, events: &[UsageEvent]) -> keyvault_core::Result<()> {
        let mut sums: HashMap<(String, char, i64), Counts> = HashMap::new();
        for e in events {
            let secs = e.ts.timestamp();
            let error = u64::from(!e.is_success());
            let refused = u64::from(e.outcome.is_some_and(|o| o != Outcome::Valid));
            let mut scopes = vec![
                LiveScope::All.tag(),
                LiveScope::Provider(e.provider.as_deref().unwrap_or(UNKNOWN_PROVIDER).to_owned())
                    .tag(),
            ];
            if let Some(k) = e.key_id {
                scopes.push(LiveScope::Key(k).tag());
            }
            for scope in scopes {
                for (unit, n) in [('s', secs), ('m', secs.div_euclid(60))] {
                    let s = sums.entry((scope.clone(), unit, n)).or_default();
                    s.calls += 1;
                    s.errors += error;
                    s.rejected += refused;
                }
            }
        }
        self.add(sums).await
    }

    /// Counts `n` refused verifications at `at` that were not recorded as calls (those of
    /// `POST /v1/keys/verify`), in [`LiveScope::All`].
    pub async fn incr_rejected(&self, at: DateTime<Utc>, n: u64) -> keyvault_core::Result<()> {
        let secs = at.timestamp();
        let tag = LiveScope::All.tag();
        let refused = Counts {
            rejected: n,
            ..Counts::default()
        };
        let sums = [('s', secs), ('m', secs.div_euclid(60))]
            .into_iter()
            .map(|(unit, b)| ((tag.clone(), unit, b), refused))
            .collect();
        self.add(sums).await
    }

    /// Adds the sums to their buckets in one pipelined round trip; on a Redis Cluster one per
    /// scope (a scope's buckets share its hash tag, so one node serves each), sent together.
    async fn add(&self, sums: HashMap<(String, char, i64), Counts>) -> keyvault_core::Result<()> {
        if sums.is_empty() {
            return Ok(());
        }
        let mut pipes: HashMap<String, redis::Pipeline> = HashMap::new();
        for ((scope, unit, n), sum) in sums {
            let group = if self.redis.is_cluster() {
                scope.as_str()
            } else {
                ""
            };
            let pipe = pipes.entry(group.to_owned()).or_insert_with(redis::pipe);
            let key = self.bucket_key(&scope, unit, n);
            for (field, v) in [("c", sum.calls), ("e", sum.errors), ("r", sum.rejected)] {
                if v > 0 {
                    pipe.cmd("HINCRBY").arg(&key).arg(field).arg(v).ignore();
                }
            }
            // Expire relative to the bucket, not to now: a late event can't keep it alive.
            let horizon = if unit == 's' {
                n + SECOND_TTL_S
            } else {
                n * 60 + MINUTE_TTL_S
            };
            pipe.cmd("EXPIREAT").arg(&key).arg(horizon).ignore();
        }
        let calls = pipes.into_values().map(|pipe| {
            let mut conn = self.redis.conn();
            async move { pipe.query_async::<()>(&mut conn).await }
        });
        self.redis.run(futures::future::try_join_all(calls)).await?;
        Ok(())
    }

    /// The last 60 seconds and 60 minutes of `scope` up to `now`.
    pub async fn read(
        &self,
        scope: &LiveScope,
        now: DateTime<Utc>,
    ) -> keyvault_core::Result<LiveSnapshot> {
        let tag = scope.tag();
        let secs = now.timestamp();
        let mins = secs.div_euclid(60);
        let seconds: Vec<i64> = (secs - POINTS + 1..=secs).collect();
        let minutes: Vec<i64> = (mins - POINTS + 1..=mins).collect();
        let mut pipe = redis::pipe();
        for n in &seconds {
            pipe.cmd("HMGET")
                .arg(self.bucket_key(&tag, 's', *n))
                .arg(&["c", "e", "r"]);
        }
        for n in &minutes {
            pipe.cmd("HMGET")
                .arg(self.bucket_key(&tag, 'm', *n))
                .arg(&["c", "e", "r"]);
        }
        let mut conn = self.redis.conn();
        let rows: Vec<(Option<u64>, Option<u64>, Option<u64>)> = self
            .redis
            .run(async { pipe.query_async(&mut conn).await })
            .await?;
        let point = |ts: i64, row: Option<&(Option<u64>, Option<u64>, Option<u64>)>| LivePoint {
            ts: DateTime::<Utc>::from_timestamp(ts, 0).unwrap_or(now),
            calls: row.and_then(|r| r.0).unwrap_or(0),
            errors: row.and_then(|r| r.1).unwrap_or(0),
            rejected: row.and_then(|r| r.2).unwrap_or(0),
        };
        let per_second = seconds
            .iter()
            .enumerate()
            .map(|(i, n)| point(*n, rows.get(i)))
            .collect();
        let per_minute = minutes
            .iter()
            .enumerate()
            .map(|(i, n)| point(n * 60, rows.get(seconds.len() + i)))
            .collect();
        Ok(LiveSnapshot {
            per_second,
            per_minute,
        })
    }
}

/// What one bucket gains.
#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    calls: u64,
    errors: u64,
    rejected: u64,
}

/// A [`UsageSink`] that writes to another and then counts what it wrote in [`LiveCounters`],
/// so that every process recording usage (servers, host apps) feeds one live view across
/// instances. The counting is best effort: with Redis unavailable the events are still
/// stored, and the live view misses them (`keyvault_live_count_failures_total` counts the
/// batches).
#[derive(Debug, Clone)]
pub struct LiveSink {
    inner: Arc<dyn UsageSink>,
    live: LiveCounters,
}

impl LiveSink {
    /// Writes to `inner`, counting into `live`.
    pub fn new(inner: Arc<dyn UsageSink>, live: LiveCounters) -> Self {
        Self { inner, live }
    }
}

#[async_trait]
impl UsageSink for LiveSink {
    async fn write(&self, events: &[UsageEvent]) -> keyvault_core::Result<()> {
        // Stored first: a batch the store refused is retried, and counted once it lands.
        self.inner.write(events).await?;
        if let Err(e) = self.live.incr_many(events).await {
            metrics::counter!("keyvault_live_count_failures_total").increment(1);
            tracing::warn!(target: "keyvault::live", error = %e, events = events.len(), "calls stored but not counted live");
        }
        Ok(())
    }

    async fn purge_before(&self, before: DateTime<Utc>) -> keyvault_core::Result<Purged> {
        self.inner.purge_before(before).await
    }
}
