//! Latency histograms: an hdrhistogram per shard, recorded on the shard's
//! own thread with no atomics, merged at scrape time and cut into fixed
//! Prometheus buckets.
//!
//! Why hdrhistogram and not prometheus-client's `Histogram`: the latter is
//! atomics shared between threads (a cache line bounced between shards on
//! every observation), and its buckets are fixed at creation. A
//! shard-local hdrhistogram costs a few adds per observation, and keeps
//! enough resolution (2 significant digits) that any bucket layout can be
//! derived from it when scraped.

use std::time::Duration;

use hdrhistogram::Histogram;
use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

/// Upper bounds of the exported buckets, in seconds: 10 µs to 10 s, about
/// three per decade. `+Inf` is added after them.
pub const BUCKETS: [f64; 19] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Largest value recorded, in microseconds; longer latencies are clamped
/// to it (they all land in `+Inf` anyway).
const MAX_MICROS: u64 = 60_000_000;

/// Durations in microseconds, kept by one shard.
#[derive(Debug, Clone)]
pub struct Latency(Histogram<u64>);

impl Latency {
    pub fn new() -> Latency {
        // The bounds are constants the crate accepts, so this cannot fail.
        Latency(Histogram::new_with_bounds(1, MAX_MICROS, 2).expect("valid histogram bounds"))
    }

    pub fn record(&mut self, elapsed: Duration) {
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(MAX_MICROS);
        self.0.saturating_record(micros.clamp(1, MAX_MICROS));
    }

    /// Adds another shard's observations.
    pub fn merge(&mut self, other: &Latency) {
        // Both have the same bounds, so adding cannot go out of range.
        let _ = self.0.add(&other.0);
    }

    pub fn count(&self) -> u64 {
        self.0.len()
    }

    /// Per-bucket (not cumulative) counts at [`BUCKETS`], then `+Inf`, and
    /// the sum in seconds. A value counts in the first bucket whose bound
    /// is at least the value's hdrhistogram bucket's highest equivalent
    /// value, so a bucket never claims a value above its bound; the error
    /// is at most hdrhistogram's 1%.
    pub fn buckets(&self) -> Export {
        let mut counts = vec![0u64; BUCKETS.len() + 1];
        let mut sum = 0.0;
        for value in self.0.iter_recorded() {
            let seconds = self.0.highest_equivalent(value.value_iterated_to()) as f64 / 1e6;
            let n = value.count_at_value();
            sum += seconds * n as f64;
            let index = BUCKETS
                .iter()
                .position(|&bound| seconds <= bound)
                .unwrap_or(BUCKETS.len());
            counts[index] += n;
        }
        Export {
            sum,
            count: self.count(),
            buckets: BUCKETS
                .iter()
                .copied()
                .chain([f64::INFINITY])
                .zip(counts)
                .collect(),
        }
    }
}

impl Default for Latency {
    fn default() -> Latency {
        Latency::new()
    }
}

/// A merged histogram as Prometheus sees it. prometheus-client's own
/// `Histogram` can only be fed observations one by one, so this type
/// implements its `EncodeMetric` and hands over the counts directly.
#[derive(Debug, Clone, PartialEq)]
pub struct Export {
    /// In seconds.
    pub sum: f64,
    pub count: u64,
    /// Upper bound in seconds and the count in that bucket alone; the
    /// encoder makes them cumulative.
    pub buckets: Vec<(f64, u64)>,
}

impl EncodeMetric for Export {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_histogram::<NoLabelSet>(self.sum, self.count, &self.buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_land_in_the_first_bucket_at_or_above_them() {
        let mut latency = Latency::new();
        latency.record(Duration::from_micros(5)); // 10 µs bucket
        latency.record(Duration::from_micros(300)); // 500 µs
        latency.record(Duration::from_millis(3)); // 5 ms
        latency.record(Duration::from_secs(30)); // +Inf
        let export = latency.buckets();
        assert_eq!(export.count, 4);
        assert_eq!(export.buckets.len(), BUCKETS.len() + 1);
        let count_at = |bound: f64| {
            export
                .buckets
                .iter()
                .find(|(le, _)| *le == bound)
                .map(|(_, n)| *n)
        };
        assert_eq!(count_at(0.000_01), Some(1));
        assert_eq!(count_at(0.000_5), Some(1));
        assert_eq!(count_at(0.005), Some(1));
        assert_eq!(count_at(f64::INFINITY), Some(1));
        let total: u64 = export.buckets.iter().map(|(_, n)| n).sum();
        assert_eq!(total, export.count);
        // Within hdrhistogram's 1% of the true 30.003305 s.
        assert!((export.sum - 30.003_305).abs() < 0.3, "sum {}", export.sum);
    }

    #[test]
    fn merging_adds_counts() {
        let mut a = Latency::new();
        let mut b = Latency::new();
        a.record(Duration::from_micros(40));
        b.record(Duration::from_micros(40));
        b.record(Duration::from_millis(700));
        a.merge(&b);
        let export = a.buckets();
        assert_eq!(export.count, 3);
        let in_50us = export.buckets.iter().find(|(le, _)| *le == 0.000_05);
        assert_eq!(in_50us, Some(&(0.000_05, 2)));
    }
}
