//! Counters and latency histograms the engine keeps, and the snapshot it hands out.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;

/// The upper bounds (seconds) of the latency buckets a [`LatencySummary`] counts, for metrics
/// exporters (the Prometheus client's defaults, widened both ways).
pub const LATENCY_BOUNDS: [f64; 17] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
    10.0, 60.0,
];

/// The queue-wait bucket bounds for a batcher whose window is `window` seconds: the
/// [`LATENCY_BOUNDS`] plus the window itself and a little above it (×1.1, ×1.25, ×1.5, ×2),
/// so that waits of one window plus scheduling noise land in a narrow bucket instead of one
/// that reaches 2.5 windows (a dashboard's p99 then reads near the engine's own). Without a
/// fixed window (or a zero one), the plain bounds.
pub fn queue_wait_bounds(window: Option<f64>) -> Vec<f64> {
    let mut bounds = LATENCY_BOUNDS.to_vec();
    if let Some(w) = window.filter(|w| w.is_finite() && *w > 0.0) {
        // Whole nanoseconds, so that a bound prints as people write it (0.055, not 0.0550...01).
        bounds.extend(
            [1.0, 1.1, 1.25, 1.5, 2.0]
                .iter()
                .map(|f| (w * f * 1e9).round() / 1e9),
        );
        bounds.sort_by(f64::total_cmp);
        // Bounds within 2% of a window-derived one are one bound.
        let mut kept: Vec<f64> = Vec::with_capacity(bounds.len());
        for b in bounds {
            match kept.last() {
                Some(last) if b <= last * 1.02 => {}
                _ => kept.push(b),
            }
        }
        return kept;
    }
    bounds
}

/// p50/p95/p99/max of one latency, in seconds (all 0.0 when nothing was recorded), with its
/// sum and cumulative bucket counts for metrics.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LatencySummary {
    /// How many values were recorded.
    pub count: u64,
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest value recorded.
    pub max: f64,
    /// Sum of the values recorded (from the histogram: within its 1% precision).
    pub sum: f64,
    /// The upper bounds (seconds) of the buckets.
    pub bounds: Vec<f64>,
    /// How many values were at most each of `bounds` (cumulative; empty when nothing was
    /// recorded).
    pub buckets: Vec<u64>,
}

/// A point-in-time copy of an engine's counters.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Stats {
    /// Items accepted by `submit`.
    pub submitted: u64,
    /// Items that ended with a result.
    pub completed: u64,
    /// Items that ended with an error from their batch (a raised batch, a per-item error,
    /// a result-count mismatch, a forced stop).
    pub failed: u64,
    /// Items their caller cancelled before they were dispatched.
    pub cancelled: u64,
    /// Items that failed with an item timeout.
    pub timed_out: u64,
    /// Items refused because the queue was full.
    pub rejected: u64,
    /// Batches dispatched.
    pub batches: u64,
    /// Batch size -> how many batches had that size.
    pub batch_sizes: BTreeMap<usize, u64>,
    /// Time items spent queued before their batch was dispatched.
    pub queue_wait: LatencySummary,
    /// Time from a batch's dispatch to its finish.
    pub batch_duration: LatencySummary,
    /// Items queued now (at most `max_queue_size`).
    pub queue_depth: usize,
    /// Items accepted with `on_full="wait"` that wait for room in the queue.
    pub waiting: usize,
    /// Batches running now.
    pub running_batches: usize,
    /// Seconds a partial batch of the current queue may wait (the window, or what "auto"
    /// decides now).
    pub effective_wait: f64,
    /// Observed arrivals per second (measured with `max_queue_time="auto"`; else 0.0).
    pub arrival_rate: f64,
}

/// Histogram of durations in microseconds, from 1 µs to one hour, 2 significant digits.
#[derive(Debug, Clone)]
pub(crate) struct Latency(Histogram<u64>, Vec<f64>);

impl Latency {
    fn new() -> Self {
        Latency::with_bounds(LATENCY_BOUNDS.to_vec())
    }

    pub(crate) fn with_bounds(bounds: Vec<f64>) -> Self {
        Latency(
            Histogram::new_with_bounds(1, 3_600_000_000, 2).expect("valid histogram bounds"),
            bounds,
        )
    }

    pub(crate) fn record(&mut self, d: Duration) {
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.0.saturating_record(micros.max(1));
    }

