//! When a partial batch leaves: the fixed window, or the adaptive ("auto") policy.
//!
//! "auto" keeps two running estimates: the gap between arrivals, and a linear model of batch
//! duration, `a + b * size`, fitted by least squares with exponential forgetting (as BentoML's
//! adaptive dispatcher does). From them it picks the smallest batch size `n*` that keeps the
//! concurrency slots at most [`TARGET_UTILIZATION`] busy: `rate * (a + b*n) / (C * n) <= u`.
//! - Idle or light load (`n* = 1`): whatever is queued goes as soon as a slot is free.
//! - Heavier load: a partial batch waits for `n*` items (about `n*` arrival gaps), so that
//!   calls with a large fixed cost do not fill every slot with tiny batches.
//! - All slots busy: items accumulate; the next batch takes up to `max_batch_size` of them.
//! - Unlimited concurrency: utilization is never the limit, so batches go at once.
//!
//! With a `max_latency` bound it may also wait when waiting pays off even though slots are
//! plentiful: one more item costs the `n` queued items one arrival gap each and saves one
//! call's fixed cost `a`, so it waits while `n * gap < a`. It never waits past the point
//! where the oldest item's wait plus the estimated duration would exceed the bound.
//! Before the first batch has been measured, "auto" dispatches at once.

use std::time::{Duration, Instant};

/// How long a partial batch may wait for company.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Window {
    /// Dispatch this long after the batch's first item arrived.
    Fixed(Duration),
    /// Adapt to the load (see the module documentation).
    Auto,
}

/// Forgetting factor of the running estimates: older observations fade by this per update.
const DECAY: f64 = 0.95;

/// The share of concurrency slots "auto" aims to keep busy at most.
pub const TARGET_UTILIZATION: f64 = 0.6;

/// The share it settles for when the target is out of reach (heavy load): still below 1, so
/// the queue drains, with batches small enough not to wait longer than they must.
pub const HEAVY_UTILIZATION: f64 = 0.85;

/// Running least-squares fit of batch duration (seconds) against batch size.
#[derive(Debug, Clone, Default)]
pub(crate) struct DurationModel {
    w: f64,
    sn: f64,
    snn: f64,
    sd: f64,
    snd: f64,
}

impl DurationModel {
    pub(crate) fn record(&mut self, size: usize, took: Duration) {
        let (n, d) = (size as f64, took.as_secs_f64());
        self.w = self.w * DECAY + 1.0;
        self.sn = self.sn * DECAY + n;
        self.snn = self.snn * DECAY + n * n;
        self.sd = self.sd * DECAY + d;
        self.snd = self.snd * DECAY + n * d;
    }

    /// `(a, b)`: fixed seconds per batch and seconds per item; `None` before any batch.
    pub(crate) fn fit(&self) -> Option<(f64, f64)> {
        if self.w <= 0.0 {
            return None;
        }
        let den = self.w * self.snn - self.sn * self.sn;
        let b = if den.abs() > 1e-9 * self.w * self.snn.max(1.0) {
            ((self.w * self.snd - self.sn * self.sd) / den).max(0.0)
        } else {
            0.0 // one size seen so far: all of the duration counts as fixed cost
        };
        let a = ((self.sd - b * self.sn) / self.w).max(0.0);
        Some((a, b))
    }
}

/// The window, the latency bound and the estimates behind "auto".
#[derive(Debug, Clone)]
pub(crate) struct Policy {
    pub(crate) window: Window,
    pub(crate) max_latency: Option<Duration>,
    /// Concurrency slots (`None`: unlimited) and the largest batch.
    slots: Option<usize>,
    max_batch: usize,
    last_arrival: Option<Instant>,
    /// Exponentially weighted mean gap between arrivals, in seconds.
    gap: Option<f64>,
    pub(crate) model: DurationModel,
    /// `model.fit()`, refreshed when a batch ends (not on every submit, which reads it).
    fit: Option<(f64, f64)>,
}

