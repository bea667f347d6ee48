//! The account traits of keyvault-core on SQLite. Every mutation runs in one `BEGIN
//! IMMEDIATE` transaction with its audit records ([`append_linked`](crate::audit)), so the
//! checks it makes (the last enabled admin, a user's sessions) see no other writer.

mod alerts;
mod leases;
mod notify;
mod sessions;
pub(crate) mod settings;
pub(crate) mod tokens;
pub(crate) mod users;

use keyvault_core::{KeyDigest, Result, Role, uuid::Uuid};

use crate::error::corrupt;

/// Whether a failed statement broke a UNIQUE or PRIMARY KEY constraint.
fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

fn role(text: &str, column: &'static str) -> Result<Role, crate::Error> {
    text.parse().map_err(|e| corrupt(column, e))
}

fn digest(bytes: &[u8], column: &'static str) -> Result<KeyDigest, crate::Error> {
    KeyDigest::from_slice(bytes).map_err(|e| corrupt(column, e))
}

fn uuid(text: &str, column: &'static str) -> Result<Uuid, crate::Error> {
    Uuid::parse_str(text).map_err(|e| corrupt(column, e))
}
