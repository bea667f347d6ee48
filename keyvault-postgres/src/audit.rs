//! The audit log: `kv_audit`, hash-chained, its tail in `kv_audit_head`.

use async_trait::async_trait;
use futures::TryStreamExt;
use keyvault_core::{
    AuditEvent, AuditLog, AuditOutcome, AuditQuery, AuditRecord, ChainReport, ChainVerifier,
    KeyDigest, Page, hash_hex, link_audit,
};
use serde_json::Value;
use sqlx::{PgConnection, Row, postgres::PgRow};

use crate::{PgStore, Result, corrupt, db, to_i64, to_u64};

/// Appends `events` inside the caller's transaction: locks the chain's tail, links the events
/// after it, inserts them and moves the tail. Concurrent appenders wait on the lock, so the
/// chain has neither gaps nor forks.
pub(crate) async fn append_in(conn: &mut PgConnection, events: &[AuditEvent]) -> Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let head = sqlx::query("SELECT seq, hash FROM kv_audit_head WHERE id FOR UPDATE")
        .fetch_one(&mut *conn)
        .await
        .map_err(db)?;
    let seq = to_u64(head.try_get("seq").map_err(db)?, "kv_audit_head.seq")?;
    let hash: Vec<u8> = head.try_get("hash").map_err(db)?;
    let hash = <[u8; 32]>::try_from(hash.as_slice())
        .map_err(|_| corrupt("kv_audit_head.hash", "not 32 bytes"))?;
    let records = link_audit((seq > 0).then_some((seq, hash)), events);

    let n = records.len();
    let mut seqs = Vec::with_capacity(n);
    let mut at = Vec::with_capacity(n);
    let mut actor = Vec::with_capacity(n);
    let mut action = Vec::with_capacity(n);
    let mut target = Vec::with_capacity(n);
    let mut ip = Vec::with_capacity(n);
    let mut request = Vec::with_capacity(n);
    let mut outcome = Vec::with_capacity(n);
    let mut details = Vec::with_capacity(n);
    let mut prev = Vec::with_capacity(n);
    let mut hashes = Vec::with_capacity(n);
    for r in &records {
        seqs.push(to_i64(r.seq, "seq")?);
        at.push(r.event.at);
        actor.push(r.event.actor.as_str());
        action.push(r.event.action.as_str());
        target.push(r.event.target_id.as_deref());
        ip.push(r.event.source_ip.map(|i| i.to_string()));
        request.push(r.event.request_id.as_deref());
        outcome.push(r.event.outcome.as_str());
        details.push(r.event.details.clone());
        prev.push(unhex(&r.prev_hash)?);
        hashes.push(unhex(&r.hash)?);
    }
    sqlx::query(
        "INSERT INTO kv_audit (seq, at, actor, action, target_id, source_ip, request_id, \
         outcome, details, prev_hash, hash) \
         SELECT * FROM UNNEST($1::bigint[], $2::timestamptz[], $3::text[], $4::text[], \
           $5::text[], $6::text[], $7::text[], $8::text[], $9::jsonb[], $10::bytea[], $11::bytea[])",
    )
    .bind(&seqs)
    .bind(&at)
    .bind(&actor)
    .bind(&action)
    .bind(&target)
    .bind(&ip)
    .bind(&request)
    .bind(&outcome)
    .bind(&details)
    .bind(&prev)
    .bind(&hashes)
    .execute(&mut *conn)
    .await
    .map_err(db)?;
    let last = records.last().map(|r| (r.seq, r.hash.as_str()));
    if let Some((seq, hash)) = last {
        sqlx::query("UPDATE kv_audit_head SET seq = $1, hash = $2 WHERE id")
            .bind(to_i64(seq, "seq")?)
            .bind(unhex(hash)?)
            .execute(&mut *conn)
            .await
            .map_err(db)?;
    }
    Ok(())
}

fn unhex(hex: &str) -> Result<Vec<u8>, crate::Error> {
    KeyDigest::from_hex(hex)
        .map(|d| d.as_bytes().to_vec())
        .map_err(|e| corrupt("kv_audit.hash", e))
}

fn hex_of(bytes: &[u8]) -> String {
    match <[u8; 32]>::try_from(bytes) {
        Ok(h) => hash_hex(&h),
        // A hash of the wrong length cannot match; keep it visible as it is.
        Err(_) => bytes.iter().map(|b| format!("{b:02x}")).collect(),
    }
}

fn record_from_row(row: &PgRow) -> Result<AuditRecord, crate::Error> {
    let outcome: String = row.try_get("outcome")?;
    let ip: Option<String> = row.try_get("source_ip")?;
    let prev: Vec<u8> = row.try_get("prev_hash")?;
    let hash: Vec<u8> = row.try_get("hash")?;
    let details: Value = row.try_get("details")?;
    Ok(AuditRecord {
        seq: to_u64(row.try_get("seq")?, "kv_audit.seq")?,
        event: AuditEvent {
            at: row.try_get("at")?,
            actor: row.try_get("actor")?,
            action: row.try_get("action")?,
            target_id: row.try_get("target_id")?,
            source_ip: ip
                .map(|s| s.parse().map_err(|e| corrupt("kv_audit.source_ip", e)))
                .transpose()?,
            request_id: row.try_get("request_id")?,
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
            details,
        },
        prev_hash: hex_of(&prev),
        hash: hex_of(&hash),
    })
}

#[async_trait]
impl AuditLog for PgStore {
    async fn append(&self, events: &[AuditEvent]) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await.map_err(db)?;
        append_in(&mut tx, events).await?;
        tx.commit().await.map_err(db)
    }

    async fn list(&self, q: &AuditQuery) -> Result<Page<AuditRecord>> {
        let limit = i64::try_from(q.limit)
            .map_err(|_| keyvault_core::Error::invalid("limit", "too large"))?;
        let rows = sqlx::query(
            "SELECT * FROM kv_audit \
             WHERE ($1::bigint IS NULL OR seq < $1) \
               AND ($2::timestamptz IS NULL OR at >= $2) \
               AND ($3::timestamptz IS NULL OR at < $3) \
               AND ($4::text IS NULL OR actor = $4) \
               AND ($5::text IS NULL OR action = $5) \
               AND ($6::text IS NULL OR target_id = $6) \
               AND ($8::text IS NULL OR outcome = $8) \
             ORDER BY seq DESC LIMIT $7",
        )
        .bind(q.before_seq.map(|s| i64::try_from(s).unwrap_or(i64::MAX)))
        .bind(q.from)
        .bind(q.to)
        .bind(&q.actor)
        .bind(&q.action)
        .bind(&q.target_id)
        .bind(limit.saturating_add(1))
        .bind(q.outcome.map(AuditOutcome::as_str))
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        let items = rows
            .iter()
            .map(record_from_row)
            .collect::<Result<Vec<_>, crate::Error>>()?;
        Ok(Page::over_fetched(items, q.limit))
    }

    async fn verify_chain(&self) -> Result<ChainReport> {
        // Storage order is `seq` order; the records stream through, so a long log is checked
        // in constant memory.
        let mut v = ChainVerifier::default();
        let mut rows = sqlx::query("SELECT * FROM kv_audit ORDER BY seq").fetch(&self.pool);
        while let Some(row) = rows.try_next().await.map_err(db)? {
            v.push(&record_from_row(&row)?);
        }
        Ok(v.finish())
    }
}