impl Policy {
    pub(crate) fn new(
        window: Window,
        max_latency: Option<Duration>,
        slots: Option<usize>,
        max_batch: usize,
    ) -> Self {
        Policy {
            window,
            max_latency,
            slots,
            max_batch,
            last_arrival: None,
            gap: None,
            model: DurationModel::default(),
            fit: None,
        }
    }

    pub(crate) fn on_arrival(&mut self, now: Instant) {
        if self.window != Window::Auto {
            return; // fixed windows need no estimates: keep their hot path minimal
        }
        if let Some(prev) = self.last_arrival {
            let g = now.saturating_duration_since(prev).as_secs_f64();
            self.gap = Some(match self.gap {
                Some(m) => m * DECAY + g * (1.0 - DECAY),
                None => g,
            });
        }
        self.last_arrival = Some(now);
    }

    pub(crate) fn on_batch(&mut self, size: usize, took: Duration) {
        if self.window == Window::Auto && size > 0 {
            self.model.record(size, took);
            self.fit = self.model.fit();
        }
    }

    /// Items per second, from the mean arrival gap (0.0 before two arrivals).
    pub(crate) fn arrival_rate(&self) -> f64 {
        match self.gap {
            Some(g) if g > 0.0 => 1.0 / g,
            Some(_) => f64::INFINITY,
            None => 0.0,
        }
    }

    /// The smallest batch size that keeps the slots at most `TARGET_UTILIZATION` busy, or
    /// failing that `HEAVY_UTILIZATION`; failing both (overload), the largest batch.
    fn target_size(&self, rate: f64, a: f64, b: f64) -> usize {
        let Some(slots) = self.slots else { return 1 };
        for u in [TARGET_UTILIZATION, HEAVY_UTILIZATION] {
            let room = u * slots as f64 - rate * b;
            if room > 0.0 {
                let n = (rate * a / room).ceil();
                if n.is_finite() && n <= self.max_batch as f64 {
                    return (n as usize).max(1);
                }
            }
        }
        self.max_batch
    }

