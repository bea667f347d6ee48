//! keyvault-postgres figures: usage ingest through the real recorder and sink against a plain
//! binary COPY of the same rows, statistics over ~10 million events, key lookup by digest.
//!
//! ```sh
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/keyvault_test cargo bench -p keyvault-postgres
//! ```
//!
//! It creates (and at the end drops) its own database, `<database>_bench`. `KV_BENCH_EVENTS`
//! sets the ingest size (default 200 000), `KV_BENCH_KEYS` the number of stored keys
//! (default 100 000), `KV_BENCH_ROUNDS` the interleaved ingest rounds (default 5),
//! `KV_BENCH_RETENTION_EVENTS` the events of the retention section (default 10 000 000, over
//! 30 days). `KV_BENCH_ONLY` (a comma-separated list of `lookups`, `ingest`, `statistics`,
//! `partitions`, `retention`) runs only those sections; all by default.
//!
//! `partitions` and `retention` compare the daily-partitioned `kv_usage_events` with the plain
//! table of the schema before migration 20260101000011, set up in a schema `kv_plain` of the
//! same database.
#![allow(clippy::print_stdout, clippy::unwrap_used, missing_docs)]

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use chrono::{DateTime, TimeDelta, Utc};
use keyvault_core::{
    ALL_KEYS_ROLLUP, KeyHasher, KeyId, KeyStore, LatencyHistogram, Outcome, RecorderConfig,
    StatsQuery, UsageEvent, UsageQuery, UsageRecorder,
};
use keyvault_postgres::PgStore;
use sqlx::{
    Connection, Executor, PgConnection, PgPool,
    postgres::{PgConnectOptions, PgPoolCopyExt, PgPoolOptions},
};

/// Whether `KV_BENCH_ONLY` (all sections when unset) names `section`.
fn selected(section: &str) -> bool {
    std::env::var("KV_BENCH_ONLY").map_or(true, |only| only.split(',').any(|s| s.trim() == section))
}

/// The last migration before the partitioned events table.
const BEFORE_PARTITIONS: i64 = 20260101000010;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn fresh_database() -> (PgPool, PgConnectOptions, String) {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/keyvault_test".into());
    let opts: PgConnectOptions = url.parse().unwrap();
    let name = format!("{}_bench", opts.get_database().unwrap_or("keyvault"));
    let mut admin = PgConnection::connect_with(&opts.clone().database("postgres"))
        .await
        .unwrap();
    admin
        .execute(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
        )))
        .await
        .unwrap();
    admin
        .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .await
        .unwrap();
    let opts = opts.database(&name);
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .connect_with(opts.clone())
        .await
        .unwrap();
    (pool, opts, name)
}

/// Whether the events carry given request ids (`KV_BENCH_IDS=given`: as reported over
/// `POST /v1/usage`, claimed in `kv_usage_ids`) rather than generated ones (the default: as
/// the layer records them).
fn given_ids() -> bool {
    std::env::var("KV_BENCH_IDS").is_ok_and(|v| v == "given")
}

