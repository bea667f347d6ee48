//! Reference models, written from the contract's words and sharing no code with the crate.

use chrono::{DateTime, TimeZone, Utc};
use keyvault_core::{MAX_LIMIT, MAX_PERIOD_MS};
use proptest::prelude::*;

/// CONTRACT §1's base62 alphabet, digit values 0..61.
pub(crate) const BASE62: &str = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// CRC32 as zlib computes it (IEEE 802.3, reflected polynomial 0xEDB88320), bit by bit.
pub(crate) fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xEDB8_8320 & mask);
        }
    }
    !crc
}

/// CONTRACT §1's checksum of `signed` (`<prefix>_<body>`): its CRC32 in base62, most
/// significant digit first, left-padded with '0' to six characters.
pub(crate) fn reference_checksum(signed: &str) -> String {
    let crc = u64::from(crc32(signed.as_bytes()));
    (0..6u32)
        .map(|i| {
            let digit = (crc / 62u64.pow(5 - i)) % 62;
            BASE62.as_bytes()[digit as usize] as char
        })
        .collect()
}

/// CONTRACT §3's token bucket, kept as a level rather than as GCRA's arrival time: it holds
/// at most `limit` tokens and refills continuously at `limit` per period. To stay exact the
/// level is counted in units of 1 / period_ns of a token, so a nanosecond adds `limit` units
/// and a token is `period_ns` units.
#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    limit: u128,
    period_ns: u128,
    level: u128,
}

impl TokenBucket {
    /// A full bucket.
    pub(crate) fn new(limit: u32, period_ms: u64) -> Self {
        let (limit, period_ns) = (u128::from(limit), u128::from(period_ms) * 1_000_000);
        Self {
            limit,
            period_ns,
            level: limit * period_ns,
        }
    }

    fn capacity(&self) -> u128 {
        self.limit * self.period_ns
    }

    /// Lets `ns` nanoseconds pass.
    pub(crate) fn advance(&mut self, ns: u128) {
        self.level = (self.level + ns * self.limit).min(self.capacity());
    }

    /// Whole tokens in the bucket.
    pub(crate) fn whole(&self) -> u64 {
        u64::try_from(self.level / self.period_ns).unwrap()
    }

    /// Takes a token.
    pub(crate) fn take(&mut self) {
        assert!(self.whole() >= 1, "the model takes only an existing token");
        self.level -= self.period_ns;
    }

    /// Gives a token back (never beyond the bucket's size).
    pub(crate) fn give_back(&mut self) {
        self.level = (self.level + self.period_ns).min(self.capacity());
    }

    /// Nanoseconds until the bucket is full, rounded up.
    pub(crate) fn full_in_ns(&self) -> u128 {
        (self.capacity() - self.level).div_ceil(self.limit)
    }

    /// Nanoseconds until the next whole token, when none is left, rounded up.
    pub(crate) fn next_token_in_ns(&self) -> Option<u128> {
        (self.whole() == 0).then(|| (self.period_ns - self.level).div_ceil(self.limit))
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day count since 1970-01-01 (H. Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// A refill interval, as CONTRACT §3 says: UTC days, or months starting on the 1st.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Interval {
    Daily,
    Monthly,
}

impl Interval {
    /// The start of the interval holding `at`, in seconds since the epoch.
    pub(crate) fn start_of(self, at: DateTime<Utc>) -> i64 {
        let day = at.timestamp().div_euclid(86_400);
        let first = match self {
            Interval::Daily => day,
            Interval::Monthly => {
                let (y, m, _) = civil_from_days(day);
                days_from_civil(y, m, 1)
            }
        };
        first * 86_400
    }
}

/// A moment from seconds and nanoseconds since the epoch.
pub(crate) fn at(secs: i64, nanos: u32) -> DateTime<Utc> {
    Utc.timestamp_opt(secs, nanos).unwrap()
}

#[test]
fn the_reference_crc32_is_zlibs() {
    // The standard check value of CRC-32/ISO-HDLC, and the vectors key.rs took from zlib.
    assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    assert_eq!(
        reference_checksum("kv_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
        "3vFAOz"
    );
    assert_eq!(
        reference_checksum("my_app_0123456789012345678901234567890123456789"),
        "2xComn"
    );
}

#[test]
fn the_reference_calendar_knows_month_starts() {
    use chrono::Datelike;
    // Every day from 1900 to 2200: the computed month start is the 1st of that month.
    for day in days_from_civil(1900, 1, 1)..days_from_civil(2200, 1, 1) {
        let t = at(day * 86_400 + 12_345, 0);
        let start = at(Interval::Monthly.start_of(t), 0);
        assert_eq!(
            (start.year(), start.month(), start.day()),
            (t.year(), t.month(), 1)
        );
        assert_eq!(Interval::Daily.start_of(t), day * 86_400);
    }
}

/// A limit's size and period: small buckets that empty and refill within a few steps, mid-size
/// ones, and anything within the contract's bounds.
pub(crate) fn limit_params() -> impl Strategy<Value = (u32, u64)> {
    prop_oneof![
        (1..=10u32, 1..=2_000u64),
        (1..=1_000u32, 1..=60_000u64),
        (1..=MAX_PERIOD_MS).prop_flat_map(|p| {
            let max = u64::from(MAX_LIMIT).min(p * 1_000) as u32;
            (1..=max, Just(p))
        }),
    ]
}
