//! The core conformance suite against PostgreSQL, a fresh database per test
//! (`#[sqlx::test]` creates it from `DATABASE_URL`).

use std::sync::Arc;

use keyvault_core::{FakeClock, memory::MemoryRateLimiter, testing::Backends};
use keyvault_postgres::{PgChangeBus, PgStore};
use sqlx::PgPool;

/// PgStore never reads the database's clock for a decision (spends, refills and expiry use
/// the time handed in), so the suite's fake clock drives it and the memory limiter alike.
async fn postgres(pool: PgPool) -> Backends {
    let store = PgStore::new(pool);
    store.migrate().await.unwrap();
    let bus = PgChangeBus::connect(store.pool()).await.unwrap();
    let clock = FakeClock::new(chrono::Utc::now());
    let store = Arc::new(store);
    Backends {
        store: store.clone(),
        credits: store.clone(),
        limiter: Arc::new(MemoryRateLimiter::with_clock(Arc::new(clock.clone()))),
        audit: store.clone(),
        signals: store.clone(),
        usage: Some((store.clone(), store)),
        bus: Some(Arc::new(bus)),
        clock: Some(clock),
    }
}

keyvault_core::conformance_suite!(#[sqlx::test(migrations = false)], setup = postgres, args = (pool: PgPool));
