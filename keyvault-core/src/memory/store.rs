use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Mutex,
};

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::{
    audit::{AuditEvent, AuditLog, AuditQuery, AuditRecord, ChainReport, ChainVerifier, link},
    digest::KeyDigest,
    error::{Error, Result},
    limits::{CreditDecision, CreditRequest, CreditStore},
    model::{Credits, KeyId, KeyRecord, Refill},
    store::{KeyQuery, KeyStore, KeyWrite, Page},
    usage::{
        OverviewBuilder, RequestId, StatsOverview, StatsQuery, UNKNOWN_PROVIDER, UsageEvent,
        UsageQuery, UsageSink,
    },
};

/// Keys, credit balances, the audit log, usage, accounts (users, API tokens, sessions,
/// settings, leases) and client signals in process memory.
///
/// One lock guards keys, accounts and the audit log together, so a mutation and its audit
/// record are one step, as a database transaction makes them elsewhere.
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<State>,
    balances: Mutex<HashMap<KeyId, Balance>>,
    usage: Mutex<Usage>,
    signals: Mutex<super::signals::Signals>,
}

#[derive(Debug, Default)]
pub(super) struct State {
    keys: BTreeMap<KeyId, KeyRecord>,
    by_digest: HashMap<KeyDigest, KeyId>,
    audit: Vec<AuditRecord>,
    pub(super) accounts: super::accounts::Accounts,
}

#[derive(Debug, Clone, Copy)]
struct Balance {
    remaining: u64,
    /// The start of the refill interval last applied.
    refilled_for: Option<DateTime<Utc>>,
    /// The refill of the configuration the balance was set for: the only one applied to it.
    refill: Option<Refill>,
}

impl Balance {
    /// A balance set at `at` (the record's `updated_at`): the refill interval holding `at`
    /// counts as applied.
    fn new(credits: &Credits, at: Option<DateTime<Utc>>) -> Self {
        Self {
            remaining: credits.remaining,
            refilled_for: credits
                .refill
                .zip(at)
                .map(|(r, at)| r.interval.start_of(at)),
            refill: credits.refill,
        }
    }

    /// Sets the balance to the refill amount once per interval. The first spend only notes
    /// the interval: the balance a key was given stands until the next one.
    ///
    /// Only a caller holding the balance's own refill applies it. Instances learn of a
    /// changed configuration up to a second late: one still holding the previous refill
    /// (`daily:100` after a change to `monthly:50`) would otherwise compute a later interval
    /// start than the one noted and set the new balance to the old amount. Such a caller
    /// spends from the balance as it stands and leaves the noted interval alone.
    fn refill(&mut self, credits: &Credits, now: DateTime<Utc>) {
        if let Some(r) = credits.refill.filter(|r| self.refill == Some(*r)) {
            let start = r.interval.start_of(now);
            match self.refilled_for {
                None => self.refilled_for = Some(start),
                Some(at) if at < start => {
                    self.remaining = r.amount;
                    self.refilled_for = Some(start);
                }
                Some(_) => {}
            }
        }
    }
}

#[derive(Debug, Default)]
struct Usage {
    seen: HashSet<RequestId>,
    events: Vec<UsageEvent>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    pub(super) fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn signals(&self) -> std::sync::MutexGuard<'_, super::signals::Signals> {
        self.signals.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn balances(&self) -> std::sync::MutexGuard<'_, HashMap<KeyId, Balance>> {
        self.balances.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Number of usage events stored.
    pub fn usage_len(&self) -> usize {
        self.usage
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .events
            .len()
    }
}

impl State {
    /// Links `events` after the last record and appends them. Callers have checked that the
    /// change they record can be made: nothing fails after this.
    pub(super) fn append_audit(&mut self, events: &[AuditEvent]) {
        let last = self.audit.last().map(|r| (r.seq, hash_bytes(&r.hash)));
        let records = link(last, events);
        self.audit.extend(records);
    }

    fn check(&self, writes: &[KeyWrite]) -> Result<()> {
        // Validate the whole batch before touching anything: all or nothing.
        let mut inserted = HashSet::new();
        for w in writes {
            match w {
                KeyWrite::Insert(r) => {
                    if self.keys.contains_key(&r.id)
                        || self.by_digest.contains_key(&r.digest)
                        || !inserted.insert(r.id)
                    {
                        return Err(Error::Conflict(format!("key {} already exists", r.id)));
                    }
                }
                KeyWrite::Update { record, .. } => match self.keys.get(&record.id) {
                    None => return Err(Error::key_not_found(record.id)),
                    Some(cur) if cur.revision + 1 != record.revision => {
                        return Err(Error::Conflict(format!(
                            "key {} was changed concurrently",
                            record.id
                        )));
                    }
                    Some(_) => {}
                },
                KeyWrite::Delete { id, .. } => {
                    if !self.keys.contains_key(id) {
                        return Err(Error::key_not_found(id));
                    }
                }
            }
        }
        Ok(())
    }
}

