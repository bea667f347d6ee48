//! The raw usage events' daily partitions (migration 20260101000011): the migration keeps
//! every event and statistic, retention drops whole days, ingest stays idempotent across
//! partitions and DEFAULT, and events for days without a partition are moved in later.

use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use keyvault_core::{
    ALL_KEYS_ROLLUP, Granularity, KeyId, Outcome, StatsQuery, UsageEvent, UsageQuery, UsageSink,
    memory::MemoryStore,
};
use keyvault_postgres::{PgStore, USAGE_PARTITION_DAYS_AHEAD, migrator};
use sqlx::PgPool;

/// The last migration before the partitioned events table.
const BEFORE_PARTITIONS: i64 = 20260101000010;

fn day(s: &str) -> DateTime<Utc> {
    format!("{s}T00:00:00Z").parse().unwrap()
}

fn event(i: usize, key: Option<KeyId>, ts: DateTime<Utc>) -> UsageEvent {
    UsageEvent {
        request_id: format!("req-{i}").into(),
        key_id: key,
        owner_id: None,
        ts,
        provider: (!i.is_multiple_of(3)).then(|| "openai".into()),
        route: Some("/v1/chat".into()),
        method: Some("POST".into()),
        status: [200, 204, 302, 404, 503][i % 5],
        latency_us: 50 + (i as u64 * 7_919) % 900_000,
        outcome: Some(Outcome::Valid),
        cost: 1,
    }
}

/// `n` events every `every` from `from`, over two keys and no key.
fn spread(n: usize, from: DateTime<Utc>, every: TimeDelta, keys: [KeyId; 2]) -> Vec<UsageEvent> {
    (0..n)
        .map(|i| {
            let key = [Some(keys[0]), Some(keys[1]), None][i % 3];
            event(i, key, from + every * i32::try_from(i).unwrap())
        })
        .collect()
}

