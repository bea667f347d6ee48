//! The key store: `kv_keys`, written with its audit records in one transaction.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use keyvault_core::{
    AuditEvent, Credits, Error, KeyDigest, KeyId, KeyQuery, KeyRecord, KeyStore, KeyWrite, Page,
    Prefix, RotationPolicy, SealKey,
};
use serde_json::{Map, Value};
use sqlx::{PgConnection, Row, postgres::PgRow};
use uuid::Uuid;

use crate::{PgStore, Result, corrupt, credits, db, to_i64, to_u64};

/// Every column of `kv_keys`, as [`record_from_row`] reads them.
macro_rules! key_columns {
    () => {
        "id, quota_id, name, owner_id, prefix, start, digest, created_at, updated_at, enabled, \
         expires_at, scopes, ip_allowlist, credits, ratelimits, metadata, rotation, \
         next_rotation_at, rotated_from, superseded_by, grace_until, last_used_at, revision, \
         seal_key, successor"
    };
}

const INSERT_KEY: &str = "INSERT INTO kv_keys (id, quota_id, name, owner_id, prefix, start, \
    digest, created_at, updated_at, enabled, expires_at, scopes, ip_allowlist, credits, \
    ratelimits, metadata, rotation, next_rotation_at, rotated_from, superseded_by, grace_until, \
    seal_key, successor, last_used_at, revision) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, \
    $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25)";

// last_used_at only moves forward: usage sinks update it between a management read and its
// write, and the write's older copy must not move it back.
const UPDATE_KEY: &str = "UPDATE kv_keys SET quota_id = $2, name = $3, owner_id = $4, \
    prefix = $5, start = $6, digest = $7, created_at = $8, updated_at = $9, enabled = $10, \
    expires_at = $11, scopes = $12, ip_allowlist = $13, credits = $14, ratelimits = $15, \
    metadata = $16, rotation = $17, next_rotation_at = $18, rotated_from = $19, \
    superseded_by = $20, grace_until = $21, seal_key = $22, successor = $23, revision = $24, \
    last_used_at = GREATEST(last_used_at, $26) WHERE id = $1 AND revision = $25";

/// A record's columns, encoded.
struct Encoded {
    credits: Option<Value>,
    ratelimits: Value,
    metadata: Value,
    rotation: Option<Value>,
    allowlist: Vec<String>,
    seal_key: Option<Vec<u8>>,
    successor: Option<Value>,
    revision: i64,
}

fn json<T: serde::Serialize>(value: &T, column: &'static str) -> Result<Value, crate::Error> {
    serde_json::to_value(value).map_err(|source| crate::Error::Encode { column, source })
}

fn encode(r: &KeyRecord) -> Result<Encoded> {
    Ok(Encoded {
        credits: r.credits.as_ref().map(|c| json(c, "credits")).transpose()?,
        ratelimits: keyvault_core::stored_limits(&r.ratelimits, &r.ratelimits_since),
        metadata: Value::Object(r.metadata.clone()),
        rotation: r
            .rotation
            .as_ref()
            .map(|p| json(p, "rotation"))
            .transpose()?,
        allowlist: r.ip_allowlist.iter().map(ToString::to_string).collect(),
        seal_key: r.seal_key.map(|k| k.as_bytes().to_vec()),
        successor: r
            .successor
            .as_ref()
            .map(|s| json(s, "successor"))
            .transpose()?,
        revision: to_i64(r.revision, "revision")?,
    })
}

fn from_json<T: serde::de::DeserializeOwned>(
    value: Value,
    column: &'static str,
) -> Result<T, crate::Error> {
    serde_json::from_value(value).map_err(|e| corrupt(column, e))
}

/// What kind of JSON value this is, for a message that shows no stored data.
fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Reads a row selected with `key_columns!()`.
/// Key records from their rows.
fn records(rows: &[PgRow]) -> Result<Vec<KeyRecord>> {
    rows.iter()
        .map(record_from_row)
        .collect::<Result<_, crate::Error>>()
        .map_err(Into::into)
}

