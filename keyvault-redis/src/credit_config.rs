//! [`RedisCreditConfig`]: how the Redis credit cache writes back, and what it answers while
//! Redis is unavailable.

use std::time::Duration;

use crate::fail::FailMode;

/// How [`RedisCreditStore`](crate::RedisCreditStore) writes back and what it answers when Redis is unavailable.
///
/// ```
/// use std::time::Duration;
/// use keyvault_redis::{FailMode, RedisCreditConfig};
///
/// let config = RedisCreditConfig::default()
///     .fail_mode(FailMode::Local) // spend on the durable store while Redis is down
///     .writeback_interval(Duration::from_millis(200));
/// # let _ = config;
/// ```
#[derive(Debug, Clone)]
pub struct RedisCreditConfig {
    pub(crate) fail_mode: FailMode,
    pub(crate) writeback_interval: Duration,
    pub(crate) lease_lifetime: Duration,
}

impl Default for RedisCreditConfig {
    /// `closed` (an unavailable Redis answers 503), written back every 500 ms, no leases.
    fn default() -> Self {
        Self {
            fail_mode: FailMode::Closed,
            writeback_interval: Duration::from_millis(500),
            lease_lifetime: Duration::ZERO,
        }
    }
}

impl RedisCreditConfig {
    /// How long a lease of credits lives (at most 100 ms: longer is taken as 100 ms; zero, the
    /// default: no leases, every spend is a script call). A process that dies loses what its
    /// lease held. Opt-in for now: a key's credits set while spends are leased can read one
    /// spend too low right after (see `docs/library.md`).
    pub fn lease_lifetime(mut self, lifetime: Duration) -> Self {
        self.lease_lifetime = lifetime.min(crate::MAX_LEASE_LIFETIME);
        self
    }

    /// What a spend answers while Redis is unavailable: `closed` (an error, the default),
    /// `open` (admitted, nothing counted; the configured balance is reported) or `local`
    /// (spent on the durable store directly, exact but at its speed; the cached balance is
    /// reloaded once Redis is back).
    pub fn fail_mode(mut self, mode: FailMode) -> Self {
        self.fail_mode = mode;
        self
    }

    /// How often spends are written back to the durable store (default 500 ms, at most 1 s
    /// recommended: it bounds the overspend when Redis loses its data).
    pub fn writeback_interval(mut self, every: Duration) -> Self {
        self.writeback_interval = every.max(Duration::from_millis(10));
        self
    }
}
