//! Leased tokens (CONTRACT §3) across instances on one Redis: never over-admitted, exactly
//! the limit when the requests outlast the lease lifetime, every unused token given back, and
//! a killed instance forfeiting only its own lease.

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use keyvault_core::{
    Actor, KeyId, Keyvault, LimitRequest, NewKey, Outcome, RateLimit, RateLimiter, VerifyRequest,
};
use keyvault_redis::{RedisCreditConfig, RedisLimiterConfig, RedisRateLimiter};
use rand::{RngExt, SeedableRng, rngs::StdRng};

const YEAR: u64 = 31_536_000_000;

async fn create(kv: &Keyvault, limit: u64, period_ms: u64) -> (String, KeyId) {
    let c = kv
        .create_key(
            NewKey::new("leased").ratelimit(RateLimit::new("l", limit, period_ms).unwrap()),
            &Actor::library(),
        )
        .await
        .unwrap();
    (c.key.expose().to_owned(), c.record.quota_id)
}

/// What Redis itself holds for `quota`'s limit, read by a limiter without leases.
async fn redis_remaining(ns: &str, quota: KeyId, limit: &RateLimit) -> u64 {
    let plain = RedisRateLimiter::new(
        &common::backend(&common::redis_url(), ns, common::TEST_BUDGET).await,
        RedisLimiterConfig::default().lease_lifetime(Duration::ZERO),
    );
    let limits = [limit.clone()];
    let d = plain
        .check(&LimitRequest {
            quota_id: quota,
            limits: &limits,
            since: &[],
            take: false,
            request_id: "",
        })
        .await
        .unwrap();
    d.states[0].remaining
}

