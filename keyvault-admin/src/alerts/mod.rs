//! Alerts (CONTRACT §7): rules evaluated every `KEYVAULT_ALERT_INTERVAL` on one instance at a
//! time (a lease in the database that lapses when its holder dies), one alert per rule and
//! subject while its condition holds, resolved once the condition has been false for a
//! whole interval.
//!
//! Evaluation reads the keys (credits, expiry), short windows of raw events through their
//! time index (error rate, latency, rejections, traffic) and the baselines kept in the
//! database; nothing scans the usage tables.

mod manage;
mod spec;

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    sync::Arc,
    time::Duration,
};

use chrono::{DateTime, TimeDelta, Utc};
use ipnet::IpNet;
use keyvault_core::{
    Alert, AlertRule, AlertState, Baseline, KeyId, KeyQuery, KeyRecord, KeyWindows, Sighting,
    every_page,
};
use uuid::Uuid;

pub use manage::{NewRule, RulePatch};
pub(crate) use spec::{KINDS, Spec};

use crate::{app::App, error::Result};

/// The setting that holds when the last evaluation ran (RFC 3339).
const LAST_EVALUATION: &str = "alerts.last_evaluation";

/// How many evaluations a still-holding alert with unchanged figures goes without a write.
const REFRESH_INTERVALS: u32 = 10;

/// The lease the evaluation runs under.
pub(crate) const LEASE: &str = "alert-evaluation";
/// The weight of the newest window in a traffic baseline.
const BASELINE_WEIGHT: f64 = 0.3;
/// Windows a key needs before its traffic has a baseline.
const BASELINE_WINDOWS: u32 = 3;
/// Windows folded into baselines at most per evaluation (after a long stop, older ones are
/// left out rather than read all at once).
const MAX_FOLDED: i64 = 12;
/// How long a `new_network` alert, an event, stays unacknowledged before it resolves.
const EVENT_LIFETIME: TimeDelta = TimeDelta::hours(24);

/// What an evaluation changed.
#[derive(Debug, Default, Clone)]
pub struct Transitions {
    /// Alerts that started firing.
    pub fired: Vec<Alert>,
    /// Alerts that resolved.
    pub resolved: Vec<Alert>,
}

/// A condition found holding for one subject.
#[derive(Debug)]
struct Hit {
    key_id: Option<KeyId>,
    ip: Option<String>,
    value: f64,
    threshold: f64,
    summary: String,
}

impl Hit {
    fn subject(&self) -> String {
        Alert::subject_of(self.key_id, self.ip.as_deref())
    }
}

/// Runs one evaluation if this instance holds (or takes) the lease; None when another
/// instance holds it.
pub(crate) async fn evaluate_leased(
    app: &App,
    holder: &str,
    interval: Duration,
) -> Result<Option<Transitions>> {
    let now = Utc::now();
    let ttl = TimeDelta::from_std(interval * 2).unwrap_or(TimeDelta::minutes(1));
    if !app
        .backends
        .leases
        .try_lease(LEASE, holder, now, now + ttl)
        .await?
    {
        return Ok(None);
    }
    evaluate(app, now, interval).await.map(Some)
}

