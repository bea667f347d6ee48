//! Named settings a server keeps in its database.

use std::fmt::Debug;

use async_trait::async_trait;

use crate::{audit::AuditEvent, error::Result};

/// The setting that holds the session-signing secret generated on first start (when
/// `SECRET_KEY` is unset): every instance on the database reads the same one.
pub const SECRET_KEY_SETTING: &str = "secret_key";

/// Stores named text settings.
///
/// ```
/// use keyvault_core::{SECRET_KEY_SETTING, SettingStore, memory::MemoryStore};
///
/// # async fn demo() -> keyvault_core::Result<()> {
/// let store = MemoryStore::new();
/// // Two instances start at once, each with its own fresh secret: both get the first one.
/// let a = store.setting_or_insert(SECRET_KEY_SETTING, "first").await?;
/// let b = store.setting_or_insert(SECRET_KEY_SETTING, "second").await?;
/// assert_eq!((a.as_str(), b.as_str()), ("first", "first"));
/// store.put_setting("retention_days", "30", &[]).await?;
/// assert_eq!(store.settings().await?.len(), 2);
/// # Ok(()) }
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(demo()).unwrap();
/// ```
#[async_trait]
pub trait SettingStore: Send + Sync + Debug {
    /// The value of `name`.
    async fn setting(&self, name: &str) -> Result<Option<String>>;

    /// Stores `value` unless `name` is set already, and returns the value that holds: the
    /// first writer wins and every caller, concurrent ones included, gets the stored value.
    /// Not audited: it is for values generated on start (the session secret), not changes.
    async fn setting_or_insert(&self, name: &str, value: &str) -> Result<String>;

    /// Sets `name` to `value` (inserted or replaced) and appends `audit`, both or neither.
    async fn put_setting(&self, name: &str, value: &str, audit: &[AuditEvent]) -> Result<()>;

    /// Every setting, by name.
    async fn settings(&self) -> Result<Vec<(String, String)>>;
}
