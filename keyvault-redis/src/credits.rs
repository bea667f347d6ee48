//! [`RedisCreditStore`]: credit balances cached in Redis in front of a durable store.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex, Weak},
    time::Duration,
};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use keyvault_core::{CreditDecision, CreditRequest, CreditStore, Credits, KeyId, Refill};
use tokio::task::JoinHandle;

use crate::{
    backend::RedisBackend,
    credit_config::RedisCreditConfig,
    credit_lease::{CreditLeaseStats, CreditLeases, CreditTake},
    error::Error,
    fail::{FailCounters, FailMode, FallbackStats},
};

/// Credit balances cached in Redis in front of a durable [`CreditStore`] (PostgreSQL, SQLite,
/// memory).
///
/// - A spend is one Lua script (`lua/credits_spend.lua`): atomic and exact across every
///   instance on the Redis.
/// - A balance Redis does not hold (first use, restart, `FLUSHALL`, expiry) is loaded from the
///   durable store with a spend of 0, so the overspend after a loss is bounded by what was
///   spent and not yet written back: one write-back interval.
/// - Refills are the durable store's: it keeps the refill each balance was set for and applies
///   it only for callers holding that one, so an instance still holding a key's previous
///   configuration cannot set the new balance to the old refill's amount. When a new refill
///   interval begins, the cached balance is written back and loaded again (once per interval),
///   and the load applies the refill or not.
/// - A background task writes back what was spent with [`CreditStore::debit`] every
///   [`RedisCreditConfig::writeback_interval`]; [`Self::flush`] does it at once (call it
///   before shutting down).
/// - The cached balance is kept per credits configuration: after a change of a key's credits
///   the next spend reloads it from the durable store, writing back first what was spent
///   under the other configuration (an instance that has not learnt of the change yet spends
///   from the new balance too). A reset drops the cached balance, and with it the spends of
///   the old configuration not yet written back (the reset supersedes them). A reset to the very same
///   configuration is not visible in a spend, so `Keyvault::update_key` drops the cached
///   balance after every credits write ([`CreditStore::balance_set`]); a balance written to
///   the durable store by other means needs [`Self::invalidate`].
///
/// Needs a Tokio runtime (the write-back task).
///
/// ```no_run
/// use std::sync::Arc;
/// use keyvault_core::{CreditRequest, CreditStore, Credits, KeyId, memory::MemoryStore};
/// use keyvault_redis::{RedisBackend, RedisConfig, RedisCreditConfig, RedisCreditStore};
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let redis = RedisBackend::connect("redis://127.0.0.1:6379", RedisConfig::default()).await?;
/// let durable = Arc::new(MemoryStore::new()); // PostgreSQL or SQLite in production
/// let credits = RedisCreditStore::new(&redis, durable, RedisCreditConfig::default());
/// let config = Credits::new(10);
/// let req = CreditRequest { quota_id: KeyId::new(), credits: &config, cost: 3,
///                           request_id: "r1", now: chrono::Utc::now() };
/// assert_eq!(credits.spend(&req).await?.remaining(), 7);
/// credits.flush().await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct RedisCreditStore {
    inner: Arc<Inner>,
    writer: Option<JoinHandle<()>>,
}

#[derive(Debug)]
struct Inner {
    redis: RedisBackend,
    durable: Arc<dyn CreditStore>,
    config: RedisCreditConfig,
    spend: redis::Script,
    refund: redis::Script,
    writeback: redis::Script,
    /// Quotas this instance spent on since the last write-back.
    dirty: Arc<Mutex<HashSet<KeyId>>>,
    leases: Arc<CreditLeases>,
    /// Quotas spent on the durable store while Redis was unavailable: their cached balance is
    /// stale and is reloaded before the next spend in Redis.
    stale: Mutex<HashSet<KeyId>>,
    counters: FailCounters,
}

/// The configuration a cached balance belongs to: `remaining:interval:amount`, the refill in
/// its text form ([`Refill::parse_spec`]).
pub(crate) fn fingerprint(c: &Credits) -> String {
    match c.refill {
        Some(r) => format!("{}:{r}", c.remaining),
        None => format!("{}:-:-", c.remaining),
    }
}

