//! [`NotifierStore`] on SQLite: `kv_notifiers` and the outbox `kv_deliveries`, one column
//! per field (a channel's event types as a JSON array).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use keyvault_core::{
    AuditEvent, Delivery, DeliveryState, Error, NotifierRecord, NotifierStore, Result, uuid::Uuid,
};
use sqlx::{AssertSqlSafe, QueryBuilder, Sqlite, sqlite::SqliteRow};

use super::{is_unique_violation, uuid};
use crate::{
    SqliteStore,
    audit::append_linked,
    codec::{column, from_micros, micros},
    error::{backend, corrupt},
};

const NOTIFIER_COLUMNS: &str = "id, name, kind, url, secret, events, created_at";

const DELIVERY_COLUMNS: &str = "id, notifier_id, event, body, attempts, next_at, state, \
    last_status, last_error, created_at, updated_at";

/// A delivery query; every piece is a constant of this module, never input.
fn select_deliveries(filter: &str) -> AssertSqlSafe<String> {
    AssertSqlSafe(format!(
        "SELECT {DELIVERY_COLUMNS} FROM kv_deliveries {filter}"
    ))
}

fn decode_notifier(row: &SqliteRow) -> Result<NotifierRecord, crate::Error> {
    let events: String = column(row, "events")?;
    Ok(NotifierRecord {
        id: uuid(&column::<String>(row, "id")?, "kv_notifiers.id")?,
        name: column(row, "name")?,
        kind: column(row, "kind")?,
        url: column(row, "url")?,
        secret: column(row, "secret")?,
        events: serde_json::from_str(&events).map_err(|e| corrupt("kv_notifiers.events", e))?,
        created_at: from_micros(column(row, "created_at")?, "kv_notifiers.created_at")?,
    })
}

fn decode_delivery(row: &SqliteRow) -> Result<Delivery, crate::Error> {
    let state: String = column(row, "state")?;
    Ok(Delivery {
        id: column(row, "id")?,
        notifier_id: uuid(
            &column::<String>(row, "notifier_id")?,
            "kv_deliveries.notifier_id",
        )?,
        event: column(row, "event")?,
        body: column(row, "body")?,
        attempts: u32::try_from(column::<i64>(row, "attempts")?)
            .map_err(|e| corrupt("kv_deliveries.attempts", e))?,
        next_at: from_micros(column(row, "next_at")?, "kv_deliveries.next_at")?,
        state: DeliveryState::parse(&state)
            .ok_or_else(|| corrupt("kv_deliveries.state", "unknown delivery state"))?,
        last_status: column::<Option<i64>>(row, "last_status")?
            .map(u16::try_from)
            .transpose()
            .map_err(|e| corrupt("kv_deliveries.last_status", e))?,
        last_error: column(row, "last_error")?,
        created_at: from_micros(column(row, "created_at")?, "kv_deliveries.created_at")?,
        updated_at: from_micros(column(row, "updated_at")?, "kv_deliveries.updated_at")?,
    })
}

