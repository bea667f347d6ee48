//! Alert rules, the alerts they raise and the baselines their evaluation keeps
//! (CONTRACT §7), behind one capability trait.

use std::fmt::Debug;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{Delivery, KeyId, audit::AuditEvent, error::Result};

/// A condition watched over the keys: its `kind` and `params` are the server's to read
/// (stores keep them as given), `key_id` or `owner_id` narrows it to one key or one owner's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertRule {
    pub id: Uuid,
    pub name: String,
    /// `credits_low`, `expiring`, `error_rate`, … (CONTRACT §7).
    pub kind: String,
    pub params: serde_json::Value,
    pub key_id: Option<KeyId>,
    pub owner_id: Option<String>,
    pub enabled: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Where an alert is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertState {
    /// Its condition holds and nobody has acknowledged it.
    Firing,
    /// Someone has seen it; its condition may still hold.
    Acknowledged,
    /// Its condition stopped holding (or it was an event that has lapsed).
    Resolved,
}

impl AlertState {
    /// `firing`, `acknowledged` or `resolved`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Firing => "firing",
            Self::Acknowledged => "acknowledged",
            Self::Resolved => "resolved",
        }
    }

    /// The state named by [`AlertState::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "firing" => Some(Self::Firing),
            "acknowledged" => Some(Self::Acknowledged),
            "resolved" => Some(Self::Resolved),
            _ => None,
        }
    }
}

/// One alert: a rule's condition holding for one subject (a key, or a client IP).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// A UUIDv7: alerts sort by it as by `started_at`.
    pub id: Uuid,
    pub rule_id: Uuid,
    pub kind: String,
    pub key_id: Option<KeyId>,
    pub ip: Option<String>,
    pub state: AlertState,
    pub value: f64,
    pub threshold: f64,
    /// One line saying what happened, in English (notifiers translate their own text).
    pub summary: String,
    pub started_at: DateTime<Utc>,
    pub acknowledged_at: Option<DateTime<Utc>>,
    pub resolved_at: Option<DateTime<Utc>>,
    /// The last evaluation known to have found the condition holding: an alert resolves once
    /// a whole interval has passed without one. A holding alert whose figures do not move is
    /// not rewritten by every evaluation, so while [`Alert::quiet_since`] is unset the
    /// evaluation that ran last counts as seeing it too.
    pub last_seen_at: DateTime<Utc>,
    /// The first evaluation that did not find the condition holding (since it last did); unset
    /// while it holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quiet_since: Option<DateTime<Utc>>,
}

impl Alert {
    /// What the alert is about within its rule: the key's id, the client IP, or both (a key
    /// used from a new network). A rule has at most one unresolved alert per subject.
    pub fn subject(&self) -> String {
        Self::subject_of(self.key_id, self.ip.as_deref())
    }

    /// The alert's value at `now`. An open `expiring` alert's value is the seconds its key
    /// has left; the evaluation does not rewrite it while the key's expiry stays put, so the
    /// value counts down from its last write (and stops when the alert went quiet).
    pub fn value_at(&self, now: DateTime<Utc>) -> f64 {
        if self.kind != "expiring" || self.state == AlertState::Resolved {
            return self.value;
        }
        let until = self.quiet_since.unwrap_or(now).min(now);
        let elapsed = (until - self.last_seen_at).num_milliseconds().max(0) as f64 / 1_000.0;
        (self.value - elapsed).max(0.0).round()
    }

    /// The alert as it reads at `now` (see [`Alert::value_at`]).
    #[must_use]
    pub fn as_of(mut self, now: DateTime<Utc>) -> Self {
        self.value = self.value_at(now);
        self
    }

