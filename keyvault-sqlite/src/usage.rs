//! [`UsageSink`] and [`UsageQuery`] on SQLite: raw events, idempotent on `request_id`, and
//! per-minute, per-hour and per-day rollups maintained as events are first inserted.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::OnceLock,
};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use keyvault_core::{
    ALL_KEYS_ROLLUP, KeyId, LatencyHistogram, OverviewBuilder, Purged, Result, RollupRanges, Span,
    StatsOverview, StatsQuery, UsageEvent, UsageQuery, UsageSink,
};
use sqlx::{AssertSqlSafe, QueryBuilder, Sqlite, SqliteConnection};

use crate::{
    SqliteStore,
    codec::{from_micros, id_text, int, micros, parse_id},
    error::{backend, corrupt},
};

const MINUTE_US: i64 = 60_000_000;
const HOUR_US: i64 = 3_600_000_000;
const DAY_US: i64 = 86_400_000_000;
/// Rows per multi-row INSERT: 11 parameters each stays far below SQLite's 32,766.
const INSERT_CHUNK: usize = 1_000;
/// Rollup rows (or key ids) per statement: 7 parameters a row.
const ROLLUP_CHUNK: usize = 1_000;
/// Rows per DELETE when purging, so that other writers get the lock in between.
const PURGE_CHUNK: i64 = 20_000;

fn minute_of(ts_us: i64) -> i64 {
    ts_us - ts_us.rem_euclid(MINUTE_US)
}

/// One level of rollups. Both tables have the same columns but the time's name.
#[derive(Debug)]
struct Level {
    table: &'static str,
    time: &'static str,
}

const MINUTES: Level = Level {
    table: "kv_usage_rollup",
    time: "minute",
};
const HOURS: Level = Level {
    table: "kv_usage_rollup_hour",
    time: "hour",
};
const DAYS: Level = Level {
    table: "kv_usage_rollup_day",
    time: "day",
};

/// [`ALL_KEYS_ROLLUP`] as the `key_id` column holds it (made once: every event counts there).
fn all_keys() -> &'static str {
    static TEXT: OnceLock<String> = OnceLock::new();
    TEXT.get_or_init(|| ALL_KEYS_ROLLUP.to_string())
}

/// One rollup row's identity; `at` is the start of its minute or hour.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct RollupKey {
    key_id: String,
    at: i64,
    provider_set: bool,
    provider: String,
    status_class: i64,
}

impl RollupKey {
    /// The minute rollups an event counts in: all keys', and its key's when it has one.
    fn of(e: &UsageEvent) -> impl Iterator<Item = Self> {
        let all = Self {
            key_id: all_keys().to_owned(),
            at: minute_of(micros(e.ts)),
            provider_set: e.provider.is_some(),
            provider: e.provider.as_deref().unwrap_or_default().to_owned(),
            status_class: i64::from(e.status / 100),
        };
        let own = e.key_id.map(|k| Self {
            key_id: id_text(k),
            ..all.clone()
        });
        std::iter::once(all).chain(own)
    }
}

/// A histogram as stored: a JSON object of bucket → count.
fn hist_to_json(h: &LatencyHistogram) -> String {
    let map: serde_json::Map<String, serde_json::Value> = h
        .buckets()
        .map(|(b, c)| (b.to_string(), c.into()))
        .collect();
    serde_json::Value::Object(map).to_string()
}

fn hist_from_json(s: &str) -> Result<LatencyHistogram, crate::Error> {
    let map: BTreeMap<u16, u64> =
        serde_json::from_str(s).map_err(|e| corrupt("kv_usage_rollup.hist", e))?;
    let mut h = LatencyHistogram::default();
    for (b, c) in map {
        h.add(b, c);
    }
    Ok(h)
}

