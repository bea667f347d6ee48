//! Statistics read whole hours and days from the hourly and daily rollups and still match the
//! in-memory reference exactly across hour and day boundaries; a database from before the
//! hourly rollups gets them from its minute rollups when it is migrated, and the daily ones
//! from those hours.

mod common;

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use keyvault_core::{
    ALL_KEYS_ROLLUP, Granularity, KeyId, LatencyHistogram, StatsQuery, UsageEvent, UsageQuery,
    UsageSink, memory::MemoryStore,
};
use keyvault_sqlite::{SqliteStore, migrator};

/// The all-keys rollup's `key_id` as SQLite stores it.
fn all_keys() -> String {
    ALL_KEYS_ROLLUP.to_string()
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

    /// Up to 2⁴⁰ (`next` yields 31 bits, not enough for days in microseconds).
    fn wide(&mut self, n: u64) -> u64 {
        ((self.next(1 << 20) << 20) | self.next(1 << 20)) % n
    }
}

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 5, 1, 22, 0, 0).unwrap()
}

const SPAN_US: u64 = 4 * 24 * 3_600_000_000;

/// `n` events over four days from [`t0`], every 7th repeating an earlier request id.
fn events(rng: &mut Lcg, keys: &[KeyId], prefix: &str, n: usize) -> Vec<UsageEvent> {
    let providers = [None, Some("openai"), Some("anthropic"), Some("")];
    (0..n)
        .map(|i| UsageEvent {
            request_id: format!("{prefix}{}", if i % 7 == 6 { i - 3 } else { i }).into(),
            key_id: (i % 5 != 0).then(|| keys[rng.next(keys.len() as u64) as usize]),
            owner_id: None,
            ts: t0() + TimeDelta::microseconds(rng.wide(SPAN_US) as i64),
            provider: providers[rng.next(4) as usize].map(Into::into),
            route: None,
            method: None,
            status: [200, 201, 302, 404, 500, 99][rng.next(6) as usize],
            latency_us: rng.next(5_000_000),
            outcome: None,
            cost: 1,
        })
        .collect()
}

/// Ranges that start and end at whole hours, whole minutes and in between, from under an
/// hour to the whole span (long enough for an hourly time series).
fn queries(rng: &mut Lcg, keys: &[KeyId]) -> Vec<StatsQuery> {
    let q = |from: DateTime<Utc>, to: DateTime<Utc>| StatsQuery {
        from,
        to,
        key_id: None,
        provider: None,
        granularity: None,
    };
    let h = TimeDelta::hours;
    let mut qs = vec![
        q(t0() - h(1), t0() + h(100)),
        q(t0(), t0() + h(96)),
        q(t0() + h(1), t0() + h(3)),
        q(
            t0() + h(2) - TimeDelta::minutes(1),
            t0() + h(80) + TimeDelta::minutes(1),
        ),
        q(
            t0() + h(5) + TimeDelta::seconds(1),
            t0() + h(90) - TimeDelta::seconds(1),
        ),
        q(t0() + TimeDelta::minutes(59), t0() + TimeDelta::minutes(61)),
    ];
    // Day steps: the series' days from the daily rollups.
    for (from, to) in [(t0(), t0() + h(96)), (t0() + h(3), t0() + h(75))] {
        qs.push(StatsQuery {
            granularity: Some(Granularity::Day),
            ..q(from, to)
        });
    }
    for _ in 0..40 {
        let a = rng.wide(SPAN_US) as i64;
        // Half of them longer than 75 h, where the series steps by whole hours.
        let len = if rng.next(2) == 0 {
            1 + rng.wide(6 * 3_600_000_000) as i64
        } else {
            76 * 3_600_000_000 + rng.wide(20 * 3_600_000_000) as i64
        };
        qs.push(StatsQuery {
            from: t0() + TimeDelta::microseconds(a),
            to: t0() + TimeDelta::microseconds(a + len),
            key_id: (rng.next(3) == 0).then(|| keys[rng.next(keys.len() as u64) as usize]),
            provider: match rng.next(4) {
                0 => Some("openai".into()),
                1 => Some(String::new()),
                _ => None,
            },
            granularity: None,
        });
    }
    qs
}

async fn assert_same(store: &SqliteStore, memory: &MemoryStore, qs: &[StatsQuery]) {
    for q in qs {
        let got = store.overview(q).await.unwrap();
        let want = memory.overview(q).await.unwrap();
        assert_eq!(
            got, want,
            "range {} .. {}, key {:?}, provider {:?}",
            q.from, q.to, q.key_id, q.provider
        );
    }
}

/// The calls the all-keys hour rollups hold, and those the day rollups hold.
async fn hour_calls(store: &SqliteStore) -> (i64, i64) {
    let mut sums = [0; 2];
    for (sum, table) in sums
        .iter_mut()
        .zip(["kv_usage_rollup_hour", "kv_usage_rollup_day"])
    {
        *sum = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT coalesce(sum(calls), 0) FROM {table} WHERE key_id = ?1"
        )))
        .bind(all_keys())
        .fetch_one(store.pool())
        .await
        .unwrap();
    }
    (sums[0], sums[1])
}

