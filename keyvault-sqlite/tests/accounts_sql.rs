//! The account tables on a real SQLite file: an audit record that cannot be written stops
//! every kind of mutation, and a database the old server ran on is taken over row for row.

mod common;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use keyvault_core::{
    FakeClock, KeyDigest, Role, SECRET_KEY_SETTING, SettingStore, TokenRecord, TokenStore,
    UserRecord, UserStore,
    memory::MemoryRateLimiter,
    testing::{Accounts, Backends},
    uuid::Uuid,
};
use keyvault_sqlite::{SqliteStore, migrator};

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_audit_record_stops_every_mutation() {
    let db = common::TestDb::new();
    let store = Arc::new(db.store().await);
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
    let pool = store.pool().clone();
    let refuse = sqlx::query(
        "CREATE TRIGGER kv_audit_refused BEFORE INSERT ON kv_audit \
         BEGIN SELECT RAISE(ABORT, 'audit refused'); END",
    )
    .execute(&pool);
    let allow = sqlx::query("DROP TRIGGER kv_audit_refused").execute(&pool);
    keyvault_core::testing::accounts::a_refused_audit_changes_nothing(
        backends,
        Accounts::of(store.clone()),
        async { refuse.await.map(drop).unwrap() },
        async { allow.await.map(drop).unwrap() },
    )
    .await;
}

/// The last migration on main before the account tables.
const BEFORE_ACCOUNTS: i64 = 2;

/// What the old server created for itself, exactly.
const OLD_SERVER_SCHEMA: [&str; 3] = [
    "CREATE TABLE IF NOT EXISTS kv_srv_settings (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS kv_srv_users (username TEXT PRIMARY KEY, role TEXT NOT NULL, password_hash TEXT NOT NULL, created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS kv_srv_tokens (id TEXT PRIMARY KEY, name TEXT NOT NULL, role TEXT NOT NULL, start TEXT NOT NULL, digest TEXT NOT NULL UNIQUE, created_at BIGINT NOT NULL, expires_at BIGINT, revoked_at BIGINT, created_by TEXT NOT NULL)",
];

fn at(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap()
}

/// A store whose file holds keyvault's migrations up to [`BEFORE_ACCOUNTS`] and the old
/// server's tables.
async fn old_server_database(db: &common::TestDb) -> SqliteStore {
    let store = SqliteStore::connect(&db.url).await.unwrap();
    migrator()
        .run_to(BEFORE_ACCOUNTS, store.pool())
        .await
        .unwrap();
    for sql in OLD_SERVER_SCHEMA {
        sqlx::query(sql).execute(store.pool()).await.unwrap();
    }
    store
}

async fn insert_token(store: &SqliteStore, t: &TokenRecord, digest_text: &str) {
    sqlx::query(
        "INSERT INTO kv_srv_tokens (id, name, role, start, digest, created_at, expires_at, \
         revoked_at, created_by) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(t.id.to_string())
    .bind(&t.name)
    .bind(t.role.as_str())
    .bind(&t.start)
    .bind(digest_text)
    .bind(t.created_at.timestamp_micros())
    .bind(t.expires_at.map(|t| t.timestamp_micros()))
    .bind(t.revoked_at.map(|t| t.timestamp_micros()))
    .bind(&t.created_by)
    .execute(store.pool())
    .await
    .unwrap();
}

async fn tables_named(store: &SqliteStore, pattern: &str) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE ?1 ORDER BY name",
    )
    .bind(pattern)
    .fetch_all(store.pool())
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_old_servers_rows_are_taken_over_exactly() {
    let db = common::TestDb::new();
    let store = old_server_database(&db).await;
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
    .execute(store.pool())
    .await
    .unwrap();
    let hasher = keyvault_core::KeyHasher::sha256();
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
    insert_token(&store, &active, &active.digest.to_hex()).await;
    insert_token(&store, &revoked, &revoked.digest.to_hex()).await;
    for (name, value) in [(SECRET_KEY_SETTING, "5e"), ("theme", "dark")] {
        sqlx::query("INSERT INTO kv_srv_settings (name, value) VALUES ($1, $2)")
            .bind(name)
            .bind(value)
            .execute(store.pool())
            .await
            .unwrap();
    }

    store.migrate().await.unwrap();
    assert!(tables_named(&store, "kv_srv_%").await.is_empty());
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
        [active.clone()]
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

#[tokio::test(flavor = "multi_thread")]
async fn a_new_database_gets_the_account_tables_without_the_old_ones() {
    let db = common::TestDb::new();
    let store = db.store().await;
    assert!(tables_named(&store, "kv_srv_%").await.is_empty());
    assert_eq!(
        tables_named(&store, "kv_%").await,
        [
            "kv_alert_baselines",
            "kv_alert_rules",
            "kv_alerts",
            "kv_api_tokens",
            "kv_audit",
            "kv_changes",
            "kv_credits",
            "kv_deliveries",
            "kv_ip_not_found",
            "kv_key_sightings",
            "kv_keys",
            "kv_leases",
            "kv_notifiers",
            "kv_schema_migrations",
            "kv_sessions",
            "kv_settings",
            "kv_usage_events",
            "kv_usage_rollup",
            "kv_usage_rollup_day",
            "kv_usage_rollup_hour",
            "kv_users",
        ]
    );
}

/// A row that does not convert exactly fails the migration, which then leaves the old
/// tables and their rows as they were.
#[tokio::test(flavor = "multi_thread")]
async fn a_row_that_does_not_convert_stops_the_migration_and_loses_nothing() {
    for bad_digest in ["not hex at all", "abcd"] {
        let db = common::TestDb::new();
        let store = old_server_database(&db).await;
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
        insert_token(&store, &t, bad_digest).await;
        assert!(store.migrate().await.is_err(), "{bad_digest:?}");
        assert_eq!(tables_named(&store, "kv_srv_%").await.len(), 3);
        assert!(tables_named(&store, "kv_users").await.is_empty());
        let kept: String = sqlx::query_scalar("SELECT digest FROM kv_srv_tokens")
            .fetch_one(store.pool())
            .await
            .unwrap();
        assert_eq!(kept, bad_digest);
    }
}
