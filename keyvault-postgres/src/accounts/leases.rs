//! [`LeaseStore`] on PostgreSQL: `kv_leases`, one conditional upsert per attempt.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use keyvault_core::{Error, LeaseStore, Result};

use crate::{PgStore, db};

#[async_trait]
impl LeaseStore for PgStore {
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
        // The conflicting row is locked and the update applies only to the same holder's
        // lease or a lapsed one; otherwise RETURNING gives no row. Concurrent attempts on one
        // name wait for each other, so exactly one of them takes a free lease.
        let taken: Option<String> = sqlx::query_scalar(
            "INSERT INTO kv_leases (name, holder, expires_at) VALUES ($1, $2, $4) \
             ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, \
               expires_at = EXCLUDED.expires_at \
             WHERE kv_leases.holder = EXCLUDED.holder OR kv_leases.expires_at <= $3 \
             RETURNING holder",
        )
        .bind(name)
        .bind(holder)
        .bind(now)
        .bind(until)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        Ok(taken.is_some())
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM kv_leases WHERE name = $1 AND holder = $2")
            .bind(name)
            .bind(holder)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(done.rows_affected() > 0)
    }
}
