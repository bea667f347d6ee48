//! The key bodies of `POST /v1/keys` and `PATCH /v1/keys/{id}` as they travel: plain serde
//! structs that check nothing while deserialising, converted into keyvault-core's
//! [`NewKey`] and [`KeyPatch`] afterwards. A value serde cannot read is named by
//! `serde_path_to_error`'s path; everything the conversion refuses is named here, by its
//! whole path (`ratelimits[1].period_ms`, `credits.refill.amount`, `ip_allowlist[2]`), so no
//! error message is ever parsed for a field name.
//!
//! Their derived schemas are the document's request schemas. Nested members a client must
//! give are `Option` here, checked after deserialising (serde would name the object, not the
//! member, for a missing one); their schemas still say they are required and not null.
//!
//! Statuses follow where a check lives: the shape of a value (a bound of a rate limit, a
//! duration, a prefix, a network) is a 400 `invalid_field` from here; the rules keyvault-core
//! applies to a whole key (credit bounds, the reserved prefix, a blank name, an expiry in
//! the past) are its 422s.

use chrono::{DateTime, Utc};
use keyvault_core::{
    Credits, FailMode, HumanDuration, InvalidInput, KeyPatch, NewKey, Prefix, RateLimit, Refill,
    RefillInterval, RotationPolicy, parse_allowlist,
};
use serde::{
    Deserialize, Deserializer,
    de::{self, Unexpected, Visitor},
};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::{
    extract::{Required, redact},
    shapes,
};
use crate::error::{Code, Problem};

/// `POST /v1/keys` (unknown fields are refused).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = NewKey)]
pub(crate) struct NewKeyBody {
    #[schema(schema_with = shapes::name)]
    name: String,
    /// `[a-z][a-z0-9_]{0,19}`, default `kv`; `kvt` is reserved for API tokens.
    #[schema(schema_with = shapes::prefix_or_null)]
    prefix: Option<String>,
    #[schema(min_length = 1, max_length = 200)]
    owner_id: Option<String>,
    /// Default true.
    enabled: Option<bool>,
    /// Must be in the future.
    #[schema(schema_with = shapes::date_time_or_null)]
    expires_at: Option<DateTime<Utc>>,
    /// Null or absent: unlimited.
    credits: Option<CreditsBody>,
    /// Each must admit a request; names unique.
    #[serde(default)]
    #[schema(max_items = 16)]
    ratelimits: Vec<RateLimitBody>,
    #[serde(default)]
    #[schema(schema_with = shapes::scopes)]
    scopes: Vec<String>,
    /// Empty: any address.
    #[serde(default)]
    #[schema(schema_with = shapes::allowlist)]
    ip_allowlist: Vec<String>,
    /// Any JSON object, at most 16 KiB.
    #[serde(default)]
    #[schema(value_type = Object)]
    metadata: Map<String, Value>,
    rotation: Option<RotationBody>,
}

impl Required for NewKeyBody {
    const REQUIRED: &'static [&'static str] = &["name"];
}

/// `PATCH /v1/keys/{id}`: each field given replaces the stored one whole. `null` clears
/// `expires_at` (never expires), `credits` (unlimited) and `rotation` (none), and empties
/// `ratelimits`, `scopes`, `ip_allowlist` and `metadata`; for `name` and `enabled` it is
/// refused.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = KeyPatch)]
pub(crate) struct KeyPatchBody {
    #[serde(default, deserialize_with = "present")]
    #[schema(schema_with = shapes::name)]
    name: Option<Option<String>>,
    /// `null` clears the owner.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, min_length = 1, max_length = 200)]
    owner_id: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = bool)]
    enabled: Option<Option<bool>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(schema_with = shapes::date_time_or_null)]
    expires_at: Option<Option<DateTime<Utc>>>,
    /// The balance is set to `remaining`.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<CreditsBody>)]
    credits: Option<Option<CreditsBody>>,
    /// A changed limit starts full.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Vec<RateLimitBody>>, max_items = 16)]
    ratelimits: Option<Option<Vec<RateLimitBody>>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(schema_with = shapes::scopes_or_null)]
    scopes: Option<Option<Vec<String>>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(schema_with = shapes::allowlist_or_null)]
    ip_allowlist: Option<Option<Vec<String>>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Object>)]
    metadata: Option<Option<Map<String, Value>>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<RotationBody>)]
    rotation: Option<Option<RotationBody>>,
}

// An empty PATCH is a valid request that changes nothing.
impl Required for KeyPatchBody {}