fn parse_fingerprint(fp: &str) -> Option<Credits> {
    let (remaining, refill) = fp.split_once(':')?;
    let refill = match refill {
        "-:-" => None,
        spec => Some(Refill::parse_spec(spec).ok()?),
    };
    Some(Credits {
        remaining: remaining.parse().ok()?,
        refill,
    })
}

impl RedisCreditStore {
    /// A cache on `redis` in front of `durable`. Starts the write-back task (needs a Tokio
    /// runtime).
    pub fn new(
        redis: &RedisBackend,
        durable: Arc<dyn CreditStore>,
        config: RedisCreditConfig,
    ) -> Self {
        let every = config.writeback_interval;
        let refund = redis::Script::new(include_str!("../lua/credits_refund.lua"));
        let dirty = Arc::new(Mutex::new(HashSet::new()));
        let leases = CreditLeases::new(redis, refund.clone(), config.lease_lifetime, dirty.clone());
        let inner = Arc::new(Inner {
            redis: redis.clone(),
            durable,
            config,
            spend: redis::Script::new(include_str!("../lua/credits_spend.lua")),
            refund,
            writeback: redis::Script::new(include_str!("../lua/credits_writeback.lua")),
            dirty,
            leases,
            stale: Mutex::new(HashSet::new()),
            counters: FailCounters::new("credits"),
        });
        let writer = tokio::spawn(write_back_loop(Arc::downgrade(&inner), every));
        Self {
            inner,
            writer: Some(writer),
        }
    }

    /// What the credit leases did: taken, spends answered from them, credits given back or
    /// lost.
    pub fn lease_stats(&self) -> CreditLeaseStats {
        self.inner.leases.stats()
    }

    /// Gives back what this instance's credit leases hold, then writes back every spend it
    /// made that is not written back yet.
    pub async fn flush(&self) -> keyvault_core::Result<()> {
        self.inner.leases.end_all().await;
        self.inner.write_back().await
    }

    /// Forgets the cached balance of `quota_id`, and its spends not yet written back; the next
    /// spend reloads it. `Keyvault::update_key` does this (through
    /// [`CreditStore::balance_set`]) when it sets a key's credits; call it after writing a
    /// balance to the durable store by other means (a restore).
    pub async fn invalidate(&self, quota_id: KeyId) -> keyvault_core::Result<()> {
        self.inner.leases.forfeit(quota_id);
        let key = self.inner.balance_key(quota_id);
        let mut conn = self.inner.redis.conn();
        self.inner
            .redis
            .run(async move {
                redis::cmd("DEL")
                    .arg(key)
                    .query_async::<()>(&mut conn)
                    .await
            })
            .await?;
        Ok(())
    }

    /// How often Redis was unavailable and what spends answered.
    pub fn stats(&self) -> FallbackStats {
        self.inner.counters.snapshot()
    }
}

impl Drop for RedisCreditStore {
    fn drop(&mut self) {
        if let Some(w) = self.writer.take() {
            w.abort();
        }
        // One last write-back, so that what was spent survives a Redis loss after shutdown.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let inner = self.inner.clone();
            rt.spawn(async move {
                if let Err(e) = inner.write_back().await {
                    tracing::warn!(error = %e, "credits not written back at shutdown");
                }
            });
        }
    }
}

async fn write_back_loop(inner: Weak<Inner>, every: Duration) {
    // The first write-back one interval after start: at start nothing has been spent.
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        if let Err(e) = inner.write_back().await {
            tracing::warn!(error = %e, "credit write-back failed; retrying");
        }
    }
}

enum Spend {
    Done(CreditDecision, Taken),
    /// Nothing cached: load.
    Miss,
    /// Cached for another configuration, or a new refill interval began: write back, load.
    Stale,
}

/// What a spend in Redis took: the cost, or a lease; and the balance's load stamp.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Taken {
    pub(crate) spent: u64,
    pub(crate) loaded: i64,
}

/// What failed: the durable store (its error is returned as it is) or Redis (a spend may fall
/// back).
enum Failure {
    Durable(keyvault_core::Error),
    Redis(Error),
}

