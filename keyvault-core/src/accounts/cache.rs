//! [`CachedTokenStore`]: token lookups remembered for a moment, so that an API request costs
//! no database round trip, while a revocation made on any instance is honoured everywhere
//! within that moment.

use std::{
    fmt,
    time::{Duration, Instant},
};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use quick_cache::sync::Cache;
use uuid::Uuid;

use crate::{
    accounts::{TokenRecord, TokenStore},
    audit::AuditEvent,
    digest::KeyDigest,
    error::Result,
    store::Page,
};

/// How long a lookup is trusted by default: the bound on how late another instance's
/// revocation is honoured.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_millis(500);

/// A [`TokenStore`] that remembers [`token_by_digest`](TokenStore::token_by_digest) answers
/// (found or not) for a TTL. A revocation through this store forgets every answer at once; a
/// revocation through another instance is honoured once the TTL has passed. Everything else
/// goes straight to the inner store.
///
/// ```
/// # use keyvault_core::{CachedTokenStore, TokenStore, KeyHasher, memory::MemoryStore};
/// # async fn demo() -> keyvault_core::Result<()> {
/// let tokens = CachedTokenStore::new(MemoryStore::new(), std::time::Duration::from_millis(500));
/// let digest = KeyHasher::sha256().digest("kvt_unknown");
/// assert!(tokens.token_by_digest(&digest).await?.is_none()); // asked the store
/// assert!(tokens.token_by_digest(&digest).await?.is_none()); // remembered
/// # Ok(()) }
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(demo()).unwrap();
/// ```
pub struct CachedTokenStore<S> {
    inner: S,
    ttl: Duration,
    cache: Cache<[u8; 32], (Option<TokenRecord>, Instant)>,
}

impl<S: fmt::Debug> fmt::Debug for CachedTokenStore<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedTokenStore")
            .field("inner", &self.inner)
            .field("ttl", &self.ttl)
            .field("cached", &self.cache.len())
            .finish()
    }
}

impl<S> CachedTokenStore<S> {
    /// Remembers up to 10,000 lookups of `inner` for `ttl` each.
    pub fn new(inner: S, ttl: Duration) -> Self {
        Self {
            inner,
            ttl,
            cache: Cache::new(10_000),
        }
    }

    /// The store behind the cache.
    pub fn inner(&self) -> &S {
        &self.inner
    }
}

#[async_trait]
impl<S: TokenStore> TokenStore for CachedTokenStore<S> {
    async fn create_token(&self, token: &TokenRecord, audit: &[AuditEvent]) -> Result<()> {
        self.inner.create_token(token, audit).await?;
        // A lookup of this digest that missed moments ago must not hide the new token.
        self.cache.remove(token.digest.as_bytes());
        Ok(())
    }

    async fn revoke_token(
        &self,
        id: Uuid,
        at: DateTime<Utc>,
        audit: &[AuditEvent],
    ) -> Result<bool> {
        let revoked = self.inner.revoke_token(id, at, audit).await?;
        if revoked {
            // Revocations are rare; forgetting everything is simpler than finding the digest.
            self.cache.clear();
        }
        Ok(revoked)
    }

    async fn token(&self, id: Uuid) -> Result<Option<TokenRecord>> {
        self.inner.token(id).await
    }

    async fn token_by_digest(&self, digest: &KeyDigest) -> Result<Option<TokenRecord>> {
        let key = *digest.as_bytes();
        if let Some((found, at)) = self.cache.get(&key)
            && at.elapsed() < self.ttl
        {
            return Ok(found);
        }
        let found = self.inner.token_by_digest(digest).await?;
        self.cache.insert(key, (found.clone(), Instant::now()));
        Ok(found)
    }

    async fn list_tokens(&self, before: Option<Uuid>, limit: usize) -> Result<Page<TokenRecord>> {
        self.inner.list_tokens(before, limit).await
    }

    async fn all_tokens(&self) -> Result<Vec<TokenRecord>> {
        self.inner.all_tokens().await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{Actor, AuditOutcome, KeyHasher, Role, memory::MemoryStore};

    fn token(digest: KeyDigest) -> TokenRecord {
        TokenRecord {
            id: Uuid::now_v7(),
            name: "t".into(),
            role: Role::Viewer,
            start: "kvt_AAAA".into(),
            digest,
            created_at: Utc::now(),
            expires_at: None,
            revoked_at: None,
            created_by: "test".into(),
        }
    }

    fn event(action: &str) -> AuditEvent {
        AuditEvent::new(
            Utc::now(),
            &Actor::library(),
            action,
            None,
            AuditOutcome::Success,
            serde_json::json!({}),
        )
    }

    #[tokio::test]
    async fn revocations_are_seen_at_once_here_and_within_the_ttl_elsewhere() {
        let store = Arc::new(MemoryStore::new());
        let here = CachedTokenStore::new(store.clone(), Duration::from_millis(200));
        let there = CachedTokenStore::new(store.clone(), Duration::from_millis(200));
        let digest = KeyHasher::sha256().digest("kvt_token");
        // A miss is remembered, but creating the token here forgets it.
        assert!(here.token_by_digest(&digest).await.unwrap().is_none());
        let t = token(digest);
        here.create_token(&t, &[event("token.create")])
            .await
            .unwrap();
        assert!(here.token_by_digest(&digest).await.unwrap().is_some());
        assert!(there.token_by_digest(&digest).await.unwrap().is_some());

        assert!(
            here.revoke_token(t.id, Utc::now(), &[event("token.revoke")])
                .await
                .unwrap()
        );
        let seen_here = here.token_by_digest(&digest).await.unwrap().unwrap();
        assert!(seen_here.revoked_at.is_some(), "revoked here: seen at once");
        let seen_there = there.token_by_digest(&digest).await.unwrap().unwrap();
        assert!(
            seen_there.revoked_at.is_none(),
            "the other instance still remembers"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
        let seen_there = there.token_by_digest(&digest).await.unwrap().unwrap();
        assert!(seen_there.revoked_at.is_some(), "…until its TTL has passed");
    }
}
