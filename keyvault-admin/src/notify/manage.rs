//! Notification channels as the API, the dashboard and the command line change them, the
//! events that become deliveries, and the test message.

use std::sync::Arc;

use chrono::Utc;
use keyvault_core::{Actor, Delivery, DeliveryState, Error as CoreError, NotifierRecord};
use serde_json::{Value, json};
use uuid::Uuid;

use super::{Attempt, EVENTS, Notifier, guard};
use crate::{
    app::App,
    error::{Error, Result},
};

/// A new channel, as `POST /v1/notifiers` gives it.
#[derive(Debug, Clone, PartialEq)]
pub struct NewNotifier {
    pub name: String,
    pub kind: String,
    pub url: String,
    /// The event types it receives; None or empty: all.
    pub events: Option<Vec<String>>,
}

/// A channel just made: a webhook's signing secret exists in plain text only here.
#[derive(Debug)]
pub struct CreatedNotifier {
    pub record: NotifierRecord,
    /// `whsec_…`, for channels whose notifier signs; show it once.
    pub secret: Option<String>,
}

/// What a test message came to (`POST /v1/notifiers/{id}/test`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestOutcome {
    pub delivered: bool,
    pub status: Option<u16>,
    pub error: Option<String>,
}

/// An event's body as every channel receives it.
pub(crate) fn event_body(event: &str, data: Value) -> String {
    json!({
        "type": event,
        "timestamp": Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "data": data,
    })
    .to_string()
}

/// A delivery of `body` to `channel`, due now, not yet attempted; its id is the
/// `webhook-id` every attempt carries.
fn delivery(channel: Uuid, event: &str, body: String) -> Delivery {
    let now = App::now();
    Delivery {
        id: format!("msg_{}", Uuid::now_v7().simple()),
        notifier_id: channel,
        event: event.to_owned(),
        body,
        attempts: 0,
        next_at: now,
        state: DeliveryState::Pending,
        last_status: None,
        last_error: None,
        created_at: now,
        updated_at: now,
    }
}

fn details(n: &NotifierRecord) -> Value {
    json!({ "name": n.name, "kind": n.kind, "url": guard::shown(&n.url), "events": n.events })
}

impl App {
    /// Adds a notifier channels can name by its kind (replacing a built-in one of the same
    /// kind): how a Rust user sends alerts by e-mail, to a pager, …
    pub fn with_notifier(mut self, notifier: Arc<dyn Notifier>) -> Self {
        let mut registry = (*self.notifiers).clone();
        registry.add(notifier);
        self.notifiers = Arc::new(registry);
        self
    }

    /// Replaces the resolver deliveries look host names up with (the address rule still
    /// applies to what it answers): for tests, and for hosts pinned by configuration.
    pub fn with_resolver(mut self, resolver: Arc<dyn guard::Resolver>) -> Result<Self> {
        self.outbound = Arc::new(super::Outbound::new(
            resolver,
            self.config.allow_private_webhooks,
            self.config.lang,
        )?);
        Ok(self)
    }

    fn check_notifier(&self, new: &NewNotifier) -> Result<(), CoreError> {
        if new.name.trim().is_empty() || new.name.chars().count() > 200 {
            return Err(CoreError::invalid(
                "name",
                "must be 1–200 characters, not blank",
            ));
        }
        if self.notifiers.get(&new.kind).is_none() {
            return Err(CoreError::invalid(
                "kind",
                format!("must be one of {}", self.notifiers.kinds().join(", ")),
            ));
        }
        if new.url.len() > 2_000 {
            return Err(CoreError::invalid(
                "url",
                "must be at most 2,000 characters",
            ));
        }
        guard::check_url(&new.url, self.config.allow_private_webhooks)
            .map_err(|why| CoreError::invalid("url", why))?;
        for (i, e) in new.events.iter().flatten().enumerate() {
            if !EVENTS.contains(&e.as_str()) {
                return Err(CoreError::invalid(
                    format!("events[{i}]"),
                    format!("must be one of {}", EVENTS.join(", ")),
                ));
            }
        }
        Ok(())
    }

