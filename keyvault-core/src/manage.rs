//! Key management: create, change, delete, in batches and on schedule (rotation: `rotate.rs`).

use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use serde_json::json;

use crate::{
    audit::{Actor, AuditEvent, AuditOutcome},
    changes::Change,
    error::{Error, Result},
    input::{KeyPatch, NewKey},
    key::{ApiKey, Prefix},
    model::{KeyId, KeyRecord, RateLimit},
    store::{KeyQuery, KeyStore, KeyWrite, Page},
    successor::SealKey,
    vault::Keyvault,
};

/// A key just created: the only time its plaintext exists.
#[derive(Debug, Clone)]
pub struct CreatedKey {
    /// The plaintext (redacted in `Debug`).
    pub key: ApiKey,
    /// The stored record.
    pub record: KeyRecord,
}

/// A batch action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BatchAction {
    /// Enable every key.
    Enable,
    /// Disable every key.
    Disable,
    /// Delete every key.
    Delete,
}

impl Keyvault {
    pub(crate) fn now(&self) -> DateTime<Utc> {
        // Stores keep microseconds; truncating here keeps what is returned equal to what is read.
        self.inner.clock.now().trunc_subsecs(6)
    }

    pub(crate) async fn write(&self, writes: Vec<KeyWrite>, audit: Vec<AuditEvent>) -> Result<()> {
        self.inner.keys.apply(&writes, &audit).await?;
        if let Some(bus) = &self.inner.bus {
            let changes: Vec<Change> = writes.iter().map(KeyWrite::change).collect();
            // The write is committed; a lost message is bounded by the cache TTL.
            if let Err(e) = bus.publish(&changes).await {
                tracing::warn!(error = %e, "change not published; other instances rely on the cache TTL");
            }
        }
        Ok(())
    }

    /// Records a refused attempt (best effort: the attempt changed nothing) and returns `err`.
    pub(crate) async fn refused(
        &self,
        actor: &Actor,
        action: &str,
        target: Option<String>,
        err: Error,
    ) -> Error {
        if let Some(audit) = &self.inner.audit {
            let ev = AuditEvent::new(
                self.now(),
                actor,
                action,
                target,
                AuditOutcome::Refused,
                json!({ "reason": err.to_string() }),
            );
            if let Err(e) = audit.append(&[ev]).await {
                tracing::warn!(error = %e, action, "refused attempt not audited");
            }
        }
        err
    }

    /// Creates a key. The plaintext is in the answer and nowhere else.
    pub async fn create_key(&self, new: NewKey, actor: &Actor) -> Result<CreatedKey> {
        let now = self.now();
        if let Err(e) = new.validate(now) {
            return Err(self.refused(actor, "key.create", None, e.into()).await);
        }
        let prefix = new.prefix.clone().unwrap_or_default();
        let key = ApiKey::generate(&prefix);
        let id = KeyId::new();
        let record = KeyRecord {
            id,
            quota_id: id,
            name: new.name,
            owner_id: new.owner_id,
            prefix,
            start: key.parse().map(|p| p.start()).unwrap_or_default(),
            digest: self.inner.hasher.digest(key.expose()),
            created_at: now,
            updated_at: now,
            enabled: new.enabled.unwrap_or(true),
            expires_at: new.expires_at.map(|t| t.trunc_subsecs(6)),
            scopes: new.scopes,
            ip_allowlist: new.ip_allowlist,
            credits: new.credits,
            ratelimits: new.ratelimits,
            ratelimits_since: Vec::new(),
            metadata: crate::model::normalize_metadata(new.metadata),
            next_rotation_at: new.rotation.map(|r| now + r.every.as_delta()),
            rotation: new.rotation,
            rotated_from: None,
            superseded_by: None,
            grace_until: None,
            last_used_at: None,
            revision: 1,
            seal_key: Some(SealKey::derive(&self.inner.hasher, key.expose())),
            successor: None,
        };
        let audit = AuditEvent::new(
            now,
            actor,
            "key.create",
            Some(id.to_string()),
            AuditOutcome::Success,
            json!({ "name": record.name, "prefix": record.prefix.as_str(), "owner_id": record.owner_id }),
        );
        self.write(vec![KeyWrite::Insert(record.clone())], vec![audit])
            .await?;
        Ok(CreatedKey { key, record })
    }