fn events(n: usize, keys: &[KeyId], now: DateTime<Utc>) -> Vec<UsageEvent> {
    let providers = ["openai", "anthropic", "mistral"];
    (0..n)
        .map(|i| {
            // A skewed latency spread (1–400 ms) and about 5 % errors.
            let x = (i.wrapping_mul(2_654_435_761) % 1_000) as u64;
            UsageEvent {
                request_id: if given_ids() {
                    format!("bench-{i:09}").into()
                } else {
                    keyvault_core::RequestId::generate()
                },
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

/// PostgreSQL's binary COPY format for `kv_usage_events`.
fn binary_copy(events: &[UsageEvent]) -> Vec<u8> {
    fn text(buf: &mut Vec<u8>, s: Option<&str>) {
        match s {
            Some(s) => {
                buf.extend_from_slice(&(s.len() as i32).to_be_bytes());
                buf.extend_from_slice(s.as_bytes());
            }
            None => buf.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }
    fn fixed(buf: &mut Vec<u8>, bytes: &[u8]) {
        buf.extend_from_slice(&(bytes.len() as i32).to_be_bytes());
        buf.extend_from_slice(bytes);
    }
    let pg_epoch = DateTime::<Utc>::from_timestamp(946_684_800, 0).unwrap();
    let mut buf = Vec::with_capacity(events.len() * 160);
    buf.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
    buf.extend_from_slice(&0i32.to_be_bytes());
    buf.extend_from_slice(&0i32.to_be_bytes());
    for e in events {
        buf.extend_from_slice(&12i16.to_be_bytes());
        text(&mut buf, Some(&e.request_id));
        match e.key_id {
            Some(k) => fixed(&mut buf, k.as_uuid().as_bytes()),
            None => text(&mut buf, None),
        }
        text(&mut buf, e.owner_id.as_deref());
        let micros = (e.ts - pg_epoch).num_microseconds().unwrap();
        fixed(&mut buf, &micros.to_be_bytes());
        text(&mut buf, e.provider.as_deref());
        text(&mut buf, e.route.as_deref());
        text(&mut buf, e.method.as_deref());
        fixed(&mut buf, &i32::from(e.status).to_be_bytes());
        fixed(&mut buf, &(e.latency_us as i64).to_be_bytes());
        fixed(
            &mut buf,
            &(LatencyHistogram::bucket_of(e.latency_us) as i16).to_be_bytes(),
        );
        text(&mut buf, e.outcome.map(|o| o.as_str()));
        fixed(&mut buf, &(e.cost as i64).to_be_bytes());
    }
    buf.extend_from_slice(&(-1i16).to_be_bytes());
    buf
}

/// One statement at a time (VACUUM refuses to run in the implicit transaction of a batch).
async fn run(pool: &PgPool, statements: &[&'static str]) {
    for s in statements {
        pool.execute(*s).await.unwrap();
    }
}

/// Empties the usage tables (and the claimed ids, on a schema that has them).
async fn reset_usage(pool: &PgPool) {
    run(
        pool,
        &[
            "TRUNCATE kv_usage_events, kv_usage_rollup, kv_usage_rollup_hour, kv_usage_rollup_day",
            "DO $$ BEGIN IF to_regclass('kv_usage_ids') IS NOT NULL THEN \
             TRUNCATE kv_usage_ids; END IF; END $$",
            "VACUUM ANALYZE kv_usage_events",
        ],
    )
    .await;
}

async fn copy_once(pool: &PgPool, data: &[u8], n: usize) -> Duration {
    reset_usage(pool).await;
    let start = Instant::now();
    let mut copy = pool
        .copy_in_raw(
            "COPY kv_usage_events (request_id, key_id, owner_id, ts, provider, route, method, \
             status, latency_us, latency_bucket, outcome, cost) FROM STDIN (FORMAT binary)",
        )
        .await
        .unwrap();
    for chunk in data.chunks(1 << 20) {
        copy.send(chunk).await.unwrap();
    }
    let rows = copy.finish().await.unwrap();
    let took = start.elapsed();
    assert_eq!(rows as usize, n);
    took
}

async fn recorder_once(store: &PgStore, events: &[UsageEvent], batch_size: usize) -> Duration {
    reset_usage(store.pool()).await;
    let config = RecorderConfig {
        capacity: events.len(),
        batch_size,
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
        let counted: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT sum(calls)::bigint FROM {table} WHERE key_id = $1"
        )))
        .bind(ALL_KEYS_ROLLUP)
        .fetch_one(store.pool())
        .await
        .unwrap();
        assert_eq!(counted as usize, events.len(), "{table}");
    }
    took
}

async fn ingest(store: &PgStore, keys: &[KeyId]) {
    let n = env_usize("KV_BENCH_EVENTS", 200_000);
    let evs = events(n, keys, Utc::now());
    let data = binary_copy(&evs);
    let default_batch = RecorderConfig::default().batch_size;
    let rounds = env_usize("KV_BENCH_ROUNDS", 5);
    // The same store committing usage batches asynchronously (the default before usage had
    // to survive a database crash).
    let asynchronous = store.clone().asynchronous_usage_commit(true);
    let (mut copy, mut rec, mut big) = (Vec::new(), Vec::new(), Vec::new());
    let (mut rec_async, mut big_async) = (Vec::new(), Vec::new());
    // Interleaved rounds: each side sees the same machine load; medians reported.
    for _ in 0..rounds {
        copy.push(copy_once(store.pool(), &data, n).await);
        rec.push(recorder_once(store, &evs, default_batch).await);
        big.push(recorder_once(store, &evs, 2_000).await);
        rec_async.push(recorder_once(&asynchronous, &evs, default_batch).await);
        big_async.push(recorder_once(&asynchronous, &evs, 2_000).await);
    }
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (copy, rec, big) = (median(copy), median(rec), median(big));
    let (rec_async, big_async) = (median(rec_async), median(big_async));
    let rate = |d: Duration| n as f64 / d.as_secs_f64();
    println!(
        "usage ingest, {n} events over {} keys (median of {rounds} interleaved rounds)",
        keys.len()
    );
    println!(
        "  binary COPY into kv_usage_events:        {:>9.0} events/s ({:.2} s)",
        rate(copy),
        copy.as_secs_f64()
    );
    for (batch, commit, took) in [
        (default_batch, "synchronous ", rec),
        (2_000, "synchronous ", big),
        (default_batch, "asynchronous", rec_async),
        (2_000, "asynchronous", big_async),
    ] {
        println!(
            "  UsageRecorder + PgStore, batches of {batch:>5}, {commit} commit: {:>9.0} events/s ({:.2} s), ratio {:.2}",
            rate(took),
            took.as_secs_f64(),
            copy.as_secs_f64() / took.as_secs_f64()
        );
    }
}

/// Rollups for `keys` keys × 1440 minutes × 3 providers × 3 status classes, each cell with a
/// 21-bucket histogram, plus the all-keys rollup; raw events for the first and last minute.
/// `label` names the table in the output; `partitioned`: whether the raw events are (the
/// plain schema has no partitions to move them into).
async fn statistics(pool: &PgPool, store: &PgStore, label: &str, partitioned: bool) {
    reset_usage(pool).await;
    let t0 = Utc::now().duration_trunc_minute() - TimeDelta::days(1);
    let keys: Vec<uuid::Uuid> = (0..19).map(|_| *KeyId::new().as_uuid()).collect();
    let started = Instant::now();
    let cells = "FROM generate_series(0, 1439) AS m, \
        unnest(ARRAY['openai', 'anthropic', 'mistral']) AS p, \
        unnest(ARRAY[2, 4, 5]::smallint[]) AS c, \
        LATERAL (SELECT sum(n)::bigint AS calls, array_agg(b ORDER BY b) AS hb, \
                        array_agg(n ORDER BY b) AS hc \
                 FROM (SELECT b::smallint AS b, (1 + (m + b) % 3)::bigint * $3 AS n \
                       FROM generate_series(30 + m % 7, 50 + m % 7) AS b) AS s) AS h";
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO kv_usage_rollup SELECT k, $1 + make_interval(mins => m), p, c, h.calls, h.hb, h.hc \
         {cells}, unnest($2::uuid[]) AS k"
    )))
    .bind(t0)
    .bind(&keys)
    .bind(1i64)
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO kv_usage_rollup SELECT $4::uuid, \
         $1 + make_interval(mins => m), p, c, h.calls, h.hb, h.hc {cells}, \
         (SELECT $2::uuid[] AS unused) AS x"
    )))
    .bind(t0)
    .bind(&keys)
    .bind(keys.len() as i64)
    .bind(ALL_KEYS_ROLLUP)
    .execute(pool)
    .await
    .unwrap();
    // Raw events of the partial minutes at both ends of the queried range.
    sqlx::query(
        "INSERT INTO kv_usage_events (request_id, key_id, ts, provider, status, latency_us, \
         latency_bucket, cost) \
         SELECT 'raw-' || i, ($2::uuid[])[1 + i % 19], \
                CASE WHEN i % 2 = 0 THEN $1 ELSE $1 + interval '1 day' END \
                  + make_interval(secs => (i % 60000) / 1000.0), \
                'openai', 200, 5000 + i % 5000, 40, 1 \
         FROM generate_series(1, 14000) AS i",
    )
    .bind(t0)
    .bind(&keys)
    .execute(pool)
    .await
    .unwrap();
    // Yesterday's raw events went to DEFAULT (a fresh database has partitions from today
    // on): moved into their day's partition, as a running deployment has them.
    if partitioned {
        store.ensure_usage_partitions(0).await.unwrap();
    }
    // The hourly rollups of the same cells, as ingest maintains them.
    pool.execute(
        "INSERT INTO kv_usage_rollup_hour \
         SELECT c.key_id, c.hour, c.provider, c.calls, c.errors, h.hb, h.hc \
         FROM (SELECT key_id, to_timestamp(floor(extract(epoch FROM minute) / 3600) * 3600) AS hour, \
                      provider, sum(calls)::bigint AS calls, \
                      coalesce(sum(calls) FILTER (WHERE status_class NOT IN (2, 3)), 0)::bigint AS errors \
               FROM kv_usage_rollup GROUP BY 1, 2, 3) AS c \
         CROSS JOIN LATERAL ( \
             SELECT array_agg(s.b ORDER BY s.b) AS hb, array_agg(s.c ORDER BY s.b) AS hc \
             FROM (SELECT u.b, sum(u.c)::bigint AS c \
                   FROM kv_usage_rollup AS r, unnest(r.hist_buckets, r.hist_counts) AS u(b, c) \
                   WHERE r.key_id = c.key_id AND r.provider = c.provider \
                     AND r.minute >= c.hour AND r.minute < c.hour + interval '1 hour' \
                   GROUP BY u.b) AS s) AS h",
    )
    .await
    .unwrap();
    // And the daily ones, as the migration that added them folds hours into days.
    let days = include_str!("../migrations/20260101000009_usage_daily.sql");
    pool.execute(&days[days.find("INSERT INTO").unwrap()..])
        .await
        .unwrap();
    run(
        pool,
        &[
            "VACUUM ANALYZE kv_usage_rollup_day",
            "VACUUM ANALYZE kv_usage_rollup_hour",
            "VACUUM ANALYZE kv_usage_rollup",
            "VACUUM ANALYZE kv_usage_events",
        ],
    )
    .await;
    let setup = started.elapsed();

    let q = StatsQuery {
        from: t0 + TimeDelta::seconds(30),
        to: t0 + TimeDelta::days(1) + TimeDelta::seconds(30),
        key_id: None,
        provider: None,
        granularity: None,
    };
    let total = store.overview(&q).await.unwrap().calls;
    println!(
        "statistics overview over {total} events in 24 h, {label} raw events (setup {:.1} s)",
        setup.as_secs_f64()
    );
    let time = |q: StatsQuery| async move {
        let mut samples = Vec::new();
        for _ in 0..30 {
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
        key_id: Some(KeyId::from_uuid(keys[0])),
        ..q.clone()
    })
    .await;
    println!(
        "  one key:      p50 {:>6.1} ms, p95 {:>6.1} ms",
        ms(p50),
        ms(p95)
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1_000.0
}