    /// Creates a channel; a signing notifier's channel gets a new secret.
    pub async fn create_notifier(
        &self,
        new: NewNotifier,
        actor: &Actor,
    ) -> Result<CreatedNotifier> {
        let action = "notifier.create";
        if let Err(e) = self.check_notifier(&new) {
            return Err(self.refused(actor, action, None, e.into()).await);
        }
        let signs = self.notifiers.get(&new.kind).is_some_and(|n| n.signs());
        let secret = if signs {
            Some(super::new_secret()?)
        } else {
            None
        };
        let mut events = new.events.unwrap_or_default();
        events.dedup();
        let record = NotifierRecord {
            id: Uuid::now_v7(),
            name: new.name.trim().to_owned(),
            kind: new.kind,
            url: new.url,
            secret: secret.clone(),
            events,
            created_at: Self::now(),
        };
        let event = Self::success(actor, action, &record.id.to_string(), details(&record));
        self.backends
            .notifiers
            .create_notifier(&record, &[event])
            .await?;
        Ok(CreatedNotifier { record, secret })
    }

    /// Every channel, oldest first.
    pub async fn notifier_channels(&self) -> Result<Vec<NotifierRecord>> {
        Ok(self.backends.notifiers.notifiers().await?)
    }

    /// One channel; `NotFound` for an unknown (or malformed) id.
    pub async fn notifier_channel(&self, id: &str) -> Result<NotifierRecord> {
        let missing = || Error::NotFound("notifier".into());
        let id = Uuid::parse_str(id).map_err(|_| missing())?;
        self.backends
            .notifiers
            .notifier(id)
            .await?
            .ok_or_else(missing)
    }

    /// Deletes a channel with its pending deliveries.
    pub async fn delete_notifier(&self, id: &str, actor: &Actor) -> Result<()> {
        let action = "notifier.delete";
        let record = match self.notifier_channel(id).await {
            Ok(r) => r,
            Err(e) => return Err(self.refused(actor, action, None, e).await),
        };
        let event = Self::success(actor, action, &record.id.to_string(), details(&record));
        if !self
            .backends
            .notifiers
            .delete_notifier(record.id, &[event])
            .await?
        {
            let e = Error::NotFound("notifier".into());
            return Err(self.refused(actor, action, Some(id.to_owned()), e).await);
        }
        Ok(())
    }

    /// Sends a `test` event to a channel now, once, never retried.
    pub async fn test_notifier(&self, id: &str, actor: &Actor) -> Result<TestOutcome> {
        let action = "notifier.test";
        let channel = match self.notifier_channel(id).await {
            Ok(r) => r,
            Err(e) => return Err(self.refused(actor, action, None, e).await),
        };
        let Some(notifier) = self.notifiers.get(&channel.kind).cloned() else {
            let e = Error::Core(CoreError::invalid(
                "kind",
                format!("no notifier sends {:?} channels", channel.kind),
            ));
            return Err(self.refused(actor, action, Some(id.to_owned()), e).await);
        };
        let test = delivery(channel.id, "test", event_body("test", json!({})));
        let attempt = notifier.deliver(&channel, &test, &self.outbound).await;
        metrics::counter!("keyvault_notifications_total", "outcome" => attempt.label())
            .increment(1);
        let outcome = match attempt {
            Attempt::Delivered { status } => TestOutcome {
                delivered: true,
                status: Some(status),
                error: None,
            },
            Attempt::Failed { status, error } => TestOutcome {
                delivered: false,
                status,
                error: Some(error),
            },
            Attempt::Refused { error } => TestOutcome {
                delivered: false,
                status: None,
                error: Some(error),
            },
        };
        let record = json!({ "delivered": outcome.delivered, "status": outcome.status });
        self.audit(
            actor,
            action,
            Some(channel.id.to_string()),
            keyvault_core::AuditOutcome::Success,
            record,
        )
        .await?;
        Ok(outcome)
    }

