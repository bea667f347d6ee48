//! CONTRACT §3's durations (`<n>ms|s|m|h|d`) and the CLI's rate-limit spec
//! (`L/P[:MODE]`, §8): round trips, no panics, accepted exactly when the grammar says.

use std::time::Duration;

use keyvault_core::{FailMode, HumanDuration, MAX_LIMIT, MAX_PERIOD_MS, RateLimit};
use proptest::prelude::*;

/// The longest duration keyvault accepts anywhere: 100 years of 365 days.
const MAX_DURATION_MS: u128 = 100 * 365 * 86_400_000;

/// The grammar `<n>(ms|s|m|h|d)`, `<n>` one or more ASCII digits, within the 100-year
/// bound: the duration in milliseconds, or `None`.
fn reference_duration_ms(text: &str) -> Option<u128> {
    let digits_end = text
        .char_indices()
        .find(|(_, c)| !c.is_ascii_digit())
        .map_or(text.len(), |(i, _)| i);
    let (digits, unit) = text.split_at(digits_end);
    if digits.is_empty() {
        return None;
    }
    let per: u128 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    // Digit by digit, saturating: a long run of digits is just a large number.
    let n = digits.bytes().fold(0u128, |n, d| {
        n.saturating_mul(10).saturating_add(u128::from(d - b'0'))
    });
    let ms = n.saturating_mul(per);
    (ms <= MAX_DURATION_MS).then_some(ms)
}

/// Texts near the grammar: digits (leading zeros and long runs included), a unit or a
/// near-miss of one, and now and then a sign, a space or a stray character.
fn duration_like() -> impl Strategy<Value = String> {
    let number = prop_oneof![
        "[0-9]{0,6}",
        "0{0,25}[0-9]{1,4}",
        "[0-9]{12,22}",
        any::<u64>().prop_map(|n| n.to_string()),
    ];
    let unit = prop_oneof![
        4 => proptest::sample::select(vec!["ms", "s", "m", "h", "d"]).prop_map(String::from),
        1 => proptest::sample::select(vec!["", "S", "M", "H", "D", "mss", "sm", "w", "y", "us", "µs", "ms ", " s"])
            .prop_map(String::from),
        1 => "\\PC{0,3}",
    ];
    let sign = proptest::sample::select(vec!["", "", "", "", "+", "-", " "]);
    (sign, number, unit).prop_map(|(s, n, u)| format!("{s}{n}{u}"))
}

/// A duration the grammar can write: whole milliseconds, 0 to 100 years, in a mix that
/// hits every unit's exact multiples.
fn writable_duration() -> impl Strategy<Value = HumanDuration> {
    let max = MAX_DURATION_MS as u64;
    prop_oneof![
        0..=max,
        (0..=max / 86_400_000).prop_map(|d| d * 86_400_000),
        (0..=max / 3_600_000).prop_map(|h| h * 3_600_000),
        (0..=max / 60_000).prop_map(|m| m * 60_000),
        (0..=max / 1_000).prop_map(|s| s * 1_000),
        0..10_000u64,
    ]
    .prop_map(|ms| HumanDuration::new(Duration::from_millis(ms)))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    /// Any string: the duration parser never panics, and accepts exactly the grammar's
    /// texts, with the grammar's value; a refusal names the field it was given.
    #[test]
    fn durations_are_accepted_exactly_by_the_grammar(
        text in prop_oneof![duration_like(), any::<String>()],
    ) {
        let got = HumanDuration::parse(&text, "grace");
        match (&got, reference_duration_ms(&text)) {
            (Ok(d), Some(ms)) => prop_assert_eq!(d.get(), Duration::from_millis(ms as u64)),
            (Err(e), None) => prop_assert_eq!(&e.field, "grace"),
            (got, want) => prop_assert!(false, "{:?}: parsed {:?}, grammar says {:?}", text, got, want),
        }
    }

    /// Format then parse gives the same duration, in JSON too; what is printed is the
    /// grammar's (so it is accepted wherever a duration is read).
    #[test]
    fn durations_round_trip_through_their_text(d in writable_duration()) {
        let text = d.to_string();
        prop_assert!(reference_duration_ms(&text).is_some(), "printed {:?}", text);
        prop_assert_eq!(HumanDuration::parse(&text, "x").unwrap(), d);
        let json = serde_json::to_string(&d).unwrap();
        prop_assert_eq!(serde_json::from_str::<HumanDuration>(&json).unwrap(), d);
    }
}

