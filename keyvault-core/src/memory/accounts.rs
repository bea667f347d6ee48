//! The account traits on [`MemoryStore`]: the reference semantics every backend's
//! conformance run matches. Each mutation checks everything under the state lock before it
//! changes anything, then changes and appends its audit events in the same critical section.

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::{
    KeyId,
    accounts::{
        Alert, AlertQuery, AlertRule, AlertState, AlertStore, Baseline, Delivery, DeliveryState,
        LeaseStore, NotifierRecord, NotifierStore, SessionRecord, SessionStore, SettingStore,
        TokenRecord, TokenStore, UserRecord, UserStore,
    },
    audit::AuditEvent,
    digest::KeyDigest,
    error::{Entity, Error, Result},
    memory::MemoryStore,
    store::Page,
};

/// The accounts part of the store's state (guarded by the same lock as the audit log).
#[derive(Debug, Default)]
pub(super) struct Accounts {
    users: BTreeMap<String, UserRecord>,
    tokens: BTreeMap<Uuid, TokenRecord>,
    token_ids: HashMap<KeyDigest, Uuid>,
    sessions: HashMap<KeyDigest, SessionRecord>,
    settings: BTreeMap<String, String>,
    leases: HashMap<String, Lease>,
    rules: BTreeMap<Uuid, AlertRule>,
    alerts: BTreeMap<Uuid, Alert>,
    baselines: BTreeMap<(Uuid, KeyId), Baseline>,
    notifiers: BTreeMap<Uuid, NotifierRecord>,
    deliveries: BTreeMap<String, Delivery>,
}

#[derive(Debug)]
struct Lease {
    holder: String,
    expires_at: DateTime<Utc>,
}

impl Accounts {
    fn end_sessions_of(&mut self, username: &str) -> u64 {
        let before = self.sessions.len();
        self.sessions.retain(|_, s| s.username != username);
        (before - self.sessions.len()) as u64
    }
}

/// The refusal every store gives for the last enabled admin.
fn last_admin(username: &str) -> Error {
    Error::Conflict(format!(
        "user {username:?} is the last enabled admin: enable or promote another admin first"
    ))
}

#[async_trait]
impl UserStore for MemoryStore {
    async fn create_user(&self, user: &UserRecord, audit: &[AuditEvent]) -> Result<()> {
        let mut st = self.state();
        if st.accounts.users.contains_key(&user.username) {
            return Err(Error::Conflict(format!(
                "user {:?} already exists",
                user.username
            )));
        }
        st.accounts
            .users
            .insert(user.username.clone(), user.clone());
        st.append_audit(audit);
        Ok(())
    }

    async fn update_user(&self, user: &UserRecord, audit: &[AuditEvent]) -> Result<()> {
        let mut st = self.state();
        let accounts = &mut st.accounts;
        let Some(stored) = accounts.users.get(&user.username) else {
            return Err(Error::not_found(Entity::User, &user.username));
        };
        if stored.is_enabled_admin()
            && !user.is_enabled_admin()
            && !accounts
                .users
                .values()
                .any(|u| u.username != user.username && u.is_enabled_admin())
        {
            return Err(last_admin(&user.username));
        }
        let ends_sessions = stored.credentials_differ(user);
        let next = UserRecord {
            created_at: stored.created_at,
            ..user.clone()
        };
        accounts.users.insert(next.username.clone(), next);
        if ends_sessions {
            accounts.end_sessions_of(&user.username);
        }
        st.append_audit(audit);
        Ok(())
    }

    async fn user(&self, username: &str) -> Result<Option<UserRecord>> {
        Ok(self.state().accounts.users.get(username).cloned())
    }

    async fn users(&self) -> Result<Vec<UserRecord>> {
        Ok(self.state().accounts.users.values().cloned().collect())
    }
}

#[async_trait]
impl TokenStore for MemoryStore {
    async fn create_token(&self, token: &TokenRecord, audit: &[AuditEvent]) -> Result<()> {
        let mut st = self.state();
        let accounts = &mut st.accounts;
        if accounts.tokens.contains_key(&token.id) || accounts.token_ids.contains_key(&token.digest)
        {
            return Err(Error::Conflict(format!(
                "token {} already exists",
                token.id
            )));
        }
        accounts.token_ids.insert(token.digest, token.id);
        accounts.tokens.insert(token.id, token.clone());
        st.append_audit(audit);
        Ok(())
    }

