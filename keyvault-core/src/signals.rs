//! Client signals (CONTRACT §7): which client IPs present unknown keys, and which networks
//! each key is used from, kept in a rolled-up form — a count per IP and minute, a sighting
//! per key and IP — never a row per request.
//!
//! Verifying processes note each verification in a [`ClientSignals`] aggregator (a few
//! tens of nanoseconds, bounded in memory); a flusher writes what it gathered to the
//! [`SignalStore`] every second, where the alert evaluation reads it.

use std::{
    collections::HashMap,
    fmt::Debug,
    net::IpAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};

use crate::{KeyId, Outcome, error::Result};

/// `NOT_FOUND` verifications from one client IP in one minute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpCount {
    /// The address, canonical (`203.0.113.9`, `2001:db8::1`).
    pub ip: String,
    /// The minute's start.
    pub minute: DateTime<Utc>,
    pub count: u64,
}

/// A key used from one client IP: when first and last.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sighting {
    pub key_id: KeyId,
    pub ip: String,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
}

/// The signals in the database, shared by every instance.
#[async_trait]
pub trait SignalStore: Send + Sync + Debug {
    /// Adds counts (to a stored count of the same IP and minute) and sightings (keeping the
    /// earliest `first_seen` and the latest `last_seen` of a key and IP), in one transaction.
    async fn record_signals(&self, not_found: &[IpCount], seen: &[Sighting]) -> Result<()>;

    /// The IPs whose `NOT_FOUND` count over the minutes starting in `[from, to)` exceeds
    /// `above`, with that count, the highest first.
    async fn not_found_by_ip(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        above: u64,
    ) -> Result<Vec<(String, u64)>>;

    /// Sightings first seen in `[from, to)`.
    async fn new_sightings(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> Result<Vec<Sighting>>;

    /// The sightings of these keys last seen at or after `since`.
    async fn sightings(&self, keys: &[KeyId], since: DateTime<Utc>) -> Result<Vec<Sighting>>;

    /// Removes counts of minutes before `before` and sightings last seen before it; how many
    /// rows went.
    async fn prune_signals(&self, before: DateTime<Utc>) -> Result<u64>;
}

/// At most this many distinct (IP, minute) counts and (key, IP) sightings wait for a flush;
/// past it new ones are dropped (and counted), so that a flood of addresses cannot grow
/// memory without bound.
pub const MAX_PENDING: usize = 100_000;

#[derive(Debug, Default)]
struct Pending {
    not_found: HashMap<(IpAddr, i64), u64>,
    seen: HashMap<(KeyId, IpAddr), (i64, i64)>,
}

/// The aggregator verifying processes note verifications in. Cheap to clone (shared).
#[derive(Debug, Clone, Default)]
pub struct ClientSignals {
    pending: Arc<Mutex<Pending>>,
    dropped: Arc<AtomicU64>,
}

fn minute_of(at_us: i64) -> i64 {
    at_us.div_euclid(60_000_000) * 60_000_000
}

fn time_of(us: i64) -> DateTime<Utc> {
    Utc.timestamp_micros(us).single().unwrap_or_default()
}

impl ClientSignals {
    pub fn new() -> Self {
        Self::default()
    }

