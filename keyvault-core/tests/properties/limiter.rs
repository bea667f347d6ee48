//! CONTRACT §3's rate limits: GCRA (`gcra.rs`) and the in-memory limiter admit exactly what
//! the token-bucket model admits, and report its `remaining`, `reset_at` and retry time.

use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use keyvault_core::{
    Clock, FakeClock, KeyId, LimitRequest, LimitState, RateLimit, RateLimiter, gcra::Bucket,
    memory::MemoryRateLimiter,
};
use proptest::prelude::*;

use crate::model::{TokenBucket, at, limit_params};

/// How far time moves in one step, resolved against a limit so that the interesting spans
/// (a nanosecond, about one token's interval, about a period) all come up.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Step {
    kind: u8,
    of_limit: usize,
    r: u64,
}

pub(crate) fn step() -> impl Strategy<Value = Step> {
    (0..6u8, any::<usize>(), any::<u64>()).prop_map(|(kind, of_limit, r)| Step {
        kind,
        of_limit,
        r,
    })
}

impl Step {
    /// Nanoseconds, for limits given as (limit, period_ms).
    pub(crate) fn ns(self, limits: &[(u32, u64)]) -> u64 {
        let (l, p) = limits[self.of_limit % limits.len()];
        let period_ns = p * 1_000_000;
        let interval_ns = period_ns / u64::from(l);
        match self.kind {
            0 => 0,
            1 => self.r % 1_000,
            2 => self.r % (2 * interval_ns + 2),
            // Whole emission intervals, plus or minus one nanosecond: the boundaries.
            3 => ((self.r % 3) * interval_ns + (self.r >> 8) % 3).saturating_sub(1),
            4 => self.r % (2 * period_ns + 1),
            _ => self.r % 10_000_000,
        }
    }
}

/// The model's view of one limit after a step, as a `LimitState` would show it.
fn expected_state(name: &str, b: &TokenBucket, limit: u32, now: DateTime<Utc>) -> LimitState {
    let ns = |n: u128| TimeDelta::nanoseconds(i64::try_from(n).unwrap());
    LimitState {
        name: name.to_owned(),
        limit,
        remaining: b.whole(),
        reset_at: now + ns(b.full_in_ns()),
        retry_after_ms: b
            .next_token_in_ns()
            .map(|n| u64::try_from(n.div_ceil(1_000_000)).unwrap()),
    }
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Wait(Step),
    /// A check that takes a token from every limit when all admit (`false`: a pure check).
    Check(bool),
    /// Gives back what the last admitted taking check took (a request rejected later on).
    Release,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => step().prop_map(Op::Wait),
        4 => Just(Op::Check(true)),
        1 => Just(Op::Check(false)),
        1 => Just(Op::Release),
    ]
}

/// Somewhere between 2001 and 2200, at any nanosecond (chrono's nanosecond timestamps, which
/// the in-memory limiter reads, end in 2262).
pub(crate) fn start_ns() -> impl Strategy<Value = u64> {
    1_000_000_000_000_000_000..=7_258_000_000_000_000_000u64
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// `gcra::Bucket`, the formulas every limiter implements, step by step against the
    /// token-bucket model: same admissions, same whole tokens left, same time to full and
    /// to the next token.
    #[test]
    fn gcra_bucket_matches_the_token_model(
        (limit, period_ms) in limit_params(),
        start in start_ns(),
        ops in proptest::collection::vec(op(), 1..80),
    ) {
        let bucket = Bucket::new(limit, period_ms);
        let mut model = TokenBucket::new(limit, period_ms);
        let (mut now, mut x) = (u128::from(start), 0u128);
        let mut taken = 0u32;
        for (i, op) in ops.into_iter().enumerate() {
            match op {
                Op::Wait(s) => {
                    let ns = s.ns(&[(limit, period_ms)]);
                    now += u128::from(ns);
                    model.advance(u128::from(ns));
                }
                Op::Check(take) => {
                    let s = bucket.check(x, now, take);
                    let admit = model.whole() >= 1;
                    prop_assert_eq!(s.admitted, admit, "step {}", i);
                    if admit && take {
                        model.take();
                        taken += 1;
                    }
                    x = s.x;
                    prop_assert_eq!(s.remaining, model.whole(), "step {}", i);
                    prop_assert_eq!(s.reset_in_ns, model.full_in_ns(), "step {}", i);
                    prop_assert_eq!(s.retry_in_ns, model.next_token_in_ns(), "step {}", i);
                }
                Op::Release if taken > 0 => {
                    taken -= 1;
                    x = bucket.release(x, now);
                    model.give_back();
                    let s = bucket.check(x, now, false);
                    prop_assert_eq!(s.remaining, model.whole(), "step {}", i);
                    prop_assert_eq!(s.reset_in_ns, model.full_in_ns(), "step {}", i);
                }
                Op::Release => {}
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// `MemoryRateLimiter` on a fake clock, with one to three limits on one key: a check
    /// admits exactly when every limit's model bucket holds a whole token, takes one from
    /// each only then, and reports each limit as the model has it.
    #[test]
    fn memory_limiter_matches_the_token_model(
        params in proptest::collection::vec(limit_params(), 1..=3),
        start in start_ns(),
        ops in proptest::collection::vec(op(), 1..80),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let start = at((start / 1_000_000_000) as i64, (start % 1_000_000_000) as u32);
        let clock = FakeClock::new(start);
        let limiter = MemoryRateLimiter::with_clock(Arc::new(clock.clone()));
        let limits: Vec<RateLimit> = params
            .iter()
            .enumerate()
            .map(|(i, &(l, p))| RateLimit::new(format!("l{i}"), u64::from(l), p).unwrap())
            .collect();
        let mut models: Vec<TokenBucket> =
            params.iter().map(|&(l, p)| TokenBucket::new(l, p)).collect();
        let quota_id = KeyId::new();
        let mut taken = 0u32;
        for (i, op) in ops.into_iter().enumerate() {
            let req = |take| LimitRequest { quota_id, limits: &limits, since: &[], take, request_id: "" };
            match op {
                Op::Wait(s) => {
                    let ns = s.ns(&params);
                    clock.advance(TimeDelta::nanoseconds(ns as i64));
                    models.iter_mut().for_each(|m| m.advance(u128::from(ns)));
                }
                Op::Check(take) => {
                    let d = rt.block_on(limiter.check(&req(take))).unwrap();
                    let admit = models.iter().all(|m| m.whole() >= 1);
                    prop_assert_eq!(d.admitted, admit, "step {}", i);
                    if admit && take {
                        models.iter_mut().for_each(TokenBucket::take);
                        taken += 1;
                    }
                    let now = clock.now();
                    let want: Vec<LimitState> = models
                        .iter()
                        .zip(&limits)
                        .map(|(m, l)| expected_state(l.name(), m, l.limit(), now))
                        .collect();
                    prop_assert_eq!(d.states, want, "step {}", i);
                }
                Op::Release if taken > 0 => {
                    taken -= 1;
                    rt.block_on(limiter.release(&req(true))).unwrap();
                    models.iter_mut().for_each(TokenBucket::give_back);
                }
                Op::Release => {}
            }
        }
    }
}
