//! Writing usage: a batch's raw events into `kv_usage_events` (binary COPY, or an insert that
//! skips stored request ids), and the events that were new added to the minute, hour and day
//! rollups and to keys' `last_used_at`, in one transaction.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::LazyLock,
};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use keyvault_core::{
    ALL_KEYS_ROLLUP, Error, LATENCY_BUCKETS, LatencyHistogram, UsageEvent, UsageSink,
};
use sqlx::{PgConnection, Postgres, postgres::PgArguments, query::Query};
use uuid::Uuid;

use crate::{PgStore, Result, db, to_i64};

/// Request ids are claimed in `kv_usage_ids` before their events are inserted, except the
/// ids keyvault generated ([`RequestId::is_generated`](keyvault_core::RequestId)): such an
/// event is only ever written again as itself, so the events' own key `(request_id, ts)`
/// recognises it. A caller's id may come back with another time (reported to two instances
/// that each stamped it), which only the claim recognises.
///
/// The fast path's claim: the given ids of a batch, with the times they are stored under, in
/// binary COPY format. COPY has no `ON CONFLICT`: an id already stored aborts it (unique
/// violation on `kv_usage_ids`' primary key) and the batch goes through [`CLAIM_NEW`]
/// instead, so a retried batch still counts once.
const COPY_IDS: &str = "COPY kv_usage_ids (request_id, ts) FROM STDIN (FORMAT binary)";

/// The fast path's events, the way bulk loads go in (routed to the partitions of their
/// days). An event already stored aborts it (unique violation on `(request_id, ts)`, in the
/// partition of its day), and the batch goes through [`CLAIM_NEW`] and [`INSERT_NEW`].
const COPY: &str = "COPY kv_usage_events (request_id, key_id, owner_id, ts, provider, route, \
    method, status, latency_us, latency_bucket, outcome, cost) FROM STDIN (FORMAT binary)";

/// The careful path's claim, for batches that repeat a `request_id` (a retry after a
/// timeout, a duplicate inside the batch, or one id reported to several instances, each of
/// which stamped its own time): claims the given ids not stored yet and returns them.
/// UNNEST keeps the batch's order, so of duplicates inside the batch the first is claimed.
const CLAIM_NEW: &str = "\
INSERT INTO kv_usage_ids (request_id, ts)
SELECT * FROM UNNEST($1::text[], $2::timestamptz[])
ON CONFLICT (request_id) DO NOTHING
RETURNING request_id";

/// The careful path's insert: the events of generated ids and of newly claimed ones, those
/// not stored yet, returning which those were. The key is `(request_id, ts)`, as the
/// partitioned table requires: a retried event carries its first attempt's ts, so it is the
/// same row.
const INSERT_NEW: &str = "\
INSERT INTO kv_usage_events (request_id, key_id, owner_id, ts, provider, route, method,
    status, latency_us, latency_bucket, outcome, cost)
SELECT * FROM UNNEST($1::text[], $2::uuid[], $3::text[], $4::timestamptz[], $5::text[],
    $6::text[], $7::text[], $8::integer[], $9::bigint[], $10::smallint[], $11::text[],
    $12::bigint[])
ON CONFLICT (request_id, ts) DO NOTHING
RETURNING request_id, ts";

