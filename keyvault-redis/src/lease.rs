//! Leases (CONTRACT §3): far from exhaustion, an instance takes a batch of tokens from every
//! limit of a key in one script call and admits from it in process. A lease lives at most its
//! lifetime (≤ 100 ms); what it did not use goes back to Redis when it ends, and a lease whose
//! process dies is forfeited (those tokens were taken, so nothing is ever admitted twice).
//!
//! The size follows the key's request rate: the checks seen since the last lease, over the time
//! since, times the lifetime; a key asked less than twice a lifetime is checked one token at a
//! time, as without leases. The script grants a lease only while every limit keeps several
//! leases' worth of tokens (`HEADROOM` in `lua/ratelimit.lua`), so near exhaustion every token
//! goes through Redis on its own and the limit is used to its last token.
//!
//! While one check renews a key's lease, the checks that arrive wait for it and are served
//! from the new lease; those it cannot serve are checked one at a time.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use chrono::{DateTime, TimeDelta, Utc};
use keyvault_core::{KeyId, LimitDecision, LimitRequest, LimitState, RateLimit};
use tokio::sync::oneshot;

use crate::{backend::RedisBackend, error::Error, limiter::fixed_now};

/// The longest a lease may live (CONTRACT §3).
pub const MAX_LEASE_LIFETIME: Duration = Duration::from_millis(100);

/// The most tokens one lease takes from a limit (the scripts' bound: exact arithmetic).
pub(crate) const MAX_LEASE: u64 = 1 << 20;

/// A lease of one quota's limits held by this process.
#[derive(Debug)]
struct Held {
    limits: Vec<RateLimit>,
    since: Vec<u64>,
    /// Tokens of the lease not used yet (0 without a lease).
    tokens: u64,
    /// Tokens of the lease used so far: answers report the buckets as if only these had been
    /// taken.
    used: u64,
    /// When the lease ends (a lease with tokens past it is not used again).
    ends: Instant,
    /// Each limit as the lease's grant left it: the whole tokens before the lease, and the
    /// moment the bucket is full again counting the whole lease.
    base: Vec<(u64, DateTime<Utc>)>,
    /// The lease's size.
    granted: u64,
    /// Which lease this is, so that a lapse timer ends only its own.
    generation: u64,
    /// Checks seen since `since_grant` (the request rate that sizes the next lease).
    seen: u64,
    since_grant: Instant,
    /// The last check (an entry idle for a second is dropped).
    touched: Instant,
    /// A check is renewing the lease: the checks that arrive wait for it.
    renewing: bool,
    waiters: Vec<oneshot::Sender<Option<LimitDecision>>>,
}

impl Held {
    fn matches(&self, limits: &[RateLimit], since: &[u64]) -> bool {
        self.limits == limits
            && (0..limits.len()).all(|i| {
                self.since.get(i).copied().unwrap_or(0) == since.get(i).copied().unwrap_or(0)
            })
    }

    fn live(&self, now: Instant) -> bool {
        self.tokens > 0 && now < self.ends
    }

    /// Takes one token of the lease and answers for it.
    fn admit(&mut self) -> LimitDecision {
        self.tokens -= 1;
        self.used += 1;
        self.answer(true)
    }

    /// The buckets as this process knows them: as if only the used tokens had been taken.
    fn answer(&self, admitted: bool) -> LimitDecision {
        as_if_used(&self.limits, &self.base, self.granted, self.used, admitted)
    }
}

/// The buckets of `limits` as if only `used` tokens of a lease of `granted` had been taken:
/// `base` holds, per limit, the whole tokens before the lease and when the bucket is full
/// again counting the whole lease.
fn as_if_used(
    limits: &[RateLimit],
    base: &[(u64, DateTime<Utc>)],
    granted: u64,
    used: u64,
    admitted: bool,
) -> LimitDecision {
    let unused = granted.saturating_sub(used);
    let states = limits
        .iter()
        .zip(base)
        .map(|(l, (before, full_at))| {
            let back =
                u128::from(unused) * u128::from(l.period_ms()) * 1_000_000 / u128::from(l.limit());
            LimitState {
                name: l.name().to_owned(),
                limit: l.limit(),
                remaining: before.saturating_sub(used),
                reset_at: *full_at
                    - TimeDelta::nanoseconds(i64::try_from(back).unwrap_or(i64::MAX)),
                retry_after_ms: None,
            }
        })
        .collect();
    LimitDecision { admitted, states }
}

