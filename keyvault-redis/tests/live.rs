//! Live counters: per second and per minute, per key and provider.

mod common;

use chrono::{DateTime, TimeDelta, Utc};
use keyvault_core::{KeyId, UsageEvent};
use keyvault_redis::{LiveCounters, LiveScope};

fn event(key: KeyId, provider: &str, status: u16, ts: DateTime<Utc>) -> UsageEvent {
    UsageEvent {
        request_id: KeyId::new().to_string().into(),
        key_id: Some(key),
        owner_id: None,
        ts,
        provider: Some(provider.into()),
        route: None,
        method: None,
        status,
        latency_us: 100,
        outcome: None,
        cost: 1,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_calls_and_errors_per_second_and_minute() {
    let redis = common::backend(
        &common::redis_url(),
        &common::namespace(),
        common::TEST_BUDGET,
    )
    .await;
    let live = LiveCounters::new(&redis);
    let now = DateTime::<Utc>::from_timestamp(Utc::now().timestamp() / 60 * 60 + 30, 0).unwrap();
    let (k1, k2) = (KeyId::new(), KeyId::new());
    let prev = now - TimeDelta::seconds(1);
    let mut batch = vec![
        event(k1, "openai", 200, prev),
        event(k1, "openai", 500, prev),
        event(k2, "anthropic", 429, prev),
    ];
    batch.push(event(k1, "openai", 200, now));
    live.incr_many(&batch).await.unwrap();
    live.incr(&event(k2, "openai", 201, now)).await.unwrap();

    let all = live.read(&LiveScope::All, now).await.unwrap();
    assert_eq!(all.per_second.len(), 60);
    assert_eq!(all.per_minute.len(), 60);
    assert_eq!(all.last_second(), (3, 2));
    assert_eq!(all.per_second[59].calls, 2);
    assert_eq!(all.per_minute[59].calls, 5);
    assert_eq!(all.per_minute[59].errors, 2);

    let key = live.read(&LiveScope::Key(k1), now).await.unwrap();
    assert_eq!(key.last_second(), (2, 1));
    assert_eq!(key.per_minute[59].calls, 3);
    let provider = live
        .read(&LiveScope::Provider("openai".into()), now)
        .await
        .unwrap();
    assert_eq!(provider.per_minute[59].calls, 4);
    assert_eq!(provider.per_minute[59].errors, 1);

    // The buckets expire by themselves.
    let key = format!(
        "{}:live:{{all}}:s:{}",
        redis.config().namespace(),
        now.timestamp()
    );
    let ttl: i64 = common::query(
        &common::redis_url(),
        keyvault_redis::redis::cmd("TTL").arg(&key),
    )
    .await;
    // 120 s after the bucket (which may lie up to 30 s ahead of the real clock here).
    assert!((1..=150).contains(&ttl), "ttl {ttl}");
}
