//! The key record and its limits (CONTRACT §3), with the bounds that make bad values
//! unrepresentable once constructed.

use std::{fmt, net::IpAddr, str::FromStr};

use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Utc};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::{digest::KeyDigest, duration::HumanDuration, error::InvalidInput, key::Prefix};

/// The largest credit balance, refill amount or cost: 2⁵³−1, exact in every JSON reader.
pub const MAX_CREDITS: u64 = (1 << 53) - 1;
/// The largest rate-limit `limit`.
pub const MAX_LIMIT: u32 = 1_000_000_000;
/// The longest rate-limit period: a year.
pub const MAX_PERIOD_MS: u64 = 31_536_000_000;
/// Upper bounds that keep one key record small.
pub const MAX_NAME_LEN: usize = 200;
const MAX_SCOPES: usize = 100;
const MAX_SCOPE_LEN: usize = 128;
const MAX_CIDRS: usize = 100;
const MAX_RATELIMITS: usize = 16;
const MAX_METADATA_BYTES: usize = 16 * 1024;

/// A key's id: a UUIDv7, so ids sort by creation time.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct KeyId(Uuid);

impl KeyId {
    /// A new, time-ordered id.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    /// Wraps a UUID read from a store.
    pub const fn from_uuid(id: Uuid) -> Self {
        Self(id)
    }

    /// The UUID.
    pub const fn as_uuid(&self) -> &Uuid {
        &self.0
    }
}

impl Default for KeyId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl FromStr for KeyId {
    type Err = InvalidInput;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s)
            .map(Self)
            .map_err(|_| InvalidInput::new("id", "not a key id"))
    }
}

/// How often a credit balance is refilled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RefillInterval {
    /// At 00:00 UTC every day.
    Daily,
    /// At 00:00 UTC on the 1st of every month.
    Monthly,
}

impl RefillInterval {
    /// The start of the interval that contains `at`.
    pub fn start_of(self, at: DateTime<Utc>) -> DateTime<Utc> {
        let date = at.date_naive();
        let first = match self {
            RefillInterval::Daily => date,
            RefillInterval::Monthly => {
                NaiveDate::from_ymd_opt(date.year(), date.month(), 1).unwrap_or(date)
            }
        };
        Utc.from_utc_datetime(&first.and_time(chrono::NaiveTime::MIN))
    }

    /// The name used in JSON and in stores.
    pub fn as_str(self) -> &'static str {
        match self {
            RefillInterval::Daily => "daily",
            RefillInterval::Monthly => "monthly",
        }
    }
}

impl FromStr for RefillInterval {
    type Err = InvalidInput;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "daily" => Ok(Self::Daily),
            "monthly" => Ok(Self::Monthly),
            _ => Err(InvalidInput::new(
                "credits.refill.interval",
                "must be \"daily\" or \"monthly\"",
            )),
        }
    }
}

/// A refill: the balance is *set* to `amount` at the start of each interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Refill {
    /// Daily or monthly.
    pub interval: RefillInterval,
    /// The balance at the start of each interval.
    pub amount: u64,
}

impl Refill {
    /// Parses the text form `<interval>:<amount>` (`daily:100`, `monthly:5000`) that
    /// [`Display`](fmt::Display) prints: the CLI's `--refill`, and what credit stores keep
    /// beside a balance ([`Credits::refill_spec`]).
    pub fn parse_spec(spec: &str) -> Result<Self, InvalidInput> {
        let field = "refill";
        let (interval, amount) = spec
            .split_once(':')
            .ok_or_else(|| InvalidInput::new(field, "must look like daily:N or monthly:N"))?;
        let interval: RefillInterval = interval
            .parse()
            .map_err(|e: InvalidInput| InvalidInput::new(field, e.message))?;
        let amount: u64 = amount
            .parse()
            .map_err(|_| InvalidInput::new(field, "must be a whole number"))?;
        check_credit_amount(amount, field)?;
        Ok(Self { interval, amount })
    }
}

