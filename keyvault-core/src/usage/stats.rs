//! What statistics are asked for ([`StatsQuery`]), what they answer ([`StatsOverview`]), and
//! the one place an answer is put together ([`OverviewBuilder`]).

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

use super::histogram::{LatencyHistogram, Percentiles};
use crate::{error::InvalidInput, model::KeyId};

/// A statistics query.
#[derive(Debug, Clone)]
pub struct StatsQuery {
    /// Start (inclusive).
    pub from: DateTime<Utc>,
    /// End (exclusive).
    pub to: DateTime<Utc>,
    /// Only this key.
    pub key_id: Option<KeyId>,
    /// Only this provider.
    pub provider: Option<String>,
    /// The time series' step; None: chosen from the range ([`StatsQuery::step`]).
    pub granularity: Option<Granularity>,
}

/// A time series' step, as `GET /v1/stats/overview?granularity=` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Granularity {
    Minute,
    Hour,
    Day,
}

impl Granularity {
    /// `minute`, `hour` or `day`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Minute => "minute",
            Self::Hour => "hour",
            Self::Day => "day",
        }
    }

    /// The granularity named by [`Granularity::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "minute" => Some(Self::Minute),
            "hour" => Some(Self::Hour),
            "day" => Some(Self::Day),
            _ => None,
        }
    }

    /// Its step.
    pub fn step(self) -> TimeDelta {
        match self {
            Self::Minute => TimeDelta::minutes(1),
            Self::Hour => TimeDelta::hours(1),
            Self::Day => TimeDelta::days(1),
        }
    }
}

/// The most points a time series may have.
pub(crate) const MAX_POINTS: i64 = 50_000;

impl StatsQuery {
    /// The last 24 hours.
    pub fn last_24h() -> Self {
        let to = Utc::now();
        Self {
            from: to - TimeDelta::hours(24),
            to,
            key_id: None,
            provider: None,
            granularity: None,
        }
    }

