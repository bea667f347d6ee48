use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use async_trait::async_trait;
use chrono::{DateTime, TimeDelta, Utc};

use crate::{
    clock::{Clock, SharedClock, SystemClock},
    error::Result,
    gcra::Bucket,
    limits::{LimitDecision, LimitRequest, RateLimiter},
    model::{KeyId, RateLimit},
    outcome::LimitState,
};

/// GCRA rate limits in process memory, exact under any concurrency within the process.
/// Buckets are keyed by the limit (its name, size and period) and when it was set, so a
/// changed limit starts full, even one changed back to an earlier value.
#[derive(Debug)]
pub struct MemoryRateLimiter {
    buckets: Mutex<HashMap<KeyId, Vec<Stored>>>,
    clock: SharedClock,
    checks: AtomicU64,
}

const SWEEP_EVERY: u64 = 65_536;

/// A bucket: its limit, when the limit was set, and its GCRA state.
type Stored = (RateLimit, u64, u128);

impl MemoryRateLimiter {
    /// A limiter on the system clock.
    pub fn new() -> Self {
        Self::with_clock(Arc::new(SystemClock))
    }

    /// A limiter on the given clock.
    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        Self {
            buckets: Mutex::new(HashMap::new()),
            clock,
            checks: AtomicU64::new(0),
        }
    }

    fn now_ns(&self) -> (DateTime<Utc>, u128) {
        let now = self.clock.now();
        let ns = now.timestamp_nanos_opt().unwrap_or(i64::MAX).max(0) as u128;
        (now, ns)
    }
}

impl Default for MemoryRateLimiter {
    fn default() -> Self {
        Self::new()
    }
}

fn state(now: DateTime<Utc>, limit: &RateLimit, s: &crate::gcra::BucketState) -> LimitState {
    let delta = |ns: u128| TimeDelta::nanoseconds(i64::try_from(ns).unwrap_or(i64::MAX));
    LimitState {
        name: limit.name().to_owned(),
        limit: limit.limit(),
        remaining: s.remaining,
        reset_at: now + delta(s.reset_in_ns),
        retry_after_ms: s
            .retry_in_ns
            .map(|ns| u64::try_from(ns.div_ceil(1_000_000)).unwrap_or(u64::MAX)),
    }
}

#[async_trait]
impl RateLimiter for MemoryRateLimiter {
    async fn check(&self, req: &LimitRequest<'_>) -> Result<LimitDecision> {
        let (now, now_ns) = self.now_ns();
        let mut map = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            // A bucket at or past its TAT is full: forgetting it changes nothing.
            map.retain(|_, v| {
                v.retain(|(l, _, x)| *x > now_ns * u128::from(l.limit()));
                !v.is_empty()
            });
        }
        let stored = map.entry(req.quota_id).or_default();
        let slot = |stored: &Vec<Stored>, l: &RateLimit, since: u64| {
            stored.iter().position(|(s, t, _)| s == l && *t == since)
        };
        let x_of = |stored: &Vec<Stored>, i: usize| {
            slot(stored, &req.limits[i], req.since_of(i)).map_or(0, |j| stored[j].2)
        };
        let checks: Vec<_> = req
            .limits
            .iter()
            .enumerate()
            .map(|(i, l)| {
                Bucket::new(l.limit(), l.period_ms()).check(x_of(stored, i), now_ns, true)
            })
            .collect();
        let admitted = checks.iter().all(|c| c.admitted);
        let mut states = Vec::with_capacity(checks.len());
        for (i, (l, c)) in req.limits.iter().zip(&checks).enumerate() {
            let c = if admitted && req.take {
                match slot(stored, l, req.since_of(i)) {
                    Some(j) => stored[j].2 = c.x,
                    None => stored.push((l.clone(), req.since_of(i), c.x)),
                }
                *c
            } else {
                // Nothing taken: report the bucket as it stands.
                Bucket::new(l.limit(), l.period_ms()).check(x_of(stored, i), now_ns, false)
            };
            states.push(state(now, l, &c));
        }
        Ok(LimitDecision { admitted, states })
    }

    async fn release(&self, req: &LimitRequest<'_>) -> Result<()> {
        let (_, now_ns) = self.now_ns();
        let mut map = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(stored) = map.get_mut(&req.quota_id) {
            for (i, l) in req.limits.iter().enumerate() {
                let since = req.since_of(i);
                if let Some(slot) = stored.iter_mut().find(|(s, t, _)| s == l && *t == since) {
                    slot.2 = Bucket::new(l.limit(), l.period_ms()).release(slot.2, now_ns);
                }
            }
        }
        Ok(())
    }
}
