//! Verification outcomes (CONTRACT §2).

use std::{fmt, sync::Arc};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::model::KeyRecord;

/// The one code every verification yields, in the order the checks run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Outcome {
    /// No key presented (middleware only).
    Missing,
    /// Malformed, bad checksum, unknown or deleted.
    NotFound,
    /// The key exists but is disabled.
    Disabled,
    /// Past `expires_at`, or past the grace period after a rotation.
    Expired,
    /// The caller's IP is outside the key's allow-list.
    Forbidden,
    /// A required scope is missing.
    InsufficientPermissions,
    /// One of the key's named rate limits is exhausted.
    RateLimited,
    /// Not enough credits for the request's cost.
    UsageExceeded,
    /// Accepted.
    Valid,
}

impl Outcome {
    /// Every code, in check order.
    pub const ALL: [Outcome; 9] = [
        Outcome::Missing,
        Outcome::NotFound,
        Outcome::Disabled,
        Outcome::Expired,
        Outcome::Forbidden,
        Outcome::InsufficientPermissions,
        Outcome::RateLimited,
        Outcome::UsageExceeded,
        Outcome::Valid,
    ];

    /// The contract's code text (`NOT_FOUND`, …).
    pub const fn as_str(self) -> &'static str {
        match self {
            Outcome::Missing => "MISSING",
            Outcome::NotFound => "NOT_FOUND",
            Outcome::Disabled => "DISABLED",
            Outcome::Expired => "EXPIRED",
            Outcome::Forbidden => "FORBIDDEN",
            Outcome::InsufficientPermissions => "INSUFFICIENT_PERMISSIONS",
            Outcome::RateLimited => "RATE_LIMITED",
            Outcome::UsageExceeded => "USAGE_EXCEEDED",
            Outcome::Valid => "VALID",
        }
    }

    /// Parses the contract's code text.
    pub fn from_code(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|o| o.as_str() == code)
    }

    /// The HTTP status the middleware answers with (VALID: the handler's, shown as 200).
    pub const fn http_status(self) -> u16 {
        match self {
            Outcome::Missing | Outcome::NotFound | Outcome::Disabled | Outcome::Expired => 401,
            Outcome::Forbidden | Outcome::InsufficientPermissions => 403,
            Outcome::RateLimited | Outcome::UsageExceeded => 429,
            Outcome::Valid => 200,
        }
    }

    /// Whether the request was accepted.
    pub const fn is_valid(self) -> bool {
        matches!(self, Outcome::Valid)
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One rate limit's state after a verification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitState {
    /// The limit's name.
    pub name: String,
    /// Its bucket size.
    pub limit: u32,
    /// Whole tokens left.
    pub remaining: u64,
    /// When the bucket is full again.
    pub reset_at: DateTime<Utc>,
    /// When no token is left: milliseconds until the next one (rounded up).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

/// The answer to a verification.
#[derive(Debug, Clone)]
pub struct Verification {
    /// The code.
    pub outcome: Outcome,
    /// The key, when one was found (whatever the code).
    pub key: Option<Arc<KeyRecord>>,
    /// The credit balance after the verification, for a key with credits.
    pub credits_remaining: Option<u64>,
    /// Every rate limit of the key, after the verification.
    pub ratelimits: Vec<LimitState>,
}

impl Verification {
    pub(crate) fn not_found() -> Self {
        Self {
            outcome: Outcome::NotFound,
            key: None,
            credits_remaining: None,
            ratelimits: Vec::new(),
        }
    }

    /// Whether the request was accepted.
    pub fn is_valid(&self) -> bool {
        self.outcome.is_valid()
    }

    /// The limit to show in `RateLimit-*` headers: the fewest whole tokens left, ties to the
    /// shortest period (CONTRACT §2).
    pub fn tightest_limit(&self) -> Option<&LimitState> {
        let key = self.key.as_deref();
        let period = |name: &str| {
            key.and_then(|k| k.ratelimits.iter().find(|l| l.name() == name))
                .map_or(u64::MAX, |l| l.period_ms())
        };
        self.ratelimits
            .iter()
            .min_by_key(|s| (s.remaining, period(&s.name)))
    }

    /// The longest `retry_after_ms` of the exhausted limits (the middleware's `Retry-After`).
    pub fn retry_after_ms(&self) -> Option<u64> {
        self.ratelimits
            .iter()
            .filter_map(|s| s.retry_after_ms)
            .max()
    }
}