trait TruncMinute {
    fn duration_trunc_minute(self) -> Self;
}

impl TruncMinute for DateTime<Utc> {
    fn duration_trunc_minute(self) -> Self {
        use chrono::DurationRound;
        self.duration_trunc(TimeDelta::minutes(1)).unwrap()
    }
}

/// `n` keys written straight with SQL (the digest of `bench-key-<i>`), then lookups.
async fn lookups(pool: &PgPool, store: &PgStore) -> Vec<KeyId> {
    let n = env_usize("KV_BENCH_KEYS", 100_000);
    sqlx::query(
        "INSERT INTO kv_keys (id, quota_id, name, prefix, start, digest, created_at, updated_at, \
         enabled, scopes, ip_allowlist, ratelimits, metadata, revision) \
         SELECT u, u, 'bench ' || i, 'kv', 'kv_abcd', sha256(convert_to('bench-key-' || i, 'UTF8')), \
                now(), now(), true, ARRAY['read'], '{}', \
                '[{\"name\":\"m\",\"limit\":100,\"period_ms\":60000}]', '{\"team\":\"x\"}', 1 \
         FROM generate_series(1, $1) AS i, LATERAL (SELECT md5('bench-key-' || i)::uuid AS u) AS g",
    )
    .bind(n as i64)
    .execute(pool)
    .await
    .unwrap();
    pool.execute("VACUUM ANALYZE kv_keys").await.unwrap();
    let hasher = KeyHasher::sha256();
    let digests: Vec<_> = (0..10_000)
        .map(|i| hasher.digest(&format!("bench-key-{}", 1 + (i * 7_919) % n)))
        .collect();
    // Sequential: the latency of one lookup.
    let mut samples = Vec::with_capacity(digests.len());
    for d in &digests[..2_000] {
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
    // 8 concurrent callers: throughput.
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
    let ids: Vec<uuid::Uuid> = sqlx::query_scalar("SELECT id FROM kv_keys LIMIT 50")
        .fetch_all(pool)
        .await
        .unwrap();
    ids.into_iter().map(KeyId::from_uuid).collect()
}

fn main() {
    // Test runners list and run bench targets too (`--list`, or no flag at all): only
    // `cargo bench`, which passes `--bench`, runs the benchmark.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (pool, opts, name) = fresh_database().await;
        let store = PgStore::new(pool.clone());
        store.migrate().await.unwrap();
        let keys = if selected("lookups") {
            lookups(&pool, &store).await
        } else {
            some_keys(&pool).await
        };
        if selected("ingest") {
            ingest(&store, &keys).await;
        }
        if selected("statistics") {
            statistics(&pool, &store, "partitioned", true).await;
        }
        if selected("partitions") || selected("retention") {
            let plain = plain_store(&pool, &opts, &keys).await;
            if selected("partitions") {
                partitioned_ingest(&store, &plain, &keys).await;
                // The statistics' raw ends read through partition pruning against the plain
                // table's index, interleaved twice.
                for _ in 0..2 {
                    statistics(plain.pool(), &plain, "plain", false).await;
                    statistics(&pool, &store, "partitioned", true).await;
                }
            }
            if selected("retention") {
                retention(&pool, &store, &plain).await;
            }
            plain.pool().close().await;
        }
        pool.close().await;
        let mut admin = PgConnection::connect_with(&opts.database("postgres"))
            .await
            .unwrap();
        admin
            .execute(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE \"{name}\" WITH (FORCE)"
            )))
            .await
            .unwrap();
    });
}

