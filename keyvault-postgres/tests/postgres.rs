//! PostgreSQL-specific guarantees: credits across instances, coexisting migrations, audit
//! tampering, change propagation between instances, balances given their key's refill by a
//! migration.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use chrono::{TimeDelta, Utc};
use keyvault_core::{
    Actor, AuditEvent, AuditLog, AuditOutcome, CreditDecision, CreditRequest, CreditStore, Credits,
    KeyId, KeyStore, Keyvault, NewKey, Outcome, Refill, RefillInterval, StatsQuery, UsageEvent,
    UsageQuery, UsageSink, VerifyRequest, memory::MemoryRateLimiter,
};
use keyvault_postgres::{MIGRATIONS_TABLE, PgChangeBus, PgStore};
use sqlx::{
    PgPool,
    migrate::{Migration, MigrationType, Migrator},
    postgres::{PgConnectOptions, PgPoolOptions},
};

async fn store(pool: PgPool) -> PgStore {
    let s = PgStore::new(pool);
    s.migrate().await.unwrap();
    s
}

/// A second, independent pool on the same database: another instance.
async fn second_pool(pool: &PgPool) -> PgPool {
    let opts: PgConnectOptions = (*pool.connect_options()).clone();
    PgPoolOptions::new()
        .max_connections(4)
        .connect_with(opts)
        .await
        .unwrap()
}

#[sqlx::test(migrations = false)]
async fn two_instances_spend_one_balance_exactly(pool: PgPool) {
    let a = store(pool.clone()).await;
    let b = PgStore::new(second_pool(&pool).await);
    let quota = KeyId::new();
    let credits = Credits::new(500);
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let s = if i % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move {
                let rid = format!("r{i}");
                let d = s
                    .spend(&CreditRequest {
                        quota_id: quota,
                        credits: &credits,
                        cost: 10,
                        request_id: &rid,
                        now: Utc::now(),
                    })
                    .await
                    .unwrap();
                matches!(d, CreditDecision::Spent { .. })
            })
        })
        .collect();
    let mut admitted = 0;
    for t in tasks {
        admitted += u32::from(t.await.unwrap());
    }
    assert_eq!(admitted, 50);
    let left: i64 = sqlx::query_scalar("SELECT remaining FROM kv_credits WHERE quota_id = $1")
        .bind(quota.as_uuid())
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, 0);
    let read = a
        .spend(&CreditRequest {
            quota_id: quota,
            credits: &credits,
            cost: 0,
            request_id: "read",
            now: Utc::now(),
        })
        .await
        .unwrap();
    assert_eq!(read, CreditDecision::Spent { remaining: 0 });
}

#[sqlx::test(migrations = false)]
async fn debit_refills_then_stops_at_zero(pool: PgPool) {
    let s = store(pool).await;
    let quota = KeyId::new();
    let credits = Credits::new(30);
    assert_eq!(
        s.debit(quota, &credits, 5, Utc::now()).await.unwrap(),
        0,
        "no balance: left alone"
    );
    let req = CreditRequest {
        quota_id: quota,
        credits: &credits,
        cost: 10,
        request_id: "r",
        now: Utc::now(),
    };
    assert_eq!(
        s.spend(&req).await.unwrap(),
        CreditDecision::Spent { remaining: 20 }
    );
    assert_eq!(s.debit(quota, &credits, 15, Utc::now()).await.unwrap(), 5);
    assert_eq!(s.debit(quota, &credits, 15, Utc::now()).await.unwrap(), 0);
    s.refund(&req).await.unwrap();
    assert_eq!(
        s.spend(&req).await.unwrap(),
        CreditDecision::Spent { remaining: 0 }
    );
    assert_eq!(
        s.spend(&req).await.unwrap(),
        CreditDecision::Insufficient { remaining: 0 }
    );
}

