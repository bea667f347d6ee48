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
    successor::{SealKey, Successor},
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
        match self.prepare_rotation(&old, grace, actor, action, false) {
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
        seal: bool,
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
            seal_key: Some(SealKey::derive(&self.inner.hasher, key.expose())),
            successor: None,
            ..old.clone()
        };
        let mut retired = old.clone();
        retired.superseded_by = Some(new_id);
        retired.grace_until = Some(old_end);
        retired.next_rotation_at = None;
        retired.updated_at = now;
        retired.revision = old.revision + 1;
        if seal && let Some(to) = &old.seal_key {
            retired.successor = Some(Successor::seal(to, old.id, &key));
        }
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
                    match self.prepare_rotation(&old, grace, actor, "key.rotate_due", false) {
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

    /// Rotates every due key that has a [`SealKey`], sealing each new key to the old one
    /// for its holder to claim ([`Keyvault::claim_successor`]): what `serve` does on its own.
    /// Nothing is shown to anyone here; keys without a seal key are left to
    /// [`Keyvault::rotate_due_with`]. A key rotated meanwhile by another process is skipped.
    pub async fn rotate_due_sealed(&self, actor: &Actor) -> Result<Vec<RotatedKey>> {
        let mut done = Vec::new();
        // Due keys left alone (no seal key; disabled or expired) come back on every read: ask
        // for that many more, so that they never hide the others behind them.
        let mut skipped = std::collections::HashSet::new();
        loop {
            let limit = 100 + skipped.len();
            let due = self.inner.keys.due_for_rotation(self.now(), limit).await?;
            let mut progressed = false;
            for old in due {
                if old.seal_key.is_none() {
                    skipped.insert(old.id);
                    continue;
                }
                let grace = old.rotation.map(|r| r.grace.get());
                let (rotated, writes, audit) =
                    match self.prepare_rotation(&old, grace, actor, "key.rotate_auto", true) {
                        Ok(p) => p,
                        Err(Error::Conflict(_)) => {
                            skipped.insert(old.id);
                            continue;
                        }
                        Err(e) => return Err(e),
                    };
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

    /// Ends a rotated key's grace now, once traffic has moved to its successor: from then on
    /// it answers `EXPIRED` (everywhere within the propagation bound). A key that is not an
    /// old key in its grace is a conflict; an unknown id is `NotFound`.
    pub async fn end_grace(&self, id: KeyId, actor: &Actor) -> Result<KeyRecord> {
        let action = "key.end_grace";
        let old = self.load_for(id, actor, action).await?;
        let now = self.now();
        if old.superseded_by.is_none() {
            let e = Error::Conflict(format!("key {id} was not rotated: it has no grace"));
            return Err(self.refused(actor, action, Some(id.to_string()), e).await);
        }
        if old.is_expired(now) {
            let e = Error::Conflict(format!("key {id} no longer verifies: its grace is over"));
            return Err(self.refused(actor, action, Some(id.to_string()), e).await);
        }
        let mut ended = old.clone();
        ended.grace_until = Some(now);
        ended.updated_at = now;
        ended.revision = old.revision + 1;
        let audit = AuditEvent::new(
            now,
            actor,
            action,
            Some(id.to_string()),
            AuditOutcome::Success,
            json!({ "was": old.grace_until, "last_used_at": old.last_used_at }),
        );
        let write = KeyWrite::Update {
            record: ended.clone(),
            reset_credits: false,
        };
        self.write(vec![write], vec![audit]).await?;
        Ok(ended)
    }

    /// Rotates every key whose policy is due and returns the new keys (shown once).
    pub async fn rotate_due(&self, actor: &Actor) -> Result<Vec<RotatedKey>> {
        self.rotate_due_with(actor, |_| Ok(())).await
    }
}
