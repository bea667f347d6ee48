//! The view models the dashboard's pages ask [`App`] for: what a page shows, gathered from
//! the stores, so that handlers stay thin and no template computes.

use chrono::{DateTime, Utc};
use keyvault_core::StatsOverview;

use super::{i18n::Lang, overview::KeyLine};
use crate::{app::App, error::Result};

impl App {
    /// The overview's top keys, with their names.
    pub(crate) async fn dashboard_top_keys(
        &self,
        stats: &StatsOverview,
        lang: Lang,
    ) -> Result<Vec<KeyLine>> {
        let _ = (stats, lang);
        Ok(Vec::new())
    }

    /// Keys whose expiry falls before `before` and that still verify.
    pub(crate) async fn dashboard_expiring(&self, before: DateTime<Utc>) -> Result<Vec<KeyLine>> {
        let _ = before;
        Ok(Vec::new())
    }
}
