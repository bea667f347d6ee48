//! The daily partitions of `kv_usage_events` (migration 20260101000011): created ahead, the
//! DEFAULT partition's events moved into the partition of their day, and retention by
//! dropping whole days.
//!
//! Who creates partitions: [`PgStore::migrate`], then the first usage batch of every UTC day
//! in each process (a no-op costing one short statement when the days exist) and every
//! retention run ([`UsageSink::purge_before`](keyvault_core::UsageSink::purge_before), the
//! admin server's retention job, under its lease). Any of them is enough; an event for a day
//! without a partition is kept in the DEFAULT partition until one of them runs.

use std::sync::atomic::Ordering;

use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use sqlx::{Acquire, PgConnection};

use crate::{PgStore, Result, db};

/// How many UTC days after today [`PgStore::migrate`], the ingest path and the retention job
/// keep partitions for: a week of margin for a process that stops creating them (stopped
/// jobs, a failed attempt), after which events go to the DEFAULT partition, not away.
pub const USAGE_PARTITION_DAYS_AHEAD: u32 = 7;

/// How long partition DDL waits for its locks before giving up (SQLSTATE 55P03). A DDL
/// statement waiting for a lock queues every later reader and writer of the table behind
/// it, so it must not wait behind a long statistics query for long; the caller retries.
const LOCK_TIMEOUT: &str = "SET LOCAL lock_timeout = '2s'";

/// Creates the missing partitions for the days `$1` to `$2` and for every day the DEFAULT
/// partition holds events of (those found through its ts index, one probe per day), moving
/// them in: `kv_usage_events_ensure_day` does one day. Returns how many it created.
const ENSURE: &str = "\
SELECT count(*) FILTER (WHERE kv_usage_events_ensure_day(day))
FROM (
    SELECT generate_series($1::date, $2::date, interval '1 day')::date AS day
    UNION
    SELECT day FROM (
        WITH RECURSIVE d(day) AS (
            SELECT (min(ts) AT TIME ZONE 'UTC')::date FROM kv_usage_events_default
            UNION ALL
            SELECT (SELECT (min(e.ts) AT TIME ZONE 'UTC')::date
                    FROM kv_usage_events_default AS e
                    WHERE e.ts >= (d.day + 1)::timestamp AT TIME ZONE 'UTC')
            FROM d
            WHERE d.day IS NOT NULL
        )
        SELECT day FROM d WHERE day IS NOT NULL
    ) AS in_default
) AS days";

/// keyvault's day partitions (attached or left detached by an interrupted purge) whose
/// whole day is before `$1`. Only tables named as `kv_usage_events_ensure_day` names them,
/// in the schema of `kv_usage_events`, so the names are safe to put into statements.
const ENDED: &str = "\
SELECT c.relname::text,
       EXISTS (SELECT 1 FROM pg_inherits AS i
               WHERE i.inhrelid = c.oid AND i.inhparent = 'kv_usage_events'::regclass)
FROM pg_class AS c
WHERE c.relkind = 'r'
  AND c.relnamespace = (SELECT relnamespace FROM pg_class WHERE oid = 'kv_usage_events'::regclass)
  AND c.relname ~ '^kv_usage_events_p[0-9]{8}$'
  AND (to_date(substr(c.relname, 18), 'YYYYMMDD') + 1)::timestamp AT TIME ZONE 'UTC' <= $1
ORDER BY c.relname";

/// The transaction-level advisory lock partition maintenance takes turns on (the same as
/// `kv_usage_events_ensure_day`'s).
const PARTITIONS_LOCK: &str =
    "SELECT pg_advisory_xact_lock(hashtext('kv_usage_events partitions'))";

/// Attempts of one partition statement that ran into [`LOCK_TIMEOUT`].
const LOCK_ATTEMPTS: u32 = 3;

/// Whether `e` is PostgreSQL's `lock_not_available` (a lock timeout).
fn lock_timed_out(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.code().as_deref() == Some("55P03"))
}

