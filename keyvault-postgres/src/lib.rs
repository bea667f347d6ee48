//! # keyvault-postgres
//!
//! keyvault's durable backend on PostgreSQL 12+ (sqlx): [`PgStore`] keeps keys, credit
//! balances, the hash-chained audit log, usage statistics and the server's accounts (users,
//! API tokens, sessions, settings, job leases, alert rules and their alerts, notification
//! channels and the outbox of their deliveries);
//! [`PgChangeBus`] tells every instance on the same database about key changes with
//! `LISTEN/NOTIFY`.
//!
//! ```no_run
//! use std::sync::Arc;
//! use keyvault_core::Keyvault;
//! use keyvault_postgres::{PgChangeBus, PgStore};
//!
//! # async fn demo() -> keyvault_core::Result<()> {
//! let store = PgStore::connect("postgres://postgres@127.0.0.1/app").await?;
//! store.migrate().await?; // keyvault's tables only; the host's migrations are left alone
//! let bus = PgChangeBus::connect(store.pool()).await?;
//! let store = Arc::new(store);
//! let kv = Keyvault::builder()
//!     .key_store(store.clone())
//!     .credits(store.clone())
//!     .audit_log(store.clone())
//!     .change_bus(Arc::new(bus))
//!     .build()?;
//! # let _ = kv; Ok(()) }
//! ```
//!
//! ## Guarantees
//! - A key mutation and its audit records commit in one transaction; the chain's tail is
//!   locked inside it, so concurrent writers link one after the other. Account mutations
//!   (users, tokens, sessions, settings, alert rules, acknowledgements, notification
//!   channels) commit with their audit records the same way.
//! - A rule has at most one unresolved alert per subject: a partial unique index holds it,
//!   so a batch of alerts that would break it is refused whole.
//! - Client signals (`NOT_FOUND` counts per IP and minute, key sightings) are flushed in one
//!   transaction of one array `INSERT … ON CONFLICT DO UPDATE` per table, whatever the
//!   batch's size: counts add up, a sighting keeps its earliest first and latest last seen.
//! - Deliveries (`kv_deliveries`) are written once per id: a repeated enqueue leaves the
//!   stored one as it is, and a batch is one statement, written whole or not at all.
//! - The last enabled admin stays: user updates take turns on a table lock (reads do not
//!   wait), so two admins demoting each other at once cannot both succeed.
//! - A credit spend is one conditional `INSERT … ON CONFLICT DO UPDATE`: the refill, the check
//!   and the subtraction happen in one row update, exact with any number of instances.
//! - Usage batches are written in one transaction that inserts the raw events (binary `COPY`
//!   for a batch of new request ids, `INSERT … ON CONFLICT DO NOTHING` when one is already
//!   stored) and adds only the rows actually inserted to the minute, hour and day rollups, so a
//!   retried batch counts nothing twice and statistics are as fresh as the last flush. A
//!   caller's request id (one keyvault did not generate, which may come back with another
//!   time) is first claimed in `kv_usage_ids`, and its event inserted only if the claim was
//!   new: one id reported to several instances counts once. The
//!   rollup cost is per cell (key × minute × provider × status class), not per event: feed
//!   the sink large batches (`RecorderConfig::batch_size` of 10 000 or so) under heavy load.
//! - Raw usage events are partitioned by UTC day, keyed by `(request_id, ts)` (a retried
//!   event carries the same time, so it is the same row). Partitions are created ahead
//!   ([`PgStore::ensure_usage_partitions`]: at [`PgStore::migrate`], on the first batch of
//!   each UTC day, at each retention run); an event for a day without one waits in a DEFAULT
//!   partition and is moved into its day's partition when that is created. Retention drops
//!   whole days, then deletes the claimed ids as old ([`PgStore::purge_usage_before`]).
//! - A failure of the database is keyvault-core's `Backend` error, named "postgres", whose
//!   source is this crate's [`Error`] (a failed statement with sqlx's error, whose `code()`
//!   is the SQLSTATE; a stored value that does not decode, with its column).
//! - Every number in a key record is stored exactly (`bigint` holds every value up to 2⁶³−1;
//!   CONTRACT bounds stop at 2⁵³−1).

mod accounts;
mod audit;
mod bus;
mod credits;
mod error;
mod keys;
mod restore;
mod signals;
mod usage;

use keyvault_core::Result;
use sqlx::{
    PgPool,
    migrate::Migrator,
    postgres::{PgConnectOptions, PgPoolOptions},
};

pub use bus::{CHANNEL, PgChangeBus};
pub use error::Error;
pub use usage::USAGE_PARTITION_DAYS_AHEAD;

use error::{corrupt, db};

/// How long a query waits for a pooled connection (a new one is opened meanwhile when the
/// pool has room) before failing as a backend error.
pub const ACQUIRE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// The table that records which of keyvault's migrations ran: apart from the host's
/// `_sqlx_migrations`, so that neither migrator sees the other's versions.
pub const MIGRATIONS_TABLE: &str = "kv_schema_migrations";

