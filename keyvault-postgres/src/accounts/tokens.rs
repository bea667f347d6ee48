//! [`TokenStore`] on PostgreSQL: `kv_api_tokens`.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use keyvault_core::{AuditEvent, Error, KeyDigest, Page, Result, TokenRecord, TokenStore};
use sqlx::{PgConnection, Row, postgres::PgRow};
use uuid::Uuid;

use super::{digest, is_unique_violation, role};
use crate::{PgStore, audit::append_in, db};

/// Every column of `kv_api_tokens`, as [`decode`] reads them.
macro_rules! token_columns {
    () => {
        "id, name, role, start, digest, created_at, expires_at, revoked_at, created_by"
    };
}

fn decode(row: &PgRow) -> Result<TokenRecord, crate::Error> {
    Ok(TokenRecord {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        role: role(&row.try_get::<String, _>("role")?, "kv_api_tokens.role")?,
        start: row.try_get("start")?,
        digest: digest(
            &row.try_get::<Vec<u8>, _>("digest")?,
            "kv_api_tokens.digest",
        )?,
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
        revoked_at: row.try_get("revoked_at")?,
        created_by: row.try_get("created_by")?,
    })
}

fn page_size(limit: usize) -> Result<i64> {
    i64::try_from(limit).map_err(|_| Error::invalid("limit", "too large"))
}

/// Inserts a token in the caller's transaction.
pub(crate) async fn insert(conn: &mut PgConnection, token: &TokenRecord) -> Result<()> {
    let inserted = sqlx::query(concat!(
        "INSERT INTO kv_api_tokens (",
        token_columns!(),
        ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
    ))
    .bind(token.id)
    .bind(&token.name)
    .bind(token.role.as_str())
    .bind(&token.start)
    .bind(&token.digest.as_bytes()[..])
    .bind(token.created_at)
    .bind(token.expires_at)
    .bind(token.revoked_at)
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
        Err(e) => return Err(db(e)),
    }
    Ok(())
}

#[async_trait]
impl TokenStore for PgStore {
    async fn create_token(&self, token: &TokenRecord, audit: &[AuditEvent]) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        insert(&mut tx, token).await?;
        append_in(&mut tx, audit).await?;
        tx.commit().await.map_err(db)
    }

    async fn revoke_token(
        &self,
        id: Uuid,
        at: DateTime<Utc>,
        audit: &[AuditEvent],
    ) -> Result<bool> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        let done = sqlx::query(
            "UPDATE kv_api_tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
        )
        .bind(at)
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        if done.rows_affected() == 0 {
            // Nothing changed, so nothing is recorded: the transaction is dropped.
            return Ok(false);
        }
        append_in(&mut tx, audit).await?;
        tx.commit().await.map_err(db)?;
        Ok(true)
    }

    async fn token(&self, id: Uuid) -> Result<Option<TokenRecord>> {
        sqlx::query(concat!(
            "SELECT ",
            token_columns!(),
            " FROM kv_api_tokens WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?
        .as_ref()
        .map(decode)
        .transpose()
        .map_err(Into::into)
    }

    async fn token_by_digest(&self, digest: &KeyDigest) -> Result<Option<TokenRecord>> {
        sqlx::query(concat!(
            "SELECT ",
            token_columns!(),
            " FROM kv_api_tokens WHERE digest = $1"
        ))
        .bind(&digest.as_bytes()[..])
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?
        .as_ref()
        .map(decode)
        .transpose()
        .map_err(Into::into)
    }

    async fn list_tokens(&self, before: Option<Uuid>, limit: usize) -> Result<Page<TokenRecord>> {
        // uuid compares as its bytes: UUIDv7 ids by creation time.
        let rows = sqlx::query(concat!(
            "SELECT ",
            token_columns!(),
            " FROM kv_api_tokens WHERE revoked_at IS NULL AND ($1::uuid IS NULL OR id < $1) \
             ORDER BY id DESC LIMIT $2"
        ))
        .bind(before)
        .bind(page_size(limit)?.saturating_add(1))
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        let items = rows
            .iter()
            .map(decode)
            .collect::<Result<Vec<_>, crate::Error>>()?;
        Ok(Page::over_fetched(items, limit))
    }

    async fn all_tokens(&self) -> Result<Vec<TokenRecord>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            token_columns!(),
            " FROM kv_api_tokens ORDER BY id"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows.iter()
            .map(decode)
            .collect::<Result<_, crate::Error>>()
            .map_err(Into::into)
    }
}
