//! [`UserStore`] on SQLite: `kv_users`.

use async_trait::async_trait;
use keyvault_core::{AuditEvent, Entity, Error, Result, Role, UserRecord, UserStore};
use sqlx::{SqliteConnection, sqlite::SqliteRow};

use super::{is_unique_violation, role};
use crate::{
    SqliteStore,
    audit::append_linked,
    codec::{column, from_micros, micros},
    error::backend,
};

fn decode(row: &SqliteRow) -> Result<UserRecord, crate::Error> {
    Ok(UserRecord {
        username: column(row, "username")?,
        role: role(&column::<String>(row, "role")?, "kv_users.role")?,
        password_hash: column(row, "password_hash")?,
        enabled: column(row, "enabled")?,
        created_at: from_micros(column(row, "created_at")?, "kv_users.created_at")?,
        updated_at: from_micros(column(row, "updated_at")?, "kv_users.updated_at")?,
    })
}

async fn find(
    conn: &mut SqliteConnection,
    username: &str,
) -> Result<Option<UserRecord>, crate::Error> {
    let row = sqlx::query(
        "SELECT username, role, password_hash, enabled, created_at, updated_at \
         FROM kv_users WHERE username = ?1",
    )
    .bind(username)
    .fetch_optional(&mut *conn)
    .await?;
    row.as_ref().map(decode).transpose()
}

/// Inserts a user in the caller's write transaction.
pub(crate) async fn insert(conn: &mut SqliteConnection, user: &UserRecord) -> Result<()> {
    let inserted = sqlx::query(
        "INSERT INTO kv_users (username, role, password_hash, enabled, created_at, updated_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )
    .bind(&user.username)
    .bind(user.role.as_str())
    .bind(&user.password_hash)
    .bind(user.enabled)
    .bind(micros(user.created_at))
    .bind(micros(user.updated_at))
    .execute(&mut *conn)
    .await;
    match inserted {
        Ok(_) => {}
        Err(e) if is_unique_violation(&e) => {
            return Err(Error::Conflict(format!(
                "user {:?} already exists",
                user.username
            )));
        }
        Err(e) => return Err(backend(e)),
    }
    Ok(())
}

#[async_trait]
impl UserStore for SqliteStore {
    async fn create_user(&self, user: &UserRecord, audit: &[AuditEvent]) -> Result<()> {
        let mut w = self.write().await?;
        insert(&mut w.tx, user).await?;
        append_linked(&mut w.tx, audit).await?;
        Ok(w.commit().await?)
    }

    async fn update_user(&self, user: &UserRecord, audit: &[AuditEvent]) -> Result<()> {
        // The write lock is held from here to the commit: no other writer can change the
        // admins counted below or add a session to the user between the checks and the change.
        let mut w = self.write().await?;
        let Some(stored) = find(&mut w.tx, &user.username).await? else {
            return Err(Error::not_found(Entity::User, &user.username));
        };
        if stored.is_enabled_admin() && !user.is_enabled_admin() {
            let others: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM kv_users WHERE role = ?1 AND enabled AND username <> ?2",
            )
            .bind(Role::Admin.as_str())
            .bind(&user.username)
            .fetch_one(&mut *w.tx)
            .await
            .map_err(backend)?;
            if others == 0 {
                return Err(Error::Conflict(format!(
                    "user {:?} is the last enabled admin: enable or promote another admin first",
                    user.username
                )));
            }
        }
        sqlx::query(
            "UPDATE kv_users SET role = ?2, password_hash = ?3, enabled = ?4, updated_at = ?5 \
             WHERE username = ?1",
        )
        .bind(&user.username)
        .bind(user.role.as_str())
        .bind(&user.password_hash)
        .bind(user.enabled)
        .bind(micros(user.updated_at))
        .execute(&mut *w.tx)
        .await
        .map_err(backend)?;
        if stored.credentials_differ(user) {
            sqlx::query("DELETE FROM kv_sessions WHERE username = ?1")
                .bind(&user.username)
                .execute(&mut *w.tx)
                .await
                .map_err(backend)?;
        }
        append_linked(&mut w.tx, audit).await?;
        Ok(w.commit().await?)
    }

    async fn user(&self, username: &str) -> Result<Option<UserRecord>> {
        let mut conn = self.pool.acquire().await.map_err(backend)?;
        Ok(find(&mut conn, username).await?)
    }

    async fn users(&self) -> Result<Vec<UserRecord>> {
        let rows = sqlx::query(
            "SELECT username, role, password_hash, enabled, created_at, updated_at \
             FROM kv_users ORDER BY username",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        Ok(rows
            .iter()
            .map(decode)
            .collect::<Result<_, crate::Error>>()?)
    }
}
