//! The audit log: append-only, hash-chained.

use std::{fmt::Debug, net::IpAddr};

use async_trait::async_trait;
use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::{error::Result, store::Page};

/// Whether the audited attempt happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditOutcome {
    /// The mutation was made.
    Success,
    /// The attempt was refused (bad input, not found, conflict, no permission).
    Refused,
}

impl AuditOutcome {
    /// The stored text.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditOutcome::Success => "success",
            AuditOutcome::Refused => "refused",
        }
    }
}

/// Who acts, from where: attached to every mutation.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Actor {
    /// `user:alice`, `token:<id>`, `cli`, `library`, `system`…
    pub name: String,
    /// The client's address.
    pub source_ip: Option<IpAddr>,
    /// The request that carried the action.
    pub request_id: Option<String>,
}

impl Actor {
    /// An actor with a name and nothing else.
    pub fn named(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ..Self::default()
        }
    }

    /// The actor for direct library calls.
    pub fn library() -> Self {
        Self::named("library")
    }

    /// The actor for scheduled work (rotation, cleanup).
    pub fn system() -> Self {
        Self::named("system")
    }
}

/// One audited action, as handed to a store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// When (UTC, microsecond precision so that every store keeps it exactly).
    pub at: DateTime<Utc>,
    /// Who.
    pub actor: String,
    /// What (`key.create`, `key.disable`, `token.revoke`, `login`…).
    pub action: String,
    /// On what.
    pub target_id: Option<String>,
    /// From where.
    pub source_ip: Option<IpAddr>,
    /// Which request.
    pub request_id: Option<String>,
    /// Made or refused.
    pub outcome: AuditOutcome,
    /// Non-secret details (the fields changed, the reason for a refusal).
    pub details: Value,
}

impl AuditEvent {
    /// A new event at `at` by `actor`.
    pub fn new(
        at: DateTime<Utc>,
        actor: &Actor,
        action: impl Into<String>,
        target_id: Option<String>,
        outcome: AuditOutcome,
        details: Value,
    ) -> Self {
        Self {
            at: at.trunc_subsecs(6),
            actor: actor.name.clone(),
            action: action.into(),
            target_id,
            source_ip: actor.source_ip,
            request_id: actor.request_id.clone(),
            outcome,
            details,
        }
    }
}

/// A stored audit record: the event, its position and the hash chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Position in the log, from 1, without gaps.
    pub seq: u64,
    /// The event.
    #[serde(flatten)]
    pub event: AuditEvent,
    /// The previous record's hash (zeros for the first), hex.
    pub prev_hash: String,
    /// This record's hash, hex.
    pub hash: String,
}

/// The hash of the record before the first.
pub const GENESIS_HASH: [u8; 32] = [0; 32];

/// SHA-256 over the previous hash, the position and a canonical encoding of the event.
/// Every backend computes it the same way, so a chain verifies wherever it is restored.
pub fn chain_hash(prev: &[u8; 32], seq: u64, event: &AuditEvent) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(seq.to_be_bytes());
    let mut canon = String::new();
    // Field order is fixed here; `details` is written with sorted keys, so a store that
    // reorders JSON objects (PostgreSQL's jsonb does) still verifies.
    canonical_json(
        &serde_json::json!([
            event.at.timestamp_micros(),
            event.actor,
            event.action,
            event.target_id,
            event.source_ip.map(|ip| ip.to_string()),
            event.request_id,
            event.outcome.as_str(),
        ]),
        &mut canon,
    );
    canonical_json(&event.details, &mut canon);
    h.update(canon.as_bytes());
    h.finalize().into()
}