/// `daily:100`: the form [`Refill::parse_spec`] reads.
impl fmt::Display for Refill {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.interval.as_str(), self.amount)
    }
}

/// A key's credits: the balance to start from and an optional refill.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credits {
    /// The balance.
    pub remaining: u64,
    /// The refill, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refill: Option<Refill>,
}

impl Credits {
    /// A balance without refill.
    pub fn new(remaining: u64) -> Self {
        Self {
            remaining,
            refill: None,
        }
    }

    /// The refill's text form (`daily:100`), empty without a refill: what a credit store
    /// keeps beside a balance when it opens or replaces it. A refill is applied only for a
    /// caller whose spec is the stored one, so an instance still holding a key's previous
    /// configuration (for up to a second after a change) cannot apply the old refill to the
    /// new balance.
    pub fn refill_spec(&self) -> String {
        self.refill.map(|r| r.to_string()).unwrap_or_default()
    }

    /// Checks the bounds (0 to 2⁵³−1).
    pub fn validate(&self) -> Result<(), InvalidInput> {
        check_credit_amount(self.remaining, "credits.remaining")?;
        if let Some(r) = &self.refill {
            check_credit_amount(r.amount, "credits.refill.amount")?;
        }
        Ok(())
    }
}

/// Checks that a credit amount or cost is at most 2⁵³−1.
pub fn check_credit_amount(value: u64, field: &str) -> Result<(), InvalidInput> {
    if value > MAX_CREDITS {
        Err(InvalidInput::new(
            field,
            format!("must be at most {MAX_CREDITS}"),
        ))
    } else {
        Ok(())
    }
}

/// What a limit answers while its shared backend (Redis) is unreachable or too slow, and only
/// then (any other error is returned as it is). Stored on each rate limit (default `local`);
/// credits take theirs from the deployment (default `closed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailMode {
    /// Return an error: the middleware answers 503. Nothing is admitted.
    #[default]
    Closed,
    /// Admit without counting.
    Open,
    /// Count in this process instead: a rate limit of ⌈L/N⌉ for N instances; for credits,
    /// spend on the durable store directly.
    Local,
}

impl FailMode {
    /// The name used in configuration, JSON and metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            FailMode::Closed => "closed",
            FailMode::Open => "open",
            FailMode::Local => "local",
        }
    }
}

impl std::str::FromStr for FailMode {
    type Err = InvalidInput;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "closed" => Ok(FailMode::Closed),
            "open" => Ok(FailMode::Open),
            "local" => Ok(FailMode::Local),
            _ => Err(InvalidInput::new(
                "fail_mode",
                "must be \"closed\", \"open\" or \"local\"",
            )),
        }
    }
}

/// A named token-bucket rate limit: at most `limit` tokens, refilled continuously at `limit`
/// per `period_ms`. Fields are private: a constructed limit is always within bounds.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct RateLimit {
    name: String,
    limit: u32,
    period_ms: u64,
    fail_mode: FailMode,
}

