//! The engine's queue and batch-forming rules, as plain data guarded by the engine's lock.
//!
//! Everything here is synchronous and takes the current time as an argument, so the rules are
//! tested deterministically without threads or sleeps.

use std::cmp::Reverse;
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use super::config::{Config, OnFull};
use super::policy::{Policy, Window};
use super::stats::{Counters, Stats};
use crate::error::{Error, StopReason};

/// One queued item and when it was accepted.
#[derive(Debug)]
pub(crate) struct Entry<T> {
    pub(crate) item: T,
    pub(crate) at: Instant,
}

/// Where the engine is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Accepting items.
    Open,
    /// Stopped: no new items; queued items are dispatched as soon as slots free.
    Draining,
}

/// What the state machine hands back after a change: batches to start and items to fail.
#[derive(Debug)]
pub(crate) struct Due<T> {
    pub(crate) batches: Vec<Vec<T>>,
    pub(crate) timed_out: Vec<T>,
    pub(crate) stopped: Vec<T>,
    pub(crate) stop_reason: StopReason,
    pub(crate) drained: bool,
    /// Set by a change that was refused: nothing is collected for it.
    pub(crate) skip_collect: bool,
}

impl<T> Default for Due<T> {
    fn default() -> Self {
        Due {
            batches: Vec::new(),
            timed_out: Vec::new(),
            stopped: Vec::new(),
            stop_reason: StopReason::ForceStopped,
            drained: false,
            skip_collect: false,
        }
    }
}

impl<T> Due<T> {
    pub(crate) fn is_empty(&self) -> bool {
        self.batches.is_empty()
            && self.timed_out.is_empty()
            && self.stopped.is_empty()
            && !self.drained
    }
}

/// Lanes with more entries than this get their empty lanes pruned.
const MAX_IDLE_LANES: usize = 16;

/// The queue (one FIFO lane per priority, highest first), the running-batch count, the
/// dispatch policy and the counters.
#[derive(Debug)]
pub(crate) struct State<T> {
    pub(crate) config: Config,
    lanes: BTreeMap<Reverse<i64>, VecDeque<Entry<T>>>,
    len: usize,
    pub(crate) policy: Policy,
    running: usize,
    phase: Phase,
    drained_reported: bool,
    /// Set when the owner is gone: the timer thread hands out what is left and exits.
    pub(crate) shutdown: bool,
    /// Timer-thread work handed to the dispatcher and not yet acknowledged (see `Receipt`).
    pub(crate) in_transit: usize,
    /// The instant the timer thread sleeps until (`None`: until woken).
    pub(crate) timer_armed: Option<Instant>,
    pub(crate) counters: Counters,
}

impl<T> State<T> {
    pub(crate) fn new(config: Config) -> Self {
        // The queue-wait buckets hug the window (or, adaptive, its latency bound).
        let window = match config.max_queue_time {
            Window::Fixed(d) => Some(d.as_secs_f64()),
            _ => config.max_latency.map(|d| d.as_secs_f64()),
        };
        State {
            policy: Policy::new(
                config.max_queue_time,
                config.max_latency,
                config.concurrency.map(|c| c.get()),
                config.max_batch_size.map_or(usize::MAX, |n| n.get()),
            ),
            config,
            lanes: BTreeMap::new(),
            len: 0,
            running: 0,
            phase: Phase::Open,
            drained_reported: false,
            shutdown: false,
            in_transit: 0,
            timer_armed: None,
            counters: Counters::new(window),
        }
    }

    fn capacity(&self) -> usize {
        self.config.max_queue_size.map_or(usize::MAX, |n| n.get())
    }

    /// Items eligible for batching: with `on_full="wait"`, items past the capacity wait.
    fn eligible(&self) -> usize {
        self.len.min(self.capacity())
    }

    /// When the oldest queued item arrived.
    fn oldest(&self) -> Option<Instant> {
        self.lanes
            .values()
            .filter_map(|l| l.front())
            .map(|e| e.at)
            .min()
    }

