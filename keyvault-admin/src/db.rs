//! The server's own tables (prefix `kv_srv_`): admin users, API tokens and settings, on
//! SQLite or PostgreSQL through sqlx's `Any` driver. Queries use `$n` placeholders, which
//! both databases understand, and store times as microseconds since the epoch.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use keyvault_core::KeyDigest;
use serde::{Deserialize, Serialize};
use sqlx::{AnyPool, AssertSqlSafe, Row, any::AnyPoolOptions, any::AnyRow};
use uuid::Uuid;

use crate::{
    auth::Role,
    config::DatabaseUrl,
    error::{Error, Result},
};

/// The statements that create the server's tables; each is idempotent.
const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS kv_srv_settings (
        name TEXT PRIMARY KEY,
        value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS kv_srv_users (
        username TEXT PRIMARY KEY,
        role TEXT NOT NULL,
        password_hash TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS kv_srv_tokens (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        role TEXT NOT NULL,
        start TEXT NOT NULL,
        digest TEXT NOT NULL UNIQUE,
        created_at BIGINT NOT NULL,
        expires_at BIGINT,
        revoked_at BIGINT,
        created_by TEXT NOT NULL)",
];

/// The settings row holding the generated session-signing secret.
pub(crate) const SECRET_KEY_SETTING: &str = "secret_key";

/// An API token as stored (never its plaintext; the digest stays inside this module's rows).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct TokenRow {
    pub id: Uuid,
    pub name: String,
    pub role: Role,
    pub start: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub created_by: String,
}

impl TokenRow {
    /// Whether the token may be used at `now`.
    pub(crate) fn is_active(&self, now: DateTime<Utc>) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|t| t > now)
    }
}

/// An admin user as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct UserRow {
    pub(crate) username: String,
    pub(crate) role: Role,
    /// The argon2id PHC string (a hash, not a password).
    pub(crate) password_hash: String,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) updated_at: DateTime<Utc>,
}

/// The server's tables.
#[derive(Debug, Clone)]
pub(crate) struct ServerDb {
    pool: AnyPool,
    postgres: bool,
}

fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn from_micros(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap_or_default()
}

fn corrupt(what: &str) -> Error {
    Error::Internal(format!("unreadable {what} row in the server tables"))
}

fn token_from(row: &AnyRow) -> Result<TokenRow> {
    let id: String = row.try_get("id")?;
    let role: String = row.try_get("role")?;
    Ok(TokenRow {
        id: Uuid::parse_str(&id).map_err(|_| corrupt("token"))?,
        name: row.try_get("name")?,
        role: Role::from_str(&role).map_err(|_| corrupt("token"))?,
        start: row.try_get("start")?,
        created_at: from_micros(row.try_get("created_at")?),
        expires_at: row
            .try_get::<Option<i64>, _>("expires_at")?
            .map(from_micros),
        revoked_at: row
            .try_get::<Option<i64>, _>("revoked_at")?
            .map(from_micros),
        created_by: row.try_get("created_by")?,
    })
}

fn user_from(row: &AnyRow) -> Result<UserRow> {
    let role: String = row.try_get("role")?;
    Ok(UserRow {
        username: row.try_get("username")?,
        role: Role::from_str(&role).map_err(|_| corrupt("user"))?,
        password_hash: row.try_get("password_hash")?,
        created_at: from_micros(row.try_get("created_at")?),
        updated_at: from_micros(row.try_get("updated_at")?),
    })
}

// Fixed column list, spliced into constant statements (no input reaches SQL text).
const TOKEN_COLUMNS: &str = "id, name, role, start, created_at, expires_at, revoked_at, created_by";

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

