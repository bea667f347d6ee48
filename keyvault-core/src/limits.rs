//! Rate limiters and credit stores: where a verification spends.

use std::fmt::Debug;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::{
    error::Result,
    model::{Credits, KeyId, RateLimit},
    outcome::LimitState,
};

/// A rate-limit check for one key (its `quota_id`).
#[derive(Debug, Clone, Copy)]
pub struct LimitRequest<'a> {
    /// The bucket set: a key and its rotation successor share it.
    pub quota_id: KeyId,
    /// Every limit of the key; all must admit.
    pub limits: &'a [RateLimit],
    /// When each limit was set ([`crate::KeyRecord::ratelimits_since`]; a missing entry is 0):
    /// part of its bucket's identity.
    pub since: &'a [u64],
    /// Take one token from each limit when all admit (false: a pure check).
    pub take: bool,
    /// The verification's id, so that a retried or refunded call is applied once.
    pub request_id: &'a str,
}

impl LimitRequest<'_> {
    /// When the `i`-th limit was set (0 when `since` has no entry for it).
    pub fn since_of(&self, i: usize) -> u64 {
        self.since.get(i).copied().unwrap_or(0)
    }
}

/// The answer of a rate limiter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitDecision {
    /// Whether every limit admitted the request.
    pub admitted: bool,
    /// Each limit's state, in the order of the request's limits.
    pub states: Vec<LimitState>,
}

/// Token-bucket rate limits (GCRA, see [`crate::gcra`]). Checks every limit of a request and
/// takes tokens only when all admit: exact under concurrency.
///
/// ```
/// # use keyvault_core::{RateLimiter, LimitRequest, KeyId, RateLimit, memory::MemoryRateLimiter};
/// # async fn demo() -> keyvault_core::Result<()> {
/// let limiter = MemoryRateLimiter::new();
/// let limits = [RateLimit::new("burst", 2, 1_000)?];
/// let req = LimitRequest { quota_id: KeyId::new(), limits: &limits, since: &[], take: true, request_id: "r1" };
/// assert!(limiter.check(&req).await?.admitted);
/// assert!(limiter.check(&req).await?.admitted);
/// assert!(!limiter.check(&req).await?.admitted);
/// # Ok(()) }
/// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(demo()).unwrap();
/// ```
#[async_trait]
pub trait RateLimiter: Send + Sync + Debug {
    /// Checks (and, when `take`, consumes) atomically across all the request's limits.
    async fn check(&self, req: &LimitRequest<'_>) -> Result<LimitDecision>;

    /// Gives back the tokens an admitted `check` took (the request was rejected later on).
    async fn release(&self, req: &LimitRequest<'_>) -> Result<()>;
}

/// A spend from a key's credit balance.
#[derive(Debug, Clone, Copy)]
pub struct CreditRequest<'a> {
    /// The balance: a key and its rotation successor share it.
    pub quota_id: KeyId,
    /// The key's credits configuration (its refill matters here).
    pub credits: &'a Credits,
    /// How much to spend (0: read the balance only).
    pub cost: u64,
    /// The verification's id, so that a retried or refunded call is applied once.
    pub request_id: &'a str,
    /// The time that decides the refill interval.
    pub now: DateTime<Utc>,
}

/// The answer of a credit store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreditDecision {
    /// Spent; the balance left.
    Spent {
        /// Balance after the spend.
        remaining: u64,
    },
    /// The balance does not cover the cost; nothing was spent.
    Insufficient {
        /// Balance (unchanged).
        remaining: u64,
    },
}

impl CreditDecision {
    /// The balance after the decision.
    pub fn remaining(self) -> u64 {
        match self {
            CreditDecision::Spent { remaining } | CreditDecision::Insufficient { remaining } => {
                remaining
            }
        }
    }
}

/// Credit balances. A spend is one atomic conditional step (never read-then-write); a refill
/// *sets* the balance at the start of each interval, exactly once however many processes
/// spend.
///
/// ```
/// # use keyvault_core::{CreditStore, CreditRequest, CreditDecision, Credits, KeyId, memory::MemoryStore};
/// # async fn demo() -> keyvault_core::Result<()> {
/// let store = MemoryStore::new();
/// let credits = Credits::new(5);
/// let req = CreditRequest { quota_id: KeyId::new(), credits: &credits, cost: 3,
///                           request_id: "r1", now: chrono::Utc::now() };
/// assert_eq!(store.spend(&req).await?, CreditDecision::Spent { remaining: 2 });
/// assert_eq!(store.spend(&req).await?, CreditDecision::Insufficient { remaining: 2 });
/// # Ok(()) }
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(demo()).unwrap();
/// ```
#[async_trait]
pub trait CreditStore: Send + Sync + Debug {
    /// Spends `cost` if the balance (after any due refill) covers it.
    async fn spend(&self, req: &CreditRequest<'_>) -> Result<CreditDecision>;

    /// Gives back a spend (the request was rejected or failed later on).
    async fn refund(&self, req: &CreditRequest<'_>) -> Result<()>;

    /// Subtracts `amount` unconditionally, stopping at 0, after applying any due refill:
    /// how a cache in front of this store (Redis) writes back what it has already admitted.
    /// Returns the balance left. A quota without a balance is left alone (returns 0).
    async fn debit(
        &self,
        quota_id: KeyId,
        credits: &Credits,
        amount: u64,
        now: DateTime<Utc>,
    ) -> Result<u64>;

    /// The balance of `quota_id` was just set anew in the store of record (a key's credits
    /// set, even to the configuration they had): a cache in front of it drops what it holds,
    /// so that the next spend starts from the new balance. Stores that cache nothing have
    /// nothing to do.
    async fn balance_set(&self, quota_id: KeyId) -> Result<()> {
        let _ = quota_id;
        Ok(())
    }
}
