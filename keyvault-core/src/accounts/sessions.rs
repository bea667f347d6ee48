//! Signed-in dashboard sessions.

use std::fmt::Debug;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::{audit::AuditEvent, digest::KeyDigest, error::Result};

/// A dashboard session as stored. The browser holds a random cookie value; the store keeps
/// only its digest, so a copy of the database signs no one in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// The digest of the cookie value (never the value).
    pub digest: KeyDigest,
    /// Whose session it is.
    pub username: String,
    /// When the user signed in.
    pub created_at: DateTime<Utc>,
    /// When the session ends by itself.
    pub expires_at: DateTime<Utc>,
}

impl SessionRecord {
    /// Whether the session still holds at `now`.
    pub fn is_active(&self, now: DateTime<Utc>) -> bool {
        self.expires_at > now
    }
}

/// Stores dashboard sessions. Mutations append their `audit` events in the same
/// transaction: both happen, or neither. A session also ends when its user's password,
/// role or `enabled` changes ([`UserStore::update_user`](crate::UserStore::update_user)).
///
/// ```
/// use chrono::{SubsecRound, TimeDelta, Utc};
/// use keyvault_core::{
///     KeyHasher, Role, SessionRecord, SessionStore, UserRecord, UserStore, memory::MemoryStore,
/// };
///
/// # async fn demo() -> keyvault_core::Result<()> {
/// let store = MemoryStore::new();
/// let now = Utc::now().trunc_subsecs(6);
/// let user = UserRecord {
///     username: "alice".into(),
///     role: Role::Viewer,
///     password_hash: "$argon2id$…".into(),
///     enabled: true,
///     created_at: now,
///     updated_at: now,
/// };
/// store.create_user(&user, &[]).await?;
/// let session = SessionRecord {
///     digest: KeyHasher::sha256().digest("the random cookie value"),
///     username: "alice".into(),
///     created_at: now,
///     expires_at: now + TimeDelta::hours(8),
/// };
/// store.create_session(&session, &[]).await?;
/// assert!(store.session(&session.digest).await?.unwrap().is_active(now));
/// assert!(store.end_session(&session.digest, &[]).await?);
/// assert_eq!(store.session(&session.digest).await?, None);
/// # Ok(()) }
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(demo()).unwrap();
/// ```
#[async_trait]
pub trait SessionStore: Send + Sync + Debug {
    /// Adds a session and appends `audit`. `NotFound` when the user is unknown, `Conflict`
    /// when the user is disabled or the digest is taken. The user is checked in the same
    /// transaction, so a session never outlives a concurrent disable.
    async fn create_session(&self, session: &SessionRecord, audit: &[AuditEvent]) -> Result<()>;

    /// The session with this digest, as stored (check [`SessionRecord::is_active`]).
    async fn session(&self, digest: &KeyDigest) -> Result<Option<SessionRecord>>;

    /// Ends a session (sign-out) and appends `audit`. `false`, writing nothing, when there is
    /// no such session.
    async fn end_session(&self, digest: &KeyDigest, audit: &[AuditEvent]) -> Result<bool>;

    /// Ends every session of `username` and appends `audit`; returns how many ended. When
    /// none did, nothing is written (not `audit` either).
    async fn end_user_sessions(&self, username: &str, audit: &[AuditEvent]) -> Result<u64>;

    /// Deletes the sessions whose `expires_at` is at or before `expired_before`, every one no
    /// longer active then (housekeeping, not audited); returns how many.
    async fn purge_sessions(&self, expired_before: DateTime<Utc>) -> Result<u64>;
}
