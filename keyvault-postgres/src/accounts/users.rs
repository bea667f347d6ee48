//! [`UserStore`] on PostgreSQL: `kv_users`.

use async_trait::async_trait;
use keyvault_core::{AuditEvent, Entity, Error, Result, Role, UserRecord, UserStore};
use sqlx::{PgConnection, Row, postgres::PgRow};

use super::{is_unique_violation, role};
use crate::{PgStore, audit::append_in, db};

fn decode(row: &PgRow) -> Result<UserRecord, crate::Error> {
    Ok(UserRecord {
        username: row.try_get("username")?,
        role: role(&row.try_get::<String, _>("role")?, "kv_users.role")?,
        password_hash: row.try_get("password_hash")?,
        enabled: row.try_get("enabled")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

async fn find(conn: &mut PgConnection, username: &str) -> Result<Option<UserRecord>, crate::Error> {
    let row = sqlx::query(
        "SELECT username, role, password_hash, enabled, created_at, updated_at \
         FROM kv_users WHERE username = $1",
    )
    .bind(username)
    .fetch_optional(&mut *conn)
    .await?;
    row.as_ref().map(decode).transpose()
}

/// Inserts a user in the caller's transaction.
pub(crate) async fn insert(conn: &mut PgConnection, user: &UserRecord) -> Result<()> {
    let inserted = sqlx::query(
        "INSERT INTO kv_users (username, role, password_hash, enabled, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&user.username)
    .bind(user.role.as_str())
    .bind(&user.password_hash)
    .bind(user.enabled)
    .bind(user.created_at)
    .bind(user.updated_at)
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
        Err(e) => return Err(db(e)),
    }
    Ok(())
}

#[async_trait]
impl UserStore for PgStore {
    async fn create_user(&self, user: &UserRecord, audit: &[AuditEvent]) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        insert(&mut tx, user).await?;
        append_in(&mut tx, audit).await?;
        tx.commit().await.map_err(db)
    }

    async fn update_user(&self, user: &UserRecord, audit: &[AuditEvent]) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        // Two admins demoting each other at once must not both succeed: this mode conflicts
        // with itself and with every row write to the table, so user changes take turns
        // (reads do not wait), and the enabled admins counted below stay as counted until
        // the commit. Rare writes; no deadlock between row locks.
        sqlx::query("LOCK TABLE kv_users IN SHARE ROW EXCLUSIVE MODE")
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        let Some(stored) = find(&mut tx, &user.username).await? else {
            return Err(Error::not_found(Entity::User, &user.username));
        };
        if stored.is_enabled_admin() && !user.is_enabled_admin() {
            let others: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM kv_users WHERE role = $1 AND enabled AND username <> $2",
            )
            .bind(Role::Admin.as_str())
            .bind(&user.username)
            .fetch_one(&mut *tx)
            .await
            .map_err(db)?;
            if others == 0 {
                return Err(Error::Conflict(format!(
                    "user {:?} is the last enabled admin: enable or promote another admin first",
                    user.username
                )));
            }
        }
        sqlx::query(
            "UPDATE kv_users SET role = $2, password_hash = $3, enabled = $4, updated_at = $5 \
             WHERE username = $1",
        )
        .bind(&user.username)
        .bind(user.role.as_str())
        .bind(&user.password_hash)
        .bind(user.enabled)
        .bind(user.updated_at)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        if stored.credentials_differ(user) {
            sqlx::query("DELETE FROM kv_sessions WHERE username = $1")
                .bind(&user.username)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
        }
        append_in(&mut tx, audit).await?;
        tx.commit().await.map_err(db)
    }

    async fn user(&self, username: &str) -> Result<Option<UserRecord>> {
        let mut conn = self.pool.acquire().await.map_err(db)?;
        Ok(find(&mut conn, username).await?)
    }

    async fn users(&self) -> Result<Vec<UserRecord>> {
        let rows = sqlx::query(
            "SELECT username, role, password_hash, enabled, created_at, updated_at \
             FROM kv_users ORDER BY username",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows.iter()
            .map(decode)
            .collect::<Result<_, crate::Error>>()
            .map_err(Into::into)
    }
}
