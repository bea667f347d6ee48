//! [`AlertStore`] on PostgreSQL: `kv_alert_rules`, `kv_alerts` and `kv_alert_baselines`.
//! Rules and alerts are kept whole as `jsonb`, beside the columns their queries filter on.

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use keyvault_core::{
    Alert, AlertQuery, AlertRule, AlertState, AlertStore, AuditEvent, Baseline, Delivery, Error,
    KeyId, Result,
};
use serde::de::DeserializeOwned;
use sqlx::{PgConnection, Postgres, QueryBuilder, types::Json};
use uuid::Uuid;

use super::is_unique_violation;
use crate::{PgStore, audit::append_in, corrupt, db};

/// A failed read of a `body` column: a body that does not decode is corruption of `column`,
/// anything else the database's failure.
fn read_failed(column: &'static str) -> impl Fn(sqlx::Error) -> Error {
    move |e| match e {
        sqlx::Error::ColumnDecode { source, .. } => corrupt(column, source).into(),
        e => db(e),
    }
}

fn bodies<T>(rows: Vec<(Json<T>,)>) -> Vec<T> {
    rows.into_iter().map(|(Json(b),)| b).collect()
}

/// The body of the one row read, if any.
async fn one_body<T>(
    query: &'static str,
    id: Uuid,
    conn: &mut PgConnection,
    column: &'static str,
) -> Result<Option<T>>
where
    T: DeserializeOwned + Send + Unpin + 'static,
{
    let row: Option<(Json<T>,)> = sqlx::query_as(query)
        .bind(id)
        .fetch_optional(conn)
        .await
        .map_err(read_failed(column))?;
    Ok(row.map(|(Json(b),)| b))
}

/// Writes `alert` whole, replacing the stored one with its id.
async fn upsert_alert(conn: &mut PgConnection, alert: &Alert) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO kv_alerts (id, rule_id, key_id, subject, state, open, body) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) \
         ON CONFLICT (id) DO UPDATE SET key_id = EXCLUDED.key_id, subject = EXCLUDED.subject, \
           state = EXCLUDED.state, open = EXCLUDED.open, body = EXCLUDED.body",
    )
    .bind(alert.id)
    .bind(alert.rule_id)
    .bind(alert.key_id.map(|k| *k.as_uuid()))
    .bind(alert.subject())
    .bind(alert.state.as_str())
    .bind(alert.state != AlertState::Resolved)
    .bind(Json(alert))
    .execute(conn)
    .await?;
    Ok(())
}

/// The alerts of a batch in the order they are written: the last of each id only (a later
/// one replaces an earlier one, as it would in the table), and the resolved ones before the
/// open ones, so that a batch resolving a subject's alert and opening its next one conflicts
/// with neither (the unique index is checked row by row).
fn write_order(alerts: &[Alert]) -> Vec<&Alert> {
    let last: HashMap<Uuid, usize> = alerts.iter().enumerate().map(|(i, a)| (a.id, i)).collect();
    let mut out: Vec<&Alert> = alerts
        .iter()
        .enumerate()
        .filter(|(i, a)| last[&a.id] == *i)
        .map(|(_, a)| a)
        .collect();
    // Stable: within each group the batch's order stays.
    out.sort_by_key(|a| a.state != AlertState::Resolved);
    out
}

