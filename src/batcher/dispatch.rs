//! How a due batch starts, and how work made due on any thread reaches where it can run.
//!
//! Batches run one of three ways ([`Mode`]). An async batch function (or a sync one with an
//! `executor`) runs on the batcher's event loop: work made due elsewhere (the timer thread, a
//! caller on a plain thread) is carried there with one `call_soon_threadsafe`, and the Python
//! runner (`AsyncBatcher._start`) gets a [`Batch`]. A sync batch function runs on Rust-owned
//! threads ([`super::worker`]) that take the GIL once per batch. A batch function written in
//! Rust (every HTTP batcher) runs on the tokio runtime ([`super::native`]) with no Python
//! task at all. The last two need no event loop.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use ferrobatch_core::{Dispatcher, Receipt, Work};
use pyo3::prelude::*;
use pyo3::{intern, PyTraverseError, PyVisit};

use super::batch::{drop_batch, Batch, Host, Running};
use super::future::{LoopRef, Resolver};
use super::glue::{current_thread, log_error, loop_closed, running_loop};
use super::native::{self, NativeBatchFn};
use super::sink::{fail_all, PyItem, Sink};
use super::worker::{self, Threaded};
use crate::errors;

/// Where a batcher's batches run.
pub(crate) enum Mode {
    /// On the event loop, through the Python runner (an async batch function, or a sync one
    /// with an executor).
    Loop,
    /// On Rust-owned threads (a sync batch function).
    Threads(Arc<Threaded>),
    /// On the tokio runtime (a batch function written in Rust).
    Native(Arc<dyn NativeBatchFn>),
}

/// What a batcher shares with its timer, worker and runtime threads: the loop its async
/// batches run on, how to start a batch, and who waits for the drain. Holds the Python
/// batcher only weakly, so an idle batcher can be garbage-collected.
pub(crate) struct Dispatch {
    /// Itself, for handing out to batches.
    me: Weak<Dispatch>,
    /// The loop async batches run on: the first one the batcher was used from.
    pub(crate) home: OnceLock<Arc<LoopRef>>,
    /// `weakref.WeakMethod` of the Python batcher's `_start(batch)` (loop mode).
    pub(crate) start: Py<PyAny>,
    pub(crate) mode: Mode,
    /// Waiters for the drain, and whether it happened.
    drain: Mutex<(bool, Vec<Sink>)>,
    /// Batches running outside the event loop, for a forced stop.
    running: Mutex<(u64, HashMap<u64, Running>)>,
    /// Set by a forced stop: batches still waiting to start end stopped too.
    forced: AtomicBool,
}

impl Dispatch {
    pub(crate) fn new(start: Py<PyAny>, mode: Mode) -> Arc<Dispatch> {
        Arc::new_cyclic(|me| Dispatch {
            me: me.clone(),
            home: OnceLock::new(),
            start,
            mode,
            drain: Mutex::new((false, Vec::new())),
            running: Mutex::new((0, HashMap::new())),
            forced: AtomicBool::new(false),
        })
    }

    fn arc(&self) -> Arc<Dispatch> {
        self.me
            .upgrade()
            .expect("a dispatch is used only while alive")
    }

    /// Whether batches run off the event loop (Rust threads or the runtime): such a batcher
    /// serves callers on any loop and on plain threads.
    pub(crate) fn serves_any_loop(&self) -> bool {
        !matches!(self.mode, Mode::Loop)
    }

    /// The sync batch function run on Rust threads, if that is the mode.
    pub(crate) fn threaded(&self) -> Option<&Arc<Threaded>> {
        match &self.mode {
            Mode::Threads(t) => Some(t),
            _ => None,
        }
    }

    fn drain_lock(&self) -> std::sync::MutexGuard<'_, (bool, Vec<Sink>)> {
        self.drain.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn running_lock(&self) -> std::sync::MutexGuard<'_, (u64, HashMap<u64, Running>)> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wait for the drain through `sink` (settled at once if it already happened).
    pub(crate) fn wait_drain(&self, py: Python<'_>, sink: Sink) {
        let mut d = self.drain_lock();
        if d.0 {
            drop(d);
            let mut r = Resolver::default();
            sink.succeed(py, py.None(), &mut r);
            r.flush(py);
        } else {
            d.1.push(sink);
        }
    }

    /// Forced stop: every batch running off the loop fails now with `BatcherStoppedError`
    /// (a late result is ignored; a native batch's requests are dropped).
    pub(crate) fn abort_running(&self, py: Python<'_>) {
        self.forced.store(true, Ordering::SeqCst);
        let batches: Vec<Running> = self.running_lock().1.values().cloned().collect();
        for b in batches {
            b.abort(py);
        }
    }

    /// The batcher's loop, if it is the one running on the calling thread right now.
    fn home_running_here(&self, py: Python<'_>) -> Option<&Arc<LoopRef>> {
        let home = self.home.get().filter(|_| self.on_home_thread())?;
        let running = running_loop(py).ok().flatten()?;
        running.is(home.event_loop.bind(py)).then_some(home)
    }

    /// Whether the calling thread runs the batcher's event loop.
    fn on_home_thread(&self) -> bool {
        self.home
            .get()
            .is_some_and(|h| h.thread == current_thread())
    }

    /// Deliver work here: start batches, fail items, settle drain waiters.
    pub(crate) fn deliver(&self, py: Python<'_>, work: Work<PyItem>) {
        let mut r = Resolver::default();
        for (items, err) in &work.failures {
            let exc = errors::exception(py, err);
            fail_all(py, items, &exc, &mut r);
        }
        if work.drained {
            let waiters = {
                let mut d = self.drain_lock();
                d.0 = true;
                std::mem::take(&mut d.1)
            };
            for w in waiters {
                w.succeed(py, py.None(), &mut r);
            }
        }
        r.flush(py);
        for batch in work.batches {
            self.start(py, batch);
        }
    }

