//! Reading usage: [`UsageQuery`]'s overview from the day, hour and minute rollups and the raw
//! events at the ends of the range, summed per step and bucket inside PostgreSQL and assembled
//! by keyvault-core's [`OverviewBuilder`].

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use keyvault_core::{
    ALL_KEYS_ROLLUP, KeyId, KeyWindow, KeyWindows, Outcome, OverviewBuilder, RollupRanges,
    SecondCounts, StatsOverview, StatsQuery, UsageQuery,
};
use sqlx::{
    Postgres, Row,
    postgres::{PgArguments, PgRow},
    query::Query,
};

use crate::{PgStore, Result, corrupt, db, to_u64};

/// Calls and failed calls per (provider, step): whole days from the daily rollups, whole
/// hours from the hourly ones, whole minutes from the minute rollups, the partial minutes at
/// either end of the range from raw events. `$2` is the step in seconds; days and hours are
/// only read when the step holds them whole ([`RollupRanges::for_step`] leaves their spans
/// empty otherwise). The times `$4`–`$17` are [`span_binds`]'.
const COUNTS: &str = "\
SELECT provider, (floor(extract(epoch FROM t) / $2) * $2)::bigint AS step,
       sum(calls)::bigint AS calls, sum(errors)::bigint AS errors
FROM (
    SELECT provider, minute AS t, calls,
           CASE WHEN status_class IN (2, 3) THEN 0 ELSE calls END AS errors
    FROM kv_usage_rollup
    WHERE key_id = $1 AND minute >= $4 AND minute < $5 AND ($3::text IS NULL OR provider = $3)
    UNION ALL
    SELECT provider, minute, calls, CASE WHEN status_class IN (2, 3) THEN 0 ELSE calls END
    FROM kv_usage_rollup
    WHERE key_id = $1 AND minute >= $6 AND minute < $7 AND ($3::text IS NULL OR provider = $3)
    UNION ALL
    SELECT provider, hour, calls, errors
    FROM kv_usage_rollup_hour
    WHERE key_id = $1 AND ((hour >= $8 AND hour < $9) OR (hour >= $10 AND hour < $11))
      AND ($3::text IS NULL OR provider = $3)
    UNION ALL
    SELECT provider, day, calls, errors
    FROM kv_usage_rollup_day
    WHERE key_id = $1 AND day >= $12 AND day < $13 AND ($3::text IS NULL OR provider = $3)
    UNION ALL
    SELECT coalesce(provider, ''), ts, 1, CASE WHEN status BETWEEN 200 AND 399 THEN 0 ELSE 1 END
    FROM kv_usage_events
    WHERE ((ts >= $14 AND ts < $15) OR (ts >= $16 AND ts < $17))
      AND ($18::uuid IS NULL OR key_id = $18) AND ($3::text IS NULL OR provider = $3)
) AS x
GROUP BY 1, 2";

/// The latency histogram over the same range, its days always from the daily rollups; the
/// times `$3`–`$16` are [`span_binds`]'.
const HISTOGRAM: &str = "\
SELECT b, sum(c)::bigint AS c FROM (
    SELECT u.b, u.c
    FROM kv_usage_rollup AS r, unnest(r.hist_buckets, r.hist_counts) AS u(b, c)
    WHERE r.key_id = $1 AND r.minute >= $3 AND r.minute < $4
      AND ($2::text IS NULL OR r.provider = $2)
    UNION ALL
    SELECT u.b, u.c
    FROM kv_usage_rollup AS r, unnest(r.hist_buckets, r.hist_counts) AS u(b, c)
    WHERE r.key_id = $1 AND r.minute >= $5 AND r.minute < $6
      AND ($2::text IS NULL OR r.provider = $2)
    UNION ALL
    SELECT u.b, u.c
    FROM kv_usage_rollup_hour AS r, unnest(r.hist_buckets, r.hist_counts) AS u(b, c)
    WHERE r.key_id = $1 AND ((r.hour >= $7 AND r.hour < $8) OR (r.hour >= $9 AND r.hour < $10))
      AND ($2::text IS NULL OR r.provider = $2)
    UNION ALL
    SELECT u.b, u.c
    FROM kv_usage_rollup_day AS r, unnest(r.hist_buckets, r.hist_counts) AS u(b, c)
    WHERE r.key_id = $1 AND r.day >= $11 AND r.day < $12
      AND ($2::text IS NULL OR r.provider = $2)
    UNION ALL
    SELECT latency_bucket, 1
    FROM kv_usage_events
    WHERE ((ts >= $13 AND ts < $14) OR (ts >= $15 AND ts < $16))
      AND ($17::uuid IS NULL OR key_id = $17) AND ($2::text IS NULL OR provider = $2)
) AS x GROUP BY b";