/// Today's UTC day as a number of days since the epoch (the ingest path's once-a-day mark).
fn day_number(t: DateTime<Utc>) -> i64 {
    t.timestamp().div_euclid(86_400)
}

impl PgStore {
    /// Creates the daily partitions of the raw usage events from today (UTC) to `days_ahead`
    /// days after it, and one for every day that events in the DEFAULT partition belong to,
    /// moving those events into it (one transaction). Returns how many partitions it created.
    /// Safe to run from several instances at once (they take turns on an advisory lock);
    /// it gives up after 2 s waiting for a table lock (a backend error whose source has
    /// SQLSTATE 55P03), and nothing is lost if it does: events then wait in DEFAULT.
    ///
    /// [`PgStore::migrate`], the first usage batch of each UTC day and each retention run
    /// call it with [`USAGE_PARTITION_DAYS_AHEAD`]; a host that does neither for a week
    /// should call it from its own scheduler.
    pub async fn ensure_usage_partitions(&self, days_ahead: u32) -> Result<u64> {
        self.ensure_partitions(days_ahead, LOCK_ATTEMPTS).await
    }

    /// [`PgStore::ensure_usage_partitions`] with at most `attempts` lock timeouts.
    async fn ensure_partitions(&self, days_ahead: u32, attempts: u32) -> Result<u64> {
        let today = Utc::now().date_naive();
        let last = today + TimeDelta::days(i64::from(days_ahead));
        let mut conn = self.pool.acquire().await.map_err(db)?;
        let mut attempt = 1;
        loop {
            match ensure(&mut conn, today, last).await {
                Ok(n) => {
                    self.partitions_day
                        .store(day_number(Utc::now()), Ordering::Relaxed);
                    return Ok(u64::try_from(n).unwrap_or(0));
                }
                Err(e) if lock_timed_out(&e) && attempt < attempts => attempt += 1,
                Err(e) => return Err(db(e)),
            }
        }
    }

    /// The ingest path's share: once per UTC day and process, before the day's first batch,
    /// one attempt (the batch waits for it: at most [`LOCK_TIMEOUT`] when the tables are
    /// busy). A failure is logged, not returned: the batch goes in anyway (into DEFAULT for a
    /// day without a partition), and the next day, the jobs or a restart try again.
    pub(crate) async fn ensure_usage_partitions_daily(&self) {
        let today = day_number(Utc::now());
        let seen = self.partitions_day.swap(today, Ordering::Relaxed);
        if seen == today {
            return;
        }
        if let Err(e) = self.ensure_partitions(USAGE_PARTITION_DAYS_AHEAD, 1).await {
            tracing::warn!(target: "keyvault::postgres", error = %e, "usage partitions not created; events for days without one wait in the DEFAULT partition");
        }
    }

    /// Retention of the raw events: drops every day partition that ends at or before
    /// `before`, then deletes the older events left in the partition that straddles it and
    /// in DEFAULT (a day per statement). Returns the events removed, counted exactly
    /// (`count(*)` of each partition once it is detached, so no event can enter it between
    /// the count and the drop). Then creates partitions as
    /// [`PgStore::ensure_usage_partitions`] does (a failure there is logged, not returned):
    /// the retention job's share of that work, and today's partition again after a purge up
    /// to a time still to come.
    pub(crate) async fn purge_events_before(&self, before: DateTime<Utc>) -> Result<u64> {
        let removed = self.delete_events_before(before).await?;
        if let Err(e) = self
            .ensure_usage_partitions(USAGE_PARTITION_DAYS_AHEAD)
            .await
        {
            tracing::warn!(target: "keyvault::postgres", error = %e, "usage partitions not created after the purge");
        }
        Ok(removed)
    }

    /// The removal of [`PgStore::purge_events_before`]: partitions, then the events left,
    /// then the ids claimed before `before` (after their events, so that an id is never
    /// forgotten while its event is counted).
    async fn delete_events_before(&self, before: DateTime<Utc>) -> Result<u64> {
        let removed = self.drop_partitions_before(before).await?
            + self.delete_by_day("kv_usage_events", before).await?;
        self.delete_by_day("kv_usage_ids", before).await?;
        Ok(removed)
    }

