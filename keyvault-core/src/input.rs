//! What callers send to create or change a key. Both types deserialise from the REST API's
//! JSON (unknown fields refused) and are validated by [`crate::Keyvault`].

use chrono::{DateTime, Utc};
use ipnet::IpNet;
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

use crate::{
    error::InvalidInput,
    key::Prefix,
    model::{
        Credits, RateLimit, RotationPolicy, parse_allowlist, validate_allowlist, validate_metadata,
        validate_name, validate_owner, validate_ratelimits, validate_scopes,
    },
};

/// A key to create.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    /// Required name.
    pub name: String,
    /// Prefix (default `kv`; `kvt` is reserved).
    #[serde(default)]
    pub prefix: Option<Prefix>,
    /// Owner.
    #[serde(default)]
    pub owner_id: Option<String>,
    /// Enabled at creation (default true).
    #[serde(default)]
    pub enabled: Option<bool>,
    /// Expiry (must be in the future).
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
    /// Credits.
    #[serde(default)]
    pub credits: Option<Credits>,
    /// Rate limits.
    #[serde(default)]
    pub ratelimits: Vec<RateLimit>,
    /// Scopes.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Allowed networks.
    #[serde(default, deserialize_with = "de_allowlist")]
    pub ip_allowlist: Vec<IpNet>,
    /// Free-form metadata.
    #[serde(default)]
    pub metadata: Map<String, Value>,
    /// Automatic rotation.
    #[serde(default)]
    pub rotation: Option<RotationPolicy>,
}

impl NewKey {
    /// A key named `name` with no limits.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ..Self::default()
        }
    }

    /// Sets the prefix.
    pub fn prefix(mut self, prefix: Prefix) -> Self {
        self.prefix = Some(prefix);
        self
    }
    /// Sets the owner.
    pub fn owner(mut self, owner: impl Into<String>) -> Self {
        self.owner_id = Some(owner.into());
        self
    }
    /// Sets the expiry.
    pub fn expires_at(mut self, at: DateTime<Utc>) -> Self {
        self.expires_at = Some(at);
        self
    }
    /// Sets the credits.
    pub fn credits(mut self, credits: Credits) -> Self {
        self.credits = Some(credits);
        self
    }
    /// Adds a rate limit.
    pub fn ratelimit(mut self, limit: RateLimit) -> Self {
        self.ratelimits.push(limit);
        self
    }
    /// Adds a scope.
    pub fn scope(mut self, scope: impl Into<String>) -> Self {
        self.scopes.push(scope.into());
        self
    }
    /// Adds an allowed network.
    pub fn allow(mut self, net: IpNet) -> Self {
        self.ip_allowlist.push(net);
        self
    }
    /// Sets metadata.
    pub fn metadata(mut self, metadata: Map<String, Value>) -> Self {
        self.metadata = metadata;
        self
    }
    /// Sets the rotation policy.
    pub fn rotation(mut self, policy: RotationPolicy) -> Self {
        self.rotation = Some(policy);
        self
    }
    /// Creates the key disabled.
    pub fn disabled(mut self) -> Self {
        self.enabled = Some(false);
        self
    }

    pub(crate) fn validate(&self, now: DateTime<Utc>) -> Result<(), InvalidInput> {
        validate_name(&self.name)?;
        if let Some(p) = &self.prefix {
            Prefix::new(p.as_str())?;
        }
        validate_owner(self.owner_id.as_deref())?;
        if let Some(at) = self.expires_at
            && at <= now
        {
            return Err(InvalidInput::new("expires_at", "must be in the future"));
        }
        if let Some(c) = &self.credits {
            c.validate()?;
        }
        validate_ratelimits(&self.ratelimits)?;
        validate_scopes(&self.scopes)?;
        validate_allowlist(&self.ip_allowlist)?;
        validate_metadata(&self.metadata)?;
        if let Some(r) = &self.rotation {
            r.validate()?;
        }
        Ok(())
    }
}

/// A change to a key: each given field replaces the stored one whole; for the nullable ones,
/// `Some(None)` (JSON `null`) clears it.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct KeyPatch {
    /// New name (`null` is refused).
    #[serde(default, deserialize_with = "de_not_null")]
    pub name: Option<String>,
    /// New owner, or `null` for none.
    #[serde(default, deserialize_with = "de_nullable")]
    pub owner_id: Option<Option<String>>,
    /// Enable or disable (`null` is refused).
    #[serde(default, deserialize_with = "de_not_null")]
    pub enabled: Option<bool>,
    /// New expiry, or `null` for never.
    #[serde(default, deserialize_with = "de_nullable")]
    pub expires_at: Option<Option<DateTime<Utc>>>,
    /// New credits (the balance is set to `remaining`), or `null` for unlimited.
    #[serde(default, deserialize_with = "de_nullable")]
    pub credits: Option<Option<Credits>>,
    /// New rate limits (a changed limit starts full); `null` clears them.
    #[serde(default, deserialize_with = "de_null_is_empty")]
    pub ratelimits: Option<Vec<RateLimit>>,
    /// New scopes; `null` clears them.
    #[serde(default, deserialize_with = "de_null_is_empty")]
    pub scopes: Option<Vec<String>>,
    /// New allow-list; `null` clears it (any address).
    #[serde(default, deserialize_with = "de_opt_allowlist")]
    pub ip_allowlist: Option<Vec<IpNet>>,
    /// New metadata; `null` clears it.
    #[serde(default, deserialize_with = "de_null_is_empty")]
    pub metadata: Option<Map<String, Value>>,
    /// New rotation policy, or `null` for none.
    #[serde(default, deserialize_with = "de_nullable")]
    pub rotation: Option<Option<RotationPolicy>>,
}