fn page_size(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

#[async_trait]
impl NotifierStore for SqliteStore {
    async fn create_notifier(&self, n: &NotifierRecord, audit: &[AuditEvent]) -> Result<()> {
        let events = serde_json::to_string(&n.events).map_err(|source| {
            backend(crate::Error::Encode {
                column: "kv_notifiers.events",
                source,
            })
        })?;
        let mut w = self.write().await?;
        let sql = format!(
            "INSERT INTO kv_notifiers ({NOTIFIER_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
        );
        let inserted = sqlx::query(AssertSqlSafe(sql))
            .bind(n.id.to_string())
            .bind(&n.name)
            .bind(&n.kind)
            .bind(&n.url)
            .bind(n.secret.as_deref())
            .bind(events)
            .bind(micros(n.created_at))
            .execute(&mut *w.tx)
            .await;
        match inserted {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => {
                return Err(Error::Conflict(format!("notifier {} already exists", n.id)));
            }
            Err(e) => return Err(backend(e)),
        }
        append_linked(&mut w.tx, audit).await?;
        Ok(w.commit().await?)
    }

    async fn delete_notifier(&self, id: Uuid, audit: &[AuditEvent]) -> Result<bool> {
        let mut w = self.write().await?;
        let done = sqlx::query("DELETE FROM kv_notifiers WHERE id = ?1")
            .bind(id.to_string())
            .execute(&mut *w.tx)
            .await
            .map_err(backend)?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        // Its delivered and given-up history goes too: it would name a channel that is gone.
        sqlx::query("DELETE FROM kv_deliveries WHERE notifier_id = ?1")
            .bind(id.to_string())
            .execute(&mut *w.tx)
            .await
            .map_err(backend)?;
        append_linked(&mut w.tx, audit).await?;
        w.commit().await?;
        Ok(true)
    }

    async fn notifier(&self, id: Uuid) -> Result<Option<NotifierRecord>> {
        let sql = format!("SELECT {NOTIFIER_COLUMNS} FROM kv_notifiers WHERE id = ?1");
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        Ok(row.as_ref().map(decode_notifier).transpose()?)
    }

    async fn notifiers(&self) -> Result<Vec<NotifierRecord>> {
        let sql = format!("SELECT {NOTIFIER_COLUMNS} FROM kv_notifiers ORDER BY created_at, id");
        let rows = sqlx::query(AssertSqlSafe(sql))
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        Ok(rows.iter().map(decode_notifier).collect::<Result<_, _>>()?)
    }

    async fn enqueue(&self, deliveries: &[Delivery]) -> Result<()> {
        if deliveries.is_empty() {
            return Ok(());
        }
        let mut w = self.write().await?;
        insert_deliveries(&mut w.tx, deliveries)
            .await
            .map_err(backend)?;
        Ok(w.commit().await?)
    }

    async fn due_deliveries(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<Delivery>> {
        let rows = sqlx::query(select_deliveries(
            "WHERE state = 'pending' AND next_at <= ?1 ORDER BY next_at, id LIMIT ?2",
        ))
        .bind(micros(now))
        .bind(page_size(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        Ok(rows.iter().map(decode_delivery).collect::<Result<_, _>>()?)
    }

    async fn update_delivery(&self, d: &Delivery) -> Result<bool> {
        let _turn = self.write_turn().await;
        let done = sqlx::query(
            "UPDATE kv_deliveries SET attempts = ?1, state = ?2, next_at = ?3, \
               last_status = ?4, last_error = ?5, updated_at = ?6 \
             WHERE id = ?7",
        )
        .bind(i64::from(d.attempts))
        .bind(d.state.as_str())
        .bind(micros(d.next_at))
        .bind(d.last_status.map(i64::from))
        .bind(d.last_error.as_deref())
        .bind(micros(d.updated_at))
        .bind(&d.id)
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        Ok(done.rows_affected() > 0)
    }

    async fn deliveries(&self, notifier_id: Uuid, limit: usize) -> Result<Vec<Delivery>> {
        let rows = sqlx::query(select_deliveries(
            "WHERE notifier_id = ?1 ORDER BY created_at DESC, id DESC LIMIT ?2",
        ))
        .bind(notifier_id.to_string())
        .bind(page_size(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        Ok(rows.iter().map(decode_delivery).collect::<Result<_, _>>()?)
    }
}

/// Queues deliveries inside `tx` (a repeated id is skipped): the outbox's one insert, for
/// [`NotifierStore::enqueue`] and for alert transitions saved with their notices.
pub(crate) async fn insert_deliveries(
    tx: &mut sqlx::Transaction<'static, Sqlite>,
    deliveries: &[Delivery],
) -> Result<(), sqlx::Error> {
    // Rows of 11 binds, well under SQLite's limit of 32,766 per statement; the caller's one
    // transaction for every chunk, so the batch is written whole or not at all.
    for chunk in deliveries.chunks(2_000) {
        let mut sql =
            QueryBuilder::<Sqlite>::new(format!("INSERT INTO kv_deliveries ({DELIVERY_COLUMNS}) "));
        sql.push_values(chunk, |mut row, d| {
            row.push_bind(&d.id)
                .push_bind(d.notifier_id.to_string())
                .push_bind(&d.event)
                .push_bind(&d.body)
                .push_bind(i64::from(d.attempts))
                .push_bind(micros(d.next_at))
                .push_bind(d.state.as_str())
                .push_bind(d.last_status.map(i64::from))
                .push_bind(&d.last_error)
                .push_bind(micros(d.created_at))
                .push_bind(micros(d.updated_at));
        });
        sql.push(" ON CONFLICT (id) DO NOTHING");
        sql.build().execute(&mut **tx).await?;
    }
    Ok(())
}
