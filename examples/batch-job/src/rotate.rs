//! `rotate-due`: rotates keys whose policy is due, handing each new key out exactly once.

use std::path::Path;

use keyvault_core::{Actor, Keyvault};
use serde_json::json;

use crate::{error::Error, secret_file::SecretFile};

pub(crate) async fn run(vault: &Keyvault, out: &Path) -> Result<(), Error> {
    let mut file = SecretFile::open(out)?;
    // Each new key is on disk before its rotation commits: a crash in between leaves a key
    // in the file that never became valid, never a valid key that nobody has.
    let rotated = vault
        .rotate_due_with(&Actor::named("batch-job"), |r| {
            file.append(&json!({
                "id": r.record.id,
                "old_id": r.old_id,
                "key": r.key.expose(),
                "old_key_expires_at": r.old_key_expires_at,
            }))
        })
        .await?;
    crate::info(&format!(
        "rotated {} keys; new keys appended to {}",
        rotated.len(),
        file.path().display()
    ));
    Ok(())
}
