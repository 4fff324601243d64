//! `BatcherStats` and `LatencySummary`: typed, read-only snapshots of an engine's counters.

use std::collections::BTreeMap;

use pyo3::prelude::*;

/// p50/p95/p99/max of one latency, in seconds.
#[pyclass(module = "ferrobatch._native", frozen, get_all)]
#[derive(Clone)]
pub(crate) struct LatencySummary {
    count: u64,
    p50: f64,
    p95: f64,
    p99: f64,
    max: f64,
    /// Sum of the values, seconds.
    sum: f64,
    /// `(upper bound in seconds, values at most it)`, cumulative, for metrics exporters.
    buckets: Vec<(f64, u64)>,
}

#[pymethods]
impl LatencySummary {
    fn __repr__(&self) -> String {
        format!(
            "LatencySummary(count={}, p50={:.6}, p95={:.6}, p99={:.6}, max={:.6})",
            self.count, self.p50, self.p95, self.p99, self.max
        )
    }
}

impl From<ferrobatch_core::LatencySummary> for LatencySummary {
    fn from(s: ferrobatch_core::LatencySummary) -> Self {
        LatencySummary {
            count: s.count,
            p50: s.p50,
            p95: s.p95,
            p99: s.p99,
            max: s.max,
            sum: s.sum,
            buckets: s
                .bounds
                .iter()
                .copied()
                .zip(s.buckets.iter().copied().chain(std::iter::repeat(0)))
                .collect(),
        }
    }
}

/// A snapshot of a batcher's counters; see docs/guides/batcher.md (Stats) for each field.
#[pyclass(module = "ferrobatch._native", frozen, get_all)]
pub(crate) struct BatcherStats {
    submitted: u64,
    completed: u64,
    failed: u64,
    cancelled: u64,
    timed_out: u64,
    rejected: u64,
    batches: u64,
    batch_sizes: BTreeMap<usize, u64>,
    queue_wait: LatencySummary,
    batch_duration: LatencySummary,
    queue_depth: usize,
    waiting: usize,
    running_batches: usize,
    effective_wait: f64,
    arrival_rate: f64,
    /// Calls that joined an identical item already waiting or running (`dedupe`); they are
    /// not counted in `submitted`.
    deduplicated: u64,
}

impl BatcherStats {
    /// The snapshot with the in-flight deduplication count.
    pub(crate) fn with_deduplicated(mut self, n: u64) -> Self {
        self.deduplicated = n;
        self
    }
}

impl From<ferrobatch_core::Stats> for BatcherStats {
    fn from(s: ferrobatch_core::Stats) -> Self {
        BatcherStats {
            submitted: s.submitted,
            completed: s.completed,
            failed: s.failed,
            cancelled: s.cancelled,
            timed_out: s.timed_out,
            rejected: s.rejected,
            batches: s.batches,
            batch_sizes: s.batch_sizes,
            queue_wait: s.queue_wait.into(),
            batch_duration: s.batch_duration.into(),
            queue_depth: s.queue_depth,
            waiting: s.waiting,
            running_batches: s.running_batches,
            effective_wait: s.effective_wait,
            arrival_rate: s.arrival_rate,
            deduplicated: 0,
        }
    }
}

#[pymethods]
impl BatcherStats {
    fn __repr__(&self) -> String {
        format!(
            "BatcherStats(submitted={}, completed={}, failed={}, cancelled={}, timed_out={}, \
             rejected={}, deduplicated={}, batches={}, queue_depth={}, waiting={}, \
             running_batches={}, effective_wait={:.6}, arrival_rate={:.1}, queue_wait={}, \
             batch_duration={})",
            self.submitted,
            self.completed,
            self.failed,
            self.cancelled,
            self.timed_out,
            self.rejected,
            self.deduplicated,
            self.batches,
            self.queue_depth,
            self.waiting,
            self.running_batches,
            self.effective_wait,
            self.arrival_rate,
            self.queue_wait.__repr__(),
            self.batch_duration.__repr__(),
        )
    }
}
