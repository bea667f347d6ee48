//! Coalescing: concurrent checks of one quota (same id, same limits) share every bucket, so
//! they queue behind the script call in flight on their lane and go to Redis together, one
//! atomic script per batch, in the order they arrived.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
};

use keyvault_core::{Clock, KeyId, RateLimit};
use tokio::sync::oneshot;

use crate::{
    backend::RedisBackend,
    error::Error,
    limiter::{MAX_BATCH, fixed_now},
};

/// Checks of one quota id with one list of limits (each with when it was set): they share
/// every bucket, so one script call can apply them in order.
pub(crate) type LaneKey = (KeyId, Vec<RateLimit>, Vec<u64>);

/// A script reply for one check, or why there is none.
pub(crate) type Answer = Result<Vec<i64>, Error>;

/// A check waiting for the call in flight on its lane to return.
#[derive(Debug)]
pub(crate) struct Pending {
    /// Tokens wanted: 0 a pure check, 1 a token, more a lease.
    pub(crate) want: u64,
    pub(crate) request_id: String,
    pub(crate) answer: oneshot::Sender<Answer>,
}

/// A lane with calls in flight: its limits, how many calls, and the checks queued behind them.
#[derive(Debug)]
pub(crate) struct Lane {
    pub(crate) limits: Vec<RateLimit>,
    pub(crate) since: Vec<u64>,
    pub(crate) calls: usize,
    pub(crate) queue: Vec<Pending>,
}

/// Lanes with calls in flight, by quota id (then told apart by their limits: a key has one
/// list of limits but a changed configuration may briefly meet the old one). Looking a lane up
/// this way copies nothing, which a map keyed by the limits themselves would for every check.
pub(crate) type BusyLanes = HashMap<KeyId, Vec<Lane>>;

/// Whether two `since` lists name the same times for `n` limits (a missing entry is 0).
fn same_since(a: &[u64], b: &[u64], n: usize) -> bool {
    (0..n).all(|i| a.get(i).copied().unwrap_or(0) == b.get(i).copied().unwrap_or(0))
}

pub(crate) fn lane_mut<'a>(
    busy: &'a mut BusyLanes,
    quota: KeyId,
    limits: &[RateLimit],
    since: &[u64],
) -> Option<&'a mut Lane> {
    busy.get_mut(&quota)?
        .iter_mut()
        .find(|l| l.limits == limits && same_since(&l.since, since, limits.len()))
}

/// Gives up one call's place on a lane; the lane is gone once no call is left.
pub(crate) fn end_call(busy: &mut BusyLanes, quota: KeyId, limits: &[RateLimit], since: &[u64]) {
    if let Some(l) = lane_mut(busy, quota, limits, since) {
        l.calls -= 1;
        if l.calls == 0 {
            remove_lane(busy, quota, limits, since);
        }
    }
}

pub(crate) fn remove_lane(busy: &mut BusyLanes, quota: KeyId, limits: &[RateLimit], since: &[u64]) {
    if let Some(lanes) = busy.get_mut(&quota) {
        lanes.retain(|l| !(l.limits == limits && same_since(&l.since, since, limits.len())));
        if lanes.is_empty() {
            busy.remove(&quota);
        }
    }
}

/// Calls one lane may have in flight. A second call overlaps the first's round trip once
/// enough checks wait behind it; each call is still one atomic script, and Redis applies calls
/// in the order they were sent, so exactness does not depend on this number.
pub(crate) const MAX_CALLS_PER_LANE: usize = 2;

/// Checks that must be waiting before a lane's second call is sent: below this they wait for
/// the call in flight, which keeps batches large.
pub(crate) const SECOND_CALL_AT: usize = 8;

/// The lanes with calls in flight (an entry exists exactly while one does), each with the
/// checks queued behind them.
#[derive(Debug)]
pub(crate) struct Lanes {
    pub(crate) redis: RedisBackend,
    pub(crate) script: redis::Script,
    /// The limiter's own clock, when it has one ([`crate::RedisLimiterConfig::clock`]).
    pub(crate) clock: Option<Arc<dyn Clock>>,
    pub(crate) busy: Mutex<BusyLanes>,
    pub(crate) checks: AtomicU64,
    pub(crate) calls: AtomicU64,
    pub(crate) largest: AtomicU64,
}