/// Events per UTC day, as stored.
async fn per_day(pool: &PgPool) -> Vec<(NaiveDate, i64)> {
    sqlx::query_as(
        "SELECT (ts AT TIME ZONE 'UTC')::date, count(*) FROM kv_usage_events GROUP BY 1 ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

/// The partitions attached to kv_usage_events, by name (DEFAULT included).
async fn partitions(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_inherits AS i JOIN pg_class AS c ON c.oid = i.inhrelid \
         WHERE i.inhparent = 'kv_usage_events'::regclass ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

fn partition_of(d: DateTime<Utc>) -> String {
    format!("kv_usage_events_p{}", d.format("%Y%m%d"))
}

async fn count(pool: &PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

/// Calls counted by each rollup level for all keys.
async fn rolled_up(pool: &PgPool) -> Vec<i64> {
    let mut out = Vec::new();
    for sql in [
        "SELECT coalesce(sum(calls), 0)::bigint FROM kv_usage_rollup WHERE key_id = $1",
        "SELECT coalesce(sum(calls), 0)::bigint FROM kv_usage_rollup_hour WHERE key_id = $1",
        "SELECT coalesce(sum(calls), 0)::bigint FROM kv_usage_rollup_day WHERE key_id = $1",
    ] {
        out.push(
            sqlx::query_scalar(sql)
                .bind(ALL_KEYS_ROLLUP)
                .fetch_one(pool)
                .await
                .unwrap(),
        );
    }
    out
}

/// Overview queries over `[from, from + days)`: whole days, partial hours and minutes with
/// raw ends, per key, per provider, day and minute steps.
fn queries(from: DateTime<Utc>, days: i64, keys: [KeyId; 2]) -> Vec<StatsQuery> {
    let q = |f, t, key_id, provider: Option<&str>, granularity| StatsQuery {
        from: f,
        to: t,
        key_id,
        provider: provider.map(Into::into),
        granularity,
    };
    let to = from + TimeDelta::days(days);
    let (s, m) = (TimeDelta::seconds, TimeDelta::minutes);
    vec![
        q(from, to, None, None, Some(Granularity::Day)),
        q(from - m(30), to + m(30), None, None, None),
        q(
            from + m(17) + s(7),
            to - m(95) - s(3),
            Some(keys[0]),
            None,
            None,
        ),
        q(
            from + m(61),
            from + m(200) + s(11),
            None,
            Some("openai"),
            None,
        ),
        q(
            from + TimeDelta::days(1) - m(5),
            from + TimeDelta::days(1) + m(5) + s(30),
            Some(keys[1]),
            None,
            None,
        ),
    ]
}

/// Every query answered by `s` as by the reference.
async fn same_statistics(s: &PgStore, mem: &MemoryStore, queries: &[StatsQuery]) {
    for q in queries {
        assert_eq!(
            s.overview(q).await.unwrap(),
            mem.overview(q).await.unwrap(),
            "{q:?}"
        );
    }
}

#[sqlx::test(migrations = false)]
async fn the_partitioning_migration_keeps_every_event_and_statistic(pool: PgPool) {
    migrator().run_to(BEFORE_PARTITIONS, &pool).await.unwrap();
    let keys = [KeyId::new(), KeyId::new()];
    let base = day("2026-01-10") + TimeDelta::hours(7);
    // Four days of traffic, an event every 97 s (some minutes hold two).
    let events = spread(3_600, base, TimeDelta::seconds(97), keys);
    let s = PgStore::new(pool.clone());
    // Written as the ingest wrote them before the migration: distinct batches by binary
    // COPY with their rollups (the partition maintenance of the first batch fails on the
    // old schema and is only logged). This version's ingest also claims the ids, in a table
    // the old schema lacks: a scratch one takes them and is dropped before migrating, ...
    sqlx::query("CREATE TABLE kv_usage_ids (request_id text PRIMARY KEY, ts timestamptz)")
        .execute(&pool)
        .await
        .unwrap();
    s.write(&events[..2_000]).await.unwrap();
    s.write(&events[2_000..]).await.unwrap();
    sqlx::query("DROP TABLE kv_usage_ids")
        .execute(&pool)
        .await
        .unwrap();
    // ... and a retried batch as the old careful path wrote it (request_id alone was the
    // key): nothing inserted, so nothing added to the rollups.
    let again = sqlx::query(
        "INSERT INTO kv_usage_events (request_id, ts, status, latency_us, latency_bucket, cost) \
         SELECT id, $2, 200, 1, 0, 1 FROM unnest($1::text[]) AS id \
         ON CONFLICT (request_id) DO NOTHING",
    )
    .bind(
        events[1_500..2_500]
            .iter()
            .map(|e| e.request_id.as_str().to_owned())
            .collect::<Vec<_>>(),
    )
    .bind(base)
    .execute(&pool)
    .await
    .unwrap();
    assert_eq!(again.rows_affected(), 0);
    let mem = MemoryStore::new();
    mem.write(&events).await.unwrap();
    let queries = queries(base, 4, keys);
    same_statistics(&s, &mem, &queries).await;
    let days_before = per_day(&pool).await;
    assert_eq!(days_before.len(), 5);
    assert_eq!(days_before.iter().map(|d| d.1).sum::<i64>(), 3_600);
    let rolled_before = rolled_up(&pool).await;

    s.migrate().await.unwrap();

    assert_eq!(per_day(&pool).await, days_before);
    assert_eq!(rolled_up(&pool).await, rolled_before);
    same_statistics(&s, &mem, &queries).await;
    // Each day of the data has its own partition, holding exactly that day's events.
    let parts = partitions(&pool).await;
    for (d, n) in &days_before {
        let name = format!("kv_usage_events_p{}", d.format("%Y%m%d"));
        assert!(parts.contains(&name), "{name} in {parts:?}");
        let held: i64 =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {name}")))
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(held, *n, "{name}");
    }
    assert_eq!(
        count(&pool, "SELECT count(*) FROM kv_usage_events_default").await,
        0
    );
    // Today's partition and the week ahead were created by migrate().
    let today = Utc::now()
        .date_naive()
        .and_time(chrono::NaiveTime::MIN)
        .and_utc();
    for ahead in 0..=i64::from(USAGE_PARTITION_DAYS_AHEAD) {
        let name = partition_of(today + TimeDelta::days(ahead));
        assert!(parts.contains(&name), "{name} in {parts:?}");
    }
    // Every event's id is claimed, with its time.
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM kv_usage_ids AS i JOIN kv_usage_events AS e USING (request_id, ts)"
        )
        .await,
        3_600
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM kv_usage_ids").await,
        3_600
    );
    // The migrated events still deduplicate a retried batch.
    s.write(&events[1_000..3_000]).await.unwrap();
    assert_eq!(
        count(&pool, "SELECT count(*) FROM kv_usage_events").await,
        3_600
    );
    assert_eq!(rolled_up(&pool).await, rolled_before);
    same_statistics(&s, &mem, &queries).await;
}

#[sqlx::test(migrations = false)]
async fn the_migration_runs_on_an_empty_events_table(pool: PgPool) {
    migrator().run_to(BEFORE_PARTITIONS, &pool).await.unwrap();
    let s = PgStore::new(pool.clone());
    s.migrate().await.unwrap();
    assert_eq!(
        count(&pool, "SELECT count(*) FROM kv_usage_events").await,
        0
    );
    let parts = partitions(&pool).await;
    // DEFAULT, today and the days ahead.
    assert_eq!(
        parts.len(),
        2 + USAGE_PARTITION_DAYS_AHEAD as usize,
        "{parts:?}"
    );
    assert!(parts.contains(&"kv_usage_events_default".to_owned()));
}

#[sqlx::test(migrations = false)]
async fn retention_drops_the_partitions_of_whole_days(pool: PgPool) {
    let s = PgStore::new(pool.clone());
    s.migrate().await.unwrap();
    let keys = [KeyId::new(), KeyId::new()];
    let d0 = day("2026-02-01");
    // 30 days, an event every 15 minutes: 96 a day.
    let events = spread(30 * 96, d0, TimeDelta::minutes(15), keys);
    for batch in events.chunks(700) {
        s.write(batch).await.unwrap();
    }
    // Written into DEFAULT (no partitions for February yet), then moved into their days.
    assert_eq!(
        count(&pool, "SELECT count(*) FROM kv_usage_events_default").await,
        2_880
    );
    assert_eq!(s.ensure_usage_partitions(0).await.unwrap(), 30);
    assert_eq!(
        count(&pool, "SELECT count(*) FROM kv_usage_events_default").await,
        0
    );
    let mem = MemoryStore::new();
    mem.write(&events).await.unwrap();
    // Whole days (no raw ends): answered from the rollups alone, before and after.
    let whole = [
        StatsQuery {
            from: d0,
            to: d0 + TimeDelta::days(30),
            key_id: None,
            provider: None,
            granularity: Some(Granularity::Day),
        },
        StatsQuery {
            from: d0 + TimeDelta::hours(3),
            to: d0 + TimeDelta::days(12) + TimeDelta::minutes(45),
            key_id: Some(keys[0]),
            provider: Some("openai".into()),
            granularity: None,
        },
    ];
    same_statistics(&s, &mem, &whole).await;
    let rolled = rolled_up(&pool).await;

    let day10 = d0 + TimeDelta::days(10);
    let removed = s
        .purge_usage_before(day10 + TimeDelta::hours(5))
        .await
        .unwrap();
    // Ten whole days dropped, and the 20 events of day 10 before 05:00 deleted.
    assert_eq!(removed, 10 * 96 + 20);
    let parts = partitions(&pool).await;
    for d in 0..30 {
        let name = partition_of(d0 + TimeDelta::days(d));
        assert_eq!(parts.contains(&name), d >= 10, "{name} in {parts:?}");
    }
    // Dropped, not merely detached: of February 1–11 only the 11th is left.
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM pg_class WHERE relname ~ '^kv_usage_events_p202602(0[1-9]|1[01])$'"
        )
        .await,
        1
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM kv_usage_events").await,
        2_880 - 10 * 96 - 20
    );
    // The removed events' ids went with them, and only theirs.
    assert_eq!(
        count(&pool, "SELECT count(*) FROM kv_usage_ids").await,
        2_880 - 10 * 96 - 20
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM kv_usage_ids WHERE ts < '2026-02-11 05:00Z'"
        )
        .await,
        0
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM kv_usage_events_p20260211 WHERE ts < '2026-02-11 05:00Z'"
        )
        .await,
        0
    );
    assert_eq!(rolled_up(&pool).await, rolled);
    same_statistics(&s, &mem, &whole).await;
    // Nothing left to remove.
    assert_eq!(s.purge_usage_before(day10).await.unwrap(), 0);
    // The trait's purge (the admin's retention job) goes through the same drop.
    let purged = s.purge_before(d0 + TimeDelta::days(12)).await.unwrap();
    assert_eq!(purged.events, 2 * 96 - 20);
    assert!(!partitions(&pool).await.contains(&partition_of(day10)));
}

