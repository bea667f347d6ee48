//! CONTRACT §3's rate limits on Redis: `RedisRateLimiter` (its Lua scripts and their split,
//! double-exact arithmetic) admits exactly what the token-bucket model admits and reports the
//! model's `remaining`, `reset_at` and retry time, over any sequence of waits, checks, retries
//! and releases. The limiter runs on a fake clock ([`RedisLimiterConfig::clock`]) so that time
//! can move by a microsecond or by a period between two calls; Redis's own clock moves in
//! microseconds, so the waits are whole microseconds.

mod common;

#[allow(dead_code)]
#[path = "../../keyvault-core/tests/properties/model.rs"]
mod model;

use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use keyvault_core::{Clock, FakeClock, KeyId, LimitRequest, LimitState, RateLimit, RateLimiter};
use keyvault_redis::{RedisLimiterConfig, RedisRateLimiter, redis};
use model::{TokenBucket, limit_params};
use proptest::prelude::*;

/// How far time moves in one step, in microseconds, resolved against one of the limits so
/// that the interesting spans (a microsecond, about one token's interval, about a period) all
/// come up.
#[derive(Debug, Clone, Copy)]
struct Wait {
    kind: u8,
    of_limit: usize,
    r: u64,
}

impl Wait {
    fn us(self, limits: &[(u32, u64)]) -> u64 {
        let (l, p) = limits[self.of_limit % limits.len()];
        let period_us = p * 1_000;
        let interval_us = (period_us / u64::from(l)).max(1);
        match self.kind {
            0 => 0,
            1 => self.r % 10,
            2 => self.r % (2 * interval_us + 2),
            // Whole emission intervals, plus or minus a microsecond: the boundaries.
            3 => ((self.r % 3) * interval_us + (self.r >> 8) % 3).saturating_sub(1),
            4 => self.r % (2 * period_us + 1),
            _ => self.r % 10_000_000,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Wait(Wait),
    /// A check with a new request id that takes a token from every limit when all admit
    /// (`false`: a pure check).
    Check(bool),
    /// The last taking check sent again with its request id: admitted, takes nothing more
    /// (after its release, a pure check).
    Retry,
    /// Gives back what the newest admitted taking check not yet released took.
    Release,
    /// Releases the last released request id again: gives back nothing.
    ReleaseAgain,
}

fn op() -> impl Strategy<Value = Op> {
    let wait = (0..6u8, any::<usize>(), any::<u64>()).prop_map(|(kind, of_limit, r)| Wait {
        kind,
        of_limit,
        r,
    });
    prop_oneof![
        3 => wait.prop_map(Op::Wait),
        4 => Just(Op::Check(true)),
        1 => Just(Op::Check(false)),
        1 => Just(Op::Retry),
        1 => Just(Op::Release),
        1 => Just(Op::ReleaseAgain),
    ]
}

/// Somewhere between 2001 and 2200, at any microsecond.
fn start_us() -> impl Strategy<Value = i64> {
    1_000_000_000_000_000..=7_258_000_000_000_000i64
}

/// The model's view of one limit, as Redis reports it: times rounded up to its microseconds.
fn expected_state(name: &str, b: &TokenBucket, limit: u32, now: DateTime<Utc>) -> LimitState {
    let us = |ns: u128| TimeDelta::microseconds(i64::try_from(ns.div_ceil(1_000)).unwrap());
    LimitState {
        name: name.to_owned(),
        limit,
        remaining: b.whole(),
        reset_at: now + us(b.full_in_ns()),
        retry_after_ms: b
            .next_token_in_ns()
            .map(|n| u64::try_from(n.div_ceil(1_000_000)).unwrap()),
    }
}

/// One request id's fate, as the model keeps it.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fate {
    Taken,
    Released,
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// `RedisRateLimiter` on a real Redis, one to three limits on one key: a check admits
    /// exactly when every limit's model bucket holds a whole token and takes one from each
    /// only then; a retried request id takes nothing more; a release gives back once; every
    /// answer reports each limit as the model has it.
    #[test]
    fn redis_limiter_matches_the_token_model(
        params in proptest::collection::vec(limit_params(), 1..=3),
        start in start_us(),
        ops in proptest::collection::vec(op(), 1..60),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let ns = common::namespace();
        let redis = rt.block_on(common::backend(&common::redis_url(), &ns, common::TEST_BUDGET));
        let clock = FakeClock::new(DateTime::from_timestamp_micros(start).unwrap());
        let limiter = RedisRateLimiter::new(
            &redis,
            RedisLimiterConfig::default().clock(Arc::new(clock.clone())),
        );
        let limits: Vec<RateLimit> = params
            .iter()
            .enumerate()
            .map(|(i, &(l, p))| RateLimit::new(format!("l{i}"), u64::from(l), p).unwrap())
            .collect();
        let mut models: Vec<TokenBucket> =
            params.iter().map(|&(l, p)| TokenBucket::new(l, p)).collect();
        let quota_id = KeyId::new();
        // Request ids in the order they took tokens, and what became of each.
        let mut ids: Vec<(String, Fate)> = Vec::new();
        let mut released: Option<String> = None;
        let want = |models: &[TokenBucket], now| -> Vec<LimitState> {
            models
                .iter()
                .zip(&limits)
                .map(|(m, l)| expected_state(l.name(), m, l.limit(), now))
                .collect()
        };
        for (i, op) in ops.into_iter().enumerate() {
            let request_id = format!("r{i}");
            let req = |take, id| request(quota_id, &limits, take, id);
            match op {
                Op::Wait(w) => {
                    let us = w.us(&params);
                    clock.advance(TimeDelta::microseconds(us as i64));
                    models.iter_mut().for_each(|m| m.advance(u128::from(us) * 1_000));
                }
                Op::Check(take) => {
                    let d = rt.block_on(limiter.check(&req(take, &request_id))).unwrap();
                    let admit = models.iter().all(|m| m.whole() >= 1);
                    prop_assert_eq!(d.admitted, admit, "step {}", i);
                    if admit && take {
                        models.iter_mut().for_each(TokenBucket::take);
                        ids.push((request_id, Fate::Taken));
                    }
                    prop_assert_eq!(d.states, want(&models, clock.now()), "step {}", i);
                }
                Op::Retry => {
                    let Some((id, fate)) = ids.last().cloned() else { continue };
                    let d = rt.block_on(limiter.check(&req(true, &id))).unwrap();
                    let admit = fate == Fate::Taken || models.iter().all(|m| m.whole() >= 1);
                    prop_assert_eq!(d.admitted, admit, "step {}", i);
                    prop_assert_eq!(d.states, want(&models, clock.now()), "step {}", i);
                }
                Op::Release => {
                    let Some(entry) = ids.iter_mut().rev().find(|(_, f)| *f == Fate::Taken)
                    else { continue };
                    rt.block_on(limiter.release(&req(true, &entry.0))).unwrap();
                    entry.1 = Fate::Released;
                    released = Some(entry.0.clone());
                    models.iter_mut().for_each(TokenBucket::give_back);
                }
                Op::ReleaseAgain => {
                    let Some(id) = &released else { continue };
                    rt.block_on(limiter.release(&req(true, id))).unwrap();
                }
            }
        }
        // What a pure check sees at the end agrees too (the last step may have been a wait).
        let d = rt.block_on(limiter.check(&request(quota_id, &limits, false, ""))).unwrap();
        prop_assert_eq!(d.states, want(&models, clock.now()));
        // Buckets on a fake clock have no expiry: leave none behind.
        rt.block_on(remove_namespace(&ns));
    }
}

async fn remove_namespace(ns: &str) {
    let client = redis::Client::open(common::redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{ns}:*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL")
            .arg(keys)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
}

fn request<'a>(
    quota_id: KeyId,
    limits: &'a [RateLimit],
    take: bool,
    request_id: &'a str,
) -> LimitRequest<'a> {
    LimitRequest {
        quota_id,
        limits,
        since: &[],
        take,
        request_id,
    }
}