/// The spec grammar `L/P[:MODE]`: `L` one or more ASCII digits, `P` a duration, `MODE` one of
/// `closed`, `open`, `local` (default `local`); valid when CONTRACT §3's bounds hold
/// (`limit` 1–10⁹, `period_ms` 1–a year, `limit` ≤ `period_ms` × 1000). The limit it names,
/// as (limit, period_ms, mode), or `None`.
fn reference_spec(text: &str) -> Option<(u64, u64, FailMode)> {
    let (spec, mode) = match text.split_once(':') {
        None => (text, FailMode::Local),
        Some((spec, "closed")) => (spec, FailMode::Closed),
        Some((spec, "open")) => (spec, FailMode::Open),
        Some((spec, "local")) => (spec, FailMode::Local),
        Some(_) => return None,
    };
    let (limit, period) = spec.split_once('/')?;
    if limit.is_empty() || !limit.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let limit = limit.bytes().fold(0u128, |n, d| {
        n.saturating_mul(10).saturating_add(u128::from(d - b'0'))
    });
    let period = reference_duration_ms(period)?;
    let ok = (1..=u128::from(MAX_LIMIT)).contains(&limit)
        && (1..=u128::from(MAX_PERIOD_MS)).contains(&period)
        && limit <= period * 1_000;
    ok.then_some((limit as u64, period as u64, mode))
}

fn spec_like() -> impl Strategy<Value = String> {
    let limit = prop_oneof![
        "[0-9]{1,4}",
        "0{0,25}[0-9]{1,10}",
        "[0-9]{10,22}",
        proptest::sample::select(vec!["", "+5", "-5", " 5", "5 ", "1e3", "x"])
            .prop_map(String::from),
    ];
    let sep = proptest::sample::select(vec!["/", "/", "/", "/", "", "//", "\\"]);
    let mode = proptest::sample::select(vec![
        "",
        "",
        "",
        ":closed",
        ":open",
        ":local",
        ":",
        ":Closed",
        ":shut",
        ":local:open",
        "::open",
    ]);
    (limit, sep, duration_like(), mode).prop_map(|(l, s, p, m)| format!("{l}{s}{p}{m}"))
}

fn fail_mode() -> impl Strategy<Value = FailMode> {
    proptest::sample::select(vec![FailMode::Closed, FailMode::Open, FailMode::Local])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    /// Any string: the spec parser never panics, and accepts exactly the grammar's texts,
    /// giving the limit they name (named after its period, as printed).
    #[test]
    fn rate_limit_specs_are_accepted_exactly_by_the_grammar(
        text in prop_oneof![3 => spec_like(), 1 => any::<String>()],
    ) {
        let got = RateLimit::parse_spec(&text);
        match (&got, reference_spec(&text)) {
            (Ok(l), Some((limit, period_ms, mode))) => {
                prop_assert_eq!(
                    (u64::from(l.limit()), l.period_ms(), l.fail_mode()),
                    (limit, period_ms, mode)
                );
                let name = HumanDuration::new(Duration::from_millis(period_ms)).to_string();
                prop_assert_eq!(l.name(), name);
            }
            (Err(e), None) => prop_assert!(e.field.starts_with("rate-limit"), "field {:?}", e.field),
            (got, want) => prop_assert!(false, "{:?}: parsed {:?}, grammar says {:?}", text, got, want),
        }
    }

    /// Any valid limit printed as `L/P:MODE` (or `L/P` for the default mode) parses back to
    /// the same limit.
    #[test]
    fn rate_limit_specs_round_trip(
        (limit, period_ms) in (1..=MAX_PERIOD_MS).prop_flat_map(|p| {
            (1..=u64::from(MAX_LIMIT).min(p * 1_000), Just(p))
        }),
        mode in fail_mode(),
        print_default in any::<bool>(),
    ) {
        let period = HumanDuration::new(Duration::from_millis(period_ms));
        let want = RateLimit::new(period.to_string(), limit, period_ms).unwrap().with_fail_mode(mode);
        let text = if mode == FailMode::Local && !print_default {
            format!("{limit}/{period}")
        } else {
            format!("{limit}/{period}:{}", mode.as_str())
        };
        prop_assert_eq!(RateLimit::parse_spec(&text).unwrap(), want);
    }
}