    pub(crate) fn summary(&self) -> LatencySummary {
        if self.0.is_empty() {
            return LatencySummary {
                bounds: self.1.clone(),
                ..LatencySummary::default()
            };
        }
        let s = |us: u64| us as f64 / 1e6;
        let buckets = self
            .1
            .iter()
            .map(|b| self.0.count_between(0, (b * 1e6) as u64))
            .collect();
        LatencySummary {
            count: self.0.len(),
            p50: s(self.0.value_at_quantile(0.50)),
            p95: s(self.0.value_at_quantile(0.95)),
            p99: s(self.0.value_at_quantile(0.99)),
            max: s(self.0.max()),
            sum: self.0.mean() * self.0.len() as f64 / 1e6,
            bounds: self.1.clone(),
            buckets,
        }
    }
}

/// The mutable counters, kept inside the engine's state lock.
#[derive(Debug, Clone)]
pub(crate) struct Counters {
    pub(crate) submitted: u64,
    pub(crate) completed: u64,
    pub(crate) failed: u64,
    pub(crate) cancelled: u64,
    pub(crate) timed_out: u64,
    pub(crate) rejected: u64,
    pub(crate) batches: u64,
    pub(crate) batch_sizes: BTreeMap<usize, u64>,
    pub(crate) queue_wait: Latency,
    pub(crate) batch_duration: Latency,
}

impl Counters {
    /// Counters for a batcher whose window is `window` seconds (for the queue-wait buckets).
    pub(crate) fn new(window: Option<f64>) -> Self {
        Counters {
            submitted: 0,
            completed: 0,
            failed: 0,
            cancelled: 0,
            timed_out: 0,
            rejected: 0,
            batches: 0,
            batch_sizes: BTreeMap::new(),
            queue_wait: Latency::with_bounds(queue_wait_bounds(window)),
            batch_duration: Latency::new(),
        }
    }

    pub(crate) fn snapshot(&self, queue_depth: usize, waiting: usize, running: usize) -> Stats {
        Stats {
            submitted: self.submitted,
            completed: self.completed,
            failed: self.failed,
            cancelled: self.cancelled,
            timed_out: self.timed_out,
            rejected: self.rejected,
            batches: self.batches,
            batch_sizes: self.batch_sizes.clone(),
            queue_wait: self.queue_wait.summary(),
            batch_duration: self.batch_duration.summary(),
            queue_depth,
            waiting,
            running_batches: running,
            effective_wait: 0.0,
            arrival_rate: 0.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_latency_is_all_zero() {
        let s = Latency::new().summary();
        assert_eq!((s.count, s.p99, s.buckets.len()), (0, 0.0, 0));
        assert_eq!(s.bounds, LATENCY_BOUNDS.to_vec());
    }

    #[test]
    fn quantiles_track_recorded_values() {
        let mut l = Latency::new();
        for ms in 1..=100 {
            l.record(Duration::from_millis(ms));
        }
        let s = l.summary();
        assert_eq!(s.count, 100);
        assert!((s.p50 - 0.050).abs() < 0.001, "{s:?}");
        assert!((s.p99 - 0.099).abs() < 0.002, "{s:?}");
        assert!((s.max - 0.100).abs() < 0.002, "{s:?}");
    }

    #[test]
    fn queue_wait_buckets_hug_the_window() {
        let b = queue_wait_bounds(Some(0.01));
        for want in [0.01, 0.011, 0.0125, 0.015, 0.02, 0.025] {
            assert!(b.iter().any(|x| (x - want).abs() < 1e-9), "{want} in {b:?}");
        }
        assert!(
            b.windows(2).all(|w| w[0] < w[1]),
            "sorted, no repeats: {b:?}"
        );
        let mut l = Latency::with_bounds(b.clone());
        for _ in 0..100 {
            l.record(Duration::from_micros(10_300));
        }
        let s = l.summary();
        let first_full = s.bounds[s.buckets.iter().position(|n| *n == 100).unwrap()];
        assert!(
            (first_full - 0.011).abs() < 1e-9,
            "a 10.3 ms wait lands at or below 11 ms"
        );
        assert_eq!(queue_wait_bounds(None), LATENCY_BOUNDS.to_vec());
        assert_eq!(queue_wait_bounds(Some(0.0)), LATENCY_BOUNDS.to_vec());
    }

    #[test]
    fn huge_durations_saturate_instead_of_panicking() {
        let mut l = Latency::new();
        l.record(Duration::from_secs(100_000));
        assert_eq!(l.summary().count, 1);
    }
}