    /// The key with this id (`NotFound` for an unknown or deleted id).
    pub async fn get_key(&self, id: KeyId) -> Result<KeyRecord> {
        self.inner
            .keys
            .get(id)
            .await?
            .ok_or_else(|| Error::key_not_found(id))
    }

    /// A page of keys, newest first.
    pub async fn list_keys(&self, query: &KeyQuery) -> Result<Page<KeyRecord>> {
        if !(1..=100).contains(&query.limit) {
            return Err(Error::invalid("limit", "must be between 1 and 100"));
        }
        self.inner.keys.list(query).await
    }

    pub(crate) async fn load_for(
        &self,
        id: KeyId,
        actor: &Actor,
        action: &str,
    ) -> Result<KeyRecord> {
        match self.inner.keys.get(id).await? {
            Some(r) => Ok(r),
            None => Err(self
                .refused(
                    actor,
                    action,
                    Some(id.to_string()),
                    Error::key_not_found(id),
                )
                .await),
        }
    }

    /// Changes a key: each field given replaces the stored one whole.
    pub async fn update_key(&self, id: KeyId, patch: KeyPatch, actor: &Actor) -> Result<KeyRecord> {
        let action = "key.update";
        if let Err(e) = patch.validate() {
            return Err(self
                .refused(actor, action, Some(id.to_string()), e.into())
                .await);
        }
        let old = self.load_for(id, actor, action).await?;
        if let Some(successor) = old.superseded_by {
            let e = Error::Conflict(format!(
                "key {id} was rotated; change its successor {successor}"
            ));
            return Err(self.refused(actor, action, Some(id.to_string()), e).await);
        }
        let now = self.now();
        let mut new = old.clone();
        let fields = patch.fields();
        if let Some(n) = patch.name {
            new.name = n;
        }
        if let Some(o) = patch.owner_id {
            new.owner_id = o;
        }
        if let Some(e) = patch.enabled {
            new.enabled = e;
        }
        if let Some(e) = patch.expires_at {
            new.expires_at = e.map(|t| t.trunc_subsecs(6));
        }
        let reset_credits = patch.credits.is_some();
        if let Some(c) = patch.credits {
            new.credits = c;
        }
        if let Some(l) = patch.ratelimits {
            // A changed limit is a new bucket (limiters key buckets by name, size, period
            // and since), so it starts full; an unchanged one keeps its bucket.
            new.ratelimits_since = limits_since(&old, &l, now);
            new.ratelimits = l;
        }
        if let Some(s) = patch.scopes {
            new.scopes = s;
        }
        if let Some(n) = patch.ip_allowlist {
            new.ip_allowlist = n;
        }
        if let Some(m) = patch.metadata {
            new.metadata = crate::model::normalize_metadata(m);
        }
        if let Some(r) = patch.rotation {
            // A new schedule starts its period now; a changed grace alone keeps the rotation
            // when it was due.
            let same_every =
                matches!((&old.rotation, &r), (Some(o), Some(n)) if o.every == n.every);
            if !same_every {
                new.next_rotation_at = r.map(|r| now + r.every.as_delta());
            }
            new.rotation = r;
        }
        new.updated_at = now;
        new.revision = old.revision + 1;
        let audit = AuditEvent::new(
            now,
            actor,
            action,
            Some(id.to_string()),
            AuditOutcome::Success,
            json!({ "fields": fields }),
        );
        self.write(
            vec![KeyWrite::Update {
                record: new.clone(),
                reset_credits,
            }],
            vec![audit],
        )
        .await?;
        if reset_credits {
            // After the write: a spend in between still sees the old balance, none after it.
            // Should this fail, the change is stored and repeating it completes the reset.
            self.inner.credits.balance_set(new.quota_id).await?;
        }
        Ok(new)
    }