fn host_migrator(versions: &[(i64, &'static str)]) -> Migrator {
    Migrator::with_migrations(
        versions
            .iter()
            .map(|(v, sql)| {
                Migration::new(
                    *v,
                    format!("host {v}").into(),
                    MigrationType::Simple,
                    sqlx::SqlStr::from_static(sql),
                    false,
                )
            })
            .collect(),
    )
}

#[sqlx::test(migrations = false)]
async fn host_migrations_and_keyvault_migrations_coexist(pool: PgPool) {
    // The host's own migrations, in the default `_sqlx_migrations` table.
    let host = host_migrator(&[(
        1,
        "CREATE TABLE users (id bigserial PRIMARY KEY, email text)",
    )]);
    host.run(&pool).await.unwrap();
    let kv = store(pool.clone()).await;
    // Running again, and the host migrating again (with a new version), are both no-ops for
    // the other side.
    kv.migrate().await.unwrap();
    host.run(&pool).await.unwrap();
    let host2 = host_migrator(&[
        (
            1,
            "CREATE TABLE users (id bigserial PRIMARY KEY, email text)",
        ),
        (2, "ALTER TABLE users ADD COLUMN name text"),
    ]);
    host2.run(&pool).await.unwrap();
    kv.migrate().await.unwrap();

    let host_versions: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations ORDER BY version")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(host_versions, [1, 2]);
    let kv_versions: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM {MIGRATIONS_TABLE}"
    )))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(kv_versions >= 1);
    // Both schemas work.
    sqlx::query("INSERT INTO users (email, name) VALUES ('a@example.com', 'a')")
        .execute(&pool)
        .await
        .unwrap();
    let kv_vault = Keyvault::builder()
        .key_store(Arc::new(kv.clone()))
        .credits(Arc::new(kv.clone()))
        .audit_log(Arc::new(kv.clone()))
        .build()
        .unwrap();
    let created = kv_vault
        .create_key(NewKey::new("coexisting"), &Actor::library())
        .await
        .unwrap();
    let v = kv_vault
        .verify(&VerifyRequest::new(created.key.expose()))
        .await
        .unwrap();
    assert_eq!(v.outcome, Outcome::Valid);
}

async fn audited(pool: PgPool, n: u32) -> PgStore {
    let s = store(pool).await;
    let events: Vec<_> = (1..=n)
        .map(|i| {
            AuditEvent::new(
                Utc::now(),
                &Actor::named("alice"),
                "key.update",
                Some(format!("k{i}")),
                AuditOutcome::Success,
                serde_json::json!({"i": i, "fields": ["name"]}),
            )
        })
        .collect();
    // Two appends: the chain continues across transactions.
    s.append(&events[..2]).await.unwrap();
    s.append(&events[2..]).await.unwrap();
    let r = s.verify_chain().await.unwrap();
    assert_eq!((r.checked, r.first_broken), (u64::from(n), None));
    s
}

#[sqlx::test(migrations = false)]
async fn an_edited_audit_row_is_found(pool: PgPool) {
    let s = audited(pool.clone(), 6).await;
    sqlx::query("UPDATE kv_audit SET actor = 'mallory' WHERE seq = 4")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(s.verify_chain().await.unwrap().first_broken, Some(4));
}

#[sqlx::test(migrations = false)]
async fn edited_audit_details_are_found(pool: PgPool) {
    let s = audited(pool.clone(), 6).await;
    sqlx::query("UPDATE kv_audit SET details = jsonb_set(details, '{i}', '99') WHERE seq = 5")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(s.verify_chain().await.unwrap().first_broken, Some(5));
}

#[sqlx::test(migrations = false)]
async fn a_deleted_audit_row_is_found(pool: PgPool) {
    let s = audited(pool.clone(), 6).await;
    sqlx::query("DELETE FROM kv_audit WHERE seq = 3")
        .execute(&pool)
        .await
        .unwrap();
    let r = s.verify_chain().await.unwrap();
    assert_eq!((r.checked, r.first_broken), (5, Some(3)));
}

