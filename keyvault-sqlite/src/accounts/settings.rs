//! [`SettingStore`] on SQLite: `kv_settings`.

use async_trait::async_trait;
use keyvault_core::{AuditEvent, Result, SettingStore};
use sqlx::SqliteConnection;

use crate::{SqliteStore, audit::append_linked, error::backend};

/// Stores a setting (replacing its value) in the caller's write transaction.
pub(crate) async fn put(conn: &mut SqliteConnection, name: &str, value: &str) -> Result<()> {
    sqlx::query(
        "INSERT INTO kv_settings (name, value) VALUES (?1, ?2) \
         ON CONFLICT (name) DO UPDATE SET value = excluded.value",
    )
    .bind(name)
    .bind(value)
    .execute(&mut *conn)
    .await
    .map_err(backend)?;
    Ok(())
}

#[async_trait]
impl SettingStore for SqliteStore {
    async fn setting(&self, name: &str) -> Result<Option<String>> {
        sqlx::query_scalar("SELECT value FROM kv_settings WHERE name = ?1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)
    }

    async fn setting_or_insert(&self, name: &str, value: &str) -> Result<String> {
        let _turn = self.write_turn().await;
        // One statement that inserts or keeps, and returns the row that holds either way
        // (another process's insert included: SQLite runs one writer at a time).
        sqlx::query_scalar(
            "INSERT INTO kv_settings (name, value) VALUES (?1, ?2) \
             ON CONFLICT (name) DO UPDATE SET value = kv_settings.value RETURNING value",
        )
        .bind(name)
        .bind(value)
        .fetch_one(&self.pool)
        .await
        .map_err(backend)
    }

    async fn put_setting(&self, name: &str, value: &str, audit: &[AuditEvent]) -> Result<()> {
        let mut w = self.write().await?;
        put(&mut w.tx, name, value).await?;
        append_linked(&mut w.tx, audit).await?;
        Ok(w.commit().await?)
    }

    async fn settings(&self) -> Result<Vec<(String, String)>> {
        sqlx::query_as("SELECT name, value FROM kv_settings ORDER BY name")
            .fetch_all(&self.pool)
            .await
            .map_err(backend)
    }
}
