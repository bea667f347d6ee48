//! How a store that keeps usage rolled up per minute, hour and day reads a statistics range:
//! which stretches its rollups answer and which only raw events can, and under which key id
//! the rollups over all keys are kept.

use chrono::{DateTime, TimeDelta, Utc};
use uuid::Uuid;

/// The `key_id` of the rollups that count every key together (a query without a key reads
/// them): the nil UUID, which no key has, since key ids are UUIDv7. Events without a key count
/// only there.
///
/// ```
/// # use keyvault_core::{ALL_KEYS_ROLLUP, KeyId};
/// assert!(ALL_KEYS_ROLLUP.is_nil());
/// assert_ne!(*KeyId::new().as_uuid(), ALL_KEYS_ROLLUP);
/// ```
pub const ALL_KEYS_ROLLUP: Uuid = Uuid::nil();

/// The stretch of time `[start, end)`, empty when `start >= end` (the spans of
/// [`RollupRanges`] never have `start > end`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Span {
    /// First instant (inclusive).
    pub start: DateTime<Utc>,
    /// End (exclusive).
    pub end: DateTime<Utc>,
}

impl Span {
    /// The empty span at `at`.
    fn at(at: DateTime<Utc>) -> Self {
        Self { start: at, end: at }
    }

    /// True when no instant lies in it.
    pub fn is_empty(&self) -> bool {
        self.start >= self.end
    }
}

/// A statistics range `[from, to)` cut into seven consecutive spans, at whole UTC minutes,
/// hours and days:
///
/// ```text
/// from                                                                                    to
///  | raw_head | minutes_before | hours_before |  days  | hours_after | minutes_after | raw_tail |
///    < 1 min      whole min.      whole hours   whole d.  whole hours     whole min.     < 1 min
/// ```
///
/// Minute rollups answer for the minute spans, hour rollups for the hour spans, day rollups
/// for `days`, and only raw events for the partial minutes `raw_head` and `raw_tail`:
/// together exact for any range, and cheap for long ones (a 30-day range reads about 30 day
/// rows and 46 hour rows per provider instead of 720 hour rows). Each span starts where the
/// one before it ends (`from` to `to`), so an empty one sits at a boundary. Without a whole
/// hour inside the whole minutes, they are all `minutes_before`; without a whole day inside
/// the whole hours, they are all `hours_before`; a range inside one minute is all `raw_head`.
///
/// ```
/// # use chrono::{DateTime, Utc};
/// # use keyvault_core::RollupRanges;
/// let t = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
/// let r = RollupRanges::split(t("2026-01-01T10:04:30Z"), t("2026-01-03T13:20:10Z"));
/// assert_eq!((r.raw_head.start, r.raw_head.end), (t("2026-01-01T10:04:30Z"), t("2026-01-01T10:05:00Z")));
/// assert_eq!((r.minutes_before.start, r.minutes_before.end), (t("2026-01-01T10:05:00Z"), t("2026-01-01T11:00:00Z")));
/// assert_eq!((r.hours_before.start, r.hours_before.end), (t("2026-01-01T11:00:00Z"), t("2026-01-02T00:00:00Z")));
/// assert_eq!((r.days.start, r.days.end), (t("2026-01-02T00:00:00Z"), t("2026-01-03T00:00:00Z")));
/// assert_eq!((r.hours_after.start, r.hours_after.end), (t("2026-01-03T00:00:00Z"), t("2026-01-03T13:00:00Z")));
/// assert_eq!((r.minutes_after.start, r.minutes_after.end), (t("2026-01-03T13:00:00Z"), t("2026-01-03T13:20:00Z")));
/// assert_eq!((r.raw_tail.start, r.raw_tail.end), (t("2026-01-03T13:20:00Z"), t("2026-01-03T13:20:10Z")));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RollupRanges {
    /// From `from` to its first whole minute: raw events.
    pub raw_head: Span,
    /// Whole minutes before the first whole hour: minute rollups.
    pub minutes_before: Span,
    /// Whole hours before the first whole day: hour rollups.
    pub hours_before: Span,
    /// Whole days: day rollups.
    pub days: Span,
    /// Whole hours after the last whole day: hour rollups.
    pub hours_after: Span,
    /// Whole minutes after the last whole hour: minute rollups.
    pub minutes_after: Span,
    /// From the last whole minute to `to`: raw events.
    pub raw_tail: Span,
}