/// Inserts `events`, returning the request ids that were new.
async fn insert_events(
    conn: &mut SqliteConnection,
    events: &[UsageEvent],
) -> Result<HashSet<String>, crate::Error> {
    let mut inserted = HashSet::with_capacity(events.len());
    for chunk in events.chunks(INSERT_CHUNK) {
        let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(
            "INSERT INTO kv_usage_events (request_id, key_id, owner_id, ts, provider, route, \
             method, status, latency_us, outcome, cost) ",
        );
        qb.push_values(chunk, |mut b, e| {
            b.push_bind(e.request_id.to_string())
                .push_bind(e.key_id.map(id_text))
                .push_bind(e.owner_id.clone())
                .push_bind(micros(e.ts))
                .push_bind(e.provider.as_deref().map(str::to_owned))
                .push_bind(e.route.as_deref().map(str::to_owned))
                .push_bind(e.method.as_deref().map(str::to_owned))
                .push_bind(i64::from(e.status))
                .push_bind(int(e.latency_us))
                .push_bind(e.outcome.map(|o| o.as_str()))
                .push_bind(int(e.cost));
        });
        // DO NOTHING also skips a repeat inside the same statement, so RETURNING names each
        // new id once: exactly the events the rollups must count.
        qb.push(" ON CONFLICT (request_id) DO NOTHING RETURNING request_id");
        let ids: Vec<String> = qb.build_query_scalar().fetch_all(&mut *conn).await?;
        inserted.extend(ids);
    }
    Ok(inserted)
}

/// A stored rollup row: its identity's columns, calls and histogram.
type RollupRow = (String, i64, bool, String, i64, i64, String);

/// Calls and latencies of one rollup row, or of the part a batch adds to it.
type Cell = (u64, LatencyHistogram);

/// The hour (or day) cells of a batch's minute cells: each minute cell folded into the unit of
/// `unit_us` microseconds that holds it.
fn fold(minutes: &BTreeMap<RollupKey, Cell>, unit_us: i64) -> BTreeMap<RollupKey, Cell> {
    let mut coarse: BTreeMap<RollupKey, Cell> = BTreeMap::new();
    for (k, (calls, hist)) in minutes {
        let c = coarse
            .entry(RollupKey {
                at: k.at - k.at.rem_euclid(unit_us),
                ..k.clone()
            })
            .or_default();
        c.0 += calls;
        c.1.merge(hist);
    }
    coarse
}

/// Adds `groups` to the stored rollups of `level`: one read of the rows they touch, merged
/// here, and multi-row writes (a statement per row would cost more than the events' own
/// insert). A batch's events are summed per cell beforehand, so each row is written once.
async fn add_rollups(
    conn: &mut SqliteConnection,
    level: &Level,
    mut groups: BTreeMap<RollupKey, Cell>,
) -> Result<(), crate::Error> {
    let Level { table, time } = level;
    let (Some(first), Some(last)) = (
        groups.keys().map(|k| k.at).min(),
        groups.keys().map(|k| k.at).max(),
    ) else {
        return Ok(());
    };
    let key_ids: Vec<&str> = {
        let set: std::collections::BTreeSet<&str> =
            groups.keys().map(|k| k.key_id.as_str()).collect();
        set.into_iter().collect()
    };
    let mut stored: Vec<RollupRow> = Vec::new();
    for ids in key_ids.chunks(ROLLUP_CHUNK) {
        let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(format!(
            "SELECT key_id, {time}, provider_set, provider, status_class, calls, hist \
             FROM {table} WHERE {time} >= "
        ));
        qb.push_bind(first)
            .push(format_args!(" AND {time} <= "))
            .push_bind(last)
            .push(" AND key_id IN (");
        let mut list = qb.separated(", ");
        for id in ids {
            list.push_bind(id.to_string());
        }
        qb.push(")");
        stored.extend(
            qb.build_query_as::<RollupRow>()
                .fetch_all(&mut *conn)
                .await?,
        );
    }
    for (key_id, at, provider_set, provider, status_class, calls, hist) in stored {
        let key = RollupKey {
            key_id,
            at,
            provider_set,
            provider,
            status_class,
        };
        if let Some(g) = groups.get_mut(&key) {
            g.0 =
                g.0.saturating_add(u64::try_from(calls).map_err(|e| corrupt("calls", e))?);
            g.1.merge(&hist_from_json(&hist)?);
        }
    }
    let rows: Vec<_> = groups.into_iter().collect();
    for chunk in rows.chunks(ROLLUP_CHUNK) {
        let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(format!(
            "INSERT OR REPLACE INTO {table} \
             (key_id, {time}, provider_set, provider, status_class, calls, hist) "
        ));
        qb.push_values(chunk, |mut b, (k, (calls, hist))| {
            b.push_bind(k.key_id.clone())
                .push_bind(k.at)
                .push_bind(k.provider_set)
                .push_bind(k.provider.clone())
                .push_bind(k.status_class)
                .push_bind(int(*calls))
                .push_bind(hist_to_json(hist));
        });
        qb.build().execute(&mut *conn).await?;
    }
    Ok(())
}