    /// The lane whose front arrived first.
    fn oldest_lane(&mut self) -> Option<&mut VecDeque<Entry<T>>> {
        self.lanes
            .values_mut()
            .filter(|l| !l.is_empty())
            .min_by_key(|l| l.front().map(|e| e.at))
    }

    /// Take the next item for a batch: an item that waited `aging` or longer goes first
    /// (oldest first), then the highest priority, arrival order within a priority.
    fn pop_next(&mut self, now: Instant) -> Option<Entry<T>> {
        if let Some(aging) = self.config.aging {
            let aged = self
                .oldest_lane()
                .filter(|lane| lane.front().is_some_and(|e| e.at + aging <= now))
                .and_then(|lane| lane.pop_front());
            if aged.is_some() {
                self.len -= 1;
                return aged;
            }
        }
        let e = self.lanes.values_mut().find(|l| !l.is_empty())?.pop_front();
        self.len -= 1;
        e
    }

    fn prune_lanes(&mut self) {
        if self.lanes.len() > MAX_IDLE_LANES {
            self.lanes.retain(|_, l| !l.is_empty());
        }
    }

    fn slot_free(&self) -> bool {
        self.config
            .concurrency
            .is_none_or(|c| self.running < c.get())
    }

    fn batch_limit(&self) -> usize {
        self.config.max_batch_size.map_or(usize::MAX, |n| n.get())
    }

    pub(crate) fn accepting(&self) -> bool {
        self.phase == Phase::Open && !self.shutdown
    }

    /// Nothing queued, running, or on its way to the dispatcher's consumer.
    pub(crate) fn idle(&self) -> bool {
        self.len == 0 && self.running == 0 && self.in_transit == 0
    }

    /// Accept an item, or refuse it with `Stopped` / `QueueFull`.
    pub(crate) fn push(&mut self, item: T, priority: i64, now: Instant) -> Result<(), Error> {
        if !self.accepting() {
            return Err(Error::Stopped {
                reason: StopReason::NotAccepting,
            });
        }
        if self.config.on_full == OnFull::Reject && self.len >= self.capacity() {
            self.counters.rejected += 1;
            return Err(Error::QueueFull {
                capacity: self.capacity(),
            });
        }
        self.lanes
            .entry(Reverse(priority))
            .or_default()
            .push_back(Entry { item, at: now });
        self.len += 1;
        self.counters.submitted += 1;
        self.policy.on_arrival(now);
        Ok(())
    }

    /// Whether the first eligible batch may go now (slots permitting).
    fn front_due(&self, now: Instant) -> bool {
        let eligible = self.eligible();
        if eligible == 0 {
            return false;
        }
        if eligible >= self.batch_limit() || self.phase == Phase::Draining || self.shutdown {
            return true;
        }
        let oldest = self.oldest().expect("eligible items exist");
        oldest + self.policy.wait_for(eligible) <= now
    }

    /// Fail items whose `item_timeout` passed, then form every batch that is due.
    pub(crate) fn collect(&mut self, now: Instant, due: &mut Due<T>) {
        if let Some(timeout) = self.config.item_timeout {
            let before = due.timed_out.len();
            for lane in self.lanes.values_mut() {
                while lane.front().is_some_and(|e| e.at + timeout <= now) {
                    due.timed_out
                        .push(lane.pop_front().expect("front exists").item);
                }
            }
            let expired = due.timed_out.len() - before;
            self.len -= expired;
            self.counters.timed_out += expired as u64;
        }
        while self.slot_free() && self.front_due(now) {
            let n = self.eligible().min(self.batch_limit());
            let mut items = Vec::with_capacity(n);
            for _ in 0..n {
                let e = self.pop_next(now).expect("n items are queued");
                self.counters
                    .queue_wait
                    .record(now.saturating_duration_since(e.at));
                items.push(e.item);
            }
            self.running += 1;
            due.batches.push(items);
        }
        self.prune_lanes();
        if self.phase == Phase::Draining && self.idle() && !self.drained_reported {
            self.drained_reported = true;
            due.drained = true;
        }
    }