impl KeyPatch {
    pub(crate) fn validate(&self) -> Result<(), InvalidInput> {
        if let Some(n) = &self.name {
            validate_name(n)?;
        }
        if let Some(o) = &self.owner_id {
            validate_owner(o.as_deref())?;
        }
        if let Some(Some(c)) = &self.credits {
            c.validate()?;
        }
        if let Some(l) = &self.ratelimits {
            validate_ratelimits(l)?;
        }
        if let Some(s) = &self.scopes {
            validate_scopes(s)?;
        }
        if let Some(n) = &self.ip_allowlist {
            validate_allowlist(n)?;
        }
        if let Some(m) = &self.metadata {
            validate_metadata(m)?;
        }
        if let Some(Some(r)) = &self.rotation {
            r.validate()?;
        }
        Ok(())
    }

    /// Whether nothing would change.
    pub fn is_empty(&self) -> bool {
        self.name.is_none()
            && self.enabled.is_none()
            && self.expires_at.is_none()
            && self.credits.is_none()
            && self.ratelimits.is_none()
            && self.scopes.is_none()
            && self.ip_allowlist.is_none()
            && self.metadata.is_none()
            && self.rotation.is_none()
    }

    /// The names of the fields given (for the audit record).
    pub fn fields(&self) -> Vec<&'static str> {
        [
            ("name", self.name.is_some()),
            ("owner_id", self.owner_id.is_some()),
            ("enabled", self.enabled.is_some()),
            ("expires_at", self.expires_at.is_some()),
            ("credits", self.credits.is_some()),
            ("ratelimits", self.ratelimits.is_some()),
            ("scopes", self.scopes.is_some()),
            ("ip_allowlist", self.ip_allowlist.is_some()),
            ("metadata", self.metadata.is_some()),
            ("rotation", self.rotation.is_some()),
        ]
        .into_iter()
        .filter_map(|(n, given)| given.then_some(n))
        .collect()
    }
}

fn de_nullable<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

fn de_not_null<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    match Option::<T>::deserialize(d)? {
        Some(v) => Ok(Some(v)),
        None => Err(serde::de::Error::custom("must not be null")),
    }
}

/// A present field whose `null` stands for its empty value (a list or a map is cleared).
fn de_null_is_empty<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Option::<T>::deserialize(d).map(|v| Some(v.unwrap_or_default()))
}

fn de_allowlist<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpNet>, D::Error> {
    let items = Vec::<String>::deserialize(d)?;
    parse_allowlist(&items).map_err(serde::de::Error::custom)
}

fn de_opt_allowlist<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<IpNet>>, D::Error> {
    let items = Option::<Vec<String>>::deserialize(d)?.unwrap_or_default();
    parse_allowlist(&items)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_distinguishes_absent_null_and_value() {
        let p: KeyPatch =
            serde_json::from_str(r#"{"expires_at": null, "credits": {"remaining": 5}}"#).unwrap();
        assert_eq!(p.expires_at, Some(None));
        assert_eq!(p.credits, Some(Some(Credits::new(5))));
        assert_eq!(p.rotation, None);
        assert_eq!(p.fields(), ["expires_at", "credits"]);
        assert!(serde_json::from_str::<KeyPatch>(r#"{"name": null}"#).is_err());
        assert!(serde_json::from_str::<KeyPatch>(r#"{"enabled": null}"#).is_err());
        assert!(serde_json::from_str::<KeyPatch>(r#"{"nmae": "x"}"#).is_err());
        let cleared: KeyPatch = serde_json::from_str(
            r#"{"ratelimits": null, "scopes": null, "ip_allowlist": null, "metadata": null}"#,
        )
        .unwrap();
        assert_eq!(cleared.ratelimits, Some(vec![]));
        assert_eq!(cleared.scopes, Some(vec![]));
        assert_eq!(cleared.ip_allowlist, Some(vec![]));
        assert_eq!(cleared.metadata, Some(Map::new()));
    }

    #[test]
    fn new_key_json_is_validated() {
        let k: NewKey = serde_json::from_str(
            r#"{"name":"a","ip_allowlist":["10.0.0.0/8","::1"],"ratelimits":[{"name":"m","limit":5,"period_ms":60000}]}"#,
        )
        .unwrap();
        assert_eq!(k.ip_allowlist.len(), 2);
        assert!(serde_json::from_str::<NewKey>(r#"{"name":"a","ip_allowlist":["x"]}"#).is_err());
        assert!(serde_json::from_str::<NewKey>(r#"{"name":"a","prefix":"Bad"}"#).is_err());
        assert!(serde_json::from_str::<NewKey>(r#"{"name":"a","extra":1}"#).is_err());
        let kvt: NewKey = serde_json::from_str(r#"{"name":"a","prefix":"kvt"}"#).unwrap();
        assert_eq!(kvt.validate(Utc::now()).unwrap_err().field, "prefix");
    }
}
