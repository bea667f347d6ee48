//! The server's accounts on one persistence layer: every mutation commits with its audit
//! record or not at all, and a database made by the server before the account tables took
//! over `kv_srv_*` upgrades in place, keeping its users, tokens and session secret.

mod common;

use common::{Server, Settings};
use keyvault_admin::Role;
use keyvault_core::{Actor, ApiKey, KeyHasher, Prefix, TOKEN_PREFIX};
use serde_json::json;
use sqlx::{Row, SqlitePool};

async fn pool(dir: &std::path::Path) -> SqlitePool {
    SqlitePool::connect(&format!("sqlite://{}", dir.join("keyvault.db").display()))
        .await
        .unwrap()
}

/// From now on no audit record can be written.
async fn refuse_audit(pool: &SqlitePool) {
    sqlx::query(
        "CREATE TRIGGER refuse_audit BEFORE INSERT ON kv_audit \
         BEGIN SELECT RAISE(ABORT, 'audit refused'); END",
    )
    .execute(pool)
    .await
    .unwrap();
}

async fn count(pool: &SqlitePool, table: &str) -> i64 {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT COUNT(*) AS n FROM {table}"
    )))
    .fetch_one(pool)
    .await
    .unwrap()
    .get("n")
}

#[tokio::test]
async fn a_mutation_whose_audit_record_cannot_be_written_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&Settings::sqlite(dir.path())).await;
    let op = s.token("operator").await;
    let made = s
        .req("POST", "/v1/keys")
        .token(&op)
        .json(&json!({"name": "kept"}))
        .send()
        .await;
    assert_eq!(made.status, 201);
    let id = made.json()["id"].as_str().unwrap().to_owned();
    let victim_id = s
        .app
        .create_token("victim", Role::Viewer, None, &Actor::library())
        .await
        .unwrap()
        .record
        .id;
    s.app
        .create_admin(
            "alice",
            Role::Admin,
            "correct horse battery".into(),
            &Actor::library(),
        )
        .await
        .unwrap();
    let db = pool(dir.path()).await;
    let before = (
        count(&db, "kv_keys").await,
        count(&db, "kv_api_tokens").await,
        count(&db, "kv_users").await,
        count(&db, "kv_audit").await,
    );
    let alice_hash: String =
        sqlx::query("SELECT password_hash FROM kv_users WHERE username = 'alice'")
            .fetch_one(&db)
            .await
            .unwrap()
            .get(0);
    refuse_audit(&db).await;

    // Keys: a create and a change answer 503 and change nothing.
    s.req("POST", "/v1/keys")
        .token(&op)
        .json(&json!({"name": "lost"}))
        .send()
        .await
        .problem(503, "backend_unavailable");
    s.req("PATCH", &format!("/v1/keys/{id}"))
        .token(&op)
        .json(&json!({"name": "renamed"}))
        .send()
        .await
        .problem(503, "backend_unavailable");
    let key = s
        .req("GET", &format!("/v1/keys/{id}"))
        .token(&op)
        .send()
        .await
        .json();
    assert_eq!(key["name"], "kept");

    // Tokens: a create and a revocation fail.
    assert!(
        s.app
            .create_token("lost", Role::Admin, None, &Actor::library())
            .await
            .is_err()
    );
    assert!(
        s.app
            .revoke_token(&victim_id.to_string(), &Actor::library())
            .await
            .is_err()
    );
    // Users: a create and a password change fail; the old password still signs in.
    assert!(
        s.app
            .create_admin(
                "bob",
                Role::Viewer,
                "another long passphrase".into(),
                &Actor::library()
            )
            .await
            .is_err()
    );
    assert!(
        s.app
            .reset_password("alice", "a brand new passphrase".into(), &Actor::library())
            .await
            .is_err()
    );

    let after = (
        count(&db, "kv_keys").await,
        count(&db, "kv_api_tokens").await,
        count(&db, "kv_users").await,
        count(&db, "kv_audit").await,
    );
    assert_eq!(before, after, "(keys, tokens, users, audit records)");
    let revoked: Option<i64> = sqlx::query("SELECT revoked_at FROM kv_api_tokens WHERE id = ?1")
        .bind(victim_id.to_string())
        .fetch_one(&db)
        .await
        .unwrap()
        .get(0);
    assert_eq!(revoked, None);
    let hash: String = sqlx::query("SELECT password_hash FROM kv_users WHERE username = 'alice'")
        .fetch_one(&db)
        .await
        .unwrap()
        .get(0);
    assert_eq!(hash, alice_hash);

    // Once the audit log takes records again, the same changes go through.
    sqlx::query("DROP TRIGGER refuse_audit")
        .execute(&db)
        .await
        .unwrap();
    assert!(
        s.app
            .revoke_token(&victim_id.to_string(), &Actor::library())
            .await
            .is_ok()
    );
}

