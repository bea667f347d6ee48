//! The JSON shapes of keys, tokens and users, shared by the API and `--json` output. None of them
//! holds a key, a token or a digest.

use chrono::{DateTime, Utc};
use keyvault_core::{
    KeyRecord, Keyvault, RateLimit, Refill, RotationPolicy, Successor, TokenRecord, UserRecord,
};
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::{
    api::{
        shapes,
        wire::{RateLimitBody, RefillBody, RotationBody},
    },
    error::Result,
};

/// A key's credits: the live balance and the refill.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = KeyCredits)]
pub(crate) struct CreditsView {
    /// The balance now.
    pub(crate) remaining: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<RefillBody>)]
    pub(crate) refill: Option<Refill>,
}

/// A key (never the key itself or its digest).
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = Key)]
pub(crate) struct KeyView {
    #[schema(schema_with = shapes::uuid)]
    pub(crate) id: String,
    pub(crate) name: String,
    /// The prefix and the first four characters of the body (`kv_AbCd`).
    pub(crate) start: String,
    pub(crate) prefix: String,
    pub(crate) owner_id: Option<String>,
    pub(crate) enabled: bool,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) updated_at: DateTime<Utc>,
    pub(crate) expires_at: Option<DateTime<Utc>>,
    /// The live balance and the refill; null: unlimited.
    pub(crate) credits: Option<CreditsView>,
    #[schema(value_type = Vec<RateLimitBody>)]
    pub(crate) ratelimits: Vec<RateLimit>,
    pub(crate) scopes: Vec<String>,
    pub(crate) ip_allowlist: Vec<String>,
    #[schema(value_type = Object)]
    pub(crate) metadata: Map<String, Value>,
    #[schema(value_type = Option<RotationBody>)]
    pub(crate) rotation: Option<RotationPolicy>,
    pub(crate) next_rotation_at: Option<DateTime<Utc>>,
    /// The key this one replaced.
    #[schema(schema_with = shapes::uuid_or_null)]
    pub(crate) rotated_from: Option<String>,
    /// The key that replaced this one.
    #[schema(schema_with = shapes::uuid_or_null)]
    pub(crate) superseded_by: Option<String>,
    /// After a rotation: when this (old) key stops verifying.
    pub(crate) grace_until: Option<DateTime<Utc>>,
    /// After an automatic rotation, on the old key: `sealed` until its holder claims the new
    /// key (`POST /v1/keys/successor`), then `claimed`; null otherwise.
    #[schema(value_type = Option<String>, example = "sealed")]
    pub(crate) successor: Option<&'static str>,
    /// The last verification of this key (on an old key during its grace: whether traffic
    /// has moved to the new one yet).
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
            successor: r.successor.as_ref().map(|s| match s {
                Successor::Sealed { .. } => "sealed",
                Successor::Claimed { .. } => "claimed",
            }),
            last_used_at: r.last_used_at,
        }
    }
}

/// An API token's public fields.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = Token)]
pub(crate) struct TokenView {
    #[schema(schema_with = shapes::uuid)]
    pub(crate) id: String,
    pub(crate) name: String,
    #[schema(value_type = RoleName)]
    pub(crate) role: String,
    /// `kvt_` and the first four characters of the token's body.
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

/// A dashboard user's public fields (never the password hash): `users list --json`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct UserView {
    pub(crate) username: String,
    pub(crate) role: String,
    pub(crate) enabled: bool,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) updated_at: DateTime<Utc>,
}

impl From<&UserRecord> for UserView {
    fn from(u: &UserRecord) -> Self {
        Self {
            username: u.username.clone(),
            role: u.role.as_str().to_owned(),
            enabled: u.enabled,
            created_at: u.created_at,
            updated_at: u.updated_at,
        }
    }
}

/// A role's name: the schema of `crate::auth::Role` (which lives with the other roles' code).
#[derive(ToSchema)]
#[schema(as = Role, rename_all = "lowercase")]
#[allow(dead_code)]
pub(crate) enum RoleName {
    /// Everything, API tokens and users included.
    Admin,
    /// Keys; reads the audit log.
    Operator,
    /// Reads keys and statistics.
    Viewer,
    /// Verifies keys and reports usage.
    Verifier,
}

#[cfg(test)]
mod tests {
    use utoipa::PartialSchema;

    use super::*;
    use crate::auth::Role;

    #[test]
    fn the_role_schema_names_every_role() {
        let schema = serde_json::to_value(RoleName::schema()).unwrap();
        let names: Vec<&str> = schema["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(names, ["admin", "operator", "viewer", "verifier"]);
        for n in names {
            assert_eq!(n.parse::<Role>().unwrap().as_str(), n);
        }
    }
}
