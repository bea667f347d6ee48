//! The account tables on PostgreSQL: an audit record that cannot be written stops every kind
//! of mutation, a database the old server ran on is taken over row for row, and concurrent
//! transactions cannot race past the last-admin rule or a lease.

use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use keyvault_core::{
    Error, FakeClock, KeyDigest, KeyHasher, LeaseStore, Role, SECRET_KEY_SETTING, SettingStore,
    TokenRecord, TokenStore, UserRecord, UserStore,
    memory::MemoryRateLimiter,
    testing::{Accounts, Backends},
    uuid::Uuid,
};
use keyvault_postgres::{PgStore, migrator};
use sqlx::PgPool;

async fn store(pool: PgPool) -> PgStore {
    let s = PgStore::new(pool);
    s.migrate().await.unwrap();
    s
}

#[sqlx::test(migrations = false)]
async fn a_refused_audit_record_stops_every_mutation(pool: PgPool) {
    let store = Arc::new(store(pool.clone()).await);
    let clock = FakeClock::new(Utc::now());
    let backends = Backends {
        store: store.clone(),
        credits: store.clone(),
        limiter: Arc::new(MemoryRateLimiter::with_clock(Arc::new(clock.clone()))),
        audit: store.clone(),
        signals: store.clone(),
        usage: None,
        bus: None,
        clock: Some(clock),
    };
    let refuse = async {
        for sql in [
            "CREATE FUNCTION kv_test_refuse_audit() RETURNS trigger LANGUAGE plpgsql \
             AS $$ BEGIN RAISE EXCEPTION 'audit refused'; END $$",
            "CREATE TRIGGER kv_audit_refused BEFORE INSERT ON kv_audit \
             FOR EACH ROW EXECUTE FUNCTION kv_test_refuse_audit()",
        ] {
            sqlx::query(sql).execute(&pool).await.unwrap();
        }
    };
    let allow = async {
        sqlx::query("DROP TRIGGER kv_audit_refused ON kv_audit")
            .execute(&pool)
            .await
            .unwrap();
    };
    keyvault_core::testing::accounts::a_refused_audit_changes_nothing(
        backends,
        Accounts::of(store.clone()),
        refuse,
        allow,
    )
    .await;
}

/// The last migration on main before the account tables.
const BEFORE_ACCOUNTS: i64 = 20260101000002;

/// What the old server created for itself, exactly.
const OLD_SERVER_SCHEMA: [&str; 3] = [
    "CREATE TABLE IF NOT EXISTS kv_srv_settings (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS kv_srv_users (username TEXT PRIMARY KEY, role TEXT NOT NULL, password_hash TEXT NOT NULL, created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS kv_srv_tokens (id TEXT PRIMARY KEY, name TEXT NOT NULL, role TEXT NOT NULL, start TEXT NOT NULL, digest TEXT NOT NULL UNIQUE, created_at BIGINT NOT NULL, expires_at BIGINT, revoked_at BIGINT, created_by TEXT NOT NULL)",
];

fn at(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap()
}

/// keyvault's migrations up to [`BEFORE_ACCOUNTS`] and the old server's tables.
async fn old_server_database(pool: &PgPool) -> PgStore {
    migrator().run_to(BEFORE_ACCOUNTS, pool).await.unwrap();
    for sql in OLD_SERVER_SCHEMA {
        sqlx::query(sql).execute(pool).await.unwrap();
    }
    PgStore::new(pool.clone())
}

async fn insert_token(pool: &PgPool, t: &TokenRecord, id_text: &str, digest_text: &str) {
    sqlx::query(
        "INSERT INTO kv_srv_tokens (id, name, role, start, digest, created_at, expires_at, \
         revoked_at, created_by) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(id_text)
    .bind(&t.name)
    .bind(t.role.as_str())
    .bind(&t.start)
    .bind(digest_text)
    .bind(t.created_at.timestamp_micros())
    .bind(t.expires_at.map(|t| t.timestamp_micros()))
    .bind(t.revoked_at.map(|t| t.timestamp_micros()))
    .bind(&t.created_by)
    .execute(pool)
    .await
    .unwrap();
}

async fn tables_named(pool: &PgPool, pattern: &str) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables \
         WHERE table_schema = current_schema() AND table_name LIKE $1 ORDER BY 1",
    )
    .bind(pattern)
    .fetch_all(pool)
    .await
    .unwrap()
}

