//! PostgreSQL-specific behaviour of alerts and of the short-window usage reads: the `open`
//! column and the bodies kept in step, a batch's order, stored values that do not decode,
//! and the grouped windows agreeing with keyvault-core's in-memory store.

use std::error::Error as _;

use chrono::{DateTime, SubsecRound, TimeDelta, Utc};
use keyvault_core::{
    Alert, AlertRule, AlertState, AlertStore, Baseline, KeyId, Outcome, UsageEvent, UsageQuery,
    UsageSink, memory::MemoryStore,
};
use keyvault_postgres::{Error, PgStore};
use sqlx::PgPool;
use uuid::Uuid;

async fn store(pool: PgPool) -> PgStore {
    let s = PgStore::new(pool);
    s.migrate().await.unwrap();
    s
}

fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

fn rule() -> AlertRule {
    AlertRule {
        id: Uuid::now_v7(),
        name: "errors".into(),
        kind: "error_rate".into(),
        params: serde_json::json!({"above": 0.5}),
        key_id: None,
        owner_id: None,
        enabled: true,
        created_at: now(),
        updated_at: now(),
    }
}

fn alert(rule: &AlertRule, key: KeyId) -> Alert {
    Alert {
        id: Uuid::now_v7(),
        rule_id: rule.id,
        kind: rule.kind.clone(),
        key_id: Some(key),
        ip: None,
        state: AlertState::Firing,
        value: 0.75,
        threshold: 0.5,
        summary: "errors".into(),
        started_at: now(),
        acknowledged_at: None,
        resolved_at: None,
        last_seen_at: now(),
        quiet_since: None,
    }
}

/// The column of the `Corrupt` error beneath `e`.
fn corrupt_column(e: &keyvault_core::Error) -> &'static str {
    let keyvault_core::Error::Backend(b) = e else {
        panic!("{e:?}")
    };
    match b.source().unwrap().downcast_ref::<Error>().unwrap() {
        Error::Corrupt { column, .. } => column,
        other => panic!("{other:?}"),
    }
}

#[sqlx::test(migrations = false)]
async fn deleting_a_rule_resolves_its_open_alerts_in_columns_and_bodies(pool: PgPool) {
    let s = store(pool.clone()).await;
    let (r, other) = (rule(), rule());
    s.create_rule(&r, &[]).await.unwrap();
    s.create_rule(&other, &[]).await.unwrap();
    let mut done = alert(&r, KeyId::new());
    done.state = AlertState::Resolved;
    done.resolved_at = Some(now() - TimeDelta::minutes(5));
    let open = alert(&r, KeyId::new());
    assert!(s.acknowledge(open.id, now(), &[]).await.unwrap().is_none());
    let firing = alert(&r, KeyId::new());
    let elsewhere = alert(&other, KeyId::new());
    s.save_alerts(&[
        done.clone(),
        open.clone(),
        firing.clone(),
        elsewhere.clone(),
    ])
    .await
    .unwrap();
    let open = s.acknowledge(open.id, now(), &[]).await.unwrap().unwrap();
    assert_eq!(s.alert(open.id).await.unwrap().unwrap(), open);
    assert_eq!(s.firing_count().await.unwrap(), 2);

    let at = now() + TimeDelta::nanoseconds(1_000);
    assert!(s.delete_rule(r.id, at, &[]).await.unwrap());
    for before in [&open, &firing] {
        let mut want = before.clone();
        want.state = AlertState::Resolved;
        want.resolved_at = Some(at);
        assert_eq!(s.alert(before.id).await.unwrap().unwrap(), want);
    }
    assert_eq!(
        s.alert(done.id).await.unwrap().unwrap(),
        done,
        "already resolved"
    );
    assert_eq!(s.open_alerts().await.unwrap(), [elsewhere]);
    assert_eq!(s.firing_count().await.unwrap(), 1);
    let states: Vec<(String, bool)> =
        sqlx::query_as("SELECT state, open FROM kv_alerts WHERE rule_id = $1 ORDER BY id")
            .bind(r.id)
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(states, vec![("resolved".to_owned(), false); 3]);
}

#[sqlx::test(migrations = false)]
async fn a_batch_is_written_as_a_whole_whatever_its_order(pool: PgPool) {
    let s = store(pool).await;
    let r = rule();
    let key = KeyId::new();
    let first = alert(&r, key);
    s.save_alerts(std::slice::from_ref(&first)).await.unwrap();
    // The next alert of the subject before the resolution of the first: no conflict.
    let next = alert(&r, key);
    let mut resolved = first.clone();
    resolved.state = AlertState::Resolved;
    resolved.resolved_at = Some(now());
    s.save_alerts(&[next.clone(), resolved.clone()])
        .await
        .unwrap();
    assert_eq!(s.open_alerts().await.unwrap(), std::slice::from_ref(&next));
    assert_eq!(s.alert(first.id).await.unwrap().unwrap(), resolved);
    // The same alert twice in a batch: the last one is kept.
    let mut seen = next.clone();
    seen.last_seen_at = now() + TimeDelta::seconds(30);
    s.save_alerts(&[next.clone(), seen.clone()]).await.unwrap();
    assert_eq!(s.alert(next.id).await.unwrap().unwrap(), seen);
    // A second open alert of the subject names the rule and the subject.
    let twin = alert(&r, key);
    let err = s
        .save_alerts(std::slice::from_ref(&twin))
        .await
        .unwrap_err();
    let keyvault_core::Error::Conflict(message) = &err else {
        panic!("{err:?}")
    };
    assert!(message.contains(&r.id.to_string()), "{message}");
    assert!(message.contains(&format!("key:{key}")), "{message}");
    assert!(s.alert(twin.id).await.unwrap().is_none());
}