#[sqlx::test(migrations = false)]
async fn a_batch_written_twice_counts_once_across_partitions_and_default(pool: PgPool) {
    let s = PgStore::new(pool.clone());
    s.migrate().await.unwrap();
    let keys = [KeyId::new(), KeyId::new()];
    // Yesterday has no partition (DEFAULT), today and tomorrow have theirs.
    let start = Utc::now()
        .date_naive()
        .and_time(chrono::NaiveTime::MIN)
        .and_utc()
        - TimeDelta::hours(12);
    let events = spread(900, start, TimeDelta::minutes(3), keys);
    s.write(&events).await.unwrap();
    let stored = || count(&pool, "SELECT count(*) FROM kv_usage_events");
    assert_eq!(stored().await, 900);
    let in_default = count(&pool, "SELECT count(*) FROM kv_usage_events_default").await;
    assert_eq!(in_default, 240);
    let rolled = rolled_up(&pool).await;
    assert_eq!(rolled, vec![900; 3]);
    // Retried whole (COPY refused, the careful path), and with an in-batch duplicate.
    s.write(&events).await.unwrap();
    let mut dup = events[100..400].to_vec();
    dup.push(events[120].clone());
    s.write(&dup).await.unwrap();
    assert_eq!(stored().await, 900);
    assert_eq!(rolled_up(&pool).await, rolled);
    // Yesterday's partition made now: its events move out of DEFAULT, and a retry still
    // finds them there.
    assert_eq!(s.ensure_usage_partitions(1).await.unwrap(), 1);
    assert_eq!(
        count(&pool, "SELECT count(*) FROM kv_usage_events_default").await,
        0
    );
    s.write(&events[..300]).await.unwrap();
    assert_eq!(stored().await, 900);
    assert_eq!(rolled_up(&pool).await, rolled);
    // The same request id at another time, in another day's partition, is the same request
    // (CONTRACT §4: an id seen by any instance is not counted again; two instances given one
    // id without a time stamp their own): counted once, whether alone in a batch of new ids
    // (the COPY of its id refused) or beside a new one.
    let mut later = events[5].clone();
    later.ts += TimeDelta::days(1);
    s.write(std::slice::from_ref(&later)).await.unwrap();
    let mut fresh = events[6].clone();
    fresh.request_id = "req-fresh".into();
    s.write(&[later.clone(), fresh.clone()]).await.unwrap();
    assert_eq!(stored().await, 901);
    assert_eq!(rolled_up(&pool).await, vec![901; 3]);
    assert_eq!(count(&pool, "SELECT count(*) FROM kv_usage_ids").await, 901);
    let mem = MemoryStore::new();
    mem.write(&events).await.unwrap();
    mem.write(&[fresh]).await.unwrap();
    same_statistics(&s, &mem, &queries(start, 2, keys)).await;
}