/// Evaluates every rule at `now` and stores what changed. `interval` is how often it runs:
/// an alert resolves once its condition has been false for that long.
pub(crate) async fn evaluate(
    app: &App,
    now: DateTime<Utc>,
    interval: Duration,
) -> Result<Transitions> {
    let store = &app.backends.alerts;
    let started = std::time::Instant::now();
    let rules = store.rules().await?;
    let mut open: HashMap<(Uuid, String), Alert> = store
        .open_alerts()
        .await?
        .into_iter()
        .map(|a| ((a.rule_id, a.subject()), a))
        .collect();
    // When the evaluation before this one ran: every open alert it did not write, it found
    // holding.
    let previous = app
        .backends
        .settings
        .setting(LAST_EVALUATION)
        .await?
        .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
        .map(|t| t.with_timezone(&Utc));
    // The credit and expiry rules read only the keys they can concern: those with credits,
    // and those expiring within the longest `within` of the expiry rules.
    let horizon = rules
        .iter()
        .filter(|r| r.enabled)
        .filter_map(|r| match Spec::parse(&r.kind, &r.params) {
            Ok(Spec::Expiring { within }) => Some(delta(within)),
            _ => None,
        })
        .max()
        .and_then(|w| now.checked_add_signed(w))
        .unwrap_or(now);
    let mut ctx = Context::new(app, now, interval, horizon);
    let refresh = TimeDelta::from_std(interval * REFRESH_INTERVALS).unwrap_or(TimeDelta::hours(1));
    let mut changed: Vec<Alert> = Vec::new();
    let mut out = Transitions::default();
    let live_rules: HashSet<Uuid> = rules.iter().filter(|r| r.enabled).map(|r| r.id).collect();
    for rule in rules.iter().filter(|r| r.enabled) {
        let spec = match Spec::parse(&rule.kind, &rule.params) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(rule = %rule.id, error = %e, "an alert rule cannot be read; skipped");
                continue;
            }
        };
        let hits = ctx.hits(rule, &spec).await?;
        let mut seen = HashSet::with_capacity(hits.len());
        for hit in hits {
            let subject = hit.subject();
            seen.insert(subject.clone());
            match open.remove(&(rule.id, subject)) {
                Some(mut a) => {
                    // A holding alert is written only when its figures move or it had gone
                    // quiet (and now and then, to keep `last_seen_at` near): with many open
                    // alerts the writes, not the checks, were the evaluation's cost.
                    // An `expiring` alert's seconds left count down by themselves
                    // (`Alert::value_at`): only a moved expiry moves them.
                    let value_moved = if a.kind == "expiring" {
                        (a.value_at(now) - hit.value).abs() > 1.0
                    } else {
                        a.value != hit.value
                    };
                    let moved = value_moved || a.threshold != hit.threshold;
                    if moved || a.quiet_since.is_some() || now - a.last_seen_at >= refresh {
                        a.value = hit.value;
                        a.threshold = hit.threshold;
                        a.last_seen_at = now;
                        a.quiet_since = None;
                        changed.push(a);
                    }
                }
                None => {
                    let a = Alert {
                        id: Uuid::now_v7(),
                        rule_id: rule.id,
                        kind: rule.kind.clone(),
                        key_id: hit.key_id,
                        ip: hit.ip,
                        state: AlertState::Firing,
                        value: hit.value,
                        threshold: hit.threshold,
                        summary: format!("{}: {}", rule.name, hit.summary),
                        started_at: now,
                        acknowledged_at: None,
                        resolved_at: None,
                        last_seen_at: now,
                        quiet_since: None,
                    };
                    out.fired.push(a.clone());
                    changed.push(a);
                }
            }
        }
    }
    // What is left open was not found holding this time.
    let quiet = TimeDelta::from_std(interval).unwrap_or(TimeDelta::seconds(30));
    for (_, mut a) in open {
        let lapsed = if a.kind == "new_network" {
            a.state == AlertState::Acknowledged || now - a.started_at >= EVENT_LIFETIME
        } else {
            if a.quiet_since.is_none() {
                // Unwritten holding alerts were seen by the evaluation before this one.
                if let Some(prev) = previous.filter(|&p| p > a.last_seen_at && p < now) {
                    a.value = a.value_at(prev);
                    a.last_seen_at = prev;
                }
            }
            !live_rules.contains(&a.rule_id) || now - a.last_seen_at >= quiet
        };
        if !lapsed && a.kind != "new_network" && a.quiet_since.is_none() {
            a.quiet_since = Some(now);
            changed.push(a);
            continue;
        }
        if lapsed {
            a.state = AlertState::Resolved;
            a.resolved_at = Some(now);
            out.resolved.push(a.clone());
            changed.push(a);
        }
    }
    // Each transition goes to the outbox once, with the alert: only this evaluation saw it
    // happen, and a failure stores neither.
    let events = out
        .fired
        .iter()
        .map(|a| ("alert.firing", a))
        .chain(out.resolved.iter().map(|a| ("alert.resolved", a)));
    let outbox = app.alert_outbox(events).await?;
    store.save_transitions(&changed, &outbox).await?;
    for (rule, baselines) in ctx.baselines {
        store.save_baselines(rule, &baselines).await?;
    }
    app.backends
        .settings
        .put_setting(LAST_EVALUATION, &now.to_rfc3339(), &[])
        .await?;
    metrics::histogram!("keyvault_alert_evaluation_seconds")
        .record(started.elapsed().as_secs_f64());
    metrics::gauge!("keyvault_alerts_firing").set(store.firing_count().await? as f64);
    for a in &out.fired {
        tracing::warn!(target: "keyvault::alerts", alert = %a.id, rule = %a.rule_id, kind = a.kind, summary = a.summary, "alert firing");
    }
    for a in &out.resolved {
        tracing::info!(target: "keyvault::alerts", alert = %a.id, rule = %a.rule_id, kind = a.kind, "alert resolved");
    }
    Ok(out)
}

