//! Histograms of fixed buckets kept in atomics: how a partition driver records durations and
//! sizes for `/metrics`.
//!
//! This crate also builds under the simulator, so it carries no metrics library: a
//! [`Histogram`] is a count per bucket and a sum, each an atomic that a record adds to without
//! a lock, and whoever exports the metrics reads a [`HistogramSnapshot`] at scrape time and
//! encodes it in its own format. Buckets are fixed when the histogram is made (one of the
//! bound sets below), so recording never allocates.

use std::sync::atomic::{AtomicU64, Ordering};

/// Bucket bounds of durations, in microseconds: 50 µs to one minute, about three buckets per
/// decade. One set serves every duration a driver records (an fsync takes tens of µs on a
/// good disk, a transfer waiting for a node that is down takes seconds), so dashboards can
/// compare them bucket for bucket.
pub const DURATION_US_BOUNDS: [u64; 20] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000, 20_000_000, 30_000_000, 60_000_000,
];

/// Bucket bounds of sizes (records per batch, inputs waiting in an inbox): the powers of two
/// up to 65 536, the default inbox capacity.
pub const SIZE_BOUNDS: [u64; 17] = [
    1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1_024, 2_048, 4_096, 8_192, 16_384, 32_768, 65_536,
];

/// A histogram whose buckets are atomics. A value `v` counts in the first bucket whose bound
/// is at least `v` (Prometheus' `le`), or in the overflow bucket past the last bound.
#[derive(Debug)]
pub struct Histogram {
    /// Inclusive upper bounds of the finite buckets, ascending.
    bounds: &'static [u64],
    /// One count per bound, then the overflow bucket.
    counts: Box<[AtomicU64]>,
    /// Sum of every value recorded (wraps after 2^64, centuries of microseconds).
    sum: AtomicU64,
}

impl Histogram {
    /// An empty histogram over `bounds`, which must ascend strictly.
    pub fn new(bounds: &'static [u64]) -> Histogram {
        assert!(
            bounds.windows(2).all(|pair| pair[0] < pair[1]),
            "histogram bounds must ascend strictly"
        );
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
        }
    }

    /// Counts one value: two relaxed atomic adds, no lock, no allocation.
    pub fn record(&self, value: u64) {
        let bucket = self.bounds.partition_point(|&bound| bound < value);
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(value, Ordering::Relaxed);
    }

    /// The counts as they are now. Records that race with the read may show in a bucket and
    /// not yet in the sum (or the reverse); the count is the buckets' total, so the
    /// overflow bucket's cumulative count always equals it.
    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            bounds: self.bounds,
            counts: self
                .counts
                .iter()
                .map(|count| count.load(Ordering::Relaxed))
                .collect(),
            sum: self.sum.load(Ordering::Relaxed),
        }
    }
}

/// A histogram read at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistogramSnapshot {
    /// Inclusive upper bounds of the finite buckets.
    pub bounds: &'static [u64],
    /// Values per bucket (not cumulative): one per bound, then the overflow bucket.
    pub counts: Vec<u64>,
    pub sum: u64,
}

impl HistogramSnapshot {
    /// Values recorded.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_counts_in_the_first_bucket_whose_bound_holds_it() {
        static BOUNDS: [u64; 3] = [10, 100, 1_000];
        let histogram = Histogram::new(&BOUNDS);
        for value in [0, 10, 11, 100, 999, 1_000, 1_001, u64::MAX / 2] {
            histogram.record(value);
        }
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot.counts, vec![2, 2, 2, 2]);
        assert_eq!(snapshot.count(), 8);
        assert_eq!(
            snapshot.sum,
            10 + 11 + 100 + 999 + 1_000 + 1_001 + u64::MAX / 2
        );
    }

    #[test]
    fn an_empty_histogram_reads_zero_everywhere() {
        let snapshot = Histogram::new(&DURATION_US_BOUNDS).snapshot();
        assert_eq!(snapshot.counts.len(), DURATION_US_BOUNDS.len() + 1);
        assert_eq!((snapshot.count(), snapshot.sum), (0, 0));
    }

    #[test]
    #[should_panic(expected = "ascend")]
    fn bounds_out_of_order_are_a_programming_error() {
        static BOUNDS: [u64; 2] = [5, 5];
        let _ = Histogram::new(&BOUNDS);
    }

    #[test]
    fn the_bound_sets_ascend() {
        let _ = Histogram::new(&DURATION_US_BOUNDS);
        let _ = Histogram::new(&SIZE_BOUNDS);
    }
}
