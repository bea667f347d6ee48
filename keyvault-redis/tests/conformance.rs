//! The keyvault-core conformance suite with the Redis limiter, credit cache and change bus
//! (over the in-memory durable store). Each test runs in its own namespace.

mod common;

use std::sync::Arc;

use keyvault_core::{memory::MemoryStore, testing::Backends};
use keyvault_redis::{
    RedisChangeBus, RedisCreditConfig, RedisCreditStore, RedisLimiterConfig, RedisRateLimiter,
};

async fn redis() -> Backends {
    let redis = common::backend(
        &common::redis_url(),
        &common::namespace(),
        common::TEST_BUDGET,
    )
    .await;
    let durable = Arc::new(MemoryStore::new());
    let bus = Arc::new(RedisChangeBus::new(&redis));
    common::wait_subscribed(&bus).await;
    Backends {
        store: durable.clone(),
        credits: Arc::new(RedisCreditStore::new(
            &redis,
            durable.clone(),
            RedisCreditConfig::default(),
        )),
        limiter: Arc::new(RedisRateLimiter::new(&redis, RedisLimiterConfig::default())),
        audit: durable.clone(),
        signals: durable.clone(),
        usage: Some((durable.clone(), durable)),
        bus: Some(bus),
        // Redis keeps its own time (TIME): cases that move a fake clock are skipped.
        clock: None,
    }
}

keyvault_core::conformance_suite!(#[tokio::test(flavor = "multi_thread", worker_threads = 2)], setup = redis);