/// A client IP and how many `NOT_FOUND` verifications came from it.
type IpCount = (String, u64);

/// What one evaluation has read so far, shared by its rules.
struct Context<'a> {
    app: &'a App,
    now: DateTime<Utc>,
    /// How often evaluations run.
    interval: Duration,
    /// The latest expiry an expiry rule looks at.
    horizon: DateTime<Utc>,
    /// The keys with credits or expiring by `horizon`.
    keys: Option<Vec<KeyRecord>>,
    owners: HashMap<String, HashSet<KeyId>>,
    windows: HashMap<(DateTime<Utc>, DateTime<Utc>), KeyWindows>,
    /// `NOT_FOUND` counts per client IP by window start and bound, shared by `invalid_keys`
    /// rules.
    not_found: HashMap<(DateTime<Utc>, u64), Vec<IpCount>>,
    /// The look-back's new sightings and their keys' earlier ones, shared by `new_network`
    /// rules.
    sightings: Option<Arc<(Vec<Sighting>, Vec<Sighting>)>>,
    /// Keys' credits left, read once per evaluation however many rules watch them.
    credits: HashMap<KeyId, Option<u64>>,
    baselines: Vec<(Uuid, Vec<Baseline>)>,
}

impl<'a> Context<'a> {
    fn new(app: &'a App, now: DateTime<Utc>, interval: Duration, horizon: DateTime<Utc>) -> Self {
        Self {
            app,
            now,
            interval,
            horizon,
            keys: None,
            owners: HashMap::new(),
            windows: HashMap::new(),
            not_found: HashMap::new(),
            sightings: None,
            credits: HashMap::new(),
            baselines: Vec::new(),
        }
    }

    /// The enabled keys with credits or expiring by the horizon, read once per evaluation
    /// (not every key: a database decodes only these).
    async fn keys(&mut self) -> Result<&[KeyRecord]> {
        if self.keys.is_none() {
            let store = &self.app.backends.store;
            self.keys = Some(store.watched_keys(self.horizon).await?);
        }
        Ok(self.keys.as_deref().unwrap_or_default())
    }

    /// Whether `key` is one the rule watches.
    async fn watched(&mut self, rule: &AlertRule, key: KeyId) -> Result<bool> {
        if rule.key_id.is_some_and(|k| k != key) {
            return Ok(false);
        }
        let Some(owner) = &rule.owner_id else {
            return Ok(true);
        };
        if !self.owners.contains_key(owner) {
            // The owner's keys through the owner index, once per evaluation.
            let store = &self.app.backends.store;
            let keys = every_page(
                |before| async move {
                    store
                        .list(&KeyQuery {
                            owner_id: Some(owner.clone()),
                            limit: 1_000,
                            before,
                            ..KeyQuery::default()
                        })
                        .await
                },
                |k: &KeyRecord| k.id,
            )
            .await?;
            let ids: HashSet<KeyId> = keys.iter().map(|k| k.id).collect();
            self.owners.insert(owner.clone(), ids);
        }
        Ok(self.owners.get(owner).is_some_and(|s| s.contains(&key)))
    }