/// Calls per key of `$1` (an array): the rollups' primary-key range scans per key, the raw
/// events at the ends; `$2` the provider filter, then the times `$3`–`$16` as [`span_binds`]
/// gives them.
const PER_KEY: &str = "\
SELECT key_id, sum(calls)::bigint AS calls FROM (
    SELECT key_id, calls FROM kv_usage_rollup
    WHERE key_id = ANY($1) AND minute >= $3 AND minute < $4 AND ($2::text IS NULL OR provider = $2)
    UNION ALL
    SELECT key_id, calls FROM kv_usage_rollup
    WHERE key_id = ANY($1) AND minute >= $5 AND minute < $6 AND ($2::text IS NULL OR provider = $2)
    UNION ALL
    SELECT key_id, calls FROM kv_usage_rollup_hour
    WHERE key_id = ANY($1) AND ((hour >= $7 AND hour < $8) OR (hour >= $9 AND hour < $10))
      AND ($2::text IS NULL OR provider = $2)
    UNION ALL
    SELECT key_id, calls FROM kv_usage_rollup_day
    WHERE key_id = ANY($1) AND day >= $11 AND day < $12 AND ($2::text IS NULL OR provider = $2)
    UNION ALL
    SELECT key_id, 1 FROM kv_usage_events
    WHERE ((ts >= $13 AND ts < $14) OR (ts >= $15 AND ts < $16))
      AND key_id = ANY($1) AND ($2::text IS NULL OR provider = $2)
) AS x GROUP BY key_id";

/// The times [`COUNTS`], [`HISTOGRAM`] and [`PER_KEY`] bind after their key, step and
/// provider, each span's start and end: the whole minutes before the hours and those after
/// them, the hours before the days and those after them, the days, then the raw head and
/// tail.
fn span_binds(r: &RollupRanges) -> impl Iterator<Item = DateTime<Utc>> {
    [
        r.minutes_before,
        r.minutes_after,
        r.hours_before,
        r.hours_after,
        r.days,
        r.raw_head,
        r.raw_tail,
    ]
    .into_iter()
    .flat_map(|s| [s.start, s.end])
}

/// One row of [`UsageQuery::key_windows`]'s grouping: the key, the latency bucket, whether
/// the calls succeeded, their outcome (None: not a verification) and how many they were.
fn window_cell(row: &PgRow) -> Result<(KeyId, u16, bool, Option<Outcome>, u64), crate::Error> {
    let key: uuid::Uuid = row.try_get("key_id")?;
    let bucket: i16 = row.try_get("latency_bucket")?;
    let bucket = u16::try_from(bucket).map_err(|e| corrupt("kv_usage_events.latency_bucket", e))?;
    let outcome = row
        .try_get::<Option<String>, _>("outcome")?
        .map(|text| {
            Outcome::from_code(&text).ok_or_else(|| {
                corrupt(
                    "kv_usage_events.outcome",
                    format!("{text:?} is not an outcome"),
                )
            })
        })
        .transpose()?;
    Ok((
        KeyId::from_uuid(key),
        bucket,
        row.try_get("ok")?,
        outcome,
        to_u64(row.try_get("n")?, "usage calls")?,
    ))
}

/// One row of [`UsageQuery::per_second`]: the Unix second and its counts.
fn second_cell(row: &PgRow) -> Result<(i64, SecondCounts), crate::Error> {
    Ok((
        row.try_get("s")?,
        SecondCounts {
            calls: to_u64(row.try_get("calls")?, "usage calls")?,
            errors: to_u64(row.try_get("errors")?, "usage errors")?,
            rejected: to_u64(row.try_get("rejected")?, "usage rejections")?,
        },
    ))
}

impl PgStore {
    /// Runs [`COUNTS`] or [`HISTOGRAM`], given with the binds before its times: the spans of
    /// `ranges`, then the key filter.
    async fn rows(
        &self,
        mut query: Query<'_, Postgres, PgArguments>,
        ranges: &RollupRanges,
        q: &StatsQuery,
    ) -> Result<Vec<PgRow>> {
        for t in span_binds(ranges) {
            query = query.bind(t);
        }
        query
            .bind(q.key_id.map(|k| *k.as_uuid()))
            .fetch_all(&self.pool)
            .await
            .map_err(db)
    }
}

