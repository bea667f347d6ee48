//! Short-window reads of the raw events: per key (alert evaluation) and per second (live
//! statistics). Both read through the events' time index, never the whole table.

use std::collections::BTreeMap;

use crate::{model::KeyId, outcome::Outcome};

use super::LatencyHistogram;

/// One key's calls in a window.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KeyWindow {
    pub calls: u64,
    /// Calls without success (status outside 200–399).
    pub errors: u64,
    pub latency: LatencyHistogram,
    /// Verifications refused by the middleware, by outcome (their requests are calls too).
    pub rejected: BTreeMap<Outcome, u64>,
}

impl KeyWindow {
    /// Counts one event.
    pub fn add(&mut self, status: u16, latency_us: u64, outcome: Option<Outcome>) {
        self.calls += 1;
        if !(200..400).contains(&status) {
            self.errors += 1;
        }
        self.latency.record(latency_us);
        if let Some(o) = outcome.filter(|o| *o != Outcome::Valid) {
            *self.rejected.entry(o).or_default() += 1;
        }
    }
}

/// Every key's window: keys without calls are absent.
pub type KeyWindows = BTreeMap<KeyId, KeyWindow>;

/// One second's calls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SecondCounts {
    pub calls: u64,
    pub errors: u64,
    /// Verifications refused by the middleware.
    pub rejected: u64,
}

impl SecondCounts {
    /// Counts one event.
    pub fn add(&mut self, status: u16, outcome: Option<Outcome>) {
        self.calls += 1;
        if !(200..400).contains(&status) {
            self.errors += 1;
        }
        if outcome.is_some_and(|o| o != Outcome::Valid) {
            self.rejected += 1;
        }
    }
}