const MINUTE: i64 = 60;
const HOUR: i64 = 3_600;
const DAY: i64 = 86_400;

/// `t` rounded down to a multiple of `unit` seconds since the epoch.
fn floor(t: DateTime<Utc>, unit: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(t.timestamp().div_euclid(unit) * unit, 0).unwrap_or(t)
}

/// `t` rounded up to a multiple of `unit` seconds since the epoch (`t` itself at chrono's
/// upper limit, where there is no whole unit left to round to).
fn ceil(t: DateTime<Utc>, unit: i64) -> DateTime<Utc> {
    let f = floor(t, unit);
    if f == t {
        return t;
    }
    f.checked_add_signed(TimeDelta::seconds(unit)).unwrap_or(t)
}

/// True when a step of `step` holds whole units of `unit` seconds (both count from the epoch,
/// so every unit then lies inside one step).
fn whole(step: TimeDelta, unit: i64) -> bool {
    step > TimeDelta::zero() && step.subsec_nanos() == 0 && step.num_seconds() % unit == 0
}

impl RollupRanges {
    /// Cuts `[from, to)` (an empty range when `to <= from`: every span empty at `from`).
    pub fn split(from: DateTime<Utc>, to: DateTime<Utc>) -> Self {
        let to = to.max(from);
        let (first_minute, last_minute) = (ceil(from, MINUTE), floor(to, MINUTE));
        if first_minute > last_minute {
            // Inside one minute, which neither end is the start of.
            return Self {
                raw_head: Span {
                    start: from,
                    end: to,
                },
                ..Self::minutes_only(Span::at(to), to)
            };
        }
        let mut r = Self::minutes_only(
            Span {
                start: first_minute,
                end: last_minute,
            },
            to,
        );
        r.raw_head = Span {
            start: from,
            end: first_minute,
        };
        let (first_hour, last_hour) = (ceil(first_minute, HOUR), floor(last_minute, HOUR));
        if first_hour < last_hour {
            r.minutes_before.end = first_hour;
            r.set_hours(Span {
                start: first_hour,
                end: last_hour,
            });
            r.minutes_after = Span {
                start: last_hour,
                end: last_minute,
            };
        }
        r
    }

    /// `minutes` all read from minute rollups, then the raw tail up to `to`.
    fn minutes_only(minutes: Span, to: DateTime<Utc>) -> Self {
        let after = Span::at(minutes.end);
        Self {
            raw_head: Span::at(minutes.start),
            minutes_before: minutes,
            hours_before: after,
            days: after,
            hours_after: after,
            minutes_after: after,
            raw_tail: Span {
                start: minutes.end,
                end: to,
            },
        }
    }

    /// Cuts the whole hours `hours` at whole days.
    fn set_hours(&mut self, hours: Span) {
        let (first_day, last_day) = (ceil(hours.start, DAY), floor(hours.end, DAY));
        if first_day < last_day {
            self.hours_before = Span {
                start: hours.start,
                end: first_day,
            };
            self.days = Span {
                start: first_day,
                end: last_day,
            };
            self.hours_after = Span {
                start: last_day,
                end: hours.end,
            };
        } else {
            self.set_hours_only(hours);
        }
    }

    /// The whole minutes, from `minutes_before`'s start to `minutes_after`'s end.
    pub fn whole_minutes(&self) -> Span {
        Span {
            start: self.minutes_before.start,
            end: self.minutes_after.end,
        }
    }

    /// The whole hours, from `hours_before`'s start to `hours_after`'s end.
    pub fn whole_hours(&self) -> Span {
        Span {
            start: self.hours_before.start,
            end: self.hours_after.end,
        }
    }

    /// The minutes that start in the range: the whole minutes, and the one `raw_tail` begins.
    /// A store that keeps no raw events counts exactly these (a minute belongs to a range when
    /// it starts in it).
    pub fn minute_starts(&self) -> Span {
        let minutes = self.whole_minutes();
        if self.raw_tail.is_empty() {
            return minutes;
        }
        Span {
            end: ceil(self.raw_tail.end, MINUTE),
            ..minutes
        }
    }

