//! Concurrent checks of one quota share script calls, and stay exact: the script applies a
//! call's checks in order, each against the buckets the ones before it left.

mod common;

use std::{collections::BTreeSet, num::NonZeroU32, sync::Arc};

use keyvault_core::{KeyId, LimitRequest, RateLimit, RateLimiter};
use keyvault_redis::{FailMode, RedisBackend, RedisConfig, RedisLimiterConfig, RedisRateLimiter};

const DAY: u64 = 86_400_000;

async fn check(
    limiter: &RedisRateLimiter,
    quota: KeyId,
    limits: &[RateLimit],
    take: bool,
    id: &str,
) -> keyvault_core::Result<keyvault_core::LimitDecision> {
    limiter
        .check(&LimitRequest {
            quota_id: quota,
            limits,
            since: &[],
            take,
            request_id: id,
        })
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_hundred_concurrent_checks_on_two_instances_share_calls_and_admit_exactly() {
    let (_, a, b) = common::two_instances().await;
    let limits = Arc::new(vec![
        RateLimit::new("d", 150, DAY).unwrap(),
        RateLimit::new("h", 1_000, DAY / 24).unwrap(),
    ]);
    let quota = KeyId::new();
    // 400 requests, each sent twice at once (a retry racing its original), spread over both
    // instances.
    let mut tasks = Vec::new();
    for i in 0..800usize {
        let limiter = if i % 2 == 0 {
            a.limiter.clone()
        } else {
            b.limiter.clone()
        };
        let limits = limits.clone();
        let id = format!("req-{}", i / 2);
        tasks.push(tokio::spawn(async move {
            let d = check(&limiter, quota, &limits, true, &id).await.unwrap();
            (i / 2, d)
        }));
    }
    let mut admitted_ids = BTreeSet::new();
    let mut admitted_checks = 0;
    let mut remaining = BTreeSet::new();
    let mut per_id = std::collections::HashMap::<usize, Vec<bool>>::new();
    for t in tasks {
        let (id, d) = t.await.unwrap();
        per_id.entry(id).or_default().push(d.admitted);
        if d.admitted {
            admitted_checks += 1;
            admitted_ids.insert(id);
            remaining.insert(d.states[0].remaining);
        }
    }
    assert_eq!(admitted_ids.len(), 150, "exactly the daily limit");
    // A request and its retry agree: the retry of an admitted request replays its admission.
    assert!(per_id.values().all(|v| v.len() == 2 && v[0] == v[1]));
    assert_eq!(admitted_checks, 300);
    // Each taken token was reported once, in order: remaining 149 down to 0.
    assert_eq!(remaining, (0..150).collect::<BTreeSet<u64>>());
    let peek = check(&a.limiter, quota, &limits, false, "peek")
        .await
        .unwrap();
    assert!(!peek.admitted);
    assert_eq!(peek.states[0].remaining, 0);
    assert_eq!(peek.states[1].remaining, 850);

    let (sa, sb) = (a.limiter.batch_stats(), b.limiter.batch_stats());
    assert_eq!(sa.checks + sb.checks, 801);
    assert!(
        sa.script_calls + sb.script_calls < 400,
        "checks were coalesced: {sa:?} {sb:?}"
    );
    assert!(sa.largest_batch > 1 && sb.largest_batch > 1);
    assert_eq!(
        a.limiter.stats().unavailable + b.limiter.stats().unavailable,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_check_is_sent_at_once_in_its_own_call() {
    let (_, a, _b) = common::two_instances().await;
    let limits = [RateLimit::new("h", 5, DAY).unwrap()];
    let quota = KeyId::new();
    for i in 0..8u64 {
        let d = check(&a.limiter, quota, &limits, true, &format!("r{i}"))
            .await
            .unwrap();
        assert_eq!(d.admitted, i < 5);
        assert_eq!(d.states[0].remaining, 4u64.saturating_sub(i));
    }
    let s = a.limiter.batch_stats();
    assert_eq!((s.checks, s.script_calls, s.largest_batch), (8, 8, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_that_fails_applies_the_fail_mode_to_each_of_its_checks() {
    // Nothing listens on port 1: every call fails at once.
    let redis = RedisBackend::connect_lazy(
        "redis://127.0.0.1:1",
        RedisConfig::new(common::namespace()).unwrap(),
    )
    .unwrap();
    let limiter = Arc::new(RedisRateLimiter::new(
        &redis,
        RedisLimiterConfig::default()
            .instances(NonZeroU32::new(2).unwrap())
            .fail_mode_for("open", FailMode::Open),
    ));
    let limits = Arc::new(vec![
        RateLimit::new("local", 20, DAY).unwrap(),
        RateLimit::new("open", 1, DAY).unwrap(),
    ]);
    let quota = KeyId::new();
    let tasks: Vec<_> = (0..60)
        .map(|i| {
            let (limiter, limits) = (limiter.clone(), limits.clone());
            tokio::spawn(async move {
                check(&limiter, quota, &limits, true, &format!("r{i}"))
                    .await
                    .unwrap()
                    .admitted
            })
        })
        .collect();
    let mut admitted = 0;
    for t in tasks {
        admitted += usize::from(t.await.unwrap());
    }
    // ⌈20/2⌉ in process; the open limit counts nothing.
    assert_eq!(admitted, 10);
    let s = limiter.stats();
    assert_eq!((s.unavailable, s.local, s.open, s.closed), (60, 60, 60, 0));
    assert_eq!(limiter.batch_stats().checks, 60);
}

/// A call carrying several checks answers each exactly as keyvault-core's reference maths
/// answers the same checks one after another at the instant Redis reports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batched_call_matches_the_reference_maths_check_by_check() {
    use keyvault_core::gcra::Bucket;
    use keyvault_redis::redis;
    use rand::{RngExt, SeedableRng, rngs::StdRng};

    let client = redis::Client::open(common::redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let script = redis::Script::new(common::RATELIMIT_LUA);
    let ns = common::namespace();
    let seed = rand::rng().random::<u64>();
    let mut rng = StdRng::seed_from_u64(seed);
    for (limit, period) in [
        (7u32, 10u64),
        (5, 3_600_000),
        (999_999_937, 31_535_999_999),
        (1_000, 1),
        (12, 60_000),
    ] {
        let bucket = Bucket::new(limit, period);
        let key = format!("{ns}:{{{}}}:rl:{limit}:{period}:x", KeyId::new());
        let mut x: u128 = 0;
        for call in 0..6 {
            let n = rng.random_range(1..=12usize);
            let takes: Vec<bool> = (0..n).map(|_| rng.random_range(0..5) != 0).collect();
            let mut inv = script.prepare_invoke();
            inv.key(format!("{ns}:idem:{call}:0")).key(&key);
            for j in 1..n {
                inv.key(format!("{ns}:idem:{call}:{j}"));
            }
            inv.arg(if takes[0] { "1" } else { "0" })
                .arg("")
                .arg(1_000)
                .arg(limit)
                .arg(period);
            for take in &takes[1..] {
                inv.arg(if *take { "1" } else { "0" }).arg("").arg(1_000);
            }
            let reply: Vec<i64> = inv.invoke_async(&mut conn).await.unwrap();
            assert_eq!(reply.len(), 5 * n);
            for (j, (r, take)) in reply.chunks_exact(5).zip(&takes).enumerate() {
                let now_ns = r[1] as u128 * 1_000;
                let want = bucket.check(x, now_ns, *take);
                let ctx = format!("{limit}/{period} call {call} check {j} (seed {seed})");
                common::assert_reply_is_reference(r, &want, &ctx);
                if want.admitted && *take {
                    x = want.x;
                }
            }
            common::assert_stored_tat(&mut conn, &key, limit, x, &format!("{limit}/{period}"))
                .await;
        }
    }
}

/// Redis forgets its scripts on restart or `SCRIPT FLUSH`: the next check loads the script
/// again and is answered, without an error and without taking a token twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_after_the_script_cache_was_flushed_loads_the_script_again() {
    use keyvault_redis::redis;

    // A server of its own: flushing the shared one's scripts would touch other tests.
    let server = common::OwnRedis::start().await;
    let redis_backend =
        common::backend(&server.url(), &common::namespace(), common::TEST_BUDGET).await;
    let limiter = RedisRateLimiter::new(&redis_backend, RedisLimiterConfig::default());
    let limits = [RateLimit::new("d", 3, DAY).unwrap()];
    let quota = KeyId::new();
    let first = check(&limiter, quota, &limits, true, "r1").await.unwrap();
    assert_eq!(first.states[0].remaining, 2);

    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut conn)
        .await
        .unwrap();

    let second = check(&limiter, quota, &limits, true, "r2").await.unwrap();
    assert!(second.admitted);
    assert_eq!(second.states[0].remaining, 1, "one token taken, once");
    assert_eq!(limiter.stats().unavailable, 0);
}
