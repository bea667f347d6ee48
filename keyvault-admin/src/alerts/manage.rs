//! Alert rules and alerts as the API, the dashboard and the command line change them: every
//! change checked, audited in the same transaction, and refused attempts audited too.

use chrono::{DateTime, Utc};
use keyvault_core::{Actor, Alert, AlertQuery, AlertRule, Error as CoreError, KeyId, KeyStore};
use serde_json::{Value, json};
use uuid::Uuid;

use super::Spec;
use crate::{
    app::App,
    error::{Error, Result},
};

/// A new rule, as `POST /v1/alert-rules` gives it.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRule {
    pub name: String,
    pub kind: String,
    pub params: Value,
    pub key_id: Option<KeyId>,
    pub owner_id: Option<String>,
    pub enabled: bool,
}

/// A change to a rule: `None` keeps a field; `Some(None)` clears `key_id` or `owner_id`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RulePatch {
    pub name: Option<String>,
    pub kind: Option<String>,
    pub params: Option<Value>,
    pub key_id: Option<Option<KeyId>>,
    pub owner_id: Option<Option<String>>,
    pub enabled: Option<bool>,
}

fn check_name(name: &str) -> Result<(), CoreError> {
    if name.trim().is_empty() || name.chars().count() > 200 {
        return Err(CoreError::invalid(
            "name",
            "must be 1–200 characters, not blank",
        ));
    }
    Ok(())
}

fn check_owner(owner: Option<&str>) -> Result<(), CoreError> {
    match owner {
        Some(o) if o.trim().is_empty() || o.chars().count() > 200 => Err(CoreError::invalid(
            "owner_id",
            "must be 1–200 characters, not blank",
        )),
        _ => Ok(()),
    }
}

fn rule_details(r: &AlertRule) -> Value {
    json!({ "name": r.name, "kind": r.kind, "key_id": r.key_id, "owner_id": r.owner_id,
            "enabled": r.enabled })
}

impl App {
    /// Checks a rule's fields: its kind and params, its name, and that a key it names exists.
    async fn check_rule(&self, r: &AlertRule) -> Result<(), Error> {
        check_name(&r.name)?;
        Spec::parse(&r.kind, &r.params)?;
        check_owner(r.owner_id.as_deref())?;
        if r.key_id.is_some() && r.owner_id.is_some() {
            return Err(CoreError::invalid("owner_id", "give key_id or owner_id, not both").into());
        }
        if let Some(k) = r.key_id
            && self.backends.store.get(k).await?.is_none()
        {
            return Err(CoreError::invalid("key_id", format!("no key has the id {k}")).into());
        }
        Ok(())
    }

    /// Creates an alert rule.
    pub async fn create_alert_rule(&self, new: NewRule, actor: &Actor) -> Result<AlertRule> {
        let action = "alert_rule.create";
        let now = Self::now();
        let rule = AlertRule {
            id: Uuid::now_v7(),
            name: new.name.trim().to_owned(),
            kind: new.kind,
            params: if new.params.is_null() {
                json!({})
            } else {
                new.params
            },
            key_id: new.key_id,
            owner_id: new.owner_id,
            enabled: new.enabled,
            created_at: now,
            updated_at: now,
        };
        if let Err(e) = self.check_rule(&rule).await {
            return Err(self.refused(actor, action, None, e).await);
        }
        let event = Self::success(actor, action, &rule.id.to_string(), rule_details(&rule));
        self.backends.alerts.create_rule(&rule, &[event]).await?;
        Ok(rule)
    }

    /// Every rule, oldest first.
    pub async fn alert_rules(&self) -> Result<Vec<AlertRule>> {
        Ok(self.backends.alerts.rules().await?)
    }

    /// One rule; `NotFound` for an unknown (or malformed) id.
    pub async fn alert_rule(&self, id: &str) -> Result<AlertRule> {
        let missing = || Error::NotFound("alert rule".into());
        let id = Uuid::parse_str(id).map_err(|_| missing())?;
        self.backends.alerts.rule(id).await?.ok_or_else(missing)
    }