/// A present field: `Some(None)` for `null`, `Some(Some(v))` for a value (an absent one is
/// the `default`, `None`).
pub(crate) fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// A whole number ≥ 0 as JSON Schema reads `integer`: `5` and `5.0` alike (serde's own
/// integers refuse the second). `null` is `None`; the bounds are checked by whoever reads it.
pub(crate) fn whole<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    struct Whole;
    impl<'de> Visitor<'de> for Whole {
        type Value = Option<u64>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a whole number, at least 0")
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(v))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            u64::try_from(v)
                .map(Some)
                .map_err(|_| E::invalid_value(Unexpected::Signed(v), &self))
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
            // 2⁶⁴ is exact as an f64; anything below it with no fraction is a u64.
            if v.fract() == 0.0 && (0.0..18_446_744_073_709_551_616.0).contains(&v) {
                Ok(Some(v as u64))
            } else {
                Err(E::invalid_value(Unexpected::Float(v), &self))
            }
        }
    }
    d.deserialize_any(Whole)
}

/// Credits: the balance to start from and an optional refill.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = Credits)]
pub(crate) struct CreditsBody {
    #[serde(default, deserialize_with = "whole")]
    #[schema(value_type = u64, required = true, minimum = 0, maximum = 9007199254740991_i64)]
    remaining: Option<u64>,
    refill: Option<RefillBody>,
}

/// A refill: the balance is set to `amount` at the start of each interval (UTC).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = Refill)]
pub(crate) struct RefillBody {
    #[schema(value_type = IntervalBody, required = true)]
    interval: Option<IntervalBody>,
    #[serde(default, deserialize_with = "whole")]
    #[schema(value_type = u64, required = true, minimum = 0, maximum = 9007199254740991_i64)]
    amount: Option<u64>,
}

/// How often a refill comes: at 00:00 UTC every day, or on the 1st of every month.
#[derive(Debug, Clone, Copy, Deserialize, serde::Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[schema(as = RefillInterval)]
pub(crate) enum IntervalBody {
    Daily,
    Monthly,
}

impl From<IntervalBody> for RefillInterval {
    fn from(i: IntervalBody) -> Self {
        match i {
            IntervalBody::Daily => RefillInterval::Daily,
            IntervalBody::Monthly => RefillInterval::Monthly,
        }
    }
}

impl From<RefillInterval> for IntervalBody {
    fn from(i: RefillInterval) -> Self {
        match i {
            RefillInterval::Daily => IntervalBody::Daily,
            RefillInterval::Monthly => IntervalBody::Monthly,
        }
    }
}

/// A named token bucket: at most `limit` tokens, refilled at `limit` per `period_ms`, and
/// at most a million tokens a second (`limit ≤ period_ms × 1000`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = RateLimit)]
pub(crate) struct RateLimitBody {
    #[schema(schema_with = shapes::limit_name, required = true)]
    name: Option<String>,
    #[serde(default, deserialize_with = "whole")]
    #[schema(value_type = u64, required = true, minimum = 1, maximum = 1000000000)]
    limit: Option<u64>,
    #[serde(default, deserialize_with = "whole")]
    #[schema(value_type = u64, required = true, minimum = 1, maximum = 31536000000_i64)]
    period_ms: Option<u64>,
    /// With Redis unreachable: `local` (default) admits by an in-process limiter of
    /// ⌈limit ÷ `KEYVAULT_INSTANCES`⌉, `open` admits, `closed` answers 503. Always present in
    /// answers.
    #[schema(value_type = Option<FailModeName>)]
    fail_mode: Option<String>,
}

/// What a rate limit answers while Redis is unreachable.
#[derive(ToSchema)]
#[schema(as = FailMode, rename_all = "lowercase")]
#[allow(dead_code)]
pub(crate) enum FailModeName {
    Local,
    Open,
    Closed,
}

/// Automatic rotation: a new key every `every` (at least `1s`), the old one valid for
/// `grace` (default `24h`) after.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = RotationPolicy)]
pub(crate) struct RotationBody {
    #[schema(schema_with = shapes::duration, required = true)]
    every: Option<String>,
    #[schema(schema_with = shapes::duration_or_null)]
    grace: Option<String>,
}

/// A field the conversion refused: a 400 naming it.
fn refused(e: InvalidInput) -> Problem {
    Code::InvalidField
        .problem(redact(&e.message))
        .field(e.field)
}

fn required(field: String) -> Problem {
    Code::InvalidField.problem("is required").field(field)
}

fn not_null(field: &str) -> Problem {
    Code::InvalidField.problem("must not be null").field(field)
}

impl CreditsBody {
    fn into_core(self) -> Result<Credits, Problem> {
        let remaining = self
            .remaining
            .ok_or_else(|| required("credits.remaining".into()))?;
        let refill = self
            .refill
            .map(|r| {
                let interval = r
                    .interval
                    .ok_or_else(|| required("credits.refill.interval".into()))?;
                let amount = r
                    .amount
                    .ok_or_else(|| required("credits.refill.amount".into()))?;
                Ok::<_, Problem>(Refill {
                    interval: interval.into(),
                    amount,
                })
            })
            .transpose()?;
        Ok(Credits { remaining, refill })
    }
}