#[tokio::test(flavor = "multi_thread")]
async fn overview_across_hour_boundaries_matches_the_in_memory_reference() {
    let db = common::TestDb::new();
    let store = db.store().await;
    let memory = MemoryStore::new();
    let keys = [KeyId::new(), KeyId::new(), KeyId::new()];
    let mut rng = Lcg(11);
    let evs = events(&mut rng, &keys, "r", 4_000);
    // Batches of mixed hours and days; each cell of a batch is written once.
    for batch in evs.chunks(700) {
        store.write(batch).await.unwrap();
        memory.write(batch).await.unwrap();
    }
    // A retried batch, and one that mixes stored and new events: only the new ones count.
    store.write(&evs[..700]).await.unwrap();
    let mixed: Vec<UsageEvent> = evs[700..900]
        .iter()
        .cloned()
        .chain(events(&mut rng, &keys, "m", 300))
        .collect();
    store.write(&mixed).await.unwrap();
    memory.write(&mixed).await.unwrap();

    let distinct: HashSet<&str> = evs
        .iter()
        .chain(&mixed)
        .map(|e| e.request_id.as_str())
        .collect();
    let n = distinct.len() as i64;
    assert_eq!(hour_calls(&store).await, (n, n));
    let hours: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT hour) FROM kv_usage_rollup_hour WHERE key_id = ?1",
    )
    .bind(all_keys())
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(hours, 96);

    let qs = queries(&mut rng, &keys);
    assert!(qs.iter().any(|q| q.step() == TimeDelta::hours(1)));
    assert_same(&store, &memory, &qs).await;
}

/// Writes `events` as the first schema's code did: raw events, and minute rollups (under
/// the event's key and under all keys) with the histogram as a JSON object.
async fn write_as_version_1(store: &SqliteStore, events: &[UsageEvent]) {
    type Cell = (String, i64, bool, String, i64);
    let mut seen = HashSet::new();
    let mut cells: BTreeMap<Cell, (i64, LatencyHistogram)> = BTreeMap::new();
    let mut tx = store.pool().begin().await.unwrap();
    for e in events {
        if !seen.insert(e.request_id.clone()) {
            continue;
        }
        let ts = e.ts.timestamp_micros();
        sqlx::query(
            "INSERT INTO kv_usage_events (request_id, key_id, ts, provider, status, \
             latency_us, cost) VALUES (?1, ?2, ?3, ?4, ?5, ?6, 1)",
        )
        .bind(e.request_id.as_str())
        .bind(e.key_id.map(|k| k.to_string()))
        .bind(ts)
        .bind(e.provider.as_deref())
        .bind(i64::from(e.status))
        .bind(e.latency_us as i64)
        .execute(&mut *tx)
        .await
        .unwrap();
        let owners = std::iter::once(all_keys()).chain(e.key_id.map(|k| k.to_string()));
        for key in owners {
            let cell = cells
                .entry((
                    key,
                    ts - ts.rem_euclid(60_000_000),
                    e.provider.is_some(),
                    e.provider.as_deref().unwrap_or_default().to_owned(),
                    i64::from(e.status / 100),
                ))
                .or_default();
            cell.0 += 1;
            cell.1.record(e.latency_us);
        }
    }
    for ((key, minute, set, provider, class), (calls, hist)) in cells {
        let json: serde_json::Map<String, serde_json::Value> = hist
            .buckets()
            .map(|(b, c)| (b.to_string(), c.into()))
            .collect();
        sqlx::query(
            "INSERT INTO kv_usage_rollup (key_id, minute, provider_set, provider, \
             status_class, calls, hist) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )
        .bind(key)
        .bind(minute)
        .bind(set)
        .bind(provider)
        .bind(class)
        .bind(calls)
        .bind(serde_json::Value::Object(json).to_string())
        .execute(&mut *tx)
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn upgrading_folds_minute_rollups_into_hours() {
    let db = common::TestDb::new();
    let store = SqliteStore::connect(&db.url).await.unwrap();
    // The database as the first schema left it: minute rollups only.
    migrator().run_to(1, store.pool()).await.unwrap();
    let memory = MemoryStore::new();
    let keys = [KeyId::new(), KeyId::new()];
    let mut rng = Lcg(5);
    let old = events(&mut rng, &keys, "old", 3_000);
    write_as_version_1(&store, &old).await;
    memory.write(&old).await.unwrap();

    store.migrate().await.unwrap();
    let distinct: HashSet<&str> = old.iter().map(|e| e.request_id.as_str()).collect();
    let n = distinct.len() as i64;
    assert_eq!(hour_calls(&store).await, (n, n));
    let qs = queries(&mut rng, &keys);
    assert_same(&store, &memory, &qs).await;

    // New events land in hours that already hold folded ones, and add to them.
    let new = events(&mut rng, &keys, "new", 1_500);
    store.write(&new).await.unwrap();
    memory.write(&new).await.unwrap();
    // Retrying the old batch through the sink counts nothing twice.
    store.write(&old[..500]).await.unwrap();
    assert_same(&store, &memory, &qs).await;
    // A second migration run changes nothing.
    store.migrate().await.unwrap();
    assert_same(&store, &memory, &qs[..5]).await;
}
