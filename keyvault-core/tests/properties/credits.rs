//! CONTRACT §3's credits: a balance spent by each verification's cost and *set* to the refill
//! amount at the start of each UTC day or month; and verification as a whole (rate limits,
//! then credits; a rejected request consumes nothing).

use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use keyvault_core::{
    Actor, Clock, CreditDecision, CreditRequest, CreditStore, Credits, FakeClock, KeyPatch,
    Keyvault, LimitState, MAX_CREDITS, NewKey, Outcome, RateLimit, Refill, RefillInterval,
    VerifyRequest, memory::MemoryStore,
};
use proptest::prelude::*;

use crate::{
    limiter::{Step, step},
    model::{Interval, TokenBucket, at},
};

/// The balance as the contract describes it: given `remaining` when credits are set, then,
/// as time passes, set to the refill amount whenever a new interval begins.
#[derive(Debug, Clone)]
struct BalanceModel {
    credits: Option<Credits>,
    balance: u64,
}

impl BalanceModel {
    fn set(credits: Option<Credits>) -> Self {
        Self {
            credits,
            balance: credits.map_or(0, |c| c.remaining),
        }
    }

    /// Time passes from `from` to `to` (eagerly, unlike the stores, which refill lazily).
    fn pass(&mut self, from: DateTime<Utc>, to: DateTime<Utc>) {
        if let Some(Refill { interval, amount }) = self.credits.and_then(|c| c.refill) {
            let iv = interval_of(interval);
            if iv.start_of(to) > iv.start_of(from) {
                self.balance = amount;
            }
        }
    }
}

fn interval_of(i: RefillInterval) -> Interval {
    match i {
        RefillInterval::Daily => Interval::Daily,
        RefillInterval::Monthly => Interval::Monthly,
    }
}

fn amount() -> impl Strategy<Value = u64> {
    prop_oneof![8 => 0..=20u64, 1 => 0..=MAX_CREDITS, 1 => Just(MAX_CREDITS)]
}

fn credits() -> impl Strategy<Value = Credits> {
    let refill = prop_oneof![
        1 => Just(None),
        2 => (
            prop_oneof![Just(RefillInterval::Daily), Just(RefillInterval::Monthly)],
            amount(),
        )
            .prop_map(|(interval, amount)| Some(Refill { interval, amount })),
    ];
    (amount(), refill).prop_map(|(remaining, refill)| Credits { remaining, refill })
}

fn cost() -> impl Strategy<Value = u64> {
    prop_oneof![8 => 0..=6u64, 1 => 0..=MAX_CREDITS]
}

/// Time moving on the credits' scale: within a second, hours, days, weeks; or to a day's or
/// a month's first instant, give or take two nanoseconds.
#[derive(Debug, Clone, Copy)]
enum Wait {
    By(i64),
    ToBoundary { monthly: bool, offset_ns: i64 },
}

fn wait() -> impl Strategy<Value = Wait> {
    prop_oneof![
        0..1_000_000_000i64,
        0..3_600_000_000_000i64,
        0..172_800_000_000_000i64,
        0..3_456_000_000_000_000i64,
    ]
    .prop_map(Wait::By)
    .boxed()
    .prop_union(
        (any::<bool>(), -2..=2i64)
            .prop_map(|(monthly, offset_ns)| Wait::ToBoundary { monthly, offset_ns })
            .boxed(),
    )
}

impl Wait {
    /// The moment to move to from `now` (never backwards).
    fn target(self, now: DateTime<Utc>) -> DateTime<Utc> {
        let to = match self {
            Wait::By(ns) => now + TimeDelta::nanoseconds(ns),
            Wait::ToBoundary { monthly, offset_ns } => {
                let next = if monthly {
                    // 32 days after a month's start is always in the next month.
                    Interval::Monthly.start_of(at(Interval::Monthly.start_of(now) + 32 * 86_400, 0))
                } else {
                    Interval::Daily.start_of(now) + 86_400
                };
                at(next, 0) + TimeDelta::nanoseconds(offset_ns)
            }
        };
        to.max(now)
    }
}

/// From 2020 to 2030, at any nanosecond.
fn start() -> impl Strategy<Value = DateTime<Utc>> {
    (1_577_836_800..1_893_456_000i64, 0..1_000_000_000u32).prop_map(|(s, n)| at(s, n))
}

#[derive(Debug, Clone)]
enum CreditOp {
    Wait(Wait),
    Spend(u64),
    /// A spend given back at the same instant (the verifier's reserve-and-refund).
    SpendThenRefund(u64),
    /// An unconditional write-back of what a cache in front admitted.
    Debit(u64),
    /// PATCH `credits`: the balance is set anew.
    Set(Credits),
    /// A spend by an instance that still holds the credits from before the last PATCH (it
    /// learns of the change up to a second late: at the same instant, here).
    StaleSpend(u64),
}