#[async_trait]
impl UsageSink for SqliteStore {
    async fn write(&self, events: &[UsageEvent]) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let mut w = self.write().await?;
        let mut new_ids = insert_events(&mut w.tx, events).await?;
        let mut groups: BTreeMap<RollupKey, Cell> = BTreeMap::new();
        let mut last_used: HashMap<KeyId, DateTime<Utc>> = HashMap::new();
        for e in events {
            // `remove`: of repeats inside one batch, the first is the one that was stored.
            if !new_ids.remove(e.request_id.as_str()) {
                continue;
            }
            for key in RollupKey::of(e) {
                let g = groups.entry(key).or_default();
                g.0 += 1;
                g.1.record(e.latency_us);
            }
            if let Some(k) = e.key_id {
                let t = last_used.entry(k).or_insert(e.ts);
                *t = (*t).max(e.ts);
            }
        }
        add_rollups(&mut w.tx, &DAYS, fold(&groups, DAY_US)).await?;
        add_rollups(&mut w.tx, &HOURS, fold(&groups, HOUR_US)).await?;
        add_rollups(&mut w.tx, &MINUTES, groups).await?;
        SqliteStore::touch_keys(&mut w.tx, last_used).await?;
        Ok(w.commit().await?)
    }

    async fn purge_before(&self, before: DateTime<Utc>) -> Result<Purged> {
        let before = micros(before);
        let mut purged = Purged::default();
        // An hour of events per transaction, oldest first, so that writers wait for one
        // short delete at a time however far behind the retention is.
        for (table, column, count) in [
            ("kv_usage_events", "ts", &mut purged.events),
            ("kv_usage_rollup", "minute", &mut purged.minute_rollups),
        ] {
            let oldest = format!("SELECT min({column}) FROM {table}");
            let delete = format!("DELETE FROM {table} WHERE {column} < ?1");
            loop {
                let first: Option<i64> = sqlx::query_scalar(AssertSqlSafe(oldest.clone()))
                    .fetch_one(self.pool())
                    .await
                    .map_err(crate::Error::from)?;
                let Some(first) = first.filter(|&t| t < before) else {
                    break;
                };
                let upto = first.saturating_add(PURGE_STEP_MICROS).min(before);
                let mut w = self.write().await?;
                let done = sqlx::query(AssertSqlSafe(delete.clone()))
                    .bind(upto)
                    .execute(&mut *w.tx)
                    .await
                    .map_err(crate::Error::from)?;
                w.commit().await?;
                *count += done.rows_affected();
            }
        }
        Ok(purged)
    }
}

/// How much of the oldest usage one purge transaction removes: an hour.
const PURGE_STEP_MICROS: i64 = 3_600_000_000;

/// A span as the microseconds `[start, end)` that SQLite compares.
fn micros_of(s: Span) -> [i64; 2] {
    [micros(s.start), micros(s.end)]
}

/// The binds `?3`–`?12` of [`rollup_rows`]: the whole minutes before the hours, the hours
/// before the days, the days, the hours after them, the whole minutes after those.
fn rollup_binds(r: &RollupRanges) -> impl Iterator<Item = i64> {
    [
        r.minutes_before,
        r.hours_before,
        r.days,
        r.hours_after,
        r.minutes_after,
    ]
    .into_iter()
    .flat_map(micros_of)
}

