//! The jobs of `serve` (CONTRACT §8) with a one-second interval: automatic rotation handed to
//! the holder of the old key, once, and never stored in plaintext; ending a grace early;
//! clean-up of expired keys and usage retention, removing exactly what they should.

mod common;

use std::time::Duration;

use chrono::{DurationRound, TimeDelta, Utc};
use common::{PgDb, Server, Settings, eventually};
use keyvault_core::{Actor, UsageEvent};
use serde_json::{Value, json};

async fn key(s: &Server, token: &str, body: Value) -> (String, String) {
    let r = s
        .req("POST", "/v1/keys")
        .token(token)
        .json(&body)
        .send()
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let v = r.json();
    (
        v["id"].as_str().unwrap().to_owned(),
        v["key"].as_str().unwrap().to_owned(),
    )
}

async fn show(s: &Server, token: &str, id: &str) -> Value {
    let r = s
        .req("GET", &format!("/v1/keys/{id}"))
        .token(token)
        .send()
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

async fn verify(s: &Server, token: &str, key: &str) -> String {
    let r = s
        .req("POST", "/v1/keys/verify")
        .token(token)
        .json(&json!({ "key": key }))
        .send()
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["code"].as_str().unwrap().to_owned()
}

async fn claim(s: &Server, old_key: Option<&str>) -> common::Resp {
    let mut r = s.req("POST", "/v1/keys/successor");
    if let Some(k) = old_key {
        r = r.header("authorization", &format!("Bearer {k}"));
    }
    r.send().await
}

fn jobs_every_second(mut settings: Settings) -> Settings {
    settings.job_interval = Some("1s".into());
    settings
}

/// Every byte of the SQLite database (and its write-ahead log) as text, lossily.
fn sqlite_bytes(dir: &std::path::Path) -> String {
    let mut all = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.to_string_lossy().contains("keyvault.db") {
            all.extend(std::fs::read(&path).unwrap_or_default());
        }
    }
    String::from_utf8_lossy(&all).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_rotates_a_due_key_once_and_hands_the_successor_to_the_old_key_only() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&jobs_every_second(Settings::sqlite(dir.path()))).await;
    let admin = s.token("admin").await;
    let verifier = s.token("verifier").await;
    let (old_id, old_key) = key(
        &s,
        &admin,
        json!({"name": "rotating", "rotation": {"every": "1s", "grace": "1h"},
               "ratelimits": [{"name": "m", "limit": 100, "period_ms": 60000}]}),
    )
    .await;
    let (_, bystander) = key(&s, &admin, json!({"name": "bystander"})).await;
    // Nothing to claim before the rotation.
    claim(&s, Some(&old_key)).await.problem(404, "not_found");

    let rotated = eventually(Duration::from_secs(5), async || {
        show(&s, &admin, &old_id).await["superseded_by"].is_string()
    })
    .await;
    assert!(rotated.is_some(), "not rotated within 5 s");
    let old = show(&s, &admin, &old_id).await;
    assert_eq!(old["successor"], "sealed");
    assert_eq!(old["ratelimits"][0]["fail_mode"], "local");
    let new_id = old["superseded_by"].as_str().unwrap().to_owned();

    // Without a key, with a key that has no successor, with garbage: refused.
    claim(&s, None).await.problem(401, "unauthorized");
    claim(&s, Some(&bystander)).await.problem(404, "not_found");
    claim(&s, Some("kv_not-a-key"))
        .await
        .problem(404, "not_found");
    // An API token is not the old key.
    claim(&s, Some(&admin)).await.problem(404, "not_found");

    let r = claim(&s, Some(&old_key)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let got = r.json();
    assert_eq!(got["id"], new_id.as_str());
    let new_key = got["key"].as_str().unwrap().to_owned();
    assert_ne!(new_key, old_key);
    assert!(got["old_key_expires_at"].is_string());
    // The successor verifies, the old key too (its grace), and the claim is once only.
    assert_eq!(verify(&s, &verifier, &new_key).await, "VALID");
    assert_eq!(verify(&s, &verifier, &old_key).await, "VALID");
    claim(&s, Some(&old_key))
        .await
        .problem(410, "successor_claimed");
    assert_eq!(show(&s, &admin, &old_id).await["successor"], "claimed");

    // Rotated once: one successor of the old key, one automatic rotation audited for it.
    let children: Vec<Value> = s
        .req("GET", "/v1/keys?limit=100")
        .token(&admin)
        .send()
        .await
        .json()["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["rotated_from"] == old_id.as_str())
        .cloned()
        .collect();
    assert_eq!(children.len(), 1, "{children:?}");
    let audit = s
        .req("GET", "/v1/audit?action=key.rotate_auto&limit=100")
        .token(&admin)
        .send()
        .await;
    assert_eq!(audit.status, 200, "{}", audit.text());
    let for_old = audit.json()["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["target_id"] == old_id.as_str())
        .count();
    assert_eq!(for_old, 1);

    // Neither key is anywhere in the database, in plaintext.
    s.admin.shutdown().await;
    let bytes = sqlite_bytes(dir.path());
    assert!(!bytes.is_empty());
    assert!(
        !bytes.contains(&new_key),
        "the successor is in the database"
    );
    assert!(!bytes.contains(&old_key));
    // Nor in the log.
    assert!(!common::logs().contains(&new_key));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_handed_out_by_rotate_due_are_not_claimable_and_off_leaves_rotation_alone() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = jobs_every_second(Settings::sqlite(dir.path()));
    settings.auto_rotate = Some("off".into());
    let s = Server::start(&settings).await;
    let admin = s.token("admin").await;
    let (id, old_key) = key(
        &s,
        &admin,
        json!({"name": "cron", "rotation": {"every": "1s", "grace": "1h"}}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert!(
        show(&s, &admin, &id).await["superseded_by"].is_null(),
        "KEYVAULT_AUTO_ROTATE=off: serve rotated"
    );
    let handed = s
        .app
        .keyvault()
        .rotate_due(&Actor::library())
        .await
        .unwrap();
    assert_eq!(handed.len(), 1);
    assert!(show(&s, &admin, &id).await["successor"].is_null());
    claim(&s, Some(&old_key)).await.problem(404, "not_found");
    s.admin.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_grace_makes_the_old_key_expired_at_once_and_needs_an_operator() {
    let s = Server::sqlite().await;
    let admin = s.token("admin").await;
    let viewer = s.token("viewer").await;
    let verifier = s.token("verifier").await;
    let (id, old_key) = key(&s, &admin, json!({"name": "moving"})).await;
    let r = s
        .req("POST", &format!("/v1/keys/{id}/end-grace"))
        .token(&admin)
        .send()
        .await;
    r.problem(409, "conflict");
    let r = s
        .req("POST", &format!("/v1/keys/{id}/rotate"))
        .token(&admin)
        .json(&json!({"grace_seconds": 3600}))
        .send()
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let new_key = r.json()["key"].as_str().unwrap().to_owned();
    assert_eq!(verify(&s, &verifier, &old_key).await, "VALID");
    s.req("POST", &format!("/v1/keys/{id}/end-grace"))
        .token(&viewer)
        .send()
        .await
        .problem(403, "forbidden");
    s.req(
        "POST",
        "/v1/keys/0190d9a8-0000-7000-8000-000000000000/end-grace",
    )
    .token(&admin)
    .send()
    .await
    .problem(404, "not_found");
    let r = s
        .req("POST", &format!("/v1/keys/{id}/end-grace"))
        .token(&admin)
        .send()
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let ended = r.json();
    assert!(
        chrono::DateTime::parse_from_rfc3339(ended["grace_until"].as_str().unwrap()).unwrap()
            <= Utc::now()
    );
    let expired = eventually(Duration::from_secs(1), async || {
        verify(&s, &verifier, &old_key).await == "EXPIRED"
    })
    .await;
    assert!(expired.is_some(), "the old key still verifies after 1 s");
    assert_eq!(verify(&s, &verifier, &new_key).await, "VALID");
    // Once over, the grace cannot be ended again.
    s.req("POST", &format!("/v1/keys/{id}/end-grace"))
        .token(&admin)
        .send()
        .await
        .problem(409, "conflict");
    let audit = s
        .req("GET", "/v1/audit?action=key.end_grace")
        .token(&admin)
        .send()
        .await
        .json();
    let outcomes: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["outcome"].as_str().unwrap())
        .collect();
    assert!(outcomes.contains(&"success"), "{audit}");
    assert!(outcomes.contains(&"refused"), "{audit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_removes_only_keys_expired_for_longer_than_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = jobs_every_second(Settings::sqlite(dir.path()));
    settings.cleanup_after = Some("1s".into());
    let s = Server::start(&settings).await;
    let admin = s.token("admin").await;
    let soon = (Utc::now() + TimeDelta::milliseconds(1_500)).to_rfc3339();
    let later = (Utc::now() + TimeDelta::hours(1)).to_rfc3339();
    let (gone, _) = key(&s, &admin, json!({"name": "soon", "expires_at": soon})).await;
    let (stays, _) = key(&s, &admin, json!({"name": "later", "expires_at": later})).await;
    let (forever, _) = key(&s, &admin, json!({"name": "forever"})).await;
    let (disabled, _) = key(&s, &admin, json!({"name": "off", "enabled": false})).await;
    let deleted = eventually(Duration::from_secs(6), async || {
        s.req("GET", &format!("/v1/keys/{gone}"))
            .token(&admin)
            .send()
            .await
            .status
            == 404
    })
    .await;
    assert!(deleted.is_some(), "the expired key was not cleaned up");
    for id in [&stays, &forever, &disabled] {
        show(&s, &admin, id).await;
    }
    let audit = s
        .req("GET", "/v1/audit?action=key.cleanup")
        .token(&admin)
        .send()
        .await
        .json();
    let items = audit["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{audit}");
    assert_eq!(items[0]["target_id"], gone.as_str());
    s.admin.shutdown().await;
}

fn event(key_id: &str, at: chrono::DateTime<Utc>, n: usize) -> UsageEvent {
    UsageEvent {
        request_id: format!("{key_id}-{}-{n}", at.timestamp_micros()).into(),
        key_id: Some(key_id.parse().unwrap()),
        owner_id: None,
        ts: at,
        provider: Some("openai".into()),
        route: None,
        method: None,
        status: 200,
        latency_us: 1_000,
        outcome: None,
        cost: 1,
    }
}

async fn calls(
    s: &Server,
    token: &str,
    from: chrono::DateTime<Utc>,
    to: chrono::DateTime<Utc>,
) -> u64 {
    calls_by(s, token, from, to, "").await
}

/// The calls of `[from, to)`, counted over a series of this granularity (an hourly series
/// reads the hourly rollups; empty: the default).
async fn calls_by(
    s: &Server,
    token: &str,
    from: chrono::DateTime<Utc>,
    to: chrono::DateTime<Utc>,
    granularity: &str,
) -> u64 {
    let granularity = if granularity.is_empty() {
        String::new()
    } else {
        format!("granularity={granularity}&")
    };
    let q = format!(
        "/v1/stats/overview?{granularity}from={}&to={}",
        from.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        to.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    let r = s.req("GET", &q).token(token).send().await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["calls"].as_u64().unwrap()
}

/// Old usage goes (raw events and minutes), recent usage and the hourly rollups stay. With
/// `by_hand`, the server's own job is off and the purge is made here, so that the old minutes
/// are first seen to be there.
async fn retention_keeps_hours_and_recent_usage(s: &Server, by_hand: bool) {
    let admin = s.token("admin").await;
    let (id, _) = key(s, &admin, json!({"name": "used"})).await;
    let now = Utc::now();
    let old_hour = (now - TimeDelta::days(100))
        .duration_trunc(TimeDelta::hours(1))
        .unwrap();
    let rec = s.admin.usage_recorder();
    let mut events = Vec::new();
    for n in 0..30 {
        events.push(event(&id, old_hour + TimeDelta::minutes(n as i64 + 1), n));
    }
    for n in 0..5 {
        events.push(event(&id, now - TimeDelta::minutes(10), 100 + n));
    }
    for e in events {
        assert!(rec.record(e));
    }
    let stored = eventually(Duration::from_secs(10), async || {
        calls(
            s,
            &admin,
            now - TimeDelta::days(101),
            now + TimeDelta::minutes(1),
        )
        .await
            >= 35
    })
    .await;
    assert!(stored.is_some());
    let hour = (old_hour, old_hour + TimeDelta::hours(1));
    assert_eq!(calls_by(s, &admin, hour.0, hour.1, "hour").await, 30);
    // A window inside the old hour reads minutes and raw events: gone once purged.
    let inner = (
        old_hour + TimeDelta::minutes(1),
        old_hour + TimeDelta::minutes(11),
    );
    if by_hand {
        assert_eq!(calls(s, &admin, inner.0, inner.1).await, 10);
        let purged = s
            .app
            .purge_usage(Duration::from_secs(90 * 86_400))
            .await
            .unwrap();
        assert_eq!(purged.events, 30, "{purged:?}");
        assert!(purged.minute_rollups >= 30, "{purged:?}");
    }
    let purged = eventually(Duration::from_secs(6), async || {
        calls(s, &admin, inner.0, inner.1).await == 0
    })
    .await;
    assert!(purged.is_some(), "old usage still there");
    assert_eq!(
        calls_by(s, &admin, hour.0, hour.1, "hour").await,
        30,
        "hourly rollups stay"
    );
    let recent = (now - TimeDelta::hours(1), now + TimeDelta::minutes(1));
    assert_eq!(
        calls(s, &admin, recent.0, recent.1).await,
        5,
        "recent usage stays"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_on_sqlite_removes_old_events_and_minutes_only() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = jobs_every_second(Settings::sqlite(dir.path()));
    settings.usage_retention = Some("off".into());
    let s = Server::start(&settings).await;
    retention_keeps_hours_and_recent_usage(&s, true).await;
    s.admin.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_on_postgres_removes_old_events_and_minutes_only() {
    let db = PgDb::create();
    let s = Server::start(&jobs_every_second(Settings::postgres(&db))).await;
    retention_keeps_hours_and_recent_usage(&s, false).await;
    s.admin.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_one_postgres_rotate_each_due_key_once() {
    let db = PgDb::create();
    let settings = jobs_every_second(Settings::postgres(&db));
    let a = Server::start(&settings).await;
    let b = Server::start(&settings).await;
    let admin = a.token("admin").await;
    let mut olds = Vec::new();
    for n in 0..5 {
        olds.push(
            key(
                &a,
                &admin,
                json!({"name": format!("k{n}"), "rotation": {"every": "1s", "grace": "1h"}}),
            )
            .await,
        );
    }
    // Both run the jobs every second, as fast as they can be made to race: run them by hand
    // too, on both at once.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let (ra, rb) = tokio::join!(a.admin.run_jobs(), b.admin.run_jobs());
    let _ = (ra, rb);
    let done = eventually(Duration::from_secs(5), async || {
        let mut all = true;
        for (id, _) in &olds {
            all &= show(&b, &admin, id).await["superseded_by"].is_string();
        }
        all
    })
    .await;
    assert!(done.is_some());
    let keys: Vec<Value> = a
        .req("GET", "/v1/keys?limit=100")
        .token(&admin)
        .send()
        .await
        .json()["items"]
        .as_array()
        .unwrap()
        .clone();
    for (id, old_key) in &olds {
        let children = keys
            .iter()
            .filter(|k| k["rotated_from"] == id.as_str())
            .count();
        assert_eq!(children, 1, "key {id} rotated {children} times");
        // Claimed on the other instance, once.
        let r = claim(&b, Some(old_key)).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let new_key = r.json()["key"].as_str().unwrap().to_owned();
        claim(&a, Some(old_key))
            .await
            .problem(410, "successor_claimed");
        assert!(
            !pg_dump(&db.url).contains(&new_key),
            "the successor is in pg_dump"
        );
    }
    // Ending a grace on one instance: the old key is EXPIRED on the other within 1 s.
    let verifier = a.token("verifier").await;
    let (id, old_key) = &olds[0];
    assert_eq!(verify(&b, &verifier, old_key).await, "VALID");
    let r = a
        .req("POST", &format!("/v1/keys/{id}/end-grace"))
        .token(&admin)
        .send()
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let expired = eventually(Duration::from_secs(1), async || {
        verify(&b, &verifier, old_key).await == "EXPIRED"
    })
    .await;
    assert!(
        expired.is_some(),
        "instance b still admits the old key after 1 s"
    );
    a.admin.shutdown().await;
    b.admin.shutdown().await;
}

/// The database as `pg_dump` writes it.
fn pg_dump(url: &str) -> String {
    let bin = std::fs::read_dir("/usr/lib/postgresql")
        .ok()
        .and_then(|mut d| d.next())
        .and_then(|e| e.ok())
        .map(|e| e.path().join("bin/pg_dump"))
        .filter(|p| p.exists())
        .unwrap_or_else(|| "pg_dump".into());
    let out = std::process::Command::new(bin)
        .arg("--data-only")
        .arg(url)
        .output()
        .expect("pg_dump runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("kv_keys"), "an empty dump");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_fail_modes_are_returned_patched_and_checked() {
    let s = Server::sqlite().await;
    let admin = s.token("admin").await;
    let (id, _) = key(
        &s,
        &admin,
        json!({"name": "modes", "ratelimits": [
            {"name": "a", "limit": 5, "period_ms": 1000, "fail_mode": "closed"},
            {"name": "b", "limit": 5, "period_ms": 1000}]}),
    )
    .await;
    let k = show(&s, &admin, &id).await;
    assert_eq!(k["ratelimits"][0]["fail_mode"], "closed");
    assert_eq!(k["ratelimits"][1]["fail_mode"], "local");
    let r = s
        .req("PATCH", &format!("/v1/keys/{id}"))
        .token(&admin)
        .json(&json!({"ratelimits": [{"name": "a", "limit": 5, "period_ms": 1000, "fail_mode": "open"}]}))
        .send()
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["ratelimits"][0]["fail_mode"], "open");
    let bad = s
        .req("PATCH", &format!("/v1/keys/{id}"))
        .token(&admin)
        .json(&json!({"ratelimits": [{"name": "a", "limit": 5, "period_ms": 1000, "fail_mode": "sometimes"}]}))
        .send()
        .await;
    let p = bad.problem(400, "invalid_field");
    assert_eq!(p["field"], "ratelimits[0].fail_mode", "{p}");
    assert_eq!(
        show(&s, &admin, &id).await["ratelimits"][0]["fail_mode"],
        "open"
    );
}