fn canonical_json(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                canonical_json(v, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical_json(v, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// Hex of a hash.
pub fn hex(hash: &[u8; 32]) -> String {
    crate::digest::KeyDigest::from_bytes(*hash).to_hex()
}

/// Links `events` after the record `(last_seq, last_hash)`: what a store appends.
pub fn link(last: Option<(u64, [u8; 32])>, events: &[AuditEvent]) -> Vec<AuditRecord> {
    let (mut seq, mut prev) = last.unwrap_or((0, GENESIS_HASH));
    events
        .iter()
        .map(|e| {
            seq += 1;
            let hash = chain_hash(&prev, seq, e);
            let rec = AuditRecord {
                seq,
                event: e.clone(),
                prev_hash: hex(&prev),
                hash: hex(&hash),
            };
            prev = hash;
            rec
        })
        .collect()
}

/// The result of checking the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ChainReport {
    /// Records checked.
    pub checked: u64,
    /// The position (1-based, in storage order) of the first record whose link is broken:
    /// edited, moved, or following a deleted one.
    pub first_broken: Option<u64>,
}

/// Checks records in storage order. Feed every record from the first.
#[derive(Debug, Clone)]
pub struct ChainVerifier {
    prev: [u8; 32],
    index: u64,
    first_broken: Option<u64>,
}

impl Default for ChainVerifier {
    fn default() -> Self {
        Self {
            prev: GENESIS_HASH,
            index: 0,
            first_broken: None,
        }
    }
}

impl ChainVerifier {
    /// Checks the next record.
    pub fn push(&mut self, record: &AuditRecord) {
        self.index += 1;
        if self.first_broken.is_some() {
            return;
        }
        let expected = chain_hash(&self.prev, self.index, &record.event);
        if record.seq != self.index
            || record.prev_hash != hex(&self.prev)
            || record.hash != hex(&expected)
        {
            self.first_broken = Some(self.index);
        }
        self.prev = expected;
    }

    /// The verdict.
    pub fn finish(self) -> ChainReport {
        ChainReport {
            checked: self.index,
            first_broken: self.first_broken,
        }
    }
}

/// Filters and a page of the audit listing (newest first).
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    /// From (inclusive).
    pub from: Option<DateTime<Utc>>,
    /// To (exclusive).
    pub to: Option<DateTime<Utc>>,
    /// Only this actor.
    pub actor: Option<String>,
    /// Only this action.
    pub action: Option<String>,
    /// Only this target.
    pub target_id: Option<String>,
    /// Only records with this outcome.
    pub outcome: Option<AuditOutcome>,
    /// Page size.
    pub limit: usize,
    /// Only records before this position.
    pub before_seq: Option<u64>,
}

/// The audit log. Key mutations reach it through [`crate::KeyStore::apply`], in the same
/// transaction; everything else (tokens, logins, refused attempts) through `append`.
///
/// ```
/// # use keyvault_core::{AuditLog, AuditEvent, AuditOutcome, Actor, memory::MemoryStore};
/// # async fn demo() -> keyvault_core::Result<()> {
/// let log = MemoryStore::new();
/// let ev = AuditEvent::new(chrono::Utc::now(), &Actor::library(), "login", None,
///                          AuditOutcome::Refused, serde_json::json!({}));
/// log.append(&[ev]).await?;
/// assert_eq!(log.verify_chain().await?.first_broken, None);
/// # Ok(()) }
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(demo()).unwrap();
/// ```
#[async_trait]
pub trait AuditLog: Send + Sync + Debug {
    /// Appends events (one transaction).
    async fn append(&self, events: &[AuditEvent]) -> Result<()>;

    /// A page of records, newest first.
    async fn list(&self, query: &AuditQuery) -> Result<Page<AuditRecord>>;

    /// Checks the whole chain.
    async fn verify_chain(&self) -> Result<ChainReport>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ev(n: u32) -> AuditEvent {
        AuditEvent::new(
            Utc::now(),
            &Actor::named("alice"),
            "key.create",
            Some(format!("k{n}")),
            AuditOutcome::Success,
            json!({"b": n, "a": [1, {"y": 2, "x": 1}]}),
        )
    }

    fn verify(records: &[AuditRecord]) -> ChainReport {
        let mut v = ChainVerifier::default();
        records.iter().for_each(|r| v.push(r));
        v.finish()
    }

    #[test]
    fn an_intact_chain_verifies_and_tampering_is_found_where_it_happened() {
        let records = link(None, &(1..=6).map(ev).collect::<Vec<_>>());
        assert_eq!(
            verify(&records),
            ChainReport {
                checked: 6,
                first_broken: None
            }
        );

        let mut edited = records.clone();
        edited[3].event.actor = "mallory".into();
        assert_eq!(verify(&edited).first_broken, Some(4));

        let mut deleted = records.clone();
        deleted.remove(2);
        assert_eq!(verify(&deleted).first_broken, Some(3));

        let mut swapped = records.clone();
        swapped.swap(1, 4);
        assert_eq!(verify(&swapped).first_broken, Some(2));
    }

    #[test]
    fn the_hash_ignores_json_key_order() {
        let a = ev(1);
        let mut b = a.clone();
        b.details = serde_json::from_str(r#"{"a":[1,{"x":1,"y":2}],"b":1}"#).unwrap();
        assert_eq!(
            chain_hash(&GENESIS_HASH, 1, &a),
            chain_hash(&GENESIS_HASH, 1, &b)
        );
    }
}
