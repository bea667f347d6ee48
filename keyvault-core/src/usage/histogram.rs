//! [`LatencyHistogram`]: the latency buckets every backend stores and merges.

use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct Percentiles {
    /// Median.
    pub p50: Option<f64>,
    /// 95th percentile.
    pub p95: Option<f64>,
    /// 99th percentile.
    pub p99: Option<f64>,
}

/// A latency histogram with buckets at most 10 % wide, shared by every backend so that
/// rollups stored anywhere merge and answer alike.
///
/// Bucket 0 holds latencies under 100 µs; bucket `i ≥ 1` holds `[100·1.1^(i−1), 100·1.1^i)` µs;
/// the last bucket (200) holds everything from about 1.9 hours up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LatencyHistogram {
    /// Sorted by bucket. Latencies cluster in a few buckets, so a search and (rarely) an
    /// insert into a short vector cost less per event than a tree's node walk.
    counts: Vec<(u16, u64)>,
}

/// Number of histogram buckets.
pub const LATENCY_BUCKETS: u16 = 201;

impl LatencyHistogram {
    /// The bucket of a latency.
    pub fn bucket_of(latency_us: u64) -> u16 {
        // The bucket formula is monotonic, so its lower bounds, computed once, answer it
        // exactly with a binary search instead of a logarithm per event.
        static LOWER_BOUNDS: OnceLock<Vec<u64>> = OnceLock::new();
        let bounds = LOWER_BOUNDS.get_or_init(|| {
            (1..LATENCY_BUCKETS)
                .map(|b| {
                    // The smallest latency whose bucket is at least `b`.
                    let (mut lo, mut hi) = (0u64, u64::MAX);
                    while lo < hi {
                        let mid = lo + (hi - lo) / 2;
                        if Self::bucket_by_formula(mid) >= b {
                            hi = mid;
                        } else {
                            lo = mid + 1;
                        }
                    }
                    lo
                })
                .collect()
        });
        // Buckets 1..=200 start at bounds[0..200].
        bounds.partition_point(|&start| start <= latency_us) as u16
    }

    /// The definition of the buckets.
    fn bucket_by_formula(latency_us: u64) -> u16 {
        if latency_us < 100 {
            return 0;
        }
        let i = ((latency_us as f64 / 100.0).ln() / 1.1f64.ln()).floor() as i64 + 1;
        i.clamp(1, i64::from(LATENCY_BUCKETS - 1)) as u16
    }

    /// The value reported for a bucket, in ms: its geometric middle (within 5 % of any
    /// latency in it).
    pub fn representative_ms(bucket: u16) -> f64 {
        if bucket == 0 {
            return 0.05;
        }
        let lo = 100.0 * 1.1f64.powi(i32::from(bucket) - 1);
        lo * 1.1f64.sqrt() / 1_000.0
    }

    /// Counts one latency.
    pub fn record(&mut self, latency_us: u64) {
        self.add(Self::bucket_of(latency_us), 1);
    }

    /// Adds `count` to a bucket (merging stored rollups).
    pub fn add(&mut self, bucket: u16, count: u64) {
        let bucket = bucket.min(LATENCY_BUCKETS - 1);
        match self.counts.binary_search_by_key(&bucket, |&(b, _)| b) {
            Ok(i) => self.counts[i].1 += count,
            Err(i) => self.counts.insert(i, (bucket, count)),
        }
    }

    /// Adds every count of `other` (another cell, a stored rollup) to this one.
    pub fn merge(&mut self, other: &Self) {
        for &(bucket, count) in &other.counts {
            self.add(bucket, count);
        }
    }