/// 50 keys written straight with SQL, for runs without the lookup section.
async fn some_keys(pool: &PgPool) -> Vec<KeyId> {
    sqlx::query(
        "INSERT INTO kv_keys (id, quota_id, name, prefix, start, digest, created_at, updated_at, \
         enabled, scopes, ip_allowlist, ratelimits, metadata, revision) \
         SELECT u, u, 'bench ' || i, 'kv', 'kv_abcd', sha256(convert_to('bench-key-' || i, 'UTF8')), \
                now(), now(), true, '{}', '{}', '[]', '{}', 1 \
         FROM generate_series(1, 50) AS i, LATERAL (SELECT md5('bench-key-' || i)::uuid AS u) AS g",
    )
    .execute(pool)
    .await
    .unwrap();
    let ids: Vec<uuid::Uuid> = sqlx::query_scalar("SELECT id FROM kv_keys LIMIT 50")
        .fetch_all(pool)
        .await
        .unwrap();
    ids.into_iter().map(KeyId::from_uuid).collect()
}

/// A store on schema `kv_plain` of the same database, migrated only up to the migration
/// before the partitions: the plain `kv_usage_events` (primary key `request_id`, index on
/// `ts`), with the same 50 keys, so that both sides move the same `last_used_at`. Its pool
/// has the main pool's settings, but for the search path.
async fn plain_store(pool: &PgPool, opts: &PgConnectOptions, keys: &[KeyId]) -> PgStore {
    pool.execute("CREATE SCHEMA kv_plain").await.unwrap();
    let plain = PgPoolOptions::new()
        .max_connections(8)
        .connect_with(opts.clone().options([("search_path", "kv_plain")]))
        .await
        .unwrap();
    keyvault_postgres::migrator()
        .run_to(BEFORE_PARTITIONS, &plain)
        .await
        .unwrap();
    let ids: Vec<uuid::Uuid> = keys.iter().map(|k| *k.as_uuid()).collect();
    sqlx::query("INSERT INTO kv_plain.kv_keys SELECT * FROM public.kv_keys WHERE id = ANY($1)")
        .bind(&ids)
        .execute(pool)
        .await
        .unwrap();
    // Its ingest path's once-a-day partition maintenance fails here (no partitions in this
    // schema) and is only logged; it is marked done for the day after the first attempt.
    PgStore::new(plain)
}

