//! The view models the dashboard's pages ask [`App`] for: what a page shows, gathered from
//! the stores, so that handlers stay thin and no template computes.

use chrono::{DateTime, Utc};

use super::overview::KeyLine;
use crate::{app::App, error::Result};

/// Keys the overview lists as expiring.
const EXPIRING: usize = 10;
/// Keys read to find them (expired keys not yet cleaned up come first in the store's
/// order; the cleanup job of CONTRACT §8 keeps them few).
const EXPIRING_SCAN: usize = 2_000;

impl App {
    /// Enabled keys whose expiry falls between now and `before`, soonest first.
    pub(crate) async fn dashboard_expiring(&self, before: DateTime<Utc>) -> Result<Vec<KeyLine>> {
        let now = Utc::now();
        let mut keys: Vec<_> = self
            .backends
            .store
            .expired_before(before, EXPIRING_SCAN)
            .await?
            .into_iter()
            .filter(|k| k.enabled && k.effective_expiry().is_some_and(|e| e > now))
            .collect();
        keys.sort_by_key(|k| k.effective_expiry());
        Ok(keys
            .into_iter()
            .take(EXPIRING)
            .map(|k| {
                let at = k.effective_expiry().map(|e| e.to_rfc3339());
                KeyLine {
                    id: k.id.to_string(),
                    name: k.name,
                    start: k.start,
                    figure: at.clone().unwrap_or_default(),
                    at,
                }
            })
            .collect())
    }
}
