//! GCRA, the token bucket of CONTRACT §3, in exact integer arithmetic.
//!
//! A bucket holds at most `L` tokens and refills continuously at `L` per `P`. GCRA stores one
//! number per bucket, the theoretical arrival time `tat`: the bucket is full at any moment
//! `≥ tat`, and each token taken pushes `tat` one emission interval `T = P / L` later. `T` is
//! usually not a whole number of nanoseconds (7 per 10 ms), so this module keeps every
//! quantity multiplied by `L`: the scaled TAT `x = tat·L` advances by exactly `P` per token and
//! no rounding error accumulates. Times are nanoseconds since the Unix epoch; `u128` holds
//! `now·L` for any date this side of the year 10¹³.
//!
//! Every limiter (in-memory, Redis Lua, SQL) implements these formulas; the conformance suite
//! checks that they agree.

/// A limit in the units used here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bucket {
    /// Bucket size (`limit`).
    pub limit: u128,
    /// Refill period in nanoseconds.
    pub period_ns: u128,
}

/// What a bucket says at `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketState {
    /// Whether a token could be (or was) taken.
    pub admitted: bool,
    /// The scaled TAT to store (unchanged unless a token was taken).
    pub x: u128,
    /// Whole tokens left after this check.
    pub remaining: u64,
    /// Nanoseconds from `now` until the bucket is full again.
    pub reset_in_ns: u128,
    /// Nanoseconds from `now` until the next token, when none is left.
    pub retry_in_ns: Option<u128>,
}

impl Bucket {
    /// A bucket for `limit` tokens per `period_ms`.
    pub fn new(limit: u32, period_ms: u64) -> Self {
        Self {
            limit: u128::from(limit),
            period_ns: u128::from(period_ms) * 1_000_000,
        }
    }

    /// Checks the bucket whose stored scaled TAT is `x` (0 for a bucket never used) at `now_ns`;
    /// takes a token when `take` and one is available.
    pub fn check(&self, x: u128, now_ns: u128, take: bool) -> BucketState {
        let (l, p) = (self.limit, self.period_ns);
        let now_x = now_ns * l;
        // A bucket that has been idle long enough is full: TAT can't lie in the past.
        let base = x.max(now_x);
        // Tokens available = (now + P − tat) / T = (now·L + P·L − x) / P.
        let capacity_x = now_x + p * l;
        // Saturating: a clock that stepped backwards must not underflow (it reads as empty).
        let available = capacity_x.saturating_sub(base) / p;
        let admitted = available >= 1;
        let x_after = if admitted && take { base + p } else { base };
        let remaining = (capacity_x.saturating_sub(x_after) / p) as u64;
        let reset_in_ns = (x_after - now_x).div_ceil(l);
        let retry_in_ns = (remaining == 0).then(|| {
            // The next token arrives when (now' + P)·L − x_after ≥ P, i.e.
            // now' ≥ (x_after + P − P·L) / L.
            let needed = (x_after + p).saturating_sub(p * l);
            needed.div_ceil(l).saturating_sub(now_ns).max(1)
        });
        BucketState {
            admitted,
            x: x_after,
            remaining,
            reset_in_ns,
            retry_in_ns,
        }
    }

    /// Gives back one token taken earlier (a refund for a request rejected later on).
    pub fn release(&self, x: u128, now_ns: u128) -> u128 {
        // Never below "full now": a refund can't create tokens beyond the bucket's size.
        x.saturating_sub(self.period_ns).max(now_ns * self.limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u128 = 1_000_000;

    #[test]
    fn a_full_bucket_admits_exactly_limit_requests() {
        let b = Bucket::new(3, 3_600_000);
        let now = 1_000_000 * MS;
        let mut x = 0;
        for want in [2, 1, 0] {
            let s = b.check(x, now, true);
            assert!(s.admitted);
            assert_eq!(s.remaining, want);
            x = s.x;
        }
        let s = b.check(x, now, true);
        assert!(!s.admitted);
        assert_eq!(s.x, x, "a rejection takes nothing");
        // The next token comes one emission interval (20 min) after the first was taken.
        assert_eq!(s.retry_in_ns, Some(1_200_000 * MS));
        assert_eq!(s.reset_in_ns, 3_600_000 * MS);
    }

    #[test]
    fn admits_exactly_at_retry_after_and_never_before() {
        for (limit, period_ms) in [
            (7u32, 10u64),
            (3, 3_600_000),
            (100, 60_000),
            (1, 1),
            (1000, 1),
        ] {
            let b = Bucket::new(limit, period_ms);
            let mut now = 5_000 * MS;
            let mut x = 0;
            for _ in 0..limit {
                x = b.check(x, now, true).x;
            }
            for _ in 0..20 {
                let s = b.check(x, now, true);
                assert!(!s.admitted);
                let retry = s.retry_in_ns.unwrap();
                assert!(
                    !b.check(x, now + retry - 1, true).admitted,
                    "{limit}/{period_ms}"
                );
                now += retry;
                let s = b.check(x, now, true);
                assert!(s.admitted, "{limit}/{period_ms}");
                x = s.x;
            }
        }
    }

    #[test]
    fn pure_checks_take_nothing_and_refunds_restore() {
        let b = Bucket::new(2, 1_000);
        let now = 10 * MS;
        let s = b.check(0, now, false);
        assert_eq!((s.admitted, s.remaining), (true, 2));
        let taken = b.check(s.x, now, true);
        assert_eq!(taken.remaining, 1);
        let x = b.release(taken.x, now);
        assert_eq!(b.check(x, now, false).remaining, 2);
        // A refund never makes more than the bucket holds.
        assert_eq!(b.check(b.release(x, now), now, false).remaining, 2);
    }

    #[test]
    fn a_clock_stepping_back_reads_as_empty_not_as_a_panic() {
        let b = Bucket::new(2, 1_000);
        let now = 10_000 * MS;
        let mut x = 0;
        for _ in 0..2 {
            x = b.check(x, now, true).x;
        }
        let s = b.check(x, now - 5_000 * MS, true);
        assert!(!s.admitted);
        assert_eq!(s.remaining, 0);
    }

    #[test]
    fn refills_continuously() {
        let b = Bucket::new(10, 1_000); // one token per 100 ms
        let now = 1_000 * MS;
        let mut x = 0;
        for _ in 0..10 {
            x = b.check(x, now, true).x;
        }
        assert_eq!(b.check(x, now + 99 * MS, false).remaining, 0);
        assert_eq!(b.check(x, now + 100 * MS, false).remaining, 1);
        assert_eq!(b.check(x, now + 550 * MS, false).remaining, 5);
        assert_eq!(b.check(x, now + 5_000 * MS, false).remaining, 10);
    }
}