#[sqlx::test(migrations = false)]
async fn events_for_days_without_a_partition_wait_in_default_and_move_in_later(pool: PgPool) {
    let s = PgStore::new(pool.clone());
    s.migrate().await.unwrap();
    let future = Utc::now() + TimeDelta::days(400);
    let past = day("2001-03-04") + TimeDelta::hours(23);
    let events = vec![
        event(1, None, future),
        event(2, None, future + TimeDelta::seconds(1)),
        event(3, None, past),
        event(4, None, Utc::now()),
    ];
    s.write(&events).await.unwrap();
    let homes = || async {
        sqlx::query_as::<_, (String, i64)>(
            "SELECT tableoid::regclass::text, count(*) FROM kv_usage_events GROUP BY 1 ORDER BY 1",
        )
        .fetch_all(&pool)
        .await
        .unwrap()
    };
    let today = partition_of(Utc::now());
    assert_eq!(
        homes().await,
        vec![("kv_usage_events_default".into(), 3), (today.clone(), 1)]
    );
    // Several instances at once: the days are created once, nothing fails.
    let runs: Vec<_> = (0..4)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move { s.ensure_usage_partitions(USAGE_PARTITION_DAYS_AHEAD).await })
        })
        .collect();
    let mut created = 0;
    for r in runs {
        created += r.await.unwrap().unwrap();
    }
    assert_eq!(created, 2);
    let mut expected = vec![
        (partition_of(past), 1),
        (today, 1),
        (partition_of(future), 2),
    ];
    expected.sort();
    assert_eq!(homes().await, expected);
    assert_eq!(
        count(&pool, "SELECT count(*) FROM kv_usage_events_default").await,
        0
    );
    // Still one row each: a retry after the move is recognised.
    s.write(&events).await.unwrap();
    assert_eq!(
        count(&pool, "SELECT count(*) FROM kv_usage_events").await,
        4
    );
    assert_eq!(rolled_up(&pool).await, vec![4; 3]);
    // A purge up to a day still to come drops today's and the next days' partitions too,
    // and creates them again, so today's events do not go to DEFAULT afterwards.
    let removed = s
        .purge_usage_before(future + TimeDelta::days(1))
        .await
        .unwrap();
    assert_eq!(removed, 4);
    let parts = partitions(&pool).await;
    assert!(!parts.contains(&partition_of(future)), "{parts:?}");
    assert!(parts.contains(&partition_of(Utc::now())), "{parts:?}");
    s.write(&[event(5, None, Utc::now())]).await.unwrap();
    assert_eq!(
        count(&pool, "SELECT count(*) FROM kv_usage_events_default").await,
        0
    );
}

