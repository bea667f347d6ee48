//! [`SessionStore`] on SQLite: `kv_sessions`.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use keyvault_core::{AuditEvent, Entity, Error, KeyDigest, Result, SessionRecord, SessionStore};
use sqlx::sqlite::SqliteRow;

use super::{digest, is_unique_violation};
use crate::{
    SqliteStore,
    audit::append_linked,
    codec::{column, from_micros, micros},
    error::backend,
};

fn decode(row: &SqliteRow) -> Result<SessionRecord, crate::Error> {
    Ok(SessionRecord {
        digest: digest(&column::<Vec<u8>>(row, "digest")?, "kv_sessions.digest")?,
        username: column(row, "username")?,
        created_at: from_micros(column(row, "created_at")?, "kv_sessions.created_at")?,
        expires_at: from_micros(column(row, "expires_at")?, "kv_sessions.expires_at")?,
    })
}

#[async_trait]
impl SessionStore for SqliteStore {
    async fn create_session(&self, session: &SessionRecord, audit: &[AuditEvent]) -> Result<()> {
        let mut w = self.write().await?;
        // Checked under the write lock: a disable cannot land between this and the insert.
        let enabled: Option<bool> =
            sqlx::query_scalar("SELECT enabled FROM kv_users WHERE username = ?1")
                .bind(&session.username)
                .fetch_optional(&mut *w.tx)
                .await
                .map_err(backend)?;
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
             VALUES (?1, ?2, ?3, ?4)",
        )
        .bind(session.digest.as_bytes().as_slice())
        .bind(&session.username)
        .bind(micros(session.created_at))
        .bind(micros(session.expires_at))
        .execute(&mut *w.tx)
        .await;
        match inserted {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => {
                return Err(Error::Conflict("the session exists already".into()));
            }
            Err(e) => return Err(backend(e)),
        }
        append_linked(&mut w.tx, audit).await?;
        Ok(w.commit().await?)
    }

    async fn session(&self, digest: &KeyDigest) -> Result<Option<SessionRecord>> {
        let row = sqlx::query(
            "SELECT digest, username, created_at, expires_at FROM kv_sessions WHERE digest = ?1",
        )
        .bind(digest.as_bytes().as_slice())
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        Ok(row.as_ref().map(decode).transpose()?)
    }

    async fn end_session(&self, digest: &KeyDigest, audit: &[AuditEvent]) -> Result<bool> {
        let mut w = self.write().await?;
        let done = sqlx::query("DELETE FROM kv_sessions WHERE digest = ?1")
            .bind(digest.as_bytes().as_slice())
            .execute(&mut *w.tx)
            .await
            .map_err(backend)?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        append_linked(&mut w.tx, audit).await?;
        w.commit().await?;
        Ok(true)
    }

    async fn end_user_sessions(&self, username: &str, audit: &[AuditEvent]) -> Result<u64> {
        let mut w = self.write().await?;
        let ended = sqlx::query("DELETE FROM kv_sessions WHERE username = ?1")
            .bind(username)
            .execute(&mut *w.tx)
            .await
            .map_err(backend)?
            .rows_affected();
        if ended == 0 {
            return Ok(0);
        }
        append_linked(&mut w.tx, audit).await?;
        w.commit().await?;
        Ok(ended)
    }

    async fn purge_sessions(&self, expired_before: DateTime<Utc>) -> Result<u64> {
        let _turn = self.write_turn().await;
        let done = sqlx::query("DELETE FROM kv_sessions WHERE expires_at <= ?1")
            .bind(micros(expired_before))
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(done.rows_affected())
    }
}
