//! [`RestoreTarget`] on SQLite: a whole backup in one `BEGIN IMMEDIATE` transaction.

use async_trait::async_trait;
use keyvault_core::{Change, Error, KeyWrite, Restoration, RestoreTarget, Result};
use sqlx::SqliteConnection;

use crate::{
    SqliteStore,
    accounts::{settings, tokens, users},
    audit::append_linked,
    changes::log_changes,
    error::backend,
    keys::{check, write_one},
};

/// Whether any of the tables a restore fills holds a row (revoked tokens and disabled users
/// count: a restore would collide with them).
async fn holds_data(conn: &mut SqliteConnection) -> Result<bool> {
    sqlx::query_scalar::<_, i64>(
        "SELECT EXISTS (SELECT 1 FROM kv_keys) OR EXISTS (SELECT 1 FROM kv_audit) \
         OR EXISTS (SELECT 1 FROM kv_api_tokens) OR EXISTS (SELECT 1 FROM kv_users)",
    )
    .fetch_one(&mut *conn)
    .await
    .map(|found| found != 0)
    .map_err(backend)
}

#[async_trait]
impl RestoreTarget for SqliteStore {
    async fn restore(&self, r: &Restoration) -> Result<()> {
        // One immediate transaction: the write lock is held from the emptiness check to the
        // commit, so no other process writes in between, and a failure anywhere (or a
        // process that dies) rolls the whole restore back; SQLite's journal does the rest.
        let mut w = self.write().await?;
        if holds_data(&mut w.tx).await? {
            return Err(Error::Conflict(
                "the database holds data; restore only into an empty or freshly migrated one"
                    .into(),
            ));
        }
        for (name, value) in &r.settings {
            settings::put(&mut w.tx, name, value).await?;
        }
        for user in &r.users {
            users::insert(&mut w.tx, user).await?;
        }
        for token in &r.tokens {
            tokens::insert(&mut w.tx, token).await?;
        }
        for write in &r.keys {
            // One write at a time: an update is checked against what the writes before it
            // stored.
            check(&mut w.tx, std::slice::from_ref(write)).await?;
            write_one(&mut w.tx, write).await?;
        }
        append_linked(&mut w.tx, &r.audit).await?;
        // Other processes on the file drop what they cached about these keys.
        let changes: Vec<Change> = r.keys.iter().map(KeyWrite::change).collect();
        log_changes(&mut w.tx, &changes, None).await?;
        Ok(w.commit().await?)
    }
}