impl RateLimit {
    /// Checks CONTRACT §3's bounds: `limit` 1–10⁹, `period_ms` 1–a year, at most a million
    /// tokens a second, a name of 1–64 characters.
    pub fn new(name: impl Into<String>, limit: u64, period_ms: u64) -> Result<Self, InvalidInput> {
        let name = name.into();
        if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
            return Err(InvalidInput::new(
                "name",
                "must be 1 to 64 characters without control characters",
            ));
        }
        if !(1..=u64::from(MAX_LIMIT)).contains(&limit) {
            return Err(InvalidInput::new(
                "limit",
                "must be between 1 and 1000000000",
            ));
        }
        if !(1..=MAX_PERIOD_MS).contains(&period_ms) {
            return Err(InvalidInput::new(
                "period_ms",
                "must be between 1 and 31536000000 (a year)",
            ));
        }
        if limit > period_ms * 1_000 {
            return Err(InvalidInput::new(
                "limit",
                "must be at most period_ms × 1000 (a million tokens a second)",
            ));
        }
        Ok(Self {
            name,
            limit: limit as u32,
            period_ms,
            fail_mode: FailMode::Local,
        })
    }

    /// The same limit with another fail mode (a new limit's is `local`).
    #[must_use]
    pub fn with_fail_mode(mut self, mode: FailMode) -> Self {
        self.fail_mode = mode;
        self
    }

    /// Parses the CLI form `<limit>/<duration>[:<fail mode>]` (`100/60s`, `5/1s:closed`),
    /// named after the period.
    pub fn parse_spec(spec: &str) -> Result<Self, InvalidInput> {
        let field = "rate-limit";
        let (spec, mode) = match spec.split_once(':') {
            Some((spec, mode)) => (
                spec,
                Some(mode.parse::<FailMode>().map_err(|e| e.within(field))?),
            ),
            None => (spec, None),
        };
        let (limit, period) = spec
            .split_once('/')
            .ok_or_else(|| InvalidInput::new(field, "must look like 100/60s or 100/60s:closed"))?;
        // Digits only: `u64::from_str` would also take a leading `+`, which the grammar (and
        // the duration beside it) refuses.
        let limit: u64 = Some(limit)
            .filter(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|l| l.parse().ok())
            .ok_or_else(|| InvalidInput::new(field, "the limit must be a whole number"))?;
        let period = HumanDuration::parse(period, field)?;
        let ms = u64::try_from(period.get().as_millis()).unwrap_or(u64::MAX);
        let limit = Self::new(period.to_string(), limit, ms).map_err(|e| e.within(field))?;
        Ok(limit.with_fail_mode(mode.unwrap_or(FailMode::Local)))
    }

    /// The limit's name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The bucket size.
    pub fn limit(&self) -> u32 {
        self.limit
    }
    /// The refill period in milliseconds.
    pub fn period_ms(&self) -> u64 {
        self.period_ms
    }
    /// What the limit answers while Redis is unreachable.
    pub fn fail_mode(&self) -> FailMode {
        self.fail_mode
    }
}

impl<'de> Deserialize<'de> for RateLimit {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Raw {
            name: String,
            limit: u64,
            period_ms: u64,
            #[serde(default = "local")]
            fail_mode: FailMode,
        }
        fn local() -> FailMode {
            FailMode::Local
        }
        let raw = Raw::deserialize(d)?;
        RateLimit::new(raw.name, raw.limit, raw.period_ms)
            .map(|l| l.with_fail_mode(raw.fail_mode))
            .map_err(serde::de::Error::custom)
    }
}

/// Automatic rotation: a new key every `every`, the old one valid for `grace` after.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotationPolicy {
    /// How often.
    pub every: HumanDuration,
    /// How long the old key keeps working.
    #[serde(default = "default_grace")]
    pub grace: HumanDuration,
}

fn default_grace() -> HumanDuration {
    HumanDuration::new(DEFAULT_GRACE)
}

/// The default grace after a rotation: 24 hours.
pub const DEFAULT_GRACE: std::time::Duration = std::time::Duration::from_secs(86_400);

impl RotationPolicy {
    /// Checks that `every` is at least a second (CONTRACT §3).
    pub fn validate(&self) -> Result<(), InvalidInput> {
        if self.every.get() < std::time::Duration::from_secs(1) {
            return Err(InvalidInput::new("rotation.every", "must be at least 1s"));
        }
        Ok(())
    }
}

