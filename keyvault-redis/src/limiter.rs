//! [`RedisRateLimiter`]: GCRA buckets in Redis, every limit of a key checked in one script.

use std::{
    collections::HashMap,
    num::NonZeroU32,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
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
    lanes::{
        Lane, Lanes, Lead, MAX_CALLS_PER_LANE, Pending, SECOND_CALL_AT, bucket_name, lane_mut,
    },
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
}

impl Default for RedisLimiterConfig {
    /// Each limit's own fail mode, with N = 1.
    fn default() -> Self {
        Self {
            per_limit: HashMap::new(),
            instances: NonZeroU32::MIN,
            clock: None,
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
    redis: RedisBackend,
    config: RedisLimiterConfig,
    lanes: Arc<Lanes>,
    release: redis::Script,
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
        Self {
            redis: redis.clone(),
            config,
            lanes: Arc::new(Lanes {
                redis: redis.clone(),
                script: redis::Script::new(include_str!("../lua/ratelimit.lua")),
                clock,
                busy: Mutex::new(HashMap::new()),
                checks: AtomicU64::new(0),
                calls: AtomicU64::new(0),
                largest: AtomicU64::new(0),
            }),
            release: redis::Script::new(include_str!("../lua/release.lua")),
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

    fn release_invocation<'s>(&'s self, req: &LimitRequest<'_>) -> redis::ScriptInvocation<'s> {
        let mut inv = self.release.prepare_invoke();
        inv.key(
            self.redis
                .quota_key(req.quota_id, &format!("rl:req:{}", req.request_id)),
        );
        for (i, l) in req.limits.iter().enumerate() {
            inv.key(
                self.redis
                    .quota_key(req.quota_id, &bucket_name(l, req.since_of(i))),
            );
        }
        inv
    }

    async fn check_redis(&self, req: &LimitRequest<'_>) -> Result<LimitDecision, Error> {
        let queued = {
            let mut busy = self.lanes.busy();
            match lane_mut(&mut busy, req.quota_id, req.limits, req.since) {
                Some(l) => {
                    let (answer, rx) = oneshot::channel();
                    l.queue.push(Pending {
                        take: req.take,
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
                let replies = self
                    .lanes
                    .call(&lead.lane, &[(req.take, req.request_id)])
                    .await;
                // Hands the queued checks on before this one is answered.
                drop(lead);
                let mut replies = replies?;
                replies.pop().ok_or(Error::Reply(
                    "rate-limit script answered the wrong number of values",
                ))?
            }
        };
        decision(req.limits, &reply)
    }

    async fn release_redis(&self, req: &LimitRequest<'_>) -> Result<(), Error> {
        let mut inv = self.release_invocation(req);
        inv.arg(req.request_id).arg(self.redis.idempotency_ms());
        for l in req.limits {
            inv.arg(l.limit()).arg(l.period_ms());
        }
        if let Some(now) = fixed_now(self.config.clock.as_deref()) {
            inv.arg(now);
        }
        let mut conn = self.redis.conn();
        let _: i64 = self
            .redis
            .run(async { inv.invoke_async(&mut conn).await })
            .await?;
        Ok(())
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
        admitted: reply[0] == 1,
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
        match self.check_redis(req).await {
            Ok(d) => Ok(d),
            Err(e) if e.is_unavailable() => self.check_fallback(req, e).await,
            Err(e) => Err(e.into()),
        }
    }

    async fn release(&self, req: &LimitRequest<'_>) -> keyvault_core::Result<()> {
        if req.limits.is_empty() || !req.take {
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