#[sqlx::test(migrations = false)]
async fn generated_ids_are_recognised_by_their_events_and_given_ones_by_their_claims(pool: PgPool) {
    let s = PgStore::new(pool.clone());
    s.migrate().await.unwrap();
    let keys = [KeyId::new(), KeyId::new()];
    let start = Utc::now() - TimeDelta::hours(1);
    // Half the batch with ids keyvault generated (as the layer records them), half given.
    let mut events = spread(400, start, TimeDelta::seconds(7), keys);
    for e in events.iter_mut().step_by(2) {
        e.request_id = keyvault_core::RequestId::generate();
    }
    s.write(&events).await.unwrap();
    let stored = || count(&pool, "SELECT count(*) FROM kv_usage_events");
    let claimed = || count(&pool, "SELECT count(*) FROM kv_usage_ids");
    assert_eq!(stored().await, 400);
    // Only the given ids are claimed.
    assert_eq!(claimed().await, 200);
    let rolled = rolled_up(&pool).await;
    assert_eq!(rolled, vec![400; 3]);
    // Retried whole, in part with an in-batch duplicate of each kind, and the generated
    // events alone (the COPY of events refused, no claim at all).
    s.write(&events).await.unwrap();
    let mut dup = events[50..150].to_vec();
    dup.push(events[60].clone());
    dup.push(events[61].clone());
    s.write(&dup).await.unwrap();
    let generated: Vec<UsageEvent> = events.iter().step_by(2).cloned().collect();
    s.write(&generated).await.unwrap();
    assert_eq!(stored().await, 400);
    assert_eq!(claimed().await, 200);
    assert_eq!(rolled_up(&pool).await, rolled);
    // A given id with another time counts once, beside a new generated one.
    let mut again = events[1].clone();
    again.ts += TimeDelta::minutes(5);
    let mut fresh = events[0].clone();
    fresh.request_id = keyvault_core::RequestId::generate();
    s.write(&[again, fresh.clone()]).await.unwrap();
    assert_eq!(stored().await, 401);
    assert_eq!(claimed().await, 200);
    let mem = MemoryStore::new();
    mem.write(&events).await.unwrap();
    mem.write(&[fresh]).await.unwrap();
    same_statistics(&s, &mem, &queries(start, 1, keys)).await;
}

#[sqlx::test(migrations = false)]
async fn ingest_goes_on_while_its_days_partition_is_created(pool: PgPool) {
    let s = PgStore::new(pool.clone());
    s.migrate().await.unwrap();
    let keys = [KeyId::new(), KeyId::new()];
    // A day without a partition yet: its events go to DEFAULT until the partition is made,
    // while batches keep arriving, then to the partition.
    let d = Utc::now()
        .date_naive()
        .and_time(chrono::NaiveTime::MIN)
        .and_utc()
        + TimeDelta::days(i64::from(USAGE_PARTITION_DAYS_AHEAD) + 5);
    let mut events = spread(3_000, d, TimeDelta::seconds(11), keys);
    for e in events.iter_mut().step_by(2) {
        e.request_id = keyvault_core::RequestId::generate();
    }
    let writer = {
        let (s, events) = (s.clone(), events.clone());
        tokio::spawn(async move {
            // As the recorder does: a failed batch is written again until it goes in.
            let mut failed = 0;
            for batch in events.chunks(50) {
                while let Err(e) = s.write(batch).await {
                    failed += 1;
                    assert!(failed < 100, "{e}");
                }
            }
            failed
        })
    };
    let mut created = 0;
    while !writer.is_finished() && created == 0 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        created = s
            .ensure_usage_partitions(USAGE_PARTITION_DAYS_AHEAD + 5)
            .await
            .unwrap();
    }
    // A batch whose COPY looked up the partitions before the attach and routed rows to
    // DEFAULT is refused there (SQLSTATE 23514) and goes in by the careful path instead:
    // no write fails.
    assert_eq!(writer.await.unwrap(), 0);
    // The five days after the week ahead, the batches' day among them.
    assert_eq!(created, 5);
    assert_eq!(
        count(&pool, "SELECT count(*) FROM kv_usage_events").await,
        3_000
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM kv_usage_events_default").await,
        0
    );
    assert_eq!(rolled_up(&pool).await, vec![3_000; 3]);
    let mem = MemoryStore::new();
    mem.write(&events).await.unwrap();
    same_statistics(&s, &mem, &queries(d, 1, keys)).await;
}