    /// Enables or disables a key.
    pub async fn set_enabled(&self, id: KeyId, enabled: bool, actor: &Actor) -> Result<KeyRecord> {
        let action = if enabled { "key.enable" } else { "key.disable" };
        let old = self.load_for(id, actor, action).await?;
        let now = self.now();
        let mut new = old.clone();
        new.enabled = enabled;
        new.updated_at = now;
        new.revision = old.revision + 1;
        let audit = AuditEvent::new(
            now,
            actor,
            action,
            Some(id.to_string()),
            AuditOutcome::Success,
            json!({}),
        );
        self.write(
            vec![KeyWrite::Update {
                record: new.clone(),
                reset_credits: false,
            }],
            vec![audit],
        )
        .await?;
        Ok(new)
    }

    /// Deletes a key: it answers `NOT_FOUND` from then on.
    pub async fn delete_key(&self, id: KeyId, actor: &Actor) -> Result<()> {
        let action = "key.delete";
        let old = self.load_for(id, actor, action).await?;
        let audit = AuditEvent::new(
            self.now(),
            actor,
            action,
            Some(id.to_string()),
            AuditOutcome::Success,
            json!({ "name": old.name }),
        );
        self.write(
            vec![KeyWrite::Delete {
                id,
                digest: old.digest,
            }],
            vec![audit],
        )
        .await
    }

    /// Applies `action` to every id, one at a time; one result per id, in order.
    pub async fn batch(
        &self,
        action: BatchAction,
        ids: &[KeyId],
        actor: &Actor,
    ) -> Vec<(KeyId, Result<()>)> {
        let mut out = Vec::with_capacity(ids.len());
        for &id in ids {
            let r = match action {
                BatchAction::Enable => self.set_enabled(id, true, actor).await.map(drop),
                BatchAction::Disable => self.set_enabled(id, false, actor).await.map(drop),
                BatchAction::Delete => self.delete_key(id, actor).await,
            };
            out.push((id, r));
        }
        out
    }

    /// Deletes keys that expired at least `older_than` ago; returns their ids.
    pub async fn cleanup_expired(&self, older_than: Duration, actor: &Actor) -> Result<Vec<KeyId>> {
        let before =
            self.now() - chrono::TimeDelta::from_std(older_than).unwrap_or(chrono::TimeDelta::MAX);
        let mut deleted = Vec::new();
        loop {
            let batch = self.inner.keys.expired_before(before, 500).await?;
            if batch.is_empty() {
                return Ok(deleted);
            }
            let mut progressed = false;
            for rec in batch {
                let audit = AuditEvent::new(
                    self.now(),
                    actor,
                    "key.cleanup",
                    Some(rec.id.to_string()),
                    AuditOutcome::Success,
                    json!({ "name": rec.name, "expired_at": rec.effective_expiry() }),
                );
                match self
                    .write(
                        vec![KeyWrite::Delete {
                            id: rec.id,
                            digest: rec.digest,
                        }],
                        vec![audit],
                    )
                    .await
                {
                    Ok(()) => {
                        progressed = true;
                        deleted.push(rec.id);
                    }
                    Err(Error::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            if !progressed {
                return Ok(deleted);
            }
        }
    }

    /// Default prefix for keys.
    pub fn default_prefix() -> Prefix {
        Prefix::default()
    }
}

/// The `since` of each of `limits` replacing `old`'s: a limit `old` holds with the same name,
/// size and period keeps its own; any other is set now, later than every `since` `old` holds,
/// so that a limit changed away and back (A, B, A) is a bucket of its own each time even
/// within one millisecond. Empty when all are 0.
fn limits_since(old: &KeyRecord, limits: &[RateLimit], now: DateTime<Utc>) -> Vec<u64> {
    let same = |a: &RateLimit, b: &RateLimit| {
        a.name() == b.name() && a.limit() == b.limit() && a.period_ms() == b.period_ms()
    };
    let latest = old.ratelimits_since.iter().copied().max().unwrap_or(0);
    let set_now = u64::try_from(now.timestamp_millis())
        .unwrap_or(0)
        .max(latest + 1);
    let since: Vec<u64> = limits
        .iter()
        .map(|l| {
            old.ratelimits
                .iter()
                .position(|o| same(o, l))
                .map_or(set_now, |i| old.limit_since(i))
        })
        .collect();
    if since.iter().all(|&s| s == 0) {
        Vec::new()
    } else {
        since
    }
}
