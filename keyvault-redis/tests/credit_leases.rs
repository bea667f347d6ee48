//! Credit leases (CONTRACT §3) across instances on one Redis: never over-spent, the whole
//! balance spent when spends outlast the lease lifetime, every unused credit given back to
//! the balance it came from, and none given back to a balance set anew.

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use keyvault_core::{
    Actor, CreditRequest, CreditStore, Credits, KeyId, KeyPatch, Keyvault, NewKey, Outcome,
    VerifyRequest, memory::MemoryStore,
};
use keyvault_redis::{DEFAULT_LEASE_LIFETIME, RedisCreditConfig, RedisLimiterConfig};
use rand::{RngExt, SeedableRng, rngs::StdRng};

/// Credits with leases on (they are off by default).
fn leased() -> RedisCreditConfig {
    RedisCreditConfig::default().lease_lifetime(DEFAULT_LEASE_LIFETIME)
}

async fn create(kv: &Keyvault, balance: u64) -> (String, KeyId) {
    let c = kv
        .create_key(
            NewKey::new("credits").credits(Credits::new(balance)),
            &Actor::library(),
        )
        .await
        .unwrap();
    (c.key.expose().to_owned(), c.record.id)
}

/// The balance of record, read from the durable store.
async fn durable_balance(durable: &MemoryStore, quota: KeyId, balance: u64) -> u64 {
    durable
        .spend(&CreditRequest {
            quota_id: quota,
            credits: &Credits::new(balance),
            cost: 0,
            request_id: "",
            now: chrono::Utc::now(),
        })
        .await
        .unwrap()
        .remaining()
}

struct Spent {
    credits: AtomicU64,
    checks: AtomicU64,
    first_refusal_us: AtomicU64,
    start: Instant,
}

impl Spent {
    fn refused_for(&self, d: Duration) -> bool {
        let first = self.first_refusal_us.load(Ordering::Relaxed);
        first > 0 && self.start.elapsed().as_micros() as u64 > first + d.as_micros() as u64
    }
}

/// 64 workers over the instances spend costs 0–10 on `key` until `stop`; returns the credits
/// spent by the verifications answered `VALID`.
async fn hammer(
    kvs: &[Keyvault],
    key: &str,
    seed: u64,
    stop: impl Fn(&Spent) -> bool + Send + Sync + 'static,
) -> u64 {
    let spent = Arc::new(Spent {
        credits: AtomicU64::new(0),
        checks: AtomicU64::new(0),
        first_refusal_us: AtomicU64::new(0),
        start: Instant::now(),
    });
    let stop = Arc::new(stop);
    let mut tasks = Vec::new();
    for w in 0..64usize {
        let (kv, key, spent, stop) = (
            kvs[w % kvs.len()].clone(),
            key.to_owned(),
            spent.clone(),
            stop.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed ^ w as u64);
            while !stop(&spent) {
                let cost = rng.random_range(0..=10);
                let v = kv
                    .verify(&VerifyRequest::new(&key).cost(cost))
                    .await
                    .unwrap();
                match v.outcome {
                    Outcome::Valid => {
                        spent.credits.fetch_add(cost, Ordering::Relaxed);
                    }
                    Outcome::UsageExceeded => {
                        let at = spent.start.elapsed().as_micros().max(1) as u64;
                        let _ = spent.first_refusal_us.compare_exchange(
                            0,
                            at,
                            Ordering::Relaxed,
                            Ordering::Relaxed,
                        );
                    }
                    other => panic!("unexpected {other:?}"),
                }
                spent.checks.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    spent.credits.load(Ordering::Relaxed)
}

/// Two and three instances, 64 workers, balances from 1 to 200,000, costs 0–10: once refusals
/// have gone on for three lease lifetimes, exactly the balance was spent, and the balance of
/// record says 0 once the instances have written back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spends_outlasting_the_lease_lifetime_spend_exactly_the_balance() {
    let seed = rand::rng().random::<u64>();
    for n in [2, 3] {
        for balance in [1u64, 7, 100, 10_000, 200_000] {
            let (_, durable, inst) = common::instances(n, leased()).await;
            let kvs: Vec<Keyvault> = inst.iter().map(|i| i.kv.clone()).collect();
            let (key, quota) = create(&kvs[0], balance).await;
            let spent = hammer(&kvs, &key, seed, |s| {
                s.refused_for(3 * DEFAULT_LEASE_LIFETIME)
            })
            .await;
            assert_eq!(
                spent, balance,
                "{n} instances, balance {balance} (seed {seed})"
            );
            for i in &inst {
                i.credits.flush().await.unwrap();
                assert_eq!(i.credits.stats().unavailable, 0);
            }
            assert_eq!(durable_balance(&durable, quota, balance).await, 0);
            if balance >= 10_000 {
                let local: u64 = inst.iter().map(|i| i.credits.lease_stats().local).sum();
                assert!(
                    local > 0,
                    "{n} instances, balance {balance}: no lease served a spend"
                );
            }
        }
    }
}

/// A busy key far from exhaustion spends mostly from leases; once each instance flushes
/// (leases given back, spends written back), the balance of record is exactly the starting
/// balance less what was spent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_balance_is_spent_from_leases_and_every_unused_credit_goes_back() {
    let (_, durable, inst) = common::instances(3, leased()).await;
    let kvs: Vec<Keyvault> = inst.iter().map(|i| i.kv.clone()).collect();
    let balance = 1_000_000_000;
    let (key, quota) = create(&kvs[0], balance).await;
    let seed = rand::rng().random::<u64>();
    let spent = hammer(&kvs, &key, seed, |s| {
        s.checks.load(Ordering::Relaxed) >= 20_000
    })
    .await;
    let local: u64 = inst.iter().map(|i| i.credits.lease_stats().local).sum();
    assert!(
        local > 20_000 * 7 / 10,
        "{local} of 20,000 spends from leases"
    );
    for i in &inst {
        i.credits.flush().await.unwrap();
        let s = i.credits.lease_stats();
        assert_eq!((s.held, s.forfeited), (0, 0), "{s:?}");
    }
    assert_eq!(
        durable_balance(&durable, quota, balance).await,
        balance - spent,
        "seed {seed}"
    );
}

