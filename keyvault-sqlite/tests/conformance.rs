//! keyvault-core's conformance suite on SQLite: one database file per test.

mod common;

use std::sync::Arc;

use chrono::Utc;
use keyvault_core::{FakeClock, memory::MemoryRateLimiter, testing::Backends};
use keyvault_sqlite::SqliteChangeBus;

async fn sqlite() -> Backends {
    let db = common::TestDb::new();
    let store = Arc::new(db.store().await);
    let bus = SqliteChangeBus::new((*store).clone()).await.expect("bus");
    // Every SQLite operation takes its time from the caller (credit requests, records,
    // events), so the fake clock governs it as it governs the in-process limiter.
    let clock = FakeClock::new(Utc::now());
    Backends {
        store: store.clone(),
        credits: store.clone(),
        limiter: Arc::new(MemoryRateLimiter::with_clock(Arc::new(clock.clone()))),
        audit: store.clone(),
        signals: store.clone(),
        usage: Some((store.clone(), store)),
        bus: Some(Arc::new(common::BusWithDir {
            bus,
            _dir: Arc::new(db.dir),
        })),
        clock: Some(clock),
    }
}

keyvault_core::conformance_suite!(#[tokio::test(flavor = "multi_thread")], setup = sqlite);