/// The rollup rows a statistic reads (binds `?1` key, `?2` provider, `?3`–`?12` the five
/// rollup spans of [`rollup_binds`]): UNION ALL of simple primary-key range scans. `keys` is
/// the condition on `key_id`, `columns` what each row gives after its time `t`.
fn rollup_rows(keys: &str, columns: &str) -> String {
    let filter = format!("{keys} AND (?2 IS NULL OR (provider_set = 1 AND provider = ?2))");
    [MINUTES, HOURS, DAYS, HOURS, MINUTES]
        .iter()
        .enumerate()
        .map(|(i, Level { table, time })| {
            let (start, end) = (2 * i + 3, 2 * i + 4);
            format!(
                "SELECT {time} AS t, {columns} FROM {table} \
                 WHERE {filter} AND {time} >= ?{start} AND {time} < ?{end}"
            )
        })
        .collect::<Vec<_>>()
        .join(" UNION ALL ")
}

/// The overview's rows for one key (or all keys' rollups): [`rollup_rows`] on `key_id = ?1`.
fn key_rollup_rows(columns: &str) -> String {
    rollup_rows("key_id = ?1", columns)
}

impl SqliteStore {
    /// Adds the whole minutes of `ranges` from the rollups: whole hours from the hourly ones,
    /// the rest from the minute ones.
    async fn tally_rollups(
        &self,
        q: &StatsQuery,
        ranges: &RollupRanges,
        out: &mut OverviewBuilder,
    ) -> Result<(), crate::Error> {
        let step = q
            .step()
            .num_microseconds()
            .unwrap_or(MINUTE_US)
            .max(MINUTE_US);
        let key = q.key_id.map_or_else(|| all_keys().to_owned(), id_text);
        // The histogram has no time axis and always reads days and hours; the series only
        // where its steps hold them whole.
        let series = ranges.for_step(q.step());
        let sql = format!(
            "SELECT t - (((t % ?13) + ?13) % ?13), provider_set, provider, \
             status_class BETWEEN 2 AND 3, SUM(calls) FROM ({}) GROUP BY 1, 2, 3, 4",
            key_rollup_rows("provider_set, provider, status_class, calls")
        );
        let mut counts = sqlx::query_as(AssertSqlSafe(sql))
            .bind(&key)
            .bind(q.provider.as_deref());
        for t in rollup_binds(&series) {
            counts = counts.bind(t);
        }
        let rows: Vec<(i64, bool, String, bool, i64)> =
            counts.bind(step).fetch_all(&self.pool).await?;
        for (step_start, provider_set, provider, ok, calls) in rows {
            let calls = u64::try_from(calls).map_err(|e| corrupt("kv_usage_rollup.calls", e))?;
            out.add(
                provider_set.then_some(provider.as_str()),
                from_micros(step_start, "timeseries")?,
                calls,
                if ok { calls } else { 0 },
            );
        }
        // The histograms merge inside SQLite: one row per bucket comes back, not one per
        // rollup.
        let sql = format!(
            "SELECT CAST(j.key AS INTEGER), SUM(j.value) FROM ({}) AS r, json_each(r.hist) AS j \
             GROUP BY 1",
            key_rollup_rows("hist")
        );
        let mut hist = sqlx::query_as(AssertSqlSafe(sql))
            .bind(&key)
            .bind(q.provider.as_deref());
        for t in rollup_binds(ranges) {
            hist = hist.bind(t);
        }
        let rows: Vec<(i64, i64)> = hist.fetch_all(&self.pool).await?;
        for (bucket, count) in rows {
            let bucket = u16::try_from(bucket).map_err(|e| corrupt("kv_usage_rollup.hist", e))?;
            let count = u64::try_from(count).map_err(|e| corrupt("kv_usage_rollup.hist", e))?;
            out.latency().add(bucket, count);
        }
        Ok(())
    }

