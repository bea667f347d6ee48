//! The store: a connection pool on one SQLite file, shared by every trait implementation.

use std::{path::Path, str::FromStr, sync::Arc, time::Duration};

use sqlx::{
    SqlitePool, Transaction,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};
use tokio::sync::{Mutex, MutexGuard};

use keyvault_core::{Error, Result};
use sqlx::migrate::Migrator;

use crate::error::backend;

/// The table that records which of keyvault's migrations ran: apart from a host's
/// `_sqlx_migrations`, so that neither migrator sees the other's versions.
pub const MIGRATIONS_TABLE: &str = "kv_schema_migrations";

/// keyvault's embedded migrations, tracked in [`MIGRATIONS_TABLE`].
pub fn migrator() -> Migrator {
    let mut m = sqlx::migrate!("./migrations");
    m.dangerous_set_table_name(MIGRATIONS_TABLE);
    m
}

/// Whether a connection's file name is an in-memory database.
fn is_in_memory(file: &std::path::Path) -> bool {
    file.as_os_str().is_empty()
        || file
            .to_str()
            .is_some_and(|f| f.starts_with("file:sqlx-in-memory"))
}

/// How long [`SqliteStore::migrate`] waits for another process's migrations.
const MIGRATE_LOCK_WAIT: Duration = Duration::from_secs(60);

/// Takes an exclusive advisory lock on `path` (created if missing), waiting without blocking
/// the runtime; the lock is released when the file is dropped.
async fn lock_exclusive(path: std::path::PathBuf) -> Result<std::fs::File, crate::Error> {
    let file = match std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
    {
        Ok(file) => file,
        Err(source) => return Err(crate::Error::MigrationLock { path, source }),
    };
    let deadline = tokio::time::Instant::now() + MIGRATE_LOCK_WAIT;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(crate::Error::MigrationLockTimeout {
                    path,
                    waited: MIGRATE_LOCK_WAIT,
                });
            }
            Err(std::fs::TryLockError::Error(source)) => {
                return Err(crate::Error::MigrationLock { path, source });
            }
        }
    }
}

fn bad_url(message: &str) -> Error {
    Error::invalid("database_url", message)
}

/// How long a write waits for another process's write lock before failing. Writers hold the
/// lock for milliseconds (a usage batch is the longest), so this is only reached when the
/// other process is stuck.
pub const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections in the pool: readers run in parallel under WAL; writers take turns.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 4;

/// keyvault's SQLite backend: keys, credits, the audit log, usage and accounts in one
/// database file.
///
/// It implements [`KeyStore`](keyvault_core::KeyStore), [`CreditStore`](keyvault_core::CreditStore),
/// [`AuditLog`](keyvault_core::AuditLog), [`UsageSink`](keyvault_core::UsageSink),
/// [`UsageQuery`](keyvault_core::UsageQuery), and the account traits
/// [`UserStore`](keyvault_core::UserStore), [`TokenStore`](keyvault_core::TokenStore),
/// [`SessionStore`](keyvault_core::SessionStore), [`SettingStore`](keyvault_core::SettingStore)
/// and [`LeaseStore`](keyvault_core::LeaseStore). Clones share one pool.
///
/// Several processes may open the same file at once (the server and the CLI): the database
/// runs in WAL mode, so readers never wait, and every write transaction starts with
/// `BEGIN IMMEDIATE`, taking the write lock up front and waiting up to the busy timeout for
/// it instead of failing half-way with "database is locked".
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pub(crate) pool: SqlitePool,
    /// Serialises this process's writers before they reach SQLite: SQLite's own busy handler
    /// polls with sleeps, which is fine between processes but slow between tasks.
    write_lock: Arc<Mutex<()>>,
}

/// A write transaction holding the database's write lock (`BEGIN IMMEDIATE`).
pub(crate) struct WriteTx<'a> {
    pub(crate) tx: Transaction<'static, sqlx::Sqlite>,
    _turn: MutexGuard<'a, ()>,
}

impl WriteTx<'_> {
    pub(crate) async fn commit(self) -> Result<(), crate::Error> {
        Ok(self.tx.commit().await?)
    }
}

