//! Usage: raw events in `kv_usage_events`, rollups per minute (`kv_usage_rollup`) and per
//! hour (`kv_usage_rollup_hour`), all written by one transaction per batch.

use std::collections::{BTreeMap, HashMap, HashSet};

use async_trait::async_trait;
use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use keyvault_core::{
    Error, LATENCY_BUCKETS, LatencyHistogram, ProviderStats, StatsOverview, StatsQuery, TimePoint,
    UNKNOWN_PROVIDER, UsageEvent, UsageQuery, UsageSink, success_rate,
};
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use crate::{PgStore, Result, corrupt, db, to_i64, to_u64};

/// The rollup row over all keys has this key id (UUIDv7 key ids are never nil).
pub(crate) const ALL_KEYS: Uuid = Uuid::nil();

/// The fast path: the batch in PostgreSQL's binary COPY format, the way bulk loads go in.
/// COPY has no `ON CONFLICT`: a `request_id` already stored aborts it (unique violation) and
/// the batch goes through [`INSERT_NEW`] instead, so a retried batch still counts once.
const COPY: &str = "COPY kv_usage_events (request_id, key_id, owner_id, ts, provider, route, \
    method, status, latency_us, latency_bucket, outcome, cost) FROM STDIN (FORMAT binary)";

/// The careful path, for batches that repeat a `request_id` (a retry after a timeout, or a
/// duplicate inside the batch): inserts what is new and returns which ids those were.
const INSERT_NEW: &str = "\
INSERT INTO kv_usage_events (request_id, key_id, owner_id, ts, provider, route, method,
    status, latency_us, latency_bucket, outcome, cost)
SELECT * FROM UNNEST($1::text[], $2::uuid[], $3::text[], $4::timestamptz[], $5::text[],
    $6::text[], $7::text[], $8::integer[], $9::bigint[], $10::smallint[], $11::text[],
    $12::bigint[])
ON CONFLICT (request_id) DO NOTHING
RETURNING request_id";

/// Adds the inserted events, aggregated per cell by [`Rollups`], to the minute and hour
/// rollups and moves the keys' `last_used_at`: one statement, ~one row per cell and level
/// whatever the batch size. Cells arrive sorted (nil key first), so that concurrent writers
/// lock rollup rows in one order. A cell's sparse histogram is the slice `[o + 1, o + l]` of
/// the flat bucket and count arrays. Merged histograms stay sparse and unsorted: both arrays
/// come from one aggregate pass, so they stay aligned, and readers only sum per bucket.
///
/// The transaction commits asynchronously (`synchronous_commit` off for it alone): usage is
/// telemetry whose buffer already sits in process memory, so a database crash may lose the
/// last fraction of a second of it, as it would the recorder's buffer, while batches stop
/// waiting for a WAL flush each. Keys, credits and audit keep the server's setting.
const ROLLUP: &str = "\
WITH minutes AS (
    INSERT INTO kv_usage_rollup AS r (key_id, minute, provider, status_class, calls,
        hist_buckets, hist_counts)
    SELECT c.k, c.t, c.p, c.s, c.n, ($7::smallint[])[c.o + 1 : c.o + c.l],
           ($8::bigint[])[c.o + 1 : c.o + c.l]
    FROM UNNEST($1::uuid[], $2::timestamptz[], $3::text[], $4::smallint[], $5::bigint[],
                $6::integer[], $9::integer[]) AS c(k, t, p, s, n, o, l)
    ON CONFLICT (key_id, minute, provider, status_class) DO UPDATE SET
        calls = r.calls + EXCLUDED.calls,
        (hist_buckets, hist_counts) = (
            SELECT array_agg(s.b), array_agg(s.c)
            FROM (SELECT u.b, sum(u.c)::bigint AS c
                  FROM unnest(r.hist_buckets || EXCLUDED.hist_buckets,
                              r.hist_counts || EXCLUDED.hist_counts) AS u(b, c)
                  GROUP BY u.b) AS s)
    RETURNING 1
), hours AS (
    INSERT INTO kv_usage_rollup_hour AS r (key_id, hour, provider, calls, errors,
        hist_buckets, hist_counts)
    SELECT c.k, c.t, c.p, c.n, c.e, ($16::smallint[])[c.o + 1 : c.o + c.l],
           ($17::bigint[])[c.o + 1 : c.o + c.l]
    FROM UNNEST($10::uuid[], $11::timestamptz[], $12::text[], $13::bigint[], $14::bigint[],
                $15::integer[], $18::integer[]) AS c(k, t, p, n, e, o, l)
    ON CONFLICT (key_id, hour, provider) DO UPDATE SET
        calls = r.calls + EXCLUDED.calls,
        errors = r.errors + EXCLUDED.errors,
        (hist_buckets, hist_counts) = (
            SELECT array_agg(s.b), array_agg(s.c)
            FROM (SELECT u.b, sum(u.c)::bigint AS c
                  FROM unnest(r.hist_buckets || EXCLUDED.hist_buckets,
                              r.hist_counts || EXCLUDED.hist_counts) AS u(b, c)
                  GROUP BY u.b) AS s)
    RETURNING 1
), used AS (
    UPDATE kv_keys AS k SET last_used_at = GREATEST(k.last_used_at, u.ts)
    FROM UNNEST($19::uuid[], $20::timestamptz[]) AS u(id, ts)
    WHERE k.id = u.id
    RETURNING 1
)
SELECT set_config('synchronous_commit', 'off', true)";

