//! Conversions between keyvault's types and SQLite's column values.

use chrono::{DateTime, Utc};
use keyvault_core::{KeyDigest, KeyId, KeyRecord, Prefix, SealKey, uuid::Uuid};
use sqlx::{Row, sqlite::SqliteRow};

use crate::{Error, error::corrupt};

/// Microseconds since the epoch: what every time column holds. Stores keep microseconds
/// (core truncates to them), so this loses nothing that is read back.
pub(crate) fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

pub(crate) fn opt_micros(t: Option<DateTime<Utc>>) -> Option<i64> {
    t.map(micros)
}

pub(crate) fn from_micros(v: i64, column: &'static str) -> Result<DateTime<Utc>, Error> {
    DateTime::from_timestamp_micros(v).ok_or_else(|| corrupt(column, "time out of range"))
}

pub(crate) fn opt_from_micros(
    v: Option<i64>,
    column: &'static str,
) -> Result<Option<DateTime<Utc>>, Error> {
    v.map(|v| from_micros(v, column)).transpose()
}

/// u64 amounts are bounded by 2⁵³−1 where they come from a validated record; anything larger
/// (a cost from an unchecked caller) saturates rather than wrapping negative.
pub(crate) fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub(crate) fn uint(v: i64, column: &'static str) -> Result<u64, Error> {
    u64::try_from(v).map_err(|_| corrupt(column, "negative"))
}

pub(crate) fn id_text(id: KeyId) -> String {
    id.as_uuid().to_string()
}

pub(crate) fn parse_id(s: &str, column: &'static str) -> Result<KeyId, Error> {
    Uuid::parse_str(s)
        .map(KeyId::from_uuid)
        .map_err(|e| corrupt(column, e))
}

fn json<T: serde::Serialize>(v: &T, column: &'static str) -> Result<String, Error> {
    serde_json::to_string(v).map_err(|source| Error::Encode { column, source })
}

fn from_json<T: serde::de::DeserializeOwned>(s: &str, column: &'static str) -> Result<T, Error> {
    serde_json::from_str(s).map_err(|e| corrupt(column, e))
}

/// The columns of `kv_keys`, in the order [`KeyColumns`] binds and [`decode_key`] reads.
pub(crate) const KEY_COLUMNS: &str = "id, quota_id, name, name_lower, owner_id, prefix, start, \
    start_lower, digest, created_at, updated_at, enabled, expires_at, effective_expiry, scopes, \
    ip_allowlist, credits, ratelimits, metadata, rotation, next_rotation_at, rotated_from, \
    superseded_by, grace_until, last_used_at, revision, seal_key, successor";

/// A key record encoded for binding.
pub(crate) struct KeyColumns {
    id: String,
    quota_id: String,
    name: String,
    name_lower: String,
    owner_id: Option<String>,
    prefix: String,
    start: String,
    start_lower: String,
    digest: Vec<u8>,
    created_at: i64,
    updated_at: i64,
    enabled: bool,
    expires_at: Option<i64>,
    effective_expiry: Option<i64>,
    scopes: String,
    ip_allowlist: String,
    credits: Option<String>,
    ratelimits: String,
    metadata: String,
    rotation: Option<String>,
    next_rotation_at: Option<i64>,
    rotated_from: Option<String>,
    superseded_by: Option<String>,
    grace_until: Option<i64>,
    last_used_at: Option<i64>,
    revision: i64,
    seal_key: Option<Vec<u8>>,
    successor: Option<String>,
}

impl KeyColumns {
    pub(crate) fn encode(r: &KeyRecord) -> Result<Self, Error> {
        Ok(Self {
            id: id_text(r.id),
            quota_id: id_text(r.quota_id),
            name: r.name.clone(),
            name_lower: r.name.to_lowercase(),
            owner_id: r.owner_id.clone(),
            prefix: r.prefix.as_str().to_owned(),
            start: r.start.clone(),
            start_lower: r.start.to_lowercase(),
            digest: r.digest.as_bytes().to_vec(),
            created_at: micros(r.created_at),
            updated_at: micros(r.updated_at),
            enabled: r.enabled,
            expires_at: opt_micros(r.expires_at),
            effective_expiry: opt_micros(r.effective_expiry()),
            scopes: json(&r.scopes, "scopes")?,
            ip_allowlist: json(&r.ip_allowlist, "ip_allowlist")?,
            credits: r.credits.as_ref().map(|c| json(c, "credits")).transpose()?,
            ratelimits: keyvault_core::stored_limits(&r.ratelimits, &r.ratelimits_since)
                .to_string(),
            metadata: json(&r.metadata, "metadata")?,
            rotation: r
                .rotation
                .as_ref()
                .map(|p| json(p, "rotation"))
                .transpose()?,
            next_rotation_at: opt_micros(r.next_rotation_at),
            rotated_from: r.rotated_from.map(id_text),
            superseded_by: r.superseded_by.map(id_text),
            grace_until: opt_micros(r.grace_until),
            last_used_at: opt_micros(r.last_used_at),
            revision: int(r.revision),
            seal_key: r.seal_key.map(|k| k.as_bytes().to_vec()),
            successor: r
                .successor
                .as_ref()
                .map(|s| json(s, "successor"))
                .transpose()?,
        })
    }