#[async_trait]
impl KeyStore for MemoryStore {
    async fn apply(&self, writes: &[KeyWrite], audit: &[AuditEvent]) -> Result<()> {
        let mut st = self.state();
        st.check(writes)?;
        let mut balances = self.balances();
        for w in writes {
            match w {
                KeyWrite::Insert(r) => {
                    if let Some(c) = &r.credits {
                        balances
                            .entry(r.quota_id)
                            .or_insert_with(|| Balance::new(c, Some(r.updated_at)));
                    }
                    st.by_digest.insert(r.digest, r.id);
                    st.keys.insert(r.id, r.clone());
                }
                KeyWrite::Update {
                    record,
                    reset_credits,
                } => {
                    if *reset_credits {
                        match &record.credits {
                            Some(c) => {
                                balances.insert(
                                    record.quota_id,
                                    Balance::new(c, Some(record.updated_at)),
                                );
                            }
                            None => {
                                balances.remove(&record.quota_id);
                            }
                        }
                    }
                    st.keys.insert(record.id, record.clone());
                }
                KeyWrite::Delete { id, .. } => {
                    if let Some(r) = st.keys.remove(id) {
                        st.by_digest.remove(&r.digest);
                        let shared = st.keys.values().any(|k| k.quota_id == r.quota_id);
                        if !shared {
                            balances.remove(&r.quota_id);
                        }
                    }
                }
            }
        }
        st.append_audit(audit);
        Ok(())
    }

    async fn get(&self, id: KeyId) -> Result<Option<KeyRecord>> {
        Ok(self.state().keys.get(&id).cloned())
    }

    async fn find_by_digest(&self, digest: &KeyDigest) -> Result<Option<KeyRecord>> {
        let st = self.state();
        Ok(st
            .by_digest
            .get(digest)
            .and_then(|id| st.keys.get(id))
            .cloned())
    }

    async fn list(&self, q: &KeyQuery) -> Result<Page<KeyRecord>> {
        let st = self.state();
        let search = q.search.as_ref().map(|s| s.to_lowercase());
        let items: Vec<KeyRecord> = st
            .keys
            .values()
            .rev()
            .filter(|k| q.before.is_none_or(|b| k.id < b))
            .filter(|k| {
                q.owner_id
                    .as_ref()
                    .is_none_or(|o| k.owner_id.as_ref() == Some(o))
            })
            .filter(|k| q.enabled.is_none_or(|e| k.enabled == e))
            .filter(|k| {
                search.as_ref().is_none_or(|s| {
                    k.name.to_lowercase().contains(s) || k.start.to_lowercase().contains(s)
                })
            })
            .take(q.limit + 1)
            .cloned()
            .collect();
        Ok(Page::over_fetched(items, q.limit))
    }

    async fn due_for_rotation(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<KeyRecord>> {
        let st = self.state();
        let mut due: Vec<KeyRecord> = st
            .keys
            .values()
            .filter(|k| {
                k.enabled
                    && k.superseded_by.is_none()
                    && !k.is_expired(now)
                    && k.next_rotation_at.is_some_and(|t| t <= now)
            })
            .cloned()
            .collect();
        due.sort_by_key(|k| k.next_rotation_at);
        due.truncate(limit);
        Ok(due)
    }

    async fn expired_before(&self, before: DateTime<Utc>, limit: usize) -> Result<Vec<KeyRecord>> {
        let st = self.state();
        Ok(st
            .keys
            .values()
            .filter(|k| k.effective_expiry().is_some_and(|t| t <= before))
            .take(limit)
            .cloned()
            .collect())
    }
}

fn hash_bytes(hex: &str) -> [u8; 32] {
    KeyDigest::from_hex(hex)
        .map(|d| *d.as_bytes())
        .unwrap_or([0; 32])
}

#[async_trait]
impl CreditStore for MemoryStore {
    async fn spend(&self, req: &CreditRequest<'_>) -> Result<CreditDecision> {
        let mut balances = self.balances();
        let b = balances
            .entry(req.quota_id)
            .or_insert_with(|| Balance::new(req.credits, None));
        b.refill(req.credits, req.now);
        if b.remaining >= req.cost {
            b.remaining -= req.cost;
            Ok(CreditDecision::Spent {
                remaining: b.remaining,
            })
        } else {
            Ok(CreditDecision::Insufficient {
                remaining: b.remaining,
            })
        }
    }

    async fn refund(&self, req: &CreditRequest<'_>) -> Result<()> {
        if let Some(b) = self.balances().get_mut(&req.quota_id) {
            b.remaining = b.remaining.saturating_add(req.cost);
        }
        Ok(())
    }

    async fn debit(
        &self,
        quota_id: KeyId,
        credits: &Credits,
        amount: u64,
        now: DateTime<Utc>,
    ) -> Result<u64> {
        let mut balances = self.balances();
        let Some(b) = balances.get_mut(&quota_id) else {
            return Ok(0);
        };
        b.refill(credits, now);
        b.remaining = b.remaining.saturating_sub(amount);
        Ok(b.remaining)
    }
}

#[async_trait]
impl AuditLog for MemoryStore {
    async fn append(&self, events: &[AuditEvent]) -> Result<()> {
        self.state().append_audit(events);
        Ok(())
    }