    /// The keys' windows of `[from, to)`, read once per evaluation (only the rule's key when
    /// it names one).
    async fn window(
        &mut self,
        rule: &AlertRule,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<KeyWindows> {
        if let Some(k) = rule.key_id {
            if let Some(w) = self.windows.get(&(from, to)) {
                return Ok(w
                    .get(&k)
                    .map(|x| [(k, x.clone())].into())
                    .unwrap_or_default());
            }
            return Ok(self
                .app
                .backends
                .stats
                .key_windows(from, to, Some(k))
                .await?);
        }
        if let Some(w) = self.windows.get(&(from, to)) {
            return Ok(w.clone());
        }
        let w = self.app.backends.stats.key_windows(from, to, None).await?;
        self.windows.insert((from, to), w.clone());
        Ok(w)
    }

    async fn hits(&mut self, rule: &AlertRule, spec: &Spec) -> Result<Vec<Hit>> {
        let now = self.now;
        let mut hits = Vec::new();
        match spec {
            Spec::CreditsLow(_) | Spec::CreditsLowPercent(_) => {
                let keys: Vec<KeyRecord> = self
                    .keys()
                    .await?
                    .iter()
                    .filter(|k| k.enabled && k.credits.is_some())
                    .cloned()
                    .collect();
                for k in keys {
                    if !self.watched(rule, k.id).await? {
                        continue;
                    }
                    let Some(credits) = &k.credits else { continue };
                    let left = match self.credits.get(&k.id) {
                        Some(left) => *left,
                        None => {
                            let left = self.app.kv.credits_remaining(&k).await?;
                            self.credits.insert(k.id, left);
                            left
                        }
                    };
                    let Some(left) = left else { continue };
                    let threshold = match spec {
                        Spec::CreditsLow(n) => *n as f64,
                        Spec::CreditsLowPercent(p) => {
                            let base = credits
                                .refill
                                .as_ref()
                                .map_or(credits.remaining, |r| r.amount);
                            base as f64 * p / 100.0
                        }
                        _ => continue,
                    };
                    if (left as f64) < threshold {
                        hits.push(Hit {
                            key_id: Some(k.id),
                            ip: None,
                            value: left as f64,
                            threshold,
                            summary: format!(
                                "key {} has {left} credits left (below {threshold})",
                                k.name
                            ),
                        });
                    }
                }
            }
            Spec::Expiring { within } => {
                let within = TimeDelta::from_std(*within).unwrap_or(TimeDelta::MAX);
                let keys: Vec<KeyRecord> = self
                    .keys()
                    .await?
                    .iter()
                    .filter(|k| {
                        k.enabled && k.expires_at.is_some_and(|t| t > now && t - now <= within)
                    })
                    .cloned()
                    .collect();
                for k in keys {
                    if !self.watched(rule, k.id).await? {
                        continue;
                    }
                    let left = k.expires_at.map_or(0, |t| (t - now).num_seconds());
                    hits.push(Hit {
                        key_id: Some(k.id),
                        ip: None,
                        value: left as f64,
                        threshold: within.num_seconds() as f64,
                        summary: format!("key {} expires in {}", k.name, human_secs(left)),
                    });
                }
            }
            Spec::ErrorRate {
                above,
                window,
                min_calls,
            } => {
                let w = self.window(rule, now - delta(*window), now).await?;
                for (key, kw) in w {
                    if kw.calls < *min_calls || !self.watched(rule, key).await? {
                        continue;
                    }
                    let rate = kw.errors as f64 / kw.calls as f64;
                    if rate > *above {
                        hits.push(Hit {
                            key_id: Some(key),
                            ip: None,
                            value: rate,
                            threshold: *above,
                            summary: format!(
                                "key {key}: {:.1}% of {} calls failed in the last {}",
                                rate * 100.0,
                                kw.calls,
                                human(*window)
                            ),
                        });
                    }
                }
            }
            Spec::LatencyP95 {
                above_ms,
                window,
                min_calls,
            } => {
                let w = self.window(rule, now - delta(*window), now).await?;
                for (key, kw) in w {
                    if kw.calls < *min_calls || !self.watched(rule, key).await? {
                        continue;
                    }
                    let Some(p95) = kw.latency.quantile_ms(0.95) else {
                        continue;
                    };
                    if p95 > *above_ms {
                        hits.push(Hit {
                            key_id: Some(key),
                            ip: None,
                            value: p95,
                            threshold: *above_ms,
                            summary: format!(
                                "key {key}: p95 latency {p95:.1} ms over {} calls in the last {}",
                                kw.calls,
                                human(*window)
                            ),
                        });
                    }
                }
            }
            Spec::Rejections {
                codes,
                above,
                window,
            } => {
                let w = self.window(rule, now - delta(*window), now).await?;
                for (key, kw) in w {
                    let n: u64 = codes.iter().filter_map(|c| kw.rejected.get(c)).sum();
                    if n > *above && self.watched(rule, key).await? {
                        hits.push(Hit {
                            key_id: Some(key),
                            ip: None,
                            value: n as f64,
                            threshold: *above as f64,
                            summary: format!(
                                "key {key}: {n} verifications rejected in the last {}",
                                human(*window)
                            ),
                        });
                    }
                }
            }
            Spec::TrafficSpike {
                factor,
                window,
                min_calls,
            } => {
                hits = self.traffic(rule, *factor, *window, *min_calls).await?;
            }
            Spec::InvalidKeys { above, window } => {
                // Counted per minute: the window covers the minutes it touches.
                let from = floor_minute(now - delta(*window));
                if !self.not_found.contains_key(&(from, *above)) {
                    let signals = &self.app.backends.signals;
                    let counts = signals.not_found_by_ip(from, now, *above).await?;
                    self.not_found.insert((from, *above), counts);
                }
                let counts = self.not_found.get(&(from, *above)).into_iter().flatten();
                for (ip, n) in counts {
                    hits.push(Hit {
                        key_id: None,
                        value: *n as f64,
                        threshold: *above as f64,
                        summary: format!(
                            "{n} verifications of unknown keys from {ip} in the last {}",
                            human(*window)
                        ),
                        ip: Some(ip.clone()),
                    });
                }
            }
            Spec::NewNetwork {
                v4_prefix,
                v6_prefix,
            } => {
                hits = self.new_networks(rule, *v4_prefix, *v6_prefix).await?;
            }
        }
        Ok(hits)
    }

    /// `new_network`: keys first seen from an address whose network (at the rule's prefix)
    /// none of their sightings of the previous 30 days is in. A key's very first use is not
    /// a new network (it has none to compare with).
    async fn new_networks(&mut self, rule: &AlertRule, v4: u8, v6: u8) -> Result<Vec<Hit>> {
        let now = self.now;
        let lookback = delta(self.interval * 2).max(TimeDelta::minutes(2));
        if self.sightings.is_none() {
            let signals = &self.app.backends.signals;
            let fresh = signals.new_sightings(now - lookback, now).await?;
            let mut keys: Vec<KeyId> = fresh.iter().map(|s| s.key_id).collect();
            keys.sort_unstable();
            keys.dedup();
            let history = if keys.is_empty() {
                Vec::new()
            } else {
                signals
                    .sightings(&keys, now - lookback - TimeDelta::days(30))
                    .await?
            };
            self.sightings = Some(Arc::new((fresh, history)));
        }
        let shared = self.sightings.clone().unwrap_or_default();
        let (fresh, history) = &*shared;
        let fresh: Vec<&Sighting> = fresh
            .iter()
            .filter(|s| rule.key_id.is_none_or(|k| k == s.key_id))
            .collect();
        if fresh.is_empty() {
            return Ok(Vec::new());
        }
        let net = |ip: &str| -> Option<IpNet> {
            let ip: IpAddr = ip.parse().ok()?;
            let prefix = if ip.is_ipv4() { v4 } else { v6 };
            IpNet::new(ip, prefix).ok().map(|n| n.trunc())
        };
        // A sighting already alerted on (the alert may since be acknowledged or resolved) is
        // not an alert again while it stays in the look-back.
        let alerted: HashSet<(KeyId, String)> = self
            .app
            .backends
            .alerts
            .alerts(&keyvault_core::AlertQuery {
                rule_id: Some(rule.id),
                limit: 10_000,
                ..Default::default()
            })
            .await?
            .into_iter()
            .filter(|a| a.started_at >= now - lookback - lookback)
            .filter_map(|a| Some((a.key_id?, a.ip?)))
            .collect();
        let mut hits = Vec::new();
        let mut reported: HashSet<(KeyId, IpNet)> = HashSet::new();
        for s in fresh {
            if alerted.contains(&(s.key_id, s.ip.clone())) {
                continue;
            }
            let Some(n) = net(&s.ip) else { continue };
            let earlier: Vec<_> = history
                .iter()
                .filter(|o| {
                    o.key_id == s.key_id
                        && o.first_seen < s.first_seen
                        && o.last_seen >= s.first_seen - TimeDelta::days(30)
                })
                .collect();
            let known = earlier.iter().any(|o| net(&o.ip) == Some(n));
            if earlier.is_empty() || known || !reported.insert((s.key_id, n)) {
                continue;
            }
            if !self.watched(rule, s.key_id).await? {
                continue;
            }
            hits.push(Hit {
                key_id: Some(s.key_id),
                value: 0.0,
                threshold: 0.0,
                summary: format!("key {} used from a new network {n} ({})", s.key_id, s.ip),
                ip: Some(s.ip.clone()),
            });
        }
        Ok(hits)
    }

    /// `traffic_spike`: windows follow each other from the rule's creation; each completed
    /// window but the last is folded into the keys' baselines (kept in the database), and
    /// the last is compared with them.
    async fn traffic(
        &mut self,
        rule: &AlertRule,
        factor: f64,
        window: Duration,
        min_calls: u64,
    ) -> Result<Vec<Hit>> {
        let w = delta(window);
        let elapsed = self.now - rule.created_at;
        let done = elapsed.num_milliseconds() / w.num_milliseconds().max(1);
        if done < 1 {
            return Ok(Vec::new());
        }
        let start_of = |n: i64| rule.created_at + w * (n as i32);
        // The last completed window is [start_of(done - 1), start_of(done)).
        let last_start = start_of(done - 1);
        let stored = self.app.backends.alerts.baselines(rule.id).await?;
        let mut base: HashMap<KeyId, Baseline> =
            stored.into_iter().map(|b| (b.key_id, b)).collect();
        let through = base
            .values()
            .map(|b| b.through)
            .max()
            .unwrap_or(rule.created_at);
        let first = ((through - rule.created_at).num_milliseconds() / w.num_milliseconds().max(1))
            .max(done - 1 - MAX_FOLDED);
        let mut dirty = false;
        for n in first.max(0)..done - 1 {
            let (from, to) = (start_of(n), start_of(n + 1));
            let calls = self.window(rule, from, to).await?;
            for b in base.values_mut() {
                if b.through < to {
                    let c = calls.get(&b.key_id).map_or(0, |k| k.calls);
                    b.mean = BASELINE_WEIGHT * c as f64 + (1.0 - BASELINE_WEIGHT) * b.mean;
                    b.windows += 1;
                    b.through = to;
                }
            }
            for (key, kw) in &calls {
                base.entry(*key).or_insert(Baseline {
                    key_id: *key,
                    mean: kw.calls as f64,
                    windows: 1,
                    through: to,
                });
            }
            dirty = true;
        }
        let last = self.window(rule, last_start, start_of(done)).await?;
        let mut hits = Vec::new();
        for (key, kw) in last {
            let Some(b) = base.get(&key) else { continue };
            if b.windows < BASELINE_WINDOWS || kw.calls < min_calls {
                continue;
            }
            let threshold = factor * b.mean;
            if kw.calls as f64 > threshold && self.watched(rule, key).await? {
                hits.push(Hit {
                    key_id: Some(key),
                    ip: None,
                    value: kw.calls as f64,
                    threshold,
                    summary: format!(
                        "key {key}: {} calls in {}, {:.1}× its usual {:.1}",
                        kw.calls,
                        human(window),
                        kw.calls as f64 / b.mean.max(f64::MIN_POSITIVE),
                        b.mean
                    ),
                });
            }
        }
        if dirty {
            self.baselines.push((rule.id, base.into_values().collect()));
        }
        Ok(hits)
    }
}

fn delta(d: Duration) -> TimeDelta {
    TimeDelta::from_std(d).unwrap_or(TimeDelta::MAX)
}

fn human(d: Duration) -> String {
    keyvault_core::HumanDuration::new(d).to_string()
}

/// A time left as a person reads it: its two largest units (`2d 23h`, `5h 12m`, `40s`).
fn floor_minute(t: DateTime<Utc>) -> DateTime<Utc> {
    let us = t.timestamp_micros();
    DateTime::from_timestamp_micros(us.div_euclid(60_000_000) * 60_000_000).unwrap_or(t)
}

fn human_secs(s: i64) -> String {
    let s = s.max(0);
    let (d, h, m, sec) = (s / 86_400, s / 3_600 % 24, s / 60 % 60, s % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{sec}s"),
        (0, 0, _) => format!("{m}m {sec}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

#[cfg(test)]
mod tests {
    use super::human_secs;

    #[test]
    fn times_left_read_in_their_two_largest_units() {
        assert_eq!(human_secs(259_199), "2d 23h");
        assert_eq!(human_secs(3_600 * 5 + 60 * 12 + 7), "5h 12m");
        assert_eq!(human_secs(125), "2m 5s");
        assert_eq!(human_secs(40), "40s");
        assert_eq!(human_secs(-3), "0s");
    }
}