    /// The next instant at which `collect` will have something to do.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        let front = self.oldest()?;
        let timeout = self.config.item_timeout.map(|t| front + t);
        let eligible = self.eligible();
        let window = if self.slot_free() && eligible > 0 {
            Some(
                if eligible >= self.batch_limit() || self.phase == Phase::Draining {
                    front
                } else {
                    front + self.policy.wait_for(eligible)
                },
            )
        } else {
            None
        };
        match (timeout, window) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether the timer thread sleeps past the next deadline and must be woken.
    pub(crate) fn timer_is_late(&self) -> bool {
        match (self.next_deadline(), self.timer_armed) {
            (Some(next), Some(armed)) => next < armed,
            (Some(_), None) => true,
            (None, _) => false,
        }
    }

    /// A batch ended; `processed` items reached the batch function, which took `took`.
    pub(crate) fn finish(&mut self, outcome: super::BatchCounts, took: Duration) {
        self.running = self.running.saturating_sub(1);
        let c = &mut self.counters;
        c.completed += outcome.completed as u64;
        c.failed += outcome.failed as u64;
        c.cancelled += outcome.cancelled as u64;
        let processed = outcome.completed + outcome.failed;
        self.policy.on_batch(processed, took);
        if processed > 0 {
            c.batches += 1;
            *c.batch_sizes.entry(processed).or_insert(0) += 1;
            c.batch_duration.record(took);
        }
    }

    /// Stop accepting. With `force`, every queued item is handed back to be failed.
    pub(crate) fn close(&mut self, force: bool, reason: StopReason, due: &mut Due<T>) {
        self.phase = Phase::Draining;
        if force {
            due.stop_reason = reason;
            for lane in self.lanes.values_mut() {
                due.stopped.extend(lane.drain(..).map(|e| e.item));
            }
            self.len = 0;
            self.counters.failed += due.stopped.len() as u64;
        }
    }

    pub(crate) fn stats(&self) -> Stats {
        let eligible = self.eligible();
        let mut s = self
            .counters
            .snapshot(eligible, self.len - eligible, self.running);
        s.effective_wait = self.policy.wait_for(eligible.max(1)).as_secs_f64();
        s.arrival_rate = self.policy.arrival_rate();
        s
    }
}

#[cfg(test)]
mod tests {
    use super::super::{BatchCounts, Window};
    use super::*;
    use std::num::NonZeroUsize;

    fn cfg(max_batch: usize, window_ms: u64, conc: usize) -> Config {
        Config {
            max_batch_size: NonZeroUsize::new(max_batch),
            max_queue_time: Window::Fixed(Duration::from_millis(window_ms)),
            concurrency: NonZeroUsize::new(conc),
            ..Config::default()
        }
    }

    fn ms(t0: Instant, n: u64) -> Instant {
        t0 + Duration::from_millis(n)
    }

    fn collect(s: &mut State<u32>, now: Instant) -> Due<u32> {
        let mut d = Due::default();
        s.collect(now, &mut d);
        d
    }

    #[test]
    fn full_batch_goes_at_once_in_arrival_order() {
        let t0 = Instant::now();
        let mut s = State::new(cfg(3, 10, 1));
        for i in 0..3 {
            s.push(i, 0, t0).unwrap();
        }
        let d = collect(&mut s, t0);
        assert_eq!(d.batches, vec![vec![0, 1, 2]]);
    }

    #[test]
    fn partial_batch_waits_for_the_window_of_its_first_item() {
        let t0 = Instant::now();
        let mut s = State::new(cfg(10, 10, 1));
        s.push(1, 0, t0).unwrap();
        s.push(2, 0, ms(t0, 6)).unwrap();
        assert!(collect(&mut s, ms(t0, 9)).batches.is_empty());
        assert_eq!(s.next_deadline(), Some(ms(t0, 10)));
        assert_eq!(collect(&mut s, ms(t0, 10)).batches, vec![vec![1, 2]]);
    }