/// The server's own tables before they moved into keyvault's migrations, exactly as it
/// created them on both backends.
const OLD_SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS kv_srv_settings (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS kv_srv_users (username TEXT PRIMARY KEY, role TEXT NOT NULL, \
     password_hash TEXT NOT NULL, created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS kv_srv_tokens (id TEXT PRIMARY KEY, name TEXT NOT NULL, \
     role TEXT NOT NULL, start TEXT NOT NULL, digest TEXT NOT NULL UNIQUE, \
     created_at BIGINT NOT NULL, expires_at BIGINT, revoked_at BIGINT, created_by TEXT NOT NULL)",
];

#[tokio::test]
async fn a_database_of_the_previous_server_upgrades_with_its_users_tokens_and_secret() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("keyvault.db").display());
    // keyvault's own tables as the previous release left them (migrations 1 and 2)…
    let store = keyvault::sqlite::SqliteStore::connect(&url).await.unwrap();
    keyvault::sqlite::migrator()
        .run_to(2, store.pool())
        .await
        .unwrap();
    // …and the server's, with an admin user, an API token and the generated secret.
    let db = store.pool().clone();
    for stmt in OLD_SCHEMA {
        sqlx::query(*stmt).execute(&db).await.unwrap();
    }
    let token = ApiKey::generate(&Prefix::any(TOKEN_PREFIX).unwrap());
    let digest = KeyHasher::sha256().digest(token.expose()).to_hex();
    let now = chrono::Utc::now().timestamp_micros();
    // argon2id of "correct horse battery", as `create-admin` stored it.
    let phc = {
        use argon2::{PasswordHasher, password_hash::SaltString};
        let salt = SaltString::encode_b64(b"keyvault-upgrade").unwrap();
        argon2::Argon2::default()
            .hash_password(b"correct horse battery", &salt)
            .unwrap()
            .to_string()
    };
    sqlx::query("INSERT INTO kv_srv_users VALUES ('alice', 'admin', ?1, ?2, ?2)")
        .bind(&phc)
        .bind(now)
        .execute(&db)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO kv_srv_tokens VALUES ('0190f0f0-0000-7000-8000-000000000001', 'ops', \
         'admin', 'kvt_AAAA', ?1, ?2, NULL, NULL, 'cli')",
    )
    .bind(&digest)
    .bind(now)
    .execute(&db)
    .await
    .unwrap();
    sqlx::query("INSERT INTO kv_srv_settings VALUES ('secret_key', 'the-old-secret')")
        .execute(&db)
        .await
        .unwrap();
    store.close().await;

    let s = Server::start(&Settings::sqlite(dir.path())).await;
    // The token still authenticates.
    let keys = s.req("GET", "/v1/keys").token(token.expose()).send().await;
    assert_eq!(keys.status, 200, "{}", keys.text());
    // The user still signs in with the same password.
    let login = s.sign_in("alice", "correct horse battery").await;
    assert!((300..400).contains(&login.status), "{}", login.text());
    // The secret that signed sessions is the one the old server generated.
    let db = pool(dir.path()).await;
    let secret: String = sqlx::query("SELECT value FROM kv_settings WHERE name = 'secret_key'")
        .fetch_one(&db)
        .await
        .unwrap()
        .get(0);
    assert_eq!(secret, "the-old-secret");
    let old: i64 = sqlx::query("SELECT COUNT(*) FROM sqlite_master WHERE name LIKE 'kv_srv_%'")
        .fetch_one(&db)
        .await
        .unwrap()
        .get(0);
    assert_eq!(old, 0, "the old tables are gone");
}