#[async_trait]
impl UsageQuery for PgStore {
    async fn overview(&self, q: &StatsQuery) -> Result<StatsOverview> {
        q.validate()?;
        let ranges = RollupRanges::split(q.from, q.to);
        let key = q.key_id.map_or(ALL_KEYS_ROLLUP, |k| *k.as_uuid());
        let step = q.step();
        let counts = sqlx::query(COUNTS)
            .bind(key)
            .bind(step.num_seconds())
            .bind(&q.provider);
        let hist = sqlx::query(HISTOGRAM).bind(key).bind(&q.provider);
        // The histogram has no time axis and always reads days and hours; the series only
        // where its steps hold them whole.
        let series = ranges.for_step(step);
        let (counts, hist) =
            tokio::try_join!(self.rows(counts, &series, q), self.rows(hist, &ranges, q))?;
        let mut out = OverviewBuilder::new(q);
        for row in &counts {
            let provider: String = row.try_get("provider").map_err(db)?;
            let step: i64 = row.try_get("step").map_err(db)?;
            let calls = to_u64(row.try_get("calls").map_err(db)?, "usage calls")?;
            let failed = to_u64(row.try_get("errors").map_err(db)?, "usage errors")?;
            let at = DateTime::from_timestamp(step, 0)
                .ok_or_else(|| corrupt("time series step", "out of range"))?;
            // Rollup rows keep "no provider" as '' (the column is part of their key), and the
            // raw events are read alike.
            let provider = (!provider.is_empty()).then_some(provider.as_str());
            out.add(provider, at, calls, calls.saturating_sub(failed));
        }
        for row in &hist {
            let b: i16 = row.try_get("b").map_err(db)?;
            let c = to_u64(row.try_get("c").map_err(db)?, "latency count")?;
            out.latency().add(u16::try_from(b).unwrap_or(0), c);
        }
        Ok(out.finish())
    }

    async fn key_windows(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        key: Option<KeyId>,
    ) -> Result<KeyWindows> {
        // Through the time index, grouped inside PostgreSQL: one row per key, latency
        // bucket, success and outcome, whatever the number of events.
        let rows = sqlx::query(
            "SELECT key_id, latency_bucket, (status BETWEEN 200 AND 399) AS ok, outcome, \
                    count(*) AS n \
             FROM kv_usage_events \
             WHERE ts >= $1 AND ts < $2 AND key_id IS NOT NULL \
               AND ($3::uuid IS NULL OR key_id = $3) \
             GROUP BY 1, 2, 3, 4",
        )
        .bind(from)
        .bind(to)
        .bind(key.map(|k| *k.as_uuid()))
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        let mut out = KeyWindows::new();
        for row in &rows {
            let (key, bucket, ok, outcome, n) = window_cell(row)?;
            let w: &mut KeyWindow = out.entry(key).or_default();
            w.calls += n;
            if !ok {
                w.errors += n;
            }
            w.latency.add(bucket, n);
            if let Some(o) = outcome.filter(|o| *o != Outcome::Valid) {
                *w.rejected.entry(o).or_default() += n;
            }
        }
        Ok(out)
    }

    async fn per_second(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<BTreeMap<i64, SecondCounts>> {
        let rows = sqlx::query(
            "SELECT floor(extract(epoch FROM ts))::bigint AS s, count(*) AS calls, \
                    count(*) FILTER (WHERE status NOT BETWEEN 200 AND 399) AS errors, \
                    count(*) FILTER (WHERE outcome IS NOT NULL AND outcome <> 'VALID') \
                      AS rejected \
             FROM kv_usage_events WHERE ts >= $1 AND ts < $2 GROUP BY 1",
        )
        .bind(from)
        .bind(to)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        let mut out = BTreeMap::new();
        for row in &rows {
            let (s, counts) = second_cell(row)?;
            out.insert(s, counts);
        }
        Ok(out)
    }

    async fn calls_by_key(
        &self,
        q: &StatsQuery,
        keys: &[KeyId],
    ) -> Result<std::collections::HashMap<KeyId, u64>> {
        q.validate()?;
        let mut out = std::collections::HashMap::with_capacity(keys.len());
        if keys.is_empty() {
            return Ok(out);
        }
        let ranges = RollupRanges::split(q.from, q.to);
        let ids: Vec<uuid::Uuid> = keys.iter().map(|k| *k.as_uuid()).collect();
        let mut query = sqlx::query(PER_KEY).bind(&ids).bind(&q.provider);
        for t in span_binds(&ranges) {
            query = query.bind(t);
        }
        for row in query.fetch_all(&self.pool).await.map_err(db)? {
            let id: uuid::Uuid = row.try_get("key_id").map_err(db)?;
            let calls = to_u64(row.try_get("calls").map_err(db)?, "usage calls")?;
            out.insert(KeyId::from_uuid(id), calls);
        }
        Ok(out)
    }
}