fn ratelimits(items: Vec<RateLimitBody>) -> Result<Vec<RateLimit>, Problem> {
    items
        .into_iter()
        .enumerate()
        .map(|(i, l)| {
            let at = |f: &str| format!("ratelimits[{i}].{f}");
            let name = l.name.ok_or_else(|| required(at("name")))?;
            let limit = l.limit.ok_or_else(|| required(at("limit")))?;
            let period_ms = l.period_ms.ok_or_else(|| required(at("period_ms")))?;
            let mode = match l.fail_mode.as_deref() {
                None => FailMode::Local,
                Some(m) => m
                    .parse::<FailMode>()
                    .map_err(|e| refused(e.within(&format!("ratelimits[{i}]"))))?,
            };
            RateLimit::new(name, limit, period_ms)
                .map(|l| l.with_fail_mode(mode))
                .map_err(|e| refused(e.within(&format!("ratelimits[{i}]"))))
        })
        .collect()
}

impl RotationBody {
    fn into_core(self) -> Result<RotationPolicy, Problem> {
        let every = self
            .every
            .ok_or_else(|| required("rotation.every".into()))?;
        let every = HumanDuration::parse(&every, "rotation.every").map_err(refused)?;
        let grace = match self.grace {
            Some(g) => HumanDuration::parse(&g, "rotation.grace").map_err(refused)?,
            None => HumanDuration::new(keyvault_core::DEFAULT_GRACE),
        };
        Ok(RotationPolicy { every, grace })
    }
}

fn prefix(text: &str) -> Result<Prefix, Problem> {
    // The reserved `kvt` passes here: keyvault-core refuses it for keys (a 422).
    Prefix::any(text).map_err(refused)
}

impl NewKeyBody {
    /// The key to create, every field's shape checked and named.
    pub(crate) fn into_core(self) -> Result<NewKey, Problem> {
        Ok(NewKey {
            name: self.name,
            prefix: self.prefix.as_deref().map(prefix).transpose()?,
            owner_id: self.owner_id,
            enabled: self.enabled,
            expires_at: self.expires_at,
            credits: self.credits.map(CreditsBody::into_core).transpose()?,
            ratelimits: ratelimits(self.ratelimits)?,
            scopes: self.scopes,
            ip_allowlist: parse_allowlist(&self.ip_allowlist).map_err(refused)?,
            metadata: self.metadata,
            rotation: self.rotation.map(RotationBody::into_core).transpose()?,
        })
    }
}

