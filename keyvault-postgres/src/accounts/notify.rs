//! [`NotifierStore`] on PostgreSQL: `kv_notifiers` and the outbox `kv_deliveries`, one
//! column per field (a channel's event types as `text[]`).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use keyvault_core::{
    AuditEvent, Delivery, DeliveryState, Error, NotifierRecord, NotifierStore, Result,
};
use sqlx::{Row, postgres::PgRow};
use uuid::Uuid;

use super::is_unique_violation;
use crate::{PgStore, audit::append_in, corrupt, db};

/// Every column of `kv_notifiers`, as [`decode_notifier`] reads them.
macro_rules! notifier_columns {
    () => {
        "id, name, kind, url, secret, events, created_at"
    };
}

/// Every column of `kv_deliveries`, as [`decode_delivery`] reads them.
macro_rules! delivery_columns {
    () => {
        "id, notifier_id, event, body, attempts, next_at, state, last_status, last_error, \
         created_at, updated_at"
    };
}

fn decode_notifier(row: &PgRow) -> Result<NotifierRecord, crate::Error> {
    Ok(NotifierRecord {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        kind: row.try_get("kind")?,
        url: row.try_get("url")?,
        secret: row.try_get("secret")?,
        events: row.try_get("events")?,
        created_at: row.try_get("created_at")?,
    })
}

fn decode_delivery(row: &PgRow) -> Result<Delivery, crate::Error> {
    let state: String = row.try_get("state")?;
    Ok(Delivery {
        id: row.try_get("id")?,
        notifier_id: row.try_get("notifier_id")?,
        event: row.try_get("event")?,
        body: row.try_get("body")?,
        attempts: u32::try_from(row.try_get::<i32, _>("attempts")?)
            .map_err(|e| corrupt("kv_deliveries.attempts", e))?,
        next_at: row.try_get("next_at")?,
        state: DeliveryState::parse(&state)
            .ok_or_else(|| corrupt("kv_deliveries.state", "unknown delivery state"))?,
        last_status: row
            .try_get::<Option<i32>, _>("last_status")?
            .map(u16::try_from)
            .transpose()
            .map_err(|e| corrupt("kv_deliveries.last_status", e))?,
        last_error: row.try_get("last_error")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn attempts(d: &Delivery) -> Result<i32> {
    i32::try_from(d.attempts).map_err(|_| Error::invalid("attempts", "must be at most 2147483647"))
}

fn page_size(limit: usize) -> Result<i64> {
    i64::try_from(limit).map_err(|_| Error::invalid("limit", "too large"))
}

#[async_trait]
impl NotifierStore for PgStore {
    async fn create_notifier(&self, n: &NotifierRecord, audit: &[AuditEvent]) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        let inserted = sqlx::query(concat!(
            "INSERT INTO kv_notifiers (",
            notifier_columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7)"
        ))
        .bind(n.id)
        .bind(&n.name)
        .bind(&n.kind)
        .bind(&n.url)
        .bind(n.secret.as_deref())
        .bind(&n.events)
        .bind(n.created_at)
        .execute(&mut *tx)
        .await;
        match inserted {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => {
                return Err(Error::Conflict(format!("notifier {} already exists", n.id)));
            }
            Err(e) => return Err(db(e)),
        }
        append_in(&mut tx, audit).await?;
        tx.commit().await.map_err(db)
    }

    async fn delete_notifier(&self, id: Uuid, audit: &[AuditEvent]) -> Result<bool> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        let done = sqlx::query("DELETE FROM kv_notifiers WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        if done.rows_affected() == 0 {
            // Nothing changed, so nothing is recorded: the transaction is dropped.
            return Ok(false);
        }
        // Its delivered and given-up history goes too: it would name a channel that is gone.
        sqlx::query("DELETE FROM kv_deliveries WHERE notifier_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        append_in(&mut tx, audit).await?;
        tx.commit().await.map_err(db)?;
        Ok(true)
    }

    async fn notifier(&self, id: Uuid) -> Result<Option<NotifierRecord>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            notifier_columns!(),
            " FROM kv_notifiers WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        Ok(row.as_ref().map(decode_notifier).transpose()?)
    }

    async fn notifiers(&self) -> Result<Vec<NotifierRecord>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            notifier_columns!(),
            " FROM kv_notifiers ORDER BY created_at, id"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        Ok(rows.iter().map(decode_notifier).collect::<Result<_, _>>()?)
    }

    async fn enqueue(&self, deliveries: &[Delivery]) -> Result<()> {
        let mut conn = self.pool.acquire().await.map_err(db)?;
        insert_deliveries(&mut conn, deliveries).await
    }

    async fn due_deliveries(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<Delivery>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            delivery_columns!(),
            " FROM kv_deliveries WHERE state = 'pending' AND next_at <= $1 \
             ORDER BY next_at, id LIMIT $2"
        ))
        .bind(now)
        .bind(page_size(limit)?)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        Ok(rows.iter().map(decode_delivery).collect::<Result<_, _>>()?)
    }

    async fn update_delivery(&self, d: &Delivery) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE kv_deliveries SET attempts = $1, state = $2, next_at = $3, \
               last_status = $4, last_error = $5, updated_at = $6 \
             WHERE id = $7",
        )
        .bind(attempts(d)?)
        .bind(d.state.as_str())
        .bind(d.next_at)
        .bind(d.last_status.map(i32::from))
        .bind(d.last_error.as_deref())
        .bind(d.updated_at)
        .bind(&d.id)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(done.rows_affected() > 0)
    }

    async fn deliveries(&self, notifier_id: Uuid, limit: usize) -> Result<Vec<Delivery>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            delivery_columns!(),
            " FROM kv_deliveries WHERE notifier_id = $1 \
             ORDER BY created_at DESC, id DESC LIMIT $2"
        ))
        .bind(notifier_id)
        .bind(page_size(limit)?)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        Ok(rows.iter().map(decode_delivery).collect::<Result<_, _>>()?)
    }
}