/// Calls and failed calls per (provider, step): whole hours from the hourly rollups, whole
/// minutes from the minute rollups, the partial minutes at either end of the range from raw
/// events. `$2` is the step in seconds; hours are only read when the step is a whole number
/// of hours (otherwise `$8 = $9` and the minutes cover the range).
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
    WHERE key_id = $1 AND hour >= $8 AND hour < $9 AND ($3::text IS NULL OR provider = $3)
    UNION ALL
    SELECT coalesce(provider, ''), ts, 1, CASE WHEN status BETWEEN 200 AND 399 THEN 0 ELSE 1 END
    FROM kv_usage_events
    WHERE ((ts >= $10 AND ts < $11) OR (ts >= $12 AND ts < $13))
      AND ($14::uuid IS NULL OR key_id = $14) AND ($3::text IS NULL OR provider = $3)
) AS x
GROUP BY 1, 2";

/// The latency histogram over the same range: whole hours always from the hourly rollups.
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
    WHERE r.key_id = $1 AND r.hour >= $7 AND r.hour < $8
      AND ($2::text IS NULL OR r.provider = $2)
    UNION ALL
    SELECT latency_bucket, 1
    FROM kv_usage_events
    WHERE ((ts >= $9 AND ts < $10) OR (ts >= $11 AND ts < $12))
      AND ($13::uuid IS NULL OR key_id = $13) AND ($2::text IS NULL OR provider = $2)
) AS x GROUP BY b";

/// The histogram bucket of an event, as stored (`smallint`).
fn bucket(e: &UsageEvent) -> i16 {
    i16::try_from(LatencyHistogram::bucket_of(e.latency_us)).unwrap_or(i16::MAX)
}

/// Seconds since the epoch, floored to a multiple of `unit` seconds, as a time.
fn floor_to(t: DateTime<Utc>, unit: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(t.timestamp().div_euclid(unit) * unit, 0).unwrap_or(t)
}

/// One rollup cell of a batch: calls, failed calls and a dense histogram (sent sparse).
#[derive(Clone)]
struct Cell {
    calls: i64,
    errors: i64,
    hist: Vec<i64>,
}

impl Default for Cell {
    fn default() -> Self {
        Self {
            calls: 0,
            errors: 0,
            hist: vec![0; usize::from(LATENCY_BUCKETS)],
        }
    }
}

impl Cell {
    fn add(&mut self, bucket: i16, failed: bool) {
        self.calls += 1;
        self.errors += i64::from(failed);
        let i = usize::from(bucket.unsigned_abs()).min(self.hist.len() - 1);
        self.hist[i] += 1;
    }

    fn merge(&mut self, other: &Cell) {
        self.calls += other.calls;
        self.errors += other.errors;
        for (a, b) in self.hist.iter_mut().zip(&other.hist) {
            *a += b;
        }
    }
}

/// A minute rollup cell: (key, minute, provider, status class).
type MinuteCell<'a, K> = (K, DateTime<Utc>, &'a str, i16);

/// A batch's inserted events summed per (key or none, minute, provider, status class): one
/// map update per event. [`Rollups::write`] derives the all-keys and hourly cells from these,
/// so that [`ROLLUP`] touches each rollup row once per batch.
#[derive(Default)]
struct Rollups<'a> {
    cells: HashMap<MinuteCell<'a, Option<Uuid>>, Cell>,
    used: HashMap<Uuid, DateTime<Utc>>,
}

