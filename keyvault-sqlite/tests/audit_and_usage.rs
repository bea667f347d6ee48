//! The audit chain catches tampering where it happened; usage statistics from rollups match
//! the in-memory reference exactly for any range; the database persists and migrates twice;
//! balances opened before migration 0011 are given their key's refill.

mod common;

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use keyvault_core::{
    Actor, AuditEvent, AuditLog, AuditOutcome, CreditDecision, CreditRequest, CreditStore, Credits,
    KeyId, KeyStore, Keyvault, NewKey, Outcome, Refill, RefillInterval, StatsQuery, UsageEvent,
    UsageQuery, UsageSink, memory::MemoryStore,
};
use serde_json::json;

fn audit_event(n: u32) -> AuditEvent {
    AuditEvent::new(
        Utc::now(),
        &Actor::named("alice"),
        "key.update",
        Some(format!("k{n}")),
        AuditOutcome::Success,
        json!({"n": n, "fields": ["name", {"b": 2, "a": 1}], "ratio": 0.5}),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_tampering_is_found_at_its_index() {
    let db = common::TestDb::new();
    let store = db.store().await;
    store
        .append(&(1..=4).map(audit_event).collect::<Vec<_>>())
        .await
        .unwrap();
    store
        .append(&(5..=7).map(audit_event).collect::<Vec<_>>())
        .await
        .unwrap();
    let report = store.verify_chain().await.unwrap();
    assert_eq!((report.checked, report.first_broken), (7, None));

    sqlx::query("UPDATE kv_audit SET actor = 'mallory' WHERE seq = 5")
        .execute(store.pool())
        .await
        .unwrap();
    assert_eq!(store.verify_chain().await.unwrap().first_broken, Some(5));

    sqlx::query("DELETE FROM kv_audit WHERE seq = 3")
        .execute(store.pool())
        .await
        .unwrap();
    assert_eq!(store.verify_chain().await.unwrap().first_broken, Some(3));

    sqlx::query("UPDATE kv_audit SET details = 'not json' WHERE seq = 2")
        .execute(store.pool())
        .await
        .unwrap();
    assert_eq!(store.verify_chain().await.unwrap().first_broken, Some(2));
}

/// A small deterministic generator, so a failure reproduces.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn overview_matches_the_in_memory_reference_for_any_range() {
    let db = common::TestDb::new();
    let store = db.store().await;
    let memory = MemoryStore::new();
    let keys = [KeyId::new(), KeyId::new(), KeyId::new()];
    let providers = [None, Some("openai"), Some("anthropic"), Some("")];
    let t0: DateTime<Utc> = Utc.with_ymd_and_hms(2026, 5, 1, 10, 0, 0).unwrap();
    let mut rng = Lcg(7);
    let events: Vec<UsageEvent> = (0..3_000)
        .map(|i| UsageEvent {
            // Duplicates on purpose: every 7th event repeats an earlier id.
            request_id: format!("r{}", if i % 7 == 6 { i - 3 } else { i }).into(),
            key_id: (i % 5 != 0).then(|| keys[rng.next(3) as usize]),
            owner_id: None,
            ts: t0 + TimeDelta::microseconds(rng.next(3 * 3_600_000_000) as i64),
            provider: providers[rng.next(4) as usize].map(Into::into),
            route: None,
            method: None,
            status: [200, 201, 302, 404, 500, 99][rng.next(6) as usize],
            latency_us: rng.next(5_000_000),
            outcome: None,
            cost: 1,
        })
        .collect();
    for batch in events.chunks(400) {
        store.write(batch).await.unwrap();
        memory.write(batch).await.unwrap();
    }
    // A retried batch counts nothing twice.
    store.write(&events[..400]).await.unwrap();

    let mut queries = vec![StatsQuery {
        from: t0 - TimeDelta::hours(1),
        to: t0 + TimeDelta::hours(4),
        key_id: None,
        provider: None,
        granularity: None,
    }];
    for _ in 0..40 {
        let a = rng.next(3 * 3_600_000_000) as i64;
        let len = 1 + rng.next(2 * 3_600_000_000) as i64;
        queries.push(StatsQuery {
            from: t0 + TimeDelta::microseconds(a),
            to: t0 + TimeDelta::microseconds(a + len),
            key_id: (rng.next(3) == 0).then(|| keys[rng.next(3) as usize]),
            provider: match rng.next(4) {
                0 => Some("openai".into()),
                1 => Some(String::new()),
                _ => None,
            },
            granularity: None,
        });
    }
    // Whole minutes and sub-minute ranges too.
    queries.push(StatsQuery {
        from: t0 + TimeDelta::minutes(5),
        to: t0 + TimeDelta::minutes(65),
        key_id: None,
        provider: None,
        granularity: None,
    });
    queries.push(StatsQuery {
        from: t0 + TimeDelta::seconds(61),
        to: t0 + TimeDelta::seconds(119),
        key_id: None,
        provider: None,
        granularity: None,
    });
    for q in &queries {
        let got = store.overview(q).await.unwrap();
        let want = memory.overview(q).await.unwrap();
        assert_eq!(got, want, "range {} .. {}", q.from, q.to);
    }
    assert!(store.overview(&queries[0]).await.unwrap().calls > 2_000);
}

#[tokio::test(flavor = "multi_thread")]
async fn usage_touches_keys_and_purges_raw_events_only() {
    let db = common::TestDb::new();
    let store = std::sync::Arc::new(db.store().await);
    let kv = Keyvault::builder()
        .key_store(store.clone())
        .credits(store.clone())
        .audit_log(store.clone())
        .build()
        .unwrap();
    let id = kv
        .create_key(NewKey::new("used"), &Actor::library())
        .await
        .unwrap()
        .record
        .id;
    let t0 = Utc.with_ymd_and_hms(2026, 5, 1, 10, 0, 30).unwrap();
    let ev = |i: i64| UsageEvent {
        request_id: format!("u{i}").into(),
        key_id: Some(id),
        owner_id: None,
        ts: t0 + TimeDelta::minutes(i),
        provider: Some("demo".into()),
        route: None,
        method: None,
        status: 200,
        latency_us: 2_000,
        outcome: Some(Outcome::Valid),
        cost: 1,
    };
    store
        .write(&(0..10).map(ev).collect::<Vec<_>>())
        .await
        .unwrap();
    let rec = store.get(id).await.unwrap().unwrap();
    assert_eq!(rec.last_used_at, Some(t0 + TimeDelta::minutes(9)));
    // An older batch never moves last_used_at back.
    store
        .write(&[UsageEvent {
            request_id: "old".into(),
            ..ev(-30)
        }])
        .await
        .unwrap();
    let rec = store.get(id).await.unwrap().unwrap();
    assert_eq!(rec.last_used_at, Some(t0 + TimeDelta::minutes(9)));

    let all = StatsQuery {
        from: t0 - TimeDelta::hours(1),
        to: t0 + TimeDelta::hours(1),
        key_id: None,
        provider: None,
        granularity: None,
    };
    assert_eq!(store.overview(&all).await.unwrap().calls, 11);
    // Raw events before the cut go; statistics read the rollups and stay whole.
    let deleted = store
        .purge_usage_before(t0 + TimeDelta::minutes(4) + TimeDelta::seconds(10))
        .await
        .unwrap();
    // u0–u4 (10:00:30 … 10:04:30) and the old event.
    assert_eq!(deleted, 6);
    let raw: i64 = sqlx::query_scalar("SELECT count(*) FROM kv_usage_events")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(raw, 5);
    assert_eq!(store.overview(&all).await.unwrap().calls, 11);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_database_persists_and_migrating_twice_is_harmless() {
    let db = common::TestDb::new();
    let id = {
        let store = std::sync::Arc::new(db.store().await);
        let kv = Keyvault::builder()
            .key_store(store.clone())
            .credits(store.clone())
            .audit_log(store.clone())
            .build()
            .unwrap();
        let id = kv
            .create_key(NewKey::new("kept"), &Actor::library())
            .await
            .unwrap()
            .record
            .id;
        store.close().await;
        id
    };
    let again = db.store().await;
    again.migrate().await.unwrap();
    assert_eq!(again.get(id).await.unwrap().unwrap().name, "kept");
    assert!(db.dir.path().join("data/keyvault.db").exists());
}

/// Migration 0011 keeps each balance's refill beside it, so that only callers holding that
/// refill apply it. Balances opened before it take the refill from their key's stored
/// credits; one whose key is gone keeps refilling for every caller, as all did before.
#[tokio::test(flavor = "multi_thread")]
async fn balances_from_before_migration_0011_are_given_their_keys_refill() {
    let db = common::TestDb::new();
    let store = std::sync::Arc::new(db.store().await);
    let kv = Keyvault::builder()
        .key_store(store.clone())
        .credits(store.clone())
        .audit_log(store.clone())
        .build()
        .unwrap();
    let daily = Credits {
        remaining: 5,
        refill: Some(Refill {
            interval: RefillInterval::Daily,
            amount: 100,
        }),
    };
    let monthly = Credits {
        remaining: 5,
        refill: Some(Refill {
            interval: RefillInterval::Monthly,
            amount: 7,
        }),
    };
    let mut quotas = Vec::new();
    for (name, credits) in [
        ("daily", daily),
        ("plain", Credits::new(5)),
        ("gone", daily),
    ] {
        let created = kv
            .create_key(NewKey::new(name).credits(credits), &Actor::library())
            .await
            .unwrap();
        quotas.push((created.record.id, created.record.quota_id));
    }
    // The database as it was before 0011, the third key's record lost.
    for sql in [
        "ALTER TABLE kv_credits DROP COLUMN refill_spec",
        "DELETE FROM kv_schema_migrations WHERE version = 11",
    ] {
        sqlx::query(sql).execute(store.pool()).await.unwrap();
    }
    sqlx::query("DELETE FROM kv_keys WHERE id = ?1")
        .bind(quotas[2].0.to_string())
        .execute(store.pool())
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let mut specs = Vec::new();
    for (_, quota) in &quotas {
        let spec: Option<String> =
            sqlx::query_scalar("SELECT refill_spec FROM kv_credits WHERE quota_id = ?1")
                .bind(quota.to_string())
                .fetch_one(store.pool())
                .await
                .unwrap();
        specs.push(spec);
    }
    assert_eq!(specs, [Some("daily:100".into()), Some(String::new()), None]);

    let spend = |quota: KeyId, credits: Credits, days: i64, id: &'static str| {
        let store = store.clone();
        async move {
            store
                .spend(&CreditRequest {
                    quota_id: quota,
                    credits: &credits,
                    cost: 1,
                    request_id: id,
                    now: Utc::now() + TimeDelta::days(days),
                })
                .await
                .unwrap()
        }
    };
    assert_eq!(
        spend(quotas[0].1, monthly, 40, "a").await,
        CreditDecision::Spent { remaining: 4 },
        "another refill than the key's is not applied"
    );
    assert_eq!(
        spend(quotas[0].1, daily, 1, "b").await,
        CreditDecision::Spent { remaining: 99 },
        "the key's own refill is"
    );
    assert_eq!(
        spend(quotas[2].1, monthly, 40, "c").await,
        CreditDecision::Spent { remaining: 6 },
        "a balance whose refill is not known refills for any caller"
    );
}
