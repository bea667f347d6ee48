//! [`SessionStore`] on PostgreSQL: `kv_sessions`.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use keyvault_core::{AuditEvent, Entity, Error, KeyDigest, Result, SessionRecord, SessionStore};
use sqlx::{Row, postgres::PgRow};

use super::{digest, is_unique_violation};
use crate::{PgStore, audit::append_in, db};

fn decode(row: &PgRow) -> Result<SessionRecord, crate::Error> {
    Ok(SessionRecord {
        digest: digest(&row.try_get::<Vec<u8>, _>("digest")?, "kv_sessions.digest")?,
        username: row.try_get("username")?,
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
    })
}

#[async_trait]
impl SessionStore for PgStore {
    async fn create_session(&self, session: &SessionRecord, audit: &[AuditEvent]) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        // The user's row stays share-locked until the commit: a concurrent disable (or
        // password change) waits for this session and then ends it, or this waits for the
        // disable and sees it.
        let enabled: Option<bool> =
            sqlx::query_scalar("SELECT enabled FROM kv_users WHERE username = $1 FOR SHARE")
                .bind(&session.username)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db)?;
        match enabled {
            None => return Err(Error::not_found(Entity::User, &session.username)),
            Some(false) => {
                return Err(Error::Conflict(format!(
                    "user {:?} is disabled",
                    session.username
                )));
            }
            Some(true) => {}
        }
        let inserted = sqlx::query(
            "INSERT INTO kv_sessions (digest, username, created_at, expires_at) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(&session.digest.as_bytes()[..])
        .bind(&session.username)
        .bind(session.created_at)
        .bind(session.expires_at)
        .execute(&mut *tx)
        .await;
        match inserted {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => {
                return Err(Error::Conflict("the session exists already".into()));
            }
            Err(e) => return Err(db(e)),
        }
        append_in(&mut tx, audit).await?;
        tx.commit().await.map_err(db)
    }

    async fn session(&self, digest: &KeyDigest) -> Result<Option<SessionRecord>> {
        sqlx::query(
            "SELECT digest, username, created_at, expires_at FROM kv_sessions WHERE digest = $1",
        )
        .bind(&digest.as_bytes()[..])
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?
        .as_ref()
        .map(decode)
        .transpose()
        .map_err(Into::into)
    }

    async fn end_session(&self, digest: &KeyDigest, audit: &[AuditEvent]) -> Result<bool> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        let done = sqlx::query("DELETE FROM kv_sessions WHERE digest = $1")
            .bind(&digest.as_bytes()[..])
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        append_in(&mut tx, audit).await?;
        tx.commit().await.map_err(db)?;
        Ok(true)
    }

    async fn end_user_sessions(&self, username: &str, audit: &[AuditEvent]) -> Result<u64> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        let ended = sqlx::query("DELETE FROM kv_sessions WHERE username = $1")
            .bind(username)
            .execute(&mut *tx)
            .await
            .map_err(db)?
            .rows_affected();
        if ended == 0 {
            return Ok(0);
        }
        append_in(&mut tx, audit).await?;
        tx.commit().await.map_err(db)?;
        Ok(ended)
    }

    async fn purge_sessions(&self, expired_before: DateTime<Utc>) -> Result<u64> {
        let done = sqlx::query("DELETE FROM kv_sessions WHERE expires_at <= $1")
            .bind(expired_before)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(done.rows_affected())
    }
}
