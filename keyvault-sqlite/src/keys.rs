//! [`KeyStore`] on SQLite.

use std::collections::HashSet;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use keyvault_core::{
    AuditEvent, Change, Error, KeyDigest, KeyId, KeyQuery, KeyRecord, KeyStore, KeyWrite, Page,
    Result,
};
use sqlx::{AssertSqlSafe, QueryBuilder, Sqlite, SqliteConnection};

use crate::{
    SqliteStore,
    audit::append_linked,
    changes::log_changes,
    codec::{KEY_COLUMNS, KeyColumns, decode_key, id_text, int, micros, opt_micros},
    error::backend,
};

/// A key query; every piece is a constant of this crate, never input.
/// Key records from their rows.
fn records(rows: &[sqlx::sqlite::SqliteRow]) -> Result<Vec<KeyRecord>> {
    Ok(rows
        .iter()
        .map(decode_key)
        .collect::<Result<_, crate::Error>>()?)
}

fn select(filter: &str) -> AssertSqlSafe<String> {
    AssertSqlSafe(format!("SELECT {KEY_COLUMNS} FROM kv_keys {filter}"))
}

/// Checks the whole batch against the stored state before anything is written, in the order
/// and with the errors of the in-memory reference.
pub(crate) async fn check(conn: &mut SqliteConnection, writes: &[KeyWrite]) -> Result<()> {
    let mut inserted = HashSet::new();
    for w in writes {
        match w {
            KeyWrite::Insert(r) => {
                let taken: Option<i64> =
                    sqlx::query_scalar("SELECT 1 FROM kv_keys WHERE id = ?1 OR digest = ?2")
                        .bind(id_text(r.id))
                        .bind(r.digest.as_bytes().as_slice())
                        .fetch_optional(&mut *conn)
                        .await
                        .map_err(backend)?;
                if taken.is_some() || !inserted.insert(r.id) {
                    return Err(Error::Conflict(format!("key {} already exists", r.id)));
                }
            }
            KeyWrite::Update { record, .. } => {
                let rev: Option<i64> =
                    sqlx::query_scalar("SELECT revision FROM kv_keys WHERE id = ?1")
                        .bind(id_text(record.id))
                        .fetch_optional(&mut *conn)
                        .await
                        .map_err(backend)?;
                match rev {
                    None => return Err(Error::key_not_found(record.id)),
                    Some(rev) if rev.checked_add(1) != Some(int(record.revision)) => {
                        return Err(Error::Conflict(format!(
                            "key {} was changed concurrently",
                            record.id
                        )));
                    }
                    Some(_) => {}
                }
            }
            KeyWrite::Delete { id, .. } => {
                let found: Option<i64> = sqlx::query_scalar("SELECT 1 FROM kv_keys WHERE id = ?1")
                    .bind(id_text(*id))
                    .fetch_optional(&mut *conn)
                    .await
                    .map_err(backend)?;
                if found.is_none() {
                    return Err(Error::key_not_found(id));
                }
            }
        }
    }
    Ok(())
}

/// Opens the balance of a new quota (an existing one, shared with a rotated key, stays).
async fn open_balance(
    conn: &mut SqliteConnection,
    r: &KeyRecord,
    replace: bool,
) -> Result<(), crate::Error> {
    let Some(c) = &r.credits else { return Ok(()) };
    // The refill interval holding `updated_at` counts as applied: the balance given stands
    // until the next interval starts.
    let refilled_for = c
        .refill
        .map(|rf| micros(rf.interval.start_of(r.updated_at)));
    // The refill is kept beside the balance: only callers holding it apply it
    // (see credits.rs).
    let sql = if replace {
        "INSERT INTO kv_credits (quota_id, remaining, refilled_for, refill_spec) \
         VALUES (?1, ?2, ?3, ?4) \
         ON CONFLICT (quota_id) DO UPDATE SET remaining = excluded.remaining, \
         refilled_for = excluded.refilled_for, refill_spec = excluded.refill_spec"
    } else {
        "INSERT INTO kv_credits (quota_id, remaining, refilled_for, refill_spec) \
         VALUES (?1, ?2, ?3, ?4) \
         ON CONFLICT (quota_id) DO NOTHING"
    };
    sqlx::query(sql)
        .bind(id_text(r.quota_id))
        .bind(int(c.remaining))
        .bind(refilled_for)
        .bind(c.refill_spec())
        .execute(&mut *conn)
        .await?;
    Ok(())
}

pub(crate) async fn write_one(
    conn: &mut SqliteConnection,
    w: &KeyWrite,
) -> Result<(), crate::Error> {
    match w {
        KeyWrite::Insert(r) => {
            open_balance(conn, r, false).await?;
            let sql = format!(
                "INSERT INTO kv_keys ({KEY_COLUMNS}) VALUES \
                 (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, \
                 ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28)"
            );
            KeyColumns::encode(r)?
                .bind(sqlx::query::<Sqlite>(AssertSqlSafe(sql)))
                .execute(&mut *conn)
                .await?;
        }
        KeyWrite::Update {
            record,
            reset_credits,
        } => {
            if *reset_credits {
                if record.credits.is_some() {
                    open_balance(conn, record, true).await?;
                } else {
                    sqlx::query("DELETE FROM kv_credits WHERE quota_id = ?1")
                        .bind(id_text(record.quota_id))
                        .execute(&mut *conn)
                        .await?;
                }
            }
            // Every column is set: an update carries the full new state.
            let sets: Vec<String> = KEY_COLUMNS
                .split(',')
                .enumerate()
                .skip(1)
                .map(|(i, c)| format!("{} = ?{}", c.trim(), i + 1))
                .collect();
            let sql = format!("UPDATE kv_keys SET {} WHERE id = ?1", sets.join(", "));
            KeyColumns::encode(record)?
                .bind(sqlx::query::<Sqlite>(AssertSqlSafe(sql)))
                .execute(&mut *conn)
                .await?;
        }
        KeyWrite::Delete { id, .. } => {
            let quota: Option<String> =
                sqlx::query_scalar("DELETE FROM kv_keys WHERE id = ?1 RETURNING quota_id")
                    .bind(id_text(*id))
                    .fetch_optional(&mut *conn)
                    .await?;
            if let Some(quota) = quota {
                // The balance goes with the last key of its quota.
                sqlx::query(
                    "DELETE FROM kv_credits WHERE quota_id = ?1 \
                     AND NOT EXISTS (SELECT 1 FROM kv_keys WHERE quota_id = ?1)",
                )
                .bind(quota)
                .execute(&mut *conn)
                .await?;
            }
        }
    }
    Ok(())
}