/// Ingest into the partitioned table against the plain one: binary COPY and the recorder
/// with batches of 10 000 and of the core default, interleaved rounds, medians. With
/// generated ids (the default) the recorder's path is this version's on both sides (it
/// claims no ids, so the plain schema serves). Given ids (`KV_BENCH_IDS=given`) are claimed
/// in `kv_usage_ids`, which the plain schema lacks: then only COPY is compared here, and the
/// recorder against the previous version's binary (docs/benchmarks-postgres.md).
async fn partitioned_ingest(part: &PgStore, plain: &PgStore, keys: &[KeyId]) {
    let n = env_usize("KV_BENCH_EVENTS", 200_000);
    let evs = events(n, keys, Utc::now());
    let data = binary_copy(&evs);
    let rounds = env_usize("KV_BENCH_ROUNDS", 5);
    let default_batch = RecorderConfig::default().batch_size;
    let mut t: [Vec<Duration>; 6] = Default::default();
    let recorder = !given_ids();
    for _ in 0..rounds {
        t[0].push(copy_once(plain.pool(), &data, n).await);
        t[1].push(copy_once(part.pool(), &data, n).await);
        if !recorder {
            continue;
        }
        t[2].push(recorder_once(plain, &evs, default_batch).await);
        t[3].push(recorder_once(part, &evs, default_batch).await);
        t[4].push(recorder_once(plain, &evs, 2_000).await);
        t[5].push(recorder_once(part, &evs, 2_000).await);
    }
    // Where the partitioned side's rows went: all into today's partition, none to DEFAULT.
    let in_default: i64 = sqlx::query_scalar("SELECT count(*) FROM kv_usage_events_default")
        .fetch_one(part.pool())
        .await
        .unwrap();
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let m: Vec<Duration> = t
        .iter_mut()
        .map(|v| {
            if v.is_empty() {
                Duration::ZERO
            } else {
                median(v)
            }
        })
        .collect();
    let rate = |d: Duration| n as f64 / d.as_secs_f64();
    println!(
        "usage ingest, partitioned (daily) against plain kv_usage_events, {n} events over {} keys \
         (median of {rounds} interleaved rounds; {in_default} rows in DEFAULT; {} ids)",
        keys.len(),
        if recorder { "generated" } else { "given" }
    );
    for (what, plain, part) in [
        ("binary COPY".to_owned(), m[0], m[1]),
        (
            format!("UsageRecorder + PgStore, batches of {default_batch}"),
            m[2],
            m[3],
        ),
        (
            "UsageRecorder + PgStore, batches of 2000".to_owned(),
            m[4],
            m[5],
        ),
    ]
    .into_iter()
    .take(if recorder { 3 } else { 1 })
    {
        println!(
            "  {what:<42} plain {:>9.0} events/s, partitioned {:>9.0} events/s, ratio {:.2}",
            rate(plain),
            rate(part),
            plain.as_secs_f64() / part.as_secs_f64()
        );
    }
}