/// Flat columns of a set of cells, as [`ROLLUP`] binds them.
#[derive(Default)]
struct CellColumns<'a> {
    key: Vec<Uuid>,
    at: Vec<DateTime<Utc>>,
    provider: Vec<&'a str>,
    class: Vec<i16>,
    calls: Vec<i64>,
    errors: Vec<i64>,
    offset: Vec<i32>,
    len: Vec<i32>,
    buckets: Vec<i16>,
    counts: Vec<i64>,
}

impl<'a> CellColumns<'a> {
    fn push(
        &mut self,
        key: Uuid,
        at: DateTime<Utc>,
        provider: &'a str,
        class: i16,
        cell: &Cell,
    ) -> Result<()> {
        let too_big = |_| Error::invalid("events", "too many histogram entries in one batch");
        self.key.push(key);
        self.at.push(at);
        self.provider.push(provider);
        self.class.push(class);
        self.calls.push(cell.calls);
        self.errors.push(cell.errors);
        self.offset
            .push(i32::try_from(self.buckets.len()).map_err(too_big)?);
        let start = self.buckets.len();
        for (b, &c) in cell.hist.iter().enumerate() {
            if c != 0 {
                self.buckets.push(i16::try_from(b).unwrap_or(i16::MAX));
                self.counts.push(c);
            }
        }
        self.len
            .push(i32::try_from(self.buckets.len() - start).map_err(too_big)?);
        Ok(())
    }
}

impl<'a> Rollups<'a> {
    fn add(&mut self, e: &'a UsageEvent, bucket: i16) {
        let provider = e.provider.as_deref().unwrap_or("");
        let class = i16::try_from(e.status / 100).unwrap_or(i16::MAX);
        let key = e.key_id.map(|k| *k.as_uuid());
        self.cells
            .entry((key, floor_to(e.ts, 60), provider, class))
            .or_default()
            .add(bucket, !e.is_success());
        if let Some(k) = key {
            let t = self.used.entry(k).or_insert(e.ts);
            *t = (*t).max(e.ts);
        }
    }

    async fn write(&self, conn: &mut PgConnection) -> Result<()> {
        // BTreeMaps: the cells come out sorted (nil key first), the lock order of the rows.
        let mut minutes: BTreeMap<MinuteCell<'_, Uuid>, Cell> = BTreeMap::new();
        let mut hours: BTreeMap<(Uuid, DateTime<Utc>, &str), Cell> = BTreeMap::new();
        for (&(key, minute, provider, class), cell) in &self.cells {
            let hour = floor_to(minute, 3_600);
            for k in [Some(ALL_KEYS), key].into_iter().flatten() {
                minutes
                    .entry((k, minute, provider, class))
                    .or_default()
                    .merge(cell);
                hours.entry((k, hour, provider)).or_default().merge(cell);
            }
        }
        let mut m = CellColumns::default();
        for (&(k, t, p, s), cell) in &minutes {
            m.push(k, t, p, s, cell)?;
        }
        let mut h = CellColumns::default();
        for (&(k, t, p), cell) in &hours {
            h.push(k, t, p, 0, cell)?;
        }
        let mut used: Vec<(Uuid, DateTime<Utc>)> =
            self.used.iter().map(|(k, t)| (*k, *t)).collect();
        used.sort_unstable();
        let (used_key, used_at): (Vec<Uuid>, Vec<DateTime<Utc>>) = used.into_iter().unzip();
        sqlx::query(ROLLUP)
            .bind(&m.key)
            .bind(&m.at)
            .bind(&m.provider)
            .bind(&m.class)
            .bind(&m.calls)
            .bind(&m.offset)
            .bind(&m.buckets)
            .bind(&m.counts)
            .bind(&m.len)
            .bind(&h.key)
            .bind(&h.at)
            .bind(&h.provider)
            .bind(&h.calls)
            .bind(&h.errors)
            .bind(&h.offset)
            .bind(&h.buckets)
            .bind(&h.counts)
            .bind(&h.len)
            .bind(&used_key)
            .bind(&used_at)
            .execute(conn)
            .await
            .map_err(db)?;
        Ok(())
    }
}