/// Each limit's whole tokens before a lease of `granted` and when its bucket is full again,
/// from the script's answer after the lease.
fn base_of(decision: &LimitDecision, granted: u64) -> Vec<(u64, DateTime<Utc>)> {
    decision
        .states
        .iter()
        .map(|s| (s.remaining + granted, s.reset_at))
        .collect()
}

/// What a check does about leases.
#[derive(Debug)]
pub(crate) enum Take {
    /// Admitted from the lease.
    Admitted(LimitDecision),
    /// Another check is renewing the lease: wait for it (`None`: check on your own).
    Wait(oneshot::Receiver<Option<LimitDecision>>),
    /// Renew: ask the script for [`Renewal::size`] tokens (1: a single check), then report
    /// with [`Renewal::finish`].
    Renew(Renewal),
}

/// The size of a key's next lease, tokens or credits: twice what it asked for in one
/// `lifetime` at the rate seen since its last lease (`seen` since `since_grant`), at most
/// `max`. A lease used up early renews less often, and what is left goes back.
pub(crate) fn lease_size(
    seen: u64,
    since_grant: Instant,
    now: Instant,
    lifetime: Duration,
    max: u64,
) -> u64 {
    // At least a tenth of a lifetime: a burst of first requests is not a rate.
    let elapsed = now
        .saturating_duration_since(since_grant)
        .as_nanos()
        .max(lifetime.as_nanos() / 10)
        .max(1);
    let want = u128::from(seen) * lifetime.as_nanos() / elapsed;
    u64::try_from(want)
        .unwrap_or(max)
        .saturating_mul(2)
        .min(max)
}

/// A renewal under way. Given up before it finishes (its check's future dropped: the client
/// went away), it lets the checks that waited for it go on their own, and what its call may
/// have taken in Redis is forfeited.
#[derive(Debug)]
pub(crate) struct Renewal {
    leases: Arc<Leases>,
    quota: KeyId,
    size: u64,
    done: bool,
}

impl Renewal {
    /// How many tokens to ask for.
    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// Reports the renewal's answer (see [`Leases::renewed`]).
    pub(crate) fn finish(
        mut self,
        req: &LimitRequest<'_>,
        reply: Result<(LimitDecision, u64), Error>,
    ) -> Result<LimitDecision, Error> {
        self.done = true;
        self.leases.asking.fetch_sub(self.size, Ordering::Relaxed);
        self.leases.renewed(req, reply)
    }
}

impl Drop for Renewal {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        self.leases.asking.fetch_sub(self.size, Ordering::Relaxed);
        self.leases
            .stats
            .abandoned
            .fetch_add(self.size, Ordering::Relaxed);
        let mut held = self.leases.held();
        for h in held.lanes.get_mut(&self.quota).into_iter().flatten() {
            if h.renewing {
                h.renewing = false;
                for w in h.waiters.drain(..) {
                    let _ = w.send(None);
                }
            }
        }
    }
}

/// Leftover tokens to give back: a lane and how many of each limit.
type Giveback = (KeyId, Vec<RateLimit>, Vec<u64>, u64);

/// How long an entry without a lease is kept for the request rate it has seen.
const IDLE: Duration = Duration::from_secs(1);

/// The leases held, by quota id (then told apart by their limits, as lanes are).
#[derive(Debug)]
struct Table {
    lanes: HashMap<KeyId, Vec<Held>>,
    /// When idle entries were last dropped.
    swept: Instant,
}

impl Table {
    /// Drops the entries idle for [`IDLE`], at most once a second.
    fn sweep(&mut self, now: Instant) {
        if now.saturating_duration_since(self.swept) < IDLE {
            return;
        }
        self.swept = now;
        self.lanes.retain(|_, lanes| {
            lanes.retain(|h| {
                h.renewing || h.tokens > 0 || now.saturating_duration_since(h.touched) < IDLE
            });
            !lanes.is_empty()
        });
    }
}

/// The leases of one limiter.
#[derive(Debug)]
pub(crate) struct Leases {
    lifetime: Duration,
    held: Mutex<Table>,
    generation: AtomicU64,
    /// Tokens asked for by the renewals in flight.
    asking: AtomicU64,
    redis: RedisBackend,
    release: redis::Script,
    clock: Option<Arc<dyn keyvault_core::Clock>>,
    stats: LeaseCounters,
}

#[derive(Debug, Default)]
struct LeaseCounters {
    leases: AtomicU64,
    largest: AtomicU64,
    local: AtomicU64,
    returning: AtomicU64,
    returned: AtomicU64,
    forfeited: AtomicU64,
    abandoned: AtomicU64,
}

