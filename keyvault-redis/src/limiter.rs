//! [`RedisRateLimiter`]: GCRA buckets in Redis, every limit of a key checked in one script.

use std::{
    collections::HashMap,
    num::NonZeroU32,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use chrono::{DateTime, TimeDelta, Utc};
use keyvault_core::{
    Clock, LimitDecision, LimitRequest, LimitState, RateLimit, RateLimiter,
    memory::MemoryRateLimiter,
};
use tokio::sync::oneshot;

use crate::{
    backend::RedisBackend,
    error::Error,
    fail::{FailCounters, FailMode, FallbackStats},
    lanes::{Lane, Lanes, Lead, MAX_CALLS_PER_LANE, Pending, SECOND_CALL_AT, lane_mut},
    lease::{LeaseStats, Leases, MAX_LEASE_LIFETIME, Take},
};

/// How [`RedisRateLimiter`] behaves when Redis is unavailable. Each limit states its own
/// fail mode ([`RateLimit::fail_mode`], stored with the key); a deployment may override it
/// for the limits of one name.
///
/// ```
/// use std::num::NonZeroU32;
/// use keyvault_core::{FailMode, RateLimit};
/// use keyvault_redis::RedisLimiterConfig;
///
/// let config = RedisLimiterConfig::default()
///     .instances(NonZeroU32::new(4).unwrap())      // local fallback: ⌈L/4⌉ per instance
///     .fail_mode_for("per-day", FailMode::Closed); // this limit must never be exceeded
/// let per_day = RateLimit::new("per-day", 10_000, 86_400_000)?;
/// let per_minute = RateLimit::new("per-minute", 100, 60_000)?;
/// assert_eq!(config.mode_of(&per_day), FailMode::Closed);
/// assert_eq!(config.mode_of(&per_minute), FailMode::Local);
/// let strict = per_minute.with_fail_mode(FailMode::Open);
/// assert_eq!(config.mode_of(&strict), FailMode::Open);
/// # Ok::<(), keyvault_core::InvalidInput>(())
/// ```
#[derive(Debug, Clone)]
pub struct RedisLimiterConfig {
    per_limit: HashMap<String, FailMode>,
    instances: NonZeroU32,
    clock: Option<Arc<dyn Clock>>,
    lease_lifetime: Duration,
}

/// How long a lease lives by default ([`RedisLimiterConfig::lease_lifetime`]).
pub const DEFAULT_LEASE_LIFETIME: Duration = Duration::from_millis(50);

impl Default for RedisLimiterConfig {
    /// Each limit's own fail mode, with N = 1; leases of [`DEFAULT_LEASE_LIFETIME`].
    fn default() -> Self {
        Self {
            per_limit: HashMap::new(),
            instances: NonZeroU32::MIN,
            clock: None,
            lease_lifetime: DEFAULT_LEASE_LIFETIME,
        }
    }
}

impl RedisLimiterConfig {
    /// Overrides the fail mode of the limits named `name`, whatever they state.
    pub fn fail_mode_for(mut self, name: impl Into<String>, mode: FailMode) -> Self {
        self.per_limit.insert(name.into(), mode);
        self
    }

    /// How many instances share the limits: the `local` fallback admits ⌈L/N⌉ per instance
    /// (default 1).
    pub fn instances(mut self, n: NonZeroU32) -> Self {
        self.instances = n;
        self
    }

    /// Reads time from `clock` (to the microsecond) instead of the Redis server's `TIME`, and
    /// stores buckets without an expiry, since the server's time no longer passes with theirs.
    /// For tests that move time themselves ([`keyvault_core::FakeClock`]): every instance
    /// sharing buckets must read one clock, which only the server's is in a deployment.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// How long a lease of tokens lives (default [`DEFAULT_LEASE_LIFETIME`], at most
    /// 100 ms: longer is taken as 100 ms; zero: no leases, every token is taken in Redis).
    /// A longer lease takes Redis less often for a busy key; a shorter one gives unused
    /// tokens back sooner to the other instances.
    pub fn lease_lifetime(mut self, lifetime: Duration) -> Self {
        self.lease_lifetime = lifetime.min(MAX_LEASE_LIFETIME);
        self
    }

    /// The fail mode applied to `limit`: the override for its name, else its own.
    pub fn mode_of(&self, limit: &RateLimit) -> FailMode {
        self.per_limit
            .get(limit.name())
            .copied()
            .unwrap_or(limit.fail_mode())
    }
}

/// Rate limits shared by every instance on one Redis: one Lua script (`lua/ratelimit.lua`)
/// checks all of a key's limits with GCRA on the server's clock and takes a token from each
/// only when all admit; exact under any concurrency across instances.
///
/// Buckets are `<namespace>:{<quota id>}:rl:<limit>:<period_ms>:<name>` (`rl@<since>:…` for a
/// limit set by a change, see [`keyvault_core::KeyRecord::ratelimits_since`]), so a changed
/// limit starts full, even one changed back, and every bucket of a key sits in one Redis
/// Cluster slot. A request id is
/// remembered for [`crate::RedisConfig::idempotency_ttl`]: a retried check takes nothing more
/// and a release gives back only what its check took, once.
///
/// A check without a request id of the caller's (a verification's own, never retried) may be
/// admitted from a lease: far from exhaustion a busy key's checks take a batch of tokens in
/// one script call and admit from it in process for at most the lease lifetime
/// ([`RedisLimiterConfig::lease_lifetime`], CONTRACT §3), giving back what was not used when
/// it ends; near exhaustion every token goes through Redis on its own, so the limit is used to
/// its last token and never exceeded. [`RedisRateLimiter::lease_stats`] counts what leases did;
/// [`RedisRateLimiter::end_leases`] gives their tokens back before a process stops.
///
/// Concurrent checks of one key with the same limits are coalesced: while one script call for
/// them is on its way, the checks that arrive queue up, and the next call carries up to
/// [`MAX_BATCH`] of them, which the script applies strictly in arrival order in one atomic
/// step; once a few checks wait, a second call may go out before the first returns, so that
/// the lane's round trips overlap. A lone check never waits: it is sent at once. A call that fails or runs past the time
/// budget applies the fail mode to each check it carried, so a queued check waits at most for
/// the call ahead of it and its own (twice the budget). [`RedisRateLimiter::batch_stats`]
/// counts checks and script calls.
///
/// ```no_run
/// use keyvault_core::{KeyId, LimitRequest, RateLimit, RateLimiter};
/// use keyvault_redis::{RedisBackend, RedisConfig, RedisLimiterConfig, RedisRateLimiter};
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let redis = RedisBackend::connect("redis://127.0.0.1:6379", RedisConfig::default()).await?;
/// let limiter = RedisRateLimiter::new(&redis, RedisLimiterConfig::default());
/// let limits = [RateLimit::new("per-minute", 100, 60_000)?];
/// let req = LimitRequest { quota_id: KeyId::new(), limits: &limits, since: &[], take: true, request_id: "r1" };
/// assert!(limiter.check(&req).await?.admitted);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct RedisRateLimiter {
    config: RedisLimiterConfig,
    lanes: Arc<Lanes>,
    leases: Arc<Leases>,
    local: MemoryRateLimiter,
    counters: FailCounters,
}