    /// Puts an event in the outbox for every channel that wants it.
    pub(crate) async fn notify(&self, event: &str, data: Value) -> Result<usize> {
        self.notify_all(vec![(event, data)]).await
    }

    /// Puts events in the outbox for every channel that wants each, reading the channels
    /// once (an evaluation may open thousands of alerts).
    pub(crate) async fn notify_all(&self, events: Vec<(&str, Value)>) -> Result<usize> {
        let deliveries = self.outbox(events).await?;
        if !deliveries.is_empty() {
            self.backends.notifiers.enqueue(&deliveries).await?;
        }
        Ok(deliveries.len())
    }

    /// The deliveries of `events` to the channels that want them, not yet queued.
    async fn outbox(&self, events: Vec<(&str, Value)>) -> Result<Vec<Delivery>> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let channels = self.backends.notifiers.notifiers().await?;
        let mut deliveries = Vec::new();
        for (event, data) in events {
            let body = event_body(event, data);
            deliveries.extend(
                channels
                    .iter()
                    .filter(|c| c.wants(event))
                    .map(|c| delivery(c.id, event, body.clone())),
            );
        }
        Ok(deliveries)
    }

    /// The `alert.firing` or `alert.resolved` events of these alerts, each carrying the
    /// alert as `GET /v1/alerts` shows it.
    pub(crate) async fn notify_alerts<'a>(
        &self,
        alerts: impl IntoIterator<Item = (&'a str, &'a keyvault_core::Alert)>,
    ) -> Result<usize> {
        let deliveries = self.alert_outbox(alerts).await?;
        if !deliveries.is_empty() {
            self.backends.notifiers.enqueue(&deliveries).await?;
        }
        Ok(deliveries.len())
    }

    /// The deliveries of [`notify_alerts`](Self::notify_alerts), not yet queued: an
    /// evaluation stores them with the alerts, in one transaction.
    pub(crate) async fn alert_outbox<'a>(
        &self,
        alerts: impl IntoIterator<Item = (&'a str, &'a keyvault_core::Alert)>,
    ) -> Result<Vec<Delivery>> {
        let events = alerts
            .into_iter()
            .map(|(event, a)| {
                serde_json::to_value(crate::api::alerts::AlertView::from(a.clone()))
                    .map(|data| (event, data))
                    .map_err(|e| Error::Internal(format!("alert not serialisable: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        self.outbox(events).await
    }

    /// Rotates a key (as [`Keyvault::rotate_key`](keyvault_core::Keyvault::rotate_key) does)
    /// and tells the channels that want `key.rotated`: the two keys' ids, never a key.
    pub async fn rotate_key(
        &self,
        id: keyvault_core::KeyId,
        grace: Option<std::time::Duration>,
        actor: &Actor,
    ) -> Result<keyvault_core::RotatedKey> {
        let rotated = self.kv.rotate_key(id, grace, actor).await?;
        let data = json!({ "id": rotated.record.id, "old_id": rotated.old_id });
        if let Err(e) = self.notify("key.rotated", data).await {
            // The rotation stands; only its notice is lost, and the log says so.
            tracing::warn!(target: "keyvault::notify", error = %e.cli_line(), key = %id, "key.rotated not queued");
        }
        Ok(rotated)
    }

    /// Writes the client signals gathered so far (`serve` does every second): for tests and
    /// batch jobs that evaluate right after verifying.
    pub async fn flush_signals(&self) -> Result<()> {
        self.backends.flush_signals().await
    }

    /// Attempts the deliveries due now, whoever holds the lease (what `serve` does every
    /// second under it): for tests and batch jobs.
    pub async fn deliver_notifications(&self) -> Result<usize> {
        super::deliver_due(self, Utc::now()).await
    }
}
