//! Usage: raw events in `kv_usage_events`, minute rollups in `kv_usage_rollup`, both written
//! by one statement per batch.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use keyvault_core::{
    Error, LatencyHistogram, ProviderStats, StatsOverview, StatsQuery, TimePoint, UNKNOWN_PROVIDER,
    UsageEvent, UsageQuery, UsageSink, success_rate,
};
use sqlx::Row;
use uuid::Uuid;

use crate::{PgStore, Result, db, to_i64, to_u64};

/// The rollup row over all keys has this key id (UUIDv7 key ids are never nil).
pub(crate) const ALL_KEYS: Uuid = Uuid::nil();

/// Inserts a batch and adds to the rollups only what the insert returned: events whose
/// `request_id` is already stored are skipped by `ON CONFLICT DO NOTHING` and so counted once,
/// however often a batch is retried. One statement, so the events, their rollups and the
/// keys' `last_used_at` commit together.
///
/// The statement's own transaction commits asynchronously (`synchronous_commit` off for it
/// alone): usage is telemetry whose buffer already sits in process memory, so a database crash
/// may lose the last fraction of a second of it, as it would the recorder's buffer, while
/// batches stop waiting for a WAL flush each. Keys, credits and audit keep the server's setting.
const WRITE: &str = "\
WITH ins AS (
    INSERT INTO kv_usage_events (request_id, key_id, owner_id, ts, provider, route, method,
        status, latency_us, latency_bucket, outcome, cost)
    SELECT * FROM UNNEST($1::text[], $2::uuid[], $3::text[], $4::timestamptz[], $5::text[],
        $6::text[], $7::text[], $8::integer[], $9::bigint[], $10::smallint[], $11::text[],
        $12::bigint[])
    ON CONFLICT (request_id) DO NOTHING
    RETURNING key_id, ts, provider, status, latency_bucket
), cells AS (
    SELECT v.k AS key_id, date_trunc('minute', ins.ts) AS minute,
           coalesce(ins.provider, '') AS provider, (ins.status / 100)::smallint AS status_class,
           ins.latency_bucket AS bucket, count(*) AS n
    FROM ins CROSS JOIN LATERAL (VALUES (ins.key_id), ($13::uuid)) AS v(k)
    WHERE v.k IS NOT NULL
    GROUP BY 1, 2, 3, 4, 5
), grouped AS (
    SELECT key_id, minute, provider, status_class, sum(n)::bigint AS calls,
           array_agg(bucket ORDER BY bucket) AS hb, array_agg(n ORDER BY bucket) AS hc
    FROM cells GROUP BY 1, 2, 3, 4
), rolled AS (
    INSERT INTO kv_usage_rollup AS r (key_id, minute, provider, status_class, calls,
        hist_buckets, hist_counts)
    SELECT * FROM grouped ORDER BY 1, 2, 3, 4
    ON CONFLICT (key_id, minute, provider, status_class) DO UPDATE SET
        calls = r.calls + EXCLUDED.calls,
        (hist_buckets, hist_counts) = (
            SELECT array_agg(s.b ORDER BY s.b), array_agg(s.c ORDER BY s.b)
            FROM (SELECT u.b, sum(u.c)::bigint AS c
                  FROM unnest(r.hist_buckets || EXCLUDED.hist_buckets,
                              r.hist_counts || EXCLUDED.hist_counts) AS u(b, c)
                  GROUP BY u.b) AS s)
    RETURNING 1
), used AS (
    UPDATE kv_keys AS k SET last_used_at = GREATEST(k.last_used_at, u.ts)
    FROM (SELECT key_id, max(ts) AS ts FROM ins WHERE key_id IS NOT NULL GROUP BY key_id) AS u
    WHERE k.id = u.key_id
    RETURNING 1
)
SELECT count(*), set_config('synchronous_commit', 'off', true) FROM ins";

/// Calls per (provider, status class, step): whole minutes from the rollups, the partial
/// minutes at either end of the range from raw events.
const COUNTS: &str = "\
SELECT provider, status_class, (floor(extract(epoch FROM minute) / $5) * $5)::bigint AS step,
       sum(calls)::bigint AS calls
FROM kv_usage_rollup
WHERE key_id = $1 AND minute >= $2 AND minute < $3 AND ($4::text IS NULL OR provider = $4)
GROUP BY 1, 2, 3
UNION ALL
SELECT coalesce(provider, ''), (status / 100)::smallint,
       (floor(extract(epoch FROM ts) / $5) * $5)::bigint, count(*)
FROM kv_usage_events
WHERE ((ts >= $6 AND ts < $7) OR (ts >= $8 AND ts < $9))
  AND ($10::uuid IS NULL OR key_id = $10) AND ($4::text IS NULL OR provider = $4)
GROUP BY 1, 2, 3";