/// Adds the inserted events, aggregated per cell by [`Rollups`], to the minute, hour and day
/// rollups and moves the keys' `last_used_at`: one statement, ~one row per cell and level
/// whatever the batch size. Cells arrive sorted (nil key first), so that concurrent writers
/// lock rollup rows in one order. A cell's sparse histogram is the slice `[o + 1, o + l]` of
/// the flat bucket and count arrays. Merged histograms stay sparse and unsorted: both arrays
/// come from one aggregate pass, so they stay aligned, and readers only sum per bucket.
///
/// Binds: the minute cells `$1`–`$9`, the hour cells `$10`–`$18` and the day cells
/// `$19`–`$27` ([`CellColumns`] in [`bind_cells`]'s order), the keys used `$28`–`$29`.
///
/// Binds `$30`: commit asynchronously (`synchronous_commit` off for this transaction alone,
/// [`PgStore::asynchronous_usage_commit`]); otherwise the session's setting stands.
static ROLLUP: LazyLock<String> = LazyLock::new(|| {
    format!(
        "\
WITH minutes AS (
    INSERT INTO kv_usage_rollup AS r (key_id, minute, provider, status_class, calls,
        hist_buckets, hist_counts)
    SELECT c.k, c.t, c.p, c.s, c.n, ($7::smallint[])[c.o + 1 : c.o + c.l],
           ($8::bigint[])[c.o + 1 : c.o + c.l]
    FROM UNNEST($1::uuid[], $2::timestamptz[], $3::text[], $4::smallint[], $5::bigint[],
                $6::integer[], $9::integer[]) AS c(k, t, p, s, n, o, l)
    ON CONFLICT (key_id, minute, provider, status_class) DO UPDATE SET
        calls = r.calls + EXCLUDED.calls,
        {MERGE_HISTOGRAMS}
    RETURNING 1
), hours AS (
    {hours}
), days AS (
    {days}
), used AS (
    UPDATE kv_keys AS k SET last_used_at = GREATEST(k.last_used_at, u.ts)
    FROM UNNEST($28::uuid[], $29::timestamptz[]) AS u(id, ts)
    WHERE k.id = u.id
    RETURNING 1
)
SELECT set_config('synchronous_commit',
    CASE WHEN $30 THEN 'off' ELSE current_setting('synchronous_commit') END, true)",
        hours = coarse_level("kv_usage_rollup_hour", "hour", 10),
        days = coarse_level("kv_usage_rollup_day", "day", 19),
    )
});

/// The stored histogram merged with the one a rollup upsert adds, bucket by bucket.
const MERGE_HISTOGRAMS: &str = "\
(hist_buckets, hist_counts) = (
            SELECT array_agg(s.b), array_agg(s.c)
            FROM (SELECT u.b, sum(u.c)::bigint AS c
                  FROM unnest(r.hist_buckets || EXCLUDED.hist_buckets,
                              r.hist_counts || EXCLUDED.hist_counts) AS u(b, c)
                  GROUP BY u.b) AS s)";

/// The upsert of [`ROLLUP`] into the hour or day rollups (no status class, failed calls
/// counted), its nine cell columns bound from `$first` in [`bind_cells`]'s order.
fn coarse_level(table: &str, time: &str, first: u32) -> String {
    let b = |i: u32| first + i;
    format!(
        "INSERT INTO {table} AS r (key_id, {time}, provider, calls, errors, hist_buckets, \
             hist_counts)
    SELECT c.k, c.t, c.p, c.n, c.e, (${buckets}::smallint[])[c.o + 1 : c.o + c.l],
           (${counts}::bigint[])[c.o + 1 : c.o + c.l]
    FROM UNNEST(${key}::uuid[], ${at}::timestamptz[], ${provider}::text[], ${calls}::bigint[],
                ${errors}::bigint[], ${offset}::integer[], ${len}::integer[])
         AS c(k, t, p, n, e, o, l)
    ON CONFLICT (key_id, {time}, provider) DO UPDATE SET
        calls = r.calls + EXCLUDED.calls,
        errors = r.errors + EXCLUDED.errors,
        {MERGE_HISTOGRAMS}
    RETURNING 1",
        key = b(0),
        at = b(1),
        provider = b(2),
        calls = b(3),
        errors = b(4),
        offset = b(5),
        buckets = b(6),
        counts = b(7),
        len = b(8),
    )
}

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

/// An hour or day rollup cell: (key, hour or day, provider).
type CoarseCell<'a> = (Uuid, DateTime<Utc>, &'a str);

