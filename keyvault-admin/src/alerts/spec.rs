//! The kinds of alert rule and their params (CONTRACT §7), read strictly: every field of
//! every kind is checked for its type and bounds, unknown fields are refused, and each
//! refusal names the field (`params.window`).

use std::time::Duration;

use keyvault_core::{Error as CoreError, HumanDuration, Outcome};
use serde_json::{Map, Value};

/// The shortest and longest window a rule may have.
const MIN_WINDOW: Duration = Duration::from_secs(1);
const MAX_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// The kinds, in the contract's order.
pub(crate) const KINDS: [&str; 8] = [
    "credits_low",
    "expiring",
    "error_rate",
    "latency_p95",
    "traffic_spike",
    "rejections",
    "invalid_keys",
    "new_network",
];

/// A rule's condition, its params read and checked.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Spec {
    /// Credits below a share of the refill amount (of the starting balance without one).
    CreditsLowPercent(f64),
    /// Credits below a number.
    CreditsLow(u64),
    Expiring {
        within: Duration,
    },
    ErrorRate {
        above: f64,
        window: Duration,
        min_calls: u64,
    },
    LatencyP95 {
        above_ms: f64,
        window: Duration,
        min_calls: u64,
    },
    TrafficSpike {
        factor: f64,
        window: Duration,
        min_calls: u64,
    },
    Rejections {
        codes: Vec<Outcome>,
        above: u64,
        window: Duration,
    },
    InvalidKeys {
        above: u64,
        window: Duration,
    },
    NewNetwork {
        v4_prefix: u8,
        v6_prefix: u8,
    },
}

fn bad(field: &str, message: impl Into<String>) -> CoreError {
    CoreError::invalid(format!("params.{field}"), message)
}

/// Reads the fields of one kind's params, each once.
struct Params<'a> {
    map: &'a Map<String, Value>,
    kind: &'static str,
    allowed: &'static [&'static str],
}