impl ServerDb {
    /// Connects to the database named by `url`.
    pub(crate) async fn connect(url: &DatabaseUrl) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let (conn, postgres, max) = match url {
            // `mode=rwc` creates the file; the backend has usually done so already.
            DatabaseUrl::Sqlite { path, .. } => {
                let path = path.as_deref().unwrap_or(std::path::Path::new(""));
                (format!("sqlite://{}?mode=rwc", path.display()), false, 4)
            }
            DatabaseUrl::Postgres(u) => (u.clone(), true, 8),
        };
        let pool = AnyPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(std::time::Duration::from_secs(5))
            .connect(&conn)
            .await?;
        Ok(Self { pool, postgres })
    }

    /// Creates the server's tables (idempotent; concurrent instances on PostgreSQL serialise
    /// on an advisory lock).
    pub(crate) async fn migrate(&self) -> Result<()> {
        let mut conn = self.pool.acquire().await?;
        if self.postgres {
            sqlx::query("SELECT pg_advisory_lock(7368237)")
                .execute(&mut *conn)
                .await?;
        }
        let mut result = Ok(());
        for stmt in SCHEMA {
            if let Err(e) = sqlx::query(*stmt).execute(&mut *conn).await {
                result = Err(e.into());
                break;
            }
        }
        if self.postgres {
            sqlx::query("SELECT pg_advisory_unlock(7368237)")
                .execute(&mut *conn)
                .await?;
        }
        result
    }

    /// Checks that the database answers.
    pub(crate) async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    // ---- settings ----

    pub(crate) async fn setting(&self, name: &str) -> Result<Option<String>> {
        let row = sqlx::query("SELECT value FROM kv_srv_settings WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get("value")).transpose()?)
    }

    /// Stores `value` unless `name` is set already; returns the value that holds.
    pub(crate) async fn setting_or_insert(&self, name: &str, value: &str) -> Result<String> {
        sqlx::query(
            "INSERT INTO kv_srv_settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(value)
        .execute(&self.pool)
        .await?;
        self.setting(name)
            .await?
            .ok_or_else(|| Error::Internal("setting vanished".into()))
    }

    pub(crate) async fn put_setting(&self, name: &str, value: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO kv_srv_settings (name, value) VALUES ($1, $2)
             ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        )
        .bind(name)
        .bind(value)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub(crate) async fn settings(&self) -> Result<Vec<(String, String)>> {
        let rows = sqlx::query("SELECT name, value FROM kv_srv_settings ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("name")?, r.try_get("value")?)))
            .collect()
    }

    // ---- admin users ----

    pub(crate) async fn insert_user(&self, u: &UserRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO kv_srv_users (username, role, password_hash, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&u.username)
        .bind(u.role.as_str())
        .bind(&u.password_hash)
        .bind(micros(u.created_at))
        .bind(micros(u.updated_at))
        .execute(&self.pool)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                Error::Conflict(format!("admin user {:?} already exists", u.username))
            } else {
                e.into()
            }
        })?;
        Ok(())
    }

    pub(crate) async fn user(&self, username: &str) -> Result<Option<UserRow>> {
        let row = sqlx::query(
            "SELECT username, role, password_hash, created_at, updated_at
             FROM kv_srv_users WHERE username = $1",
        )
        .bind(username)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(user_from).transpose()
    }

    pub(crate) async fn users(&self) -> Result<Vec<UserRow>> {
        let rows = sqlx::query(
            "SELECT username, role, password_hash, created_at, updated_at
             FROM kv_srv_users ORDER BY username",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(user_from).collect()
    }

    /// Sets a user's password hash; false when the user is unknown.
    pub(crate) async fn set_password(
        &self,
        username: &str,
        phc: &str,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE kv_srv_users SET password_hash = $1, updated_at = $2 WHERE username = $3",
        )
        .bind(phc)
        .bind(micros(now))
        .bind(username)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() > 0)
    }

    pub(crate) async fn delete_user(&self, username: &str) -> Result<()> {
        sqlx::query("DELETE FROM kv_srv_users WHERE username = $1")
            .bind(username)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    // ---- API tokens ----

    pub(crate) async fn insert_token(&self, t: &TokenRow, digest_hex: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO kv_srv_tokens
             (id, name, role, start, digest, created_at, expires_at, revoked_at, created_by)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(t.id.to_string())
        .bind(&t.name)
        .bind(t.role.as_str())
        .bind(&t.start)
        .bind(digest_hex)
        .bind(micros(t.created_at))
        .bind(t.expires_at.map(micros))
        .bind(t.revoked_at.map(micros))
        .bind(&t.created_by)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub(crate) async fn delete_token(&self, id: Uuid) -> Result<()> {
        sqlx::query("DELETE FROM kv_srv_tokens WHERE id = $1")
            .bind(id.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub(crate) async fn token_by_digest(&self, digest: &KeyDigest) -> Result<Option<TokenRow>> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {TOKEN_COLUMNS} FROM kv_srv_tokens WHERE digest = $1"
        )))
        .bind(digest.to_hex())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(token_from).transpose()
    }

    /// Active (unrevoked) tokens, newest first, older than `before`; one more than `limit`
    /// tells the caller that a next page exists.
    pub(crate) async fn tokens(&self, before: Option<Uuid>, limit: usize) -> Result<Vec<TokenRow>> {
        // UUIDv7 text sorts in creation order.
        let before = before.map_or_else(|| "g".to_owned(), |u| u.to_string());
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {TOKEN_COLUMNS} FROM kv_srv_tokens
             WHERE revoked_at IS NULL AND id < $1 ORDER BY id DESC LIMIT $2"
        )))
        .bind(before)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(token_from).collect()
    }

    /// Every token with its digest, revoked ones included (for backups).
    pub(crate) async fn all_tokens(&self) -> Result<Vec<(TokenRow, String)>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {TOKEN_COLUMNS}, digest FROM kv_srv_tokens ORDER BY id"
        )))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((token_from(r)?, r.try_get("digest")?)))
            .collect()
    }

    /// Marks a token revoked; false when it is unknown or already revoked.
    pub(crate) async fn revoke_token(&self, id: Uuid, now: DateTime<Utc>) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE kv_srv_tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
        )
        .bind(micros(now))
        .bind(id.to_string())
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() > 0)
    }

    pub(crate) async fn unrevoke_token(&self, id: Uuid) -> Result<()> {
        sqlx::query("UPDATE kv_srv_tokens SET revoked_at = NULL WHERE id = $1")
            .bind(id.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Whether any admin user or API token exists (restore refuses such a database).
    pub(crate) async fn holds_data(&self) -> Result<bool> {
        let users: i64 = sqlx::query("SELECT COUNT(*) AS n FROM kv_srv_users")
            .fetch_one(&self.pool)
            .await?
            .try_get("n")?;
        let tokens: i64 = sqlx::query("SELECT COUNT(*) AS n FROM kv_srv_tokens")
            .fetch_one(&self.pool)
            .await?
            .try_get("n")?;
        Ok(users + tokens > 0)
    }
}
