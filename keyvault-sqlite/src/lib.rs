//! # keyvault-sqlite
//!
//! keyvault's embedded backend: keys, credit balances, the hash-chained audit log, usage
//! statistics and the server's accounts (users, API tokens, sessions, settings, job leases)
//! in one SQLite file, with no server to run. It is the standalone server's zero-config
//! default (`DATABASE_URL` unset means `sqlite://keyvault.db`), and a complete backend for
//! any single-node deployment.
//!
//! ```
//! use std::sync::Arc;
//! use keyvault_core::{Actor, Keyvault, NewKey, Outcome, VerifyRequest};
//! use keyvault_sqlite::{SqliteChangeBus, SqliteStore};
//!
//! # async fn demo(dir: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
//! let url = format!("sqlite://{}", dir.join("keyvault.db").display());
//! let store = SqliteStore::connect(&url).await?; // created if missing
//! store.migrate().await?;
//! let bus = SqliteChangeBus::new(store.clone()).await?;
//! let store = Arc::new(store);
//! let kv = Keyvault::builder()
//!     .key_store(store.clone())
//!     .credits(store.clone())
//!     .audit_log(store.clone())
//!     .change_bus(Arc::new(bus))
//!     .build()?;
//! let created = kv.create_key(NewKey::new("billing"), &Actor::library()).await?;
//! let v = kv.verify(&VerifyRequest::new(created.key.expose())).await?;
//! assert_eq!(v.outcome, Outcome::Valid);
//! # Ok(()) }
//! # let dir = tempfile::tempdir().unwrap();
//! # tokio::runtime::Runtime::new().unwrap().block_on(demo(dir.path())).unwrap();
//! ```
//!
//! ## Several processes, one file
//! The server and the CLI may open the same file at once. The database runs in WAL mode
//! (readers never wait for the writer), every write transaction starts with
//! `BEGIN IMMEDIATE` (it takes the write lock up front, waiting up to a busy timeout, rather
//! than failing half-way with "database is locked"), and [`SqliteChangeBus`] polls a change
//! log so that a key disabled by one process is honoured by the others within a second.
//!
//! ## What it implements
//! | keyvault-core trait | type |
//! |---|---|
//! | `KeyStore`, `CreditStore`, `AuditLog`, `UsageSink`, `UsageQuery` | [`SqliteStore`] |
//! | `UserStore`, `TokenStore`, `SessionStore`, `SettingStore`, `LeaseStore` | [`SqliteStore`] |
//! | `SignalStore` (client signals: `NOT_FOUND` counts per IP and minute, key sightings) | [`SqliteStore`] |
//! | `RestoreTarget` (a backup restored in one transaction) | [`SqliteStore`] |
//! | `ChangeBus` | [`SqliteChangeBus`] |
//!
//! Rate limits stay in process (`keyvault_core::memory::MemoryRateLimiter`) or in Redis.
//!
//! ## Errors
//! The keyvault-core traits answer with `keyvault_core::Error`; a failure of the database is
//! its `Backend` variant, named "sqlite", whose source is this crate's [`Error`] (a failed
//! statement with sqlx's error, a stored value that does not decode with its column, the
//! migration lock file with its I/O error…).
//!
//! ## Feature flags
//! None.

mod accounts;
mod audit;
mod changes;
mod codec;
mod credits;
mod error;
mod keys;
mod restore;
mod signals;
mod store;
mod usage;

pub use changes::{DEFAULT_POLL_INTERVAL, SqliteChangeBus};
pub use error::Error;
pub use store::{
    DEFAULT_BUSY_TIMEOUT, DEFAULT_MAX_CONNECTIONS, MIGRATIONS_TABLE, SqliteStore, connect_options,
    migrator,
};

/// Re-exported so that hosts name the same options type.
pub use sqlx::sqlite::SqliteConnectOptions;