/// A stored key. It never holds the plaintext, only its digest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// The key's id.
    pub id: KeyId,
    /// The id that names the key's credit balance and rate-limit buckets: the first key of its
    /// rotation lineage, so that a rotated key and its successor spend from one balance.
    pub quota_id: KeyId,
    /// A human name.
    pub name: String,
    /// Whoever the key belongs to (a user, a team, a tenant).
    pub owner_id: Option<String>,
    /// The key's prefix.
    pub prefix: Prefix,
    /// The display start: `prefix_` and four characters of the body.
    pub start: String,
    /// SHA-256 (or HMAC) of the key.
    #[serde(skip)]
    pub digest: KeyDigest,
    /// When created.
    pub created_at: DateTime<Utc>,
    /// When last changed.
    pub updated_at: DateTime<Utc>,
    /// Whether the key may be used.
    pub enabled: bool,
    /// When the key stops working.
    pub expires_at: Option<DateTime<Utc>>,
    /// Scopes granted.
    pub scopes: Vec<String>,
    /// Allowed caller networks; empty means any.
    pub ip_allowlist: Vec<IpNet>,
    /// Credits configuration (the live balance is in the credit store).
    pub credits: Option<Credits>,
    /// Named rate limits; all must admit a request.
    pub ratelimits: Vec<RateLimit>,
    /// When each of `ratelimits` was set by a change, in milliseconds since the Unix epoch,
    /// in the same order; 0 (or a missing entry) for a limit the key was created with. Part
    /// of each bucket's identity, so that a limit changed away and back again starts full
    /// (CONTRACT §3). Not shown by the API; stores keep it with the limits.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ratelimits_since: Vec<u64>,
    /// Free-form JSON object.
    pub metadata: Map<String, Value>,
    /// Automatic rotation policy.
    pub rotation: Option<RotationPolicy>,
    /// When automatic rotation is next due.
    pub next_rotation_at: Option<DateTime<Utc>>,
    /// The key this one replaced.
    pub rotated_from: Option<KeyId>,
    /// The key that replaced this one.
    pub superseded_by: Option<KeyId>,
    /// After a rotation: the end of this (old) key's grace.
    pub grace_until: Option<DateTime<Utc>>,
    /// Last time the key was used (updated in batches by usage sinks).
    pub last_used_at: Option<DateTime<Utc>>,
    /// Incremented by every change; stores refuse a write from a stale revision.
    pub revision: u64,
    /// What an automatic rotation seals this key's successor to (derived from the key at its
    /// creation); none for keys made before successor delivery existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seal_key: Option<crate::SealKey>,
    /// After an automatic rotation: the successor sealed for this (old) key's holder, or when
    /// it was claimed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub successor: Option<crate::Successor>,
}

impl Default for KeyDigest {
    fn default() -> Self {
        KeyDigest::from_bytes([0; 32])
    }
}

/// The rate limits as stores keep them: each limit's JSON object, with its `since` when it is
/// not 0 ([`KeyRecord::ratelimits_since`]).
pub fn stored_limits(limits: &[RateLimit], since: &[u64]) -> Value {
    Value::Array(
        limits
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let mut v = serde_json::to_value(l).unwrap_or(Value::Null);
                let since = since.get(i).copied().unwrap_or(0);
                if let (Value::Object(m), true) = (&mut v, since > 0) {
                    m.insert("since".into(), since.into());
                }
                v
            })
            .collect(),
    )
}

/// Reads what [`stored_limits`] wrote (or a plain list of limits, as stores held them
/// before): the limits and their `since` (empty when every one is 0).
pub fn limits_from_stored(v: Value) -> Result<(Vec<RateLimit>, Vec<u64>), String> {
    let Value::Array(items) = v else {
        return Err("not a list of rate limits".into());
    };
    let mut limits = Vec::with_capacity(items.len());
    let mut since = Vec::with_capacity(items.len());
    for mut item in items {
        let s = match &mut item {
            Value::Object(m) => match m.remove("since") {
                None => 0,
                Some(n) => n.as_u64().ok_or("a rate limit's since is not a count")?,
            },
            _ => 0,
        };
        limits.push(serde_json::from_value(item).map_err(|e| e.to_string())?);
        since.push(s);
    }
    if since.iter().all(|&s| s == 0) {
        since.clear();
    }
    Ok((limits, since))
}

impl KeyRecord {
    /// When the `i`-th rate limit was set (0: with the key).
    pub fn limit_since(&self, i: usize) -> u64 {
        self.ratelimits_since.get(i).copied().unwrap_or(0)
    }