/// A batch's inserted events summed per (key or none, minute, provider, status class): one
/// map update per event. [`Rollups::write`] derives the all-keys, hour and day cells from these,
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

    async fn write(&self, conn: &mut PgConnection, asynchronous: bool) -> Result<()> {
        // BTreeMaps: the cells come out sorted (nil key first), the lock order of the rows.
        let mut minutes: BTreeMap<MinuteCell<'_, Uuid>, Cell> = BTreeMap::new();
        let mut hours: BTreeMap<CoarseCell<'_>, Cell> = BTreeMap::new();
        let mut days: BTreeMap<CoarseCell<'_>, Cell> = BTreeMap::new();
        for (&(key, minute, provider, class), cell) in &self.cells {
            let (hour, day) = (floor_to(minute, 3_600), floor_to(minute, 86_400));
            for k in [Some(ALL_KEYS_ROLLUP), key].into_iter().flatten() {
                minutes
                    .entry((k, minute, provider, class))
                    .or_default()
                    .merge(cell);
                hours.entry((k, hour, provider)).or_default().merge(cell);
                days.entry((k, day, provider)).or_default().merge(cell);
            }
        }
        let mut m = CellColumns::default();
        for (&(k, t, p, s), cell) in &minutes {
            m.push(k, t, p, s, cell)?;
        }
        let coarse = |cells: &BTreeMap<CoarseCell<'a>, Cell>| -> Result<CellColumns<'a>> {
            let mut c = CellColumns::default();
            for (&(k, t, p), cell) in cells {
                c.push(k, t, p, 0, cell)?;
            }
            Ok(c)
        };
        let (h, d) = (coarse(&hours)?, coarse(&days)?);
        let mut used: Vec<(Uuid, DateTime<Utc>)> =
            self.used.iter().map(|(k, t)| (*k, *t)).collect();
        used.sort_unstable();
        let (used_key, used_at): (Vec<Uuid>, Vec<DateTime<Utc>>) = used.into_iter().unzip();
        let query = sqlx::query(&**ROLLUP)
            .bind(&m.key)
            .bind(&m.at)
            .bind(&m.provider)
            .bind(&m.class)
            .bind(&m.calls)
            .bind(&m.offset)
            .bind(&m.buckets)
            .bind(&m.counts)
            .bind(&m.len);
        bind_cells(bind_cells(query, &h), &d)
            .bind(&used_key)
            .bind(&used_at)
            .bind(asynchronous)
            .execute(conn)
            .await
            .map_err(db)?;
        Ok(())
    }
}

/// Binds an hour or day level's cells as [`coarse_level`] reads them.
fn bind_cells<'q>(
    query: Query<'q, Postgres, PgArguments>,
    c: &'q CellColumns<'_>,
) -> Query<'q, Postgres, PgArguments> {
    query
        .bind(&c.key)
        .bind(&c.at)
        .bind(&c.provider)
        .bind(&c.calls)
        .bind(&c.errors)
        .bind(&c.offset)
        .bind(&c.buckets)
        .bind(&c.counts)
        .bind(&c.len)
}

/// A table's rows in PostgreSQL's binary COPY format: the header, then [`Copy::tuple`]
/// and its fields per row, then [`Copy::finish`].
struct Copy(Vec<u8>);

impl Copy {
    fn with_capacity(rows: usize, row_bytes: usize) -> Self {
        let mut buf = Vec::with_capacity(19 + rows * row_bytes + 2);
        buf.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
        buf.extend_from_slice(&0i32.to_be_bytes()); // flags
        buf.extend_from_slice(&0i32.to_be_bytes()); // header extension length
        Self(buf)
    }

    fn tuple(&mut self, fields: i16) {
        self.0.extend_from_slice(&fields.to_be_bytes());
    }

    /// One field: its length and bytes, or NULL.
    fn field(&mut self, bytes: Option<&[u8]>) -> Result<()> {
        match bytes {
            Some(b) => {
                let len = i32::try_from(b.len())
                    .map_err(|_| Error::invalid("events", "a text field is too long"))?;
                self.0.extend_from_slice(&len.to_be_bytes());
                self.0.extend_from_slice(b);
            }
            None => self.0.extend_from_slice(&(-1i32).to_be_bytes()),
        }
        Ok(())
    }

    fn finish(mut self) -> Vec<u8> {
        self.0.extend_from_slice(&(-1i16).to_be_bytes());
        self.0
    }
}

/// An event's time as COPY sends it, or an error naming the event.
fn copy_ts(e: &UsageEvent, i: usize) -> Result<[u8; 8]> {
    pg_micros(e.ts)
        .map(i64::to_be_bytes)
        .ok_or_else(|| Error::invalid(format!("events[{i}].ts"), "out of range"))
}

/// Ids and times (with the events' indexes in the batch, which errors name) in
/// [`COPY_IDS`]' column order.
fn encode_ids(events: &[(usize, &UsageEvent)]) -> Result<Vec<u8>> {
    let mut c = Copy::with_capacity(events.len(), 60);
    for &(i, e) in events {
        c.tuple(2);
        c.field(Some(e.request_id.as_bytes()))?;
        c.field(Some(&copy_ts(e, i)?))?;
    }
    Ok(c.finish())
}