/// The most checks one script call carries: bounds the script's run time (Redis serves nothing
/// else meanwhile) and its reply.
pub const MAX_BATCH: usize = 128;

/// How [`RedisRateLimiter`] coalesced its checks into script calls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchStats {
    /// Checks sent to Redis (whatever the answer).
    pub checks: u64,
    /// Script calls that carried them.
    pub script_calls: u64,
    /// The most checks one call carried.
    pub largest_batch: u64,
}

impl RedisRateLimiter {
    /// A limiter on `redis`.
    pub fn new(redis: &RedisBackend, config: RedisLimiterConfig) -> Self {
        let clock = config.clock.clone();
        let local = match &config.clock {
            Some(c) => MemoryRateLimiter::with_clock(c.clone()),
            None => MemoryRateLimiter::new(),
        };
        let leases = Leases::new(
            redis,
            redis::Script::new(concat!(
                include_str!("../lua/tokens.lua"),
                include_str!("../lua/release.lua")
            )),
            config.lease_lifetime,
            clock.clone(),
        );
        Self {
            config,
            leases,
            lanes: Arc::new(Lanes {
                redis: redis.clone(),
                script: redis::Script::new(concat!(
                    include_str!("../lua/tokens.lua"),
                    include_str!("../lua/ratelimit.lua")
                )),
                clock,
                busy: Mutex::new(HashMap::new()),
                checks: AtomicU64::new(0),
                calls: AtomicU64::new(0),
                largest: AtomicU64::new(0),
            }),
            local,
            counters: FailCounters::new("ratelimit"),
        }
    }

    /// How often Redis was unavailable and what the limits answered.
    pub fn stats(&self) -> FallbackStats {
        self.counters.snapshot()
    }

    /// How many checks went to Redis and in how many script calls.
    pub fn batch_stats(&self) -> BatchStats {
        BatchStats {
            checks: self.lanes.checks.load(Ordering::Relaxed),
            script_calls: self.lanes.calls.load(Ordering::Relaxed),
            largest_batch: self.lanes.largest.load(Ordering::Relaxed),
        }
    }