    fn start(&self, py: Python<'_>, batch: ferrobatch_core::Batch<PyItem>) {
        match &self.mode {
            Mode::Threads(t) => worker::spawn(self.arc(), t, batch),
            Mode::Native(f) => match self.home_running_here(py) {
                Some(lp) => native::start_soon(lp, self.arc(), f, batch),
                None => native::start(py, self.arc(), f, batch),
            },
            Mode::Loop => self.start_on_loop(py, batch),
        }
    }

    /// Hand the batch to the Python runner (`AsyncBatcher._start`), on the loop.
    fn start_on_loop(&self, py: Python<'_>, batch: ferrobatch_core::Batch<PyItem>) {
        let start = match self.start.bind(py).call0() {
            Ok(s) if !s.is_none() => s,
            _ => {
                drop_batch(self, py, batch);
                return;
            }
        };
        let obj = match Py::new(py, Batch::new(self.arc(), batch)) {
            Ok(obj) => obj,
            Err(e) => {
                log_error(py, "could not create a batch object", Some(e));
                return;
            }
        };
        if let Err(e) = start.call1((obj.clone_ref(py),)) {
            // Starting failed (a bug, or the loop is closing): the batch's items get the error.
            let exc = e.value(py).clone().into_any();
            obj.get().fail_with(py, &exc);
        }
    }

    /// Carry work to the batcher's loop with one `call_soon_threadsafe`.
    fn send_to_loop(&self, py: Python<'_>, work: Work<PyItem>, receipt: Option<Receipt<PyItem>>) {
        let Some(home) = self.home.get() else {
            // No loop was ever bound, so no item was ever queued: nothing to deliver.
            return;
        };
        let delivery = Delivery {
            dispatch: self.arc(),
            work: Mutex::new(Some((work, receipt))),
        };
        let result = Py::new(py, delivery).and_then(|d| {
            home.event_loop
                .bind(py)
                .call_method1(intern!(py, "call_soon_threadsafe"), (d,))
        });
        if let Err(e) = result {
            // A closed loop refuses (`asyncio.run` returned with items queued): their
            // futures can never be awaited again, so there is nobody to tell.
            if !loop_closed(py, &home.event_loop) {
                log_error(
                    py,
                    "could not hand work to the batcher's event loop; its items cannot be resolved",
                    Some(e),
                );
            }
        }
    }
}

impl Host for Dispatch {
    /// In place where that is allowed (batches off the loop, or the batcher's own loop
    /// thread), otherwise carried to the loop.
    fn handle(&self, py: Python<'_>, work: Work<PyItem>) {
        if work.is_empty() {
            return;
        }
        if self.serves_any_loop() || self.on_home_thread() || self.home.get().is_none() {
            self.deliver(py, work);
        } else {
            self.send_to_loop(py, work, None);
        }
    }

    fn home(&self) -> Option<&Arc<LoopRef>> {
        self.home.get()
    }

    fn is_forced(&self) -> bool {
        self.forced.load(Ordering::SeqCst)
    }

    fn register(&self, batch: Running) -> u64 {
        let mut g = self.running_lock();
        g.0 += 1;
        let key = g.0;
        g.1.insert(key, batch);
        key
    }

    fn unregister(&self, key: u64) {
        let b = self.running_lock().1.remove(&key);
        drop(b);
    }
}

/// Work carried to the loop, with the timer thread's receipt when it came from there.
type Carried = (Work<PyItem>, Option<Receipt<PyItem>>);

/// Work made due on the timer thread, carried to the loop by one `call_soon_threadsafe`.
#[pyclass(module = "ferrobatch._native", name = "_Delivery")]
pub(crate) struct Delivery {
    dispatch: Arc<Dispatch>,
    work: Mutex<Option<Carried>>,
}

#[pymethods]
impl Delivery {
    fn __call__(&self, py: Python<'_>) {
        let taken = self.work.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some((work, receipt)) = taken {
            self.dispatch.deliver(py, work);
            // Only now may the engine report a drain that this work was part of.
            if let Some(receipt) = receipt {
                let more = receipt.delivered();
                if !more.is_empty() {
                    self.dispatch.deliver(py, more);
                }
            }
        }
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Ok(guard) = self.work.try_lock() {
            if let Some((work, _)) = guard.as_ref() {
                for b in &work.batches {
                    for i in &b.items {
                        i.traverse(&visit)?;
                    }
                }
                for (items, _) in &work.failures {
                    for i in items {
                        i.traverse(&visit)?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// The engine's dispatcher for Python batchers: runs on the timer thread.
pub(crate) struct LoopDispatcher(pub(crate) Arc<Dispatch>);

impl Dispatcher<PyItem> for LoopDispatcher {
    fn dispatch(&self, work: Work<PyItem>, receipt: Receipt<PyItem>) {
        // At interpreter exit Python can no longer be entered: the work is dropped unseen (its
        // callers belong to loops and threads that no longer run; pyo3 defers the reference
        // counts), without a panic or a message.
        let _ = crate::exit::attach(|py| {
            if self.0.serves_any_loop() || self.0.home.get().is_none() {
                self.0.deliver(py, work);
                let more = receipt.delivered();
                if !more.is_empty() {
                    self.0.deliver(py, more);
                }
            } else {
                self.0.send_to_loop(py, work, Some(receipt));
            }
        });
    }
}