    #[test]
    fn busy_slots_hold_items_until_a_slot_frees() {
        let t0 = Instant::now();
        let mut s = State::new(cfg(2, 0, 1));
        for i in 0..5 {
            s.push(i, 0, t0).unwrap();
        }
        let d = collect(&mut s, t0);
        assert_eq!(d.batches, vec![vec![0, 1]]);
        assert_eq!(
            s.next_deadline(),
            None,
            "no timer while the only slot is busy"
        );
        s.finish(
            BatchCounts {
                completed: 2,
                ..BatchCounts::default()
            },
            Duration::ZERO,
        );
        assert_eq!(collect(&mut s, t0).batches, vec![vec![2, 3]]);
        s.finish(
            BatchCounts {
                completed: 2,
                ..BatchCounts::default()
            },
            Duration::ZERO,
        );
        assert_eq!(collect(&mut s, t0).batches, vec![vec![4]]);
    }

    #[test]
    fn unlimited_concurrency_forms_every_full_batch() {
        let t0 = Instant::now();
        let mut s = State::new(cfg(2, 10, 0));
        for i in 0..5 {
            s.push(i, 0, t0).unwrap();
        }
        let d = collect(&mut s, t0);
        assert_eq!(d.batches, vec![vec![0, 1], vec![2, 3]]);
        assert_eq!(s.next_deadline(), Some(ms(t0, 10)));
    }

    #[test]
    fn unlimited_batch_size_takes_everything_at_the_window() {
        let t0 = Instant::now();
        let mut s = State::new(cfg(0, 5, 1));
        for i in 0..100 {
            s.push(i, 0, t0).unwrap();
        }
        assert!(collect(&mut s, ms(t0, 4)).batches.is_empty());
        assert_eq!(collect(&mut s, ms(t0, 5)).batches[0].len(), 100);
    }

    #[test]
    fn reject_when_full_and_count_it() {
        let t0 = Instant::now();
        let mut c = cfg(10, 10, 1);
        c.max_queue_size = NonZeroUsize::new(2);
        let mut s = State::new(c);
        s.push(1, 0, t0).unwrap();
        s.push(2, 0, t0).unwrap();
        assert_eq!(s.push(3, 0, t0), Err(Error::QueueFull { capacity: 2 }));
        assert_eq!(s.stats().rejected, 1);
        assert_eq!(s.stats().submitted, 2);
    }

    #[test]
    fn wait_when_full_keeps_extra_items_out_of_the_batch() {
        let t0 = Instant::now();
        let mut c = cfg(10, 0, 1);
        c.max_queue_size = NonZeroUsize::new(2);
        c.on_full = OnFull::Wait;
        let mut s = State::new(c);
        for i in 0..5 {
            s.push(i, 0, t0).unwrap();
        }
        let st = s.stats();
        assert_eq!((st.queue_depth, st.waiting), (2, 3));
        assert_eq!(collect(&mut s, t0).batches, vec![vec![0, 1]]);
        let st = s.stats();
        assert_eq!((st.queue_depth, st.waiting), (2, 1));
    }

    #[test]
    fn item_timeout_fails_undispatched_items_and_never_dispatches_them() {
        let t0 = Instant::now();
        let mut c = cfg(10, 50, 1);
        c.item_timeout = Some(Duration::from_millis(20));
        let mut s = State::new(c);
        s.push(1, 0, t0).unwrap();
        s.push(2, 0, ms(t0, 15)).unwrap();
        assert_eq!(s.next_deadline(), Some(ms(t0, 20)));
        let d = collect(&mut s, ms(t0, 20));
        assert_eq!(d.timed_out, vec![1]);
        assert!(d.batches.is_empty());
        assert_eq!(s.next_deadline(), Some(ms(t0, 35)));
        let d = collect(&mut s, ms(t0, 40));
        assert_eq!(d.timed_out, vec![2]);
        assert_eq!(s.stats().timed_out, 2);
        assert!(s.idle());
    }

