//! The time range of the overview and of a key's charts: a preset (1 h, 24 h, 7 d, 30 d)
//! or a custom `from`/`to`, always in the URL.

use std::collections::HashMap;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use keyvault_core::{KeyId, StatsQuery};

/// The presets, as they appear in `?range=`.
pub(crate) const PRESETS: [(&str, i64); 4] =
    [("1h", 1), ("24h", 24), ("7d", 24 * 7), ("30d", 24 * 30)];

/// A chosen range.
#[derive(Debug, Clone)]
pub(crate) struct Range {
    /// The preset, when one was chosen (`None`: custom).
    pub(crate) preset: Option<&'static str>,
    pub(crate) from: DateTime<Utc>,
    pub(crate) to: DateTime<Utc>,
    /// The message key of what was wrong with the asked range (the default is shown).
    pub(crate) error: Option<&'static str>,
}

impl Range {
    /// The last `hours` up to the end of the current minute: both ends on whole minutes, so
    /// the statistics come from rollups alone. Raw events are read only for the partial
    /// minutes at a range's ends, and at a high ingest rate the minute in progress holds
    /// hundreds of thousands of them (the soak's 12,500 calls a second made the overview's
    /// query take over a second); its rollup already counts every event written so far, and
    /// none lies ahead of now yet.
    fn preset(name: &'static str, hours: i64, now: DateTime<Utc>) -> Self {
        let minute = TimeDelta::minutes(1);
        let to = now
            .duration_trunc(minute)
            .map_or(now, |m| if m == now { m } else { m + minute });
        Self {
            preset: Some(name),
            from: to - TimeDelta::hours(hours),
            to,
            error: None,
        }
    }

    /// The range a query string asks for; a bad one falls back to 24 h and says why.
    pub(crate) fn from_query(q: &HashMap<String, String>, now: DateTime<Utc>) -> Self {
        let default = || Self::preset("24h", 24, now);
        if let (Some(f), Some(t)) = (q.get("from"), q.get("to"))
            && !(f.is_empty() && t.is_empty())
        {
            // The custom form's `datetime-local` values are local times; its script adds
            // the browser's offset (`tz`, minutes behind UTC as JavaScript counts them),
            // and without it they are taken as UTC.
            let tz = tz_offset(q.get("tz").map(String::as_str));
            let parse = |s: &str| local_time(s, tz);
            let (Some(from), Some(to)) = (parse(f), parse(t)) else {
                return Self {
                    error: Some("range.error_format"),
                    ..default()
                };
            };
            let custom = Self {
                preset: None,
                from,
                to,
                error: None,
            };
            if custom.query(None).validate().is_err() {
                return Self {
                    error: Some("range.error_span"),
                    ..default()
                };
            }
            return custom;
        }
        match q.get("range").map(String::as_str) {
            None | Some("") => default(),
            Some(r) => PRESETS.iter().find(|(name, _)| *name == r).map_or_else(
                || Self {
                    error: Some("range.error_preset"),
                    ..default()
                },
                |(name, hours)| Self::preset(name, *hours, now),
            ),
        }
    }

    /// The statistics query of this range.
    pub(crate) fn query(&self, key_id: Option<KeyId>) -> StatsQuery {
        StatsQuery {
            from: self.from,
            to: self.to,
            key_id,
            provider: None,
            granularity: None,
        }
    }

    /// The query string that names this range again.
    pub(crate) fn query_string(&self) -> String {
        match self.preset {
            Some(p) => format!("range={p}"),
            None => format!(
                "from={}&to={}",
                urlencode(&self.from.to_rfc3339()),
                urlencode(&self.to.to_rfc3339())
            ),
        }
    }
}

/// Percent-encodes what a query value may not hold as it is.
pub(crate) fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The browser's offset a form sends (`tz`: minutes behind UTC, as JavaScript's
/// `getTimezoneOffset` counts them); without one, or a wild one, 0.
pub(crate) fn tz_offset(tz: Option<&str>) -> i64 {
    tz.and_then(|t| t.trim().parse::<i64>().ok())
        .filter(|t| t.abs() <= 24 * 60)
        .unwrap_or(0)
}

/// A time a form sends: RFC 3339, or a `datetime-local` value in the browser's time zone
/// (`tz` as [`tz_offset`] reads it).
pub(crate) fn local_time(s: &str, tz: i64) -> Option<DateTime<Utc>> {
    let s = s.trim();
    if let Ok(d) = DateTime::parse_from_rfc3339(s) {
        return Some(d.with_timezone(&Utc));
    }
    ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S"]
        .iter()
        .find_map(|f| chrono::NaiveDateTime::parse_from_str(s, f).ok())
        .and_then(|n| n.and_utc().checked_add_signed(TimeDelta::minutes(tz)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect()
    }

    #[test]
    fn presets_custom_ranges_and_bad_ones() {
        let now = Utc::now();
        let r = Range::from_query(&q(&[("range", "7d")]), now);
        assert_eq!((r.preset, r.to - r.from), (Some("7d"), TimeDelta::days(7)));
        // Presets end at the end of the current minute: whole minutes at both ends.
        assert!(r.to >= now && r.to - now < TimeDelta::minutes(1));
        assert_eq!((r.from.timestamp() % 60, r.to.timestamp() % 60), (0, 0));
        assert_eq!(r.to.timestamp_subsec_nanos(), 0);
        let on = "2026-01-01T10:00:00Z".parse().unwrap();
        assert_eq!(Range::from_query(&q(&[("range", "1h")]), on).to, on);
        let r = Range::from_query(&q(&[]), now);
        assert_eq!(r.preset, Some("24h"));
        let r = Range::from_query(&q(&[("range", "2y")]), now);
        assert_eq!(
            (r.preset, r.error),
            (Some("24h"), Some("range.error_preset"))
        );
        let r = Range::from_query(
            &q(&[
                ("from", "2026-01-01T00:00:00Z"),
                ("to", "2026-01-02T00:00:00+08:00"),
            ]),
            now,
        );
        assert_eq!((r.preset, r.error), (None, None));
        assert_eq!(r.to - r.from, TimeDelta::hours(16));
        assert!(
            r.query_string()
                .starts_with("from=2026-01-01T00%3A00%3A00%2B00%3A00&to=")
        );
        let r = Range::from_query(
            &q(&[
                ("from", "2026-01-02T00:00:00Z"),
                ("to", "2026-01-01T00:00:00Z"),
            ]),
            now,
        );
        assert_eq!(r.error, Some("range.error_span"));
        let r = Range::from_query(
            &q(&[
                ("from", "2026-01-01T08:00"),
                ("to", "2026-01-01T09:30"),
                ("tz", "-480"),
            ]),
            now,
        );
        assert_eq!(r.from.to_rfc3339(), "2026-01-01T00:00:00+00:00");
        assert_eq!(r.to - r.from, TimeDelta::minutes(90));
        let r = Range::from_query(&q(&[("from", "yesterday"), ("to", "now")]), now);
        assert_eq!(r.error, Some("range.error_format"));
    }
}
