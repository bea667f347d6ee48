//! The JSON shapes of keys and tokens, shared by the API and `--json` output. None of them
//! holds a key, a token or a digest.

use chrono::{DateTime, Utc};
use keyvault_core::{KeyRecord, Keyvault, RateLimit, Refill, RotationPolicy};
use serde::Serialize;
use serde_json::{Map, Value};

use keyvault_core::TokenRecord;

use crate::error::Result;

/// A key's credits: the live balance and the refill.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct CreditsView {
    pub(crate) remaining: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) refill: Option<Refill>,
}

/// `GET /v1/keys/{id}`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct KeyView {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) start: String,
    pub(crate) prefix: String,
    pub(crate) owner_id: Option<String>,
    pub(crate) enabled: bool,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) updated_at: DateTime<Utc>,
    pub(crate) expires_at: Option<DateTime<Utc>>,
    pub(crate) credits: Option<CreditsView>,
    pub(crate) ratelimits: Vec<RateLimit>,
    pub(crate) scopes: Vec<String>,
    pub(crate) ip_allowlist: Vec<String>,
    pub(crate) metadata: Map<String, Value>,
    pub(crate) rotation: Option<RotationPolicy>,
    pub(crate) next_rotation_at: Option<DateTime<Utc>>,
    pub(crate) rotated_from: Option<String>,
    pub(crate) superseded_by: Option<String>,
    pub(crate) grace_until: Option<DateTime<Utc>>,
    pub(crate) last_used_at: Option<DateTime<Utc>>,
}

impl KeyView {
    /// The view of `r` with its live credit balance.
    pub(crate) async fn load(kv: &Keyvault, r: &KeyRecord) -> Result<Self> {
        let remaining = kv.credits_remaining(r).await?;
        Ok(Self::with_balance(r, remaining))
    }

    pub(crate) fn with_balance(r: &KeyRecord, remaining: Option<u64>) -> Self {
        Self {
            id: r.id.to_string(),
            name: r.name.clone(),
            start: r.start.clone(),
            prefix: r.prefix.as_str().to_owned(),
            owner_id: r.owner_id.clone(),
            enabled: r.enabled,
            created_at: r.created_at,
            updated_at: r.updated_at,
            expires_at: r.expires_at,
            credits: r.credits.map(|c| CreditsView {
                remaining: remaining.unwrap_or(c.remaining),
                refill: c.refill,
            }),
            ratelimits: r.ratelimits.clone(),
            scopes: r.scopes.clone(),
            ip_allowlist: r.ip_allowlist.iter().map(ToString::to_string).collect(),
            metadata: r.metadata.clone(),
            rotation: r.rotation,
            next_rotation_at: r.next_rotation_at,
            rotated_from: r.rotated_from.map(|i| i.to_string()),
            superseded_by: r.superseded_by.map(|i| i.to_string()),
            grace_until: r.grace_until,
            last_used_at: r.last_used_at,
        }
    }
}

/// An API token's public fields.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct TokenView {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) role: String,
    pub(crate) start: String,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) expires_at: Option<DateTime<Utc>>,
    pub(crate) created_by: String,
}

impl From<&TokenRecord> for TokenView {
    fn from(t: &TokenRecord) -> Self {
        Self {
            id: t.id.to_string(),
            name: t.name.clone(),
            role: t.role.as_str().to_owned(),
            start: t.start.clone(),
            created_at: t.created_at,
            expires_at: t.expires_at,
            created_by: t.created_by.clone(),
        }
    }
}
