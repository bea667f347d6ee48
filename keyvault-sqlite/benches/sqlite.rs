//! keyvault-sqlite figures, the same as keyvault-postgres's: usage ingest through the real
//! recorder and sink against a plain multi-row INSERT of the same rows, statistics over ~10
//! million events (rollups), key lookup by digest.
//!
//! ```sh
//! cargo bench -p keyvault-sqlite --bench sqlite
//! ```
//!
//! It works on a fresh database file in a temporary directory (removed at the end).
//! `KV_BENCH_EVENTS` sets the ingest size (default 200 000), `KV_BENCH_KEYS` the number of
//! stored keys (default 100 000). Run as a test (`cargo test --all-targets`, no `--bench`
//! argument) it makes one quick pass over small data, so its assertions still run; asked to
//! `--list` its tests (as test runners do) it names none.
#![allow(clippy::print_stdout, clippy::unwrap_used, missing_docs)]

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use keyvault_core::{
    ALL_KEYS_ROLLUP, KeyHasher, KeyId, KeyStore, LatencyHistogram, Outcome, RecorderConfig,
    StatsQuery, UsageEvent, UsageQuery, UsageRecorder,
};
use keyvault_sqlite::SqliteStore;
use sqlx::{AssertSqlSafe, QueryBuilder, Sqlite, SqlitePool};

/// Whether this is a real benchmark run (`cargo bench` passes `--bench`) or a smoke test.
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

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1_000.0
}