#[sqlx::test(migrations = false)]
async fn reordered_audit_rows_are_found(pool: PgPool) {
    let s = audited(pool.clone(), 6).await;
    // Swap the positions of records 2 and 5.
    for sql in [
        "UPDATE kv_audit SET seq = -1 WHERE seq = 2",
        "UPDATE kv_audit SET seq = 2 WHERE seq = 5",
        "UPDATE kv_audit SET seq = 5 WHERE seq = -1",
    ] {
        sqlx::query(sql).execute(&pool).await.unwrap();
    }
    assert_eq!(s.verify_chain().await.unwrap().first_broken, Some(2));
}

#[sqlx::test(migrations = false)]
async fn a_failed_mutation_leaves_no_audit_record(pool: PgPool) {
    let s = store(pool).await;
    let kv = Keyvault::builder()
        .key_store(Arc::new(s.clone()))
        .credits(Arc::new(s.clone()))
        .audit_log(Arc::new(s.clone()))
        .build()
        .unwrap();
    let c = kv
        .create_key(NewKey::new("a"), &Actor::library())
        .await
        .unwrap();
    let before = s.verify_chain().await.unwrap().checked;
    // Inserting the same record again conflicts: neither the key nor its audit event lands.
    let ev = AuditEvent::new(
        Utc::now(),
        &Actor::library(),
        "key.create",
        Some(c.record.id.to_string()),
        AuditOutcome::Success,
        serde_json::json!({}),
    );
    let err = s
        .apply(&[keyvault_core::KeyWrite::Insert(c.record.clone())], &[ev])
        .await
        .unwrap_err();
    assert!(matches!(err, keyvault_core::Error::Conflict(_)), "{err}");
    let after = s.verify_chain().await.unwrap();
    assert_eq!((after.checked, after.first_broken), (before, None));
}

