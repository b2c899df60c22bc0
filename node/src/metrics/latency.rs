//! A latency histogram for the delivery path: fixed buckets of atomic counters, observed a
//! batch at a time.
//!
//! prometheus-client's `Histogram` takes a lock per observation. A delivery is observed once
//! per message per subscriber, from every session's task at once; here a session sorts its
//! batch into a [`Tally`] on its own stack and adds it with one relaxed atomic add per bucket
//! the batch touched.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

/// Upper bounds of the buckets, in seconds: from 100 µs (a local delivery) to 10 s (a client
/// that stalls its session), about ×2.5 apart. The `+Inf` bucket follows.
pub(super) const BUCKETS: [f64; 15] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

/// [`BUCKETS`] in nanoseconds.
const BOUNDS_NS: [u64; 15] = {
    let mut ns = [0; 15];
    let mut i = 0;
    while i < 15 {
        ns[i] = (BUCKETS[i] * 1e9) as u64;
        i += 1;
    }
    ns
};

#[derive(Debug, Default)]
struct Counts {
    /// Observations per bucket (not cumulative), the last one `+Inf`.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_ns: AtomicU64,
}

/// The shared histogram; clones count into the same buckets.
#[derive(Clone, Debug, Default)]
pub struct LatencyHistogram(Arc<Counts>);

/// Observations of one batch (up to 65,535), kept on the stack until
/// [`LatencyHistogram::add`]. Small, as it lives in a session's future while the batch is
/// written.
#[derive(Debug, Default)]
pub struct Tally {
    buckets: [u16; BUCKETS.len() + 1],
    sum_ns: u64,
    count: u16,
}

impl Tally {
    pub fn observe(&mut self, latency: Duration) {
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        let bucket = BOUNDS_NS.partition_point(|&bound| bound < ns);
        if self.count == u16::MAX {
            return;
        }
        self.buckets[bucket] += 1;
        self.sum_ns = self.sum_ns.saturating_add(ns);
        self.count += 1;
    }
}

impl LatencyHistogram {
    /// Adds a batch's observations.
    pub fn add(&self, tally: &Tally) {
        if tally.count == 0 {
            return;
        }
        for (shared, &n) in self.0.buckets.iter().zip(&tally.buckets) {
            if n > 0 {
                shared.fetch_add(u64::from(n), Ordering::Relaxed);
            }
        }
        self.0.sum_ns.fetch_add(tally.sum_ns, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.0.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }
}

impl TypedMetric for LatencyHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let counts: Vec<u64> = self.0.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect();
        // The count is the buckets' total, so `_count` and the `+Inf` bucket always agree.
        let count = counts.iter().sum();
        let bounds = BUCKETS.iter().copied().chain([f64::INFINITY]);
        let buckets: Vec<(f64, u64)> = bounds.zip(counts).collect();
        let sum = self.0.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tally_lands_in_the_buckets_of_its_observations() {
        let histogram = LatencyHistogram::default();
        let mut tally = Tally::default();
        tally.observe(Duration::from_micros(50));
        tally.observe(Duration::from_micros(100));
        tally.observe(Duration::from_millis(3));
        tally.observe(Duration::from_secs(60));
        histogram.add(&tally);
        histogram.add(&Tally::default());
        let counts: Vec<u64> = histogram.0.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect();
        assert_eq!(counts[0], 2, "at most 100 µs (an upper bound is inclusive)");
        assert_eq!(counts[5], 1, "at most 5 ms");
        assert_eq!(counts[BUCKETS.len()], 1, "+Inf");
        assert_eq!(histogram.count(), 4);
        assert_eq!(histogram.0.sum_ns.load(Ordering::Relaxed), 60_003_150_000);
    }
}
