//! # keyvault-redis
//!
//! keyvault for several instances on one Redis (or Redis Cluster):
//!
//! | type | implements | what |
//! |---|---|---|
//! | [`RedisRateLimiter`] | [`RateLimiter`](keyvault_core::RateLimiter) | GCRA buckets in one Lua script: every limit of a key checked on the server's clock and taken only when all admit; concurrent checks of a key coalesced into one call; exact across instances |
//! | [`RedisCreditStore`] | [`CreditStore`](keyvault_core::CreditStore) | live balances in Redis in front of a durable store, spent atomically in Lua, written back every 500 ms, rebuilt after a loss |
//! | [`RedisChangeBus`] | [`ChangeBus`](keyvault_core::ChangeBus) | cache invalidation over pub/sub; a reconnect flushes every cache |
//! | [`LiveCounters`] | | calls, errors and refused verifications per second and minute, per key and provider, expiring by themselves |
//! | [`LiveSink`] | [`UsageSink`](keyvault_core::UsageSink) | another sink, whose written events it also counts in [`LiveCounters`] |
//!
//! All of them share one [`RedisBackend`]: a multiplexed connection that reconnects by itself,
//! a namespace (so several deployments can share one Redis) and a time budget per call
//! (250 ms by default). Past the budget, or on a connection error — and only then — each
//! component answers with its [`FailMode`]: credits `closed` (503), rate limits `local`
//! (⌈L/N⌉ in process) by default; every fallback is counted (`stats()`, and the `metrics`
//! counters `keyvault_redis_unavailable_total` and `keyvault_redis_fallback_total`).
//!
//! Every key of a quota carries the hash tag `{<quota id>}`, so a script's keys share a Redis
//! Cluster slot.
//!
//! ## Quick start
//! ```no_run
//! use std::sync::Arc;
//! use keyvault_core::{Keyvault, memory::MemoryStore};
//! use keyvault_redis::{
//!     RedisBackend, RedisChangeBus, RedisConfig, RedisCreditConfig, RedisCreditStore,
//!     RedisLimiterConfig, RedisRateLimiter,
//! };
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let redis = RedisBackend::connect("redis://127.0.0.1:6379", RedisConfig::new("prod")?).await?;
//! let durable = Arc::new(MemoryStore::new()); // keyvault-postgres or keyvault-sqlite in production
//! let kv = Keyvault::builder()
//!     .key_store(durable.clone())
//!     .audit_log(durable.clone())
//!     .credits(Arc::new(RedisCreditStore::new(&redis, durable, RedisCreditConfig::default())))
//!     .limiter(Arc::new(RedisRateLimiter::new(&redis, RedisLimiterConfig::default())))
//!     .change_bus(Arc::new(RedisChangeBus::new(&redis)))
//!     .build()?;
//! # let _ = kv; Ok(()) }
//! ```
//!
//! ## Feature flags
//! None.

mod backend;
mod bus;
mod credit_config;
mod credit_lease;
mod credits;
mod error;
mod fail;
mod lanes;
mod lease;
mod limiter;
mod live;

pub use backend::{MAX_NAMESPACE_LEN, RedisBackend, RedisConfig};
pub use bus::RedisChangeBus;
pub use credit_config::RedisCreditConfig;
pub use credit_lease::CreditLeaseStats;
pub use credits::RedisCreditStore;
pub use error::Error;
pub use fail::{FailMode, FallbackStats};
pub use lease::{LeaseStats, MAX_LEASE_LIFETIME};
pub use limiter::{
    BatchStats, DEFAULT_LEASE_LIFETIME, MAX_BATCH, RedisLimiterConfig, RedisRateLimiter,
};
pub use live::{LiveCounters, LivePoint, LiveScope, LiveSink, LiveSnapshot};

// Re-exported so hosts name the same version.
pub use redis;