    /// Changes a rule (a changed kind needs params of that kind).
    pub async fn update_alert_rule(
        &self,
        id: &str,
        patch: RulePatch,
        actor: &Actor,
    ) -> Result<AlertRule> {
        let action = "alert_rule.update";
        let mut rule = match self.alert_rule(id).await {
            Ok(r) => r,
            Err(e) => return Err(self.refused(actor, action, None, e).await),
        };
        if let Some(n) = patch.name {
            rule.name = n.trim().to_owned();
        }
        if let Some(k) = patch.kind {
            rule.kind = k;
        }
        if let Some(p) = patch.params {
            rule.params = p;
        }
        if let Some(k) = patch.key_id {
            rule.key_id = k;
        }
        if let Some(o) = patch.owner_id {
            rule.owner_id = o;
        }
        if let Some(e) = patch.enabled {
            rule.enabled = e;
        }
        rule.updated_at = Self::now();
        if let Err(e) = self.check_rule(&rule).await {
            return Err(self
                .refused(actor, action, Some(rule.id.to_string()), e)
                .await);
        }
        let event = Self::success(actor, action, &rule.id.to_string(), rule_details(&rule));
        if !self.backends.alerts.update_rule(&rule, &[event]).await? {
            return Err(Error::NotFound("alert rule".into()));
        }
        Ok(rule)
    }

    /// Deletes a rule; its open alerts resolve, its history stays.
    pub async fn delete_alert_rule(&self, id: &str, actor: &Actor) -> Result<()> {
        let action = "alert_rule.delete";
        let rule = match self.alert_rule(id).await {
            Ok(r) => r,
            Err(e) => return Err(self.refused(actor, action, None, e).await),
        };
        let event = Self::success(actor, action, &rule.id.to_string(), rule_details(&rule));
        let open: Vec<Alert> = self
            .backends
            .alerts
            .open_alerts()
            .await?
            .into_iter()
            .filter(|a| a.rule_id == rule.id)
            .collect();
        let now = Self::now();
        if !self
            .backends
            .alerts
            .delete_rule(rule.id, now, &[event])
            .await?
        {
            return Err(Error::NotFound("alert rule".into()));
        }
        // Its alerts resolved with it: the channels hear so, as from an evaluation.
        let resolved: Vec<Alert> = open
            .into_iter()
            .map(|mut a| {
                a.state = keyvault_core::AlertState::Resolved;
                a.resolved_at = Some(now);
                a
            })
            .collect();
        let events = resolved.iter().map(|a| ("alert.resolved", a));
        if let Err(e) = self.notify_alerts(events).await {
            tracing::warn!(target: "keyvault::notify", error = %e.cli_line(), "alert.resolved not queued");
        }
        Ok(())
    }

    /// Alerts, newest first.
    pub async fn alerts(&self, query: &AlertQuery) -> Result<Vec<Alert>> {
        let now = Self::now();
        let alerts = self.backends.alerts.alerts(query).await?;
        Ok(alerts.into_iter().map(|a| a.as_of(now)).collect())
    }

    /// Acknowledges a firing alert (one already acknowledged or resolved is returned as it
    /// is); `NotFound` for an unknown id.
    pub async fn acknowledge_alert(&self, id: &str, actor: &Actor) -> Result<Alert> {
        let action = "alert.ack";
        let Ok(uuid) = Uuid::parse_str(id) else {
            let e = Error::NotFound("alert".into());
            return Err(self.refused(actor, action, None, e).await);
        };
        let event = Self::success(actor, action, &uuid.to_string(), json!({}));
        match self
            .backends
            .alerts
            .acknowledge(uuid, Self::now(), &[event])
            .await?
        {
            Some(a) => Ok(a.as_of(Self::now())),
            None => {
                let e = Error::NotFound("alert".into());
                Err(self.refused(actor, action, Some(uuid.to_string()), e).await)
            }
        }
    }

    /// Runs one evaluation of every rule now, whoever holds the lease (what `serve` does
    /// every `KEYVAULT_ALERT_INTERVAL` under it): for tests and batch jobs.
    pub async fn evaluate_alerts(
        &self,
        at: DateTime<Utc>,
        interval: std::time::Duration,
    ) -> Result<super::Transitions> {
        super::evaluate(self, at, interval).await
    }
}