/// The batch in PostgreSQL's binary COPY format (header, one tuple per event, trailer), in
/// [`COPY`]'s column order. Checks the values that `bigint` cannot hold, naming the field.
fn encode(events: &[UsageEvent], buckets: &[i16]) -> Result<Vec<u8>> {
    fn field(buf: &mut Vec<u8>, bytes: Option<&[u8]>) -> Result<()> {
        match bytes {
            Some(b) => {
                let len = i32::try_from(b.len())
                    .map_err(|_| Error::invalid("events", "a text field is too long"))?;
                buf.extend_from_slice(&len.to_be_bytes());
                buf.extend_from_slice(b);
            }
            None => buf.extend_from_slice(&(-1i32).to_be_bytes()),
        }
        Ok(())
    }
    // PostgreSQL counts timestamps in microseconds from 2000-01-01 UTC.
    const PG_EPOCH_SECS: i64 = 946_684_800;
    let pg_epoch = DateTime::<Utc>::from_timestamp(PG_EPOCH_SECS, 0).unwrap_or_default();
    let mut buf = Vec::with_capacity(19 + events.len() * 160 + 2);
    buf.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
    buf.extend_from_slice(&0i32.to_be_bytes()); // flags
    buf.extend_from_slice(&0i32.to_be_bytes()); // header extension length
    for (i, (e, &b)) in events.iter().zip(buckets).enumerate() {
        let latency = event_i64(e.latency_us, i, "latency_us")?;
        let cost = event_i64(e.cost, i, "cost")?;
        let micros = (e.ts - pg_epoch)
            .num_microseconds()
            .ok_or_else(|| Error::invalid(format!("events[{i}].ts"), "out of range"))?;
        buf.extend_from_slice(&12i16.to_be_bytes());
        field(&mut buf, Some(e.request_id.as_bytes()))?;
        field(
            &mut buf,
            e.key_id.as_ref().map(|k| k.as_uuid().as_bytes().as_slice()),
        )?;
        field(&mut buf, e.owner_id.as_deref().map(str::as_bytes))?;
        field(&mut buf, Some(&micros.to_be_bytes()))?;
        field(&mut buf, e.provider.as_deref().map(str::as_bytes))?;
        field(&mut buf, e.route.as_deref().map(str::as_bytes))?;
        field(&mut buf, e.method.as_deref().map(str::as_bytes))?;
        field(&mut buf, Some(&i32::from(e.status).to_be_bytes()))?;
        field(&mut buf, Some(&latency.to_be_bytes()))?;
        field(&mut buf, Some(&b.to_be_bytes()))?;
        field(&mut buf, e.outcome.map(|o| o.as_str().as_bytes()))?;
        field(&mut buf, Some(&cost.to_be_bytes()))?;
    }
    buf.extend_from_slice(&(-1i16).to_be_bytes());
    Ok(buf)
}

/// An event's number as a `bigint`. The field is named (`events[i].name`) only when the value
/// does not fit: formatting the name for every event of a batch cost more than the encoding.
fn event_i64(value: u64, i: usize, name: &str) -> Result<i64> {
    i64::try_from(value).or_else(|_| to_i64(value, &format!("events[{i}].{name}")))
}

/// Streams a batch into `kv_usage_events` with [`COPY`].
async fn copy(conn: &mut PgConnection, data: &[u8]) -> sqlx::Result<()> {
    let mut copy = conn.copy_in_raw(COPY).await?;
    copy.send(data).await?;
    copy.finish().await?;
    Ok(())
}

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
            c.latency_us.push(event_i64(e.latency_us, i, "latency_us")?);
            c.bucket.push(
                LatencyHistogram::bucket_of(e.latency_us)
                    .try_into()
                    .unwrap_or(i16::MAX),
            );
            c.outcome.push(e.outcome.map(|o| o.as_str()));
            c.cost.push(event_i64(e.cost, i, "cost")?);
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

/// The rollup ranges within the whole minutes of a statistics range: whole UTC hours, and
/// the whole minutes before and after them.
struct Levels {
    before: (DateTime<Utc>, DateTime<Utc>),
    hours: (DateTime<Utc>, DateTime<Utc>),
    after: (DateTime<Utc>, DateTime<Utc>),
}

