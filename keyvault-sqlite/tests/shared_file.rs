//! Two pools on one database file behave like two processes sharing it (the server and the
//! CLI): exact credits, no lock errors under load, changes heard within a second.

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use chrono::Utc;
use keyvault_core::{
    Actor, Change, ChangeBus, CreditDecision, CreditRequest, CreditStore, Credits, KeyStore,
    Keyvault, NewKey, Outcome, UsageEvent, UsageSink, VerifyRequest,
};
use keyvault_sqlite::{SqliteChangeBus, SqliteStore};

fn keyvault(store: &SqliteStore, bus: Option<&SqliteChangeBus>) -> Keyvault {
    let s = Arc::new(store.clone());
    let mut b = Keyvault::builder()
        .key_store(s.clone())
        .credits(s.clone())
        .audit_log(s);
    if let Some(bus) = bus {
        b = b.change_bus(Arc::new(bus.clone()));
    }
    b.build().expect("keyvault")
}

#[tokio::test(flavor = "multi_thread")]
async fn two_pools_spending_one_balance_admit_exactly_the_balance() {
    let db = common::TestDb::new();
    let (a, b) = (db.store().await, db.store().await);
    let created = keyvault(&a, None)
        .create_key(
            NewKey::new("shared").credits(Credits::new(150)),
            &Actor::library(),
        )
        .await
        .unwrap();
    let rec = created.record;
    let credits = rec.credits.unwrap();
    let admitted = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..16 {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        let admitted = admitted.clone();
        tasks.push(tokio::spawn(async move {
            for n in 0..15 {
                let req = CreditRequest {
                    quota_id: rec.quota_id,
                    credits: &credits,
                    cost: 1,
                    request_id: &format!("{i}-{n}"),
                    now: Utc::now(),
                };
                if let CreditDecision::Spent { .. } = store.spend(&req).await.unwrap() {
                    admitted.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // 16 × 15 = 240 attempts against a balance of 150.
    assert_eq!(admitted.load(Ordering::Relaxed), 150);
    let req = CreditRequest {
        quota_id: rec.quota_id,
        credits: &credits,
        cost: 0,
        request_id: "read",
        now: Utc::now(),
    };
    assert_eq!(b.spend(&req).await.unwrap().remaining(), 0);
}

fn event(i: u64, key: keyvault_core::KeyId) -> UsageEvent {
    UsageEvent {
        request_id: format!("load-{i}").into(),
        key_id: Some(key),
        owner_id: None,
        ts: Utc::now(),
        provider: Some("openai".into()),
        route: Some("/v1/chat".into()),
        method: Some("POST".into()),
        status: 200,
        latency_us: 1_000 + i,
        outcome: Some(Outcome::Valid),
        cost: 1,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_pool_writes_while_the_first_is_under_load() {
    let db = common::TestDb::new();
    let server = db.store().await;
    let cli = db.store().await;
    let kv = keyvault(&server, None);
    let c = kv
        .create_key(
            NewKey::new("busy").credits(Credits::new(u64::from(u32::MAX))),
            &Actor::library(),
        )
        .await
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    // Usage batches and credit spends keep the server's write lock busy.
    for w in 0..2u64 {
        let (server, stop, id) = (server.clone(), stop.clone(), c.record.id);
        load.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let batch: Vec<_> = (0..500)
                    .map(|i| event(w * 1_000_000_000 + n + i, id))
                    .collect();
                server.write(&batch).await.unwrap();
                n += 500;
            }
            n
        }));
    }
    for _ in 0..2 {
        let (kv, stop, key) = (kv.clone(), stop.clone(), c.key.expose().to_owned());
        load.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let v = kv.verify(&VerifyRequest::new(&key)).await.unwrap();
                assert_eq!(v.outcome, Outcome::Valid);
                n += 1;
            }
            n
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let cli_kv = keyvault(&cli, None);
    for i in 0..20 {
        let created = cli_kv
            .create_key(NewKey::new(format!("from-cli-{i}")), &Actor::named("cli"))
            .await
            .expect("a write from the second pool never fails with a lock error");
        cli_kv
            .set_enabled(created.record.id, false, &Actor::named("cli"))
            .await
            .expect("a write from the second pool never fails with a lock error");
    }
    stop.store(true, Ordering::Relaxed);
    for t in load {
        assert!(t.await.unwrap() > 0, "the load made progress");
    }
    assert_eq!(cli.verify_chain_report().await, None);
}

/// Reads the audit chain's first broken position through the trait.
trait ChainCheck {
    async fn verify_chain_report(&self) -> Option<u64>;
}

impl ChainCheck for SqliteStore {
    async fn verify_chain_report(&self) -> Option<u64> {
        keyvault_core::AuditLog::verify_chain(self)
            .await
            .unwrap()
            .first_broken
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn changes_reach_a_bus_on_another_pool_within_a_second() {
    let db = common::TestDb::new();
    let (a, b) = (db.store().await, db.store().await);
    let bus_a = SqliteChangeBus::new(a.clone()).await.unwrap();
    let bus_b = SqliteChangeBus::new(b.clone()).await.unwrap();
    let mut rx = bus_b.subscribe();

    // A published change.
    bus_a.publish(&[Change::All]).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(1), rx.recv()).await;
    assert_eq!(got.unwrap().unwrap(), Change::All);

    // A key written through the store by a process without a bus (the CLI) is heard too.
    let created = keyvault(&a, None)
        .create_key(NewKey::new("cli-made"), &Actor::named("cli"))
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(1), rx.recv()).await;
    assert_eq!(
        got.unwrap().unwrap(),
        Change::Key {
            id: created.record.id,
            digest: created.record.digest
        }
    );

    // End to end: a server instance with a warm cache honours a CLI disable within 1 s.
    let server = keyvault(&b, Some(&bus_b));
    let key = created.key.expose().to_owned();
    assert_eq!(
        server
            .verify(&VerifyRequest::new(&key))
            .await
            .unwrap()
            .outcome,
        Outcome::Valid
    );
    assert_eq!(
        server
            .verify(&VerifyRequest::new(&key))
            .await
            .unwrap()
            .outcome,
        Outcome::Valid
    );
    keyvault(&a, None)
        .set_enabled(created.record.id, false, &Actor::named("cli"))
        .await
        .unwrap();
    let start = Instant::now();
    loop {
        let v = server.verify(&VerifyRequest::new(&key)).await.unwrap();
        if v.outcome == Outcome::Disabled {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "disable not honoured within 1 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!b.get(created.record.id).await.unwrap().unwrap().enabled);
}

/// Processes starting together on one new file all migrate it, and each migration is applied
/// once (SQLite's migrator takes no lock of its own).
#[tokio::test(flavor = "multi_thread")]
async fn pools_migrating_one_new_file_at_once_apply_each_migration_once() {
    for _ in 0..5 {
        let db = common::TestDb::new();
        let mut pools = Vec::new();
        for _ in 0..4 {
            pools.push(SqliteStore::connect(&db.url).await.unwrap());
        }
        let runs: Vec<_> = pools
            .iter()
            .cloned()
            .map(|s| tokio::spawn(async move { s.migrate().await }))
            .collect();
        for r in runs {
            r.await.unwrap().expect("every pool migrates");
        }
        assert_eq!(keyvault_sqlite::MIGRATIONS_TABLE, "kv_schema_migrations");
        let applied: Vec<(i64,)> =
            sqlx::query_as("SELECT version FROM kv_schema_migrations ORDER BY version")
                .fetch_all(pools[0].pool())
                .await
                .unwrap();
        let versions: Vec<i64> = applied.into_iter().map(|(v,)| v).collect();
        let embedded: Vec<i64> = keyvault_sqlite::migrator()
            .iter()
            .map(|m| m.version)
            .collect();
        assert_eq!(versions, embedded);
        assert_eq!(versions[..3], [1, 2, 3]);
        // And the schema works from every pool.
        for s in &pools {
            keyvault(s, None)
                .create_key(NewKey::new("k"), &Actor::library())
                .await
                .unwrap();
        }
    }
}