    async fn revoke_token(
        &self,
        id: Uuid,
        at: DateTime<Utc>,
        audit: &[AuditEvent],
    ) -> Result<bool> {
        let mut st = self.state();
        match st.accounts.tokens.get_mut(&id) {
            Some(t) if t.revoked_at.is_none() => t.revoked_at = Some(at),
            _ => return Ok(false),
        }
        st.append_audit(audit);
        Ok(true)
    }

    async fn token(&self, id: Uuid) -> Result<Option<TokenRecord>> {
        Ok(self.state().accounts.tokens.get(&id).cloned())
    }

    async fn token_by_digest(&self, digest: &KeyDigest) -> Result<Option<TokenRecord>> {
        let st = self.state();
        Ok(st
            .accounts
            .token_ids
            .get(digest)
            .and_then(|id| st.accounts.tokens.get(id))
            .cloned())
    }

    async fn list_tokens(&self, before: Option<Uuid>, limit: usize) -> Result<Page<TokenRecord>> {
        let st = self.state();
        let items: Vec<TokenRecord> = st
            .accounts
            .tokens
            .values()
            .rev()
            .filter(|t| t.revoked_at.is_none() && before.is_none_or(|b| t.id < b))
            .take(limit.saturating_add(1))
            .cloned()
            .collect();
        Ok(Page::over_fetched(items, limit))
    }

    async fn all_tokens(&self) -> Result<Vec<TokenRecord>> {
        Ok(self.state().accounts.tokens.values().cloned().collect())
    }
}

#[async_trait]
impl SessionStore for MemoryStore {
    async fn create_session(&self, session: &SessionRecord, audit: &[AuditEvent]) -> Result<()> {
        let mut st = self.state();
        let accounts = &mut st.accounts;
        match accounts.users.get(&session.username) {
            None => return Err(Error::not_found(Entity::User, &session.username)),
            Some(u) if !u.enabled => {
                return Err(Error::Conflict(format!(
                    "user {:?} is disabled",
                    session.username
                )));
            }
            Some(_) => {}
        }
        if accounts.sessions.contains_key(&session.digest) {
            return Err(Error::Conflict("the session exists already".into()));
        }
        accounts.sessions.insert(session.digest, session.clone());
        st.append_audit(audit);
        Ok(())
    }

    async fn session(&self, digest: &KeyDigest) -> Result<Option<SessionRecord>> {
        Ok(self.state().accounts.sessions.get(digest).cloned())
    }

    async fn end_session(&self, digest: &KeyDigest, audit: &[AuditEvent]) -> Result<bool> {
        let mut st = self.state();
        if st.accounts.sessions.remove(digest).is_none() {
            return Ok(false);
        }
        st.append_audit(audit);
        Ok(true)
    }

    async fn end_user_sessions(&self, username: &str, audit: &[AuditEvent]) -> Result<u64> {
        let mut st = self.state();
        let ended = st.accounts.end_sessions_of(username);
        if ended > 0 {
            st.append_audit(audit);
        }
        Ok(ended)
    }

    async fn purge_sessions(&self, expired_before: DateTime<Utc>) -> Result<u64> {
        let mut st = self.state();
        let before = st.accounts.sessions.len();
        st.accounts
            .sessions
            .retain(|_, s| s.expires_at > expired_before);
        Ok((before - st.accounts.sessions.len()) as u64)
    }
}

#[async_trait]
impl SettingStore for MemoryStore {
    async fn setting(&self, name: &str) -> Result<Option<String>> {
        Ok(self.state().accounts.settings.get(name).cloned())
    }

    async fn setting_or_insert(&self, name: &str, value: &str) -> Result<String> {
        let mut st = self.state();
        Ok(st
            .accounts
            .settings
            .entry(name.to_owned())
            .or_insert_with(|| value.to_owned())
            .clone())
    }

    async fn put_setting(&self, name: &str, value: &str, audit: &[AuditEvent]) -> Result<()> {
        let mut st = self.state();
        st.accounts
            .settings
            .insert(name.to_owned(), value.to_owned());
        st.append_audit(audit);
        Ok(())
    }