impl KeyPatchBody {
    /// The change, every field's shape checked and named.
    pub(crate) fn into_core(self) -> Result<KeyPatch, Problem> {
        let name = match self.name {
            Some(None) => return Err(not_null("name")),
            other => other.flatten(),
        };
        let enabled = match self.enabled {
            Some(None) => return Err(not_null("enabled")),
            other => other.flatten(),
        };
        Ok(KeyPatch {
            name,
            owner_id: self.owner_id,
            enabled,
            expires_at: self.expires_at,
            credits: self
                .credits
                .map(|c| c.map(CreditsBody::into_core).transpose())
                .transpose()?,
            ratelimits: self
                .ratelimits
                .map(|l| ratelimits(l.unwrap_or_default()))
                .transpose()?,
            scopes: self.scopes.map(Option::unwrap_or_default),
            ip_allowlist: self
                .ip_allowlist
                .map(|n| parse_allowlist(&n.unwrap_or_default()).map_err(refused))
                .transpose()?,
            metadata: self.metadata.map(Option::unwrap_or_default),
            rotation: self
                .rotation
                .map(|r| r.map(RotationBody::into_core).transpose())
                .transpose()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::extract::parse_json;

    fn new_key(body: &str) -> Result<NewKey, Problem> {
        parse_json::<NewKeyBody>(body.as_bytes(), NewKeyBody::REQUIRED)?.into_core()
    }

    fn patch(body: &str) -> Result<KeyPatch, Problem> {
        parse_json::<KeyPatchBody>(body.as_bytes(), &[])?.into_core()
    }

    fn field(r: Result<impl std::fmt::Debug, Problem>) -> (String, String) {
        let p = r.unwrap_err();
        assert_eq!(p.code(), "invalid_field", "{p:?}");
        (
            p.field_path().unwrap_or_default().to_owned(),
            p.detail_text().unwrap_or_default().to_owned(),
        )
    }

    #[test]
    fn every_refused_member_is_named_by_its_whole_path() {
        let cases = [
            (
                r#"{"name":"a","ratelimits":[{"name":"m","limit":0,"period_ms":5}]}"#,
                "ratelimits[0].limit",
            ),
            (
                r#"{"name":"a","ratelimits":[{"name":"m","limit":1,"period_ms":5},{"name":"n","limit":1}]}"#,
                "ratelimits[1].period_ms",
            ),
            (
                r#"{"name":"a","ratelimits":[{"name":"m","limit":2000001,"period_ms":2}]}"#,
                "ratelimits[0].limit",
            ),
            (
                r#"{"name":"a","ratelimits":[{"name":"","limit":1,"period_ms":2}]}"#,
                "ratelimits[0].name",
            ),
            (
                r#"{"name":"a","ratelimits":[{"name":"m","limit":null,"period_ms":2}]}"#,
                "ratelimits[0].limit",
            ),
            (
                r#"{"name":"a","credits":{"refill":{"interval":"daily","amount":1}}}"#,
                "credits.remaining",
            ),
            (
                r#"{"name":"a","credits":{"remaining":1,"refill":{"interval":"daily"}}}"#,
                "credits.refill.amount",
            ),
            (
                r#"{"name":"a","credits":{"remaining":1,"refill":{"interval":"hourly","amount":1}}}"#,
                "credits.refill.interval",
            ),
            (
                r#"{"name":"a","ip_allowlist":["::1","10.0.0.0/8","nope"]}"#,
                "ip_allowlist[2]",
            ),
            (
                r#"{"name":"a","rotation":{"grace":"1h"}}"#,
                "rotation.every",
            ),
            (
                r#"{"name":"a","rotation":{"every":"soon"}}"#,
                "rotation.every",
            ),
            (
                r#"{"name":"a","rotation":{"every":"1d","grace":"x"}}"#,
                "rotation.grace",
            ),
            (r#"{"name":"a","prefix":"Bad"}"#, "prefix"),
            (r#"{"name":"a","nmae":1}"#, "nmae"),
            (
                r#"{"name":"a","ratelimits":[{"name":"m","limit":1,"period_ms":1,"x":1}]}"#,
                "ratelimits[0].x",
            ),
        ];
        for (body, path) in cases {
            let (f, detail) = field(new_key(body));
            assert_eq!(f, path, "{body}");
            // The member is in the field, not repeated at the start of the detail.
            let member = path.rsplit('.').next().unwrap();
            assert!(!detail.starts_with(&format!("{member}:")), "{detail}");
        }
    }

    #[test]
    fn whole_numbers_may_be_written_with_a_zero_fraction() {
        let k = new_key(
            r#"{"name":"a","credits":{"remaining":5.0},"ratelimits":[{"name":"m","limit":1e2,"period_ms":60000}]}"#,
        )
        .unwrap();
        assert_eq!(k.credits.unwrap().remaining, 5);
        assert_eq!(k.ratelimits[0].limit(), 100);
        for bad in ["1.5", "-1", "-0.5", "1e30", "\"5\"", "true"] {
            let body = format!(r#"{{"name":"a","credits":{{"remaining":{bad}}}}}"#);
            assert_eq!(field(new_key(&body)).0, "credits.remaining", "{bad}");
        }
    }

    #[test]
    fn a_patch_tells_null_from_absent() {
        let p = patch(
            r#"{"expires_at":null,"credits":null,"rotation":null,"ratelimits":null,"scopes":null,"ip_allowlist":null,"metadata":null}"#,
        )
        .unwrap();
        assert_eq!(p.expires_at, Some(None));
        assert_eq!(p.credits, Some(None));
        assert_eq!(p.rotation, Some(None));
        assert_eq!(p.ratelimits, Some(vec![]));
        assert_eq!(p.scopes, Some(vec![]));
        assert_eq!(p.ip_allowlist, Some(vec![]));
        assert_eq!(p.metadata, Some(Map::new()));
        assert_eq!(p.name, None);
        let p = patch("{}").unwrap();
        assert!(p.is_empty());
        assert_eq!(field(patch(r#"{"name":null}"#)).0, "name");
        assert_eq!(field(patch(r#"{"enabled":null}"#)).0, "enabled");
        assert_eq!(
            field(patch(r#"{"ratelimits":[{"name":"m","limit":1}]}"#)).0,
            "ratelimits[0].period_ms"
        );
    }

    #[test]
    fn secrets_in_refused_values_are_not_echoed() {
        let key = keyvault_core::ApiKey::generate(&Prefix::default());
        let body = format!(r#"{{"name":"a","ip_allowlist":["{}"]}}"#, key.expose());
        let (f, detail) = field(new_key(&body));
        assert_eq!(f, "ip_allowlist[0]");
        assert!(!detail.contains(key.expose()), "{detail}");
    }
}
