//! Server time of every dashboard page and JSON endpoint over many keys and usage events:
//! the real router (sessions, CSRF, templates, stores) answering a signed-in admin, timed
//! from request to the last byte of the body, p50 and p95 over repeated requests; beside it,
//! the same run's `GET /healthz` as the floor of the router itself.
//!
//! ```sh
//! cargo bench -p keyvault-admin --bench dashboard                 # SQLite
//! DATABASE_URL=postgres://…/kv_bench cargo bench -p keyvault-admin --bench dashboard
//! ```
//!
//! `KV_BENCH_KEYS` (default 100 000) keys are made through the library; `KV_BENCH_EVENTS`
//! (default 10 000 000) usage events over the last 30 days are written through the backend's
//! real usage sink (rollups included), in batches of 10 000. PostgreSQL runs empty the
//! database's keyvault tables first: point it at a database kept for benchmarks. Run as a
//! test (no `--bench` argument) it makes one quick pass over small data. `KV_BENCH_REUSE=1`
//! measures what an earlier PostgreSQL run left there instead (after this build's migrations).
#![allow(clippy::print_stdout, clippy::unwrap_used, missing_docs)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use chrono::{TimeDelta, Utc};
use common::{Server, Settings};
use keyvault_admin::Role;
use keyvault_core::{Actor, KeyId, NewKey, Outcome, UsageEvent, UsageSink};

fn full() -> bool {
    std::env::args().any(|a| a == "--bench")
}