/// What the leases of a [`crate::RedisRateLimiter`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LeaseStats {
    /// Leases taken.
    pub leases: u64,
    /// The largest lease taken, in tokens of each limit.
    pub largest: u64,
    /// Checks admitted from a lease, without a call to Redis.
    pub local: u64,
    /// Unused tokens held in leases now (live or lapsed, not yet given back).
    pub held: u64,
    /// Unused tokens on their way back to Redis now.
    pub returning: u64,
    /// Tokens asked for by the renewals in flight now.
    pub asking: u64,
    /// Unused tokens given back when their lease ended.
    pub returned: u64,
    /// Unused tokens that could not be given back (Redis unavailable): lost, never reused.
    pub forfeited: u64,
    /// Tokens asked for by renewals given up midway (their checks' futures dropped), which
    /// Redis may have taken: lost if it did, never reused.
    pub abandoned: u64,
}

impl Leases {
    pub(crate) fn new(
        redis: &RedisBackend,
        release: redis::Script,
        lifetime: Duration,
        clock: Option<Arc<dyn keyvault_core::Clock>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            lifetime: lifetime.min(MAX_LEASE_LIFETIME),
            held: Mutex::new(Table {
                lanes: HashMap::new(),
                swept: Instant::now(),
            }),
            generation: AtomicU64::new(0),
            asking: AtomicU64::new(0),
            redis: redis.clone(),
            release,
            clock,
            stats: LeaseCounters::default(),
        })
    }

    /// Whether `req` may be served by a lease: leases are on, the check takes a token, and it
    /// has no request id of the caller's (a retry of one must be recognised in Redis, by
    /// every instance).
    pub(crate) fn applies(&self, req: &LimitRequest<'_>) -> bool {
        !self.lifetime.is_zero() && req.request_id.is_empty() && !req.limits.is_empty()
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Table> {
        // Nothing panics while the lock is held; a poisoned map is still consistent.
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn stats(&self) -> LeaseStats {
        let held = self.held().lanes.values().flatten().map(|h| h.tokens).sum();
        LeaseStats {
            leases: self.stats.leases.load(Ordering::Relaxed),
            largest: self.stats.largest.load(Ordering::Relaxed),
            local: self.stats.local.load(Ordering::Relaxed),
            held,
            returning: self.stats.returning.load(Ordering::Relaxed),
            asking: self.asking.load(Ordering::Relaxed),
            returned: self.stats.returned.load(Ordering::Relaxed),
            forfeited: self.stats.forfeited.load(Ordering::Relaxed),
            abandoned: self.stats.abandoned.load(Ordering::Relaxed),
        }
    }

    /// A pure check answered by a live lease (it holds a whole token), if there is one.
    pub(crate) fn peek(&self, req: &LimitRequest<'_>) -> Option<LimitDecision> {
        let now = Instant::now();
        let held = self.held();
        let h = held
            .lanes
            .get(&req.quota_id)?
            .iter()
            .find(|h| h.matches(req.limits, req.since))?;
        h.live(now).then(|| h.answer(true))
    }

    /// What a check that takes a token does: admitted from the lease, wait for the renewal
    /// in flight, or renew.
    pub(crate) fn take(self: &Arc<Self>, req: &LimitRequest<'_>) -> Take {
        let now = Instant::now();
        let mut ended = Vec::new();
        let take = {
            let mut held = self.held();
            held.sweep(now);
            let lanes = held.lanes.entry(req.quota_id).or_default();
            // A lease of other limits is the key's old configuration: it ends now.
            if lanes.len() > 1
                || lanes
                    .first()
                    .is_some_and(|h| !h.matches(req.limits, req.since))
            {
                lanes.retain_mut(|h| {
                    if h.matches(req.limits, req.since) {
                        return true;
                    }
                    if h.tokens > 0 {
                        ended.push((req.quota_id, h.limits.clone(), h.since.clone(), h.tokens));
                    }
                    for w in h.waiters.drain(..) {
                        let _ = w.send(None);
                    }
                    h.renewing
                });
            }
            match lanes.iter_mut().find(|h| h.matches(req.limits, req.since)) {
                Some(h) => {
                    h.seen += 1;
                    h.touched = now;
                    if h.renewing {
                        let (tx, rx) = oneshot::channel();
                        h.waiters.push(tx);
                        Take::Wait(rx)
                    } else if h.live(now) {
                        self.stats.local.fetch_add(1, Ordering::Relaxed);
                        Take::Admitted(h.admit())
                    } else {
                        if h.tokens > 0 {
                            // Lapsed with tokens left: they go back.
                            ended.push((
                                req.quota_id,
                                h.limits.clone(),
                                h.since.clone(),
                                std::mem::take(&mut h.tokens),
                            ));
                        }
                        h.renewing = true;
                        Take::Renew(self.renewal(req.quota_id, self.size(h, now)))
                    }
                }
                None => {
                    lanes.push(Held {
                        limits: req.limits.to_vec(),
                        since: req.since.to_vec(),
                        tokens: 0,
                        used: 0,
                        ends: now,
                        base: Vec::new(),
                        granted: 0,
                        generation: 0,
                        seen: 1,
                        since_grant: now,
                        touched: now,
                        renewing: true,
                        waiters: Vec::new(),
                    });
                    Take::Renew(self.renewal(req.quota_id, 1))
                }
            }
        };
        self.give_back_later(ended);
        take
    }

    fn renewal(self: &Arc<Self>, quota: KeyId, size: u64) -> Renewal {
        self.asking.fetch_add(size, Ordering::Relaxed);
        Renewal {
            leases: self.clone(),
            quota,
            size,
            done: false,
        }
    }

    /// The next lease's size for `h` (1: no lease).
    fn size(&self, h: &Held, now: Instant) -> u64 {
        lease_size(h.seen, h.since_grant, now, self.lifetime, MAX_LEASE).max(1)
    }

    /// The renewal's answer: `granted` tokens were taken from each limit for the check that
    /// renewed (0: refused; 1: its own token only), `decision` as the script reported it.
    /// Installs the lease and serves the checks that waited. Returns the renewing check's
    /// answer.
    fn renewed(
        self: &Arc<Self>,
        req: &LimitRequest<'_>,
        reply: Result<(LimitDecision, u64), Error>,
    ) -> Result<LimitDecision, Error> {
        let now = Instant::now();
        let mut held = self.held();
        let found = held.lanes.get_mut(&req.quota_id).and_then(|lanes| {
            let idx = lanes
                .iter()
                .position(|h| h.matches(req.limits, req.since))?;
            Some((lanes, idx))
        });
        let Some((lanes, idx)) = found else {
            // The lease was ended meanwhile (the key changed, the process stops): what the
            // grant took beyond this check's own token goes back at once.
            drop(held);
            let (decision, granted) = reply?;
            if granted < 2 {
                return Ok(decision);
            }
            let base = base_of(&decision, granted);
            self.give_back_later(vec![(
                req.quota_id,
                req.limits.to_vec(),
                req.since.to_vec(),
                granted - 1,
            )]);
            return Ok(as_if_used(req.limits, &base, granted, 1, true));
        };
        let h = &mut lanes[idx];
        h.renewing = false;
        let waiters = std::mem::take(&mut h.waiters);
        let (decision, granted) = match reply {
            Ok(r) => r,
            Err(e) => {
                for w in waiters {
                    let _ = w.send(None);
                }
                return Err(e);
            }
        };
        if granted < 2 {
            // A single check: the key is near exhaustion or too quiet for a lease.
            for w in waiters {
                let _ = w.send(None);
            }
            return Ok(decision);
        }
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        h.base = base_of(&decision, granted);
        h.granted = granted;
        h.tokens = granted;
        h.used = 0;
        h.ends = now + self.lifetime;
        h.generation = generation;
        h.seen = 0;
        h.since_grant = now;
        self.stats.leases.fetch_add(1, Ordering::Relaxed);
        self.stats.largest.fetch_max(granted, Ordering::Relaxed);
        let own = h.admit();
        for w in waiters {
            if h.live(now) {
                if w.send(Some(h.admit())).is_err() {
                    // The waiting check was given up: its token stays in the lease.
                    h.tokens += 1;
                    h.used -= 1;
                } else {
                    self.stats.local.fetch_add(1, Ordering::Relaxed);
                }
            } else {
                let _ = w.send(None);
            }
        }
        drop(held);
        self.end_at(req, generation);
        Ok(own)
    }

    /// Gives a token back to the live lease of `req`'s limits, if there is one (`false`:
    /// give it back to Redis).
    pub(crate) fn give_back(&self, req: &LimitRequest<'_>) -> bool {
        let now = Instant::now();
        let mut held = self.held();
        let Some(h) = held
            .lanes
            .get_mut(&req.quota_id)
            .and_then(|l| l.iter_mut().find(|h| h.matches(req.limits, req.since)))
        else {
            return false;
        };
        if now >= h.ends || h.used == 0 {
            return false;
        }
        h.tokens += 1;
        h.used -= 1;
        true
    }

    /// Ends the lease `generation` of `req`'s limits when its lifetime is over, unless a newer
    /// one replaced it: its unused tokens go back.
    fn end_at(self: &Arc<Self>, req: &LimitRequest<'_>, generation: u64) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let leases = self.clone();
        let quota = req.quota_id;
        let lifetime = self.lifetime;
        rt.spawn(async move {
            tokio::time::sleep(lifetime).await;
            let ended = {
                let mut held = leases.held();
                let Some(h) = held.lanes.get_mut(&quota).and_then(|lanes| {
                    lanes
                        .iter_mut()
                        .find(|h| h.generation == generation && !h.renewing)
                }) else {
                    return;
                };
                // The entry stays, with the request rate it has seen, until it idles.
                let tokens = std::mem::take(&mut h.tokens);
                leases.stats.returning.fetch_add(tokens, Ordering::Relaxed);
                (tokens > 0).then(|| (quota, h.limits.clone(), h.since.clone(), tokens))
            };
            if let Some(g) = ended {
                leases.give_back_now(g).await;
            }
        });
    }

    /// Gives leftover tokens back in a task of their own.
    fn give_back_later(self: &Arc<Self>, ended: Vec<Giveback>) {
        if ended.is_empty() {
            return;
        }
        for (.., n) in &ended {
            self.stats.returning.fetch_add(*n, Ordering::Relaxed);
        }
        let leases = self.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    for g in ended {
                        leases.give_back_now(g).await;
                    }
                });
            }
            Err(_) => {
                for (.., n) in ended {
                    self.stats.returning.fetch_sub(n, Ordering::Relaxed);
                    self.stats.forfeited.fetch_add(n, Ordering::Relaxed);
                }
            }
        }
    }

    /// Gives `n` tokens of each limit back to Redis (forfeited when Redis fails).
    async fn give_back_now(&self, (quota, limits, since, n): Giveback) {
        let call = self.release_call(quota, &limits, &since, "", n).await;
        self.stats.returning.fetch_sub(n, Ordering::Relaxed);
        match call {
            Ok(()) => self.stats.returned.fetch_add(n, Ordering::Relaxed),
            Err(e) => {
                tracing::debug!(error = %e, tokens = n, "leased tokens could not be given back");
                self.stats.forfeited.fetch_add(n, Ordering::Relaxed)
            }
        };
    }

    /// `release.lua`: gives `count` tokens of each limit back (once per request id, unless
    /// it is empty).
    pub(crate) async fn release_call(
        &self,
        quota: KeyId,
        limits: &[RateLimit],
        since: &[u64],
        request_id: &str,
        count: u64,
    ) -> Result<(), Error> {
        let mut inv = self.release.prepare_invoke();
        inv.key(self.redis.quota_key(quota, &format!("rl:req:{request_id}")));
        for (i, l) in limits.iter().enumerate() {
            let since = since.get(i).copied().unwrap_or(0);
            inv.key(
                self.redis
                    .quota_key(quota, &crate::lanes::bucket_name(l, since)),
            );
        }
        inv.arg(request_id)
            .arg(self.redis.idempotency_ms())
            .arg(count);
        for l in limits {
            inv.arg(l.limit()).arg(l.period_ms());
        }
        if let Some(now) = fixed_now(self.clock.as_deref()) {
            inv.arg(now);
        }
        let mut conn = self.redis.conn();
        let _: i64 = self
            .redis
            .run(async { inv.invoke_async(&mut conn).await })
            .await?;
        Ok(())
    }

    /// Ends every lease now and gives the unused tokens back (a process about to stop).
    pub(crate) async fn end_all(&self) {
        let ended: Vec<(KeyId, Held)> = {
            let mut held = self.held();
            held.lanes
                .drain()
                .flat_map(|(quota, lanes)| lanes.into_iter().map(move |h| (quota, h)))
                .collect()
        };
        self.end_now(ended).await;
    }

    /// Ends the leases of `quota` now (its key changed), giving their tokens back.
    pub(crate) async fn end(&self, quota: KeyId) {
        let ended: Vec<(KeyId, Held)> = {
            let mut held = self.held();
            held.lanes
                .remove(&quota)
                .into_iter()
                .flatten()
                .map(|h| (quota, h))
                .collect()
        };
        self.end_now(ended).await;
    }

    /// Gives back what the leases taken out of the table held; their waiting checks go to
    /// Redis on their own.
    async fn end_now(&self, ended: Vec<(KeyId, Held)>) {
        let mut back = Vec::new();
        for (quota, h) in ended {
            for w in h.waiters {
                let _ = w.send(None);
            }
            if h.tokens > 0 {
                self.stats.returning.fetch_add(h.tokens, Ordering::Relaxed);
                back.push((quota, h.limits, h.since, h.tokens));
            }
        }
        for g in back {
            self.give_back_now(g).await;
        }
    }
}
