//! The batching engine: a queue that forms batches by size or time and hands them out.
//!
//! The engine is a synchronous state machine behind one lock. Whoever changes it — a caller
//! submitting an item, a batch finishing — gets back the [`Work`] that change made due and
//! runs it on its own thread. That keeps the hot path free of thread hops: under load a full
//! batch is formed and started by the very call that filled it. Only deadlines (a partial
//! batch's window, an item's timeout) need a clock: one timer thread per engine sleeps until
//! the next one and passes the work it makes due to the engine's [`Dispatcher`].
//!
//! Items are opaque (`T`): the engine never looks inside them, never runs a batch function and
//! never resolves a result. A [`Batch`] carries a [`Ticket`] that holds a concurrency slot until
//! it is finished (or dropped).

mod config;
mod policy;
mod state;
pub(crate) mod stats;
mod timer;

use std::fmt;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub use config::{Config, OnFull, UserConfig, DEFAULT_AGING};
pub use policy::Window;
pub use stats::{queue_wait_bounds, LatencySummary, Stats, LATENCY_BOUNDS};

use crate::error::{Error, StopReason};
use state::{Due, State};

/// Receives work that became due on the timer thread (window expiries, item timeouts, a
/// forced stop after the owner dropped the engine).
pub trait Dispatcher<T: Send + 'static>: Send + 'static {
    /// Start the batches and fail the items in `work`. Called on the engine's timer thread
    /// with no engine lock held. The work may be carried elsewhere (another thread, an event
    /// loop) first; once its outcomes are delivered, call [`Receipt::delivered`] (or drop the
    /// receipt): until then the engine does not report itself drained.
    fn dispatch(&self, work: Work<T>, receipt: Receipt<T>);
}

impl<T: Send + 'static, F: Fn(Work<T>, Receipt<T>) + Send + 'static> Dispatcher<T> for F {
    fn dispatch(&self, work: Work<T>, receipt: Receipt<T>) {
        self(work, receipt)
    }
}

/// Acknowledges that work from the timer thread was delivered. Without it, a drain could be
/// reported while an item's timeout or stop error is still on its way to its caller.
pub struct Receipt<T: Send + 'static> {
    shared: Arc<Shared<T>>,
    acknowledged: bool,
}

impl<T: Send + 'static> Receipt<T> {
    /// The work was delivered; returns what that made due (the drain, at most).
    pub fn delivered(mut self) -> Work<T> {
        self.acknowledged = true;
        self.shared
            .change(|st, _| st.in_transit = st.in_transit.saturating_sub(1))
    }
}

impl<T: Send + 'static> Drop for Receipt<T> {
    fn drop(&mut self) {
        if !self.acknowledged {
            let mut st = self.shared.lock();
            st.in_transit = st.in_transit.saturating_sub(1);
            // Whatever that made due (the drain) goes out through the timer thread.
            st.timer_armed = Some(Instant::now());
            drop(st);
            self.shared.wake.notify_one();
        }
    }
}

/// How the items of a finished batch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BatchCounts {
    /// Items that got a result.
    pub completed: usize,
    /// Items that got an error.
    pub failed: usize,
    /// Items dropped before the batch function saw them (their caller cancelled).
    pub cancelled: usize,
}

/// What a change to the engine made due: batches to start, items to fail.
#[must_use = "batches must be started and failed items must be failed"]
pub struct Work<T: Send + 'static> {
    /// Batches to run now, each holding a concurrency slot.
    pub batches: Vec<Batch<T>>,
    /// Groups of items to fail, each with the error for all of its items.
    pub failures: Vec<(Vec<T>, Error)>,
    /// The engine was stopped and every accepted item has ended. Reported once.
    pub drained: bool,
}

impl<T: Send + 'static> Work<T> {
    /// No work at all.
    pub fn none() -> Self {
        Work {
            batches: Vec::new(),
            failures: Vec::new(),
            drained: false,
        }
    }

    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.batches.is_empty() && self.failures.is_empty() && !self.drained
    }
}

impl<T: Send + 'static> fmt::Debug for Work<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Work")
            .field(
                "batches",
                &self
                    .batches
                    .iter()
                    .map(|b| b.items.len())
                    .collect::<Vec<_>>(),
            )
            .field(
                "failures",
                &self
                    .failures
                    .iter()
                    .map(|(v, e)| (v.len(), e))
                    .collect::<Vec<_>>(),
            )
            .field("drained", &self.drained)
            .finish()
    }
}

/// A batch to run: its items in arrival order and the ticket for its concurrency slot.
pub struct Batch<T: Send + 'static> {
    /// The items, oldest first.
    pub items: Vec<T>,
    /// Finish it when the batch ends.
    pub ticket: Ticket<T>,
}

/// Holds one concurrency slot. [`Ticket::finish`] frees it and returns the work that made due;
/// a ticket dropped unfinished frees the slot too, counts its items as failed, and lets the
/// timer thread dispatch whatever became due.
pub struct Ticket<T: Send + 'static> {
    shared: Arc<Shared<T>>,
    started: Instant,
    size: usize,
    finished: bool,
}

impl<T: Send + 'static> Ticket<T> {
    /// How many items the batch held when it was formed.
    pub fn size(&self) -> usize {
        self.size
    }

    /// End the batch: free its slot, record how its items ended, and return the work that
    /// became due (the next batch, usually) for the caller to run.
    pub fn finish(mut self, outcome: BatchCounts) -> Work<T> {
        self.finished = true;
        self.shared.finish(outcome, self.started.elapsed())
    }
}

