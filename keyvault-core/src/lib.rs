//! # keyvault-core
//!
//! The domain of [keyvault](https://crates.io/crates/keyvault): the key format, the key record
//! and its limits, the verifier, the capability traits every backend implements, in-memory
//! backends that define their reference semantics, and a conformance suite that proves a
//! backend behaves like them.
//!
//! ```
//! use keyvault_core::{Actor, Keyvault, NewKey, Outcome, RateLimit, VerifyRequest};
//!
//! # async fn demo() -> keyvault_core::Result<()> {
//! let kv = Keyvault::in_memory();
//! let created = kv
//!     .create_key(
//!         NewKey::new("billing-service").ratelimit(RateLimit::new("per-minute", 100, 60_000)?),
//!         &Actor::library(),
//!     )
//!     .await?;
//! // Show `created.key.expose()` to its owner once; keyvault keeps only a digest.
//! let v = kv.verify(&VerifyRequest::new(created.key.expose())).await?;
//! assert_eq!(v.outcome, Outcome::Valid);
//! assert_eq!(v.ratelimits[0].remaining, 99);
//! # Ok(()) }
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(demo()).unwrap();
//! ```
//!
//! ## Traits
//! | trait | what | implementations |
//! |---|---|---|
//! | [`KeyStore`] | key records, written with their audit events in one transaction | memory, PostgreSQL, SQLite |
//! | [`CreditStore`] | atomic credit spends with refills | memory, PostgreSQL, SQLite, Redis |
//! | [`RateLimiter`] | GCRA token buckets, all limits of a key at once | memory, Redis |
//! | [`UsageSink`] / [`UsageQuery`] | usage events in, statistics out | memory, PostgreSQL, SQLite |
//! | [`AuditLog`] | hash-chained audit records | memory, PostgreSQL, SQLite |
//! | [`ChangeBus`] | cache invalidation between instances | memory, Redis, PostgreSQL |
//! | [`UserStore`] | dashboard users, audited in one transaction; the last enabled admin stays | memory, PostgreSQL, SQLite |
//! | [`TokenStore`] | API tokens (digests only), audited in one transaction | memory, PostgreSQL, SQLite |
//! | [`SessionStore`] | dashboard sessions (digests of cookies), ended when credentials change | memory, PostgreSQL, SQLite |
//! | [`SettingStore`] | named settings, the generated session secret among them | memory, PostgreSQL, SQLite |
//! | [`LeaseStore`] | one holder at a time for background jobs, lapsing when it dies | memory, PostgreSQL, SQLite |
//! | [`AlertStore`] | alert rules, one open alert per rule and subject, traffic baselines | memory, PostgreSQL, SQLite |
//! | [`NotifierStore`] | notification channels and the outbox of their deliveries | memory, PostgreSQL, SQLite |
//! | [`SignalStore`] | client signals rolled up: unknown keys per IP and minute, networks per key | memory, PostgreSQL, SQLite |
//!
//! ## Feature flags
//! - `testing`: the backend conformance suites (`conformance_suite!`, `accounts_suite!`).

mod accounts;
mod audit;
mod cache;
mod changes;
mod clock;
mod digest;
mod duration;
mod error;
pub mod gcra;
mod input;
mod key;
mod limits;
mod manage;
pub mod memory;
mod model;
mod outcome;
mod recorder;
mod restore;
mod rotate;
mod signals;
mod store;
mod successor;
mod usage;
mod vault;

#[cfg(feature = "testing")]
pub mod testing;

pub use accounts::{
    Alert, AlertQuery, AlertRule, AlertState, AlertStore, Baseline, CachedTokenStore,
    DEFAULT_TOKEN_TTL, Delivery, DeliveryState, LeaseStore, Need, NotifierRecord, NotifierStore,
    Role, SECRET_KEY_SETTING, SessionRecord, SessionStore, SettingStore, TokenRecord, TokenStore,
    UserRecord, UserStore,
};
pub use audit::{
    Actor, AuditEvent, AuditLog, AuditOutcome, AuditQuery, AuditRecord, ChainReport, ChainVerifier,
    GENESIS_HASH, chain_hash, hex as hash_hex, link as link_audit,
};
pub use cache::{CacheConfig, CacheStats, CachedKeyStore};
pub use changes::{Change, ChangeBus, FanOutBus};
pub use clock::{Clock, FakeClock, SharedClock, SystemClock};
pub use digest::{KeyDigest, KeyHasher};
pub use duration::HumanDuration;
pub use error::{BackendError, Entity, Error, InvalidInput, Result};
pub use input::{KeyPatch, NewKey};
pub use key::{
    ApiKey, BODY_LEN, CHECKSUM_LEN, DEFAULT_PREFIX, MAX_PREFIX_LEN, ParsedKey, Prefix,
    SCANNING_REGEX, TOKEN_PREFIX, parse as parse_key,
};
pub use limits::{
    CreditDecision, CreditRequest, CreditStore, LimitDecision, LimitRequest, RateLimiter,
};
pub use manage::{BatchAction, CreatedKey};
pub use model::{
    Credits, DEFAULT_GRACE, FailMode, KeyId, KeyRecord, MAX_CREDITS, MAX_LIMIT, MAX_NAME_LEN,
    MAX_PERIOD_MS, RateLimit, Refill, RefillInterval, RotationPolicy, check_credit_amount,
    limits_from_stored, parse_allowlist, refuse_nul, stored_limits,
};
pub use outcome::{LimitState, Outcome, Verification};
pub use recorder::{RecorderConfig, RecorderStats, UsageRecorder};
pub use restore::{Restoration, RestoreTarget};
pub use rotate::RotatedKey;
pub use signals::{
    ClientSignals, IpCount, MAX_PENDING as MAX_PENDING_SIGNALS, Sighting, SignalStore,
};
pub use store::{KeyQuery, KeyStore, KeyWrite, Page, every_page};
pub use successor::{ClaimRefusal, ClaimedSuccessor, SealKey, Successor};
pub use usage::{
    ALL_KEYS_ROLLUP, Granularity, KeyWindow, KeyWindows, LATENCY_BUCKETS, Label, LatencyHistogram,
    OverviewBuilder, Percentiles, ProviderStats, Purged, RequestId, RollupRanges, SecondCounts,
    Span, StatsOverview, StatsQuery, TimePoint, UNKNOWN_PROVIDER, UsageEvent, UsageQuery,
    UsageSink, success_rate,
};
pub use vault::{Keyvault, KeyvaultBuilder, VerifyRequest};

// Re-exported so backends and hosts name the same versions.
pub use async_trait::async_trait;
pub use chrono;
pub use ipnet;
pub use uuid;