impl Lanes {
    pub(crate) fn busy(&self) -> std::sync::MutexGuard<'_, BusyLanes> {
        // Nothing panics while the lock is held; a poisoned map is still consistent.
        self.busy.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// One script call applying `checks` (tokens wanted, request id) in order.
    pub(crate) async fn call(
        &self,
        lane: &LaneKey,
        checks: &[(u64, &str)],
    ) -> Result<Vec<Vec<i64>>, Error> {
        let (quota, limits, since) = lane;
        let Some(((first_take, first_id), rest)) = checks.split_first() else {
            return Ok(Vec::new());
        };
        // EVALSHA built in one buffer, each key written into one reused string: a script
        // invocation would allocate every key and argument on its own, per check.
        let nkeys = 1 + limits.len() + rest.len();
        let mut cmd = redis::Cmd::with_capacity(
            3 + nkeys + 3 * checks.len() + 2 * limits.len(),
            160 * checks.len() + 64 * limits.len() + 64,
        );
        cmd.arg("EVALSHA").arg(self.script.get_hash()).arg(nkeys);
        let prefix = self.redis.quota_key(*quota, "");
        let mut key = String::with_capacity(prefix.len() + 64);
        let mut record = |cmd: &mut redis::Cmd, id: &str| {
            key.clear();
            key.push_str(&prefix);
            key.push_str("rl:req:");
            key.push_str(id);
            cmd.arg(key.as_str());
        };
        record(&mut cmd, first_id);
        for (i, l) in limits.iter().enumerate() {
            let since = since.get(i).copied().unwrap_or(0);
            cmd.arg(format!("{prefix}{}", bucket_name(l, since)));
        }
        for (_, id) in rest {
            record(&mut cmd, id);
        }
        let ttl = self.redis.idempotency_ms();
        cmd.arg(*first_take).arg(*first_id).arg(ttl);
        for l in limits {
            cmd.arg(l.limit()).arg(l.period_ms());
        }
        for (take, id) in rest {
            cmd.arg(*take).arg(*id).arg(ttl);
        }
        if let Some(now) = fixed_now(self.clock.as_deref()) {
            cmd.arg(now);
        }
        let n = checks.len() as u64;
        self.checks.fetch_add(n, Ordering::Relaxed);
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.largest.fetch_max(n, Ordering::Relaxed);
        let mut conn = self.redis.conn();
        let reply: Vec<i64> = self
            .redis
            .run(async {
                match cmd.query_async(&mut conn).await {
                    // A restarted or flushed Redis has lost the script: load it, call again.
                    Err(e)
                        if e.kind()
                            == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                    {
                        self.script.load_async(&mut conn).await?;
                        cmd.query_async(&mut conn).await
                    }
                    r => r,
                }
            })
            .await?;
        let width = 2 + 3 * limits.len();
        if reply.len() != width * checks.len() {
            return Err(Error::Reply(
                "rate-limit script answered the wrong number of values",
            ));
        }
        Ok(reply.chunks_exact(width).map(<[i64]>::to_vec).collect())
    }

    /// Sends the checks queued on `lane`, a batch per call, until none is left; then gives up
    /// its place among the lane's calls (the lane is idle once no call is left).
    pub(crate) async fn drain(self: Arc<Self>, lane: LaneKey) {
        loop {
            let batch: Vec<Pending> = {
                let mut busy = self.busy();
                match lane_mut(&mut busy, lane.0, &lane.1, &lane.2) {
                    Some(l) if !l.queue.is_empty() => {
                        let n = l.queue.len().min(MAX_BATCH);
                        l.queue.drain(..n).collect()
                    }
                    _ => {
                        end_call(&mut busy, lane.0, &lane.1, &lane.2);
                        return;
                    }
                }
            };
            let checks: Vec<(u64, &str)> = batch
                .iter()
                .map(|p| (p.want, p.request_id.as_str()))
                .collect();
            match self.call(&lane, &checks).await {
                Ok(replies) => {
                    for (p, reply) in batch.into_iter().zip(replies) {
                        // A caller that gave up no longer listens; its check was applied.
                        let _ = p.answer.send(Ok(reply));
                    }
                }
                Err(e) => {
                    for p in batch {
                        let _ = p.answer.send(Err(e.clone()));
                    }
                }
            }
        }
    }
}

/// A limit's bucket under its quota: `rl:<limit>:<period_ms>:<name>` for a limit the key was
/// created with, `rl@<since>:<limit>:<period_ms>:<name>` for one set by a change (the `@`
/// keeps the two apart whatever the name holds), so that a changed limit starts full.
pub(crate) fn bucket_name(l: &RateLimit, since: u64) -> String {
    if since == 0 {
        format!("rl:{}:{}:{}", l.limit(), l.period_ms(), l.name())
    } else {
        format!("rl@{since}:{}:{}:{}", l.limit(), l.period_ms(), l.name())
    }
}

/// Held by a check that sends its own call: when it is done (or given up), the checks queued
/// behind it are sent by a task of their own, so they never depend on this caller.
pub(crate) struct Lead {
    pub(crate) lanes: Arc<Lanes>,
    pub(crate) lane: LaneKey,
}

impl Drop for Lead {
    fn drop(&mut self) {
        let mut busy = self.lanes.busy();
        let (quota, limits, since) = &self.lane;
        if lane_mut(&mut busy, *quota, limits, since).is_none_or(|l| l.queue.is_empty()) {
            end_call(&mut busy, *quota, limits, since);
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                // This call's place passes to the task that sends the queued checks.
                drop(busy);
                rt.spawn(self.lanes.clone().drain(self.lane.clone()));
            }
            // Only while the runtime shuts down: the queued checks end with an error.
            Err(_) => remove_lane(&mut busy, *quota, limits, since),
        }
    }
}