impl From<Failure> for keyvault_core::Error {
    fn from(f: Failure) -> Self {
        match f {
            Failure::Durable(e) => e,
            Failure::Redis(e) => e.into(),
        }
    }
}

impl Inner {
    fn balance_key(&self, quota: KeyId) -> String {
        self.redis.quota_key(quota, "cr")
    }

    fn mark(set: &Mutex<HashSet<KeyId>>, quota: KeyId) {
        set.lock().unwrap_or_else(|e| e.into_inner()).insert(quota);
    }

    async fn call_spend(
        &self,
        req: &CreditRequest<'_>,
        load: Option<u64>,
        lease: Option<u64>,
    ) -> Result<Spend, Error> {
        let mut inv = self.spend.prepare_invoke();
        inv.key(self.balance_key(req.quota_id)).key(
            self.redis
                .quota_key(req.quota_id, &format!("cr:req:{}", req.request_id)),
        );
        let refill = req.credits.refill;
        inv.arg(fingerprint(req.credits))
            .arg(req.cost)
            .arg(refill.map(|r| r.amount.to_string()).unwrap_or_default())
            .arg(
                refill
                    .map(|r| r.interval.start_of(req.now).timestamp().to_string())
                    .unwrap_or_default(),
            )
            .arg(req.request_id)
            .arg(self.redis.idempotency_ms())
            .arg(load.map(|b| b.to_string()).unwrap_or_default())
            .arg(self.redis.cache_ttl_ms());
        if let Some(want) = lease {
            inv.arg(want);
        }
        let mut conn = self.redis.conn();
        let (status, balance, spent, loaded): (i64, i64, i64, i64) = self
            .redis
            .run(async { inv.invoke_async(&mut conn).await })
            .await?;
        let remaining = u64::try_from(balance).unwrap_or(0);
        let taken = Taken {
            spent: u64::try_from(spent).unwrap_or(0),
            loaded,
        };
        Ok(match status {
            1 => Spend::Done(CreditDecision::Spent { remaining }, taken),
            0 => Spend::Done(CreditDecision::Insufficient { remaining }, taken),
            -2 => Spend::Stale,
            _ => Spend::Miss,
        })
    }

    /// Loads the durable balance into Redis and spends from it there. A balance cached for
    /// another configuration (spent by an instance that has not learnt of a change yet), or
    /// one a new refill interval began for, has what was spent on it written back first: so
    /// that the durable store applies those spends in their own interval and configuration,
    /// and then, on the load, applies any refill due, only for a caller holding the refill
    /// its balance was set for.
    async fn load_and_spend(
        &self,
        req: &CreditRequest<'_>,
        write_back: bool,
        lease: Option<u64>,
    ) -> Result<(CreditDecision, Taken), Failure> {
        if write_back {
            self.write_back_one(req.quota_id, "claim").await?;
        }
        let loaded = self
            .durable
            .spend(&CreditRequest { cost: 0, ..*req })
            .await
            .map_err(Failure::Durable)?
            .remaining();
        match self.call_spend(req, Some(loaded), lease).await {
            Ok(Spend::Done(d, t)) => Ok((d, t)),
            Ok(Spend::Miss | Spend::Stale) => Err(Failure::Redis(Error::Reply(
                "credit script missed after a load",
            ))),
            Err(e) => Err(Failure::Redis(e)),
        }
    }