    /// Binds every column, in [`KEY_COLUMNS`] order.
    pub(crate) fn bind<'q>(
        self,
        q: sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments>,
    ) -> sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments> {
        q.bind(self.id)
            .bind(self.quota_id)
            .bind(self.name)
            .bind(self.name_lower)
            .bind(self.owner_id)
            .bind(self.prefix)
            .bind(self.start)
            .bind(self.start_lower)
            .bind(self.digest)
            .bind(self.created_at)
            .bind(self.updated_at)
            .bind(self.enabled)
            .bind(self.expires_at)
            .bind(self.effective_expiry)
            .bind(self.scopes)
            .bind(self.ip_allowlist)
            .bind(self.credits)
            .bind(self.ratelimits)
            .bind(self.metadata)
            .bind(self.rotation)
            .bind(self.next_rotation_at)
            .bind(self.rotated_from)
            .bind(self.superseded_by)
            .bind(self.grace_until)
            .bind(self.last_used_at)
            .bind(self.revision)
            .bind(self.seal_key)
            .bind(self.successor)
    }
}

pub(crate) fn column<'r, T>(row: &'r SqliteRow, name: &'static str) -> Result<T, Error>
where
    T: sqlx::Decode<'r, sqlx::Sqlite> + sqlx::Type<sqlx::Sqlite>,
{
    row.try_get(name).map_err(|e| corrupt(name, e))
}

/// Reads a `kv_keys` row selected with [`KEY_COLUMNS`].
pub(crate) fn decode_key(row: &SqliteRow) -> Result<KeyRecord, Error> {
    let opt_id = |name: &'static str| -> Result<Option<KeyId>, Error> {
        column::<Option<String>>(row, name)?
            .map(|s| parse_id(&s, name))
            .transpose()
    };
    let digest: Vec<u8> = column(row, "digest")?;
    let prefix: String = column(row, "prefix")?;
    let stored: serde_json::Value = from_json(&column::<String>(row, "ratelimits")?, "ratelimits")?;
    let (ratelimits, ratelimits_since) =
        keyvault_core::limits_from_stored(stored).map_err(|e| corrupt("ratelimits", e))?;
    Ok(KeyRecord {
        id: parse_id(&column::<String>(row, "id")?, "id")?,
        quota_id: parse_id(&column::<String>(row, "quota_id")?, "quota_id")?,
        name: column(row, "name")?,
        owner_id: column(row, "owner_id")?,
        prefix: Prefix::any(&prefix).map_err(|e| corrupt("prefix", e))?,
        start: column(row, "start")?,
        digest: KeyDigest::from_slice(&digest).map_err(|e| corrupt("digest", e))?,
        created_at: from_micros(column(row, "created_at")?, "created_at")?,
        updated_at: from_micros(column(row, "updated_at")?, "updated_at")?,
        enabled: column(row, "enabled")?,
        expires_at: opt_from_micros(column(row, "expires_at")?, "expires_at")?,
        scopes: from_json(&column::<String>(row, "scopes")?, "scopes")?,
        ip_allowlist: from_json(&column::<String>(row, "ip_allowlist")?, "ip_allowlist")?,
        credits: column::<Option<String>>(row, "credits")?
            .map(|s| from_json(&s, "credits"))
            .transpose()?,
        ratelimits,
        ratelimits_since,
        metadata: from_json(&column::<String>(row, "metadata")?, "metadata")?,
        rotation: column::<Option<String>>(row, "rotation")?
            .map(|s| from_json(&s, "rotation"))
            .transpose()?,
        next_rotation_at: opt_from_micros(column(row, "next_rotation_at")?, "next_rotation_at")?,
        rotated_from: opt_id("rotated_from")?,
        superseded_by: opt_id("superseded_by")?,
        grace_until: opt_from_micros(column(row, "grace_until")?, "grace_until")?,
        last_used_at: opt_from_micros(column(row, "last_used_at")?, "last_used_at")?,
        revision: uint(column(row, "revision")?, "revision")?,
        seal_key: column::<Option<Vec<u8>>>(row, "seal_key")?
            .map(|b| SealKey::from_slice(&b).map_err(|e| corrupt("seal_key", e)))
            .transpose()?,
        successor: column::<Option<String>>(row, "successor")?
            .map(|s| from_json(&s, "successor"))
            .transpose()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip_in_microseconds() {
        let t = DateTime::from_timestamp_micros(1_790_000_000_123_456).unwrap();
        assert_eq!(from_micros(micros(t), "t").unwrap(), t);
        assert!(from_micros(i64::MAX, "t").is_err());
    }

    #[test]
    fn amounts_saturate_instead_of_wrapping() {
        assert_eq!(int(keyvault_core::MAX_CREDITS), (1 << 53) - 1);
        assert_eq!(int(u64::MAX), i64::MAX);
        assert!(uint(-1, "x").is_err());
    }
}