/// Queues deliveries on `conn` (a repeated id is skipped): the outbox's one insert, for
/// [`NotifierStore::enqueue`] and for alert transitions saved with their notices.
pub(crate) async fn insert_deliveries(
    conn: &mut sqlx::PgConnection,
    deliveries: &[Delivery],
) -> Result<()> {
    if deliveries.is_empty() {
        return Ok(());
    }
    let n = deliveries.len();
    let mut ids = Vec::with_capacity(n);
    let mut notifiers = Vec::with_capacity(n);
    let mut events = Vec::with_capacity(n);
    let mut bodies = Vec::with_capacity(n);
    let mut tries = Vec::with_capacity(n);
    let mut next_at = Vec::with_capacity(n);
    let mut states = Vec::with_capacity(n);
    let mut statuses = Vec::with_capacity(n);
    let mut errors = Vec::with_capacity(n);
    let mut created_at = Vec::with_capacity(n);
    let mut updated_at = Vec::with_capacity(n);
    for d in deliveries {
        ids.push(d.id.as_str());
        notifiers.push(d.notifier_id);
        events.push(d.event.as_str());
        bodies.push(d.body.as_str());
        tries.push(attempts(d)?);
        next_at.push(d.next_at);
        states.push(d.state.as_str());
        statuses.push(d.last_status.map(i32::from));
        errors.push(d.last_error.as_deref());
        created_at.push(d.created_at);
        updated_at.push(d.updated_at);
    }
    // One statement: the batch is written whole or not at all. DO NOTHING also skips a
    // repeat inside the batch (the first of an id is the one written).
    sqlx::query(concat!(
        "INSERT INTO kv_deliveries (",
        delivery_columns!(),
        ") SELECT * FROM UNNEST($1::text[], $2::uuid[], $3::text[], $4::text[], \
           $5::int4[], $6::timestamptz[], $7::text[], $8::int4[], $9::text[], \
           $10::timestamptz[], $11::timestamptz[]) \
         ON CONFLICT (id) DO NOTHING"
    ))
    .bind(&ids)
    .bind(&notifiers)
    .bind(&events)
    .bind(&bodies)
    .bind(&tries)
    .bind(&next_at)
    .bind(&states)
    .bind(&statuses)
    .bind(&errors)
    .bind(&created_at)
    .bind(&updated_at)
    .execute(conn)
    .await
    .map_err(db)?;
    Ok(())
}
