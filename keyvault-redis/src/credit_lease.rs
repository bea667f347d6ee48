//! Credit leases (CONTRACT §3): far from exhaustion, a busy key's spends take a batch of
//! credits from its cached balance in one script call and spend from it in process for at most
//! the lease lifetime; what is left goes back to the balance it came from when the lease ends.
//!
//! Never over-spent: the batch is taken in Redis before any of it is spent. A lease is at most
//! a 32nd of the balance (`HEADROOM` in `lua/credits_spend.lua`), so near exhaustion every
//! spend goes through Redis, and a process that dies loses little against the balance. A leftover goes back only to the very
//! balance it was taken from (its load stamp): never to one reloaded for a new refill
//! interval, reset, or changed, where it would add credits nobody took. A lease whose process
//! dies, or whose key's credits are set meanwhile, is forfeited.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use keyvault_core::{CreditDecision, CreditRequest, Credits, KeyId};

use crate::{
    backend::RedisBackend,
    credits::Taken,
    lease::{MAX_LEASE_LIFETIME, lease_size},
};

/// The most credits one lease takes.
const MAX_CREDIT_LEASE: u64 = 1 << 40;

/// How long an entry without a lease is kept for the spending rate it has seen.
const IDLE: Duration = Duration::from_secs(1);

/// One quota's lease (or, between leases, the spending rate that sizes the next one).
#[derive(Debug)]
struct Held {
    /// The configuration and refill interval the lease was taken under.
    credits: Credits,
    interval: i64,
    /// The balance's load stamp in Redis.
    loaded: i64,
    /// Credits of the lease not spent yet.
    left: u64,
    /// Credits of the lease spent so far.
    used: u64,
    /// The balance before the lease (answers report it less what was used).
    before: u64,
    ends: Instant,
    generation: u64,
    /// Credits asked for since `since_grant`.
    seen: u64,
    since_grant: Instant,
    touched: Instant,
    renewing: bool,
}

impl Held {
    fn fresh(credits: Credits, interval: i64, cost: u64, now: Instant) -> Self {
        Self {
            credits,
            interval,
            loaded: 0,
            left: 0,
            used: 0,
            before: 0,
            ends: now,
            generation: 0,
            seen: cost,
            since_grant: now,
            touched: now,
            renewing: false,
        }
    }

    fn live(&self, now: Instant) -> bool {
        now < self.ends
    }

    fn remaining(&self) -> u64 {
        self.before.saturating_sub(self.used)
    }
}

#[derive(Debug)]
struct Table {
    by_quota: HashMap<KeyId, Held>,
    swept: Instant,
}

/// A lease's leftover to give back: quota, configuration, load stamp, amount.
type Giveback = (KeyId, Credits, i64, u64);

/// What a spend does about leases.
#[derive(Debug)]
pub(crate) enum CreditTake {
    /// Spent from the lease.
    Admitted(CreditDecision),
    /// Spend in Redis, as without leases.
    Alone,
    /// Spend in Redis asking for a lease of [`CreditRenewal::size`].
    Renew(CreditRenewal),
}

/// The credit leases of one [`crate::RedisCreditStore`].
#[derive(Debug)]
pub(crate) struct CreditLeases {
    lifetime: Duration,
    held: Mutex<Table>,
    generation: AtomicU64,
    redis: RedisBackend,
    refund: redis::Script,
    /// The store's quotas to write back (a leftover given back changes what is pending).
    dirty: Arc<Mutex<HashSet<KeyId>>>,
    leases: AtomicU64,
    local: AtomicU64,
    returned: AtomicU64,
    forfeited: AtomicU64,
}

/// What the credit leases of a [`crate::RedisCreditStore`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CreditLeaseStats {
    /// Leases taken.
    pub leases: u64,
    /// Spends (and reads) answered from a lease, without a call to Redis.
    pub local: u64,
    /// Credits of leases not spent and given back when their lease ended.
    pub returned: u64,
    /// Credits of leases not spent and not given back (the key's credits were set, the
    /// balance reloaded, or Redis unavailable): lost, never spent twice.
    pub forfeited: u64,
    /// Credits held in leases now.
    pub held: u64,
}