pub(crate) fn record_from_row(row: &PgRow) -> Result<KeyRecord, crate::Error> {
    let digest: Vec<u8> = row.try_get("digest")?;
    let prefix: String = row.try_get("prefix")?;
    let allowlist: Vec<String> = row.try_get("ip_allowlist")?;
    let metadata: Value = row.try_get("metadata")?;
    let metadata: Map<String, Value> = match metadata {
        Value::Object(m) => m,
        other => {
            return Err(corrupt(
                "metadata",
                format!("not a JSON object but {}", json_kind(&other)),
            ));
        }
    };
    let credits: Option<Value> = row.try_get("credits")?;
    let rotation: Option<Value> = row.try_get("rotation")?;
    let id = |col: &str| -> Result<KeyId, crate::Error> {
        row.try_get::<Uuid, _>(col)
            .map(KeyId::from_uuid)
            .map_err(crate::Error::from)
    };
    let opt_id = |col: &str| -> Result<Option<KeyId>, crate::Error> {
        row.try_get::<Option<Uuid>, _>(col)
            .map(|u| u.map(KeyId::from_uuid))
            .map_err(crate::Error::from)
    };
    let (ratelimits, ratelimits_since) =
        keyvault_core::limits_from_stored(row.try_get("ratelimits")?)
            .map_err(|e| corrupt("ratelimits", e))?;
    Ok(KeyRecord {
        id: id("id")?,
        quota_id: id("quota_id")?,
        name: row.try_get("name")?,
        owner_id: row.try_get("owner_id")?,
        prefix: Prefix::any(&prefix).map_err(|e| corrupt("prefix", e))?,
        start: row.try_get("start")?,
        digest: KeyDigest::from_slice(&digest).map_err(|e| corrupt("digest", e))?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        enabled: row.try_get("enabled")?,
        expires_at: row.try_get("expires_at")?,
        scopes: row.try_get("scopes")?,
        ip_allowlist: allowlist
            .iter()
            .map(|s| s.parse().map_err(|e| corrupt("ip_allowlist", e)))
            .collect::<Result<_, crate::Error>>()?,
        credits: credits
            .map(|c| from_json::<Credits>(c, "credits"))
            .transpose()?,
        ratelimits,
        ratelimits_since,
        metadata,
        rotation: rotation
            .map(|p| from_json::<RotationPolicy>(p, "rotation"))
            .transpose()?,
        next_rotation_at: row.try_get("next_rotation_at")?,
        rotated_from: opt_id("rotated_from")?,
        superseded_by: opt_id("superseded_by")?,
        grace_until: row.try_get("grace_until")?,
        last_used_at: row.try_get("last_used_at")?,
        revision: to_u64(row.try_get("revision")?, "revision")?,
        seal_key: row
            .try_get::<Option<Vec<u8>>, _>("seal_key")?
            .map(|b| SealKey::from_slice(&b).map_err(|e| corrupt("seal_key", e)))
            .transpose()?,
        successor: row
            .try_get::<Option<Value>, _>("successor")?
            .map(|v| from_json(v, "successor"))
            .transpose()?,
    })
}

/// Whether a database error is a unique-constraint violation.
fn is_unique_violation(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .is_some_and(|d| d.code().as_deref() == Some("23505"))
}

/// Binds `$1`–`$23`, the columns `INSERT_KEY` and `UPDATE_KEY` share, in table order.
fn bind_record<'q>(
    q: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    r: &'q KeyRecord,
    e: &'q Encoded,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    q.bind(r.id.as_uuid())
        .bind(r.quota_id.as_uuid())
        .bind(&r.name)
        .bind(&r.owner_id)
        .bind(r.prefix.as_str())
        .bind(&r.start)
        .bind(&r.digest.as_bytes()[..])
        .bind(r.created_at)
        .bind(r.updated_at)
        .bind(r.enabled)
        .bind(r.expires_at)
        .bind(&r.scopes)
        .bind(&e.allowlist)
        .bind(&e.credits)
        .bind(&e.ratelimits)
        .bind(&e.metadata)
        .bind(&e.rotation)
        .bind(r.next_rotation_at)
        .bind(r.rotated_from.map(|k| *k.as_uuid()))
        .bind(r.superseded_by.map(|k| *k.as_uuid()))
        .bind(r.grace_until)
        .bind(&e.seal_key)
        .bind(&e.successor)
}