    /// Adds the raw events in `span` (a partial minute at an end of the range).
    async fn tally_events(
        &self,
        q: &StatsQuery,
        span: Span,
        out: &mut OverviewBuilder,
    ) -> Result<(), crate::Error> {
        if span.is_empty() {
            return Ok(());
        }
        let [from, to] = micros_of(span);
        let rows: Vec<(i64, Option<String>, i64, i64)> = sqlx::query_as(
            "SELECT ts, provider, status, latency_us FROM kv_usage_events \
             WHERE ts >= ?1 AND ts < ?2 AND (?3 IS NULL OR key_id = ?3) \
             AND (?4 IS NULL OR provider = ?4)",
        )
        .bind(from)
        .bind(to)
        .bind(q.key_id.map(id_text))
        .bind(q.provider.as_deref())
        .fetch_all(&self.pool)
        .await?;
        for (ts, provider, status, latency_us) in rows {
            let ok = (200..400).contains(&status);
            out.add(
                provider.as_deref(),
                from_micros(ts, "kv_usage_events.ts")?,
                1,
                u64::from(ok),
            );
            out.latency().record(u64::try_from(latency_us).unwrap_or(0));
        }
        Ok(())
    }

    /// Deletes raw usage events older than `before` (the retention setting) and returns how
    /// many, in chunks so that other writers are not held up. Statistics are unaffected: they
    /// read the hour and minute rollups, and raw events only for the partial minutes at the
    /// ends of a range. A retried batch older than the retention would be counted again, so keep at
    /// least a day.
    pub async fn purge_usage_before(&self, before: DateTime<Utc>) -> Result<u64> {
        let cut = micros(before);
        let mut deleted = 0u64;
        loop {
            let mut w = self.write().await?;
            let n = sqlx::query(
                "DELETE FROM kv_usage_events WHERE rowid IN \
                 (SELECT rowid FROM kv_usage_events WHERE ts < ?1 LIMIT ?2)",
            )
            .bind(cut)
            .bind(PURGE_CHUNK)
            .execute(&mut *w.tx)
            .await
            .map_err(backend)?
            .rows_affected();
            w.commit().await?;
            deleted += n;
            if n < PURGE_CHUNK as u64 {
                return Ok(deleted);
            }
        }
    }
}

/// `t` as SQLite holds it (microseconds), so that the range is cut where its comparisons do.
fn stored_precision(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(micros(t)).unwrap_or(t)
}

#[async_trait]
impl UsageQuery for SqliteStore {
    async fn overview(&self, q: &StatsQuery) -> Result<StatsOverview> {
        q.validate()?;
        let ranges = RollupRanges::split(stored_precision(q.from), stored_precision(q.to));
        let mut out = OverviewBuilder::new(q);
        if !ranges.whole_minutes().is_empty() {
            self.tally_rollups(q, &ranges, &mut out).await?;
        }
        self.tally_events(q, ranges.raw_head, &mut out).await?;
        self.tally_events(q, ranges.raw_tail, &mut out).await?;
        Ok(out.finish())
    }

    async fn key_windows(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        key: Option<KeyId>,
    ) -> Result<keyvault_core::KeyWindows> {
        // The time index, then one row per event of the window: windows are short.
        let rows: Vec<(String, i64, i64, Option<String>)> = sqlx::query_as(
            "SELECT key_id, status, latency_us, outcome FROM kv_usage_events \
             WHERE ts >= ?1 AND ts < ?2 AND key_id IS NOT NULL AND (?3 IS NULL OR key_id = ?3)",
        )
        .bind(micros(from))
        .bind(micros(to))
        .bind(key.map(id_text))
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        let mut out = keyvault_core::KeyWindows::new();
        for (key, status, latency, outcome) in rows {
            let key = parse_id(&key, "kv_usage_events.key_id")?;
            out.entry(key).or_default().add(
                u16::try_from(status).unwrap_or(500),
                u64::try_from(latency).unwrap_or(0),
                outcome_of(outcome.as_deref())?,
            );
        }
        Ok(out)
    }