impl<'a> Params<'a> {
    fn new(
        params: &'a Value,
        kind: &'static str,
        allowed: &'static [&'static str],
    ) -> Result<Self, CoreError> {
        let Some(map) = params.as_object() else {
            return Err(CoreError::invalid(
                "params",
                format!("must be an object with {}", allowed.join(", ")),
            ));
        };
        if let Some(unknown) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(bad(
                unknown,
                format!("is not a param of {kind} (it takes {})", allowed.join(", ")),
            ));
        }
        Ok(Self { map, kind, allowed })
    }

    fn get(&self, field: &'static str) -> Option<&'a Value> {
        debug_assert!(self.allowed.contains(&field));
        self.map.get(field).filter(|v| !v.is_null())
    }

    fn required(&self, field: &'static str) -> Result<&'a Value, CoreError> {
        self.get(field)
            .ok_or_else(|| bad(field, format!("is required for {}", self.kind)))
    }

    fn number(&self, field: &'static str, low: f64, high: f64) -> Result<f64, CoreError> {
        let v = self.required(field)?;
        let n = v
            .as_f64()
            .ok_or_else(|| bad(field, format!("must be a number from {low} to {high}")))?;
        if !(low..=high).contains(&n) {
            return Err(bad(field, format!("must be from {low} to {high}, not {n}")));
        }
        Ok(n)
    }

    fn whole(&self, field: &'static str, low: u64, high: u64) -> Result<u64, CoreError> {
        let v = self.required(field)?;
        let n = v.as_u64().ok_or_else(|| {
            bad(
                field,
                format!("must be a whole number from {low} to {high}"),
            )
        })?;
        if !(low..=high).contains(&n) {
            return Err(bad(field, format!("must be from {low} to {high}, not {n}")));
        }
        Ok(n)
    }

    fn min_calls(&self) -> Result<u64, CoreError> {
        match self.get("min_calls") {
            None => Ok(1),
            Some(_) => self.whole("min_calls", 1, 1_000_000_000),
        }
    }

    fn duration(
        &self,
        field: &'static str,
        low: Duration,
        high: Duration,
    ) -> Result<Duration, CoreError> {
        let v = self.required(field)?;
        let d = match v {
            Value::String(s) => HumanDuration::parse(s, &format!("params.{field}"))?.get(),
            Value::Number(n) => n.as_u64().map(Duration::from_secs).ok_or_else(|| {
                bad(
                    field,
                    "must be a duration like 30s, 5m or 1h (or whole seconds)",
                )
            })?,
            _ => {
                return Err(bad(
                    field,
                    "must be a duration like 30s, 5m or 1h (or whole seconds)",
                ));
            }
        };
        if d < low || d > high {
            return Err(bad(
                field,
                format!(
                    "must be from {} to {}",
                    HumanDuration::new(low),
                    HumanDuration::new(high)
                ),
            ));
        }
        Ok(d)
    }

    fn window(&self) -> Result<Duration, CoreError> {
        self.duration("window", MIN_WINDOW, MAX_WINDOW)
    }
}

impl Spec {
    /// Reads `params` for `kind`; an unknown kind names `kind`.
    pub(crate) fn parse(kind: &str, params: &Value) -> Result<Self, CoreError> {
        match kind {
            "credits_low" => {
                let p = Params::new(params, "credits_low", &["below_percent", "below"])?;
                match (p.get("below_percent"), p.get("below")) {
                    (Some(_), None) => Ok(Self::CreditsLowPercent(p.number(
                        "below_percent",
                        1.0,
                        100.0,
                    )?)),
                    (None, Some(_)) => Ok(Self::CreditsLow(p.whole(
                        "below",
                        1,
                        keyvault_core::MAX_CREDITS,
                    )?)),
                    (Some(_), Some(_)) => {
                        Err(bad("below", "give below_percent or below, not both"))
                    }
                    (None, None) => Err(bad("below_percent", "is required (or below)")),
                }
            }
            "expiring" => {
                let p = Params::new(params, "expiring", &["within"])?;
                Ok(Self::Expiring {
                    within: p.duration("within", MIN_WINDOW, Duration::from_secs(366 * 86_400))?,
                })
            }
            "error_rate" => {
                let p = Params::new(params, "error_rate", &["above", "window", "min_calls"])?;
                Ok(Self::ErrorRate {
                    above: p.number("above", 0.0, 1.0)?,
                    window: p.window()?,
                    min_calls: p.min_calls()?,
                })
            }
            "latency_p95" => {
                let p = Params::new(params, "latency_p95", &["above_ms", "window", "min_calls"])?;
                Ok(Self::LatencyP95 {
                    above_ms: p.number("above_ms", 0.0, 3_600_000.0)?,
                    window: p.window()?,
                    min_calls: p.min_calls()?,
                })
            }
            "traffic_spike" => {
                let p = Params::new(params, "traffic_spike", &["factor", "window", "min_calls"])?;
                let factor = p.number("factor", 0.0, 1e6)?;
                if factor <= 1.0 {
                    return Err(bad("factor", format!("must be more than 1, not {factor}")));
                }
                Ok(Self::TrafficSpike {
                    factor,
                    window: p.window()?,
                    min_calls: p.min_calls()?,
                })
            }
            "rejections" => {
                let p = Params::new(params, "rejections", &["codes", "above", "window"])?;
                let codes = match p.required("codes")? {
                    Value::Array(items) if !items.is_empty() => items
                        .iter()
                        .enumerate()
                        .map(|(i, c)| {
                            c.as_str()
                                .and_then(outcome)
                                .filter(|o| *o != Outcome::Valid)
                                .ok_or_else(|| {
                                    bad(
                                        &format!("codes[{i}]"),
                                        "must be a rejection code (NOT_FOUND, DISABLED, EXPIRED, \
                                         FORBIDDEN, INSUFFICIENT_PERMISSIONS, RATE_LIMITED, \
                                         USAGE_EXCEEDED, MISSING)",
                                    )
                                })
                        })
                        .collect::<Result<Vec<_>, _>>()?,
                    _ => return Err(bad("codes", "must be a non-empty list of rejection codes")),
                };
                Ok(Self::Rejections {
                    codes,
                    above: p.whole("above", 0, 1_000_000_000)?,
                    window: p.window()?,
                })
            }
            "invalid_keys" => {
                let p = Params::new(params, "invalid_keys", &["above", "window"])?;
                Ok(Self::InvalidKeys {
                    above: p.whole("above", 0, 1_000_000_000)?,
                    window: p.window()?,
                })
            }
            "new_network" => {
                let p = Params::new(params, "new_network", &["v4_prefix", "v6_prefix"])?;
                let v4 = match p.get("v4_prefix") {
                    None => 24,
                    Some(_) => p.whole("v4_prefix", 0, 32)?,
                };
                let v6 = match p.get("v6_prefix") {
                    None => 48,
                    Some(_) => p.whole("v6_prefix", 0, 128)?,
                };
                Ok(Self::NewNetwork {
                    v4_prefix: v4 as u8,
                    v6_prefix: v6 as u8,
                })
            }
            other => Err(CoreError::invalid(
                "kind",
                format!("{other:?} is not a rule kind ({})", KINDS.join(", ")),
            )),
        }
    }
}

/// An outcome code as the API writes it (`RATE_LIMITED`).
pub(crate) fn outcome(code: &str) -> Option<Outcome> {
    serde_json::from_value(Value::String(code.to_owned())).ok()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn field_of(kind: &str, params: Value) -> String {
        match Spec::parse(kind, &params).unwrap_err() {
            CoreError::Invalid(e) => e.field,
            other => panic!("{other}"),
        }
    }

    #[test]
    fn every_kind_reads_its_params() {
        let ok = [
            ("credits_low", json!({"below_percent": 10})),
            ("credits_low", json!({"below": 5})),
            ("expiring", json!({"within": "7d"})),
            (
                "error_rate",
                json!({"above": 0.1, "window": "5m", "min_calls": 20}),
            ),
            ("latency_p95", json!({"above_ms": 250, "window": 300})),
            (
                "traffic_spike",
                json!({"factor": 3, "window": "1h", "min_calls": 100}),
            ),
            (
                "rejections",
                json!({"codes": ["RATE_LIMITED"], "above": 10, "window": "1m"}),
            ),
            ("invalid_keys", json!({"above": 50, "window": "10m"})),
            ("new_network", json!({})),
        ];
        for (kind, params) in ok {
            Spec::parse(kind, &params).unwrap_or_else(|e| panic!("{kind} {params}: {e}"));
        }
        assert_eq!(
            Spec::parse("new_network", &json!({"v4_prefix": 16})).unwrap(),
            Spec::NewNetwork {
                v4_prefix: 16,
                v6_prefix: 48
            }
        );
    }

    #[test]
    fn bad_params_name_their_field() {
        let cases = [
            ("nope", json!({}), "kind"),
            ("error_rate", json!([]), "params"),
            ("credits_low", json!({}), "params.below_percent"),
            (
                "credits_low",
                json!({"below_percent": 0}),
                "params.below_percent",
            ),
            (
                "credits_low",
                json!({"below_percent": 101}),
                "params.below_percent",
            ),
            ("credits_low", json!({"below": -1}), "params.below"),
            ("expiring", json!({"within": "soon"}), "params.within"),
            (
                "error_rate",
                json!({"above": 2, "window": "5m"}),
                "params.above",
            ),
            ("error_rate", json!({"above": 0.5}), "params.window"),
            (
                "error_rate",
                json!({"above": 0.5, "window": "25h"}),
                "params.window",
            ),
            (
                "error_rate",
                json!({"above": 0.5, "window": 0}),
                "params.window",
            ),
            (
                "error_rate",
                json!({"above": 0.5, "window": "5m", "min_calls": "x"}),
                "params.min_calls",
            ),
            (
                "error_rate",
                json!({"above": 0.5, "window": "5m", "extra": 1}),
                "params.extra",
            ),
            (
                "latency_p95",
                json!({"above_ms": "fast", "window": "5m"}),
                "params.above_ms",
            ),
            (
                "traffic_spike",
                json!({"factor": 1, "window": "5m"}),
                "params.factor",
            ),
            (
                "rejections",
                json!({"codes": [], "above": 1, "window": "1m"}),
                "params.codes",
            ),
            (
                "rejections",
                json!({"codes": ["VALID"], "above": 1, "window": "1m"}),
                "params.codes[0]",
            ),
            (
                "rejections",
                json!({"codes": ["RATE_LIMITED", "bogus"], "above": 1, "window": "1m"}),
                "params.codes[1]",
            ),
            (
                "invalid_keys",
                json!({"above": 1.5, "window": "1m"}),
                "params.above",
            ),
            ("new_network", json!({"v4_prefix": 33}), "params.v4_prefix"),
            ("new_network", json!({"v6_prefix": 129}), "params.v6_prefix"),
        ];
        for (kind, params, field) in cases {
            assert_eq!(field_of(kind, params.clone()), field, "{kind} {params}");
        }
    }
}