/// `n` events over the 30 UTC days ending with today, written straight with SQL (the
/// recorder would take minutes for 10 million): as many every day, 50 keys, 3 providers.
const LOAD: &str = "\
INSERT INTO kv_usage_events (request_id, key_id, owner_id, ts, provider, route, method, status,
    latency_us, latency_bucket, outcome, cost)
SELECT 'ev-' || i, ($3::uuid[])[1 + i % 50], 'owner-' || i % 10,
       $1 + make_interval(secs => i * 2592000.0 / $2),
       (ARRAY['openai', 'anthropic', 'mistral'])[1 + i % 3], '/v1/chat/completions', 'POST',
       CASE WHEN i % 20 = 0 THEN 503 ELSE 200 END, 1000 + i % 400000, 20 + (i % 7)::smallint,
       'VALID', 1
FROM generate_series(0, $2 - 1) AS i";

/// Retention of the oldest of 30 days: the DELETE of the plain table against the partition
/// drop of `PgStore::purge_usage_before`, on the same 10 million events. The plain table is
/// then migrated (timed), and its drop measured.
async fn retention(pool: &PgPool, part: &PgStore, plain: &PgStore) {
    let n = env_usize("KV_BENCH_RETENTION_EVENTS", 10_000_000) as i64;
    let today = Utc::now()
        .date_naive()
        .and_time(chrono::NaiveTime::MIN)
        .and_utc();
    let d0 = today - TimeDelta::days(29);
    let keys: Vec<uuid::Uuid> = sqlx::query_scalar("SELECT id FROM kv_keys LIMIT 50")
        .fetch_all(pool)
        .await
        .unwrap();
    println!("usage retention, {n} events over 30 days, the oldest day removed");
    // The partitions of the 29 past days, as a deployment running for a month has them
    // (ensure_usage_partitions creates today's and the days ahead): made with the
    // migration's own function before the load, so that no event goes to DEFAULT.
    sqlx::query(
        "SELECT kv_usage_events_ensure_day(d::date) \
         FROM generate_series($1::date, $2::date, interval '1 day') AS d",
    )
    .bind(d0.date_naive())
    .bind(today.date_naive())
    .execute(part.pool())
    .await
    .unwrap();
    for (what, store) in [("plain", plain), ("partitioned", part)] {
        reset_usage(store.pool()).await;
        let s = Instant::now();
        sqlx::query(LOAD)
            .bind(d0)
            .bind(n)
            .bind(&keys)
            .execute(store.pool())
            .await
            .unwrap();
        if what == "partitioned" && given_ids() {
            // The events' ids, as the ingest claims given ones: the purge deletes them too.
            run(
                store.pool(),
                &[
                    "INSERT INTO kv_usage_ids SELECT request_id, ts FROM kv_usage_events",
                    "VACUUM ANALYZE kv_usage_ids",
                ],
            )
            .await;
        }
        let loaded = s.elapsed();
        // The load's checkpoint done before anything is timed: it landed in one of the
        // timings (DELETE 0.54 s, drop 0.34 s in one run) otherwise.
        run(
            store.pool(),
            &["VACUUM ANALYZE kv_usage_events", "CHECKPOINT"],
        )
        .await;
        println!(
            "  load into {what:<11} {:>6.1} s ({:.0} rows/s, INSERT … SELECT generate_series)",
            loaded.as_secs_f64(),
            n as f64 / loaded.as_secs_f64()
        );
    }
    let in_default: i64 = sqlx::query_scalar("SELECT count(*) FROM kv_usage_events_default")
        .fetch_one(part.pool())
        .await
        .unwrap();
    assert_eq!(in_default, 0);
    let day1 = d0 + TimeDelta::days(1);

    // The plain table's DELETE, as the retention was: rolled back, so that the same rows
    // serve the migration below (the statement's time is what is compared).
    let mut tx = plain.pool().begin().await.unwrap();
    let s = Instant::now();
    let deleted = sqlx::query("DELETE FROM kv_usage_events WHERE ts < $1")
        .bind(day1)
        .execute(&mut *tx)
        .await
        .unwrap()
        .rows_affected();
    let delete = s.elapsed();
    tx.rollback().await.unwrap();
    let s = Instant::now();
    let dropped = part.purge_usage_before(day1).await.unwrap();
    let drop = s.elapsed();
    assert_eq!(deleted, dropped);
    println!(
        "  plain DELETE of one day ({deleted} events):            {:>8.1} ms",
        ms(delete)
    );
    println!(
        "  purge_usage_before, partition dropped and ids deleted ({dropped} events): {:>8.1} ms, {:.1}× faster",
        ms(drop),
        delete.as_secs_f64() / drop.as_secs_f64()
    );

    // The migration on the plain table's 10 million events, then its own drop.
    let s = Instant::now();
    keyvault_postgres::migrator()
        .run(plain.pool())
        .await
        .unwrap();
    let migrated = s.elapsed();
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM kv_usage_events")
        .fetch_one(plain.pool())
        .await
        .unwrap();
    assert_eq!(stored, n);
    println!(
        "  migration 20260101000011 on the plain table ({stored} events): {:.1} s",
        migrated.as_secs_f64()
    );
    plain
        .ensure_usage_partitions(keyvault_postgres::USAGE_PARTITION_DAYS_AHEAD)
        .await
        .unwrap();
    let s = Instant::now();
    let dropped = plain.purge_usage_before(day1).await.unwrap();
    println!(
        "  purge_usage_before on the migrated table ({dropped} events): {:.1} ms",
        ms(s.elapsed())
    );
}