fn levels(minutes: (DateTime<Utc>, DateTime<Utc>)) -> Levels {
    let (from, to) = minutes;
    let hour = TimeDelta::hours(1);
    let first = {
        let f = floor_to(from, 3_600);
        if f == from { f } else { f + hour }
    };
    let last = floor_to(to, 3_600);
    if first < last {
        Levels {
            before: (from, first),
            hours: (first, last),
            after: (last, to),
        }
    } else {
        Levels {
            before: (from, to),
            hours: (to, to),
            after: (to, to),
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
        let step = q.step().num_seconds();
        // A time series finer than an hour needs minutes throughout.
        let l = if step % 3_600 == 0 {
            levels(s.minutes)
        } else {
            Levels {
                before: s.minutes,
                hours: (s.minutes.1, s.minutes.1),
                after: (s.minutes.1, s.minutes.1),
            }
        };
        sqlx::query(COUNTS)
            .bind(key)
            .bind(step)
            .bind(&q.provider)
            .bind(l.before.0)
            .bind(l.before.1)
            .bind(l.after.0)
            .bind(l.after.1)
            .bind(l.hours.0)
            .bind(l.hours.1)
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
        let l = levels(s.minutes);
        sqlx::query(HISTOGRAM)
            .bind(key)
            .bind(&q.provider)
            .bind(l.before.0)
            .bind(l.before.1)
            .bind(l.after.0)
            .bind(l.after.1)
            .bind(l.hours.0)
            .bind(l.hours.1)
            .bind(s.head.0)
            .bind(s.head.1)
            .bind(s.tail.0)
            .bind(s.tail.1)
            .bind(q.key_id.map(|k| *k.as_uuid()))
            .fetch_all(&self.pool)
            .await
            .map_err(db)
    }

    /// Inserts a batch whose request ids are all distinct with one binary COPY and adds it
    /// to the rollups. `Ok(false)`: an id is already stored; nothing was written.
    async fn write_new(&self, events: &[UsageEvent], buckets: &[i16]) -> Result<bool> {
        let data = encode(events, buckets)?;
        let mut tx = self.pool.begin().await.map_err(db)?;
        match copy(&mut tx, &data).await {
            Ok(()) => {}
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                tx.rollback().await.map_err(db)?;
                return Ok(false);
            }
            Err(e) => return Err(db(e)),
        }
        let mut r = Rollups::default();
        for (e, &b) in events.iter().zip(buckets) {
            r.add(e, b);
        }
        r.write(&mut tx).await?;
        tx.commit().await.map_err(db)?;
        Ok(true)
    }

    /// Inserts the events of a batch whose `request_id` is not stored yet (the first of
    /// duplicates inside the batch) and adds exactly those to the rollups.
    async fn write_some(&self, events: &[UsageEvent], buckets: &[i16]) -> Result<()> {
        let c = Columns::of(events)?;
        let mut tx = self.pool.begin().await.map_err(db)?;
        let inserted: Vec<String> = sqlx::query_scalar(INSERT_NEW)
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
            .fetch_all(&mut *tx)
            .await
            .map_err(db)?;
        let mut new: HashSet<&str> = inserted.iter().map(String::as_str).collect();
        let mut r = Rollups::default();
        for (e, &b) in events.iter().zip(buckets) {
            // UNNEST keeps the batch's order, so the first of duplicates was inserted.
            if new.remove(e.request_id.as_str()) {
                r.add(e, b);
            }
        }
        r.write(&mut tx).await?;
        tx.commit().await.map_err(db)?;
        Ok(())
    }
}

#[async_trait]
impl UsageSink for PgStore {
    /// The common case, a batch of new events, goes in with binary COPY; a batch that
    /// repeats a stored or in-batch `request_id` falls back to `INSERT … ON CONFLICT DO
    /// NOTHING`. Either way only inserted events reach the rollups, in the same transaction.
    async fn write(&self, events: &[UsageEvent]) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let buckets: Vec<i16> = events.iter().map(bucket).collect();
        let mut seen = HashSet::with_capacity(events.len());
        let distinct = events.iter().all(|e| seen.insert(e.request_id.as_str()));
        if distinct && self.write_new(events, &buckets).await? {
            return Ok(());
        }
        self.write_some(events, &buckets).await
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
            let step: i64 = row.try_get("step").map_err(db)?;
            let n = to_u64(row.try_get("calls").map_err(db)?, "usage calls")?;
            let failed = to_u64(row.try_get("errors").map_err(db)?, "usage errors")?;
            let good = n.saturating_sub(failed);
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
                    .ok_or_else(|| corrupt("time series step", "out of range"))?;
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
