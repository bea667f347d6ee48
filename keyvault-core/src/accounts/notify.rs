//! Notification channels and the outbox of their deliveries (CONTRACT §7), behind one
//! capability trait. A delivery is written once, when its event happens (right after an
//! evaluation stores an alert's transition), and then attempted until it succeeds or its
//! last attempt fails: it survives restarts because it lives in the database.

use std::fmt::Debug;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{audit::AuditEvent, error::Result};

/// A channel notifications go to: its `kind` (`webhook`, `slack`, or one a Rust user adds)
/// is the server's to read; stores keep it as given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NotifierRecord {
    pub id: Uuid,
    pub name: String,
    pub kind: String,
    /// Where deliveries go. A Slack URL is a credential: shown as its scheme and host only.
    pub url: String,
    /// A webhook's signing secret (`whsec_…`), shown once when the channel is made.
    pub secret: Option<String>,
    /// The event types it receives (`alert.firing`, …); empty means all.
    pub events: Vec<String>,
    pub created_at: DateTime<Utc>,
}

impl NotifierRecord {
    /// Whether the channel receives events of this type.
    pub fn wants(&self, event: &str) -> bool {
        self.events.is_empty() || self.events.iter().any(|e| e == event)
    }
}

/// Where a delivery is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// Waiting for its next attempt, at `next_at`.
    Pending,
    /// An attempt got a 2xx answer.
    Delivered,
    /// Its last attempt failed.
    GaveUp,
}

impl DeliveryState {
    /// `pending`, `delivered` or `gave_up`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::GaveUp => "gave_up",
        }
    }

    /// The state named by [`DeliveryState::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(Self::Pending),
            "delivered" => Some(Self::Delivered),
            "gave_up" => Some(Self::GaveUp),
            _ => None,
        }
    }
}

/// One event on its way to one channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    /// The `webhook-id`: the same on every attempt (`msg_` and a UUIDv7).
    pub id: String,
    pub notifier_id: Uuid,
    /// `alert.firing`, `alert.resolved`, `key.rotated`, …
    pub event: String,
    /// The JSON body, fixed when the event happened.
    pub body: String,
    /// Attempts made so far.
    pub attempts: u32,
    pub next_at: DateTime<Utc>,
    pub state: DeliveryState,
    /// The last attempt's HTTP status, if it got an answer.
    pub last_status: Option<u16>,
    /// Why the last attempt failed, without any secret or URL path.
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Channels and their outbox, shared by every instance; deliveries are attempted on one
/// instance at a time (under a [`LeaseStore`](crate::LeaseStore) lease).
#[async_trait]
pub trait NotifierStore: Send + Sync + Debug {
    /// Stores a new channel. `Conflict` when its id exists.
    async fn create_notifier(&self, n: &NotifierRecord, audit: &[AuditEvent]) -> Result<()>;

    /// Deletes a channel and its pending deliveries; false when there is none.
    async fn delete_notifier(&self, id: Uuid, audit: &[AuditEvent]) -> Result<bool>;

    async fn notifier(&self, id: Uuid) -> Result<Option<NotifierRecord>>;

    /// Every channel, oldest first.
    async fn notifiers(&self) -> Result<Vec<NotifierRecord>>;

    /// Adds deliveries to the outbox; one whose id is already there is left as it is.
    async fn enqueue(&self, deliveries: &[Delivery]) -> Result<()>;

    /// Pending deliveries due at `now`, the earliest `next_at` first, at most `limit`.
    async fn due_deliveries(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<Delivery>>;

    /// Replaces a delivery's attempts, state, `next_at`, last status and error; false when it
    /// is gone (its channel was deleted).
    async fn update_delivery(&self, d: &Delivery) -> Result<bool>;

    /// A channel's deliveries, newest first, at most `limit`.
    async fn deliveries(&self, notifier_id: Uuid, limit: usize) -> Result<Vec<Delivery>>;
}