fn env_usize(name: &str, default: usize, smoke: usize) -> usize {
    if !full() {
        return smoke;
    }
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn events(from: usize, n: usize, total: usize, keys: &[KeyId]) -> Vec<UsageEvent> {
    let now = Utc::now();
    let span = TimeDelta::days(30).num_milliseconds() as usize;
    let providers = ["openai", "anthropic", "mistral", "gemini"];
    (from..from + n)
        .map(|i| {
            let x = (i.wrapping_mul(2_654_435_761) % 1_000) as u64;
            // Most calls on few keys, as real traffic goes.
            let key = keys[(x as usize * x as usize) % keys.len().min(5_000)];
            UsageEvent {
                request_id: format!("dash-{i:010}").into(),
                key_id: Some(key),
                owner_id: None,
                ts: now - TimeDelta::milliseconds(((total - i) * span / total) as i64),
                provider: Some(providers[i % 4].into()),
                route: Some("/v1/chat/completions".into()),
                method: Some("POST".into()),
                status: if x < 50 { 503 } else { 200 },
                latency_us: 1_000 + x * x * 400 / 1_000,
                outcome: Some(Outcome::Valid),
                cost: 1,
            }
        })
        .collect()
}

/// Makes `n_keys` keys through the library and writes `n_events` events through the
/// backend's usage sink; returns the keys, oldest first.
async fn populate(
    s: &Server,
    settings: &Settings,
    n_keys: usize,
    n_events: usize,
    backend: &str,
) -> Vec<KeyId> {
    let started = Instant::now();
    let kv = s.app.keyvault();
    let mut keys = Vec::with_capacity(n_keys);
    for i in 0..n_keys {
        let mut new = NewKey::new(format!("service {i:06}"));
        new.owner_id = Some(format!("team-{}", i % 500));
        if i % 100 == 0 {
            new.expires_at = Some(Utc::now() + TimeDelta::days(3));
        }
        keys.push(
            kv.create_key(new, &Actor::library())
                .await
                .unwrap()
                .record
                .id,
        );
    }
    let keys_took = started.elapsed();
    let sink = sink(settings).await;
    let started = Instant::now();
    let batch = 10_000.min(n_events);
    let mut written = 0;
    while written < n_events {
        let n = batch.min(n_events - written);
        sink.write(&events(written, n, n_events, &keys))
            .await
            .unwrap();
        written += n;
    }
    let events_took = started.elapsed();
    println!(
        "dashboard on {backend}: {n_keys} keys (made in {:.0} s), {n_events} events over 30 days \
         (written in {:.0} s)",
        keys_took.as_secs_f64(),
        events_took.as_secs_f64()
    );

    keys
}

/// The keys an earlier run left in the PostgreSQL database at `url`, oldest first.
async fn stored_keys(url: &str) -> Vec<KeyId> {
    let pool = sqlx::PgPool::connect(url).await.unwrap();
    let ids: Vec<(uuid::Uuid,)> = sqlx::query_as("SELECT id FROM kv_keys ORDER BY id")
        .fetch_all(&pool)
        .await
        .unwrap();
    ids.into_iter().map(|(id,)| KeyId::from_uuid(id)).collect()
}

async fn sink(settings: &Settings) -> Box<dyn UsageSink> {
    let url = &settings.database_url;
    if url.starts_with("postgres") {
        Box::new(keyvault::postgres::PgStore::connect(url).await.unwrap())
    } else {
        Box::new(keyvault::sqlite::SqliteStore::connect(url).await.unwrap())
    }
}

/// Empties the keyvault tables of the database at `url`; with `keep_usage`, all but the keys,
/// their credits and audit, and the usage (accounts, sessions and alerts go).
async fn reset_postgres(url: &str, keep_usage: bool) {
    let pool = sqlx::PgPool::connect(url).await.unwrap();
    let tables: Vec<(String,)> = sqlx::query_as(
        "SELECT tablename::text FROM pg_tables WHERE schemaname = current_schema() \
         AND tablename LIKE 'kv\\_%' AND tablename <> 'kv_schema_migrations'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let kept = ["kv_keys", "kv_credits", "kv_audit", "kv_audit_head"];
    for (t,) in tables {
        if keep_usage && (kept.contains(&t.as_str()) || t.starts_with("kv_usage")) {
            continue;
        }
        sqlx::query(sqlx::AssertSqlSafe(format!("TRUNCATE {t} CASCADE")))
            .execute(&pool)
            .await
            .unwrap();
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1_000.0
}

fn main() {
    // Test runners list a binary's tests first: this one has none to name.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run());
}

async fn run() {
    let n_keys = env_usize("KV_BENCH_KEYS", 100_000, 200);
    let n_events = env_usize("KV_BENCH_EVENTS", 10_000_000, 20_000);
    let rounds = env_usize("KV_BENCH_ROUNDS", 30, 3);
    let dir = tempfile::tempdir().unwrap();
    // `KV_BENCH_REUSE=1` on PostgreSQL: measure the keys and events an earlier run left
    // (they age from that run's time), after the migrations this build adds.
    let reuse = full() && std::env::var("KV_BENCH_REUSE").is_ok_and(|v| v == "1");
    let settings = match std::env::var("DATABASE_URL") {
        Ok(url) if full() && url.starts_with("postgres") => {
            reset_postgres(&url, reuse).await;
            Settings {
                database_url: url,
                ..Settings::sqlite(dir.path())
            }
        }
        _ => Settings::sqlite(dir.path()),
    };
    let backend = settings.database_url.split(':').next().unwrap().to_owned();
    let s = Server::start(&settings).await;
    let reused = if reuse {
        stored_keys(&settings.database_url).await
    } else {
        Vec::new()
    };
    let keys = if reused.is_empty() {
        populate(&s, &settings, n_keys, n_events, &backend).await
    } else {
        println!(
            "dashboard on {backend}: the {} keys and their events of an earlier run",
            reused.len()
        );
        reused
    };

    s.app
        .create_admin(
            "bench",
            Role::Admin,
            "correct horse battery".into(),
            &Actor::library(),
        )
        .await
        .unwrap();
    let session = s.session("bench", "correct horse battery").await;
    let hot = keys[0];
    let pages = [
        ("GET /healthz (floor)", "/healthz".to_owned()),
        ("overview, 24 h", "/admin".to_owned()),
        ("overview, 30 d", "/admin?range=30d".to_owned()),
        (
            "overview JSON, 1 h",
            "/admin/api/overview?range=1h".to_owned(),
        ),
        (
            "overview JSON, 24 h",
            "/admin/api/overview?range=24h".to_owned(),
        ),
        (
            "overview JSON, 7 d",
            "/admin/api/overview?range=7d".to_owned(),
        ),
        (
            "overview JSON, 30 d",
            "/admin/api/overview?range=30d".to_owned(),
        ),
        ("keys, first page", "/admin/keys".to_owned()),
        ("keys, search", "/admin/keys?q=service+0421".to_owned()),
        ("keys, owner filter", "/admin/keys?owner=team-7".to_owned()),
        (
            "keys, disabled only",
            "/admin/keys?state=disabled".to_owned(),
        ),
        ("key detail (busiest key)", format!("/admin/keys/{hot}")),
        (
            "key JSON, 30 d (busiest)",
            format!("/admin/api/overview?key={hot}&range=30d"),
        ),
        ("key edit form", format!("/admin/keys/{hot}/edit")),
        ("new key form", "/admin/keys/new".to_owned()),
        ("audit, first page", "/admin/audit".to_owned()),
        (
            "audit, one action",
            "/admin/audit?action=user.create".to_owned(),
        ),
        ("tokens", "/admin/tokens".to_owned()),
        ("users", "/admin/users".to_owned()),
    ];
    println!(
        "{:<28} {:>9} {:>9} {:>8}",
        "page", "p50 ms", "p95 ms", "status"
    );
    for (name, path) in &pages {
        let mut times = Vec::with_capacity(rounds);
        let mut status = 0;
        for _ in 0..rounds {
            let t = Instant::now();
            let r = session.req("GET", path).send().await;
            times.push(t.elapsed());
            status = r.status;
        }
        assert_eq!(status, 200, "{path}");
        times.sort();
        println!(
            "{name:<28} {:>9.2} {:>9.2} {status:>8}",
            percentile(&times, 0.5),
            percentile(&times, 0.95)
        );
    }
    alerts(&s, &keys, rounds.min(10)).await;
}

/// One evaluation of 1,000 alert rules (125 of each kind, half on every key, half on one key
/// each) over the same keys and events, timed `rounds` times after a first that opens the
/// alerts (the first is printed apart: it writes every new alert).
async fn alerts(s: &Server, keys: &[KeyId], rounds: usize) {
    let kinds = [
        ("credits_low", serde_json::json!({"below": 5})),
        ("expiring", serde_json::json!({"within": "7d"})),
        (
            "error_rate",
            serde_json::json!({"above": 0.5, "window": "5m", "min_calls": 20}),
        ),
        (
            "latency_p95",
            serde_json::json!({"above_ms": 1000, "window": "5m", "min_calls": 20}),
        ),
        (
            "traffic_spike",
            serde_json::json!({"factor": 3, "window": "5m", "min_calls": 50}),
        ),
        (
            "rejections",
            serde_json::json!({"codes": ["RATE_LIMITED"], "above": 100, "window": "5m"}),
        ),
        (
            "invalid_keys",
            serde_json::json!({"above": 50, "window": "5m"}),
        ),
        ("new_network", serde_json::json!({})),
    ];
    let actor = Actor::library();
    for (k, (kind, params)) in kinds.iter().enumerate() {
        for i in 0..125 {
            let key_id =
                (i % 2 == 1 && *kind != "invalid_keys").then(|| keys[(k * 125 + i) % keys.len()]);
            let rule = keyvault_admin::NewRule {
                name: format!("{kind} {i}"),
                kind: (*kind).to_owned(),
                params: params.clone(),
                key_id,
                owner_id: None,
                enabled: true,
            };
            s.app.create_alert_rule(rule, &actor).await.unwrap();
        }
    }
    let interval = Duration::from_secs(30);
    let t = Instant::now();
    let first = s.app.evaluate_alerts(Utc::now(), interval).await.unwrap();
    println!(
        "alert evaluation, 1,000 rules: first {:.0} ms ({} alerts opened)",
        t.elapsed().as_secs_f64() * 1_000.0,
        first.fired.len()
    );
    let mut times = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        s.app.evaluate_alerts(Utc::now(), interval).await.unwrap();
        times.push(t.elapsed());
    }
    times.sort();
    println!(
        "alert evaluation, 1,000 rules: p50 {:.0} ms, p95 {:.0} ms over {rounds} runs",
        percentile(&times, 0.5),
        percentile(&times, 0.95)
    );
}