    async fn settings(&self) -> Result<Vec<(String, String)>> {
        Ok(self
            .state()
            .accounts
            .settings
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
}

/// The check every store makes before touching a lease.
fn check_lease_times(now: DateTime<Utc>, until: DateTime<Utc>) -> Result<()> {
    if until <= now {
        return Err(Error::invalid("until", "must be after now"));
    }
    Ok(())
}

#[async_trait]
impl LeaseStore for MemoryStore {
    async fn try_lease(
        &self,
        name: &str,
        holder: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<bool> {
        check_lease_times(now, until)?;
        let mut st = self.state();
        let leases = &mut st.accounts.leases;
        if let Some(l) = leases.get(name)
            && l.holder != holder
            && l.expires_at > now
        {
            return Ok(false);
        }
        leases.insert(
            name.to_owned(),
            Lease {
                holder: holder.to_owned(),
                expires_at: until,
            },
        );
        Ok(true)
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<bool> {
        let mut st = self.state();
        let leases = &mut st.accounts.leases;
        if leases.get(name).is_some_and(|l| l.holder == holder) {
            leases.remove(name);
            return Ok(true);
        }
        Ok(false)
    }
}

#[async_trait]
impl AlertStore for MemoryStore {
    async fn create_rule(&self, rule: &AlertRule, audit: &[AuditEvent]) -> Result<()> {
        let mut st = self.state();
        if st.accounts.rules.contains_key(&rule.id) {
            return Err(Error::Conflict(format!(
                "alert rule {} already exists",
                rule.id
            )));
        }
        st.accounts.rules.insert(rule.id, rule.clone());
        st.append_audit(audit);
        Ok(())
    }

    async fn update_rule(&self, rule: &AlertRule, audit: &[AuditEvent]) -> Result<bool> {
        let mut st = self.state();
        match st.accounts.rules.get_mut(&rule.id) {
            Some(r) => *r = rule.clone(),
            None => return Ok(false),
        }
        st.append_audit(audit);
        Ok(true)
    }

    async fn delete_rule(&self, id: Uuid, at: DateTime<Utc>, audit: &[AuditEvent]) -> Result<bool> {
        let mut st = self.state();
        if st.accounts.rules.remove(&id).is_none() {
            return Ok(false);
        }
        st.accounts.baselines.retain(|(rule, _), _| *rule != id);
        for a in st.accounts.alerts.values_mut() {
            if a.rule_id == id && a.state != AlertState::Resolved {
                a.state = AlertState::Resolved;
                a.resolved_at = Some(at);
            }
        }
        st.append_audit(audit);
        Ok(true)
    }

    async fn rule(&self, id: Uuid) -> Result<Option<AlertRule>> {
        Ok(self.state().accounts.rules.get(&id).cloned())
    }

    async fn rules(&self) -> Result<Vec<AlertRule>> {
        let mut rules: Vec<AlertRule> = self.state().accounts.rules.values().cloned().collect();
        rules.sort_by_key(|r| (r.created_at, r.id));
        Ok(rules)
    }

    async fn alerts(&self, q: &AlertQuery) -> Result<Vec<Alert>> {
        Ok(self
            .state()
            .accounts
            .alerts
            .values()
            .rev()
            .filter(|a| {
                q.state.is_none_or(|s| a.state == s)
                    && q.rule_id.is_none_or(|r| a.rule_id == r)
                    && q.key_id.is_none_or(|k| a.key_id == Some(k))
                    && q.before.is_none_or(|b| a.id < b)
            })
            .take(q.limit)
            .cloned()
            .collect())
    }

    async fn alert(&self, id: Uuid) -> Result<Option<Alert>> {
        Ok(self.state().accounts.alerts.get(&id).cloned())
    }

    async fn open_alerts(&self) -> Result<Vec<Alert>> {
        Ok(self
            .state()
            .accounts
            .alerts
            .values()
            .filter(|a| a.state != AlertState::Resolved)
            .cloned()
            .collect())
    }

    async fn firing_count(&self) -> Result<u64> {
        Ok(self
            .state()
            .accounts
            .alerts
            .values()
            .filter(|a| a.state == AlertState::Firing)
            .count() as u64)
    }

    async fn save_transitions(&self, alerts: &[Alert], outbox: &[Delivery]) -> Result<()> {
        let mut st = self.state();
        let mut next = st.accounts.alerts.clone();
        for a in alerts {
            next.insert(a.id, a.clone());
        }
        let mut open = std::collections::HashSet::new();
        for a in next.values().filter(|a| a.state != AlertState::Resolved) {
            if !open.insert((a.rule_id, a.subject())) {
                return Err(Error::Conflict(format!(
                    "rule {} already has an open alert for {}",
                    a.rule_id,
                    a.subject()
                )));
            }
        }
        st.accounts.alerts = next;
        for d in outbox {
            st.accounts
                .deliveries
                .entry(d.id.clone())
                .or_insert_with(|| d.clone());
        }
        Ok(())
    }

    async fn acknowledge(
        &self,
        id: Uuid,
        at: DateTime<Utc>,
        audit: &[AuditEvent],
    ) -> Result<Option<Alert>> {
        let mut st = self.state();
        let Some(a) = st.accounts.alerts.get_mut(&id) else {
            return Ok(None);
        };
        if a.state != AlertState::Firing {
            return Ok(Some(a.clone()));
        }
        a.state = AlertState::Acknowledged;
        a.acknowledged_at = Some(at);
        let out = a.clone();
        st.append_audit(audit);
        Ok(Some(out))
    }

    async fn baselines(&self, rule_id: Uuid) -> Result<Vec<Baseline>> {
        Ok(self
            .state()
            .accounts
            .baselines
            .iter()
            .filter(|((r, _), _)| *r == rule_id)
            .map(|(_, b)| *b)
            .collect())
    }

    async fn save_baselines(&self, rule_id: Uuid, baselines: &[Baseline]) -> Result<()> {
        let mut st = self.state();
        for b in baselines {
            st.accounts.baselines.insert((rule_id, b.key_id), *b);
        }
        Ok(())
    }
}

#[async_trait]
impl NotifierStore for MemoryStore {
    async fn create_notifier(&self, n: &NotifierRecord, audit: &[AuditEvent]) -> Result<()> {
        let mut st = self.state();
        if st.accounts.notifiers.contains_key(&n.id) {
            return Err(Error::Conflict(format!("notifier {} already exists", n.id)));
        }
        st.accounts.notifiers.insert(n.id, n.clone());
        st.append_audit(audit);
        Ok(())
    }

    async fn delete_notifier(&self, id: Uuid, audit: &[AuditEvent]) -> Result<bool> {
        let mut st = self.state();
        if st.accounts.notifiers.remove(&id).is_none() {
            return Ok(false);
        }
        // Its delivered and given-up history goes too: it would name a channel that is gone.
        st.accounts.deliveries.retain(|_, d| d.notifier_id != id);
        st.append_audit(audit);
        Ok(true)
    }

    async fn notifier(&self, id: Uuid) -> Result<Option<NotifierRecord>> {
        Ok(self.state().accounts.notifiers.get(&id).cloned())
    }

    async fn notifiers(&self) -> Result<Vec<NotifierRecord>> {
        let mut all: Vec<NotifierRecord> =
            self.state().accounts.notifiers.values().cloned().collect();
        all.sort_by_key(|n| (n.created_at, n.id));
        Ok(all)
    }

    async fn enqueue(&self, deliveries: &[Delivery]) -> Result<()> {
        self.save_transitions(&[], deliveries).await
    }

    async fn due_deliveries(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<Delivery>> {
        let mut due: Vec<Delivery> = self
            .state()
            .accounts
            .deliveries
            .values()
            .filter(|d| d.state == DeliveryState::Pending && d.next_at <= now)
            .cloned()
            .collect();
        due.sort_by(|a, b| (a.next_at, &a.id).cmp(&(b.next_at, &b.id)));
        due.truncate(limit);
        Ok(due)
    }

    async fn update_delivery(&self, d: &Delivery) -> Result<bool> {
        let mut st = self.state();
        let Some(stored) = st.accounts.deliveries.get_mut(&d.id) else {
            return Ok(false);
        };
        stored.attempts = d.attempts;
        stored.state = d.state;
        stored.next_at = d.next_at;
        stored.last_status = d.last_status;
        stored.last_error.clone_from(&d.last_error);
        stored.updated_at = d.updated_at;
        Ok(true)
    }

    async fn deliveries(&self, notifier_id: Uuid, limit: usize) -> Result<Vec<Delivery>> {
        let mut of: Vec<Delivery> = self
            .state()
            .accounts
            .deliveries
            .values()
            .filter(|d| d.notifier_id == notifier_id)
            .cloned()
            .collect();
        of.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));
        of.truncate(limit);
        Ok(of)
    }
}