fn credit_op() -> impl Strategy<Value = CreditOp> {
    prop_oneof![
        3 => wait().prop_map(CreditOp::Wait),
        4 => cost().prop_map(CreditOp::Spend),
        1 => cost().prop_map(CreditOp::SpendThenRefund),
        1 => cost().prop_map(CreditOp::Debit),
        1 => credits().prop_map(CreditOp::Set),
        2 => cost().prop_map(CreditOp::StaleSpend),
    ]
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
}

fn keyvault(store: &Arc<MemoryStore>, clock: &FakeClock) -> Keyvault {
    Keyvault::builder()
        .backend(store.clone())
        .clock(Arc::new(clock.clone()))
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// `MemoryStore` as a `CreditStore`, for a key made and patched through `Keyvault`:
    /// spends, refunds, write-backs, new credits and time passing (across day and month
    /// starts) leave exactly the model's balance, and a spend succeeds exactly when the
    /// balance covers it. A spend by a caller still holding the credits from before a PATCH
    /// spends from the new balance: its old refill never sets it.
    #[test]
    fn memory_credit_store_matches_the_balance_model(
        initial in credits(),
        start in start(),
        ops in proptest::collection::vec(credit_op(), 1..60),
    ) {
        let rt = rt();
        let clock = FakeClock::new(start);
        let store = Arc::new(MemoryStore::new());
        let kv = keyvault(&store, &clock);
        let created = rt
            .block_on(kv.create_key(NewKey::new("p").credits(initial), &Actor::library()))
            .unwrap();
        let (id, quota_id) = (created.record.id, created.record.quota_id);
        let mut model = BalanceModel::set(Some(initial));
        // The credits before the last PATCH, while no time has passed since it.
        let mut stale: Option<Credits> = None;
        for (i, op) in ops.into_iter().enumerate() {
            let now = clock.now();
            let credits = model.credits.unwrap();
            let req = |cost| CreditRequest { quota_id, credits: &credits, cost, request_id: "", now };
            match op {
                CreditOp::Wait(w) => {
                    let to = w.target(now);
                    clock.set(to);
                    model.pass(now, to);
                    stale = None;
                }
                CreditOp::StaleSpend(cost) => {
                    let Some(old) = stale else { continue };
                    let got = rt
                        .block_on(store.spend(&CreditRequest { credits: &old, ..req(cost) }))
                        .unwrap();
                    let want = if cost <= model.balance {
                        model.balance -= cost;
                        CreditDecision::Spent { remaining: model.balance }
                    } else {
                        CreditDecision::Insufficient { remaining: model.balance }
                    };
                    prop_assert_eq!(got, want, "step {} (stale {:?})", i, old);
                }
                CreditOp::Spend(cost) | CreditOp::SpendThenRefund(cost) => {
                    let got = rt.block_on(store.spend(&req(cost))).unwrap();
                    let want = if cost <= model.balance {
                        model.balance -= cost;
                        CreditDecision::Spent { remaining: model.balance }
                    } else {
                        CreditDecision::Insufficient { remaining: model.balance }
                    };
                    prop_assert_eq!(got, want, "step {}", i);
                    if let (CreditOp::SpendThenRefund(_), CreditDecision::Spent { .. }) = (&op, got) {
                        rt.block_on(store.refund(&req(cost))).unwrap();
                        model.balance += cost;
                    }
                }
                CreditOp::Debit(amount) => {
                    let left = rt.block_on(store.debit(quota_id, &credits, amount, now)).unwrap();
                    model.balance = model.balance.saturating_sub(amount);
                    prop_assert_eq!(left, model.balance, "step {}", i);
                }
                CreditOp::Set(c) => {
                    let patch = KeyPatch { credits: Some(Some(c)), ..KeyPatch::default() };
                    rt.block_on(kv.update_key(id, patch, &Actor::library())).unwrap();
                    stale = model.credits;
                    model = BalanceModel::set(Some(c));
                }
            }
            // The balance read without spending (cost 0) is the model's.
            let peek = rt.block_on(store.spend(&CreditRequest {
                quota_id,
                credits: &model.credits.unwrap(),
                cost: 0,
                request_id: "",
                now: clock.now(),
            }));
            prop_assert_eq!(peek.unwrap(), CreditDecision::Spent { remaining: model.balance }, "after step {}", i);
        }
    }
}

/// Small limits that empty and refill within a few steps.
fn small_limits() -> impl Strategy<Value = Vec<(u32, u64)>> {
    proptest::collection::vec((1..=5u32, 1..=5_000u64), 0..=2)
}