    /// Non-empty buckets and their counts.
    pub fn buckets(&self) -> impl Iterator<Item = (u16, u64)> + '_ {
        self.counts.iter().copied()
    }

    /// Total count.
    pub fn total(&self) -> u64 {
        self.counts.iter().map(|&(_, c)| c).sum()
    }

    /// The `q`-quantile in ms (`q` in [0, 1]), None when empty.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        let total = self.total();
        if total == 0 {
            return None;
        }
        // Nearest-rank: the smallest bucket holding at least ⌈q·n⌉ values.
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for &(b, c) in &self.counts {
            seen += c;
            if seen >= rank {
                return Some(Self::representative_ms(b));
            }
        }
        None
    }

    /// p50, p95 and p99.
    pub fn percentiles(&self) -> Percentiles {
        Percentiles {
            p50: self.quantile_ms(0.50),
            p95: self.quantile_ms(0.95),
            p99: self.quantile_ms(0.99),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn buckets_are_at_most_ten_percent_wide() {
        for us in [
            100u64, 150, 999, 1_000, 12_345, 250_000, 5_000_000, 60_000_000,
        ] {
            let b = LatencyHistogram::bucket_of(us);
            let rep = LatencyHistogram::representative_ms(b) * 1_000.0;
            let err = (rep - us as f64).abs() / us as f64;
            assert!(err <= 0.1, "{us} µs → bucket {b} → {rep} µs");
        }
        assert_eq!(LatencyHistogram::bucket_of(0), 0);
        assert_eq!(LatencyHistogram::bucket_of(u64::MAX), LATENCY_BUCKETS - 1);
    }

    /// The table answers exactly as the formula that defines the buckets (stored rollups
    /// depend on it): every latency up to 10 s, each bucket's edges, and a spread beyond.
    #[test]
    fn bucket_lookup_matches_the_formula() {
        let edges = (1..LATENCY_BUCKETS).flat_map(|b| {
            let lo = (100.0 * 1.1f64.powi(i32::from(b) - 1)) as u64;
            lo.saturating_sub(2)..lo.saturating_add(3)
        });
        let spread = (0..4_000u32).map(|i| (1.011f64.powi(i as i32)) as u64);
        for us in (0..10_000_000u64)
            .chain(edges)
            .chain(spread)
            .chain([u64::MAX])
        {
            assert_eq!(
                LatencyHistogram::bucket_of(us),
                LatencyHistogram::bucket_by_formula(us),
                "{us} µs"
            );
        }
    }

    #[test]
    fn quantiles_use_nearest_rank() {
        let mut h = LatencyHistogram::default();
        for ms in 1..=100u64 {
            h.record(ms * 1_000);
        }
        let p = h.percentiles();
        for (got, want) in [(p.p50, 50.0), (p.p95, 95.0), (p.p99, 99.0)] {
            let got = got.unwrap();
            assert!((got - want).abs() / want <= 0.1, "{got} vs {want}");
        }
        assert_eq!(LatencyHistogram::default().quantile_ms(0.5), None);
    }

    /// Counts merge per bucket whatever the order they arrive in, buckets come out in
    /// ascending order, and histograms built in different orders are equal.
    #[test]
    fn histograms_merge_per_bucket_in_any_order() {
        let adds: Vec<(u16, u64)> = (0..2_000u64)
            .map(|i| (((i * 7_919) % 230) as u16, i % 5 + 1))
            .collect();
        let mut forward = LatencyHistogram::default();
        let mut backward = LatencyHistogram::default();
        let mut reference = BTreeMap::<u16, u64>::new();
        for &(b, n) in &adds {
            forward.add(b, n);
            *reference.entry(b.min(LATENCY_BUCKETS - 1)).or_default() += n;
        }
        for &(b, n) in adds.iter().rev() {
            backward.add(b, n);
        }
        assert_eq!(forward, backward);
        assert_eq!(
            forward.buckets().collect::<Vec<_>>(),
            reference.into_iter().collect::<Vec<_>>()
        );
        assert_eq!(forward.total(), adds.iter().map(|&(_, n)| n).sum::<u64>());
        // Merging the two halves gives what adding all of it gave.
        let (first, second) = adds.split_at(777);
        let mut merged = LatencyHistogram::default();
        let mut rest = LatencyHistogram::default();
        first.iter().for_each(|&(b, n)| merged.add(b, n));
        second.iter().for_each(|&(b, n)| rest.add(b, n));
        merged.merge(&rest);
        assert_eq!(merged, forward);
        merged.merge(&LatencyHistogram::default());
        assert_eq!(merged, forward);
    }
}
