//! Durations as CONTRACT §3 writes them: `<n>ms|s|m|h|d` (`90s`, `15m`, `24h`, `30d`).

use std::{fmt, str::FromStr, time::Duration};

use crate::error::InvalidInput;

/// A duration written as `<n>ms|s|m|h|d`. Serialises back to the same form.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct HumanDuration(Duration);

/// The longest duration accepted anywhere (100 years): beyond it date arithmetic overflows.
const MAX_MS: u64 = 100 * 365 * 86_400_000;

impl HumanDuration {
    /// Wraps a duration.
    pub const fn new(d: Duration) -> Self {
        Self(d)
    }

    /// The duration.
    pub const fn get(self) -> Duration {
        self.0
    }

    /// As a chrono delta (saturating; values are bounded by parsing anyway).
    pub fn as_delta(self) -> chrono::TimeDelta {
        chrono::TimeDelta::from_std(self.0).unwrap_or(chrono::TimeDelta::MAX)
    }

    /// Parses `<n>ms|s|m|h|d`; `field` names the input in the error.
    pub fn parse(text: &str, field: &str) -> Result<Self, InvalidInput> {
        let bad = || {
            InvalidInput::new(
                field,
                format!("{text:?} is not a duration like 90s, 15m, 24h or 30d"),
            )
        };
        let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let (digits, unit) = text.split_at(split);
        // The cap keeps `n` within u64 before the bound check; leading zeros add nothing to
        // the value, so they do not count (`0000000000000001s` is 1 s, as the grammar says).
        if digits.is_empty() || digits.trim_start_matches('0').len() > 15 {
            return Err(bad());
        }
        let n: u64 = digits.parse().map_err(|_| bad())?;
        let ms_per = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(bad()),
        };
        let ms = n
            .checked_mul(ms_per)
            .filter(|&ms| ms <= MAX_MS)
            .ok_or_else(|| InvalidInput::new(field, "must be at most 100 years"))?;
        Ok(Self(Duration::from_millis(ms)))
    }
}

impl FromStr for HumanDuration {
    type Err = InvalidInput;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s, "duration")
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        for (unit, per) in [
            ("d", 86_400_000),
            ("h", 3_600_000),
            ("m", 60_000),
            ("s", 1_000),
        ] {
            if ms != 0 && ms.is_multiple_of(per) {
                return write!(f, "{}{unit}", ms / per);
            }
        }
        write!(f, "{ms}ms")
    }
}

impl fmt::Debug for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl serde::Serialize for HumanDuration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s, "duration").map_err(|e| serde::de::Error::custom(e.message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit_and_prints_it_back() {
        for (text, ms) in [
            ("90s", 90_000),
            ("15m", 900_000),
            ("24h", 86_400_000),
            ("30d", 2_592_000_000),
            ("250ms", 250),
            ("0s", 0),
        ] {
            let d = HumanDuration::parse(text, "grace").unwrap();
            assert_eq!(d.get().as_millis(), ms, "{text}");
        }
        assert_eq!(HumanDuration::parse("90s", "x").unwrap().to_string(), "90s");
        assert_eq!(HumanDuration::parse("120s", "x").unwrap().to_string(), "2m");
        assert_eq!(
            HumanDuration::parse("1500ms", "x").unwrap().to_string(),
            "1500ms"
        );
    }

    #[test]
    fn leading_zeros_do_not_count_towards_the_digit_cap() {
        // Found by the grammar property (tests/properties/parsers.rs): 16 digits of which
        // only zeros lead were refused as "not a duration".
        assert_eq!(
            HumanDuration::parse("0000000000000000ms", "x")
                .unwrap()
                .get(),
            Duration::ZERO
        );
        let one = HumanDuration::parse(&format!("{}1s", "0".repeat(40)), "x").unwrap();
        assert_eq!(one.get(), Duration::from_secs(1));
        assert!(HumanDuration::parse("1000000000000000ms", "x").is_err());
    }

    #[test]
    fn refuses_bad_text_naming_the_field() {
        for bad in [
            "",
            "s",
            "10",
            "10w",
            "-5s",
            "1.5h",
            " 5s",
            "5 s",
            "99999999999999999d",
        ] {
            let e = HumanDuration::parse(bad, "grace").unwrap_err();
            assert_eq!(e.field, "grace", "{bad}");
        }
    }
}