    /// Runs the write-back script on one quota in `mode` (`claim` or `drop`) and writes what it
    /// hands over to the durable store.
    async fn write_back_one(&self, quota: KeyId, mode: &str) -> Result<(), Failure> {
        let key = self.balance_key(quota);
        let mut inv = self.writeback.prepare_invoke();
        inv.key(&key).arg(mode);
        let mut conn = self.redis.conn();
        let reply: Result<Vec<String>, Error> = self
            .redis
            .run(async { inv.invoke_async(&mut conn).await })
            .await;
        let reply = match reply {
            Ok(r) => r,
            Err(e) => {
                Self::mark(&self.dirty, quota);
                return Err(Failure::Redis(e));
            }
        };
        let Some((fp, pairs)) = reply.split_first() else {
            return Ok(());
        };
        let Some(credits) = parse_fingerprint(fp) else {
            tracing::error!(%quota, "cached credit balance has an unreadable configuration; its pending spends are dropped");
            return Ok(());
        };
        let pending: Vec<(&String, i64)> = pairs
            .chunks_exact(2)
            .filter_map(|p| Some((&p[0], p[1].parse::<i64>().ok()?)))
            .collect();
        for (i, (field, amount)) in pending.iter().enumerate() {
            let now = field
                .strip_prefix("p:")
                .and_then(|s| s.parse::<i64>().ok())
                .and_then(|s| DateTime::<Utc>::from_timestamp(s, 0))
                .unwrap_or_else(Utc::now);
            let written = if *amount > 0 {
                self.durable
                    .debit(quota, &credits, amount.unsigned_abs(), now)
                    .await
                    .map(|_| ())
            } else {
                self.durable
                    .refund(&CreditRequest {
                        quota_id: quota,
                        credits: &credits,
                        cost: amount.unsigned_abs(),
                        request_id: "",
                        now,
                    })
                    .await
            };
            if let Err(e) = written {
                self.restore(&key, fp, &pending[i..]).await;
                Self::mark(&self.dirty, quota);
                return Err(Failure::Durable(e));
            }
        }
        Ok(())
    }

