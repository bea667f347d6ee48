//! [`TokenStore`] on SQLite: `kv_api_tokens`.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use keyvault_core::{
    AuditEvent, Error, KeyDigest, Page, Result, TokenRecord, TokenStore, uuid::Uuid,
};
use sqlx::{AssertSqlSafe, SqliteConnection, sqlite::SqliteRow};

use super::{digest, is_unique_violation, role, uuid};
use crate::{
    SqliteStore,
    audit::append_linked,
    codec::{column, from_micros, int, micros, opt_from_micros, opt_micros},
    error::backend,
};

const COLUMNS: &str =
    "id, name, role, start, digest, created_at, expires_at, revoked_at, created_by";

/// A token query; every piece is a constant of this module, never input.
fn select(filter: &str) -> AssertSqlSafe<String> {
    AssertSqlSafe(format!("SELECT {COLUMNS} FROM kv_api_tokens {filter}"))
}

fn decode(row: &SqliteRow) -> Result<TokenRecord, crate::Error> {
    Ok(TokenRecord {
        id: uuid(&column::<String>(row, "id")?, "kv_api_tokens.id")?,
        name: column(row, "name")?,
        role: role(&column::<String>(row, "role")?, "kv_api_tokens.role")?,
        start: column(row, "start")?,
        digest: digest(&column::<Vec<u8>>(row, "digest")?, "kv_api_tokens.digest")?,
        created_at: from_micros(column(row, "created_at")?, "kv_api_tokens.created_at")?,
        expires_at: opt_from_micros(column(row, "expires_at")?, "kv_api_tokens.expires_at")?,
        revoked_at: opt_from_micros(column(row, "revoked_at")?, "kv_api_tokens.revoked_at")?,
        created_by: column(row, "created_by")?,
    })
}

/// Inserts a token in the caller's write transaction.
pub(crate) async fn insert(conn: &mut SqliteConnection, token: &TokenRecord) -> Result<()> {
    let sql = format!(
        "INSERT INTO kv_api_tokens ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
    );
    let inserted = sqlx::query(AssertSqlSafe(sql))
        .bind(token.id.to_string())
        .bind(&token.name)
        .bind(token.role.as_str())
        .bind(&token.start)
        .bind(token.digest.as_bytes().as_slice())
        .bind(micros(token.created_at))
        .bind(opt_micros(token.expires_at))
        .bind(opt_micros(token.revoked_at))
        .bind(&token.created_by)
        .execute(&mut *conn)
        .await;
    match inserted {
        Ok(_) => {}
        // The id or the digest: either way the token exists.
        Err(e) if is_unique_violation(&e) => {
            return Err(Error::Conflict(format!(
                "token {} already exists",
                token.id
            )));
        }
        Err(e) => return Err(backend(e)),
    }
    Ok(())
}

#[async_trait]
impl TokenStore for SqliteStore {
    async fn create_token(&self, token: &TokenRecord, audit: &[AuditEvent]) -> Result<()> {
        let mut w = self.write().await?;
        insert(&mut w.tx, token).await?;
        append_linked(&mut w.tx, audit).await?;
        Ok(w.commit().await?)
    }

    async fn revoke_token(
        &self,
        id: Uuid,
        at: DateTime<Utc>,
        audit: &[AuditEvent],
    ) -> Result<bool> {
        let mut w = self.write().await?;
        let done = sqlx::query(
            "UPDATE kv_api_tokens SET revoked_at = ?1 WHERE id = ?2 AND revoked_at IS NULL",
        )
        .bind(micros(at))
        .bind(id.to_string())
        .execute(&mut *w.tx)
        .await
        .map_err(backend)?;
        if done.rows_affected() == 0 {
            // Nothing changed, so nothing is recorded: the transaction is dropped.
            return Ok(false);
        }
        append_linked(&mut w.tx, audit).await?;
        w.commit().await?;
        Ok(true)
    }

    async fn token(&self, id: Uuid) -> Result<Option<TokenRecord>> {
        let row = sqlx::query(select("WHERE id = ?1"))
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        Ok(row.as_ref().map(decode).transpose()?)
    }

    async fn token_by_digest(&self, digest: &KeyDigest) -> Result<Option<TokenRecord>> {
        let row = sqlx::query(select("WHERE digest = ?1"))
            .bind(digest.as_bytes().as_slice())
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        Ok(row.as_ref().map(decode).transpose()?)
    }

    async fn list_tokens(&self, before: Option<Uuid>, limit: usize) -> Result<Page<TokenRecord>> {
        // Lower-case UUID text sorts as the UUID's bytes: UUIDv7 ids by creation time.
        let rows = sqlx::query(select(
            "WHERE revoked_at IS NULL AND (?1 IS NULL OR id < ?1) ORDER BY id DESC LIMIT ?2",
        ))
        .bind(before.map(|b| b.to_string()))
        .bind(int(limit as u64).saturating_add(1))
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        let items = rows
            .iter()
            .map(decode)
            .collect::<Result<Vec<_>, crate::Error>>()?;
        Ok(Page::over_fetched(items, limit))
    }

    async fn all_tokens(&self) -> Result<Vec<TokenRecord>> {
        let rows = sqlx::query(select("ORDER BY id"))
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        Ok(rows
            .iter()
            .map(decode)
            .collect::<Result<_, crate::Error>>()?)
    }
}
