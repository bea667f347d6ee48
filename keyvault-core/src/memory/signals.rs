//! [`SignalStore`] on [`MemoryStore`]: the reference semantics of the client signals, which
//! the SQL stores match row for row.

use std::collections::{BTreeMap, BTreeSet};

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::{
    KeyId,
    error::Result,
    memory::MemoryStore,
    signals::{IpCount, Sighting, SignalStore},
};

/// The signals part of the store's state, under a lock of its own: signals are written every
/// second by every verifying task's flusher and never with an audit record.
#[derive(Debug, Default)]
pub(super) struct Signals {
    /// `NOT_FOUND` counts per (IP, minute).
    not_found: BTreeMap<(String, DateTime<Utc>), u64>,
    /// (first seen, last seen) per (key, IP).
    seen: BTreeMap<(KeyId, String), (DateTime<Utc>, DateTime<Utc>)>,
}

fn sighting(
    &(key_id, ref ip): &(KeyId, String),
    &(first, last): &(DateTime<Utc>, DateTime<Utc>),
) -> Sighting {
    Sighting {
        key_id,
        ip: ip.clone(),
        first_seen: first,
        last_seen: last,
    }
}

#[async_trait]
impl SignalStore for MemoryStore {
    async fn record_signals(&self, not_found: &[IpCount], seen: &[Sighting]) -> Result<()> {
        let mut st = self.signals();
        for c in not_found {
            let n = st.not_found.entry((c.ip.clone(), c.minute)).or_default();
            *n = n.saturating_add(c.count);
        }
        for s in seen {
            let e = st
                .seen
                .entry((s.key_id, s.ip.clone()))
                .or_insert((s.first_seen, s.last_seen));
            *e = (e.0.min(s.first_seen), e.1.max(s.last_seen));
        }
        Ok(())
    }

    async fn not_found_by_ip(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        above: u64,
    ) -> Result<Vec<(String, u64)>> {
        let mut by_ip: BTreeMap<&str, u64> = BTreeMap::new();
        let st = self.signals();
        for ((ip, minute), n) in &st.not_found {
            if from <= *minute && *minute < to {
                let sum = by_ip.entry(ip).or_default();
                *sum = sum.saturating_add(*n);
            }
        }
        let mut over: Vec<(String, u64)> = by_ip
            .into_iter()
            .filter(|&(_, n)| n > above)
            .map(|(ip, n)| (ip.to_owned(), n))
            .collect();
        // The highest first; ties by address, as the SQL stores order them.
        over.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        Ok(over)
    }

    async fn new_sightings(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> Result<Vec<Sighting>> {
        let mut new: Vec<Sighting> = self
            .signals()
            .seen
            .iter()
            .filter(|(_, (first, _))| from <= *first && *first < to)
            .map(|(k, v)| sighting(k, v))
            .collect();
        new.sort_by(|a, b| (a.first_seen, a.key_id, &a.ip).cmp(&(b.first_seen, b.key_id, &b.ip)));
        Ok(new)
    }

    async fn sightings(&self, keys: &[KeyId], since: DateTime<Utc>) -> Result<Vec<Sighting>> {
        let keys: BTreeSet<KeyId> = keys.iter().copied().collect();
        // Ordered by key and IP (the map's order), as the SQL stores order them.
        Ok(self
            .signals()
            .seen
            .iter()
            .filter(|((key, _), (_, last))| keys.contains(key) && *last >= since)
            .map(|(k, v)| sighting(k, v))
            .collect())
    }

    async fn prune_signals(&self, before: DateTime<Utc>) -> Result<u64> {
        let mut st = self.signals();
        let rows = st.not_found.len() + st.seen.len();
        st.not_found.retain(|(_, minute), _| *minute >= before);
        st.seen.retain(|_, (_, last)| *last >= before);
        Ok((rows - st.not_found.len() - st.seen.len()) as u64)
    }
}