/// keyvault's tables, indexes and rollups in PostgreSQL, over a connection pool. Cloning is
/// cheap (the pool is shared).
///
/// It implements `KeyStore`, `CreditStore`, `AuditLog`, `UsageSink`, `UsageQuery`,
/// `SignalStore` and the account traits `UserStore`, `TokenStore`, `SessionStore`,
/// `SettingStore`, `LeaseStore`, `AlertStore` and `NotifierStore` of keyvault-core.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    asynchronous_usage: bool,
    /// The UTC day (days since the epoch) whose usage partitions this process last ensured,
    /// shared by clones: the ingest path ensures them once a day.
    partitions_day: std::sync::Arc<std::sync::atomic::AtomicI64>,
}

impl PgStore {
    /// Uses an existing pool (the host's, typically). Its connections keep their settings:
    /// [`PgStore::connect`] turns `jit` off, which keeps the statistics and key-list queries
    /// from being compiled for tens of milliseconds each; a host pool may want the same
    /// (`PgConnectOptions::options([("jit", "off")])`).
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            asynchronous_usage: false,
            partitions_day: std::sync::Arc::new(std::sync::atomic::AtomicI64::new(i64::MIN)),
        }
    }

    /// Commits usage batches without waiting for the WAL to be flushed (`synchronous_commit`
    /// off for those transactions alone; keys, credits and audit keep the server's setting):
    /// the ingest's throughput for the batches acknowledged in the last fraction of a second
    /// before a database *crash* (`wal_writer_delay`, 200 ms by default, up to three times
    /// that), which the recorder then believes written. An outage, a hang or a clean restart
    /// loses nothing either way. Off by default: an event once written stays written.
    pub fn asynchronous_usage_commit(mut self, on: bool) -> Self {
        self.asynchronous_usage = on;
        self
    }

    /// Connects a new pool to `url`.
    pub async fn connect(url: &str) -> Result<Self> {
        let mut options: PgConnectOptions = url
            .parse()
            .map_err(|_| keyvault_core::Error::invalid("database_url", "not a PostgreSQL URL"))?;
        if !url.contains("jit") {
            // keyvault's queries are short, and the planner's estimates for their parameter
            // ranges are large: PostgreSQL compiled them (20–30 ms each) for nothing, most
            // of the statistics' time at the dashboard's ranges. A URL that sets `jit` itself
            // (`?options=-c%20jit%3Don`) keeps its choice.
            options = options.options([("jit", "off")]);
        }
        let pool = PgPoolOptions::new()
            .max_connections(16)
            // sqlx waits 30 s for a connection by default: with the database down every
            // request then hung for 30 s instead of answering 503.
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(db)?;
        Ok(Self::new(pool))
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Checks that the database answers (readiness probes).
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(drop)
            .map_err(db)
    }

    /// Creates or upgrades keyvault's tables, then the raw usage events' daily partitions
    /// up to [`USAGE_PARTITION_DAYS_AHEAD`] days ahead
    /// ([`PgStore::ensure_usage_partitions`]). Safe to run from several instances at once
    /// (the migrator takes an advisory lock, and so does the partition maintenance) and
    /// beside the host's own sqlx migrations.
    pub async fn migrate(&self) -> Result<()> {
        migrator().run(&self.pool).await.map_err(db)?;
        self.ensure_usage_partitions(USAGE_PARTITION_DAYS_AHEAD)
            .await
            .map(drop)
    }

    /// Removes raw usage events older than `before` (the retention setting); returns how many,
    /// exactly. Whole UTC days go by dropping their partition (no row is deleted one by one;
    /// the time left is mostly the `count(*)` that keeps the number exact); the events
    /// before `before` in the day that straddles it, and those waiting in the DEFAULT
    /// partition, are deleted. Statistics are
    /// unaffected: they read the minute, hour and day rollups. Only the partial minutes at
    /// the ends of a statistics range are read from raw events, and a retried batch older
    /// than the retention would be counted again, so keep at least a day.
    pub async fn purge_usage_before(&self, before: chrono::DateTime<chrono::Utc>) -> Result<u64> {
        self.purge_events_before(before).await
    }
}

/// keyvault's embedded migrations, tracked in [`MIGRATIONS_TABLE`].
pub fn migrator() -> Migrator {
    let mut m = sqlx::migrate!("./migrations");
    m.dangerous_set_table_name(MIGRATIONS_TABLE);
    m
}

/// A u64 as a `bigint`, or an error naming the field.
fn to_i64(value: u64, field: &str) -> Result<i64> {
    i64::try_from(value)
        .map_err(|_| keyvault_core::Error::invalid(field, "must be at most 9223372036854775807"))
}

/// A stored `bigint` that must not be negative.
fn to_u64(value: i64, what: &'static str) -> Result<u64, Error> {
    u64::try_from(value).map_err(|_| corrupt(what, "negative"))
}
