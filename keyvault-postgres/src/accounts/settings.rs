//! [`SettingStore`] on PostgreSQL: `kv_settings`.

use async_trait::async_trait;
use keyvault_core::{AuditEvent, Result, SettingStore};
use sqlx::PgConnection;

use crate::{PgStore, audit::append_in, db};

/// Stores a setting (replacing its value) in the caller's transaction.
pub(crate) async fn put(conn: &mut PgConnection, name: &str, value: &str) -> Result<()> {
    sqlx::query(
        "INSERT INTO kv_settings (name, value) VALUES ($1, $2) \
         ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value",
    )
    .bind(name)
    .bind(value)
    .execute(&mut *conn)
    .await
    .map_err(db)?;
    Ok(())
}

#[async_trait]
impl SettingStore for PgStore {
    async fn setting(&self, name: &str) -> Result<Option<String>> {
        sqlx::query_scalar("SELECT value FROM kv_settings WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)
    }

    async fn setting_or_insert(&self, name: &str, value: &str) -> Result<String> {
        // DO UPDATE (to the stored value), not DO NOTHING: it returns the row that holds even
        // when another transaction inserted it after this statement's snapshot, where an
        // INSERT … DO NOTHING followed by a SELECT in one statement would see no row.
        sqlx::query_scalar(
            "INSERT INTO kv_settings (name, value) VALUES ($1, $2) \
             ON CONFLICT (name) DO UPDATE SET value = kv_settings.value RETURNING value",
        )
        .bind(name)
        .bind(value)
        .fetch_one(&self.pool)
        .await
        .map_err(db)
    }

    async fn put_setting(&self, name: &str, value: &str, audit: &[AuditEvent]) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        put(&mut tx, name, value).await?;
        append_in(&mut tx, audit).await?;
        tx.commit().await.map_err(db)
    }

    async fn settings(&self) -> Result<Vec<(String, String)>> {
        sqlx::query_as("SELECT name, value FROM kv_settings ORDER BY name")
            .fetch_all(&self.pool)
            .await
            .map_err(db)
    }
}