    async fn list(&self, q: &AuditQuery) -> Result<Page<AuditRecord>> {
        let st = self.state();
        let items: Vec<AuditRecord> = st
            .audit
            .iter()
            .rev()
            .filter(|r| q.before_seq.is_none_or(|b| r.seq < b))
            .filter(|r| q.from.is_none_or(|f| r.event.at >= f))
            .filter(|r| q.to.is_none_or(|t| r.event.at < t))
            .filter(|r| q.actor.as_ref().is_none_or(|a| &r.event.actor == a))
            .filter(|r| q.action.as_ref().is_none_or(|a| &r.event.action == a))
            .filter(|r| {
                q.target_id
                    .as_ref()
                    .is_none_or(|t| r.event.target_id.as_ref() == Some(t))
            })
            .filter(|r| q.outcome.is_none_or(|o| r.event.outcome == o))
            .take(q.limit + 1)
            .cloned()
            .collect();
        Ok(Page::over_fetched(items, q.limit))
    }

    async fn verify_chain(&self) -> Result<ChainReport> {
        let st = self.state();
        let mut v = ChainVerifier::default();
        st.audit.iter().for_each(|r| v.push(r));
        Ok(v.finish())
    }
}

#[async_trait]
impl UsageSink for MemoryStore {
    async fn write(&self, events: &[UsageEvent]) -> Result<()> {
        let mut last_used: HashMap<KeyId, DateTime<Utc>> = HashMap::new();
        {
            let mut u = self.usage.lock().unwrap_or_else(|e| e.into_inner());
            for e in events {
                if u.seen.insert(e.request_id.clone()) {
                    if let Some(k) = e.key_id {
                        let t = last_used.entry(k).or_insert(e.ts);
                        *t = (*t).max(e.ts);
                    }
                    u.events.push(e.clone());
                }
            }
        }
        let used: Vec<_> = last_used.into_iter().collect();
        self.touch(&used);
        Ok(())
    }

    /// Removes the events older than `before`. This store keeps no rollups: its statistics
    /// come from the events, so those before `before` go with them. Request ids stay known,
    /// so a retried batch is still counted once.
    async fn purge_before(&self, before: DateTime<Utc>) -> Result<crate::Purged> {
        let mut u = self.usage.lock().unwrap_or_else(|e| e.into_inner());
        let was = u.events.len();
        u.events.retain(|e| e.ts >= before);
        Ok(crate::Purged {
            events: (was - u.events.len()) as u64,
            minute_rollups: 0,
        })
    }
}

impl MemoryStore {
    /// Moves keys' `last_used_at` forward to these times (never back).
    pub(crate) fn touch(&self, used: &[(KeyId, DateTime<Utc>)]) {
        if used.is_empty() {
            return;
        }
        let mut st = self.state();
        for &(id, ts) in used {
            if let Some(k) = st.keys.get_mut(&id) {
                k.last_used_at = Some(k.last_used_at.map_or(ts, |t| t.max(ts)));
            }
        }
    }
}

#[async_trait]
impl UsageQuery for MemoryStore {
    async fn overview(&self, q: &StatsQuery) -> Result<StatsOverview> {
        q.validate()?;
        let u = self.usage.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = OverviewBuilder::default();
        for e in u.events.iter().filter(|e| {
            e.ts >= q.from
                && e.ts < q.to
                && q.key_id.is_none_or(|k| e.key_id == Some(k))
                && q.provider
                    .as_ref()
                    .is_none_or(|p| e.provider.as_deref() == Some(p.as_str()))
        }) {
            let provider = e.provider.as_deref().unwrap_or(UNKNOWN_PROVIDER);
            out.add(provider, q.bucket_of(e.ts), 1, u64::from(e.is_success()));
            out.latency().record(e.latency_us);
        }
        Ok(out.finish())
    }

    async fn key_windows(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        key: Option<KeyId>,
    ) -> Result<crate::KeyWindows> {
        let u = self.usage.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = crate::KeyWindows::new();
        for e in u.events.iter().filter(|e| e.ts >= from && e.ts < to) {
            let Some(k) = e.key_id.filter(|k| key.is_none_or(|want| want == *k)) else {
                continue;
            };
            out.entry(k)
                .or_default()
                .add(e.status, e.latency_us, e.outcome);
        }
        Ok(out)
    }

    async fn per_second(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<std::collections::BTreeMap<i64, crate::SecondCounts>> {
        let u = self.usage.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = std::collections::BTreeMap::<i64, crate::SecondCounts>::new();
        for e in u.events.iter().filter(|e| e.ts >= from && e.ts < to) {
            out.entry(e.ts.timestamp())
                .or_default()
                .add(e.status, e.outcome);
        }
        Ok(out)
    }
}