/// Events (with their indexes in the batch, which errors name) in [`COPY`]'s column order.
/// Checks the values that `bigint` cannot hold, naming the field.
fn encode<'a>(
    events: impl ExactSizeIterator<Item = (usize, &'a UsageEvent, i16)>,
) -> Result<Vec<u8>> {
    let mut c = Copy::with_capacity(events.len(), 160);
    for (i, e, b) in events {
        let latency = event_i64(e.latency_us, i, "latency_us")?;
        let cost = event_i64(e.cost, i, "cost")?;
        c.tuple(12);
        c.field(Some(e.request_id.as_bytes()))?;
        c.field(e.key_id.as_ref().map(|k| k.as_uuid().as_bytes().as_slice()))?;
        c.field(e.owner_id.as_deref().map(str::as_bytes))?;
        c.field(Some(&copy_ts(e, i)?))?;
        c.field(e.provider.as_deref().map(str::as_bytes))?;
        c.field(e.route.as_deref().map(str::as_bytes))?;
        c.field(e.method.as_deref().map(str::as_bytes))?;
        c.field(Some(&i32::from(e.status).to_be_bytes()))?;
        c.field(Some(&latency.to_be_bytes()))?;
        c.field(Some(&b.to_be_bytes()))?;
        c.field(e.outcome.map(|o| o.as_str().as_bytes()))?;
        c.field(Some(&cost.to_be_bytes()))?;
    }
    Ok(c.finish())
}

/// A time as PostgreSQL stores it: microseconds from 2000-01-01 UTC, truncated as sqlx's
/// own encoding truncates them (None: out of range).
fn pg_micros(t: DateTime<Utc>) -> Option<i64> {
    const PG_EPOCH_SECS: i64 = 946_684_800;
    let pg_epoch = DateTime::<Utc>::from_timestamp(PG_EPOCH_SECS, 0).unwrap_or_default();
    (t - pg_epoch).num_microseconds()
}

/// An event's number as a `bigint`. The field is named (`events[i].name`) only when the value
/// does not fit: formatting the name for every event of a batch cost more than the encoding.
fn event_i64(value: u64, i: usize, name: &str) -> Result<i64> {
    i64::try_from(value).or_else(|_| to_i64(value, &format!("events[{i}].{name}")))
}