    /// What the leases did: taken, checks admitted from them, tokens given back or lost.
    pub fn lease_stats(&self) -> LeaseStats {
        self.leases.stats()
    }

    /// Ends every lease now and gives the unused tokens back: for a process about to stop
    /// (those of a process that stops without it are forfeited, never handed out twice).
    pub async fn end_leases(&self) {
        self.leases.end_all().await;
        let (l, b) = (self.lease_stats(), self.batch_stats());
        tracing::info!(
            leases = l.leases,
            largest = l.largest,
            local = l.local,
            returned = l.returned,
            forfeited = l.forfeited,
            redis_checks = b.checks,
            script_calls = b.script_calls,
            "rate-limit leases ended"
        );
    }

    /// Ends the leases of one quota now, giving their unused tokens back (its key changed).
    pub async fn end_leases_of(&self, quota_id: keyvault_core::KeyId) {
        self.leases.end(quota_id).await;
    }

    /// A check on Redis taking `want` tokens (0: a pure check; more than 1: a lease, which
    /// the script may grant smaller or not at all). Returns the decision and how many tokens
    /// were taken from each limit.
    async fn check_redis(
        &self,
        req: &LimitRequest<'_>,
        want: u64,
    ) -> Result<(LimitDecision, u64), Error> {
        let queued = {
            let mut busy = self.lanes.busy();
            match lane_mut(&mut busy, req.quota_id, req.limits, req.since) {
                Some(l) => {
                    let (answer, rx) = oneshot::channel();
                    l.queue.push(Pending {
                        want,
                        request_id: req.request_id.to_owned(),
                        answer,
                    });
                    if l.calls < MAX_CALLS_PER_LANE && l.queue.len() >= SECOND_CALL_AT {
                        l.calls += 1;
                        if let Ok(rt) = tokio::runtime::Handle::try_current() {
                            rt.spawn(self.lanes.clone().drain((
                                req.quota_id,
                                req.limits.to_vec(),
                                req.since.to_vec(),
                            )));
                        } else {
                            l.calls -= 1;
                        }
                    }
                    Some(rx)
                }
                None => {
                    busy.entry(req.quota_id).or_default().push(Lane {
                        limits: req.limits.to_vec(),
                        since: req.since.to_vec(),
                        calls: 1,
                        queue: Vec::new(),
                    });
                    None
                }
            }
        };
        let reply = match queued {
            Some(rx) => rx.await.map_err(|_| {
                Error::Reply("rate-limit batch ended without an answer (runtime shutting down)")
            })??,
            None => {
                let lead = Lead {
                    lanes: self.lanes.clone(),
                    lane: (req.quota_id, req.limits.to_vec(), req.since.to_vec()),
                };
                let replies = self.lanes.call(&lead.lane, &[(want, req.request_id)]).await;
                // Hands the queued checks on before this one is answered.
                drop(lead);
                let mut replies = replies?;
                replies.pop().ok_or(Error::Reply(
                    "rate-limit script answered the wrong number of values",
                ))?
            }
        };
        let d = decision(req.limits, &reply)?;
        let taken = if d.admitted && want > 0 {
            u64::try_from(reply[0]).unwrap_or(1)
        } else {
            0
        };
        Ok((d, taken))
    }

    async fn release_redis(&self, req: &LimitRequest<'_>) -> Result<(), Error> {
        self.leases
            .release_call(req.quota_id, req.limits, req.since, req.request_id, 1)
            .await
    }

    /// The in-process share of a limit: ⌈L/N⌉ tokens per period.
    fn local_share(&self, l: &RateLimit) -> keyvault_core::Result<RateLimit> {
        let share = u64::from(l.limit()).div_ceil(u64::from(self.config.instances.get()));
        Ok(RateLimit::new(l.name(), share, l.period_ms())?)
    }

    /// The in-process shares of `req`'s limits whose fail mode is `local`, with when each was
    /// set.
    fn local_limits(
        &self,
        req: &LimitRequest<'_>,
    ) -> keyvault_core::Result<(Vec<RateLimit>, Vec<u64>)> {
        let mut local = Vec::new();
        let mut since = Vec::new();
        for (i, l) in req.limits.iter().enumerate() {
            if self.config.mode_of(l) == FailMode::Local {
                local.push(self.local_share(l)?);
                since.push(req.since_of(i));
            }
        }
        Ok((local, since))
    }