#[async_trait]
impl KeyStore for SqliteStore {
    async fn apply(&self, writes: &[KeyWrite], audit: &[AuditEvent]) -> Result<()> {
        let mut w = self.write().await?;
        check(&mut w.tx, writes).await?;
        for write in writes {
            write_one(&mut w.tx, write).await?;
        }
        append_linked(&mut w.tx, audit).await?;
        let changes: Vec<Change> = writes.iter().map(KeyWrite::change).collect();
        log_changes(&mut w.tx, &changes, None).await?;
        // Dropping the transaction on any error above rolls everything back.
        Ok(w.commit().await?)
    }

    async fn get(&self, id: KeyId) -> Result<Option<KeyRecord>> {
        let row = sqlx::query(select("WHERE id = ?1"))
            .bind(id_text(id))
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        Ok(row.as_ref().map(decode_key).transpose()?)
    }

    async fn find_by_digest(&self, digest: &KeyDigest) -> Result<Option<KeyRecord>> {
        let row = sqlx::query(select("WHERE digest = ?1"))
            .bind(digest.as_bytes().as_slice())
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        Ok(row.as_ref().map(decode_key).transpose()?)
    }

    async fn list(&self, q: &KeyQuery) -> Result<Page<KeyRecord>> {
        let limit = q.limit;
        // Only the filters given, so that SQLite walks the index that serves them
        // (`kv_keys_owner`, `kv_keys_enabled`) instead of every key past a `? IS NULL OR`.
        // A search on its own scans `kv_keys_search` (the columns it tests, by id): SQLite's
        // planner prefers the primary key's order and would fetch every row to test it.
        let index = if q.search.is_some() && q.owner_id.is_none() {
            " INDEXED BY kv_keys_search"
        } else {
            ""
        };
        let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(format!(
            "SELECT {KEY_COLUMNS} FROM kv_keys{index} WHERE 1 = 1"
        ));
        if let Some(before) = q.before {
            qb.push(" AND id < ").push_bind(id_text(before));
        }
        if let Some(owner) = &q.owner_id {
            qb.push(" AND owner_id = ").push_bind(owner.clone());
        }
        if let Some(search) = &q.search {
            let s = search.to_lowercase();
            qb.push(" AND (instr(name_lower, ")
                .push_bind(s.clone())
                .push(") > 0 OR instr(start_lower, ")
                .push_bind(s)
                .push(") > 0)");
        }
        if let Some(enabled) = q.enabled {
            qb.push(" AND enabled = ").push_bind(enabled);
        }
        qb.push(" ORDER BY id DESC LIMIT ")
            .push_bind(int(limit as u64).saturating_add(1));
        let rows = qb.build().fetch_all(&self.pool).await.map_err(backend)?;
        Ok(Page::over_fetched(records(&rows)?, limit))
    }

    async fn due_for_rotation(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<KeyRecord>> {
        let sql = select(
            "WHERE next_rotation_at IS NOT NULL AND next_rotation_at <= ?1 AND enabled = 1 \
             AND superseded_by IS NULL AND (effective_expiry IS NULL OR effective_expiry > ?1) \
             ORDER BY next_rotation_at, id LIMIT ?2",
        );
        let rows = sqlx::query(sql)
            .bind(micros(now))
            .bind(int(limit as u64))
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        records(&rows)
    }

    async fn watched_keys(&self, expires_before: DateTime<Utc>) -> Result<Vec<KeyRecord>> {
        let sql = select("WHERE enabled = 1 AND (credits IS NOT NULL OR expires_at <= ?1)");
        let rows = sqlx::query(sql)
            .bind(micros(expires_before))
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        records(&rows)
    }

    async fn expired_before(&self, before: DateTime<Utc>, limit: usize) -> Result<Vec<KeyRecord>> {
        let sql = select(
            "WHERE effective_expiry IS NOT NULL AND effective_expiry <= ?1 ORDER BY id LIMIT ?2",
        );
        let rows = sqlx::query(sql)
            .bind(opt_micros(Some(before)))
            .bind(int(limit as u64))
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        records(&rows)
    }
}

impl SqliteStore {
    /// Sets `last_used_at` of each key to the latest of its stored value and the given time
    /// (usage sinks call this once per batch).
    pub(crate) async fn touch_keys(
        conn: &mut SqliteConnection,
        last_used: impl IntoIterator<Item = (KeyId, DateTime<Utc>)>,
    ) -> Result<(), crate::Error> {
        for (id, ts) in last_used {
            sqlx::query(
                "UPDATE kv_keys SET last_used_at = max(coalesce(last_used_at, ?2), ?2) \
                 WHERE id = ?1",
            )
            .bind(id_text(id))
            .bind(micros(ts))
            .execute(&mut *conn)
            .await?;
        }
        Ok(())
    }
}
