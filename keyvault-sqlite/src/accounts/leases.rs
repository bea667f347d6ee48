//! [`LeaseStore`] on SQLite: `kv_leases`, one conditional upsert per attempt.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use keyvault_core::{Error, LeaseStore, Result};

use crate::{SqliteStore, codec::micros, error::backend};

#[async_trait]
impl LeaseStore for SqliteStore {
    async fn try_lease(
        &self,
        name: &str,
        holder: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<bool> {
        if until <= now {
            return Err(Error::invalid("until", "must be after now"));
        }
        let _turn = self.write_turn().await;
        // The update applies only to a lease of the same holder or one that has lapsed; when
        // it does not, RETURNING gives no row.
        let taken: Option<String> = sqlx::query_scalar(
            "INSERT INTO kv_leases (name, holder, expires_at) VALUES (?1, ?2, ?4) \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, \
               expires_at = excluded.expires_at \
             WHERE kv_leases.holder = excluded.holder OR kv_leases.expires_at <= ?3 \
             RETURNING holder",
        )
        .bind(name)
        .bind(holder)
        .bind(micros(now))
        .bind(micros(until))
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        Ok(taken.is_some())
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<bool> {
        let _turn = self.write_turn().await;
        let done = sqlx::query("DELETE FROM kv_leases WHERE name = ?1 AND holder = ?2")
            .bind(name)
            .bind(holder)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(done.rows_affected() > 0)
    }
}
