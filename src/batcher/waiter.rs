//! `Waiter`: where a blocking caller on a plain thread (`process_sync`, `process_many_sync`,
//! `stop_sync`) waits for its outcome, with the GIL released.

use std::cell::RefCell;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use pyo3::prelude::*;

use super::future::Resolution;

#[derive(Default)]
struct Slot {
    outcome: Option<Resolution>,
    /// The caller stopped waiting (interrupted): its item is skipped if not yet dispatched.
    abandoned: bool,
}

/// One outcome, handed from whichever thread resolves it to the thread blocked on it.
#[derive(Default)]
pub(crate) struct Waiter {
    slot: Mutex<Slot>,
    ready: Condvar,
}

thread_local! {
    /// Waiters to wake once this thread has let go of the GIL (see [`Waiter::defer_wakeups`]).
    static DEFERRED: RefCell<Option<Vec<Arc<Waiter>>>> = const { RefCell::new(None) };
}

/// How often a blocked caller wakes to let Python handle signals (Ctrl-C).
const SIGNAL_CHECK: Duration = Duration::from_millis(50);

impl Waiter {
    fn lock(&self) -> MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hand over the outcome (the first one wins).
    pub(crate) fn set(self: &Arc<Self>, outcome: Resolution) {
        let mut s = self.lock();
        if s.outcome.is_none() && !s.abandoned {
            s.outcome = Some(outcome);
            drop(s);
            let deferred = DEFERRED.with(|d| match d.borrow_mut().as_mut() {
                Some(list) => {
                    list.push(Arc::clone(self));
                    true
                }
                None => false,
            });
            if !deferred {
                self.ready.notify_all();
            }
        }
    }

    /// Run `f` (which takes and releases the GIL) holding back the wake-ups of the waiters it
    /// settles until it has returned: a caller woken while this thread still holds the GIL
    /// would only block again on the GIL.
    pub(crate) fn defer_wakeups<R>(f: impl FnOnce() -> R) -> R {
        DEFERRED.with(|d| *d.borrow_mut() = Some(Vec::new()));
        let out = f();
        let woken = DEFERRED.with(|d| d.borrow_mut().take()).unwrap_or_default();
        for w in woken {
            // Not under the lock: the outcome was stored under it, and a waiter checks for it
            // under it before sleeping, so no wake-up is lost; notifying while holding it would
            // make the woken thread block on it at once.
            w.ready.notify_all();
        }
        out
    }

    /// Whether someone still waits for the outcome.
    pub(crate) fn is_live(&self) -> bool {
        let s = self.lock();
        s.outcome.is_none() && !s.abandoned
    }

    /// The outcome, if it has arrived.
    pub(crate) fn try_take(&self) -> Option<Resolution> {
        self.lock().outcome.take()
    }

    /// Block (GIL released) until the outcome arrives or `timeout` passes, waking now and then
    /// for signals. On a signal's exception or the timeout, the waiter is abandoned.
    pub(crate) fn wait(
        &self,
        py: Python<'_>,
        timeout: Option<Duration>,
    ) -> PyResult<Option<Resolution>> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            let taken = py.detach(|| {
                let mut s = self.lock();
                let step = match deadline {
                    Some(d) => d
                        .saturating_duration_since(Instant::now())
                        .min(SIGNAL_CHECK),
                    None => SIGNAL_CHECK,
                };
                if s.outcome.is_none() && !step.is_zero() {
                    s = self
                        .ready
                        .wait_timeout(s, step)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
                s.outcome.take()
            });
            if let Some(o) = taken {
                return Ok(Some(o));
            }
            if let Err(e) = py.check_signals() {
                self.lock().abandoned = true;
                return Err(e);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                let mut s = self.lock();
                if let Some(o) = s.outcome.take() {
                    return Ok(Some(o));
                }
                s.abandoned = true;
                return Ok(None);
            }
        }
    }
}