/// 64 workers spread over the instances verify `key` with costs 0–10 until `stop` says so;
/// returns the verifications that took a token (admitted with a cost above 0) per instance.
async fn hammer(
    kvs: &[Keyvault],
    key: &str,
    seed: u64,
    stop: impl Fn(&Counts) -> bool + Send + Sync + 'static,
) -> Vec<u64> {
    let counts = Arc::new(Counts::new(kvs.len()));
    let stop = Arc::new(stop);
    let mut tasks = Vec::new();
    for w in 0..64usize {
        let kv = kvs[w % kvs.len()].clone();
        let (key, counts, stop) = (key.to_owned(), counts.clone(), stop.clone());
        let instance = w % kvs.len();
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed ^ w as u64);
            while !stop(&counts) {
                let cost = if rng.random_range(0..4) == 0 {
                    0
                } else {
                    rng.random_range(1..=10)
                };
                let v = kv
                    .verify(&VerifyRequest::new(&key).cost(cost))
                    .await
                    .unwrap();
                match v.outcome {
                    Outcome::Valid if cost > 0 => {
                        counts.taken[instance].fetch_add(1, Ordering::Relaxed);
                    }
                    Outcome::Valid => {}
                    Outcome::RateLimited => counts.refused(),
                    other => panic!("unexpected {other:?}"),
                }
                counts.checks.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    counts
        .taken
        .iter()
        .map(|t| t.load(Ordering::Relaxed))
        .collect()
}

struct Counts {
    taken: Vec<AtomicU64>,
    checks: AtomicU64,
    /// When the first refusal came (µs after `start`), 0 before.
    first_refusal_us: AtomicU64,
    start: Instant,
}

impl Counts {
    fn new(n: usize) -> Self {
        Self {
            taken: (0..n).map(|_| AtomicU64::new(0)).collect(),
            checks: AtomicU64::new(0),
            first_refusal_us: AtomicU64::new(0),
            start: Instant::now(),
        }
    }

    fn refused(&self) {
        let at = self.start.elapsed().as_micros().max(1) as u64;
        let _ = self
            .first_refusal_us
            .compare_exchange(0, at, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// Whether refusals have gone on for `d` (three lease lifetimes by default).
    fn refused_for(&self, d: Duration) -> bool {
        let first = self.first_refusal_us.load(Ordering::Relaxed);
        first > 0 && self.start.elapsed().as_micros() as u64 > first + d.as_micros() as u64
    }
}

/// Two and three instances, 64 workers, limits from 1 to 10⁵ a year (no refill within the
/// test), costs 0–10: once refusals have gone on for three lease lifetimes, the tokens taken
/// are exactly the limit, whichever instances took them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_outlasting_the_lease_lifetime_take_exactly_the_limit() {
    let seed = rand::rng().random::<u64>();
    for n in [2, 3] {
        for limit in [1u64, 2, 7, 64, 1_000, 20_000, 100_000] {
            let (_, _, inst) = common::instances(n, RedisCreditConfig::default()).await;
            let kvs: Vec<Keyvault> = inst.iter().map(|i| i.kv.clone()).collect();
            let (key, _) = create(&kvs[0], limit, YEAR).await;
            let taken = hammer(&kvs, &key, seed, |c| {
                c.refused_for(3 * keyvault_redis::DEFAULT_LEASE_LIFETIME)
            })
            .await;
            let total: u64 = taken.iter().sum();
            assert_eq!(
                total, limit,
                "{n} instances, limit {limit}: taken per instance {taken:?} (seed {seed})"
            );
            if limit >= 1_000 {
                let local: u64 = inst.iter().map(|i| i.limiter.lease_stats().local).sum();
                assert!(
                    local > 0,
                    "{n} instances, limit {limit}: no check was admitted from a lease"
                );
            }
            for i in &inst {
                assert_eq!(i.limiter.stats().unavailable, 0);
            }
        }
    }
}

/// A busy key far from its limit (10⁶ a year) is admitted almost entirely from leases, and
/// once the instances end their leases Redis holds exactly the limit less what was admitted:
/// no token lost, none admitted twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_key_is_served_from_leases_and_every_unused_token_goes_back() {
    let (ns, _, inst) = common::instances(3, RedisCreditConfig::default()).await;
    let kvs: Vec<Keyvault> = inst.iter().map(|i| i.kv.clone()).collect();
    let limit = 1_000_000;
    let (key, quota) = create(&kvs[0], limit, YEAR).await;
    let seed = rand::rng().random::<u64>();
    let taken = hammer(&kvs, &key, seed, |c| {
        c.checks.load(Ordering::Relaxed) >= 30_000
    })
    .await;
    let total: u64 = taken.iter().sum();
    let local: u64 = inst.iter().map(|i| i.limiter.lease_stats().local).sum();
    let calls: u64 = inst
        .iter()
        .map(|i| i.limiter.batch_stats().script_calls)
        .sum();
    assert!(
        local * 10 > total * 8,
        "{local} of {total} admitted from leases"
    );
    assert!(calls * 10 < total, "{calls} script calls for {total} takes");
    for i in &inst {
        i.limiter.end_leases().await;
        let s = i.limiter.lease_stats();
        assert_eq!((s.held, s.returning, s.forfeited), (0, 0, 0), "{s:?}");
    }
    // A year's limit refills one token every 31.5 s.
    let left = redis_remaining(&ns, quota, &RateLimit::new("l", limit, YEAR).unwrap()).await;
    assert!(
        (limit - total..=limit - total + 1).contains(&left),
        "Redis holds {left}, {total} were admitted of {limit} (seed {seed})"
    );
}

/// A lease nobody uses goes back on its own once its lifetime is over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unused_lease_goes_back_when_it_lapses() {
    let (ns, _, inst) = common::instances(1, RedisCreditConfig::default()).await;
    let limit = 10_000;
    let (key, quota) = create(&inst[0].kv, limit, YEAR).await;
    let seed = rand::rng().random::<u64>();
    let taken = hammer(std::slice::from_ref(&inst[0].kv), &key, seed, |c| {
        c.checks.load(Ordering::Relaxed) >= 2_000
    })
    .await[0];
    let s = inst[0].limiter.lease_stats();
    assert!(s.leases > 0, "{s:?}");
    let deadline = Instant::now() + Duration::from_secs(2);
    while inst[0].limiter.lease_stats().held + inst[0].limiter.lease_stats().returning > 0 {
        assert!(
            Instant::now() < deadline,
            "{:?}",
            inst[0].limiter.lease_stats()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let left = redis_remaining(&ns, quota, &RateLimit::new("l", limit, YEAR).unwrap()).await;
    assert!(
        (limit - taken..=limit - taken + 1).contains(&left),
        "Redis holds {left} after {taken} of {limit}"
    );
}

/// An instance killed while it holds a lease (its runtime stopped: no timer, no goodbye)
/// forfeits that lease and nothing more: the other instance then takes everything else.
#[test]
fn a_killed_instance_forfeits_only_its_own_unused_lease() {
    let main = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let limit = 50_000;
    let (ns, durable, survivor, key) = main.block_on(async {
        let (ns, durable, mut inst) = common::instances(1, RedisCreditConfig::default()).await;
        let survivor = inst.pop().unwrap();
        let (key, _) = create(&survivor.kv, limit, YEAR).await;
        (ns, durable, survivor, key)
    });

    // The doomed instance lives on a runtime of its own, stopped mid-load.
    let doomed_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let running = Arc::new(AtomicBool::new(true));
    let doomed_taken = Arc::new(AtomicU64::new(0));
    let doomed = doomed_rt.block_on(async {
        common::instance(
            common::backend(&common::redis_url(), &ns, common::TEST_BUDGET).await,
            &durable,
            RedisCreditConfig::default(),
            RedisLimiterConfig::default(),
        )
        .await
    });
    for _ in 0..32 {
        let (kv, key, running, taken) = (
            doomed.kv.clone(),
            key.clone(),
            running.clone(),
            doomed_taken.clone(),
        );
        doomed_rt.spawn(async move {
            while running.load(Ordering::Relaxed) {
                let v = kv.verify(&VerifyRequest::new(&key)).await.unwrap();
                if v.outcome == Outcome::Valid {
                    taken.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    // Until it has taken a good part of the limit, then killed at once.
    let deadline = Instant::now() + Duration::from_secs(20);
    while doomed_taken.load(Ordering::Relaxed) < 5_000 {
        assert!(
            Instant::now() < deadline,
            "the doomed instance never got going"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // Its tasks are dropped where they stand (a renewal in flight counts as abandoned), and
    // its timers never fire.
    doomed_rt.shutdown_timeout(Duration::from_secs(5));
    let doomed_taken = doomed_taken.load(Ordering::Relaxed);
    let stats = doomed.limiter.lease_stats();

    let taken = main.block_on(async {
        hammer(std::slice::from_ref(&survivor.kv), &key, 7, |c| {
            c.refused_for(3 * keyvault_redis::DEFAULT_LEASE_LIFETIME)
        })
        .await[0]
    });
    let lost = limit - doomed_taken - taken;
    // At least what it held; at most that, what it was giving back, what its renewals cut
    // short asked for and its 32 checks in flight.
    let bound = stats.held + stats.returning + stats.asking + stats.abandoned + 32;
    assert!(
        lost >= stats.held && lost <= bound,
        "lost {lost}: doomed took {doomed_taken}, survivor {taken}, doomed's leases {stats:?}"
    );
    assert!(taken > 0);
    drop(main);
}

/// A check whose renewal is given up midway (its future dropped, as when a client goes away)
/// leaves no key stuck: the checks that waited for it go on their own, and the next check is
/// answered once Redis answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_given_up_midway_strands_no_check() {
    let server = common::OwnRedis::start().await;
    let ns = common::namespace();
    let limiter = Arc::new(RedisRateLimiter::new(
        &common::backend(&server.url(), &ns, Duration::from_millis(500)).await,
        RedisLimiterConfig::default(),
    ));
    let limits = [RateLimit::new("l", 1_000, YEAR).unwrap()];
    let quota = KeyId::new();
    let req = LimitRequest {
        quota_id: quota,
        limits: &limits,
        since: &[],
        take: true,
        request_id: "",
    };
    server.stop();
    // The first check renews; it is given up while Redis hangs.
    let given_up = tokio::time::timeout(Duration::from_millis(100), limiter.check(&req)).await;
    assert!(given_up.is_err(), "answered by a stopped Redis");
    server.resume();
    let answered = tokio::time::timeout(Duration::from_secs(5), async {
        for _ in 0..100 {
            assert!(limiter.check(&req).await.unwrap().admitted);
        }
    })
    .await;
    assert!(
        answered.is_ok(),
        "checks stranded behind the dropped renewal"
    );
    assert_eq!(limiter.lease_stats().asking, 0);
}
