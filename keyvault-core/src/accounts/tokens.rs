//! API tokens: credentials for the server's REST API.

use std::fmt::Debug;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{accounts::Role, audit::AuditEvent, digest::KeyDigest, error::Result, store::Page};

/// An API token as stored: never its plaintext, only its digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// A UUIDv7, so that ids sort by creation time.
    pub id: Uuid,
    /// A human name.
    pub name: String,
    /// What the token may do.
    pub role: Role,
    /// The display start (`kvt_` and four characters of the body).
    pub start: String,
    /// The digest of the token (as keys are hashed: [`crate::KeyHasher`]). Not serialised,
    /// as [`crate::KeyRecord`]'s is not: a listing never shows it, a backup writes it apart.
    #[serde(skip)]
    pub digest: KeyDigest,
    /// When created.
    pub created_at: DateTime<Utc>,
    /// When it stops working, if ever.
    pub expires_at: Option<DateTime<Utc>>,
    /// When it was revoked, if it was.
    pub revoked_at: Option<DateTime<Utc>>,
    /// The actor that created it (`user:alice`, `cli`…).
    pub created_by: String,
}

impl TokenRecord {
    /// Whether the token may be used at `now`: not revoked, not expired.
    pub fn is_active(&self, now: DateTime<Utc>) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|t| t > now)
    }
}

/// Stores API tokens. Every mutation appends its `audit` events in the same transaction:
/// both happen, or neither.
///
/// ```
/// use chrono::{SubsecRound, Utc};
/// use keyvault_core::{KeyHasher, Role, TokenRecord, TokenStore, memory::MemoryStore, uuid::Uuid};
///
/// # async fn demo() -> keyvault_core::Result<()> {
/// let store = MemoryStore::new();
/// let now = Utc::now().trunc_subsecs(6);
/// let token = TokenRecord {
///     id: Uuid::now_v7(),
///     name: "deploy bot".into(),
///     role: Role::Verifier,
///     start: "kvt_AbCd".into(),
///     digest: KeyHasher::sha256().digest("kvt_…the token shown once…"),
///     created_at: now,
///     expires_at: None,
///     revoked_at: None,
///     created_by: "cli".into(),
/// };
/// store.create_token(&token, &[]).await?;
/// assert!(store.token_by_digest(&token.digest).await?.unwrap().is_active(now));
/// assert!(store.revoke_token(token.id, now, &[]).await?);
/// assert!(!store.revoke_token(token.id, now, &[]).await?, "revoked already");
/// assert!(store.list_tokens(None, 50).await?.items.is_empty());
/// # Ok(()) }
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(demo()).unwrap();
/// ```
#[async_trait]
pub trait TokenStore: Send + Sync + Debug {
    /// Adds a token and appends `audit`. `Conflict` when its id or digest is taken.
    async fn create_token(&self, token: &TokenRecord, audit: &[AuditEvent]) -> Result<()>;

    /// Marks the token revoked at `at` and appends `audit`. `false`, writing nothing (not
    /// `audit` either), when the token is unknown or revoked already.
    async fn revoke_token(&self, id: Uuid, at: DateTime<Utc>, audit: &[AuditEvent])
    -> Result<bool>;

    /// The token with this id, revoked or not.
    async fn token(&self, id: Uuid) -> Result<Option<TokenRecord>>;

    /// The token with this digest, revoked or not: the authentication lookup (check
    /// [`TokenRecord::is_active`]).
    async fn token_by_digest(&self, digest: &KeyDigest) -> Result<Option<TokenRecord>>;

    /// Up to `limit` unrevoked tokens older than `before` (the previous page's last id),
    /// newest first.
    async fn list_tokens(&self, before: Option<Uuid>, limit: usize) -> Result<Page<TokenRecord>>;

    /// Every token, revoked ones included, oldest first (for backups).
    async fn all_tokens(&self) -> Result<Vec<TokenRecord>>;
}

/// A shared store is a store: the server wraps its `Arc<dyn TokenStore>` in a cache.
#[async_trait]
impl<T: TokenStore + ?Sized> TokenStore for std::sync::Arc<T> {
    async fn create_token(&self, token: &TokenRecord, audit: &[AuditEvent]) -> Result<()> {
        (**self).create_token(token, audit).await
    }
    async fn revoke_token(
        &self,
        id: Uuid,
        at: DateTime<Utc>,
        audit: &[AuditEvent],
    ) -> Result<bool> {
        (**self).revoke_token(id, at, audit).await
    }
    async fn token(&self, id: Uuid) -> Result<Option<TokenRecord>> {
        (**self).token(id).await
    }
    async fn token_by_digest(&self, digest: &KeyDigest) -> Result<Option<TokenRecord>> {
        (**self).token_by_digest(digest).await
    }
    async fn list_tokens(&self, before: Option<Uuid>, limit: usize) -> Result<Page<TokenRecord>> {
        (**self).list_tokens(before, limit).await
    }
    async fn all_tokens(&self) -> Result<Vec<TokenRecord>> {
        (**self).all_tokens().await
    }
}