impl<T: Send + 'static> Drop for Ticket<T> {
    fn drop(&mut self) {
        if !self.finished {
            let outcome = BatchCounts {
                failed: self.size,
                ..BatchCounts::default()
            };
            let mut st = self.shared.lock();
            st.finish(outcome, self.started.elapsed());
            // Nobody is here to run what became due: the timer thread will.
            st.timer_armed = Some(Instant::now());
            drop(st);
            self.shared.wake.notify_one();
        }
    }
}

struct Shared<T> {
    state: Mutex<State<T>>,
    wake: Condvar,
}

impl<T: Send + 'static> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // The state stays consistent across a panic in a dispatcher: every mutation is
        // completed under the lock before anything that can panic runs.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Collect what is due now; wake the timer if it sleeps past the next deadline.
    fn collect(self: &Arc<Self>, st: &mut State<T>, due: &mut Due<T>) -> bool {
        st.collect(Instant::now(), due);
        st.timer_is_late()
    }

    fn into_work(self: &Arc<Self>, due: Due<T>, item_timeout: Option<Duration>) -> Work<T> {
        let now = Instant::now();
        let mut work = Work::none();
        work.batches = due
            .batches
            .into_iter()
            .map(|items| Batch {
                ticket: Ticket {
                    shared: Arc::clone(self),
                    started: now,
                    size: items.len(),
                    finished: false,
                },
                items,
            })
            .collect();
        if !due.timed_out.is_empty() {
            let timeout = item_timeout.unwrap_or_default();
            work.failures
                .push((due.timed_out, Error::ItemTimeout { timeout }));
        }
        if !due.stopped.is_empty() {
            let reason = due.stop_reason;
            work.failures.push((due.stopped, Error::Stopped { reason }));
        }
        work.drained = due.drained;
        work
    }

    /// Run `change` under the lock, collect what became due, wake the timer if needed.
    fn change(self: &Arc<Self>, change: impl FnOnce(&mut State<T>, &mut Due<T>)) -> Work<T> {
        let mut due = Due::default();
        let mut st = self.lock();
        change(&mut st, &mut due);
        if due.skip_collect {
            return Work::none();
        }
        let late = self.collect(&mut st, &mut due);
        let timeout = st.config.item_timeout;
        drop(st);
        if late {
            self.wake.notify_one();
        }
        if due.is_empty() {
            return Work::none();
        }
        self.into_work(due, timeout)
    }

    fn finish(self: &Arc<Self>, outcome: BatchCounts, took: Duration) -> Work<T> {
        self.change(|st, _| st.finish(outcome, took))
    }
}

/// A batching engine over items of type `T`. Dropping it fails every queued item with
/// [`StopReason::Dropped`] (through the dispatcher) and ends the timer thread.
pub struct Engine<T: Send + 'static> {
    shared: Arc<Shared<T>>,
}

impl<T: Send + 'static> Engine<T> {
    /// Start an engine; `dispatcher` receives the work that deadlines make due.
    pub fn new(config: Config, dispatcher: impl Dispatcher<T>) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::new(config)),
            wake: Condvar::new(),
        });
        timer::spawn(Arc::clone(&shared), Box::new(dispatcher))?;
        Ok(Engine { shared })
    }

    /// The configuration the engine runs with.
    pub fn config(&self) -> Config {
        self.shared.lock().config.clone()
    }

    /// Queue an item. Returns the work the item made due (a full batch, usually none), or
    /// refuses the item with [`Error::QueueFull`] or [`Error::Stopped`].
    pub fn submit(&self, item: T) -> Result<Work<T>, Error> {
        self.submit_with_priority(item, 0)
    }

    /// Queue an item with a priority: higher priorities enter batches first; equal priorities
    /// keep arrival order; an item that waited `aging` goes ahead of fresher ones.
    pub fn submit_with_priority(&self, item: T, priority: i64) -> Result<Work<T>, Error> {
        let mut refused = Ok(());
        let work = self.shared.change(|st, due| {
            refused = st.push(item, priority, Instant::now());
            if refused.is_err() {
                // Collect nothing: a refused call must not carry away (and lose) other work.
                due.skip_collect = true;
            }
        });
        refused.map(|()| work)
    }

    /// Stop accepting items. Without `force`, queued items are dispatched as soon as slots
    /// free (no waiting for windows) and [`Work::drained`] is reported once all have ended.
    /// With `force`, queued items come back as failures with [`StopReason::ForceStopped`];
    /// running batches end when their tickets finish.
    pub fn close(&self, force: bool) -> Work<T> {
        self.shared
            .change(|st, due| st.close(force, StopReason::ForceStopped, due))
    }

    /// Whether the engine still accepts items.
    pub fn is_accepting(&self) -> bool {
        self.shared.lock().accepting()
    }

    /// Whether nothing is queued or running.
    pub fn is_idle(&self) -> bool {
        self.shared.lock().idle()
    }

    /// A snapshot of the counters and histograms.
    pub fn stats(&self) -> Stats {
        self.shared.lock().stats()
    }
}

impl<T: Send + 'static> Drop for Engine<T> {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        st.shutdown = true;
        drop(st);
        self.shared.wake.notify_one();
    }
}

impl<T: Send + 'static> fmt::Debug for Engine<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.shared.lock();
        f.debug_struct("Engine")
            .field("config", &st.config)
            .field("accepting", &st.accepting())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