    #[test]
    fn item_timeout_applies_while_slots_are_busy() {
        let t0 = Instant::now();
        let mut c = cfg(2, 0, 1);
        c.item_timeout = Some(Duration::from_millis(5));
        let mut s = State::new(c);
        for i in 0..3 {
            s.push(i, 0, t0).unwrap();
        }
        assert_eq!(collect(&mut s, t0).batches, vec![vec![0, 1]]);
        assert_eq!(s.next_deadline(), Some(ms(t0, 5)));
        assert_eq!(collect(&mut s, ms(t0, 5)).timed_out, vec![2]);
    }

    #[test]
    fn drain_dispatches_without_waiting_and_reports_once() {
        let t0 = Instant::now();
        let mut s = State::new(cfg(10, 1000, 1));
        s.push(1, 0, t0).unwrap();
        let mut d = Due::default();
        s.close(false, StopReason::ForceStopped, &mut d);
        assert!(d.stopped.is_empty());
        assert_eq!(
            s.push(2, 0, t0),
            Err(Error::Stopped {
                reason: StopReason::NotAccepting
            })
        );
        let d = collect(&mut s, t0);
        assert_eq!(d.batches, vec![vec![1]]);
        assert!(!d.drained, "a batch is still running");
        s.finish(
            BatchCounts {
                completed: 1,
                ..BatchCounts::default()
            },
            Duration::ZERO,
        );
        assert!(collect(&mut s, t0).drained);
        assert!(!collect(&mut s, t0).drained, "reported once");
    }

    #[test]
    fn force_close_hands_back_every_queued_item() {
        let t0 = Instant::now();
        let mut s = State::new(cfg(2, 1000, 1));
        for i in 0..5 {
            s.push(i, 0, t0).unwrap();
        }
        assert_eq!(collect(&mut s, t0).batches.len(), 1);
        let mut d = Due::default();
        s.close(true, StopReason::ForceStopped, &mut d);
        assert_eq!(d.stopped, vec![2, 3, 4]);
        assert!(!s.idle(), "the running batch still counts");
        s.finish(
            BatchCounts {
                failed: 2,
                ..BatchCounts::default()
            },
            Duration::ZERO,
        );
        assert!(collect(&mut s, t0).drained);
    }

    #[test]
    fn finish_records_processed_sizes_only() {
        let mut s: State<u32> = State::new(cfg(4, 0, 1));
        s.running = 2;
        s.finish(
            BatchCounts {
                completed: 3,
                failed: 1,
                cancelled: 0,
            },
            Duration::from_millis(2),
        );
        s.finish(
            BatchCounts {
                completed: 0,
                failed: 0,
                cancelled: 4,
            },
            Duration::ZERO,
        );
        let st = s.stats();
        assert_eq!(st.batches, 1);
        assert_eq!(st.batch_sizes.get(&4), Some(&1));
        assert_eq!(st.cancelled, 4);
        assert_eq!((st.completed, st.failed), (3, 1));
        assert_eq!(st.batch_duration.count, 1);
    }

    #[test]
    fn timer_is_late_only_for_earlier_deadlines() {
        let t0 = Instant::now();
        let mut s = State::new(cfg(10, 10, 1));
        assert!(!s.timer_is_late());
        s.push(1, 0, t0).unwrap();
        assert!(s.timer_is_late());
        s.timer_armed = Some(ms(t0, 5));
        assert!(!s.timer_is_late());
        s.timer_armed = Some(ms(t0, 50));
        assert!(s.timer_is_late());
    }