pub(crate) async fn insert(conn: &mut PgConnection, r: &KeyRecord) -> Result<()> {
    let e = encode(r)?;
    let last_used = r.last_used_at;
    let res = bind_record(sqlx::query(INSERT_KEY), r, &e)
        .bind(last_used)
        .bind(e.revision)
        .execute(&mut *conn)
        .await;
    match res {
        Ok(_) => {}
        Err(e) if is_unique_violation(&e) => {
            return Err(Error::Conflict(format!("key {} already exists", r.id)));
        }
        Err(e) => return Err(db(e)),
    }
    if let Some(c) = &r.credits {
        credits::open(conn, r.quota_id, c, r.updated_at, false).await?;
    }
    Ok(())
}

pub(crate) async fn update(
    conn: &mut PgConnection,
    r: &KeyRecord,
    reset_credits: bool,
) -> Result<()> {
    let e = encode(r)?;
    let expected = e
        .revision
        .checked_sub(1)
        .ok_or_else(|| Error::Conflict(format!("key {} was changed concurrently", r.id)))?;
    let res = bind_record(sqlx::query(UPDATE_KEY), r, &e)
        .bind(e.revision)
        .bind(expected)
        .bind(r.last_used_at)
        .execute(&mut *conn)
        .await;
    let done = match res {
        Ok(done) => done,
        Err(e) if is_unique_violation(&e) => {
            return Err(Error::Conflict(format!(
                "another key has the digest of key {}",
                r.id
            )));
        }
        Err(e) => return Err(db(e)),
    };
    if done.rows_affected() == 0 {
        let exists = sqlx::query("SELECT 1 FROM kv_keys WHERE id = $1")
            .bind(r.id.as_uuid())
            .fetch_optional(&mut *conn)
            .await
            .map_err(db)?
            .is_some();
        return Err(if exists {
            Error::Conflict(format!("key {} was changed concurrently", r.id))
        } else {
            Error::key_not_found(r.id)
        });
    }
    if reset_credits {
        match &r.credits {
            Some(c) => credits::open(conn, r.quota_id, c, r.updated_at, true).await?,
            None => credits::close(conn, r.quota_id).await?,
        }
    }
    Ok(())
}

pub(crate) async fn delete(conn: &mut PgConnection, id: KeyId) -> Result<()> {
    let quota: Option<Uuid> =
        sqlx::query_scalar("DELETE FROM kv_keys WHERE id = $1 RETURNING quota_id")
            .bind(id.as_uuid())
            .fetch_optional(&mut *conn)
            .await
            .map_err(db)?;
    let Some(quota) = quota else {
        return Err(Error::key_not_found(id));
    };
    // The balance belongs to the quota: it goes with the last key that spends from it.
    sqlx::query(
        "DELETE FROM kv_credits WHERE quota_id = $1 \
         AND NOT EXISTS (SELECT 1 FROM kv_keys WHERE quota_id = $1)",
    )
    .bind(quota)
    .execute(&mut *conn)
    .await
    .map_err(db)?;
    Ok(())
}

fn page_size(limit: usize, field: &str) -> Result<i64> {
    i64::try_from(limit).map_err(|_| Error::invalid(field, "too large"))
}

#[async_trait]
impl KeyStore for PgStore {
    async fn apply(&self, writes: &[KeyWrite], audit: &[AuditEvent]) -> Result<()> {
        if writes.is_empty() && audit.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await.map_err(db)?;
        for w in writes {
            match w {
                KeyWrite::Insert(r) => insert(&mut tx, r).await?,
                KeyWrite::Update {
                    record,
                    reset_credits,
                } => update(&mut tx, record, *reset_credits).await?,
                KeyWrite::Delete { id, .. } => delete(&mut tx, *id).await?,
            }
        }
        // Last, so that the chain's tail is locked for as short a time as possible.
        crate::audit::append_in(&mut tx, audit).await?;
        tx.commit().await.map_err(db)
    }