    /// The moment the key stops verifying: the earlier of `expires_at` and the grace end.
    pub fn effective_expiry(&self) -> Option<DateTime<Utc>> {
        match (self.expires_at, self.grace_until) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether the key is past its expiry at `now`.
    pub fn is_expired(&self, now: DateTime<Utc>) -> bool {
        self.effective_expiry().is_some_and(|at| at <= now)
    }

    /// Whether `ip` may use the key (an empty allow-list admits anyone, even without an IP).
    pub fn admits_ip(&self, ip: Option<IpAddr>) -> bool {
        if self.ip_allowlist.is_empty() {
            return true;
        }
        // An IPv4 caller seen through an IPv6 socket (`::ffff:a.b.c.d`) is the IPv4 caller.
        ip.map(|ip| ip.to_canonical())
            .is_some_and(|ip| self.ip_allowlist.iter().any(|net| net.contains(&ip)))
    }

    /// Whether the key holds every scope in `required`.
    pub fn has_scopes<S: AsRef<str>>(&self, required: &[S]) -> bool {
        required
            .iter()
            .all(|r| self.scopes.iter().any(|s| s == r.as_ref()))
    }
}

/// Refuses U+0000 in `s`: PostgreSQL stores none in text or JSON, so no backend takes one
/// (a store that did could not be restored into another).
pub fn refuse_nul(field: impl FnOnce() -> String, s: &str) -> Result<(), InvalidInput> {
    if s.contains('\0') {
        return Err(InvalidInput::new(field(), "must not contain U+0000 (NUL)"));
    }
    Ok(())
}

/// Validates the parts shared by creation and updates.
pub(crate) fn validate_name(name: &str) -> Result<(), InvalidInput> {
    if name.trim().is_empty() || name.chars().count() > MAX_NAME_LEN {
        return Err(InvalidInput::new(
            "name",
            format!("must be 1 to {MAX_NAME_LEN} characters, not blank"),
        ));
    }
    refuse_nul(|| "name".into(), name)
}

pub(crate) fn validate_owner(owner: Option<&str>) -> Result<(), InvalidInput> {
    if let Some(o) = owner {
        if o.is_empty() || o.chars().count() > MAX_NAME_LEN {
            return Err(InvalidInput::new(
                "owner_id",
                format!("must be 1 to {MAX_NAME_LEN} characters"),
            ));
        }
        refuse_nul(|| "owner_id".into(), o)?;
    }
    Ok(())
}

pub(crate) fn validate_scopes(scopes: &[String]) -> Result<(), InvalidInput> {
    if scopes.len() > MAX_SCOPES {
        return Err(InvalidInput::new("scopes", format!("at most {MAX_SCOPES}")));
    }
    for (i, s) in scopes.iter().enumerate() {
        if s.is_empty() || s.chars().count() > MAX_SCOPE_LEN || s.chars().any(char::is_whitespace) {
            return Err(InvalidInput::new(
                format!("scopes[{i}]"),
                format!("must be 1 to {MAX_SCOPE_LEN} characters without spaces"),
            ));
        }
        refuse_nul(|| format!("scopes[{i}]"), s)?;
    }
    Ok(())
}

pub(crate) fn validate_ratelimits(limits: &[RateLimit]) -> Result<(), InvalidInput> {
    if limits.len() > MAX_RATELIMITS {
        return Err(InvalidInput::new(
            "ratelimits",
            format!("at most {MAX_RATELIMITS}"),
        ));
    }
    for (i, l) in limits.iter().enumerate() {
        if limits[..i].iter().any(|o| o.name == l.name) {
            return Err(InvalidInput::new(
                format!("ratelimits[{i}].name"),
                format!("duplicate name {:?}", l.name),
            ));
        }
    }
    Ok(())
}

pub(crate) fn validate_allowlist(nets: &[IpNet]) -> Result<(), InvalidInput> {
    if nets.len() > MAX_CIDRS {
        return Err(InvalidInput::new(
            "ip_allowlist",
            format!("at most {MAX_CIDRS} networks"),
        ));
    }
    Ok(())
}

pub(crate) fn validate_metadata(meta: &Map<String, Value>) -> Result<(), InvalidInput> {
    let size = serde_json::to_vec(meta)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if size > MAX_METADATA_BYTES {
        return Err(InvalidInput::new(
            "metadata",
            format!("must be at most {MAX_METADATA_BYTES} bytes of JSON"),
        ));
    }
    for (k, v) in meta {
        refuse_nul_in(&format!("metadata.{}", k.replace('\0', "\\0")), k, v)?;
    }
    Ok(())
}

/// [`refuse_nul`] over a JSON value's keys and strings, naming the first path that holds one.
fn refuse_nul_in(path: &str, key: &str, value: &Value) -> Result<(), InvalidInput> {
    refuse_nul(|| path.to_owned(), key)?;
    match value {
        Value::String(s) => refuse_nul(|| path.to_owned(), s),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, v)| refuse_nul_in(&format!("{path}[{i}]"), "", v)),
        Value::Object(map) => map.iter().try_for_each(|(k, v)| {
            refuse_nul_in(&format!("{path}.{}", k.replace('\0', "\\0")), k, v)
        }),
        _ => Ok(()),
    }
}