fn events(n: usize, keys: &[KeyId], now: DateTime<Utc>) -> Vec<UsageEvent> {
    let providers = ["openai", "anthropic", "mistral"];
    (0..n)
        .map(|i| {
            // A skewed latency spread (1–400 ms) and about 5 % errors.
            let x = (i.wrapping_mul(2_654_435_761) % 1_000) as u64;
            UsageEvent {
                request_id: format!("bench-{i:09}").into(),
                key_id: Some(keys[i % keys.len()]),
                owner_id: Some(format!("owner-{}", i % 10)),
                ts: now - TimeDelta::milliseconds((n - i) as i64 / 4),
                provider: Some(providers[i % 3].into()),
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

async fn reset_usage(pool: &SqlitePool) {
    sqlx::query(
        "DELETE FROM kv_usage_events; DELETE FROM kv_usage_rollup; \
         DELETE FROM kv_usage_rollup_hour; DELETE FROM kv_usage_rollup_day; \
         DELETE FROM bench_events",
    )
    .execute(pool)
    .await
    .unwrap();
}

/// The baseline: the same rows as multi-row INSERTs (1,000 a statement, one transaction per
/// batch of the recorder's default size) into a table without rollups or ids to check.
async fn plain_insert_once(pool: &SqlitePool, events: &[UsageEvent]) -> Duration {
    reset_usage(pool).await;
    let start = Instant::now();
    for batch in events.chunks(RecorderConfig::default().batch_size) {
        let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
        for chunk in batch.chunks(1_000) {
            let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(
                "INSERT INTO bench_events (request_id, key_id, owner_id, ts, provider, route, \
                 method, status, latency_us, outcome, cost) ",
            );
            qb.push_values(chunk, |mut b, e| {
                b.push_bind(e.request_id.to_string())
                    .push_bind(e.key_id.map(|k| k.to_string()))
                    .push_bind(e.owner_id.clone())
                    .push_bind(e.ts.timestamp_micros())
                    .push_bind(e.provider.as_deref().map(str::to_owned))
                    .push_bind(e.route.as_deref().map(str::to_owned))
                    .push_bind(e.method.as_deref().map(str::to_owned))
                    .push_bind(i64::from(e.status))
                    .push_bind(e.latency_us as i64)
                    .push_bind(e.outcome.map(|o| o.as_str()))
                    .push_bind(e.cost as i64);
            });
            qb.build().execute(&mut *tx).await.unwrap();
        }
        tx.commit().await.unwrap();
    }
    start.elapsed()
}

async fn recorder_once(store: &SqliteStore, events: &[UsageEvent]) -> Duration {
    reset_usage(store.pool()).await;
    let config = RecorderConfig {
        capacity: events.len(),
        ..RecorderConfig::default()
    };
    let start = Instant::now();
    let recorder = UsageRecorder::spawn(Arc::new(store.clone()), config);
    for e in events {
        assert!(recorder.record(e.clone()));
    }
    recorder.shutdown().await;
    let took = start.elapsed();
    let stats = recorder.stats();
    assert_eq!((stats.written, stats.failed), (events.len() as u64, 0));
    for table in [
        "kv_usage_rollup",
        "kv_usage_rollup_hour",
        "kv_usage_rollup_day",
    ] {
        let counted: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT sum(calls) FROM {table} WHERE key_id = ?1"
        )))
        .bind(ALL_KEYS_ROLLUP.to_string())
        .fetch_one(store.pool())
        .await
        .unwrap();
        assert_eq!(counted as usize, events.len(), "{table}");
    }
    took
}

async fn ingest(store: &SqliteStore, keys: &[KeyId]) {
    let n = env_usize("KV_BENCH_EVENTS", 200_000, 4_000);
    let evs = events(n, keys, Utc::now());
    let (mut best_plain, mut best_rec) = (Duration::MAX, Duration::MAX);
    let rounds = if full() { 3 } else { 1 };
    for _ in 0..rounds {
        best_plain = best_plain.min(plain_insert_once(store.pool(), &evs).await);
        best_rec = best_rec.min(recorder_once(store, &evs).await);
    }
    let rate = |d: Duration| n as f64 / d.as_secs_f64();
    println!(
        "usage ingest, {n} events over {} keys (best of {rounds})",
        keys.len()
    );
    println!(
        "  plain multi-row INSERT, no rollups:          {:>9.0} events/s ({:.2} s)",
        rate(best_plain),
        best_plain.as_secs_f64()
    );
    println!(
        "  UsageRecorder + SqliteStore (events+rollups): {:>9.0} events/s ({:.2} s)",
        rate(best_rec),
        best_rec.as_secs_f64()
    );
    println!(
        "  ratio: {:.2}",
        best_plain.as_secs_f64() / best_rec.as_secs_f64()
    );
}

/// The histogram of one rollup cell: buckets 30+m%7 … 50+m%7, each with (1 + (m+b)%3)·mult
/// calls (the same cells keyvault-postgres's bench writes).
fn cell(m: i64, mult: u64) -> LatencyHistogram {
    let mut h = LatencyHistogram::default();
    for b in (30 + m % 7)..=(50 + m % 7) {
        h.add(b as u16, (1 + ((m + b) % 3) as u64) * mult);
    }
    h
}

/// A histogram as the rollups store it: a JSON object of bucket → count.
fn json(h: &LatencyHistogram) -> String {
    let map: serde_json::Map<String, serde_json::Value> = h
        .buckets()
        .map(|(b, c)| (b.to_string(), c.into()))
        .collect();
    serde_json::Value::Object(map).to_string()
}

/// Writes one rollup row of every provider and status class for `key` at `at`.
async fn rollup_cells(
    tx: &mut sqlx::SqliteConnection,
    table: &str,
    time: &str,
    key: &str,
    at: i64,
    h: &LatencyHistogram,
) {
    let hist = json(h);
    for p in ["openai", "anthropic", "mistral"] {
        for c in [2i64, 4, 5] {
            sqlx::query(AssertSqlSafe(format!(
                "INSERT INTO {table} (key_id, {time}, provider_set, provider, status_class, \
                 calls, hist) VALUES (?1, ?2, 1, ?3, ?4, ?5, ?6)"
            )))
            .bind(key)
            .bind(at)
            .bind(p)
            .bind(c)
            .bind(h.total() as i64)
            .bind(&hist)
            .execute(&mut *tx)
            .await
            .unwrap();
        }
    }
}

/// Rollups for 19 keys × 1440 minutes × 3 providers × 3 status classes, each cell with a
/// 21-bucket histogram, plus the all-keys rollup, and the hourly rollups they add up to (as
/// ingest writes them); raw events for the first and last minute.
async fn statistics(store: &SqliteStore) {
    let pool = store.pool();
    reset_usage(pool).await;
    let t0 = Utc::now().duration_trunc(TimeDelta::minutes(1)).unwrap() - TimeDelta::days(1);
    let keys: Vec<KeyId> = (0..19).map(|_| KeyId::new()).collect();
    let minutes = if full() { 1_440 } else { 30 };
    let started = Instant::now();
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
    let owners: Vec<(String, u64)> = keys
        .iter()
        .map(|k| (k.to_string(), 1))
        .chain([(ALL_KEYS_ROLLUP.to_string(), 19)])
        .collect();
    const HOUR_US: i64 = 3_600_000_000;
    const DAY_US: i64 = 86_400_000_000;
    for (key, mult) in &owners {
        let mut hours: std::collections::BTreeMap<i64, LatencyHistogram> = Default::default();
        let mut days: std::collections::BTreeMap<i64, LatencyHistogram> = Default::default();
        for m in 0..minutes {
            let h = cell(m, *mult);
            let minute = (t0 + TimeDelta::minutes(m)).timestamp_micros();
            rollup_cells(&mut tx, "kv_usage_rollup", "minute", key, minute, &h).await;
            for (unit, sums) in [(HOUR_US, &mut hours), (DAY_US, &mut days)] {
                let sum = sums.entry(minute - minute.rem_euclid(unit)).or_default();
                for (b, c) in h.buckets() {
                    sum.add(b, c);
                }
            }
        }
        for (hour, h) in &hours {
            rollup_cells(&mut tx, "kv_usage_rollup_hour", "hour", key, *hour, h).await;
        }
        for (day, h) in &days {
            rollup_cells(&mut tx, "kv_usage_rollup_day", "day", key, *day, h).await;
        }
    }
    // Raw events of the partial minutes at both ends of the queried range.
    for i in 1..=14_000i64 {
        let base = if i % 2 == 0 {
            t0
        } else {
            t0 + TimeDelta::days(1)
        };
        sqlx::query(
            "INSERT INTO kv_usage_events (request_id, key_id, ts, provider, status, latency_us, \
             cost) VALUES (?1, ?2, ?3, 'openai', 200, ?4, 1)",
        )
        .bind(format!("raw-{i}"))
        .bind(keys[(i % 19) as usize].to_string())
        .bind((base + TimeDelta::microseconds((i % 60_000) * 1_000)).timestamp_micros())
        .bind(5_000 + i % 5_000)
        .execute(&mut *tx)
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();
    sqlx::query("ANALYZE").execute(pool).await.unwrap();
    let setup = started.elapsed();

    let q = StatsQuery {
        from: t0 + TimeDelta::seconds(30),
        to: t0 + TimeDelta::minutes(minutes) + TimeDelta::seconds(30),
        key_id: None,
        provider: None,
        granularity: None,
    };
    let total = store.overview(&q).await.unwrap().calls;
    println!(
        "statistics overview over {total} events in {minutes} minutes (setup {:.1} s)",
        setup.as_secs_f64()
    );
    let time = |q: StatsQuery| async move {
        let mut samples = Vec::new();
        for _ in 0..if full() { 30 } else { 2 } {
            let s = Instant::now();
            std::hint::black_box(store.overview(&q).await.unwrap());
            samples.push(s.elapsed());
        }
        samples.sort();
        (
            samples[samples.len() / 2],
            samples[samples.len() * 95 / 100],
        )
    };
    let (p50, p95) = time(q.clone()).await;
    println!(
        "  all keys:     p50 {:>6.1} ms, p95 {:>6.1} ms",
        ms(p50),
        ms(p95)
    );
    let (p50, p95) = time(StatsQuery {
        provider: Some("openai".into()),
        ..q.clone()
    })
    .await;
    println!(
        "  one provider: p50 {:>6.1} ms, p95 {:>6.1} ms",
        ms(p50),
        ms(p95)
    );
    let (p50, p95) = time(StatsQuery {
        key_id: Some(keys[0]),
        ..q.clone()
    })
    .await;
    println!(
        "  one key:      p50 {:>6.1} ms, p95 {:>6.1} ms",
        ms(p50),
        ms(p95)
    );
}

/// `n` keys written straight with SQL (the digest of `bench-key-<i>`), then lookups.
async fn lookups(store: &SqliteStore) -> Vec<KeyId> {
    let n = env_usize("KV_BENCH_KEYS", 100_000, 1_000);
    let pool = store.pool();
    let hasher = KeyHasher::sha256();
    let now = Utc::now().timestamp_micros();
    let mut ids = Vec::with_capacity(n);
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
    for i in 1..=n {
        let id = KeyId::new();
        ids.push(id);
        let digest = hasher.digest(&format!("bench-key-{i}"));
        sqlx::query(
            "INSERT INTO kv_keys (id, quota_id, name, name_lower, prefix, start, start_lower, \
             digest, created_at, updated_at, enabled, scopes, ip_allowlist, ratelimits, \
             metadata, revision) VALUES (?1, ?1, ?2, ?2, 'kv', 'kv_abcd', 'kv_abcd', ?3, ?4, ?4, \
             1, '[\"read\"]', '[]', '[{\"name\":\"m\",\"limit\":100,\"period_ms\":60000}]', \
             '{\"team\":\"x\"}', 1)",
        )
        .bind(id.to_string())
        .bind(format!("bench {i}"))
        .bind(digest.as_bytes().as_slice())
        .bind(now)
        .execute(&mut *tx)
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();
    sqlx::query("ANALYZE").execute(pool).await.unwrap();
    let digests: Vec<_> = (0..if full() { 10_000 } else { 200 })
        .map(|i| hasher.digest(&format!("bench-key-{}", 1 + (i * 7_919) % n)))
        .collect();
    // Sequential: the latency of one lookup.
    let mut samples = Vec::with_capacity(2_000);
    for d in &digests[..if full() { 2_000 } else { 100 }] {
        let s = Instant::now();
        assert!(store.find_by_digest(d).await.unwrap().is_some());
        samples.push(s.elapsed());
    }
    samples.sort();
    println!("key lookup by digest among {n} keys");
    println!(
        "  one at a time: p50 {:.0} µs, p99 {:.0} µs",
        samples[samples.len() / 2].as_secs_f64() * 1e6,
        samples[samples.len() * 99 / 100].as_secs_f64() * 1e6
    );
    // 8 concurrent callers: throughput (the pool has DEFAULT_MAX_CONNECTIONS connections).
    let digests = Arc::new(digests);
    let start = Instant::now();
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let store = store.clone();
            let digests = digests.clone();
            tokio::spawn(async move {
                for d in digests.iter().skip(t).step_by(8) {
                    assert!(store.find_by_digest(d).await.unwrap().is_some());
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    println!(
        "  8 concurrent:  {:.0} lookups/s",
        digests.len() as f64 / start.elapsed().as_secs_f64()
    );
    ids.truncate(50);
    ids
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("bench.db").display());
        let store = SqliteStore::connect(&url).await.unwrap();
        store.migrate().await.unwrap();
        sqlx::query(
            "CREATE TABLE bench_events (request_id TEXT NOT NULL, key_id TEXT, owner_id TEXT, \
             ts INTEGER NOT NULL, provider TEXT, route TEXT, method TEXT, status INTEGER NOT NULL, \
             latency_us INTEGER NOT NULL, outcome TEXT, cost INTEGER NOT NULL) STRICT",
        )
        .execute(store.pool())
        .await
        .unwrap();
        let keys = lookups(&store).await;
        ingest(&store, &keys).await;
        statistics(&store).await;
        store.close().await;
    });
}
