//! [`AuditLog`] on SQLite: the hash chain is computed by keyvault-core and stored as is.

use async_trait::async_trait;
use futures::TryStreamExt;
use keyvault_core::{
    AuditEvent, AuditLog, AuditOutcome, AuditQuery, AuditRecord, ChainReport, ChainVerifier,
    KeyDigest, Page, Result, link_audit,
};
use sqlx::{AssertSqlSafe, SqliteConnection, sqlite::SqliteRow};

use crate::{
    SqliteStore,
    codec::{column, from_micros, int, micros, opt_micros, uint},
    error::{backend, corrupt},
};

/// Appends `events` after the last stored record. The caller holds the write lock (an
/// immediate transaction), so no other writer can slip a record in between.
pub(crate) async fn append_linked(
    conn: &mut SqliteConnection,
    events: &[AuditEvent],
) -> Result<(), crate::Error> {
    if events.is_empty() {
        return Ok(());
    }
    let last: Option<(i64, String)> =
        sqlx::query_as("SELECT seq, hash FROM kv_audit ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&mut *conn)
            .await?;
    let last = match last {
        Some((seq, hash)) => Some((
            uint(seq, "kv_audit.seq")?,
            *KeyDigest::from_hex(&hash)
                .map_err(|e| corrupt("kv_audit.hash", e))?
                .as_bytes(),
        )),
        None => None,
    };
    for r in link_audit(last, events) {
        let e = &r.event;
        sqlx::query(
            "INSERT INTO kv_audit (seq, at, actor, action, target_id, source_ip, request_id, \
             outcome, details, prev_hash, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        )
        .bind(int(r.seq))
        .bind(micros(e.at))
        .bind(&e.actor)
        .bind(&e.action)
        .bind(e.target_id.as_deref())
        .bind(e.source_ip.map(|ip| ip.to_string()))
        .bind(e.request_id.as_deref())
        .bind(e.outcome.as_str())
        .bind(e.details.to_string())
        .bind(&r.prev_hash)
        .bind(&r.hash)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

fn decode(row: &SqliteRow) -> Result<AuditRecord, crate::Error> {
    let outcome: String = column(row, "outcome")?;
    let source_ip: Option<String> = column(row, "source_ip")?;
    let details: String = column(row, "details")?;
    Ok(AuditRecord {
        seq: uint(column(row, "seq")?, "kv_audit.seq")?,
        event: AuditEvent {
            at: from_micros(column(row, "at")?, "kv_audit.at")?,
            actor: column(row, "actor")?,
            action: column(row, "action")?,
            target_id: column(row, "target_id")?,
            source_ip: source_ip
                .map(|s| s.parse().map_err(|e| corrupt("kv_audit.source_ip", e)))
                .transpose()?,
            request_id: column(row, "request_id")?,
            outcome: match outcome.as_str() {
                "success" => AuditOutcome::Success,
                "refused" => AuditOutcome::Refused,
                other => {
                    return Err(corrupt(
                        "kv_audit.outcome",
                        format!("unknown outcome {other:?}"),
                    ));
                }
            },
            details: serde_json::from_str(&details).map_err(|e| corrupt("kv_audit.details", e))?,
        },
        prev_hash: column(row, "prev_hash")?,
        hash: column(row, "hash")?,
    })
}

/// Stands in for a row that does not decode: its empty hash never verifies.
fn unreadable() -> AuditRecord {
    AuditRecord {
        seq: 0,
        event: AuditEvent {
            at: chrono::DateTime::UNIX_EPOCH,
            actor: String::new(),
            action: String::new(),
            target_id: None,
            source_ip: None,
            request_id: None,
            outcome: AuditOutcome::Refused,
            details: serde_json::Value::Null,
        },
        prev_hash: String::new(),
        hash: String::new(),
    }
}

const AUDIT_COLUMNS: &str =
    "seq, at, actor, action, target_id, source_ip, request_id, outcome, details, prev_hash, hash";

#[async_trait]
impl AuditLog for SqliteStore {
    async fn append(&self, events: &[AuditEvent]) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let mut w = self.write().await?;
        append_linked(&mut w.tx, events).await?;
        Ok(w.commit().await?)
    }

    async fn list(&self, q: &AuditQuery) -> Result<Page<AuditRecord>> {
        let limit = q.limit;
        let sql = format!(
            "SELECT {AUDIT_COLUMNS} FROM kv_audit WHERE (?1 IS NULL OR seq < ?1) \
             AND (?2 IS NULL OR at >= ?2) AND (?3 IS NULL OR at < ?3) \
             AND (?4 IS NULL OR actor = ?4) AND (?5 IS NULL OR action = ?5) \
             AND (?6 IS NULL OR target_id = ?6) AND (?8 IS NULL OR outcome = ?8) \
             ORDER BY seq DESC LIMIT ?7"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(q.before_seq.map(int))
            .bind(opt_micros(q.from))
            .bind(opt_micros(q.to))
            .bind(q.actor.as_deref())
            .bind(q.action.as_deref())
            .bind(q.target_id.as_deref())
            .bind(int(limit as u64).saturating_add(1))
            .bind(q.outcome.map(AuditOutcome::as_str))
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        let items = rows
            .iter()
            .map(decode)
            .collect::<Result<Vec<_>, crate::Error>>()?;
        Ok(Page::over_fetched(items, limit))
    }

    async fn verify_chain(&self) -> Result<ChainReport> {
        let mut v = ChainVerifier::default();
        // One read transaction (a consistent snapshot under WAL), streamed in storage order.
        let mut conn = self.pool.acquire().await.map_err(backend)?;
        let sql = format!("SELECT {AUDIT_COLUMNS} FROM kv_audit ORDER BY seq");
        let mut rows = sqlx::query(AssertSqlSafe(sql)).fetch(&mut *conn);
        while let Some(row) = rows.try_next().await.map_err(backend)? {
            match decode(&row) {
                Ok(record) => v.push(&record),
                // A row edited into something that does not even decode is broken here too.
                Err(_) => v.push(&unreadable()),
            }
        }
        Ok(v.finish())
    }
}
