//! [`AlertStore`] on SQLite: `kv_alert_rules`, `kv_alerts` and `kv_alert_baselines`. Rules
//! and alerts are kept whole as JSON, beside the columns their queries filter on.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use keyvault_core::{
    Alert, AlertQuery, AlertRule, AlertState, AlertStore, AuditEvent, Baseline, Delivery, Error,
    Result, uuid::Uuid,
};
use serde::{Serialize, de::DeserializeOwned};
use sqlx::{QueryBuilder, Sqlite};

use super::is_unique_violation;
use crate::{
    SqliteStore,
    audit::append_linked,
    codec::{from_micros, id_text, micros, parse_id},
    error::{backend, corrupt},
};

fn to_json<T: Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| Error::backend("sqlite", e))
}

fn from_json<T: DeserializeOwned>(text: &str, column: &'static str) -> Result<T, crate::Error> {
    serde_json::from_str(text).map_err(|e| corrupt(column, e))
}

/// Writes `alert` whole, replacing the stored one with its id.
async fn upsert_alert(
    tx: &mut sqlx::Transaction<'static, Sqlite>,
    alert: &Alert,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO kv_alerts (id, rule_id, key_id, subject, state, open, body) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
         ON CONFLICT (id) DO UPDATE SET key_id = excluded.key_id, subject = excluded.subject, \
           state = excluded.state, open = excluded.open, body = excluded.body",
    )
    .bind(alert.id.to_string())
    .bind(alert.rule_id.to_string())
    .bind(alert.key_id.map(id_text))
    .bind(alert.subject())
    .bind(alert.state.as_str())
    .bind(i64::from(alert.state != AlertState::Resolved))
    .bind(serde_json::to_string(alert).map_err(|e| sqlx::Error::Encode(Box::new(e)))?)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[async_trait]
impl AlertStore for SqliteStore {
    async fn create_rule(&self, rule: &AlertRule, audit: &[AuditEvent]) -> Result<()> {
        let body = to_json(rule)?;
        let mut w = self.write().await?;
        let inserted =
            sqlx::query("INSERT INTO kv_alert_rules (id, created_at, body) VALUES (?1, ?2, ?3)")
                .bind(rule.id.to_string())
                .bind(micros(rule.created_at))
                .bind(body)
                .execute(&mut *w.tx)
                .await;
        match inserted {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => {
                return Err(Error::Conflict(format!(
                    "alert rule {} already exists",
                    rule.id
                )));
            }
            Err(e) => return Err(backend(e)),
        }
        append_linked(&mut w.tx, audit).await?;
        Ok(w.commit().await?)
    }

    async fn update_rule(&self, rule: &AlertRule, audit: &[AuditEvent]) -> Result<bool> {
        let body = to_json(rule)?;
        let mut w = self.write().await?;
        let done = sqlx::query("UPDATE kv_alert_rules SET body = ?1 WHERE id = ?2")
            .bind(body)
            .bind(rule.id.to_string())
            .execute(&mut *w.tx)
            .await
            .map_err(backend)?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        append_linked(&mut w.tx, audit).await?;
        w.commit().await?;
        Ok(true)
    }

    async fn delete_rule(&self, id: Uuid, at: DateTime<Utc>, audit: &[AuditEvent]) -> Result<bool> {
        let mut w = self.write().await?;
        let done = sqlx::query("DELETE FROM kv_alert_rules WHERE id = ?1")
            .bind(id.to_string())
            .execute(&mut *w.tx)
            .await
            .map_err(backend)?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        sqlx::query("DELETE FROM kv_alert_baselines WHERE rule_id = ?1")
            .bind(id.to_string())
            .execute(&mut *w.tx)
            .await
            .map_err(backend)?;
        let open: Vec<(String,)> =
            sqlx::query_as("SELECT body FROM kv_alerts WHERE rule_id = ?1 AND open = 1")
                .bind(id.to_string())
                .fetch_all(&mut *w.tx)
                .await
                .map_err(backend)?;
        for (body,) in open {
            let mut alert: Alert = from_json(&body, "kv_alerts.body")?;
            alert.state = AlertState::Resolved;
            alert.resolved_at = Some(at);
            upsert_alert(&mut w.tx, &alert).await.map_err(backend)?;
        }
        append_linked(&mut w.tx, audit).await?;
        w.commit().await?;
        Ok(true)
    }

    async fn rule(&self, id: Uuid) -> Result<Option<AlertRule>> {
        let row: Option<(String,)> =
            sqlx::query_as("SELECT body FROM kv_alert_rules WHERE id = ?1")
                .bind(id.to_string())
                .fetch_optional(&self.pool)
                .await
                .map_err(backend)?;
        Ok(row
            .map(|(b,)| from_json(&b, "kv_alert_rules.body"))
            .transpose()?)
    }

    async fn rules(&self) -> Result<Vec<AlertRule>> {
        let rows: Vec<(String,)> =
            sqlx::query_as("SELECT body FROM kv_alert_rules ORDER BY created_at, id")
                .fetch_all(&self.pool)
                .await
                .map_err(backend)?;
        Ok(rows
            .iter()
            .map(|(b,)| from_json(b, "kv_alert_rules.body"))
            .collect::<Result<_, _>>()?)
    }