#[sqlx::test(migrations = false)]
async fn a_disable_via_one_bus_reaches_the_other_within_a_second(pool: PgPool) {
    let other_pool = second_pool(&pool).await;
    let s1 = store(pool.clone()).await;
    let s2 = PgStore::new(other_pool);
    let bus1 = PgChangeBus::connect(s1.pool()).await.unwrap();
    let bus2 = PgChangeBus::connect(s2.pool()).await.unwrap();
    let vault = |s: &PgStore, bus: &PgChangeBus| {
        let s = Arc::new(s.clone());
        Keyvault::builder()
            .key_store(s.clone())
            .credits(s.clone())
            .audit_log(s)
            .limiter(Arc::new(MemoryRateLimiter::new()))
            .change_bus(Arc::new(bus.clone()))
            .build()
            .unwrap()
    };
    let a = vault(&s1, &bus1);
    let b = vault(&s2, &bus2);
    let created = a
        .create_key(NewKey::new("p"), &Actor::library())
        .await
        .unwrap();
    let key = created.key.expose().to_owned();
    for _ in 0..2 {
        let v = b.verify(&VerifyRequest::new(&key)).await.unwrap();
        assert_eq!(v.outcome, Outcome::Valid);
    }
    a.set_enabled(created.record.id, false, &Actor::library())
        .await
        .unwrap();
    let start = Instant::now();
    loop {
        let v = b.verify(&VerifyRequest::new(&key)).await.unwrap();
        if v.outcome == Outcome::Disabled {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "the disable was not honoured within 1 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn event(i: usize, key: Option<KeyId>, ts: chrono::DateTime<Utc>) -> UsageEvent {
    UsageEvent {
        request_id: format!("req-{i}").into(),
        key_id: key,
        owner_id: None,
        ts,
        provider: (!i.is_multiple_of(3)).then(|| "openai".into()),
        route: Some("/v1/chat".into()),
        method: Some("POST".into()),
        status: if i.is_multiple_of(4) { 503 } else { 200 },
        latency_us: 1_000 + i as u64 * 100,
        outcome: Some(Outcome::Valid),
        cost: 1,
    }
}

#[sqlx::test(migrations = false)]
async fn usage_rollups_count_each_request_once_and_outlive_raw_events(pool: PgPool) {
    let s = store(pool.clone()).await;
    let kv = Keyvault::builder()
        .key_store(Arc::new(s.clone()))
        .credits(Arc::new(s.clone()))
        .audit_log(Arc::new(s.clone()))
        .build()
        .unwrap();
    let c = kv
        .create_key(NewKey::new("u"), &Actor::library())
        .await
        .unwrap();
    let id = c.record.id;
    let base = "2026-01-10T12:00:00Z"
        .parse::<chrono::DateTime<Utc>>()
        .unwrap();
    let events: Vec<_> = (0..300)
        .map(|i| {
            let key = (i % 2 == 0).then_some(id);
            event(i, key, base + TimeDelta::seconds(i as i64))
        })
        .collect();
    s.write(&events[..200]).await.unwrap();
    // Overlapping retries and a batch with a duplicate inside it.
    s.write(&events[100..]).await.unwrap();
    let mut dup = events[10..20].to_vec();
    dup.push(events[10].clone());
    s.write(&dup).await.unwrap();

    // The reference: the same events in memory.
    let mem = keyvault_core::memory::MemoryStore::new();
    mem.write(&events).await.unwrap();
    let queries = [
        // Aligned whole minutes, partial ends, one key, one provider, within one minute.
        (base, base + TimeDelta::minutes(5), None, None),
        (
            base + TimeDelta::seconds(17),
            base + TimeDelta::seconds(250),
            None,
            None,
        ),
        (base, base + TimeDelta::hours(1), Some(id), None),
        (
            base + TimeDelta::seconds(61),
            base + TimeDelta::hours(2),
            None,
            Some("openai"),
        ),
        (
            base + TimeDelta::seconds(5),
            base + TimeDelta::seconds(50),
            Some(id),
            None,
        ),
    ];
    for (from, to, key_id, provider) in queries {
        let q = StatsQuery {
            from,
            to,
            key_id,
            provider: provider.map(Into::into),
            granularity: None,
        };
        assert_eq!(
            s.overview(&q).await.unwrap(),
            mem.overview(&q).await.unwrap(),
            "{q:?}"
        );
    }
    let rec = s.get(id).await.unwrap().unwrap();
    assert_eq!(rec.last_used_at, Some(base + TimeDelta::seconds(298)));

    // Retention: raw events go, whole-minute statistics stay.
    let purged = s
        .purge_usage_before(base + TimeDelta::hours(1))
        .await
        .unwrap();
    assert_eq!(purged, 300);
    let q = StatsQuery {
        from: base,
        to: base + TimeDelta::minutes(5),
        key_id: None,
        provider: None,
        granularity: None,
    };
    assert_eq!(
        s.overview(&q).await.unwrap(),
        mem.overview(&q).await.unwrap()
    );
}

#[sqlx::test(migrations = false)]
async fn out_of_range_values_are_refused_naming_the_field(pool: PgPool) {
    let s = store(pool).await;
    let mut e = event(1, None, Utc::now());
    e.cost = u64::MAX;
    let err = s.write(&[e]).await.unwrap_err();
    match err {
        keyvault_core::Error::Invalid(i) => assert_eq!(i.field, "events[0].cost"),
        other => panic!("{other}"),
    }
}

#[sqlx::test(migrations = false)]
async fn hourly_and_daily_rollups_answer_like_the_reference_across_hours(pool: PgPool) {
    let s = store(pool.clone()).await;
    let mem = keyvault_core::memory::MemoryStore::new();
    let (a, b) = (KeyId::new(), KeyId::new());
    let base = "2026-01-10T12:00:00Z"
        .parse::<chrono::DateTime<Utc>>()
        .unwrap();
    // 3 h 20 min of traffic, one event every 20 s, over two keys and no key.
    let events: Vec<_> = (0..600)
        .map(|i| {
            let key = [Some(a), Some(b), None][i % 3];
            let mut e = event(i, key, base + TimeDelta::seconds(i as i64 * 20));
            e.latency_us = 50 + (i as u64 * 7_919) % 900_000;
            e.status = [200, 204, 302, 404, 500][i % 5];
            e
        })
        .collect();
    // New batches (binary COPY), a retried overlapping batch and one with an in-batch
    // duplicate (the careful path): each event counted once.
    s.write(&events[..250]).await.unwrap();
    s.write(&events[250..400]).await.unwrap();
    s.write(&events[200..450]).await.unwrap();
    let mut dup = events[450..].to_vec();
    dup.push(events[460].clone());
    s.write(&dup).await.unwrap();
    mem.write(&events).await.unwrap();

    let q = |from: chrono::DateTime<Utc>, to, key_id, provider: Option<&str>| StatsQuery {
        from,
        to,
        key_id,
        provider: provider.map(Into::into),
        granularity: None,
    };
    let m = TimeDelta::minutes;
    let queries = [
        // Hour steps (4 days): hours, minutes on both sides, raw ends.
        q(
            base - TimeDelta::days(1),
            base + TimeDelta::days(3),
            None,
            None,
        ),
        q(
            base + TimeDelta::seconds(17),
            base + TimeDelta::days(3) + m(75) + TimeDelta::seconds(3),
            Some(a),
            None,
        ),
        // Minute steps over partial hours; one provider; one key.
        q(
            base + m(25) + TimeDelta::seconds(7),
            base + m(170),
            None,
            None,
        ),
        q(base + m(61), base + m(200), None, Some("openai")),
        q(base + m(59), base + m(121), Some(b), None),
        q(base + m(60), base + m(180), Some(a), Some("openai")),
        // Day steps: the days of the series from the daily rollups, hours and minutes at
        // either end.
        StatsQuery {
            granularity: Some(keyvault_core::Granularity::Day),
            ..q(
                base - TimeDelta::days(1) + m(30),
                base + TimeDelta::days(3),
                None,
                None,
            )
        },
        StatsQuery {
            granularity: Some(keyvault_core::Granularity::Day),
            ..q(
                base - m(90),
                base + TimeDelta::days(1),
                Some(b),
                Some("openai"),
            )
        },
    ];
    for q in &queries {
        assert_eq!(
            s.overview(q).await.unwrap(),
            mem.overview(q).await.unwrap(),
            "{q:?}"
        );
    }

    // Without raw events, whole minutes and hours still answer exactly.
    assert_eq!(
        s.purge_usage_before(base + TimeDelta::days(1))
            .await
            .unwrap(),
        600
    );
    for q in [
        q(
            base - TimeDelta::days(1),
            base + TimeDelta::days(3),
            None,
            None,
        ),
        q(base + m(25), base + m(170), Some(a), None),
        q(base + m(60), base + m(180), None, Some("openai")),
    ] {
        assert_eq!(
            s.overview(&q).await.unwrap(),
            mem.overview(&q).await.unwrap(),
            "{q:?}"
        );
    }
}

#[sqlx::test(migrations = false)]
async fn upgrading_folds_existing_minute_rollups_into_hours_and_days(pool: PgPool) {
    // Usage written by the schema before hourly rollups existed.
    let m = keyvault_postgres::migrator();
    m.run_to(20260101000001, &pool).await.unwrap();
    let base = "2026-01-10T12:00:00Z"
        .parse::<chrono::DateTime<Utc>>()
        .unwrap();
    let events: Vec<_> = (0..400)
        .map(|i| {
            let mut e = event(i, None, base + TimeDelta::seconds(i as i64 * 23));
            e.status = [200, 301, 404, 503][i % 4];
            e
        })
        .collect();
    sqlx::query(
        "INSERT INTO kv_usage_rollup \
         SELECT $5::uuid, date_trunc('minute', e.ts), \
                e.provider, e.class, count(*), array_agg(e.b ORDER BY e.b), array_agg(1::bigint ORDER BY e.b) \
         FROM (SELECT to_timestamp(t) AS ts, coalesce(p, '') AS provider, (s / 100)::smallint AS class, b \
               FROM unnest($1::bigint[], $2::text[], $3::int[], $4::smallint[]) AS u(t, p, s, b)) AS e \
         GROUP BY 1, 2, 3, 4",
    )
    .bind(events.iter().map(|e| e.ts.timestamp()).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.provider.as_deref().map(str::to_owned)).collect::<Vec<_>>())
    .bind(events.iter().map(|e| i32::from(e.status)).collect::<Vec<_>>())
    .bind(
        events
            .iter()
            .map(|e| keyvault_core::LatencyHistogram::bucket_of(e.latency_us) as i16)
            .collect::<Vec<_>>(),
    )
    .bind(keyvault_core::ALL_KEYS_ROLLUP)
    .execute(&pool)
    .await
    .unwrap();
    let s = store(pool).await;
    let mem = keyvault_core::memory::MemoryStore::new();
    mem.write(&events).await.unwrap();
    // Whole hours and minutes only (no raw events were kept): the hours come from the fold.
    for q in [
        StatsQuery {
            from: base,
            to: base + TimeDelta::hours(3),
            key_id: None,
            provider: None,
            granularity: None,
        },
        StatsQuery {
            from: base - TimeDelta::days(2),
            to: base + TimeDelta::days(2),
            key_id: None,
            provider: Some("openai".into()),
            granularity: None,
        },
        // And the days from the hours, by the migration after it.
        StatsQuery {
            from: base - TimeDelta::days(2),
            to: base + TimeDelta::days(2),
            key_id: None,
            provider: None,
            granularity: Some(keyvault_core::Granularity::Day),
        },
    ] {
        assert_eq!(
            s.overview(&q).await.unwrap(),
            mem.overview(&q).await.unwrap(),
            "{q:?}"
        );
    }
}

/// A number `bigint` cannot hold is refused with the event's index and field, on both the
/// COPY path and the duplicate-tolerant path, and nothing of the batch is stored.
#[sqlx::test(migrations = false)]
async fn an_event_number_too_large_is_named_and_nothing_is_written(pool: PgPool) {
    let s = store(pool.clone()).await;
    let ts = Utc::now();
    for (events, field) in [
        {
            let mut e: Vec<_> = (0..3).map(|i| event(i, None, ts)).collect();
            e[1].cost = u64::MAX;
            (e, "events[1].cost")
        },
        {
            // A repeated request id sends the batch down the INSERT path.
            let mut e: Vec<_> = (0..3).map(|i| event(i, None, ts)).collect();
            e.push(e[0].clone());
            e[2].latency_us = u64::MAX;
            (e, "events[2].latency_us")
        },
    ] {
        match s.write(&events).await {
            Err(keyvault_core::Error::Invalid(e)) => assert_eq!(e.field, field),
            other => panic!("expected {field} to be refused, got {other:?}"),
        }
    }
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM kv_usage_events")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(stored, 0);
}

/// Migration 20260101000010 keeps each balance's refill beside it, so that only callers
/// holding that refill apply it. Balances opened before it take the refill from their key's
/// stored credits; one whose key is gone keeps refilling for every caller, as all did before.
#[sqlx::test(migrations = false)]
async fn balances_from_before_the_refill_spec_migration_are_given_their_keys_refill(pool: PgPool) {
    let store = Arc::new(store(pool.clone()).await);
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
    // The database as it was before the migration, the third key's record lost.
    sqlx::query("ALTER TABLE kv_credits DROP COLUMN refill_spec")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("DELETE FROM kv_schema_migrations WHERE version = 20260101000010")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("DELETE FROM kv_keys WHERE id = $1")
        .bind(quotas[2].0.as_uuid())
        .execute(&pool)
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let mut specs = Vec::new();
    for (_, quota) in &quotas {
        let spec: Option<String> =
            sqlx::query_scalar("SELECT refill_spec FROM kv_credits WHERE quota_id = $1")
                .bind(quota.as_uuid())
                .fetch_one(&pool)
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