/// Credits set anew (to the very same configuration) while another instance holds a lease,
/// and the balance loaded again at once: that lease's leftover is never added to the new
/// balance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_never_goes_back_to_a_balance_set_anew() {
    let ns = common::namespace();
    let durable = Arc::new(MemoryStore::new());
    let a = common::instance(
        common::backend(&common::redis_url(), &ns, common::TEST_BUDGET).await,
        &durable,
        RedisCreditConfig::default(),
        RedisLimiterConfig::default(),
    )
    .await;
    // B's leases live as long as they may, so that the reset and the reload fall inside one.
    let b = common::instance(
        common::backend(
            &common::rotated(&common::redis_url()),
            &ns,
            common::TEST_BUDGET,
        )
        .await,
        &durable,
        RedisCreditConfig::default().lease_lifetime(keyvault_redis::MAX_LEASE_LIFETIME),
        RedisLimiterConfig::default(),
    )
    .await;
    let balance = 1_000_000;
    let (key, id) = create(&a.kv, balance).await;
    let spent = hammer(std::slice::from_ref(&b.kv), &key, 3, |s| {
        s.checks.load(Ordering::Relaxed) >= 3_000
    })
    .await;
    assert!(spent > 0);
    let held = b.credits.lease_stats().held;
    assert!(held > 0, "{:?}", b.credits.lease_stats());
    let patch = KeyPatch {
        credits: Some(Some(Credits::new(balance))),
        ..Default::default()
    };
    a.kv.update_key(id, patch, &Actor::library()).await.unwrap();
    // A loads the new balance at once.
    let v = a.kv.verify(&VerifyRequest::new(&key)).await.unwrap();
    assert_eq!(v.credits_remaining, Some(balance - 1));
    // B's lease lapses and tries to give its leftover back.
    tokio::time::sleep(keyvault_redis::MAX_LEASE_LIFETIME * 3).await;
    let s = b.credits.lease_stats();
    assert!(s.forfeited > 0, "the leftover was given back: {s:?}");
    let v =
        a.kv.verify(&VerifyRequest::new(&key).cost(0))
            .await
            .unwrap();
    assert_eq!(v.credits_remaining, Some(balance - 1), "{s:?}");
}