    /// Puts claimed amounts back after the durable store failed.
    async fn restore(&self, key: &str, fp: &str, pending: &[(&String, i64)]) {
        let mut inv = self.writeback.prepare_invoke();
        inv.key(key).arg("restore").arg(fp);
        for (field, amount) in pending {
            inv.arg(field.as_str()).arg(*amount);
        }
        let mut conn = self.redis.conn();
        let r: Result<Vec<String>, Error> = self
            .redis
            .run(async { inv.invoke_async(&mut conn).await })
            .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "credit spends neither written back nor restored");
        }
    }

    async fn write_back(&self) -> keyvault_core::Result<()> {
        let quotas: Vec<KeyId> =
            std::mem::take(&mut *self.dirty.lock().unwrap_or_else(|e| e.into_inner()))
                .into_iter()
                .collect();
        let mut first_error = None;
        for q in quotas {
            if let Err(e) = self.write_back_one(q, "claim").await {
                first_error.get_or_insert(e.into());
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Before spending in Redis again after spending on the durable store: write back what
    /// Redis holds and drop it, so the next spend reloads the durable balance.
    async fn resync(&self, quota: KeyId) -> keyvault_core::Result<()> {
        let stale = self
            .stale
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&quota);
        if !stale {
            return Ok(());
        }
        let dropped = self.write_back_one(quota, "drop").await;
        if dropped.is_err() {
            Self::mark(&self.stale, quota);
        }
        Ok(dropped?)
    }

    /// A spend in Redis, asking for a lease of `lease` when given. Returns the decision and
    /// what Redis took (nothing when the durable store or a fail mode answered).
    async fn spend(
        &self,
        req: &CreditRequest<'_>,
        lease: Option<u64>,
    ) -> keyvault_core::Result<(CreditDecision, Taken)> {
        let inner = self;
        let open = CreditDecision::Spent {
            remaining: req.credits.remaining,
        };
        let local = async { inner.durable.spend(req).await };
        if let Err(e) = inner.resync(req.quota_id).await {
            // Only `local` marks balances stale: keep spending on the durable store.
            tracing::warn!(error = %e, "stale credit balance not resynchronised yet");
            inner.counters.fallback(FailMode::Local);
            return inner
                .durable
                .spend(req)
                .await
                .map(|d| (d, Taken::default()));
        }
        let first = match inner.call_spend(req, None, lease).await {
            Ok(s) => s,
            Err(e) => {
                return inner
                    .fallback(e, local, open, req.quota_id)
                    .await
                    .map(|d| (d, Taken::default()));
            }
        };
        let (decision, taken) = match first {
            Spend::Done(d, t) => (d, t),
            miss => match inner
                .load_and_spend(req, matches!(miss, Spend::Stale), lease)
                .await
            {
                Ok(r) => r,
                Err(Failure::Durable(e)) => return Err(e),
                Err(Failure::Redis(e)) => {
                    return inner
                        .fallback(e, local, open, req.quota_id)
                        .await
                        .map(|d| (d, Taken::default()));
                }
            },
        };
        if req.cost > 0 && matches!(decision, CreditDecision::Spent { .. }) {
            Inner::mark(&inner.dirty, req.quota_id);
        }
        Ok((decision, taken))
    }

    async fn fallback<T>(
        &self,
        error: Error,
        local: impl Future<Output = keyvault_core::Result<T>>,
        open: T,
        quota: KeyId,
    ) -> keyvault_core::Result<T> {
        if !error.is_unavailable() {
            return Err(error.into());
        }
        self.counters.unavailable(&error);
        let mode = self.config.fail_mode;
        self.counters.fallback(mode);
        match mode {
            FailMode::Open => Ok(open),
            FailMode::Local => {
                Self::mark(&self.stale, quota);
                local.await
            }
            _ => Err(error.into()),
        }
    }
}

#[async_trait]
impl CreditStore for RedisCreditStore {
    async fn spend(&self, req: &CreditRequest<'_>) -> keyvault_core::Result<CreditDecision> {
        let inner = &self.inner;
        if !inner.leases.applies(req) {
            return inner.spend(req, None).await.map(|(d, _)| d);
        }
        match inner.leases.take(req) {
            CreditTake::Admitted(d) => Ok(d),
            CreditTake::Alone => inner.spend(req, None).await.map(|(d, _)| d),
            CreditTake::Renew(renewal) => {
                let spent = inner.spend(req, Some(renewal.size())).await;
                renewal.finish(req, spent)
            }
        }
    }

    async fn refund(&self, req: &CreditRequest<'_>) -> keyvault_core::Result<()> {
        let inner = &*self.inner;
        let mut inv = inner.refund.prepare_invoke();
        inv.key(inner.balance_key(req.quota_id))
            .key(
                inner
                    .redis
                    .quota_key(req.quota_id, &format!("cr:req:{}", req.request_id)),
            )
            .arg(fingerprint(req.credits))
            .arg(req.cost)
            .arg(req.request_id)
            .arg(inner.redis.idempotency_ms());
        let mut conn = inner.redis.conn();
        let reply: Result<(i64, i64), Error> = inner
            .redis
            .run(async { inv.invoke_async(&mut conn).await })
            .await;
        match reply {
            Ok((1, _)) => {
                Inner::mark(&inner.dirty, req.quota_id);
                Ok(())
            }
            Ok((2, amount)) => {
                inner
                    .durable
                    .refund(&CreditRequest {
                        cost: amount.unsigned_abs(),
                        ..*req
                    })
                    .await
            }
            Ok(_) => Ok(()),
            Err(e) => {
                inner
                    .fallback(e, inner.durable.refund(req), (), req.quota_id)
                    .await
            }
        }
    }

    async fn debit(
        &self,
        quota_id: KeyId,
        credits: &Credits,
        amount: u64,
        now: DateTime<Utc>,
    ) -> keyvault_core::Result<u64> {
        // Write back and forget the cached balance first: the next spend reloads the result.
        self.inner.write_back_one(quota_id, "drop").await?;
        self.inner
            .durable
            .debit(quota_id, credits, amount, now)
            .await
    }

    async fn balance_set(&self, quota_id: KeyId) -> keyvault_core::Result<()> {
        self.invalidate(quota_id).await
    }
}

#[cfg(test)]
mod tests {
    use keyvault_core::RefillInterval;

    use super::*;

    #[test]
    fn fingerprints_round_trip() {
        for c in [
            Credits::new(0),
            Credits::new(keyvault_core::MAX_CREDITS),
            Credits {
                remaining: 5,
                refill: Some(Refill {
                    interval: RefillInterval::Monthly,
                    amount: 100,
                }),
            },
        ] {
            assert_eq!(parse_fingerprint(&fingerprint(&c)), Some(c));
        }
        assert_eq!(parse_fingerprint("x:-:-"), None);
        assert_eq!(parse_fingerprint("5:weekly:3"), None);
    }
}