    /// Deletes the rows of `table` (`kv_usage_events` or `kv_usage_ids`) whose `ts` is
    /// before `before`, a day of the oldest per statement so that no statement holds its
    /// locks (or bloats the table) for long however far behind the retention is. For the
    /// events, what is left after the partition drop: the straddling day's first hours and
    /// DEFAULT's events. Returns the rows deleted.
    async fn delete_by_day(&self, table: &'static str, before: DateTime<Utc>) -> Result<u64> {
        let mut removed = 0;
        loop {
            let first: Option<DateTime<Utc>> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT min(ts) FROM {table} WHERE ts < $1"
            )))
            .bind(before)
            .fetch_one(&self.pool)
            .await
            .map_err(db)?;
            let Some(first) = first else {
                return Ok(removed);
            };
            let upto = (first + TimeDelta::days(1)).min(before);
            let done = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DELETE FROM {table} WHERE ts < $1"
            )))
            .bind(upto)
            .execute(&self.pool)
            .await
            .map_err(db)?;
            removed += done.rows_affected();
        }
    }

    /// Detaches (one short transaction each) and then counts and drops the partitions of
    /// [`ENDED`]; returns the events they held.
    async fn drop_partitions_before(&self, before: DateTime<Utc>) -> Result<u64> {
        let ended: Vec<(String, bool)> = sqlx::query_as(ENDED)
            .bind(before)
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        let mut removed = 0;
        let mut conn = self.pool.acquire().await.map_err(db)?;
        for (name, attached) in ended {
            if attached {
                let detach = format!("ALTER TABLE kv_usage_events DETACH PARTITION \"{name}\"");
                with_lock_timeout(&mut conn, &detach).await.map_err(db)?;
            }
            let mut tx = conn.begin().await.map_err(db)?;
            let count: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT count(*) FROM \"{name}\""
            )))
            .fetch_one(&mut *tx)
            .await
            .map_err(db)?;
            sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE \"{name}\"")))
                .execute(&mut *tx)
                .await
                .map_err(db)?;
            tx.commit().await.map_err(db)?;
            removed += u64::try_from(count).unwrap_or(0);
        }
        Ok(removed)
    }
}

/// [`ENSURE`] in a transaction of its own, under [`LOCK_TIMEOUT`].
///
/// The advisory lock that `kv_usage_events_ensure_day` takes is taken first here: [`ENSURE`]
/// reads the DEFAULT partition before its first call, and two runs that both held that read
/// lock while one waited for the advisory lock and the other for an exclusive lock on
/// DEFAULT would deadlock.
async fn ensure(conn: &mut PgConnection, first: NaiveDate, last: NaiveDate) -> sqlx::Result<i64> {
    let mut tx = conn.begin().await?;
    sqlx::query(LOCK_TIMEOUT).execute(&mut *tx).await?;
    sqlx::query(PARTITIONS_LOCK).execute(&mut *tx).await?;
    let n = sqlx::query_scalar(ENSURE)
        .bind(first)
        .bind(last)
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(n)
}

/// Runs one DDL statement in a transaction under [`LOCK_TIMEOUT`], up to [`LOCK_ATTEMPTS`]
/// times while it times out on its locks.
async fn with_lock_timeout(conn: &mut PgConnection, statement: &str) -> sqlx::Result<()> {
    let mut attempt = 1;
    loop {
        let mut tx = conn.begin().await?;
        sqlx::query(LOCK_TIMEOUT).execute(&mut *tx).await?;
        let done = sqlx::query(sqlx::AssertSqlSafe(statement.to_owned()))
            .execute(&mut *tx)
            .await;
        match done {
            Ok(_) => return tx.commit().await,
            Err(e) if lock_timed_out(&e) && attempt < LOCK_ATTEMPTS => {
                tx.rollback().await?;
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}