/// Streams rows in binary COPY format with `statement` ([`COPY_IDS`] or [`COPY`]).
async fn copy(conn: &mut PgConnection, statement: &'static str, data: &[u8]) -> sqlx::Result<()> {
    let mut copy = conn.copy_in_raw(statement).await?;
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
    fn of(events: &[(usize, &'a UsageEvent)]) -> Result<Self> {
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
        for &(i, e) in events {
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

/// The events of a batch whose ids are claimed in `kv_usage_ids` (not generated), with
/// their indexes in the batch.
fn given(events: &[UsageEvent]) -> Vec<(usize, &UsageEvent)> {
    events
        .iter()
        .enumerate()
        .filter(|(_, e)| !e.request_id.is_generated())
        .collect()
}

/// A fast-path COPY that failed: on a unique violation (something already stored), or a row
/// routed to the DEFAULT partition while its day's partition was being attached (a check
/// violation, SQLSTATE 23514: the COPY had looked up the partitions before the attach), the
/// transaction is rolled back and the batch goes the careful way (`Ok(false)`), whose
/// statements route afresh.
async fn refused(tx: sqlx::Transaction<'_, Postgres>, e: sqlx::Error) -> Result<bool> {
    match e {
        sqlx::Error::Database(d)
            if d.is_unique_violation() || d.code().as_deref() == Some("23514") =>
        {
            tx.rollback().await.map_err(db)?;
            Ok(false)
        }
        e => Err(db(e)),
    }
}

impl PgStore {
    /// Writes a batch whose request ids are all distinct with binary COPY (the given ids,
    /// then the events) and adds it to the rollups. `Ok(false)`: an id or event is already
    /// stored; nothing was written.
    async fn write_new(&self, events: &[UsageEvent], buckets: &[i16]) -> Result<bool> {
        let given = given(events);
        let ids = (!given.is_empty())
            .then(|| encode_ids(&given))
            .transpose()?;
        let data = encode(
            events
                .iter()
                .zip(buckets)
                .enumerate()
                .map(|(i, (e, &b))| (i, e, b)),
        )?;
        let mut tx = self.pool.begin().await.map_err(db)?;
        if let Some(ids) = &ids
            && let Err(e) = copy(&mut tx, COPY_IDS, ids).await
        {
            return refused(tx, e).await;
        }
        if let Err(e) = copy(&mut tx, COPY, &data).await {
            return refused(tx, e).await;
        }
        let mut r = Rollups::default();
        for (e, &b) in events.iter().zip(buckets) {
            r.add(e, b);
        }
        r.write(&mut tx, self.asynchronous_usage).await?;
        tx.commit().await.map_err(db)?;
        Ok(true)
    }

    /// Claims the given ids of a batch that are not stored yet, inserts the events of those
    /// and of generated ids that are not stored yet (the first of duplicates inside the
    /// batch), and adds exactly those to the rollups.
    async fn write_some(&self, events: &[UsageEvent], buckets: &[i16]) -> Result<()> {
        let given = given(events);
        let mut tx = self.pool.begin().await.map_err(db)?;
        let claimed: Vec<String> = if given.is_empty() {
            Vec::new()
        } else {
            let ids: Vec<&str> = given.iter().map(|(_, e)| e.request_id.as_str()).collect();
            let ts: Vec<DateTime<Utc>> = given.iter().map(|(_, e)| e.ts).collect();
            sqlx::query_scalar(CLAIM_NEW)
                .bind(&ids)
                .bind(&ts)
                .fetch_all(&mut *tx)
                .await
                .map_err(db)?
        };
        let mut claimed: HashSet<&str> = claimed.iter().map(String::as_str).collect();
        let candidates: Vec<(usize, &UsageEvent)> = events
            .iter()
            .enumerate()
            .filter(|(_, e)| e.request_id.is_generated() || claimed.remove(e.request_id.as_str()))
            .collect();
        let c = Columns::of(&candidates)?;
        let inserted: Vec<(String, DateTime<Utc>)> = sqlx::query_as(INSERT_NEW)
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
        // Times as stored: microseconds, as sqlx and the COPY encoding both truncate them.
        let mut new: HashSet<(&str, Option<i64>)> = inserted
            .iter()
            .map(|(id, ts)| (id.as_str(), pg_micros(*ts)))
            .collect();
        let mut r = Rollups::default();
        for &(i, e) in &candidates {
            // UNNEST keeps the batch's order, so the first of duplicates was inserted.
            if new.remove(&(e.request_id.as_str(), pg_micros(e.ts))) {
                r.add(e, buckets[i]);
            }
        }
        r.write(&mut tx, self.asynchronous_usage).await?;
        tx.commit().await.map_err(db)?;
        Ok(())
    }
}

#[async_trait]
impl UsageSink for PgStore {
    /// The common case, a batch of new events, goes in with binary COPY (its given ids, then
    /// its events); a batch that repeats a stored or in-batch `request_id` claims its given
    /// ids and inserts its events with `INSERT … ON CONFLICT DO NOTHING`. Either way only the
    /// events whose ids were new are stored and reach the rollups, in the same transaction.
    async fn write(&self, events: &[UsageEvent]) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        self.ensure_usage_partitions_daily().await;
        let buckets: Vec<i16> = events.iter().map(bucket).collect();
        let mut seen = HashSet::with_capacity(events.len());
        let distinct = events.iter().all(|e| seen.insert(e.request_id.as_str()));
        if distinct && self.write_new(events, &buckets).await? {
            return Ok(());
        }
        self.write_some(events, &buckets).await
    }

    /// Raw events through [`PgStore::purge_usage_before`] (whole day partitions dropped,
    /// the rest deleted); minute rollups a day of the oldest per statement, so that no one
    /// statement holds locks (or bloats the table) for long however far behind the retention
    /// is.
    async fn purge_before(&self, before: DateTime<Utc>) -> Result<keyvault_core::Purged> {
        let events = self.purge_usage_before(before).await?;
        let mut minute_rollups = 0;
        loop {
            let first: Option<DateTime<Utc>> =
                sqlx::query_scalar("SELECT min(minute) FROM kv_usage_rollup")
                    .fetch_one(&self.pool)
                    .await
                    .map_err(db)?;
            let Some(first) = first.filter(|&t| t < before) else {
                break;
            };
            let upto = (first + chrono::TimeDelta::days(1)).min(before);
            let done = sqlx::query("DELETE FROM kv_usage_rollup WHERE minute < $1")
                .bind(upto)
                .execute(&self.pool)
                .await
                .map_err(db)?;
            minute_rollups += done.rows_affected();
        }
        Ok(keyvault_core::Purged {
            events,
            minute_rollups,
        })
    }
}