    async fn alerts(&self, q: &AlertQuery) -> Result<Vec<Alert>> {
        let mut sql = QueryBuilder::<Sqlite>::new("SELECT body FROM kv_alerts WHERE 1 = 1");
        if let Some(s) = q.state {
            sql.push(" AND state = ").push_bind(s.as_str());
        }
        if let Some(r) = q.rule_id {
            sql.push(" AND rule_id = ").push_bind(r.to_string());
        }
        if let Some(k) = q.key_id {
            sql.push(" AND key_id = ").push_bind(id_text(k));
        }
        if let Some(b) = q.before {
            sql.push(" AND id < ").push_bind(b.to_string());
        }
        sql.push(" ORDER BY id DESC LIMIT ")
            .push_bind(i64::try_from(q.limit).unwrap_or(i64::MAX));
        let rows: Vec<(String,)> = sql
            .build_query_as()
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        Ok(rows
            .iter()
            .map(|(b,)| from_json(b, "kv_alerts.body"))
            .collect::<Result<_, _>>()?)
    }

    async fn alert(&self, id: Uuid) -> Result<Option<Alert>> {
        let row: Option<(String,)> = sqlx::query_as("SELECT body FROM kv_alerts WHERE id = ?1")
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        Ok(row
            .map(|(b,)| from_json(&b, "kv_alerts.body"))
            .transpose()?)
    }

    async fn open_alerts(&self) -> Result<Vec<Alert>> {
        let rows: Vec<(String,)> = sqlx::query_as("SELECT body FROM kv_alerts WHERE open = 1")
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        Ok(rows
            .iter()
            .map(|(b,)| from_json(b, "kv_alerts.body"))
            .collect::<Result<_, _>>()?)
    }

    async fn firing_count(&self) -> Result<u64> {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM kv_alerts WHERE state = 'firing'")
            .fetch_one(&self.pool)
            .await
            .map_err(backend)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn save_transitions(&self, alerts: &[Alert], outbox: &[Delivery]) -> Result<()> {
        if alerts.is_empty() && outbox.is_empty() {
            return Ok(());
        }
        let mut w = self.write().await?;
        for alert in alerts {
            match upsert_alert(&mut w.tx, alert).await {
                Ok(()) => {}
                Err(e) if is_unique_violation(&e) => {
                    return Err(Error::Conflict(format!(
                        "rule {} already has an open alert for {}",
                        alert.rule_id,
                        alert.subject()
                    )));
                }
                Err(e) => return Err(backend(e)),
            }
        }
        super::notify::insert_deliveries(&mut w.tx, outbox)
            .await
            .map_err(backend)?;
        Ok(w.commit().await?)
    }

    async fn acknowledge(
        &self,
        id: Uuid,
        at: DateTime<Utc>,
        audit: &[AuditEvent],
    ) -> Result<Option<Alert>> {
        let mut w = self.write().await?;
        let row: Option<(String,)> = sqlx::query_as("SELECT body FROM kv_alerts WHERE id = ?1")
            .bind(id.to_string())
            .fetch_optional(&mut *w.tx)
            .await
            .map_err(backend)?;
        let Some((body,)) = row else {
            return Ok(None);
        };
        let mut alert: Alert = from_json(&body, "kv_alerts.body")?;
        if alert.state != AlertState::Firing {
            return Ok(Some(alert));
        }
        alert.state = AlertState::Acknowledged;
        alert.acknowledged_at = Some(at);
        upsert_alert(&mut w.tx, &alert).await.map_err(backend)?;
        append_linked(&mut w.tx, audit).await?;
        w.commit().await?;
        Ok(Some(alert))
    }

    async fn baselines(&self, rule_id: Uuid) -> Result<Vec<Baseline>> {
        let rows: Vec<(String, f64, i64, i64)> = sqlx::query_as(
            "SELECT key_id, mean, windows, through FROM kv_alert_baselines WHERE rule_id = ?1",
        )
        .bind(rule_id.to_string())
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.into_iter()
            .map(|(key, mean, windows, through)| {
                Ok(Baseline {
                    key_id: parse_id(&key, "kv_alert_baselines.key_id")?,
                    mean,
                    windows: u32::try_from(windows)
                        .map_err(|e| corrupt("kv_alert_baselines.windows", e))?,
                    through: from_micros(through, "kv_alert_baselines.through")?,
                })
            })
            .collect::<Result<_, crate::Error>>()
            .map_err(Into::into)
    }

    async fn save_baselines(&self, rule_id: Uuid, baselines: &[Baseline]) -> Result<()> {
        if baselines.is_empty() {
            return Ok(());
        }
        let rule = rule_id.to_string();
        let mut w = self.write().await?;
        // Rows of 5 binds, well under SQLite's limit of 32,766 per statement.
        for chunk in baselines.chunks(5_000) {
            let mut sql = QueryBuilder::<Sqlite>::new(
                "INSERT INTO kv_alert_baselines (rule_id, key_id, mean, windows, through) ",
            );
            sql.push_values(chunk, |mut row, b| {
                row.push_bind(&rule)
                    .push_bind(id_text(b.key_id))
                    .push_bind(b.mean)
                    .push_bind(i64::from(b.windows))
                    .push_bind(micros(b.through));
            });
            sql.push(
                " ON CONFLICT (rule_id, key_id) DO UPDATE SET mean = excluded.mean, \
                 windows = excluded.windows, through = excluded.through",
            );
            sql.build().execute(&mut *w.tx).await.map_err(backend)?;
        }
        Ok(w.commit().await?)
    }
}
