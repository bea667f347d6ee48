//! The server's accounts: roles, dashboard users, API tokens, sessions, settings and the
//! leases of background jobs, each behind a small capability trait.
//!
//! Every mutation takes the audit events that record it and writes them in the same
//! transaction as the change, as [`KeyStore::apply`](crate::KeyStore::apply) does: if the
//! audit record cannot be written, nothing changes (CONTRACT §4). A mutation that changes
//! nothing (revoking a revoked token, ending a session that is gone) writes nothing either,
//! and says so in its return value.

mod alerts;
mod cache;
mod leases;
mod notify;
mod role;
mod sessions;
mod settings;
mod tokens;
mod users;

pub use alerts::{Alert, AlertQuery, AlertRule, AlertState, AlertStore, Baseline};
pub use cache::{CachedTokenStore, DEFAULT_TOKEN_TTL};
pub use leases::LeaseStore;
pub use notify::{Delivery, DeliveryState, NotifierRecord, NotifierStore};
pub use role::{Need, Role};
pub use sessions::{SessionRecord, SessionStore};
pub use settings::{SECRET_KEY_SETTING, SettingStore};
pub use tokens::{TokenRecord, TokenStore};
pub use users::{UserRecord, UserStore};