    /// Notes one verification from `ip` at `at`: a `NOT_FOUND` counts against the IP; an
    /// accepted one is a sighting of its key. Other outcomes are not signals.
    pub fn note(&self, key: Option<KeyId>, ip: IpAddr, outcome: Outcome, at: DateTime<Utc>) {
        let at_us = at.timestamp_micros();
        let ip = ip.to_canonical();
        let mut p = self
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let full = p.not_found.len() + p.seen.len() >= MAX_PENDING;
        match (outcome, key) {
            (Outcome::NotFound, _) => {
                let slot = (ip, minute_of(at_us));
                match p.not_found.get_mut(&slot) {
                    Some(n) => *n += 1,
                    None if full => {
                        self.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                    None => {
                        p.not_found.insert(slot, 1);
                    }
                }
            }
            (Outcome::Valid, Some(k)) => match p.seen.get_mut(&(k, ip)) {
                Some((_, last)) => *last = (*last).max(at_us),
                None if full => {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                }
                None => {
                    p.seen.insert((k, ip), (at_us, at_us));
                }
            },
            _ => {}
        }
    }

    /// Takes what was gathered since the last take.
    pub fn take(&self) -> (Vec<IpCount>, Vec<Sighting>) {
        let p = std::mem::take(
            &mut *self
                .pending
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        let not_found = p
            .not_found
            .into_iter()
            .map(|((ip, minute), count)| IpCount {
                ip: ip.to_string(),
                minute: time_of(minute),
                count,
            })
            .collect();
        let seen = p
            .seen
            .into_iter()
            .map(|((key_id, ip), (first, last))| Sighting {
                key_id,
                ip: ip.to_string(),
                first_seen: time_of(first),
                last_seen: time_of(last),
            })
            .collect();
        (not_found, seen)
    }

    /// Signals dropped because the aggregator was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Writes what was gathered to `store`; on failure it is put back (merged with what
    /// came since), so a database outage delays signals rather than losing them.
    pub async fn flush(&self, store: &dyn SignalStore) -> Result<()> {
        let (not_found, seen) = self.take();
        if not_found.is_empty() && seen.is_empty() {
            return Ok(());
        }
        if let Err(e) = store.record_signals(&not_found, &seen).await {
            self.restore(not_found, seen);
            return Err(e);
        }
        Ok(())
    }

    fn restore(&self, not_found: Vec<IpCount>, seen: Vec<Sighting>) {
        let mut p = self
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for c in not_found {
            if let Ok(ip) = c.ip.parse::<IpAddr>() {
                *p.not_found
                    .entry((ip, c.minute.timestamp_micros()))
                    .or_default() += c.count;
            }
        }
        for s in seen {
            if let Ok(ip) = s.ip.parse::<IpAddr>() {
                let (f, l) = (
                    s.first_seen.timestamp_micros(),
                    s.last_seen.timestamp_micros(),
                );
                let e = p.seen.entry((s.key_id, ip)).or_insert((f, l));
                *e = (e.0.min(f), e.1.max(l));
            }
        }
    }

    /// Flushes into `store` every `every` until the task is aborted (flush once more then, if
    /// the caller wants what was gathered since).
    pub async fn flush_every(self, store: Arc<dyn SignalStore>, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = self.flush(store.as_ref()).await {
                tracing::warn!(error = %e, "client signals not written; retried next second");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifications_roll_up_by_ip_and_minute_and_by_key_and_ip() {
        let s = ClientSignals::new();
        let k = KeyId::new();
        let ip: IpAddr = "203.0.113.9".parse().unwrap();
        let mapped: IpAddr = "::ffff:203.0.113.9".parse().unwrap();
        let t = Utc.timestamp_opt(1_800_000_030, 0).unwrap();
        for _ in 0..5 {
            s.note(None, ip, Outcome::NotFound, t);
        }
        s.note(None, mapped, Outcome::NotFound, t);
        s.note(Some(k), ip, Outcome::Valid, t);
        s.note(
            Some(k),
            ip,
            Outcome::Valid,
            t + chrono::TimeDelta::minutes(3),
        );
        s.note(Some(k), ip, Outcome::Disabled, t);
        let (nf, seen) = s.take();
        assert_eq!(
            nf,
            [IpCount {
                ip: "203.0.113.9".into(),
                minute: Utc.timestamp_opt(1_800_000_000, 0).unwrap(),
                count: 6
            }]
        );
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].first_seen, t);
        assert_eq!(seen[0].last_seen, t + chrono::TimeDelta::minutes(3));
        assert_eq!(s.take(), (vec![], vec![]));
    }

    #[test]
    fn a_flood_of_addresses_is_bounded() {
        let s = ClientSignals::new();
        let t = Utc::now();
        for i in 0..(MAX_PENDING as u32 + 10) {
            s.note(None, IpAddr::from(i.to_be_bytes()), Outcome::NotFound, t);
        }
        assert_eq!(s.dropped(), 10);
        assert_eq!(s.take().0.len(), MAX_PENDING);
    }
}