    /// The ranges for a time series of `step`: a day (an hour) lies inside one step only when
    /// the step is a whole number of days (hours), so a series of 6-hour steps reads its days
    /// as hours, and any finer series reads the hours as minutes too.
    pub fn for_step(self, step: TimeDelta) -> Self {
        if whole(step, DAY) {
            self
        } else if whole(step, HOUR) {
            let mut r = self;
            if !self.whole_hours().is_empty() {
                r.set_hours_only(self.whole_hours());
            }
            r
        } else {
            Self {
                raw_head: self.raw_head,
                ..Self::minutes_only(self.whole_minutes(), self.raw_tail.end)
            }
        }
    }

    /// All of `hours` as `hours_before`, no days.
    fn set_hours_only(&mut self, hours: Span) {
        self.hours_before = hours;
        self.days = Span::at(hours.end);
        self.hours_after = Span::at(hours.end);
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn span(start: &str, end: &str) -> Span {
        Span {
            start: t(start),
            end: t(end),
        }
    }

    /// The seven spans, in order.
    fn spans(r: &RollupRanges) -> [Span; 7] {
        [
            r.raw_head,
            r.minutes_before,
            r.hours_before,
            r.days,
            r.hours_after,
            r.minutes_after,
            r.raw_tail,
        ]
    }

    /// What holds for every range: the spans run from `from` to `to` one after the other;
    /// the raw ends are shorter than a minute, the minute spans whole minutes, the hours whole
    /// hours, the days whole days, the minute spans shorter than an hour when there are hours
    /// between them and the hour spans shorter than a day when there are days.
    fn assert_well_cut(from: DateTime<Utc>, to: DateTime<Utc>) {
        let r = RollupRanges::split(from, to);
        let s = spans(&r);
        let why = format!("{from} .. {to}: {r:?}");
        assert_eq!(s[0].start, from, "{why}");
        assert_eq!(s[6].end, to.max(from), "{why}");
        for w in s.windows(2) {
            assert_eq!(w[0].end, w[1].start, "{why}");
        }
        assert!(s.iter().all(|x| x.start <= x.end), "{why}");
        let aligned = |x: DateTime<Utc>, unit: i64| {
            x.timestamp_subsec_nanos() == 0 && x.timestamp().rem_euclid(unit) == 0
        };
        let minute = TimeDelta::minutes(1);
        for raw in [r.raw_head, r.raw_tail] {
            assert!(raw.end - raw.start < minute, "{why}");
        }
        if !r.whole_minutes().is_empty() || !r.raw_tail.is_empty() {
            for x in &s[1..] {
                assert!(aligned(x.start, MINUTE), "{why}");
            }
        }
        if !r.whole_hours().is_empty() {
            for x in [r.hours_before, r.days, r.hours_after] {
                assert!(aligned(x.start, HOUR) && aligned(x.end, HOUR), "{why}");
            }
            for m in [r.minutes_before, r.minutes_after] {
                assert!(m.end - m.start < TimeDelta::hours(1), "{why}");
            }
        } else {
            assert!(r.minutes_after.is_empty(), "{why}");
        }
        if !r.days.is_empty() {
            assert!(
                aligned(r.days.start, DAY) && aligned(r.days.end, DAY),
                "{why}"
            );
            for h in [r.hours_before, r.hours_after] {
                assert!(h.end - h.start < TimeDelta::days(1), "{why}");
            }
        } else {
            assert!(r.hours_after.is_empty(), "{why}");
        }
        // Minute starts: exactly those whole minutes whose start is in the range.
        let starts = r.minute_starts();
        let mut m = ceil(from, MINUTE);
        let mut want = Vec::new();
        while m < to {
            want.push(m);
            m += minute;
        }
        let mut got = Vec::new();
        let mut m = starts.start;
        while m < starts.end {
            got.push(m);
            m += minute;
        }
        assert_eq!(got, want, "{why}");
        // A finer series reads the same whole minutes, none of them from hours.
        let fine = r.for_step(TimeDelta::minutes(15));
        assert_eq!(fine.whole_minutes(), r.whole_minutes(), "{why}");
        assert_eq!(
            (fine.raw_head, fine.raw_tail),
            (r.raw_head, r.raw_tail),
            "{why}"
        );
        assert!(
            fine.whole_hours().is_empty() && fine.minutes_after.is_empty(),
            "{why}"
        );
        // A series of whole hours reads the same hours, none of them from days.
        let hourly = r.for_step(TimeDelta::hours(6));
        assert_eq!(hourly.whole_hours(), r.whole_hours(), "{why}");
        assert!(
            hourly.days.is_empty() && hourly.hours_after.is_empty(),
            "{why}"
        );
        assert_eq!(
            (hourly.minutes_before, hourly.minutes_after),
            (r.minutes_before, r.minutes_after),
            "{why}"
        );
        assert_eq!(r.for_step(TimeDelta::days(1)), r, "{why}");
    }

    /// 10:05 .. 13:20: minutes to 11:00, hours 11:00 .. 13:00, minutes to 13:20.
    #[test]
    fn whole_minutes_split_at_whole_hours() {
        let r = RollupRanges::split(t("2026-01-01T10:05:00Z"), t("2026-01-01T13:20:00Z"));
        assert!(r.raw_head.is_empty() && r.raw_tail.is_empty());
        assert_eq!(
            r.minutes_before,
            span("2026-01-01T10:05:00Z", "2026-01-01T11:00:00Z")
        );
        assert_eq!(
            r.hours_before,
            span("2026-01-01T11:00:00Z", "2026-01-01T13:00:00Z")
        );
        assert!(r.days.is_empty() && r.hours_after.is_empty());
        assert_eq!(
            r.minutes_after,
            span("2026-01-01T13:00:00Z", "2026-01-01T13:20:00Z")
        );
    }

    /// Exactly on hours: hours only, no minutes and no raw events.
    #[test]
    fn a_range_on_whole_hours_is_all_hours() {
        let r = RollupRanges::split(t("2026-01-01T10:00:00Z"), t("2026-01-01T12:00:00Z"));
        assert_eq!(
            r.hours_before,
            span("2026-01-01T10:00:00Z", "2026-01-01T12:00:00Z")
        );
        for s in [
            r.raw_head,
            r.minutes_before,
            r.days,
            r.hours_after,
            r.minutes_after,
            r.raw_tail,
        ] {
            assert!(s.is_empty(), "{r:?}");
        }
        // One whole hour is still an hour, and all of it whole minutes.
        let r = RollupRanges::split(t("2026-01-01T10:00:00Z"), t("2026-01-01T11:00:00Z"));
        assert_eq!(
            r.hours_before,
            span("2026-01-01T10:00:00Z", "2026-01-01T11:00:00Z")
        );
        assert_eq!(
            r.whole_minutes(),
            span("2026-01-01T10:00:00Z", "2026-01-01T11:00:00Z")
        );
        assert!(r.minutes_before.is_empty() && r.raw_head.is_empty() && r.raw_tail.is_empty());
    }

    /// No whole hour inside the whole minutes: all minutes, before any hour.
    #[test]
    fn without_a_whole_hour_the_minutes_come_before() {
        let r = RollupRanges::split(t("2026-01-01T10:05:00Z"), t("2026-01-01T11:04:00Z"));
        assert_eq!(
            r.minutes_before,
            span("2026-01-01T10:05:00Z", "2026-01-01T11:04:00Z")
        );
        assert!(r.whole_hours().is_empty() && r.minutes_after.is_empty());
        assert_eq!(r.hours_before.start, t("2026-01-01T11:04:00Z"));
    }

    /// Partial minutes at either end are raw events; the whole minutes between them are
    /// rollups.
    #[test]
    fn partial_minutes_at_the_ends_are_raw() {
        let r = RollupRanges::split(t("2026-01-01T10:00:30Z"), t("2026-01-01T10:05:10Z"));
        assert_eq!(
            r.raw_head,
            span("2026-01-01T10:00:30Z", "2026-01-01T10:01:00Z")
        );
        assert_eq!(
            r.whole_minutes(),
            span("2026-01-01T10:01:00Z", "2026-01-01T10:05:00Z")
        );
        assert_eq!(
            r.raw_tail,
            span("2026-01-01T10:05:00Z", "2026-01-01T10:05:10Z")
        );
        assert_eq!(
            r.minute_starts(),
            span("2026-01-01T10:01:00Z", "2026-01-01T10:06:00Z")
        );
        // Across one minute boundary but no whole minute: two raw ends, no rollups.
        let r = RollupRanges::split(t("2026-01-01T10:00:30Z"), t("2026-01-01T10:01:20Z"));
        assert!(r.whole_minutes().is_empty());
        assert_eq!(
            r.raw_head,
            span("2026-01-01T10:00:30Z", "2026-01-01T10:01:00Z")
        );
        assert_eq!(
            r.raw_tail,
            span("2026-01-01T10:01:00Z", "2026-01-01T10:01:20Z")
        );
        assert_eq!(
            r.minute_starts(),
            span("2026-01-01T10:01:00Z", "2026-01-01T10:02:00Z")
        );
    }

    /// A range inside one minute is raw events only, and no minute starts in it.
    #[test]
    fn a_range_inside_one_minute_is_all_raw() {
        let r = RollupRanges::split(t("2026-01-01T10:00:10Z"), t("2026-01-01T10:00:50Z"));
        assert_eq!(
            r.raw_head,
            span("2026-01-01T10:00:10Z", "2026-01-01T10:00:50Z")
        );
        for s in &spans(&r)[1..] {
            assert!(s.is_empty(), "{r:?}");
        }
        assert!(r.minute_starts().is_empty());
        // Sub-second ends round as whole seconds do.
        let from = t("2026-01-01T10:00:59.999999Z");
        let r = RollupRanges::split(from, t("2026-01-01T10:01:00.000001Z"));
        assert_eq!(
            r.raw_head,
            Span {
                start: from,
                end: t("2026-01-01T10:01:00Z")
            }
        );
        assert_eq!(
            r.raw_tail.end - r.raw_tail.start,
            TimeDelta::microseconds(1)
        );
    }

    /// Empty (and reversed) ranges cut into empty spans at `from`.
    #[test]
    fn an_empty_range_reads_nothing() {
        for (from, to) in [
            ("2026-01-01T10:00:00Z", "2026-01-01T10:00:00Z"),
            ("2026-01-01T10:00:30Z", "2026-01-01T10:00:30Z"),
            ("2026-01-01T11:00:00Z", "2026-01-01T10:00:00Z"),
        ] {
            let r = RollupRanges::split(t(from), t(to));
            for s in spans(&r) {
                assert_eq!(s, Span::at(t(from)), "{from} .. {to}");
            }
            assert!(r.minute_starts().is_empty());
        }
    }

    /// Across days: the whole UTC days between are days, the hours either side hours.
    #[test]
    fn ranges_spanning_days_read_days_between() {
        let r = RollupRanges::split(t("2026-01-01T22:59:59Z"), t("2026-01-04T01:30:00.5Z"));
        assert_eq!(
            r.raw_head,
            span("2026-01-01T22:59:59Z", "2026-01-01T23:00:00Z")
        );
        assert!(r.minutes_before.is_empty());
        assert_eq!(
            r.hours_before,
            span("2026-01-01T23:00:00Z", "2026-01-02T00:00:00Z")
        );
        assert_eq!(r.days, span("2026-01-02T00:00:00Z", "2026-01-04T00:00:00Z"));
        assert_eq!(
            r.hours_after,
            span("2026-01-04T00:00:00Z", "2026-01-04T01:00:00Z")
        );
        assert_eq!(
            r.whole_hours(),
            span("2026-01-01T23:00:00Z", "2026-01-04T01:00:00Z")
        );
        assert_eq!(
            r.minutes_after,
            span("2026-01-04T01:00:00Z", "2026-01-04T01:30:00Z")
        );
        assert_eq!(
            r.raw_tail,
            span("2026-01-04T01:30:00Z", "2026-01-04T01:30:00.5Z")
        );
    }

    /// Hours between whole minutes but not a whole hour of them: none. Before the epoch the
    /// units floor, not truncate towards zero.
    #[test]
    fn before_the_epoch_minutes_and_hours_floor() {
        let r = RollupRanges::split(t("1969-12-31T22:30:30Z"), t("1970-01-01T01:15:00Z"));
        assert_eq!(
            r.raw_head,
            span("1969-12-31T22:30:30Z", "1969-12-31T22:31:00Z")
        );
        assert_eq!(
            r.minutes_before,
            span("1969-12-31T22:31:00Z", "1969-12-31T23:00:00Z")
        );
        assert_eq!(
            r.hours_before,
            span("1969-12-31T23:00:00Z", "1970-01-01T01:00:00Z")
        );
        // The day before the epoch floors too.
        let r = RollupRanges::split(t("1969-12-30T12:00:00Z"), t("1970-01-01T12:00:00Z"));
        assert_eq!(r.days, span("1969-12-31T00:00:00Z", "1970-01-01T00:00:00Z"));
        assert_eq!(
            floor(t("1969-12-31T23:59:59.5Z"), MINUTE),
            t("1969-12-31T23:59:00Z")
        );
        assert_eq!(
            ceil(t("1969-12-31T23:59:59.5Z"), HOUR),
            t("1970-01-01T00:00:00Z")
        );
    }

    /// Only a positive whole number of hours keeps the hours in a series, and only whole
    /// days the days.
    #[test]
    fn only_hourly_steps_read_hours() {
        let r = RollupRanges::split(t("2026-01-01T10:05:00Z"), t("2026-01-01T13:20:00Z"));
        for step in [TimeDelta::hours(1), TimeDelta::hours(6), TimeDelta::days(1)] {
            assert_eq!(r.for_step(step), r, "{step}");
        }
        let long = RollupRanges::split(t("2026-01-01T10:05:00Z"), t("2026-01-09T13:20:00Z"));
        for step in [TimeDelta::days(1), TimeDelta::days(7)] {
            assert_eq!(long.for_step(step), long, "{step}");
        }
        for step in [
            TimeDelta::hours(1),
            TimeDelta::hours(6),
            TimeDelta::hours(36),
        ] {
            let hourly = long.for_step(step);
            assert_eq!(
                hourly.hours_before,
                span("2026-01-01T11:00:00Z", "2026-01-09T13:00:00Z"),
                "{step}"
            );
            assert!(
                hourly.days.is_empty() && hourly.hours_after.is_empty(),
                "{step}"
            );
        }
        for step in [
            TimeDelta::zero(),
            TimeDelta::minutes(1),
            TimeDelta::minutes(90),
            TimeDelta::hours(1) + TimeDelta::milliseconds(1),
            -TimeDelta::hours(1),
        ] {
            let fine = r.for_step(step);
            assert_eq!(
                fine.minutes_before,
                span("2026-01-01T10:05:00Z", "2026-01-01T13:20:00Z"),
                "{step}"
            );
            assert!(fine.whole_hours().is_empty(), "{step}");
        }
    }

    /// Every combination of ends on and off minutes and hours, over a few days, is cut well.
    #[test]
    fn every_range_is_cut_into_consecutive_spans() {
        let base = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let offsets: Vec<TimeDelta> = [
            0, 1, 59, 60, 61, 3_540, 3_599, 3_600, 3_601, 7_200, 82_800, 86_400, 90_000,
        ]
        .into_iter()
        .map(TimeDelta::seconds)
        .chain([
            TimeDelta::milliseconds(500),
            TimeDelta::nanoseconds(3_600_000_000_001),
        ])
        .collect();
        for a in &offsets {
            for b in &offsets {
                for days in [0, 1, 3] {
                    let from = base + *a;
                    let to = base + TimeDelta::days(days) + *b;
                    assert_well_cut(from, to);
                    assert_well_cut(to, from);
                }
            }
        }
    }

    /// At chrono's limits, where a minute cannot be rounded up to, the range is raw events.
    #[test]
    fn the_last_instants_do_not_overflow() {
        let (from, to) = (
            DateTime::<Utc>::MAX_UTC - TimeDelta::seconds(30),
            DateTime::<Utc>::MAX_UTC,
        );
        let r = RollupRanges::split(from, to);
        assert_eq!(
            r.raw_head,
            Span {
                start: from,
                end: to
            }
        );
        assert!(r.minute_starts().is_empty());
        let r = RollupRanges::split(
            DateTime::<Utc>::MIN_UTC,
            DateTime::<Utc>::MIN_UTC + TimeDelta::minutes(2),
        );
        assert_eq!(r.raw_head.start, DateTime::<Utc>::MIN_UTC);
        assert_eq!(
            r.raw_tail.end,
            DateTime::<Utc>::MIN_UTC + TimeDelta::minutes(2)
        );
    }
}