    /// Checks that `from` is before `to` and the range is at most 400 days.
    pub fn validate(&self) -> Result<(), InvalidInput> {
        if self.from >= self.to {
            return Err(InvalidInput::new("from", "must be before to"));
        }
        if self.to - self.from > TimeDelta::days(400) {
            return Err(InvalidInput::new(
                "from",
                "the range must be at most 400 days",
            ));
        }
        if let Some(g) = self.granularity {
            let points = (self.to - self.from).num_seconds() / g.step().num_seconds();
            if points > MAX_POINTS {
                return Err(InvalidInput::new(
                    "granularity",
                    format!(
                        "{} steps over this range give {points} points; at most {MAX_POINTS}",
                        g.as_str()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The time-series step: the granularity asked for, else the smallest of 1 m, 5 m, 15 m,
    /// 1 h, 6 h, 1 d giving ≤ 300 points.
    pub fn step(&self) -> TimeDelta {
        if let Some(g) = self.granularity {
            return g.step();
        }
        let span = self.to - self.from;
        [1, 5, 15, 60, 360, 1_440]
            .into_iter()
            .map(TimeDelta::minutes)
            .find(|s| span.num_seconds() / s.num_seconds().max(1) <= 300)
            .unwrap_or(TimeDelta::days(1))
    }

    /// The start of the step that holds `ts`.
    pub fn bucket_of(&self, ts: DateTime<Utc>) -> DateTime<Utc> {
        step_start(ts, self.step())
    }
}

/// The start of the step of length `step` (counted from the Unix epoch) that holds `ts`; `ts`
/// itself for a step of zero.
fn step_start(ts: DateTime<Utc>, step: TimeDelta) -> DateTime<Utc> {
    if step <= TimeDelta::zero() {
        return ts;
    }
    ts.duration_trunc(step).unwrap_or(ts)
}

/// Calls and success rate of one provider.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProviderStats {
    /// The provider label (`"unknown"` when none was set).
    pub provider: String,
    /// Calls.
    pub calls: u64,
    /// Fraction of successful calls.
    pub success_rate: Option<f64>,
}

/// One point of the time series.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimePoint {
    /// Start of the step.
    pub ts: DateTime<Utc>,
    /// Calls.
    pub calls: u64,
    /// Calls that were not successful.
    pub errors: u64,
}

/// CONTRACT §4's statistics overview.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct StatsOverview {
    /// Calls in the range.
    pub calls: u64,
    /// Fraction of calls with a status in 200–399 (None without calls).
    pub success_rate: Option<f64>,
    /// Latency percentiles.
    pub latency_ms: Percentiles,
    /// Per provider, most calls first.
    pub by_provider: Vec<ProviderStats>,
    /// Calls and errors per step.
    pub timeseries: Vec<TimePoint>,
}

/// Provider label for events that carry none.
pub const UNKNOWN_PROVIDER: &str = "unknown";

/// Assembles a [`StatsOverview`] from counted calls: every [`UsageQuery`](super::UsageQuery)
/// answers through it, whether it counts raw events, rollup cells or rows its database summed,
/// so that providers, success rates, steps and percentiles come out alike everywhere.
///
/// ```
/// # use chrono::{TimeDelta, TimeZone, Utc};
/// # use keyvault_core::{OverviewBuilder, StatsQuery, UNKNOWN_PROVIDER};
/// let from = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
/// let q = StatsQuery { from, to: from + TimeDelta::hours(24), key_id: None, provider: None, granularity: None };
/// let mut b = OverviewBuilder::new(&q); // 5-minute steps
/// b.add("openai", from + TimeDelta::minutes(1), 3, 2);
/// b.add(None, from + TimeDelta::minutes(4), 1, 1); // the same step
/// b.latency().record(1_500);
/// let o = b.finish();
/// assert_eq!((o.calls, o.success_rate), (4, Some(0.75)));
/// assert_eq!(o.by_provider[0].provider, "openai");
/// assert_eq!(o.by_provider[1].provider, UNKNOWN_PROVIDER);
/// assert_eq!((o.timeseries[0].ts, o.timeseries[0].errors), (from, 1));
/// assert!(o.latency_ms.p50.is_some());
/// ```
#[derive(Debug, Clone, Default)]
pub struct OverviewBuilder {
    /// The time series' step; zero (the default) takes the times added as steps' starts.
    step: TimeDelta,
    calls: u64,
    ok: u64,
    latency: LatencyHistogram,
    providers: HashMap<String, (u64, u64)>,
    series: BTreeMap<DateTime<Utc>, (u64, u64)>,
}

impl OverviewBuilder {
    /// An empty overview whose time series has the query's [step](StatsQuery::step).
    pub fn new(query: &StatsQuery) -> Self {
        Self {
            step: query.step(),
            ..Self::default()
        }
    }

    /// Counts `calls` calls (`ok` of them successful) of a provider ([`UNKNOWN_PROVIDER`] for
    /// none) in the step that holds `at`. Adding at the start of a step (as a database that
    /// already grouped per step returns it) is the same as adding anywhere inside it.
    pub fn add<'p>(
        &mut self,
        provider: impl Into<Option<&'p str>>,
        at: DateTime<Utc>,
        calls: u64,
        ok: u64,
    ) {
        let provider = provider.into().unwrap_or(UNKNOWN_PROVIDER);
        let ok = ok.min(calls);
        self.calls += calls;
        self.ok += ok;
        match self.providers.get_mut(provider) {
            Some(p) => {
                p.0 += calls;
                p.1 += ok;
            }
            None => {
                self.providers.insert(provider.to_owned(), (calls, ok));
            }
        }
        let s = self.series.entry(step_start(at, self.step)).or_default();
        s.0 += calls;
        s.1 += calls - ok;
    }

    /// The latency histogram the calls are added to (record raw latencies, merge rollups').
    pub fn latency(&mut self) -> &mut LatencyHistogram {
        &mut self.latency
    }

    /// The overview: providers by most calls (then name), steps in time order.
    pub fn finish(self) -> StatsOverview {
        let mut by_provider: Vec<ProviderStats> = self
            .providers
            .into_iter()
            .map(|(provider, (calls, ok))| ProviderStats {
                provider,
                calls,
                success_rate: success_rate(ok, calls),
            })
            .collect();
        by_provider.sort_by(|a, b| b.calls.cmp(&a.calls).then(a.provider.cmp(&b.provider)));
        StatsOverview {
            calls: self.calls,
            success_rate: success_rate(self.ok, self.calls),
            latency_ms: self.latency.percentiles(),
            by_provider,
            timeseries: self
                .series
                .into_iter()
                .map(|(ts, (calls, errors))| TimePoint { ts, calls, errors })
                .collect(),
        }
    }
}

/// A fraction, or None for no calls.
pub fn success_rate(ok: u64, calls: u64) -> Option<f64> {
    (calls > 0).then(|| ok as f64 / calls as f64)
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn a_granularity_asked_for_is_the_step_within_the_points_allowed() {
        let to = Utc::now();
        let q = |days: i64, g: Granularity| StatsQuery {
            from: to - TimeDelta::days(days),
            to,
            key_id: None,
            provider: None,
            granularity: Some(g),
        };
        assert_eq!(q(30, Granularity::Minute).step(), TimeDelta::minutes(1));
        assert_eq!(q(30, Granularity::Hour).step(), TimeDelta::hours(1));
        assert_eq!(q(30, Granularity::Day).step(), TimeDelta::days(1));
        assert!(q(30, Granularity::Minute).validate().is_ok());
        let e = q(60, Granularity::Minute).validate().unwrap_err();
        assert_eq!(e.field, "granularity");
        assert!(q(400, Granularity::Hour).validate().is_ok());
        assert_eq!(Granularity::parse("hour"), Some(Granularity::Hour));
        assert_eq!(Granularity::parse("week"), None);
    }

    #[test]
    fn steps_keep_the_series_short() {
        let to = Utc::now();
        let q = |h| StatsQuery {
            from: to - TimeDelta::hours(h),
            to,
            key_id: None,
            provider: None,
            granularity: None,
        };
        assert_eq!(q(1).step(), TimeDelta::minutes(1));
        assert_eq!(q(24).step(), TimeDelta::minutes(5));
        assert_eq!(q(24 * 30).step(), TimeDelta::hours(6));
        assert!(q(0).validate().is_err());
    }

    fn day_query() -> StatsQuery {
        let from = Utc.with_ymd_and_hms(2026, 3, 1, 0, 0, 0).unwrap();
        StatsQuery {
            from,
            to: from + TimeDelta::hours(24),
            key_id: None,
            provider: None,
            granularity: None,
        }
    }

    /// Providers come out by most calls, ties by name; no provider is `unknown`; steps are
    /// in time order with their errors; rates are fractions of the counted calls.
    #[test]
    fn the_overview_orders_providers_and_steps() {
        let q = day_query();
        let at = |m: i64| q.from + TimeDelta::minutes(m);
        let mut b = OverviewBuilder::new(&q);
        b.add("b", at(12), 2, 1);
        b.add("a", at(11), 2, 2);
        b.add(None, at(0), 5, 5);
        b.add("c", at(3), 1, 0);
        let o = b.finish();
        let providers: Vec<(&str, u64, Option<f64>)> = o
            .by_provider
            .iter()
            .map(|p| (p.provider.as_str(), p.calls, p.success_rate))
            .collect();
        assert_eq!(
            providers,
            [
                (UNKNOWN_PROVIDER, 5, Some(1.0)),
                ("a", 2, Some(1.0)),
                ("b", 2, Some(0.5)),
                ("c", 1, Some(0.0)),
            ]
        );
        assert_eq!(
            o.timeseries,
            [
                TimePoint {
                    ts: at(0),
                    calls: 6,
                    errors: 1
                },
                TimePoint {
                    ts: at(10),
                    calls: 4,
                    errors: 1
                },
            ]
        );
        assert_eq!((o.calls, o.success_rate), (10, Some(0.8)));
        assert_eq!(o.latency_ms, Percentiles::default());
    }

    /// A database that grouped per step hands in steps' starts, raw events hand in their own
    /// times: both land in the same step. A default builder takes times as they come.
    #[test]
    fn times_fall_into_their_step() {
        let q = day_query();
        let mut grouped = OverviewBuilder::new(&q);
        let mut raw = OverviewBuilder::new(&q);
        grouped.add("p", q.from + TimeDelta::minutes(5), 3, 3);
        for s in [300, 301, 599] {
            raw.add("p", q.from + TimeDelta::seconds(s), 1, 1);
        }
        assert_eq!(grouped.finish(), raw.finish());
        let mut given = OverviewBuilder::default();
        given.add("p", q.from + TimeDelta::seconds(301), 1, 1);
        assert_eq!(
            given.finish().timeseries[0].ts,
            q.from + TimeDelta::seconds(301)
        );
    }

    /// More successes than calls (a corrupt row) count as all successful, never as negative
    /// errors; nothing counted answers nothing.
    #[test]
    fn successes_are_capped_at_the_calls() {
        let q = day_query();
        let mut b = OverviewBuilder::new(&q);
        b.add("p", q.from, 2, 5);
        let o = b.finish();
        assert_eq!((o.success_rate, o.timeseries[0].errors), (Some(1.0), 0));
        assert_eq!(OverviewBuilder::new(&q).finish(), StatsOverview::default());
    }
}
