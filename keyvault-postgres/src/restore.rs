//! [`RestoreTarget`] on PostgreSQL: a whole backup in one transaction.

use async_trait::async_trait;
use keyvault_core::{Error, KeyWrite, Restoration, RestoreTarget, Result};
use sqlx::PgConnection;

use crate::{
    PgStore,
    accounts::{settings, tokens, users},
    audit::append_in,
    db,
    keys::{delete, insert, update},
};

/// Whether any of the tables a restore fills holds a row (revoked tokens and disabled users
/// count: a restore would collide with them).
async fn holds_data(conn: &mut PgConnection) -> Result<bool> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM kv_keys) OR EXISTS (SELECT 1 FROM kv_audit) \
         OR EXISTS (SELECT 1 FROM kv_api_tokens) OR EXISTS (SELECT 1 FROM kv_users)",
    )
    .fetch_one(&mut *conn)
    .await
    .map_err(db)
}

#[async_trait]
impl RestoreTarget for PgStore {
    async fn restore(&self, r: &Restoration) -> Result<()> {
        // One transaction: a failed statement, a lost connection or a server that dies
        // before the commit leaves nothing behind (PostgreSQL rolls back what a dropped or
        // terminated session had not committed).
        let mut tx = self.pool.begin().await.map_err(db)?;
        // Every audited write takes the chain's tail first; holding it makes those writers
        // wait for the restore instead of slipping a record in after the emptiness check.
        sqlx::query("SELECT seq FROM kv_audit_head WHERE id FOR UPDATE")
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        if holds_data(&mut tx).await? {
            return Err(Error::Conflict(
                "the database holds data; restore only into an empty or freshly migrated one"
                    .into(),
            ));
        }
        for (name, value) in &r.settings {
            settings::put(&mut tx, name, value).await?;
        }
        for user in &r.users {
            users::insert(&mut tx, user).await?;
        }
        for token in &r.tokens {
            tokens::insert(&mut tx, token).await?;
        }
        for write in &r.keys {
            match write {
                KeyWrite::Insert(k) => insert(&mut tx, k).await?,
                KeyWrite::Update {
                    record,
                    reset_credits,
                } => update(&mut tx, record, *reset_credits).await?,
                KeyWrite::Delete { id, .. } => delete(&mut tx, *id).await?,
            }
        }
        append_in(&mut tx, &r.audit).await?;
        tx.commit().await.map_err(db)
    }
}