#[derive(Debug, Clone)]
enum VerifyOp {
    /// Time on the rate limits' scale.
    Tick(Step),
    /// Time on the credits' scale.
    Wait(Wait),
    Verify(u64),
    /// PATCH `credits` (null: unlimited).
    SetCredits(Option<Credits>),
}

fn verify_op() -> impl Strategy<Value = VerifyOp> {
    prop_oneof![
        3 => step().prop_map(VerifyOp::Tick),
        1 => wait().prop_map(VerifyOp::Wait),
        6 => cost().prop_map(VerifyOp::Verify),
        1 => proptest::option::of(credits()).prop_map(VerifyOp::SetCredits),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(384))]

    /// `Keyvault::verify` on the in-memory backends for a key with up to two rate limits and
    /// optional credits: the outcome is RATE_LIMITED when some limit has no whole token,
    /// else USAGE_EXCEEDED when the cost exceeds the balance, else VALID; only VALID
    /// consumes (a token from each limit for a cost above 0, and the cost); the answer
    /// reports the model's balance and each limit as the model has it.
    #[test]
    fn verify_consumes_tokens_and_credits_like_the_model(
        params in small_limits(),
        initial in proptest::option::of(credits()),
        start in start(),
        ops in proptest::collection::vec(verify_op(), 1..60),
    ) {
        let rt = rt();
        let clock = FakeClock::new(start);
        let store = Arc::new(MemoryStore::new());
        let kv = keyvault(&store, &clock);
        let limits: Vec<RateLimit> = params
            .iter()
            .enumerate()
            .map(|(i, &(l, p))| RateLimit::new(format!("l{i}"), u64::from(l), p).unwrap())
            .collect();
        let mut new = NewKey::new("p");
        new.credits = initial;
        new.ratelimits = limits.clone();
        let created = rt.block_on(kv.create_key(new, &Actor::library())).unwrap();
        let (id, key) = (created.record.id, created.key.expose().to_owned());
        let mut buckets: Vec<TokenBucket> =
            params.iter().map(|&(l, p)| TokenBucket::new(l, p)).collect();
        let mut balance = BalanceModel::set(initial);
        for (i, op) in ops.into_iter().enumerate() {
            let now = clock.now();
            let pass = |to: DateTime<Utc>, buckets: &mut Vec<TokenBucket>, balance: &mut BalanceModel| {
                let ns = (to - now).num_nanoseconds().unwrap();
                buckets.iter_mut().for_each(|b| b.advance(ns as u128));
                balance.pass(now, to);
                clock.set(to);
            };
            match op {
                VerifyOp::Tick(s) if !params.is_empty() => {
                    let to = now + TimeDelta::nanoseconds(s.ns(&params) as i64);
                    pass(to, &mut buckets, &mut balance);
                }
                VerifyOp::Tick(_) => {}
                VerifyOp::Wait(w) => pass(w.target(now), &mut buckets, &mut balance),
                VerifyOp::SetCredits(c) => {
                    let patch = KeyPatch { credits: Some(c), ..KeyPatch::default() };
                    rt.block_on(kv.update_key(id, patch, &Actor::library())).unwrap();
                    balance = BalanceModel::set(c);
                }
                VerifyOp::Verify(cost) => {
                    let v = rt.block_on(kv.verify(&VerifyRequest::new(&key).cost(cost))).unwrap();
                    let want = if buckets.iter().any(|b| b.whole() == 0) {
                        Outcome::RateLimited
                    } else if balance.credits.is_some() && cost > balance.balance {
                        Outcome::UsageExceeded
                    } else {
                        if cost > 0 {
                            buckets.iter_mut().for_each(TokenBucket::take);
                        }
                        balance.balance -= if balance.credits.is_some() { cost } else { 0 };
                        Outcome::Valid
                    };
                    prop_assert_eq!(v.outcome, want, "step {}", i);
                    prop_assert_eq!(
                        v.credits_remaining,
                        balance.credits.map(|_| balance.balance),
                        "step {}", i
                    );
                    let states: Vec<(u64, DateTime<Utc>, Option<u64>)> = v
                        .ratelimits
                        .iter()
                        .map(|s: &LimitState| (s.remaining, s.reset_at, s.retry_after_ms))
                        .collect();
                    let model_states: Vec<(u64, DateTime<Utc>, Option<u64>)> = buckets
                        .iter()
                        .map(|b| {
                            let reset = now + TimeDelta::nanoseconds(b.full_in_ns() as i64);
                            let retry = b.next_token_in_ns().map(|n| n.div_ceil(1_000_000) as u64);
                            (b.whole(), reset, retry)
                        })
                        .collect();
                    prop_assert_eq!(states, model_states, "step {}", i);
                }
            }
        }
    }
}