    async fn get(&self, id: KeyId) -> Result<Option<KeyRecord>> {
        sqlx::query(concat!(
            "SELECT ",
            key_columns!(),
            " FROM kv_keys WHERE id = $1"
        ))
        .bind(id.as_uuid())
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?
        .as_ref()
        .map(record_from_row)
        .transpose()
        .map_err(Into::into)
    }

    async fn find_by_digest(&self, digest: &KeyDigest) -> Result<Option<KeyRecord>> {
        sqlx::query(concat!(
            "SELECT ",
            key_columns!(),
            " FROM kv_keys WHERE digest = $1"
        ))
        .bind(&digest.as_bytes()[..])
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?
        .as_ref()
        .map(record_from_row)
        .transpose()
        .map_err(Into::into)
    }

    async fn list(&self, q: &KeyQuery) -> Result<Page<KeyRecord>> {
        let limit = page_size(q.limit, "limit")?;
        // `search` is a case-insensitive substring, as the reference store matches it: strpos on
        // lower() rather than LIKE, so that % and _ in the search are plain characters.
        // Only the filters given, so that the plan walks the index that serves them
        // (`kv_keys_owner`, `kv_keys_enabled`) rather than a generic plan over every key.
        let mut qb: sqlx::QueryBuilder<sqlx::Postgres> = sqlx::QueryBuilder::new(concat!(
            "SELECT ",
            key_columns!(),
            " FROM kv_keys WHERE true"
        ));
        if let Some(before) = q.before {
            qb.push(" AND id < ").push_bind(*before.as_uuid());
        }
        if let Some(owner) = &q.owner_id {
            qb.push(" AND owner_id = ").push_bind(owner.clone());
        }
        if let Some(enabled) = q.enabled {
            qb.push(" AND enabled = ").push_bind(enabled);
        }
        if let Some(search) = &q.search {
            let s = search.to_lowercase();
            qb.push(" AND (strpos(lower(name), ")
                .push_bind(s.clone())
                .push(") > 0 OR strpos(lower(start), ")
                .push_bind(s)
                .push(") > 0)");
        }
        qb.push(" ORDER BY id DESC LIMIT ")
            .push_bind(limit.saturating_add(1));
        let rows = qb.build().fetch_all(&self.pool).await.map_err(db)?;
        Ok(Page::over_fetched(records(&rows)?, q.limit))
    }

    async fn due_for_rotation(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<KeyRecord>> {
        let sql = concat!(
            "SELECT ",
            key_columns!(),
            " FROM kv_keys \
             WHERE next_rotation_at <= $1 AND superseded_by IS NULL AND enabled \
               AND (LEAST(expires_at, grace_until) <= $1) IS NOT TRUE \
             ORDER BY next_rotation_at, id LIMIT $2"
        );
        let rows = sqlx::query(sql)
            .bind(now)
            .bind(page_size(limit, "limit")?)
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        records(&rows)
    }

    async fn watched_keys(&self, expires_before: DateTime<Utc>) -> Result<Vec<KeyRecord>> {
        let sql = concat!(
            "SELECT ",
            key_columns!(),
            " FROM kv_keys WHERE enabled AND (credits IS NOT NULL OR expires_at <= $1)"
        );
        let rows = sqlx::query(sql)
            .bind(expires_before)
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        records(&rows)
    }

    async fn expired_before(&self, before: DateTime<Utc>, limit: usize) -> Result<Vec<KeyRecord>> {
        let sql = concat!(
            "SELECT ",
            key_columns!(),
            " FROM kv_keys \
             WHERE (expires_at IS NOT NULL OR grace_until IS NOT NULL) \
               AND LEAST(expires_at, grace_until) <= $1 \
             ORDER BY id LIMIT $2"
        );
        let rows = sqlx::query(sql)
            .bind(before)
            .bind(page_size(limit, "limit")?)
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        records(&rows)
    }
}
