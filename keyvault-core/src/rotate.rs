//! Rotation: a new key with the old one's configuration and quota, the old one verifying
//! for a grace; by hand, or for every key whose policy is due.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::json;

use crate::{
    audit::{Actor, AuditEvent, AuditOutcome},
    error::{Error, Result},
    key::ApiKey,
    model::{DEFAULT_GRACE, KeyId, KeyRecord},
    store::{KeyStore, KeyWrite},
    vault::Keyvault,
};

/// A key just rotated.
#[derive(Debug, Clone)]
pub struct RotatedKey {
    /// The old key's id.
    pub old_id: KeyId,
    /// When the old key stops verifying.
    pub old_key_expires_at: DateTime<Utc>,
    /// The new key's plaintext (shown once).
    pub key: ApiKey,
    /// The new key's record.
    pub record: KeyRecord,
}

/// Longest grace accepted for a rotation.
const MAX_GRACE: Duration = Duration::from_secs(365 * 86_400);

impl Keyvault {
    /// Rotates a key: a new key with the same configuration, sharing the old one's credits and
    /// buckets; the old one verifies until `now + grace` (default 24 h), never past its own
    /// expiry.
    pub async fn rotate_key(
        &self,
        id: KeyId,
        grace: Option<Duration>,
        actor: &Actor,
    ) -> Result<RotatedKey> {
        let action = "key.rotate";
        let old = self.load_for(id, actor, action).await?;
        match self.prepare_rotation(&old, grace, actor, action) {
            Ok((rotated, writes, audit)) => {
                self.write(writes, audit).await?;
                Ok(rotated)
            }
            Err(e) => Err(self.refused(actor, action, Some(id.to_string()), e).await),
        }
    }

    fn prepare_rotation(
        &self,
        old: &KeyRecord,
        grace: Option<Duration>,
        actor: &Actor,
        action: &str,
    ) -> Result<(RotatedKey, Vec<KeyWrite>, Vec<AuditEvent>)> {
        let now = self.now();
        let grace = grace.unwrap_or(DEFAULT_GRACE);
        if grace > MAX_GRACE {
            return Err(Error::invalid("grace_seconds", "must be at most a year"));
        }
        if old.superseded_by.is_some() {
            return Err(Error::Conflict(format!(
                "key {} was already rotated",
                old.id
            )));
        }
        if !old.enabled {
            return Err(Error::Conflict(format!("key {} is disabled", old.id)));
        }
        if old.is_expired(now) {
            return Err(Error::Conflict(format!("key {} has expired", old.id)));
        }
        let key = ApiKey::generate(&old.prefix);
        let new_id = KeyId::new();
        let grace_end = now + chrono::TimeDelta::from_std(grace).unwrap_or(chrono::TimeDelta::MAX);
        let old_end = old.expires_at.map_or(grace_end, |e| e.min(grace_end));
        let new = KeyRecord {
            id: new_id,
            start: key.parse().map(|p| p.start()).unwrap_or_default(),
            digest: self.inner.hasher.digest(key.expose()),
            created_at: now,
            updated_at: now,
            next_rotation_at: old.rotation.map(|r| now + r.every.as_delta()),
            rotated_from: Some(old.id),
            superseded_by: None,
            grace_until: None,
            last_used_at: None,
            revision: 1,
            ..old.clone()
        };
        let mut retired = old.clone();
        retired.superseded_by = Some(new_id);
        retired.grace_until = Some(old_end);
        retired.next_rotation_at = None;
        retired.updated_at = now;
        retired.revision = old.revision + 1;
        let audit = AuditEvent::new(
            now,
            actor,
            action,
            Some(old.id.to_string()),
            AuditOutcome::Success,
            json!({ "new_id": new_id.to_string(), "old_key_expires_at": old_end }),
        );
        let rotated = RotatedKey {
            old_id: old.id,
            old_key_expires_at: old_end,
            key,
            record: new.clone(),
        };
        Ok((
            rotated,
            vec![
                KeyWrite::Update {
                    record: retired,
                    reset_credits: false,
                },
                KeyWrite::Insert(new),
            ],
            vec![audit],
        ))
    }

    /// Rotates every key whose policy is due. `hand_out` receives each new key *before* its
    /// rotation is committed (write it somewhere durable there); if it fails, that rotation
    /// is not made and the error is returned. A key rotated meanwhile by another process is
    /// skipped, so each new key is handed out exactly once.
    pub async fn rotate_due_with<F>(
        &self,
        actor: &Actor,
        mut hand_out: F,
    ) -> Result<Vec<RotatedKey>>
    where
        F: FnMut(&RotatedKey) -> std::io::Result<()>,
    {
        let mut done = Vec::new();
        loop {
            let due = self.inner.keys.due_for_rotation(self.now(), 100).await?;
            let mut progressed = false;
            for old in due {
                let grace = old.rotation.map(|r| r.grace.get());
                let (rotated, writes, audit) =
                    match self.prepare_rotation(&old, grace, actor, "key.rotate_due") {
                        Ok(p) => p,
                        // Disabled or expired keys with a policy are not rotated.
                        Err(Error::Conflict(_)) => continue,
                        Err(e) => return Err(e),
                    };
                hand_out(&rotated).map_err(|e| Error::backend("output", e))?;
                match self.write(writes, audit).await {
                    Ok(()) => {
                        progressed = true;
                        done.push(rotated);
                    }
                    Err(Error::Conflict(_)) | Err(Error::NotFound { .. }) => continue,
                    Err(e) => return Err(e),
                }
            }
            if !progressed {
                return Ok(done);
            }
        }
    }

    /// Rotates every key whose policy is due and returns the new keys (shown once).
    pub async fn rotate_due(&self, actor: &Actor) -> Result<Vec<RotatedKey>> {
        self.rotate_due_with(actor, |_| Ok(())).await
    }
}
