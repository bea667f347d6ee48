//! The outbox's worker: on one instance at a time, the deliveries that are due are attempted
//! (several at once), and each is marked delivered, rescheduled with a growing, jittered
//! wait, or given up after its last attempt.

use std::{collections::HashMap, time::Duration};

use chrono::{DateTime, TimeDelta, Utc};
use futures::StreamExt;
use keyvault_core::{Delivery, DeliveryState, NotifierRecord};
use rand::RngExt;
use uuid::Uuid;

use super::Attempt;
use crate::{app::App, error::Result};

/// The lease the delivering instance holds.
pub(crate) const LEASE: &str = "notification-delivery";

/// Deliveries taken per round.
const BATCH: usize = 64;

/// Attempts in flight at once.
const PARALLEL: usize = 8;

/// The metric of attempts, by outcome.
const COUNTER: &str = "keyvault_notifications_total";

/// The wait before attempt `attempts + 1`, when `attempts` have failed: the configured wait
/// for that step, 80–100 % of it at random (never later than configured, so the first retry
/// stays within its bound); None once every wait is used (give up).
pub(crate) fn next_wait(delays: &[Duration], attempts: u32) -> Option<Duration> {
    let base = *delays.get(usize::try_from(attempts).ok()?.checked_sub(1)?)?;
    let jitter: f64 = rand::rng().random_range(0.8..=1.0);
    Some(base.mul_f64(jitter))
}

/// Attempts the deliveries due at `now`; how many were attempted.
pub(crate) async fn deliver_due(app: &App, now: DateTime<Utc>) -> Result<usize> {
    let store = &app.backends.notifiers;
    let due = store.due_deliveries(now, BATCH).await?;
    if due.is_empty() {
        return Ok(0);
    }
    let mut channels: HashMap<Uuid, Option<NotifierRecord>> = HashMap::new();
    for d in &due {
        if let std::collections::hash_map::Entry::Vacant(slot) = channels.entry(d.notifier_id) {
            slot.insert(store.notifier(d.notifier_id).await?);
        }
    }
    let n = due.len();
    let results: Vec<Result<()>> = futures::stream::iter(due)
        .map(|d| {
            let channel = channels.get(&d.notifier_id).cloned().flatten();
            async move { attempt(app, channel, d).await }
        })
        .buffer_unordered(PARALLEL)
        .collect()
        .await;
    results.into_iter().collect::<Result<Vec<()>>>()?;
    Ok(n)
}

/// One attempt at `d`, and what it leaves in the outbox.
async fn attempt(app: &App, channel: Option<NotifierRecord>, mut d: Delivery) -> Result<()> {
    let Some(channel) = channel else {
        // The channel went while the delivery waited: nothing to send it to.
        return Ok(());
    };
    let outcome = match app.notifiers.get(&channel.kind) {
        Some(n) => n.deliver(&channel, &d, &app.outbound).await,
        None => Attempt::Failed {
            status: None,
            error: format!("no notifier sends {:?} channels", channel.kind),
        },
    };
    d.attempts += 1;
    let now = Utc::now();
    d.updated_at = now;
    let label = outcome.label();
    let (status, error) = match outcome {
        Attempt::Delivered { status } => {
            d.state = DeliveryState::Delivered;
            (Some(status), None)
        }
        Attempt::Failed { status, error } => (status, Some(error)),
        Attempt::Refused { error } => (None, Some(error)),
    };
    metrics::counter!(COUNTER, "outcome" => label).increment(1);
    d.last_status = status;
    d.last_error = error;
    if d.state != DeliveryState::Delivered {
        match next_wait(&app.config.retry_delays, d.attempts) {
            Some(wait) => {
                d.next_at = now + TimeDelta::from_std(wait).unwrap_or(TimeDelta::hours(24));
            }
            None => {
                d.state = DeliveryState::GaveUp;
                metrics::counter!(COUNTER, "outcome" => "gave_up").increment(1);
            }
        }
    }
    tracing::info!(
        target: "keyvault::notify",
        delivery = d.id,
        channel = %channel.id,
        to = super::guard::shown(&channel.url),
        event = d.event,
        attempt = d.attempts,
        outcome = label,
        status = d.last_status,
        error = d.last_error.as_deref().unwrap_or(""),
        state = d.state.as_str(),
        "notification attempt"
    );
    app.backends.notifiers.update_delivery(&d).await?;
    Ok(())
}

/// Runs [`deliver_due`] while this instance holds the lease, polling every `poll`.
pub(crate) async fn deliver_every(app: App, holder: std::sync::Arc<str>, poll: Duration) {
    let mut tick = tokio::time::interval(poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let ttl = TimeDelta::seconds(30);
    loop {
        tick.tick().await;
        let now = Utc::now();
        let held = app
            .backends
            .leases
            .try_lease(LEASE, &holder, now, now + ttl)
            .await;
        match held {
            Ok(true) => {
                if let Err(e) = deliver_due(&app, now).await {
                    tracing::warn!(target: "keyvault::notify", error = %e, "deliveries failed");
                }
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(target: "keyvault::notify", error = %e, "delivery lease unavailable");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_grow_with_jitter_below_their_bound_and_run_out() {
        let delays = [Duration::from_secs(10), Duration::from_secs(30)];
        assert_eq!(next_wait(&delays, 0), None);
        for _ in 0..100 {
            let w = next_wait(&delays, 1).unwrap();
            assert!(
                w >= Duration::from_secs(8) && w <= Duration::from_secs(10),
                "{w:?}"
            );
            let w = next_wait(&delays, 2).unwrap();
            assert!(
                w >= Duration::from_secs(24) && w <= Duration::from_secs(30),
                "{w:?}"
            );
        }
        assert_eq!(next_wait(&delays, 3), None);
    }
}
