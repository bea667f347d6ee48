//! Restoring a backup: everything it holds, written as one unit.

use async_trait::async_trait;

use crate::{AuditEvent, KeyWrite, Result, TokenRecord, UserRecord};

/// What a backup puts back: settings, dashboard users, API tokens, the writes that recreate
/// the keys with their balances, and the audit log's events (linked into a chain again as
/// they are appended, from the first record).
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Restoration {
    /// Settings, each replacing a value already stored (a generated session secret).
    pub settings: Vec<(String, String)>,
    /// Dashboard users, inserted.
    pub users: Vec<UserRecord>,
    /// API tokens, inserted.
    pub tokens: Vec<TokenRecord>,
    /// Key writes in order, each checked against what the writes before it stored (as
    /// [`KeyStore::apply`](crate::KeyStore::apply) checks a batch).
    pub keys: Vec<KeyWrite>,
    /// The audit log's events, oldest first.
    pub audit: Vec<AuditEvent>,
}

impl Restoration {
    /// An empty restoration, filled in field by field.
    pub fn new() -> Self {
        Self::default()
    }
}

/// A store a backup can be restored into, all or nothing.
///
/// The separate stores' own writes each commit on their own: a restore made of them, cut
/// short by a bad record or a lost connection, would leave half a database behind. A backend
/// implements this with one transaction, so that a restore that fails at any point (or whose
/// process or database dies) leaves the store exactly as it was.
///
/// ```
/// use keyvault_core::{Error, Restoration, RestoreTarget, Result, async_trait};
///
/// /// A target that holds data already, so it refuses every restore.
/// #[derive(Debug)]
/// struct Full;
///
/// #[async_trait]
/// impl RestoreTarget for Full {
///     async fn restore(&self, _: &Restoration) -> Result<()> {
///         Err(Error::Conflict("the database holds data".into()))
///     }
/// }
/// # async fn demo() {
/// assert!(matches!(Full.restore(&Restoration::new()).await, Err(Error::Conflict(_))));
/// # }
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(demo());
/// ```
#[async_trait]
pub trait RestoreTarget: Send + Sync + std::fmt::Debug {
    /// Writes all of `restoration` in one transaction, into a store that holds no key, audit
    /// record, API token (revoked ones included) or user — checked inside that transaction.
    ///
    /// # Errors
    /// [`Error::Conflict`](crate::Error::Conflict) when the store holds data or a write
    /// collides with another; the backend's error when it fails. Either way nothing is
    /// written.
    async fn restore(&self, restoration: &Restoration) -> Result<()>;
}