    async fn per_second(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<std::collections::BTreeMap<i64, keyvault_core::SecondCounts>> {
        let rows: Vec<(i64, i64, i64, i64)> = sqlx::query_as(
            "SELECT ts / 1000000, count(*), \
               sum(status NOT BETWEEN 200 AND 399), \
               sum(outcome IS NOT NULL AND outcome <> 'VALID') \
             FROM kv_usage_events WHERE ts >= ?1 AND ts < ?2 GROUP BY 1",
        )
        .bind(micros(from))
        .bind(micros(to))
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        let n = |v: i64| u64::try_from(v).unwrap_or(0);
        Ok(rows
            .into_iter()
            .map(|(s, calls, errors, rejected)| {
                (
                    s,
                    keyvault_core::SecondCounts {
                        calls: n(calls),
                        errors: n(errors),
                        rejected: n(rejected),
                    },
                )
            })
            .collect())
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
        let ranges = RollupRanges::split(stored_precision(q.from), stored_precision(q.to));
        let ids = serde_json::to_string(&keys.iter().map(|k| id_text(*k)).collect::<Vec<_>>())
            .map_err(|e| backend(corrupt("key_id", e)))?;
        // Primary-key range scans per key over the rollups, the ts index over the raw ends.
        let keys = "key_id IN (SELECT value FROM json_each(?1))";
        let sql = format!(
            "SELECT key_id, SUM(calls) FROM ({} \
             UNION ALL SELECT 0, key_id, 1 FROM kv_usage_events \
             WHERE ((ts >= ?13 AND ts < ?14) OR (ts >= ?15 AND ts < ?16)) \
             AND {keys} AND (?2 IS NULL OR provider = ?2) \
             ) GROUP BY key_id",
            rollup_rows(keys, "key_id, calls")
        );
        let mut query = sqlx::query_as(AssertSqlSafe(sql))
            .bind(&ids)
            .bind(q.provider.as_deref());
        for t in rollup_binds(&ranges)
            .chain(micros_of(ranges.raw_head))
            .chain(micros_of(ranges.raw_tail))
        {
            query = query.bind(t);
        }
        let rows: Vec<(String, i64)> = query.fetch_all(&self.pool).await.map_err(backend)?;
        for (id, calls) in rows {
            let id = id
                .parse::<KeyId>()
                .map_err(|e| backend(corrupt("kv_usage_rollup.key_id", e)))?;
            out.insert(id, u64::try_from(calls).unwrap_or(0));
        }
        Ok(out)
    }
}

/// An event's outcome column: NULL, or an outcome code.
fn outcome_of(text: Option<&str>) -> Result<Option<keyvault_core::Outcome>, crate::Error> {
    text.map(|t| {
        serde_json::from_value(serde_json::Value::String(t.to_owned()))
            .map_err(|e| corrupt("kv_usage_events.outcome", e))
    })
    .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_round_trip_through_json() {
        let mut h = LatencyHistogram::default();
        for us in [50, 150, 150, 9_000, 2_000_000] {
            h.record(us);
        }
        assert_eq!(hist_from_json(&hist_to_json(&h)).unwrap(), h);
        assert!(hist_from_json("{\"x\":1}").is_err());
    }

    #[test]
    fn minutes_floor_before_the_epoch_too() {
        assert_eq!(minute_of(61_000_000), 60_000_000);
        assert_eq!(minute_of(-1), -60_000_000);
    }

    #[test]
    fn hour_and_day_cells_sum_their_minutes() {
        let cell = |at: i64, lat: u64| {
            let mut h = LatencyHistogram::default();
            h.record(lat);
            (
                RollupKey {
                    key_id: all_keys().to_owned(),
                    at,
                    provider_set: true,
                    provider: "p".into(),
                    status_class: 2,
                },
                (1, h),
            )
        };
        let minutes: BTreeMap<RollupKey, Cell> = [
            cell(-MINUTE_US, 50),
            cell(HOUR_US - MINUTE_US, 100),
            cell(HOUR_US, 200),
            cell(HOUR_US + 59 * MINUTE_US, 5_000),
        ]
        .into_iter()
        .collect();
        let sums = |unit| -> Vec<(i64, u64, u64)> {
            fold(&minutes, unit)
                .iter()
                .map(|(k, (calls, hist))| (k.at, *calls, hist.total()))
                .collect()
        };
        // Before the epoch the units floor, not truncate towards zero.
        assert_eq!(
            sums(HOUR_US),
            vec![(-HOUR_US, 1, 1), (0, 1, 1), (HOUR_US, 2, 2)]
        );
        assert_eq!(sums(DAY_US), vec![(-DAY_US, 1, 1), (0, 3, 3)]);
    }
}