/// Connection options for a `sqlite://PATH` URL (or a bare path): the file and its
/// directory are created when missing, WAL mode, a busy timeout, foreign keys on.
pub fn connect_options(url: &str) -> Result<SqliteConnectOptions> {
    let url = url.trim();
    if url.is_empty() {
        return Err(bad_url("must not be empty"));
    }
    let opts = if url.starts_with("sqlite:") {
        SqliteConnectOptions::from_str(url).map_err(|_| bad_url("not a valid sqlite:// URL"))?
    } else if url.contains("://") {
        return Err(bad_url("not a sqlite:// URL"));
    } else {
        SqliteConnectOptions::new().filename(url)
    };
    Ok(opts
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        // In WAL mode NORMAL syncs at checkpoints, not at every commit: a power loss may
        // drop the last commits but never corrupts the file; a crashed process loses nothing.
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(DEFAULT_BUSY_TIMEOUT)
        .foreign_keys(true))
}

impl SqliteStore {
    /// Opens (creating if missing, with its directory) the database at `url`: `sqlite://PATH`
    /// (`sqlite://keyvault.db` is relative to the working directory, `sqlite:///var/x.db`
    /// absolute), `sqlite::memory:`, or a bare path. Call [`migrate`](Self::migrate) before use.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(connect_options(url)?, DEFAULT_MAX_CONNECTIONS).await
    }

    /// Opens a database with explicit options (see [`connect_options`]).
    pub async fn connect_with(options: SqliteConnectOptions, max_connections: u32) -> Result<Self> {
        let file = options.get_filename();
        if !is_in_memory(file) {
            create_parent(file)?;
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(max_connections.max(1))
            .min_connections(1)
            .connect_with(options)
            .await
            .map_err(backend)?;
        Ok(Self::from_pool(pool))
    }

    /// Wraps an existing pool. Its connections should use WAL mode and a busy timeout
    /// (see [`connect_options`]).
    pub fn from_pool(pool: SqlitePool) -> Self {
        Self {
            pool,
            write_lock: Arc::new(Mutex::new(())),
        }
    }

    /// Creates or upgrades keyvault's tables (idempotent; see [`migrator`]). Processes that
    /// start together on one file take turns, so each migration is applied once.
    pub async fn migrate(&self) -> Result<()> {
        let _turn = self.write_lock.lock().await;
        // SQLite's migrator takes no lock of its own: two processes would both find a
        // migration missing and both apply it. An advisory lock on a file beside the database
        // makes them take turns.
        let file = self.pool.connect_options().get_filename().to_path_buf();
        let _lock = if is_in_memory(&file) {
            None
        } else {
            let mut name = file.into_os_string();
            name.push(".migrate-lock");
            Some(lock_exclusive(std::path::PathBuf::from(name)).await?)
        };
        migrator().run(&self.pool).await.map_err(backend)
    }

    /// The pool, for tables a host keeps beside keyvault's.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Checks that the database answers (readiness probes).
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(drop)
            .map_err(backend)
    }

    /// Closes the pool, waiting for connections in use to come back.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Starts a write transaction with the write lock taken up front.
    pub(crate) async fn write(&self) -> Result<WriteTx<'_>, crate::Error> {
        let turn = self.write_lock.lock().await;
        let tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        Ok(WriteTx { tx, _turn: turn })
    }

    /// This process's turn to write, for single-statement writes: SQLite takes the write lock
    /// at the start of such a statement, so they need no explicit transaction.
    pub(crate) async fn write_turn(&self) -> MutexGuard<'_, ()> {
        self.write_lock.lock().await
    }
}

fn create_parent(file: &Path) -> Result<(), crate::Error> {
    match file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() && !dir.exists() => std::fs::create_dir_all(dir)
            .map_err(|source| crate::Error::CreateDir {
                path: dir.to_path_buf(),
                source,
            }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_paths_are_accepted_and_other_schemes_refused() {
        let o = connect_options("sqlite://keyvault.db").unwrap();
        assert_eq!(o.get_filename(), Path::new("keyvault.db"));
        let o = connect_options("sqlite:///tmp/x/kv.db").unwrap();
        assert_eq!(o.get_filename(), Path::new("/tmp/x/kv.db"));
        let o = connect_options("data/kv.db").unwrap();
        assert_eq!(o.get_filename(), Path::new("data/kv.db"));
        for bad in ["postgres://x", " "] {
            match connect_options(bad) {
                Err(Error::Invalid(e)) => assert_eq!(e.field, "database_url"),
                other => panic!("{bad:?} gave {other:?}"),
            }
        }
    }
}
