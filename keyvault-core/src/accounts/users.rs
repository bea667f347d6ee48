//! Dashboard users.

use std::fmt::{self, Debug};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{accounts::Role, audit::AuditEvent, error::Result};

/// A dashboard user as stored. Its `Debug` leaves the password hash out.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    /// The sign-in name, unique.
    pub username: String,
    /// What the user may do.
    pub role: Role,
    /// The argon2 PHC string of the password (a hash, never the password). Serialised, for
    /// backups.
    pub password_hash: String,
    /// Whether the user may sign in. Backups written before users could be disabled have
    /// no such field: their users are enabled.
    #[serde(default = "enabled")]
    pub enabled: bool,
    /// When created (microsecond precision is kept).
    pub created_at: DateTime<Utc>,
    /// When last changed.
    pub updated_at: DateTime<Utc>,
}

fn enabled() -> bool {
    true
}

impl UserRecord {
    /// Whether the user is an admin that may sign in: what the last-admin rule counts.
    pub fn is_enabled_admin(&self) -> bool {
        self.enabled && self.role == Role::Admin
    }

    /// Whether `next` changes what the user's sessions were granted on: the password, the
    /// role or whether the user is enabled.
    pub fn credentials_differ(&self, next: &UserRecord) -> bool {
        self.password_hash != next.password_hash
            || self.role != next.role
            || self.enabled != next.enabled
    }
}

impl fmt::Debug for UserRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserRecord")
            .field("username", &self.username)
            .field("role", &self.role)
            .field("password_hash", &"<redacted>")
            .field("enabled", &self.enabled)
            .field("created_at", &self.created_at)
            .field("updated_at", &self.updated_at)
            .finish()
    }
}

/// Stores dashboard users. Every mutation appends its `audit` events in the same
/// transaction: both happen, or neither.
///
/// Two rules hold in every store, inside the transaction that makes the change, so that no
/// caller can race past them:
/// - an update that changes a user's password, role or `enabled` ends every session of that
///   user ([`SessionStore`](crate::SessionStore));
/// - the last enabled admin can be neither disabled nor demoted (`Conflict`).
///
/// ```
/// use chrono::{SubsecRound, Utc};
/// use keyvault_core::{Error, Role, UserRecord, UserStore, memory::MemoryStore};
///
/// # async fn demo() -> keyvault_core::Result<()> {
/// let store = MemoryStore::new();
/// let now = Utc::now().trunc_subsecs(6);
/// let alice = UserRecord {
///     username: "alice".into(),
///     role: Role::Admin,
///     password_hash: "$argon2id$v=19$m=19456,t=2,p=1$…".into(),
///     enabled: true,
///     created_at: now,
///     updated_at: now,
/// };
/// store.create_user(&alice, &[]).await?;
/// // Alice is the only admin: she may not be demoted.
/// let demoted = UserRecord { role: Role::Viewer, ..alice.clone() };
/// assert!(matches!(store.update_user(&demoted, &[]).await, Err(Error::Conflict(_))));
/// assert_eq!(store.user("alice").await?, Some(alice));
/// # Ok(()) }
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(demo()).unwrap();
/// ```
#[async_trait]
pub trait UserStore: Send + Sync + Debug {
    /// Adds a user and appends `audit`. `Conflict` when the username is taken.
    async fn create_user(&self, user: &UserRecord, audit: &[AuditEvent]) -> Result<()>;

    /// Replaces the stored user's role, password hash, `enabled` and `updated_at` with
    /// `user`'s (the username names it; `created_at` stays) and appends `audit`. Ends every
    /// session of the user when the password, the role or `enabled` changes. `NotFound` for
    /// an unknown user; `Conflict`, changing nothing, when the user is an enabled admin and
    /// the change would leave no enabled admin.
    async fn update_user(&self, user: &UserRecord, audit: &[AuditEvent]) -> Result<()>;

    /// The user with this name.
    async fn user(&self, username: &str) -> Result<Option<UserRecord>>;

    /// Every user, by username.
    async fn users(&self) -> Result<Vec<UserRecord>>;
}
