//! Two instances (separate connections, caches and buses) on one key.

mod common;

use std::time::{Duration, Instant};

use keyvault_core::{
    Actor, CreditRequest, CreditStore, Credits, Keyvault, NewKey, Outcome, RateLimit, VerifyRequest,
};

const HOUR: u64 = 3_600_000;

async fn create(kv: &Keyvault, new: NewKey) -> (String, keyvault_core::KeyId) {
    let c = kv.create_key(new, &Actor::library()).await.unwrap();
    (c.key.expose().to_owned(), c.record.id)
}

/// Runs `n` verifications at `cost` concurrently, alternating between the instances, and
/// returns how many were valid.
async fn hammer(a: &Keyvault, b: &Keyvault, key: &str, n: usize, cost: u64) -> usize {
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let kv = if i % 2 == 0 { a.clone() } else { b.clone() };
            let key = key.to_owned();
            tokio::spawn(async move {
                kv.verify(&VerifyRequest::new(&key).cost(cost))
                    .await
                    .unwrap()
                    .outcome
            })
        })
        .collect();
    let mut valid = 0;
    for t in tasks {
        match t.await.unwrap() {
            Outcome::Valid => valid += 1,
            Outcome::UsageExceeded | Outcome::RateLimited => {}
            other => panic!("unexpected {other}"),
        }
    }
    valid
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_credit_and_a_thousand_requests_admit_exactly_one() {
    let (durable, a, b) = common::two_instances().await;
    let (key, id) = create(&a.kv, NewKey::new("one").credits(Credits::new(1))).await;
    assert_eq!(hammer(&a.kv, &b.kv, &key, 1_000, 1).await, 1);
    // Written back to the durable store within a second.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let req = CreditRequest {
        quota_id: id,
        credits: &Credits::new(1),
        cost: 0,
        request_id: "",
        now: chrono::Utc::now(),
    };
    assert_eq!(durable.spend(&req).await.unwrap().remaining(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_credits_at_cost_ten_admit_exactly_fifty() {
    let (durable, a, b) = common::two_instances().await;
    let (key, id) = create(&a.kv, NewKey::new("fifty").credits(Credits::new(500))).await;
    assert_eq!(hammer(&a.kv, &b.kv, &key, 400, 10).await, 50);
    a.credits.flush().await.unwrap();
    b.credits.flush().await.unwrap();
    let req = CreditRequest {
        quota_id: id,
        credits: &Credits::new(500),
        cost: 0,
        request_id: "",
        now: chrono::Utc::now(),
    };
    assert_eq!(durable.spend(&req).await.unwrap().remaining(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_an_hour_admits_exactly_fifty_of_four_hundred() {
    let (_, a, b) = common::two_instances().await;
    let (key, _) = create(
        &a.kv,
        NewKey::new("r").ratelimit(RateLimit::new("h", 50, HOUR).unwrap()),
    )
    .await;
    assert_eq!(hammer(&a.kv, &b.kv, &key, 400, 1).await, 50);
    assert_eq!(a.limiter.stats().unavailable, 0);
    assert_eq!(b.limiter.stats().unavailable, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_request_takes_nothing_from_the_monthly_limit() {
    let (_, a, b) = common::two_instances().await;
    let (key, _) = create(
        &a.kv,
        NewKey::new("two")
            .ratelimit(RateLimit::new("hourly", 12, HOUR).unwrap())
            .ratelimit(RateLimit::new("monthly", 200, 30 * 24 * HOUR).unwrap()),
    )
    .await;
    let mut last = None;
    for i in 0..13 {
        let kv = if i % 2 == 0 { &a.kv } else { &b.kv };
        last = Some(kv.verify(&VerifyRequest::new(&key)).await.unwrap());
    }
    let last = last.unwrap();
    assert_eq!(last.outcome, Outcome::RateLimited);
    let monthly = last
        .ratelimits
        .iter()
        .find(|s| s.name == "monthly")
        .unwrap();
    assert_eq!(monthly.remaining, 188);
    let hourly = last.ratelimits.iter().find(|s| s.name == "hourly").unwrap();
    assert_eq!(hourly.remaining, 0);
    // One token every 5 minutes.
    let retry = hourly.retry_after_ms.unwrap();
    assert!(
        (295_000..=300_000).contains(&retry),
        "retry_after_ms = {retry}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disable_on_one_instance_is_honoured_by_a_warm_other_within_a_second() {
    let (_, a, b) = common::two_instances().await;
    let mut lags = Vec::new();
    for i in 0..20 {
        let (key, id) = create(&a.kv, NewKey::new(format!("d{i}"))).await;
        // Warm B's cache.
        for _ in 0..3 {
            let v = b.kv.verify(&VerifyRequest::new(&key)).await.unwrap();
            assert_eq!(v.outcome, Outcome::Valid);
        }
        let start = Instant::now();
        a.kv.set_enabled(id, false, &Actor::library())
            .await
            .unwrap();
        loop {
            let v = b.kv.verify(&VerifyRequest::new(&key)).await.unwrap();
            if v.outcome == Outcome::Disabled {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(2), "B still admits");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        lags.push(start.elapsed());
    }
    lags.sort();
    // p99 of 20 trials is the slowest one.
    let p99 = lags[lags.len() - 1];
    assert!(p99 < Duration::from_secs(1), "p99 {p99:?}");
    assert!(b.bus.received() >= 20, "the changes came over Redis");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_check_or_release_is_applied_once() {
    use keyvault_core::{LimitRequest, RateLimiter};
    let (_, a, b) = common::two_instances().await;
    let limits = [RateLimit::new("h", 3, HOUR).unwrap()];
    let quota = keyvault_core::KeyId::new();
    let req = |id: &'static str, take| LimitRequest {
        quota_id: quota,
        limits: &limits,
        since: &[],
        take,
        request_id: id,
    };
    assert_eq!(
        a.limiter.check(&req("r1", true)).await.unwrap().states[0].remaining,
        2
    );
    // The same request retried on the other instance: admitted, nothing more taken.
    let retry = b.limiter.check(&req("r1", true)).await.unwrap();
    assert!(retry.admitted);
    assert_eq!(retry.states[0].remaining, 2);
    a.limiter.release(&req("r1", true)).await.unwrap();
    b.limiter.release(&req("r1", true)).await.unwrap();
    // A release for a request that took nothing gives nothing back.
    a.limiter.release(&req("never", true)).await.unwrap();
    assert_eq!(
        a.limiter.check(&req("peek", false)).await.unwrap().states[0].remaining,
        3
    );

    // Credits: a retried spend is spent once, a refund given back once.
    let credits = Credits::new(10);
    let spend = |id: &'static str, cost| CreditRequest {
        quota_id: quota,
        credits: &credits,
        cost,
        request_id: id,
        now: chrono::Utc::now(),
    };
    assert_eq!(
        a.credits.spend(&spend("s1", 4)).await.unwrap().remaining(),
        6
    );
    assert_eq!(
        b.credits.spend(&spend("s1", 4)).await.unwrap().remaining(),
        6
    );
    a.credits.refund(&spend("s1", 4)).await.unwrap();
    b.credits.refund(&spend("s1", 4)).await.unwrap();
    a.credits.refund(&spend("unknown", 4)).await.unwrap();
    assert_eq!(
        a.credits.spend(&spend("", 0)).await.unwrap().remaining(),
        10
    );
}

/// Setting a key's credits again, to the very configuration it had, resets its balance on
/// every instance: the balance cached in Redis is not kept because its configuration matches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credits_set_again_to_the_same_configuration_reset_the_cached_balance() {
    let (_durable, a, b) = common::two_instances().await;
    let (key, id) = create(&a.kv, NewKey::new("reset").credits(Credits::new(10))).await;
    let spend = |kv: &Keyvault, cost: u64| {
        let (kv, key) = (kv.clone(), key.clone());
        async move {
            kv.verify(&VerifyRequest::new(&key).cost(cost))
                .await
                .unwrap()
                .credits_remaining
        }
    };
    assert_eq!(spend(&a.kv, 6).await, Some(4));
    assert_eq!(spend(&b.kv, 1).await, Some(3));
    let patch = keyvault_core::KeyPatch {
        credits: Some(Some(Credits::new(10))),
        ..Default::default()
    };
    a.kv.update_key(id, patch, &Actor::library()).await.unwrap();
    assert_eq!(
        spend(&b.kv, 1).await,
        Some(9),
        "the reset is seen by the other instance"
    );
    assert_eq!(spend(&a.kv, 1).await, Some(8));
}