/// The latency histogram over the same cells.
const HISTOGRAM: &str = "\
SELECT b, sum(c)::bigint AS c FROM (
    SELECT u.b, u.c
    FROM kv_usage_rollup AS r, unnest(r.hist_buckets, r.hist_counts) AS u(b, c)
    WHERE r.key_id = $1 AND r.minute >= $2 AND r.minute < $3
      AND ($4::text IS NULL OR r.provider = $4)
    UNION ALL
    SELECT latency_bucket, 1
    FROM kv_usage_events
    WHERE ((ts >= $5 AND ts < $6) OR (ts >= $7 AND ts < $8))
      AND ($9::uuid IS NULL OR key_id = $9) AND ($4::text IS NULL OR provider = $4)
) AS x GROUP BY b";

/// Columns of a batch, as UNNEST takes them.
#[derive(Default)]
struct Columns<'a> {
    request_id: Vec<&'a str>,
    key_id: Vec<Option<Uuid>>,
    owner_id: Vec<Option<&'a str>>,
    ts: Vec<DateTime<Utc>>,
    provider: Vec<Option<&'a str>>,
    route: Vec<Option<&'a str>>,
    method: Vec<Option<&'a str>>,
    status: Vec<i32>,
    latency_us: Vec<i64>,
    bucket: Vec<i16>,
    outcome: Vec<Option<&'static str>>,
    cost: Vec<i64>,
}

impl<'a> Columns<'a> {
    fn of(events: &'a [UsageEvent]) -> Result<Self> {
        let n = events.len();
        let mut c = Columns {
            request_id: Vec::with_capacity(n),
            key_id: Vec::with_capacity(n),
            owner_id: Vec::with_capacity(n),
            ts: Vec::with_capacity(n),
            provider: Vec::with_capacity(n),
            route: Vec::with_capacity(n),
            method: Vec::with_capacity(n),
            status: Vec::with_capacity(n),
            latency_us: Vec::with_capacity(n),
            bucket: Vec::with_capacity(n),
            outcome: Vec::with_capacity(n),
            cost: Vec::with_capacity(n),
        };
        for (i, e) in events.iter().enumerate() {
            c.request_id.push(&e.request_id);
            c.key_id.push(e.key_id.map(|k| *k.as_uuid()));
            c.owner_id.push(e.owner_id.as_deref());
            c.ts.push(e.ts);
            c.provider.push(e.provider.as_deref());
            c.route.push(e.route.as_deref());
            c.method.push(e.method.as_deref());
            c.status.push(i32::from(e.status));
            c.latency_us
                .push(to_i64(e.latency_us, &format!("events[{i}].latency_us"))?);
            c.bucket.push(
                LatencyHistogram::bucket_of(e.latency_us)
                    .try_into()
                    .unwrap_or(i16::MAX),
            );
            c.outcome.push(e.outcome.map(|o| o.as_str()));
            c.cost.push(to_i64(e.cost, &format!("events[{i}].cost"))?);
        }
        Ok(c)
    }
}

/// The parts of a statistics range: whole minutes `[from, to)` read from rollups and up to
/// two partial-minute stretches read from raw events.
struct Split {
    minutes: (DateTime<Utc>, DateTime<Utc>),
    head: (DateTime<Utc>, DateTime<Utc>),
    tail: (DateTime<Utc>, DateTime<Utc>),
}

fn split(from: DateTime<Utc>, to: DateTime<Utc>) -> Split {
    let minute = TimeDelta::minutes(1);
    let floor = |t: DateTime<Utc>| t.duration_trunc(minute).unwrap_or(t);
    let first = {
        let f = floor(from);
        if f == from { f } else { f + minute }
    };
    let last = floor(to);
    if first < last {
        Split {
            minutes: (first, last),
            head: (from, first),
            tail: (last, to),
        }
    } else {
        Split {
            minutes: (from, from),
            head: (from, to),
            tail: (to, to),
        }
    }
}

impl PgStore {
    async fn counts(
        &self,
        q: &StatsQuery,
        s: &Split,
        key: Uuid,
    ) -> Result<Vec<sqlx::postgres::PgRow>> {
        sqlx::query(COUNTS)
            .bind(key)
            .bind(s.minutes.0)
            .bind(s.minutes.1)
            .bind(&q.provider)
            .bind(q.step().num_seconds())
            .bind(s.head.0)
            .bind(s.head.1)
            .bind(s.tail.0)
            .bind(s.tail.1)
            .bind(q.key_id.map(|k| *k.as_uuid()))
            .fetch_all(&self.pool)
            .await
            .map_err(db)
    }