    /// The subject of an alert on `key_id` and `ip` (see [`Alert::subject`]).
    pub fn subject_of(key_id: Option<KeyId>, ip: Option<&str>) -> String {
        match (key_id, ip) {
            (Some(k), Some(ip)) => format!("key:{k}/ip:{ip}"),
            (None, Some(ip)) => format!("ip:{ip}"),
            (Some(k), None) => format!("key:{k}"),
            (None, None) => "all".to_owned(),
        }
    }
}

/// Which alerts to list, newest first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AlertQuery {
    pub state: Option<AlertState>,
    pub rule_id: Option<Uuid>,
    pub key_id: Option<KeyId>,
    /// Only alerts older than this one (the cursor of the previous page).
    pub before: Option<Uuid>,
    pub limit: usize,
}

/// A key's traffic baseline for one `traffic_spike` rule: the weighted mean of its calls
/// per window, how many windows went into it, and the end of the last of them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    pub key_id: KeyId,
    pub mean: f64,
    pub windows: u32,
    pub through: DateTime<Utc>,
}

/// Rules, alerts and baselines in the database, shared by every instance; the evaluation
/// runs on one instance at a time (under a [`LeaseStore`](crate::LeaseStore) lease), and a
/// rule's unresolved alert per subject is unique in the store as well.
#[async_trait]
pub trait AlertStore: Send + Sync + Debug {
    /// Stores a new rule. `Conflict` when its id exists.
    async fn create_rule(&self, rule: &AlertRule, audit: &[AuditEvent]) -> Result<()>;

    /// Replaces a rule; false (and nothing written) when there is none with its id.
    async fn update_rule(&self, rule: &AlertRule, audit: &[AuditEvent]) -> Result<bool>;

    /// Deletes a rule with its baselines, resolving its unresolved alerts at `at` (their
    /// history stays); false when there is none.
    async fn delete_rule(&self, id: Uuid, at: DateTime<Utc>, audit: &[AuditEvent]) -> Result<bool>;

    async fn rule(&self, id: Uuid) -> Result<Option<AlertRule>>;

    /// Every rule, oldest first.
    async fn rules(&self) -> Result<Vec<AlertRule>>;

    /// Alerts matching `query`, newest first, at most `query.limit`.
    async fn alerts(&self, query: &AlertQuery) -> Result<Vec<Alert>>;

    async fn alert(&self, id: Uuid) -> Result<Option<Alert>>;

    /// Every alert not yet resolved.
    async fn open_alerts(&self) -> Result<Vec<Alert>>;

    /// How many alerts are firing (not acknowledged, not resolved).
    async fn firing_count(&self) -> Result<u64>;

    /// Writes the alerts an evaluation opened or changed, in one transaction (each replaces
    /// the stored alert with its id). `Conflict`, and nothing written, when a new alert
    /// would be a second unresolved one of its rule and subject.
    async fn save_alerts(&self, alerts: &[Alert]) -> Result<()> {
        self.save_transitions(alerts, &[]).await
    }

    /// [`save_alerts`](Self::save_alerts), queueing the notifications of those alerts'
    /// transitions in the same transaction (as [`NotifierStore::enqueue`] would): an alert
    /// is never stored as fired without its notices, nor a notice queued for an alert that
    /// was not stored.
    ///
    /// [`NotifierStore::enqueue`]: crate::NotifierStore::enqueue
    async fn save_transitions(&self, alerts: &[Alert], outbox: &[Delivery]) -> Result<()>;

    /// Acknowledges a firing alert at `at`; the alert as it is now (unchanged when it was not
    /// firing, nothing audited then), or None when there is none.
    async fn acknowledge(
        &self,
        id: Uuid,
        at: DateTime<Utc>,
        audit: &[AuditEvent],
    ) -> Result<Option<Alert>>;

    /// The baselines of a rule's keys.
    async fn baselines(&self, rule_id: Uuid) -> Result<Vec<Baseline>>;

    /// Replaces the baselines of a rule's keys that are given (others stay).
    async fn save_baselines(&self, rule_id: Uuid, baselines: &[Baseline]) -> Result<()>;
}