#[async_trait]
impl AlertStore for PgStore {
    async fn create_rule(&self, rule: &AlertRule, audit: &[AuditEvent]) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        let inserted =
            sqlx::query("INSERT INTO kv_alert_rules (id, created_at, body) VALUES ($1, $2, $3)")
                .bind(rule.id)
                .bind(rule.created_at)
                .bind(Json(rule))
                .execute(&mut *tx)
                .await;
        match inserted {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => {
                return Err(Error::Conflict(format!(
                    "alert rule {} already exists",
                    rule.id
                )));
            }
            Err(e) => return Err(db(e)),
        }
        append_in(&mut tx, audit).await?;
        tx.commit().await.map_err(db)
    }

    async fn update_rule(&self, rule: &AlertRule, audit: &[AuditEvent]) -> Result<bool> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        let done = sqlx::query("UPDATE kv_alert_rules SET body = $1 WHERE id = $2")
            .bind(Json(rule))
            .bind(rule.id)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        if done.rows_affected() == 0 {
            // Nothing changed, so nothing is recorded: the transaction is dropped.
            return Ok(false);
        }
        append_in(&mut tx, audit).await?;
        tx.commit().await.map_err(db)?;
        Ok(true)
    }

    async fn delete_rule(&self, id: Uuid, at: DateTime<Utc>, audit: &[AuditEvent]) -> Result<bool> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        let done = sqlx::query("DELETE FROM kv_alert_rules WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        sqlx::query("DELETE FROM kv_alert_baselines WHERE rule_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        // The bodies change in place: `resolved_at` is bound as serde writes it, so they
        // read back as if each alert had been written whole.
        sqlx::query(
            "UPDATE kv_alerts SET state = 'resolved', open = false, \
               body = body || jsonb_build_object('state', 'resolved', 'resolved_at', $2::jsonb) \
             WHERE rule_id = $1 AND open",
        )
        .bind(id)
        .bind(Json(at))
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        append_in(&mut tx, audit).await?;
        tx.commit().await.map_err(db)?;
        Ok(true)
    }

    async fn rule(&self, id: Uuid) -> Result<Option<AlertRule>> {
        let mut conn = self.pool.acquire().await.map_err(db)?;
        one_body(
            "SELECT body FROM kv_alert_rules WHERE id = $1",
            id,
            &mut conn,
            "kv_alert_rules.body",
        )
        .await
    }

    async fn rules(&self) -> Result<Vec<AlertRule>> {
        let rows = sqlx::query_as("SELECT body FROM kv_alert_rules ORDER BY created_at, id")
            .fetch_all(&self.pool)
            .await
            .map_err(read_failed("kv_alert_rules.body"))?;
        Ok(bodies(rows))
    }

    async fn alerts(&self, q: &AlertQuery) -> Result<Vec<Alert>> {
        let limit = i64::try_from(q.limit).map_err(|_| Error::invalid("limit", "too large"))?;
        let mut sql = QueryBuilder::<Postgres>::new("SELECT body FROM kv_alerts WHERE TRUE");
        if let Some(s) = q.state {
            sql.push(" AND state = ").push_bind(s.as_str());
        }
        if let Some(r) = q.rule_id {
            sql.push(" AND rule_id = ").push_bind(r);
        }
        if let Some(k) = q.key_id {
            sql.push(" AND key_id = ").push_bind(*k.as_uuid());
        }
        if let Some(b) = q.before {
            sql.push(" AND id < ").push_bind(b);
        }
        // uuid compares as its bytes: UUIDv7 ids by start.
        sql.push(" ORDER BY id DESC LIMIT ").push_bind(limit);
        let rows = sql
            .build_query_as()
            .fetch_all(&self.pool)
            .await
            .map_err(read_failed("kv_alerts.body"))?;
        Ok(bodies(rows))
    }

    async fn alert(&self, id: Uuid) -> Result<Option<Alert>> {
        let mut conn = self.pool.acquire().await.map_err(db)?;
        one_body(
            "SELECT body FROM kv_alerts WHERE id = $1",
            id,
            &mut conn,
            "kv_alerts.body",
        )
        .await
    }

    async fn open_alerts(&self) -> Result<Vec<Alert>> {
        let rows = sqlx::query_as("SELECT body FROM kv_alerts WHERE open ORDER BY id")
            .fetch_all(&self.pool)
            .await
            .map_err(read_failed("kv_alerts.body"))?;
        Ok(bodies(rows))
    }

    async fn firing_count(&self) -> Result<u64> {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM kv_alerts WHERE state = 'firing'")
            .fetch_one(&self.pool)
            .await
            .map_err(db)?;
        Ok(crate::to_u64(n, "kv_alerts count")?)
    }

    async fn save_transitions(&self, alerts: &[Alert], outbox: &[Delivery]) -> Result<()> {
        if alerts.is_empty() && outbox.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await.map_err(db)?;
        for alert in write_order(alerts) {
            match upsert_alert(&mut tx, alert).await {
                Ok(()) => {}
                // Only `kv_alerts_open` can refuse it (the id conflict is an update); the
                // transaction is dropped, so nothing of the batch is written.
                Err(e) if is_unique_violation(&e) => {
                    return Err(Error::Conflict(format!(
                        "rule {} already has an open alert for {}",
                        alert.rule_id,
                        alert.subject()
                    )));
                }
                Err(e) => return Err(db(e)),
            }
        }
        super::notify::insert_deliveries(&mut tx, outbox).await?;
        tx.commit().await.map_err(db)
    }

    async fn acknowledge(
        &self,
        id: Uuid,
        at: DateTime<Utc>,
        audit: &[AuditEvent],
    ) -> Result<Option<Alert>> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        let found: Option<Alert> = one_body(
            "SELECT body FROM kv_alerts WHERE id = $1 FOR UPDATE",
            id,
            &mut tx,
            "kv_alerts.body",
        )
        .await?;
        let Some(mut alert) = found else {
            return Ok(None);
        };
        if alert.state != AlertState::Firing {
            // Nothing changed, so nothing is recorded: the transaction is dropped.
            return Ok(Some(alert));
        }
        alert.state = AlertState::Acknowledged;
        alert.acknowledged_at = Some(at);
        upsert_alert(&mut tx, &alert).await.map_err(db)?;
        append_in(&mut tx, audit).await?;
        tx.commit().await.map_err(db)?;
        Ok(Some(alert))
    }

    async fn baselines(&self, rule_id: Uuid) -> Result<Vec<Baseline>> {
        let rows: Vec<(Uuid, f64, i32, DateTime<Utc>)> = sqlx::query_as(
            "SELECT key_id, mean, windows, through FROM kv_alert_baselines WHERE rule_id = $1 \
             ORDER BY key_id",
        )
        .bind(rule_id)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows.into_iter()
            .map(|(key, mean, windows, through)| {
                Ok(Baseline {
                    key_id: KeyId::from_uuid(key),
                    mean,
                    windows: u32::try_from(windows)
                        .map_err(|e| corrupt("kv_alert_baselines.windows", e))?,
                    through,
                })
            })
            .collect::<Result<_, crate::Error>>()
            .map_err(Into::into)
    }

    async fn save_baselines(&self, rule_id: Uuid, baselines: &[Baseline]) -> Result<()> {
        if baselines.is_empty() {
            return Ok(());
        }
        // One row per key (the last given wins): one statement may not update a row twice.
        let by_key: BTreeMap<KeyId, &Baseline> = baselines.iter().map(|b| (b.key_id, b)).collect();
        let mut keys = Vec::with_capacity(by_key.len());
        let mut means = Vec::with_capacity(by_key.len());
        let mut windows = Vec::with_capacity(by_key.len());
        let mut through = Vec::with_capacity(by_key.len());
        for (key, b) in by_key {
            keys.push(*key.as_uuid());
            means.push(b.mean);
            windows.push(
                i32::try_from(b.windows)
                    .map_err(|_| Error::invalid("windows", "must be at most 2147483647"))?,
            );
            through.push(b.through);
        }
        sqlx::query(
            "INSERT INTO kv_alert_baselines (rule_id, key_id, mean, windows, through) \
             SELECT $1, * FROM UNNEST($2::uuid[], $3::float8[], $4::int4[], $5::timestamptz[]) \
             ON CONFLICT (rule_id, key_id) DO UPDATE SET mean = EXCLUDED.mean, \
               windows = EXCLUDED.windows, through = EXCLUDED.through",
        )
        .bind(rule_id)
        .bind(&keys)
        .bind(&means)
        .bind(&windows)
        .bind(&through)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(())
    }
}