    async fn histogram(
        &self,
        q: &StatsQuery,
        s: &Split,
        key: Uuid,
    ) -> Result<Vec<sqlx::postgres::PgRow>> {
        sqlx::query(HISTOGRAM)
            .bind(key)
            .bind(s.minutes.0)
            .bind(s.minutes.1)
            .bind(&q.provider)
            .bind(s.head.0)
            .bind(s.head.1)
            .bind(s.tail.0)
            .bind(s.tail.1)
            .bind(q.key_id.map(|k| *k.as_uuid()))
            .fetch_all(&self.pool)
            .await
            .map_err(db)
    }
}

#[async_trait]
impl UsageSink for PgStore {
    async fn write(&self, events: &[UsageEvent]) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let c = Columns::of(events)?;
        sqlx::query(WRITE)
            .bind(&c.request_id)
            .bind(&c.key_id)
            .bind(&c.owner_id)
            .bind(&c.ts)
            .bind(&c.provider)
            .bind(&c.route)
            .bind(&c.method)
            .bind(&c.status)
            .bind(&c.latency_us)
            .bind(&c.bucket)
            .bind(&c.outcome)
            .bind(&c.cost)
            .bind(ALL_KEYS)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(())
    }
}

#[async_trait]
impl UsageQuery for PgStore {
    async fn overview(&self, q: &StatsQuery) -> Result<StatsOverview> {
        q.validate()?;
        let s = split(q.from, q.to);
        let key = q.key_id.map_or(ALL_KEYS, |k| *k.as_uuid());
        let (counts, hist) = tokio::try_join!(self.counts(q, &s, key), self.histogram(q, &s, key))?;

        let (mut calls, mut ok) = (0u64, 0u64);
        let mut providers: HashMap<String, (u64, u64)> = HashMap::new();
        let mut series: std::collections::BTreeMap<i64, (u64, u64)> = Default::default();
        for row in &counts {
            let provider: String = row.try_get("provider").map_err(db)?;
            let class: i16 = row.try_get("status_class").map_err(db)?;
            let step: i64 = row.try_get("step").map_err(db)?;
            let n = to_u64(row.try_get("calls").map_err(db)?, "usage calls")?;
            // Statuses 200–399: classes 2 and 3.
            let good = if (2..=3).contains(&class) { n } else { 0 };
            calls += n;
            ok += good;
            let name = if provider.is_empty() {
                UNKNOWN_PROVIDER.to_owned()
            } else {
                provider
            };
            let p = providers.entry(name).or_default();
            p.0 += n;
            p.1 += good;
            let point = series.entry(step).or_default();
            point.0 += n;
            point.1 += n - good;
        }
        let mut histogram = LatencyHistogram::default();
        for row in &hist {
            let b: i16 = row.try_get("b").map_err(db)?;
            let c = to_u64(row.try_get("c").map_err(db)?, "latency count")?;
            histogram.add(u16::try_from(b).unwrap_or(0), c);
        }
        let mut by_provider: Vec<ProviderStats> = providers
            .into_iter()
            .map(|(provider, (c, o))| ProviderStats {
                provider,
                calls: c,
                success_rate: success_rate(o, c),
            })
            .collect();
        by_provider.sort_by(|a, b| b.calls.cmp(&a.calls).then(a.provider.cmp(&b.provider)));
        let timeseries = series
            .into_iter()
            .map(|(step, (calls, errors))| {
                let ts = DateTime::from_timestamp(step, 0)
                    .ok_or_else(|| Error::backend("postgres", "time series step out of range"))?;
                Ok(TimePoint { ts, calls, errors })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(StatsOverview {
            calls,
            success_rate: success_rate(ok, calls),
            latency_ms: histogram.percentiles(),
            by_provider,
            timeseries,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_split_into_whole_minutes_and_raw_ends() {
        let t = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        let s = split(t("2026-01-01T10:00:30Z"), t("2026-01-01T10:05:10Z"));
        assert_eq!(
            s.minutes,
            (t("2026-01-01T10:01:00Z"), t("2026-01-01T10:05:00Z"))
        );
        assert_eq!(
            s.head,
            (t("2026-01-01T10:00:30Z"), t("2026-01-01T10:01:00Z"))
        );
        assert_eq!(
            s.tail,
            (t("2026-01-01T10:05:00Z"), t("2026-01-01T10:05:10Z"))
        );
        let s = split(t("2026-01-01T10:00:00Z"), t("2026-01-01T11:00:00Z"));
        assert_eq!(
            s.minutes,
            (t("2026-01-01T10:00:00Z"), t("2026-01-01T11:00:00Z"))
        );
        assert_eq!(s.head.0, s.head.1);
        assert_eq!(s.tail.0, s.tail.1);
        // No whole minute inside: everything from raw events.
        let s = split(t("2026-01-01T10:00:30Z"), t("2026-01-01T10:01:20Z"));
        assert_eq!(s.minutes.0, s.minutes.1);
        assert_eq!(
            s.head,
            (t("2026-01-01T10:00:30Z"), t("2026-01-01T10:01:20Z"))
        );
        assert_eq!(s.tail.0, s.tail.1);
    }
}