    #[test]
    fn auto_dispatches_at_once_when_a_slot_is_free() {
        let t0 = Instant::now();
        let mut c = cfg(10, 0, 1);
        c.max_queue_time = Window::Auto;
        let mut s = State::new(c);
        s.push(1, 0, t0).unwrap();
        assert_eq!(
            collect(&mut s, t0).batches,
            vec![vec![1]],
            "idle: no waiting"
        );
        // The slot is busy: items accumulate and leave together when it frees.
        for i in 2..6u32 {
            s.push(i, 0, ms(t0, u64::from(i))).unwrap();
        }
        assert!(collect(&mut s, ms(t0, 6)).batches.is_empty());
        assert_eq!(s.next_deadline(), None);
        // A cheap call (0.1 ms) at 1 item/ms: no reason to wait once the slot frees.
        s.finish(
            BatchCounts {
                completed: 1,
                ..BatchCounts::default()
            },
            Duration::from_micros(100),
        );
        assert_eq!(collect(&mut s, ms(t0, 6)).batches, vec![vec![2, 3, 4, 5]]);
    }

    #[test]
    fn higher_priority_goes_first_and_equal_priorities_keep_arrival_order() {
        let t0 = Instant::now();
        let mut c = cfg(4, 10, 1);
        c.aging = None;
        let mut s = State::new(c);
        for (item, prio) in [(1, 0), (2, 5), (3, 0), (4, 5), (5, -1), (6, 9)] {
            s.push(item, prio, t0).unwrap();
        }
        let d = collect(&mut s, t0);
        assert_eq!(d.batches, vec![vec![6, 2, 4, 1]]);
        s.finish(
            BatchCounts {
                completed: 4,
                ..BatchCounts::default()
            },
            Duration::ZERO,
        );
        assert_eq!(collect(&mut s, ms(t0, 10)).batches, vec![vec![3, 5]]);
    }

    #[test]
    fn the_window_counts_from_the_oldest_item_of_any_priority() {
        let t0 = Instant::now();
        let mut s = State::new(cfg(10, 10, 1));
        s.push(1, 0, t0).unwrap();
        s.push(2, 7, ms(t0, 5)).unwrap();
        assert_eq!(s.next_deadline(), Some(ms(t0, 10)));
    }

    #[test]
    fn aged_items_go_ahead_of_fresher_higher_priorities() {
        let t0 = Instant::now();
        let mut c = cfg(2, 0, 1);
        c.aging = Some(Duration::from_millis(100));
        let mut s = State::new(c);
        s.push(0, 9, t0).unwrap();
        s.push(99, 9, t0).unwrap();
        assert_eq!(collect(&mut s, t0).batches, vec![vec![0, 99]]);
        s.push(1, 0, t0).unwrap(); // low priority, waits behind a stream of high ones
        for i in 0..3u64 {
            s.push(10 + i as u32, 9, ms(t0, 150)).unwrap();
        }
        s.finish(
            BatchCounts {
                completed: 2,
                ..BatchCounts::default()
            },
            Duration::ZERO,
        );
        let d = collect(&mut s, ms(t0, 150));
        assert_eq!(
            d.batches,
            vec![vec![1, 10]],
            "the aged low-priority item goes first"
        );
    }

    #[test]
    fn timeouts_and_force_stop_reach_every_lane() {
        let t0 = Instant::now();
        let mut c = cfg(10, 1000, 1);
        c.item_timeout = Some(Duration::from_millis(5));
        let mut s = State::new(c);
        s.push(1, 3, t0).unwrap();
        s.push(2, 0, t0).unwrap();
        s.push(3, 1, ms(t0, 10)).unwrap();
        let mut d = collect(&mut s, ms(t0, 6));
        d.timed_out.sort_unstable();
        assert_eq!(d.timed_out, vec![1, 2]);
        let mut d = Due::default();
        s.close(true, StopReason::ForceStopped, &mut d);
        assert_eq!(d.stopped, vec![3]);
        assert!(s.idle());
    }

    #[test]
    fn stats_report_the_policy() {
        let t0 = Instant::now();
        let mut s = State::new(cfg(10, 25, 1));
        s.push(1, 0, t0).unwrap();
        assert!((s.stats().effective_wait - 0.025).abs() < 1e-9);
    }
}