    /// How long after its oldest item a partial batch of `n` items may wait, a slot being free.
    pub(crate) fn wait_for(&self, n: usize) -> Duration {
        match self.window {
            Window::Fixed(w) => w,
            Window::Auto => {
                let (Some((a, b)), Some(gap)) = (self.fit, self.gap) else {
                    return Duration::ZERO;
                };
                let n = n.max(1);
                let rate = if gap > 0.0 { 1.0 / gap } else { f64::INFINITY };
                let target = self.target_size(rate, a, b);
                // The oldest item is one of the `target`: the rest arrive in `target - 1` gaps.
                let mut wait = if n >= target {
                    0.0
                } else {
                    (target - 1) as f64 * gap
                };
                if let Some(bound) = self.max_latency {
                    let nf = n as f64;
                    if nf * gap < a {
                        wait = wait.max(a); // one more item is worth its wait
                    }
                    let size = (target.max(n) + 1) as f64;
                    let slack = bound.as_secs_f64() - (a + b * size);
                    wait = wait.min(slack);
                }
                Duration::from_secs_f64(wait.clamp(0.0, 3600.0))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn model_recovers_a_linear_cost() {
        let mut m = DurationModel::default();
        for size in [1usize, 10, 50, 100, 5, 80] {
            m.record(size, Duration::from_secs_f64(0.020 + 0.0002 * size as f64));
        }
        let (a, b) = m.fit().unwrap();
        assert!((a - 0.020).abs() < 1e-6, "{a}");
        assert!((b - 0.0002).abs() < 1e-8, "{b}");
    }

    #[test]
    fn model_with_one_size_counts_everything_as_fixed() {
        let mut m = DurationModel::default();
        m.record(8, ms(10));
        m.record(8, ms(10));
        let (a, b) = m.fit().unwrap();
        assert_eq!(b, 0.0);
        assert!((a - 0.010).abs() < 1e-9);
        assert!(DurationModel::default().fit().is_none());
    }

    #[test]
    fn fixed_window_is_the_window() {
        let p = Policy::new(Window::Fixed(ms(7)), None, Some(1), 64);
        assert_eq!(p.wait_for(1), ms(7));
        assert_eq!(p.wait_for(100), ms(7));
    }

    fn auto_with(bound_ms: Option<u64>, gap_ms: u64, a_ms: f64, b_ms: f64) -> Policy {
        auto_slots(bound_ms, None, gap_ms, a_ms, b_ms)
    }

    fn auto_slots(
        bound_ms: Option<u64>,
        slots: Option<usize>,
        gap_ms: u64,
        a_ms: f64,
        b_ms: f64,
    ) -> Policy {
        let mut p = Policy::new(Window::Auto, bound_ms.map(ms), slots, 256);
        let t0 = Instant::now();
        for i in 0..50 {
            p.on_arrival(t0 + ms(gap_ms * i));
        }
        for size in [1usize, 20, 40] {
            p.on_batch(
                size,
                Duration::from_secs_f64((a_ms + b_ms * size as f64) / 1000.0),
            );
        }
        p
    }

    #[test]
    fn auto_sizes_batches_to_keep_slots_below_the_target_utilization() {
        // 1,000 items/s, 20 ms + 0.2 ms/item, 4 slots: single-item calls would need ~5 slots.
        let p = auto_slots(None, Some(4), 1, 20.0, 0.2);
        let target = p.target_size(1000.0, 0.020, 0.0002);
        assert_eq!(target, 10); // 20 / (0.6 * 4 - 0.2) = 9.1
        let w = p.wait_for(1);
        assert!(w >= ms(8) && w <= ms(10), "{w:?}");
        assert_eq!(
            p.wait_for(10),
            Duration::ZERO,
            "a full target batch goes at once"
        );
        // 10 items/s: one slot in five is busy even with single items; no waiting.
        let p = auto_slots(None, Some(4), 100, 20.0, 0.2);
        assert_eq!(p.wait_for(1), Duration::ZERO);
        // Heavy load, 0.6 out of reach: settle for 0.85 (200 / (3.4 - 2) = 142.9).
        assert_eq!(p.target_size(10_000.0, 0.020, 0.0002), 143);
        // Overloaded at any size: aim for full batches.
        let p = auto_slots(None, Some(1), 1, 20.0, 0.2);
        assert_eq!(p.target_size(10_000.0, 0.020, 0.0002), 256);
    }

    #[test]
    fn auto_without_a_bound_never_waits() {
        let p = auto_with(None, 1, 20.0, 0.2);
        assert_eq!(p.wait_for(1), Duration::ZERO);
        assert!((p.arrival_rate() - 1000.0).abs() < 1.0);
    }

    #[test]
    fn auto_waits_when_calls_are_costly_and_arrivals_close() {
        // gap 1 ms, fixed cost 20 ms: one item should wait for company, within the bound.
        let p = auto_with(Some(100), 1, 20.0, 0.2);
        let w = p.wait_for(1);
        assert!(w > Duration::ZERO && w <= ms(20), "{w:?}");
        // Twenty-five queued items: another would add 25 ms of waiting to save 20 ms.
        assert_eq!(p.wait_for(25), Duration::ZERO);
    }

    #[test]
    fn auto_respects_the_latency_bound() {
        // Bound 21 ms, a batch of 2 takes 20.4 ms: at most ~0.6 ms of queue wait is allowed.
        let p = auto_with(Some(21), 1, 20.0, 0.2);
        assert!(
            p.wait_for(1) <= Duration::from_micros(700),
            "{:?}",
            p.wait_for(1)
        );
        // A bound tighter than one call: never wait.
        let p = auto_with(Some(5), 1, 20.0, 0.2);
        assert_eq!(p.wait_for(1), Duration::ZERO);
    }

    #[test]
    fn auto_does_not_wait_when_arrivals_are_sparse() {
        // gap 100 ms > fixed cost 20 ms: waiting never pays off.
        let p = auto_with(Some(1000), 100, 20.0, 0.2);
        assert_eq!(p.wait_for(1), Duration::ZERO);
        assert!((p.arrival_rate() - 10.0).abs() < 0.1);
    }
}