/// Metadata as every store gives it back: a float that is a whole number from 10¹⁶ up to the
/// 64-bit integers' bounds (which JSON writes with an exponent, `1e16`) becomes that integer,
/// as PostgreSQL's `jsonb` (which keeps numbers as decimals) returns it, so that SQLite and
/// PostgreSQL hold and answer the same metadata. Other numbers stay as given (`1.0` too).
pub(crate) fn normalize_metadata(mut meta: Map<String, Value>) -> Map<String, Value> {
    meta.values_mut().for_each(normalize_numbers);
    meta
}

fn normalize_numbers(v: &mut Value) {
    match v {
        Value::Number(n) => {
            if let Some(f) = n.as_f64().filter(|_| n.is_f64())
                && f.fract() == 0.0
                && f.abs() >= 1e16
            {
                // Exact: a whole f64 in these ranges is an integer of that type.
                if (-9_223_372_036_854_775_808.0..0.0).contains(&f) {
                    *v = Value::from(f as i64);
                } else if (0.0..18_446_744_073_709_551_616.0).contains(&f) {
                    *v = Value::from(f as u64);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(normalize_numbers),
        Value::Object(map) => map.values_mut().for_each(normalize_numbers),
        _ => {}
    }
}

/// Parses CIDRs (or bare addresses, taken as /32 or /128), naming the bad entry.
pub fn parse_allowlist<S: AsRef<str>>(items: &[S]) -> Result<Vec<IpNet>, InvalidInput> {
    items
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let s = s.as_ref();
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                .map(|n| n.trunc())
                .map_err(|_| {
                    InvalidInput::new(format!("ip_allowlist[{i}]"), format!("{s:?} is not a CIDR"))
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {

    #[test]
    fn rotation_may_be_as_often_as_every_second() {
        let policy = |every: &str| RotationPolicy {
            every: HumanDuration::parse(every, "every").unwrap(),
            grace: HumanDuration::new(DEFAULT_GRACE),
        };
        assert!(policy("1s").validate().is_ok());
        let e = policy("999ms").validate().unwrap_err();
        assert_eq!(e.field, "rotation.every");
    }

    #[test]
    fn scopes_are_bounded_in_characters_not_bytes() {
        let wide = "é".repeat(MAX_SCOPE_LEN);
        assert!(validate_scopes(&[wide]).is_ok());
        let e = validate_scopes(&["é".repeat(MAX_SCOPE_LEN + 1)]).unwrap_err();
        assert_eq!(e.field, "scopes[0]");
    }

    use super::*;

    #[test]
    fn rate_limit_bounds_are_enforced() {
        assert!(RateLimit::new("a", 1, 1).is_ok());
        assert!(RateLimit::new("a", 1000, 1).is_ok());
        assert!(RateLimit::new("a", 1_000_000_000, MAX_PERIOD_MS).is_ok());
        assert_eq!(RateLimit::new("a", 0, 10).unwrap_err().field, "limit");
        assert_eq!(RateLimit::new("a", 1001, 1).unwrap_err().field, "limit");
        assert_eq!(
            RateLimit::new("a", 1_000_000_001, MAX_PERIOD_MS)
                .unwrap_err()
                .field,
            "limit"
        );
        assert_eq!(RateLimit::new("a", 1, 0).unwrap_err().field, "period_ms");
        assert_eq!(
            RateLimit::new("a", 1, MAX_PERIOD_MS + 1).unwrap_err().field,
            "period_ms"
        );
        assert_eq!(RateLimit::new("", 1, 1).unwrap_err().field, "name");
        let e = serde_json::from_str::<RateLimit>(r#"{"name":"x","limit":0,"period_ms":5}"#);
        assert!(e.is_err());
        let e = serde_json::from_str::<RateLimit>(r#"{"name":"x","limit":1,"period_ms":5,"y":1}"#);
        assert!(e.is_err());
    }

    #[test]
    fn refill_specs_round_trip_and_name_the_field() {
        let r = Refill {
            interval: RefillInterval::Monthly,
            amount: MAX_CREDITS,
        };
        assert_eq!(r.to_string(), "monthly:9007199254740991");
        assert_eq!(Refill::parse_spec(&r.to_string()), Ok(r));
        assert_eq!(
            Credits {
                remaining: 3,
                refill: Some(Refill {
                    interval: RefillInterval::Daily,
                    amount: 100
                })
            }
            .refill_spec(),
            "daily:100"
        );
        assert_eq!(Credits::new(3).refill_spec(), "");
        for bad in [
            "hourly:5",
            "daily",
            "daily:-1",
            "daily:x",
            "daily:9007199254740992",
        ] {
            assert_eq!(
                Refill::parse_spec(bad).unwrap_err().field,
                "refill",
                "{bad}"
            );
        }
    }

    #[test]
    fn cli_rate_limit_specs_parse() {
        let l = RateLimit::parse_spec("100/60s").unwrap();
        assert_eq!((l.name(), l.limit(), l.period_ms()), ("1m", 100, 60_000));
        assert!(RateLimit::parse_spec("0/60s").is_err());
        assert!(RateLimit::parse_spec("100").is_err());
        assert!(RateLimit::parse_spec("x/1s").is_err());
        // Found by the grammar property (tests/properties/parsers.rs): a signed limit was
        // accepted because `u64::from_str` takes a leading `+`.
        assert_eq!(
            RateLimit::parse_spec("+5/1ms").unwrap_err().field,
            "rate-limit"
        );
        assert_eq!(RateLimit::parse_spec("0005/1s").unwrap().limit(), 5);
    }

    #[test]
    fn refill_intervals_start_at_utc_midnight_and_the_first() {
        let at = Utc.with_ymd_and_hms(2026, 3, 17, 13, 45, 0).unwrap();
        assert_eq!(
            RefillInterval::Daily.start_of(at),
            Utc.with_ymd_and_hms(2026, 3, 17, 0, 0, 0).unwrap()
        );
        assert_eq!(
            RefillInterval::Monthly.start_of(at),
            Utc.with_ymd_and_hms(2026, 3, 1, 0, 0, 0).unwrap()
        );
    }

    #[test]
    fn allowlists_parse_v4_v6_and_bare_addresses() {
        let nets = parse_allowlist(&["10.0.0.0/8", "2001:db8::/32", "192.168.1.7"]).unwrap();
        assert_eq!(nets.len(), 3);
        let e = parse_allowlist(&["10.0.0.0/8", "nope"]).unwrap_err();
        assert_eq!(e.field, "ip_allowlist[1]");
        assert!(parse_allowlist(&["10.0.0.0/33"]).is_err());
    }

    #[test]
    fn credits_above_two_to_the_53_are_refused() {
        assert!(Credits::new(MAX_CREDITS).validate().is_ok());
        assert_eq!(
            Credits::new(MAX_CREDITS + 1).validate().unwrap_err().field,
            "credits.remaining"
        );
    }
}