#[sqlx::test(migrations = false)]
async fn the_old_servers_rows_are_taken_over_exactly(pool: PgPool) {
    let store = old_server_database(&pool).await;
    let alice = UserRecord {
        username: "alice".into(),
        role: Role::Admin,
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaA".into(),
        enabled: true,
        created_at: at(1_790_000_000_123_456),
        updated_at: at(1_790_000_100_654_321),
    };
    sqlx::query(
        "INSERT INTO kv_srv_users (username, role, password_hash, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&alice.username)
    .bind(alice.role.as_str())
    .bind(&alice.password_hash)
    .bind(alice.created_at.timestamp_micros())
    .bind(alice.updated_at.timestamp_micros())
    .execute(&pool)
    .await
    .unwrap();
    let hasher = KeyHasher::sha256();
    let mut active = TokenRecord {
        id: Uuid::now_v7(),
        name: "deploy".into(),
        role: Role::Verifier,
        start: "kvt_AbCd".into(),
        digest: hasher.digest("kvt_active"),
        created_at: at(1_790_000_200_000_001),
        expires_at: Some(at(1_890_000_000_999_999)),
        revoked_at: None,
        created_by: "cli".into(),
    };
    let revoked = TokenRecord {
        id: Uuid::now_v7(),
        name: "old".into(),
        role: Role::Admin,
        start: "kvt_WxYz".into(),
        digest: hasher.digest("kvt_revoked"),
        created_at: at(1_790_000_300_000_002),
        expires_at: None,
        revoked_at: Some(at(1_790_000_400_777_777)),
        created_by: "user:alice".into(),
    };
    for t in [&active, &revoked] {
        insert_token(&pool, t, &t.id.to_string(), &t.digest.to_hex()).await;
    }
    for (name, value) in [(SECRET_KEY_SETTING, "5e"), ("theme", "dark")] {
        sqlx::query("INSERT INTO kv_srv_settings (name, value) VALUES ($1, $2)")
            .bind(name)
            .bind(value)
            .execute(&pool)
            .await
            .unwrap();
    }

    store.migrate().await.unwrap();
    assert!(tables_named(&pool, "kv_srv_%").await.is_empty());
    assert_eq!(store.users().await.unwrap(), std::slice::from_ref(&alice));
    assert_eq!(
        store.all_tokens().await.unwrap(),
        [active.clone(), revoked.clone()]
    );
    // The digest is the same 32 bytes: the token still authenticates.
    let found = store
        .token_by_digest(&hasher.digest("kvt_active"))
        .await
        .unwrap();
    assert_eq!(found.as_ref(), Some(&active));
    assert_eq!(
        store.list_tokens(None, 10).await.unwrap().items,
        std::slice::from_ref(&active)
    );
    assert_eq!(
        store.settings().await.unwrap(),
        [
            (SECRET_KEY_SETTING.to_owned(), "5e".to_owned()),
            ("theme".to_owned(), "dark".to_owned()),
        ]
    );
    assert_eq!(
        store
            .setting_or_insert(SECRET_KEY_SETTING, "a new secret")
            .await
            .unwrap(),
        "5e",
        "the generated secret survives"
    );

    // Migrating again changes nothing; the tables work as new ones do.
    store.migrate().await.unwrap();
    assert_eq!(store.users().await.unwrap(), [alice]);
    active.revoked_at = Some(at(1_790_000_500_000_000));
    assert!(
        store
            .revoke_token(active.id, active.revoked_at.unwrap(), &[])
            .await
            .unwrap()
    );
    assert_eq!(store.token(active.id).await.unwrap(), Some(active));
}

#[sqlx::test(migrations = false)]
async fn a_new_database_gets_the_account_tables_without_the_old_ones(pool: PgPool) {
    store(pool.clone()).await;
    assert!(tables_named(&pool, "kv_srv_%").await.is_empty());
    for table in [
        "kv_users",
        "kv_api_tokens",
        "kv_sessions",
        "kv_settings",
        "kv_leases",
    ] {
        assert_eq!(tables_named(&pool, table).await, [table]);
    }
}

/// A row that does not convert exactly fails the migration, which then leaves the old
/// tables and their rows as they were.
#[sqlx::test(migrations = false)]
async fn a_row_that_does_not_convert_stops_the_migration_and_loses_nothing(pool: PgPool) {
    let store = old_server_database(&pool).await;
    let t = TokenRecord {
        id: Uuid::now_v7(),
        name: "bad".into(),
        role: Role::Viewer,
        start: "kvt_Bad0".into(),
        digest: KeyDigest::from_bytes([0; 32]),
        created_at: at(1_790_000_000_000_000),
        expires_at: None,
        revoked_at: None,
        created_by: "cli".into(),
    };
    for (id, digest) in [
        (t.id.to_string(), "not hex at all".to_owned()),
        (t.id.to_string(), "abcd".to_owned()),
        ("not-a-uuid".to_owned(), t.digest.to_hex()),
    ] {
        sqlx::query("DELETE FROM kv_srv_tokens")
            .execute(&pool)
            .await
            .unwrap();
        insert_token(&pool, &t, &id, &digest).await;
        assert!(store.migrate().await.is_err(), "{id:?} {digest:?}");
        assert_eq!(tables_named(&pool, "kv_srv_%").await.len(), 3);
        assert!(tables_named(&pool, "kv_users").await.is_empty());
        let kept: (String, String) = sqlx::query_as("SELECT id, digest FROM kv_srv_tokens")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(kept, (id, digest));
    }
}

/// Two admins demoting each other at once, from two pools: exactly one succeeds, and one
/// enabled admin is left.
#[sqlx::test(migrations = false)]
async fn concurrent_demotions_leave_an_enabled_admin(pool: PgPool) {
    let a = store(pool.clone()).await;
    let b = PgStore::new(
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .connect_with((*pool.connect_options()).clone())
            .await
            .unwrap(),
    );
    let now = Utc::now();
    let admin = move |name: &str| UserRecord {
        username: name.into(),
        role: Role::Admin,
        password_hash: "$argon2id$…".into(),
        enabled: true,
        created_at: now,
        updated_at: now,
    };
    for round in 0..10 {
        let (x, y) = (format!("x{round}"), format!("y{round}"));
        for u in [&x, &y] {
            a.create_user(&admin(u), &[]).await.unwrap();
        }
        // Everyone else is demoted first, so x and y are the only enabled admins.
        for u in a.users().await.unwrap() {
            if u.username != x && u.username != y && u.is_enabled_admin() {
                a.update_user(
                    &UserRecord {
                        role: Role::Viewer,
                        ..u
                    },
                    &[],
                )
                .await
                .unwrap();
            }
        }
        let demote = |s: PgStore, name: String| {
            tokio::spawn(async move {
                s.update_user(
                    &UserRecord {
                        role: Role::Operator,
                        ..admin(&name)
                    },
                    &[],
                )
                .await
            })
        };
        let (rx, ry) = (demote(a.clone(), x.clone()), demote(b.clone(), y.clone()));
        let results = [rx.await.unwrap(), ry.await.unwrap()];
        let ok = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(ok, 1, "round {round}: {results:?}");
        assert!(
            results.iter().any(|r| matches!(r, Err(Error::Conflict(_)))),
            "{results:?}"
        );
        let admins = a
            .users()
            .await
            .unwrap()
            .into_iter()
            .filter(UserRecord::is_enabled_admin)
            .count();
        assert_eq!(admins, 1, "round {round}");
    }
}

/// Instances racing for one free lease: exactly one takes it.
#[sqlx::test(migrations = false)]
async fn one_of_many_racing_instances_takes_a_lease(pool: PgPool) {
    let s = store(pool).await;
    let now = Utc::now();
    let tasks: Vec<_> = (0..12)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                s.try_lease(
                    "job",
                    &format!("instance-{i}"),
                    now,
                    now + TimeDelta::seconds(30),
                )
                .await
                .unwrap()
            })
        })
        .collect();
    let mut taken = 0;
    for t in tasks {
        taken += usize::from(t.await.unwrap());
    }
    assert_eq!(taken, 1);
}

#[sqlx::test(migrations = false)]
async fn ping_answers_while_the_database_does(pool: PgPool) {
    let s = store(pool).await;
    s.ping().await.unwrap();
    s.pool().close().await;
    assert!(matches!(s.ping().await, Err(Error::Backend(_))));
}