impl CreditLeases {
    pub(crate) fn new(
        redis: &RedisBackend,
        refund: redis::Script,
        lifetime: Duration,
        dirty: Arc<Mutex<HashSet<KeyId>>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            lifetime: lifetime.min(MAX_LEASE_LIFETIME),
            held: Mutex::new(Table {
                by_quota: HashMap::new(),
                swept: Instant::now(),
            }),
            generation: AtomicU64::new(0),
            redis: redis.clone(),
            refund,
            dirty,
            leases: AtomicU64::new(0),
            local: AtomicU64::new(0),
            returned: AtomicU64::new(0),
            forfeited: AtomicU64::new(0),
        })
    }

    /// Leases are on and the spend has no request id of the caller's (a retry of one must be
    /// recognised in Redis).
    pub(crate) fn applies(&self, req: &CreditRequest<'_>) -> bool {
        !self.lifetime.is_zero() && req.request_id.is_empty()
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        // Nothing panics while the lock is held; a poisoned map is still consistent.
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn stats(&self) -> CreditLeaseStats {
        let held = self.table().by_quota.values().map(|h| h.left).sum();
        CreditLeaseStats {
            leases: self.leases.load(Ordering::Relaxed),
            local: self.local.load(Ordering::Relaxed),
            returned: self.returned.load(Ordering::Relaxed),
            forfeited: self.forfeited.load(Ordering::Relaxed),
            held,
        }
    }

    /// The refill interval a request falls in (`i64::MIN` without a refill).
    fn interval(req: &CreditRequest<'_>) -> i64 {
        req.credits
            .refill
            .map_or(i64::MIN, |r| r.interval.start_of(req.now).timestamp())
    }

    pub(crate) fn take(self: &Arc<Self>, req: &CreditRequest<'_>) -> CreditTake {
        let now = Instant::now();
        let interval = Self::interval(req);
        let mut ended = None;
        let take = {
            let mut table = self.table();
            if now.saturating_duration_since(table.swept) >= IDLE {
                table.swept = now;
                table.by_quota.retain(|_, h| {
                    h.renewing || h.left > 0 || now.saturating_duration_since(h.touched) < IDLE
                });
            }
            match table.by_quota.get_mut(&req.quota_id) {
                Some(h) if h.credits == *req.credits && h.interval == interval => {
                    h.seen = h.seen.saturating_add(req.cost);
                    h.touched = now;
                    // A read (cost 0) goes to Redis: the lease's view of the balance misses
                    // what this process spent beside it.
                    if req.cost > 0 && h.live(now) && h.left >= req.cost {
                        h.left -= req.cost;
                        h.used += req.cost;
                        self.local.fetch_add(1, Ordering::Relaxed);
                        CreditTake::Admitted(CreditDecision::Spent {
                            remaining: h.remaining(),
                        })
                    } else if h.renewing || req.cost == 0 {
                        CreditTake::Alone
                    } else {
                        if h.left > 0 {
                            // Lapsed, or too little for this spend: the rest goes back.
                            ended = Some((
                                req.quota_id,
                                h.credits,
                                h.loaded,
                                std::mem::take(&mut h.left),
                            ));
                        }
                        let size = self.size(h, now);
                        if size > req.cost {
                            h.renewing = true;
                            CreditTake::Renew(CreditRenewal {
                                leases: self.clone(),
                                quota: req.quota_id,
                                size,
                                done: false,
                            })
                        } else {
                            CreditTake::Alone
                        }
                    }
                }
                Some(h) => {
                    // Another configuration or a new interval: the old lease ends here.
                    if h.left > 0 {
                        ended = Some((req.quota_id, h.credits, h.loaded, h.left));
                    }
                    *h = Held::fresh(*req.credits, interval, req.cost, now);
                    CreditTake::Alone
                }
                None => {
                    table.by_quota.insert(
                        req.quota_id,
                        Held::fresh(*req.credits, interval, req.cost, now),
                    );
                    CreditTake::Alone
                }
            }
        };
        if let Some(g) = ended {
            self.give_back_later(g);
        }
        take
    }

    /// The next lease's size for `h` ([`lease_size`]).
    fn size(&self, h: &Held, now: Instant) -> u64 {
        lease_size(h.seen, h.since_grant, now, self.lifetime, MAX_CREDIT_LEASE)
    }

    /// Installs a lease the renewing spend `req` got (`taken.spent` above its cost), or
    /// passes its answer on.
    fn renewed(
        self: &Arc<Self>,
        req: &CreditRequest<'_>,
        spent: keyvault_core::Result<(CreditDecision, Taken)>,
    ) -> keyvault_core::Result<CreditDecision> {
        let now = Instant::now();
        let interval = Self::interval(req);
        let clear = || {
            if let Some(h) = self.table().by_quota.get_mut(&req.quota_id) {
                h.renewing = false;
            }
        };
        let (decision, taken) = match spent {
            Ok(r) => r,
            Err(e) => {
                clear();
                return Err(e);
            }
        };
        let CreditDecision::Spent { remaining } = decision else {
            clear();
            return Ok(decision);
        };
        if taken.spent <= req.cost {
            clear();
            return Ok(decision);
        }
        let leftover = taken.spent - req.cost;
        let before = remaining + taken.spent;
        let answer = CreditDecision::Spent {
            remaining: before - req.cost,
        };
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let mut previous = None;
        let installed = {
            let mut table = self.table();
            match table.by_quota.get_mut(&req.quota_id) {
                Some(h) if h.credits == *req.credits && h.interval == interval => {
                    h.renewing = false;
                    if h.left > 0 {
                        previous = Some((req.quota_id, h.credits, h.loaded, h.left));
                    }
                    h.loaded = taken.loaded;
                    h.left = leftover;
                    h.used = req.cost;
                    h.before = before;
                    h.ends = now + self.lifetime;
                    h.generation = generation;
                    h.seen = 0;
                    h.since_grant = now;
                    true
                }
                Some(h) => {
                    h.renewing = false;
                    false
                }
                None => false,
            }
        };
        if let Some(g) = previous {
            self.give_back_later(g);
        }
        self.leases.fetch_add(1, Ordering::Relaxed);
        if installed {
            self.end_at(req.quota_id, generation);
        } else {
            // The key's credits changed meanwhile: the lease is not used.
            self.give_back_later((req.quota_id, *req.credits, taken.loaded, leftover));
        }
        Ok(answer)
    }

    /// Gives the leftover of lease `generation` back when its lifetime is over.
    fn end_at(self: &Arc<Self>, quota: KeyId, generation: u64) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let leases = self.clone();
        let lifetime = self.lifetime;
        rt.spawn(async move {
            tokio::time::sleep(lifetime).await;
            let ended = {
                let mut table = leases.table();
                match table.by_quota.get_mut(&quota) {
                    Some(h) if h.generation == generation && !h.renewing && h.left > 0 => {
                        Some((quota, h.credits, h.loaded, std::mem::take(&mut h.left)))
                    }
                    _ => None,
                }
            };
            if let Some(g) = ended {
                leases.give_back_now(g).await;
            }
        });
    }

    fn give_back_later(self: &Arc<Self>, g: Giveback) {
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                let leases = self.clone();
                rt.spawn(async move { leases.give_back_now(g).await });
            }
            Err(_) => {
                self.forfeited.fetch_add(g.3, Ordering::Relaxed);
            }
        }
    }

    /// `credits_refund.lua` for a lease's leftover: back to the balance it was taken from
    /// only (its load stamp), else forfeited.
    async fn give_back_now(&self, (quota, credits, loaded, amount): Giveback) {
        let mut inv = self.refund.prepare_invoke();
        inv.key(self.redis.quota_key(quota, "cr"))
            .key(self.redis.quota_key(quota, "cr:req:"))
            .arg(crate::credits::fingerprint(&credits))
            .arg(amount)
            .arg("")
            .arg(self.redis.idempotency_ms())
            .arg(loaded);
        let mut conn = self.redis.conn();
        let reply: Result<(i64, i64), crate::Error> = self
            .redis
            .run(async { inv.invoke_async(&mut conn).await })
            .await;
        match reply {
            Ok((1, _)) => {
                self.dirty
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(quota);
                self.returned.fetch_add(amount, Ordering::Relaxed);
            }
            _ => {
                self.forfeited.fetch_add(amount, Ordering::Relaxed);
            }
        }
    }

    /// Ends `quota`'s lease without giving it back: its credits were set anew.
    pub(crate) fn forfeit(&self, quota: KeyId) {
        if let Some(h) = self.table().by_quota.remove(&quota) {
            self.forfeited.fetch_add(h.left, Ordering::Relaxed);
        }
    }

    /// Ends every lease now, giving the leftovers back (a process about to stop).
    pub(crate) async fn end_all(&self) {
        let ended: Vec<Giveback> = {
            let mut table = self.table();
            table
                .by_quota
                .iter_mut()
                .filter(|(_, h)| h.left > 0)
                .map(|(q, h)| (*q, h.credits, h.loaded, std::mem::take(&mut h.left)))
                .collect()
        };
        for g in ended {
            self.give_back_now(g).await;
        }
    }
}

/// A spend asking for a lease. Given up before it finishes (its future dropped), it lets the
/// key's next spend renew; what Redis may have taken for it is forfeited.
#[derive(Debug)]
pub(crate) struct CreditRenewal {
    leases: Arc<CreditLeases>,
    quota: KeyId,
    size: u64,
    done: bool,
}

impl CreditRenewal {
    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    pub(crate) fn finish(
        mut self,
        req: &CreditRequest<'_>,
        spent: keyvault_core::Result<(CreditDecision, Taken)>,
    ) -> keyvault_core::Result<CreditDecision> {
        self.done = true;
        self.leases.renewed(req, spent)
    }
}

impl Drop for CreditRenewal {
    fn drop(&mut self) {
        if !self.done
            && let Some(h) = self.leases.table().by_quota.get_mut(&self.quota)
        {
            h.renewing = false;
        }
    }
}
