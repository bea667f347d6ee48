//! # keyvault
//!
//! API-key management that lives inside your process: keys verify in microseconds against an
//! in-process cache, limits are exact under concurrency and across instances, usage statistics
//! come from the real requests, and rotation, audit and backups are built in.
//!
//! This crate is the facade: it re-exports [`keyvault_core`] (the domain, the verifier and the
//! in-memory backends) and, behind features, the backends and the middleware.
//!
//! ```
//! use keyvault::{Actor, Credits, Keyvault, NewKey, Outcome, RateLimit, VerifyRequest};
//!
//! # async fn demo() -> keyvault::Result<()> {
//! let kv = Keyvault::in_memory();
//! let created = kv
//!     .create_key(
//!         NewKey::new("acme-prod")
//!             .owner("acme")
//!             .credits(Credits::new(1_000))
//!             .ratelimit(RateLimit::new("per-second", 10, 1_000)?),
//!         &Actor::library(),
//!     )
//!     .await?;
//! let plaintext = created.key.expose(); // shown once; keyvault stores a digest
//!
//! let v = kv.verify(&VerifyRequest::new(plaintext)).await?;
//! assert_eq!(v.outcome, Outcome::Valid);
//! assert_eq!(v.credits_remaining, Some(999));
//! # Ok(()) }
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(demo()).unwrap();
//! ```
//!
//! ## Features
//! | feature | adds |
//! |---|---|
//! | `postgres` | [`postgres`]: the PostgreSQL backend |
//! | `redis` | [`redis`]: exact limits across instances, credit caching, invalidation |
//! | `sqlite` | [`sqlite`]: the SQLite backend |
//! | `deploy` | [`deploy`]: backends wired from `DATABASE_URL` and `REDIS_URL` (all three backends) |
//! | `axum` | [`axum`]: the tower/axum middleware |
//! | `testing` | the backend conformance suite |

pub use keyvault_core::*;

/// The PostgreSQL backend.
#[cfg(feature = "postgres")]
pub use keyvault_postgres as postgres;

/// The Redis backend.
#[cfg(feature = "redis")]
pub use keyvault_redis as redis;

/// The SQLite backend.
#[cfg(feature = "sqlite")]
pub use keyvault_sqlite as sqlite;

#[cfg(feature = "deploy")]
pub mod deploy;

/// The axum/tower middleware.
#[cfg(feature = "axum")]
pub use keyvault_axum as axum;

// The README's examples are compiled and run as doctests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
