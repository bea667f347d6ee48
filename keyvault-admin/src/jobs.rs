//! The jobs `serve` runs every `KEYVAULT_JOB_INTERVAL` (CONTRACT §8): due automatic
//! rotations, sealed for the holders of the old keys; deletion of keys expired for longer than
//! `KEYVAULT_CLEANUP_AFTER`; usage retention (`KEYVAULT_USAGE_RETENTION`). Each runs under its
//! own lease in the database, so with several instances on one database each job runs on one
//! of them at a time, and a lease lapses when its holder dies. A rotation is also a write
//! conditional on the key's revision, so even two runs at once rotate no key twice.

use std::{sync::Arc, time::Duration};

use chrono::{TimeDelta, Utc};
use keyvault_core::{Actor, Purged};
use serde_json::json;

use crate::{app::App, error::Result};

/// The leases the jobs run under.
pub(crate) const ROTATION_LEASE: &str = "key-rotation";
pub(crate) const CLEANUP_LEASE: &str = "key-cleanup";
pub(crate) const RETENTION_LEASE: &str = "usage-retention";

/// Every lease a job may hold, for shutdown to give back.
pub(crate) const LEASES: [&str; 3] = [ROTATION_LEASE, CLEANUP_LEASE, RETENTION_LEASE];

/// What one round of the jobs did on this instance (`None`: not run here, because it is off
/// or another instance holds its lease).
#[derive(Debug, Default)]
pub struct JobRun {
    /// Keys rotated automatically.
    pub rotated: Option<usize>,
    /// Expired keys deleted.
    pub cleaned: Option<usize>,
    /// Usage removed.
    pub purged: Option<Purged>,
}

fn job_actor(job: &str) -> Actor {
    Actor {
        name: format!("job:{job}"),
        source_ip: None,
        request_id: Some(uuid::Uuid::now_v7().to_string()),
    }
}

impl App {
    /// Runs each job once, where `holder` holds (or takes) its lease: what `serve` does
    /// every `KEYVAULT_JOB_INTERVAL` ([`crate::Admin::run_jobs`]). A job that fails is logged
    /// and the others still run; the first error is returned.
    pub(crate) async fn run_jobs(&self, holder: &str) -> Result<JobRun> {
        let mut run = JobRun::default();
        let mut first_error = None;
        let mut note = |job: &str, e: crate::error::Error| {
            tracing::warn!(target: "keyvault::jobs", job, error = %e.cli_line(), "job failed; retried next interval");
            first_error.get_or_insert(e);
        };
        if self.config.auto_rotate && self.leased(ROTATION_LEASE, holder).await? {
            match self.rotate_due_sealed().await {
                Ok(n) => run.rotated = Some(n),
                Err(e) => note("rotation", e),
            }
        }
        if let Some(after) = self.config.cleanup_after
            && self.leased(CLEANUP_LEASE, holder).await?
        {
            match self.kv.cleanup_expired(after, &job_actor("cleanup")).await {
                Ok(ids) => run.cleaned = Some(ids.len()),
                Err(e) => note("cleanup", e.into()),
            }
        }
        if let Some(keep) = self.config.usage_retention
            && self.leased(RETENTION_LEASE, holder).await?
        {
            match self.purge_usage(keep).await {
                Ok(p) => run.purged = Some(p),
                Err(e) => note("retention", e),
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(run),
        }
    }

    /// Takes or renews a job's lease for two intervals.
    async fn leased(&self, lease: &str, holder: &str) -> Result<bool> {
        let now = Utc::now();
        let ttl = TimeDelta::from_std(self.config.job_interval * 2).unwrap_or(TimeDelta::hours(1));
        Ok(self
            .backends
            .leases
            .try_lease(lease, holder, now, now + ttl)
            .await?)
    }

    /// Rotates every due key that can be sealed (keys made before successor delivery wait
    /// for `rotate-due`) and tells the channels that want `key.rotated`.
    async fn rotate_due_sealed(&self) -> Result<usize> {
        let rotated = self.kv.rotate_due_sealed(&job_actor("rotation")).await?;
        if rotated.is_empty() {
            return Ok(0);
        }
        let events = rotated
            .iter()
            .map(|r| {
                let data = json!({
                    "id": r.record.id,
                    "old_id": r.old_id,
                    "old_key_expires_at": r.old_key_expires_at,
                    "automatic": true,
                });
                ("key.rotated", data)
            })
            .collect();
        if let Err(e) = self.notify_all(events).await {
            tracing::warn!(target: "keyvault::notify", error = %e.cli_line(), "key.rotated not queued");
        }
        tracing::info!(target: "keyvault::jobs", rotated = rotated.len(), "keys rotated automatically");
        Ok(rotated.len())
    }

    /// Deletes raw usage events and minute rollups older than `keep` (hourly rollups stay);
    /// `keyvault usage purge` and the retention job. Audited as `usage.purge`.
    pub async fn purge_usage(&self, keep: Duration) -> Result<Purged> {
        let before = Utc::now() - TimeDelta::from_std(keep).unwrap_or(TimeDelta::MAX);
        let purged = self.backends.usage.purge_before(before).await?;
        if purged != Purged::default() {
            tracing::info!(target: "keyvault::jobs", events = purged.events, minute_rollups = purged.minute_rollups, %before, "usage purged");
        }
        Ok(purged)
    }
}

/// Runs the jobs every `KEYVAULT_JOB_INTERVAL` for as long as the task lives.
pub(crate) async fn run_every(app: App, holder: Arc<str>) {
    let mut ticks = tokio::time::interval(app.config.job_interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        // Failures are logged inside; the next tick retries.
        let _ = app.run_jobs(&holder).await;
    }
}