    async fn check_fallback(
        &self,
        req: &LimitRequest<'_>,
        error: Error,
    ) -> keyvault_core::Result<LimitDecision> {
        self.counters.unavailable(&error);
        let modes: Vec<FailMode> = req.limits.iter().map(|l| self.config.mode_of(l)).collect();
        if modes.contains(&FailMode::Closed) {
            self.counters.fallback(FailMode::Closed);
            return Err(error.into());
        }
        let (local, since) = self.local_limits(req)?;
        let local_decision = self
            .local
            .check(&LimitRequest {
                limits: &local,
                since: &since,
                ..*req
            })
            .await?;
        let mut local_states = local_decision.states.into_iter();
        let now = self
            .config
            .clock
            .as_ref()
            .map_or_else(Utc::now, |c| c.now());
        let mut states = Vec::with_capacity(req.limits.len());
        for (l, m) in req.limits.iter().zip(&modes) {
            self.counters.fallback(*m);
            let state = match m {
                FailMode::Local => local_states.next(),
                _ => None,
            };
            states.push(state.unwrap_or_else(|| LimitState {
                name: l.name().to_owned(),
                limit: l.limit(),
                remaining: u64::from(l.limit()),
                reset_at: now,
                retry_after_ms: None,
            }));
        }
        Ok(LimitDecision {
            admitted: local_decision.admitted,
            states,
        })
    }
}

/// The scripts' `@<µs>` argument for a limiter on its own clock.
pub(crate) fn fixed_now(clock: Option<&dyn Clock>) -> Option<String> {
    clock.map(|c| format!("@{}", c.now().timestamp_micros()))
}

fn decision(limits: &[RateLimit], reply: &[i64]) -> Result<LimitDecision, Error> {
    if reply.len() != 2 + 3 * limits.len() {
        return Err(Error::Reply(
            "rate-limit script answered the wrong number of values",
        ));
    }
    let now_us = reply[1];
    let now = DateTime::<Utc>::from_timestamp_micros(now_us)
        .ok_or(Error::Reply("rate-limit script answered a bad time"))?;
    let states = limits
        .iter()
        .zip(reply[2..].chunks_exact(3))
        .map(|(l, v)| LimitState {
            name: l.name().to_owned(),
            limit: l.limit(),
            remaining: u64::try_from(v[0]).unwrap_or(0),
            reset_at: now + TimeDelta::microseconds(v[1].max(0)),
            retry_after_ms: (v[2] >= 0).then(|| u64::try_from(v[2]).unwrap_or(0).div_ceil(1_000)),
        })
        .collect();
    Ok(LimitDecision {
        admitted: reply[0] >= 1,
        states,
    })
}

#[async_trait]
impl RateLimiter for RedisRateLimiter {
    async fn check(&self, req: &LimitRequest<'_>) -> keyvault_core::Result<LimitDecision> {
        if req.limits.is_empty() {
            return Ok(LimitDecision {
                admitted: true,
                states: Vec::new(),
            });
        }
        if self.leases.applies(req) {
            if !req.take {
                if let Some(d) = self.leases.peek(req) {
                    return Ok(d);
                }
            } else {
                match self.leases.take(req) {
                    Take::Admitted(d) => return Ok(d),
                    // Served by the renewal it waited for, or checked on its own.
                    Take::Wait(rx) => {
                        if let Ok(Some(d)) = rx.await {
                            return Ok(d);
                        }
                    }
                    Take::Renew(renewal) => {
                        let reply = self.check_redis(req, renewal.size()).await;
                        return match renewal.finish(req, reply) {
                            Ok(d) => Ok(d),
                            Err(e) if e.is_unavailable() => self.check_fallback(req, e).await,
                            Err(e) => Err(e.into()),
                        };
                    }
                }
            }
        }
        match self.check_redis(req, u64::from(req.take)).await {
            Ok((d, _)) => Ok(d),
            Err(e) if e.is_unavailable() => self.check_fallback(req, e).await,
            Err(e) => Err(e.into()),
        }
    }

    async fn release(&self, req: &LimitRequest<'_>) -> keyvault_core::Result<()> {
        if req.limits.is_empty() || !req.take {
            return Ok(());
        }
        if self.leases.applies(req) && self.leases.give_back(req) {
            return Ok(());
        }
        match self.release_redis(req).await {
            Ok(()) => Ok(()),
            Err(e) if e.is_unavailable() => {
                self.counters.unavailable(&e);
                if req
                    .limits
                    .iter()
                    .any(|l| self.config.mode_of(l) == FailMode::Closed)
                {
                    self.counters.fallback(FailMode::Closed);
                    return Err(e.into());
                }
                // The check was most likely answered in process too: give back there.
                let (local, since) = self.local_limits(req)?;
                self.local
                    .release(&LimitRequest {
                        limits: &local,
                        since: &since,
                        ..*req
                    })
                    .await
            }
            Err(e) => Err(e.into()),
        }
    }
}