#[sqlx::test(migrations = false)]
async fn baselines_keep_one_row_per_key(pool: PgPool) {
    let s = store(pool).await;
    let r = Uuid::now_v7();
    let (k1, k2) = (KeyId::new(), KeyId::new());
    let b = |key, mean| Baseline {
        key_id: key,
        mean,
        windows: 2,
        through: now(),
    };
    s.save_baselines(r, &[b(k1, 1.0), b(k2, 2.0), b(k1, 3.0)])
        .await
        .unwrap();
    let mut got = s.baselines(r).await.unwrap();
    got.sort_by_key(|b| b.key_id);
    let mut want = vec![b(k1, 3.0), b(k2, 2.0)];
    want.sort_by_key(|b| b.key_id);
    for (g, w) in got.iter().zip(&want) {
        assert_eq!((g.key_id, g.mean, g.windows), (w.key_id, w.mean, w.windows));
    }
    assert_eq!(got.len(), 2);
    s.save_baselines(r, &[]).await.unwrap();
    let too_many = Baseline {
        windows: u32::MAX,
        ..b(k1, 1.0)
    };
    let err = s.save_baselines(r, &[too_many]).await.unwrap_err();
    assert!(matches!(err, keyvault_core::Error::Invalid(_)), "{err:?}");
    assert_eq!(s.baselines(r).await.unwrap().len(), 2);
}

#[sqlx::test(migrations = false)]
async fn stored_values_that_do_not_decode_are_corruption(pool: PgPool) {
    let s = store(pool.clone()).await;
    let r = rule();
    s.create_rule(&r, &[]).await.unwrap();
    let a = alert(&r, KeyId::new());
    s.save_alerts(std::slice::from_ref(&a)).await.unwrap();
    sqlx::query("UPDATE kv_alerts SET body = '{\"id\": 1}'")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("UPDATE kv_alert_rules SET body = '[]'")
        .execute(&pool)
        .await
        .unwrap();
    let e = s.alert(a.id).await.unwrap_err();
    assert_eq!(corrupt_column(&e), "kv_alerts.body");
    let e = s.open_alerts().await.unwrap_err();
    assert_eq!(corrupt_column(&e), "kv_alerts.body");
    let e = s.rules().await.unwrap_err();
    assert_eq!(corrupt_column(&e), "kv_alert_rules.body");

    let t0 = now();
    let ev = UsageEvent {
        request_id: "r".into(),
        key_id: Some(KeyId::new()),
        owner_id: None,
        ts: t0,
        provider: None,
        route: None,
        method: None,
        status: 200,
        latency_us: 10,
        outcome: Some(Outcome::Valid),
        cost: 0,
    };
    s.write(&[ev]).await.unwrap();
    sqlx::query("UPDATE kv_usage_events SET outcome = 'MAYBE'")
        .execute(&pool)
        .await
        .unwrap();
    let e = s
        .key_windows(t0, t0 + TimeDelta::seconds(1), None)
        .await
        .unwrap_err();
    assert_eq!(corrupt_column(&e), "kv_usage_events.outcome");
}

#[sqlx::test(migrations = false)]
async fn windows_and_seconds_agree_with_the_memory_store(pool: PgPool) {
    let s = store(pool).await;
    let memory = MemoryStore::new();
    let t0 = DateTime::from_timestamp(1_790_000_000, 0).unwrap();
    let keys = [KeyId::new(), KeyId::new(), KeyId::new()];
    let outcomes = [
        None,
        Some(Outcome::Valid),
        Some(Outcome::RateLimited),
        Some(Outcome::NotFound),
        Some(Outcome::UsageExceeded),
    ];
    let statuses = [200, 204, 301, 399, 400, 429, 500, 503, 199];
    let events: Vec<UsageEvent> = (0..600u32)
        .map(|i| UsageEvent {
            request_id: format!("req-{i}").into(),
            key_id: (i % 7 != 0).then(|| keys[i as usize % keys.len()]),
            owner_id: None,
            ts: t0 + TimeDelta::milliseconds(i64::from(i) * 37),
            provider: None,
            route: None,
            method: None,
            status: statuses[i as usize % statuses.len()],
            latency_us: u64::from(i % 50) * u64::from(i % 13) * 997,
            outcome: outcomes[i as usize % outcomes.len()],
            cost: 0,
        })
        .collect();
    s.write(&events).await.unwrap();
    memory.write(&events).await.unwrap();

    let (from, to) = (t0 + TimeDelta::seconds(2), t0 + TimeDelta::seconds(17));
    let got = s.key_windows(from, to, None).await.unwrap();
    assert_eq!(got, memory.key_windows(from, to, None).await.unwrap());
    assert_eq!(got.len(), keys.len());
    assert!(got.values().all(|w| w.errors > 0 && !w.rejected.is_empty()));
    let one = s.key_windows(from, to, Some(keys[1])).await.unwrap();
    assert_eq!(
        one,
        memory.key_windows(from, to, Some(keys[1])).await.unwrap()
    );
    assert_eq!(one.keys().collect::<Vec<_>>(), [&keys[1]]);
    assert!(
        s.key_windows(from, to, Some(KeyId::new()))
            .await
            .unwrap()
            .is_empty()
    );

    let seconds = s.per_second(from, to).await.unwrap();
    assert_eq!(seconds, memory.per_second(from, to).await.unwrap());
    assert_eq!(seconds.len(), 15);
    assert_eq!(seconds.keys().next(), Some(&(t0.timestamp() + 2)));
    assert!(s.per_second(to, to).await.unwrap().is_empty());
}
